/*
 * queue.c - the public qp_queue_* calls. Each one checks its arguments and
 * the handle's closed flag, turns the timeout into an absolute deadline,
 * and dispatches through the handle's ops table (queue.h): shmq.c for
 * "NAME" and "shm://NAME", remote.c (the qpiped client) for tcp:// and
 * ipc:// addresses. Locking: none here; the closed flag is atomic and each
 * backend guards its own state.
 */
#include "queue.h"
#include "durq.h"
#include "remote.h"
#include "shmq.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

struct qp_queue {
	const qpi_queue_ops *ops;
	void *impl;
	int closed;
};

/* ---- the shared-memory backend's ops ---- */

static int
shm_put(
    void *impl, const void *buf, size_t len, unsigned kind, int64_t deadline)
{
	return qpi_shmq_put(impl, buf, len, kind, deadline);
}

static int
shm_get(void *impl, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline)
{
	return qpi_shmq_get(impl, flags, into, cap, bufp, lenp, deadline);
}

static int
shm_qsize(void *impl, uint64_t *np)
{
	return qpi_shmq_qsize(impl, np);
}

static int
shm_full(void *impl, bool *fullp)
{
	return qpi_shmq_full(impl, fullp);
}

static int
shm_task_done(void *impl)
{
	return qpi_shmq_task_done(impl);
}

static int
shm_join(void *impl, int64_t deadline)
{
	return qpi_shmq_join(impl, deadline);
}

static int
shm_stat(void *impl, qp_queue_stats *st)
{
	return qpi_shmq_stat(impl, st);
}

static void
shm_close(void *impl)
{
	qpi_shmq_interrupt(impl);
}

static void
shm_free(void *impl)
{
	qpi_shmq_free(impl);
}

const qpi_queue_ops qpi_shmq_ops = {
    .put = shm_put,
    .get = shm_get,
    .qsize = shm_qsize,
    .full = shm_full,
    .task_done = shm_task_done,
    .join = shm_join,
    .stat = shm_stat,
    .close = shm_close,
    .free = shm_free,
};

/* ---- helpers ---- */

int64_t
qpi_queue_deadline(qp_duration timeout)
{
	if (timeout == QP_NOWAIT) {
		return 0;
	}
	return qpi_deadline_ns(timeout);
}

int
qpi_queue_wrap(qp_queue **qp, const qpi_queue_ops *ops, void *impl)
{
	qp_queue *q = calloc(1, sizeof(*q));

	if (q == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for a queue handle");
	}
	q->ops = ops;
	q->impl = impl;
	*qp = q;
	return QP_OK;
}

void *
qpi_queue_impl(qp_queue *q, const qpi_queue_ops **opsp)
{
	if (opsp != NULL) {
		*opsp = q->ops;
	}
	return q->impl;
}

/* The common checks: a handle, open. */
static int
q_ready(qp_queue *q)
{
	if (q == NULL) {
		return qpi_err(QP_EINVAL, "queue handle is NULL");
	}
	if (__atomic_load_n(&q->closed, __ATOMIC_ACQUIRE)) {
		return qpi_err(QP_ECLOSED, "queue handle is closed");
	}
	return QP_OK;
}

int
qpi_queue_ready(qp_queue *q)
{
	return q_ready(q);
}

static int
q_opts(const qp_queue_opts *o, qpi_shmq_cfg *cfg, unsigned *flagsp)
{
	memset(cfg, 0, sizeof(*cfg));
	*flagsp = 0;
	if (o == NULL) {
		return QP_OK;
	}
	const unsigned known
	    = QP_OPEN_CREATE | QP_OPEN_EXCL | QP_OPEN_LEASE | QP_OPEN_DURABLE;
	if (o->flags & ~known) {
		return qpi_err(QP_EINVAL, "unknown open flags 0x%x",
		    (unsigned) (o->flags & ~known));
	}
	if (o->flags & QP_OPEN_DURABLE) {
		qpi_fsync f;
		int rc = qpi_fsync_parse(o->fsync, &f);
		if (rc != QP_OK) {
			return rc;
		}
	} else if (o->path != NULL || o->fsync != NULL) {
		return qpi_err(
		    QP_EINVAL, "a path or fsync policy needs QP_OPEN_DURABLE");
	}
	if ((o->flags & QP_OPEN_EXCL) && !(o->flags & QP_OPEN_CREATE)) {
		return qpi_err(
		    QP_EINVAL, "QP_OPEN_EXCL needs QP_OPEN_CREATE as well");
	}
	if (o->capacity != 0
	    && (o->capacity < QPI_SHMQ_MIN_CAPACITY
	        || o->capacity > QPI_SHMQ_MAX_CAPACITY)) {
		return qpi_err(QP_EINVAL,
		    "capacity %llu is out of range (%llu to %llu bytes)",
		    (unsigned long long) o->capacity,
		    (unsigned long long) QPI_SHMQ_MIN_CAPACITY,
		    (unsigned long long) QPI_SHMQ_MAX_CAPACITY);
	}
	cfg->maxsize = o->maxsize;
	cfg->capacity = o->capacity;
	cfg->max_message = o->max_message;
	*flagsp = o->flags;
	return QP_OK;
}

