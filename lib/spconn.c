/*
 * spconn.c - the remote client's raw req0 connection (spconn.h): frames
 * written with one sendmsg, replies read by whichever waiting call holds
 * the reader role (leader/follower): it polls the socket with its own
 * deadline, and hands each reply it reads to the call whose request id it
 * carries; when it leaves (its reply came, or its time ran out) another
 * waiting call takes the role over. A connection that breaks is shut down
 * (which wakes its reader) and every call waiting on it gets
 * QP_ECONNRESET; the next call dials again, with a backoff of 20 ms
 * doubling up to 500 ms between failed attempts.
 *
 * Locking: s->mu guards the current connection, the waiters, the reader
 * role and the reconnect state; s->cv signals replies handed over, the
 * reader role freed, a connection made or closed. A connection's wmu
 * serialises its writers. The socket is read by the reader without s->mu;
 * a connection's fd is closed when its last reference goes, so no thread
 * ever polls or writes a closed (and reused) descriptor.
 */
#define _GNU_SOURCE 1 /* ppoll */
#include "spconn.h"
#include "sp.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#define SPC_BACKOFF_MIN_MS 20
#define SPC_BACKOFF_MAX_MS 500
#define SPC_RBUF_MIN       4096

typedef struct spc_conn {
	int fd;
	uint32_t num;
	int refs; /* under s->mu */
	bool broken; /* under s->mu */
	bool reading; /* a call holds the reader role (under s->mu) */
	pthread_mutex_t wmu;
	uint8_t *rbuf; /* the reader's: bytes read, not yet dispatched */
	size_t rlen, rcap;
} spc_conn;

typedef struct spc_wait {
	uint32_t id;
	spc_conn *conn;
	nng_msg *rep;
	bool done;
	struct spc_wait *next;
} spc_wait;

struct qpi_spc {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	qpi_addr addr;
	bool ipc;
	size_t max_recv;
	spc_conn *cur;
	uint32_t nconn;
	uint32_t next_id;
	bool connecting;
	bool closed;
	int64_t backoff_ms;
	int64_t next_try_ns;
	spc_wait *waiters;
};

static void
spc_conn_unref_locked(spc_conn *c)
{
	if (--c->refs == 0) {
		close(c->fd);
		pthread_mutex_destroy(&c->wmu);
		free(c->rbuf);
		free(c);
	}
}

/* Marks c broken, wakes its reader and waiters. s->mu held. */
static void
spc_break_locked(qpi_spc *s, spc_conn *c)
{
	if (!c->broken) {
		c->broken = true;
		shutdown(c->fd, SHUT_RDWR);
		pthread_cond_broadcast(&s->cv);
	}
}

/* Waits for fd to poll events until deadline_ns: 1 ready, 0 timed out,
 * -1 error. */
static int
spc_poll(int fd, short events, int64_t deadline_ns)
{
	struct pollfd p = {.fd = fd, .events = events};

	for (;;) {
		int64_t left = qpi_remaining_ns(deadline_ns);
		struct timespec ts, *tsp = NULL;
		int n;

		if (left != INT64_MAX) {
			ts.tv_sec = left / 1000000000;
			ts.tv_nsec = left % 1000000000;
			tsp = &ts;
		}
		n = ppoll(&p, 1, tsp, NULL);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			return -1;
		}
		if (n == 0) {
			return 0;
		}
		return 1;
	}
}

/* Writes all of iov until deadline_ns: QP_OK, QP_ETIMEDOUT or
 * QP_ECONNRESET. */
