/*
 * test_queue.c - the public qp_queue_* calls on shared-memory queues, case
 * by case against Python's multiprocessing.Queue / JoinableQueue, within a
 * process and across fork(); bad input; the seed program; many producers
 * and consumers. Children report through their exit status (0 = as
 * expected).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "qpi.h"
#include "queue_util.h"

static qp_queue *
anon(uint64_t maxsize, uint64_t capacity)
{
	qp_queue_opts o = {.maxsize = maxsize, .capacity = capacity};
	qp_queue *q = NULL;

	assert_int_equal(qp_queue_anon(&q, &o), QP_OK);
	return q;
}

static void
put_str(qp_queue *q, const char *s)
{
	assert_int_equal(qp_queue_put(q, s, strlen(s), QP_NOWAIT), QP_OK);
}

static void
get_str(qp_queue *q, const char *s, qp_duration t)
{
	void *buf = NULL;
	size_t len = 0;

	assert_int_equal(qp_queue_get(q, &buf, &len, t), QP_OK);
	assert_int_equal(len, strlen(s));
	assert_memory_equal(buf, s, len);
	qp_free(buf);
}

static size_t
qsize(qp_queue *q)
{
	size_t n = 99;

	assert_int_equal(qp_queue_qsize(q, &n), QP_OK);
	return n;
}

/* ---- Python parity ---- */

static void
test_queue_fifo_order(void **state)
{
	qp_queue *q = anon(0, 0);
	char s[32];

	for (int i = 0; i < 1000; i++) {
		snprintf(s, sizeof(s), "item %d", i);
		put_str(q, s);
	}
	assert_int_equal(qsize(q), 1000);
	for (int i = 0; i < 1000; i++) {
		snprintf(s, sizeof(s), "item %d", i);
		get_str(q, s, QP_NOWAIT);
	}
	assert_int_equal(qsize(q), 0);
	qp_queue_free(q);
}

/* put_many: each batch whole or not at all, as over a server. */
static void
test_queue_put_many_all_or_nothing(void **state)
{
	qp_queue *q = anon(3, 0);
	const void *bufs[4] = {"x", "y", "z", "w"};
	size_t lens[4] = {1, 1, 1, 1};

	put_str(q, "a");
	assert_int_equal(
	    qp_queue_put_many(q, bufs, lens, 3, QP_NOWAIT), QP_EFULL);
	assert_int_equal(qsize(q), 1);
	assert_int_equal(qp_queue_put_many(q, bufs, lens, 4, 100), QP_ETOOBIG);
	assert_int_equal(qp_queue_put_many(q, bufs, lens, 2, 0), QP_OK);
	get_str(q, "a", QP_NOWAIT);
	get_str(q, "x", QP_NOWAIT);
	get_str(q, "y", QP_NOWAIT);
	qp_queue_close(q);
	assert_int_equal(qp_queue_put_many(q, bufs, lens, 1, 0), QP_ECLOSED);
	qp_queue_free(q);
}

/* get_many: a batch in order, up to max, the first one waited for; the
 * _obj form hands each raw item back as a msgpack bin. */
static void
test_queue_get_many_in_order(void **state)
{
	qp_queue *q = anon(0, 0);
	void *bufs[300];
	size_t lens[300], n = 0;
	char s[32];

	(void) state;
	assert_int_equal(
	    qp_queue_get_many(q, bufs, lens, 300, &n, 50), QP_EEMPTY);
	assert_int_equal(n, 0);
	for (int i = 0; i < 500; i++) {
		snprintf(s, sizeof(s), "item %d", i);
		put_str(q, s);
	}
	assert_int_equal(qp_queue_get_many(q, bufs, lens, 300, &n, 0), QP_OK);
	assert_int_equal(n, 300);
	for (size_t i = 0; i < n; i++) {
		snprintf(s, sizeof(s), "item %zu", i);
		assert_int_equal(lens[i], strlen(s));
		assert_memory_equal(bufs[i], s, lens[i]);
		qp_free(bufs[i]);
	}
	assert_int_equal(qsize(q), 200);
	assert_int_equal(
	    qp_queue_get_many_obj(q, bufs, lens, 300, &n, 0), QP_OK);
	assert_int_equal(n, 200);
	for (size_t i = 0; i < n; i++) {
		snprintf(s, sizeof(s), "item %zu", i + 300);
		assert_int_equal(lens[i], strlen(s) + 2);
		assert_int_equal(((uint8_t *) bufs[i])[0], 0xc4);
		assert_memory_equal((uint8_t *) bufs[i] + 2, s, strlen(s));
		qp_free(bufs[i]);
	}
	assert_int_equal(qsize(q), 0);
	qp_queue_free(q);
}

