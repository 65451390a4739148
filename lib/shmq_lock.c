/*
 * shmq_lock.c - the shared-memory queue's locks, repairs, sleeps and
 * wake-ups (shmq.h sets out the design; shmq_int.h the layout): taking a
 * side's robust mutex and repairing the side when its owner died (the
 * producer's tail and newest tag, the consumer's journal), who this
 * process is and whether another one lives, the sleeper slots and
 * futex words that blocked calls sleep on and wakers wake, and the
 * watching calls of shmq.h (qpi_shmq_watch*: a watcher is a sleeper on
 * the watch word).
 *
 * Locking: it takes the two side locks for the other modules
 * (qpi_sq_lock), and a repair runs under the lock it repairs. The
 * kernel's robust-futex protocol covers dead lock owners but not a
 * waiter killed just as a wake-up is handed to it, so lock waits run in
 * slices (SQ_LOCK_SLICE_NS) and a wake-up for one getter wakes two
 * (SQ_WAKE_ONE). A thread with a lock budget (qpi_shmq_lock_budget:
 * qpiped's) gives up a lock it cannot take within it, changing nothing,
 * rather than wait for a stopped holder. A sleeper may take either lock
 * briefly, alone, to wait for a change in flight (sq_settle). Sleeper
 * slots are claimed and left with atomics alone.
 */
#define _GNU_SOURCE /* pthread_mutex_clocklock */
#include "shmq_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Quarantines this attachment (a header word failed its check): every
 * call from now on fails with QP_ECORRUPT naming why; other processes
 * see the segment's corrupt mark. */
static int __attribute__((noinline, format(printf, 2, 3)))
sq_quarantine(qpi_shmq *q, const char *fmt, ...)
{
	va_list ap;

	if (LD(&q->closed) != SQ_BAD) {
		va_start(ap, fmt);
		vsnprintf(q->why, sizeof(q->why), fmt, ap);
		va_end(ap);
		STR(&q->closed, SQ_BAD);
	}
	__atomic_fetch_or(&q->h->corrupt, SQ_FAULT, __ATOMIC_RELAXED);
	return qpi_sq_stop_err(q, false);
}

/* ---- locks and repair ---- */

/* Producer repair of the newest tag: its put may have died before its
 * last commit. It says how many of the request's items are in now (those
 * of its ordinals that the tail covers); none: it is dropped. Only the
 * newest can be unfinished: tags are written under the producer lock. */
static void
sq_tag_repair(qpi_shmq *q)
{
	sq_hdr *h = q->h;
	uint64_t i = h->pp.tags_next, nput = h->pp.nput, in = 0;
	sq_tag *t;

	if (i == 0) {
		return;
	}
	t = &q->tags[(i - 1) % SQ_TAGS];
	if (LD(&t->state) != 1 || t->base > t->n) {
		return;
	}
	if (nput >= t->first) {
		in = nput - t->first + 1;
		if (in > t->n - t->base) {
			in = t->n - t->base;
		}
	}
	t->done = (uint32_t) (t->base + in);
	if (t->done == 0) {
		ST(&t->state, 0);
	}
}

/* Producer repair: a stamped record at the tail was committed by the dead
 * owner; its header carries the counters. At most a pad and a record. A
 * getter may have taken the record already (it is committed once
 * stamped), so the head may be past the tail, by both. */
static void
sq_repair_producer(qpi_shmq *q)
{
	sq_hdr *h = q->h;
	sq_rec *r;
	uint64_t start, end;

	for (int i = 0; i < 4; i++) {
		uint64_t tail = h->pp.tail;
		if (sq_peek(q, tail, &r, &start, &end) != QP_OK || r == NULL
		    || end > LD(&h->gp.head) + q->cap) {
			break;
		}
		if (r->seq > h->pp.nput) {
			ST(&h->pp.nput, r->seq);
		}
		if (r->bytes > h->pp.bytes_in) {
			ST(&h->pp.bytes_in, r->bytes);
		}
		STR(&h->pp.tail, end);
	}
	sq_tag_repair(q);
}

