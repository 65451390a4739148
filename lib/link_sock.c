/*
 * link_sock.c - the plain socket driver of the connection layer (link.h):
 * tcp:// and ipc://, every wait bounded by the caller's deadline, and no
 * thread of its own, so a forked child can close its copy and dial again.
 * A dialed socket is blocking: sends and non-blocking reads say
 * MSG_DONTWAIT, and a reply wait with more than SL_SLICE_NS left is one
 * blocking recv (SO_RCVTIMEO bounds it to that slice), as a client that
 * blocks in read(2) pays, with no poll or timer per request (a receive
 * spins briefly first, see SL_SPIN_NS); the last slice of a deadline, and
 * sockets accepted here (non-blocking), wait in ppoll. Also its listener,
 * qp_listen's and qpiped's (accept waits on the socket and an eventfd
 * that close writes).
 * Locking: none here; the caller serialises senders and receivers
 * (link.h), and shutdown(2) wakes both.
 */
#define _GNU_SOURCE 1 /* ppoll */
#include "link.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct sock_link {
	qpi_link base; /* first */
	int fd;
	unsigned misses; /* reply waits in a row the spin did not pay */
	bool blocking; /* dialed: blocking, SO_RCVTIMEO of SL_SLICE_NS */
} sock_link;

/* A reply wait first spins for up to SL_SPIN_NS, reading without blocking
 * and yielding the CPU on each turn, and only then sleeps: a loopback or
 * LAN round trip mostly lands inside that window, sooner than a sleeping
 * thread is woken on an idle CPU (tens of microseconds on a VM, the most
 * of a round trip). The spin pays only while the reply comes from another
 * CPU: a wait that misses the window (a slow or far server, a get waiting
 * for an item), or whose reply came only after a yield gave this CPU away
 * for over SL_YIELD_AWAY_NS (the server, or other work, ran here: a
 * sleeping read would have had the reply as soon, for less CPU), is a
 * miss; not on a link with a reader thread of its own, whose yields let
 * the threads that take what it reads run (qpi_link.own_reader). A reply
 * there at the first read (the server shares this CPU, and the scheduler
 * handed it the CPU on the request's send, as it does between processes
 * of different sessions, each its own autogroup) is a hit on ipc:// and
 * neither a hit nor a miss on tcp://. Measured with client and server on
 * one CPU: counted as hits on tcp://, they kept the client spinning, a
 * yield and a failed read on most of its other waits (0.77 yields per
 * request; round trip p50 19.0 us against 18.2 without); on ipc:// the
 * spin they keep costs less than the sleeps it saves (11.0 us against
 * 11.8). After SL_SPIN_MISSES misses in a row a link stops spinning and
 * tries once every SL_SPIN_RETRY waits. */
#define SL_SPIN_NS       50000
#define SL_SPIN_MISSES   8u
#define SL_SPIN_RETRY    64u
#define SL_YIELD_AWAY_NS 5000
/* The longest blocking recv of a dialed socket (SO_RCVTIMEO). */
#define SL_SLICE_NS 250000000

/* Waits for fd to poll events until deadline_ns: 1 ready, 0 timed out,
 * -1 error. */
static int
sl_poll(int fd, short events, int64_t deadline_ns)
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
		return n < 0 ? -1 : n == 0 ? 0 : 1;
	}
}

static int
sl_send(qpi_link *l, struct iovec *iov, int niov, int64_t deadline_ns)
{
	int fd = ((sock_link *) l)->fd;

	while (niov > 0) {
		/* sendmsg or send, not writev or write: no SIGPIPE when the
		 * peer is gone. One buffer: send (no vector to copy in). */
		struct msghdr mh
		    = {.msg_iov = iov, .msg_iovlen = (size_t) niov};
		ssize_t n = niov == 1
		    ? send(fd, iov->iov_base, iov->iov_len,
		        MSG_NOSIGNAL | MSG_DONTWAIT)
		    : sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				return QP_ECONNRESET;
			}
			int pr = sl_poll(fd, POLLOUT, deadline_ns);
			if (pr <= 0) {
				return pr == 0 ? QP_ETIMEDOUT : QP_ECONNRESET;
			}
			continue;
		}
		size_t done = (size_t) n;
		niov = qpi_iov_advance(&iov, niov, done);
	}
	return QP_OK;
}

