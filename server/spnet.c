/*
 * spnet.c - qpiped's raw listeners: tcp:// and ipc:// served with nng's SP
 * req/rep wire format (lib/sp.h) on plain non-blocking sockets, without
 * nng's thread hand-offs. A few event-loop threads (epoll; one per core,
 * 2 to 4) serve the connections, each connection one loop for its life;
 * loop 0 also accepts. A loop does the SP handshake, reads frames (a
 * length over --max-message plus slack closes the connection) and hands
 * each request to the ops layer as nng's workers do; the reply route is a
 * worker holding the connection and the request's backtrace (net.c), so
 * a parked request is answered later from whatever thread wakes it.
 * Replies are written at once when the connection's out queue is empty,
 * the rest queued and flushed by its loop on EPOLLOUT. Connection ids
 * carry QPS_SP_CONN_BIT, so the ops layer's per-connection state (auth,
 * leases, pipes) works unchanged.
 *
 * Locking: sp.mu guards the connection list and the counters. Each
 * connection's mu guards its fd (closed under it), its out queue and its
 * reference count; the read side (handshake, frame parser) belongs to the
 * loop thread alone. The ops layer is never called with a connection's mu
 * held (ops lock -> connection mu is the order).
 */
#define _GNU_SOURCE 1 /* accept4 */
#include "qps.h"
#include "sp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

/* Bytes a request may carry beyond the largest item (as net.c). */
#define SP_FRAME_SLACK (64u * 1024u)
#define SP_RBUF        (64u * 1024u)
#define SP_MAX_LISTEN  QPS_MAX_LISTEN

enum { SPC_HS, SPC_HDR, SPC_BODY };

struct qps_spconn {
	pthread_mutex_t mu;
	int fd;
	int ep; /* the epoll set of the loop that serves it */
	uint32_t id;
	bool ipc;
	int refs; /* the loop's, and one per request in flight */
	bool dead; /* fd closed */
	bool shut_after; /* shut down once the out queue is empty */
	bool want_out; /* EPOLLOUT armed */
	bool paused; /* EPOLLIN off: too many replies not yet read */
	uint8_t *out; /* bytes not yet written: out[outoff..outlen) */
	size_t outoff, outlen, outcap;
	char peer[80];
	/* Read side: loop thread only. */
	int state;
	uint8_t hbuf[9];
	size_t hneed, hhave;
	nng_msg *body;
	size_t bodylen, bodyhave;
	struct qps_spconn *prev, *next;
};

typedef struct sp_listener {
	int fd;
	bool ipc;
	char path[QPI_PATH_MAX + 1]; /* ipc: unlinked at close */
} sp_listener;

/* One event loop: its thread, epoll set, stop eventfd and read buffer. */
typedef struct sp_loop {
	pthread_t thr;
	bool running;
	int ep;
	int wake;
	uint8_t *rbuf;
} sp_loop;

/* Event loops: connections are dealt to them in turn (loop 0 also
 * accepts), so that a busy server gets more than one thread's share of
 * the CPU when clients outnumber cores. */
#define SP_MAX_LOOPS 4

static struct {
	pthread_mutex_t mu;
	sp_loop loops[SP_MAX_LOOPS];
	size_t nloops;
	size_t next_loop;
	sp_listener lst[SP_MAX_LISTEN];
	size_t nlst;
	qps_spconn *conns;
	uint64_t nconns;
	uint32_t next_id;
	size_t cap; /* largest frame body accepted */
} sp = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

/* epoll data: listeners are tagged by index with the low bit set. */
#define SP_TAG_LISTENER(i) ((uint64_t) (i) << 1 | 1u)

static void
spc_unref(qps_spconn *c)
{
	bool last;

	pthread_mutex_lock(&c->mu);
	last = --c->refs == 0;
	pthread_mutex_unlock(&c->mu);
	if (last) {
		if (c->body != NULL) {
			nng_msg_free(c->body);
		}
		free(c->out);
		pthread_mutex_destroy(&c->mu);
		free(c);
	}
}

/* Closes the fd (under c->mu: no writer can be using it), takes c off the
 * list, and tells the ops layer. Loop thread, or close. */
