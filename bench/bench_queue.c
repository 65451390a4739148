/*
 * bench_queue.c - queue throughput between processes. P producer processes
 * each put N items of S bytes, C consumer processes get them; the time runs
 * from the first put to the last get. One driver, three queues:
 *
 *   qpipe  libqpipe's shared-memory queue (qp_queue_anon, then fork()),
 *          through the public API only; gets go into a caller buffer
 *          (qp_queue_get_into), as the C peers do.
 *   mutex  the simple design: one process-shared pthread mutex and two
 *          condvars over a variable-size byte ring in MAP_SHARED memory;
 *          the copy is made under the lock, every put signals "not empty"
 *          and every get "not full" (after unlocking).
 *   spsc   a lock-free single-producer single-consumer byte ring (1 -> 1
 *          only): the ceiling for a queue that sleeps when idle. Each side
 *          caches the other's index, spins briefly, then sleeps on a futex
 *          (a flag plus a fence, so that the fast path makes no syscall).
 *
 * Every item carries its producer and sequence number at its start,
 * middle and end (bench_stamp); consumers check that no copy is torn, that
 * each producer's items arrive in order and the parent checks that every item
 * arrived once. The last producer to finish puts one empty item per consumer
 * to stop it. Prints one JSON line.
 *
 * Locking: the mutex ring's mutex guards its indices and bytes; the SPSC
 * ring and the driver's shared block use C11 atomics only.
 */
#include "bench.h"

#include <inttypes.h>
#include <pthread.h>
#include <qpipe.h>
#include <stdbool.h>

#define MAX_WORKERS 64
#define STAMP_SHIFT 40
#define STAMP_SEQ   ((UINT64_C(1) << STAMP_SHIFT) - 1)
#define SPIN_LIMIT  4096

typedef struct bq_opts {
	const char *impl;
	int producers;
	int consumers;
	uint64_t size; /* bytes per item */
	uint64_t count; /* items per producer */
	uint64_t capacity; /* bytes of ring storage */
	double timeout; /* seconds: each worker's time limit */
} bq_opts;

/* The driver's block, shared by all workers. */
typedef struct bq_ctl {
	_Atomic uint64_t t_first_put;
	_Atomic uint64_t t_last_get;
	_Atomic uint64_t items;
	_Atomic uint64_t bytes;
	_Atomic uint32_t producers_left;
	_Atomic uint32_t failed;
	char msg[400];
} bq_ctl;

/* This process's last error, reported to the parent through bq_ctl. */
static char bq_err[320];

