/*
 * net.c - qpiped's nng side: one rep0 socket with a listener per --listen
 * URL, and a pool of workers, each an nng context with one aio that runs a
 * small state machine (RECV -> BUSY -> SEND -> RECV). A request that has
 * to wait (a get on an empty queue, a put on a full one, a join) parks its
 * worker: the context keeps the request's reply route while no thread
 * waits, and a fresh worker starts receiving in its place so that
 * QPS_RECV_TARGET contexts are always receiving. A finished worker whose
 * place is already taken rests on the idle list until it is needed again.
 *
 * Locking: net.mu guards the counters, the idle list and the closing flag.
 * It is never held while calling into nng or the ops layer. A worker's own
 * fields belong to whoever holds it: the aio callback while it receives or
 * sends, the ops layer while it is parked.
 */
#include "qps.h"
#include "sp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Contexts that are kept receiving at all times. */
#define QPS_RECV_TARGET 16
/* Bytes a request may carry beyond the largest item: op, name, fields. */
#define QPS_FRAME_SLACK (64u * 1024u)

enum {
	W_IDLE,
	W_RECV,
	W_BUSY,
	W_PARKED,
	W_SEND,
};

struct qps_worker {
	nng_ctx ctx;
	nng_aio *aio;
	int state;
	uint32_t close_pipe; /* close this pipe once the reply is sent */
	qps_worker *next; /* idle list */
	qps_worker *all_next; /* every worker */
	/* A request of a raw SP connection (spnet.c): no ctx, no aio. */
	qps_spconn *spc;
	uint8_t bt[4 * QPI_SP_MAX_HOPS]; /* its backtrace, echoed back */
	uint8_t btlen;
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* on CLOCK_MONOTONIC: a worker finished */
	nng_socket sock;
	bool open;
	bool closing;
	nng_listener lst[QPS_MAX_LISTEN];
	size_t nlst;
	qps_worker *idle; /* stack of idle workers */
	qps_worker *all; /* every worker allocated */
	uint64_t nall, nidle, nrecv, nbusy, nparked, nsend;
	uint64_t max_parked;
} net = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static void worker_cb(void *arg);

/* ---- workers ---- */

static qps_worker *
worker_new(void)
{
	qps_worker *w = calloc(1, sizeof(*w));

	if (w == NULL) {
		return NULL;
	}
	if (nng_aio_alloc(&w->aio, worker_cb, w) != 0) {
		free(w);
		return NULL;
	}
	if (nng_ctx_open(&w->ctx, net.sock) != 0) {
		nng_aio_free(w->aio);
		free(w);
		return NULL;
	}
	w->state = W_IDLE;
	pthread_mutex_lock(&net.mu);
	w->all_next = net.all;
	net.all = w;
	net.nall++;
	pthread_mutex_unlock(&net.mu);
	return w;
}

/* Starts receivers until QPS_RECV_TARGET contexts receive. Called without
 * net.mu held. */
static void
net_top_up(void)
{
	qps_worker *take[QPS_RECV_TARGET];
	size_t need, got = 0;

	pthread_mutex_lock(&net.mu);
	if (net.closing || net.nrecv >= QPS_RECV_TARGET) {
		pthread_mutex_unlock(&net.mu);
		return;
	}
	need = QPS_RECV_TARGET - (size_t) net.nrecv;
	net.nrecv += need; /* reserved: counted as receiving from now */
	while (got < need && net.idle != NULL) {
		take[got] = net.idle;
		net.idle = net.idle->next;
		net.nidle--;
		got++;
	}
	pthread_mutex_unlock(&net.mu);

	for (size_t i = 0; i < need; i++) {
		qps_worker *w = i < got ? take[i] : worker_new();
		if (w == NULL) {
			pthread_mutex_lock(&net.mu);
			net.nrecv--;
			pthread_mutex_unlock(&net.mu);
			qps_log(QPS_LOG_ERROR,
			    "out of memory for an nng context: serving with "
			    "fewer receivers");
			continue;
		}
		w->state = W_RECV;
		nng_ctx_recv(w->ctx, w->aio);
	}
}

