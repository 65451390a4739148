/*
 * test_conn_limits.c - what one hostile or clumsy client may hold of
 * qpiped (server/conn.c, wait.c, lease.c, link.c): a connection that
 * pipelines 40,000 blocking gets or many big blocked puts is refused past
 * its own limits while other clients' blocking gets go on and a waiting
 * consumer gets its put. The raw client here speaks SP frames on a plain
 * socket, encoding requests with proto/wire.h, so that it can pipeline
 * without reading. Each scenario runs in a child; CHECK exits non-zero.
 */
#define _GNU_SOURCE 1 /* prlimit */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "qpi.h"
#include "qps_testsrv.h"
#include "sp_raw.h"
#include "wire.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>

/* The helpers of qps_testsrv.h this program has no use for. */
static void __attribute__((unused)) cl_unused(void)
{
	(void) tsrv_restart;
}

/* ---- a raw SP client on a plain TCP socket ---- */

typedef struct rc {
	int fd;
	uint8_t *out; /* frames not yet written: out[outoff..outlen) */
	size_t outoff, outlen, outcap;
	uint8_t *in; /* bytes read, not yet a whole frame */
	size_t inlen, incap;
	uint32_t next_id;
	long replies; /* whole replies read */
	long status[32]; /* replies by status */
	long nitems; /* items in the last reply */
	char last_err[256]; /* the last error reply's message */
} rc;

/* Connects to url (tcp://127.0.0.1:P), non-blocking; with hs, sends the
 * req0 handshake and reads the server's. */
static void
rc_open(rc *c, const char *url, bool hs)
{
	memset(c, 0, sizeof(*c));
	c->fd = spr_dial(url, 0);
	if (hs) {
		spr_handshake(c->fd);
	}
	CHECK(fcntl(c->fd, F_SETFL, O_NONBLOCK) == 0);
}

static void
rc_close(rc *c)
{
	close(c->fd);
	free(c->out);
	free(c->in);
}

/* Queues the frame of *r (its req_id set here). */
static void
rc_queue(rc *c, qpi_wire_req *r)
{
	qpi_wire_buf b = {0};
	uint32_t id = 0x80000000u | ++c->next_id;
	uint64_t len;

	r->req_id = c->next_id;
	CHECK_EQ(qpi_wire_encode_req(r, &b), QP_OK);
	len = b.len + 4;
	if (c->outlen + 12 + b.len > c->outcap) {
		c->outcap = (c->outlen + 12 + b.len) * 2;
		c->out = realloc(c->out, c->outcap);
		CHECK(c->out != NULL);
	}
	for (int i = 0; i < 8; i++) {
		c->out[c->outlen++] = (uint8_t) (len >> (56 - 8 * i));
	}
	for (int i = 0; i < 4; i++) {
		c->out[c->outlen++] = (uint8_t) (id >> (24 - 8 * i));
	}
	memcpy(c->out + c->outlen, b.data, b.len);
	c->outlen += b.len;
	qpi_wire_buf_free(&b);
}

/* Counts the whole replies in c->in (status, last error message). */
static void
rc_parse(rc *c, bool decode)
{
	size_t pos = 0;

	while (c->inlen - pos >= 12) {
		uint64_t len = 0;
		for (int i = 0; i < 8; i++) {
			len = len << 8 | c->in[pos + (size_t) i];
		}
		CHECK(len >= 4 && len < (1u << 30));
		if (c->inlen - pos - 8 < len) {
			break;
		}
		if (decode) {
			static qpi_wire_item items[4096];
			uint64_t ids[4];
			qpi_wire_rep rp;
			memset(&rp, 0, sizeof(rp));
			rp.items = items;
			rp.items_cap = 4096;
			rp.ids = ids;
			rp.ids_cap = 4;
			if (qpi_wire_decode_rep(
			        c->in + pos + 12, (size_t) len - 4, NULL, &rp)
			        == QP_OK
			    && rp.status >= 0 && rp.status < 32) {
				c->status[rp.status]++;
				c->nitems = rp.nitems;
				if (rp.status != QP_OK) {
					snprintf(c->last_err,
					    sizeof(c->last_err), "%s",
					    rp.errmsg);
				}
			}
		}
		c->replies++;
		pos += 8 + (size_t) len;
	}
	memmove(c->in, c->in + pos, c->inlen - pos);
	c->inlen -= pos;
}

