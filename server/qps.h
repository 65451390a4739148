/*
 * qps.h - qpiped's internal declarations (qps_ names), a section per
 * concept: configuration, logging, the links that carry connections
 * (link.c, listener.c, drivers in link.h), the request layer's entry points
 * (ops.c), the queue registry (registry.c, over lib/store.h), connections
 * (conn.c), parked requests (wait.c) and the handlers of each family of ops.
 */
#ifndef QPS_H
#define QPS_H

#include "htab.h"
#include "qpi.h"
#include "session.h"
#include "shmq.h"
#include "wire.h"

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

/* A place in the code whose warning a flood would repeat: it logs at
 * most one line per QPS_LOG_LIMIT_NS, the next one counting those left
 * out. Static storage, zeroed. */
typedef struct qps_loglimit {
	int64_t next_ns;
	uint64_t dropped;
} qps_loglimit;
#define QPS_LOG_LIMIT_NS 1000000000ll

/* qps_log through ll's limit. Thread-safe. */
void qps_log_limited(qps_loglimit *ll, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

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
	const char *tls_ca; /* --tls-ca: the CA of client certificates */
	bool raw_sp; /* --transport sp: tcp://, ipc:// on plain sockets */
	bool shm_any_owner; /* --shm-any-owner: QP_OPEN_ANY_OWNER */
	/* What one connection may hold, so that it never takes what the
	 * others need (README, Security): */
	uint32_t conn_waits; /* --max-waiting: parked requests */
	uint64_t conn_wait_bytes; /* --max-waiting-bytes: their bytes */
	uint32_t conn_leases; /* --max-leases: items leased at once */
	int64_t handshake_ms; /* --handshake-timeout: SP handshake due */
	int64_t auth_ms; /* --auth-timeout: authenticated (with a token) */
	const char *metrics; /* --metrics URL (metrics.c); NULL: none */
} qps_config;

/* Defaults of the per-connection limits (qpiped --help says why). */
#define QPS_DEFAULT_CONN_WAITS      64
#define QPS_DEFAULT_CONN_WAIT_BYTES (64ull * 1024 * 1024)
#define QPS_DEFAULT_CONN_LEASES     1024
#define QPS_DEFAULT_HANDSHAKE_MS    10000
#define QPS_DEFAULT_AUTH_MS         10000

/* ---- authentication and TLS (sec.c) ---- */

/* Loads the token (--auth-token-file, else $QPIPE_TOKEN) and checks the
 * TLS flags; logs what protects the server. On failure logs the cause and
 * returns an error. */
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
 * (not loopback: a host other than ipc:// not all of whose addresses are
 * loopback, and no client authentication) or QP_EINVAL (tls+tcp://
 * without --tls-cert/--tls-key). */
int qps_sec_check_listener(
    const qps_config *cfg, const qpi_addr *a, const char *url);

/* ---- links: the transport of connections (link.c, listener.c; drivers in
 * link.h) ---- */

/* One request in hand and its reply route: the connection it came on and
 * the SP backtrace its reply echoes. A request that must wait (a get on
 * an empty queue) is parked: no thread waits, and its reply is sent later
 * from whatever thread answers it. */
typedef struct qps_worker qps_worker;

/* Starts every listener (plain sockets or nng streams, by scheme and
 * --transport). On failure logs the cause and returns an error. urls
 * receive the bound addresses (port 0 resolved). */
int qps_net_start(const qps_config *cfg, char urls[][QPI_URL_MAX + 1]);

/* Waits up to timeout_ms until no request is being handled (parked ones
 * excepted). Returns true if all finished. */
bool qps_net_drain(int64_t timeout_ms);

/* Stops the listeners, closes every connection (each goes through
 * qps_ops_conn_remove), waits for the drivers to let go of them. */
void qps_net_close(void);

/* Marks w parked: the ops layer keeps it (and the request) until it calls
 * qps_worker_reply. Called by qps_ops_handle before it publishes the
 * waiter. False (not parked) when the server already holds its limit of
 * parked requests, or is closing. */
bool qps_worker_park(qps_worker *w);

