/*
 * test_shmlease.c - worker mode (QP_OPEN_LEASE) on shared-memory queues,
 * through the public API only: a worker killed with kill -9 while it holds
 * an item (the item comes back, delivered twice, nothing lost or doubled),
 * also to a worker that was waiting already; nack at once and after a
 * delay; task_done and nack without an item; close with items held;
 * lease expiry, and touch keeping an item past it; plain handles on the same
 * queue; anonymous queues across fork(). Children report through their exit
 * status (0 = as expected).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qpipe.h"

static char sl_addr[64];

static int
sl_setup(void **state)
{
	static int n;

	(void) state;
	snprintf(sl_addr, sizeof(sl_addr), "shm://t-shmlease-%d-%d",
	    (int) getpid(), n++);
	qp_queue_unlink(sl_addr);
	return 0;
}

static int
sl_teardown(void **state)
{
	(void) state;
	qp_queue_unlink(sl_addr);
	return 0;
}

static int64_t
sl_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Opens sl_addr (created if missing) in worker mode or plain; NULL if
 * that fails (for children, which must not assert). */
static qp_queue *
sl_try_open(bool lease, uint64_t lease_ms)
{
	qp_queue_opts o = {.flags = QP_OPEN_CREATE, .lease_ms = lease_ms};
	qp_queue *q = NULL;

	if (lease) {
		o.flags |= QP_OPEN_LEASE;
	}
	if (qp_queue_open(&q, sl_addr, &o) != QP_OK) {
		fprintf(stderr, "open %s: %s\n", sl_addr, qp_errmsg());
		return NULL;
	}
	return q;
}

static qp_queue *
sl_open(bool lease, uint64_t lease_ms)
{
	qp_queue *q = sl_try_open(lease, lease_ms);

	assert_non_null(q);
	return q;
}

static void
sl_put(qp_queue *q, const char *s)
{
	assert_int_equal(qp_queue_put(q, s, strlen(s), QP_NOWAIT), QP_OK);
}

/* Gets an item: true if it is s, delivered deliv times (0: not checked). */
static bool
sl_got(qp_queue *q, const char *s, uint32_t deliv, qp_duration t)
{
	void *buf = NULL;
	size_t len = 0;
	uint32_t d = 0;
	bool ok;

	if (qp_queue_get(q, &buf, &len, t) != QP_OK) {
		fprintf(stderr, "get: %s\n", qp_errmsg());
		return false;
	}
	ok = len == strlen(s) && memcmp(buf, s, len) == 0;
	if (!ok) {
		fprintf(stderr, "got '%.*s', not '%s'\n", (int) len,
		    (char *) buf, s);
	}
	qp_free(buf);
	if (deliv != 0) {
		if (qp_queue_deliveries(q, &d) != QP_OK || d != deliv) {
			fprintf(stderr, "'%s' delivered %u times, not %u\n", s,
			    (unsigned) d, (unsigned) deliv);
			ok = false;
		}
	}
	return ok;
}

static void
sl_get(qp_queue *q, const char *s, uint32_t deliv, qp_duration t)
{
	assert_true(sl_got(q, s, deliv, t));
}

static uint64_t
sl_stat(qp_queue *q, uint64_t *leasedp)
{
	qp_queue_stats st;

	assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	if (leasedp != NULL) {
		*leasedp = st.leased;
	}
	return st.items;
}

/* Forks a child that opens sl_addr in worker mode (or uses q if not
 * NULL), takes one item, writes it to a pipe and then waits to be
 * killed (30 s at most); *fdp gets the pipe's reading end. */
static pid_t
sl_holder(qp_queue *q, int *fdp)
{
	int fds[2];

	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		qp_queue *w = q != NULL ? q : sl_try_open(true, 0);
		void *buf;
		size_t len;
		close(fds[0]);
		if (w == NULL || qp_queue_get(w, &buf, &len, 5000) != QP_OK
		    || write(fds[1], buf, len) != (ssize_t) len) {
			_exit(1);
		}
		for (int i = 0; i < 300; i++) {
			usleep(100000);
		}
		_exit(2);
	}
	close(fds[1]);
	*fdp = fds[0];
	return pid;
}