/* Consumer repair: re-apply a committed journal; un-count an item the
 * dead owner counted but did not take (its take's commit is the head's
 * store, after the counts'). */
static void
sq_repair_consumer(qpi_shmq *q)
{
	sq_jrnl *j = &q->h->gs.j;
	uint64_t n = j->n, pos, start, end;
	sq_rec *r;

	if (j->seq != 0 && j->seq == q->h->gs.cseq && n <= SQ_JMAX) {
		for (uint64_t i = 0; i < n; i++) {
			uint64_t off = j->e[i].off & ~J_W32;
			if (off % 4 != 0 || off + 8 > q->shm.size) {
				__atomic_fetch_or(&q->h->corrupt, SQ_FAULT,
				    __ATOMIC_RELAXED);
				n = i;
				break;
			}
		}
		sq_apply(q, j, n, false);
	}
	STR(&j->seq, 0);
	pos = q->h->gp.head; /* as the journal left it */
	if (sq_walk(q, &pos, &r, &start, &end) == QP_OK && r != NULL
	    && r->seq == q->h->gp.nget) {
		ST(&q->h->gp.nget, r->seq - 1);
		ST(&q->h->gp.bytes_out, r->bytes - r->len);
	}
}

/* sq_lock_held: true unless the lock is surely free right now (a lock
 * whose owner died counts as held: it still needs its repair), read
 * after a full barrier, so that it comes after the caller's earlier
 * stores. sq_lock_kind: the lock's kind word (see sq_kind). Without
 * glibc's layout: always held, kind unknown (-1). */
#ifdef __GLIBC__
#define sq_lock_held(m) \
	(__atomic_load_n(&(m)->__data.__lock, __ATOMIC_SEQ_CST) != 0)
#define sq_lock_kind(m) LD(&(m)->__data.__kind)
#else
#define sq_lock_held(m) true
#define sq_lock_kind(m) -1
#endif

/* The kind word every queue lock has (robust, process-shared), read
 * from a mutex made as sq_init makes them: a lock whose kind differs was
 * overwritten, and glibc would misread it (wrong unlock, an assertion
 * that aborts the process), so it is never used. -1: not glibc, or not
 * known yet (sq_attach sets it). */
static int sq_kind = -1;

void
qpi_sq_kind_init(void)
{
	pthread_mutexattr_t ma;
	pthread_mutex_t m;

	if (LD(&sq_kind) != -1 || pthread_mutexattr_init(&ma) != 0) {
		return;
	}
	if (pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED) == 0
	    && pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST) == 0
	    && pthread_mutex_init(&m, &ma) == 0) {
		ST(&sq_kind, sq_lock_kind(&m));
		pthread_mutex_destroy(&m);
	}
	pthread_mutexattr_destroy(&ma);
}

