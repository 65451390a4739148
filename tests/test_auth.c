/*
 * test_auth.c - the token challenge-response (lib/auth.c) and its use by
 * direct connections (qp_listen_opts / qp_dial_opts): HMAC-SHA-256 against
 * RFC 4231, the server's and client's steps, token files and QPIPE_TOKEN,
 * right/wrong/missing tokens end to end, and replays: the bytes of a
 * recorded successful handshake, sent again to the listener (or, as a
 * fake listener, to a dialer), must fail. Raw sockets record and replay.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "auth.h"
#include "conn.h"
#include "qpi.h"
#include "wire.h"

static char tmpdir[64];

static int
setup(void **state)
{
	(void) state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/qp-auth-XXXXXX");
	return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	char cmd[128];

	(void) state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void
hex(const char *s, uint8_t *out, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned v;
		assert_int_equal(sscanf(s + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t) v;
	}
}

/* ---- primitives ---- */

/* RFC 4231, test cases 1, 2 and 6 (a key longer than the block). */
static void
test_auth_hmac_rfc4231(void **state)
{
	uint8_t key[131], want[32], mac[32];
	const char *msg6 = "Test Using Larger Than Block-Size Key - Hash Key "
	                   "First";

	memset(key, 0x0b, 20);
	hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
	    want, 32);
	assert_int_equal(qpi_hmac_sha256(key, 20, "Hi There", 8, mac), QP_OK);
	assert_memory_equal(mac, want, 32);

	hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
	    want, 32);
	assert_int_equal(qpi_hmac_sha256("Jefe", 4,
	                     "what do ya want for nothing?", 28, mac),
	    QP_OK);
	assert_memory_equal(mac, want, 32);

	memset(key, 0xaa, sizeof(key));
	hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
	    want, 32);
	assert_int_equal(
	    qpi_hmac_sha256(key, sizeof(key), msg6, strlen(msg6), mac), QP_OK);
	assert_memory_equal(mac, want, 32);
}

static void
test_auth_equal_and_random(void **state)
{
	uint8_t a[32], b[32], zero[32] = {0};

	assert_int_equal(qpi_random(a, sizeof(a)), QP_OK);
	assert_int_equal(qpi_random(b, sizeof(b)), QP_OK);
	assert_false(qpi_auth_equal(a, b, sizeof(a)));
	assert_false(qpi_auth_equal(a, zero, sizeof(a)));
	memcpy(b, a, sizeof(a));
	assert_true(qpi_auth_equal(a, b, sizeof(a)));
	b[31] ^= 1;
	assert_false(qpi_auth_equal(a, b, sizeof(a)));
}

/* ---- the exchange, step by step ---- */