static void
spc_close(qps_spconn *c, const char *why)
{
	pthread_mutex_lock(&c->mu);
	if (c->dead) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	c->dead = true;
	epoll_ctl(c->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	pthread_mutex_unlock(&c->mu);
	pthread_mutex_lock(&sp.mu);
	if (c->prev != NULL) {
		c->prev->next = c->next;
	} else {
		sp.conns = c->next;
	}
	if (c->next != NULL) {
		c->next->prev = c->prev;
	}
	sp.nconns--;
	pthread_mutex_unlock(&sp.mu);
	if (why != NULL) {
		qps_log(QPS_LOG_DEBUG, "connection %u closed: %s", c->id, why);
	}
	qps_ops_conn_remove(c->id);
	spc_unref(c);
}

/* Writes what it can of the out queue and then of iov; queues the rest
 * and arms EPOLLOUT. c->mu held. False when the connection broke. */
static bool
spc_write_locked(qps_spconn *c, struct iovec *iov, int niov)
{
	size_t total = 0;
	ssize_t n;

	for (int i = 0; i < niov; i++) {
		total += iov[i].iov_len;
	}
	if (c->outlen == c->outoff && total > 0) {
		do {
			struct msghdr mh
			    = {.msg_iov = iov, .msg_iovlen = (size_t) niov};
			n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		} while (n < 0 && errno == EINTR);
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			return false;
		}
		size_t done = n > 0 ? (size_t) n : 0;
		for (int i = 0; i < niov && done > 0; i++) {
			size_t k
			    = done < iov[i].iov_len ? done : iov[i].iov_len;
			iov[i].iov_base = (uint8_t *) iov[i].iov_base + k;
			iov[i].iov_len -= k;
			done -= k;
		}
		total -= n > 0 ? (size_t) n : 0;
	}
	if (total == 0) {
		return true;
	}
	if (c->outoff > 0) {
		memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
		c->outlen -= c->outoff;
		c->outoff = 0;
	}
	if (c->outlen + total > c->outcap) {
		size_t cap = c->outcap == 0 ? 4096 : c->outcap;
		while (cap < c->outlen + total) {
			cap *= 2;
		}
		uint8_t *o = realloc(c->out, cap);
		if (o == NULL) {
			return false;
		}
		c->out = o;
		c->outcap = cap;
	}
	for (int i = 0; i < niov; i++) {
		if (iov[i].iov_len > 0) {
			memcpy(c->out + c->outlen, iov[i].iov_base,
			    iov[i].iov_len);
			c->outlen += iov[i].iov_len;
		}
	}
	/* A peer that sends requests but does not read the replies: past
	 * one largest frame waiting, its requests wait until it reads. */
	bool pause = c->outlen - c->outoff > sp.cap;
	if (!c->want_out || pause != c->paused) {
		struct epoll_event ev
		    = {.events = (pause ? 0u : (uint32_t) EPOLLIN) | EPOLLOUT};
		ev.data.ptr = c;
		c->want_out = true;
		c->paused = pause;
		epoll_ctl(c->ep, EPOLL_CTL_MOD, c->fd, &ev);
	}
	return true;
}

/* The out queue is empty: shut the connection if asked. c->mu held. */
static void
spc_maybe_shut_locked(qps_spconn *c)
{
	if (c->shut_after && c->outlen == c->outoff && !c->dead) {
		shutdown(c->fd, SHUT_RDWR); /* the loop sees end of file */
	}
}

void
qps_spnet_reply(qps_spconn *c, const uint8_t *bt, size_t btlen, nng_msg *rep,
    bool close_conn)
{
	if (rep != NULL) {
		uint8_t hdr[9];
		struct iovec iov[3];
		size_t len = nng_msg_len(rep);

		pthread_mutex_lock(&c->mu);
		if (!c->dead) {
			iov[0].iov_base = hdr;
			iov[0].iov_len
			    = qpi_sp_frame_hdr(hdr, c->ipc, btlen + len);
			iov[1].iov_base = (void *) bt;
			iov[1].iov_len = btlen;
			iov[2].iov_base = nng_msg_body(rep);
			iov[2].iov_len = len;
			if (!spc_write_locked(c, iov, 3)) {
				/* The loop notices the broken socket. */
				shutdown(c->fd, SHUT_RDWR);
			}
			if (close_conn) {
				c->shut_after = true;
			}
			spc_maybe_shut_locked(c);
		}
		pthread_mutex_unlock(&c->mu);
		nng_msg_free(rep);
	}
	spc_unref(c);
}

