/*
 * ops.c - qpiped's request layer: decodes each request (proto/wire.h),
 * applies it to the hosted queues, and answers (proto/PROTOCOL.md).
 * Requests that must wait (a get on an empty queue, a put on a full one, a
 * join) are parked: a qps_wait keeps the worker and the request, sits in
 * its queue's FIFO and its connection's list, and has a timer for its
 * timeout. Whatever changes a queue (a request here, another process
 * through the watcher, a lease expiry) runs ops_dispatch on it, which
 * serves its parked requests in order.
 *
 * Connections are known by nng pipe id. Their leases carry an owner token
 * made of this server's pid and the pipe id, so that a connection that
 * drops gives its items back at once. A connection also remembers which of
 * its leases are WORK leases, whose ack counts as task_done and which
 * touch may renew (no other lease). Mutating
 * requests carry (client id, seq) and go through dedup.c, so that a
 * request sent again is applied once.
 *
 * A queue whose shared-memory lock another process holds (stopped or
 * slow: hosted.c gives up after QPS_LOCK_BUDGET_NS and marks it busy)
 * delays only its own requests: they park, without trying, until its
 * probe finds the lock free; gets, puts and joins wait their own timeout,
 * other ops (QPS_WAIT_OP) at most QPS_BUSY_WAIT_MS, then get QP_EBUSY.
 *
 * Locking: one mutex (ops.mu) guards everything here, in dedup.c and in
 * hosted.c, and the timer heap: the timer thread and the watchers take it
 * too. Under it, a queue's lock is only tried (QPS_LOCK_BUDGET_NS), never
 * waited for. Replies are handed to nng (qps_worker_reply) with it held:
 * nng_ctx_send only queues the send, its callback runs later on another
 * thread.
 */
#include "auth.h"
#include "qps.h"
#include "shmq.h"
#include "wire.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* Pipe ids seen leaving before their first request was handled. */
#define OPS_TOMBSTONES 256
/* A connection this far past --max-connections is closed at once. */
#define OPS_HARD_EXTRA 64
/* Items, lease ids decoded on the stack before the heap is used. */
#define OPS_STACK_ITEMS 16

/* A WORK lease held by a connection: its ack is also a task_done. */
typedef struct ops_work {
	qps_hnode node; /* key: lease id */
	qps_q *q;
} ops_work;

typedef struct ops_conn {
	qps_hnode node; /* key: pipe id */
	uint64_t owner; /* lease owner token */
	bool over_limit;
	qpi_auth_server auth; /* hello/auth state; auth.ok: authenticated */
	bool told_unauth; /* a request before auth was refused and logged */
	qps_wait *waits; /* its parked requests */
	qps_htab work; /* its WORK leases (ops_work) */
} ops_conn;

struct qps_wait {
	qps_timer timer; /* first: the timer callback casts back */
	int kind; /* QPS_WAIT_* */
	qps_worker *w;
	ops_conn *conn;
	qps_q *q;
	nng_msg *req; /* owns the bytes r points into */
	qpi_wire_req r;
	qps_client *cl; /* dedup: the client and seq, or NULL */
	uint64_t seq;
	uint32_t base; /* put_many: items of the request put before */
	uint64_t next; /* QPS_WAIT_OP: ids (or task_dones) done so far */
	uint32_t nmiss; /* QPS_WAIT_OP: ids found missing so far */
	qps_wait *qprev, *qnext; /* in q's list */
	qps_wait *cprev, *cnext; /* in conn's list */
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t gone; /* CLOCK_MONOTONIC: a connection left */
	const qps_config *cfg;
	qpi_wire_limits lim;
	uint32_t pid;
	qps_htab conns;
	uint32_t nconns;
	uint32_t tomb[OPS_TOMBSTONES];
	uint32_t ntomb;
	bool draining; /* SIGTERM: new work is refused */
	bool shutdown;
} ops = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

void
qps_thread_init(void)
{
	qpi_shmq_lock_budget(QPS_LOCK_BUDGET_NS);
}

/* ---- replies ---- */

static nng_msg *
msg_from_bytes(const void *p, size_t len)
{
	nng_msg *m;

	if (nng_msg_alloc(&m, len) != 0) {
		return NULL;
	}
	if (len > 0) {
		memcpy(nng_msg_body(m), p, len);
	}
	return m;
}

nng_msg *
qps_rep_error(uint32_t op, uint64_t req_id, int status, const char *fmt, ...)
{
	qpi_wire_rep rp;
	qpi_wire_buf b = {0};
	nng_msg *m = NULL;
	va_list ap;

	memset(&rp, 0, sizeof(rp));
	/* A request too broken to read its op is answered as op 0. */
	rp.op = qpi_wire_op_name(op) != NULL ? op : 0;
	rp.req_id = req_id;
	rp.status = status;
	va_start(ap, fmt);
	vsnprintf(rp.errmsg, sizeof(rp.errmsg), fmt, ap);
	va_end(ap);
	if (qpi_wire_encode_rep(&rp, &b) == QP_OK) {
		m = msg_from_bytes(b.data, b.len);
	}
	qpi_wire_buf_free(&b);
	return m;
}

nng_msg *
qps_rep_encode(const qpi_wire_rep *rp)
{
	qpi_wire_buf b = {0};
	nng_msg *m = NULL;
	int rv;

	if ((rv = qpi_wire_encode_rep(rp, &b)) == QP_OK) {
		m = msg_from_bytes(b.data, b.len);
		if (m == NULL) {
			rv = QP_ENOMEM;
		}
	}
	qpi_wire_buf_free(&b);
	if (m == NULL) {
		qps_log(QPS_LOG_WARN, "%s: cannot build the reply: %s",
		    qpi_wire_op_name(rp->op), qp_strerror(rv));
		return qps_rep_error(rp->op, rp->req_id, rv,
		    "the server could not build the reply: %s",
		    qp_strerror(rv));
	}
	return m;
}

nng_msg *
qps_rep_ok(const qpi_wire_req *r)
{
	qpi_wire_rep rp;

	memset(&rp, 0, sizeof(rp));
	rp.op = r->op;
	rp.req_id = r->req_id;
	return qps_rep_encode(&rp);
}

int
qps_rep_status(nng_msg *m)
{
	const uint8_t *p = nng_msg_body(m);
	size_t len = nng_msg_len(m), pos = 0;
	qpi_wire_tok t;

	for (int i = 0; i < 5; i++) {
		if (qpi_wire_next(p, len, &pos, &t) != QP_OK) {
			return QP_EPROTO;
		}
	}
	return t.type == QPI_WIRE_UINT ? (int) t.u : QP_EPROTO;
}

/* ---- connections ---- */

static ops_conn *
conn_find(uint32_t id)
{
	return (ops_conn *) qps_htab_find(&ops.conns, id);
}

static bool
conn_tombstoned(uint32_t id)
{
	for (uint32_t i = 0; i < ops.ntomb && i < OPS_TOMBSTONES; i++) {
		if (ops.tomb[i] == id) {
			return true;
		}
	}
	return false;
}

/* The connection of pipe id, made on first sight (a request may come in
 * before nng's add notification runs). NULL if the pipe already left, or
 * out of memory. */
