/*
 * nngconn.c - Connections across hosts: qp_listen / qp_listener_accept /
 * qp_dial (Python's connection.Listener and Client).
 *
 * Design. A Connection is one nng byte stream (nng_stream: tcp://, ipc://,
 * tls+tcp://) that speaks the SP pair1 protocol on the wire, exactly as an
 * nng pair1 socket does: the 8-byte SP header {0, 'S', 'P', 0, 0x00, 0x11,
 * 0, 0} each way, then frames of a 64-bit big-endian length (ipc: a 0x01
 * byte first) holding pair1's 32-bit hop count (1) and one msgpack value.
 * Before any message the two ends open a session (session.c, the same code
 * the remote queue client uses): the dialer's hello, the listener's answer
 * (its version, its max_message, a fresh nonce, whether a token is
 * required), then with a token auth (the HMAC of the nonce, and a nonce of
 * its own) and the listener's own proof or refusal (auth.c), all within
 * 10 s or the connection is closed. A refused dialer gets QP_EAUTH and is
 * never accepted; the listener counts it. After that each frame is one
 * message of the Connection (send_bytes sends a bin). So any pair1 socket
 * (nngcat --pair1) that sends a hello first can dial a qpipe listener
 * without a token, and a pair1 listener that answers it can be dialed.
 *
 * Setting up goes through the connection layer's nng driver (link.h):
 * qp_dial dials a link and does the SP handshake there (link.c, which also
 * explains a failed TLS handshake); qp_listen's acceptor thread takes each
 * link from the layer's listener and gives it a short thread of its own
 * for the handshake and the session (nc_pending_main). Once the session is
 * open, the connection takes the link's nng stream and reads it with
 * nng's callbacks. tls+tcp:// streams are nng's TLS streams, configured
 * by tls.c; their framing is tcp's. nng's pair1 sockets are not used
 * because a pair1 socket has one peer and redials after a drop: a listener
 * could not hand out one Connection per client on one port (polyamorous
 * mode drops messages when a peer is slow), and a redialed connection
 * would hide the end of file. With streams the listener accepts any
 * number of clients on one address, and a dropped connection is final:
 * end of file.
 *
 * Receiving. Each connection has a reader run by nng's callbacks: it reads
 * into a 64 KiB buffer, cuts frames out of it (the rest of a frame over
 * 16 KiB is read straight into its own allocation, after its length is
 * checked against the connection's maximum, which stands in for
 * NNG_OPT_RECVMAXSZ: nothing is allocated from an unchecked length), checks
 * each message is one msgpack value, and queues it. The reader stops while
 * RXQ_MAX bytes are queued, so a slow receiver pushes back on the sender
 * through TCP. recv waits on a condition variable with its deadline; an
 * eventfd is kept readable exactly while a message is queued or the stream
 * has ended (qp_conn_fd). The end of the stream (the peer closed, died, or
 * broke the protocol) is recorded and reported once the queue is drained.
 *
 * Sending is synchronous: the caller's thread writes the frame (header and
 * payload in two iovs, no copy) and waits for nng to take it all. A dialer
 * refuses a message over the max_message of the listener's hello
 * (QP_ETOOBIG, nothing sent) rather than have it end the connection.
 *
 * nng 1.5's TLS streams. Two faults of nng 1.5.2 shape the code: a
 * transfer given to a TLS stream after it failed or was closed waits for
 * ever (the stream drops it), and cancelling or timing out a send there
 * does nothing. Closing the stream always ends the transfers it holds. So
 * handshakes run on the link layer, whose nng driver watches TLS transfers
 * with a timer that closes the stream and never starts one after a close;
 * a TLS connection's reader closes the stream when it ends, and a sender
 * that finds the end after giving its send closes it again.
 *
 * Locking: per connection, mu guards the reader's state and the queue;
 * txmu serialises senders. One thread receives at a time (a receive looks
 * at the head message, then takes it; a second receiver in between gets
 * QP_EBUSY rather than someone else's message). Per listener, mu guards the
 * handshakes in progress (and the hand-over of a pending link's stream,
 * which the listener's free may be shutting down) and the connections ready
 * to be accepted. Nothing is submitted to nng while a lock is held that its
 * callbacks take.
 *
 * fork(). nng's threads stay in the parent, and nng panics if a forked
 * child starts it again: listeners and connections record the process that
 * made them, and in a forked child every call on them is refused (conn.c
 * for connections, here for listeners) and free only releases the child's
 * copy of their memory (nc_forget, nc_listener_forget), touching neither
 * nng, whose stream close would shut the parent's socket down, nor a lock
 * that a thread of the parent may have held at the fork. New listeners and
 * dials claim nng for their process first (nngproc.h).
 */
