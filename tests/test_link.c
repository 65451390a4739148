/*
 * test_link.c - the client's connection layer (lib/link*.c), its SP
 * framing (lib/sp.c) and the request/reply engine on it (lib/call.c),
 * against small peers run by threads of the test: the one map from nng's
 * errors to QP_ codes, a refused dial and a peer that does not speak SP on
 * both drivers, and replies routed to their calls by request id when
 * several threads share one connection, and a reply's memory reused by
 * the next.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "call.h"
#include "link.h"
#include "sp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* A listening TCP socket on 127.0.0.1, port 0; its address in a. */
static int
listen_any(qpi_addr *a)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *) &sin, sizeof(sin)), 0);
	assert_int_equal(listen(fd, 8), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *) &sin, &sl), 0);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%u",
	    (unsigned) ntohs(sin.sin_port));
	assert_int_equal(qpi_addr_parse(url, QPI_ADDR_SERVER, a), QP_OK);
	return fd;
}

static void
read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, (uint8_t *) buf + got, len - got);
		assert_true(n > 0);
		got += (size_t) n;
	}
}

static void
use_driver(bool nng)
{
	if (nng) {
		setenv("QPIPE_TRANSPORT", "nng", 1);
	} else {
		unsetenv("QPIPE_TRANSPORT");
	}
}

static void
test_link_nng_errors(void **state)
{
	(void) state;
	/* A lost connection is QP_ECONNRESET, a handle closed here is
	 * QP_ECLOSED, for every nng user in lib/. */
	assert_int_equal(qpi_nng_err(NNG_ECONNRESET), QP_ECONNRESET);
	assert_int_equal(qpi_nng_err(NNG_ECONNSHUT), QP_ECONNRESET);
	assert_int_equal(qpi_nng_err(NNG_ECONNABORTED), QP_ECONNRESET);
	assert_int_equal(qpi_nng_err(NNG_ECLOSED), QP_ECLOSED);
	assert_int_equal(qpi_nng_err(NNG_ECONNREFUSED), QP_ECONNREFUSED);
	assert_int_equal(qpi_nng_err(NNG_ETIMEDOUT), QP_ETIMEDOUT);
	assert_int_equal(qpi_nng_err(NNG_EPEERAUTH), QP_EAUTH);
	assert_int_equal(qpi_nng_err(NNG_EADDRINUSE), QP_EBUSY);
	assert_int_equal(qpi_nng_err(0), QP_OK);
}

static void
test_link_frames(void **state)
{
	uint8_t h[9];
	uint64_t len = 0;

	(void) state;
	assert_int_equal(qpi_sp_frame_hdr(h, false, 300), 8);
	assert_int_equal(qpi_sp_frame_parse(h, 7, false, &len), 0);
	assert_int_equal(qpi_sp_frame_parse(h, 8, false, &len), 8);
	assert_int_equal(len, 300);
	assert_int_equal(qpi_sp_frame_hdr(h, true, 1ull << 40), 9);
	assert_int_equal(h[0], 1);
	assert_int_equal(qpi_sp_frame_parse(h, 9, true, &len), 9);
	assert_true(len == 1ull << 40);
	h[0] = 2; /* not a message over ipc */
	assert_int_equal(qpi_sp_frame_parse(h, 9, true, &len), -1);
}

static void
dial_refused(bool nng)
{
	qpi_addr a;
	qpi_link *l = NULL;
	int fd = listen_any(&a);

	close(fd); /* nobody listens there now */
	use_driver(nng);
	assert_int_equal(qpi_link_dial(&l, &a, NULL, QPI_SP_REQ0, QPI_SP_REP0,
	                     qpi_deadline_ns(2000)),
	    QP_ECONNREFUSED);
	assert_null(l);
	assert_non_null(strstr(qp_errmsg(), a.url));
	unsetenv("QPIPE_TRANSPORT");
}

static void
test_link_dial_refused_socket(void **state)
{
	(void) state;
	dial_refused(false);
}

static void
test_link_dial_refused_nng(void **state)
{
	(void) state;
	dial_refused(true);
}

