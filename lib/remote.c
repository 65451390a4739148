/*
 * remote.c - the remote queue client: the qp_queue calls of a tcp://,
 * ipc:// or tls+tcp:// handle (queue.c dispatches them here through
 * qpi_remote_ops), and the server-wide calls (unlink, list). Each call is
 * one request and its reply on the handle's session (rclient.c), with
 * the meaning of its shared-memory twin. A plain get confirms its item
 * once the reply is in (the confirmation rides on the next get, or the
 * acker sends it); a QP_OPEN_LEASE handle keeps its items leased until
 * task_done (confirm) or nack (give back), and touch extends them;
 * complete confirms one and puts its result in one request.
 *
 * Locking: r->mu (rclient.h) guards the lease lists; it is never held
 * while waiting for the network.
 */
#include "rclient.h"
#include "shmq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

int
qpi_rq_open(qpi_rq **rp, const qpi_addr *a, const qp_queue_opts *opts)
{
	qpi_rq *r;
	rq_call c;
	int rv;

	if ((rv = qpi_rq_new(&r, a, opts != NULL ? opts->conn : NULL))
	    != QP_OK) {
		return rv;
	}
	r->lease_mode = opts != NULL && (opts->flags & QP_OPEN_LEASE) != 0;
	r->lease_ms = opts != NULL ? opts->lease_ms : 0;

	if (opts != NULL && (opts->flags & QP_OPEN_CREATE)) {
		qpi_rq_call_init(&c, r, QPI_OP_CREATE, 0);
		c.req.maxsize = opts->maxsize;
		c.req.capacity = opts->capacity;
		c.req.max_message = opts->max_message;
		c.req.lease_ms = opts->lease_ms;
		c.req.flags
		    = (opts->flags & QP_OPEN_EXCL) ? QPI_CREATE_EXCL : 0;
		if (opts->flags & QP_OPEN_DURABLE) {
			c.req.flags |= QPI_CREATE_DURABLE;
			snprintf(c.req.fsync, sizeof(c.req.fsync), "%s",
			    opts->fsync != NULL ? opts->fsync : "");
		}
	} else {
		qpi_rq_call_init(&c, r, QPI_OP_STAT, 0);
	}
	rv = qpi_rq_run(r, &c);
	qpi_rq_call_done(&c);
	if (rv == QP_EBUSY && c.req.op == QPI_OP_STAT) {
		/* The queue exists; another process holds its lock. */
		rv = QP_OK;
	}
	if (rv != QP_OK) {
		qpi_rq_free(r); /* leaves the message as it is */
		return rv;
	}
	*rp = r;
	return QP_OK;
}

/* ---- queue calls ---- */

/* Writes len bytes of buf at dst as a msgpack bin (dst has len + 5 bytes
 * of room); the bytes written, 0 if len is too large for a bin. */
static size_t
rq_bin_write(uint8_t *dst, const void *buf, size_t len)
{
	size_t h = qpi_wire_bin_header(len, dst);

	if (h > 0 && len > 0) {
		memcpy(dst + h, buf, len);
	}
	return h == 0 ? 0 : h + len;
}

int
qpi_rq_item(qpi_rq *r, qpi_wire_item *it, bool raw, const void *buf,
    size_t len, uint8_t **tmpp, const char *what)
{
	uint8_t *tmp = NULL;
	size_t n = len;

	*tmpp = NULL;
	if ((uint64_t) len > r->lim.max_message) {
		return qpi_err(QP_ETOOBIG,
		    "%s of %zu bytes is over the %llu-byte limit of %s", what,
		    len, (unsigned long long) r->lim.max_message, r->url);
	}
	if (raw) {
		tmp = len <= SIZE_MAX - 5 ? malloc(len + 5) : NULL;
		if ((n = tmp != NULL ? rq_bin_write(tmp, buf, len) : 0) == 0) {
			free(tmp);
			return qpi_err(QP_ENOMEM,
			    "out of memory for the %s (%zu bytes)", what, len);
		}
	}
	it->data = raw ? tmp : buf;
	it->len = n;
	*tmpp = tmp;
	return QP_OK;
}

/* Hands the bytes a get returns of item it over: its encoding (with
 * QPI_GET_OBJ), else a bin's payload (or the encoding of any other value),
 * copied into (cap bytes; larger is QP_ETOOBIG, *lenp its size), else
 * into a malloc'd *bufp (QP_ENOMEM). The caller gives the lease back on
 * an error. */