static void
test_queue_get_timeout_on_empty(void **state)
{
	qp_queue *q = anon(0, 0);
	void *buf = (void *) 1;
	size_t len = 7;

	/* Python: q.get(timeout=0.2) raises queue.Empty after ~0.2 s. */
	int64_t t0 = qu_now_ms();
	assert_int_equal(qp_queue_get(q, &buf, &len, 200), QP_EEMPTY);
	int64_t dt = qu_now_ms() - t0;
	assert_true(dt >= 180);
	assert_true(dt < 1200);
	assert_null(buf);
	assert_int_equal(len, 0);
	assert_non_null(strstr(qp_errmsg(), "empty"));

	/* get_nowait: at once. */
	t0 = qu_now_us();
	assert_int_equal(qp_queue_get_nowait(q, &buf, &len), QP_EEMPTY);
	assert_true(qu_now_us() - t0 < 50000);
	qp_queue_free(q);
}

static void
test_queue_get_blocks_until_put(void **state)
{
	qp_queue *q = anon(0, 0);
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		qu_sleep_ms(200);
		_exit(qp_queue_put(q, "late", 4, QP_NOWAIT) == QP_OK ? 0 : 1);
	}
	int64_t t0 = qu_now_ms();
	get_str(q, "late", QP_FOREVER);
	int64_t dt = qu_now_ms() - t0;
	assert_true(dt >= 150);
	assert_true(dt < 5000);
	assert_int_equal(qu_wait(pid), 0);
	qp_queue_free(q);
}

static void
test_queue_put_full_blocks_until_get(void **state)
{
	qp_queue *q = anon(2, 0);
	bool full = false;

	put_str(q, "a");
	put_str(q, "b");
	assert_int_equal(qp_queue_full(q, &full), QP_OK);
	assert_true(full);
	/* put_nowait on a full queue: queue.Full at once. */
	int64_t t0 = qu_now_us();
	assert_int_equal(qp_queue_put_nowait(q, "c", 1), QP_EFULL);
	assert_true(qu_now_us() - t0 < 50000);
	assert_non_null(strstr(qp_errmsg(), "maxsize 2"));
	/* put(timeout=0.2): queue.Full after ~0.2 s. */
	t0 = qu_now_ms();
	assert_int_equal(qp_queue_put(q, "c", 1, 200), QP_EFULL);
	int64_t dt = qu_now_ms() - t0;
	assert_true(dt >= 180);
	assert_true(dt < 1200);
	/* A blocking put waits until another process gets one. */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		void *buf;
		size_t len;
		qu_sleep_ms(200);
		int rc = qp_queue_get(q, &buf, &len, QP_NOWAIT);
		_exit(rc == QP_OK && len == 1 && *(char *) buf == 'a' ? 0 : 1);
	}
	t0 = qu_now_ms();
	assert_int_equal(qp_queue_put(q, "c", 1, QP_FOREVER), QP_OK);
	dt = qu_now_ms() - t0;
	assert_true(dt >= 150);
	assert_true(dt < 5000);
	assert_int_equal(qu_wait(pid), 0);
	get_str(q, "b", QP_NOWAIT);
	get_str(q, "c", QP_NOWAIT);
	qp_queue_free(q);
}

static void
test_queue_put_full_by_bytes(void **state)
{
	/* No maxsize: the byte capacity bounds the queue. */
	qp_queue *q = anon(0, 16384);
	static uint8_t item[5000];
	int n = 0;

	while (qp_queue_put_nowait(q, item, sizeof(item)) == QP_OK) {
		n++;
		assert_true(n < 10);
	}
	assert_int_equal(n, 3);
	assert_int_equal(qp_queue_put(q, item, sizeof(item), 100), QP_EFULL);
	assert_non_null(strstr(qp_errmsg(), "no room"));
	/* A small item still fits in what is left. */
	assert_int_equal(qp_queue_put_nowait(q, item, 100), QP_OK);
	/* Room comes back with gets, lap after lap around the ring (a get
	 * of the small item alone does not make room for a big one). */
	size_t items = 4;
	for (int i = 0; i < 50; i++) {
		void *buf;
		size_t len;
		int rc;
		while ((rc = qp_queue_put(q, item, sizeof(item), 0))
		    == QP_EFULL) {
			assert_int_equal(
			    qp_queue_get(q, &buf, &len, QP_NOWAIT), QP_OK);
			qp_free(buf);
			items--;
		}
		assert_int_equal(rc, QP_OK);
		items++;
		assert_int_equal(qsize(q), items);
		assert_true(items >= 2);
	}
	qp_queue_free(q);
}

