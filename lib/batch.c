/*
 * batch.c - qp_queue_put_many and qp_queue_get_many, and their msgpack
 * twins (_obj), for every backend: remote handles send whole batches
 * (remote.c), shared-memory queues put and get each batch under one lock
 * (a get's first item waits as qp_queue_get does; worker-mode handles get
 * item by item, each lease kept by the handle), durable queues go item by
 * item. No state of its own; each backend locks as its single calls do.
 */
#include "queue.h"
#include "rclient.h"
#include "shmq.h"
#include "wire.h"

#include <stdlib.h>

/* Shared memory: batches as a server takes them (at most
 * QPI_WIRE_DEFAULT_BATCH items and QP_DEFAULT_MAX_MESSAGE bytes), each
 * one batch put, all or nothing. obj: bufs are msgpack values (checked by
 * the caller), a bin among them stored as its bytes, as qp_queue_put_obj
 * does. */
static int
shm_put_many(qpi_shmq *sq, const void *const *bufs, const size_t *lens,
    size_t n, bool obj, int64_t deadline_ns)
{
	qpi_shmq_item *it = malloc((n > 0 ? n : 1) * sizeof(*it));
	size_t first = 0;
	int rv = QP_OK;

	if (it == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for %zu items", n);
	}
	for (size_t i = 0; i < n; i++) {
		size_t off, blen;
		it[i].buf = bufs[i];
		it[i].len = lens[i];
		it[i].kind = QPI_ITEM_BIN;
		if (!obj) {
			continue;
		}
		if (qpi_wire_bin_unwrap(bufs[i], lens[i], &off, &blen)) {
			it[i].buf = (const uint8_t *) bufs[i] + off;
			it[i].len = blen;
		} else {
			it[i].kind = QPI_ITEM_OBJ;
		}
	}
	while (first < n && rv == QP_OK) {
		size_t cnt = 0, bytes = 0;
		while (first + cnt < n && cnt < QPI_WIRE_DEFAULT_BATCH
		    && (cnt == 0
		        || bytes + lens[first + cnt]
		            <= QP_DEFAULT_MAX_MESSAGE)) {
			bytes += it[first + cnt].len;
			cnt++;
		}
		rv = qpi_shmq_put_many(sq, it + first, cnt, deadline_ns);
		first += cnt;
	}
	free(it);
	return rv;
}

static int
put_many(qp_queue *q, const void *const *bufs, const size_t *lens, size_t n,
    bool obj, qp_duration timeout)
{
	const char *fn = obj ? "qp_queue_put_many_obj" : "qp_queue_put_many";
	const qpi_queue_ops *ops;
	void *impl;
	int rv;

	if (q == NULL || (n > 0 && (bufs == NULL || lens == NULL))) {
		return qpi_err(QP_EINVAL, "%s: NULL argument", fn);
	}
	if ((rv = qpi_queue_ready(q)) != QP_OK
	    || (rv = qpi_duration_check(timeout)) != QP_OK) {
		return rv;
	}
	for (size_t i = 0; obj && i < n; i++) {
		if (bufs[i] == NULL
		    || (rv = qpi_wire_check_value(bufs[i], lens[i]))
		        != QP_OK) {
			return qpi_err(QP_EINVAL,
			    "%s: item %zu is not one msgpack value", fn, i);
		}
	}
	impl = qpi_queue_impl(q, &ops);
	if (ops == &qpi_remote_ops) {
		return qpi_rq_put_many(
		    impl, bufs, lens, n, obj, qpi_queue_deadline(timeout));
	}
	if (ops == &qpi_part_ops) {
		return qpi_part_put_many(
		    impl, bufs, lens, n, obj, qpi_queue_deadline(timeout));
	}
	qpi_shmq *sq = qpi_queue_shmq(q);
	if (sq != NULL) {
		return shm_put_many(
		    sq, bufs, lens, n, obj, qpi_queue_deadline(timeout));
	}
	/* A durable queue: item by item, each one logged as a put. */
	for (size_t i = 0; i < n && rv == QP_OK; i++) {
		rv = obj ? qp_queue_put_obj(q, bufs[i], lens[i], timeout)
		         : qp_queue_put(q, bufs[i], lens[i], timeout);
	}
	return rv;
}

