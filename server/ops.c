/*
 * ops.c - qpiped's request layer, where the transport hands every request
 * (qps_ops_handle): it decodes it (proto/wire.h), finds its connection
 * (conn.c), refuses what the connection may not do yet (over the limit,
 * not authenticated: session.c, shutting down), lets dedup.c say whether
 * a request sent again was applied already, and gives it to the handler
 * of its family: session.c (hello, auth, ping), qdata.c (put, put_many,
 * get, join, complete), lease.c (ack, release, touch, task_done), admin.c
 * (qsize, stat, list, create, delete), pipes.c (pipe_*). A durable put's reply
 * waits for its log's sync without the lock (sync.c). A request is decoded
 * into arrays on the stack, or for a batch into the thread's own arrays
 * (ops_scratch), which handlers copy when they keep the request.
 *
 * Locking: one mutex (ops.mu) guards the request layer, the connections,
 * dedup.c, the registry and the timer heap: the timer thread and the
 * watchers take it too. Under it, a queue's shared-memory lock is only
 * tried for QPS_LOCK_BUDGET_NS, never waited for (see registry.c): a
 * local process stopped while it holds one delays only its queue's
 * requests. Replies are handed to the transport (qps_worker_reply) with
 * it held: sending only queues the reply.
 */
#include "qps.h"

#include <stdlib.h>
#include <string.h>

/* Items, lease ids decoded on the stack before the heap is used. */
#define OPS_STACK 16

/* A thread's arrays for requests of more items or lease ids than the
 * stack holds, as large as the largest batch it has decoded (at most
 * qps_limits.max_batch of each), freed when the thread ends: a batch is
 * decoded once, into them, with no allocation. */
typedef struct ops_scratch {
	qpi_wire_item *items;
	uint64_t *ids;
	uint32_t icap, dcap;
} ops_scratch;

static struct {
	pthread_mutex_t mu;
	pthread_cond_t gone; /* CLOCK_MONOTONIC: a connection left */
	bool draining; /* SIGTERM: new work is refused */
	bool shutdown;
	pthread_once_t key_once;
	pthread_key_t key; /* each thread's ops_scratch */
	bool key_ok;
} ops = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .key_once = PTHREAD_ONCE_INIT,
};

typedef qps_handled (*qps_handler)(const qps_req *rq, nng_msg **repp);

bool
qps_ops_conn_add(uint32_t conn_id)
{
	bool keep = false;

	qps_thread_init();
	pthread_mutex_lock(&ops.mu);
	/* Shutting down: no new connection (closing the listeners would
	 * close the connections they accepted, with their replies in
	 * flight). */
	if (!ops.draining) {
		keep = qps_conn_open(conn_id);
	}
	{ /* metrics: admitted, or refused and why */
		qps_conn *c = keep ? qps_conn_get(conn_id) : NULL;
		if (!keep || (c != NULL && c->over_limit)) {
			qps_metrics_conn_refused(ops.draining
			        ? QPS_REFUSED_SHUTDOWN
			        : QPS_REFUSED_LIMIT);
		} else {
			qps_metrics_conn_opened();
		}
	}
	pthread_mutex_unlock(&ops.mu);
	return keep;
}

void
qps_ops_conn_remove(uint32_t conn_id)
{
	qps_thread_init();
	pthread_mutex_lock(&ops.mu);
	qps_conn_close(conn_id);
	pthread_cond_broadcast(&ops.gone);
	pthread_mutex_unlock(&ops.mu);
}

bool
qps_ops_conn_settled(uint32_t conn_id, const char **why)
{
	bool ok;

	qps_thread_init();
	pthread_mutex_lock(&ops.mu);
	ok = qps_conn_settled(conn_id, why);
	pthread_mutex_unlock(&ops.mu);
	return ok;
}

/* By op number: the handler of the op's family (NULL: an op this server
 * does not know), and whether the op finishes work rather than starts it
 * (served while draining). */
