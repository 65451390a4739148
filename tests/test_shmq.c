/*
 * test_shmq.c - the shared-memory queue's internal API (lib/shmq.h):
 * leases (ack, release to the head, order, expiry, owners, delivery
 * counts, across fork), leased records that must not block the ring, the
 * watch sequence qpiped waits on, the invariant check, segments that
 * are not (or no longer) what this library expects, and the lock budget
 * that keeps a stopped lock holder from stalling qpiped; segments not to
 * be trusted blindly: another user's, truncated, scribbled on, removed
 * while in use, and waiter counts that heal; batch gets and acks (in
 * order, stopping short on slots, lease area and bytes, counted, failing
 * whole on a quarantined segment), and a get that finds the ring empty
 * while a put lands.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qpi.h"
#include "queue_util.h"
#include "shmq.h"

#define FOREVER INT64_MAX

static qpi_shmq *
mk(uint64_t capacity, uint32_t leases)
{
	qpi_shmq_cfg c = {.capacity = capacity, .lease_slots = leases};
	qpi_shmq *q = NULL;

	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	return q;
}

static void
put(qpi_shmq *q, const char *s)
{
	assert_int_equal(
	    qpi_shmq_put(q, s, strlen(s), QPI_ITEM_BIN, 0), QP_OK);
}

static void
get(qpi_shmq *q, const char *s)
{
	void *buf = NULL;
	size_t len = 0;

	assert_int_equal(qpi_shmq_get(q, 0, NULL, 0, &buf, &len, 0), QP_OK);
	assert_int_equal(len, strlen(s));
	assert_memory_equal(buf, s, len);
	free(buf);
}

static uint64_t
lease(qpi_shmq *q, uint64_t owner, int64_t ms, const char *s,
    uint32_t deliveries)
{
	qpi_shmq_lease l;
	void *buf = NULL;
	size_t len = 0;

	assert_int_equal(
	    qpi_shmq_get_lease(q, owner, ms, 0, &buf, &len, &l, 0), QP_OK);
	assert_int_equal(len, strlen(s));
	assert_memory_equal(buf, s, len);
	assert_int_equal(l.deliveries, deliveries);
	assert_int_equal(l.kind, QPI_ITEM_BIN);
	assert_true(l.id != 0);
	free(buf);
	return l.id;
}

static uint64_t
qsize(qpi_shmq *q)
{
	uint64_t n = 99;

	assert_int_equal(qpi_shmq_qsize(q, &n), QP_OK);
	return n;
}

static void
check(qpi_shmq *q)
{
	int rc = qpi_shmq_check(q);
	if (rc != QP_OK) {
		fail_msg("check: %s", qp_errmsg());
	}
}

static void
test_shmq_lease_ack_removes(void **state)
{
	qpi_shmq *q = mk(0, 0);
	qp_queue_stats st;

	put(q, "a");
	put(q, "b");
	uint64_t id = lease(q, 1, -1, "a", 1);
	assert_int_equal(qsize(q), 1);
	assert_int_equal(qpi_shmq_stat(q, &st), QP_OK);
	assert_int_equal(st.leased, 1);
	assert_int_equal(st.items, 1);
	check(q);
	assert_int_equal(qpi_shmq_ack(q, id), QP_OK);
	assert_int_equal(qpi_shmq_ack(q, id), QP_ENOENT);
	assert_non_null(strstr(qp_errmsg(), "no lease"));
	assert_int_equal(qpi_shmq_release(q, id), QP_ENOENT);
	assert_int_equal(qpi_shmq_ack(q, 0), QP_ENOENT);
	assert_int_equal(qpi_shmq_ack(q, 12345), QP_ENOENT);
	assert_int_equal(qpi_shmq_stat(q, &st), QP_OK);
	assert_int_equal(st.leased, 0);
	check(q);
	get(q, "b");
	assert_int_equal(qsize(q), 0);
	check(q);
	qpi_shmq_free(q);
}

static void
test_shmq_release_goes_to_the_head_in_order(void **state)
{
	qpi_shmq *q = mk(0, 0);

	put(q, "a");
	put(q, "b");
	put(q, "c");
	put(q, "d");
	uint64_t a = lease(q, 1, -1, "a", 1);
	uint64_t b = lease(q, 1, -1, "b", 1);
	uint64_t c = lease(q, 1, -1, "c", 1);
	assert_int_equal(qsize(q), 1);
	/* Released out of order, they come back before d, in order. */
	assert_int_equal(qpi_shmq_release(q, c), QP_OK);
	assert_int_equal(qpi_shmq_release(q, a), QP_OK);
	assert_int_equal(qsize(q), 3);
	check(q);
	uint64_t a2 = lease(q, 2, -1, "a", 2);
	assert_true(a2 != a);
	/* The old holder's id no longer touches the new lease. */
	assert_int_equal(qpi_shmq_ack(q, a), QP_ENOENT);
	assert_int_equal(qpi_shmq_release(q, b), QP_OK);
	uint64_t b2 = lease(q, 2, -1, "b", 2);
	get(q, "c");
	get(q, "d");
	assert_int_equal(qpi_shmq_release(q, a2), QP_OK);
	assert_int_equal(qpi_shmq_release(q, b2), QP_OK);
	uint64_t a3 = lease(q, 3, -1, "a", 3);
	get(q, "b");
	check(q);
	assert_int_equal(qpi_shmq_ack(q, a3), QP_OK);
	assert_int_equal(qsize(q), 0);
	check(q);
	qpi_shmq_free(q);
}

static void
test_shmq_lease_expiry(void **state)
{
	qpi_shmq *q = mk(0, 0);
	size_t n = 9;
	int64_t next = 0;

	put(q, "a");
	put(q, "b");
	uint64_t a = lease(q, 1, 100, "a", 1);
	uint64_t b = lease(q, 1, 5000, "b", 1);
	int64_t now = qpi_now_ms();
	assert_int_equal(qpi_shmq_expire(q, now, &n, &next), QP_OK);
	assert_int_equal(n, 0);
	assert_true(next > now && next <= now + 100);
	assert_int_equal(qpi_shmq_expire(q, now + 150, &n, &next), QP_OK);
	assert_int_equal(n, 1);
	assert_true(next > now + 4000 && next <= now + 5000);
	assert_int_equal(qpi_shmq_ack(q, a), QP_ENOENT);
	assert_int_equal(qsize(q), 1);
	/* Renewed, b outlives its first expiry. */
	assert_int_equal(qpi_shmq_renew(q, b, 60000), QP_OK);
	assert_int_equal(qpi_shmq_expire(q, now + 6000, &n, &next), QP_OK);
	assert_int_equal(n, 0);
	assert_int_equal(qpi_shmq_renew(q, b, -1), QP_OK);
	assert_int_equal(qpi_shmq_expire(q, now + 600000, &n, &next), QP_OK);
	assert_int_equal(n, 0);
	assert_int_equal(next, INT64_MAX);
	assert_int_equal(qpi_shmq_renew(q, a, 10), QP_ENOENT);
	assert_int_equal(qpi_shmq_renew(q, b, -5), QP_EINVAL);
	lease(q, 1, -1, "a", 2);
	assert_int_equal(qpi_shmq_ack(q, b), QP_OK);
	check(q);
	qpi_shmq_free(q);
}

static void
test_shmq_release_owner_and_all(void **state)
{
	qpi_shmq *q = mk(0, 0);
	size_t n = 0;

	put(q, "a");
	put(q, "b");
	put(q, "c");
	lease(q, 7, -1, "a", 1);
	uint64_t b = lease(q, 8, -1, "b", 1);
	lease(q, 7, -1, "c", 1);
	assert_int_equal(qpi_shmq_release_owner(q, 7, &n), QP_OK);
	assert_int_equal(n, 2);
	assert_int_equal(qsize(q), 2);
	assert_int_equal(qpi_shmq_release_owner(q, 7, &n), QP_OK);
	assert_int_equal(n, 0);
	check(q);
	lease(q, 9, -1, "a", 2);
	lease(q, 9, -1, "c", 2);
	/* A restarted server: every lease returns. */
	assert_int_equal(qpi_shmq_release_all(q, &n), QP_OK);
	assert_int_equal(n, 3);
	assert_int_equal(qpi_shmq_ack(q, b), QP_ENOENT);
	get(q, "a");
	get(q, "b");
	get(q, "c");
	check(q);
	qpi_shmq_free(q);
}