/* Writes what is queued and reads what comes for up to ms, or until
 * everything is written and want replies are in (want < 0: only write).
 * decode: count replies by status. False when the server closed. */
static bool
rc_pump(rc *c, int ms, long want, bool read, bool decode)
{
	long long end = tsrv_now_ms() + ms;

	while (tsrv_now_ms() < end) {
		struct pollfd p = {.fd = c->fd,
		    .events = (short) ((read ? POLLIN : 0)
		        | (c->outoff < c->outlen ? POLLOUT : 0))};
		if (c->outoff == c->outlen
		    && (want < 0 || c->replies >= want)) {
			return true;
		}
		if (poll(&p, 1, 50) <= 0) {
			continue;
		}
		if (p.revents & POLLOUT) {
			ssize_t n = write(
			    c->fd, c->out + c->outoff, c->outlen - c->outoff);
			if (n > 0) {
				c->outoff += (size_t) n;
			}
			if (c->outoff == c->outlen) {
				c->outoff = c->outlen = 0;
			}
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			if (c->incap - c->inlen < 65536) {
				c->incap = c->incap * 2 + 65536;
				c->in = realloc(c->in, c->incap);
				CHECK(c->in != NULL);
			}
			ssize_t n = recv(
			    c->fd, c->in + c->inlen, c->incap - c->inlen, 0);
			if (n == 0 || (n < 0 && errno != EAGAIN)) {
				return false;
			}
			if (n > 0) {
				c->inlen += (size_t) n;
				rc_parse(c, decode);
			}
		}
	}
	return true;
}

/* A msgpack bin of n bytes of 'x' (malloc'd), *lenp its size. */
static uint8_t *
bin_item(size_t n, size_t *lenp)
{
	uint8_t *p = malloc(n + 5);

	CHECK(p != NULL);
	p[0] = 0xc6;
	p[1] = (uint8_t) (n >> 24);
	p[2] = (uint8_t) (n >> 16);
	p[3] = (uint8_t) (n >> 8);
	p[4] = (uint8_t) n;
	memset(p + 5, 'x', n);
	*lenp = n + 5;
	return p;
}

/* ---- one connection's waiting requests ---- */

typedef struct getter {
	qp_queue *q;
	int timeout;
	int rv;
	long long ms;
	char buf[64];
	size_t n;
} getter;

static void *
getter_main(void *arg)
{
	getter *g = arg;
	long long t0 = tsrv_now_ms();

	g->rv = qp_queue_get_into(
	    g->q, g->buf, sizeof(g->buf), &g->n, g->timeout);
	g->ms = tsrv_now_ms() - t0;
	return NULL;
}

