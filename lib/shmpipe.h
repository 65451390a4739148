/*
 * shmpipe.h - the shared-memory carrier of qp_pipe(): two connected ends in
 * one anonymous shared segment, created before fork().
 */
#ifndef QPI_SHMPIPE_H
#define QPI_SHMPIPE_H

#include "conn.h"

/* The bytes of each direction's ring when the caller asks for 0. */
#define QPI_SHMPIPE_RING_DEFAULT ((size_t) 4 << 20)
/* The ring's bounds: a power of two in [MIN, MAX]. */
#define QPI_SHMPIPE_RING_MIN ((size_t) 4096)
#define QPI_SHMPIPE_RING_MAX ((size_t) 1 << 30)

/* Creates the two ends of a pipe whose rings hold ring_size bytes each (0:
 * the default). duplex false: *ap only receives and *bp only sends.
 * Errors: QP_EINVAL (ring size), QP_ENOMEM, QP_ESYSTEM. */
int qpi_shmpipe_create(
    qp_conn **ap, qp_conn **bp, bool duplex, size_t ring_size);

#endif /* QPI_SHMPIPE_H */
