/*
 * nngconn.c - Connections across hosts: qp_listen / qp_listener_accept /
 * qp_dial (Python's connection.Listener and Client).
 *
 * Design. A Connection is one nng byte stream (nng_stream: tcp://, ipc://,
 * tls+tcp://) that speaks the SP pair1 protocol on the wire, exactly as an
 * nng pair1 socket does: the 8-byte SP header {0, 'S', 'P', 0, 0x00, 0x11,
 * 0, 0} each way, then frames of a 64-bit big-endian length (ipc: a 0x01
 * byte first) holding pair1's 32-bit hop count (1) and one msgpack value.
 * Before any message the dialer sends PROTOCOL.md's hello request and the
 * listener answers it (its version, its max_message, a fresh nonce, whether
 * a token is required); with a token, the dialer then sends auth (the HMAC
 * of the nonce, and a nonce of its own) and the listener answers with its
 * own proof or refuses (auth.c), all within 10 s or the connection is
 * closed. A refused dialer gets QP_EAUTH and is never accepted; the
 * listener counts it. After that each frame is one message of the
 * Connection (send_bytes sends a bin). So any pair1 socket (nngcat --pair1)
 * that sends a hello first can dial a qpipe listener without a token, and a
 * pair1 listener that answers it can be dialed. tls+tcp:// streams are
 * nng's TLS streams, configured by tls.c; their framing is tcp's. The sockets'
 * own layer is not used because a pair1 socket has one peer and redials after
 * a drop: a listener could not hand out one Connection per client on one port
 * (polyamorous mode drops messages when a peer is slow), and a redialed
 * connection would hide the end of file. With streams the listener accepts any
 * number of clients on one address, and a dropped connection is final: end of
 * file.
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
 * handshakes are bounded by a timer that closes the stream (not by the
 * transfer's timeout), the listener never gives a transfer to a stream
 * after it started closing, a TLS connection's reader closes the stream
 * when it ends, and a sender that finds the end after giving its send
 * closes it again.
 *
 * Locking: per connection, mu guards the reader's state and the queue;
 * txmu serialises senders. One thread receives at a time (a receive looks
 * at the head message, then takes it; a second receiver in between gets
 * QP_EBUSY rather than someone else's message). Per listener, mu guards the
 * handshakes in progress and the connections ready to be accepted. Nothing is
 * submitted to nng while a lock is held that its callbacks take, but for a
 * handshake's transfers, given under the listener's mu (see nc_pending_io).
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
#include "auth.h"
#include "nngproc.h"
#include "tls.h"
#include "wire.h"

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

/* A stream accepted by a listener, in its handshake: the SP headers, then
 * the dialer's hello and the listener's answer. */
struct pending {
	struct pending *next;
	qp_listener *l;
	nng_stream *st;
	nng_aio *aio;
	int64_t deadline;
	int phase; /* PH_* */
	uint8_t *buf; /* what the phase sends or receives */
	size_t want;
	size_t got;
	uint8_t tx[8];
	uint8_t rx[8];
	uint8_t fhdr[9]; /* the hello frame's header */
	uint8_t *body; /* the hello (then auth) frame */
	size_t body_len;
	qpi_wire_buf out; /* the answer's frame */
	qpi_auth_server as; /* the nonce of the hello reply */
	bool auth_wait; /* told the dialer to authenticate; not yet done */
	nng_aio *timer; /* closes the stream at the handshake's deadline */
};

enum {
	PH_SEND_SP,
	PH_RECV_SP,
	PH_RECV_HDR,
	PH_RECV_HELLO,
	PH_SEND_REPLY,
	PH_RECV_AUTH_HDR,
	PH_RECV_AUTH,
	PH_SEND_AUTH_REPLY,
	PH_SEND_REFUSAL,
};

struct qp_listener {
	nng_stream_listener *sl;
	pid_t owner; /* the process that made it: nng does not survive fork */
	bool ipc;
	bool tls;
	size_t max_message; /* of each connection, told in the hello */
	qpi_token token; /* len 0: none required */
	char url[QPI_URL_MAX + 16];
	pthread_mutex_t mu;
	pthread_cond_t cv;
	nng_aio *acc;
	bool acc_sleeping;
	bool closing;
	struct pending *pend;
	size_t npend;
	struct nngconn *ready_head;
	struct nngconn *ready_tail;
	size_t nready;
	uint64_t refused; /* dialers that did not authenticate */
};

static const uint8_t sp_header[8] = {0, 'S', 'P', 0, 0, SP_PAIR1, 0, 0};

/* ---- helpers ---- */

