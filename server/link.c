/*
 * link.c - one client connection of qpiped, whatever carries its bytes:
 * the SP req0/rep0 wire format (lib/sp.h: handshake, length-prefixed
 * frames, the request's backtrace echoed in its reply) read from it, each
 * request handed to the request layer (qps_ops_handle) with a worker that
 * is its reply route, and the replies written back from whatever thread
 * answers them, at once or after parking. A frame over --max-message plus
 * slack closes the connection before anything is allocated; a peer with
 * more than LINK_PAUSE_BYTES of replies unread is not read until it
 * reads, checked after each request (the bytes of a read burst past that
 * request wait in the link's inbuf), so that a pipelining peer holds at
 * most that plus one reply of the server's memory. How bytes move is the
 * driver's (link.h); nothing here branches on the transport. A connection
 * must send its SP handshake within --handshake-timeout, and authenticate
 * (when the server has a token) within --auth-timeout, or be closed: the
 * reaper thread sleeps until the oldest such deadline (two FIFOs, each in
 * order of arrival since each limit is one duration), so that connections
 * that never finish cannot hold --max-connections.
 *
 * Locking: lk.mu guards the list of links and the counters but nbusy
 * and drain_waits (atomics: a request's start and end take no lock). Each
 * link's mu guards its out queue, its flags and its reference count; its read
 * side (handshake, frame parser) belongs to the one thread its driver
 * reads on. lk.mu may be taken before a link's mu, never after. The
 * request layer is never called with either held (ops lock -> link mu).
 */
#include "../lib/link.h" /* lib's: qpi_iov_advance */
#include "link.h"
#include "sp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes a request may carry beyond the largest item: op, name, fields. */
#define LINK_FRAME_SLACK (64u * 1024u)
/* Replies unread by a peer past which its requests are no longer read. */
#define LINK_PAUSE_BYTES (1024u * 1024u)
/* Replies of at most this many bytes, header included, are written as
 * one buffer. */
#define LINK_SMALL_REPLY 512u

enum { LINK_HS, LINK_HDR, LINK_BODY };

/* The lists of links with a time limit to meet (qps_link.plist). */
enum { LINK_DUE_NONE, LINK_DUE_HS, LINK_DUE_AUTH };

/* A request in hand: its link and the backtrace its reply echoes. */
struct qps_worker {
	qps_link *l;
	bool parked;
	bool close_after; /* shut the connection once the reply is out */
	uint8_t btlen;
	uint8_t bt[4 * QPI_SP_MAX_HOPS];
	int64_t t0; /* metrics: when the request arrived */
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* a request ended, a link was freed */
	qps_link *links; /* every open link */
	uint64_t nalloc; /* links not yet freed */
	/* Requests being handled, parked ones not: atomic, so that a
	 * request's start and end take no lock; drain_waits (atomic) says
	 * whether an end at 0 is to wake qps_net_drain. */
	uint64_t nbusy;
	uint32_t drain_waits;
	uint64_t nparked, max_parked;
	uint32_t next_id;
	size_t cap; /* largest frame body accepted */
	bool closing;
	/* Time limits: the links due, oldest first, per list. */
	struct {
		qps_link *head, *tail;
		int64_t ns; /* the limit, from born_ns */
	} due[3];
	pthread_t reaper;
	bool reaper_on;
	pthread_cond_t rcv; /* the reaper's: a list got a head, closing */
} lk = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static void
link_ref(qps_link *l)
{
	pthread_mutex_lock(&l->mu);
	l->refs++;
	pthread_mutex_unlock(&l->mu);
}

/* The peer's address for logs. */
static const char *
link_peer(const qps_link *l)
{
	return l->peer[0] != '\0' ? l->peer : "a local socket";
}

/* Appends l to due list k unless it is closed meanwhile (dead: it has
 * left the lists already, or leaves them after this). */
static void
link_due_add(qps_link *l, int k)
{
	pthread_mutex_lock(&lk.mu);
	pthread_mutex_lock(&l->mu);
	if (!l->dead) {
		l->plist = k;
		l->pnext = NULL;
		l->pprev = lk.due[k].tail;
		*(l->pprev != NULL ? &l->pprev->pnext : &lk.due[k].head) = l;
		lk.due[k].tail = l;
		pthread_cond_signal(&lk.rcv);
	}
	pthread_mutex_unlock(&l->mu);
	pthread_mutex_unlock(&lk.mu);
}

