/*
 * test_dedup.c - a put applied once across a kill -9 of qpiped
 * (server/dedup.c and the tags it reads back from the queues: the shm
 * segment's table, the durable log's PUT_TAG records). Each scenario
 * sends raw put / put_many requests with a client id and seq to the real
 * server, lets the server apply them, loses the reply (kills the server
 * before reading it, or reads it and sends the request again as if it
 * had been lost), restarts the server on the same queue or data
 * directory, sends the identical request again, and checks that it is
 * answered OK and that the queue holds each item once; for a durable
 * queue also when more than 1,024 other put requests came in between
 * (the queue remembers a time window of them, not the last 1,024).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "durq.h"
#include "qpi.h"
#include "qps_testsrv.h"
#include "shmq.h"
#include "wire.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

static void
qname(char *buf, size_t len, const char *tag)
{
	snprintf(buf, len, "td%d_%s", (int) getpid(), tag);
}

/* A raw request connection to the server. */
static nng_socket
raw_dial(const tsrv *s)
{
	nng_socket sk;

	CHECK_EQ(nng_req0_open(&sk), 0);
	CHECK_EQ(nng_socket_set_ms(sk, NNG_OPT_RECVTIMEO, 10000), 0);
	CHECK_EQ(nng_dial(sk, s->url, NULL, 0), 0);
	return sk;
}

static void
raw_send(nng_socket sk, const qpi_wire_req *r)
{
	qpi_wire_buf b = {0};
	nng_msg *m;

	CHECK_EQ(qpi_wire_encode_req(r, &b), QP_OK);
	CHECK_EQ(nng_msg_alloc(&m, b.len), 0);
	memcpy(nng_msg_body(m), b.data, b.len);
	qpi_wire_buf_free(&b);
	CHECK_EQ(nng_sendmsg(sk, m, 0), 0);
}

/* Receives a reply: its status, *countp its count. */
static int
raw_recv(nng_socket sk, uint64_t *countp)
{
	qpi_wire_rep rep;
	nng_msg *m;
	int st;

	CHECK_EQ(nng_recvmsg(sk, &m, 0), 0);
	memset(&rep, 0, sizeof(rep));
	CHECK_EQ(
	    qpi_wire_decode_rep(nng_msg_body(m), nng_msg_len(m), NULL, &rep),
	    QP_OK);
	st = rep.status;
	if (countp != NULL) {
		*countp = rep.count;
	}
	nng_msg_free(m);
	return st;
}

/* Items are msgpack bins of the texts. */
typedef struct titem {
	uint8_t enc[64];
	size_t len;
} titem;

static void
titem_set(titem *t, const char *s)
{
	size_t h = qpi_wire_bin_header(strlen(s), t->enc);

	memcpy(t->enc + h, s, strlen(s));
	t->len = h + strlen(s);
}

/* A put (n == 1) or put_many of the texts, from client cid, seq. */
static void
req_put(qpi_wire_req *r, qpi_wire_item *wi, titem *ti, const char *name,
    uint8_t cid, uint64_t seq, const char *const *texts, uint32_t n, bool many)
{
	memset(r, 0, sizeof(*r));
	r->op = many ? QPI_OP_PUT_MANY : QPI_OP_PUT;
	r->req_id = seq;
	snprintf(r->name, sizeof(r->name), "%s", name);
	memset(r->client_id, cid, sizeof(r->client_id));
	r->seq = seq;
	for (uint32_t i = 0; i < n; i++) {
		titem_set(&ti[i], texts[i]);
		memset(&wi[i], 0, sizeof(wi[i]));
		wi[i].data = ti[i].enc;
		wi[i].len = ti[i].len;
	}
	if (many) {
		r->items = wi;
		r->nitems = n;
		r->items_cap = n;
	} else {
		r->item = wi[0];
	}
}

static uint64_t
raw_qsize(nng_socket sk, const char *name)
{
	qpi_wire_req r;
	uint64_t n = 0;

	memset(&r, 0, sizeof(r));
	r.op = QPI_OP_QSIZE;
	r.req_id = 1;
	snprintf(r.name, sizeof(r.name), "%s", name);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, &n), QP_OK);
	return n;
}