static void
test_queue_sizes_across_processes(void **state)
{
	qp_queue *q = anon(3, 0);
	bool b;

	assert_int_equal(qp_queue_empty(q, &b), QP_OK);
	assert_true(b);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int bad = 0;
		for (int i = 0; i < 3; i++) {
			bad |= qp_queue_put(q, "x", 1, QP_NOWAIT) != QP_OK;
		}
		_exit(bad);
	}
	assert_int_equal(qu_wait(pid), 0);
	assert_int_equal(qsize(q), 3);
	assert_int_equal(qp_queue_empty(q, &b), QP_OK);
	assert_false(b);
	assert_int_equal(qp_queue_full(q, &b), QP_OK);
	assert_true(b);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		void *buf;
		size_t len, n = 0;
		int rc = qp_queue_get(q, &buf, &len, QP_NOWAIT);
		qp_queue_qsize(q, &n);
		_exit(rc == QP_OK && n == 2 ? 0 : 1);
	}
	assert_int_equal(qu_wait(pid), 0);
	assert_int_equal(qsize(q), 2);
	assert_int_equal(qp_queue_full(q, &b), QP_OK);
	assert_false(b);
	qp_queue_free(q);
}

static void
test_queue_task_done_and_join(void **state)
{
	qp_queue *q = anon(0, 0);
	qp_queue_stats st;

	/* Python: task_done() with nothing put is a ValueError. */
	assert_int_equal(qp_queue_task_done(q), QP_EVALUE);
	assert_non_null(strstr(qp_errmsg(), "task_done"));
	assert_int_equal(qp_queue_join(q, QP_NOWAIT), QP_OK);
	put_str(q, "a");
	put_str(q, "b");
	assert_int_equal(qp_queue_join(q, 100), QP_ETIMEDOUT);
	assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	assert_int_equal(st.unfinished, 2);
	/* A worker gets both and marks them done; join returns after. */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int bad = 0;
		for (int i = 0; i < 2; i++) {
			void *buf;
			size_t len;
			qu_sleep_ms(100);
			bad |= qp_queue_get(q, &buf, &len, 1000) != QP_OK;
			bad |= qp_queue_task_done(q) != QP_OK;
		}
		_exit(bad);
	}
	int64_t t0 = qu_now_ms();
	assert_int_equal(qp_queue_join(q, QP_FOREVER), QP_OK);
	assert_true(qu_now_ms() - t0 >= 150);
	assert_int_equal(qu_wait(pid), 0);
	/* One more task_done than items put: an error that changes nothing. */
	assert_int_equal(qp_queue_task_done(q), QP_EVALUE);
	assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	assert_int_equal(st.unfinished, 0);
	put_str(q, "c");
	assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	assert_int_equal(st.unfinished, 1);
	assert_int_equal(qp_queue_task_done(q), QP_OK);
	assert_int_equal(qp_queue_join(q, QP_NOWAIT), QP_OK);
	qp_queue_free(q);
}

static void
test_queue_close_then_every_call_closed(void **state)
{
	qp_queue *q = anon(0, 0);
	void *buf;
	size_t len, n;
	bool b;
	qp_queue_stats st;

	put_str(q, "kept");
	assert_int_equal(qp_queue_close(q), QP_OK);
	assert_int_equal(qp_queue_close(q), QP_OK);
	assert_int_equal(qp_queue_put(q, "x", 1, QP_NOWAIT), QP_ECLOSED);
	assert_int_equal(qp_queue_put_obj(q, "\xc0", 1, 0), QP_ECLOSED);
	assert_int_equal(qp_queue_get(q, &buf, &len, QP_NOWAIT), QP_ECLOSED);
	assert_int_equal(qp_queue_get_into(q, &b, 1, &len, 0), QP_ECLOSED);
	assert_int_equal(qp_queue_get_obj(q, &buf, &len, 0), QP_ECLOSED);
	assert_int_equal(qp_queue_qsize(q, &n), QP_ECLOSED);
	assert_int_equal(qp_queue_empty(q, &b), QP_ECLOSED);
	assert_int_equal(qp_queue_full(q, &b), QP_ECLOSED);
	assert_int_equal(qp_queue_task_done(q), QP_ECLOSED);
	assert_int_equal(qp_queue_join(q, 0), QP_ECLOSED);
	assert_int_equal(qp_queue_stat(q, &st), QP_ECLOSED);
	qp_queue_free(q);
	qp_queue_free(NULL);
}