/* Takes l out of its due list, if in one. lk.mu held. */
static void
link_due_remove(qps_link *l)
{
	int k = l->plist;

	if (k == LINK_DUE_NONE) {
		return;
	}
	*(l->pprev != NULL ? &l->pprev->pnext : &lk.due[k].head) = l->pnext;
	*(l->pnext != NULL ? &l->pnext->pprev : &lk.due[k].tail) = l->pprev;
	l->plist = LINK_DUE_NONE;
	l->pprev = l->pnext = NULL;
}

/* The link at the head of list k when its deadline has passed (with a
 * reference, taken out of the list), else NULL; *next_ns: the head's
 * deadline. lk.mu held. */
static qps_link *
link_due_pop(int k, int64_t now, int64_t *next_ns)
{
	qps_link *l = lk.due[k].head;

	if (l == NULL) {
		return NULL;
	}
	if (l->born_ns + lk.due[k].ns > now) {
		int64_t d = l->born_ns + lk.due[k].ns;
		*next_ns = d < *next_ns ? d : *next_ns;
		return NULL;
	}
	link_due_remove(l);
	link_ref(l);
	return l;
}

static qps_loglimit reap_ll;

/* Closes l (a reference held, lk.mu not) for why, logged at warn. */
static void
link_reap(qps_link *l, const char *why)
{
	qps_log_limited(&reap_ll, QPS_LOG_WARN,
	    "connection %u from %s closed: %s", l->id, link_peer(l), why);
	qps_link_close(l, why);
}

/* The reaper: closes links past their time limits. */
static void *
link_reaper(void *arg)
{
	(void) arg;
	qps_thread_init();
	pthread_mutex_lock(&lk.mu);
	while (!lk.closing) {
		int64_t now = qpi_now_ns(), next = INT64_MAX;
		int k = LINK_DUE_HS;
		qps_link *l = link_due_pop(k, now, &next);
		const char *why = NULL;

		if (l == NULL) {
			l = link_due_pop(k = LINK_DUE_AUTH, now, &next);
		}
		if (l != NULL) {
			bool hs = k == LINK_DUE_AUTH
			    || __atomic_load_n(&l->hs_done, __ATOMIC_ACQUIRE);
			pthread_mutex_unlock(&lk.mu);
			if (!hs) {
				link_reap(l,
				    "no SP handshake in time "
				    "(--handshake-timeout)");
			} else if (qps_ops_conn_settled(l->id, &why)) {
				/* It may stay. */
			} else if (k == LINK_DUE_HS
			    && lk.due[LINK_DUE_AUTH].ns
			        > lk.due[LINK_DUE_HS].ns) {
				link_due_add(l, LINK_DUE_AUTH); /* more time */
			} else {
				link_reap(l, why);
			}
			qps_link_unref(l);
			pthread_mutex_lock(&lk.mu);
			continue;
		}
		(void) qpi_cond_wait(&lk.rcv, &lk.mu, next);
	}
	pthread_mutex_unlock(&lk.mu);
	return NULL;
}

int
qps_link_setup(const qps_config *cfg)
{
	qpi_cond_init(&lk.cv);
	qpi_cond_init(&lk.rcv);
	lk.cap = cfg->max_message + LINK_FRAME_SLACK;
	lk.max_parked = (uint64_t) cfg->max_connections * 8 + 64;
	lk.due[LINK_DUE_HS].ns = cfg->handshake_ms * 1000000;
	lk.due[LINK_DUE_AUTH].ns = cfg->auth_ms * 1000000;
	lk.reaper_on
	    = pthread_create(&lk.reaper, NULL, link_reaper, NULL) == 0;
	if (!lk.reaper_on) {
		qps_log(QPS_LOG_ERROR, "cannot start a thread");
	}
	return lk.reaper_on ? QP_OK : QP_ESYSTEM;
}

