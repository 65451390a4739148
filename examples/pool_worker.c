/*
 * pool_worker.c - one worker of a pool, written against the library: it
 * takes tasks from one queue, hashes each (SHA-256) and puts the result on
 * another queue. A task is "ID\n" followed by the bytes to hash; a result
 * is "ID HEX NAME" (no newline), HEX the SHA-256 of those bytes, NAME the
 * worker's.
 *
 * The worker opens the tasks in worker mode (QP_OPEN_LEASE): each task
 * stays leased until qp_queue_complete() puts its result in the results
 * queue and confirms it, in one step (exactly one result per task, when
 * both queues are on one server or this host's shared memory), so a
 * worker killed mid-task loses nothing and stores nothing twice: the task goes
 * back to the head of the queue. On a queue served by qpiped (tcp://,
 * ipc://, tls+tcp://) the server gives it back when the worker's
 * connection drops; on shm:// the next worker that gets from the queue
 * sees that the holder is gone and gives it back. Either way, a lease
 * that runs out (30 s by default) gives the task back too.
 *
 * The worker is single-threaded; it holds at most one task at a time.
 * SIGTERM and SIGINT let the task at hand finish, then it exits 0.
 *
 * usage: pool_worker [OPTIONS] TASKS RESULTS   (pool_worker --help)
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/md.h>

#include "qpipe.h"

/* A blocking get waits this long at most, so that a SIGTERM is seen. */
#define PW_SLICE_MS 500

static volatile sig_atomic_t pw_stop;

static void
pw_on_signal(int sig)
{
	(void) sig;
	pw_stop = 1;
}

static void
pw_usage(FILE *f)
{
	fprintf(f,
	    "usage: pool_worker [OPTIONS] TASKS RESULTS\n"
	    "\n"
	    "Takes tasks (\"ID\\n\" then bytes) from TASKS, puts \"ID SHA256 "
	    "NAME\"\n"
	    "for each on RESULTS. TASKS are leased until the result is in: "
	    "a\n"
	    "worker killed mid-task loses nothing.\n"
	    "\n"
	    "  --name NAME     NAME in each result (default HOSTNAME-PID)\n"
	    "  --idle-exit MS  exit 0 once no task came for MS ms (default: "
	    "wait)\n"
	    "  --work-ms MS    sleep MS ms per task, standing for real work\n"
	    "  --stall-at K    on the K-th task, print \"holding task ID\" "
	    "and\n"
	    "                  hang holding it (to show a kill -9 mid-task)\n"
	    "  --trace         print each task taken to stderr\n"
	    "\n"
	    "A token for qpiped comes from $QPIPE_TOKEN. Exit: 0 done or "
	    "idle,\n"
	    "1 usage, 2 queue error.\n");
}

/* Parses a non-negative integer option value. */
static int
pw_num(const char *s, long *vp)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < 0) {
		return -1;
	}
	*vp = v;
	return 0;
}

static void
pw_sleep_ms(long ms)
{
	struct timespec ts
	    = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !pw_stop) {
	}
}

/* Hashes one task into "ID HEX NAME"; returns its length, or -1 if the task
 * has no "ID\n" head. */
static int
pw_result(
    const char *task, size_t len, const char *name, char *out, size_t cap)
{
	const char *nl = memchr(task, '\n', len);
	if (nl == NULL || nl == task || nl - task > 64) {
		return -1;
	}
	unsigned char sum[32];
	const unsigned char *body = (const unsigned char *) nl + 1;
	if (mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), body,
	        len - (size_t) (nl + 1 - task), sum)
	    != 0) {
		return -1;
	}
	char hex[65];
	for (int i = 0; i < 32; i++) {
		snprintf(hex + 2 * i, 3, "%02x", sum[i]);
	}
	return snprintf(
	    out, cap, "%.*s %s %s", (int) (nl - task), task, hex, name);
}

