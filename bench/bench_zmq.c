/*
 * bench_zmq.c - ZeroMQ push/pull over loopback TCP: the ceiling for raw
 * throughput without acknowledgements that bench/run remote sets beside
 * qpipe's batched puts. A fork()ed puller binds tcp://127.0.0.1:* and
 * receives; P fork()ed pushers (each its own context and socket) connect
 * and send COUNT messages of SIZE bytes each, one zmq_send per message
 * (libzmq batches them on the wire itself). items/s from the first send to
 * the last receive; every message is stamped with its pusher and sequence
 * number and checked (per-pusher order, none missing). The puller is the
 * serving side for bench_pin (QPIPE_BENCH_CPUS), the pushers the driving
 * side. Built only where libzmq is found. Prints one JSON line. Locking:
 * none (the children share timestamps through atomics in MAP_SHARED
 * memory).
 */
#include "bench.h"

#include <inttypes.h>
#include <stdbool.h>
#include <zmq.h>

#define MAX_PUSHERS 64

typedef struct bz_opts {
	uint64_t size;
	uint64_t count;
	uint64_t pushers;
	double timeout;
} bz_opts;

typedef struct bz_shared {
	_Atomic uint64_t t_first;
	_Atomic uint64_t t_last;
	_Atomic uint64_t received;
	_Atomic uint64_t bad;
} bz_shared;

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: bench_zmq [--size B] [--count N] [--pushers P] "
	    "[--timeout S]\n"
	    "ZeroMQ push/pull over loopback TCP (see the file's comment).\n");
}

static int
parse_args(int argc, char **argv, bz_opts *o)
{
	const bench_opt opts[] = {
	    {"size", 'n', &o->size},
	    {"count", 'n', &o->count},
	    {"pushers", 'n', &o->pushers},
	    {"timeout", 'S', &o->timeout},
	    {NULL, 0, NULL},
	};

	if (bench_parse_opts(argc, argv, "bench_zmq", opts, usage) != 0) {
		return 1;
	}
	if (o->size < 16 || o->size > (UINT64_C(1) << 20) || o->count < 1
	    || o->count > (UINT64_C(1) << 28) || o->pushers < 1
	    || o->pushers > MAX_PUSHERS) {
		fprintf(stderr,
		    "bench_zmq: size 16 B-1 MiB, count 1-2^28, pushers "
		    "1-%d\n",
		    MAX_PUSHERS);
		return 1;
	}
	return 0;
}

/* The puller: binds, writes the endpoint to fd, receives every message. */
static int
run_puller(const bz_opts *o, bz_shared *sh, int fd)
{
	uint64_t next_seq[MAX_PUSHERS] = {0}, total = o->pushers * o->count;
	void *ctx = zmq_ctx_new(), *s = ctx ? zmq_socket(ctx, ZMQ_PULL) : NULL;
	char ep[256];
	size_t eplen = sizeof(ep);
	uint8_t *buf = malloc((size_t) o->size + 1);

	if (s == NULL || buf == NULL || zmq_bind(s, "tcp://127.0.0.1:*") != 0
	    || zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &eplen) != 0) {
		fprintf(stderr, "bench_zmq: puller: %s\n",
		    zmq_strerror(zmq_errno()));
		return 1;
	}
	if (write(fd, ep, strlen(ep) + 1) != (ssize_t) strlen(ep) + 1) {
		return 1;
	}
	close(fd);
	for (uint64_t i = 0; i < total; i++) {
		uint64_t stamp, p, seq;
		int n = zmq_recv(s, buf, (size_t) o->size + 1, 0);

		if (n < 0) {
			if (zmq_errno() == EINTR) {
				i--;
				continue;
			}
			fprintf(stderr, "bench_zmq: recv: %s\n",
			    zmq_strerror(zmq_errno()));
			return 1;
		}
		p = 0;
		if ((uint64_t) n != o->size
		    || bench_stamp_check(buf, (size_t) n, &stamp) != 0
		    || (p = stamp >> 32) >= o->pushers
		    || (seq = stamp & 0xffffffffu) != next_seq[p]) {
			atomic_fetch_add(&sh->bad, 1);
		} else {
			next_seq[p] = seq + 1;
		}
		atomic_fetch_add_explicit(
		    &sh->received, 1, memory_order_relaxed);
	}
	atomic_store(&sh->t_last, bench_now_ns());
	zmq_close(s);
	zmq_ctx_term(ctx);
	free(buf);
	return 0;
}

