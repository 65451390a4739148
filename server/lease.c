/*
 * lease.c - the lease ops (PROTOCOL.md): ack confirms leased items, release
 * gives one back (after a delay), touch extends a connection's WORK
 * leases, task_done counts finished tasks; a WORK lease's ack is also its
 * task_done. An op that meets its queue's lock held by another process
 * parks (qps_wait_busy) and goes on from where it stopped.
 *
 * Locking: none of its own; everything runs under the ops lock.
 */
#include "qps.h"
#include "store.h"

#include <string.h>

/* Confirms one lease of c: a WORK lease's ack is also its task_done.
 * QP_EBUSY: q's lock is held, nothing done. */
static int
lease_ack(qps_conn *c, qps_q *q, uint64_t lease_id)
{
	int rv = qps_q_rv(q, qpi_store_ack(q->st, lease_id));

	if (rv == QP_EBUSY || !qps_conn_work_take(c, q, lease_id)
	    || rv != QP_OK) {
		return rv;
	}
	int d = qps_q_rv(q, qpi_store_task_done(q->st));
	if (d == QP_EBUSY) {
		qps_q_ack_later(q, 0, true); /* its task_done, later */
	} else if (d != QP_OK) {
		qps_log(QPS_LOG_WARN,
		    "queue '%s': task_done for acked lease %llu found no "
		    "unfinished task",
		    q->name, (unsigned long long) lease_id);
	}
	return rv;
}

void
qps_lease_ack_ids(qps_conn *c, qps_q *q, const qpi_wire_req *r)
{
	for (uint32_t i = 0; i < r->nids; i++) {
		if (q->busy || lease_ack(c, q, r->ids[i]) == QP_EBUSY) {
			qps_q_ack_later(
			    q, r->ids[i], qps_conn_work_take(c, q, r->ids[i]));
		}
	}
}

static int
ack_one(qps_conn *c, qps_q *q, const qpi_wire_req *r, uint64_t id)
{
	(void) r;
	return lease_ack(c, q, id);
}

/* Only the WORK leases of this connection on q are renewed; any other id
 * is missing. */
static int
touch_one(qps_conn *c, qps_q *q, const qpi_wire_req *r, uint64_t id)
{
	uint64_t ms = r->lease_ms != 0 ? r->lease_ms : q->lease_ms;
	int rv;

	if (!qps_conn_work_holds(c, q, id)) {
		return QP_ENOENT;
	}
	rv = qps_q_rv(q, qpi_store_renew(q->st, id, (int64_t) ms));
	if (rv == QP_OK) {
		/* An earlier firing finds nothing due and re-arms for the
		 * next expiry; a later one is brought forward. */
		qps_q_lease_due(q, qpi_now_ms() + (int64_t) ms);
		qps_conn_lease_renew(c, q, id, qpi_now_ms() + (int64_t) ms);
	}
	return rv;
}

/* Applies each to r's lease ids from *next on; those it fails on gather
 * at the front of r->ids (*nmiss of them). QP_EBUSY: stopped at *next,
 * q's lock is held. Else QP_OK, *repp listing them as missing. */
static int
ids_apply(qps_conn *c, qps_q *q, qpi_wire_req *r, uint64_t *next,
    uint32_t *nmiss, nng_msg **repp,
    int (*each)(qps_conn *c, qps_q *q, const qpi_wire_req *r, uint64_t id))
{
	qpi_wire_rep rp;

	for (; *next < r->nids; (*next)++) {
		uint64_t id = r->ids[*next];
		int rv = each(c, q, r, id);
		if (rv == QP_EBUSY) {
			return rv;
		}
		if (rv != QP_OK) {
			r->ids[(*nmiss)++] = id;
		}
	}
	rp = (qpi_wire_rep) {.op = r->op, .req_id = r->req_id};
	rp.ids = r->ids;
	rp.nids = *nmiss;
	rp.ids_cap = r->nids;
	*repp = qps_rep_encode(&rp);
	qpi_err_clear();
	return QP_OK;
}

static int
lease_release(qps_q *q, const qpi_wire_req *r)
{
	int rv;

	if (r->delay_ms == 0) {
		return qps_q_rv(q, qpi_store_release(q->st, r->lease_id));
	}
	/* Held a while longer, then its expiry gives it back. */
	rv = qps_q_rv(
	    q, qpi_store_renew(q->st, r->lease_id, (int64_t) r->delay_ms));
	if (rv == QP_OK) {
		qps_q_lease_due(q, qpi_now_ms() + (int64_t) r->delay_ms);
	}
	return rv;
}

/* Applies r on q for c, from *next on: QP_EBUSY when q's lock is held
 * (nothing more done), else QP_OK with *repp. */
static int
lease_now(qps_conn *c, qps_q *q, qpi_wire_req *r, uint64_t *next,
    uint32_t *nmiss, nng_msg **repp)
{
	int rv = QP_OK;

	if (q->busy) {
		return QP_EBUSY;
	}
	switch (r->op) {
	case QPI_OP_ACK:
		return ids_apply(c, q, r, next, nmiss, repp, ack_one);
	case QPI_OP_TOUCH:
		return ids_apply(c, q, r, next, nmiss, repp, touch_one);
	case QPI_OP_RELEASE:
		if ((rv = lease_release(q, r)) == QP_EBUSY) {
			return rv;
		}
		qps_conn_work_take(c, q, r->lease_id);
		*repp = rv == QP_OK
		    ? qps_rep_ok(r)
		    : qps_rep_error(r->op, r->req_id, rv,
		        "lease %llu on '%s' is not held (expired, released "
		        "or acked)",
		        (unsigned long long) r->lease_id, q->name);
		return QP_OK;
	default: /* QPI_OP_TASK_DONE */
		for (; *next < r->count && rv == QP_OK; (*next)++) {
			rv = qps_q_rv(q, qpi_store_task_done(q->st));
			if (rv == QP_EBUSY) {
				return rv;
			}
		}
		*repp = rv == QP_OK ? qps_rep_ok(r)
		                    : qps_rep_error(r->op, r->req_id, rv,
		                        "task_done() on '%s' called more "
		                        "times than items were put",
		                        q->name);
		return QP_OK;
	}
}

static qps_retry_res
lease_retry(qps_wait *wt, nng_msg **repp)
{
	return lease_now(wt->conn, wt->q, &wt->r, &wt->next, &wt->nmiss, repp)
	        == QP_EBUSY
	    ? QPS_BLOCKED
	    : QPS_DONE;
}

qps_handled
qps_lease_handle(const qps_req *rq, nng_msg **repp)
{
	uint64_t next = 0;
	uint32_t nmiss = 0;
	qps_q *q;

	if (qps_admin_open_for(rq->r, false, &q, repp) != QP_OK) {
		return QPS_REPLY;
	}
	if (lease_now(rq->c, q, rq->r, &next, &nmiss, repp) == QP_EBUSY) {
		return qps_wait_busy(rq, q, next, nmiss, lease_retry, repp);
	}
	qps_wait_dispatch(q); /* acks and releases free room */
	return QPS_REPLY;
}
