/*
 * hosted.c - the queues qpiped hosts: this host's shared-memory queues
 * (lib/shmq.h), opened on first use and kept open, with their leases in
 * the segment (owner tokens, expiries, delivery counts), so that a killed
 * server loses none: the next one, on the first request for each queue,
 * returns the leases whose holders are gone (qpi_shmq_release_stale): those
 * of the killed server and of dead local workers. One server per
 * host serves a given queue.
 *
 * Local processes put into and get from the same segments without the
 * server. To serve parked remote requests at once when that happens, the
 * watcher threads sleep on the watch words of the queues that have parked
 * requests, up to 127 queues per thread in one futex_waitv() (a thread per
 * queue where the kernel lacks it), plus a word of their own that is
 * bumped when their set changes. Lease expiries fire from the timer
 * thread at the nearest expiry the segment reports.
 *
 * Durable queues (--data-dir DIR) live in DIR/NAME.qlog, a log of puts
 * and confirmations (lib/durq.h) replayed at start into a queue private to
 * the server: they are served through the server only (no /dev/shm
 * segment), their puts are in the log before they are acknowledged, and
 * a lease is confirmed in the log only by its ack, so leased items are
 * ready again after a restart. Every file is validated at start: a torn
 * tail is cut (logged), a file with a bad record before its end is
 * quarantined: logged, kept as it is, every request naming the queue
 * answered QP_ECORRUPT until it is deleted.
 *
 * Put requests with a client id go in tagged (qpi_shmq_put_tagged, the
 * log's PUT_TAG records): when the server first hosts a queue it reads
 * back which requests are in it (q_seed) into dedup.c, so that a request
 * whose reply an earlier, killed server never sent is answered, not
 * stored again.
 *
 * A local process stopped (or slow) while it holds a queue's lock must not
 * stall the server: every server thread tries a lock for at most
 * QPS_LOCK_BUDGET_NS (qpi_shmq_lock_budget), and a call that cannot take
 * it changes nothing and answers QP_EBUSY. The queue is then marked busy:
 * the request layer parks what comes for it without trying, and one
 * probe timer (1 ms, doubling to 50 ms) retries: it does the background
 * work that met the lock (leases of closed connections, acks, expiries,
 * kept in q->pend), then kicks the parked requests.
 *
 * Locking: everything here runs under the ops lock (hs.mu), the watcher
 * threads included except while they sleep in the kernel.
 */
#include "durq.h"
#include "futex.h"
#include "qps.h"
#include "shmq.h"
#include "wire.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef FUTEX_32
#define FUTEX_32 2
#endif

/* The kernel's struct futex_waitv (Linux 5.16). */
struct wv_entry {
	uint64_t val;
	uint64_t uaddr;
	uint32_t flags;
	uint32_t reserved;
};

#define WG_MAX 127

struct qps_wgroup {
	pthread_t thr;
	bool started;
	uint32_t ctl; /* futex word: bumped when the set changes or at stop */
	qps_q *qs[WG_MAX];
	int n;
	struct qps_wgroup *next;
};

static struct {
	pthread_mutex_t *mu;
	const qps_config *cfg;
	qps_htab qs;
	qps_q *head;
	qps_wgroup *groups;
	bool stop;
	int waitv; /* 1: futex_waitv works, 0: it does not, -1: unknown */
	qpi_fsync fsync; /* durable queues' default policy */
	struct quar *quar; /* quarantined durable queues */
} hs = {.waitv = -1};

/* A durable queue whose file failed its checks: not served. */
struct quar {
	struct quar *next;
	char name[QP_NAME_MAX + 1];
	char why[400];
};

static const char *const dur_ext = ".qlog";

static const char *const shm_prefix = "qpipe.";

/* Background work that met a queue's lock held, retried by its probe. */
typedef struct qps_pend {
	struct qps_pend *next;
	enum { PEND_OWNER, PEND_ACK } kind;
	uint64_t v; /* the owner token, or the lease id */
	bool done; /* PEND_ACK: a task_done goes with it */
} qps_pend;

/* ---- segment identity ---- */

static uint64_t
q_inode(const char *name)
{
	char path[PATH_MAX];
	struct stat st;

	snprintf(
	    path, sizeof(path), "%s/%s%s", qpi_shm_dir(), shm_prefix, name);
	if (stat(path, &st) != 0) {
		return 0;
	}
	return (uint64_t) st.st_ino;
}

bool
qps_q_stale(qps_q *q)
{
	return q->dur == NULL && q_inode(q->name) != q->ino;
}

/* ---- durable queues' files ---- */

static bool
dur_path(const char *name, char *path, size_t cap)
{
	return hs.cfg->data_dir != NULL
	    && (size_t) snprintf(
	           path, cap, "%s/%s%s", hs.cfg->data_dir, name, dur_ext)
	    < cap;
}

static struct quar *
quar_find(const char *name)
{
	for (struct quar *z = hs.quar; z != NULL; z = z->next) {
		if (strcmp(z->name, name) == 0) {
			return z;
		}
	}
	return NULL;
}

static void
quar_add(const char *name, const char *why)
{
	struct quar *z = quar_find(name);

	if (z == NULL && (z = calloc(1, sizeof(*z))) != NULL) {
		snprintf(z->name, sizeof(z->name), "%s", name);
		z->next = hs.quar;
		hs.quar = z;
	}
	if (z != NULL) {
		snprintf(z->why, sizeof(z->why), "%s", why);
	}
	qps_log(QPS_LOG_ERROR,
	    "durable queue '%s' QUARANTINED, not served: %s (requests on it "
	    "get ECORRUPT; repair or move the file, or delete the queue)",
	    name, why);
}

static void
quar_drop(const char *name)
{
	for (struct quar **zp = &hs.quar; *zp != NULL; zp = &(*zp)->next) {
		if (strcmp((*zp)->name, name) == 0) {
			struct quar *z = *zp;
			*zp = z->next;
			free(z);
			return;
		}
	}
}

/* ---- a lock held by another process ---- */

/* q's lock was found held: requests park without trying, and the probe
 * retries after a backoff. */
static void
q_busy(qps_q *q)
{
	q->busy = true;
	if (q->probe_timer.idx == SIZE_MAX) {
		q->probe_ns = q->probe_ns == 0           ? QPS_PROBE_MIN_NS
		    : q->probe_ns * 2 > QPS_PROBE_MAX_NS ? QPS_PROBE_MAX_NS
		                                         : q->probe_ns * 2;
		qps_timer_arm(&q->probe_timer, qpi_now_ns() + q->probe_ns);
	}
}

