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

/* Lease ids confirmed per lock hold. */
#define LEASE_CHUNK 256

/* Confirms the lease ids of c on q from *next on, a chunk per lock hold
 * (qpi_store_ack_many); a WORK lease's ack is also its task_done. Those
 * not held gather at miss[0 .. *nmiss) (miss NULL: not kept; it may be
 * ids itself). QP_EBUSY: stopped at *next, q's lock is held. */
static int
lease_ack(qps_conn *c, qps_q *q, const uint64_t *ids, uint32_t nids,
    uint64_t *next, uint64_t *miss, uint32_t *nmiss)
{
	int rcs[LEASE_CHUNK];

	while (*next < nids) {
		uint32_t n = nids - *next < LEASE_CHUNK
		    ? nids - (uint32_t) *next
		    : LEASE_CHUNK;
		const uint64_t *chunk = ids + *next;
		if (q->busy) {
			return QP_EBUSY;
		}
		qpi_store_ack_many(q->st, chunk, n, rcs);
		for (uint32_t i = 0; i < n; i++, (*next)++) {
			uint64_t id = chunk[i];
			int rv = qps_q_rv(q, rcs[i]), d;
			if (rv == QP_EBUSY) {
				return rv;
			}
			if (qps_conn_work_take(c, q, id) && rv == QP_OK
			    && (d = qps_q_rv(q, qpi_store_task_done(q->st)))
			        != QP_OK) {
				if (d == QP_EBUSY) {
					qps_q_ack_later(q, 0, true);
				} else {
					qps_log(QPS_LOG_WARN,
					    "queue '%s': task_done for acked "
					    "lease %llu found no unfinished "
					    "task",
					    q->name, (unsigned long long) id);
				}
			}
			if (rv != QP_OK && miss != NULL) {
				miss[(*nmiss)++] = id;
			}
		}
	}
	return QP_OK;
}

void
qps_lease_ack_ids(qps_conn *c, qps_q *q, const qpi_wire_req *r)
{
	uint64_t next = 0;

	if (lease_ack(c, q, r->ids, r->nids, &next, NULL, NULL) == QP_EBUSY) {
		for (; next < r->nids; next++) {
			qps_q_ack_later(q, r->ids[next],
			    qps_conn_work_take(c, q, r->ids[next]));
		}
	}
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

/* The reply to an ack or touch: the first nmiss of r's ids failed. */
static int
ids_reply(qpi_wire_req *r, uint32_t nmiss, nng_msg **repp)
{
	qpi_wire_rep rp = {.op = r->op, .req_id = r->req_id};

	rp.ids = r->ids;
	rp.nids = nmiss;
	rp.ids_cap = r->nids;
	*repp = qps_rep_encode(&rp);
	qpi_err_clear();
	return QP_OK;
}

/* Touches r's lease ids from *next on; those it fails on gather at the
 * front of r->ids (*nmiss of them). QP_EBUSY: stopped at *next, q's lock
 * is held. Else QP_OK, *repp listing them as missing. */
static int
ids_touch(qps_conn *c, qps_q *q, qpi_wire_req *r, uint64_t *next,
    uint32_t *nmiss, nng_msg **repp)
{
	for (; *next < r->nids; (*next)++) {
		uint64_t id = r->ids[*next];
		int rv = touch_one(c, q, r, id);
		if (rv == QP_EBUSY) {
			return rv;
		}
		if (rv != QP_OK) {
			r->ids[(*nmiss)++] = id;
		}
	}
	return ids_reply(r, *nmiss, repp);
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
		if (lease_ack(c, q, r->ids, r->nids, next, r->ids, nmiss)
		    == QP_EBUSY) {
			return QP_EBUSY;
		}
		return ids_reply(r, *nmiss, repp);
	case QPI_OP_TOUCH:
		return ids_touch(c, q, r, next, nmiss, repp);
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