static int
spc_writev_all(int fd, struct iovec *iov, int niov, int64_t deadline_ns)
{
	while (niov > 0) {
		/* sendmsg, not writev: no SIGPIPE when the peer is gone. */
		struct msghdr mh
		    = {.msg_iov = iov, .msg_iovlen = (size_t) niov};
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				return QP_ECONNRESET;
			}
			int pr = spc_poll(fd, POLLOUT, deadline_ns);
			if (pr == 0) {
				return QP_ETIMEDOUT;
			}
			if (pr < 0) {
				return QP_ECONNRESET;
			}
			continue;
		}
		size_t done = (size_t) n;
		while (niov > 0 && done >= iov[0].iov_len) {
			done -= iov[0].iov_len;
			iov++;
			niov--;
		}
		if (niov > 0) {
			iov[0].iov_base = (uint8_t *) iov[0].iov_base + done;
			iov[0].iov_len -= done;
		}
	}
	return QP_OK;
}

/* Reads exactly len bytes until deadline_ns (the handshake). */
static int
spc_read_all(int fd, uint8_t *p, size_t len, int64_t deadline_ns)
{
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n > 0) {
			p += n;
			len -= (size_t) n;
			continue;
		}
		if (n == 0) {
			return QP_ECONNRESET;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			return QP_ECONNRESET;
		}
		int pr = spc_poll(fd, POLLIN, deadline_ns);
		if (pr == 0) {
			return QP_ETIMEDOUT;
		}
		if (pr < 0) {
			return QP_ECONNRESET;
		}
	}
	return QP_OK;
}

/* Connects one socket to address ai (non-blocking) until deadline_ns. */
static int
spc_connect_fd(
    int family, const struct sockaddr *sa, socklen_t sl, int64_t deadline_ns)
{
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int err = 0;
	socklen_t el = sizeof(err);

	if (fd < 0) {
		return -errno;
	}
	if (connect(fd, sa, sl) == 0) {
		return fd;
	}
	if (errno != EINPROGRESS && errno != EAGAIN) {
		err = errno;
		close(fd);
		return -err;
	}
	int pr = spc_poll(fd, POLLOUT, deadline_ns);
	if (pr <= 0) {
		close(fd);
		return pr == 0 ? -ETIMEDOUT : -ECONNREFUSED;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
		close(fd);
		return -(err != 0 ? err : ECONNREFUSED);
	}
	return fd;
}

