/*
 * qwait.c - waiting on many queues: a readiness file descriptor per queue
 * handle, a get over many queues that takes from the first listed that has
 * an item (Redis BLPOP), and a wait over queues and connections alike.
 * Backends with a readiness of their own (remote.c keeps one item ahead,
 * part.c an epoll set of its partitions) give it through their fd and
 * ready ops; for shared-memory handles this file keeps the state: an
 * eventfd, and a thread that sleeps on the segment's watch word (shmq.h,
 * "Watching") and writes the eventfd when items are ready. A get that
 * finds the queue empty clears the eventfd and looks again (the protocol
 * of shmpipe.c's fd), so the fd is readable while items are ready, and at
 * most once spuriously after another consumer took the last one.
 *
 * Locking: qw_mu makes a handle's state once; the state's fields are
 * atomics written by its thread and by the handle's callers.
 */
#include "futex.h"
#include "queue.h"
#include "shmq.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct qpi_qrd {
	qpi_shmq *sq; /* the handle's attachment (not owned) */
	int efd;
	int signaled; /* the eventfd holds a count */
	int stop;
	pthread_t thr; /* runs from the state's making on */
	pid_t pid; /* the process whose thread this is */
};

static pthread_mutex_t qw_mu = PTHREAD_MUTEX_INITIALIZER;

void
qpi_efd_set(int efd, bool on)
{
	uint64_t v = 1;

	while ((on ? write(efd, &v, sizeof(v)) : read(efd, &v, sizeof(v))) < 0
	    && errno == EINTR) {
	}
}

static void
qrd_signal(struct qpi_qrd *rd)
{
	if (!__atomic_exchange_n(&rd->signaled, 1, __ATOMIC_ACQ_REL)) {
		qpi_efd_set(rd->efd, true);
	}
}

/* Clears the eventfd; the caller looks at the queue afterwards. */
static void
qrd_clear(struct qpi_qrd *rd)
{
	__atomic_store_n(&rd->signaled, 0, __ATOMIC_SEQ_CST);
	qpi_efd_set(rd->efd, false);
}

static void *
qrd_main(void *arg)
{
	struct qpi_qrd *rd = arg;

	while (!__atomic_load_n(&rd->stop, __ATOMIC_ACQUIRE)) {
		uint32_t seen = qpi_shmq_watch_seq(rd->sq);
		uint64_t n = 0;
		if (qpi_shmq_qsize(rd->sq, &n) == QP_OK && n > 0) {
			qrd_signal(rd);
		}
		if (__atomic_load_n(&rd->stop, __ATOMIC_ACQUIRE)) {
			break;
		}
		int rc = qpi_shmq_watch_wait(rd->sq, seen, INT64_MAX);
		if (rc == QP_ECLOSED || rc == QP_EINVAL) {
			break;
		}
	}
	qpi_err_clear();
	return NULL;
}

void
qpi_qrd_empty(qp_queue *q)
{
	struct qpi_qrd *rd = *qpi_queue_rd(q);
	uint64_t n = 0;

	if (rd == NULL || rd->pid != getpid()) {
		return;
	}
	qrd_clear(rd);
	if (qpi_shmq_qsize(rd->sq, &n) == QP_OK && n > 0) {
		qrd_signal(rd);
	}
	qpi_err_clear();
}

void
qpi_qrd_stop(struct qpi_qrd *rd)
{
	if (rd == NULL || rd->pid != getpid()) {
		return;
	}
	__atomic_store_n(&rd->stop, 1, __ATOMIC_RELEASE);
	/* Move the watch word so that the thread's wait ends now (other
	 * watchers take it for a change and look again: harmless). */
	uint32_t *w = qpi_shmq_watch_word(rd->sq);
	__atomic_add_fetch(w, 1, __ATOMIC_SEQ_CST);
	qpi_futex_wake(w, INT32_MAX);
}

void
qpi_qrd_free(struct qpi_qrd *rd)
{
	if (rd == NULL) {
		return;
	}
	if (rd->pid == getpid()) {
		qpi_qrd_stop(rd);
		pthread_join(rd->thr, NULL);
		qpi_shmq_watch(rd->sq, false);
	}
	close(rd->efd);
	free(rd);
}

/* The handle's readiness fd: its backend's, or for shared memory the
 * eventfd of its state, made on first use (in a forked child, made
 * afresh: the parent's thread did not come along). */
