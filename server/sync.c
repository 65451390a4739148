/*
 * sync.c - group commit of durable queues with fsync=always, part of the
 * request layer: the put of the request a thread handles leaves its
 * fdatasync for after the ops lock is released (the store hands back a
 * ticket). qps_sync_park then parks the request's worker and hands its
 * reply to the syncer thread, which makes one fdatasync for every put
 * that came while the previous one ran and sends their replies: the
 * event loops never wait for the disk. Where a worker cannot be parked,
 * qps_sync_deferred syncs in the calling thread (sharing a sync under
 * way). Every other put (a parked one, served by whoever frees room)
 * syncs before it returns.
 *
 * Locking: sy.mu guards the syncer's list; the deferred put is the
 * calling thread's own (thread-local). The ops lock is taken only to
 * note a failed sync with dedup.
 */
#include "qps.h"
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static __thread struct {
	bool allowed;
	qpi_durq *d; /* held (qpi_durq_hold) until the sync */
	uint64_t ticket;
} defer;

void
qps_sync_defer(bool on)
{
	defer.allowed = on;
}

bool
qps_sync_may_defer(qpi_store *s)
{
	qpi_durq *d = qpi_store_durq(s);

	return defer.allowed && d != NULL && (defer.d == NULL || defer.d == d);
}

void
qps_sync_note(qpi_store *s, uint64_t ticket)
{
	if (ticket == 0) {
		return;
	}
	if (defer.d == NULL) {
		defer.d = qpi_store_durq(s);
		qpi_durq_hold(defer.d);
	}
	defer.ticket = ticket;
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
	pthread_mutex_t *ops_mu;
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
				    "synced: %s; its puts get the error",
				    e->name, qp_errmsg());
				nng_msg_free(e->rep);
				pthread_mutex_lock(sy.ops_mu);
				qps_dedup_fail(e->client, e->seq, rv);
				pthread_mutex_unlock(sy.ops_mu);
				e->rep = qps_rep_error(e->op, e->req_id, rv,
				    "put to '%s': the log could not be "
				    "synced: %s",
				    e->name, qp_errmsg());
			}
			qps_worker_reply(e->w, e->rep);
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
qps_sync_park(qps_worker *w, nng_msg *rep, uint32_t op, uint64_t req_id,
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
	*(sy.tail != NULL ? &sy.tail->next : &sy.head) = e;
	sy.tail = e;
	pthread_cond_broadcast(&sy.cv);
	pthread_mutex_unlock(&sy.mu);
	return true;
}

void
qps_sync_drain(void)
{
	pthread_mutex_lock(&sy.mu);
	while (sy.head != NULL || sy.busy) {
		pthread_cond_wait(&sy.cv, &sy.mu);
	}
	pthread_mutex_unlock(&sy.mu);
}

int
qps_sync_deferred(void)
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

void
qps_sync_start(pthread_mutex_t *ops_mu)
{
	sy.ops_mu = ops_mu;
	sy.started = pthread_create(&sy.thr, NULL, sy_main, NULL) == 0;
	if (!sy.started) {
		qps_log(QPS_LOG_WARN,
		    "cannot start the sync thread: puts of fsync=always "
		    "queues sync in the request's thread");
	}
}

void
qps_sync_stop(void)
{
	if (sy.started) {
		pthread_mutex_lock(&sy.mu);
		sy.stop = true;
		pthread_cond_broadcast(&sy.cv);
		pthread_mutex_unlock(&sy.mu);
		pthread_join(sy.thr, NULL);
		sy.started = false;
	}
}
