/*
 * clients.c - the loops shared by bench_remote and bench_redis (see
 * clients.h), each with one blocking connection per process:
 *
 *   one    COUNT puts one by one, then COUNT gets: puts/s, gets/s
 *   batch  the same, BATCH items per request
 *   rtt    a put then a get, each timed, after a warm-up, until COUNT
 *          pairs or SECONDS: p50/p99 of the put, the get and the pair
 *   mp     P producer and C consumer processes (fork()ed before the
 *          driver opens anything), released together by the start gate
 *          to connect, and then by a second gate once every one of them
 *          has connected (the timed part has no connection set-up in it:
 *          50 processes connecting on one CPU took a few percent of a
 *          run, more for a client that opens more than a socket);
 *          each producer puts COUNT items (BATCH > 1: in batches),
 *          consumers get (BATCH > 1: in batches) until an empty item,
 *          which the last producer puts once per consumer: items/s from
 *          the first put to the last get. --consumers 0: puts only
 *          (items/s from the first put to the last put's reply);
 *          --producers 0: the driver fills the queue with COUNT items
 *          first, and the consumers get them until it is empty (items/s
 *          from the start to the last get)
 *
 * Every item carries its producer and sequence number (bench_stamp); the
 * consumers check each producer's order and the driver checks that every
 * item arrived exactly once. Locking: none (the mp children share
 * counters in MAP_SHARED memory through atomics).
 */
#include "clients.h"

/* Shared by the mp children. */
typedef struct cl_shared {
	_Atomic uint64_t t_first; /* first put (min) */
	_Atomic uint64_t t_last; /* last get (max) */
	_Atomic uint64_t producers_done;
	_Atomic uint64_t received;
	_Atomic uint64_t bad; /* order or damage errors */
	_Atomic uint8_t seen[]; /* per item: times received */
} cl_shared;

int
cl_parse(int argc, char **argv, const char *prog, cl_opts *o,
    const bench_opt *own, void (*usage)(FILE *))
{
	const bench_opt shared[] = {
	    {"mode", 's', &o->mode},
	    {"size", 'n', &o->size},
	    {"count", 'n', &o->count},
	    {"batch", 'n', &o->batch},
	    {"producers", 'n', &o->producers},
	    {"consumers", 'n', &o->consumers},
	    {"seconds", 'S', &o->seconds},
	    {"timeout", 'S', &o->timeout},
	    {NULL, 0, NULL},
	};
	bench_opt opts[24];
	int n = 0;

	for (; own[n].name != NULL && n < 12; n++) {
		opts[n] = own[n];
	}
	memcpy(opts + n, shared, sizeof(shared));
	if (bench_parse_opts(argc, argv, prog, opts, usage) != 0) {
		return 1;
	}
	if (o->mode == NULL
	    || (strcmp(o->mode, "one") != 0 && strcmp(o->mode, "batch") != 0
	        && strcmp(o->mode, "rtt") != 0
	        && strcmp(o->mode, "mp") != 0)) {
		usage(stderr);
		return 1;
	}
	return 0;
}

/* Checks an item got: its stamp names producer p's next item. */
static bool
check_item(const uint8_t *buf, size_t len, const cl_opts *o,
    uint64_t *next_seq, uint64_t *item_no)
{
	uint64_t stamp, p, seq;

	if (buf == NULL || len != o->size
	    || bench_stamp_check(buf, len, &stamp) != 0) {
		return false;
	}
	p = stamp >> 32;
	seq = stamp & 0xffffffffu;
	if (p >= (o->producers > 0 ? o->producers : 1) || seq >= o->count
	    || seq < next_seq[p]) {
		return false;
	}
	next_seq[p] = seq + 1;
	*item_no = p * o->count + seq;
	return true;
}

/* Stamps the n items at buf first, first + 1, ... */
static void
stamp_items(uint8_t *buf, const cl_opts *o, uint64_t first, uint64_t n)
{
	for (uint64_t k = 0; k < n; k++) {
		bench_stamp(buf + k * o->size, (size_t) o->size, first + k);
	}
}

/* ---- one client ---- */