/* Reads what the holder took (end of file if it failed) and closes fd. */
static void
sl_took(int fd, const char *s)
{
	char buf[64] = {0};
	ssize_t n = read(fd, buf, sizeof(buf) - 1);

	close(fd);
	assert_true(n > 0);
	assert_string_equal(buf, s);
}

static void
sl_kill(pid_t pid)
{
	int st;

	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st));
}

/* A worker killed with -9 while it holds an item: the next worker gets
 * that item first, delivered twice; every item once, none lost. */
static void
test_shmlease_kill9_redelivers(void **state)
{
	(void) state;
	qp_queue *p = sl_open(false, 0);
	int fd;

	sl_put(p, "a");
	sl_put(p, "b");
	sl_put(p, "c");
	pid_t pid = sl_holder(NULL, &fd);
	sl_took(fd, "a");
	uint64_t leased;
	assert_int_equal(sl_stat(p, &leased), 2);
	assert_int_equal(leased, 1);
	sl_kill(pid);

	qp_queue *w = sl_open(true, 0);
	sl_get(w, "a", 2, QP_NOWAIT);
	assert_int_equal(qp_queue_task_done(w), QP_OK);
	sl_get(w, "b", 1, QP_NOWAIT);
	assert_int_equal(qp_queue_task_done(w), QP_OK);
	sl_get(w, "c", 1, QP_NOWAIT);
	assert_int_equal(qp_queue_task_done(w), QP_OK);
	void *buf;
	size_t len;
	assert_int_equal(qp_queue_get(w, &buf, &len, QP_NOWAIT), QP_EEMPTY);
	assert_int_equal(sl_stat(p, &leased), 0);
	assert_int_equal(leased, 0);
	/* Each confirmation counted as task_done: join returns. */
	assert_int_equal(qp_queue_join(p, QP_NOWAIT), QP_OK);
	qp_queue_free(w);
	qp_queue_free(p);
}

/* A worker that waits already (blocked in its get) takes the item of a
 * worker killed meanwhile, without a get of its own first. */
static void
test_shmlease_waiting_worker_takes_over(void **state)
{
	(void) state;
	qp_queue *p = sl_open(false, 0);
	int fd;

	sl_put(p, "job");
	pid_t holder = sl_holder(NULL, &fd);
	sl_took(fd, "job");

	pid_t waiter = fork();
	assert_true(waiter >= 0);
	if (waiter == 0) {
		qp_queue *w = sl_try_open(true, 0);
		bool ok = w != NULL && sl_got(w, "job", 2, 10000)
		    && qp_queue_task_done(w) == QP_OK;
		qp_queue_free(w);
		_exit(ok ? 0 : 1);
	}
	/* Until the waiter sleeps in its get. */
	qp_queue_stats st = {0};
	for (int i = 0; i < 500 && st.getters == 0; i++) {
		assert_int_equal(qp_queue_stat(p, &st), QP_OK);
		usleep(10000);
	}
	assert_int_equal(st.getters, 1);
	int64_t t0 = sl_now_ms();
	sl_kill(holder);
	int status;
	assert_int_equal(waitpid(waiter, &status, 0), waiter);
	int64_t dt = sl_now_ms() - t0;
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	/* The waiter looks for dead holders every 250 ms. */
	assert_true(dt < 2000);
	uint64_t leased;
	assert_int_equal(sl_stat(p, &leased), 0);
	assert_int_equal(leased, 0);
	qp_queue_free(p);
}

/* nack(0) puts the oldest held item back at the head, delivered once
 * more; nack(delay) holds it back for the delay first. */
