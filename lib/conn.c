/*
 * conn.c - the Connection calls (multiprocessing.Pipe's Connection,
 * connection.wait, Listener and Client): checks every argument, then
 * dispatches through the connection's ops table to its carrier: shared
 * memory (shmpipe.c), a stream (netconn.c, which also has the listen,
 * accept and dial calls), or a pipe through the server (rpipe.c). Messages
 * are msgpack values: the bytes calls carry a bin, stored raw with a flag so
 * that it is never re-encoded; a bytes receive of a message that is one bin
 * gives its payload, of any other value its msgpack encoding. A network
 * connection belongs to the process that made it (nng does not survive
 * fork(); a server pipe's side is its connection's): in a forked child
 * every call on it is refused before the carrier is reached, close only
 * marks it closed, and free only forgets it. Also the received-message
 * queue of the carriers (qpi_rxq: netconn.c, rpipe.c),
 * whose mutex guards its messages, its end and its eventfd's state. No
 * other locking here: the carriers lock what they share.
 */
#include "conn.h"
#include "link.h"
#include "shmpipe.h"
#include "wire.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

void
qpi_conn_init(
    qp_conn *c, const qpi_conn_ops *ops, bool readable, bool writable)
{
	c->ops = ops;
	c->max_message = QP_DEFAULT_MAX_MESSAGE;
	atomic_init(&c->closed, false);
	c->readable = readable;
	c->writable = writable;
	c->owner = 0;
}

/* ---- the received-message queue ---- */

int
qpi_rxq_init(qpi_rxq *q)
{
	memset(q, 0, sizeof(*q));
	if ((q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
		return qpi_err(QP_ENOMEM, "eventfd: %s", strerror(errno));
	}
	pthread_mutex_init(&q->mu, NULL);
	qpi_cond_init(&q->cv);
	return QP_OK;
}

void
qpi_rxq_free(qpi_rxq *q, bool locks)
{
	qpi_rxmsg *m;

	while ((m = q->head) != NULL) {
		q->head = m->next;
		free(m->mem);
		free(m);
	}
	close(q->efd);
	if (locks) {
		pthread_cond_destroy(&q->cv);
		pthread_mutex_destroy(&q->mu);
	}
}

/* Makes efd readable exactly while a message waits or at the end; mu. */
static void
rxq_efd_sync(qpi_rxq *q)
{
	uint64_t v = 1;

	if (q->lazy && !q->armed) {
		pthread_cond_broadcast(&q->cv);
		return;
	}
	if (q->head != NULL || q->eof) {
		if (write(q->efd, &v, sizeof(v)) < 0) {
			/* at its maximum already: it stays readable */
		}
	} else if (read(q->efd, &v, sizeof(v)) < 0) {
		/* was not readable: nothing to clear */
	}
	pthread_cond_broadcast(&q->cv);
}

int
qpi_rxq_push(qpi_rxq *q, uint8_t *mem, size_t off, size_t len)
{
	qpi_rxmsg *m = malloc(sizeof(*m));
	size_t boff = 0, plen;

	if (m == NULL) {
		free(mem);
		return qpi_err(QP_ENOMEM, "out of memory for a message");
	}
	m->next = NULL;
	m->mem = mem;
	m->data = mem + off;
	m->len = len;
	m->binoff = qpi_wire_bin_unwrap(m->data, len, &boff, &plen)
	    ? (uint8_t) boff
	    : 0;
	pthread_mutex_lock(&q->mu);
	if (q->eof) {
		pthread_mutex_unlock(&q->mu);
		free(mem);
		free(m);
		return QP_ECLOSED;
	}
	if (q->tail != NULL) {
		q->tail->next = m;
	} else {
		q->head = m;
	}
	q->tail = m;
	q->qbytes += len;
	rxq_efd_sync(q);
	pthread_mutex_unlock(&q->mu);
	return QP_OK;
}

void
qpi_rxq_end(qpi_rxq *q, int err, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&q->mu);
	if (!q->eof) {
		q->eof = true;
		q->err = err;
		va_start(ap, fmt);
		vsnprintf(q->errmsg, sizeof(q->errmsg), fmt, ap);
		va_end(ap);
		rxq_efd_sync(q);
	}
	pthread_mutex_unlock(&q->mu);
}

bool
qpi_rxq_wait_room(qpi_rxq *q)
{
	pthread_mutex_lock(&q->mu);
	while (!q->eof && q->qbytes >= QPI_RXQ_MAX) {
		pthread_cond_wait(&q->cv, &q->mu);
	}
	bool open = !q->eof;
	pthread_mutex_unlock(&q->mu);
	return open;
}

