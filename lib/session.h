/*
 * session.h - PROTOCOL.md's session opening, in one place for every
 * client in lib/ (remote queues and pipes through the server on call.c,
 * direct connections' dialers) and for direct connections' listeners:
 * a hello request and its reply (the peer's limits, whether it asks for
 * a token), then with a token the auth request, checked against the
 * hello's nonce, and the listener's proof in return (auth.c). The client
 * gives its transport as one function that sends a request and returns
 * its reply's bytes; the listener's side answers one request at a time.
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

/* A listener's side of one session opening (qp_listen's and qpiped's).
 * Zero it, then set token (len 0: none required) and max_message, or
 * limits (all the hello reply tells; NULL: max_message, default batch). */
typedef struct qpi_session_server {
	const qpi_token *token;
	uint64_t max_message;
	const qpi_wire_limits *limits;
	qpi_auth_server as; /* the nonce of the hello reply */
	bool auth_wait; /* told the dialer to authenticate; not yet done */
	bool open; /* the session is open: messages may follow */
} qpi_session_server;

/* Answers the next handshake request (len bytes of req): a hello, then
 * with a token an auth. *out (reset first) gets the encoded reply, empty
 * when there is nothing to answer. QP_OK: go on (s->open once the session
 * is open); QP_EAUTH or QP_EPROTO: refused (out says why, if it could),
 * then close; another error: nothing to answer. peer names the dialer. */
int qpi_session_answer(qpi_session_server *s, const uint8_t *req, size_t len,
    const char *peer, qpi_wire_buf *out);

#endif /* QPI_SESSION_H */
