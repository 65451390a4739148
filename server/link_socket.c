/*
 * link_socket.c - the plain-socket driver of qpiped's links (link.h):
 * tcp:// and ipc:// on non-blocking sockets, without nng's thread
 * hand-offs (the fast path, and the default). A few event-loop threads
 * (epoll; one per CPU qpiped may run on at the start, 1 to 4) serve the
 * links, each link one loop for its life, dealt in turn as listener.c
 * hands over the sockets lib's listener accepted, among as many loops as
 * CPUs it may run on at that moment. A loop reads into its buffer and gives
 * the bytes to qps_link_input; replies are written at once by whichever thread
 * answers (write_now) while nothing is queued, the rest flushed by the
 * link's loop on EPOLLOUT.
 *
 * Locking: a link's fd is used for writing and shut down only under the
 * link's mu and while it is not dead; its loop alone reads it and closes
 * it (or qps_net_close, once the loops have stopped). The loops are set
 * up before any link and torn down after they stop.
 */
#define _GNU_SOURCE 1 /* accept4 */
#include "../lib/link.h" /* lib's: the listening socket */
#include "link.h"

#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define SK_RBUF      (64u * 1024u)
#define SK_MAX_LOOPS 4

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
	size_t next_loop; /* atomic: the loop of the next link */
} sk;

static ssize_t
sk_write_now(qps_link *l, const struct iovec *iov, int niov)
{
	struct msghdr mh
	    = {.msg_iov = (struct iovec *) iov, .msg_iovlen = (size_t) niov};
	ssize_t n;

	do { /* one buffer: send, no vector for the kernel to copy in */
		n = niov == 1
		    ? send(l->fd, iov->iov_base, iov->iov_len, MSG_NOSIGNAL)
		    : sendmsg(l->fd, &mh, MSG_NOSIGNAL);
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
	const char *why = "end of stream";

	if (l->inlen > 0 && (events & (EPOLLHUP | EPOLLERR))) {
		goto close; /* gone with requests unread: nobody to answer */
	}
	if (l->inlen > 0 && !qps_link_input(l, NULL, 0, &why)) {
		goto close; /* what a pause left, first */
	}
	for (int rounds = 0; rounds < 4 && l->inlen == 0; rounds++) {
		ssize_t n = read(l->fd, rbuf, SK_RBUF);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return;
		}
		if (n <= 0) {
			why = n == 0 ? why : strerror(errno);
			goto close;
		}
		if (!qps_link_input(l, rbuf, (size_t) n, &why)) {
			goto close;
		}
		if ((size_t) n < SK_RBUF) {
			return;
		}
	}
	return;
close:
	qps_link_close(l, why);
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

/* The CPUs this thread may run on (its affinity), else the machine's. */
static long
sk_cpus(void)
{
	cpu_set_t set;

	return sched_getaffinity(0, sizeof(set), &set) == 0
	    ? CPU_COUNT(&set)
	    : sysconf(_SC_NPROCESSORS_ONLN);
}

/* How many loops take new connections: one per CPU the process may run
 * on now (its affinity, as seen from this thread, may have shrunk since
 * the loops started: taskset -p, a cgroup's cpuset), at most all of
 * them. The loops past that keep the connections they have. */
static size_t
sk_loops_now(void)
{
	long n = sk_cpus();

	return n < 1 || (size_t) n > sk.nloops ? sk.nloops : (size_t) n;
}

/* A socket accepted (listener.c): a link, watched by the next loop. */
static void
sk_adopt(qpi_link *ql)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char peer[80] = "";
	bool ipc = ql->ipc;
	int fd = qpi_link_sock_take(ql);
	qps_link *l;

	if (!ipc && getpeername(fd, (struct sockaddr *) &ss, &sl) == 0) {
		struct sockaddr_in *s4 = (void *) &ss;
		struct sockaddr_in6 *s6 = (void *) &ss;
		qps_link_format_peer(ss.ss_family,
		    ss.ss_family == AF_INET ? (void *) &s4->sin_addr
		                            : (void *) &s6->sin6_addr,
		    ss.ss_family == AF_INET ? s4->sin_port : s6->sin6_port,
		    peer, sizeof(peer));
	}
	if ((l = qps_link_new(&qps_link_socket, ipc, peer)) == NULL) {
		close(fd);
		return;
	}
	l->fd = fd;
	l->ep = sk.loops[__atomic_fetch_add(&sk.next_loop, 1, __ATOMIC_RELAXED)
	              % sk_loops_now()]
	            .ep;
	qps_link_start(l); /* watched by its loop from here */
	qps_link_unref(l);
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
			if (evs[i].data.u64 == 0) {
				return NULL; /* the wake eventfd: stop */
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
	long ncpu = sk_cpus();

	if (sk.nloops > 0) {
		return QP_OK;
	}
	/* As many loops as CPUs this process may run on: two loops on one
	 * CPU only take turns (and contend for the request layer's lock). */
	sk.nloops = ncpu < 1      ? 1
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
		if (pthread_create(&lp->thr, NULL, sk_loop_main, lp) != 0) {
			qps_log(QPS_LOG_ERROR, "cannot start the event loop");
			return QP_ESYSTEM;
		}
		(void) pthread_setname_np(lp->thr, "qpiped-loop"); /* top -H */
		lp->running = true;
	}
	return QP_OK;
}

static void
sk_stop(void)
{
	uint64_t one = 1;

	for (size_t i = 0; i < sk.nloops; i++) {
		sk_loop *lp = &sk.loops[i];
		if (lp->running && write(lp->wake, &one, sizeof(one)) < 0) {
			qps_log(QPS_LOG_WARN, "cannot wake the event loop");
		}
		if (lp->running) {
			pthread_join(lp->thr, NULL);
		}
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
    .start = sk_start_loops,
    .adopt = sk_adopt,
    .write_now = sk_write_now,
    .kick = sk_kick,
    .shut = sk_shut,
    .close = sk_close,
    .stop = sk_stop,
};