static void
waiting_body(void)
{
	enum { NGETS = 40000 };
	tsrv t = {0};
	char hog[64], other[64], full[64], addr[400];
	qp_queue *q, *p, *f;
	pthread_t thr;
	getter g = {0};
	rc c, d;
	size_t ilen;
	uint8_t *item;

	setenv("QPIPE_TRANSPORT", "sp", 1);
	snprintf(
	    t.extra[t.nextra++], sizeof(t.extra[0]), "--max-waiting-bytes");
	snprintf(t.extra[t.nextra++], sizeof(t.extra[0]), "1M");
	CHECK(tsrv_start(&t, "tcp") == 0);
	snprintf(hog, sizeof(hog), "clhog%ld", (long) getpid());
	snprintf(other, sizeof(other), "clother%ld", (long) getpid());
	snprintf(full, sizeof(full), "clfull%ld", (long) getpid());
	snprintf(addr, sizeof(addr), "%s/%s", t.url, hog);
	CHECK_EQ(qp_queue_open(
	             &q, addr, &(qp_queue_opts) {.flags = QP_OPEN_CREATE}),
	    QP_OK);
	qp_queue_free(q);

	/* One connection pipelines 40,000 blocking gets on an empty queue:
	 * past its own limit (64 by default) each is refused, with a clear
	 * error, to it alone. */
	rc_open(&c, t.url, true);
	for (int i = 0; i < NGETS; i++) {
		qpi_wire_req r
		    = {.op = QPI_OP_GET, .timeout = 30000, .max_items = 1};
		snprintf(r.name, sizeof(r.name), "%s", hog);
		rc_queue(&c, &r);
	}
	CHECK(rc_pump(&c, 20000, NGETS - 64, true, true));
	CHECK_EQ(c.replies, NGETS - 64);
	CHECK_EQ(c.status[QP_ELIMIT], NGETS - 64);
	CHECK(strstr(c.last_err, "--max-waiting") != NULL);

	/* Meanwhile another client's blocking get waits, and gets the put a
	 * third makes. */
	snprintf(addr, sizeof(addr), "%s/%s", t.url, other);
	CHECK_EQ(qp_queue_open(
	             &q, addr, &(qp_queue_opts) {.flags = QP_OPEN_CREATE}),
	    QP_OK);
	CHECK_EQ(qp_queue_open(&p, addr, NULL), QP_OK);
	g.q = q;
	g.timeout = 5000;
	CHECK(pthread_create(&thr, NULL, getter_main, &g) == 0);
	tsrv_sleep_ms(300);
	CHECK_EQ(qp_queue_put(p, "wake", 4, 0), QP_OK);
	pthread_join(thr, NULL);
	CHECK_EQ(g.rv, QP_OK);
	CHECK(g.n == 4 && memcmp(g.buf, "wake", 4) == 0);
	fprintf(
	    stderr, "the waiting consumer got its put after %lld ms\n", g.ms);
	/* And a get that times out says so after its timeout, not at once. */
	g.timeout = 500;
	getter_main(&g);
	CHECK_EQ(g.rv, QP_EEMPTY);
	CHECK(g.ms >= 450);

	/* Bytes held by one connection's blocked puts: a full queue, puts
	 * of 256 KiB; past --max-waiting-bytes 1M they are refused. */
	snprintf(addr, sizeof(addr), "%s/%s", t.url, full);
	CHECK_EQ(qp_queue_open(&f, addr,
	             &(qp_queue_opts) {.flags = QP_OPEN_CREATE, .maxsize = 1}),
	    QP_OK);
	CHECK_EQ(qp_queue_put(f, "1", 1, 0), QP_OK);
	item = bin_item(256 * 1024, &ilen);
	rc_open(&d, t.url, true);
	for (int i = 0; i < 12; i++) {
		qpi_wire_req r = {.op = QPI_OP_PUT, .timeout = 30000};
		snprintf(r.name, sizeof(r.name), "%s", full);
		r.item.data = item;
		r.item.len = ilen;
		rc_queue(&d, &r);
	}
	/* 1M holds three such requests (each a little over 256 KiB). */
	CHECK(rc_pump(&d, 10000, 9, true, true));
	CHECK_EQ(d.status[QP_ELIMIT], 9);
	CHECK(strstr(d.last_err, "--max-waiting-bytes") != NULL);
	/* Another client's blocked put still waits its turn. */
	{
		long long t0 = tsrv_now_ms();
		CHECK_EQ(qp_queue_put(f, "2", 1, 300), QP_EFULL);
		CHECK(tsrv_now_ms() - t0 >= 250);
	}
	free(item);
	rc_close(&c);
	rc_close(&d);
	qp_queue_free(q);
	qp_queue_free(p);
	qp_queue_free(f);
	snprintf(addr, sizeof(addr), "%s/%s", t.url, hog);
	qp_queue_unlink(addr);
	snprintf(addr, sizeof(addr), "%s/%s", t.url, other);
	qp_queue_unlink(addr);
	snprintf(addr, sizeof(addr), "%s/%s", t.url, full);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&t));
}

static void
test_conn_limits_waiting_per_conn(void **state)
{
	(void) state;
	tsrv_scenario0(waiting_body);
}

/* ---- one connection's leases ---- */

/* Puts n small items into name over c (put_many batches of 1000). */
static void
fill(rc *c, const char *name, int n)
{
	static qpi_wire_item items[1000];
	static const uint8_t one[] = {0xc4, 0x01, 'i'};
	long before = c->replies;
	int batches = 0;

	for (int i = 0; i < 1000; i++) {
		items[i].data = one;
		items[i].len = sizeof(one);
	}
	for (int done = 0; done < n; done += 1000, batches++) {
		qpi_wire_req r = {.op = QPI_OP_PUT_MANY,
		    .flags = QPI_PUT_CREATE,
		    .items = items,
		    .nitems = (uint32_t) (n - done < 1000 ? n - done : 1000),
		    .items_cap = 1000};
		snprintf(r.name, sizeof(r.name), "%s", name);
		rc_queue(c, &r);
	}
	CHECK(rc_pump(c, 10000, before + batches, true, true));
	CHECK_EQ(c->replies, before + batches);
}

