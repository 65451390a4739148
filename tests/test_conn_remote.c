/*
 * test_conn_remote.c - Connections across hosts: qp_listen / accept /
 * qp_dial over tcp://127.0.0.1:0 and ipc:// (Python's connection.Listener
 * and Client), their wire (SP pair1, checked against a real nng pair1
 * socket), end of file, limits, and qp_wait over shared-memory and remote
 * connections together. Peers in other processes are the qp_pipe_peer
 * helper, started with fork+exec (nng's threads do not survive a bare
 * fork); they report through their exit status. A bare fork's child only
 * checks that it is refused cleanly (the forked_child tests).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>

#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/protocol/reqrep0/req.h>

#include "pipe_util.h"
#include "qpi.h"
#include "wire.h"

/* The end of file after a peer's death arrives within milliseconds (a
 * pidfd or the socket's close); the bound is wide because a shared, busy
 * machine can hold either process off the CPU for tens of ms. Without the
 * end of file the recv would block until the test's own timeout. */
#define EOF_WITHIN_US 1000000

static char tmpdir[64];

static int
setup(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/qp-conn-XXXXXX");
	return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void
ipc_url(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "ipc://%s/%s", tmpdir, name);
}

/* Starts the helper program with the given arguments; returns its pid. */
static pid_t
spawn_peer(const char *a1, const char *a2, const char *a3, const char *a4)
{
	char exe[PATH_MAX], path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	assert_true(n > 0);
	exe[n] = '\0';
	snprintf(path, sizeof(path), "%s/qp_pipe_peer", dirname(exe));
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char *argv[] = {path, (char *) a1, (char *) a2, (char *) a3,
		    (char *) a4, NULL};
		execv(path, argv);
		_exit(127);
	}
	return pid;
}

