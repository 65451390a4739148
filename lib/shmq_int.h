/*
 * shmq_int.h - what the modules of the shared-memory queue share (shmq.h
 * is the interface): the segment's layout, an attachment, the inline
 * helpers of the put and get fast paths, and the calls each module
 * offers the others.
 *
 *   shmq.c       the calls of shmq.h: create and attach, put, get, sizes,
 *                check, leases, counters
 *   shmq_lock.c  the locks and their repair, who is alive, sleep and wake,
 *                and the watching calls of shmq.h
 *   shmq_done.c  completion: a task's lease acked and its result put
 *
 * Locking: shmq.c's opening paragraph sets it out; each call below says
 * which lock it wants held.
 */
#ifndef QPI_SHMQ_INT_H
#define QPI_SHMQ_INT_H

#include "futex.h"
#include "shmq.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define SQ_HOOK(p)                                                     \
	do {                                                           \
		if (__builtin_expect(qpi_shmq_test_hook != NULL, 0)) { \
			qpi_shmq_test_hook(p);                         \
		}                                                      \
	} while (0)

#define SQ_MAGIC    0x0a512d4550495051ull /* "QPIPE-Q\n" */
#define SQ_VERSION  3u /* 3: the counters block (qpi_shmq_mx) */
#define SQ_REC_HDR  40u
#define SQ_JMAX     32
#define SQ_EV_SLOTS 64
/* A contended lock is retried for about this many pauses (~1-2 us) before
 * the caller sleeps in the kernel; a blocking call polls its condition for
 * this long before it sleeps. */
#define SQ_LOCK_SPIN 100
/* How many sleepers a wake-up for one wakes: see qpi_sq_wake_slow. */
#define SQ_WAKE_ONE 2
/* A thread blocked on a lock wakes at least this often (ns) and tries
 * again. An unlock wakes one waiter in the kernel; if that waiter is being
 * killed at that instant, the wake-up dies with it and the other waiters
 * would sleep on a free lock (the robust-futex protocol covers dead
 * owners, not dead waiters). Locks are held for microseconds, so the
 * slices cost nothing but in that case, which they bound. */
#define SQ_LOCK_SLICE_NS 5000000
#define SQ_SPIN_NS       4000
/* Liveness scans of sleeper slots happen at most this often. */
#define SQ_SCAN_MS 100

/* Record kinds (sq_rec.kind). */
#define K_BIN 1u
#define K_OBJ 2u
#define K_PAD 3u

/* The lease area is cut in blocks of this many bytes. */
#define SQ_BLOCK 512u

/* A named segment is sparse (see "Space" in shmq.h): the ring and the
 * lease area get memory reserved in steps of at least this many bytes;
 * a new queue starts with SQ_BACK_FIRST bytes of its ring backed. */
#define SQ_BACK_STEP  (1ull << 20)
#define SQ_BACK_FIRST (64ull << 10)

/* Put requests remembered in a segment (see qpi_shmq_tags). */
#define SQ_TAGS QPI_SHMQ_TAGS_MAX

/* Lease slot states. */
#define L_FREE     0u
#define L_LEASED   1u
#define L_RELEASED 2u
#define L_IDX_BITS 20

/* Journal entries that write 32 bits carry this flag in their offset. */
#define J_W32 (1ull << 63)

/* Completion phases (sq_hdr.cpl.phase). Non-zero only while the
 * completing process holds the consumer lock: whoever takes that lock and
 * finds one set knows the completer died, and settles it (qpi_sq_cpl_settle).
 */
#define CPL_NONE    0u
#define CPL_PUTTING 1u /* the result may be going into the named queue */
#define CPL_PUT     2u /* the result is in: the lease is to be acked */

enum { EV_NE, EV_NF, EV_JN, EV_W, SQ_EV_N };

#define LD(p)     __atomic_load_n((p), __ATOMIC_RELAXED)
#define LDA(p)    __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ST(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define STR(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* A record header in the ring. */
typedef struct sq_rec {
	uint64_t stamp; /* position ^ salt, stored last: the commit */
	uint32_t kind;
	uint32_t len; /* payload bytes */
	uint64_t
	    seq; /* items put once this record is in (an item's ordinal) */
	uint64_t bytes; /* bytes put once this record is in */
	uint32_t ts; /* put time, ms since the queue was made (mod 2^32) */
	uint32_t pad;
} sq_rec;

