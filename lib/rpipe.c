/*
 * rpipe.c - pipes through the server (PROTOCOL.md, pipes): a Connection
 * whose messages travel through qpiped. Each end is a session of its own
 * (rclient.c) that holds one side of a named pipe. A receiving end keeps
 * one pipe_recv parked on the server at all times (the prefetcher, a
 * thread of the end): a message that arrives is queued in the local
 * queue shared with netconn.c (conn.h's qpi_rxq: an eventfd readable
 * while one waits, peek/take). The prefetcher stops while QPI_RXQ_MAX
 * bytes are queued, so a slow receiver leaves the messages in the
 * server, whose buffer then holds back the sender. Sending is a synchronous
 * pipe_send. End of file: the server answers QP_ECLOSED once the other side
 * closed (or its connection dropped) and nothing is left. A dropped connection
 * of our own loses the side: end of file too. A pipe end stays with the
 * process that opened it (its side is its connection's): a forked child's copy
 * is refused by conn.c and only forgotten.
 *
 * Locking: the local queue (conn.c's qpi_rxq) has its own mutex; nothing
 * waits on the network with it held.
 */
#include "conn.h"
#include "rclient.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct rpipe {
	qpi_rxconn rx; /* first: conn.c sees this; what the prefetcher got */
	qpi_rq *r; /* the session: connection, client id and seqs */
	int side;
	pthread_t pf; /* the prefetcher */
	bool pf_on;
} rpipe;

/* Ends the stream: later receives get err once the queue is drained. */
static void
rp_set_eof(rpipe *p, int err, const char *msg)
{
	qpi_rxq_end(
	    &p->rx.q, err, "pipe %s/%s: %s", p->r->url, p->r->name, msg);
}

/* The prefetcher's answer: a message to queue, or the end. */
static void
rp_pf_answer(rpipe *p, int rv, rq_call *c)
{
	uint8_t *d;

	if (rv != QP_OK) {
		/* Our connection dropped (the side with it) or was closed. */
		rp_set_eof(p, rv == QP_ECLOSED ? QP_ECLOSED : QP_ECONNRESET,
		    rv == QP_ECLOSED ? "connection closed"
		                     : "lost the connection to the server");
	} else if (c->rep.status == QP_OK) {
		if ((d = malloc(c->rep.item.len + 1)) != NULL) {
			memcpy(d, c->rep.item.data, c->rep.item.len);
		}
		if (d == NULL
		    || qpi_rxq_push(&p->rx.q, d, 0, c->rep.item.len)
		        == QP_ENOMEM) {
			rp_set_eof(p, QP_ENOMEM,
			    "out of memory for a received message");
		}
	} else if (c->rep.status != QP_ETIMEDOUT) {
		/* QP_ECLOSED: the end of file; anything else ends it too. */
		rp_set_eof(p,
		    c->rep.status == QP_ECONNRESET ? QP_ECLOSED
		                                   : (int) c->rep.status,
		    c->rep.errmsg);
	}
}

/* The prefetcher: one pipe_recv (timeout: a slice) after another while
 * the queue has room, until the end of file. */
static void *
rp_pf_main(void *arg)
{
	rpipe *p = arg;

	while (qpi_rxq_wait_room(&p->rx.q)) {
		rq_call c;
		qpi_rq_call_init(&c, p->r, QPI_OP_PIPE_RECV, INT64_MAX);
		c.req.side = p->side;
		c.once = true; /* the side dies with its connection */
		rp_pf_answer(p, qpi_rq_do(p->r, &c), &c);
		qpi_rq_call_done(&c);
	}
	return NULL;
}

static int
rp_send(qp_conn *c, bool raw, const void *buf, size_t len, uint8_t binoff)
{
	rpipe *p = (rpipe *) c;
	qpi_rq *r = p->r;
	uint8_t *tmp;
	rq_call call;
	int rv;

	(void) binoff;
	qpi_rq_call_init(&call, r, QPI_OP_PIPE_SEND, INT64_MAX);
	call.req.side = p->side;
	if ((rv = qpi_rq_item(
	         r, &call.req.item, raw, buf, len, &tmp, "message"))
	    != QP_OK) {
		return rv;
	}
	/* QP_ETIMEDOUT: the server's buffer stayed full for a whole slice. */
	rv = qpi_rq_do_status(r, &call, QP_ETIMEDOUT);
	free(tmp);
	return rv;
}

/* Stops the prefetcher: its parked receive ends with the connection. */
static void
rp_pf_stop(rpipe *p)
{
	rp_set_eof(p, QP_ECLOSED, "connection closed");
	qpi_rq_close(p->r);
	if (p->pf_on) {
		pthread_join(p->pf, NULL);
		p->pf_on = false;
	}
}

static void
rp_close(qp_conn *c)
{
	rpipe *p = (rpipe *) c;
	rq_call call;

	/* The other side sees the end of file once it has read what was
	 * sent (our sends were all taken by the server). */
	qpi_rq_call_init(&call, p->r, QPI_OP_PIPE_CLOSE, 0);
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
	rpipe *p = (rpipe *) c;

	qpi_rq_free(p->r);
	qpi_rxq_free(&p->rx.q, false);
	free(p);
}

static void
rp_destroy(qp_conn *c)
{
	rpipe *p = (rpipe *) c;

	rp_pf_stop(p);
	qpi_rq_free(p->r);
	qpi_rxq_free(&p->rx.q, true);
	free(p);
}

static const qpi_conn_ops rp_ops = {
    .send = rp_send,
    .peek = qpi_rxq_peek,
    .take = qpi_rxq_take,
    .fd = qpi_rxq_fd,
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
	if ((rv = qpi_rxq_init(&p->rx.q)) != QP_OK
	    || (rv = qpi_rq_new(&p->r, &a, conn)) != QP_OK) {
		if (p->rx.q.efd > 0) {
			qpi_rxq_free(&p->rx.q, true);
		}
		free(p);
		return rv;
	}
	qpi_rq_call_init(&call, p->r, QPI_OP_PIPE_OPEN, 0);
	call.req.side = side;
	call.req.flags = duplex ? 0 : QPI_PIPE_ONEWAY;
	rv = qpi_rq_run(p->r, &call);
	p->side = call.rep.side;
	qpi_rq_call_done(&call);
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
		rp_destroy(&p->rx.base); /* leaves the message as it is */
		return rv;
	}
	qpi_conn_init(&p->rx.base, &rp_ops, readable, writable);
	p->rx.base.owner = p->r->pid;
	*cp = &p->rx.base;
	return QP_OK;
}