static void
test_auth_exchange_steps(void **state)
{
	qpi_token t, other;
	qpi_auth_server s;
	qpi_auth_client c;
	uint8_t nonce[32], nonce2[32], mac[32], cnonce[32], smac[32];
	bool has = true;

	assert_int_equal(qpi_token_set(&t, "s3cret"), QP_OK);
	assert_int_equal(qpi_token_set(&other, "s3cre7"), QP_OK);

	/* The right token; the server proves it back. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(qpi_auth_server_hello(&s, nonce), QP_OK);
	assert_int_equal(
	    qpi_auth_client_answer(&c, &t, nonce, mac, cnonce), QP_OK);
	assert_int_equal(
	    qpi_auth_server_check(&s, &t, mac, cnonce, smac, &has), QP_OK);
	assert_true(has);
	assert_true(s.ok);
	assert_int_equal(
	    qpi_auth_client_verify(&c, &t, smac, true, "peer"), QP_OK);
	/* A server that skips its proof, or proves another token, fails. */
	assert_int_equal(
	    qpi_auth_client_verify(&c, &t, NULL, false, "peer"), QP_EAUTH);
	assert_int_equal(
	    qpi_auth_client_verify(&c, &other, smac, true, "peer"), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "does not hold the token"));
	smac[0] ^= 1;
	assert_int_equal(
	    qpi_auth_client_verify(&c, &t, smac, true, "peer"), QP_EAUTH);

	/* The nonce is used up: the same right answer again fails. */
	assert_int_equal(
	    qpi_auth_server_check(&s, &t, mac, cnonce, smac, &has), QP_EAUTH);
	assert_false(has);
	assert_non_null(strstr(qp_errmsg(), "hello"));

	/* Without a client nonce there is no server mac. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(qpi_auth_server_hello(&s, nonce), QP_OK);
	assert_int_equal(
	    qpi_auth_client_answer(&c, &t, nonce, mac, cnonce), QP_OK);
	assert_int_equal(
	    qpi_auth_server_check(&s, &t, mac, NULL, smac, &has), QP_OK);
	assert_false(has);

	/* A wrong token fails, and uses the nonce up too. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(qpi_auth_server_hello(&s, nonce), QP_OK);
	assert_int_equal(
	    qpi_auth_client_answer(&c, &other, nonce, mac, cnonce), QP_OK);
	assert_int_equal(
	    qpi_auth_server_check(&s, &t, mac, cnonce, smac, &has), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "wrong token"));
	assert_false(s.ok);
	assert_int_equal(
	    qpi_auth_client_answer(&c, &t, nonce, mac, cnonce), QP_OK);
	assert_int_equal(
	    qpi_auth_server_check(&s, &t, mac, cnonce, smac, &has), QP_EAUTH);

	/* An answer to an older nonce fails after a newer hello. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(qpi_auth_server_hello(&s, nonce), QP_OK);
	assert_int_equal(qpi_auth_server_hello(&s, nonce2), QP_OK);
	assert_memory_not_equal(nonce, nonce2, 32);
	assert_int_equal(
	    qpi_auth_client_answer(&c, &t, nonce, mac, cnonce), QP_OK);
	assert_int_equal(
	    qpi_auth_server_check(&s, &t, mac, cnonce, smac, &has), QP_EAUTH);

	/* No hello at all. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(
	    qpi_auth_server_check(&s, &t, mac, cnonce, smac, &has), QP_EAUTH);
}

static void
test_auth_client_policy(void **state)
{
	qpi_token t, none;
	bool go;

	assert_int_equal(qpi_token_set(&t, "x"), QP_OK);
	qpi_token_clear(&none);
	assert_int_equal(qpi_auth_client_policy(&t, true, "p", &go), QP_OK);
	assert_true(go);
	assert_int_equal(
	    qpi_auth_client_policy(&none, false, "p", &go), QP_OK);
	assert_false(go);
	assert_int_equal(
	    qpi_auth_client_policy(&none, true, "p", &go), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "requires a token"));
	assert_int_equal(
	    qpi_auth_client_policy(&t, false, "p", &go), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "does not ask for a token"));
}

/* ---- tokens ---- */

static const char *
write_file(const char *name, const void *data, size_t len, mode_t mode)
{
	static char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	assert_non_null(f = fopen(path, "wb"));
	assert_int_equal(fwrite(data, 1, len, f), len);
	fclose(f);
	assert_int_equal(chmod(path, mode), 0);
	return path;
}

static void
expect_token(const qpi_token *t, const char *s)
{
	assert_int_equal(t->len, strlen(s));
	assert_memory_equal(t->key, s, t->len);
}

