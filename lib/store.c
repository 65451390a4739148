/*
 * store.c - qpiped's one interface over shared-memory and durable queues
 * (store.h). A durable queue serves its items from a private shared-memory
 * queue (qpi_durq_shm): everything but puts, gets, acks and the put
 * requests' tags goes to that queue; releases and expiries also let the
 * log forget lease ids that can no longer be acked.
 *
 * Locking: none of its own; the caller serialises calls on a store.
 */
#include "store.h"
#include "htab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qpi_store {
	qpi_shmq *shm; /* the items (a durable queue's own, private) */
	qpi_durq *dur; /* durable: its log; NULL for shared memory */
	char name[QP_NAME_MAX + 1];
};

/* A store named name over shm, and d unless NULL (freed on failure). */
static int
st_new(qpi_store **sp, const char *name, qpi_shmq *shm, qpi_durq *d)
{
	qpi_store *s = calloc(1, sizeof(*s));

	if (s == NULL) {
		d != NULL ? qpi_durq_free(d) : qpi_shmq_free(shm);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	s->shm = shm;
	s->dur = d;
	snprintf(s->name, sizeof(s->name), "%s", name);
	*sp = s;
	return QP_OK;
}

int
qpi_store_open_shm(
    qpi_store **sp, const char *name, unsigned flags, const qpi_shmq_cfg *cfg)
{
	qpi_shmq *q;
	int rv = qpi_shmq_open(&q, name, flags, cfg);

	return rv != QP_OK ? rv : st_new(sp, name, q, NULL);
}

int
qpi_store_open_durq(qpi_store **sp, const char *name, qpi_durq *d)
{
	return st_new(sp, name, qpi_durq_shm(d), d);
}

void
qpi_store_free(qpi_store *s)
{
	if (s == NULL) {
		return;
	}
	if (s->dur != NULL) {
		qpi_durq_free(s->dur);
	} else {
		qpi_shmq_free(s->shm);
	}
	free(s);
}

bool
qpi_store_durable(const qpi_store *s)
{
	return s->dur != NULL;
}

qpi_shmq *
qpi_store_shm(qpi_store *s)
{
	return s->shm;
}

qpi_durq *
qpi_store_durq(qpi_store *s)
{
	return s->dur;
}

/* The kind and bytes to store for an item's encoding: a bin is stored as
 * its payload. */
static unsigned
st_item(const uint8_t *item, size_t len, const uint8_t **pp, size_t *lenp)
{
	size_t off, plen;

	if (qpi_wire_bin_unwrap(item, len, &off, &plen)) {
		*pp = item + off;
		*lenp = plen;
		return QPI_ITEM_BIN;
	}
	*pp = item;
	*lenp = len;
	return QPI_ITEM_OBJ;
}

int
qpi_store_put(qpi_store *s, const uint8_t *item, size_t len,
    const qpi_shmq_tag *tag, uint64_t *ticket)
{
	const uint8_t *p;
	size_t plen;
	unsigned kind = st_item(item, len, &p, &plen);

	if (s->dur == NULL) {
		return qpi_shmq_put_tagged(s->shm, p, plen, kind, tag, 0);
	}
	if (tag != NULL) {
		return qpi_durq_put_tagged(s->dur, p, plen, kind, tag, ticket);
	}
	return ticket != NULL
	    ? qpi_durq_put_async(s->dur, p, plen, kind, ticket)
	    : qpi_durq_put(s->dur, p, plen, kind, 0);
}

/* Two durable queues: two logs, so not one commit but a recovery that
 * yields one result. The result is tagged with the task's own identity,
 * its item id in t's log (kept across restarts) under a client id made
 * of t's name, and goes in only if r's tags do not name it already; then
 * the lease is acked. A server killed between the two delivers the task
 * again after its restart, and that run's completion finds the tag: it
 * acks without a second result. It holds while r has taken fewer than
 * QPI_DURQ_TAGS_MIN other tagged puts since (the newest are read, not
 * all that r keeps: this runs on every completion). */
static int
st_complete_durable(qpi_store *t, uint64_t lease_id, qpi_store *r,
    const uint8_t *p, size_t plen, unsigned kind)
{
	qpi_shmq_tag tag = {.n = 1}, *v;
	uint64_t h = qpi_hash(t->name, strlen(t->name));
	size_t n = 0;
	bool in = false;
	int rv;

	memcpy(tag.client, "qpdurcpl", 8);
	memcpy(tag.client + 8, &h, 8);
	if ((rv = qpi_durq_lease_item(t->dur, lease_id, &tag.seq)) != QP_OK) {
		return rv;
	}
	if ((v = malloc(QPI_DURQ_TAGS_MIN * sizeof(*v))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	rv = qpi_durq_tags(r->dur, v, QPI_DURQ_TAGS_MIN, &n);
	for (size_t i = 0; rv == QP_OK && i < n; i++) {
		in = in
		    || (v[i].seq == tag.seq
		        && memcmp(v[i].client, tag.client, sizeof(tag.client))
		            == 0);
	}
	free(v);
	if (rv == QP_OK && !in) {
		rv = qpi_durq_put_tagged(r->dur, p, plen, kind, &tag, NULL);
	}
	if (rv != QP_OK) {
		return rv;
	}
	if ((rv = qpi_durq_ack(t->dur, lease_id)) == QP_OK
	    && qpi_shmq_task_done(t->shm) != QP_OK) {
		qpi_err_clear();
	}
	return rv;
}

int
qpi_store_complete(qpi_store *t, uint64_t lease_id, qpi_store *r,
    const uint8_t *item, size_t len, const qpi_shmq_tag *tag)
{
	const uint8_t *p;
	size_t plen;
	unsigned kind = st_item(item, len, &p, &plen);

	if (t == r) {
		return qpi_err(QP_EINVAL,
		    "complete: the results queue '%s' is the tasks queue",
		    t->name);
	}
	if ((t->dur != NULL) != (r->dur != NULL)) {
		return qpi_err(QP_ENOTSUP,
		    "complete: '%s' is durable and '%s' is not: one step "
		    "needs queues of one kind",
		    t->dur != NULL ? t->name : r->name,
		    t->dur != NULL ? r->name : t->name);
	}
	if (t->dur != NULL) {
		return st_complete_durable(t, lease_id, r, p, plen, kind);
	}
	return qpi_shmq_complete(
	    t->shm, lease_id, r->shm, p, plen, kind, tag, 0);
}

/* A durable queue is the server's alone (its file is locked) and calls
 * are serialised: checking room first makes the batch all or nothing. */
static int
st_put_many_durable(qpi_store *s, const qpi_wire_item *items, uint32_t n,
    const qpi_shmq_tag *tag, uint64_t *ticket)
{
	qpi_shmq_tag t;
	qp_queue_stats st;
	uint64_t need = 0;
	uint32_t i;
	int rv;

	if ((rv = qpi_durq_stat(s->dur, &st)) != QP_OK) {
		return rv;
	}
	for (i = 0; i < n; i++) {
		const uint8_t *p;
		size_t plen;
		st_item(items[i].data, items[i].len, &p, &plen);
		need += qpi_durq_rec_size(plen);
	}
	if ((st.maxsize != 0 && n > st.maxsize) || need > st.capacity) {
		return qpi_err(QP_ETOOBIG,
		    "a batch of %u items (%llu bytes stored) can never fit in "
		    "'%s' (maxsize %llu, %llu bytes)",
		    n, (unsigned long long) need, s->name,
		    (unsigned long long) st.maxsize,
		    (unsigned long long) st.capacity);
	}
	if (st.maxsize != 0 && st.items + n > st.maxsize) {
		return qpi_err(QP_EFULL, "queue '%s' is full", s->name);
	}
	memset(&t, 0, sizeof(t));
	if (tag != NULL) {
		t = *tag;
	}
	for (i = 0; i < n; i++) {
		/* Each record tagged with its index in the request. */
		t.base = tag != NULL ? tag->base + i : 0;
		if ((rv = qpi_store_put(s, items[i].data, items[i].len,
		         tag != NULL ? &t : NULL, ticket))
		    != QP_OK) {
			break;
		}
	}
	if (i == n || i == 0) {
		return rv;
	}
	return qpi_err(rv,
	    "queue '%s' filled up during the batch: %u of %u items stored",
	    s->name, i, n);
}

int
qpi_store_put_many(qpi_store *s, const qpi_wire_item *items, uint32_t n,
    const qpi_shmq_tag *tag, uint64_t *ticket)
{
	qpi_shmq_item stack[64] = {{0}}, *it = stack;
	int rv;

	if (s->dur != NULL) {
		return st_put_many_durable(s, items, n, tag, ticket);
	}
	if (n > 64 && (it = malloc(n * sizeof(*it))) == NULL) {
		return qpi_err(
		    QP_ENOMEM, "out of memory for a batch of %u", n);
	}
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *p;
		it[i].kind
		    = st_item(items[i].data, items[i].len, &p, &it[i].len);
		it[i].buf = p;
	}
	rv = qpi_shmq_put_many_tagged(s->shm, it, n, tag, 0);
	if (it != stack) {
		free(it);
	}
	return rv;
}

/* A durable queue's batch: item by item into one buffer. */
static int
st_get_many_dur(qpi_store *s, uint64_t owner, int64_t lease_ms, size_t max,
    size_t max_bytes, void **bufp, qpi_shmq_got *got, size_t *np)
{
	uint8_t *buf = NULL, *p;
	size_t used = 0, cap = 0, len;
	void *data;
	int rv = QP_OK;

	for (*np = 0; *np < max; (*np)++) {
		/* Beyond the first, within max_bytes (the rest stays). */
		size_t room = *np == 0 || max_bytes == 0 ? 0
		    : used < max_bytes                   ? max_bytes - used
		                                         : 0;
		if (*np > 0 && max_bytes != 0 && room == 0) {
			break;
		}
		rv = qpi_durq_get_lease(s->dur, owner, lease_ms, QPI_GET_OBJ,
		    room, &data, &len, &got[*np].lease);
		if (rv != QP_OK) {
			break;
		}
		if (used + len > cap) {
			cap = cap > 0 ? cap : 4096;
			while (cap < used + len) {
				cap *= 2;
			}
			if ((p = realloc(buf, cap)) == NULL) {
				(void) qpi_store_release(s, got[*np].lease.id);
				free(data);
				rv = qpi_err(QP_ENOMEM, "out of memory");
				break;
			}
			buf = p;
		}
		memcpy(buf + used, data, len);
		free(data);
		got[*np].off = used;
		got[*np].len = len;
		used += len;
	}
	if (*np == 0) {
		free(buf);
		return rv;
	}
	*bufp = buf;
	return QP_OK;
}

int
qpi_store_get_many(qpi_store *s, uint64_t owner, int64_t lease_ms, size_t max,
    size_t max_bytes, void **bufp, qpi_shmq_got *got, size_t *np)
{
	if (s->dur != NULL) {
		return st_get_many_dur(
		    s, owner, lease_ms, max, max_bytes, bufp, got, np);
	}
	return qpi_shmq_get_lease_many(s->shm, owner, lease_ms, QPI_GET_OBJ,
	    max, max_bytes, bufp, got, np, 0);
}

int
qpi_store_ack(qpi_store *s, uint64_t lease_id)
{
	return s->dur != NULL ? qpi_durq_ack(s->dur, lease_id)
	                      : qpi_shmq_ack(s->shm, lease_id);
}

void
qpi_store_ack_many(qpi_store *s, const uint64_t *ids, size_t n, int *rcs)
{
	int rv = QP_OK;

	for (size_t i = 0; i < n && s->dur != NULL; i++) {
		/* Stops at a held lock: the rest are not done either. */
		rcs[i] = rv == QP_EBUSY ? rv : qpi_durq_ack(s->dur, ids[i]);
		rv = rcs[i];
	}
	if (s->dur == NULL
	    && (rv = qpi_shmq_ack_many(s->shm, ids, n, rcs)) != QP_OK) {
		for (size_t i = 0; i < n; i++) {
			rcs[i] = rv;
		}
	}
}

/* Lets a durable log forget lease ids that can no longer be acked. */
static int
st_gc(qpi_store *s, int rv)
{
	if (s->dur != NULL) {
		qpi_durq_leases_gc(s->dur);
	}
	return rv;
}

int
qpi_store_release(qpi_store *s, uint64_t lease_id)
{
	return st_gc(s, qpi_shmq_release(s->shm, lease_id));
}

int
qpi_store_renew(qpi_store *s, uint64_t lease_id, int64_t lease_ms)
{
	return qpi_shmq_renew(s->shm, lease_id, lease_ms);
}

int
qpi_store_release_owner(qpi_store *s, uint64_t owner, size_t *np)
{
	return st_gc(s, qpi_shmq_release_owner(s->shm, owner, np));
}

int
qpi_store_expire(qpi_store *s, int64_t now_ms, size_t *np, int64_t *next_ms)
{
	int rv = qpi_shmq_expire(s->shm, now_ms, np, next_ms);

	return *np > 0 ? st_gc(s, rv) : rv;
}

int
qpi_store_release_dead(qpi_store *s, size_t *np)
{
	*np = 0;
	return s->dur != NULL ? QP_OK : qpi_shmq_release_dead(s->shm, np);
}

int
qpi_store_release_stale(qpi_store *s, size_t *np)
{
	*np = 0;
	return s->dur != NULL ? QP_OK : qpi_shmq_release_stale(s->shm, np);
}

int
qpi_store_task_done(qpi_store *s)
{
	return qpi_shmq_task_done(s->shm);
}

int
qpi_store_qsize(qpi_store *s, uint64_t *np)
{
	return qpi_shmq_qsize(s->shm, np);
}

int
qpi_store_stat(qpi_store *s, qp_queue_stats *st)
{
	return s->dur != NULL ? qpi_durq_stat(s->dur, st)
	                      : qpi_shmq_stat(s->shm, st);
}

int
qpi_store_counters(qpi_store *s, qpi_shmq_counters *c)
{
	/* A durable queue's are its private segment's: since it was opened. */
	return qpi_shmq_counters_get(s->shm, c);
}

int
qpi_store_tags(qpi_store *s, qpi_shmq_tag *v, size_t cap, size_t *np)
{
	return s->dur != NULL ? qpi_durq_tags(s->dur, v, cap, np)
	                      : qpi_shmq_tags(s->shm, v, cap, np);
}
