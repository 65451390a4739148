/*
 * dedup.c - applying each (client id, seq) once (PROTOCOL.md,
 * idempotency). Per client id, a window of the last QPS_DEDUP_WINDOW seqs:
 * for each, whether it is in progress (and its parked request, if
 * parked) or done, with its status, and the reply's bytes for the ops
 * whose replies carry fields (ack's missing ids). A repeat of a done seq
 * gets the first reply again; a seq older than the window is refused. The
 * window starts small and grows with the client's seqs. Clients are
 * forgotten least recently used first when there are too many, never
 * while a request of theirs is in progress.
 *
 * A restarted server seeds the windows with the put requests its queues
 * say are in them (qps_dedup_seed): whole ones as done with QP_OK, a
 * put_many that a kill cut short as partial (its repeat puts the rest).
 *
 * Locking: none of its own; the ops lock guards it.
 */
#include "qps.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* A client's first window: small, so that the many one-request clients a
 * restart seeds from a durable queue's log (a CLI put each) cost little. */
#define DEDUP_MIN_SLOTS 4
/* Clients remembered at most (about 32 KiB each at full window). */
#define DEDUP_MAX_CLIENTS 16384

enum { SLOT_EMPTY = 0, SLOT_PENDING, SLOT_DONE, SLOT_PARTIAL };

typedef struct dslot {
	uint64_t seq;
	uint8_t state;
	uint8_t op;
	int16_t status;
	uint32_t skip; /* PARTIAL (and PENDING after it): items put */
	uint32_t replen;
	uint8_t *rep; /* SLOT_DONE, ops with reply fields: the reply */
	qps_wait *wait; /* SLOT_PENDING: the parked request, if parked */
} dslot;

struct qps_client {
	qpi_hnode node; /* key: qpi_hash_keyed(id) */
	uint8_t id[QPS_CLIENT_ID_LEN];
	struct qps_client *prev, *next; /* LRU, most recent first */
	uint64_t max_seq;
	uint32_t npending;
	uint32_t cap; /* slots: a power of two, up to QPS_DEDUP_WINDOW */
	dslot *slot;
};

static struct {
	qpi_htab tab;
	qps_client *head, *tail;
	uint32_t n;
} dd;

static void
lru_unlink(qps_client *cl)
{
	*(cl->prev != NULL ? &cl->prev->next : &dd.head) = cl->next;
	*(cl->next != NULL ? &cl->next->prev : &dd.tail) = cl->prev;
	cl->prev = cl->next = NULL;
}

static void
lru_front(qps_client *cl)
{
	cl->next = dd.head;
	*(dd.head != NULL ? &dd.head->prev : &dd.tail) = cl;
	dd.head = cl;
}

static void
client_free(qps_client *cl)
{
	for (uint32_t i = 0; i < cl->cap; i++) {
		free(cl->slot[i].rep);
	}
	free(cl->slot);
	free(cl);
}

void
qps_dedup_reply(qps_client *cl, uint64_t seq, uint32_t op, nng_msg *rep)
{
	/* Replies that carry fields (ack's and touch's missing ids, a
	 * pipe's message or side) are kept whole. */
	bool keep = rep != NULL && op != QPI_OP_GET;
	bool body = keep
	    && (op == QPI_OP_ACK || op == QPI_OP_TOUCH
	        || op == QPI_OP_PIPE_RECV || op == QPI_OP_PIPE_OPEN);

	qps_dedup_end(cl, seq, keep ? qps_rep_status(rep) : QP_ENOMEM,
	    body ? nng_msg_body(rep) : NULL, body ? nng_msg_len(rep) : 0,
	    keep);
}

/* The client with that id if known (no LRU change), else NULL. */
static qps_client *
client_find(const uint8_t *id)
{
	for (qpi_hnode *n
	     = qpi_htab_find(&dd.tab, qpi_hash_keyed(id, QPS_CLIENT_ID_LEN));
	     n != NULL; n = qpi_htab_next(n)) {
		qps_client *cl = (qps_client *) n;
		if (memcmp(cl->id, id, QPS_CLIENT_ID_LEN) == 0) {
			return cl;
		}
	}
	return NULL;
}

qps_client *
qps_dedup_client(const uint8_t *id)
{
	qps_client *cl = client_find(id);

	if (cl != NULL) {
		lru_unlink(cl);
		lru_front(cl);
		return cl;
	}
	if (dd.n >= DEDUP_MAX_CLIENTS) {
		for (cl = dd.tail; cl != NULL; cl = cl->prev) {
			if (cl->npending == 0) {
				lru_unlink(cl);
				qpi_htab_remove(&dd.tab, &cl->node);
				dd.n--;
				client_free(cl);
				break;
			}
		}
	}
	if ((cl = calloc(1, sizeof(*cl))) == NULL
	    || (cl->slot = calloc(DEDUP_MIN_SLOTS, sizeof(dslot))) == NULL) {
		free(cl);
		return NULL;
	}
	cl->cap = DEDUP_MIN_SLOTS;
	memcpy(cl->id, id, QPS_CLIENT_ID_LEN);
	cl->node.key = qpi_hash_keyed(id, QPS_CLIENT_ID_LEN);
	qpi_htab_insert(&dd.tab, &cl->node);
	dd.n++;
	lru_front(cl);
	return cl;
}