static void q_probe_fire(qps_timer *t);

/* Passes rv on, noting a held lock. */
static int
q_rv(qps_q *q, int rv)
{
	if (rv == QP_EBUSY) {
		q_busy(q);
	}
	return rv;
}

static void
pend_add(qps_q *q, int kind, uint64_t v, bool done)
{
	qps_pend *p = calloc(1, sizeof(*p));

	if (p == NULL) {
		qps_log(QPS_LOG_ERROR,
		    "out of memory: queue '%s': a lease left for later is "
		    "given back when it expires",
		    q->name);
		return;
	}
	p->kind = kind;
	p->v = v;
	p->done = done;
	if (q->pend_tail != NULL) {
		q->pend_tail->next = p;
	} else {
		q->pend = p;
	}
	q->pend_tail = p;
	q_busy(q);
}

static void pend_free(qps_q *q);

/* ---- lease expiries ---- */

static void
q_lease_fire(qps_timer *t)
{
	qps_q *q = (qps_q *) ((char *) t - offsetof(qps_q, lease_timer));
	int64_t next = INT64_MAX;
	size_t n = 0;
	int rv = q_rv(q, qpi_shmq_expire(q->shm, qpi_now_ms(), &n, &next));

	q->expire_due = rv == QP_EBUSY; /* the probe does it */
	if (rv != QP_OK) {
		next = INT64_MAX;
	}
	if (q->dur != NULL && n > 0) {
		qpi_durq_leases_gc(q->dur);
	}
	if (n > 0) {
		qps_log(QPS_LOG_INFO,
		    "queue '%s': %zu leases ran out; their items are back at "
		    "the head",
		    q->name, n);
	}
	if (next != INT64_MAX) {
		qps_timer_arm(&q->lease_timer,
		    next >= INT64_MAX / 1000000 ? INT64_MAX : next * 1000000);
	}
	if (n > 0) {
		qps_ops_kick(q);
	}
}

/* Local workers (qpipe worker on shm://) lease with their own process
 * token and no expiry. A dead one's leases return when another local
 * worker gets, or here: once a second while queues are hosted, the leases
 * of processes that are gone go back to the head (a kill(pid, 0) per
 * local lease; a dead pid raises no event to wait on). The same tick
 * retries each queue's parked requests: a local process killed between
 * its put's commit and its bump of the watch word tells nobody. */
#define SWEEP_NS (1000 * 1000000LL)

static qps_timer sweep_timer;
static bool sweep_ready;

static void
sweep_fire(qps_timer *t)
{
	for (qps_q *q = hs.head; q != NULL; q = q->next) {
		size_t n = 0;
		if (q->dur == NULL && !q->busy
		    && q_rv(q, qpi_shmq_release_dead(q->shm, &n)) == QP_OK
		    && n > 0) {
			qps_log(QPS_LOG_INFO,
			    "queue '%s': %zu leases of local processes that "
			    "are gone are back at the head",
			    q->name, n);
		}
		qps_ops_kick(q);
	}
	if (hs.head != NULL) {
		qps_timer_arm(t, qpi_now_ns() + SWEEP_NS);
	}
}

static void
sweep_due(void)
{
	if (!sweep_ready) {
		qps_timer_init(&sweep_timer, sweep_fire);
		sweep_ready = true;
	}
	if (sweep_timer.idx == SIZE_MAX) {
		qps_timer_arm(&sweep_timer, qpi_now_ns() + SWEEP_NS);
	}
}

/* Makes sure the timer fires by expiry_ms (monotonic ms). */
static void
q_lease_due(qps_q *q, int64_t expiry_ms)
{
	int64_t ns;

	if (expiry_ms == INT64_MAX || expiry_ms >= INT64_MAX / 1000000) {
		return;
	}
	ns = expiry_ms * 1000000;
	if (q->lease_timer.idx == SIZE_MAX
	    || ns < q->lease_timer.deadline_ns) {
		qps_timer_arm(&q->lease_timer, ns);
	}
}

/* ---- open, create, forget ---- */

qps_q *
qps_q_find(const char *name)
{
	size_t len = strlen(name);

	for (qps_hnode *n = qps_htab_find(&hs.qs, qps_hash(name, len));
	     n != NULL; n = qps_htab_next(n)) {
		qps_q *q = (qps_q *) n;
		if (strcmp(q->name, name) == 0) {
			return q;
		}
	}
	return NULL;
}

/* Returns the leases in q whose holders are gone: its first request
 * through this server. A lease handed out by an earlier server (killed:
 * its connections are all gone) goes back, as does one of a local worker
 * that died; a live local worker keeps its own. */
static void
q_reclaim(qps_q *q)
{
	size_t n = 0;

	int rv = q_rv(q, qpi_shmq_release_stale(q->shm, &n));

	q->reclaimed = rv != QP_EBUSY; /* else the next request tries */
	if (rv == QP_OK && n > 0) {
		qps_log(QPS_LOG_INFO,
		    "queue '%s': %zu items leased by an earlier server or a "
		    "dead worker are back at the head",
		    q->name, n);
	}
}

/* Opens (flags: QP_OPEN_CREATE, EXCL) the durable queue name: its file
 * is validated and replayed; a torn tail is cut and logged. A corrupt
 * file is quarantined. d gets the log, *lease_msp its stored lease. */
