/*
 * link_socket.c - the plain-socket driver of qpiped's links (link.h):
 * tcp:// and ipc:// on non-blocking sockets, without nng's thread
 * hand-offs (the fast path, and the default). A few event-loop threads
 * (epoll; one per core, 2 to 4) serve the links, each link one loop for
 * its life, dealt in turn; loop 0 also accepts. A loop reads into its
 * buffer and gives the bytes to qps_link_input; replies are written at
 * once by whichever thread answers (write_now) while nothing is queued,
 * the rest flushed by the link's loop on EPOLLOUT. When accept fails for
 * want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), the
 * listeners leave loop 0's set for a backoff (50 ms doubling to 1 s, a
 * timerfd brings them back) instead of waking it again at once, and the
 * warning is said at most once a second.
 *
 * Locking: a link's fd is used for writing and shut down only under the
 * link's mu and while it is not dead; its loop alone reads it and closes
 * it (or qps_net_close, once the loops have stopped). The loops, the
 * listeners and their counters are set up before the loops start and
 * torn down after they stop.
 */
#define _GNU_SOURCE 1 /* accept4 */
#include "../lib/link.h" /* lib's: the listening socket */
#include "link.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#define SK_RBUF      (64u * 1024u)
#define SK_MAX_LOOPS 4

typedef struct sk_listener {
	int fd;
	bool ipc;
	char path[QPI_PATH_MAX + 1]; /* ipc: unlinked at close */
} sk_listener;

/* One event loop: its thread, epoll set, stop eventfd and read buffer. */
typedef struct sk_loop {
	pthread_t thr;
	bool running;
	int ep;
	int wake;
	uint8_t *rbuf;
} sk_loop;

static struct {
	sk_loop loops[SK_MAX_LOOPS];
	size_t nloops;
	size_t next_loop; /* loop 0's thread only */
	sk_listener lst[QPS_MAX_LISTEN];
	size_t nlst;
	int acc_timer; /* timerfd in loop 0: accepting again */
	int64_t acc_backoff_ms; /* 0: accepting; loop 0's thread only */
} sk = {.acc_timer = -1};

/* epoll data: the wake eventfd is 0, listeners are tagged by index with
 * the low bit set, links by their (aligned) address. */
#define SK_TAG_LISTENER(i) ((uint64_t) (i) << 1 | 1u)
/* The accept backoff's timerfd (not a link's address: those are
 * aligned, and not 0). */
#define SK_TAG_ACC_TIMER      ((uint64_t) 2)
#define SK_ACC_BACKOFF_MIN_MS 50
#define SK_ACC_BACKOFF_MAX_MS 1000

static ssize_t
sk_write_now(qps_link *l, const struct iovec *iov, int niov)
{
	struct msghdr mh
	    = {.msg_iov = (struct iovec *) iov, .msg_iovlen = (size_t) niov};
	ssize_t n;

	do {
		n = sendmsg(l->fd, &mh, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
	}
	return n;
}

static void
sk_kick(qps_link *l)
{
	uint32_t ev = (l->paused ? 0u : (uint32_t) EPOLLIN)
	    | (l->outlen > l->outoff ? (uint32_t) EPOLLOUT : 0u);

	if (!l->admitted || ev == l->events) {
		return;
	}
	struct epoll_event e = {.events = ev, .data.ptr = l};
	epoll_ctl(
	    l->ep, l->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, l->fd, &e);
	l->events = ev;
}

static void
sk_shut(qps_link *l)
{
	pthread_mutex_lock(&l->mu);
	if (!l->dead) {
		shutdown(l->fd, SHUT_RDWR); /* its loop sees end of file */
	}
	pthread_mutex_unlock(&l->mu);
}

static void
sk_close(qps_link *l)
{
	close(l->fd); /* which takes it out of its loop's epoll set */
}

/* ---- the loops ---- */

/* Reads and hands the bytes on, up to 4 buffers' worth, stopping when
 * the link pauses (after a request: the rest waits in its inbuf). */
static void
sk_readable(qps_link *l, uint8_t *rbuf, uint32_t events)
{
	const char *why = NULL;

	if (l->inlen > 0 && (events & (EPOLLHUP | EPOLLERR))) {
		/* Gone with requests unread: nobody to answer them. */
		qps_link_close(l, "end of stream");
		return;
	}
	if (l->inlen > 0) {
		/* What a pause left, first. */
		if (!qps_link_input(l, NULL, 0, &why)) {
			qps_link_close(l, why);
			return;
		}
		if (l->inlen > 0) {
			return;
		}
	}
	for (int rounds = 0; rounds < 4; rounds++) {
		ssize_t n = read(l->fd, rbuf, SK_RBUF);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return;
		}
		if (n <= 0) {
			qps_link_close(
			    l, n == 0 ? "end of stream" : strerror(errno));
			return;
		}
		if (!qps_link_input(l, rbuf, (size_t) n, &why)) {
			qps_link_close(l, why);
			return;
		}
		if ((size_t) n < SK_RBUF || l->inlen > 0) {
			return;
		}
	}
}

