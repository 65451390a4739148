/*
 * shmq.h - the shared-memory queue behind "shm://NAME" addresses and
 * qp_queue_anon(), internal to libqpipe (qpi_shmq_ names). qpiped hosts its
 * queues through this API too, leases included.
 *
 * Layout. One segment (/dev/shm/qpipe.NAME, or anonymous memory shared across
 * fork()) holds a header, a table of lease slots, a table of qpiped's last put
 * requests (see "Put requests"), a lease area and a byte ring of variable-size
 * records (40-byte header + payload, 8-byte aligned; a record never wraps: the
 * space left at the end of the ring becomes a pad). The header carries a
 * magic, the layout version and the sizes, checked on every attach
 * (QP_EVERSION, QP_ECORRUPT); the words an attachment needs later (ring, table
 * and area offsets, sizes, counts) are copied at attach, so a header scribbled
 * on afterwards cannot move them. Each record header holds a stamp, its ring
 * position mixed with a random per-queue salt, written last: a record is
 * committed exactly when its stamp is right. Positions only grow (64-bit byte
 * counts).
 *
 * Locking. Two robust process-shared mutexes: the producer side (tail,
 * items put) and the consumer side (head, leases). A put and a get never
 * wait for each other; only a producer facing an empty ring with too
 * little room before its end takes both (producer first, then consumer)
 * to start the next lap. Items are copied while the side's lock is held:
 * producers copy in parallel with consumers, never with each other. A
 * lock is retried for a moment before the caller sleeps in the kernel.
 * Blocking waits (empty, full, join) spin a few microseconds while that
 * pays, then sleep on futex words with the caller's absolute deadline:
 * each sleeper has its own word and a bit in the event's sleeper mask, so
 * a put or get that finds no bit set makes no system call. A waker marks
 * the word of the one it wakes as woken and wakes it in one system call
 * (FUTEX_WAKE_OP), and skips words marked woken already (never the same
 * sleeper twice); only the sleeper clears its own bit.
 *
 * Crash safety. A put writes the record (header, bytes) into free space
 * beyond the tail, then its stamp (the commit: consumers may take it from
 * then on), then the tail and counters, which the record itself also
 * carries (items and bytes put once it is in). A plain get copies the
 * item out, sets the consumer's counters from the record, then moves the
 * head (its commit). Every other consumer-side change (leases, releases,
 * acks) goes through a small redo journal: new values are written to the
 * journal, one store of the side's commit sequence commits them, then
 * they are applied. When pthread_mutex_lock() reports EOWNERDEAD the new
 * owner repairs before pthread_mutex_consistent(): on the producer side it
 * rolls the tail forward over stamped records it finds there; on the
 * consumer side it re-applies a committed journal and un-counts an item
 * still at the head. Items are read out before the commit that frees
 * them. So a process killed at any instant leaves the queue whole, the
 * others go on at once, and every committed item is delivered exactly
 * once: a put killed before its stamp stored nothing, one killed after
 * it stored the item; a get killed before its commit leaves the item in
 * the queue, one killed after it took the item, as if it had returned.
 * Sleeper slots of dead processes are found and cleared (kill(pid, 0),
 * within their pid namespace, at most every 100 ms, and by every stat).
 *
 * Wake-ups and kills. Every change a sleeper waits for (an item put or
 * released, room freed, the last task done) is made under a lock, and the
 * waker wakes the sleepers it sees while it holds that lock, BEFORE the
 * change's commit; a sleeper, once its bit is visible, waits for those locks
 * to be free (up to its deadline, or until it is woken: a change under the
 * other lock, such as a release while a put is stopped holding the producer
 * lock) before it checks its condition a last time and sleeps. So a waker
 * killed at any instant either made no change (nobody is owed a wake-up), or
 * woke its sleepers already, or dies holding the lock with a sleeper waiting
 * on it: the robust mutex hands the lock over, the repair completes the
 * change, and the sleeper sees it, within moments of the kill, even when no
 * other process touches the queue. A sleeper stays visible (its bit set) until
 * it runs again, and a waker either marked and woke it or did neither. A
 * sleeper killed after it was woken but before it acted takes its wake-up with
 * it: putters and joiners are all woken, and a wake-up for one getter wakes
 * two where two sleep, so another one acts. A lock waiter killed as the
 * unlock's kernel wake-up reaches it takes that wake-up with it too (the
 * robust-futex protocol covers dead owners, not waiters): lock waits run in 5
 * ms slices, so the other waiters find the lock free within one. Covered: any
 * one process killed at any instant; two killed at once may leave a sleeper to
 * its deadline or the next change. Watchers (qpiped) are told after the
 * unlock, as before: one killed between its commit and that bump leaves them
 * to their own deadline (qpiped re-checks its queues once a second).
 *
 * Leases (for qpiped; the server keeps no lease state of its own). A lease
 * get takes the head item out of the ring like a get, and in the same
 * commit copies it into the segment's lease area (512-byte blocks on a
 * journaled free list) under a lease slot (owner token, expiry, delivery
 * count). So a leased item never holds back ring space, and the ring stays
 * a plain FIFO. An ack frees the slot and its blocks; a release, an
 * expiry, a release of its owner or qpi_shmq_release_all() puts the item
 * back at the head of the queue: released items are delivered before any
 * other, in their original order, and count in qsize again. The lease
 * area's size is set at creation (default: the ring's capacity); a lease
 * get that finds no room there, or no free slot, fails with QP_ELIMIT and
 * leaves the item in the queue.
 *
 * Space. A named segment is a sparse file on a tmpfs: a page gets memory
 * when first written, and writing it when the tmpfs is full raises SIGBUS.
 * So nothing is written where memory is not reserved first (fallocate):
 * the header, the lease table and the start of the ring at creation
 * (QP_ENOSPC, nothing left behind, if that fails); the ring up to a
 * high-water mark in the header (ring bytes [0, backed) have memory),
 * which a put moves on in steps of 1 MiB, under the producer lock, before
 * it writes past it (the header of the next record included: a get peeks
 * there); the lease area likewise (its own mark, moved by a lease get
 * under the consumer lock, or by a put: every put makes sure the lease
 * area has memory for its item, so qpiped can always lease the items out
 * one at a time). A mark only grows and only once the memory is there;
 * a segment made before the marks existed reads them as 0 (fallocate of
 * pages already there is harmless), so the layout version stays. When
 * the tmpfs has no more room, a put fails with QP_ENOSPC and writes
 * nothing, unless its record fits at the start of the next lap within
 * the memory the ring has and the ring has room for that: then a pad
 * ends the lap early (its header only is written) and the ring goes on
 * in the part it has (a full ring there is QP_EFULL, as usual). Once the
 * whole ring has memory, a put costs one compare more. Anonymous queues
 * live on the kernel's internal tmpfs, which has no size limit (memory
 * and overcommit bound them, as any allocation): nothing to reserve.
 *
 * Trust. A named segment owned by another user is refused (QP_EPERM)
 * unless QP_OPEN_ANY_OWNER says to trust it. Every named segment is
 * guarded against SIGBUS (qpi_shm_guard): truncated under a call, it
 * gets zero pages, and the call and all later ones on the attachment
 * fail with QP_ECORRUPT ("quarantined ... truncated"), as they do once a
 * lock's kind word, a lease-area mark or a released slot fails its check
 * (before the lock is used: glibc would abort on some of them). Removal
 * (qpi_shmq_unlink) sets a bit of the header's corrupt word and wakes
 * every sleeper and watcher: every attachment's calls fail from then on
 * (QP_ENOENT, "was deleted"; QP_ECLOSED for a call that was waiting
 * then).
 *
 * Put requests (qpiped). The segment also keeps a table of the last
 * QPI_SHMQ_TAGS_MAX tagged puts (qpi_shmq_put_tagged): the request's
 * client id and seq, how many of its items it stores, and the ordinal of
 * its first item. A tag is written under the producer lock before the
 * put's first commit; a put killed midway leaves its tag newest, and the
 * producer repair sets it to the items the tail covers (none: the tag is
 * dropped). So a restarted qpiped reads (qpi_shmq_tags) which requests
 * are in the queue, and how much of a batch cut short by a kill is,
 * however many puts came since. Untagged puts never touch the table,
 * and its pages are only those tagged puts wrote (the file is sparse):
 * 64 bytes each, 1 MiB once it has gone round. QPI_SHMQ_TAGS_MAX is the
 * window a qpiped client's retries have: its retry horizon (10 s waiting
 * for a reply, 10 s of retries) at 800 puts/s to one queue.
 *
 * Items. Each record carries a kind: QPI_ITEM_BIN (raw bytes, the payload
 * of a msgpack bin) or QPI_ITEM_OBJ (the msgpack encoding of one value).
 * A get returns the bytes as they are stored, except that with QPI_GET_OBJ
 * a BIN item comes back as a whole msgpack bin (header + bytes).
 */
