/*
 * netconn.c - Connections across hosts: qp_listen / qp_listener_accept /
 * qp_dial (Python's connection.Listener and Client), one stream each
 * (tcp://, ipc://, tls+tcp://) speaking SP pair1 with a session first
 * (hello, then auth with a token: session.c, auth.c) within 10 s, as
 * proto/PROTOCOL.md, "Direct connections", sets out. Both ends sit on the
 * connection layer (link.h), on the driver it picks: plain sockets for
 * tcp:// and ipc:// (a thread's blocking read, no hand-off through nng's
 * threads), nng for tls+tcp:// (and for all with QPIPE_TRANSPORT=nng).
 * qp_dial dials and retries a refused dial until its timeout; qp_listen's
 * acceptor gives each new link a short thread for its handshake
 * (nc_pending_main), then queues it for accept. An open connection's
 * reader thread reads frames (qpi_link_read_frame), checks each is one
 * msgpack value and queues it in conn.h's qpi_rxq, waiting while
 * QPI_RXQ_MAX bytes are queued so that a slow receiver pushes back
 * through TCP; the end of the stream is reported once the queue is
 * drained. Sends are synchronous; a dialer refuses a message over the
 * listener's max_message with QP_ETOOBIG, nothing sent. fork(): a connection
 * or listener stays with the process that made it (its reader, and nng's
 * threads, stay in the parent), so a forked child's calls on one are refused
 * and free only releases the child's memory (nc_forget). Locking: per
 * connection the queue's mutex and txmu (senders); per listener mu guards the
 * handshakes in progress and the connections ready.
 */
#include "call.h"
#include "conn.h"
#include "link.h"
#include "session.h"
#include "sp.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SP_PAIR1    0x11u /* the SP protocol number of pair1 */
#define HOPS_MAX    0xffu
#define NEGO_MS     10000
#define PENDING_MAX 256
#define FRAME_EXTRA 16u /* pair1 header + bin header, with room */
#define DIAL_TRY_MS 10000
#define BACKOFF_MIN 10
#define BACKOFF_MAX 250
#define HELLO_MAX   4096 /* the largest hello frame either side takes */

struct netconn {
	qpi_rxconn rx; /* first: the connection and its received messages */
	qpi_link *link; /* the stream, on the connection layer */
	struct netconn *next_ready; /* the listener's queue */
	uint64_t peer_max; /* the listener's max_message, from its hello */
	pthread_t reader;
	atomic_size_t frame_max; /* the largest value the reader takes */
	qpi_link_rd rd; /* the reader's */
	pthread_mutex_t txmu;
};

/* A connection accepted by a listener, in its handshake (a thread of its
 * own, nc_pending_main): the SP headers, the dialer's hello and the
 * listener's answer, then with a token auth and its answer. */
struct pending {
	struct pending *next;
	qp_listener *l;
	qpi_link *link;
};

struct qp_listener {
	qpi_link_listener *L;
	qpi_addr addr;
	pid_t owner; /* the process that made it (see fork() above) */
	size_t max_message; /* of each connection, told in the hello */
	qpi_token token; /* len 0: none required */
	char url[QPI_URL_MAX + 16];
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t acc; /* the acceptor */
	bool closing;
	struct pending *pend;
	size_t npend;
	struct netconn *ready_head;
	struct netconn **ready_tail; /* the last next_ready, or &ready_head */
	size_t nready;
	uint64_t refused; /* dialers that did not authenticate */
};

/* ---- the reader ---- */

/* The reader: frames into the queue, until the stream ends. */
static void *
nc_reader(void *arg)
{
	struct netconn *c = arg;
	uint8_t *m = NULL;
	size_t len = 0;
	int rv = QP_OK;

	while (rv == QP_OK && qpi_rxq_wait_room(&c->rx.q)) {
		if ((rv = qpi_link_read_frame(c->link, &c->rd,
		         atomic_load(&c->frame_max), &m, &len, NULL,
		         INT64_MAX))
		    != QP_OK) {
			break;
		}
		if (qpi_sp_get32(m) > HOPS_MAX) {
			rv = qpi_err(QP_EPROTO,
			    "%s sent a frame with a bad pair1 header",
			    c->link->url);
		} else if (qpi_wire_check_value(m + 4, len) != QP_OK) {
			rv = qpi_err(QP_EPROTO,
			    "%s sent a %zu-byte message that is not one "
			    "msgpack value",
			    c->link->url, len);
		} else {
			rv = qpi_rxq_push(&c->rx.q, m, 4, len);
			m = NULL;
		}
		free(m);
	}
	/* Tell the peer (the stream is no longer in step), and fail our
	 * later sends, before a receiver can see the end. */
	c->link->ops->shutdown(c->link);
	if (atomic_load(&c->rx.base.closed)) {
		qpi_rxq_end(&c->rx.q, QP_ECLOSED, "connection is closed");
	} else if (rv == QP_ECONNRESET) {
		qpi_rxq_end(&c->rx.q, QP_ECLOSED, "end of file: %s closed%s",
		    c->link->url,
		    c->rd.len > c->rd.off || c->rd.big != NULL
		        ? " in the middle of a message"
		        : "");
	} else if (rv != QP_OK) {
		qpi_rxq_end(
		    &c->rx.q, rv, "%s; connection closed", qp_errmsg());
	}
	return NULL;
}