int
main(int argc, char **argv)
{
	const char *name = NULL, *taddr, *raddr;
	long idle_ms = -1, work_ms = 0, stall_at = 0;
	bool trace = false;
	char namebuf[64];
	int i;

	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--help") == 0) {
			pw_usage(stdout);
			return 0;
		} else if (strcmp(a, "--trace") == 0) {
			trace = true;
		} else if (strcmp(a, "--name") == 0 && v != NULL) {
			name = v;
			i++;
		} else if (strcmp(a, "--idle-exit") == 0 && v != NULL
		    && pw_num(v, &idle_ms) == 0) {
			i++;
		} else if (strcmp(a, "--work-ms") == 0 && v != NULL
		    && pw_num(v, &work_ms) == 0) {
			i++;
		} else if (strcmp(a, "--stall-at") == 0 && v != NULL
		    && pw_num(v, &stall_at) == 0) {
			i++;
		} else {
			fprintf(stderr, "pool_worker: bad option '%s'\n", a);
			pw_usage(stderr);
			return 1;
		}
	}
	if (argc - i != 2) {
		pw_usage(stderr);
		return 1;
	}
	taddr = argv[i];
	raddr = argv[i + 1];
	if (name == NULL) {
		char host[64] = "w";
		gethostname(host, sizeof(host) - 1);
		host[sizeof(host) - 1] = '\0';
		snprintf(namebuf, sizeof(namebuf), "%.40s-%ld", host,
		    (long) getpid());
		name = namebuf;
	}

	struct sigaction sa = {.sa_handler = pw_on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	/* Worker mode: a task is confirmed by complete, not by the get. */
	qp_queue *tq = NULL, *rq = NULL;
	qp_queue_opts to = {.flags = QP_OPEN_CREATE | QP_OPEN_LEASE};
	qp_queue_opts ro = {.flags = QP_OPEN_CREATE};
	int rc = qp_queue_open(&tq, taddr, &to);
	if (rc != QP_OK || (rc = qp_queue_open(&rq, raddr, &ro)) != QP_OK) {
		fprintf(stderr, "pool_worker %s: %s\n", name, qp_errmsg());
		qp_queue_free(tq);
		return 2;
	}

	long done = 0, idle = 0;
	int status = 0;
	while (!pw_stop) {
		void *task;
		size_t len;
		long slice = idle_ms >= 0 && idle_ms - idle < PW_SLICE_MS
		    ? idle_ms - idle
		    : PW_SLICE_MS;
		rc = qp_queue_get(tq, &task, &len, slice);
		if (rc == QP_EEMPTY) {
			idle += slice;
			if (idle_ms >= 0 && idle >= idle_ms) {
				break;
			}
			continue;
		}
		if (rc != QP_OK) {
			fprintf(stderr, "pool_worker %s: get %s: %s\n", name,
			    taddr, qp_errmsg());
			status = 2;
			break;
		}
		idle = 0;
		const char *nl = memchr(task, '\n', len);
		int idlen = nl != NULL && nl - (char *) task < 64
		    ? (int) (nl - (char *) task)
		    : 0;
		if (trace) {
			fprintf(stderr, "pool_worker %s: task %.*s\n", name,
			    idlen, (char *) task);
		}
		if (stall_at > 0 && done + 1 == stall_at) {
			fprintf(stderr, "pool_worker %s: holding task %.*s\n",
			    name, idlen, (char *) task);
			pw_sleep_ms(60000);
		}
		if (work_ms > 0) {
			pw_sleep_ms(work_ms);
		}
		char out[256];
		int n = pw_result(task, len, name, out, sizeof(out));
		qp_free(task);
		if (n < 0) {
			/* Not a task of this format: give it back (its
			 * delivery count goes up). */
			fprintf(stderr,
			    "pool_worker %s: a task without an ID\n", name);
			qp_queue_nack(tq, 1000);
			continue;
		}
		/* The result goes in and the task is confirmed in one
		 * step: one result per task, even when a worker is killed
		 * between the two. Queues that cannot do that (two servers,
		 * two kinds) answer QP_ENOTSUP: a put, then task_done. */
		rc = qp_queue_complete(tq, rq, out, (size_t) n, QP_FOREVER);
		if (rc == QP_ENOTSUP
		    && (rc = qp_queue_put(rq, out, (size_t) n, QP_FOREVER))
		        == QP_OK) {
			rc = qp_queue_task_done(tq);
		}
		if (rc == QP_ENOENT) {
			/* Its lease ran out first: nothing stored, the task
			 * runs again and that run's result counts. */
			fprintf(
			    stderr, "pool_worker %s: %s\n", name, qp_errmsg());
			continue;
		}
		if (rc != QP_OK) {
			fprintf(
			    stderr, "pool_worker %s: %s\n", name, qp_errmsg());
			status = 2;
			break;
		}
		done++;
	}
	fprintf(stderr, "pool_worker %s: %ld tasks done\n", name, done);
	qp_queue_free(tq);
	qp_queue_free(rq);
	return status;
}