static void
raw_create_durable_fsync(nng_socket sk, const char *name, const char *fsync)
{
	qpi_wire_req r;

	memset(&r, 0, sizeof(r));
	r.op = QPI_OP_CREATE;
	r.req_id = 1;
	snprintf(r.name, sizeof(r.name), "%s", name);
	r.flags = fsync != NULL ? QPI_CREATE_DURABLE : 0;
	snprintf(r.fsync, sizeof(r.fsync), "%s", fsync != NULL ? fsync : "");
	memset(r.client_id, 0x55, sizeof(r.client_id));
	r.seq = 1;
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
}

static void
raw_create_durable(nng_socket sk, const char *name)
{
	raw_create_durable_fsync(sk, name, "always");
}

/* Waits (up to 10 s) until qsize(name) is want: the request was applied
 * while its reply is still unread. */
static void
wait_qsize(nng_socket sk, const char *name, uint64_t want)
{
	long long end = tsrv_now_ms() + 10000;

	while (raw_qsize(sk, name) != want && tsrv_now_ms() < end) {
		tsrv_sleep_ms(10);
	}
	CHECK_EQ(raw_qsize(sk, name), want);
}

/* The items' texts, in queue order, through the local shm:// handle. */
static void
drain_local(qp_queue *q, const char *const *want, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		void *buf;
		size_t len;
		CHECK_EQ(qp_queue_get(q, &buf, &len, 0), QP_OK);
		CHECK_EQ(len, strlen(want[i]));
		CHECK(memcmp(buf, want[i], len) == 0);
		qp_free(buf);
	}
	size_t left;
	CHECK_EQ(qp_queue_qsize(q, &left), QP_OK);
	CHECK_EQ(left, 0);
}

static const char *const texts[] = {"a1", "b2", "c3", "d4", "e5"};

/* ---- a hosted shared-memory queue ---- */

static void
shm_body(void)
{
	tsrv s = {0};
	char name[64], addr[96];
	qp_queue_opts o = {.flags = QP_OPEN_CREATE, .capacity = 1 << 20};
	qpi_wire_req r;
	qpi_wire_item wi[5];
	titem ti[5];
	qp_queue *q;
	nng_socket sk, sk2;
	size_t n;

	qname(name, sizeof(name), "shm");
	snprintf(addr, sizeof(addr), "shm://%s", name);
	CHECK_EQ(qp_queue_open(&q, addr, &o), QP_OK);
	CHECK(tsrv_start(&s, "tcp") == 0);
	sk = raw_dial(&s);

	/* A put whose reply is read, then "lost": sent again later. */
	req_put(&r, wi, ti, name, 7, 10, texts, 1, false);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	/* A put_many whose reply never arrives: the server dies first. */
	req_put(&r, wi, ti, name, 7, 11, texts + 1, 3, true);
	raw_send(sk, &r);
	for (int i = 0; i < 1000; i++) {
		CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
		if (n == 4) {
			break;
		}
		tsrv_sleep_ms(10);
	}
	CHECK_EQ(n, 4);
	tsrv_kill(&s, SIGKILL);
	nng_close(sk);

	CHECK(tsrv_restart(&s) == 0);
	sk2 = raw_dial(&s);
	req_put(&r, wi, ti, name, 7, 11, texts + 1, 3, true);
	raw_send(sk2, &r);
	CHECK_EQ(raw_recv(sk2, NULL), QP_OK);
	req_put(&r, wi, ti, name, 7, 10, texts, 1, false);
	raw_send(sk2, &r);
	CHECK_EQ(raw_recv(sk2, NULL), QP_OK);
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 4);
	/* A new request still goes in. */
	req_put(&r, wi, ti, name, 7, 12, texts + 4, 1, false);
	raw_send(sk2, &r);
	CHECK_EQ(raw_recv(sk2, NULL), QP_OK);
	drain_local(q, texts, 5);

	nng_close(sk2);
	CHECK(tsrv_stop(&s));
	qp_queue_free(q);
	qp_queue_unlink(addr);
}