uint64_t
qps_spnet_count(void)
{
	uint64_t n;

	pthread_mutex_lock(&sp.mu);
	n = sp.nconns;
	pthread_mutex_unlock(&sp.mu);
	return n;
}

void
qps_spnet_peer(uint32_t id, char *buf, size_t len)
{
	snprintf(buf, len, "a local socket");
	pthread_mutex_lock(&sp.mu);
	for (qps_spconn *c = sp.conns; c != NULL; c = c->next) {
		if (c->id == id) {
			if (c->peer[0] != '\0') {
				snprintf(buf, len, "%s", c->peer);
			}
			break;
		}
	}
	pthread_mutex_unlock(&sp.mu);
}

/* ---- reading ---- */

/* A whole request is in c->body: hand it to the ops layer. */
static void
spc_request(qps_spconn *c)
{
	nng_msg *m = c->body;
	uint8_t *p = nng_msg_body(m);
	size_t len = nng_msg_len(m), bt = 0;
	qps_worker *w;
	nng_msg *rep = NULL;

	c->body = NULL;
	/* The backtrace: words up to the one with the high bit set. */
	for (;;) {
		if (bt + 4 > len || bt / 4 >= QPI_SP_MAX_HOPS) {
			/* nng's rep0 drops such a message; so do we. */
			qps_log(QPS_LOG_DEBUG,
			    "connection %u: request without a request id",
			    c->id);
			nng_msg_free(m);
			return;
		}
		bt += 4;
		if (p[bt - 4] & 0x80u) {
			break;
		}
	}
	pthread_mutex_lock(&c->mu);
	c->refs++;
	pthread_mutex_unlock(&c->mu);
	if ((w = qps_worker_sp_new(c, p, bt)) == NULL) {
		qps_log(QPS_LOG_ERROR, "out of memory for a request");
		nng_msg_free(m);
		spc_unref(c);
		return;
	}
	nng_msg_trim(m, bt);
	if (qps_ops_handle(w, c->id, m, &rep) == QPS_PARKED) {
		return;
	}
	qps_worker_sp_done(w, rep);
}

/* Consumes n bytes of input; false when the connection must close (why
 * says so). */
static bool
spc_input(qps_spconn *c, const uint8_t *p, size_t n, const char **why)
{
	while (n > 0) {
		if (c->state == SPC_BODY) {
			size_t k = c->bodylen - c->bodyhave;
			k = k < n ? k : n;
			memcpy((uint8_t *) nng_msg_body(c->body) + c->bodyhave,
			    p, k);
			c->bodyhave += k;
			p += k;
			n -= k;
			if (c->bodyhave == c->bodylen) {
				spc_request(c);
				c->state = SPC_HDR;
				c->hneed = c->ipc ? 9 : 8;
				c->hhave = 0;
			}
			continue;
		}
		size_t k = c->hneed - c->hhave;
		k = k < n ? k : n;
		memcpy(c->hbuf + c->hhave, p, k);
		c->hhave += k;
		p += k;
		n -= k;
		if (c->hhave < c->hneed) {
			continue;
		}
		if (c->state == SPC_HS) {
			if (!qpi_sp_hs_check(c->hbuf, QPI_SP_REQ0)) {
				*why = "not an SP req0 peer (bad handshake)";
				return false;
			}
			c->state = SPC_HDR;
			c->hneed = c->ipc ? 9 : 8;
			c->hhave = 0;
			continue;
		}
		if (c->ipc && c->hbuf[0] != 0x01) {
			*why = "bad ipc message type";
			return false;
		}
		uint64_t len = qpi_sp_get64(c->hbuf + (c->ipc ? 1 : 0));
		if (len > sp.cap) {
			qps_log(QPS_LOG_WARN,
			    "connection %u: a message of %llu bytes is over "
			    "the limit (%zu): closing it",
			    c->id, (unsigned long long) len, sp.cap);
			*why = "message over the limit";
			return false;
		}
		if (nng_msg_alloc(&c->body, (size_t) len) != 0) {
			*why = "out of memory for a request";
			return false;
		}
		c->bodylen = (size_t) len;
		c->bodyhave = 0;
		c->state = SPC_BODY;
		if (len == 0) {
			spc_request(c);
			c->state = SPC_HDR;
			c->hneed = c->ipc ? 9 : 8;
			c->hhave = 0;
		}
	}
	return true;
}

