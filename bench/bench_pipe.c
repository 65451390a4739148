/*
 * bench_pipe.c - pipe throughput and round-trip latency between two
 * processes. Two modes:
 *
 *   oneway    the parent sends N messages of S bytes, the fork()ed child
 *             receives them; timed from the first send to the last receive.
 *   pingpong  the parent sends S bytes, the child echoes them back; each
 *             round trip is timed on its own, after a short warm-up, until
 *             N round trips or the time limit; prints p50, p99 and mean.
 *
 * Three carriers behind one driver:
 *
 *   qpipe      libqpipe's shared-memory pipe (qp_pipe before fork(), simplex
 *              for oneway, duplex for pingpong); receives go into a caller
 *              buffer (qp_conn_recv_bytes_into).
 *   socketpair the kernel's path: an AF_UNIX stream socketpair with a 4-byte
 *              length before each message (as Python's Connection frames
 *              them), written with one writev, read through a 256 KiB
 *              buffer.
 *   qpipe-tcp  qp_listen on tcp://127.0.0.1:0 in the child, qp_dial from
 *              the parent (both after fork(), so nng starts in each).
 *
 * Every message carries its sequence number at its start, middle and end
 * (bench_stamp), checked by the receiver (and, for pingpong, in the echo).
 * Prints one JSON line. Locking: none; the two processes share only the result
 * block (atomics).
 */
#include "bench.h"

#include <inttypes.h>
#include <qpipe.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define RBUF_SIZE (256 * 1024)
#define WARMUP    200

typedef struct bp_opts {
	const char *impl;
	const char *mode;
	uint64_t size;
	uint64_t count;
	double seconds; /* pingpong: stop after this long */
	double timeout; /* each process's time limit */
} bp_opts;

/* One end of a connection, whichever carrier. */
typedef struct bp_end {
	qp_conn *c;
	int fd;
	uint8_t *rbuf;
	size_t rpos, rlen;
} bp_end;

typedef struct bp_ctl {
	_Atomic uint64_t t_last_recv;
	_Atomic uint64_t received;
	_Atomic uint32_t failed;
	char msg[400];
} bp_ctl;

static char bp_err[320];

static void bp_seterr(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void
bp_seterr(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(bp_err, sizeof(bp_err), fmt, ap);
	va_end(ap);
}

static bool bp_use_fd; /* socketpair: the fd carries the bytes */

/* ---- socketpair: 4-byte length, then the bytes ---- */

static int
sp_send(bp_end *e, const void *buf, size_t len)
{
	uint32_t hdr = (uint32_t) len;
	struct iovec iov[2] = {
	    {&hdr, 4},
	    {(void *) buf, len},
	};
	struct iovec *v = iov;
	int nv = 2;

	while (nv > 0) {
		ssize_t n = writev(e->fd, v, nv);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			bp_seterr("writev: %s", strerror(errno));
			return -1;
		}
		while (nv > 0 && (size_t) n >= v->iov_len) {
			n -= (ssize_t) v->iov_len;
			v++;
			nv--;
		}
		if (nv > 0) {
			v->iov_base = (uint8_t *) v->iov_base + n;
			v->iov_len -= (size_t) n;
		}
	}
	return 0;
}

static int
sp_read(int fd, void *buf, size_t len, size_t *got)
{
	ssize_t n;

	do {
		n = read(fd, buf, len);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		bp_seterr("read: %s", strerror(errno));
		return -1;
	}
	if (n == 0) {
		bp_seterr("read: end of file");
		return -1;
	}
	*got = (size_t) n;
	return 0;
}

static int
sp_recv(bp_end *e, void *buf, size_t cap, size_t *lenp)
{
	uint32_t len;
	size_t take, got;

	while (e->rlen - e->rpos < 4) {
		memmove(e->rbuf, e->rbuf + e->rpos, e->rlen - e->rpos);
		e->rlen -= e->rpos;
		e->rpos = 0;
		if (sp_read(
		        e->fd, e->rbuf + e->rlen, RBUF_SIZE - e->rlen, &got)
		    != 0) {
			return -1;
		}
		e->rlen += got;
	}
	memcpy(&len, e->rbuf + e->rpos, 4);
	e->rpos += 4;
	if (len > cap) {
		bp_seterr(
		    "message of %" PRIu32 " bytes, buffer %zu", len, cap);
		return -1;
	}
	take = e->rlen - e->rpos < len ? e->rlen - e->rpos : len;
	memcpy(buf, e->rbuf + e->rpos, take);
	e->rpos += take;
	while (take < len) {
		if (sp_read(e->fd, (uint8_t *) buf + take, len - take, &got)
		    != 0) {
			return -1;
		}
		take += got;
	}
	*lenp = len;
	return 0;
}

