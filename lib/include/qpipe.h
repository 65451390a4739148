/*
 * qpipe.h - Python's multiprocessing Queue and Pipe, in C, for processes on
 * one machine and across machines.
 *
 * One string, the address, picks the path the bytes take:
 *
 *   "jobs", "shm://jobs"             this host's shared memory, no server
 *   "tcp://HOST:PORT/jobs"           the qpiped listening there (port 7450)
 *   "tls+tcp://HOST:PORT/jobs"       the same over TLS
 *   "ipc:///path/to/socket/jobs"     the same over a Unix socket
 *
 * Conventions, the same for every call:
 *
 * - Every call returns an int from the qp_err enum: QP_OK (0) on success.
 *   qp_strerror() names a code; qp_errmsg() gives the calling thread's
 *   detailed message for the last failure ("name 'a b' has a space").
 * - Durations are qp_duration milliseconds with Python's meaning:
 *   QP_FOREVER (-1) blocks (block=True, timeout=None), QP_NOWAIT (0) does not
 *   block, > 0 is a timeout. Any other negative value is QP_EINVAL.
 * - Handles are opaque. close() is idempotent and leaves the handle valid,
 *   answering QP_ECLOSED from then on; free() closes and releases it.
 *   Threads: each handle type says what threads may do at once; free()
 *   must not run while another thread is still inside a call on the handle.
 * - Network errors. A call that reaches a server or a peer (a tcp://,
 *   ipc:// or tls+tcp:// handle) may fail, beyond its own errors, with:
 *   QP_ECONNREFUSED (opening: nobody listens), QP_ETIMEDOUT (opening: no
 *   answer in time), QP_EAUTH (the tokens differ, one end has none, or the
 *   TLS handshake failed; also when a reconnect finds such a server),
 *   QP_EPROTO (the peer is not a qpipe server or peer, or broke the
 *   protocol), QP_ECONNRESET (a remote queue's or pipe's connection was
 *   lost and did not come back within the reconnect window, 10 s or
 *   $QPIPE_RECONNECT_MS: a request that changes the queue may have been
 *   applied, but never twice), QP_EINVAL (a tls+tcp:// handle, or any
 *   handle when QPIPE_TRANSPORT=nng, used in a forked child: see fork()
 *   below).
 * - Ownership moves on success only. Buffers that the library returns are
 *   allocated with malloc() and belong to the caller: release them with
 *   qp_free().
 * - Items are msgpack values. The bytes calls store a msgpack bin; the _obj
 *   calls take and return the msgpack encoding of any one value. A bytes get
 *   of an item that is not a bin returns its msgpack encoding, as Python's
 *   recv_bytes returns the pickle of an object sent with send().
 */
#ifndef QPIPE_H
#define QPIPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define QP_API __attribute__((visibility("default")))
#else
#define QP_API
#endif

#define QP_VERSION_MAJOR  0
#define QP_VERSION_MINOR  1
#define QP_VERSION_PATCH  0
#define QP_VERSION_STRING "0.1.0"

/* The default port of qpiped, and the default largest message (32 MiB). */
#define QP_DEFAULT_PORT        7450
#define QP_DEFAULT_MAX_MESSAGE (32u * 1024u * 1024u)
/* Queue and pipe names: 1 to QP_NAME_MAX bytes of [A-Za-z0-9._-]. */
#define QP_NAME_MAX 128

/* Error codes: the list lives in proto/errors.def, shared with the wire. */
typedef enum qp_err {
#define QP_ERR(name, num, text) QP_##name = num,
#include "qpipe_errors.def"
#undef QP_ERR
} qp_err;

/* The text for an error code ("queue is empty"); never NULL. */
QP_API const char *qp_strerror(int err);

/* The calling thread's message for its last failed call, naming the cause
 * ("cannot connect to tcp://h:7450: connection refused"); "" if none. */
QP_API const char *qp_errmsg(void);

/* Releases a buffer that the library returned. NULL is fine. */
QP_API void qp_free(void *buf);

/* Milliseconds, Python's timeout: -1 forever, 0 no wait, > 0 a timeout. */
typedef int64_t qp_duration;
#define QP_FOREVER ((qp_duration) -1)
#define QP_NOWAIT  ((qp_duration) 0)

/* The library's version string, "0.1.0". */
QP_API const char *qp_version(void);

/* ------------------------------------------------------------------------
 * Addresses
 * ------------------------------------------------------------------------ */

/* Checks an address without opening anything: QP_OK, or QP_EINVAL with
 * qp_errmsg() saying what is wrong. */
