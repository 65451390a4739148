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
 *   --durable P   the queue is durable (the server's --data-dir), its
 *                 fsync policy P: always, interval:MS or never
 *
 * The loops, timing, checks and JSON lines are clients.c's, shared with
 * bench_redis; this file holds the qpipe calls behind them. Prints one
 * JSON line. Locking: none (one handle per process).
 */
#include "clients.h"

#include <qpipe.h>

/* url + "/" + the queue's name */
static char rq_addr[512];

/* --durable POLICY: the queue is a durable one with that fsync policy
 * (NULL: a shared-memory queue of the server's). */
static const char *rq_durable;

/* One process's handle, and the items of its last get. */
typedef struct rq_client {
	qp_queue *q;
	size_t size; /* bytes per item */
	uint8_t *buf; /* a single get's item */
	const void *bufs[CL_MAX_BATCH];
	void *got[CL_MAX_BATCH];
	const uint8_t *items[CL_MAX_BATCH];
	size_t lens[CL_MAX_BATCH];
	size_t held; /* got[0..held) to free */
} rq_client;

static void
rq_close(void *arg)
{
	rq_client *c = arg;

	qp_queue_free(c->q);
	free(c->buf);
	free(c);
}

static void
rq_drop(void *arg)
{
	rq_close(arg);
	qp_queue_unlink(rq_addr);
}

static void *
rq_open(const cl_opts *o, char *msg, size_t len)
{
	rq_client *c = calloc(1, sizeof(*c));
	qp_queue_opts qo = {0};

	qo.flags = QP_OPEN_CREATE | (rq_durable != NULL ? QP_OPEN_DURABLE : 0);
	qo.fsync = rq_durable;
	if (c == NULL || (c->buf = malloc((size_t) o->size)) == NULL) {
		snprintf(msg, len, "out of memory");
		free(c);
		return NULL;
	}
	c->size = (size_t) o->size;
	if (qp_queue_open(&c->q, rq_addr, &qo) != QP_OK) {
		snprintf(msg, len, "open %s: %s", rq_addr, qp_errmsg());
		rq_close(c);
		return NULL;
	}
	return c;
}

static int
rq_put(void *arg, const uint8_t *buf, size_t size, uint64_t n, bool many,
    char *msg, size_t len)
{
	rq_client *c = arg;
	int rv;

	if (many) {
		for (uint64_t k = 0; k < n; k++) {
			c->bufs[k] = buf + k * size;
			c->lens[k] = size;
		}
		rv = qp_queue_put_many(
		    c->q, c->bufs, c->lens, (size_t) n, QP_FOREVER);
	} else {
		rv = qp_queue_put(c->q, buf, size, QP_FOREVER);
	}
	if (rv != QP_OK) {
		snprintf(msg, len, "put: %s", qp_errmsg());
		return -1;
	}
	return 0;
}

static long
rq_get(void *arg, uint64_t max, bool many, int wait_ms,
    const uint8_t *const **items, const size_t **lens, char *msg, size_t len)
{
	rq_client *c = arg;
	qp_duration wait = wait_ms < 0 ? QP_FOREVER : wait_ms;
	size_t n = 1;
	int rv;

	if (many) {
		rv = qp_queue_get_many(
		    c->q, c->got, c->lens, (size_t) max, &n, wait);
		c->held = rv == QP_OK ? n : 0;
		for (size_t k = 0; k < c->held; k++) {
			c->items[k] = c->got[k];
		}
	} else {
		rv = qp_queue_get_into(
		    c->q, c->buf, c->size, &c->lens[0], wait);
		c->items[0] = c->buf;
	}
	if (rv == QP_EEMPTY) {
		return 0;
	}
	if (rv != QP_OK) {
		snprintf(msg, len, "get: %s", qp_errmsg());
		return -1;
	}
	*items = c->items;
	*lens = c->lens;
	return (long) n;
}

static void
rq_release(void *arg)
{
	rq_client *c = arg;

	for (size_t k = 0; k < c->held; k++) {
		qp_free(c->got[k]);
	}
	c->held = 0;
}

static long long
rq_left(void *arg)
{
	rq_client *c = arg;
	size_t left = 0;

	qp_queue_qsize(c->q, &left);
	return (long long) left;
}

static const cl_ops rq_ops = {
    .prog = "bench_remote",
    .impl = "qpipe-remote",
    .noun = "queue",
    .puts = "puts",
    .prefill_batch = CL_MAX_BATCH,
    .open = rq_open,
    .drop = rq_drop,
    .close = rq_close,
    .put = rq_put,
    .get = rq_get,
    .release = rq_release,
    .left = rq_left,
};

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: bench_remote --url URL --mode one|batch|rtt|mp [--size "
	    "B]\n"
	    "                    [--count N] [--batch B] [--producers P]\n"
	    "                    [--consumers C] [--seconds S] [--timeout S]\n"
	    "                    [--durable POLICY]\n"
	    "qpipe's remote queue through the qpiped at URL (see the file's "
	    "comment).\n");
}

int
main(int argc, char **argv)
{
	cl_opts o = {NULL, 64, 10000, 1, 1, 1, 1.0, 30.0};
	const char *url = NULL; /* the server, e.g. tcp://127.0.0.1:40123 */
	const bench_opt own[] = {
	    {"url", 's', &url},
	    {"durable", 's', &rq_durable},
	    {NULL, 0, NULL},
	};

	if (cl_parse(argc, argv, "bench_remote", &o, own, usage) != 0) {
		return 2;
	}
	if (url == NULL) {
		usage(stderr);
		return 2;
	}
	if (o.size < 8 || o.size > (UINT64_C(1) << 20) || o.count < 1
	    || o.count > (UINT64_C(1) << 26) || o.batch < 1
	    || o.batch > CL_MAX_BATCH || o.producers > CL_MAX_PROCS / 2
	    || o.consumers > CL_MAX_PROCS / 2
	    || o.producers + o.consumers < 1) {
		fprintf(stderr,
		    "bench_remote: size 8 B-1 MiB, count 1-2^26, batch "
		    "1-%d, producers and consumers 0-%d (not both 0)\n",
		    CL_MAX_BATCH, CL_MAX_PROCS / 2);
		return 2;
	}
	snprintf(rq_addr, sizeof(rq_addr), "%s/bench-%ld-%s", url,
	    (long) getpid(), o.mode);
	return cl_run(&o, &rq_ops);
}