qps_link *
qps_link_new(const qps_link_driver *drv, bool ipc, const char *peer)
{
	qps_link *l = calloc(1, sizeof(*l));

	if (l == NULL) {
		qps_log(QPS_LOG_ERROR, "out of memory for a connection");
		return NULL;
	}
	pthread_mutex_init(&l->mu, NULL);
	l->drv = drv;
	l->ipc = ipc;
	l->refs = 2;
	l->state = LINK_HS;
	l->hneed = QPI_SP_HS_LEN;
	l->fd = l->ep = -1;
	l->born_ns = qpi_now_ns();
	snprintf(l->peer, sizeof(l->peer), "%s", peer);
	pthread_mutex_lock(&lk.mu);
	lk.next_id = lk.next_id >= INT32_MAX ? 1 : lk.next_id + 1;
	l->id = lk.next_id;
	l->next = lk.links;
	if (lk.links != NULL) {
		lk.links->prev = l;
	}
	lk.links = l;
	lk.nalloc++;
	pthread_mutex_unlock(&lk.mu);
	return l;
}

static void
link_free(qps_link *l)
{
	if (l->body != NULL) {
		nng_msg_free(l->body);
	}
	free(l->inbuf);
	if (l->drv->free != NULL) {
		l->drv->free(l);
	}
	free(l->out);
	pthread_mutex_destroy(&l->mu);
	free(l);
	pthread_mutex_lock(&lk.mu);
	lk.nalloc--;
	pthread_cond_broadcast(&lk.cv);
	pthread_mutex_unlock(&lk.mu);
}

void
qps_link_unref(qps_link *l)
{
	bool last;

	pthread_mutex_lock(&l->mu);
	last = --l->refs == 0;
	pthread_mutex_unlock(&l->mu);
	if (last) {
		link_free(l);
	}
}

void
qps_link_close(qps_link *l, const char *why)
{
	pthread_mutex_lock(&l->mu);
	if (l->dead) {
		pthread_mutex_unlock(&l->mu);
		return;
	}
	l->dead = true;
	pthread_mutex_unlock(&l->mu);
	l->drv->close(l);
	pthread_mutex_lock(&lk.mu);
	*(l->prev != NULL ? &l->prev->next : &lk.links) = l->next;
	if (l->next != NULL) {
		l->next->prev = l->prev;
	}
	link_due_remove(l);
	pthread_mutex_unlock(&lk.mu);
	if (why != NULL) {
		qps_log(QPS_LOG_DEBUG, "connection %u closed: %s", l->id, why);
	}
	qps_ops_conn_remove(l->id);
	qps_link_unref(l);
}

void
qps_link_kick_locked(qps_link *l)
{
	l->paused = l->outlen - l->outoff + l->inflight > LINK_PAUSE_BYTES;
	if (!l->dead) {
		l->drv->kick(l);
	}
}

bool
qps_link_shut_due_locked(qps_link *l)
{
	return l->shut_after && !l->dead && l->outlen == l->outoff
	    && l->inflight == 0;
}

/* Writes what the driver takes at once of iov, queues the rest. l->mu
 * held. False when the connection broke. */
static bool
link_write_locked(qps_link *l, struct iovec *iov, int niov)
{
	size_t total = 0;

	for (int i = 0; i < niov; i++) {
		total += iov[i].iov_len;
	}
	if (l->drv->write_now != NULL && l->outlen == l->outoff
	    && l->inflight == 0) {
		ssize_t n = l->drv->write_now(l, iov, niov);
		if (n < 0) {
			return false;
		}
		total -= (size_t) n;
		niov = qpi_iov_advance(&iov, niov, (size_t) n);
	}
	if (total == 0) {
		return true;
	}
	if (l->outoff > 0) {
		memmove(l->out, l->out + l->outoff, l->outlen - l->outoff);
		l->outlen -= l->outoff;
		l->outoff = 0;
	}
	if (l->outlen + total > l->outcap) {
		size_t cap = l->outcap == 0 ? 4096 : l->outcap;
		while (cap < l->outlen + total) {
			cap *= 2;
		}
		uint8_t *o = realloc(l->out, cap);
		if (o == NULL) {
			return false;
		}
		l->out = o;
		l->outcap = cap;
	}
	for (int i = 0; i < niov; i++) {
		memcpy(l->out + l->outlen, iov[i].iov_base, iov[i].iov_len);
		l->outlen += iov[i].iov_len;
	}
	qps_link_kick_locked(l);
	return true;
}

/* A request is no longer busy (answered or parked): the last one wakes
 * a drain that waits. Sequentially consistent with qps_net_drain, which
 * raises drain_waits before it reads nbusy: either the drain sees 0, or
 * this sees it waiting and wakes it under the lock it waits with. */
