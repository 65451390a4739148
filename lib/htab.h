/*
 * htab.h - an intrusive hash table of nodes keyed by a 64-bit number, and
 * FNV-1a for names (qpi_ names, internal to libqpipe). The caller embeds a
 * qpi_hnode in its struct (first, so that a node pointer casts back) and
 * owns the memory of its nodes; the table owns only its bucket array.
 * Equal keys may chain: a name's hash, say, where callers compare the
 * names. No locking: the owner's lock guards each table (the keyed hash's
 * key is made once, under pthread_once).
 */
#ifndef QPI_HTAB_H
#define QPI_HTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The link a struct embeds: set key before inserting it. */
typedef struct qpi_hnode {
	struct qpi_hnode *hnext;
	uint64_t key;
} qpi_hnode;

/* A table; all zeros is an empty one. */
typedef struct qpi_htab {
	qpi_hnode **b;
	size_t nb; /* buckets, a power of two (0 before the first insert) */
	size_t n; /* nodes */
	/* Keys whose low bits differ already (as a queue's lease ids, whose
	 * low bits are the lease slot): a key's low bits pick its bucket,
	 * so keys near each other share cache lines. Set before the first
	 * insert; not for a table whose keys a peer chooses. */
	bool spread;
} qpi_htab;

/* The first node with key, or NULL; qpi_htab_next gives the following node
 * of the same key (NULL after the last). */
qpi_hnode *qpi_htab_find(const qpi_htab *t, uint64_t key);
qpi_hnode *qpi_htab_next(qpi_hnode *n);

/* Inserts n (n->key set). Grows the table when it holds as many nodes as
 * buckets; if that allocation fails it stays at its size (chains get
 * longer). QP_OK, or QP_ENOMEM only when the table has no buckets yet and
 * cannot get them: n is then not in the table. */
int qpi_htab_insert(qpi_htab *t, qpi_hnode *n);

/* Removes n, which must be in t. */
void qpi_htab_remove(qpi_htab *t, qpi_hnode *n);

/* Removes and returns the first node with key for which match(node, arg)
 * is true (match NULL: the first with key), or NULL: a look-up and its
 * removal in one walk of the chain. */
qpi_hnode *qpi_htab_take(qpi_htab *t, uint64_t key,
    bool (*match)(const qpi_hnode *, void *), void *arg);

/* Calls fn on every node, in no particular order; fn may remove (and free)
 * the node it is given, no other. */
void qpi_htab_each(qpi_htab *t, void (*fn)(qpi_hnode *, void *), void *arg);

/* Frees the bucket array (not the nodes) and leaves an empty table. */
void qpi_htab_fini(qpi_htab *t);

/* FNV-1a (64-bit) of len bytes: the same in every process and across
 * restarts (a durable log stores some). Anyone can compute it, so it is
 * not the key of a table whose keys come from the wire. */
uint64_t qpi_hash(const void *p, size_t len);

/* SipHash-2-4 of len bytes under this process's secret key (16 random
 * bytes from getrandom at the first call): the key for tables of client
 * ids and names a client chooses, so that no client can aim its keys at
 * one bucket and make every look-up walk them (hash flooding). Differs
 * from process to process: never store it. */
uint64_t qpi_hash_keyed(const void *p, size_t len);

/* SipHash-2-4 of len bytes under key k: the function itself (tests hold
 * it to the reference vectors). */
uint64_t qpi_siphash(const uint8_t k[16], const void *p, size_t len);

#endif /* QPI_HTAB_H */
