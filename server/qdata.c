/*
 * qdata.c - the queue data ops (PROTOCOL.md): put, put_many, get (with
 * the confirmations it carries), join, and complete (a task's lease acked
 * and its result put on another queue in one step, lib/store.h). A get takes
 * items under leases of its connection; a get on an empty queue, a put on a
 * full one, a join with tasks left park (wait.c) until their timeout, as do
 * they all while the queue's lock is held by another process; parked ones are
 * tried again, in order, whenever the queue changes.
 *
 * Locking: none of its own; everything runs under the ops lock.
 */
#include "qps.h"
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Items decoded on the stack before the heap is used. */
#define QD_STACK_ITEMS 16
/* qd_try_get: the connection holds its limit of leases (--max-leases). */
#define QD_CONN_FULL (-1)

/* Tries a get for r on q as connection c: QP_OK with *repp set (items
 * leased, at most c's room under --max-leases), QP_EEMPTY (nothing
 * taken), QP_ELIMIT (items are ready but every lease slot, or the lease
 * area, is taken: a blocking get waits for an ack or release to free
 * one), QD_CONN_FULL (c holds its limit of leases), QP_EBUSY, or another
 * error. */
static int
qd_try_get(qps_conn *c, qps_q *q, const qpi_wire_req *r, nng_msg **repp)
{
	qpi_wire_item stacki[QD_STACK_ITEMS], *items = stacki;
	qpi_shmq_got stackg[QD_STACK_ITEMS], *got = stackg;
	uint32_t want = r->max_items > 0 ? r->max_items : 1;
	uint32_t leases = qps_conn_lease_room(c);
	int64_t lease_ms
	    = (int64_t) (r->lease_ms != 0 ? r->lease_ms : q->lease_ms);
	int64_t expiry = 0; /* the latest of the leases taken */
	void *buf = NULL;
	size_t n = 0;
	int rv;

	if (leases == 0) {
		return QD_CONN_FULL;
	}
	want = want < leases ? want : leases;
	if (want > QD_STACK_ITEMS
	    && ((items = malloc(want * sizeof(*items))) == NULL
	        || (got = malloc(want * sizeof(*got))) == NULL)) {
		if (items != stacki) {
			free(items);
		}
		return QP_ENOMEM;
	}
	/* One batch from the store (one lock hold for shared memory). Beyond
	 * the first item, the reply stays within max_message bytes: an item
	 * that would pass it is not taken (it stays at the head for the next
	 * get). */
	rv = qps_q_rv(q,
	    qpi_store_get_many(q->st, c->owner, lease_ms, want,
	        (size_t) qps_limits.max_message, &buf, got, &n));
	if (rv == QP_OK) {
		int64_t soonest = INT64_MAX;
		for (size_t i = 0; i < n; i++) {
			int64_t e = got[i].lease.expiry_ms;
			soonest = e < soonest ? e : soonest;
			expiry = e > expiry ? e : expiry;
			items[i].data = (const uint8_t *) buf + got[i].off;
			items[i].len = got[i].len;
			items[i].lease_id = got[i].lease.id;
			items[i].deliveries = got[i].lease.deliveries;
		}
		qps_q_lease_due(q, soonest);
		qpi_wire_rep rp;
		rp = (qpi_wire_rep) {.op = r->op, .req_id = r->req_id};
		rp.items = items;
		rp.nitems = rp.items_cap = (uint32_t) n;
		*repp = qps_rep_encode(&rp);
		rv = *repp == NULL ? QP_ENOMEM : QP_OK;
		bool said = rv == QP_OK && qps_rep_status(*repp) == QP_OK;
		qps_conn_leased(c, q);
		for (size_t i = 0; i < n; i++) {
			if (!said) {
				/* The items cannot be said: give them back
				 * rather than hold them for a reply never
				 * sent (a held lock: their expiry does). */
				qps_q_rv(q,
				    qpi_store_release(
				        q->st, items[i].lease_id));
			} else {
				qps_conn_lease_add(c, q, items[i].lease_id,
				    expiry, r->lease_mode == QPI_LEASE_WORK);
			}
		}
		free(buf);
	}
	if (items != stacki) {
		free(items);
		free(got);
	}
	return rv;
}

/* Puts r's item(s): QP_OK, QP_EFULL (nothing put), QP_EBUSY, or another
 * error. cl != NULL: the request is deduplicated; its items go in tagged
 * with its client id and seq (base: items of it put before, by an
 * earlier server), so that a server restarted after this put knows. */