static void
test_auth_token_file(void **state)
{
	char big[QPI_TOKEN_MAX + 8];
	qpi_token t;
	bool exposed = true;
	const char *p;

	p = write_file("t1", "s3cret\n", 7, 0600);
	assert_int_equal(qpi_token_load_file(&t, p, &exposed), QP_OK);
	expect_token(&t, "s3cret");
	assert_false(exposed);

	p = write_file("t2", "s3cret\r\nsecond line\n", 20, 0600);
	assert_int_equal(qpi_token_load_file(&t, p, NULL), QP_OK);
	expect_token(&t, "s3cret");

	p = write_file("t3", "no newline ", 11, 0600);
	assert_int_equal(qpi_token_load_file(&t, p, NULL), QP_OK);
	expect_token(&t, "no newline ");

	/* Readable by others: loaded, and the caller is told. */
	p = write_file("t4", "shared\n", 7, 0644);
	assert_int_equal(qpi_token_load_file(&t, p, &exposed), QP_OK);
	expect_token(&t, "shared");
	assert_true(exposed);
	p = write_file("t4g", "shared\n", 7, 0640);
	assert_int_equal(qpi_token_load_file(&t, p, &exposed), QP_OK);
	assert_true(exposed);

	/* Empty tokens are refused. */
	p = write_file("e1", "", 0, 0600);
	assert_int_equal(qpi_token_load_file(&t, p, NULL), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "first line is empty"));
	assert_int_equal(t.len, 0);
	p = write_file("e2", "\nsecret on line 2\n", 18, 0600);
	assert_int_equal(qpi_token_load_file(&t, p, NULL), QP_EINVAL);
	p = write_file("e3", "\r\n", 2, 0600);
	assert_int_equal(qpi_token_load_file(&t, p, NULL), QP_EINVAL);

	/* The longest token, and one byte more. */
	memset(big, 'k', sizeof(big));
	big[QPI_TOKEN_MAX] = '\n';
	p = write_file("l1", big, QPI_TOKEN_MAX + 1, 0600);
	assert_int_equal(qpi_token_load_file(&t, p, NULL), QP_OK);
	assert_int_equal(t.len, QPI_TOKEN_MAX);
	big[QPI_TOKEN_MAX] = 'k';
	big[QPI_TOKEN_MAX + 1] = '\n';
	p = write_file("l2", big, QPI_TOKEN_MAX + 2, 0600);
	assert_int_equal(qpi_token_load_file(&t, p, NULL), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "over the maximum"));
	p = write_file("l3", big, sizeof(big), 0600);
	assert_int_equal(qpi_token_load_file(&t, p, NULL), QP_EINVAL);

	/* Not there, not a file, not readable. */
	char path[128];
	snprintf(path, sizeof(path), "%s/missing", tmpdir);
	assert_int_equal(qpi_token_load_file(&t, path, NULL), QP_ENOENT);
	assert_non_null(strstr(qp_errmsg(), "missing"));
	assert_int_equal(qpi_token_load_file(&t, tmpdir, NULL), QP_EINVAL);
	assert_int_equal(qpi_token_load_file(&t, "", NULL), QP_EINVAL);
	if (geteuid() != 0) {
		p = write_file("n1", "x\n", 2, 0000);
		assert_int_equal(qpi_token_load_file(&t, p, NULL), QP_EPERM);
	}

	/* Explicit tokens. */
	assert_int_equal(qpi_token_set(&t, ""), QP_EINVAL);
	big[QPI_TOKEN_MAX + 1] = '\0';
	assert_int_equal(qpi_token_set(&t, big), QP_EINVAL);
}

static void
test_auth_token_sources(void **state)
{
	qpi_token t;
	const char *p = write_file("src", "from-file\n", 10, 0600);

	setenv("QPIPE_TOKEN", "from-env", 1);
	assert_int_equal(
	    qpi_token_resolve(&t, NULL, NULL, false, NULL), QP_OK);
	expect_token(&t, "from-env");
	assert_int_equal(
	    qpi_token_resolve(&t, "given", NULL, false, NULL), QP_OK);
	expect_token(&t, "given");
	assert_int_equal(qpi_token_resolve(&t, NULL, p, false, NULL), QP_OK);
	expect_token(&t, "from-file");
	assert_int_equal(qpi_token_resolve(&t, NULL, NULL, true, NULL), QP_OK);
	assert_int_equal(t.len, 0);
	assert_int_equal(
	    qpi_token_resolve(&t, "given", p, false, NULL), QP_EINVAL);

	setenv("QPIPE_TOKEN", "", 1);
	assert_int_equal(qpi_token_from_env(&t), QP_OK);
	assert_int_equal(t.len, 0);
	unsetenv("QPIPE_TOKEN");
	assert_int_equal(
	    qpi_token_resolve(&t, NULL, NULL, false, NULL), QP_OK);
	assert_int_equal(t.len, 0);
}

/* ---- end to end over direct connections ---- */

/* Waits (bounded) until the listener has refused n dialers. */
static void
expect_refused(qp_listener *l, uint64_t n)
{
	for (int i = 0; i < 200 && qpi_net_listener_refused(l) < n; i++) {
		usleep(10000);
	}
	assert_int_equal(qpi_net_listener_refused(l), n);
}

static void
talk(qp_conn *a, qp_conn *b)
{
	void *buf;
	size_t len;

	assert_int_equal(qp_conn_send_bytes(a, "ping", 0, 4), QP_OK);
	assert_int_equal(qp_conn_recv_bytes(b, &buf, &len, 100), QP_OK);
	assert_int_equal(len, 4);
	assert_memory_equal(buf, "ping", 4);
	qp_free(buf);
	assert_int_equal(qp_conn_send_bytes(b, "pong", 0, 4), QP_OK);
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 100), QP_OK);
	assert_memory_equal(buf, "pong", 4);
	qp_free(buf);
}