QP_API int qp_addr_check(const char *addr);

/* ------------------------------------------------------------------------
 * Queue (multiprocessing.Queue and JoinableQueue)
 * ------------------------------------------------------------------------ */

/* A queue handle. Threads: any number may call on one handle at once
 * (a remote handle's requests share its connection). fork(): shm://
 * handles (qp_queue_anon's too) work in children; a tcp:// or ipc://
 * handle does too: the child's first call opens a connection of its own
 * (its own client id and leases), and the parent's goes on. A tls+tcp://
 * handle (nng's threads stay in the parent) answers QP_EINVAL there. */
typedef struct qp_queue qp_queue;

/* Open flags. */
#define QP_OPEN_CREATE 0x1u /* create the queue if it does not exist */
#define QP_OPEN_EXCL   0x2u /* with CREATE: fail with QP_EEXIST if it does */
/* Worker mode: a get leases its item until task_done confirms it or
 * qp_queue_nack gives it back; if the process dies or its lease runs out
 * first, the item returns to the head of the queue (shm://: when a
 * worker-mode get on the queue next looks, within 250 ms while it waits).
 * Not for durable shm:// queues. */
#define QP_OPEN_LEASE 0x4u
/* Durable: the queue lives in a file and survives restarts. shm:// needs
 * qp_queue_opts.path (the file; one process opens it at a time); a
 * server's queue is kept under its --data-dir. See fsync below. */
#define QP_OPEN_DURABLE 0x8u
/* Trust (shm://). Segments live in a directory every user can write:
 * opening a segment whose file another user owns fails with QP_EPERM
 * (that user could read every item, and change the queue under this
 * process), unless this flag says the caller trusts its owner. A segment
 * truncated by its owner, or with header words that fail their checks,
 * is quarantined for this handle: calls fail with QP_ECORRUPT, never a
 * SIGBUS or an abort (see README, Security). */
#define QP_OPEN_ANY_OWNER 0x100u

struct qp_conn_opts;

/* Options for qp_queue_open and qp_queue_anon; zero means the default. */
typedef struct qp_queue_opts {
	uint32_t flags; /* QP_OPEN_* */
	uint64_t maxsize; /* items; 0 = unbounded (up to capacity) */
	uint64_t capacity; /* bytes of item storage; 0 = 64 MiB */
	uint64_t max_message; /* largest item in bytes; 0 = 32 MiB */
	uint64_t lease_ms; /* QP_OPEN_LEASE: how long a got item stays
	                      leased unconfirmed (at most 2^31-1); 0 = the
	                      server's, 30 s for shm:// */
	/* Remote queues: token and TLS settings, as for qp_dial_opts (NULL:
	 * $QPIPE_TOKEN and $QPIPE_TLS_CA if set). Unused for shm:// queues. */
	const struct qp_conn_opts *conn;
	/* QP_OPEN_DURABLE: path is the queue's file (shm:// only), fsync
	 * the policy of a queue this call creates: "always" (a put returns
	 * once on disk), "interval:MS" (synced within MS), "never" (the
	 * kernel's choice); NULL: interval:100, or the server's default. */
	const char *path;
	const char *fsync;
} qp_queue_opts;

/* Opens the queue at addr (opts may be NULL: open an existing queue).
 * Errors: QP_EINVAL (bad address or options), QP_ENOENT (no such queue and
 * no QP_OPEN_CREATE), QP_EEXIST, QP_EVERSION (a segment of another layout),
 * QP_EPERM (shm://: another user's segment, see QP_OPEN_ANY_OWNER),
 * QP_ECORRUPT, QP_ENOMEM, QP_ESYSTEM; remote: QP_ECONNREFUSED, QP_EAUTH
 * (the tokens differ, one end has none, or the server's certificate did
 * not verify: qp_errmsg() says which). */
QP_API int qp_queue_open(
    qp_queue **qp, const char *addr, const qp_queue_opts *opts);

/* Creates an anonymous shared-memory queue, to be created before fork() and
 * used by the parent and its children. */
QP_API int qp_queue_anon(qp_queue **qp, const qp_queue_opts *opts);

/* Closes the handle: later calls on it return QP_ECLOSED. Items already in
 * the queue stay there for others. Idempotent. */
QP_API int qp_queue_close(qp_queue *q);

/* Closes (if open) and releases the handle. NULL is fine. */
QP_API void qp_queue_free(qp_queue *q);

