/*
 * reply.c - the replies every handler builds (PROTOCOL.md framing), and
 * the server's configuration and wire limits they read.
 *
 * Locking: none; the globals are set once at start.
 */
#include "qps.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const qps_config *qps_cfg;
qpi_wire_limits qps_limits;

nng_msg *
qps_rep_bytes(const void *p, size_t len)
{
	nng_msg *m;

	if (nng_msg_alloc(&m, len) != 0) {
		return NULL;
	}
	if (len > 0) {
		memcpy(nng_msg_body(m), p, len);
	}
	return m;
}

nng_msg *
qps_rep_error(uint32_t op, uint64_t req_id, int status, const char *fmt, ...)
{
	qpi_wire_rep rp;
	qpi_wire_buf b = {0};
	nng_msg *m = NULL;
	va_list ap;

	memset(&rp, 0, sizeof(rp));
	/* A request too broken to read its op is answered as op 0. */
	rp.op = qpi_wire_op_name(op) != NULL ? op : 0;
	rp.req_id = req_id;
	rp.status = status;
	va_start(ap, fmt);
	vsnprintf(rp.errmsg, sizeof(rp.errmsg), fmt, ap);
	va_end(ap);
	if (qpi_wire_encode_rep(&rp, &b) == QP_OK) {
		m = qps_rep_bytes(b.data, b.len);
	}
	qpi_wire_buf_free(&b);
	return m;
}

/* Replies up to this many bytes are encoded on the stack (a put's, a
 * get's of one small item): the copy into the message is all. */
#define REP_STACK 512

nng_msg *
qps_rep_encode(const qpi_wire_rep *rp)
{
	uint8_t mem[REP_STACK];
	qpi_wire_buf b;
	nng_msg *m = NULL;
	int rv;

	qpi_wire_buf_on(&b, mem, sizeof(mem));
	if ((rv = qpi_wire_encode_rep(rp, &b)) == QP_OK) {
		m = qps_rep_bytes(b.data, b.len);
		if (m == NULL) {
			rv = QP_ENOMEM;
		}
	}
	qpi_wire_buf_free(&b);
	if (m == NULL) {
		qps_log(QPS_LOG_WARN, "%s: cannot build the reply: %s",
		    qpi_wire_op_name(rp->op), qp_strerror(rv));
		return qps_rep_error(rp->op, rp->req_id, rv,
		    "the server could not build the reply: %s",
		    qp_strerror(rv));
	}
	return m;
}

nng_msg *
qps_rep_ok(const qpi_wire_req *r)
{
	qpi_wire_rep rp;

	rp = (qpi_wire_rep) {.op = r->op, .req_id = r->req_id};
	return qps_rep_encode(&rp);
}

int
qps_rep_read(nng_msg *m, uint32_t *opp)
{
	const uint8_t *p = nng_msg_body(m);
	size_t len = nng_msg_len(m), pos = 0;
	qpi_wire_tok t;

	/* [version, op, req_id, status, ...] */
	for (int i = 0; i < 5; i++) {
		if (qpi_wire_next(p, len, &pos, &t) != QP_OK) {
			return QP_EPROTO;
		}
		if (i == 2 && t.type == QPI_WIRE_UINT) {
			*opp = (uint32_t) t.u;
		}
	}
	return t.type == QPI_WIRE_UINT ? (int) t.u : QP_EPROTO;
}

int
qps_rep_status(nng_msg *m)
{
	uint32_t op;

	return qps_rep_read(m, &op);
}