static void bq_seterr(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void
bq_seterr(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(bq_err, sizeof(bq_err), fmt, ap);
	va_end(ap);
}

/* ---- byte ring helpers (capacity a power of two) ---- */

static uint64_t
rec_size(uint64_t len)
{
	return 8 + ((len + 7) & ~UINT64_C(7));
}

static void
ring_write(
    uint8_t *data, uint64_t mask, uint64_t off, const void *src, size_t n)
{
	size_t pos = off & mask, first = (size_t) (mask + 1 - pos);

	if (first >= n) {
		memcpy(data + pos, src, n);
	} else {
		memcpy(data + pos, src, first);
		memcpy(data, (const uint8_t *) src + first, n - first);
	}
}

static void
ring_read(
    const uint8_t *data, uint64_t mask, uint64_t off, void *dst, size_t n)
{
	size_t pos = off & mask, first = (size_t) (mask + 1 - pos);

	if (first >= n) {
		memcpy(dst, data + pos, n);
	} else {
		memcpy(dst, data + pos, first);
		memcpy((uint8_t *) dst + first, data, n - first);
	}
}

static uint64_t
pow2_at_least(uint64_t v)
{
	uint64_t p = 4096;

	while (p < v && p < (UINT64_C(1) << 40)) {
		p <<= 1;
	}
	return p;
}

static size_t
header_bytes(size_t struct_size)
{
	return (struct_size + 4095) & ~(size_t) 4095;
}

/* ---- mutex + condvar ring ---- */

typedef struct mring {
	pthread_mutex_t mu;
	pthread_cond_t not_empty;
	pthread_cond_t not_full;
	uint64_t head; /* bytes consumed, ever */
	uint64_t tail; /* bytes produced, ever */
	uint64_t mask;
	uint8_t *data;
} mring;

static int
mring_create(void **qp, const bq_opts *o)
{
	uint64_t cap = pow2_at_least(o->capacity);
	size_t hdr = header_bytes(sizeof(mring));
	uint8_t *base = bench_shared_alloc(hdr + cap);
	pthread_mutexattr_t ma;
	pthread_condattr_t ca;
	mring *r;

	if (base == NULL) {
		bq_seterr("mmap %" PRIu64 " bytes: %s", cap, strerror(errno));
		return -1;
	}
	r = (mring *) base;
	r->data = base + hdr;
	r->mask = cap - 1;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	pthread_condattr_init(&ca);
	pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
	if (pthread_mutex_init(&r->mu, &ma) != 0
	    || pthread_cond_init(&r->not_empty, &ca) != 0
	    || pthread_cond_init(&r->not_full, &ca) != 0) {
		bq_seterr("cannot make process-shared mutex or condvar");
		return -1;
	}
	pthread_mutexattr_destroy(&ma);
	pthread_condattr_destroy(&ca);
	*qp = r;
	return 0;
}

static int
mring_put(void *q, const void *buf, size_t len)
{
	mring *r = q;
	uint64_t need = rec_size(len), cap = r->mask + 1, hdr = len;

	if (need > cap) {
		bq_seterr("item of %zu bytes exceeds the ring", len);
		return -1;
	}
	pthread_mutex_lock(&r->mu);
	while (cap - (r->tail - r->head) < need) {
		pthread_cond_wait(&r->not_full, &r->mu);
	}
	ring_write(r->data, r->mask, r->tail, &hdr, 8);
	ring_write(r->data, r->mask, r->tail + 8, buf, len);
	r->tail += need;
	pthread_mutex_unlock(&r->mu);
	pthread_cond_signal(&r->not_empty);
	return 0;
}

static int
mring_get(void *q, void *buf, size_t cap, size_t *lenp)
{
	mring *r = q;
	uint64_t len;

	pthread_mutex_lock(&r->mu);
	while (r->tail == r->head) {
		pthread_cond_wait(&r->not_empty, &r->mu);
	}
	ring_read(r->data, r->mask, r->head, &len, 8);
	if (len > cap) {
		pthread_mutex_unlock(&r->mu);
		bq_seterr("item of %" PRIu64 " bytes, buffer %zu", len, cap);
		return -1;
	}
	ring_read(r->data, r->mask, r->head + 8, buf, (size_t) len);
	r->head += rec_size(len);
	pthread_mutex_unlock(&r->mu);
	pthread_cond_signal(&r->not_full);
	*lenp = (size_t) len;
	return 0;
}

static void
mring_destroy(void *q)
{
	mring *r = q;

	munmap(r, header_bytes(sizeof(mring)) + r->mask + 1);
}

/* ---- lock-free single-producer single-consumer ring ---- */

typedef struct spsc {
	_Alignas(64) _Atomic uint64_t tail; /* written by the producer */
	_Alignas(64) _Atomic uint64_t head; /* written by the consumer */
	/* Rarely written: a side sets its flag before sleeping on it. */
	_Alignas(64) _Atomic uint32_t prod_sleeping;
	_Atomic uint32_t cons_sleeping;
	uint64_t mask;
	uint8_t *data;
} spsc;

/* Each side's cached copy of the other's index (process-local). */
static uint64_t spsc_seen_head, spsc_seen_tail;

static int
spsc_create(void **qp, const bq_opts *o)
{
	uint64_t cap = pow2_at_least(o->capacity);
	size_t hdr = header_bytes(sizeof(spsc));
	uint8_t *base = bench_shared_alloc(hdr + cap);
	spsc *r;

	if (base == NULL) {
		bq_seterr("mmap %" PRIu64 " bytes: %s", cap, strerror(errno));
		return -1;
	}
	r = (spsc *) base;
	r->data = base + hdr;
	r->mask = cap - 1;
	*qp = r;
	return 0;
}

/* Spins, then sleeps, until the ring has need bytes free past tail t;
 * returns the head it saw. */
static uint64_t
spsc_wait_space(spsc *r, uint64_t t, uint64_t need)
{
	uint64_t cap = r->mask + 1, h;

	for (int spins = 0;; spins++) {
		h = atomic_load_explicit(&r->head, memory_order_acquire);
		if (cap - (t - h) >= need) {
			return h;
		}
		if (spins < SPIN_LIMIT) {
			bench_cpu_relax();
			continue;
		}
		atomic_store(&r->prod_sleeping, 1);
		h = atomic_load(&r->head);
		if (cap - (t - h) >= need) {
			atomic_store(&r->prod_sleeping, 0);
			return h;
		}
		bench_futex_wait(&r->prod_sleeping, 1);
	}
}

/* Spins, then sleeps, until the tail moves past head h; returns it. */
static uint64_t
spsc_wait_data(spsc *r, uint64_t h)
{
	uint64_t t;

	for (int spins = 0;; spins++) {
		t = atomic_load_explicit(&r->tail, memory_order_acquire);
		if (t != h) {
			return t;
		}
		if (spins < SPIN_LIMIT) {
			bench_cpu_relax();
			continue;
		}
		atomic_store(&r->cons_sleeping, 1);
		t = atomic_load(&r->tail);
		if (t != h) {
			atomic_store(&r->cons_sleeping, 0);
			return t;
		}
		bench_futex_wait(&r->cons_sleeping, 1);
	}
}

/* After publishing an index: wakes the other side if it went to sleep.
 * The fence orders the index store before the flag load (the sleeper
 * stores its flag before loading the index). */
static void
spsc_wake(_Atomic uint32_t *sleeping)
{
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(sleeping, memory_order_relaxed) != 0) {
		atomic_store(sleeping, 0);
		bench_futex_wake(sleeping, 1);
	}
}

