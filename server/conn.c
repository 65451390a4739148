/*
 * conn.c - the clients' connections, known by the transport's connection
 * id. A connection owns what its client holds: its leases (owner token
 * pid << 32 | id, noted per queue it took them from, and its WORK leases,
 * whose ack is also a task_done and which touch may renew), its parked
 * requests and its pipe sides. When it closes, qps_conn_close walks its
 * own lists and gives all of it back: its leased items are back at the
 * head of their queues at once. Every lease it takes is noted with its
 * expiry (qps_conn_lease_add), so that it holds at most --max-leases at
 * once (a prefetch limit: one consumer never takes every lease slot of a
 * queue while others wait); a lease that expired is forgotten when the
 * count reaches the limit (qps_conn_lease_room). The notes are records
 * in an array of the connection's own (16, 32, 64... up to --max-leases,
 * kept until it closes) with a free list, and an open-addressed index of
 * them by lease id (linear probing, at most a quarter full): taking a batch of
 * 256 leases and confirming them allocates nothing once the connection
 * has held that many, an ack finds its lease in a probe or two, and a
 * connection never has records for more than twice the most leases it
 * held at once, nor more than --max-leases.
 *
 * Locking: none of its own; everything runs under the ops lock.
 */
#include "qps.h"

#include <stdlib.h>
#include <unistd.h>

/* Connection ids seen leaving before their first request was handled. */
#define CONN_TOMBSTONES 256
/* A connection this far past --max-connections (a quarter of it, at
 * least 64) is closed at once; closer, it is told why (its first request
 * is answered ELIMIT) and closed then, or at --auth-timeout. */
#define CONN_HARD_EXTRA(max) ((max) / 4 > 64 ? (max) / 4 : 64)

static qps_loglimit refuse_ll, hard_ll;

/* A lease held by a connection (q NULL: a free record). */
typedef struct qps_lrec qps_lrec;
struct qps_lrec {
	uint64_t id; /* the lease id */
	qps_q *q;
	int64_t expiry_ms; /* monotonic ms: gone by itself after it */
	uint32_t next; /* free: the next free record + 1 (0: none) */
	bool work; /* a WORK lease: its ack is a task_done, touch renews */
};

/* A slot of a connection's index: its record + 1 (0: empty) and the
 * hash of its lease id. */
typedef struct qps_lslot {
	uint32_t rec;
	uint32_t hash;
} qps_lslot;

/* The records of a connection's first array. */
#define CONN_RECS_MIN 16

static struct {
	qpi_htab conns; /* every connection; conns.n of them */
	uint32_t tomb[CONN_TOMBSTONES];
	uint32_t ntomb;
} cs;

uint32_t
qps_conns_count(void)
{
	return (uint32_t) cs.conns.n;
}

static qps_conn *
conn_find(uint32_t id)
{
	return (qps_conn *) qpi_htab_find(&cs.conns, id);
}

qps_conn *
qps_conn_get(uint32_t id)
{
	qps_conn *c = conn_find(id);

	if (c != NULL) {
		return c;
	}
	for (uint32_t i = 0; i < cs.ntomb && i < CONN_TOMBSTONES; i++) {
		if (cs.tomb[i] == id) {
			return NULL; /* it left already */
		}
	}
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		return NULL;
	}
	c->node.key = id;
	c->owner = ((uint64_t) getpid() << 32) | id;
	c->over_limit = cs.conns.n >= qps_cfg->max_connections;
	if (c->over_limit) {
		qps_log_limited(&refuse_ll, QPS_LOG_WARN,
		    "connection %u refused: the server serves at most %u "
		    "(--max-connections)",
		    id, qps_cfg->max_connections);
	}
	qpi_htab_insert(&cs.conns, &c->node);
	return c;
}

bool
qps_conn_open(uint32_t id)
{
	uint32_t max = qps_cfg->max_connections;

	if (cs.conns.n < (size_t) max + CONN_HARD_EXTRA(max)
	    || conn_find(id) != NULL) {
		return qps_conn_get(id) != NULL;
	}
	qps_log_limited(&hard_ll, QPS_LOG_WARN,
	    "closing connection %u at once: %u connections, far over "
	    "--max-connections %u",
	    id, (unsigned) cs.conns.n, qps_cfg->max_connections);
	return false;
}

bool
qps_conn_settled(uint32_t id, const char **why)
{
	qps_conn *c = conn_find(id);

	if (c == NULL) {
		return true;
	}
	if (c->over_limit) {
		*why = "over --max-connections";
		return false;
	}
	if (qps_sec_auth_required() && !c->ss.as.ok) {
		*why = "not authenticated in time (--auth-timeout)";
		return false;
	}
	return true;
}

