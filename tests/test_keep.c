/* test_keep.c - lib/keep.c: buffers kept for reuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "keep.h"

static int
kept(const qpi_keep *k)
{
	int n = 0;

	for (int i = 0; i < QPI_KEEP_N; i++) {
		n += k->p[i] != NULL;
	}
	return n;
}

/* Empty: a new buffer of the size asked; one given back within the bounds
 * comes back to any later ask it can hold, with its own size. */
static void
test_keep_reuses(void **state)
{
	qpi_keep k = {0};
	size_t cap;
	void *p, *q;

	(void) state;
	p = qpi_keep_get(&k, 5000, &cap);
	assert_non_null(p);
	assert_int_equal(cap, 5000);
	memset(p, 1, cap);
	qpi_keep_put(&k, p, cap);
	assert_int_equal(kept(&k), 1);
	q = qpi_keep_get(&k, 3000, &cap);
	assert_ptr_equal(q, p);
	assert_int_equal(cap, 5000);
	assert_int_equal(kept(&k), 0);
	/* Taken out: the next ask gets a buffer of its own. */
	p = qpi_keep_get(&k, 3000, &cap);
	assert_ptr_not_equal(p, q);
	assert_int_equal(cap, 3000);
	qpi_keep_put(&k, q, 5000);
	qpi_keep_put(&k, p, 3000);
	/* The smallest that holds the ask. */
	q = qpi_keep_get(&k, 2000, &cap);
	assert_ptr_equal(q, p);
	assert_int_equal(cap, 3000);
	qpi_keep_put(&k, q, cap);
	/* None large enough: a new one; the kept stay. */
	q = qpi_keep_get(&k, 9000, &cap);
	assert_int_equal(cap, 9000);
	assert_int_equal(kept(&k), 2);
	qpi_keep_put(&k, q, cap);
	assert_int_equal(kept(&k), 3);
	qpi_keep_fini(&k);
	assert_int_equal(kept(&k), 0);
}

/* Small buffers (malloc's own caches serve them) and large ones (memory
 * held for nothing) are not kept; when full, a larger one takes the place
 * of the smallest, never the other way. */
static void
test_keep_bounds(void **state)
{
	qpi_keep k = {0};
	size_t cap, caps[QPI_KEEP_N];
	void *p;

	(void) state;
	p = qpi_keep_get(&k, QPI_KEEP_MIN - 1, &cap);
	qpi_keep_put(&k, p, cap);
	assert_int_equal(kept(&k), 0);
	p = qpi_keep_get(&k, QPI_KEEP_MAX + 1, &cap);
	qpi_keep_put(&k, p, cap);
	assert_int_equal(kept(&k), 0);
	for (int i = 0; i < QPI_KEEP_N; i++) {
		caps[i] = 2000 + 1000 * (size_t) i;
		qpi_keep_put(&k, malloc(caps[i]), caps[i]);
	}
	assert_int_equal(kept(&k), QPI_KEEP_N);
	qpi_keep_put(&k, malloc(1500), 1500); /* smaller than all: freed */
	for (int i = 0; i < QPI_KEEP_N; i++) {
		assert_true(k.cap[i] >= 2000);
	}
	qpi_keep_put(&k, malloc(20000), 20000); /* the 2000 goes */
	p = qpi_keep_get(&k, 1, &cap);
	assert_int_equal(cap, 3000);
	free(p);
	p = qpi_keep_get(&k, 10000, &cap);
	assert_int_equal(cap, 20000);
	free(p);
	qpi_keep_put(&k, NULL, 5000); /* nothing */
	assert_int_equal(kept(&k), QPI_KEEP_N - 2);
	qpi_keep_fini(&k);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_keep_reuses),
	    cmocka_unit_test(test_keep_bounds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