/* A lease slot: the item itself lives in a chain of lease-area blocks. */
typedef struct sq_slot {
	uint64_t state;
	uint64_t owner;
	int64_t expiry_ms;
	uint64_t seq; /* the item's ordinal: released items go in order */
	uint64_t gen; /* bumped on each lease: ids are never reused */
	uint64_t deliveries;
	uint64_t next; /* free or released list: slot + 1, 0 ends */
	uint64_t kindlen; /* kind << 32 | length */
	uint64_t first; /* first block + 1 (0: an empty item, no block) */
	uint64_t nblocks;
	uint64_t ts; /* put time, as sq_rec.ts */
	uint64_t spare;
} sq_slot;

/* A put request of qpiped's, remembered in the segment so that a
 * restarted server knows it was applied (see qpi_shmq_put_tagged). */
typedef struct sq_tag {
	uint64_t state; /* 0: empty or being written; 1: written */
	uint8_t client[16];
	uint64_t seq;
	uint64_t first; /* the ordinal (nput) of this put's first item */
	uint32_t base; /* items of the request stored before this put */
	uint32_t n; /* items of the whole request */
	uint32_t done; /* items of the request stored once this put is */
	uint32_t pad;
	uint64_t spare;
} sq_tag;

typedef struct sq_jent {
	uint64_t off; /* from the segment's base; J_W32: a 32-bit word */
	uint64_t val;
} sq_jent;

/* Redo journal: seq != 0 and seq == the side's cseq means "committed,
 * maybe not applied". */
typedef struct sq_jrnl {
	uint64_t seq;
	uint64_t n;
	sq_jent e[SQ_JMAX];
} sq_jrnl;

typedef struct sq_side {
	pthread_mutex_t lock;
	uint64_t cseq; /* consumer: commit sequence */
	uint64_t hint; /* producer: a head seen (head only grows) */
	sq_jrnl j; /* consumer only; the producer's entries hold a
	              completion's results queue name (sq_hdr.cpl) */
} sq_side;

/* Sleeper word states (the low 2 bits; the rest is a generation, new for
 * each sleep). A waker ORs W_WOKEN in and wakes the word in one system
 * call; W_LEFT | W_WOKEN is still W_LEFT. */
#define W_ASLEEP 0u /* asleep, or about to be: nobody woke it yet */
#define W_WOKEN  2u /* woken (or told not to sleep) */
#define W_LEFT   3u /* it left on its own (deadline, closed) */
#define W_STATE  3u

/* A sleeper slot: its owner and its own futex word. */
typedef struct sq_who {
	int32_t pid;
	uint32_t word; /* generation << 2 | W_ state */
	uint64_t nsid; /* pid namespace: liveness is judged only within it */
} sq_who;

/* A wake-up event. A sleeper claims a slot, sets its bit in `sleep`, then
 * sleeps on its own word. A waker skips words already W_WOKEN (a woken
 * process that waits for a CPU costs the others nothing) and wakes a
 * W_ASLEEP one with FUTEX_WAKE_OP, which marks it W_WOKEN and wakes it in
 * one system call: a waker killed at any instant either woke it or left
 * it W_ASLEEP. The bit stays set until the sleeper itself clears it, so
 * a sleeper whose waker was killed stays in plain sight and the next
 * waker wakes it. More than 64 sleepers at once sleep on `seq`, counted
 * in `extra`. The watch event keeps its watchers in `mask` and wakes them
 * through `seq`. */
typedef struct sq_ev {
	uint32_t seq;
	uint32_t pad;
	uint64_t sleep;
	uint64_t extra;
	uint64_t mask;
	int64_t scan_ms;
	_Alignas(64) sq_who who[SQ_EV_SLOTS];
} sq_ev;