static int
nc_err(int nrv)
{
	switch (nrv) {
	case 0:
		return QP_OK;
	case NNG_ECONNREFUSED:
	case NNG_ENOENT:
	case NNG_EUNREACHABLE:
		return QP_ECONNREFUSED;
	case NNG_ETIMEDOUT:
		return QP_ETIMEDOUT;
	case NNG_ENOMEM:
		return QP_ENOMEM;
	case NNG_EADDRINUSE:
		return QP_EBUSY;
	case NNG_EADDRINVAL:
	case NNG_EINVAL:
		return QP_EINVAL;
	case NNG_ECLOSED:
	case NNG_ECONNSHUT:
	case NNG_ECONNRESET:
	case NNG_ECONNABORTED:
	case NNG_ECANCELED:
		return QP_ECLOSED;
	case NNG_EPROTO:
		return QP_EPROTO;
	case NNG_ENOTSUP:
		return QP_ENOTSUP;
	case NNG_EPEERAUTH:
	case NNG_ECRYPTO:
		return QP_EAUTH;
	default:
		return QP_ESYSTEM;
	}
}

static void
nc_put64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t) v;
		v >>= 8;
	}
}

static uint64_t
nc_get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++) {
		v = (v << 8) | p[i];
	}
	return v;
}

static int64_t
nc_deadline_ms(int64_t deadline)
{
	int64_t ns = qpi_remaining_ns(deadline);

	if (ns == INT64_MAX) {
		return -1;
	}
	return (ns + 999999) / 1000000;
}

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
	size_t fh = c->ipc ? 9 : 8;

	while (!c->eof && c->big == NULL) {
		size_t avail = c->rxlen - c->rxoff;
		uint8_t *p = c->rxbuf + c->rxoff;
		if (avail < fh) {
			break;
		}
		if (c->ipc && p[0] != 1) {
			nc_fail(c, QP_EPROTO,
			    "%s sent an ipc frame of type %u; connection "
			    "closed",
			    c->peer, p[0]);
			return;
		}
		uint64_t frame = nc_get64(p + fh - 8);
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
	if (c->ipc) {
		hdr[k++] = 1;
	}
	k += 8;
	hdr[k++] = 0;
	hdr[k++] = 0;
	hdr[k++] = 0;
	hdr[k++] = 1; /* pair1 hop count */
	if (raw) {
		hl = qpi_wire_bin_header(len, hdr + k);
		k += hl;
	}
	nc_put64(hdr + (c->ipc ? 1 : 0), 4 + hl + (uint64_t) len);
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
			rv = qpi_err(
			    nc_err(nrv) == QP_ENOMEM ? QP_ENOMEM : QP_ECLOSED,
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

/* Checks the peer's SP header. */
static int
nc_check_header(const uint8_t rx[8], const char *peer)
{
	if (rx[0] != 0 || rx[1] != 'S' || rx[2] != 'P' || rx[3] != 0
	    || rx[6] != 0 || rx[7] != 0) {
		return qpi_err(QP_EPROTO, "%s does not speak SP (nng)", peer);
	}
	unsigned proto = ((unsigned) rx[4] << 8) | rx[5];
	if (proto != SP_PAIR1) {
		return qpi_err(QP_EPROTO,
		    "%s speaks SP protocol 0x%x, not pair1 (0x%x)", peer,
		    proto, SP_PAIR1);
	}
	return QP_OK;
}

/* ---- the hello exchange (PROTOCOL.md, direct connections) ---- */

/* Appends to out the frame that carries body: the stream's framing, then
 * pair1's hop count, then the encoded message. */
static int
nc_frame(const qpi_wire_buf *body, bool ipc, qpi_wire_buf *out)
{
	uint8_t hdr[13];
	size_t k = 0;
	int rv;

	if (ipc) {
		hdr[k++] = 1;
	}
	nc_put64(hdr + k, 4 + (uint64_t) body->len);
	k += 8;
	memcpy(hdr + k, "\0\0\0\1", 4);
	k += 4;
	if ((rv = qpi_wire_put_raw(out, hdr, k)) != QP_OK) {
		return rv;
	}
	return qpi_wire_put_raw(out, body->data, body->len);
}

/* Checks the frame header of a handshake message; *lenp gets the frame's
 * length (pair1 header included). */
static int
nc_hello_header(const uint8_t *h, bool ipc, size_t *lenp, const char *peer)
{
	if (ipc && h[0] != 1) {
		return qpi_err(
		    QP_EPROTO, "%s sent an ipc frame of type %u", peer, h[0]);
	}
	uint64_t len = nc_get64(h + (ipc ? 1 : 0));
	if (len < 5 || len > HELLO_MAX) {
		return qpi_err(QP_EPROTO,
		    "%s sent a %llu-byte frame where a hello belongs", peer,
		    (unsigned long long) len);
	}
	*lenp = (size_t) len;
	return QP_OK;
}

/* Appends to out the whole frame of the reply rep. */
static int
nc_reply(const qpi_wire_rep *rep, bool ipc, qpi_wire_buf *out)
{
	qpi_wire_buf body = {0};
	int rv;

	if ((rv = qpi_wire_encode_rep(rep, &body)) == QP_OK) {
		rv = nc_frame(&body, ipc, out);
	}
	qpi_wire_buf_free(&body);
	return rv;
}

/* Reads the pending stream's hello request frame (pair1 header included)
 * and puts the listener's answer, a whole frame, in p->out. With a token,
 * the answer carries the nonce that auth must answer. */
static int
nc_hello_answer(struct pending *p, const char *peer)
{
	qp_listener *l = p->l;
	qpi_wire_req req;
	qpi_wire_rep rep;
	int rv;

	memset(&req, 0, sizeof(req));
	if (p->body[0] != 0 || p->body[1] != 0 || p->body[2] != 0) {
		return qpi_err(QP_EPROTO, "%s: bad pair1 header", peer);
	}
	if ((rv = qpi_wire_decode_req(
	         p->body + 4, p->body_len - 4, NULL, &req))
	    != QP_OK) {
		return rv;
	}
	if (req.op != QPI_OP_HELLO) {
		return qpi_err(QP_EPROTO, "%s sent op %u before hello", peer,
		    (unsigned) req.op);
	}
	memset(&rep, 0, sizeof(rep));
	rep.op = QPI_OP_HELLO;
	rep.req_id = req.req_id;
	rep.status = QP_OK;
	snprintf(rep.server_version, sizeof(rep.server_version), "%s",
	    QP_VERSION_STRING);
	rep.limits.max_message = l->max_message;
	rep.limits.max_batch = QPI_WIRE_DEFAULT_BATCH;
	if (l->token.len > 0) {
		rv = qpi_auth_server_hello(&p->as, rep.nonce);
		rep.auth_required = true;
	} else {
		rv = qpi_random(rep.nonce, sizeof(rep.nonce));
	}
	if (rv == QP_OK && (rv = nc_reply(&rep, l->ipc, &p->out)) == QP_OK) {
		p->auth_wait = rep.auth_required;
	}
	return rv;
}

/* Reads the pending stream's auth request frame and puts the answer in
 * p->out: QP_OK (the dialer proved the token; the answer proves it back),
 * QP_EAUTH or QP_EPROTO (refused; the answer says why, if it could be
 * made), or another error (nothing to answer). */
static int
nc_auth_answer(struct pending *p, const char *peer)
{
	qp_listener *l = p->l;
	qpi_wire_req req;
	qpi_wire_rep rep;
	int st, rv;

	memset(&req, 0, sizeof(req));
	memset(&rep, 0, sizeof(rep));
	if (p->body[0] != 0 || p->body[1] != 0 || p->body[2] != 0) {
		st = qpi_err(QP_EPROTO, "%s: bad pair1 header", peer);
	} else if ((st = qpi_wire_decode_req(
	                p->body + 4, p->body_len - 4, NULL, &req))
	    != QP_OK) {
		/* st and the message say what is wrong */
	} else if (req.op != QPI_OP_AUTH) {
		const char *name = qpi_wire_op_name(req.op);
		st = qpi_err(QP_EAUTH,
		    "authentication required: %s sent %s instead of auth",
		    peer, name != NULL ? name : "an unknown op");
	} else {
		st = qpi_auth_server_check(&p->as, &l->token, req.mac,
		    req.has_nonce ? req.nonce : NULL, rep.mac, &rep.has_mac);
	}
	rep.op = req.op;
	rep.req_id = req.req_id;
	rep.status = st;
	if (st != QP_OK) {
		snprintf(rep.errmsg, sizeof(rep.errmsg), "%s", qp_errmsg());
	}
	if ((rv = nc_reply(&rep, l->ipc, &p->out)) != QP_OK) {
		qpi_wire_buf_reset(&p->out);
		return rv;
	}
	return st;
}

/* ---- listening ---- */

static void nc_acc_cb(void *arg);

static void
nc_pending_done(struct pending *p, struct nngconn *c)
{
	qp_listener *l = p->l;
	bool keep;

	/* The watchdog goes first: it must not close a stream handed on. */
	nng_aio_free(p->timer);

	pthread_mutex_lock(&l->mu);
	keep = c != NULL && !l->closing;
	if (c == NULL && p->auth_wait && !l->closing) {
		l->refused++;
	}
	for (struct pending **pp = &l->pend; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	}
	l->npend--;
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
	if (c == NULL) {
		nng_stream_free(p->st);
	} else if (!keep) {
		/* The listener is going away: drop the connection. Its
		 * reader is stopped by the stream's close. */
		nng_stream_close(c->st);
		c->base.ops->destroy(&c->base);
	}
	nng_aio_reap(p->aio);
	free(p->body);
	qpi_wire_buf_free(&p->out);
	free(p);
}

/* Starts the pending stream's next transfer for its phase. */
static void
nc_pending_io(struct pending *p)
{
	nng_iov iov
	    = {.iov_buf = p->buf + p->got, .iov_len = p->want - p->got};
	int64_t ms = nc_deadline_ms(p->deadline);

	nng_aio_set_iov(p->aio, 1, &iov);
	nng_aio_set_timeout(p->aio, (nng_duration) (ms > 0 ? ms : 1));
	/* Under the listener's lock, so that its closing cannot come
	 * between the check and the transfer: a transfer given to a TLS
	 * stream after it was closed would wait for ever. (nng completes
	 * stream transfers on its own threads, never inside this call, so
	 * the callback waits for the lock rather than deadlocking.) */
	pthread_mutex_lock(&p->l->mu);
	if (p->l->closing) {
		pthread_mutex_unlock(&p->l->mu);
		nc_pending_done(p, NULL);
		return;
	}
	if (p->phase == PH_SEND_SP || p->phase == PH_SEND_REPLY
	    || p->phase == PH_SEND_AUTH_REPLY || p->phase == PH_SEND_REFUSAL) {
		nng_stream_send(p->st, p->aio);
	} else {
		nng_stream_recv(p->st, p->aio);
	}
	pthread_mutex_unlock(&p->l->mu);
}

/* The handshake's deadline passed: close the stream, which ends the
 * transfer in progress (its own timeout cannot be relied on: see "nng
 * 1.5's TLS streams" above). */
static void
nc_pending_timer_cb(void *arg)
{
	struct pending *p = arg;

	if (nng_aio_result(p->timer) == 0) {
		nng_stream_close(p->st);
	}
}

static void
nc_pending_phase(struct pending *p, int phase, uint8_t *buf, size_t want)
{
	p->phase = phase;
	p->buf = buf;
	p->want = want;
	p->got = 0;
}

/* The handshake is complete: the stream becomes a connection. */
static void
nc_pending_accept(struct pending *p, const char *peer)
{
	struct nngconn *c = NULL;

	if (nc_new(&c, p->st, p->l->ipc, p->l->tls, peer, p->l->max_message)
	    != QP_OK) {
		c = NULL;
	}
	nc_pending_done(p, c);
}

static void
nc_pending_cb(void *arg)
{
	struct pending *p = arg;
	int rv = nng_aio_result(p->aio);
	char peer[QPI_URL_MAX + 32];
	size_t fh = p->l->ipc ? 9 : 8;

	if (rv != 0) {
		nc_pending_done(p, NULL);
		return;
	}
	p->got += nng_aio_count(p->aio);
	if (p->got < p->want) {
		nc_pending_io(p);
		return;
	}
	snprintf(peer, sizeof(peer), "the peer of %s", p->l->url);
	switch (p->phase) {
	case PH_SEND_SP:
		nc_pending_phase(p, PH_RECV_SP, p->rx, sizeof(p->rx));
		break;
	case PH_RECV_SP:
		if (nc_check_header(p->rx, peer) != QP_OK) {
			nc_pending_done(p, NULL);
			return;
		}
		nc_pending_phase(p, PH_RECV_HDR, p->fhdr, fh);
		break;
	case PH_RECV_HDR:
		if (nc_hello_header(p->fhdr, p->l->ipc, &p->body_len, peer)
		        != QP_OK
		    || (p->body = malloc(p->body_len)) == NULL) {
			nc_pending_done(p, NULL);
			return;
		}
		nc_pending_phase(p, PH_RECV_HELLO, p->body, p->body_len);
		break;
	case PH_RECV_HELLO:
		if (nc_hello_answer(p, peer) != QP_OK) {
			nc_pending_done(p, NULL);
			return;
		}
		nc_pending_phase(p, PH_SEND_REPLY, p->out.data, p->out.len);
		break;
	case PH_SEND_REPLY:
		if (!p->auth_wait) {
			nc_pending_accept(p, peer);
			return;
		}
		qpi_wire_buf_reset(&p->out);
		nc_pending_phase(p, PH_RECV_AUTH_HDR, p->fhdr, fh);
		break;
	case PH_RECV_AUTH_HDR:
		free(p->body);
		if (nc_hello_header(p->fhdr, p->l->ipc, &p->body_len, peer)
		        != QP_OK
		    || (p->body = malloc(p->body_len)) == NULL) {
			nc_pending_done(p, NULL);
			return;
		}
		nc_pending_phase(p, PH_RECV_AUTH, p->body, p->body_len);
		break;
	case PH_RECV_AUTH:
		if (nc_auth_answer(p, peer) == QP_OK) {
			p->auth_wait = false;
			nc_pending_phase(
			    p, PH_SEND_AUTH_REPLY, p->out.data, p->out.len);
		} else if (p->out.len > 0) {
			/* Say why, then close. */
			nc_pending_phase(
			    p, PH_SEND_REFUSAL, p->out.data, p->out.len);
		} else {
			nc_pending_done(p, NULL);
			return;
		}
		break;
	case PH_SEND_AUTH_REPLY:
		nc_pending_accept(p, peer);
		return;
	default: /* PH_SEND_REFUSAL */
		nc_pending_done(p, NULL);
		return;
	}
	nc_pending_io(p);
}

static void
nc_acc_cb(void *arg)
{
	qp_listener *l = arg;
	int rv = nng_aio_result(l->acc);
	struct pending *p = NULL;
	nng_stream *st = NULL;
	bool again = true;

	pthread_mutex_lock(&l->mu);
	if (l->closing) {
		again = false;
		if (rv == 0 && !l->acc_sleeping) {
			/* accepted as the listener closed: dropped below */
			st = nng_aio_get_output(l->acc, 0);
		}
	} else if (l->acc_sleeping) {
		l->acc_sleeping = false;
	} else if (rv == 0) {
		st = nng_aio_get_output(l->acc, 0);
		if (l->npend + l->nready >= PENDING_MAX) {
			/* Too many clients not yet accepted: refuse. */
			nng_stream_free(st);
			st = NULL;
		} else if ((p = calloc(1, sizeof(*p))) == NULL
		    || nng_aio_alloc(&p->aio, nc_pending_cb, p) != 0
		    || nng_aio_alloc(&p->timer, nc_pending_timer_cb, p) != 0) {
			if (p != NULL) {
				nng_aio_free(p->aio);
			}
			free(p);
			p = NULL;
			nng_stream_free(st);
			st = NULL;
		} else {
			p->l = l;
			p->st = st;
			p->deadline
			    = qpi_now_ns() + (int64_t) NEGO_MS * 1000000;
			memcpy(p->tx, sp_header, sizeof(p->tx));
			nc_pending_phase(p, PH_SEND_SP, p->tx, sizeof(p->tx));
			p->next = l->pend;
			l->pend = p;
			l->npend++;
		}
	} else if (rv == NNG_ECLOSED) {
		again = false;
	} else {
		/* Out of descriptors or the like: try again shortly. */
		l->acc_sleeping = true;
	}
	bool sleeping = l->acc_sleeping;
	pthread_mutex_unlock(&l->mu);

	if (p != NULL) {
		nng_sleep_aio(NEGO_MS, p->timer);
		nc_pending_io(p);
	}
	if (!again) {
		if (st != NULL) {
			nng_stream_free(st);
		}
		return;
	}
	if (sleeping) {
		nng_sleep_aio(100, l->acc);
	} else {
		nng_stream_listener_accept(l->sl, l->acc);
	}
}

/* Formats the address the listener bound. */
static void
nc_bound_url(qp_listener *l, const qpi_addr *a)
{
	nng_sockaddr sa;
	char host[INET6_ADDRSTRLEN + 2] = "";
	unsigned port = a->port;

	if (a->kind == QPI_ADDR_IPC) {
		snprintf(l->url, sizeof(l->url), "ipc://%s", a->path);
		return;
	}
	memset(&sa, 0, sizeof(sa));
	if (nng_stream_listener_get_addr(l->sl, NNG_OPT_LOCADDR, &sa) == 0) {
		if (sa.s_family == NNG_AF_INET) {
			port = ntohs(sa.s_in.sa_port);
			inet_ntop(
			    AF_INET, &sa.s_in.sa_addr, host, sizeof(host));
		} else if (sa.s_family == NNG_AF_INET6) {
			port = ntohs(sa.s_in6.sa_port);
			inet_ntop(
			    AF_INET6, sa.s_in6.sa_addr, host, sizeof(host));
		}
	}
	bool v6
	    = strchr(a->host[0] != '\0' && strcmp(a->host, "*") != 0 ? a->host
	                                                             : host,
	          ':')
	    != NULL;
	snprintf(l->url, sizeof(l->url), "%s://%s%s%s:%u",
	    l->tls ? "tls+tcp" : "tcp", v6 ? "[" : "",
	    a->host[0] != '\0' && strcmp(a->host, "*") != 0 ? a->host : host,
	    v6 ? "]" : "", port);
}

int
qpi_nng_listen(qp_listener **lp, const qpi_addr *a, const qp_conn_opts *o)
{
	qp_listener *l;
	nng_tls_config *tls = NULL;
	pthread_condattr_t ca;
	int nrv, rv;

	if ((rv = qpi_nng_claim(a->url)) != QP_OK) {
		return rv;
	}
	if ((l = calloc(1, sizeof(*l))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for a listener");
	}
	l->owner = getpid();
	l->ipc = a->kind == QPI_ADDR_IPC;
	l->tls = a->kind == QPI_ADDR_TLS;
	l->max_message = o != NULL && o->max_message != 0
	    ? o->max_message
	    : QP_DEFAULT_MAX_MESSAGE;
	if ((rv = qpi_token_resolve(&l->token, o != NULL ? o->token : NULL,
	         o != NULL ? o->token_file : NULL, o != NULL && o->no_token,
	         NULL))
	        != QP_OK
	    || (l->tls
	        && (rv = qpi_tls_config_opts(&tls, true, o, NULL)) != QP_OK)) {
		qpi_token_clear(&l->token);
		free(l);
		return rv;
	}
	if ((nrv = nng_stream_listener_alloc(&l->sl, a->url)) != 0) {
		if (tls != NULL) {
			nng_tls_config_free(tls);
		}
		qpi_token_clear(&l->token);
		free(l);
		return qpi_err(nc_err(nrv), "cannot listen on %s: %s", a->url,
		    nng_strerror(nrv));
	}
	if (tls != NULL) {
		/* The listener takes its own hold on the config. */
		nrv = nng_stream_listener_set_ptr(
		    l->sl, NNG_OPT_TLS_CONFIG, tls);
		nng_tls_config_free(tls);
		if (nrv != 0) {
			nng_stream_listener_free(l->sl);
			qpi_token_clear(&l->token);
			free(l);
			return qpi_err(nc_err(nrv),
			    "cannot set up TLS on %s: %s", a->url,
			    nng_strerror(nrv));
		}
	}
	if (!l->ipc) {
		nng_stream_listener_set_bool(l->sl, NNG_OPT_TCP_NODELAY, true);
		nng_stream_listener_set_bool(
		    l->sl, NNG_OPT_TCP_KEEPALIVE, true);
	}
	if ((nrv = nng_stream_listener_listen(l->sl)) != 0
	    || (nrv = nng_aio_alloc(&l->acc, nc_acc_cb, l)) != 0) {
		nng_stream_listener_free(l->sl);
		qpi_token_clear(&l->token);
		free(l);
		return qpi_err(nc_err(nrv), "cannot listen on %s: %s", a->url,
		    nng_strerror(nrv));
	}
	nc_bound_url(l, a);
	pthread_mutex_init(&l->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&l->cv, &ca);
	pthread_condattr_destroy(&ca);
	nng_stream_listener_accept(l->sl, l->acc);
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
	struct pending *p;

	while ((p = l->pend) != NULL) {
		l->pend = p->next;
		free(p->body);
		qpi_wire_buf_free(&p->out);
		free(p);
	}
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
	for (struct pending *p = l->pend; p != NULL; p = p->next) {
		nng_stream_close(p->st);
	}
	pthread_mutex_unlock(&l->mu);
	nng_stream_listener_close(l->sl);
	nng_aio_stop(l->acc);

	/* Handshakes in progress end with an error and let go of l. */
	pthread_mutex_lock(&l->mu);
	while (l->npend > 0) {
		pthread_cond_wait(&l->cv, &l->mu);
	}
	pthread_mutex_unlock(&l->mu);
	while ((c = l->ready_head) != NULL) {
		l->ready_head = c->next_ready;
		c->base.ops->destroy(&c->base);
	}
	nng_aio_free(l->acc);
	nng_stream_listener_free(l->sl);
	qpi_token_clear(&l->token);
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
	free(l);
}

/* ---- dialing ---- */

/* Sends or receives len bytes, within deadline (and NEGO_MS). tls_hs: the
 * first transfer on a TLS stream, which carries its handshake: a failure
 * there is the TLS handshake's (QP_EAUTH, the likely cause named). */
static int
nc_sync_io(nng_stream *st, nng_aio *aio, void *buf, size_t len, bool send,
    int64_t deadline, const char *url, bool tls_hs)
{
	size_t got = 0;
	nng_iov iov;
	int nrv;

	while (got < len) {
		int64_t ms = nc_deadline_ms(deadline);
		if (ms < 0 || ms > NEGO_MS) {
			ms = NEGO_MS;
		}
		iov.iov_buf = (uint8_t *) buf + got;
		iov.iov_len = len - got;
		nng_aio_set_iov(aio, 1, &iov);
		nng_aio_set_timeout(aio, (nng_duration) (ms > 0 ? ms : 1));
		if (send) {
			nng_stream_send(st, aio);
		} else {
			nng_stream_recv(st, aio);
		}
		nng_aio_wait(aio);
		if ((nrv = nng_aio_result(aio)) != 0) {
			int rv = nc_err(nrv);
			if (tls_hs && rv != QP_ETIMEDOUT && rv != QP_ENOMEM) {
				return qpi_err(QP_EAUTH,
				    "TLS handshake with %s failed: %s", url,
				    qpi_tls_why(nrv, false));
			}
			return qpi_err(rv == QP_ECLOSED ? QP_EPROTO : rv,
			    "handshake with %s failed: %s", url,
			    nng_strerror(nrv));
		}
		got += nng_aio_count(aio);
	}
	return QP_OK;
}

/* Sends the request req as one frame and reads the answer into *rep,
 * within deadline. The answer must be the reply to req (same op and
 * req_id); its status is the caller's to look at. */
static int
nc_exchange(nng_stream *st, nng_aio *aio, bool ipc, int64_t deadline,
    const char *url, const qpi_wire_req *req, qpi_wire_rep *rep)
{
	qpi_wire_buf body = {0}, frame = {0};
	uint8_t fhdr[9];
	uint8_t *in = NULL;
	size_t len = 0;
	int rv;

	if ((rv = qpi_wire_encode_req(req, &body)) != QP_OK
	    || (rv = nc_frame(&body, ipc, &frame)) != QP_OK
	    || (rv = nc_sync_io(st, aio, frame.data, frame.len, true, deadline,
	            url, false))
	        != QP_OK
	    || (rv = nc_sync_io(
	            st, aio, fhdr, ipc ? 9 : 8, false, deadline, url, false))
	        != QP_OK
	    || (rv = nc_hello_header(fhdr, ipc, &len, url)) != QP_OK) {
		goto out;
	}
	if ((in = malloc(len)) == NULL) {
		rv = qpi_err(QP_ENOMEM, "out of memory");
		goto out;
	}
	if ((rv = nc_sync_io(st, aio, in, len, false, deadline, url, false))
	    != QP_OK) {
		goto out;
	}
	memset(rep, 0, sizeof(*rep));
	if (in[0] != 0 || in[1] != 0 || in[2] != 0
	    || qpi_wire_decode_rep(in + 4, len - 4, NULL, rep) != QP_OK
	    || rep->op != req->op || rep->req_id != req->req_id) {
		rv = qpi_err(QP_EPROTO, "%s did not answer %s", url,
		    qpi_wire_op_name(req->op));
	}
out:
	free(in);
	qpi_wire_buf_free(&body);
	qpi_wire_buf_free(&frame);
	return rv;
}

/* The dialer's side of the handshake: the SP headers, then our hello and
 * the listener's answer, then (with a token) auth and its answer, within
 * deadline. *peer_maxp gets the listener's largest message; *tls_failp
 * tells that the TLS handshake failed (QP_EAUTH). */
static int
nc_handshake(nng_stream *st, nng_aio *aio, const qpi_addr *a, int64_t deadline,
    const qpi_token *token, uint64_t *peer_maxp, bool *tls_failp)
{
	bool ipc = a->kind == QPI_ADDR_IPC, tls = a->kind == QPI_ADDR_TLS;
	const char *url = a->url;
	uint8_t sp[8], rx[8];
	qpi_wire_req req;
	qpi_wire_rep rep;
	qpi_auth_client ac;
	char host[64] = "";
	bool do_auth = false;
	int rv;

	memcpy(sp, sp_header, sizeof(sp));
	if ((rv = nc_sync_io(st, aio, sp, 8, true, deadline, url, tls))
	        != QP_OK
	    || (rv = nc_sync_io(st, aio, rx, 8, false, deadline, url, tls))
	        != QP_OK
	    || (rv = nc_check_header(rx, url)) != QP_OK) {
		*tls_failp = rv == QP_EAUTH && tls;
		return rv;
	}
	memset(&req, 0, sizeof(req));
	req.op = QPI_OP_HELLO;
	req.req_id = 1;
	if ((rv = qpi_random(req.client_id, sizeof(req.client_id))) != QP_OK) {
		return rv;
	}
	gethostname(host, sizeof(host) - 1);
	for (char *h = host; *h != '\0'; h++) {
		if (*h < 0x21 || *h > 0x7e) {
			*h = '_';
		}
	}
	snprintf(req.client_name, sizeof(req.client_name), "qp_dial@%.40s:%d",
	    host, (int) getpid());
	if ((rv = nc_exchange(st, aio, ipc, deadline, url, &req, &rep))
	    != QP_OK) {
		return rv;
	}
	if (rep.status != QP_OK) {
		return qpi_err(rep.status, "%s refused the connection: %s",
		    url, rep.errmsg);
	}
	if ((rv = qpi_auth_client_policy(
	         token, rep.auth_required, url, &do_auth))
	    != QP_OK) {
		return rv;
	}
	*peer_maxp = rep.limits.max_message;
	if (!do_auth) {
		return QP_OK;
	}
	memset(&req, 0, sizeof(req));
	req.op = QPI_OP_AUTH;
	req.req_id = 2;
	req.has_nonce = true;
	if ((rv = qpi_auth_client_answer(
	         &ac, token, rep.nonce, req.mac, req.nonce))
	        != QP_OK
	    || (rv = nc_exchange(st, aio, ipc, deadline, url, &req, &rep))
	        != QP_OK) {
		return rv;
	}
	if (rep.status != QP_OK) {
		return qpi_err(rep.status == QP_EAUTH ? QP_EAUTH : rep.status,
		    "%s refused the token: %s", url, rep.errmsg);
	}
	return qpi_auth_client_verify(&ac, token, rep.mac, rep.has_mac, url);
}

/* Closes a dialed stream whose handshake outlived its deadline. */
struct nc_watch {
	nng_aio *aio;
	nng_stream *st;
	bool fired; /* read after the aio is stopped */
};

static void
nc_watch_cb(void *arg)
{
	struct nc_watch *w = arg;

	if (nng_aio_result(w->aio) == 0) {
		w->fired = true;
		nng_stream_close(w->st);
	}
}

/* A stream dialer for a, with TLS configured for tls+tcp://. */
static int
nc_dialer(nng_stream_dialer **dp, const qpi_addr *a, const qp_conn_opts *o)
{
	nng_stream_dialer *d;
	nng_tls_config *tls = NULL;
	int nrv, rv;

	if (a->kind == QPI_ADDR_TLS
	    && (rv = qpi_tls_config_opts(&tls, false, o, a->host)) != QP_OK) {
		return rv;
	}
	if ((nrv = nng_stream_dialer_alloc(&d, a->url)) != 0) {
		if (tls != NULL) {
			nng_tls_config_free(tls);
		}
		return qpi_err(nc_err(nrv), "cannot dial %s: %s", a->url,
		    nng_strerror(nrv));
	}
	if (tls != NULL) {
		/* The dialer takes its own hold on the config. */
		nrv = nng_stream_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, tls);
		nng_tls_config_free(tls);
		if (nrv != 0) {
			nng_stream_dialer_free(d);
			return qpi_err(nc_err(nrv),
			    "cannot set up TLS to %s: %s", a->url,
			    nng_strerror(nrv));
		}
	}
	if (a->kind != QPI_ADDR_IPC) {
		nng_stream_dialer_set_bool(d, NNG_OPT_TCP_NODELAY, true);
		nng_stream_dialer_set_bool(d, NNG_OPT_TCP_KEEPALIVE, true);
	}
	*dp = d;
	return QP_OK;
}

int
qpi_nng_dial(qp_conn **cp, const qpi_addr *a, qp_duration timeout,
    const qp_conn_opts *o)
{
	nng_stream_dialer *d = NULL;
	nng_aio *aio;
	qpi_token token;
	int64_t deadline = qpi_deadline_ns(timeout);
	int backoff = BACKOFF_MIN;
	int nrv, rv;

	if ((rv = qpi_nng_claim(a->url)) != QP_OK) {
		return rv;
	}
	if ((rv = qpi_token_resolve(&token, o != NULL ? o->token : NULL,
	         o != NULL ? o->token_file : NULL, o != NULL && o->no_token,
	         NULL))
	    != QP_OK) {
		return rv;
	}
	if ((rv = nc_dialer(&d, a, o)) != QP_OK) {
		qpi_token_clear(&token);
		return rv;
	}
	if ((nrv = nng_aio_alloc(&aio, NULL, NULL)) != 0) {
		nng_stream_dialer_free(d);
		qpi_token_clear(&token);
		return qpi_err(QP_ENOMEM, "out of memory dialing %s", a->url);
	}
	int refused = 0; /* the last refusal, reported if time runs out */
	for (;;) {
		/* One attempt: bounded by the timeout, and by DIAL_TRY_MS
		 * when there is none (0: a single attempt; -1: forever). */
		int64_t ms = nc_deadline_ms(deadline);
		if (timeout == 0 || ms < 0 || ms > DIAL_TRY_MS) {
			ms = DIAL_TRY_MS;
		}
		nng_aio_set_timeout(aio, (nng_duration) (ms > 0 ? ms : 1));
		nng_stream_dialer_dial(d, aio);
		nng_aio_wait(aio);
		nrv = nng_aio_result(aio);
		if (nrv == 0) {
			break;
		}
		rv = nc_err(nrv);
		if (rv == QP_ECONNREFUSED) {
			refused = nrv;
		}
		int64_t left = nc_deadline_ms(deadline);
		if (timeout == 0 || left == 0
		    || (rv != QP_ECONNREFUSED && rv != QP_ETIMEDOUT)) {
			if (rv == QP_ETIMEDOUT && refused != 0) {
				rv = QP_ECONNREFUSED;
				nrv = refused;
			}
			nng_aio_free(aio);
			nng_stream_dialer_free(d);
			qpi_token_clear(&token);
			return qpi_err(rv, "cannot connect to %s: %s", a->url,
			    nng_strerror(nrv));
		}
		/* Nobody listens yet: wait a little and try again, as nng's
		 * own dialers do. */
		nng_msleep(left > 0 && left < backoff ? (nng_duration) left
		                                      : backoff);
		backoff
		    = backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2;
	}
	nng_stream *st = nng_aio_get_output(aio, 0);
	uint64_t peer_max = 0;
	struct nc_watch w = {.st = st};
	int64_t hs_deadline = timeout == 0 ? INT64_MAX : deadline;
	int64_t hs_ms = nc_deadline_ms(hs_deadline);
	if (hs_ms < 0 || hs_ms > NEGO_MS) {
		hs_ms = NEGO_MS;
	}
	if (nng_aio_alloc(&w.aio, nc_watch_cb, &w) != 0) {
		rv = qpi_err(QP_ENOMEM, "out of memory dialing %s", a->url);
	} else {
		bool tls_fail = false;
		char why[400];
		nng_sleep_aio((nng_duration) (hs_ms > 0 ? hs_ms : 1), w.aio);
		rv = nc_handshake(
		    st, aio, a, hs_deadline, &token, &peer_max, &tls_fail);
		nng_aio_free(w.aio); /* stops the timer first */
		if (w.fired && rv != QP_OK) {
			rv = qpi_err(QP_ETIMEDOUT,
			    "handshake with %s did not finish within %lld ms",
			    a->url, (long long) hs_ms);
		} else if (tls_fail
		    && qpi_tls_diagnose(a, o, hs_deadline, why, sizeof(why))) {
			/* nng says little: find out what failed */
			rv = qpi_err(QP_EAUTH,
			    "TLS handshake with %s failed: %s", a->url, why);
		}
	}
	qpi_token_clear(&token);
	nng_aio_free(aio);
	nng_stream_dialer_free(d);
	if (rv != QP_OK) {
		nng_stream_free(st);
		return rv;
	}
	struct nngconn *c;
	size_t max = o != NULL && o->max_message != 0 ? o->max_message
	                                              : QP_DEFAULT_MAX_MESSAGE;
	if ((rv = nc_new(&c, st, a->kind == QPI_ADDR_IPC,
	         a->kind == QPI_ADDR_TLS, a->url, max))
	    != QP_OK) {
		nng_stream_free(st);
		return rv;
	}
	c->peer_max = peer_max;
	*cp = &c->base;
	return QP_OK;
}