/* ---- qpipe connections ---- */

static int
qc_send(bp_end *e, const void *buf, size_t len)
{
	int rc = qp_conn_send_bytes(e->c, buf, 0, len);

	if (rc != QP_OK) {
		bp_seterr("qp_conn_send_bytes: %s: %s", qp_strerror(rc),
		    qp_errmsg());
		return -1;
	}
	return 0;
}

static int
qc_recv(bp_end *e, void *buf, size_t cap, size_t *lenp)
{
	int rc = qp_conn_recv_bytes_into(e->c, buf, cap, 0, lenp);

	if (rc != QP_OK) {
		bp_seterr("qp_conn_recv_bytes_into: %s: %s", qp_strerror(rc),
		    qp_errmsg());
		return -1;
	}
	return 0;
}

static int
end_send(bp_end *e, const void *buf, size_t len)
{
	return bp_use_fd ? sp_send(e, buf, len) : qc_send(e, buf, len);
}

static int
end_recv(bp_end *e, void *buf, size_t cap, size_t *lenp)
{
	return bp_use_fd ? sp_recv(e, buf, cap, lenp)
	                 : qc_recv(e, buf, cap, lenp);
}

/* ---- the two roles ---- */

static void
report_failure(bp_ctl *ctl, const char *who)
{
	uint32_t zero = 0;

	if (atomic_compare_exchange_strong(&ctl->failed, &zero, 1)) {
		snprintf(ctl->msg, sizeof(ctl->msg), "%s: %s", who, bp_err);
	}
}

/* The child: receives (oneway) or echoes (pingpong). */
static int
run_child(bp_end *e, bp_ctl *ctl, const bp_opts *o, bool echo)
{
	uint8_t *buf = malloc(o->size);
	size_t len;
	uint64_t n = 0, stamp;

	if (buf == NULL) {
		bp_seterr("out of memory");
		report_failure(ctl, "receiver");
		return 1;
	}
	for (;;) {
		if (!echo && n == o->count) {
			break;
		}
		if (end_recv(e, buf, o->size, &len) != 0) {
			report_failure(ctl, "receiver");
			return 1;
		}
		if (echo && len == 0) {
			break;
		}
		if (len != o->size || bench_stamp_check(buf, len, &stamp) != 0
		    || (!echo && stamp != n)) {
			bp_seterr("message %" PRIu64 " (%zu bytes) out of "
			          "order or damaged",
			    n, len);
			report_failure(ctl, "receiver");
			return 1;
		}
		if (echo && end_send(e, buf, len) != 0) {
			report_failure(ctl, "echo");
			return 1;
		}
		n++;
	}
	atomic_store(&ctl->t_last_recv, bench_now_ns());
	atomic_store(&ctl->received, n);
	free(buf);
	return 0;
}

static int
run_oneway(bp_end *e, const bp_opts *o, uint64_t *t0)
{
	uint8_t *buf = calloc(1, o->size);

	if (buf == NULL) {
		bp_seterr("out of memory");
		return -1;
	}
	*t0 = bench_now_ns();
	for (uint64_t i = 0; i < o->count; i++) {
		bench_stamp(buf, o->size, i);
		if (end_send(e, buf, o->size) != 0) {
			free(buf);
			return -1;
		}
	}
	free(buf);
	return 0;
}

/* Round trips into rtt[] (ns) after the warm-up, which ends at *t0;
 * returns how many, or -1. */
static int64_t
run_pingpong(bp_end *e, const bp_opts *o, uint64_t *rtt, uint64_t *t0)
{
	uint8_t *buf = calloc(1, o->size), *back = malloc(o->size);
	uint64_t deadline = 0, n = 0, stamp;
	size_t len;

	if (buf == NULL || back == NULL) {
		bp_seterr("out of memory");
		goto fail;
	}
	for (uint64_t i = 0; i < WARMUP + o->count; i++) {
		uint64_t t_send, t1;

		if (i == WARMUP) {
			*t0 = bench_now_ns();
			deadline = *t0 + (uint64_t) (o->seconds * 1e9);
		}
		bench_stamp(buf, o->size, i);
		t_send = bench_now_ns();
		if (end_send(e, buf, o->size) != 0
		    || end_recv(e, back, o->size, &len) != 0) {
			goto fail;
		}
		t1 = bench_now_ns();
		if (len != o->size || bench_stamp_check(back, len, &stamp) != 0
		    || stamp != i) {
			bp_seterr("echo %" PRIu64 " damaged", i);
			goto fail;
		}
		if (i >= WARMUP) {
			rtt[n++] = t1 - t_send;
			if (t1 >= deadline) {
				break;
			}
		}
	}
	if (end_send(e, buf, 0) != 0) {
		goto fail;
	}
	free(buf);
	free(back);
	return (int64_t) n;
fail:
	free(buf);
	free(back);
	return -1;
}

