/*
 * conn.h - the inside of a qp_conn: what every carrier of a Connection
 * (shared memory: shmpipe.c; nng streams: nngconn.c; pipes through the
 * server: rpipe.c) provides to conn.c,
 * which checks the arguments of the public calls and dispatches through
 * the ops table below.
 */
#ifndef QPI_CONN_H
#define QPI_CONN_H

#include "qpi.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The largest message a connection can be set to: a msgpack bin holds at
 * most 4 GiB - 1 bytes, and a few bytes of framing go with it. */
#define QPI_CONN_MAX_MESSAGE ((size_t) UINT32_MAX - 16)

/* What a carrier says about the message at the head of a connection. */
typedef struct qpi_msginfo {
	size_t len; /* bytes stored: the raw payload or the msgpack encoding */
	bool raw; /* sent by send_bytes: a bin whose header is not stored */
	uint8_t binoff; /* an encoding that is exactly one bin: the size of
	                   its header (2, 3 or 5); otherwise 0 */
} qpi_msginfo;

/* The operations of one carrier. conn.c has checked the handle (open, the
 * right direction) and the arguments before it calls them. */
typedef struct qpi_conn_ops {
	/* Sends one message: len bytes of buf, a raw payload (raw) or a
	 * checked msgpack encoding whose bin header, if it is a bin, is
	 * binoff bytes. Blocks while the carrier is full. */
	int (*send)(
	    qp_conn *c, bool raw, const void *buf, size_t len, uint8_t binoff);
	/* Waits until deadline_ns (absolute monotonic; INT64_MAX forever) for
	 * a message at the head and describes it without consuming it.
	 * QP_OK, QP_ETIMEDOUT, or the end of the stream: QP_ECLOSED once the
	 * peer is gone and nothing is left (or a sticky error such as
	 * QP_EPROTO). */
	int (*peek)(qp_conn *c, int64_t deadline_ns, qpi_msginfo *mi);
	/* Consumes the head message that peek described, writing its bytes
	 * from skip to mi->len into dst. */
	int (*take)(qp_conn *c, const qpi_msginfo *mi, size_t skip, void *dst);
	/* A descriptor that polls readable when peek(now) would not time
	 * out; owned by the connection. */
	int (*fd)(qp_conn *c, int *fdp);
	/* Applies a new maximum message size (already stored in c). */
	void (*set_max)(qp_conn *c);
	/* Closes this end (the peer sees end of file); called once. */
	void (*close)(qp_conn *c);
	/* Releases everything; called once, after close. */
	void (*destroy)(qp_conn *c);
	/* Releases a forked child's copy of a connection whose owner is
	 * another process (see owner below): this process's memory and
	 * descriptors only, with no nng call and no lock taken (a thread of
	 * the parent may have held one at the fork). Called once, instead
	 * of close and destroy. Needed only by carriers that set owner. */
	void (*forget)(qp_conn *c);
} qpi_conn_ops;

/* The part of every connection that conn.c reads and writes; each carrier
 * embeds it as its first member. */
struct qp_conn {
	const qpi_conn_ops *ops;
	size_t max_message; /* largest message sent or accepted */
	atomic_bool closed; /* qp_conn_close was called */
	bool
	    readable; /* may receive (false: the send end of a simplex pipe) */
	bool writable; /* may send (false: the receive end) */
	/* The process that made it, for a carrier that does not survive
	 * fork() (nng): in any other process every call is refused and free
	 * only forgets it. 0 (shared memory): any process may use it. */
	pid_t owner;
};

/* Fills the common part of a new connection (owner 0: usable in any
 * process; a carrier on nng sets owner to getpid() afterwards). */
void qpi_conn_init(
    qp_conn *c, const qpi_conn_ops *ops, bool readable, bool writable);

#endif /* QPI_CONN_H */