/* ---- the connection ops ---- */

static int
nc_send(qp_conn *base, bool raw, const void *buf, size_t len, uint8_t binoff)
{
	struct netconn *c = (struct netconn *) base;
	size_t body = raw ? len : len - binoff;
	int rv;

	/* The listener told its limit in its hello: over it, the message
	 * would end the connection; refuse it here, nothing sent. */
	if (c->peer_max != 0 && body > c->peer_max) {
		return qpi_err(QP_ETOOBIG,
		    "message of %zu bytes is over the maximum of %llu that %s "
		    "accepts; nothing sent",
		    body, (unsigned long long) c->peer_max, c->link->url);
	}
	pthread_mutex_lock(&c->txmu);
	rv = qpi_link_send_frame(c->link, 1, raw, buf, len, INT64_MAX);
	pthread_mutex_unlock(&c->txmu);
	return rv == QP_OK
	    ? QP_OK
	    : qpi_err(QP_ECLOSED, "broken pipe: %s is gone", c->link->url);
}

static void
nc_set_max(qp_conn *base)
{
	atomic_store(&((struct netconn *) base)->frame_max,
	    base->max_message + FRAME_EXTRA);
}

static void
nc_close(qp_conn *base)
{
	struct netconn *c = (struct netconn *) base;

	/* The reader, in a receive or waiting for room, ends. */
	qpi_rxq_end(&c->rx.q, QP_ECLOSED, "connection is closed");
	c->link->ops->shutdown(c->link);
}

/* A forked child's copy: its memory and descriptors only; an nng link is
 * left alone (its threads and the stream are the parent's). */
static void
nc_forget(qp_conn *base)
{
	struct netconn *c = (struct netconn *) base;

	qpi_link_forget(c->link);
	qpi_rxq_free(&c->rx.q, false);
	qpi_link_rd_free(&c->rd);
	free(c);
}

static void
nc_destroy(qp_conn *base)
{
	struct netconn *c = (struct netconn *) base;

	pthread_join(c->reader, NULL);
	c->link->ops->free(c->link);
	pthread_mutex_destroy(&c->txmu);
	qpi_rxq_free(&c->rx.q, true);
	qpi_link_rd_free(&c->rd);
	free(c);
}

static const qpi_conn_ops nc_ops = {
    .send = nc_send,
    .peek = qpi_rxq_peek,
    .take = qpi_rxq_take,
    .fd = qpi_rxq_fd,
    .set_max = nc_set_max,
    .close = nc_close,
    .destroy = nc_destroy,
    .forget = nc_forget,
};

/* Wraps a link that passed the handshake (rd: what it read) and starts
 * its reader, with max_message as the connection's limit. Takes link and
 * rd over, also on failure. */
static int
nc_new(
    struct netconn **cp, qpi_link *link, qpi_link_rd *rd, size_t max_message)
{
	struct netconn *c = calloc(1, sizeof(*c));
	int rv = c == NULL ? qpi_err(QP_ENOMEM, "out of memory")
	                   : qpi_rxq_init(&c->rx.q);

	if (rv == QP_OK) {
		c->link = link;
		c->rd = *rd;
		/* its eventfd only once qp_conn_fd asks */
		c->rx.q.lazy = true;
		pthread_mutex_init(&c->txmu, NULL);
		qpi_conn_init(&c->rx.base, &nc_ops, true, true);
		c->rx.base.owner = getpid();
		c->rx.base.max_message = max_message;
		atomic_init(&c->frame_max, max_message + FRAME_EXTRA);
		link->own_reader = true;
		if (pthread_create(&c->reader, NULL, nc_reader, c) == 0) {
			*cp = c;
			return QP_OK;
		}
		rv = qpi_err(QP_ENOMEM, "no thread for a connection");
		pthread_mutex_destroy(&c->txmu);
		qpi_rxq_free(&c->rx.q, true);
	}
	free(c);
	link->ops->free(link);
	qpi_link_rd_free(rd);
	return rv;
}