/* A worker that finished (sent, dropped) either receives again, if
 * receivers are short, or rests. Called with net.mu held; returns true if
 * the caller must start a receive on it after unlocking. */
static bool
worker_finish_locked(qps_worker *w)
{
	/* qps_net_drain waits for the last reply in flight: wake it
	 * whichever way this worker goes. */
	pthread_cond_broadcast(&net.cv);
	if (!net.closing && net.nrecv < QPS_RECV_TARGET) {
		net.nrecv++;
		w->state = W_RECV;
		return true;
	}
	w->state = W_IDLE;
	w->next = net.idle;
	net.idle = w;
	net.nidle++;
	return false;
}

static void
worker_send(qps_worker *w, nng_msg *rep)
{
	pthread_mutex_lock(&net.mu);
	if (w->state == W_PARKED) {
		net.nparked--;
	} else {
		net.nbusy--;
	}
	net.nsend++;
	w->state = W_SEND;
	pthread_mutex_unlock(&net.mu);
	nng_aio_set_msg(w->aio, rep);
	nng_ctx_send(w->ctx, w->aio);
}

static void
worker_recv_done(qps_worker *w, int rv)
{
	nng_msg *req, *rep = NULL;

	if (rv != 0) {
		bool again;
		pthread_mutex_lock(&net.mu);
		net.nrecv--;
		if (net.closing || rv == NNG_ECLOSED) {
			worker_finish_locked(w);
			again = false;
		} else {
			net.nrecv++;
			again = true;
		}
		pthread_mutex_unlock(&net.mu);
		if (again) {
			qps_log(QPS_LOG_DEBUG, "receive failed: %s",
			    nng_strerror(rv));
			nng_ctx_recv(w->ctx, w->aio);
		}
		return;
	}
	req = nng_aio_get_msg(w->aio);
	nng_aio_set_msg(w->aio, NULL);
	pthread_mutex_lock(&net.mu);
	net.nrecv--;
	net.nbusy++;
	w->state = W_BUSY;
	pthread_mutex_unlock(&net.mu);

	uint32_t pipe_id = (uint32_t) nng_pipe_id(nng_msg_get_pipe(req));
	if (qps_ops_handle(w, pipe_id, req, &rep) == QPS_PARKED) {
		return;
	}
	if (rep == NULL) {
		/* Nothing to say (cannot even build an error reply): free
		 * the context for the next request. */
		bool again;
		pthread_mutex_lock(&net.mu);
		net.nbusy--;
		again = worker_finish_locked(w);
		pthread_mutex_unlock(&net.mu);
		if (again) {
			nng_ctx_recv(w->ctx, w->aio);
		}
		return;
	}
	worker_send(w, rep);
}

/* Closing a connection a little after its last reply: nng completes a
 * send once the message is queued on the connection, and closing at once
 * could drop it. */
typedef struct net_closer {
	nng_aio *aio;
	uint32_t pipe;
} net_closer;

static void
net_closer_cb(void *arg)
{
	net_closer *c = arg;
	nng_pipe p;

	p.id = c->pipe;
	nng_pipe_close(p);
	nng_aio_reap(c->aio);
	free(c);
}

static void
net_close_later(uint32_t pipe_id)
{
	net_closer *c = calloc(1, sizeof(*c));
	nng_pipe p;

	if (c != NULL && nng_aio_alloc(&c->aio, net_closer_cb, c) == 0) {
		c->pipe = pipe_id;
		nng_sleep_aio(200, c->aio);
		return;
	}
	free(c);
	p.id = pipe_id;
	nng_pipe_close(p);
}

static void
worker_send_done(qps_worker *w, int rv)
{
	bool again;

	if (w->close_pipe != 0) {
		net_close_later(w->close_pipe);
		w->close_pipe = 0;
	}

	if (rv != 0) {
		nng_msg_free(nng_aio_get_msg(w->aio));
		nng_aio_set_msg(w->aio, NULL);
		if (rv != NNG_ECLOSED) {
			qps_log(QPS_LOG_DEBUG, "reply not sent: %s",
			    nng_strerror(rv));
		}
	}
	pthread_mutex_lock(&net.mu);
	net.nsend--;
	again = worker_finish_locked(w);
	pthread_mutex_unlock(&net.mu);
	if (again) {
		nng_ctx_recv(w->ctx, w->aio);
	}
}