static const struct {
	qps_handler fn;
	bool finishes;
} ops_tab[QPI_OP_MAX + 1] = {
    [QPI_OP_HELLO] = {qps_session_handle, false},
    [QPI_OP_AUTH] = {qps_session_handle, false},
    [QPI_OP_PING] = {qps_session_handle, true},
    [QPI_OP_PUT] = {qps_qdata_handle, false},
    [QPI_OP_PUT_MANY] = {qps_qdata_handle, false},
    [QPI_OP_GET] = {qps_qdata_handle, false},
    [QPI_OP_JOIN] = {qps_qdata_handle, false},
    [QPI_OP_COMPLETE] = {qps_qdata_handle, true},
    [QPI_OP_ACK] = {qps_lease_handle, true},
    [QPI_OP_RELEASE] = {qps_lease_handle, true},
    [QPI_OP_TOUCH] = {qps_lease_handle, true},
    [QPI_OP_TASK_DONE] = {qps_lease_handle, true},
    [QPI_OP_QSIZE] = {qps_admin_handle, false},
    [QPI_OP_STAT] = {qps_admin_handle, false},
    [QPI_OP_LIST] = {qps_admin_handle, false},
    [QPI_OP_CREATE] = {qps_admin_handle, false},
    [QPI_OP_DELETE] = {qps_admin_handle, false},
    [QPI_OP_PIPE_OPEN] = {qps_pipe_handle, false},
    [QPI_OP_PIPE_SEND] = {qps_pipe_handle, false},
    [QPI_OP_PIPE_RECV] = {qps_pipe_handle, false},
    [QPI_OP_PIPE_POLL] = {qps_pipe_handle, false},
    [QPI_OP_PIPE_CLOSE] = {qps_pipe_handle, false},
};