void
qps_conn_leased(qps_conn *c, qps_q *q)
{
	for (uint32_t i = c->nleased; i-- > 0;) {
		if (c->leased[i] == q) {
			return;
		}
	}
	if (c->nleased == c->leased_cap) {
		uint32_t cap = c->leased_cap == 0 ? 4 : c->leased_cap * 2;
		qps_q **v = realloc(c->leased, cap * sizeof(*v));
		if (v == NULL) {
			qps_log(QPS_LOG_ERROR,
			    "out of memory: leases of connection %u on '%s' "
			    "return at their expiry if it closes",
			    (unsigned) c->node.key, q->name);
			return;
		}
		c->leased = v;
		c->leased_cap = cap;
	}
	c->leased[c->nleased++] = q;
}

/* The hash of lease id (ids are often consecutive numbers): its low
 * bits pick where its probe starts, all of it is kept in its slot. */
static uint32_t
lidx_hash(uint64_t id)
{
	id ^= id >> 33;
	id *= 0xff51afd7ed558ccdull;
	id ^= id >> 33;
	return (uint32_t) id;
}

/* The index slot of c's lease id on q, or NULL. */
static qps_lslot *
lidx_find(qps_conn *c, qps_q *q, uint64_t id)
{
	uint32_t mask = c->lidx_mask, h = lidx_hash(id);

	if (c->lidx == NULL) {
		return NULL;
	}
	for (uint32_t s = h & mask;; s = (s + 1) & mask) {
		qps_lslot *sl = &c->lidx[s];
		if (sl->rec == 0) {
			return NULL;
		}
		if (sl->hash == h && c->lrec[sl->rec - 1].id == id
		    && c->lrec[sl->rec - 1].q == q) {
			return sl;
		}
	}
}

/* Indexes record r (0-based) of c; the index has a free slot. */
static void
lidx_put(qps_conn *c, uint32_t r)
{
	uint32_t mask = c->lidx_mask, h = lidx_hash(c->lrec[r].id),
	         s = h & mask;

	while (c->lidx[s].rec != 0) {
		s = (s + 1) & mask;
	}
	c->lidx[s].hash = h;
	c->lidx[s].rec = r + 1;
}

/* Empties index slot sp and frees its record: the entries after it in
 * its run move back (linear probing's deletion, no tombstones). */
static void
lease_drop(qps_conn *c, qps_lslot *sp)
{
	uint32_t mask = c->lidx_mask, i = (uint32_t) (sp - c->lidx), j = i;
	qps_lrec *rec = &c->lrec[sp->rec - 1];

	rec->q = NULL;
	rec->next = c->lfree;
	c->lfree = sp->rec;
	c->nlease--;
	for (;;) {
		j = (j + 1) & mask;
		if (c->lidx[j].rec == 0) {
			break;
		}
		uint32_t k = c->lidx[j].hash & mask;
		/* Moved back to i unless its home lies in (i, j]. */
		if (j > i ? k <= i || k > j : k <= i && k > j) {
			c->lidx[i] = c->lidx[j];
			i = j;
		}
	}
	c->lidx[i].rec = 0;
}

/* More records for c: twice as many (at least CONN_RECS_MIN more), within
 * --max-leases, and an index of four slots per record. False if out of
 * memory (nothing changed). */
static bool
lease_grow(qps_conn *c)
{
	uint32_t old = c->lrec_cap, cap = old * 2, lim = qps_cfg->conn_leases;
	uint32_t nslot = 1;
	qps_lrec *rec;
	qps_lslot *idx;

	cap = cap > lim ? lim : cap;
	cap = cap < old + CONN_RECS_MIN ? old + CONN_RECS_MIN : cap;
	while (nslot < 4 * cap) {
		nslot *= 2;
	}
	if ((idx = calloc(nslot, sizeof(*idx))) == NULL) {
		return false;
	}
	if ((rec = realloc(c->lrec, cap * sizeof(*rec))) == NULL) {
		free(idx);
		return false;
	}
	free(c->lidx);
	c->lrec = rec;
	c->lrec_cap = cap;
	c->lidx = idx;
	c->lidx_mask = nslot - 1;
	for (uint32_t r = 0; r < old; r++) {
		if (rec[r].q != NULL) {
			lidx_put(c, r);
		}
	}
	for (uint32_t r = cap; r-- > old;) {
		rec[r].q = NULL;
		rec[r].next = c->lfree;
		c->lfree = r + 1;
	}
	return true;
}

void
qps_conn_lease_add(
    qps_conn *c, qps_q *q, uint64_t lease_id, int64_t expiry_ms, bool work)
{
	qps_lrec *rec;
	uint32_t r;

	if (c->lfree == 0 && !lease_grow(c)) {
		qps_log(QPS_LOG_ERROR,
		    "out of memory: lease %llu on '%s' is not counted%s",
		    (unsigned long long) lease_id, q->name,
		    work ? ", and its ack will not count as task_done" : "");
		return;
	}
	r = c->lfree - 1;
	rec = &c->lrec[r];
	c->lfree = rec->next;
	rec->id = lease_id;
	rec->q = q;
	rec->expiry_ms = expiry_ms;
	rec->work = work;
	c->nlease++;
	lidx_put(c, r);
}

