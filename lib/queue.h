/*
 * queue.h - the seam between the public qp_queue_* calls (queue.c) and the
 * backends that carry them: the shared-memory queue (shmq.c) and, for
 * tcp/ipc/tls addresses, the remote client. queue.c checks every argument
 * and the handle's closed state, converts the timeout to an absolute
 * deadline, then calls the handle's ops; a backend sees only valid input.
 */
#ifndef QPI_QUEUE_H
#define QPI_QUEUE_H

#include "qpi.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Deadlines handed to the ops: absolute CLOCK_MONOTONIC ns; 0 = do not
 * wait; INT64_MAX = forever. */
int64_t qpi_queue_deadline(qp_duration timeout);
/* Back: the timeout that is left until deadline_ns (QP_NOWAIT for 0,
 * QP_FOREVER for INT64_MAX, else whole ms, rounded up). */
qp_duration qpi_queue_timeout(int64_t deadline_ns);

/* The common checks of every call: a handle, not closed. */
int qpi_queue_ready(qp_queue *q);
/* qpi_queue_ready, then a non-NULL output pointer (what: the call and
 * the pointer's name, for the message). */
int qpi_queue_ready_out(qp_queue *q, const void *out, const char *what);

/* A backend. Item kinds and get flags are those of shmq.h (QPI_ITEM_BIN,
 * QPI_ITEM_OBJ, QPI_GET_OBJ). Each op returns a qp_err code and sets
 * qp_errmsg() on failure. A NULL op from put to stat, and close, is
 * served by the handle's shared-memory queue (queue.c calls shmq.c). */
typedef struct qpi_queue_ops {
	/* Stores one item; returns once it is in the queue. */
	int (*put)(void *impl, const void *buf, size_t len, unsigned kind,
	    int64_t deadline_ns);
	/* Takes the head item: into (cap bytes) when not NULL, else a
	 * malloc'd *bufp. An item larger than cap stays, QP_ETOOBIG with
	 * *lenp = its size. */
	int (*get)(void *impl, unsigned flags, void *into, size_t cap,
	    void **bufp, size_t *lenp, int64_t deadline_ns);
	int (*qsize)(void *impl, uint64_t *np);
	int (*full)(void *impl, bool *fullp);
	int (*task_done)(void *impl);
	int (*join)(void *impl, int64_t deadline_ns);
	int (*stat)(void *impl, qp_queue_stats *st);
	/* Worker mode (QP_OPEN_LEASE): gives the oldest held item back after
	 * delay ms (checked: 0..2^31-1), and the delivery count of the item
	 * at hand. NULL: the backend keeps no leases (nack is QP_EINVAL,
	 * deliveries QP_ENOTSUP). nack and touch are called on handles
	 * opened with QP_OPEN_LEASE only (else QP_EINVAL at the front). */
	int (*nack)(void *impl, qp_duration delay);
	int (*deliveries)(void *impl, uint32_t *np);
	/* Worker mode: extends the lease of every item held to lease ms
	 * (checked: 0..2^31-1; 0 = the handle's lease) from now. NULL: as
	 * nack (QP_EINVAL). */
	int (*touch)(void *impl, qp_duration lease);
	/* Worker mode: confirms the oldest item held and puts its result
	 * (len bytes of kind) on results, another handle, in one step
	 * (qp_queue_complete). QP_ENOTSUP when results is not a queue it
	 * can do that with. NULL: QP_EINVAL, as nack. */
	int (*complete)(void *impl, qp_queue *results, const void *buf,
	    size_t len, unsigned kind, int64_t deadline_ns);
	/* Readiness (qwait.c): the handle's fd, and whether a
	 * get would find an item now. NULL: the shared-memory queue's,
	 * which qwait.c watches itself. */
	int (*fd)(void *impl, int *fdp);
	int (*ready)(void *impl, bool *readyp);
	/* A put placed by key (partitioned queues); NULL: put, key unused. */
	int (*put_key)(void *impl, const void *key, size_t klen,
	    const void *buf, size_t len, unsigned kind, int64_t deadline_ns);
	/* Makes calls blocked in this handle return QP_ECLOSED, at once. */
	void (*close)(void *impl);
	/* Releases impl; no call is in progress any more. */
	void (*free)(void *impl);
} qpi_queue_ops;

/* Wraps a backend into a public handle, which owns impl (on failure,
 * QP_ENOMEM, impl is freed with ops->free). */
int qpi_queue_wrap(qp_queue **qp, const qpi_queue_ops *ops, void *impl);
struct qpi_shmq;
/* Wraps sq (owned, freed on failure) in a worker-mode handle (shmwork.c):
 * name is the queue's (NULL: anonymous), lease_ms each get's lease (0:
 * 30 s). */
