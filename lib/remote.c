/*
 * remote.c - the remote queue client. One handle is one connection to
 * the server (the server releases the handle's leases when it drops):
 * for tcp:// and ipc:// queues a raw req0 connection on a plain socket
 * (spconn.c), else (tls+tcp://, pipes through the server, or
 * QPIPE_TRANSPORT=nng) an nng req0 socket. With it go a client id of 16
 * random bytes and a sequence number for the requests that change a
 * queue, so that a request sent again after a reconnect is applied once.
 *
 * Each call sends its request and waits for the reply: on the raw
 * connection directly (several threads may share it), on nng through a
 * context from a small pool. nng's own resending is off: when the
 * connection drops, the call sends the same request (same id and seq; a
 * blocking get or put with the time it has left) once a connection is
 * back, for up to the reconnect window. A blocking get waits on the
 * server, which parks it; the client waits a little longer than the get's
 * timeout, and a get that blocks forever is sent again every
 * QPI_RQ_SLICE_MS (the server answers "empty" at the end of each slice).
 *
 * Confirmations: a plain get leases its item; the client confirms it as
 * soon as the reply is in (the confirmation rides on the next get, or goes
 * out by itself after QPI_RQ_ACK_DELAY_MS from the acker: on nng a
 * context of its own, on the raw path a call made from the acker's timer
 * callback; close waits for it).
 * A QP_OPEN_LEASE handle keeps its items leased until task_done (confirm)
 * or nack (give back); touch extends the leases of all it holds.
 *
 * Authentication (PROTOCOL.md, sessions): with a token (qp_conn_opts, else
 * $QPIPE_TOKEN) the handle answers the server's hello with auth, and
 * checks the server's proof in return. Authentication belongs to the
 * connection: after a redial, the first request on the new connection
 * is answered EAUTH and not applied; the call then does hello and auth
 * again and sends the same request (same seq) once more. tls+tcp://
 * handles verify the server's certificate (tls.c) unless told not to.
 *
 * Locking: r->mu guards the context pool, the lease lists and the acker
 * state; it is never held while waiting for the network. r->auth_mu
 * serialises the handshakes (a hello's nonce serves one auth, so two at
 * once on one connection would spoil each other) and guards auth_pipe.
 */
#include "remote.h"
#include "auth.h"
#include "conn.h"
#include "nngproc.h"
#include "queue.h"
#include "shmq.h"
#include "sp.h"
#include "spconn.h"
#include "tls.h"
#include "wire.h"

#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

/* A get or put that blocks forever is sent again after this long. */
#define QPI_RQ_SLICE_MS 30000
/* Beyond a blocking request's own timeout, how long the client waits for
 * the server's answer before it counts the connection as lost. */
#define QPI_RQ_SLACK_MS 5000
/* A request that does not block on the server: its answer is due within. */
#define QPI_RQ_CALL_MS 10000
/* Contexts kept for reuse. */
#define QPI_RQ_POOL 8
/* A plain get's confirmation waits this long for the next get to carry
 * it before it goes out on its own. */
#define QPI_RQ_ACK_DELAY_MS 10

typedef struct rq_ctx {
	nng_ctx ctx;
	nng_aio *aio;
	struct rq_ctx *next;
} rq_ctx;

enum { RQ_ACK_IDLE, RQ_ACK_WAITING, RQ_ACK_SENDING, RQ_ACK_RECEIVING };

struct qpi_rq {
	nng_socket sock;
	bool sock_open;
	qpi_spc *spc; /* tcp:// and ipc:// on the raw SP path, else NULL */
	bool closed;
	bool lease_mode; /* QP_OPEN_LEASE */
	char url[QPI_URL_MAX + 1];
	char name[QP_NAME_MAX + 1];
	uint8_t id[QPI_WIRE_ID_LEN];
	uint64_t seq; /* last seq used (under mu) */
	uint64_t req_id;
	uint64_t lease_ms;
	qpi_wire_limits lim; /* the server's, from hello */
	int64_t reconnect_ms;
	qpi_token token; /* len 0: none */
	pthread_mutex_t auth_mu;
	uint32_t auth_pipe; /* the connection last authenticated (0: none) */

	pthread_mutex_t mu;
	pthread_cond_t cv; /* the acker went idle */
	rq_ctx *pool;
	size_t npool;
	qpi_ids held; /* QP_OPEN_LEASE: leased items, oldest first */
	qpi_ids unacked; /* plain: confirmations not yet sent */
	uint32_t last_deliveries;
	bool have_last;
	/* The acker: sends confirmations on its own context. */
	rq_ctx *ack_ctx;
	int ack_state; /* RQ_ACK_* */
	bool stopping; /* close: the acker starts nothing new */
	pid_t pid; /* the process that opened it: nng does not survive fork */
};

/* ---- small helpers ---- */

static int
rq_nng_err(const qpi_rq *r, int rv, const char *what)
{
	switch (rv) {
	case NNG_ENOMEM:
		return qpi_err(
		    QP_ENOMEM, "%s %s: out of memory", what, r->url);
	case NNG_ECONNREFUSED:
		return qpi_err(QP_ECONNREFUSED,
		    "cannot connect to %s: connection refused", r->url);
	case NNG_ECLOSED:
		return qpi_err(
		    QP_ECLOSED, "%s %s: handle closed", what, r->url);
	case NNG_EADDRINVAL:
	case NNG_EINVAL:
		return qpi_err(QP_EINVAL, "cannot connect to %s: %s", r->url,
		    nng_strerror(rv));
	case NNG_ECONNRESET:
	case NNG_ECONNSHUT:
	case NNG_ETIMEDOUT:
	case NNG_ECONNABORTED:
		return qpi_err(QP_ECONNRESET, "%s %s: %s", what, r->url,
		    nng_strerror(rv));
	default:
		return qpi_err(
		    QP_ESYSTEM, "%s %s: %s", what, r->url, nng_strerror(rv));
	}
}

static int64_t
rq_env_ms(const char *name, int64_t dflt)
{
	const char *s = getenv(name);
	char *end;
	long long v;

	if (s == NULL || *s == '\0') {
		return dflt;
	}
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < 0) {
		return dflt;
	}
	return (int64_t) v;
}

/* ---- contexts ---- */

static rq_ctx *
rq_ctx_take(qpi_rq *r)
{
	rq_ctx *c;

	pthread_mutex_lock(&r->mu);
	if ((c = r->pool) != NULL) {
		r->pool = c->next;
		r->npool--;
	}
	pthread_mutex_unlock(&r->mu);
	if (c != NULL) {
		return c;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		return NULL;
	}
	if (nng_aio_alloc(&c->aio, NULL, NULL) != 0) {
		free(c);
		return NULL;
	}
	if (nng_ctx_open(&c->ctx, r->sock) != 0) {
		nng_aio_free(c->aio);
		free(c);
		return NULL;
	}
	return c;
}

static void
rq_ctx_free(rq_ctx *c)
{
	nng_aio_free(c->aio);
	nng_ctx_close(c->ctx);
	free(c);
}

static void
rq_ctx_give(qpi_rq *r, rq_ctx *c)
{
	pthread_mutex_lock(&r->mu);
	if (r->npool < QPI_RQ_POOL) {
		c->next = r->pool;
		r->pool = c;
		r->npool++;
		c = NULL;
	}
	pthread_mutex_unlock(&r->mu);
	if (c != NULL) {
		rq_ctx_free(c);
	}
}

/* ---- one request, one reply ---- */

/* A call: the request (its op fields set by the caller), and after
 * rq_call the decoded reply, whose items point into msg. */
typedef struct rq_call {
	qpi_wire_req req;
	qpi_wire_rep rep;
	nng_msg *msg; /* the reply's bytes */
	uint32_t conn; /* the connection it came on (nng pipe id) */
	int64_t deadline_ns; /* blocking ops: the op's own deadline */
	bool blocking; /* req.timeout is recomputed on every send */
} rq_call;

static void
rq_call_done(rq_call *c)
{
	if (c->msg != NULL) {
		nng_msg_free(c->msg);
		c->msg = NULL;
	}
}

static int
rq_encode(qpi_rq *r, const qpi_wire_req *req, nng_msg **mp)
{
	qpi_wire_buf b = {0};
	nng_msg *m;
	int rv;

	if ((rv = qpi_wire_encode_req(req, &b)) != QP_OK) {
		qpi_wire_buf_free(&b);
		return rv;
	}
	if (nng_msg_alloc(&m, b.len) != 0) {
		qpi_wire_buf_free(&b);
		return qpi_err(
		    QP_ENOMEM, "out of memory for a request to %s", r->url);
	}
	memcpy(nng_msg_body(m), b.data, b.len);
	qpi_wire_buf_free(&b);
	*mp = m;
	return QP_OK;
}

static int rq_reauth(qpi_rq *r, uint32_t pipe_id);

/* Closes connection conn (the next request goes out on a new one). */
static void
rq_drop(qpi_rq *r, uint32_t conn)
{
	if (r->spc != NULL) {
		qpi_spc_drop(r->spc, conn);
	} else {
		nng_pipe p;
		p.id = conn;
		nng_pipe_close(p);
	}
}

/* The raw path's send and receive: 0 with c->msg set, NNG_ETIMEDOUT or
 * NNG_ECONNRESET when the request must go again, else -1 with the error
 * in *errp. */
static int
rq_sp_exchange(qpi_rq *r, rq_call *c, nng_msg *m, int64_t window_ms,
    int64_t wait_ms, int *errp)
{
	int64_t now = qpi_now_ns();
	int rv = qpi_spc_call(r->spc, nng_msg_body(m), nng_msg_len(m),
	    now + (window_ms > 0 ? window_ms : 1) * 1000000,
	    now + wait_ms * 1000000, &c->msg, &c->conn);

	switch (rv) {
	case QP_OK:
		return 0;
	case QP_ETIMEDOUT:
		return NNG_ETIMEDOUT;
	case QP_ECONNRESET:
		return NNG_ECONNRESET;
	case QP_ECONNREFUSED:
		*errp = qpi_err(QP_ECONNRESET,
		    "lost connection to %s: no connection for %lld ms (%s)",
		    r->url, (long long) r->reconnect_ms, qp_errmsg());
		return -1;
	default:
		*errp = rv;
		return -1;
	}
}

/* Handshakes one call may redo before it gives up: each follows a
 * connection that came back unauthenticated. */