/* Grows the window so that it holds the last min(max_seq, WINDOW) seqs. */
static void
client_grow(qps_client *cl)
{
	uint32_t cap = cl->cap;
	dslot *s;

	while (cap < QPS_DEDUP_WINDOW && cl->max_seq >= cap) {
		cap *= 4;
	}
	cap = cap > QPS_DEDUP_WINDOW ? QPS_DEDUP_WINDOW : cap;
	if (cap == cl->cap || (s = calloc(cap, sizeof(*s))) == NULL) {
		return; /* a smaller window: older repeats are applied again */
	}
	for (uint32_t i = 0; i < cl->cap; i++) {
		if (cl->slot[i].state != SLOT_EMPTY) {
			s[cl->slot[i].seq % cap] = cl->slot[i];
		}
	}
	free(cl->slot);
	cl->slot = s;
	cl->cap = cap;
}

/* False when seq is older than cl's window; else the window holds it. */
static bool
client_window(qps_client *cl, uint64_t seq)
{
	if (cl->max_seq >= QPS_DEDUP_WINDOW
	    && seq <= cl->max_seq - QPS_DEDUP_WINDOW) {
		return false;
	}
	if (seq > cl->max_seq) {
		cl->max_seq = seq;
		client_grow(cl);
	}
	return true;
}

static dslot *
slot_of(qps_client *cl, uint64_t seq)
{
	return &cl->slot[seq % cl->cap];
}

qps_dedup_res
qps_dedup_begin(
    qps_client *cl, uint64_t seq, uint32_t op, qps_dedup_prev *prev)
{
	dslot *s;

	memset(prev, 0, sizeof(*prev));
	if (!client_window(cl, seq)) {
		return QPS_DEDUP_TOO_OLD;
	}
	s = slot_of(cl, seq);
	if (s->seq == seq && s->state == SLOT_DONE) {
		prev->status = s->status;
		prev->rep = s->rep;
		prev->replen = s->replen;
		return QPS_DEDUP_REPLAY;
	}
	if (s->seq == seq && s->state == SLOT_PENDING) {
		/* The same request again while the first is parked (its
		 * connection dropped and the client sent it anew): the new one
		 * takes over; the caller ends the old one unanswered. */
		prev->wait = s->wait;
		prev->skip = s->skip;
		s->wait = NULL;
		return QPS_DEDUP_TAKEOVER;
	}
	if (s->seq == seq && s->state == SLOT_PARTIAL) {
		/* A batch an earlier server cut short: the rest goes in. */
		prev->skip = s->skip;
		s->state = SLOT_PENDING;
		s->op = (uint8_t) op;
	} else {
		/* An older seq sharing the slot is forgotten. */
		cl->npending -= s->state == SLOT_PENDING;
		free(s->rep);
		*s = (dslot) {
		    .seq = seq, .op = (uint8_t) op, .state = SLOT_PENDING};
	}
	cl->npending++;
	return QPS_DEDUP_NEW;
}

void
qps_dedup_park(qps_client *cl, uint64_t seq, qps_wait *w)
{
	dslot *s = slot_of(cl, seq);

	if (s->seq == seq && s->state == SLOT_PENDING) {
		s->wait = w;
	}
}

void
qps_dedup_end(qps_client *cl, uint64_t seq, int status, const void *rep,
    size_t replen, bool keep)
{
	dslot *s = slot_of(cl, seq);

	if (s->seq != seq || s->state != SLOT_PENDING) {
		return; /* overwritten by a later seq meanwhile */
	}
	cl->npending--;
	s->wait = NULL;
	if (!keep) {
		memset(s, 0, sizeof(*s));
		return;
	}
	if (status != QP_OK && s->skip > 0) {
		/* The rest of a cut batch did not go in: a repeat tries
		 * again (what is in stays counted). */
		s->state = SLOT_PARTIAL;
		return;
	}
	s->state = SLOT_DONE;
	s->status = (int16_t) status;
	if (rep != NULL && replen > 0 && (s->rep = malloc(replen)) != NULL) {
		memcpy(s->rep, rep, replen);
		s->replen = (uint32_t) replen;
	}
}

int
qps_dedup_seed(const uint8_t *id, uint64_t seq, uint32_t done, uint32_t n)
{
	qps_client *cl;
	dslot *s;

	if (seq == 0 || done == 0 || n == 0
	    || (cl = qps_dedup_client(id)) == NULL
	    || !client_window(cl, seq)) {
		return 0;
	}
	/* This server's own view, a newer seq, or as much known already. */
	s = slot_of(cl, seq);
	if (s->state == SLOT_PENDING
	    || (s->state != SLOT_EMPTY && s->seq > seq)
	    || (s->seq == seq && s->state == SLOT_DONE)
	    || (s->seq == seq && s->state == SLOT_PARTIAL
	        && s->skip >= done)) {
		return 0;
	}
	free(s->rep);
	/* All of it in: done, QP_OK; some: the rest goes in on a repeat. */
	*s = (dslot) {.seq = seq,
	    .op = n > 1 ? QPI_OP_PUT_MANY : QPI_OP_PUT,
	    .state = done >= n ? SLOT_DONE : SLOT_PARTIAL,
	    .status = QP_OK,
	    .skip = done >= n ? 0 : done};
	return 1;
}

void
qps_dedup_fail(const uint8_t *id, uint64_t seq, int status)
{
	qps_client *cl = client_find(id);
	dslot *s = cl != NULL && seq != 0 ? slot_of(cl, seq) : NULL;

	if (s != NULL && s->seq == seq && s->state == SLOT_DONE
	    && s->status == QP_OK) {
		s->status = (int16_t) status;
	}
}

static void
client_free_cb(qpi_hnode *n, void *arg)
{
	(void) arg;
	client_free((qps_client *) n);
}

void
qps_dedup_fini(void)
{
	qpi_htab_each(&dd.tab, client_free_cb, NULL);
	qpi_htab_fini(&dd.tab);
	dd.head = dd.tail = NULL;
	dd.n = 0;
}
