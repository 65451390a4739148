/* test_htab.c - lib/htab.c: the intrusive hash table and FNV-1a. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "htab.h"
#include "qpi.h"

typedef struct item {
	qpi_hnode node; /* first: a node pointer casts back */
	int val;
	int seen;
} item;

static size_t
count_key(const qpi_htab *t, uint64_t key)
{
	size_t n = 0;

	for (qpi_hnode *h = qpi_htab_find(t, key); h != NULL;
	     h = qpi_htab_next(h)) {
		assert_true(h->key == key);
		n++;
	}
	return n;
}

static void
test_htab_empty(void **state)
{
	qpi_htab t = {0};
	item a = {.node.key = 7};

	assert_null(qpi_htab_find(&t, 0));
	assert_null(qpi_htab_find(&t, 7));
	qpi_htab_remove(&t, &a.node); /* never inserted: nothing happens */
	assert_int_equal(t.n, 0);
	qpi_htab_fini(&t);
	qpi_htab_fini(&t); /* twice is fine */
	assert_null(t.b);
}

static void
test_htab_insert_find_remove(void **state)
{
	qpi_htab t = {0};
	item *v = calloc(1000, sizeof(*v));

	assert_non_null(v);
	for (int i = 0; i < 1000; i++) {
		v[i].node.key = (uint64_t) i * 3; /* small, evenly spaced */
		v[i].val = i;
		assert_int_equal(qpi_htab_insert(&t, &v[i].node), QP_OK);
	}
	assert_int_equal(t.n, 1000);
	assert_true(t.nb >= 1000 && (t.nb & (t.nb - 1)) == 0);
	for (int i = 0; i < 1000; i++) {
		item *it = (item *) qpi_htab_find(&t, (uint64_t) i * 3);
		assert_ptr_equal(it, &v[i]);
		assert_null(qpi_htab_next(&it->node));
		assert_null(qpi_htab_find(&t, (uint64_t) i * 3 + 1));
	}
	/* remove the odd ones: the even ones stay reachable */
	for (int i = 1; i < 1000; i += 2) {
		qpi_htab_remove(&t, &v[i].node);
	}
	assert_int_equal(t.n, 500);
	for (int i = 0; i < 1000; i++) {
		qpi_hnode *h = qpi_htab_find(&t, (uint64_t) i * 3);
		if (i % 2 == 0) {
			assert_ptr_equal(h, &v[i].node);
		} else {
			assert_null(h);
		}
	}
	qpi_htab_fini(&t);
	assert_int_equal(t.n, 0);
	assert_null(qpi_htab_find(&t, 0));
	free(v);
}

/* A spread table (lease ids: generation << 20 | slot) puts a key in the
 * bucket its low bits name, and finds, takes and grows as any other:
 * keys of equal low bits (the same slot in two generations or two
 * queues) chain, and a grown table keeps every key reachable. */
static void
test_htab_spread(void **state)
{
	qpi_htab t = {.spread = true};
	enum { N = 600 };
	item *v = calloc(2 * N, sizeof(*v));

	(void) state;
	assert_non_null(v);
	for (int i = 0; i < N; i++) {
		/* slot i in generation 1, and slot i in generation 7 */
		v[i].node.key = (uint64_t) 1 << 20 | (uint64_t) i;
		v[N + i].node.key = (uint64_t) 7 << 20 | (uint64_t) i;
		v[i].val = i;
		v[N + i].val = N + i;
		assert_int_equal(qpi_htab_insert(&t, &v[i].node), QP_OK);
		assert_int_equal(qpi_htab_insert(&t, &v[N + i].node), QP_OK);
	}
	assert_int_equal(t.n, 2 * N);
	assert_true(t.nb >= 2 * N);
	for (int i = 0; i < 2 * N; i++) {
		uint64_t k = v[i].node.key;
		/* where its low bits say, and found there */
		bool there = false;
		for (qpi_hnode *h = t.b[k & (t.nb - 1)]; h != NULL;
		     h = h->hnext) {
			there = there || h == &v[i].node;
		}
		assert_true(there);
		assert_ptr_equal(qpi_htab_find(&t, k), &v[i].node);
		assert_null(qpi_htab_find(&t, k + ((uint64_t) 1 << 20)));
	}
	/* take in the order given, as a batch of acks does */
	for (int i = 0; i < N; i++) {
		assert_ptr_equal(
		    qpi_htab_take(&t, v[i].node.key, NULL, NULL), &v[i].node);
	}
	assert_int_equal(t.n, N);
	for (int i = 0; i < N; i++) {
		assert_null(qpi_htab_find(&t, v[i].node.key));
		assert_ptr_equal(
		    qpi_htab_find(&t, v[N + i].node.key), &v[N + i].node);
	}
	qpi_htab_fini(&t);
	free(v);
}