static int
run_one(const cl_opts *o, const cl_ops *ops, bool batched)
{
	uint8_t *buf = calloc(o->batch, (size_t) o->size);
	uint64_t next_seq[1] = {0}, t0, t1, t2, item_no;
	char impl[64], msg[512];
	void *c;

	snprintf(
	    impl, sizeof(impl), "%s%s", ops->impl, batched ? "-batch" : "");
	if (buf == NULL) {
		return bench_fail(impl, "out of memory");
	}
	if ((c = ops->open(o, msg, sizeof(msg))) == NULL) {
		return bench_fail(impl, "%s", msg);
	}
	if (ops->reset != NULL) {
		ops->reset(c);
	}
	t0 = bench_now_ns();
	for (uint64_t i = 0; i < o->count;) {
		uint64_t n = batched ? o->batch : 1;
		if (n > o->count - i) {
			n = o->count - i;
		}
		stamp_items(buf, o, i, n);
		if (ops->put(
		        c, buf, (size_t) o->size, n, batched, msg, sizeof(msg))
		    != 0) {
			return bench_fail(impl, "%s", msg);
		}
		i += n;
	}
	t1 = bench_now_ns();
	for (uint64_t i = 0; i < o->count;) {
		uint64_t want = batched ? o->batch : 1;
		const uint8_t *const *items;
		const size_t *lens;
		long n;

		if (want > o->count - i) {
			want = o->count - i;
		}
		n = ops->get(
		    c, want, batched, -1, &items, &lens, msg, sizeof(msg));
		if (n < 0) {
			return bench_fail(impl, "%s", msg);
		}
		if (n == 0) {
			return bench_fail(impl,
			    "%s empty after %" PRIu64 " of %" PRIu64 " items",
			    ops->noun, i, o->count);
		}
		for (long k = 0; k < n; k++) {
			if (!check_item(
			        items[k], lens[k], o, next_seq, &item_no)
			    || item_no != i + (uint64_t) k) {
				ops->release(c);
				return bench_fail(impl,
				    "item %" PRIu64 " damaged or out of order",
				    i + (uint64_t) k);
			}
		}
		ops->release(c);
		i += (uint64_t) n;
	}
	t2 = bench_now_ns();
	ops->drop(c);
	printf("{\"impl\": \"%s\", \"mode\": \"%s\", \"size\": %" PRIu64
	       ", \"batch\": %" PRIu64 ", \"items\": %" PRIu64
	       ", \"put_seconds\": %.6f, \"puts_per_s\": %.1f, "
	       "\"get_seconds\": %.6f, \"gets_per_s\": %.1f, "
	       "\"seconds\": %.6f}\n",
	    impl, o->mode, o->size, batched ? o->batch : 1, o->count,
	    bench_secs(t0, t1), (double) o->count / bench_secs(t0, t1),
	    bench_secs(t1, t2), (double) o->count / bench_secs(t1, t2),
	    bench_secs(t0, t1));
	free(buf);
	return 0;
}

/* ---- round trips ---- */