/* Deletes the queue at addr (its items are lost): QP_OK or QP_ENOENT.
 * shm://: handles other processes hold see it at once: their puts and
 * gets fail with QP_ENOENT ("was deleted"), and calls blocked on the
 * queue wake with QP_ECLOSED ("was deleted"), as remote ones do. */
QP_API int qp_queue_unlink(const char *addr);

/* qp_queue_unlink with a remote server's token and TLS settings (conn may
 * be NULL: $QPIPE_TOKEN, $QPIPE_TLS_CA). Errors as qp_queue_open. */
QP_API int qp_queue_unlink_opts(
    const char *addr, const struct qp_conn_opts *conn);

/* Puts len bytes (stored as a msgpack bin). Blocks while the queue is full,
 * for up to timeout; returns only once the item is in the queue.
 * Errors: QP_EFULL (timeout or QP_NOWAIT on a full queue), QP_ETOOBIG (item
 * larger than the queue can ever hold, at once), QP_ENOSPC (/dev/shm or a
 * durable queue's disk is full, at once, nothing stored), QP_ECLOSED. */
QP_API int qp_queue_put(
    qp_queue *q, const void *buf, size_t len, qp_duration timeout);

/* qp_queue_put(q, buf, len, QP_NOWAIT). */
QP_API int qp_queue_put_nowait(qp_queue *q, const void *buf, size_t len);

/* Puts one msgpack value, given as its encoding (exactly one well-formed
 * value, else QP_EINVAL). Otherwise as qp_queue_put. */
QP_API int qp_queue_put_obj(
    qp_queue *q, const void *msgpack, size_t len, qp_duration timeout);

/* Puts n items (bufs[i], lens[i] bytes each, stored as bins) in order,
 * in as few batches as the limits allow (4096 items, 32 MiB), each batch
 * all or nothing with no other item between its items, waiting up to
 * timeout while the queue cannot take it. Errors as qp_queue_put;
 * QP_ETOOBIG also for a batch that can never fit (maxsize, capacity).
 * All or nothing holds per batch, not per call: on an error the batches
 * before the failing one are in the queue, the failing one and those
 * after it are not (a durable shm:// queue takes one item per batch); a
 * remote QP_ECONNRESET leaves the batch in flight applied or not, never
 * twice. n items within both limits (and the server's) are one batch. */
QP_API int qp_queue_put_many(qp_queue *q, const void *const *bufs,
    const size_t *lens, size_t n, qp_duration timeout);

/* Gets up to max items: waits up to timeout for the first, then takes
 * those ready without waiting. bufs[i] gets a malloc'd copy of item i's
 * bytes (free each with qp_free), lens[i] its length, *np how many
 * (at least 1 on QP_OK). Errors as qp_queue_get. */
QP_API int qp_queue_get_many(qp_queue *q, void **bufs, size_t *lens,
    size_t max, size_t *np, qp_duration timeout);

/* qp_queue_put_many for msgpack values: msgpacks[i] is the encoding of
 * exactly one value (all are checked first: QP_EINVAL, nothing put), each
 * stored as qp_queue_put_obj stores it. Batches, all or nothing and errors
 * as qp_queue_put_many. */
QP_API int qp_queue_put_many_obj(qp_queue *q, const void *const *msgpacks,
    const size_t *lens, size_t n, qp_duration timeout);

/* qp_queue_get_many returning each item as the msgpack encoding of its
 * value, as qp_queue_get_obj does. */
QP_API int qp_queue_get_many_obj(qp_queue *q, void **msgpacks, size_t *lens,
    size_t max, size_t *np, qp_duration timeout);

/* Gets the oldest item: *bufp gets a malloc'd copy (free with qp_free) and
 * *lenp its length. Blocks while the queue is empty, for up to timeout.
 * Errors: QP_EEMPTY (timeout or QP_NOWAIT on an empty queue), QP_ECLOSED. */
QP_API int qp_queue_get(
    qp_queue *q, void **bufp, size_t *lenp, qp_duration timeout);

/* qp_queue_get(q, bufp, lenp, QP_NOWAIT). */
QP_API int qp_queue_get_nowait(qp_queue *q, void **bufp, size_t *lenp);

/* Gets the oldest item into buf (size cap). If the item is larger,
 * returns QP_ETOOBIG with *lenp set to the size needed, and the item stays
 * at the head of the queue. */
QP_API int qp_queue_get_into(
    qp_queue *q, void *buf, size_t cap, size_t *lenp, qp_duration timeout);

/* Gets the oldest item as the msgpack encoding of its value. */
QP_API int qp_queue_get_obj(
    qp_queue *q, void **msgpackp, size_t *lenp, qp_duration timeout);

