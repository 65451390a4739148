/*
 * rpipe.c - pipes through the server (PROTOCOL.md, pipes): a Connection
 * whose messages travel through qpiped. Each end is a session of its own
 * (rclient.c) that holds one side of a named pipe. A receiving end keeps
 * one pipe_recv parked on the server at all times (the prefetcher, a
 * thread of the end): a message that arrives is queued here, an eventfd
 * is readable while one waits, and peek/take read the local queue. The
 * prefetcher stops while RP_RXQ_MAX bytes are queued, so a slow receiver
 * leaves the messages in the server, whose buffer then holds back the
 * sender. Sending is a synchronous pipe_send. End of file: the server
 * answers QP_ECLOSED once the other side closed (or its connection
 * dropped) and nothing is left. A dropped connection of our own loses the
 * side: end of file too. A pipe end stays with the process that opened
 * it (its side is its connection's): a forked child's copy is refused by
 * conn.c and only forgotten.
 *
 * Locking: p->mu guards the local queue, the end-of-file state and the
 * prefetcher's state; nothing waits on the network with it held.
 */
#include "conn.h"
#include "rclient.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define RP_RXQ_MAX ((size_t) 4 << 20)

typedef struct rp_msg {
	struct rp_msg *next;
	size_t len;
	uint8_t data[]; /* the message's msgpack encoding */
} rp_msg;

typedef struct rpipe {
	qp_conn base; /* first: conn.c sees this */
	qpi_rq *r; /* the session: connection, client id and seqs */
	int side;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* a message came, the end of file, or room */
	rp_msg *head, *tail;
	size_t qbytes;
	bool eof;
	int eof_err;
	char eof_msg[256];
	int efd; /* readable while a message waits or at end of file */
	pthread_t pf; /* the prefetcher */
	bool pf_on;
} rpipe;

static rpipe *
rp_of(qp_conn *c)
{
	return (rpipe *) c;
}

static void
rp_efd_sync(rpipe *p)
{
	uint64_t v;

	if (p->head != NULL || p->eof) {
		v = 1;
		if (write(p->efd, &v, sizeof(v)) < 0) {
			/* at its maximum already: it stays readable */
		}
	} else if (read(p->efd, &v, sizeof(v)) < 0) {
		/* was not readable: nothing to clear */
	}
}

/* Ends the stream: later receives get err once the queue is drained. */
static void
rp_set_eof(rpipe *p, int err, const char *msg)
{
	if (!p->eof) {
		p->eof = true;
		p->eof_err = err;
		snprintf(p->eof_msg, sizeof(p->eof_msg), "%s", msg);
	}
	rp_efd_sync(p);
	pthread_cond_broadcast(&p->cv);
}

/* The prefetcher's answer: a message to queue, or the end. p->mu held. */
static void
rp_pf_answer(rpipe *p, int rv, rq_call *c)
{
	if (rv != QP_OK) {
		/* Our connection dropped (the side with it) or was closed. */
		rp_set_eof(p, rv == QP_ECLOSED ? QP_ECLOSED : QP_ECONNRESET,
		    rv == QP_ECLOSED ? "connection closed"
		                     : "lost the connection to the server");
	} else if (c->rep.status == QP_OK) {
		rp_msg *e = malloc(sizeof(*e) + c->rep.item.len);
		if (e == NULL) {
			rp_set_eof(p, QP_ENOMEM,
			    "out of memory for a received message");
			return;
		}
		e->next = NULL;
		e->len = c->rep.item.len;
		memcpy(e->data, c->rep.item.data, c->rep.item.len);
		if (p->tail != NULL) {
			p->tail->next = e;
		} else {
			p->head = e;
		}
		p->tail = e;
		p->qbytes += e->len;
		rp_efd_sync(p);
		pthread_cond_broadcast(&p->cv);
	} else if (c->rep.status != QP_ETIMEDOUT) {
		/* QP_ECLOSED: the end of file; anything else ends it too. */
		char msg[300];
		snprintf(msg, sizeof(msg), "%s", c->rep.errmsg);
		rp_set_eof(p,
		    c->rep.status == QP_ECONNRESET ? QP_ECLOSED
		                                   : (int) c->rep.status,
		    msg);
	}
}

/* The prefetcher: one pipe_recv (timeout: a slice) after another while
 * the queue has room, until the end of file. */
