/*
 * link_sock.c - the plain socket driver of the connection layer (link.h):
 * tcp:// and ipc:// on a non-blocking socket, every wait a ppoll bounded
 * by the caller's deadline, and no thread of its own, so a forked child
 * can close its copy and dial again. Locking: none here; the caller
 * serialises senders and receivers (link.h), and shutdown(2) wakes both.
 */
#define _GNU_SOURCE 1 /* ppoll */
#include "link.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct sock_link {
	qpi_link base; /* first */
	int fd;
} sock_link;

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

static int
sl_recv(qpi_link *l, void *buf, size_t cap, size_t *np, int64_t deadline_ns)
{
	int fd = ((sock_link *) l)->fd;

	for (;;) {
		/* The reply is rarely there yet: wait first, then read. */
		int pr = sl_poll(fd, POLLIN, deadline_ns);
		if (pr <= 0) {
			return pr == 0 ? QP_ETIMEDOUT : QP_ECONNRESET;
		}
		ssize_t n = read(fd, buf, cap);
		if (n > 0) {
			*np = (size_t) n;
			return QP_OK;
		}
		if (n == 0
		    || (errno != EINTR && errno != EAGAIN
		        && errno != EWOULDBLOCK)) {
			return QP_ECONNRESET;
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
	close(((sock_link *) l)->fd);
	free(l);
}

static const qpi_link_ops sl_ops = {
    .name = "socket",
    .send = sl_send,
    .recv = sl_recv,
    .shutdown = sl_shutdown,
    .free = sl_free,
};

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

int
qpi_link_sock_dial(qpi_link **lp, const qpi_addr *a, int64_t deadline_ns)
{
	int fd = -ECONNREFUSED, rv;
	sock_link *s;

	if (a->kind == QPI_ADDR_IPC) {
		struct sockaddr_un sun;
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		if (strlen(a->path) >= sizeof(sun.sun_path)) {
			return qpi_err(
			    QP_EINVAL, "ipc path too long: %s", a->url);
		}
		memcpy(sun.sun_path, a->path, strlen(a->path));
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
		if (fd >= 0) {
			int one = 1;
			setsockopt(
			    fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			setsockopt(
			    fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		}
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
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		close(fd);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	s->base.ops = &sl_ops;
	s->fd = fd;
	*lp = &s->base;
	return QP_OK;
}
