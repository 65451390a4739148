/*
 * store.h - the contract qpiped stores items under (qpi_store_): one
 * interface over this host's shared-memory queues (shmq.h) and the
 * server's durable queues (durq.h), so that the server never asks which
 * kind a queue is. Items come as the server sees them, the msgpack
 * encoding of a value (a bin is stored as its raw bytes, as a local
 * qp_queue_put stores them), and go out the same way. No call waits for
 * items or room. A thread with a lock budget (qpi_shmq_lock_budget) may
 * get QP_EBUSY from any call on a shared-memory store: another process
 * holds the queue's lock, and nothing was done.
 *
 * Not thread-safe: the caller serialises the calls on one store (the
 * server's lock).
 */
#ifndef QPI_STORE_H
#define QPI_STORE_H

#include "durq.h"
#include "shmq.h"
#include "wire.h"

typedef struct qpi_store qpi_store;

/* Opens the shared-memory queue name (flags: QP_OPEN_CREATE, EXCL; cfg
 * for one it creates). Errors as qpi_shmq_open. */
int qpi_store_open_shm(
    qpi_store **sp, const char *name, unsigned flags, const qpi_shmq_cfg *cfg);

/* A store over the durable queue d (opened by the caller, owned by the
 * store from now on; freed here on failure). name labels its errors. */
int qpi_store_open_durq(qpi_store **sp, const char *name, qpi_durq *d);

/* Closes the store (the queue and its items stay). NULL ok. */
void qpi_store_free(qpi_store *s);

/* True for a durable queue. */
bool qpi_store_durable(const qpi_store *s);

/* The shared-memory queue behind the store (a durable queue's is private
 * to the server): its watch word, for the server's watchers. */
qpi_shmq *qpi_store_shm(qpi_store *s);

/* Puts one item, or n items all or nothing (the store checks room for
 * all first, no other item comes between them). tag (NULL: none): the
 * request's client id and seq, noted with the items so that a restarted
 * server knows the request was applied (qpi_store_tags). ticket NULL:
 * a durable put is synced per its policy before the call returns; else
 * *ticket (0: nothing to wait for) must go to qpi_store_sync_to before
 * the put is acknowledged. QP_OK, QP_EFULL, QP_ETOOBIG, QP_ENOSPC,
 * QP_ESYSTEM, QP_EBUSY. */
int qpi_store_put(qpi_store *s, const uint8_t *item, size_t len,
    const qpi_shmq_tag *tag, uint64_t *ticket);
int qpi_store_put_many(qpi_store *s, const qpi_wire_item *items, uint32_t n,
    const qpi_shmq_tag *tag, uint64_t *ticket);

/* The durable queue behind the store (NULL: shared memory): its tickets
 * go to qpi_durq_sync_to, with qpi_durq_hold keeping it open meanwhile. */
qpi_durq *qpi_store_durq(qpi_store *s);

/* Takes up to max items (max > 0), oldest first, each under a lease of
 * owner for lease_ms, in one lock hold where the store allows (shared
 * memory: qpi_shmq_get_lease_many): *bufp gets one malloc'd buffer
 * holding their encodings (the caller frees it), got[0 .. *np) where each
 * is and its lease. Items after the first are taken while the total stays
 * within max_bytes (0: no limit); the others stay at the head. QP_OK with
 * *np > 0, else QP_EEMPTY (none) or another error, nothing taken. */
int qpi_store_get_many(qpi_store *s, uint64_t owner, int64_t lease_ms,
    size_t max, size_t max_bytes, void **bufp, qpi_shmq_got *got, size_t *np);

/* Confirms a lease (the item is gone for good), gives it back to the
 * head, or extends it to lease_ms from now: QP_OK or QP_ENOENT (not held:
 * expired, released or acked). */
int qpi_store_ack(qpi_store *s, uint64_t lease_id);
/* Confirms n leases, in one lock hold where the store allows (shared
 * memory: qpi_shmq_ack_many): rcs[i] gets what qpi_store_ack would
 * return for ids[i] (QP_EBUSY: that one and those after it were not
 * done). */
void qpi_store_ack_many(qpi_store *s, const uint64_t *ids, size_t n, int *rcs);
int qpi_store_release(qpi_store *s, uint64_t lease_id);
int qpi_store_renew(qpi_store *s, uint64_t lease_id, int64_t lease_ms);

/* Gives back the leases of owner; those expired by now_ms (*next_ms: the
 * next expiry, INT64_MAX if none); those of local processes that are
 * gone (release_dead); those of processes and earlier servers that are
 * gone (release_stale: a server's first use of a queue). *np: how many.
 * A durable queue has no leases but the server's own: the last two
 * find none. */
int qpi_store_release_owner(qpi_store *s, uint64_t owner, size_t *np);
int qpi_store_expire(
    qpi_store *s, int64_t now_ms, size_t *np, int64_t *next_ms);
int qpi_store_release_dead(qpi_store *s, size_t *np);
int qpi_store_release_stale(qpi_store *s, size_t *np);

/* Completes a task (qp_queue_complete): acks lease_id of t, counts its
 * task done and puts item (an encoding, as qpi_store_put) into r, both or
 * neither, across a kill of the server at any instant (see
 * qpi_shmq_complete). tag (NULL: one naming t and the lease) is noted
 * with the result, as a put's: a restarted server reads it back with
 * qpi_store_tags. Two durable queues: the result is tagged with the
 * task's item id instead (tag unused), and put only if r's tags do not
 * name it yet, then the lease acked: a restart between the two delivers
 * the task again, whose completion then only acks. QP_OK, QP_ENOENT
 * (lease not held: nothing put), QP_EFULL (nothing done), QP_ETOOBIG,
 * QP_EINVAL (r is t), QP_ENOTSUP (one durable queue and one not),
 * QP_EBUSY. */
int qpi_store_complete(qpi_store *t, uint64_t lease_id, qpi_store *r,
    const uint8_t *item, size_t len, const qpi_shmq_tag *tag);

/* JoinableQueue's task_done: QP_OK or QP_EVALUE. */
int qpi_store_task_done(qpi_store *s);

/* The exact number of ready items; the queue's figures. */
int qpi_store_qsize(qpi_store *s, uint64_t *np);
int qpi_store_stat(qpi_store *s, qp_queue_stats *st);

/* The queue's counters (shmq.h): a shared-memory queue's since it was
 * made, a durable queue's since it was opened. */
int qpi_store_counters(qpi_store *s, qpi_shmq_counters *c);

/* The put requests noted with the items (see qpi_shmq_tags). */
int qpi_store_tags(qpi_store *s, qpi_shmq_tag *v, size_t cap, size_t *np);

#endif /* QPI_STORE_H */