#define QPI_RQ_REAUTH_MAX 8

/* Sends c->req and waits for its reply, through reconnects (and the
 * handshakes they need). Returns QP_OK with c->rep decoded (look at
 * c->rep.status), or a transport error. */
static int
rq_do(qpi_rq *r, rq_call *c)
{
	int64_t lost_since = 0;
	int reauths = 0;
	rq_ctx *x = NULL;
	int rv;

	if (r->spc == NULL && (x = rq_ctx_take(r)) == NULL) {
		return qpi_err(
		    QP_ENOMEM, "out of memory for a request to %s", r->url);
	}
	pthread_mutex_lock(&r->mu);
	c->req.req_id = ++r->req_id;
	if (qpi_wire_op_dedup(c->req.op)) {
		memcpy(c->req.client_id, r->id, sizeof(r->id));
		c->req.seq = ++r->seq;
	}
	pthread_mutex_unlock(&r->mu);

	for (;;) {
		nng_msg *m;
		int64_t now_ms = qpi_now_ms(), wait_ms;

		if (c->blocking) {
			int64_t left = qpi_remaining_ns(c->deadline_ns);
			if (left == INT64_MAX) {
				c->req.timeout = QPI_RQ_SLICE_MS;
			} else {
				/* Round up: a timeout never shrinks to 0 by
				 * rounding while time is left. */
				c->req.timeout = (left + 999999) / 1000000;
			}
			wait_ms = c->req.timeout + QPI_RQ_SLACK_MS;
		} else {
			wait_ms = QPI_RQ_CALL_MS;
		}
		if ((rv = rq_encode(r, &c->req, &m)) != QP_OK) {
			break;
		}
		/* Sending waits for a connection: at most what is left of the
		 * reconnect window. */
		int64_t window = r->reconnect_ms
		    - (lost_since != 0 ? now_ms - lost_since : 0);
		if (r->spc != NULL) {
			int err = QP_OK;
			rv = rq_sp_exchange(r, c, m, window, wait_ms, &err);
			nng_msg_free(m);
			if (rv < 0) {
				rv = err;
				break;
			}
			goto got;
		}
		nng_aio_set_msg(x->aio, m);
		nng_aio_set_timeout(
		    x->aio, (nng_duration) (window > 0 ? window : 1));
		nng_ctx_send(x->ctx, x->aio);
		nng_aio_wait(x->aio);
		if ((rv = nng_aio_result(x->aio)) != 0) {
			nng_msg_free(m);
			if (rv == NNG_ETIMEDOUT) {
				rv = qpi_err(QP_ECONNRESET,
				    "lost connection to %s: no connection for "
				    "%lld ms",
				    r->url, (long long) r->reconnect_ms);
			} else {
				rv = rq_nng_err(r, rv, "send to");
			}
			break;
		}
		nng_aio_set_timeout(x->aio, (nng_duration) wait_ms);
		nng_ctx_recv(x->ctx, x->aio);
		nng_aio_wait(x->aio);
		rv = nng_aio_result(x->aio);
		if (rv == 0) {
			c->msg = nng_aio_get_msg(x->aio);
			nng_aio_set_msg(x->aio, NULL);
			c->conn
			    = (uint32_t) nng_pipe_id(nng_msg_get_pipe(c->msg));
		}
	got:
		if (rv == 0) {
			rv = qpi_wire_decode_rep(nng_msg_body(c->msg),
			    nng_msg_len(c->msg), &r->lim, &c->rep);
			if (rv == QP_OK && c->rep.req_id != c->req.req_id) {
				rv = qpi_err(QP_EPROTO,
				    "%s answered request %llu to request %llu",
				    r->url, (unsigned long long) c->rep.req_id,
				    (unsigned long long) c->req.req_id);
			} else if (rv != QP_OK) {
				rv = qpi_err(QP_EPROTO,
				    "bad reply from %s: %s", r->url,
				    qp_errmsg());
			} else if (c->rep.status == QP_EAUTH
			    && r->token.len > 0 && c->req.op != QPI_OP_HELLO
			    && c->req.op != QPI_OP_AUTH
			    && reauths++ < QPI_RQ_REAUTH_MAX) {
				/* A connection nng made anew, not yet
				 * authenticated: the request was not
				 * applied. Authenticate, send it again. */
				uint32_t pid = c->conn;
				rq_call_done(c);
				if ((rv = rq_reauth(r, pid)) != QP_OK) {
					break;
				}
				continue;
			} else if (c->rep.status == QP_ECONNRESET) {
				/* The server is shutting down: drop this
				 * connection and send the request again to
				 * the next one, within the window. */
				rq_drop(r, c->conn);
				rq_call_done(c);
				rv = NNG_ECONNRESET;
				goto lost;
			} else if (r->token.len > 0
			    && c->req.op != QPI_OP_HELLO
			    && c->req.op != QPI_OP_AUTH
			    && c->conn
			        != __atomic_load_n(
			            &r->auth_pipe, __ATOMIC_ACQUIRE)) {
				/* An answer from a connection this handle did
				 * not authenticate: if its server does not
				 * ask for the token, it cannot prove it holds
				 * it, and the answer is not trusted. */
				uint32_t pid = c->conn;
				if ((rv = rq_reauth(r, pid)) != QP_OK) {
					rq_call_done(c);
				}
			}
			break;
		}
		if (rv != NNG_ECONNRESET && rv != NNG_ETIMEDOUT
		    && rv != NNG_ECONNSHUT) {
			rv = rq_nng_err(r, rv, "reply from");
			break;
		}
	lost:
		/* The connection dropped (or went silent): send the same
		 * request again once it is back, within the window. */
		if (lost_since == 0) {
			lost_since = qpi_now_ms();
		} else if (qpi_now_ms() - lost_since > r->reconnect_ms) {
			rv = qpi_err(QP_ECONNRESET,
			    "lost connection to %s: %s for %lld ms", r->url,
			    nng_strerror(rv), (long long) r->reconnect_ms);
			break;
		}
		if (c->blocking && c->deadline_ns != INT64_MAX
		    && qpi_remaining_ns(c->deadline_ns) == 0
		    && rv == NNG_ETIMEDOUT) {
			/* Our own deadline passed with the server silent. */
			rv = qpi_err(QP_ECONNRESET,
			    "no answer from %s within %lld ms", r->url,
			    (long long) wait_ms);
			break;
		}
	}
	if (x != NULL) {
		rq_ctx_give(r, x);
	}
	return rv;
}

/* Turns an error reply into the call's result, with its message. */
static int
rq_status(const qpi_rq *r, const rq_call *c)
{
	if (c->rep.status == QP_OK) {
		return QP_OK;
	}
	return qpi_err(c->rep.status, "%s/%s: %s", r->url, r->name,
	    c->rep.errmsg[0] != '\0' ? c->rep.errmsg
	                             : qp_strerror(c->rep.status));
}

static void
rq_call_init(rq_call *c, qpi_rq *r, uint32_t op)
{
	memset(c, 0, sizeof(*c));
	c->req.op = op;
	snprintf(c->req.name, sizeof(c->req.name), "%s", r->name);
}

/* ---- confirmations ---- */

/* Takes up to a batch of the confirmations not yet sent: a malloc'd array
 * in *idsp (NULL if none or out of memory). Called with r->mu held. */
static uint32_t
rq_take_acks(qpi_rq *r, uint64_t **idsp)
{
	uint32_t n
	    = (uint32_t) (r->unacked.n > r->lim.max_batch ? r->lim.max_batch
	                                                  : r->unacked.n);

	*idsp = NULL;
	if (n == 0 || (*idsp = malloc(n * sizeof(uint64_t))) == NULL) {
		return 0;
	}
	memcpy(*idsp, r->unacked.id, n * sizeof(uint64_t));
	qpi_ids_drop(&r->unacked, 0, n);
	return n;
}

/* Sends the pending confirmations on the acker's context. Called with
 * r->mu held and the acker idle or done waiting. */
static void
rq_ack_send_locked(qpi_rq *r)
{
	qpi_wire_req req;
	uint64_t *ids;
	nng_msg *m = NULL;
	uint32_t n = rq_take_acks(r, &ids);

	r->ack_state = RQ_ACK_IDLE;
	if (n == 0) {
		return;
	}
	memset(&req, 0, sizeof(req));
	req.op = QPI_OP_ACK;
	snprintf(req.name, sizeof(req.name), "%s", r->name);
	memcpy(req.client_id, r->id, sizeof(r->id));
	req.seq = ++r->seq;
	req.req_id = ++r->req_id;
	req.ids = ids;
	req.nids = n;
	req.ids_cap = n;
	if (rq_encode(r, &req, &m) != QP_OK) {
		/* Out of memory: the leases run out and the items come again
		 * (at least once). */
		free(ids);
		return;
	}
	free(ids);
	r->ack_state = RQ_ACK_SENDING;
	nng_aio_set_msg(r->ack_ctx->aio, m);
	if (r->spc != NULL) {
		/* The raw path has no asynchronous send: the callback does
		 * the exchange (rq_ack_sp). */
		nng_sleep_aio(0, r->ack_ctx->aio);
		return;
	}
	nng_aio_set_timeout(r->ack_ctx->aio, (nng_duration) r->reconnect_ms);
	nng_ctx_send(r->ack_ctx->ctx, r->ack_ctx->aio);
}

/* The raw path's acker: sends the confirmation waiting in the aio and
 * waits for its answer (whatever it says: an item not confirmed comes
 * again, at least once). Called from the acker's callback with r->mu
 * held; releases it meanwhile. */
static void
rq_ack_sp(qpi_rq *r, int rv)
{
	nng_aio *aio = r->ack_ctx->aio;
	nng_msg *m = nng_aio_get_msg(aio), *rep = NULL;
	uint32_t conn;

	nng_aio_set_msg(aio, NULL);
	pthread_mutex_unlock(&r->mu);
	if (m != NULL && (rv == 0 || rv == NNG_ETIMEDOUT)) {
		int64_t now = qpi_now_ns();
		if (qpi_spc_call(r->spc, nng_msg_body(m), nng_msg_len(m),
		        now + r->reconnect_ms * 1000000,
		        now + (int64_t) QPI_RQ_CALL_MS * 1000000, &rep, &conn)
		    == QP_OK) {
			nng_msg_free(rep);
		}
	}
	if (m != NULL) {
		nng_msg_free(m);
	}
	pthread_mutex_lock(&r->mu);
	r->ack_state = RQ_ACK_IDLE;
}