/* A listener and one dialed, accepted connection pair. */
static void
connect_pair(const char *addr, qp_listener **lp, qp_conn **dp, qp_conn **ap)
{
	assert_int_equal(qp_listen(lp, addr), QP_OK);
	assert_int_equal(qp_dial(dp, qp_listener_url(*lp), 2000), QP_OK);
	assert_int_equal(qp_listener_accept(*lp, ap, 2000), QP_OK);
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

static int
send_str(qp_conn *c, const char *s)
{
	return qp_conn_send_bytes(c, s, 0, strlen(s));
}

static bool
ready(qp_conn *c, qp_duration t)
{
	bool r = false;

	assert_int_equal(qp_conn_poll(c, t, &r), QP_OK);
	return r;
}

/* The Python parity cases, on a connected pair. */
static void
exercise(qp_conn *x, qp_conn *y)
{
	void *buf;
	size_t len;
	uint8_t small[4], into[10];
	int64_t t0, dt;

	/* both ways, bytes and objects */
	assert_int_equal(send_str(x, "to y"), QP_OK);
	assert_int_equal(send_str(y, "to x"), QP_OK);
	assert_recv_str(y, "to y");
	assert_recv_str(x, "to x");
	assert_int_equal(qp_conn_send(x, "\x92\x01\xa2hi", 5), QP_OK);
	assert_int_equal(qp_conn_recv(y, &buf, &len), QP_OK);
	assert_int_equal(len, 5);
	assert_memory_equal(buf, "\x92\x01\xa2hi", 5);
	qp_free(buf);
	assert_int_equal(send_str(x, "abc"), QP_OK);
	assert_int_equal(qp_conn_recv(y, &buf, &len), QP_OK);
	assert_int_equal(len, 5);
	assert_memory_equal(buf,
	    "\xc4\x03"
	    "abc",
	    5);
	qp_free(buf);
	assert_int_equal(qp_conn_send(x, "\x2a", 1), QP_OK);
	assert_int_equal(qp_conn_recv_bytes(y, &buf, &len, SIZE_MAX), QP_OK);
	assert_int_equal(len, 1);
	assert_memory_equal(buf, "\x2a", 1);
	qp_free(buf);
	assert_int_equal(qp_conn_send(x, "\xc1", 1), QP_EINVAL);

	/* poll(0) and poll(0.2) */
	t0 = pu_now_ms();
	assert_false(ready(y, 0));
	assert_false(ready(y, 200));
	dt = pu_now_ms() - t0;
	assert_true(dt >= 180);
	assert_true(dt < 1200);

	/* 0-byte messages, a slice, recv_bytes_into with offset */
	assert_int_equal(qp_conn_send_bytes(x, NULL, 0, 0), QP_OK);
	assert_true(ready(y, 2000));
	assert_int_equal(qp_conn_recv_bytes(y, &buf, &len, 0), QP_OK);
	assert_int_equal(len, 0);
	qp_free(buf);
	assert_int_equal(qp_conn_send_bytes(x, "abcdef", 2, 3), QP_OK);
	memset(into, 0, sizeof(into));
	assert_int_equal(
	    qp_conn_recv_bytes_into(y, into, sizeof(into), 4, &len), QP_OK);
	assert_int_equal(len, 3);
	assert_memory_equal(into, "\0\0\0\0cde\0\0\0", 10);

	/* too short a buffer, maxlength exceeded: nothing lost */
	assert_int_equal(send_str(x, "hello world"), QP_OK);
	assert_int_equal(
	    qp_conn_recv_bytes_into(y, small, sizeof(small), 0, &len),
	    QP_ETOOBIG);
	assert_int_equal(len, 11);
	assert_int_equal(qp_conn_recv_bytes(y, &buf, &len, 5), QP_ETOOBIG);
	assert_int_equal(len, 11);
	assert_recv_str(y, "hello world");
}

static void
test_conn_remote_tcp_parity(void **state)
{
	qp_listener *l;
	qp_conn *d, *a;

	connect_pair("tcp://127.0.0.1:0", &l, &d, &a);
	const char *url = qp_listener_url(l);
	assert_memory_equal(url, "tcp://127.0.0.1:", 16);
	assert_true(atoi(url + 16) > 0);
	exercise(d, a);
	exercise(a, d);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

static void
test_conn_remote_ipc_parity(void **state)
{
	char url[128];
	qp_listener *l;
	qp_conn *d, *a;

	ipc_url(url, sizeof(url), "parity.sock");
	connect_pair(url, &l, &d, &a);
	assert_string_equal(qp_listener_url(l), url);
	exercise(d, a);
	exercise(a, d);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

/* One listener, many clients: one Connection each. */
static void
test_conn_remote_accept_many(void **state)
{
	qp_listener *l;
	qp_conn *d[5], *a[5];
	bool seen[5] = {false};
	char msg[8];

	assert_int_equal(qp_listen(&l, "tcp://127.0.0.1:0"), QP_OK);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(
		    qp_dial(&d[i], qp_listener_url(l), 2000), QP_OK);
		snprintf(msg, sizeof(msg), "d%d", i);
		assert_int_equal(send_str(d[i], msg), QP_OK);
	}
	for (int i = 0; i < 5; i++) {
		void *buf;
		size_t len;
		assert_int_equal(qp_listener_accept(l, &a[i], 2000), QP_OK);
		assert_int_equal(
		    qp_conn_recv_bytes(a[i], &buf, &len, SIZE_MAX), QP_OK);
		assert_int_equal(len, 2);
		int k = ((char *) buf)[1] - '0';
		assert_true(k >= 0 && k < 5);
		assert_false(seen[k]);
		seen[k] = true;
		/* answer on that connection only */
		snprintf(msg, sizeof(msg), "a%d", k);
		assert_int_equal(send_str(a[i], msg), QP_OK);
		qp_free(buf);
	}
	for (int i = 0; i < 5; i++) {
		snprintf(msg, sizeof(msg), "a%d", i);
		assert_recv_str(d[i], msg);
	}
	qp_conn *extra;
	int64_t t0 = pu_now_ms();
	assert_int_equal(qp_listener_accept(l, &extra, 100), QP_ETIMEDOUT);
	assert_true(pu_now_ms() - t0 >= 90);
	for (int i = 0; i < 5; i++) {
		qp_conn_free(d[i]);
		qp_conn_free(a[i]);
	}
	qp_listener_free(l);
}

struct streamer {
	qp_conn *c;
	size_t count;
	uint64_t seed;
	int rv;
};

static void *
stream_thread(void *arg)
{
	struct streamer *st = arg;
	uint8_t *block = malloc(PU_BLOCK);
	pu_stream s;

	pu_init(&s, block, st->seed);
	st->rv = QP_OK;
	for (size_t i = 0; i < st->count && st->rv == QP_OK; i++) {
		size_t len;
		const uint8_t *m = pu_msg(&s, &len);
		st->rv = qp_conn_send_bytes(st->c, m, 0, len);
	}
	free(block);
	return NULL;
}

/* Receives count messages of the seeded stream, checks each, and sends
 * the checksum back. */
static void
receive_stream(qp_conn *c, size_t count, uint64_t seed)
{
	uint8_t *block = malloc(PU_BLOCK), *buf = malloc(PU_MAXSIZE);
	pu_stream s;

	assert_non_null(block);
	assert_non_null(buf);
	pu_init(&s, block, seed);
	for (size_t i = 0; i < count; i++) {
		size_t want, len = 0;
		const uint8_t *m = pu_msg(&s, &want);
		int rv = qp_conn_recv_bytes_into(c, buf, PU_MAXSIZE, 0, &len);
		if (rv != QP_OK || len != want || memcmp(buf, m, len) != 0) {
			fail_msg(
			    "message %zu: rv %d (%s), %zu bytes, want %zu", i,
			    rv, qp_errmsg(), len, want);
		}
		pu_sum(&s, buf, len);
	}
	assert_int_equal(qp_conn_send_bytes(c, &s.sum, 0, 8), QP_OK);
	free(block);
	free(buf);
}

/* 100k messages of random sizes (0-64 KiB) from another process over
 * tcp://127.0.0.1, in order, checksummed. Sanitizer builds send 20k. */
static void
test_conn_remote_100k_tcp_process(void **state)
{
	const size_t count = PU_SANITIZED ? 20000 : 100000;
	char n[32];
	qp_listener *l;
	qp_conn *c;

	assert_int_equal(qp_listen(&l, "tcp://127.0.0.1:0"), QP_OK);
	snprintf(n, sizeof(n), "%zu", count);
	pid_t pid = spawn_peer("stream", qp_listener_url(l), n, "11");
	assert_int_equal(qp_listener_accept(l, &c, 10000), QP_OK);
	receive_stream(c, count, 11);
	assert_int_equal(pu_wait_child(pid), 0);
	qp_conn_free(c);
	qp_listener_free(l);
}

/* The same over ipc://, the sender a thread. */
static void
test_conn_remote_100k_ipc_thread(void **state)
{
	const size_t count = PU_SANITIZED ? 20000 : 100000;
	char url[128];
	qp_listener *l;
	qp_conn *d, *a;
	pthread_t th;
	uint64_t sum = 0;
	size_t n = 0;

	ipc_url(url, sizeof(url), "bulk.sock");
	connect_pair(url, &l, &d, &a);
	struct streamer st = {.c = d, .count = count, .seed = 12};
	assert_int_equal(pthread_create(&th, NULL, stream_thread, &st), 0);
	receive_stream(a, count, 12);
	pthread_join(th, NULL);
	assert_int_equal(st.rv, QP_OK);
	assert_int_equal(qp_conn_recv_bytes_into(d, &sum, 8, 0, &n), QP_OK);
	assert_int_equal(n, 8);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

static void
test_conn_remote_dial_refused(void **state)
{
	char url[QPI_URL_MAX + 16], ipc[128];
	qp_listener *l;
	qp_conn *c;
	int64_t t0, dt;

	/* a port that was just free */
	assert_int_equal(qp_listen(&l, "tcp://127.0.0.1:0"), QP_OK);
	snprintf(url, sizeof(url), "%s", qp_listener_url(l));
	qp_listener_free(l);

	t0 = pu_now_ms();
	assert_int_equal(qp_dial(&c, url, 0), QP_ECONNREFUSED);
	assert_true(pu_now_ms() - t0 < 500);
	assert_true(strstr(qp_errmsg(), url) != NULL);

	t0 = pu_now_ms();
	assert_int_equal(qp_dial(&c, url, 300), QP_ECONNREFUSED);
	dt = pu_now_ms() - t0;
	assert_true(dt >= 270);
	assert_true(dt < 1500);

	ipc_url(ipc, sizeof(ipc), "nobody.sock");
	assert_int_equal(qp_dial(&c, ipc, 0), QP_ECONNREFUSED);

	/* bad addresses */
	assert_int_equal(qp_dial(&c, "jobs", 0), QP_EINVAL);
	assert_int_equal(qp_dial(&c, "tcp://127.0.0.1:0", 0), QP_EINVAL);
	assert_int_equal(qp_dial(&c, "tcp://127.0.0.1:1", -5), QP_EINVAL);
	assert_int_equal(qp_listen(&l, "udp://x:1"), QP_EINVAL);
	assert_int_equal(qp_dial(NULL, url, 0), QP_EINVAL);
}

struct late_listener {
	char url[128];
	int delay_ms;
	qp_listener *l;
};

static void *
late_listen(void *arg)
{
	struct late_listener *ll = arg;

	pu_sleep_ms(ll->delay_ms);
	if (qp_listen(&ll->l, ll->url) != QP_OK) {
		ll->l = NULL;
	}
	return NULL;
}

/* A dial with a timeout waits for a listener that comes up later. */
static void
test_conn_remote_dial_retries(void **state)
{
	struct late_listener ll = {.delay_ms = 300};
	pthread_t th;
	qp_conn *d, *a;

	ipc_url(ll.url, sizeof(ll.url), "late.sock");
	assert_int_equal(pthread_create(&th, NULL, late_listen, &ll), 0);
	int64_t t0 = pu_now_ms();
	assert_int_equal(qp_dial(&d, ll.url, 5000), QP_OK);
	assert_true(pu_now_ms() - t0 >= 250);
	pthread_join(th, NULL);
	assert_non_null(ll.l);
	assert_int_equal(qp_listener_accept(ll.l, &a, 2000), QP_OK);
	assert_int_equal(send_str(d, "late"), QP_OK);
	assert_recv_str(a, "late");
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(ll.l);
}

static void
test_conn_remote_eof_after_close(void **state)
{
	qp_listener *l;
	qp_conn *d, *a;
	void *buf;
	size_t len;

	connect_pair("tcp://127.0.0.1:0", &l, &d, &a);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(send_str(d, "m"), QP_OK);
	}
	assert_int_equal(qp_conn_close(d), QP_OK);
	assert_int_equal(qp_conn_close(d), QP_OK);
	assert_int_equal(send_str(d, "x"), QP_ECLOSED);
	for (int i = 0; i < 3; i++) {
		assert_recv_str(a, "m");
	}
	int64_t t0 = pu_now_ms();
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 9), QP_ECLOSED);
	assert_true(pu_now_ms() - t0 < 500);
	assert_true(ready(a, 0));
	int fd;
	assert_int_equal(qp_conn_fd(a, &fd), QP_OK);
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	assert_int_equal(poll(&pfd, 1, 0), 1);
	assert_int_equal(send_str(a, "to nobody"), QP_ECLOSED);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

/* kill -9 of the peer process: end of file within 100 ms. */
static void
test_conn_remote_eof_after_kill9(void **state)
{
	qp_listener *l;
	qp_conn *c;
	void *buf;
	size_t len;

	assert_int_equal(qp_listen(&l, "tcp://127.0.0.1:0"), QP_OK);
	pid_t pid = spawn_peer("hold", qp_listener_url(l), NULL, NULL);
	assert_int_equal(qp_listener_accept(l, &c, 10000), QP_OK);
	assert_recv_str(c, "ready");
	kill(pid, SIGKILL);
	int64_t t0 = pu_now_us();
	assert_int_equal(
	    qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX), QP_ECLOSED);
	assert_true(pu_now_us() - t0 < EOF_WITHIN_US);
	assert_int_equal(pu_wait_child(pid), 128 + SIGKILL);
	qp_conn_free(c);
	qp_listener_free(l);
}