static void
test_shmq_dead_workers_leases_return(void **state)
{
	qpi_shmq *q = mk(0, 0);
	size_t n = 9;

	put(q, "task1");
	put(q, "task2");
	/* A live process's lease stays. */
	lease(q, qpi_shmq_owner_self(), -1, "task1", 1);
	assert_true(qpi_shmq_owner_self() >> 63);
	/* A worker takes task2 and dies before it is done. */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		qpi_shmq_lease l;
		void *buf;
		size_t len;
		if (qpi_shmq_get_lease(
		        q, qpi_shmq_owner_self(), -1, 0, &buf, &len, &l, 0)
		    != QP_OK) {
			_exit(1);
		}
		raise(SIGKILL);
	}
	/* Not reaped yet: a zombie counts as gone too. */
	int64_t t0 = qu_now_ms();
	do {
		assert_int_equal(qpi_shmq_release_dead(q, &n), QP_OK);
	} while (n == 0 && qu_now_ms() - t0 < 5000 && (qu_sleep_ms(5), 1));
	assert_int_equal(n, 1);
	assert_int_equal(qu_wait(pid), 128 + SIGKILL);
	lease(q, 77, -1, "task2", 2);
	assert_int_equal(qpi_shmq_release_dead(q, &n), QP_OK);
	assert_int_equal(n, 0);
	check(q);
	qpi_shmq_free(q);
}

static void
put_many_strs(qpi_shmq *q, const char *const *strs, size_t n, int want)
{
	qpi_shmq_item it[16];

	assert_true(n <= 16);
	for (size_t i = 0; i < n; i++) {
		it[i].buf = strs[i];
		it[i].len = strlen(strs[i]);
		it[i].kind = QPI_ITEM_BIN;
	}
	assert_int_equal(qpi_shmq_put_many(q, it, n, 0), want);
}

/* A batch goes in whole or not at all, by count and by bytes, also
 * across the ring's end. */
static void
test_shmq_put_many_all_or_nothing(void **state)
{
	static const char *const letters[]
	    = {"c", "d", "e", "f", "g", "h", "i"};
	qpi_shmq_cfg c = {.capacity = 4096, .maxsize = 6};
	qpi_shmq *q = NULL;
	static char big[3][1000];
	const char *bigs[3] = {big[0], big[1], big[2]};

	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	put(q, "a");
	put(q, "b");
	put_many_strs(q, letters, 5, QP_EFULL); /* 7 > maxsize 6 */
	assert_int_equal(qsize(q), 2);
	put_many_strs(q, letters, 7, QP_ETOOBIG); /* never fits */
	put_many_strs(q, letters, 4, QP_OK);
	assert_int_equal(qsize(q), 6);
	get(q, "a");
	get(q, "b");
	for (int i = 0; i < 4; i++) {
		get(q, letters[i]);
	}
	check(q);
	qpi_shmq_free(q);

	/* Bytes: 1000-byte items in a 4 KiB ring take 1040 bytes each. */
	for (int i = 0; i < 3; i++) {
		memset(big[i], 'x', sizeof(big[i]) - 1);
		big[i][0] = (char) ('0' + i);
	}
	q = mk(4096, 0);
	put(q, bigs[0]);
	put(q, bigs[1]);
	put_many_strs(q, bigs, 2, QP_EFULL);
	assert_int_equal(qsize(q), 2);
	get(q, bigs[0]);
	get(q, bigs[1]);
	/* Empty, the tail halfway: the batch wraps past the ring's end. */
	put_many_strs(q, bigs, 3, QP_OK);
	assert_int_equal(qsize(q), 3);
	put_many_strs(q, bigs, 1, QP_EFULL);
	for (int i = 0; i < 3; i++) {
		get(q, bigs[i]);
	}
	put_many_strs(q, bigs, 3, QP_OK);
	for (int i = 0; i < 3; i++) {
		get(q, bigs[i]);
	}
	check(q);
	qpi_shmq_free(q);
}

/* A capped lease leaves a larger item where it is, untouched. */
static void
test_shmq_get_lease_max_leaves_large_items(void **state)
{
	qpi_shmq *q = mk(0, 0);
	qpi_shmq_lease l;
	void *buf = NULL;
	size_t len = 0;

	put(q, "0123456789");
	assert_int_equal(
	    qpi_shmq_get_lease_max(q, 7, -1, 0, 9, &buf, &len, &l, 0),
	    QP_ETOOBIG);
	assert_int_equal(len, 10);
	assert_int_equal(qsize(q), 1);
	/* With the bin header (QPI_GET_OBJ) it takes 12 bytes. */
	assert_int_equal(qpi_shmq_get_lease_max(
	                     q, 7, -1, QPI_GET_OBJ, 11, &buf, &len, &l, 0),
	    QP_ETOOBIG);
	assert_int_equal(len, 12);
	assert_int_equal(qpi_shmq_get_lease_max(
	                     q, 7, -1, QPI_GET_OBJ, 12, &buf, &len, &l, 0),
	    QP_OK);
	assert_int_equal(len, 12);
	assert_int_equal(l.deliveries, 1);
	free(buf);
	/* A released item too. */
	assert_int_equal(qpi_shmq_release(q, l.id), QP_OK);
	assert_int_equal(
	    qpi_shmq_get_lease_max(q, 7, -1, 0, 5, &buf, &len, &l, 0),
	    QP_ETOOBIG);
	lease(q, 7, -1, "0123456789", 2);
	check(q);
	qpi_shmq_free(q);
}

/* A restarted server returns the leases of gone holders only. */
static void
test_shmq_release_stale_keeps_live_holders(void **state)
{
	qpi_shmq *q = mk(0, 0);
	uint64_t me = (uint64_t) getpid() << 32;
	size_t n = 9;

	/* A pid that is no longer running: a child, exited and reaped. */
	pid_t gone = fork();
	assert_true(gone >= 0);
	if (gone == 0) {
		_exit(0);
	}
	assert_int_equal(qu_wait(gone), 0);
	put(q, "old-server");
	put(q, "no-pid");
	put(q, "live-server");
	put(q, "live-worker");
	lease(q, ((uint64_t) gone << 32) | 3, -1, "old-server", 1);
	lease(q, 5, -1, "no-pid", 1);
	uint64_t live = lease(q, me | 4, -1, "live-server", 1);
	uint64_t worker
	    = lease(q, qpi_shmq_owner_self(), -1, "live-worker", 1);
	assert_int_equal(qpi_shmq_release_stale(q, &n), QP_OK);
	assert_int_equal(n, 2);
	assert_int_equal(qsize(q), 2);
	get(q, "old-server");
	get(q, "no-pid");
	/* The live holders still hold theirs. */
	assert_int_equal(qpi_shmq_ack(q, live), QP_OK);
	assert_int_equal(qpi_shmq_ack(q, worker), QP_OK);
	assert_int_equal(qsize(q), 0);
	check(q);
	qpi_shmq_free(q);
}

static void
test_shmq_lease_slots_run_out(void **state)
{
	qpi_shmq *q = mk(0, 2);
	qpi_shmq_lease l;
	void *buf;
	size_t len;

	put(q, "a");
	put(q, "b");
	put(q, "c");
	lease(q, 1, -1, "a", 1);
	uint64_t b = lease(q, 1, -1, "b", 1);
	assert_int_equal(
	    qpi_shmq_get_lease(q, 1, -1, 0, &buf, &len, &l, 0), QP_ELIMIT);
	assert_non_null(strstr(qp_errmsg(), "lease slots"));
	/* The item stays ready; a plain get still takes it. */
	assert_int_equal(qsize(q), 1);
	assert_int_equal(qpi_shmq_ack(q, b), QP_OK);
	lease(q, 1, -1, "c", 1);
	check(q);
	qpi_shmq_free(q);
}