#ifndef QPI_SHMQ_H
#define QPI_SHMQ_H

#include "qpi.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct qpi_shmq qpi_shmq;

/* Defaults and limits. */
#define QPI_SHMQ_DEF_CAPACITY (64ull * 1024 * 1024)
#define QPI_SHMQ_MIN_CAPACITY 4096ull
#define QPI_SHMQ_MAX_CAPACITY (1ull << 40)
#define QPI_SHMQ_DEF_LEASES   4096u
#define QPI_SHMQ_MAX_LEASES   (1u << 20)
/* Bytes of ring that one item of len bytes takes (header, alignment). */
#define QPI_SHMQ_REC_SIZE(len) ((40u + (uint64_t) (len) + 7u) & ~7ull)
/* Largest item the layout can describe (a record's length is 32 bits). */
#define QPI_SHMQ_MAX_ITEM 0xffffffffull

/* Creation parameters; zero means the default. Ignored when the queue
 * exists already: its own parameters stay. */
typedef struct qpi_shmq_cfg {
	uint64_t maxsize; /* items; 0 = unbounded (up to the capacity) */
	uint64_t capacity; /* ring bytes; 0 = 64 MiB, rounded up to 4 KiB */
	uint64_t max_message; /* largest item in bytes; 0 = 32 MiB */
	uint32_t lease_slots; /* leases held at once; 0 = 4096 */
	uint64_t lease_bytes; /* lease area; 0 = the capacity */
} qpi_shmq_cfg;

