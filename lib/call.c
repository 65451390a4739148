/*
 * call.c - the request/reply engine (call.h): SP req0 frames on one link
 * (link.h), each written whole under the connection's write lock, replies
 * read by whichever waiting call holds the reader role (leader/follower):
 * it reads with its own deadline and hands each reply to the call whose
 * request id it carries; when it leaves (its reply came, or its time ran
 * out) another waiting call takes the role over. A connection that breaks
 * is shut down (which wakes its reader) and every call waiting on it gets
 * QP_ECONNRESET; the next call dials again, with a backoff of 20 ms
 * doubling up to 500 ms between attempts, and runs the hook (the session
 * handshake) on the new connection before anyone else uses it. Only a
 * reply to a call resets the backoff: a server that handshakes and then
 * drops every connection is redialled ever more slowly, not at once. A
 * server that answers the hook with QP_ELIMIT (at its connection limit)
 * or QP_EAUTH is not redialled: the call fails with its message.
 *
 * A reply's buffer, once its caller is done with it (qpi_ce_reply_free),
 * is kept for the next reply to be read into: a batch's reply is read
 * into the memory of the one before, not a new allocation.
 *
 * Locking: s->mu guards the current connection, the waiters, the reader
 * role, the kept reply buffer and the reconnect state; s->cv signals replies
 * handed over, the reader role freed, a connection made or closed. A
 * connection's wmu serialises its writers. The link is read by the reader
 * without s->mu; a connection is freed when its last reference goes, so no
 * thread ever reads or writes a closed (and reused) descriptor.
 */
#include "call.h"
#include "sp.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CE_BACKOFF_MIN_MS 20
#define CE_BACKOFF_MAX_MS 500
#define CE_HOOK_MAX       65536 /* the largest reply a hook's call takes */

typedef struct ce_conn {
	qpi_link *l;
	uint32_t num;
	int refs; /* under s->mu */
	bool broken; /* under s->mu */
	bool reading; /* a call holds the reader role (under s->mu) */
	pthread_mutex_t wmu;
	qpi_link_rd rd; /* the reader's */
} ce_conn;

typedef struct ce_wait {
	uint32_t id;
	ce_conn *conn;
	qpi_ce_reply rep;
	bool done;
	struct ce_wait *next;
} ce_wait;

struct qpi_ce {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	qpi_addr addr;
	const qp_conn_opts *opts; /* the caller's, kept alive by it */
	qpi_ce_hook hook;
	void *hook_arg;
	size_t max_recv;
	ce_conn *cur;
	uint32_t nconn;
	uint32_t next_id;
	bool connecting;
	bool closed;
	int64_t backoff_ms;
	int64_t next_try_ns;
	ce_wait *waiters;
	uint8_t *spare; /* a reply's buffer, for the next reader to reuse */
	size_t spare_cap;
};

static void
ce_conn_unref_locked(ce_conn *c)
{
	if (--c->refs == 0) {
		c->l->ops->free(c->l);
		pthread_mutex_destroy(&c->wmu);
		qpi_link_rd_free(&c->rd);
		free(c);
	}
}

/* Marks c broken, wakes its reader and waiters. s->mu held. */
static void
ce_break_locked(qpi_ce *s, ce_conn *c)
{
	if (!c->broken) {
		c->broken = true;
		c->l->ops->shutdown(c->l);
		pthread_cond_broadcast(&s->cv);
	}
}