/* The fd and qp_wait over shared-memory and remote connections. */
static void
test_conn_remote_fd_and_wait(void **state)
{
	qp_listener *l;
	qp_conn *d, *a, *pa, *pb;
	struct pollfd pfd = {.events = POLLIN};
	bool rd[2];
	size_t n;

	connect_pair("tcp://127.0.0.1:0", &l, &d, &a);
	assert_int_equal(qp_pipe(&pa, &pb, true), QP_OK);
	assert_int_equal(qp_conn_fd(a, &pfd.fd), QP_OK);
	assert_int_equal(poll(&pfd, 1, 0), 0);
	assert_int_equal(send_str(d, "x"), QP_OK);
	assert_int_equal(poll(&pfd, 1, 2000), 1);
	assert_recv_str(a, "x");
	assert_int_equal(poll(&pfd, 1, 0), 0);

	qp_conn *set[2] = {pa, a};
	assert_int_equal(qp_wait(set, 2, 0, rd, &n), QP_OK);
	assert_int_equal(n, 0);
	assert_int_equal(send_str(d, "remote"), QP_OK);
	assert_int_equal(qp_wait(set, 2, 2000, rd, &n), QP_OK);
	assert_int_equal(n, 1);
	assert_false(rd[0]);
	assert_true(rd[1]);
	assert_recv_str(a, "remote");
	assert_int_equal(send_str(pb, "local"), QP_OK);
	assert_int_equal(qp_wait(set, 2, QP_FOREVER, rd, &n), QP_OK);
	assert_int_equal(n, 1);
	assert_true(rd[0]);
	assert_recv_str(pa, "local");
	qp_conn_close(d);
	assert_int_equal(qp_wait(set, 2, 2000, rd, &n), QP_OK);
	assert_int_equal(n, 1);
	assert_true(rd[1]);
	qp_conn_free(pa);
	qp_conn_free(pb);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

static void
test_conn_remote_max_message(void **state)
{
	qp_listener *l;
	qp_conn *d, *a;
	void *buf;
	size_t len;
	uint8_t *big = calloc(1, 5000);

	assert_non_null(big);
	connect_pair("tcp://127.0.0.1:0", &l, &d, &a);
	assert_int_equal(qp_conn_set_max_message(d, 1000), QP_OK);
	assert_int_equal(qp_conn_send_bytes(d, big, 0, 1001), QP_ETOOBIG);
	assert_false(ready(a, 100));
	assert_int_equal(qp_conn_send_bytes(d, big, 0, 1000), QP_OK);
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_OK);
	assert_int_equal(len, 1000);
	qp_free(buf);
	/* a receiver with the same maximum takes a message of that size */
	assert_int_equal(qp_conn_set_max_message(a, 1000), QP_OK);
	assert_int_equal(qp_conn_send_bytes(d, big, 0, 1000), QP_OK);
	assert_int_equal(qp_conn_recv(a, &buf, &len), QP_OK);
	assert_int_equal(len, 1003);
	qp_free(buf);

	/* a receiver whose maximum is smaller ends the connection: the
	 * stream cannot skip a frame it will not take */
	assert_int_equal(qp_conn_set_max_message(a, 2000), QP_OK);
	assert_int_equal(qp_conn_set_max_message(d, 5000), QP_OK);
	assert_int_equal(send_str(d, "before"), QP_OK);
	assert_int_equal(qp_conn_send_bytes(d, big, 0, 5000), QP_OK);
	assert_recv_str(a, "before");
	assert_int_equal(
	    qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_ETOOBIG);
	assert_true(strstr(qp_errmsg(), "5") != NULL);
	free(big);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

/* A 20 MiB message, and a too-small buffer first: told the size, then
 * read whole. */
static void
test_conn_remote_large_message(void **state)
{
	const size_t big = 20u << 20;
	char url[128];
	qp_listener *l;
	qp_conn *d, *a;
	uint8_t *src = malloc(big), *dst = malloc(big), small[16];
	uint64_t st = 5;
	size_t len = 0;

	assert_non_null(src);
	assert_non_null(dst);
	for (size_t i = 0; i < big; i += 8) {
		uint64_t v = pu_next(&st);
		memcpy(src + i, &v, 8);
	}
	ipc_url(url, sizeof(url), "large.sock");
	connect_pair(url, &l, &d, &a);
	assert_int_equal(qp_conn_send_bytes(d, src, 0, big), QP_OK);
	assert_int_equal(send_str(d, "after"), QP_OK);
	assert_int_equal(
	    qp_conn_recv_bytes_into(a, small, sizeof(small), 0, &len),
	    QP_ETOOBIG);
	assert_int_equal(len, big);
	assert_int_equal(qp_conn_recv_bytes_into(a, dst, big, 0, &len), QP_OK);
	assert_int_equal(len, big);
	assert_memory_equal(dst, src, big);
	assert_recv_str(a, "after");
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
	free(src);
	free(dst);
}

/* A plain nng pair1 client's side of the hello (PROTOCOL.md, direct
 * connections): sends it and checks the listener's answer. */
static void
nng_client_hello(nng_socket s)
{
	qpi_wire_req req;
	qpi_wire_rep rep;
	qpi_wire_buf b = {0};
	char *r;
	size_t rl;

	memset(&req, 0, sizeof(req));
	req.op = QPI_OP_HELLO;
	req.req_id = 7;
	memset(req.client_id, 0xab, sizeof(req.client_id));
	snprintf(req.client_name, sizeof(req.client_name), "nng-test");
	assert_int_equal(qpi_wire_encode_req(&req, &b), QP_OK);
	assert_int_equal(nng_send(s, b.data, b.len, 0), 0);
	qpi_wire_buf_free(&b);
	assert_int_equal(nng_recv(s, &r, &rl, NNG_FLAG_ALLOC), 0);
	memset(&rep, 0, sizeof(rep));
	assert_int_equal(qpi_wire_decode_rep(r, rl, NULL, &rep), QP_OK);
	assert_int_equal(rep.op, QPI_OP_HELLO);
	assert_int_equal(rep.req_id, 7);
	assert_int_equal(rep.status, QP_OK);
	assert_false(rep.auth_required);
	assert_int_equal(rep.limits.max_message, QP_DEFAULT_MAX_MESSAGE);
	assert_string_equal(rep.server_version, QP_VERSION_STRING);
	nng_free(r, rl);
}

/* A plain nng pair1 listener's side of the hello, answering with the
 * given limit; run on a thread while qp_dial waits for it. */
struct nng_server {
	nng_socket s;
	uint64_t max;
	int rv;
};

static void *
nng_server_hello(void *arg)
{
	struct nng_server *ns = arg;
	qpi_wire_req req;
	qpi_wire_rep rep;
	qpi_wire_buf b = {0};
	char *r;
	size_t rl;

	ns->rv = -1;
	if (nng_recv(ns->s, &r, &rl, NNG_FLAG_ALLOC) != 0) {
		return NULL;
	}
	memset(&req, 0, sizeof(req));
	int drv = qpi_wire_decode_req(r, rl, NULL, &req);
	nng_free(r, rl);
	if (drv != QP_OK || req.op != QPI_OP_HELLO) {
		return NULL;
	}
	memset(&rep, 0, sizeof(rep));
	rep.op = QPI_OP_HELLO;
	rep.req_id = req.req_id;
	snprintf(rep.server_version, sizeof(rep.server_version), "nng");
	rep.limits.max_message = ns->max;
	rep.limits.max_batch = 1;
	if (qpi_wire_encode_rep(&rep, &b) == QP_OK
	    && nng_send(ns->s, b.data, b.len, 0) == 0) {
		ns->rv = 0;
	}
	qpi_wire_buf_free(&b);
	return NULL;
}

/* The wire is SP pair1 with a hello first: a plain nng pair1 socket talks
 * to both ends. */
static void
test_conn_remote_nng_pair1_interop(void **state)
{
	nng_socket s;
	qp_listener *l;
	qp_conn *c;
	char *rbuf;
	size_t rlen;
	void *buf;
	size_t len;

	/* nng dials our listener */
	assert_int_equal(qp_listen(&l, "tcp://127.0.0.1:0"), QP_OK);
	assert_int_equal(nng_pair1_open(&s), 0);
	assert_int_equal(nng_setopt_ms(s, NNG_OPT_RECVTIMEO, 2000), 0);
	assert_int_equal(nng_dial(s, qp_listener_url(l), NULL, 0), 0);
	/* no connection before the hello */
	assert_int_equal(qp_listener_accept(l, &c, 100), QP_ETIMEDOUT);
	nng_client_hello(s);
	assert_int_equal(qp_listener_accept(l, &c, 2000), QP_OK);
	assert_int_equal(nng_send(s, "\xc4\x02hi", 4, 0), 0);
	assert_recv_str(c, "hi");
	assert_int_equal(send_str(c, "yo"), QP_OK);
	assert_int_equal(nng_recv(s, &rbuf, &rlen, NNG_FLAG_ALLOC), 0);
	assert_int_equal(rlen, 4);
	assert_memory_equal(rbuf, "\xc4\x02yo", 4);
	nng_free(rbuf, rlen);
	/* a frame that is not msgpack breaks the connection */
	assert_int_equal(nng_send(s, "\xc1", 1, 0), 0);
	assert_int_equal(
	    qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX), QP_EPROTO);
	nng_close(s);
	qp_conn_free(c);
	qp_listener_free(l);

	/* we dial an nng pair1 listener, over ipc; its hello says it takes
	 * at most 100 bytes, which our sends then respect */
	char url[128];
	nng_listener nl;
	pthread_t th;
	ipc_url(url, sizeof(url), "nng.sock");
	assert_int_equal(nng_pair1_open(&s), 0);
	assert_int_equal(nng_setopt_ms(s, NNG_OPT_RECVTIMEO, 2000), 0);
	assert_int_equal(nng_listen(s, url, &nl, 0), 0);
	struct nng_server ns = {.s = s, .max = 100};
	assert_int_equal(pthread_create(&th, NULL, nng_server_hello, &ns), 0);
	assert_int_equal(qp_dial(&c, url, 2000), QP_OK);
	pthread_join(th, NULL);
	assert_int_equal(ns.rv, 0);
	assert_int_equal(qp_conn_send(c, "\x93\x01\x02\x03", 4), QP_OK);
	assert_int_equal(nng_recv(s, &rbuf, &rlen, NNG_FLAG_ALLOC), 0);
	assert_int_equal(rlen, 4);
	assert_memory_equal(rbuf, "\x93\x01\x02\x03", 4);
	nng_free(rbuf, rlen);
	uint8_t big[101] = {0};
	assert_int_equal(qp_conn_send_bytes(c, big, 0, 101), QP_ETOOBIG);
	assert_int_equal(qp_conn_send_bytes(c, big, 0, 100), QP_OK);
	assert_int_equal(nng_recv(s, &rbuf, &rlen, NNG_FLAG_ALLOC), 0);
	assert_int_equal(rlen, 102); /* the bin header and 100 bytes */
	nng_free(rbuf, rlen);
	assert_int_equal(nng_send(s,
	                     "\xa3"
	                     "abc",
	                     4, 0),
	    0);
	assert_int_equal(qp_conn_recv(c, &buf, &len), QP_OK);
	assert_int_equal(len, 4);
	assert_memory_equal(buf,
	    "\xa3"
	    "abc",
	    4);
	qp_free(buf);
	qp_conn_free(c);
	nng_close(s);

	/* a socket of another protocol is turned away */
	assert_int_equal(qp_listen(&l, "tcp://127.0.0.1:0"), QP_OK);
	assert_int_equal(nng_req0_open(&s), 0);
	assert_int_equal(
	    nng_dial(s, qp_listener_url(l), NULL, NNG_FLAG_NONBLOCK), 0);
	assert_int_equal(qp_listener_accept(l, &c, 300), QP_ETIMEDOUT);
	nng_close(s);
	qp_listener_free(l);
}