static ops_conn *
conn_get(uint32_t id)
{
	ops_conn *c = conn_find(id);

	if (c != NULL) {
		return c;
	}
	if (conn_tombstoned(id) || ops.shutdown) {
		return NULL;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		return NULL;
	}
	c->node.key = id;
	c->owner = ((uint64_t) ops.pid << 32) | id;
	c->over_limit = ops.nconns >= ops.cfg->max_connections;
	if (c->over_limit) {
		qps_log(QPS_LOG_WARN,
		    "connection %u refused: the server serves at most %u "
		    "(--max-connections)",
		    id, ops.cfg->max_connections);
	}
	qps_htab_insert(&ops.conns, &c->node);
	ops.nconns++;
	return c;
}

bool
qps_ops_conn_add(uint32_t pipe_id)
{
	bool keep;

	qps_thread_init();
	pthread_mutex_lock(&ops.mu);
	if (ops.draining) {
		/* Shutting down: no new connection (closing the listeners
		 * would close the connections they accepted, with their
		 * replies in flight). */
		pthread_mutex_unlock(&ops.mu);
		return false;
	}
	keep = ops.nconns < ops.cfg->max_connections + OPS_HARD_EXTRA
	    || conn_find(pipe_id) != NULL;
	if (keep) {
		keep = conn_get(pipe_id) != NULL;
	} else {
		qps_log(QPS_LOG_WARN,
		    "closing connection %u at once: %u connections, far over "
		    "--max-connections %u",
		    pipe_id, ops.nconns, ops.cfg->max_connections);
	}
	pthread_mutex_unlock(&ops.mu);
	return keep;
}

static void
work_free_cb(qps_hnode *n, void *arg)
{
	(void) arg;
	free(n);
}

/* Notes a WORK lease of c (out of memory: its ack will not count as
 * task_done; logged). */
static void
work_add(ops_conn *c, qps_q *q, uint64_t lease_id)
{
	ops_work *wk = calloc(1, sizeof(*wk));

	if (wk == NULL) {
		qps_log(QPS_LOG_ERROR,
		    "out of memory: the ack of lease %llu on '%s' will not "
		    "count as task_done",
		    (unsigned long long) lease_id, q->name);
		return;
	}
	wk->node.key = lease_id;
	wk->q = q;
	qps_htab_insert(&c->work, &wk->node);
}

/* Forgets a lease of c; true if it was a WORK lease. */
static bool
work_take(ops_conn *c, qps_q *q, uint64_t lease_id)
{
	for (qps_hnode *n = qps_htab_find(&c->work, lease_id); n != NULL;
	     n = qps_htab_next(n)) {
		ops_work *wk = (ops_work *) n;
		if (wk->q == q) {
			qps_htab_remove(&c->work, n);
			free(wk);
			return true;
		}
	}
	return false;
}

/* True if lease_id is a WORK lease of c on q. */
static bool
work_holds(ops_conn *c, qps_q *q, uint64_t lease_id)
{
	for (qps_hnode *n = qps_htab_find(&c->work, lease_id); n != NULL;
	     n = qps_htab_next(n)) {
		if (((ops_work *) n)->q == q) {
			return true;
		}
	}
	return false;
}

static void wait_finish(qps_wait *wt, nng_msg *rep);
static void ops_dispatch(qps_q *q);

void
qps_ops_conn_remove(uint32_t pipe_id)
{
	ops_conn *c;
	uint64_t n = 0;

	qps_thread_init();
	pthread_mutex_lock(&ops.mu);
	if ((c = conn_find(pipe_id)) == NULL) {
		ops.tomb[ops.ntomb++ % OPS_TOMBSTONES] = pipe_id;
		pthread_mutex_unlock(&ops.mu);
		return;
	}
	/* Its parked requests go unanswered: nobody is there. Its pipe
	 * sides close: their peers see end of file. */
	while (c->waits != NULL) {
		wait_finish(c->waits, NULL);
	}
	qps_pipes_conn_gone(pipe_id);
	for (qps_q *q = qps_q_first(); q != NULL; q = qps_q_next(q)) {
		uint64_t k = qps_q_release_owner(q, c->owner);
		if (k > 0) {
			n += k;
			ops_dispatch(q);
		}
	}
	qps_htab_remove(&ops.conns, &c->node);
	ops.nconns--;
	pthread_cond_broadcast(&ops.gone);
	pthread_mutex_unlock(&ops.mu);
	if (n > 0) {
		qps_log(QPS_LOG_INFO,
		    "connection %u closed holding %llu leased items: back "
		    "at the head of their queues",
		    pipe_id, (unsigned long long) n);
	} else {
		qps_log(QPS_LOG_DEBUG, "connection %u closed", pipe_id);
	}
	qps_htab_each(&c->work, work_free_cb, NULL);
	qps_htab_fini(&c->work);
	free(c);
}

/* ---- parked requests ---- */

static void
wait_unlink(qps_wait *wt)
{
	qps_q *q = wt->q;
	int k = wt->kind;

	if (wt->qprev != NULL) {
		wt->qprev->qnext = wt->qnext;
	} else {
		q->whead[k] = wt->qnext;
	}
	if (wt->qnext != NULL) {
		wt->qnext->qprev = wt->qprev;
	} else {
		q->wtail[k] = wt->qprev;
	}
	q->nwait[k]--;
	if (wt->cprev != NULL) {
		wt->cprev->cnext = wt->cnext;
	} else {
		wt->conn->waits = wt->cnext;
	}
	if (wt->cnext != NULL) {
		wt->cnext->cprev = wt->cprev;
	}
	qps_timer_cancel(&wt->timer);
	if (q->nwait[0] + q->nwait[1] + q->nwait[2] + q->nwait[3] == 0) {
		qps_q_watch(q, false);
	}
}

/* Ends a parked request: sends rep (NULL: no reply, its client is gone),
 * settles its dedup entry, frees it. */
static void
wait_finish(qps_wait *wt, nng_msg *rep)
{
	wait_unlink(wt);
	if (wt->cl != NULL) {
		bool keep = rep != NULL && wt->kind != QPS_WAIT_GET;
		bool body = keep && wt->kind == QPS_WAIT_OP
		    && (wt->r.op == QPI_OP_ACK || wt->r.op == QPI_OP_TOUCH);
		qps_dedup_end(wt->cl, wt->seq,
		    rep != NULL ? qps_rep_status(rep) : QP_OK,
		    body ? nng_msg_body(rep) : NULL,
		    body ? nng_msg_len(rep) : 0, keep);
	}
	if (rep != NULL) {
		qps_worker_reply(wt->w, rep);
	} else {
		qps_worker_drop(wt->w);
	}
	free(wt->r.items);
	free(wt->r.ids);
	nng_msg_free(wt->req);
	free(wt);
}

