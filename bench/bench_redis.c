/*
 * bench_redis.c - Redis driven the way bench_remote drives qpiped: the
 * like-for-like Redis peer of bench/run remote and durable. A small C
 * client on hiredis, one blocking connection per process, the same loops
 * and the same JSON fields as bench_remote (both are clients.c's):
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
 * Locking: none (one connection per process).
 */
#include "clients.h"

#include <hiredis/hiredis.h>

static const char *rr_host = "127.0.0.1";
static int rr_port;
static char rr_key[64];

/* One process's connection, a command's argument vector ("LPUSH", key,
 * then up to CL_MAX_BATCH values) and the reply of its last RPOP. */
typedef struct rr_client {
	redisContext *rc;
	const char *argv[CL_MAX_BATCH + 2];
	size_t argl[CL_MAX_BATCH + 2];
	redisReply *r;
	const uint8_t *items[CL_MAX_BATCH];
	size_t lens[CL_MAX_BATCH];
} rr_client;

static void *
rr_open(const cl_opts *o, char *msg, size_t len)
{
	struct timeval tv = {(time_t) o->timeout, 0};
	rr_client *c = calloc(1, sizeof(*c));

	if (c == NULL) {
		snprintf(msg, len, "out of memory");
		return NULL;
	}
	c->rc = redisConnectWithTimeout(rr_host, rr_port, tv);
	if (c->rc == NULL || c->rc->err != 0) {
		if (c->rc != NULL) {
			fprintf(stderr, "bench_redis: connect: %s\n",
			    c->rc->errstr);
			redisFree(c->rc);
		}
		free(c);
		snprintf(
		    msg, len, "cannot connect to %s:%d", rr_host, rr_port);
		return NULL;
	}
	redisSetTimeout(c->rc, tv);
	c->argv[0] = "LPUSH";
	c->argl[0] = 5;
	c->argv[1] = rr_key;
	c->argl[1] = strlen(rr_key);
	return c;
}

static void
rr_close(void *arg)
{
	rr_client *c = arg;

	redisFree(c->rc);
	free(c);
}

static void
rr_reset(void *arg)
{
	rr_client *c = arg;

	freeReplyObject(redisCommand(c->rc, "DEL %s", rr_key));
}

static void
rr_drop(void *arg)
{
	rr_reset(arg);
	rr_close(arg);
}

/* What a failed command says: hiredis's error, or Redis's. */
static const char *
rr_why(const rr_client *c, const redisReply *r)
{
	return r == NULL                   ? c->rc->errstr
	    : r->type == REDIS_REPLY_ERROR ? r->str
	                                   : "unexpected reply";
}

/* LPUSH of the n items (in stamp order, so that RPOP returns them in
 * it); many is the same to Redis. */
static int
rr_put(void *arg, const uint8_t *buf, size_t size, uint64_t n, bool many,
    char *msg, size_t len)
{
	rr_client *c = arg;
	redisReply *r;
	int rv = 0;

	(void) many;
	for (uint64_t k = 0; k < n; k++) {
		c->argv[2 + k] = (const char *) buf + k * size;
		c->argl[2 + k] = size;
	}
	r = redisCommandArgv(c->rc, (int) n + 2, c->argv, c->argl);
	if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
		snprintf(msg, len, "LPUSH: %s", rr_why(c, r));
		rv = -1;
	}
	freeReplyObject(r);
	return rv;
}

/* RPOP of up to max items (max > 1: RPOP key max); NIL: the list is
 * empty. Redis does not wait. */
static long
rr_get(void *arg, uint64_t max, bool many, int wait_ms,
    const uint8_t *const **items, const size_t **lens, char *msg, size_t len)
{
	rr_client *c = arg;
	redisReply *r, **el = NULL;
	size_t n = 0;

	(void) many;
	(void) wait_ms;
	if (max > 1) {
		r = redisCommand(
		    c->rc, "RPOP %s %llu", rr_key, (unsigned long long) max);
	} else {
		r = redisCommand(c->rc, "RPOP %s", rr_key);
	}
	if (r == NULL
	    || (r->type != REDIS_REPLY_NIL && r->type != REDIS_REPLY_STRING
	        && r->type != REDIS_REPLY_ARRAY)) {
		snprintf(msg, len, "RPOP: %s", rr_why(c, r));
		freeReplyObject(r);
		return -1;
	}
	c->r = r;
	if (r->type == REDIS_REPLY_ARRAY) {
		el = r->element;
		n = r->elements;
	} else if (r->type == REDIS_REPLY_STRING) {
		el = &c->r;
		n = 1;
	}
	for (size_t k = 0; k < n && k < CL_MAX_BATCH; k++) {
		bool str = el[k]->type == REDIS_REPLY_STRING;
		c->items[k] = str ? (const uint8_t *) el[k]->str : NULL;
		c->lens[k] = str ? el[k]->len : 0;
	}
	*items = c->items;
	*lens = c->lens;
	return (long) (n < CL_MAX_BATCH ? n : CL_MAX_BATCH);
}

static void
rr_release(void *arg)
{
	rr_client *c = arg;

	freeReplyObject(c->r);
	c->r = NULL;
}

static long long
rr_left(void *arg)
{
	rr_client *c = arg;
	redisReply *r = redisCommand(c->rc, "LLEN %s", rr_key);
	long long left = -1;

	if (r != NULL && r->type == REDIS_REPLY_INTEGER) {
		left = r->integer;
	}
	freeReplyObject(r);
	return left;
}

static const cl_ops rr_ops = {
    .prog = "bench_redis",
    .impl = "redis-hiredis",
    .noun = "list",
    .puts = "pushes",
    .prefill_batch = 256,
    .open = rr_open,
    .reset = rr_reset,
    .drop = rr_drop,
    .close = rr_close,
    .put = rr_put,
    .get = rr_get,
    .release = rr_release,
    .left = rr_left,
};

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

int
main(int argc, char **argv)
{
	cl_opts o = {NULL, 64, 10000, 1, 1, 0, 1.0, 30.0};
	uint64_t port = 0;
	const bench_opt own[] = {
	    {"host", 's', &rr_host},
	    {"port", 'n', &port},
	    {NULL, 0, NULL},
	};

	if (cl_parse(argc, argv, "bench_redis", &o, own, usage) != 0) {
		return 2;
	}
	if (port < 1 || port > 65535) {
		usage(stderr);
		return 2;
	}
	rr_port = (int) port;
	if (o.size < 8 || o.size > (UINT64_C(1) << 20) || o.count < 1
	    || o.count > (UINT64_C(1) << 26) || o.batch < 1
	    || o.batch > CL_MAX_BATCH || o.producers > CL_MAX_PROCS
	    || o.consumers > CL_MAX_PROCS
	    || (strcmp(o.mode, "mp") == 0
	        && (o.producers == 0) == (o.consumers == 0))) {
		fprintf(stderr,
		    "bench_redis: size 8 B-1 MiB, count 1-2^26, batch 1-%d, "
		    "mp: producers or consumers (1-%d), not both\n",
		    CL_MAX_BATCH, CL_MAX_PROCS);
		return 2;
	}
	snprintf(
	    rr_key, sizeof(rr_key), "bench-%ld-%s", (long) getpid(), o.mode);
	return cl_run(&o, &rr_ops);
}
