/*
 * shmq.c - the shared-memory queue: a byte ring of variable-size records in
 * one segment, shared by any number of producer and consumer processes,
 * robust to any of them being killed at any instant (see shmq.h for the
 * design, the crash-safety argument and the lease model; shmq_int.h for
 * the modules and the layout).
 *
 * Locking: two robust process-shared mutexes in the segment (taken and
 * repaired by shmq_lock.c). The producer lock guards the tail and the
 * free space beyond it; the consumer lock guards the head (the next
 * record to read), the lease table and the lease area. Lock order:
 * producer, then consumer (only make-room and the check take both). A
 * put commits by stamping its record; consumers find records by their
 * stamps, so they never read the producer's counters on the fast path.
 * Consumer-side changes go through a journal (tx_*); a get takes a batch
 * of items (one for the single gets) in one hold of the consumer lock, a
 * batch of acks likewise (see "get" and qpi_shmq_ack_many). A waker
 * wakes under its lock before its commit, and task_done takes the
 * consumer lock for that (see sq_settle).
 */
#include "shmq_int.h"
#include "wire.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

void (*qpi_shmq_test_hook)(int point);

int
qpi_sq_stop_err(const qpi_shmq *q, bool waited)
{
	int c = LD(&q->closed);

	if (c == SQ_BAD) {
		if (q->why[0] != '\0') {
			return qpi_err(QP_ECORRUPT, "%s is quarantined: %s",
			    q->label, q->why);
		}
		return qpi_err(QP_ECORRUPT,
		    "%s is quarantined: its segment was truncated under this "
		    "process (a fault at byte %" PRIu64
		    " of its file; or its file system ran out of memory "
		    "there): recreate the queue",
		    q->label, LD(&q->fault_off));
	}
	if (c == SQ_OPEN && (LD(&q->h->corrupt) & SQ_REMOVED) != 0) {
		if (waited) {
			return qpi_err(QP_ECLOSED,
			    "%s was deleted while this call waited", q->label);
		}
		return qpi_err(QP_ENOENT, "%s was deleted", q->label);
	}
	return qpi_err(QP_ECLOSED, "%s: handle closed", q->label);
}

int
qpi_sq_fault(qpi_shmq *q, const char *what, uint64_t pos)
{
	__atomic_fetch_or(&q->h->corrupt, SQ_FAULT, __ATOMIC_RELAXED);
	return qpi_err(QP_ECORRUPT,
	    "%s is corrupt: %s at ring position %" PRIu64, q->label, what,
	    pos);
}

/* Space needed at tail for a record of size bytes, pad included. */
static inline uint64_t
sq_need(const qpi_shmq *q, uint64_t tail, uint64_t size)
{
	uint64_t rem = q->cap - sq_off(q, tail);
	return rem < size ? rem + size : size;
}

static uint32_t
sq_ts(const qpi_shmq *q)
{
	return (uint32_t) (sq_coarse_ms() - q->created_ms);
}

/* Producer lock held: ends the lap at tail with a pad of the rem bytes
 * left before the ring's end (none if too short for a header), stamped,
 * with the producer's counts. */
static void
sq_pad(qpi_shmq *q, uint64_t tail, uint64_t rem)
{
	sq_rec *p = sq_at(q, sq_off(q, tail));

	if (rem >= SQ_REC_HDR) {
		p->kind = K_PAD;
		p->len = (uint32_t) (rem - SQ_REC_HDR);
		p->seq = LD(&q->h->pp.nput);
		p->bytes = LD(&q->h->pp.bytes_in);
		p->ts = 0;
		p->pad = 0;
		STR(&p->stamp, sq_stamp(q, tail));
	}
}

/* Producer side: writes at tail a pad (if the record does not fit before
 * the ring's end) and the header of a record of len bytes, unstamped.
 * Returns the record; *posp gets its position. */
static sq_rec *
sq_rec_begin(qpi_shmq *q, uint64_t tail, uint32_t kind, uint64_t len,
    uint64_t seq, uint64_t bytes, uint32_t ts, uint64_t *posp)
{
	uint64_t off = sq_off(q, tail), rem = q->cap - off;
	uint64_t pos = tail;

	if (rem < QPI_SHMQ_REC_SIZE(len)) {
		sq_pad(q, tail, rem);
		pos = tail + rem;
		off = 0;
	}
	sq_rec *r = sq_at(q, off);
	r->kind = kind;
	r->len = (uint32_t) len;
	r->seq = seq;
	r->bytes = bytes;
	r->ts = ts;
	r->pad = 0;
	*posp = pos;
	return r;
}

static void
sq_copy(void *dst, const void *src, size_t len, int hook)
{
	if (len == 0) {
		return;
	}
	if (__builtin_expect(qpi_shmq_test_hook != NULL, 0) && len > 1) {
		memcpy(dst, src, len / 2);
		qpi_shmq_test_hook(hook);
		memcpy((uint8_t *) dst + len / 2,
		    (const uint8_t *) src + len / 2, len - len / 2);
		return;
	}
	memcpy(dst, src, len);
}

/* Takes side s's lock for a call that a stopped handle must not make. */
static int
sq_lock_open(qpi_shmq *q, sq_side *s)
{
	return sq_stopped(q) ? qpi_sq_stop_err(q, false) : qpi_sq_lock(q, s);
}

/* ---- consumer side helpers (consumer lock held) ---- */

/* Commits a head moved over pads. */
static void
sq_skip_commit(qpi_shmq *q, uint64_t head0, uint64_t head)
{
	sq_tx t;

	if (head != head0) {
		tx_begin(&t, q);
		tx_set(&t, &q->h->gp.head, head);
		tx_commit(&t);
	}
}

/* Blocks taken for a lease, not yet committed: k freed blocks linked
 * from first, then never used ones from water + 1 on. */
typedef struct sq_take {
	uint64_t first; /* first block + 1; 0: no block */
	uint64_t k;
	uint64_t water;
} sq_take;

/* Reserves memory for bytes [*markp, want) of the part of the segment
 * at off (unit bytes per unit of the mark, lim units in all): a step of
 * at least SQ_BACK_STEP bytes, else just what is wanted. The mark moves
 * only once the memory is there. */