static void
worker_cb(void *arg)
{
	qps_worker *w = arg;
	int rv = nng_aio_result(w->aio);

	if (w->state == W_RECV) {
		worker_recv_done(w, rv);
	} else {
		worker_send_done(w, rv);
	}
}

bool
qps_worker_park(qps_worker *w)
{
	pthread_mutex_lock(&net.mu);
	if (net.nparked >= net.max_parked || net.closing) {
		pthread_mutex_unlock(&net.mu);
		return false;
	}
	net.nbusy--;
	net.nparked++;
	w->state = W_PARKED;
	pthread_mutex_unlock(&net.mu);
	if (w->spc == NULL) {
		net_top_up();
	}
	return true;
}

qps_worker *
qps_worker_sp_new(qps_spconn *c, const uint8_t *bt, size_t btlen)
{
	qps_worker *w;

	if (btlen > sizeof(w->bt) || (w = calloc(1, sizeof(*w))) == NULL) {
		return NULL;
	}
	w->spc = c;
	memcpy(w->bt, bt, btlen);
	w->btlen = (uint8_t) btlen;
	w->state = W_BUSY;
	pthread_mutex_lock(&net.mu);
	net.nbusy++;
	pthread_mutex_unlock(&net.mu);
	return w;
}

/* Ends a raw request: its reply (NULL: none) goes to its connection, and
 * the worker is freed. */
static void
worker_sp_end(qps_worker *w, nng_msg *rep)
{
	pthread_mutex_lock(&net.mu);
	if (w->state == W_PARKED) {
		net.nparked--;
	} else {
		net.nbusy--;
	}
	pthread_cond_broadcast(&net.cv);
	pthread_mutex_unlock(&net.mu);
	qps_spnet_reply(w->spc, w->bt, w->btlen, rep, w->close_pipe != 0);
	free(w);
}

void
qps_worker_sp_done(qps_worker *w, nng_msg *rep)
{
	worker_sp_end(w, rep);
}

void
qps_worker_reply(qps_worker *w, nng_msg *rep)
{
	if (w->spc != NULL) {
		worker_sp_end(w, rep);
		return;
	}
	worker_send(w, rep);
}

void
qps_worker_close_after(qps_worker *w, uint32_t pipe_id)
{
	w->close_pipe = pipe_id;
}

void
qps_worker_drop(qps_worker *w)
{
	bool again;

	if (w->spc != NULL) {
		worker_sp_end(w, NULL);
		return;
	}

	pthread_mutex_lock(&net.mu);
	net.nparked--;
	again = worker_finish_locked(w);
	pthread_mutex_unlock(&net.mu);
	if (again) {
		nng_ctx_recv(w->ctx, w->aio);
	}
}

void
qps_net_stats_get(qps_net_stats *st)
{
	pthread_mutex_lock(&net.mu);
	st->workers = net.nall;
	st->receiving = net.nrecv;
	st->parked = net.nparked;
	pthread_mutex_unlock(&net.mu);
	st->connections = qps_spnet_count();
}

/* ---- connections ---- */

static void
net_format_addr(const nng_sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	switch (sa->s_family) {
	case NNG_AF_INET:
		inet_ntop(AF_INET, &sa->s_in.sa_addr, host, sizeof(host));
		snprintf(buf, len, "tcp://%s:%u", host,
		    (unsigned) ntohs(sa->s_in.sa_port));
		break;
	case NNG_AF_INET6:
		inet_ntop(AF_INET6, sa->s_in6.sa_addr, host, sizeof(host));
		snprintf(buf, len, "tcp://[%s]:%u", host,
		    (unsigned) ntohs(sa->s_in6.sa_port));
		break;
	case NNG_AF_IPC:
		snprintf(buf, len, "ipc://%s", sa->s_ipc.sa_path);
		break;
	default:
		snprintf(
		    buf, len, "(address family %u)", (unsigned) sa->s_family);
		break;
	}
}

