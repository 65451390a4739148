/*
 * test_pipe.c - qp_pipe(): the shared-memory Connection, case by case
 * against Python's multiprocessing.Pipe, within a process and across
 * fork(). Children report through their exit status (0 = as expected).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <cmocka.h>
#include <poll.h>

#include "pipe_util.h"
#include "qpi.h"
#include "shmpipe.h"

/* The end of file after a peer's death arrives within milliseconds (a
 * pidfd or the socket's close); the bound is wide because a shared, busy
 * machine can hold either process off the CPU for tens of ms. Without the
 * end of file the recv would block until the test's own timeout. */
#define EOF_WITHIN_US 1000000

/* Sends s as bytes; 0 or the error. */
static int
send_str(qp_conn *c, const char *s)
{
	return qp_conn_send_bytes(c, s, 0, strlen(s));
}

/* Receives bytes and compares with s: 0 when equal. */
static int
recv_str(qp_conn *c, const char *s)
{
	void *buf = NULL;
	size_t len = 0;
	int rv = qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX);

	if (rv != QP_OK) {
		return 100 + rv;
	}
	rv = len == strlen(s) && memcmp(buf, s, len) == 0 ? 0 : 99;
	qp_free(buf);
	return rv;
}

static void
assert_recv_str(qp_conn *c, const char *s)
{
	void *buf = NULL;
	size_t len = 0;

	assert_int_equal(qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX), QP_OK);
	assert_int_equal(len, strlen(s));
	assert_memory_equal(buf, s, len);
	qp_free(buf);
}

static bool
ready(qp_conn *c, qp_duration t)
{
	bool r = false;

	assert_int_equal(qp_conn_poll(c, t, &r), QP_OK);
	return r;
}

/* A block of shared memory for children to write timestamps into. */
static int64_t *
shared_words(void)
{
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(p != MAP_FAILED);
	return p;
}

static void
test_pipe_duplex_both_ways(void **state)
{
	qp_conn *a, *b;

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	/* within one process, both directions */
	assert_int_equal(send_str(a, "to b"), QP_OK);
	assert_int_equal(send_str(b, "to a"), QP_OK);
	assert_recv_str(b, "to b");
	assert_recv_str(a, "to a");

	/* across fork: ping from the parent, pong from the child */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int rc = recv_str(b, "ping");
		if (rc == 0) {
			rc = send_str(b, "pong") == QP_OK ? 0 : 2;
		}
		_exit(rc);
	}
	assert_int_equal(send_str(a, "ping"), QP_OK);
	assert_recv_str(a, "pong");
	assert_int_equal(pu_wait_child(pid), 0);
	qp_conn_free(a);
	qp_conn_free(b);
}

static void
test_pipe_simplex_directions(void **state)
{
	qp_conn *r, *w;
	void *buf;
	size_t len;
	bool rd;
	int fd;

	/* Python: Pipe(False) -> (receive-only, send-only) */
	assert_int_equal(qp_pipe(&r, &w, false), QP_OK);
	assert_int_equal(send_str(r, "x"), QP_EPERM);
	assert_int_equal(qp_conn_send(r, "\x01", 1), QP_EPERM);
	assert_string_equal(qp_errmsg(), "connection is read-only");
	assert_int_equal(
	    qp_conn_recv_bytes(w, &buf, &len, SIZE_MAX), QP_EPERM);
	assert_string_equal(qp_errmsg(), "connection is write-only");
	assert_int_equal(qp_conn_recv(w, &buf, &len), QP_EPERM);
	assert_int_equal(qp_conn_poll(w, 0, &rd), QP_EPERM);
	assert_int_equal(qp_conn_fd(w, &fd), QP_EPERM);

	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		_exit(send_str(w, "one way") == QP_OK ? 0 : 1);
	}
	assert_recv_str(r, "one way");
	assert_int_equal(pu_wait_child(pid), 0);
	qp_conn_free(r);
	qp_conn_free(w);
}