static int
run_pusher(const bz_opts *o, bz_shared *sh, const char *ep, uint64_t p)
{
	void *ctx = zmq_ctx_new(), *s = ctx ? zmq_socket(ctx, ZMQ_PUSH) : NULL;
	uint8_t *buf = malloc((size_t) o->size);
	int linger = -1;

	if (s == NULL || buf == NULL || zmq_connect(s, ep) != 0) {
		fprintf(stderr, "bench_zmq: pusher: %s\n",
		    zmq_strerror(zmq_errno()));
		return 1;
	}
	zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
	memset(buf, 0, (size_t) o->size);
	bench_atomic_min(&sh->t_first, bench_now_ns());
	for (uint64_t i = 0; i < o->count; i++) {
		bench_stamp(buf, (size_t) o->size, (p << 32) | i);
		while (zmq_send(s, buf, (size_t) o->size, 0) < 0) {
			if (zmq_errno() != EINTR) {
				fprintf(stderr, "bench_zmq: send: %s\n",
				    zmq_strerror(zmq_errno()));
				return 1;
			}
		}
	}
	zmq_close(s); /* linger -1: returns once everything is handed over */
	zmq_ctx_term(ctx);
	free(buf);
	return 0;
}

int
main(int argc, char **argv)
{
	bz_opts o = {64, 1000000, 1, 30.0};
	bz_shared *sh;
	pid_t pids[MAX_PUSHERS + 1];
	char ep[256], msg[400];
	int fd[2], np = 0;
	bench_gate gate;
	size_t have = 0;

	if (parse_args(argc, argv, &o) != 0) {
		return 2;
	}
	sh = bench_shared_alloc(sizeof(*sh));
	if (sh == NULL || pipe(fd) != 0 || bench_gate_init(&gate) != 0) {
		return bench_fail("zmq-pushpull", "out of memory or pipes");
	}
	atomic_store(&sh->t_first, UINT64_MAX);
	fflush(stdout);
	/* No zmq in this process: each child makes its own context. */
	if ((pids[np] = fork()) == 0) {
		alarm((unsigned) o.timeout + 1);
		close(fd[0]);
		/* Its copy of the gate closed: the pushers' wait ends when
		 * the parent opens it, not when the puller exits. */
		bench_gate_open(&gate);
		bench_pin(0);
		_exit(run_puller(&o, sh, fd[1]));
	}
	if (pids[np] < 0) {
		return bench_fail("zmq-pushpull", "fork: %s", strerror(errno));
	}
	np++;
	alarm((unsigned) o.timeout + 3);
	close(fd[1]);
	while (have < sizeof(ep)) {
		ssize_t n = read(fd[0], ep + have, sizeof(ep) - have);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			break;
		}
		have += (size_t) n;
		if (ep[have - 1] == '\0') {
			break;
		}
	}
	close(fd[0]);
	if (have == 0 || ep[have - 1] != '\0') {
		kill(pids[0], SIGKILL);
		bench_reap(pids, np, msg, sizeof(msg));
		return bench_fail("zmq-pushpull", "the puller did not start");
	}
	for (uint64_t i = 0; i < o.pushers; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			kill(pids[0], SIGKILL);
			return bench_fail(
			    "zmq-pushpull", "fork: %s", strerror(errno));
		}
		if (pid == 0) {
			alarm((unsigned) o.timeout + 1);
			bench_pin(1);
			bench_gate_wait(&gate);
			_exit(run_pusher(&o, sh, ep, i));
		}
		pids[np++] = pid;
	}
	bench_gate_open(&gate);
	if (bench_reap(pids, np, msg, sizeof(msg)) != 0) {
		return bench_fail("zmq-pushpull", "%s", msg);
	}
	if (atomic_load(&sh->received) != o.pushers * o.count
	    || atomic_load(&sh->bad) != 0) {
		return bench_fail("zmq-pushpull",
		    "%" PRIu64 " received of %" PRIu64 ", %" PRIu64
		    " damaged or out of order",
		    (uint64_t) atomic_load(&sh->received), o.pushers * o.count,
		    (uint64_t) atomic_load(&sh->bad));
	}
	uint64_t total = o.pushers * o.count;
	double s
	    = (double) (atomic_load(&sh->t_last) - atomic_load(&sh->t_first))
	    / 1e9;
	if (s <= 0) {
		s = 1e-9;
	}
	printf("{\"impl\": \"zmq-pushpull\", \"size\": %" PRIu64
	       ", \"pushers\": %" PRIu64 ", \"items\": %" PRIu64
	       ", \"seconds\": %.6f, \"items_per_s\": %.1f, "
	       "\"puts_per_s\": %.1f}\n",
	    o.size, o.pushers, total, s, (double) total / s,
	    (double) total / s);
	return 0;
}