static void *
close_later(void *arg)
{
	qu_sleep_ms(150);
	qp_queue_close(arg);
	return NULL;
}

static void
test_queue_close_wakes_a_blocked_get(void **state)
{
	qp_queue *q = anon(1, 0);
	pthread_t t;
	void *buf;
	size_t len;

	assert_int_equal(pthread_create(&t, NULL, close_later, q), 0);
	int64_t t0 = qu_now_ms();
	assert_int_equal(qp_queue_get(q, &buf, &len, 10000), QP_ECLOSED);
	assert_true(qu_now_ms() - t0 < 5000);
	pthread_join(t, NULL);
	qp_queue_free(q);

	/* The same for a put blocked on a full queue and a join. */
	q = anon(1, 0);
	put_str(q, "full");
	assert_int_equal(pthread_create(&t, NULL, close_later, q), 0);
	assert_int_equal(qp_queue_put(q, "x", 1, 10000), QP_ECLOSED);
	pthread_join(t, NULL);
	qp_queue_free(q);
	q = anon(0, 0);
	put_str(q, "unfinished");
	assert_int_equal(pthread_create(&t, NULL, close_later, q), 0);
	assert_int_equal(qp_queue_join(q, 10000), QP_ECLOSED);
	pthread_join(t, NULL);
	qp_queue_free(q);
}

/* ---- named queues ---- */

static void
test_queue_named_open_create_unlink(void **state)
{
	char addr[128];
	qp_queue *q, *q2;
	qp_queue_opts o = {.flags = QP_OPEN_CREATE, .maxsize = 5};
	qp_queue_stats st;

	snprintf(addr, sizeof(addr), "shm://%s", qu_name("named"));
	assert_int_equal(qp_queue_open(&q, addr, NULL), QP_ENOENT);
	assert_null(q);
	assert_int_equal(qp_queue_open(&q, addr, &o), QP_OK);
	put_str(q, "hello");
	/* Opened again (CREATE on an existing queue keeps its options). */
	qp_queue_opts o2 = {.flags = QP_OPEN_CREATE, .maxsize = 9};
	assert_int_equal(qp_queue_open(&q2, addr + 6, &o2), QP_OK);
	assert_int_equal(qp_queue_stat(q2, &st), QP_OK);
	assert_int_equal(st.maxsize, 5);
	assert_int_equal(st.items, 1);
	qp_queue_free(q2);
	o.flags |= QP_OPEN_EXCL;
	assert_int_equal(qp_queue_open(&q2, addr, &o), QP_EEXIST);
	/* Another process opens it by name. */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		qp_queue *c;
		void *buf;
		size_t len;
		if (qp_queue_open(&c, addr, NULL) != QP_OK
		    || qp_queue_get(c, &buf, &len, 1000) != QP_OK || len != 5
		    || memcmp(buf, "hello", 5) != 0
		    || qp_queue_put(c, "back", 4, 0) != QP_OK) {
			_exit(1);
		}
		qp_queue_free(c);
		_exit(0);
	}
	assert_int_equal(qu_wait(pid), 0);
	get_str(q, "back", QP_NOWAIT);
	assert_int_equal(qp_queue_unlink(addr), QP_OK);
	assert_int_equal(qp_queue_unlink(addr), QP_ENOENT);
	/* The handle sees the removal: a put stores nothing (issue 15). */
	assert_int_equal(qp_queue_put(q, "gone", 4, QP_NOWAIT), QP_ENOENT);
	assert_non_null(strstr(qp_errmsg(), "deleted"));
	qp_queue_free(q);
	assert_int_equal(qp_queue_open(&q, addr, NULL), QP_ENOENT);
}

static void
test_queue_named_create_race(void **state)
{
	char addr[128];
	enum { N = 6 };
	pid_t pids[N];

	snprintf(addr, sizeof(addr), "%s", qu_name("race"));
	/* N processes open-or-create the same name at once: all get the
	 * same queue. */
	for (int i = 0; i < N; i++) {
		pids[i] = fork();
		assert_true(pids[i] >= 0);
		if (pids[i] == 0) {
			qp_queue_opts o
			    = {.flags = QP_OPEN_CREATE, .capacity = 1 << 20};
			qp_queue *q;
			if (qp_queue_open(&q, addr, &o) != QP_OK
			    || qp_queue_put(q, "x", 1, 0) != QP_OK) {
				_exit(1);
			}
			qp_queue_free(q);
			_exit(0);
		}
	}
	for (int i = 0; i < N; i++) {
		assert_int_equal(qu_wait(pids[i]), 0);
	}
	qp_queue *q;
	assert_int_equal(qp_queue_open(&q, addr, NULL), QP_OK);
	assert_int_equal(qsize(q), N);
	qp_queue_free(q);
	assert_int_equal(qp_queue_unlink(addr), QP_OK);
}

