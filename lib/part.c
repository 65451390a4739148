/*
 * part.c - one queue over several servers: "tcp://h1:7450,h2:7450/jobs"
 * opens one logical queue with a partition on each server, in the order
 * listed. Puts go round robin (skipping partitions seen down lately) or,
 * with a key, to the partition that rendezvous hashing picks
 * (qp_partition_pick); a get takes from any partition that has an item
 * (qwait.c's get over many queues); qsize and stat add up the partitions
 * that answer. No consensus and no replication: a partition whose server
 * is down is left out until it answers again.
 *
 * Each partition has two remote handles, one for puts and one for gets,
 * leases and figures, each with a short reconnect window
 * (PART_PUT_WINDOW_MS, PART_GET_WINDOW_MS instead of 10 s), so that a
 * dead server costs the others a moment: a round-robin put (or a slice of
 * a batch) whose server is lost under it goes to the next partition (it
 * is stored twice only if the lost server had stored it and died before
 * its answer left); a keyed put fails instead. A partition that fails is
 * skipped for PART_DOWN_MS, then tried again. A partition that could not be
 * opened is opened on use (its server was down at the open). The handle keeps,
 * for each item got, the partition it came from, oldest first: task_done,
 * nack, touch and deliveries go to that partition's handle.
 *
 * Locking: p->mu guards the partitions' handles and marks, the round
 * robin and the list of items got; never held across a call to a server.
 */
#include "qpi.h"
#include "queue.h"
#include "rclient.h"
#include "shmq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define PART_MAX           64
#define PART_DOWN_MS       1000
#define PART_GET_WINDOW_MS 300
#define PART_PUT_WINDOW_MS 500

typedef struct part_srv {
	char addr[QPI_URL_MAX + QP_NAME_MAX + 2]; /* the partition's queue */
	char server[QPI_URL_MAX + 1]; /* as written: the hash input */
	qp_queue *pq; /* puts (NULL: not open yet) */
	qp_queue *gq; /* gets, leases, figures */
	int64_t down_until_ms; /* skipped until then */
	bool in_ep; /* gq's fd is in the epoll set */
} part_srv;

typedef struct part {
	pthread_mutex_t mu;
	size_t n;
	part_srv s[PART_MAX];
	const char *servers[PART_MAX]; /* s[i].server, for the hash */
	qp_queue_opts opts; /* the open's, strings copied below */
	qp_conn_opts conn;
	char *strs[8];
	unsigned rr;
	qpi_ids got; /* partition of each item held, oldest first */
	int epfd; /* readiness: the partitions' fds (-1: not yet) */
	char label[QPI_URL_MAX + QP_NAME_MAX + 2];
} part;

/* ---- addresses ---- */

/* Splits addr into n partition addresses and server strings when it
 * names several servers (*np >= 2); *np = 0 when it does not. */
static int
part_split(const char *addr, part *p, size_t *np)
{
	const char *sch = strstr(addr, "://"), *slash, *rest;
	size_t n = 0;

	*np = 0;
	if (sch == NULL) {
		return QP_OK;
	}
	rest = sch + 3;
	slash = strrchr(rest, '/');
	if (slash == NULL
	    || memchr(rest, ',', (size_t) (slash - rest)) == NULL) {
		return QP_OK;
	}
	const char *name = slash + 1;
	const char *cur = rest;
	while (cur <= slash) {
		const char *end = memchr(cur, ',', (size_t) (slash - cur));
		size_t len = (size_t) ((end != NULL ? end : slash) - cur);
		if (n == PART_MAX) {
			return qpi_err(QP_EINVAL, "%s: more than %d servers",
			    addr, PART_MAX);
		}
		if (len == 0 || len >= sizeof(p->s[n].server)) {
			return qpi_err(QP_EINVAL,
			    "%s: an empty or too long server in the list",
			    addr);
		}
		part_srv *s = &p->s[n];
		memcpy(s->server, cur, len);
		s->server[len] = '\0';
		/* From cur, not s->server: no overlap with s->addr. */
		int w = snprintf(s->addr, sizeof(s->addr), "%.*s%.*s/%s",
		    (int) (rest - addr), addr, (int) len, cur, name);
		if (w < 0 || (size_t) w >= sizeof(s->addr)) {
			return qpi_err(
			    QP_EINVAL, "%s: address too long", addr);
		}
		int rc = qp_addr_check(s->addr);
		if (rc != QP_OK) {
			return rc;
		}
		for (size_t k = 0; k < n; k++) {
			if (strcmp(p->s[k].server, s->server) == 0) {
				return qpi_err(QP_EINVAL,
				    "%s: server %s is listed twice", addr,
				    s->server);
			}
		}
		p->servers[n] = s->server;
		n++;
		cur = (end != NULL ? end : slash) + 1;
	}
	*np = n;
	return QP_OK;
}

