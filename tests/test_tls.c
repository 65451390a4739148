/*
 * test_tls.c - tls+tcp:// direct connections (lib/tls.c through
 * qp_listen_opts / qp_dial_opts): the test makes its own CA and
 * certificates with openssl (tests/tls_certs.sh, in a fresh temporary
 * directory), then checks a verified exchange, the failures a user meets
 * (a CA that did not sign the server, a name the certificate does not
 * carry, a client certificate required and missing or not trusted, bad
 * files), and TLS with a token. Without openssl (or TLS in nng) it says
 * why and exits 77, which ctest reports as skipped.
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
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "qpi.h"
#include "tls.h"

static char tmpdir[64];

/* The path of one of the test's files. */
static const char *
f(const char *name)
{
	static char paths[8][128];
	static int next;
	char *p = paths[next++ % 8];

	snprintf(p, sizeof(paths[0]), "%s/%s", tmpdir, name);
	return p;
}

/* Makes the certificates in a fresh directory: QP_OK, or why the tests
 * cannot run in *whyp (skipped), or QP_ESYSTEM (a real failure). */
static int
prepare(const char **whyp)
{
	const char *src = getenv("QP_SOURCE_DIR");
	char cmd[512];

	if (qpi_tls_available() != QP_OK) {
		*whyp = qp_errmsg();
		return QP_ENOTSUP;
	}
	if (system("command -v openssl >/dev/null 2>&1") != 0) {
		*whyp = "openssl is not installed (scripts/deps.sh test)";
		return QP_ENOTSUP;
	}
	if (src == NULL) {
		*whyp = "QP_SOURCE_DIR is not set (run through ctest)";
		return QP_ENOTSUP;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/qp-tls-XXXXXX");
	if (mkdtemp(tmpdir) == NULL) {
		return QP_ESYSTEM;
	}
	snprintf(
	    cmd, sizeof(cmd), "sh '%s/tests/tls_certs.sh' '%s'", src, tmpdir);
	return system(cmd) == 0 ? QP_OK : QP_ESYSTEM;
}

static int
teardown(void **state)
{
	char cmd[128];

	(void) state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static qp_conn_opts
server_opts(void)
{
	qp_conn_opts o = {.tls_cert = f("server.crt"),
	    .tls_key = f("server.key"),
	    .no_token = true};
	return o;
}

static qp_conn_opts
client_opts(void)
{
	qp_conn_opts o = {.tls_ca = f("ca.crt"), .no_token = true};
	return o;
}

static void
exchange(qp_conn *a, qp_conn *b, size_t size)
{
	uint8_t *msg = malloc(size);
	void *buf;
	size_t len;

	assert_non_null(msg);
	for (size_t i = 0; i < size; i++) {
		msg[i] = (uint8_t) (i * 31 + 7);
	}
	assert_int_equal(qp_conn_send_bytes(a, msg, 0, size), QP_OK);
	assert_int_equal(qp_conn_recv_bytes(b, &buf, &len, SIZE_MAX), QP_OK);
	assert_int_equal(len, size);
	assert_memory_equal(buf, msg, size);
	qp_free(buf);
	free(msg);
}

/* Listens with lo, dials with dopt: QP_OK and both ends, or the dial's
 * error, with nothing accepted. */
static int
try_pair(const qp_conn_opts *lo, const qp_conn_opts *dopt, qp_conn **dp,
    qp_conn **ap, qp_listener **lp)
{
	qp_listener *l;
	qp_conn *d = NULL, *a = NULL;
	char msg[600];
	int rv;

	assert_int_equal(
	    qp_listen_opts(&l, "tls+tcp://127.0.0.1:0", lo), QP_OK);
	assert_int_equal(
	    strncmp(qp_listener_url(l), "tls+tcp://127.0.0.1:", 20), 0);
	rv = qp_dial_opts(&d, qp_listener_url(l), 3000, dopt);
	snprintf(msg, sizeof(msg), "%s", qp_errmsg());
	if (rv == QP_OK) {
		assert_int_equal(qp_listener_accept(l, &a, 3000), QP_OK);
		*dp = d;
		*ap = a;
		*lp = l;
	} else {
		assert_null(d);
		assert_int_equal(qp_listener_accept(l, &a, 100), QP_ETIMEDOUT);
		qp_listener_free(l);
		/* the dial's message, for the caller's checks */
		qpi_err(rv, "%s", msg);
	}
	return rv;
}

static void
free_pair(qp_conn *d, qp_conn *a, qp_listener *l)
{
	qp_conn_free(d);
	qp_conn_free(a);
	qp_listener_free(l);
}

static void
test_tls_verified_exchange(void **state)
{
	qp_conn_opts lo = server_opts(), dopt = client_opts();
	qp_listener *l;
	qp_conn *d, *a;

	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_OK);
	exchange(d, a, 5);
	exchange(a, d, 0);
	exchange(d, a, (size_t) 1 << 20); /* many TLS records */
	exchange(a, d, 70000);
	/* end of file crosses TLS too */
	qp_conn_close(d);
	void *buf;
	size_t len;
	assert_int_equal(qp_conn_recv_bytes(a, &buf, &len, 10), QP_ECLOSED);
	free_pair(d, a, l);

	/* the certificate's DNS name, given explicitly */
	dopt.tls_server_name = "localhost";
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_OK);
	exchange(a, d, 100);
	free_pair(d, a, l);
}

