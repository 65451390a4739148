/*
 * link_nng.c - the nng stream driver of the connection layer (link.h):
 * tls+tcp:// (nng's TLS, configured by tls.c), and tcp:// or ipc:// when
 * QPIPE_TRANSPORT=nng asks for nng. Each transfer is one nng aio waited
 * on by the caller's thread. nng 1.5.2's TLS streams wait for ever on a
 * transfer given after one failed, and ignore a send's timeout; so after
 * any failure or timeout the link counts as broken (the call engine dials
 * again) and gives nng nothing more, a TLS send with a deadline is
 * watched by a timer that closes the stream when the deadline passes, and
 * shutdown closes the stream, which always ends its transfers. Also the one
 * map from nng's errors to QP_ codes (qpi_nng_err). Locking: none here; the
 * caller serialises senders and receivers (link.h); broken is atomic.
 */
#include "link.h"
#include "nngproc.h"
#include "tls.h"

#include <nng/nng.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef struct nng_link {
	qpi_link base; /* first */
	nng_stream *st;
	nng_aio *tx, *rx;
	nng_aio *wd; /* tls: closes the stream when a send outlives its time */
	bool tls;
	atomic_bool broken;
} nng_link;

static void
nl_wd_cb(void *arg)
{
	nng_link *n = arg;

	if (nng_aio_result(n->wd) == 0) {
		atomic_store(&n->broken, true);
		nng_stream_close(n->st);
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
	nng_aio *aio = send ? n->tx : n->rx;

	while (niov > 0) {
		nng_iov v[4];
		int64_t left = qpi_remaining_ns(deadline_ns);
		int nrv;

		if (atomic_load(&n->broken)) {
			return QP_ECONNRESET;
		}
		if (left == 0) {
			atomic_store(&n->broken, true);
			return QP_ETIMEDOUT;
		}
		for (int i = 0; i < niov && i < 4; i++) {
			v[i].iov_buf = iov[i].iov_base;
			v[i].iov_len = iov[i].iov_len;
		}
		nng_aio_set_iov(aio, (unsigned) (niov < 4 ? niov : 4), v);
		nng_aio_set_timeout(aio,
		    left == INT64_MAX ? NNG_DURATION_INFINITE
		                      : (nng_duration) (left / 1000000 + 1));
		bool wd = send && n->tls && left != INT64_MAX;
		if (wd) {
			/* A TLS send ignores its timeout: see above. */
			nng_sleep_aio(
			    (nng_duration) (left / 1000000 + 1), n->wd);
		}
		if (send) {
			nng_stream_send(n->st, aio);
		} else {
			nng_stream_recv(n->st, aio);
		}
		nng_aio_wait(aio);
		if (wd) {
			nng_aio_cancel(n->wd);
			nng_aio_wait(n->wd);
		}
		if ((nrv = nng_aio_result(aio)) != 0) {
			atomic_store(&n->broken, true);
			n->base.nrv = nrv;
			return nrv == NNG_ETIMEDOUT ? QP_ETIMEDOUT
			                            : QP_ECONNRESET;
		}
		size_t done = nng_aio_count(aio);
		if (!send) {
			*gotp = done; /* a receive takes what came */
			return QP_OK;
		}
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
	nng_link *n = (nng_link *) l;

	atomic_store(&n->broken, true);
	nng_stream_close(n->st);
}

static void
nl_free(qpi_link *l)
{
	nng_link *n = (nng_link *) l;

	nng_stream_close(n->st);
	nng_aio_free(n->wd);
	nng_aio_free(n->tx);
	nng_aio_free(n->rx);
	nng_stream_free(n->st);
	free(n);
}

static const qpi_link_ops nl_ops = {
    .name = "nng",
    .send = nl_send,
    .recv = nl_recv,
    .shutdown = nl_shutdown,
    .free = nl_free,
};

int
qpi_link_nng_dial(qpi_link **lp, const qpi_addr *a, const qp_conn_opts *o,
    int64_t deadline_ns)
{
	nng_stream_dialer *d = NULL;
	nng_tls_config *tls = NULL;
	nng_link *n;
	int64_t left = qpi_remaining_ns(deadline_ns);
	int nrv, rv;

	if ((rv = qpi_nng_claim(a->url)) != QP_OK) {
		return rv;
	}
	if (a->kind == QPI_ADDR_TLS
	    && (rv = qpi_tls_config_opts(&tls, false, o, a->host)) != QP_OK) {
		return rv;
	}
	if ((n = calloc(1, sizeof(*n))) == NULL) {
		if (tls != NULL) {
			nng_tls_config_free(tls);
		}
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	if ((nrv = nng_stream_dialer_alloc(&d, a->url)) != 0
	    || (tls != NULL
	        && (nrv
	               = nng_stream_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, tls))
	            != 0)
	    || (nrv = nng_aio_alloc(&n->tx, NULL, NULL)) != 0
	    || (nrv = nng_aio_alloc(&n->rx, NULL, NULL)) != 0
	    || (nrv = nng_aio_alloc(&n->wd, nl_wd_cb, n)) != 0) {
		rv = qpi_err(qpi_nng_err(nrv), "cannot connect to %s: %s",
		    a->url, nng_strerror(nrv));
		goto fail;
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
		goto fail;
	}
	n->st = nng_aio_get_output(n->tx, 0);
	n->base.ops = &nl_ops;
	n->base.nng = true;
	n->tls = a->kind == QPI_ADDR_TLS;
	nng_stream_dialer_free(d);
	if (tls != NULL) {
		nng_tls_config_free(tls); /* the stream holds its own */
	}
	*lp = &n->base;
	return QP_OK;
fail:
	if (d != NULL) {
		nng_stream_dialer_free(d);
	}
	if (tls != NULL) {
		nng_tls_config_free(tls);
	}
	nng_aio_free(n->wd);
	nng_aio_free(n->tx);
	nng_aio_free(n->rx);
	free(n);
	return rv;
}