static int
rq_item_out(qpi_rq *r, const qpi_wire_item *it, unsigned flags, void *into,
    size_t cap, void **bufp, size_t *lenp)
{
	size_t off = 0, len = it->len;
	bool bin = !(flags & QPI_GET_OBJ)
	    && qpi_wire_bin_unwrap(it->data, it->len, &off, &len);
	const uint8_t *src = bin ? it->data + off : it->data;
	void *out = into != NULL ? into : malloc(len > 0 ? len : 1);

	if (into != NULL && len > cap) {
		*lenp = len;
		return qpi_err(QP_ETOOBIG,
		    "item of %zu bytes does not fit in %zu; it went back to "
		    "the head of %s/%s",
		    len, cap, r->url, r->name);
	}
	if (out == NULL) {
		return qpi_err(
		    QP_ENOMEM, "out of memory for an item of %zu bytes", len);
	}
	if (len > 0) {
		memcpy(out, src, len);
	}
	if (into == NULL) {
		*bufp = out;
	}
	*lenp = len;
	return QP_OK;
}

static int
rq_put(void *impl, const void *buf, size_t len, unsigned kind,
    int64_t deadline_ns)
{
	qpi_rq *r = impl;
	uint8_t *tmp;
	rq_call c;
	int rv;

	qpi_rq_call_init(&c, r, QPI_OP_PUT, deadline_ns);
	if ((rv = qpi_rq_check(r)) != QP_OK
	    || (rv = qpi_rq_item(r, &c.req.item, kind == QPI_ITEM_BIN, buf,
	            len, &tmp, "item"))
	        != QP_OK) {
		return rv;
	}
	rv = qpi_rq_do_status(r, &c, QP_EFULL);
	free(tmp);
	return rv;
}

/* Gives a lease back to the head of the queue at once. */
static void
rq_release(qpi_rq *r, uint64_t lease_id)
{
	rq_call c;

	qpi_rq_call_init(&c, r, QPI_OP_RELEASE, 0);
	c.req.lease_id = lease_id;
	qpi_rq_do(r, &c);
	qpi_rq_call_done(&c);
}

/* the item kept ahead for the readiness fd (below): its lease, renewal
 * and retry times. */
#define PF_LEASE_MS   60000
#define PF_RENEW_MS   20000
#define PF_BACKOFF_MS 200
typedef struct rq_pf rq_pf;
static rq_pf *pf_of(qpi_rq *r);
static int pf_get(qpi_rq *r, rq_pf *pf, unsigned flags, void *into, size_t cap,
    void **bufp, size_t *lenp, int64_t deadline_ns);

/* Sends a get for up to max items (1..max_batch), the pending
 * confirmations riding along; on QP_OK c->rep holds nitems >= 1 items,
 * pointing into c->buf (qpi_rq_call_done frees them). ahead: one item kept
 * ahead for the readiness fd, leased to the connection for PF_LEASE_MS. */
static int
rq_get_call(qpi_rq *r, rq_call *c, qpi_wire_item *items, uint32_t max,
    int64_t deadline_ns, bool ahead)
{
	uint64_t ackstack[16], *acks;
	uint32_t nacks;
	size_t acap;
	int rv;

	if ((rv = qpi_rq_check(r)) != QP_OK) {
		return rv;
	}
	do { /* a get that waits for ever asks again after an empty slice */
		if (rv == QP_EEMPTY) {
			qpi_rq_call_done(c);
		}
		qpi_rq_call_init(c, r, QPI_OP_GET, deadline_ns);
		c->req.max_items = max;
		c->req.lease_mode = r->lease_mode || ahead ? QPI_LEASE_WORK
		                                           : QPI_LEASE_CONFIRM;
		c->req.lease_ms = ahead ? PF_LEASE_MS : r->lease_ms;
		c->rep.items = items;
		c->rep.items_cap = max;
		/* Confirmations not yet sent ride along. */
		pthread_mutex_lock(&r->mu);
		nacks = qpi_rq_take_acks(r, ackstack, 16, &acks, &acap);
		pthread_mutex_unlock(&r->mu);
		c->req.ids = acks;
		c->req.nids = nacks;
		c->req.ids_cap = nacks;
		rv = qpi_rq_run(r, c);
		if (acks != ackstack) {
			pthread_mutex_lock(&r->mu);
			qpi_rq_acks_done(r, acks, ackstack, acap);
			pthread_mutex_unlock(&r->mu);
		}
	} while (rv == QP_EEMPTY && deadline_ns == INT64_MAX);
	if (rv == QP_OK && (c->rep.nitems == 0 || c->rep.nitems > max)) {
		rv = qpi_err(QP_EPROTO,
		    "%s answered a get of %u with %u items", r->url, max,
		    c->rep.nitems);
	}
	if (rv != QP_OK) {
		qpi_rq_call_done(c);
	}
	return rv;
}

