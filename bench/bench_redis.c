/*
 * bench_redis.c - Redis driven the way bench_remote drives qpiped: the
 * like-for-like Redis peer of bench/run remote and durable. A small C
 * client on hiredis, one blocking connection per process, the same loops
 * and the same JSON fields as bench_remote:
 *
 *   --mode one    one client: COUNT LPUSHes one by one, then COUNT RPOPs:
 *                 puts/s, gets/s
 *   --mode batch  one client: LPUSH of BATCH values per command, then
 *                 RPOP key BATCH: puts/s, gets/s
 *   --mode rtt    one client: LPUSH then RPOP, each timed, after a warm-up,
 *                 until COUNT pairs or SECONDS: p50/p99 of the put, the get
 *                 and the pair
 *   --mode mp     --consumers 0: P producer processes (fork()ed, each its
 *                 own connection) each push COUNT items (BATCH > 1: BATCH
 *                 values per LPUSH): items/s from the first push to the
 *                 last reply. --producers 0: the driver fills the list with
 *                 COUNT items, then C consumers RPOP (BATCH > 1: RPOP key
 *                 BATCH) until it is empty: items/s from the start to the
 *                 last pop
 *
 * Every item carries its producer and sequence number (bench_stamp) and is
 * checked as bench_remote checks it. Each run uses a list of its own and
 * deletes it. Prints one JSON line. Built only where hiredis is found.
 * Locking: none (the mp children share counters through atomics in
 * MAP_SHARED memory).
 */
#include "bench.h"

#include <getopt.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdbool.h>

#define WARMUP    200
#define MAX_PROCS 128
#define MAX_BATCH 4096

typedef struct rb_opts {
	const char *host;
	int port;
	const char *mode;
	uint64_t size;
	uint64_t count;
	uint64_t batch;
	uint64_t producers;
	uint64_t consumers;
	double seconds;
	double timeout;
	char key[64];
} rb_opts;

typedef struct rb_shared {
	_Atomic uint64_t t_first;
	_Atomic uint64_t t_last;
	_Atomic uint64_t received;
	_Atomic uint64_t bad;
	_Atomic uint8_t seen[];
} rb_shared;

/* A batch's argument vector: "LPUSH", key, then up to MAX_BATCH values. */
typedef struct rb_cmd {
	const char **argv;
	size_t *lens;
	uint8_t *buf;
} rb_cmd;

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: bench_redis --port P --mode one|batch|rtt|mp [--host H] "
	    "[--size B]\n"
	    "                   [--count N] [--batch B] [--producers P]\n"
	    "                   [--consumers C] [--seconds S] [--timeout S]\n"
	    "Redis through hiredis, as bench_remote drives qpiped (see the "
	    "file's comment).\n");
}