/* A peer that answers the SP handshake as protocol proto. */
typedef struct peer {
	int lfd;
	uint16_t proto;
	int nreplies; /* requests to answer, in reverse order */
} peer;

static void *
peer_main(void *arg)
{
	peer *p = arg;
	int fd = accept(p->lfd, NULL, NULL);
	uint8_t hs[8], frames[4][64];
	size_t lens[4];

	assert_true(fd >= 0);
	qpi_sp_hs_make(hs, p->proto);
	assert_int_equal(write(fd, hs, 8), 8);
	read_full(fd, hs, 8);
	for (int i = 0; i < p->nreplies; i++) {
		uint8_t h[8];
		read_full(fd, h, 8);
		lens[i] = (size_t) qpi_sp_get64(h);
		assert_true(lens[i] >= 4 && lens[i] <= 64);
		read_full(fd, frames[i], lens[i]);
	}
	/* The last request is answered first: each reply carries its
	 * request's id and the request's body. */
	for (int i = p->nreplies - 1; i >= 0; i--) {
		uint8_t h[8];
		qpi_sp_frame_hdr(h, false, lens[i]);
		assert_int_equal(write(fd, h, 8), 8);
		assert_int_equal(
		    write(fd, frames[i], lens[i]), (ssize_t) lens[i]);
	}
	uint8_t c;
	while (read(fd, &c, 1) > 0) {
	}
	close(fd);
	return NULL;
}

static void
not_sp(bool nng)
{
	qpi_addr a;
	qpi_link *l = NULL;
	peer p = {.proto = 0x11}; /* pair1, not rep0 */
	pthread_t t;

	p.lfd = listen_any(&a);
	assert_int_equal(pthread_create(&t, NULL, peer_main, &p), 0);
	use_driver(nng);
	assert_int_equal(qpi_link_dial(&l, &a, NULL, QPI_SP_REQ0, QPI_SP_REP0,
	                     qpi_deadline_ns(2000)),
	    QP_EPROTO);
	unsetenv("QPIPE_TRANSPORT");
	pthread_join(t, NULL);
	close(p.lfd);
}

static void
test_link_peer_not_rep0_socket(void **state)
{
	(void) state;
	not_sp(false);
}

static void
test_link_peer_not_rep0_nng(void **state)
{
	(void) state;
	not_sp(true);
}

typedef struct caller {
	qpi_ce *ce;
	const char *body;
	int rv;
	qpi_ce_reply rep;
} caller;

static void *
caller_main(void *arg)
{
	caller *c = arg;
	uint32_t conn;

	c->rv = qpi_ce_call(c->ce, c->body, strlen(c->body),
	    qpi_deadline_ns(2000), qpi_deadline_ns(5000), &c->rep, &conn);
	return NULL;
}

/* Closes and frees ce, then waits for its peer thread t to end. */
static void
session_end(qpi_ce *ce, pthread_t t, peer *p)
{
	qpi_ce_close(ce);
	qpi_ce_free(ce);
	unsetenv("QPIPE_TRANSPORT");
	pthread_join(t, NULL);
	close(p->lfd);
}

static void
shared(bool nng)
{
	qpi_addr a;
	qpi_ce *ce;
	peer p = {.proto = QPI_SP_REP0, .nreplies = 3};
	caller c[3] = {{.body = "one"}, {.body = "two"}, {.body = "three"}};
	pthread_t t, ct[3];

	p.lfd = listen_any(&a);
	assert_int_equal(pthread_create(&t, NULL, peer_main, &p), 0);
	use_driver(nng);
	assert_int_equal(qpi_ce_open(&ce, &a, NULL, 1024, NULL, NULL,
	                     qpi_deadline_ns(2000)),
	    QP_OK);
	for (int i = 0; i < 3; i++) {
		c[i].ce = ce;
		assert_int_equal(
		    pthread_create(&ct[i], NULL, caller_main, &c[i]), 0);
	}
	for (int i = 0; i < 3; i++) {
		pthread_join(ct[i], NULL);
		assert_int_equal(c[i].rv, QP_OK);
		assert_int_equal(c[i].rep.len, strlen(c[i].body));
		assert_memory_equal(c[i].rep.data, c[i].body, c[i].rep.len);
		qpi_ce_reply_free(ce, &c[i].rep);
		assert_null(c[i].rep.mem);
	}
	session_end(ce, t, &p);
}

