/*
 * spconn.h - the remote client's raw request/reply connection for tcp://
 * and ipc:// (remote.c): nng's req0 wire format (sp.h) on one plain
 * socket, with no thread of its own. Several threads may call at once:
 * their requests share the connection and each reply goes to the call
 * whose request id it carries. A dropped connection is dialled again by
 * the next call (with backoff); the call that saw it drop gets
 * QP_ECONNRESET and decides whether to send again.
 */
#ifndef QPI_SPCONN_H
#define QPI_SPCONN_H

#include "qpi.h"

#include <nng/nng.h>
#include <stddef.h>
#include <stdint.h>

typedef struct qpi_spc qpi_spc;

/* Dials a (tcp:// or ipc://) once and does the SP handshake, until
 * deadline_ns. max_recv: the largest reply body accepted. Errors:
 * QP_ECONNREFUSED (nobody listens), QP_EPROTO (not an SP rep0 peer),
 * QP_ETIMEDOUT, QP_EINVAL (bad address), QP_ENOMEM. */
int qpi_spc_open(
    qpi_spc **sp, const qpi_addr *a, size_t max_recv, int64_t deadline_ns);

/* Sets the largest reply body accepted. */
void qpi_spc_set_max(qpi_spc *s, size_t max_recv);

/* Sends the request body (len bytes) and waits for its reply: connects
 * first if needed, until conn_deadline_ns; the reply until
 * reply_deadline_ns. QP_OK: *repp is the reply body (the caller frees
 * it), *connp the number of the connection it came on (never 0).
 * QP_ECONNREFUSED: no connection could be made by conn_deadline_ns
 * (qp_errmsg() says why); QP_ECONNRESET: the connection dropped after
 * the request went out (it may have been applied); QP_ETIMEDOUT: no reply
 * in time; QP_ECLOSED: qpi_spc_close was called; QP_ENOMEM. */
int qpi_spc_call(qpi_spc *s, const void *req, size_t len,
    int64_t conn_deadline_ns, int64_t reply_deadline_ns, nng_msg **repp,
    uint32_t *connp);

/* Drops connection conn if it is still the current one (the next call
 * dials again). */
void qpi_spc_drop(qpi_spc *s, uint32_t conn);

/* Closes: calls in progress and later ones end with QP_ECLOSED. */
void qpi_spc_close(qpi_spc *s);

/* Frees s (after qpi_spc_close, with no call in progress). NULL is fine. */
void qpi_spc_free(qpi_spc *s);

/* Frees a forked child's copy of s: closes the child's descriptor (the
 * parent's connection goes on) and frees its memory, taking no lock (a
 * thread of the parent may have held one at the fork). NULL is fine. */
void qpi_spc_forget(qpi_spc *s);

#endif /* QPI_SPCONN_H */
