/*
 * test_remote.c - remote queues against the real qpiped: every queue call
 * over tcp:// and ipc:// with the same results as its shared-memory twin,
 * local and remote clients on one queue, many producers and consumers
 * exactly once, leases (a killed client, an expiry, touch), a killed and
 * restarted server, duplicate requests, malformed frames, many blocked
 * getters. Processes are fork()ed; children report through exit status.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "futex.h" /* qpi_shm_dir */
#include "qpi.h"
#include "qps_testsrv.h"
#include "shmq.h"
#include "wire.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SLOW_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLOW_BUILD 1
#endif
#endif
#ifndef SLOW_BUILD
#define SLOW_BUILD 0
#endif

/* nng refuses to run in a child forked after its parent used it ("nng is
 * not fork-reentrant safe"). So each scenario runs in a child of the test
 * process, which never touches nng itself, and the scenario forks its
 * worker processes before its own first nng call; they wait at a gate (a
 * pipe whose write end is closed to let them go). Inside scenarios, CHECK
 * reports a failure and exits non-zero; the test asserts exit status 0. */

/* The write ends of the gates not yet opened: a child must not hold the
 * others' (a gate opens when every write end is closed). */
#define MAX_GATES 32
static int gates_open[MAX_GATES];
static int ngates;

/* Forks a child that runs fn(arg) once *gatep is closed by the parent. */
static pid_t
spawn_gated(void (*fn)(void *), void *arg, int *gatep)
{
	int g[2];
	pid_t pid;

	CHECK(pipe(g) == 0);
	CHECK(ngates < MAX_GATES);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		char c;
		/* The servers are the scenario's to stop, not this child's. */
		memset(tsrv_live, 0, sizeof(tsrv_live));
		for (int i = 0; i < ngates; i++) {
			close(gates_open[i]);
		}
		ngates = 0;
		close(g[1]);
		while (read(g[0], &c, 1) > 0) {
		}
		close(g[0]);
		fn(arg);
		exit(0);
	}
	close(g[0]);
	gates_open[ngates++] = g[1];
	*gatep = g[1];
	return pid;
}

static void
gate_open(int *gatep)
{
	for (int i = 0; i < ngates; i++) {
		if (gates_open[i] == *gatep) {
			gates_open[i] = gates_open[--ngates];
			break;
		}
	}
	if (*gatep >= 0) {
		close(*gatep);
		*gatep = -1;
	}
}