/* ---- bad input ---- */

static void
test_queue_bad_input_is_a_clear_error(void **state)
{
	qp_queue *q = anon(0, 1 << 20), *q2;
	void *buf;
	size_t len;
	bool b;

	put_str(q, "precious");
	assert_int_equal(qp_queue_put(NULL, "x", 1, 0), QP_EINVAL);
	assert_int_equal(qp_queue_put(q, NULL, 1, 0), QP_EINVAL);
	assert_int_equal(qp_queue_put(q, "x", 1, -2), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "timeout"));
	assert_int_equal(qp_queue_get(q, NULL, &len, 0), QP_EINVAL);
	assert_int_equal(qp_queue_get(q, &buf, NULL, 0), QP_EINVAL);
	assert_int_equal(qp_queue_get(q, &buf, &len, -7), QP_EINVAL);
	assert_int_equal(qp_queue_get_into(q, NULL, 5, &len, 0), QP_EINVAL);
	assert_int_equal(qp_queue_get_into(q, &b, 1, NULL, 0), QP_EINVAL);
	assert_int_equal(qp_queue_qsize(q, NULL), QP_EINVAL);
	assert_int_equal(qp_queue_empty(NULL, &b), QP_EINVAL);
	assert_int_equal(qp_queue_full(q, NULL), QP_EINVAL);
	assert_int_equal(qp_queue_stat(q, NULL), QP_EINVAL);
	assert_int_equal(qp_queue_task_done(NULL), QP_EINVAL);
	assert_int_equal(qp_queue_join(q, -3), QP_EINVAL);
	assert_int_equal(qp_queue_close(NULL), QP_EINVAL);
	assert_int_equal(qp_queue_open(NULL, "x", NULL), QP_EINVAL);
	assert_int_equal(qp_queue_open(&q2, NULL, NULL), QP_EINVAL);
	assert_int_equal(qp_queue_open(&q2, "a b", NULL), QP_EINVAL);
	assert_int_equal(qp_queue_open(&q2, "shm://", NULL), QP_EINVAL);
	qp_queue_opts o = {.flags = 0x80};
	assert_int_equal(qp_queue_open(&q2, "x", &o), QP_EINVAL);
	o.flags = QP_OPEN_EXCL;
	assert_int_equal(qp_queue_open(&q2, "x", &o), QP_EINVAL);
	o = (qp_queue_opts) {.capacity = 100};
	assert_int_equal(qp_queue_anon(&q2, &o), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "capacity"));
	assert_int_equal(qp_queue_anon(NULL, NULL), QP_EINVAL);
	assert_int_equal(qp_queue_unlink(NULL), QP_EINVAL);

	/* Items too big: at once, whatever the timeout. */
	size_t big = (2u << 20);
	uint8_t *p = calloc(1, big);
	int64_t t0 = qu_now_ms();
	assert_int_equal(qp_queue_put(q, p, big, QP_FOREVER), QP_ETOOBIG);
	assert_true(qu_now_ms() - t0 < 1000);
	assert_non_null(strstr(qp_errmsg(), "never fit"));
	qp_queue_free(q);
	o = (qp_queue_opts) {.max_message = 1000};
	assert_int_equal(qp_queue_anon(&q, &o), QP_OK);
	assert_int_equal(qp_queue_put(q, p, 1001, QP_FOREVER), QP_ETOOBIG);
	assert_non_null(strstr(qp_errmsg(), "limit of 1000"));
	assert_int_equal(qp_queue_put(q, p, 1000, QP_NOWAIT), QP_OK);
	free(p);
	qp_queue_free(q);

	/* Nothing was lost or added along the way. */
	q = anon(0, 1 << 20);
	put_str(q, "precious");
	assert_int_equal(qp_queue_put(q, NULL, 5, 0), QP_EINVAL);
	assert_int_equal(qsize(q), 1);
	get_str(q, "precious", 0);
	qp_queue_free(q);
}

