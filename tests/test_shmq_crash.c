/*
 * test_shmq_crash.c - kill -9 at random points inside put and get.
 *
 * One queue lives through many runs. In each run a victim process puts,
 * gets, leases (one at a time and in batches) and acks (one at a time and
 * in batches) or releases items at random, with the test hook
 * stretching every critical section by a few microseconds, and is killed
 * with SIGKILL at a random moment. A survivor process puts and gets all
 * along; after each kill it must go on within 100 ms (300 ms under the
 * sanitizers: on a busy 2-vCPU machine their slower code puts the worst
 * stall near 100 ms), and the queue must
 * pass qpi_shmq_check(). The time measured includes the scheduler's: on a
 * shared machine a survivor that is runnable but not running for 100 ms
 * happens now and then. So a run over the bound is counted, and the test
 * fails when more than 1 % of the runs are, or when any run stalls 1 s: a
 * lock left held, a lost wake-up or a repair that waits for a timer stalls
 * every affected run for seconds, not a few of them by tens of ms. Every item
 * carries its id and checkable bytes; shared memory records which were put,
 * committed (stamped: the hook marks it) and got, so that at the end every
 * committed item is found exactly once, none twice, and nothing that was never
 * put. The one exception: the item a killed get held (the victim gets into
 * shared memory, so the test knows which) may be gone, taken just before the
 * kill. QP_CRASH_RUNS sets the number of runs (default 500; the stress
 * target runs 1,000).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "qpi.h"
#include "queue_util.h"
#include "shmq.h"

#if defined(__SANITIZE_ADDRESS__)
#define CRASH_STALL_US 300000
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CRASH_STALL_US 300000
#endif
#endif
#ifndef CRASH_STALL_US
#define CRASH_STALL_US 100000
#endif
/* Any run stalled this long fails the test at once. */
#define CRASH_HARD_US 1000000

#define MAXID        (1u << 20)
#define MAXITEM      (48u * 1024u)
#define NPOINTS      16
#define DEADLINE(ms) qpi_deadline_ns(ms)

enum { ST_NONE = 0, ST_PUTTING, ST_COMMITTED, ST_PUT };

typedef struct crash {
	uint64_t next_id;
	int32_t victim_point;
	int32_t victim_getting; /* 1 while a get's result is not recorded */
	int32_t stop;
	int32_t bad; /* a got item failed its check */
	int64_t survivor_ok_us; /* when the survivor's last op completed */
	uint64_t survivor_ops;
	uint64_t vput; /* the id the victim is putting */
	uint64_t vlease; /* the id the victim holds by lease */
	uint8_t state[MAXID];
	uint8_t got[MAXID];
	uint8_t spare[MAXID]; /* a killed get may have taken it */
	uint8_t vbuf[MAXITEM]; /* the victim's plain gets land here */
	char why[256]; /* the first damage a child was told of */
} crash;

static crash *cr;
static uint64_t rng;
static pid_t survivor_pid, victim_pid;

/* Stops the children should an assertion end the test early. */
static int
crash_teardown(void **state)
{
	if (victim_pid > 0) {
		kill(victim_pid, SIGKILL);
		waitpid(victim_pid, NULL, 0);
	}
	if (survivor_pid > 0) {
		kill(survivor_pid, SIGKILL);
		waitpid(survivor_pid, NULL, 0);
	}
	return 0;
}

static uint64_t
rnd(void)
{
	rng = qu_mix(rng + 0x9e3779b97f4a7c15ull);
	return rng;
}

/* Stretches a critical section: mostly a short spin, sometimes a sleep. */
static void
crash_hook(int point)
{
	__atomic_store_n(&cr->victim_point, point, __ATOMIC_RELAXED);
	if (point == QPI_HOOK_PUT_COMMIT && cr->vput < MAXID) {
		/* Stamped: whatever happens now, it must be delivered. */
		cr->state[cr->vput] = ST_COMMITTED;
	}
	uint64_t r = rnd();
	if (r % 8 == 0) {
		struct timespec ts = {0, (long) (r % 200) * 1000};
		nanosleep(&ts, NULL);
	} else {
		int64_t until = qu_now_us() + (int64_t) (r % 40);
		while (qu_now_us() < until) {
		}
	}
}

static size_t
item_len(uint64_t id)
{
	uint64_t r = qu_mix(id * 31 + 7);
	return r % 16 == 0 ? 8 + (size_t) (r >> 8) % (MAXITEM - 8)
	                   : 8 + (size_t) (r >> 8) % 2000;
}

/* Records a got item: checks its bytes, counts it. */
static void
record_got(const uint8_t *buf, size_t len)
{
	uint64_t id;

	if (!qu_check(buf, len, &id) || id >= MAXID || len != item_len(id)) {
		__atomic_store_n(&cr->bad, 1, __ATOMIC_RELAXED);
		return;
	}
	__atomic_fetch_add(&cr->got[id], 1, __ATOMIC_RELAXED);
}