static int
reap(pid_t pid)
{
	int st;

	CHECK(waitpid(pid, &st, 0) == pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void
qname(char *buf, size_t len, const char *tag)
{
	snprintf(buf, len, "tr%d_%s", (int) getpid(), tag);
}

/* addr of queue name on server s ("shm://name" if s is NULL) */
static void
qaddr(char *buf, size_t len, const tsrv *s, const char *name)
{
	if (s == NULL) {
		snprintf(buf, len, "shm://%s", name);
	} else {
		snprintf(buf, len, "%s/%s", s->url, name);
	}
}

static qp_queue *
open_q(const char *addr, uint32_t flags, uint64_t maxsize, uint64_t lease_ms)
{
	qp_queue_opts o;
	qp_queue *q = NULL;

	memset(&o, 0, sizeof(o));
	o.flags = flags;
	o.maxsize = maxsize;
	o.capacity = 1 << 20;
	o.lease_ms = lease_ms;
	CHECK_EQ(qp_queue_open(&q, addr, &o), QP_OK);
	return q;
}

static void
put_str(qp_queue *q, const char *s)
{
	CHECK_EQ(qp_queue_put(q, s, strlen(s), QP_FOREVER), QP_OK);
}

static void
get_str(qp_queue *q, const char *want, qp_duration t)
{
	void *buf = NULL;
	size_t len = 0;

	CHECK_EQ(qp_queue_get(q, &buf, &len, t), QP_OK);
	CHECK_EQ(len, strlen(want));
	CHECK(memcmp(buf, want, len) == 0);
	qp_free(buf);
}

/* ---- the same calls, the same answers: shm against remote ---- */

/* The sequence of calls; records a trace of result codes and lengths so
 * that two runs compare whole. */
static void
parity_run(const char *addr, int *trace, int *n)
{
	qp_queue *q = open_q(addr, QP_OPEN_CREATE, 3, 0);
	void *buf;
	size_t len, sz;
	bool b;
	long long t0, el;
	uint8_t five = 0x05;
	char into[8];
	qp_queue_stats st;

	*n = 0;
#define T(x) (trace[(*n)++] = (int) (x))
	T(qp_queue_get_nowait(q, &buf, &len));
	t0 = tsrv_now_ms();
	T(qp_queue_get(q, &buf, &len, 200));
	el = tsrv_now_ms() - t0;
	CHECK(el >= 180 && el < 1500);
	T(qp_queue_empty(q, &b));
	T(b);
	T(qp_queue_put(q, "a", 1, QP_FOREVER));
	T(qp_queue_put_obj(q, &five, 1, QP_FOREVER));
	T(qp_queue_put(q, "", 0, 100));
	T(qp_queue_put_nowait(q, "d", 1));
	t0 = tsrv_now_ms();
	T(qp_queue_put(q, "d", 1, 200));
	el = tsrv_now_ms() - t0;
	CHECK(el >= 180 && el < 1500);
	T(qp_queue_qsize(q, &sz));
	T(sz);
	T(qp_queue_full(q, &b));
	T(b);
	T(qp_queue_empty(q, &b));
	T(b);
	/* a: raw bytes back */
	T(qp_queue_get(q, &buf, &len, QP_FOREVER));
	T(len);
	T(memcmp(buf, "a", 1));
	qp_free(buf);
	/* 5: an object, its encoding back */
	T(qp_queue_get_obj(q, &buf, &len, 0));
	T(len);
	T(((uint8_t *) buf)[0]);
	qp_free(buf);
	/* the empty item */
	T(qp_queue_get(q, &buf, &len, 0));
	T(len);
	qp_free(buf);
	T(qp_queue_put(q, "xyz", 3, 0));
	T(qp_queue_get_into(q, into, 2, &len, 0)); /* too small: stays */
	T(len);
	T(qp_queue_get_into(q, into, sizeof(into), &len, 0));
	T(len);
	T(memcmp(into, "xyz", 3));
	/* JoinableQueue: 4 put, 4 done; one more is an error */
	T(qp_queue_join(q, 0));
	for (int i = 0; i < 4; i++) {
		T(qp_queue_task_done(q));
	}
	T(qp_queue_task_done(q));
	T(qp_queue_join(q, 0));
	T(qp_queue_put(q, "j", 1, 0));
	T(qp_queue_join(q, 100));
	T(qp_queue_get(q, &buf, &len, 0));
	qp_free(buf);
	T(qp_queue_task_done(q));
	T(qp_queue_join(q, 1000));
	T(qp_queue_stat(q, &st));
	T(st.items);
	T(st.maxsize);
	T(st.puts);
	/* gets counts deliveries: over a server, the get_into that did not
	 * fit was one (its item went back) */
	T(st.gets >= 5);
	T(st.unfinished);
	/* Batches: all or nothing, in order (maxsize 3). */
	const void *bufs[4] = {"p", "q", "r", "s"};
	size_t lens[4] = {1, 1, 1, 1}, ngot = 0, glens[4];
	void *gbufs[4];
	T(qp_queue_put_many(q, bufs, lens, 4, 0)); /* can never fit */
	T(qp_queue_put(q, "o", 1, 0));
	T(qp_queue_put_many(q, bufs, lens, 3, 0)); /* full */
	T(qp_queue_qsize(q, &sz));
	T(sz);
	T(qp_queue_put_many(q, bufs, lens, 2, 0));
	T(qp_queue_get_many(q, gbufs, glens, 4, &ngot, 0));
	T(ngot);
	for (size_t i = 0; i < ngot && i < 4; i++) {
		T(glens[i]);
		T(((char *) gbufs[i])[0]);
		qp_free(gbufs[i]);
	}
	T(qp_queue_get_many(q, gbufs, glens, 4, &ngot, 0));
	/* Batches of msgpack values: one bad value refuses the whole call;
	 * a bin among them reads back through qp_queue_get as its bytes, and
	 * raw bytes through get_many_obj as a bin. */
	static const uint8_t v7[] = {0x07}, vab[] = {0xa2, 'a', 'b'},
	                     vbin[] = {0xc4, 1, 'x'}, vbad[] = {0x92, 0x01};
	const void *ov[3] = {v7, vab, vbin}, *obad[2] = {v7, vbad};
	size_t ol[3] = {1, 3, 3}, obl[2] = {1, 2};
	T(qp_queue_put_many_obj(q, obad, obl, 2, 0));
	T(qp_queue_qsize(q, &sz));
	T(sz);
	CHECK_EQ(qp_queue_put_many_obj(q, ov, ol, 3, 0), QP_OK);
	CHECK_EQ(qp_queue_get_many_obj(q, gbufs, glens, 2, &ngot, 0), QP_OK);
	T(ngot);
	for (size_t i = 0; i < ngot && i < 2; i++) {
		T(glens[i]);
		T(memcmp(gbufs[i], ov[i], ol[i]));
		qp_free(gbufs[i]);
	}
	CHECK_EQ(qp_queue_get(q, &buf, &len, 0), QP_OK);
	T(len);
	T(((char *) buf)[0]);
	qp_free(buf);
	CHECK_EQ(qp_queue_put_many(q, bufs, lens, 1, 0), QP_OK);
	CHECK_EQ(qp_queue_get_many_obj(q, gbufs, glens, 4, &ngot, 0), QP_OK);
	T(ngot);
	T(glens[0]);
	T(memcmp(gbufs[0], "\xc4\x01p", 3));
	qp_free(gbufs[0]);
	T(qp_queue_close(q));
	T(qp_queue_close(q));
	T(qp_queue_put(q, "z", 1, 0));
	T(qp_queue_get(q, &buf, &len, 0));
	T(qp_queue_qsize(q, &sz));
#undef T
	qp_queue_free(q);
}

static void
parity_body(void *arg)
{
	const char *proto = arg;
	tsrv s = {0};
	char name[64], addr[400];
	int a[160], na, b[160], nb;

	CHECK(tsrv_start(&s, proto) == 0);
	qname(name, sizeof(name), proto);
	qaddr(addr, sizeof(addr), NULL, name);
	parity_run(addr, a, &na);
	qp_queue_unlink(addr);
	qaddr(addr, sizeof(addr), &s, name);
	parity_run(addr, b, &nb);
	CHECK_EQ(na, nb);
	for (int i = 0; i < na; i++) {
		if (a[i] != b[i]) {
			fprintf(stderr, "step %d: shm %d, %s %d\n", i, a[i],
			    proto, b[i]);
		}
		CHECK_EQ(b[i], a[i]);
	}
	CHECK_EQ(qp_queue_unlink(addr), QP_OK);
	CHECK_EQ(qp_queue_unlink(addr), QP_ENOENT);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_parity_tcp(void **state)
{
	tsrv_scenario(parity_body, "tcp");
}

static void
test_remote_parity_ipc(void **state)
{
	tsrv_scenario(parity_body, "ipc");
}

/* ---- errors a user sees ---- */

static void
refused_body(void *arg)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	char addr[128], want[128];
	qp_queue *q = NULL;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	/* A port that was free a moment ago: nobody listens there. */
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK(bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0);
	CHECK(getsockname(fd, (struct sockaddr *) &sa, &sl) == 0);
	close(fd);
	snprintf(addr, sizeof(addr), "tcp://127.0.0.1:%u/jobs",
	    (unsigned) ntohs(sa.sin_port));
	long long t0 = tsrv_now_ms();
	CHECK_EQ(qp_queue_open(&q, addr, NULL), QP_ECONNREFUSED);
	CHECK(tsrv_now_ms() - t0 < 2000); /* fails fast */
	snprintf(want, sizeof(want),
	    "cannot connect to tcp://127.0.0.1:%u: connection refused",
	    (unsigned) ntohs(sa.sin_port));
	if (strcmp(qp_errmsg(), want) != 0) {
		fprintf(stderr, "message: '%s'\n", qp_errmsg());
	}
	CHECK(strcmp(qp_errmsg(), want) == 0);
	CHECK_EQ(qp_queue_open(&q, "ipc:///tmp/qp-nobody-here/jobs", NULL),
	    QP_ECONNREFUSED);
	CHECK(strstr(qp_errmsg(), "ipc:///tmp/qp-nobody-here") != NULL);
}

static void
test_remote_refused(void **state)
{
	tsrv_scenario(refused_body, NULL);
}

static void
missing_body(void *arg)
{
	tsrv s = {0};
	char addr[400];
	qp_queue *q = NULL;

	CHECK(tsrv_start(&s, "tcp") == 0);
	snprintf(addr, sizeof(addr), "%s/tr%d_none", s.url, (int) getpid());
	CHECK_EQ(qp_queue_open(&q, addr, NULL), QP_ENOENT);
	CHECK(strstr(qp_errmsg(), "no queue") != NULL);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_missing_queue(void **state)
{
	tsrv_scenario(missing_body, NULL);
}

/* ---- fork(): a remote handle opened in a parent works in its children ----
 */

#define FORK_KIDS  4
#define FORK_ITEMS 400 /* put by the parent before the fork */
#define FORK_PUTS  50 /* put by each child */
#define FORK_TOTAL (FORK_ITEMS + FORK_KIDS * FORK_PUTS)

/* Whether remote handles run on nng here (QPIPE_TRANSPORT=nng): nng's
 * threads stay in the parent, and a child gets a clear error. */
static bool
fork_on_nng(void)
{
	const char *t = getenv("QPIPE_TRANSPORT");

	return t != NULL && strcmp(t, "nng") == 0;
}

/* Gets items until all FORK_TOTAL are counted (by every process), noting
 * each in counts (shared memory); 20 s at most. */
static void
fork_drain(qp_queue *q, int *counts, int *total)
{
	int64_t until = qpi_now_ms() + 20000;

	while (__atomic_load_n(total, __ATOMIC_ACQUIRE) < FORK_TOTAL
	    && qpi_now_ms() < until) {
		void *buf;
		size_t len;
		unsigned k;
		int rv = qp_queue_get(q, &buf, &len, 200);
		if (rv == QP_EEMPTY) {
			continue;
		}
		CHECK_EQ(rv, QP_OK);
		CHECK(len > 0 && len < 16);
		char tmp[16];
		memcpy(tmp, buf, len);
		tmp[len] = '\0';
		qp_free(buf);
		CHECK(sscanf(tmp, "%u", &k) == 1 && k < FORK_TOTAL);
		__atomic_add_fetch(&counts[k], 1, __ATOMIC_ACQ_REL);
		__atomic_add_fetch(total, 1, __ATOMIC_ACQ_REL);
	}
}

static void
put_num(qp_queue *q, unsigned k)
{
	char tmp[16];
	int n = snprintf(tmp, sizeof(tmp), "%u", k);

	CHECK_EQ(qp_queue_put(q, tmp, (size_t) n, 5000), QP_OK);
}

typedef struct fork_put_arg {
	qp_queue *q;
	unsigned first, n;
} fork_put_arg;

static void *
fork_puts(void *arg)
{
	fork_put_arg *a = arg;

	for (unsigned k = 0; k < a->n; k++) {
		put_num(a->q, a->first + k);
	}
	return NULL;
}

static void
forked_body(void *arg)
{
	tsrv s = {0};
	char addr[400], name[64];
	qp_queue *q, *q2 = NULL;
	size_t n;
	pid_t pid, kids[FORK_KIDS];

	(void) arg;
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "fork");
	qaddr(addr, sizeof(addr), &s, name);
	q = open_q(addr, QP_OPEN_CREATE, 0, 0);
	if (fork_on_nng()) {
		put_str(q, "kept");
		pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			/* nng's threads stayed in the parent: a clear error,
			 * no panic, for the inherited handle and a new one. */
			memset(tsrv_live, 0, sizeof(tsrv_live));
			CHECK_EQ(qp_queue_put(q, "x", 1, 0), QP_EINVAL);
			CHECK(strstr(qp_errmsg(), "fork()") != NULL);
			CHECK_EQ(qp_queue_qsize(q, &n), QP_EINVAL);
			CHECK_EQ(qp_queue_open(&q2, addr, NULL), QP_EINVAL);
			CHECK(strstr(qp_errmsg(), "fork()") != NULL);
			qp_queue_free(q);
			_exit(0);
		}
		CHECK_EQ(reap(pid), 0);
		CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
		CHECK_EQ(n, 1);
		get_str(q, "kept", 1000);
		CHECK_EQ(qp_queue_unlink(addr), QP_OK);
		qp_queue_free(q);
		CHECK(tsrv_stop(&s));
		return;
	}

	/* Four children and the parent share the parent's handle at once:
	 * each child's first call opens a connection of its own. Every item
	 * is delivered exactly once. */
	int *counts = mmap(NULL, (FORK_TOTAL + 1) * sizeof(int),
	    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(counts != MAP_FAILED);
	int *total = &counts[FORK_TOTAL];
	for (unsigned k = 0; k < FORK_ITEMS; k++) {
		put_num(q, k);
	}
	for (int i = 0; i < FORK_KIDS; i++) {
		kids[i] = fork();
		CHECK(kids[i] >= 0);
		if (kids[i] == 0) {
			memset(tsrv_live, 0, sizeof(tsrv_live));
			alarm(60);
			/* Two threads make the child's first calls at once:
			 * one reconnect serves both. */
			fork_put_arg pa
			    = {q, FORK_ITEMS + (unsigned) i * FORK_PUTS,
			        FORK_PUTS / 2};
			pthread_t t;
			CHECK(pthread_create(&t, NULL, fork_puts, &pa) == 0);
			for (unsigned k = FORK_PUTS / 2; k < FORK_PUTS; k++) {
				put_num(q, pa.first + k);
			}
			CHECK(pthread_join(t, NULL) == 0);
			/* A new handle works here too. */
			CHECK_EQ(qp_queue_open(&q2, addr, NULL), QP_OK);
			CHECK_EQ(qp_queue_qsize(q2, &n), QP_OK);
			qp_queue_free(q2);
			fork_drain(q, counts, total);
			/* Close confirms what the acker has not sent yet. */
			qp_queue_free(q);
			_exit(0);
		}
	}
	fork_drain(q, counts, total);
	for (int i = 0; i < FORK_KIDS; i++) {
		CHECK_EQ(reap(kids[i]), 0);
	}
	CHECK_EQ(*total, FORK_TOTAL);
	for (unsigned k = 0; k < FORK_TOTAL; k++) {
		if (counts[k] != 1) {
			fprintf(stderr, "item %u delivered %d times\n", k,
			    counts[k]);
		}
		CHECK_EQ(counts[k], 1);
	}
	munmap(counts, (FORK_TOTAL + 1) * sizeof(int));
	/* The parent's handle goes on, and nothing came back. */
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 0);
	put_str(q, "after");
	get_str(q, "after", 1000);
	CHECK_EQ(qp_queue_unlink(addr), QP_OK);

	/* Worker mode: a child's leases are its own connection's, and go
	 * back when it exits without finishing its tasks. */
	qname(name, sizeof(name), "forkw");
	qaddr(addr, sizeof(addr), &s, name);
	q2 = open_q(addr, QP_OPEN_CREATE | QP_OPEN_LEASE, 0, 60000);
	put_str(q2, "w1");
	put_str(q2, "w2");
	put_str(q2, "w3");
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		memset(tsrv_live, 0, sizeof(tsrv_live));
		alarm(30);
		get_str(q2, "w1", 2000);
		get_str(q2, "w2", 2000);
		_exit(0); /* no task_done: the leases go back */
	}
	CHECK_EQ(reap(pid), 0);
	/* Back at once (the lease is 60 s): w1, w2 and w3, the first two
	 * delivered a second time. */
	bool seen[3] = {false, false, false};
	for (int i = 0; i < 3; i++) {
		void *buf;
		size_t len;
		uint32_t dl = 0;
		CHECK_EQ(qp_queue_get(q2, &buf, &len, 5000), QP_OK);
		CHECK(len == 2 && ((char *) buf)[0] == 'w');
		int k = ((char *) buf)[1] - '1';
		qp_free(buf);
		CHECK(k >= 0 && k < 3 && !seen[k]);
		seen[k] = true;
		CHECK_EQ(qp_queue_deliveries(q2, &dl), QP_OK);
		CHECK_EQ(dl, k < 2 ? 2 : 1);
		CHECK_EQ(qp_queue_task_done(q2), QP_OK);
	}
	CHECK_EQ(qp_queue_unlink(addr), QP_OK);
	qp_queue_free(q2);
	qp_queue_free(q);

	/* A pipe through the server, likewise: its ends refuse the child,
	 * whose close and free leave the parent's pipe as it was. */
	qp_conn *p0, *p1;
	void *buf;
	size_t len;
	bool ready = false;
	qname(name, sizeof(name), "forkpipe");
	qaddr(addr, sizeof(addr), &s, name);
	CHECK_EQ(qp_pipe_open(&p0, addr, 0, true), QP_OK);
	CHECK_EQ(qp_pipe_open(&p1, addr, 1, true), QP_OK);
	CHECK_EQ(qp_conn_send_bytes(p1, "one", 0, 3), QP_OK);
	CHECK_EQ(qp_conn_poll(p0, 2000, &ready), QP_OK);
	CHECK(ready);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		memset(tsrv_live, 0, sizeof(tsrv_live));
		alarm(20);
		signal(SIGSEGV, SIG_DFL); /* a crash shows as one */
		CHECK_EQ(qp_conn_poll(p0, 0, &ready), QP_EINVAL);
		CHECK(strstr(qp_errmsg(), "fork()") != NULL);
		CHECK_EQ(
		    qp_conn_recv_bytes(p0, &buf, &len, SIZE_MAX), QP_EINVAL);
		CHECK_EQ(qp_conn_send_bytes(p1, "x", 0, 1), QP_EINVAL);
		CHECK_EQ(qp_conn_close(p0), QP_OK);
		CHECK_EQ(qp_conn_close(p1), QP_OK);
		qp_conn_free(p0);
		qp_conn_free(p1);
		_exit(0);
	}
	CHECK_EQ(reap(pid), 0);
	CHECK_EQ(qp_conn_recv_bytes(p0, &buf, &len, SIZE_MAX), QP_OK);
	CHECK(len == 3 && memcmp(buf, "one", 3) == 0);
	qp_free(buf);
	CHECK_EQ(qp_conn_send_bytes(p0, "two", 0, 3), QP_OK);
	CHECK_EQ(qp_conn_recv_bytes(p1, &buf, &len, SIZE_MAX), QP_OK);
	CHECK(len == 3 && memcmp(buf, "two", 3) == 0);
	qp_free(buf);
	CHECK_EQ(qp_conn_poll(p0, 0, &ready), QP_OK);
	CHECK(!ready);
	qp_conn_free(p0);
	qp_conn_free(p1);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_forked_child(void **state)
{
	tsrv_scenario(forked_body, NULL);
}