static void
link_busy_end(void)
{
	if (__atomic_sub_fetch(&lk.nbusy, 1, __ATOMIC_SEQ_CST) == 0
	    && __atomic_load_n(&lk.drain_waits, __ATOMIC_SEQ_CST) > 0) {
		pthread_mutex_lock(&lk.mu);
		pthread_cond_broadcast(&lk.cv);
		pthread_mutex_unlock(&lk.mu);
	}
}

/* Ends a request (parked or not): its reply (NULL: none) goes out with
 * the request's backtrace, then the request's reference to its link is
 * dropped and the worker freed. */
void
qps_worker_reply(qps_worker *w, nng_msg *rep)
{
	qps_link *l = w->l;
	bool shut = false, last = false;

	if (w->parked) {
		pthread_mutex_lock(&lk.mu);
		lk.nparked--;
		pthread_cond_broadcast(&lk.cv);
		pthread_mutex_unlock(&lk.mu);
	} else {
		link_busy_end();
	}
	qps_metrics_request_end(w->t0, rep);
	pthread_mutex_lock(&l->mu);
	if (rep != NULL && !l->dead) {
		uint8_t hdr[9], one[LINK_SMALL_REPLY];
		size_t len = nng_msg_len(rep);
		struct iovec iov[3] = {
		    {hdr, qpi_sp_frame_hdr(hdr, l->ipc, w->btlen + len)},
		    {w->bt, w->btlen},
		    {nng_msg_body(rep), len},
		};
		size_t total = iov[0].iov_len + w->btlen + len;
		int niov = 3;
		l->shut_after = l->shut_after || w->close_after;
		qps_metrics_bytes(0, total);
		if (total <= sizeof(one)) {
			/* One buffer: the copy here costs less than the
			 * kernel's walk of three. */
			size_t off = 0;
			for (int i = 0; i < 3; i++) {
				memcpy(one + off, iov[i].iov_base,
				    iov[i].iov_len);
				off += iov[i].iov_len;
			}
			iov[0] = (struct iovec) {one, total};
			niov = 1;
		}
		/* A broken connection: its reader notices once shut, and
		 * reads no more requests. */
		if (!link_write_locked(l, iov, niov)) {
			l->shut_after = shut = true;
		}
		shut = shut || qps_link_shut_due_locked(l);
	}
	if (!shut) {
		last = --l->refs == 0;
	}
	pthread_mutex_unlock(&l->mu);
	free(w);
	qps_msg_free(rep);
	if (shut) {
		l->drv->shut(l);
		qps_link_unref(l);
	} else if (last) {
		link_free(l);
	}
}

bool
qps_worker_park(qps_worker *w)
{
	bool ok;

	pthread_mutex_lock(&lk.mu);
	ok = lk.nparked < lk.max_parked && !lk.closing;
	if (ok) {
		lk.nparked++;
		w->parked = true;
	}
	pthread_mutex_unlock(&lk.mu);
	if (ok) {
		link_busy_end();
	}
	return ok;
}

void
qps_worker_close_after(qps_worker *w)
{
	w->close_after = true;
}

/* A whole request is in l->body: hand it to the request layer. */
static void
link_request(qps_link *l)
{
	nng_msg *m = l->body, *rep = NULL;
	size_t bt = qpi_sp_bt_len(nng_msg_body(m), nng_msg_len(m));
	qps_worker *w;

	l->body = NULL;
	if (bt == 0) {
		/* nng's rep0 drops such a message; so do we. */
		qps_log(QPS_LOG_DEBUG,
		    "connection %u: request without a request id", l->id);
		nng_msg_free(m);
		return;
	}
	/* malloc, not calloc: glibc serves calloc without its per-thread
	 * cache, and every field is set here. */
	if ((w = malloc(sizeof(*w))) == NULL) {
		qps_log(QPS_LOG_ERROR, "out of memory for a request");
		nng_msg_free(m);
		return;
	}
	*w = (qps_worker) {.l = l, .t0 = qpi_now_ns(), .btlen = (uint8_t) bt};
	memcpy(w->bt, nng_msg_body(m), bt);
	nng_msg_trim(m, bt);
	link_ref(l);
	__atomic_add_fetch(&lk.nbusy, 1, __ATOMIC_SEQ_CST);
	if (qps_ops_handle(w, l->id, m, &rep) == QPS_REPLY) {
		qps_worker_reply(w, rep);
		qps_msg_free_trimmed(m, bt);
	}
}

/* The next frame header. */
static void
link_expect_hdr(qps_link *l)
{
	l->state = LINK_HDR;
	l->hneed = l->ipc ? 9 : 8;
	l->hhave = 0;
}