static void
right_token(const char *addr)
{
	qp_conn_opts lo = {.token = "open sesame"};
	qp_conn_opts dopt = {.token = "open sesame"};
	qp_listener *l;
	qp_conn *d, *a;

	assert_int_equal(qp_listen_opts(&l, addr, &lo), QP_OK);
	assert_int_equal(
	    qp_dial_opts(&d, qp_listener_url(l), 2000, &dopt), QP_OK);
	assert_int_equal(qp_listener_accept(l, &a, 2000), QP_OK);
	talk(d, a);
	assert_int_equal(qpi_net_listener_refused(l), 0);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

static void
test_auth_right_token(void **state)
{
	char addr[128];

	right_token("tcp://127.0.0.1:0");
	snprintf(addr, sizeof(addr), "ipc://%s/sock", tmpdir);
	right_token(addr);
}

static void
test_auth_wrong_or_no_token(void **state)
{
	qp_conn_opts lo = {.token = "open sesame"};
	qp_conn_opts wrong = {.token = "open sesamE"};
	qp_conn_opts none = {.no_token = true};
	qp_listener *l;
	qp_conn *d = NULL, *a;

	assert_int_equal(qp_listen_opts(&l, "tcp://127.0.0.1:0", &lo), QP_OK);
	assert_int_equal(
	    qp_dial_opts(&d, qp_listener_url(l), 2000, &wrong), QP_EAUTH);
	assert_null(d);
	assert_non_null(strstr(qp_errmsg(), "refused the token"));
	assert_non_null(strstr(qp_errmsg(), "wrong token"));
	expect_refused(l, 1);

	assert_int_equal(
	    qp_dial_opts(&d, qp_listener_url(l), 2000, &none), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "requires a token"));
	expect_refused(l, 2);

	/* Nothing was accepted for them; the right token still works. */
	assert_int_equal(qp_listener_accept(l, &a, 100), QP_ETIMEDOUT);
	assert_int_equal(
	    qp_dial_opts(&d, qp_listener_url(l), 2000, &lo), QP_OK);
	assert_int_equal(qp_listener_accept(l, &a, 2000), QP_OK);
	talk(a, d);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

/* A dialer with a token refuses a listener that cannot prove it. */
static void
test_auth_listener_without_token(void **state)
{
	qp_conn_opts open = {.no_token = true};
	qp_conn_opts dopt = {.token = "open sesame"};
	qp_listener *l;
	qp_conn *d = NULL;

	assert_int_equal(
	    qp_listen_opts(&l, "tcp://127.0.0.1:0", &open), QP_OK);
	assert_int_equal(
	    qp_dial_opts(&d, qp_listener_url(l), 2000, &dopt), QP_EAUTH);
	assert_null(d);
	assert_non_null(strstr(qp_errmsg(), "does not ask for a token"));
	qp_listener_free(l);
}

/* qp_listen and qp_dial take QPIPE_TOKEN; token files work end to end. */
static void
test_auth_env_and_file(void **state)
{
	const char *p = write_file("tok", "from the file\n", 14, 0600);
	qp_conn_opts filed = {.token_file = p};
	qp_conn_opts none = {.no_token = true};
	qp_listener *l;
	qp_conn *d, *a;

	setenv("QPIPE_TOKEN", "from the file", 1);
	assert_int_equal(qp_listen(&l, "tcp://127.0.0.1:0"), QP_OK);
	unsetenv("QPIPE_TOKEN");
	assert_int_equal(
	    qp_dial_opts(&d, qp_listener_url(l), 2000, &filed), QP_OK);
	assert_int_equal(qp_listener_accept(l, &a, 2000), QP_OK);
	talk(d, a);
	qp_conn_free(d);
	qp_conn_free(a);

	/* Without QPIPE_TOKEN, plain qp_dial has no token. */
	assert_int_equal(qp_dial(&d, qp_listener_url(l), 2000), QP_EAUTH);
	setenv("QPIPE_TOKEN", "from the file", 1);
	assert_int_equal(qp_dial(&d, qp_listener_url(l), 2000), QP_OK);
	assert_int_equal(qp_listener_accept(l, &a, 2000), QP_OK);
	qp_conn_free(d);
	qp_conn_free(a);
	/* no_token overrides the environment */
	assert_int_equal(
	    qp_dial_opts(&d, qp_listener_url(l), 2000, &none), QP_EAUTH);
	unsetenv("QPIPE_TOKEN");
	qp_listener_free(l);

	/* Bad options fail before anything is opened. */
	qp_conn_opts both = {.token = "a", .token_file = p};
	qp_conn_opts empty = {.token = ""};
	char missing[128];
	snprintf(missing, sizeof(missing), "%s/none", tmpdir);
	qp_conn_opts nofile = {.token_file = missing};
	assert_int_equal(
	    qp_listen_opts(&l, "tcp://127.0.0.1:0", &both), QP_EINVAL);
	assert_int_equal(
	    qp_listen_opts(&l, "tcp://127.0.0.1:0", &empty), QP_EINVAL);
	assert_int_equal(
	    qp_listen_opts(&l, "tcp://127.0.0.1:0", &nofile), QP_ENOENT);
	assert_int_equal(
	    qp_dial_opts(&d, "tcp://127.0.0.1:1", 0, &nofile), QP_ENOENT);
}

/* max_message from the options: the listener tells it in its hello and
 * the dialer refuses larger messages before sending. */
static void
test_auth_max_message_option(void **state)
{
	qp_conn_opts lo = {.token = "t", .max_message = 100};
	qp_conn_opts dopt = {.token = "t"};
	uint8_t big[101] = {0};
	qp_listener *l;
	qp_conn *d, *a;

	assert_int_equal(qp_listen_opts(&l, "tcp://127.0.0.1:0", &lo), QP_OK);
	assert_int_equal(
	    qp_dial_opts(&d, qp_listener_url(l), 2000, &dopt), QP_OK);
	assert_int_equal(qp_listener_accept(l, &a, 2000), QP_OK);
	assert_int_equal(qp_conn_send_bytes(d, big, 0, 101), QP_ETOOBIG);
	assert_int_equal(qp_conn_send_bytes(d, big, 0, 100), QP_OK);
	assert_int_equal(qp_conn_send_bytes(a, big, 0, 101), QP_ETOOBIG);
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
	qp_conn_opts bad = {.max_message = SIZE_MAX};
	assert_int_equal(
	    qp_listen_opts(&l, "tcp://127.0.0.1:0", &bad), QP_EINVAL);
}

/* ---- raw sockets: record and replay ---- */

static uint16_t
url_port(const char *url)
{
	const char *c = strrchr(url, ':');

	assert_non_null(c);
	return (uint16_t) atoi(c + 1);
}

static int
raw_connect(uint16_t port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET,
	    .sin_port = htons(port),
	    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct timeval tv = {.tv_sec = 5};
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	assert_int_equal(
	    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
	return fd;
}

/* A listening socket on 127.0.0.1:0; *portp gets its port. */
static int
raw_listen(uint16_t *portp)
{
	struct sockaddr_in sa = {
	    .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 4), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &sl), 0);
	*portp = ntohs(sa.sin_port);
	return fd;
}