static void
test_pipe_poll_timing(void **state)
{
	qp_conn *a, *b;
	int64_t t0, dt;

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	t0 = pu_now_ms();
	assert_false(ready(a, 0));
	assert_true(pu_now_ms() - t0 < 50);

	/* poll(0.2) on nothing: waits at least 0.9 x 200 ms, not much more */
	t0 = pu_now_ms();
	assert_false(ready(a, 200));
	dt = pu_now_ms() - t0;
	assert_true(dt >= 180);
	assert_true(dt < 1200);

	assert_int_equal(send_str(b, "m"), QP_OK);
	assert_true(ready(a, 0));
	assert_true(ready(a, 200)); /* does not consume */
	assert_recv_str(a, "m");

	/* a message that comes during the wait ends it early */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		pu_sleep_ms(50);
		_exit(send_str(b, "late") == QP_OK ? 0 : 1);
	}
	t0 = pu_now_ms();
	assert_true(ready(a, 2000));
	dt = pu_now_ms() - t0;
	assert_true(dt >= 40);
	assert_true(dt < 1000);
	assert_recv_str(a, "late");
	assert_int_equal(pu_wait_child(pid), 0);

	bool r;
	assert_int_equal(qp_conn_poll(a, -2, &r), QP_EINVAL);
	qp_conn_free(a);
	qp_conn_free(b);
}

static void
test_pipe_recv_bytes_into_offset(void **state)
{
	qp_conn *a, *b;
	uint8_t buf[10];
	size_t len = 0;

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	/* Python: b.send_bytes(b"abcdef", 2, 3); a.recv_bytes_into(buf, 4)
	 * -> 3, buf == b"\0\0\0\0cde\0\0\0" */
	assert_int_equal(qp_conn_send_bytes(b, "abcdef", 2, 3), QP_OK);
	memset(buf, 0, sizeof(buf));
	assert_int_equal(
	    qp_conn_recv_bytes_into(a, buf, sizeof(buf), 4, &len), QP_OK);
	assert_int_equal(len, 3);
	assert_memory_equal(buf, "\0\0\0\0cde\0\0\0", 10);

	/* an offset past the buffer: Python's ValueError, nothing read */
	assert_int_equal(send_str(b, "q"), QP_OK);
	assert_int_equal(
	    qp_conn_recv_bytes_into(a, buf, sizeof(buf), 11, &len), QP_EINVAL);
	assert_true(ready(a, 0));
	/* the message exactly fills the rest */
	assert_int_equal(
	    qp_conn_recv_bytes_into(a, buf, sizeof(buf), 9, &len), QP_OK);
	assert_int_equal(len, 1);
	assert_int_equal(buf[9], 'q');
	qp_conn_free(a);
	qp_conn_free(b);
}

static void
test_pipe_into_too_short_then_full(void **state)
{
	qp_conn *a, *b;
	uint8_t small[8], big[16];
	size_t len = 0;

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	assert_int_equal(send_str(b, "hello world"), QP_OK);
	assert_int_equal(send_str(b, "next"), QP_OK);
	/* Python raises BufferTooShort and loses the message; here it says
	 * the size needed and keeps it. */
	assert_int_equal(
	    qp_conn_recv_bytes_into(a, small, sizeof(small), 0, &len),
	    QP_ETOOBIG);
	assert_int_equal(len, 11);
	assert_int_equal(
	    qp_conn_recv_bytes_into(a, big, sizeof(big), 6, &len), QP_ETOOBIG);
	assert_int_equal(len, 11);
	assert_true(ready(a, 0));
	assert_int_equal(
	    qp_conn_recv_bytes_into(a, big, sizeof(big), 5, &len), QP_OK);
	assert_int_equal(len, 11);
	assert_memory_equal(big + 5, "hello world", 11);
	assert_recv_str(a, "next");
	qp_conn_free(a);
	qp_conn_free(b);
}

static void
test_pipe_maxlength_then_full(void **state)
{
	qp_conn *a, *b;
	void *buf = NULL;
	size_t len = 0;

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	assert_int_equal(send_str(b, "hello world"), QP_OK);
	/* Python: OSError("bad message length") and the end is unusable */
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 5), QP_ETOOBIG);
	assert_int_equal(len, 11);
	assert_null(buf);
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 10), QP_ETOOBIG);
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 11), QP_OK);
	assert_int_equal(len, 11);
	assert_memory_equal(buf, "hello world", 11);
	qp_free(buf);
	qp_conn_free(a);
	qp_conn_free(b);
}