/* Confirmations pending: they ride on the next get, or the acker sends
 * them after QPI_RQ_ACK_DELAY_MS (now: at once). r->mu held. */
static void
rq_ack_kick_locked(qpi_rq *r, bool now)
{
	if (r->ack_ctx == NULL || r->unacked.n == 0 || r->stopping) {
		return;
	}
	if (r->ack_state == RQ_ACK_IDLE) {
		if (now) {
			rq_ack_send_locked(r);
		} else {
			r->ack_state = RQ_ACK_WAITING;
			nng_sleep_aio(QPI_RQ_ACK_DELAY_MS, r->ack_ctx->aio);
		}
	} else if (r->ack_state == RQ_ACK_WAITING && now) {
		nng_aio_cancel(r->ack_ctx->aio); /* its callback sends */
	}
}

/* The acker: wait -> send -> receive the reply -> idle. */
static void
rq_ack_cb(void *arg)
{
	qpi_rq *r = arg;
	nng_aio *aio = r->ack_ctx->aio;
	int rv = nng_aio_result(aio);

	pthread_mutex_lock(&r->mu);
	switch (r->spc != NULL && r->ack_state == RQ_ACK_SENDING
	        ? -1
	        : r->ack_state) {
	case -1:
		rq_ack_sp(r, rv);
		break;
	case RQ_ACK_WAITING:
		/* The delay passed (or close cut it short): send what the
		 * gets meanwhile did not carry. */
		rq_ack_send_locked(r);
		break;
	case RQ_ACK_SENDING:
		if (rv == 0) {
			r->ack_state = RQ_ACK_RECEIVING;
			nng_aio_set_timeout(aio, QPI_RQ_CALL_MS);
			nng_ctx_recv(r->ack_ctx->ctx, aio);
			break;
		}
		/* Not sent: the message is still ours. */
		nng_msg_free(nng_aio_get_msg(aio));
		nng_aio_set_msg(aio, NULL);
		r->ack_state = RQ_ACK_IDLE;
		break;
	default:
		/* The reply (its missing ids need nothing), or no reply: an
		 * item not confirmed comes again when its connection drops
		 * or its lease ends (at least once). */
		if (rv == 0) {
			nng_msg_free(nng_aio_get_msg(aio));
			nng_aio_set_msg(aio, NULL);
		}
		r->ack_state = RQ_ACK_IDLE;
		break;
	}
	if (r->ack_state == RQ_ACK_IDLE) {
		rq_ack_kick_locked(r, false);
	}
	if (r->ack_state == RQ_ACK_IDLE) {
		pthread_cond_broadcast(&r->cv);
	}
	pthread_mutex_unlock(&r->mu);
}

/* ---- open and close ---- */

static int
rq_dial(qpi_rq *r, const qpi_addr *a, const qp_conn_opts *o, bool raw_ok)
{
	nng_tls_config *tls = NULL;
	nng_dialer d;
	int rv;

	if (raw_ok && a->kind != QPI_ADDR_TLS
	    && qpi_sp_env_raw("QPIPE_TRANSPORT")) {
		/* Synchronous first dial, as below: nobody there is an
		 * error at once. */
		return qpi_spc_open(&r->spc, a,
		    (size_t) QP_DEFAULT_MAX_MESSAGE + QPI_WIRE_SLACK,
		    qpi_deadline_ns(QPI_RQ_CALL_MS));
	}

	if ((rv = nng_req0_open(&r->sock)) != 0) {
		return rq_nng_err(r, rv, "cannot open a socket for");
	}
	r->sock_open = true;
	nng_socket_set_ms(
	    r->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	nng_socket_set_ms(r->sock, NNG_OPT_RECONNMINT, 20);
	nng_socket_set_ms(r->sock, NNG_OPT_RECONNMAXT, 500);
	nng_socket_set_size(r->sock, NNG_OPT_RECVMAXSZ,
	    (size_t) QP_DEFAULT_MAX_MESSAGE + QPI_WIRE_SLACK);
	if ((rv = nng_dialer_create(&d, r->sock, r->url)) != 0) {
		return rq_nng_err(r, rv, "cannot connect to");
	}
	nng_dialer_set_bool(d, NNG_OPT_TCP_KEEPALIVE, true);
	nng_dialer_set_bool(d, NNG_OPT_TCP_NODELAY, true);
	if (a->kind == QPI_ADDR_TLS) {
		/* Verifies the server unless o says not to (tls.c). */
		if ((rv = qpi_tls_config_opts(&tls, false, o, a->host))
		    != QP_OK) {
			return rv;
		}
		rv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, tls);
		nng_tls_config_free(tls); /* the dialer holds it */
		if (rv != 0) {
			return qpi_err(QP_ESYSTEM,
			    "cannot set up TLS to %s: %s", r->url,
			    nng_strerror(rv));
		}
	}
	/* Synchronous first dial: nobody there is an error at once. */
	if ((rv = nng_dialer_start(d, 0)) != 0) {
		char why[400];
		if (a->kind != QPI_ADDR_TLS || rv == NNG_ECONNREFUSED
		    || rv == NNG_ENOMEM || rv == NNG_EADDRINVAL) {
			return rq_nng_err(r, rv, "cannot connect to");
		}
		/* nng says little about a failed TLS handshake: ask. */
		if (qpi_tls_diagnose(a, o, qpi_deadline_ns(QPI_RQ_CALL_MS),
		        why, sizeof(why))) {
			return qpi_err(QP_EAUTH,
			    "TLS handshake with %s failed: %s", r->url, why);
		}
		return qpi_err(QP_EAUTH, "TLS handshake with %s failed: %s",
		    r->url, qpi_tls_why(rv, false));
	}
	return QP_OK;
}

/* hello, then (with a token) auth and the check of the server's proof, on
 * one connection. first: the handshake of open, which also takes the
 * server's limits; later ones (after a reconnect) leave them. Sets
 * r->auth_pipe. Called with r->auth_mu held, or before the handle is
 * shared. */
static int
rq_handshake(qpi_rq *r, bool first)
{
	for (int tries = 0;; tries++) {
		qpi_auth_client ac;
		uint32_t hpipe, apipe;
		bool do_auth = false;
		rq_call c;
		int rv;

		rq_call_init(&c, r, QPI_OP_HELLO);
		memcpy(c.req.client_id, r->id, sizeof(r->id));
		snprintf(c.req.client_name, sizeof(c.req.client_name),
		    "libqpipe %s", qp_version());
		if ((rv = rq_do(r, &c)) != QP_OK
		    || (rv = rq_status(r, &c)) != QP_OK
		    || (rv = qpi_auth_client_policy(
		            &r->token, c.rep.auth_required, r->url, &do_auth))
		        != QP_OK) {
			rq_call_done(&c);
			return rv;
		}
		if (first) {
			r->lim = c.rep.limits;
			if (r->lim.max_batch == 0) {
				r->lim.max_batch = QPI_WIRE_DEFAULT_BATCH;
			}
			if (r->lim.max_message == 0) {
				r->lim.max_message = QP_DEFAULT_MAX_MESSAGE;
			}
			if (r->spc != NULL) {
				qpi_spc_set_max(r->spc,
				    (size_t) r->lim.max_message
				        + QPI_WIRE_SLACK);
			} else {
				nng_socket_set_size(r->sock, NNG_OPT_RECVMAXSZ,
				    (size_t) r->lim.max_message
				        + QPI_WIRE_SLACK);
			}
		}
		hpipe = c.conn;
		if (!do_auth) {
			rq_call_done(&c);
			__atomic_store_n(
			    &r->auth_pipe, hpipe, __ATOMIC_RELEASE);
			return QP_OK;
		}
		uint8_t nonce[QPI_AUTH_NONCE_LEN];
		memcpy(nonce, c.rep.nonce, sizeof(nonce));
		rq_call_done(&c);

		rq_call_init(&c, r, QPI_OP_AUTH);
		c.req.has_nonce = true;
		if ((rv = qpi_auth_client_answer(
		         &ac, &r->token, nonce, c.req.mac, c.req.nonce))
		    != QP_OK) {
			return rv;
		}
		if ((rv = rq_do(r, &c)) != QP_OK) {
			rq_call_done(&c);
			return rv;
		}
		apipe = c.conn;
		if (apipe != hpipe && tries < 3) {
			/* The connection changed in between: the nonce
			 * belonged to the old one. Start again. */
			rq_call_done(&c);
			continue;
		}
		if (c.rep.status != QP_OK) {
			rv = qpi_err(
			    c.rep.status == QP_EAUTH ? QP_EAUTH : c.rep.status,
			    "%s refused our token (%s): %s", r->url,
			    c.rep.status == QP_EAUTH
			        ? "not the token the server holds"
			        : qp_strerror(c.rep.status),
			    c.rep.errmsg);
		} else {
			rv = qpi_auth_client_verify(
			    &ac, &r->token, c.rep.mac, c.rep.has_mac, r->url);
		}
		rq_call_done(&c);
		if (rv == QP_OK) {
			__atomic_store_n(
			    &r->auth_pipe, apipe, __ATOMIC_RELEASE);
		} else {
			/* Not the server the token is for: drop it. */
			rq_drop(r, apipe);
		}
		return rv;
	}
}

/* A request came back EAUTH on connection pipe_id: unless another call
 * has authenticated that connection meanwhile, authenticate again. */
static int
rq_reauth(qpi_rq *r, uint32_t pipe_id)
{
	int rv = QP_OK;

	pthread_mutex_lock(&r->auth_mu);
	if (r->auth_pipe != pipe_id) {
		rv = rq_handshake(r, false);
	}
	pthread_mutex_unlock(&r->auth_mu);
	if (rv != QP_OK && !r->closed) {
		/* Whatever answered is not the server the token is for. */
		rq_drop(r, pipe_id);
	}
	return rv;
}

/* A new handle dialled to a. raw_ok: tcp:// and ipc:// may take the raw
 * SP path (spconn.c) unless QPIPE_TRANSPORT=nng; pipes through the server
 * stay on nng, whose asynchronous contexts their prefetch needs. */