/* What a recv returned: 1 bytes (*np), 0 none yet, -1 the link broke. */
static int
sl_got(ssize_t n, size_t *np)
{
	if (n > 0) {
		*np = (size_t) n;
		return 1;
	}
	return n < 0
	        && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
	    ? 0
	    : -1;
}

unsigned
qpi_link_spin_misses(
    unsigned misses, int got, bool yielded, bool away, bool ipc)
{
	if (got > 0 && !away && (yielded || ipc)) {
		return 0; /* the spin paid */
	}
	if (got < 0 || away) {
		return misses + (misses < SL_SPIN_MISSES);
	}
	return misses; /* at once on tcp://: neither */
}

static int
sl_recv(qpi_link *l, void *buf, size_t cap, size_t *np, int64_t deadline_ns)
{
	sock_link *s = (sock_link *) l;
	int fd = s->fd, got;

	if (s->misses < SL_SPIN_MISSES || ++s->misses % SL_SPIN_RETRY == 0) {
		int64_t now = qpi_now_ns(), end = now + SL_SPIN_NS;
		bool away = false, yielded = false;
		do {
			if ((got
			        = sl_got(recv(fd, buf, cap, MSG_DONTWAIT), np))
			    != 0) {
				s->misses = qpi_link_spin_misses(
				    s->misses, got, yielded, away, l->ipc);
				return got > 0 ? QP_OK : QP_ECONNRESET;
			}
			int64_t t0 = now;
			sched_yield();
			yielded = true;
			now = qpi_now_ns();
			away = away
			    || (now - t0 > SL_YIELD_AWAY_NS && !l->own_reader);
		} while (now < end && end <= deadline_ns);
		s->misses += s->misses < SL_SPIN_MISSES;
	}
	/* Past the spin the reply is rarely there: wait, then read. */
	while (s->blocking && qpi_remaining_ns(deadline_ns) > SL_SLICE_NS) {
		if ((got = sl_got(recv(fd, buf, cap, 0), np)) != 0) {
			return got > 0 ? QP_OK : QP_ECONNRESET;
		}
	}
	for (;;) {
		int pr = sl_poll(fd, POLLIN, deadline_ns);
		if (pr <= 0) {
			return pr == 0 ? QP_ETIMEDOUT : QP_ECONNRESET;
		}
		if ((got = sl_got(recv(fd, buf, cap, MSG_DONTWAIT), np))
		    != 0) {
			return got > 0 ? QP_OK : QP_ECONNRESET;
		}
	}
}

static void
sl_shutdown(qpi_link *l)
{
	shutdown(((sock_link *) l)->fd, SHUT_RDWR);
}

static void
sl_free(qpi_link *l)
{
	sock_link *s = (sock_link *) l;

	if (s->fd >= 0) {
		close(s->fd);
	}
	free(s);
}

static const qpi_link_ops sl_ops = {
    .send = sl_send,
    .recv = sl_recv,
    .shutdown = sl_shutdown,
    .free = sl_free,
};

int
qpi_link_sock_take(qpi_link *l)
{
	int fd = ((sock_link *) l)->fd;

	((sock_link *) l)->fd = -1;
	sl_free(l);
	return fd;
}

void
qpi_link_forget(qpi_link *l)
{
	if (l != NULL && l->ops == &sl_ops) {
		/* close, not shutdown: the socket stays the parent's */
		sl_free(l);
	}
}

