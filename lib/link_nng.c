/*
 * link_nng.c - the nng stream driver of the connection layer (link.h):
 * tls+tcp:// (nng's TLS, configured by tls.c), and tcp:// or ipc:// when
 * QPIPE_TRANSPORT=nng asks for nng; and the listener of direct
 * connections (qp_listen), whose accept hands out links. Each transfer is
 * one nng aio waited on by the caller's thread. nng 1.5.2's TLS streams
 * wait for ever on a transfer given after one failed or after the stream
 * closed, and ignore a transfer's timeout; so after any failure or
 * timeout the link counts as broken (the call engine dials again) and
 * gives nng nothing more, a TLS transfer with a deadline is watched by a
 * timer that closes the stream when the deadline passes, and shutdown
 * closes the stream, which always ends its transfers. Also the one map
 * from nng's errors to QP_ codes (qpi_nng_err), and nng's claim on a
 * process: the first process to set up a network handle claims nng, and
 * its forked children, which see the claim (fork copies the variable),
 * refuse (a child forked before the first claim may claim it itself).
 *
 * Locking: the caller serialises senders and receivers (link.h); a
 * link's mu makes "not broken, so start the transfer" one step against
 * shutdown and the watchdogs; the claim is one atomic compare-and-swap.
 */
#include "link.h"
#include "tls.h"

#include <arpa/inet.h>
#include <nng/nng.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct nng_link {
	qpi_link base; /* first */
	nng_stream *st;
	nng_aio *tx, *rx;
	nng_aio *wd[2]; /* tls: close the stream when a send (0) or a
	                   receive (1) outlives its deadline */
	bool tls;
	pthread_mutex_t mu; /* a transfer's check and start; shutdown */
	bool broken; /* under mu */
} nng_link;

/* Ends the stream: nng then ends the transfers it holds. */
static void
nl_break(nng_link *n)
{
	pthread_mutex_lock(&n->mu);
	n->broken = true;
	nng_stream_close(n->st);
	pthread_mutex_unlock(&n->mu);
}

/* The watchdogs' callbacks: their time ran out (not cancelled). */
static void
nl_wd_tx(void *arg)
{
	nng_link *n = arg;

	if (nng_aio_result(n->wd[0]) == 0) {
		nl_break(n);
	}
}

static void
nl_wd_rx(void *arg)
{
	nng_link *n = arg;

	if (nng_aio_result(n->wd[1]) == 0) {
		nl_break(n);
	}
}

int
qpi_nng_err(int nrv)
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
	case NNG_ECONNSHUT:
	case NNG_ECONNRESET:
	case NNG_ECONNABORTED:
		return QP_ECONNRESET;
	case NNG_ECLOSED:
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