/* Item kinds, for put. */
#define QPI_ITEM_BIN 1u /* raw bytes: a msgpack bin's payload */
#define QPI_ITEM_OBJ 2u /* the msgpack encoding of one value */

/* Get flags. */
#define QPI_GET_OBJ 0x1u /* return the item as one msgpack value */
/* Batch gets: each item in a malloc'd buffer of its own
 * (qpi_shmq_got.own), none in the batch's buffer. */
#define QPI_GET_EACH 0x2u

/* Opens the named queue (name already validated by the caller). flags:
 * QP_OPEN_CREATE creates it if missing, race-free against other processes
 * doing the same (built under a temporary name, then linked into place);
 * with QP_OPEN_EXCL an existing queue is QP_EEXIST; QP_OPEN_ANY_OWNER
 * opens a segment another user owns. Errors: QP_ENOENT, QP_EEXIST,
 * QP_EPERM (another user's), QP_EINVAL (cfg), QP_EVERSION, QP_ECORRUPT,
 * QP_ENOMEM, QP_ENOSPC, QP_ESYSTEM. */
int qpi_shmq_open(
    qpi_shmq **qp, const char *name, unsigned flags, const qpi_shmq_cfg *cfg);

/* Creates an anonymous queue shared with the children forked after. */
int qpi_shmq_anon(qpi_shmq **qp, const qpi_shmq_cfg *cfg);

/* Marks this attachment closed and wakes its blocked calls, which return
 * QP_ECLOSED, as do all later calls. The queue itself is untouched. */
void qpi_shmq_interrupt(qpi_shmq *q);

/* Unmaps and frees the attachment (interrupt it first if other threads may
 * still be inside a call). NULL is fine. */
void qpi_shmq_free(qpi_shmq *q);

/* Removes the named queue's segment: QP_OK or QP_ENOENT. Attachments
 * other processes hold see it at once: their calls fail with QP_ENOENT
 * ("was deleted"), and calls blocked on it wake with QP_ECLOSED. */
