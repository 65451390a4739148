/*
 * test_spnet.c - the SP wire format of qpiped's connections (server/link.c,
 * on plain sockets or, with QP_SPNET_SERVER=nng, on nng streams) and of the
 * client's plain-socket driver (lib/link_sock.c) against real nng peers and
 * bad ones: an nng req0 socket talks to qpiped over tcp:// and ipc://; the
 * raw client works against a server on nng streams (--transport nng); a bad
 * handshake, a bad ipc message type, a length over the limit and plain
 * garbage each close their connection while the server goes on answering
 * others; and a connection dropped after the server applied a put but before
 * its reply made it back gets the put sent again and applied once. Each
 * scenario runs in a child (nng is not fork-safe); CHECK exits non-zero.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "qpi.h"
#include "qps_testsrv.h"
#include "sp_raw.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

/* The helpers of qps_testsrv.h this program has no use for. */
static void __attribute__((unused)) spnet_unused(void)
{
	(void) tsrv_restart;
	(void) tsrv_mem;
}

/* The server's driver for tcp:// and ipc:// in these scenarios: plain
 * sockets, or nng streams when $QP_SPNET_SERVER is "nng". */
static const char *
spnet_server(void)
{
	const char *s = getenv("QP_SPNET_SERVER");

	return s != NULL ? s : "sp";
}

/* A put, a qsize and a get through handle-less calls at url/name. */
static void
put_get_roundtrip(const char *url, const char *name)
{
	char addr[400], buf[64];
	qp_queue *q;
	size_t n;

	snprintf(addr, sizeof(addr), "%s/%s", url, name);
	CHECK_EQ(qp_queue_open(
	             &q, addr, &(qp_queue_opts) {.flags = QP_OPEN_CREATE}),
	    QP_OK);
	CHECK_EQ(qp_queue_put(q, "hello", 5, 0), QP_OK);
	CHECK_EQ(qp_queue_put(q, "world", 5, 0), QP_OK);
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 2);
	CHECK_EQ(qp_queue_get_into(q, buf, sizeof(buf), &n, 1000), QP_OK);
	CHECK(n == 5 && memcmp(buf, "hello", 5) == 0);
	CHECK_EQ(qp_queue_get_into(q, buf, sizeof(buf), &n, 1000), QP_OK);
	CHECK(n == 5 && memcmp(buf, "world", 5) == 0);
	/* A blocking get is woken by the server's "empty" in time. */
	long long t0 = tsrv_now_ms();
	CHECK_EQ(qp_queue_get_into(q, buf, sizeof(buf), &n, 200), QP_EEMPTY);
	CHECK(tsrv_now_ms() - t0 >= 190 && tsrv_now_ms() - t0 < 3000);
	qp_queue_free(q);
	CHECK_EQ(qp_queue_unlink(addr), QP_OK);
}

/* ---- an nng req0 socket against the raw listeners ---- */

static void
nng_ping(const char *url)
{
	/* [1, ping, req_id 5] -> [1, ping, 5, 0] (PROTOCOL.md). */
	static const uint8_t req[] = {0x93, 0x01, 0x03, 0x05};
	static const uint8_t want[] = {0x94, 0x01, 0x03, 0x05, 0x00};
	nng_socket sk;
	nng_msg *m;

	CHECK_EQ(nng_req0_open(&sk), 0);
	nng_socket_set_ms(sk, NNG_OPT_RECVTIMEO, 5000);
	CHECK_EQ(nng_dial(sk, url, NULL, 0), 0);
	for (int i = 0; i < 50; i++) {
		CHECK_EQ(nng_msg_alloc(&m, 0), 0);
		CHECK_EQ(nng_msg_append(m, req, sizeof(req)), 0);
		CHECK_EQ(nng_sendmsg(sk, m, 0), 0);
		CHECK_EQ(nng_recvmsg(sk, &m, 0), 0);
		CHECK_EQ(nng_msg_len(m), sizeof(want));
		CHECK(memcmp(nng_msg_body(m), want, sizeof(want)) == 0);
		nng_msg_free(m);
	}
	nng_close(sk);
}

static void
nng_peer_body(void)
{
	tsrv t = {0}, i = {0};

	setenv("QP_SERVER_TRANSPORT", spnet_server(), 1);
	CHECK(tsrv_start(&t, "tcp") == 0);
	CHECK(tsrv_start(&i, "ipc") == 0);
	nng_ping(t.url);
	nng_ping(i.url);
	CHECK(tsrv_stop(&t));
	CHECK(tsrv_stop(&i));
}

static void
test_spnet_nng_req0_peer(void **state)
{
	(void) state;
	tsrv_scenario0(nng_peer_body);
}

/* ---- the raw client against nng's rep0 ---- */

