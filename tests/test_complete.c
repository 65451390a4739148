/*
 * test_complete.c - a task's lease acked and its result put in one step
 * (qpi_shmq_complete, qp_queue_complete on shm://), with a worker killed
 * by SIGKILL at each point of the step: afterwards, once the next user of
 * the tasks queue has settled it, the task has exactly one result, either
 * the dead worker's (its task is not delivered again) or none (its task
 * goes back and a second run's result is the only one).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "qpi.h"
#include "queue_util.h"
#include "shmq.h"

static int cpl_kill_at; /* the hook point the child dies at (0: none) */
static int cpl_armed; /* set once the child holds its lease */
static pid_t cpl_holder; /* a child holding a lock, stopped by teardown */
static uint64_t *cpl_lease_seen; /* shared page: the last lease cpl_run took */

/* Stops the lock holder should an assertion end the test early. */
static int
cpl_teardown(void **state)
{
	(void) state;
	if (cpl_holder > 0) {
		kill(cpl_holder, SIGKILL);
		waitpid(cpl_holder, NULL, 0);
		cpl_holder = 0;
	}
	qpi_shmq_lock_budget(-1);
	return 0;
}

static void
cpl_hook(int point)
{
	if (cpl_armed && point == cpl_kill_at) {
		raise(SIGKILL);
	}
}

typedef struct cpl_pair {
	char tname[96], rname[96];
	qpi_shmq *t, *r;
} cpl_pair;

static void
cpl_open(cpl_pair *p)
{
	qpi_shmq_cfg c = {.capacity = 64 * 1024};

	snprintf(p->tname, sizeof(p->tname), "%s", qu_name("cplt"));
	snprintf(p->rname, sizeof(p->rname), "%s", qu_name("cplr"));
	assert_int_equal(
	    qpi_shmq_open(&p->t, p->tname, QP_OPEN_CREATE, &c), QP_OK);
	assert_int_equal(
	    qpi_shmq_open(&p->r, p->rname, QP_OPEN_CREATE, &c), QP_OK);
}

static void
cpl_close(cpl_pair *p)
{
	assert_int_equal(qpi_shmq_check(p->t), QP_OK);
	assert_int_equal(qpi_shmq_check(p->r), QP_OK);
	qpi_shmq_free(p->t);
	qpi_shmq_free(p->r);
	qpi_shmq_unlink(p->tname);
	qpi_shmq_unlink(p->rname);
}

/* Leases the head task as this process and completes it with result. */
static int
cpl_run(cpl_pair *p, const char *result, bool arm)
{
	qpi_shmq_lease l;
	void *buf;
	size_t len;
	int rc;

	rc = qpi_shmq_get_lease(p->t, qpi_shmq_owner_self(), 30000, 0, &buf,
	    &len, &l, qpi_deadline_ns(1000));
	if (rc != QP_OK) {
		return rc;
	}
	free(buf);
	if (cpl_lease_seen != NULL) {
		*cpl_lease_seen = l.id;
	}
	cpl_armed = arm;
	rc = qpi_shmq_complete(
	    p->t, l.id, p->r, result, strlen(result), QPI_ITEM_BIN, NULL, 0);
	cpl_armed = 0;
	return rc;
}

/* A worker dies at point while completing the only task; then the
 * queue is settled and, if the task came back, run again. Exactly one
 * result stays, the dead worker's when want_first. */
static void
cpl_killed_at(int point, bool want_first)
{
	cpl_pair p;
	qp_queue_stats st;
	uint64_t n;
	void *buf;
	size_t len;

	cpl_open(&p);
	assert_int_equal(qpi_shmq_put(p.t, "task", 4, QPI_ITEM_BIN, 0), QP_OK);
	cpl_kill_at = point;
	qpi_shmq_test_hook = cpl_hook;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		cpl_run(&p, "first", true);
		_exit(3); /* the point was never reached */
	}
	qpi_shmq_test_hook = NULL;
	assert_int_equal(qu_wait(pid), 128 + SIGKILL);
	/* The next user of the tasks queue settles the completion; the
	 * dead worker's lease, if still held, comes back. */
	assert_int_equal(qpi_shmq_release_dead(p.t, NULL), QP_OK);
	assert_int_equal(qpi_shmq_stat(p.t, &st), QP_OK);
	assert_int_equal(st.leased, 0);
	assert_int_equal(qpi_shmq_qsize(p.r, &n), QP_OK);
	if (want_first) {
		assert_int_equal(n, 1);
		assert_int_equal(st.items, 0);
		assert_int_equal(st.unfinished, 0);
	} else {
		assert_int_equal(n, 0);
		assert_int_equal(st.items, 1);
		assert_int_equal(cpl_run(&p, "second", false), QP_OK);
	}
	assert_int_equal(qpi_shmq_qsize(p.t, &n), QP_OK);
	assert_int_equal(n, 0);
	assert_int_equal(qpi_shmq_stat(p.t, &st), QP_OK);
	assert_int_equal(st.leased, 0);
	assert_int_equal(st.unfinished, 0);
	assert_int_equal(qpi_shmq_get(p.r, 0, NULL, 0, &buf, &len, 0), QP_OK);
	const char *want = want_first ? "first" : "second";
	assert_int_equal(len, strlen(want));
	assert_memory_equal(buf, want, len);
	free(buf);
	assert_int_equal(
	    qpi_shmq_get(p.r, 0, NULL, 0, &buf, &len, 0), QP_EEMPTY);
	cpl_close(&p);
}