static int
dur_open(const char *name, unsigned flags, const qps_q_opts *o, qpi_durq **dp,
    uint64_t *lease_msp)
{
	char path[PATH_MAX];
	qpi_durq_cfg c;
	qpi_durq_info info;
	char pol[QPI_FSYNC_STR_MAX];
	int rv;

	if (!dur_path(name, path, sizeof(path))) {
		return qpi_err(
		    QP_EINVAL, "the data directory path is too long");
	}
	memset(&c, 0, sizeof(c));
	c.capacity = hs.cfg->max_queue_bytes;
	c.max_message = hs.cfg->max_message;
	if (o != NULL) {
		if (o->maxsize != 0) {
			c.maxsize = o->maxsize;
		}
		if (o->capacity != 0) {
			c.capacity = o->capacity;
		}
		if (o->max_message != 0) {
			c.max_message = o->max_message;
		}
		c.lease_ms = o->lease_ms;
		if ((rv = qpi_fsync_parse(o->fsync, &c.fsync)) != QP_OK) {
			return rv;
		}
	}
	rv = qpi_durq_open(dp, path, flags, &c, &hs.fsync, &info);
	if (rv == QP_ECORRUPT || rv == QP_EVERSION) {
		char why[400];
		snprintf(why, sizeof(why), "%s", qp_errmsg());
		quar_add(name, why);
		return qpi_err(QP_ECORRUPT, "quarantined: %s", why);
	}
	if (rv != QP_OK) {
		return rv;
	}
	qpi_durq_settings(*dp, &c);
	qpi_fsync_format(&c.fsync, pol, sizeof(pol));
	if (info.cut_bytes > 0) {
		qps_log(QPS_LOG_WARN,
		    "durable queue '%s': torn tail in %s: cut %llu bytes at "
		    "offset %llu (a record cut short); the %llu complete "
		    "records before it are kept",
		    name, path, (unsigned long long) info.cut_bytes,
		    (unsigned long long) info.cut_at,
		    (unsigned long long) info.records);
	}
	qps_log(QPS_LOG_INFO,
	    "durable queue '%s': %llu items from %s (%llu records, fsync %s)",
	    name, (unsigned long long) info.items, path,
	    (unsigned long long) info.records, pol);
	*lease_msp = c.lease_ms;
	return QP_OK;
}

/* A restarted server learns which put requests are in the queue already
 * (the segment's table, or the log's tags): their repeats are answered
 * without a second store (PROTOCOL.md, idempotency). */
static void
q_seed(qps_q *q)
{
	qpi_shmq_tag *v = malloc(QPI_SHMQ_TAGS_MAX * sizeof(*v));
	size_t n = 0, k = 0;
	int rv;

	if (v == NULL) {
		qps_log(QPS_LOG_WARN,
		    "queue '%s': out of memory for its put requests: a "
		    "repeat of one sent before a restart is stored again",
		    q->name);
		return;
	}
	rv = q->dur != NULL ? qpi_durq_tags(q->dur, v, QPI_SHMQ_TAGS_MAX, &n)
	                    : qpi_shmq_tags(q->shm, v, QPI_SHMQ_TAGS_MAX, &n);
	q->seeded = q_rv(q, rv) != QP_EBUSY; /* else the next request */
	for (size_t i = 0; rv == QP_OK && i < n; i++) {
		k += qps_dedup_seed(v[i].client, v[i].seq, v[i].done, v[i].n);
	}
	if (k > 0) {
		qps_log(QPS_LOG_DEBUG,
		    "queue '%s': %zu put requests of earlier servers known",
		    q->name, k);
	}
	free(v);
}

/* Hosts the queue name: the shared-memory segment (flags, cfg), or with
 * dur != NULL the durable queue dur (owned by q from now on). */
