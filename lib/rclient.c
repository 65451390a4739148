/*
 * rclient.c - the core of a client of qpiped (rclient.h): opening a
 * handle, one request and its reply through reconnects, the acker, close,
 * and the handle's life across fork(). Each call goes out on the call
 * engine (call.c), whose every new connection opens its session (hello,
 * auth with a token: session.c) before any call uses it; when the
 * connection drops, the call sends the same request (same id and seq, a
 * blocking one with the time it has left) once a connection is back,
 * within the reconnect window. A blocking get is parked by the server,
 * in slices of QPI_RQ_SLICE_MS when it waits for ever. A plain get's item
 * is confirmed on the next get, or by the acker (a thread started at the
 * first get) after QPI_RQ_ACK_DELAY_MS, or at close. In a fork()ed child
 * the first call forgets the parent's connection (its own copy of the
 * descriptor only) and dials its own: a new client id, no leases, fresh
 * seqs; on the nng driver (tls+tcp://, QPIPE_TRANSPORT=nng) the child
 * gets a clear error instead. Locking: r->mu guards the lease lists, the
 * seqs and the acker's state, never held while waiting for the network.
 */
#include "rclient.h"
#include "futex.h"
#include "session.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* A plain get's confirmation waits this long for the next get to carry
 * it before the acker sends it on its own. The acker sleeps on a timer
 * that a get moves on (when it would fire within half the delay): while
 * gets come faster than that, it never wakes; a get costs a thread's
 * wake-up neither each time nor every delay. */
#define QPI_RQ_ACK_DELAY_MS 10

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

/* ---- the session on each new connection ---- */

/* The call engine's hook: hello and auth on connection l. */
static int
rq_hook(void *arg, qpi_link *l, qpi_link_rd *rd, int64_t deadline_ns)
{
	qpi_rq *r = arg;
	qpi_ce_hs x = {.l = l, .rd = rd, .deadline_ns = deadline_ns};
	char cname[64];
	qpi_wire_limits lim;
	int rv;

	snprintf(cname, sizeof(cname), "libqpipe %s", qp_version());
	qpi_session_client c = {
	    .url = r->url,
	    .name = r->name,
	    .client_id = r->id,
	    .client_name = cname,
	    .token = &r->token,
	    .refused = "refused our token",
	};
	memset(&lim, 0, sizeof(lim));
	if ((rv = qpi_session_open(&c, qpi_ce_hs_xfn, &x, &lim)) != QP_OK) {
		return rv;
	}
	if (!r->have_lim) {
		r->lim = lim;
		if (r->lim.max_batch == 0) {
			r->lim.max_batch = QPI_WIRE_DEFAULT_BATCH;
		}
		if (r->lim.max_message == 0) {
			r->lim.max_message = QP_DEFAULT_MAX_MESSAGE;
		}
		r->have_lim = true;
	}
	return QP_OK;
}

/* Dials r's connection (a new one, in this process). */
static int
rq_connect(qpi_rq *r)
{
	int rv;

	if ((rv = qpi_ce_open(&r->ce, &r->addr, &r->opts,
	         (size_t) QP_DEFAULT_MAX_MESSAGE + QPI_WIRE_SLACK, rq_hook, r,
	         qpi_deadline_ns(r->connect_ms)))
	    != QP_OK) {
		r->ce = NULL;
		return rv;
	}
	qpi_ce_set_max(r->ce, (size_t) r->lim.max_message + QPI_WIRE_SLACK);
	return QP_OK;
}

/* The state that belongs to one process: locks, lists, ids (r->pid is the
 * caller's to set, once the state is ready). */
static int
rq_state_init(qpi_rq *r)
{
	pthread_mutex_init(&r->mu, NULL);
	memset(&r->held, 0, sizeof(r->held));
	memset(&r->unacked, 0, sizeof(r->unacked));
	r->tfd = -1;
	r->acker_due = 0;
	r->acker_on = r->stopping = false;
	r->have_last = false;
	r->seq = r->req_id = 0;
	return qpi_random(r->id, sizeof(r->id));
}