/* A new part with addr split into it, in *pp; NULL (and QP_OK) when addr
 * names one server. */
static int
part_new(const char *addr, part **pp)
{
	part *p = calloc(1, sizeof(*p));
	int rc;

	*pp = NULL;
	if (p == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	if ((rc = part_split(addr, p, &p->n)) != QP_OK || p->n == 0) {
		free(p);
		return rc;
	}
	*pp = p;
	return QP_OK;
}

int
qpi_part_check(const char *addr)
{
	qpi_addr a;
	part *p;
	int rc = part_new(addr, &p);

	free(p);
	return rc != QP_OK ? rc
	    : p != NULL    ? QP_OK
	                   : qpi_addr_parse(addr, QPI_ADDR_NAMED, &a);
}

/* ---- rendezvous hashing ---- */

static uint64_t
part_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static uint64_t
part_weight(const char *server, const void *key, size_t klen)
{
	uint64_t h = 0xcbf29ce484222325ull;
	const uint8_t *k = key;

	for (const char *c = server; *c != '\0'; c++) {
		h = (h ^ (uint8_t) *c) * 0x100000001b3ull;
	}
	h = (h ^ 0) * 0x100000001b3ull;
	for (size_t i = 0; i < klen; i++) {
		h = (h ^ k[i]) * 0x100000001b3ull;
	}
	return part_mix(h);
}

QP_API size_t
qp_partition_pick(
    const char *const *servers, size_t n, const void *key, size_t klen)
{
	size_t best = 0;
	uint64_t bw = 0;

	if (servers == NULL || (key == NULL && klen > 0)) {
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t w = part_weight(servers[i], key, klen);
		if (i == 0 || w > bw) {
			best = i;
			bw = w;
		}
	}
	return best;
}

/* ---- partitions' handles ---- */

static bool
part_conn_err(int rc)
{
	return rc == QP_ECONNREFUSED || rc == QP_ECONNRESET
	    || rc == QP_ETIMEDOUT;
}

/* Marks partition i down for PART_DOWN_MS when rc says its server is
 * not reachable. */
static void
part_mark(part *p, size_t i, int rc)
{
	if (part_conn_err(rc)) {
		pthread_mutex_lock(&p->mu);
		p->s[i].down_until_ms = qpi_now_ms() + PART_DOWN_MS;
		pthread_mutex_unlock(&p->mu);
	}
}

static void
part_window(qp_queue *q, int64_t ms)
{
	const qpi_queue_ops *ops;
	qpi_rq *r = qpi_queue_impl(q, &ops);

	if (ops == &qpi_remote_ops) {
		r->reconnect_ms = ms;
	}
}

/* Opens partition i's handles (the server may be down: then the
 * partition is marked down): its put or get handle, else NULL with *rcp.
 * Another thread's open that came first wins. */
static qp_queue *
part_open_one(part *p, size_t i, bool put, int *rcp)
{
	part_srv *s = &p->s[i];
	qp_queue *pq = NULL, *gq = NULL, *q;
	qp_queue_opts po = p->opts, go = p->opts;

	po.flags &= ~(uint32_t) QP_OPEN_LEASE;
	go.flags &= ~(uint32_t) (QP_OPEN_CREATE | QP_OPEN_EXCL);
	if ((*rcp = qp_queue_open(&pq, s->addr, &po)) != QP_OK
	    || (*rcp = qp_queue_open(&gq, s->addr, &go)) != QP_OK) {
		qp_queue_free(pq);
		part_mark(p, i, *rcp);
		return NULL;
	}
	part_window(gq, PART_GET_WINDOW_MS);
	part_window(pq, PART_PUT_WINDOW_MS);
	pthread_mutex_lock(&p->mu);
	if (s->gq == NULL) {
		s->pq = pq;
		s->gq = gq;
		pq = gq = NULL;
	}
	q = put ? s->pq : s->gq;
	pthread_mutex_unlock(&p->mu);
	qp_queue_free(pq);
	qp_queue_free(gq);
	return q;
}

/* Partition i's handle (puts: pq, else gq), opened if need be; NULL
 * with *rcp when it cannot be. skip_down: a partition marked down is
 * not tried. */
static qp_queue *
part_handle(part *p, size_t i, bool put, bool skip_down, int *rcp)
{
	part_srv *s = &p->s[i];

	pthread_mutex_lock(&p->mu);
	bool down = s->down_until_ms > qpi_now_ms();
	qp_queue *q = put ? s->pq : s->gq;
	pthread_mutex_unlock(&p->mu);
	if (skip_down && down) {
		*rcp = qpi_err(QP_ECONNREFUSED,
		    "%s: its server was down a moment ago", s->addr);
		return NULL;
	}
	return q != NULL ? q : part_open_one(p, i, put, rcp);
}

/* ---- puts ---- */

static int
part_put_to(part *p, size_t i, qp_queue *q, const void *buf, size_t len,
    unsigned kind, int64_t deadline)
{
	qp_duration t = qpi_queue_timeout(deadline);
	int rc = kind == QPI_ITEM_BIN ? qp_queue_put(q, buf, len, t)
	                              : qp_queue_put_obj(q, buf, len, t);

	part_mark(p, i, rc);
	return rc;
}

/* The put handle of the first partition from at on that is not in skip
 * and opens: those up first, then those marked down (one that fails to
 * open then joins skip). NULL with *rcp (its message said) when none. */
static qp_queue *
part_next(part *p, size_t at, bool *skip, size_t *ip, int *rcp)
{
	for (int pass = 0; pass < 2; pass++) {
		for (size_t j = 0; j < p->n; j++) {
			size_t i = (at + j) % p->n;
			qp_queue *q = skip[i]
			    ? NULL
			    : part_handle(p, i, true, pass == 0, rcp);
			if (q != NULL) {
				*ip = i;
				return q;
			}
			skip[i] = skip[i] || pass == 1;
		}
	}
	*rcp = qpi_err(*rcp, "%s: no partition could be reached (%s)",
	    p->label, qp_errmsg());
	return NULL;
}

static int
part_put(
    void *impl, const void *buf, size_t len, unsigned kind, int64_t deadline)
{
	part *p = impl;
	bool tried[PART_MAX] = {false};
	size_t i;
	qp_queue *q;
	int rc = QP_OK;

	pthread_mutex_lock(&p->mu);
	size_t first = p->rr++ % p->n;
	pthread_mutex_unlock(&p->mu);
	/* Round robin over the partitions that are up; one whose server is
	 * lost under the put (QP_ECONNRESET after PART_PUT_WINDOW_MS) hands
	 * it to the next; if every one was down a moment ago, all of them
	 * again. */
	while ((q = part_next(p, first, tried, &i, &rc)) != NULL) {
		tried[i] = true;
		rc = part_put_to(p, i, q, buf, len, kind, deadline);
		if (!part_conn_err(rc)) {
			return rc;
		}
	}
	return rc;
}

static int
part_put_key(void *impl, const void *key, size_t klen, const void *buf,
    size_t len, unsigned kind, int64_t deadline)
{
	part *p = impl;
	size_t i = qp_partition_pick(p->servers, p->n, key, klen);
	int rc;
	qp_queue *q = part_handle(p, i, true, false, &rc);

	return q == NULL ? rc : part_put_to(p, i, q, buf, len, kind, deadline);
}

int
qpi_part_put_many(void *impl, const void *const *bufs, const size_t *lens,
    size_t n, bool obj, int64_t deadline)
{
	part *p = impl;
	bool failed[PART_MAX] = {false};
	size_t k = 0;
	int rc = QP_OK;

	pthread_mutex_lock(&p->mu);
	size_t first = p->rr++ % p->n;
	for (size_t i = 0; i < p->n; i++) {
		k += p->s[i].down_until_ms <= qpi_now_ms() ? 1 : 0;
	}
	pthread_mutex_unlock(&p->mu);
	/* One slice of the batch for each partition up, in round robin
	 * order, each slice all or nothing on its partition; a slice whose
	 * server is lost under it goes to the next partition. An error
	 * leaves the slices before it stored and those after it not. */
	size_t per = (n + (k > 0 ? k : 1) - 1) / (k > 0 ? k : 1), done = 0;
	size_t at = first;
	while (done < n) {
		size_t cnt = n - done < per ? n - done : per, i;
		qp_queue *q = part_next(p, at, failed, &i, &rc);
		if (q == NULL) {
			return rc;
		}
		rc = (obj ? qp_queue_put_many_obj : qp_queue_put_many)(q,
		    bufs + done, lens + done, cnt,
		    qpi_queue_timeout(deadline));
		part_mark(p, i, rc);
		if (part_conn_err(rc)) {
			failed[i] = true; /* this slice to the next one */
			continue;
		}
		if (rc != QP_OK) {
			return rc;
		}
		done += cnt;
		at = i + 1;
	}
	return QP_OK;
}

/* ---- gets ---- */

/* The handles of the partitions up now, in order; *idx their indexes. */
static size_t
part_live(part *p, qp_queue **qs, size_t *idx)
{
	size_t k = 0;
	int rc;

	for (size_t i = 0; i < p->n; i++) {
		qp_queue *q = part_handle(p, i, false, true, &rc);
		if (q != NULL) {
			qs[k] = q;
			idx[k++] = i;
		}
	}
	qpi_err_clear();
	return k;
}

static int
part_get(void *impl, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline)
{
	part *p = impl;
	qp_queue *qs[PART_MAX];
	size_t idx[PART_MAX];

	for (;;) {
		size_t k = part_live(p, qs, idx), which = 0;
		/* While a partition is down, look for it again now and
		 * then. */
		int64_t until = deadline;
		if (k < p->n && deadline != 0) {
			int64_t again
			    = qpi_now_ns() + PART_DOWN_MS * 1000000ll;
			until = again < deadline ? again : deadline;
		}
		int rc = QP_EEMPTY;
		if (k > 0) {
			rc = qpi_queue_get_any(qs, k, flags, &which, into, cap,
			    bufp, lenp, until);
		} else if (deadline == 0) {
			return qpi_err(QP_ECONNREFUSED,
			    "%s: no partition's server answers", p->label);
		} else {
			/* Every server is down: try again once the marks
			 * run out (or the deadline comes). */
			int64_t ns = qpi_remaining_ns(until);
			struct timespec ts = {(time_t) (ns / 1000000000),
			    (long) (ns % 1000000000)};
			nanosleep(&ts, NULL);
		}
		if (rc == QP_OK) {
			pthread_mutex_lock(&p->mu);
			/* Out of memory: task_done goes to the first. */
			(void) qpi_ids_push(&p->got, idx[which], 0);
			pthread_mutex_unlock(&p->mu);
			return QP_OK;
		}
		if (k > 0 && part_conn_err(rc)) {
			part_mark(p, idx[which], rc);
		} else if (rc != QP_EEMPTY) {
			return rc;
		}
		if (qpi_remaining_ns(deadline) == 0) {
			return qpi_err(QP_EEMPTY,
			    "%s is empty (%zu of %zu partitions answered)",
			    p->label, k, p->n);
		}
	}
}

int
qpi_part_get_many(void *impl, void **bufs, size_t *lens, size_t max,
    size_t *np, bool obj, int64_t deadline)
{
	part *p = impl;
	qp_queue *qs[PART_MAX];
	size_t idx[PART_MAX], k = part_live(p, qs, idx);
	int rc = QP_EEMPTY;

	*np = 0;
	for (size_t j = 0; j < k; j++) {
		rc = (obj ? qp_queue_get_many_obj : qp_queue_get_many)(
		    qs[j], bufs, lens, max, np, QP_NOWAIT);
		if (rc == QP_OK) {
			pthread_mutex_lock(&p->mu);
			for (size_t m = 0; m < *np; m++) {
				(void) qpi_ids_push(&p->got, idx[j], 0);
			}
			pthread_mutex_unlock(&p->mu);
			return QP_OK;
		}
		part_mark(p, idx[j], rc);
		if (rc != QP_EEMPTY && !part_conn_err(rc)) {
			return rc;
		}
	}
	if (deadline == 0) {
		return qpi_err(QP_EEMPTY, "%s is empty", p->label);
	}
	/* Wait for one item from any partition. */
	if ((rc = part_get(p, obj ? QPI_GET_OBJ : 0, NULL, 0, &bufs[0],
	         &lens[0], deadline))
	    == QP_OK) {
		*np = 1;
	}
	return rc;
}

/* The get handle of the partition of the oldest item held (*ip: its
 * index); NULL with *rcp when none is held (err, for the call what) or
 * its server cannot be reached. */
static qp_queue *
part_held(part *p, size_t *ip, int *rcp, int err, const char *what)
{
	uint64_t i;

	if (!qpi_ids_first(&p->got, &p->mu, &i, NULL)) {
		*rcp = qpi_err(err, "%s on %s: this handle holds no %s", what,
		    p->label, err == QP_EVALUE ? "task" : "item");
		return NULL;
	}
	*ip = (size_t) i;
	return part_handle(p, *ip, false, false, rcp);
}

/* After a call that answered rc on the oldest item held, from partition
 * i: the item is forgotten when the call confirmed it or it went back
 * (QP_OK, QP_ENOENT, also, or a lost connection, whose leases go back),
 * so the next call is for the next item; i is marked down on a lost
 * connection. rc. */
static int
part_settle(part *p, size_t i, int rc, int also)
{
	if (rc == QP_OK || rc == QP_ENOENT || rc == also
	    || part_conn_err(rc)) {
		qpi_ids_done(&p->got, &p->mu, i);
	}
	part_mark(p, i, rc);
	return rc;
}

static int
part_task_done(void *impl)
{
	size_t i;
	int rc;
	qp_queue *q = part_held(impl, &i, &rc, QP_EVALUE, "task_done()");

	return q == NULL
	    ? rc
	    : part_settle(impl, i, qp_queue_task_done(q), QP_EVALUE);
}

/* Completes the oldest task held where it lives: its result goes to the
 * partition of results on the task's own server, in one step there
 * (qp_queue_complete), so each task has one result across kills of
 * workers and of that server, as on one server. results must be spread
 * over the same servers, written the same way and in the same order;
 * else QP_ENOTSUP, nothing done. */
static int
part_complete(void *impl, qp_queue *results, const void *buf, size_t len,
    unsigned kind, int64_t deadline)
{
	part *p = impl;
	const qpi_queue_ops *ops;
	part *r = qpi_queue_impl(results, &ops);
	size_t i;
	int rc;

	bool same = ops == &qpi_part_ops && r->n == p->n;
	for (size_t k = 0; same && k < p->n; k++) {
		same = strcmp(p->s[k].server, r->s[k].server) == 0;
	}
	if (!same) {
		return qpi_err(QP_ENOTSUP,
		    "complete() on %s: the results queue must be spread over "
		    "the same servers, in the same order",
		    p->label);
	}
	qp_queue *tq = part_held(p, &i, &rc, QP_EVALUE, "complete()"), *rq;
	if (tq == NULL || (rq = part_handle(r, i, true, false, &rc)) == NULL) {
		return rc;
	}
	return part_settle(p, i,
	    (kind == QPI_ITEM_OBJ ? qp_queue_complete_obj : qp_queue_complete)(
	        tq, rq, buf, len, qpi_queue_timeout(deadline)),
	    QP_OK);
}

static int
part_nack(void *impl, qp_duration delay)
{
	size_t i;
	int rc;
	qp_queue *q = part_held(impl, &i, &rc, QP_ENOENT, "nack");

	return q == NULL
	    ? rc
	    : part_settle(impl, i, qp_queue_nack(q, delay), QP_OK);
}

static int
part_touch(void *impl, qp_duration lease)
{
	part *p = impl;
	int rc = QP_OK, any = 0;

	for (size_t i = 0; i < p->n; i++) {
		bool holds = false;
		pthread_mutex_lock(&p->mu);
		for (size_t k = 0; k < p->got.n && !holds; k++) {
			holds = p->got.id[k] == i;
		}
		qp_queue *q = p->s[i].gq;
		pthread_mutex_unlock(&p->mu);
		if (holds && q != NULL) {
			int r = qp_queue_touch(q, lease);
			any++;
			if (r != QP_OK && rc == QP_OK) {
				rc = r;
			}
		}
	}
	return any == 0
	    ? qpi_err(QP_ENOENT, "touch on %s: no item is held", p->label)
	    : rc;
}

static int
part_deliveries(void *impl, uint32_t *np)
{
	size_t i;
	int rc;
	qp_queue *q = part_held(impl, &i, &rc, QP_ENOENT, "deliveries");

	return q == NULL ? rc : qp_queue_deliveries(q, np);
}

/* ---- figures ---- */

static void
part_add(qp_queue_stats *sum, const qp_queue_stats *st, bool first)
{
	sum->items += st->items;
	sum->bytes += st->bytes;
	sum->maxsize += st->maxsize;
	sum->capacity += st->capacity;
	sum->leased += st->leased;
	sum->unfinished += st->unfinished;
	sum->getters += st->getters;
	sum->putters += st->putters;
	sum->puts += st->puts;
	sum->gets += st->gets;
	if (first || st->oldest_age_ms > sum->oldest_age_ms) {
		sum->oldest_age_ms = st->oldest_age_ms;
	}
}

static int
part_stat(void *impl, qp_queue_stats *st)
{
	part *p = impl;
	size_t answered = 0;
	int rc = QP_OK, last = QP_OK;

	memset(st, 0, sizeof(*st));
	st->oldest_age_ms = -1;
	for (size_t i = 0; i < p->n; i++) {
		qp_queue_stats one;
		qp_queue *q = part_handle(p, i, false, true, &rc);
		if (q != NULL && (rc = qp_queue_stat(q, &one)) == QP_OK) {
			part_add(st, &one, answered == 0);
			answered++;
		} else {
			part_mark(p, i, rc);
			last = rc;
		}
	}
	return answered > 0
	    ? QP_OK
	    : qpi_err(last, "%s: no partition answered", p->label);
}

static int
part_qsize(void *impl, uint64_t *np)
{
	qp_queue_stats st;
	int rc = part_stat(impl, &st);

	if (rc == QP_OK) {
		*np = st.items;
	}
	return rc;
}

static int
part_join(void *impl, int64_t deadline)
{
	part *p = impl;
	int rc;

	for (size_t i = 0; i < p->n; i++) {
		qp_queue *q = part_handle(p, i, false, false, &rc);
		if (q == NULL
		    || (rc = qp_queue_join(q, qpi_queue_timeout(deadline)))
		        != QP_OK) {
			return rc;
		}
	}
	return QP_OK;
}

/* ---- readiness: an epoll set of the partitions' fds ---- */

static int
part_fd(void *impl, int *fdp)
{
	part *p = impl;

	pthread_mutex_lock(&p->mu);
	if (p->epfd < 0 && (p->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		pthread_mutex_unlock(&p->mu);
		return qpi_err(
		    QP_ESYSTEM, "epoll_create1: %s", strerror(errno));
	}
	pthread_mutex_unlock(&p->mu);
	for (size_t i = 0; i < p->n; i++) {
		int fd, r;
		qp_queue *q = part_handle(p, i, false, true, &r);
		if (q == NULL || qp_queue_fd(q, &fd) != QP_OK) {
			continue; /* (a handle's fd stays the same) */
		}
		struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
		pthread_mutex_lock(&p->mu);
		if (!p->s[i].in_ep
		    && epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) == 0) {
			p->s[i].in_ep = true;
		}
		pthread_mutex_unlock(&p->mu);
	}
	qpi_err_clear();
	*fdp = p->epfd;
	return QP_OK;
}

/* Whether look (qp_queue_full, qpi_queue_ready_now) says want of any
 * partition that answers. */
static bool
part_any(part *p, int (*look)(qp_queue *, bool *), bool want)
{
	bool yes = false;
	int rc;

	for (size_t i = 0; i < p->n && !yes; i++) {
		bool b = !want;
		qp_queue *q = part_handle(p, i, false, true, &rc);
		yes = q != NULL && look(q, &b) == QP_OK && b == want;
	}
	qpi_err_clear();
	return yes;
}

static int
part_full(void *impl, bool *fullp)
{
	/* Full when no partition that answers could take a put. */
	*fullp = !part_any(impl, qp_queue_full, false);
	return QP_OK;
}

static int
part_ready(void *impl, bool *readyp)
{
	*readyp = part_any(impl, qpi_queue_ready_now, true);
	return QP_OK;
}

/* ---- close, free, open ---- */

static void
part_close(void *impl)
{
	part *p = impl;

	for (size_t i = 0; i < 2 * p->n; i++) {
		pthread_mutex_lock(&p->mu);
		qp_queue *q = i % 2 == 0 ? p->s[i / 2].pq : p->s[i / 2].gq;
		pthread_mutex_unlock(&p->mu);
		if (q != NULL) {
			qp_queue_close(q);
		}
	}
}

static void
part_free(void *impl)
{
	part *p = impl;

	for (size_t i = 0; i < p->n; i++) {
		qp_queue_free(p->s[i].pq);
		qp_queue_free(p->s[i].gq);
	}
	if (p->epfd >= 0) {
		close(p->epfd);
	}
	qpi_ids_free(&p->got);
	for (size_t i = 0; i < sizeof(p->strs) / sizeof(p->strs[0]); i++) {
		free(p->strs[i]);
	}
	pthread_mutex_destroy(&p->mu);
	free(p);
}

const qpi_queue_ops qpi_part_ops = {
    .put = part_put,
    .get = part_get,
    .qsize = part_qsize,
    .full = part_full,
    .task_done = part_task_done,
    .complete = part_complete,
    .join = part_join,
    .stat = part_stat,
    .nack = part_nack,
    .deliveries = part_deliveries,
    .touch = part_touch,
    .fd = part_fd,
    .ready = part_ready,
    .put_key = part_put_key,
    .close = part_close,
    .free = part_free,
};

int
qpi_part_open(
    qp_queue **qp, const char *addr, const qp_queue_opts *opts, bool *isp)
{
	size_t up = 0;
	part *p;
	int rc = part_new(addr, &p), first_err = QP_OK;
	char msg[512] = "";

	*isp = p != NULL;
	if (p == NULL) {
		return rc;
	}
	p->epfd = -1;
	pthread_mutex_init(&p->mu, NULL);
	snprintf(p->label, sizeof(p->label), "%s", addr);
	if (opts != NULL) {
		p->opts = *opts;
		if (opts->flags & QP_OPEN_DURABLE && opts->path != NULL) {
			part_free(p);
			return qpi_err(QP_EINVAL,
			    "%s: a partitioned queue is kept by its servers "
			    "(no path)",
			    addr);
		}
	}
	if (opts != NULL && opts->conn != NULL) {
		p->conn = *opts->conn;
		p->opts.conn = &p->conn;
	}
	/* The strings the options point to, copied (freed with p). */
	const char **strs[] = {&p->opts.fsync, &p->conn.token,
	    &p->conn.token_file, &p->conn.tls_cert, &p->conn.tls_key,
	    &p->conn.tls_ca, &p->conn.tls_server_name};
	for (size_t k = 0; k < sizeof(strs) / sizeof(strs[0]); k++) {
		if (*strs[k] != NULL
		    && (*strs[k] = p->strs[k] = strdup(*strs[k])) == NULL) {
			part_free(p);
			return qpi_err(QP_ENOMEM, "out of memory");
		}
	}
	/* Every server that answers now; those down are opened on use.
	 * Any other error (no such queue, bad token) fails the open. */
	for (size_t i = 0; i < p->n; i++) {
		if (part_open_one(p, i, false, &rc) != NULL) {
			up++;
		} else if (!part_conn_err(rc)) {
			part_free(p); /* leaves the message as it is */
			return rc;
		} else if (first_err == QP_OK) {
			first_err = rc;
			snprintf(msg, sizeof(msg), "%s", qp_errmsg());
		}
	}
	if (up == 0) {
		part_free(p);
		return qpi_err(
		    first_err, "%s: no server answered (%s)", addr, msg);
	}
	if ((rc = qpi_queue_wrap(qp, &qpi_part_ops, p)) == QP_OK) {
		qpi_err_clear(); /* the servers down: opened on use */
	}
	return rc;
}

int
qpi_part_unlink(const char *addr, const qp_conn_opts *conn, bool *isp)
{
	size_t gone = 0;
	part *p;
	int rc = part_new(addr, &p), err = QP_OK;

	*isp = p != NULL;
	if (p == NULL) {
		return rc;
	}
	for (size_t i = 0; i < p->n; i++) {
		if ((rc = qp_queue_unlink_opts(p->s[i].addr, conn)) == QP_OK) {
			gone++;
		} else if (err == QP_OK || rc != QP_ENOENT) {
			err = rc;
		}
	}
	free(p);
	return gone > 0 && err == QP_ENOENT ? QP_OK : err;
}

/* ---- public calls ---- */

QP_API int
qp_queue_partitions(qp_queue *q, size_t *np)
{
	const qpi_queue_ops *ops;
	void *impl;
	int rc;

	if ((rc = qpi_queue_ready_out(q, np, "qp_queue_partitions: np"))
	    != QP_OK) {
		return rc;
	}
	impl = qpi_queue_impl(q, &ops);
	*np = ops == &qpi_part_ops ? ((part *) impl)->n : 1;
	return QP_OK;
}

QP_API int
qp_queue_partition_stat(
    qp_queue *q, size_t i, qp_queue_stats *st, char *url, size_t cap)
{
	const qpi_queue_ops *ops;
	size_t n;
	int rc;

	/* qp_queue_partitions checks the handle. */
	if ((rc = qp_queue_partitions(q, &n)) != QP_OK) {
		return rc;
	}
	if (st == NULL) {
		return qpi_err(
		    QP_EINVAL, "qp_queue_partition_stat: st is NULL");
	}
	part *p = qpi_queue_impl(q, &ops);
	bool parted = ops == &qpi_part_ops;
	if (i >= n) {
		return qpi_err(QP_EINVAL, "partition %zu of %zu", i, n);
	}
	if (url != NULL && cap > 0) {
		snprintf(url, cap, "%s", parted ? p->s[i].addr : "");
	}
	qp_queue *pq = parted ? part_handle(p, i, false, false, &rc) : q;
	if (pq != NULL && (rc = qp_queue_stat(pq, st)) != QP_OK && parted) {
		part_mark(p, i, rc);
	}
	return rc;
}