static int
q_attach(const char *name, unsigned flags, const qpi_shmq_cfg *cfg,
    uint64_t lease_ms, qpi_durq *dur, qps_q **qp)
{
	qps_q *q = calloc(1, sizeof(*q));
	int rv;

	if (q == NULL) {
		qpi_durq_free(dur);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	if (dur != NULL) {
		q->dur = dur;
		q->shm = qpi_durq_shm(dur);
	} else if ((rv = qpi_shmq_open(&q->shm, name, flags, cfg)) != QP_OK) {
		free(q);
		return rv;
	}
	snprintf(q->name, sizeof(q->name), "%s", name);
	q->ino = q->dur != NULL ? 0 : q_inode(name);
	q->lease_ms = lease_ms != 0 ? lease_ms : (uint64_t) hs.cfg->lease_ms;
	q->node.key = qps_hash(name, strlen(name));
	qps_timer_init(&q->lease_timer, q_lease_fire);
	qps_timer_init(&q->probe_timer, q_probe_fire);
	qps_htab_insert(&hs.qs, &q->node);
	q->next = hs.head;
	if (hs.head != NULL) {
		hs.head->prev = q;
	}
	hs.head = q;
	sweep_due();
	q_seed(q);
	*qp = q;
	return QP_OK;
}

static qpi_shmq_cfg
q_default_cfg(void)
{
	qpi_shmq_cfg c;

	memset(&c, 0, sizeof(c));
	c.capacity = hs.cfg->max_queue_bytes;
	c.max_message = hs.cfg->max_message;
	return c;
}

/* A durable queue that is not hosted yet: quarantined, or a file that
 * appeared in the data directory since the start. */
static int
dur_lookup(const char *name, qps_q **qp)
{
	char path[PATH_MAX];
	struct quar *z = quar_find(name);
	qpi_durq *d;
	uint64_t lease_ms = 0;
	int rv;

	if (z != NULL) {
		return qpi_err(QP_ECORRUPT, "quarantined: %s", z->why);
	}
	if (!dur_path(name, path, sizeof(path)) || access(path, F_OK) != 0) {
		return QP_ENOENT;
	}
	if ((rv = dur_open(name, 0, NULL, &d, &lease_ms)) != QP_OK) {
		return rv;
	}
	return q_attach(name, 0, NULL, lease_ms, d, qp);
}

int
qps_q_open(const char *name, bool create, qps_q **qp)
{
	qps_q *q = qps_q_find(name);
	qpi_shmq_cfg cfg = q_default_cfg();
	int rv;

	if (q == NULL && (rv = dur_lookup(name, &q)) != QP_ENOENT
	    && rv != QP_OK) {
		return rv;
	}
	if (q == NULL) {
		rv = q_attach(
		    name, create ? QP_OPEN_CREATE : 0, &cfg, 0, NULL, &q);
		if (rv != QP_OK) {
			return rv;
		}
	}
	if (!q->seeded && !q->busy) {
		q_seed(q);
	}
	if (!q->reclaimed && !q->busy) {
		q_reclaim(q);
	}
	*qp = q;
	return QP_OK;
}

int
qps_q_create(const char *name, const qps_q_opts *o, qps_q **qp)
{
	qps_q *q = qps_q_find(name);
	qpi_shmq_cfg cfg = q_default_cfg();
	int rv;

	if (q == NULL && (rv = dur_lookup(name, &q)) != QP_ENOENT
	    && rv != QP_OK) {
		return rv;
	}
	if (o->durable && q == NULL && q_inode(name) != 0) {
		return qpi_err(QP_EEXIST,
		    "queue '%s' exists in shared memory, not durable: delete "
		    "it first",
		    name);
	}
	if (o->durable && q != NULL && q->dur == NULL) {
		return qpi_err(QP_EEXIST,
		    "queue '%s' exists and is not durable: delete it first",
		    name);
	}
	if (o->durable && q == NULL) {
		qpi_durq *d;
		uint64_t lease_ms = 0;
		if (hs.cfg->data_dir == NULL) {
			return qpi_err(QP_EINVAL,
			    "a durable queue needs the server started with "
			    "--data-dir");
		}
		rv = dur_open(name,
		    QP_OPEN_CREATE | (o->excl ? QP_OPEN_EXCL : 0), o, &d,
		    &lease_ms);
		if (rv == QP_OK
		    && (rv = q_attach(name, 0, NULL, lease_ms, d, &q))
		        == QP_OK) {
			q->reclaimed = true;
			qps_log(
			    QPS_LOG_INFO, "durable queue '%s' created", name);
			*qp = q;
		}
		return rv;
	}
	if (q != NULL) {
		if (o->excl) {
			return qpi_err(
			    QP_EEXIST, "queue '%s' exists already", name);
		}
		if (o->lease_ms != 0) {
			q->lease_ms = o->lease_ms;
		}
		if (!q->reclaimed) {
			q_reclaim(q);
		}
		*qp = q;
		return QP_OK;
	}
	if (o->maxsize != 0) {
		cfg.maxsize = o->maxsize;
	}
	if (o->capacity != 0) {
		cfg.capacity = o->capacity;
	}
	if (o->max_message != 0) {
		cfg.max_message = o->max_message;
	}
	rv = q_attach(name, QP_OPEN_CREATE | (o->excl ? QP_OPEN_EXCL : 0),
	    &cfg, o->lease_ms, NULL, &q);
	if (rv == QP_OK) {
		q_reclaim(q);
		*qp = q;
	}
	return rv;
}

static void wg_remove(qps_q *q);

void
qps_q_forget(qps_q *q)
{
	if (q->wg != NULL) {
		wg_remove(q);
	}
	qps_timer_cancel(&q->lease_timer);
	qps_timer_cancel(&q->probe_timer);
	pend_free(q);
	qps_htab_remove(&hs.qs, &q->node);
	if (q->prev != NULL) {
		q->prev->next = q->next;
	} else {
		hs.head = q->next;
	}
	if (q->next != NULL) {
		q->next->prev = q->prev;
	}
	if (q->dur != NULL) {
		qpi_durq_free(q->dur);
	} else {
		qpi_shmq_free(q->shm);
	}
	free(q);
}

int
qps_q_delete(const char *name, qps_q *q)
{
	char path[PATH_MAX];
	int rv;

	if ((q != NULL && q->dur != NULL) || quar_find(name) != NULL
	    || (q == NULL && dur_path(name, path, sizeof(path))
	        && access(path, F_OK) == 0)) {
		if (q != NULL) {
			qps_q_forget(q); /* closes (and unlocks) the file */
		}
		quar_drop(name);
		if (!dur_path(name, path, sizeof(path))) {
			return qpi_err(QP_EINVAL, "path too long");
		}
		return qpi_durq_unlink(path);
	}
	rv = qpi_shmq_unlink(name);
	if (q != NULL) {
		qps_q_forget(q);
	}
	return rv;
}

qps_q *
qps_q_first(void)
{
	return hs.head;
}

qps_q *
qps_q_next(qps_q *q)
{
	return q->next;
}

/* ---- items and leases ---- */

/* The kind and bytes to store for an item's encoding: a bin is stored as
 * its payload (raw bytes, as a local qp_queue_put stores them). */
static unsigned
q_item(const uint8_t *item, size_t len, const uint8_t **pp, size_t *lenp)
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

/* Group commit of "always" durable queues: the put of the request this
 * thread handles leaves its fdatasync for after the ops lock is
 * released. qps_q_sync_park then parks the request's worker and hands
 * its reply to the syncer thread, which makes one fdatasync for every
 * put that came while the previous one ran and sends their replies: nng's
 * threads never wait for the disk. Where a worker cannot be parked,
 * qps_q_sync_deferred syncs in the calling thread (sharing a sync under
 * way). Every other put (a parked one, served by whoever frees room)
 * syncs before it returns. */
static __thread struct {
	bool allowed;
	qpi_durq *d; /* held (qpi_durq_hold) until the sync */
	uint64_t ticket;
} defer;

void
qps_q_defer_sync(bool on)
{
	defer.allowed = on;
}

typedef struct sync_ent {
	struct sync_ent *next;
	qps_worker *w;
	nng_msg *rep;
	qpi_durq *d; /* held */
	uint64_t ticket;
	uint32_t op;
	uint64_t req_id;
	uint8_t client[QPS_CLIENT_ID_LEN]; /* the request's, for dedup */
	uint64_t seq;
	char name[QP_NAME_MAX + 1];
} sync_ent;

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* work came, or a round ended */
	sync_ent *head, *tail;
	bool busy, stop, started;
	pthread_t thr;
} sy = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void *
sy_main(void *arg)
{
	(void) arg;
	pthread_mutex_lock(&sy.mu);
	while (!sy.stop || sy.head != NULL) {
		if (sy.head == NULL) {
			pthread_cond_wait(&sy.cv, &sy.mu);
			continue;
		}
		sync_ent *e = sy.head;
		sy.head = sy.tail = NULL;
		sy.busy = true;
		pthread_mutex_unlock(&sy.mu);
		while (e != NULL) {
			sync_ent *next = e->next;
			/* The first of a queue syncs for all: the others
			 * find their ticket covered. */
			int rv = qpi_durq_sync_to(e->d, e->ticket);
			if (rv != QP_OK) {
				qps_log(QPS_LOG_ERROR,
				    "durable queue '%s': the log could not be "
				    "synced: %s; its puts are answered with "
				    "the "
				    "error",
				    e->name, qp_errmsg());
				nng_msg_free(e->rep);
				pthread_mutex_lock(hs.mu);
				qps_dedup_fail(e->client, e->seq, rv);
				pthread_mutex_unlock(hs.mu);
				e->rep = qps_rep_error(e->op, e->req_id, rv,
				    "put to '%s': the log could not be "
				    "synced: "
				    "%s",
				    e->name, qp_errmsg());
			}
			if (e->rep != NULL) {
				qps_worker_reply(e->w, e->rep);
			} else {
				qps_worker_drop(e->w);
			}
			qpi_durq_free(e->d);
			free(e);
			e = next;
		}
		pthread_mutex_lock(&sy.mu);
		sy.busy = false;
		pthread_cond_broadcast(&sy.cv);
	}
	pthread_mutex_unlock(&sy.mu);
	return NULL;
}

