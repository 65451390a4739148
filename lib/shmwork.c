/*
 * shmwork.c - worker mode on shared memory (QP_OPEN_LEASE on a shm://
 * or anonymous queue): a get leases its item with the segment's own
 * leases (shmq.h) for lease_ms (0: 30 s, qpiped's default), owned by this
 * process; the handle keeps the ids it holds, oldest first, for task_done
 * (ack, counted for join), complete, nack (given back at once, or its
 * lease cut to the delay) and close (all given back). Nobody serves the
 * segment, so a worker-mode get first returns dead processes' and expired
 * leases (every SHML_SWEEP_MS at most), and a blocked one wakes that
 * often. A forked child's copy holds nothing. A backend of queue.c's
 * front (queue.h's ops table); queue.c opens it through qpi_shml_wrap.
 *
 * Locking: a handle's lists are under its mutex, never held while waiting.
 */
#include "queue.h"
#include "shmq.h"
#include "wire.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The lease of a worker-mode get when lease_ms is 0 (qpiped's default). */
#define SHML_DEF_LEASE_MS 30000
/* How often a worker-mode handle returns dead processes' leases and the
 * expired ones, while it gets or waits to get. */
#define SHML_SWEEP_MS 250

typedef struct shml {
	qpi_shmq *sq;
	char label[QP_NAME_MAX + 16];
	int64_t lease_ms;
	pthread_mutex_t mu;
	pid_t pid; /* the process whose leases the lists name */
	qpi_ids held; /* leased here, oldest first; val: deliveries */
	qpi_ids delayed; /* nacked with a delay; val: when it returns */
	int64_t swept_ms; /* last sweep (0: none yet) */
	int64_t next_ms; /* the next lease expiry seen then */
	bool closing;
} shml;

/* Puts back at the front (false: out of memory, nothing changed). */
static bool
ids_unpop(qpi_ids *l, uint64_t id, int64_t val)
{
	if (!qpi_ids_push(l, id, val)) {
		return false;
	}
	memmove(l->id + 1, l->id, (l->n - 1) * sizeof(*l->id));
	memmove(l->val + 1, l->val, (l->n - 1) * sizeof(*l->val));
	l->id[0] = id;
	l->val[0] = val;
	return true;
}

/* With h->mu held: a forked child's copy holds nothing of the parent's. */
static void
shml_own(shml *h)
{
	pid_t me = getpid();

	if (h->pid != me) {
		h->pid = me;
		h->held.n = 0;
		h->delayed.n = 0;
	}
}

/* Returns dead processes' leases and the expired ones to the queue. */
static void
shml_sweep(shml *h, int64_t now)
{
	int64_t next = INT64_MAX;

	(void) qpi_shmq_release_dead(h->sq, NULL);
	if (qpi_shmq_expire(h->sq, now, NULL, &next) != QP_OK) {
		next = INT64_MAX;
	}
	pthread_mutex_lock(&h->mu);
	h->swept_ms = now;
	h->next_ms = next;
	pthread_mutex_unlock(&h->mu);
	qpi_err_clear();
}

static int
shml_get(void *impl, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline)
{
	shml *h = impl;
	uint64_t owner = qpi_shmq_owner_self();
	/* into: only an item of cap bytes at most is taken (cap 0: at most
	 * 1, and a 1-byte item goes back below). */
	size_t max_len = into == NULL ? 0 : cap > 0 ? cap : 1;
	qpi_shmq_lease l;
	void *buf = NULL;
	int rc;

	for (;;) {
		int64_t now = qpi_now_ms(), at;
		pthread_mutex_lock(&h->mu);
		bool sweep = h->swept_ms == 0
		    || now - h->swept_ms >= SHML_SWEEP_MS || now >= h->next_ms;
		pthread_mutex_unlock(&h->mu);
		if (sweep) {
			shml_sweep(h, now);
		}
		/* A wait ends at the next sweep: neither a holder's death
		 * nor a lease's end wakes a sleeper. */
		pthread_mutex_lock(&h->mu);
		at = h->swept_ms + SHML_SWEEP_MS;
		at = h->next_ms < at ? h->next_ms : at;
		pthread_mutex_unlock(&h->mu);
		int64_t wake
		    = deadline != 0 && at > 0 && at < deadline / 1000000
		    ? at * 1000000
		    : deadline;
		rc = qpi_shmq_get_lease_max(h->sq, owner, h->lease_ms, flags,
		    max_len, &buf, lenp, &l, wake);
		if (rc != QP_EEMPTY || wake == deadline) {
			break;
		}
	}
	if (rc != QP_OK) {
		return rc; /* QP_ETOOBIG: *lenp is the item's size */
	}
	if (into != NULL && *lenp > cap) {
		(void) qpi_shmq_release(h->sq, l.id);
		free(buf);
		return qpi_err(QP_ETOOBIG,
		    "item of %zu bytes does not fit in %zu; it went back to "
		    "the head of %s",
		    *lenp, cap, h->label);
	}
	pthread_mutex_lock(&h->mu);
	shml_own(h);
	bool closing = h->closing;
	bool kept
	    = !closing && qpi_ids_push(&h->held, l.id, (int64_t) l.deliveries);
	pthread_mutex_unlock(&h->mu);
	if (!kept) {
		/* Keep nothing that cannot be given back later. */
		(void) qpi_shmq_release(h->sq, l.id);
		free(buf);
		return closing
		    ? qpi_err(QP_ECLOSED, "%s: handle closed", h->label)
		    : qpi_err(QP_ENOMEM, "out of memory for a lease id");
	}
	if (into != NULL) {
		memcpy(into, buf, *lenp);
		free(buf);
	} else {
		*bufp = buf;
	}
	return QP_OK;
}

