/*
 * link.c - the connection layer's common part (link.h): picks the driver
 * for an address (dial and listen), names what a listener bound, and
 * speaks SP (sp.h) on any link: the handshake, and whole frames sent and
 * received, the latter cut from the caller's 64 KiB buffer (a frame over
 * 16 KiB is read into an allocation of its own). On tls+tcp:// the
 * handshake's first bytes carry the TLS handshake, so a failure there is
 * reported as a TLS failure, with the cause found by tls.c. No state of
 * its own and no locking: each buffer has one reader at a time.
 */
#include "link.h"
#include "sp.h"
#include "tls.h"
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Frames of at most this many bytes of body are sent as one buffer. */
#define LINK_SMALL 512

bool
qpi_link_uses_nng(const qpi_addr *a)
{
	return a->kind == QPI_ADDR_TLS || !qpi_sp_env_raw("QPIPE_TRANSPORT");
}

/* Reads exactly len bytes. */
static int
lk_read_full(qpi_link *l, uint8_t *p, size_t len, int64_t deadline_ns)
{
	size_t n;
	int rv;

	while (len > 0) {
		if ((rv = l->ops->recv(l, p, len, &n, deadline_ns)) != QP_OK) {
			return rv;
		}
		p += n;
		len -= n;
	}
	return QP_OK;
}

int
qpi_link_sp_handshake(qpi_link *l, const qpi_addr *a, const qp_conn_opts *o,
    bool server, uint16_t proto, uint16_t peer_proto, int64_t deadline_ns)
{
	uint8_t hs[QPI_SP_HS_LEN];
	struct iovec iov = {.iov_base = hs, .iov_len = sizeof(hs)};
	int rv;

	qpi_sp_hs_make(hs, proto);
	if ((rv = l->ops->send(l, &iov, 1, deadline_ns)) == QP_OK) {
		rv = lk_read_full(l, hs, sizeof(hs), deadline_ns);
	}
	if (rv == QP_OK && !qpi_sp_hs_check(hs, peer_proto)) {
		if (hs[0] != 0 || hs[1] != 'S' || hs[2] != 'P' || hs[3] != 0) {
			char seen[QPI_SP_HS_LEN + 1];
			for (size_t i = 0; i < QPI_SP_HS_LEN; i++) {
				seen[i] = hs[i] >= 0x20 && hs[i] < 0x7f
				    ? (char) hs[i]
				    : '.';
			}
			seen[QPI_SP_HS_LEN] = '\0';
			return qpi_err(QP_EPROTO,
			    "%s is not a qpipe server: it answered the SP "
			    "handshake with \"%s\"",
			    a->url, seen);
		}
		return qpi_err(QP_EPROTO,
		    "%s does not speak SP protocol 0x%x (it speaks 0x%x)",
		    a->url, (unsigned) peer_proto,
		    (unsigned) ((hs[4] << 8) | hs[5]));
	}
	if (rv != QP_OK && a->kind == QPI_ADDR_TLS && rv != QP_ETIMEDOUT) {
		char why[400];
		if (server
		    || !qpi_tls_diagnose(
		        a, o, deadline_ns, why, sizeof(why))) {
			snprintf(why, sizeof(why), "%s",
			    qpi_tls_why(
			        l->nrv != 0 ? l->nrv : NNG_ECONNSHUT, server));
		}
		return qpi_err(
		    QP_EAUTH, "TLS handshake with %s failed: %s", a->url, why);
	}
	if (rv == QP_ETIMEDOUT) {
		return qpi_err(QP_ETIMEDOUT,
		    "handshake with %s: no SP header in time: is it a qpipe "
		    "server?",
		    a->url);
	}
	if (rv != QP_OK) {
		return qpi_err(QP_ECONNREFUSED,
		    "handshake with %s: connection closed", a->url);
	}
	return QP_OK;
}

int
qpi_link_dial(qpi_link **lp, const qpi_addr *a, const qp_conn_opts *o,
    uint16_t proto, uint16_t peer_proto, int64_t deadline_ns)
{
	qpi_link *l;
	int rv = qpi_link_uses_nng(a)
	    ? qpi_link_nng_dial(&l, a, o, deadline_ns)
	    : qpi_link_sock_dial(&l, a, deadline_ns);

	if (rv != QP_OK) {
		return rv;
	}
	l->ipc = a->kind == QPI_ADDR_IPC;
	snprintf(l->url, sizeof(l->url), "%s", a->url);
	if (proto != 0
	    && (rv = qpi_link_sp_handshake(
	            l, a, o, false, proto, peer_proto, deadline_ns))
	        != QP_OK) {
		l->ops->free(l);
		return rv;
	}
	*lp = l;
	return QP_OK;
}

int
qpi_link_listen(qpi_link_listener **lp, const qpi_addr *a,
    const qp_conn_opts *o, char *bound, size_t boundlen)
{
	return qpi_link_uses_nng(a)
	    ? qpi_link_nng_listen(lp, a, o, bound, boundlen)
	    : qpi_link_sock_listen(lp, a, bound, boundlen);
}