QP_API int
qp_queue_put_many(qp_queue *q, const void *const *bufs, const size_t *lens,
    size_t n, qp_duration timeout)
{
	return put_many(q, bufs, lens, n, false, timeout);
}

QP_API int
qp_queue_put_many_obj(qp_queue *q, const void *const *msgpacks,
    const size_t *lens, size_t n, qp_duration timeout)
{
	return put_many(q, msgpacks, lens, n, true, timeout);
}

/* A plain shared-memory queue: up to max more items in one lock hold
 * (qpi_shmq_get_many), without waiting, each in a buffer of its own.
 * Returns how many; fewer than max (the queue ran empty, or memory did:
 * those items stay) tells the readiness state, as an empty get does. */
static size_t
shm_get_rest(qp_queue *q, void **bufs, size_t *lens, size_t max, bool obj)
{
	qpi_shmq_got stack[64], *got = stack;
	size_t n = 0;
	void *none;

	if (max > 64 && (got = malloc(max * sizeof(*got))) == NULL) {
		max = 64;
		got = stack;
	}
	if (qpi_shmq_get_many(qpi_queue_shmq(q),
	        QPI_GET_EACH | (obj ? QPI_GET_OBJ : 0), max, 0, &none, got, &n,
	        0)
	    == QP_OK) {
		for (size_t i = 0; i < n; i++) {
			bufs[i] = got[i].own;
			lens[i] = got[i].len;
		}
	}
	if (got != stack) {
		free(got);
	}
	if (n < max && *qpi_queue_rd(q) != NULL) {
		qpi_qrd_empty(q);
	}
	return n;
}

static int
get_many(qp_queue *q, void **bufs, size_t *lens, size_t max, size_t *np,
    bool obj, qp_duration timeout)
{
	int (*get1)(qp_queue *, void **, size_t *, qp_duration)
	    = obj ? qp_queue_get_obj : qp_queue_get;
	const qpi_queue_ops *ops;
	void *impl;
	int rv;

	if (q == NULL || bufs == NULL || lens == NULL || np == NULL
	    || max == 0) {
		return qpi_err(QP_EINVAL, "%s: NULL argument or max 0",
		    obj ? "qp_queue_get_many_obj" : "qp_queue_get_many");
	}
	*np = 0;
	if ((rv = qpi_duration_check(timeout)) != QP_OK) {
		return rv;
	}
	impl = qpi_queue_impl(q, &ops);
	if (ops == &qpi_remote_ops) {
		return qpi_rq_get_many(impl, bufs, lens, max, np, obj,
		    qpi_queue_deadline(timeout));
	}
	if (ops == &qpi_part_ops) {
		return qpi_part_get_many(impl, bufs, lens, max, np, obj,
		    qpi_queue_deadline(timeout));
	}
	/* Shared memory: the first get waits, the others do not. */
	if ((rv = get1(q, &bufs[0], &lens[0], timeout)) != QP_OK) {
		return rv;
	}
	if (ops == &qpi_shmq_ops && max > 1) {
		*np = 1 + shm_get_rest(q, bufs + 1, lens + 1, max - 1, obj);
		qpi_err_clear();
		return QP_OK;
	}
	for (*np = 1; *np < max; (*np)++) {
		if (get1(q, &bufs[*np], &lens[*np], QP_NOWAIT) != QP_OK) {
			break;
		}
	}
	qpi_err_clear();
	return QP_OK;
}

QP_API int
qp_queue_get_many(qp_queue *q, void **bufs, size_t *lens, size_t max,
    size_t *np, qp_duration timeout)
{
	return get_many(q, bufs, lens, max, np, false, timeout);
}

QP_API int
qp_queue_get_many_obj(qp_queue *q, void **msgpacks, size_t *lens, size_t max,
    size_t *np, qp_duration timeout)
{
	return get_many(q, msgpacks, lens, max, np, true, timeout);
}