/* Reads until end of file (or the 5 s receive timeout); returns bytes. */
static size_t
read_all(int fd, uint8_t *buf, size_t cap)
{
	size_t got = 0;
	ssize_t n;

	while (got < cap && (n = read(fd, buf + got, cap - got)) > 0) {
		got += (size_t) n;
	}
	return got;
}

static void
write_all(int fd, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		assert_true(n > 0);
		buf += n;
		len -= (size_t) n;
	}
}

/* A recording proxy: one client, forwarded to port; both directions are
 * kept. Ends when either side closes (or after 10 s). */
struct proxy {
	int lfd;
	uint16_t to;
	uint8_t c2s[4096];
	size_t nc2s;
	uint8_t s2c[4096];
	size_t ns2c;
};

static void *
proxy_run(void *arg)
{
	struct proxy *p = arg;
	int c = accept(p->lfd, NULL, NULL);
	int s = c >= 0 ? raw_connect(p->to) : -1;
	struct pollfd fds[2]
	    = {{.fd = c, .events = POLLIN}, {.fd = s, .events = POLLIN}};

	for (int round = 0; c >= 0 && round < 1000; round++) {
		if (poll(fds, 2, 10000) <= 0) {
			break;
		}
		int from = (fds[0].revents != 0) ? 0 : 1;
		uint8_t buf[4096];
		ssize_t n = read(fds[from].fd, buf, sizeof(buf));
		if (n <= 0) {
			break;
		}
		uint8_t *rec = from == 0 ? p->c2s : p->s2c;
		size_t *nrec = from == 0 ? &p->nc2s : &p->ns2c;
		size_t keep = (size_t) n;
		if (keep > 4096 - *nrec) {
			keep = 4096 - *nrec;
		}
		memcpy(rec + *nrec, buf, keep);
		*nrec += keep;
		if (write(fds[1 - from].fd, buf, (size_t) n) != n) {
			break;
		}
	}
	if (c >= 0) {
		close(c);
	}
	if (s >= 0) {
		close(s);
	}
	return NULL;
}