int qpi_shmq_unlink(const char *name);

/* Puts len bytes of the given kind. Waits until deadline_ns (absolute
 * CLOCK_MONOTONIC, INT64_MAX = forever, 0 = do not wait) while the queue
 * is full. Returns once the item is committed in the segment. Errors:
 * QP_EFULL, QP_ETOOBIG (at once: over max_message, or larger than the ring
 * can ever hold), QP_ENOSPC (at once: the segment's tmpfs has no memory
 * left for it, nothing written), QP_ECLOSED, QP_ECORRUPT. */
int qpi_shmq_put(qpi_shmq *q, const void *buf, size_t len, unsigned kind,
    int64_t deadline_ns);

/* One item of a batch put. */
typedef struct qpi_shmq_item {
	const void *buf;
	size_t len;
	unsigned kind; /* QPI_ITEM_BIN or QPI_ITEM_OBJ */
} qpi_shmq_item;

/* Puts n items in order, all or nothing: waits (as qpi_shmq_put) until
 * the queue has room for the whole batch, then commits them one after
 * the other under one hold of the producer lock, so that no other item
 * comes between them. Errors as qpi_shmq_put; QP_ETOOBIG (at once) also
 * when the batch could never fit (more items than maxsize, more bytes
 * than the ring). A crash in the middle leaves a prefix of the batch
 * committed, as n single puts would. */
int qpi_shmq_put_many(
    qpi_shmq *q, const qpi_shmq_item *items, size_t n, int64_t deadline_ns);

/* A put request of qpiped's (PROTOCOL.md, idempotency): client id, seq,
 * base (items of the request stored by earlier calls: a batch resumed
 * after a kill), n (items of the whole request). qpi_shmq_tags fills done:
 * items of the request in the queue. */
#define QPI_SHMQ_TAGS_MAX 16384
typedef struct qpi_shmq_tag {
	uint8_t client[16];
	uint64_t seq;
	uint32_t base;
	uint32_t n;
	uint32_t done;
} qpi_shmq_tag;

/* As qpi_shmq_put and qpi_shmq_put_many, and the request is noted in
 * the segment's table of put requests in the same commit: tag says
 * which (its done is ignored; NULL: an untagged put). For qpiped. */
int qpi_shmq_put_tagged(qpi_shmq *q, const void *buf, size_t len,
    unsigned kind, const qpi_shmq_tag *tag, int64_t deadline_ns);
int qpi_shmq_put_many_tagged(qpi_shmq *q, const qpi_shmq_item *items, size_t n,
    const qpi_shmq_tag *tag, int64_t deadline_ns);

/* Copies the newest cap entries of the table of put requests, oldest first,
 * into v: only requests with at least one item in the queue (or taken from
 * it). Repairs first if a producer died. The same request may appear twice (a
 * resumed batch): the larger done counts. QP_OK, QP_ECLOSED, QP_ECORRUPT. */
int qpi_shmq_tags(qpi_shmq *q, qpi_shmq_tag *v, size_t cap, size_t *np);

/* Gets the head item. With into != NULL copies it there (cap bytes): if it
 * is larger, QP_ETOOBIG with *lenp = its size, and it stays in the queue.
 * Otherwise *bufp gets a malloc'd copy. flags: QPI_GET_OBJ. Errors:
 * QP_EEMPTY (deadline), QP_ENOMEM (item stays), QP_ECLOSED, QP_ECORRUPT. */
int qpi_shmq_get(qpi_shmq *q, unsigned flags, void *into, size_t cap,
    void **bufp, size_t *lenp, int64_t deadline_ns);

/* True once the queue was removed (qpi_shmq_unlink, by any process):
 * its calls fail from then on (QP_ENOENT, or QP_ECLOSED for a call that
 * was waiting). */
bool qpi_shmq_removed(const qpi_shmq *q);

/* Exact number of items ready (leased items excluded, released included). */
int qpi_shmq_qsize(qpi_shmq *q, uint64_t *np);

/* True when a put of an empty item would block. */
int qpi_shmq_full(qpi_shmq *q, bool *fullp);