static void
wait_timeout(qps_timer *t)
{
	qps_wait *wt = (qps_wait *) t;
	const qpi_wire_req *r = &wt->r;
	nng_msg *rep;
	static const int st[QPS_NWAIT]
	    = {QP_EEMPTY, QP_EFULL, QP_ETIMEDOUT, QP_EBUSY};

	if (wt->q->busy || wt->kind == QPS_WAIT_OP) {
		wait_finish(wt,
		    qps_rep_error(r->op, r->req_id, st[wt->kind],
		        "queue '%s' is locked by another process (stopped or "
		        "slow): %s not done after %lld ms",
		        wt->q->name, qpi_wire_op_name(r->op),
		        (long long) (wt->kind == QPS_WAIT_OP ? QPS_BUSY_WAIT_MS
		                                             : r->timeout)));
		return;
	}
	switch (wt->kind) {
	case QPS_WAIT_GET:
		rep = qps_rep_error(r->op, r->req_id, QP_EEMPTY,
		    "queue '%s' is empty after %lld ms", wt->q->name,
		    (long long) r->timeout);
		break;
	case QPS_WAIT_PUT:
		rep = qps_rep_error(r->op, r->req_id, QP_EFULL,
		    "queue '%s' is full after %lld ms", wt->q->name,
		    (long long) r->timeout);
		break;
	default:
		rep = qps_rep_error(r->op, r->req_id, QP_ETIMEDOUT,
		    "queue '%s' still has unfinished tasks after %lld ms",
		    wt->q->name, (long long) r->timeout);
		break;
	}
	wait_finish(wt, rep);
}

/* Parks the request for up to tmo ms (< 0: no limit): takes req, copies
 * r (and its items, or for QPS_WAIT_OP its ids). Returns NULL (nothing
 * taken) if the server cannot park more. */
static qps_wait *
wait_park(qps_worker *w, ops_conn *c, qps_q *q, int kind, nng_msg *req,
    const qpi_wire_req *r, qps_client *cl, uint32_t base, int64_t tmo)
{
	qps_wait *wt = calloc(1, sizeof(*wt));

	if (wt == NULL) {
		return NULL;
	}
	wt->r = *r;
	/* The caller's arrays may be on its stack: keep our own copy (the
	 * items still point into req, which we keep). Acks were applied. */
	wt->r.ids = NULL;
	wt->r.nids = wt->r.ids_cap = 0;
	wt->r.items = NULL;
	wt->r.items_cap = 0;
	if (r->op == QPI_OP_PUT_MANY) {
		wt->r.items = malloc(r->nitems * sizeof(*r->items));
		if (wt->r.items == NULL) {
			free(wt);
			return NULL;
		}
		memcpy(wt->r.items, r->items, r->nitems * sizeof(*r->items));
		wt->r.items_cap = r->nitems;
	}
	if (kind == QPS_WAIT_OP && r->nids > 0) {
		if ((wt->r.ids = malloc(r->nids * sizeof(*r->ids))) == NULL) {
			free(wt->r.items);
			free(wt);
			return NULL;
		}
		memcpy(wt->r.ids, r->ids, r->nids * sizeof(*r->ids));
		wt->r.nids = wt->r.ids_cap = r->nids;
	}
	qps_timer_init(&wt->timer, wait_timeout);
	if ((tmo > 0 && !qps_timer_arm(&wt->timer, qpi_deadline_ns(tmo)))
	    || !qps_worker_park(w)) {
		qps_timer_cancel(&wt->timer);
		free(wt->r.items);
		free(wt->r.ids);
		free(wt);
		return NULL;
	}
	wt->kind = kind;
	wt->w = w;
	wt->conn = c;
	wt->q = q;
	wt->req = req;
	wt->cl = cl;
	wt->seq = r->seq;
	wt->base = base;
	if (cl != NULL) {
		qps_dedup_park(cl, r->seq, wt);
	}
	wt->qprev = q->wtail[kind];
	if (q->wtail[kind] != NULL) {
		q->wtail[kind]->qnext = wt;
	} else {
		q->whead[kind] = wt;
	}
	q->wtail[kind] = wt;
	q->nwait[kind]++;
	wt->cnext = c->waits;
	if (c->waits != NULL) {
		c->waits->cprev = wt;
	}
	c->waits = wt;
	qps_q_watch(q, true);
	return wt;
}

/* ---- queue operations (the lock held) ---- */

/* Tries a get for r on q as connection c: QP_OK with *repp set (items
 * leased), QP_EEMPTY (nothing taken), QP_ELIMIT (items are ready but
 * every lease slot, or the lease area, is taken: a blocking get waits
 * for an ack or release to free one), or another error. */