static int
spsc_put(void *q, const void *buf, size_t len)
{
	spsc *r = q;
	uint64_t need = rec_size(len), cap = r->mask + 1, hdr = len;
	uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);

	if (need > cap) {
		bq_seterr("item of %zu bytes exceeds the ring", len);
		return -1;
	}
	if (cap - (t - spsc_seen_head) < need) {
		spsc_seen_head = spsc_wait_space(r, t, need);
	}
	ring_write(r->data, r->mask, t, &hdr, 8);
	ring_write(r->data, r->mask, t + 8, buf, len);
	atomic_store_explicit(&r->tail, t + need, memory_order_release);
	spsc_wake(&r->cons_sleeping);
	return 0;
}

static int
spsc_get(void *q, void *buf, size_t cap, size_t *lenp)
{
	spsc *r = q;
	uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t len;

	if (spsc_seen_tail == h) {
		spsc_seen_tail = spsc_wait_data(r, h);
	}
	ring_read(r->data, r->mask, h, &len, 8);
	if (len > cap) {
		bq_seterr("item of %" PRIu64 " bytes, buffer %zu", len, cap);
		return -1;
	}
	ring_read(r->data, r->mask, h + 8, buf, (size_t) len);
	atomic_store_explicit(
	    &r->head, h + rec_size(len), memory_order_release);
	spsc_wake(&r->prod_sleeping);
	*lenp = (size_t) len;
	return 0;
}

static void
spsc_destroy(void *q)
{
	spsc *r = q;

	munmap(r, header_bytes(sizeof(spsc)) + r->mask + 1);
}

/* ---- qpipe's shared-memory queue ---- */

static int
qpipe_create(void **qp, const bq_opts *o)
{
	qp_queue_opts qo;
	int rc;

	memset(&qo, 0, sizeof(qo));
	qo.capacity = o->capacity;
	rc = qp_queue_anon((qp_queue **) qp, &qo);
	if (rc != QP_OK) {
		bq_seterr(
		    "qp_queue_anon: %s: %s", qp_strerror(rc), qp_errmsg());
		return -1;
	}
	return 0;
}

static int
qpipe_put(void *q, const void *buf, size_t len)
{
	int rc = qp_queue_put(q, buf, len, QP_FOREVER);

	if (rc != QP_OK) {
		bq_seterr(
		    "qp_queue_put: %s: %s", qp_strerror(rc), qp_errmsg());
		return -1;
	}
	return 0;
}

static int
qpipe_get(void *q, void *buf, size_t cap, size_t *lenp)
{
	int rc = qp_queue_get_into(q, buf, cap, lenp, QP_FOREVER);

	if (rc != QP_OK) {
		bq_seterr(
		    "qp_queue_get_into: %s: %s", qp_strerror(rc), qp_errmsg());
		return -1;
	}
	return 0;
}

static void
qpipe_destroy(void *q)
{
	qp_queue_free(q);
}

/* ---- the driver ---- */

typedef struct bq_impl {
	const char *name;
	bool single; /* one producer and one consumer only */
	int (*create)(void **qp, const bq_opts *o);
	int (*put)(void *q, const void *buf, size_t len);
	int (*get)(void *q, void *buf, size_t cap, size_t *lenp);
	void (*destroy)(void *q);
} bq_impl;

