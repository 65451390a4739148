/*
 * bench_remote.c - qpipe's remote queue through a running qpiped: the
 * qpipe side of bench/run remote. The harness starts build/bin/qpiped on a
 * port-0 loopback address (or an ipc path) and passes its URL; every run
 * uses a queue of its own (created here, deleted at the end), so runs never
 * see each other's items.
 *
 *   --mode one    one client: COUNT puts one by one (qp_queue_put), then
 *                 COUNT gets one by one (qp_queue_get_into): puts/s, gets/s
 *   --mode batch  one client: qp_queue_put_many of BATCH items, then
 *                 qp_queue_get_many of up to BATCH: puts/s, gets/s
 *   --mode rtt    one client: put then get, each timed, after a warm-up,
 *                 until COUNT pairs or SECONDS: p50/p99 of the put, the get
 *                 and the pair
 *   --mode mp     P producer and C consumer processes (fork()ed before any
 *                 nng call, each with its own handle); each producer puts
 *                 COUNT items (BATCH > 1: with put_many), consumers get
 *                 (BATCH > 1: get_many) until an empty item, which the
 *                 last producer puts once per consumer: items/s from the
 *                 first put to the last get. --consumers 0: puts only
 *                 (items/s from the first put to the last put's reply);
 *                 --producers 0: the driver fills the queue with COUNT
 *                 items first, and the consumers get them until it is
 *                 empty (items/s from the start to the last get)
 *
 * Every item carries its producer and sequence number (bench_stamp); the
 * consumers check each producer's order and the driver checks that every
 * item arrived exactly once. Prints one JSON line. Locking: none (the mp
 * children share counters in MAP_SHARED memory through atomics).
 */
#include "bench.h"

#include <getopt.h>
#include <inttypes.h>
#include <qpipe.h>
#include <stdbool.h>

#define WARMUP    200
#define MAX_PROCS 128
#define MAX_BATCH 4096

typedef struct br_opts {
	const char *url; /* the server, e.g. tcp://127.0.0.1:40123 */
	const char *mode;
	uint64_t size;
	uint64_t count;
	uint64_t batch;
	uint64_t producers;
	uint64_t consumers;
	double seconds;
	double timeout;
	char addr[512]; /* url + "/" + the queue's name */
} br_opts;

/* Shared by the mp children. */
typedef struct br_shared {
	_Atomic uint64_t t_first; /* first put (min) */
	_Atomic uint64_t t_last; /* last get (max) */
	_Atomic uint64_t producers_done;
	_Atomic uint64_t received;
	_Atomic uint64_t bad; /* order or damage errors */
	_Atomic uint8_t seen[]; /* per item: times received */
} br_shared;

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: bench_remote --url URL --mode one|batch|rtt|mp [--size "
	    "B]\n"
	    "                    [--count N] [--batch B] [--producers P]\n"
	    "                    [--consumers C] [--seconds S] [--timeout S]\n"
	    "qpipe's remote queue through the qpiped at URL (see the file's "
	    "comment).\n");
}

static int
parse_args(int argc, char **argv, br_opts *o)
{
	static const struct option longopts[] = {
	    {"url", required_argument, NULL, 'u'},
	    {"mode", required_argument, NULL, 'm'},
	    {"size", required_argument, NULL, 's'},
	    {"count", required_argument, NULL, 'n'},
	    {"batch", required_argument, NULL, 'b'},
	    {"producers", required_argument, NULL, 'P'},
	    {"consumers", required_argument, NULL, 'C'},
	    {"seconds", required_argument, NULL, 'S'},
	    {"timeout", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	uint64_t *num[128] = {0};
	int ch;

	num['s'] = &o->size;
	num['n'] = &o->count;
	num['b'] = &o->batch;
	num['P'] = &o->producers;
	num['C'] = &o->consumers;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 'u':
			o->url = optarg;
			break;
		case 'm':
			o->mode = optarg;
			break;
		case 's':
		case 'n':
		case 'b':
		case 'P':
		case 'C':
			if (bench_parse_size(optarg, num[ch]) != 0) {
				fprintf(stderr,
				    "bench_remote: bad number '%s'\n", optarg);
				return 1;
			}
			break;
		case 'S':
		case 't':
			if (bench_parse_seconds(
			        optarg, ch == 'S' ? &o->seconds : &o->timeout)
			    != 0) {
				fprintf(stderr,
				    "bench_remote: bad seconds '%s'\n",
				    optarg);
				return 1;
			}
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return 1;
		}
	}
	if (optind != argc || o->url == NULL || o->mode == NULL
	    || (strcmp(o->mode, "one") != 0 && strcmp(o->mode, "batch") != 0
	        && strcmp(o->mode, "rtt") != 0
	        && strcmp(o->mode, "mp") != 0)) {
		usage(stderr);
		return 1;
	}
	if (o->size < 8 || o->size > (UINT64_C(1) << 20) || o->count < 1
	    || o->count > (UINT64_C(1) << 26) || o->batch < 1
	    || o->batch > MAX_BATCH || o->producers > MAX_PROCS / 2
	    || o->consumers > MAX_PROCS / 2
	    || o->producers + o->consumers < 1) {
		fprintf(stderr,
		    "bench_remote: size 8 B-1 MiB, count 1-2^26, batch "
		    "1-%d, producers and consumers 0-%d (not both 0)\n",
		    MAX_BATCH, MAX_PROCS / 2);
		return 1;
	}
	snprintf(o->addr, sizeof(o->addr), "%s/bench-%ld-%s", o->url,
	    (long) getpid(), o->mode);
	return 0;
}

