/*
 * test_reply.c - server/reply.c's cache of spent messages: a thread gets
 * back the messages it freed, at the length it asks for; a request's
 * cycle (made, its backtrace trimmed, put back, freed) leaves its message
 * where it was however often it runs; large messages and another
 * thread's are not handed out; a thread's cache is freed when it exits
 * (LeakSanitizer in the sanitizer build).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qps.h"

/* ---- the rest of the server, as reply.c sees it ---- */

void
qps_log(int level, const char *fmt, ...)
{
	(void) level;
	(void) fmt;
}

/* ---- tests ---- */

static void
test_msg_reused(void **state)
{
	(void) state;
	nng_msg *a = qps_msg_alloc(40), *b, *c;

	assert_non_null(a);
	assert_int_equal(nng_msg_len(a), 40);
	memset(nng_msg_body(a), 0xab, 40);
	qps_msg_free(a);
	b = qps_msg_alloc(100); /* the same message, longer */
	assert_ptr_equal(b, a);
	assert_int_equal(nng_msg_len(b), 100);
	c = qps_msg_alloc(7); /* the cache is empty: a new one */
	assert_ptr_not_equal(c, b);
	assert_int_equal(nng_msg_len(c), 7);
	qps_msg_free(b);
	qps_msg_free(c);
	qps_msg_free(NULL);
	/* Both kept; the one freed last comes first. */
	assert_ptr_equal(qps_msg_alloc(3), c);
	assert_ptr_equal(qps_msg_alloc(3), b);
	nng_msg_free(b);
	nng_msg_free(c);
}

static void
test_msg_large_not_kept(void **state)
{
	(void) state;
	nng_msg *big = qps_msg_alloc(64 * 1024), *m;

	assert_non_null(big);
	assert_int_equal(nng_msg_len(big), 64 * 1024);
	qps_msg_free(big);
	m = qps_msg_alloc(10);
	assert_ptr_not_equal(m, big);
	nng_msg_free(m);
}

/* The link's cycle for each request: a message for the frame, its
 * backtrace trimmed off, put back when the reply is out. */
static void
test_msg_trimmed_cycle_stays(void **state)
{
	(void) state;
	nng_msg *m = qps_msg_alloc(60);
	uint8_t *body;

	assert_non_null(m);
	body = nng_msg_body(m);
	qps_msg_free(m);
	for (int i = 0; i < 10000; i++) {
		size_t len = 20 + (size_t) (i % 41),
		       bt = 4 + 4 * (size_t) (i % 3);
		nng_msg *r = qps_msg_alloc(len);
		assert_ptr_equal(r, m);
		/* Where it began, every time: no headroom piled up. */
		assert_ptr_equal(nng_msg_body(r), body);
		memset(nng_msg_body(r), i, len);
		assert_int_equal(nng_msg_trim(r, bt), 0);
		qps_msg_free_trimmed(r, bt);
	}
	/* A trim of the whole body moves nothing: nothing to put back. */
	m = qps_msg_alloc(8);
	assert_int_equal(nng_msg_trim(m, 8), 0);
	qps_msg_free_trimmed(m, 8);
	assert_ptr_equal(qps_msg_alloc(8), m);
	assert_ptr_equal(nng_msg_body(m), body);
	nng_msg_free(m);
}

static void *
other_thread(void *arg)
{
	nng_msg **mp = arg;

	/* Freed here, kept here: the thread's exit frees it. */
	mp[0] = qps_msg_alloc(30);
	qps_msg_free(mp[0]);
	mp[1] = qps_msg_alloc(30);
	qps_msg_free(mp[1]);
	return NULL;
}

static void
test_msg_per_thread(void **state)
{
	(void) state;
	nng_msg *theirs[2] = {NULL, NULL};
	pthread_t t;
	nng_msg *m;

	assert_int_equal(pthread_create(&t, NULL, other_thread, theirs), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_ptr_equal(theirs[0], theirs[1]);
	m = qps_msg_alloc(30); /* this thread's cache is empty */
	assert_non_null(m);
	nng_msg_free(m);
}

static void
test_rep_bytes(void **state)
{
	(void) state;
	static const uint8_t b[5] = {1, 2, 3, 4, 5};
	nng_msg *m = qps_rep_bytes(b, sizeof(b));

	assert_non_null(m);
	assert_int_equal(nng_msg_len(m), sizeof(b));
	assert_memory_equal(nng_msg_body(m), b, sizeof(b));
	qps_msg_free(m);
	m = qps_rep_bytes(b, 2);
	assert_int_equal(nng_msg_len(m), 2);
	assert_memory_equal(nng_msg_body(m), b, 2);
	nng_msg_free(m);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_msg_reused),
	    cmocka_unit_test(test_msg_large_not_kept),
	    cmocka_unit_test(test_msg_trimmed_cycle_stays),
	    cmocka_unit_test(test_msg_per_thread),
	    cmocka_unit_test(test_rep_bytes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
