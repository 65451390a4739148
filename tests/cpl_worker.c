/*
 * cpl_worker.c - a worker for it_complete_kill.sh: takes tasks "tID" from
 * TASKS in worker mode and stores "rID" on RESULTS for each, until TASKS
 * stays empty for IDLE_MS. MODE one: qp_queue_complete (the result and
 * the confirmation in one step); MODE two: qp_queue_put, then
 * qp_queue_task_done (the old way, to show what the test catches). GAP_MS
 * widens the moment between the result and the confirmation, where a kill
 * tells the two apart: a random 0..GAP_MS sleep there (two; one on
 * shm://: inside the step, through the queue's test hook, with the result
 * in and the task not yet confirmed; one on a server: before the
 * request). Exit 0 when idle, 2 on an error.
 *
 * usage: cpl_worker one|two GAP_MS IDLE_MS TASKS RESULTS
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qpipe.h"
#include "shmq.h"

static int gap_ms;
static unsigned seed;

static void
cw_sleep_rand(void)
{
	if (gap_ms > 0) {
		int ms = (int) (rand_r(&seed) % (unsigned) (gap_ms + 1));
		struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000};
		nanosleep(&ts, NULL);
	}
}

static void
cw_hook(int point)
{
	if (point == QPI_HOOK_CPL_PUT || point == QPI_HOOK_CPL_MARK) {
		cw_sleep_rand();
	}
}

int
main(int argc, char **argv)
{
	if (argc != 6
	    || (strcmp(argv[1], "one") != 0 && strcmp(argv[1], "two") != 0)) {
		fprintf(stderr,
		    "usage: cpl_worker one|two GAP_MS IDLE_MS TASKS "
		    "RESULTS\n");
		return 1;
	}
	bool one = strcmp(argv[1], "one") == 0;
	bool shm = strncmp(argv[4], "shm://", 6) == 0;
	gap_ms = atoi(argv[2]);
	qp_duration idle = atoi(argv[3]);
	seed = (unsigned) getpid() ^ (unsigned) time(NULL);
	if (one && shm) {
		qpi_shmq_test_hook = cw_hook;
	}

	qp_queue_opts to = {.flags = QP_OPEN_CREATE | QP_OPEN_LEASE};
	qp_queue_opts ro = {.flags = QP_OPEN_CREATE};
	qp_queue *t = NULL, *r = NULL;
	if (qp_queue_open(&t, argv[4], &to) != QP_OK
	    || qp_queue_open(&r, argv[5], &ro) != QP_OK) {
		fprintf(stderr, "cpl_worker: open: %s\n", qp_errmsg());
		return 2;
	}
	int status = 0;
	for (;;) {
		void *task;
		size_t len;
		int rc = qp_queue_get(t, &task, &len, idle);
		if (rc == QP_EEMPTY) {
			break;
		}
		if (rc != QP_OK) {
			fprintf(stderr, "cpl_worker: get: %s\n", qp_errmsg());
			status = 2;
			break;
		}
		char out[64];
		int n = snprintf(out, sizeof(out), "r%.*s",
		    len > 1 && len < 40 ? (int) len - 1 : 0,
		    (const char *) task + 1);
		qp_free(task);
		if (one) {
			if (!shm) {
				cw_sleep_rand();
			}
			rc = qp_queue_complete(
			    t, r, out, (size_t) n, QP_FOREVER);
		} else {
			rc = qp_queue_put(r, out, (size_t) n, QP_FOREVER);
			cw_sleep_rand();
			if (rc == QP_OK) {
				rc = qp_queue_task_done(t);
			}
		}
		if (rc == QP_ENOENT) {
			continue; /* the lease ran out: it runs again */
		}
		if (rc != QP_OK) {
			fprintf(stderr, "cpl_worker: %s\n", qp_errmsg());
			status = 2;
			break;
		}
	}
	qp_queue_free(t);
	qp_queue_free(r);
	return status;
}
