/*
 * qps_tool.c - a small C client of remote queues for the it_server_*
 * scripts (the qpipe command is another part's): each run is one process
 * calling libqpipe, the way a user's program would.
 *
 *   qps_tool put ADDR DATA [TIMEOUT_MS]    put DATA's bytes (create ADDR)
 *   qps_tool get ADDR [TIMEOUT_MS]         write one item's bytes to stdout
 *   qps_tool qsize ADDR                    print the number of items
 *   qps_tool ls SERVER                     print "name items" per queue
 *   qps_tool get2 ADDR1 ADDR2 TIMEOUT_MS   open both (create), then get
 *                                          from ADDR1: two handles, one
 *                                          process
 *   qps_tool putmany ADDR N                put_many batches of 256 small
 *                                          items until N are put or one
 *                                          fails
 *   qps_tool putloop ADDR                  put small items into a durable
 *                                          queue (fsync always) until one
 *                                          fails; print how many were
 *                                          acknowledged
 *   qps_tool lease ADDR                    get one item under a lease
 *                                          (QP_OPEN_LEASE), print it and
 *                                          stop (SIGSTOP) holding it
 *   qps_tool hold NAME                     a local process that takes both
 *                                          locks of shm://NAME, prints
 *                                          "held", stops itself (SIGSTOP)
 *                                          and, once continued, unlocks
 *
 * Exit status: 0, or the qp_err code of the failure (its message on
 * stderr).
 */
#include "qpipe.h"
#include "shmq.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
fail(const char *what, int rv)
{
	fprintf(stderr, "qps_tool: %s: %s: %s\n", what, qp_strerror(rv),
	    qp_errmsg());
	return rv;
}

/* Two remote handles in one process (each its own connection), blocked
 * in a get on the first: what a worker holding a tasks and a results
 * queue looks like to the server. */
static int
get_two(const char *a1, const char *a2, qp_duration t)
{
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	qp_queue *q1 = NULL, *q2 = NULL;
	void *buf;
	size_t len;
	int rv;

	if ((rv = qp_queue_open(&q1, a1, &o)) != QP_OK
	    || (rv = qp_queue_open(&q2, a2, &o)) != QP_OK) {
		qp_queue_free(q1);
		return fail("open", rv);
	}
	fprintf(stderr, "qps_tool: both open\n");
	if ((rv = qp_queue_get(q1, &buf, &len, t)) == QP_OK) {
		fwrite(buf, 1, len, stdout);
		qp_free(buf);
	} else {
		rv = fail("get", rv);
	}
	qp_queue_free(q2);
	qp_queue_free(q1);
	return rv;
}

/* put_many in batches of 256 items of 64 bytes until n are put. */
static int
put_many(const char *addr, unsigned long long n)
{
	enum { BATCH = 256 };
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	static char item[64];
	const void *bufs[BATCH];
	size_t lens[BATCH];
	qp_queue *q;
	int rv;

	memset(item, 'x', sizeof(item));
	for (size_t i = 0; i < BATCH; i++) {
		bufs[i] = item;
		lens[i] = sizeof(item);
	}
	if ((rv = qp_queue_open(&q, addr, &o)) != QP_OK) {
		return fail("open", rv);
	}
	fprintf(stderr, "qps_tool: open\n");
	for (unsigned long long done = 0; done < n; done += BATCH) {
		if ((rv = qp_queue_put_many(q, bufs, lens, BATCH, 10000))
		    != QP_OK) {
			qp_queue_free(q);
			return fail("put_many", rv);
		}
	}
	qp_queue_free(q);
	return 0;
}

/* Puts into a durable queue (fsync always) until a put fails; prints the
 * number acknowledged. */
static int
put_loop(const char *addr)
{
	qp_queue_opts o
	    = {.flags = QP_OPEN_CREATE | QP_OPEN_DURABLE, .fsync = "always"};
	unsigned long long n = 0;
	char item[64];
	qp_queue *q;
	int rv;

	memset(item, 'd', sizeof(item));
	if ((rv = qp_queue_open(&q, addr, &o)) != QP_OK) {
		return fail("open", rv);
	}
	fprintf(stderr, "qps_tool: open\n");
	while ((rv = qp_queue_put(q, item, sizeof(item), 10000)) == QP_OK) {
		n++;
	}
	fprintf(stderr, "qps_tool: put %llu: %s: %s\n", n, qp_strerror(rv),
	    qp_errmsg());
	printf("%llu\n", n);
	qp_queue_free(q);
	return 0;
}