void
qps_net_peer(uint32_t pipe_id, char *buf, size_t len)
{
	nng_sockaddr sa;
	nng_pipe p;

	if (pipe_id & QPS_SP_CONN_BIT) {
		qps_spnet_peer(pipe_id, buf, len);
		return;
	}
	p.id = pipe_id;
	if (nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa) == 0
	    && sa.s_family != NNG_AF_IPC) {
		net_format_addr(&sa, buf, len);
	} else {
		snprintf(buf, len, "a local socket");
	}
}

/* A connection is admitted (or refused: draining, far over the limit)
 * before the protocol starts on it (NNG_PIPE_EV_ADD_PRE), as nng's
 * documentation asks of a callback that rejects: a pipe closed later, in
 * ADD_POST, already has rep0's receive posted, and with nng 1.5.2 the
 * reaper can then wait for that receive for ever, and nng_close with it
 * (a client redialling while qpiped drained hung the server's exit). */
static void
net_pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	uint32_t id = (uint32_t) nng_pipe_id(p);

	(void) arg;
	if (ev == NNG_PIPE_EV_ADD_PRE) {
		char from[160] = "";
		nng_sockaddr sa;
		if (qps_log_level >= QPS_LOG_DEBUG
		    && nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa) == 0) {
			net_format_addr(&sa, from, sizeof(from));
		}
		if (!qps_ops_conn_add(id)) {
			nng_pipe_close(p);
			return;
		}
		qps_log(QPS_LOG_DEBUG, "connection %u from %s", id,
		    from[0] != '\0' ? from : "a local socket");
	} else if (ev == NNG_PIPE_EV_REM_POST) {
		qps_ops_conn_remove(id);
	}
}

/* ---- listeners ---- */

static bool
net_host_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;
	struct addrinfo hints, *res = NULL, *ai;
	bool ok;

	if (host[0] == '\0' || strcmp(host, "*") == 0) {
		return false;
	}
	if (inet_pton(AF_INET, host, &a4) == 1) {
		return (ntohl(a4.s_addr) >> 24) == 127;
	}
	if (inet_pton(AF_INET6, host, &a6) == 1) {
		return IN6_IS_ADDR_LOOPBACK(&a6);
	}
	/* A name: loopback only if every address it resolves to is. */
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL) {
		return false;
	}
	ok = true;
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		if (ai->ai_family == AF_INET) {
			const struct sockaddr_in *s
			    = (const struct sockaddr_in *) ai->ai_addr;
			ok = ok && (ntohl(s->sin_addr.s_addr) >> 24) == 127;
		} else if (ai->ai_family == AF_INET6) {
			const struct sockaddr_in6 *s
			    = (const struct sockaddr_in6 *) ai->ai_addr;
			ok = ok && IN6_IS_ADDR_LOOPBACK(&s->sin6_addr);
		} else {
			ok = false;
		}
	}
	freeaddrinfo(res);
	return ok;
}

