/*
 * session.c - a connection's session (PROTOCOL.md, sessions and
 * authentication): hello (the server's version and limits, and a fresh
 * nonce), auth (the client's HMAC of it with the token, checked, and the
 * server's proof in return), ping; and the gate that refuses every other
 * request of a connection that has not authenticated when the server has
 * a token (sec.c).
 *
 * Locking: none of its own; everything runs under the ops lock.
 */
#include "auth.h"
#include "qps.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>

bool
qps_session_refuse(
    qps_conn *c, const qpi_wire_req *r, uint32_t conn_id, nng_msg **repp)
{
	if (!qps_sec_auth_required() || c->auth.ok || r->op == QPI_OP_HELLO
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

static nng_msg *
session_hello(qps_conn *c, const qpi_wire_req *r, qpi_wire_rep *rp)
{
	int rv;

	snprintf(rp->server_version, sizeof(rp->server_version), "%s",
	    qp_version());
	rp->limits = qps_limits;
	rp->auth_required = qps_sec_auth_required();
	if (rp->auth_required) {
		/* A fresh nonce: the one auth attempt it allows. */
		if ((rv = qpi_auth_server_hello(&c->auth, rp->nonce))
		    != QP_OK) {
			return qps_rep_error(r->op, r->req_id, rv,
			    "no random nonce: %s", qp_errmsg());
		}
	} else if (getrandom(rp->nonce, sizeof(rp->nonce), 0)
	    != (ssize_t) sizeof(rp->nonce)) {
		memset(rp->nonce, 0, sizeof(rp->nonce));
	}
	if (r->client_name[0] != '\0') {
		qps_log(QPS_LOG_DEBUG, "connection %u: hello from %s",
		    (unsigned) c->node.key, r->client_name);
	}
	return qps_rep_encode(rp);
}

static nng_msg *
session_auth(qps_conn *c, const qpi_wire_req *r, qpi_wire_rep *rp)
{
	int rv;

	if (!qps_sec_auth_required()) {
		return qps_rep_error(r->op, r->req_id, QP_ENOTSUP,
		    "this server has no authentication token to check");
	}
	rv = qpi_auth_server_check(&c->auth, qps_sec_token(), r->mac,
	    r->has_nonce ? r->nonce : NULL, rp->mac, &rp->has_mac);
	if (rv != QP_OK) {
		char peer[160];
		qps_net_peer((uint32_t) c->node.key, peer, sizeof(peer));
		qps_log(QPS_LOG_WARN,
		    "connection %u from %s: authentication refused: %s",
		    (unsigned) c->node.key, peer, qp_errmsg());
		return qps_rep_error(r->op, r->req_id, rv,
		    "authentication refused: %s", qp_errmsg());
	}
	qps_log(QPS_LOG_DEBUG, "connection %u authenticated",
	    (unsigned) c->node.key);
	return qps_rep_encode(rp);
}

qps_handled
qps_session_handle(const qps_req *rq, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;
	qpi_wire_rep rp;

	rp = (qpi_wire_rep) {.op = r->op, .req_id = r->req_id};
	if (r->op == QPI_OP_HELLO) {
		*repp = session_hello(rq->c, r, &rp);
	} else if (r->op == QPI_OP_AUTH) {
		*repp = session_auth(rq->c, r, &rp);
	} else { /* QPI_OP_PING */
		*repp = qps_rep_encode(&rp);
	}
	return QPS_REPLY;
}