/* The oldest item held and its delivery count (drop: taken off the
 * list); false when none is held. */
static bool
shml_head(shml *h, uint64_t *idp, int64_t *delivp, bool drop)
{
	pthread_mutex_lock(&h->mu);
	shml_own(h);
	bool have = h->held.n > 0;
	if (have) {
		*idp = h->held.id[0];
		*delivp = h->held.val[0];
		if (drop) {
			qpi_ids_drop(&h->held, 0, 1);
		}
	}
	pthread_mutex_unlock(&h->mu);
	return have;
}

/* Confirms the oldest item held: acked, and counted done for join. */
static int
shml_task_done(void *impl)
{
	shml *h = impl;
	uint64_t id;
	int64_t deliv;
	int rc;

	if (!shml_head(h, &id, &deliv, true)) {
		return qpi_err(QP_EVALUE,
		    "task_done() on %s: this handle holds no task", h->label);
	}
	rc = qpi_shmq_ack(h->sq, id);
	if (rc == QP_OK) {
		/* As qpiped counts a worker's ack: join() sees it. */
		if (qpi_shmq_task_done(h->sq) != QP_OK) {
			qpi_err_clear();
		}
		return QP_OK;
	}
	if (rc == QP_ENOENT) {
		return qpi_err(QP_ENOENT,
		    "task_done() on %s: the lease of the task ran out first; "
		    "the item went back to the queue",
		    h->label);
	}
	pthread_mutex_lock(&h->mu);
	/* Out of memory: its lease runs out, the item comes back then. */
	(void) ids_unpop(&h->held, id, deliv);
	pthread_mutex_unlock(&h->mu);
	return rc;
}

/* Confirms the oldest item held and puts its result on results, a
 * shm:// handle, in one step (qpi_shmq_complete). */
static int
shml_complete(void *impl, qp_queue *results, const void *buf, size_t len,
    unsigned kind, int64_t deadline)
{
	shml *h = impl;
	qpi_shmq *rs = qpi_queue_shmq(results);
	uint64_t id;
	int64_t deliv;
	int rc;

	if (rs == NULL) {
		return qpi_err(QP_ENOTSUP,
		    "complete() on %s: the results queue must be a shm:// "
		    "queue of this host too",
		    h->label);
	}
	if (!shml_head(h, &id, &deliv, false)) {
		return qpi_err(QP_EVALUE,
		    "complete() on %s: this handle holds no task", h->label);
	}
	rc = qpi_shmq_complete(h->sq, id, rs, buf, len, kind, NULL, deadline);
	if (rc == QP_OK || rc == QP_ENOENT) {
		qpi_ids_done(&h->held, &h->mu, id);
	}
	if (rc == QP_ENOENT) {
		return qpi_err(QP_ENOENT,
		    "complete() on %s: the lease of the task ran out first; "
		    "nothing put, the item went back to the queue",
		    h->label);
	}
	return rc;
}

/* Gives the oldest item held back: at once, or when its lease, cut to
 * delay ms, runs out (the next sweep of any worker then returns it). */
static int
shml_nack(void *impl, qp_duration delay)
{
	shml *h = impl;
	uint64_t id;
	int64_t deliv, now = qpi_now_ms();
	int rc;

	if (!shml_head(h, &id, &deliv, true)) {
		return qpi_err(
		    QP_ENOENT, "nack on %s: no item is held", h->label);
	}
	rc = delay == 0 ? qpi_shmq_release(h->sq, id)
	                : qpi_shmq_renew(h->sq, id, (int64_t) delay);
	if (rc == QP_ENOENT) {
		qpi_err_clear();
		return QP_OK; /* gone back already: its lease ran out */
	}
	pthread_mutex_lock(&h->mu);
	if (rc != QP_OK) {
		/* Out of memory: its lease runs out, the item comes back. */
		(void) ids_unpop(&h->held, id, deliv);
	} else if (delay > 0) {
		/* Remembered so that close gives it back at once; those
		 * whose delay is over are forgotten. */
		for (size_t i = h->delayed.n; i-- > 0;) {
			if (h->delayed.val[i] <= now) {
				qpi_ids_drop(&h->delayed, i, 1);
			}
		}
		(void) qpi_ids_push(&h->delayed, id, now + delay);
		if (now + delay < h->next_ms) {
			h->next_ms = now + delay;
		}
	}
	pthread_mutex_unlock(&h->mu);
	return rc;
}