/* Sends rep (NULL: no reply, its client is gone) as the reply of w and
 * frees w (ownership of rep moves). Any thread. */
void qps_worker_reply(qps_worker *w, nng_msg *rep);

/* Closes the connection the worker's request came on once its reply is
 * sent (a connection over --max-connections). */
void qps_worker_close_after(qps_worker *w);

/* The peer address of connection pipe_id, for logs ("tcp://1.2.3.4:5",
 * "a local socket"). */
void qps_net_peer(uint32_t pipe_id, char *buf, size_t len);

/* ---- the request layer's entry points (ops.c) ---- */

typedef enum qps_handled {
	QPS_REPLY, /* *repp holds the reply to send */
	QPS_PARKED, /* the worker was parked (qps_worker_park) */
} qps_handled;

/* Handles one request received on connection conn_id. Never fails: a bad
 * request gets an error reply. Parked (QPS_PARKED), req is the request
 * layer's from then on; answered (QPS_REPLY), it is still the caller's. */
qps_handled qps_ops_handle(
    qps_worker *w, uint32_t conn_id, nng_msg *req, nng_msg **repp);

/* A connection arrived. Past --max-connections it is kept but its
 * requests get QP_ELIMIT replies; far past it, the answer is false and the
 * connection is closed at once. */
bool qps_ops_conn_add(uint32_t conn_id);

/* A connection is gone: its leases go back to their queues, its parked
 * requests are dropped (conn.c, qps_conn_close). */
void qps_ops_conn_remove(uint32_t conn_id);

/* At its time limit: true when connection conn_id may stay (it has
 * authenticated, or needs not, and is within --max-connections; or it is
 * gone). False: close it, *why says why. */
bool qps_ops_conn_settled(uint32_t conn_id, const char **why);

/* Starts the request layer (timer thread, registry); on start returns
 * every lease left by an earlier incarnation of the server. */
int qps_ops_start(const qps_config *cfg);

/* Drops every parked request (no reply; their clients retry after a
 * reconnect), returns every lease held by this server's connections. */
void qps_ops_shutdown(void);

/* SIGTERM: from now on requests that start work are answered
 * QP_ECONNRESET ("shutting down"), and the parked ones are answered so. */
void qps_ops_drain(void);

/* Waits up to ms for the clients to close their connections, so that the
 * replies queued reach them before the socket closes. */
void qps_ops_linger(int64_t ms);

/* Frees what qps_ops_start made. After qps_net_close. */
void qps_ops_fini(void);

/* How long a server thread tries a queue's shared-memory lock before it
 * gives up with QP_EBUSY (qpi_shmq_lock_budget): a local process stopped
 * while it holds the lock must not stall the thread. */
#define QPS_LOCK_BUDGET_NS 150000

/* Sets the calling server thread's lock budget; every thread that
 * touches a queue calls it first. */
static inline void
qps_thread_init(void)
{
	qpi_shmq_lock_budget(QPS_LOCK_BUDGET_NS);
}
/* The retry probe of a queue whose lock was found held: first after
 * QPS_PROBE_MIN_NS, doubling up to QPS_PROBE_MAX_NS. */
#define QPS_PROBE_MIN_NS 1000000
#define QPS_PROBE_MAX_NS 50000000
/* A request with no timeout of its own (ack, stat...) waits at most this
 * long for a held lock, then is answered QP_EBUSY. */
#define QPS_BUSY_WAIT_MS 5000
/* What replies say of a queue whose lock another process holds. */
#define QPS_LOCKED "is locked by another process (stopped or slow)"

/* ---- replies, and what every handler reads (reply.c) ---- */

/* The server's configuration and wire limits, set by qps_ops_start. */
extern const qps_config *qps_cfg;
extern qpi_wire_limits qps_limits;

/* Replies (PROTOCOL.md framing). Each returns NULL only when not even an
 * error reply can be allocated. An error reply to an op that could not be
 * read goes out as op 0. */
