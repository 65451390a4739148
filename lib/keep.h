/*
 * keep.h - a few buffers kept for reuse by an owner that needs large ones
 * again and again: a remote handle's batch gets and puts, whose item
 * arrays, confirmations and encoded requests are each over a KiB. A new
 * allocation of that size costs more than its size suggests: glibc's
 * malloc first merges every small block freed since (the items a caller
 * freed after its last batch) before it answers. No locking: the owner's
 * lock guards it.
 */
#ifndef QPI_KEEP_H
#define QPI_KEEP_H

#include <stddef.h>

#define QPI_KEEP_N   3 /* buffers kept at most */
#define QPI_KEEP_MIN ((size_t) 1024) /* smaller: malloc's own caches */
#define QPI_KEEP_MAX ((size_t) 64 * 1024) /* larger: given back */

/* Kept buffers; all zeros is an empty one. */
typedef struct qpi_keep {
	void *p[QPI_KEEP_N];
	size_t cap[QPI_KEEP_N];
} qpi_keep;

/* The smallest kept buffer of at least size bytes, taken out of k, else a
 * new one of size bytes (malloc'd); *capp its size. NULL: out of
 * memory. */
void *qpi_keep_get(qpi_keep *k, size_t size, size_t *capp);

/* Gives p (cap bytes, from qpi_keep_get or malloc) back: kept when cap is
 * within QPI_KEEP_MIN..QPI_KEEP_MAX and k has room, else freed. NULL is
 * fine. */
void qpi_keep_put(qpi_keep *k, void *p, size_t cap);

/* Frees every kept buffer. */
void qpi_keep_fini(qpi_keep *k);

#endif /* QPI_KEEP_H */