/* One transfer of the iovs until deadline_ns, resumed after short ones. */
static int
nl_xfer(nng_link *n, bool send, struct iovec *iov, int niov,
    int64_t deadline_ns, size_t *gotp)
{
	nng_aio *aio = send ? n->tx : n->rx, *wd = n->wd[send ? 0 : 1];

	while (niov > 0) {
		nng_iov v[4];
		int64_t left = qpi_remaining_ns(deadline_ns);
		nng_duration ms = left == INT64_MAX
		    ? NNG_DURATION_INFINITE
		    : (nng_duration) (left / 1000000 + 1);
		bool watch = n->tls && left != INT64_MAX;
		int nrv;

		for (int i = 0; i < niov && i < 4; i++) {
			v[i].iov_buf = iov[i].iov_base;
			v[i].iov_len = iov[i].iov_len;
		}
		nng_aio_set_iov(aio, (unsigned) (niov < 4 ? niov : 4), v);
		nng_aio_set_timeout(aio, ms);
		/* Checked and started under mu: a transfer given to a TLS
		 * stream after it closed would wait for ever. (nng completes
		 * transfers on its own threads, never inside this call.) */
		pthread_mutex_lock(&n->mu);
		if (n->broken || left == 0) {
			n->broken = true;
			pthread_mutex_unlock(&n->mu);
			return left == 0 ? QP_ETIMEDOUT : QP_ECONNRESET;
		}
		if (watch) {
			/* A TLS transfer's timeout cannot be relied on. */
			nng_sleep_aio(ms, wd);
		}
		if (send) {
			nng_stream_send(n->st, aio);
		} else {
			nng_stream_recv(n->st, aio);
		}
		pthread_mutex_unlock(&n->mu);
		nng_aio_wait(aio);
		bool fired = false;
		if (watch) {
			nng_aio_cancel(wd);
			nng_aio_wait(wd);
			fired = nng_aio_result(wd) == 0;
		}
		if ((nrv = nng_aio_result(aio)) != 0) {
			n->base.nrv = fired ? NNG_ETIMEDOUT : nrv;
			nl_break(n);
			return nrv == NNG_ETIMEDOUT || fired ? QP_ETIMEDOUT
			                                     : QP_ECONNRESET;
		}
		size_t done = nng_aio_count(aio);
		if (!send) {
			*gotp = done; /* a receive takes what came */
			return QP_OK;
		}
		niov = qpi_iov_advance(&iov, niov, done);
	}
	return QP_OK;
}

static int
nl_send(qpi_link *l, struct iovec *iov, int niov, int64_t deadline_ns)
{
	size_t got;

	return nl_xfer((nng_link *) l, true, iov, niov, deadline_ns, &got);
}

static int
nl_recv(qpi_link *l, void *buf, size_t cap, size_t *np, int64_t deadline_ns)
{
	struct iovec v = {.iov_base = buf, .iov_len = cap};

	return nl_xfer((nng_link *) l, false, &v, 1, deadline_ns, np);
}

static void
nl_shutdown(qpi_link *l)
{
	nl_break((nng_link *) l);
}

/* Frees the link's own parts; the stream is the caller's to free. */
static void
nl_free_parts(nng_link *n)
{
	nng_aio_free(n->wd[0]);
	nng_aio_free(n->wd[1]);
	nng_aio_free(n->tx);
	nng_aio_free(n->rx);
	pthread_mutex_destroy(&n->mu);
	free(n);
}

static void
nl_free(qpi_link *l)
{
	nng_link *n = (nng_link *) l;

	nng_stream_close(n->st);
	nng_stream_free(n->st);
	nl_free_parts(n);
}

void *
qpi_link_nng_take(qpi_link *l)
{
	nng_link *n = (nng_link *) l;
	nng_stream *st = n->st;

	nl_free_parts(n);
	return st;
}

static const qpi_link_ops nl_ops = {
    .send = nl_send,
    .recv = nl_recv,
    .shutdown = nl_shutdown,
    .free = nl_free,
};

/* The process whose network handles started nng (0: none yet). */
static pid_t np_owner;

/* Called before anything that may start nng: QP_OK, and nng is this
 * process's from then on; QP_EINVAL (what names the address) in a child
 * forked from a process that had claimed it. */
