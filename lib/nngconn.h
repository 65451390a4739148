/*
 * nngconn.h - Connections across hosts (connection.Listener and Client):
 * one nng byte stream (tcp://, ipc://, tls+tcp://) per connection,
 * speaking the SP pair1 protocol, set up through the connection layer
 * (link.h) and opened as a session (session.h). No nng type leaves
 * nngconn.c.
 */
#ifndef QPI_NNGCONN_H
#define QPI_NNGCONN_H

#include "conn.h"

/* Listens on a parsed server address (tcp, tls or ipc; port 0 allowed)
 * with options o (may be NULL): its token, TLS files, max_message.
 * Errors: QP_EBUSY (address in use), QP_EINVAL (bad options or files),
 * QP_ENOENT (no token file), QP_ENOMEM, QP_ESYSTEM. */
int qpi_nng_listen(qp_listener **lp, const qpi_addr *a, const qp_conn_opts *o);

/* The address actually bound. */
const char *qpi_nng_listener_url(qp_listener *l);

/* How many dialers the listener refused for a missing or wrong token (they
 * closed, or failed auth, after a hello reply that asked for it). */
uint64_t qpi_nng_listener_refused(qp_listener *l);

/* Waits until deadline_ns for the next connection that completed the
 * pair1 handshake: QP_OK or QP_ETIMEDOUT. */
int qpi_nng_accept(qp_listener *l, qp_conn **cp, int64_t deadline_ns);

/* Stops listening, drops connections never accepted, frees l. */
void qpi_nng_listener_free(qp_listener *l);

/* Dials a parsed server address with options o (may be NULL): with
 * timeout 0 one attempt, otherwise retries a refused dial until the
 * timeout. Errors: QP_ECONNREFUSED, QP_ETIMEDOUT, QP_EPROTO (the peer does
 * not speak pair1), QP_EAUTH (token or TLS handshake), QP_EINVAL (bad
 * options or files), QP_ENOMEM. */
int qpi_nng_dial(qp_conn **cp, const qpi_addr *a, qp_duration timeout,
    const qp_conn_opts *o);

#endif /* QPI_NNGCONN_H */
