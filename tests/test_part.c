/*
 * test_part.c - one queue over several servers (part.c): rendezvous
 * placement on a fixed table of keys (the same table the CLI and Python
 * tests check) and its spread; three real qpiped on loopback, each with a
 * shared-memory directory of its own: round robin puts, keyed puts on the
 * picked server, gets from every partition with FIFO per partition,
 * figures added up and per partition, a server killed (the others go on,
 * its partition's items come back when it restarts).
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

/* The fixed table: servers, keys, and the index each key goes to. The
 * CLI (it_part_cli.sh) and Python (test_qpipe.py) check the same. */
static const char *const tbl_servers[] = {"h1:7450", "h2:7450", "h3:7450"};
static const struct {
	const char *key;
	size_t want;
} tbl[] = {
#include "part_table.inc"
};

static void
test_part_pick_table(void **state)
{
	(void) state;
	for (size_t i = 0; i < sizeof(tbl) / sizeof(tbl[0]); i++) {
		size_t got = qp_partition_pick(
		    tbl_servers, 3, tbl[i].key, strlen(tbl[i].key));
		if (got != tbl[i].want) {
			fail_msg("key %s: %zu, not %zu", tbl[i].key, got,
			    tbl[i].want);
		}
	}
}

/* Even spread over 3, and a 4th server takes about a quarter of the keys,
 * each from where it was (the others stay put). */
static void
test_part_pick_spread(void **state)
{
	const char *four[] = {"h1:7450", "h2:7450", "h3:7450", "h4:7450"};
	size_t count[3] = {0}, moved = 0, n = 3000;
	char key[32];

	(void) state;
	for (size_t i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "task-%zu", i);
		size_t a = qp_partition_pick(four, 3, key, strlen(key));
		size_t b = qp_partition_pick(four, 4, key, strlen(key));
		count[a]++;
		if (a != b) {
			moved++;
			assert_int_equal(b, 3);
		}
	}
	for (int i = 0; i < 3; i++) {
		assert_true(count[i] > n / 3 * 8 / 10);
		assert_true(count[i] < n / 3 * 12 / 10);
	}
	assert_true(moved > n / 4 * 8 / 10 && moved < n / 4 * 12 / 10);
	assert_int_equal(qp_partition_pick(four, 0, "k", 1), 0);
}

typedef struct three {
	tsrv s[3];
	char shm[3][64];
	char addr[1200]; /* the partitioned address */
	char one[3][400]; /* each partition's own address */
} three;

static void
start_one(three *t, int i, bool restart)
{
	setenv("QPIPE_SHM_DIR", t->shm[i], 1);
	if (restart) {
		/* On the port it had. */
		memcpy(t->s[i].listen, t->s[i].url, sizeof(t->s[i].listen));
		CHECK(tsrv_spawn(&t->s[i]) == 0);
	} else {
		CHECK(tsrv_start(&t->s[i], "tcp") == 0);
	}
	unsetenv("QPIPE_SHM_DIR");
}

static void
three_start(three *t, const char *name)
{
	size_t off;

	memset(t, 0, sizeof(*t));
	for (int i = 0; i < 3; i++) {
		snprintf(t->shm[i], sizeof(t->shm[i]), "/dev/shm/qpt.XXXXXX");
		CHECK(mkdtemp(t->shm[i]) != NULL);
		start_one(t, i, false);
		snprintf(
		    t->one[i], sizeof(t->one[i]), "%s/%s", t->s[i].url, name);
	}
	off = (size_t) snprintf(t->addr, sizeof(t->addr), "tcp://");
	for (int i = 0; i < 3; i++) {
		off += (size_t) snprintf(t->addr + off, sizeof(t->addr) - off,
		    "%s%s", i > 0 ? "," : "", t->s[i].url + strlen("tcp://"));
	}
	snprintf(t->addr + off, sizeof(t->addr) - off, "/%s", name);
}

static void
three_stop(three *t)
{
	char cmd[128];

	for (int i = 0; i < 3; i++) {
		if (t->s[i].pid > 0) {
			CHECK(tsrv_stop(&t->s[i]));
		}
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->shm[i]);
		CHECK(system(cmd) == 0);
	}
}

static size_t
size_of(const char *addr)
{
	qp_queue *q;
	size_t n = 0;

	CHECK(qp_queue_open(&q, addr, NULL) == QP_OK);
	CHECK(qp_queue_qsize(q, &n) == QP_OK);
	qp_queue_free(q);
	return n;
}

