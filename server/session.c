/*
 * session.c - a connection's session (PROTOCOL.md, sessions and
 * authentication): hello (the server's version and limits, and a fresh
 * nonce), auth (the client's HMAC of it with the token, checked, and the
 * server's proof in return), both answered by lib/session.c as for
 * qp_listen; ping; and the gate that refuses every other
 * request of a connection that has not authenticated when the server has
 * a token (sec.c).
 *
 * Locking: none of its own; everything runs under the ops lock.
 */
#include "session.h"
#include "qps.h"

#include <stdio.h>

bool
qps_session_refuse(
    qps_conn *c, const qpi_wire_req *r, uint32_t conn_id, nng_msg **repp)
{
	if (!qps_sec_auth_required() || c->ss.as.ok || r->op == QPI_OP_HELLO
	    || r->op == QPI_OP_AUTH || r->op == QPI_OP_PING) {
		return false;
	}
	/* Not applied, not remembered by dedup: the client sends it again,
	 * same seq, once it has authenticated. */
	if (!c->told_unauth) {
		char peer[160];
		c->told_unauth = true;
		qps_net_peer(conn_id, peer, sizeof(peer));
		qps_log(QPS_LOG_WARN,
		    "connection %u from %s: %s refused: not authenticated "
		    "(later refusals on this connection are not logged)",
		    (unsigned) conn_id, peer, qpi_wire_op_name(r->op));
	}
	*repp = qps_rep_error(r->op, r->req_id, QP_EAUTH,
	    "authentication required: send hello, then auth with the "
	    "token's HMAC of the nonce");
	return true;
}

qps_handled
qps_session_handle(const qps_req *rq, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;
	qps_conn *c = rq->c;
	qpi_wire_buf out = {0};
	char peer[160] = "a client";
	int rv;

	if (r->op == QPI_OP_PING) {
		*repp = qps_rep_ok(r);
		return QPS_REPLY;
	}
	if (r->op == QPI_OP_AUTH && !qps_sec_auth_required()) {
		*repp = qps_rep_error(r->op, r->req_id, QP_ENOTSUP,
		    "this server has no authentication token to check");
		return QPS_REPLY;
	}
	/* A hello may come again (a fresh nonce); an auth checks the last. */
	c->ss.token = qps_sec_token();
	c->ss.limits = &qps_limits;
	c->ss.auth_wait = r->op == QPI_OP_AUTH;
	if (r->op == QPI_OP_AUTH) { /* a hello's peer is never named */
		qps_net_peer((uint32_t) c->node.key, peer, sizeof(peer));
	}
	rv = qpi_session_answer(
	    &c->ss, nng_msg_body(rq->req), nng_msg_len(rq->req), peer, &out);
	if (r->op == QPI_OP_HELLO && r->client_name[0] != '\0') {
		qps_log(QPS_LOG_DEBUG, "connection %u: hello from %s",
		    (unsigned) c->node.key, r->client_name);
	}
	if (rv != QP_OK && r->op == QPI_OP_AUTH) {
		qps_metrics_auth_failed();
		qps_log(QPS_LOG_WARN,
		    "connection %u from %s: authentication refused: %s",
		    (unsigned) c->node.key, peer, qp_errmsg());
	}
	*repp = out.len > 0
	    ? qps_rep_bytes(out.data, out.len)
	    : qps_rep_error(r->op, r->req_id, rv, "%s", qp_errmsg());
	qpi_wire_buf_free(&out);
	return QPS_REPLY;
}