static const bq_impl bq_impls[] = {
    {"qpipe", false, qpipe_create, qpipe_put, qpipe_get, qpipe_destroy},
    {"mutex", false, mring_create, mring_put, mring_get, mring_destroy},
    {"spsc", true, spsc_create, spsc_put, spsc_get, spsc_destroy},
};

static void
report_failure(bq_ctl *ctl, const char *who)
{
	uint32_t zero = 0;

	if (atomic_compare_exchange_strong(&ctl->failed, &zero, 1)) {
		snprintf(ctl->msg, sizeof(ctl->msg), "%s: %s", who, bq_err);
	}
}

static int
run_producer(const bq_impl *im, void *q, bq_ctl *ctl, const bq_opts *o, int id)
{
	uint8_t *buf = malloc(o->size);

	if (buf == NULL) {
		bq_seterr("out of memory");
		report_failure(ctl, "producer");
		return 1;
	}
	memset(buf, 0xa5, o->size);
	bench_atomic_min(&ctl->t_first_put, bench_now_ns());
	for (uint64_t i = 0; i < o->count; i++) {
		uint64_t stamp = ((uint64_t) id << STAMP_SHIFT) | i;

		bench_stamp(buf, o->size, stamp);
		if (im->put(q, buf, o->size) != 0) {
			report_failure(ctl, "producer");
			return 1;
		}
	}
	/* The last producer stops the consumers: one empty item each. */
	if (atomic_fetch_sub(&ctl->producers_left, 1) == 1) {
		for (int c = 0; c < o->consumers; c++) {
			if (im->put(q, buf, 0) != 0) {
				report_failure(ctl, "producer (stop item)");
				return 1;
			}
		}
	}
	free(buf);
	return 0;
}

static int
run_consumer(const bq_impl *im, void *q, bq_ctl *ctl, const bq_opts *o)
{
	uint64_t last[MAX_WORKERS], items = 0;
	uint8_t *buf = malloc(o->size);
	size_t len;

	if (buf == NULL) {
		bq_seterr("out of memory");
		report_failure(ctl, "consumer");
		return 1;
	}
	for (int i = 0; i < MAX_WORKERS; i++) {
		last[i] = UINT64_MAX;
	}
	for (;;) {
		uint64_t stamp, p, seq;

		if (im->get(q, buf, o->size, &len) != 0) {
			report_failure(ctl, "consumer");
			return 1;
		}
		if (len == 0) {
			break;
		}
		if (len != o->size
		    || bench_stamp_check(buf, len, &stamp) != 0) {
			bq_seterr("an item of %zu bytes is damaged", len);
			report_failure(ctl, "consumer");
			return 1;
		}
		p = stamp >> STAMP_SHIFT;
		seq = stamp & STAMP_SEQ;
		if (p >= (uint64_t) o->producers
		    || (last[p] != UINT64_MAX && seq <= last[p])) {
			bq_seterr("item %" PRIu64 " of producer %" PRIu64
			          " out of order",
			    seq, p);
			report_failure(ctl, "consumer");
			return 1;
		}
		last[p] = seq;
		items++;
	}
	bench_atomic_max(&ctl->t_last_get, bench_now_ns());
	atomic_fetch_add(&ctl->items, items);
	atomic_fetch_add(&ctl->bytes, items * o->size);
	free(buf);
	return 0;
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: bench_queue --impl qpipe|mutex|spsc [--producers P] "
	    "[--consumers C]\n"
	    "                   [--size BYTES] [--count N] [--capacity "
	    "BYTES] [--timeout SEC]\n"
	    "P producers each put N items of BYTES; C consumers get them.\n"
	    "Prints one JSON line: items/s and bytes/s from the first put to "
	    "the last get.\n");
}