static void
nng_server_body(void)
{
	tsrv t = {0}, i = {0};
	char name[64];

	setenv("QP_SERVER_TRANSPORT", "nng", 1);
	setenv("QPIPE_TRANSPORT", "sp", 1);
	CHECK(tsrv_start(&t, "tcp") == 0);
	CHECK(tsrv_start(&i, "ipc") == 0);
	snprintf(name, sizeof(name), "spn%ld", (long) getpid());
	put_get_roundtrip(t.url, name);
	put_get_roundtrip(i.url, name);
	/* And the raw client against the raw server. */
	setenv("QP_SERVER_TRANSPORT", "sp", 1);
	CHECK(tsrv_stop(&t));
	CHECK(tsrv_start(&t, "tcp") == 0);
	put_get_roundtrip(t.url, name);
	CHECK(tsrv_stop(&t));
	CHECK(tsrv_stop(&i));
}

static void
test_spnet_client_on_nng_server(void **state)
{
	(void) state;
	tsrv_scenario0(nng_server_body);
}

/* ---- bad peers ---- */

static void
send_all(int fd, const void *p, size_t n)
{
	CHECK(write(fd, p, n) == (ssize_t) n);
}

static void
bad_peers_on(const char *url, bool ipc)
{
	static const uint8_t hs_pair1[] = {0, 'S', 'P', 0, 0, 0x11, 0, 0};
	int fd;

	/* Not SP at all. */
	fd = spr_dial(url, 0);
	send_all(fd, "GET / HTTP/1.1\r\n\r\n", 18);
	CHECK(spr_closed_by_server(fd));
	close(fd);

	/* SP, but not req0. */
	fd = spr_dial(url, 0);
	send_all(fd, hs_pair1, sizeof(hs_pair1));
	CHECK(spr_closed_by_server(fd));
	close(fd);

	/* A length over the limit (2^40 bytes): closed, nothing allocated. */
	fd = spr_dial(url, 0);
	send_all(fd, spr_hs_req0, sizeof(spr_hs_req0));
	{
		uint8_t f[9] = {0x01, 0, 0, 0x01, 0, 0, 0, 0, 0};
		send_all(fd, ipc ? f : f + 1, ipc ? 9 : 8);
	}
	CHECK(spr_closed_by_server(fd));
	close(fd);

	/* Garbage after a good handshake. */
	fd = spr_dial(url, 0);
	send_all(fd, spr_hs_req0, sizeof(spr_hs_req0));
	send_all(fd, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 10);
	CHECK(spr_closed_by_server(fd));
	close(fd);

	if (ipc) {
		/* A message type other than 1. */
		static const uint8_t f[]
		    = {0x02, 0, 0, 0, 0, 0, 0, 0, 4, 0x80, 0, 0, 1};
		fd = spr_dial(url, 0);
		send_all(fd, spr_hs_req0, sizeof(spr_hs_req0));
		send_all(fd, f, sizeof(f));
		CHECK(spr_closed_by_server(fd));
		close(fd);
	}

	/* A frame cut short, then the peer goes: nothing breaks. */
	fd = spr_dial(url, 0);
	send_all(fd, spr_hs_req0, sizeof(spr_hs_req0));
	send_all(fd, "\0\0\0\0\0\0\0\x10\x80\0", 10);
	close(fd);
}

static void
bad_peers_body(void)
{
	tsrv t = {0}, i = {0};
	char name[64];

	setenv("QP_SERVER_TRANSPORT", spnet_server(), 1);
	setenv("QPIPE_TRANSPORT", "sp", 1);
	CHECK(tsrv_start(&t, "tcp") == 0);
	CHECK(tsrv_start(&i, "ipc") == 0);
	snprintf(name, sizeof(name), "spbad%ld", (long) getpid());
	bad_peers_on(t.url, false);
	bad_peers_on(i.url, true);
	/* The servers still answer. */
	put_get_roundtrip(t.url, name);
	put_get_roundtrip(i.url, name);
	nng_ping(t.url);
	CHECK(tsrv_stop(&t));
	CHECK(tsrv_stop(&i));
}

static void
test_spnet_bad_peers_closed(void **state)
{
	(void) state;
	tsrv_scenario0(bad_peers_body);
}

/* ---- a connection dropped after the server applied a put ---- */

/* A proxy (sp_raw.h) in front of the server: on its first connection it
 * passes everything until the client's bytes contain the marker, then lets
 * the server apply them, and drops both sides before the reply gets back.
 * Later connections pass everything. */
typedef struct marker_cut {
	const char *marker;
	int seen; /* connections whose client bytes held the marker */
} marker_cut;

