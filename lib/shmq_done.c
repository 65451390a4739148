/*
 * shmq_done.c - completion (qp_queue_complete): a task's lease acked and
 * its result put on another queue in one step, across kill -9 of any
 * process at any instant. Under the task queue's consumer lock the
 * completer notes its intent in the task queue's header (lease id,
 * results queue's name, the result's tag), puts the result tagged into
 * the results queue (under that queue's producer lock, waited for only
 * briefly with the first held), then acks the lease and clears the note
 * in one journal commit. Whoever next takes the task queue's consumer
 * lock and finds a note knows the completer died: it opens the results
 * queue by name and reads its tags (qpi_shmq_tags, which repairs a put
 * cut short): the result is in, so the lease is acked; or it is not, so
 * the lease stays to its dead holder's usual fate (released, expired)
 * and the task runs again. Until that is settled the lease is neither
 * released nor expired (sq_cpl_holds). So each task's result is stored
 * once, however often the task runs.
 *
 * Locking: the task queue's consumer lock, then the results queue's
 * producer lock within a short budget (SQ_CPL_LOCK_NS); a settler runs
 * under the consumer lock it found the note under.
 */
#include "shmq_int.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* How long a completion waits for the results queue's producer lock while
 * it holds the task queue's consumer lock. Two completions feeding each
 * other's queues, or a put starting a new lap of the results queue (which
 * takes its consumer lock), would otherwise wait for each other: past
 * this, the completion lets go of its lock, waits for the other one
 * alone, and starts again. */
#define SQ_CPL_LOCK_NS 2000000

/* The name of a named queue, NULL for an anonymous one. */
static const char *
sq_name(const qpi_shmq *q)
{
	return strncmp(q->label, "shm://", 6) == 0 ? q->label + 6 : NULL;
}

/* The tag a local completion's result carries: a marker and the task
 * queue's salt as client id, the lease id (never reused) as seq. */
static void
sq_cpl_tag(const qpi_shmq *t, uint64_t id, qpi_shmq_tag *tag)
{
	memset(tag, 0, sizeof(*tag));
	memcpy(tag->client, "qpcomplt", 8);
	memcpy(tag->client + 8, &t->salt, 8);
	tag->seq = id;
	tag->n = 1;
}

/* Acks the completion's lease, counts its task done and ends the
 * completion, in one commit (consumer lock held). A lease no longer held
 * only ends it. */
static void
sq_cpl_finish(qpi_shmq *q)
{
	sq_hdr *h = q->h;
	uint64_t id = h->cpl.lease;
	uint32_t i;
	sq_lists l;
	sq_tx t;

	sq_lists_get(q, &l);
	tx_begin(&t, q);
	if (qpi_sq_slot_of(q, id, L_LEASED, &i) == QP_OK
	    && qpi_sq_slot_free(q, &t, i, &l) == QP_OK) {
		uint64_t d = h->dones, n = LDA(&h->pp.nput);
		sq_lists_set(q, &t, &l);
		tx_set(&t, &h->gp.nleased, h->gp.nleased - 1);
		if (d < n) {
			if (d + 1 == n) {
				sq_wake(
				    q, EV_JN, true); /* before the commit */
			}
			tx_set(&t, &h->dones, d + 1);
		}
	}
	tx_set(&t, &h->cpl.phase, CPL_NONE);
	tx_commit(&t);
}

/* Whether a dead completer's result is in its results queue: 1 yes, 0 no
 * (its putter is dead: it never will be), -1 cannot tell now (the queue's
 * lock is held past this thread's budget, or memory is short). */
static int
sq_cpl_result_in(qpi_shmq *q)
{
	sq_hdr *h = q->h;
	char name[QP_NAME_MAX + 1];
	uint64_t len = LD(&h->cpl.namelen);
	qpi_shmq_tag *v;
	qpi_shmq *r;
	size_t n = 0;
	int rc, in = 0;

	if (len == 0 || len > QP_NAME_MAX) {
		return 0;
	}
	memcpy(name, h->ps.j.e, len);
	name[len] = '\0';
	if (!qpi_wire_name_valid(name, len)) {
		return 0;
	}
	rc = qpi_shmq_open(&r, name, 0, NULL);
	if (rc != QP_OK) {
		/* Gone (its items with it) or unreadable: not in. */
		return rc == QP_ENOMEM || rc == QP_ESYSTEM ? -1 : 0;
	}
	if ((v = malloc(QPI_SHMQ_TAGS_MAX * sizeof(*v))) == NULL) {
		qpi_shmq_free(r);
		return -1;
	}
	rc = qpi_shmq_tags(r, v, QPI_SHMQ_TAGS_MAX, &n);
	if (rc == QP_EBUSY || rc == QP_ETIMEDOUT) {
		in = -1;
	}
	for (size_t i = 0; rc == QP_OK && i < n; i++) {
		if (v[i].seq == h->cpl.seq && v[i].done > v[i].base
		    && memcmp(v[i].client, h->cpl.client, 16) == 0) {
			in = 1;
		}
	}
	free(v);
	qpi_shmq_free(r);
	return in;
}