void
qpi_link_bound(const qpi_addr *a, unsigned port, char *bound, size_t boundlen)
{
	bool named = a->host[0] != '\0' && strcmp(a->host, "*") != 0;
	const char *h = named ? a->host : "0.0.0.0";
	bool v6 = strchr(h, ':') != NULL;

	if (a->kind == QPI_ADDR_IPC) {
		snprintf(bound, boundlen, "%s", a->url);
	} else {
		snprintf(bound, boundlen, "%s://%s%s%s:%u",
		    a->kind == QPI_ADDR_TLS ? "tls+tcp" : "tcp", v6 ? "[" : "",
		    h, v6 ? "]" : "", port);
	}
}

int
qpi_link_send_frame(qpi_link *l, uint32_t tag, bool bin, const void *body,
    size_t len, int64_t deadline_ns)
{
	uint8_t hdr[9 + 4 + 5 + LINK_SMALL];
	size_t hl = qpi_sp_frame_hdr(hdr, l->ipc, 0) + 4; /* length below */
	size_t bl = bin ? qpi_wire_bin_header(len, hdr + hl) : 0;
	struct iovec iov[2]
	    = {{hdr, hl + bl}, {(void *) (uintptr_t) body, len}};

	qpi_sp_frame_hdr(hdr, l->ipc, (uint64_t) len + 4 + bl);
	qpi_sp_put32(hdr + hl - 4, tag);
	if (len <= LINK_SMALL) {
		/* A small frame goes as one buffer: one copy here is less
		 * than the kernel's of a second segment. */
		if (len > 0) {
			memcpy(hdr + hl + bl, body, len);
		}
		iov[0].iov_len += len;
		return l->ops->send(l, iov, 1, deadline_ns);
	}
	return l->ops->send(l, iov, 2, deadline_ns);
}

#define RD_BUF    ((size_t) 64 * 1024)
#define RD_DIRECT ((size_t) 16 * 1024) /* larger frames: read directly */

int
qpi_link_read_frame(qpi_link *l, qpi_link_rd *rd, size_t max, uint8_t **memp,
    size_t *lenp, size_t *capp, int64_t deadline_ns)
{
	size_t n;
	int rv;

	if (rd->buf == NULL && (rd->buf = malloc(RD_BUF)) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for a connection");
	}
	while (rd->big == NULL) {
		size_t avail = rd->len - rd->off;
		uint8_t *p = rd->buf + rd->off;
		uint64_t frame = 0;
		int hl = qpi_sp_frame_parse(p, avail, l->ipc, &frame);

		if (hl < 0 || (hl > 0 && frame < 4)) {
			return qpi_err(
			    QP_EPROTO, "%s sent a bad frame header", l->url);
		}
		if (hl > 0 && frame - 4 > max) {
			return qpi_err(QP_ETOOBIG,
			    "%s sent a %llu-byte message, over the maximum of "
			    "%zu",
			    l->url, (unsigned long long) (frame - 4), max);
		}
		/* A frame whole in the buffer, or too large for it. */
		if (hl > 0 && (avail - hl >= frame || frame > RD_DIRECT)) {
			if (rd->spare != NULL && rd->spare_cap >= frame) {
				rd->big = rd->spare;
				rd->bigcap = rd->spare_cap;
				rd->spare = NULL;
			} else if ((rd->big = malloc(frame)) == NULL) {
				return qpi_err(QP_ENOMEM,
				    "out of memory receiving %llu bytes",
				    (unsigned long long) frame);
			} else {
				rd->bigcap = frame;
			}
			rd->want = frame;
			rd->have = avail - hl < frame ? avail - hl : frame;
			memcpy(rd->big, p + hl, rd->have);
			rd->off += hl + rd->have;
			break;
		}
		/* More bytes: the rest of the buffer, moved to its start. */
		memmove(rd->buf, p, avail);
		rd->off = 0;
		rd->len = avail;
		if ((rv = l->ops->recv(
		         l, rd->buf + avail, RD_BUF - avail, &n, deadline_ns))
		    != QP_OK) {
			return rv;
		}
		rd->len += n;
	}
	while (rd->have < rd->want) {
		if ((rv = l->ops->recv(l, rd->big + rd->have,
		         rd->want - rd->have, &n, deadline_ns))
		    != QP_OK) {
			return rv;
		}
		rd->have += n;
	}
	*memp = rd->big;
	*lenp = rd->want - 4;
	if (capp != NULL) {
		*capp = rd->bigcap;
	}
	rd->big = NULL;
	return QP_OK;
}

void
qpi_link_rd_free(qpi_link_rd *rd)
{
	free(rd->buf);
	free(rd->big);
	free(rd->spare);
}

int
qpi_iov_advance(struct iovec **iovp, int niov, size_t done)
{
	struct iovec *iov = *iovp;

	while (niov > 0 && done >= iov[0].iov_len) {
		done -= iov[0].iov_len;
		iov++;
		niov--;
	}
	if (niov > 0) {
		iov[0].iov_base = (uint8_t *) iov[0].iov_base + done;
		iov[0].iov_len -= done;
	}
	*iovp = iov;
	return niov;
}