static void *
rp_pf_main(void *arg)
{
	rpipe *p = arg;

	pthread_mutex_lock(&p->mu);
	while (!p->eof) {
		rq_call c;
		int rv;

		if (p->qbytes >= RP_RXQ_MAX) {
			pthread_cond_wait(&p->cv, &p->mu);
			continue;
		}
		pthread_mutex_unlock(&p->mu);
		qpi_rq_call_init(&c, p->r, QPI_OP_PIPE_RECV);
		c.req.side = p->side;
		c.blocking = true;
		c.deadline_ns = INT64_MAX;
		c.once = true; /* the side dies with its connection */
		rv = qpi_rq_do(p->r, &c);
		pthread_mutex_lock(&p->mu);
		rp_pf_answer(p, rv, &c);
		qpi_rq_call_done(&c);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static int
rp_send(qp_conn *c, bool raw, const void *buf, size_t len, uint8_t binoff)
{
	rpipe *p = rp_of(c);
	qpi_rq *r = p->r;
	uint8_t *tmp = NULL;
	rq_call call;
	int rv;

	(void) binoff;
	if ((uint64_t) len > r->lim.max_message) {
		return qpi_err(QP_ETOOBIG,
		    "message of %zu bytes is over the %llu-byte limit of %s",
		    len, (unsigned long long) r->lim.max_message, r->url);
	}
	qpi_rq_call_init(&call, r, QPI_OP_PIPE_SEND);
	call.req.side = p->side;
	if (!raw) {
		call.req.item.data = buf;
		call.req.item.len = len;
	} else if ((rv = qpi_rq_bin_item(
	                &call.req.item, buf, len, &tmp, "a message"))
	    != QP_OK) {
		return rv;
	}
	call.blocking = true;
	call.deadline_ns = INT64_MAX;
	/* QP_ETIMEDOUT: the server's buffer stayed full for a whole slice. */
	rv = qpi_rq_do_status(r, &call, QP_ETIMEDOUT);
	free(tmp);
	return rv;
}

static int
rp_peek(qp_conn *c, int64_t deadline, qpi_msginfo *mi)
{
	rpipe *p = rp_of(c);
	int rv = QP_OK;

	pthread_mutex_lock(&p->mu);
	while (p->head == NULL && !p->eof) {
		if (deadline == INT64_MAX) {
			pthread_cond_wait(&p->cv, &p->mu);
		} else if (qpi_remaining_ns(deadline) == 0) {
			rv = QP_ETIMEDOUT;
			break;
		} else {
			struct timespec ts = qpi_ts_from_ns(deadline);
			pthread_cond_timedwait(&p->cv, &p->mu, &ts);
		}
	}
	if (p->head != NULL) {
		size_t off = 0, plen = 0;
		mi->len = p->head->len;
		mi->raw = false;
		mi->binoff = qpi_wire_bin_unwrap(
		                 p->head->data, p->head->len, &off, &plen)
		    ? (uint8_t) off
		    : 0;
	} else if (rv == QP_OK) {
		rv = qpi_err(p->eof_err, "pipe %s/%s: %s", p->r->url,
		    p->r->name, p->eof_msg);
	}
	pthread_mutex_unlock(&p->mu);
	return rv;
}

static int
rp_take(qp_conn *c, const qpi_msginfo *mi, size_t skip, void *dst)
{
	rpipe *p = rp_of(c);
	rp_msg *m;

	pthread_mutex_lock(&p->mu);
	m = p->head;
	if (m == NULL || m->len != mi->len) {
		pthread_mutex_unlock(&p->mu);
		return qpi_err(QP_EBUSY,
		    "the message changed under this receive: another thread "
		    "received on the connection at the same time");
	}
	p->head = m->next;
	if (p->head == NULL) {
		p->tail = NULL;
	}
	p->qbytes -= m->len;
	rp_efd_sync(p);
	pthread_cond_broadcast(&p->cv); /* room again */
	pthread_mutex_unlock(&p->mu);
	if (m->len > skip) {
		memcpy(dst, m->data + skip, m->len - skip);
	}
	free(m);
	return QP_OK;
}

static int
rp_fd(qp_conn *c, int *fdp)
{
	*fdp = rp_of(c)->efd;
	return QP_OK;
}

static void
rp_set_max(qp_conn *c)
{
	(void) c; /* the server's limit applies; conn.c checks this one */
}

/* Stops the prefetcher: its parked receive ends with the connection. */
static void
rp_pf_stop(rpipe *p)
{
	pthread_mutex_lock(&p->mu);
	rp_set_eof(p, QP_ECLOSED, "connection closed");
	pthread_mutex_unlock(&p->mu);
	qpi_rq_close(p->r);
	if (p->pf_on) {
		pthread_join(p->pf, NULL);
		p->pf_on = false;
	}
}

static void
rp_close(qp_conn *c)
{
	rpipe *p = rp_of(c);
	rq_call call;

	/* The other side sees the end of file once it has read what was
	 * sent (our sends were all taken by the server). */
	qpi_rq_call_init(&call, p->r, QPI_OP_PIPE_CLOSE);
	call.req.side = p->side;
	qpi_rq_do(p->r, &call);
	qpi_rq_call_done(&call);
	rp_pf_stop(p);
}

/* Frees the end's memory and descriptor, and its session (which in a
 * forked child only forgets its copy): the end of destroy, and all of it
 * for a forked child's copy, whose prefetcher and locks are the parent's. */
static void
rp_forget(qp_conn *c)
{
	rpipe *p = rp_of(c);
	rp_msg *m;

	qpi_rq_free(p->r);
	while ((m = p->head) != NULL) {
		p->head = m->next;
		free(m);
	}
	if (p->efd >= 0) {
		close(p->efd);
	}
	free(p);
}

static void
rp_destroy(qp_conn *c)
{
	rpipe *p = rp_of(c);

	rp_pf_stop(p);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	rp_forget(c);
}

static const qpi_conn_ops rp_ops = {
    .send = rp_send,
    .peek = rp_peek,
    .take = rp_take,
    .fd = rp_fd,
    .set_max = rp_set_max,
    .close = rp_close,
    .destroy = rp_destroy,
    .forget = rp_forget,
};

QP_API int
qp_pipe_open(qp_conn **cp, const char *addr, int side, bool duplex)
{
	return qp_pipe_open_opts(cp, addr, side, duplex, NULL);
}

QP_API int
qp_pipe_open_opts(qp_conn **cp, const char *addr, int side, bool duplex,
    const qp_conn_opts *conn)
{
	pthread_condattr_t ca;
	rpipe *p;
	qpi_addr a;
	rq_call call;
	int rv;

	if (cp == NULL || addr == NULL) {
		return qpi_err(QP_EINVAL, "qp_pipe_open: NULL argument");
	}
	*cp = NULL;
	if (side < -1 || side > 1) {
		return qpi_err(QP_EINVAL,
		    "qp_pipe_open: side must be 0, 1 or -1 (either), not %d",
		    side);
	}
	if ((rv = qpi_addr_parse(addr, QPI_ADDR_NAMED, &a)) != QP_OK) {
		return rv;
	}
	if (a.kind == QPI_ADDR_SHM) {
		return qpi_err(QP_EINVAL,
		    "qp_pipe_open: %s is not a server address (a named pipe "
		    "lives in qpiped: tcp://HOST:PORT/NAME or "
		    "ipc:///PATH/NAME; qp_pipe makes a local one)",
		    addr);
	}
	if ((p = calloc(1, sizeof(*p))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	p->efd = -1;
	pthread_mutex_init(&p->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&p->cv, &ca);
	pthread_condattr_destroy(&ca);
	if ((rv = qpi_rq_new(&p->r, &a, conn)) != QP_OK) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", qp_errmsg());
		pthread_cond_destroy(&p->cv);
		pthread_mutex_destroy(&p->mu);
		free(p);
		return qpi_err(rv, "%s", msg);
	}
	qpi_rq_call_init(&call, p->r, QPI_OP_PIPE_OPEN);
	call.req.side = side;
	call.req.flags = duplex ? 0 : QPI_PIPE_ONEWAY;
	if ((rv = qpi_rq_do(p->r, &call)) == QP_OK) {
		rv = qpi_rq_status(p->r, &call);
	}
	p->side = call.rep.side;
	qpi_rq_call_done(&call);
	if (rv == QP_OK
	    && (p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
		rv = qpi_err(QP_ENOMEM, "out of memory for a pipe end");
	}
	/* Which way it goes is the pipe's (made by whoever opened it
	 * first): a one-way pipe answers EPERM the wrong way round, so the
	 * directions are known from the side only for the pipes this call
	 * made; both are allowed otherwise and the server says no. */
	bool readable = duplex || p->side == 0;
	bool writable = duplex || p->side == 1;
	if (rv == QP_OK && readable) {
		p->pf_on = pthread_create(&p->pf, NULL, rp_pf_main, p) == 0;
		if (!p->pf_on) {
			rv = qpi_err(QP_ENOMEM, "no thread for a pipe end");
		}
	}
	if (rv != QP_OK) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", qp_errmsg());
		rp_destroy(&p->base);
		return qpi_err(rv, "%s", msg);
	}
	qpi_conn_init(&p->base, &rp_ops, readable, writable);
	p->base.owner = p->r->pid;
	*cp = &p->base;
	return QP_OK;
}