static void
test_htab_equal_keys(void **state)
{
	qpi_htab t = {0};
	item a = {.node.key = 42, .val = 1}, b = {.node.key = 42, .val = 2};
	item c = {.node.key = 42, .val = 3}, other = {.node.key = 43};

	assert_int_equal(qpi_htab_insert(&t, &a.node), QP_OK);
	assert_int_equal(qpi_htab_insert(&t, &other.node), QP_OK);
	assert_int_equal(qpi_htab_insert(&t, &b.node), QP_OK);
	assert_int_equal(qpi_htab_insert(&t, &c.node), QP_OK);
	assert_int_equal(count_key(&t, 42), 3);
	assert_int_equal(count_key(&t, 43), 1);
	/* the chain of equal keys holds each node once */
	int sum = 0;
	for (qpi_hnode *h = qpi_htab_find(&t, 42); h != NULL;
	     h = qpi_htab_next(h)) {
		sum += ((item *) h)->val;
	}
	assert_int_equal(sum, 6);
	qpi_htab_remove(&t, &b.node);
	assert_int_equal(count_key(&t, 42), 2);
	assert_null(b.node.hnext);
	qpi_htab_remove(&t, &a.node);
	qpi_htab_remove(&t, &c.node);
	assert_int_equal(count_key(&t, 42), 0);
	assert_int_equal(count_key(&t, 43), 1);
	assert_int_equal(t.n, 1);
	qpi_htab_fini(&t);
}

static bool
val_is(const qpi_hnode *n, void *arg)
{
	return ((const item *) n)->val == *(int *) arg;
}

/* A take finds the node the match names among equal keys, unlinks it in
 * the same walk and counts it out; one that matches nothing is NULL. */
static void
test_htab_take(void **state)
{
	qpi_htab t = {0};
	item a = {.node.key = 42, .val = 1}, b = {.node.key = 42, .val = 2};
	item c = {.node.key = 42, .val = 3}, other = {.node.key = 43};
	int want = 2, none = 9;

	(void) state;
	assert_null(qpi_htab_take(&t, 42, NULL, NULL)); /* no buckets */
	assert_int_equal(qpi_htab_insert(&t, &a.node), QP_OK);
	assert_int_equal(qpi_htab_insert(&t, &other.node), QP_OK);
	assert_int_equal(qpi_htab_insert(&t, &b.node), QP_OK);
	assert_int_equal(qpi_htab_insert(&t, &c.node), QP_OK);
	assert_ptr_equal(qpi_htab_take(&t, 42, val_is, &want), &b.node);
	assert_null(b.node.hnext);
	assert_int_equal(t.n, 3);
	assert_int_equal(count_key(&t, 42), 2);
	assert_null(qpi_htab_take(&t, 42, val_is, &want)); /* gone */
	assert_null(qpi_htab_take(&t, 42, val_is, &none));
	assert_null(qpi_htab_take(&t, 44, NULL, NULL));
	assert_int_equal(t.n, 3);
	qpi_hnode *first = qpi_htab_take(&t, 42, NULL, NULL);
	assert_true(first == &a.node || first == &c.node);
	assert_int_equal(count_key(&t, 42), 1);
	assert_ptr_equal(qpi_htab_take(&t, 43, NULL, NULL), &other.node);
	assert_int_equal(t.n, 1);
	qpi_htab_fini(&t);
}

static void
mark_cb(qpi_hnode *n, void *arg)
{
	int *calls = arg;

	((item *) n)->seen++;
	(*calls)++;
}

typedef struct drop_arg {
	qpi_htab *t;
	int calls;
} drop_arg;

/* Removes and frees every node with an odd value, as it is visited. */
static void
drop_odd_cb(qpi_hnode *n, void *arg)
{
	drop_arg *a = arg;

	a->calls++;
	if (((item *) n)->val % 2 != 0) {
		qpi_htab_remove(a->t, n);
		free(n);
	}
}

static void
free_cb(qpi_hnode *n, void *arg)
{
	free(n);
}

static void
test_htab_each(void **state)
{
	qpi_htab t = {0};
	item *v = calloc(300, sizeof(*v));
	int calls = 0;

	assert_non_null(v);
	for (int i = 0; i < 300; i++) {
		v[i].node.key = (uint64_t) (i % 100); /* three per key */
		assert_int_equal(qpi_htab_insert(&t, &v[i].node), QP_OK);
	}
	qpi_htab_each(&t, mark_cb, &calls);
	assert_int_equal(calls, 300);
	for (int i = 0; i < 300; i++) {
		assert_int_equal(v[i].seen, 1);
	}
	qpi_htab_fini(&t);
	free(v);

	/* fn may remove and free the node it is given */
	for (int i = 0; i < 200; i++) {
		item *it = calloc(1, sizeof(*it));
		assert_non_null(it);
		it->node.key = (uint64_t) i;
		it->val = i;
		assert_int_equal(qpi_htab_insert(&t, &it->node), QP_OK);
	}
	drop_arg da = {&t, 0};
	qpi_htab_each(&t, drop_odd_cb, &da);
	assert_int_equal(da.calls, 200);
	assert_int_equal(t.n, 100);
	for (int i = 0; i < 200; i++) {
		assert_int_equal(count_key(&t, (uint64_t) i), i % 2 == 0);
	}
	qpi_htab_each(&t, free_cb, NULL);
	qpi_htab_fini(&t);
}