/* A worker-mode get of up to max items, leased for 600 s. */
static void
grab(rc *c, const char *name, uint32_t max)
{
	qpi_wire_req r = {.op = QPI_OP_GET,
	    .max_items = max,
	    .lease_mode = QPI_LEASE_WORK,
	    .lease_ms = 600000};
	long before = c->replies;

	snprintf(r.name, sizeof(r.name), "%s", name);
	rc_queue(c, &r);
	CHECK(rc_pump(c, 10000, before + 1, true, true));
	CHECK_EQ(c->replies, before + 1);
}

static void
leases_body(void)
{
	tsrv t = {0}, u = {0};
	char name[64], addr[400], buf[64], msg[512];
	qp_queue *q;
	size_t n;
	rc a, b;

	setenv("QPIPE_TRANSPORT", "sp", 1);
	CHECK(tsrv_start(&t, "tcp") == 0);
	snprintf(name, sizeof(name), "cllease%ld", (long) getpid());
	snprintf(addr, sizeof(addr), "%s/%s", t.url, name);
	rc_open(&a, t.url, true);
	fill(&a, name, 10000);

	/* One worker takes 1,000 items, then asks for 4,096 more under a
	 * 600 s lease: the batch takes only the room left (24 of its limit,
	 * 1024 by default), not every lease slot of the queue. */
	grab(&a, name, 1000);
	CHECK_EQ(a.nitems, 1000);
	grab(&a, name, 4096);
	CHECK_EQ(a.status[QP_OK], 12);
	CHECK_EQ(a.nitems, 24);
	/* Past its limit it is told so, as what it is. */
	grab(&a, name, 10);
	CHECK_EQ(a.status[QP_ELIMIT], 1);
	CHECK(strstr(a.last_err, "--max-leases") != NULL);
	/* Other consumers get the ready items, at once or waiting. */
	CHECK_EQ(qp_queue_open(&q, addr, NULL), QP_OK);
	CHECK_EQ(qp_queue_get_into(q, buf, sizeof(buf), &n, 0), QP_OK);
	CHECK_EQ(qp_queue_get_into(q, buf, sizeof(buf), &n, 3000), QP_OK);
	qp_queue_free(q);
	rc_close(&a);
	CHECK(tsrv_stop(&t));

	/* A server that lets one connection take every slot: another
	 * consumer is told the lease room is taken, never "empty". */
	snprintf(u.extra[u.nextra++], sizeof(u.extra[0]), "--max-leases");
	snprintf(u.extra[u.nextra++], sizeof(u.extra[0]), "100000");
	CHECK(tsrv_start(&u, "tcp") == 0);
	snprintf(addr, sizeof(addr), "%s/%s", u.url, name);
	rc_open(&b, u.url, true);
	grab(&b, name, 4096);
	CHECK_EQ(b.nitems, 4096);
	CHECK_EQ(qp_queue_open(&q, addr, NULL), QP_OK);
	CHECK_EQ(qp_queue_get_into(q, buf, sizeof(buf), &n, 0), QP_ELIMIT);
	snprintf(msg, sizeof(msg), "%s", qp_errmsg());
	CHECK(strstr(msg, "items ready") != NULL);
	{
		long long t0 = tsrv_now_ms();
		CHECK_EQ(qp_queue_get_into(q, buf, sizeof(buf), &n, 500),
		    QP_ELIMIT);
		CHECK(tsrv_now_ms() - t0 >= 450);
		CHECK(strstr(qp_errmsg(), "none could be leased") != NULL);
	}
	qp_queue_free(q);
	rc_close(&b);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&u));
}

static void
test_conn_limits_leases_per_conn(void **state)
{
	(void) state;
	tsrv_scenario0(leases_body);
}

/* ---- connections that never finish their handshake or auth ---- */