static int
run_rtt(const cl_opts *o, const cl_ops *ops)
{
	uint64_t *put = malloc(o->count * sizeof(uint64_t));
	uint64_t *get = malloc(o->count * sizeof(uint64_t));
	uint64_t *pair = malloc(o->count * sizeof(uint64_t));
	uint8_t *buf = malloc((size_t) o->size);
	uint64_t n = 0, t0 = 0, t_end, deadline = 0, stamp;
	char msg[512];
	void *c;

	if (put == NULL || get == NULL || pair == NULL || buf == NULL) {
		return bench_fail(ops->impl, "out of memory");
	}
	if ((c = ops->open(o, msg, sizeof(msg))) == NULL) {
		return bench_fail(ops->impl, "%s", msg);
	}
	if (ops->reset != NULL) {
		ops->reset(c);
	}
	for (uint64_t i = 0; i < CL_WARMUP + o->count; i++) {
		const uint8_t *const *items;
		const size_t *lens;
		uint64_t ts, tm, te;
		long got;
		bool ok;

		if (i == CL_WARMUP) {
			t0 = bench_now_ns();
			deadline = t0 + (uint64_t) (o->seconds * 1e9);
		}
		bench_stamp(buf, (size_t) o->size, i);
		ts = bench_now_ns();
		if (ops->put(
		        c, buf, (size_t) o->size, 1, false, msg, sizeof(msg))
		    != 0) {
			return bench_fail(ops->impl, "%s", msg);
		}
		tm = bench_now_ns();
		got = ops->get(
		    c, 1, false, -1, &items, &lens, msg, sizeof(msg));
		te = bench_now_ns();
		if (got < 0) {
			return bench_fail(ops->impl, "%s", msg);
		}
		ok = got == 1 && items[0] != NULL && lens[0] == o->size
		    && bench_stamp_check(items[0], lens[0], &stamp) == 0
		    && stamp == i;
		ops->release(c);
		if (!ok) {
			return bench_fail(
			    ops->impl, "item %" PRIu64 " damaged", i);
		}
		if (i >= CL_WARMUP) {
			put[n] = tm - ts;
			get[n] = te - tm;
			pair[n] = te - ts;
			n++;
			if (te >= deadline) {
				break;
			}
		}
	}
	t_end = bench_now_ns();
	ops->drop(c);
	bench_sort_u64(put, (size_t) n);
	bench_sort_u64(get, (size_t) n);
	bench_sort_u64(pair, (size_t) n);
	printf("{\"impl\": \"%s\", \"mode\": \"rtt\", \"size\": %" PRIu64
	       ", \"round_trips\": %" PRIu64
	       ", \"seconds\": %.6f, \"pairs_per_s\": %.1f, "
	       "\"p50_us\": %.3f, \"p99_us\": %.3f, "
	       "\"get_p50_us\": %.3f, \"get_p99_us\": %.3f, "
	       "\"pair_p50_us\": %.3f, \"pair_p99_us\": %.3f}\n",
	    ops->impl, o->size, n, bench_secs(t0, t_end),
	    (double) n / bench_secs(t0, t_end),
	    (double) bench_percentile(put, (size_t) n, 50) / 1e3,
	    (double) bench_percentile(put, (size_t) n, 99) / 1e3,
	    (double) bench_percentile(get, (size_t) n, 50) / 1e3,
	    (double) bench_percentile(get, (size_t) n, 99) / 1e3,
	    (double) bench_percentile(pair, (size_t) n, 50) / 1e3,
	    (double) bench_percentile(pair, (size_t) n, 99) / 1e3);
	free(put);
	free(get);
	free(pair);
	free(buf);
	return 0;
}

/* ---- many clients ---- */

/* Puts n stop items (empty ones); 0, or 1 after saying why. */
static int
put_stops(const cl_ops *ops, void *c, uint64_t n)
{
	char msg[512];

	for (uint64_t k = 0; k < n; k++) {
		if (ops->put(
		        c, (const uint8_t *) "", 0, 1, false, msg, sizeof(msg))
		    != 0) {
			fprintf(stderr, "%s: %s\n", ops->prog, msg);
			return 1;
		}
	}
	return 0;
}

static int
mp_producer(const cl_opts *o, const cl_ops *ops, cl_shared *sh, uint64_t p,
    bench_gate *go)
{
	uint8_t *buf = calloc(o->batch, (size_t) o->size);
	char msg[512] = "out of memory";
	void *c = buf != NULL ? ops->open(o, msg, sizeof(msg)) : NULL;

	if (c == NULL) {
		fprintf(stderr, "%s: producer %" PRIu64 ": %s\n", ops->prog, p,
		    msg);
		return 1;
	}
	bench_gate_wait(go);
	bench_atomic_min(&sh->t_first, bench_now_ns());
	for (uint64_t i = 0; i < o->count;) {
		uint64_t n = o->batch < o->count - i ? o->batch : o->count - i;
		stamp_items(buf, o, (p << 32) | i, n);
		if (ops->put(
		        c, buf, (size_t) o->size, n, n != 1, msg, sizeof(msg))
		    != 0) {
			fprintf(stderr, "%s: %s\n", ops->prog, msg);
			return 1;
		}
		i += n;
	}
	if (o->consumers == 0) {
		bench_atomic_max(&sh->t_last, bench_now_ns());
	}
	/* The last producer tells each consumer to stop. */
	if (atomic_fetch_add(&sh->producers_done, 1) + 1 == o->producers
	    && put_stops(ops, c, o->consumers) != 0) {
		return 1;
	}
	ops->close(c);
	free(buf);
	return 0;
}