static void
test_shmq_leases_across_fork(void **state)
{
	qpi_shmq *q = mk(0, 0);
	uint64_t *ids = qu_shared(4096);

	put(q, "one");
	put(q, "two");
	/* A worker leases both, acks one, and dies holding the other. */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		qpi_shmq_lease l;
		void *buf;
		size_t len;
		for (int i = 0; i < 2; i++) {
			if (qpi_shmq_get_lease(
			        q, 42, -1, 0, &buf, &len, &l, FOREVER)
			    != QP_OK) {
				_exit(1);
			}
			ids[i] = l.id;
			free(buf);
		}
		if (qpi_shmq_ack(q, ids[0]) != QP_OK) {
			_exit(2);
		}
		raise(SIGKILL);
	}
	assert_int_equal(qu_wait(pid), 128 + SIGKILL);
	assert_int_equal(qsize(q), 0);
	check(q);
	/* Whoever notices the death returns its leases. */
	size_t n = 0;
	assert_int_equal(qpi_shmq_release_owner(q, 42, &n), QP_OK);
	assert_int_equal(n, 1);
	assert_int_equal(qpi_shmq_ack(q, ids[1]), QP_ENOENT);
	/* A plain get in another process receives the redelivery. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		void *buf;
		size_t len;
		int rc = qpi_shmq_get(q, 0, NULL, 0, &buf, &len, FOREVER);
		_exit(
		    rc == QP_OK && len == 3 && !memcmp(buf, "two", 3) ? 0 : 1);
	}
	assert_int_equal(qu_wait(pid), 0);
	assert_int_equal(qsize(q), 0);
	check(q);
	munmap(ids, 4096);
	qpi_shmq_free(q);
}

static void
test_shmq_leased_items_do_not_block_the_ring(void **state)
{
	/* An 8 KiB ring, its oldest item leased all along: thousands of
	 * items still go through (leased items live in the lease area). */
	qpi_shmq *q = mk(8192, 0);
	static uint8_t item[700], out[700];
	size_t len;

	qu_init();
	qu_fill(item, 1000000, sizeof(item));
	assert_int_equal(
	    qpi_shmq_put(q, item, sizeof(item), QPI_ITEM_BIN, 0), QP_OK);
	qpi_shmq_lease l;
	void *buf;
	assert_int_equal(
	    qpi_shmq_get_lease(q, 5, -1, 0, &buf, &len, &l, 0), QP_OK);
	free(buf);
	for (uint64_t i = 0; i < 3000; i++) {
		qu_fill(item, i, sizeof(item));
		int rc = qpi_shmq_put(q, item, sizeof(item), QPI_ITEM_BIN, 0);
		if (rc != QP_OK) {
			fail_msg("put %d: %s", (int) i, qp_errmsg());
		}
		assert_int_equal(
		    qpi_shmq_get(q, 0, out, sizeof(out), NULL, &len, 0),
		    QP_OK);
		uint64_t id;
		assert_true(qu_check(out, len, &id));
		assert_int_equal(id, i);
		if (i % 500 == 0 || i < 20) {
			check(q);
		}
	}
	/* The leased item is intact: released, it comes back whole. */
	assert_int_equal(qpi_shmq_release(q, l.id), QP_OK);
	assert_int_equal(
	    qpi_shmq_get(q, 0, out, sizeof(out), NULL, &len, 0), QP_OK);
	uint64_t id;
	assert_true(qu_check(out, len, &id));
	assert_int_equal(id, 1000000);
	check(q);
	qpi_shmq_free(q);
}

static void
test_shmq_lease_area_runs_out(void **state)
{
	/* A lease area of 4 blocks (2 KiB): two 1000-byte items. */
	qpi_shmq_cfg c = {.capacity = 65536, .lease_bytes = 2048};
	qpi_shmq *q;
	static uint8_t item[1000];
	uint64_t ids[2];
	size_t len;
	void *buf;
	qpi_shmq_lease l;

	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	qu_init();
	for (uint64_t i = 0; i < 4; i++) {
		qu_fill(item, i, sizeof(item));
		assert_int_equal(
		    qpi_shmq_put(q, item, sizeof(item), QPI_ITEM_BIN, 0),
		    QP_OK);
	}
	for (int i = 0; i < 2; i++) {
		assert_int_equal(
		    qpi_shmq_get_lease(q, 1, -1, 0, &buf, &len, &l, 0), QP_OK);
		ids[i] = l.id;
		free(buf);
	}
	assert_int_equal(
	    qpi_shmq_get_lease(q, 1, -1, 0, &buf, &len, &l, 0), QP_ELIMIT);
	assert_non_null(strstr(qp_errmsg(), "lease area"));
	assert_int_equal(qsize(q), 2);
	check(q);
	/* An ack gives its blocks back; a release keeps them. */
	assert_int_equal(qpi_shmq_release(q, ids[0]), QP_OK);
	assert_int_equal(
	    qpi_shmq_get_lease(q, 1, -1, 0, &buf, &len, &l, 0), QP_OK);
	uint64_t id;
	assert_true(qu_check(buf, len, &id));
	assert_int_equal(id, 0);
	assert_int_equal(l.deliveries, 2);
	free(buf);
	assert_int_equal(qpi_shmq_ack(q, ids[1]), QP_OK);
	assert_int_equal(qpi_shmq_ack(q, l.id), QP_OK);
	check(q);
	for (uint64_t i = 2; i < 4; i++) {
		assert_int_equal(
		    qpi_shmq_get_lease(q, 1, -1, 0, &buf, &len, &l, 0), QP_OK);
		assert_true(qu_check(buf, len, &id));
		assert_int_equal(id, i);
		free(buf);
		assert_int_equal(qpi_shmq_ack(q, l.id), QP_OK);
	}
	check(q);
	qpi_shmq_free(q);
}

static void
test_shmq_big_leases_span_blocks(void **state)
{
	/* Items of many sizes, leased, released, got: bytes intact, the
	 * lease area's blocks all come back. */
	qpi_shmq *q = mk(1 << 20, 0);
	static uint8_t item[70000], out[70000];
	uint64_t ids[16];
	size_t len;
	void *buf;
	qpi_shmq_lease l;

	qu_init();
	for (int round = 0; round < 3; round++) {
		for (uint64_t i = 0; i < 16; i++) {
			size_t n = (size_t) (qu_mix(i + 100 * round) % 70000);
			qu_fill(item, i, n < 8 ? 8 : n);
			assert_int_equal(qpi_shmq_put(q, item, n < 8 ? 8 : n,
			                     QPI_ITEM_BIN, 0),
			    QP_OK);
		}
		for (int i = 0; i < 16; i++) {
			assert_int_equal(
			    qpi_shmq_get_lease(q, 1, -1, 0, &buf, &len, &l, 0),
			    QP_OK);
			ids[i] = l.id;
			free(buf);
		}
		check(q);
		for (int i = 15; i >= 0; i--) {
			if (i % 2) {
				assert_int_equal(
				    qpi_shmq_ack(q, ids[i]), QP_OK);
			} else {
				assert_int_equal(
				    qpi_shmq_release(q, ids[i]), QP_OK);
			}
		}
		check(q);
		for (uint64_t i = 0; i < 16; i += 2) {
			uint64_t id;
			assert_int_equal(qpi_shmq_get(q, 0, out, sizeof(out),
			                     NULL, &len, 0),
			    QP_OK);
			assert_true(qu_check(out, len, &id));
			assert_int_equal(id, i);
		}
		assert_int_equal(qsize(q), 0);
		check(q);
	}
	qpi_shmq_free(q);
}

/* ---- watching ---- */