void
qpi_sq_cpl_settle(qpi_shmq *q)
{
	sq_hdr *h = q->h;

	if (LD(&h->cpl.phase) == CPL_PUTTING) {
		int in = sq_cpl_result_in(q);
		if (in < 0) {
			return; /* the next holder of the lock tries again */
		}
		if (in == 0) {
			STR(&h->cpl.phase, CPL_NONE);
			qpi_err_clear();
			return;
		}
		STR(&h->cpl.phase, CPL_PUT);
	}
	sq_cpl_finish(q);
	qpi_err_clear();
}

int
qpi_shmq_complete(qpi_shmq *t, uint64_t id, qpi_shmq *r, const void *buf,
    size_t len, unsigned kind, const qpi_shmq_tag *tag, int64_t deadline)
{
	const char *name = sq_name(r), *tname = sq_name(t);
	int64_t budget = qpi_sq_budget_ns;
	qpi_shmq_item item = {buf, len, kind};
	qpi_shmq_tag own;
	sq_hdr *h = t->h;
	sq_snap snap;
	bool spun = false;
	size_t nlen;
	int rc;

	if (sq_closed(t) || sq_closed(r)) {
		return qpi_sq_stop_err(sq_closed(t) ? t : r, false);
	}
	if (name == NULL) {
		return qpi_err(QP_ENOTSUP,
		    "a completion's results go to a named shm:// queue, not "
		    "an anonymous one");
	}
	if (tname != NULL && strcmp(name, tname) == 0) {
		return qpi_err(QP_EINVAL,
		    "%s: the results queue is the tasks queue", t->label);
	}
	if (len > r->max_msg || QPI_SHMQ_REC_SIZE(len) > r->cap) {
		return qpi_err(QP_ETOOBIG,
		    "result of %zu bytes is over %s's limits", len, r->label);
	}
	nlen = strlen(name);
	if (tag == NULL) {
		sq_cpl_tag(t, id, &own);
		tag = &own;
	}
	for (;;) {
		uint32_t i;
		if ((rc = qpi_sq_lock(t, &h->gs)) != QP_OK) {
			return rc;
		}
		if (LD(&h->cpl.phase) != CPL_NONE) {
			/* A dead completer's note that could not be settled
			 * (its results queue's lock is held past this
			 * thread's budget): it must not be overwritten. */
			sq_unlock(&h->gs);
			return qpi_err(QP_EBUSY,
			    "%s: a dead worker's completion is not settled "
			    "yet (its results queue is locked)",
			    t->label);
		}
		if ((rc = qpi_sq_slot_of(t, id, L_LEASED, &i)) != QP_OK) {
			sq_unlock(&h->gs);
			return rc;
		}
		/* The intent, then the put (its tag names it), then the ack:
		 * see qpi_sq_cpl_settle for a completer killed in between. */
		memcpy(h->ps.j.e, name, nlen);
		ST(&h->cpl.namelen, (uint64_t) nlen);
		memcpy(h->cpl.client, tag->client, sizeof(h->cpl.client));
		ST(&h->cpl.seq, tag->seq);
		ST(&h->cpl.lease, id);
		STR(&h->cpl.phase, CPL_PUTTING);
		SQ_HOOK(QPI_HOOK_CPL_MARK);
		qpi_sq_budget_ns = budget < 0 || budget > SQ_CPL_LOCK_NS
		    ? SQ_CPL_LOCK_NS
		    : budget;
		rc = qpi_sq_try_put(r, &item, 1, tag, &snap);
		qpi_sq_budget_ns = budget;
		if (rc == QP_OK) {
			STR(&h->cpl.phase, CPL_PUT);
			SQ_HOOK(QPI_HOOK_CPL_PUT);
			sq_cpl_finish(t);
			sq_unlock_bump(t, &h->gs, true);
			/* Either segment truncated under the copy: say so. */
			return (rc = sq_after(r)) != QP_OK ? rc : sq_after(t);
		}
		STR(&h->cpl.phase, CPL_NONE);
		sq_unlock(&h->gs);
		if (rc == QP_EBUSY && budget < 0) {
			/* Wait for the results queue's lock alone. */
			if ((rc = qpi_sq_lock_until(r, &r->h->ps, INT64_MAX))
			    != QP_OK) {
				return rc;
			}
			sq_unlock(&r->h->ps);
			continue;
		}
		if (rc != QP_EFULL || deadline == 0) {
			return rc;
		}
		rc = qpi_sq_wait(
		    r, EV_NF, qpi_sq_pred_progress, &snap, deadline, &spun);
		if (rc == QP_ECLOSED) {
			return rc;
		}
		if (rc == QP_ETIMEDOUT) {
			deadline = 0; /* one last try */
		}
	}
}
