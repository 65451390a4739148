/*
 * test_store.c - qpiped's one interface over shared-memory and durable
 * queues (lib/store.h): each test runs on both kinds and expects the same
 * answers: items go in and out as their msgpack encoding, leases ack,
 * release and expire alike, put_many is all or nothing, put requests'
 * tags are read back, and a durable fsync=always put hands back a ticket
 * to sync.
 */
#include "htab.h"
#include "store.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static char dir[64];
static char shm_name[64]; /* the last shared-memory store's queue */

/* Frees s and removes its queue. */
static void
done(qpi_store *s)
{
	bool durable = qpi_store_durable(s);

	qpi_store_free(s);
	if (!durable) {
		qpi_shmq_unlink(shm_name);
	}
}

/* A store of kind durable (else shared memory), with maxsize items. */
static qpi_store *
mk(bool durable, uint64_t maxsize, uint32_t fsync_mode)
{
	static int n;
	char name[64], path[160];
	qpi_store *s = NULL;

	snprintf(name, sizeof(name), "store%dx%d", (int) getpid(), n++);
	if (durable) {
		qpi_durq_cfg c = {.maxsize = maxsize,
		    .capacity = 256 * 1024,
		    .fsync = {.mode = fsync_mode}};
		qpi_durq *d;
		snprintf(path, sizeof(path), "%s/%s.qlog", dir, name);
		assert_int_equal(
		    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL),
		    QP_OK);
		assert_int_equal(qpi_store_open_durq(&s, name, d), QP_OK);
		assert_true(qpi_store_durable(s));
		assert_non_null(qpi_store_durq(s));
	} else {
		qpi_shmq_cfg c = {.maxsize = maxsize, .capacity = 256 * 1024};
		assert_int_equal(
		    qpi_store_open_shm(&s, name, QP_OPEN_CREATE, &c), QP_OK);
		assert_false(qpi_store_durable(s));
		assert_null(qpi_store_durq(s));
		/* Removed once the test is done with it (rm fails the
		 * handles still open). */
		snprintf(shm_name, sizeof(shm_name), "%s", name);
	}
	assert_non_null(qpi_store_shm(s));
	return s;
}

/* Gets one item under a lease of owner 7 and checks its encoding. */
static uint64_t
get(qpi_store *s, const void *want, size_t len, uint32_t deliveries)
{
	qpi_shmq_got got;
	void *buf = NULL;
	size_t n = 0;

	assert_int_equal(
	    qpi_store_get_many(s, 7, 60000, 1, 0, &buf, &got, &n), QP_OK);
	assert_int_equal(n, 1);
	assert_int_equal(got.len, len);
	assert_memory_equal((uint8_t *) buf + got.off, want, len);
	assert_int_equal(got.lease.deliveries, deliveries);
	free(buf);
	return got.lease.id;
}

static const uint8_t bin[] = {0xc4, 3, 'a', 'b', 'c'}; /* bin "abc" */
static const uint8_t obj[] = {0x2a}; /* the integer 42 */

static void
test_store_items_and_leases(void **state)
{
	(void) state;
	for (int durable = 0; durable < 2; durable++) {
		qpi_store *s = mk(durable, 0, QPI_FSYNC_NEVER);
		qp_queue_stats st;
		uint64_t n, id;
		size_t k;

		assert_int_equal(
		    qpi_store_put(s, bin, sizeof(bin), NULL, NULL), QP_OK);
		assert_int_equal(
		    qpi_store_put(s, obj, sizeof(obj), NULL, NULL), QP_OK);
		assert_int_equal(qpi_store_qsize(s, &n), QP_OK);
		assert_int_equal(n, 2);
		/* Released, an item is back at the head, delivered again. */
		id = get(s, bin, sizeof(bin), 1);
		assert_int_equal(qpi_store_release(s, id), QP_OK);
		assert_int_equal(qpi_store_release(s, id), QP_ENOENT);
		id = get(s, bin, sizeof(bin), 2);
		assert_int_equal(qpi_store_ack(s, id), QP_OK);
		assert_int_equal(qpi_store_ack(s, id), QP_ENOENT);
		/* An owner's leases go back together. */
		get(s, obj, sizeof(obj), 1);
		assert_int_equal(qpi_store_release_owner(s, 7, &k), QP_OK);
		assert_int_equal(k, 1);
		/* A lease that runs out is back too. */
		id = get(s, obj, sizeof(obj), 2);
		assert_int_equal(qpi_store_renew(s, id, 0), QP_OK);
		int64_t next = 0;
		assert_int_equal(
		    qpi_store_expire(s, qpi_now_ms() + 1000, &k, &next),
		    QP_OK);
		assert_int_equal(k, 1);
		assert_int_equal(qpi_store_stat(s, &st), QP_OK);
		assert_int_equal(st.items, 1);
		assert_int_equal(st.unfinished, 2);
		assert_int_equal(qpi_store_task_done(s), QP_OK);
		assert_int_equal(qpi_store_task_done(s), QP_OK);
		assert_int_equal(qpi_store_task_done(s), QP_EVALUE);
		assert_int_equal(qpi_store_release_dead(s, &k), QP_OK);
		assert_int_equal(qpi_store_release_stale(s, &k), QP_OK);
		assert_int_equal(k, 0);
		done(s);
	}
}

