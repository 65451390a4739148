/*
 * pipes.c - pipes through the server (PROTOCOL.md, pipes): two clients
 * that open the same pipe name get a Connection pair. A pipe has two
 * sides; each side, once opened, belongs to the connection that opened it
 * and holds the messages sent to it by the other side, in order, up to
 * PS_BUF_MAX bytes (one message always fits), beyond which the sender's
 * pipe_send waits. Closing a side, or the drop of its connection, is the
 * end of file for the other: its receives get what is left, then
 * QP_ECLOSED. A pipe goes away when both sides are closed.
 *
 * Waiting requests (a receive on an empty side, a send to a full one, a
 * poll) park as queue requests do (wait.c), in the lists of the side they
 * wait on; their connection's close ends them.
 *
 * Messages live in the server's memory only: a pipe does not outlive the
 * server (its connections, and so its sides, end with it).
 *
 * Locking: none of its own; everything runs under the ops lock.
 */
#include "qps.h"
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes buffered for one side before a sender waits. */
#define PS_BUF_MAX ((size_t) 4 << 20)
/* Pipes at most (ELIMIT beyond). */
#define PS_MAX_PIPES 65536

enum { SIDE_NEVER = 0, SIDE_OPEN, SIDE_CLOSED };
enum { PW_RECV = 0, PW_SEND, PW_POLL, PW_KINDS };

typedef struct ps_msg {
	struct ps_msg *next;
	size_t len;
	uint8_t data[]; /* the msgpack encoding of the message */
} ps_msg;

typedef struct ps_pipe ps_pipe;

typedef struct ps_side {
	int state;
	uint32_t conn; /* the connection holding it (SIDE_OPEN) */
	ps_msg *qhead, *qtail; /* messages sent to this side */
	size_t qbytes;
	qps_wlist wl[PW_KINDS]; /* waiting on it */
} ps_side;

struct ps_pipe {
	qpi_hnode node; /* key: qpi_hash_keyed(name) */
	char name[QP_NAME_MAX + 1];
	bool oneway; /* side 0 only receives, side 1 only sends */
	ps_side side[2];
};

static struct {
	qpi_htab tab; /* every pipe */
} ps;

/* An error reply to r; PS_FAIL answers r with one (*repp, QPS_REPLY). */
#define PS_ERR(r, status, ...) \
	qps_rep_error((r)->op, (r)->req_id, status, __VA_ARGS__)
#define PS_FAIL(repp, r, status, ...) \
	(*(repp) = PS_ERR(r, status, __VA_ARGS__), QPS_REPLY)

static ps_pipe *
ps_find(const char *name)
{
	for (qpi_hnode *n
	     = qpi_htab_find(&ps.tab, qpi_hash_keyed(name, strlen(name)));
	     n != NULL; n = qpi_htab_next(n)) {
		ps_pipe *p = (ps_pipe *) n;
		if (strcmp(p->name, name) == 0) {
			return p;
		}
	}
	return NULL;
}

static void
ps_free_msgs(ps_side *s)
{
	ps_msg *m;

	while ((m = s->qhead) != NULL) {
		s->qhead = m->next;
		free(m);
	}
	s->qtail = NULL;
	s->qbytes = 0;
}

static void
ps_remove(ps_pipe *p)
{
	qpi_htab_remove(&ps.tab, &p->node);
	ps_free_msgs(&p->side[0]);
	ps_free_msgs(&p->side[1]);
	free(p);
}

/* ---- parked requests ---- */

static nng_msg *
ps_rep_ready(const qpi_wire_req *r, bool ready)
{
	qpi_wire_rep rp = {.op = r->op, .req_id = r->req_id, .ready = ready};

	return qps_rep_encode(&rp);
}

static void
pw_timeout(qps_wait *wt)
{
	const qpi_wire_req *r = &wt->r;

	qps_wait_finish(wt,
	    wt->kind == PW_POLL
	        ? ps_rep_ready(r, false)
	        : PS_ERR(r, QP_ETIMEDOUT,
	            "%s on pipe '%s': nothing after %lld ms",
	            wt->kind == PW_RECV ? "receive"
	                                : "send (its buffer is full)",
	            ((ps_pipe *) wt->obj)->name, (long long) r->timeout));
}