static void
test_shmlease_nack_returns_to_head(void **state)
{
	(void) state;
	qp_queue *w = sl_open(true, 0);
	qp_queue *p = sl_open(false, 0);
	uint64_t leased;

	sl_put(p, "a");
	sl_put(p, "b");
	sl_get(w, "a", 1, QP_NOWAIT);
	assert_int_equal(sl_stat(p, &leased), 1);
	assert_int_equal(leased, 1);
	assert_int_equal(qp_queue_nack(w, 0), QP_OK);
	assert_int_equal(sl_stat(p, &leased), 2);
	assert_int_equal(leased, 0);
	/* Nothing held now. */
	uint32_t d;
	assert_int_equal(qp_queue_deliveries(w, &d), QP_ENOENT);
	assert_int_equal(qp_queue_nack(w, 0), QP_ENOENT);
	sl_get(w, "a", 2, QP_NOWAIT);
	assert_int_equal(qp_queue_task_done(w), QP_OK);

	/* A delay: not back before it, back after it. */
	sl_get(w, "b", 1, QP_NOWAIT);
	assert_int_equal(qp_queue_nack(w, -1), QP_EINVAL);
	int64_t t0 = sl_now_ms();
	assert_int_equal(qp_queue_nack(w, 300), QP_OK);
	void *buf;
	size_t len;
	assert_int_equal(qp_queue_get(w, &buf, &len, QP_NOWAIT), QP_EEMPTY);
	assert_int_equal(sl_stat(p, &leased), 0);
	assert_int_equal(leased, 1);
	sl_get(w, "b", 2, 5000);
	int64_t dt = sl_now_ms() - t0;
	assert_true(dt >= 290);
	assert_true(dt < 2000);
	assert_int_equal(qp_queue_task_done(w), QP_OK);
	assert_int_equal(sl_stat(p, &leased), 0);
	assert_int_equal(leased, 0);
	qp_queue_free(w);
	qp_queue_free(p);
}

/* task_done and nack with nothing held fail as on a remote queue; a plain
 * handle has no nack and counts no deliveries. */
static void
test_shmlease_nothing_held_errors(void **state)
{
	(void) state;
	qp_queue *w = sl_open(true, 0);
	qp_queue *p = sl_open(false, 0);
	uint32_t d;

	assert_int_equal(qp_queue_task_done(w), QP_EVALUE);
	assert_int_equal(qp_queue_nack(w, 0), QP_ENOENT);
	assert_int_equal(qp_queue_deliveries(w, &d), QP_ENOENT);
	/* An item put is not one held: still an error. */
	sl_put(p, "x");
	assert_int_equal(qp_queue_task_done(w), QP_EVALUE);
	assert_int_equal(sl_stat(p, NULL), 1);
	assert_int_equal(qp_queue_nack(p, 0), QP_EINVAL);
	assert_int_equal(qp_queue_deliveries(p, &d), QP_ENOTSUP);
	/* A task_done after the item's confirmation: nothing held. */
	sl_get(w, "x", 1, QP_NOWAIT);
	assert_int_equal(qp_queue_task_done(w), QP_OK);
	assert_int_equal(qp_queue_task_done(w), QP_EVALUE);
	qp_queue_free(w);
	qp_queue_free(p);
}

/* close gives back every item held, and one waiting out a nack's delay;
 * they come first, in their order, delivered once more. */
static void
test_shmlease_close_gives_back(void **state)
{
	(void) state;
	qp_queue *w = sl_open(true, 0);
	qp_queue *p = sl_open(false, 0);
	uint64_t leased;

	sl_put(p, "a");
	sl_put(p, "b");
	sl_put(p, "c");
	sl_put(p, "d");
	sl_get(w, "a", 1, QP_NOWAIT);
	sl_get(w, "b", 1, QP_NOWAIT);
	sl_get(w, "c", 1, QP_NOWAIT);
	assert_int_equal(qp_queue_nack(w, 60000), QP_OK); /* a */
	assert_int_equal(sl_stat(p, &leased), 1);
	assert_int_equal(leased, 3);
	assert_int_equal(qp_queue_close(w), QP_OK);
	assert_int_equal(qp_queue_task_done(w), QP_ECLOSED);
	assert_int_equal(sl_stat(p, &leased), 4);
	assert_int_equal(leased, 0);
	qp_queue_free(w);

	/* (deliveries tells of the oldest item held: each is confirmed.) */
	qp_queue *w2 = sl_open(true, 0);
	sl_get(w2, "a", 2, QP_NOWAIT);
	assert_int_equal(qp_queue_task_done(w2), QP_OK);
	sl_get(w2, "b", 2, QP_NOWAIT);
	assert_int_equal(qp_queue_task_done(w2), QP_OK);
	sl_get(w2, "c", 2, QP_NOWAIT);
	assert_int_equal(qp_queue_task_done(w2), QP_OK);
	sl_get(w2, "d", 1, QP_NOWAIT);
	assert_int_equal(qp_queue_task_done(w2), QP_OK);
	/* free closes too. */
	sl_put(p, "e");
	sl_get(w2, "e", 1, QP_NOWAIT);
	qp_queue_free(w2);
	assert_int_equal(sl_stat(p, &leased), 1);
	assert_int_equal(leased, 0);
	sl_get(p, "e", 0, QP_NOWAIT);
	qp_queue_free(p);
}