int qpi_shml_wrap(
    qp_queue **qp, struct qpi_shmq *sq, const char *name, uint64_t lease_ms);
/* The shared-memory queue of a worker-mode handle's ops and impl; NULL
 * for another backend's. */
struct qpi_shmq *qpi_shml_sq(const qpi_queue_ops *ops, void *impl);

/* The backend of a handle, for internal callers (CLI stat, server). */
void *qpi_queue_impl(qp_queue *q, const qpi_queue_ops **opsp);

/* The shared-memory backend's ops (impl is a qpi_shmq *). */
extern const qpi_queue_ops qpi_shmq_ops;

/* The shared-memory queue behind a shm:// handle (plain or worker mode),
 * or NULL for any other backend (remote, durable). */
struct qpi_shmq *qpi_queue_shmq(qp_queue *q);

/* ---- readiness and gets over many queues (qwait.c) ---- */

/* A get with an absolute deadline, as the public calls make it (flags:
 * QPI_GET_OBJ); an empty queue clears the handle's readiness signal. */
int qpi_queue_get_op(qp_queue *q, unsigned flags, void *into, size_t cap,
    void **bufp, size_t *lenp, int64_t deadline_ns);

/* The handle's readiness state (qwait.c's; NULL until qp_queue_fd). */
struct qpi_qrd;
struct qpi_qrd **qpi_queue_rd(qp_queue *q);

/* qwait.c: a shared-memory handle found empty (clears its fd, looks
 * again); stops the readiness thread (close); frees the state. */
void qpi_qrd_empty(qp_queue *q);
void qpi_qrd_stop(struct qpi_qrd *rd);
void qpi_qrd_free(struct qpi_qrd *rd);

/* Sets (on) or drains (off) the eventfd efd (qwait.c). */
void qpi_efd_set(int efd, bool on);

/* Ready now (qwait.c): a get would find an item. */
int qpi_queue_ready_now(qp_queue *q, bool *readyp);

/* The get over many queues behind qp_queue_get_any (and a partitioned
 * queue's get): deadline_ns absolute, 0 = look once. */
int qpi_queue_get_any(qp_queue *const *qs, size_t n, unsigned flags,
    size_t *whichp, void *into, size_t cap, void **bufp, size_t *lenp,
    int64_t deadline_ns);

/* The partitioned backend (part.c): opens addr if it names several
 * servers (*isp true), else leaves *qp alone (*isp false). */
int qpi_part_open(
    qp_queue **qp, const char *addr, const qp_queue_opts *opts, bool *isp);
extern const qpi_queue_ops qpi_part_ops;

/* As qp_queue_unlink for an address of several servers (every partition
 * deleted; *isp false when addr names one server). */
int qpi_part_unlink(const char *addr, const qp_conn_opts *conn, bool *isp);

/* Batches on a partitioned queue (impl: part.c's): a put_many goes in
 * one slice per partition up, round robin, each slice all or nothing on
 * its partition; a get_many takes a batch from the first partition that
 * has items, waiting until deadline_ns for one. obj: msgpack values, as
 * qp_queue_put_many_obj and qp_queue_get_many_obj. */
int qpi_part_put_many(void *impl, const void *const *bufs, const size_t *lens,
    size_t n, bool obj, int64_t deadline_ns);
int qpi_part_get_many(void *impl, void **bufs, size_t *lens, size_t max,
    size_t *np, bool obj, int64_t deadline_ns);

/* qp_addr_check, addresses of several servers included. */
int qpi_part_check(const char *addr);

/* A growable list of lease ids, oldest first, each with a value (its
 * delivery count, or when it comes back): a worker-mode handle's items
 * (shmwork.c for shm://, remote.c for servers). Not locked: its owner's
 * lock guards it. */
typedef struct qpi_ids {
	uint64_t *id;
	int64_t *val;
	size_t n, cap;
} qpi_ids;

/* Appends (false: out of memory, nothing changed). */
bool qpi_ids_push(qpi_ids *l, uint64_t id, int64_t val);
/* Removes k entries from index i on (i + k <= n). */
void qpi_ids_drop(qpi_ids *l, size_t i, size_t k);
/* With mu (l's owner's lock) taken here: the oldest id and its value
 * (valp may be NULL); false when l is empty. */
bool qpi_ids_first(
    qpi_ids *l, pthread_mutex_t *mu, uint64_t *idp, int64_t *valp);
/* With mu taken here: removes the oldest entry if its id is still id. */
void qpi_ids_done(qpi_ids *l, pthread_mutex_t *mu, uint64_t id);
void qpi_ids_free(qpi_ids *l);

#endif /* QPI_QUEUE_H */
