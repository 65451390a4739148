/*
 * conn.h - the inside of a qp_conn: what every carrier of a Connection
 * (shared memory: shmpipe.c; streams: netconn.c; pipes through the
 * server: rpipe.c) provides to conn.c, which checks the arguments of the
 * public calls and dispatches through the ops table below; the
 * received-message queue that netconn.c and rpipe.c share.
 */
#ifndef QPI_CONN_H
#define QPI_CONN_H

#include "qpi.h"

#include <pthread.h>
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

/* A message in a received-message queue: len bytes of one msgpack value. */
typedef struct qpi_rxmsg {
	struct qpi_rxmsg *next;
	uint8_t *mem; /* malloc'd; the queue frees it */
	uint8_t *data; /* the value, in mem */
	size_t len;
	uint8_t binoff; /* as qpi_msginfo's */
} qpi_rxmsg;

/* The received-message queue of a carrier (netconn.c's, rpipe.c's
 * prefetcher): one producer pushes, one receiver peeks then takes, under
 * mu; efd polls readable exactly while a message waits or the stream has
 * ended (lazy: only once qpi_rxq_fd armed it). */
typedef struct qpi_rxq {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* a message came, the end, or room again */
	qpi_rxmsg *head, *tail;
	size_t qbytes;
	bool eof;
	int err; /* what peek says once the queue is drained */
	char errmsg[300];
	int efd;
	bool lazy; /* efd kept in step only once armed */
	bool armed;
} qpi_rxq;

/* The bytes a producer may queue before it waits for room. */
#define QPI_RXQ_MAX ((size_t) 4 << 20)

/* Sets up an empty queue: QP_OK or QP_ENOMEM (no eventfd). */
int qpi_rxq_init(qpi_rxq *q);

/* Frees the messages and the eventfd; with locks, also its mutex and
 * condition (false: a forked child's copy, whose locks are not touched). */
void qpi_rxq_free(qpi_rxq *q, bool locks);

/* Queues the len bytes at mem + off (mem malloc'd; taken over, and freed
 * on error): QP_OK, QP_ENOMEM, or QP_ECLOSED once the queue has ended. */
int qpi_rxq_push(qpi_rxq *q, uint8_t *mem, size_t off, size_t len);

/* Ends the stream (the first end wins): peek reports err with the
 * formatted message once the queue is drained. */
void qpi_rxq_end(qpi_rxq *q, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* For the producer: waits while QPI_RXQ_MAX bytes are queued; false once
 * the queue has ended. */
bool qpi_rxq_wait_room(qpi_rxq *q);

/* A carrier that receives into a queue (netconn.c, rpipe.c) embeds this
 * first; the three calls below are then its ops fd, peek and take. */
typedef struct qpi_rxconn {
	qp_conn base;
	qpi_rxq q;
} qpi_rxconn;

/* The ops fd (efd, armed; QP_OK), peek and take on a qpi_rxconn's queue. */
int qpi_rxq_fd(qp_conn *c, int *fdp);
int qpi_rxq_peek(qp_conn *c, int64_t deadline_ns, qpi_msginfo *mi);
int qpi_rxq_take(qp_conn *c, const qpi_msginfo *mi, size_t skip, void *dst);

/* How many dialers a listener (netconn.c) refused for a missing or wrong
 * token (they closed, or failed auth, after a hello reply that asked for
 * it). */
uint64_t qpi_net_listener_refused(qp_listener *l);

#endif /* QPI_CONN_H */