bool
qps_q_sync_park(qps_worker *w, nng_msg *rep, uint32_t op, uint64_t req_id,
    const char *name, const uint8_t *client, uint64_t seq)
{
	sync_ent *e;

	if (defer.d == NULL || !sy.started) {
		return false;
	}
	if ((e = calloc(1, sizeof(*e))) == NULL || !qps_worker_park(w)) {
		free(e);
		return false;
	}
	e->w = w;
	e->rep = rep;
	e->d = defer.d; /* its hold moves here */
	e->ticket = defer.ticket;
	e->op = op;
	e->req_id = req_id;
	memcpy(e->client, client, QPS_CLIENT_ID_LEN);
	e->seq = seq;
	snprintf(e->name, sizeof(e->name), "%s", name);
	defer.d = NULL;
	pthread_mutex_lock(&sy.mu);
	if (sy.tail != NULL) {
		sy.tail->next = e;
	} else {
		sy.head = e;
	}
	sy.tail = e;
	pthread_cond_broadcast(&sy.cv);
	pthread_mutex_unlock(&sy.mu);
	return true;
}

void
qps_q_sync_drain(void)
{
	pthread_mutex_lock(&sy.mu);
	while (sy.head != NULL || sy.busy) {
		pthread_cond_wait(&sy.cv, &sy.mu);
	}
	pthread_mutex_unlock(&sy.mu);
}

int
qps_q_sync_deferred(void)
{
	qpi_durq *d = defer.d;
	int rv;

	if (d == NULL) {
		return QP_OK;
	}
	defer.d = NULL;
	rv = qpi_durq_sync_to(d, defer.ticket);
	if (rv != QP_OK) {
		qps_log(QPS_LOG_ERROR,
		    "a durable queue's log could not be synced: %s; the puts "
		    "waiting for it are answered with the error",
		    qp_errmsg());
	}
	qpi_durq_free(d);
	return rv;
}

static int
q_put_durable(qps_q *q, const uint8_t *p, size_t plen, unsigned kind,
    const qpi_shmq_tag *tag)
{
	uint64_t ticket = 0;
	int rv;

	if (!defer.allowed || (defer.d != NULL && defer.d != q->dur)) {
		return tag != NULL
		    ? qpi_durq_put_tagged(q->dur, p, plen, kind, tag, NULL)
		    : qpi_durq_put(q->dur, p, plen, kind, 0);
	}
	rv = tag != NULL
	    ? qpi_durq_put_tagged(q->dur, p, plen, kind, tag, &ticket)
	    : qpi_durq_put_async(q->dur, p, plen, kind, &ticket);
	if (rv == QP_OK && ticket != 0) {
		if (defer.d == NULL) {
			qpi_durq_hold(q->dur);
			defer.d = q->dur;
		}
		defer.ticket = ticket;
	}
	return rv;
}

int
qps_q_put(qps_q *q, const uint8_t *item, size_t len, const qpi_shmq_tag *tag)
{
	const uint8_t *p;
	size_t plen;
	unsigned kind = q_item(item, len, &p, &plen);

	if (q->dur != NULL) {
		return q_put_durable(q, p, plen, kind, tag);
	}
	return q_rv(q,
	    tag != NULL ? qpi_shmq_put_tagged(q->shm, p, plen, kind, tag, 0)
	                : qpi_shmq_put(q->shm, p, plen, kind, 0));
}

/* A durable queue is the server's alone (its file is locked), and the ops
 * lock is held: checking room first makes the batch all or nothing. */
static int
q_put_many_durable(
    qps_q *q, const qpi_wire_item *items, uint32_t n, const qpi_shmq_tag *tag)
{
	qpi_shmq_tag t;
	qp_queue_stats st;
	uint64_t need = 0;
	uint32_t i;
	int rv;

	if ((rv = qps_q_stat(q, &st)) != QP_OK) {
		return rv;
	}
	for (i = 0; i < n; i++) {
		const uint8_t *p;
		size_t plen;
		q_item(items[i].data, items[i].len, &p, &plen);
		need += qpi_durq_rec_size(plen);
	}
	if ((st.maxsize != 0 && n > st.maxsize) || need > st.capacity) {
		return qpi_err(QP_ETOOBIG,
		    "a batch of %u items (%llu bytes stored) can never fit in "
		    "'%s' (maxsize %llu, %llu bytes)",
		    n, (unsigned long long) need, q->name,
		    (unsigned long long) st.maxsize,
		    (unsigned long long) st.capacity);
	}
	if (st.maxsize != 0 && st.items + n > st.maxsize) {
		return qpi_err(QP_EFULL, "queue '%s' is full", q->name);
	}
	memset(&t, 0, sizeof(t));
	if (tag != NULL) {
		t = *tag;
	}
	for (i = 0; i < n; i++) {
		/* Each record tagged with its index in the request. */
		t.base = tag != NULL ? tag->base + i : 0;
		if ((rv = qps_q_put(q, items[i].data, items[i].len,
		         tag != NULL ? &t : NULL))
		    != QP_OK) {
			break;
		}
	}
	if (i == n) {
		return QP_OK;
	}
	if (i > 0) {
		qps_log(QPS_LOG_WARN,
		    "queue '%s' filled up during a batch: %u of %u items "
		    "stored",
		    q->name, i, n);
		return qpi_err(rv,
		    "queue '%s' filled up during the batch: %u of %u items "
		    "stored",
		    q->name, i, n);
	}
	return rv;
}

int
qps_q_put_many(
    qps_q *q, const qpi_wire_item *items, uint32_t n, const qpi_shmq_tag *tag)
{
	qpi_shmq_item stack[64] = {{0}}, *it = stack;
	int rv;

	if (q->dur != NULL) {
		return q_put_many_durable(q, items, n, tag);
	}
	/* All or nothing, and no other item between them. */
	if (n > 64 && (it = malloc(n * sizeof(*it))) == NULL) {
		return qpi_err(
		    QP_ENOMEM, "out of memory for a batch of %u", n);
	}
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *p;
		it[i].kind
		    = q_item(items[i].data, items[i].len, &p, &it[i].len);
		it[i].buf = p;
	}
	rv = q_rv(q,
	    tag != NULL ? qpi_shmq_put_many_tagged(q->shm, it, n, tag, 0)
	                : qpi_shmq_put_many(q->shm, it, n, 0));
	if (it != stack) {
		free(it);
	}
	return rv;
}