int
qpi_ce_hs_xfn(
    void *arg, const void *req, size_t len, uint8_t **repp, size_t *lenp)
{
	qpi_ce_hs *h = arg;
	uint32_t tag = h->pair1 ? 1u : 0x80000001u, rtag;
	int rv
	    = qpi_link_send_frame(h->l, tag, false, req, len, h->deadline_ns);
	uint8_t *m;
	size_t cap;

	while (rv == QP_OK
	    && (rv = qpi_link_read_frame(
	            h->l, h->rd, CE_HOOK_MAX, &m, lenp, &cap, h->deadline_ns))
	        == QP_OK) {
		/* pair1: a hop count; req0: our request id (a late reply to
		 * another is skipped). */
		rtag = qpi_sp_get32(m);
		if (h->pair1 ? rtag >> 8 == 0 : rtag == tag) {
			memmove(m, m + 4, *lenp);
			*repp = m;
			break;
		}
		free(m);
	}
	if (rv == QP_OK || rv == QP_ENOMEM) {
		return rv;
	}
	if (rv == QP_ETIMEDOUT && h->pair1) {
		return qpi_err(QP_ETIMEDOUT,
		    "handshake with %s did not finish in time", h->l->url);
	}
	return qpi_err(h->pair1 ? QP_EPROTO : QP_ECONNREFUSED,
	    "cannot open a session with %s: %s", h->l->url,
	    rv == QP_ETIMEDOUT ? "no answer in time"
	                       : "the connection closed");
}