/* Passes rc on; the first QP_ECORRUPT a child meets is kept in why. */
static int
note(int rc)
{
	char none = '\0';

	if (rc == QP_ECORRUPT
	    && __atomic_compare_exchange_n(&cr->why[0], &none, '?', false,
	        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
		snprintf(cr->why + 1, sizeof(cr->why) - 1, " (pid %d) %s",
		    (int) getpid(), qp_errmsg());
	}
	return rc;
}

static int
do_put(qpi_shmq *q, uint8_t *buf, int64_t deadline)
{
	uint64_t id = __atomic_fetch_add(&cr->next_id, 1, __ATOMIC_RELAXED);
	size_t len = item_len(id);

	if (id >= MAXID) {
		return QP_ELIMIT;
	}
	qu_fill(buf, id, len);
	cr->state[id] = ST_PUTTING;
	if (qpi_shmq_test_hook != NULL) {
		cr->vput = id;
	}
	int rc = note(qpi_shmq_put(q, buf, len, QPI_ITEM_BIN, deadline));
	cr->state[id] = rc == QP_OK ? ST_PUT : ST_NONE;
	cr->vput = UINT64_MAX;
	return rc;
}

/* A batch of leases (qpiped's get), then each released, or all acked
 * (delivered here) one by one or in one call. Killed with leases held,
 * they return through release_owner; killed in an ack, the item the test
 * knows of may be gone (one at a time), or any of the batch (in one
 * call). */
static void
victim_batch(qpi_shmq *q, int how)
{
	qpi_shmq_got got[40];
	uint64_t ids[40];
	int rcs[40];
	void *buf;
	size_t n;

	if (note(qpi_shmq_get_lease_many(q, (uint64_t) getpid(), 60000, 0,
	        1 + rnd() % 40, rnd() % 2 ? 0 : 20000, &buf, got, &n, 0))
	    != QP_OK) {
		return;
	}
	for (size_t i = 0; i < n; i++) {
		const uint8_t *p = (const uint8_t *) buf + got[i].off;
		ids[i] = got[i].lease.id;
		if (how == 0) {
			note(qpi_shmq_release(q, ids[i]));
		} else if (how == 1) {
			memcpy(&cr->vlease, p, 8);
			if (note(qpi_shmq_ack(q, ids[i])) == QP_OK) {
				record_got(p, got[i].len);
			}
			cr->vlease = UINT64_MAX;
		} else {
			uint64_t id;
			memcpy(&id, p, 8);
			if (id < MAXID) {
				cr->spare[id] = 1; /* the ack may be cut */
			}
		}
	}
	if (how == 2 && note(qpi_shmq_ack_many(q, ids, n, rcs)) == QP_OK) {
		for (size_t i = 0; i < n; i++) {
			const uint8_t *p = (const uint8_t *) buf + got[i].off;
			uint64_t id;
			if (rcs[i] == QP_OK) {
				record_got(p, got[i].len);
			}
			memcpy(&id, p, 8);
			if (id < MAXID) {
				cr->spare[id] = 0;
			}
		}
	}
	free(buf);
}

static void
victim(qpi_shmq *q, uint64_t seed)
{
	uint8_t *buf = malloc(MAXITEM);
	size_t len;

	rng = seed;
	qpi_shmq_test_hook = crash_hook;
	for (;;) {
		uint64_t op = rnd() % 13;
		if (op < 5) {
			do_put(q, buf, DEADLINE(5));
			continue;
		}
		__atomic_store_n(&cr->victim_getting, 1, __ATOMIC_SEQ_CST);
		if (op >= 10) {
			victim_batch(q, (int) (op - 10));
		} else if (op < 8) {
			memset(cr->vbuf, 0xff, 8);
			if (note(qpi_shmq_get(
			        q, 0, cr->vbuf, MAXITEM, NULL, &len, 0))
			    == QP_OK) {
				record_got(cr->vbuf, len);
			}
		} else {
			qpi_shmq_lease l;
			void *p;
			if (note(qpi_shmq_get_lease(q, (uint64_t) getpid(),
			        60000, 0, &p, &len, &l, 0))
			    == QP_OK) {
				memcpy(&cr->vlease, p, 8);
				/* Acked: delivered here. Released: it
				 * comes back for someone else. */
				if (op == 8
				    && note(qpi_shmq_ack(q, l.id)) == QP_OK) {
					record_got(p, len);
				} else if (op == 9) {
					note(qpi_shmq_release(q, l.id));
				}
				free(p);
				cr->vlease = UINT64_MAX;
			}
		}
		__atomic_store_n(&cr->victim_getting, 0, __ATOMIC_SEQ_CST);
	}
}

static void
survivor(qpi_shmq *q)
{
	uint8_t *buf = malloc(MAXITEM);
	size_t len;

	/* Dies with the test, should an assertion end it. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	while (!__atomic_load_n(&cr->stop, __ATOMIC_RELAXED)) {
		/* Neither call waits for the queue (an empty or full queue
		 * is no stall), only for its locks. */
		int rc = note(qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len, 0));
		if (rc == QP_OK) {
			record_got(buf, len);
		} else if (rc != QP_EEMPTY) {
			_exit(10 + rc);
		}
		rc = do_put(q, buf, 0);
		if (rc != QP_OK && rc != QP_EFULL && rc != QP_ELIMIT) {
			_exit(40 + rc);
		}
		__atomic_store_n(
		    &cr->survivor_ok_us, qu_now_us(), __ATOMIC_RELEASE);
		__atomic_add_fetch(&cr->survivor_ops, 1, __ATOMIC_RELEASE);
		struct timespec ts = {0, 200000};
		nanosleep(&ts, NULL);
	}
	_exit(0);
}

/* Takes every item left (leases first returned) and counts it. */
static void
drain(qpi_shmq *q)
{
	uint8_t *buf = malloc(MAXITEM);
	size_t len;

	assert_int_equal(qpi_shmq_release_all(q, NULL), QP_OK);
	while (qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len, 0) == QP_OK) {
		record_got(buf, len);
	}
	free(buf);
}