/* The exact number of items in the queue. */
QP_API int qp_queue_qsize(qp_queue *q, size_t *np);

/* *emptyp is true when the queue holds no item. */
QP_API int qp_queue_empty(qp_queue *q, bool *emptyp);

/* *fullp is true when a put would block. */
QP_API int qp_queue_full(qp_queue *q, bool *fullp);

/* JoinableQueue: marks one item got earlier as done. Calling it more times
 * than items were put returns QP_EVALUE and changes nothing. */
QP_API int qp_queue_task_done(qp_queue *q);

/* JoinableQueue: blocks until every item put has been marked done, for up to
 * timeout. Errors: QP_ETIMEDOUT, QP_ECLOSED. */
QP_API int qp_queue_join(qp_queue *q, qp_duration timeout);

/* A queue's figures, for qp_queue_stat. */
typedef struct qp_queue_stats {
	uint64_t items; /* items ready */
	uint64_t bytes; /* bytes of items ready */
	uint64_t maxsize; /* 0 = unbounded */
	uint64_t capacity; /* bytes of storage */
	uint64_t leased; /* items handed out and not yet confirmed */
	uint64_t unfinished; /* items put and not yet task_done */
	uint64_t getters; /* getters waiting now */
	uint64_t putters; /* putters waiting now */
	uint64_t puts; /* items put since creation */
	uint64_t gets; /* items got since creation */
	int64_t oldest_age_ms; /* age of the oldest ready item; -1 if none */
} qp_queue_stats;

/* Fills *st with the queue's figures. */
QP_API int qp_queue_stat(qp_queue *q, qp_queue_stats *st);

/* Worker mode (QP_OPEN_LEASE): gives the oldest item this handle holds
 * back to the head of the queue, after delay ms, for another attempt; its
 * delivery count goes up. QP_ENOENT if it holds none, QP_EINVAL without
 * QP_OPEN_LEASE. */
QP_API int qp_queue_nack(qp_queue *q, qp_duration delay);

/* Worker mode (QP_OPEN_LEASE): extends the lease of every item held to lease
 * ms from now (0: the handle's lease_ms). QP_ENOENT if none is held or a
 * lease had run out already, QP_EINVAL without QP_OPEN_LEASE. */
QP_API int qp_queue_touch(qp_queue *q, qp_duration lease);

/* Worker mode (QP_OPEN_LEASE on tasks): confirms the oldest task this
 * handle holds (as qp_queue_task_done) and puts its result, len bytes
 * stored as a bin, on results, in one step: both happen or neither, so
 * that each task has exactly one result however often it runs. Blocks
 * while results is full, for up to timeout (then QP_EFULL, nothing done,
 * the task still held).
 *
 * When it holds: across kill -9 of any worker at any instant (also
 * between the result and the confirmation), lost replies, reconnects,
 * and kill -9 and restart of qpiped, provided both queues are
 *   - shm:// queues of this host, results a named one (the tasks queue
 *     notes the completion first; whoever next uses it after a death
 *     reads the results queue's tags and finishes or undoes it), or
 *   - queues of one qpiped (both handles' addresses name the same
 *     server, spelled the same), both in its shared memory or both
 *     durable (one `complete` request, proto/PROTOCOL.md). Durable: the
 *     two logs are written one after the other, and the result carries
 *     the task's id, so a task delivered again after a restart whose
 *     result is in is confirmed without a second result, as long as the
 *     results queue took fewer than 1024 other tagged puts meanwhile; a
 *     power cut (not a kill) keeps the result only with fsync=always on
 *     the results queue, or
 *   - two queues spread over the same servers (addresses naming the same
 *     servers, spelled the same, in the same order): the task's result
 *     goes to the results partition on the task's own server, and the
 *     rule above holds there.
 * When it does not: queues on two servers, a shm:// and a remote one, an
 * anonymous results queue, a durable queue with a shared-memory one, a
 * durable shm:// queue (QP_OPEN_DURABLE with a path), or a tasks queue
 * spread over servers that the results queue is not spread over alike:
 * QP_ENOTSUP, nothing done. Then put the result
 * and confirm the task in two calls: a kill between them stores a second
 * result when the task runs again (at least once).
 *
 * Errors: QP_ENOENT (the task's lease ran out, or was given back, first:
 * nothing put, the task runs again and that run's result counts; the
 * handle no longer holds it), QP_EVALUE (this handle holds no task),
 * QP_EINVAL (tasks not in worker mode, or results is tasks), QP_ETOOBIG,
 * QP_ENOTSUP (above), QP_ECLOSED, QP_EBUSY (shm://, rare: a dead
 * worker's completion on tasks is not settled yet; nothing done, try
 * again); remote: QP_ECONNRESET (applied or not, never twice). */
