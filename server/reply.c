/*
 * reply.c - the replies every handler builds (PROTOCOL.md framing), the
 * server's configuration and wire limits they read, and each thread's
 * cache of spent messages that requests and replies are made in.
 *
 * Locking: none; the globals are set once at start, the caches are each
 * thread's own.
 */
#include "qps.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const qps_config *qps_cfg;
qpi_wire_limits qps_limits;

/* ---- messages: each thread keeps a few it freed ---- */

/* A new nng_msg is two allocations, its struct zeroed by calloc (which
 * glibc serves without its per-thread cache): with a request's and a
 * reply's, the largest part of a small request's time in the allocator.
 * A thread keeps MSG_KEEP small messages it is done with for its next
 * ones. nng keeps a message's headroom when it grows it, and a trim
 * makes more: a trimmed message comes back through qps_msg_free_trimmed,
 * which puts the trimmed bytes back first. */
#define MSG_KEEP     2
#define MSG_KEEP_CAP 2048 /* larger messages are freed */

static __thread struct {
	nng_msg *m[MSG_KEEP];
	int n;
	bool keyed; /* msg_key set: the thread's exit frees them */
} msgs;

static pthread_key_t msg_key;
static pthread_once_t msg_once = PTHREAD_ONCE_INIT;
static bool msg_key_ok;

static void
msg_thread_exit(void *arg)
{
	(void) arg;
	while (msgs.n > 0) {
		nng_msg_free(msgs.m[--msgs.n]);
	}
}

static void
msg_key_make(void)
{
	msg_key_ok = pthread_key_create(&msg_key, msg_thread_exit) == 0;
}

nng_msg *
qps_msg_alloc(size_t len)
{
	nng_msg *m;

	while (msgs.n > 0) {
		m = msgs.m[--msgs.n];
		if (nng_msg_realloc(m, len) == 0) {
			return m;
		}
		nng_msg_free(m);
	}
	return nng_msg_alloc(&m, len) == 0 ? m : NULL;
}

void
qps_msg_free(nng_msg *m)
{
	if (m == NULL) {
		return;
	}
	if (!msgs.keyed) {
		pthread_once(&msg_once, msg_key_make);
		msgs.keyed
		    = msg_key_ok && pthread_setspecific(msg_key, &msgs) == 0;
	}
	if (msgs.keyed && msgs.n < MSG_KEEP
	    && nng_msg_capacity(m) <= MSG_KEEP_CAP) {
		nng_msg_clear(m);
		nng_msg_header_clear(m);
		msgs.m[msgs.n++] = m;
		return;
	}
	nng_msg_free(m);
}

void
qps_msg_free_trimmed(nng_msg *m, size_t n)
{
	/* A trim that took the whole body left the data where it was. */
	if (m == NULL || nng_msg_len(m) == 0
	    || nng_msg_insert(m, NULL, n) == 0) {
		qps_msg_free(m);
	} else {
		nng_msg_free(m);
	}
}

/* ---- replies ---- */

nng_msg *
qps_rep_bytes(const void *p, size_t len)
{
	nng_msg *m;

	if ((m = qps_msg_alloc(len)) == NULL) {
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