static int
parse_args(int argc, char **argv, rb_opts *o)
{
	static const struct option longopts[] = {
	    {"host", required_argument, NULL, 'H'},
	    {"port", required_argument, NULL, 'p'},
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
	uint64_t port = 0;
	int ch;

	num['p'] = &port;
	num['s'] = &o->size;
	num['n'] = &o->count;
	num['b'] = &o->batch;
	num['P'] = &o->producers;
	num['C'] = &o->consumers;
	while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H':
			o->host = optarg;
			break;
		case 'm':
			o->mode = optarg;
			break;
		case 'p':
		case 's':
		case 'n':
		case 'b':
		case 'P':
		case 'C':
			if (bench_parse_size(optarg, num[ch]) != 0) {
				fprintf(stderr,
				    "bench_redis: bad number '%s'\n", optarg);
				return 1;
			}
			break;
		case 'S':
		case 't':
			if (bench_parse_seconds(
			        optarg, ch == 'S' ? &o->seconds : &o->timeout)
			    != 0) {
				fprintf(stderr,
				    "bench_redis: bad seconds '%s'\n", optarg);
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
	if (optind != argc || o->mode == NULL || port < 1 || port > 65535
	    || (strcmp(o->mode, "one") != 0 && strcmp(o->mode, "batch") != 0
	        && strcmp(o->mode, "rtt") != 0
	        && strcmp(o->mode, "mp") != 0)) {
		usage(stderr);
		return 1;
	}
	o->port = (int) port;
	if (o->size < 8 || o->size > (UINT64_C(1) << 20) || o->count < 1
	    || o->count > (UINT64_C(1) << 26) || o->batch < 1
	    || o->batch > MAX_BATCH || o->producers > MAX_PROCS
	    || o->consumers > MAX_PROCS
	    || (strcmp(o->mode, "mp") == 0
	        && (o->producers == 0) == (o->consumers == 0))) {
		fprintf(stderr,
		    "bench_redis: size 8 B-1 MiB, count 1-2^26, batch 1-%d, "
		    "mp: producers or consumers (1-%d), not both\n",
		    MAX_BATCH, MAX_PROCS);
		return 1;
	}
	snprintf(
	    o->key, sizeof(o->key), "bench-%ld-%s", (long) getpid(), o->mode);
	return 0;
}

static redisContext *
connect_redis(const rb_opts *o)
{
	struct timeval tv = {(time_t) o->timeout, 0};
	redisContext *c = redisConnectWithTimeout(o->host, o->port, tv);

	if (c != NULL && c->err != 0) {
		fprintf(stderr, "bench_redis: connect: %s\n", c->errstr);
		redisFree(c);
		return NULL;
	}
	if (c != NULL) {
		redisSetTimeout(c, tv);
	}
	return c;
}

static double
secs(uint64_t a, uint64_t b)
{
	double s = (double) (b - a) / 1e9;

	return s > 0 ? s : 1e-9;
}

static bool
check_item(const char *buf, size_t len, const rb_opts *o, uint64_t *next_seq,
    uint64_t *item_no)
{
	uint64_t stamp, p, seq;

	if (len != o->size
	    || bench_stamp_check((const uint8_t *) buf, len, &stamp) != 0) {
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

static int
cmd_init(rb_cmd *c, const rb_opts *o)
{
	c->argv = calloc(MAX_BATCH + 2, sizeof(*c->argv));
	c->lens = calloc(MAX_BATCH + 2, sizeof(*c->lens));
	c->buf = calloc(MAX_BATCH, (size_t) o->size);
	if (c->argv == NULL || c->lens == NULL || c->buf == NULL) {
		return -1;
	}
	c->argv[0] = "LPUSH";
	c->lens[0] = 5;
	c->argv[1] = o->key;
	c->lens[1] = strlen(o->key);
	return 0;
}

static void
cmd_free(rb_cmd *c)
{
	free(c->argv);
	free(c->lens);
	free(c->buf);
}

/* LPUSH of n stamped items, stamps first..first+n-1 (in that order, so
 * that RPOP returns them in it). Returns 0 or -1 (msg set). */
static int
push(redisContext *rc, rb_cmd *c, const rb_opts *o, uint64_t first, uint64_t n,
    char *msg, size_t len)
{
	redisReply *r;
	int rv = 0;

	for (uint64_t k = 0; k < n; k++) {
		uint8_t *b = c->buf + k * o->size;
		bench_stamp(b, (size_t) o->size, first + k);
		c->argv[2 + k] = (const char *) b;
		c->lens[2 + k] = (size_t) o->size;
	}
	r = redisCommandArgv(rc, (int) n + 2, c->argv, c->lens);
	if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
		snprintf(msg, len, "LPUSH: %s",
		    r == NULL                          ? rc->errstr
		        : r->type == REDIS_REPLY_ERROR ? r->str
		                                       : "unexpected reply");
		rv = -1;
	}
	freeReplyObject(r);
	return rv;
}

/* RPOP of up to n items (n > 1: RPOP key n). Returns the reply (NIL when
 * the list is empty), or NULL (msg set). */
static redisReply *
pop(redisContext *rc, const rb_opts *o, uint64_t n, char *msg, size_t len)
{
	redisReply *r;

	if (n > 1) {
		r = redisCommand(
		    rc, "RPOP %s %llu", o->key, (unsigned long long) n);
	} else {
		r = redisCommand(rc, "RPOP %s", o->key);
	}
	if (r == NULL || r->type == REDIS_REPLY_ERROR
	    || (r->type != REDIS_REPLY_NIL && r->type != REDIS_REPLY_STRING
	        && r->type != REDIS_REPLY_ARRAY)) {
		snprintf(msg, len, "RPOP: %s",
		    r == NULL                          ? rc->errstr
		        : r->type == REDIS_REPLY_ERROR ? r->str
		                                       : "unexpected reply");
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

/* The items of a pop's reply: *n of them, the i-th at items[i]. */
static size_t
reply_items(redisReply *r, redisReply ***items, redisReply **one)
{
	if (r->type == REDIS_REPLY_ARRAY) {
		*items = r->element;
		return r->elements;
	}
	if (r->type == REDIS_REPLY_STRING) {
		*one = r;
		*items = one;
		return 1;
	}
	return 0;
}

static void
del_key(const rb_opts *o)
{
	redisContext *rc = connect_redis(o);

	if (rc != NULL) {
		freeReplyObject(redisCommand(rc, "DEL %s", o->key));
		redisFree(rc);
	}
}

/* ---- one client ---- */

static int
run_one(const rb_opts *o, bool batched)
{
	const char *impl = batched ? "redis-hiredis-batch" : "redis-hiredis";
	uint64_t next_seq[1] = {0}, t0, t1, t2, item_no;
	char msg[256];
	redisContext *rc = connect_redis(o);
	rb_cmd c;

	if (rc == NULL || cmd_init(&c, o) != 0) {
		return bench_fail(
		    impl, "cannot connect to %s:%d", o->host, o->port);
	}
	freeReplyObject(redisCommand(rc, "DEL %s", o->key));
	t0 = bench_now_ns();
	for (uint64_t i = 0; i < o->count;) {
		uint64_t n = batched ? o->batch : 1;
		if (n > o->count - i) {
			n = o->count - i;
		}
		if (push(rc, &c, o, i, n, msg, sizeof(msg)) != 0) {
			return bench_fail(impl, "%s", msg);
		}
		i += n;
	}
	t1 = bench_now_ns();
	for (uint64_t i = 0; i < o->count;) {
		uint64_t want = batched ? o->batch : 1;
		redisReply *r, **items, *one;
		size_t n;

		if (want > o->count - i) {
			want = o->count - i;
		}
		if ((r = pop(rc, o, want, msg, sizeof(msg))) == NULL) {
			return bench_fail(impl, "%s", msg);
		}
		n = reply_items(r, &items, &one);
		if (n == 0) {
			freeReplyObject(r);
			return bench_fail(impl,
			    "list empty after %" PRIu64 " of %" PRIu64
			    " items",
			    i, o->count);
		}
		for (size_t k = 0; k < n; k++) {
			if (items[k]->type != REDIS_REPLY_STRING
			    || !check_item(items[k]->str, items[k]->len, o,
			        next_seq, &item_no)
			    || item_no != i + k) {
				freeReplyObject(r);
				return bench_fail(impl,
				    "item %" PRIu64 " damaged or out of order",
				    i + k);
			}
		}
		freeReplyObject(r);
		i += n;
	}
	t2 = bench_now_ns();
	freeReplyObject(redisCommand(rc, "DEL %s", o->key));
	redisFree(rc);
	cmd_free(&c);
	printf("{\"impl\": \"%s\", \"mode\": \"%s\", \"size\": %" PRIu64
	       ", \"batch\": %" PRIu64 ", \"items\": %" PRIu64
	       ", \"put_seconds\": %.6f, \"puts_per_s\": %.1f, "
	       "\"get_seconds\": %.6f, \"gets_per_s\": %.1f, "
	       "\"seconds\": %.6f}\n",
	    impl, o->mode, o->size, batched ? o->batch : 1, o->count,
	    secs(t0, t1), (double) o->count / secs(t0, t1), secs(t1, t2),
	    (double) o->count / secs(t1, t2), secs(t0, t1));
	return 0;
}

/* ---- round trips ---- */

static int
run_rtt(const rb_opts *o)
{
	const char *impl = "redis-hiredis";
	uint64_t *put = malloc(o->count * sizeof(uint64_t));
	uint64_t *get = malloc(o->count * sizeof(uint64_t));
	uint64_t *pair = malloc(o->count * sizeof(uint64_t));
	uint64_t n = 0, t0 = 0, t_end, deadline = 0, stamp;
	char msg[256];
	redisContext *rc = connect_redis(o);
	rb_cmd c;

	if (put == NULL || get == NULL || pair == NULL || rc == NULL
	    || cmd_init(&c, o) != 0) {
		return bench_fail(impl, "cannot connect, or out of memory");
	}
	freeReplyObject(redisCommand(rc, "DEL %s", o->key));
	for (uint64_t i = 0; i < WARMUP + o->count; i++) {
		uint64_t ts, tm, te;
		redisReply *r;

		if (i == WARMUP) {
			t0 = bench_now_ns();
			deadline = t0 + (uint64_t) (o->seconds * 1e9);
		}
		ts = bench_now_ns();
		if (push(rc, &c, o, i, 1, msg, sizeof(msg)) != 0) {
			return bench_fail(impl, "%s", msg);
		}
		tm = bench_now_ns();
		if ((r = pop(rc, o, 1, msg, sizeof(msg))) == NULL) {
			return bench_fail(impl, "%s", msg);
		}
		te = bench_now_ns();
		if (r->type != REDIS_REPLY_STRING || r->len != o->size
		    || bench_stamp_check(
		           (const uint8_t *) r->str, r->len, &stamp)
		        != 0
		    || stamp != i) {
			freeReplyObject(r);
			return bench_fail(impl, "item %" PRIu64 " damaged", i);
		}
		freeReplyObject(r);
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
	freeReplyObject(redisCommand(rc, "DEL %s", o->key));
	redisFree(rc);
	cmd_free(&c);
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
	return 0;
}

/* ---- many clients ---- */

static int
mp_producer(const rb_opts *o, rb_shared *sh, uint64_t p)
{
	redisContext *rc = connect_redis(o);
	char msg[256];
	rb_cmd c;

	if (rc == NULL || cmd_init(&c, o) != 0) {
		return 1;
	}
	bench_atomic_min(&sh->t_first, bench_now_ns());
	for (uint64_t i = 0; i < o->count;) {
		uint64_t n = o->batch < o->count - i ? o->batch : o->count - i;
		if (push(rc, &c, o, (p << 32) | i, n, msg, sizeof(msg)) != 0) {
			fprintf(stderr, "bench_redis: %s\n", msg);
			return 1;
		}
		i += n;
	}
	bench_atomic_max(&sh->t_last, bench_now_ns());
	redisFree(rc);
	cmd_free(&c);
	return 0;
}

static int
mp_consumer(const rb_opts *o, rb_shared *sh)
{
	uint64_t next_seq[1] = {0}, item_no;
	redisContext *rc = connect_redis(o);
	char msg[256];

	if (rc == NULL) {
		return 1;
	}
	bench_atomic_min(&sh->t_first, bench_now_ns());
	for (;;) {
		redisReply *r = pop(rc, o, o->batch, msg, sizeof(msg)),
		           **items, *one;
		size_t n;

		if (r == NULL) {
			fprintf(stderr, "bench_redis: %s\n", msg);
			return 1;
		}
		n = reply_items(r, &items, &one);
		if (n == 0) {
			freeReplyObject(r);
			break;
		}
		for (size_t k = 0; k < n; k++) {
			if (items[k]->type != REDIS_REPLY_STRING
			    || !check_item(items[k]->str, items[k]->len, o,
			        next_seq, &item_no)) {
				atomic_fetch_add(&sh->bad, 1);
			} else {
				atomic_fetch_add(&sh->seen[item_no], 1);
				atomic_fetch_add(&sh->received, 1);
			}
		}
		freeReplyObject(r);
		bench_atomic_max(&sh->t_last, bench_now_ns());
	}
	redisFree(rc);
	return 0;
}

static int
run_mp(const rb_opts *o)
{
	const char *impl = "redis-hiredis-mp";
	uint64_t total = (o->producers > 0 ? o->producers : 1) * o->count;
	rb_shared *sh = bench_shared_alloc(sizeof(rb_shared) + (size_t) total);
	uint64_t nprocs = o->producers + o->consumers, missing = 0, dup = 0;
	long long left = -1;
	pid_t pids[MAX_PROCS];
	char msg[640];
	int np = 0;
	bench_gate gate;
	redisContext *rc = connect_redis(o);
	redisReply *r;
	rb_cmd c;

	if (sh == NULL || rc == NULL || bench_gate_init(&gate) != 0
	    || cmd_init(&c, o) != 0) {
		return bench_fail(impl, "cannot connect, or out of memory");
	}
	atomic_store(&sh->t_first, UINT64_MAX);
	freeReplyObject(redisCommand(rc, "DEL %s", o->key));
	for (uint64_t i = 0; o->producers == 0 && i < o->count;) {
		uint64_t n = o->count - i < 256 ? o->count - i : 256;
		if (push(rc, &c, o, i, n, msg, sizeof(msg)) != 0) {
			return bench_fail(impl, "prefill: %s", msg);
		}
		i += n;
	}
	fflush(stdout);
	for (uint64_t i = 0; i < nprocs; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			return bench_fail(impl, "fork: %s", strerror(errno));
		}
		if (pid == 0) {
			alarm((unsigned) o->timeout + 1);
			bench_gate_wait(&gate);
			_exit(o->producers > 0 ? mp_producer(o, sh, i)
			                       : mp_consumer(o, sh));
		}
		pids[np++] = pid;
	}
	alarm((unsigned) o->timeout + 3);
	bench_gate_open(&gate);
	if (bench_reap(pids, np, msg, sizeof(msg)) != 0) {
		del_key(o);
		return bench_fail(impl, "%s", msg);
	}
	r = redisCommand(rc, "LLEN %s", o->key);
	if (r != NULL && r->type == REDIS_REPLY_INTEGER) {
		left = r->integer;
	}
	freeReplyObject(r);
	freeReplyObject(redisCommand(rc, "DEL %s", o->key));
	redisFree(rc);
	cmd_free(&c);
	if (o->consumers == 0 && left != (long long) total) {
		return bench_fail(impl,
		    "%lld items in the list after %" PRIu64 " pushes", left,
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
	       ", \"left\": %lld, \"seconds\": %.6f, \"items_per_s\": %.1f}\n",
	    impl, o->size, o->batch, o->producers, o->consumers, total,
	    o->consumers == 0 ? left : 0LL, s, (double) total / s);
	return 0;
}

int
main(int argc, char **argv)
{
	rb_opts o = {"127.0.0.1", 0, NULL, 64, 10000, 1, 1, 0, 1.0, 30.0, ""};

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