/* A get of up to max items (the item kept ahead alone, if any): each
 * into (cap bytes; max 1) or malloc'd in bufs[i], lens[i] its length, *np
 * how many. What cannot be handed over goes back to the head. */
static int
rq_take(qpi_rq *r, unsigned flags, void *into, size_t cap, void **bufs,
    size_t *lens, uint32_t max, size_t *np, int64_t deadline_ns)
{
	qpi_wire_item stack[16], *items = stack;
	size_t icap = 0;
	rq_pf *pf = pf_of(r);
	rq_call c;
	uint32_t i = 0;
	int rv;

	if (pf != NULL) {
		/* once an item is kept ahead, gets take from there
		 * only (its fetch holds the head: FIFO stays), so an item
		 * put a moment ago may not be seen by a get that does not
		 * wait, as with Python's Queue and its feeder thread. */
		rv = pf_get(r, pf, flags, into, cap, bufs, lens, deadline_ns);
		*np = rv == QP_OK ? 1 : 0;
		return rv;
	}
	/* Not zeroed: the decoder sets each item it fills. */
	if (max > 16
	    && (items = qpi_rq_keep_get(r, max * sizeof(*items), &icap))
	        == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for %u items", max);
	}
	if ((rv = rq_get_call(r, &c, items, max, deadline_ns, false))
	    == QP_OK) {
		for (; i < c.rep.nitems && rv == QP_OK; i++) {
			rv = rq_item_out(r, &items[i], flags, into, cap,
			    &bufs[i], &lens[i]);
		}
		if (rv != QP_OK) {
			for (uint32_t k = --i; k < c.rep.nitems; k++) {
				rq_release(r, items[k].lease_id);
			}
			rv = i == 0 ? rv : QP_OK; /* the first i are out */
		}
		qpi_rq_got(r, items, i);
		qpi_rq_call_done(&c);
	}
	*np = i;
	if (items != stack) {
		qpi_rq_keep_put(r, items, icap);
	}
	return rv;
}

static int
rq_get(void *impl, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline_ns)
{
	void *none; /* bufp is NULL with into */
	size_t n;

	return rq_take(impl, flags, into, cap, bufp != NULL ? bufp : &none,
	    lenp, 1, &n, deadline_ns);
}

int
qpi_rq_get_many(qpi_rq *r, void **bufs, size_t *lens, size_t max, size_t *np,
    bool obj, int64_t deadline_ns)
{
	return rq_take(r, obj ? QPI_GET_OBJ : 0, NULL, 0, bufs, lens,
	    (uint32_t) (max > r->lim.max_batch ? r->lim.max_batch : max), np,
	    deadline_ns);
}

int
qpi_rq_put_many(qpi_rq *r, const void *const *bufs, const size_t *lens,
    size_t n, bool obj, int64_t deadline_ns)
{
	qpi_wire_item *items;
	uint8_t *enc;
	size_t total = 0, pos = 0, first = 0;
	int rv = QP_OK;

	if ((rv = qpi_rq_check(r)) != QP_OK) {
		return rv;
	}
	for (size_t i = 0; i < n; i++) {
		if ((uint64_t) lens[i] > r->lim.max_message) {
			return qpi_err(QP_ETOOBIG,
			    "item %zu of %zu bytes is over the %llu-byte "
			    "limit of %s",
			    i, lens[i],
			    (unsigned long long) r->lim.max_message, r->url);
		}
		total += obj ? 0 : lens[i] + 5;
	}
	items = calloc(n > 0 ? n : 1, sizeof(*items));
	enc = malloc(total > 0 ? total : 1);
	if (items == NULL || enc == NULL) {
		free(items);
		free(enc);
		return qpi_err(QP_ENOMEM, "out of memory for %zu items", n);
	}
	/* Each item as a bin, one after the other; values as they are. */
	for (size_t i = 0; i < n; i++) {
		items[i].data = obj ? bufs[i] : enc + pos;
		items[i].len = obj ? lens[i]
		                   : rq_bin_write(enc + pos, bufs[i], lens[i]);
		pos += obj ? 0 : items[i].len;
	}
	/* Frames of at most max_batch items and max_message bytes: each
	 * one is all or nothing. */
	while (first < n && rv == QP_OK) {
		size_t cnt = 0, bytes = 0;
		while (first + cnt < n && cnt < r->lim.max_batch
		    && (cnt == 0
		        || bytes + items[first + cnt].len
		            <= r->lim.max_message)) {
			bytes += items[first + cnt].len;
			cnt++;
		}
		rq_call c;
		qpi_rq_call_init(&c, r, QPI_OP_PUT_MANY, deadline_ns);
		c.req.items = items + first;
		c.req.nitems = (uint32_t) cnt;
		c.req.items_cap = (uint32_t) cnt;
		rv = qpi_rq_do_status(r, &c, QP_EFULL);
		first += cnt;
	}
	free(items);
	free(enc);
	return rv;
}