static int
rq_new(qpi_rq **rp, const qpi_addr *a, const qp_conn_opts *o, bool raw_ok)
{
	qpi_rq *r;
	pthread_condattr_t ca;
	int rv;

	/* nng cannot start again in a child forked after it started. */
	if ((rv = qpi_nng_claim(a->url)) != QP_OK) {
		return rv;
	}
	if ((r = calloc(1, sizeof(*r))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	snprintf(r->url, sizeof(r->url), "%s", a->url);
	snprintf(r->name, sizeof(r->name), "%s", a->name);
	r->pid = getpid();
	pthread_mutex_init(&r->mu, NULL);
	pthread_mutex_init(&r->auth_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cv, &ca);
	pthread_condattr_destroy(&ca);
	r->reconnect_ms = rq_env_ms("QPIPE_RECONNECT_MS", QPI_RQ_RECONNECT_MS);
	r->lim.max_message = QP_DEFAULT_MAX_MESSAGE;
	r->lim.max_batch = QPI_WIRE_DEFAULT_BATCH;
	if (getrandom(r->id, sizeof(r->id), 0) != (ssize_t) sizeof(r->id)) {
		qpi_rq_free(r);
		return qpi_err(QP_ESYSTEM, "no random bytes for a client id");
	}
	if ((rv = qpi_token_resolve(&r->token, o != NULL ? o->token : NULL,
	         o != NULL ? o->token_file : NULL, o != NULL && o->no_token,
	         NULL))
	        != QP_OK
	    || (rv = rq_dial(r, a, o, raw_ok)) != QP_OK
	    || (rv = rq_handshake(r, true)) != QP_OK) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", qp_errmsg());
		qpi_rq_free(r);
		return qpi_err(rv, "%s", msg);
	}
	*rp = r;
	return QP_OK;
}

int
qpi_rq_open(qpi_rq **rp, const qpi_addr *a, const qp_queue_opts *opts)
{
	qpi_rq *r;
	rq_call c;
	int rv;

	if ((rv = rq_new(&r, a, opts != NULL ? opts->conn : NULL, true))
	    != QP_OK) {
		return rv;
	}
	r->lease_mode = opts != NULL && (opts->flags & QP_OPEN_LEASE) != 0;
	r->lease_ms = opts != NULL ? opts->lease_ms : 0;

	if (opts != NULL && (opts->flags & QP_OPEN_CREATE)) {
		rq_call_init(&c, r, QPI_OP_CREATE);
		c.req.maxsize = opts->maxsize;
		c.req.capacity = opts->capacity;
		c.req.max_message = opts->max_message;
		c.req.lease_ms = opts->lease_ms;
		c.req.flags
		    = (opts->flags & QP_OPEN_EXCL) ? QPI_CREATE_EXCL : 0;
		if (opts->flags & QP_OPEN_DURABLE) {
			c.req.flags |= QPI_CREATE_DURABLE;
			snprintf(c.req.fsync, sizeof(c.req.fsync), "%s",
			    opts->fsync != NULL ? opts->fsync : "");
		}
	} else {
		rq_call_init(&c, r, QPI_OP_STAT);
	}
	if ((rv = rq_do(r, &c)) == QP_OK) {
		rv = rq_status(r, &c);
	}
	rq_call_done(&c);
	if (rv != QP_OK) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", qp_errmsg());
		qpi_rq_free(r);
		return qpi_err(rv, "%s", msg);
	}
	/* The acker's context. */
	if ((r->ack_ctx = calloc(1, sizeof(*r->ack_ctx))) == NULL
	    || nng_aio_alloc(&r->ack_ctx->aio, rq_ack_cb, r) != 0
	    || (r->spc == NULL
	        && nng_ctx_open(&r->ack_ctx->ctx, r->sock) != 0)) {
		qpi_rq_free(r);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	*rp = r;
	return QP_OK;
}

/* Waits until the acker is idle with nothing pending (or the window
 * passes). */
static void
rq_ack_drain(qpi_rq *r)
{
	struct timespec ts = qpi_ts_from_ns(
	    qpi_now_ns() + (r->reconnect_ms + QPI_RQ_CALL_MS) * 1000000);

	pthread_mutex_lock(&r->mu);
	rq_ack_kick_locked(r, true);
	while (r->ack_state != RQ_ACK_IDLE || r->unacked.n > 0) {
		if (r->ack_state == RQ_ACK_IDLE) {
			rq_ack_kick_locked(r, true);
			if (r->ack_state == RQ_ACK_IDLE) {
				break; /* cannot send (out of memory) */
			}
		} else if (r->ack_state == RQ_ACK_WAITING) {
			rq_ack_kick_locked(r, true);
		}
		if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT) {
			break;
		}
	}
	r->stopping = true;
	pthread_mutex_unlock(&r->mu);
}

int
qpi_rq_close(qpi_rq *r)
{
	if (r->closed) {
		return QP_OK;
	}
	r->closed = true;
	if (r->pid != getpid()) {
		/* A forked child's copy: the connection is the parent's, and
		 * nng must not be called here. */
		return QP_OK;
	}
	if (r->ack_ctx != NULL) {
		rq_ack_drain(r);
	}
	/* Items held in worker mode go back: their tasks were not done. */
	while (r->held.n > 0) {
		rq_call c;
		rq_call_init(&c, r, QPI_OP_RELEASE);
		c.req.lease_id = r->held.id[0];
		if (rq_do(r, &c) != QP_OK) {
			rq_call_done(&c);
			break; /* the dropped connection gives them back */
		}
		rq_call_done(&c);
		qpi_ids_drop(&r->held, 0, 1);
	}
	if (r->ack_ctx != NULL && r->ack_ctx->aio != NULL) {
		nng_aio_stop(r->ack_ctx->aio);
	}
	if (r->sock_open) {
		nng_close(r->sock);
		r->sock_open = false;
	}
	if (r->spc != NULL) {
		qpi_spc_close(r->spc);
	}
	return QP_OK;
}

void
qpi_rq_free(qpi_rq *r)
{
	if (r == NULL) {
		return;
	}
	qpi_rq_close(r);
	if (r->pid != getpid()) {
		/* A forked child's copy: its nng objects are left alone (they
		 * are the parent's, and nng must not be called here), and so
		 * are its locks, which a thread of the parent may have held
		 * (destroying a condition variable waited on hangs). */
		qpi_spc_forget(r->spc);
		qpi_ids_free(&r->held);
		qpi_ids_free(&r->unacked);
		qpi_token_clear(&r->token);
		free(r);
		return;
	}
	while (r->pool != NULL) {
		rq_ctx *c = r->pool;
		r->pool = c->next;
		nng_aio_free(c->aio);
		free(c);
	}
	if (r->ack_ctx != NULL) {
		if (r->ack_ctx->aio != NULL) {
			nng_msg *m = nng_aio_get_msg(r->ack_ctx->aio);
			if (m != NULL) {
				nng_msg_free(m);
			}
			nng_aio_free(r->ack_ctx->aio);
		}
		free(r->ack_ctx);
	}
	qpi_spc_free(r->spc);
	qpi_ids_free(&r->held);
	qpi_ids_free(&r->unacked);
	qpi_token_clear(&r->token);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->auth_mu);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

/* ---- queue calls ---- */

static int
rq_check(qpi_rq *r)
{
	if (r->pid != getpid()) {
		return qpi_err(QP_EINVAL,
		    "queue %s/%s was opened in process %ld: a remote handle "
		    "does not survive fork(); open the queue in this process",
		    r->url, r->name, (long) r->pid);
	}
	if (r->closed) {
		return qpi_err(
		    QP_ECLOSED, "queue %s/%s is closed", r->url, r->name);
	}
	return QP_OK;
}

/* Does call c and frees its reply; again while the answer is retry and c
 * waits for ever (the server answers retry at the end of each slice it
 * holds a blocking call: QP_EFULL for a put, QP_ETIMEDOUT for a pipe's
 * send). The call's result. */
static int
rq_do_retry(qpi_rq *r, rq_call *c, int retry)
{
	int rv;

	for (;;) {
		if ((rv = rq_do(r, c)) == QP_OK) {
			rv = rq_status(r, c);
		}
		rq_call_done(c);
		if (rv != retry || c->deadline_ns != INT64_MAX) {
			return rv;
		}
	}
}

/* Writes len bytes of buf at dst as a msgpack bin (dst has len + 5 bytes
 * of room); the bytes written, 0 if len is too large for a bin. */
static size_t
rq_bin_write(uint8_t *dst, const void *buf, size_t len)
{
	size_t h = qpi_wire_bin_header(len, dst);

	if (h > 0 && len > 0) {
		memcpy(dst + h, buf, len);
	}
	return h == 0 ? 0 : h + len;
}

/* The item of a raw put or send: len bytes of buf as a msgpack bin, in a
 * new allocation (*tmpp, the caller frees it). QP_OK or QP_ENOMEM; what
 * names the item in the message. */
static int
rq_bin_item(qpi_wire_item *it, const void *buf, size_t len, uint8_t **tmpp,
    const char *what)
{
	uint8_t *tmp = len <= SIZE_MAX - 5 ? malloc(len + 5) : NULL;
	size_t n = tmp != NULL ? rq_bin_write(tmp, buf, len) : 0;

	if (n == 0) {
		free(tmp);
		return qpi_err(
		    QP_ENOMEM, "out of memory for %s of %zu bytes", what, len);
	}
	it->data = tmp;
	it->len = n;
	*tmpp = tmp;
	return QP_OK;
}

/* The bytes a get returns of item it: its encoding (obj), else a bin's
 * payload (or the encoding of any other value). */
static const uint8_t *
rq_item_bytes(const qpi_wire_item *it, bool obj, size_t *lenp)
{
	size_t off = 0;

	*lenp = it->len;
	if (!obj) {
		qpi_wire_bin_unwrap(it->data, it->len, &off, lenp);
	}
	return it->data + off;
}

/* A malloc'd copy of the bytes a get returns of item it (see
 * rq_item_bytes); NULL when out of memory. */
static void *
rq_item_copy(const qpi_wire_item *it, bool obj, size_t *lenp)
{
	const uint8_t *src = rq_item_bytes(it, obj, lenp);
	void *out = malloc(*lenp > 0 ? *lenp : 1);

	if (out != NULL && *lenp > 0) {
		memcpy(out, src, *lenp);
	}
	return out;
}