/* Extends the lease of every item held. Ids whose lease ran out already
 * stay listed: task_done on them reports it. */
static int
shml_touch(void *impl, qp_duration lease)
{
	shml *h = impl;
	int64_t ms = lease != 0 ? (int64_t) lease : h->lease_ms;
	uint64_t *ids = NULL;
	size_t n, lost = 0;
	int rc = QP_OK;

	pthread_mutex_lock(&h->mu);
	shml_own(h);
	n = h->held.n;
	if (n > 0 && (ids = malloc(n * sizeof(*ids))) != NULL) {
		memcpy(ids, h->held.id, n * sizeof(*ids));
	}
	pthread_mutex_unlock(&h->mu);
	if (n == 0) {
		return qpi_err(
		    QP_ENOENT, "touch on %s: no item is held", h->label);
	}
	if (ids == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for a touch");
	}
	for (size_t i = 0; i < n; i++) {
		int r = qpi_shmq_renew(h->sq, ids[i], ms);
		if (r == QP_ENOENT) {
			lost++;
		} else if (r != QP_OK && rc == QP_OK) {
			rc = r;
		}
	}
	free(ids);
	if (rc != QP_OK) {
		return rc;
	}
	if (lost > 0) {
		return qpi_err(QP_ENOENT,
		    "touch on %s: %zu of %zu leases had run out already; "
		    "those items went back to the queue",
		    h->label, lost, n);
	}
	qpi_err_clear();
	return QP_OK;
}

static int
shml_deliveries(void *impl, uint32_t *np)
{
	shml *h = impl;
	uint64_t id;
	int64_t deliv;

	if (!shml_head(h, &id, &deliv, false)) {
		return qpi_err(
		    QP_ENOENT, "%s: this handle holds no item", h->label);
	}
	*np = (uint32_t) deliv;
	return QP_OK;
}

/* Wakes the blocked calls, then gives back every item still held or
 * waiting out a nack's delay (a get that ends after this gives its own
 * back: it sees closing). */
static void
shml_close(void *impl)
{
	shml *h = impl;
	qpi_ids held, delayed;

	pthread_mutex_lock(&h->mu);
	shml_own(h);
	h->closing = true;
	held = h->held;
	delayed = h->delayed;
	memset(&h->held, 0, sizeof(h->held));
	memset(&h->delayed, 0, sizeof(h->delayed));
	pthread_mutex_unlock(&h->mu);
	qpi_shmq_interrupt(h->sq);
	for (size_t i = 0; i < held.n + delayed.n; i++) {
		(void) qpi_shmq_release(
		    h->sq, i < held.n ? held.id[i] : delayed.id[i - held.n]);
	}
	qpi_ids_free(&held);
	qpi_ids_free(&delayed);
	qpi_err_clear();
}

static void
shml_free(void *impl)
{
	shml *h = impl;

	qpi_shmq_free(h->sq);
	qpi_ids_free(&h->held);
	qpi_ids_free(&h->delayed);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

static const qpi_queue_ops shml_ops = {
    .get = shml_get,
    .task_done = shml_task_done,
    .complete = shml_complete,
    .nack = shml_nack,
    .deliveries = shml_deliveries,
    .touch = shml_touch,
    .close = shml_close,
    .free = shml_free,
};

int
qpi_shml_wrap(qp_queue **qp, qpi_shmq *sq, const char *name, uint64_t lease_ms)
{
	shml *h;

	if (lease_ms > QPI_WIRE_MS_MAX) {
		qpi_shmq_free(sq);
		return qpi_err(QP_EINVAL, "lease_ms %llu is over 2^31-1 ms",
		    (unsigned long long) lease_ms);
	}
	if ((h = calloc(1, sizeof(*h))) == NULL) {
		qpi_shmq_free(sq);
		return qpi_err(QP_ENOMEM, "out of memory for a queue handle");
	}
	h->sq = sq;
	h->lease_ms = lease_ms != 0 ? (int64_t) lease_ms : SHML_DEF_LEASE_MS;
	h->pid = getpid();
	h->next_ms = INT64_MAX;
	snprintf(h->label, sizeof(h->label), "%s%s",
	    name != NULL ? "shm://" : "",
	    name != NULL ? name : "anonymous queue");
	pthread_mutex_init(&h->mu, NULL);
	return qpi_queue_wrap(qp, &shml_ops, h);
}

struct qpi_shmq *
qpi_shml_sq(const qpi_queue_ops *ops, void *impl)
{
	return ops == &shml_ops ? ((shml *) impl)->sq : NULL;
}