static int
sq_back(qpi_shmq *q, uint64_t *markp, uint64_t want, uint64_t off,
    uint64_t unit, uint64_t lim, const char *what)
{
	uint64_t mark = LD(markp);
	uint64_t step = SQ_BACK_STEP / unit;
	uint64_t to = want - mark < step ? mark + step : want;
	int e;

	if (want <= mark) {
		return QP_OK; /* moved meanwhile (the lease area's) */
	}
	if (to > lim) {
		to = lim;
	}
	e = qpi_shm_reserve(&q->shm, off + mark * unit, (to - mark) * unit);
	if (e == ENOSPC && to > want) {
		to = want;
		e = qpi_shm_reserve(
		    &q->shm, off + mark * unit, (to - mark) * unit);
	}
	if (e == ENOSPC) {
		return qpi_err(QP_ENOSPC,
		    "no space left in %s for queue %s (%" PRIu64
		    " more bytes of its %s): free space there, or make it "
		    "larger",
		    qpi_shm_dir(), q->label, (to - mark) * unit, what);
	}
	if (e != 0) {
		return qpi_err(e == ENOMEM ? QP_ENOMEM : QP_ESYSTEM,
		    "cannot reserve %" PRIu64 " bytes of %s's %s: %s",
		    (to - mark) * unit, q->label, what, strerror(e));
	}
	/* Only grows; [0, mark) has memory whoever moved it (the lease
	 * area's mark moves under either lock, see sq_back_lease). */
	while (mark < to
	    && !__atomic_compare_exchange_n(
	        markp, &mark, to, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
	}
	return QP_OK;
}

/* Blocks [0, n) of the lease area get memory (consumer lock held). */
static int
sq_back_blocks(qpi_shmq *q, uint64_t n)
{
	return sq_back(q, &q->h->gv.bbacked, n, q->h->blocks_off, SQ_BLOCK,
	    q->nblocks, "lease area");
}

/* Producer lock held, before a put of an item of len bytes writes
 * anything: the lease area must have memory for that item, so that
 * whatever the ring holds can be leased (qpiped's gets), one item at a
 * time at least, however full the file system gets. One compare once
 * the lease area has room for the largest item seen. */
static inline int
sq_back_lease(qpi_shmq *q, uint64_t len)
{
	uint64_t nb = (len + SQ_BLOCK - 1) / SQ_BLOCK;

	if (nb > q->nblocks) {
		nb = q->nblocks;
	}
	if (__builtin_expect(nb <= q->bb_seen, 1)) {
		return QP_OK;
	}
	/* A mark only grows: a copy of it seen once stays true. */
	q->bb_seen = LD(&q->h->gv.bbacked);
	if (nb <= q->bb_seen) {
		return QP_OK;
	}
	return sq_back_blocks(q, nb);
}

/* Copies len bytes into the blocks of tk (before the commit). */
static void
sq_blocks_fill(
    qpi_shmq *q, const sq_take *tk, const uint8_t *src, uint64_t len)
{
	uint64_t b = tk->first;

	for (uint64_t i = 0; len > 0; i++) {
		uint64_t n = len < SQ_BLOCK ? len : SQ_BLOCK;
		memcpy(q->blocks + (b - 1) * SQ_BLOCK, src, n);
		src += n;
		len -= n;
		b = i + 1 < tk->k    ? q->links[b - 1]
		    : i + 1 == tk->k ? tk->water + 1
		                     : b + 1;
	}
}

int
qpi_sq_slot_free(qpi_shmq *q, sq_tx *t, uint32_t i, sq_lists *l)
{
	sq_slot *s = &q->slots[i];
	uint64_t b = s->first, last = 0;

	for (uint64_t k = 0; k < s->nblocks; k++) {
		if (b == 0 || b > q->nblocks) {
			return qpi_sq_fault(
			    q, "bad lease block chain", s->first);
		}
		last = b;
		b = q->links[b - 1];
	}
	if (last != 0) {
		tx_set32(t, &q->links[last - 1], (uint32_t) l->bfree);
		l->bfree = s->first;
		l->nbfree += s->nblocks;
	}
	tx_set(t, &s->state, L_FREE);
	tx_set(t, &s->next, l->ffree);
	l->ffree = i + 1;
	return QP_OK;
}

/* Copies len bytes out of a committed block chain. */
static void
sq_blocks_read(qpi_shmq *q, uint64_t first, uint8_t *dst, uint64_t len)
{
	for (uint64_t b = first; len > 0 && b != 0 && b <= q->nblocks;
	     b = q->links[b - 1]) {
		uint64_t n = len < SQ_BLOCK ? len : SQ_BLOCK;
		memcpy(dst, q->blocks + (b - 1) * SQ_BLOCK, n);
		dst += n;
		len -= n;
	}
}

/* ---- creation and attach ---- */

static uint64_t
sq_round(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

/* The header of a new segment as cfg asks for it (g zeroed before):
 * where everything goes, and the sizes. */
static int
sq_layout(const qpi_shmq_cfg *cfg, sq_hdr *g)
{
	uint64_t cap
	    = cfg && cfg->capacity ? cfg->capacity : QPI_SHMQ_DEF_CAPACITY;
	uint32_t ns
	    = cfg && cfg->lease_slots ? cfg->lease_slots : QPI_SHMQ_DEF_LEASES;
	uint64_t lb = cfg && cfg->lease_bytes ? cfg->lease_bytes : cap;

	if (cap < QPI_SHMQ_MIN_CAPACITY || cap > QPI_SHMQ_MAX_CAPACITY) {
		return qpi_err(QP_EINVAL,
		    "capacity %" PRIu64
		    " is out of range (%llu to %llu bytes)",
		    cap, (unsigned long long) QPI_SHMQ_MIN_CAPACITY,
		    (unsigned long long) QPI_SHMQ_MAX_CAPACITY);
	}
	if (ns > QPI_SHMQ_MAX_LEASES) {
		return qpi_err(QP_EINVAL,
		    "%u lease slots is over the limit of %u", ns,
		    QPI_SHMQ_MAX_LEASES);
	}
	if (lb > QPI_SHMQ_MAX_CAPACITY) {
		return qpi_err(QP_EINVAL,
		    "lease area of %" PRIu64 " bytes is over the limit", lb);
	}
	g->version = SQ_VERSION;
	g->hdr_size = sizeof(sq_hdr);
	g->cap = sq_round(cap, 4096);
	g->nslots = ns;
	g->nblocks = sq_round(lb, SQ_BLOCK) / SQ_BLOCK;
	g->slots_off = sq_round(sizeof(sq_hdr), 128);
	g->links_off
	    = sq_round(g->slots_off + (uint64_t) ns * sizeof(sq_slot), 128);
	g->tags_off = sq_round(g->links_off + g->nblocks * 4, 128);
	g->blocks_off = sq_round(
	    g->tags_off + (uint64_t) SQ_TAGS * sizeof(sq_tag), 4096);
	g->ring_off = sq_round(g->blocks_off + g->nblocks * SQ_BLOCK, 4096);
	g->seg_size = g->ring_off + g->cap;
	g->max_msg = cfg && cfg->max_message ? cfg->max_message
	                                     : QP_DEFAULT_MAX_MESSAGE;
	if (g->max_msg > QPI_SHMQ_MAX_ITEM) {
		g->max_msg = QPI_SHMQ_MAX_ITEM;
	}
	g->maxsize = cfg ? cfg->maxsize : 0;
	g->mx.version = SQ_MX_VERSION;
	return QP_OK;
}

/* Makes the segment at base a queue of header g (sq_layout's). */
static int
sq_init(void *base, const sq_hdr *g, bool sparse)
{
	sq_hdr *h = base;
	sq_slot *slots
	    = (sq_slot *) (void *) ((uint8_t *) base + g->slots_off);
	pthread_mutexattr_t ma;
	uint64_t salt = 0;

	if (getrandom(&salt, sizeof(salt), GRND_NONBLOCK) != sizeof(salt)) {
		salt = (uint64_t) qpi_now_ns() ^ ((uint64_t) getpid() << 32);
	}
	*h = *g; /* magic 0: not a queue yet */
	/* Top bit set: no stamp is ever 0, so zeroed memory is never a
	 * committed record. */
	h->salt = salt | 1ull << 63;
	h->created_ms = sq_coarse_ms();
	if (pthread_mutexattr_init(&ma) != 0) {
		return qpi_err(QP_ESYSTEM, "cannot make mutex attributes");
	}
	if (pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED) != 0
	    || pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST) != 0
	    || pthread_mutex_init(&h->ps.lock, &ma) != 0
	    || pthread_mutex_init(&h->gs.lock, &ma) != 0) {
		pthread_mutexattr_destroy(&ma);
		return qpi_err(
		    QP_ESYSTEM, "cannot make robust process-shared mutexes");
	}
	pthread_mutexattr_destroy(&ma);
	for (uint32_t i = 0; i < g->nslots; i++) {
		slots[i].next = i + 1 < g->nslots ? i + 2 : 0;
	}
	h->gv.free_first = 1;
	/* What of a sparse segment has memory (see sq_create). */
	h->pp.backed
	    = sparse && g->cap > SQ_BACK_FIRST ? SQ_BACK_FIRST : g->cap;
	h->gv.bbacked = sparse ? 0 : g->nblocks;
	/* The magic goes last: a segment with it is complete. */
	STR(&h->magic, SQ_MAGIC);
	return QP_OK;
}