static void
time_limits_body(void)
{
	static const char tok[] = "the time limits' token";
	tsrv t = {0};
	char tokf[48], name[64], addr[400];
	qp_conn_opts co = {.token = tok};
	qp_queue *q;
	rc c[10];
	long long t0;
	FILE *f;

	setenv("QPIPE_TRANSPORT", "sp", 1);
	snprintf(tokf, sizeof(tokf), "/tmp/qpcl-tok.%ld", (long) getpid());
	CHECK((f = fopen(tokf, "w")) != NULL);
	fprintf(f, "%s\n", tok);
	fclose(f);
	CHECK(chmod(tokf, 0600) == 0);
	snprintf(t.extra[t.nextra++], sizeof(t.extra[0]), "--max-connections");
	snprintf(t.extra[t.nextra++], sizeof(t.extra[0]), "10");
	snprintf(t.extra[t.nextra++], sizeof(t.extra[0]),
	    "--handshake-timeout=500");
	snprintf(
	    t.extra[t.nextra++], sizeof(t.extra[0]), "--auth-timeout=1000");
	snprintf(t.extra[t.nextra++], sizeof(t.extra[0]), "--auth-token-file");
	snprintf(t.extra[t.nextra++], sizeof(t.extra[0]), "%s", tokf);
	CHECK(tsrv_start(&t, "tcp") == 0);
	snprintf(name, sizeof(name), "cltime%ld", (long) getpid());
	snprintf(addr, sizeof(addr), "%s/%s", t.url, name);

	/* Ten connections fill --max-connections 10: five never send the
	 * SP handshake, five send it and never authenticate. */
	t0 = tsrv_now_ms();
	for (int i = 0; i < 10; i++) {
		rc_open(&c[i], t.url, i >= 5);
	}
	for (int i = 0; i < 5; i++) {
		long long ms = spr_ms_to_close(c[i].fd, t0, 5000);
		CHECK(ms >= 400 && ms < 3000);
	}
	for (int i = 5; i < 10; i++) {
		long long ms = spr_ms_to_close(c[i].fd, t0, 5000);
		CHECK(ms >= 900 && ms < 4000);
	}
	/* Then a client with the token is served. */
	CHECK_EQ(qp_queue_open(&q, addr,
	             &(qp_queue_opts) {.flags = QP_OPEN_CREATE, .conn = &co}),
	    QP_OK);
	CHECK_EQ(qp_queue_put(q, "x", 1, 0), QP_OK);
	/* An authenticated connection stays past both limits. */
	tsrv_sleep_ms(1200);
	CHECK_EQ(qp_queue_put(q, "y", 1, 0), QP_OK);
	qp_queue_free(q);
	for (int i = 0; i < 10; i++) {
		rc_close(&c[i]);
	}
	CHECK_EQ(qp_queue_unlink_opts(addr, &co), QP_OK);
	CHECK(tsrv_stop(&t));
	unlink(tokf);
}

static void
test_conn_limits_handshake_auth_time(void **state)
{
	(void) state;
	tsrv_scenario0(time_limits_body);
}

/* ---- floods ---- */

/* The server's CPU time so far, in ms (utime + stime of /proc/PID/stat). */
static long long
cpu_ms(pid_t pid)
{
	char path[64], buf[1024];
	unsigned long ut = 0, st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
	CHECK((f = fopen(path, "r")) != NULL);
	CHECK(fgets(buf, sizeof(buf), f) != NULL);
	fclose(f);
	/* After "(comm)": state is field 3, utime 14, stime 15. */
	char *p = strrchr(buf, ')');
	CHECK(p != NULL);
	CHECK(sscanf(p + 2,
	          "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
	          &st)
	    == 2);
	return (long long) (ut + st) * 1000 / sysconf(_SC_CLK_TCK);
}

/* Bytes of the server's log. */
static long long
log_size(const tsrv *t)
{
	char path[128];
	struct stat sb;

	snprintf(path, sizeof(path), "%s/log", t->dir);
	return stat(path, &sb) == 0 ? (long long) sb.st_size : -1;
}

/* Descriptors the process has open. */
static int
nfds(pid_t pid)
{
	char cmd[128];
	int n = -1;
	FILE *f;

	snprintf(cmd, sizeof(cmd), "ls /proc/%d/fd | wc -l", (int) pid);
	CHECK((f = popen(cmd, "r")) != NULL);
	CHECK(fscanf(f, "%d", &n) == 1);
	pclose(f);
	return n;
}