int
qpi_rxq_fd(qp_conn *c, int *fdp)
{
	qpi_rxq *q = &((qpi_rxconn *) c)->q;

	pthread_mutex_lock(&q->mu);
	q->armed = true;
	rxq_efd_sync(q);
	pthread_mutex_unlock(&q->mu);
	*fdp = q->efd;
	return QP_OK;
}

int
qpi_rxq_peek(qp_conn *c, int64_t deadline, qpi_msginfo *mi)
{
	qpi_rxq *q = &((qpi_rxconn *) c)->q;
	int rv = QP_OK;

	pthread_mutex_lock(&q->mu);
	while (q->head == NULL && !q->eof && rv == QP_OK) {
		rv = qpi_cond_wait(&q->cv, &q->mu, deadline);
	}
	if (q->head != NULL) {
		mi->len = q->head->len;
		mi->raw = false;
		mi->binoff = q->head->binoff;
		rv = QP_OK;
	} else if (q->eof) {
		rv = qpi_err(q->err, "%s", q->errmsg);
	}
	pthread_mutex_unlock(&q->mu);
	return rv;
}

int
qpi_rxq_take(qp_conn *c, const qpi_msginfo *mi, size_t skip, void *dst)
{
	qpi_rxq *q = &((qpi_rxconn *) c)->q;
	qpi_rxmsg *m;

	pthread_mutex_lock(&q->mu);
	if ((m = q->head) == NULL || m->len != mi->len) {
		pthread_mutex_unlock(&q->mu);
		return qpi_err(QP_EBUSY,
		    "the message changed under this receive: another thread "
		    "received on the connection at the same time");
	}
	if ((q->head = m->next) == NULL) {
		q->tail = NULL;
	}
	q->qbytes -= m->len;
	rxq_efd_sync(q); /* and room again */
	pthread_mutex_unlock(&q->mu);
	if (m->len > skip) {
		memcpy(dst, m->data + skip, m->len - skip);
	}
	free(m->mem);
	free(m);
	return QP_OK;
}

/* Whether c is a forked child's copy of a connection it cannot use. */
static bool
conn_foreign(const qp_conn *c)
{
	return c->owner != 0 && qpi_nng_forked(c->owner);
}

/* ---- checks ---- */

enum { CONN_ANY, CONN_SEND, CONN_RECV };

/* Whether c is open here, and may do what use asks. */
static int
conn_check(qp_conn *c, int use)
{
	if (c == NULL) {
		return qpi_err(QP_EINVAL, "connection is NULL");
	}
	if (atomic_load(&c->closed)) {
		return qpi_err(QP_ECLOSED, "connection is closed");
	}
	if (conn_foreign(c)) {
		return qpi_nng_forked_err("this connection", c->owner);
	}
	if ((use == CONN_SEND && !c->writable)
	    || (use == CONN_RECV && !c->readable)) {
		return qpi_err(QP_EPERM, "connection is %s",
		    use == CONN_SEND ? "read-only" : "write-only");
	}
	return QP_OK;
}

/* ---- sending ---- */

/* Both sends: len bytes of buf, a raw payload or a msgpack value. */
static int
conn_send(qp_conn *c, bool raw, const void *buf, size_t len)
{
	size_t off, plen;
	uint8_t binoff = 0;
	int rv = conn_check(c, CONN_SEND);

	if (rv == QP_OK && buf == NULL) {
		rv = qpi_err(
		    QP_EINVAL, raw ? "buffer is NULL" : "message is NULL");
	} else if (rv == QP_OK && len > c->max_message) {
		rv = qpi_err(QP_ETOOBIG,
		    "message of %zu bytes is over this connection's maximum "
		    "of %zu; nothing sent",
		    len, c->max_message);
	} else if (rv == QP_OK && !raw
	    && (rv = qpi_wire_check_value(buf, len)) == QP_OK
	    && qpi_wire_bin_unwrap(buf, len, &off, &plen)) {
		binoff = (uint8_t) off;
	}
	return rv != QP_OK ? rv : c->ops->send(c, raw, buf, len, binoff);
}

QP_API int
qp_conn_send(qp_conn *c, const void *msgpack, size_t len)
{
	return conn_send(c, false, msgpack, len);
}

QP_API int
qp_conn_send_bytes(qp_conn *c, const void *buf, size_t offset, size_t size)
{
	if (offset > SIZE_MAX - size) {
		return qpi_err(QP_EINVAL, "offset + size overflows");
	}
	return conn_send(c, true,
	    buf != NULL     ? (const uint8_t *) buf + offset
	        : size == 0 ? (const void *) ""
	                    : NULL,
	    size);
}

