/*
 * queue.c - the public qp_queue_* calls. Each checks its arguments and the
 * handle's closed flag, turns the timeout into an absolute deadline and
 * dispatches through the handle's ops table (queue.h) to remote.c for
 * tcp:// and ipc://, durq.c for durable shm:// queues, part.c for queues
 * over several servers, or shmwork.c for worker mode on shared memory
 * (QP_OPEN_LEASE); an op a backend leaves NULL goes to its shared-memory
 * queue (shmq.c) directly. Also the id lists the worker-mode handles keep.
 * Locking: the closed flag is atomic, each backend guards its own state.
 */
#include "queue.h"
#include "durq.h"
#include "rclient.h"
#include "shmq.h"
#include "wire.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct qp_queue {
	const qpi_queue_ops *ops;
	void *impl;
	int closed;
	bool lease; /* opened with QP_OPEN_LEASE: nack and touch go on */
	struct qpi_qrd *rd; /* readiness (qwait.c), NULL until asked for */
};

/* ---- the shared-memory backend's ops ---- */

static void
shm_free(void *impl)
{
	qpi_shmq_free(impl);
}

/* Every op NULL but free: the queue front calls shmq.c itself. */
const qpi_queue_ops qpi_shmq_ops = {
    .free = shm_free,
};

/* ---- id lists (worker-mode handles, remote.c, part.c) ---- */

bool
qpi_ids_push(qpi_ids *l, uint64_t id, int64_t val)
{
	if (l->n == l->cap) {
		size_t ncap = l->cap == 0 ? 8 : l->cap * 2;
		uint64_t *nid = realloc(l->id, ncap * sizeof(*nid));
		if (nid == NULL) {
			return false;
		}
		l->id = nid;
		int64_t *nval = realloc(l->val, ncap * sizeof(*nval));
		if (nval == NULL) {
			return false;
		}
		l->val = nval;
		l->cap = ncap;
	}
	l->id[l->n] = id;
	l->val[l->n] = val;
	l->n++;
	return true;
}

void
qpi_ids_drop(qpi_ids *l, size_t i, size_t k)
{
	size_t rest = l->n - i - k;

	memmove(l->id + i, l->id + i + k, rest * sizeof(*l->id));
	memmove(l->val + i, l->val + i + k, rest * sizeof(*l->val));
	l->n -= k;
}

bool
qpi_ids_first(qpi_ids *l, pthread_mutex_t *mu, uint64_t *idp, int64_t *valp)
{
	pthread_mutex_lock(mu);
	bool have = l->n > 0;
	if (have) {
		*idp = l->id[0];
		if (valp != NULL) {
			*valp = l->val[0];
		}
	}
	pthread_mutex_unlock(mu);
	return have;
}

void
qpi_ids_done(qpi_ids *l, pthread_mutex_t *mu, uint64_t id)
{
	pthread_mutex_lock(mu);
	if (l->n > 0 && l->id[0] == id) {
		qpi_ids_drop(l, 0, 1);
	}
	pthread_mutex_unlock(mu);
}

void
qpi_ids_free(qpi_ids *l)
{
	free(l->id);
	free(l->val);
	memset(l, 0, sizeof(*l));
}

/* ---- helpers ---- */

int64_t
qpi_queue_deadline(qp_duration timeout)
{
	return timeout == QP_NOWAIT ? 0 : qpi_deadline_ns(timeout);
}

qp_duration
qpi_queue_timeout(int64_t deadline)
{
	int64_t left;

	if (deadline == 0) {
		return QP_NOWAIT;
	}
	left = qpi_remaining_ns(deadline);
	return left == INT64_MAX ? QP_FOREVER : (left + 999999) / 1000000;
}