/* Records one successful handshake through a proxy. */
static void
record_handshake(qp_listener *l, const char *token, struct proxy *p)
{
	qp_conn_opts dopt = {.token = token};
	pthread_t th;
	char url[64];
	uint16_t port;
	qp_conn *d, *a;

	memset(p, 0, sizeof(*p));
	p->lfd = raw_listen(&port);
	p->to = url_port(qp_listener_url(l));
	assert_int_equal(pthread_create(&th, NULL, proxy_run, p), 0);
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%u", (unsigned) port);
	assert_int_equal(qp_dial_opts(&d, url, 2000, &dopt), QP_OK);
	assert_int_equal(qp_listener_accept(l, &a, 2000), QP_OK);
	qp_conn_free(d);
	qp_conn_free(a);
	assert_int_equal(pthread_join(th, NULL), 0);
	close(p->lfd);
	/* SP header, hello and auth frames each way */
	assert_true(p->nc2s > 8 + 2 * 12);
	assert_true(p->ns2c > 8 + 2 * 12);
}

/* The frames of a recorded tcp stream after its SP header: *rep gets the
 * n-th reply (0 = hello, 1 = auth). */
static void
nth_reply(const uint8_t *buf, size_t len, int n, qpi_wire_rep *rep)
{
	size_t off = 8;

	for (int i = 0;; i++) {
		assert_true(off + 12 <= len);
		uint64_t flen = 0;
		for (int k = 0; k < 8; k++) {
			flen = (flen << 8) | buf[off + k];
		}
		assert_true(flen >= 4 && off + 8 + flen <= len);
		if (i == n) {
			memset(rep, 0, sizeof(*rep));
			assert_int_equal(qpi_wire_decode_rep(buf + off + 12,
			                     (size_t) flen - 4, NULL, rep),
			    QP_OK);
			return;
		}
		off += 8 + (size_t) flen;
	}
}

/* The bytes a dialer sent in a successful handshake, sent again on a new
 * connection: the listener's nonce is new, so the recorded mac is wrong. */
static void
test_auth_replayed_handshake_fails(void **state)
{
	qp_conn_opts lo = {.token = "replay me"};
	struct proxy p;
	qpi_wire_rep rep, first;
	uint8_t in[4096];
	qp_listener *l;
	qp_conn *a;

	assert_int_equal(qp_listen_opts(&l, "tcp://127.0.0.1:0", &lo), QP_OK);
	record_handshake(l, "replay me", &p);
	nth_reply(p.s2c, p.ns2c, 0, &first);
	assert_true(first.auth_required);

	int fd = raw_connect(url_port(qp_listener_url(l)));
	write_all(fd, p.c2s, p.nc2s);
	size_t n = read_all(fd, in, sizeof(in));
	close(fd);
	nth_reply(in, n, 0, &rep);
	assert_int_equal(rep.op, QPI_OP_HELLO);
	assert_true(rep.auth_required);
	assert_memory_not_equal(rep.nonce, first.nonce, 32);
	nth_reply(in, n, 1, &rep);
	assert_int_equal(rep.op, QPI_OP_AUTH);
	assert_int_equal(rep.status, QP_EAUTH);
	assert_false(rep.has_mac);
	assert_non_null(strstr(rep.errmsg, "wrong token"));

	assert_int_equal(qp_listener_accept(l, &a, 100), QP_ETIMEDOUT);
	expect_refused(l, 1);
	qp_listener_free(l);
}

/* A fake listener that replays what the real one sent in a recorded
 * handshake: the dialer's nonce is new, so the recorded server_mac does
 * not prove the token and the dialer refuses. */