/* Connects one non-blocking socket until deadline_ns: the fd or -errno. */
static int
sl_connect(
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
	int pr = sl_poll(fd, POLLOUT, deadline_ns);
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

/* A link around a connected socket (closed on failure). */
static int
sl_wrap(qpi_link **lp, int fd, bool ipc)
{
	sock_link *s = calloc(1, sizeof(*s));
	int one = 1;

	if (s == NULL) {
		close(fd);
		return qpi_err(QP_ENOMEM, "out of memory for a connection");
	}
	if (!ipc) {
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	}
	s->base.ops = &sl_ops;
	s->fd = fd;
	s->base.ipc = ipc;
	*lp = &s->base;
	return QP_OK;
}

/* The address of ipc:// a; QP_EINVAL (what: "connect to", "listen on")
 * when its path is too long. */
static int
sl_sun(const qpi_addr *a, struct sockaddr_un *sun, const char *what)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	if (strlen(a->path) >= sizeof(sun->sun_path)) {
		return qpi_err(
		    QP_EINVAL, "cannot %s %s: path too long", what, a->url);
	}
	memcpy(sun->sun_path, a->path, strlen(a->path));
	return QP_OK;
}

int
qpi_link_sock_dial(qpi_link **lp, const qpi_addr *a, int64_t deadline_ns)
{
	int fd = -ECONNREFUSED, rv;

	if (a->kind == QPI_ADDR_IPC) {
		struct sockaddr_un sun;
		if ((rv = sl_sun(a, &sun, "connect to")) != QP_OK) {
			return rv;
		}
		fd = sl_connect(AF_UNIX, (struct sockaddr *) &sun, sizeof(sun),
		    deadline_ns);
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
		for (ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
			fd = sl_connect(ai->ai_family, ai->ai_addr,
			    ai->ai_addrlen, deadline_ns);
		}
		freeaddrinfo(res);
	}
	if (fd == -ETIMEDOUT) {
		return qpi_err(
		    QP_ETIMEDOUT, "cannot connect to %s: timed out", a->url);
	}
	if (fd < 0) {
		return qpi_err(QP_ECONNREFUSED, "cannot connect to %s: %s",
		    a->url,
		    fd == -ECONNREFUSED || fd == -ENOENT ? "connection refused"
		                                         : strerror(-fd));
	}
	if ((rv = sl_wrap(lp, fd, a->kind == QPI_ADDR_IPC)) == QP_OK) {
		/* Blocking from here (sl_recv): when that cannot be set, the
		 * socket stays non-blocking and every wait polls. */
		struct timeval tv = {.tv_sec = SL_SLICE_NS / 1000000000,
		    .tv_usec = SL_SLICE_NS % 1000000000 / 1000};
		int fl = fcntl(fd, F_GETFL);
		((sock_link *) *lp)->blocking = fl >= 0
		    && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))
		        == 0
		    && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0;
	}
	return rv;
}

/* ---- listening ---- */

/* Binds a listening socket to a (non-blocking; a stale ipc socket file is
 * replaced): *fdp, and *portp the port bound. QP_EBUSY (in use),
 * QP_EINVAL, QP_ESYSTEM. */