static void
test_link_calls_share_socket(void **state)
{
	(void) state;
	shared(false);
}

static void
test_link_calls_share_nng(void **state)
{
	(void) state;
	shared(true);
}

/* A rep0 peer that answers each request, in order, with as many bytes
 * as the request's body names (a decimal number) after its request id:
 * byte i is (i * 7 + n) & 0xff. */
static void *
sized_peer_main(void *arg)
{
	peer *p = arg;
	int fd = accept(p->lfd, NULL, NULL);
	uint8_t hs[8];

	assert_true(fd >= 0);
	qpi_sp_hs_make(hs, QPI_SP_REP0);
	assert_int_equal(write(fd, hs, 8), 8);
	read_full(fd, hs, 8);
	for (int k = 0; k < p->nreplies; k++) {
		uint8_t h[8], req[32];
		size_t len, n;
		read_full(fd, h, 8);
		len = (size_t) qpi_sp_get64(h);
		assert_true(len > 4 && len < sizeof(req));
		read_full(fd, req, len);
		req[len] = 0;
		n = strtoul((const char *) req + 4, NULL, 10);
		uint8_t *f = malloc(4 + n);
		assert_non_null(f);
		memcpy(f, req, 4);
		for (size_t i = 0; i < n; i++) {
			f[4 + i] = (uint8_t) (i * 7 + n);
		}
		qpi_sp_frame_hdr(h, false, 4 + n);
		assert_int_equal(write(fd, h, 8), 8);
		for (size_t off = 0; off < 4 + n;) {
			ssize_t w = write(fd, f + off, 4 + n - off);
			assert_true(w > 0);
			off += (size_t) w;
		}
		free(f);
	}
	uint8_t c;
	while (read(fd, &c, 1) > 0) {
	}
	close(fd);
	return NULL;
}

/* A call asking the sized peer for n bytes; its reply, checked. */
static qpi_ce_reply
sized_call(qpi_ce *ce, size_t n)
{
	char body[24];
	qpi_ce_reply rep;
	uint32_t conn;

	snprintf(body, sizeof(body), "%zu", n);
	assert_int_equal(
	    qpi_ce_call(ce, body, strlen(body), qpi_deadline_ns(2000),
	        qpi_deadline_ns(5000), &rep, &conn),
	    QP_OK);
	assert_int_equal(rep.len, n);
	assert_true(rep.cap >= n + 4);
	assert_true(rep.data >= rep.mem && rep.data + n <= rep.mem + rep.cap);
	for (size_t i = 0; i < n; i++) {
		if (rep.data[i] != (uint8_t) (i * 7 + n)) {
			fail_msg(
			    "byte %zu of a %zu-byte reply is wrong", i, n);
		}
	}
	return rep;
}

/* A batch's reply is read into the memory of the reply before it, once
 * that was given back: a freed reply of 1 KiB to 256 KiB is kept (one per
 * session) and reused by the next reply it can hold. */