static void
test_store_put_many_all_or_nothing(void **state)
{
	qpi_wire_item it[3] = {{.data = bin, .len = sizeof(bin)},
	    {.data = obj, .len = sizeof(obj)},
	    {.data = bin, .len = sizeof(bin)}};

	(void) state;
	for (int durable = 0; durable < 2; durable++) {
		qpi_store *s = mk(durable, 3, QPI_FSYNC_NEVER);
		uint64_t n;

		assert_int_equal(
		    qpi_store_put_many(s, it, 2, NULL, NULL), QP_OK);
		/* Room for one more: a batch of two puts none of it. */
		assert_int_equal(
		    qpi_store_put_many(s, it, 2, NULL, NULL), QP_EFULL);
		assert_int_equal(qpi_store_qsize(s, &n), QP_OK);
		assert_int_equal(n, 2);
		get(s, bin, sizeof(bin), 1);
		get(s, obj, sizeof(obj), 1);
		done(s);
	}
}

static void
test_store_tags_and_tickets(void **state)
{
	qpi_shmq_tag tag = {.seq = 9, .n = 1}, v[4];
	size_t n = 0;

	(void) state;
	memset(tag.client, 0xab, sizeof(tag.client));
	for (int durable = 0; durable < 2; durable++) {
		qpi_store *s = mk(durable, 0, QPI_FSYNC_ALWAYS);
		uint64_t ticket = 0;

		assert_int_equal(
		    qpi_store_put(s, obj, sizeof(obj), &tag, &ticket), QP_OK);
		assert_int_equal(qpi_store_tags(s, v, 4, &n), QP_OK);
		assert_int_equal(n, 1);
		assert_int_equal(v[0].seq, 9);
		assert_int_equal(v[0].done, 1);
		assert_memory_equal(v[0].client, tag.client, 16);
		/* An "always" log leaves its sync to the caller. */
		if (durable) {
			assert_true(ticket != 0);
			assert_int_equal(
			    qpi_durq_sync_to(qpi_store_durq(s), ticket),
			    QP_OK);
		} else {
			assert_int_equal(ticket, 0);
		}
		done(s);
	}
}