/* JoinableQueue accounting: unfinished = items put - task_done calls.
 * task_done with nothing unfinished is QP_EVALUE and changes nothing. */
int qpi_shmq_task_done(qpi_shmq *q);

/* Waits until nothing is unfinished: QP_OK, QP_ETIMEDOUT, QP_ECLOSED. */
int qpi_shmq_join(qpi_shmq *q, int64_t deadline_ns);

/* Fills *st (see qp_queue_stats). Sleepers whose process is gone are
 * forgotten first, so the waiter counts heal after a kill -9. */
int qpi_shmq_stat(qpi_shmq *q, qp_queue_stats *st);

/* ---- counters for metrics (a block of the header of its own) ---- */

/* Why leases went back to the queue for another delivery. */
enum {
	QPI_SHMQ_REL_DISCONNECT = 0, /* their holder's connection left */
	QPI_SHMQ_REL_EXPIRED = 1, /* the lease ran out (qpi_shmq_expire) */
	QPI_SHMQ_REL_DEAD = 2, /* their holder process died */
	QPI_SHMQ_REL_N
};

/* What happened to a queue since it was made, counted in its segment by
 * every process that uses it (so local shm:// traffic counts too, and the
 * figures outlive a server). Advisory: bumped after the change commits. */
typedef struct qpi_shmq_counters {
	uint64_t puts; /* items put */
	uint64_t gets; /* items delivered (redeliveries included) */
	uint64_t acks; /* leases confirmed */
	uint64_t nacks; /* leases given back by their holder (release) */
	uint64_t rel[QPI_SHMQ_REL_N]; /* leases given back, by reason */
} qpi_shmq_counters;

/* Reads the counters without a lock (each figure on its own). */
int qpi_shmq_counters_get(qpi_shmq *q, qpi_shmq_counters *c);

/* The counters block as stored: in the segment's header, or placed
 * elsewhere (qpi_shmq_counters_place). Versioned on its own. */
#define QPI_SHMQ_MX_VERSION 1u
typedef struct qpi_shmq_mx {
	uint32_t version; /* QPI_SHMQ_MX_VERSION */
	uint32_t pad;
	uint64_t acks; /* leases confirmed */
	uint64_t nacks; /* leases given back by their holder */
	uint64_t rel[QPI_SHMQ_REL_N]; /* leases given back, by reason */
	uint64_t puts, gets; /* placed blocks only: counted by their owner */
	uint64_t spare[9];
} qpi_shmq_mx;

/* From now on q counts into mx (a durable queue's state file, which
 * outlives the private segment) instead of its header; puts and gets are
 * then read from mx, where the owner counts them (qpi_shmq_mx_add). */
void qpi_shmq_counters_place(qpi_shmq *q, qpi_shmq_mx *mx);