/* ---- messages ---- */

/* Takes the oldest message sent to sd (there is one) and answers r with
 * it. */
static nng_msg *
ps_rep_take(ps_side *sd, const qpi_wire_req *r)
{
	ps_msg *m = sd->qhead;
	qpi_wire_rep rp = {.op = r->op,
	    .req_id = r->req_id,
	    .item = {.data = m->data, .len = m->len}};
	nng_msg *rep;

	if ((sd->qhead = m->next) == NULL) {
		sd->qtail = NULL;
	}
	sd->qbytes -= m->len;
	rep = qps_rep_encode(&rp);
	free(m);
	return rep;
}

/* Whether side s of p has something for a receive: a message, or the
 * end of file (its peer closed). */
static bool
ps_readable(ps_pipe *p, int s)
{
	return p->side[s].qhead != NULL || p->side[1 - s].state == SIDE_CLOSED;
}

/* Appends a message for side sd; false if out of memory. */
static bool
ps_enqueue(ps_side *sd, const qpi_wire_item *it)
{
	ps_msg *m = malloc(sizeof(*m) + it->len);

	if (m == NULL) {
		return false;
	}
	m->next = NULL;
	m->len = it->len;
	memcpy(m->data, it->data, it->len);
	*(sd->qtail != NULL ? &sd->qtail->next : &sd->qhead) = m;
	sd->qtail = m;
	sd->qbytes += m->len;
	return true;
}

/* Serves what waits on side s: receives and polls while it has
 * something, and the sends from its peer while there is room. */
static void
ps_dispatch(ps_pipe *p, int s)
{
	ps_side *sd = &p->side[s];
	bool progress = true;

	while (progress) {
		bool eof = p->side[1 - s].state == SIDE_CLOSED;
		progress = false;
		while (sd->wl[PW_RECV].head != NULL) {
			qps_wait *wt = sd->wl[PW_RECV].head;
			if (sd->qhead != NULL) {
				qps_wait_finish(wt, ps_rep_take(sd, &wt->r));
			} else if (eof || sd->state == SIDE_CLOSED) {
				qps_wait_finish(wt,
				    PS_ERR(&wt->r, QP_ECLOSED,
				        "pipe '%s': end of file (the other "
				        "side closed)",
				        p->name));
			} else {
				break;
			}
		}
		if (ps_readable(p, s) || sd->state == SIDE_CLOSED) {
			while (sd->wl[PW_POLL].head != NULL) {
				qps_wait *wt = sd->wl[PW_POLL].head;
				qps_wait_finish(
				    wt, ps_rep_ready(&wt->r, true));
			}
		}
		/* Sends waiting for room in this side's buffer. */
		while (sd->wl[PW_SEND].head != NULL) {
			qps_wait *wt = sd->wl[PW_SEND].head;
			const qpi_wire_item *it = &wt->r.item;
			if (sd->state == SIDE_CLOSED || eof) {
				qps_wait_finish(wt,
				    PS_ERR(&wt->r, QP_ECLOSED,
				        "pipe '%s': %s closed", p->name,
				        eof ? "this side was"
				            : "the other side"));
				continue;
			}
			if (sd->qhead != NULL
			    && sd->qbytes + it->len > PS_BUF_MAX) {
				break;
			}
			if (!ps_enqueue(sd, it)) {
				qps_wait_finish(wt,
				    PS_ERR(&wt->r, QP_ENOMEM,
				        "out of memory for a message of %zu "
				        "bytes",
				        it->len));
				continue;
			}
			qps_wait_finish(wt, qps_rep_ok(&wt->r));
			progress = true; /* a receive may take it at once */
			break;
		}
	}
}

/* Closes side s: its peer's receives see end of file, sends to it fail. */
static void
ps_close_side(ps_pipe *p, int s)
{
	ps_side *sd = &p->side[s];

	sd->state = SIDE_CLOSED;
	sd->conn = 0;
	/* Nobody will read what was sent to this side. */
	ps_free_msgs(sd);
	/* Its own waiters, and the peer's. */
	ps_dispatch(p, s);
	ps_dispatch(p, 1 - s);
	if (p->side[0].state == SIDE_CLOSED
	    && p->side[1].state == SIDE_CLOSED) {
		ps_remove(p);
	}
}

