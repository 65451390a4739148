/*
 * qps.h - qpiped's internal declarations (qps_ names): configuration,
 * logging, the nng worker pool (net.c) and the request handling that sits
 * on top of it (ops.c, hosted.c).
 */
#ifndef QPS_H
#define QPS_H

#include "qpi.h"

#include <nng/nng.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- logging (log.c) ---- */

enum {
	QPS_LOG_ERROR = 0,
	QPS_LOG_WARN = 1,
	QPS_LOG_INFO = 2,
	QPS_LOG_DEBUG = 3,
};

/* Messages above this level are dropped; QPS_LOG_INFO unless changed. */
extern int qps_log_level;

/* Writes one line to stderr: time, level and the formatted message, with
 * any control character in it escaped. Thread-safe (one write() a line). */
void qps_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parses "error", "warn", "info" or "debug"; -1 if none of them. */
int qps_log_level_parse(const char *s);

/* ---- configuration (qpiped.c) ---- */

#define QPS_MAX_LISTEN 16

typedef struct qps_config {
	const char *listen[QPS_MAX_LISTEN]; /* URLs to serve */
	size_t nlisten;
	size_t max_message; /* bytes: largest request accepted */
	uint64_t max_queue_bytes; /* capacity of queues the server creates */
	uint32_t max_connections; /* connections served at once */
	int64_t lease_ms; /* default lease (visibility timeout) */
	bool insecure; /* allow non-loopback addresses without a token */
	const char *data_dir; /* durable queues: DIR/NAME.qlog; NULL: none */
	const char *fsync; /* default fsync policy of durable queues */
	const char *port_file; /* where to write the bound URLs */
	const char *token_file; /* --auth-token-file (else $QPIPE_TOKEN) */
	const char *tls_cert; /* --tls-cert, --tls-key: tls+tcp:// listeners */
	const char *tls_key;
	const char
	    *tls_ca; /* --tls-ca: client certificates must chain to it */
	bool raw_sp; /* tcp:// and ipc:// on spnet.c (--transport sp) */
} qps_config;

/* ---- authentication and TLS (sec.c) ---- */

/* Loads the token (--auth-token-file, else $QPIPE_TOKEN) and, when a
 * tls+tcp:// listener is configured, the TLS files; logs what protects the
 * server. On failure logs the cause and returns an error. */
int qps_sec_start(const qps_config *cfg);

/* Frees the token and the TLS configuration. */
void qps_sec_fini(void);

/* True when connections must authenticate (a token is loaded). */
bool qps_sec_auth_required(void);

/* The server's token (len 0: none). */
const struct qpi_token *qps_sec_token(void);

/* The start-up policy for one listener a (its text url): QP_OK to serve
 * it (said loudly in the log when --insecure lets an unprotected
 * non-loopback address through), else logs why and returns QP_EPERM
 * (not loopback, no client authentication) or QP_EINVAL (tls+tcp://
 * without --tls-cert/--tls-key). loopback: a's host is a loopback one. */
int qps_sec_check_listener(
    const qps_config *cfg, const qpi_addr *a, const char *url, bool loopback);

/* Gives a tls+tcp:// listener its TLS configuration (others: nothing to
 * do). QP_OK, or logs and returns an error. */
int qps_sec_listener_setup(nng_listener l, const qpi_addr *a, const char *url);

/* ---- the nng worker pool (net.c) ---- */

/* One nng context and its aio: receives a request, hands it to
 * qps_ops_handle, sends the reply. A request that must wait (a get on an
 * empty queue) parks its worker; another worker takes its place so that
 * enough contexts keep receiving. */
typedef struct qps_worker qps_worker;

/* Opens the rep0 socket, starts every listener and the receiving workers.
 * On failure logs the cause and returns an error. urls/nurls receive the
 * bound addresses (port 0 resolved). */
int qps_net_start(const qps_config *cfg, char urls[][QPI_URL_MAX + 1]);

/* Waits up to timeout_ms until no worker is handling or sending a reply
 * (parked ones excepted). Returns true if all finished. */
bool qps_net_drain(int64_t timeout_ms);

/* Closes the socket, waits for every callback, frees every worker. */
void qps_net_close(void);