static bool
has_marker(const uint8_t *p, size_t n, const char *m)
{
	size_t ml = strlen(m);

	for (size_t i = 0; i + ml <= n; i++) {
		if (memcmp(p + i, m, ml) == 0) {
			return true;
		}
	}
	return false;
}

static size_t
marker_cut_fn(
    spr_proxy *px, bool first, const uint8_t *buf, size_t n, bool *drop)
{
	marker_cut *m = px->arg;

	if (buf != NULL && has_marker(buf, n, m->marker)) {
		m->seen++;
		*drop = first;
	}
	return n;
}

static void
drop_body(void)
{
	tsrv t = {0};
	marker_cut mc = {.marker = "resend-me-once"};
	/* The server applies it; its reply never reaches the client. */
	spr_proxy px = {.poll_ms = 100,
	    .cut_wait_ms = 200,
	    .cut = marker_cut_fn,
	    .arg = &mc};
	char name[64], addr[400], direct[400], buf[64];
	qp_queue *q, *d;
	size_t n;

	setenv("QP_SERVER_TRANSPORT", spnet_server(), 1);
	setenv("QPIPE_TRANSPORT", "sp", 1);
	CHECK(tsrv_start(&t, "tcp") == 0);
	spr_proxy_start(&px, t.url, 8);

	snprintf(name, sizeof(name), "spdrop%ld", (long) getpid());
	snprintf(addr, sizeof(addr), "tcp://127.0.0.1:%u/%s",
	    (unsigned) px.port, name);
	snprintf(direct, sizeof(direct), "%s/%s", t.url, name);
	CHECK_EQ(qp_queue_open(
	             &q, addr, &(qp_queue_opts) {.flags = QP_OPEN_CREATE}),
	    QP_OK);
	CHECK_EQ(qp_queue_put(q, "before", 6, 0), QP_OK);
	/* The put's reply is lost with its connection: the client sends it
	 * again on a new one, and the server applies it once. */
	CHECK_EQ(qp_queue_put(q, "resend-me-once", 14, 5000), QP_OK);
	CHECK_EQ(mc.seen, 2);
	CHECK(px.conns >= 2);
	CHECK_EQ(qp_queue_put(q, "after", 5, 0), QP_OK);
	CHECK_EQ(qp_queue_open(&d, direct, NULL), QP_OK);
	CHECK_EQ(qp_queue_qsize(d, &n), QP_OK);
	CHECK_EQ(n, 3);
	CHECK_EQ(qp_queue_get_into(d, buf, sizeof(buf), &n, 1000), QP_OK);
	CHECK(n == 6 && memcmp(buf, "before", 6) == 0);
	CHECK_EQ(qp_queue_get_into(d, buf, sizeof(buf), &n, 1000), QP_OK);
	CHECK(n == 14 && memcmp(buf, "resend-me-once", 14) == 0);
	CHECK_EQ(qp_queue_get_into(d, buf, sizeof(buf), &n, 1000), QP_OK);
	CHECK(n == 5 && memcmp(buf, "after", 5) == 0);
	qp_queue_free(q);
	qp_queue_free(d);
	spr_proxy_stop(&px);
	CHECK_EQ(qp_queue_unlink(direct), QP_OK);
	CHECK(tsrv_stop(&t));
}

static void
test_spnet_drop_resend_applied_once(void **state)
{
	(void) state;
	tsrv_scenario0(drop_body);
}

/* ---- one handle shared by threads; a peer that does not read ---- */

typedef struct getter {
	qp_queue *q;
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

	g->rv = qp_queue_get_into(g->q, g->buf, sizeof(g->buf), &g->n, 10000);
	g->ms = tsrv_now_ms() - t0;
	return NULL;
}

static void
shared_body(void)
{
	tsrv t = {0};
	char name[64], addr[400];
	pthread_t thr;
	getter g = {0};
	qp_queue *q;
	size_t n;

	setenv("QP_SERVER_TRANSPORT", spnet_server(), 1);
	setenv("QPIPE_TRANSPORT", "sp", 1);
	CHECK(tsrv_start(&t, "tcp") == 0);
	snprintf(name, sizeof(name), "spshare%ld", (long) getpid());
	snprintf(addr, sizeof(addr), "%s/%s", t.url, name);
	CHECK_EQ(qp_queue_open(
	             &q, addr, &(qp_queue_opts) {.flags = QP_OPEN_CREATE}),
	    QP_OK);
	/* One thread blocks in a get on the handle's connection; others'
	 * calls on the same handle go on meanwhile, and the put wakes the
	 * get at once. */
	g.q = q;
	CHECK(pthread_create(&thr, NULL, getter_main, &g) == 0);
	tsrv_sleep_ms(200);
	for (int i = 0; i < 20; i++) {
		long long t0 = tsrv_now_ms();
		CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
		CHECK_EQ(n, 0);
		CHECK(tsrv_now_ms() - t0 < 2000);
	}
	CHECK_EQ(qp_queue_put(q, "wake", 4, 0), QP_OK);
	pthread_join(thr, NULL);
	CHECK_EQ(g.rv, QP_OK);
	CHECK(g.n == 4 && memcmp(g.buf, "wake", 4) == 0);
	CHECK(g.ms < 5000);
	qp_queue_free(q);
	CHECK_EQ(qp_queue_unlink(addr), QP_OK);
	CHECK(tsrv_stop(&t));
}