int
qpi_sq_lock_until(qpi_shmq *q, sq_side *s, int64_t deadline)
{
	int rc;

	if (__builtin_expect(
	        sq_kind != -1 && sq_lock_kind(&s->lock) != sq_kind, 0)) {
		return sq_quarantine(q,
		    "the %s lock's words were overwritten (kind %d, not %d)",
		    s == &q->h->ps ? "producer" : "consumer",
		    sq_lock_kind(&s->lock), sq_kind);
	}
	rc = pthread_mutex_trylock(&s->lock);

	if (rc == EBUSY) {
		if (deadline < 0) {
			deadline = qpi_now_ns() - deadline;
		}
		for (int i = 0; i < SQ_LOCK_SPIN && rc == EBUSY; i++) {
			qpi_cpu_relax();
			if (!sq_lock_held(&s->lock)) {
				rc = pthread_mutex_trylock(&s->lock);
			}
		}
		/* Waits in slices: see SQ_LOCK_SLICE_NS. */
		while (rc == EBUSY || rc == ETIMEDOUT) {
			int64_t now = qpi_now_ns();
			if (now >= deadline) {
				return QP_ETIMEDOUT;
			}
			int64_t until = deadline - now > SQ_LOCK_SLICE_NS
			    ? now + SQ_LOCK_SLICE_NS
			    : deadline;
			struct timespec ts = qpi_ts_from_ns(until);
			rc = pthread_mutex_clocklock(
			    &s->lock, CLOCK_MONOTONIC, &ts);
		}
	}
	if (rc == EOWNERDEAD) {
		if (LD(&q->closed) == SQ_BAD) {
			/* Truncated under us: nothing there to repair. */
			pthread_mutex_unlock(&s->lock);
			return qpi_sq_stop_err(q, false);
		}
		if (s == &q->h->ps) {
			sq_repair_producer(q);
		} else {
			sq_repair_consumer(q);
		}
		pthread_mutex_consistent(&s->lock);
		rc = 0;
	}
	if (rc != 0) {
		return qpi_err(QP_ECORRUPT, "%s: lock unusable: %s", q->label,
		    strerror(rc));
	}
	if (__builtin_expect(LD(&q->h->corrupt) != 0, 0)) {
		pthread_mutex_unlock(&s->lock);
		if (LD(&q->closed) == SQ_BAD
		    || (LD(&q->h->corrupt) & SQ_REMOVED) != 0) {
			return qpi_sq_stop_err(q, false);
		}
		return qpi_err(QP_ECORRUPT,
		    "%s is marked corrupt (a process found damage in it)",
		    q->label);
	}
	if (s == &q->h->gs && LD(&q->h->cpl.phase) != CPL_NONE) {
		qpi_sq_cpl_settle(q);
	}
	return QP_OK;
}

/* This thread's lock budget (qpi_shmq_lock_budget): < 0, none. */
__thread int64_t qpi_sq_budget_ns = -1;

void
qpi_shmq_lock_budget(int64_t ns)
{
	qpi_sq_budget_ns = ns;
}

int
qpi_sq_lock(qpi_shmq *q, sq_side *s)
{
	int64_t b = qpi_sq_budget_ns;
	int rc = qpi_sq_lock_until(q, s, b < 0 ? INT64_MAX : -b - 1);

	if (rc == QP_ETIMEDOUT) { /* only with a budget */
		return qpi_err(QP_EBUSY,
		    "%s: its lock is held by another process (stopped or "
		    "slow)",
		    q->label);
	}
	return rc;
}

/* ---- who am I, is that process alive ---- */

static int32_t sq_pid;
static uint64_t sq_nsid;

int32_t
qpi_sq_me(uint64_t *nsidp)
{
	int32_t p = (int32_t) getpid();
	struct stat st;

	if (p != LD(&sq_pid)) {
		ST(&sq_nsid,
		    stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t) st.st_ino
		                                        : 0);
		ST(&sq_pid, p);
	}
	if (nsidp != NULL) {
		*nsidp = LD(&sq_nsid);
	}
	return p;
}

bool
qpi_sq_dead(int32_t pid, uint64_t nsid)
{
	uint64_t ns;

	qpi_sq_me(&ns);
	return pid > 0 && nsid == ns && qpi_pid_gone(pid);
}

/* ---- sleep and wake ---- */

