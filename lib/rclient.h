/*
 * rclient.h - the core of a client of qpiped, shared by remote queues
 * (remote.c) and pipes through the server (rpipe.c): one handle is one
 * session on the call engine (call.c), with a client id of 16 random
 * bytes and a sequence number for the requests that change a queue, so
 * that a request sent again after a reconnect is applied once; the
 * acker that confirms a plain get's items; and the handle's life across
 * fork(). Then the remote queue client's calls (remote.c), which
 * queue.c dispatches a remote handle's qp_queue calls to, each with the
 * meaning of its shared-memory twin. Internal to lib/.
 */
#ifndef QPI_RCLIENT_H
#define QPI_RCLIENT_H

#include "auth.h"
#include "call.h"
#include "keep.h"
#include "queue.h"
#include "wire.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* How long a call waits for a lost connection to come back (a server
 * restart) before it fails with QP_ECONNRESET. QPIPE_RECONNECT_MS in the
 * environment overrides it. */
#define QPI_RQ_RECONNECT_MS 10000

/* A get or put that blocks forever is sent again after this long. */
#define QPI_RQ_SLICE_MS 30000
/* Beyond a blocking request's own timeout, how long the client waits for
 * the server's answer before it counts the connection as lost. */
#define QPI_RQ_SLACK_MS 5000
/* A request that does not block on the server: its answer is due within. */
#define QPI_RQ_CALL_MS 10000

typedef struct qpi_rq qpi_rq;

/* One handle's connection and state (rclient.c); the queue calls
 * (remote.c) and pipe ends (rpipe.c) read the fields marked so. */
struct qpi_rq {
	qpi_ce *ce; /* the call engine: the connection */
	qpi_addr addr;
	qp_conn_opts opts; /* a copy: its strings are in strs */
	char *strs[4];
	char url[QPI_URL_MAX + 1]; /* read by the calls */
	char name[QP_NAME_MAX + 1]; /* read by the calls */
	bool closed;
	bool nng; /* on the nng driver: it does not survive fork() */
	bool lease_mode; /* QP_OPEN_LEASE */
	uint64_t lease_ms;
	uint8_t id[QPI_WIRE_ID_LEN];
	uint64_t seq; /* last seq used (under mu) */
	uint64_t req_id; /* under mu */
	qpi_wire_limits lim; /* the server's, from the first hello */
	bool have_lim;
	int64_t reconnect_ms;
	int64_t connect_ms; /* the first connection's time limit */
	qpi_token token; /* len 0: none */
	pid_t pid; /* the process this state belongs to (-1: being made) */

	pthread_mutex_t mu; /* guards the lists and the acker */
	int tfd; /* the acker's timer (a timerfd; -1 before the first get) */
	int64_t acker_due; /* when it is set to fire (0: not set) */
	qpi_ids held; /* QP_OPEN_LEASE: leased items, oldest first */
	qpi_ids unacked; /* plain: confirmations not yet sent */
	int64_t unacked_ns; /* when unacked last went from none to some */
	uint32_t last_deliveries;
	bool have_last;
	pthread_t acker;
	bool acker_on; /* the acker thread runs (in this process) */
	bool stopping; /* close: the acker ends */
	/* the item kept ahead for the readiness fd (remote.c) */
	struct rq_pf *pf;
	/* large buffers of batches (item arrays, confirmations, encoded
	 * requests) kept for the next (under mu) */
	qpi_keep keep;
};

/* A call: the request (its op fields set by the caller), and after
 * qpi_rq_do the decoded reply, whose items point into buf. */
typedef struct rq_call {
	qpi_wire_req req;
	qpi_wire_rep rep;
	qpi_ce_reply buf; /* the reply's bytes */
	qpi_ce *ce; /* the session they came on */
	uint32_t conn; /* the connection it came on */
	int64_t deadline_ns; /* a blocking op's own; 0: it does not block */
	bool once; /* a dropped connection ends the call (QP_ECONNRESET) */
} rq_call;

/* A handle dialled to a, its session open (hello, auth with the token of
 * o, else $QPIPE_TOKEN): the first dial fails fast (QP_ECONNREFUSED);
 * later drops are redialled by the calls. */
int qpi_rq_new(qpi_rq **rp, const qpi_addr *a, const qp_conn_opts *o);

/* Zeroes c for op on r's queue; deadline_ns: a blocking op's own (0: the
 * op does not block, INT64_MAX: it waits for ever). */
void qpi_rq_call_init(rq_call *c, qpi_rq *r, uint32_t op, int64_t deadline_ns);

/* Sends c->req and waits for its reply, through reconnects (the same
 * request id and seq), unless c->once. QP_OK with c->rep decoded (look at
 * c->rep.status), or a transport error: QP_ECONNRESET (no connection
 * within the reconnect window), QP_ECLOSED, QP_EAUTH, QP_EPROTO,
 * QP_ENOMEM. */
