/*
 * link.h - qpiped's connection layer inside: a link is one client
 * connection's bytes (link.c: SP req0/rep0 framing, requests in, replies
 * out), moved by a driver behind an ops table, as nng's transports are:
 * plain sockets (link_socket.c: tcp://, ipc://) and nng streams
 * (link_stream.c: tls+tcp://, and tcp:// and ipc:// with --transport nng),
 * accepted by listener.c. The request layer sees none of this: it uses
 * the connections section of qps.h.
 */
#ifndef QPS_LINK_H
#define QPS_LINK_H

#include "qps.h"

#include <sys/types.h>
#include <sys/uio.h>

typedef struct qps_link qps_link;
struct qpi_link;

/* What a driver does; link.c calls these and never asks which driver it
 * has. */
typedef struct qps_link_driver {
	const char *name;
	/* Called before its first listener (NULL: nothing to do): QP_OK,
	 * or an error it logged. */
	int (*start)(void);
	/* Makes a connection that lib's listener accepted (a qpi_link of
	 * this driver's kind, taken over) a link, and starts it. */
	void (*adopt)(struct qpi_link *ql);
	/* Writes at once, without waiting, what the transport takes of iov:
	 * bytes written, or -1 when the connection broke. NULL: every byte
	 * goes through the out queue. l->mu held. */
	ssize_t (*write_now)(qps_link *l, const struct iovec *iov, int niov);
	/* The out queue, the pause or the admission changed: start writing
	 * what is queued, reading if reading is allowed. l->mu held. */
	void (*kick)(qps_link *l);
	/* Ends the connection's traffic: its reader sees the end soon. The
	 * caller holds a reference; l->mu not held. */
	void (*shut)(qps_link *l);
	/* Lets go of the transport (the link is dead). l->mu not held. */
	void (*close)(qps_link *l);
	/* Frees the driver's state of l (last reference gone). NULL: none. */
	void (*free)(qps_link *l);
	/* Stops the driver's threads, after the listeners (its links stay,
	 * closed by qps_link_close_all). NULL: none. */
	void (*stop)(void);
} qps_link_driver;

extern const qps_link_driver qps_link_socket; /* link_socket.c */
extern const qps_link_driver qps_link_stream; /* link_stream.c */

struct qps_link {
	pthread_mutex_t mu;
	const qps_link_driver *drv;
	uint32_t id; /* the connection id the request layer keys by */
	bool ipc; /* frames carry ipc's type byte */
	int refs; /* the open link's, one per request in hand, the
	             driver's holds (an nng read or write under way) */
	bool admitted; /* the request layer took it: reading may start */
	bool dead; /* closed: no byte moves any more */
	bool shut_after; /* shut once every reply is written */
	bool paused; /* not reading: too many replies not yet read */
	uint8_t *out; /* bytes not yet written: out[outoff..outlen) */
	size_t outoff, outlen, outcap;
	size_t inflight; /* bytes the driver is writing outside out */
	char peer[80]; /* "tcp://1.2.3.4:5", or "" for a local socket */
	/* Time limits (link.c): the SP handshake, then authentication (or a
	 * connection over --max-connections), due by a deadline from
	 * born_ns; lk.mu guards the list it waits in. */
	int64_t born_ns;
	bool hs_done; /* the peer's SP handshake came (atomic) */
	int plist; /* LINK_DUE_* list it is in, 0: none */
	struct qps_link *pprev, *pnext;
	/* Read side: the driver's reading thread only. */
	int state;
	uint8_t hbuf[9];
	size_t hneed, hhave;
	nng_msg *body;
	size_t bodylen, bodyhave;
	uint8_t *inbuf; /* bytes read but not consumed: the link paused
	                   before their requests (at most one read's) */
	size_t inlen, incap;
	struct qps_link *prev, *next; /* every open link */
	/* Plain sockets. */
	int fd, ep;
	uint32_t events; /* epoll events asked for; 0: not yet watched */
	/* nng streams. */
	nng_stream *st;
	nng_aio *rx, *tx;
	uint8_t *rbuf, *sbuf; /* sbuf[soff..slen): the write under way */
	size_t soff, slen, scap;
	bool reading, sending, st_closed;
	bool rx_sleep; /* rx is a 0 ms sleep: go on with inbuf */
};

/* Sets the limits (--max-message, --max-connections, --handshake-timeout,
 * --auth-timeout) before any link, and starts the thread that closes
 * links past their time limits. QP_OK or QP_ESYSTEM (logged). */
int qps_link_setup(const qps_config *cfg);

/* Closes every link and waits (up to 5 s) until the drivers let go of
 * them; from now on no request parks. */
void qps_link_close_all(void);

/* A new link of driver drv, open and listed, with two references: the
 * open link's (dropped by qps_link_close) and the caller's (dropped with
 * qps_link_unref once qps_link_start returned). NULL if out of memory. */
qps_link *qps_link_new(const qps_link_driver *drv, bool ipc, const char *peer);

/* Sends the server's SP handshake and hands the link to the request layer,
 * which may refuse it (then it is closed). The driver's fields must be
 * set. False when closed. */
bool qps_link_start(qps_link *l);

/* Consumes n bytes read from l (n may be 0: only what is kept, see
 * inlen): handshake, frames, requests handed to the request layer, until
 * the link pauses (too many replies unread): the rest is kept in
 * l->inbuf, for the next call once the link is no longer paused. The
 * driver's reading thread only. False when l must close (*why says
 * why). */
bool qps_link_input(qps_link *l, const uint8_t *p, size_t n, const char **why);

/* Recomputes the pause and kicks the driver. l->mu held. */
void qps_link_kick_locked(qps_link *l);

/* True when the link is to be shut now: every reply written and a close
 * asked for. l->mu held. */
bool qps_link_shut_due_locked(qps_link *l);

/* Closes l (idempotent, any thread holding a reference or the open
 * link's): the driver lets go of the transport and the request layer
 * forgets the connection. why (NULL: nothing logged) for the debug log. */
void qps_link_close(qps_link *l, const char *why);

/* Drops a reference; the last frees l. */
void qps_link_unref(qps_link *l);

/* Formats "tcp://host:port" into buf: family AF_INET or AF_INET6, addr
 * its 4 or 16 address bytes, port_be the port in network order. */
void qps_link_format_peer(
    int family, const void *addr, uint16_t port_be, char *buf, size_t len);

#endif /* QPS_LINK_H */
