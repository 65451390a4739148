/*
 * wait.c - parked requests: a get on an empty queue, a put on a full
 * one, a join with tasks left, any op that met the queue's lock held by
 * another process, a pipe's receive, send or poll. A parked request keeps
 * its worker and its request, sits in a FIFO (its queue's of its kind, or
 * its pipe side's) and its connection's list, has a timer for its
 * timeout, and costs no thread. A queue's know how to try themselves
 * again (their handler's retry): whatever changes a queue calls
 * qps_wait_dispatch, which tries its parked requests in order. A
 * connection parks at most --max-waiting requests holding at most
 * --max-waiting-bytes (its first one whatever its size), so that one
 * client pipelining blocking gets or big puts never fills the server's
 * room for everyone's (link.c's limit of parked requests in all).
 *
 * Locking: none of its own; everything runs under the ops lock (timers
 * fire with it held).
 */
#include "qps.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Why the last qps_wait_add refused (under the ops lock). */
static char wait_why[160];

static void
wait_unlink(qps_wait *wt)
{
	qps_wlist *l = wt->list;
	qps_q *q = wt->q;

	*(wt->lprev != NULL ? &wt->lprev->lnext : &l->head) = wt->lnext;
	*(wt->lnext != NULL ? &wt->lnext->lprev : &l->tail) = wt->lprev;
	l->n--;
	*(wt->cprev != NULL ? &wt->cprev->cnext : &wt->conn->waits)
	    = wt->cnext;
	if (wt->cnext != NULL) {
		wt->cnext->cprev = wt->cprev;
	}
	wt->conn->nwaits--;
	wt->conn->wait_bytes -= wt->bytes;
	qps_timer_cancel(&wt->timer);
	if (q != NULL
	    && q->wl[0].n + q->wl[1].n + q->wl[2].n + q->wl[3].n == 0) {
		qps_watch_set(&q->watch, false, q->name);
	}
}

void
qps_wait_finish(qps_wait *wt, nng_msg *rep)
{
	wait_unlink(wt);
	if (wt->cl != NULL) {
		qps_dedup_reply(wt->cl, wt->seq, wt->r.op, rep);
	}
	qps_worker_reply(wt->w, rep);
	free(wt->r.items);
	free(wt->r.ids);
	nng_msg_free(wt->req);
	free(wt);
}

static void
wait_timeout(qps_timer *t)
{
	((qps_wait *) t)->expired((qps_wait *) t);
}

void
qps_wait_expire_default(qps_wait *wt)
{
	static const int st[QPS_NWAIT]
	    = {QP_EBUSY, QP_EEMPTY, QP_EFULL, QP_ETIMEDOUT};
	static const char *const what[QPS_NWAIT]
	    = {"", "is empty", "is full", "still has unfinished tasks"};
	const qpi_wire_req *r = &wt->r;

	if (wt->q->busy || wt->kind == QPS_WAIT_OP) {
		qps_wait_finish(wt,
		    qps_rep_error(r->op, r->req_id, st[wt->kind],
		        "queue '%s' " QPS_LOCKED ": %s not done after %lld ms",
		        wt->q->name, qpi_wire_op_name(r->op),
		        (long long) (wt->kind == QPS_WAIT_OP ? QPS_BUSY_WAIT_MS
		                                             : r->timeout)));
		return;
	}
	qps_wait_finish(wt,
	    qps_rep_error(r->op, r->req_id, st[wt->kind],
	        "queue '%s' %s after %lld ms", wt->q->name, what[wt->kind],
	        (long long) r->timeout));
}