static void
test_queue_get_into_too_small_keeps_the_item(void **state)
{
	qp_queue *q = anon(0, 0);
	char buf[16];
	size_t len = 0;

	put_str(q, "a longer item than that");
	put_str(q, "next");
	assert_int_equal(
	    qp_queue_get_into(q, buf, sizeof(buf), &len, 0), QP_ETOOBIG);
	assert_int_equal(len, 23);
	assert_int_equal(qp_queue_get_into(q, NULL, 0, &len, 0), QP_ETOOBIG);
	assert_int_equal(len, 23);
	assert_int_equal(qsize(q), 2);
	char big[64];
	assert_int_equal(
	    qp_queue_get_into(q, big, sizeof(big), &len, 0), QP_OK);
	assert_int_equal(len, 23);
	assert_memory_equal(big, "a longer item than that", 23);
	assert_int_equal(qp_queue_get_into(q, buf, 4, &len, 0), QP_OK);
	assert_memory_equal(buf, "next", 4);
	/* An empty item fits anywhere. */
	assert_int_equal(qp_queue_put(q, NULL, 0, 0), QP_OK);
	assert_int_equal(qp_queue_get_into(q, NULL, 0, &len, 0), QP_OK);
	assert_int_equal(len, 0);
	qp_queue_free(q);
}

/* ---- objects ---- */

static void
test_queue_objects_and_bytes(void **state)
{
	qp_queue *q = anon(0, 0);
	/* {"a": [1, "x"]} */
	static const uint8_t map[] = {0x81, 0xa1, 'a', 0x92, 0x01, 0xa1, 'x'};
	/* bin8 "hi" */
	static const uint8_t bin[] = {0xc4, 0x02, 'h', 'i'};
	void *buf;
	size_t len;

	assert_int_equal(qp_queue_put_obj(q, map, sizeof(map), 0), QP_OK);
	assert_int_equal(qp_queue_get_obj(q, &buf, &len, 0), QP_OK);
	assert_int_equal(len, sizeof(map));
	assert_memory_equal(buf, map, len);
	qp_free(buf);
	/* A bytes get of an object returns its encoding. */
	assert_int_equal(qp_queue_put_obj(q, map, sizeof(map), 0), QP_OK);
	assert_int_equal(qp_queue_get(q, &buf, &len, 0), QP_OK);
	assert_int_equal(len, sizeof(map));
	assert_memory_equal(buf, map, len);
	qp_free(buf);
	/* Bytes come back from get_obj as a msgpack bin. */
	put_str(q, "hi");
	assert_int_equal(qp_queue_get_obj(q, &buf, &len, 0), QP_OK);
	assert_int_equal(len, sizeof(bin));
	assert_memory_equal(buf, bin, len);
	qp_free(buf);
	/* A bin put as an object comes back from get as its bytes. */
	assert_int_equal(qp_queue_put_obj(q, bin, sizeof(bin), 0), QP_OK);
	get_str(q, "hi", 0);
	/* Not exactly one well-formed value: refused, nothing stored. */
	static const uint8_t two[] = {0x01, 0x02};
	static const uint8_t cut[] = {0x92, 0x01};
	assert_int_equal(qp_queue_put_obj(q, two, sizeof(two), 0), QP_EINVAL);
	assert_int_equal(qp_queue_put_obj(q, cut, sizeof(cut), 0), QP_EINVAL);
	assert_int_equal(qp_queue_put_obj(q, "", 0, 0), QP_EINVAL);
	assert_int_equal(qp_queue_put_obj(q, NULL, 1, 0), QP_EINVAL);
	assert_int_equal(qsize(q), 0);
	qp_queue_free(q);
}

/* ---- stat ---- */

static void
test_queue_stat_counts_and_age(void **state)
{
	qp_queue *q = anon(7, 1 << 20);
	qp_queue_stats st;
	void *buf;
	size_t len;

	assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	assert_int_equal(st.items, 0);
	assert_int_equal(st.oldest_age_ms, -1);
	assert_int_equal(st.maxsize, 7);
	assert_int_equal(st.capacity, 1 << 20);
	put_str(q, "12345");
	put_str(q, "123");
	qu_sleep_ms(120);
	assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	assert_int_equal(st.items, 2);
	assert_int_equal(st.bytes, 8);
	assert_int_equal(st.puts, 2);
	assert_int_equal(st.gets, 0);
	assert_int_equal(st.unfinished, 2);
	assert_int_equal(st.leased, 0);
	assert_int_equal(st.getters, 0);
	assert_true(st.oldest_age_ms >= 90);
	assert_true(st.oldest_age_ms < 5000);
	assert_int_equal(qp_queue_get(q, &buf, &len, 0), QP_OK);
	qp_free(buf);
	assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	assert_int_equal(st.items, 1);
	assert_int_equal(st.bytes, 3);
	assert_int_equal(st.gets, 1);
	qp_queue_free(q);
}

