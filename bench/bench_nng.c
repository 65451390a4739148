/*
 * bench_nng.c - raw nng round trips over loopback TCP: the floor that
 * qpipe's remote connections and remote queues are measured against. The
 * fork()ed child listens on tcp://127.0.0.1:0 and echoes every message back
 * (the same nng_msg, no copy); the parent dials and times each round trip
 * of S bytes after a warm-up, until N round trips or the time limit.
 *
 *   --proto pair1  a pair1 socket each side (what qpipe's remote pipes use)
 *   --proto req0   req0 in the parent, rep0 in the child (qpiped's queue
 *                  protocol); the parent's request rate is also the rate of
 *                  one client that sends requests one by one.
 *
 * nng starts its threads after fork(), in each process. Prints one JSON
 * line with the fields bench_pipe prints for pingpong. Locking: none.
 */
#include "bench.h"

#include <inttypes.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdbool.h>

#define WARMUP 200

typedef struct bn_opts {
	const char *proto;
	uint64_t size;
	uint64_t count;
	double seconds;
	double timeout;
} bn_opts;

static int
open_socket(nng_socket *s, const char *proto, bool server)
{
	if (strcmp(proto, "pair1") == 0) {
		return nng_pair1_open(s);
	}
	return server ? nng_rep0_open(s) : nng_req0_open(s);
}

/* The child: listens, reports the port on fd, echoes until an empty
 * message (or the time limit). */
static int
run_echo(const bn_opts *o, int fd)
{
	nng_socket s;
	nng_listener l;
	nng_msg *m;
	int port = 0, rv;
	char line[32];

	if ((rv = open_socket(&s, o->proto, true)) != 0
	    || (rv = nng_socket_set_size(
	            s, NNG_OPT_RECVMAXSZ, (size_t) o->size + 1024))
	        != 0
	    || (rv = nng_listen(s, "tcp://127.0.0.1:0", &l, 0)) != 0
	    || (rv = nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port))
	        != 0) {
		fprintf(stderr, "bench_nng: listen: %s\n", nng_strerror(rv));
		close(fd);
		return 1;
	}
	snprintf(line, sizeof(line), "%d", port);
	if (write(fd, line, strlen(line)) != (ssize_t) strlen(line)) {
		return 1;
	}
	close(fd);
	for (;;) {
		if ((rv = nng_recvmsg(s, &m, 0)) != 0) {
			fprintf(stderr, "bench_nng: echo recv: %s\n",
			    nng_strerror(rv));
			return 1;
		}
		if (nng_msg_len(m) == 0) {
			/* A req0 peer waits for its reply to the stop. */
			if (strcmp(o->proto, "req0") == 0) {
				nng_sendmsg(s, m, 0);
			} else {
				nng_msg_free(m);
			}
			break;
		}
		if ((rv = nng_sendmsg(s, m, 0)) != 0) {
			nng_msg_free(m);
			fprintf(stderr, "bench_nng: echo send: %s\n",
			    nng_strerror(rv));
			return 1;
		}
	}
	nng_close(s);
	return 0;
}

static int
read_port(int fd, int *port)
{
	char line[32];
	size_t got = 0;
	ssize_t n;

	while (got < sizeof(line) - 1
	    && (n = read(fd, line + got, sizeof(line) - 1 - got)) != 0) {
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			return -1;
		}
		got += (size_t) n;
	}
	close(fd);
	line[got] = '\0';
	*port = atoi(line);
	return *port > 0 ? 0 : -1;
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: bench_nng --proto pair1|req0 [--size BYTES] [--count N] "
	    "[--seconds SEC]\n"
	    "                 [--timeout SEC]\n"
	    "Round trips of BYTES over tcp://127.0.0.1 (raw nng): p50, p99, "
	    "mean.\n");
}

static int
parse_args(int argc, char **argv, bn_opts *o)
{
	const bench_opt opts[] = {
	    {"proto", 's', &o->proto},
	    {"size", 'n', &o->size},
	    {"count", 'n', &o->count},
	    {"seconds", 'S', &o->seconds},
	    {"timeout", 'S', &o->timeout},
	    {NULL, 0, NULL},
	};

	if (bench_parse_opts(argc, argv, "bench_nng", opts, usage) != 0) {
		return 1;
	}
	if (o->proto == NULL
	    || (strcmp(o->proto, "pair1") != 0
	        && strcmp(o->proto, "req0") != 0)) {
		usage(stderr);
		return 1;
	}
	if (o->size < 8 || o->size > (UINT64_C(16) << 20) || o->count < 1
	    || o->count > (UINT64_C(1) << 32)) {
		fprintf(stderr,
		    "bench_nng: size must be 8 B-16 MiB, count 1-2^32\n");
		return 1;
	}
	return 0;
}

/* The parent: dials and times round trips into rtt[], between *t0 and
 * *t1; returns how many, or -1 with msg set. */
