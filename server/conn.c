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
 * of the connection's own, in chunks that double (16, 16, 32, 64...,
 * up to --max-leases in all) and are kept until it closes, with a free
 * list, indexed by lease id (a spread table, htab.h: a lease id's low
 * bits, its slot, turned by its queue's secret hash, pick its bucket,
 * so that the buckets of a batch's slots, near each other, share cache
 * lines): taking a batch of 256 leases and confirming them allocates
 * nothing once the connection has held that many, and a connection has
 * records for at most twice the most leases it held at once (16 at
 * least), and for --max-leases at most (rounded up to 16).
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

/* A lease held by a connection; a free record is on the connection's
 * free list (linked through node.hnext). */
typedef struct conn_work {
	qpi_hnode node; /* key: lease id */
	qps_q *q;
	int64_t expiry_ms; /* monotonic ms: gone by itself after it */
	bool work; /* a WORK lease: its ack is a task_done, touch renews */
} conn_work;

/* The records of a connection's first chunk. */
#define CONN_CHUNK_MIN 16

/* A chunk of lease records (c->lchunks, a list). */
typedef struct qps_lchunk qps_lchunk;
struct qps_lchunk {
	struct qps_lchunk *next;
	uint32_t n; /* records in rec */
	conn_work rec[];
};

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
	c->work.spread = true; /* lease ids: their low bits, the slot */
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

/* A free record of c: from its free list, else from a new chunk as large
 * as all of c's chunks so far (at least CONN_CHUNK_MIN records), within
 * --max-leases. NULL if out of memory. */
static conn_work *
work_alloc(qps_conn *c)
{
	conn_work *wk = (conn_work *) c->lfree;

	if (wk == NULL) {
		uint32_t cap = qps_cfg->conn_leases, n = c->lrecs;
		n = cap > c->lrecs && cap - c->lrecs < n ? cap - c->lrecs : n;
		n = n < CONN_CHUNK_MIN ? CONN_CHUNK_MIN : n;
		qps_lchunk *ch = malloc(sizeof(*ch) + n * sizeof(ch->rec[0]));
		if (ch == NULL) {
			return NULL;
		}
		ch->next = c->lchunks;
		ch->n = n;
		c->lchunks = ch;
		c->lrecs += n;
		for (uint32_t i = n; i-- > 0;) {
			ch->rec[i].node.hnext = (qpi_hnode *) wk;
			wk = &ch->rec[i];
		}
	}
	c->lfree = wk->node.hnext;
	return wk;
}

/* Puts wk (not in c->work) on the free list. */
static void
work_unused(qps_conn *c, conn_work *wk)
{
	wk->q = NULL;
	wk->node.hnext = c->lfree;
	c->lfree = &wk->node;
}

/* Takes wk (in c->work) out of the index, onto the free list. */
static void
work_free(qps_conn *c, conn_work *wk)
{
	qpi_htab_remove(&c->work, &wk->node);
	work_unused(c, wk);
}

/* A lease's key in c->work: its id, its low bits (the slot) turned by
 * the queue's secret hash, so that the same slot of many queues (a
 * client that leases one item from each of a thousand fresh queues
 * holds slot 0 of each) does not chain in one bucket. */
static uint64_t
work_key(const qps_q *q, uint64_t lease_id)
{
	return lease_id ^ q->node.key;
}

void
qps_conn_lease_add(
    qps_conn *c, qps_q *q, uint64_t lease_id, int64_t expiry_ms, bool work)
{
	conn_work *wk = work_alloc(c);

	if (wk == NULL) {
		qps_log(QPS_LOG_ERROR,
		    "out of memory: lease %llu on '%s' is not counted%s",
		    (unsigned long long) lease_id, q->name,
		    work ? ", and its ack will not count as task_done" : "");
		return;
	}
	wk->node.key = work_key(q, lease_id);
	wk->q = q;
	wk->expiry_ms = expiry_ms;
	wk->work = work;
	if (qpi_htab_insert(&c->work, &wk->node) != QP_OK) {
		work_unused(c, wk); /* not indexed: back to the list */
		qps_log(QPS_LOG_ERROR,
		    "out of memory: lease %llu on '%s' is not counted",
		    (unsigned long long) lease_id, q->name);
	}
}

uint32_t
qps_conn_lease_records(const qps_conn *c)
{
	return c->lrecs;
}

static conn_work *
work_find(qps_conn *c, qps_q *q, uint64_t lease_id)
{
	for (qpi_hnode *n = qpi_htab_find(&c->work, work_key(q, lease_id));
	     n != NULL; n = qpi_htab_next(n)) {
		if (((conn_work *) n)->q == q) {
			return (conn_work *) n;
		}
	}
	return NULL;
}

static bool
work_on(const qpi_hnode *n, void *q)
{
	return ((const conn_work *) n)->q == q;
}

bool
qps_conn_work_take(qps_conn *c, qps_q *q, uint64_t lease_id)
{
	conn_work *wk = (conn_work *) qpi_htab_take(
	    &c->work, work_key(q, lease_id), work_on, q);
	bool work = wk != NULL && wk->work;

	if (wk != NULL) {
		work_unused(c, wk);
	}
	return work;
}

bool
qps_conn_work_holds(qps_conn *c, qps_q *q, uint64_t lease_id)
{
	conn_work *wk = work_find(c, q, lease_id);

	return wk != NULL && wk->work;
}

void
qps_conn_lease_renew(
    qps_conn *c, qps_q *q, uint64_t lease_id, int64_t expiry_ms)
{
	conn_work *wk = work_find(c, q, lease_id);

	if (wk != NULL) {
		wk->expiry_ms = expiry_ms;
	}
}

/* Which leases of c to forget: those on q, or (q NULL) those expired by
 * now_ms. */
typedef struct purge_arg {
	qps_conn *c;
	qps_q *q;
	int64_t now_ms;
} purge_arg;

static void
purge_cb(qpi_hnode *n, void *arg)
{
	purge_arg *a = arg;
	conn_work *wk = (conn_work *) n;

	if (a->q != NULL ? wk->q == a->q : wk->expiry_ms <= a->now_ms) {
		work_free(a->c, wk);
	}
}

uint32_t
qps_conn_lease_room(qps_conn *c)
{
	uint32_t cap = qps_cfg->conn_leases;

	if (c->work.n >= cap) {
		/* Leases that ran out went back by themselves. */
		purge_arg a = {.c = c, .now_ms = qpi_now_ms()};
		qpi_htab_each(&c->work, purge_cb, &a);
	}
	return c->work.n >= cap ? 0 : cap - (uint32_t) c->work.n;
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
	while (c->lchunks != NULL) {
		qps_lchunk *ch = c->lchunks;
		c->lchunks = ch->next;
		free(ch);
	}
	qpi_htab_fini(&c->work);
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
	purge_arg a = {.c = (qps_conn *) n, .q = arg};

	for (uint32_t i = a.c->nleased; i-- > 0;) {
		if (a.c->leased[i] == a.q) {
			a.c->leased[i] = a.c->leased[--a.c->nleased];
		}
	}
	qpi_htab_each(&a.c->work, purge_cb, &a);
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