/* Marks w parked: the ops layer keeps it (and the request) until it calls
 * qps_worker_reply or qps_worker_drop. Called by qps_ops_handle before it
 * publishes the waiter. Returns false (not parked) when the server already
 * holds its limit of parked requests. */
bool qps_worker_park(qps_worker *w);

/* Sends rep as the reply of a parked worker (ownership of rep moves). */
void qps_worker_reply(qps_worker *w, nng_msg *rep);

/* Gives up a parked worker without a reply (its client is gone). */
void qps_worker_drop(qps_worker *w);

/* Closes the connection the worker's request came on once its reply is
 * sent (a connection over --max-connections). */
void qps_worker_close_after(qps_worker *w, uint32_t pipe_id);

/* Counters for logs and stat. */
typedef struct qps_net_stats {
	uint64_t workers; /* contexts allocated */
	uint64_t receiving; /* contexts waiting for a request */
	uint64_t parked; /* requests waiting (gets, puts, joins) */
	uint64_t connections; /* pipes connected now */
} qps_net_stats;

void qps_net_stats_get(qps_net_stats *st);

/* The peer address of connection pipe_id, for logs ("tcp://1.2.3.4:5",
 * "a local socket"). */
void qps_net_peer(uint32_t pipe_id, char *buf, size_t len);

/* ---- raw SP listeners (spnet.c) ---- */

/* Connection ids of raw connections have this bit set; nng's pipe ids
 * never do, so both share the id space the ops layer keys by. */
#define QPS_SP_CONN_BIT 0x80000000u

/* One raw connection (spnet.c). */
typedef struct qps_spconn qps_spconn;

/* Listens on a (tcp:// or ipc://) with the SP req/rep wire format on
 * plain sockets, served by spnet's event loop; writes the bound URL into
 * bound. On failure logs and returns an error. */
int qps_spnet_listen(const qps_config *cfg, const qpi_addr *a, char *bound);

/* A raw request's worker: the reply route is connection c and the
 * request's backtrace. Counted busy until replied or dropped. NULL when
 * out of memory. */
qps_worker *qps_worker_sp_new(qps_spconn *c, const uint8_t *bt, size_t btlen);

/* Ends a raw worker that was not parked: sends rep (NULL: nothing). */
void qps_worker_sp_done(qps_worker *w, nng_msg *rep);

/* Sends rep (owned from now on; NULL: no reply) as the answer with
 * backtrace bt on c, then lets go of the request's hold on c. close: shut
 * the connection once the reply is out. Any thread. */
void qps_spnet_reply(
    qps_spconn *c, const uint8_t *bt, size_t btlen, nng_msg *rep, bool close);

/* Raw connections open now. */
uint64_t qps_spnet_count(void);

/* The peer of raw connection id, for logs. */
void qps_spnet_peer(uint32_t id, char *buf, size_t len);

/* Stops the loop, closes the listeners and every raw connection (their
 * ops state goes with qps_ops_conn_remove). Idempotent. */
void qps_spnet_close(void);

/* ---- request handling (ops.c) ---- */

struct qpi_wire_req;
struct qpi_wire_rep;

/* Replies (PROTOCOL.md framing). Each returns NULL only when not even an
 * error reply can be allocated. An error reply to an op that could not be
 * read goes out as op 0. */
