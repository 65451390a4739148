/*
 * link_stream.c - the nng-stream driver of qpiped's links (link.h):
 * tls+tcp://, and tcp:// and ipc:// with --transport nng, accepted by
 * lib's nng listener (listener.c) and moved by nng's aio: one
 * read and one write under way at most per link, their callbacks on
 * nng's threads. A read hands its bytes to qps_link_input and reads again
 * unless the link is paused; a write takes the link's whole out queue
 * (swapped with the write buffer, so that replies queued meanwhile never
 * move bytes under nng) and, once written, the next. Requests a pause
 * left unread (link.c's inbuf) are taken up by a 0 ms sleep on the read
 * aio, so that they go on from its callback as a read's bytes would.
 *
 * Locking: the link's mu guards reading, sending and the buffers, as
 * link.c's; each read or write under way holds a reference, so a link is
 * freed (its aios reaped, its stream freed) only when neither is.
 */
#include "../lib/link.h" /* lib's: its nng listener */
#include "link.h"

#include <stdlib.h>
#include <sys/socket.h>

#define ST_RBUF (16u * 1024u)

/* The next read: of the stream, or, when a pause left requests in
 * inbuf, a 0 ms sleep whose completion goes on with them. */
static void
st_read_next(qps_link *l)
{
	nng_iov iov = {.iov_buf = l->rbuf, .iov_len = ST_RBUF};

	l->rx_sleep = l->inlen > 0;
	if (l->rx_sleep) {
		nng_sleep_aio(0, l->rx);
	} else {
		nng_aio_set_iov(l->rx, 1, &iov);
		nng_stream_recv(l->st, l->rx);
	}
}

static void
st_send(qps_link *l)
{
	nng_iov iov
	    = {.iov_buf = l->sbuf + l->soff, .iov_len = l->slen - l->soff};

	l->inflight = l->slen - l->soff;
	nng_aio_set_iov(l->tx, 1, &iov);
	nng_stream_send(l->st, l->tx);
}

/* Closes the stream once: nng ends the read and the write under way,
 * and none starts after (nng 1.5 would keep a read begun on a closed
 * stream for ever). l->mu held. True when no read is under way to see
 * the end: the caller closes the link. */
static bool
st_close_locked(qps_link *l)
{
	if (!l->st_closed) {
		l->st_closed = true;
		nng_stream_close(l->st);
	}
	return !l->reading;
}

static void
st_kick(qps_link *l)
{
	if (l->st_closed) {
		return;
	}
	if (!l->sending && l->outlen > l->outoff) {
		uint8_t *b = l->sbuf;
		size_t cap = l->scap;
		l->sbuf = l->out;
		l->scap = l->outcap;
		l->soff = l->outoff;
		l->slen = l->outlen;
		l->out = b;
		l->outcap = cap;
		l->outoff = l->outlen = 0;
		l->sending = true;
		l->refs++;
		st_send(l);
	}
	if (l->admitted && !l->paused && !l->reading) {
		l->reading = true;
		l->refs++;
		st_read_next(l);
	}
}

static void
st_rx_cb(void *arg)
{
	qps_link *l = arg;
	int rv = nng_aio_result(l->rx);
	size_t n = nng_aio_count(l->rx);
	const char *why = NULL;
	bool again, gone;

	if (l->rx_sleep) {
		/* Not a read: go on with what a pause left. */
		l->rx_sleep = false;
		n = 0;
		rv = rv == NNG_ETIMEDOUT ? 0 : rv;
	}
	if (rv != 0 || !qps_link_input(l, l->rbuf, n, &why)) {
		if (rv != 0) {
			why = rv == NNG_ECLOSED ? NULL : nng_strerror(rv);
		}
		qps_link_close(l, why);
		qps_link_unref(l);
		return;
	}
	pthread_mutex_lock(&l->mu);
	again = !l->paused && !l->dead && !l->st_closed;
	gone = l->st_closed;
	l->reading = again;
	if (again) {
		st_read_next(l);
	}
	pthread_mutex_unlock(&l->mu);
	if (gone) {
		qps_link_close(l, NULL);
	}
	if (!again) {
		qps_link_unref(l);
	}
}

static void
st_tx_cb(void *arg)
{
	qps_link *l = arg;
	int rv = nng_aio_result(l->tx);
	bool gone;

	pthread_mutex_lock(&l->mu);
	if (rv == 0) {
		l->soff += nng_aio_count(l->tx);
		if (l->soff < l->slen) {
			st_send(l); /* the rest of it */
			pthread_mutex_unlock(&l->mu);
			return;
		}
	}
	l->sending = false;
	l->inflight = 0;
	if (rv == 0) {
		qps_link_kick_locked(l); /* the next batch; reading again */
	}
	gone = rv != 0 || (qps_link_shut_due_locked(l) && st_close_locked(l));
	pthread_mutex_unlock(&l->mu);
	if (gone) {
		qps_link_close(
		    l, rv != 0 && rv != NNG_ECLOSED ? "write failed" : NULL);
	}
	qps_link_unref(l);
}

static void
st_shut(qps_link *l)
{
	bool gone;

	pthread_mutex_lock(&l->mu);
	gone = !l->dead && st_close_locked(l);
	pthread_mutex_unlock(&l->mu);
	if (gone) {
		qps_link_close(l, NULL);
	}
}

static void
st_close(qps_link *l)
{
	pthread_mutex_lock(&l->mu);
	st_close_locked(l);
	pthread_mutex_unlock(&l->mu);
}

static void
st_free(qps_link *l)
{
	/* Possibly on one of l's own aio callbacks: reaped, not freed. */
	if (l->rx != NULL) {
		nng_aio_reap(l->rx);
	}
	if (l->tx != NULL) {
		nng_aio_reap(l->tx);
	}
	if (l->st != NULL) {
		nng_stream_free(l->st);
	}
	free(l->rbuf);
	free(l->sbuf);
}

/* A link accepted (listener.c): its stream made a link and started. */
static void
st_adopt(qpi_link *ql)
{
	char peer[80] = "";
	bool ipc = ql->ipc;
	nng_stream *st = qpi_link_nng_take(ql);
	nng_sockaddr sa;
	qps_link *l;

	if (!ipc && nng_stream_get_addr(st, NNG_OPT_REMADDR, &sa) == 0) {
		if (sa.s_family == NNG_AF_INET) {
			qps_link_format_peer(AF_INET, &sa.s_in.sa_addr,
			    sa.s_in.sa_port, peer, sizeof(peer));
		} else if (sa.s_family == NNG_AF_INET6) {
			qps_link_format_peer(AF_INET6, sa.s_in6.sa_addr,
			    sa.s_in6.sa_port, peer, sizeof(peer));
		}
	}
	if ((l = qps_link_new(&qps_link_stream, ipc, peer)) == NULL) {
		nng_stream_free(st);
		return;
	}
	l->st = st;
	if (nng_aio_alloc(&l->rx, st_rx_cb, l) != 0
	    || nng_aio_alloc(&l->tx, st_tx_cb, l) != 0
	    || (l->rbuf = malloc(ST_RBUF)) == NULL) {
		qps_log(QPS_LOG_ERROR, "out of memory for a connection");
		qps_link_close(l, NULL);
	} else {
		qps_link_start(l);
	}
	qps_link_unref(l);
}

const qps_link_driver qps_link_stream = {
    .name = "nng stream",
    .adopt = st_adopt,
    .kick = st_kick,
    .shut = st_shut,
    .close = st_close,
    .free = st_free,
};