static void
test_htab_hash(void **state)
{
	/* FNV-1a 64 reference values */
	assert_true(qpi_hash("", 0) == 0xcbf29ce484222325ull);
	assert_true(qpi_hash("a", 1) == 0xaf63dc4c8601ec8cull);
	assert_true(qpi_hash("foobar", 6) == 0x85944171f73967e8ull);
	/* every byte counts, a NUL too */
	assert_true(qpi_hash("jobs", 4) != qpi_hash("jobs", 3));
	assert_true(qpi_hash("a\0b", 3) != qpi_hash("a\0c", 3));
}

/* SipHash-2-4 against the reference vectors (key 00..0f, the messages
 * 00 01 02 .. of 0 to 15 bytes: the first 16 of the authors' vectors). */
static void
test_htab_siphash(void **state)
{
	static const uint64_t want[16]
	    = {0x726fdb47dd0e0e31ull, 0x74f839c593dc67fdull,
	        0x0d6c8009d9a94f5aull, 0x85676696d7fb7e2dull,
	        0xcf2794e0277187b7ull, 0x18765564cd99a68dull,
	        0xcbc9466e58fee3ceull, 0xab0200f58b01d137ull,
	        0x93f5f5799a932462ull, 0x9e0082df0ba9e4b0ull,
	        0x7a5dbbc594ddb9f3ull, 0xf4b32f46226bada7ull,
	        0x751e8fbc860ee5fbull, 0x14ea5627c0843d90ull,
	        0xf723ca908e7af2eeull, 0xa129ca6149be45e5ull};
	uint8_t k[16], m[16];
	(void) state;

	for (int i = 0; i < 16; i++) {
		k[i] = m[i] = (uint8_t) i;
	}
	for (size_t n = 0; n < 16; n++) {
		assert_true(qpi_siphash(k, m, n) == want[n]);
	}
	/* The keyed hash: the same answer within a process. */
	assert_true(qpi_hash_keyed("queue", 5) == qpi_hash_keyed("queue", 5));
	assert_true(qpi_hash_keyed("queue", 5) != qpi_hash_keyed("queuf", 5));
}

/* Keys a client could aim at one bucket: 512 16-byte client ids whose
 * public hash (FNV-1a) puts them all in bucket 0 of a 512-bucket table.
 * Keyed with qpi_hash_keyed they spread: no chain longer than 12 (the
 * longest of 512 keys in 512 buckets at random is about 5). With
 * qpi_hash as the table's key they would all chain in one bucket. */
static void
test_htab_keyed_spreads(void **state)
{
	enum { N = 512 };
	static item nodes[N];
	static uint8_t ids[N][16];
	qpi_htab pub = {0}, keyed = {0};
	uint64_t x = 88172645463325252ull;
	size_t found = 0, longest = 0;
	(void) state;

	while (found < N) {
		for (int j = 0; j < 16; j += 8) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			memcpy(ids[found] + j, &x, 8);
		}
		/* the bucket htab.c would pick for FNV-1a's hash in 512 */
		uint64_t h = qpi_hash(ids[found], 16);
		h ^= h >> 33;
		h *= 0xff51afd7ed558ccdull;
		h ^= h >> 33;
		if ((h & (N - 1)) == 0) {
			found++;
		}
	}
	for (int i = 0; i < N; i++) {
		nodes[i].node.key = qpi_hash(ids[i], 16);
		assert_int_equal(qpi_htab_insert(&pub, &nodes[i].node), QP_OK);
	}
	assert_int_equal(pub.nb, N);
	assert_int_equal(count_key(&pub, nodes[0].node.key), 1);
	size_t first = 0;
	for (qpi_hnode *h = pub.b[0]; h != NULL; h = h->hnext) {
		first++;
	}
	assert_int_equal(first, N); /* the flood, with the public hash */
	for (int i = 0; i < N; i++) {
		qpi_htab_remove(&pub, &nodes[i].node);
		nodes[i].node.key = qpi_hash_keyed(ids[i], 16);
		assert_int_equal(
		    qpi_htab_insert(&keyed, &nodes[i].node), QP_OK);
	}
	for (size_t b = 0; b < keyed.nb; b++) {
		size_t len = 0;
		for (qpi_hnode *h = keyed.b[b]; h != NULL; h = h->hnext) {
			len++;
		}
		longest = len > longest ? len : longest;
	}
	assert_true(longest <= 12);
	qpi_htab_fini(&pub);
	qpi_htab_fini(&keyed);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_htab_empty),
	    cmocka_unit_test(test_htab_insert_find_remove),
	    cmocka_unit_test(test_htab_spread),
	    cmocka_unit_test(test_htab_equal_keys),
	    cmocka_unit_test(test_htab_take),
	    cmocka_unit_test(test_htab_each),
	    cmocka_unit_test(test_htab_hash),
	    cmocka_unit_test(test_htab_siphash),
	    cmocka_unit_test(test_htab_keyed_spreads),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