static void
test_dedup_shm_put_after_kill(void **state)
{
	(void) state;
	tsrv_scenario0(shm_body);
}

/* ---- a durable queue ---- */

static void
durable_body(void)
{
	tsrv s = {0};
	char name[64], dd[48];
	qpi_wire_req r;
	qpi_wire_item wi[5];
	titem ti[5];
	nng_socket sk, sk2;

	qname(name, sizeof(name), "dur");
	snprintf(dd, sizeof(dd), "/tmp/qpdedup.XXXXXX");
	CHECK(mkdtemp(dd) != NULL);
	snprintf(s.extra[s.nextra++], sizeof(s.extra[0]), "--data-dir");
	snprintf(s.extra[s.nextra++], sizeof(s.extra[0]), "%s", dd);
	CHECK(tsrv_start(&s, "tcp") == 0);
	sk = raw_dial(&s);
	raw_create_durable(sk, name);

	req_put(&r, wi, ti, name, 9, 20, texts, 1, false);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	req_put(&r, wi, ti, name, 9, 21, texts + 1, 3, true);
	raw_send(sk, &r);
	sk2 = raw_dial(&s);
	wait_qsize(sk2, name, 4);
	tsrv_kill(&s, SIGKILL);
	nng_close(sk);
	nng_close(sk2);

	CHECK(tsrv_restart(&s) == 0);
	sk = raw_dial(&s);
	req_put(&r, wi, ti, name, 9, 21, texts + 1, 3, true);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	req_put(&r, wi, ti, name, 9, 20, texts, 1, false);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	CHECK_EQ(raw_qsize(sk, name), 4);
	req_put(&r, wi, ti, name, 9, 22, texts + 4, 1, false);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	CHECK_EQ(raw_qsize(sk, name), 5);

	/* Once more, after a clean stop: the log still knows. */
	nng_close(sk);
	CHECK(tsrv_kill(&s, SIGTERM) >= 0);
	CHECK(tsrv_restart(&s) == 0);
	sk = raw_dial(&s);
	req_put(&r, wi, ti, name, 9, 21, texts + 1, 3, true);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	CHECK_EQ(raw_qsize(sk, name), 5);
	nng_close(sk);
	CHECK(tsrv_stop(&s));
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dd);
	CHECK_EQ(system(cmd), 0);
}

static void
test_dedup_durable_put_after_kill(void **state)
{
	(void) state;
	tsrv_scenario0(durable_body);
}

/* ---- the window covers more than 1,024 puts: durable and shm queues ---- */

/* n puts of one item each from clients 0x30..0x33 (seqs from seq0 on),
 * every reply read. */
static void
other_puts(nng_socket sk, const char *name, uint32_t n, uint64_t seq0)
{
	static const char *const x[] = {"x"};
	qpi_wire_req r;
	qpi_wire_item wi[1];
	titem ti[1];

	for (uint32_t i = 0; i < n; i++) {
		req_put(&r, wi, ti, name, (uint8_t) (0x30 + i % 4),
		    seq0 + i / 4, x, 1, false);
		raw_send(sk, &r);
		CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	}
}

/* durable: a durable queue (its log's 60 s window); else a hosted
 * shared-memory queue (its segment's last QPI_SHMQ_TAGS_MAX requests). */