#include "nngconn.h"
#include "call.h"
#include "link.h"
#include "nngproc.h"
#include "session.h"
#include "sp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/util/platform.h>

#define SP_PAIR1     0x11u /* the SP protocol number of pair1 */
#define HOPS_MAX     0xffu
#define RXBUF        ((size_t) 64 * 1024)
#define RXDIRECT     ((size_t) 16 * 1024)
#define RXQ_MAX      ((size_t) 4 << 20)
#define NEGO_MS      10000
#define PENDING_MAX  256
#define FRAME_EXTRA  16u /* pair1 header + bin header, with room */
#define DIAL_TRY_MS  10000
#define BACKOFF_MIN  10
#define BACKOFF_MAX  250
#define RX_ERRMSG_SZ 200
#define HELLO_MAX    4096 /* the largest hello frame either side takes */

/* A received message: the frame (pair1 header, then the msgpack value). */
struct nmsg {
	struct nmsg *next;
	size_t len; /* bytes of the value, after the 4-byte pair1 header */
	uint8_t binoff;
	uint8_t data[];
};

struct nngconn {
	qp_conn base;
	nng_stream *st;
	bool ipc;
	bool tls; /* nng's TLS stream: see "nng 1.5's TLS streams" above */
	struct nngconn *next_ready; /* the listener's queue */
	char peer[QPI_URL_MAX + 1]; /* for messages */

	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* reader, under mu */
	nng_aio *rxaio;
	uint8_t *rxbuf;
	size_t rxlen; /* bytes in rxbuf */
	size_t rxoff; /* bytes of rxbuf already cut into messages */
	struct nmsg *big; /* a frame larger than rxbuf, being read */
	size_t big_frame;
	size_t big_got;
	bool rx_busy; /* a receive is submitted */
	bool rx_paused; /* stopped: the queue is full */
	bool eof;
	int rx_err; /* what recv says once the queue is drained */
	char rx_errmsg[RX_ERRMSG_SZ];
	size_t frame_max;
	uint64_t peer_max; /* the listener's max_message, from its hello */
	struct nmsg *qhead;
	struct nmsg *qtail;
	size_t qbytes;
	int efd;
	bool efd_set;

	/* sender */
	pthread_mutex_t txmu;
	nng_aio *txaio;
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
	pid_t owner; /* the process that made it: nng does not survive fork */
	size_t max_message; /* of each connection, told in the hello */
	qpi_token token; /* len 0: none required */
	char url[QPI_URL_MAX + 16];
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t acc; /* the acceptor */
	bool closing;
	struct pending *pend;
	size_t npend;
	struct nngconn *ready_head;
	struct nngconn *ready_tail;
	size_t nready;
	uint64_t refused; /* dialers that did not authenticate */
};

/* ---- helpers ---- */

static inline struct nngconn *
nc_conn(qp_conn *c)
{
	return (struct nngconn *) c;
}

/* ---- the reader (nng callbacks; mu held unless said otherwise) ---- */

static void
nc_efd_set(struct nngconn *c)
{
	if (!c->efd_set) {
		uint64_t one = 1;
		ssize_t n = write(c->efd, &one, sizeof(one));
		(void) n;
		c->efd_set = true;
	}
}

static void
nc_efd_clear(struct nngconn *c)
{
	if (c->efd_set) {
		uint64_t v;
		ssize_t n = read(c->efd, &v, sizeof(v));
		(void) n;
		c->efd_set = false;
	}
}