uint32_t
qps_conn_lease_records(const qps_conn *c)
{
	return c->lrec_cap;
}

bool
qps_conn_work_take(qps_conn *c, qps_q *q, uint64_t lease_id)
{
	qps_lslot *sp = lidx_find(c, q, lease_id);
	bool work = sp != NULL && c->lrec[sp->rec - 1].work;

	if (sp != NULL) {
		lease_drop(c, sp);
	}
	return work;
}

bool
qps_conn_work_holds(qps_conn *c, qps_q *q, uint64_t lease_id)
{
	qps_lslot *sp = lidx_find(c, q, lease_id);

	return sp != NULL && c->lrec[sp->rec - 1].work;
}

void
qps_conn_lease_renew(
    qps_conn *c, qps_q *q, uint64_t lease_id, int64_t expiry_ms)
{
	qps_lslot *sp = lidx_find(c, q, lease_id);

	if (sp != NULL) {
		c->lrec[sp->rec - 1].expiry_ms = expiry_ms;
	}
}

/* Forgets c's leases on q, or (q NULL) those expired by now_ms. */
static void
lease_purge(qps_conn *c, qps_q *q, int64_t now_ms)
{
	for (uint32_t r = 0; r < c->lrec_cap; r++) {
		qps_lrec *rec = &c->lrec[r];
		qps_lslot *sp;
		if (rec->q != NULL
		    && (q != NULL ? rec->q == q : rec->expiry_ms <= now_ms)
		    && (sp = lidx_find(c, rec->q, rec->id)) != NULL) {
			lease_drop(c, sp);
		}
	}
}

uint32_t
qps_conn_lease_room(qps_conn *c)
{
	uint32_t cap = qps_cfg->conn_leases;

	if (c->nlease >= cap) {
		/* Leases that ran out went back by themselves. */
		lease_purge(c, NULL, qpi_now_ms());
	}
	return c->nlease >= cap ? 0 : cap - c->nlease;
}

/* Ends c's parked requests unanswered (nobody is there) and gives back
 * every lease it holds: the queues it took leases from, each asked once.
 * Returns how many items went back. */
static uint64_t
conn_release(qps_conn *c)
{
	uint64_t n = 0;

	while (c->waits != NULL) {
		qps_wait_finish(c->waits, NULL);
	}
	for (uint32_t i = 0; i < c->nleased; i++) {
		n += qps_q_release_owner(c->leased[i], c->owner);
	}
	c->nleased = 0;
	return n;
}

static void
conn_free(qps_conn *c)
{
	free(c->lrec);
	free(c->lidx);
	free(c->leased);
	free(c);
}

void
qps_conn_close(uint32_t id)
{
	qps_conn *c = conn_find(id);
	uint64_t n;

	if (c == NULL) {
		cs.tomb[cs.ntomb++ % CONN_TOMBSTONES] = id;
		return;
	}
	n = conn_release(c);
	qps_pipes_conn_gone(id); /* its peers see end of file */
	qpi_htab_remove(&cs.conns, &c->node);
	if (n > 0) {
		qps_log(QPS_LOG_INFO,
		    "connection %u closed holding %llu leased items: back "
		    "at the head of their queues",
		    id, (unsigned long long) n);
	} else {
		qps_log(QPS_LOG_DEBUG, "connection %u closed", id);
	}
	conn_free(c);
}

/* Drops c's notes on q (it goes away). */
static void
forget_q_cb(qpi_hnode *n, void *arg)
{
	qps_conn *c = (qps_conn *) n;

	for (uint32_t i = c->nleased; i-- > 0;) {
		if (c->leased[i] == arg) {
			c->leased[i] = c->leased[--c->nleased];
		}
	}
	lease_purge(c, arg, 0);
}

void
qps_conns_forget_q(qps_q *q)
{
	qpi_htab_each(&cs.conns, forget_q_cb, q);
}

static void
drop_cb(qpi_hnode *n, void *arg)
{
	*(uint64_t *) arg += conn_release((qps_conn *) n);
}

uint64_t
qps_conns_drop_all(void)
{
	uint64_t total = 0;

	qpi_htab_each(&cs.conns, drop_cb, &total);
	return total;
}

static void
free_cb(qpi_hnode *n, void *arg)
{
	(void) arg;
	conn_free((qps_conn *) n);
}

void
qps_conns_fini(void)
{
	qpi_htab_each(&cs.conns, free_cb, NULL);
	qpi_htab_fini(&cs.conns);
}