/* Dials and runs the hook: a new connection, or an error (qpi_err set). */
static int
ce_dial(qpi_ce *s, int64_t deadline_ns, ce_conn **cp)
{
	ce_conn *c = calloc(1, sizeof(*c));
	int rv;

	if (c == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	if ((rv = qpi_link_dial(&c->l, &s->addr, s->opts, QPI_SP_REQ0,
	         QPI_SP_REP0, deadline_ns))
	        != QP_OK
	    || (s->hook != NULL
	        && (rv = s->hook(s->hook_arg, c->l, &c->rd, deadline_ns))
	            != QP_OK)) {
		if (c->l != NULL) {
			c->l->ops->free(c->l);
		}
		qpi_link_rd_free(&c->rd);
		free(c);
		return rv;
	}
	c->refs = 1;
	pthread_mutex_init(&c->wmu, NULL);
	*cp = c;
	return QP_OK;
}

int
qpi_ce_open(qpi_ce **cp, const qpi_addr *a, const qp_conn_opts *o,
    size_t max_recv, qpi_ce_hook hook, void *arg, int64_t deadline_ns)
{
	qpi_ce *s = calloc(1, sizeof(*s));
	ce_conn *c;
	int rv;

	if (s == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	s->addr = *a;
	s->opts = o;
	s->hook = hook;
	s->hook_arg = arg;
	s->max_recv = max_recv;
	pthread_mutex_init(&s->mu, NULL);
	qpi_cond_init(&s->cv);
	if ((rv = ce_dial(s, deadline_ns, &c)) != QP_OK) {
		qpi_ce_free(s);
		return rv;
	}
	c->num = ++s->nconn;
	s->cur = c;
	*cp = s;
	return QP_OK;
}

void
qpi_ce_set_max(qpi_ce *s, size_t max_recv)
{
	pthread_mutex_lock(&s->mu);
	s->max_recv = max_recv;
	pthread_mutex_unlock(&s->mu);
}

/* The next dial waits a little longer. s->mu held. */
static void
ce_backoff_locked(qpi_ce *s)
{
	s->backoff_ms = s->backoff_ms == 0          ? CE_BACKOFF_MIN_MS
	    : s->backoff_ms * 2 > CE_BACKOFF_MAX_MS ? CE_BACKOFF_MAX_MS
	                                            : s->backoff_ms * 2;
	s->next_try_ns = qpi_now_ns() + s->backoff_ms * 1000000;
}

/* A connection for a call, with a reference: the current one, or a new
 * one dialled by this call (with backoff). s->mu held. */
static int
ce_get_conn_locked(qpi_ce *s, int64_t deadline_ns, ce_conn **cp)
{
	int rv = QP_OK;

	for (;;) {
		ce_conn *c;

		if (s->closed) {
			return qpi_err(
			    QP_ECLOSED, "%s: handle closed", s->addr.url);
		}
		if (s->cur != NULL && !s->cur->broken) {
			s->cur->refs++;
			*cp = s->cur;
			return QP_OK;
		}
		if (qpi_remaining_ns(deadline_ns) == 0) {
			if (rv == QP_OK) {
				qpi_err(QP_ECONNREFUSED, "no connection to %s",
				    s->addr.url);
			}
			return rv == QP_EAUTH || rv == QP_EPROTO
			    ? rv
			    : QP_ECONNREFUSED;
		}
		if (s->connecting || qpi_now_ns() < s->next_try_ns) {
			int64_t until = s->connecting      ? deadline_ns
			    : s->next_try_ns < deadline_ns ? s->next_try_ns
			                                   : deadline_ns;
			qpi_cond_wait(&s->cv, &s->mu, until);
			continue;
		}
		s->connecting = true;
		pthread_mutex_unlock(&s->mu);
		rv = ce_dial(s, deadline_ns, &c);
		pthread_mutex_lock(&s->mu);
		s->connecting = false;
		pthread_cond_broadcast(&s->cv);
		if (rv == QP_OK) {
			if (s->closed) {
				ce_conn_unref_locked(c);
				continue;
			}
			if (s->cur != NULL) {
				ce_conn_unref_locked(s->cur);
			}
			c->num = ++s->nconn != 0 ? s->nconn : ++s->nconn;
			s->cur = c;
			/* Should it break before a reply, the next dial
			 * waits: a reply resets the backoff (qpi_ce_call). */
			ce_backoff_locked(s);
			continue;
		}
		if (rv == QP_EINVAL || rv == QP_ENOMEM || rv == QP_EAUTH
		    || rv == QP_ELIMIT) {
			return rv;
		}
		ce_backoff_locked(s);
	}
}

/* Hands reply m (len bytes after its request id, cap bytes in all) to its
 * waiter; a late one, which has none, is dropped. s->mu held. */
static void
ce_dispatch_locked(qpi_ce *s, ce_conn *c, uint8_t *m, size_t len, size_t cap)
{
	uint32_t id = qpi_sp_get32(m);

	for (ce_wait *w = s->waiters; w != NULL; w = w->next) {
		if (w->id == id && w->conn == c && !w->done) {
			w->rep = (qpi_ce_reply) {m, cap, m + 4, len};
			w->done = true;
			pthread_cond_broadcast(&s->cv);
			return;
		}
	}
	free(m);
}

static void
ce_wait_remove_locked(qpi_ce *s, ce_wait *w)
{
	for (ce_wait **pp = &s->waiters; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	}
}

int
qpi_ce_call(qpi_ce *s, const void *req, size_t len, int64_t conn_deadline_ns,
    int64_t reply_deadline_ns, qpi_ce_reply *rep, uint32_t *connp)
{
	ce_wait w;
	ce_conn *c = NULL;
	int rv;

	memset(&w, 0, sizeof(w));
	pthread_mutex_lock(&s->mu);
	if ((rv = ce_get_conn_locked(s, conn_deadline_ns, &c)) != QP_OK) {
		pthread_mutex_unlock(&s->mu);
		return rv;
	}
	s->next_id = (s->next_id + 1) & 0x7fffffffu;
	w.id = 0x80000000u | s->next_id;
	w.conn = c;
	w.next = s->waiters;
	s->waiters = &w;
	pthread_mutex_unlock(&s->mu);

	pthread_mutex_lock(&c->wmu);
	rv = qpi_link_send_frame(
	    c->l, w.id, false, req, len, reply_deadline_ns);
	pthread_mutex_unlock(&c->wmu);

	pthread_mutex_lock(&s->mu);
	if (rv != QP_OK) {
		/* A frame half written spoils the stream. */
		ce_break_locked(s, c);
		rv = QP_ECONNRESET;
	}
	while (rv == QP_OK && !w.done) {
		if (s->closed) {
			rv = QP_ECLOSED;
		} else if (c->broken) {
			rv = QP_ECONNRESET;
		} else if (!c->reading) {
			size_t max = s->max_recv, mlen, mcap;
			uint8_t *m;
			c->reading = true;
			if (c->rd.spare == NULL) {
				c->rd.spare = s->spare;
				c->rd.spare_cap = s->spare_cap;
				s->spare = NULL;
			}
			pthread_mutex_unlock(&s->mu);
			rv = qpi_link_read_frame(c->l, &c->rd, max, &m, &mlen,
			    &mcap, reply_deadline_ns);
			pthread_mutex_lock(&s->mu);
			c->reading = false;
			/* A kept buffer the frame did not use: back. */
			if (s->spare == NULL) {
				s->spare = c->rd.spare;
				s->spare_cap = c->rd.spare_cap;
				c->rd.spare = NULL;
			}
			pthread_cond_broadcast(&s->cv);
			if (rv == QP_OK) {
				ce_dispatch_locked(s, c, m, mlen, mcap);
			} else if (rv != QP_ETIMEDOUT) {
				/* Lost, or bad: the stream is spoilt. */
				ce_break_locked(s, c);
				rv = QP_ECONNRESET;
			}
		} else if (qpi_cond_wait(&s->cv, &s->mu, reply_deadline_ns)
		        == QP_ETIMEDOUT
		    && !w.done) {
			rv = QP_ETIMEDOUT;
		}
	}
	if (w.done) {
		rv = QP_OK;
		s->backoff_ms = 0; /* the server answers: redial at once */
		s->next_try_ns = 0;
	}
	ce_wait_remove_locked(s, &w);
	*connp = c->num;
	ce_conn_unref_locked(c);
	pthread_mutex_unlock(&s->mu);
	switch (rv) {
	case QP_OK:
		*rep = w.rep;
		return QP_OK;
	case QP_ECLOSED:
		return qpi_err(QP_ECLOSED, "%s: handle closed", s->addr.url);
	case QP_ETIMEDOUT:
		return qpi_err(
		    QP_ETIMEDOUT, "no reply from %s in time", s->addr.url);
	default:
		return qpi_err(
		    QP_ECONNRESET, "connection to %s lost", s->addr.url);
	}
}

void
qpi_ce_reply_free(qpi_ce *s, qpi_ce_reply *rep)
{
	uint8_t *mem = rep->mem;

	rep->mem = NULL;
	if (mem == NULL) {
		return;
	}
	if (rep->cap >= QPI_CE_SPARE_MIN && rep->cap <= QPI_CE_SPARE_MAX) {
		pthread_mutex_lock(&s->mu);
		if (s->spare == NULL) {
			s->spare = mem;
			s->spare_cap = rep->cap;
			mem = NULL;
		}
		pthread_mutex_unlock(&s->mu);
	}
	free(mem);
}

void
qpi_ce_drop(qpi_ce *s, uint32_t conn)
{
	pthread_mutex_lock(&s->mu);
	if (s->cur != NULL && s->cur->num == conn) {
		ce_break_locked(s, s->cur);
	}
	pthread_mutex_unlock(&s->mu);
}

void
qpi_ce_close(qpi_ce *s)
{
	pthread_mutex_lock(&s->mu);
	s->closed = true;
	if (s->cur != NULL) {
		ce_break_locked(s, s->cur);
	}
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

void
qpi_ce_free(qpi_ce *s)
{
	if (s == NULL) {
		return;
	}
	if (s->cur != NULL) {
		ce_conn_unref_locked(s->cur);
	}
	free(s->spare);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

void
qpi_ce_forget(qpi_ce *s)
{
	if (s == NULL) {
		return;
	}
	if (s->cur != NULL) {
		qpi_link_forget(s->cur->l); /* plain sockets: close the fd */
		qpi_link_rd_free(&s->cur->rd);
		free(s->cur);
	}
	free(s->spare);
	free(s);
}