static int
nl_claim(const char *what)
{
	pid_t me = getpid(), first = 0;

	if (__atomic_compare_exchange_n(&np_owner, &first, me, false,
	        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
	    || first == me) {
		return QP_OK;
	}
	return qpi_err(QP_EINVAL,
	    "cannot reach %s: process %ld, which this one was forked from, "
	    "already used the network layer (nng), which does not survive "
	    "fork(); open tls+tcp:// addresses (any, with "
	    "QPIPE_TRANSPORT=nng) only in processes that did not inherit "
	    "it (fork before the first such call, or exec); tcp:// and "
	    "ipc:// need no nng otherwise",
	    what, (long) first);
}

/* A link around stream st (NULL: set later); the caller's on failure. */
static int
nl_new(nng_link **np, nng_stream *st, bool tls)
{
	nng_link *n = calloc(1, sizeof(*n));

	if (n != NULL) {
		pthread_mutex_init(&n->mu, NULL);
	}
	if (n == NULL || nng_aio_alloc(&n->tx, NULL, NULL) != 0
	    || nng_aio_alloc(&n->rx, NULL, NULL) != 0
	    || nng_aio_alloc(&n->wd[0], nl_wd_tx, n) != 0
	    || nng_aio_alloc(&n->wd[1], nl_wd_rx, n) != 0) {
		if (n != NULL) {
			nl_free_parts(n);
		}
		return qpi_err(QP_ENOMEM, "out of memory for a connection");
	}
	n->st = st;
	n->tls = tls;
	n->base.ops = &nl_ops;
	*np = n;
	return QP_OK;
}

int
qpi_link_nng_dial(qpi_link **lp, const qpi_addr *a, const qp_conn_opts *o,
    int64_t deadline_ns)
{
	nng_stream_dialer *d = NULL;
	nng_tls_config *tls = NULL;
	nng_link *n = NULL;
	int64_t left = qpi_remaining_ns(deadline_ns);
	int nrv, rv;

	if ((rv = nl_claim(a->url)) != QP_OK
	    || (a->kind == QPI_ADDR_TLS
	        && (rv = qpi_tls_config_opts(&tls, false, o, a->host))
	            != QP_OK)
	    || (rv = nl_new(&n, NULL, a->kind == QPI_ADDR_TLS)) != QP_OK) {
		goto out;
	}
	if ((nrv = nng_stream_dialer_alloc(&d, a->url)) != 0
	    || (tls != NULL
	        && (nrv
	               = nng_stream_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, tls))
	            != 0)) {
		rv = qpi_err(qpi_nng_err(nrv), "cannot connect to %s: %s",
		    a->url, nng_strerror(nrv));
		goto out;
	}
	if (a->kind != QPI_ADDR_IPC) {
		nng_stream_dialer_set_bool(d, NNG_OPT_TCP_NODELAY, true);
		nng_stream_dialer_set_bool(d, NNG_OPT_TCP_KEEPALIVE, true);
	}
	nng_aio_set_timeout(n->tx,
	    left == INT64_MAX ? NNG_DURATION_INFINITE
	                      : (nng_duration) (left / 1000000 + 1));
	nng_stream_dialer_dial(d, n->tx);
	nng_aio_wait(n->tx);
	if ((nrv = nng_aio_result(n->tx)) != 0) {
		rv = qpi_nng_err(nrv);
		rv = qpi_err(
		    rv == QP_ETIMEDOUT || rv == QP_EINVAL || rv == QP_ENOMEM
		        ? rv
		        : QP_ECONNREFUSED,
		    "cannot connect to %s: %s", a->url,
		    nrv == NNG_ECONNREFUSED ? "connection refused"
		                            : nng_strerror(nrv));
		goto out;
	}
	n->st = nng_aio_get_output(n->tx, 0);
	*lp = &n->base;
	n = NULL;
out:
	if (n != NULL) {
		/* The aio first: it stops the dial, which must end before its
		 * dialer goes (nng 1.5.2 panics otherwise). */
		nl_free_parts(n);
	}
	if (d != NULL) {
		nng_stream_dialer_free(d);
	}
	if (tls != NULL) {
		nng_tls_config_free(tls); /* the stream holds its own */
	}
	return rv;
}

/* ---- listening ---- */

typedef struct nl_listener {
	qpi_link_listener base; /* first */
	nng_stream_listener *sl;
	nng_aio *acc;
	bool tls;
	bool ipc;
} nl_listener;