/* Ends the stream: recv reports err once the queue is drained. */
static void nc_fail(struct nngconn *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
nc_fail(struct nngconn *c, int err, const char *fmt, ...)
{
	va_list ap;

	if (c->eof) {
		return;
	}
	c->eof = true;
	c->rx_err = err;
	va_start(ap, fmt);
	vsnprintf(c->rx_errmsg, sizeof(c->rx_errmsg), fmt, ap);
	va_end(ap);
	free(c->big);
	c->big = NULL;
	if (err != QP_ECLOSED || c->tls) {
		/* Tell the peer: the stream is no longer in step. A TLS
		 * stream is closed at its end in any case, which fails a
		 * send waiting on it. */
		nng_stream_close(c->st);
	}
	nc_efd_set(c);
	pthread_cond_broadcast(&c->cv);
}

/* Checks a whole frame and queues its message; frees it on error. */
static void
nc_deliver(struct nngconn *c, struct nmsg *m, size_t frame)
{
	uint32_t hops = ((uint32_t) m->data[0] << 24)
	    | ((uint32_t) m->data[1] << 16) | ((uint32_t) m->data[2] << 8)
	    | m->data[3];
	size_t off, plen;

	m->len = frame - 4;
	m->binoff = 0;
	m->next = NULL;
	if (hops > HOPS_MAX) {
		free(m);
		nc_fail(c, QP_EPROTO,
		    "%s sent a frame with a bad pair1 header; connection "
		    "closed",
		    c->peer);
		return;
	}
	if (qpi_wire_check_value(m->data + 4, m->len) != QP_OK) {
		free(m);
		nc_fail(c, QP_EPROTO,
		    "%s sent a %zu-byte message that is not one msgpack "
		    "value; "
		    "connection closed",
		    c->peer, frame - 4);
		return;
	}
	if (qpi_wire_bin_unwrap(m->data + 4, m->len, &off, &plen)) {
		m->binoff = (uint8_t) off;
	}
	if (c->qtail != NULL) {
		c->qtail->next = m;
	} else {
		c->qhead = m;
	}
	c->qtail = m;
	c->qbytes += m->len;
	nc_efd_set(c);
	pthread_cond_broadcast(&c->cv);
}

/* Cuts the complete frames out of rxbuf; starts a big frame if one is too
 * large for it. */
static void
nc_parse(struct nngconn *c)
{
	while (!c->eof && c->big == NULL) {
		size_t avail = c->rxlen - c->rxoff, fh;
		uint8_t *p = c->rxbuf + c->rxoff;
		uint64_t frame = 0;
		int hl = qpi_sp_frame_parse(p, avail, c->ipc, &frame);
		if (hl == 0) {
			break;
		}
		if (hl < 0) {
			nc_fail(c, QP_EPROTO,
			    "%s sent an ipc frame of type %u; connection "
			    "closed",
			    c->peer, p[0]);
			return;
		}
		fh = (size_t) hl;
		if (frame < 4) {
			nc_fail(c, QP_EPROTO,
			    "%s sent a frame without a pair1 header; "
			    "connection "
			    "closed",
			    c->peer);
			return;
		}
		if (frame - 4 > c->frame_max) {
			nc_fail(c, QP_ETOOBIG,
			    "%s sent a %llu-byte message, over this "
			    "connection's maximum of %zu; connection closed",
			    c->peer, (unsigned long long) (frame - 4),
			    c->base.max_message);
			return;
		}
		struct nmsg *m;
		if (avail - fh >= frame) {
			if ((m = malloc(sizeof(*m) + frame)) == NULL) {
				nc_fail(c, QP_ENOMEM,
				    "out of memory receiving %llu bytes",
				    (unsigned long long) frame);
				return;
			}
			memcpy(m->data, p + fh, frame);
			c->rxoff += fh + frame;
			nc_deliver(c, m, frame);
			continue;
		}
		if (frame <= RXDIRECT) {
			break; /* the rest comes into the buffer */
		}
		/* A larger frame: its rest is read straight into its own
		 * allocation, saving a copy. */
		if ((m = malloc(sizeof(*m) + frame)) == NULL) {
			nc_fail(c, QP_ENOMEM,
			    "out of memory receiving %llu bytes",
			    (unsigned long long) frame);
			return;
		}
		memcpy(m->data, p + fh, avail - fh);
		c->big = m;
		c->big_frame = frame;
		c->big_got = avail - fh;
		c->rxoff = c->rxlen;
	}
	if (c->rxoff == c->rxlen) {
		c->rxoff = c->rxlen = 0;
	} else if (c->rxoff > 0) {
		memmove(c->rxbuf, c->rxbuf + c->rxoff, c->rxlen - c->rxoff);
		c->rxlen -= c->rxoff;
		c->rxoff = 0;
	}
}

/* Decides whether to read on; if so marks the reader busy and sets its
 * iov. The caller submits after dropping mu. */
static bool
nc_rx_next(struct nngconn *c)
{
	nng_iov iov;

	if (c->eof || c->rx_busy || atomic_load(&c->base.closed)) {
		return false;
	}
	if (c->qbytes >= RXQ_MAX) {
		c->rx_paused = true;
		return false;
	}
	c->rx_paused = false;
	if (c->big != NULL) {
		iov.iov_buf = c->big->data + c->big_got;
		iov.iov_len = c->big_frame - c->big_got;
	} else {
		iov.iov_buf = c->rxbuf + c->rxlen;
		iov.iov_len = RXBUF - c->rxlen;
	}
	nng_aio_set_iov(c->rxaio, 1, &iov);
	c->rx_busy = true;
	return true;
}

static void
nc_rx_cb(void *arg)
{
	struct nngconn *c = arg;
	int rv = nng_aio_result(c->rxaio);
	size_t n = nng_aio_count(c->rxaio);
	bool more;

	pthread_mutex_lock(&c->mu);
	c->rx_busy = false;
	if (rv != 0) {
		if (rv == NNG_ECLOSED && atomic_load(&c->base.closed)) {
			nc_fail(c, QP_ECLOSED, "connection is closed");
		} else if (c->big != NULL || c->rxlen > c->rxoff) {
			nc_fail(c, QP_ECLOSED,
			    "end of file from %s in the middle of a message",
			    c->peer);
		} else {
			nc_fail(c, QP_ECLOSED, "end of file: %s closed (%s)",
			    c->peer, nng_strerror(rv));
		}
	} else if (c->big != NULL) {
		c->big_got += n;
		if (c->big_got == c->big_frame) {
			struct nmsg *m = c->big;
			c->big = NULL;
			nc_deliver(c, m, c->big_frame);
			nc_parse(c);
		}
	} else {
		c->rxlen += n;
		nc_parse(c);
	}
	more = nc_rx_next(c);
	pthread_mutex_unlock(&c->mu);
	if (more) {
		nng_stream_recv(c->st, c->rxaio);
	}
}

/* ---- the connection ops ---- */

static int
nc_send(qp_conn *base, bool raw, const void *buf, size_t len, uint8_t binoff)
{
	struct nngconn *c = nc_conn(base);
	uint8_t hdr[9 + 4 + 5];
	nng_iov iov[2];
	unsigned niov = 0;
	size_t k = 0, hl = 0;
	int rv = QP_OK;

	pthread_mutex_lock(&c->mu);
	bool gone = c->eof;
	pthread_mutex_unlock(&c->mu);
	if (gone) {
		return qpi_err(QP_ECLOSED, "broken pipe: %s is gone", c->peer);
	}
	/* The listener told its limit in its hello: over it, the message
	 * would end the connection; refuse it here, nothing sent. */
	size_t body = raw ? len : len - binoff;
	if (c->peer_max != 0 && body > c->peer_max) {
		return qpi_err(QP_ETOOBIG,
		    "message of %zu bytes is over the maximum of %llu that %s "
		    "accepts; nothing sent",
		    body, (unsigned long long) c->peer_max, c->peer);
	}
	k = qpi_sp_frame_hdr(hdr, c->ipc, 0); /* its length comes below */
	qpi_sp_put32(hdr + k, 1); /* pair1 hop count */
	k += 4;
	if (raw) {
		hl = qpi_wire_bin_header(len, hdr + k);
		k += hl;
	}
	qpi_sp_frame_hdr(hdr, c->ipc, 4 + hl + (uint64_t) len);
	iov[niov].iov_buf = hdr;
	iov[niov++].iov_len = k;
	if (len > 0) {
		iov[niov].iov_buf = (void *) (uintptr_t) buf;
		iov[niov++].iov_len = len;
	}

	pthread_mutex_lock(&c->txmu);
	while (niov > 0) {
		nng_aio_set_iov(c->txaio, niov, iov);
		nng_stream_send(c->st, c->txaio);
		if (c->tls) {
			/* A send given to a TLS stream after it failed would
			 * wait for ever: if the reader saw the end, close
			 * the stream again, which fails the send. */
			pthread_mutex_lock(&c->mu);
			bool dead = c->eof;
			pthread_mutex_unlock(&c->mu);
			if (dead) {
				nng_stream_close(c->st);
			}
		}
		nng_aio_wait(c->txaio);
		int nrv = nng_aio_result(c->txaio);
		if (nrv != 0) {
			rv = qpi_err(qpi_nng_err(nrv) == QP_ENOMEM
			        ? QP_ENOMEM
			        : QP_ECLOSED,
			    "broken pipe: sending to %s: %s", c->peer,
			    nng_strerror(nrv));
			break;
		}
		size_t sent = nng_aio_count(c->txaio);
		while (niov > 0 && sent >= iov[0].iov_len) {
			sent -= iov[0].iov_len;
			iov[0] = iov[1];
			niov--;
		}
		if (niov > 0) {
			iov[0].iov_buf = (uint8_t *) iov[0].iov_buf + sent;
			iov[0].iov_len -= sent;
		}
	}
	pthread_mutex_unlock(&c->txmu);
	return rv;
}

static int
nc_peek(qp_conn *base, int64_t deadline, qpi_msginfo *mi)
{
	struct nngconn *c = nc_conn(base);
	int rv = QP_OK;

	pthread_mutex_lock(&c->mu);
	while (c->qhead == NULL && !c->eof) {
		if (deadline == INT64_MAX) {
			pthread_cond_wait(&c->cv, &c->mu);
		} else if (qpi_remaining_ns(deadline) == 0) {
			rv = QP_ETIMEDOUT;
			break;
		} else {
			struct timespec ts = qpi_ts_from_ns(deadline);
			pthread_cond_timedwait(&c->cv, &c->mu, &ts);
		}
	}
	if (c->qhead != NULL) {
		mi->len = c->qhead->len;
		mi->raw = false;
		mi->binoff = c->qhead->binoff;
	} else if (rv == QP_OK) {
		rv = qpi_err(c->rx_err, "%s", c->rx_errmsg);
	}
	pthread_mutex_unlock(&c->mu);
	return rv;
}

static int
nc_take(qp_conn *base, const qpi_msginfo *mi, size_t skip, void *dst)
{
	struct nngconn *c = nc_conn(base);
	struct nmsg *m;
	bool more;

	pthread_mutex_lock(&c->mu);
	m = c->qhead;
	if (m == NULL || m->len != mi->len) {
		/* another thread received meanwhile: one receiver at a time */
		pthread_mutex_unlock(&c->mu);
		return qpi_err(QP_EBUSY,
		    "the message changed under this receive: another thread "
		    "received on the connection at the same time");
	}
	c->qhead = m->next;
	if (c->qhead == NULL) {
		c->qtail = NULL;
		if (!c->eof) {
			nc_efd_clear(c);
		}
	}
	c->qbytes -= m->len;
	more = c->rx_paused && c->qbytes < RXQ_MAX / 2 && nc_rx_next(c);
	pthread_mutex_unlock(&c->mu);
	if (more) {
		nng_stream_recv(c->st, c->rxaio);
	}
	memcpy(dst, m->data + 4 + skip, m->len - skip);
	free(m);
	return QP_OK;
}

static int
nc_fd(qp_conn *base, int *fdp)
{
	*fdp = nc_conn(base)->efd;
	return QP_OK;
}

static void
nc_set_max(qp_conn *base)
{
	struct nngconn *c = nc_conn(base);

	pthread_mutex_lock(&c->mu);
	c->frame_max = c->base.max_message + FRAME_EXTRA;
	pthread_mutex_unlock(&c->mu);
}

static void
nc_close(qp_conn *base)
{
	/* The reader sees NNG_ECLOSED and ends the stream. */
	nng_stream_close(nc_conn(base)->st);
}

/* Frees the connection's memory and descriptor: the end of destroy, and
 * all of it for a forked child's copy (no nng call, no lock). */
static void
nc_forget(qp_conn *base)
{
	struct nngconn *c = nc_conn(base);
	struct nmsg *m;

	while ((m = c->qhead) != NULL) {
		c->qhead = m->next;
		free(m);
	}
	free(c->big);
	free(c->rxbuf);
	close(c->efd);
	free(c);
}

static void
nc_destroy(qp_conn *base)
{
	struct nngconn *c = nc_conn(base);

	nng_stream_close(c->st);
	nng_aio_stop(c->rxaio);
	nng_aio_stop(c->txaio);
	nng_aio_free(c->rxaio);
	nng_aio_free(c->txaio);
	nng_stream_free(c->st);
	pthread_mutex_destroy(&c->mu);
	pthread_mutex_destroy(&c->txmu);
	pthread_cond_destroy(&c->cv);
	nc_forget(base);
}

static const qpi_conn_ops nc_ops = {
    .send = nc_send,
    .peek = nc_peek,
    .take = nc_take,
    .fd = nc_fd,
    .set_max = nc_set_max,
    .close = nc_close,
    .destroy = nc_destroy,
    .forget = nc_forget,
};

/* Wraps a stream that passed the handshake and starts its reader, with
 * max_message as the connection's limit. On failure the caller still owns
 * the stream. */
static int
nc_new(struct nngconn **cp, nng_stream *st, bool ipc, bool tls,
    const char *peer, size_t max_message)
{
	struct nngconn *c = calloc(1, sizeof(*c));
	pthread_condattr_t ca;
	int rv;

	if (c == NULL || (c->rxbuf = malloc(RXBUF)) == NULL) {
		free(c);
		return qpi_err(QP_ENOMEM, "out of memory for a connection");
	}
	c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->efd < 0) {
		rv = qpi_err(QP_ESYSTEM, "eventfd: %s", strerror(errno));
		free(c->rxbuf);
		free(c);
		return rv;
	}
	if (nng_aio_alloc(&c->rxaio, nc_rx_cb, c) != 0
	    || nng_aio_alloc(&c->txaio, NULL, NULL) != 0) {
		nng_aio_free(c->rxaio);
		close(c->efd);
		free(c->rxbuf);
		free(c);
		return qpi_err(QP_ENOMEM, "out of memory for a connection");
	}
	c->st = st;
	c->ipc = ipc;
	c->tls = tls;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	pthread_mutex_init(&c->mu, NULL);
	pthread_mutex_init(&c->txmu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cv, &ca);
	pthread_condattr_destroy(&ca);
	qpi_conn_init(&c->base, &nc_ops, true, true);
	c->base.owner = getpid();
	c->base.max_message = max_message;
	c->frame_max = c->base.max_message + FRAME_EXTRA;
	nng_aio_set_timeout(c->rxaio, NNG_DURATION_INFINITE);
	nng_aio_set_timeout(c->txaio, NNG_DURATION_INFINITE);

	pthread_mutex_lock(&c->mu);
	bool go = nc_rx_next(c);
	pthread_mutex_unlock(&c->mu);
	if (go) {
		nng_stream_recv(c->st, c->rxaio);
	}
	*cp = c;
	return QP_OK;
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
	struct nngconn *c = NULL;
	char peer[QPI_URL_MAX + 32];
	int rv;

	snprintf(peer, sizeof(peer), "the peer of %s", l->url);
	snprintf(p->link->url, sizeof(p->link->url), "%.280s", peer);
	rv = qpi_link_sp_handshake(
	    p->link, &l->addr, NULL, true, SP_PAIR1, SP_PAIR1, deadline);
	while (rv == QP_OK && !ss.open) {
		uint8_t *body;
		size_t blen;
		uint32_t hops;
		if ((rv = qpi_link_recv_frame(
		         p->link, HELLO_MAX, &hops, &body, &blen, deadline))
		    != QP_OK) {
			break;
		}
		rv = hops >> 8 != 0
		    ? qpi_err(QP_EPROTO, "%s: bad pair1 header", peer)
		    : qpi_session_answer(&ss, body, blen, peer, &out);
		free(body);
		if (out.len > 0) {
			/* The answer, or why not (then close). */
			int srv = qpi_link_send_frame(
			    p->link, 1, out.data, out.len, deadline);
			rv = rv == QP_OK ? srv : rv;
		}
	}
	qpi_wire_buf_free(&out);
	if (rv == QP_OK) {
		/* Under l->mu: the listener's free shuts pending links. */
		pthread_mutex_lock(&l->mu);
		nng_stream *st = qpi_link_nng_take(p->link);
		p->link = NULL;
		pthread_mutex_unlock(&l->mu);
		if (nc_new(&c, st, l->addr.kind == QPI_ADDR_IPC,
		        l->addr.kind == QPI_ADDR_TLS, peer, l->max_message)
		    != QP_OK) {
			nng_stream_free(st);
			c = NULL;
		}
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
		if (l->ready_tail != NULL) {
			l->ready_tail->next_ready = c;
		} else {
			l->ready_head = c;
		}
		l->ready_tail = c;
		l->nready++;
	}
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
	/* l may be gone from here on. */
	if (c != NULL && !keep) {
		c->base.ops->close(&c->base);
		c->base.ops->destroy(&c->base);
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

	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	while (qpi_link_accept(l->L, &link) == QP_OK) {
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

int
qpi_nng_listen(qp_listener **lp, const qpi_addr *a, const qp_conn_opts *o)
{
	qp_listener *l;
	pthread_condattr_t ca;
	int rv;

	if ((l = calloc(1, sizeof(*l))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for a listener");
	}
	l->owner = getpid();
	l->addr = *a;
	l->max_message = o != NULL && o->max_message != 0
	    ? o->max_message
	    : QP_DEFAULT_MAX_MESSAGE;
	if ((rv = qpi_token_resolve(&l->token, o != NULL ? o->token : NULL,
	         o != NULL ? o->token_file : NULL, o != NULL && o->no_token,
	         NULL))
	        != QP_OK
	    || (rv = qpi_link_listen(&l->L, a, o, l->url, sizeof(l->url)))
	        != QP_OK) {
		qpi_token_clear(&l->token);
		free(l);
		return rv;
	}
	pthread_mutex_init(&l->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&l->acc, NULL, nc_acceptor, l) != 0) {
		qpi_link_listener_free(l->L);
		pthread_cond_destroy(&l->cv);
		pthread_mutex_destroy(&l->mu);
		qpi_token_clear(&l->token);
		free(l);
		return qpi_err(QP_ENOMEM, "no thread for a listener");
	}
	*lp = l;
	return QP_OK;
}

uint64_t
qpi_nng_listener_refused(qp_listener *l)
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

const char *
qpi_nng_listener_url(qp_listener *l)
{
	return l->url;
}

int
qpi_nng_accept(qp_listener *l, qp_conn **cp, int64_t deadline)
{
	struct nngconn *c;
	int rv = QP_OK;

	if (qpi_nng_forked(l->owner)) {
		char what[sizeof(l->url) + 16];
		snprintf(what, sizeof(what), "listener %s", l->url);
		return qpi_nng_forked_err(what, l->owner);
	}
	pthread_mutex_lock(&l->mu);
	while (l->ready_head == NULL) {
		if (deadline == INT64_MAX) {
			pthread_cond_wait(&l->cv, &l->mu);
		} else if (qpi_remaining_ns(deadline) == 0) {
			rv = qpi_err(QP_ETIMEDOUT,
			    "no connection to %s within the timeout", l->url);
			break;
		} else {
			struct timespec ts = qpi_ts_from_ns(deadline);
			pthread_cond_timedwait(&l->cv, &l->mu, &ts);
		}
	}
	if (rv == QP_OK) {
		c = l->ready_head;
		l->ready_head = c->next_ready;
		if (l->ready_head == NULL) {
			l->ready_tail = NULL;
		}
		l->nready--;
		c->next_ready = NULL;
		*cp = &c->base;
	}
	pthread_mutex_unlock(&l->mu);
	return rv;
}

/* A forked child's copy: frees the child's memory only (the handshakes in
 * progress and the connections not accepted are the parent's). */
static void
nc_listener_forget(qp_listener *l)
{
	struct nngconn *c;

	while ((c = l->ready_head) != NULL) {
		l->ready_head = c->next_ready;
		nc_forget(&c->base);
	}
	qpi_token_clear(&l->token);
	free(l);
}

void
qpi_nng_listener_free(qp_listener *l)
{
	struct nngconn *c;

	if (qpi_nng_forked(l->owner)) {
		nc_listener_forget(l);
		return;
	}
	pthread_mutex_lock(&l->mu);
	l->closing = true;
	pthread_mutex_unlock(&l->mu);
	qpi_link_listener_close(l->L);
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
	while ((c = l->ready_head) != NULL) {
		l->ready_head = c->next_ready;
		c->base.ops->close(&c->base);
		c->base.ops->destroy(&c->base);
	}
	qpi_link_listener_free(l->L);
	qpi_token_clear(&l->token);
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
	free(l);
}

/* ---- dialing ---- */

typedef struct nc_hs {
	qpi_link *l;
	int64_t deadline;
	int64_t ms; /* the handshake's bound, for messages */
} nc_hs;

/* The session's transport: one pair1 frame each way. */
static int
nc_hs_xfn(void *arg, const void *req, size_t len, uint8_t **repp, size_t *lenp)
{
	nc_hs *h = arg;
	int rv
	    = qpi_ce_exchange(h->l, true, req, len, h->deadline, repp, lenp);

	if (rv == QP_ETIMEDOUT) {
		return qpi_err(QP_ETIMEDOUT,
		    "handshake with %s did not finish within %lld ms",
		    h->l->url, (long long) h->ms);
	}
	if (rv != QP_OK) {
		return qpi_err(rv == QP_ENOMEM ? QP_ENOMEM : QP_EPROTO,
		    "handshake with %s failed: %s", h->l->url,
		    rv == QP_ENOMEM ? "out of memory" : "connection closed");
	}
	return QP_OK;
}

int
qpi_nng_dial(qp_conn **cp, const qpi_addr *a, qp_duration timeout,
    const qp_conn_opts *o)
{
	int64_t deadline = qpi_deadline_ns(timeout);
	int64_t backoff = BACKOFF_MIN;
	qpi_wire_limits lim;
	qpi_token token;
	qpi_link *l;
	bool refused = false;
	int rv;

	if ((rv = qpi_token_resolve(&token, o != NULL ? o->token : NULL,
	         o != NULL ? o->token_file : NULL, o != NULL && o->no_token,
	         NULL))
	    != QP_OK) {
		return rv;
	}
	for (;;) {
		/* One attempt: bounded by the timeout, and by DIAL_TRY_MS
		 * when there is none (0: a single attempt; -1: forever). */
		int64_t now = qpi_now_ns();
		int64_t try_ns = now + (int64_t) DIAL_TRY_MS * 1000000;
		if (timeout != 0 && deadline < try_ns) {
			try_ns = deadline;
		}
		if ((rv = qpi_link_nng_dial(&l, a, o, try_ns)) == QP_OK) {
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
				    a->url);
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
	l->ipc = a->kind == QPI_ADDR_IPC;
	snprintf(l->url, sizeof(l->url), "%s", a->url);
	nc_hs h = {.l = l, .deadline = timeout == 0 ? INT64_MAX : deadline};
	int64_t cap = qpi_now_ns() + (int64_t) NEGO_MS * 1000000;
	h.deadline = h.deadline < cap ? h.deadline : cap;
	h.ms = (qpi_remaining_ns(h.deadline) + 999999) / 1000000;

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
	    .url = a->url,
	    .client_id = id,
	    .client_name = cname,
	    .token = &token,
	    .refused = "refused the token",
	};
	memset(&lim, 0, sizeof(lim));
	if ((rv = qpi_link_sp_handshake(
	         l, a, o, false, SP_PAIR1, SP_PAIR1, h.deadline))
	        != QP_OK
	    || (rv = qpi_random(id, sizeof(id))) != QP_OK
	    || (rv = qpi_session_open(&sc, nc_hs_xfn, &h, &lim)) != QP_OK) {
		qpi_token_clear(&token);
		l->ops->free(l);
		return rv;
	}
	qpi_token_clear(&token);
	struct nngconn *c;
	size_t max = o != NULL && o->max_message != 0 ? o->max_message
	                                              : QP_DEFAULT_MAX_MESSAGE;
	nng_stream *st = qpi_link_nng_take(l);
	if ((rv = nc_new(&c, st, a->kind == QPI_ADDR_IPC,
	         a->kind == QPI_ADDR_TLS, a->url, max))
	    != QP_OK) {
		nng_stream_free(st);
		return rv;
	}
	c->peer_max = lim.max_message;
	*cp = &c->base;
	return QP_OK;
}