/* Dials and handshakes: a new connection, or an error (qpi_err set). */
static int
spc_dial(qpi_spc *s, int64_t deadline_ns, spc_conn **cp)
{
	const qpi_addr *a = &s->addr;
	uint8_t hs[QPI_SP_HS_LEN];
	int fd = -ECONNREFUSED, rv;
	spc_conn *c;

	if (s->ipc) {
		struct sockaddr_un sun;
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		if (strlen(a->path) >= sizeof(sun.sun_path)) {
			return qpi_err(
			    QP_EINVAL, "ipc path too long: %s", a->url);
		}
		memcpy(sun.sun_path, a->path, strlen(a->path));
		fd = spc_connect_fd(AF_UNIX, (struct sockaddr *) &sun,
		    sizeof(sun), deadline_ns);
	} else {
		struct addrinfo hints, *res = NULL, *ai;
		char port[16];
		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		snprintf(port, sizeof(port), "%u", (unsigned) a->port);
		if ((rv = getaddrinfo(a->host, port, &hints, &res)) != 0) {
			return qpi_err(QP_EINVAL, "cannot connect to %s: %s",
			    a->url, gai_strerror(rv));
		}
		for (ai = res; ai != NULL; ai = ai->ai_next) {
			fd = spc_connect_fd(ai->ai_family, ai->ai_addr,
			    ai->ai_addrlen, deadline_ns);
			if (fd >= 0) {
				break;
			}
		}
		freeaddrinfo(res);
		if (fd >= 0) {
			int one = 1;
			setsockopt(
			    fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			setsockopt(
			    fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		}
	}
	if (fd < 0) {
		if (fd == -ETIMEDOUT) {
			return qpi_err(QP_ETIMEDOUT,
			    "cannot connect to %s: timed out", a->url);
		}
		return qpi_err(QP_ECONNREFUSED, "cannot connect to %s: %s",
		    a->url,
		    fd == -ECONNREFUSED || fd == -ENOENT ? "connection refused"
		                                         : strerror(-fd));
	}
	qpi_sp_hs_make(hs, QPI_SP_REQ0);
	struct iovec iov = {.iov_base = hs, .iov_len = sizeof(hs)};
	if ((rv = spc_writev_all(fd, &iov, 1, deadline_ns)) != QP_OK
	    || (rv = spc_read_all(fd, hs, sizeof(hs), deadline_ns)) != QP_OK) {
		close(fd);
		if (rv == QP_ETIMEDOUT) {
			return qpi_err(QP_ETIMEDOUT,
			    "cannot connect to %s: no SP handshake in time",
			    a->url);
		}
		return qpi_err(QP_ECONNREFUSED,
		    "cannot connect to %s: connection closed during the "
		    "handshake",
		    a->url);
	}
	if (!qpi_sp_hs_check(hs, QPI_SP_REP0)) {
		close(fd);
		return qpi_err(QP_EPROTO,
		    "cannot connect to %s: the peer is not an SP rep0 server",
		    a->url);
	}
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		close(fd);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	c->fd = fd;
	c->refs = 1;
	pthread_mutex_init(&c->wmu, NULL);
	*cp = c;
	return QP_OK;
}

int
qpi_spc_open(
    qpi_spc **sp, const qpi_addr *a, size_t max_recv, int64_t deadline_ns)
{
	qpi_spc *s = calloc(1, sizeof(*s));
	pthread_condattr_t ca;
	spc_conn *c;
	int rv;

	if (s == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	s->addr = *a;
	s->ipc = a->kind == QPI_ADDR_IPC;
	s->max_recv = max_recv;
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	if ((rv = spc_dial(s, deadline_ns, &c)) != QP_OK) {
		qpi_spc_free(s);
		return rv;
	}
	c->num = ++s->nconn;
	s->cur = c;
	*sp = s;
	return QP_OK;
}

void
qpi_spc_set_max(qpi_spc *s, size_t max_recv)
{
	pthread_mutex_lock(&s->mu);
	s->max_recv = max_recv;
	pthread_mutex_unlock(&s->mu);
}

/* A connection for a call, with a reference: the current one, or a new
 * one dialled by this call (with backoff). s->mu held. */
static int
spc_get_conn_locked(qpi_spc *s, int64_t deadline_ns, spc_conn **cp)
{
	int rv = QP_OK;

	for (;;) {
		struct timespec ts;
		int64_t until;
		spc_conn *c;

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
				rv = qpi_err(QP_ECONNREFUSED,
				    "no connection to %s", s->addr.url);
			}
			return QP_ECONNREFUSED;
		}
		until = s->connecting              ? deadline_ns
		    : s->next_try_ns < deadline_ns ? s->next_try_ns
		                                   : deadline_ns;
		if (s->connecting || qpi_now_ns() < s->next_try_ns) {
			ts = qpi_ts_from_ns(until);
			if (until == INT64_MAX) {
				pthread_cond_wait(&s->cv, &s->mu);
			} else {
				pthread_cond_timedwait(&s->cv, &s->mu, &ts);
			}
			continue;
		}
		s->connecting = true;
		pthread_mutex_unlock(&s->mu);
		rv = spc_dial(s, deadline_ns, &c);
		pthread_mutex_lock(&s->mu);
		s->connecting = false;
		pthread_cond_broadcast(&s->cv);
		if (rv == QP_OK) {
			if (s->closed) {
				spc_conn_unref_locked(c);
				continue;
			}
			if (s->cur != NULL) {
				spc_conn_unref_locked(s->cur);
			}
			c->num = ++s->nconn;
			if (c->num == 0) {
				c->num = ++s->nconn;
			}
			s->cur = c;
			s->backoff_ms = 0;
			s->next_try_ns = 0;
			continue;
		}
		if (rv == QP_EINVAL || rv == QP_ENOMEM) {
			return rv;
		}
		s->backoff_ms = s->backoff_ms == 0 ? SPC_BACKOFF_MIN_MS
		    : s->backoff_ms * 2 > SPC_BACKOFF_MAX_MS
		    ? SPC_BACKOFF_MAX_MS
		    : s->backoff_ms * 2;
		s->next_try_ns = qpi_now_ns() + s->backoff_ms * 1000000;
	}
}

/* Hands every whole reply in c->rbuf to its waiter. s->mu held. False
 * when the stream is bad (a length over the limit, no request id). */
static bool
spc_dispatch_locked(qpi_spc *s, spc_conn *c)
{
	size_t pos = 0, hl = s->ipc ? 9 : 8;
	bool ok = true;

	while (c->rlen - pos >= hl) {
		const uint8_t *h = c->rbuf + pos;
		uint64_t len = qpi_sp_get64(h + (s->ipc ? 1 : 0));
		if ((s->ipc && h[0] != 0x01) || len < 4
		    || len > s->max_recv + 4) {
			ok = false;
			break;
		}
		if (c->rlen - pos - hl < len) {
			break;
		}
		uint32_t id = qpi_sp_get32(h + hl);
		for (spc_wait *w = s->waiters; w != NULL; w = w->next) {
			if (w->id == id && w->conn == c && !w->done) {
				nng_msg *m;
				if (nng_msg_alloc(&m, (size_t) len - 4) == 0) {
					memcpy(nng_msg_body(m), h + hl + 4,
					    (size_t) len - 4);
					w->rep = m;
				}
				w->done = true;
				pthread_cond_broadcast(&s->cv);
				break;
			}
		}
		pos += hl + (size_t) len; /* no waiter: a late reply */
	}
	if (pos > 0) {
		memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
		c->rlen -= pos;
	}
	return ok;
}

/* The reader role: waits for bytes until deadline_ns and reads them.
 * Called without s->mu. QP_OK (read something), QP_ETIMEDOUT,
 * QP_ECONNRESET (end of stream or error), QP_ENOMEM. */
static int
spc_read_some(qpi_spc *s, spc_conn *c, int64_t deadline_ns)
{
	ssize_t n;

	if (c->rcap - c->rlen < SPC_RBUF_MIN) {
		size_t cap = c->rcap == 0 ? 16 * SPC_RBUF_MIN : c->rcap * 2;
		uint8_t *b = realloc(c->rbuf, cap);
		if (b == NULL) {
			return QP_ENOMEM;
		}
		c->rbuf = b;
		c->rcap = cap;
	}
	(void) s;
	for (;;) {
		/* The reply is rarely there yet: wait first, then read. */
		int pr = spc_poll(c->fd, POLLIN, deadline_ns);
		if (pr == 0) {
			return QP_ETIMEDOUT;
		}
		if (pr < 0) {
			return QP_ECONNRESET;
		}
		n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
		if (n > 0) {
			c->rlen += (size_t) n;
			return QP_OK;
		}
		if (n == 0) {
			return QP_ECONNRESET;
		}
		if (errno == EINTR) {
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			return QP_ECONNRESET;
		}
	}
}

static void
spc_wait_remove_locked(qpi_spc *s, spc_wait *w)
{
	for (spc_wait **pp = &s->waiters; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	}
}

int
qpi_spc_call(qpi_spc *s, const void *req, size_t len, int64_t conn_deadline_ns,
    int64_t reply_deadline_ns, nng_msg **repp, uint32_t *connp)
{
	spc_wait w;
	spc_conn *c = NULL;
	uint8_t hdr[9 + 4];
	struct iovec iov[2];
	int rv;

	memset(&w, 0, sizeof(w));
	pthread_mutex_lock(&s->mu);
	if ((rv = spc_get_conn_locked(s, conn_deadline_ns, &c)) != QP_OK) {
		pthread_mutex_unlock(&s->mu);
		return rv;
	}
	s->next_id = (s->next_id + 1) & 0x7fffffffu;
	w.id = 0x80000000u | s->next_id;
	w.conn = c;
	w.next = s->waiters;
	s->waiters = &w;
	pthread_mutex_unlock(&s->mu);

	size_t hl = qpi_sp_frame_hdr(hdr, s->ipc, (uint64_t) len + 4);
	qpi_sp_put32(hdr + hl, w.id);
	iov[0].iov_base = hdr;
	iov[0].iov_len = hl + 4;
	iov[1].iov_base = (void *) req;
	iov[1].iov_len = len;
	pthread_mutex_lock(&c->wmu);
	rv = spc_writev_all(c->fd, iov, len > 0 ? 2 : 1, reply_deadline_ns);
	pthread_mutex_unlock(&c->wmu);

	pthread_mutex_lock(&s->mu);
	if (rv != QP_OK) {
		/* A frame half written spoils the stream. */
		spc_break_locked(s, c);
		rv = QP_ECONNRESET;
	}
	while (rv == QP_OK && !w.done) {
		if (s->closed) {
			rv = QP_ECLOSED;
		} else if (c->broken) {
			rv = QP_ECONNRESET;
		} else if (!c->reading) {
			c->reading = true;
			pthread_mutex_unlock(&s->mu);
			rv = spc_read_some(s, c, reply_deadline_ns);
			pthread_mutex_lock(&s->mu);
			c->reading = false;
			pthread_cond_broadcast(&s->cv);
			if (rv == QP_OK && !spc_dispatch_locked(s, c)) {
				rv = QP_EPROTO;
			}
			if (rv == QP_ECONNRESET || rv == QP_EPROTO
			    || rv == QP_ENOMEM) {
				spc_break_locked(s, c);
				rv = QP_ECONNRESET;
			}
		} else if (reply_deadline_ns == INT64_MAX) {
			pthread_cond_wait(&s->cv, &s->mu);
		} else {
			struct timespec ts = qpi_ts_from_ns(reply_deadline_ns);
			if (pthread_cond_timedwait(&s->cv, &s->mu, &ts)
			        == ETIMEDOUT
			    && !w.done) {
				rv = QP_ETIMEDOUT;
			}
		}
	}
	if (w.done) {
		rv = w.rep != NULL ? QP_OK : QP_ENOMEM;
	}
	spc_wait_remove_locked(s, &w);
	*connp = c->num;
	spc_conn_unref_locked(c);
	pthread_mutex_unlock(&s->mu);
	switch (rv) {
	case QP_OK:
		*repp = w.rep;
		return QP_OK;
	case QP_ECLOSED:
		return qpi_err(QP_ECLOSED, "%s: handle closed", s->addr.url);
	case QP_ENOMEM:
		return qpi_err(QP_ENOMEM, "out of memory for a reply");
	case QP_ETIMEDOUT:
		return qpi_err(
		    QP_ETIMEDOUT, "no reply from %s in time", s->addr.url);
	default:
		return qpi_err(
		    QP_ECONNRESET, "connection to %s lost", s->addr.url);
	}
}

void
qpi_spc_drop(qpi_spc *s, uint32_t conn)
{
	pthread_mutex_lock(&s->mu);
	if (s->cur != NULL && s->cur->num == conn) {
		spc_break_locked(s, s->cur);
	}
	pthread_mutex_unlock(&s->mu);
}

void
qpi_spc_close(qpi_spc *s)
{
	pthread_mutex_lock(&s->mu);
	s->closed = true;
	if (s->cur != NULL) {
		spc_break_locked(s, s->cur);
	}
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

void
qpi_spc_free(qpi_spc *s)
{
	if (s == NULL) {
		return;
	}
	if (s->cur != NULL) {
		spc_conn_unref_locked(s->cur);
	}
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

void
qpi_spc_forget(qpi_spc *s)
{
	if (s == NULL) {
		return;
	}
	if (s->cur != NULL) {
		/* close, not shutdown: the socket stays the parent's */
		close(s->cur->fd);
		free(s->cur->rbuf);
		free(s->cur);
	}
	free(s);
}