/* Whether l is paused (too many replies unread). */
static bool
sk_paused(qps_link *l)
{
	bool p;

	pthread_mutex_lock(&l->mu);
	p = l->paused;
	pthread_mutex_unlock(&l->mu);
	return p;
}

/* Flushes the out queue; true when the link closed. */
static bool
sk_writable(qps_link *l)
{
	ssize_t n = 0;

	pthread_mutex_lock(&l->mu);
	if (!l->dead) {
		struct iovec iov = {l->out + l->outoff, l->outlen - l->outoff};
		if ((n = sk_write_now(l, &iov, 1)) > 0) {
			l->outoff += (size_t) n;
		}
	}
	if (n >= 0 && l->outoff == l->outlen) {
		l->outoff = l->outlen = 0;
		qps_link_kick_locked(l);
		if (qps_link_shut_due_locked(l)) {
			shutdown(l->fd, SHUT_RDWR);
		}
	}
	pthread_mutex_unlock(&l->mu);
	if (n < 0) {
		qps_link_close(l, "write failed");
	}
	return n < 0;
}

/* Listens (on) or not on every listener in loop 0's set. */
static void
sk_listeners_watch(bool on)
{
	for (size_t i = 0; i < sk.nlst; i++) {
		struct epoll_event ev
		    = {.events = on ? (uint32_t) EPOLLIN : 0u,
		        .data.u64 = SK_TAG_LISTENER(i)};
		epoll_ctl(sk.loops[0].ep, EPOLL_CTL_MOD, sk.lst[i].fd, &ev);
	}
}

/* Accept failed for want of descriptors or memory: stop accepting for a
 * while (the connections wait in the backlog). Loop 0's thread. */
static void
sk_accept_backoff(int err)
{
	static qps_loglimit ll;
	struct itimerspec its = {0};

	sk.acc_backoff_ms = sk.acc_backoff_ms == 0 ? SK_ACC_BACKOFF_MIN_MS
	    : sk.acc_backoff_ms * 2 > SK_ACC_BACKOFF_MAX_MS
	    ? SK_ACC_BACKOFF_MAX_MS
	    : sk.acc_backoff_ms * 2;
	qps_log_limited(&ll, QPS_LOG_WARN,
	    "accept failed: %s: accepting again in %lld ms (raise the "
	    "open-file limit, or lower --max-connections)",
	    strerror(err), (long long) sk.acc_backoff_ms);
	its.it_value.tv_sec = (time_t) (sk.acc_backoff_ms / 1000);
	its.it_value.tv_nsec = (long) (sk.acc_backoff_ms % 1000) * 1000000L;
	if (sk.acc_timer >= 0
	    && timerfd_settime(sk.acc_timer, 0, &its, NULL) == 0) {
		sk_listeners_watch(false);
	}
}

/* The backoff is over: accept again. */
static void
sk_accept_resume(void)
{
	uint64_t n;

	if (read(sk.acc_timer, &n, sizeof(n)) < 0) {
		/* spurious: nothing to read */
	}
	sk_listeners_watch(true);
}

static void
sk_accept(sk_listener *ls)
{
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		char peer[80] = "";
		qps_link *l;
		int fd = accept4(ls->fd, (struct sockaddr *) &ss, &sl,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			if (errno == EMFILE || errno == ENFILE
			    || errno == ENOBUFS || errno == ENOMEM) {
				sk_accept_backoff(errno);
			} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
				static qps_loglimit ll;
				qps_log_limited(&ll, QPS_LOG_WARN,
				    "accept failed: %s", strerror(errno));
			}
			return;
		}
		sk.acc_backoff_ms = 0;
		if (!ls->ipc) {
			int one = 1;
			setsockopt(
			    fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			setsockopt(
			    fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
			if (ss.ss_family == AF_INET) {
				struct sockaddr_in *s = (void *) &ss;
				qps_link_format_peer(AF_INET, &s->sin_addr,
				    s->sin_port, peer, sizeof(peer));
			} else if (ss.ss_family == AF_INET6) {
				struct sockaddr_in6 *s = (void *) &ss;
				qps_link_format_peer(AF_INET6, &s->sin6_addr,
				    s->sin6_port, peer, sizeof(peer));
			}
		}
		if ((l = qps_link_new(&qps_link_socket, ls->ipc, peer))
		    == NULL) {
			close(fd);
			continue;
		}
		l->fd = fd;
		l->ep = sk.loops[sk.next_loop++ % sk.nloops].ep;
		qps_link_start(l); /* watched by its loop from here */
		qps_link_unref(l);
	}
}