static void
test_spnet_shared_handle(void **state)
{
	(void) state;
	tsrv_scenario0(shared_body);
}

static void
no_reader_body(void)
{
	/* A ping: 8-byte length 8, request id, [1, ping, 5]; its reply is
	 * 8 + 4 + 5 bytes. */
	static const uint8_t ping[]
	    = {0, 0, 0, 0, 0, 0, 0, 8, 0x80, 0, 0, 1, 0x93, 0x01, 0x03, 0x05};
	uint8_t buf[65536];
	tsrv t = {0};
	char name[64];
	long long sent = 0, got = 0, end;
	int fd;

	setenv("QP_SERVER_TRANSPORT", spnet_server(), 1);
	setenv("QPIPE_TRANSPORT", "sp", 1);
	snprintf(t.extra[t.nextra++], sizeof(t.extra[0]), "--max-message");
	snprintf(t.extra[t.nextra++], sizeof(t.extra[0]), "1024");
	CHECK(tsrv_start(&t, "tcp") == 0);
	/* A small receive buffer: the replies back up in the server soon. */
	fd = spr_dial(t.url, 4096);
	send_all(fd, spr_hs_req0, sizeof(spr_hs_req0));
	CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
	/* Requests, never reading a reply, until the socket takes no more
	 * for 200 ms (the server stopped reading us) or a million of them
	 * (16 MB) went in. */
	{
		uint8_t many[sizeof(ping) * 64];
		size_t off = sizeof(many);
		for (int i = 0; i < 64; i++) {
			memcpy(many + i * sizeof(ping), ping, sizeof(ping));
		}
		end = tsrv_now_ms() + 5000;
		while (sent < 1000000LL * (long long) sizeof(ping)
		    && tsrv_now_ms() < end) {
			if (off == sizeof(many)) {
				off = 0;
			}
			ssize_t n = write(fd, many + off, sizeof(many) - off);
			if (n < 0) {
				struct pollfd p
				    = {.fd = fd, .events = POLLOUT};
				if (poll(&p, 1, 200) == 0) {
					break;
				}
				continue;
			}
			off += (size_t) n;
			sent += n;
		}
	}
	sent /= (long long) sizeof(ping); /* whole requests */
	/* The server stopped taking its requests (without that, all go in
	 * and the replies pile up in the server's memory). */
	CHECK(sent > 0 && sent < 1000000);
	/* Others are served meanwhile. */
	snprintf(name, sizeof(name), "spnoread%ld", (long) getpid());
	put_get_roundtrip(t.url, name);
	/* Every reply comes once we read: up to hundreds of thousands of
	 * requests wait in the socket buffers, which a sanitizer build on
	 * nng's threads serves at a few thousand a second, so the bound is on
	 * progress (10 s without a byte), within 180 s in all. */
	long long last = tsrv_now_ms();
	end = last + 180000;
	while (got < sent * 17 + 8 && tsrv_now_ms() < end
	    && tsrv_now_ms() - last < 10000) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 200) <= 0) {
			continue;
		}
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0) {
			break;
		}
		got += n;
		last = tsrv_now_ms();
	}
	fprintf(stderr, "a peer that did not read: %lld pings, %lld replies\n",
	    sent, got / 17);
	CHECK_EQ(got, (sent * 17) + 8); /* + the server's handshake */
	close(fd);
	CHECK(tsrv_stop(&t));
}

static void
test_spnet_peer_not_reading(void **state)
{
	(void) state;
	tsrv_scenario0(no_reader_body);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_spnet_nng_req0_peer),
	    cmocka_unit_test(test_spnet_client_on_nng_server),
	    cmocka_unit_test(test_spnet_bad_peers_closed),
	    cmocka_unit_test(test_spnet_drop_resend_applied_once),
	    cmocka_unit_test(test_spnet_shared_handle),
	    cmocka_unit_test(test_spnet_peer_not_reading),
	};

	signal(SIGPIPE, SIG_IGN);
	if (getenv("QP_TEST_FILTER") != NULL) {
		cmocka_set_test_filter(getenv("QP_TEST_FILTER"));
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