int
qpi_rq_put(
    qpi_rq *r, bool raw, const void *buf, size_t len, int64_t deadline_ns)
{
	uint8_t *tmp = NULL;
	rq_call c;
	int rv;

	if ((rv = rq_check(r)) != QP_OK) {
		return rv;
	}
	if ((uint64_t) len > r->lim.max_message) {
		return qpi_err(QP_ETOOBIG,
		    "item of %zu bytes is over the %llu-byte limit of %s", len,
		    (unsigned long long) r->lim.max_message, r->url);
	}
	rq_call_init(&c, r, QPI_OP_PUT);
	if (!raw) {
		c.req.item.data = buf;
		c.req.item.len = len;
	} else if ((rv = rq_bin_item(&c.req.item, buf, len, &tmp, "an item"))
	    != QP_OK) {
		return rv;
	}
	c.blocking = deadline_ns != 0;
	c.deadline_ns = deadline_ns;
	rv = rq_do_retry(r, &c, QP_EFULL);
	free(tmp);
	return rv;
}

/* Gives a lease back to the head of the queue at once. */
static void
rq_release(qpi_rq *r, uint64_t lease_id)
{
	rq_call c;

	rq_call_init(&c, r, QPI_OP_RELEASE);
	c.req.lease_id = lease_id;
	rq_do(r, &c);
	rq_call_done(&c);
}

/* Sends a get for up to max items (1..max_batch), the pending
 * confirmations riding along; on QP_OK c->rep holds nitems >= 1 items,
 * pointing into c->msg (rq_call_done frees them). */
static int
rq_get_call(qpi_rq *r, rq_call *c, qpi_wire_item *items, uint32_t max,
    int64_t deadline_ns)
{
	uint64_t *acks = NULL;
	uint32_t nacks;
	int rv;

	if ((rv = rq_check(r)) != QP_OK) {
		return rv;
	}
	for (;;) {
		rq_call_init(c, r, QPI_OP_GET);
		c->req.max_items = max;
		c->req.lease_mode
		    = r->lease_mode ? QPI_LEASE_WORK : QPI_LEASE_CONFIRM;
		c->req.lease_ms = r->lease_ms;
		c->blocking = deadline_ns != 0;
		c->deadline_ns = deadline_ns;
		c->rep.items = items;
		c->rep.items_cap = max;
		/* Confirmations not yet sent ride along. */
		pthread_mutex_lock(&r->mu);
		nacks = rq_take_acks(r, &acks);
		pthread_mutex_unlock(&r->mu);
		c->req.ids = acks;
		c->req.nids = nacks;
		c->req.ids_cap = nacks;
		rv = rq_do(r, c);
		free(acks);
		acks = NULL;
		if (rv == QP_OK) {
			rv = rq_status(r, c);
		}
		if (rv == QP_EEMPTY && deadline_ns == INT64_MAX) {
			rq_call_done(c);
			continue;
		}
		break;
	}
	if (rv == QP_OK && (c->rep.nitems == 0 || c->rep.nitems > max)) {
		rv = qpi_err(QP_EPROTO,
		    "%s answered a get of %u with %u items", r->url, max,
		    c->rep.nitems);
	}
	if (rv != QP_OK) {
		rq_call_done(c);
	}
	return rv;
}

/* Notes the leases of items got: held (worker mode) or to confirm. */
static void
rq_got(qpi_rq *r, const qpi_wire_item *items, uint32_t n)
{
	pthread_mutex_lock(&r->mu);
	for (uint32_t i = 0; i < n; i++) {
		r->last_deliveries = items[i].deliveries;
		r->have_last = true;
		/* Out of memory: the lease runs out by itself and the item
		 * comes again; the caller has it either way. */
		(void) qpi_ids_push(r->lease_mode ? &r->held : &r->unacked,
		    items[i].lease_id, items[i].deliveries);
	}
	if (!r->lease_mode) {
		rq_ack_kick_locked(r, false);
	}
	pthread_mutex_unlock(&r->mu);
}

int
qpi_rq_get(qpi_rq *r, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline_ns)
{
	qpi_wire_item item;
	rq_call c;
	int rv;

	if ((rv = rq_get_call(r, &c, &item, 1, deadline_ns)) != QP_OK) {
		return rv;
	}
	bool obj = (flags & QPI_GET_OBJ) != 0;
	size_t len;
	if (into != NULL) {
		const uint8_t *src = rq_item_bytes(&item, obj, &len);
		*lenp = len;
		if (len > cap) {
			/* Too large for the buffer: it stays at the head. */
			rq_release(r, item.lease_id);
			rq_call_done(&c);
			return qpi_err(QP_ETOOBIG,
			    "item of %zu bytes does not fit in %zu; it stays "
			    "at the head of %s/%s",
			    len, cap, r->url, r->name);
		}
		if (len > 0) {
			memcpy(into, src, len);
		}
	} else {
		void *out = rq_item_copy(&item, obj, &len);
		if (out == NULL) {
			/* Keep nothing we cannot hand over: give it back. */
			rq_release(r, item.lease_id);
			rq_call_done(&c);
			return qpi_err(QP_ENOMEM,
			    "out of memory for an item of %zu bytes", len);
		}
		*bufp = out;
		*lenp = len;
	}
	rq_got(r, &item, 1);
	rq_call_done(&c);
	return QP_OK;
}