static bool link_parse(
    qps_link *l, const uint8_t *p, size_t n, size_t *used, const char **why);

/* True when l is to read no more requests: too many replies unread, or
 * the connection is closing (a reply could not be written). */
static bool
link_paused(qps_link *l)
{
	bool p;

	pthread_mutex_lock(&l->mu);
	p = l->paused || l->dead || l->shut_after;
	pthread_mutex_unlock(&l->mu);
	return p;
}

/* Keeps n bytes at p for later (after what is kept already). */
static bool
link_keep(qps_link *l, const uint8_t *p, size_t n)
{
	if (l->inlen + n > l->incap) {
		size_t cap = l->inlen + n;
		uint8_t *b = realloc(l->inbuf, cap);
		if (b == NULL) {
			return false;
		}
		l->inbuf = b;
		l->incap = cap;
	}
	memmove(l->inbuf + l->inlen, p, n);
	l->inlen += n;
	return true;
}

bool
qps_link_input(qps_link *l, const uint8_t *p, size_t n, const char **why)
{
	size_t used;

	qps_metrics_bytes(n, 0);
	if (l->inlen > 0) {
		/* What a pause left, first. */
		if (!link_parse(l, l->inbuf, l->inlen, &used, why)) {
			return false;
		}
		memmove(l->inbuf, l->inbuf + used, l->inlen - used);
		l->inlen -= used;
	}
	if (l->inlen == 0) {
		if (!link_parse(l, p, n, &used, why)) {
			return false;
		}
		p += used;
		n -= used;
	}
	if (n > 0 && !link_keep(l, p, n)) {
		*why = "out of memory for a request";
		return false;
	}
	if (l->inlen == 0 && l->incap > 64u * 1024u) {
		free(l->inbuf); /* a big read's leftovers, done */
		l->inbuf = NULL;
		l->incap = 0;
	}
	return true;
}

/* Parses n bytes at p until they end or l pauses after a request: *used
 * says how many it took. False when l must close (*why). */
static bool
link_parse(
    qps_link *l, const uint8_t *p, size_t n, size_t *used, const char **why)
{
	const uint8_t *p0 = p;

	*used = 0;
	while (n > 0) {
		bool body = l->state == LINK_BODY;
		size_t *have = body ? &l->bodyhave : &l->hhave;
		size_t k = (body ? l->bodylen : l->hneed) - *have;
		k = k < n ? k : n;
		memcpy((body ? (uint8_t *) nng_msg_body(l->body) : l->hbuf)
		        + *have,
		    p, k);
		*have += k;
		p += k;
		n -= k;
		if (!body && l->hhave < l->hneed) {
			continue;
		}
		if (l->state == LINK_HS) {
			if (!qpi_sp_hs_check(l->hbuf, QPI_SP_REQ0)) {
				*why = "not an SP req0 peer (bad handshake)";
				qps_metrics_conn_refused(
				    QPS_REFUSED_HANDSHAKE);
				return false;
			}
			__atomic_store_n(&l->hs_done, true, __ATOMIC_RELEASE);
			link_expect_hdr(l);
			continue;
		}
		if (l->state == LINK_HDR) {
			uint64_t len;
			if (qpi_sp_frame_parse(l->hbuf, l->hneed, l->ipc, &len)
			    <= 0) {
				*why = "bad ipc message type";
				return false;
			}
			if (len > lk.cap) {
				static qps_loglimit ll;
				qps_log_limited(&ll, QPS_LOG_WARN,
				    "connection %u: a message of %llu bytes "
				    "is "
				    "over the limit (%zu): closing it",
				    l->id, (unsigned long long) len, lk.cap);
				*why = "message over the limit";
				qps_metrics_conn_refused(QPS_REFUSED_TOO_BIG);
				return false;
			}
			if ((l->body = qps_msg_alloc((size_t) len)) == NULL) {
				*why = "out of memory for a request";
				return false;
			}
			l->bodylen = (size_t) len;
			l->bodyhave = 0;
			l->state = LINK_BODY;
		}
		if (l->bodyhave == l->bodylen) {
			link_request(l);
			link_expect_hdr(l);
			if (link_paused(l)) {
				break; /* the rest waits in inbuf */
			}
		}
	}
	*used = (size_t) (p - p0);
	return true;
}

