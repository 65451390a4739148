/*
 * durable_tool.c - a small C client of durable queues for the
 * it_durable_* scripts and bench/run durable (built into build/bin as
 * qp_durable_tool, never installed).
 *
 *   qp_durable_tool create ADDR [FSYNC]        create ADDR durable
 *   qp_durable_tool produce ADDR LOG N [SECS [PREFIX]]
 *                                              put items 1..N, one by one
 *   qp_durable_tool drain ADDR                 print every item, one a line
 *   qp_durable_tool rate ADDR SECS SIZE        put SIZE-byte items for SECS,
 *                                              print "puts/s"
 *   qp_durable_tool fill ADDR SIZE             put SIZE-byte items until a put
 *                                              fails: prints the count, exits
 *                                              with the failure's code
 *   qp_durable_tool batch ADDR N               put items "b-1".."b-N" with one
 *                                              qp_queue_put_many
 *   qp_durable_tool hold ADDR                  get one item in worker mode,
 *                                              print it, keep the lease
 *                                              until killed
 *
 * produce writes to LOG, per item n, "T n" before the put and "A n" once
 * it returned OK (the put is acknowledged), or "U n" when the connection
 * dropped before an answer (the outcome is unknown): it then reopens the
 * queue (for up to SECS, default 30 s in all) and goes on with n + 1, so
 * no put is ever sent twice by the client. Each line is one write(2), so a
 * killed producer leaves whole lines. Items are "PREFIX-%08u" (PREFIX:
 * "item").
 *
 * Exit status: 0, or the qp_err code of the failure (its message on
 * stderr).
 */