typedef struct sq_hdr {
	uint64_t magic;
	uint32_t version;
	uint32_t hdr_size;
	uint64_t seg_size;
	uint64_t slots_off;
	uint64_t links_off; /* lease area: one uint32_t link per block */
	uint64_t blocks_off;
	uint64_t nblocks;
	uint64_t ring_off;
	uint64_t cap;
	uint64_t max_msg;
	uint64_t maxsize;
	uint32_t nslots;
	uint32_t corrupt; /* SQ_FAULT | SQ_REMOVED bits: every call fails */
	uint64_t salt;
	int64_t created_ms; /* CLOCK_MONOTONIC_COARSE ms */
	uint64_t tags_off; /* SQ_TAGS sq_tag entries */

	_Alignas(128) sq_side ps; /* producer side */
	_Alignas(128) struct {
		uint64_t tail;
		uint64_t nput; /* items put (committed), ever */
		uint64_t bytes_in;
		uint64_t backed; /* ring bytes [0, backed) have memory */
		uint64_t tags_next; /* tags written, ever */
	} pp;
	_Alignas(128) sq_side gs; /* consumer side */
	_Alignas(128) struct {
		uint64_t rel_first; /* released slots, oldest item first */
		uint64_t free_first; /* free slots */
		uint64_t bfree; /* freed blocks: first + 1 */
		uint64_t nbfree;
		uint64_t bwater; /* blocks never used start here */
		uint64_t bbacked; /* blocks [0, bbacked) have memory */
	} gv;
	_Alignas(128) struct {
		uint64_t head; /* the next record to read */
		uint64_t nget; /* items taken from the ring, ever */
		uint64_t relgets; /* deliveries of released items, ever */
		uint64_t nreleased;
		uint64_t nleased;
		uint64_t bytes_out;
		uint64_t bytes_rel;
	} gp;
	_Alignas(128) uint64_t dones; /* task_done calls */
	/* A completion in progress (qpi_shmq_complete), under the consumer
	 * lock; it lives in the padding after dones, so a segment made
	 * before it reads zeros (no completion) and the layout stays. The
	 * results queue's name is kept in the producer side's journal
	 * entries, which nothing else uses (the consumer side's are
	 * rewritten by every transaction, a settler's included). */
	struct {
		uint64_t phase; /* CPL_* */
		uint64_t lease; /* the task's lease id */
		uint8_t client[16]; /* the result's tag */
		uint64_t seq;
		uint64_t namelen; /* of the results queue's name */
	} cpl;
	_Alignas(128) sq_ev ev[SQ_EV_N];
	/* ---- counters for metrics (qpi_shmq_counters_get): a block of its
	 * own, with its own version, last in the header. Bumped with relaxed
	 * atomics after the change they count is committed, under the lock
	 * that change took: advisory figures, never read to decide anything,
	 * so a process killed between the commit and the bump only loses one
	 * count. Its spare[] is room for more without a new layout. ---- */
	_Alignas(128) qpi_shmq_mx mx;
} sq_hdr;

/* sq_hdr.corrupt: a fault was found (qpi_sq_fault, sq_quarantine), or the
 * queue was removed (qpi_shmq_unlink). One word, so that the check every
 * call makes under its lock stays one load; a library from before
 * SQ_REMOVED reads a removed queue as corrupt, and stops too. */
#define SQ_FAULT   1u
#define SQ_REMOVED 2u

/* qpi_shmq.closed: open, closed by its owner, or quarantined (the
 * SIGBUS guard stores SQ_BAD itself: see qpi_shm_guard). */
#define SQ_OPEN       0
#define SQ_CLOSED     1
#define SQ_BAD        2
#define SQ_MX_VERSION QPI_SHMQ_MX_VERSION
#define sq_mx_add     qpi_shmq_mx_add

struct qpi_shmq {
	sq_hdr *h;
	uint8_t *base;
	uint8_t *ring;
	sq_slot *slots;
	uint32_t *links; /* next block + 1, 0 ends */
	sq_tag *tags;
	uint8_t *blocks;
	uint64_t nblocks;
	uint64_t cap;
	uint64_t cmask; /* cap - 1 when cap is a power of two, else 0 */
	uint64_t max_msg;
	uint64_t maxsize;
	uint64_t salt;
	uint64_t bb_seen; /* gv.bbacked as last seen (producer lock) */
	int64_t created_ms;
	uint32_t nslots;
	int closed; /* SQ_OPEN, SQ_CLOSED, SQ_BAD */
	int watch_slot; /* -1: not watching */
	pid_t watch_pid; /* the process that started watching */
	bool watch_quiet; /* its own changes wake no watcher of its */
	uint64_t fault_off; /* SQ_BAD by SIGBUS: where (the guard's) */
	char why[160]; /* SQ_BAD otherwise: what failed its check */
	qpi_shmq_mx *mx; /* the counters: &h->mx, or placed elsewhere */
	qpi_shm shm;
	char label[QP_NAME_MAX + 16];
};

/* ---- small helpers ---- */