/* ---- receiving ---- */

/* Receives the next message: its msgpack encoding (enc), or what a bytes
 * receive returns (its payload if it is one bin), into buf (cap bytes;
 * NULL: a malloc'd *bufp). QP_ECLOSED at end of file; QP_ETOOBIG, with
 * *lenp set, leaves a message over the maximum or cap to be read. */
static int
conn_recv(
    qp_conn *c, bool enc, void *buf, size_t cap, void **bufp, size_t *lenp)
{
	qpi_msginfo mi;
	uint8_t hdr[5];
	size_t hl = 0, skip = 0, n;
	uint8_t *p = buf;
	int rv = conn_check(c, CONN_RECV);

	if (rv == QP_OK && (lenp == NULL || (buf == NULL && bufp == NULL))) {
		rv = qpi_err(QP_EINVAL, "output pointer is NULL");
	}
	if (rv != QP_OK || (rv = c->ops->peek(c, INT64_MAX, &mi)) != QP_OK) {
		return rv; /* a carrier's own error describes no message */
	}
	if (enc && mi.raw) {
		hl = qpi_wire_bin_header(mi.len, hdr);
	} else if (!enc && !mi.raw) {
		skip = mi.binoff;
	}
	n = hl + mi.len - skip;
	/* The limit counts what the sender's check counted: the payload
	 * of a bin, the encoding of any other value. */
	size_t body = mi.raw ? mi.len : mi.len - mi.binoff;
	if (body > c->max_message || n > cap) {
		*lenp = n;
		return body > c->max_message
		    ? qpi_err(QP_ETOOBIG,
		        "next message is %zu bytes, over the connection's "
		        "maximum of %zu; it stays to be read",
		        body, c->max_message)
		    : qpi_err(QP_ETOOBIG,
		        "message of %zu bytes is longer than the %zu bytes "
		        "asked for; it stays to be read",
		        n, cap);
	}
	if (p == NULL && (p = malloc(n > 0 ? n : 1)) == NULL) {
		return qpi_err(QP_ENOMEM, "cannot allocate %zu bytes", n);
	}
	memcpy(p, hdr, hl);
	if ((rv = c->ops->take(c, &mi, skip, p + hl)) != QP_OK) {
		if (buf == NULL) {
			free(p);
		}
		return rv;
	}
	if (bufp != NULL) {
		*bufp = p;
	}
	*lenp = n;
	return QP_OK;
}

QP_API int
qp_conn_recv(qp_conn *c, void **msgpackp, size_t *lenp)
{
	return conn_recv(c, true, NULL, SIZE_MAX, msgpackp, lenp);
}

QP_API int
qp_conn_recv_bytes(qp_conn *c, void **bufp, size_t *lenp, size_t maxlength)
{
	return conn_recv(c, false, NULL, maxlength, bufp, lenp);
}

QP_API int
qp_conn_recv_bytes_into(
    qp_conn *c, void *buf, size_t bufsize, size_t offset, size_t *lenp)
{
	static uint8_t none[1];

	if (buf == NULL && bufsize > 0) {
		return qpi_err(QP_EINVAL, "buffer is NULL");
	}
	if (offset > bufsize) {
		return qpi_err(QP_EINVAL,
		    "offset %zu is past the %zu-byte buffer", offset, bufsize);
	}
	return conn_recv(c, false,
	    buf != NULL ? (uint8_t *) buf + offset : none, bufsize - offset,
	    NULL, lenp);
}

QP_API int
qp_conn_poll(qp_conn *c, qp_duration timeout, bool *readyp)
{
	qpi_msginfo mi;
	int rv;

	if ((rv = conn_check(c, CONN_RECV)) != QP_OK) {
		return rv;
	}
	if ((rv = qpi_duration_check(timeout)) != QP_OK) {
		return rv;
	}
	if (readyp == NULL) {
		return qpi_err(QP_EINVAL, "output pointer is NULL");
	}
	rv = c->ops->peek(c, timeout == 0 ? 0 : qpi_deadline_ns(timeout), &mi);
	/* Anything but a timeout means a recv returns at once: a message,
	 * or end of file (readable, as in Python). */
	*readyp = rv != QP_ETIMEDOUT;
	if (rv == QP_ETIMEDOUT || rv == QP_ECLOSED) {
		qpi_err_clear();
	}
	return QP_OK;
}