/* qsize (into *np) or, np NULL, stat (*st): a call with no arguments. */
static int
rq_figures(qpi_rq *r, uint64_t *np, qp_queue_stats *st)
{
	rq_call c;
	int rv;

	qpi_rq_call_init(&c, r, np != NULL ? QPI_OP_QSIZE : QPI_OP_STAT, 0);
	if ((rv = qpi_rq_check(r)) == QP_OK
	    && (rv = qpi_rq_run(r, &c)) == QP_OK) {
		if (np != NULL) {
			*np = c.rep.count;
		} else {
			*st = c.rep.stat;
		}
	}
	qpi_rq_call_done(&c);
	return rv;
}

static int
rq_qsize(void *impl, uint64_t *np)
{
	return rq_figures(impl, np, NULL);
}

static int
rq_stat(void *impl, qp_queue_stats *st)
{
	return rq_figures(impl, NULL, st);
}

static int
rq_full(void *impl, bool *fullp)
{
	qpi_rq *r = impl;
	qp_queue_stats st;
	int rv = rq_stat(r, &st);

	if (rv == QP_OK) {
		/* maxsize counts the ready items, as in shared memory; a
		 * queue whose storage is full but not its maxsize reads as
		 * not full here (stat does not say how much room is left). */
		*fullp = st.maxsize != 0 && st.items >= st.maxsize;
	}
	return rv;
}

/* Acks or touches the n leases at ids (n <= max_batch, the server's):
 * *lostp how many of them the server has no more. */
static int
rq_lease_op(qpi_rq *r, uint32_t op, uint64_t *ids, uint32_t n,
    uint64_t lease_ms, size_t *lostp)
{
	uint64_t one, *missing = n > 1 ? malloc(n * sizeof(*missing)) : &one;
	rq_call c;
	int rv;

	*lostp = 0;
	if (missing == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for %u leases", n);
	}
	qpi_rq_call_init(&c, r, op, 0);
	c.req.ids = ids;
	c.req.nids = n;
	c.req.ids_cap = n;
	c.req.lease_ms = lease_ms;
	c.rep.ids = missing;
	c.rep.ids_cap = n;
	if ((rv = qpi_rq_run(r, &c)) == QP_OK) {
		*lostp = c.rep.nids;
	}
	qpi_rq_call_done(&c);
	if (missing != &one) {
		free(missing);
	}
	return rv;
}

static int
rq_task_done(void *impl)
{
	qpi_rq *r = impl;
	rq_call c;
	int rv;

	if ((rv = qpi_rq_check(r)) != QP_OK) {
		return rv;
	}
	if (r->lease_mode) {
		uint64_t id;
		size_t lost;
		if (!qpi_ids_first(&r->held, &r->mu, &id, NULL)) {
			return qpi_err(QP_EVALUE,
			    "task_done() on %s/%s: this handle holds no task",
			    r->url, r->name);
		}
		rv = rq_lease_op(r, QPI_OP_ACK, &id, 1, 0, &lost);
		if (rv == QP_OK && lost > 0) {
			rv = qpi_err(QP_ENOENT,
			    "task_done() on %s/%s: the lease of the task ran "
			    "out first; the item went back to the queue",
			    r->url, r->name);
		}
		if (rv == QP_OK || rv == QP_ENOENT) {
			qpi_ids_done(&r->held, &r->mu, id);
		}
		return rv;
	}
	qpi_rq_call_init(&c, r, QPI_OP_TASK_DONE, 0);
	c.req.count = 1;
	rv = qpi_rq_run(r, &c);
	qpi_rq_call_done(&c);
	return rv;
}

/* Worker mode: the oldest task held is confirmed and its result put on
 * results, a handle on the same server, by one complete request. */