bool
qps_link_start(qps_link *l)
{
	uint8_t hs[QPI_SP_HS_LEN];
	struct iovec iov = {hs, sizeof(hs)};
	bool ok;

	qpi_sp_hs_make(hs, QPI_SP_REP0);
	pthread_mutex_lock(&l->mu);
	ok = link_write_locked(l, &iov, 1);
	pthread_mutex_unlock(&l->mu);
	if (!ok) {
		qps_link_close(l, "handshake not sent");
		return false;
	}
	/* Known to the request layer before a request can be read. */
	if (!qps_ops_conn_add(l->id)) {
		qps_link_close(l,
		    "refused (shutting down, or far over "
		    "--max-connections)");
		return false;
	}
	qps_log(QPS_LOG_DEBUG, "connection %u from %s (%s)", l->id,
	    link_peer(l), l->drv->name);
	pthread_mutex_lock(&l->mu);
	l->admitted = true;
	qps_link_kick_locked(l);
	pthread_mutex_unlock(&l->mu);
	link_due_add(l, LINK_DUE_HS);
	return true;
}

void
qps_link_format_peer(
    int family, const void *addr, uint16_t port_be, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	bool v6 = family == AF_INET6;

	inet_ntop(family, addr, host, sizeof(host));
	snprintf(buf, len, "tcp://%s%s%s:%u", v6 ? "[" : "", host,
	    v6 ? "]" : "", (unsigned) ntohs(port_be));
}

/* ---- the connections section of qps.h ---- */

void
qps_net_peer(uint32_t pipe_id, char *buf, size_t len)
{
	qps_link *l;

	pthread_mutex_lock(&lk.mu);
	l = lk.links;
	while (l != NULL && l->id != pipe_id) {
		l = l->next;
	}
	snprintf(buf, len, "%s", l != NULL ? link_peer(l) : "a local socket");
	pthread_mutex_unlock(&lk.mu);
}

uint64_t
qps_net_parked(void)
{
	uint64_t n;

	pthread_mutex_lock(&lk.mu);
	n = lk.nparked;
	pthread_mutex_unlock(&lk.mu);
	return n;
}

/* Waits (lk.mu held) until *n is 0 or deadline_ns: true if it is 0. */
static bool
link_wait_zero(const uint64_t *n, int64_t deadline_ns)
{
	while (*n > 0) {
		if (qpi_cond_wait(&lk.cv, &lk.mu, deadline_ns)
		    == QP_ETIMEDOUT) {
			break;
		}
	}
	return *n == 0;
}

bool
qps_net_drain(int64_t timeout_ms)
{
	int64_t deadline_ns = qpi_now_ns() + timeout_ms * 1000000;
	bool done;

	pthread_mutex_lock(&lk.mu);
	__atomic_add_fetch(&lk.drain_waits, 1, __ATOMIC_SEQ_CST);
	while (!(done = __atomic_load_n(&lk.nbusy, __ATOMIC_SEQ_CST) == 0)) {
		if (qpi_cond_wait(&lk.cv, &lk.mu, deadline_ns)
		    == QP_ETIMEDOUT) {
			done = __atomic_load_n(&lk.nbusy, __ATOMIC_SEQ_CST)
			    == 0;
			break;
		}
	}
	__atomic_sub_fetch(&lk.drain_waits, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&lk.mu);
	return done;
}

void
qps_link_close_all(void)
{

	pthread_mutex_lock(&lk.mu);
	lk.closing = true;
	if (lk.reaper_on) {
		pthread_cond_signal(&lk.rcv);
		pthread_mutex_unlock(&lk.mu);
		pthread_join(lk.reaper, NULL);
		pthread_mutex_lock(&lk.mu);
		lk.reaper_on = false;
	}
	while (lk.links != NULL) {
		qps_link *l = lk.links;
		link_ref(l); /* alive while this closes it */
		pthread_mutex_unlock(&lk.mu);
		qps_link_close(l, NULL);
		qps_link_unref(l);
		pthread_mutex_lock(&lk.mu);
	}
	/* Links the drivers still hold (an nng read or write ending). */
	if (!link_wait_zero(&lk.nalloc, qpi_now_ns() + 5000 * 1000000ll)) {
		qps_log(QPS_LOG_WARN,
		    "%llu connections not yet released at exit",
		    (unsigned long long) lk.nalloc);
	}
	pthread_mutex_unlock(&lk.mu);
}
