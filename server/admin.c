/*
 * admin.c - the ops that look at or manage queues as a whole: qsize, stat,
 * list, create and delete; and the opening of a request's queue that every
 * queue handler starts with, where a queue deleted by another process is
 * noticed (what waits on it ends with QP_ECLOSED).
 *
 * Noticing costs no path lookup per request: an inotify watch on the
 * shared-memory directory says which names were deleted, created or
 * renamed since the last request, and only those queues are looked at
 * (a stat of their segment). The kernel queues the event within the
 * unlink itself, so a request that comes after a local delete sees it.
 * Where the watch cannot be had or is lost (an overflowed event queue, the
 * directory gone), every request looks at its queue, as before.
 *
 * Locking: none of its own; everything runs under the ops lock (the
 * watch's state too).
 */
#include "futex.h" /* qpi_shm_dir */
#include "qps.h"
#include "store.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

/* Segment files are "qpipe.<name>" (lib/futex.c). */
#define SEG_PREFIX     "qpipe."
#define SEG_PREFIX_LEN (sizeof(SEG_PREFIX) - 1)
/* Reads of the event queue per drain, at most (then: look anyway). */
#define DIRW_READS 64
/* The event queue is read at most this often: a segment unlinked by
 * hand is noticed within it; one removed through the library
 * (qpi_shmq_unlink: qpipe rm, qp_queue_unlink, another qpiped) is marked
 * removed, and that mark is looked at on every request. */
#define DIRW_EVERY_NS 1000000

/* The watch on the shared-memory directory. */
static struct {
	int fd; /* inotify, non-blocking; -1: none (every request looks) */
	bool tried;
	int64_t last_ns; /* the last drain that found the queue empty */
	char dir[PATH_MAX]; /* the directory watched */
} dirw = {.fd = -1};

/* Forgets q: fails what waits on it, drops what connections note on it. */
static void
admin_forget(qps_q *q)
{
	qps_wait_fail_all(q, QP_ECLOSED, "was deleted");
	qps_conns_forget_q(q);
}

/* Forgets q (NULL: none open here) if another process deleted it (and
 * maybe made it anew): what waits on it ends. */
static void
admin_forget_if_stale(qps_q *q)
{
	if (q != NULL && qps_q_stale(q)) {
		admin_forget(q);
		qps_q_forget(q);
	}
}

static void
dirw_drop(void)
{
	if (dirw.fd >= 0) {
		close(dirw.fd);
		dirw.fd = -1;
	}
}

/* Reads the directory's events (at most every DIRW_EVERY_NS): every
 * queue whose name changed is looked at. Returns false if the watch is
 * not to be trusted (none, lost, overflowed, or more events than one
 * drain reads): the caller looks at its own queue then. */
