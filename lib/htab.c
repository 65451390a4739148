/*
 * htab.c - an intrusive hash table keyed by 64-bit numbers (separate
 * chaining, power-of-two buckets, keys mixed before they pick a bucket),
 * and FNV-1a for names. No locking: the owner's lock guards each table.
 */
#include "htab.h"
#include "qpi.h"

#include <stdlib.h>

uint64_t
qpi_hash(const void *p, size_t len)
{
	const unsigned char *s = p;
	uint64_t h = 14695981039346656037ull; /* the FNV offset basis */

	for (size_t i = 0; i < len; i++) {
		h ^= s[i];
		h *= 1099511628211ull;
	}
	return h;
}

static size_t
htab_slot(size_t nb, uint64_t key)
{
	/* Mix the key: ids are often small consecutive numbers. */
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdull;
	key ^= key >> 33;
	return (size_t) key & (nb - 1);
}

qpi_hnode *
qpi_htab_find(const qpi_htab *t, uint64_t key)
{
	if (t->nb == 0) {
		return NULL;
	}
	for (qpi_hnode *n = t->b[htab_slot(t->nb, key)]; n != NULL;
	     n = n->hnext) {
		if (n->key == key) {
			return n;
		}
	}
	return NULL;
}

qpi_hnode *
qpi_htab_next(qpi_hnode *n)
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
htab_grow(qpi_htab *t)
{
	size_t nb = t->nb == 0 ? 64 : t->nb * 2;
	qpi_hnode **b = calloc(nb, sizeof(*b));

	if (b == NULL) {
		return;
	}
	for (size_t i = 0; i < t->nb; i++) {
		qpi_hnode *n = t->b[i], *next;
		for (; n != NULL; n = next) {
			size_t s = htab_slot(nb, n->key);
			next = n->hnext;
			n->hnext = b[s];
			b[s] = n;
		}
	}
	free(t->b);
	t->b = b;
	t->nb = nb;
}

int
qpi_htab_insert(qpi_htab *t, qpi_hnode *n)
{
	size_t s;

	if (t->n >= t->nb) {
		htab_grow(t);
	}
	if (t->nb == 0) {
		n->hnext = NULL;
		return QP_ENOMEM;
	}
	s = htab_slot(t->nb, n->key);
	n->hnext = t->b[s];
	t->b[s] = n;
	t->n++;
	return QP_OK;
}

void
qpi_htab_remove(qpi_htab *t, qpi_hnode *n)
{
	if (t->nb == 0) {
		return;
	}
	for (qpi_hnode **pp = &t->b[htab_slot(t->nb, n->key)]; *pp != NULL;
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
qpi_htab_each(qpi_htab *t, void (*fn)(qpi_hnode *, void *), void *arg)
{
	for (size_t i = 0; i < t->nb; i++) {
		qpi_hnode *n = t->b[i], *next;
		for (; n != NULL; n = next) {
			next = n->hnext;
			fn(n, arg);
		}
	}
}

void
qpi_htab_fini(qpi_htab *t)
{
	free(t->b);
	t->b = NULL;
	t->nb = 0;
	t->n = 0;
}