qps_wait *
qps_wait_add(const qps_req *rq, qps_wlist *list, int kind, int64_t tmo,
    void (*expired)(qps_wait *wt))
{
	const qpi_wire_req *r = rq->r;
	qps_conn *c = rq->c;
	size_t bytes = rq->req != NULL ? nng_msg_len(rq->req) : 0;
	uint32_t ni = r->op == QPI_OP_PUT_MANY ? r->nitems : 0;
	uint32_t nd = kind == QPS_WAIT_OP ? r->nids : 0;
	qps_wait *wt;

	if (c->nwaits >= qps_cfg->conn_waits) {
		snprintf(wait_why, sizeof(wait_why),
		    "this connection holds its limit of %u waiting requests "
		    "(--max-waiting)",
		    (unsigned) qps_cfg->conn_waits);
		return NULL;
	}
	if (c->wait_bytes > 0
	    && c->wait_bytes + bytes > qps_cfg->conn_wait_bytes) {
		snprintf(wait_why, sizeof(wait_why),
		    "this connection's waiting requests hold %llu bytes, "
		    "its limit is %llu (--max-waiting-bytes)",
		    (unsigned long long) c->wait_bytes,
		    (unsigned long long) qps_cfg->conn_wait_bytes);
		return NULL;
	}
	snprintf(wait_why, sizeof(wait_why),
	    "the server holds too many waiting requests");
	if ((wt = calloc(1, sizeof(*wt))) == NULL) {
		return NULL;
	}
	/* The caller's arrays may be on its stack: keep our own copies (the
	 * items still point into req, which we keep). A get's acks were
	 * applied. */
	wt->r = *r;
	wt->r.items = ni > 0 ? malloc(ni * sizeof(*r->items)) : NULL;
	wt->r.items_cap = ni;
	wt->r.ids = nd > 0 ? malloc(nd * sizeof(*r->ids)) : NULL;
	wt->r.nids = wt->r.ids_cap = nd;
	qps_timer_init(&wt->timer, wait_timeout);
	if ((ni > 0 && wt->r.items == NULL) || (nd > 0 && wt->r.ids == NULL)
	    || (tmo > 0 && !qps_timer_arm(&wt->timer, qpi_deadline_ns(tmo)))
	    || !qps_worker_park(rq->w)) {
		qps_timer_cancel(&wt->timer);
		free(wt->r.items);
		free(wt->r.ids);
		free(wt);
		return NULL;
	}
	if (ni > 0) {
		memcpy(wt->r.items, r->items, ni * sizeof(*r->items));
	}
	if (nd > 0) {
		memcpy(wt->r.ids, r->ids, nd * sizeof(*r->ids));
	}
	wt->kind = kind;
	wt->w = rq->w;
	wt->conn = c;
	wt->list = list;
	wt->expired = expired != NULL ? expired : qps_wait_expire_default;
	wt->req = rq->req;
	wt->cl = rq->cl;
	wt->seq = r->seq;
	wt->base = rq->base;
	wt->bytes = bytes;
	c->nwaits++;
	c->wait_bytes += bytes;
	wt->lprev = list->tail;
	*(list->tail != NULL ? &list->tail->lnext : &list->head) = wt;
	list->tail = wt;
	list->n++;
	wt->cnext = c->waits;
	if (c->waits != NULL) {
		c->waits->cprev = wt;
	}
	c->waits = wt;
	return wt;
}

nng_msg *
qps_wait_refusal(const qpi_wire_req *r)
{
	return qps_rep_error(r->op, r->req_id, QP_ELIMIT, "%s", wait_why);
}

qps_wait *
qps_wait_park(const qps_req *rq, qps_q *q, int kind, int64_t tmo,
    qps_retry_res (*retry)(qps_wait *wt, nng_msg **repp))
{
	qps_wait *wt = qps_wait_add(rq, &q->wl[kind], kind, tmo, NULL);

	if (wt != NULL) {
		wt->q = q;
		wt->retry = retry;
		if (rq->cl != NULL) {
			qps_dedup_park(rq->cl, rq->r->seq, wt);
		}
		qps_watch_set(&q->watch, true, q->name);
	}
	return wt;
}

qps_handled
qps_wait_busy(const qps_req *rq, qps_q *q, uint64_t next, uint32_t nmiss,
    qps_retry_res (*retry)(qps_wait *wt, nng_msg **repp), nng_msg **repp)
{
	qps_wait *wt
	    = qps_wait_park(rq, q, QPS_WAIT_OP, QPS_BUSY_WAIT_MS, retry);

	if (wt == NULL) {
		*repp = qps_rep_error(rq->r->op, rq->r->req_id, QP_EBUSY,
		    "queue '%s' " QPS_LOCKED " (and this request cannot wait: "
		    "%s)",
		    q->name, wait_why);
		return QPS_REPLY;
	}
	wt->next = next;
	wt->nmiss = nmiss;
	return QPS_PARKED;
}

void
qps_wait_dispatch(qps_q *q)
{
	bool progress = true;

	while (progress && !q->busy) {
		progress = false;
		for (int k = 0; k < QPS_NWAIT; k++) {
			while (q->wl[k].head != NULL) {
				qps_wait *wt = q->wl[k].head;
				nng_msg *rep = NULL;
				qps_retry_res res = wt->retry(wt, &rep);
				if (res == QPS_BLOCKED) {
					return;
				}
				if (res == QPS_WAITING) {
					break;
				}
				qps_wait_finish(wt, rep);
				progress = true;
			}
		}
	}
}

void
qps_wait_fail_all(qps_q *q, int status, const char *why)
{
	for (int k = 0; k < QPS_NWAIT; k++) {
		while (q->wl[k].head != NULL) {
			qps_wait *wt = q->wl[k].head;
			qps_wait_finish(wt,
			    qps_rep_error(wt->r.op, wt->r.req_id, status,
			        "queue '%s' %s", q->name, why));
		}
	}
}