/* The default CA of a dialer comes from QPIPE_TLS_CA: plain qp_dial
 * verifies the listener. */
static void
test_tls_env_ca(void **state)
{
	qp_conn_opts lo = server_opts();
	qp_listener *l;
	qp_conn *d, *a;

	assert_int_equal(
	    qp_listen_opts(&l, "tls+tcp://127.0.0.1:0", &lo), QP_OK);
	setenv("QPIPE_TLS_CA", f("ca.crt"), 1);
	assert_int_equal(qp_dial(&d, qp_listener_url(l), 3000), QP_OK);
	assert_int_equal(qp_listener_accept(l, &a, 3000), QP_OK);
	exchange(d, a, 10);
	qp_conn_free(d);
	qp_conn_free(a);
	setenv("QPIPE_TLS_CA", f("other.crt"), 1);
	assert_int_equal(qp_dial(&d, qp_listener_url(l), 3000), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "other.crt"));
	unsetenv("QPIPE_TLS_CA");
	qp_listener_free(l);
}

static void
test_tls_wrong_ca_fails(void **state)
{
	qp_conn_opts lo = server_opts(), dopt = client_opts();
	qp_listener *l;
	qp_conn *d, *a;

	dopt.tls_ca = f("other.crt");
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "TLS handshake"));
	assert_non_null(strstr(qp_errmsg(), "not correctly signed"));
	assert_non_null(strstr(qp_errmsg(), "other.crt"));

	/* A server whose certificate another CA signed. */
	lo.tls_cert = f("rogue.crt");
	lo.tls_key = f("rogue.key");
	dopt.tls_ca = f("ca.crt");
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "not correctly signed"));

	/* ... accepted only when verification is off, for tests */
	dopt.tls_ca = NULL;
	dopt.tls_insecure_skip_verify = true;
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_OK);
	exchange(d, a, 10);
	free_pair(d, a, l);
}

static void
test_tls_wrong_name_fails(void **state)
{
	qp_conn_opts lo = server_opts(), dopt = client_opts();
	qp_listener *l;
	qp_conn *d, *a;

	dopt.tls_server_name = "db.example.com";
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "db.example.com"));
	assert_non_null(strstr(qp_errmsg(), "does not match"));
}

static void
test_tls_client_certificate(void **state)
{
	qp_conn_opts lo = server_opts(), dopt = client_opts();
	qp_listener *l;
	qp_conn *d, *a;

	lo.tls_ca = f("ca.crt"); /* clients must present a certificate */

	/* required and missing */
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "requires a client certificate"));

	/* one signed by another CA */
	dopt.tls_cert = f("rogue.crt");
	dopt.tls_key = f("rogue.key");
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "client certificate"));

	/* the right one */
	dopt.tls_cert = f("client.crt");
	dopt.tls_key = f("client.key");
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_OK);
	exchange(d, a, 1000);
	exchange(a, d, 1000);
	free_pair(d, a, l);
}

static void
test_tls_with_token(void **state)
{
	qp_conn_opts lo = server_opts(), dopt = client_opts();
	qp_listener *l;
	qp_conn *d, *a;

	lo.no_token = dopt.no_token = false;
	lo.token = "tls and token";
	dopt.token = "tls and token";
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_OK);
	exchange(d, a, 10);
	free_pair(d, a, l);

	dopt.token = "tls and a wrong token";
	assert_int_equal(try_pair(&lo, &dopt, &d, &a, &l), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "refused the token"));
}

/* A plain dialer meets a TLS listener and a TLS dialer a plain one: both
 * fail promptly, never hang. */
static void
test_tls_plain_mismatch(void **state)
{
	qp_conn_opts lo = server_opts(), dopt = client_opts();
	qp_listener *l;
	qp_conn *d = NULL;
	char url[128];

	assert_int_equal(
	    qp_listen_opts(&l, "tls+tcp://127.0.0.1:0", &lo), QP_OK);
	snprintf(url, sizeof(url), "tcp://%s", qp_listener_url(l) + 10);
	int64_t t0 = qpi_now_ms();
	assert_int_not_equal(qp_dial_opts(&d, url, 3000, &dopt), QP_OK);
	assert_true(qpi_now_ms() - t0 < 2500);
	qp_listener_free(l);

	assert_int_equal(
	    qp_listen_opts(&l, "tcp://127.0.0.1:0", &dopt), QP_OK);
	snprintf(url, sizeof(url), "tls+tcp://%s", qp_listener_url(l) + 6);
	t0 = qpi_now_ms();
	assert_int_equal(qp_dial_opts(&d, url, 3000, &dopt), QP_EAUTH);
	assert_non_null(strstr(qp_errmsg(), "TLS handshake"));
	assert_true(qpi_now_ms() - t0 < 2500);
	qp_listener_free(l);
}