/* Under the lock: dedup, then apply. */
static qps_handled
ops_handle_locked(qps_worker *w, uint32_t pipe_id, nng_msg *req,
    qpi_wire_req *r, nng_msg **repp)
{
	static const uint8_t zero[QPI_WIRE_ID_LEN];
	qps_client *cl = NULL;
	qps_dedup_prev prev;
	qps_handled h;
	qps_conn *c;
	uint32_t base = 0;
	qps_handler fn = r->op <= QPI_OP_MAX ? ops_tab[r->op].fn : NULL;

	if (ops.shutdown) {
		/* The last replies are out and the workers are about to go:
		 * nothing is applied now, and nothing may park (a durable
		 * ack's sync would answer a worker already freed). An ack
		 * left unapplied is a lease the shutdown gave back. */
		*repp = NULL;
		return QPS_REPLY;
	}
	if ((c = qps_conn_get(pipe_id)) == NULL) {
		/* Its connection is gone (or memory is): nobody to answer. */
		*repp = NULL;
		return QPS_REPLY;
	}
	if (c->over_limit) {
		/* PROTOCOL.md: the text clients show ("server at its
		 * connection limit"); they do not redial at once. */
		*repp = qps_rep_error(r->op, r->req_id, QP_ELIMIT,
		    "server at its connection limit (%u connections, "
		    "--max-connections)",
		    qps_cfg->max_connections);
		qps_worker_close_after(w);
		return QPS_REPLY;
	}
	if (qps_session_refuse(c, r, pipe_id, repp)) {
		return QPS_REPLY;
	}
	if (fn == NULL) {
		*repp = qps_rep_error(r->op, r->req_id, QP_ENOTSUP,
		    "%s is not served by this version of qpiped",
		    qpi_wire_op_name(r->op));
		return QPS_REPLY;
	}
	if (ops.draining && !ops_tab[r->op].finishes) {
		qps_q *q;
		if (r->op == QPI_OP_GET && r->nids > 0
		    && (q = qps_q_find(r->name)) != NULL) {
			qps_lease_ack_ids(c, q, r);
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
		if (r->op == QPI_OP_COMPLETE
		    && qps_q_find(r->results) == NULL) {
			/* The same for a completion's results queue: its
			 * result, if it went in, is tagged with this seq. */
			(void) qps_q_open(r->results, false, &q);
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
				*repp = qps_rep_bytes(prev.rep, prev.replen);
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
				qps_wait_finish(prev.wait, NULL);
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
	h = fn(
	    &(qps_req) {
	        .w = w, .c = c, .req = req, .r = r, .cl = cl, .base = base},
	    repp);
	if (h == QPS_REPLY && cl != NULL) {
		qps_dedup_reply(cl, r->seq, r->op, *repp);
	}
	return h;
}

static void
ops_scratch_free(void *p)
{
	ops_scratch *sc = p;

	free(sc->items);
	free(sc->ids);
	free(sc);
}

static void
ops_key_make(void)
{
	ops.key_ok = pthread_key_create(&ops.key, ops_scratch_free) == 0;
}

/* The calling thread's scratch arrays; NULL if out of memory. */
static ops_scratch *
ops_scratch_get(void)
{
	ops_scratch *sc;

	pthread_once(&ops.key_once, ops_key_make);
	if (!ops.key_ok) {
		return NULL;
	}
	if ((sc = pthread_getspecific(ops.key)) == NULL
	    && (sc = calloc(1, sizeof(*sc))) != NULL
	    && pthread_setspecific(ops.key, sc) != 0) {
		free(sc);
		sc = NULL;
	}
	return sc;
}

/* Makes *ap (of *capp elements of size sz) hold at least n: a power of
 * two, at most max. False if out of memory (*ap as it was). */
static bool
ops_scratch_grow(
    void **ap, uint32_t *capp, uint32_t n, size_t sz, uint32_t max)
{
	uint32_t cap = OPS_STACK * 2;
	void *a;

	if (n <= *capp) {
		return true;
	}
	while (cap < n) {
		cap *= 2;
	}
	cap = cap > max && max >= n ? max : cap;
	free(*ap); /* nothing in it is kept between requests */
	*ap = NULL;
	*capp = 0;
	if ((a = malloc(cap * sz)) == NULL) {
		return false;
	}
	*ap = a;
	*capp = cap;
	return true;
}

/* Sets r's arrays: the thread's scratch where it is larger than the
 * stack's (stacki, stackids). */
static void
ops_req_arrays(qpi_wire_req *r, ops_scratch *sc, qpi_wire_item *stacki,
    uint64_t *stackids)
{
	memset(r, 0, sizeof(*r));
	r->items = sc != NULL && sc->icap > OPS_STACK ? sc->items : stacki;
	r->items_cap
	    = sc != NULL && sc->icap > OPS_STACK ? sc->icap : OPS_STACK;
	r->ids = sc != NULL && sc->dcap > OPS_STACK ? sc->ids : stackids;
	r->ids_cap = sc != NULL && sc->dcap > OPS_STACK ? sc->dcap : OPS_STACK;
}

qps_handled
qps_ops_handle(qps_worker *w, uint32_t pipe_id, nng_msg *req, nng_msg **repp)
{
	qpi_wire_item stacki[OPS_STACK];
	uint64_t stackids[OPS_STACK];
	ops_scratch *sc = ops_scratch_get();
	qpi_wire_req r;
	qps_handled h = QPS_REPLY;
	int rv;

	qps_thread_init();
	ops_req_arrays(&r, sc, stacki, stackids);
	rv = qpi_wire_decode_req(
	    nng_msg_body(req), nng_msg_len(req), &qps_limits, &r);
	if (rv == QP_ETOOBIG && (r.nitems > r.items_cap || r.nids > r.ids_cap)
	    && r.nitems <= qps_limits.max_batch
	    && r.nids <= qps_limits.max_batch) {
		/* A batch larger than this thread has decoded so far: the
		 * scratch grows to it, and the request is decoded again. */
		uint32_t ni = r.nitems, nd = r.nids,
		         max = qps_limits.max_batch;
		if (sc == NULL
		    || !ops_scratch_grow((void **) &sc->items, &sc->icap, ni,
		        sizeof(*sc->items), max)
		    || !ops_scratch_grow((void **) &sc->ids, &sc->dcap, nd,
		        sizeof(*sc->ids), max)) {
			rv = qpi_err(QP_ENOMEM, "out of memory for a batch");
		} else {
			ops_req_arrays(&r, sc, stacki, stackids);
			rv = qpi_wire_decode_req(nng_msg_body(req),
			    nng_msg_len(req), &qps_limits, &r);
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
		    && qps_sync_park(w, *repp, r.op, r.req_id, r.name,
		        r.client_id, r.seq)) {
			*repp = NULL;
			nng_msg_free(req);
			h = QPS_PARKED;
		} else {
			srv = qps_sync_deferred();
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
	return h;
}

/* ---- metrics: a scrape reads under the lock ---- */

void
qps_ops_locked(void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&ops.mu);
	fn(arg);
	pthread_mutex_unlock(&ops.mu);
}

/* ---- start and stop ---- */

int
qps_ops_start(const qps_config *cfg)
{
	int rv;

	qpi_cond_init(&ops.gone);
	qps_thread_init(); /* the main thread's drain and shutdown */
	qps_cfg = cfg;
	qps_limits.max_message = cfg->max_message;
	qps_limits.max_batch = QPI_WIRE_DEFAULT_BATCH;
	qps_limits.lease_ms = (uint64_t) cfg->lease_ms;
	if ((rv = qps_registry_start(cfg, &ops.mu, qps_wait_dispatch))
	    != QP_OK) {
		return rv;
	}
	if (cfg->data_dir != NULL) {
		qps_sync_start(&ops.mu);
	}
	if ((rv = qps_timer_start(&ops.mu)) != QP_OK) {
		qps_log(QPS_LOG_ERROR, "cannot start the timer thread");
		qps_registry_fini();
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
	for (qps_q *q = qps_q_first(); q != NULL; q = q->next) {
		for (int k = 0; k < QPS_NWAIT; k++) {
			n += q->wl[k].n;
		}
		qps_wait_fail_all(q, QP_ECONNRESET,
		    "is no longer served: the server is shutting down");
	}
	qps_pipes_drain();
	pthread_mutex_unlock(&ops.mu);
	qps_sync_drain(); /* durable puts: their replies go out now */
	if (n > 0) {
		qps_log(QPS_LOG_INFO, "answered %u waiting requests", n);
	}
}

void
qps_ops_linger(int64_t ms)
{
	int64_t deadline = qpi_now_ns() + ms * 1000000;

	pthread_mutex_lock(&ops.mu);
	while (qps_conns_count() > 0
	    && qpi_cond_wait(&ops.gone, &ops.mu, deadline) == QP_OK) {
	}
	pthread_mutex_unlock(&ops.mu);
}

void
qps_ops_shutdown(void)
{
	uint64_t total;

	pthread_mutex_lock(&ops.mu);
	ops.shutdown = true; /* from here no request parks on the sync */
	pthread_mutex_unlock(&ops.mu);
	qps_sync_drain(); /* durable puts' replies waiting for the disk */
	pthread_mutex_lock(&ops.mu);
	total = qps_conns_drop_all();
	pthread_mutex_unlock(&ops.mu);
	if (total > 0) {
		qps_log(QPS_LOG_INFO,
		    "returned %llu leased items to their queues",
		    (unsigned long long) total);
	}
}

void
qps_ops_fini(void)
{
	qps_timer_stop();
	pthread_mutex_lock(&ops.mu);
	qps_conns_fini();
	qps_pipes_fini();
	qps_dedup_fini();
	pthread_mutex_unlock(&ops.mu);
	qps_sync_stop();
	qps_registry_fini();
}