/* ---- ops ---- */

static qps_handled
ps_park_or_refuse(
    const qps_req *rq, ps_pipe *p, int on, int kind, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;
	qps_wait *wt = qps_wait_add(
	    rq, &p->side[on].wl[kind], kind, r->timeout, pw_timeout);

	if (wt != NULL) {
		wt->obj = p;
		return QPS_PARKED;
	}
	*repp = qps_wait_refusal(r);
	return QPS_REPLY;
}

/* Opens a side of the pipe r names (made on first sight). */
static qps_handled
ps_open(ps_pipe *p, uint32_t conn, const qpi_wire_req *r, nng_msg **repp)
{
	qpi_wire_rep rp = {.op = r->op, .req_id = r->req_id};
	int s = r->side;

	if (p == NULL) {
		if (ps.tab.n >= PS_MAX_PIPES) {
			return PS_FAIL(repp, r, QP_ELIMIT,
			    "the server holds %u pipes", (unsigned) ps.tab.n);
		}
		if ((p = calloc(1, sizeof(*p))) == NULL) {
			return PS_FAIL(repp, r, QP_ENOMEM, "out of memory");
		}
		snprintf(p->name, sizeof(p->name), "%s", r->name);
		p->oneway = (r->flags & QPI_PIPE_ONEWAY) != 0;
		p->node.key = qpi_hash_keyed(p->name, strlen(p->name));
		qpi_htab_insert(&ps.tab, &p->node);
	}
	if (s < 0) {
		s = p->side[0].state == SIDE_NEVER   ? 0
		    : p->side[1].state == SIDE_NEVER ? 1
		                                     : -1;
	}
	if (s < 0 || p->side[s].state != SIDE_NEVER) {
		return PS_FAIL(repp, r, QP_EBUSY,
		    s < 0 ? "pipe '%s': both sides are taken"
		          : "pipe '%s': side %d is taken",
		    r->name, s);
	}
	p->side[s].state = SIDE_OPEN;
	p->side[s].conn = conn;
	rp.side = s;
	rp.peer_open = p->side[1 - s].state == SIDE_OPEN;
	qps_log(QPS_LOG_DEBUG, "pipe '%s': side %d opened by %u", r->name, s,
	    conn);
	*repp = qps_rep_encode(&rp);
	return QPS_REPLY;
}