/* ---- set-up per carrier ---- */

/* In the child of qpipe-tcp: listens, tells the parent the URL through
 * fd, accepts one connection. */
static int
tcp_child_accept(bp_end *e, int fd, const bp_opts *o)
{
	qp_listener *l;
	const char *url;
	int rc = qp_listen(&l, "tcp://127.0.0.1:0");

	if (rc != QP_OK) {
		bp_seterr("qp_listen: %s: %s", qp_strerror(rc), qp_errmsg());
		close(fd);
		return -1;
	}
	url = qp_listener_url(l);
	if (write(fd, url, strlen(url)) != (ssize_t) strlen(url)) {
		bp_seterr("write: %s", strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	rc = qp_listener_accept(l, &e->c, (qp_duration) (o->timeout * 1000));
	if (rc != QP_OK) {
		bp_seterr("qp_listener_accept: %s: %s", qp_strerror(rc),
		    qp_errmsg());
		return -1;
	}
	qp_listener_free(l);
	return 0;
}

static int
tcp_parent_dial(bp_end *e, int fd)
{
	char url[512];
	size_t got = 0;
	ssize_t n;
	int rc;

	while (got < sizeof(url) - 1
	    && (n = read(fd, url + got, sizeof(url) - 1 - got)) != 0) {
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			bp_seterr("read: %s", strerror(errno));
			return -1;
		}
		got += (size_t) n;
	}
	close(fd);
	url[got] = '\0';
	if (got == 0) {
		bp_seterr("the listener did not start");
		return -1;
	}
	rc = qp_dial(&e->c, url, 5000);
	if (rc != QP_OK) {
		bp_seterr(
		    "qp_dial %s: %s: %s", url, qp_strerror(rc), qp_errmsg());
		return -1;
	}
	return 0;
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: bench_pipe --impl qpipe|socketpair|qpipe-tcp --mode "
	    "oneway|pingpong\n"
	    "                  [--size BYTES] [--count N] [--seconds SEC] "
	    "[--timeout SEC]\n"
	    "oneway: N messages one way, messages/s and bytes/s.\n"
	    "pingpong: up to N echoed round trips (at most SEC seconds), "
	    "p50/p99.\n");
}