/* ---- local and remote clients on one queue ---- */

typedef struct mixed_ctx {
	char la[400], ra[400];
} mixed_ctx;

static void
mixed_local_putter(void *arg)
{
	mixed_ctx *m = arg;
	qp_queue *c = NULL;

	tsrv_sleep_ms(200);
	CHECK_EQ(qp_queue_open(&c, m->la, NULL), QP_OK);
	CHECK_EQ(qp_queue_put(c, "late", 4, 0), QP_OK);
	qp_queue_free(c);
}

static void
mixed_remote_putter(void *arg)
{
	mixed_ctx *m = arg;
	qp_queue *c = NULL;

	tsrv_sleep_ms(200);
	CHECK_EQ(qp_queue_open(&c, m->ra, NULL), QP_OK);
	CHECK_EQ(qp_queue_put(c, "over-net", 8, 0), QP_OK);
	qp_queue_free(c);
}

static void
mixed_body(void *arg)
{
	tsrv s = {0};
	mixed_ctx m;
	char name[64];
	qp_queue *lq, *rq;
	size_t n;
	int g1, g2;

	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "mixed");
	qaddr(m.la, sizeof(m.la), NULL, name);
	qaddr(m.ra, sizeof(m.ra), &s, name);
	pid_t p1 = spawn_gated(mixed_local_putter, &m, &g1);
	pid_t p2 = spawn_gated(mixed_remote_putter, &m, &g2);

	lq = open_q(m.la, QP_OPEN_CREATE, 0, 0);
	rq = open_q(m.ra, 0, 0, 0);
	put_str(lq, "from-local");
	get_str(rq, "from-local", 0);
	put_str(rq, "from-remote");
	CHECK_EQ(qp_queue_qsize(lq, &n), QP_OK);
	CHECK_EQ(n, 1);
	get_str(lq, "from-remote", 0);

	/* A remote get parked on the server wakes on a local put at once. */
	gate_open(&g1);
	long long t0 = tsrv_now_ms();
	get_str(rq, "late", 5000);
	long long el = tsrv_now_ms() - t0;
	CHECK(el >= 150 && el < 1000);
	CHECK_EQ(reap(p1), 0);

	/* And a remote put wakes a local get blocked in shared memory. */
	gate_open(&g2);
	get_str(lq, "over-net", 5000);
	CHECK_EQ(reap(p2), 0);

	qp_queue_free(rq);
	qp_queue_free(lq);
	qp_queue_unlink(m.la);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_mixed_local(void **state)
{
	tsrv_scenario(mixed_body, NULL);
}

/* ---- a local put killed before it told the server ---- */

static void
die_at_done(int point)
{
	if (point == QPI_HOOK_DONE) {
		raise(SIGKILL);
	}
}

/* Puts "orphan" into the local queue and is killed right after the
 * commit, holding the lock, before it bumps the server's watch word. */
static void
orphan_putter(void *arg)
{
	mixed_ctx *m = arg;
	qp_queue *c = NULL;

	tsrv_sleep_ms(200);
	CHECK_EQ(qp_queue_open(&c, m->la, NULL), QP_OK);
	qpi_shmq_test_hook = die_at_done;
	(void) qp_queue_put(c, "orphan", 6, 0);
	_exit(1); /* not reached */
}

static void
orphan_body(void *arg)
{
	tsrv s = {0};
	mixed_ctx m;
	char name[64];
	qp_queue *lq, *rq;
	int g;

	(void) arg;
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "orphan");
	qaddr(m.la, sizeof(m.la), NULL, name);
	qaddr(m.ra, sizeof(m.ra), &s, name);
	lq = open_q(m.la, QP_OPEN_CREATE, 0, 0);
	rq = open_q(m.ra, 0, 0, 0);
	pid_t p = spawn_gated(orphan_putter, &m, &g);
	/* A remote get parked on the server: nobody wakes it, but the
	 * server's once-a-second tick finds the item (and repairs the
	 * lock). */
	gate_open(&g);
	long long t0 = tsrv_now_ms();
	get_str(rq, "orphan", 5000);
	long long el = tsrv_now_ms() - t0;
	CHECK_EQ(reap(p), 128 + SIGKILL);
	CHECK(el < 2500);
	qp_queue_free(rq);
	qp_queue_free(lq);
	qp_queue_unlink(m.la);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_local_put_killed_before_bump(void **state)
{
	(void) state;
	tsrv_scenario(orphan_body, NULL);
}

/* ---- 4 producers x 4 consumers, exactly once ---- */

#define PC_PRODUCERS 4
#define PC_CONSUMERS 4

typedef struct pc_ctx {
	char addr[400];
	int total, per, which;
	uint32_t *seen; /* shared: times each id was got */
	uint32_t *left; /* shared: items not yet got */
} pc_ctx;

static void
pc_producer(void *arg)
{
	pc_ctx *c = arg;
	qp_queue *q = NULL;

	CHECK_EQ(qp_queue_open(&q, c->addr, NULL), QP_OK);
	for (int i = 0; i < c->per; i++) {
		uint32_t id = (uint32_t) (c->which * c->per + i);
		CHECK_EQ(qp_queue_put(q, &id, sizeof(id), QP_FOREVER), QP_OK);
	}
	qp_queue_free(q);
}

static void
pc_consumer(void *arg)
{
	pc_ctx *c = arg;
	qp_queue *q = NULL;

	CHECK_EQ(qp_queue_open(&q, c->addr, NULL), QP_OK);
	for (;;) {
		void *buf;
		size_t len;
		uint32_t id;
		int rv = qp_queue_get(q, &buf, &len, 300);
		if (rv == QP_EEMPTY) {
			if (__atomic_load_n(c->left, __ATOMIC_SEQ_CST) == 0) {
				break;
			}
			continue;
		}
		CHECK_EQ(rv, QP_OK);
		CHECK_EQ(len, sizeof(uint32_t));
		memcpy(&id, buf, sizeof(id));
		qp_free(buf);
		CHECK(id < (uint32_t) c->total);
		__atomic_add_fetch(&c->seen[id], 1, __ATOMIC_SEQ_CST);
		__atomic_sub_fetch(c->left, 1, __ATOMIC_SEQ_CST);
	}
	qp_queue_free(q);
}