static void
test_pipe_zero_byte_messages(void **state)
{
	qp_conn *a, *b;
	void *buf = NULL;
	size_t len = 99;
	uint8_t one[1];

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	assert_int_equal(qp_conn_send_bytes(b, NULL, 0, 0), QP_OK);
	assert_int_equal(qp_conn_send_bytes(b, "", 0, 0), QP_OK);
	assert_int_equal(qp_conn_send_bytes(b, "abc", 3, 0), QP_OK);
	assert_true(ready(a, 0)); /* Python: poll() is True for b"" */
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 0), QP_OK);
	assert_int_equal(len, 0);
	assert_non_null(buf);
	qp_free(buf);
	assert_int_equal(qp_conn_recv_bytes_into(a, one, 0, 0, &len), QP_OK);
	assert_int_equal(len, 0);
	/* as an object: the empty bin */
	assert_int_equal(qp_conn_recv(a, &buf, &len), QP_OK);
	assert_int_equal(len, 2);
	assert_memory_equal(buf, "\xc4\x00", 2);
	qp_free(buf);
	assert_false(ready(a, 0));
	qp_conn_free(a);
	qp_conn_free(b);
}

static void
test_pipe_obj_and_bytes(void **state)
{
	qp_conn *a, *b;
	void *buf = NULL;
	size_t len = 0;

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	/* send(obj) / recv(): the msgpack encoding, untouched */
	assert_int_equal(qp_conn_send(b, "\x92\x01\xa2hi", 5), QP_OK);
	assert_int_equal(qp_conn_recv(a, &buf, &len), QP_OK);
	assert_int_equal(len, 5);
	assert_memory_equal(buf, "\x92\x01\xa2hi", 5);
	qp_free(buf);
	/* recv_bytes of an object: its encoding (Python gives the pickle) */
	assert_int_equal(qp_conn_send(b, "\x2a", 1), QP_OK);
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_OK);
	assert_int_equal(len, 1);
	assert_memory_equal(buf, "\x2a", 1);
	qp_free(buf);
	/* recv of bytes: a bin */
	assert_int_equal(send_str(b, "abc"), QP_OK);
	assert_int_equal(qp_conn_recv(a, &buf, &len), QP_OK);
	assert_int_equal(len, 5);
	assert_memory_equal(buf,
	    "\xc4\x03"
	    "abc",
	    5);
	qp_free(buf);
	/* a bin sent as an object reads back as bytes */
	assert_int_equal(qp_conn_send(b, "\xc4\x03xyz", 5), QP_OK);
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 3), QP_OK);
	assert_int_equal(len, 3);
	assert_memory_equal(buf, "xyz", 3);
	qp_free(buf);
	/* a 300-byte payload takes a 3-byte bin header */
	uint8_t big[300];
	memset(big, 7, sizeof(big));
	assert_int_equal(qp_conn_send_bytes(b, big, 0, sizeof(big)), QP_OK);
	assert_int_equal(qp_conn_recv(a, &buf, &len), QP_OK);
	assert_int_equal(len, 303);
	assert_memory_equal(buf, "\xc5\x01\x2c", 3);
	assert_memory_equal((uint8_t *) buf + 3, big, 300);
	qp_free(buf);

	/* not one well-formed value: refused, nothing sent */
	assert_int_equal(qp_conn_send(b, "\xc1", 1), QP_EINVAL);
	assert_int_equal(qp_conn_send(b, "\x01\x02", 2), QP_EINVAL);
	assert_int_equal(qp_conn_send(b, "\x92\x01", 2), QP_EINVAL);
	assert_int_equal(qp_conn_send(b, "", 0), QP_EINVAL);
	assert_int_equal(qp_conn_send(b, NULL, 1), QP_EINVAL);
	assert_false(ready(a, 0));
	qp_conn_free(a);
	qp_conn_free(b);
}

static void
test_pipe_eof_after_close(void **state)
{
	qp_conn *a, *b;
	void *buf;
	size_t len;
	int64_t t0;

	/* within a process */
	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	assert_int_equal(send_str(b, "1"), QP_OK);
	assert_int_equal(send_str(b, "2"), QP_OK);
	assert_int_equal(qp_conn_close(b), QP_OK);
	assert_int_equal(qp_conn_close(b), QP_OK); /* idempotent */
	assert_int_equal(send_str(b, "3"), QP_ECLOSED);
	assert_int_equal(qp_conn_recv_bytes(b, &buf, &len, 9), QP_ECLOSED);
	assert_recv_str(a, "1");
	assert_recv_str(a, "2");
	assert_true(ready(a, 0)); /* Python: poll() is True at EOF */
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 9), QP_ECLOSED);
	assert_int_equal(qp_conn_recv(a, &buf, &len), QP_ECLOSED);
	/* Python: BrokenPipeError sending to a closed end */
	assert_int_equal(send_str(a, "x"), QP_ECLOSED);
	qp_conn_free(a);
	qp_conn_free(b);

	/* across fork: the child closes (and stays alive a while) */
	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (int i = 0; i < 3; i++) {
			if (send_str(b, "m") != QP_OK) {
				_exit(1);
			}
		}
		qp_conn_close(b);
		pu_sleep_ms(1000);
		_exit(0);
	}
	for (int i = 0; i < 3; i++) {
		assert_recv_str(a, "m");
	}
	t0 = pu_now_ms();
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 9), QP_ECLOSED);
	assert_true(pu_now_ms() - t0 < 500);
	assert_int_equal(pu_wait_child(pid), 0);
	qp_conn_free(a);
	qp_conn_free(b);
}