/* ---- the durable backend (durq.c): a file, served from memory ---- */

static int
dur_put(
    void *impl, const void *buf, size_t len, unsigned kind, int64_t deadline)
{
	int rc = qpi_durq_check_owner(impl);

	return rc != QP_OK ? rc : qpi_durq_put(impl, buf, len, kind, deadline);
}

static int
dur_get(void *impl, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline)
{
	int rc = qpi_durq_check_owner(impl);

	return rc != QP_OK
	    ? rc
	    : qpi_durq_get(impl, flags, into, cap, bufp, lenp, deadline);
}

static int
dur_qsize(void *impl, uint64_t *np)
{
	return qpi_shmq_qsize(qpi_durq_shm(impl), np);
}

static int
dur_full(void *impl, bool *fullp)
{
	return qpi_shmq_full(qpi_durq_shm(impl), fullp);
}

static int
dur_task_done(void *impl)
{
	return qpi_shmq_task_done(qpi_durq_shm(impl));
}

static int
dur_join(void *impl, int64_t deadline)
{
	return qpi_shmq_join(qpi_durq_shm(impl), deadline);
}

static int
dur_stat(void *impl, qp_queue_stats *st)
{
	return qpi_durq_stat(impl, st);
}

static void
dur_close(void *impl)
{
	qpi_shmq_interrupt(qpi_durq_shm(impl));
}

static void
dur_free(void *impl)
{
	qpi_durq_free(impl);
}

static const qpi_queue_ops dur_ops = {
    .put = dur_put,
    .get = dur_get,
    .qsize = dur_qsize,
    .full = dur_full,
    .task_done = dur_task_done,
    .join = dur_join,
    .stat = dur_stat,
    .close = dur_close,
    .free = dur_free,
};

static int
q_open_durable(qp_queue **qp, const qp_queue_opts *o, unsigned flags)
{
	qpi_durq_cfg c;
	qpi_durq *d;
	int rc;

	if (o->path == NULL || o->path[0] == '\0') {
		return qpi_err(QP_EINVAL,
		    "QP_OPEN_DURABLE on a shm:// queue needs opts.path, the "
		    "file that holds it");
	}
	if (flags & QP_OPEN_LEASE) {
		return qpi_err(QP_EINVAL,
		    "QP_OPEN_LEASE (worker mode) needs a queue served by "
		    "qpiped");
	}
	memset(&c, 0, sizeof(c));
	c.maxsize = o->maxsize;
	c.capacity = o->capacity;
	c.max_message = o->max_message;
	c.lease_ms = o->lease_ms;
	if ((rc = qpi_fsync_parse(o->fsync, &c.fsync)) != QP_OK
	    || (rc = qpi_durq_open(&d, o->path, flags, &c, NULL, NULL))
	        != QP_OK) {
		return rc;
	}
	if ((rc = qpi_queue_wrap(qp, &dur_ops, d)) != QP_OK) {
		qpi_durq_free(d);
	}
	return rc;
}

/* ---- open, close ---- */