static void
spc_readable(qps_spconn *c, uint8_t *rbuf)
{
	const char *why = NULL;

	for (int rounds = 0; rounds < 4; rounds++) {
		ssize_t n = read(c->fd, rbuf, SP_RBUF);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return;
		}
		if (n <= 0) {
			spc_close(
			    c, n == 0 ? "end of stream" : strerror(errno));
			return;
		}
		if (!spc_input(c, rbuf, (size_t) n, &why)) {
			spc_close(c, why);
			return;
		}
		if ((size_t) n < SP_RBUF) {
			return;
		}
	}
}

/* Flushes the out queue; true when the connection closed. */
static bool
spc_writable(qps_spconn *c)
{
	bool broken = false;

	pthread_mutex_lock(&c->mu);
	while (!c->dead && c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff,
		    c->outlen - c->outoff, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			broken = errno != EAGAIN && errno != EWOULDBLOCK;
			break;
		}
		c->outoff += (size_t) n;
	}
	if (!c->dead && c->outoff == c->outlen) {
		struct epoll_event ev = {.events = EPOLLIN};
		ev.data.ptr = c;
		c->outoff = c->outlen = 0;
		c->want_out = false;
		c->paused = false;
		epoll_ctl(c->ep, EPOLL_CTL_MOD, c->fd, &ev);
		spc_maybe_shut_locked(c);
	}
	pthread_mutex_unlock(&c->mu);
	if (broken) {
		spc_close(c, "write failed");
	}
	return broken;
}

/* ---- accepting ---- */

static void
sp_format_peer(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *) ss;
		inet_ntop(AF_INET, &s->sin_addr, host, sizeof(host));
		snprintf(buf, len, "tcp://%s:%u", host,
		    (unsigned) ntohs(s->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s
		    = (const struct sockaddr_in6 *) ss;
		inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "tcp://[%s]:%u", host,
		    (unsigned) ntohs(s->sin6_port));
	} else {
		buf[0] = '\0';
	}
}

static void
sp_accept(sp_listener *l)
{
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		uint8_t hs[QPI_SP_HS_LEN];
		qps_spconn *c;
		int fd = accept4(l->fd, (struct sockaddr *) &ss, &sl,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				qps_log(QPS_LOG_WARN, "accept failed: %s",
				    strerror(errno));
			}
			return;
		}
		if (!l->ipc) {
			int one = 1;
			setsockopt(
			    fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			setsockopt(
			    fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		}
		if ((c = calloc(1, sizeof(*c))) == NULL) {
			close(fd);
			qps_log(
			    QPS_LOG_ERROR, "out of memory for a connection");
			continue;
		}
		pthread_mutex_init(&c->mu, NULL);
		c->fd = fd;
		c->ipc = l->ipc;
		c->refs = 2; /* its loop's, and this function's until set up */
		c->state = SPC_HS;
		c->hneed = QPI_SP_HS_LEN;
		sp_format_peer(&ss, c->peer, sizeof(c->peer));
		pthread_mutex_lock(&sp.mu);
		sp.next_id = (sp.next_id + 1) & ~QPS_SP_CONN_BIT;
		if (sp.next_id == 0) {
			sp.next_id = 1;
		}
		c->id = QPS_SP_CONN_BIT | sp.next_id;
		c->ep = sp.loops[sp.next_loop++ % sp.nloops].ep;
		c->next = sp.conns;
		if (sp.conns != NULL) {
			sp.conns->prev = c;
		}
		sp.conns = c;
		sp.nconns++;
		pthread_mutex_unlock(&sp.mu);

		/* Our half of the handshake: a fresh socket takes 8 bytes.
		 * The connection is known to the ops layer before its loop
		 * can read a request from it. */
		qpi_sp_hs_make(hs, QPI_SP_REP0);
		if (send(fd, hs, sizeof(hs), MSG_NOSIGNAL)
		    != (ssize_t) sizeof(hs)) {
			spc_close(c, "handshake not sent");
			spc_unref(c);
			continue;
		}
		if (!qps_ops_conn_add(c->id)) {
			spc_close(c, "over the connection limit");
			spc_unref(c);
			continue;
		}
		qps_log(QPS_LOG_DEBUG, "connection %u from %s", c->id,
		    c->peer[0] != '\0' ? c->peer : "a local socket");
		struct epoll_event ev = {.events = EPOLLIN};
		ev.data.ptr = c;
		if (epoll_ctl(c->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
			spc_close(c, "cannot watch it");
		}
		/* From here its loop may close (and free) it at any time. */
		spc_unref(c);
	}
}

static void *
sp_loop_main(void *arg)
{
	sp_loop *lp = arg;
	struct epoll_event evs[64];

	for (;;) {
		int n = epoll_wait(lp->ep, evs, 64, -1);
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			qps_log(
			    QPS_LOG_ERROR, "epoll_wait: %s", strerror(errno));
			return NULL;
		}
		for (int i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;
			if (tag == 0) {
				return NULL; /* the wake eventfd: stop */
			}
			if (tag & 1u) {
				sp_accept(&sp.lst[tag >> 1]);
				continue;
			}
			qps_spconn *c = evs[i].data.ptr;
			if ((evs[i].events & EPOLLOUT) && spc_writable(c)) {
				continue; /* closed (and perhaps freed) */
			}
			if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
				spc_readable(c, lp->rbuf);
			}
		}
	}
}

