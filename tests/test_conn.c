/*
 * test_conn.c - server/conn.c, a connection's leases on their own: many
 * leases on one connection on several queues (the same lease id on two
 * queues is two leases), confirmed out of order, the records reused
 * rather than allocated per lease, the index by lease id against random
 * leases and acks, expired ones forgotten at the limit,
 * a queue that goes away forgotten, and a close that gives back every
 * queue's leases. The functions of the rest of the server that conn.c
 * calls are defined here instead, each recording its calls for the
 * assertions.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qps.h"

/* ---- the rest of the server, as conn.c sees it: calls recorded ---- */

static qps_config cfg;
const qps_config *qps_cfg = &cfg;

/* qps_q_release_owner calls: the queue and owner of each. */
static struct {
	qps_q *q;
	uint64_t owner;
} released[16];
static int nreleased;

void
qps_log(int level, const char *fmt, ...)
{
	(void) level;
	(void) fmt;
}

void
qps_log_limited(qps_loglimit *ll, int level, const char *fmt, ...)
{
	(void) ll;
	(void) level;
	(void) fmt;
}

bool
qps_sec_auth_required(void)
{
	return false;
}

void
qps_wait_finish(qps_wait *wt, nng_msg *rep)
{
	(void) wt;
	(void) rep;
	fail_msg("no request is parked in these tests");
}

uint64_t
qps_q_release_owner(qps_q *q, uint64_t owner)
{
	assert_true(nreleased < 16);
	released[nreleased].q = q;
	released[nreleased].owner = owner;
	nreleased++;
	return 1;
}

void
qps_pipes_conn_gone(uint32_t conn)
{
	(void) conn;
}

/* ---- helpers ---- */

static qps_q qs[3];

static int
setup(void **state)
{
	(void) state;
	memset(&cfg, 0, sizeof(cfg));
	cfg.max_connections = 16;
	cfg.conn_leases = 1024;
	memset(qs, 0, sizeof(qs));
	for (int i = 0; i < 3; i++) {
		qs[i].name[0] = (char) ('a' + i);
	}
	nreleased = 0;
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	qps_conns_fini();
	return 0;
}

/* Lease k of a batch: on queue k % 2, id k / 2 + 1 (so that ids repeat
 * across the two queues), every third a WORK lease. */
static void
lease_k(qps_conn *c, uint32_t k, int64_t expiry)
{
	qps_conn_lease_add(c, &qs[k % 2], k / 2 + 1, expiry, k % 3 == 0);
}

/* ---- tests ---- */

static void
test_conn_leases_out_of_order(void **state)
{
	qps_conn *c = qps_conn_get(1);
	int64_t later = qpi_now_ms() + 60000;
	uint32_t order[1024];
	uint32_t recs;

	(void) state;
	assert_non_null(c);
	assert_int_equal(qps_conn_lease_room(c), 1024);
	qps_conn_leased(c, &qs[0]);
	qps_conn_leased(c, &qs[1]);
	for (uint32_t k = 0; k < 1024; k++) {
		lease_k(c, k, later);
		order[k] = k;
	}
	assert_int_equal(qps_conn_lease_room(c), 0);
	recs = qps_conn_lease_records(c);
	assert_int_equal(recs, 1024);
	/* Shuffled (a fixed seed): each is taken once, as what it was. */
	srand(18);
	for (uint32_t k = 1023; k > 0; k--) {
		uint32_t j = (uint32_t) rand() % (k + 1), t = order[k];
		order[k] = order[j];
		order[j] = t;
	}
	for (uint32_t i = 0; i < 1024; i++) {
		uint32_t k = order[i];
		qps_q *q = &qs[k % 2];
		assert_int_equal(
		    qps_conn_work_holds(c, q, k / 2 + 1), k % 3 == 0);
		assert_int_equal(
		    qps_conn_work_take(c, q, k / 2 + 1), k % 3 == 0);
		assert_false(qps_conn_work_take(c, q, k / 2 + 1));
		assert_int_equal(qps_conn_lease_room(c), i + 1);
	}
	/* Batches of 256 taken and confirmed again and again: the records
	 * are reused, none allocated. */
	for (int round = 0; round < 200; round++) {
		for (uint32_t k = 0; k < 256; k++) {
			lease_k(c, k, later);
		}
		assert_int_equal(qps_conn_lease_room(c), 1024 - 256);
		for (uint32_t k = 256; k-- > 0;) {
			qps_conn_work_take(c, &qs[k % 2], k / 2 + 1);
		}
		assert_int_equal(qps_conn_lease_records(c), recs);
	}
	assert_int_equal(qps_conn_lease_room(c), 1024);
}