/* A lease that runs out gives the item back; its late task_done says so
 * and changes nothing. */
static void
test_shmlease_lease_expires(void **state)
{
	(void) state;
	qp_queue *w1 = sl_open(true, 200);
	qp_queue *w2 = sl_open(true, 0);
	qp_queue *p = sl_open(false, 0);
	uint64_t leased;

	sl_put(p, "a");
	int64_t t0 = sl_now_ms();
	sl_get(w1, "a", 1, QP_NOWAIT);
	sl_get(w2, "a", 2, 5000);
	int64_t dt = sl_now_ms() - t0;
	assert_true(dt >= 190);
	assert_true(dt < 2000);
	assert_int_equal(qp_queue_task_done(w1), QP_ENOENT);
	assert_int_equal(qp_queue_task_done(w1), QP_EVALUE);
	assert_int_equal(qp_queue_task_done(w2), QP_OK);
	assert_int_equal(sl_stat(p, &leased), 0);
	assert_int_equal(leased, 0);
	assert_int_equal(qp_queue_join(p, QP_NOWAIT), QP_OK);
	qp_queue_free(w1);
	qp_queue_free(w2);
	qp_queue_free(p);
}

/* A holder with a 1 s lease that touches every 200 ms keeps its item
 * for a second: a second worker gets nothing meanwhile, then task_done
 * confirms it. Untouched, the item goes to the other worker after its
 * lease. */
static void
test_shmlease_touch_keeps_item(void **state)
{
	(void) state;
	/* A 1 s lease touched every 200 ms: a stall of up to 800 ms on a
	 * busy machine still keeps it. */
	qp_queue *w1 = sl_open(true, 1000);
	qp_queue *w2 = sl_open(true, 0);
	qp_queue *p = sl_open(false, 0);
	void *buf = NULL;
	size_t len;
	uint64_t leased;

	sl_put(p, "long");
	sl_get(w1, "long", 1, QP_NOWAIT);
	int64_t t0 = sl_now_ms();
	for (int i = 0; i < 8; i++) {
		assert_int_equal(qp_queue_touch(w1, 0), QP_OK);
		/* A worker-mode get sweeps expired leases as it waits. */
		assert_int_equal(qp_queue_get(w2, &buf, &len, 200), QP_EEMPTY);
	}
	assert_true(sl_now_ms() - t0 >= 1600);
	assert_int_equal(sl_stat(p, &leased), 0);
	assert_int_equal(leased, 1);
	assert_int_equal(qp_queue_task_done(w1), QP_OK);
	assert_int_equal(qp_queue_get(w2, &buf, &len, 400), QP_EEMPTY);
	assert_int_equal(qp_queue_join(p, QP_NOWAIT), QP_OK);
	/* An explicit lease: 2.5 s from now, past the handle's 1 s. */
	sl_put(p, "longer");
	sl_get(w1, "longer", 1, QP_NOWAIT);
	assert_int_equal(qp_queue_touch(w1, 2500), QP_OK);
	assert_int_equal(qp_queue_get(w2, &buf, &len, 1300), QP_EEMPTY);
	assert_int_equal(qp_queue_task_done(w1), QP_OK);
	/* Not touched: back after about 1 s, to the other worker. */
	sl_put(p, "short");
	sl_get(w1, "short", 1, QP_NOWAIT);
	t0 = sl_now_ms();
	sl_get(w2, "short", 2, 5000);
	assert_true(sl_now_ms() - t0 >= 900);
	/* Too late: the touch and the task_done of w1 say so. */
	assert_int_equal(qp_queue_touch(w1, 0), QP_ENOENT);
	assert_non_null(strstr(qp_errmsg(), "run out"));
	assert_int_equal(qp_queue_task_done(w1), QP_ENOENT);
	assert_int_equal(qp_queue_task_done(w2), QP_OK);
	assert_int_equal(qp_queue_join(p, QP_NOWAIT), QP_OK);
	qp_queue_free(w1);
	qp_queue_free(w2);
	qp_queue_free(p);
}