static void
emfile_body(void)
{
	enum { NCONN = 40 };
	tsrv t = {0};
	char name[64], addr[400];
	struct rlimit low, high;
	qp_queue *q;
	rc c[NCONN];
	long long cpu0, log0;

	setenv("QPIPE_TRANSPORT", "sp", 1);
	CHECK(tsrv_start(&t, "tcp") == 0);
	/* The open-file limit a little above what it has open: the
	 * connections below meet EMFILE. */
	CHECK(prlimit(t.pid, RLIMIT_NOFILE, NULL, &high) == 0);
	low = high;
	low.rlim_cur = (rlim_t) nfds(t.pid) + 4;
	CHECK(prlimit(t.pid, RLIMIT_NOFILE, &low, NULL) == 0);
	for (int i = 0; i < NCONN; i++) {
		rc_open(&c[i], t.url, false);
	}
	tsrv_sleep_ms(300);
	cpu0 = cpu_ms(t.pid);
	log0 = log_size(&t);
	tsrv_sleep_ms(2000);
	/* Backing off, it neither spins nor floods its log. */
	long long cpu = cpu_ms(t.pid) - cpu0, logged = log_size(&t) - log0;
	fprintf(stderr, "EMFILE for 2 s: %lld ms of CPU, %lld bytes logged\n",
	    cpu, logged);
	CHECK(cpu < 300);
	CHECK(logged < 4096);
	/* Descriptors back: it accepts again (within its backoff). */
	for (int i = 0; i < NCONN; i++) {
		rc_close(&c[i]);
	}
	CHECK(prlimit(t.pid, RLIMIT_NOFILE, &high, NULL) == 0);
	snprintf(name, sizeof(name), "clemfile%ld", (long) getpid());
	snprintf(addr, sizeof(addr), "%s/%s", t.url, name);
	CHECK_EQ(qp_queue_open(
	             &q, addr, &(qp_queue_opts) {.flags = QP_OPEN_CREATE}),
	    QP_OK);
	CHECK_EQ(qp_queue_put(q, "x", 1, 0), QP_OK);
	qp_queue_free(q);
	CHECK_EQ(qp_queue_unlink(addr), QP_OK);
	CHECK(tsrv_stop(&t));
}

static void
test_conn_limits_accept_emfile(void **state)
{
	(void) state;
	tsrv_scenario0(emfile_body);
}

/* Runs the qpipe CLI with args (stderr to errf): its exit status; *ms
 * how long it took. */