static void
test_shmq_watch_sees_local_puts(void **state)
{
	qpi_shmq *q = mk(0, 0);

	assert_int_equal(qpi_shmq_watch_wait(q, 0, 0), QP_EINVAL);
	assert_int_equal(qpi_shmq_watch(q, true), QP_OK);
	uint32_t seen = qpi_shmq_watch_seq(q);
	/* Nothing happens: the wait times out. */
	int64_t t0 = qu_now_ms();
	assert_int_equal(
	    qpi_shmq_watch_wait(q, seen, qpi_deadline_ns(100)), QP_ETIMEDOUT);
	assert_true(qu_now_ms() - t0 >= 90);
	/* Another process puts: the watcher wakes at once. */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		qu_sleep_ms(100);
		_exit(
		    qpi_shmq_put(q, "x", 1, QPI_ITEM_BIN, 0) == QP_OK ? 0 : 1);
	}
	t0 = qu_now_ms();
	while (qpi_shmq_watch_seq(q) == seen) {
		assert_int_equal(
		    qpi_shmq_watch_wait(q, seen, qpi_deadline_ns(5000)),
		    QP_OK);
		assert_true(qu_now_ms() - t0 < 4000);
	}
	assert_int_equal(qu_wait(pid), 0);
	assert_int_equal(qsize(q), 1);
	/* A change made before the wait is not missed. */
	seen = qpi_shmq_watch_seq(q);
	get(q, "x");
	t0 = qu_now_ms();
	assert_int_equal(
	    qpi_shmq_watch_wait(q, seen, qpi_deadline_ns(5000)), QP_OK);
	assert_true(qu_now_ms() - t0 < 1000);
	/* Arm and the word, as for futex_waitv. */
	assert_int_equal(qpi_shmq_watch_arm(q), QP_OK);
	assert_true(*qpi_shmq_watch_word(q) == qpi_shmq_watch_seq(q));
	qpi_shmq_watch_disarm(q);
	assert_int_equal(qpi_shmq_watch(q, false), QP_OK);
	qpi_shmq_free(q);
}

typedef struct watch_sleeper {
	qpi_shmq *q;
	uint32_t seen;
	pid_t tid;
	int rc;
	int64_t ms; /* how long the wait took */
} watch_sleeper;

static void *
watch_sleep(void *arg)
{
	watch_sleeper *w = arg;
	int64_t t0 = qu_now_ms();

	__atomic_store_n(&w->tid, (pid_t) gettid(), __ATOMIC_SEQ_CST);
	w->rc = qpi_shmq_watch_wait(w->q, w->seen, qpi_deadline_ns(600));
	w->ms = qu_now_ms() - t0;
	return NULL;
}

/* Starts a thread waiting on q's watch from the current sequence, and
 * returns once it sleeps in watch_wait's futex wait. */
static void
watch_sleeper_start(watch_sleeper *w, qpi_shmq *q, pthread_t *th)
{
	*w = (watch_sleeper) {.q = q, .seen = qpi_shmq_watch_seq(q)};
	assert_int_equal(pthread_create(th, NULL, watch_sleep, w), 0);
	while (__atomic_load_n(&w->tid, __ATOMIC_SEQ_CST) == 0) {
		qu_sleep_ms(1);
	}
	assert_true(qu_in_futex(w->tid));
}

/* By default a change wakes every watcher, the changing process's own
 * too: a client's fileno watcher hears of its own puts. qpiped makes
 * its attachments quiet: the changes it makes itself it serves on its
 * own, and they move the sequence but wake none of its watchers (a
 * wake-up per ack or put would send its watcher thread after the lock
 * the request path holds, for nothing). A forked child, with its copy
 * of a quiet attachment, is another process: its change wakes them. */