static int
rq_complete(void *impl, qp_queue *results, const void *buf, size_t len,
    unsigned kind, int64_t deadline_ns)
{
	const qpi_queue_ops *ops;
	qpi_rq *r = impl, *res = qpi_queue_impl(results, &ops);
	uint8_t *tmp;
	uint64_t id;
	rq_call c;
	int rv;

	if ((rv = qpi_rq_check(r)) != QP_OK) {
		return rv;
	}
	if (ops != &qpi_remote_ops || strcmp(r->url, res->url) != 0) {
		return qpi_err(QP_ENOTSUP,
		    "complete: tasks on %s, results %s%s: one step needs both "
		    "queues on one server",
		    r->url, ops != &qpi_remote_ops ? "not on a server" : "on ",
		    ops != &qpi_remote_ops ? "" : res->url);
	}
	if (!qpi_ids_first(&r->held, &r->mu, &id, NULL)) {
		return qpi_err(QP_EVALUE,
		    "complete() on %s/%s: this handle holds no task", r->url,
		    r->name);
	}
	qpi_rq_call_init(&c, r, QPI_OP_COMPLETE, deadline_ns);
	if ((rv = qpi_rq_item(r, &c.req.item, kind == QPI_ITEM_BIN, buf, len,
	         &tmp, "result"))
	    != QP_OK) {
		return rv;
	}
	c.req.lease_id = id;
	snprintf(c.req.results, sizeof(c.req.results), "%s", res->name);
	rv = qpi_rq_do_status(r, &c, QP_EFULL);
	free(tmp);
	if (rv == QP_OK || rv == QP_ENOENT) {
		qpi_ids_done(&r->held, &r->mu, id);
	}
	return rv;
}

static int
rq_join(void *impl, int64_t deadline_ns)
{
	qpi_rq *r = impl;
	rq_call c;
	int rv;

	qpi_rq_call_init(&c, r, QPI_OP_JOIN, deadline_ns);
	if ((rv = qpi_rq_check(r)) != QP_OK) {
		return rv;
	}
	/* Waiting for ever: again after each slice. */
	return qpi_rq_do_status(r, &c, QP_ETIMEDOUT);
}

static int
rq_nack(void *impl, qp_duration delay)
{
	qpi_rq *r = impl;
	uint64_t id;
	rq_call c;
	int rv;

	if ((rv = qpi_rq_check(r)) != QP_OK) {
		return rv;
	}
	if (!qpi_ids_first(&r->held, &r->mu, &id, NULL)) {
		return qpi_err(QP_ENOENT, "nack on %s/%s: no item is held",
		    r->url, r->name);
	}
	qpi_rq_call_init(&c, r, QPI_OP_RELEASE, 0);
	c.req.lease_id = id;
	c.req.delay_ms = (uint64_t) delay;
	rv = qpi_rq_run(r, &c);
	qpi_rq_call_done(&c);
	if (rv == QP_OK || rv == QP_ENOENT) {
		qpi_ids_done(&r->held, &r->mu, id);
	}
	return rv == QP_ENOENT ? QP_OK : rv; /* gone back already */
}

static int
rq_touch(void *impl, qp_duration lease)
{
	qpi_rq *r = impl;
	uint64_t *ids = NULL;
	uint32_t batch = r->lim.max_batch; /* never 0 (rq_hook) */
	size_t n, lost = 0, k;
	int rv;

	if ((rv = qpi_rq_check(r)) != QP_OK) {
		return rv;
	}
	/* A copy of the ids: the list may change while the calls are out. */
	pthread_mutex_lock(&r->mu);
	n = r->held.n;
	if (n > 0 && (ids = malloc(n * sizeof(*ids))) != NULL) {
		memcpy(ids, r->held.id, n * sizeof(*ids));
	}
	pthread_mutex_unlock(&r->mu);
	if (n == 0) {
		return qpi_err(QP_ENOENT, "touch on %s/%s: no item is held",
		    r->url, r->name);
	}
	if (ids == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory for a touch");
	}
	for (size_t i = 0; i < n && rv == QP_OK; i += batch) {
		rv = rq_lease_op(r, QPI_OP_TOUCH, ids + i,
		    (uint32_t) (n - i < batch ? n - i : batch),
		    lease != 0 ? (uint64_t) lease : r->lease_ms, &k);
		lost += k;
	}
	free(ids);
	if (rv == QP_EPROTO) {
		return qpi_err(QP_ENOTSUP,
		    "touch on %s/%s: the server does not know the touch op "
		    "(an older qpiped)",
		    r->url, r->name);
	}
	if (rv == QP_OK && lost > 0) {
		/* Kept in the list: task_done on them says the same. */
		rv = qpi_err(QP_ENOENT,
		    "touch on %s/%s: %zu of %zu leases had run out already; "
		    "those items went back to the queue",
		    r->url, r->name, lost, n);
	}
	return rv;
}