/* ---- listeners ---- */

static int
sp_start(const qps_config *cfg)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	if (sp.nloops > 0) {
		return QP_OK;
	}
	sp.cap = cfg->max_message + SP_FRAME_SLACK;
	sp.nloops = ncpu < 2      ? 2
	    : ncpu > SP_MAX_LOOPS ? SP_MAX_LOOPS
	                          : (size_t) ncpu;
	for (size_t i = 0; i < sp.nloops; i++) {
		sp.loops[i].ep = sp.loops[i].wake = -1;
	}
	for (size_t i = 0; i < sp.nloops; i++) {
		sp_loop *lp = &sp.loops[i];
		struct epoll_event ev = {.events = EPOLLIN};
		if ((lp->rbuf = malloc(SP_RBUF)) == NULL) {
			return QP_ENOMEM;
		}
		if ((lp->ep = epoll_create1(EPOLL_CLOEXEC)) < 0
		    || (lp->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK))
		        < 0) {
			qps_log(QPS_LOG_ERROR,
			    "cannot start the event loop: %s",
			    strerror(errno));
			return QP_ESYSTEM;
		}
		ev.data.u64 = 0;
		epoll_ctl(lp->ep, EPOLL_CTL_ADD, lp->wake, &ev);
	}
	return QP_OK;
}

static int
sp_bind_tcp(const qpi_addr *a, unsigned *portp)
{
	struct addrinfo hints, *res = NULL, *ai;
	char port[16];
	bool any = a->host[0] == '\0' || strcmp(a->host, "*") == 0;
	int fd = -1, err = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	snprintf(port, sizeof(port), "%u", (unsigned) a->port);
	if ((err = getaddrinfo(any ? NULL : a->host, port, &hints, &res))
	    != 0) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: %s", a->url,
		    gai_strerror(err));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		int one = 1;
		fd = socket(ai->ai_family,
		    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			err = errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0
		    && listen(fd, 128) == 0) {
			break;
		}
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: %s", a->url,
		    strerror(err));
		return err == EADDRINUSE ? -2 : -1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *) &ss, &sl);
	*portp = ntohs(ss.ss_family == AF_INET6
	        ? ((struct sockaddr_in6 *) &ss)->sin6_port
	        : ((struct sockaddr_in *) &ss)->sin_port);
	return fd;
}