/* ---- listening ---- */

/* One accepted connection's handshake, within NEGO_MS; then it waits in
 * the listener's queue for accept, or is dropped (a refused dialer is
 * counted). */
static void *
nc_pending_main(void *arg)
{
	struct pending *p = arg;
	qp_listener *l = p->l;
	int64_t deadline = qpi_now_ns() + (int64_t) NEGO_MS * 1000000;
	qpi_session_server ss
	    = {.token = &l->token, .max_message = l->max_message};
	qpi_wire_buf out = {0};
	struct netconn *c = NULL;
	char *peer = p->link->url;
	qpi_link_rd rd = {0};
	int rv;

	snprintf(peer, sizeof(p->link->url), "the peer of %.280s", l->url);
	rv = qpi_link_sp_handshake(
	    p->link, &l->addr, NULL, true, SP_PAIR1, SP_PAIR1, deadline);
	while (rv == QP_OK && !ss.open) {
		uint8_t *m;
		size_t blen;
		if ((rv = qpi_link_read_frame(
		         p->link, &rd, HELLO_MAX, &m, &blen, NULL, deadline))
		    != QP_OK) {
			break;
		}
		rv = qpi_sp_get32(m) >> 8 != 0
		    ? qpi_err(QP_EPROTO, "%s: bad pair1 header", peer)
		    : qpi_session_answer(&ss, m + 4, blen, peer, &out);
		free(m);
		if (out.len > 0) {
			/* The answer, or why not (then close). */
			int srv = qpi_link_send_frame(
			    p->link, 1, false, out.data, out.len, deadline);
			rv = rv == QP_OK ? srv : rv;
		}
	}
	qpi_wire_buf_free(&out);
	if (rv == QP_OK) {
		/* Under l->mu: the listener's free shuts pending links. */
		pthread_mutex_lock(&l->mu);
		qpi_link *link = p->link;
		p->link = NULL;
		pthread_mutex_unlock(&l->mu);
		nc_new(&c, link, &rd, l->max_message);
	} else {
		qpi_link_rd_free(&rd);
	}
	pthread_mutex_lock(&l->mu);
	for (struct pending **pp = &l->pend; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	}
	l->npend--;
	if (c == NULL && ss.auth_wait && !l->closing) {
		l->refused++;
	}
	bool keep = c != NULL && !l->closing;
	if (keep) {
		*l->ready_tail = c;
		l->ready_tail = &c->next_ready;
		l->nready++;
	}
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
	/* l may be gone from here on. */
	if (c != NULL && !keep) {
		qp_conn_free(&c->rx.base);
	}
	if (p->link != NULL) {
		p->link->ops->free(p->link);
	}
	free(p);
	return NULL;
}

/* The acceptor: each connection gets a handshake thread, while fewer than
 * PENDING_MAX wait (more are dropped at once). */
static void *
nc_acceptor(void *arg)
{
	qp_listener *l = arg;
	qpi_link *link;
	pthread_attr_t at;
	int rv;

	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	while ((rv = l->L->accept(l->L, &link)) != QP_ECLOSED) {
		if (rv != QP_OK) {
			/* Out of descriptors or memory: not again at once. */
			struct timespec ts = {0, 100 * 1000000};
			nanosleep(&ts, NULL);
			continue;
		}
		struct pending *p = NULL;
		pthread_t t;
		pthread_mutex_lock(&l->mu);
		if (!l->closing && l->npend + l->nready < PENDING_MAX
		    && (p = calloc(1, sizeof(*p))) != NULL) {
			p->l = l;
			p->link = link;
			if (pthread_create(&t, &at, nc_pending_main, p) == 0) {
				p->next = l->pend;
				l->pend = p;
				l->npend++;
			} else {
				free(p);
				p = NULL;
			}
		}
		pthread_mutex_unlock(&l->mu);
		if (p == NULL) {
			link->ops->free(link);
		}
	}
	pthread_attr_destroy(&at);
	return NULL;
}

/* Checks the address and options of a listener (mode QPI_ADDR_PORT0) or
 * dialer, into *a and its connections' maximum message *maxp. */