static void
reply_reuse(bool nng)
{
	size_t big = QPI_CE_SPARE_MAX + 4096;
	peer p = {.nreplies = 7};
	qpi_addr a;
	qpi_ce *ce;
	qpi_ce_reply r1, r2;
	pthread_t t;

	p.lfd = listen_any(&a);
	assert_int_equal(pthread_create(&t, NULL, sized_peer_main, &p), 0);
	use_driver(nng);
	assert_int_equal(qpi_ce_open(&ce, &a, NULL, 1 << 20, NULL, NULL,
	                     qpi_deadline_ns(2000)),
	    QP_OK);
	r1 = sized_call(ce, 20000);
	uint8_t *kept = r1.mem;
	qpi_ce_reply_free(ce, &r1);
	/* Smaller replies land in the kept memory, and it is kept again. */
	r1 = sized_call(ce, 5000);
	assert_ptr_equal(r1.mem, kept);
	assert_int_equal(r1.cap, 20004); /* not a new block of 5004 */
	qpi_ce_reply_free(ce, &r1);
	r1 = sized_call(ce, 10);
	assert_ptr_equal(r1.mem, kept);
	assert_int_equal(r1.cap, 20004);
	/* Held by the caller: the next reply needs memory of its own. */
	r2 = sized_call(ce, 3000);
	assert_ptr_not_equal(r2.mem, kept);
	assert_int_equal(r2.cap, 3004);
	qpi_ce_reply_free(ce, &r1);
	qpi_ce_reply_free(ce, &r2); /* one kept already: r2 freed */
	/* Larger than the kept one: new memory; the kept one stays. */
	r1 = sized_call(ce, 40000);
	assert_ptr_not_equal(r1.mem, kept);
	qpi_ce_reply_free(ce, &r1);
	/* Over the most kept: freed, never kept. */
	r1 = sized_call(ce, big);
	qpi_ce_reply_free(ce, &r1);
	r1 = sized_call(ce, 2000);
	assert_ptr_equal(r1.mem, kept);
	assert_int_equal(r1.cap, 20004);
	qpi_ce_reply_free(ce, &r1);
	session_end(ce, t, &p);
}

static void
test_link_reply_reuse_socket(void **state)
{
	(void) state;
	reply_reuse(false);
}

static void
test_link_reply_reuse_nng(void **state)
{
	(void) state;
	reply_reuse(true);
}

/* The reply spin's rule (lib/link_sock.c): a reply that came during
 * the spin's yields without the CPU taken away resets the misses; one
 * that came after the CPU was away, or a broken link, is a miss (counted
 * up to the limit); one there at the first read is a hit on ipc:// and
 * neither on tcp://, where counting it as a hit kept a client that shares
 * its CPU with the server yielding on most waits. */
static void
test_link_spin_rule(void **state)
{
	(void) state;
	/* tcp:// */
	assert_int_equal(qpi_link_spin_misses(5, 1, false, false, false), 5);
	assert_int_equal(qpi_link_spin_misses(0, 1, false, false, false), 0);
	assert_int_equal(qpi_link_spin_misses(5, 1, true, false, false), 0);
	assert_int_equal(qpi_link_spin_misses(5, 1, true, true, false), 6);
	assert_int_equal(qpi_link_spin_misses(5, -1, true, false, false), 6);
	/* ipc:// */
	assert_int_equal(qpi_link_spin_misses(5, 1, false, false, true), 0);
	assert_int_equal(qpi_link_spin_misses(5, 1, true, true, true), 6);
	/* A link at the limit stays there (it then spins every 64th
	 * wait, counting those on from the limit). */
	unsigned m = 0;
	for (int i = 0; i < 20; i++) {
		m = qpi_link_spin_misses(m, 1, true, true, false);
	}
	assert_int_equal(m, 8);
	/* A tcp:// link whose replies come at once, between misses,
	 * reaches the limit: the immediate replies do not reset it. */
	m = 0;
	for (int i = 0; i < 8; i++) {
		m = qpi_link_spin_misses(m, 1, false, false, false);
		m = qpi_link_spin_misses(m, 1, true, true, false);
	}
	assert_int_equal(m, 8);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_link_spin_rule),
	    cmocka_unit_test(test_link_nng_errors),
	    cmocka_unit_test(test_link_frames),
	    cmocka_unit_test(test_link_dial_refused_socket),
	    cmocka_unit_test(test_link_dial_refused_nng),
	    cmocka_unit_test(test_link_peer_not_rep0_socket),
	    cmocka_unit_test(test_link_peer_not_rep0_nng),
	    cmocka_unit_test(test_link_calls_share_socket),
	    cmocka_unit_test(test_link_calls_share_nng),
	    cmocka_unit_test(test_link_reply_reuse_socket),
	    cmocka_unit_test(test_link_reply_reuse_nng),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