int
qps_q_get(qps_q *q, uint64_t owner, uint32_t mode, uint64_t lease_ms,
    size_t max_len, qps_got *g)
{
	qpi_shmq_lease l;
	int rv;

	(void) mode;
	if (lease_ms == 0) {
		lease_ms = q->lease_ms;
	}
	rv = q->dur != NULL
	    ? qpi_durq_get_lease(q->dur, owner, (int64_t) lease_ms,
	        QPI_GET_OBJ, max_len, &g->data, &g->len, &l)
	    : qpi_shmq_get_lease_max(q->shm, owner, (int64_t) lease_ms,
	        QPI_GET_OBJ, max_len, &g->data, &g->len, &l, 0);
	if (q_rv(q, rv) != QP_OK) {
		return rv;
	}
	g->lease_id = l.id;
	g->deliveries = l.deliveries;
	q_lease_due(q, l.expiry_ms);
	return QP_OK;
}

int
qps_q_ack(qps_q *q, uint64_t lease_id)
{
	if (q->dur != NULL) {
		return qpi_durq_ack(q->dur, lease_id);
	}
	return q_rv(q, qpi_shmq_ack(q->shm, lease_id));
}

int
qps_q_release(qps_q *q, uint64_t owner, uint64_t lease_id, uint64_t delay_ms)
{
	int rv;

	(void) owner;
	if (delay_ms == 0) {
		rv = q_rv(q, qpi_shmq_release(q->shm, lease_id));
		if (q->dur != NULL) {
			qpi_durq_leases_gc(q->dur);
		}
		return rv;
	}
	/* Held a while longer, then its expiry gives it back. */
	rv = q_rv(q, qpi_shmq_renew(q->shm, lease_id, (int64_t) delay_ms));
	if (rv == QP_OK) {
		q_lease_due(q, qpi_now_ms() + (int64_t) delay_ms);
	}
	return rv;
}

int
qps_q_renew(qps_q *q, uint64_t lease_id, uint64_t lease_ms)
{
	int rv;

	if (lease_ms == 0) {
		lease_ms = q->lease_ms;
	}
	rv = q_rv(q, qpi_shmq_renew(q->shm, lease_id, (int64_t) lease_ms));
	if (rv == QP_OK) {
		/* An earlier firing finds nothing due and re-arms for the
		 * next expiry; a later one is brought forward. */
		q_lease_due(q, qpi_now_ms() + (int64_t) lease_ms);
	}
	return rv;
}

uint64_t
qps_q_release_owner(qps_q *q, uint64_t owner)
{
	size_t n = 0;
	int rv = q->busy ? QP_EBUSY
	                 : q_rv(q, qpi_shmq_release_owner(q->shm, owner, &n));

	if (rv == QP_EBUSY) {
		pend_add(q, PEND_OWNER, owner, false);
	}
	if (rv != QP_OK) {
		return 0;
	}
	if (q->dur != NULL) {
		qpi_durq_leases_gc(q->dur);
	}
	return n;
}

int
qps_q_task_done(qps_q *q, uint64_t n)
{
	int rv = QP_OK;

	for (uint64_t i = 0; i < n && rv == QP_OK; i++) {
		rv = q_rv(q, qpi_shmq_task_done(q->shm));
	}
	return rv;
}

bool
qps_q_joined(qps_q *q)
{
	qp_queue_stats st;

	return q_rv(q, qpi_shmq_stat(q->shm, &st)) == QP_OK
	    && st.unfinished == 0;
}

int
qps_q_qsize(qps_q *q, uint64_t *np)
{
	return q_rv(q, qpi_shmq_qsize(q->shm, np));
}

int
qps_q_stat(qps_q *q, qp_queue_stats *st)
{
	int rv = q->dur != NULL ? qpi_durq_stat(q->dur, st)
	                        : q_rv(q, qpi_shmq_stat(q->shm, st));

	if (rv == QP_OK) {
		/* Remote requests parked here wait too. */
		st->getters += q->nwait[QPS_WAIT_GET];
		st->putters += q->nwait[QPS_WAIT_PUT];
	}
	return rv;
}

int
qps_q_list(bool (*fn)(const char *name, const qp_queue_stats *st, void *arg),
    void *arg)
{
	const char *shm_dir = qpi_shm_dir();
	DIR *d = opendir(shm_dir);
	struct dirent *e;
	size_t plen = strlen(shm_prefix);

	if (d == NULL) {
		return qpi_err(QP_ESYSTEM, "cannot read %s: %s", shm_dir,
		    strerror(errno));
	}
	/* Durable queues: all hosted since the start (or quarantined). */
	for (qps_q *q = hs.head; q != NULL; q = q->next) {
		qp_queue_stats st;
		if (q->dur == NULL || qps_q_stat(q, &st) != QP_OK) {
			continue;
		}
		if (!fn(q->name, &st, arg)) {
			closedir(d);
			return QP_OK;
		}
	}
	while ((e = readdir(d)) != NULL) {
		const char *name = e->d_name + plen;
		qp_queue_stats st;
		qps_q *q;

		if (strncmp(e->d_name, shm_prefix, plen) != 0
		    || !qpi_name_valid(name, strlen(name))) {
			continue;
		}
		/* Listing does not reclaim leases: another server on this
		 * host may be serving the queue. */
		qpi_shmq_cfg cfg = q_default_cfg();
		if ((q = qps_q_find(name)) != NULL && q->dur != NULL) {
			continue; /* listed above */
		}
		if (q == NULL
		    && q_attach(name, 0, &cfg, 0, NULL, &q) != QP_OK) {
			continue; /* not a queue (a pipe, another layout) */
		}
		if (qps_q_stat(q, &st) != QP_OK) {
			continue;
		}
		if (!fn(name, &st, arg)) {
			break;
		}
	}
	closedir(d);
	return QP_OK;
}

/* ---- the probe of a busy queue ---- */