int
qpi_queue_wrap(qp_queue **qp, const qpi_queue_ops *ops, void *impl)
{
	qp_queue *q = calloc(1, sizeof(*q));

	if (q == NULL) {
		ops->free(impl);
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

struct qpi_shmq *
qpi_queue_shmq(qp_queue *q)
{
	return q->ops == &qpi_shmq_ops ? q->impl
	                               : qpi_shml_sq(q->ops, q->impl);
}

/* The shared-memory queue behind a handle whose ops leave an op NULL. */
static qpi_shmq *
q_sq(qp_queue *q)
{
	qpi_shmq *sq = qpi_queue_shmq(q);

	return sq != NULL ? sq : qpi_durq_shm(q->impl);
}

/* ---- readiness state, the get behind get_any ---- */

int
qpi_queue_get_op(qp_queue *q, unsigned flags, void *into, size_t cap,
    void **bufp, size_t *lenp, int64_t dl)
{
	int rc = q->ops->get != NULL
	    ? q->ops->get(q->impl, flags, into, cap, bufp, lenp, dl)
	    : qpi_shmq_get(q_sq(q), flags, into, cap, bufp, lenp, dl);

	if (rc == QP_EEMPTY && q->rd != NULL) {
		qpi_qrd_empty(q);
	}
	return rc;
}

struct qpi_qrd **
qpi_queue_rd(qp_queue *q)
{
	return &q->rd;
}

int
qpi_queue_ready(qp_queue *q)
{
	if (q == NULL) {
		return qpi_err(QP_EINVAL, "queue handle is NULL");
	}
	if (__atomic_load_n(&q->closed, __ATOMIC_ACQUIRE)) {
		return qpi_err(QP_ECLOSED, "queue handle is closed");
	}
	return QP_OK;
}

/* qpi_queue_ready, then a valid timeout. */
static int
q_ready_tm(qp_queue *q, qp_duration timeout)
{
	int rc = qpi_queue_ready(q);

	return rc != QP_OK ? rc : qpi_duration_check(timeout);
}

int
qpi_queue_ready_out(qp_queue *q, const void *out, const char *what)
{
	int rc = qpi_queue_ready(q);

	if (rc == QP_OK && out == NULL) {
		rc = qpi_err(QP_EINVAL, "%s is NULL", what);
	}
	return rc;
}

static int
q_opts(const qp_queue_opts *o, qpi_shmq_cfg *cfg, unsigned *flagsp)
{
	qpi_fsync f;
	int rc;

	memset(cfg, 0, sizeof(*cfg));
	*flagsp = 0;
	if (o == NULL) {
		return QP_OK;
	}
	const unsigned known = QP_OPEN_CREATE | QP_OPEN_EXCL | QP_OPEN_LEASE
	    | QP_OPEN_DURABLE | QP_OPEN_ANY_OWNER;
	if (o->flags & ~known) {
		return qpi_err(QP_EINVAL, "unknown open flags 0x%x",
		    (unsigned) (o->flags & ~known));
	}
	if (!(o->flags & QP_OPEN_DURABLE)
	    && (o->path != NULL || o->fsync != NULL)) {
		return qpi_err(
		    QP_EINVAL, "a path or fsync policy needs QP_OPEN_DURABLE");
	}
	if ((rc = qpi_fsync_parse(o->fsync, &f)) != QP_OK) {
		return rc;
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
dur_stat(void *impl, qp_queue_stats *st)
{
	return qpi_durq_stat(impl, st);
}

static void
dur_free(void *impl)
{
	qpi_durq_free(impl);
}

static const qpi_queue_ops dur_ops = {
    .put = dur_put,
    .get = dur_get,
    .stat = dur_stat,
    .free = dur_free,
};

static int
q_open_durable(qp_queue **qp, const qp_queue_opts *o, unsigned flags)
{
	qpi_durq_cfg c = {.maxsize = o->maxsize,
	    .capacity = o->capacity,
	    .max_message = o->max_message,
	    .lease_ms = o->lease_ms};
	qpi_durq *d;
	int rc;

	if (o->path == NULL || o->path[0] == '\0') {
		return qpi_err(QP_EINVAL,
		    "QP_OPEN_DURABLE on a shm:// queue needs opts.path, the "
		    "file that holds it");
	}
	if (flags & QP_OPEN_LEASE) {
		return qpi_err(QP_EINVAL,
		    "QP_OPEN_LEASE (worker mode) on a durable shm:// queue is "
		    "not supported; a durable queue served by qpiped has it");
	}
	if ((rc = qpi_fsync_parse(o->fsync, &c.fsync)) != QP_OK
	    || (rc = qpi_durq_open(&d, o->path, flags, &c, NULL, NULL))
	        != QP_OK) {
		return rc;
	}
	return qpi_queue_wrap(qp, &dur_ops, d);
}

/* ---- open, close ---- */

/* qp_queue_open, and qp_queue_anon (addr NULL; what: the call). */
static int
q_make(qp_queue **qp, const char *addr, const qp_queue_opts *opts,
    const char *what)
{
	qpi_shmq_cfg cfg;
	qpi_shmq *sq;
	unsigned flags;
	qpi_addr a;
	qpi_rq *rq;
	int rc;

	if (qp == NULL) {
		return qpi_err(QP_EINVAL, "%s: qp is NULL", what);
	}
	*qp = NULL;
	if ((rc = q_opts(opts, &cfg, &flags)) != QP_OK) {
		return rc;
	}
	bool parted = false; /* several servers, one partition each */
	if (addr == NULL && (flags & QP_OPEN_DURABLE)) {
		return qpi_err(
		    QP_EINVAL, "QP_OPEN_DURABLE needs a named queue");
	} else if (addr == NULL) {
		rc = qpi_shmq_anon(&sq, &cfg);
	} else if ((rc = qpi_part_open(qp, addr, opts, &parted)) != QP_OK
	    || parted
	    || (rc = qpi_addr_parse(addr, QPI_ADDR_NAMED, &a)) != QP_OK) {
		return rc;
	} else if (a.kind != QPI_ADDR_SHM) {
		/* tcp://, ipc://: a queue served by qpiped (remote.c). */
		return (rc = qpi_rq_open(&rq, &a, opts)) != QP_OK
		    ? rc
		    : qpi_queue_wrap(qp, &qpi_remote_ops, rq);
	} else if (flags & QP_OPEN_DURABLE) {
		return q_open_durable(qp, opts, flags);
	} else {
		rc = qpi_shmq_open(&sq, a.name, flags, &cfg);
	}
	if (rc != QP_OK) {
		return rc;
	}
	return (flags & QP_OPEN_LEASE) ? qpi_shml_wrap(
	           qp, sq, addr != NULL ? a.name : NULL, opts->lease_ms)
	                               : qpi_queue_wrap(qp, &qpi_shmq_ops, sq);
}

/* q_make, then the handle notes QP_OPEN_LEASE. */
static int
q_open(qp_queue **qp, const char *addr, const qp_queue_opts *opts,
    const char *what)
{
	int rc = q_make(qp, addr, opts, what);

	if (rc == QP_OK) {
		(*qp)->lease = opts != NULL && (opts->flags & QP_OPEN_LEASE);
	}
	return rc;
}

QP_API int
qp_queue_open(qp_queue **qp, const char *addr, const qp_queue_opts *opts)
{
	if (qp != NULL && addr == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_open: addr is NULL");
	}
	return q_open(qp, addr, opts, "qp_queue_open");
}

QP_API int
qp_queue_anon(qp_queue **qp, const qp_queue_opts *opts)
{
	return q_open(qp, NULL, opts, "qp_queue_anon");
}

QP_API int
qp_queue_close(qp_queue *q)
{
	if (q == NULL) {
		return qpi_err(QP_EINVAL, "queue handle is NULL");
	}
	if (__atomic_exchange_n(&q->closed, 1, __ATOMIC_ACQ_REL) == 0) {
		qpi_qrd_stop(q->rd); /* readiness (NULL: none) */
		if (q->ops->close != NULL) {
			q->ops->close(q->impl);
		} else {
			qpi_shmq_interrupt(q_sq(q));
		}
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
	qpi_qrd_free(q->rd); /* readiness */
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
	bool parted = false; /* every partition */
	if ((rc = qpi_part_unlink(addr, conn, &parted)) != QP_OK || parted
	    || (rc = qpi_addr_parse(addr, QPI_ADDR_NAMED, &a)) != QP_OK) {
		return rc;
	}
	return a.kind != QPI_ADDR_SHM ? qpi_rq_unlink(&a, conn)
	                              : qpi_shmq_unlink(a.name);
}

QP_API int
qp_queue_unlink(const char *addr)
{
	return qp_queue_unlink_opts(addr, NULL);
}

/* ---- put ---- */

/* The item of a put or complete call (what: the call): buf of len raw
 * bytes, or with obj a msgpack value, checked; a bin is stored as its
 * bytes, like raw items (*kindp says which). */
static int
q_item(const void **bufp, size_t *lenp, bool obj, unsigned *kindp,
    const char *what)
{
	size_t off, blen;
	int rc;

	*kindp = QPI_ITEM_BIN;
	if (*bufp == NULL && (obj || *lenp > 0)) {
		return qpi_err(QP_EINVAL, "%s: %s is NULL", what,
		    obj ? "msgpack" : "buf");
	}
	if (obj && (rc = qpi_wire_check_value(*bufp, *lenp)) != QP_OK) {
		return rc;
	}
	if (obj && qpi_wire_bin_unwrap(*bufp, *lenp, &off, &blen)) {
		*bufp = (const uint8_t *) *bufp + off;
		*lenp = blen;
	} else if (obj) {
		*kindp = QPI_ITEM_OBJ;
	}
	return QP_OK;
}

/* The put calls' common part. keyed: placed by the key (klen bytes) on a
 * partitioned queue, an ordinary put on any other. */
static int
q_put(qp_queue *q, bool keyed, const void *key, size_t klen, const void *buf,
    size_t len, bool obj, qp_duration timeout, const char *what)
{
	unsigned kind;
	int64_t dl;
	int rc;

	if ((rc = q_ready_tm(q, timeout)) != QP_OK) {
		return rc;
	}
	if (keyed && key == NULL && klen > 0) {
		return qpi_err(QP_EINVAL, "%s: key is NULL", what);
	}
	if ((rc = q_item(&buf, &len, obj, &kind, what)) != QP_OK) {
		return rc;
	}
	dl = qpi_queue_deadline(timeout);
	return keyed && q->ops->put_key != NULL
	    ? q->ops->put_key(q->impl, key, klen, buf, len, kind, dl)
	    : q->ops->put != NULL ? q->ops->put(q->impl, buf, len, kind, dl)
	                          : qpi_shmq_put(q_sq(q), buf, len, kind, dl);
}

QP_API int
qp_queue_put(qp_queue *q, const void *buf, size_t len, qp_duration timeout)
{
	return q_put(
	    q, false, NULL, 0, buf, len, false, timeout, "qp_queue_put");
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
	return q_put(q, false, NULL, 0, msgpack, len, true, timeout,
	    "qp_queue_put_obj");
}

QP_API int
qp_queue_put_key(qp_queue *q, const void *key, size_t klen, const void *buf,
    size_t len, qp_duration timeout)
{
	return q_put(
	    q, true, key, klen, buf, len, false, timeout, "qp_queue_put_key");
}

QP_API int
qp_queue_put_key_obj(qp_queue *q, const void *key, size_t klen,
    const void *msgpack, size_t len, qp_duration timeout)
{
	return q_put(q, true, key, klen, msgpack, len, true, timeout,
	    "qp_queue_put_key_obj");
}

/* ---- get ---- */

/* The get calls' common part: into, the item into buf (cap bytes), else
 * into a malloc'd *bufp. */
static int
q_get(qp_queue *q, unsigned flags, bool into, void *buf, size_t cap,
    void **bufp, size_t *lenp, qp_duration timeout)
{
	static uint8_t none[1];
	const char *null = lenp == NULL ? "lenp"
	    : into ? (buf == NULL && cap > 0 ? "buf" : NULL)
	           : (bufp == NULL ? "bufp" : NULL);
	int rc;

	if (bufp != NULL) {
		*bufp = NULL;
	}
	if (lenp != NULL) {
		*lenp = 0;
	}
	if ((rc = q_ready_tm(q, timeout)) != QP_OK) {
		return rc;
	}
	if (null != NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_get%s: %s is NULL",
		    into ? "_into" : "", null);
	}
	/* buf NULL with cap 0 takes only an empty item (or tells the size
	 * of the head item through QP_ETOOBIG). */
	return qpi_queue_get_op(q, flags, into && buf == NULL ? none : buf,
	    cap, bufp, lenp, qpi_queue_deadline(timeout));
}

QP_API int
qp_queue_get(qp_queue *q, void **bufp, size_t *lenp, qp_duration timeout)
{
	return q_get(q, 0, false, NULL, 0, bufp, lenp, timeout);
}

QP_API int
qp_queue_get_nowait(qp_queue *q, void **bufp, size_t *lenp)
{
	return q_get(q, 0, false, NULL, 0, bufp, lenp, QP_NOWAIT);
}

QP_API int
qp_queue_get_obj(
    qp_queue *q, void **msgpackp, size_t *lenp, qp_duration timeout)
{
	return q_get(q, QPI_GET_OBJ, false, NULL, 0, msgpackp, lenp, timeout);
}

QP_API int
qp_queue_get_into(
    qp_queue *q, void *buf, size_t cap, size_t *lenp, qp_duration timeout)
{
	return q_get(q, 0, true, buf, cap, NULL, lenp, timeout);
}

/* ---- sizes, tasks, stat ---- */

QP_API int
qp_queue_qsize(qp_queue *q, size_t *np)
{
	uint64_t n;
	int rc;

	if ((rc = qpi_queue_ready_out(q, np, "qp_queue_qsize: np")) == QP_OK
	    && (rc = q->ops->qsize != NULL ? q->ops->qsize(q->impl, &n)
	                                   : qpi_shmq_qsize(q_sq(q), &n))
	        == QP_OK) {
		*np = (size_t) n;
	}
	return rc;
}

QP_API int
qp_queue_empty(qp_queue *q, bool *emptyp)
{
	size_t n;
	int rc = qpi_queue_ready_out(q, emptyp, "qp_queue_empty: emptyp");

	if (rc == QP_OK && (rc = qp_queue_qsize(q, &n)) == QP_OK) {
		*emptyp = n == 0;
	}
	return rc;
}

QP_API int
qp_queue_full(qp_queue *q, bool *fullp)
{
	int rc = qpi_queue_ready_out(q, fullp, "qp_queue_full: fullp");

	return rc != QP_OK         ? rc
	    : q->ops->full != NULL ? q->ops->full(q->impl, fullp)
	                           : qpi_shmq_full(q_sq(q), fullp);
}

QP_API int
qp_queue_task_done(qp_queue *q)
{
	int rc = qpi_queue_ready(q);

	return rc != QP_OK              ? rc
	    : q->ops->task_done != NULL ? q->ops->task_done(q->impl)
	                                : qpi_shmq_task_done(q_sq(q));
}

/* The complete calls' common part: buf as q_item takes it. */
static int
q_complete(qp_queue *tasks, qp_queue *results, const void *buf, size_t len,
    bool obj, qp_duration timeout, const char *what)
{
	unsigned kind;
	int rc;

	if ((rc = q_item(&buf, &len, obj, &kind, what)) != QP_OK
	    || (rc = q_ready_tm(tasks, timeout)) != QP_OK
	    || (rc = qpi_queue_ready(results)) != QP_OK) {
		return rc;
	}
	if (tasks->ops->complete == NULL) {
		return qpi_queue_shmq(tasks) != NULL
		    ? qpi_err(QP_EINVAL,
		        "qp_queue_complete: the tasks queue was not opened in "
		        "worker mode (QP_OPEN_LEASE)")
		    : qpi_err(QP_ENOTSUP,
		        "qp_queue_complete: this tasks queue (durable shm://) "
		        "cannot complete in one step");
	}
	if (tasks == results) {
		return qpi_err(QP_EINVAL,
		    "qp_queue_complete: the results queue is the tasks queue");
	}
	return tasks->ops->complete(
	    tasks->impl, results, buf, len, kind, qpi_queue_deadline(timeout));
}

QP_API int
qp_queue_complete(qp_queue *tasks, qp_queue *results, const void *buf,
    size_t len, qp_duration timeout)
{
	return q_complete(
	    tasks, results, buf, len, false, timeout, "qp_queue_complete");
}

QP_API int
qp_queue_complete_obj(qp_queue *tasks, qp_queue *results, const void *msgpack,
    size_t len, qp_duration timeout)
{
	return q_complete(tasks, results, msgpack, len, true, timeout,
	    "qp_queue_complete_obj");
}

QP_API int
qp_queue_join(qp_queue *q, qp_duration timeout)
{
	int rc = q_ready_tm(q, timeout);

	return rc != QP_OK ? rc
	    : q->ops->join != NULL
	    ? q->ops->join(q->impl, qpi_queue_deadline(timeout))
	    : qpi_shmq_join(q_sq(q), qpi_queue_deadline(timeout));
}

QP_API int
qp_queue_stat(qp_queue *q, qp_queue_stats *st)
{
	int rc = qpi_queue_ready_out(q, st, "qp_queue_stat: st");

	return rc != QP_OK         ? rc
	    : q->ops->stat != NULL ? q->ops->stat(q->impl, st)
	                           : qpi_shmq_stat(q_sq(q), st);
}

/* ---- worker mode: nack, deliveries ---- */

/* nack (delay ms) and touch (lease ms) of a worker-mode handle. */
static int
q_lease_op(qp_queue *q, bool touch, qp_duration ms)
{
	const char *what = touch ? "touch" : "nack";
	int rc = qpi_queue_ready(q);

	if (rc != QP_OK) {
		return rc;
	}
	if (!q->lease || (touch ? q->ops->touch : q->ops->nack) == NULL) {
		return qpi_err(QP_EINVAL,
		    "qp_queue_%s: only a handle opened with QP_OPEN_LEASE "
		    "holds its items",
		    what);
	}
	if (ms < 0 || ms > QPI_WIRE_MS_MAX) {
		return qpi_err(QP_EINVAL,
		    "%s %s %lld ms is not within 0..2^31-1", what,
		    touch ? "lease" : "delay", (long long) ms);
	}
	return touch ? q->ops->touch(q->impl, ms) : q->ops->nack(q->impl, ms);
}

QP_API int
qp_queue_nack(qp_queue *q, qp_duration delay)
{
	return q_lease_op(q, false, delay);
}

QP_API int
qp_queue_touch(qp_queue *q, qp_duration lease)
{
	return q_lease_op(q, true, lease);
}

QP_API int
qp_queue_deliveries(qp_queue *q, uint32_t *np)
{
	int rc;

	if ((rc = qpi_queue_ready_out(q, np, "qp_queue_deliveries: np"))
	    != QP_OK) {
		return rc;
	}
	if (q->ops->deliveries == NULL) {
		return qpi_err(QP_ENOTSUP,
		    "qp_queue_deliveries: a plain shared-memory get does not "
		    "count deliveries (open with QP_OPEN_LEASE)");
	}
	return q->ops->deliveries(q->impl, np);
}