int
qpi_rq_get_many(qpi_rq *r, void **bufs, size_t *lens, size_t max, size_t *np,
    int64_t deadline_ns)
{
	qpi_wire_item stack[16], *items = stack;
	uint32_t want
	    = (uint32_t) (max > r->lim.max_batch ? r->lim.max_batch : max);
	rq_call c;
	uint32_t i;
	int rv;

	*np = 0;
	if (want > 16 && (items = calloc(want, sizeof(*items))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for %u items", want);
	}
	if ((rv = rq_get_call(r, &c, items, want, deadline_ns)) != QP_OK) {
		if (items != stack) {
			free(items);
		}
		return rv;
	}
	for (i = 0; i < c.rep.nitems; i++) {
		if ((bufs[i] = rq_item_copy(&items[i], false, &lens[i]))
		    == NULL) {
			break;
		}
	}
	if (i < c.rep.nitems) {
		/* Out of memory: what cannot be handed over goes back. */
		for (uint32_t k = i; k < c.rep.nitems; k++) {
			rq_release(r, items[k].lease_id);
		}
		if (i == 0) {
			rv = qpi_err(QP_ENOMEM, "out of memory for the items");
		}
	}
	rq_got(r, items, i);
	*np = i;
	rq_call_done(&c);
	if (items != stack) {
		free(items);
	}
	return rv;
}

int
qpi_rq_put_many(qpi_rq *r, const void *const *bufs, const size_t *lens,
    size_t n, int64_t deadline_ns)
{
	qpi_wire_item *items;
	uint8_t *enc;
	size_t total = 0, pos = 0, first = 0;
	int rv = QP_OK;

	if ((rv = rq_check(r)) != QP_OK) {
		return rv;
	}
	for (size_t i = 0; i < n; i++) {
		if ((uint64_t) lens[i] > r->lim.max_message) {
			return qpi_err(QP_ETOOBIG,
			    "item %zu of %zu bytes is over the %llu-byte "
			    "limit "
			    "of %s",
			    i, lens[i],
			    (unsigned long long) r->lim.max_message, r->url);
		}
		total += lens[i] + 5;
	}
	items = calloc(n > 0 ? n : 1, sizeof(*items));
	enc = malloc(total > 0 ? total : 1);
	if (items == NULL || enc == NULL) {
		free(items);
		free(enc);
		return qpi_err(QP_ENOMEM, "out of memory for %zu items", n);
	}
	/* Each item as a bin, one after the other. */
	for (size_t i = 0; i < n; i++) {
		items[i].data = enc + pos;
		items[i].len = rq_bin_write(enc + pos, bufs[i], lens[i]);
		pos += items[i].len;
	}
	/* Frames of at most max_batch items and max_message bytes: each
	 * one is all or nothing. */
	while (first < n && rv == QP_OK) {
		size_t cnt = 0, bytes = 0;
		while (first + cnt < n && cnt < r->lim.max_batch
		    && (cnt == 0
		        || bytes + items[first + cnt].len
		            <= r->lim.max_message)) {
			bytes += items[first + cnt].len;
			cnt++;
		}
		rq_call c;
		rq_call_init(&c, r, QPI_OP_PUT_MANY);
		c.req.items = items + first;
		c.req.nitems = (uint32_t) cnt;
		c.req.items_cap = (uint32_t) cnt;
		c.blocking = deadline_ns != 0;
		c.deadline_ns = deadline_ns;
		rv = rq_do_retry(r, &c, QP_EFULL);
		first += cnt;
	}
	free(items);
	free(enc);
	return rv;
}

/* Does a call with no arguments; the caller ends c with rq_call_done,
 * whatever the result (c is initialised first, even for a refused call). */
static int
rq_simple(qpi_rq *r, uint32_t op, rq_call *c)
{
	int rv;

	rq_call_init(c, r, op);
	if ((rv = rq_check(r)) != QP_OK) {
		return rv;
	}
	if ((rv = rq_do(r, c)) == QP_OK) {
		rv = rq_status(r, c);
	}
	return rv;
}

int
qpi_rq_qsize(qpi_rq *r, size_t *np)
{
	rq_call c;
	int rv = rq_simple(r, QPI_OP_QSIZE, &c);

	if (rv == QP_OK) {
		*np = (size_t) c.rep.count;
	}
	rq_call_done(&c);
	return rv;
}

int
qpi_rq_empty(qpi_rq *r, bool *emptyp)
{
	size_t n;
	int rv = qpi_rq_qsize(r, &n);

	if (rv == QP_OK) {
		*emptyp = n == 0;
	}
	return rv;
}

int
qpi_rq_stat(qpi_rq *r, qp_queue_stats *st)
{
	rq_call c;
	int rv = rq_simple(r, QPI_OP_STAT, &c);

	if (rv == QP_OK) {
		*st = c.rep.stat;
	}
	rq_call_done(&c);
	return rv;
}

int
qpi_rq_full(qpi_rq *r, bool *fullp)
{
	qp_queue_stats st;
	int rv = qpi_rq_stat(r, &st);

	if (rv == QP_OK) {
		/* maxsize counts the ready items, as in shared memory; a
		 * queue whose storage is full but not its maxsize reads as
		 * not full here (stat does not say how much room is left). */
		*fullp = st.maxsize != 0 && st.items >= st.maxsize;
	}
	return rv;
}

int
qpi_rq_task_done(qpi_rq *r)
{
	rq_call c;
	int rv;

	if ((rv = rq_check(r)) != QP_OK) {
		return rv;
	}
	if (r->lease_mode) {
		uint64_t id;
		pthread_mutex_lock(&r->mu);
		if (r->held.n == 0) {
			pthread_mutex_unlock(&r->mu);
			return qpi_err(QP_EVALUE,
			    "task_done() on %s/%s: this handle holds no task",
			    r->url, r->name);
		}
		id = r->held.id[0];
		pthread_mutex_unlock(&r->mu);
		rq_call_init(&c, r, QPI_OP_ACK);
		c.req.ids = &id;
		c.req.nids = 1;
		c.req.ids_cap = 1;
		uint64_t missing[1];
		c.rep.ids = missing;
		c.rep.ids_cap = 1;
		if ((rv = rq_do(r, &c)) == QP_OK) {
			rv = rq_status(r, &c);
		}
		if (rv == QP_OK && c.rep.nids > 0) {
			rv = qpi_err(QP_ENOENT,
			    "task_done() on %s/%s: the lease of the task ran "
			    "out first; the item went back to the queue",
			    r->url, r->name);
		}
		rq_call_done(&c);
		if (rv == QP_OK || rv == QP_ENOENT) {
			pthread_mutex_lock(&r->mu);
			qpi_ids_drop(&r->held, 0, 1);
			pthread_mutex_unlock(&r->mu);
		}
		return rv;
	}
	rq_call_init(&c, r, QPI_OP_TASK_DONE);
	c.req.count = 1;
	if ((rv = rq_do(r, &c)) == QP_OK) {
		rv = rq_status(r, &c);
	}
	rq_call_done(&c);
	return rv;
}

int
qpi_rq_join(qpi_rq *r, int64_t deadline_ns)
{
	rq_call c;
	int rv;

	if ((rv = rq_check(r)) != QP_OK) {
		return rv;
	}
	for (;;) {
		rq_call_init(&c, r, QPI_OP_JOIN);
		c.blocking = deadline_ns != 0;
		c.deadline_ns = deadline_ns;
		if ((rv = rq_do(r, &c)) == QP_OK) {
			rv = rq_status(r, &c);
		}
		rq_call_done(&c);
		if (rv == QP_ETIMEDOUT && deadline_ns == INT64_MAX) {
			continue;
		}
		return rv;
	}
}

int
qpi_rq_nack(qpi_rq *r, qp_duration delay)
{
	uint64_t id;
	rq_call c;
	int rv;

	if ((rv = rq_check(r)) != QP_OK) {
		return rv;
	}
	if (!r->lease_mode) {
		return qpi_err(QP_EINVAL,
		    "nack on %s/%s: only a handle opened with QP_OPEN_LEASE "
		    "holds its items",
		    r->url, r->name);
	}
	if (delay < 0) {
		return qpi_err(QP_EINVAL, "nack delay must be 0 or more ms");
	}
	pthread_mutex_lock(&r->mu);
	if (r->held.n == 0) {
		pthread_mutex_unlock(&r->mu);
		return qpi_err(QP_ENOENT, "nack on %s/%s: no item is held",
		    r->url, r->name);
	}
	id = r->held.id[0];
	pthread_mutex_unlock(&r->mu);
	rq_call_init(&c, r, QPI_OP_RELEASE);
	c.req.lease_id = id;
	c.req.delay_ms = (uint64_t) delay;
	if ((rv = rq_do(r, &c)) == QP_OK) {
		rv = rq_status(r, &c);
	}
	rq_call_done(&c);
	if (rv == QP_OK || rv == QP_ENOENT) {
		pthread_mutex_lock(&r->mu);
		qpi_ids_drop(&r->held, 0, 1);
		pthread_mutex_unlock(&r->mu);
	}
	return rv == QP_ENOENT ? QP_OK : rv; /* gone back already */
}

int
qpi_rq_touch(qpi_rq *r, qp_duration lease)
{
	uint64_t *ids = NULL, *missing = NULL;
	uint32_t batch
	    = r->lim.max_batch > 0 ? r->lim.max_batch : QPI_WIRE_DEFAULT_BATCH;
	size_t n, lost = 0;
	rq_call c;
	int rv;

	if ((rv = rq_check(r)) != QP_OK) {
		return rv;
	}
	if (!r->lease_mode) {
		return qpi_err(QP_EINVAL,
		    "touch on %s/%s: only a handle opened with QP_OPEN_LEASE "
		    "holds its items",
		    r->url, r->name);
	}
	if (lease < 0 || lease > QPI_WIRE_MS_MAX) {
		return qpi_err(QP_EINVAL,
		    "touch: lease %lld ms is not within 0..2^31-1",
		    (long long) lease);
	}
	/* A copy of the ids: the list may change while the calls are out. */
	pthread_mutex_lock(&r->mu);
	n = r->held.n;
	if (n > 0 && (ids = malloc(n * sizeof(*ids))) != NULL) {
		memcpy(ids, r->held.id, n * sizeof(*ids));
	}
	pthread_mutex_unlock(&r->mu);
	if (n == 0) {
		return qpi_err(QP_ENOENT, "touch on %s/%s: no item is held",
		    r->url, r->name);
	}
	if (ids == NULL
	    || (missing = malloc((n < batch ? n : batch) * sizeof(*missing)))
	        == NULL) {
		free(ids);
		return qpi_err(QP_ENOMEM, "out of memory for a touch");
	}
	for (size_t i = 0; i < n && rv == QP_OK; i += batch) {
		uint32_t k = (uint32_t) (n - i < batch ? n - i : batch);
		rq_call_init(&c, r, QPI_OP_TOUCH);
		c.req.lease_ms = lease != 0 ? (uint64_t) lease : r->lease_ms;
		c.req.ids = ids + i;
		c.req.nids = k;
		c.req.ids_cap = k;
		c.rep.ids = missing;
		c.rep.ids_cap = k;
		if ((rv = rq_do(r, &c)) == QP_OK) {
			rv = rq_status(r, &c);
		}
		if (rv == QP_OK) {
			lost += c.rep.nids;
		}
		rq_call_done(&c);
	}
	free(ids);
	free(missing);
	if (rv == QP_EPROTO) {
		return qpi_err(QP_ENOTSUP,
		    "touch on %s/%s: the server does not know the touch op "
		    "(an older qpiped)",
		    r->url, r->name);
	}
	if (rv == QP_OK && lost > 0) {
		/* Kept in the list: task_done on them says the same. */
		rv = qpi_err(QP_ENOENT,
		    "touch on %s/%s: %zu of %zu leases had run out already; "
		    "those items went back to the queue",
		    r->url, r->name, lost, n);
	}
	return rv;
}

int
qpi_rq_deliveries(qpi_rq *r, uint32_t *np)
{
	int rv = QP_OK;

	pthread_mutex_lock(&r->mu);
	if (r->lease_mode && r->held.n > 0) {
		*np = (uint32_t) r->held.val[0];
	} else if (!r->lease_mode && r->have_last) {
		*np = r->last_deliveries;
	} else {
		rv = qpi_err(QP_ENOENT, "no item got yet");
	}
	pthread_mutex_unlock(&r->mu);
	return rv;
}

int
qpi_rq_unlink(const qpi_addr *a, const qp_conn_opts *o)
{
	qpi_rq *r;
	rq_call c;
	int rv;

	if ((rv = rq_new(&r, a, o, true)) != QP_OK) {
		return rv;
	}
	rq_call_init(&c, r, QPI_OP_DELETE);
	if ((rv = rq_do(r, &c)) == QP_OK) {
		rv = rq_status(r, &c);
	}
	rq_call_done(&c);
	qpi_rq_free(r);
	return rv;
}

int
qpi_rq_list(const qpi_addr *a, const qp_conn_opts *o, qp_queue_info **listp,
    size_t *np)
{
	qpi_wire_qentry *ents;
	qp_queue_info *out;
	qpi_rq *r;
	rq_call c;
	int rv;

	if ((rv = rq_new(&r, a, o, true)) != QP_OK) {
		return rv;
	}
	if ((ents = calloc(QPI_WIRE_DEFAULT_BATCH, sizeof(*ents))) == NULL) {
		qpi_rq_free(r);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	rq_call_init(&c, r, QPI_OP_LIST);
	c.rep.queues = ents;
	c.rep.queues_cap = QPI_WIRE_DEFAULT_BATCH;
	if ((rv = rq_do(r, &c)) == QP_OK) {
		rv = rq_status(r, &c);
	}
	if (rv == QP_OK) {
		size_t n = c.rep.nqueues;
		if ((out = calloc(n > 0 ? n : 1, sizeof(*out))) == NULL) {
			rv = qpi_err(QP_ENOMEM, "out of memory");
		} else {
			for (size_t i = 0; i < n; i++) {
				snprintf(out[i].name, sizeof(out[i].name),
				    "%s", ents[i].name);
				out[i].stat = ents[i].stat;
			}
			*listp = out;
			*np = n;
		}
	}
	rq_call_done(&c);
	free(ents);
	qpi_rq_free(r);
	return rv;
}

/* ---- the backend of qp_queue_* (queue.h) ---- */

static int
rqo_put(void *impl, const void *buf, size_t len, unsigned kind,
    int64_t deadline_ns)
{
	return qpi_rq_put(impl, kind == QPI_ITEM_BIN, buf, len, deadline_ns);
}

static int
rqo_get(void *impl, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline_ns)
{
	return qpi_rq_get(impl, flags, into, cap, bufp, lenp, deadline_ns);
}

static int
rqo_qsize(void *impl, uint64_t *np)
{
	size_t n = 0;
	int rv = qpi_rq_qsize(impl, &n);

	*np = n;
	return rv;
}

static int
rqo_full(void *impl, bool *fullp)
{
	return qpi_rq_full(impl, fullp);
}

static int
rqo_task_done(void *impl)
{
	return qpi_rq_task_done(impl);
}

static int
rqo_join(void *impl, int64_t deadline_ns)
{
	return qpi_rq_join(impl, deadline_ns);
}

static int
rqo_stat(void *impl, qp_queue_stats *st)
{
	return qpi_rq_stat(impl, st);
}

static int
rqo_nack(void *impl, qp_duration delay)
{
	return qpi_rq_nack(impl, delay);
}

static int
rqo_touch(void *impl, qp_duration lease)
{
	return qpi_rq_touch(impl, lease);
}

static int
rqo_deliveries(void *impl, uint32_t *np)
{
	return qpi_rq_deliveries(impl, np);
}

static void
rqo_close(void *impl)
{
	qpi_rq_close(impl);
}

static void
rqo_free(void *impl)
{
	qpi_rq_free(impl);
}

const qpi_queue_ops qpi_remote_ops = {
    .put = rqo_put,
    .get = rqo_get,
    .qsize = rqo_qsize,
    .full = rqo_full,
    .task_done = rqo_task_done,
    .join = rqo_join,
    .stat = rqo_stat,
    .nack = rqo_nack,
    .deliveries = rqo_deliveries,
    .touch = rqo_touch,
    .close = rqo_close,
    .free = rqo_free,
};

/* Shared memory: batches as a server takes them (at most
 * QPI_WIRE_DEFAULT_BATCH items and QP_DEFAULT_MAX_MESSAGE bytes), each
 * one batch put, all or nothing. */
static int
shm_put_many(qpi_shmq *sq, const void *const *bufs, const size_t *lens,
    size_t n, int64_t deadline_ns)
{
	qpi_shmq_item *it = malloc((n > 0 ? n : 1) * sizeof(*it));
	size_t first = 0;
	int rv = QP_OK;

	if (it == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for %zu items", n);
	}
	for (size_t i = 0; i < n; i++) {
		it[i].buf = bufs[i];
		it[i].len = lens[i];
		it[i].kind = QPI_ITEM_BIN;
	}
	while (first < n && rv == QP_OK) {
		size_t cnt = 0, bytes = 0;
		while (first + cnt < n && cnt < QPI_WIRE_DEFAULT_BATCH
		    && (cnt == 0
		        || bytes + lens[first + cnt]
		            <= QP_DEFAULT_MAX_MESSAGE)) {
			bytes += lens[first + cnt];
			cnt++;
		}
		rv = qpi_shmq_put_many(sq, it + first, cnt, deadline_ns);
		first += cnt;
	}
	free(it);
	return rv;
}

QP_API int
qp_queue_put_many(qp_queue *q, const void *const *bufs, const size_t *lens,
    size_t n, qp_duration timeout)
{
	const qpi_queue_ops *ops;
	void *impl;
	int rv;

	if (q == NULL || (n > 0 && (bufs == NULL || lens == NULL))) {
		return qpi_err(QP_EINVAL, "qp_queue_put_many: NULL argument");
	}
	if ((rv = qpi_queue_ready(q)) != QP_OK
	    || (rv = qpi_duration_check(timeout)) != QP_OK) {
		return rv;
	}
	impl = qpi_queue_impl(q, &ops);
	if (ops == &qpi_remote_ops) {
		return qpi_rq_put_many(
		    impl, bufs, lens, n, qpi_queue_deadline(timeout));
	}
	qpi_shmq *sq = qpi_queue_shmq(q);
	if (sq != NULL) {
		return shm_put_many(
		    sq, bufs, lens, n, qpi_queue_deadline(timeout));
	}
	/* A durable queue: item by item, each one logged as a put. */
	for (size_t i = 0; i < n && rv == QP_OK; i++) {
		rv = qp_queue_put(q, bufs[i], lens[i], timeout);
	}
	return rv;
}

QP_API int
qp_queue_get_many(qp_queue *q, void **bufs, size_t *lens, size_t max,
    size_t *np, qp_duration timeout)
{
	const qpi_queue_ops *ops;
	void *impl;
	int rv;

	if (q == NULL || bufs == NULL || lens == NULL || np == NULL
	    || max == 0) {
		return qpi_err(
		    QP_EINVAL, "qp_queue_get_many: NULL argument or max 0");
	}
	*np = 0;
	if ((rv = qpi_duration_check(timeout)) != QP_OK) {
		return rv;
	}
	impl = qpi_queue_impl(q, &ops);
	if (ops == &qpi_remote_ops) {
		return qpi_rq_get_many(
		    impl, bufs, lens, max, np, qpi_queue_deadline(timeout));
	}
	/* Shared memory: the first get waits, the others do not. */
	if ((rv = qp_queue_get(q, &bufs[0], &lens[0], timeout)) != QP_OK) {
		return rv;
	}
	for (*np = 1; *np < max; (*np)++) {
		if (qp_queue_get(q, &bufs[*np], &lens[*np], QP_NOWAIT)
		    != QP_OK) {
			break;
		}
	}
	qpi_err_clear();
	return QP_OK;
}

QP_API int
qp_server_list_opts(const char *addr, const qp_conn_opts *conn,
    qp_queue_info **listp, size_t *np)
{
	qpi_addr a;
	int rv;

	if (addr == NULL || listp == NULL || np == NULL) {
		return qpi_err(QP_EINVAL, "qp_server_list: NULL argument");
	}
	if ((rv = qpi_addr_parse(addr, QPI_ADDR_SERVER, &a)) != QP_OK) {
		return rv;
	}
	return qpi_rq_list(&a, conn, listp, np);
}

QP_API int
qp_server_list(const char *addr, qp_queue_info **listp, size_t *np)
{
	return qp_server_list_opts(addr, NULL, listp, np);
}

/* ---- pipes through the server ----
 *
 * A Connection whose messages travel through qpiped (PROTOCOL.md, pipes):
 * an nng req0 connection of its own holds one side of a named pipe. A
 * receiving end keeps one pipe_recv parked on the server at all times
 * (the prefetcher, an aio state machine on its own context): a message
 * that arrives is queued here, an eventfd is readable while one waits, and
 * peek/take read the local queue. The prefetcher stops while RP_RXQ_MAX
 * bytes are queued, so a slow receiver leaves the messages in the server,
 * whose buffer then holds back the sender. Sending is a synchronous
 * pipe_send. End of file: the server answers QP_ECLOSED once the other
 * side closed (or its connection dropped) and nothing is left. A dropped
 * connection of our own loses the side: end of file too.
 *
 * Locking: rp->mu guards the local queue, the end-of-file state and the
 * prefetcher's state; nothing waits on the network with it held. */

#define RP_RXQ_MAX ((size_t) 4 << 20)

enum { RP_IDLE, RP_SENDING, RP_RECEIVING, RP_STOPPED };

typedef struct rp_msg {
	struct rp_msg *next;
	size_t len;
	uint8_t data[]; /* the message's msgpack encoding */
} rp_msg;

typedef struct rpipe {
	qp_conn base; /* first: conn.c sees this */
	qpi_rq *r; /* the connection, client id and seqs */
	int side;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* a message came, or the end of file */
	rp_msg *head, *tail;
	size_t qbytes;
	bool eof;
	int eof_err;
	char eof_msg[256];
	int efd; /* readable while a message waits or at end of file */
	rq_ctx pf; /* the prefetcher's context and aio */
	int pf_state;
	bool pf_started;
} rpipe;

static rpipe *
rp_of(qp_conn *c)
{
	return (rpipe *) c;
}

static void
rp_efd_sync(rpipe *p)
{
	uint64_t v;

	if (p->head != NULL || p->eof) {
		v = 1;
		if (write(p->efd, &v, sizeof(v)) < 0) {
			/* at its maximum already: it stays readable */
		}
	} else if (read(p->efd, &v, sizeof(v)) < 0) {
		/* was not readable: nothing to clear */
	}
}

/* Ends the stream: later receives get err once the queue is drained. */
static void
rp_set_eof(rpipe *p, int err, const char *msg)
{
	if (!p->eof) {
		p->eof = true;
		p->eof_err = err;
		snprintf(p->eof_msg, sizeof(p->eof_msg), "%s", msg);
	}
	p->pf_state = RP_STOPPED;
	rp_efd_sync(p);
	pthread_cond_broadcast(&p->cv);
}

/* Sends the next pipe_recv (timeout: a slice) if the queue has room. With
 * p->mu held. */
static void
rp_pf_next(rpipe *p)
{
	qpi_rq *r = p->r;
	qpi_wire_req req;
	nng_msg *m;

	if (p->pf_state != RP_IDLE || p->eof || p->qbytes >= RP_RXQ_MAX) {
		return;
	}
	memset(&req, 0, sizeof(req));
	req.op = QPI_OP_PIPE_RECV;
	snprintf(req.name, sizeof(req.name), "%s", r->name);
	pthread_mutex_lock(&r->mu);
	memcpy(req.client_id, r->id, sizeof(r->id));
	req.seq = ++r->seq;
	req.req_id = ++r->req_id;
	pthread_mutex_unlock(&r->mu);
	req.side = p->side;
	req.timeout = QPI_RQ_SLICE_MS;
	if (rq_encode(r, &req, &m) != QP_OK) {
		rp_set_eof(p, QP_ENOMEM, "out of memory for a receive");
		return;
	}
	p->pf_state = RP_SENDING;
	nng_aio_set_msg(p->pf.aio, m);
	nng_aio_set_timeout(p->pf.aio, (nng_duration) r->reconnect_ms);
	nng_ctx_send(p->pf.ctx, p->pf.aio);
}

static void
rp_pf_cb(void *arg)
{
	rpipe *p = arg;
	nng_aio *aio = p->pf.aio;
	int rv = nng_aio_result(aio);
	nng_msg *m = nng_aio_get_msg(aio);

	pthread_mutex_lock(&p->mu);
	if (p->pf_state == RP_SENDING) {
		if (rv == 0) {
			p->pf_state = RP_RECEIVING;
			nng_aio_set_timeout(
			    aio, QPI_RQ_SLICE_MS + QPI_RQ_SLACK_MS);
			nng_ctx_recv(p->pf.ctx, aio);
			pthread_mutex_unlock(&p->mu);
			return;
		}
		if (m != NULL) {
			nng_msg_free(m);
			nng_aio_set_msg(aio, NULL);
		}
		p->pf_state = RP_IDLE;
		rp_set_eof(p, rv == NNG_ECLOSED ? QP_ECLOSED : QP_ECONNRESET,
		    rv == NNG_ECLOSED ? "connection closed"
		                      : "lost the connection to the server");
		pthread_mutex_unlock(&p->mu);
		return;
	}
	if (p->pf_state != RP_RECEIVING) {
		if (rv == 0 && m != NULL) {
			nng_msg_free(m);
			nng_aio_set_msg(aio, NULL);
		}
		pthread_mutex_unlock(&p->mu);
		return;
	}
	p->pf_state = RP_IDLE;
	if (rv != 0) {
		/* Our connection dropped (the side with it) or was closed. */
		rp_set_eof(p, rv == NNG_ECLOSED ? QP_ECLOSED : QP_ECONNRESET,
		    rv == NNG_ECLOSED ? "connection closed"
		                      : "lost the connection to the server");
		pthread_mutex_unlock(&p->mu);
		return;
	}
	nng_aio_set_msg(aio, NULL);
	qpi_wire_rep rep;
	memset(&rep, 0, sizeof(rep));
	int drv = qpi_wire_decode_rep(
	    nng_msg_body(m), nng_msg_len(m), &p->r->lim, &rep);
	if (drv != QP_OK) {
		rp_set_eof(p, QP_EPROTO, "bad reply from the server");
	} else if (rep.status == QP_OK) {
		rp_msg *e = malloc(sizeof(*e) + rep.item.len);
		if (e == NULL) {
			rp_set_eof(p, QP_ENOMEM,
			    "out of memory for a received message");
		} else {
			e->next = NULL;
			e->len = rep.item.len;
			memcpy(e->data, rep.item.data, rep.item.len);
			if (p->tail != NULL) {
				p->tail->next = e;
			} else {
				p->head = e;
			}
			p->tail = e;
			p->qbytes += e->len;
			rp_efd_sync(p);
			pthread_cond_broadcast(&p->cv);
		}
	} else if (rep.status != QP_ETIMEDOUT) {
		/* QP_ECLOSED: the end of file; anything else ends it too. */
		char msg[300];
		snprintf(msg, sizeof(msg), "%s", rep.errmsg);
		rp_set_eof(p,
		    /* EAUTH: a new connection, not authenticated; the
		     * side died with the old one. */
		    rep.status == QP_ECONNRESET || rep.status == QP_EAUTH
		        ? QP_ECLOSED
		        : rep.status,
		    msg);
	}
	nng_msg_free(m);
	rp_pf_next(p);
	pthread_mutex_unlock(&p->mu);
}

static int
rp_send(qp_conn *c, bool raw, const void *buf, size_t len, uint8_t binoff)
{
	rpipe *p = rp_of(c);
	qpi_rq *r = p->r;
	uint8_t *tmp = NULL;
	rq_call call;
	int rv;

	(void) binoff;
	if ((uint64_t) len > r->lim.max_message) {
		return qpi_err(QP_ETOOBIG,
		    "message of %zu bytes is over the %llu-byte limit of %s",
		    len, (unsigned long long) r->lim.max_message, r->url);
	}
	rq_call_init(&call, r, QPI_OP_PIPE_SEND);
	call.req.side = p->side;
	if (!raw) {
		call.req.item.data = buf;
		call.req.item.len = len;
	} else if ((rv = rq_bin_item(
	                &call.req.item, buf, len, &tmp, "a message"))
	    != QP_OK) {
		return rv;
	}
	call.blocking = true;
	call.deadline_ns = INT64_MAX;
	/* QP_ETIMEDOUT: the server's buffer stayed full for a whole slice. */
	rv = rq_do_retry(r, &call, QP_ETIMEDOUT);
	free(tmp);
	return rv;
}

static int
rp_peek(qp_conn *c, int64_t deadline, qpi_msginfo *mi)
{
	rpipe *p = rp_of(c);
	int rv = QP_OK;

	pthread_mutex_lock(&p->mu);
	while (p->head == NULL && !p->eof) {
		if (deadline == INT64_MAX) {
			pthread_cond_wait(&p->cv, &p->mu);
		} else if (qpi_remaining_ns(deadline) == 0) {
			rv = QP_ETIMEDOUT;
			break;
		} else {
			struct timespec ts = qpi_ts_from_ns(deadline);
			pthread_cond_timedwait(&p->cv, &p->mu, &ts);
		}
	}
	if (p->head != NULL) {
		size_t off = 0, plen = 0;
		mi->len = p->head->len;
		mi->raw = false;
		mi->binoff = qpi_wire_bin_unwrap(
		                 p->head->data, p->head->len, &off, &plen)
		    ? (uint8_t) off
		    : 0;
	} else if (rv == QP_OK) {
		rv = qpi_err(p->eof_err, "pipe %s/%s: %s", p->r->url,
		    p->r->name, p->eof_msg);
	}
	pthread_mutex_unlock(&p->mu);
	return rv;
}

static int
rp_take(qp_conn *c, const qpi_msginfo *mi, size_t skip, void *dst)
{
	rpipe *p = rp_of(c);
	rp_msg *m;

	pthread_mutex_lock(&p->mu);
	m = p->head;
	if (m == NULL || m->len != mi->len) {
		pthread_mutex_unlock(&p->mu);
		return qpi_err(QP_EBUSY,
		    "the message changed under this receive: another thread "
		    "received on the connection at the same time");
	}
	p->head = m->next;
	if (p->head == NULL) {
		p->tail = NULL;
	}
	p->qbytes -= m->len;
	rp_efd_sync(p);
	rp_pf_next(p); /* room again */
	pthread_mutex_unlock(&p->mu);
	if (m->len > skip) {
		memcpy(dst, m->data + skip, m->len - skip);
	}
	free(m);
	return QP_OK;
}

static int
rp_fd(qp_conn *c, int *fdp)
{
	*fdp = rp_of(c)->efd;
	return QP_OK;
}

static void
rp_set_max(qp_conn *c)
{
	(void) c; /* the server's limit applies; conn.c checks this one */
}

static void
rp_close(qp_conn *c)
{
	rpipe *p = rp_of(c);
	rq_call call;

	/* The other side sees the end of file once it has read what was
	 * sent (our sends were all taken by the server). */
	rq_call_init(&call, p->r, QPI_OP_PIPE_CLOSE);
	call.req.side = p->side;
	rq_do(p->r, &call);
	rq_call_done(&call);
	pthread_mutex_lock(&p->mu);
	rp_set_eof(p, QP_ECLOSED, "connection closed");
	pthread_mutex_unlock(&p->mu);
	qpi_rq_close(p->r);
}

/* Frees the end's memory and descriptor, and its connection (which in a
 * forked child only forgets its copy): the end of destroy, and all of it
 * for a forked child's copy, whose prefetcher and locks are the parent's. */
static void
rp_forget(qp_conn *c)
{
	rpipe *p = rp_of(c);
	rp_msg *m;

	qpi_rq_free(p->r);
	while ((m = p->head) != NULL) {
		p->head = m->next;
		free(m);
	}
	if (p->efd >= 0) {
		close(p->efd);
	}
	free(p);
}

static void
rp_destroy(qp_conn *c)
{
	rpipe *p = rp_of(c);

	qpi_rq_close(p->r);
	if (p->pf.aio != NULL) {
		nng_aio_stop(p->pf.aio);
		if (nng_aio_get_msg(p->pf.aio) != NULL) {
			nng_msg_free(nng_aio_get_msg(p->pf.aio));
		}
		nng_aio_free(p->pf.aio);
	}
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	rp_forget(c);
}

static const qpi_conn_ops rp_ops = {
    .send = rp_send,
    .peek = rp_peek,
    .take = rp_take,
    .fd = rp_fd,
    .set_max = rp_set_max,
    .close = rp_close,
    .destroy = rp_destroy,
    .forget = rp_forget,
};

QP_API int
qp_pipe_open(qp_conn **cp, const char *addr, int side, bool duplex)
{
	return qp_pipe_open_opts(cp, addr, side, duplex, NULL);
}

QP_API int
qp_pipe_open_opts(qp_conn **cp, const char *addr, int side, bool duplex,
    const qp_conn_opts *conn)
{
	pthread_condattr_t ca;
	rpipe *p;
	qpi_addr a;
	rq_call call;
	int rv;

	if (cp == NULL || addr == NULL) {
		return qpi_err(QP_EINVAL, "qp_pipe_open: NULL argument");
	}
	*cp = NULL;
	if (side < -1 || side > 1) {
		return qpi_err(QP_EINVAL,
		    "qp_pipe_open: side must be 0, 1 or -1 (either), not %d",
		    side);
	}
	if ((rv = qpi_addr_parse(addr, QPI_ADDR_NAMED, &a)) != QP_OK) {
		return rv;
	}
	if (a.kind == QPI_ADDR_SHM) {
		return qpi_err(QP_EINVAL,
		    "qp_pipe_open: %s is not a server address (a named pipe "
		    "lives in qpiped: tcp://HOST:PORT/NAME or "
		    "ipc:///PATH/NAME; qp_pipe makes a local one)",
		    addr);
	}
	if ((p = calloc(1, sizeof(*p))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	p->efd = -1;
	pthread_mutex_init(&p->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cv, &ca);
	pthread_condattr_destroy(&ca);
	if ((rv = rq_new(&p->r, &a, conn, false)) != QP_OK) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", qp_errmsg());
		pthread_cond_destroy(&p->cv);
		pthread_mutex_destroy(&p->mu);
		free(p);
		return qpi_err(rv, "%s", msg);
	}
	rq_call_init(&call, p->r, QPI_OP_PIPE_OPEN);
	call.req.side = side;
	call.req.flags = duplex ? 0 : QPI_PIPE_ONEWAY;
	if ((rv = rq_do(p->r, &call)) == QP_OK) {
		rv = rq_status(p->r, &call);
	}
	p->side = call.rep.side;
	rq_call_done(&call);
	if (rv == QP_OK
	    && ((p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0
	        || nng_aio_alloc(&p->pf.aio, rp_pf_cb, p) != 0
	        || nng_ctx_open(&p->pf.ctx, p->r->sock) != 0)) {
		rv = qpi_err(QP_ENOMEM, "out of memory for a pipe end");
	}
	if (rv != QP_OK) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", qp_errmsg());
		rp_destroy(&p->base);
		return qpi_err(rv, "%s", msg);
	}
	/* Which way it goes is the pipe's (made by whoever opened it
	 * first): a one-way pipe answers EPERM the wrong way round, so the
	 * directions are known from the side only for the pipes this call
	 * made; both are allowed otherwise and the server says no. */
	bool readable = duplex || p->side == 0;
	bool writable = duplex || p->side == 1;
	qpi_conn_init(&p->base, &rp_ops, readable, writable);
	p->base.owner = p->r->pid;
	if (readable) {
		pthread_mutex_lock(&p->mu);
		rp_pf_next(p);
		pthread_mutex_unlock(&p->mu);
	}
	*cp = &p->base;
	return QP_OK;
}