QP_API int
qp_queue_open(qp_queue **qp, const char *addr, const qp_queue_opts *opts)
{
	qpi_shmq_cfg cfg;
	qpi_shmq *sq;
	unsigned flags;
	qpi_addr a;
	int rc;

	if (qp == NULL || addr == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_open: %s is NULL",
		    qp == NULL ? "qp" : "addr");
	}
	*qp = NULL;
	if ((rc = q_opts(opts, &cfg, &flags)) != QP_OK
	    || (rc = qpi_addr_parse(addr, QPI_ADDR_NAMED, &a)) != QP_OK) {
		return rc;
	}
	if (a.kind != QPI_ADDR_SHM) {
		/* tcp://, ipc://: a queue served by qpiped (remote.c). */
		qpi_rq *rq;
		if ((rc = qpi_rq_open(&rq, &a, opts)) != QP_OK) {
			return rc;
		}
		if ((rc = qpi_queue_wrap(qp, &qpi_remote_ops, rq)) != QP_OK) {
			qpi_rq_free(rq);
		}
		return rc;
	}
	if (flags & QP_OPEN_LEASE) {
		return qpi_err(QP_EINVAL,
		    "QP_OPEN_LEASE (worker mode) needs a queue served by "
		    "qpiped, not %s",
		    addr);
	}
	if (flags & QP_OPEN_DURABLE) {
		return q_open_durable(qp, opts, flags);
	}
	if ((rc = qpi_shmq_open(&sq, a.name, flags, &cfg)) != QP_OK) {
		return rc;
	}
	if ((rc = qpi_queue_wrap(qp, &qpi_shmq_ops, sq)) != QP_OK) {
		qpi_shmq_free(sq);
	}
	return rc;
}

QP_API int
qp_queue_anon(qp_queue **qp, const qp_queue_opts *opts)
{
	qpi_shmq_cfg cfg;
	qpi_shmq *sq;
	unsigned flags;
	int rc;

	if (qp == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_anon: qp is NULL");
	}
	*qp = NULL;
	if ((rc = q_opts(opts, &cfg, &flags)) != QP_OK) {
		return rc;
	}
	if (flags & (QP_OPEN_LEASE | QP_OPEN_DURABLE)) {
		return qpi_err(QP_EINVAL, "%s needs a named queue",
		    (flags & QP_OPEN_LEASE) ? "QP_OPEN_LEASE (worker mode)"
		                            : "QP_OPEN_DURABLE");
	}
	if ((rc = qpi_shmq_anon(&sq, &cfg)) != QP_OK) {
		return rc;
	}
	if ((rc = qpi_queue_wrap(qp, &qpi_shmq_ops, sq)) != QP_OK) {
		qpi_shmq_free(sq);
	}
	return rc;
}

QP_API int
qp_queue_close(qp_queue *q)
{
	if (q == NULL) {
		return qpi_err(QP_EINVAL, "queue handle is NULL");
	}
	if (__atomic_exchange_n(&q->closed, 1, __ATOMIC_ACQ_REL) == 0) {
		q->ops->close(q->impl);
	}
	return QP_OK;
}

QP_API void
qp_queue_free(qp_queue *q)
{
	if (q == NULL) {
		return;
	}
	qp_queue_close(q);
	q->ops->free(q->impl);
	free(q);
}

QP_API int
qp_queue_unlink_opts(const char *addr, const qp_conn_opts *conn)
{
	qpi_addr a;
	int rc;

	if (addr == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_unlink: addr is NULL");
	}
	if ((rc = qpi_addr_parse(addr, QPI_ADDR_NAMED, &a)) != QP_OK) {
		return rc;
	}
	if (a.kind != QPI_ADDR_SHM) {
		return qpi_rq_unlink(&a, conn);
	}
	return qpi_shmq_unlink(a.name);
}

QP_API int
qp_queue_unlink(const char *addr)
{
	return qp_queue_unlink_opts(addr, NULL);
}

/* ---- put ---- */

QP_API int
qp_queue_put(qp_queue *q, const void *buf, size_t len, qp_duration timeout)
{
	int rc;

	if ((rc = q_ready(q)) != QP_OK
	    || (rc = qpi_duration_check(timeout)) != QP_OK) {
		return rc;
	}
	if (buf == NULL && len > 0) {
		return qpi_err(QP_EINVAL, "qp_queue_put: buf is NULL");
	}
	return q->ops->put(
	    q->impl, buf, len, QPI_ITEM_BIN, qpi_queue_deadline(timeout));
}

QP_API int
qp_queue_put_nowait(qp_queue *q, const void *buf, size_t len)
{
	return qp_queue_put(q, buf, len, QP_NOWAIT);
}

QP_API int
qp_queue_put_obj(
    qp_queue *q, const void *msgpack, size_t len, qp_duration timeout)
{
	size_t off, blen;
	int rc;

	if ((rc = q_ready(q)) != QP_OK
	    || (rc = qpi_duration_check(timeout)) != QP_OK) {
		return rc;
	}
	if (msgpack == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_put_obj: msgpack is NULL");
	}
	if ((rc = qpi_wire_check_value(msgpack, len)) != QP_OK) {
		return rc;
	}
	/* A bin is stored as its bytes, like qp_queue_put's items. */
	if (qpi_wire_bin_unwrap(msgpack, len, &off, &blen)) {
		return q->ops->put(q->impl, (const uint8_t *) msgpack + off,
		    blen, QPI_ITEM_BIN, qpi_queue_deadline(timeout));
	}
	return q->ops->put(
	    q->impl, msgpack, len, QPI_ITEM_OBJ, qpi_queue_deadline(timeout));
}