QP_API int qp_queue_complete(qp_queue *tasks, qp_queue *results,
    const void *buf, size_t len, qp_duration timeout);

/* qp_queue_complete with the result given as the msgpack encoding of one
 * value (else QP_EINVAL), stored as qp_queue_put_obj stores it. */
QP_API int qp_queue_complete_obj(qp_queue *tasks, qp_queue *results,
    const void *msgpack, size_t len, qp_duration timeout);

/* How many times the item at hand has been delivered (1 the first time):
 * worker mode, the oldest item held; otherwise the last item got.
 * QP_ENOENT if there is none, QP_ENOTSUP where not tracked (plain shm://
 * handles). */
QP_API int qp_queue_deliveries(qp_queue *q, uint32_t *np);

/* One queue of a server, for qp_server_list. */
typedef struct qp_queue_info {
	char name[QP_NAME_MAX + 1];
	qp_queue_stats stat;
} qp_queue_info;

/* Lists every queue the server at addr (tcp://HOST:PORT, ipc:///PATH)
 * hosts: *listp is a malloc'd array of *np entries (free with qp_free).
 * A token comes from $QPIPE_TOKEN if it is set; tls+tcp:// verifies the
 * server against $QPIPE_TLS_CA or the system's bundle.
 * Errors: QP_EINVAL, QP_ECONNREFUSED, QP_ECONNRESET, QP_EAUTH. */
QP_API int qp_server_list(const char *addr, qp_queue_info **listp, size_t *np);

/* qp_server_list with token and TLS settings (conn may be NULL:
 * $QPIPE_TOKEN, $QPIPE_TLS_CA). Errors as qp_server_list, and QP_EAUTH. */
QP_API int qp_server_list_opts(const char *addr,
    const struct qp_conn_opts *conn, qp_queue_info **listp, size_t *np);

/* ------------------------------------------------------------------------
 * Waiting on many queues, and one queue over several servers
 *
 * A get over many queues takes from whichever has an item, the first
 * listed first (Redis BLPOP): shm://, tcp:// and partitioned handles mix
 * freely. Each handle has a readiness file descriptor for poll(2) and
 * epoll, so that an event loop (or qp_wait_any) waits on queues and
 * connections alike. How each kind tells that it is ready:
 * - shm:// (plain or QP_OPEN_LEASE): a thread of the handle sleeps on the
 *   segment's watch word and writes an eventfd when items are ready
 *   (durable shm:// handles: QP_ENOTSUP);
 * - tcp://, ipc://, tls+tcp://: the handle keeps one item ahead (AMQP's
 *   prefetch of 1): a thread of the handle waits on the server for an
 *   item, leased to this connection, and the fd polls readable while it
 *   holds one. From then on the handle's gets take from there only (so
 *   FIFO holds; a get that does not wait may miss an item put a moment
 *   ago, as with Python's Queue and its feeder thread); the item never
 *   goes to another consumer meanwhile, and a close or a dropped
 *   connection gives it back to the head of the queue (its next delivery
 *   counts as a redelivery);
 * - partitioned (see below): an epoll set of its partitions' fds.
 * The fd may poll readable once with nothing left (another consumer
 * took the item); the next get or qp_queue_poll(q, 0) clears it, so a
 * loop that polls the fd and then gets never spins. In a forked child a
 * handle's readiness state is made afresh.
 *
 * One queue over several servers: an address with several servers,
 *   "tcp://h1:7450,h2:7450,h3:7450/jobs" (ipc://: "ipc:///a/s,/b/s/jobs"),
 * opens one logical queue of one partition per server, in the order
 * listed. A put goes to one partition: round robin, skipping partitions
 * whose server is known to be down, or with qp_queue_put_key to the
 * partition that rendezvous (highest random weight) hashing picks for the
 * key (qp_partition_pick: the same in C, the CLI and Python; adding a
 * server moves about 1/N of the keys). A get takes from any partition
 * that has an item; qsize and stat add up the partitions that answer
 * (qp_queue_partition_stat shows each). qp_queue_put_many splits its
 * items into one slice per partition up, in order, each slice all or
 * nothing on its partition (an error leaves the slices before it
 * stored); qp_queue_get_many takes a batch from one partition. Order is
 * FIFO per partition, not across them. No consensus, no replication: a server
 * that is down makes its partition unavailable and the others go on; a durable
 * partition comes back with its items when its server restarts. A keyed put to
 * a down partition waits (within the reconnect window) as a plain remote put
 * does; it never moves to another partition.
 * ------------------------------------------------------------------------ */