int
qpi_sq_claim(sq_ev *ev)
{
	uint64_t ns;
	int32_t me = qpi_sq_me(&ns);

	for (int i = 0; i < SQ_EV_SLOTS; i++) {
		int32_t zero = 0;
		if (LD(&ev->who[i].pid) == 0
		    && __atomic_compare_exchange_n(&ev->who[i].pid, &zero, me,
		        false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
			ST(&ev->who[i].nsid, ns);
			return i;
		}
	}
	return -1;
}

void
qpi_sq_scan_now(sq_ev *ev)
{
	for (int i = 0; i < SQ_EV_SLOTS; i++) {
		int32_t pid = LD(&ev->who[i].pid);
		if (pid != 0 && qpi_sq_dead(pid, LD(&ev->who[i].nsid))) {
			uint64_t bit = 1ull << i;
			__atomic_fetch_and(&ev->sleep, ~bit, __ATOMIC_SEQ_CST);
			__atomic_fetch_and(&ev->mask, ~bit, __ATOMIC_SEQ_CST);
			__atomic_compare_exchange_n(&ev->who[i].pid, &pid, 0,
			    false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
		}
	}
}

/* As qpi_sq_scan_now, at most every SQ_SCAN_MS. */
static void
sq_scan(sq_ev *ev)
{
	int64_t now = sq_coarse_ms(), last = LD(&ev->scan_ms);

	if (now - last >= SQ_SCAN_MS
	    && __atomic_compare_exchange_n(&ev->scan_ms, &last, now, false,
	        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
		qpi_sq_scan_now(ev);
	}
}

/* Wake-up of the sleeper in slot i (its bit was seen set): 1 if this
 * call woke it from the kernel, 0 if it needs none (woken already, or it
 * left), -1 if nobody slept on the word (about to sleep, which it then
 * will not; woken by another waker just now; or dead). */
static int
sq_wake_slot(sq_ev *ev, int i)
{
	uint32_t *wp = &ev->who[i].word;

	if ((LDA(wp) & W_STATE) != W_ASLEEP) {
		return 0;
	}
	SQ_HOOK(QPI_HOOK_WAKE);
	return qpi_futex_wake_or(wp, W_WOKEN, 1) > 0 ? 1 : -1;
}

void
qpi_sq_wake_slow(qpi_shmq *q, int e, bool all)
{
	sq_ev *ev = &q->h->ev[e];
	uint64_t m = LD(&ev->sleep);
	bool missed = false;

	/* "One" is two, where two sleep: a sleeper woken by the kernel may
	 * be killed before it runs, and the wake-up dies with it; the second
	 * one then takes the item (only one kill at a time is covered). A
	 * chosen one that was not asleep (or is dead) does not count. */
	for (int woke = 0; m != 0; m &= m - 1) {
		int r = sq_wake_slot(ev, __builtin_ctzll(m));
		if (r > 0 && ++woke == SQ_WAKE_ONE && !all) {
			break;
		}
		missed |= r < 0;
	}
	if (LD(&ev->extra) != 0) {
		__atomic_fetch_add(&ev->seq, 1, __ATOMIC_SEQ_CST);
		qpi_futex_wake(&ev->seq, INT32_MAX);
	}
	if (missed) {
		sq_scan(ev);
	}
}

void
qpi_sq_watch_bump_slow(qpi_shmq *q)
{
	sq_ev *ev = &q->h->ev[EV_W];
	uint32_t s = __atomic_add_fetch(&ev->seq, 1, __ATOMIC_SEQ_CST);
	uint64_t sleep = LD(&ev->sleep);
	/* A change through a quiet watching attachment, by the process that
	 * watches through it, wakes the others only: that process knows. */
	if (q->watch_quiet && q->watch_slot >= 0
	    && q->watch_pid == qpi_self_pid()) {
		sleep &= ~(1ull << q->watch_slot);
	}
	if (sleep != 0) {
		if (qpi_futex_wake(&ev->seq, INT32_MAX) == 0) {
			sq_scan(ev);
		}
	} else if ((s & 1023) == 0) {
		sq_scan(ev);
	}
}

/* ---- watching: a watcher sleeps on the watch word that every change
 * bumps (qpi_sq_watch_bump_slow above) ---- */

int
qpi_shmq_watch(qpi_shmq *q, bool on)
{
	sq_ev *ev = &q->h->ev[EV_W];

	if (on) {
		if (q->watch_slot >= 0) {
			return QP_OK;
		}
		int i = qpi_sq_claim(ev);
		if (i < 0) {
			return qpi_err(QP_ELIMIT, "%s: %d watchers already",
			    q->label, SQ_EV_SLOTS);
		}
		__atomic_fetch_or(&ev->mask, 1ull << i, __ATOMIC_SEQ_CST);
		q->watch_slot = i;
		q->watch_pid = qpi_self_pid();
		return QP_OK;
	}
	if (q->watch_slot >= 0) {
		qpi_shmq_watch_disarm(q);
		__atomic_fetch_and(
		    &ev->mask, ~(1ull << q->watch_slot), __ATOMIC_SEQ_CST);
		STR(&ev->who[q->watch_slot].pid, 0);
		q->watch_slot = -1;
	}
	return QP_OK;
}

void
qpi_shmq_watch_quiet(qpi_shmq *q, bool quiet)
{
	q->watch_quiet = quiet;
}

uint32_t
qpi_shmq_watch_seq(qpi_shmq *q)
{
	return LDA(&q->h->ev[EV_W].seq);
}

uint32_t *
qpi_shmq_watch_word(qpi_shmq *q)
{
	return &q->h->ev[EV_W].seq;
}

int
qpi_shmq_watch_arm(qpi_shmq *q)
{
	if (q->watch_slot < 0) {
		return qpi_err(QP_EINVAL, "%s: not watching", q->label);
	}
	__atomic_fetch_or(
	    &q->h->ev[EV_W].sleep, 1ull << q->watch_slot, __ATOMIC_SEQ_CST);
	return QP_OK;
}

void
qpi_shmq_watch_disarm(qpi_shmq *q)
{
	if (q->watch_slot >= 0) {
		__atomic_fetch_and(&q->h->ev[EV_W].sleep,
		    ~(1ull << q->watch_slot), __ATOMIC_SEQ_CST);
	}
}

int
qpi_shmq_watch_wait(qpi_shmq *q, uint32_t seen, int64_t deadline)
{
	int rc;

	if ((rc = qpi_shmq_watch_arm(q)) != QP_OK) {
		return rc;
	}
	if (LDA(&q->h->ev[EV_W].seq) == seen && !sq_stopped(q)) {
		rc = qpi_futex_wait(&q->h->ev[EV_W].seq, seen, deadline);
	}
	qpi_shmq_watch_disarm(q);
	if (sq_stopped(q)) {
		return qpi_err(QP_ECLOSED, "%s: handle closed", q->label);
	}
	return rc;
}

/* Waits until the lock is free (taking it, repairing it if its owner
 * died, and releasing it at once), if it is held; not past deadline, and
 * not once the sleeper's word *wp moved from w (it was woken: a change
 * under another lock, which it goes to look at; it settles again before
 * it sleeps again). False if it left woken. */
static bool
sq_pass(
    qpi_shmq *q, sq_side *s, int64_t deadline, const uint32_t *wp, uint32_t w)
{
	if (!sq_lock_held(&s->lock)) {
		return true;
	}
	for (;;) {
		int64_t now = qpi_now_ns();
		int64_t until = deadline - now > SQ_LOCK_SLICE_NS
		    ? now + SQ_LOCK_SLICE_NS
		    : deadline;
		int rc = qpi_sq_lock_until(q, s, until);
		if (rc == QP_OK) {
			sq_unlock(s);
			return true;
		}
		if (rc != QP_ETIMEDOUT || until >= deadline) {
			return true;
		}
		if (LDA(wp) != w || sq_stopped(q)) {
			return false;
		}
	}
}

/* Called by a sleeper of event e once its bit is set (or it is counted
 * in extra), before it looks at its condition one last time and sleeps:
 * it waits for the locks its wakers hold (the producer lock for puts,
 * the consumer lock for gets, releases and task_done) to be free. Either
 * the lock was free when it looked (then a waker that takes it later
 * sees the bit: lock and bit are both read after full barriers), or the
 * holder unlocks or dies (the repair makes its work whole): the change
 * is committed and seen by the check that follows, or not made, or the
 * sleeper is woken, whoever is killed ("Wake-ups and kills", shmq.h). */
static void
sq_settle(qpi_shmq *q, int e, int64_t deadline, const uint32_t *wp, uint32_t w)
{
	if (e == EV_NE && !sq_pass(q, &q->h->ps, deadline, wp, w)) {
		return;
	}
	sq_pass(q, &q->h->gs, deadline, wp, w);
}

/* Polls pred for a few microseconds: true if it held (or q closed). */
static bool
sq_spin(qpi_shmq *q, sq_pred pred, const void *arg, int64_t deadline)
{
	int64_t start = qpi_now_ns();

	for (uint32_t i = 1;; i++) {
		if (pred(q, arg) || sq_stopped(q)) {
			return true;
		}
		qpi_cpu_relax();
		if ((i & 15) == 0) {
			int64_t now = qpi_now_ns();
			if (now - start > SQ_SPIN_NS || now >= deadline) {
				return false;
			}
		}
	}
}

/* Sleeps on event e until pred holds, a wake-up, or the deadline.
 * Returns 0, QP_ETIMEDOUT or QP_ECLOSED; the caller re-checks. */
static int
sq_sleep(qpi_shmq *q, int e, sq_pred pred, const void *arg, int64_t deadline)
{
	sq_ev *ev = &q->h->ev[e];
	int i = qpi_sq_claim(ev);
	uint32_t s = 0;

	if (i < 0) {
		/* Every slot taken: maybe by dead processes. */
		sq_scan(ev);
		i = qpi_sq_claim(ev);
	}
	uint64_t bit = i >= 0 ? 1ull << i : 0;
	uint32_t *wp = i >= 0 ? &ev->who[i].word : &ev->seq;
	int rc = 0;

	if (i >= 0) {
		/* A new generation, W_ASLEEP. */
		s = (LD(&ev->who[i].word) & ~W_STATE) + 4u;
		STR(&ev->who[i].word, s);
		__atomic_fetch_or(&ev->sleep, bit, __ATOMIC_SEQ_CST);
	} else {
		__atomic_fetch_add(&ev->extra, 1, __ATOMIC_SEQ_CST);
		s = LDA(&ev->seq);
	}
	sq_settle(q, e, deadline, wp, s);
	if (!sq_stopped(q) && !pred(q, arg)) {
		rc = qpi_futex_wait(wp, s, deadline);
		SQ_HOOK(QPI_HOOK_WOKEN);
	}
	bool woken = false;
	if (i >= 0) {
		/* Leave: a waker that comes later finds W_LEFT; one that
		 * came first left W_WOKEN. Then the bit goes (only its
		 * owner clears it), then the slot. */
		uint32_t w = s;
		woken = !__atomic_compare_exchange_n(wp, &w, s | W_LEFT, false,
		    __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
		__atomic_fetch_and(&ev->sleep, ~bit, __ATOMIC_SEQ_CST);
		STR(&ev->who[i].pid, 0); /* the slot */
	} else {
		__atomic_fetch_sub(&ev->extra, 1, __ATOMIC_SEQ_CST);
	}
	if (sq_stopped(q)) {
		/* A wake-up meant for a getter that now leaves goes on to
		 * another one. */
		if (woken && pred(q, arg)) {
			sq_wake(q, e, false);
		}
		return qpi_sq_stop_err(q, true);
	}
	return rc;
}

/* Spinning pays only while the other side runs on another CPU. This
 * thread's record of its recent spins: each success raises it, each
 * failure lowers it more; at 0 the thread sleeps at once, trying a spin
 * again every 16th wait. */
static _Thread_local int sq_spin_score = 8;
static _Thread_local unsigned sq_spin_skips;

int
qpi_sq_wait(qpi_shmq *q, int e, sq_pred pred, const void *arg,
    int64_t deadline, bool *spun)
{
	if (deadline <= 0 || qpi_remaining_ns(deadline) == 0) {
		return QP_ETIMEDOUT;
	}
	if (!*spun) {
		*spun = true;
		if (sq_spin_score > 0 || (++sq_spin_skips & 15) == 0) {
			if (sq_spin(q, pred, arg, deadline)) {
				sq_spin_score += sq_spin_score < 16;
				return sq_stopped(q) ? qpi_sq_stop_err(q, true)
				                     : QP_OK;
			}
			sq_spin_score
			    = sq_spin_score > 4 ? sq_spin_score - 4 : 0;
		}
	}
	return sq_sleep(q, e, pred, arg, deadline);
}