static int
net_listen_one(const qps_config *cfg, const char *url, char *bound)
{
	nng_listener l;
	nng_sockaddr sa;
	qpi_addr a;
	int rv;

	if (qpi_addr_parse(url, QPI_ADDR_SERVER | QPI_ADDR_PORT0, &a)
	    != QP_OK) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: %s", url,
		    qp_errmsg());
		return QP_EINVAL;
	}
	if ((rv = qps_sec_check_listener(cfg, &a, url,
	         a.kind != QPI_ADDR_IPC && net_host_loopback(a.host)))
	    != QP_OK) {
		return rv;
	}
	if (cfg->raw_sp && a.kind != QPI_ADDR_TLS) {
		return qps_spnet_listen(cfg, &a, bound);
	}
	if ((rv = nng_listener_create(&l, net.sock, a.url)) != 0) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: %s", url,
		    nng_strerror(rv));
		return QP_EINVAL;
	}
	nng_listener_set_size(
	    l, NNG_OPT_RECVMAXSZ, cfg->max_message + QPS_FRAME_SLACK);
	if ((rv = qps_sec_listener_setup(l, &a, url)) != QP_OK) {
		nng_listener_close(l);
		return rv;
	}
	if ((rv = nng_listener_start(l, 0)) != 0) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: %s", url,
		    nng_strerror(rv));
		nng_listener_close(l);
		return rv == NNG_EADDRINUSE ? QP_EBUSY : QP_ESYSTEM;
	}
	net.lst[net.nlst++] = l;
	if (a.kind != QPI_ADDR_IPC
	    && nng_listener_get_addr(l, NNG_OPT_LOCADDR, &sa) == 0) {
		unsigned port = (unsigned) ntohs(sa.s_family == NNG_AF_INET6
		        ? sa.s_in6.sa_port
		        : sa.s_in.sa_port);
		bool v6 = strchr(a.host, ':') != NULL;
		snprintf(bound, QPI_URL_MAX + 1, "%s://%s%s%s:%u",
		    a.kind == QPI_ADDR_TLS ? "tls+tcp" : "tcp", v6 ? "[" : "",
		    a.host, v6 ? "]" : "", port);
	} else {
		snprintf(bound, QPI_URL_MAX + 1, "%s", a.url);
	}
	qps_log(QPS_LOG_INFO, "listening on %s", bound);
	return QP_OK;
}

int
qps_net_start(const qps_config *cfg, char urls[][QPI_URL_MAX + 1])
{
	int rv;

	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&net.cv, &ca);
	pthread_condattr_destroy(&ca);
	net.max_parked = (uint64_t) cfg->max_connections * 8 + 64;
	if ((rv = nng_rep0_open(&net.sock)) != 0) {
		qps_log(QPS_LOG_ERROR, "cannot open an nng rep0 socket: %s",
		    nng_strerror(rv));
		return QP_ESYSTEM;
	}
	net.open = true;
	nng_socket_set_size(
	    net.sock, NNG_OPT_RECVMAXSZ, cfg->max_message + QPS_FRAME_SLACK);
	nng_pipe_notify(net.sock, NNG_PIPE_EV_ADD_PRE, net_pipe_cb, NULL);
	nng_pipe_notify(net.sock, NNG_PIPE_EV_REM_POST, net_pipe_cb, NULL);
	for (size_t i = 0; i < cfg->nlisten; i++) {
		if ((rv = net_listen_one(cfg, cfg->listen[i], urls[i]))
		    != QP_OK) {
			return rv;
		}
	}
	net_top_up();
	return QP_OK;
}

bool
qps_net_drain(int64_t timeout_ms)
{
	int64_t deadline = qpi_now_ns() + timeout_ms * 1000000;
	struct timespec ts;
	bool done;

	ts = qpi_ts_from_ns(deadline);
	pthread_mutex_lock(&net.mu);
	while (net.nbusy + net.nsend > 0) {
		if (pthread_cond_timedwait(&net.cv, &net.mu, &ts)
		    == ETIMEDOUT) {
			break;
		}
	}
	done = net.nbusy + net.nsend == 0;
	pthread_mutex_unlock(&net.mu);
	return done;
}

void
qps_net_close(void)
{
	qps_worker *w, *next;

	qps_spnet_close();
	if (!net.open) {
		return;
	}
	pthread_mutex_lock(&net.mu);
	net.closing = true;
	pthread_mutex_unlock(&net.mu);
	nng_close(net.sock); /* the listeners and connections with it */
	net.open = false;

	/* Every aio ends with NNG_ECLOSED; nng_aio_free waits for its
	 * callback to finish. */
	pthread_mutex_lock(&net.mu);
	w = net.all;
	net.all = NULL;
	net.idle = NULL;
	pthread_mutex_unlock(&net.mu);
	for (; w != NULL; w = next) {
		next = w->all_next;
		nng_aio_stop(w->aio);
		if (nng_aio_get_msg(w->aio) != NULL) {
			nng_msg_free(nng_aio_get_msg(w->aio));
		}
		nng_aio_free(w->aio);
		free(w);
	}
}