nng_msg *qps_rep_error(uint32_t op, uint64_t req_id, int status,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
nng_msg *qps_rep_encode(const struct qpi_wire_rep *rp);
nng_msg *qps_rep_ok(const struct qpi_wire_req *r);

/* The status of an encoded reply. */
int qps_rep_status(nng_msg *m);

typedef enum qps_handled {
	QPS_REPLY, /* *repp holds the reply to send */
	QPS_PARKED, /* the worker was parked (qps_worker_park) */
} qps_handled;

/* Handles one request received on pipe pipe_id. Takes ownership of req.
 * Never fails: a bad request gets an error reply. */
qps_handled qps_ops_handle(
    qps_worker *w, uint32_t pipe_id, nng_msg *req, nng_msg **repp);

/* A connection arrived. Past --max-connections it is kept but its
 * requests get QP_ELIMIT replies; far past it, the answer is false and the
 * connection is closed at once. */
bool qps_ops_conn_add(uint32_t pipe_id);

/* A connection is gone: its leases go back to their queues, its parked
 * requests are dropped. */
void qps_ops_conn_remove(uint32_t pipe_id);

/* Starts the request layer (timer thread, wake watcher); on start returns
 * every lease left by an earlier incarnation of the server. */
int qps_ops_start(const qps_config *cfg);

/* Drops every parked request (no reply; their clients retry after a
 * reconnect), returns every lease held by this server's connections. */
void qps_ops_shutdown(void);

/* SIGTERM: from now on requests that start work are answered
 * QP_ECONNRESET ("shutting down"), and the parked ones are answered so. */
void qps_ops_drain(void);

/* Waits up to ms for the clients to close their connections, so that the
 * replies nng has queued reach them before the socket closes. */
void qps_ops_linger(int64_t ms);

/* Frees what qps_ops_start made. After qps_net_close. */
void qps_ops_fini(void);

/* ---- small containers (tab.c) ---- */

/* An intrusive hash table of nodes keyed by a 64-bit number (a pipe id, a
 * client id, or a name's hash: equal keys may chain, callers compare). */
typedef struct qps_hnode {
	struct qps_hnode *hnext;
	uint64_t key;
} qps_hnode;

typedef struct qps_htab {
	qps_hnode **b;
	size_t nb; /* buckets, a power of two */
	size_t n; /* nodes */
} qps_htab;

/* The first node with key, or NULL; qps_htab_next gives the following node
 * of the same key. */
qps_hnode *qps_htab_find(const qps_htab *t, uint64_t key);
qps_hnode *qps_htab_next(qps_hnode *n);

/* Inserts n (n->key set). Grows the table; on allocation failure it stays
 * at its size (chains get longer), never fails. */
void qps_htab_insert(qps_htab *t, qps_hnode *n);

/* Removes n, which must be in t. */
void qps_htab_remove(qps_htab *t, qps_hnode *n);

/* Calls fn on every node; fn may remove the node it is given. */
void qps_htab_each(qps_htab *t, void (*fn)(qps_hnode *, void *), void *arg);

/* Frees the bucket array (not the nodes). */
void qps_htab_fini(qps_htab *t);

/* FNV-1a of len bytes: the key for names. */
uint64_t qps_hash(const void *p, size_t len);

/* ---- timers (timer.c) ---- */

/* A one-shot timer run by the timer thread with the lock given to
 * qps_timer_start held (the ops layer's lock): arming, cancelling and
 * firing never race. A heap of deadlines and one condvar wait for the
 * nearest: no polling. */
typedef struct qps_timer {
	int64_t deadline_ns; /* absolute CLOCK_MONOTONIC */
	size_t idx; /* position in the heap; SIZE_MAX when not armed */
	void (*fire)(struct qps_timer *t);
} qps_timer;

/* Starts the timer thread; mu is the lock it fires callbacks under, and
 * after (may be NULL) runs after each callback with mu released (to send
 * the replies the callback queued). */
int qps_timer_start(pthread_mutex_t *mu, void (*after)(void));

/* Stops and joins the timer thread (call without mu held). */
void qps_timer_stop(void);

/* (Re)arms t for deadline_ns (INT64_MAX: never fires, not armed). Called
 * with mu held. Returns false if the heap cannot grow (out of memory). */
bool qps_timer_arm(qps_timer *t, int64_t deadline_ns);

/* Disarms t if armed. Called with mu held. */
void qps_timer_cancel(qps_timer *t);

/* Initialises t as not armed with its callback. */
void qps_timer_init(qps_timer *t, void (*fire)(qps_timer *t));

/* ---- hosted queues (hosted.c) ---- */

/* Kinds of parked request, one waiting list each per queue: gets, puts,
 * joins, and other ops that met the queue's lock held (QPS_WAIT_OP). */
enum {
	QPS_WAIT_GET = 0,
	QPS_WAIT_PUT = 1,
	QPS_WAIT_JOIN = 2,
	QPS_WAIT_OP = 3,
	QPS_NWAIT
};

/* How long a server thread tries a queue's shared-memory lock before it
 * gives up with QP_EBUSY (qpi_shmq_lock_budget): a local process stopped
 * while it holds the lock must not stall the thread. */
#define QPS_LOCK_BUDGET_NS 150000
/* The retry probe of a queue whose lock was found held: first after
 * QPS_PROBE_MIN_NS, doubling up to QPS_PROBE_MAX_NS. */
#define QPS_PROBE_MIN_NS 1000000
#define QPS_PROBE_MAX_NS 50000000
/* A request with no timeout of its own (ack, stat...) waits at most this
 * long for a held lock, then is answered QP_EBUSY. */
#define QPS_BUSY_WAIT_MS 5000

/* Sets the calling server thread's lock budget (QPS_LOCK_BUDGET_NS);
 * every thread that touches a queue calls it first. */
void qps_thread_init(void);

struct qps_pend;

typedef struct qps_wait qps_wait;
typedef struct qps_wgroup qps_wgroup;
struct qpi_shmq;
struct qpi_shmq_tag;

/* A queue the server hosts: one of this host's shared-memory queues, plus
 * the server's own state for it. Every qps_q_ function is called with the
 * ops lock held. */
typedef struct qps_q {
	qps_hnode node; /* key: qps_hash(name) */
	char name[QP_NAME_MAX + 1];
	struct qpi_shmq *shm; /* the shared-memory queue */
	struct qpi_durq *dur; /* durable: its log (shm is the log's queue) */
	uint64_t ino; /* its segment's inode: a queue made anew is another */
	uint64_t lease_ms; /* default lease of gets on this queue */
	qps_wait *whead[QPS_NWAIT], *wtail[QPS_NWAIT]; /* parked, FIFO */
	uint32_t nwait[QPS_NWAIT];
	qps_timer lease_timer; /* the nearest lease expiry */
	struct qps_q *prev, *next; /* every hosted queue */
	qps_wgroup *wg; /* the watcher group watching it, or NULL */
	bool armed; /* its watch word is armed by the watcher */
	bool reclaimed; /* leases of an earlier server returned */
	uint32_t seen; /* the watch sequence the watcher last read */
	bool seeded; /* put requests of earlier servers read (q_seed) */
	bool busy; /* its lock was found held: requests park, one probe */
	bool expire_due; /* a lease expiry met the lock held */
	int64_t probe_ns; /* the probe's current backoff */
	qps_timer probe_timer; /* retries the lock (q_probe_fire) */
	struct qps_pend *pend, *pend_tail; /* background work to retry */
} qps_q;

/* One item taken from a queue under a lease. data is malloc'd: the msgpack
 * encoding of the item's value (a bin for raw bytes). */
typedef struct qps_got {
	void *data;
	size_t len;
	uint64_t lease_id;
	uint32_t deliveries; /* 1 on the first delivery */
} qps_got;

/* Options of the create op, 0 = the server's default. */
typedef struct qps_q_opts {
	uint64_t maxsize;
	uint64_t capacity;
	uint64_t max_message;
	uint64_t lease_ms;
	bool excl;
	bool durable; /* kept in the data directory */
	const char *fsync; /* durable: policy, "" or NULL = --fsync */
} qps_q_opts;

/* Starts the hosted-queue layer (watcher thread); mu is the ops lock. */
int qps_hosted_start(const qps_config *cfg, pthread_mutex_t *mu);

/* Closes every hosted queue (their items stay in shared memory). */
void qps_hosted_fini(void);

/* Finds or opens the queue: with create, makes it with the server's
 * defaults if it does not exist. QP_ENOENT, QP_EINVAL, QP_ENOMEM... */
int qps_q_open(const char *name, bool create, qps_q **qp);

/* Creates the queue with o (QP_EEXIST with o->excl if it exists; without,
 * an existing queue is opened as it is). */
int qps_q_create(const char *name, const qps_q_opts *o, qps_q **qp);

/* The hosted queue of that name if the server has it open, else NULL. */
qps_q *qps_q_find(const char *name);

/* True when q's segment is no longer the one the name points to (it was
 * deleted, and perhaps made anew, by another process). */
bool qps_q_stale(qps_q *q);

/* Forgets q (closes the server's attachment; the queue stays), which must
 * have no parked request left. */
void qps_q_forget(qps_q *q);

/* Deletes the queue's segment (its items are lost) and forgets q, which
 * must have no parked request left. q may be NULL (not open here). */
int qps_q_delete(const char *name, qps_q *q);

/* Puts one item (its msgpack encoding) without waiting: QP_OK, QP_EFULL,
 * QP_ETOOBIG. tag (NULL: none): the request's client id and seq, noted
 * with the item in the segment or the log, so that a restarted server
 * knows the request was applied (see q_seed). */
int qps_q_put(
    qps_q *q, const uint8_t *item, size_t len, const struct qpi_shmq_tag *tag);

/* Durable "always" queues: between qps_q_defer_sync(true) and (false),
 * this thread's qps_q_put leaves its fdatasync to qps_q_sync_deferred,
 * which the caller must call (without the ops lock) before it sends the
 * put's reply: QP_OK, or the sync's error (the put must not be
 * acknowledged). Puts made outside that window sync before they return. */
void qps_q_defer_sync(bool on);
int qps_q_sync_deferred(void);

/* Instead of qps_q_sync_deferred: parks w and hands rep (the put's reply,
 * owned by the syncer from now on) to the sync thread, which sends it
 * once the log is on disk (or an error reply naming op, req_id and name
 * if the sync fails). False when there is nothing to sync or w cannot be
 * parked: the caller then uses qps_q_sync_deferred. */
bool qps_q_sync_park(qps_worker *w, nng_msg *rep, uint32_t op, uint64_t req_id,
    const char *name, const uint8_t *client, uint64_t seq);

/* Waits until the sync thread has sent every reply handed to it. */
void qps_q_sync_drain(void);

/* Puts a batch without waiting, all or nothing as far as the segment lets
 * it be told (see hosted.c): QP_OK, QP_EFULL (none put), QP_ETOOBIG (can
 * never fit). */
struct qpi_wire_item;
int qps_q_put_many(qps_q *q, const struct qpi_wire_item *items, uint32_t n,
    const struct qpi_shmq_tag *tag);

/* Takes the oldest item under a lease held by owner for lease_ms (0: the
 * queue's default) without waiting: QP_OK with *g filled, or QP_EEMPTY.
 * mode is QPI_LEASE_CONFIRM or QPI_LEASE_WORK. max_len > 0: an item whose
 * encoding is larger is not taken (QP_ETOOBIG, it stays at the head). */
int qps_q_get(qps_q *q, uint64_t owner, uint32_t mode, uint64_t lease_ms,
    size_t max_len, qps_got *g);

/* Confirms a lease: the item is gone for good. QP_OK, or QP_ENOENT if
 * the lease is not held (expired, released, acked before). */
int qps_q_ack(qps_q *q, uint64_t lease_id);

/* Gives a lease back: the item returns to the head of the queue (after
 * delay_ms) with its delivery count raised. QP_OK or QP_ENOENT. */
int qps_q_release(
    qps_q *q, uint64_t owner, uint64_t lease_id, uint64_t delay_ms);

/* Extends a lease to lease_ms (0: the queue's default) from now. QP_OK or
 * QP_ENOENT (not held: expired, released or acked). */
int qps_q_renew(qps_q *q, uint64_t lease_id, uint64_t lease_ms);

/* Gives back every lease owner holds on q; returns how many. When q's
 * lock is held by another process the work is kept and done by q's
 * probe once the lock is free (0 returned now). */
uint64_t qps_q_release_owner(qps_q *q, uint64_t owner);

/* Confirms a lease (and with done, one task_done) later, by q's probe:
 * for acks that met q's lock held. */
void qps_q_ack_later(qps_q *q, uint64_t lease_id, bool done);

/* JoinableQueue: n items done. QP_OK or QP_EVALUE. Any qps_q_ call on a
 * shared-memory queue may also answer QP_EBUSY (nothing done): another
 * process holds its lock; q->busy is then set and q's probe armed. */
int qps_q_task_done(qps_q *q, uint64_t n);

/* True when every item put has been marked done (false when q's lock is
 * held: q->busy tells). */
bool qps_q_joined(qps_q *q);

/* The exact number of ready items, and the queue's figures. */
int qps_q_qsize(qps_q *q, uint64_t *np);
int qps_q_stat(qps_q *q, qp_queue_stats *st);

/* Calls fn for every queue of this host (open here or not), with its
 * figures; stops early if fn returns false. */
int qps_q_list(
    bool (*fn)(const char *name, const qp_queue_stats *st, void *arg),
    void *arg);

/* Iterates over the queues open here. */
qps_q *qps_q_first(void);
qps_q *qps_q_next(qps_q *q);

/* Asks the watcher to wake the ops layer (qps_ops_kick) when another
 * process changes q (on: requests are parked on it), or stops that. */
void qps_q_watch(qps_q *q, bool on);

/* Called by the hosted layer, with the ops lock held, when q may have
 * changed under parked requests: items put, space freed, tasks done,
 * leases expired. */
void qps_ops_kick(qps_q *q);

/* ---- deduplication of (client id, seq) (dedup.c) ---- */

#define QPS_CLIENT_ID_LEN 16
/* Each client's last seqs remembered (PROTOCOL.md: at least 1024). */
#define QPS_DEDUP_WINDOW 1024

typedef struct qps_client qps_client;

typedef enum qps_dedup_res {
	QPS_DEDUP_NEW, /* first sight: apply it, then qps_dedup_end */
	QPS_DEDUP_REPLAY, /* done before: answer with prev */
	QPS_DEDUP_TAKEOVER, /* parked before: end prev.wait, apply anew */
	QPS_DEDUP_TOO_OLD, /* older than the window: refuse (EPROTO) */
} qps_dedup_res;

typedef struct qps_dedup_prev {
	int status; /* REPLAY: the first reply's status */
	const uint8_t *rep; /* REPLAY: its bytes, if kept (else NULL) */
	size_t replen;
	qps_wait *wait; /* TAKEOVER: the parked first request */
	uint32_t skip; /* NEW, TAKEOVER: items of a put_many already in
	                  the queue (a batch an earlier server cut short) */
} qps_dedup_prev;

/* The client with that id, made on first sight; NULL if out of memory. */
qps_client *qps_dedup_client(const uint8_t *id);

/* Looks up seq for a request of op. */
qps_dedup_res qps_dedup_begin(
    qps_client *cl, uint64_t seq, uint32_t op, qps_dedup_prev *prev);

/* The request of seq parked as w (a repeat would take it over). */
void qps_dedup_park(qps_client *cl, uint64_t seq, qps_wait *w);

/* The request of seq is answered: keep its status (and the reply bytes,
 * if rep is not NULL) to replay, or forget it (keep false: a get). */
void qps_dedup_end(qps_client *cl, uint64_t seq, int status, const void *rep,
    size_t replen, bool keep);

/* A put request of an earlier server (a queue's tags, see q_seed): done
 * of its n items are in the queue. All: a repeat is answered OK; some:
 * a repeat puts the rest (prev.skip). Never overrides what this server
 * saw itself. Returns 1 if noted, else 0. */
int qps_dedup_seed(const uint8_t *id, uint64_t seq, uint32_t done, uint32_t n);

/* The reply of (id, seq), answered OK already, turned out to be status
 * (a durable put whose sync failed): a repeat gets status. */
void qps_dedup_fail(const uint8_t *id, uint64_t seq, int status);

/* Forgets every client. */
void qps_dedup_fini(void);

/* ---- pipes through the server (pipes.c) ---- */

/* Applies a pipe op (pipe_open, _send, _recv, _poll, _close) of
 * connection conn, as ops.c applies the others: QPS_PARKED (req now
 * belongs to the parked request) or QPS_REPLY with *repp. cl: the dedup
 * client of the request, or NULL. The ops lock is held. */
qps_handled qps_pipe_apply(qps_worker *w, uint32_t conn, nng_msg *req,
    const struct qpi_wire_req *r, qps_client *cl, nng_msg **repp);

/* A connection left: the sides it held close (their peers see end of
 * file), its parked pipe requests end unanswered. */
void qps_pipes_conn_gone(uint32_t conn);

/* Shutting down: parked pipe requests are answered QP_ECONNRESET. */
void qps_pipes_drain(void);

/* Frees every pipe. */
void qps_pipes_fini(void);

#endif /* QPS_H */