static int
sp_bind_ipc(const qpi_addr *a)
{
	struct sockaddr_un sun;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(a->path) >= sizeof(sun.sun_path)) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: path too long",
		    a->url);
		return -1;
	}
	memcpy(sun.sun_path, a->path, strlen(a->path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: %s", a->url,
		    strerror(errno));
		return -1;
	}
	if (bind(fd, (struct sockaddr *) &sun, sizeof(sun)) != 0) {
		int err = errno;
		/* A stale socket file (as nng does): nobody answers it. */
		int probe = err == EADDRINUSE
		    ? socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)
		    : -1;
		bool stale = probe >= 0
		    && connect(probe, (struct sockaddr *) &sun, sizeof(sun))
		        != 0
		    && errno == ECONNREFUSED;
		if (probe >= 0) {
			close(probe);
		}
		if (stale) {
			unlink(a->path);
			err = bind(fd, (struct sockaddr *) &sun, sizeof(sun))
			        == 0
			    ? 0
			    : errno;
		}
		if (err != 0) {
			qps_log(QPS_LOG_ERROR, "cannot listen on %s: %s",
			    a->url, strerror(err));
			close(fd);
			return err == EADDRINUSE ? -2 : -1;
		}
	}
	if (listen(fd, 128) != 0) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: %s", a->url,
		    strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int
qps_spnet_listen(const qps_config *cfg, const qpi_addr *a, char *bound)
{
	struct epoll_event ev = {.events = EPOLLIN};
	sp_listener *l;
	unsigned port = 0;
	int fd, rv;

	if ((rv = sp_start(cfg)) != QP_OK) {
		return rv;
	}
	if (sp.nlst == SP_MAX_LISTEN) {
		return QP_ELIMIT;
	}
	fd = a->kind == QPI_ADDR_IPC ? sp_bind_ipc(a) : sp_bind_tcp(a, &port);
	if (fd < 0) {
		return fd == -2 ? QP_EBUSY : QP_ESYSTEM;
	}
	l = &sp.lst[sp.nlst];
	l->fd = fd;
	l->ipc = a->kind == QPI_ADDR_IPC;
	snprintf(l->path, sizeof(l->path), "%s", l->ipc ? a->path : "");
	ev.data.u64 = SP_TAG_LISTENER(sp.nlst);
	if (epoll_ctl(sp.loops[0].ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
		close(fd);
		return QP_ESYSTEM;
	}
	sp.nlst++;
	for (size_t i = 0; i < sp.nloops; i++) {
		sp_loop *lp = &sp.loops[i];
		if (lp->running) {
			continue;
		}
		if (pthread_create(&lp->thr, NULL, sp_loop_main, lp) != 0) {
			qps_log(QPS_LOG_ERROR, "cannot start the event loop");
			return QP_ESYSTEM;
		}
		lp->running = true;
	}
	if (l->ipc) {
		snprintf(bound, QPI_URL_MAX + 1, "%s", a->url);
	} else {
		bool v6 = strchr(a->host, ':') != NULL;
		snprintf(bound, QPI_URL_MAX + 1, "tcp://%s%s%s:%u",
		    v6 ? "[" : "", a->host, v6 ? "]" : "", port);
	}
	qps_log(QPS_LOG_INFO, "listening on %s", bound);
	return QP_OK;
}

void
qps_spnet_close(void)
{
	uint64_t one = 1;

	for (size_t i = 0; i < sp.nloops; i++) {
		sp_loop *lp = &sp.loops[i];
		if (lp->running) {
			if (write(lp->wake, &one, sizeof(one)) < 0) {
				qps_log(QPS_LOG_WARN,
				    "cannot wake the event loop");
			}
			pthread_join(lp->thr, NULL);
			lp->running = false;
		}
	}
	for (size_t i = 0; i < sp.nlst; i++) {
		close(sp.lst[i].fd);
		if (sp.lst[i].ipc) {
			unlink(sp.lst[i].path);
		}
	}
	sp.nlst = 0;
	for (;;) {
		qps_spconn *c;
		pthread_mutex_lock(&sp.mu);
		c = sp.conns;
		pthread_mutex_unlock(&sp.mu);
		if (c == NULL) {
			break;
		}
		spc_close(c, NULL);
	}
	for (size_t i = 0; i < sp.nloops; i++) {
		sp_loop *lp = &sp.loops[i];
		if (lp->ep >= 0) {
			close(lp->ep);
		}
		if (lp->wake >= 0) {
			close(lp->wake);
		}
		free(lp->rbuf);
		memset(lp, 0, sizeof(*lp));
	}
	sp.nloops = 0;
}
