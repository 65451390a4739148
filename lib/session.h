/*
 * session.h - the client's side of PROTOCOL.md's session opening, the
 * same for remote queues, pipes through the server (on call.c) and direct
 * connections (nngconn.c): a hello request and its reply (the peer's
 * limits, whether it asks for a token), then with a token the auth
 * request and the check of the peer's proof (auth.c). The caller gives
 * the transport as one function that sends a request and returns its
 * reply's bytes.
 */
#ifndef QPI_SESSION_H
#define QPI_SESSION_H

#include "auth.h"
#include "wire.h"

#include <stddef.h>
#include <stdint.h>

/* Sends the len bytes of an encoded request and returns the bytes of its
 * reply in *repp (malloc'd, the caller frees it) and *lenp. QP_OK or an
 * error with qp_errmsg() set. */
typedef int (*qpi_session_xfn)(
    void *arg, const void *req, size_t len, uint8_t **repp, size_t *lenp);

/* What the client says and how it names things. */
typedef struct qpi_session_client {
	const char *url; /* the peer, for messages */
	const char *name; /* the queue or pipe (the hello's name), or NULL */
	const uint8_t *client_id; /* QPI_WIRE_ID_LEN bytes */
	const char *client_name;
	const qpi_token *token; /* len 0: none */
	const char *refused; /* the words for a refused token */
} qpi_session_client;

/* Opens a session: hello, then (token and auth_required) auth and the
 * check of the peer's proof. *limp (may be NULL) gets the peer's limits.
 * Errors: QP_EAUTH (the token policy, a refused token, a wrong proof),
 * QP_EPROTO (not an answer to the request), the hello's refusal, and
 * x's own. */
int qpi_session_open(const qpi_session_client *c, qpi_session_xfn x, void *arg,
    qpi_wire_limits *limp);

#endif /* QPI_SESSION_H */