static void
pc_body(void *arg)
{
	/* Fewer items under the sanitizers, which run several times
	 * slower. */
	const int total = SLOW_BUILD ? 20000 : 100000;
	tsrv s = {0};
	char name[64];
	pc_ctx ctx[PC_PRODUCERS + PC_CONSUMERS];
	pid_t pids[PC_PRODUCERS + PC_CONSUMERS];
	int gates[PC_PRODUCERS + PC_CONSUMERS];
	size_t mlen = (size_t) total * sizeof(uint32_t) + 64;
	uint32_t *seen = mmap(NULL, mlen, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	CHECK(seen != MAP_FAILED);
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "4x4");
	seen[total] = (uint32_t) total;
	for (int i = 0; i < PC_PRODUCERS + PC_CONSUMERS; i++) {
		qaddr(ctx[i].addr, sizeof(ctx[i].addr), &s, name);
		ctx[i].total = total;
		ctx[i].per = total / PC_PRODUCERS;
		ctx[i].which = i;
		ctx[i].seen = seen;
		ctx[i].left = &seen[total];
		pids[i]
		    = spawn_gated(i < PC_PRODUCERS ? pc_producer : pc_consumer,
		        &ctx[i], &gates[i]);
	}
	long long t0 = tsrv_now_ms();
	qp_queue_free(open_q(ctx[0].addr, QP_OPEN_CREATE, 0, 0));
	for (int i = 0; i < PC_PRODUCERS + PC_CONSUMERS; i++) {
		gate_open(&gates[i]);
	}
	for (int i = 0; i < PC_PRODUCERS + PC_CONSUMERS; i++) {
		CHECK_EQ(reap(pids[i]), 0);
	}
	long long el = tsrv_now_ms() - t0;
	int missing = 0, dup = 0;
	for (int i = 0; i < total; i++) {
		missing += seen[i] == 0;
		dup += seen[i] > 1;
	}
	fprintf(stderr,
	    "4x4 over tcp: %d items in %lld ms (%.0f items/s), %d missing, "
	    "%d twice\n",
	    total, el, el > 0 ? total * 1000.0 / (double) el : 0.0, missing,
	    dup);
	CHECK_EQ(missing, 0);
	CHECK_EQ(dup, 0);
	munmap(seen, mlen);
	qp_queue_unlink(ctx[0].addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_4x4_exactly_once(void **state)
{
	tsrv_scenario(pc_body, NULL);
}

/* ---- leases ---- */

typedef struct kill_ctx {
	char addr[400];
	int ready[2];
} kill_ctx;

static void
kill_worker(void *arg)
{
	kill_ctx *k = arg;
	qp_queue *w = NULL;
	qp_queue_opts o = {.flags = QP_OPEN_LEASE};
	void *buf;
	size_t len;

	CHECK_EQ(qp_queue_open(&w, k->addr, &o), QP_OK);
	CHECK_EQ(qp_queue_get(w, &buf, &len, 5000), QP_OK);
	CHECK(write(k->ready[1], "g", 1) == 1);
	pause(); /* dies holding the lease */
}

static void
kill_body(void *arg)
{
	tsrv s = {0};
	kill_ctx k;
	char name[64];
	qp_queue *q;
	uint32_t deliv = 0;
	size_t n = 9;
	int gate;
	char c;

	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "kill");
	qaddr(k.addr, sizeof(k.addr), &s, name);
	CHECK(pipe(k.ready) == 0);
	pid_t pid = spawn_gated(kill_worker, &k, &gate);
	q = open_q(k.addr, QP_OPEN_CREATE, 0, 0);
	put_str(q, "task-1");
	gate_open(&gate);
	CHECK_EQ(read(k.ready[0], &c, 1), 1);
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 0); /* leased, not ready */
	kill(pid, SIGKILL);
	long long t0 = tsrv_now_ms();
	CHECK_EQ(reap(pid), 128 + SIGKILL);
	get_str(q, "task-1", 5000);
	long long el = tsrv_now_ms() - t0;
	fprintf(
	    stderr, "killed worker's task redelivered after %lld ms\n", el);
	CHECK(el < 1000);
	CHECK_EQ(qp_queue_deliveries(q, &deliv), QP_OK);
	CHECK_EQ(deliv, 2);
	qp_queue_free(q);
	qp_queue_unlink(k.addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_client_killed_lease(void **state)
{
	tsrv_scenario(kill_body, NULL);
}

static void
expiry_body(void *arg)
{
	tsrv s = {0};
	char name[64], addr[400];
	qp_queue *w, *q;
	void *buf;
	size_t len;
	uint32_t deliv = 0;

	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "expiry");
	qaddr(addr, sizeof(addr), &s, name);
	q = open_q(addr, QP_OPEN_CREATE, 0, 0);
	w = open_q(addr, QP_OPEN_LEASE, 0, 300);
	put_str(q, "slow-task");
	CHECK_EQ(qp_queue_get(w, &buf, &len, 1000), QP_OK);
	qp_free(buf);
	/* The worker never confirms: after 300 ms the item is back. */
	long long t0 = tsrv_now_ms();
	CHECK_EQ(qp_queue_get_nowait(q, &buf, &len), QP_EEMPTY);
	get_str(q, "slow-task", 3000);
	long long el = tsrv_now_ms() - t0;
	CHECK(el >= 200 && el < 2000);
	CHECK_EQ(qp_queue_deliveries(q, &deliv), QP_OK);
	CHECK_EQ(deliv, 2);
	/* The late task_done of the worker finds its lease gone. */
	CHECK_EQ(qp_queue_task_done(w), QP_ENOENT);

	/* A worker that fails gives the task back at once (nack), then
	 * finishes it on the next attempt. */
	put_str(q, "retry-me");
	CHECK_EQ(qp_queue_get(w, &buf, &len, 1000), QP_OK);
	qp_free(buf);
	CHECK_EQ(qp_queue_nack(w, 0), QP_OK);
	get_str(w, "retry-me", 1000);
	CHECK_EQ(qp_queue_deliveries(w, &deliv), QP_OK);
	CHECK_EQ(deliv, 2);
	CHECK_EQ(qp_queue_task_done(w), QP_OK);
	CHECK_EQ(qp_queue_nack(q, 0), QP_EINVAL);
	qp_queue_free(w);
	qp_queue_free(q);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_lease_expiry(void **state)
{
	tsrv_scenario(expiry_body, NULL);
}

/* A worker with a 300 ms lease that touches every 100 ms keeps its task
 * for a second: a second worker gets nothing meanwhile; then task_done
 * confirms it. Untouched, the task goes to the other worker. */
static void
touch_body(void *arg)
{
	tsrv s = {0};
	char name[64], addr[400];
	qp_queue *w1, *w2, *q;
	void *buf = NULL;
	size_t len;
	uint32_t deliv = 0;

	CHECK(tsrv_start(&s, (const char *) arg) == 0);
	qname(name, sizeof(name), "touch");
	qaddr(addr, sizeof(addr), &s, name);
	q = open_q(addr, QP_OPEN_CREATE, 0, 0);
	/* A 1 s lease touched every 200 ms: a stall of up to 800 ms on a
	 * busy machine still keeps it. */
	w1 = open_q(addr, QP_OPEN_LEASE, 0, 1000);
	w2 = open_q(addr, QP_OPEN_LEASE, 0, 0);
	CHECK_EQ(qp_queue_touch(q, 0), QP_EINVAL);
	CHECK_EQ(qp_queue_touch(w1, 0), QP_ENOENT);
	put_str(q, "long-task");
	CHECK_EQ(qp_queue_get(w1, &buf, &len, 1000), QP_OK);
	qp_free(buf);
	long long t0 = tsrv_now_ms();
	for (int i = 0; i < 8; i++) {
		CHECK_EQ(qp_queue_touch(w1, 0), QP_OK);
		CHECK_EQ(qp_queue_get(w2, &buf, &len, 200), QP_EEMPTY);
	}
	CHECK(tsrv_now_ms() - t0 >= 1600);
	CHECK_EQ(qp_queue_task_done(w1), QP_OK);
	CHECK_EQ(qp_queue_get(w2, &buf, &len, 400), QP_EEMPTY);
	CHECK_EQ(qp_queue_join(q, QP_NOWAIT), QP_OK);

	/* Not touched: back after its lease, to the other worker; a touch
	 * then finds the lease gone. */
	put_str(q, "short-task");
	CHECK_EQ(qp_queue_get(w1, &buf, &len, 1000), QP_OK);
	qp_free(buf);
	t0 = tsrv_now_ms();
	get_str(w2, "short-task", 3000);
	CHECK(tsrv_now_ms() - t0 >= 900);
	CHECK_EQ(qp_queue_deliveries(w2, &deliv), QP_OK);
	CHECK_EQ(deliv, 2);
	CHECK_EQ(qp_queue_touch(w1, 0), QP_ENOENT);
	CHECK(strstr(qp_errmsg(), "run out") != NULL);
	CHECK_EQ(qp_queue_task_done(w1), QP_ENOENT);
	/* w2's lease is its own: w1 holds nothing to touch. */
	CHECK_EQ(qp_queue_touch(w1, 0), QP_ENOENT);
	CHECK_EQ(qp_queue_touch(w2, 60000), QP_OK);
	CHECK_EQ(qp_queue_task_done(w2), QP_OK);
	CHECK_EQ(qp_queue_join(q, QP_NOWAIT), QP_OK);
	CHECK_EQ(qp_queue_close(w1), QP_OK);
	CHECK_EQ(qp_queue_touch(w1, 0), QP_ECLOSED);
	qp_queue_free(w1);
	qp_queue_free(w2);
	qp_queue_free(q);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_touch_keeps_task(void **state)
{
	tsrv_scenario(touch_body, "tcp");
}

/* ---- complete: a task confirmed and its result put in one request ---- */

static void
complete_body(void *arg)
{
	tsrv s = {0};
	char tn[64], rn[64], ta[400], ra[400], la[400];
	qp_queue *t, *w, *r, *local;
	size_t n = 0;

	(void) arg;
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(tn, sizeof(tn), "cplt");
	qname(rn, sizeof(rn), "cplr");
	qaddr(ta, sizeof(ta), &s, tn);
	qaddr(ra, sizeof(ra), &s, rn);
	t = open_q(ta, QP_OPEN_CREATE, 0, 0);
	r = open_q(ra, QP_OPEN_CREATE, 1, 0);
	w = open_q(ta, QP_OPEN_LEASE, 0, 0);
	put_str(t, "a");
	put_str(t, "b");
	get_str(w, "a", 0);
	CHECK_EQ(qp_queue_complete(w, r, "A", 1, 0), QP_OK);
	CHECK_EQ(qp_queue_join(t, 0), QP_ETIMEDOUT); /* b is not done */
	get_str(w, "b", 0);
	/* The results queue holds 1 item at most: full, nothing done. */
	CHECK_EQ(qp_queue_complete(w, r, "B", 1, 0), QP_EFULL);
	CHECK_EQ(qp_queue_complete(w, r, "B", 1, 200), QP_EFULL);
	get_str(r, "A", 0);
	CHECK_EQ(qp_queue_complete(w, r, "B", 1, QP_FOREVER), QP_OK);
	CHECK_EQ(qp_queue_join(t, 0), QP_OK);
	get_str(r, "B", 0);
	CHECK_EQ(qp_queue_complete(w, r, "C", 1, 0), QP_EVALUE);
	/* A lease that ran out puts nothing. */
	put_str(t, "c");
	get_str(w, "c", 0);
	CHECK_EQ(qp_queue_nack(w, 0), QP_OK);
	CHECK_EQ(qp_queue_qsize(t, &n), QP_OK);
	CHECK_EQ(n, 1);
	/* Results on this host's shared memory: not in one step. */
	qname(tn, sizeof(tn), "cpll");
	qaddr(la, sizeof(la), NULL, tn);
	local = open_q(la, QP_OPEN_CREATE, 0, 0);
	get_str(w, "c", 0);
	CHECK_EQ(qp_queue_complete(w, local, "C", 1, 0), QP_ENOTSUP);
	CHECK_EQ(qp_queue_complete(w, w, "C", 1, 0), QP_EINVAL);
	CHECK_EQ(qp_queue_complete(w, r, "C", 1, 0), QP_OK);
	get_str(r, "C", 0);
	CHECK_EQ(qp_queue_qsize(r, &n), QP_OK);
	CHECK_EQ(n, 0);
	qp_queue_free(local);
	qp_queue_unlink(la);
	qp_queue_free(w);
	qp_queue_free(t);
	qp_queue_free(r);
	qp_queue_unlink(ta);
	qp_queue_unlink(ra);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_complete(void **state)
{
	tsrv_scenario(complete_body, "tcp");
}

/* ---- put_many: all or nothing ---- */

static void
batch_all_body(void *arg)
{
	const void *bufs[3] = {"x", "y", "z"};
	size_t lens[3] = {1, 1, 1}, n = 0;
	tsrv s = {0};
	char name[64], addr[400];
	qp_queue *q;

	(void) arg;
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "batchall");
	qaddr(addr, sizeof(addr), &s, name);
	q = open_q(addr, QP_OPEN_CREATE, 3, 0);
	put_str(q, "w");
	CHECK_EQ(qp_queue_put_many(q, bufs, lens, 3, 0), QP_EFULL);
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 1);
	long long t0 = tsrv_now_ms();
	CHECK_EQ(qp_queue_put_many(q, bufs, lens, 3, 300), QP_EFULL);
	CHECK(tsrv_now_ms() - t0 >= 250);
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 1);
	CHECK_EQ(qp_queue_put_many(q, bufs, lens, 2, 0), QP_OK);
	get_str(q, "w", 0);
	get_str(q, "x", 0);
	get_str(q, "y", 0);
	qp_queue_free(q);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_put_many_all_or_nothing(void **state)
{
	tsrv_scenario(batch_all_body, NULL);
}

/* ---- a batch get stays within max_message ---- */

static void
batch_cap_body(void *arg)
{
	static char item[600];
	const void *bufs[3] = {item, item, item};
	size_t lens[3] = {600, 600, 600}, n = 0, blens[3];
	void *got[3];
	uint32_t deliv = 0;
	tsrv s = {0};
	char name[64], addr[400];
	qp_queue *q;

	(void) arg;
	snprintf(s.extra[0], sizeof(s.extra[0]), "--max-message=1000");
	s.nextra = 1;
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "batchcap");
	qaddr(addr, sizeof(addr), &s, name);
	q = open_q(addr, QP_OPEN_CREATE, 0, 0);
	CHECK_EQ(qp_queue_put_many(q, bufs, lens, 3, 0), QP_OK);
	/* Two would pass 1000 bytes: one per reply, and the others are
	 * not handed out meanwhile (delivered once each). */
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(qp_queue_get_many(q, got, blens, 3, &n, 0), QP_OK);
		CHECK_EQ(n, 1);
		CHECK_EQ(blens[0], 600);
		qp_free(got[0]);
		CHECK_EQ(qp_queue_deliveries(q, &deliv), QP_OK);
		CHECK_EQ(deliv, 1);
	}
	qp_queue_free(q);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_batch_get_within_max_message(void **state)
{
	tsrv_scenario(batch_cap_body, NULL);
}

/* ---- a get while every lease is taken ---- */

static void
slots_getter(void *arg)
{
	const char *addr = arg;
	qp_queue *q = open_q(addr, 0, 0, 0);
	void *buf;
	size_t len;

	/* Items are ready but cannot be leased: no wait is an error that
	 * says why, a blocking get waits for a lease to end. */
	CHECK_EQ(qp_queue_get_nowait(q, &buf, &len), QP_ELIMIT);
	long long t0 = tsrv_now_ms();
	CHECK_EQ(qp_queue_get(q, &buf, &len, 5000), QP_OK);
	long long el = tsrv_now_ms() - t0;
	CHECK_EQ(len, 8);
	qp_free(buf);
	CHECK(el >= 150 && el < 3000);
	qp_queue_free(q);
}

static void
slots_body(void *arg)
{
	enum { N = 5000 };
	static char items[N][8];
	static const void *bufs[N];
	static size_t lens[N];
	static void *got[N];
	static size_t glens[N];
	tsrv s = {0};
	char name[64], addr[400];
	qp_queue *q, *w;
	size_t n = 0, left = 0;
	int gate;

	(void) arg;
	/* One connection may take every lease slot here (by default it
	 * holds at most 1024: test_conn_limits). */
	snprintf(s.extra[0], sizeof(s.extra[0]), "--max-leases=100000");
	s.nextra = 1;
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "slots");
	qaddr(addr, sizeof(addr), &s, name);
	pid_t pid = spawn_gated(slots_getter, addr, &gate);
	q = open_q(addr, QP_OPEN_CREATE, 0, 0);
	for (int i = 0; i < N; i++) {
		snprintf(items[i], sizeof(items[i]), "%07d", i);
		bufs[i] = items[i];
		lens[i] = 8;
	}
	CHECK_EQ(qp_queue_put_many(q, bufs, lens, N, 0), QP_OK);
	/* A worker takes as many as the lease slots and area allow. */
	w = open_q(addr, QP_OPEN_LEASE, 0, 0);
	CHECK_EQ(qp_queue_get_many(w, got, glens, 4096, &n, 0), QP_OK);
	CHECK(n > 0 && n < N);
	for (size_t i = 0; i < n; i++) {
		qp_free(got[i]);
	}
	CHECK_EQ(qp_queue_qsize(q, &left), QP_OK);
	CHECK_EQ(left, N - n);
	gate_open(&gate);
	tsrv_sleep_ms(300);
	/* One task done: its lease ends, the waiting get goes on. */
	CHECK_EQ(qp_queue_task_done(w), QP_OK);
	CHECK_EQ(reap(pid), 0);
	fprintf(stderr,
	    "a worker held %zu leases; a get waited for one to end\n", n);
	qp_queue_free(w);
	qp_queue_free(q);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_get_waits_for_lease_room(void **state)
{
	tsrv_scenario(slots_body, NULL);
}

/* ---- a server killed under load and restarted ---- */

#define SK_PROD 2
#define SK_CONS 2

typedef struct sk_ctx {
	char addr[400];
	int per, total, which;
	uint32_t *acked, *got, *done;
} sk_ctx;

static void
sk_producer(void *arg)
{
	sk_ctx *c = arg;
	qp_queue *q = NULL;

	CHECK_EQ(qp_queue_open(&q, c->addr, NULL), QP_OK);
	for (int i = 0; i < c->per; i++) {
		uint32_t id = (uint32_t) (c->which * c->per + i);
		int rv = qp_queue_put(q, &id, sizeof(id), QP_FOREVER);
		if (rv == QP_OK) {
			c->acked[id] = 1;
		} else {
			fprintf(stderr, "put %u: %s\n", id, qp_errmsg());
		}
	}
	qp_queue_free(q);
	__atomic_add_fetch(c->done, 1, __ATOMIC_SEQ_CST);
}

static void
sk_consumer(void *arg)
{
	sk_ctx *c = arg;
	qp_queue *q = NULL;

	CHECK_EQ(qp_queue_open(&q, c->addr, NULL), QP_OK);
	for (;;) {
		void *buf;
		size_t len;
		uint32_t id;
		int rv = qp_queue_get(q, &buf, &len, 500);
		if (rv == QP_EEMPTY) {
			if (__atomic_load_n(c->done, __ATOMIC_SEQ_CST)
			    == SK_PROD) {
				break;
			}
			continue;
		}
		if (rv != QP_OK) {
			fprintf(stderr, "get: %s\n", qp_errmsg());
			continue;
		}
		memcpy(&id, buf, sizeof(id));
		qp_free(buf);
		if (id < (uint32_t) c->total) {
			__atomic_add_fetch(&c->got[id], 1, __ATOMIC_SEQ_CST);
		}
	}
	qp_queue_free(q);
}

static void
sk_body(void *arg)
{
	const int per = SLOW_BUILD ? 1500 : 5000, total = per * SK_PROD;
	tsrv s = {0};
	char name[64];
	sk_ctx ctx[SK_PROD + SK_CONS];
	pid_t pids[SK_PROD + SK_CONS];
	int gates[SK_PROD + SK_CONS];
	size_t mlen = (size_t) total * 8 + 64;
	uint32_t *acked = mmap(NULL, mlen, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	CHECK(acked != MAP_FAILED);
	/* Clients ride out the restart (it takes well under a second). */
	setenv("QPIPE_RECONNECT_MS", "20000", 1);
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "crash");
	for (int i = 0; i < SK_PROD + SK_CONS; i++) {
		qaddr(ctx[i].addr, sizeof(ctx[i].addr), &s, name);
		ctx[i].per = per;
		ctx[i].total = total;
		ctx[i].which = i;
		ctx[i].acked = acked;
		ctx[i].got = acked + total;
		ctx[i].done = acked + 2 * total;
		pids[i] = spawn_gated(i < SK_PROD ? sk_producer : sk_consumer,
		    &ctx[i], &gates[i]);
	}
	qp_queue_free(open_q(ctx[0].addr, QP_OPEN_CREATE, 0, 0));
	for (int i = 0; i < SK_PROD + SK_CONS; i++) {
		gate_open(&gates[i]);
	}
	tsrv_sleep_ms(SLOW_BUILD ? 600 : 300);
	tsrv_kill(&s, SIGKILL);
	tsrv_sleep_ms(200);
	CHECK(tsrv_restart(&s) == 0);
	for (int i = 0; i < SK_PROD + SK_CONS; i++) {
		CHECK_EQ(reap(pids[i]), 0);
	}
	/* Drain what is left (the consumers stopped on an empty get). */
	uint32_t *got = acked + total;
	qp_queue *q = open_q(ctx[0].addr, 0, 0, 0);
	void *buf;
	size_t len;
	while (qp_queue_get(q, &buf, &len, 200) == QP_OK) {
		uint32_t id;
		memcpy(&id, buf, sizeof(id));
		qp_free(buf);
		if (id < (uint32_t) total) {
			got[id]++;
		}
	}
	qp_queue_free(q);
	int lost = 0, dups = 0, nacked = 0;
	for (int i = 0; i < total; i++) {
		nacked += acked[i] != 0;
		lost += acked[i] && got[i] == 0;
		dups += got[i] > 1;
	}
	fprintf(stderr,
	    "server killed under load: %d of %d puts acknowledged, %d "
	    "lost, %d delivered twice\n",
	    nacked, total, lost, dups);
	CHECK_EQ(nacked, total);
	CHECK_EQ(lost, 0);
	munmap(acked, mlen);
	qp_queue_unlink(ctx[0].addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_server_killed(void **state)
{
	tsrv_scenario(sk_body, NULL);
}

/* ---- raw frames: duplicates and garbage ---- */

static int
raw_call(nng_socket sk, const void *frame, size_t len, qpi_wire_rep *rep,
    nng_msg **mp)
{
	nng_msg *m;
	int rv;

	if ((rv = nng_msg_alloc(&m, len)) != 0) {
		return rv;
	}
	if (len > 0) {
		memcpy(nng_msg_body(m), frame, len);
	}
	if ((rv = nng_sendmsg(sk, m, 0)) != 0) {
		nng_msg_free(m);
		return rv;
	}
	if ((rv = nng_recvmsg(sk, &m, 0)) != 0) {
		return rv;
	}
	memset(rep, 0, sizeof(*rep));
	rv = qpi_wire_decode_rep(nng_msg_body(m), nng_msg_len(m), NULL, rep);
	*mp = m;
	return rv == QP_OK ? 0 : -1;
}

static void
raw_put(nng_socket sk, const char *name, uint8_t cid, uint64_t seq,
    const char *item, int want)
{
	qpi_wire_req r;
	qpi_wire_rep rep;
	qpi_wire_buf b = {0};
	uint8_t enc[64];
	size_t h = qpi_wire_bin_header(strlen(item), enc);
	nng_msg *m;

	memcpy(enc + h, item, strlen(item));
	memset(&r, 0, sizeof(r));
	r.op = QPI_OP_PUT;
	r.req_id = seq;
	snprintf(r.name, sizeof(r.name), "%s", name);
	memset(r.client_id, cid, sizeof(r.client_id));
	r.seq = seq;
	r.item.data = enc;
	r.item.len = h + strlen(item);
	CHECK_EQ(qpi_wire_encode_req(&r, &b), QP_OK);
	CHECK_EQ(raw_call(sk, b.data, b.len, &rep, &m), 0);
	CHECK_EQ(rep.status, want);
	nng_msg_free(m);
	qpi_wire_buf_free(&b);
}

static void
dedup_body(void *arg)
{
	tsrv s = {0};
	char name[64], addr[400];
	nng_socket sk;
	qp_queue *q;
	size_t n;

	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "dedup");
	qaddr(addr, sizeof(addr), &s, name);
	q = open_q(addr, QP_OPEN_CREATE, 0, 0);
	CHECK_EQ(nng_req0_open(&sk), 0);
	CHECK_EQ(nng_dial(sk, s.url, NULL, 0), 0);
	raw_put(sk, name, 7, 41, "once", QP_OK);
	raw_put(sk, name, 7, 41, "once", QP_OK); /* sent again */
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 1);
	raw_put(sk, name, 7, 42, "twice", QP_OK); /* a new request */
	raw_put(sk, name, 8, 41, "other", QP_OK); /* another client */
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 3);
	/* The duplicate comes over a new connection (a reconnect). */
	nng_close(sk);
	CHECK_EQ(nng_req0_open(&sk), 0);
	CHECK_EQ(nng_dial(sk, s.url, NULL, 0), 0);
	raw_put(sk, name, 7, 42, "twice", QP_OK);
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 3);
	get_str(q, "once", 0);
	get_str(q, "twice", 0);
	get_str(q, "other", 0);
	nng_close(sk);
	qp_queue_free(q);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_duplicate_applied_once(void **state)
{
	tsrv_scenario(dedup_body, NULL);
}

