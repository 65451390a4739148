/*
 * test_shmspace.c - named queues on a full tmpfs: a put (or a lease get,
 * which copies into the lease area) that finds no memory left for the
 * segment fails with QP_ENOSPC and a clear message instead of dying of
 * SIGBUS; items put before are intact; once gets free ring room, puts go
 * on in the part of the ring that has memory. The segments live on a
 * 2 MiB tmpfs mounted for the test (QPIPE_SHM_DIR); without root (or
 * mount(2)) the tests are skipped. Each case runs in a child, so a SIGBUS
 * fails the case rather than killing the runner.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qpi.h"
#include "shmq.h"

#define ITEM (64u * 1024u)

static char dir[64];
static bool mounted;

static int
setup(void **state)
{
	(void) state;
	snprintf(dir, sizeof(dir), "/tmp/qpshm.XXXXXX");
	if (mkdtemp(dir) == NULL) {
		return -1;
	}
	if (mount("tmpfs", dir, "tmpfs", 0, "size=2m") != 0) {
		fprintf(stderr, "cannot mount a tmpfs on %s (%s): skipped\n",
		    dir, strerror(errno));
		return 0;
	}
	mounted = true;
	setenv("QPIPE_SHM_DIR", dir, 1);
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	if (mounted) {
		umount2(dir, MNT_DETACH);
	}
	rmdir(dir);
	return 0;
}

/* Runs fn in a child: the case passes when it exits 0 (a SIGBUS or a
 * failed check fails it). */