/* A tls+tcp:// listener needs its certificate (tests/test_tls.c has the
 * rest). */
static void
test_conn_remote_tls_needs_certificate(void **state)
{
	qp_listener *l;

	assert_int_equal(qp_listen(&l, "tls+tcp://127.0.0.1:0"), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "certificate"));
}

/* A listener freed with clients never accepted drops them cleanly. */
static void
test_conn_remote_listener_free_drops_pending(void **state)
{
	qp_listener *l;
	qp_conn *d;
	void *buf;
	size_t len;

	assert_int_equal(qp_listen(&l, "tcp://127.0.0.1:0"), QP_OK);
	assert_int_equal(qp_dial(&d, qp_listener_url(l), 2000), QP_OK);
	assert_int_equal(send_str(d, "unheard"), QP_OK);
	pu_sleep_ms(50);
	qp_listener_free(l);
	assert_int_equal(qp_conn_recv_bytes(d, &buf, &len, 9), QP_ECLOSED);
	qp_conn_free(d);
}

/* ---- fork(): a connection stays with the process that made it ---- */

/* In a forked child: reports a failed check on stderr and exits 1. */
#define CHILD_CHECK(cond)                                            \
	do {                                                         \
		if (!(cond)) {                                       \
			fprintf(stderr, "child: line %d: %s (%s)\n", \
			    __LINE__, #cond, qp_errmsg());           \
			_exit(1);                                    \
		}                                                    \
	} while (0)

/* The error a forked child gets for a handle made before the fork. */
#define CHILD_REFUSED(call)                                         \
	do {                                                        \
		CHILD_CHECK((call) == QP_EINVAL);                   \
		CHILD_CHECK(strstr(qp_errmsg(), "fork()") != NULL); \
	} while (0)

/* A listener and a connected pair made before fork(): the child gets a
 * clear error from every call on them, closes and frees them without
 * touching the parent's connections (nng's, whose threads stayed in the
 * parent), and exits normally; the parent's connections work on. */
static void
forked_child_body(const char *addr)
{
	qp_listener *l;
	qp_conn *d, *a, *c2, *a2;
	bool r = false;
	size_t n = 0;
	void *buf;
	size_t len;
	int fd;

	connect_pair(addr, &l, &d, &a);
	/* a has a message queued when the child is made */
	assert_int_equal(send_str(d, "before"), QP_OK);
	assert_true(ready(a, 2000));
	pid_t pid = pu_fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* a hang or a crash is the child's death, seen by the parent
		 * (not cmocka's handler going on with the tests here) */
		alarm(20);
		signal(SIGSEGV, SIG_DFL);
		uint8_t into[16];
		CHILD_REFUSED(send_str(d, "from the child"));
		CHILD_REFUSED(qp_conn_send(a, "\xc0", 1));
		CHILD_REFUSED(qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX));
		CHILD_REFUSED(qp_conn_recv(a, &buf, &len));
		CHILD_REFUSED(
		    qp_conn_recv_bytes_into(a, into, sizeof(into), 0, &len));
		CHILD_REFUSED(qp_conn_poll(a, 0, &r));
		CHILD_REFUSED(qp_conn_poll(d, 100, &r));
		CHILD_REFUSED(qp_conn_fd(a, &fd));
		CHILD_REFUSED(qp_conn_set_max_message(a, 100));
		CHILD_REFUSED(qp_wait(&a, 1, 0, &r, &n));
		CHILD_REFUSED(qp_listener_accept(l, &c2, 0));
		CHILD_CHECK(strcmp(qp_listener_url(l), "") != 0);
		/* close releases the child's claim only: later calls say
		 * closed; free releases the child's memory */
		CHILD_CHECK(qp_conn_close(d) == QP_OK);
		CHILD_CHECK(qp_conn_close(d) == QP_OK);
		CHILD_CHECK(send_str(d, "x") == QP_ECLOSED);
		qp_conn_free(d);
		qp_conn_free(a);
		qp_listener_free(l);
		/* Not exit(): the heap is the parent's copy, nng's included.
		 */
		_exit(0);
	}
	assert_int_equal(pu_wait_child(pid), 0);
	/* The parent's pair works on, both ways; the child sent nothing. */
	assert_recv_str(a, "before");
	assert_false(ready(a, 50));
	assert_int_equal(send_str(d, "after"), QP_OK);
	assert_recv_str(a, "after");
	assert_int_equal(send_str(a, "back"), QP_OK);
	assert_recv_str(d, "back");
	/* and so does the listener */
	assert_int_equal(qp_dial(&c2, qp_listener_url(l), 2000), QP_OK);
	assert_int_equal(qp_listener_accept(l, &a2, 2000), QP_OK);
	assert_int_equal(send_str(c2, "new"), QP_OK);
	assert_recv_str(a2, "new");
	assert_int_equal(qp_conn_close(d), QP_OK);
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 9), QP_ECLOSED);
	qp_conn_free(c2);
	qp_conn_free(a2);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