/* Killed before the result went in: the task runs again. */
static void
test_complete_killed_before_result(void **state)
{
	(void) state;
	cpl_killed_at(QPI_HOOK_CPL_MARK, false);
	cpl_killed_at(QPI_HOOK_PUT_LOCKED, false);
	cpl_killed_at(QPI_HOOK_PUT_COPY, false);
}

/* Killed once the result was committed, before the ack: the result
 * counts, the task is confirmed by whoever comes next. */
static void
test_complete_killed_after_result(void **state)
{
	(void) state;
	cpl_killed_at(QPI_HOOK_PUT_COMMIT, true);
	cpl_killed_at(QPI_HOOK_DONE, true);
	cpl_killed_at(QPI_HOOK_CPL_PUT, true);
}

/* Killed inside the ack's own commit: done, or finished by the repair. */
static void
test_complete_killed_in_ack(void **state)
{
	(void) state;
	cpl_killed_at(QPI_HOOK_JOURNAL, true);
	cpl_killed_at(QPI_HOOK_COMMIT, true);
	cpl_killed_at(QPI_HOOK_APPLY, true);
}

/* A dead worker's completion that cannot be settled yet (its results
 * queue's lock is held past the settler's lock budget) keeps its lease
 * held, and no other completion on the tasks queue overwrites its note;
 * once the lock is free again it is settled: its result was in, so its
 * task is confirmed and never runs again. */
