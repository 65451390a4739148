/*
 * tab.c - the server's small containers: an intrusive hash table keyed by
 * 64-bit numbers, and FNV-1a for names. No locking: the owner's lock
 * guards each table.
 */
#include "qps.h"

#include <stdlib.h>

uint64_t
qps_hash(const void *p, size_t len)
{
	const unsigned char *s = p;
	uint64_t h = 1469598103934665603ull;

	for (size_t i = 0; i < len; i++) {
		h ^= s[i];
		h *= 1099511628211ull;
	}
	return h;
}

static size_t
htab_slot(const qps_htab *t, uint64_t key)
{
	/* Mix the key: pipe ids are small consecutive numbers. */
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdull;
	key ^= key >> 33;
	return (size_t) key & (t->nb - 1);
}

qps_hnode *
qps_htab_find(const qps_htab *t, uint64_t key)
{
	if (t->nb == 0) {
		return NULL;
	}
	for (qps_hnode *n = t->b[htab_slot(t, key)]; n != NULL; n = n->hnext) {
		if (n->key == key) {
			return n;
		}
	}
	return NULL;
}

qps_hnode *
qps_htab_next(qps_hnode *n)
{
	uint64_t key = n->key;

	for (n = n->hnext; n != NULL; n = n->hnext) {
		if (n->key == key) {
			return n;
		}
	}
	return NULL;
}

static void
htab_grow(qps_htab *t)
{
	size_t nb = t->nb == 0 ? 64 : t->nb * 2;
	qps_hnode **b = calloc(nb, sizeof(*b));

	if (b == NULL) {
		return;
	}
	for (size_t i = 0; i < t->nb; i++) {
		qps_hnode *n = t->b[i], *next;
		for (; n != NULL; n = next) {
			next = n->hnext;
			qps_htab tmp = {.b = b, .nb = nb};
			size_t s = htab_slot(&tmp, n->key);
			n->hnext = b[s];
			b[s] = n;
		}
	}
	free(t->b);
	t->b = b;
	t->nb = nb;
}

void
qps_htab_insert(qps_htab *t, qps_hnode *n)
{
	if (t->n >= t->nb) {
		htab_grow(t);
	}
	if (t->nb == 0) {
		/* Not even the first bucket array: keep n out of reach rather
		 * than fail; the caller's lookups will miss it. */
		n->hnext = NULL;
		return;
	}
	size_t s = htab_slot(t, n->key);
	n->hnext = t->b[s];
	t->b[s] = n;
	t->n++;
}

void
qps_htab_remove(qps_htab *t, qps_hnode *n)
{
	if (t->nb == 0) {
		return;
	}
	for (qps_hnode **pp = &t->b[htab_slot(t, n->key)]; *pp != NULL;
	     pp = &(*pp)->hnext) {
		if (*pp == n) {
			*pp = n->hnext;
			n->hnext = NULL;
			t->n--;
			return;
		}
	}
}

void
qps_htab_each(qps_htab *t, void (*fn)(qps_hnode *, void *), void *arg)
{
	for (size_t i = 0; i < t->nb; i++) {
		qps_hnode *n = t->b[i], *next;
		for (; n != NULL; n = next) {
			next = n->hnext;
			fn(n, arg);
		}
	}
}

void
qps_htab_fini(qps_htab *t)
{
	free(t->b);
	t->b = NULL;
	t->nb = 0;
	t->n = 0;
}