/* Frames the server must refuse with an error reply, and go on. */
static const struct {
	const char *hex;
	const char *what;
} bad_frames[] = {
    {"", "empty"},
    {"c1", "the unused byte"},
    {"01", "not an array"},
    {"92", "array cut short"},
    {"9301", "two of three elements missing"},
    {"93020100", "version 2"},
    {"93016300", "op 99"},
    {"9301a16100", "op as a string"},
    {"930103c0", "req_id nil"},
    {"dd7fffffff", "array claiming 2^31 elements"},
    {"dcffff", "array16 with no elements"},
    {"9301030000", "trailing byte"},
    {"96010401a161", "put cut after the name"},
    {"99010401a161c410", "client id cut"},
    {"99010401a3612062c410000000000000000000000000000000000100"
     "00c40161",
        "name with a space"},
    {"99010401a22e2ec410000000000000000000000000000000000100"
     "00c40161",
        "name .."},
    {"99010401a161c40f0000000000000000000000000000000001000"
     "0c40161",
        "client id of 15 bytes"},
    {"99010401a161c410000000000000000000000000000000000100"
     "7fc40161",
        "unknown flag"},
    {"99010401a161c41000000000000000000000000000000000"
     "01d0fe00c40161",
        "timeout -2"},
    {"99010401a161c410000000000000000000000000000000000100"
     "00c6ffffffff",
        "bin claiming 4 GiB"},
    {"99010401a161c410000000000000000000000000000000000100"
     "00deffff",
        "item: map16 with no pairs"},
    {"9b010601a161c41000000000000000000000000000000000"
     "0100000000"
     "0090",
        "get with max_items 0"},
    {"9b010601a161c41000000000000000000000000000000000"
     "0100010500"
     "90",
        "get with lease mode 5"},
    {"94010d0100", "list with an extra field"},
    {"9301cf000000000000000100", "hello without its fields"},
    {"dfffffffff", "map claiming 2^32 pairs"},
    {"9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f"
     "9f9f9f9f9f",
        "nesting 39 deep"},
};