/* Python's idiom: the parent closes the child's end right after fork;
 * that must not end the child's use of it. */
static void
test_pipe_parent_close_after_fork_is_local(void **state)
{
	qp_conn *a, *b;
	void *buf;
	size_t len;

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		qp_conn_close(a); /* the child's copy of the parent's end */
		pu_sleep_ms(100); /* the parent closed b meanwhile */
		int rc = 0;
		for (int i = 0; i < 3 && rc == 0; i++) {
			rc = send_str(b, "from child") == QP_OK ? 0 : 1;
		}
		if (rc == 0) {
			rc = recv_str(b, "from parent");
		}
		qp_conn_close(b);
		pu_sleep_ms(300);
		_exit(rc);
	}
	assert_int_equal(qp_conn_close(b), QP_OK);
	for (int i = 0; i < 3; i++) {
		assert_recv_str(a, "from child");
	}
	assert_int_equal(send_str(a, "from parent"), QP_OK);
	/* the child's close is the one that counts */
	int64_t t0 = pu_now_ms();
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 99), QP_ECLOSED);
	assert_true(pu_now_ms() - t0 < 250);
	assert_int_equal(pu_wait_child(pid), 0);
	qp_conn_free(a);
	qp_conn_free(b);
}

/* EOF after kill -9 of the peer, within 100 ms, although the parent still
 * holds the child's end and has not reaped the child (a zombie). */
static void
test_pipe_eof_after_kill9(void **state)
{
	qp_conn *a, *b;
	void *buf;
	size_t len;
	int64_t *t = shared_words();

	/* 1: the parent blocks in recv; a second child kills the first */
	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	pid_t peer = fork();
	assert_true(peer >= 0);
	if (peer == 0) {
		send_str(b, "ready");
		qp_conn_recv_bytes(b, &buf, &len, SIZE_MAX); /* blocks */
		_exit(3);
	}
	assert_recv_str(a, "ready");
	pid_t killer = fork();
	assert_true(killer >= 0);
	if (killer == 0) {
		/* forked after the peer claimed b: no heir of b, so its
		 * lingering must not delay the end of file */
		pu_sleep_ms(150);
		t[0] = pu_now_us();
		kill(peer, SIGKILL);
		pu_sleep_ms(1000);
		_exit(0);
	}
	assert_int_equal(
	    qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_ECLOSED);
	int64_t late = pu_now_us() - t[0];
	assert_int_equal(pu_wait_child(killer), 0);
	assert_true(late >= 0);
	assert_true(late < EOF_WITHIN_US);
	assert_true(ready(a, 0));
	assert_int_equal(pu_wait_child(peer), 128 + SIGKILL);
	qp_conn_free(a);
	qp_conn_free(b);

	/* 2: data sent before the death is drained first */
	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	peer = fork();
	assert_true(peer >= 0);
	if (peer == 0) {
		send_str(b, "last words");
		pause();
		_exit(3);
	}
	assert_true(ready(a, 5000));
	kill(peer, SIGKILL);
	t[0] = pu_now_us();
	assert_recv_str(a, "last words");
	assert_int_equal(
	    qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_ECLOSED);
	assert_true(pu_now_us() - t[0] < EOF_WITHIN_US);
	assert_int_equal(pu_wait_child(peer), 128 + SIGKILL);
	qp_conn_free(a);
	qp_conn_free(b);
	munmap(t, 4096);
}

/* Python's idiom, then a child that dies before it ever uses its end:
 * the parent closed its copy, so the child's death is the end of file
 * (Python sees it too, through the kernel's count of the descriptor). */