/* Adds n to a counter of a counters block (relaxed atomic). */
static inline void
qpi_shmq_mx_add(uint64_t *c, uint64_t n)
{
	__atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

/* Walks the whole segment under both locks and checks every invariant
 * (positions, record headers, counters, lease table and lists): QP_OK, or
 * QP_ECORRUPT with qp_errmsg() naming the first fault. For tests and
 * `qpipe stat`; it stops the queue while it runs. */
int qpi_shmq_check(qpi_shmq *q);

/* ------------------------------------------------------------------------
 * Leases (qpiped). Lease ids are nonzero 64-bit values, never reused while
 * the segment lives (a slot index plus a generation); a stale id is
 * QP_ENOENT. Expiries are CLOCK_MONOTONIC milliseconds (qpi_now_ms()).
 * ------------------------------------------------------------------------ */

/* Information about a lease handed out by qpi_shmq_get_lease. */
typedef struct qpi_shmq_lease {
	uint64_t id; /* for ack, release, renew */
	uint32_t deliveries; /* 1 on first delivery, +1 per redelivery */
	uint32_t kind; /* QPI_ITEM_BIN or QPI_ITEM_OBJ, as stored */
	int64_t expiry_ms; /* INT64_MAX: no expiry */
} qpi_shmq_lease;

/* As qpi_shmq_get (into = NULL: *bufp gets a malloc'd copy, with
 * QPI_GET_OBJ as a msgpack value), but the item stays in the segment's
 * lease area, leased by owner (any token the caller picks, e.g. a
 * connection id) for lease_ms milliseconds (-1: until acked or
 * released); *lease describes it. Released items come first, then the
 * ring's head. Errors as qpi_shmq_get, plus QP_ELIMIT when every lease
 * slot is taken or the lease area has no room for the item (it stays
 * ready), QP_ENOSPC when the lease area's tmpfs has no memory left for
 * it (it stays ready). A server that must not block passes deadline 0
 * and waits with qpi_shmq_watch below. */
int qpi_shmq_get_lease(qpi_shmq *q, uint64_t owner, int64_t lease_ms,
    unsigned flags, void **bufp, size_t *lenp, qpi_shmq_lease *lease,
    int64_t deadline_ns);

/* As qpi_shmq_get_lease, but an item whose copy (with QPI_GET_OBJ, its
 * msgpack encoding) would be over max_len bytes (0: no limit) is not
 * taken: QP_ETOOBIG with *lenp = its size, and it stays at the head, its
 * delivery count unchanged. A batch reply fills up to its size this way. */
int qpi_shmq_get_lease_max(qpi_shmq *q, uint64_t owner, int64_t lease_ms,
    unsigned flags, size_t max_len, void **bufp, size_t *lenp,
    qpi_shmq_lease *lease, int64_t deadline_ns);

/* One item of a batch get: where its bytes are in the batch's buffer, and
 * its lease (lease gets only; zeros otherwise). */
typedef struct qpi_shmq_got {
	size_t off;
	size_t len;
	qpi_shmq_lease lease;
	void *own; /* QPI_GET_EACH: the item's own copy (caller frees) */
} qpi_shmq_got;

/* Batch gets: up to max items (max > 0) in one hold of the consumer lock,
 * released items first, then the ring's head, in queue order; a single
 * get is the batch of one. Waits until deadline_ns for the first item as
 * qpi_shmq_get does, never for more. *bufp gets one malloc'd buffer
 * holding them all (the caller frees it; with QPI_GET_EACH each item is in
 * got[i].own instead and *bufp is NULL), got[0 .. *np) says where each is
 * (got has room for max). Items after the first are taken while the batch
 * stays within max_bytes (0: no limit) and memory lasts; the one that
 * would pass it stays at the head. The lease form leases each item as
 * qpi_shmq_get_lease does, all with one expiry (the clock is read once).
 * A batch cut short by a kill took the items it committed and left the
 * rest: each is taken (leased) or in the queue. Errors (nothing taken) as
 * qpi_shmq_get and qpi_shmq_get_lease. */
int qpi_shmq_get_many(qpi_shmq *q, unsigned flags, size_t max,
    size_t max_bytes, void **bufp, qpi_shmq_got *got, size_t *np,
    int64_t deadline_ns);
int qpi_shmq_get_lease_many(qpi_shmq *q, uint64_t owner, int64_t lease_ms,
    unsigned flags, size_t max, size_t max_bytes, void **bufp,
    qpi_shmq_got *got, size_t *np, int64_t deadline_ns);

/* Confirms a lease: the item is removed for good. QP_ENOENT if the id is
 * unknown, already acked, was released (expired) meanwhile, or is being
 * completed (a dead completer's, not settled yet: qpi_shmq_complete). */
int qpi_shmq_ack(qpi_shmq *q, uint64_t lease_id);

/* Confirms n leases in one hold of the consumer lock, each as
 * qpi_shmq_ack: rcs[i] gets QP_OK or QP_ENOENT for ids[i] (an id twice:
 * the second is QP_ENOENT). Returns QP_OK, or an error for the whole
 * call: QP_EBUSY, QP_ECLOSED, QP_ENOENT (removed) with nothing done and
 * rcs untouched; QP_ECORRUPT (the queue is damaged: rcs mean nothing). */
int qpi_shmq_ack_many(qpi_shmq *q, const uint64_t *ids, size_t n, int *rcs);

/* Returns a leased item to the head of the queue (delivered next, its
 * delivery count raised on that delivery). QP_ENOENT as for ack. Works
 * on an attachment interrupted already (a closing handle's leases). */
int qpi_shmq_release(qpi_shmq *q, uint64_t lease_id);

/* QP_OK while lease_id is held (not acked, released or expired), else
 * QP_ENOENT. */
int qpi_shmq_lease_held(qpi_shmq *q, uint64_t lease_id);

/* Moves a lease's expiry to now + lease_ms (-1: never). QP_ENOENT as for
 * ack. */
int qpi_shmq_renew(qpi_shmq *q, uint64_t lease_id, int64_t lease_ms);

/* Releases every lease held by owner; *np (may be NULL) gets the count. */
int qpi_shmq_release_owner(qpi_shmq *q, uint64_t owner, size_t *np);

/* Releases every lease whose expiry is <= now_ms. *np (may be NULL) gets
 * the count, *next_ms (may be NULL) the earliest expiry still pending, or
 * INT64_MAX if none. Call it at *next_ms. */
int qpi_shmq_expire(qpi_shmq *q, int64_t now_ms, size_t *np, int64_t *next_ms);

/* Releases every lease (a restarted server: nobody holds one any more). */
int qpi_shmq_release_all(qpi_shmq *q, size_t *np);

/* A restarted server: releases the leases whose holder is gone, and only
 * those. A process token (qpi_shmq_owner_self) is gone when its process
 * is (as qpi_shmq_release_dead); any other token is read as a server's,
 * (pid << 32) | connection, and is gone when bits 32-62 are 0 or name no
 * running process of this pid namespace. *np (may be NULL) gets the
 * count. A reused pid keeps its leases until they expire. */
int qpi_shmq_release_stale(qpi_shmq *q, size_t *np);

/* Local workers: an owner token naming the calling process (its pid and
 * pid namespace; bit 63 set, so it never equals a small token qpiped
 * picks). A worker leases with it, acks once its task is done, and
 * whoever notices calls qpi_shmq_release_dead(): the leases of processes
 * that are gone (exited, killed, zombies) return to the head of the
 * queue. It costs one kill(pid, 0) per lease held by a process token. */
uint64_t qpi_shmq_owner_self(void);
int qpi_shmq_release_dead(qpi_shmq *q, size_t *np);

/* ------------------------------------------------------------------------
 * Completion (qp_queue_complete): shmq_done.c sets out how it survives a
 * kill -9 of any process at any instant.
 * ------------------------------------------------------------------------ */

/* Acks lease id of t (as qpi_shmq_ack, and counts one task_done) and puts
 * the result (len bytes of kind) into r, all or nothing. tag (NULL: one
 * naming t and id) is noted with the result as qpi_shmq_put_tagged does.
 * r must be a named queue other than t. Waits until deadline_ns while r
 * is full. QP_OK; QP_ENOENT (lease not held: nothing put); QP_EFULL
 * (nothing done, lease kept); QP_ETOOBIG; QP_ENOTSUP (r anonymous);
 * QP_EINVAL (r is t); QP_EBUSY (a lock budget ran out, or a dead
 * completer's note on t is not settled yet: nothing done, try again);
 * QP_ECLOSED, QP_ECORRUPT, QP_ENOSPC. */
int qpi_shmq_complete(qpi_shmq *t, uint64_t id, qpi_shmq *r, const void *buf,
    size_t len, unsigned kind, const qpi_shmq_tag *tag, int64_t deadline_ns);

/* ------------------------------------------------------------------------
 * Watching (qpiped learns of local activity without polling).
 *
 * While at least one attachment watches a queue, every change that may
 * unblock someone (a put, a get or ack that frees room, a release or
 * expiry that returns items, a task_done that finishes the last task)
 * increments the queue's watch sequence, a 32-bit futex word in the
 * segment. A watcher thread loops:
 *
 *     uint32_t seen = qpi_shmq_watch_seq(q);
 *     ... serve parked requests (nowait gets, puts, joins) ...
 *     qpi_shmq_watch_wait(q, seen, deadline_ns);   // sleeps until it moves
 *
 * Changes made between watch_seq and watch_wait make watch_wait return at
 * once: nothing is missed. To wait on many queues with one futex_waitv(),
 * call qpi_shmq_watch_arm() on each, re-read each sequence, wait on the
 * words from qpi_shmq_watch_word(), then qpi_shmq_watch_disarm() each: the
 * wake-up system call is made only for armed watchers. A watcher that dies
 * is forgotten by the others (its pid is checked, at most every 100 ms).
 * An attachment made quiet (qpi_shmq_watch_quiet) is for a process that
 * knows of its own changes, as qpiped does (it serves its parked requests
 * after each request): a change made through it, by the process that
 * started the watch on it, moves the sequence but wakes only the other
 * watchers, where a wake-up per put or ack would send its watcher thread
 * after the lock its request path holds. A forked child's change, through
 * its copy of the attachment, wakes them all, as does every change
 * through an attachment that is not quiet (a client's fileno watcher
 * must hear of its own process's puts).
 * ------------------------------------------------------------------------ */

/* Starts (on = true) or stops watching q through this attachment.
 * QP_ELIMIT if 64 attachments watch already. */
int qpi_shmq_watch(qpi_shmq *q, bool on);

/* quiet: changes through q by this process wake none of q's watchers
 * (see above); off when q is attached. */
void qpi_shmq_watch_quiet(qpi_shmq *q, bool quiet);

/* The current watch sequence. */
uint32_t qpi_shmq_watch_seq(qpi_shmq *q);

/* Sleeps while the watch sequence equals seen, until deadline_ns:
 * QP_OK (it moved, or a spurious wake-up), QP_ETIMEDOUT, QP_ECLOSED,
 * QP_EINVAL (not watching). */
int qpi_shmq_watch_wait(qpi_shmq *q, uint32_t seen, int64_t deadline_ns);

/* For a hand-made wait on several queues: the futex word, and arming
 * (the next change wakes futex waiters on the word) and disarming. */
uint32_t *qpi_shmq_watch_word(qpi_shmq *q);
int qpi_shmq_watch_arm(qpi_shmq *q);
void qpi_shmq_watch_disarm(qpi_shmq *q);

/* ------------------------------------------------------------------------
 * Test hooks (tests only; NULL in production, one predictable branch).
 * When set, the hook is called at these points inside critical sections,
 * so that a test can widen them (sleep, spin) and kill -9 a process there.
 * ------------------------------------------------------------------------ */
enum qpi_shmq_hook_point {
	QPI_HOOK_PUT_LOCKED = 1, /* producer lock held, nothing written */
	QPI_HOOK_PUT_COPY, /* half of the item copied into the ring */
	QPI_HOOK_PUT_COMMIT, /* record stamped, tail and counts not moved */
	QPI_HOOK_GET_LOCKED, /* consumer lock held, item found */
	QPI_HOOK_GET_COPY, /* half of the item copied out */
	QPI_HOOK_GET_COMMIT, /* get: item counted, head not moved */
	QPI_HOOK_JOURNAL, /* consumer journal written, not committed */
	QPI_HOOK_COMMIT, /* consumer journal committed, not applied */
	QPI_HOOK_APPLY, /* partly applied */
	QPI_HOOK_WAKE, /* a waker chose a sleeper (lock held, before its
	                  commit), wake-up not yet delivered */
	QPI_HOOK_DONE, /* a put, get or task_done committed, lock held */
	QPI_HOOK_WOKEN, /* a sleeper was woken, before it acts on it */
	QPI_HOOK_CPL_MARK, /* completion: intent noted, result not put */
	QPI_HOOK_CPL_PUT, /* completion: result in, lease not acked */
};
extern void (*qpi_shmq_test_hook)(int point);

/* Bounds how long this thread's calls wait for a queue's lock: past ns
 * (a spin, then at most ns nanoseconds) a call that cannot take it
 * changes nothing and returns QP_EBUSY. ns < 0 (the default): wait as
 * long as the call's own deadline says. A stopped process holding a
 * lock then costs a server thread ns, not its whole wait. */
void qpi_shmq_lock_budget(int64_t ns);

/* The producer's (producer true) or the consumers' lock, for tests that
 * stand in for a process blocked on it. */
pthread_mutex_t *qpi_shmq_test_lock(qpi_shmq *q, bool producer);

#endif /* QPI_SHMQ_H */