static size_t
unhex(const char *hex, uint8_t *out, size_t cap)
{
	size_t n = 0;

	for (const char *p = hex; p[0] != '\0' && p[1] != '\0' && n < cap;
	     p += 2) {
		unsigned v;
		if (sscanf(p, "%2x", &v) != 1) {
			break;
		}
		out[n++] = (uint8_t) v;
	}
	return n;
}

static void
ping_ok(const char *url)
{
	uint8_t ping[] = {0x93, 0x01, 0x03, 0x05};
	qpi_wire_rep rep;
	nng_socket sk;
	nng_msg *m;

	CHECK_EQ(nng_req0_open(&sk), 0);
	nng_socket_set_ms(sk, NNG_OPT_RECVTIMEO, 5000);
	CHECK_EQ(nng_dial(sk, url, NULL, 0), 0);
	CHECK_EQ(raw_call(sk, ping, sizeof(ping), &rep, &m), 0);
	CHECK_EQ(rep.status, QP_OK);
	CHECK_EQ(rep.req_id, 5);
	nng_msg_free(m);
	nng_close(sk);
}

/* The codec's table of malformed request frames (tests/corpus/wire/bad-*,
 * made for its limits: 1 KiB items) sent to a server with those limits:
 * each gets an error reply, or (over nng's receive limit) its connection
 * closed; the server answers a ping afterwards. */
