/*
 * watch.c - wakes the request layer when a local process changes a queue
 * that has parked requests. Watcher threads sleep on the watch words of
 * the queues they watch, up to 127 queues per thread in one futex_waitv()
 * (a thread per queue where the kernel lacks it), plus a word of their
 * own that is bumped when their set changes; each wake-up calls the
 * changed callback of every queue of the thread. No polling. The
 * server's own changes (its puts, gets, acks) wake no watcher: its
 * attachments are quiet (shmq.h), as each request serves the parked
 * requests of its queue itself.
 *
 * Locking: the lock given to qps_watch_start (the ops lock) guards the
 * sets; the threads hold it except while they sleep in the kernel, and
 * call the callback with it held.
 */
#include "futex.h"
#include "qps.h"
#include "shmq.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdlib.h>
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
	uint32_t ctl; /* futex word: bumped when the set changes or at stop */
	qps_watch *ws[WG_MAX];
	int n;
	struct qps_wgroup *next;
};

static struct {
	pthread_mutex_t *mu;
	void (*changed)(qps_watch *w);
	qps_wgroup *groups;
	bool stop;
	int waitv; /* 1: futex_waitv works, 0: it does not, -1: unknown */
} wa = {.waitv = -1};

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
	qps_watch *snap[WG_MAX];

	qps_thread_init();
	pthread_mutex_lock(wa.mu);
	while (!wa.stop) {
		uint32_t ctl = __atomic_load_n(&g->ctl, __ATOMIC_SEQ_CST);
		int n = g->n;

		/* Arm and read each sequence first, then serve: a change
		 * after the read wakes the wait below. */
		for (int i = 0; i < n; i++) {
			qps_watch *w = g->ws[i];
			w->armed
			    = w->armed || qpi_shmq_watch_arm(w->shm) == QP_OK;
			w->seen = qpi_shmq_watch_seq(w->shm);
			snap[i] = w;
		}
		for (int i = 0; i < n; i++) {
			if (snap[i]->wg == g) {
				wa.changed(snap[i]);
			}
		}
		unsigned k = 0;
		for (int i = 0; i < g->n; i++) {
			qps_watch *w = g->ws[i];
			if (!w->armed) {
				continue;
			}
			wv[k++] = (struct wv_entry) {.val = w->seen,
			    .uaddr = (uintptr_t) qpi_shmq_watch_word(w->shm),
			    .flags = FUTEX_32};
		}
		/* The set's own word: shared, as qpi_futex_wake wakes it. */
		wv[k] = (struct wv_entry) {.val = ctl,
		    .uaddr = (uintptr_t) &g->ctl,
		    .flags = FUTEX_32};
		pthread_mutex_unlock(wa.mu);
		if (wa.waitv != 0) {
			wv_wait(wv, k + 1);
		} else if (k == 1) {
			/* One queue: its word, woken by wg_poke's wake of
			 * that word too. */
			qpi_futex_wait((uint32_t *) (uintptr_t) wv[0].uaddr,
			    (uint32_t) wv[0].val, INT64_MAX);
		} else {
			qpi_futex_wait(&g->ctl, ctl, INT64_MAX);
		}
		pthread_mutex_lock(wa.mu);
		for (int i = 0; i < g->n; i++) {
			if (g->ws[i]->armed) {
				qpi_shmq_watch_disarm(g->ws[i]->shm);
				g->ws[i]->armed = false;
			}
		}
	}
	pthread_mutex_unlock(wa.mu);
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
wg_add(qps_watch *w, const char *name)
{
	int cap;
	qps_wgroup *g;

	if (wa.waitv < 0) {
		wa.waitv = wg_probe_waitv() ? 1 : 0;
		if (!wa.waitv) {
			qps_log(QPS_LOG_WARN,
			    "the kernel has no futex_waitv: one watcher "
			    "thread per queue with parked requests");
		}
	}
	cap = wa.waitv ? WG_MAX : 1;
	g = wa.groups;
	while (g != NULL && g->n >= cap) {
		g = g->next;
	}
	if (g == NULL) {
		if ((g = calloc(1, sizeof(*g))) == NULL) {
			qps_log(QPS_LOG_ERROR,
			    "out of memory for a watcher: local puts on '%s' "
			    "reach parked gets only with the next request",
			    name);
			return;
		}
		if (pthread_create(&g->thr, NULL, wg_main, g) != 0) {
			free(g);
			qps_log(QPS_LOG_ERROR,
			    "cannot start a watcher thread for '%s'", name);
			return;
		}
		g->next = wa.groups;
		wa.groups = g;
	}
	g->ws[g->n++] = w;
	w->wg = g;
	wg_poke(g);
}

static void
wg_remove(qps_watch *w)
{
	qps_wgroup *g = w->wg;

	for (int i = 0; i < g->n; i++) {
		if (g->ws[i] == w) {
			g->ws[i] = g->ws[--g->n];
			break;
		}
	}
	if (w->armed) {
		qpi_shmq_watch_disarm(w->shm);
		w->armed = false;
	}
	w->wg = NULL;
	wg_poke(g);
	if (!wa.waitv) {
		/* The thread may sleep on w's own word. */
		qpi_futex_wake(qpi_shmq_watch_word(w->shm), INT32_MAX);
	}
}

void
qps_watch_set(qps_watch *w, bool on, const char *name)
{
	if (on && w->wg == NULL) {
		int rv = qpi_shmq_watch(w->shm, true);
		if (rv != QP_OK) {
			qps_log(QPS_LOG_WARN,
			    "cannot watch queue '%s' (%s): local puts reach "
			    "its parked gets only with the next request",
			    name, qp_strerror(rv));
			return;
		}
		/* The request layer serves its own changes. */
		qpi_shmq_watch_quiet(w->shm, true);
		wg_add(w, name);
		if (w->wg == NULL) {
			qpi_shmq_watch(w->shm, false);
		}
	} else if (!on && w->wg != NULL) {
		wg_remove(w);
		qpi_shmq_watch(w->shm, false);
	}
}

void
qps_watch_start(pthread_mutex_t *mu, void (*changed)(qps_watch *w))
{
	wa.mu = mu;
	wa.changed = changed;
}

void
qps_watch_stop(void)
{
	qps_wgroup *g, *next;

	pthread_mutex_lock(wa.mu);
	wa.stop = true;
	for (g = wa.groups; g != NULL; g = g->next) {
		wg_poke(g);
		for (int i = 0; i < g->n; i++) {
			qpi_futex_wake(
			    qpi_shmq_watch_word(g->ws[i]->shm), INT32_MAX);
		}
	}
	pthread_mutex_unlock(wa.mu);
	for (g = wa.groups; g != NULL; g = g->next) {
		pthread_join(g->thr, NULL);
	}
	pthread_mutex_lock(wa.mu);
	for (g = wa.groups; g != NULL; g = next) {
		next = g->next;
		for (int i = 0; i < g->n; i++) {
			g->ws[i]->wg = NULL;
			g->ws[i]->armed = false;
			qpi_shmq_watch(g->ws[i]->shm, false);
		}
		free(g);
	}
	wa.groups = NULL;
	pthread_mutex_unlock(wa.mu);
}