int qpi_rq_do(qpi_rq *r, rq_call *c);

/* qpi_rq_do, then the reply's status as the result (with its message);
 * c's reply is freed. Again while the answer is retry and c waits for
 * ever (the server answers retry at the end of each slice). */
int qpi_rq_do_status(qpi_rq *r, rq_call *c, int retry);

/* qpi_rq_do, then an error reply as the result, with its message; c's
 * reply stays for the caller (qpi_rq_call_done). */
int qpi_rq_run(qpi_rq *r, rq_call *c);

/* Frees c's reply. */
void qpi_rq_call_done(rq_call *c);

/* Checks the handle before a call: QP_ECLOSED once closed; in a forked
 * child, the first call opens a connection of the child's own (a new
 * client id, fresh leases and seqs; the parent's goes on untouched), or
 * QP_EINVAL for an nng handle (tls+tcp://), whose threads stayed in the
 * parent. */
int qpi_rq_check(qpi_rq *r);

/* Notes the leases of n items got: held (worker mode), or to confirm
 * (the acker sends them unless a get carries them first). */
void qpi_rq_got(qpi_rq *r, const qpi_wire_item *items, uint32_t n);

/* Takes up to a batch of the confirmations not yet sent into *idsp: the
 * caller's stack (cap ids) when they fit (none included), else an array
 * of r->keep (*capp bytes; NULL when out of memory: none taken); give it
 * back with qpi_rq_acks_done. Called with r->mu held. */
uint32_t qpi_rq_take_acks(
    qpi_rq *r, uint64_t *stack, size_t cap, uint64_t **idsp, size_t *capp);

/* A buffer of at least size bytes from r->keep (*capp its size), and
 * back to it: qpi_keep_get and qpi_keep_put under r->mu. */
void *qpi_rq_keep_get(qpi_rq *r, size_t size, size_t *capp);
void qpi_rq_keep_put(qpi_rq *r, void *p, size_t cap);

/* Done with the array ids (capp bytes) qpi_rq_take_acks gave with stack:
 * back to r->keep unless it is stack. Called with r->mu held. */
void qpi_rq_acks_done(
    qpi_rq *r, uint64_t *ids, const uint64_t *stack, size_t cap);

/* The item of a put, complete or send: len bytes over r's max_message
 * are QP_ETOOBIG (what names the item); else buf as it is (a msgpack
 * value), or with raw as a msgpack bin in a new allocation (*tmpp, the
 * caller frees it; QP_ENOMEM). (remote.c) */
int qpi_rq_item(qpi_rq *r, qpi_wire_item *it, bool raw, const void *buf,
    size_t len, uint8_t **tmpp, const char *what);

/* Confirms what is pending, gives back what a QP_OPEN_LEASE handle holds,
 * and closes the connection. Idempotent; later calls get QP_ECLOSED. */
int qpi_rq_close(qpi_rq *r);

/* Closes (if open) and frees. NULL is fine. */
void qpi_rq_free(qpi_rq *r);

/* ---- remote queues (remote.c) ---- */

/* Opens queue a->name on a->url with opts->conn's token and TLS settings
 * (QP_OPEN_CREATE: created as opts says; else QP_ENOENT if missing). The
 * first dial fails fast (QP_ECONNREFUSED, QP_EAUTH); later drops redial. */
int qpi_rq_open(qpi_rq **rp, const qpi_addr *a, const qp_queue_opts *opts);

/* Batches (qp_queue_put_many, qp_queue_get_many and their _obj twins):
 * puts n items (raw bytes, or with obj msgpack values the caller checked)
 * in frames of at most max_batch items and max_message bytes, each all or
 * nothing; gets up to max items (bin payloads, or with obj each item's
 * msgpack value; malloc'd), waiting until deadline_ns for the first only. */
int qpi_rq_put_many(qpi_rq *r, const void *const *bufs, const size_t *lens,
    size_t n, bool obj, int64_t deadline_ns);
int qpi_rq_get_many(qpi_rq *r, void **bufs, size_t *lens, size_t max,
    size_t *np, bool obj, int64_t deadline_ns);

/* Deletes the queue a->name on its server: QP_OK or QP_ENOENT. o: token
 * and TLS settings (NULL: $QPIPE_TOKEN, $QPIPE_TLS_CA). */
int qpi_rq_unlink(const qpi_addr *a, const qp_conn_opts *o);

/* The remote backend's ops for queue.c (impl is a qpi_rq *): the queue
 * calls of a remote handle, each with its shared-memory twin's meaning
 * (queue.h). A plain handle confirms each item got once it has it; a
 * QP_OPEN_LEASE handle holds it until task_done (confirmed) or nack (given
 * back, after a delay, its delivery count raised); touch extends the
 * leases held. */
struct qpi_queue_ops;
extern const struct qpi_queue_ops qpi_remote_ops;

#endif /* QPI_RCLIENT_H */