static void
test_shmq_crash_kill9_anywhere(void **state)
{
	const char *env = getenv("QP_CRASH_RUNS");
	int runs = env != NULL ? atoi(env) : 500;
	qpi_shmq_cfg c = {.capacity = 256 * 1024,
	    .lease_slots = 64,
	    .lease_bytes = 128 * 1024};
	uint64_t hits[NPOINTS] = {0};
	int64_t worst = 0;
	int slow = 0;
	qpi_shmq *q;

	cr = qu_shared(sizeof(*cr));
	assert_non_null(cr);
	cr->vput = cr->vlease = UINT64_MAX;
	qu_init();
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	pid_t surv = survivor_pid = fork();
	assert_true(surv >= 0);
	if (surv == 0) {
		survivor(q);
	}
	rng = (uint64_t) getpid() * 7919;
	for (int run = 0; run < runs; run++) {
		cr->victim_point = 0;
		pid_t v = victim_pid = fork();
		assert_true(v >= 0);
		if (v == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			victim(q, rnd());
		}
		struct timespec ts = {0, (long) (500 + rnd() % 6000) * 1000};
		nanosleep(&ts, NULL);
		kill(v, SIGKILL);
		int64_t tk = qu_now_us();
		assert_int_equal(qu_wait(v), 128 + SIGKILL);
		victim_pid = 0;
		int point
		    = __atomic_load_n(&cr->victim_point, __ATOMIC_RELAXED);
		hits[point >= 0 && point < NPOINTS ? point : 0]++;
		if (__atomic_load_n(&cr->victim_getting, __ATOMIC_SEQ_CST)) {
			/* The item the killed get held, if it got that far,
			 * may be gone: exactly that one. */
			uint64_t id;
			memcpy(&id, cr->vbuf, 8);
			if (id < MAXID) {
				cr->spare[id] = 1;
			}
			if (cr->vlease < MAXID) {
				cr->spare[cr->vlease] = 1;
			}
		}
		cr->victim_getting = 0;
		cr->vlease = UINT64_MAX;
		cr->vput = UINT64_MAX;
		/* Whoever notices a dead worker returns its leases. */
		int rro = qpi_shmq_release_owner(q, (uint64_t) v, NULL);
		if (rro != QP_OK) {
			fail_msg("run %d, killed at point %d: release_owner: "
			         "%s; first damage seen%s",
			    run, point, qp_errmsg(), cr->why);
		}
		/* The survivor goes on within 100 ms of the kill (300 ms
		 * under the sanitizers). */
		while (__atomic_load_n(&cr->survivor_ok_us, __ATOMIC_ACQUIRE)
		        <= tk
		    && qu_now_us() - tk < 2000000) {
			qu_sleep_ms(1);
		}
		int64_t gap
		    = __atomic_load_n(&cr->survivor_ok_us, __ATOMIC_ACQUIRE)
		    - tk;
		worst = gap > worst ? gap : worst;
		if (gap >= CRASH_STALL_US) {
			slow++;
			print_message("run %d: survivor stalled %lld us after "
			              "a kill at point %d\n",
			    run, (long long) gap, point);
		}
		if (gap >= CRASH_HARD_US || slow > runs / 100) {
			fail_msg(
			    "run %d: survivor stalled %lld us after a kill "
			    "at point %d (%d runs of %d over %d us)",
			    run, (long long) gap, point, slow, runs,
			    CRASH_STALL_US);
		}
		int rc = qpi_shmq_check(q);
		if (rc != QP_OK) {
			fail_msg(
			    "run %d, killed at point %d: %s; first damage "
			    "seen%s",
			    run, point, qp_errmsg(), cr->why);
		}
		assert_int_equal(cr->bad, 0);
	}
	cr->stop = 1;
	assert_int_equal(qu_wait(surv), 0);
	survivor_pid = 0;
	drain(q);
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qp_queue_stats st;
	assert_int_equal(qpi_shmq_stat(q, &st), QP_OK);
	assert_int_equal(st.items, 0);
	assert_int_equal(st.leased, 0);

	uint64_t put = 0, missing = 0, dup = 0, ghost = 0, spared = 0;
	uint64_t n = cr->next_id < MAXID ? cr->next_id : MAXID;
	for (uint64_t id = 0; id < n; id++) {
		bool committed
		    = cr->state[id] == ST_PUT || cr->state[id] == ST_COMMITTED;
		put += committed;
		dup += cr->got[id] > 1;
		if (committed && cr->got[id] == 0) {
			if (cr->spare[id]) {
				spared++;
			} else {
				missing++;
				print_message("item %llu (state %d) lost\n",
				    (unsigned long long) id, cr->state[id]);
			}
		}
		ghost += cr->state[id] == ST_NONE && cr->got[id] != 0;
	}
	print_message("crash: %d runs, %llu items committed, %llu taken by "
	              "killed gets, worst stall %lld us (%d runs over %d "
	              "us), kills by point:",
	    runs, (unsigned long long) put, (unsigned long long) spared,
	    (long long) worst, slow, CRASH_STALL_US);
	for (int i = 0; i < NPOINTS; i++) {
		if (hits[i]) {
			print_message(
			    " %d:%llu", i, (unsigned long long) hits[i]);
		}
	}
	print_message("\n");
	assert_int_equal(cr->bad, 0);
	assert_int_equal(dup, 0);
	assert_int_equal(ghost, 0);
	assert_int_equal(missing, 0);
	/* The kills landed inside the critical sections of puts and gets. */
	if (runs >= 200) {
		assert_true(hits[QPI_HOOK_PUT_LOCKED] > 0);
		assert_true(hits[QPI_HOOK_PUT_COPY] > 0);
		assert_true(hits[QPI_HOOK_PUT_COMMIT] > 0);
		assert_true(hits[QPI_HOOK_GET_LOCKED] > 0);
		assert_true(hits[QPI_HOOK_GET_COPY] > 0);
		assert_true(hits[QPI_HOOK_GET_COMMIT] > 0);
		assert_true(hits[QPI_HOOK_JOURNAL] > 0);
		assert_true(hits[QPI_HOOK_COMMIT] > 0);
		assert_true(hits[QPI_HOOK_APPLY] > 0);
	}
	qpi_shmq_free(q);
	munmap(cr, sizeof(*cr));
}

/* ---- a waker killed before its wake-up is delivered ----
 *
 * A put wakes one sleeping getter, a get wakes the sleeping putters, both
 * under their lock and before their commit. A waker killed after it chose
 * whom to wake but before the wake-up reached them dies holding the lock,
 * its change not made: nobody is owed anything, and the next waker (here
 * the parent) repairs the lock and wakes them. Each test puts sleepers to
 * sleep, lets another process die at that very point (the hook kills it
 * there), then acts and requires the sleepers to go on within 100 ms of
 * that act. */

#define WK_SLEEPERS 2
#define WK_LIMIT_US 100000

typedef struct wake_box {
	int64_t done_us[WK_SLEEPERS]; /* when each sleeper's call returned */
	uint64_t got[WK_SLEEPERS]; /* the item a sleeping getter got */
} wake_box;

static pid_t wk_pids[WK_SLEEPERS + 1];

static int
wake_teardown(void **state)
{
	(void) state;
	for (int i = 0; i < WK_SLEEPERS + 1; i++) {
		if (wk_pids[i] > 0) {
			kill(wk_pids[i], SIGKILL);
			waitpid(wk_pids[i], NULL, 0);
			wk_pids[i] = 0;
		}
	}
	return 0;
}

/* Kills the calling process right where a waker has chosen a sleeper. */
static void
die_at_wake(int point)
{
	if (point == QPI_HOOK_WAKE) {
		raise(SIGKILL);
	}
}

/* Waits (up to 2 s) until n getters (or putters) sleep in the queue, and
 * a moment more for them to be inside the kernel. */
static void
wait_sleepers(qpi_shmq *q, bool getters, uint64_t n)
{
	qp_queue_stats st;
	int64_t t0 = qu_now_us();

	do {
		assert_int_equal(qpi_shmq_stat(q, &st), QP_OK);
		if ((getters ? st.getters : st.putters) >= n) {
			break;
		}
		qu_sleep_ms(1);
	} while (qu_now_us() - t0 < 2000000);
	assert_true((getters ? st.getters : st.putters) >= n);
	qu_sleep_ms(20);
}

/* Forks a process that takes (get) or adds (put) one item and is killed
 * by the hook inside the wake-up that follows; checks it died there. */