static int
rq_deliveries(void *impl, uint32_t *np)
{
	qpi_rq *r = impl;
	int rv = QP_OK;

	pthread_mutex_lock(&r->mu);
	if (r->lease_mode && r->held.n > 0) {
		*np = (uint32_t) r->held.val[0];
	} else if (!r->lease_mode && r->have_last) {
		*np = r->last_deliveries;
	} else {
		rv = qpi_err(QP_ENOENT, "no item got yet");
	}
	pthread_mutex_unlock(&r->mu);
	return rv;
}

int
qpi_rq_unlink(const qpi_addr *a, const qp_conn_opts *o)
{
	qpi_rq *r;
	rq_call c;
	int rv;

	if ((rv = qpi_rq_new(&r, a, o)) != QP_OK) {
		return rv;
	}
	qpi_rq_call_init(&c, r, QPI_OP_DELETE, 0);
	rv = qpi_rq_run(r, &c);
	qpi_rq_call_done(&c);
	qpi_rq_free(r);
	return rv;
}

QP_API int
qp_server_list_opts(const char *addr, const qp_conn_opts *conn,
    qp_queue_info **listp, size_t *np)
{
	qpi_wire_qentry *ents;
	qp_queue_info *out;
	qpi_addr a;
	qpi_rq *r;
	rq_call c;
	int rv;

	if (addr == NULL || listp == NULL || np == NULL) {
		return qpi_err(QP_EINVAL, "qp_server_list: NULL argument");
	}
	if ((rv = qpi_addr_parse(addr, QPI_ADDR_SERVER, &a)) != QP_OK
	    || (rv = qpi_rq_new(&r, &a, conn)) != QP_OK) {
		return rv;
	}
	if ((ents = calloc(QPI_WIRE_DEFAULT_BATCH, sizeof(*ents))) == NULL) {
		qpi_rq_free(r);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	qpi_rq_call_init(&c, r, QPI_OP_LIST, 0);
	c.rep.queues = ents;
	c.rep.queues_cap = QPI_WIRE_DEFAULT_BATCH;
	rv = qpi_rq_run(r, &c);
	if (rv == QP_OK) {
		size_t n = c.rep.nqueues;
		if ((out = calloc(n > 0 ? n : 1, sizeof(*out))) == NULL) {
			rv = qpi_err(QP_ENOMEM, "out of memory");
		} else {
			for (size_t i = 0; i < n; i++) {
				snprintf(out[i].name, sizeof(out[i].name),
				    "%s", ents[i].name);
				out[i].stat = ents[i].stat;
			}
			*listp = out;
			*np = n;
		}
	}
	qpi_rq_call_done(&c);
	free(ents);
	qpi_rq_free(r);
	return rv;
}

/* ---- one item kept ahead, for the readiness fd ----
 *
 * qp_queue_fd on a remote handle starts a thread that gets one item
 * (leased to the connection for PF_LEASE_MS, renewed every PF_RENEW_MS
 * while it waits) and keeps it, the eventfd readable, until a get of the
 * handle takes it: then the lease becomes the handle's (a plain handle
 * confirms it, a QP_OPEN_LEASE handle's runs lease_ms from then on). A
 * lease the server no longer has (a restart, an expiry) is dropped and
 * the next item taken. A close ends the thread (its call ends with the
 * connection); a dropped connection gives the item back to the queue.
 * pf->mu guards the slot; never held across a call. */

struct rq_pf {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* the slot changed, or stop */
	pthread_t thr; /* runs from the slot's making on */
	pid_t pid;
	int efd; /* readable while full (written with mu held) */
	bool stop;
	bool full;
	uint8_t *item; /* the item's msgpack encoding */
	size_t len;
	uint64_t lease_id;
	uint32_t deliveries;
	int64_t renewed_ms;
};

static pthread_mutex_t pf_make_mu = PTHREAD_MUTEX_INITIALIZER;

static rq_pf *
pf_of(qpi_rq *r)
{
	rq_pf *pf = __atomic_load_n(&r->pf, __ATOMIC_ACQUIRE);

	return pf != NULL && pf->pid == getpid() ? pf : NULL;
}

static void *
pf_main(void *arg)
{
	qpi_rq *r = arg;
	rq_pf *pf = r->pf;

	pthread_mutex_lock(&pf->mu);
	while (!pf->stop) {
		if (pf->full) {
			int64_t due = (pf->renewed_ms + PF_RENEW_MS) * 1000000;
			if (qpi_cond_wait(&pf->cv, &pf->mu, due)
			        != QP_ETIMEDOUT
			    || !pf->full || pf->stop) {
				continue;
			}
			uint64_t id = pf->lease_id;
			size_t lost;
			pthread_mutex_unlock(&pf->mu);
			(void) rq_lease_op(
			    r, QPI_OP_TOUCH, &id, 1, PF_LEASE_MS, &lost);
			pthread_mutex_lock(&pf->mu);
			pf->renewed_ms = qpi_now_ms();
			if (lost > 0 && pf->full && pf->lease_id == id) {
				free(pf->item);
				pf->item = NULL;
				pf->full = false;
				qpi_efd_set(pf->efd, false);
			}
			continue;
		}
		pthread_mutex_unlock(&pf->mu);
		qpi_wire_item item;
		rq_call c;
		int rv = rq_get_call(r, &c, &item, 1, INT64_MAX, true);
		uint8_t *copy = NULL;
		if (rv == QP_OK && (copy = malloc(item.len + 1)) != NULL) {
			memcpy(copy, item.data, item.len);
		}
		pthread_mutex_lock(&pf->mu);
		if (rv == QP_OK && copy != NULL && !pf->stop) {
			pf->item = copy;
			pf->len = item.len;
			pf->lease_id = item.lease_id;
			pf->deliveries = item.deliveries;
			pf->renewed_ms = qpi_now_ms();
			pf->full = true;
			qpi_efd_set(pf->efd, true);
			pthread_cond_broadcast(&pf->cv);
			qpi_rq_call_done(&c);
		} else if (rv == QP_OK) {
			/* Out of memory or closing: back to the queue. */
			free(copy);
			pthread_mutex_unlock(&pf->mu);
			if (!r->closed) {
				rq_release(r, item.lease_id);
			}
			qpi_rq_call_done(&c);
			pthread_mutex_lock(&pf->mu);
			if (!pf->stop) {
				qpi_cond_wait(&pf->cv, &pf->mu,
				    qpi_now_ns() + PF_BACKOFF_MS * 1000000ll);
			}
		} else if (rv == QP_ECLOSED) {
			break;
		} else if (!pf->stop) {
			/* The server is away: try again in a moment. */
			qpi_cond_wait(&pf->cv, &pf->mu,
			    qpi_now_ns() + PF_BACKOFF_MS * 1000000ll);
		}
	}
	pthread_mutex_unlock(&pf->mu);
	qpi_err_clear();
	return NULL;
}

/* Takes the item kept ahead, waiting until deadline_ns for one; QP_EEMPTY
 * when none came, QP_ECLOSED once stopped. */
static int
pf_take(qpi_rq *r, rq_pf *pf, int64_t deadline_ns, qpi_wire_item *it)
{
	pthread_mutex_lock(&pf->mu);
	while (!pf->full && !pf->stop && deadline_ns != 0) {
		if (qpi_cond_wait(&pf->cv, &pf->mu, deadline_ns)
		    == QP_ETIMEDOUT) {
			break;
		}
	}
	if (!pf->full) {
		bool stop = pf->stop;
		pthread_mutex_unlock(&pf->mu);
		return stop
		    ? qpi_err(
		        QP_ECLOSED, "%s/%s: handle closed", r->url, r->name)
		    : qpi_err(QP_EEMPTY, "%s/%s is empty", r->url, r->name);
	}
	it->data = pf->item;
	it->len = pf->len;
	it->lease_id = pf->lease_id;
	it->deliveries = pf->deliveries;
	pf->item = NULL;
	pf->full = false;
	qpi_efd_set(pf->efd, false);
	pthread_cond_broadcast(&pf->cv);
	pthread_mutex_unlock(&pf->mu);
	return QP_OK;
}

static int
pf_get(qpi_rq *r, rq_pf *pf, unsigned flags, void *into, size_t cap,
    void **bufp, size_t *lenp, int64_t deadline_ns)
{
	for (;;) {
		qpi_wire_item it;
		size_t lost = 0;
		int rv;

		if ((rv = qpi_rq_check(r)) != QP_OK
		    || (rv = pf_take(r, pf, deadline_ns, &it)) != QP_OK) {
			return rv;
		}
		/* The lease becomes the handle's: confirmed (plain), or
		 * running lease_ms from now (worker mode). */
		if ((rv = rq_item_out(r, &it, flags, into, cap, bufp, lenp))
		    != QP_OK) {
			rq_release(r, it.lease_id);
		} else if ((rv = rq_lease_op(r,
		                r->lease_mode ? QPI_OP_TOUCH : QPI_OP_ACK,
		                &it.lease_id, 1,
		                r->lease_mode ? r->lease_ms : 0, &lost))
		        != QP_OK
		    || lost > 0) {
			if (into == NULL) {
				free(*bufp); /* it went back: take the next */
				*bufp = NULL;
			}
		} else if (r->lease_mode) {
			qpi_rq_got(r, &it, 1); /* held until task_done */
		} else {
			pthread_mutex_lock(&r->mu);
			r->last_deliveries = it.deliveries;
			r->have_last = true;
			pthread_mutex_unlock(&r->mu);
		}
		free((void *) it.data);
		if (rv != QP_OK || lost == 0) {
			return rv;
		}
	}
}

static int
rq_fd(void *impl, int *fdp)
{
	qpi_rq *r = impl;
	rq_pf *pf;
	int rv = QP_OK;

	if ((rv = qpi_rq_check(r)) != QP_OK) {
		return rv;
	}
	pthread_mutex_lock(&pf_make_mu);
	if ((pf = pf_of(r)) == NULL) {
		/* A forked child's copy of the parent's is left alone. */
		if ((pf = calloc(1, sizeof(*pf))) == NULL) {
			rv = qpi_err(QP_ENOMEM, "out of memory");
			goto out;
		}
		pf->pid = getpid();
		pf->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (pf->efd < 0) {
			rv = qpi_err(
			    QP_ESYSTEM, "eventfd: %s", strerror(errno));
			free(pf);
			goto out;
		}
		pthread_mutex_init(&pf->mu, NULL);
		qpi_cond_init(&pf->cv);
		__atomic_store_n(&r->pf, pf, __ATOMIC_RELEASE);
		if (pthread_create(&pf->thr, NULL, pf_main, r) != 0) {
			__atomic_store_n(&r->pf, NULL, __ATOMIC_RELEASE);
			close(pf->efd);
			pthread_mutex_destroy(&pf->mu);
			pthread_cond_destroy(&pf->cv);
			free(pf);
			rv = qpi_err(QP_ESYSTEM, "cannot start a thread");
			goto out;
		}
	}
	*fdp = pf->efd;
out:
	pthread_mutex_unlock(&pf_make_mu);
	return rv;
}

static int
rq_ready(void *impl, bool *readyp)
{
	qpi_rq *r = impl;
	rq_pf *pf = pf_of(r);
	uint64_t n = 0;
	int rv;

	if (pf != NULL) {
		pthread_mutex_lock(&pf->mu);
		*readyp = pf->full;
		pthread_mutex_unlock(&pf->mu);
		return QP_OK;
	}
	if ((rv = rq_qsize(r, &n)) == QP_OK) {
		*readyp = n > 0;
	}
	return rv;
}

/* ---- the backend of qp_queue_* (queue.h) ---- */

static void
rq_close_op(void *impl)
{
	qpi_rq *r = impl;
	rq_pf *pf = pf_of(r);

	if (pf != NULL) {
		pthread_mutex_lock(&pf->mu);
		pf->stop = true;
		pthread_cond_broadcast(&pf->cv);
		pthread_mutex_unlock(&pf->mu);
	}
	qpi_rq_close(r); /* its connection's end ends the thread's call */
}

static void
rq_free_op(void *impl)
{
	qpi_rq *r = impl;
	rq_pf *pf = pf_of(r);

	if (pf != NULL) {
		pthread_join(pf->thr, NULL);
		free(pf->item);
		close(pf->efd);
		pthread_mutex_destroy(&pf->mu);
		pthread_cond_destroy(&pf->cv);
		free(pf);
		r->pf = NULL;
	}
	qpi_rq_free(r);
}

const qpi_queue_ops qpi_remote_ops = {
    .put = rq_put,
    .get = rq_get,
    .qsize = rq_qsize,
    .full = rq_full,
    .task_done = rq_task_done,
    .join = rq_join,
    .stat = rq_stat,
    .nack = rq_nack,
    .deliveries = rq_deliveries,
    .touch = rq_touch,
    .complete = rq_complete,
    .fd = rq_fd,
    .ready = rq_ready,
    .close = rq_close_op,
    .free = rq_free_op,
};

QP_API int
qp_server_list(const char *addr, qp_queue_info **listp, size_t *np)
{
	return qp_server_list_opts(addr, NULL, listp, np);
}