/* shmq.c: the error of a call that finds sq_stopped true: QP_ECLOSED
 * (closed), QP_ECORRUPT (quarantined), QP_ENOENT (removed; QP_ECLOSED
 * "was deleted" for a call that was waiting on the queue when it went,
 * as qpiped answers its waiters). */
int qpi_sq_stop_err(const qpi_shmq *q, bool waited);

/* shmq.c: marks the segment corrupt; QP_ECORRUPT naming what and where. */
int qpi_sq_fault(qpi_shmq *q, const char *what, uint64_t pos);

static inline uint64_t
sq_off(const qpi_shmq *q, uint64_t pos)
{
	return q->cmask ? (pos & q->cmask) : (pos % q->cap);
}

static inline sq_rec *
sq_at(const qpi_shmq *q, uint64_t off)
{
	return (sq_rec *) (void *) (q->ring + off);
}

static inline uint64_t
sq_stamp(const qpi_shmq *q, uint64_t pos)
{
	return pos ^ q->salt;
}

static inline int64_t
sq_coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* True when this handle's calls must stop: closed or quarantined. The
 * entry check of puts and gets: a removal they see once they hold a
 * lock (qpi_sq_lock_until). */
static inline bool
sq_closed(const qpi_shmq *q)
{
	return LD(&q->closed) != 0;
}

/* As sq_closed, or the queue removed (qpi_shmq_unlink, by any process):
 * what waits and what does not take a lock looks at this. */
static inline bool
sq_stopped(const qpi_shmq *q)
{
	return LD(&q->closed) != 0 || (LD(&q->h->corrupt) & SQ_REMOVED) != 0;
}

static inline bool
sq_removed(const qpi_shmq *q)
{
	return LD(&q->closed) == SQ_OPEN
	    && (LD(&q->h->corrupt) & SQ_REMOVED) != 0;
}

/* The end of a put or get that worked on the segment: QP_OK, unless the
 * segment was truncated under it (the SIGBUS guard then gave it zero
 * pages: the item went nowhere, or came from nowhere). */
static inline int
sq_after(const qpi_shmq *q)
{
	if (__builtin_expect(LD(&q->closed) == SQ_BAD, 0)) {
		return qpi_sq_stop_err(q, false);
	}
	return QP_OK;
}

/* ---- journal (consumer side) ---- */

typedef struct sq_tx {
	qpi_shmq *q;
	sq_side *s;
	uint32_t n;
} sq_tx;

static inline void
tx_begin(sq_tx *t, qpi_shmq *q)
{
	t->q = q;
	t->s = &q->h->gs;
	t->n = 0;
}

static inline void
tx_set(sq_tx *t, uint64_t *p, uint64_t v)
{
	sq_jent *e = &t->s->j.e[t->n++];

	e->off = (uint64_t) ((uint8_t *) p - t->q->base);
	e->val = v;
}

static inline void
tx_set32(sq_tx *t, uint32_t *p, uint32_t v)
{
	sq_jent *e = &t->s->j.e[t->n++];

	e->off = (uint64_t) ((uint8_t *) p - t->q->base) | J_W32;
	e->val = v;
}

static inline void
sq_apply(qpi_shmq *q, const sq_jrnl *j, uint64_t n, bool hook)
{
	for (uint64_t i = 0; i < n; i++) {
		uint64_t off = j->e[i].off;
		if (off & J_W32) {
			STR((uint32_t *) (void *) (q->base + (off & ~J_W32)),
			    (uint32_t) j->e[i].val);
		} else {
			STR((uint64_t *) (void *) (q->base + off),
			    j->e[i].val);
		}
		if (hook && i == 0) {
			SQ_HOOK(QPI_HOOK_APPLY);
		}
	}
}

static inline void
tx_commit(sq_tx *t)
{
	sq_jrnl *j = &t->s->j;
	uint64_t s = t->s->cseq + 1;

	j->n = t->n;
	SQ_HOOK(QPI_HOOK_JOURNAL);
	STR(&j->seq, s);
	STR(&t->s->cseq, s); /* the commit */
	SQ_HOOK(QPI_HOOK_COMMIT);
	sq_apply(t->q, j, t->n, true);
	STR(&j->seq, 0);
}

/* ---- records ---- */

/* Looks for a committed record at pos, or after the implicit pad at pos
 * (the end of the ring, too short for a header). *rp is NULL if nothing is
 * committed there; else *startp is where the record starts (pos, or the
 * start of the next lap) and *endp where it ends. A stamped record with a
 * bad header is a fault. */
