/*
 * keep.c - buffers kept for reuse (keep.h).
 */
#include "keep.h"

#include <stdlib.h>

void *
qpi_keep_get(qpi_keep *k, size_t size, size_t *capp)
{
	int best = -1;

	for (int i = 0; i < QPI_KEEP_N; i++) {
		if (k->p[i] != NULL && k->cap[i] >= size
		    && (best < 0 || k->cap[i] < k->cap[best])) {
			best = i;
		}
	}
	if (best >= 0) {
		void *p = k->p[best];
		*capp = k->cap[best];
		k->p[best] = NULL;
		return p;
	}
	*capp = size;
	return malloc(size > 0 ? size : 1);
}

void
qpi_keep_put(qpi_keep *k, void *p, size_t cap)
{
	if (p == NULL) {
		return;
	}
	if (cap >= QPI_KEEP_MIN && cap <= QPI_KEEP_MAX) {
		/* An empty place, else the smallest if p is larger. */
		int at = 0;
		for (int i = 0; i < QPI_KEEP_N; i++) {
			if (k->p[i] == NULL
			    || (k->p[at] != NULL && k->cap[i] < k->cap[at])) {
				at = i;
			}
		}
		if (k->p[at] == NULL || k->cap[at] < cap) {
			void *old = k->p[at];
			k->p[at] = p;
			k->cap[at] = cap;
			p = old;
		}
	}
	free(p);
}

void
qpi_keep_fini(qpi_keep *k)
{
	for (int i = 0; i < QPI_KEEP_N; i++) {
		free(k->p[i]);
		k->p[i] = NULL;
	}
}