static void
test_pipe_child_dies_before_first_use(void **state)
{
	qp_conn *a, *b;
	void *buf;
	size_t len;
	int64_t t0;

	/* killed while the parent waits */
	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		pause();
		_exit(3);
	}
	assert_int_equal(qp_conn_close(b), QP_OK); /* the parent's copy */
	assert_false(ready(a, 100)); /* the child may still use it */
	kill(pid, SIGKILL);
	t0 = pu_now_us();
	assert_int_equal(
	    qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_ECLOSED);
	assert_true(pu_now_us() - t0 < EOF_WITHIN_US);
	assert_int_equal(pu_wait_child(pid), 128 + SIGKILL);
	qp_conn_free(a);
	qp_conn_free(b);

	/* exited at once, before the parent closed its copy */
	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		_exit(0);
	}
	pu_sleep_ms(50);
	assert_int_equal(qp_conn_close(b), QP_OK);
	t0 = pu_now_us();
	assert_int_equal(
	    qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_ECLOSED);
	assert_true(pu_now_us() - t0 < EOF_WITHIN_US);
	assert_int_equal(pu_wait_child(pid), 0);
	qp_conn_free(a);
	qp_conn_free(b);

	/* a pool: one pipe per worker, each made before its fork; worker
	 * 1 dies at once, the others answer; the parent hears from all */
	qp_conn *pa[3], *pb[3];
	pid_t w[3];
	for (int i = 0; i < 3; i++) {
		assert_int_equal(qp_pipe(&pa[i], &pb[i], true), QP_OK);
		w[i] = fork();
		assert_true(w[i] >= 0);
		if (w[i] == 0) {
			if (i == 1) {
				_exit(0);
			}
			pu_sleep_ms(50);
			_exit(send_str(pb[i], "done") == QP_OK ? 0 : 1);
		}
		assert_int_equal(qp_conn_close(pb[i]), QP_OK);
	}
	assert_recv_str(pa[0], "done");
	assert_int_equal(qp_conn_recv_bytes(pa[1], &buf, &len, 9), QP_ECLOSED);
	assert_recv_str(pa[2], "done");
	for (int i = 0; i < 3; i++) {
		assert_int_equal(pu_wait_child(w[i]), 0);
		assert_int_equal(
		    qp_conn_recv_bytes(pa[i], &buf, &len, 9), QP_ECLOSED);
		qp_conn_free(pa[i]);
		qp_conn_free(pb[i]);
	}
}

/* The pollable fd wakes on data, and on the peer's death. */
static void
test_pipe_fd_readable(void **state)
{
	qp_conn *a, *b;
	struct pollfd pfd = {.events = POLLIN};
	void *buf;
	size_t len;

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	assert_int_equal(qp_conn_fd(a, &pfd.fd), QP_OK);
	assert_true(pfd.fd >= 0);
	assert_int_equal(poll(&pfd, 1, 0), 0);
	assert_int_equal(send_str(b, "x"), QP_OK);
	assert_int_equal(poll(&pfd, 1, 0), 1);
	assert_recv_str(a, "x");
	assert_int_equal(poll(&pfd, 1, 0), 0);

	/* data sent before the fd was asked for still shows */
	assert_int_equal(send_str(a, "early"), QP_OK);
	struct pollfd pb = {.events = POLLIN};
	assert_int_equal(qp_conn_fd(b, &pb.fd), QP_OK);
	assert_int_equal(poll(&pb, 1, 0), 1);
	assert_recv_str(b, "early");

	/* the child claims b, then dies: the parent's fd wakes */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		send_str(b, "hello");
		pu_sleep_ms(100);
		kill(getpid(), SIGKILL);
		_exit(3);
	}
	assert_int_equal(poll(&pfd, 1, 5000), 1);
	assert_recv_str(a, "hello");
	/* The fd may wake once with nothing ready (the child's claim wakes
	 * the parent to look at the new owner); asking qp_conn_poll clears
	 * that, so this loop sleeps in poll(2) and does not spin. */
	int wakes = 0;
	while (!ready(a, 0)) {
		assert_true(++wakes < 4);
		assert_int_equal(poll(&pfd, 1, 5000), 1);
	}
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 9), QP_ECLOSED);
	assert_int_equal(poll(&pfd, 1, 0), 1); /* EOF stays readable */
	assert_int_equal(pu_wait_child(pid), 128 + SIGKILL);
	qp_conn_free(a);
	qp_conn_free(b);
}