static int
sq_attach(qpi_shmq **qp, qpi_shm *shm, const char *name)
{
	sq_hdr *h = shm->base;
	char label[QP_NAME_MAX + 16];
	qpi_shmq *q;

	snprintf(label, sizeof(label), "%s%s",
	    name != NULL ? "shm://" : "anonymous queue",
	    name != NULL ? name : "");
	if (shm->size < sizeof(uint64_t) * 2 || LDA(&h->magic) != SQ_MAGIC) {
		return qpi_err(QP_ECORRUPT, "%s is not a qpipe queue", label);
	}
	if (h->version != SQ_VERSION) {
		return qpi_err(QP_EVERSION,
		    "%s has layout version %u; this library reads version %u",
		    label, h->version, SQ_VERSION);
	}
	if (shm->size < sizeof(sq_hdr) || h->hdr_size != sizeof(sq_hdr)
	    || h->seg_size != shm->size || h->cap < QPI_SHMQ_MIN_CAPACITY
	    || h->cap % 4096 != 0 || h->nslots == 0
	    || h->nslots > QPI_SHMQ_MAX_LEASES || h->slots_off < sizeof(sq_hdr)
	    || h->slots_off + (uint64_t) h->nslots * sizeof(sq_slot)
	        > h->links_off
	    || h->nblocks > UINT32_MAX - 1
	    || h->links_off + h->nblocks * 4 > h->tags_off
	    || h->tags_off % 8 != 0
	    || h->tags_off + (uint64_t) SQ_TAGS * sizeof(sq_tag)
	        > h->blocks_off
	    || h->blocks_off + h->nblocks * SQ_BLOCK > h->ring_off
	    || h->ring_off + h->cap != h->seg_size || h->max_msg == 0
	    || h->max_msg > QPI_SHMQ_MAX_ITEM) {
		return qpi_err(QP_ECORRUPT, "%s has a corrupt header", label);
	}
	q = calloc(1, sizeof(*q));
	if (q == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	q->h = h;
	q->base = shm->base;
	q->ring = q->base + h->ring_off;
	q->slots = (sq_slot *) (void *) (q->base + h->slots_off);
	q->links = (uint32_t *) (void *) (q->base + h->links_off);
	q->tags = (sq_tag *) (void *) (q->base + h->tags_off);
	q->blocks = q->base + h->blocks_off;
	q->nblocks = h->nblocks;
	q->cap = h->cap;
	q->cmask = (h->cap & (h->cap - 1)) == 0 ? h->cap - 1 : 0;
	q->max_msg = h->max_msg;
	q->maxsize = h->maxsize;
	q->salt = h->salt;
	q->created_ms = h->created_ms;
	q->nslots = h->nslots;
	q->watch_slot = -1;
	q->mx = &h->mx;
	q->shm = *shm;
	memcpy(q->label, label, sizeof(label));
	qpi_sq_kind_init();
	qpi_shm_guard(&q->shm, &q->closed, &q->fault_off);
	*qp = q;
	return QP_OK;
}

static int
sq_open_existing(qpi_shmq **qp, const char *name, unsigned flags)
{
	qpi_shm shm;
	int rc = qpi_shm_open(name, (flags & QP_OPEN_ANY_OWNER) != 0, &shm);
	int bad = 0;
	uint64_t off = 0;

	if (rc != QP_OK) {
		return rc;
	}
	/* Guarded from the first look on (sq_attach hands the guard to
	 * the attachment): a file cut short meanwhile reads as zeros,
	 * which fail the header's checks. */
	qpi_shm_guard(&shm, &bad, &off);
	if ((rc = sq_attach(qp, &shm, name)) != QP_OK) {
		qpi_shm_unmap(&shm);
	} else if (LD(&bad) != 0) {
		(*qp)->fault_off = off;
		STR(&(*qp)->closed, SQ_BAD);
	}
	return rc;
}

/* A new queue: named (built under a temporary name, then linked into
 * place) or anonymous (name NULL). */
static int
sq_create(qpi_shmq **qp, const char *name, const qpi_shmq_cfg *cfg)
{
	static uint32_t counter;
	sq_hdr g = {.magic = 0};
	char tmp[64];
	qpi_shm shm;
	int rc;

	if ((rc = sq_layout(cfg, &g)) != QP_OK) {
		return rc;
	}
	/* '#' is not allowed in queue names: no clash with a real queue. */
	snprintf(tmp, sizeof(tmp), "#new.%d.%u", (int) getpid(),
	    __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
	rc = name == NULL ? qpi_shm_anon(g.seg_size, &shm)
	                  : qpi_shm_create(tmp, g.seg_size, &shm);
	if (rc != QP_OK) {
		return rc;
	}
	/* Memory for the header, the lease table and the first stretch of
	 * the ring now; the rest of the ring and the lease area as they are
	 * used: a full file system is an error, never SIGBUS (nothing to
	 * reserve in anonymous memory: see futex.c). */
	uint64_t first = g.cap > SQ_BACK_FIRST ? SQ_BACK_FIRST : g.cap;
	int e = qpi_shm_reserve(&shm, 0, g.blocks_off);
	if (e != 0 || (e = qpi_shm_reserve(&shm, g.ring_off, first)) != 0) {
		qpi_shm_unmap(&shm);
		qpi_shm_unlink(tmp);
		return qpi_err(e == ENOSPC ? QP_ENOSPC : QP_ESYSTEM,
		    "%s in %s for queue shm://%s (%" PRIu64
		    " bytes for its header and the start of its ring)",
		    e == ENOSPC ? "no space left" : strerror(e), qpi_shm_dir(),
		    name, g.blocks_off + first);
	}
	rc = sq_init(shm.base, &g, name != NULL);
	if (rc == QP_OK && name != NULL) {
		rc = qpi_shm_link(tmp, name);
	}
	if (name != NULL) {
		qpi_shm_unlink(tmp);
	}
	if (rc == QP_OK) {
		rc = sq_attach(qp, &shm, name);
	}
	if (rc != QP_OK) {
		qpi_shm_unmap(&shm);
	}
	return rc;
}

int
qpi_shmq_open(
    qpi_shmq **qp, const char *name, unsigned flags, const qpi_shmq_cfg *cfg)
{
	int rc;

	if (!(flags & QP_OPEN_CREATE)) {
		return sq_open_existing(qp, name, flags);
	}
	if (flags & QP_OPEN_EXCL) {
		return sq_create(qp, name, cfg);
	}
	/* Open, else create; a racing creator wins the link and we open
	 * what it made. Bounded: each round sees the name appear or vanish. */
	for (int i = 0; i < 16; i++) {
		rc = sq_open_existing(qp, name, flags);
		if (rc != QP_ENOENT) {
			return rc;
		}
		rc = sq_create(qp, name, cfg);
		if (rc != QP_EEXIST) {
			return rc;
		}
	}
	return qpi_err(
	    QP_EBUSY, "shm://%s keeps appearing and vanishing", name);
}

int
qpi_shmq_anon(qpi_shmq **qp, const qpi_shmq_cfg *cfg)
{
	return sq_create(qp, NULL, cfg);
}

/* Wakes the sleepers and watchers of every event of h that process pid
 * (0: any) has, and every sleeper on the events' seq words. */
static void
sq_wake_all(sq_hdr *h, int32_t pid)
{
	for (int e = 0; e < SQ_EV_N; e++) {
		sq_ev *ev = &h->ev[e];
		for (int i = 0; i < SQ_EV_SLOTS; i++) {
			int32_t p = LD(&ev->who[i].pid);
			if (p != 0 && (pid == 0 || p == pid)) {
				qpi_futex_wake_or(
				    &ev->who[i].word, W_WOKEN, INT32_MAX);
			}
		}
		__atomic_fetch_add(&ev->seq, 1, __ATOMIC_SEQ_CST);
		qpi_futex_wake(&ev->seq, INT32_MAX);
	}
}

void
qpi_shmq_interrupt(qpi_shmq *q)
{
	if (q == NULL) {
		return;
	}
	STR(&q->closed, 1);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	/* Wake this process's sleepers (they see the flag and leave); other
	 * processes' sleepers on seq wake up, re-check and sleep again. */
	sq_wake_all(q->h, qpi_sq_me(NULL));
}

void
qpi_shmq_free(qpi_shmq *q)
{
	if (q == NULL) {
		return;
	}
	qpi_shmq_watch(q, false);
	qpi_shm_unmap(&q->shm);
	free(q);
}

/* Marks the segment in shm removed and wakes every sleeper and watcher
 * on it: they look, see the mark and leave (see sq_closed). */
static void
sq_mark_removed(qpi_shm *shm)
{
	sq_hdr *h = shm->base;

	if (shm->size < sizeof(sq_hdr) || LDA(&h->magic) != SQ_MAGIC
	    || h->version != SQ_VERSION) {
		return;
	}
	__atomic_fetch_or(&h->corrupt, SQ_REMOVED, __ATOMIC_SEQ_CST);
	sq_wake_all(h, 0);
}

int
qpi_shmq_unlink(const char *name)
{
	qpi_shm shm;
	int bad = 0, rc;
	uint64_t off = 0;

	/* The name goes first, then the mark: a queue made anew under the
	 * name meanwhile is not the one marked. A segment that cannot be
	 * opened (another owner's, damaged) is only unlinked. */
	rc = qpi_shm_open(name, true, &shm);
	if (rc == QP_OK) {
		qpi_shm_guard(&shm, &bad, &off);
	}
	int urc = qpi_shm_unlink(name);
	if (rc == QP_OK) {
		if (urc == QP_OK) {
			sq_mark_removed(&shm);
		}
		qpi_shm_unmap(&shm);
	}
	return urc;
}

bool
qpi_shmq_removed(const qpi_shmq *q)
{
	return (LD(&q->h->corrupt) & SQ_REMOVED) != 0;
}

/* ---- put ---- */

static void
sq_snap_take(qpi_shmq *q, sq_snap *s)
{
	s->head = LDA(&q->h->gp.head);
	s->nget = LDA(&q->h->gp.nget);
	s->nrel = LDA(&q->h->gp.nreleased);
}

bool
qpi_sq_pred_progress(qpi_shmq *q, const void *arg)
{
	const sq_snap *s = arg;

	return LD(&q->h->gp.head) != s->head || LD(&q->h->gp.nget) != s->nget
	    || LD(&q->h->gp.nreleased) != s->nrel;
}

/* Producer lock held, the ring looks empty, yet no room for a record of
 * size bytes: it does not fit before the ring's end. Moves the tail (over
 * a pad) and the head to the start of the next lap; the pad lets
 * consumers step over the gap should we die between the two. */
static int
sq_make_room(qpi_shmq *q, uint64_t size)
{
	sq_hdr *h = q->h;
	uint64_t tail = h->pp.tail, rem = q->cap - sq_off(q, tail);
	uint64_t head, s, e;
	sq_rec *r;
	int rc;

	if ((rc = qpi_sq_lock(q, &h->gs)) != QP_OK) {
		return rc;
	}
	head = h->gp.head;
	if ((rc = sq_walk(q, &head, &r, &s, &e)) != QP_OK) {
		goto out;
	}
	sq_skip_commit(q, h->gp.head, head);
	if (head == tail && rem < size) {
		sq_pad(q, tail, rem);
		tail += rem;
		STR(&h->pp.tail, tail);
	}
	/* An empty ring, or only the short gap at the ring's end left. */
	if (head != tail
	    && (tail - head < SQ_REC_HDR && sq_off(q, tail) == 0)) {
		head = tail;
	}
	if (head == tail) {
		sq_skip_commit(q, h->gp.head, tail);
	}
out:
	ST(&h->ps.hint, h->gp.head);
	sq_unlock(&h->gs);
	return rc;
}

/* Ring bytes that the batch takes from tail on: its records, and the
 * pad before any of them that would not fit before the ring's end. */
static inline uint64_t
sq_batch_need(
    const qpi_shmq *q, uint64_t tail, const qpi_shmq_item *items, size_t n)
{
	uint64_t pos = tail;

	for (size_t i = 0; i < n; i++) {
		pos += sq_need(q, pos, QPI_SHMQ_REC_SIZE(items[i].len));
	}
	return pos - tail;
}

/* Producer lock held, room checked: the records about to be written
 * from tail on (need bytes, pads included) must land on memory, and so must
 * the header of the record after them (a get peeks there). The fast path is
 * one compare. If the file system has no room for more, the ring makes do with
 * the part it has: when the records fit there from the start of the next lap,
 * and the ring has room for a pad up to its end, a pad ends this lap (only its
 * header is written) and the tail moves on to the next; the caller re-reads
 * the tail. Else QP_ENOSPC, nothing written. */
static int __attribute__((noinline)) sq_back_ring_slow(qpi_shmq *q,
    uint64_t tail, uint64_t need, const qpi_shmq_item *items, size_t n)
{
	sq_hdr *h = q->h;
	uint64_t off = sq_off(q, tail), rem = q->cap - off;
	uint64_t want = off + need + SQ_REC_HDR, need0;
	int rc;

	if (want > q->cap) {
		want = q->cap;
	}
	if (want <= LD(&h->pp.backed)) {
		return QP_OK;
	}
	rc = sq_back(q, &h->pp.backed, want, h->ring_off, 1, q->cap, "ring");
	need0 = sq_batch_need(q, tail + rem, items, n); /* from the next lap */
	if (rc != QP_ENOSPC || off + need > q->cap || rem < SQ_REC_HDR
	    || need0 + SQ_REC_HDR > LD(&h->pp.backed)) {
		return rc;
	}
	/* The hint must stay within a ring's length of the tail. */
	uint64_t head = LDA(&h->gp.head);
	ST(&h->ps.hint, head);
	if (rem + need0 > q->cap - (tail - head)) {
		return rc;
	}
	sq_pad(q, tail, rem);
	STR(&h->pp.tail, tail + rem);
	return QP_OK;
}

static inline int
sq_back_ring(qpi_shmq *q, uint64_t tail, uint64_t need,
    const qpi_shmq_item *items, size_t n)
{
	if (__builtin_expect(
	        sq_off(q, tail) + need + SQ_REC_HDR <= LD(&q->h->pp.backed),
	        1)) {
		return QP_OK;
	}
	return sq_back_ring_slow(q, tail, need, items, n);
}

/* Notes a tagged put of count items, the first of ordinal first, under
 * the producer lock before its first commit: the newest tag is the one
 * sq_tag_repair settles if the put dies. A tag cut short by a kill is
 * left with state 0 and counts for nothing. */
static void __attribute__((noinline)) sq_tag_write(
    qpi_shmq *q, const qpi_shmq_tag *tag, uint64_t first, size_t count)
{
	sq_hdr *h = q->h;
	uint64_t i = h->pp.tags_next;
	sq_tag *t = &q->tags[i % SQ_TAGS];

	ST(&h->pp.tags_next, i + 1);
	ST(&t->state, 0);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	memcpy(t->client, tag->client, sizeof(t->client));
	t->seq = tag->seq;
	t->first = first;
	t->base = tag->base;
	t->n = tag->n;
	t->done = (uint32_t) (tag->base + count);
	STR(&t->state, 1);
}

int
qpi_shmq_tags(qpi_shmq *q, qpi_shmq_tag *v, size_t cap, size_t *np)
{
	sq_hdr *h = q->h;
	uint64_t next, i;
	size_t n = 0;
	int rc;

	*np = 0;
	if ((rc = sq_lock_open(q, &h->ps)) != QP_OK) {
		return rc;
	}
	next = h->pp.tags_next;
	/* The newest min(cap, SQ_TAGS) of them, oldest first. */
	i = next > SQ_TAGS ? next - SQ_TAGS : 0;
	if (next - i > cap) {
		i = next - cap;
	}
	for (; i < next && n < cap; i++) {
		const sq_tag *t = &q->tags[i % SQ_TAGS];
		if (LD(&t->state) != 1 || t->done > t->n || t->n == 0) {
			continue;
		}
		v[n] = (qpi_shmq_tag) {.seq = t->seq,
		    .base = t->base,
		    .n = t->n,
		    .done = t->done};
		memcpy(v[n++].client, t->client, sizeof(t->client));
	}
	sq_unlock(&h->ps);
	*np = n;
	return QP_OK;
}

/* One try at a put of n items (one for the single puts), inlined into
 * each caller so that a single put is specialised for n = 1. */
static inline __attribute__((always_inline)) int
sq_try_put(qpi_shmq *q, const qpi_shmq_item *items, size_t n,
    const qpi_shmq_tag *tag, sq_snap *snap)
{
	sq_hdr *h = q->h;
	uint64_t tail, need, big = 0;
	uint32_t ts;
	int rc;

	if ((rc = qpi_sq_lock(q, &h->ps)) != QP_OK) {
		return rc;
	}
	SQ_HOOK(QPI_HOOK_PUT_LOCKED);
	if (q->maxsize != 0) {
		sq_snap_take(q, snap);
		if (h->pp.nput - snap->nget + snap->nrel + n > q->maxsize) {
			sq_unlock(&h->ps);
			return qpi_err(QP_EFULL,
			    "%s is full (maxsize %" PRIu64 " items)", q->label,
			    q->maxsize);
		}
	}
	for (int round = 0;; round++) {
		tail = h->pp.tail;
		need = sq_batch_need(q, tail, items, n);
		if (need <= q->cap - (tail - h->ps.hint)) {
			break;
		}
		sq_snap_take(q, snap);
		ST(&h->ps.hint, snap->head);
		if (need <= q->cap - (tail - snap->head)) {
			break;
		}
		if (round == 0 && tail - snap->head < SQ_REC_HDR + need) {
			/* Empty but for pads? Maybe too little room before
			 * the ring's end: start the next lap. */
			if ((rc = sq_make_room(q, need)) != QP_OK) {
				sq_unlock(&h->ps);
				return rc;
			}
			continue;
		}
		sq_unlock(&h->ps);
		return qpi_err(QP_EFULL,
		    "%s is full (no room for %zu items, %" PRIu64 " bytes)",
		    q->label, n, need);
	}
	for (size_t i = 0; i < n; i++) {
		big = items[i].len > big ? items[i].len : big;
	}
	if ((rc = sq_back_lease(q, big)) != QP_OK
	    || (rc = sq_back_ring(q, tail, need, items, n)) != QP_OK) {
		sq_unlock(&h->ps);
		return rc;
	}
	if (tag != NULL) {
		sq_tag_write(q, tag, h->pp.nput + 1, n);
	}
	ts = sq_ts(q);
	for (size_t i = 0; i < n; i++) {
		uint64_t nput = h->pp.nput, pos;
		uint64_t size = QPI_SHMQ_REC_SIZE(items[i].len);
		uint64_t bytes = h->pp.bytes_in + items[i].len;
		sq_rec *r = sq_rec_begin(q, h->pp.tail, items[i].kind,
		    items[i].len, nput + 1, bytes, ts, &pos);
		sq_copy(r + 1, items[i].buf, items[i].len, QPI_HOOK_PUT_COPY);
		if (i == 0) {
			/* Before the first commit: see sq_settle. */
			sq_wake(q, EV_NE, n > 1);
		}
		STR(&r->stamp, sq_stamp(q, pos)); /* the commit */
		SQ_HOOK(QPI_HOOK_PUT_COMMIT);
		ST(&h->pp.bytes_in, bytes);
		STR(&h->pp.nput,
		    nput + 1); /* after the stamp: see sq_gm_ring */
		STR(&h->pp.tail, pos + size);
	}
	SQ_HOOK(QPI_HOOK_DONE);
	sq_unlock_bump(q, &h->ps, true);
	return sq_after(q);
}

int
qpi_sq_try_put(qpi_shmq *q, const qpi_shmq_item *items, size_t n,
    const qpi_shmq_tag *tag, sq_snap *snap)
{
	return sq_try_put(q, items, n, tag, snap);
}

static inline __attribute__((always_inline)) int
sq_put(qpi_shmq *q, const qpi_shmq_item *items, size_t n,
    const qpi_shmq_tag *tag, int64_t deadline)
{
	uint64_t total = 0;
	bool spun = false;
	sq_snap snap;
	int rc;

	if (sq_closed(q)) {
		return qpi_sq_stop_err(q, false);
	}
	for (size_t i = 0; i < n; i++) {
		if (items[i].len > q->max_msg) {
			return qpi_err(QP_ETOOBIG,
			    "an item of %zu bytes is over %s's limit of "
			    "%" PRIu64 " bytes",
			    items[i].len, q->label, q->max_msg);
		}
		total += QPI_SHMQ_REC_SIZE(items[i].len);
	}
	if (total > q->cap || (q->maxsize != 0 && n > q->maxsize)) {
		return qpi_err(QP_ETOOBIG,
		    "%zu items (%" PRIu64 " bytes stored) can never fit in %s "
		    "(maxsize %" PRIu64 ", %" PRIu64 "-byte ring)",
		    n, total, q->label, q->maxsize, q->cap);
	}
	for (;;) {
		rc = n == 0 ? QP_OK : sq_try_put(q, items, n, tag, &snap);
		if (rc != QP_EFULL) {
			return spun && rc == QP_ENOENT && sq_removed(q)
			    ? qpi_sq_stop_err(q, true)
			    : rc;
		}
		rc = qpi_sq_wait(
		    q, EV_NF, qpi_sq_pred_progress, &snap, deadline, &spun);
		if (rc == QP_ECLOSED) {
			return rc;
		}
		if (rc == QP_ETIMEDOUT) {
			return sq_try_put(q, items, n, tag, &snap);
		}
	}
}

int
qpi_shmq_put(
    qpi_shmq *q, const void *buf, size_t len, unsigned kind, int64_t deadline)
{
	return qpi_shmq_put_tagged(q, buf, len, kind, NULL, deadline);
}

int
qpi_shmq_put_tagged(qpi_shmq *q, const void *buf, size_t len, unsigned kind,
    const qpi_shmq_tag *tag, int64_t deadline)
{
	qpi_shmq_item it = {buf, len, kind};

	return sq_put(q, &it, 1, tag, deadline);
}

int
qpi_shmq_put_many(
    qpi_shmq *q, const qpi_shmq_item *items, size_t n, int64_t deadline)
{
	return sq_put(q, items, n, NULL, deadline);
}

int
qpi_shmq_put_many_tagged(qpi_shmq *q, const qpi_shmq_item *items, size_t n,
    const qpi_shmq_tag *tag, int64_t deadline)
{
	return sq_put(q, items, n, tag, deadline);
}

/* ---- get ----
 *
 * Every get is a batch: up to max items (one for qpi_shmq_get and the
 * single lease gets) under one hold of the consumer lock, with one clock
 * read (lease expiries), one wake-up of the putters per commit and one
 * watch bump. Released items come first, each with a commit of its own
 * (they are rare). Plain takes from the ring commit each item with one
 * store, the head's (the counts go first, copied from the record: the
 * consumer repair un-counts an item still at the head), so a batch killed
 * midway took the items before its last head store and left the others.
 * Lease takes go through the journal, many per commit: the header words
 * (head, counts, the lists' heads) are set once per commit, each new
 * lease's slot state is one entry, and the rest of the lease is written
 * straight into slots and blocks that are free until the commit (nothing
 * reads a free slot but its state and its free-list link, which stays as
 * it is: a leased slot's link is never read; nothing reads a free block
 * but its link, and the one link that changes is journaled). A journal
 * holds SQ_JMAX entries, so a long batch commits every SQ_GM_PER_TX
 * leases, each commit as crash-safe as a single lease's. */

/* Header words a lease batch sets at each commit, plus one block link. */
#define SQ_GM_FIXED  9
#define SQ_GM_PER_TX (SQ_JMAX - SQ_GM_FIXED)

typedef struct sq_batch {
	unsigned flags;
	bool lease;
	bool full; /* an item did not join: the batch ends */
	bool fixed; /* buf is the caller's (cap bytes): it never grows */
	uint64_t owner;
	int64_t lease_ms;
	int64_t exp; /* the batch's lease expiry (one clock read) */
	size_t max; /* items, > 0 */
	size_t max_first; /* the first item over this: QP_ETOOBIG (0: any) */
	size_t max_bytes; /* the others: while the batch stays within */
	uint8_t *buf; /* the items, but with QPI_GET_EACH */
	size_t used, cap;
	qpi_shmq_got *got;
	size_t n;
	size_t first_len; /* QP_ETOOBIG: the first item's size */
	size_t hl; /* the next item's msgpack header (sq_gm_dst) */
} sq_batch;

/* True when a get may find something (a hint, taken without the lock). */
static bool
sq_pred_items(qpi_shmq *q, const void *arg)
{
	sq_hdr *h = q->h;
	uint64_t pos = LDA(&h->gp.head), off = sq_off(q, pos);
	(void) arg;

	if (LD(&h->gp.nreleased) != 0) {
		return true;
	}
	if (q->cap - off < SQ_REC_HDR) {
		pos += q->cap - off;
		off = 0;
	}
	return LDA(&sq_at(q, off)->stamp) == sq_stamp(q, pos);
}

/* Makes room for len more bytes in the batch's own buffer. */
static int
sq_gm_room(sq_batch *b, size_t len)
{
	size_t cap = b->cap;
	uint8_t *p;

	if (b->used + len <= b->cap) {
		return QP_OK;
	}
	if (cap == 0) {
		/* Sized for max items like the first (they often are alike),
		 * within max_bytes and 1 MiB. */
		cap = b->max <= (1u << 20) / (len > 0 ? len : 1) ? len * b->max
		                                                 : 1u << 20;
		if (b->max_bytes != 0 && cap > b->max_bytes) {
			cap = b->max_bytes;
		}
		cap = cap < 4096 ? 4096 : cap;
	}
	while (cap < b->used + len) {
		cap *= 2;
	}
	if ((p = realloc(b->buf, cap)) == NULL) {
		return qpi_err(QP_ENOMEM,
		    "cannot allocate %zu bytes for a batch; its items stay in "
		    "the queue",
		    cap);
	}
	b->buf = p;
	b->cap = cap;
	return QP_OK;
}

/* Where the batch's next item goes, its kind and length as stored (a
 * bin gets its msgpack header with QPI_GET_OBJ: *hlp bytes of hdr). Sets
 * its got entry. NULL when it does not join: *rcp is QP_OK (the batch is
 * full: the item stays, and so do those after it), else the first item's
 * error, QP_ETOOBIG or QP_ENOMEM (it stays in the queue). */
static uint8_t *
sq_gm_dst(sq_batch *b, uint32_t kind, uint64_t len, uint8_t hdr[5], int *rcp)
{
	qpi_shmq_got *gt = &b->got[b->n];
	size_t hl = (b->flags & QPI_GET_OBJ) && kind == K_BIN
	    ? qpi_wire_bin_header(len, hdr)
	    : 0;
	size_t size = hl + len;
	bool first = b->n == 0;

	*rcp = QP_OK;
	if ((b->fixed && b->used + size > b->cap)
	    || (first && b->max_first != 0 && size > b->max_first)
	    || (!first && b->max_bytes != 0
	        && b->used + size > b->max_bytes)) {
		b->full = true;
		if (first) {
			b->first_len = size;
			*rcp = qpi_err(QP_ETOOBIG,
			    "item of %zu bytes is over the %zu asked for; it "
			    "stays in the queue",
			    size, b->fixed ? b->cap : b->max_first);
		}
		return NULL;
	}
	*gt = (qpi_shmq_got) {.off = b->used, .len = size};
	b->hl = hl;
	if (b->flags & QPI_GET_EACH) {
		gt->own = malloc(size > 0 ? size : 1);
		if (gt->own == NULL) {
			b->full = true;
			*rcp = qpi_err(QP_ENOMEM,
			    "cannot allocate %zu bytes for an item; it stays "
			    "in the queue",
			    size);
		}
		return gt->own;
	}
	if (!b->fixed && (*rcp = sq_gm_room(b, size)) != QP_OK) {
		b->full = true;
		return NULL;
	}
	return b->buf + b->used;
}

/* The item whose got entry sq_gm_dst set joins the batch (its bytes are
 * at dst: the header, then len bytes from src or from a lease's blocks). */
static void
sq_gm_join(qpi_shmq *q, sq_batch *b, uint8_t *dst, const uint8_t *hdr,
    const void *src, uint64_t first, uint64_t len)
{
	qpi_shmq_got *gt = &b->got[b->n];

	memcpy(dst, hdr, b->hl);
	if (src != NULL) {
		sq_copy(dst + b->hl, src, len, QPI_HOOK_GET_COPY);
	} else {
		sq_blocks_read(q, first, dst + b->hl, len);
	}
	b->used += gt->len;
	b->n++;
}

/* An item that joined is given back (its lease could not be made). */
static void
sq_gm_unjoin(sq_batch *b, int *rcp)
{
	free(b->got[b->n].own);
	b->full = true;
	if (b->n > 0) {
		*rcp = QP_OK; /* the others stand; this one stays */
	}
}

/* Takes the first released item (consumer lock held): QP_OK (taken, or
 * the batch is full), else an error for the batch's first. */
static int
sq_gm_released(qpi_shmq *q, sq_batch *b)
{
	sq_hdr *h = q->h;
	uint64_t first = h->gv.rel_first;
	uint8_t hdr[5];
	uint8_t *dst;
	sq_tx t;
	int rc;

	if (first == 0 || first > q->nslots) {
		return qpi_sq_fault(q, "bad released list", first);
	}
	uint32_t i = (uint32_t) (first - 1);
	sq_slot *s = &q->slots[i];
	uint32_t kind = (uint32_t) (s->kindlen >> 32);
	uint64_t len = (uint32_t) s->kindlen;
	if ((kind != K_BIN && kind != K_OBJ) || len > q->max_msg
	    || s->nblocks != (len + SQ_BLOCK - 1) / SQ_BLOCK) {
		return qpi_sq_fault(q, "bad released lease slot", first);
	}
	if (b->n == 0) {
		SQ_HOOK(QPI_HOOK_GET_LOCKED);
	}
	if ((dst = sq_gm_dst(b, kind, len, hdr, &rc)) == NULL) {
		return rc;
	}
	tx_begin(&t, q);
	tx_set(&t, &h->gv.rel_first, s->next);
	tx_set(&t, &h->gp.nreleased, h->gp.nreleased - 1);
	tx_set(&t, &h->gp.bytes_rel, h->gp.bytes_rel - len);
	tx_set(&t, &h->gp.relgets, h->gp.relgets + 1);
	if (b->lease) {
		tx_set(&t, &s->state, L_LEASED);
		tx_set(&t, &s->owner, b->owner);
		tx_set(&t, (uint64_t *) &s->expiry_ms, (uint64_t) b->exp);
		tx_set(&t, &s->deliveries, s->deliveries + 1);
		tx_set(&t, &s->next, 0);
		/* A new id: an old holder's ack must not hit this lease. */
		tx_set(&t, &s->gen, s->gen + 1);
		tx_set(&t, &h->gp.nleased, h->gp.nleased + 1);
		b->got[b->n].lease
		    = (qpi_shmq_lease) {((s->gen + 1) << L_IDX_BITS) | i,
		        (uint32_t) (s->deliveries + 1), kind, b->exp};
	} else {
		sq_lists l;
		sq_lists_get(q, &l);
		if ((rc = qpi_sq_slot_free(q, &t, i, &l)) != QP_OK) {
			sq_gm_unjoin(b, &rc);
			return rc;
		}
		sq_lists_set(q, &t, &l);
	}
	sq_gm_join(q, b, dst, hdr, NULL, s->first, len);
	sq_wake(q, EV_NF, true); /* before the commit: see sq_settle */
	tx_commit(&t);
	SQ_HOOK(QPI_HOOK_DONE);
	return QP_OK;
}

/* Lease batch state between commits: the free slot and block lists as
 * this batch has taken them so far. */
typedef struct sq_gm_tx {
	sq_tx t;
	uint64_t head; /* after the last item taken */
	sq_rec *last; /* the last item taken (its counts) */
	sq_lists l;
	uint64_t water; /* lease area: blocks never used start here */
	uint64_t ntaken; /* leases in this commit */
} sq_gm_tx;

/* Commits the leases taken since the last commit (none: nothing to do),
 * and begins the next. */
static void
sq_gm_commit(qpi_shmq *q, sq_gm_tx *x)
{
	sq_hdr *h = q->h;

	if (x->ntaken > 0) {
		sq_lists_set(q, &x->t, &x->l);
		tx_set(&x->t, &h->gv.bwater, x->water);
		tx_set(&x->t, &h->gp.nleased, h->gp.nleased + x->ntaken);
		tx_set(&x->t, &h->gp.bytes_out, x->last->bytes);
		tx_set(&x->t, &h->gp.nget, x->last->seq);
		tx_set(&x->t, &h->gp.head, x->head);
		sq_wake(q, EV_NF, true); /* before the commit: see sq_settle */
		tx_commit(&x->t);
		SQ_HOOK(QPI_HOOK_DONE);
	}
	tx_begin(&x->t, q);
	x->ntaken = 0;
}

/* Takes nb blocks for one lease from the batch's lists into tk (the
 * chain as sq_blocks_fill walks it). QP_ELIMIT or QP_ENOSPC when the
 * lease area lacks them, QP_ECORRUPT: nothing taken. */
static int
sq_gm_blocks(qpi_shmq *q, sq_gm_tx *x, uint64_t nb, sq_take *tk)
{
	uint64_t k = nb < x->l.nbfree ? nb : x->l.nbfree, b = x->l.bfree,
	         last = 0;
	uint64_t w = x->water, nw = nb - k;
	int rc;

	memset(tk, 0, sizeof(*tk));
	if (nb == 0) {
		return QP_OK;
	}
	if (w > q->nblocks || x->l.nbfree > q->nblocks) {
		return qpi_sq_fault(q, "bad lease-area marks", w);
	}
	if (nw > q->nblocks - w) {
		return qpi_err(QP_ELIMIT,
		    "%s: the lease area has no room for %" PRIu64
		    " more bytes",
		    q->label, nb * SQ_BLOCK);
	}
	if (w + nw > LD(&q->h->gv.bbacked)
	    && (rc = sq_back_blocks(q, w + nw)) != QP_OK) {
		return rc;
	}
	for (uint64_t i = 0; i < k; i++) {
		if (b == 0 || b > q->nblocks) {
			return qpi_sq_fault(q, "bad lease-area free list", b);
		}
		last = b;
		b = q->links[b - 1];
	}
	tk->first = k > 0 ? x->l.bfree : w + 1;
	tk->k = k;
	tk->water = w;
	for (uint64_t i = w; i < w + nw; i++) {
		ST(&q->links[i], i + 1 < w + nw ? (uint32_t) (i + 2) : 0);
	}
	if (k > 0 && nw > 0) {
		/* The free list's last block leads on to the new ones: the
		 * list ends here, so this happens once per commit. */
		tx_set32(&x->t, &q->links[last - 1], (uint32_t) (w + 1));
	}
	x->l.bfree = k == x->l.nbfree ? 0 : b;
	x->l.nbfree -= k;
	x->water = w + nw;
	return QP_OK;
}

/* Leases the ring's item r (ending at end) into the batch (consumer lock
 * held). QP_OK: taken, or the batch is full; else the error for the
 * batch's first (QP_ELIMIT, QP_ENOSPC, QP_ETOOBIG, QP_ENOMEM). */
static int
sq_gm_lease(qpi_shmq *q, sq_batch *b, sq_gm_tx *x, sq_rec *r, uint64_t end)
{
	uint64_t f = x->l.ffree, nb = (r->len + SQ_BLOCK - 1) / SQ_BLOCK;
	uint8_t hdr[5], *dst;
	sq_take tk;
	int rc;

	if (f == 0 || f > q->nslots) {
		b->full = true;
		return b->n > 0
		    ? QP_OK
		    : qpi_err(QP_ELIMIT, "%s: all %u lease slots are in use",
		        q->label, q->nslots);
	}
	if ((dst = sq_gm_dst(b, r->kind, r->len, hdr, &rc)) == NULL) {
		return rc;
	}
	if ((rc = sq_gm_blocks(q, x, nb, &tk)) != QP_OK) {
		sq_gm_unjoin(b, &rc);
		return rc;
	}
	sq_blocks_fill(q, &tk, (const uint8_t *) (r + 1), r->len);
	uint32_t i = (uint32_t) (f - 1);
	sq_slot *s = &q->slots[i];
	x->l.ffree = s->next;
	/* A free slot: written straight, the commit makes it a lease. */
	s->seq = r->seq;
	s->kindlen = (uint64_t) r->kind << 32 | r->len;
	s->first = tk.first;
	s->nblocks = nb;
	s->ts = r->ts;
	s->owner = b->owner;
	s->expiry_ms = b->exp;
	s->deliveries = 1;
	s->gen = s->gen + 1;
	tx_set(&x->t, &s->state, L_LEASED);
	b->got[b->n].lease = (qpi_shmq_lease) {
	    (s->gen << L_IDX_BITS) | i, 1, r->kind, b->exp};
	sq_gm_join(q, b, dst, hdr, r + 1, 0, r->len);
	x->last = r;
	x->head = end;
	x->ntaken++;
	return QP_OK;
}

/* Takes items from the ring's head into the batch (consumer lock held).
 * final: the caller is about to report an empty queue, so make sure the
 * producers' count agrees (an item counted but not found is damage, not
 * emptiness). The count is read before the walk: a put stamps its record
 * before it counts it, so an item it names is there to be found, while
 * one counted after the walk looked may have been stamped after, too. */
static int
sq_gm_ring(qpi_shmq *q, sq_batch *b, bool final)
{
	sq_hdr *h = q->h;
	uint64_t nput = final ? LDA(&h->pp.nput) : 0;
	uint64_t head0 = h->gp.head, head = head0, start, end;
	size_t n0 = b->n;
	bool woke = false;
	sq_gm_tx x;
	sq_rec *r;
	int rc = QP_OK;

	sq_lists_get(q, &x.l);
	x.water = h->gv.bwater;
	x.ntaken = 0;
	if (b->lease) {
		sq_gm_commit(q, &x); /* begins the first */
	}
	while (b->n < b->max && !b->full) {
		uint8_t hdr[5], *dst;
		uint64_t pos = head;
		if ((rc = sq_walk(q, &pos, &r, &start, &end)) != QP_OK) {
			break;
		}
		if (r == NULL) {
			if (b->n == 0) {
				sq_skip_commit(q, head0, pos);
				rc = final && nput > h->gp.nget
				    ? qpi_sq_fault(q,
				        "counted item without its record", pos)
				    : QP_EEMPTY;
			}
			break;
		}
		if (b->n == 0) {
			SQ_HOOK(QPI_HOOK_GET_LOCKED);
		}
		if (b->lease) {
			if (x.t.n >= SQ_GM_PER_TX) {
				sq_gm_commit(q, &x);
			}
			if ((rc = sq_gm_lease(q, b, &x, r, end)) != QP_OK) {
				break;
			}
			head = end;
			continue;
		}
		if ((dst = sq_gm_dst(b, r->kind, r->len, hdr, &rc)) == NULL) {
			break;
		}
		sq_gm_join(q, b, dst, hdr, r + 1, 0, r->len);
		if (!woke) {
			woke = true;
			sq_wake(q, EV_NF, true); /* see sq_settle */
		}
		/* The counts, then the head: the commit. */
		ST(&h->gp.bytes_out, r->bytes);
		STR(&h->gp.nget, r->seq);
		SQ_HOOK(QPI_HOOK_GET_COMMIT);
		STR(&h->gp.head, end);
		head = end;
	}
	if (b->lease) {
		sq_gm_commit(q, &x);
	} else if (b->n > n0) {
		SQ_HOOK(QPI_HOOK_DONE);
	}
	return b->n > 0 ? QP_OK : rc;
}

/* Frees the items of a batch that is not handed out. */
static void
sq_gm_drop(sq_batch *b)
{
	for (size_t i = 0; i < b->n && (b->flags & QPI_GET_EACH); i++) {
		free(b->got[i].own);
	}
	b->n = 0;
	b->used = 0;
}

static int
sq_try_get(qpi_shmq *q, sq_batch *b, bool final)
{
	sq_hdr *h = q->h;
	int rc;

	if ((rc = qpi_sq_lock(q, &h->gs)) != QP_OK) {
		return rc;
	}
	if (b->lease) {
		b->exp
		    = b->lease_ms < 0 ? INT64_MAX : qpi_now_ms() + b->lease_ms;
	}
	while (
	    rc == QP_OK && b->n < b->max && !b->full && h->gp.nreleased != 0) {
		rc = sq_gm_released(q, b);
	}
	if (rc == QP_OK && b->n < b->max && !b->full) {
		rc = sq_gm_ring(q, b, final);
	}
	sq_unlock_bump(q, &h->gs, b->n > 0);
	if (b->n == 0) {
		return rc;
	}
	if ((rc = sq_after(q)) != QP_OK) {
		sq_gm_drop(b); /* zeros read from a truncated file */
	}
	return rc;
}

/* Gets a batch (b->max items at most, b->got room for them), waiting
 * until deadline for the first. */
static int
sq_get(qpi_shmq *q, sq_batch *b, int64_t deadline)
{
	bool spun = false;
	int rc;

	if (sq_closed(q)) {
		return qpi_sq_stop_err(q, false);
	}
	if (b->max == 0 || b->lease_ms < -1) {
		return b->max == 0
		    ? qpi_err(QP_EINVAL, "a get of 0 items")
		    : qpi_err(
		        QP_EINVAL, "lease time %" PRId64 " ms", b->lease_ms);
	}
	for (;;) {
		rc = sq_try_get(q, b, false);
		if (rc != QP_EEMPTY) {
			break;
		}
		rc = qpi_sq_wait(
		    q, EV_NE, sq_pred_items, NULL, deadline, &spun);
		if (rc == QP_ECLOSED) {
			return rc;
		}
		if (rc == QP_ETIMEDOUT) {
			rc = sq_try_get(q, b, true);
			if (rc == QP_EEMPTY) {
				rc = qpi_err(
				    QP_EEMPTY, "%s is empty", q->label);
			}
			return rc;
		}
	}
	return spun && rc == QP_ENOENT && sq_removed(q)
	    ? qpi_sq_stop_err(q, true)
	    : rc;
}

/* One item: into the caller's buffer (into, cap), else a malloc'd copy
 * in *bufp; *lenp its size (QP_ETOOBIG: the size it would need). */
static int
sq_get_one(qpi_shmq *q, sq_batch *b, void *into, size_t cap, void **bufp,
    size_t *lenp, qpi_shmq_lease *lease, int64_t deadline)
{
	qpi_shmq_got got;
	int rc;

	b->max = 1;
	b->got = &got;
	if (into != NULL) {
		b->buf = into;
		b->cap = cap;
		b->fixed = true;
	} else {
		b->flags |= QPI_GET_EACH;
	}
	if ((rc = sq_get(q, b, deadline)) != QP_OK) {
		if (rc == QP_ETOOBIG) {
			*lenp = b->first_len;
		}
		return rc;
	}
	if (into == NULL) {
		*bufp = got.own;
	}
	*lenp = got.len;
	if (lease != NULL) {
		*lease = got.lease;
	}
	return QP_OK;
}

int
qpi_shmq_get(qpi_shmq *q, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline)
{
	sq_batch b = {.flags = flags & ~QPI_GET_EACH};

	return sq_get_one(q, &b, into, cap, bufp, lenp, NULL, deadline);
}

/* A batch into one buffer (or each item in its own, QPI_GET_EACH). */
static int
sq_get_batch(
    qpi_shmq *q, sq_batch *b, void **bufp, size_t *np, int64_t deadline)
{
	int rc = sq_get(q, b, deadline);

	*np = b->n;
	if (rc != QP_OK) {
		free(b->buf);
		b->buf = NULL;
	}
	*bufp = b->buf;
	return rc;
}

int
qpi_shmq_get_many(qpi_shmq *q, unsigned flags, size_t max, size_t max_bytes,
    void **bufp, qpi_shmq_got *got, size_t *np, int64_t deadline)
{
	sq_batch b
	    = {.flags = flags, .max = max, .max_bytes = max_bytes, .got = got};

	return sq_get_batch(q, &b, bufp, np, deadline);
}

/* ---- sizes, task_done, join, stat ---- */

int
qpi_shmq_qsize(qpi_shmq *q, uint64_t *np)
{
	sq_hdr *h = q->h;
	uint64_t ng = LDA(&h->gp.nget), nr = LDA(&h->gp.nreleased);
	uint64_t n = LDA(&h->pp.nput);

	if (sq_stopped(q)) {
		return qpi_sq_stop_err(q, false);
	}
	*np = (n > ng ? n - ng : 0) + nr;
	return QP_OK;
}

int
qpi_shmq_full(qpi_shmq *q, bool *fullp)
{
	sq_hdr *h = q->h;
	uint64_t n;
	int rc;

	if ((rc = qpi_shmq_qsize(q, &n)) != QP_OK) {
		return rc;
	}
	uint64_t head = LDA(&h->gp.head), tail = LDA(&h->pp.tail);
	uint64_t used = tail > head ? tail - head : 0;
	*fullp = (q->maxsize != 0 && n >= q->maxsize)
	    || used + sq_need(q, tail, SQ_REC_HDR) > q->cap;
	return QP_OK;
}

int
qpi_shmq_task_done(qpi_shmq *q)
{
	sq_hdr *h = q->h;
	int rc;

	/* Under the consumer lock, so that joiners can wait for a
	 * task_done in flight (see sq_settle); one store commits it. */
	if ((rc = sq_lock_open(q, &h->gs)) != QP_OK) {
		return rc;
	}
	uint64_t d = h->dones, n = LDA(&h->pp.nput);
	if (d >= n) {
		sq_unlock(&h->gs);
		return qpi_err(QP_EVALUE,
		    "task_done() called more times than items were put on %s",
		    q->label);
	}
	if (d + 1 == n) {
		sq_wake(q, EV_JN, true); /* before the commit */
	}
	STR(&h->dones, d + 1);
	SQ_HOOK(QPI_HOOK_DONE);
	sq_unlock_bump(q, &h->gs, d + 1 == n);
	return QP_OK;
}

static bool
sq_pred_joined(qpi_shmq *q, const void *arg)
{
	(void) arg;
	return LDA(&q->h->dones) >= LDA(&q->h->pp.nput);
}

int
qpi_shmq_join(qpi_shmq *q, int64_t deadline)
{
	bool spun = true; /* joins are long: sleep at once */
	int rc;

	for (;;) {
		if (sq_stopped(q)) {
			return qpi_sq_stop_err(q, false);
		}
		if (sq_pred_joined(q, NULL)) {
			return QP_OK;
		}
		rc = qpi_sq_wait(
		    q, EV_JN, sq_pred_joined, NULL, deadline, &spun);
		if (rc == QP_ECLOSED) {
			return rc;
		}
		if (rc == QP_ETIMEDOUT && !sq_pred_joined(q, NULL)) {
			return qpi_err(QP_ETIMEDOUT,
			    "%s: %" PRIu64 " tasks still unfinished", q->label,
			    LDA(&q->h->pp.nput) - LDA(&q->h->dones));
		}
	}
}

int
qpi_shmq_stat(qpi_shmq *q, qp_queue_stats *st)
{
	sq_hdr *h = q->h;
	uint32_t now = sq_ts(q), age = 0;
	bool any = false;
	uint64_t start, end;
	sq_rec *r;
	int rc;

	if ((rc = sq_lock_open(q, &h->gs)) != QP_OK) {
		return rc;
	}
	uint64_t nput = LDA(&h->pp.nput), bytes_in = LDA(&h->pp.bytes_in);
	memset(st, 0, sizeof(*st));
	st->items
	    = (nput > h->gp.nget ? nput - h->gp.nget : 0) + h->gp.nreleased;
	st->bytes
	    = (bytes_in > h->gp.bytes_out ? bytes_in - h->gp.bytes_out : 0)
	    + h->gp.bytes_rel;
	st->maxsize = q->maxsize;
	st->capacity = q->cap;
	st->leased = h->gp.nleased;
	st->puts = nput;
	st->gets = h->gp.nget + h->gp.relgets;
	if (h->gv.rel_first != 0 && h->gv.rel_first <= q->nslots) {
		age = now - (uint32_t) q->slots[h->gv.rel_first - 1].ts;
		any = true;
	}
	uint64_t pos = h->gp.head;
	if (sq_walk(q, &pos, &r, &start, &end) == QP_OK && r != NULL) {
		uint32_t a = now - r->ts;
		age = !any || a > age ? a : age;
		any = true;
	}
	sq_unlock(&h->gs);
	/* Waiter counts heal: sleepers killed while they slept leave their
	 * bits set; forget those of processes that are gone. */
	qpi_sq_scan_now(&h->ev[EV_NE]);
	qpi_sq_scan_now(&h->ev[EV_NF]);
	uint64_t dones = LDA(&h->dones);
	st->unfinished = nput > dones ? nput - dones : 0;
	st->getters = __builtin_popcountll(LD(&h->ev[EV_NE].sleep))
	    + LD(&h->ev[EV_NE].extra);
	st->putters = __builtin_popcountll(LD(&h->ev[EV_NF].sleep))
	    + LD(&h->ev[EV_NF].extra);
	st->oldest_age_ms = any ? (int64_t) age : -1;
	return QP_OK;
}

/* ---- check ---- */

static int
sq_bad(qpi_shmq *q, const char *what, uint64_t v)
{
	return qpi_err(QP_ECORRUPT, "%s fails its check: %s (%" PRIu64 ")",
	    q->label, what, v);
}

static int
sq_check_ring(qpi_shmq *q)
{
	sq_hdr *h = q->h;
	uint64_t head = h->gp.head, tail = h->pp.tail;
	uint64_t seq = h->gp.nget, bytes = h->gp.bytes_out;
	uint64_t start, end, pos;
	sq_rec *r;
	int rc;

	if (h->gs.j.seq != 0) {
		return sq_bad(q, "journal left open", h->gs.j.seq);
	}
	if (!(head <= tail && tail - head <= q->cap)) {
		return sq_bad(q, "head <= tail <= head + capacity", head);
	}
	if (head % 8 || tail % 8) {
		return sq_bad(q, "aligned positions", tail);
	}
	for (pos = head; pos < tail; pos = end) {
		if ((rc = sq_peek(q, pos, &r, &start, &end)) != QP_OK) {
			return rc;
		}
		if (r == NULL || end > tail) { /* below the tail: committed */
			return qpi_sq_fault(q,
			    r == NULL ? "record without its stamp"
			              : "record past the tail",
			    pos);
		}
		if (r->kind != K_PAD) {
			if (r->seq != seq + 1 || r->bytes != bytes + r->len) {
				return sq_bad(q, "item header", start);
			}
			seq = r->seq;
			bytes = r->bytes;
		}
	}
	if (pos != tail) {
		return sq_bad(q, "records end at the tail", pos);
	}
	if (seq != h->pp.nput || bytes != h->pp.bytes_in) {
		return sq_bad(q, "items and bytes put match the ring", seq);
	}
	if ((rc = sq_peek(q, tail, &r, &start, &end)) != QP_OK || r != NULL) {
		return sq_bad(q, "committed record beyond the tail", tail);
	}
	return QP_OK;
}

/* Counts a block chain: QP_OK if it has n blocks, all in use once. */
static int
sq_check_chain(qpi_shmq *q, uint64_t b, uint64_t n, uint8_t *seen)
{
	for (uint64_t i = 0; i < n; i++) {
		if (b == 0 || b > q->h->gv.bwater || seen[b - 1]) {
			return sq_bad(q, "lease block chain", b);
		}
		seen[b - 1] = 1;
		b = q->links[b - 1];
	}
	return QP_OK;
}

static int
sq_check_leases(qpi_shmq *q)
{
	sq_hdr *h = q->h;
	uint64_t nfree = 0, nleased = 0, nrel = 0, relbytes = 0, n, prev;
	uint8_t *seen = NULL;
	int rc = QP_OK;

	if (h->gv.bwater > q->nblocks || h->gv.nbfree > h->gv.bwater) {
		return sq_bad(q, "lease area counters", h->gv.bwater);
	}
	seen = calloc(1, h->gv.bwater + 1);
	if (seen == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	rc = sq_check_chain(q, h->gv.bfree, h->gv.nbfree, seen);
	for (uint32_t i = 0; i < q->nslots && rc == QP_OK; i++) {
		const sq_slot *s = &q->slots[i];
		uint64_t len = (uint32_t) s->kindlen;
		if (s->state == L_FREE) {
			nfree++;
			continue;
		}
		if (s->state != L_LEASED && s->state != L_RELEASED) {
			rc = sq_bad(q, "lease slot state", i);
		} else if (s->nblocks != (len + SQ_BLOCK - 1) / SQ_BLOCK
		    || (s->first == 0) != (s->nblocks == 0)) {
			rc = sq_bad(q, "lease slot size", i);
		} else {
			rc = sq_check_chain(q, s->first, s->nblocks, seen);
		}
		if (s->state == L_LEASED) {
			nleased++;
		} else {
			nrel++;
			relbytes += len;
		}
	}
	for (uint64_t b = 0; b < h->gv.bwater && rc == QP_OK; b++) {
		if (!seen[b]) {
			rc = sq_bad(q, "lease block lost", b + 1);
		}
	}
	free(seen);
	if (rc != QP_OK) {
		return rc;
	}
	if (nleased != h->gp.nleased || nrel != h->gp.nreleased
	    || relbytes != h->gp.bytes_rel) {
		return sq_bad(q, "lease counters", nleased);
	}
	/* The released list (in item order) and the free list. */
	for (int k = 0; k < 2; k++) {
		n = prev = 0;
		for (uint64_t l = k ? h->gv.free_first : h->gv.rel_first;
		     l != 0; n++) {
			if (l > q->nslots || n > q->nslots) {
				return sq_bad(
				    q, k ? "free list" : "released list", l);
			}
			const sq_slot *s = &q->slots[l - 1];
			if (s->state != (k ? L_FREE : L_RELEASED)
			    || (!k && n > 0 && s->seq < prev)) {
				return sq_bad(
				    q, k ? "free slot" : "released order", l);
			}
			prev = s->seq;
			l = s->next;
		}
		if (n != (k ? nfree : nrel)) {
			return sq_bad(q,
			    k ? "free list length" : "released list length",
			    n);
		}
	}
	if (LD(&h->dones) > h->pp.nput) {
		return sq_bad(q, "task_done count", h->dones);
	}
	return QP_OK;
}

int
qpi_shmq_check(qpi_shmq *q)
{
	int rc;

	if ((rc = qpi_sq_lock(q, &q->h->ps)) != QP_OK) {
		return rc;
	}
	if ((rc = qpi_sq_lock(q, &q->h->gs)) != QP_OK) {
		sq_unlock(&q->h->ps);
		return rc;
	}
	rc = sq_check_ring(q);
	if (rc == QP_OK) {
		rc = sq_check_leases(q);
	}
	sq_unlock(&q->h->gs);
	sq_unlock(&q->h->ps);
	return rc;
}

/* ---- leases ---- */

int
qpi_shmq_get_lease(qpi_shmq *q, uint64_t owner, int64_t lease_ms,
    unsigned flags, void **bufp, size_t *lenp, qpi_shmq_lease *lease,
    int64_t deadline)
{
	return qpi_shmq_get_lease_max(
	    q, owner, lease_ms, flags, 0, bufp, lenp, lease, deadline);
}

int
qpi_shmq_get_lease_max(qpi_shmq *q, uint64_t owner, int64_t lease_ms,
    unsigned flags, size_t max_len, void **bufp, size_t *lenp,
    qpi_shmq_lease *lease, int64_t deadline)
{
	sq_batch b = {.flags = flags & ~QPI_GET_EACH,
	    .lease = true,
	    .owner = owner,
	    .lease_ms = lease_ms,
	    .max_first = max_len};

	return sq_get_one(q, &b, NULL, 0, bufp, lenp, lease, deadline);
}

int
qpi_shmq_get_lease_many(qpi_shmq *q, uint64_t owner, int64_t lease_ms,
    unsigned flags, size_t max, size_t max_bytes, void **bufp,
    qpi_shmq_got *got, size_t *np, int64_t deadline)
{
	sq_batch b = {.flags = flags,
	    .lease = true,
	    .owner = owner,
	    .lease_ms = lease_ms,
	    .max = max,
	    .max_bytes = max_bytes,
	    .got = got};

	return sq_get_batch(q, &b, bufp, np, deadline);
}

int
qpi_sq_slot_of(qpi_shmq *q, uint64_t id, uint64_t state, uint32_t *ip)
{
	uint64_t i = id & ((1u << L_IDX_BITS) - 1);

	if (id == 0 || i >= q->nslots || q->slots[i].gen != id >> L_IDX_BITS
	    || q->slots[i].state != state) {
		return qpi_err(QP_ENOENT,
		    "%s: no lease %" PRIu64 " (acked, released or expired)",
		    q->label, id);
	}
	*ip = (uint32_t) i;
	return QP_OK;
}

/* Returns lease slot i to the head of the queue (consumer lock held). */
static int
sq_release_slot(qpi_shmq *q, uint32_t i)
{
	sq_hdr *h = q->h;
	sq_slot *s = &q->slots[i];
	uint64_t prev = 0, cur = h->gv.rel_first;
	sq_tx t;

	for (uint32_t n = 0; cur != 0; n++) {
		if (cur > q->nslots || n > q->nslots) {
			return qpi_sq_fault(q, "bad released list", cur);
		}
		if (q->slots[cur - 1].seq > s->seq) {
			break;
		}
		prev = cur;
		cur = q->slots[cur - 1].next;
	}
	tx_begin(&t, q);
	tx_set(&t, &s->state, L_RELEASED);
	tx_set(&t, &s->next, cur);
	tx_set(&t, prev != 0 ? &q->slots[prev - 1].next : &h->gv.rel_first,
	    i + 1);
	tx_set(&t, &h->gp.nleased, h->gp.nleased - 1);
	tx_set(&t, &h->gp.bytes_rel, h->gp.bytes_rel + (uint32_t) s->kindlen);
	tx_set(&t, &h->gp.nreleased, h->gp.nreleased + 1);
	/* One more item ready: one more getter (see sq_settle). */
	sq_wake(q, EV_NE, false);
	tx_commit(&t);
	return QP_OK;
}

/* Acks per commit: 3 journal entries each, and 4 for the lists' heads
 * and the lease count. */
#define SQ_ACK_PER_TX ((SQ_JMAX - 4) / 3)

int
qpi_shmq_ack_many(qpi_shmq *q, const uint64_t *ids, size_t n, int *rcs)
{
	sq_hdr *h = q->h;
	uint32_t done[SQ_ACK_PER_TX];
	size_t nok = 0;
	int rc;

	if ((rc = sq_lock_open(q, &h->gs)) != QP_OK) {
		return rc;
	}
	for (size_t k = 0; k < n && rc == QP_OK;) {
		uint32_t nd = 0, i;
		sq_lists l;
		sq_tx t;
		sq_lists_get(q, &l);
		tx_begin(&t, q);
		for (; k < n && nd < SQ_ACK_PER_TX && rc == QP_OK; k++) {
			bool twice = false; /* acked just now */
			if ((rcs[k] = qpi_sq_slot_of(q, ids[k], L_LEASED, &i))
			    != QP_OK) {
				continue;
			}
			for (uint32_t d = 0; d < nd; d++) {
				twice |= done[d] == i;
			}
			if (twice || sq_cpl_holds(q, i)) {
				rcs[k] = qpi_err(QP_ENOENT,
				    "%s: lease %" PRIu64 " %s", q->label,
				    ids[k],
				    twice ? "acked twice"
				          : "is being completed");
			}
			if (rcs[k] == QP_OK
			    && (rc = qpi_sq_slot_free(q, &t, i, &l))
			        == QP_OK) {
				done[nd++] = i;
			}
		}
		if (nd > 0 && rc == QP_OK) {
			sq_lists_set(q, &t, &l);
			tx_set(&t, &h->gp.nleased, h->gp.nleased - nd);
			tx_commit(&t);
			nok += nd;
		}
	}
	if (nok > 0) {
		sq_mx_add(&q->mx->acks, nok);
	}
	sq_unlock_bump(q, &h->gs, nok > 0);
	return rc;
}

int
qpi_shmq_ack(qpi_shmq *q, uint64_t id)
{
	int one, rc = qpi_shmq_ack_many(q, &id, 1, &one);

	return rc != QP_OK ? rc : one;
}

int
qpi_shmq_release(qpi_shmq *q, uint64_t id)
{
	uint32_t i;
	int rc;

	/* No closed check: a handle that closes gives its leases back after
	 * it has woken its sleepers. */
	if ((rc = qpi_sq_lock(q, &q->h->gs)) != QP_OK) {
		return rc;
	}
	if ((rc = qpi_sq_slot_of(q, id, L_LEASED, &i)) == QP_OK) {
		rc = sq_cpl_holds(q, i) ? qpi_err(QP_ENOENT,
		         "%s: lease %" PRIu64 " is being completed", q->label,
		         id)
		                        : sq_release_slot(q, i);
		if (rc == QP_OK) {
			sq_mx_add(&q->mx->nacks, 1);
		}
	}
	sq_unlock_bump(q, &q->h->gs, rc == QP_OK);
	return rc;
}

int
qpi_shmq_lease_held(qpi_shmq *q, uint64_t id)
{
	uint32_t i;
	int rc;

	if ((rc = sq_lock_open(q, &q->h->gs)) != QP_OK) {
		return rc;
	}
	rc = qpi_sq_slot_of(q, id, L_LEASED, &i);
	sq_unlock(&q->h->gs);
	return rc;
}

int
qpi_shmq_renew(qpi_shmq *q, uint64_t id, int64_t lease_ms)
{
	uint32_t i;
	sq_tx t;
	int rc;

	if (lease_ms < -1) {
		return qpi_err(
		    QP_EINVAL, "lease time %" PRId64 " ms", lease_ms);
	}
	if ((rc = sq_lock_open(q, &q->h->gs)) != QP_OK) {
		return rc;
	}
	if ((rc = qpi_sq_slot_of(q, id, L_LEASED, &i)) == QP_OK) {
		int64_t exp
		    = lease_ms < 0 ? INT64_MAX : qpi_now_ms() + lease_ms;
		tx_begin(&t, q);
		tx_set(
		    &t, (uint64_t *) &q->slots[i].expiry_ms, (uint64_t) exp);
		tx_commit(&t);
	}
	sq_unlock(&q->h->gs);
	return rc;
}

/* Releases every leased slot that match() accepts (NULL: all). */
static int
sq_release_matching(qpi_shmq *q, bool (*match)(const sq_slot *, const void *),
    const void *arg, size_t *np, int64_t *nextp, int why)
{
	size_t n = 0;
	int64_t next = INT64_MAX;
	int rc;

	if ((rc = sq_lock_open(q, &q->h->gs)) != QP_OK) {
		return rc;
	}
	for (uint32_t i = 0; i < q->nslots && rc == QP_OK; i++) {
		const sq_slot *s = &q->slots[i];
		if (s->state != L_LEASED || sq_cpl_holds(q, i)) {
			continue;
		}
		if (match == NULL || match(s, arg)) {
			if ((rc = sq_release_slot(q, i)) == QP_OK) {
				n++;
			}
		} else if (s->expiry_ms < next) {
			next = s->expiry_ms;
		}
	}
	if (n > 0 && why >= 0) {
		sq_mx_add(&q->mx->rel[why], n);
	}
	sq_unlock_bump(q, &q->h->gs, n > 0);
	if (np != NULL) {
		*np = n;
	}
	if (nextp != NULL) {
		*nextp = next;
	}
	return rc;
}

static bool
sq_match_owner(const sq_slot *s, const void *arg)
{
	return s->owner == *(const uint64_t *) arg;
}

static bool
sq_match_expired(const sq_slot *s, const void *arg)
{
	return s->expiry_ms <= *(const int64_t *) arg;
}

int
qpi_shmq_release_owner(qpi_shmq *q, uint64_t owner, size_t *np)
{
	return sq_release_matching(
	    q, sq_match_owner, &owner, np, NULL, QPI_SHMQ_REL_DISCONNECT);
}

int
qpi_shmq_expire(qpi_shmq *q, int64_t now_ms, size_t *np, int64_t *next_ms)
{
	return sq_release_matching(
	    q, sq_match_expired, &now_ms, np, next_ms, QPI_SHMQ_REL_EXPIRED);
}

int
qpi_shmq_release_all(qpi_shmq *q, size_t *np)
{
	return sq_release_matching(q, NULL, NULL, np, NULL, -1);
}

/* Process owner tokens: bit 63 set, the pid namespace's inode (low 31
 * bits) above the pid. */
#define OWNER_PROC (1ull << 63)

uint64_t
qpi_shmq_owner_self(void)
{
	uint64_t ns;
	int32_t me = qpi_sq_me(&ns);

	return OWNER_PROC | (ns & 0x7fffffffull) << 32 | (uint32_t) me;
}

/* arg: our pid namespace. */
static bool
sq_match_dead(const sq_slot *s, const void *arg)
{
	uint64_t ns = *(const uint64_t *) arg;

	return (s->owner & OWNER_PROC)
	    && ((s->owner >> 32) & 0x7fffffffull) == (ns & 0x7fffffffull)
	    && qpi_sq_dead((int32_t) (uint32_t) s->owner, ns);
}

static bool
sq_match_stale(const sq_slot *s, const void *arg)
{
	int32_t pid = (int32_t) ((s->owner >> 32) & 0x7fffffffull);

	if (s->owner & OWNER_PROC) {
		return sq_match_dead(s, arg);
	}
	return pid == 0 || qpi_sq_dead(pid, *(const uint64_t *) arg);
}

int
qpi_shmq_release_dead(qpi_shmq *q, size_t *np)
{
	uint64_t ns;

	qpi_sq_me(&ns);
	return sq_release_matching(
	    q, sq_match_dead, &ns, np, NULL, QPI_SHMQ_REL_DEAD);
}

int
qpi_shmq_release_stale(qpi_shmq *q, size_t *np)
{
	uint64_t ns;

	qpi_sq_me(&ns);
	return sq_release_matching(
	    q, sq_match_stale, &ns, np, NULL, QPI_SHMQ_REL_DEAD);
}

/* ---- counters for metrics ---- */

int
qpi_shmq_counters_get(qpi_shmq *q, qpi_shmq_counters *c)
{
	const sq_hdr *h = q->h;
	const qpi_shmq_mx *mx = q->mx;

	memset(c, 0, sizeof(*c));
	if (sq_closed(q)) {
		return qpi_sq_stop_err(q, false);
	}
	if (LD(&mx->version) != SQ_MX_VERSION) {
		return qpi_err(QP_EVERSION, "%s: counters of version %u",
		    q->label, LD(&mx->version));
	}
	/* The header's own block: puts and gets are the queue's counts. */
	c->puts = mx == &h->mx ? LD(&h->pp.nput) : LD(&mx->puts);
	c->gets = mx == &h->mx ? LD(&h->gp.nget) + LD(&h->gp.relgets)
	                       : LD(&mx->gets);
	c->acks = LD(&mx->acks);
	c->nacks = LD(&mx->nacks);
	for (int i = 0; i < QPI_SHMQ_REL_N; i++) {
		c->rel[i] = LD(&mx->rel[i]);
	}
	return QP_OK;
}

void
qpi_shmq_counters_place(qpi_shmq *q, qpi_shmq_mx *mx)
{
	q->mx = mx;
}

pthread_mutex_t *
qpi_shmq_test_lock(qpi_shmq *q, bool producer)
{
	return producer ? &q->h->ps.lock : &q->h->gs.lock;
}
