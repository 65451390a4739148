/*
 * link.c - the connection layer's dial (link.h): picks the driver for an
 * address and does the SP handshake (sp.h) on the new stream, the same
 * for both drivers. On tls+tcp:// the handshake's first bytes carry the
 * TLS handshake, so a failure there is reported as a TLS failure, with
 * the cause found by tls.c. No state; no locking.
 */
#include "link.h"
#include "sp.h"
#include "tls.h"

#include <stdio.h>
#include <string.h>

bool
qpi_link_uses_nng(const qpi_addr *a)
{
	return a->kind == QPI_ADDR_TLS || !qpi_sp_env_raw("QPIPE_TRANSPORT");
}

int
qpi_link_dial(qpi_link **lp, const qpi_addr *a, const qp_conn_opts *o,
    uint16_t proto, uint16_t peer_proto, int64_t deadline_ns)
{
	uint8_t hs[QPI_SP_HS_LEN];
	struct iovec iov = {.iov_base = hs, .iov_len = sizeof(hs)};
	size_t got = 0, n;
	qpi_link *l;
	int rv;

	rv = qpi_link_uses_nng(a) ? qpi_link_nng_dial(&l, a, o, deadline_ns)
	                          : qpi_link_sock_dial(&l, a, deadline_ns);
	if (rv != QP_OK) {
		return rv;
	}
	l->ipc = a->kind == QPI_ADDR_IPC;
	snprintf(l->url, sizeof(l->url), "%s", a->url);
	qpi_sp_hs_make(hs, proto);
	rv = l->ops->send(l, &iov, 1, deadline_ns);
	while (rv == QP_OK && got < sizeof(hs)) {
		rv = l->ops->recv(
		    l, hs + got, sizeof(hs) - got, &n, deadline_ns);
		got += rv == QP_OK ? n : 0;
	}
	if (rv == QP_OK && !qpi_sp_hs_check(hs, peer_proto)) {
		rv = qpi_err(QP_EPROTO,
		    "cannot connect to %s: the peer does not speak SP "
		    "protocol "
		    "0x%x",
		    a->url, (unsigned) peer_proto);
	} else if (rv != QP_OK && a->kind == QPI_ADDR_TLS
	    && rv != QP_ETIMEDOUT) {
		char why[400];
		if (!qpi_tls_diagnose(a, o, deadline_ns, why, sizeof(why))) {
			snprintf(why, sizeof(why), "%s",
			    qpi_tls_why(
			        l->nrv != 0 ? l->nrv : NNG_ECONNSHUT, false));
		}
		rv = qpi_err(
		    QP_EAUTH, "TLS handshake with %s failed: %s", a->url, why);
	} else if (rv == QP_ETIMEDOUT) {
		rv = qpi_err(QP_ETIMEDOUT,
		    "cannot connect to %s: no SP handshake in time", a->url);
	} else if (rv != QP_OK) {
		rv = qpi_err(QP_ECONNREFUSED,
		    "cannot connect to %s: connection closed during the "
		    "handshake",
		    a->url);
	}
	if (rv != QP_OK) {
		l->ops->free(l);
		return rv;
	}
	*lp = l;
	return QP_OK;
}