static void *
fake_run(void *arg)
{
	struct proxy *p = arg;
	uint8_t sink[4096];
	int c = accept(p->lfd, NULL, NULL);

	if (c >= 0) {
		struct timeval tv = {.tv_sec = 5};
		setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		if (write(c, p->s2c, p->ns2c) == (ssize_t) p->ns2c) {
			read_all(c, sink, sizeof(sink));
		}
		close(c);
	}
	return NULL;
}

static void
test_auth_replayed_listener_fails(void **state)
{
	qp_conn_opts lo = {.token = "replay me"};
	struct proxy p;
	pthread_t th;
	char url[64];
	uint16_t port;
	qp_listener *l;
	qp_conn *d = NULL;

	assert_int_equal(qp_listen_opts(&l, "tcp://127.0.0.1:0", &lo), QP_OK);
	record_handshake(l, "replay me", &p);
	qp_listener_free(l);

	p.lfd = raw_listen(&port);
	assert_int_equal(pthread_create(&th, NULL, fake_run, &p), 0);
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%u", (unsigned) port);
	assert_int_equal(qp_dial_opts(&d, url, 2000, &lo), QP_EAUTH);
	assert_null(d);
	assert_non_null(strstr(qp_errmsg(), "server_mac is wrong"));
	assert_int_equal(pthread_join(th, NULL), 0);
	close(p.lfd);
}

/* A dialer that sends something else than auth after hello is refused
 * with an answer that says so. */
static void
test_auth_skipping_auth_is_refused(void **state)
{
	qp_conn_opts lo = {.token = "t0ken"};
	qpi_wire_req req;
	qpi_wire_buf body = {0};
	uint8_t out[512], in[4096];
	size_t k = 0;
	qpi_wire_rep rep;
	qp_listener *l;
	qp_conn *a;
	static const uint8_t sp[8] = {0, 'S', 'P', 0, 0, 0x11, 0, 0};

	assert_int_equal(qp_listen_opts(&l, "tcp://127.0.0.1:0", &lo), QP_OK);
	memcpy(out, sp, 8);
	k = 8;
	for (int i = 0; i < 2; i++) {
		memset(&req, 0, sizeof(req));
		req.op = i == 0 ? QPI_OP_HELLO : QPI_OP_PING;
		req.req_id = (uint64_t) i + 1;
		qpi_wire_buf_reset(&body);
		assert_int_equal(qpi_wire_encode_req(&req, &body), QP_OK);
		uint64_t flen = 4 + body.len;
		for (int b = 7; b >= 0; b--) {
			out[k + (size_t) b] = (uint8_t) flen;
			flen >>= 8;
		}
		memcpy(out + k + 8, "\0\0\0\1", 4);
		memcpy(out + k + 12, body.data, body.len);
		k += 12 + body.len;
	}
	qpi_wire_buf_free(&body);
	int fd = raw_connect(url_port(qp_listener_url(l)));
	write_all(fd, out, k);
	size_t n = read_all(fd, in, sizeof(in));
	close(fd);
	nth_reply(in, n, 1, &rep);
	assert_int_equal(rep.op, QPI_OP_PING);
	assert_int_equal(rep.status, QP_EAUTH);
	assert_non_null(strstr(rep.errmsg, "authentication required"));
	assert_int_equal(qp_listener_accept(l, &a, 100), QP_ETIMEDOUT);
	expect_refused(l, 1);
	qp_listener_free(l);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_auth_hmac_rfc4231),
	    cmocka_unit_test(test_auth_equal_and_random),
	    cmocka_unit_test(test_auth_exchange_steps),
	    cmocka_unit_test(test_auth_client_policy),
	    cmocka_unit_test(test_auth_token_file),
	    cmocka_unit_test(test_auth_token_sources),
	    cmocka_unit_test(test_auth_right_token),
	    cmocka_unit_test(test_auth_wrong_or_no_token),
	    cmocka_unit_test(test_auth_listener_without_token),
	    cmocka_unit_test(test_auth_env_and_file),
	    cmocka_unit_test(test_auth_max_message_option),
	    cmocka_unit_test(test_auth_replayed_handshake_fails),
	    cmocka_unit_test(test_auth_replayed_listener_fails),
	    cmocka_unit_test(test_auth_skipping_auth_is_refused),
	};

	/* The tests set the token themselves. */
	unsetenv("QPIPE_TOKEN");
	if (getenv("QP_TEST_FILTER") != NULL) {
		cmocka_set_test_filter(getenv("QP_TEST_FILTER"));
	}
	return cmocka_run_group_tests(tests, setup, teardown);
}