QP_API int
qp_conn_fd(qp_conn *c, int *fdp)
{
	int rv;

	if ((rv = conn_check(c, CONN_RECV)) != QP_OK) {
		return rv;
	}
	if (fdp == NULL) {
		return qpi_err(QP_EINVAL, "output pointer is NULL");
	}
	return c->ops->fd(c, fdp);
}

QP_API int
qp_conn_set_max_message(qp_conn *c, size_t max)
{
	int rv;

	if ((rv = conn_check(c, CONN_ANY)) != QP_OK) {
		return rv;
	}
	if (max == 0 || max > QPI_CONN_MAX_MESSAGE) {
		return qpi_err(QP_EINVAL,
		    "maximum message must be 1 to %zu bytes, not %zu",
		    QPI_CONN_MAX_MESSAGE, max);
	}
	c->max_message = max;
	if (c->ops->set_max != NULL) {
		c->ops->set_max(c);
	}
	return QP_OK;
}

QP_API int
qp_conn_close(qp_conn *c)
{
	if (c == NULL) {
		return qpi_err(QP_EINVAL, "connection is NULL");
	}
	/* A forked child's copy: closing it here would close the parent's
	 * connection; the child only lets go of it. */
	if (!atomic_exchange(&c->closed, true) && !conn_foreign(c)) {
		c->ops->close(c);
	}
	return QP_OK;
}

QP_API void
qp_conn_free(qp_conn *c)
{
	if (c == NULL) {
		return;
	}
	if (conn_foreign(c)) {
		atomic_store(&c->closed, true);
		c->ops->forget(c);
		return;
	}
	qp_conn_close(c);
	c->ops->destroy(c);
}

/* ---- wait ---- */

/* Milliseconds for poll(2) until deadline, rounded up; -1 for forever. */
static int
conn_poll_ms(int64_t deadline)
{
	int64_t ns = qpi_remaining_ns(deadline);

	if (ns == INT64_MAX) {
		return -1;
	}
	int64_t ms = (ns + 999999) / 1000000;
	return ms > INT_MAX ? INT_MAX : (int) ms;
}

QP_API int
qp_wait(qp_conn *const *conns, size_t n, qp_duration timeout, bool *ready,
    size_t *nreadyp)
{
	struct pollfd *fds = NULL;
	int64_t deadline;
	size_t i, count;
	int rv;

	if ((rv = qpi_duration_check(timeout)) != QP_OK) {
		return rv;
	}
	if (nreadyp == NULL || (n > 0 && (conns == NULL || ready == NULL))) {
		return qpi_err(QP_EINVAL, "NULL argument");
	}
	*nreadyp = 0;
	for (i = 0; i < n; i++) {
		if ((rv = conn_check(conns[i], CONN_RECV)) != QP_OK) {
			return rv;
		}
	}
	deadline = timeout == 0 ? 0 : qpi_deadline_ns(timeout);
	if (n == 0) {
		if (timeout < 0) {
			return qpi_err(
			    QP_EINVAL, "waiting forever on no connections");
		}
		poll(NULL, 0, conn_poll_ms(deadline));
		return QP_OK;
	}
	for (;;) {
		count = 0;
		for (i = 0; i < n; i++) {
			qpi_msginfo mi;
			rv = conns[i]->ops->peek(conns[i], 0, &mi);
			ready[i] = rv != QP_ETIMEDOUT;
			count += ready[i] ? 1 : 0;
		}
		if (count > 0 || qpi_remaining_ns(deadline) == 0) {
			break;
		}
		if (fds == NULL) {
			/* Arm every fd, then look once more before sleeping:
			 * what came before the arming did not signal. */
			if ((fds = calloc(n, sizeof(*fds))) == NULL) {
				return qpi_err(QP_ENOMEM, "out of memory");
			}
			for (i = 0; i < n; i++) {
				rv = conns[i]->ops->fd(conns[i], &fds[i].fd);
				if (rv != QP_OK) {
					free(fds);
					return rv;
				}
				fds[i].events = POLLIN;
			}
			continue;
		}
		if (poll(fds, (nfds_t) n, conn_poll_ms(deadline)) < 0
		    && errno != EINTR) {
			rv = qpi_err(QP_ESYSTEM, "poll: %s", strerror(errno));
			free(fds);
			return rv;
		}
	}
	free(fds);
	qpi_err_clear();
	*nreadyp = count;
	return QP_OK;
}

/* ---- pipes ---- */

QP_API int
qp_pipe(qp_conn **ap, qp_conn **bp, bool duplex)
{
	if (ap == NULL || bp == NULL) {
		return qpi_err(QP_EINVAL, "output pointer is NULL");
	}
	return qpi_shmpipe_create(ap, bp, duplex, 0);
}
