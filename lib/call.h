/*
 * call.h - the request/reply engine of the remote client (remote.c,
 * rpipe.c): requests framed as SP req0 (sp.h) on one connection of the
 * connection layer (link.h), whichever driver carries it. Several threads
 * may call at once: their requests share the connection and each reply
 * goes to the call whose request id it carries. Every new connection runs
 * the caller's hook (the session handshake) before any call uses it. A
 * dropped connection is dialled again by the next call (with backoff);
 * the call that saw it drop gets QP_ECONNRESET and decides whether to send
 * again. No thread of its own.
 */
#ifndef QPI_CALL_H
#define QPI_CALL_H

#include "link.h"

#include <stddef.h>
#include <stdint.h>

typedef struct qpi_ce qpi_ce;

/* Runs on each new connection l (rd: its receive buffer) before it is
 * shared, until deadline_ns: QP_OK lets calls use it; an error closes it
 * and fails the dial. */
typedef int (*qpi_ce_hook)(
    void *arg, qpi_link *l, qpi_link_rd *rd, int64_t deadline_ns);

/* Dials a (link.h picks the driver; o: TLS settings, may be NULL) once,
 * runs hook, until deadline_ns. max_recv: the largest reply body
 * accepted. Errors as qpi_link_dial, and the hook's. */
int qpi_ce_open(qpi_ce **cp, const qpi_addr *a, const qp_conn_opts *o,
    size_t max_recv, qpi_ce_hook hook, void *arg, int64_t deadline_ns);

/* Sets the largest reply body accepted. */
void qpi_ce_set_max(qpi_ce *s, size_t max_recv);

/* A session's opening (session.h's qpi_session_xfn, arg a qpi_ce_hs) on
 * an unshared connection: sends len bytes of req in one frame (pair1: a
 * direct connection's, else req0) and reads its reply until the deadline
 * into *repp (malloc'd) and *lenp. Errors: QP_ENOMEM; a lost or silent
 * peer is QP_ECONNREFUSED, or with pair1 QP_EPROTO or QP_ETIMEDOUT. */
typedef struct qpi_ce_hs {
	qpi_link *l;
	qpi_link_rd *rd; /* l's receive buffer */
	bool pair1;
	int64_t deadline_ns;
} qpi_ce_hs;
int qpi_ce_hs_xfn(
    void *arg, const void *req, size_t len, uint8_t **repp, size_t *lenp);

/* A reply: len bytes at data, within mem (malloc'd, cap bytes). */
typedef struct qpi_ce_reply {
	uint8_t *mem;
	size_t cap;
	const uint8_t *data;
	size_t len;
} qpi_ce_reply;

/* The sizes of reply buffer qpi_ce_reply_free keeps for the next reply to
 * reuse (one per session): a batch's reply is read into the memory of the
 * one before, not a new allocation (why that matters: keep.h). */
#define QPI_CE_SPARE_MIN ((size_t) 1024)
#define QPI_CE_SPARE_MAX ((size_t) 256 * 1024)

/* Sends req (connecting first, until conn_deadline_ns) and waits for the
 * reply until reply_deadline_ns: *rep (free it with qpi_ce_reply_free),
 * *connp (its connection, never 0). Errors: QP_ECONNREFUSED (no connection in
 * time), QP_ECONNRESET (dropped after sending: it may have been applied),
 * QP_ETIMEDOUT, QP_ECLOSED, QP_EAUTH or QP_EPROTO (a hook), QP_ENOMEM. */
int qpi_ce_call(qpi_ce *s, const void *req, size_t len,
    int64_t conn_deadline_ns, int64_t reply_deadline_ns, qpi_ce_reply *rep,
    uint32_t *connp);

/* Done with *rep (s its session): its memory is kept for s's next reply
 * when its size is within the bounds above and s keeps none yet, else
 * freed. rep->mem is NULL after; a NULL one is fine. */
void qpi_ce_reply_free(qpi_ce *s, qpi_ce_reply *rep);

/* Drops connection conn if it is still the current one (the next call
 * dials again). */
void qpi_ce_drop(qpi_ce *s, uint32_t conn);

/* Closes: calls in progress and later ones end with QP_ECLOSED. */
void qpi_ce_close(qpi_ce *s);

/* Frees s (after qpi_ce_close, with no call in progress). NULL is fine. */
void qpi_ce_free(qpi_ce *s);

/* Frees a forked child's copy of s (plain sockets only): closes the
 * child's descriptor (the parent's connection goes on) and frees its
 * memory, taking no lock (a thread of the parent may have held one at
 * the fork). NULL is fine. */
void qpi_ce_forget(qpi_ce *s);

#endif /* QPI_CALL_H */