/* ---- get ---- */

static int
q_get(qp_queue *q, unsigned flags, void **bufp, size_t *lenp,
    qp_duration timeout)
{
	int rc;

	if (bufp != NULL) {
		*bufp = NULL;
	}
	if (lenp != NULL) {
		*lenp = 0;
	}
	if ((rc = q_ready(q)) != QP_OK
	    || (rc = qpi_duration_check(timeout)) != QP_OK) {
		return rc;
	}
	if (bufp == NULL || lenp == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_get: %s is NULL",
		    bufp == NULL ? "bufp" : "lenp");
	}
	return q->ops->get(
	    q->impl, flags, NULL, 0, bufp, lenp, qpi_queue_deadline(timeout));
}

QP_API int
qp_queue_get(qp_queue *q, void **bufp, size_t *lenp, qp_duration timeout)
{
	return q_get(q, 0, bufp, lenp, timeout);
}

QP_API int
qp_queue_get_nowait(qp_queue *q, void **bufp, size_t *lenp)
{
	return q_get(q, 0, bufp, lenp, QP_NOWAIT);
}

QP_API int
qp_queue_get_obj(
    qp_queue *q, void **msgpackp, size_t *lenp, qp_duration timeout)
{
	return q_get(q, QPI_GET_OBJ, msgpackp, lenp, timeout);
}

QP_API int
qp_queue_get_into(
    qp_queue *q, void *buf, size_t cap, size_t *lenp, qp_duration timeout)
{
	static uint8_t none[1];
	int rc;

	if (lenp != NULL) {
		*lenp = 0;
	}
	if ((rc = q_ready(q)) != QP_OK
	    || (rc = qpi_duration_check(timeout)) != QP_OK) {
		return rc;
	}
	if (lenp == NULL || (buf == NULL && cap > 0)) {
		return qpi_err(QP_EINVAL, "qp_queue_get_into: %s is NULL",
		    lenp == NULL ? "lenp" : "buf");
	}
	/* buf NULL with cap 0 takes only an empty item (or tells the size
	 * of the head item through QP_ETOOBIG). */
	return q->ops->get(q->impl, 0, buf != NULL ? buf : none, cap, NULL,
	    lenp, qpi_queue_deadline(timeout));
}

/* ---- sizes, tasks, stat ---- */

QP_API int
qp_queue_qsize(qp_queue *q, size_t *np)
{
	uint64_t n;
	int rc;

	if ((rc = q_ready(q)) != QP_OK) {
		return rc;
	}
	if (np == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_qsize: np is NULL");
	}
	if ((rc = q->ops->qsize(q->impl, &n)) == QP_OK) {
		*np = (size_t) n;
	}
	return rc;
}

QP_API int
qp_queue_empty(qp_queue *q, bool *emptyp)
{
	uint64_t n;
	int rc;

	if ((rc = q_ready(q)) != QP_OK) {
		return rc;
	}
	if (emptyp == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_empty: emptyp is NULL");
	}
	if ((rc = q->ops->qsize(q->impl, &n)) == QP_OK) {
		*emptyp = n == 0;
	}
	return rc;
}

QP_API int
qp_queue_full(qp_queue *q, bool *fullp)
{
	int rc;

	if ((rc = q_ready(q)) != QP_OK) {
		return rc;
	}
	if (fullp == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_full: fullp is NULL");
	}
	return q->ops->full(q->impl, fullp);
}

QP_API int
qp_queue_task_done(qp_queue *q)
{
	int rc;

	if ((rc = q_ready(q)) != QP_OK) {
		return rc;
	}
	return q->ops->task_done(q->impl);
}

QP_API int
qp_queue_join(qp_queue *q, qp_duration timeout)
{
	int rc;

	if ((rc = q_ready(q)) != QP_OK
	    || (rc = qpi_duration_check(timeout)) != QP_OK) {
		return rc;
	}
	return q->ops->join(q->impl, qpi_queue_deadline(timeout));
}

QP_API int
qp_queue_stat(qp_queue *q, qp_queue_stats *st)
{
	int rc;

	if ((rc = q_ready(q)) != QP_OK) {
		return rc;
	}
	if (st == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_stat: st is NULL");
	}
	return q->ops->stat(q->impl, st);
}