/* A raw TCP socket that accepts and never answers: a TLS dial to it ends
 * at its timeout; and a TLS listener with a silent client is freed at
 * once. */
static void
test_tls_silent_peers(void **state)
{
	struct sockaddr_in sa = {
	    .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	qp_conn_opts lo = server_opts(), dopt = client_opts();
	qp_listener *l;
	qp_conn *d = NULL;
	char url[64];
	int lfd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *) &sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 4), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *) &sa, &sl), 0);
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%u",
	    (unsigned) ntohs(sa.sin_port));
	int64_t t0 = qpi_now_ms();
	assert_int_equal(qp_dial_opts(&d, url, 500, &dopt), QP_ETIMEDOUT);
	int64_t took = qpi_now_ms() - t0;
	assert_true(took >= 400 && took < 3000);
	assert_null(d);
	close(lfd);

	assert_int_equal(
	    qp_listen_opts(&l, "tls+tcp://127.0.0.1:0", &lo), QP_OK);
	const char *u = qp_listener_url(l);
	struct sockaddr_in to = {.sin_family = AF_INET,
	    .sin_port = htons((uint16_t) atoi(strrchr(u, ':') + 1)),
	    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int cfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(connect(cfd, (struct sockaddr *) &to, sizeof(to)), 0);
	assert_int_equal(write(cfd, "\x16\x03\x01", 3), 3); /* half a hello */
	usleep(100000);
	t0 = qpi_now_ms();
	qp_listener_free(l);
	assert_true(qpi_now_ms() - t0 < 2000);
	close(cfd);
}

static void
test_tls_bad_files(void **state)
{
	qp_conn_opts lo = server_opts(), dopt = client_opts();
	qp_listener *l;
	qp_conn *d;
	FILE *fp;

	/* a listener without its key, or its certificate */
	lo.tls_key = NULL;
	assert_int_equal(
	    qp_listen_opts(&l, "tls+tcp://127.0.0.1:0", &lo), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "key"));
	lo = server_opts();
	lo.tls_cert = f("missing.crt");
	assert_int_equal(
	    qp_listen_opts(&l, "tls+tcp://127.0.0.1:0", &lo), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "missing.crt"));

	/* a key that is not the certificate's */
	lo = server_opts();
	lo.tls_key = f("client.key");
	assert_int_equal(
	    qp_listen_opts(&l, "tls+tcp://127.0.0.1:0", &lo), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "is not the key"));

	/* files that hold no PEM certificate, or a broken one */
	assert_non_null(fp = fopen(f("junk.crt"), "w"));
	fputs("not a certificate\n", fp);
	fclose(fp);
	assert_non_null(fp = fopen(f("broken.crt"), "w"));
	fputs("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
	    fp);
	fclose(fp);
	lo = server_opts();
	lo.tls_cert = f("junk.crt");
	assert_int_equal(
	    qp_listen_opts(&l, "tls+tcp://127.0.0.1:0", &lo), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "no PEM certificate"));
	lo = server_opts();
	lo.tls_ca = f("broken.crt");
	assert_int_equal(
	    qp_listen_opts(&l, "tls+tcp://127.0.0.1:0", &lo), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "broken.crt"));
	dopt.tls_ca = f("junk.crt");
	assert_int_equal(
	    qp_dial_opts(&d, "tls+tcp://127.0.0.1:1", 0, &dopt), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "junk.crt"));

	/* a client certificate without its key */
	dopt = client_opts();
	dopt.tls_cert = f("client.crt");
	assert_int_equal(
	    qp_dial_opts(&d, "tls+tcp://127.0.0.1:1", 0, &dopt), QP_EINVAL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tls_verified_exchange),
	    cmocka_unit_test(test_tls_env_ca),
	    cmocka_unit_test(test_tls_wrong_ca_fails),
	    cmocka_unit_test(test_tls_wrong_name_fails),
	    cmocka_unit_test(test_tls_client_certificate),
	    cmocka_unit_test(test_tls_with_token),
	    cmocka_unit_test(test_tls_plain_mismatch),
	    cmocka_unit_test(test_tls_silent_peers),
	    cmocka_unit_test(test_tls_bad_files),
	};

	const char *why = "";
	int rv;

	unsetenv("QPIPE_TOKEN");
	unsetenv("QPIPE_TLS_CA");
	if ((rv = prepare(&why)) == QP_ENOTSUP) {
		/* ctest reports 77 as skipped (tests/sec.cmake) */
		printf("test_tls: skipped: %s\n", why);
		return 77;
	}
	if (rv != QP_OK) {
		fprintf(stderr,
		    "test_tls: cannot make the certificates in %s "
		    "(tests/tls_certs.sh failed)\n",
		    tmpdir);
		return 1;
	}
	if (getenv("QP_TEST_FILTER") != NULL) {
		cmocka_set_test_filter(getenv("QP_TEST_FILTER"));
	}
	return cmocka_run_group_tests(tests, NULL, teardown);
}