static int
cli(const char *args, const char *errf, long long *ms)
{
	char cmd[1024];
	const char *bd = getenv("QP_BUILD_DIR");
	long long t0 = tsrv_now_ms();
	int st;

	snprintf(cmd, sizeof(cmd), "%s/bin/qpipe %s >/dev/null 2>%s",
	    bd != NULL ? bd : ".", args, errf);
	st = system(cmd);
	*ms = tsrv_now_ms() - t0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool
file_has(const char *path, const char *what)
{
	char buf[4096];
	size_t n;
	FILE *f = fopen(path, "r");

	if (f == NULL) {
		return false;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strstr(buf, what) != NULL;
}

static void
idle_body(void)
{
	enum { MAX = 2010, IDLE = 2000, OVER = 100 };
	static rc c[IDLE + OVER];
	tsrv t = {0};
	char args[600], errf[128];
	long long ms, lines0;

	setenv("QPIPE_TRANSPORT", "sp", 1);
	snprintf(t.extra[t.nextra++], sizeof(t.extra[0]),
	    "--max-connections=%d", MAX);
	CHECK(tsrv_start(&t, "tcp") == 0);
	snprintf(errf, sizeof(errf), "%s/cli.err", t.dir);
	/* Thousands of idle connections held: ping, put and get answer. */
	for (int i = 0; i < IDLE; i++) {
		rc_open(&c[i], t.url, true);
	}
	snprintf(args, sizeof(args), "ping %s", t.url);
	CHECK_EQ(cli(args, errf, &ms), 0);
	fprintf(stderr, "%d idle connections: qpipe ping %lld ms\n", IDLE, ms);
	CHECK(ms < 3000);
	snprintf(
	    args, sizeof(args), "put %s/clidle%ld x", t.url, (long) getpid());
	CHECK_EQ(cli(args, errf, &ms), 0);
	CHECK(ms < 3000);
	snprintf(args, sizeof(args), "get --timeout 2 %s/clidle%ld", t.url,
	    (long) getpid());
	CHECK_EQ(cli(args, errf, &ms), 0);
	CHECK(ms < 3000);
	snprintf(
	    args, sizeof(args), "rm %s/clidle%ld", t.url, (long) getpid());
	CHECK_EQ(cli(args, errf, &ms), 0);
	/* Past --max-connections a client is told so at once, and exits 2;
	 * the server's log says it in a few lines. */
	for (int i = IDLE; i < IDLE + OVER; i++) {
		rc_open(&c[i], t.url, true);
	}
	lines0 = log_size(&t);
	snprintf(args, sizeof(args), "ping %s", t.url);
	CHECK_EQ(cli(args, errf, &ms), 2);
	fprintf(stderr, "ping at the limit: %lld ms, log +%lld bytes\n", ms,
	    log_size(&t) - lines0);
	CHECK(ms < 2000);
	CHECK(file_has(errf, "server at its connection limit"));
	CHECK(log_size(&t) - lines0 < 2048);
	for (int i = 0; i < IDLE + OVER; i++) {
		rc_close(&c[i]);
	}
	CHECK(tsrv_stop(&t));
}

static void
test_conn_limits_idle_and_refused(void **state)
{
	(void) state;
	tsrv_scenario0(idle_body);
}

/* A proxy (sp_raw.h) in front of the server: its first connection passes
 * everything until drop_first is set; on every later one the client's
 * first frame (its hello) passes, and at its second the proxy drops both
 * sides: a server that handshakes, then fails every request. The client's
 * stream: 8 handshake bytes, then frames of an 8-byte length and a body. */
typedef struct flaky {
	size_t hs, hdr, body;
	uint64_t len;
	int frames;
} flaky;

static size_t
flaky_cut(spr_proxy *px, bool first, const uint8_t *buf, size_t n, bool *drop)
{
	flaky *f = px->arg;
	size_t pass = 0;

	if (buf == NULL) {
		*f = (flaky) {.hs = 8};
		return 0;
	}
	for (; pass < n; pass++) {
		if (f->hs > 0) {
			f->hs--;
		} else if (f->body > 0) {
			f->body--;
		} else {
			if (f->hdr == 0) {
				if (!first && f->frames == 1) {
					*drop = true;
					break;
				}
				f->len = 0;
			}
			f->len = f->len << 8 | buf[pass];
			if (++f->hdr == 8) {
				f->hdr = 0;
				f->body = (size_t) f->len;
				f->frames++;
			}
		}
	}
	return pass;
}

static void
backoff_body(void)
{
	tsrv t = {0};
	flaky f = {0};
	spr_proxy px = {.poll_ms = 50, .cut = flaky_cut, .arg = &f};
	char name[64], addr[400];
	qp_queue *q;
	long long t0, el;

	setenv("QPIPE_TRANSPORT", "sp", 1);
	setenv("QPIPE_RECONNECT_MS", "2000", 1);
	CHECK(tsrv_start(&t, "tcp") == 0);
	spr_proxy_start(&px, t.url, 64);
	snprintf(name, sizeof(name), "clback%ld", (long) getpid());
	snprintf(addr, sizeof(addr), "tcp://127.0.0.1:%u/%s",
	    (unsigned) px.port, name);
	CHECK_EQ(qp_queue_open(
	             &q, addr, &(qp_queue_opts) {.flags = QP_OPEN_CREATE}),
	    QP_OK);
	CHECK_EQ(qp_queue_put(q, "x", 1, 0), QP_OK);
	/* From now on every connection handshakes, then fails: the client
	 * redials ever more slowly (only a reply resets its backoff), and
	 * gives up after its reconnect window. */
	px.drop_first = true;
	t0 = tsrv_now_ms();
	CHECK_EQ(qp_queue_put(q, "y", 1, 0), QP_ECONNRESET);
	el = tsrv_now_ms() - t0;
	fprintf(stderr, "%d connections in %lld ms\n", px.conns - 1, el);
	CHECK(el >= 1500);
	CHECK(px.conns - 1 <= 15);
	qp_queue_free(q);
	spr_proxy_stop(&px);
	snprintf(addr, sizeof(addr), "%s/%s", t.url, name);
	qp_queue_unlink(addr);
	CHECK(tsrv_stop(&t));
}

static void
test_conn_limits_backoff_by_reply(void **state)
{
	(void) state;
	tsrv_scenario0(backoff_body);
}

/* ---- replies not read ---- */

static void
unread_body(void)
{
	enum { NLIST = 17000, NQ = 40 };
	tsrv t = {0};
	char names[NQ][128], addr[600];
	long hwm0, rss0, thr, hwm, rss, peak = 0;
	qp_queue *q;
	rc c;

	setenv("QPIPE_TRANSPORT", "sp", 1);
	/* A shared-memory directory of its own: a list names every queue
	 * of the host, and other tests' queues would make it slow. */
	char shmdir[] = "/dev/shm/qpunread.XXXXXX";
	CHECK(mkdtemp(shmdir) != NULL);
	setenv("QPIPE_SHM_DIR", shmdir, 1);
	snprintf(
	    t.extra[t.nextra++], sizeof(t.extra[0]), "--max-queue-bytes=4096");
	CHECK(tsrv_start(&t, "tcp") == 0);
	/* Queues with long names: each list reply is tens of KiB. */
	for (int i = 0; i < NQ; i++) {
		snprintf(names[i], sizeof(names[i]), "clunread%ld-%02d-%0*d",
		    (long) getpid(), i, 95, 0); /* 95 zeros of padding */
		snprintf(addr, sizeof(addr), "%s/%.127s", t.url, names[i]);
		CHECK_EQ(qp_queue_open(&q, addr,
		             &(qp_queue_opts) {.flags = QP_OPEN_CREATE}),
		    QP_OK);
		qp_queue_free(q);
	}
	tsrv_mem(&t, &hwm0, &rss0, &thr);
	/* 17,000 list requests, pipelined, no reply read. */
	rc_open(&c, t.url, true);
	for (int i = 0; i < NLIST; i++) {
		qpi_wire_req r = {.op = QPI_OP_LIST};
		rc_queue(&c, &r);
	}
	for (int i = 0; i < 30; i++) {
		rc_pump(&c, 100, -1, false, false);
		tsrv_mem(&t, &hwm, &rss, &thr);
		peak = rss > peak ? rss : peak;
	}
	fprintf(stderr,
	    "17,000 unread list requests: qpiped's RSS %ld KiB before, "
	    "at most %ld KiB in 3 s\n",
	    rss0, peak);
	/* Bounded by the pause (1 MiB of replies unread, and one more). */
	CHECK(peak - rss0 < 30 * 1024);
	/* Others are served meanwhile, and its replies come as it reads. */
	snprintf(addr, sizeof(addr), "%s/%s", t.url, names[0]);
	CHECK_EQ(qp_queue_open(&q, addr, NULL), QP_OK);
	CHECK_EQ(qp_queue_put(q, "x", 1, 0), QP_OK);
	qp_queue_free(q);
	CHECK(rc_pump(&c, 10000, 300, true, false));
	CHECK(c.replies >= 300);
	rc_close(&c);
	for (int i = 0; i < NQ; i++) {
		snprintf(addr, sizeof(addr), "%s/%.127s", t.url, names[i]);
		CHECK_EQ(qp_queue_unlink(addr), QP_OK);
	}
	CHECK(tsrv_stop(&t));
	unsetenv("QPIPE_SHM_DIR");
	CHECK_EQ(rmdir(shmdir), 0);
}

static void
test_conn_limits_unread_replies(void **state)
{
	(void) state;
	tsrv_scenario0(unread_body);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_conn_limits_waiting_per_conn),
	    cmocka_unit_test(test_conn_limits_leases_per_conn),
	    cmocka_unit_test(test_conn_limits_handshake_auth_time),
	    cmocka_unit_test(test_conn_limits_accept_emfile),
	    cmocka_unit_test(test_conn_limits_idle_and_refused),
	    cmocka_unit_test(test_conn_limits_backoff_by_reply),
	    cmocka_unit_test(test_conn_limits_unread_replies),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