static void
test_conn_records_bounded(void **state)
{
	qps_conn *c = qps_conn_get(2);
	int64_t later = qpi_now_ms() + 60000;

	(void) state;
	/* One lease at a time: one chunk. */
	for (uint32_t k = 0; k < 5000; k++) {
		qps_conn_lease_add(c, &qs[0], k + 1, later, false);
		assert_false(qps_conn_work_take(c, &qs[0], k + 1));
	}
	assert_int_equal(qps_conn_lease_records(c), 16);
	/* 200 at once: fewer than twice that. */
	for (uint32_t k = 0; k < 200; k++) {
		qps_conn_lease_add(c, &qs[0], k + 1, later, false);
	}
	assert_int_equal(qps_conn_lease_records(c), 256);
	for (uint32_t k = 0; k < 200; k++) {
		qps_conn_work_take(c, &qs[0], k + 1);
	}
	/* 300 at once under --max-leases 300: never more records. */
	cfg.conn_leases = 300;
	for (uint32_t k = 0; k < 300; k++) {
		qps_conn_lease_add(c, &qs[0], k + 1, later, false);
	}
	assert_int_equal(qps_conn_lease_records(c), 300);
	assert_int_equal(qps_conn_lease_room(c), 0);
}

static void
test_conn_expired_forgotten(void **state)
{
	qps_conn *c = qps_conn_get(3);
	int64_t now = qpi_now_ms();

	(void) state;
	cfg.conn_leases = 64;
	for (uint32_t k = 0; k < 64; k++) {
		/* Every other one expired already. */
		qps_conn_lease_add(c, &qs[0], k + 1,
		    k % 2 == 0 ? now - 1 : now + 60000, true);
	}
	assert_int_equal(qps_conn_lease_room(c), 32);
	for (uint32_t k = 0; k < 64; k++) {
		assert_int_equal(qps_conn_work_holds(c, &qs[0], k + 1), k % 2);
	}
	/* The records of the forgotten ones serve the next leases. */
	for (uint32_t k = 0; k < 32; k++) {
		qps_conn_lease_add(c, &qs[1], k + 1, now + 60000, true);
	}
	assert_int_equal(qps_conn_lease_room(c), 0);
	assert_int_equal(qps_conn_lease_records(c), 64);
}

static void
test_conn_forget_q(void **state)
{
	qps_conn *c = qps_conn_get(4);
	int64_t later = qpi_now_ms() + 60000;

	(void) state;
	qps_conn_leased(c, &qs[0]);
	qps_conn_leased(c, &qs[1]);
	for (uint32_t k = 0; k < 100; k++) {
		qps_conn_lease_add(c, &qs[k % 2], k / 2 + 1, later, true);
	}
	qps_conns_forget_q(&qs[0]);
	assert_int_equal(qps_conn_lease_room(c), 1024 - 50);
	for (uint32_t k = 0; k < 100; k++) {
		assert_int_equal(
		    qps_conn_work_holds(c, &qs[k % 2], k / 2 + 1), k % 2 == 1);
	}
	assert_int_equal(c->nleased, 1);
	assert_ptr_equal(c->leased[0], &qs[1]);
}

/* Random leases and acks against a plain list of what is held: every
 * lease found as what it is, and none that is not held (the index keeps
 * its runs whole as leases leave it). */
static void
test_conn_index_random(void **state)
{
	enum { HELD_MAX = 1024 };
	static struct {
		uint64_t id;
		int q;
		bool work;
	} held[HELD_MAX];
	qps_conn *c = qps_conn_get(7);
	int64_t later = qpi_now_ms() + 60000;
	uint32_t n = 0;

	(void) state;
	srand(1815);
	for (int step = 0; step < 200000; step++) {
		int op = rand() % 8;
		if (op < 4 && n < HELD_MAX) {
			/* A fresh id: small numbers, so that the two queues
			 * share some and the index's runs meet. */
			uint64_t id;
			int q = rand() % 2;
			bool dup;
			do {
				id = (uint64_t) (rand() % 4096) + 1;
				dup = false;
				for (uint32_t i = 0; i < n && !dup; i++) {
					dup = held[i].id == id
					    && held[i].q == q;
				}
			} while (dup);
			held[n].id = id;
			held[n].q = q;
			held[n].work = rand() % 2 == 0;
			qps_conn_lease_add(c, &qs[q], id, later, held[n].work);
			n++;
		} else if (op < 7 && n > 0) {
			uint32_t i = (uint32_t) rand() % n;
			assert_int_equal(
			    qps_conn_work_take(c, &qs[held[i].q], held[i].id),
			    held[i].work);
			/* Not held any more, on either queue unless held. */
			assert_false(qps_conn_work_holds(
			    c, &qs[held[i].q], held[i].id));
			held[i] = held[--n];
		} else {
			uint32_t i = n > 0 ? (uint32_t) rand() % n : 0;
			for (uint32_t k = 0; k < n; k += 1 + n / 8) {
				assert_int_equal(
				    qps_conn_work_holds(
				        c, &qs[held[k].q], held[k].id),
				    held[k].work);
			}
			if (n > 0) {
				assert_int_equal(
				    qps_conn_work_holds(
				        c, &qs[held[i].q], held[i].id),
				    held[i].work);
			}
			assert_false(qps_conn_work_holds(c, &qs[2], 1));
		}
		assert_int_equal(qps_conn_lease_room(c), HELD_MAX - n);
	}
	for (uint32_t i = 0; i < n; i++) {
		assert_int_equal(
		    qps_conn_work_take(c, &qs[held[i].q], held[i].id),
		    held[i].work);
	}
	assert_int_equal(qps_conn_lease_room(c), HELD_MAX);
	assert_int_equal(qps_conn_lease_records(c), HELD_MAX);
}