void
qps_q_ack_later(qps_q *q, uint64_t lease_id, bool done)
{
	pend_add(q, PEND_ACK, lease_id, done);
}

static void
pend_free(qps_q *q)
{
	uint64_t n = 0;

	while (q->pend != NULL) {
		qps_pend *p = q->pend;
		q->pend = p->next;
		free(p);
		n++;
	}
	q->pend_tail = NULL;
	if (n > 0) {
		qps_log(QPS_LOG_WARN,
		    "queue '%s': %llu lease returns left undone (its lock "
		    "is held by another process): the leases expire, or the "
		    "next server returns them",
		    q->name, (unsigned long long) n);
	}
}

/* Does q's kept background work in order; false if the lock is still
 * held (the rest stays). */
static bool
pend_run(qps_q *q)
{
	while (q->pend != NULL) {
		qps_pend *p = q->pend;
		size_t n = 0;
		int rv;
		if (p->kind == PEND_OWNER) {
			rv = q_rv(q, qpi_shmq_release_owner(q->shm, p->v, &n));
			if (rv == QP_OK && n > 0) {
				qps_log(QPS_LOG_INFO,
				    "queue '%s': %zu leases of a closed "
				    "connection are back at the head",
				    q->name, n);
			}
		} else {
			rv = p->v != 0 ? qps_q_ack(q, p->v) : QP_OK;
			if (rv == QP_EBUSY) {
				return false;
			}
			p->done = p->done && rv == QP_OK;
			p->v = 0; /* the ack is in: its task_done may wait */
			if (p->done) {
				rv = qps_q_task_done(q, 1);
			}
		}
		if (rv == QP_EBUSY) {
			return false;
		}
		q->pend = p->next;
		if (q->pend == NULL) {
			q->pend_tail = NULL;
		}
		free(p);
	}
	return true;
}

/* The probe: the lock is tried once for the queue, by its oldest kept
 * work, then by its parked requests (qps_ops_kick) in order. */
static void
q_probe_fire(qps_timer *t)
{
	qps_q *q = (qps_q *) ((char *) t - offsetof(qps_q, probe_timer));

	q->busy = false;
	if (!q->seeded) {
		q_seed(q);
	}
	if (!q->reclaimed && !q->busy) {
		q_reclaim(q);
	}
	if (q->busy || !pend_run(q)) {
		return;
	}
	if (q->expire_due) {
		q_lease_fire(&q->lease_timer);
		if (q->busy) {
			return;
		}
	}
	qps_ops_kick(q);
	if (!q->busy) {
		q->probe_ns = 0;
		qps_log(QPS_LOG_DEBUG, "queue '%s': its lock is free again",
		    q->name);
	}
}

/* ---- watching for local changes ---- */

static long
wv_wait(struct wv_entry *wv, unsigned n)
{
	return syscall(SYS_futex_waitv, wv, n, 0, NULL, CLOCK_MONOTONIC);
}

static void
wg_poke(qps_wgroup *g)
{
	__atomic_add_fetch(&g->ctl, 1, __ATOMIC_SEQ_CST);
	qpi_futex_wake(&g->ctl, INT32_MAX);
}

static void *
wg_main(void *arg)
{
	qps_wgroup *g = arg;
	struct wv_entry wv[WG_MAX + 1];
	qps_q *snap[WG_MAX];

	qps_thread_init();
	pthread_mutex_lock(hs.mu);
	while (!hs.stop) {
		uint32_t ctl = __atomic_load_n(&g->ctl, __ATOMIC_SEQ_CST);
		int n = g->n;

		/* Arm and read each sequence first, then serve: a change
		 * after the read wakes the wait below. */
		for (int i = 0; i < n; i++) {
			qps_q *q = g->qs[i];
			if (!q->armed && qpi_shmq_watch_arm(q->shm) == QP_OK) {
				q->armed = true;
			}
			q->seen = qpi_shmq_watch_seq(q->shm);
			snap[i] = q;
		}
		for (int i = 0; i < n; i++) {
			if (snap[i]->wg == g) {
				qps_ops_kick(snap[i]);
			}
		}
		unsigned k = 0;
		for (int i = 0; i < g->n; i++) {
			qps_q *q = g->qs[i];
			if (!q->armed) {
				continue;
			}
			wv[k].val = q->seen;
			wv[k].uaddr
			    = (uint64_t) (uintptr_t) qpi_shmq_watch_word(
			        q->shm);
			wv[k].flags = FUTEX_32;
			wv[k].reserved = 0;
			k++;
		}
		wv[k].val = ctl;
		wv[k].uaddr = (uint64_t) (uintptr_t) &g->ctl;
		wv[k].flags = FUTEX_32; /* shared: qpi_futex_wake wakes it */
		wv[k].reserved = 0;
		pthread_mutex_unlock(hs.mu);
		if (hs.waitv != 0) {
			wv_wait(wv, k + 1);
		} else if (k == 1) {
			/* One queue: its word, woken by wg_poke's wake of
			 * that word too. */
			qpi_futex_wait((uint32_t *) (uintptr_t) wv[0].uaddr,
			    (uint32_t) wv[0].val, INT64_MAX);
		} else {
			qpi_futex_wait(&g->ctl, ctl, INT64_MAX);
		}
		pthread_mutex_lock(hs.mu);
		for (int i = 0; i < g->n; i++) {
			if (g->qs[i]->armed) {
				qpi_shmq_watch_disarm(g->qs[i]->shm);
				g->qs[i]->armed = false;
			}
		}
	}
	pthread_mutex_unlock(hs.mu);
	return NULL;
}

static bool
wg_probe_waitv(void)
{
	uint32_t word = 1;
	struct wv_entry wv = {.val = 0,
	    .uaddr = (uint64_t) (uintptr_t) &word,
	    .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG};

	/* The value differs: a kernel with futex_waitv says EAGAIN. */
	return wv_wait(&wv, 1) == -1 && errno == EAGAIN;
}