static int
parse_args(int argc, char **argv, bq_opts *o)
{
	uint64_t workers[2]
	    = {(uint64_t) o->producers, (uint64_t) o->consumers};
	const bench_opt opts[] = {
	    {"impl", 's', &o->impl},
	    {"producers", 'n', &workers[0]},
	    {"consumers", 'n', &workers[1]},
	    {"size", 'n', &o->size},
	    {"count", 'n', &o->count},
	    {"capacity", 'n', &o->capacity},
	    {"timeout", 'S', &o->timeout},
	    {NULL, 0, NULL},
	};

	if (bench_parse_opts(argc, argv, "bench_queue", opts, usage) != 0) {
		return 1;
	}
	for (int i = 0; i < 2; i++) {
		if (workers[i] < 1 || workers[i] > MAX_WORKERS) {
			fprintf(stderr,
			    "bench_queue: bad count of workers '%" PRIu64
			    "' (1-%d)\n",
			    workers[i], MAX_WORKERS);
			return 1;
		}
	}
	o->producers = (int) workers[0];
	o->consumers = (int) workers[1];
	if (o->impl == NULL) {
		usage(stderr);
		return 1;
	}
	if (o->size < 8 || o->size > (UINT64_C(64) << 20)
	    || o->count > STAMP_SEQ || o->capacity < 4096
	    || o->capacity > (UINT64_C(1) << 36)) {
		fprintf(stderr,
		    "bench_queue: size must be 8 B-64 MiB, capacity 4 KiB-64 "
		    "GiB\n");
		return 1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	bq_opts o = {NULL, 1, 1, 64, 100000, UINT64_C(64) << 20, 30.0};
	const bq_impl *im = NULL;
	pid_t pids[2 * MAX_WORKERS];
	char msg[400];
	bench_gate gate;
	bq_ctl *ctl;
	void *q;
	int n = 0, bad;
	double secs;

	if (parse_args(argc, argv, &o) != 0) {
		return 2;
	}
	for (size_t i = 0; i < sizeof(bq_impls) / sizeof(bq_impls[0]); i++) {
		if (strcmp(bq_impls[i].name, o.impl) == 0) {
			im = &bq_impls[i];
		}
	}
	if (im == NULL) {
		fprintf(stderr, "bench_queue: unknown --impl '%s'\n", o.impl);
		return 2;
	}
	if (im->single && (o.producers != 1 || o.consumers != 1)) {
		return bench_fail(
		    o.impl, "one producer and one consumer only");
	}
	ctl = bench_shared_alloc(sizeof(*ctl));
	if (ctl == NULL) {
		return bench_fail(o.impl, "mmap: %s", strerror(errno));
	}
	atomic_store(&ctl->t_first_put, UINT64_MAX);
	atomic_store(&ctl->producers_left, (uint32_t) o.producers);
	if (im->create(&q, &o) != 0) {
		return bench_fail(o.impl, "%s", bq_err);
	}
	if (bench_gate_init(&gate) != 0) {
		return bench_fail(o.impl, "pipe: %s", strerror(errno));
	}
	fflush(stdout);
	for (int i = 0; i < o.producers + o.consumers; i++) {
		pid_t pid = fork();

		if (pid < 0) {
			snprintf(
			    msg, sizeof(msg), "fork: %s", strerror(errno));
			for (int j = 0; j < n; j++) {
				kill(pids[j], SIGKILL);
			}
			return bench_fail(o.impl, "%s", msg);
		}
		if (pid == 0) {
			int rc;

			alarm((unsigned) o.timeout + 1);
			bench_gate_wait(&gate);
			rc = i < o.producers ? run_producer(im, q, ctl, &o, i)
			                     : run_consumer(im, q, ctl, &o);
			_exit(rc);
		}
		pids[n++] = pid;
	}
	bench_gate_open(&gate);
	bad = bench_reap(pids, n, msg, sizeof(msg));
	if (atomic_load(&ctl->failed)) {
		return bench_fail(o.impl, "%s", ctl->msg);
	}
	if (bad) {
		return bench_fail(o.impl, "%s", msg);
	}
	if (atomic_load(&ctl->items) != o.count * (uint64_t) o.producers) {
		return bench_fail(o.impl,
		    "%" PRIu64 " items arrived of %" PRIu64 " put",
		    atomic_load(&ctl->items),
		    o.count * (uint64_t) o.producers);
	}
	secs = (double) (atomic_load(&ctl->t_last_get)
	           - atomic_load(&ctl->t_first_put))
	    / 1e9;
	if (secs <= 0) {
		secs = 1e-9;
	}
	printf("{\"impl\": \"%s\", \"producers\": %d, \"consumers\": %d, "
	       "\"size\": %" PRIu64 ", \"capacity\": %" PRIu64
	       ", \"items\": %" PRIu64 ", \"seconds\": %.6f, "
	       "\"items_per_s\": %.1f, \"bytes_per_s\": %.1f}\n",
	    o.impl, o.producers, o.consumers, o.size, o.capacity,
	    atomic_load(&ctl->items), secs,
	    (double) atomic_load(&ctl->items) / secs,
	    (double) atomic_load(&ctl->bytes) / secs);
	im->destroy(q);
	munmap(ctl, sizeof(*ctl));
	return 0;
}