static void
kill_in_wake(qpi_shmq *q, bool get, uint8_t *buf)
{
	pid_t w = wk_pids[WK_SLEEPERS] = fork();
	size_t len;

	assert_true(w >= 0);
	if (w == 0) {
		qpi_shmq_test_hook = die_at_wake;
		int rc = get ? qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len, 0)
		             : qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0);
		_exit(rc == QP_OK ? 0 : 1);
	}
	/* Killed by the hook: it had a sleeper to wake. */
	assert_int_equal(qu_wait(w), 128 + SIGKILL);
	wk_pids[WK_SLEEPERS] = 0;
}

/* A get that is killed while it wakes the blocked putters. */
static void
test_shmq_crash_getter_killed_waking_putters(void **state)
{
	qpi_shmq_cfg c = {.maxsize = 2, .capacity = 64 * 1024};
	wake_box *box = qu_shared(sizeof(*box));
	uint8_t *buf = malloc(MAXITEM);
	uint8_t seen[2 + WK_SLEEPERS] = {0};
	qpi_shmq *q;
	size_t len;
	uint64_t id = UINT64_MAX;

	(void) state;
	assert_non_null(box);
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	for (uint64_t i = 0; i < 2; i++) {
		qu_fill(buf, i, 100);
		assert_int_equal(
		    qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0), QP_OK);
	}
	for (int k = 0; k < WK_SLEEPERS; k++) {
		pid_t p = wk_pids[k] = fork();
		assert_true(p >= 0);
		if (p == 0) {
			qu_fill(buf, 2 + (uint64_t) k, 100);
			int rc = qpi_shmq_put(
			    q, buf, 100, QPI_ITEM_BIN, qpi_deadline_ns(2000));
			box->done_us[k] = qu_now_us();
			_exit(rc == QP_OK ? 0 : 1);
		}
	}
	wait_sleepers(q, false, WK_SLEEPERS);
	kill_in_wake(q, true, buf); /* died before it took item 0 */

	/* The parent's gets free room and must wake both putters; every
	 * item comes out once, item 0 first. */
	int64_t t0 = qu_now_us();
	for (int n = 0; n < 2 + WK_SLEEPERS; n++) {
		assert_int_equal(qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len,
		                     qpi_deadline_ns(3000)),
		    QP_OK);
		assert_true(qu_check(buf, len, &id));
		assert_true(id < 2 + WK_SLEEPERS && !seen[id]);
		assert_true(n > 0 || id == 0);
		seen[id] = 1;
	}
	for (int k = 0; k < WK_SLEEPERS; k++) {
		assert_int_equal(qu_wait(wk_pids[k]), 0);
		wk_pids[k] = 0;
		int64_t late = box->done_us[k] - t0;
		if (late >= WK_LIMIT_US) {
			fail_msg(
			    "putter %d returned %lld us after the next get", k,
			    (long long) late);
		}
	}
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
	munmap(box, sizeof(*box));
}

/* A put that is killed while it wakes the one blocked getter (before its
 * commit: its item is not in the queue): the next puts must wake it, and
 * it gets their two items. */
static void
test_shmq_crash_putter_killed_waking_getter(void **state)
{
	qpi_shmq_cfg c = {.capacity = 64 * 1024};
	wake_box *box = qu_shared(sizeof(*box));
	uint8_t *buf = malloc(MAXITEM);
	qpi_shmq *q;
	size_t len;

	(void) state;
	assert_non_null(box);
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	pid_t p = wk_pids[0] = fork();
	assert_true(p >= 0);
	if (p == 0) {
		int64_t deadline = qpi_deadline_ns(2000);
		for (int k = 0; k < 2; k++) {
			uint64_t id = UINT64_MAX;
			int rc = qpi_shmq_get(
			    q, 0, buf, MAXITEM, NULL, &len, deadline);
			box->done_us[k] = qu_now_us();
			if (rc != QP_OK || !qu_check(buf, len, &id)) {
				_exit(1);
			}
			box->got[k] = id;
		}
		_exit(0);
	}
	wait_sleepers(q, true, 1);
	qu_fill(buf, 7, 100);
	kill_in_wake(q, false, buf); /* died before it committed item 7 */

	/* The parent's puts must get the getter going. */
	int64_t t0 = qu_now_us();
	for (uint64_t id = 8; id <= 9; id++) {
		qu_fill(buf, id, 100);
		assert_int_equal(
		    qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0), QP_OK);
	}
	assert_int_equal(qu_wait(wk_pids[0]), 0);
	wk_pids[0] = 0;
	for (int k = 0; k < 2; k++) {
		int64_t late = box->done_us[k] - t0;
		if (late >= WK_LIMIT_US) {
			fail_msg("item %d was got %lld us after the next put",
			    k + 1, (long long) late);
		}
	}
	/* Items 8 and 9, in order. */
	assert_int_equal(box->got[0], 8);
	assert_int_equal(box->got[1], 9);
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
	munmap(box, sizeof(*box));
}

/* ---- a process killed after its commit, before it unlocked ----
 *
 * The waker commits (a put stamps its item, a get moves the head, a
 * task_done counts the task) and is killed at once, still holding the
 * queue's lock, while the only other process sleeps in the queue with a
 * long deadline. Nobody else touches the queue afterwards: the sleeper
 * alone must go on, within 100 ms of the kill. */

#define KC_DEADLINE_MS 10000

static int kc_point;

/* Kills the calling process at the hook point kc_point. */
static void
die_at_point(int point)
{
	if (point == kc_point) {
		raise(SIGKILL);
	}
}

/* Forks a process that runs op (0 put, 1 get, 2 task_done) on q and is
 * killed by the hook at point; returns when it died there (the kill's
 * time). */
static int64_t
kill_at(qpi_shmq *q, int op, int point, uint8_t *buf)
{
	pid_t w = wk_pids[WK_SLEEPERS] = fork();
	size_t len;

	assert_true(w >= 0);
	if (w == 0) {
		kc_point = point;
		qpi_shmq_test_hook = die_at_point;
		int rc = op == 0 ? qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0)
		    : op == 1 ? qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len, 0)
		              : qpi_shmq_task_done(q);
		_exit(rc == QP_OK ? 0 : 1);
	}
	assert_int_equal(qu_wait(w), 128 + SIGKILL);
	wk_pids[WK_SLEEPERS] = 0;
	return qu_now_us();
}