static int
nc_args(const char *addr, unsigned mode, const qp_conn_opts *o, qpi_addr *a,
    size_t *maxp)
{
	*maxp = o != NULL && o->max_message != 0 ? o->max_message
	                                         : QP_DEFAULT_MAX_MESSAGE;
	if (o != NULL && o->max_message > QPI_CONN_MAX_MESSAGE) {
		return qpi_err(QP_EINVAL,
		    "maximum message must be 1 to %zu bytes, not %zu",
		    QPI_CONN_MAX_MESSAGE, o->max_message);
	}
	if (o != NULL && o->no_token
	    && (o->token != NULL || o->token_file != NULL)) {
		return qpi_err(QP_EINVAL,
		    "no_token is set together with a token or token file");
	}
	return qpi_addr_parse(addr, QPI_ADDR_SERVER | mode, a);
}

QP_API int
qp_listen_opts(qp_listener **lp, const char *addr, const qp_conn_opts *o)
{
	qp_listener *l;
	int rv;

	if (lp == NULL) {
		return qpi_err(QP_EINVAL, "output pointer is NULL");
	}
	if ((l = calloc(1, sizeof(*l))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for a listener");
	}
	l->owner = getpid();
	l->ready_tail = &l->ready_head;
	pthread_mutex_init(&l->mu, NULL);
	qpi_cond_init(&l->cv);
	if ((rv = nc_args(addr, QPI_ADDR_PORT0, o, &l->addr, &l->max_message))
	        != QP_OK
	    || (rv = qpi_token_of(&l->token, o)) != QP_OK
	    || (rv = qpi_link_listen(
	            &l->L, &l->addr, o, l->url, sizeof(l->url)))
	        != QP_OK) {
		goto fail;
	}
	if (pthread_create(&l->acc, NULL, nc_acceptor, l) != 0) {
		rv = qpi_err(QP_ENOMEM, "no thread for a listener");
		l->L->free(l->L);
		goto fail;
	}
	*lp = l;
	return QP_OK;
fail:
	pthread_cond_destroy(&l->cv);
	pthread_mutex_destroy(&l->mu);
	qpi_token_clear(&l->token);
	free(l);
	return rv;
}

QP_API int
qp_listen(qp_listener **lp, const char *addr)
{
	return qp_listen_opts(lp, addr, NULL);
}

uint64_t
qpi_net_listener_refused(qp_listener *l)
{
	uint64_t n;

	if (qpi_nng_forked(l->owner)) {
		return l->refused; /* a forked child's copy: no lock */
	}
	pthread_mutex_lock(&l->mu);
	n = l->refused;
	pthread_mutex_unlock(&l->mu);
	return n;
}

QP_API const char *
qp_listener_url(qp_listener *l)
{
	return l == NULL ? "" : l->url;
}

QP_API int
qp_listener_accept(qp_listener *l, qp_conn **cp, qp_duration timeout)
{
	int64_t deadline = timeout == 0 ? 0 : qpi_deadline_ns(timeout);
	struct netconn *c;
	int rv;

	if (l == NULL || cp == NULL) {
		return qpi_err(QP_EINVAL, "NULL argument");
	}
	if ((rv = qpi_duration_check(timeout)) != QP_OK) {
		return rv;
	}
	if (qpi_nng_forked(l->owner)) {
		char what[sizeof(l->url) + 16];
		snprintf(what, sizeof(what), "listener %s", l->url);
		return qpi_nng_forked_err(what, l->owner);
	}
	pthread_mutex_lock(&l->mu);
	while (l->ready_head == NULL) {
		if (qpi_cond_wait(&l->cv, &l->mu, deadline) != QP_OK) {
			rv = qpi_err(QP_ETIMEDOUT,
			    "no connection to %s within the timeout", l->url);
			break;
		}
	}
	if (rv == QP_OK) {
		c = l->ready_head;
		if ((l->ready_head = c->next_ready) == NULL) {
			l->ready_tail = &l->ready_head;
		}
		l->nready--;
		c->next_ready = NULL;
		*cp = &c->rx.base;
	}
	pthread_mutex_unlock(&l->mu);
	return rv;
}

QP_API void
qp_listener_free(qp_listener *l)
{
	struct netconn *c;

	/* A forked child's copy: the child's memory only (the handshakes
	 * and the connections ready are the parent's). */
	if (l != NULL && !qpi_nng_forked(l->owner)) {
		pthread_mutex_lock(&l->mu);
		l->closing = true;
		pthread_mutex_unlock(&l->mu);
		l->L->close(l->L);
		pthread_join(l->acc, NULL);
		/* Handshakes in progress end with an error and let go of l. */
		pthread_mutex_lock(&l->mu);
		for (struct pending *p = l->pend; p != NULL; p = p->next) {
			if (p->link != NULL) {
				p->link->ops->shutdown(p->link);
			}
		}
		while (l->npend > 0) {
			pthread_cond_wait(&l->cv, &l->mu);
		}
		pthread_mutex_unlock(&l->mu);
		l->L->free(l->L);
		pthread_mutex_destroy(&l->mu);
		pthread_cond_destroy(&l->cv);
	}
	if (l == NULL) {
		return;
	}
	while ((c = l->ready_head) != NULL) {
		l->ready_head = c->next_ready;
		qp_conn_free(&c->rx.base); /* a forked child's: forgotten */
	}
	qpi_token_clear(&l->token);
	free(l);
}

/* ---- dialing ---- */

QP_API int
qp_dial_opts(
    qp_conn **cp, const char *addr, qp_duration timeout, const qp_conn_opts *o)
{
	int64_t deadline = qpi_deadline_ns(timeout);
	int64_t backoff = BACKOFF_MIN;
	qpi_wire_limits lim;
	qpi_token token;
	qpi_addr a;
	qpi_link *l;
	size_t max;
	bool refused = false;
	int rv;

	if (cp == NULL) {
		return qpi_err(QP_EINVAL, "output pointer is NULL");
	}
	if ((rv = qpi_duration_check(timeout)) != QP_OK
	    || (rv = nc_args(addr, 0, o, &a, &max)) != QP_OK
	    || (rv = qpi_token_of(&token, o)) != QP_OK) {
		return rv;
	}
	for (;;) {
		/* One attempt: bounded by the timeout, and by DIAL_TRY_MS
		 * when there is none (0: a single attempt; -1: forever). */
		int64_t try_ns
		    = qpi_now_ns() + (int64_t) DIAL_TRY_MS * 1000000;
		if (timeout != 0 && deadline < try_ns) {
			try_ns = deadline;
		}
		if ((rv = qpi_link_dial(&l, &a, o, 0, 0, try_ns)) == QP_OK) {
			break;
		}
		refused |= rv == QP_ECONNREFUSED;
		int64_t left = qpi_remaining_ns(deadline);
		if (timeout == 0 || left == 0
		    || (rv != QP_ECONNREFUSED && rv != QP_ETIMEDOUT)) {
			qpi_token_clear(&token);
			if (rv == QP_ETIMEDOUT && refused) {
				return qpi_err(QP_ECONNREFUSED,
				    "cannot connect to %s: connection refused",
				    a.url);
			}
			return rv;
		}
		/* Nobody listens yet: wait a little and try again, as nng's
		 * own dialers do. */
		int64_t nap
		    = left / 1000000 < backoff ? left / 1000000 : backoff;
		struct timespec ts = {nap / 1000, (nap % 1000) * 1000000};
		nanosleep(&ts, NULL);
		backoff
		    = backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2;
	}
	qpi_link_rd rd = {0};
	qpi_ce_hs h
	    = {.l = l, .rd = &rd, .pair1 = true, .deadline_ns = deadline};
	int64_t cap = qpi_now_ns() + (int64_t) NEGO_MS * 1000000;
	if (timeout == 0 || h.deadline_ns > cap) {
		h.deadline_ns = cap;
	}

	uint8_t id[QPI_WIRE_ID_LEN];
	char cname[QPI_WIRE_CLIENT_NAME_MAX + 1], host[64] = "";
	gethostname(host, sizeof(host) - 1);
	for (char *c = host; *c != '\0'; c++) {
		if (*c < 0x21 || *c > 0x7e) {
			*c = '_';
		}
	}
	snprintf(
	    cname, sizeof(cname), "qp_dial@%.40s:%d", host, (int) getpid());
	qpi_session_client sc = {
	    .url = a.url,
	    .client_id = id,
	    .client_name = cname,
	    .token = &token,
	    .refused = "refused the token",
	};
	memset(&lim, 0, sizeof(lim));
	if ((rv = qpi_link_sp_handshake(
	         l, &a, o, false, SP_PAIR1, SP_PAIR1, h.deadline_ns))
	        != QP_OK
	    || (rv = qpi_random(id, sizeof(id))) != QP_OK
	    || (rv = qpi_session_open(&sc, qpi_ce_hs_xfn, &h, &lim))
	        != QP_OK) {
		qpi_token_clear(&token);
		l->ops->free(l);
		qpi_link_rd_free(&rd);
		return rv;
	}
	qpi_token_clear(&token);
	struct netconn *c;
	if ((rv = nc_new(&c, l, &rd, max)) != QP_OK) {
		return rv;
	}
	c->peer_max = lim.max_message;
	*cp = &c->rx.base;
	return QP_OK;
}

QP_API int
qp_dial(qp_conn **cp, const char *addr, qp_duration timeout)
{
	return qp_dial_opts(cp, addr, timeout, NULL);
}
