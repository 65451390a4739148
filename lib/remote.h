/*
 * remote.h - the remote queue client: a queue hosted by qpiped, reached
 * through the connection layer (link.h: plain sockets for tcp:// and
 * ipc://, nng streams for tls+tcp://) and the call engine (call.h), on a
 * session authenticated with a token when the server asks for one
 * (rclient.h). queue.c dispatches the qp_queue calls of a remote handle
 * here; each has the meaning of its shared-memory twin.
 */
#ifndef QPI_REMOTE_H
#define QPI_REMOTE_H

#include "rclient.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Opens the queue a->name on the server at a->url, with the token and TLS
 * settings of opts->conn (NULL: $QPIPE_TOKEN, $QPIPE_TLS_CA): QP_EAUTH
 * when the tokens differ, one end has none, or the server's certificate
 * does not verify (qp_errmsg() says which). The first dial fails
 * fast: QP_ECONNREFUSED ("cannot connect to tcp://h:7450: connection
 * refused") when nobody listens; later drops are redialled by themselves.
 * With QP_OPEN_CREATE the queue is created (as opts says) if missing;
 * without it a missing queue is QP_ENOENT. QP_OPEN_LEASE: gets lease their
 * item until task_done (worker mode). */
int qpi_rq_open(qpi_rq **rp, const qpi_addr *a, const qp_queue_opts *opts);

/* Puts one value: raw (len bytes stored as a bin) or the msgpack encoding
 * of one value. Blocks (server side) while the queue is full, until
 * deadline_ns (absolute monotonic; 0 = no wait, INT64_MAX = forever).
 * QP_EFULL, QP_ETOOBIG, QP_ECONNRESET, QP_ECLOSED... */
int qpi_rq_put(
    qpi_rq *r, bool raw, const void *buf, size_t len, int64_t deadline_ns);

/* Gets the oldest item, as the ops table's get (queue.h): with
 * QPI_GET_OBJ the value's encoding, else a bin's payload (or the encoding
 * of any other value); into (cap bytes) or a malloc'd *bufp. An item too
 * large for into goes back to the head (QP_ETOOBIG, *lenp its size). A
 * plain handle confirms the item to the server once it has it; a
 * QP_OPEN_LEASE handle holds it until task_done or nack. QP_EEMPTY. */
int qpi_rq_get(qpi_rq *r, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline_ns);

/* Batches (qp_queue_put_many, qp_queue_get_many): puts n raw items in
 * frames of at most max_batch items and max_message bytes, each all or
 * nothing; gets up to max items (bin payloads, malloc'd), waiting until
 * deadline_ns for the first only. */
int qpi_rq_put_many(qpi_rq *r, const void *const *bufs, const size_t *lens,
    size_t n, int64_t deadline_ns);
int qpi_rq_get_many(qpi_rq *r, void **bufs, size_t *lens, size_t max,
    size_t *np, int64_t deadline_ns);

int qpi_rq_qsize(qpi_rq *r, size_t *np);
int qpi_rq_empty(qpi_rq *r, bool *emptyp);
int qpi_rq_full(qpi_rq *r, bool *fullp);

/* task_done: on a QP_OPEN_LEASE handle also confirms the oldest item it
 * holds (the task is finished). QP_EVALUE past the count. */
int qpi_rq_task_done(qpi_rq *r);

int qpi_rq_join(qpi_rq *r, int64_t deadline_ns);
int qpi_rq_stat(qpi_rq *r, qp_queue_stats *st);

/* QP_OPEN_LEASE handles: gives the oldest held item back (after delay) for
 * another attempt, with its delivery count raised. */
int qpi_rq_nack(qpi_rq *r, qp_duration delay);

/* QP_OPEN_LEASE handles: extends every held lease to lease ms (0: the
 * handle's lease_ms, else the queue's) from now. QP_ENOENT if none is held
 * or some had run out (the others are extended). */
int qpi_rq_touch(qpi_rq *r, qp_duration lease);

/* The delivery count of the oldest item held (QP_OPEN_LEASE), or of the
 * last item got (plain). QP_ENOENT if none. */
int qpi_rq_deliveries(qpi_rq *r, uint32_t *np);

/* Deletes the queue a->name on its server: QP_OK or QP_ENOENT. o: token
 * and TLS settings (NULL: $QPIPE_TOKEN, $QPIPE_TLS_CA). */
int qpi_rq_unlink(const qpi_addr *a, const qp_conn_opts *o);

/* Lists every queue of the server at a->url (a server address); o as for
 * qpi_rq_unlink. */
int qpi_rq_list(const qpi_addr *a, const qp_conn_opts *o,
    qp_queue_info **listp, size_t *np);

/* The remote backend's ops for queue.c (impl is a qpi_rq *). */
struct qpi_queue_ops;
extern const struct qpi_queue_ops qpi_remote_ops;

#endif /* QPI_REMOTE_H */