static void
test_conn_remote_forked_child_tcp(void **state)
{
	forked_child_body("tcp://127.0.0.1:0");
}

static void
test_conn_remote_forked_child_ipc(void **state)
{
	char addr[128];

	ipc_url(addr, sizeof(addr), "fork.sock");
	forked_child_body(addr);
}

/* A child forked after this process used nng cannot start nng again (nng
 * panics): a new listen or dial on nng there is refused with a clear
 * error; direct connections, remote queues and pipes on plain sockets
 * need no nng: the child dials the parent's listener, whose accept gets
 * it. */
static void
test_conn_remote_forked_child_new(void **state)
{
	qp_listener *l, *l2 = NULL;
	qp_conn *d, *a, *c = NULL, *a2;
	qp_queue *q = NULL;
	char url[400], qurl[450], *env = getenv("QPIPE_TRANSPORT");

	env = env != NULL ? strdup(env) : NULL;
	setenv("QPIPE_TRANSPORT", "nng", 1);
	connect_pair("tcp://127.0.0.1:0", &l, &d, &a);
	snprintf(url, sizeof(url), "%s", qp_listener_url(l));
	snprintf(qurl, sizeof(qurl), "%s/jobs", url);
	pid_t pid = pu_fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(20);
		signal(SIGSEGV, SIG_DFL);
		CHILD_REFUSED(qp_dial(&c, url, 1000));
		CHILD_CHECK(c == NULL);
		CHILD_REFUSED(qp_listen(&l2, "tcp://127.0.0.1:0"));
		CHILD_CHECK(l2 == NULL);
		unsetenv("QPIPE_TRANSPORT");
		/* Remote queues and pipes on plain sockets need no nng: they
		 * dial, and find a pair1 peer, not a qpiped. */
		CHILD_CHECK(qp_queue_open(&q, qurl, NULL) == QP_EPROTO);
		CHILD_CHECK(qp_pipe_open(&c, qurl, -1, true) == QP_EPROTO);
		/* nor do direct connections */
		CHILD_CHECK(qp_listen(&l2, "tcp://127.0.0.1:0") == QP_OK);
		qp_listener_free(l2);
		CHILD_CHECK(qp_dial(&c, url, 2000) == QP_OK);
		CHILD_CHECK(send_str(c, "child") == QP_OK);
		qp_conn_free(c);
		/* what needs no network still works */
		qp_conn *pa, *pb;
		void *buf;
		size_t len;
		CHILD_CHECK(qp_pipe(&pa, &pb, true) == QP_OK);
		CHILD_CHECK(send_str(pa, "local") == QP_OK);
		CHILD_CHECK(
		    qp_conn_recv_bytes(pb, &buf, &len, SIZE_MAX) == QP_OK);
		CHILD_CHECK(len == 5 && memcmp(buf, "local", 5) == 0);
		qp_free(buf);
		qp_conn_free(pa);
		qp_conn_free(pb);
		_exit(0);
	}
	if (env != NULL) {
		setenv("QPIPE_TRANSPORT", env, 1);
	} else {
		unsetenv("QPIPE_TRANSPORT");
	}
	free(env);
	assert_int_equal(pu_wait_child(pid), 0);
	assert_int_equal(send_str(d, "still"), QP_OK);
	assert_recv_str(a, "still");
	assert_int_equal(qp_listener_accept(l, &a2, 2000), QP_OK);
	assert_recv_str(a2, "child");
	qp_conn_free(a2);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_conn_remote_tcp_parity),
	    cmocka_unit_test(test_conn_remote_ipc_parity),
	    cmocka_unit_test(test_conn_remote_accept_many),
	    cmocka_unit_test(test_conn_remote_100k_tcp_process),
	    cmocka_unit_test(test_conn_remote_100k_ipc_thread),
	    cmocka_unit_test(test_conn_remote_dial_refused),
	    cmocka_unit_test(test_conn_remote_dial_retries),
	    cmocka_unit_test(test_conn_remote_eof_after_close),
	    cmocka_unit_test(test_conn_remote_eof_after_kill9),
	    cmocka_unit_test(test_conn_remote_fd_and_wait),
	    cmocka_unit_test(test_conn_remote_max_message),
	    cmocka_unit_test(test_conn_remote_large_message),
	    cmocka_unit_test(test_conn_remote_nng_pair1_interop),
	    cmocka_unit_test(test_conn_remote_tls_needs_certificate),
	    cmocka_unit_test(test_conn_remote_listener_free_drops_pending),
	    cmocka_unit_test(test_conn_remote_forked_child_tcp),
	    cmocka_unit_test(test_conn_remote_forked_child_ipc),
	    cmocka_unit_test(test_conn_remote_forked_child_new),
	};

	/* QP_TEST_FILTER=pattern runs only the matching tests. */
	if (getenv("QP_TEST_FILTER") != NULL) {
		cmocka_set_test_filter(getenv("QP_TEST_FILTER"));
	}
	return cmocka_run_group_tests(tests, setup, teardown);
}