static int
mp_consumer(const cl_opts *o, const cl_ops *ops, cl_shared *sh, bench_gate *go)
{
	uint64_t next_seq[CL_MAX_PROCS] = {0}, item_no;
	char msg[512];
	void *c = ops->open(o, msg, sizeof(msg));
	bool stop = false;

	if (c == NULL) {
		fprintf(stderr, "%s: consumer: %s\n", ops->prog, msg);
		return 1;
	}
	bench_gate_wait(go);
	/* Prefilled (no producers): take until the queue is empty. Not
	 * at once: with many consumers each holding a batch until its next
	 * get confirms it, a get may have to wait for lease slots. */
	int wait = o->producers == 0 ? 500 : -1;
	if (o->producers == 0) {
		bench_atomic_min(&sh->t_first, bench_now_ns());
	}
	while (!stop) {
		const uint8_t *const *items;
		const size_t *lens;
		uint64_t stops = 0;
		long n = ops->get(c, o->batch, o->batch > 1, wait, &items,
		    &lens, msg, sizeof(msg));

		if (n == 0 && o->producers == 0) {
			break;
		}
		if (n <= 0) {
			fprintf(stderr, "%s: %s\n", ops->prog,
			    n < 0 ? msg : "get: empty");
			return 1;
		}
		for (long k = 0; k < n; k++) {
			if (items[k] != NULL && lens[k] == 0) {
				/* A stop item (they come after every
				 * producer's items). */
				stops++;
			} else if (!check_item(items[k], lens[k], o, next_seq,
			               &item_no)) {
				atomic_fetch_add(&sh->bad, 1);
			} else {
				atomic_fetch_add(&sh->seen[item_no], 1);
				atomic_fetch_add(&sh->received, 1);
			}
		}
		ops->release(c);
		if (stops == 0) {
			bench_atomic_max(&sh->t_last, bench_now_ns());
			continue;
		}
		/* One stop is this consumer's; the others it took in the
		 * same batch go back for the other consumers. */
		stop = true;
		if (put_stops(ops, c, stops - 1) != 0) {
			return 1;
		}
	}
	ops->close(c);
	return 0;
}

/* --producers 0: COUNT items in the queue before the consumers start. */
static int
prefill(const cl_opts *o, const cl_ops *ops, void *c, char *msg, size_t len)
{
	uint64_t step = ops->prefill_batch;
	uint8_t *buf = calloc(step, (size_t) o->size);
	int rv = 0;

	snprintf(msg, len, "out of memory");
	for (uint64_t i = 0; i < o->count;) {
		uint64_t n = o->count - i < step ? o->count - i : step;
		if (buf == NULL) {
			rv = -1;
			break;
		}
		stamp_items(buf, o, i, n);
		if ((rv = ops->put(
		         c, buf, (size_t) o->size, n, true, msg, len))
		    != 0) {
			break;
		}
		i += n;
	}
	free(buf);
	return rv;
}

/* Child i of an mp run connects i times QPIPE_BENCH_STAGGER_MS late (at
 * most 5 s), as a slow start-up would: bench/test_gate.sh shows that the
 * second gate keeps that out of the timed part. */
static void
mp_stagger(uint64_t i)
{
	const char *s = getenv("QPIPE_BENCH_STAGGER_MS");
	long ms = s != NULL ? strtol(s, NULL, 10) : 0;

	if (ms > 0 && ms <= 1000) {
		uint64_t us = i * (uint64_t) ms * 1000;
		usleep((useconds_t) (us < 5000000 ? us : 5000000));
	}
}

/* Kills and reaps the np children in pids (a run that cannot start). */
static void
kill_all(bench_gate *gate, bench_gate *go, const pid_t *pids, int np)
{
	char ignored[64];

	bench_gate_open(gate);
	bench_gate_open(go);
	for (int i = 0; i < np; i++) {
		kill(pids[i], SIGKILL);
	}
	bench_reap(pids, np, ignored, sizeof(ignored));
}