static int64_t
run_pings(const bn_opts *o, int port, uint64_t *rtt, uint64_t *t0,
    uint64_t *t1, char *msg, size_t mlen)
{
	nng_socket s;
	nng_msg *m;
	char url[64];
	uint64_t n = 0, deadline = 0, stamp;
	int rv;

	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	if ((rv = open_socket(&s, o->proto, false)) != 0
	    || (rv = nng_socket_set_size(
	            s, NNG_OPT_RECVMAXSZ, (size_t) o->size + 1024))
	        != 0
	    || (rv = nng_dial(s, url, NULL, 0)) != 0) {
		snprintf(msg, mlen, "dial %s: %s", url, nng_strerror(rv));
		return -1;
	}
	for (uint64_t i = 0; i < WARMUP + o->count; i++) {
		uint64_t ts, te;

		if (i == WARMUP) {
			*t0 = bench_now_ns();
			deadline = *t0 + (uint64_t) (o->seconds * 1e9);
		}
		ts = bench_now_ns();
		if ((rv = nng_msg_alloc(&m, (size_t) o->size)) != 0) {
			snprintf(
			    msg, mlen, "nng_msg_alloc: %s", nng_strerror(rv));
			return -1;
		}
		memset(nng_msg_body(m), 0, (size_t) o->size);
		memcpy(nng_msg_body(m), &i, 8);
		if ((rv = nng_sendmsg(s, m, 0)) != 0) {
			nng_msg_free(m);
			snprintf(msg, mlen, "send: %s", nng_strerror(rv));
			return -1;
		}
		if ((rv = nng_recvmsg(s, &m, 0)) != 0) {
			snprintf(msg, mlen, "recv: %s", nng_strerror(rv));
			return -1;
		}
		te = bench_now_ns();
		memcpy(&stamp, nng_msg_body(m), 8);
		if (nng_msg_len(m) != o->size || stamp != i) {
			nng_msg_free(m);
			snprintf(msg, mlen, "echo %" PRIu64 " damaged", i);
			return -1;
		}
		nng_msg_free(m);
		if (i >= WARMUP) {
			rtt[n++] = te - ts;
			if (te >= deadline) {
				break;
			}
		}
	}
	*t1 = bench_now_ns();
	/* The empty stop message (req0 waits for its reply). */
	if ((rv = nng_msg_alloc(&m, 0)) != 0) {
		snprintf(msg, mlen, "nng_msg_alloc: %s", nng_strerror(rv));
		return -1;
	}
	if ((rv = nng_sendmsg(s, m, 0)) != 0) {
		nng_msg_free(m);
		snprintf(msg, mlen, "send: %s", nng_strerror(rv));
		return -1;
	}
	if (strcmp(o->proto, "req0") == 0 && nng_recvmsg(s, &m, 0) == 0) {
		nng_msg_free(m);
	}
	nng_close(s);
	return (int64_t) n;
}

int
main(int argc, char **argv)
{
	bn_opts o = {NULL, 64, 100000, 1.0, 30.0};
	uint64_t *rtt, t0 = 0, t_end;
	char msg[400];
	int fd[2], port;
	int64_t n;
	pid_t pid;

	if (parse_args(argc, argv, &o) != 0) {
		return 2;
	}
	rtt = malloc(o.count * sizeof(*rtt));
	if (rtt == NULL || pipe(fd) != 0) {
		return bench_fail(o.proto, "out of memory or pipes");
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		return bench_fail(o.proto, "fork: %s", strerror(errno));
	}
	if (pid == 0) {
		alarm((unsigned) o.timeout + 1);
		bench_pin(0);
		close(fd[0]);
		_exit(run_echo(&o, fd[1]));
	}
	alarm((unsigned) o.timeout + 3);
	bench_pin(1);
	close(fd[1]);
	if (read_port(fd[0], &port) != 0) {
		kill(pid, SIGKILL);
		bench_reap(&pid, 1, msg, sizeof(msg));
		return bench_fail(o.proto, "the echo server did not start");
	}
	n = run_pings(&o, port, rtt, &t0, &t_end, msg, sizeof(msg));
	if (n < 0) {
		char ignored[64];

		kill(pid, SIGKILL);
		bench_reap(&pid, 1, ignored, sizeof(ignored));
		return bench_fail(o.proto, "%s", msg);
	}
	if (bench_reap(&pid, 1, msg, sizeof(msg)) != 0) {
		return bench_fail(o.proto, "%s", msg);
	}
	if (n == 0) {
		return bench_fail(o.proto, "no round trip measured");
	}
	snprintf(msg, sizeof(msg), "nng-%s", o.proto);
	bench_print_pingpong(
	    msg, o.size, rtt, (uint64_t) n, (double) (t_end - t0) / 1e9);
	free(rtt);
	return 0;
}