static int
open_queue(const br_opts *o, qp_queue **q)
{
	qp_queue_opts qo = {0};

	qo.flags = QP_OPEN_CREATE;
	return qp_queue_open(q, o->addr, &qo);
}

static double
secs(uint64_t a, uint64_t b)
{
	double s = (double) (b - a) / 1e9;

	return s > 0 ? s : 1e-9;
}

/* Checks an item got: its stamp names producer p's next item. */
static bool
check_item(const uint8_t *buf, size_t len, const br_opts *o,
    uint64_t *next_seq, uint64_t *item_no)
{
	uint64_t stamp, p, seq;

	if (len != o->size || bench_stamp_check(buf, len, &stamp) != 0) {
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

/* ---- one client ---- */

static int
run_one(const br_opts *o, bool batched)
{
	const char *impl = batched ? "qpipe-remote-batch" : "qpipe-remote";
	uint8_t *buf = calloc(o->batch, (size_t) o->size);
	const void **bufs = calloc(o->batch, sizeof(*bufs));
	size_t *lens = calloc(o->batch, sizeof(*lens));
	void **got = calloc(o->batch, sizeof(*got));
	uint64_t next_seq[1] = {0}, t0, t1, t2, item_no;
	qp_queue *q = NULL;
	int rv;

	if (buf == NULL || bufs == NULL || lens == NULL || got == NULL) {
		return bench_fail(impl, "out of memory");
	}
	if ((rv = open_queue(o, &q)) != QP_OK) {
		return bench_fail(impl, "open %s: %s", o->addr, qp_errmsg());
	}
	t0 = bench_now_ns();
	for (uint64_t i = 0; i < o->count;) {
		uint64_t n = batched ? o->batch : 1;
		if (n > o->count - i) {
			n = o->count - i;
		}
		for (uint64_t k = 0; k < n; k++) {
			uint8_t *b = buf + k * o->size;
			bench_stamp(b, (size_t) o->size, i + k);
			bufs[k] = b;
			lens[k] = (size_t) o->size;
		}
		rv = batched
		    ? qp_queue_put_many(q, bufs, lens, (size_t) n, QP_FOREVER)
		    : qp_queue_put(q, buf, (size_t) o->size, QP_FOREVER);
		if (rv != QP_OK) {
			return bench_fail(impl, "put: %s", qp_errmsg());
		}
		i += n;
	}
	t1 = bench_now_ns();
	for (uint64_t i = 0; i < o->count;) {
		size_t n = 1, len;
		if (batched) {
			rv = qp_queue_get_many(q, got, lens,
			    (size_t) (o->batch < o->count - i ? o->batch
			                                      : o->count - i),
			    &n, QP_FOREVER);
		} else {
			rv = qp_queue_get_into(
			    q, buf, (size_t) o->size, &len, QP_FOREVER);
			got[0] = buf;
			lens[0] = len;
		}
		if (rv != QP_OK) {
			return bench_fail(impl, "get: %s", qp_errmsg());
		}
		for (size_t k = 0; k < n; k++) {
			bool ok = check_item(
			    got[k], lens[k], o, next_seq, &item_no);
			if (batched) {
				qp_free(got[k]);
			}
			if (!ok || item_no != i + k) {
				return bench_fail(impl,
				    "item %" PRIu64 " damaged or out of order",
				    i + k);
			}
		}
		i += n;
	}
	t2 = bench_now_ns();
	qp_queue_free(q);
	qp_queue_unlink(o->addr);
	printf("{\"impl\": \"%s\", \"mode\": \"%s\", \"size\": %" PRIu64
	       ", \"batch\": %" PRIu64 ", \"items\": %" PRIu64
	       ", \"put_seconds\": %.6f, \"puts_per_s\": %.1f, "
	       "\"get_seconds\": %.6f, \"gets_per_s\": %.1f, "
	       "\"seconds\": %.6f}\n",
	    impl, o->mode, o->size, batched ? o->batch : 1, o->count,
	    secs(t0, t1), (double) o->count / secs(t0, t1), secs(t1, t2),
	    (double) o->count / secs(t1, t2), secs(t0, t1));
	free(buf);
	free(bufs);
	free(lens);
	free(got);
	return 0;
}

/* ---- round trips ---- */

static int
run_rtt(const br_opts *o)
{
	const char *impl = "qpipe-remote";
	uint64_t *put = malloc(o->count * sizeof(uint64_t));
	uint64_t *get = malloc(o->count * sizeof(uint64_t));
	uint64_t *pair = malloc(o->count * sizeof(uint64_t));
	uint8_t *buf = malloc((size_t) o->size);
	uint64_t n = 0, t0 = 0, t_end, deadline = 0, stamp;
	qp_queue *q = NULL;

	if (put == NULL || get == NULL || pair == NULL || buf == NULL) {
		return bench_fail(impl, "out of memory");
	}
	if (open_queue(o, &q) != QP_OK) {
		return bench_fail(impl, "open %s: %s", o->addr, qp_errmsg());
	}
	for (uint64_t i = 0; i < WARMUP + o->count; i++) {
		uint64_t ts, tm, te;
		size_t len;

		if (i == WARMUP) {
			t0 = bench_now_ns();
			deadline = t0 + (uint64_t) (o->seconds * 1e9);
		}
		bench_stamp(buf, (size_t) o->size, i);
		ts = bench_now_ns();
		if (qp_queue_put(q, buf, (size_t) o->size, QP_FOREVER)
		    != QP_OK) {
			return bench_fail(impl, "put: %s", qp_errmsg());
		}
		tm = bench_now_ns();
		if (qp_queue_get_into(
		        q, buf, (size_t) o->size, &len, QP_FOREVER)
		    != QP_OK) {
			return bench_fail(impl, "get: %s", qp_errmsg());
		}
		te = bench_now_ns();
		if (len != o->size || bench_stamp_check(buf, len, &stamp) != 0
		    || stamp != i) {
			return bench_fail(impl, "item %" PRIu64 " damaged", i);
		}
		if (i >= WARMUP) {
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
	qp_queue_free(q);
	qp_queue_unlink(o->addr);
	bench_sort_u64(put, (size_t) n);
	bench_sort_u64(get, (size_t) n);
	bench_sort_u64(pair, (size_t) n);
	printf("{\"impl\": \"%s\", \"mode\": \"rtt\", \"size\": %" PRIu64
	       ", \"round_trips\": %" PRIu64
	       ", \"seconds\": %.6f, \"pairs_per_s\": %.1f, "
	       "\"p50_us\": %.3f, \"p99_us\": %.3f, "
	       "\"get_p50_us\": %.3f, \"get_p99_us\": %.3f, "
	       "\"pair_p50_us\": %.3f, \"pair_p99_us\": %.3f}\n",
	    impl, o->size, n, secs(t0, t_end), (double) n / secs(t0, t_end),
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

static int
mp_producer(const br_opts *o, br_shared *sh, uint64_t p)
{
	uint8_t *buf = calloc(o->batch, (size_t) o->size);
	const void **bufs = calloc(o->batch, sizeof(*bufs));
	size_t *lens = calloc(o->batch, sizeof(*lens));
	qp_queue *q = NULL;

	if (buf == NULL || bufs == NULL || lens == NULL
	    || open_queue(o, &q) != QP_OK) {
		fprintf(stderr, "bench_remote: producer %" PRIu64 ": %s\n", p,
		    qp_errmsg());
		return 1;
	}
	bench_atomic_min(&sh->t_first, bench_now_ns());
	for (uint64_t i = 0; i < o->count;) {
		uint64_t n = o->batch < o->count - i ? o->batch : o->count - i;
		int rv;
		for (uint64_t k = 0; k < n; k++) {
			bench_stamp(buf + k * o->size, (size_t) o->size,
			    (p << 32) | (i + k));
			bufs[k] = buf + k * o->size;
			lens[k] = (size_t) o->size;
		}
		rv = n == 1
		    ? qp_queue_put(q, buf, (size_t) o->size, QP_FOREVER)
		    : qp_queue_put_many(q, bufs, lens, (size_t) n, QP_FOREVER);
		if (rv != QP_OK) {
			fprintf(
			    stderr, "bench_remote: put: %s\n", qp_errmsg());
			return 1;
		}
		i += n;
	}
	if (o->consumers == 0) {
		bench_atomic_max(&sh->t_last, bench_now_ns());
	}
	/* The last producer tells each consumer to stop. */
	if (atomic_fetch_add(&sh->producers_done, 1) + 1 == o->producers) {
		for (uint64_t c = 0; c < o->consumers; c++) {
			if (qp_queue_put(q, "", 0, QP_FOREVER) != QP_OK) {
				fprintf(stderr, "bench_remote: put: %s\n",
				    qp_errmsg());
				return 1;
			}
		}
	}
	qp_queue_free(q);
	free(buf);
	free(bufs);
	free(lens);
	return 0;
}

static int
mp_consumer(const br_opts *o, br_shared *sh)
{
	uint64_t next_seq[MAX_PROCS] = {0}, item_no;
	void **got = calloc(o->batch, sizeof(*got));
	size_t *lens = calloc(o->batch, sizeof(*lens));
	uint8_t *buf = malloc((size_t) o->size);
	qp_queue *q = NULL;
	bool stop = false;

	if (got == NULL || lens == NULL || buf == NULL
	    || open_queue(o, &q) != QP_OK) {
		fprintf(stderr, "bench_remote: consumer: %s\n", qp_errmsg());
		return 1;
	}
	/* Prefilled (no producers): take until the queue is empty. Not
	 * QP_NOWAIT: with many consumers each holding a batch until its
	 * next get confirms it, a get may have to wait for lease slots. */
	qp_duration wait = o->producers == 0 ? 500 : QP_FOREVER;
	if (o->producers == 0) {
		bench_atomic_min(&sh->t_first, bench_now_ns());
	}
	while (!stop) {
		size_t n = 1, stops = 0;
		int rv;
		if (o->batch > 1) {
			rv = qp_queue_get_many(
			    q, got, lens, (size_t) o->batch, &n, wait);
		} else {
			rv = qp_queue_get_into(
			    q, buf, (size_t) o->size, &lens[0], wait);
			got[0] = buf;
		}
		if (rv == QP_EEMPTY && o->producers == 0) {
			break;
		}
		if (rv != QP_OK) {
			fprintf(
			    stderr, "bench_remote: get: %s\n", qp_errmsg());
			return 1;
		}
		for (size_t k = 0; k < n; k++) {
			if (lens[k] == 0) {
				/* A stop item (they come after every
				 * producer's items). */
				stops++;
			} else if (!check_item(got[k], lens[k], o, next_seq,
			               &item_no)) {
				atomic_fetch_add(&sh->bad, 1);
			} else {
				atomic_fetch_add(&sh->seen[item_no], 1);
				atomic_fetch_add(&sh->received, 1);
			}
			if (o->batch > 1) {
				qp_free(got[k]);
			}
		}
		if (stops == 0) {
			bench_atomic_max(&sh->t_last, bench_now_ns());
			continue;
		}
		/* One stop is this consumer's; the others it took in the
		 * same batch go back for the other consumers. */
		stop = true;
		for (size_t k = 1; k < stops; k++) {
			if (qp_queue_put(q, "", 0, QP_FOREVER) != QP_OK) {
				fprintf(stderr, "bench_remote: put: %s\n",
				    qp_errmsg());
				return 1;
			}
		}
	}
	qp_queue_free(q);
	free(got);
	free(lens);
	free(buf);
	return 0;
}

/* --producers 0: COUNT items in the queue before the consumers start. */
static int
prefill(const br_opts *o, qp_queue *q)
{
	uint8_t *buf = calloc(MAX_BATCH, (size_t) o->size);
	const void **bufs = calloc(MAX_BATCH, sizeof(*bufs));
	size_t *lens = calloc(MAX_BATCH, sizeof(*lens));
	int rv = QP_ENOMEM;

	for (uint64_t i = 0;
	     buf != NULL && bufs != NULL && lens != NULL && i < o->count;) {
		uint64_t n
		    = o->count - i < MAX_BATCH ? o->count - i : MAX_BATCH;
		for (uint64_t k = 0; k < n; k++) {
			bench_stamp(
			    buf + k * o->size, (size_t) o->size, i + k);
			bufs[k] = buf + k * o->size;
			lens[k] = (size_t) o->size;
		}
		if ((rv = qp_queue_put_many(
		         q, bufs, lens, (size_t) n, QP_FOREVER))
		    != QP_OK) {
			break;
		}
		i += n;
	}
	free(buf);
	free(bufs);
	free(lens);
	return rv == QP_OK ? 0 : -1;
}

static int
run_mp(const br_opts *o)
{
	const char *impl = "qpipe-remote-mp";
	uint64_t total = (o->producers > 0 ? o->producers : 1) * o->count;
	size_t shsize = sizeof(br_shared) + (size_t) total;
	br_shared *sh = bench_shared_alloc(shsize);
	pid_t pids[MAX_PROCS];
	int np = 0;
	char msg[640];
	bench_gate gate;
	uint64_t missing = 0, dup = 0;

	if (sh == NULL || bench_gate_init(&gate) != 0) {
		return bench_fail(impl, "out of memory");
	}
	atomic_store(&sh->t_first, UINT64_MAX);
	fflush(stdout);
	/* No nng in this process before the forks (nng is not
	 * fork-safe): the parent creates the queue after them. */
	for (uint64_t i = 0; i < o->producers + o->consumers; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			return bench_fail(impl, "fork: %s", strerror(errno));
		}
		if (pid == 0) {
			alarm((unsigned) o->timeout + 1);
			bench_gate_wait(&gate);
			_exit(i < o->producers ? mp_producer(o, sh, i)
			                       : mp_consumer(o, sh));
		}
		pids[np++] = pid;
	}
	alarm((unsigned) o->timeout + 3);
	qp_queue *q = NULL;
	if (open_queue(o, &q) != QP_OK) {
		snprintf(
		    msg, sizeof(msg), "open %s: %s", o->addr, qp_errmsg());
		bench_gate_open(&gate);
		for (int i = 0; i < np; i++) {
			kill(pids[i], SIGKILL);
		}
		char ignored[64];
		bench_reap(pids, np, ignored, sizeof(ignored));
		return bench_fail(impl, "%s", msg);
	}
	if (o->producers == 0 && prefill(o, q) != 0) {
		snprintf(msg, sizeof(msg), "prefill: %s", qp_errmsg());
		bench_gate_open(&gate);
		for (int i = 0; i < np; i++) {
			kill(pids[i], SIGKILL);
		}
		char ignored[64];
		bench_reap(pids, np, ignored, sizeof(ignored));
		qp_queue_free(q);
		qp_queue_unlink(o->addr);
		return bench_fail(impl, "%s", msg);
	}
	bench_gate_open(&gate);
	if (bench_reap(pids, np, msg, sizeof(msg)) != 0) {
		qp_queue_free(q);
		qp_queue_unlink(o->addr);
		return bench_fail(impl, "%s", msg);
	}
	size_t left = 0;
	qp_queue_qsize(q, &left);
	qp_queue_free(q);
	qp_queue_unlink(o->addr);
	if (o->consumers == 0 && left != total) {
		return bench_fail(impl,
		    "%zu items in the queue after %" PRIu64 " puts", left,
		    total);
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
	double s = secs(atomic_load(&sh->t_first), atomic_load(&sh->t_last));
	printf("{\"impl\": \"%s\", \"mode\": \"mp\", \"size\": %" PRIu64
	       ", \"batch\": %" PRIu64 ", \"producers\": %" PRIu64
	       ", \"consumers\": %" PRIu64 ", \"items\": %" PRIu64
	       ", \"left\": %zu, \"seconds\": %.6f, \"items_per_s\": %.1f}\n",
	    impl, o->size, o->batch, o->producers, o->consumers, total, left,
	    s, (double) total / s);
	return 0;
}

int
main(int argc, char **argv)
{
	br_opts o = {NULL, NULL, 64, 10000, 1, 1, 1, 1.0, 30.0, ""};

	if (parse_args(argc, argv, &o) != 0) {
		return 2;
	}
	if (strcmp(o.mode, "mp") == 0) {
		return run_mp(&o);
	}
	alarm((unsigned) o.timeout + 1);
	if (strcmp(o.mode, "rtt") == 0) {
		return run_rtt(&o);
	}
	return run_one(&o, strcmp(o.mode, "batch") == 0);
}
