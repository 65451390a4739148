/*
 * registry.c - the queues qpiped hosts, by name: this host's shared-memory
 * queues, opened on first use and kept open, and the durable queues of
 * --data-dir, all behind one store interface (lib/store.h). Leases live in
 * the queue (owner tokens, expiries, delivery counts), so that a killed
 * server loses none: the next one, on the first request for each queue,
 * returns the leases whose holders are gone (qpi_store_release_stale):
 * those of the killed server and of dead local workers. One server per
 * host serves a given queue. Lease expiries fire from the timer thread at
 * the nearest expiry the queue reports; once a second the leases of dead
 * local processes go back.
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
 * Put requests with a client id go in tagged: when the server first hosts
 * a queue it reads back which requests are in it (q_seed) into dedup.c,
 * so that a request whose reply an earlier, killed server never sent is
 * answered, not stored again.
 *
 * A local process stopped (or slow) while it holds a queue's lock must not
 * stall the server: every server thread tries a lock for at most
 * QPS_LOCK_BUDGET_NS (qpi_shmq_lock_budget), and a call that cannot take
 * it changes nothing and answers QP_EBUSY (qps_q_rv notes it). The queue
 * is then busy: the request layer parks what comes for it without trying,
 * and one probe timer (1 ms, doubling to 50 ms) retries: it does the
 * background work that met the lock (leases of closed connections, acks,
 * expiries, kept in q->pend), then tells the request layer (the changed
 * callback) to serve the parked requests.
 *
 * The registry never calls the request layer but through that callback,
 * which runs whenever a queue may have changed under parked requests.
 *
 * Locking: everything here runs under the ops lock (hs.mu), given at
 * start; the timer thread and the watchers hold it when they call in.
 */
#include "futex.h" /* qpi_shm_dir */
#include "qps.h"
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct {
	pthread_mutex_t *mu;
	const qps_config *cfg;
	void (*changed)(qps_q *q); /* the request layer's */
	qpi_htab qs;
	qps_q *head;
	qps_q *last; /* the queue qps_q_find found last */
	qpi_fsync fsync; /* durable queues' default policy */
	struct quar *quar; /* quarantined durable queues */
} hs;

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
	return stat(path, &st) == 0 ? (uint64_t) st.st_ino : 0;
}

bool
qps_q_removed(qps_q *q)
{
	return !qpi_store_durable(q->st)
	    && qpi_shmq_removed(qpi_store_shm(q->st));
}

