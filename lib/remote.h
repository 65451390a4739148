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

/* Batches (qp_queue_put_many, qp_queue_get_many): puts n raw items in
 * frames of at most max_batch items and max_message bytes, each all or
 * nothing; gets up to max items (bin payloads, malloc'd), waiting until
 * deadline_ns for the first only. */
int qpi_rq_put_many(qpi_rq *r, const void *const *bufs, const size_t *lens,
    size_t n, int64_t deadline_ns);
int qpi_rq_get_many(qpi_rq *r, void **bufs, size_t *lens, size_t max,
    size_t *np, int64_t deadline_ns);

/* Deletes the queue a->name on its server: QP_OK or QP_ENOENT. o: token
 * and TLS settings (NULL: $QPIPE_TOKEN, $QPIPE_TLS_CA). */
int qpi_rq_unlink(const qpi_addr *a, const qp_conn_opts *o);

/* Lists every queue of the server at a->url (a server address); o as for
 * qpi_rq_unlink. */
int qpi_rq_list(const qpi_addr *a, const qp_conn_opts *o,
    qp_queue_info **listp, size_t *np);

/* The remote backend's ops for queue.c (impl is a qpi_rq *): the queue
 * calls of a remote handle, each with its shared-memory twin's meaning
 * (queue.h). A plain handle confirms each item got once it has it; a
 * QP_OPEN_LEASE handle holds it until task_done (confirmed) or nack (given
 * back, after a delay, its delivery count raised); touch extends the
 * leases held. */
struct qpi_queue_ops;
extern const struct qpi_queue_ops qpi_remote_ops;

#endif /* QPI_REMOTE_H */