static inline int
sq_peek(
    qpi_shmq *q, uint64_t pos, sq_rec **rp, uint64_t *startp, uint64_t *endp)
{
	uint64_t off = sq_off(q, pos), rem = q->cap - off;
	sq_rec *r;

	*rp = NULL;
	*startp = *endp = pos;
	if (rem < SQ_REC_HDR) {
		pos += rem;
		off = 0;
	}
	r = sq_at(q, off);
	if (LDA(&r->stamp) != sq_stamp(q, pos)) {
		return QP_OK;
	}
	uint32_t k = r->kind;
	if ((k != K_BIN && k != K_OBJ && k != K_PAD)
	    || QPI_SHMQ_REC_SIZE(r->len) > q->cap - off
	    || (r->kind == K_PAD
	        && (r->len % 8 != 0 || r->len + SQ_REC_HDR != q->cap - off))) {
		return qpi_sq_fault(q, "bad record header", pos);
	}
	*rp = r;
	*startp = pos;
	*endp = pos + QPI_SHMQ_REC_SIZE(r->len);
	return QP_OK;
}

/* Walks from the head over committed pads to the first committed item
 * (*rp NULL if none yet); *posp moves over the pads, *startp and *endp
 * bound the item. */
static inline int
sq_walk(
    qpi_shmq *q, uint64_t *posp, sq_rec **rp, uint64_t *startp, uint64_t *endp)
{
	uint64_t pos = *posp, lim = *posp + q->cap;
	int rc;

	for (;;) {
		if ((rc = sq_peek(q, pos, rp, startp, endp)) != QP_OK) {
			return rc;
		}
		if (*rp == NULL || (*rp)->kind != K_PAD) {
			return QP_OK;
		}
		if (*endp > lim) {
			return qpi_sq_fault(q, "pads past the ring", pos);
		}
		pos = *posp = *endp;
	}
}

/* The heads of the free slot and block lists, as a transaction that
 * frees slots has them so far (qpi_sq_slot_free), until sq_lists_set. */
typedef struct sq_lists {
	uint64_t ffree, bfree, nbfree;
} sq_lists;

static inline void
sq_lists_get(const qpi_shmq *q, sq_lists *l)
{
	l->ffree = q->h->gv.free_first;
	l->bfree = q->h->gv.bfree;
	l->nbfree = q->h->gv.nbfree;
}

static inline void
sq_lists_set(qpi_shmq *q, sq_tx *t, const sq_lists *l)
{
	tx_set(t, &q->h->gv.free_first, l->ffree);
	tx_set(t, &q->h->gv.bfree, l->bfree);
	tx_set(t, &q->h->gv.nbfree, l->nbfree);
}

static inline void
sq_unlock(sq_side *s)
{
	pthread_mutex_unlock(&s->lock);
}

/* Orders the caller's lock acquisition or state changes before its
 * reads of sleeper bits (a sleeper sets its bit with a full barrier, then
 * re-reads the state; see sq_settle). Called right after a lock or an
 * unlock: glibc takes a robust mutex with an atomic compare-exchange and
 * releases it with an atomic exchange, full barriers on x86, so only the
 * compiler needs fencing there. */
static inline void
sq_fence(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GLIBC__)
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
#else
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

/* ---- the calls each module offers the others ---- */

/* shmq.c: the slot of lease id in state (consumer lock held). */
int qpi_sq_slot_of(qpi_shmq *q, uint64_t id, uint64_t state, uint32_t *ip);

/* shmq.c: frees lease slot i and its blocks through t (3 entries) onto
 * the lists l, whose heads the caller sets once done (sq_lists_set). */
int qpi_sq_slot_free(qpi_shmq *q, sq_tx *t, uint32_t i, sq_lists *l);

/* What a blocked producer saw: any change means "try again". */
typedef struct sq_snap {
	uint64_t head;
	uint64_t nget;
	uint64_t nrel;
} sq_snap;

/* shmq.c: one try at a put of n items under the producer lock (tag NULL:
 * untagged): QP_OK, QP_EFULL (snap: what it saw), or another error. */
int qpi_sq_try_put(qpi_shmq *q, const qpi_shmq_item *items, size_t n,
    const qpi_shmq_tag *tag, sq_snap *snap);