static void
test_conn_close_returns_all(void **state)
{
	qps_conn *c = qps_conn_get(5), *d = qps_conn_get(6);
	int64_t later = qpi_now_ms() + 60000;
	uint64_t owner = c->owner;
	bool seen[3] = {false, false, false};

	(void) state;
	assert_true(owner != d->owner);
	for (uint32_t k = 0; k < 900; k++) {
		qps_conn_leased(c, &qs[k % 3]);
		qps_conn_lease_add(c, &qs[k % 3], k + 1, later, k % 2 == 0);
	}
	qps_conn_leased(d, &qs[2]);
	qps_conn_lease_add(d, &qs[2], 1, later, false);
	qps_conn_close(5);
	/* Each queue asked once, for c's owner token alone. */
	assert_int_equal(nreleased, 3);
	for (int i = 0; i < nreleased; i++) {
		assert_int_equal(released[i].owner, owner);
		seen[released[i].q - qs] = true;
	}
	assert_true(seen[0] && seen[1] && seen[2]);
	/* d is untouched. */
	assert_int_equal(qps_conn_lease_room(d), 1023);
	assert_int_equal(qps_conns_count(), 1);
	qps_conn_close(6);
	assert_int_equal(nreleased, 4);
}

/* A client that leases one item from each of many fresh queues holds
 * the same slot of each (lease id 1 << 20 | 0, say). Its records sit in
 * buckets its queues' secret hashes pick, not all in one chain that each
 * of its acks would walk. Queues get their key as the registry gives
 * it (qpi_hash_keyed of the name). */
static void
test_conn_same_slot_many_queues(void **state)
{
	enum { NQ = 1000 };
	static qps_q many[NQ];
	qps_conn *c = qps_conn_get(9);
	int64_t later = qpi_now_ms() + 60000;
	size_t longest = 0;

	(void) state;
	for (int i = 0; i < NQ; i++) {
		memset(&many[i], 0, sizeof(many[i]));
		snprintf(many[i].name, sizeof(many[i].name), "fresh-%d", i);
		many[i].node.key
		    = qpi_hash_keyed(many[i].name, strlen(many[i].name));
		qps_conn_lease_add(
		    c, &many[i], (uint64_t) 1 << 20, later, true);
	}
	assert_int_equal(qps_conn_lease_room(c), 1024 - NQ);
	for (size_t b = 0; b < c->work.nb; b++) {
		size_t len = 0;
		for (qpi_hnode *n = c->work.b[b]; n != NULL; n = n->hnext) {
			len++;
		}
		longest = len > longest ? len : longest;
	}
	assert_true(longest <= 12);
	/* Each is found and taken for its own queue. */
	for (int i = 0; i < NQ; i++) {
		assert_true(
		    qps_conn_work_holds(c, &many[i], (uint64_t) 1 << 20));
		assert_true(
		    qps_conn_work_take(c, &many[i], (uint64_t) 1 << 20));
		assert_false(
		    qps_conn_work_holds(c, &many[i], (uint64_t) 1 << 20));
	}
	assert_int_equal(qps_conn_lease_room(c), 1024);
	qps_conn_close(9);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(
	        test_conn_leases_out_of_order, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        test_conn_records_bounded, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        test_conn_expired_forgotten, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        test_conn_forget_q, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        test_conn_index_random, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        test_conn_close_returns_all, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        test_conn_same_slot_many_queues, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