/* Fails unless the sleeper (wk_pids[0]) exited 0 within 100 ms of tk. */
static void
kc_check(wake_box *box, int64_t tk, const char *what, int point)
{
	assert_int_equal(qu_wait(wk_pids[0]), 0);
	wk_pids[0] = 0;
	int64_t late = box->done_us[0] - tk;
	if (late >= WK_LIMIT_US) {
		fail_msg("%s went on %lld us after the kill at point %d", what,
		    (long long) late, point);
	}
}

/* A getter sleeps on an empty queue; a put is killed after its stamp
 * (its commit) and after it moved the tail: the getter gets the item. */
static void
test_shmq_crash_put_killed_after_commit(void **state)
{
	static const int points[] = {QPI_HOOK_PUT_COMMIT, QPI_HOOK_DONE};
	wake_box *box = qu_shared(sizeof(*box));
	uint8_t *buf = malloc(MAXITEM);

	(void) state;
	assert_non_null(box);
	assert_non_null(buf);
	for (size_t k = 0; k < sizeof(points) / sizeof(points[0]); k++) {
		qpi_shmq_cfg c = {.capacity = 64 * 1024};
		qpi_shmq *q;
		size_t len;
		assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
		pid_t p = wk_pids[0] = fork();
		assert_true(p >= 0);
		if (p == 0) {
			uint64_t id = UINT64_MAX;
			int rc = qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len,
			    qpi_deadline_ns(KC_DEADLINE_MS));
			box->done_us[0] = qu_now_us();
			_exit(rc == QP_OK && qu_check(buf, len, &id) && id == 5
			        ? 0
			        : 1);
		}
		wait_sleepers(q, true, 1);
		qu_fill(buf, 5, 100);
		int64_t tk = kill_at(q, 0, points[k], buf);
		kc_check(box, tk, "the getter", points[k]);
		assert_int_equal(qpi_shmq_check(q), QP_OK);
		qpi_shmq_free(q);
	}
	free(buf);
	munmap(box, sizeof(*box));
}

/* A putter sleeps on a full queue; a get is killed after it took the
 * item (moved the head), still holding the lock: the putter puts. */
static void
test_shmq_crash_get_killed_after_commit(void **state)
{
	wake_box *box = qu_shared(sizeof(*box));
	uint8_t *buf = malloc(MAXITEM);
	qpi_shmq_cfg c = {.maxsize = 1, .capacity = 64 * 1024};
	qpi_shmq *q;
	size_t len;
	uint64_t id = UINT64_MAX;

	(void) state;
	assert_non_null(box);
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	qu_fill(buf, 1, 100);
	assert_int_equal(qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0), QP_OK);
	pid_t p = wk_pids[0] = fork();
	assert_true(p >= 0);
	if (p == 0) {
		qu_fill(buf, 2, 100);
		int rc = qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN,
		    qpi_deadline_ns(KC_DEADLINE_MS));
		box->done_us[0] = qu_now_us();
		_exit(rc == QP_OK ? 0 : 1);
	}
	wait_sleepers(q, false, 1);
	int64_t tk = kill_at(q, 1, QPI_HOOK_DONE, buf); /* took item 1 */
	kc_check(box, tk, "the putter", QPI_HOOK_DONE);
	assert_int_equal(
	    qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len, 0), QP_OK);
	assert_true(qu_check(buf, len, &id));
	assert_int_equal(id, 2);
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
	munmap(box, sizeof(*box));
}

/* A joiner sleeps; the task_done of the last task is killed right after
 * it counted it: the joiner returns. */
static void
test_shmq_crash_task_done_killed_after_commit(void **state)
{
	wake_box *box = qu_shared(sizeof(*box));
	uint8_t *buf = malloc(MAXITEM);
	qpi_shmq_cfg c = {.capacity = 64 * 1024};
	qpi_shmq *q;
	size_t len;

	(void) state;
	assert_non_null(box);
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	qu_fill(buf, 1, 100);
	assert_int_equal(qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(
	    qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len, 0), QP_OK);
	pid_t p = wk_pids[0] = fork();
	assert_true(p >= 0);
	if (p == 0) {
		int rc = qpi_shmq_join(q, qpi_deadline_ns(KC_DEADLINE_MS));
		box->done_us[0] = qu_now_us();
		_exit(rc == QP_OK ? 0 : 1);
	}
	qu_sleep_ms(50); /* the joiner sleeps at once */
	int64_t tk = kill_at(q, 2, QPI_HOOK_DONE, buf);
	kc_check(box, tk, "the joiner", QPI_HOOK_DONE);
	assert_int_equal(qpi_shmq_task_done(q), QP_EVALUE);
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
	munmap(box, sizeof(*box));
}

/* A getter sleeps while the only item is leased; the release that
 * returns it is killed once its journal is committed: the getter gets
 * it. */
static void
test_shmq_crash_release_killed_after_commit(void **state)
{
	wake_box *box = qu_shared(sizeof(*box));
	uint8_t *buf = malloc(MAXITEM);
	qpi_shmq_cfg c = {.capacity = 64 * 1024};
	qpi_shmq_lease l;
	qpi_shmq *q;
	size_t len;
	void *p0;

	(void) state;
	assert_non_null(box);
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	qu_fill(buf, 3, 100);
	assert_int_equal(qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(
	    qpi_shmq_get_lease(q, 1, -1, 0, &p0, &len, &l, 0), QP_OK);
	free(p0);
	pid_t p = wk_pids[0] = fork();
	assert_true(p >= 0);
	if (p == 0) {
		uint64_t id = UINT64_MAX;
		int rc = qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len,
		    qpi_deadline_ns(KC_DEADLINE_MS));
		box->done_us[0] = qu_now_us();
		_exit(
		    rc == QP_OK && qu_check(buf, len, &id) && id == 3 ? 0 : 1);
	}
	wait_sleepers(q, true, 1);
	pid_t w = wk_pids[WK_SLEEPERS] = fork();
	assert_true(w >= 0);
	if (w == 0) {
		kc_point = QPI_HOOK_COMMIT;
		qpi_shmq_test_hook = die_at_point;
		_exit(qpi_shmq_release(q, l.id) == QP_OK ? 0 : 1);
	}
	assert_int_equal(qu_wait(w), 128 + SIGKILL);
	wk_pids[WK_SLEEPERS] = 0;
	kc_check(box, qu_now_us(), "the getter", QPI_HOOK_COMMIT);
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
	munmap(box, sizeof(*box));
}

/* Forks two getters that sleep in q for item want: wk_pids[1] first
 * (the lower slot: woken first; hook set in it if not NULL), then
 * wk_pids[0]. Each exits 0 if it got item want. */