static int
setup(void **state)
{
	(void) state;
	snprintf(dir, sizeof(dir), "/tmp/qp-store-XXXXXX");
	return mkdtemp(dir) == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	char cmd[128];

	(void) state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* complete: the lease acked, its task done and the result put, tagged,
 * in one step on shared memory; a durable queue on either side is
 * refused, nothing done. */
static void
test_store_complete(void **state)
{
	qpi_shmq_tag tag = {.seq = 9, .n = 1}, tags[4];
	qp_queue_stats st;
	size_t n = 0;

	(void) state;
	memset(tag.client, 0x5a, sizeof(tag.client));
	qpi_store *t = mk(false, 0, 0), *r = mk(false, 0, 0);
	qpi_store *d = mk(true, 0, QPI_FSYNC_NEVER);
	assert_int_equal(qpi_store_complete(t, 1, t, obj, 1, &tag), QP_EINVAL);
	assert_int_equal(
	    qpi_store_put(t, bin, sizeof(bin), NULL, NULL), QP_OK);
	uint64_t id = get(t, bin, sizeof(bin), 1);
	/* A durable queue with a shared-memory one: not in one step. */
	assert_int_equal(
	    qpi_store_complete(t, id, d, obj, sizeof(obj), &tag), QP_ENOTSUP);
	assert_int_equal(
	    qpi_store_complete(d, id, r, obj, sizeof(obj), &tag), QP_ENOTSUP);
	assert_int_equal(
	    qpi_store_complete(t, id, r, obj, sizeof(obj), &tag), QP_OK);
	assert_int_equal(
	    qpi_store_complete(t, id, r, obj, sizeof(obj), &tag), QP_ENOENT);
	assert_int_equal(qpi_store_stat(t, &st), QP_OK);
	assert_int_equal(st.items + st.leased + st.unfinished, 0);
	get(r, obj, sizeof(obj), 1);
	assert_int_equal(qpi_store_tags(r, tags, 4, &n), QP_OK);
	assert_int_equal(n, 1);
	assert_true(tags[0].seq == 9 && tags[0].done == 1);
	assert_memory_equal(tags[0].client, tag.client, sizeof(tag.client));
	qpi_store_free(t);
	qpi_store_free(r);
	qpi_store_free(d);
}

/* A durable store named name under dir, opened (created if need be). */
static qpi_store *
dur_open(const char *name)
{
	qpi_durq_cfg c
	    = {.capacity = 256 * 1024, .fsync = {.mode = QPI_FSYNC_NEVER}};
	char path[160];
	qpi_store *s = NULL;
	qpi_durq *d;

	snprintf(path, sizeof(path), "%s/%s.qlog", dir, name);
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	assert_int_equal(qpi_store_open_durq(&s, name, d), QP_OK);
	return s;
}

/* Two durable queues: a server killed after the result went in and
 * before the ack (stood for by putting the result as the completion
 * tags it, then reopening both logs) delivers the task again; its second
 * completion acks it without a second result. */
static void
test_store_complete_durable_recovers(void **state)
{
	qpi_shmq_tag tag = {.n = 1};
	qp_queue_stats st;
	char tn[64], rn[64];
	uint64_t n, h, id;

	(void) state;
	snprintf(tn, sizeof(tn), "cplt%d", (int) getpid());
	snprintf(rn, sizeof(rn), "cplr%d", (int) getpid());
	qpi_store *t = dur_open(tn), *r = dur_open(rn);
	assert_int_equal(
	    qpi_store_put(t, bin, sizeof(bin), NULL, NULL), QP_OK);
	assert_int_equal(
	    qpi_store_put(t, obj, sizeof(obj), NULL, NULL), QP_OK);
	/* The first task completes in one call. */
	id = get(t, bin, sizeof(bin), 1);
	assert_int_equal(
	    qpi_store_complete(t, id, r, obj, sizeof(obj), NULL), QP_OK);
	assert_int_equal(
	    qpi_store_complete(t, id, r, obj, sizeof(obj), NULL), QP_ENOENT);
	/* 1,100 other requests' results come first: the completion looks
	 * among the newest tags, not the oldest 1,024. */
	qpi_shmq_tag other = {.n = 1};
	memcpy(other.client, "othercli", 8);
	for (uint64_t i = 0; i < 1100; i++) {
		other.seq = i + 1;
		assert_int_equal(
		    qpi_store_put(r, obj, sizeof(obj), &other, NULL), QP_OK);
	}
	/* The second dies between its result and its ack. */
	id = get(t, obj, sizeof(obj), 1);
	memcpy(tag.client, "qpdurcpl", 8);
	h = qpi_hash(tn, strlen(tn));
	memcpy(tag.client + 8, &h, 8);
	assert_int_equal(
	    qpi_durq_lease_item(qpi_store_durq(t), id, &tag.seq), QP_OK);
	assert_int_equal(
	    qpi_store_put(r, bin, sizeof(bin), &tag, NULL), QP_OK);
	qpi_store_free(t);
	qpi_store_free(r);
	t = dur_open(tn);
	r = dur_open(rn);
	id = get(t, obj, sizeof(obj), 1); /* delivered again */
	assert_int_equal(
	    qpi_store_complete(t, id, r, bin, sizeof(bin), NULL), QP_OK);
	assert_int_equal(qpi_store_stat(t, &st), QP_OK);
	assert_int_equal(st.items + st.leased, 0);
	assert_int_equal(qpi_store_qsize(r, &n), QP_OK);
	assert_int_equal(n, 1102); /* one result per task */
	get(r, obj, sizeof(obj), 1);
	for (int i = 0; i < 1100; i++) {
		assert_int_equal(
		    qpi_store_ack(r, get(r, obj, sizeof(obj), 1)), QP_OK);
	}
	get(r, bin, sizeof(bin), 1);
	qpi_store_free(t);
	qpi_store_free(r);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_store_items_and_leases),
	    cmocka_unit_test(test_store_put_many_all_or_nothing),
	    cmocka_unit_test(test_store_tags_and_tickets),
	    cmocka_unit_test(test_store_complete),
	    cmocka_unit_test(test_store_complete_durable_recovers),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