static int
run_mp(const cl_opts *o, const cl_ops *ops)
{
	uint64_t total = (o->producers > 0 ? o->producers : 1) * o->count;
	cl_shared *sh = bench_shared_alloc(sizeof(cl_shared) + (size_t) total);
	uint64_t missing = 0, dup = 0;
	pid_t pids[CL_MAX_PROCS];
	char impl[64], msg[640], why[512];
	int np = 0;
	long long left;
	bench_gate gate, go; /* to connect; to start, once all have */
	void *c;

	snprintf(impl, sizeof(impl), "%s-mp", ops->impl);
	if (sh == NULL || bench_gate_init(&gate) != 0
	    || bench_gate_init(&go) != 0) {
		return bench_fail(impl, "out of memory");
	}
	atomic_store(&sh->t_first, UINT64_MAX);
	fflush(stdout);
	/* Nothing open in this process before the forks (nng is not
	 * fork-safe): the parent opens the queue after them. */
	for (uint64_t i = 0; i < o->producers + o->consumers; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			return bench_fail(impl, "fork: %s", strerror(errno));
		}
		if (pid == 0) {
			alarm((unsigned) o->timeout + 1);
			bench_gate_wait(&gate);
			mp_stagger(i);
			_exit(i < o->producers
			        ? mp_producer(o, ops, sh, i, &go)
			        : mp_consumer(o, ops, sh, &go));
		}
		pids[np++] = pid;
	}
	alarm((unsigned) o->timeout + 3);
	if ((c = ops->open(o, why, sizeof(why))) == NULL) {
		kill_all(&gate, &go, pids, np);
		return bench_fail(impl, "%s", why);
	}
	if (ops->reset != NULL) {
		ops->reset(c);
	}
	if (o->producers == 0 && prefill(o, ops, c, why, sizeof(why)) != 0) {
		kill_all(&gate, &go, pids, np);
		ops->drop(c);
		return bench_fail(impl, "prefill: %s", why);
	}
	bench_gate_open(&gate);
	/* The children pass go when the last of them has connected (each
	 * drops its end of the pipe there, or at its exit if it could
	 * not). */
	bench_gate_open(&go);
	if (bench_reap(pids, np, msg, sizeof(msg)) != 0) {
		ops->drop(c);
		return bench_fail(impl, "%s", msg);
	}
	left = ops->left(c);
	ops->drop(c);
	if (o->consumers == 0 && left != (long long) total) {
		return bench_fail(impl,
		    "%lld items in the %s after %" PRIu64 " %s", left,
		    ops->noun, total, ops->puts);
	}
	for (uint64_t i = 0; o->consumers > 0 && i < total; i++) {
		uint8_t s = atomic_load(&sh->seen[i]);
		missing += s == 0;
		dup += s > 1;
	}
	if (missing != 0 || dup != 0 || atomic_load(&sh->bad) != 0) {
		return bench_fail(impl,
		    "%" PRIu64 " items missing, %" PRIu64
		    " duplicated, %" PRIu64 " damaged or out of order",
		    missing, dup, (uint64_t) atomic_load(&sh->bad));
	}
	double s
	    = bench_secs(atomic_load(&sh->t_first), atomic_load(&sh->t_last));
	printf("{\"impl\": \"%s\", \"mode\": \"mp\", \"size\": %" PRIu64
	       ", \"batch\": %" PRIu64 ", \"producers\": %" PRIu64
	       ", \"consumers\": %" PRIu64 ", \"items\": %" PRIu64
	       ", \"left\": %lld, \"seconds\": %.6f, \"items_per_s\": %.1f}\n",
	    impl, o->size, o->batch, o->producers, o->consumers, total,
	    left > 0 ? left : 0, s, (double) total / s);
	return 0;
}

int
cl_run(const cl_opts *o, const cl_ops *ops)
{
	if (strcmp(o->mode, "mp") == 0) {
		return run_mp(o, ops);
	}
	alarm((unsigned) o->timeout + 1);
	if (strcmp(o->mode, "rtt") == 0) {
		return run_rtt(o, ops);
	}
	return run_one(o, ops, strcmp(o->mode, "batch") == 0);
}
