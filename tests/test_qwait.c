/*
 * test_qwait.c - a get over many queues and the queues' readiness fds
 * (qwait.c): getters blocked on 2 to 10 queues wake on a put to any one
 * of them, in shared memory, on one server, and mixed; when several have
 * items the first listed gives first; the fds under poll(2) and epoll;
 * qp_wait_any over a pipe and queues. Each scenario runs in a child
 * process (CHECK reports through its exit status).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

/* The server helpers are shared; this file uses some of them. */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "qpipe.h"
#include "qps_testsrv.h"

#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>

static char qw_tag[32];

/* Opens queue i of a set: on server s (tcp), or in shared memory. */
static qp_queue *
open_i(const tsrv *s, int i, const char *set)
{
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	char addr[400];
	qp_queue *q = NULL;

	if (s != NULL) {
		snprintf(addr, sizeof(addr), "%s/qw%s_%s%d", s->url, qw_tag,
		    set, i);
	} else {
		snprintf(
		    addr, sizeof(addr), "shm://qw%s_%s%d", qw_tag, set, i);
	}
	CHECK(qp_queue_open(&q, addr, &o) == QP_OK);
	return q;
}

static void
unlink_i(const tsrv *s, int i, const char *set)
{
	char addr[400];

	if (s == NULL) {
		snprintf(
		    addr, sizeof(addr), "shm://qw%s_%s%d", qw_tag, set, i);
		qp_queue_unlink(addr);
	}
}

typedef struct getter {
	qp_queue **qs;
	size_t n;
	int rc;
	size_t which;
	char got[32];
	long long done_ms;
} getter;

static void *
getter_main(void *arg)
{
	getter *g = arg;
	void *buf = NULL;
	size_t len = 0;

	g->rc = qp_queue_get_any(g->qs, g->n, &g->which, &buf, &len, 10000);
	if (g->rc == QP_OK) {
		snprintf(g->got, sizeof(g->got), "%.*s", (int) len,
		    (const char *) buf);
		qp_free(buf);
	}
	g->done_ms = tsrv_now_ms();
	return NULL;
}

/* kinds[i]: 'l' a shared-memory queue, 'r' one on server s. A getter
 * blocks on all of them; a put from other handles to queue j wakes it
 * with that item, for every j in turn. */
static void
wake_each(const tsrv *s, const char *kinds)
{
	size_t n = strlen(kinds);
	qp_queue *mine[16], *theirs[16];

	for (size_t i = 0; i < n; i++) {
		mine[i] = open_i(kinds[i] == 'r' ? s : NULL, (int) i, "w");
		theirs[i] = open_i(kinds[i] == 'r' ? s : NULL, (int) i, "w");
	}
	for (size_t j = 0; j < n; j++) {
		getter g = {.qs = mine, .n = n, .rc = -1};
		pthread_t t;
		char item[32];
		CHECK(pthread_create(&t, NULL, getter_main, &g) == 0);
		tsrv_sleep_ms(150);
		CHECK(__atomic_load_n(&g.rc, __ATOMIC_SEQ_CST) == -1);
		snprintf(item, sizeof(item), "item%zu", j);
		long long t0 = tsrv_now_ms();
		CHECK(qp_queue_put(theirs[j], item, strlen(item), 1000)
		    == QP_OK);
		CHECK(pthread_join(t, NULL) == 0);
		CHECK_EQ(g.rc, QP_OK);
		CHECK_EQ(g.which, j);
		CHECK(strcmp(g.got, item) == 0);
		CHECK(g.done_ms - t0 < 2000);
	}
	for (size_t i = 0; i < n; i++) {
		qp_queue_free(mine[i]);
		qp_queue_free(theirs[i]);
		unlink_i(kinds[i] == 'r' ? s : NULL, (int) i, "w");
	}
}