static void
test_pipe_wait_ten_three_ready(void **state)
{
	qp_conn *a[10], *b[10];
	bool rd[10];
	size_t n = 99;
	int64_t t0;

	for (int i = 0; i < 10; i++) {
		assert_int_equal(qp_pipe(&a[i], &b[i], true), QP_OK);
	}
	assert_int_equal(qp_wait(a, 10, 0, rd, &n), QP_OK);
	assert_int_equal(n, 0);
	t0 = pu_now_ms();
	assert_int_equal(qp_wait(a, 10, 100, rd, &n), QP_OK);
	assert_int_equal(n, 0);
	assert_true(pu_now_ms() - t0 >= 90);

	assert_int_equal(send_str(b[2], "x"), QP_OK);
	assert_int_equal(send_str(b[5], "y"), QP_OK);
	assert_int_equal(qp_conn_close(b[9]), QP_OK); /* EOF is ready too */
	assert_int_equal(qp_wait(a, 10, QP_FOREVER, rd, &n), QP_OK);
	assert_int_equal(n, 3);
	for (int i = 0; i < 10; i++) {
		assert_int_equal(rd[i], i == 2 || i == 5 || i == 9);
	}
	assert_recv_str(a[2], "x");
	assert_recv_str(a[5], "y");

	/* across fork: blocks until the child sends on pipe 7 */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		pu_sleep_ms(50);
		_exit(send_str(b[7], "seven") == QP_OK ? 0 : 1);
	}
	t0 = pu_now_ms();
	assert_int_equal(qp_wait(a, 9, 5000, rd, &n), QP_OK);
	assert_true(pu_now_ms() - t0 < 2000);
	assert_int_equal(n, 1);
	assert_true(rd[7]);
	assert_recv_str(a[7], "seven");
	assert_int_equal(pu_wait_child(pid), 0);

	/* errors: a send-only end, a closed one, NULL */
	qp_conn *r, *w;
	assert_int_equal(qp_pipe(&r, &w, false), QP_OK);
	qp_conn *mixed[2] = {a[0], w};
	assert_int_equal(qp_wait(mixed, 2, 0, rd, &n), QP_EPERM);
	qp_conn_close(a[0]);
	assert_int_equal(qp_wait(a, 1, 0, rd, &n), QP_ECLOSED);
	assert_int_equal(qp_wait(NULL, 1, 0, rd, &n), QP_EINVAL);
	assert_int_equal(qp_wait(NULL, 0, QP_FOREVER, NULL, &n), QP_EINVAL);
	assert_int_equal(qp_wait(NULL, 0, 10, NULL, &n), QP_OK);
	qp_conn_free(r);
	qp_conn_free(w);
	for (int i = 0; i < 10; i++) {
		qp_conn_free(a[i]);
		qp_conn_free(b[i]);
	}
}

static void
test_pipe_max_message(void **state)
{
	qp_conn *a, *b;
	void *buf;
	size_t len = 0;
	uint8_t *big = calloc(1, QP_DEFAULT_MAX_MESSAGE + 1);

	assert_non_null(big);
	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	/* the default: 32 MiB */
	assert_int_equal(
	    qp_conn_send_bytes(b, big, 0, QP_DEFAULT_MAX_MESSAGE + 1),
	    QP_ETOOBIG);
	assert_false(ready(a, 0)); /* nothing sent */
	free(big);

	assert_int_equal(qp_conn_set_max_message(b, 1000), QP_OK);
	uint8_t m[1001];
	memset(m, 'm', sizeof(m));
	assert_int_equal(qp_conn_send_bytes(b, m, 0, 1001), QP_ETOOBIG);
	assert_false(ready(a, 0));
	assert_int_equal(qp_conn_send_bytes(b, m, 0, 1000), QP_OK);

	/* a receiver with a smaller maximum keeps the message for later */
	assert_int_equal(qp_conn_set_max_message(a, 100), QP_OK);
	assert_int_equal(
	    qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_ETOOBIG);
	assert_int_equal(len, 1000);
	assert_int_equal(qp_conn_set_max_message(a, 1000), QP_OK);
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_OK);
	assert_int_equal(len, 1000);
	qp_free(buf);

	assert_int_equal(qp_conn_set_max_message(a, 0), QP_EINVAL);
	assert_int_equal(qp_conn_set_max_message(a, SIZE_MAX), QP_EINVAL);
	qp_conn_free(a);
	qp_conn_free(b);
}