/* A worker that took an item and stops holding its lease: killed, its
 * connection's lease must go back. */
static int
lease_one(const char *addr)
{
	qp_queue_opts o = {.flags = QP_OPEN_LEASE};
	qp_queue *q = NULL;
	void *buf;
	size_t len;
	int rv;

	if ((rv = qp_queue_open(&q, addr, &o)) != QP_OK) {
		return fail("open", rv);
	}
	if ((rv = qp_queue_get(q, &buf, &len, 2000)) != QP_OK) {
		qp_queue_free(q);
		return fail("get", rv);
	}
	fwrite(buf, 1, len, stdout);
	fflush(stdout);
	qp_free(buf);
	raise(SIGSTOP);
	qp_queue_free(q);
	return 0;
}

/* A local process stopped while it holds the queue's locks (Ctrl-Z in a
 * terminal at the wrong instant): what the server must not wait for. */
static int
hold(const char *name)
{
	qpi_shmq *q;
	pthread_mutex_t *pl, *gl;
	int rv;

	if ((rv = qpi_shmq_open(&q, name, 0, NULL)) != QP_OK) {
		return fail("open", rv);
	}
	pl = qpi_shmq_test_lock(q, true);
	gl = qpi_shmq_test_lock(q, false);
	pthread_mutex_lock(pl);
	pthread_mutex_lock(gl);
	printf("held\n");
	fflush(stdout);
	raise(SIGSTOP);
	pthread_mutex_unlock(gl);
	pthread_mutex_unlock(pl);
	qpi_shmq_free(q);
	return 0;
}

int
main(int argc, char **argv)
{
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	qp_queue *q = NULL;
	int rv;

	if (argc < 3) {
		fprintf(stderr,
		    "usage: qps_tool put|get|qsize ADDR [...] | ls SERVER | "
		    "get2 ADDR1 ADDR2 TIMEOUT_MS | putmany ADDR N | putloop "
		    "ADDR | hold NAME | lease ADDR\n");
		return 1;
	}
	const char *cmd = argv[1], *addr = argv[2];
	qp_duration t = QP_FOREVER;

	if (strcmp(cmd, "ls") == 0) {
		qp_queue_info *l;
		size_t n;
		if ((rv = qp_server_list(addr, &l, &n)) != QP_OK) {
			return fail("ls", rv);
		}
		for (size_t i = 0; i < n; i++) {
			printf("%s %llu\n", l[i].name,
			    (unsigned long long) l[i].stat.items);
		}
		qp_free(l);
		return 0;
	}
	if (strcmp(cmd, "get2") == 0 && argc >= 5) {
		return get_two(addr, argv[3], atoll(argv[4]));
	}
	if (strcmp(cmd, "putmany") == 0 && argc >= 4) {
		return put_many(addr, strtoull(argv[3], NULL, 10));
	}
	if (strcmp(cmd, "putloop") == 0) {
		return put_loop(addr);
	}
	if (strcmp(cmd, "hold") == 0) {
		return hold(addr);
	}
	if (strcmp(cmd, "lease") == 0) {
		return lease_one(addr);
	}
	if ((rv = qp_queue_open(&q, addr, strcmp(cmd, "put") == 0 ? &o : NULL))
	    != QP_OK) {
		return fail("open", rv);
	}
	if (strcmp(cmd, "put") == 0 && argc >= 4) {
		if (argc >= 5) {
			t = atoll(argv[4]);
		}
		rv = qp_queue_put(q, argv[3], strlen(argv[3]), t);
		if (rv != QP_OK) {
			rv = fail("put", rv);
		}
	} else if (strcmp(cmd, "get") == 0) {
		void *buf;
		size_t len;
		if (argc >= 4) {
			t = atoll(argv[3]);
		}
		if ((rv = qp_queue_get(q, &buf, &len, t)) == QP_OK) {
			fwrite(buf, 1, len, stdout);
			qp_free(buf);
		} else {
			rv = fail("get", rv);
		}
	} else if (strcmp(cmd, "qsize") == 0) {
		size_t n;
		if ((rv = qp_queue_qsize(q, &n)) == QP_OK) {
			printf("%zu\n", n);
		} else {
			rv = fail("qsize", rv);
		}
	} else {
		fprintf(stderr, "qps_tool: unknown command '%s'\n", cmd);
		rv = 1;
	}
	qp_queue_free(q);
	return rv;
}