/* touch: worker mode only, something held, a lease within 0..2^31-1, an
 * open handle. */
static void
test_shmlease_touch_errors(void **state)
{
	(void) state;
	qp_queue *w = sl_open(true, 0);
	qp_queue *p = sl_open(false, 0);

	assert_int_equal(qp_queue_touch(NULL, 0), QP_EINVAL);
	assert_int_equal(qp_queue_touch(p, 0), QP_EINVAL);
	assert_int_equal(qp_queue_touch(w, 0), QP_ENOENT);
	sl_put(p, "x");
	assert_int_equal(qp_queue_touch(w, 0), QP_ENOENT);
	sl_get(w, "x", 1, QP_NOWAIT);
	assert_int_equal(qp_queue_touch(w, -1), QP_EINVAL);
	assert_int_equal(
	    qp_queue_touch(w, (qp_duration) INT32_MAX + 1), QP_EINVAL);
	assert_int_equal(qp_queue_touch(w, 0), QP_OK);
	assert_int_equal(qp_queue_task_done(w), QP_OK);
	assert_int_equal(qp_queue_touch(w, 0), QP_ENOENT);
	assert_int_equal(qp_queue_close(w), QP_OK);
	assert_int_equal(qp_queue_touch(w, 0), QP_ECLOSED);
	qp_queue_free(w);
	qp_queue_free(p);
}

/* Plain handles on the same queue: their gets take items for good (none
 * leased), and they take items a worker gave back. */
static void
test_shmlease_plain_handles_unaffected(void **state)
{
	(void) state;
	qp_queue *w = sl_open(true, 0);
	qp_queue *p = sl_open(false, 0);
	uint64_t leased;

	sl_put(p, "a");
	sl_put(p, "b");
	sl_put(p, "c");
	sl_get(p, "a", 0, QP_NOWAIT);
	assert_int_equal(sl_stat(p, &leased), 2);
	assert_int_equal(leased, 0);
	sl_get(w, "b", 1, QP_NOWAIT);
	assert_int_equal(qp_queue_nack(w, 0), QP_OK);
	sl_get(p, "b", 0, QP_NOWAIT);
	sl_get(p, "c", 0, QP_NOWAIT);
	assert_int_equal(sl_stat(p, &leased), 0);
	assert_int_equal(leased, 0);
	/* JoinableQueue on the plain handle, as before. */
	assert_int_equal(qp_queue_join(p, QP_NOWAIT), QP_ETIMEDOUT);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(qp_queue_task_done(p), QP_OK);
	}
	assert_int_equal(qp_queue_task_done(p), QP_EVALUE);
	assert_int_equal(qp_queue_join(p, QP_NOWAIT), QP_OK);
	qp_queue_free(w);
	qp_queue_free(p);
}

/* An anonymous queue in worker mode, shared with children: a child killed
 * while it holds an item gives it back; the child's copy of the handle
 * does not hold what the parent holds. */
static void
test_shmlease_anon_across_fork(void **state)
{
	(void) state;
	qp_queue_opts o = {.flags = QP_OPEN_LEASE};
	qp_queue *q = NULL;
	int fd;

	assert_int_equal(qp_queue_anon(&q, &o), QP_OK);
	sl_put(q, "a");
	sl_put(q, "b");
	pid_t pid = sl_holder(q, &fd);
	sl_took(fd, "a");
	sl_kill(pid);
	sl_get(q, "a", 2, QP_NOWAIT);

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* The parent's "a" is not this child's to confirm. */
		bool ok = qp_queue_task_done(q) == QP_EVALUE
		    && sl_got(q, "b", 1, QP_NOWAIT)
		    && qp_queue_task_done(q) == QP_OK;
		_exit(ok ? 0 : 1);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_int_equal(qp_queue_task_done(q), QP_OK);
	uint64_t leased;
	assert_int_equal(sl_stat(q, &leased), 0);
	assert_int_equal(leased, 0);
	assert_int_equal(qp_queue_join(q, QP_NOWAIT), QP_OK);
	qp_queue_free(q);
}

/* get_into, get_many and get_obj lease too; an item too large for
 * get_into stays at the head, not delivered. */