/* Messages larger than the ring stream through it in pieces. */
static void
test_pipe_large_messages_stream(void **state)
{
	qp_conn *a, *b;
	size_t sizes[] = {65536 - 16, 65536, 300000, 5u << 20};
	const size_t nsizes = sizeof(sizes) / sizeof(sizes[0]);
	size_t total = 0;

	for (size_t i = 0; i < nsizes; i++) {
		total = sizes[i] > total ? sizes[i] : total;
	}
	uint8_t *src = malloc(total), *dst = malloc(total);
	assert_non_null(src);
	assert_non_null(dst);
	uint64_t st = 42;
	for (size_t i = 0; i < total; i++) {
		src[i] = (uint8_t) pu_next(&st);
	}
	/* a 64 KiB ring: each message below is bigger than half of it */
	assert_int_equal(qpi_shmpipe_create(&a, &b, true, 65536), QP_OK);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (size_t i = 0; i < nsizes; i++) {
			if (qp_conn_send_bytes(b, src, 0, sizes[i]) != QP_OK) {
				_exit(1);
			}
		}
		_exit(recv_str(b, "done"));
	}
	for (size_t i = 0; i < nsizes; i++) {
		size_t len = 0;
		if (i == nsizes - 1) {
			/* too small: told the size, then read it whole */
			assert_int_equal(
			    qp_conn_recv_bytes_into(a, dst, 100, 0, &len),
			    QP_ETOOBIG);
			assert_int_equal(len, sizes[i]);
		}
		assert_int_equal(
		    qp_conn_recv_bytes_into(a, dst, total, 0, &len), QP_OK);
		assert_int_equal(len, sizes[i]);
		assert_memory_equal(dst, src, len);
	}
	assert_int_equal(send_str(a, "done"), QP_OK);
	assert_int_equal(pu_wait_child(pid), 0);
	qp_conn_free(a);
	qp_conn_free(b);
	free(src);
	free(dst);

	assert_int_equal(qpi_shmpipe_create(&a, &b, true, 1000), QP_EINVAL);
	assert_int_equal(qpi_shmpipe_create(&a, &b, true, 2048), QP_EINVAL);
}

/* 100k messages of random sizes across fork, in order, checksummed.
 * Sanitizer builds send 20k (the copies are instrumented). */
static void
test_pipe_fork_100k_random(void **state)
{
	const size_t count = PU_SANITIZED ? 20000 : 100000;
	uint8_t *block = malloc(PU_BLOCK);
	uint8_t *buf = malloc(PU_MAXSIZE);
	pu_stream s;
	qp_conn *a, *b;

	assert_non_null(block);
	assert_non_null(buf);
	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		pu_init(&s, block, 7);
		for (size_t i = 0; i < count; i++) {
			size_t len;
			const uint8_t *m = pu_msg(&s, &len);
			pu_sum(&s, m, len);
			if (qp_conn_send_bytes(b, m, 0, len) != QP_OK) {
				_exit(1);
			}
		}
		uint64_t theirs = 0;
		size_t n = 0;
		if (qp_conn_recv_bytes_into(b, &theirs, 8, 0, &n) != QP_OK
		    || n != 8) {
			_exit(2);
		}
		_exit(theirs == s.sum ? 0 : 3);
	}
	pu_init(&s, block, 7);
	for (size_t i = 0; i < count; i++) {
		size_t want, len = 0;
		const uint8_t *m = pu_msg(&s, &want);
		int rv = qp_conn_recv_bytes_into(a, buf, PU_MAXSIZE, 0, &len);
		if (rv != QP_OK || len != want || memcmp(buf, m, len) != 0) {
			fail_msg("message %zu: rv %d, %zu bytes, want %zu", i,
			    rv, len, want);
		}
		pu_sum(&s, buf, len);
	}
	assert_false(ready(a, 0));
	assert_int_equal(qp_conn_send_bytes(a, &s.sum, 0, 8), QP_OK);
	assert_int_equal(pu_wait_child(pid), 0);
	qp_conn_free(a);
	qp_conn_free(b);
	free(block);
	free(buf);
}

/* A sender blocked on a full ring learns that its receiver died. */
static void
test_pipe_sender_unblocks_when_receiver_dies(void **state)
{
	qp_conn *a, *b;
	uint8_t chunk[1024];

	memset(chunk, 1, sizeof(chunk));
	assert_int_equal(qpi_shmpipe_create(&a, &b, true, 4096), QP_OK);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		send_str(b, "ready"); /* claims b */
		pause();
		_exit(3);
	}
	assert_recv_str(a, "ready");
	kill(pid, SIGKILL);
	int64_t t0 = pu_now_ms();
	int rv = QP_OK;
	for (int i = 0; i < 100 && rv == QP_OK; i++) {
		rv = qp_conn_send_bytes(a, chunk, 0, sizeof(chunk));
	}
	assert_int_equal(rv, QP_ECLOSED);
	assert_true(pu_now_ms() - t0 < 500);
	assert_int_equal(pu_wait_child(pid), 128 + SIGKILL);
	qp_conn_free(a);
	qp_conn_free(b);
}

