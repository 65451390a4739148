/*
 * part_peer.c - the producer, worker and benchmark of the tests of one
 * queue over several servers (it_part_netns.sh, bench/run part):
 *
 *   qp_part_peer produce ADDR FIRST COUNT
 *       puts tasks "tFIRST" .. one by one (round robin), each blocking;
 *   qp_part_peer work TASKS RESULTS IDLE_MS [WORK_MS]
 *       worker mode: gets a task, works WORK_MS on it (a sleep; default
 *       0), and completes it with its result "rTASK" in one step
 *       (qp_queue_complete: the result goes to the results partition on
 *       the task's server, so it is stored once across a kill of that
 *       server; a task whose completion fails went back to its queue and
 *       runs again); exits after IDLE_MS without a task and prints
 *       "done N dropped M";
 *   qp_part_peer bench ADDR ITEMS BATCH
 *       puts ITEMS 64-byte items in batches of BATCH (put_many), then gets
 *       them in batches (get_many); prints "put N/s get N/s".
 *
 * Exit 0, or 2 with a line on stderr naming the failed call.
 */
#include "qpipe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int
die(const char *what, int rc)
{
	fprintf(stderr, "qp_part_peer: %s: %s (%s)\n", what, qp_strerror(rc),
	    qp_errmsg());
	return 2;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static int
produce(const char *addr, long first, long count)
{
	qp_queue *q;
	char item[32];
	int rc;

	if ((rc = qp_queue_open(&q, addr, NULL)) != QP_OK) {
		return die("open", rc);
	}
	for (long i = first; i < first + count; i++) {
		snprintf(item, sizeof(item), "t%ld", i);
		if ((rc = qp_queue_put(q, item, strlen(item), QP_FOREVER))
		    != QP_OK) {
			qp_queue_free(q);
			return die(item, rc);
		}
	}
	qp_queue_free(q);
	return 0;
}

static int
work(const char *tasks, const char *results, long idle_ms, long work_ms)
{
	qp_queue_opts o = {.flags = QP_OPEN_LEASE, .lease_ms = 20000};
	qp_queue *tq, *rq;
	long done = 0, dropped = 0;
	int rc;

	if ((rc = qp_queue_open(&tq, tasks, &o)) != QP_OK) {
		return die("open tasks", rc);
	}
	if ((rc = qp_queue_open(&rq, results, NULL)) != QP_OK) {
		return die("open results", rc);
	}
	for (;;) {
		void *buf;
		size_t len;
		char res[64];
		rc = qp_queue_get(tq, &buf, &len, idle_ms);
		if (rc == QP_EEMPTY) {
			break;
		}
		if (rc != QP_OK) {
			fprintf(stderr, "qp_part_peer: get: %s (%s); again\n",
			    qp_strerror(rc), qp_errmsg());
			continue;
		}
		snprintf(res, sizeof(res), "r%.*s", (int) len, (char *) buf);
		qp_free(buf);
		if (work_ms > 0) {
			struct timespec ts
			    = {work_ms / 1000, (work_ms % 1000) * 1000000L};
			nanosleep(&ts, NULL);
		}
		rc = qp_queue_complete(tq, rq, res, strlen(res), QP_FOREVER);
		if (rc == QP_ENOTSUP) {
			return die("complete", rc);
		}
		if (rc != QP_OK) {
			/* The task went back (or its server is away): it
			 * runs again, and one result counts. */
			fprintf(stderr, "qp_part_peer: complete: %s (%s)\n",
			    qp_strerror(rc), qp_errmsg());
			dropped++;
			continue;
		}
		done++;
	}
	printf("done %ld dropped %ld\n", done, dropped);
	qp_queue_free(tq);
	qp_queue_free(rq);
	return 0;
}

static int
bench(const char *addr, long items, long batch)
{
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	qp_queue *q;
	char item[64];
	const void **bufs = calloc((size_t) batch, sizeof(*bufs));
	size_t *lens = calloc((size_t) batch, sizeof(*lens));
	void **got = calloc((size_t) batch, sizeof(*got));
	int rc;

	if (bufs == NULL || lens == NULL || got == NULL) {
		return die("calloc", QP_ENOMEM);
	}
	memset(item, 'x', sizeof(item));
	for (long i = 0; i < batch; i++) {
		bufs[i] = item;
		lens[i] = sizeof(item);
	}
	if ((rc = qp_queue_open(&q, addr, &o)) != QP_OK) {
		return die("open", rc);
	}
	double t0 = now_s();
	for (long n = 0; n < items; n += batch) {
		if ((rc = qp_queue_put_many(
		         q, bufs, lens, (size_t) batch, QP_FOREVER))
		    != QP_OK) {
			return die("put_many", rc);
		}
	}
	double t1 = now_s();
	long left = items;
	while (left > 0) {
		size_t np = 0;
		rc = qp_queue_get_many(
		    q, got, lens, (size_t) batch, &np, 5000);
		if (rc != QP_OK) {
			return die("get_many", rc);
		}
		for (size_t i = 0; i < np; i++) {
			qp_free(got[i]);
		}
		left -= (long) np;
	}
	double t2 = now_s();
	printf("put %.0f/s get %.0f/s seconds %.6f\n",
	    (double) items / (t1 - t0), (double) items / (t2 - t1), t2 - t0);
	qp_queue_free(q);
	free(bufs);
	free(lens);
	free(got);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "produce") == 0) {
		return produce(argv[2], atol(argv[3]), atol(argv[4]));
	}
	if ((argc == 5 || argc == 6) && strcmp(argv[1], "work") == 0) {
		return work(argv[2], argv[3], atol(argv[4]),
		    argc == 6 ? atol(argv[5]) : 0);
	}
	if (argc == 5 && strcmp(argv[1], "bench") == 0) {
		return bench(argv[2], atol(argv[3]), atol(argv[4]));
	}
	fprintf(stderr,
	    "usage: qp_part_peer produce ADDR FIRST COUNT | work TASKS "
	    "RESULTS IDLE_MS [WORK_MS] | bench ADDR ITEMS BATCH\n");
	return 1;
}