static void
corpus_replay(void)
{
	const char *src = getenv("QP_SOURCE_DIR");
	char dir[512], path[1024];
	struct dirent **ents;
	tsrv s = {0};
	int n, sent = 0, dropped = 0;

	snprintf(
	    dir, sizeof(dir), "%s/tests/corpus/wire", src != NULL ? src : ".");
	n = scandir(dir, &ents, NULL, alphasort);
	CHECK(n > 0);
	snprintf(s.extra[0], sizeof(s.extra[0]), "--max-message=1024");
	s.nextra = 1;
	CHECK(tsrv_start(&s, "tcp") == 0);
	for (int i = 0; i < n; i++) {
		const char *name = ents[i]->d_name;
		uint8_t buf[200 * 1024];
		size_t len;
		FILE *f;
		nng_socket sk;
		qpi_wire_rep rep;
		nng_msg *m = NULL;

		/* request frames only: bad-NN-reply-* are replies */
		if (strncmp(name, "bad-", 4) != 0
		    || strstr(name, "-reply-") != NULL) {
			free(ents[i]);
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		CHECK((f = fopen(path, "rb")) != NULL);
		len = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		CHECK_EQ(nng_req0_open(&sk), 0);
		nng_socket_set_ms(sk, NNG_OPT_RECVTIMEO, 2000);
		nng_socket_set_ms(
		    sk, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
		CHECK_EQ(nng_dial(sk, s.url, NULL, 0), 0);
		int rv = raw_call(sk, buf, len, &rep, &m);
		if (rv == NNG_ETIMEDOUT || rv == NNG_ECONNRESET) {
			/* nng closed a connection whose frame was far over the
			 * receive limit: only for frames that big. */
			CHECK(len > 1024 + 65536);
			dropped++;
		} else {
			if (rv != 0 || rep.status == QP_OK) {
				fprintf(stderr, "%s: rv %d status %d\n", name,
				    rv, rv == 0 ? rep.status : -1);
			}
			CHECK_EQ(rv, 0);
			CHECK(rep.status != QP_OK);
			nng_msg_free(m);
		}
		nng_close(sk);
		sent++;
		free(ents[i]);
	}
	free(ents);
	CHECK(sent >= 40);
	ping_ok(s.url);
	fprintf(stderr,
	    "codec corpus: %d malformed frames refused by the server (%d "
	    "by closing the connection), server still answers\n",
	    sent, dropped);
	CHECK(tsrv_stop(&s));
}

static void
malformed_body(void *arg)
{
	tsrv s = {0}, s2 = {0};
	nng_socket sk;
	uint8_t buf[512];
	char addr[400];
	qp_queue *q;
	static uint8_t big[2000];

	CHECK(tsrv_start(&s, "tcp") == 0);
	CHECK_EQ(nng_req0_open(&sk), 0);
	nng_socket_set_ms(sk, NNG_OPT_RECVTIMEO, 5000);
	nng_socket_set_ms(sk, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	CHECK_EQ(nng_dial(sk, s.url, NULL, 0), 0);
	for (size_t i = 0; i < sizeof(bad_frames) / sizeof(bad_frames[0]);
	     i++) {
		size_t n = unhex(bad_frames[i].hex, buf, sizeof(buf));
		qpi_wire_rep rep;
		nng_msg *m = NULL;
		int rv = raw_call(sk, buf, n, &rep, &m);
		bool refused = rv == 0
		    && (rep.status == QP_EPROTO || rep.status == QP_EVERSION
		        || rep.status == QP_ETOOBIG)
		    && rep.errmsg[0] != '\0';
		if (!refused) {
			fprintf(stderr, "frame %zu (%s): rv %d status %d\n", i,
			    bad_frames[i].what, rv, rv == 0 ? rep.status : -1);
		}
		CHECK(refused);
		nng_msg_free(m);
	}
	nng_close(sk);
	ping_ok(s.url);
	corpus_replay();

	/* An item over --max-message: a clear error, and the server goes
	 * on. */
	snprintf(s2.extra[0], sizeof(s2.extra[0]), "--max-message=1000");
	s2.nextra = 1;
	CHECK(tsrv_start(&s2, "tcp") == 0);
	snprintf(addr, sizeof(addr), "%s/tr%d_big", s2.url, (int) getpid());
	q = open_q(addr, QP_OPEN_CREATE, 0, 0);
	CHECK_EQ(qp_queue_put(q, big, 1000, 0), QP_OK);
	CHECK_EQ(qp_queue_put(q, big, 1001, 0), QP_ETOOBIG);
	CHECK(strstr(qp_errmsg(), "1000") != NULL);
	qp_queue_free(q);
	ping_ok(s2.url);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&s2));
	CHECK(tsrv_stop(&s));
}

static void
test_remote_malformed_frames(void **state)
{
	tsrv_scenario(malformed_body, NULL);
}

/* ---- many getters, few threads ---- */

typedef struct getter {
	pthread_t thr;
	qp_queue *q;
	int rv;
	qp_duration timeout;
} getter;

static void *
getter_main(void *arg)
{
	getter *g = arg;
	void *buf;
	size_t len;

	g->rv = qp_queue_get(g->q, &buf, &len, g->timeout);
	if (g->rv == QP_OK) {
		qp_free(buf);
	}
	return NULL;
}

static void
getters_body(void *arg)
{
	const int n = *(const int *) arg;
	tsrv s = {0};
	char name[64], addr[400];
	getter *g = calloc((size_t) n, sizeof(*g));
	pthread_attr_t at;
	struct rlimit rl;
	long hwm0, rss0, thr0, hwm1, rss1, thr1, hwm2, rss2, thr2;
	qp_queue_stats st;

	CHECK(g != NULL);
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < (rlim_t) n * 2 + 256) {
		rl.rlim_cur = rl.rlim_max < (rlim_t) n * 2 + 256
		    ? rl.rlim_max
		    : (rlim_t) n * 2 + 256;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	CHECK(rl.rlim_cur >= (rlim_t) n + 256);
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "many");
	qaddr(addr, sizeof(addr), &s, name);
	qp_queue *p = open_q(addr, QP_OPEN_CREATE, 0, 0);
	tsrv_mem(&s, &hwm0, &rss0, &thr0);
	for (int i = 0; i < n; i++) {
		g[i].q = open_q(addr, 0, 0, 0);
	}
	tsrv_mem(&s, &hwm1, &rss1, &thr1);
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 64 * 1024);
	for (int i = 0; i < n; i++) {
		/* each its own timeout: the last 10 expire soon */
		g[i].timeout = i >= n - 10 ? 300 + (i % 10) * 10 : 60000;
		CHECK_EQ(
		    pthread_create(&g[i].thr, &at, getter_main, &g[i]), 0);
	}
	/* Until the server holds them all parked (bounded). */
	for (int i = 0; i < 1000; i++) {
		CHECK_EQ(qp_queue_stat(p, &st), QP_OK);
		if (st.getters >= (uint64_t) n - 10) {
			break;
		}
		tsrv_sleep_ms(20);
	}
	for (int i = n - 10; i < n; i++) {
		pthread_join(g[i].thr, NULL);
		CHECK_EQ(g[i].rv, QP_EEMPTY);
	}
	CHECK_EQ(qp_queue_stat(p, &st), QP_OK);
	CHECK_EQ(st.getters, n - 10);
	tsrv_mem(&s, &hwm2, &rss2, &thr2);
	long long t0 = tsrv_now_ms();
	for (int i = 0; i < n - 10; i++) {
		CHECK_EQ(qp_queue_put(p, "x", 1, QP_FOREVER), QP_OK);
	}
	for (int i = 0; i < n - 10; i++) {
		pthread_join(g[i].thr, NULL);
		CHECK_EQ(g[i].rv, QP_OK);
	}
	long long el = tsrv_now_ms() - t0;
	fprintf(stderr,
	    "%d clients: server RSS %ld KiB before, %ld KiB with %d idle "
	    "connections, %ld KiB (peak %ld) with %d blocked getters, %ld "
	    "threads; all served in %lld ms\n",
	    n, rss0, rss1, n, rss2, hwm2, n - 10, thr2, el);
	CHECK(thr2 < 64); /* a few threads, not one per getter */
	for (int i = 0; i < n; i++) {
		qp_queue_free(g[i].q);
	}
	qp_queue_free(p);
	free(g);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_many_getters(void **state)
{
	/* 1,000 with QP_GETTERS=1000 (the stress target); fewer in the
	 * default run. */
	const char *e = getenv("QP_GETTERS");
	int n = e != NULL ? atoi(e) : (SLOW_BUILD ? 100 : 300);

	if (n < 20) {
		n = 20;
	}
	tsrv_scenario(getters_body, &n);
}

/* ---- pipes through the server ---- */

typedef struct pipe_ctx {
	char addr[400];
	int ready[2]; /* the peer says it has opened its end */
} pipe_ctx;

static void
pipe_peer(void *arg)
{
	pipe_ctx *pc = arg;
	qp_conn *c = NULL;
	void *buf;
	size_t len;

	CHECK_EQ(qp_pipe_open(&c, pc->addr, -1, true), QP_OK);
	CHECK(write(pc->ready[1], "o", 1) == 1);
	/* echo until end of file, then say how many */
	int n = 0;
	for (;;) {
		/* as values: a bin stays a bin, an object an object */
		int rv = qp_conn_recv(c, &buf, &len);
		if (rv == QP_ECLOSED) {
			break;
		}
		CHECK_EQ(rv, QP_OK);
		CHECK_EQ(qp_conn_send(c, buf, len), QP_OK);
		qp_free(buf);
		n++;
	}
	char msg[32];
	snprintf(msg, sizeof(msg), "%d", n);
	qp_conn_free(c);
	/* the count goes back through a second pipe */
	char a2[420];
	snprintf(a2, sizeof(a2), "%s-count", pc->addr);
	CHECK_EQ(qp_pipe_open(&c, a2, 1, false), QP_OK);
	CHECK_EQ(qp_conn_send_bytes(c, msg, 0, strlen(msg)), QP_OK);
	qp_conn_free(c);
}

static void
pipe_killed_peer(void *arg)
{
	pipe_ctx *pc = arg;
	qp_conn *c = NULL;

	CHECK_EQ(qp_pipe_open(&c, pc->addr, 1, true), QP_OK);
	CHECK_EQ(qp_conn_send_bytes(c, "last words", 0, 10), QP_OK);
	CHECK(write(pc->ready[1], "o", 1) == 1);
	pause(); /* killed with its end open */
}

static void
pipes_body(void *arg)
{
	tsrv s = {0};
	pipe_ctx pc;
	qp_conn *c = NULL, *cnt = NULL, *x = NULL;
	char name[64], a2[420], ch, rx[64];
	void *buf;
	size_t len;
	bool ready;
	int gate, gate2;

	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "pipe");
	qaddr(pc.addr, sizeof(pc.addr), &s, name);
	CHECK(pipe(pc.ready) == 0);
	pid_t peer = spawn_gated(pipe_peer, &pc, &gate);
	pid_t killed = spawn_gated(pipe_killed_peer, &pc, &gate2);

	/* the count pipe: one way, we receive on side 0 */
	snprintf(a2, sizeof(a2), "%s-count", pc.addr);
	CHECK_EQ(qp_pipe_open(&cnt, a2, 0, false), QP_OK);
	CHECK_EQ(qp_conn_send_bytes(cnt, "x", 0, 1), QP_EPERM);

	CHECK_EQ(qp_pipe_open(&c, pc.addr, -1, true), QP_OK);
	/* both sides busy once the peer is in */
	gate_open(&gate);
	CHECK_EQ(read(pc.ready[0], &ch, 1), 1);
	CHECK_EQ(qp_pipe_open(&x, pc.addr, -1, true), QP_EBUSY);

	/* poll: nothing yet, after about the time asked */
	long long t0 = tsrv_now_ms();
	CHECK_EQ(qp_conn_poll(c, 200, &ready), QP_OK);
	CHECK(!ready);
	long long el = tsrv_now_ms() - t0;
	CHECK(el >= 180 && el < 1500);
	CHECK_EQ(qp_conn_poll(c, 0, &ready), QP_OK);
	CHECK(!ready);

	/* 200 messages of growing size come back in order */
	for (int i = 0; i < 200; i++) {
		char msg[64];
		int n = snprintf(msg, sizeof(msg), "message %d", i);
		CHECK_EQ(qp_conn_send_bytes(c, msg, 0, (size_t) n), QP_OK);
		CHECK_EQ(qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX), QP_OK);
		CHECK_EQ(len, n);
		CHECK(memcmp(buf, msg, len) == 0);
		qp_free(buf);
	}
	/* an object, and qp_wait on the connection's fd */
	uint8_t obj[] = {0x92, 0x01, 0xa1, 0x78}; /* [1, "x"] */
	CHECK_EQ(qp_conn_send(c, obj, sizeof(obj)), QP_OK);
	qp_conn *set[1] = {c};
	bool rdy[1];
	size_t nr = 0;
	CHECK_EQ(qp_wait(set, 1, 5000, rdy, &nr), QP_OK);
	CHECK_EQ(nr, 1);
	CHECK_EQ(qp_conn_recv(c, &buf, &len), QP_OK);
	CHECK_EQ(len, sizeof(obj));
	CHECK(memcmp(buf, obj, len) == 0);
	qp_free(buf);

	/* close: the peer sees end of file and reports 201 messages */
	CHECK_EQ(qp_conn_close(c), QP_OK);
	CHECK_EQ(qp_conn_recv_bytes(cnt, &buf, &len, SIZE_MAX), QP_OK);
	CHECK(len < sizeof(rx));
	memcpy(rx, buf, len);
	rx[len] = '\0';
	qp_free(buf);
	CHECK(strcmp(rx, "201") == 0);
	CHECK_EQ(qp_conn_recv_bytes(cnt, &buf, &len, SIZE_MAX), QP_ECLOSED);
	CHECK_EQ(reap(peer), 0);
	qp_conn_free(c);
	qp_conn_free(cnt);

	/* a peer killed with its end open: what it sent, then end of file
	 * (the pipe name is free again: both sides closed) */
	CHECK_EQ(qp_pipe_open(&c, pc.addr, 0, true), QP_OK);
	gate_open(&gate2);
	CHECK_EQ(read(pc.ready[0], &ch, 1), 1);
	kill(killed, SIGKILL);
	CHECK_EQ(reap(killed), 128 + SIGKILL);
	CHECK_EQ(qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX), QP_OK);
	CHECK_EQ(len, 10);
	qp_free(buf);
	t0 = tsrv_now_ms();
	CHECK_EQ(qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX), QP_ECLOSED);
	CHECK(tsrv_now_ms() - t0 < 1000);
	CHECK_EQ(qp_conn_poll(c, 0, &ready), QP_OK);
	CHECK(ready); /* end of file reads as ready, as in Python */
	qp_conn_free(c);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_pipes(void **state)
{
	tsrv_scenario(pipes_body, NULL);
}