static int
op_try_get(ops_conn *c, qps_q *q, const qpi_wire_req *r, nng_msg **repp)
{
	qps_got stackg[OPS_STACK_ITEMS], *g = stackg;
	qpi_wire_item stacki[OPS_STACK_ITEMS], *items = stacki;
	uint32_t want = r->max_items > 0 ? r->max_items : 1, n = 0;
	uint64_t bytes = 0;
	int rv = QP_OK;

	if (want > OPS_STACK_ITEMS) {
		g = malloc(want * sizeof(*g));
		items = malloc(want * sizeof(*items));
		if (g == NULL || items == NULL) {
			free(g != stackg ? g : NULL);
			free(items != stacki ? items : NULL);
			return QP_ENOMEM;
		}
	}
	while (n < want) {
		/* Beyond the first item, the reply stays within max_message
		 * bytes: an item that would pass it is not taken (it stays at
		 * the head for the next get). */
		size_t room = 0;
		if (n > 0) {
			if (bytes >= ops.lim.max_message) {
				break;
			}
			room = (size_t) (ops.lim.max_message - bytes);
		}
		rv = qps_q_get(
		    q, c->owner, r->lease_mode, r->lease_ms, room, &g[n]);
		if (rv != QP_OK) {
			break;
		}
		bytes += g[n].len;
		n++;
	}
	if (n > 0) {
		qpi_wire_rep rp;
		memset(&rp, 0, sizeof(rp));
		rp.op = r->op;
		rp.req_id = r->req_id;
		for (uint32_t i = 0; i < n; i++) {
			items[i].data = g[i].data;
			items[i].len = g[i].len;
			items[i].lease_id = g[i].lease_id;
			items[i].deliveries = g[i].deliveries;
		}
		rp.items = items;
		rp.nitems = n;
		rp.items_cap = n;
		*repp = qps_rep_encode(&rp);
		rv = QP_OK;
		if (*repp == NULL || qps_rep_status(*repp) != QP_OK) {
			/* The items cannot be said: give them back rather
			 * than hold them for a reply never sent. */
			for (uint32_t i = 0; i < n; i++) {
				qps_q_release(q, c->owner, g[i].lease_id, 0);
			}
			rv = *repp == NULL ? QP_ENOMEM : QP_OK;
		} else if (r->lease_mode == QPI_LEASE_WORK) {
			for (uint32_t i = 0; i < n; i++) {
				work_add(c, q, g[i].lease_id);
			}
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		free(g[i].data);
	}
	if (g != stackg) {
		free(g);
		free(items);
	}
	return rv;
}

/* Puts r's item(s): QP_OK, QP_EFULL (nothing put), or another error.
 * cl != NULL: the request is deduplicated; its items go in tagged with
 * its client id and seq (base: items of it put before, by an earlier
 * server), so that a server restarted after this put knows. */
static int
op_try_put(qps_q *q, const qpi_wire_req *r, qps_client *cl, uint32_t base)
{
	qpi_shmq_tag tag, *t = NULL;

	if (cl != NULL) {
		memcpy(tag.client, r->client_id, sizeof(tag.client));
		tag.seq = r->seq;
		tag.base = base;
		tag.n = base + (r->op == QPI_OP_PUT ? 1 : r->nitems);
		tag.done = 0;
		t = &tag;
	}
	if (r->op == QPI_OP_PUT) {
		return qps_q_put(q, r->item.data, r->item.len, t);
	}
	return qps_q_put_many(q, r->items, r->nitems, t);
}

static nng_msg *
put_error(const qpi_wire_req *r, qps_q *q, int rv)
{
	if (rv == QP_EBUSY) {
		return qps_rep_error(r->op, r->req_id, QP_EFULL,
		    "queue '%s' is locked by another process (stopped or "
		    "slow): not put",
		    q->name);
	}
	if (rv == QP_EFULL) {
		return qps_rep_error(
		    r->op, r->req_id, rv, "queue '%s' is full", q->name);
	}
	return qps_rep_error(r->op, r->req_id, rv, "put to '%s': %s", q->name,
	    qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
}

/* Confirms one lease of c: a WORK lease's ack is also its task_done.
 * QP_EBUSY: q's lock is held, nothing done. */
static int
op_ack(ops_conn *c, qps_q *q, uint64_t lease_id)
{
	int rv = qps_q_ack(q, lease_id);

	if (rv == QP_EBUSY || !work_take(c, q, lease_id) || rv != QP_OK) {
		return rv;
	}
	int d = qps_q_task_done(q, 1);
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

/* A get's confirmations: those that meet q's lock held are done later,
 * by q's probe. */
static void
ops_ack_ids(ops_conn *c, qps_q *q, const qpi_wire_req *r)
{
	for (uint32_t i = 0; i < r->nids; i++) {
		if (q->busy || op_ack(c, q, r->ids[i]) == QP_EBUSY) {
			qps_q_ack_later(
			    q, r->ids[i], work_take(c, q, r->ids[i]));
		}
	}
}

/* Applies each to r's lease ids from *next on; those it fails on gather
 * at the front of r->ids (*nmiss of them). QP_EBUSY: stopped at *next,
 * q's lock is held. Else QP_OK, *repp listing them as missing. */
static int
ids_apply(ops_conn *c, qps_q *q, qpi_wire_req *r, uint64_t *next,
    uint32_t *nmiss, nng_msg **repp,
    int (*each)(ops_conn *c, qps_q *q, const qpi_wire_req *r, uint64_t id))
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
	memset(&rp, 0, sizeof(rp));
	rp.op = r->op;
	rp.req_id = r->req_id;
	rp.ids = r->ids;
	rp.nids = *nmiss;
	rp.ids_cap = r->nids;
	*repp = qps_rep_encode(&rp);
	return QP_OK;
}

static int
ack_one(ops_conn *c, qps_q *q, const qpi_wire_req *r, uint64_t id)
{
	(void) r;
	return op_ack(c, q, id);
}

static int
touch_one(ops_conn *c, qps_q *q, const qpi_wire_req *r, uint64_t id)
{
	return work_holds(c, q, id) ? qps_q_renew(q, id, r->lease_ms)
	                            : QP_ENOENT;
}

/* The ops on one queue that never wait for it: ack, touch, release,
 * task_done, qsize, stat. QP_EBUSY when q's lock is held: nothing more
 * is done, the request parks and comes again (*next, *nmiss keep an
 * ack's, touch's or task_done's progress). Else QP_OK with *repp. */
static int
op_now(ops_conn *c, qps_q *q, qpi_wire_req *r, uint64_t *next, uint32_t *nmiss,
    nng_msg **repp)
{
	qpi_wire_rep rp;
	int rv = QP_OK;

	if (q->busy) {
		return QP_EBUSY;
	}
	memset(&rp, 0, sizeof(rp));
	rp.op = r->op;
	rp.req_id = r->req_id;
	switch (r->op) {
	case QPI_OP_ACK:
		return ids_apply(c, q, r, next, nmiss, repp, ack_one);
	case QPI_OP_TOUCH:
		/* Only the WORK leases of this connection on q are renewed;
		 * any other id is missing. */
		rv = ids_apply(c, q, r, next, nmiss, repp, touch_one);
		qpi_err_clear();
		return rv;
	case QPI_OP_RELEASE:
		rv = qps_q_release(q, c->owner, r->lease_id, r->delay_ms);
		if (rv == QP_EBUSY) {
			return rv;
		}
		work_take(c, q, r->lease_id);
		*repp = rv == QP_OK
		    ? qps_rep_ok(r)
		    : qps_rep_error(r->op, r->req_id, rv,
		        "lease %llu on '%s' is not held (expired, released "
		        "or acked)",
		        (unsigned long long) r->lease_id, q->name);
		return QP_OK;
	case QPI_OP_TASK_DONE:
		for (; *next < r->count && rv == QP_OK; (*next)++) {
			if ((rv = qps_q_task_done(q, 1)) == QP_EBUSY) {
				return rv;
			}
		}
		*repp = rv == QP_OK ? qps_rep_ok(r)
		                    : qps_rep_error(r->op, r->req_id, rv,
		                        "task_done() on '%s' called more "
		                        "times than items were put",
		                        q->name);
		return QP_OK;
	case QPI_OP_QSIZE:
		rv = qps_q_qsize(q, &rp.count);
		break;
	default: /* QPI_OP_STAT */
		rv = qps_q_stat(q, &rp.stat);
		break;
	}
	if (rv == QP_EBUSY) {
		return rv;
	}
	*repp = rv == QP_OK
	    ? qps_rep_encode(&rp)
	    : qps_rep_error(r->op, r->req_id, rv, "%s of '%s': %s",
	        qpi_wire_op_name(r->op), q->name, qp_strerror(rv));
	return QP_OK;
}

/* Serves q's parked requests in order while they can go on; nothing
 * while q's lock is held by another process (its probe comes back). */
static void
ops_dispatch(qps_q *q)
{
	bool progress = true;

	while (progress && !q->busy) {
		progress = false;
		while (q->whead[QPS_WAIT_OP] != NULL) {
			qps_wait *wt = q->whead[QPS_WAIT_OP];
			nng_msg *rep = NULL;
			if (op_now(wt->conn, q, &wt->r, &wt->next, &wt->nmiss,
			        &rep)
			    == QP_EBUSY) {
				return;
			}
			wait_finish(wt, rep);
			progress = true;
		}
		while (q->whead[QPS_WAIT_GET] != NULL) {
			qps_wait *wt = q->whead[QPS_WAIT_GET];
			nng_msg *rep = NULL;
			int rv = op_try_get(wt->conn, q, &wt->r, &rep);
			if (rv == QP_EBUSY) {
				return;
			}
			if (rv == QP_EEMPTY || rv == QP_ELIMIT) {
				break;
			}
			if (rv != QP_OK) {
				rep = qps_rep_error(wt->r.op, wt->r.req_id, rv,
				    "get from '%s': %s", q->name,
				    qp_strerror(rv));
			}
			wait_finish(wt, rep);
			progress = true;
		}
		while (q->whead[QPS_WAIT_PUT] != NULL) {
			qps_wait *wt = q->whead[QPS_WAIT_PUT];
			int rv = op_try_put(q, &wt->r, wt->cl, wt->base);
			if (rv == QP_EBUSY) {
				return;
			}
			if (rv == QP_EFULL) {
				break;
			}
			wait_finish(wt,
			    rv == QP_OK ? qps_rep_ok(&wt->r)
			                : put_error(&wt->r, q, rv));
			progress = true;
		}
		if (q->whead[QPS_WAIT_JOIN] != NULL && qps_q_joined(q)) {
			while (q->whead[QPS_WAIT_JOIN] != NULL) {
				qps_wait *wt = q->whead[QPS_WAIT_JOIN];
				wait_finish(wt, qps_rep_ok(&wt->r));
			}
		}
	}
}

void
qps_ops_kick(qps_q *q)
{
	ops_dispatch(q);
}

/* Ends every request parked on q with status. */
static void
ops_fail_waits(qps_q *q, int status, const char *why)
{
	for (int k = 0; k < QPS_NWAIT; k++) {
		while (q->whead[k] != NULL) {
			qps_wait *wt = q->whead[k];
			wait_finish(wt,
			    qps_rep_error(wt->r.op, wt->r.req_id, status,
			        "queue '%s' %s", q->name, why));
		}
	}
}

static void
work_purge_cb(qps_hnode *n, void *arg)
{
	ops_conn *c = (ops_conn *) n;
	qps_q *q = arg;
	qps_hnode *stale[64];
	size_t k;

	/* Drop the WORK leases of q (it goes away), a bucket at a time. */
	do {
		k = 0;
		for (size_t b = 0; b < c->work.nb && k < 64; b++) {
			for (qps_hnode *e = c->work.b[b]; e != NULL && k < 64;
			     e = e->hnext) {
				if (((ops_work *) e)->q == q) {
					stale[k++] = e;
				}
			}
		}
		for (size_t i = 0; i < k; i++) {
			qps_htab_remove(&c->work, stale[i]);
			free(stale[i]);
		}
	} while (k == 64);
}

/* Forgets q: fails what waits on it, drops the WORK leases noted on it. */
static void
ops_forget_q(qps_q *q, int status, const char *why)
{
	ops_fail_waits(q, status, why);
	qps_htab_each(&ops.conns, work_purge_cb, q);
}

typedef struct list_ctx {
	qpi_wire_qentry *v;
	uint32_t n, cap;
	bool nomem;
} list_ctx;

static bool
list_one(const char *name, const qp_queue_stats *st, void *arg)
{
	list_ctx *lc = arg;

	if (lc->n == lc->cap) {
		uint32_t cap = lc->cap == 0 ? 16 : lc->cap * 2;
		qpi_wire_qentry *v;
		if (lc->cap >= QPI_WIRE_DEFAULT_BATCH) {
			return false; /* the list says the first ones */
		}
		if ((v = realloc(lc->v, cap * sizeof(*v))) == NULL) {
			lc->nomem = true;
			return false;
		}
		lc->v = v;
		lc->cap = cap;
	}
	snprintf(lc->v[lc->n].name, sizeof(lc->v[lc->n].name), "%s", name);
	lc->v[lc->n].stat = *st;
	lc->n++;
	return true;
}

static int
open_for(const qpi_wire_req *r, bool create, qps_q **qp, nng_msg **repp)
{
	qps_q *old = qps_q_find(r->name);
	int rv;

	if (old != NULL && qps_q_stale(old)) {
		/* Deleted by another process (and maybe made anew): what
		 * waits on the old one ends, the name is opened afresh. */
		ops_forget_q(old, QP_ECLOSED, "was deleted");
		qps_q_forget(old);
	}
	rv = qps_q_open(r->name, create, qp);
	if (rv == QP_ENOENT) {
		*repp = qps_rep_error(r->op, r->req_id, rv,
		    "no queue '%s' on this server (create it first)", r->name);
	} else if (rv != QP_OK) {
		*repp = qps_rep_error(r->op, r->req_id, rv, "queue '%s': %s",
		    r->name,
		    qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
	}
	return rv;
}

/* Parks a get, put or join, or says why it cannot. */
static qps_handled
park_or_refuse(qps_worker *w, ops_conn *c, qps_q *q, int kind, nng_msg *req,
    const qpi_wire_req *r, qps_client *cl, uint32_t base, nng_msg **repp)
{
	if (wait_park(w, c, q, kind, req, r, cl, base, r->timeout) != NULL) {
		ops_dispatch(q);
		return QPS_PARKED;
	}
	*repp = qps_rep_error(r->op, r->req_id, QP_ELIMIT,
	    "the server holds too many waiting requests");
	return QPS_REPLY;
}

/* Applies one decoded request. Returns QPS_PARKED (req now belongs to the
 * parked wait) or QPS_REPLY with *repp. The lock is held. base: items of
 * a put_many put before (r holds the rest). */
static qps_handled
ops_apply(qps_worker *w, ops_conn *c, nng_msg *req, qpi_wire_req *r,
    qps_client *cl, uint32_t base, nng_msg **repp)
{
	qpi_wire_rep rp;
	qps_q *q = NULL;
	int rv;

	memset(&rp, 0, sizeof(rp));
	rp.op = r->op;
	rp.req_id = r->req_id;

	switch (r->op) {
	case QPI_OP_HELLO:
		snprintf(rp.server_version, sizeof(rp.server_version), "%s",
		    qp_version());
		rp.limits = ops.lim;
		rp.auth_required = qps_sec_auth_required();
		if (rp.auth_required) {
			/* A fresh nonce: the one auth attempt it allows. */
			if ((rv = qpi_auth_server_hello(&c->auth, rp.nonce))
			    != QP_OK) {
				*repp = qps_rep_error(r->op, r->req_id, rv,
				    "no random nonce: %s", qp_errmsg());
				return QPS_REPLY;
			}
		} else if (getrandom(rp.nonce, sizeof(rp.nonce), 0)
		    != (ssize_t) sizeof(rp.nonce)) {
			memset(rp.nonce, 0, sizeof(rp.nonce));
		}
		if (r->client_name[0] != '\0') {
			qps_log(QPS_LOG_DEBUG, "connection %u: hello from %s",
			    (unsigned) c->node.key, r->client_name);
		}
		*repp = qps_rep_encode(&rp);
		return QPS_REPLY;

	case QPI_OP_AUTH:
		if (!qps_sec_auth_required()) {
			*repp = qps_rep_error(r->op, r->req_id, QP_ENOTSUP,
			    "this server has no authentication token to "
			    "check");
			return QPS_REPLY;
		}
		rv = qpi_auth_server_check(&c->auth, qps_sec_token(), r->mac,
		    r->has_nonce ? r->nonce : NULL, rp.mac, &rp.has_mac);
		if (rv != QP_OK) {
			char peer[160];
			qps_net_peer(
			    (uint32_t) c->node.key, peer, sizeof(peer));
			qps_log(QPS_LOG_WARN,
			    "connection %u from %s: authentication refused: "
			    "%s",
			    (unsigned) c->node.key, peer, qp_errmsg());
			*repp = qps_rep_error(r->op, r->req_id, rv,
			    "authentication refused: %s", qp_errmsg());
			return QPS_REPLY;
		}
		qps_log(QPS_LOG_DEBUG, "connection %u authenticated",
		    (unsigned) c->node.key);
		*repp = qps_rep_encode(&rp);
		return QPS_REPLY;

	case QPI_OP_PING:
		*repp = qps_rep_encode(&rp);
		return QPS_REPLY;

	case QPI_OP_PUT:
	case QPI_OP_PUT_MANY:
		if (open_for(r, (r->flags & QPI_PUT_CREATE) != 0, &q, repp)
		    != QP_OK) {
			return QPS_REPLY;
		}
		/* Parked putters go first (FIFO). */
		ops_dispatch(q);
		qps_q_defer_sync(true); /* group commit: see qps_ops_handle */
		rv = q->busy ? QP_EBUSY
		    : q->whead[QPS_WAIT_PUT] != NULL
		    ? QP_EFULL
		    : op_try_put(q, r, cl, base);
		qps_q_defer_sync(false);
		if ((rv == QP_EFULL || rv == QP_EBUSY) && r->timeout != 0) {
			return park_or_refuse(
			    w, c, q, QPS_WAIT_PUT, req, r, cl, base, repp);
		}
		*repp = rv == QP_OK ? qps_rep_ok(r) : put_error(r, q, rv);
		if (rv == QP_OK) {
			ops_dispatch(q);
		}
		return QPS_REPLY;

	case QPI_OP_GET:
		if (open_for(r, false, &q, repp) != QP_OK) {
			return QPS_REPLY;
		}
		ops_ack_ids(c, q, r);
		ops_dispatch(q);
		rv = q->busy ? QP_EBUSY
		    : q->whead[QPS_WAIT_GET] != NULL
		    ? QP_EEMPTY
		    : op_try_get(c, q, r, repp);
		if ((rv == QP_EEMPTY || rv == QP_ELIMIT || rv == QP_EBUSY)
		    && r->timeout != 0) {
			return park_or_refuse(
			    w, c, q, QPS_WAIT_GET, req, r, cl, 0, repp);
		}
		if (rv == QP_EBUSY) {
			*repp = qps_rep_error(r->op, r->req_id, QP_EEMPTY,
			    "queue '%s' is locked by another process (stopped "
			    "or slow)",
			    q->name);
		} else if (rv == QP_EEMPTY) {
			*repp = qps_rep_error(r->op, r->req_id, QP_EEMPTY,
			    "queue '%s' is empty", q->name);
		} else if (rv != QP_OK) {
			*repp = qps_rep_error(r->op, r->req_id, rv,
			    "get from '%s': %s", q->name, qp_strerror(rv));
		}
		/* Acks and leases free room: putters may go on. */
		ops_dispatch(q);
		return QPS_REPLY;

	case QPI_OP_ACK:
	case QPI_OP_TOUCH:
	case QPI_OP_RELEASE:
	case QPI_OP_TASK_DONE:
	case QPI_OP_QSIZE:
	case QPI_OP_STAT: {
		uint64_t next = 0;
		uint32_t nmiss = 0;
		qps_wait *wt;
		if (open_for(r, false, &q, repp) != QP_OK) {
			return QPS_REPLY;
		}
		if (op_now(c, q, r, &next, &nmiss, repp) == QP_OK) {
			ops_dispatch(q); /* acks and releases free room */
			return QPS_REPLY;
		}
		wt = wait_park(
		    w, c, q, QPS_WAIT_OP, req, r, cl, 0, QPS_BUSY_WAIT_MS);
		if (wt == NULL) {
			*repp = qps_rep_error(r->op, r->req_id, QP_EBUSY,
			    "queue '%s' is locked by another process (stopped "
			    "or slow)",
			    q->name);
			return QPS_REPLY;
		}
		wt->next = next;
		wt->nmiss = nmiss;
		return QPS_PARKED;
	}

	case QPI_OP_JOIN:
		if (open_for(r, false, &q, repp) != QP_OK) {
			return QPS_REPLY;
		}
		if (qps_q_joined(q)) {
			*repp = qps_rep_ok(r);
			return QPS_REPLY;
		}
		if (r->timeout == 0) {
			*repp = qps_rep_error(r->op, r->req_id, QP_ETIMEDOUT,
			    "queue '%s' %s", q->name,
			    q->busy ? "is locked by another process (stopped "
			              "or slow)"
			            : "has unfinished tasks");
			return QPS_REPLY;
		}
		return park_or_refuse(
		    w, c, q, QPS_WAIT_JOIN, req, r, cl, 0, repp);

	case QPI_OP_LIST: {
		list_ctx lc = {0};
		rv = qps_q_list(list_one, &lc);
		if (rv != QP_OK || lc.nomem) {
			rv = rv != QP_OK ? rv : QP_ENOMEM;
			*repp = qps_rep_error(r->op, r->req_id, rv,
			    "cannot list the queues: %s", qp_strerror(rv));
		} else {
			rp.queues = lc.v;
			rp.nqueues = lc.n;
			rp.queues_cap = lc.cap;
			*repp = qps_rep_encode(&rp);
		}
		free(lc.v);
		return QPS_REPLY;
	}

	case QPI_OP_CREATE: {
		qps_q_opts o = {
		    .maxsize = r->maxsize,
		    .capacity = r->capacity,
		    .max_message = r->max_message,
		    .lease_ms = r->lease_ms,
		    .excl = (r->flags & QPI_CREATE_EXCL) != 0,
		    .durable = (r->flags & QPI_CREATE_DURABLE) != 0,
		    .fsync = r->fsync,
		};
		if (o.durable && ops.cfg->data_dir == NULL) {
			*repp = qps_rep_error(r->op, r->req_id, QP_EINVAL,
			    "a durable queue needs the server started with "
			    "--data-dir");
			return QPS_REPLY;
		}
		if (!o.durable && r->fsync[0] != '\0') {
			*repp = qps_rep_error(r->op, r->req_id, QP_EINVAL,
			    "an fsync policy is for durable queues only");
			return QPS_REPLY;
		}
		if (r->max_message > ops.lim.max_message) {
			*repp = qps_rep_error(r->op, r->req_id, QP_EINVAL,
			    "max_message %llu is over the server's %llu",
			    (unsigned long long) r->max_message,
			    (unsigned long long) ops.lim.max_message);
			return QPS_REPLY;
		}
		q = qps_q_find(r->name);
		if (q != NULL && qps_q_stale(q)) {
			ops_forget_q(q, QP_ECLOSED, "was deleted");
			qps_q_forget(q);
		}
		rv = qps_q_create(r->name, &o, &q);
		*repp = rv == QP_OK
		    ? qps_rep_ok(r)
		    : qps_rep_error(r->op, r->req_id, rv, "create '%s': %s",
		        r->name,
		        qp_errmsg()[0] != '\0' ? qp_errmsg()
		                               : qp_strerror(rv));
		return QPS_REPLY;
	}

	case QPI_OP_DELETE:
		q = qps_q_find(r->name);
		if (q != NULL) {
			ops_forget_q(q, QP_ECLOSED, "was deleted");
		}
		rv = qps_q_delete(r->name, q);
		*repp = rv == QP_OK
		    ? qps_rep_ok(r)
		    : qps_rep_error(r->op, r->req_id, rv, "delete '%s': %s",
		        r->name,
		        rv == QP_ENOENT ? "no such queue" : qp_strerror(rv));
		if (rv == QP_OK) {
			qps_log(QPS_LOG_INFO, "queue '%s' deleted", r->name);
		}
		return QPS_REPLY;

	case QPI_OP_PIPE_OPEN:
	case QPI_OP_PIPE_SEND:
	case QPI_OP_PIPE_RECV:
	case QPI_OP_PIPE_POLL:
	case QPI_OP_PIPE_CLOSE:
		return qps_pipe_apply(
		    w, (uint32_t) c->node.key, req, r, cl, repp);

	default:
		*repp = qps_rep_error(r->op, r->req_id, QP_ENOTSUP,
		    "%s is not served by this version of qpiped",
		    qpi_wire_op_name(r->op));
		return QPS_REPLY;
	}
}

/* Ops that finish work rather than start it: served while draining. */
static bool
op_finishes(uint32_t op)
{
	return op == QPI_OP_ACK || op == QPI_OP_RELEASE
	    || op == QPI_OP_TASK_DONE || op == QPI_OP_TOUCH
	    || op == QPI_OP_PING;
}

/* Under the lock: dedup, then apply. */
static qps_handled
ops_handle_locked(qps_worker *w, uint32_t pipe_id, nng_msg *req,
    qpi_wire_req *r, nng_msg **repp)
{
	static const uint8_t zero[QPI_WIRE_ID_LEN];
	qps_client *cl = NULL;
	qps_dedup_prev prev;
	qps_handled h;
	ops_conn *c;
	uint32_t base = 0;

	if (ops.shutdown) {
		/* The last replies are out and the workers are about to go:
		 * nothing is applied now, and nothing may park (a durable
		 * ack's sync would answer a worker already freed). An ack
		 * left unapplied is a lease the shutdown gave back. */
		*repp = NULL;
		return QPS_REPLY;
	}
	if ((c = conn_get(pipe_id)) == NULL) {
		/* Its connection is gone (or memory is): nobody to answer. */
		*repp = NULL;
		return QPS_REPLY;
	}
	if (c->over_limit) {
		*repp = qps_rep_error(r->op, r->req_id, QP_ELIMIT,
		    "the server is serving its maximum of %u connections",
		    ops.cfg->max_connections);
		qps_worker_close_after(w, pipe_id);
		return QPS_REPLY;
	}
	if (qps_sec_auth_required() && !c->auth.ok && r->op != QPI_OP_HELLO
	    && r->op != QPI_OP_AUTH && r->op != QPI_OP_PING) {
		/* Not applied, not remembered by dedup: the client sends it
		 * again, same seq, once it has authenticated. */
		if (!c->told_unauth) {
			char peer[160];
			c->told_unauth = true;
			qps_net_peer(pipe_id, peer, sizeof(peer));
			qps_log(QPS_LOG_WARN,
			    "connection %u from %s: %s refused: not "
			    "authenticated (later refusals on this connection "
			    "are not logged)",
			    (unsigned) pipe_id, peer, qpi_wire_op_name(r->op));
		}
		*repp = qps_rep_error(r->op, r->req_id, QP_EAUTH,
		    "authentication required: send hello, then auth with "
		    "the token's HMAC of the nonce");
		return QPS_REPLY;
	}
	if (ops.draining && !op_finishes(r->op)) {
		qps_q *q;
		if (r->op == QPI_OP_GET && r->nids > 0
		    && (q = qps_q_find(r->name)) != NULL) {
			ops_ack_ids(c, q, r);
		}
		*repp = qps_rep_error(r->op, r->req_id, QP_ECONNRESET,
		    "the server is shutting down: reconnect and retry");
		return QPS_REPLY;
	}
	memset(&prev, 0, sizeof(prev));
	if (qpi_wire_op_dedup(r->op) && r->seq != 0
	    && memcmp(r->client_id, zero, sizeof(zero)) != 0) {
		qps_q *q;
		if ((r->op == QPI_OP_PUT || r->op == QPI_OP_PUT_MANY)
		    && qps_q_find(r->name) == NULL) {
			/* First sight of the queue (a restarted server):
			 * hosting it reads which puts are in it already
			 * (errors are the apply's to report). */
			(void) qps_q_open(r->name, false, &q);
		}
		cl = qps_dedup_client(r->client_id);
	}
	if (cl != NULL) {
		switch (qps_dedup_begin(cl, r->seq, r->op, &prev)) {
		case QPS_DEDUP_REPLAY:
			qps_log(QPS_LOG_DEBUG,
			    "%s seq %llu came again: answered, not applied",
			    qpi_wire_op_name(r->op),
			    (unsigned long long) r->seq);
			if (prev.rep != NULL) {
				*repp = msg_from_bytes(prev.rep, prev.replen);
			} else if (prev.status == QP_OK) {
				*repp = qps_rep_ok(r);
			} else {
				*repp = qps_rep_error(r->op, r->req_id,
				    prev.status,
				    "%s (the answer to this request when "
				    "it first came)",
				    qp_strerror(prev.status));
			}
			return QPS_REPLY;
		case QPS_DEDUP_TOO_OLD:
			*repp = qps_rep_error(r->op, r->req_id, QP_EPROTO,
			    "seq %llu is older than this client's last %d "
			    "requests",
			    (unsigned long long) r->seq, QPS_DEDUP_WINDOW);
			return QPS_REPLY;
		case QPS_DEDUP_TAKEOVER:
			if (prev.wait != NULL) {
				prev.wait->cl = NULL; /* the slot is ours */
				wait_finish(prev.wait, NULL);
			}
			break;
		case QPS_DEDUP_NEW:
			break;
		}
		if (prev.skip > 0
		    && (r->op != QPI_OP_PUT_MANY || prev.skip >= r->nitems)) {
			/* All of it is in (by an earlier server). */
			*repp = qps_rep_ok(r);
			qps_dedup_end(cl, r->seq, QP_OK, NULL, 0, true);
			return QPS_REPLY;
		}
		if (prev.skip > 0) {
			qps_log(QPS_LOG_INFO,
			    "put_many seq %llu to '%s' came again after a "
			    "restart with %u of its %u items in: the rest "
			    "goes in",
			    (unsigned long long) r->seq, r->name, prev.skip,
			    r->nitems);
			base = prev.skip;
			r->items += base;
			r->nitems -= base;
			r->items_cap -= base;
		}
	}
	h = ops_apply(w, c, req, r, cl, base, repp);
	if (h == QPS_REPLY && cl != NULL) {
		/* Replies that carry fields (ack's and touch's missing ids, a
		 * pipe's message or side) are kept whole. */
		bool body = *repp != NULL
		    && (r->op == QPI_OP_ACK || r->op == QPI_OP_TOUCH
		        || r->op == QPI_OP_PIPE_RECV
		        || r->op == QPI_OP_PIPE_OPEN);
		qps_dedup_end(cl, r->seq,
		    *repp != NULL ? qps_rep_status(*repp) : QP_ENOMEM,
		    body ? nng_msg_body(*repp) : NULL,
		    body ? nng_msg_len(*repp) : 0,
		    r->op != QPI_OP_GET && *repp != NULL);
	}
	return h;
}

qps_handled
qps_ops_handle(qps_worker *w, uint32_t pipe_id, nng_msg *req, nng_msg **repp)
{
	qpi_wire_item stacki[OPS_STACK_ITEMS], *items = stacki;
	uint64_t stackids[OPS_STACK_ITEMS], *ids = stackids;
	qpi_wire_req r;
	qps_handled h = QPS_REPLY;
	int rv;

	qps_thread_init();
	memset(&r, 0, sizeof(r));
	r.items = items;
	r.items_cap = OPS_STACK_ITEMS;
	r.ids = ids;
	r.ids_cap = OPS_STACK_ITEMS;
	rv = qpi_wire_decode_req(
	    nng_msg_body(req), nng_msg_len(req), &ops.lim, &r);
	if (rv == QP_ETOOBIG
	    && (r.nitems > OPS_STACK_ITEMS || r.nids > OPS_STACK_ITEMS)
	    && r.nitems <= ops.lim.max_batch && r.nids <= ops.lim.max_batch) {
		/* A batch larger than the stack holds: decode again. */
		uint32_t ni = r.nitems, nd = r.nids;
		if (ni > OPS_STACK_ITEMS) {
			items = calloc(ni, sizeof(*items));
		}
		if (nd > OPS_STACK_ITEMS) {
			ids = calloc(nd, sizeof(*ids));
		}
		if (items == NULL || ids == NULL) {
			rv = qpi_err(QP_ENOMEM, "out of memory for a batch");
		} else {
			memset(&r, 0, sizeof(r));
			r.items = items;
			r.items_cap
			    = ni > OPS_STACK_ITEMS ? ni : OPS_STACK_ITEMS;
			r.ids = ids;
			r.ids_cap
			    = nd > OPS_STACK_ITEMS ? nd : OPS_STACK_ITEMS;
			rv = qpi_wire_decode_req(
			    nng_msg_body(req), nng_msg_len(req), &ops.lim, &r);
		}
	}
	if (rv != QP_OK) {
		qps_log(QPS_LOG_DEBUG,
		    "connection %u: refused a request of %zu bytes: %s",
		    pipe_id, nng_msg_len(req), qp_errmsg());
		*repp = qps_rep_error(r.op, r.req_id, rv, "%s", qp_errmsg());
	} else {
		pthread_mutex_lock(&ops.mu);
		h = ops_handle_locked(w, pipe_id, req, &r, repp);
		pthread_mutex_unlock(&ops.mu);
		/* A durable put's sync, shared with the puts of other
		 * connections, before its reply leaves: by the sync thread
		 * (the worker parks), else here. */
		int srv = QP_OK;
		if (h == QPS_REPLY && *repp != NULL
		    && qps_q_sync_park(w, *repp, r.op, r.req_id, r.name,
		        r.client_id, r.seq)) {
			*repp = NULL;
			nng_msg_free(req);
			h = QPS_PARKED;
		} else {
			srv = qps_q_sync_deferred();
		}
		if (srv != QP_OK && h == QPS_REPLY) {
			/* Its repeat must not be answered OK either. */
			pthread_mutex_lock(&ops.mu);
			qps_dedup_fail(r.client_id, r.seq, srv);
			pthread_mutex_unlock(&ops.mu);
			nng_msg_free(*repp);
			*repp = qps_rep_error(r.op, r.req_id, srv,
			    "put to '%s': the log could not be synced: %s",
			    r.name, qp_errmsg());
		}
	}
	if (items != stacki) {
		free(items);
	}
	if (ids != stackids) {
		free(ids);
	}
	if (h == QPS_REPLY) {
		nng_msg_free(req);
	}
	return h;
}

/* ---- start and stop ---- */

int
qps_ops_start(const qps_config *cfg)
{
	pthread_condattr_t ca;
	int rv;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ops.gone, &ca);
	pthread_condattr_destroy(&ca);
	qps_thread_init(); /* the main thread's drain and shutdown */
	ops.cfg = cfg;
	ops.pid = (uint32_t) getpid();
	ops.lim.max_message = cfg->max_message;
	ops.lim.max_batch = QPI_WIRE_DEFAULT_BATCH;
	ops.lim.lease_ms = (uint64_t) cfg->lease_ms;
	if ((rv = qps_hosted_start(cfg, &ops.mu)) != QP_OK) {
		return rv;
	}
	if ((rv = qps_timer_start(&ops.mu, NULL)) != QP_OK) {
		qps_log(QPS_LOG_ERROR, "cannot start the timer thread");
		qps_hosted_fini();
		return rv;
	}
	return QP_OK;
}

void
qps_ops_drain(void)
{
	uint32_t n = 0;

	pthread_mutex_lock(&ops.mu);
	ops.draining = true;
	/* Parked requests are answered: their clients send them again to
	 * the next server. */
	for (qps_q *q = qps_q_first(); q != NULL; q = qps_q_next(q)) {
		for (int k = 0; k < QPS_NWAIT; k++) {
			n += q->nwait[k];
		}
		ops_fail_waits(q, QP_ECONNRESET,
		    "is no longer served: the server is shutting down");
	}
	qps_pipes_drain();
	pthread_mutex_unlock(&ops.mu);
	qps_q_sync_drain(); /* durable puts: their replies go out now */
	if (n > 0) {
		qps_log(QPS_LOG_INFO, "answered %u waiting requests", n);
	}
}

void
qps_ops_linger(int64_t ms)
{
	struct timespec ts = qpi_ts_from_ns(qpi_now_ns() + ms * 1000000);

	pthread_mutex_lock(&ops.mu);
	while (ops.nconns > 0) {
		if (pthread_cond_timedwait(&ops.gone, &ops.mu, &ts)
		    == ETIMEDOUT) {
			break;
		}
	}
	pthread_mutex_unlock(&ops.mu);
}

static void
conn_drop_cb(qps_hnode *n, void *arg)
{
	ops_conn *c = (ops_conn *) n;
	uint64_t *total = arg;

	while (c->waits != NULL) {
		wait_finish(c->waits, NULL);
	}
	for (qps_q *q = qps_q_first(); q != NULL; q = qps_q_next(q)) {
		*total += qps_q_release_owner(q, c->owner);
	}
}

void
qps_ops_shutdown(void)
{
	uint64_t total = 0;

	pthread_mutex_lock(&ops.mu);
	ops.shutdown = true; /* from here no request parks on the sync */
	pthread_mutex_unlock(&ops.mu);
	qps_q_sync_drain(); /* durable puts' replies waiting for the disk */
	pthread_mutex_lock(&ops.mu);
	qps_htab_each(&ops.conns, conn_drop_cb, &total);
	pthread_mutex_unlock(&ops.mu);
	if (total > 0) {
		qps_log(QPS_LOG_INFO,
		    "returned %llu leased items to their queues",
		    (unsigned long long) total);
	}
}

static void
conn_free_cb(qps_hnode *n, void *arg)
{
	ops_conn *c = (ops_conn *) n;

	(void) arg;
	qps_htab_each(&c->work, work_free_cb, NULL);
	qps_htab_fini(&c->work);
	free(c);
}

void
qps_ops_fini(void)
{
	qps_timer_stop();
	pthread_mutex_lock(&ops.mu);
	qps_htab_each(&ops.conns, conn_free_cb, NULL);
	qps_htab_fini(&ops.conns);
	qps_pipes_fini();
	qps_dedup_fini();
	pthread_mutex_unlock(&ops.mu);
	qps_hosted_fini();
}