static int
qd_try_put(qps_q *q, const qpi_wire_req *r, qps_client *cl, uint32_t base)
{
	qpi_shmq_tag tag, *t = NULL;
	uint64_t ticket = 0, *tp = qps_sync_may_defer(q->st) ? &ticket : NULL;
	int rv;

	if (cl != NULL) {
		memcpy(tag.client, r->client_id, sizeof(tag.client));
		tag.seq = r->seq;
		tag.base = base;
		tag.n = base + (r->op == QPI_OP_PUT ? 1 : r->nitems);
		tag.done = 0;
		t = &tag;
	}
	rv = r->op == QPI_OP_PUT
	    ? qpi_store_put(q->st, r->item.data, r->item.len, t, tp)
	    : qpi_store_put_many(q->st, r->items, r->nitems, t, tp);
	if (rv == QP_OK) {
		qps_sync_note(q->st, ticket);
	}
	return qps_q_rv(q, rv);
}

static nng_msg *
qd_put_reply(const qpi_wire_req *r, qps_q *q, int rv)
{
	if (rv == QP_OK) {
		return qps_rep_ok(r);
	}
	if (rv == QP_EBUSY) {
		return qps_rep_error(r->op, r->req_id, QP_EFULL,
		    "queue '%s' " QPS_LOCKED ": not put", q->name);
	}
	if (rv == QP_EFULL) {
		return qps_rep_error(
		    r->op, r->req_id, rv, "queue '%s' is full", q->name);
	}
	return qps_rep_error(r->op, r->req_id, rv, "put to '%s': %s", q->name,
	    qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
}

/* The reply to a get that cannot lease, as what it is: c at its limit
 * of leases, or q's lease room taken (never "empty"). */
static nng_msg *
qd_lease_refusal(const qpi_wire_req *r, qps_q *q, int rv, int64_t ms)
{
	uint64_t n = 0;

	if (rv == QD_CONN_FULL) {
		return qps_rep_error(r->op, r->req_id, QP_ELIMIT,
		    "this connection holds its limit of %u leased items "
		    "(--max-leases): ack or release some first",
		    (unsigned) qps_cfg->conn_leases);
	}
	if (qps_q_rv(q, qpi_store_qsize(q->st, &n)) != QP_OK) {
		n = 0;
	}
	return qps_rep_error(r->op, r->req_id, QP_ELIMIT,
	    "queue '%s' has %llu items ready, but none could be leased%s: "
	    "every lease slot is held by consumers that have not confirmed "
	    "theirs",
	    q->name, (unsigned long long) n, ms > 0 ? " in time" : "");
}

/* A parked get's timeout: items ready but no lease to be had is said as
 * such, else the queue's usual answer (empty). */
static void
get_expired(qps_wait *wt)
{
	uint64_t n = 0;

	if (wt->why == QD_CONN_FULL
	    || (!wt->q->busy
	        && qps_q_rv(wt->q, qpi_store_qsize(wt->q->st, &n)) == QP_OK
	        && n > 0)) {
		qps_wait_finish(wt,
		    qd_lease_refusal(&wt->r, wt->q, wt->why, wt->r.timeout));
		return;
	}
	qps_wait_expire_default(wt);
}

static qps_retry_res
get_retry(qps_wait *wt, nng_msg **repp)
{
	int rv = qd_try_get(wt->conn, wt->q, &wt->r, repp);

	wt->why = rv;
	if (rv == QP_EBUSY) {
		return QPS_BLOCKED;
	}
	if (rv == QP_EEMPTY || rv == QP_ELIMIT || rv == QD_CONN_FULL) {
		return QPS_WAITING;
	}
	if (rv != QP_OK) {
		*repp = qps_rep_error(wt->r.op, wt->r.req_id, rv,
		    "get from '%s': %s", wt->q->name,
		    qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
	}
	return QPS_DONE;
}

static qps_retry_res
put_retry(qps_wait *wt, nng_msg **repp)
{
	int rv = qd_try_put(wt->q, &wt->r, wt->cl, wt->base);

	if (rv == QP_EBUSY) {
		return QPS_BLOCKED;
	}
	if (rv == QP_EFULL) {
		return QPS_WAITING;
	}
	*repp = qd_put_reply(&wt->r, wt->q, rv);
	return QPS_DONE;
}

/* True when every item put has been marked done (false while q's lock is
 * held: q->busy says so). */
static bool
qd_joined(qps_q *q)
{
	qp_queue_stats st;

	return !q->busy && qps_q_rv(q, qpi_store_stat(q->st, &st)) == QP_OK
	    && st.unfinished == 0;
}

static qps_retry_res
join_retry(qps_wait *wt, nng_msg **repp)
{
	if (!qd_joined(wt->q)) {
		return wt->q->busy ? QPS_BLOCKED : QPS_WAITING;
	}
	*repp = qps_rep_ok(&wt->r);
	return QPS_DONE;
}

/* Parks a get, put or join, or says why it cannot. */
static qps_handled
qd_park(const qps_req *rq, qps_q *q, int kind,
    qps_retry_res (*retry)(qps_wait *wt, nng_msg **repp), nng_msg **repp)
{
	qps_wait *wt = qps_wait_park(rq, q, kind, rq->r->timeout, retry);

	if (wt != NULL) {
		if (kind == QPS_WAIT_GET) {
			wt->expired = get_expired;
		}
		qps_wait_dispatch(q);
		return QPS_PARKED;
	}
	*repp = qps_wait_refusal(rq->r);
	return QPS_REPLY;
}

static qps_handled
qd_put(const qps_req *rq, qps_q *q, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;
	int rv;

	/* Parked putters go first (FIFO). */
	qps_wait_dispatch(q);
	qps_sync_defer(true); /* group commit: see qps_ops_handle */
	rv = q->busy ? QP_EBUSY
	    : q->wl[QPS_WAIT_PUT].head != NULL
	    ? QP_EFULL
	    : qd_try_put(q, r, rq->cl, rq->base);
	qps_sync_defer(false);
	if ((rv == QP_EFULL || rv == QP_EBUSY) && r->timeout != 0) {
		return qd_park(rq, q, QPS_WAIT_PUT, put_retry, repp);
	}
	*repp = qd_put_reply(r, q, rv);
	if (rv == QP_OK) {
		qps_wait_dispatch(q);
	}
	return QPS_REPLY;
}

static qps_handled
qd_get(const qps_req *rq, qps_q *q, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;
	int rv;

	qps_lease_ack_ids(rq->c, q, r);
	qps_wait_dispatch(q);
	rv = q->busy                           ? QP_EBUSY
	    : q->wl[QPS_WAIT_GET].head != NULL ? QP_EEMPTY
	                                       : qd_try_get(rq->c, q, r, repp);
	if ((rv == QP_EEMPTY || rv == QP_ELIMIT || rv == QP_EBUSY
	        || rv == QD_CONN_FULL)
	    && r->timeout != 0) {
		return qd_park(rq, q, QPS_WAIT_GET, get_retry, repp);
	}
	if (rv == QP_ELIMIT || rv == QD_CONN_FULL) {
		*repp = qd_lease_refusal(r, q, rv, 0);
	} else if (rv == QP_EBUSY) {
		*repp = qps_rep_error(r->op, r->req_id, QP_EEMPTY,
		    "queue '%s' " QPS_LOCKED, q->name);
	} else if (rv == QP_EEMPTY) {
		*repp = qps_rep_error(r->op, r->req_id, QP_EEMPTY,
		    "queue '%s' is empty", q->name);
	} else if (rv != QP_OK) {
		*repp = qps_rep_error(r->op, r->req_id, rv,
		    "get from '%s': %s", q->name,
		    qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
	}
	/* Acks and leases free room: putters may go on. */
	qps_wait_dispatch(q);
	return QPS_REPLY;
}

static qps_handled
qd_join(const qps_req *rq, qps_q *q, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;

	if (qd_joined(q)) {
		*repp = qps_rep_ok(r);
		return QPS_REPLY;
	}
	if (r->timeout == 0) {
		*repp = qps_rep_error(r->op, r->req_id, QP_ETIMEDOUT,
		    "queue '%s' %s", q->name,
		    q->busy ? QPS_LOCKED : "has unfinished tasks");
		return QPS_REPLY;
	}
	return qd_park(rq, q, QPS_WAIT_JOIN, join_retry, repp);
}

/* ---- complete: a task's lease acked and its result put, one step ---- */

/* The two queues of a complete, opened (a restarted server may not have
 * them yet): QP_OK, else *repp. */
static int
qd_complete_queues(
    const qpi_wire_req *r, qps_q **tp, qps_q **rp, nng_msg **repp)
{
	if (strcmp(r->name, r->results) == 0) {
		*repp = qps_rep_error(r->op, r->req_id, QP_EINVAL,
		    "complete: the results queue '%s' is the tasks queue",
		    r->name);
		return QP_EINVAL;
	}
	if (qps_admin_open_for(r, false, tp, repp) != QP_OK) {
		return QP_ENOENT;
	}
	int rv = qps_q_open(r->results, false, rp);
	if (rv != QP_OK) {
		*repp = qps_rep_error(r->op, r->req_id, rv,
		    "complete: results queue '%s': %s", r->results,
		    qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
	}
	return rv;
}

/* Tries r's completion on t and res: QP_OK, QP_EBUSY (*busyp: the queue
 * whose lock is held, marked busy), or another error, nothing done. The
 * result is tagged with the request's client id and seq when it is
 * deduplicated, so that a restarted server answers its repeat. */
static int
qd_try_complete(qps_conn *c, qps_q *t, qps_q *res, const qpi_wire_req *r,
    qps_client *cl, qps_q **busyp)
{
	qpi_shmq_tag tag, *tg = NULL;
	char lbl[QP_NAME_MAX + 16];
	int rv;

	*busyp = NULL;
	if (t->busy || res->busy) {
		*busyp = t->busy ? t : res;
		return QP_EBUSY;
	}
	if (cl != NULL) {
		memset(&tag, 0, sizeof(tag));
		memcpy(tag.client, r->client_id, sizeof(tag.client));
		tag.seq = r->seq;
		tag.n = 1;
		tg = &tag;
	}
	rv = qpi_store_complete(
	    t->st, r->lease_id, res->st, r->item.data, r->item.len, tg);
	if (rv == QP_EBUSY) {
		/* The message names the queue whose lock is held. */
		snprintf(lbl, sizeof(lbl), "shm://%s:", t->name);
		*busyp = strncmp(qp_errmsg(), lbl, strlen(lbl)) == 0 ? t : res;
		return qps_q_rv(*busyp, rv);
	}
	if (rv == QP_OK) {
		qps_conn_work_take(c, t, r->lease_id);
	}
	return rv;
}

static nng_msg *
qd_complete_reply(const qpi_wire_req *r, int rv)
{
	if (rv == QP_OK) {
		return qps_rep_ok(r);
	}
	if (rv == QP_EFULL) {
		return qps_rep_error(r->op, r->req_id, rv,
		    "results queue '%s' is full", r->results);
	}
	if (rv == QP_ENOENT) {
		return qps_rep_error(r->op, r->req_id, rv,
		    "lease %llu on '%s' is not held (expired, released or "
		    "acked): nothing put, the task runs again",
		    (unsigned long long) r->lease_id, r->name);
	}
	return qps_rep_error(r->op, r->req_id, rv, "complete on '%s': %s",
	    r->name, qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
}

static void
qd_complete_after(qps_q *t, qps_q *res)
{
	qps_wait_dispatch(res); /* a result for its getters */
	qps_wait_dispatch(t); /* an ack frees room */
}

static qps_retry_res
complete_retry(qps_wait *wt, nng_msg **repp)
{
	qps_q *t, *res, *busy;
	int rv;

	if (qps_q_open(wt->r.name, false, &t) != QP_OK
	    || qps_q_open(wt->r.results, false, &res) != QP_OK) {
		*repp = qd_complete_reply(&wt->r, QP_ENOENT);
		return QPS_DONE;
	}
	rv = qd_try_complete(wt->conn, t, res, &wt->r, wt->cl, &busy);
	if (rv == QP_EBUSY) {
		return busy == wt->q ? QPS_BLOCKED : QPS_WAITING;
	}
	if (rv == QP_EFULL) {
		return QPS_WAITING;
	}
	*repp = qd_complete_reply(&wt->r, rv);
	return QPS_DONE;
}

static qps_handled
qd_complete(const qps_req *rq, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;
	qps_q *t, *res, *busy;
	int rv;

	if (qd_complete_queues(r, &t, &res, repp) != QP_OK) {
		return QPS_REPLY;
	}
	qps_wait_dispatch(res); /* parked putters go first (FIFO) */
	rv = res->wl[QPS_WAIT_PUT].head != NULL
	    ? QP_EFULL
	    : qd_try_complete(rq->c, t, res, r, rq->cl, &busy);
	if (rv == QP_EBUSY && busy == t) {
		return qps_wait_busy(rq, t, 0, 0, complete_retry, repp);
	}
	if ((rv == QP_EFULL || rv == QP_EBUSY) && r->timeout != 0) {
		return qd_park(rq, res, QPS_WAIT_PUT, complete_retry, repp);
	}
	*repp = rv == QP_EBUSY ? qd_complete_reply(r, QP_EFULL)
	                       : qd_complete_reply(r, rv);
	if (rv == QP_OK) {
		qd_complete_after(t, res);
	}
	return QPS_REPLY;
}

qps_handled
qps_qdata_handle(const qps_req *rq, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;
	bool put = r->op == QPI_OP_PUT || r->op == QPI_OP_PUT_MANY;
	qps_q *q;

	if (r->op == QPI_OP_COMPLETE) {
		return qd_complete(rq, repp);
	}

	if (qps_admin_open_for(
	        r, put && (r->flags & QPI_PUT_CREATE) != 0, &q, repp)
	    != QP_OK) {
		return QPS_REPLY;
	}
	if (put) {
		return qd_put(rq, q, repp);
	}
	return r->op == QPI_OP_GET ? qd_get(rq, q, repp)
	                           : qd_join(rq, q, repp);
}