static void
test_shmlease_other_gets(void **state)
{
	(void) state;
	qp_queue *w = sl_open(true, 0);
	qp_queue *p = sl_open(false, 0);
	char small[2];
	size_t len = 0;
	uint32_t d;
	uint64_t leased;

	sl_put(p, "long item");
	sl_put(p, "x");
	sl_put(p, "y");
	assert_int_equal(
	    qp_queue_get_into(w, small, sizeof(small), &len, QP_NOWAIT),
	    QP_ETOOBIG);
	assert_int_equal(len, 9);
	assert_int_equal(qp_queue_deliveries(w, &d), QP_ENOENT);
	char big[16];
	assert_int_equal(
	    qp_queue_get_into(w, big, sizeof(big), &len, QP_NOWAIT), QP_OK);
	assert_int_equal(len, 9);
	assert_memory_equal(big, "long item", 9);
	assert_int_equal(qp_queue_deliveries(w, &d), QP_OK);
	assert_int_equal(d, 1);
	void *bufs[4];
	size_t lens[4], n = 0;
	assert_int_equal(
	    qp_queue_get_many(w, bufs, lens, 4, &n, QP_NOWAIT), QP_OK);
	assert_int_equal(n, 2);
	qp_free(bufs[0]);
	qp_free(bufs[1]);
	assert_int_equal(sl_stat(p, &leased), 0);
	assert_int_equal(leased, 3);
	/* Confirmed oldest first: the long item, x, then y. */
	assert_int_equal(qp_queue_task_done(w), QP_OK);
	assert_int_equal(qp_queue_nack(w, 0), QP_OK); /* x */
	assert_int_equal(qp_queue_task_done(w), QP_OK); /* y */
	void *obj;
	assert_int_equal(qp_queue_get_obj(w, &obj, &len, QP_NOWAIT), QP_OK);
	/* A bin of one byte: c4 01 'x'. */
	assert_int_equal(len, 3);
	assert_memory_equal(obj, "\xc4\x01x", 3);
	qp_free(obj);
	assert_int_equal(qp_queue_deliveries(w, &d), QP_OK);
	assert_int_equal(d, 2);
	assert_int_equal(qp_queue_task_done(w), QP_OK);
	assert_int_equal(qp_queue_join(p, QP_NOWAIT), QP_OK);
	qp_queue_free(w);
	qp_queue_free(p);
}

/* Options: a lease over the wire's limit, worker mode on a durable
 * shm:// queue. */
static void
test_shmlease_bad_options(void **state)
{
	(void) state;
	qp_queue_opts o = {
	    .flags = QP_OPEN_CREATE | QP_OPEN_LEASE, .lease_ms = 1ull << 31};
	qp_queue *q = NULL;

	assert_int_equal(qp_queue_open(&q, sl_addr, &o), QP_EINVAL);
	assert_null(q);
	assert_int_equal(qp_queue_anon(&q, &o), QP_EINVAL);
	o.lease_ms = (1ull << 31) - 1;
	assert_int_equal(qp_queue_open(&q, sl_addr, &o), QP_OK);
	qp_queue_free(q);
	q = NULL;
	o.flags |= QP_OPEN_DURABLE;
	o.path = "/nonexistent/t-shmlease.q";
	assert_int_equal(qp_queue_open(&q, sl_addr, &o), QP_EINVAL);
	assert_null(q);
}

#define SL_TEST(f) cmocka_unit_test_setup_teardown(f, sl_setup, sl_teardown)

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    SL_TEST(test_shmlease_kill9_redelivers),
	    SL_TEST(test_shmlease_waiting_worker_takes_over),
	    SL_TEST(test_shmlease_nack_returns_to_head),
	    SL_TEST(test_shmlease_nothing_held_errors),
	    SL_TEST(test_shmlease_close_gives_back),
	    SL_TEST(test_shmlease_lease_expires),
	    SL_TEST(test_shmlease_touch_keeps_item),
	    SL_TEST(test_shmlease_touch_errors),
	    SL_TEST(test_shmlease_plain_handles_unaffected),
	    SL_TEST(test_shmlease_anon_across_fork),
	    SL_TEST(test_shmlease_other_gets),
	    SL_TEST(test_shmlease_bad_options),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