bool
qps_q_stale(qps_q *q)
{
	return !qpi_store_durable(q->st) && q_inode(q->name) != q->ino;
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

/* Whether the durable queue name has a file. */
static bool
dur_exists(const char *name)
{
	char path[PATH_MAX];

	return dur_path(name, path, sizeof(path)) && access(path, F_OK) == 0;
}

/* Where the quarantined queue name is (*: NULL when it is not). */
static struct quar **
quar_at(const char *name)
{
	struct quar **zp = &hs.quar;

	while (*zp != NULL && strcmp((*zp)->name, name) != 0) {
		zp = &(*zp)->next;
	}
	return zp;
}

static void
quar_add(const char *name, const char *why)
{
	struct quar *z = *quar_at(name);

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
	struct quar **zp = quar_at(name), *z = *zp;

	if (z != NULL) {
		*zp = z->next;
		free(z);
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

int
qps_q_rv(qps_q *q, int rv)
{
	if (rv == QP_EBUSY) {
		q_busy(q);
	}
	if (rv == QP_ENOENT && qps_q_removed(q)) {
		/* Deleted by a local process (qpipe rm shm://...): what was
		 * parked on it ends as a delete through qpiped ends it. */
		rv = qpi_err(QP_ECLOSED, "queue '%s' was deleted", q->name);
	}
	if (rv == QP_ECORRUPT && !q->quarantined) {
		q->quarantined = true;
		qps_log(QPS_LOG_ERROR,
		    "queue '%s' QUARANTINED: %s (its requests get ECORRUPT; "
		    "the other queues are served)",
		    q->name, qp_errmsg());
	}
	return rv;
}

static void
pend_add(qps_q *q, int kind, uint64_t v, bool done)
{
	qps_pend *p = malloc(sizeof(*p));

	if (p == NULL) {
		qps_log(QPS_LOG_ERROR,
		    "out of memory: queue '%s': a lease left for later is "
		    "given back when it expires",
		    q->name);
		return;
	}
	*p = (qps_pend) {.kind = kind, .v = v, .done = done};
	*(q->pend_tail != NULL ? &q->pend_tail->next : &q->pend) = p;
	q->pend_tail = p;
	q_busy(q);
}

static void pend_free(qps_q *q);

/* Logs n items of q back at its head (rv: the call's result), whose. */
static void
q_back(const qps_q *q, int rv, size_t n, const char *whose)
{
	if (rv == QP_OK && n > 0) {
		qps_log(QPS_LOG_INFO,
		    "queue '%s': %zu %s are back at the head", q->name, n,
		    whose);
	}
}

/* ---- lease expiries ---- */

static void
q_lease_fire(qps_timer *t)
{
	qps_q *q = (qps_q *) ((char *) t - offsetof(qps_q, lease_timer));
	int64_t next = INT64_MAX;
	size_t n = 0;
	int rv = qps_q_rv(q, qpi_store_expire(q->st, qpi_now_ms(), &n, &next));

	q->expire_due = rv == QP_EBUSY; /* the probe does it */
	q_back(q, QP_OK, n, "leases ran out; their items");
	qps_q_lease_due(q, rv == QP_OK ? next : INT64_MAX);
	if (n > 0) {
		hs.changed(q);
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

static void
sweep_fire(qps_timer *t)
{
	for (qps_q *q = hs.head; q != NULL; q = q->next) {
		size_t n = 0;
		if (!q->busy) {
			q_back(q,
			    qps_q_rv(q, qpi_store_release_dead(q->st, &n)), n,
			    "leases of local processes that are gone");
		}
		hs.changed(q);
	}
	if (hs.head != NULL) {
		qps_timer_arm(t, qpi_now_ns() + SWEEP_NS);
	}
}

void
qps_q_lease_due(qps_q *q, int64_t expiry_ms)
{
	/* INT64_MAX (none), or past what nanoseconds hold: never. */
	if (expiry_ms < INT64_MAX / 1000000
	    && (q->lease_timer.idx == SIZE_MAX
	        || expiry_ms * 1000000 < q->lease_timer.deadline_ns)) {
		qps_timer_arm(&q->lease_timer, expiry_ms * 1000000);
	}
}

/* ---- open, create, forget ---- */

qps_q *
qps_q_find(const char *name)
{
	size_t len;

	/* Most requests name the queue the one before named. */
	if (hs.last != NULL && strcmp(hs.last->name, name) == 0) {
		return hs.last;
	}
	len = strlen(name);
	for (qpi_hnode *n = qpi_htab_find(&hs.qs, qpi_hash_keyed(name, len));
	     n != NULL; n = qpi_htab_next(n)) {
		qps_q *q = (qps_q *) n;
		if (strcmp(q->name, name) == 0) {
			return hs.last = q;
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

	int rv = qps_q_rv(q, qpi_store_release_stale(q->st, &n));

	q->reclaimed = rv != QP_EBUSY; /* else the next request tries */
	q_back(q, rv, n, "items leased by an earlier server or a dead worker");
}

/* The sizes of a new queue: the server's defaults, o's where given (o
 * may be NULL). */
static qpi_shmq_cfg
q_cfg(const qps_q_opts *o)
{
	qpi_shmq_cfg c = {.capacity = hs.cfg->max_queue_bytes,
	    .max_message = hs.cfg->max_message};

	if (o != NULL) {
		c.maxsize = o->maxsize;
		c.capacity = o->capacity != 0 ? o->capacity : c.capacity;
		c.max_message
		    = o->max_message != 0 ? o->max_message : c.max_message;
	}
	return c;
}

/* Opens (flags: QP_OPEN_CREATE, EXCL) the durable queue name: its file
 * is validated and replayed; a torn tail is cut and logged. A corrupt
 * file is quarantined. d gets the log, *lease_msp its stored lease. */
static int
dur_open(const char *name, unsigned flags, const qps_q_opts *o, qpi_durq **dp,
    uint64_t *lease_msp)
{
	char path[PATH_MAX];
	qpi_shmq_cfg sizes = q_cfg(o);
	qpi_durq_cfg c = {.maxsize = sizes.maxsize,
	    .capacity = sizes.capacity,
	    .max_message = sizes.max_message};
	qpi_durq_info info;
	char pol[QPI_FSYNC_STR_MAX];
	int rv;

	if (!dur_path(name, path, sizeof(path))) {
		return qpi_err(
		    QP_EINVAL, "the data directory path is too long");
	}
	if (o != NULL) {
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
	if (info.torn) {
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
	/* A durable queue remembers more (durq.h, QPI_DURQ_TAG_KEEP_MS). */
	size_t cap
	    = qpi_store_durable(q->st) ? QPI_DURQ_TAGS_MAX : QPI_SHMQ_TAGS_MAX;
	qpi_shmq_tag *v = malloc(cap * sizeof(*v));
	size_t n = 0, k = 0;
	int rv;

	if (v == NULL) {
		qps_log(QPS_LOG_WARN,
		    "queue '%s': out of memory for its put requests: a "
		    "repeat of one sent before a restart is stored again",
		    q->name);
		return;
	}
	rv = qpi_store_tags(q->st, v, cap, &n);
	q->seeded = qps_q_rv(q, rv) != QP_EBUSY; /* else the next request */
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
	/* Without QP_OPEN_ANY_OWNER, another user's segment: QP_EPERM. */
	flags |= hs.cfg->shm_any_owner ? QP_OPEN_ANY_OWNER : 0;
	rv = dur != NULL ? qpi_store_open_durq(&q->st, name, dur)
	                 : qpi_store_open_shm(&q->st, name, flags, cfg);
	if (rv != QP_OK) {
		free(q);
		return rv;
	}
	snprintf(q->name, sizeof(q->name), "%s", name);
	q->ino = dur != NULL ? 0 : q_inode(name);
	q->watch.shm = qpi_store_shm(q->st);
	q->lease_ms = lease_ms != 0 ? lease_ms : (uint64_t) hs.cfg->lease_ms;
	q->node.key = qpi_hash_keyed(name, strlen(name));
	qps_timer_init(&q->lease_timer, q_lease_fire);
	qps_timer_init(&q->probe_timer, q_probe_fire);
	qpi_htab_insert(&hs.qs, &q->node);
	q->next = hs.head;
	if (hs.head != NULL) {
		hs.head->prev = q;
	}
	hs.head = q;
	if (sweep_timer.idx == SIZE_MAX) {
		qps_timer_arm(&sweep_timer, qpi_now_ns() + SWEEP_NS);
	}
	q_seed(q);
	*qp = q;
	return QP_OK;
}

/* The queue name if hosted, else the durable queue name hosted now if
 * its file appeared in the data directory since the start; QP_OK with *qp
 * NULL if neither. A quarantined one: QP_ECORRUPT. */
static int
q_lookup(const char *name, qps_q **qp)
{
	struct quar *z;
	qpi_durq *d;
	uint64_t lease_ms = 0;
	int rv;

	/* A hosted queue (every request's case) costs one lookup. */
	if ((*qp = qps_q_find(name)) != NULL
	    || ((z = *quar_at(name)) == NULL && !dur_exists(name))) {
		return QP_OK;
	}
	if (z != NULL) {
		return qpi_err(QP_ECORRUPT, "quarantined: %s", z->why);
	}
	if ((rv = dur_open(name, 0, NULL, &d, &lease_ms)) != QP_OK) {
		return rv;
	}
	return q_attach(name, 0, NULL, lease_ms, d, qp);
}

/* What q's first requests do, unless its lock is held (then its probe
 * or the next request): read its put requests, return the leases of
 * holders that are gone. */
static void
q_settle(qps_q *q)
{
	if (!q->seeded && !q->busy) {
		q_seed(q);
	}
	if (!q->reclaimed && !q->busy) {
		q_reclaim(q);
	}
}

int
qps_q_open(const char *name, bool create, qps_q **qp)
{
	qpi_shmq_cfg cfg = q_cfg(NULL);
	int rv = q_lookup(name, qp);

	if (rv == QP_OK && *qp == NULL) {
		rv = q_attach(
		    name, create ? QP_OPEN_CREATE : 0, &cfg, 0, NULL, qp);
	}
	if (rv == QP_OK) {
		q_settle(*qp);
	}
	return rv;
}

int
qps_q_create(const char *name, const qps_q_opts *o, qps_q **qp)
{
	qps_q *q;
	qpi_shmq_cfg cfg = q_cfg(o);
	unsigned flags = QP_OPEN_CREATE | (o->excl ? QP_OPEN_EXCL : 0);
	uint64_t lease_ms = o->lease_ms;
	qpi_durq *d = NULL;
	int rv;

	if ((rv = q_lookup(name, &q)) != QP_OK) {
		return rv;
	}
	if (o->durable && q == NULL && q_inode(name) != 0) {
		return qpi_err(QP_EEXIST,
		    "queue '%s' exists in shared memory, not durable: delete "
		    "it first",
		    name);
	}
	if (o->durable && q != NULL && !qpi_store_durable(q->st)) {
		return qpi_err(QP_EEXIST,
		    "queue '%s' exists and is not durable: delete it first",
		    name);
	}
	if (q != NULL && o->excl) {
		return qpi_err(QP_EEXIST, "queue '%s' exists already", name);
	} else if (q != NULL && o->lease_ms != 0) {
		q->lease_ms = o->lease_ms;
	} else if (q == NULL) {
		if ((o->durable
		        && (rv = dur_open(name, flags, o, &d, &lease_ms))
		            != QP_OK)
		    || (rv = q_attach(name, flags, &cfg, lease_ms, d, &q))
		        != QP_OK) {
			return rv;
		}
		if (d != NULL) {
			q->reclaimed = true;
			qps_log(
			    QPS_LOG_INFO, "durable queue '%s' created", name);
		}
	}
	if (!q->reclaimed) {
		q_reclaim(q);
	}
	*qp = q;
	return QP_OK;
}

void
qps_q_forget(qps_q *q)
{
	qps_watch_set(&q->watch, false, q->name);
	qps_timer_cancel(&q->lease_timer);
	qps_timer_cancel(&q->probe_timer);
	pend_free(q);
	qpi_htab_remove(&hs.qs, &q->node);
	if (hs.last == q) {
		hs.last = NULL;
	}
	*(q->prev != NULL ? &q->prev->next : &hs.head) = q->next;
	if (q->next != NULL) {
		q->next->prev = q->prev;
	}
	qpi_store_free(q->st);
	free(q);
}

int
qps_q_delete(const char *name, qps_q *q)
{
	char path[PATH_MAX];
	int rv;

	if ((q != NULL && qpi_store_durable(q->st)) || *quar_at(name) != NULL
	    || (q == NULL && dur_exists(name))) {
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

/* A queue's figures for the list, its parked requests counted. */
static bool
list_stat(qps_q *q, qp_queue_stats *st)
{
	if (q->busy || qps_q_rv(q, qpi_store_stat(q->st, st)) != QP_OK) {
		return false;
	}
	st->getters += q->wl[QPS_WAIT_GET].n;
	st->putters += q->wl[QPS_WAIT_PUT].n;
	return true;
}

int
qps_q_list(bool (*fn)(const char *name, const qp_queue_stats *st, void *arg),
    void *arg)
{
	const char *shm_dir = qpi_shm_dir();
	DIR *d = opendir(shm_dir);
	struct dirent *e;
	size_t plen = strlen(shm_prefix);
	qpi_shmq_cfg cfg = q_cfg(NULL);
	qp_queue_stats st;
	bool more = true;

	if (d == NULL) {
		return qpi_err(QP_ESYSTEM, "cannot read %s: %s", shm_dir,
		    strerror(errno));
	}
	/* Durable queues: all hosted since the start (or quarantined). */
	for (qps_q *q = hs.head; q != NULL && more; q = q->next) {
		if (qpi_store_durable(q->st) && list_stat(q, &st)) {
			more = fn(q->name, &st, arg);
		}
	}
	/* Then the segments; listing does not reclaim leases: another
	 * server on this host may be serving the queue. Skipped: a durable
	 * queue's (listed above), what is not a queue (a pipe, another
	 * layout). */
	while (more && (e = readdir(d)) != NULL) {
		const char *name = e->d_name + plen;
		qps_q *q;
		if (strncmp(e->d_name, shm_prefix, plen) != 0
		    || !qpi_name_valid(name, strlen(name))
		    || ((q = qps_q_find(name)) != NULL
		        && qpi_store_durable(q->st))
		    || (q == NULL
		        && q_attach(name, 0, &cfg, 0, NULL, &q) != QP_OK)
		    || !list_stat(q, &st)) {
			continue;
		}
		more = fn(name, &st, arg);
	}
	closedir(d);
	return QP_OK;
}

/* ---- the probe of a busy queue ---- */

uint64_t
qps_q_release_owner(qps_q *q, uint64_t owner)
{
	size_t n = 0;
	int rv = q->busy
	    ? QP_EBUSY
	    : qps_q_rv(q, qpi_store_release_owner(q->st, owner, &n));

	if (rv == QP_EBUSY) {
		pend_add(q, PEND_OWNER, owner, false);
	}
	if (rv != QP_OK) {
		return 0;
	}
	if (n > 0) {
		hs.changed(q);
	}
	return n;
}

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
			rv = qps_q_rv(
			    q, qpi_store_release_owner(q->st, p->v, &n));
			q_back(q, rv, n, "leases of a closed connection");
		} else if ((rv = p->v != 0
		                   ? qps_q_rv(q, qpi_store_ack(q->st, p->v))
		                   : QP_OK)
		    != QP_EBUSY) {
			p->done = p->done && rv == QP_OK;
			p->v = 0; /* the ack is in: its task_done may wait */
			if (p->done) {
				rv = qps_q_rv(q, qpi_store_task_done(q->st));
			}
		}
		if (rv == QP_EBUSY) {
			return false;
		}
		if ((q->pend = p->next) == NULL) {
			q->pend_tail = NULL;
		}
		free(p);
	}
	return true;
}

/* The probe: the lock is tried once for the queue, by its oldest kept
 * work, then by its parked requests (the changed callback) in order. */
static void
q_probe_fire(qps_timer *t)
{
	qps_q *q = (qps_q *) ((char *) t - offsetof(qps_q, probe_timer));

	q->busy = false;
	q_settle(q);
	if (q->busy || !pend_run(q)) {
		return;
	}
	if (q->expire_due) {
		q_lease_fire(&q->lease_timer);
		if (q->busy) {
			return;
		}
	}
	hs.changed(q);
	if (!q->busy) {
		q->probe_ns = 0;
		qps_log(QPS_LOG_DEBUG, "queue '%s': its lock is free again",
		    q->name);
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
		int rv = q_lookup(name, &q);
		if (rv == QP_OK && q != NULL) {
			q->reclaimed = true;
			n++;
		} else if (rv != QP_OK && rv != QP_ECORRUPT) {
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
	return QP_OK;
}

static void
q_watched(qps_watch *w)
{
	hs.changed((qps_q *) ((char *) w - offsetof(qps_q, watch)));
}

int
qps_registry_start(
    const qps_config *cfg, pthread_mutex_t *mu, void (*changed)(qps_q *q))
{
	hs.mu = mu;
	hs.cfg = cfg;
	hs.changed = changed;
	qps_timer_init(&sweep_timer, sweep_fire);
	qps_watch_start(mu, q_watched);
	if (qpi_fsync_parse(cfg->fsync, &hs.fsync) != QP_OK
	    || hs.fsync.mode == QPI_FSYNC_DEFAULT) {
		hs.fsync.mode = QPI_FSYNC_INTERVAL;
		hs.fsync.ms = QPI_FSYNC_DEF_MS;
	}
	return dur_start();
}

void
qps_registry_fini(void)
{
	qps_watch_stop();
	pthread_mutex_lock(hs.mu);
	while (hs.head != NULL) {
		qps_q_forget(hs.head);
	}
	qpi_htab_fini(&hs.qs);
	while (hs.quar != NULL) {
		quar_drop(hs.quar->name);
	}
	pthread_mutex_unlock(hs.mu);
}