static void
wg_add(qps_q *q)
{
	int cap;
	qps_wgroup *g;

	if (hs.waitv < 0) {
		hs.waitv = wg_probe_waitv() ? 1 : 0;
		if (!hs.waitv) {
			qps_log(QPS_LOG_WARN,
			    "the kernel has no futex_waitv: one watcher "
			    "thread per queue with parked requests");
		}
	}
	cap = hs.waitv ? WG_MAX : 1;
	for (g = hs.groups; g != NULL; g = g->next) {
		if (g->n < cap) {
			break;
		}
	}
	if (g == NULL) {
		if ((g = calloc(1, sizeof(*g))) == NULL) {
			qps_log(QPS_LOG_ERROR,
			    "out of memory for a watcher: local puts on '%s' "
			    "reach parked gets only with the next request",
			    q->name);
			return;
		}
		if (pthread_create(&g->thr, NULL, wg_main, g) != 0) {
			free(g);
			qps_log(QPS_LOG_ERROR,
			    "cannot start a watcher thread for '%s'", q->name);
			return;
		}
		g->started = true;
		g->next = hs.groups;
		hs.groups = g;
	}
	g->qs[g->n++] = q;
	q->wg = g;
	wg_poke(g);
}

static void
wg_remove(qps_q *q)
{
	qps_wgroup *g = q->wg;

	for (int i = 0; i < g->n; i++) {
		if (g->qs[i] == q) {
			g->qs[i] = g->qs[--g->n];
			break;
		}
	}
	if (q->armed) {
		qpi_shmq_watch_disarm(q->shm);
		q->armed = false;
	}
	q->wg = NULL;
	wg_poke(g);
	if (!hs.waitv) {
		/* The thread may sleep on q's own word. */
		qpi_futex_wake(qpi_shmq_watch_word(q->shm), INT32_MAX);
	}
}

void
qps_q_watch(qps_q *q, bool on)
{
	if (on && q->wg == NULL) {
		int rv = qpi_shmq_watch(q->shm, true);
		if (rv != QP_OK) {
			qps_log(QPS_LOG_WARN,
			    "cannot watch queue '%s' (%s): local puts reach "
			    "its parked gets only with the next request",
			    q->name, qp_strerror(rv));
			return;
		}
		wg_add(q);
		if (q->wg == NULL) {
			qpi_shmq_watch(q->shm, false);
		}
	} else if (!on && q->wg != NULL) {
		wg_remove(q);
		qpi_shmq_watch(q->shm, false);
	}
}

/* ---- start and stop ---- */

/* Opens every durable queue of the data directory: each file is
 * validated (torn tails cut, corrupt files quarantined) before the
 * server answers anything. */
static int
dur_start(void)
{
	DIR *dir;
	struct dirent *e;
	size_t elen = strlen(dur_ext);
	int n = 0;

	if (hs.cfg->data_dir == NULL) {
		return QP_OK;
	}
	if (mkdir(hs.cfg->data_dir, 0700) != 0 && errno != EEXIST) {
		qps_log(QPS_LOG_ERROR, "cannot create --data-dir %s: %s",
		    hs.cfg->data_dir, strerror(errno));
		return QP_ESYSTEM;
	}
	if ((dir = opendir(hs.cfg->data_dir)) == NULL) {
		qps_log(QPS_LOG_ERROR, "cannot read --data-dir %s: %s",
		    hs.cfg->data_dir, strerror(errno));
		return QP_ESYSTEM;
	}
	pthread_mutex_lock(hs.mu);
	while ((e = readdir(dir)) != NULL) {
		char name[QP_NAME_MAX + 1];
		size_t len = strlen(e->d_name);
		qps_q *q = NULL;
		if (len <= elen || len - elen > QP_NAME_MAX
		    || strcmp(e->d_name + len - elen, dur_ext) != 0) {
			continue;
		}
		memcpy(name, e->d_name, len - elen);
		name[len - elen] = '\0';
		if (!qpi_name_valid(name, len - elen)) {
			continue;
		}
		int rv = dur_lookup(name, &q);
		if (rv == QP_OK) {
			q->reclaimed = true;
			n++;
		} else if (rv != QP_ECORRUPT) {
			qps_log(QPS_LOG_ERROR,
			    "durable queue '%s' cannot be opened: %s", name,
			    qp_errmsg());
		}
	}
	pthread_mutex_unlock(hs.mu);
	closedir(dir);
	char pol[QPI_FSYNC_STR_MAX];
	qpi_fsync_format(&hs.fsync, pol, sizeof(pol));
	qps_log(QPS_LOG_INFO,
	    "data directory %s: %d durable queues served, default fsync %s",
	    hs.cfg->data_dir, n, pol);
	if (pthread_create(&sy.thr, NULL, sy_main, NULL) == 0) {
		sy.started = true;
	} else {
		qps_log(QPS_LOG_WARN,
		    "cannot start the sync thread: puts of fsync=always "
		    "queues sync in the request's thread");
	}
	return QP_OK;
}

int
qps_hosted_start(const qps_config *cfg, pthread_mutex_t *mu)
{
	hs.mu = mu;
	hs.cfg = cfg;
	if (qpi_fsync_parse(cfg->fsync, &hs.fsync) != QP_OK
	    || hs.fsync.mode == QPI_FSYNC_DEFAULT) {
		hs.fsync.mode = QPI_FSYNC_INTERVAL;
		hs.fsync.ms = QPI_FSYNC_DEF_MS;
	}
	return dur_start();
}

void
qps_hosted_fini(void)
{
	qps_wgroup *g, *next;

	if (sy.started) {
		pthread_mutex_lock(&sy.mu);
		sy.stop = true;
		pthread_cond_broadcast(&sy.cv);
		pthread_mutex_unlock(&sy.mu);
		pthread_join(sy.thr, NULL);
		sy.started = false;
	}

	pthread_mutex_lock(hs.mu);
	hs.stop = true;
	for (g = hs.groups; g != NULL; g = g->next) {
		wg_poke(g);
		for (int i = 0; i < g->n; i++) {
			qpi_futex_wake(
			    qpi_shmq_watch_word(g->qs[i]->shm), INT32_MAX);
		}
	}
	pthread_mutex_unlock(hs.mu);
	for (g = hs.groups; g != NULL; g = next) {
		next = g->next;
		if (g->started) {
			pthread_join(g->thr, NULL);
		}
		free(g);
	}
	pthread_mutex_lock(hs.mu);
	hs.groups = NULL;
	while (hs.head != NULL) {
		qps_q *q = hs.head;
		q->wg = NULL;
		q->armed = false;
		qpi_shmq_watch(q->shm, false);
		qps_q_forget(q);
	}
	qps_htab_fini(&hs.qs);
	while (hs.quar != NULL) {
		struct quar *z = hs.quar;
		hs.quar = z->next;
		free(z);
	}
	pthread_mutex_unlock(hs.mu);
}