qps_handled
qps_pipe_handle(const qps_req *rq, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;
	uint32_t conn = (uint32_t) rq->c->node.key;
	ps_pipe *p = ps_find(r->name);
	int s = r->side;
	ps_side *sd;

	if (r->op == QPI_OP_PIPE_OPEN) {
		return ps_open(p, conn, r, repp);
	}
	/* Every other op acts on a side this connection holds. */
	if (p == NULL) {
		return PS_FAIL(repp, r, QP_ECLOSED,
		    "no pipe '%s' (closed, or never opened)", r->name);
	}
	if (p->side[s].state != SIDE_OPEN || p->side[s].conn != conn) {
		return PS_FAIL(repp, r, QP_ECLOSED,
		    "pipe '%s': this connection does not hold side %d",
		    r->name, s);
	}
	switch (r->op) {
	case QPI_OP_PIPE_SEND:
		sd = &p->side[1 - s];
		if (p->oneway && s == 0) {
			return PS_FAIL(repp, r, QP_EPERM,
			    "pipe '%s': side 0 of a one-way pipe only "
			    "receives",
			    r->name);
		}
		if (sd->state == SIDE_CLOSED) {
			return PS_FAIL(repp, r, QP_ECLOSED,
			    "pipe '%s': the other side closed", r->name);
		}
		if (sd->wl[PW_SEND].head != NULL
		    || (sd->qhead != NULL
		        && sd->qbytes + r->item.len > PS_BUF_MAX)) {
			if (r->timeout == 0) {
				return PS_FAIL(repp, r, QP_ETIMEDOUT,
				    "pipe '%s': its buffer is full", r->name);
			}
			return ps_park_or_refuse(rq, p, 1 - s, PW_SEND, repp);
		}
		if (!ps_enqueue(sd, &r->item)) {
			return PS_FAIL(repp, r, QP_ENOMEM,
			    "out of memory for a message of %zu bytes",
			    r->item.len);
		}
		*repp = qps_rep_ok(r);
		ps_dispatch(p, 1 - s);
		return QPS_REPLY;

	case QPI_OP_PIPE_RECV:
		sd = &p->side[s];
		if (p->oneway && s == 1) {
			return PS_FAIL(repp, r, QP_EPERM,
			    "pipe '%s': side 1 of a one-way pipe only sends",
			    r->name);
		}
		if (sd->qhead != NULL && sd->wl[PW_RECV].head == NULL) {
			*repp = ps_rep_take(sd, r);
			ps_dispatch(p, s); /* room for waiting sends */
			return QPS_REPLY;
		}
		if (sd->qhead == NULL && p->side[1 - s].state == SIDE_CLOSED) {
			return PS_FAIL(repp, r, QP_ECLOSED,
			    "pipe '%s': end of file (the other side closed)",
			    r->name);
		}
		if (r->timeout == 0) {
			return PS_FAIL(repp, r, QP_ETIMEDOUT,
			    "pipe '%s': no message", r->name);
		}
		return ps_park_or_refuse(rq, p, s, PW_RECV, repp);

	case QPI_OP_PIPE_POLL:
		if (ps_readable(p, s) || r->timeout == 0) {
			*repp = ps_rep_ready(r, ps_readable(p, s));
			return QPS_REPLY;
		}
		return ps_park_or_refuse(rq, p, s, PW_POLL, repp);

	case QPI_OP_PIPE_CLOSE:
		qps_log(
		    QPS_LOG_DEBUG, "pipe '%s': side %d closed", r->name, s);
		*repp = qps_rep_ok(r);
		ps_close_side(p, s);
		return QPS_REPLY;

	default:
		return PS_FAIL(repp, r, QP_ENOTSUP, "not a pipe op");
	}
}

/* Closes the sides of p that connection *arg held. */
static void
conn_gone_cb(qpi_hnode *n, void *arg)
{
	ps_pipe *p = (ps_pipe *) n;
	uint32_t conn = *(uint32_t *) arg;
	bool own0 = p->side[0].state == SIDE_OPEN && p->side[0].conn == conn;
	bool own1 = p->side[1].state == SIDE_OPEN && p->side[1].conn == conn;

	if (own0 || own1) {
		qps_log(QPS_LOG_DEBUG, "pipe '%s': closed with its connection",
		    p->name);
	}
	/* Closing the second side frees p: nothing after it. */
	if (own0) {
		ps_close_side(p, 0);
	}
	if (own1) {
		ps_close_side(p, 1);
	}
}

void
qps_pipes_conn_gone(uint32_t conn)
{
	qpi_htab_each(&ps.tab, conn_gone_cb, &conn);
}

/* Ends the requests parked on p: answered "shutting down" (drain), or
 * unanswered with p freed (fini: arg NULL). */
static void
end_waits_cb(qpi_hnode *n, void *arg)
{
	ps_pipe *p = (ps_pipe *) n;
	qps_wait *wt;

	for (int s = 0; s < 2; s++) {
		for (int k = 0; k < PW_KINDS; k++) {
			while ((wt = p->side[s].wl[k].head) != NULL) {
				qps_wait_finish(wt,
				    arg == NULL
				        ? NULL
				        : PS_ERR(&wt->r, QP_ECONNRESET,
				            "the server is shutting down"));
			}
		}
	}
	if (arg == NULL) {
		ps_remove(p);
	}
}

void
qps_pipes_drain(void)
{
	qpi_htab_each(&ps.tab, end_waits_cb, &ps);
}

void
qps_pipes_fini(void)
{
	qpi_htab_each(&ps.tab, end_waits_cb, NULL);
	qpi_htab_fini(&ps.tab);
}