/* A receiver waiting with nothing to read sleeps: its short spin before
 * sleeping costs microseconds, not a core. */
static void
test_pipe_idle_wait_sleeps(void **state)
{
	qp_conn *a, *b;
	struct rusage ru;
	int st;

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		_exit(recv_str(b, "wake up"));
	}
	pu_sleep_ms(400);
	assert_int_equal(send_str(a, "wake up"), QP_OK);
	assert_int_equal(wait4(pid, &st, 0, &ru), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	int64_t cpu_us
	    = (int64_t) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000
	    + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
	/* 400 ms of waiting; a spinning waiter would use about all of it */
	assert_true(cpu_us < 60000);
	qp_conn_free(a);
	qp_conn_free(b);
}

static void
test_pipe_bad_arguments(void **state)
{
	qp_conn *a, *b;
	void *buf;
	size_t len;
	bool r;

	assert_int_equal(qp_pipe(NULL, &b, true), QP_EINVAL);
	assert_int_equal(qp_pipe(&a, NULL, true), QP_EINVAL);
	assert_int_equal(qp_conn_send_bytes(NULL, "x", 0, 1), QP_EINVAL);
	assert_int_equal(qp_conn_recv_bytes(NULL, &buf, &len, 1), QP_EINVAL);
	assert_int_equal(qp_conn_poll(NULL, 0, &r), QP_EINVAL);
	assert_int_equal(qp_conn_close(NULL), QP_EINVAL);
	qp_conn_free(NULL);

	assert_int_equal(qp_pipe(&a, &b, true), QP_OK);
	assert_int_equal(qp_conn_send_bytes(a, NULL, 0, 1), QP_EINVAL);
	assert_int_equal(qp_conn_send_bytes(a, "x", SIZE_MAX, 2), QP_EINVAL);
	assert_int_equal(qp_conn_recv_bytes(a, NULL, &len, 1), QP_EINVAL);
	assert_int_equal(qp_conn_recv(a, &buf, NULL), QP_EINVAL);
	assert_int_equal(
	    qp_conn_recv_bytes_into(a, NULL, 4, 0, &len), QP_EINVAL);
	assert_int_equal(qp_conn_poll(a, 0, NULL), QP_EINVAL);
	assert_int_equal(qp_conn_fd(a, NULL), QP_EINVAL);
	qp_conn_close(a);
	assert_int_equal(qp_conn_poll(a, 0, &r), QP_ECLOSED);
	assert_int_equal(qp_conn_set_max_message(a, 10), QP_ECLOSED);
	qp_conn_free(a);
	qp_conn_free(b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pipe_duplex_both_ways),
	    cmocka_unit_test(test_pipe_simplex_directions),
	    cmocka_unit_test(test_pipe_poll_timing),
	    cmocka_unit_test(test_pipe_recv_bytes_into_offset),
	    cmocka_unit_test(test_pipe_into_too_short_then_full),
	    cmocka_unit_test(test_pipe_maxlength_then_full),
	    cmocka_unit_test(test_pipe_zero_byte_messages),
	    cmocka_unit_test(test_pipe_obj_and_bytes),
	    cmocka_unit_test(test_pipe_eof_after_close),
	    cmocka_unit_test(test_pipe_parent_close_after_fork_is_local),
	    cmocka_unit_test(test_pipe_eof_after_kill9),
	    cmocka_unit_test(test_pipe_child_dies_before_first_use),
	    cmocka_unit_test(test_pipe_fd_readable),
	    cmocka_unit_test(test_pipe_wait_ten_three_ready),
	    cmocka_unit_test(test_pipe_max_message),
	    cmocka_unit_test(test_pipe_large_messages_stream),
	    cmocka_unit_test(test_pipe_fork_100k_random),
	    cmocka_unit_test(test_pipe_sender_unblocks_when_receiver_dies),
	    cmocka_unit_test(test_pipe_idle_wait_sleeps),
	    cmocka_unit_test(test_pipe_bad_arguments),
	};

	/* QP_TEST_FILTER=pattern runs only the matching tests. */
	if (getenv("QP_TEST_FILTER") != NULL) {
		cmocka_set_test_filter(getenv("QP_TEST_FILTER"));
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