static int
sl_bind(const qpi_addr *a, int *fdp, unsigned *portp)
{
	struct addrinfo hints
	    = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE},
	    *res = NULL;
	struct sockaddr_storage ss;
	struct sockaddr_un *sun = (struct sockaddr_un *) &ss;
	socklen_t sl = sizeof(*sun);
	bool any = a->host[0] == '\0' || strcmp(a->host, "*") == 0;
	char port[16];
	int fd, err = 0, one = 1;

	if (a->kind == QPI_ADDR_IPC) {
		if ((err = sl_sun(a, sun, "listen on")) != QP_OK) {
			return err;
		}
	} else {
		snprintf(port, sizeof(port), "%u", (unsigned) a->port);
		if ((err = getaddrinfo(
		         any ? NULL : a->host, port, &hints, &res))
		    != 0) {
			return qpi_err(QP_EINVAL, "cannot listen on %s: %s",
			    a->url, gai_strerror(err));
		}
		memcpy(&ss, res->ai_addr, res->ai_addrlen);
		sl = res->ai_addrlen;
		freeaddrinfo(res);
	}
	fd = socket(
	    ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		err = errno;
	} else if (a->kind != QPI_ADDR_IPC) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	}
	if (fd >= 0 && bind(fd, (struct sockaddr *) &ss, sl) != 0) {
		err = errno;
		/* A stale socket file (as nng does): nobody answers it. */
		int probe = err == EADDRINUSE && a->kind == QPI_ADDR_IPC
		    ? socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)
		    : -1;
		if (probe >= 0
		    && connect(probe, (struct sockaddr *) &ss, sl) != 0
		    && errno == ECONNREFUSED) {
			unlink(a->path);
			err = bind(fd, (struct sockaddr *) &ss, sl) == 0
			    ? 0
			    : errno;
		}
		if (probe >= 0) {
			close(probe);
		}
	}
	if (err == 0 && listen(fd, 128) != 0) {
		err = errno;
	}
	if (err != 0) {
		if (fd >= 0) {
			close(fd);
		}
		return qpi_err(err == EADDRINUSE ? QP_EBUSY : QP_ESYSTEM,
		    "cannot listen on %s: %s", a->url, strerror(err));
	}
	sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *) &ss, &sl);
	*portp = ntohs(ss.ss_family == AF_INET6
	        ? ((struct sockaddr_in6 *) &ss)->sin6_port
	        : ((struct sockaddr_in *) &ss)->sin_port);
	*fdp = fd;
	return QP_OK;
}

typedef struct sock_listener {
	qpi_link_listener base; /* first */
	int fd;
	int wake; /* an eventfd: readable once closed */
	bool ipc;
	char path[QPI_PATH_MAX + 1]; /* ipc: unlinked when freed */
} sock_listener;

static int
sl_accept(qpi_link_listener *L, qpi_link **lp)
{
	sock_listener *s = (sock_listener *) L;
	struct pollfd p[2] = {{.fd = s->fd, .events = POLLIN},
	    {.fd = s->wake, .events = POLLIN}};
	int fd;

	for (;;) {
		if (poll(p, 2, -1) < 0 && errno != EINTR) {
			return qpi_err(
			    QP_ESYSTEM, "poll: %s", strerror(errno));
		}
		if (p[1].revents != 0) {
			return QP_ECLOSED;
		}
		fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			break;
		}
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS
		    || errno == ENOMEM) {
			return qpi_err(
			    QP_ENOMEM, "accept failed: %s", strerror(errno));
		}
	}
	return sl_wrap(lp, fd, s->ipc);
}

static void
sl_listener_close(qpi_link_listener *L)
{
	uint64_t one = 1;

	if (write(((sock_listener *) L)->wake, &one, sizeof(one)) < 0) {
		/* at its maximum: readable already */
	}
}

static void
sl_listener_free(qpi_link_listener *L)
{
	sock_listener *s = (sock_listener *) L;

	close(s->fd);
	close(s->wake);
	if (s->ipc) {
		unlink(s->path);
	}
	free(s);
}

int
qpi_link_sock_listen(
    qpi_link_listener **lp, const qpi_addr *a, char *bound, size_t boundlen)
{
	sock_listener *s = calloc(1, sizeof(*s));
	unsigned port = 0;
	int rv;

	if (s == NULL
	    || (s->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		free(s);
		return qpi_err(QP_ENOMEM, "out of memory for a listener");
	}
	if ((rv = sl_bind(a, &s->fd, &port)) != QP_OK) {
		close(s->wake);
		free(s);
		return rv;
	}
	s->base.accept = sl_accept;
	s->base.close = sl_listener_close;
	s->base.free = sl_listener_free;
	s->ipc = a->kind == QPI_ADDR_IPC;
	snprintf(s->path, sizeof(s->path), "%s", a->path);
	qpi_link_bound(a, port, bound, boundlen);
	*lp = &s->base;
	return QP_OK;
}
