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
	int nrv; /* the nng driver's last nng error (0: none), for messages */
	/* Read by a thread of its own (a direct connection's reader), whose
	 * process's other threads take what it reads: link_sock.c's spin
	 * does not count a yield that let them run as the CPU given away. */
	bool own_reader;
	char url[QPI_URL_MAX + 1]; /* the server's address, for messages */
};

/* Dials a on its driver (qpi_link_uses_nng), SP handshake (unless proto
 * is 0) as proto to peer_proto, until deadline_ns; o: TLS settings or
 * NULL. QP_ECONNREFUSED, QP_EPROTO, QP_EAUTH (TLS), QP_ETIMEDOUT,
 * QP_EINVAL, QP_ENOMEM. */
int qpi_link_dial(qpi_link **lp, const qpi_addr *a, const qp_conn_opts *o,
    uint16_t proto, uint16_t peer_proto, int64_t deadline_ns);

/* Whether a dial to a uses the nng driver (tls+tcp://, QPIPE_TRANSPORT). */
bool qpi_link_uses_nng(const qpi_addr *a);

/* Releases a forked child's copy of a plain socket link: closes the
 * child's descriptor only (the parent's connection goes on), takes no
 * lock. Not for the nng driver, whose copy is left alone. */
void qpi_link_forget(qpi_link *l);

/* The SP handshake on a new link: sends protocol proto's header and
 * checks the peer's (peer_proto), until deadline_ns. QP_EPROTO (another
 * protocol), QP_EAUTH (tls: the TLS handshake failed; a dialer, not
 * server, finds out why with o's settings), QP_ETIMEDOUT, QP_ECONNREFUSED
 * (closed). */
int qpi_link_sp_handshake(qpi_link *l, const qpi_addr *a,
    const qp_conn_opts *o, bool server, uint16_t proto, uint16_t peer_proto,
    int64_t deadline_ns);

/* Sends one frame: the SP header, the 4-byte tag (req0: the request id;
 * pair1: the hop count), then body (len bytes; bin: a payload sent as a
 * msgpack bin, its header added). Errors as ops->send. */
int qpi_link_send_frame(qpi_link *l, uint32_t tag, bool bin, const void *body,
    size_t len, int64_t deadline_ns);

/* A link's receive buffer, from which qpi_link_read_frame cuts frames;
 * a frame read in part stays here across a timeout. Zero it first. */
typedef struct qpi_link_rd {
	uint8_t *buf; /* bytes read; those from off to len not yet cut */
	size_t off, len;
	uint8_t *big; /* the frame being read, in an allocation of its own */
	size_t have, want; /* its bytes read and its size */
	size_t bigcap; /* big's size: want, or spare_cap if it was spare */
	uint8_t *spare; /* the owner's buffer for the next frame, if it fits */
	size_t spare_cap;
} qpi_link_rd;

/* Reads the next frame, of at most max bytes after its 4-byte tag, until
 * deadline_ns: *memp (malloc'd, the caller's, *capp bytes long; capp may
 * be NULL) holds the tag, then *lenp bytes of body. The frame goes into
 * rd->spare when that is set and large enough (rd->spare is then NULL), else
 * into a new allocation. Errors as ops->recv, QP_EPROTO (a bad header),
 * QP_ETOOBIG (a frame over max), QP_ENOMEM. */
int qpi_link_read_frame(qpi_link *l, qpi_link_rd *rd, size_t max,
    uint8_t **memp, size_t *lenp, size_t *capp, int64_t deadline_ns);

/* Frees rd's memory. */
void qpi_link_rd_free(qpi_link_rd *rd);

/* The nng stream under an nng link, handed over to the caller (an
 * nng_stream *: qpiped's nng-stream driver reads it with nng's
 * callbacks); the link's own parts are freed. */
void *qpi_link_nng_take(qpi_link *l);

/* The socket under a plain socket link, handed over to the caller
 * (qpiped's event loops); the link's own parts are freed. */
int qpi_link_sock_take(qpi_link *l);

/* A plain socket's reply wait spins before it sleeps while spinning pays
 * (link_sock.c says when). Its count of misses in a row after a wait
 * that read (got 1: a reply; -1: the link broke) having yielded the CPU
 * or not, and having had it taken away for long (away) or not. */
unsigned qpi_link_spin_misses(
    unsigned misses, int got, bool yielded, bool away, bool ipc);

/* The drivers' dials (qpi_link_dial picks one). */
int qpi_link_sock_dial(qpi_link **lp, const qpi_addr *a, int64_t deadline_ns);
int qpi_link_nng_dial(qpi_link **lp, const qpi_addr *a, const qp_conn_opts *o,
    int64_t deadline_ns);

/* A listener (tcp, ipc, tls): direct connections' (qp_listen), and
 * qpiped's nng streams. Each driver embeds it first. */
typedef struct qpi_link_listener qpi_link_listener;
struct qpi_link_listener {
	/* Waits for the next connection (no SP handshake yet): QP_OK,
	 * QP_ECLOSED once closed, or why this one failed (QP_ENOMEM). */
	int (*accept)(qpi_link_listener *L, qpi_link **lp);
	/* Stops listening: accept returns QP_ECLOSED. */
	void (*close)(qpi_link_listener *L);
	/* Closes and frees, with no accept in progress. */
	void (*free)(qpi_link_listener *L);
};

/* Listens on a with the driver a dial to a uses (port 0 allowed; o: the
 * TLS certificate for tls+tcp://); bound gets the address bound (boundlen
 * bytes). Errors: QP_EBUSY (in use), QP_EINVAL, QP_ENOMEM, QP_ESYSTEM,
 * and tls.c's. */
int qpi_link_listen(qpi_link_listener **lp, const qpi_addr *a,
    const qp_conn_opts *o, char *bound, size_t boundlen);

/* The drivers' listeners (qpi_link_listen picks one). */
int qpi_link_sock_listen(
    qpi_link_listener **lp, const qpi_addr *a, char *bound, size_t boundlen);
int qpi_link_nng_listen(qpi_link_listener **lp, const qpi_addr *a,
    const qp_conn_opts *o, char *bound, size_t boundlen);

/* The URL of a listener on a: scheme://host:port (host 0.0.0.0 when a
 * names none), port the one bound; or the ipc URL. */
void qpi_link_bound(
    const qpi_addr *a, unsigned port, char *bound, size_t boundlen);

/* The one map from nng's errors to QP_ codes, for every nng user in lib/:
 * a lost connection (NNG_ECONNRESET, NNG_ECONNSHUT, NNG_ECONNABORTED) is
 * QP_ECONNRESET; a handle closed here (NNG_ECLOSED, NNG_ECANCELED) is
 * QP_ECLOSED. */
int qpi_nng_err(int nrv);

/* ---- which process may use nng (link_nng.c) ----
 * nng does not survive fork(): in a child forked after nng started, its
 * first set-up call panics, and the parent's nng objects are served by
 * threads that stayed there; so a forked child refuses new network
 * nng handles and those it inherited (each records its owner).
 */

/* Whether a handle made by process owner is a forked child's copy here:
 * nothing of nng may be called on it, only the child's memory released. */
bool qpi_nng_forked(pid_t owner);

/* The error for a handle used in a forked child: QP_EINVAL. what names
 * the handle ("this connection", "listener tcp://127.0.0.1:7450"). */
int qpi_nng_forked_err(const char *what, pid_t owner);

/* Moves *iovp past done bytes written (or read) of niov iovecs, trimming
 * the first one left; returns how many are left. */
int qpi_iov_advance(struct iovec **iovp, int niov, size_t done);

#endif /* QPI_LINK_H */