static void
spread_body(void)
{
	three t;
	qp_queue *q;
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	qp_queue_stats st;
	char url[500], item[32];
	size_t n, last[3] = {0, 0, 0}, seen = 0;
	void *buf;
	size_t len, np;

	three_start(&t, "jobs");
	CHECK(qp_queue_open(&q, t.addr, &o) == QP_OK);
	CHECK(qp_queue_partitions(q, &np) == QP_OK);
	CHECK_EQ(np, 3);
	/* Round robin: 10 items on each. */
	for (int i = 1; i <= 30; i++) {
		snprintf(item, sizeof(item), "%d", i);
		CHECK(qp_queue_put(q, item, strlen(item), 2000) == QP_OK);
	}
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(size_of(t.one[i]), 10);
		CHECK(qp_queue_partition_stat(
		          q, (size_t) i, &st, url, sizeof(url))
		    == QP_OK);
		CHECK_EQ(st.items, 10);
		CHECK(strcmp(url, t.one[i]) == 0);
	}
	CHECK(qp_queue_qsize(q, &n) == QP_OK);
	CHECK_EQ(n, 30);
	CHECK(qp_queue_stat(q, &st) == QP_OK);
	CHECK_EQ(st.items, 30);
	/* Every item once; FIFO per partition (item i went to partition
	 * (i - 1 + first) % 3: increasing within each residue). */
	for (int i = 0; i < 30; i++) {
		CHECK(qp_queue_get(q, &buf, &len, 2000) == QP_OK);
		char num[16];
		snprintf(num, sizeof(num), "%.*s", (int) len, (char *) buf);
		int v = atoi(num);
		CHECK(v >= 1 && v <= 30);
		CHECK(!(seen & (1ull << v)));
		seen |= 1ull << v;
		CHECK((size_t) v > last[v % 3]);
		last[v % 3] = (size_t) v;
		qp_free(buf);
	}
	CHECK_EQ(qp_queue_get(q, &buf, &len, 100), QP_EEMPTY);
	/* Keyed: on the server the table picks (a handle that does not
	 * get: a getting one keeps an item of each partition ahead). */
	qp_queue_free(q);
	CHECK(qp_queue_open(&q, t.addr, NULL) == QP_OK);
	const char *servers[3];
	for (int i = 0; i < 3; i++) {
		servers[i] = t.s[i].url + strlen("tcp://");
	}
	for (int k = 0; k < 12; k++) {
		char key[16];
		snprintf(key, sizeof(key), "key%d", k);
		size_t want = qp_partition_pick(servers, 3, key, strlen(key));
		CHECK(qp_queue_put_key(
		          q, key, strlen(key), key, strlen(key), 1000)
		    == QP_OK);
		CHECK_EQ(size_of(t.one[want]), 1);
		qp_queue *d;
		CHECK(qp_queue_open(&d, t.one[want], NULL) == QP_OK);
		CHECK(qp_queue_get(d, &buf, &len, 1000) == QP_OK);
		CHECK(len == strlen(key) && memcmp(buf, key, len) == 0);
		qp_free(buf);
		qp_queue_free(d);
	}
	qp_queue_free(q);
	CHECK(qp_queue_unlink(t.addr) == QP_OK);
	CHECK_EQ(qp_queue_unlink(t.one[0]), QP_ENOENT);
	three_stop(&t);
}

static void
test_part_three_servers(void **state)
{
	(void) state;
	tsrv_scenario0(spread_body);
}

/* A server killed: the others' items are got at once, figures add up
 * what answers; restarted, its items come back. */
static void
down_body(void)
{
	three t;
	qp_queue *q;
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	qp_queue_stats st;
	void *buf;
	size_t len, n;
	char item[32];

	three_start(&t, "down");
	CHECK(qp_queue_open(&q, t.addr, &o) == QP_OK);
	for (int i = 0; i < 9; i++) {
		snprintf(item, sizeof(item), "%d", i);
		CHECK(qp_queue_put(q, item, strlen(item), 2000) == QP_OK);
	}
	CHECK_EQ(size_of(t.one[1]), 3);
	tsrv_kill(&t.s[1], SIGKILL);
	long long t0 = tsrv_now_ms();
	for (int i = 0; i < 6; i++) {
		CHECK(qp_queue_get(q, &buf, &len, 5000) == QP_OK);
		qp_free(buf);
	}
	CHECK(tsrv_now_ms() - t0 < 4000);
	CHECK_EQ(qp_queue_get(q, &buf, &len, 300), QP_EEMPTY);
	CHECK(qp_queue_stat(q, &st) == QP_OK);
	CHECK_EQ(st.items, 0);
	CHECK(qp_queue_partition_stat(q, 1, &st, NULL, 0) != QP_OK);
	start_one(&t, 1, true);
	for (int i = 0; i < 3; i++) {
		CHECK(qp_queue_get(q, &buf, &len, 10000) == QP_OK);
		qp_free(buf);
	}
	CHECK(qp_queue_qsize(q, &n) == QP_OK);
	CHECK_EQ(n, 0);
	/* And a fresh open with one server down works on the others. */
	qp_queue_free(q);
	tsrv_kill(&t.s[2], SIGKILL);
	CHECK(qp_queue_open(&q, t.addr, NULL) == QP_OK);
	CHECK(qp_queue_put_nowait(q, "a", 1) == QP_OK);
	CHECK(qp_queue_put_nowait(q, "b", 1) == QP_OK);
	CHECK(qp_queue_put_nowait(q, "c", 1) == QP_OK);
	CHECK(qp_queue_qsize(q, &n) == QP_OK);
	CHECK_EQ(n, 3);
	qp_queue_free(q);
	start_one(&t, 2, true);
	three_stop(&t);
}

static void
test_part_server_down(void **state)
{
	(void) state;
	tsrv_scenario0(down_body);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_part_pick_table),
	    cmocka_unit_test(test_part_pick_spread),
	    cmocka_unit_test(test_part_three_servers),
	    cmocka_unit_test(test_part_server_down),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
