/*
 * htab.c - an intrusive hash table keyed by 64-bit numbers (separate
 * chaining, power-of-two buckets, keys mixed before they pick a bucket),
 * FNV-1a for names, and SipHash-2-4 under a per-process secret key for
 * keys a client chooses. No locking: the owner's lock guards each table;
 * the secret key is made once (pthread_once).
 */
#include "htab.h"
#include "le.h"
#include "qpi.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

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

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                   \
	do {                       \
		v0 += v1;          \
		v1 = ROTL(v1, 13); \
		v1 ^= v0;          \
		v0 = ROTL(v0, 32); \
		v2 += v3;          \
		v3 = ROTL(v3, 16); \
		v3 ^= v2;          \
		v0 += v3;          \
		v3 = ROTL(v3, 21); \
		v3 ^= v0;          \
		v2 += v1;          \
		v1 = ROTL(v1, 17); \
		v1 ^= v2;          \
		v2 = ROTL(v2, 32); \
	} while (0)

uint64_t
qpi_siphash(const uint8_t k[16], const void *p, size_t len)
{
	const uint8_t *m = p;
	uint64_t k0 = qpi_le64_get(k), k1 = qpi_le64_get(k + 8);
	uint64_t v0 = k0 ^ 0x736f6d6570736575ull,
	         v1 = k1 ^ 0x646f72616e646f6dull;
	uint64_t v2 = k0 ^ 0x6c7967656e657261ull,
	         v3 = k1 ^ 0x7465646279746573ull;
	uint64_t b = (uint64_t) len << 56;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t w = qpi_le64_get(m + i);
		v3 ^= w;
		SIPROUND;
		SIPROUND;
		v0 ^= w;
	}
	for (size_t j = 0; i + j < len; j++) {
		b |= (uint64_t) m[i + j] << (8 * j);
	}
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static uint8_t hash_key[16];
static pthread_once_t hash_once = PTHREAD_ONCE_INIT;

static void
hash_key_make(void)
{
	if (getrandom(hash_key, sizeof(hash_key), 0)
	    != (ssize_t) sizeof(hash_key)) {
		/* No getrandom (a kernel before 3.17): what differs from run
		 * to run, weaker, but no worse than a public hash. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t a = (uint64_t) ts.tv_nsec ^ (uint64_t) getpid() << 32
		    ^ (uint64_t) (uintptr_t) &ts;
		uint64_t c = (uint64_t) ts.tv_sec * 0x9e3779b97f4a7c15ull;
		memcpy(hash_key, &a, 8);
		memcpy(hash_key + 8, &c, 8);
	}
}

uint64_t
qpi_hash_keyed(const void *p, size_t len)
{
	pthread_once(&hash_once, hash_key_make);
	return qpi_siphash(hash_key, p, len);
}

static size_t
htab_slot(size_t nb, bool spread, uint64_t key)
{
	if (spread) {
		return (size_t) key & (nb - 1);
	}
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
	for (qpi_hnode *n = t->b[htab_slot(t->nb, t->spread, key)]; n != NULL;
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
			size_t s = htab_slot(nb, t->spread, n->key);
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
	s = htab_slot(t->nb, t->spread, n->key);
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
	for (qpi_hnode **pp = &t->b[htab_slot(t->nb, t->spread, n->key)];
	     *pp != NULL; pp = &(*pp)->hnext) {
		if (*pp == n) {
			*pp = n->hnext;
			n->hnext = NULL;
			t->n--;
			return;
		}
	}
}

qpi_hnode *
qpi_htab_take(qpi_htab *t, uint64_t key,
    bool (*match)(const qpi_hnode *, void *), void *arg)
{
	if (t->nb == 0) {
		return NULL;
	}
	for (qpi_hnode **pp = &t->b[htab_slot(t->nb, t->spread, key)];
	     *pp != NULL; pp = &(*pp)->hnext) {
		qpi_hnode *n = *pp;
		if (n->key == key && (match == NULL || match(n, arg))) {
			*pp = n->hnext;
			n->hnext = NULL;
			t->n--;
			return n;
		}
	}
	return NULL;
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