int
qpi_rq_new(qpi_rq **rp, const qpi_addr *a, const qp_conn_opts *o)
{
	qpi_rq *r;
	int rv;

	if ((r = calloc(1, sizeof(*r))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	r->tfd = -1;
	r->addr = *a;
	snprintf(r->url, sizeof(r->url), "%s", a->url);
	snprintf(r->name, sizeof(r->name), "%s", a->name);
	r->nng = qpi_link_uses_nng(a);
	r->reconnect_ms = rq_env_ms("QPIPE_RECONNECT_MS", QPI_RQ_RECONNECT_MS);
	r->connect_ms = o != NULL && o->connect_timeout > 0
	    ? o->connect_timeout
	    : QPI_RQ_CALL_MS;
	r->lim.max_message = QP_DEFAULT_MAX_MESSAGE;
	r->lim.max_batch = QPI_WIRE_DEFAULT_BATCH;
	r->pid = getpid();
	if (o != NULL) {
		/* Redials read the TLS settings again: keep a copy. */
		const char *src[4]
		    = {o->tls_ca, o->tls_cert, o->tls_key, o->tls_server_name};
		const char **dst[4] = {&r->opts.tls_ca, &r->opts.tls_cert,
		    &r->opts.tls_key, &r->opts.tls_server_name};
		for (int i = 0; i < 4; i++) {
			if (src[i] != NULL
			    && (*dst[i] = r->strs[i] = strdup(src[i]))
			        == NULL) {
				qpi_rq_free(r);
				return qpi_err(QP_ENOMEM, "out of memory");
			}
		}
		r->opts.tls_insecure_skip_verify = o->tls_insecure_skip_verify;
	}
	if ((rv = rq_state_init(r)) != QP_OK
	    || (rv = qpi_token_of(&r->token, o)) != QP_OK
	    || (rv = rq_connect(r)) != QP_OK) {
		qpi_rq_free(r); /* leaves the message as it is */
		return rv;
	}
	*rp = r;
	return QP_OK;
}

/* ---- fork() ---- */

/* In a forked child: replaces the parent's connection and state with the
 * child's own. Threads of the child that call at once wait for the first
 * (bounded: a dial's time). */
static int
rq_refork(qpi_rq *r)
{
	pid_t me = getpid(), seen = __atomic_load_n(&r->pid, __ATOMIC_ACQUIRE);
	int rv;

	if (r->nng) {
		return qpi_err(QP_EINVAL,
		    "%s/%s was opened in process %ld: a tls+tcp:// (nng) "
		    "handle does not survive fork(); open it in this process",
		    r->url, r->name, (long) seen);
	}
	if (seen == -1
	    || !__atomic_compare_exchange_n(&r->pid, &seen, -1, false,
	        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		/* Another thread of this process is at it: wait for it (a
		 * dial's time at most). pid_t and uint32_t may alias. */
		int64_t until = qpi_deadline_ns(2 * QPI_RQ_CALL_MS);
		while ((seen = __atomic_load_n(&r->pid, __ATOMIC_ACQUIRE))
		    == -1) {
			if (qpi_futex_wait(
			        (uint32_t *) &r->pid, (uint32_t) -1, until)
			    == QP_ETIMEDOUT) {
				return qpi_err(QP_ETIMEDOUT,
				    "%s/%s: another thread's reconnect after "
				    "fork() did not finish",
				    r->url, r->name);
			}
		}
		return QP_OK;
	}
	/* The parent's connection, locks and leases stay the parent's: only
	 * the child's copy of the descriptor is closed, nothing locked. */
	qpi_ce_forget(r->ce);
	r->ce = NULL;
	qpi_ids_free(&r->held);
	qpi_ids_free(&r->unacked);
	if (r->tfd >= 0) {
		close(r->tfd); /* the parent's timer: our copy only */
	}
	if ((rv = rq_state_init(r)) != QP_OK
	    || (rv = rq_connect(r)) != QP_OK) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", qp_errmsg());
		r->closed = true; /* nothing to close: free releases it */
		__atomic_store_n(&r->pid, me, __ATOMIC_RELEASE);
		qpi_futex_wake((uint32_t *) &r->pid, INT32_MAX);
		return qpi_err(rv, "%s after fork(): %s", r->url, msg);
	}
	__atomic_store_n(&r->pid, me, __ATOMIC_RELEASE);
	qpi_futex_wake((uint32_t *) &r->pid, INT32_MAX);
	return QP_OK;
}

int
qpi_rq_check(qpi_rq *r)
{
	int rv;

	if (__atomic_load_n(&r->pid, __ATOMIC_ACQUIRE) != qpi_self_pid()
	    && !r->closed && (rv = rq_refork(r)) != QP_OK) {
		return rv;
	}
	if (r->closed || r->ce == NULL) {
		return qpi_err(
		    QP_ECLOSED, "queue %s/%s is closed", r->url, r->name);
	}
	return QP_OK;
}

/* ---- one request, one reply ---- */

void
qpi_rq_call_init(rq_call *c, qpi_rq *r, uint32_t op, int64_t deadline_ns)
{
	memset(c, 0, sizeof(*c));
	c->req.op = op;
	c->deadline_ns = deadline_ns;
	/* r->name was checked at open: 1..QP_NAME_MAX bytes. */
	memcpy(c->req.name, r->name, strlen(r->name) + 1);
}

void
qpi_rq_call_done(rq_call *c)
{
	if (c->buf.mem != NULL) {
		qpi_ce_reply_free(c->ce, &c->buf);
	}
}

/* About how many bytes req encodes to (at least): its lease ids and
 * items, and room for the rest. */
static size_t
rq_req_size(const qpi_wire_req *req)
{
	size_t n = 128 + strlen(req->name) + (size_t) req->nids * 9;

	for (uint32_t i = 0; i < req->nitems; i++) {
		n += req->items[i].len + 10;
	}
	return n;
}

int
qpi_rq_do(qpi_rq *r, rq_call *c)
{
	int64_t lost_since = 0;
	int rv;

	pthread_mutex_lock(&r->mu);
	c->req.req_id = ++r->req_id;
	if (qpi_wire_op_dedup(c->req.op)) {
		memcpy(c->req.client_id, r->id, sizeof(r->id));
		c->req.seq = ++r->seq;
	}
	pthread_mutex_unlock(&r->mu);

	for (;;) {
		uint8_t enc[256]; /* a request without items fits */
		size_t need = rq_req_size(&c->req), kcap = 0;
		uint8_t *kept = NULL;
		qpi_wire_buf b;
		int64_t now = qpi_now_ns(), wait_ms, window;
		int sent = QP_OK;

		if (c->deadline_ns != 0) {
			int64_t left = qpi_left_ns(c->deadline_ns, now);
			/* Round up: a timeout never shrinks to 0 by rounding
			 * while time is left. */
			c->req.timeout = left == INT64_MAX
			    ? QPI_RQ_SLICE_MS
			    : (left + 999999) / 1000000;
			wait_ms = c->req.timeout + QPI_RQ_SLACK_MS;
		} else {
			wait_ms = QPI_RQ_CALL_MS;
		}
		if (need > sizeof(enc)) {
			kept = qpi_rq_keep_get(r, need, &kcap);
		}
		if (kept != NULL) {
			qpi_wire_buf_on(&b, kept, kcap);
		} else {
			qpi_wire_buf_on(&b, enc, sizeof(enc));
		}
		rv = qpi_wire_encode_req(&c->req, &b);
		if (rv == QP_OK) {
			/* Sending waits for a connection: at most what is left
			 * of the reconnect window. */
			window = r->reconnect_ms
			    - (lost_since != 0 ? now / 1000000 - lost_since
			                       : 0);
			sent = qpi_ce_call(r->ce, b.data, b.len,
			    now + (window > 0 ? window : 1) * 1000000,
			    now + wait_ms * 1000000, &c->buf, &c->conn);
		}
		qpi_wire_buf_free(&b);
		if (kept != NULL) {
			qpi_rq_keep_put(r, kept, kcap);
		}
		if (rv != QP_OK) {
			return rv; /* the request cannot be encoded */
		}
		rv = sent;
		if (rv == QP_OK) {
			c->ce = r->ce;
			rv = qpi_wire_decode_rep(
			    c->buf.data, c->buf.len, &r->lim, &c->rep);
			if (rv != QP_OK) {
				rv = qpi_err(QP_EPROTO,
				    "bad reply from %s: %s", r->url,
				    qp_errmsg());
			} else if (c->rep.req_id != c->req.req_id) {
				rv = qpi_err(QP_EPROTO,
				    "%s answered request %llu to request %llu",
				    r->url, (unsigned long long) c->rep.req_id,
				    (unsigned long long) c->req.req_id);
			} else if (c->rep.status == QP_ECONNRESET) {
				/* The server is shutting down: drop this
				 * connection and send the request again to
				 * the next one, within the window. */
				qpi_ce_drop(r->ce, c->conn);
				qpi_rq_call_done(c);
				rv = QP_ECONNRESET;
				goto lost;
			}
			if (rv != QP_OK) {
				qpi_rq_call_done(c);
			}
			return rv;
		}
		if (rv == QP_ECONNREFUSED) {
			return qpi_err(QP_ECONNRESET,
			    "lost connection to %s: no connection for %lld ms "
			    "(%s)",
			    r->url, (long long) r->reconnect_ms, qp_errmsg());
		}
		if (rv != QP_ECONNRESET && rv != QP_ETIMEDOUT) {
			return rv;
		}
	lost:
		/* The connection dropped (or went silent): send the same
		 * request again once it is back, within the window. */
		if (c->once) {
			return qpi_err(QP_ECONNRESET,
			    "lost the connection to %s", r->url);
		}
		if (lost_since == 0) {
			lost_since = qpi_now_ms();
		} else if (qpi_now_ms() - lost_since > r->reconnect_ms) {
			return qpi_err(QP_ECONNRESET,
			    "lost connection to %s for %lld ms", r->url,
			    (long long) r->reconnect_ms);
		}
		if (c->deadline_ns != 0 && c->deadline_ns != INT64_MAX
		    && qpi_remaining_ns(c->deadline_ns) == 0
		    && rv == QP_ETIMEDOUT) {
			/* Our own deadline passed with the server silent. */
			return qpi_err(QP_ECONNRESET,
			    "no answer from %s within %lld ms", r->url,
			    (long long) wait_ms);
		}
	}
}

int
qpi_rq_run(qpi_rq *r, rq_call *c)
{
	int rv = qpi_rq_do(r, c);

	if (rv != QP_OK || c->rep.status == QP_OK) {
		return rv;
	}
	return qpi_err(c->rep.status, "%s/%s: %s", r->url, r->name,
	    c->rep.errmsg[0] != '\0' ? c->rep.errmsg
	                             : qp_strerror(c->rep.status));
}

int
qpi_rq_do_status(qpi_rq *r, rq_call *c, int retry)
{
	int rv;

	for (;;) {
		rv = qpi_rq_run(r, c);
		qpi_rq_call_done(c);
		if (rv != retry || c->deadline_ns != INT64_MAX) {
			return rv;
		}
	}
}

/* ---- confirmations ---- */

uint32_t
qpi_rq_take_acks(
    qpi_rq *r, uint64_t *stack, size_t cap, uint64_t **idsp, size_t *capp)
{
	uint32_t n
	    = (uint32_t) (r->unacked.n > r->lim.max_batch ? r->lim.max_batch
	                                                  : r->unacked.n);

	*idsp = n <= cap ? stack : NULL;
	*capp = 0;
	if (n == 0
	    || (*idsp == NULL
	        && (*idsp = qpi_keep_get(&r->keep, n * sizeof(uint64_t), capp))
	            == NULL)) {
		return 0;
	}
	memcpy(*idsp, r->unacked.id, n * sizeof(uint64_t));
	qpi_ids_drop(&r->unacked, 0, n);
	return n;
}

void *
qpi_rq_keep_get(qpi_rq *r, size_t size, size_t *capp)
{
	void *p;

	pthread_mutex_lock(&r->mu);
	p = qpi_keep_get(&r->keep, size, capp);
	pthread_mutex_unlock(&r->mu);
	return p;
}

void
qpi_rq_keep_put(qpi_rq *r, void *p, size_t cap)
{
	pthread_mutex_lock(&r->mu);
	qpi_keep_put(&r->keep, p, cap);
	pthread_mutex_unlock(&r->mu);
}

void
qpi_rq_acks_done(qpi_rq *r, uint64_t *ids, const uint64_t *stack, size_t cap)
{
	if (ids != stack) {
		qpi_keep_put(&r->keep, ids, cap);
	}
}

/* Sends one batch of confirmations (whatever the answer: an item not
 * confirmed comes again, at least once). r->mu held; released meanwhile.
 * False when there was none. */
static bool
rq_ack_send_locked(qpi_rq *r)
{
	uint64_t stack[16], *ids;
	size_t cap;
	uint32_t n = qpi_rq_take_acks(r, stack, 16, &ids, &cap);
	rq_call c;

	if (n == 0) {
		return false;
	}
	pthread_mutex_unlock(&r->mu);
	qpi_rq_call_init(&c, r, QPI_OP_ACK, 0);
	c.req.ids = ids;
	c.req.nids = n;
	c.req.ids_cap = n;
	qpi_rq_do(r, &c);
	qpi_rq_call_done(&c);
	pthread_mutex_lock(&r->mu);
	qpi_rq_acks_done(r, ids, stack, cap);
	return true;
}

/* Sets the acker's timer to fire at monotonic time at_ns (a time past:
 * at once). r->mu held. */
static void
rq_acker_set(qpi_rq *r, int64_t at_ns)
{
	struct itimerspec its = {.it_value
	    = {.tv_sec = at_ns / 1000000000, .tv_nsec = at_ns % 1000000000}};

	if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) {
		its.it_value.tv_nsec = 1; /* zero would disarm it */
	}
	r->acker_due = at_ns;
	(void) timerfd_settime(r->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Waits for the acker's timer with r->mu released. */
static void
rq_acker_sleep(qpi_rq *r)
{
	uint64_t fired;

	pthread_mutex_unlock(&r->mu);
	while (read(r->tfd, &fired, sizeof(fired)) < 0 && errno == EINTR) {
	}
	pthread_mutex_lock(&r->mu);
}

/* The acker: sends the confirmations that waited QPI_RQ_ACK_DELAY_MS for
 * a get to carry them. It sleeps on its timer, which qpi_rq_got sets
 * when a get leaves confirmations behind and none was set within half
 * the delay; with none to send it sleeps until a get sets it. */
static void *
rq_acker(void *arg)
{
	qpi_rq *r = arg;
	const int64_t delay = QPI_RQ_ACK_DELAY_MS * 1000000;

	prctl(PR_SET_NAME, "qpipe-acker", 0, 0, 0);
	pthread_mutex_lock(&r->mu);
	while (!r->stopping) {
		if (r->unacked.n == 0) {
			r->acker_due = 0; /* the next get sets the timer */
			rq_acker_sleep(r);
		} else if (qpi_now_ns() - r->unacked_ns < delay) {
			rq_acker_set(r, r->unacked_ns + delay);
			rq_acker_sleep(r);
		} else {
			rq_ack_send_locked(r);
		}
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

void
qpi_rq_got(qpi_rq *r, const qpi_wire_item *items, uint32_t n)
{
	int64_t now = r->lease_mode ? 0 : qpi_now_ns(); /* for the acker */

	pthread_mutex_lock(&r->mu);
	if (!r->lease_mode && r->unacked.n == 0) {
		r->unacked_ns = now;
	}
	for (uint32_t i = 0; i < n; i++) {
		r->last_deliveries = items[i].deliveries;
		r->have_last = true;
		/* Out of memory: the lease runs out by itself and the item
		 * comes again; the caller has it either way. */
		(void) qpi_ids_push(r->lease_mode ? &r->held : &r->unacked,
		    items[i].lease_id, items[i].deliveries);
	}
	if (!r->lease_mode && n > 0) {
		const int64_t delay = QPI_RQ_ACK_DELAY_MS * 1000000;
		if (!r->acker_on && !r->stopping) {
			/* Without the thread, close still confirms them. */
			if (r->tfd < 0) {
				r->tfd = timerfd_create(
				    CLOCK_MONOTONIC, TFD_CLOEXEC);
			}
			r->acker_on = r->tfd >= 0
			    && pthread_create(&r->acker, NULL, rq_acker, r)
			        == 0;
		}
		/* Due at most a delay after the oldest confirmation left
		 * here, and moved on only when it comes within half of it:
		 * a timer set once per half delay, not per get. */
		if (r->acker_on
		    && (r->acker_due == 0 || r->acker_due - now < delay / 2)) {
			rq_acker_set(r, r->unacked_ns + delay);
		}
	}
	pthread_mutex_unlock(&r->mu);
}

/* ---- close ---- */

int
qpi_rq_close(qpi_rq *r)
{
	bool join;

	if (r->closed) {
		return QP_OK;
	}
	r->closed = true;
	if (r->pid != getpid() || r->ce == NULL) {
		/* A forked child's copy: the connection is the parent's. */
		return QP_OK;
	}
	pthread_mutex_lock(&r->mu);
	r->stopping = true;
	join = r->acker_on;
	r->acker_on = false;
	if (join) {
		rq_acker_set(r, 0); /* fires at once */
	}
	pthread_mutex_unlock(&r->mu);
	if (join) {
		pthread_join(r->acker, NULL);
	}
	/* What the gets and the acker did not confirm goes now. */
	pthread_mutex_lock(&r->mu);
	while (rq_ack_send_locked(r)) {
	}
	pthread_mutex_unlock(&r->mu);
	/* Items held in worker mode go back: their tasks were not done. */
	while (r->held.n > 0) {
		rq_call c;
		qpi_rq_call_init(&c, r, QPI_OP_RELEASE, 0);
		c.req.lease_id = r->held.id[0];
		if (qpi_rq_do(r, &c) != QP_OK) {
			break; /* the dropped connection gives them back */
		}
		qpi_rq_call_done(&c);
		qpi_ids_drop(&r->held, 0, 1);
	}
	qpi_ce_close(r->ce);
	return QP_OK;
}

void
qpi_rq_free(qpi_rq *r)
{
	if (r == NULL) {
		return;
	}
	qpi_rq_close(r);
	if (r->tfd >= 0) {
		close(r->tfd); /* in a forked child, its own copy */
	}
	if (r->pid == getpid()) {
		qpi_ce_free(r->ce);
		pthread_mutex_destroy(&r->mu);
	} else if (!r->nng) {
		/* A forked child's copy: close its descriptor, leave the
		 * locks (a thread of the parent may have held one). */
		qpi_ce_forget(r->ce);
	}
	qpi_ids_free(&r->held);
	qpi_ids_free(&r->unacked);
	qpi_keep_fini(&r->keep);
	qpi_token_clear(&r->token);
	for (int i = 0; i < 4; i++) {
		free(r->strs[i]);
	}
	free(r);
}
