/*
 * timer.c - one thread that fires one-shot timers (parked requests'
 * timeouts, lease expiries) at their deadlines. The timers sit in a binary
 * min-heap; the thread sleeps on a CLOCK_MONOTONIC condvar until the
 * nearest deadline or until a nearer one is armed. No polling.
 *
 * Locking: the heap is guarded by the lock given to qps_timer_start (the
 * ops layer's lock), and callbacks run with it held, so that arming,
 * cancelling and firing never race with the state they act on.
 */
#include "qps.h"

#include <stdlib.h>

static struct {
	pthread_mutex_t *mu;
	pthread_cond_t cv;
	pthread_t thr;
	bool running, stop;
	qps_timer **heap;
	size_t n, cap;
} tm;

static void
heap_swap(size_t a, size_t b)
{
	qps_timer *t = tm.heap[a];

	tm.heap[a] = tm.heap[b];
	tm.heap[b] = t;
	tm.heap[a]->idx = a;
	tm.heap[b]->idx = b;
}

static void
heap_up(size_t i)
{
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (tm.heap[p]->deadline_ns <= tm.heap[i]->deadline_ns) {
			break;
		}
		heap_swap(i, p);
		i = p;
	}
}

static void
heap_down(size_t i)
{
	for (;;) {
		size_t m = i;
		for (size_t c = 2 * i + 1; c <= 2 * i + 2 && c < tm.n; c++) {
			if (tm.heap[c]->deadline_ns
			    < tm.heap[m]->deadline_ns) {
				m = c;
			}
		}
		if (m == i) {
			return;
		}
		heap_swap(i, m);
		i = m;
	}
}

static void
heap_remove(size_t i)
{
	qps_timer *t = tm.heap[i];

	tm.n--;
	if (i != tm.n) {
		tm.heap[i] = tm.heap[tm.n];
		tm.heap[i]->idx = i;
		heap_down(i);
		heap_up(i);
	}
	t->idx = SIZE_MAX;
}

void
qps_timer_init(qps_timer *t, void (*fire)(qps_timer *t))
{
	t->deadline_ns = INT64_MAX;
	t->idx = SIZE_MAX;
	t->fire = fire;
}

void
qps_timer_cancel(qps_timer *t)
{
	if (t->idx != SIZE_MAX) {
		heap_remove(t->idx);
	}
}

bool
qps_timer_arm(qps_timer *t, int64_t deadline_ns)
{
	qps_timer_cancel(t);
	t->deadline_ns = deadline_ns;
	if (deadline_ns == INT64_MAX) {
		return true;
	}
	if (tm.n == tm.cap) {
		size_t cap = tm.cap == 0 ? 256 : tm.cap * 2;
		qps_timer **h = realloc(tm.heap, cap * sizeof(*h));
		if (h == NULL) {
			return false;
		}
		tm.heap = h;
		tm.cap = cap;
	}
	t->idx = tm.n;
	tm.heap[tm.n++] = t;
	heap_up(t->idx);
	if (t->idx == 0) {
		pthread_cond_signal(&tm.cv);
	}
	return true;
}

static void *
timer_main(void *arg)
{
	(void) arg;
	qps_thread_init(); /* the callbacks touch queues */
	pthread_mutex_lock(tm.mu);
	while (!tm.stop) {
		qps_timer *t = tm.n > 0 ? tm.heap[0] : NULL;
		if (t == NULL || t->deadline_ns > qpi_now_ns()) {
			(void) qpi_cond_wait(&tm.cv, tm.mu,
			    t != NULL ? t->deadline_ns : INT64_MAX);
			continue;
		}
		heap_remove(0);
		t->fire(t);
	}
	pthread_mutex_unlock(tm.mu);
	return NULL;
}

int
qps_timer_start(pthread_mutex_t *mu)
{
	tm.mu = mu;
	qpi_cond_init(&tm.cv);
	tm.stop = false;
	tm.running = pthread_create(&tm.thr, NULL, timer_main, NULL) == 0;
	return tm.running ? QP_OK : QP_ESYSTEM;
}

void
qps_timer_stop(void)
{
	if (!tm.running) {
		return;
	}
	pthread_mutex_lock(tm.mu);
	tm.stop = true;
	pthread_cond_signal(&tm.cv);
	pthread_mutex_unlock(tm.mu);
	pthread_join(tm.thr, NULL);
	tm.running = false;
	while (tm.n > 0) {
		heap_remove(tm.n - 1);
	}
	free(tm.heap);
	tm.heap = NULL;
	tm.cap = 0;
	pthread_cond_destroy(&tm.cv);
}