static void *
sk_loop_main(void *arg)
{
	sk_loop *lp = arg;
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
				sk_accept(&sk.lst[tag >> 1]);
				continue;
			}
			if (tag == SK_TAG_ACC_TIMER) {
				sk_accept_resume();
				continue;
			}
			qps_link *l = evs[i].data.ptr;
			if ((evs[i].events & EPOLLOUT) && sk_writable(l)) {
				continue; /* closed (and perhaps freed) */
			}
			if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			    || (l->inlen > 0 && !sk_paused(l))) {
				/* Readable, or requests a pause left
				 * whose replies are now read. */
				sk_readable(l, lp->rbuf, evs[i].events);
			}
		}
	}
}

static int
sk_start_loops(void)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	if (sk.nloops > 0) {
		return QP_OK;
	}
	sk.nloops = ncpu < 2      ? 2
	    : ncpu > SK_MAX_LOOPS ? SK_MAX_LOOPS
	                          : (size_t) ncpu;
	for (size_t i = 0; i < sk.nloops; i++) {
		sk.loops[i].ep = sk.loops[i].wake = -1;
	}
	for (size_t i = 0; i < sk.nloops; i++) {
		sk_loop *lp = &sk.loops[i];
		struct epoll_event ev = {.events = EPOLLIN};
		if ((lp->rbuf = malloc(SK_RBUF)) == NULL
		    || (lp->ep = epoll_create1(EPOLL_CLOEXEC)) < 0
		    || (lp->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0
		    || epoll_ctl(lp->ep, EPOLL_CTL_ADD, lp->wake, &ev) != 0) {
			qps_log(QPS_LOG_ERROR,
			    "cannot start the event loop: %s",
			    strerror(errno));
			return QP_ESYSTEM;
		}
	}
	{
		struct epoll_event ev
		    = {.events = EPOLLIN, .data.u64 = SK_TAG_ACC_TIMER};
		sk.acc_timer = timerfd_create(
		    CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
		if (sk.acc_timer < 0
		    || epoll_ctl(
		           sk.loops[0].ep, EPOLL_CTL_ADD, sk.acc_timer, &ev)
		        != 0) {
			qps_log(QPS_LOG_ERROR,
			    "cannot start the event loop: %s",
			    strerror(errno));
			return QP_ESYSTEM;
		}
	}
	for (size_t i = 0; i < sk.nloops; i++) {
		sk_loop *lp = &sk.loops[i];
		if (pthread_create(&lp->thr, NULL, sk_loop_main, lp) != 0) {
			qps_log(QPS_LOG_ERROR, "cannot start the event loop");
			return QP_ESYSTEM;
		}
		lp->running = true;
	}
	return QP_OK;
}

/* ---- listeners ---- */

static int
sk_listen(const qps_config *cfg, const qpi_addr *a, char *bound)
{
	struct epoll_event ev = {.events = EPOLLIN};
	sk_listener *ls = &sk.lst[sk.nlst];
	unsigned port = 0;
	int fd, rv;

	(void) cfg;
	if ((rv = sk_start_loops()) != QP_OK) {
		return rv;
	}
	if ((rv = qpi_sock_bind(a, &fd, &port)) != QP_OK) {
		qps_log(QPS_LOG_ERROR, "%s", qp_errmsg());
		return rv;
	}
	ls->fd = fd;
	ls->ipc = a->kind == QPI_ADDR_IPC;
	snprintf(ls->path, sizeof(ls->path), "%s", ls->ipc ? a->path : "");
	ev.data.u64 = SK_TAG_LISTENER(sk.nlst);
	sk.nlst++; /* closed by sk_stop even if the next line fails */
	if (epoll_ctl(sk.loops[0].ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
		return QP_ESYSTEM;
	}
	qpi_link_bound(a, NULL, port, bound, QPI_URL_MAX + 1);
	return QP_OK;
}

static void
sk_stop(void)
{
	uint64_t one = 1;

	for (size_t i = 0; i < sk.nloops; i++) {
		sk_loop *lp = &sk.loops[i];
		if (lp->running) {
			if (write(lp->wake, &one, sizeof(one)) < 0) {
				qps_log(QPS_LOG_WARN,
				    "cannot wake the event loop");
			}
			pthread_join(lp->thr, NULL);
			lp->running = false;
		}
	}
	for (size_t i = 0; i < sk.nlst; i++) {
		close(sk.lst[i].fd);
		if (sk.lst[i].ipc) {
			unlink(sk.lst[i].path);
		}
	}
	sk.nlst = 0;
	if (sk.acc_timer >= 0) {
		close(sk.acc_timer);
		sk.acc_timer = -1;
	}
	for (size_t i = 0; i < sk.nloops; i++) {
		sk_loop *lp = &sk.loops[i];
		if (lp->ep >= 0) {
			close(lp->ep);
		}
		if (lp->wake >= 0) {
			close(lp->wake);
		}
		free(lp->rbuf);
		memset(lp, 0, sizeof(*lp));
	}
	sk.nloops = 0;
}

const qps_link_driver qps_link_socket = {
    .name = "plain socket",
    .listen = sk_listen,
    .write_now = sk_write_now,
    .kick = sk_kick,
    .shut = sk_shut,
    .close = sk_close,
    .stop = sk_stop,
};