/* A condition a blocked call waits for (a hint, read without a lock). */
typedef bool (*sq_pred)(qpi_shmq *q, const void *arg);

/* shmq.c: true once a producer that saw snap (arg) may find room. */
bool qpi_sq_pred_progress(qpi_shmq *q, const void *arg);

/* shmq_lock.c: takes the side's lock, repairing it if its owner died;
 * waits until deadline (absolute CLOCK_MONOTONIC ns, INT64_MAX =
 * forever; < 0: -ns from the first wait on, so that a free lock costs no
 * clock read): QP_OK, QP_ETIMEDOUT, QP_ECORRUPT. */
int qpi_sq_lock_until(qpi_shmq *q, sq_side *s, int64_t deadline);

/* shmq_lock.c: as qpi_sq_lock_until, forever or within this thread's
 * budget (qpi_shmq_lock_budget: QP_EBUSY past it, nothing changed). */
int qpi_sq_lock(qpi_shmq *q, sq_side *s);
extern __thread int64_t qpi_sq_budget_ns; /* ns; < 0: no budget */

/* shmq_lock.c: learns the kind word of a queue lock (once). */
void qpi_sq_kind_init(void);

/* shmq_lock.c: this process's pid (and pid namespace, nsidp not NULL). */
int32_t qpi_sq_me(uint64_t *nsidp);

/* shmq_lock.c: true only when pid of our namespace (nsid) is gone. */
bool qpi_sq_dead(int32_t pid, uint64_t nsid);

/* shmq_lock.c: a slot of ev for this process (-1: none); 0 in its pid
 * frees it. */
int qpi_sq_claim(sq_ev *ev);

/* shmq_lock.c: forgets sleepers and watchers whose process died. */
void qpi_sq_scan_now(sq_ev *ev);

/* shmq_lock.c: sq_wake's and sq_watch_bump's work, if anyone waits. */
void qpi_sq_wake_slow(qpi_shmq *q, int e, bool all);
void qpi_sq_watch_bump_slow(qpi_shmq *q);

/* shmq_lock.c: waits for pred: a short spin the first time (*spun
 * false), then a sleep on event e. QP_OK (re-check), QP_ETIMEDOUT,
 * QP_ECLOSED. */
int qpi_sq_wait(qpi_shmq *q, int e, sq_pred pred, const void *arg,
    int64_t deadline, bool *spun);

/* shmq_done.c: a completer died holding the consumer lock (which this
 * thread holds now): finishes its completion if its result is in, else
 * ends it and leaves the lease to the dead holder's usual fate. */
void qpi_sq_cpl_settle(qpi_shmq *q);

/* Wakes one sleeper of event e (all if all), if any sleeps. Called with
 * the lock that guards the change the sleepers wait for, BEFORE the
 * change's commit, and the lock is released only after it: see
 * sq_settle in shmq_lock.c for why nothing is lost that way, even if
 * the caller dies at any instant. */
static inline void
sq_wake(qpi_shmq *q, int e, bool all)
{
	sq_ev *ev = &q->h->ev[e];

	sq_fence();
	if ((LD(&ev->sleep) | LD(&ev->extra)) != 0) {
		qpi_sq_wake_slow(q, e, all);
	}
}

/* Tells watchers (qpiped) that something changed (after sq_fence). */
static inline void
sq_watch_bump(qpi_shmq *q)
{
	if (LD(&q->h->ev[EV_W].mask) != 0) {
		qpi_sq_watch_bump_slow(q);
	}
}

/* Unlocks side s after a change; changed: one that watchers may wait
 * for (they are told after the unlock, see shmq.h). */
static inline void
sq_unlock_bump(qpi_shmq *q, sq_side *s, bool changed)
{
	sq_unlock(s);
	if (changed) {
		sq_fence();
		sq_watch_bump(q);
	}
}

/* True when slot i is the lease of a completion not settled yet (its
 * completer died and its results queue could not be read): it stays
 * leased, neither released nor expired, until it is settled. */
static inline bool
sq_cpl_holds(qpi_shmq *q, uint32_t i)
{
	const sq_hdr *h = q->h;

	return LD(&h->cpl.phase) != CPL_NONE
	    && (h->cpl.lease & ((1u << L_IDX_BITS) - 1)) == i
	    && h->cpl.lease >> L_IDX_BITS == q->slots[i].gen;
}

#endif /* QPI_SHMQ_INT_H */