static int
parse_args(int argc, char **argv, bp_opts *o)
{
	const bench_opt opts[] = {
	    {"impl", 's', &o->impl},
	    {"mode", 's', &o->mode},
	    {"size", 'n', &o->size},
	    {"count", 'n', &o->count},
	    {"seconds", 'S', &o->seconds},
	    {"timeout", 'S', &o->timeout},
	    {NULL, 0, NULL},
	};

	if (bench_parse_opts(argc, argv, "bench_pipe", opts, usage) != 0) {
		return 1;
	}
	if (o->impl == NULL || o->mode == NULL
	    || (strcmp(o->mode, "oneway") != 0
	        && strcmp(o->mode, "pingpong") != 0)) {
		usage(stderr);
		return 1;
	}
	if (o->size < 8 || o->size > (UINT64_C(16) << 20) || o->count < 1
	    || o->count > (UINT64_C(1) << 32)) {
		fprintf(stderr,
		    "bench_pipe: size must be 8 B-16 MiB, count "
		    "1-2^32\n");
		return 1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	bp_opts o = {NULL, NULL, 64, 100000, 1.0, 30.0};
	bool pingpong, tcp;
	bp_end parent_end = {NULL, -1, NULL, 0, 0};
	bp_end child_end = {NULL, -1, NULL, 0, 0};
	int urlfd[2] = {-1, -1};
	uint64_t *rtt = NULL, t0 = 0, t_end;
	int64_t n = 0;
	char msg[400];
	bp_ctl *ctl;
	pid_t pid;
	int rc = 0, bad;

	if (parse_args(argc, argv, &o) != 0) {
		return 2;
	}
	pingpong = strcmp(o.mode, "pingpong") == 0;
	tcp = strcmp(o.impl, "qpipe-tcp") == 0;
	if (strcmp(o.impl, "socketpair") == 0) {
		int sv[2];

		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
			return bench_fail(
			    o.impl, "socketpair: %s", strerror(errno));
		}
		bp_use_fd = true;
		parent_end.fd = sv[0];
		child_end.fd = sv[1];
		parent_end.rbuf = malloc(RBUF_SIZE);
		child_end.rbuf = malloc(RBUF_SIZE);
		if (parent_end.rbuf == NULL || child_end.rbuf == NULL) {
			return bench_fail(o.impl, "out of memory");
		}
	} else if (strcmp(o.impl, "qpipe") == 0) {
		/* Simplex: the first end receives, the second sends. */
		rc = pingpong ? qp_pipe(&parent_end.c, &child_end.c, true)
		              : qp_pipe(&child_end.c, &parent_end.c, false);
		if (rc != QP_OK) {
			return bench_fail(o.impl, "qp_pipe: %s: %s",
			    qp_strerror(rc), qp_errmsg());
		}
	} else if (tcp) {
		if (pipe(urlfd) != 0) {
			return bench_fail(o.impl, "pipe: %s", strerror(errno));
		}
	} else {
		fprintf(stderr, "bench_pipe: unknown --impl '%s'\n", o.impl);
		return 2;
	}
	ctl = bench_shared_alloc(sizeof(*ctl));
	if (ctl == NULL) {
		return bench_fail(o.impl, "mmap: %s", strerror(errno));
	}
	if (pingpong) {
		rtt = malloc(o.count * sizeof(*rtt));
		if (rtt == NULL) {
			return bench_fail(o.impl, "out of memory");
		}
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		return bench_fail(o.impl, "fork: %s", strerror(errno));
	}
	if (pid == 0) {
		alarm((unsigned) o.timeout + 1);
		bench_pin(0);
		if (tcp) {
			close(urlfd[0]);
			if (tcp_child_accept(&child_end, urlfd[1], &o) != 0) {
				report_failure(ctl, "listener");
				_exit(1);
			}
		} else if (bp_use_fd) {
			close(parent_end.fd);
		}
		rc = run_child(&child_end, ctl, &o, pingpong);
		if (child_end.c != NULL) {
			qp_conn_free(child_end.c);
		}
		_exit(rc);
	}
	alarm((unsigned) o.timeout + 3);
	bench_pin(1);
	if (tcp) {
		close(urlfd[1]);
		rc = tcp_parent_dial(&parent_end, urlfd[0]);
	} else if (bp_use_fd) {
		close(child_end.fd);
	}
	if (rc == 0) {
		if (pingpong) {
			n = run_pingpong(&parent_end, &o, rtt, &t0);
			rc = n < 0 ? -1 : 0;
		} else {
			rc = run_oneway(&parent_end, &o, &t0);
		}
	}
	t_end = bench_now_ns();
	if (rc != 0) {
		report_failure(ctl, pingpong ? "pinger" : "sender");
		kill(pid, SIGKILL);
	}
	bad = bench_reap(&pid, 1, msg, sizeof(msg));
	if (parent_end.c != NULL) {
		qp_conn_free(parent_end.c);
	}
	if (atomic_load(&ctl->failed)) {
		return bench_fail(o.impl, "%s", ctl->msg);
	}
	if (bad) {
		return bench_fail(o.impl, "%s", msg);
	}
	if (pingpong) {
		if (n == 0) {
			return bench_fail(o.impl, "no round trip measured");
		}
		bench_print_pingpong(o.impl, o.size, rtt, (uint64_t) n,
		    (double) (t_end - t0) / 1e9);
		return 0;
	}
	{
		uint64_t got = atomic_load(&ctl->received);
		double secs
		    = (double) (atomic_load(&ctl->t_last_recv) - t0) / 1e9;

		if (got != o.count) {
			return bench_fail(o.impl,
			    "%" PRIu64 " messages arrived of %" PRIu64, got,
			    o.count);
		}
		printf("{\"impl\": \"%s\", \"mode\": \"oneway\", \"size\": "
		       "%" PRIu64 ", \"messages\": %" PRIu64
		       ", \"seconds\": %.6f, \"msgs_per_s\": %.1f, "
		       "\"bytes_per_s\": %.1f}\n",
		    o.impl, o.size, got, secs, (double) got / secs,
		    (double) (got * o.size) / secs);
	}
	return 0;
}