static void
test_queue_stat_counts_waiters(void **state)
{
	qp_queue *q = anon(0, 0);
	qp_queue_stats st;

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		void *buf;
		size_t len;
		_exit(qp_queue_get(q, &buf, &len, 5000) == QP_OK ? 0 : 1);
	}
	int64_t t0 = qu_now_ms();
	do {
		qu_sleep_ms(10);
		assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	} while (st.getters == 0 && qu_now_ms() - t0 < 3000);
	assert_int_equal(st.getters, 1);
	put_str(q, "wake");
	assert_int_equal(qu_wait(pid), 0);
	assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	assert_int_equal(st.getters, 0);
	qp_queue_free(q);
}

/* ---- the seed program ---- */

/* A child puts s; the parent joins it first; another child gets the item
 * and prints it; the parent joins that one and reads what it printed. */
static void
seed_run(const char *s, size_t len)
{
	char addr[128], path[] = "/tmp/qp-seed-XXXXXX";
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	qp_queue *q;

	snprintf(addr, sizeof(addr), "%s", qu_name("seed"));
	assert_int_equal(qp_queue_open(&q, addr, &o), QP_OK);
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	pid_t putter = fork();
	assert_true(putter >= 0);
	if (putter == 0) {
		qp_queue *c;
		if (qp_queue_open(&c, addr, NULL) != QP_OK
		    || qp_queue_put(c, s, len, QP_FOREVER) != QP_OK) {
			_exit(1);
		}
		qp_queue_free(c);
		_exit(0);
	}
	/* Joined before anyone reads: put returned with the item stored. */
	assert_int_equal(qu_wait(putter), 0);
	pid_t getter = fork();
	assert_true(getter >= 0);
	if (getter == 0) {
		qp_queue *c;
		void *buf;
		size_t n;
		if (qp_queue_open(&c, addr, NULL) != QP_OK
		    || qp_queue_get(c, &buf, &n, QP_FOREVER) != QP_OK) {
			_exit(1);
		}
		FILE *f = fdopen(fd, "w");
		if (f == NULL || fwrite(buf, 1, n, f) != n || fclose(f) != 0) {
			_exit(2);
		}
		qp_free(buf);
		qp_queue_free(c);
		_exit(0);
	}
	assert_int_equal(qu_wait(getter), 0);
	char *out = malloc(len + 1);
	assert_int_equal(pread(fd, out, len + 1, 0), (ssize_t) len);
	assert_memory_equal(out, s, len);
	free(out);
	close(fd);
	unlink(path);
	assert_int_equal(qsize(q), 0);
	qp_queue_free(q);
	assert_int_equal(qp_queue_unlink(addr), QP_OK);
}

static void
test_queue_seed_program(void **state)
{
	const char *hello = "hello from the putting child\n";

	seed_run(hello, strlen(hello));
	size_t big = 8u << 20;
	char *s = malloc(big);
	for (size_t i = 0; i < big; i++) {
		s[i] = (char) ('a' + i % 26);
	}
	seed_run(s, big);
	free(s);
}

/* ---- many producers and consumers ---- */

enum { MP = 4, MC = 4 };

typedef struct mpmc {
	uint64_t items; /* per producer */
	uint64_t tiny_put[MP]; /* items under 8 bytes, by producer */
	uint64_t tiny_got[MP];
	uint64_t got_total;
	uint64_t dups;
	uint64_t bad;
	uint64_t order;
	uint8_t seen[]; /* one byte per id */
} mpmc;

static size_t
mp_len(uint64_t id)
{
	if (id % 1000 == 7) {
		return 0;
	}
	return (size_t) (qu_mix(id ^ 0x5555) % (64 * 1024 + 1));
}

static int
mp_producer(qp_queue *q, mpmc *m, int p)
{
	uint8_t *buf = malloc(64 * 1024);

	for (uint64_t i = 0; i < m->items; i++) {
		uint64_t id = i * MP + (uint64_t) p;
		size_t len = mp_len(id);
		qu_fill(buf, id, len);
		if (len < 8 && len > 0) {
			buf[0] = (uint8_t) p;
		}
		if (len < 8) {
			m->tiny_put[p]++;
		}
		if (qp_queue_put(q, buf, len, 30000) != QP_OK) {
			return 1;
		}
	}
	free(buf);
	return 0;
}