/* A file descriptor that polls readable when a get on q may find an item
 * (see above); owned by the handle, valid until qp_queue_free. The first
 * call starts the handle's readiness thread. Errors: QP_ENOTSUP (a
 * durable shm:// handle), QP_ELIMIT (64 attachments watch the queue
 * already), QP_ESYSTEM, QP_ECLOSED. */
QP_API int qp_queue_fd(qp_queue *q, int *fdp);

/* *readyp is true when a get on q would find an item now; waits up to
 * timeout for that (a remote handle: through its readiness fd). */
QP_API int qp_queue_poll(qp_queue *q, qp_duration timeout, bool *readyp);

/* Gets one item from whichever of the n queues has one: each time it
 * looks, the first listed that has an item gives it (*whichp: its index),
 * so when several have items at the call, qs[0] before qs[1]; waits up to
 * timeout on all of them (their readiness fds) for the first item.
 * *bufp and *lenp as qp_queue_get. Errors: QP_EEMPTY (timeout or
 * QP_NOWAIT with all empty), QP_EINVAL (n == 0, NULL arguments); any
 * other error of one queue's get ends the call with *whichp naming it. */
QP_API int qp_queue_get_any(qp_queue *const *qs, size_t n, size_t *whichp,
    void **bufp, size_t *lenp, qp_duration timeout);

/* qp_queue_get_any returning the item as the msgpack encoding of its
 * value, as qp_queue_get_obj. */
QP_API int qp_queue_get_any_obj(qp_queue *const *qs, size_t n, size_t *whichp,
    void **msgpackp, size_t *lenp, qp_duration timeout);

/* qp_wait over connections and queues alike: waits up to timeout until at
 * least one connection is ready (as qp_conn_poll) or one queue has an
 * item (as qp_queue_poll), then sets conn_ready[i] and queue_ready[j]
 * for each; *nreadyp gets the count (0 after a timeout). Either list
 * may be empty (its array NULL). */
struct qp_conn;
QP_API int qp_wait_any(struct qp_conn *const *conns, size_t nconns,
    bool *conn_ready, qp_queue *const *queues, size_t nqueues,
    bool *queue_ready, qp_duration timeout, size_t *nreadyp);

/* As qp_queue_put, placing the item by key (klen bytes): a partitioned
 * queue puts it on qp_partition_pick's partition for the key, so that
 * items of one key stay in order; any other queue ignores the key. */
QP_API int qp_queue_put_key(qp_queue *q, const void *key, size_t klen,
    const void *buf, size_t len, qp_duration timeout);

/* qp_queue_put_key of one msgpack value, given as its encoding (as
 * qp_queue_put_obj). */
QP_API int qp_queue_put_key_obj(qp_queue *q, const void *key, size_t klen,
    const void *msgpack, size_t len, qp_duration timeout);

/* Rendezvous hashing: the index (0..n-1) of the server, among the n
 * given as "HOST:PORT" (or an ipc path) strings, whose weight for key is
 * highest; weight = FNV-1a 64 of the server string, then a 0 byte, then
 * the key, through the splitmix64 finaliser. A tie goes to the lower
 * index. n == 0: returns 0. */
QP_API size_t qp_partition_pick(
    const char *const *servers, size_t n, const void *key, size_t klen);

/* The number of partitions of q: its servers for a partitioned queue,
 * 1 for any other. */
QP_API int qp_queue_partitions(qp_queue *q, size_t *np);

/* One partition's figures: *st, and its server's queue address in url
 * (cap bytes). A partition whose server does not answer returns its
 * error (QP_ECONNRESET, QP_ECONNREFUSED) with url still filled in. */
QP_API int qp_queue_partition_stat(
    qp_queue *q, size_t i, qp_queue_stats *st, char *url, size_t cap);