static void
in_child(int (*fn)(void))
{
	if (!mounted) {
		skip();
	}
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* cmocka catches these to fail a test: let them kill. */
		signal(SIGBUS, SIG_DFL);
		signal(SIGSEGV, SIG_DFL);
		_exit(fn());
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (WIFSIGNALED(st)) {
		fail_msg("the child died of signal %d (%s)", WTERMSIG(st),
		    strsignal(WTERMSIG(st)));
	}
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

#define CHECK(c)                                                             \
	do {                                                                 \
		if (!(c)) {                                                  \
			fprintf(stderr, "%s:%d: %s failed (%s)\n", __FILE__, \
			    __LINE__, #c, qp_errmsg());                      \
			return 1;                                            \
		}                                                            \
	} while (0)

static void
fill(uint8_t *b, uint32_t n)
{
	for (uint32_t i = 0; i < ITEM; i++) {
		b[i] = (uint8_t) (n * 31u + i);
	}
}

static int
get_check(qpi_shmq *q, uint32_t n)
{
	static uint8_t want[ITEM], got[ITEM];
	size_t len = 0;

	fill(want, n);
	CHECK(qpi_shmq_get(q, 0, got, sizeof(got), NULL, &len, 0) == QP_OK);
	CHECK(len == ITEM && memcmp(got, want, ITEM) == 0);
	return 0;
}

/* Puts items numbered from *np on until the tmpfs is full (QP_ENOSPC),
 * or, with full_ok, the part of the ring that has memory is (QP_EFULL:
 * the ring wrapped to its start before the end of its memory). */
static int
put_until_full(qpi_shmq *q, uint32_t *np, uint32_t max, bool full_ok)
{
	static uint8_t b[ITEM];
	int rc = QP_OK;

	for (uint32_t i = 0; i < max; i++) {
		fill(b, *np);
		rc = qpi_shmq_put(q, b, ITEM, QPI_ITEM_BIN, 0);
		if (rc != QP_OK) {
			break;
		}
		(*np)++;
	}
	if (full_ok && rc == QP_EFULL) {
		return 0;
	}
	if (rc != QP_ENOSPC) {
		fprintf(stderr, "put %u: %s\n", *np, qp_strerror(rc));
	}
	CHECK(rc == QP_ENOSPC);
	CHECK(strstr(qp_errmsg(), "no space left in ") != NULL);
	CHECK(strstr(qp_errmsg(), dir) != NULL);
	CHECK(strstr(qp_errmsg(), "shm://full") != NULL);
	return 0;
}

static int
put_enospc(void)
{
	qpi_shmq_cfg c = {.capacity = 16u << 20, .lease_slots = 64};
	qpi_shmq *q = NULL;
	uint32_t n = 0, next = 0;
	uint64_t sz = 0;

	qpi_shmq_unlink("full");
	CHECK(qpi_shmq_open(&q, "full", QP_OPEN_CREATE | QP_OPEN_EXCL, &c)
	    == QP_OK);
	/* The ring (16 MiB) is much larger than the file system (2 MiB). */
	CHECK(put_until_full(q, &n, 64, false) == 0);
	CHECK(n >= 8 && n < 32);
	CHECK(qpi_shmq_qsize(q, &sz) == QP_OK && sz == n);
	CHECK(qpi_shmq_check(q) == QP_OK);
	/* Nothing was half-written: the items are there, in order. */
	CHECK(get_check(q, next++) == 0);
	CHECK(get_check(q, next++) == 0);
	/* Room at the ring's start: puts go on there. */
	uint32_t n0 = n;
	CHECK(put_until_full(q, &n, 64, true) == 0);
	CHECK(qpi_shmq_check(q) == QP_OK);
	CHECK(n >= n0 + 2);
	while (next < n) {
		CHECK(get_check(q, next++) == 0);
	}
	CHECK(qpi_shmq_qsize(q, &sz) == QP_OK && sz == 0);
	/* Drained: the ring's memory is reused, lap after lap. */
	for (int lap = 0; lap < 3; lap++) {
		uint32_t m = n;
		CHECK(put_until_full(q, &n, 64, true) == 0);
		CHECK(n >= m + 8);
		while (next < n) {
			CHECK(get_check(q, next++) == 0);
		}
	}
	CHECK(qpi_shmq_check(q) == QP_OK);
	qpi_shmq_free(q);
	CHECK(qpi_shmq_unlink("full") == QP_OK);
	return 0;
}

static void
test_shmspace_put_enospc(void **state)
{
	(void) state;
	in_child(put_enospc);
}

static int
lease_enospc(void)
{
	/* A small ring (all of it backed once used), a lease area far
	 * larger than the file system. */
	qpi_shmq_cfg c = {
	    .capacity = 1u << 20, .lease_slots = 64, .lease_bytes = 16u << 20};
	static uint8_t b[ITEM];
	qpi_shmq *q = NULL;
	uint32_t n = 0, leased = 0;
	uint64_t sz = 0;
	int rc = QP_OK;

	qpi_shmq_unlink("full");
	CHECK(qpi_shmq_open(&q, "full", QP_OPEN_CREATE | QP_OPEN_EXCL, &c)
	    == QP_OK);
	for (int round = 0; round < 64 && rc == QP_OK; round++) {
		for (int i = 0; i < 4; i++) {
			fill(b, n);
			if (qpi_shmq_put(q, b, ITEM, QPI_ITEM_BIN, 0)
			    != QP_OK) {
				break;
			}
			n++;
		}
		while (leased < n) {
			void *buf = NULL;
			size_t len = 0;
			qpi_shmq_lease l;
			rc = qpi_shmq_get_lease(
			    q, 1, -1, 0, &buf, &len, &l, 0);
			if (rc != QP_OK) {
				break;
			}
			free(buf);
			leased++;
		}
	}
	CHECK(rc == QP_ENOSPC);
	CHECK(strstr(qp_errmsg(), "no space left in ") != NULL);
	CHECK(strstr(qp_errmsg(), "lease area") != NULL);
	/* The item stays ready, whole. */
	CHECK(qpi_shmq_qsize(q, &sz) == QP_OK && sz == n - leased);
	CHECK(get_check(q, leased) == 0);
	CHECK(qpi_shmq_check(q) == QP_OK);
	qpi_shmq_free(q);
	CHECK(qpi_shmq_unlink("full") == QP_OK);
	return 0;
}

static void
test_shmspace_lease_enospc(void **state)
{
	(void) state;
	in_child(lease_enospc);
}

static int
create_enospc(void)
{
	/* 8 MiB of lease table alone: creation fails cleanly. */
	qpi_shmq_cfg c = {.capacity = 1u << 20, .lease_slots = 1u << 17};
	qpi_shmq *q = NULL;
	uint64_t sz = 0;

	CHECK(qpi_shmq_open(&q, "big", QP_OPEN_CREATE, &c) == QP_ENOSPC);
	CHECK(strstr(qp_errmsg(), "no space left in ") != NULL);
	/* No name left behind, and room for a normal queue after. */
	CHECK(qpi_shmq_open(&q, "big", 0, NULL) == QP_ENOENT);
	c.lease_slots = 64;
	CHECK(qpi_shmq_open(&q, "big", QP_OPEN_CREATE, &c) == QP_OK);
	CHECK(qpi_shmq_qsize(q, &sz) == QP_OK && sz == 0);
	qpi_shmq_free(q);
	CHECK(qpi_shmq_unlink("big") == QP_OK);
	return 0;
}

static void
test_shmspace_create_enospc(void **state)
{
	(void) state;
	in_child(create_enospc);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_shmspace_put_enospc),
	    cmocka_unit_test(test_shmspace_lease_enospc),
	    cmocka_unit_test(test_shmspace_create_enospc),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