static void
window_run(bool durable)
{
	tsrv s = {0};
	char name[64], dd[48];
	qpi_wire_req r;
	qpi_wire_item wi[5];
	titem ti[5];
	nng_socket sk;

	qname(name, sizeof(name), "win");
	snprintf(dd, sizeof(dd), "/tmp/qpdedup.XXXXXX");
	CHECK(mkdtemp(dd) != NULL);
	snprintf(s.extra[s.nextra++], sizeof(s.extra[0]), "--data-dir");
	snprintf(s.extra[s.nextra++], sizeof(s.extra[0]), "%s", dd);
	CHECK(tsrv_start(&s, "tcp") == 0);
	sk = raw_dial(&s);
	raw_create_durable_fsync(sk, name, durable ? "never" : NULL);

	/* Client 0x21's put is stored; its reply is "lost". */
	req_put(&r, wi, ti, name, 0x21, 5, texts, 1, false);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	/* 1,200 puts of other clients, then the server is killed. */
	other_puts(sk, name, 1200, 1);
	CHECK_EQ(raw_qsize(sk, name), 1201);
	tsrv_kill(&s, SIGKILL);
	nng_close(sk);

	/* The retry after the restart: answered, not stored again. */
	CHECK(tsrv_restart(&s) == 0);
	sk = raw_dial(&s);
	req_put(&r, wi, ti, name, 0x21, 5, texts, 1, false);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	CHECK_EQ(raw_qsize(sk, name), 1201);
	/* 1,200 more, a second kill: the log still knows it. */
	other_puts(sk, name, 1200, 1000);
	tsrv_kill(&s, SIGKILL);
	nng_close(sk);
	CHECK(tsrv_restart(&s) == 0);
	sk = raw_dial(&s);
	req_put(&r, wi, ti, name, 0x21, 5, texts, 1, false);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	CHECK_EQ(raw_qsize(sk, name), 2401);
	/* A new request of that client still goes in. */
	req_put(&r, wi, ti, name, 0x21, 6, texts + 1, 1, false);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	CHECK_EQ(raw_qsize(sk, name), 2402);
	nng_close(sk);
	CHECK(tsrv_stop(&s));
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dd);
	CHECK_EQ(system(cmd), 0);
	if (!durable) {
		qpi_shmq_unlink(name);
	}
}

static void
window_durable(void)
{
	window_run(true);
}

static void
window_shm(void)
{
	window_run(false);
}

static void
test_dedup_durable_window_after_kill(void **state)
{
	(void) state;
	tsrv_scenario0(window_durable);
}

static void
test_dedup_shm_window_after_kill(void **state)
{
	(void) state;
	tsrv_scenario0(window_shm);
}

/* ---- a batch cut short by a kill ---- */

static int hook_commits;

static void
kill_at_commit(int point)
{
	if (point == QPI_HOOK_PUT_COMMIT && ++hook_commits == 2) {
		raise(SIGKILL);
	}
}

/* In a child: puts the five texts tagged as (cid 3, seq 30), killed
 * after the second item's commit. */
static void
put_cut(const char *name)
{
	qpi_shmq_item it[5];
	qpi_shmq_tag tag;
	qpi_shmq *sq;
	pid_t pid;
	int st;

	memset(&tag, 0, sizeof(tag));
	memset(tag.client, 3, sizeof(tag.client));
	tag.seq = 30;
	tag.n = 5;
	for (int i = 0; i < 5; i++) {
		it[i].buf = texts[i];
		it[i].len = strlen(texts[i]);
		it[i].kind = QPI_ITEM_BIN;
	}
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		if (qpi_shmq_open(&sq, name, 0, NULL) != QP_OK) {
			_exit(2);
		}
		qpi_shmq_test_hook = kill_at_commit;
		qpi_shmq_put_many_tagged(sq, it, 5, &tag, 0);
		_exit(3);
	}
	CHECK_EQ(waitpid(pid, &st, 0), pid);
	CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
}

