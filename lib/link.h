/*
 * link.h - the client's connection layer: one byte stream to a peer that
 * speaks SP (sp.h), opened by qpi_link_dial, which picks the driver and
 * does the SP handshake. Two drivers sit behind one ops table, as nng's
 * transports do: plain sockets (link_sock.c: tcp:// and ipc://, no thread
 * of their own) and nng streams (link_nng.c: tls+tcp://, and tcp:// or
 * ipc:// when QPIPE_TRANSPORT=nng). The request/reply engine (call.c)
 * sits on it. No nng type appears here.
 */
#ifndef QPI_LINK_H
#define QPI_LINK_H

#include "qpi.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct qpi_link qpi_link;

/* A driver's operations. One thread sends at a time and one receives at
 * a time (the caller serialises each); a send and a receive may overlap. */
typedef struct qpi_link_ops {
	const char *name; /* "socket" or "nng" */
	/* Writes all of iov (niov at most 4) until deadline_ns: QP_OK,
	 * QP_ETIMEDOUT (part may have gone: the stream is spoilt), or
	 * QP_ECONNRESET (the connection is lost). */
	int (*send)(
	    qpi_link *l, struct iovec *iov, int niov, int64_t deadline_ns);
	/* Reads 1..cap bytes into buf until deadline_ns: QP_OK with *np,
	 * QP_ETIMEDOUT, QP_ECONNRESET (end of stream or error). */
	int (*recv)(qpi_link *l, void *buf, size_t cap, size_t *np,
	    int64_t deadline_ns);
	/* Ends the stream: transfers in progress and later ones fail with
	 * QP_ECONNRESET. Safe while another thread sends or receives. */
	void (*shutdown)(qpi_link *l);
	/* Releases everything, after shutdown with no transfer left. */
	void (*free)(qpi_link *l);
} qpi_link_ops;

/* The part of every link that callers read; each driver embeds it first. */
struct qpi_link {
	const qpi_link_ops *ops;
	bool ipc; /* frames carry ipc://'s message-type byte */
	bool nng; /* the nng driver: its threads do not survive fork() */
	int nrv; /* the nng driver's last nng error (0: none), for messages */
	char url[QPI_URL_MAX + 1]; /* the server's address, for messages */
};

/* Dials a (tcp, ipc or tls) and does the SP handshake as protocol proto,
 * the peer answering as peer_proto, until deadline_ns. The driver: nng
 * for tls+tcp:// or when QPIPE_TRANSPORT=nng, else plain sockets. o: TLS
 * settings (may be NULL). Errors: QP_ECONNREFUSED (nobody listens),
 * QP_EPROTO (the peer does not speak peer_proto), QP_EAUTH (the TLS
 * handshake failed, qp_errmsg() says why), QP_ETIMEDOUT, QP_EINVAL,
 * QP_ENOMEM. */
int qpi_link_dial(qpi_link **lp, const qpi_addr *a, const qp_conn_opts *o,
    uint16_t proto, uint16_t peer_proto, int64_t deadline_ns);

/* Whether a dial to a uses the nng driver (tls+tcp://, QPIPE_TRANSPORT). */
bool qpi_link_uses_nng(const qpi_addr *a);

/* Releases a forked child's copy of a plain socket link: closes the
 * child's descriptor only (the parent's connection goes on), takes no
 * lock. Not for the nng driver, whose copy is left alone. */
void qpi_link_forget(qpi_link *l);

/* The drivers' dials, without the SP handshake (link.c does it). */
int qpi_link_sock_dial(qpi_link **lp, const qpi_addr *a, int64_t deadline_ns);
int qpi_link_nng_dial(qpi_link **lp, const qpi_addr *a, const qp_conn_opts *o,
    int64_t deadline_ns);

/* The one map from nng's errors to QP_ codes, for every nng user in lib/:
 * a lost connection (NNG_ECONNRESET, NNG_ECONNSHUT, NNG_ECONNABORTED) is
 * QP_ECONNRESET; a handle closed here (NNG_ECLOSED, NNG_ECANCELED) is
 * QP_ECLOSED. */
int qpi_nng_err(int nrv);

#endif /* QPI_LINK_H */