static int
mp_consumer(qp_queue *q, mpmc *m)
{
	uint64_t last[MP];
	uint8_t *buf = malloc(64 * 1024);
	size_t len;

	for (int p = 0; p < MP; p++) {
		last[p] = UINT64_MAX;
	}
	for (;;) {
		int rc = qp_queue_get_into(q, buf, 64 * 1024, &len, 30000);
		if (rc != QP_OK) {
			return 1;
		}
		if (len == 1 && buf[0] == 0xff) {
			break; /* the stop item */
		}
		__atomic_fetch_add(&m->got_total, 1, __ATOMIC_RELAXED);
		uint64_t id;
		if (len < 8) {
			/* Zero-length items are counted for producer 0. */
			int p = len == 0 ? 0 : buf[0];
			if (p >= MP) {
				__atomic_fetch_add(
				    &m->bad, 1, __ATOMIC_RELAXED);
				continue;
			}
			__atomic_fetch_add(
			    &m->tiny_got[p], 1, __ATOMIC_RELAXED);
			continue;
		}
		if (!qu_check(buf, len, &id) || id >= m->items * MP
		    || mp_len(id) != len) {
			__atomic_fetch_add(&m->bad, 1, __ATOMIC_RELAXED);
			continue;
		}
		if (__atomic_exchange_n(&m->seen[id], 1, __ATOMIC_RELAXED)) {
			__atomic_fetch_add(&m->dups, 1, __ATOMIC_RELAXED);
		}
		/* Each producer's items arrive in its order. */
		int p = (int) (id % MP);
		if (last[p] != UINT64_MAX && id <= last[p]) {
			__atomic_fetch_add(&m->order, 1, __ATOMIC_RELAXED);
		}
		last[p] = id;
	}
	free(buf);
	return 0;
}

static void
test_queue_many_producers_many_consumers(void **state)
{
	/* 200,000 items of 0 B-64 KiB; 20,000 under ASan, whose checked
	 * memcpy makes the full run too slow for every test run. */
	uint64_t total = QU_SANITIZED ? 20000 : 200000;
	size_t msize = sizeof(mpmc) + total;
	mpmc *m = qu_shared(msize);
	qp_queue *q = anon(0, 0);
	pid_t pids[MP + MC];

	qu_init();
	m->items = total / MP;
	for (int i = 0; i < MP + MC; i++) {
		pids[i] = fork();
		assert_true(pids[i] >= 0);
		if (pids[i] == 0) {
			_exit(
			    i < MP ? mp_producer(q, m, i) : mp_consumer(q, m));
		}
	}
	for (int i = 0; i < MP; i++) {
		assert_int_equal(qu_wait(pids[i]), 0);
	}
	for (int i = 0; i < MC; i++) {
		assert_int_equal(qp_queue_put(q, "\xff", 1, 30000), QP_OK);
	}
	for (int i = MP; i < MP + MC; i++) {
		assert_int_equal(qu_wait(pids[i]), 0);
	}
	assert_int_equal(m->bad, 0);
	assert_int_equal(m->dups, 0);
	assert_int_equal(m->order, 0);
	assert_int_equal(m->got_total, total);
	uint64_t tiny_put = 0, tiny_got = 0, missing = 0;
	for (int p = 0; p < MP; p++) {
		tiny_put += m->tiny_put[p];
		tiny_got += m->tiny_got[p];
	}
	assert_int_equal(tiny_got, tiny_put);
	for (uint64_t id = 0; id < total; id++) {
		missing += mp_len(id) >= 8 && !m->seen[id];
	}
	assert_int_equal(missing, 0);
	assert_int_equal(qsize(q), 0);
	qp_queue_free(q);
	munmap(m, msize);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_queue_fifo_order),
	    cmocka_unit_test(test_queue_put_many_all_or_nothing),
	    cmocka_unit_test(test_queue_get_many_in_order),
	    cmocka_unit_test(test_queue_get_timeout_on_empty),
	    cmocka_unit_test(test_queue_get_blocks_until_put),
	    cmocka_unit_test(test_queue_put_full_blocks_until_get),
	    cmocka_unit_test(test_queue_put_full_by_bytes),
	    cmocka_unit_test(test_queue_sizes_across_processes),
	    cmocka_unit_test(test_queue_task_done_and_join),
	    cmocka_unit_test(test_queue_close_then_every_call_closed),
	    cmocka_unit_test(test_queue_close_wakes_a_blocked_get),
	    cmocka_unit_test(test_queue_named_open_create_unlink),
	    cmocka_unit_test(test_queue_named_create_race),
	    cmocka_unit_test(test_queue_bad_input_is_a_clear_error),
	    cmocka_unit_test(test_queue_get_into_too_small_keeps_the_item),
	    cmocka_unit_test(test_queue_objects_and_bytes),
	    cmocka_unit_test(test_queue_stat_counts_and_age),
	    cmocka_unit_test(test_queue_stat_counts_waiters),
	    cmocka_unit_test(test_queue_seed_program),
	    cmocka_unit_test(test_queue_many_producers_many_consumers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