static void
cut_body(void)
{
	tsrv s = {0};
	char name[64], addr[96];
	qp_queue_opts o = {.flags = QP_OPEN_CREATE, .capacity = 1 << 20};
	qpi_wire_req r;
	qpi_wire_item wi[5];
	titem ti[5];
	qp_queue *q;
	nng_socket sk;
	size_t n;

	qname(name, sizeof(name), "cut");
	snprintf(addr, sizeof(addr), "shm://%s", name);
	CHECK_EQ(qp_queue_open(&q, addr, &o), QP_OK);
	put_cut(name);
	/* Two items are in (the count says so once a producer repairs). */
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK(n == 1 || n == 2);

	CHECK(tsrv_start(&s, "tcp") == 0);
	sk = raw_dial(&s);
	req_put(&r, wi, ti, name, 3, 30, texts, 5, true);
	raw_send(sk, &r);
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 5);
	raw_send(sk, &r); /* and again: all of it is in now */
	CHECK_EQ(raw_recv(sk, NULL), QP_OK);
	drain_local(q, texts, 5);
	nng_close(sk);
	CHECK(tsrv_stop(&s));
	qp_queue_free(q);
	qp_queue_unlink(addr);
}

static void
test_dedup_shm_batch_cut_short(void **state)
{
	(void) state;
	tsrv_scenario0(cut_body);
}

/* ---- the segment's table: a tagged put killed before its commit ---- */

static int hook_copies;

static void
kill_at_copy(int point)
{
	if (point == QPI_HOOK_PUT_COPY && ++hook_copies == 1) {
		raise(SIGKILL);
	}
}

static void
test_dedup_shm_tag_uncommitted(void **state)
{
	char name[64];
	qpi_shmq_item it[2];
	qpi_shmq_tag tag, v[8];
	qpi_shmq *sq;
	size_t n;
	pid_t pid;
	int st;
	(void) state;

	qname(name, sizeof(name), "tag");
	assert_int_equal(
	    qpi_shmq_open(&sq, name, QP_OPEN_CREATE, NULL), QP_OK);
	memset(&tag, 0, sizeof(tag));
	memset(tag.client, 4, sizeof(tag.client));
	tag.seq = 40;
	tag.n = 2;
	for (int i = 0; i < 2; i++) {
		it[i].buf = "xxxxxxxx";
		it[i].len = 8;
		it[i].kind = QPI_ITEM_BIN;
	}
	/* Killed copying its first item: the tag is written, no item. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		qpi_shmq_test_hook = kill_at_copy;
		qpi_shmq_put_many_tagged(sq, it, 2, &tag, 0);
		_exit(3);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st));
	/* A local put takes the ordinal the dead batch had. */
	assert_int_equal(qpi_shmq_put(sq, "local", 5, QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(qpi_shmq_tags(sq, v, 8, &n), QP_OK);
	assert_int_equal(n, 0);
	/* A whole tagged put is listed; a batch resumed (base 1) too. */
	tag.seq = 41;
	tag.n = 1;
	assert_int_equal(
	    qpi_shmq_put_tagged(sq, "y", 1, QPI_ITEM_BIN, &tag, 0), QP_OK);
	tag.seq = 42;
	tag.base = 1;
	tag.n = 3;
	assert_int_equal(qpi_shmq_put_many_tagged(sq, it, 2, &tag, 0), QP_OK);
	assert_int_equal(qpi_shmq_tags(sq, v, 8, &n), QP_OK);
	assert_int_equal(n, 2);
	assert_int_equal(v[0].seq, 41);
	assert_int_equal(v[0].done, 1);
	assert_int_equal(v[0].n, 1);
	assert_int_equal(v[1].seq, 42);
	assert_int_equal(v[1].done, 3);
	assert_int_equal(v[1].n, 3);
	assert_int_equal(v[1].client[15], 4);
	assert_int_equal(qpi_shmq_check(sq), QP_OK);
	qpi_shmq_free(sq);
	qpi_shmq_unlink(name);
}

static int
teardown(void **state)
{
	(void) state;
	tsrv_kill_all();
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_dedup_shm_tag_uncommitted),
	    cmocka_unit_test(test_dedup_shm_put_after_kill),
	    cmocka_unit_test(test_dedup_shm_batch_cut_short),
	    cmocka_unit_test(test_dedup_durable_put_after_kill),
	    cmocka_unit_test(test_dedup_durable_window_after_kill),
	    cmocka_unit_test(test_dedup_shm_window_after_kill),
	};

	(void) tsrv_mem; /* qps_testsrv.h's, unused here */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, teardown);
}