/* ---- batches ---- */

static void
batch_run(const char *addr, double *rate)
{
	enum { N = 20000, B = 500 };
	qp_queue *q = open_q(addr, QP_OPEN_CREATE, 0, 0);
	static char data[B][64];
	const void *bufs[B];
	size_t lens[B];
	void *got[B];
	size_t glens[B], n, total = 0;
	uint32_t next = 0;

	for (int i = 0; i < B; i++) {
		bufs[i] = data[i];
		lens[i] = 64;
	}
	long long t0 = tsrv_now_ms();
	/* A batch in, then what is there out (the queue holds 1 MiB). */
	for (uint32_t k = 0; k < N; k += B) {
		for (int i = 0; i < B; i++) {
			uint32_t id = k + (uint32_t) i;
			memcpy(data[i], &id, sizeof(id));
		}
		CHECK_EQ(qp_queue_put_many(q, bufs, lens, B, 5000), QP_OK);
		while (total < k + B) {
			CHECK_EQ(qp_queue_get_many(q, got, glens, B, &n, 1000),
			    QP_OK);
			CHECK(n >= 1 && n <= B);
			for (size_t i = 0; i < n; i++) {
				uint32_t id;
				CHECK_EQ(glens[i], 64);
				memcpy(&id, got[i], sizeof(id));
				CHECK_EQ(id, next); /* in order, each once */
				next++;
				qp_free(got[i]);
			}
			total += n;
		}
	}
	long long el = tsrv_now_ms() - t0;
	*rate = el > 0 ? 2.0 * N * 1000.0 / (double) el : 0;
	CHECK_EQ(qp_queue_get_many(q, got, glens, B, &n, 0), QP_EEMPTY);
	CHECK_EQ(n, 0);
	qp_queue_free(q);
	qp_queue_unlink(addr);
}

static void
batch_body(void *arg)
{
	tsrv s = {0};
	char name[64], addr[400];
	double local, remote;

	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "batch");
	qaddr(addr, sizeof(addr), NULL, name);
	batch_run(addr, &local);
	qaddr(addr, sizeof(addr), &s, name);
	batch_run(addr, &remote);
	fprintf(stderr,
	    "batches of 500 x 64 B, put then get: %.0f items/s over tcp "
	    "(%.0f in shared memory)\n",
	    remote, local);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_batches(void **state)
{
	tsrv_scenario(batch_body, NULL);
}

/* ---- the acker: a get's confirmation without a get to carry it ---- */

/* The context switches of this process's thread named comm (summed over
 * all of that name); -1 if there is none. */
static long
thread_switches(const char *comm)
{
	char path[300], line[128];
	long total = -1;
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;

	CHECK(d != NULL);
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.') {
			continue;
		}
		snprintf(
		    path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (f == NULL) {
			continue;
		}
		bool match = fgets(line, sizeof(line), f) != NULL
		    && strncmp(line, comm, strlen(comm)) == 0
		    && line[strlen(comm)] == '\n';
		fclose(f);
		if (!match) {
			continue;
		}
		snprintf(path, sizeof(path), "/proc/self/task/%s/status",
		    e->d_name);
		if ((f = fopen(path, "r")) == NULL) {
			continue;
		}
		total = total < 0 ? 0 : total;
		while (fgets(line, sizeof(line), f) != NULL) {
			long v;
			if (sscanf(line, "voluntary_ctxt_switches: %ld", &v)
			        == 1
			    || sscanf(
			           line, "nonvoluntary_ctxt_switches: %ld", &v)
			        == 1) {
				total += v;
			}
		}
		fclose(f);
	}
	closedir(d);
	return total;
}

/* Waits (2 s at most) for q to have no item leased; *st its stats. */
static void
wait_confirmed(qp_queue *q, qp_queue_stats *st)
{
	for (int i = 0; i < 400; i++) {
		CHECK_EQ(qp_queue_stat(q, st), QP_OK);
		if (st->leased == 0) {
			return;
		}
		usleep(5000);
	}
	CHECK_EQ(st->leased, 0);
}

/* A get whose item no later get confirms is confirmed by the handle's
 * acker a moment later (PROTOCOL.md: 10 ms), the handle left open; and
 * while gets come, each carrying the last one's confirmation, the acker
 * is not woken for them: it sleeps on a timer the gets move on. */
static void
acker_body(void *arg)
{
	tsrv s = {0};
	char name[64], addr[512];
	qp_queue *q;
	qp_queue_stats st;
	int i;

	(void) arg;
	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), "acker");
	qaddr(addr, sizeof(addr), &s, name);
	q = open_q(addr, QP_OPEN_CREATE, 0, 0);
	put_str(q, "first");
	get_str(q, "first", 0);
	wait_confirmed(q, &st);
	/* The acker has slept since. For 300 ms, a put and a get one after
	 * another (some 20-100 us each here): no confirmation waits 5 ms.
	 * Waking every 10 ms while gets come (as it did), it would switch
	 * 30 times. */
	long before = thread_switches("qpipe-acker");
	CHECK(before >= 0);
	int64_t t0 = qpi_now_ns(), ms = 0;
	for (i = 0; i < 200000 && ms < 300; i++) {
		put_str(q, "again");
		get_str(q, "again", 0);
		ms = (qpi_now_ns() - t0) / 1000000;
	}
	long woke = thread_switches("qpipe-acker") - before;
	print_message("acker: %ld switches over %lld ms, %d gets\n", woke,
	    (long long) ms, i);
	/* A stall of this process over 5 ms lets it fire (and set its
	 * timer again): a few are allowed, not one per 10 ms. */
	CHECK(woke <= 4 + ms / 50);
	wait_confirmed(q, &st);
	CHECK_EQ(st.items, 0);
	qp_queue_free(q);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_acker(void **state)
{
	tsrv_scenario(acker_body, NULL);
}

/* ---- a queue deleted and made anew by a local process ---- */

/* The server's next request on the name goes to the new segment, each
 * time, however soon after the local delete it comes. arg non-NULL: the
 * segment is unlinked by hand instead (as rm does: no removal mark in
 * it), which qpiped notices through its watch on the directory, read at
 * most every millisecond: a get 5 ms later finds the new queue, not the
 * old segment it still maps. */
static void
remake_body(void *arg)
{
	bool by_hand = arg != NULL;
	tsrv s = {0};
	char name[64], la[512], ra[512], item[32], path[600];
	qp_queue *lq, *rq;

	CHECK(tsrv_start(&s, "tcp") == 0);
	qname(name, sizeof(name), by_hand ? "byhand" : "remake");
	qaddr(la, sizeof(la), NULL, name);
	qaddr(ra, sizeof(ra), &s, name);
	snprintf(path, sizeof(path), "%s/qpipe.%s", qpi_shm_dir(), name);
	lq = open_q(la, QP_OPEN_CREATE, 0, 0);
	rq = open_q(ra, 0, 0, 0);
	for (int i = 0; i < 5; i++) {
		snprintf(item, sizeof(item), "old-%d", i);
		put_str(rq, item); /* the server holds this segment */
		qp_queue_free(lq);
		if (by_hand) {
			CHECK_EQ(unlink(path), 0);
			usleep(5000);
		} else {
			CHECK_EQ(qp_queue_unlink(la), QP_OK);
		}
		lq = open_q(la, QP_OPEN_CREATE, 0, 0);
		snprintf(item, sizeof(item), "new-%d", i);
		put_str(lq, item);
		get_str(rq, item, 0);
	}
	/* Deleted through the library, the queue is gone for qpiped's
	 * clients at once (the segment's removal mark, looked at on every
	 * request), not after its next look at the directory. */
	put_str(rq, "last");
	qp_queue_free(lq);
	CHECK_EQ(qp_queue_unlink(la), QP_OK);
	char buf[16];
	size_t n;
	CHECK_EQ(qp_queue_get_into(rq, buf, sizeof(buf), &n, 0), QP_ENOENT);
	qp_queue_free(rq);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_local_remake(void **state)
{
	tsrv_scenario(remake_body, NULL);
}

static void
test_remote_local_remake_by_hand(void **state)
{
	tsrv_scenario(remake_body, "by hand");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_remote_parity_tcp),
	    cmocka_unit_test(test_remote_parity_ipc),
	    cmocka_unit_test(test_remote_refused),
	    cmocka_unit_test(test_remote_missing_queue),
	    cmocka_unit_test(test_remote_forked_child),
	    cmocka_unit_test(test_remote_mixed_local),
	    cmocka_unit_test(test_remote_local_put_killed_before_bump),
	    cmocka_unit_test(test_remote_4x4_exactly_once),
	    cmocka_unit_test(test_remote_client_killed_lease),
	    cmocka_unit_test(test_remote_lease_expiry),
	    cmocka_unit_test(test_remote_touch_keeps_task),
	    cmocka_unit_test(test_remote_get_waits_for_lease_room),
	    cmocka_unit_test(test_remote_put_many_all_or_nothing),
	    cmocka_unit_test(test_remote_batch_get_within_max_message),
	    cmocka_unit_test(test_remote_server_killed),
	    cmocka_unit_test(test_remote_duplicate_applied_once),
	    cmocka_unit_test(test_remote_malformed_frames),
	    cmocka_unit_test(test_remote_many_getters),
	    cmocka_unit_test(test_remote_pipes),
	    cmocka_unit_test(test_remote_batches),
	    cmocka_unit_test(test_remote_acker),
	    cmocka_unit_test(test_remote_complete),
	    cmocka_unit_test(test_remote_local_remake),
	    cmocka_unit_test(test_remote_local_remake_by_hand),
	};

	signal(SIGPIPE, SIG_IGN);
	if (getenv("QP_TEST_FILTER") != NULL) {
		cmocka_set_test_filter(getenv("QP_TEST_FILTER"));
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