nng_msg *qps_rep_error(uint32_t op, uint64_t req_id, int status,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
nng_msg *qps_rep_encode(const qpi_wire_rep *rp);
nng_msg *qps_rep_ok(const qpi_wire_req *r);

/* A reply of these bytes (a reply kept by dedup); NULL if out of memory. */
nng_msg *qps_rep_bytes(const void *p, size_t len);

/* A message of len bytes (contents undefined), from the calling thread's
 * cache of freed ones where it can; NULL if out of memory. qps_msg_free
 * frees m or keeps it for the thread's next one: m must be the caller's
 * alone, and never trimmed (nng_msg_trim). NULL is ignored. */
nng_msg *qps_msg_alloc(size_t len);
void qps_msg_free(nng_msg *m);

/* qps_msg_free of a message whose first n bytes were trimmed (the
 * request's backtrace): they are put back first, so that the message is
 * as it was made, with no more headroom. */
void qps_msg_free_trimmed(nng_msg *m, size_t n);

/* The status of an encoded reply (QP_EPROTO if it does not read as one);
 * qps_rep_read also sets *opp to its op when it reads one. */
int qps_rep_status(nng_msg *m);
int qps_rep_read(nng_msg *m, uint32_t *opp);

/* ---- timers (timer.c) ---- */

/* A one-shot timer, fired by the timer thread (timer.c) with the lock
 * given to qps_timer_start held: arming, cancelling and firing never race. */
typedef struct qps_timer {
	int64_t deadline_ns; /* absolute CLOCK_MONOTONIC */
	size_t idx; /* position in the heap; SIZE_MAX when not armed */
	void (*fire)(struct qps_timer *t);
} qps_timer;

/* Starts the timer thread; mu is the lock it fires callbacks under. */
int qps_timer_start(pthread_mutex_t *mu);

/* Stops and joins the timer thread (call without mu held). */
void qps_timer_stop(void);

/* (Re)arms t for deadline_ns (INT64_MAX: never fires, not armed). Called
 * with mu held. Returns false if the heap cannot grow (out of memory). */
bool qps_timer_arm(qps_timer *t, int64_t deadline_ns);

/* Disarms t if armed. Called with mu held. */
void qps_timer_cancel(qps_timer *t);

/* Initialises t as not armed with its callback. */
void qps_timer_init(qps_timer *t, void (*fire)(qps_timer *t));
/* ---- watching queues for local changes (watch.c) ---- */

typedef struct qps_wgroup qps_wgroup;

/* A queue's watch: the watcher thread that sleeps on its word. */
typedef struct qps_watch {
	struct qpi_shmq *shm; /* whose watch word */
	qps_wgroup *wg; /* the thread group watching it, or NULL */
	bool armed; /* its watch word is armed by the watcher */
	uint32_t seen; /* the watch sequence the watcher last read */
} qps_watch;

/* Sets up watching: changed(w) is called, with mu held, when a watched
 * queue may have been changed by another process. */
void qps_watch_start(pthread_mutex_t *mu, void (*changed)(qps_watch *w));

/* Starts (on) or stops watching w (name: for logs). mu held. */
void qps_watch_set(qps_watch *w, bool on, const char *name);

/* Stops and joins the watcher threads. Called without mu held. */
void qps_watch_stop(void);

/* ---- the queue registry (registry.c) ---- */

/* Kinds of parked request, one waiting list each per queue: other ops
 * that met the queue's lock held (QPS_WAIT_OP), gets, puts and joins,
 * served in that order. */
enum {
	QPS_WAIT_OP = 0,
	QPS_WAIT_GET = 1,
	QPS_WAIT_PUT = 2,
	QPS_WAIT_JOIN = 3,
	QPS_NWAIT
};

typedef struct qps_wait qps_wait;
struct qpi_store;
struct qps_pend;

/* A FIFO of parked requests (wait.c): a queue has one per kind of
 * request, a pipe side too. */
typedef struct qps_wlist {
	qps_wait *head, *tail;
	uint32_t n;
} qps_wlist;

/* A queue the server hosts: its store (lib/store.h: shared memory or
 * durable) and the server's state for it. Every qps_q_ function is called
 * with the ops lock held. */
typedef struct qps_q {
	qpi_hnode node; /* key: qpi_hash_keyed(name) */
	char name[QP_NAME_MAX + 1];
	struct qpi_store *st; /* the items */
	uint64_t ino; /* its segment's inode: a queue made anew is another */
	uint64_t lease_ms; /* default lease of gets on this queue */
	qps_wlist wl[QPS_NWAIT]; /* parked requests, by kind */
	qps_timer lease_timer; /* the nearest lease expiry */
	struct qps_q *prev, *next; /* every hosted queue */
	qps_watch watch; /* on while requests are parked on it */
	bool reclaimed; /* leases of an earlier server returned */
	bool seeded; /* put requests of earlier servers read (q_seed) */
	bool busy; /* its lock was found held: requests park, one probe */
	bool expire_due; /* a lease expiry met the lock held */
	int64_t probe_ns; /* the probe's current backoff */
	qps_timer probe_timer; /* retries the lock (q_probe_fire) */
	struct qps_pend *pend, *pend_tail; /* background work to retry */
	bool quarantined; /* found damaged: QP_ECORRUPT until deleted */
} qps_q;

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

/* Starts the registry (durable queues, watchers); mu is the ops lock;
 * changed(q) is called, with it held, whenever q may have changed under
 * parked requests (items put, room freed, tasks done, leases expired or
 * given back, its lock free again). */
int qps_registry_start(
    const qps_config *cfg, pthread_mutex_t *mu, void (*changed)(qps_q *q));

/* Closes every hosted queue (their items stay). */
void qps_registry_fini(void);

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

/* True when q's segment carries the mark of a removal through the library
 * (a hint only, from a word other processes write: qps_q_stale decides). */
bool qps_q_removed(qps_q *q);

/* Forgets q (closes the server's attachment; the queue stays), which must
 * have no parked request left. */
void qps_q_forget(qps_q *q);

/* Deletes the queue (its items are lost) and forgets q, which must have
 * no parked request left. q may be NULL (not open here). */
int qps_q_delete(const char *name, qps_q *q);

/* The first of the queues open here (the next: q->next). */
qps_q *qps_q_first(void);

/* Calls fn for every queue of this host (open here or not), with its
 * figures; stops early if fn returns false. */
int qps_q_list(
    bool (*fn)(const char *name, const qp_queue_stats *st, void *arg),
    void *arg);

/* Passes on rv, the result of a qpi_store_ call on q: QP_EBUSY (another
 * process holds q's lock, nothing done) marks q busy and arms its probe;
 * the first QP_ECORRUPT logs q as quarantined. */
int qps_q_rv(qps_q *q, int rv);

/* Makes sure q's lease timer fires by expiry_ms (monotonic ms). */
void qps_q_lease_due(qps_q *q, int64_t expiry_ms);

/* Gives back every lease owner holds on q; returns how many. When q's
 * lock is held the work is kept and done by q's probe once it is free. */
uint64_t qps_q_release_owner(qps_q *q, uint64_t owner);

/* Confirms a lease (with done, and a task_done; lease_id 0: the
 * task_done alone) later, by q's probe: for acks that met q's lock held. */
void qps_q_ack_later(qps_q *q, uint64_t lease_id, bool done);

/* ---- durable puts' group commit (sync.c) ---- */

/* Between qps_sync_defer(true) and (false), puts this thread makes to an
 * fsync=always durable queue may leave their fdatasync for after the ops
 * lock: qps_sync_may_defer(s) says whether a put to s may (pass a ticket
 * to qpi_store_put, then qps_sync_note(s, ticket)). The caller must then
 * call qps_sync_park or qps_sync_deferred before the put's reply goes. */
void qps_sync_defer(bool on);
bool qps_sync_may_defer(struct qpi_store *s);
void qps_sync_note(struct qpi_store *s, uint64_t ticket);

/* Waits (without the ops lock) for this thread's deferred sync: QP_OK, or
 * the sync's error (the put must not be acknowledged). */
int qps_sync_deferred(void);

/* Instead of qps_sync_deferred: parks w and hands rep (the put's reply,
 * owned by the syncer from now on) to the sync thread, which sends it
 * once the log is on disk (or an error reply naming op, req_id and name
 * if the sync fails). False when there is nothing to sync or w cannot be
 * parked: the caller then uses qps_sync_deferred. */
bool qps_sync_park(qps_worker *w, nng_msg *rep, uint32_t op, uint64_t req_id,
    const char *name, const uint8_t *client, uint64_t seq);

/* Waits until the sync thread has sent every reply handed to it. */
void qps_sync_drain(void);

/* Starts (ops_mu: to note a failed sync with dedup) and stops the sync
 * thread. */
void qps_sync_start(pthread_mutex_t *ops_mu);
void qps_sync_stop(void);

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

/* qps_dedup_end for a request of op answered with rep (NULL: none): a
 * get's is forgotten, a reply with fields kept whole, else its status. */
void qps_dedup_reply(qps_client *cl, uint64_t seq, uint32_t op, nng_msg *rep);

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

/* ---- connections (conn.c) ---- */

/* A client's connection: it owns its leases (the queues it took them
 * from), its parked requests and its pipe sides; closing it gives them
 * back (qps_conn_close). */
typedef struct qps_conn {
	qpi_hnode node; /* key: connection id */
	uint64_t owner; /* lease owner token: server pid << 32 | id */
	bool over_limit;
	qpi_session_server ss; /* hello/auth state; ss.as.ok: authenticated */
	bool told_unauth; /* a request before auth was refused and logged */
	qps_wait *waits; /* its parked requests */
	qpi_htab work; /* its leases (see conn.c), WORK ones marked */
	/* The records of work (conn.c): chunks kept until it closes. */
	struct qps_lchunk *lchunks;
	qpi_hnode *lfree; /* free records, linked by hnext */
	uint32_t lrecs; /* records in lchunks */
	qps_q **leased; /* the queues it took leases from */
	uint32_t nleased, leased_cap;
	uint32_t nwaits; /* its parked requests (--max-waiting) */
	uint64_t wait_bytes; /* the bytes they hold (--max-waiting-bytes) */
} qps_conn;

/* The connection of id, made on first sight (a request may come before
 * the transport's add); NULL if it left already, or out of memory. */
qps_conn *qps_conn_get(uint32_t id);

/* Connections open now. */
uint32_t qps_conns_count(void);

/* A connection arrived (qps_ops_conn_add): false to close it at once. */
bool qps_conn_open(uint32_t id);

/* As qps_ops_conn_settled, under the ops lock. */
bool qps_conn_settled(uint32_t id, const char **why);

/* A connection left: its parked requests end unanswered, its pipe sides
 * close, its leases go back to their queues. */
void qps_conn_close(uint32_t id);

/* c took leases on q; each one is noted with qps_conn_lease_add, until
 * expiry_ms (monotonic; work: a WORK lease, whose ack is a task_done and
 * which touch may renew). */
void qps_conn_leased(qps_conn *c, qps_q *q);
void qps_conn_lease_add(
    qps_conn *c, qps_q *q, uint64_t lease_id, int64_t expiry_ms, bool work);

/* Forgets a lease of c (acked or released): true if it was a WORK
 * lease. Whether c holds lease_id as a WORK lease. */
bool qps_conn_work_take(qps_conn *c, qps_q *q, uint64_t lease_id);
bool qps_conn_work_holds(qps_conn *c, qps_q *q, uint64_t lease_id);

/* A lease of c renewed (touch) until expiry_ms. */
void qps_conn_lease_renew(
    qps_conn *c, qps_q *q, uint64_t lease_id, int64_t expiry_ms);

/* How many more items c may lease (--max-leases less those it holds;
 * expired ones are forgotten first when it is at its limit). */
uint32_t qps_conn_lease_room(qps_conn *c);

/* The lease records c has allocated, held and free (conn.c): at most
 * twice the most leases it held at once (16 at least), and --max-leases
 * at most (rounded up to 16). */
uint32_t qps_conn_lease_records(const qps_conn *c);

/* q goes away: no connection refers to it any more. */
void qps_conns_forget_q(qps_q *q);

/* Shutting down: every connection's parked requests end, its leases go
 * back; returns how many leases. */
uint64_t qps_conns_drop_all(void);

/* Frees every connection. */
void qps_conns_fini(void);

/* ---- requests and their handlers (wait.c, qdata.c, lease.c, admin.c,
 * session.c, pipes.c) ---- */

/* One request in hand: ops.c checks and dedups it, then gives it to the
 * handler of its family. */
typedef struct qps_req {
	qps_worker *w;
	qps_conn *c;
	nng_msg *req; /* owns the bytes r points into */
	qpi_wire_req *r;
	qps_client *cl; /* dedup: the request's client, or NULL */
	uint32_t base; /* put_many: items put before (r holds the rest) */
} qps_req;

/* A family's handler: QPS_REPLY with *repp, or QPS_PARKED (req now
 * belongs to the parked request). The ops lock is held. */
qps_handled qps_session_handle(const qps_req *rq, nng_msg **repp);
qps_handled qps_qdata_handle(const qps_req *rq, nng_msg **repp);
qps_handled qps_lease_handle(const qps_req *rq, nng_msg **repp);
qps_handled qps_admin_handle(const qps_req *rq, nng_msg **repp);
qps_handled qps_pipe_handle(const qps_req *rq, nng_msg **repp);

/* Refuses r on c when the server wants a token and c has not
 * authenticated (hello, auth and ping pass): true with *repp. */
bool qps_session_refuse(
    qps_conn *c, const qpi_wire_req *r, uint32_t conn_id, nng_msg **repp);

/* What a parked request's retry found. */
typedef enum qps_retry_res {
	QPS_DONE, /* answered: *repp */
	QPS_WAITING, /* still waits (the requests behind it too) */
	QPS_BLOCKED, /* its queue's lock is held: serve nothing now */
} qps_retry_res;

/* A parked request (wait.c): its worker and request, a timer for its
 * timeout, its places in its list (a queue's or a pipe side's) and its
 * connection's, and how to try it again. */
struct qps_wait {
	qps_timer timer; /* first: the timer callback casts back */
	int kind; /* QPS_WAIT_*, or a pipe's */
	qps_worker *w;
	qps_conn *conn;
	qps_wlist *list; /* the list it waits in */
	qps_q *q; /* the queue it waits on (NULL: a pipe's, obj) */
	void *obj;
	void (*expired)(qps_wait *wt); /* at its timeout */
	nng_msg *req; /* owns the bytes r points into */
	qpi_wire_req r; /* its arrays our own */
	qps_client *cl; /* dedup: the client and seq, or NULL */
	uint64_t seq;
	uint32_t base; /* put_many: items of the request put before */
	uint64_t next; /* QPS_WAIT_OP: ids (or task_dones) done so far */
	uint32_t nmiss; /* QPS_WAIT_OP: ids found missing so far */
	size_t bytes; /* of its request, counted in conn->wait_bytes */
	int why; /* a get: what its last try found (QP_EEMPTY...) */
	qps_retry_res (*retry)(qps_wait *wt, nng_msg **repp);
	qps_wait *lprev, *lnext; /* in its list */
	qps_wait *cprev, *cnext; /* in conn's list */
};

/* Parks rq in list for up to tmo ms (<= 0: no limit), expired (NULL:
 * qps_wait_expire_default) called at its timeout: takes rq->req, copies the
 * request (its items; for QPS_WAIT_OP its ids). NULL (nothing taken) if the
 * server cannot park more, or rq's connection holds its limit of parked
 * requests or bytes (qps_wait_refusal says which). */
qps_wait *qps_wait_add(const qps_req *rq, qps_wlist *list, int kind,
    int64_t tmo, void (*expired)(qps_wait *wt));

/* The ELIMIT reply to r after qps_wait_add refused to park it: names
 * the limit (the connection's own, or the server's). */
nng_msg *qps_wait_refusal(const qpi_wire_req *r);

/* Parks rq on q (qps_wait_add), to be tried again by retry whenever q
 * changes. */
qps_wait *qps_wait_park(const qps_req *rq, qps_q *q, int kind, int64_t tmo,
    qps_retry_res (*retry)(qps_wait *wt, nng_msg **repp));

/* As qps_wait_park, for an op that met q's lock held: parked for up to
 * QPS_BUSY_WAIT_MS with its progress (next, nmiss), else answered
 * QP_EBUSY. */
qps_handled qps_wait_busy(const qps_req *rq, qps_q *q, uint64_t next,
    uint32_t nmiss, qps_retry_res (*retry)(qps_wait *wt, nng_msg **repp),
    nng_msg **repp);

/* A queue's parked request at its timeout: answered QP_EEMPTY, QP_EFULL,
 * QP_ETIMEDOUT (join) or QP_EBUSY (its lock held), and freed. */
void qps_wait_expire_default(qps_wait *wt);

/* Ends a parked request: sends rep (NULL: no reply, its client is gone),
 * settles its dedup entry, frees it. */
void qps_wait_finish(qps_wait *wt, nng_msg *rep);

/* Serves q's parked requests in order while they can go on; nothing
 * while q is busy (its probe comes back). */
void qps_wait_dispatch(qps_q *q);

/* Ends every request parked on q with status ("queue 'q' " why). */
void qps_wait_fail_all(qps_q *q, int status, const char *why);

/* Opens r's queue for a handler (create: a put's CREATE): a stale one
 * (deleted by another process) is forgotten first. QP_OK, else *repp. */
int qps_admin_open_for(
    const qpi_wire_req *r, bool create, qps_q **qp, nng_msg **repp);

/* A get's confirmations (r->ids) of c's leases on q; those that meet q's
 * lock held are done later. */
void qps_lease_ack_ids(qps_conn *c, qps_q *q, const qpi_wire_req *r);

/* ---- pipes through the server (pipes.c) ---- */

/* A connection left: the sides it held close (their peers see end of
 * file), its parked pipe requests end unanswered. */
void qps_pipes_conn_gone(uint32_t conn);

/* Shutting down: parked pipe requests are answered QP_ECONNRESET. */
void qps_pipes_drain(void);

/* Frees every pipe. */
void qps_pipes_fini(void);

/* ---- metrics, the status page and its JSON (metrics.c) ---- */

/* Why a connection was refused or closed unserved. */
enum {
	QPS_REFUSED_LIMIT = 0, /* over --max-connections */
	QPS_REFUSED_SHUTDOWN = 1, /* the server is shutting down */
	QPS_REFUSED_HANDSHAKE = 2, /* not an SP req0 peer */
	QPS_REFUSED_TOO_BIG = 3, /* a message over --max-message */
	QPS_REFUSED_N
};

/* Starts the metrics listener of cfg->metrics (none: does nothing). On
 * failure logs the cause and returns an error. url receives the bound
 * http:// address (port 0 resolved), "" if none. */
int qps_metrics_start(const qps_config *cfg, char *url, size_t len);

/* Stops the metrics listener (before qps_ops_fini). Safe if not started. */
void qps_metrics_stop(void);

/* Counting, from any thread, lock-free: a connection admitted, one
 * refused (QPS_REFUSED_*), an authentication refused, bytes received and
 * sent on connections. */
void qps_metrics_conn_opened(void);
void qps_metrics_conn_refused(int why);
void qps_metrics_auth_failed(void);
void qps_metrics_bytes(uint64_t in, uint64_t out);

/* The end of a request that arrived at t0_ns (monotonic, qpi_now_ns): its
 * reply rep (NULL: none was sent) gives the op and the result. */
void qps_metrics_request_end(int64_t t0_ns, nng_msg *rep);

/* Requests parked now (link.c). */
uint64_t qps_net_parked(void);

/* Runs fn(arg) with the ops lock held (ops.c): how a scrape reads the
 * registry and the connections. */
void qps_ops_locked(void (*fn)(void *arg), void *arg);

#endif /* QPS_H */