#include "qpipe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int
fail(const char *what, int rv)
{
	fprintf(stderr, "qp_durable_tool: %s: %s: %s\n", what, qp_strerror(rv),
	    qp_errmsg());
	return rv;
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void
log_line(int fd, char tag, unsigned n)
{
	char b[32];
	int len = snprintf(b, sizeof(b), "%c %u\n", tag, n);
	if (write(fd, b, (size_t) len) != len) {
		fprintf(stderr, "qp_durable_tool: log write: %s\n",
		    strerror(errno));
	}
}

/* Opens addr, retrying while the server is away (restarting). */
static int
open_retry(qp_queue **q, const char *addr, double until)
{
	int rv;

	for (;;) {
		rv = qp_queue_open(q, addr, NULL);
		if (rv == QP_OK || now_s() > until
		    || (rv != QP_ECONNREFUSED && rv != QP_ECONNRESET
		        && rv != QP_ETIMEDOUT)) {
			return rv;
		}
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

static int
produce(const char *addr, const char *logpath, unsigned n, double secs,
    const char *prefix)
{
	double until = now_s() + secs;
	qp_queue *q = NULL;
	int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
	int rv;

	if (fd < 0) {
		fprintf(stderr, "qp_durable_tool: %s: %s\n", logpath,
		    strerror(errno));
		return 1;
	}
	/* A put whose connection drops fails at once (no resend). */
	setenv("QPIPE_RECONNECT_MS", "0", 1);
	if ((rv = open_retry(&q, addr, until)) != QP_OK) {
		close(fd);
		return fail("open", rv);
	}
	for (unsigned i = 1; i <= n; i++) {
		char item[96];
		int len
		    = snprintf(item, sizeof(item), "%.80s-%08u", prefix, i);
		log_line(fd, 'T', i);
		rv = qp_queue_put(q, item, (size_t) len, 5000);
		if (rv == QP_OK) {
			log_line(fd, 'A', i);
			continue;
		}
		log_line(fd, 'U', i);
		qp_queue_free(q);
		q = NULL;
		if (now_s() > until) {
			break;
		}
		if ((rv = open_retry(&q, addr, until)) != QP_OK) {
			break;
		}
	}
	qp_queue_free(q);
	close(fd);
	return rv == QP_OK ? 0 : fail("produce", rv);
}

static int
drain(const char *addr)
{
	qp_queue *q;
	int rv = qp_queue_open(&q, addr, NULL);

	if (rv != QP_OK) {
		return fail("open", rv);
	}
	for (;;) {
		void *buf;
		size_t len;
		rv = qp_queue_get(q, &buf, &len, 300);
		if (rv != QP_OK) {
			break;
		}
		fwrite(buf, 1, len, stdout);
		putchar('\n');
		qp_free(buf);
	}
	qp_queue_free(q);
	return rv == QP_EEMPTY ? 0 : fail("drain", rv);
}

static int
rate(const char *addr, double secs, size_t size)
{
	qp_queue *q;
	char *item = calloc(1, size + 1);
	unsigned long n = 0;
	double t0, t;
	int rv;

	if (item == NULL) {
		return 1;
	}
	memset(item, 'x', size);
	if ((rv = qp_queue_open(&q, addr, NULL)) != QP_OK) {
		free(item);
		return fail("open", rv);
	}
	t0 = now_s();
	do {
		for (int k = 0; k < 16; k++) {
			if ((rv = qp_queue_put(q, item, size, QP_FOREVER))
			    != QP_OK) {
				break;
			}
			n++;
		}
		t = now_s();
	} while (rv == QP_OK && t - t0 < secs);
	qp_queue_free(q);
	free(item);
	if (rv != QP_OK) {
		return fail("put", rv);
	}
	printf("%.0f\n", (double) n / (t - t0));
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr,
		    "usage: qp_durable_tool create ADDR [FSYNC] | produce "
		    "ADDR "
		    "LOG N [SECS] | drain ADDR | rate ADDR SECS SIZE\n");
		return 1;
	}
	const char *cmd = argv[1], *addr = argv[2];
	if (strcmp(cmd, "create") == 0) {
		qp_queue_opts o = {.flags = QP_OPEN_CREATE | QP_OPEN_DURABLE,
		    .fsync = argc > 3 ? argv[3] : NULL};
		qp_queue *q;
		int rv = qp_queue_open(&q, addr, &o);
		if (rv != QP_OK) {
			return fail("create", rv);
		}
		qp_queue_free(q);
		return 0;
	}
	if (strcmp(cmd, "produce") == 0 && argc >= 5) {
		return produce(addr, argv[3],
		    (unsigned) strtoul(argv[4], NULL, 10),
		    argc > 5 ? strtod(argv[5], NULL) : 30.0,
		    argc > 6 ? argv[6] : "item");
	}
	if (strcmp(cmd, "fill") == 0 && argc >= 4) {
		size_t size = (size_t) strtoul(argv[3], NULL, 10);
		char *item = calloc(1, size + 1);
		unsigned long n = 0;
		qp_queue *q;
		int rv;
		if (item == NULL) {
			return 1;
		}
		memset(item, 'f', size);
		if ((rv = qp_queue_open(&q, addr, NULL)) != QP_OK) {
			free(item);
			return fail("open", rv);
		}
		while (n < 1000000
		    && (rv = qp_queue_put(q, item, size, QP_NOWAIT))
		        == QP_OK) {
			n++;
		}
		printf("%lu\n", n);
		fflush(stdout);
		fail("fill", rv);
		qp_queue_free(q);
		free(item);
		return rv;
	}
	if (strcmp(cmd, "batch") == 0 && argc >= 4) {
		size_t n = (size_t) strtoul(argv[3], NULL, 10);
		const void **bufs = calloc(n + 1, sizeof(*bufs));
		size_t *lens = calloc(n + 1, sizeof(*lens));
		char *text = calloc(n + 1, 24);
		qp_queue *q;
		int rv;
		if (bufs == NULL || lens == NULL || text == NULL) {
			return 1;
		}
		for (size_t i = 0; i < n; i++) {
			lens[i] = (size_t) snprintf(
			    text + 24 * i, 24, "b-%zu", i + 1);
			bufs[i] = text + 24 * i;
		}
		if ((rv = qp_queue_open(&q, addr, NULL)) == QP_OK) {
			rv = qp_queue_put_many(q, bufs, lens, n, 5000);
			qp_queue_free(q);
		}
		free(bufs);
		free(lens);
		free(text);
		return rv == QP_OK ? 0 : fail("batch", rv);
	}
	if (strcmp(cmd, "hold") == 0) {
		qp_queue_opts o = {.flags = QP_OPEN_LEASE};
		qp_queue *q;
		void *buf;
		size_t len;
		int rv = qp_queue_open(&q, addr, &o);
		if (rv != QP_OK) {
			return fail("open", rv);
		}
		if ((rv = qp_queue_get(q, &buf, &len, 5000)) != QP_OK) {
			return fail("get", rv);
		}
		fwrite(buf, 1, len, stdout);
		putchar('\n');
		fflush(stdout);
		qp_free(buf);
		pause();
		return 0;
	}
	if (strcmp(cmd, "drain") == 0) {
		return drain(addr);
	}
	if (strcmp(cmd, "rate") == 0 && argc >= 5) {
		return rate(addr, strtod(argv[3], NULL),
		    (size_t) strtoul(argv[4], NULL, 10));
	}
	fprintf(stderr, "qp_durable_tool: bad command\n");
	return 1;
}