static int
qw_fd(qp_queue *q, int *fdp)
{
	const qpi_queue_ops *ops;
	void *impl = qpi_queue_impl(q, &ops);
	struct qpi_qrd **slot = qpi_queue_rd(q), *rd;
	qpi_shmq *sq = qpi_queue_shmq(q);
	int rc = QP_OK;

	if (ops->fd != NULL) {
		return ops->fd(impl, fdp);
	}
	if (sq == NULL) {
		return qpi_err(QP_ENOTSUP,
		    "a durable shm:// handle has no readiness fd; open it "
		    "through qpiped (tcp://, ipc://) to wait on it");
	}
	pthread_mutex_lock(&qw_mu);
	rd = *slot;
	if (rd != NULL && rd->pid != getpid()) {
		/* The parent's: its thread is not here. The child's copy of
		 * the eventfd goes; the memory stays with the parent's. */
		close(rd->efd);
		rd = *slot = NULL;
	}
	if (rd == NULL) {
		if ((rd = calloc(1, sizeof(*rd))) == NULL) {
			rc = qpi_err(QP_ENOMEM, "out of memory");
			goto out;
		}
		rd->sq = sq;
		rd->pid = getpid();
		if ((rd->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
			rc = qpi_err(
			    QP_ESYSTEM, "eventfd: %s", strerror(errno));
		} else if ((rc = qpi_shmq_watch(sq, true)) != QP_OK) {
			close(rd->efd);
		} else if (pthread_create(&rd->thr, NULL, qrd_main, rd) != 0) {
			qpi_shmq_watch(sq, false);
			close(rd->efd);
			rc = qpi_err(QP_ESYSTEM, "cannot start a thread");
		}
		if (rc != QP_OK) {
			free(rd);
			goto out;
		}
		*slot = rd;
	}
	*fdp = rd->efd;
out:
	pthread_mutex_unlock(&qw_mu);
	return rc;
}

QP_API int
qp_queue_fd(qp_queue *q, int *fdp)
{
	int rc = qpi_queue_ready_out(q, fdp, "qp_queue_fd: fdp");

	return rc != QP_OK ? rc : qw_fd(q, fdp);
}

int
qpi_queue_ready_now(qp_queue *q, bool *readyp)
{
	const qpi_queue_ops *ops;
	void *impl = qpi_queue_impl(q, &ops);
	struct qpi_qrd *rd = *qpi_queue_rd(q);
	size_t n = 0;
	int rc;

	if (ops->ready != NULL) {
		return ops->ready(impl, readyp);
	}
	if (rd != NULL && rd->pid == getpid()) {
		qrd_clear(rd); /* then look: a later change signals again */
	}
	if ((rc = qp_queue_qsize(q, &n)) != QP_OK) {
		return rc;
	}
	*readyp = n > 0;
	if (n > 0 && rd != NULL && rd->pid == getpid()) {
		qrd_signal(rd);
	}
	return QP_OK;
}

/* One queue: qp_wait_any's loop (look, arm the fd, look again, sleep). */
QP_API int
qp_queue_poll(qp_queue *q, qp_duration timeout, bool *readyp)
{
	size_t n;
	int rc = qpi_queue_ready_out(q, readyp, "qp_queue_poll: readyp");

	return rc != QP_OK
	    ? rc
	    : qp_wait_any(NULL, 0, NULL, &q, 1, readyp, timeout, &n);
}

int
qpi_queue_get_any(qp_queue *const *qs, size_t n, unsigned flags,
    size_t *whichp, void *into, size_t cap, void **bufp, size_t *lenp,
    int64_t deadline)
{
	bool stack[16], *ready = n <= 16 ? stack : calloc(n, sizeof(*ready));
	size_t nready;
	int rc
	    = ready != NULL ? QP_EEMPTY : qpi_err(QP_ENOMEM, "out of memory");

	/* Look at every queue in order, then wait for any to be ready (its
	 * fd armed, then looked at again: qp_wait_any) and look again. */
	while (rc == QP_EEMPTY) {
		for (size_t i = 0; i < n && rc == QP_EEMPTY; i++) {
			if ((rc = qpi_queue_get_op(
			         qs[i], flags, into, cap, bufp, lenp, 0))
			    != QP_EEMPTY) {
				*whichp = i;
			}
		}
		if (rc == QP_EEMPTY && qpi_remaining_ns(deadline) == 0) {
			rc = qpi_err(QP_EEMPTY, "all %zu queues are empty", n);
			break;
		}
		if (rc == QP_EEMPTY
		    && (rc = qp_wait_any(NULL, 0, NULL, qs, n, ready,
		            qpi_queue_timeout(deadline), &nready))
		        == QP_OK) {
			rc = QP_EEMPTY;
		}
	}
	if (ready != stack) {
		free(ready);
	}
	return rc;
}

static int
qw_get_any(qp_queue *const *qs, size_t n, unsigned flags, size_t *whichp,
    void **bufp, size_t *lenp, qp_duration timeout)
{
	size_t which = 0;
	int rc;

	if (bufp != NULL) {
		*bufp = NULL;
	}
	if (lenp != NULL) {
		*lenp = 0;
	}
	if (qs == NULL || n == 0 || bufp == NULL || lenp == NULL) {
		return qpi_err(QP_EINVAL, "qp_queue_get_any: %s",
		    n == 0 ? "no queues" : "NULL argument");
	}
	rc = qpi_duration_check(timeout);
	for (size_t i = 0; i < n && rc == QP_OK; i++) {
		if ((rc = qpi_queue_ready(qs[i])) != QP_OK) {
			which = i; /* the handle that is not ready */
		}
	}
	if (rc == QP_OK) {
		rc = qpi_queue_get_any(qs, n, flags, &which, NULL, 0, bufp,
		    lenp, qpi_queue_deadline(timeout));
	}
	if (whichp != NULL) {
		*whichp = which;
	}
	return rc;
}

QP_API int
qp_queue_get_any(qp_queue *const *qs, size_t n, size_t *whichp, void **bufp,
    size_t *lenp, qp_duration timeout)
{
	return qw_get_any(qs, n, 0, whichp, bufp, lenp, timeout);
}

QP_API int
qp_queue_get_any_obj(qp_queue *const *qs, size_t n, size_t *whichp,
    void **msgpackp, size_t *lenp, qp_duration timeout)
{
	return qw_get_any(qs, n, QPI_GET_OBJ, whichp, msgpackp, lenp, timeout);
}

/* Looks at every connection and queue once: the count of those ready. */
static int
qw_look(qp_conn *const *conns, size_t nc, bool *cr, qp_queue *const *qs,
    size_t nq, bool *qr, size_t *countp)
{
	size_t count = 0;
	int rc;

	for (size_t i = 0; i < nc; i++) {
		if ((rc = qp_conn_poll(conns[i], 0, &cr[i])) != QP_OK) {
			return rc;
		}
		count += cr[i] ? 1 : 0;
	}
	for (size_t i = 0; i < nq; i++) {
		if ((rc = qpi_queue_ready(qs[i])) != QP_OK
		    || (rc = qpi_queue_ready_now(qs[i], &qr[i])) != QP_OK) {
			return rc;
		}
		count += qr[i] ? 1 : 0;
	}
	*countp = count;
	return QP_OK;
}

QP_API int
qp_wait_any(qp_conn *const *conns, size_t nconns, bool *conn_ready,
    qp_queue *const *queues, size_t nqueues, bool *queue_ready,
    qp_duration timeout, size_t *nreadyp)
{
	struct pollfd *fds = NULL;
	size_t count = 0, n = nconns + nqueues;
	int64_t deadline;
	int rc;

	if ((rc = qpi_duration_check(timeout)) != QP_OK) {
		return rc;
	}
	if (nreadyp == NULL
	    || (nconns > 0 && (conns == NULL || conn_ready == NULL))
	    || (nqueues > 0 && (queues == NULL || queue_ready == NULL))) {
		return qpi_err(QP_EINVAL, "qp_wait_any: NULL argument");
	}
	*nreadyp = 0;
	if (n == 0) {
		return qpi_err(QP_EINVAL, "qp_wait_any: nothing to wait on");
	}
	deadline = qpi_queue_deadline(timeout);
	for (;;) {
		rc = qw_look(conns, nconns, conn_ready, queues, nqueues,
		    queue_ready, &count);
		if (rc != QP_OK || count > 0
		    || qpi_remaining_ns(deadline) == 0) {
			break;
		}
		if (fds == NULL) {
			if ((fds = calloc(n, sizeof(*fds))) == NULL) {
				rc = qpi_err(QP_ENOMEM, "out of memory");
				break;
			}
			for (size_t i = 0; i < n && rc == QP_OK; i++) {
				fds[i].events = POLLIN;
				rc = i < nconns
				    ? qp_conn_fd(conns[i], &fds[i].fd)
				    : qw_fd(queues[i - nconns], &fds[i].fd);
			}
			if (rc != QP_OK) {
				break;
			}
			continue;
		}
		/* Sleep until one is readable or the deadline. */
		qp_duration ms = qpi_queue_timeout(deadline); /* -1: ever */
		if (poll(fds, (nfds_t) n, ms > INT_MAX ? INT_MAX : (int) ms)
		        < 0
		    && errno != EINTR) {
			rc = qpi_err(QP_ESYSTEM, "poll: %s", strerror(errno));
			break;
		}
	}
	free(fds);
	if (rc == QP_OK) {
		qpi_err_clear();
		*nreadyp = count;
	}
	return rc;
}