static void
test_shmq_watch_quiet_own_changes(void **state)
{
	qpi_shmq *q = mk(0, 0);
	watch_sleeper w;
	pthread_t th;

	assert_int_equal(qpi_shmq_watch(q, true), QP_OK);
	/* Not quiet: the process's own put wakes its watcher. */
	watch_sleeper_start(&w, q, &th);
	assert_int_equal(qpi_shmq_put(q, "a", 1, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(w.rc, QP_OK);
	assert_true(w.ms < 500);
	get(q, "a");

	/* Quiet: its own put and get wake no one, and move the sequence. */
	qpi_shmq_watch_quiet(q, true);
	watch_sleeper_start(&w, q, &th);
	assert_int_equal(qpi_shmq_put(q, "b", 1, QPI_ITEM_BIN, 0), QP_OK);
	get(q, "b");
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(w.rc, QP_ETIMEDOUT);
	assert_true(w.ms >= 500);
	assert_true(qpi_shmq_watch_seq(q) != w.seen);
	assert_int_equal(
	    qpi_shmq_watch_wait(q, w.seen, qpi_deadline_ns(5000)), QP_OK);

	/* Another process, through its copy of the quiet attachment. */
	watch_sleeper_start(&w, q, &th);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		_exit(
		    qpi_shmq_put(q, "c", 1, QPI_ITEM_BIN, 0) == QP_OK ? 0 : 1);
	}
	assert_int_equal(qu_wait(pid), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(w.rc, QP_OK);
	assert_true(w.ms < 500);
	assert_int_equal(qpi_shmq_watch(q, false), QP_OK);
	qpi_shmq_free(q);
}

/* ---- check and bad segments ---- */

/* Maps the named segment's file to poke at it. */
static uint8_t *
map_file(const char *name, size_t *sizep)
{
	char path[256];
	struct stat st;

	snprintf(path, sizeof(path), "/dev/shm/qpipe.%s", name);
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	uint8_t *p = mmap(NULL, (size_t) st.st_size, PROT_READ | PROT_WRITE,
	    MAP_SHARED, fd, 0);
	close(fd);
	assert_true(p != MAP_FAILED);
	*sizep = (size_t) st.st_size;
	return p;
}

static void
test_shmq_check_finds_a_damaged_record(void **state)
{
	char name[96];
	qpi_shmq_cfg c = {.capacity = 65536};
	qpi_shmq *q;
	size_t size;
	void *buf;
	size_t len;

	snprintf(name, sizeof(name), "%s", qu_name("damage"));
	assert_int_equal(qpi_shmq_open(&q, name, QP_OPEN_CREATE, &c), QP_OK);
	put(q, "first");
	put(q, "MARKER-0123456789");
	check(q);
	uint8_t *p = map_file(name, &size);
	uint8_t *m = memmem(p, size, "MARKER-0123456789", 17);
	assert_non_null(m);
	m[-40] ^= 0x5a; /* the record's stamp */
	/* A get that reaches the damage: an error, never a crash, and the
	 * queue says so from then on. */
	get(q, "first");
	assert_int_equal(
	    qpi_shmq_get(q, 0, NULL, 0, &buf, &len, 0), QP_ECORRUPT);
	assert_non_null(strstr(qp_errmsg(), "corrupt"));
	assert_int_equal(
	    qpi_shmq_put(q, "x", 1, QPI_ITEM_BIN, 0), QP_ECORRUPT);
	assert_int_equal(qpi_shmq_check(q), QP_ECORRUPT);
	qpi_shmq_free(q);
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
	munmap(p, size);

	/* The check finds damage that no get has reached yet. */
	assert_int_equal(qpi_shmq_open(&q, name, QP_OPEN_CREATE, &c), QP_OK);
	put(q, "MARKER-0123456789");
	put(q, "after");
	p = map_file(name, &size);
	m = memmem(p, size, "after", 5);
	assert_non_null(m);
	m[-40 + 9] ^= 0x01; /* the kind */
	assert_int_equal(qpi_shmq_check(q), QP_ECORRUPT);
	assert_non_null(strstr(qp_errmsg(), "corrupt"));
	munmap(p, size);
	qpi_shmq_free(q);
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
}

static void
test_shmq_open_refuses_foreign_segments(void **state)
{
	char name[96];
	qpi_shmq *q;
	size_t size;

	snprintf(name, sizeof(name), "%s", qu_name("foreign"));
	assert_int_equal(qpi_shmq_open(&q, name, QP_OPEN_CREATE, NULL), QP_OK);
	qpi_shmq_free(q);
	uint8_t *p = map_file(name, &size);
	/* Another layout version. */
	uint32_t v;
	memcpy(&v, p + 8, 4);
	uint32_t v2 = v + 1;
	memcpy(p + 8, &v2, 4);
	assert_int_equal(qpi_shmq_open(&q, name, 0, NULL), QP_EVERSION);
	assert_non_null(strstr(qp_errmsg(), "version"));
	memcpy(p + 8, &v, 4);
	assert_int_equal(qpi_shmq_open(&q, name, 0, NULL), QP_OK);
	qpi_shmq_free(q);
	/* A damaged header. */
	uint64_t cap; /* at offset 64: see sq_hdr */
	memcpy(&cap, p + 64, 8);
	uint64_t cap2 = cap + 7;
	memcpy(p + 64, &cap2, 8);
	assert_int_equal(qpi_shmq_open(&q, name, 0, NULL), QP_ECORRUPT);
	assert_non_null(strstr(qp_errmsg(), "corrupt header"));
	memcpy(p + 64, &cap, 8);
	/* Not a queue at all. */
	p[0] ^= 0xff;
	assert_int_equal(
	    qpi_shmq_open(&q, name, QP_OPEN_CREATE, NULL), QP_ECORRUPT);
	assert_non_null(strstr(qp_errmsg(), "not a qpipe queue"));
	munmap(p, size);
	/* Too short to hold a header. */
	char path[256];
	snprintf(path, sizeof(path), "/dev/shm/qpipe.%s", name);
	assert_int_equal(truncate(path, 4), 0);
	assert_int_equal(qpi_shmq_open(&q, name, 0, NULL), QP_ECORRUPT);
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
	assert_int_equal(qpi_shmq_unlink(name), QP_ENOENT);
}

/* A thread with a lock budget gives up a lock held by a stopped process
 * within it, changing nothing (QP_EBUSY), and finds the queue whole once
 * the holder goes on. */
static void
test_shmq_lock_budget_gives_up(void **state)
{
	qpi_shmq *q = mk(1 << 16, 8);
	int64_t t0;
	int st;
	pid_t pid;

	(void) state;
	put(q, "a");
	if ((pid = fork()) == 0) {
		pthread_mutex_lock(qpi_shmq_test_lock(q, true));
		pthread_mutex_lock(qpi_shmq_test_lock(q, false));
		raise(SIGSTOP);
		pthread_mutex_unlock(qpi_shmq_test_lock(q, false));
		pthread_mutex_unlock(qpi_shmq_test_lock(q, true));
		_exit(0);
	}
	assert_true(pid > 0);
	assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
	assert_true(WIFSTOPPED(st));
	qpi_shmq_lock_budget(150000);
	t0 = qpi_now_ns();
	void *buf = NULL;
	size_t len = 0;
	assert_int_equal(qpi_shmq_get(q, 0, NULL, 0, &buf, &len, 0), QP_EBUSY);
	assert_non_null(strstr(qp_errmsg(), "held by another process"));
	assert_int_equal(qpi_shmq_put(q, "b", 1, QPI_ITEM_BIN, 0), QP_EBUSY);
	assert_int_equal(qpi_shmq_task_done(q), QP_EBUSY);
	/* Well within a scheduler's hiccup of the 3 x 150 us tried. */
	assert_true(qpi_now_ns() - t0 < 100 * 1000000LL);
	kill(pid, SIGCONT);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	get(q, "a");
	assert_int_equal(qsize(q), 0);
	qpi_shmq_lock_budget(-1);
	check(q);
	qpi_shmq_free(q);
}

/* ---- segments not to be trusted blindly ---- */

static void
shm_path_of(const char *name, char *path, size_t cap)
{
	const char *d = getenv("QPIPE_SHM_DIR");

	snprintf(
	    path, cap, "%s/qpipe.%s", d != NULL && *d ? d : "/dev/shm", name);
}

static uint64_t
getters(qpi_shmq *q)
{
	qp_queue_stats st;

	assert_int_equal(qpi_shmq_stat(q, &st), QP_OK);
	return st.getters;
}

/* Waits (at most 10 s) until stat counts n getters. */
static void
await_getters(qpi_shmq *q, uint64_t n)
{
	for (int i = 0; i < 1000 && getters(q) != n; i++) {
		qu_sleep_ms(10);
	}
	assert_int_equal(getters(q), n);
}

/* After rm, a local producer's put fails as a remote one's does
 * (QP_ENOENT), instead of storing into the removed segment; a queue made
 * anew under the name is a queue of its own. */
static void
test_shmq_rm_fails_local_puts(void **state)
{
	char name[96];
	qpi_shmq *q, *q2;
	void *buf = NULL;
	size_t len = 0;

	(void) state;
	snprintf(name, sizeof(name), "%s", qu_name("rmput"));
	assert_int_equal(qpi_shmq_open(&q, name, QP_OPEN_CREATE, NULL), QP_OK);
	put(q, "a");
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
	assert_int_equal(
	    qpi_shmq_put(q, "b", 1, QPI_ITEM_BIN, FOREVER), QP_ENOENT);
	assert_non_null(strstr(qp_errmsg(), "deleted"));
	assert_int_equal(
	    qpi_shmq_get(q, 0, NULL, 0, &buf, &len, 0), QP_ENOENT);
	assert_int_equal(
	    qpi_shmq_open(&q2, name, QP_OPEN_CREATE, NULL), QP_OK);
	put(q2, "c");
	get(q2, "c");
	assert_int_equal(qpi_shmq_put(q, "d", 1, QPI_ITEM_BIN, 0), QP_ENOENT);
	qpi_shmq_free(q);
	qpi_shmq_free(q2);
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
}

/* A local getter blocked on a queue that is removed wakes with the error
 * a remote getter gets (QP_ECLOSED, "deleted"), even when a new queue of
 * that name gets an item. */
static void
test_shmq_rm_wakes_blocked_getter(void **state)
{
	char name[96];
	qpi_shmq *q, *q2;
	pid_t pid;

	(void) state;
	snprintf(name, sizeof(name), "%s", qu_name("rmget"));
	assert_int_equal(qpi_shmq_open(&q, name, QP_OPEN_CREATE, NULL), QP_OK);
	if ((pid = fork()) == 0) {
		void *buf = NULL;
		size_t len = 0;
		alarm(10);
		int rc = qpi_shmq_get(q, 0, NULL, 0, &buf, &len, FOREVER);
		_exit(rc == QP_ECLOSED && strstr(qp_errmsg(), "deleted") ? 0
		                                                         : 1);
	}
	assert_true(pid > 0);
	await_getters(q, 1);
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
	assert_int_equal(
	    qpi_shmq_open(&q2, name, QP_OPEN_CREATE, NULL), QP_OK);
	put(q2, "new");
	assert_int_equal(qu_wait(pid), 0);
	get(q2, "new");
	qpi_shmq_free(q);
	qpi_shmq_free(q2);
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
}

/* stat's waiter counts heal once waiting getters are killed. */
static void
test_shmq_waiters_heal_after_kill(void **state)
{
	char name[96];
	qpi_shmq *q;
	pid_t pids[5];

	(void) state;
	snprintf(name, sizeof(name), "%s", qu_name("heal"));
	assert_int_equal(qpi_shmq_open(&q, name, QP_OPEN_CREATE, NULL), QP_OK);
	for (int i = 0; i < 5; i++) {
		if ((pids[i] = fork()) == 0) {
			void *buf = NULL;
			size_t len = 0;
			alarm(20);
			qpi_shmq_get(q, 0, NULL, 0, &buf, &len, FOREVER);
			_exit(0);
		}
		assert_true(pids[i] > 0);
	}
	await_getters(q, 5);
	for (int i = 0; i < 5; i++) {
		kill(pids[i], SIGKILL);
		assert_int_equal(qu_wait(pids[i]), 128 + SIGKILL);
	}
	assert_int_equal(getters(q), 0);
	/* The queue still works. */
	put(q, "x");
	get(q, "x");
	qpi_shmq_free(q);
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
}

/* A segment truncated by its owner while this process holds it: calls
 * fail with QP_ECORRUPT naming the cause, and the process lives on (no
 * SIGBUS death). Run in a child, whose death the parent would see. */
static void
test_shmq_truncated_segment_fails_cleanly(void **state)
{
	static const off_t sizes[] = {0, 8192, 300000};
	char name[96], path[300];

	(void) state;
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		qpi_shmq_cfg c = {.capacity = 1 << 20};
		qpi_shmq *q;
		pid_t pid;

		snprintf(name, sizeof(name), "%s", qu_name("trunc"));
		shm_path_of(name, path, sizeof(path));
		assert_int_equal(
		    qpi_shmq_open(&q, name, QP_OPEN_CREATE, &c), QP_OK);
		put(q, "before");
		if ((pid = fork()) == 0) {
			static char big[200000];
			void *buf = NULL;
			size_t len = 0;
			int bad = 0;
			alarm(10);
			/* A handle of the child's own: cmocka put its SIGBUS
			 * handler in front of the library's, and each attach
			 * puts the library's back (chaining to cmocka's). */
			qpi_shmq_free(q);
			if (qpi_shmq_open(&q, name, 0, NULL) != QP_OK) {
				_exit(6);
			}
			if (truncate(path, sizes[k]) != 0) {
				_exit(2);
			}
			/* Enough puts to reach past any cut. */
			for (int i = 0; i < 20 && !bad; i++) {
				int rc = qpi_shmq_put(
				    q, big, sizeof(big), QPI_ITEM_BIN, 0);
				bad = rc == QP_ECORRUPT;
				if (rc != QP_OK && rc != QP_ECORRUPT
				    && rc != QP_EFULL) {
					_exit(3);
				}
			}
			if (!bad || strstr(qp_errmsg(), "truncated") == NULL) {
				_exit(4);
			}
			if (qpi_shmq_get(q, 0, NULL, 0, &buf, &len, 0)
			        != QP_ECORRUPT
			    || qpi_shmq_put(q, "x", 1, QPI_ITEM_BIN, 0)
			        != QP_ECORRUPT) {
				_exit(5);
			}
			qpi_shmq_free(q);
			_exit(0);
		}
		assert_true(pid > 0);
		assert_int_equal(qu_wait(pid), 0);
		qpi_shmq_free(q);
		assert_int_equal(qpi_shmq_unlink(name), QP_OK);
	}
}

/* Lock words scribbled on: the queue is quarantined (QP_ECORRUPT), never
 * an abort in glibc or a hang on a lock nobody will free. */
static void
test_shmq_scribbled_lock_is_quarantined(void **state)
{
	char name[96];
	qpi_shmq *q;
	pid_t pid;

	(void) state;
	snprintf(name, sizeof(name), "%s", qu_name("scribble"));
	assert_int_equal(qpi_shmq_open(&q, name, QP_OPEN_CREATE, NULL), QP_OK);
	put(q, "a");
	for (int side = 0; side < 2; side++) {
		if ((pid = fork()) == 0) {
			pthread_mutex_t *m = qpi_shmq_test_lock(q, side == 0);
			void *buf = NULL;
			size_t len = 0;
			alarm(10);
			/* A plain mutex "held" by a thread that is no more. */
			memset(m, 0, sizeof(*m));
			m->__data.__lock = 0x7ffffff0;
			m->__data.__owner = 0x7ffffff0;
			int rc = side == 0
			    ? qpi_shmq_put(q, "b", 1, QPI_ITEM_BIN, FOREVER)
			    : qpi_shmq_get(q, 0, NULL, 0, &buf, &len, FOREVER);
			if (rc != QP_ECORRUPT
			    || strstr(qp_errmsg(), "quarantined") == NULL) {
				_exit(1);
			}
			/* Every later call says so at once. */
			if (qpi_shmq_put(q, "c", 1, QPI_ITEM_BIN, FOREVER)
			    != QP_ECORRUPT) {
				_exit(2);
			}
			_exit(0);
		}
		assert_true(pid > 0);
		assert_int_equal(qu_wait(pid), 0);
	}
	qpi_shmq_free(q);
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
}

/* A segment another user owns is refused unless the caller asks for it
 * (root here: the file is handed to nobody). */
static void
test_shmq_other_users_segment_refused(void **state)
{
	char name[96], path[300];
	qpi_shmq *q;

	(void) state;
	if (geteuid() != 0) {
		skip();
	}
	snprintf(name, sizeof(name), "%s", qu_name("owner"));
	shm_path_of(name, path, sizeof(path));
	assert_int_equal(qpi_shmq_open(&q, name, QP_OPEN_CREATE, NULL), QP_OK);
	qpi_shmq_free(q);
	assert_int_equal(chown(path, 65534, 65534), 0);
	assert_int_equal(qpi_shmq_open(&q, name, 0, NULL), QP_EPERM);
	assert_non_null(strstr(qp_errmsg(), "owned by uid 65534"));
	assert_int_equal(
	    qpi_shmq_open(&q, name, QP_OPEN_CREATE, NULL), QP_EPERM);
	assert_int_equal(
	    qpi_shmq_open(&q, name, QP_OPEN_ANY_OWNER, NULL), QP_OK);
	put(q, "trusted");
	get(q, "trusted");
	qpi_shmq_free(q);
	assert_int_equal(qpi_shmq_unlink(name), QP_OK);
}

/* ---- counters for metrics (the header's mx block) ---- */

/* Every way a lease ends is counted where the queue lives: confirmed,
 * given back by its holder, by its connection's end, by its expiry. */
static void
test_shmq_counters(void **state)
{
	qpi_shmq *q = mk(0, 0);
	qpi_shmq_counters c;
	size_t n;
	int64_t next;

	(void) state;
	for (int i = 0; i < 5; i++) {
		put(q, "x");
	}
	assert_int_equal(qpi_shmq_ack(q, lease(q, 1, -1, "x", 1)), QP_OK);
	assert_int_equal(qpi_shmq_release(q, lease(q, 1, -1, "x", 1)), QP_OK);
	lease(q, 7, -1, "x", 2);
	assert_int_equal(qpi_shmq_release_owner(q, 7, &n), QP_OK);
	assert_int_equal(n, 1);
	lease(q, 1, 1, "x", 3);
	qu_sleep_ms(5);
	assert_int_equal(qpi_shmq_expire(q, qpi_now_ms(), &n, &next), QP_OK);
	assert_int_equal(n, 1);
	get(q, "x");
	assert_int_equal(qpi_shmq_counters_get(q, &c), QP_OK);
	assert_int_equal(c.puts, 5);
	assert_int_equal(c.gets, 5); /* 4 leases and a get */
	assert_int_equal(c.acks, 1);
	assert_int_equal(c.nacks, 1);
	assert_int_equal(c.rel[QPI_SHMQ_REL_DISCONNECT], 1);
	assert_int_equal(c.rel[QPI_SHMQ_REL_EXPIRED], 1);
	assert_int_equal(c.rel[QPI_SHMQ_REL_DEAD], 0);
	check(q);
	qpi_shmq_free(q);
}

/* ---- batch gets ---- */

#define BT_N 2000

/* A model of the queue: ids are put in order, so the ready items, released
 * ones included, go out smallest id first. */
typedef struct bt_model {
	uint8_t st[BT_N]; /* 0 not put, 1 ready, 2 leased, 3 gone */
	uint32_t deliv[BT_N];
	uint64_t lid[BT_N];
	uint64_t nput;
} bt_model;

static uint64_t
bt_next_ready(const bt_model *m, uint64_t from)
{
	while (from < m->nput && m->st[from] != 1) {
		from++;
	}
	return from;
}

static size_t
bt_len(uint64_t id)
{
	uint64_t r = qu_mix(id * 13 + 5);
	return r % 8 == 0 ? 8 + (size_t) (r >> 8) % 3000
	                  : 8 + (size_t) (r >> 8) % 200;
}

/* Checks a batch against the model and applies it. */
static void
bt_took(bt_model *m, const uint8_t *buf, const qpi_shmq_got *got, size_t n,
    bool lease)
{
	uint64_t want = 0;

	for (size_t i = 0; i < n; i++) {
		uint64_t id = UINT64_MAX;
		want = bt_next_ready(m, want);
		const uint8_t *p
		    = got[i].own != NULL ? got[i].own : buf + got[i].off;
		assert_true(qu_check(p, got[i].len, &id));
		free(got[i].own);
		assert_int_equal(id, want);
		assert_true(id < BT_N);
		assert_int_equal(got[i].len, bt_len(id));
		m->deliv[id]++;
		if (lease) {
			assert_int_equal(
			    got[i].lease.deliveries, m->deliv[id]);
			assert_int_equal(got[i].lease.kind, QPI_ITEM_BIN);
			assert_int_equal(
			    got[i].lease.expiry_ms, got[0].lease.expiry_ms);
			m->lid[id] = got[i].lease.id;
			m->st[id] = 2;
		} else {
			m->st[id] = 3;
		}
	}
}

/* Random puts, batch gets plain and leased, single gets, acks and
 * releases (one by one and in one call), on a queue with few lease slots
 * and a small lease area (so batches stop short on both, and span many
 * commits): every item comes out in order, with its delivery count, and
 * the segment checks out after every step. */
static void
test_shmq_batch_gets_keep_order_and_leases(void **state)
{
	qpi_shmq_cfg c = {
	    .capacity = 1 << 20, .lease_slots = 96, .lease_bytes = 64 * 1024};
	static bt_model m;
	static uint8_t item[4096];
	qpi_shmq_got got[128];
	uint64_t rng = 42;
	qpi_shmq *q;
	void *buf;
	size_t n;

	(void) state;
	memset(&m, 0, sizeof(m));
	qu_init();
	assert_int_equal(qpi_shmq_anon(&q, &c), QP_OK);
	assert_int_equal(
	    qpi_shmq_get_lease_many(q, 1, -1, 0, 8, 0, &buf, got, &n, 0),
	    QP_EEMPTY);
	assert_int_equal(n, 0);
	for (int step = 0; step < 400; step++) {
		rng = qu_mix(rng + 1);
		int op = (int) (rng % 8);
		if (op < 3) {
			for (uint64_t k = rng % 40; k > 0 && m.nput < BT_N;
			     k--) {
				size_t len = bt_len(m.nput);
				qu_fill(item, m.nput, len);
				assert_int_equal(qpi_shmq_put(q, item, len,
				                     QPI_ITEM_BIN, 0),
				    QP_OK);
				m.st[m.nput++] = 1;
			}
		} else if (op < 6) {
			bool lease = op != 3;
			unsigned each = (rng >> 30) % 2 ? QPI_GET_EACH : 0;
			size_t max = 1 + (size_t) (rng >> 8) % 128;
			size_t max_bytes = (rng >> 20) % 4 == 0
			    ? (size_t) (rng >> 24) % 20000
			    : 0;
			int rc = lease ? qpi_shmq_get_lease_many(q, 1, 60000,
			             each, max, max_bytes, &buf, got, &n, 0)
			               : qpi_shmq_get_many(q, each, max,
			                   max_bytes, &buf, got, &n, 0);
			uint64_t first = bt_next_ready(&m, 0);
			if (first == m.nput) {
				assert_int_equal(rc, QP_EEMPTY);
				continue;
			}
			if (rc == QP_ELIMIT) {
				assert_true(lease);
				continue;
			}
			assert_int_equal(rc, QP_OK);
			assert_true(n >= 1 && n <= max);
			assert_true(each == 0 || buf == NULL);
			size_t used = got[n - 1].off + got[n - 1].len;
			assert_true(
			    n == 1 || max_bytes == 0 || used <= max_bytes);
			bt_took(&m, buf, got, n, lease);
			free(buf);
		} else {
			/* Settle half of the leases held: ack or release. */
			uint64_t acks[129];
			int rcs[129];
			size_t nack = 0;
			for (uint64_t id = 0; id < m.nput; id++) {
				if (m.st[id] != 2 || qu_mix(id + rng) % 2) {
					continue;
				}
				if (qu_mix(id ^ rng) % 3 == 0) {
					assert_int_equal(
					    qpi_shmq_release(q, m.lid[id]),
					    QP_OK);
					m.st[id] = 1;
				} else if (op == 6) {
					assert_int_equal(
					    qpi_shmq_ack(q, m.lid[id]), QP_OK);
					m.st[id] = 3;
				} else if (nack < 128) {
					acks[nack++] = m.lid[id];
					m.st[id] = 3;
				}
			}
			/* op 7: the acks in one call, one of them twice. */
			if (nack > 0) {
				acks[nack] = acks[nack / 2];
				memset(rcs, 0x7f, sizeof(rcs));
				assert_int_equal(
				    qpi_shmq_ack_many(q, acks, nack + 1, rcs),
				    QP_OK);
				for (size_t i = 0; i < nack; i++) {
					assert_int_equal(rcs[i], QP_OK);
				}
				assert_int_equal(rcs[nack], QP_ENOENT);
			}
		}
		check(q);
	}
	/* Everything left comes out in order. */
	for (uint64_t id = 0; id < m.nput; id++) {
		if (m.st[id] == 2) {
			assert_int_equal(qpi_shmq_ack(q, m.lid[id]), QP_OK);
			m.st[id] = 3;
		}
	}
	while (qpi_shmq_get_many(q, QPI_GET_OBJ, 128, 0, &buf, got, &n, 0)
	    == QP_OK) {
		for (size_t i = 0; i < n; i++) {
			/* QPI_GET_OBJ: each item a whole msgpack bin. */
			uint8_t *p = (uint8_t *) buf + got[i].off;
			size_t hl = got[i].len - 8 < 256 ? 2
			    : got[i].len - 8 < 65536     ? 3
			                                 : 5;
			assert_true(
			    p[0] == 0xc4 || p[0] == 0xc5 || p[0] == 0xc6);
			got[i].off += hl;
			got[i].len -= hl;
		}
		bt_took(&m, buf, got, n, false);
		free(buf);
	}
	for (uint64_t id = 0; id < m.nput; id++) {
		assert_int_equal(m.st[id], 3);
	}
	assert_int_equal(qsize(q), 0);
	check(q);
	qpi_shmq_free(q);
}

/* Batches count in the segment's counters as single calls do: each item
 * a get (released ones again), each confirmed lease an ack, none for an
 * id that was not held. */
static void
test_shmq_counters_count_batches(void **state)
{
	qpi_shmq *q = mk(0, 0);
	qpi_shmq_counters c;
	qpi_shmq_got got[64];
	uint64_t ids[41];
	int rcs[41];
	void *buf;
	size_t n;

	(void) state;
	for (int i = 0; i < 100; i++) {
		put(q, "item");
	}
	assert_int_equal(
	    qpi_shmq_get_many(q, 0, 30, 0, &buf, got, &n, 0), QP_OK);
	assert_int_equal(n, 30);
	free(buf);
	assert_int_equal(
	    qpi_shmq_get_lease_many(q, 1, -1, 0, 50, 0, &buf, got, &n, 0),
	    QP_OK);
	assert_int_equal(n, 50);
	free(buf);
	for (int i = 0; i < 40; i++) {
		ids[i] = got[i].lease.id;
	}
	ids[40] = ids[0]; /* twice: not counted again */
	assert_int_equal(qpi_shmq_ack_many(q, ids, 41, rcs), QP_OK);
	assert_int_equal(rcs[40], QP_ENOENT);
	for (int i = 40; i < 50; i++) {
		assert_int_equal(qpi_shmq_release(q, got[i].lease.id), QP_OK);
	}
	/* The 10 released come again, then 10 from the ring. */
	assert_int_equal(
	    qpi_shmq_get_lease_many(q, 1, -1, 0, 20, 0, &buf, got, &n, 0),
	    QP_OK);
	assert_int_equal(n, 20);
	assert_int_equal(got[0].lease.deliveries, 2);
	assert_int_equal(got[19].lease.deliveries, 1);
	free(buf);
	for (int i = 0; i < 20; i++) {
		ids[i] = got[i].lease.id;
	}
	assert_int_equal(qpi_shmq_ack_many(q, ids, 20, rcs), QP_OK);
	assert_int_equal(qpi_shmq_counters_get(q, &c), QP_OK);
	assert_int_equal(c.puts, 100);
	assert_int_equal(c.gets, 100); /* 30 + 50 + 20, 10 of them again */
	assert_int_equal(c.acks, 60);
	assert_int_equal(c.nacks, 10);
	assert_int_equal(qsize(q), 10);
	check(q);
	qpi_shmq_free(q);
}

/* A batch that meets a segment truncated under it (the SIGBUS guard's
 * zero pages part of the way through the ring), or a scribbled lock,
 * fails whole with QP_ECORRUPT ("quarantined"), hands nothing out, and
 * every later call says so. Run in children, as the single-get test. */
static void
test_shmq_batch_get_meets_quarantine(void **state)
{
	char name[96], path[300];
	static uint8_t item[1000];

	(void) state;
	for (int k = 0; k < 3; k++) {
		qpi_shmq_cfg c = {.capacity = 1 << 20};
		struct stat sb;
		qpi_shmq *q;
		pid_t pid;

		snprintf(name, sizeof(name), "%s", qu_name("qbatch"));
		shm_path_of(name, path, sizeof(path));
		assert_int_equal(
		    qpi_shmq_open(&q, name, QP_OPEN_CREATE, &c), QP_OK);
		for (int i = 0; i < 900; i++) {
			assert_int_equal(qpi_shmq_put(q, item, sizeof(item),
			                     QPI_ITEM_BIN, 0),
			    QP_OK);
		}
		assert_int_equal(stat(path, &sb), 0);
		if ((pid = fork()) == 0) {
			qpi_shmq_got got[900];
			void *buf = (void *) item;
			size_t n = 99;
			int rc;
			alarm(10);
			qpi_shmq_free(q);
			if (qpi_shmq_open(&q, name, 0, NULL) != QP_OK) {
				_exit(6);
			}
			if (k < 2) {
				/* The ring's second half is cut off. */
				if (truncate(path, sb.st_size - (1 << 19))
				    != 0) {
					_exit(2);
				}
			} else {
				pthread_mutex_t *m
				    = qpi_shmq_test_lock(q, false);
				memset(m, 0, sizeof(*m));
				m->__data.__lock = 0x7ffffff0;
				m->__data.__owner = 0x7ffffff0;
			}
			rc = k == 1 ? qpi_shmq_get_lease_many(
			         q, 1, -1, 0, 900, 0, &buf, got, &n, FOREVER)
			            : qpi_shmq_get_many(q, QPI_GET_EACH, 900,
			                0, &buf, got, &n, FOREVER);
			if (rc != QP_ECORRUPT || n != 0 || buf != NULL
			    || strstr(qp_errmsg(), "quarantined") == NULL) {
				_exit(3);
			}
			if (qpi_shmq_get_many(
			        q, 0, 10, 0, &buf, got, &n, FOREVER)
			        != QP_ECORRUPT
			    || qpi_shmq_ack_many(q, &n, 1, &rc)
			        != QP_ECORRUPT) {
				_exit(4);
			}
			qpi_shmq_free(q);
			_exit(0);
		}
		assert_true(pid > 0);
		if (qu_wait(pid) != 0) {
			fail_msg("case %d: child failed", k);
		}
		qpi_shmq_free(q);
		assert_int_equal(qpi_shmq_unlink(name), QP_OK);
	}
}

/* ---- a get that finds the ring empty while a put lands ----
 *
 * A get about to say "empty" checks the producers' count against what it
 * took. A put that stamps and counts its item after the get looked must
 * not read as "an item counted without its record" (damage, which marks
 * the queue corrupt): the get reads the count before it walks. Made
 * certain here: the get sleeps (its deadline is near); meanwhile a
 * producer is killed after it wrote the pad that ends the ring's lap, so
 * the get's last try walks over that pad and commits its head past it,
 * and at that commit (the journal's hook) this process puts an item. */

static qpi_shmq *fr_q;
static int fr_state; /* 0 idle, 1 waiting to sleep, 2 pad left, 3 put */

static void
fr_hook(int point)
{
	static uint8_t big[2000];

	if (fr_state == 1 && point == QPI_HOOK_WOKEN) {
		pid_t pid = fork();
		if (pid == 0) {
			fr_state = 9;
			qpi_shmq_put(fr_q, big, sizeof(big), QPI_ITEM_BIN, 0);
			_exit(1);
		}
		fr_state = qu_wait(pid) == 128 + SIGKILL ? 2 : 8;
	} else if (fr_state == 9 && point == QPI_HOOK_PUT_COPY) {
		raise(SIGKILL); /* the pad is in, the item not */
	} else if (fr_state == 2 && point == QPI_HOOK_JOURNAL) {
		fr_state = 4;
		put(fr_q, "landed");
		fr_state = 3;
	}
}

static void
test_shmq_empty_get_races_a_put(void **state)
{
	static uint8_t fill[65536];
	void *buf = NULL;
	size_t len = 0;

	(void) state;
	fr_q = mk(65536, 0);
	/* One item that ends 1000 bytes before the ring's end. */
	assert_int_equal(
	    qpi_shmq_put(fr_q, fill, 65536 - 1000 - 40, QPI_ITEM_BIN, 0),
	    QP_OK);
	assert_int_equal(
	    qpi_shmq_get(fr_q, 0, fill, sizeof(fill), NULL, &len, 0), QP_OK);
	fr_state = 1;
	qpi_shmq_test_hook = fr_hook;
	int rc
	    = qpi_shmq_get(fr_q, 0, NULL, 0, &buf, &len, qpi_deadline_ns(20));
	qpi_shmq_test_hook = NULL;
	assert_int_equal(fr_state, 3);
	if (rc != QP_EEMPTY) {
		fail_msg("get: %d %s", rc, qp_errmsg());
	}
	get(fr_q, "landed");
	check(fr_q);
	qpi_shmq_free(fr_q);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_shmq_lease_ack_removes),
	    cmocka_unit_test(test_shmq_counters),
	    cmocka_unit_test(test_shmq_release_goes_to_the_head_in_order),
	    cmocka_unit_test(test_shmq_lease_expiry),
	    cmocka_unit_test(test_shmq_release_owner_and_all),
	    cmocka_unit_test(test_shmq_dead_workers_leases_return),
	    cmocka_unit_test(test_shmq_put_many_all_or_nothing),
	    cmocka_unit_test(test_shmq_get_lease_max_leaves_large_items),
	    cmocka_unit_test(test_shmq_release_stale_keeps_live_holders),
	    cmocka_unit_test(test_shmq_lease_slots_run_out),
	    cmocka_unit_test(test_shmq_leases_across_fork),
	    cmocka_unit_test(test_shmq_leased_items_do_not_block_the_ring),
	    cmocka_unit_test(test_shmq_lease_area_runs_out),
	    cmocka_unit_test(test_shmq_big_leases_span_blocks),
	    cmocka_unit_test(test_shmq_watch_sees_local_puts),
	    cmocka_unit_test(test_shmq_watch_quiet_own_changes),
	    cmocka_unit_test(test_shmq_check_finds_a_damaged_record),
	    cmocka_unit_test(test_shmq_open_refuses_foreign_segments),
	    cmocka_unit_test(test_shmq_lock_budget_gives_up),
	    cmocka_unit_test(test_shmq_rm_fails_local_puts),
	    cmocka_unit_test(test_shmq_rm_wakes_blocked_getter),
	    cmocka_unit_test(test_shmq_waiters_heal_after_kill),
	    cmocka_unit_test(test_shmq_truncated_segment_fails_cleanly),
	    cmocka_unit_test(test_shmq_scribbled_lock_is_quarantined),
	    cmocka_unit_test(test_shmq_other_users_segment_refused),
	    cmocka_unit_test(test_shmq_batch_gets_keep_order_and_leases),
	    cmocka_unit_test(test_shmq_counters_count_batches),
	    cmocka_unit_test(test_shmq_batch_get_meets_quarantine),
	    cmocka_unit_test(test_shmq_empty_get_races_a_put),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