/* Items put in reverse order come out first-listed first. */
static void
order_each(const tsrv *s, const char *kinds)
{
	size_t n = strlen(kinds), which;
	qp_queue *qs[16];
	void *buf;
	size_t len;

	for (size_t i = 0; i < n; i++) {
		qs[i] = open_i(kinds[i] == 'r' ? s : NULL, (int) i, "o");
	}
	for (size_t i = n; i-- > 0;) {
		char item[32];
		snprintf(item, sizeof(item), "o%zu", i);
		CHECK(qp_queue_put(qs[i], item, strlen(item), 1000) == QP_OK);
		CHECK(qp_queue_put(qs[i], item, strlen(item), 1000) == QP_OK);
	}
	for (size_t i = 0; i < n; i++) {
		for (int k = 0; k < 2; k++) {
			char want[32];
			snprintf(want, sizeof(want), "o%zu", i);
			CHECK(qp_queue_get_any(qs, n, &which, &buf, &len, 1000)
			    == QP_OK);
			CHECK_EQ(which, i);
			CHECK(len == strlen(want)
			    && memcmp(buf, want, len) == 0);
			qp_free(buf);
		}
	}
	long long t0 = tsrv_now_ms();
	CHECK_EQ(qp_queue_get_any(qs, n, &which, &buf, &len, 200), QP_EEMPTY);
	CHECK(tsrv_now_ms() - t0 >= 190);
	CHECK_EQ(
	    qp_queue_get_any(qs, n, &which, &buf, &len, QP_NOWAIT), QP_EEMPTY);
	for (size_t i = 0; i < n; i++) {
		qp_queue_free(qs[i]);
		unlink_i(kinds[i] == 'r' ? s : NULL, (int) i, "o");
	}
}

static int
poll1(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	return poll(&p, 1, ms);
}

/* The fd: quiet while empty, readable within moments of a put from
 * another handle (poll and epoll), cleared by qp_queue_poll once the
 * item is gone. */
static void
fd_check(const tsrv *s)
{
	qp_queue *q = open_i(s, 0, "f"), *p = open_i(s, 0, "f");
	bool ready = true;
	void *buf;
	size_t len;
	int fd = -1, ep;
	struct epoll_event ev = {.events = EPOLLIN}, out;

	CHECK(qp_queue_fd(q, &fd) == QP_OK && fd >= 0);
	CHECK_EQ(poll1(fd, 100), 0);
	CHECK(qp_queue_poll(q, 0, &ready) == QP_OK && !ready);
	CHECK((ep = epoll_create1(0)) >= 0);
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
	CHECK_EQ(epoll_wait(ep, &out, 1, 50), 0);
	CHECK(qp_queue_put(p, "x", 1, 1000) == QP_OK);
	CHECK_EQ(epoll_wait(ep, &out, 1, 2000), 1);
	CHECK_EQ(poll1(fd, 2000), 1);
	CHECK(qp_queue_poll(q, 0, &ready) == QP_OK && ready);
	CHECK(qp_queue_get(q, &buf, &len, 1000) == QP_OK);
	CHECK(len == 1 && memcmp(buf, "x", 1) == 0);
	qp_free(buf);
	/* Gone: at most one spurious wake-up, then quiet. */
	CHECK(qp_queue_poll(q, 0, &ready) == QP_OK && !ready);
	CHECK_EQ(poll1(fd, 100), 0);
	/* Two items, one got: still readable. */
	CHECK(qp_queue_put(p, "a", 1, 1000) == QP_OK);
	CHECK(qp_queue_put(p, "b", 1, 1000) == QP_OK);
	CHECK_EQ(poll1(fd, 2000), 1);
	CHECK(qp_queue_get(q, &buf, &len, 1000) == QP_OK);
	CHECK(len == 1 && memcmp(buf, "a", 1) == 0);
	qp_free(buf);
	CHECK_EQ(poll1(fd, 2000), 1);
	CHECK(qp_queue_poll(q, 1000, &ready) == QP_OK && ready);
	CHECK(qp_queue_get(q, &buf, &len, 1000) == QP_OK);
	CHECK(len == 1 && memcmp(buf, "b", 1) == 0);
	qp_free(buf);
	CHECK(qp_queue_poll(q, 0, &ready) == QP_OK && !ready);
	CHECK_EQ(poll1(fd, 100), 0);
	/* qp_queue_poll waits for a put. */
	CHECK(qp_queue_poll(q, 100, &ready) == QP_OK && !ready);
	close(ep);
	qp_queue_free(q);
	qp_queue_free(p);
	unlink_i(s, 0, "f");
}

static void
shm_body(void)
{
	snprintf(qw_tag, sizeof(qw_tag), "%d", (int) getpid());
	wake_each(NULL, "ll");
	wake_each(NULL, "lllll");
	wake_each(NULL, "llllllllll");
	order_each(NULL, "llll");
	fd_check(NULL);
}

static void
test_qwait_shm(void **state)
{
	(void) state;
	tsrv_scenario0(shm_body);
}

static void
remote_body(void)
{
	tsrv s = {0};

	snprintf(qw_tag, sizeof(qw_tag), "%d", (int) getpid());
	CHECK(tsrv_start(&s, "tcp") == 0);
	wake_each(&s, "rr");
	wake_each(&s, "rrrrrrrrrr");
	order_each(&s, "rrr");
	fd_check(&s);
	CHECK(tsrv_stop(&s));
}