/* ------------------------------------------------------------------------
 * Pipe and Connection (multiprocessing.Pipe, connection.Listener/Client)
 *
 * Threads: on one qp_conn, any number of threads may send at once (each
 * message goes whole) while one receives (qp_conn_recv*, qp_conn_poll); a
 * second receiver at the same time may get QP_EBUSY. A qp_listener takes
 * accept from any number of threads.
 *
 * fork(): qp_pipe's ends are shared memory and work in forked children.
 * Direct connections and listeners (qp_dial, qp_listen) and
 * pipes from qp_pipe_open (whose side belongs to the connection that
 * opened it) belong to the process that made them. In a forked child
 * every call on an inherited one fails with QP_EINVAL (qp_errmsg() names
 * fork()); close and free there release only the child's copy, and the
 * parent's connection goes on. Remote queues are the exception: see
 * qp_queue. A child forked after its parent used nng (a tls+tcp://
 * handle, or any network handle with QPIPE_TRANSPORT=nng) cannot start
 * nng again: nng would abort the child ("nng is not fork-reentrant safe")
 * on its first nng listen, dial or open, so qpipe refuses those with
 * QP_EINVAL instead; tcp:// and ipc:// queues, pipes and direct
 * connections use plain sockets and open fine there.
 * qpipe can only see its own use of nng: if the program itself started
 * nng before forking, a qpipe nng call in the child aborts inside nng.
 * ------------------------------------------------------------------------ */

/* One end of a pipe or connection: threads and fork() as above. */
typedef struct qp_conn qp_conn;
/* A listener of direct connections: threads and fork() as above. */
typedef struct qp_listener qp_listener;

/* Creates two connected ends in shared memory, to be created before fork().
 * duplex true: both ends send and receive. duplex false: *ap only receives
 * and *bp only sends (Python's order). */
QP_API int qp_pipe(qp_conn **ap, qp_conn **bp, bool duplex);

/* Sends one msgpack value, given as its encoding (exactly one well-formed
 * value, else QP_EINVAL). Errors: QP_ETOOBIG (over the connection's
 * maximum; nothing sent), QP_EPERM (a receive-only end), QP_ECLOSED. */
QP_API int qp_conn_send(qp_conn *c, const void *msgpack, size_t len);

/* Receives one message as the msgpack encoding of its value; blocks until
 * one arrives. QP_ECLOSED once the peer closed or died and nothing is left
 * (Python's EOFError), never a hang. */
QP_API int qp_conn_recv(qp_conn *c, void **msgpackp, size_t *lenp);

/* Sends size bytes of buf starting at offset, as one message (a bin). */
QP_API int qp_conn_send_bytes(
    qp_conn *c, const void *buf, size_t offset, size_t size);

/* Receives one message's bytes. If it is longer than maxlength (SIZE_MAX:
 * no limit), returns QP_ETOOBIG with *lenp set to its length, and the
 * message stays to be read. */
QP_API int qp_conn_recv_bytes(
    qp_conn *c, void **bufp, size_t *lenp, size_t maxlength);

/* Receives one message's bytes into buf at offset (buf holds bufsize bytes
 * in all). If it does not fit, returns QP_ETOOBIG with *lenp set to its
 * length, and the message stays to be read. */
QP_API int qp_conn_recv_bytes_into(
    qp_conn *c, void *buf, size_t bufsize, size_t offset, size_t *lenp);

/* *readyp is true when a recv would not block: a message waits, or the peer
 * is gone (end of file). Waits up to timeout for that. */
QP_API int qp_conn_poll(qp_conn *c, qp_duration timeout, bool *readyp);

/* A file descriptor that polls readable whenever qp_conn_poll(c, 0) would
 * say ready; owned by the connection. */
QP_API int qp_conn_fd(qp_conn *c, int *fdp);

/* Sets the largest message this end sends or accepts (default 32 MiB). */
QP_API int qp_conn_set_max_message(qp_conn *c, size_t max);

/* Closes this end: the peer's recv sees end of file once it has drained
 * what was sent. Idempotent. In a forked child, on a network connection of
 * its parent's: only marks the child's copy closed (see fork() above). */
QP_API int qp_conn_close(qp_conn *c);

/* Closes (if open) and releases the handle. NULL is fine. In a forked
 * child, on a network connection of its parent's: releases the child's
 * copy only. */
QP_API void qp_conn_free(qp_conn *c);

/* multiprocessing.connection.wait: waits up to timeout until at least one of
 * the n connections is ready (as qp_conn_poll), then sets ready[i] for each.
 * *nreadyp gets the count (0 after a timeout). */
QP_API int qp_wait(qp_conn *const *conns, size_t n, qp_duration timeout,
    bool *ready, size_t *nreadyp);

/* Listens on addr (tcp://HOST:PORT, ipc:///PATH; tls+tcp://HOST:PORT
 * needs qp_listen_opts). Port 0 picks a free port: qp_listener_url tells
 * the real address. A token comes from $QPIPE_TOKEN if it is set.
 * QP_EINVAL in a child forked after its parent used the network. */
QP_API int qp_listen(qp_listener **lp, const char *addr);