static bool
dirw_drain(void)
{
	char buf[4096]
	    __attribute__((aligned(__alignof__(struct inotify_event))));

	if (!dirw.tried && strlen(qpi_shm_dir()) < sizeof(dirw.dir)) {
		snprintf(dirw.dir, sizeof(dirw.dir), "%s", qpi_shm_dir());
		dirw.fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		if (dirw.fd >= 0
		    && inotify_add_watch(dirw.fd, dirw.dir,
		           IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
		               | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
		        < 0) {
			dirw_drop();
		}
	}
	dirw.tried = true;
	int64_t now = qpi_now_ns();
	if (dirw.fd >= 0 && now - dirw.last_ns < DIRW_EVERY_NS) {
		return true;
	}
	if (dirw.fd < 0 || strcmp(qpi_shm_dir(), dirw.dir) != 0) {
		return false;
	}
	for (int k = 0; k < DIRW_READS; k++) {
		ssize_t n = read(dirw.fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0 && errno == EAGAIN) {
			dirw.last_ns = now;
			return true;
		}
		if (n <= 0) {
			break;
		}
		for (ssize_t off = 0; off < n;) {
			const struct inotify_event *ev
			    = (const struct inotify_event *) (buf + off);
			off += (ssize_t) (sizeof(*ev) + ev->len);
			if ((ev->mask
			        & (IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF
			            | IN_MOVE_SELF | IN_UNMOUNT))
			    != 0) {
				/* Changes may have gone unseen: from now on
				 * every request looks. */
				qps_log(QPS_LOG_INFO,
				    "%s: %s; every request now looks at its "
				    "queue's segment",
				    dirw.dir,
				    (ev->mask & IN_Q_OVERFLOW) != 0
				        ? "too many changes at once to follow"
				        : "no longer watched");
				dirw_drop();
				return false;
			}
			if (ev->len > SEG_PREFIX_LEN
			    && strncmp(ev->name, SEG_PREFIX, SEG_PREFIX_LEN)
			        == 0) {
				admin_forget_if_stale(
				    qps_q_find(ev->name + SEG_PREFIX_LEN));
			}
		}
	}
	return false;
}

/* Forgets what is stale: the queue name itself if it is marked removed
 * or the events cannot be trusted, and the queues the directory's events
 * name. */
static void
admin_forget_stale(const char *name)
{
	bool trusted = dirw_drain(); /* may forget name's queue itself */
	qps_q *q = qps_q_find(name);

	if (q != NULL && (!trusted || qps_q_removed(q))) {
		admin_forget_if_stale(q);
	}
}

int
qps_admin_open_for(
    const qpi_wire_req *r, bool create, qps_q **qp, nng_msg **repp)
{
	int rv;

	admin_forget_stale(r->name);
	rv = qps_q_open(r->name, create, qp);
	if (rv == QP_ENOENT) {
		*repp = qps_rep_error(r->op, r->req_id, rv,
		    "no queue '%s' on this server (create it first)", r->name);
	} else if (rv != QP_OK) {
		*repp = qps_rep_error(r->op, r->req_id, rv, "queue '%s': %s",
		    r->name,
		    qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
	}
	return rv;
}

/* The reply to qsize or stat of q. A queue whose lock another process
 * holds is answered QP_EBUSY at once: figures are not worth a wait, and the
 * caller learns why now (an open without create reads it as "exists"). */
static nng_msg *
admin_figures(qps_q *q, const qpi_wire_req *r)
{
	qpi_wire_rep rp = {.op = r->op, .req_id = r->req_id};
	int rv = q->busy            ? QP_EBUSY
	    : r->op == QPI_OP_QSIZE ? qpi_store_qsize(q->st, &rp.count)
	                            : qpi_store_stat(q->st, &rp.stat);
	if (q->busy || qps_q_rv(q, rv) == QP_EBUSY) {
		return qps_rep_error(r->op, r->req_id, QP_EBUSY,
		    "queue '%s' " QPS_LOCKED, q->name);
	}
	if (r->op == QPI_OP_STAT) {
		/* Remote requests parked here wait too. */
		rp.stat.getters += q->wl[QPS_WAIT_GET].n;
		rp.stat.putters += q->wl[QPS_WAIT_PUT].n;
	}
	return rv == QP_OK
	    ? qps_rep_encode(&rp)
	    : qps_rep_error(r->op, r->req_id, rv, "%s of '%s': %s",
	        qpi_wire_op_name(r->op), q->name,
	        qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
}

typedef struct list_ctx {
	qpi_wire_qentry *v;
	uint32_t n, cap;
	bool nomem;
} list_ctx;

static bool
list_one(const char *name, const qp_queue_stats *st, void *arg)
{
	list_ctx *lc = arg;

	if (lc->n == lc->cap) {
		uint32_t cap = lc->cap == 0 ? 16 : lc->cap * 2;
		qpi_wire_qentry *v;
		if (lc->cap >= QPI_WIRE_DEFAULT_BATCH) {
			return false; /* the list says the first ones */
		}
		if ((v = realloc(lc->v, cap * sizeof(*v))) == NULL) {
			lc->nomem = true;
			return false;
		}
		lc->v = v;
		lc->cap = cap;
	}
	snprintf(lc->v[lc->n].name, sizeof(lc->v[lc->n].name), "%s", name);
	lc->v[lc->n].stat = *st;
	lc->n++;
	return true;
}

static nng_msg *
admin_list(const qpi_wire_req *r)
{
	list_ctx lc = {0};
	int rv = qps_q_list(list_one, &lc);
	qpi_wire_rep rp = {.op = r->op,
	    .req_id = r->req_id,
	    .queues = lc.v,
	    .nqueues = lc.n,
	    .queues_cap = lc.cap};
	nng_msg *rep;

	rv = rv == QP_OK && lc.nomem ? QP_ENOMEM : rv;
	rep = rv == QP_OK ? qps_rep_encode(&rp)
	                  : qps_rep_error(r->op, r->req_id, rv,
	                      "cannot list the queues: %s", qp_strerror(rv));
	free(lc.v);
	return rep;
}

static nng_msg *
admin_create(const qpi_wire_req *r)
{
	qps_q_opts o = {
	    .maxsize = r->maxsize,
	    .capacity = r->capacity,
	    .max_message = r->max_message,
	    .lease_ms = r->lease_ms,
	    .excl = (r->flags & QPI_CREATE_EXCL) != 0,
	    .durable = (r->flags & QPI_CREATE_DURABLE) != 0,
	    .fsync = r->fsync,
	};
	qps_q *q;
	int rv;

	if (o.durable && qps_cfg->data_dir == NULL) {
		return qps_rep_error(r->op, r->req_id, QP_EINVAL,
		    "a durable queue needs the server started with "
		    "--data-dir");
	}
	if (!o.durable && r->fsync[0] != '\0') {
		return qps_rep_error(r->op, r->req_id, QP_EINVAL,
		    "an fsync policy is for durable queues only");
	}
	if (r->max_message > qps_limits.max_message) {
		return qps_rep_error(r->op, r->req_id, QP_EINVAL,
		    "max_message %llu is over the server's %llu",
		    (unsigned long long) r->max_message,
		    (unsigned long long) qps_limits.max_message);
	}
	admin_forget_stale(r->name);
	rv = qps_q_create(r->name, &o, &q);
	return rv == QP_OK
	    ? qps_rep_ok(r)
	    : qps_rep_error(r->op, r->req_id, rv, "create '%s': %s", r->name,
	        qp_errmsg()[0] != '\0' ? qp_errmsg() : qp_strerror(rv));
}

static nng_msg *
admin_delete(const qpi_wire_req *r)
{
	qps_q *q = qps_q_find(r->name);
	int rv;

	if (q != NULL) {
		admin_forget(q);
	}
	rv = qps_q_delete(r->name, q);
	if (rv == QP_OK) {
		qps_log(QPS_LOG_INFO, "queue '%s' deleted", r->name);
		return qps_rep_ok(r);
	}
	return qps_rep_error(r->op, r->req_id, rv, "delete '%s': %s", r->name,
	    rv == QP_ENOENT ? "no such queue" : qp_strerror(rv));
}

qps_handled
qps_admin_handle(const qps_req *rq, nng_msg **repp)
{
	const qpi_wire_req *r = rq->r;
	qps_q *q;

	switch (r->op) {
	case QPI_OP_LIST:
		*repp = admin_list(r);
		break;
	case QPI_OP_CREATE:
		*repp = admin_create(r);
		break;
	case QPI_OP_DELETE:
		*repp = admin_delete(r);
		break;
	default: /* QPI_OP_QSIZE, QPI_OP_STAT */
		if (qps_admin_open_for(r, false, &q, repp) == QP_OK) {
			*repp = admin_figures(q, r);
		}
	}
	return QPS_REPLY;
}