static void
test_qwait_one_server(void **state)
{
	(void) state;
	tsrv_scenario0(remote_body);
}

static void
mixed_body(void)
{
	tsrv s = {0};

	snprintf(qw_tag, sizeof(qw_tag), "%d", (int) getpid());
	CHECK(tsrv_start(&s, "tcp") == 0);
	wake_each(&s, "rl");
	wake_each(&s, "lrlrlrr");
	order_each(&s, "rlrl");
	CHECK(tsrv_stop(&s));
}

static void
test_qwait_mixed(void **state)
{
	(void) state;
	tsrv_scenario0(mixed_body);
}

/* qp_wait_any: a pipe end and queues of both kinds, one becomes ready at
 * a time; the others stay not ready. */
static void
wait_body(void)
{
	tsrv s = {0};
	qp_conn *a, *b;
	qp_queue *qs[2], *ps[2];
	bool cr[1], qr[2];
	size_t n;
	void *buf;
	size_t len;

	snprintf(qw_tag, sizeof(qw_tag), "%d", (int) getpid());
	CHECK(tsrv_start(&s, "tcp") == 0);
	CHECK(qp_pipe(&a, &b, true) == QP_OK);
	qs[0] = open_i(NULL, 0, "a");
	qs[1] = open_i(&s, 1, "a");
	ps[0] = open_i(NULL, 0, "a");
	ps[1] = open_i(&s, 1, "a");
	CHECK(qp_wait_any(&a, 1, cr, qs, 2, qr, 100, &n) == QP_OK);
	CHECK_EQ(n, 0);
	CHECK(qp_queue_put(ps[1], "r", 1, 1000) == QP_OK);
	CHECK(qp_wait_any(&a, 1, cr, qs, 2, qr, 2000, &n) == QP_OK);
	CHECK(n == 1 && !cr[0] && !qr[0] && qr[1]);
	CHECK(qp_queue_get(qs[1], &buf, &len, 1000) == QP_OK);
	qp_free(buf);
	CHECK(qp_queue_put(ps[0], "l", 1, 1000) == QP_OK);
	CHECK(qp_wait_any(&a, 1, cr, qs, 2, qr, 2000, &n) == QP_OK);
	CHECK(n == 1 && !cr[0] && qr[0] && !qr[1]);
	CHECK(qp_queue_get(qs[0], &buf, &len, 1000) == QP_OK);
	qp_free(buf);
	CHECK(qp_conn_send_bytes(b, "p", 0, 1) == QP_OK);
	CHECK(qp_wait_any(&a, 1, cr, qs, 2, qr, 2000, &n) == QP_OK);
	CHECK(n == 1 && cr[0] && !qr[0] && !qr[1]);
	qp_conn_free(a);
	qp_conn_free(b);
	for (int i = 0; i < 2; i++) {
		qp_queue_free(qs[i]);
		qp_queue_free(ps[i]);
	}
	unlink_i(NULL, 0, "a");
	CHECK(tsrv_stop(&s));
}

static void
test_qwait_wait_any(void **state)
{
	(void) state;
	tsrv_scenario0(wait_body);
}

/* A remote handle's item kept ahead goes back to the queue when the
 * handle closes, and a get on another handle then has it. */
static void
ahead_body(void)
{
	tsrv s = {0};
	qp_queue *q, *p;
	void *buf;
	size_t len;
	int fd;

	snprintf(qw_tag, sizeof(qw_tag), "%d", (int) getpid());
	CHECK(tsrv_start(&s, "tcp") == 0);
	q = open_i(&s, 0, "k");
	p = open_i(&s, 0, "k");
	CHECK(qp_queue_fd(q, &fd) == QP_OK);
	CHECK(qp_queue_put(p, "kept", 4, 1000) == QP_OK);
	CHECK_EQ(poll1(fd, 2000), 1);
	qp_queue_free(q);
	CHECK(qp_queue_get(p, &buf, &len, 2000) == QP_OK);
	CHECK(len == 4 && memcmp(buf, "kept", 4) == 0);
	qp_free(buf);
	qp_queue_free(p);
	CHECK(tsrv_stop(&s));
}

static void
test_qwait_remote_ahead_given_back(void **state)
{
	(void) state;
	tsrv_scenario0(ahead_body);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_qwait_shm),
	    cmocka_unit_test(test_qwait_one_server),
	    cmocka_unit_test(test_qwait_mixed),
	    cmocka_unit_test(test_qwait_wait_any),
	    cmocka_unit_test(test_qwait_remote_ahead_given_back),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