/* The address actually bound, e.g. "tcp://127.0.0.1:40123". */
QP_API const char *qp_listener_url(qp_listener *l);

/* Waits up to timeout for the next connection: QP_ETIMEDOUT if none;
 * QP_EINVAL in a forked child (the listener is its parent's). */
QP_API int qp_listener_accept(
    qp_listener *l, qp_conn **cp, qp_duration timeout);

/* Stops listening and releases the listener; accepted connections go on.
 * In a forked child it releases the child's copy only: the parent's
 * listener goes on. */
QP_API void qp_listener_free(qp_listener *l);

/* Opens one end of the pipe named in addr (tcp://HOST:PORT/NAME or
 * ipc:///PATH/NAME) through the qpiped there: two processes that open the
 * same name get a connected pair, as qp_pipe's (send, recv, poll, end of
 * file when the other end closes or dies). side: 0 or 1, or -1 for the
 * free one (0 first). duplex false, for the pipe this call creates: side
 * 0 only receives, side 1 only sends. Errors: QP_EBUSY (side taken),
 * QP_ECONNREFUSED, QP_EINVAL. */
QP_API int qp_pipe_open(qp_conn **cp, const char *addr, int side, bool duplex);

/* Dials a listener. With timeout 0 a refused dial fails at once with
 * QP_ECONNREFUSED; otherwise it retries until the timeout. A token comes
 * from $QPIPE_TOKEN if it is set; tls+tcp:// verifies the listener.
 * QP_EINVAL in a child forked after its parent used the network. */
QP_API int qp_dial(qp_conn **cp, const char *addr, qp_duration timeout);

/* Options of qp_listen_opts and qp_dial_opts; all zero (or a NULL pointer)
 * gives qp_listen's and qp_dial's defaults. The strings are read during
 * the call only. The tls_ fields apply to tls+tcp:// addresses only. */
typedef struct qp_conn_opts {
	/* The shared secret (1..1024 bytes) that both ends must hold: the
	 * listener then admits only dialers that prove they hold it, and
	 * the dialer checks that the listener holds it too; it never
	 * crosses the wire. NULL: the first line of token_file, else
	 * $QPIPE_TOKEN if set and not empty, else none. */
	const char *token;
	const char *token_file;
	bool no_token; /* true: no token, whatever $QPIPE_TOKEN says */
	/* PEM files. Listener: tls_cert and tls_key are its certificate
	 * (required); with tls_ca, every dialer must present a certificate
	 * that chains to it. Dialer: the listener's certificate must chain
	 * to tls_ca (NULL: $QPIPE_TLS_CA, else the system's CA bundle) and
	 * name tls_server_name (NULL: the address's host); tls_cert and
	 * tls_key, if given, are its client certificate. */
	const char *tls_cert;
	const char *tls_key;
	const char *tls_ca;
	const char *tls_server_name;
	bool tls_insecure_skip_verify; /* dialer: accept any certificate.
	                                  For tests only. */
	size_t max_message; /* largest message per connection; 0 = 32 MiB */
	/* Dialer: how long the first connection of a remote queue or pipe
	 * (connect, SP header, hello) may take, in ms; <= 0: 10 s. A peer
	 * that never answers the SP header is not a qpipe server. */
	qp_duration connect_timeout;
} qp_conn_opts;

/* qp_listen with options (opts may be NULL). A listener with a token
 * accepts only dialers that prove it; the others get QP_EAUTH from their
 * dial and are never returned by accept. Errors as qp_listen, and
 * QP_EINVAL for bad options or files (qp_errmsg() names the cause). */
QP_API int qp_listen_opts(
    qp_listener **lp, const char *addr, const qp_conn_opts *opts);

/* qp_dial with options (opts may be NULL). Errors as qp_dial, and
 * QP_EAUTH: the tokens differ, only one end has one, or the TLS
 * handshake failed (the certificate did not verify, a client certificate
 * was required); qp_errmsg() says which. */
QP_API int qp_dial_opts(qp_conn **cp, const char *addr, qp_duration timeout,
    const qp_conn_opts *opts);

/* qp_pipe_open with the server's token and TLS settings, as for
 * qp_dial_opts (conn may be NULL: $QPIPE_TOKEN, $QPIPE_TLS_CA). Errors as
 * qp_pipe_open, and QP_EAUTH. */
QP_API int qp_pipe_open_opts(qp_conn **cp, const char *addr, int side,
    bool duplex, const qp_conn_opts *conn);

#ifdef __cplusplus
}
#endif

#endif /* QPIPE_H */