static void
two_sleeping_getters(
    qpi_shmq *q, wake_box *box, uint8_t *buf, uint64_t want, void (*hook)(int))
{
	for (int k = 1; k >= 0; k--) {
		pid_t p = wk_pids[k] = fork();
		assert_true(p >= 0);
		if (p == 0) {
			size_t len;
			uint64_t id = UINT64_MAX;
			if (k == 1) {
				qpi_shmq_test_hook = hook;
			}
			int rc = qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len,
			    qpi_deadline_ns(KC_DEADLINE_MS));
			box->done_us[k] = qu_now_us();
			_exit(rc == QP_OK && qu_check(buf, len, &id)
			            && id == want
			        ? 0
			        : 1);
		}
		wait_sleepers(q, true, 2 - (uint64_t) k);
	}
}

/* Two getters sleep; the first is killed in its sleep (its bit still
 * set), then a put is killed after its commit: the waker, finding nobody
 * on the dead getter's word, wakes the next, which gets the item within
 * 100 ms of the kill. */
static void
test_shmq_crash_dead_sleeper_skipped(void **state)
{
	wake_box *box = qu_shared(sizeof(*box));
	uint8_t *buf = malloc(MAXITEM);
	qpi_shmq_cfg c = {.capacity = 64 * 1024};
	qpi_shmq *q;

	(void) state;
	assert_non_null(box);
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	two_sleeping_getters(q, box, buf, 4, NULL);
	kill(wk_pids[1], SIGKILL);
	assert_int_equal(qu_wait(wk_pids[1]), 128 + SIGKILL);
	wk_pids[1] = 0;
	qu_fill(buf, 4, 100);
	int64_t tk = kill_at(q, 0, QPI_HOOK_DONE, buf);
	kc_check(box, tk, "the live getter", QPI_HOOK_DONE);
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
	munmap(box, sizeof(*box));
}

/* Stops the calling process for good where it holds the producer lock. */
static void
stall_locked(int point)
{
	if (point == QPI_HOOK_PUT_LOCKED) {
		for (;;) {
			pause();
		}
	}
}

/* A put stalls (stopped, say) while it holds the producer lock: a get
 * with a timeout, which before it sleeps waits for a put in flight,
 * still returns empty at its deadline. */
static void
test_shmq_crash_get_deadline_with_put_stalled(void **state)
{
	qpi_shmq_cfg c = {.capacity = 64 * 1024};
	uint8_t *buf = malloc(MAXITEM);
	qpi_shmq *q;
	size_t len;

	(void) state;
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	pid_t w = wk_pids[WK_SLEEPERS] = fork();
	assert_true(w >= 0);
	if (w == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		qpi_shmq_test_hook = stall_locked;
		qu_fill(buf, 1, 100);
		_exit(qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0) == QP_OK ? 0
		                                                          : 1);
	}
	qu_sleep_ms(50);
	int64_t t0 = qu_now_us();
	assert_int_equal(
	    qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len, qpi_deadline_ns(200)),
	    QP_EEMPTY);
	int64_t took = qu_now_us() - t0;
	assert_true(took >= 190000 && took < 1000000);
	/* The stalled put dies: its lock is repaired, nothing was put. */
	kill(w, SIGKILL);
	assert_int_equal(qu_wait(w), 128 + SIGKILL);
	wk_pids[WK_SLEEPERS] = 0;
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
}

/* A put stalls holding the producer lock (stopped, say) while a getter
 * goes to sleep: it waits for that put in flight. An item released from
 * a lease meanwhile (under the consumer lock) wakes it, and it takes that
 * item at once instead of waiting for the stalled put or its deadline. */
static void
test_shmq_crash_release_wakes_getter_behind_stalled_put(void **state)
{
	qpi_shmq_cfg c = {.capacity = 64 * 1024, .lease_slots = 8};
	wake_box *box = qu_shared(sizeof(*box));
	uint8_t *buf = malloc(MAXITEM);
	qpi_shmq *q;
	void *got = NULL;
	size_t len;
	qpi_shmq_lease l;

	(void) state;
	assert_non_null(box);
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	qu_fill(buf, 7, 100);
	assert_int_equal(qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(
	    qpi_shmq_get_lease(q, 42, 60000, 0, &got, &len, &l, 0), QP_OK);
	free(got);
	pid_t w = wk_pids[WK_SLEEPERS] = fork();
	assert_true(w >= 0);
	if (w == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		qpi_shmq_test_hook = stall_locked;
		qu_fill(buf, 1, 100);
		_exit(qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0) == QP_OK ? 0
		                                                          : 1);
	}
	qu_sleep_ms(50);
	pid_t g = wk_pids[0] = fork();
	assert_true(g >= 0);
	if (g == 0) {
		uint64_t id = UINT64_MAX;
		int rc = qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len,
		    qpi_deadline_ns(KC_DEADLINE_MS));
		box->done_us[0] = qu_now_us();
		_exit(
		    rc == QP_OK && qu_check(buf, len, &id) && id == 7 ? 0 : 1);
	}
	wait_sleepers(q, true, 1);
	int64_t t0 = qu_now_us();
	assert_int_equal(qpi_shmq_release(q, l.id), QP_OK);
	kc_check(box, t0, "the getter", 0);
	kill(w, SIGKILL);
	assert_int_equal(qu_wait(w), 128 + SIGKILL);
	wk_pids[WK_SLEEPERS] = 0;
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
	munmap(box, sizeof(*box));
}

/* A getter woken for an item is killed before it takes it (the kernel
 * delivered its wake-up; it never ran again), while a second getter
 * sleeps and nobody puts again: the second getter gets the item within
 * 100 ms of the put. */
static void
die_woken(int point)
{
	if (point == QPI_HOOK_WOKEN) {
		raise(SIGKILL);
	}
}

