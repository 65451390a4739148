/*
 * session.c - the session opening (session.h): one copy of the hello/auth
 * exchange for every client in lib/, and the listener's answers for
 * qp_listen and qpiped alike.
 * The wire exchange is PROTOCOL.md's "sessions and authentication"; the
 * nonces and MACs are auth.c's. No state of its own; no locking.
 */
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One request and its decoded reply, whose pointers go into *bufp. */
static int
ss_exchange(const qpi_session_client *c, qpi_session_xfn x, void *arg,
    const qpi_wire_req *req, qpi_wire_rep *rep, uint8_t **bufp)
{
	qpi_wire_buf b = {0};
	size_t len = 0;
	int rv;

	*bufp = NULL;
	if ((rv = qpi_wire_encode_req(req, &b)) != QP_OK) {
		qpi_wire_buf_free(&b);
		return rv;
	}
	rv = x(arg, b.data, b.len, bufp, &len);
	qpi_wire_buf_free(&b);
	if (rv != QP_OK) {
		return rv;
	}
	memset(rep, 0, sizeof(*rep));
	if (qpi_wire_decode_rep(*bufp, len, NULL, rep) != QP_OK
	    || rep->op != req->op || rep->req_id != req->req_id) {
		return qpi_err(QP_EPROTO, "%s did not answer %s", c->url,
		    qpi_wire_op_name(req->op));
	}
	return QP_OK;
}

int
qpi_session_open(const qpi_session_client *c, qpi_session_xfn x, void *arg,
    qpi_wire_limits *limp)
{
	qpi_wire_req req;
	qpi_wire_rep rep;
	qpi_auth_client ac;
	uint8_t *buf = NULL;
	bool do_auth = false;
	int rv;

	memset(&req, 0, sizeof(req));
	req.op = QPI_OP_HELLO;
	req.req_id = 1;
	snprintf(
	    req.name, sizeof(req.name), "%s", c->name != NULL ? c->name : "");
	memcpy(req.client_id, c->client_id, QPI_WIRE_ID_LEN);
	snprintf(
	    req.client_name, sizeof(req.client_name), "%s", c->client_name);
	if ((rv = ss_exchange(c, x, arg, &req, &rep, &buf)) != QP_OK) {
		goto out;
	}
	if (rep.status != QP_OK) {
		rv = qpi_err(rep.status, "%s refused the connection: %s",
		    c->url,
		    rep.errmsg[0] != '\0' ? rep.errmsg
		                          : qp_strerror(rep.status));
		goto out;
	}
	if (limp != NULL) {
		*limp = rep.limits;
	}
	if ((rv = qpi_auth_client_policy(
	         c->token, rep.auth_required, c->url, &do_auth))
	        != QP_OK
	    || !do_auth) {
		goto out;
	}
	memset(&req, 0, sizeof(req));
	req.op = QPI_OP_AUTH;
	req.req_id = 2;
	snprintf(
	    req.name, sizeof(req.name), "%s", c->name != NULL ? c->name : "");
	req.has_nonce = true;
	if ((rv = qpi_auth_client_answer(
	         &ac, c->token, rep.nonce, req.mac, req.nonce))
	    != QP_OK) {
		goto out;
	}
	free(buf);
	if ((rv = ss_exchange(c, x, arg, &req, &rep, &buf)) != QP_OK) {
		goto out;
	}
	if (rep.status != QP_OK) {
		rv = qpi_err(rep.status == QP_EAUTH ? QP_EAUTH : rep.status,
		    "%s %s (%s): %s", c->url, c->refused,
		    rep.status == QP_EAUTH ? "not the token it holds"
		                           : qp_strerror(rep.status),
		    rep.errmsg);
	} else {
		rv = qpi_auth_client_verify(
		    &ac, c->token, rep.mac, rep.has_mac, c->url);
	}
out:
	free(buf);
	return rv;
}

int
qpi_session_answer(qpi_session_server *s, const uint8_t *buf, size_t len,
    const char *peer, qpi_wire_buf *out)
{
	qpi_wire_req req;
	qpi_wire_rep rep;
	int st, rv;

	qpi_wire_buf_reset(out);
	memset(&req, 0, sizeof(req));
	memset(&rep, 0, sizeof(rep));
	st = qpi_wire_decode_req(buf, len, NULL, &req);
	if (!s->auth_wait) {
		/* The hello: nothing else may come first. */
		if (st != QP_OK) {
			return st;
		}
		if (req.op != QPI_OP_HELLO) {
			return qpi_err(QP_EPROTO, "%s sent op %u before hello",
			    peer, (unsigned) req.op);
		}
		rep.op = QPI_OP_HELLO;
		rep.req_id = req.req_id;
		snprintf(rep.server_version, sizeof(rep.server_version), "%s",
		    QP_VERSION_STRING);
		if (s->limits != NULL) {
			rep.limits = *s->limits;
		} else {
			rep.limits.max_message = s->max_message;
			rep.limits.max_batch = QPI_WIRE_DEFAULT_BATCH;
		}
		rep.auth_required = s->token->len > 0;
		rv = rep.auth_required
		    ? qpi_auth_server_hello(&s->as, rep.nonce)
		    : qpi_random(rep.nonce, sizeof(rep.nonce));
		if (rv == QP_OK
		    && (rv = qpi_wire_encode_rep(&rep, out)) == QP_OK) {
			s->auth_wait = rep.auth_required;
			s->open = !rep.auth_required;
		}
		return rv;
	}
	if (st != QP_OK) {
		/* st and the message say what is wrong */
	} else if (req.op != QPI_OP_AUTH) {
		const char *name = qpi_wire_op_name(req.op);
		st = qpi_err(QP_EAUTH,
		    "authentication required: %s sent %s instead of auth",
		    peer, name != NULL ? name : "an unknown op");
	} else {
		st = qpi_auth_server_check(&s->as, s->token, req.mac,
		    req.has_nonce ? req.nonce : NULL, rep.mac, &rep.has_mac);
	}
	rep.op = req.op;
	rep.req_id = req.req_id;
	rep.status = st;
	if (st != QP_OK) {
		snprintf(rep.errmsg, sizeof(rep.errmsg), "%s", qp_errmsg());
	}
	if ((rv = qpi_wire_encode_rep(&rep, out)) != QP_OK) {
		qpi_wire_buf_reset(out);
		return rv;
	}
	if (st == QP_OK) {
		s->auth_wait = false;
		s->open = true;
	}
	return st;
}