static void
test_complete_unsettled_note_is_kept(void **state)
{
	qp_queue_stats st;
	cpl_pair p;
	uint64_t n;
	void *buf;
	size_t len;
	int ready[2];

	(void) state;
	cpl_open(&p);
	assert_int_equal(qpi_shmq_put(p.t, "t1", 2, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(qpi_shmq_put(p.t, "t2", 2, QPI_ITEM_BIN, 0), QP_OK);
	/* A worker dies with its result in (the put done, the results
	 * queue's lock still held), its task not confirmed. */
	cpl_lease_seen = mmap(NULL, sizeof *cpl_lease_seen,
	    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(cpl_lease_seen != MAP_FAILED);
	cpl_kill_at = QPI_HOOK_DONE;
	qpi_shmq_test_hook = cpl_hook;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		cpl_run(&p, "first", true);
		_exit(3);
	}
	uint64_t held = *cpl_lease_seen;
	munmap(cpl_lease_seen, sizeof *cpl_lease_seen);
	cpl_lease_seen = NULL;
	qpi_shmq_test_hook = NULL;
	assert_int_equal(qu_wait(pid), 128 + SIGKILL);
	/* Another process holds the results queue's producer lock. */
	assert_int_equal(pipe(ready), 0);
	pid_t holder = cpl_holder = fork();
	assert_true(holder >= 0);
	if (holder == 0) {
		pthread_mutex_lock(qpi_shmq_test_lock(p.r, true));
		(void) !write(ready[1], "x", 1);
		pause();
		_exit(0);
	}
	char c;
	assert_int_equal(read(ready[0], &c, 1), 1);
	qpi_shmq_lock_budget(2000000);
	assert_int_equal(qpi_shmq_release_dead(p.t, NULL), QP_OK);
	assert_int_equal(qpi_shmq_stat(p.t, &st), QP_OK);
	assert_int_equal(st.leased, 1); /* not released: unsettled */
	/* Neither an ack nor a release of its lease takes it from the
	 * completion: the task would be left with no result. */
	assert_int_equal(qpi_shmq_ack(p.t, held), QP_ENOENT);
	assert_int_equal(qpi_shmq_release(p.t, held), QP_ENOENT);
	assert_int_equal(qpi_shmq_stat(p.t, &st), QP_OK);
	assert_int_equal(st.leased, 1);
	assert_int_equal(cpl_run(&p, "second", false), QP_EBUSY);
	qpi_shmq_lock_budget(-1);
	/* The holder dies; the next user of the tasks queue settles. */
	kill(holder, SIGKILL);
	assert_int_equal(qu_wait(holder), 128 + SIGKILL);
	cpl_holder = 0;
	assert_int_equal(
	    qpi_shmq_release_owner(p.t, qpi_shmq_owner_self(), NULL), QP_OK);
	assert_int_equal(qpi_shmq_release_dead(p.t, NULL), QP_OK);
	assert_int_equal(qpi_shmq_stat(p.t, &st), QP_OK);
	assert_int_equal(st.leased, 0);
	assert_int_equal(st.items, 1); /* t2 only: t1 was confirmed */
	assert_int_equal(cpl_run(&p, "second", false), QP_OK);
	assert_int_equal(qpi_shmq_qsize(p.t, &n), QP_OK);
	assert_int_equal(n, 0);
	assert_int_equal(qpi_shmq_qsize(p.r, &n), QP_OK);
	assert_int_equal(n, 2);
	assert_int_equal(qpi_shmq_get(p.r, 0, NULL, 0, &buf, &len, 0), QP_OK);
	assert_memory_equal(buf, "first", 5);
	free(buf);
	close(ready[0]);
	close(ready[1]);
	cpl_close(&p);
}

/* A lease no longer held (acked, released, expired) puts nothing. */
static void
test_complete_stale_lease_puts_nothing(void **state)
{
	qpi_shmq_lease l;
	cpl_pair p;
	uint64_t n;
	void *buf;
	size_t len;

	(void) state;
	cpl_open(&p);
	assert_int_equal(qpi_shmq_put(p.t, "task", 4, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(
	    qpi_shmq_get_lease(p.t, 1, 30000, 0, &buf, &len, &l, 0), QP_OK);
	free(buf);
	assert_int_equal(qpi_shmq_release(p.t, l.id), QP_OK);
	assert_int_equal(
	    qpi_shmq_complete(p.t, l.id, p.r, "x", 1, QPI_ITEM_BIN, NULL, 0),
	    QP_ENOENT);
	assert_int_equal(qpi_shmq_qsize(p.r, &n), QP_OK);
	assert_int_equal(n, 0);
	assert_int_equal(qpi_shmq_qsize(p.t, &n), QP_OK);
	assert_int_equal(n, 1);
	/* The same queue both ways, or an anonymous results queue: no. */
	assert_int_equal(
	    qpi_shmq_get_lease(p.t, 1, 30000, 0, &buf, &len, &l, 0), QP_OK);
	free(buf);
	assert_int_equal(
	    qpi_shmq_complete(p.t, l.id, p.t, "x", 1, QPI_ITEM_BIN, NULL, 0),
	    QP_EINVAL);
	qpi_shmq *anon;
	assert_int_equal(qpi_shmq_anon(&anon, NULL), QP_OK);
	assert_int_equal(
	    qpi_shmq_complete(p.t, l.id, anon, "x", 1, QPI_ITEM_BIN, NULL, 0),
	    QP_ENOTSUP);
	qpi_shmq_free(anon);
	assert_int_equal(
	    qpi_shmq_complete(p.t, l.id, p.r, "x", 1, QPI_ITEM_BIN, NULL, 0),
	    QP_OK);
	assert_int_equal(
	    qpi_shmq_complete(p.t, l.id, p.r, "x", 1, QPI_ITEM_BIN, NULL, 0),
	    QP_ENOENT);
	assert_int_equal(qpi_shmq_qsize(p.r, &n), QP_OK);
	assert_int_equal(n, 1);
	cpl_close(&p);
}

/* A full results queue: QP_EFULL at its deadline, nothing done; room
 * made by a getter lets a waiting completion through. */
static void
test_complete_waits_for_room(void **state)
{
	qpi_shmq_cfg c = {.capacity = 64 * 1024, .maxsize = 1};
	qpi_shmq_lease l;
	cpl_pair p;
	uint64_t n;
	void *buf;
	size_t len;

	(void) state;
	snprintf(p.tname, sizeof(p.tname), "%s", qu_name("cplt"));
	snprintf(p.rname, sizeof(p.rname), "%s", qu_name("cplr"));
	assert_int_equal(
	    qpi_shmq_open(&p.t, p.tname, QP_OPEN_CREATE, NULL), QP_OK);
	assert_int_equal(
	    qpi_shmq_open(&p.r, p.rname, QP_OPEN_CREATE, &c), QP_OK);
	assert_int_equal(qpi_shmq_put(p.t, "task", 4, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(qpi_shmq_put(p.r, "old", 3, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(
	    qpi_shmq_get_lease(p.t, 1, 30000, 0, &buf, &len, &l, 0), QP_OK);
	free(buf);
	assert_int_equal(qpi_shmq_complete(p.t, l.id, p.r, "new", 3,
	                     QPI_ITEM_BIN, NULL, qpi_deadline_ns(50)),
	    QP_EFULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		qu_sleep_ms(100);
		int rc = qpi_shmq_get(p.r, 0, NULL, 0, &buf, &len, 0);
		_exit(rc == QP_OK ? 0 : 1);
	}
	assert_int_equal(qpi_shmq_complete(p.t, l.id, p.r, "new", 3,
	                     QPI_ITEM_BIN, NULL, qpi_deadline_ns(5000)),
	    QP_OK);
	assert_int_equal(qu_wait(pid), 0);
	assert_int_equal(qpi_shmq_qsize(p.r, &n), QP_OK);
	assert_int_equal(n, 1);
	assert_int_equal(qpi_shmq_get(p.r, 0, NULL, 0, &buf, &len, 0), QP_OK);
	assert_memory_equal(buf, "new", 3);
	free(buf);
	cpl_close(&p);
}

/* The public call on shm:// handles: worker mode required; the task
 * held goes, its result arrives. */
static void
test_complete_public_shm(void **state)
{
	qp_queue_opts wo = {.flags = QP_OPEN_CREATE | QP_OPEN_LEASE};
	qp_queue_opts po = {.flags = QP_OPEN_CREATE};
	char ta[128], ra[128];
	qp_queue *t, *r, *plain;
	size_t n, len;
	void *buf;

	(void) state;
	snprintf(ta, sizeof(ta), "shm://%s", qu_name("cplt"));
	snprintf(ra, sizeof(ra), "shm://%s", qu_name("cplr"));
	assert_int_equal(qp_queue_open(&t, ta, &wo), QP_OK);
	assert_int_equal(qp_queue_open(&r, ra, &po), QP_OK);
	assert_int_equal(qp_queue_open(&plain, ta, NULL), QP_OK);
	assert_int_equal(qp_queue_complete(t, r, "x", 1, 0), QP_EVALUE);
	assert_int_equal(qp_queue_put(t, "task", 4, 0), QP_OK);
	assert_int_equal(qp_queue_complete(plain, r, "x", 1, 0), QP_EINVAL);
	assert_int_equal(qp_queue_get(t, &buf, &len, 0), QP_OK);
	qp_free(buf);
	assert_int_equal(qp_queue_complete(t, t, "x", 1, 0), QP_EINVAL);
	assert_int_equal(
	    qp_queue_complete_obj(t, r, "\x92\x01\x02", 3, 0), QP_OK);
	assert_int_equal(qp_queue_qsize(t, &n), QP_OK);
	assert_int_equal(n, 0);
	assert_int_equal(qp_queue_join(t, 0), QP_OK);
	assert_int_equal(qp_queue_get_obj(r, &buf, &len, 0), QP_OK);
	assert_int_equal(len, 3);
	assert_memory_equal(buf, "\x92\x01\x02", 3);
	qp_free(buf);
	assert_int_equal(qp_queue_complete(t, r, "x", 1, 0), QP_EVALUE);
	qp_queue_free(plain);
	qp_queue_free(t);
	qp_queue_free(r);
	qp_queue_unlink(ta);
	qp_queue_unlink(ra);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_complete_killed_before_result),
	    cmocka_unit_test(test_complete_killed_after_result),
	    cmocka_unit_test(test_complete_killed_in_ack),
	    cmocka_unit_test_teardown(
	        test_complete_unsettled_note_is_kept, cpl_teardown),
	    cmocka_unit_test(test_complete_stale_lease_puts_nothing),
	    cmocka_unit_test(test_complete_waits_for_room),
	    cmocka_unit_test(test_complete_public_shm),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