static void
test_shmq_crash_woken_getter_killed(void **state)
{
	wake_box *box = qu_shared(sizeof(*box));
	uint8_t *buf = malloc(MAXITEM);
	qpi_shmq_cfg c = {.capacity = 64 * 1024};
	qpi_shmq *q;

	(void) state;
	assert_non_null(box);
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	/* The first getter dies when it is woken. */
	two_sleeping_getters(q, box, buf, 6, die_woken);
	qu_fill(buf, 6, 100);
	int64_t tp = qu_now_us();
	assert_int_equal(qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(qu_wait(wk_pids[1]), 128 + SIGKILL);
	wk_pids[1] = 0;
	kc_check(box, tp, "the other getter", QPI_HOOK_WOKEN);
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
	munmap(box, sizeof(*box));
}

/* ---- a process killed as a lock is handed to it ----
 *
 * An unlock wakes one waiter in the kernel. If that waiter is killed at
 * that instant, the wake-up dies with it, and the other waiters sleep on
 * a lock that is free. The instant is too short to hit on purpose, so a
 * stand-in plays the dying waiter: it marks the lock as waited for,
 * sleeps on it first in line, and exits as soon as it is woken. */

typedef struct lk_box {
	uint32_t held; /* the put holds the producer lock */
	uint32_t go; /* let it go on */
	int64_t done_us; /* when the waiting put returned */
} lk_box;

static lk_box *lk;

/* Holds the producer lock until lk->go (10 s at most). */
static void
hold_locked(int point)
{
	if (point == QPI_HOOK_PUT_LOCKED) {
		__atomic_store_n(&lk->held, 1, __ATOMIC_SEQ_CST);
		for (int i = 0;
		     i < 10000 && !__atomic_load_n(&lk->go, __ATOMIC_SEQ_CST);
		     i++) {
			qu_sleep_ms(1);
		}
	}
}

static void
test_shmq_crash_lock_waiter_killed(void **state)
{
	qpi_shmq_cfg c = {.capacity = 64 * 1024};
	uint8_t *buf = malloc(MAXITEM);
	qpi_shmq *q;
	int st = -1;

	(void) state;
	lk = qu_shared(sizeof(*lk));
	assert_non_null(lk);
	assert_non_null(buf);
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	qu_fill(buf, 1, 100);
	/* The holder: a put that stops with the lock held. */
	pid_t h = wk_pids[0] = fork();
	assert_true(h >= 0);
	if (h == 0) {
		qpi_shmq_test_hook = hold_locked;
		_exit(qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN, 0) == QP_OK ? 0
		                                                          : 1);
	}
	for (int i = 0; i < 2000 && !__atomic_load_n(&lk->held, 0); i++) {
		qu_sleep_ms(1);
	}
	assert_true(__atomic_load_n(&lk->held, __ATOMIC_SEQ_CST));
	/* The stand-in for the dying waiter, first in line. */
	pid_t d = wk_pids[1] = fork();
	assert_true(d >= 0);
	if (d == 0) {
		uint32_t *w
		    = (uint32_t *) &qpi_shmq_test_lock(q, true)->__data.__lock;
		uint32_t v = __atomic_load_n(w, __ATOMIC_SEQ_CST);
		while (v != 0
		    && !__atomic_compare_exchange_n(w, &v, v | FUTEX_WAITERS,
		        false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
		}
		if (v == 0) {
			_exit(2);
		}
		syscall(SYS_futex, w, FUTEX_WAIT, v | FUTEX_WAITERS, NULL,
		    NULL, 0);
		_exit(0);
	}
	assert_true(qu_in_futex(d));
	/* A put that waits for the lock, second in line. */
	pid_t p = wk_pids[2] = fork();
	assert_true(p >= 0);
	if (p == 0) {
		qu_fill(buf, 2, 100);
		int rc = qpi_shmq_put(q, buf, 100, QPI_ITEM_BIN,
		    qpi_deadline_ns(KC_DEADLINE_MS));
		lk->done_us = qu_now_us();
		_exit(rc == QP_OK ? 0 : 1);
	}
	assert_true(qu_in_futex(p));
	int64_t t0 = qu_now_us();
	__atomic_store_n(&lk->go, 1, __ATOMIC_SEQ_CST);
	assert_int_equal(qu_wait(h), 0);
	wk_pids[0] = 0;
	assert_int_equal(qu_wait(d), 0); /* the unlock woke it */
	wk_pids[1] = 0;
	/* The second put must go on (up to 3 s here; it must take less
	 * than 100 ms). */
	for (int i = 0; i < 3000; i++) {
		if (waitpid(p, &st, WNOHANG) == p) {
			wk_pids[2] = 0;
			break;
		}
		qu_sleep_ms(1);
	}
	if (wk_pids[2] != 0) {
		fail_msg("a put waited on a free lock for 3 s");
	}
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	int64_t late = lk->done_us - t0;
	if (late >= WK_LIMIT_US) {
		fail_msg("the waiting put went on %lld us after the unlock",
		    (long long) late);
	}
	uint64_t n = 0;
	assert_int_equal(qpi_shmq_qsize(q, &n), QP_OK);
	assert_int_equal(n, 2);
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
	free(buf);
	munmap(lk, sizeof(*lk));
}

/* A put killed after it stamped an item that starts the ring's next lap
 * (a pad ends the lap before it), before it moved the tail: a getter
 * takes that item at once, so the head is ahead of the tail when the
 * next put repairs the producer side. The repair moves the tail over the
 * pad and the item (it used to stop at the pad, leaving the tail behind
 * the head for later puts to write over), and the queue goes on. */
static void
test_shmq_crash_put_killed_after_wrap_taken(void **state)
{
	qpi_shmq_cfg c = {.capacity = 64 * 1024};
	uint8_t *buf = malloc(65536);
	uint64_t id = UINT64_MAX;
	qpi_shmq *q;
	size_t len;

	(void) state;
	assert_non_null(buf);
	qu_init();
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	/* One item that ends 1000 bytes before the ring's end, taken. */
	assert_int_equal(
	    qpi_shmq_put(q, buf, 65536 - 1000 - 40, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(qpi_shmq_get(q, 0, buf, 65536, NULL, &len, 0), QP_OK);
	pid_t w = fork();
	assert_true(w >= 0);
	if (w == 0) {
		kc_point = QPI_HOOK_PUT_COMMIT;
		qpi_shmq_test_hook = die_at_point;
		qu_fill(buf, 7, 2000);
		_exit(qpi_shmq_put(q, buf, 2000, QPI_ITEM_BIN, 0) == QP_OK
		        ? 0
		        : 1);
	}
	assert_int_equal(qu_wait(w), 128 + SIGKILL);
	assert_int_equal(qpi_shmq_get(q, 0, buf, 65536, NULL, &len, 0), QP_OK);
	assert_true(qu_check(buf, len, &id));
	assert_int_equal(id, 7);
	for (uint64_t i = 8; i < 40; i++) {
		qu_fill(buf, i, 3000);
		assert_int_equal(
		    qpi_shmq_put(q, buf, 3000, QPI_ITEM_BIN, 0), QP_OK);
		if (qpi_shmq_check(q) != QP_OK) {
			fail_msg("after put %d: %s", (int) i, qp_errmsg());
		}
		assert_int_equal(
		    qpi_shmq_get(q, 0, buf, 65536, NULL, &len, 0), QP_OK);
		assert_true(qu_check(buf, len, &id));
		assert_int_equal(id, i);
	}
	qpi_shmq_free(q);
	free(buf);
}

/* ---- a batch killed midway ----
 *
 * A process takes a batch of 60 items and is killed at the third pass of
 * one hook point. A plain batch took the items it committed, in order,
 * and left the rest at the head; a lease batch left every item leased to
 * the dead process or in the queue, and they all come back in order once
 * its leases are released. The queue checks out either way. */

static int bk_point, bk_hits;

static void
die_at_third(int point)
{
	if (point == bk_point && ++bk_hits == 3) {
		raise(SIGKILL);
	}
}

/* A queue of 60 items, ids 0 to 59 (some span lease-area blocks). */
static qpi_shmq *
bk_queue(uint8_t *buf)
{
	qpi_shmq_cfg c = {.capacity = 1 << 20, .lease_slots = 128};
	qpi_shmq *q;

	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	for (uint64_t id = 0; id < 60; id++) {
		size_t l = id % 7 == 0 ? 1500 : 100;
		qu_fill(buf, id, l);
		assert_int_equal(
		    qpi_shmq_put(q, buf, l, QPI_ITEM_BIN, 0), QP_OK);
	}
	return q;
}

/* After the dead process's leases are back: the items from want on are
 * all there, in order, and the queue checks out. */
static void
bk_drain(qpi_shmq *q, uint8_t *buf, uint64_t want, int point)
{
	uint64_t id = UINT64_MAX;
	size_t len;

	if (qpi_shmq_check(q) != QP_OK) {
		fail_msg("point %d: %s", point, qp_errmsg());
	}
	while (qpi_shmq_get(q, 0, buf, MAXITEM, NULL, &len, 0) == QP_OK) {
		assert_true(qu_check(buf, len, &id));
		assert_int_equal(id, want);
		want++;
	}
	assert_int_equal(want, 60);
	assert_int_equal(qpi_shmq_check(q), QP_OK);
	qpi_shmq_free(q);
}

static void
test_shmq_crash_batch_killed_midway(void **state)
{
	static const int plain_pts[]
	    = {QPI_HOOK_GET_COPY, QPI_HOOK_GET_COMMIT};
	static const int lease_pts[] = {QPI_HOOK_GET_COPY, QPI_HOOK_JOURNAL,
	    QPI_HOOK_COMMIT, QPI_HOOK_APPLY, QPI_HOOK_DONE};
	uint8_t *buf = malloc(MAXITEM);

	(void) state;
	assert_non_null(buf);
	qu_init();
	for (int lease = 0; lease < 2; lease++) {
		const int *pts = lease ? lease_pts : plain_pts;
		size_t npts = lease ? 5 : 2;
		for (size_t k = 0; k < npts; k++) {
			qpi_shmq_got got[60];
			qpi_shmq *q = bk_queue(buf);
			size_t n;
			void *out;
			pid_t w = fork();
			assert_true(w >= 0);
			if (w == 0) {
				bk_point = pts[k];
				qpi_shmq_test_hook = die_at_third;
				int rc = lease ? qpi_shmq_get_lease_many(q,
				             (uint64_t) getpid(), -1, 0, 60, 0,
				             &out, got, &n, 0)
				               : qpi_shmq_get_many(q, 0, 60, 0,
				                   &out, got, &n, 0);
				_exit(rc == QP_OK ? 0 : 1);
			}
			assert_int_equal(qu_wait(w), 128 + SIGKILL);
			if (lease) {
				assert_int_equal(qpi_shmq_release_owner(
				                     q, (uint64_t) w, NULL),
				    QP_OK);
			}
			/* Plain: the two items committed before the third
			 * pass are gone; lease: none. */
			bk_drain(q, buf, lease ? 0 : 2, pts[k]);
		}
	}
	free(buf);
}

/* A batch of acks killed midway: the acks its commits covered are done
 * (the third commit of 9 acks each: 18 before its journal is committed,
 * 27 once it is), the other leases stay held by the dead process and come
 * back, in order, when its leases are released. */
static void
test_shmq_crash_ack_batch_killed_midway(void **state)
{
	static const int pts[] = {QPI_HOOK_JOURNAL, QPI_HOOK_COMMIT};
	static const uint64_t gone[] = {18, 27};
	uint8_t *buf = malloc(MAXITEM);

	(void) state;
	assert_non_null(buf);
	qu_init();
	for (size_t k = 0; k < 2; k++) {
		qpi_shmq *q = bk_queue(buf);
		pid_t w = fork();
		assert_true(w >= 0);
		if (w == 0) {
			qpi_shmq_got got[60];
			uint64_t ids[60];
			int rcs[60];
			size_t n;
			void *out;
			if (qpi_shmq_get_lease_many(q, (uint64_t) getpid(), -1,
			        0, 60, 0, &out, got, &n, 0)
			        != QP_OK
			    || n != 60) {
				_exit(2);
			}
			for (size_t i = 0; i < n; i++) {
				ids[i] = got[i].lease.id;
			}
			bk_point = pts[k];
			qpi_shmq_test_hook = die_at_third;
			_exit(qpi_shmq_ack_many(q, ids, n, rcs) == QP_OK ? 0
			                                                 : 1);
		}
		assert_int_equal(qu_wait(w), 128 + SIGKILL);
		assert_int_equal(
		    qpi_shmq_release_owner(q, (uint64_t) w, NULL), QP_OK);
		bk_drain(q, buf, gone[k], pts[k]);
	}
	free(buf);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(
	        test_shmq_crash_kill9_anywhere, crash_teardown),
	    cmocka_unit_test(test_shmq_crash_batch_killed_midway),
	    cmocka_unit_test(test_shmq_crash_ack_batch_killed_midway),
	    cmocka_unit_test(test_shmq_crash_put_killed_after_wrap_taken),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_getter_killed_waking_putters, wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_putter_killed_waking_getter, wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_put_killed_after_commit, wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_get_killed_after_commit, wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_task_done_killed_after_commit, wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_release_killed_after_commit, wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_dead_sleeper_skipped, wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_get_deadline_with_put_stalled, wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_release_wakes_getter_behind_stalled_put,
	        wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_woken_getter_killed, wake_teardown),
	    cmocka_unit_test_teardown(
	        test_shmq_crash_lock_waiter_killed, wake_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