static int
nl_accept(qpi_link_listener *base, qpi_link **lp)
{
	nl_listener *L = (nl_listener *) base;
	nng_link *n;
	int nrv, rv;

	nng_stream_listener_accept(L->sl, L->acc);
	nng_aio_wait(L->acc);
	if ((nrv = nng_aio_result(L->acc)) != 0) {
		return qpi_err(
		    qpi_nng_err(nrv), "accept failed: %s", nng_strerror(nrv));
	}
	nng_stream *st = nng_aio_get_output(L->acc, 0);
	if ((rv = nl_new(&n, st, L->tls)) != QP_OK) {
		nng_stream_free(st);
		return rv;
	}
	n->base.ipc = L->ipc;
	*lp = &n->base;
	return QP_OK;
}

static void
nl_listener_close(qpi_link_listener *base)
{
	nng_stream_listener_close(((nl_listener *) base)->sl);
}

static void
nl_listener_free(qpi_link_listener *base)
{
	nl_listener *L = (nl_listener *) base;

	nng_stream_listener_close(L->sl);
	nng_aio_free(L->acc);
	nng_stream_listener_free(L->sl);
	free(L);
}

int
qpi_link_nng_listen(qpi_link_listener **lp, const qpi_addr *a,
    const qp_conn_opts *o, char *bound, size_t boundlen)
{
	nl_listener *L;
	nng_tls_config *tls = NULL;
	nng_sockaddr sa;
	int nrv, rv;

	if ((rv = nl_claim(a->url)) != QP_OK
	    || (a->kind == QPI_ADDR_TLS
	        && (rv = qpi_tls_config_opts(&tls, true, o, NULL)) != QP_OK)) {
		return rv;
	}
	if ((L = calloc(1, sizeof(*L))) == NULL) {
		rv = qpi_err(QP_ENOMEM, "out of memory for a listener");
		goto out;
	}
	L->tls = a->kind == QPI_ADDR_TLS;
	L->ipc = a->kind == QPI_ADDR_IPC;
	if ((nrv = nng_stream_listener_alloc(&L->sl, a->url)) != 0
	    || (tls != NULL
	        && (nrv = nng_stream_listener_set_ptr(
	                L->sl, NNG_OPT_TLS_CONFIG, tls))
	            != 0)
	    || (!L->ipc
	        && ((nrv = nng_stream_listener_set_bool(
	                 L->sl, NNG_OPT_TCP_NODELAY, true))
	                != 0
	            || (nrv = nng_stream_listener_set_bool(
	                    L->sl, NNG_OPT_TCP_KEEPALIVE, true))
	                != 0))
	    || (nrv = nng_stream_listener_listen(L->sl)) != 0
	    || (nrv = nng_aio_alloc(&L->acc, NULL, NULL)) != 0) {
		rv = qpi_err(qpi_nng_err(nrv), "cannot listen on %s: %s",
		    a->url, nng_strerror(nrv));
		nng_stream_listener_free(L->sl);
		free(L);
		goto out;
	}
	L->base.accept = nl_accept;
	L->base.close = nl_listener_close;
	L->base.free = nl_listener_free;
	/* The address bound (port 0 becomes the port given). */
	unsigned port = a->port;
	memset(&sa, 0, sizeof(sa));
	if (!L->ipc
	    && nng_stream_listener_get_addr(L->sl, NNG_OPT_LOCADDR, &sa)
	        == 0) {
		port = ntohs(sa.s_family == NNG_AF_INET6 ? sa.s_in6.sa_port
		                                         : sa.s_in.sa_port);
	}
	qpi_link_bound(a, port, bound, boundlen);
	*lp = &L->base;
out:
	if (tls != NULL) {
		nng_tls_config_free(tls); /* the listener holds its own */
	}
	return rv;
}

/* ---- which process may use nng ---- */

bool
qpi_nng_forked(pid_t owner)
{
	return owner != getpid();
}

int
qpi_nng_forked_err(const char *what, pid_t owner)
{
	return qpi_err(QP_EINVAL,
	    "%s was made in process %ld: a network handle does not "
	    "survive fork() (nng); a forked child can only close and free "
	    "it (open, listen or dial before forking, in the process that "
	    "uses it)",
	    what, (long) owner);
}
