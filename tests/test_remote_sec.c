/*
 * test_remote_sec.c - authentication and TLS between the remote client and
 * the real qpiped: the right token works (queues, list, pipes, unlink,
 * $QPIPE_TOKEN), a wrong or missing token is QP_EAUTH with a message that
 * names the cause, a recorded handshake replayed on another connection
 * fails, each refusal is logged once, a client authenticates again after
 * the server restarts (and stops trusting one that comes back without the
 * token), and queues over tls+tcp:// with the server's
 * certificate verified (a wrong CA fails clearly; --tls-ca asks for client
 * certificates). Certificates are made by openssl (tests/tls_certs.sh) in
 * a fresh temporary directory. Each scenario runs in a child process (nng
 * is not fork-safe, and the server is spawned by fork and exec).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "auth.h"
#include "qpi.h"
#include "wire.h"
/* The server helpers this file does not use are fine. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "qps_testsrv.h"
#pragma GCC diagnostic pop

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#define TOKEN "s3cret token of the tests"

#define CHECK_MSG(needle)                                                   \
	do {                                                                \
		if (strstr(qp_errmsg(), (needle)) == NULL) {                \
			fprintf(stderr, "%s:%d: message '%s' lacks '%s'\n", \
			    __FILE__, __LINE__, qp_errmsg(), (needle));     \
			tsrv_kill_all();                                    \
			_exit(92);                                          \
		}                                                           \
	} while (0)

/* The directory of the token file and the certificates. */
static char dir[64];
static bool have_certs;

/* A path in dir. */
static const char *
path(const char *name)
{
	static char buf[64][128]; /* more than a scenario holds at once */
	static int i;

	i = (i + 1) % 64;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
	return buf[i];
}

/* Adds "--flag=value" to the server's arguments. */
static void
srv_flag(tsrv *s, const char *flag, const char *value)
{
	CHECK(s->nextra < 8);
	CHECK((size_t) snprintf(s->extra[s->nextra], sizeof(s->extra[0]),
	          "%s%s%s", flag, value != NULL ? "=" : "",
	          value != NULL ? value : "")
	    < sizeof(s->extra[0]));
	s->nextra++;
}

/* A server on listen (a URL, port 0) with the token file, if tok. */
static void
srv_start(tsrv *s, const char *listen, bool tok)
{
	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "/tmp/qpsrv.XXXXXX");
	CHECK(mkdtemp(s->dir) != NULL);
	snprintf(s->listen, sizeof(s->listen), "%s", listen);
	if (tok) {
		srv_flag(s, "--auth-token-file", path("token"));
	}
}

/* How many lines of the server's log hold needle. */
static int
log_count(const tsrv *s, const char *needle)
{
	char p[128], line[1024];
	int n = 0;
	FILE *f;

	snprintf(p, sizeof(p), "%s/log", s->dir);
	if ((f = fopen(p, "r")) == NULL) {
		return -1;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		n += strstr(line, needle) != NULL;
	}
	fclose(f);
	return n;
}

/* The queue address of name on server s. */
static const char *
qaddr(const tsrv *s, const char *name)
{
	static char buf[2][400];
	static int i;

	i = (i + 1) % 2;
	snprintf(
	    buf[i], sizeof(buf[i]), "%s/%s%d", s->url, name, (int) getpid());
	return buf[i];
}

/* Puts then gets one item through a queue opened with conn. */
static void
roundtrip(const tsrv *s, const qp_conn_opts *conn, const char *name)
{
	qp_queue_opts o = {.flags = QP_OPEN_CREATE, .conn = conn};
	qp_queue *q;
	void *buf;
	size_t len;

	CHECK_EQ(qp_queue_open(&q, qaddr(s, name), &o), QP_OK);
	CHECK_EQ(qp_queue_put(q, "hello", 5, QP_FOREVER), QP_OK);
	CHECK_EQ(qp_queue_get(q, &buf, &len, 5000), QP_OK);
	CHECK(len == 5 && memcmp(buf, "hello", 5) == 0);
	qp_free(buf);
	qp_queue_free(q);
	CHECK_EQ(qp_queue_unlink_opts(qaddr(s, name), conn), QP_OK);
}

/* ---- the right token ---- */

static void
right_token_body(void)
{
	qp_conn_opts file = {.token_file = path("token")};
	qp_conn_opts given = {.token = TOKEN};
	qp_queue_info *list;
	qp_conn *a, *b;
	tsrv s;
	size_t n;
	void *buf;
	size_t len;

	unsetenv("QPIPE_TOKEN");
	srv_start(&s, "tcp://127.0.0.1:0", true);
	CHECK_EQ(tsrv_spawn(&s), 0);
	roundtrip(&s, &file, "rt");
	roundtrip(&s, &given, "rg");

	/* $QPIPE_TOKEN stands in when no options are given. */
	setenv("QPIPE_TOKEN", TOKEN, 1);
	roundtrip(&s, NULL, "re");
	CHECK_EQ(qp_server_list(s.url, &list, &n), QP_OK);
	qp_free(list);
	unsetenv("QPIPE_TOKEN");

	CHECK_EQ(qp_server_list_opts(s.url, &given, &list, &n), QP_OK);
	qp_free(list);

	/* A pipe through the server. */
	CHECK_EQ(
	    qp_pipe_open_opts(&a, qaddr(&s, "p"), 0, true, &given), QP_OK);
	CHECK_EQ(qp_pipe_open_opts(&b, qaddr(&s, "p"), 1, true, &file), QP_OK);
	CHECK_EQ(qp_conn_send_bytes(b, "ping", 0, 4), QP_OK);
	CHECK_EQ(qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX), QP_OK);
	CHECK(len == 4 && memcmp(buf, "ping", 4) == 0);
	qp_free(buf);
	qp_conn_free(a);
	qp_conn_free(b);

	CHECK_EQ(log_count(&s, "authentication refused"), 0);
	CHECK_EQ(log_count(&s, "not authenticated"), 0);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_sec_right_token(void **state)
{
	(void) state;
	tsrv_scenario0(right_token_body);
}

/* ---- wrong and missing tokens ---- */

static void
wrong_token_body(void)
{
	qp_conn_opts wrong = {.token = "not the token"};
	qp_conn_opts none = {.no_token = true};
	qp_conn_opts right = {.token = TOKEN};
	qp_queue_opts o = {.flags = QP_OPEN_CREATE, .conn = &wrong};
	qp_queue_info *list;
	qp_queue *q;
	qp_conn *c;
	tsrv s, open_srv;
	size_t n;

	/* The client's token is in the environment: no_token wins. */
	setenv("QPIPE_TOKEN", TOKEN, 1);
	srv_start(&s, "tcp://127.0.0.1:0", true);
	CHECK_EQ(tsrv_spawn(&s), 0);

	CHECK_EQ(qp_queue_open(&q, qaddr(&s, "w"), &o), QP_EAUTH);
	CHECK_MSG("refused our token");
	CHECK_MSG("wrong token");
	CHECK_EQ(qp_server_list_opts(s.url, &wrong, &list, &n), QP_EAUTH);
	CHECK_EQ(qp_pipe_open_opts(&c, qaddr(&s, "wp"), -1, true, &wrong),
	    QP_EAUTH);
	CHECK_EQ(qp_queue_unlink_opts(qaddr(&s, "w"), &wrong), QP_EAUTH);
	/* Each refused attempt, one line. */
	CHECK_EQ(log_count(&s, "authentication refused"), 4);

	o.conn = &none;
	CHECK_EQ(qp_queue_open(&q, qaddr(&s, "w"), &o), QP_EAUTH);
	CHECK_MSG("requires a token and none is set");
	unsetenv("QPIPE_TOKEN");
	CHECK_EQ(qp_server_list(s.url, &list, &n), QP_EAUTH);
	CHECK_MSG("requires a token");
	CHECK_EQ(qp_pipe_open(&c, qaddr(&s, "wp"), -1, true), QP_EAUTH);

	/* Nothing was created by the refused clients. */
	CHECK_EQ(qp_server_list_opts(s.url, &right, &list, &n), QP_OK);
	{
		char wname[64];
		snprintf(wname, sizeof(wname), "w%d", (int) getpid());
		for (size_t i = 0; i < n; i++) {
			CHECK(strcmp(list[i].name, wname) != 0);
		}
	}
	qp_free(list);
	CHECK_EQ(log_count(&s, "authentication refused"), 4);

	/* A client holding a token refuses a server without one: that
	 * server cannot prove it holds the token. */
	srv_start(&open_srv, "tcp://127.0.0.1:0", false);
	CHECK_EQ(tsrv_spawn(&open_srv), 0);
	o.conn = &right;
	CHECK_EQ(qp_queue_open(&q, qaddr(&open_srv, "w"), &o), QP_EAUTH);
	CHECK_MSG("does not ask for a token");
	CHECK(tsrv_stop(&open_srv));
	CHECK(tsrv_stop(&s));
}

static void
test_remote_sec_wrong_token(void **state)
{
	(void) state;
	tsrv_scenario0(wrong_token_body);
}

/* ---- a recorded handshake, replayed ---- */

/* Sends a frame on sk, decodes the reply into *rep (fields point into
 * *mp, which the caller frees). */
static void
raw_call(
    nng_socket sk, const qpi_wire_buf *frame, qpi_wire_rep *rep, nng_msg **mp)
{
	nng_msg *m;

	CHECK_EQ(nng_msg_alloc(&m, frame->len), 0);
	memcpy(nng_msg_body(m), frame->data, frame->len);
	CHECK_EQ(nng_sendmsg(sk, m, 0), 0);
	CHECK_EQ(nng_recvmsg(sk, &m, 0), 0);
	memset(rep, 0, sizeof(*rep));
	CHECK_EQ(
	    qpi_wire_decode_rep(nng_msg_body(m), nng_msg_len(m), NULL, rep),
	    QP_OK);
	*mp = m;
}

static void
raw_open(nng_socket *sk, const char *url)
{
	CHECK_EQ(nng_req0_open(sk), 0);
	nng_socket_set_ms(*sk, NNG_OPT_RECVTIMEO, 5000);
	CHECK_EQ(nng_dial(*sk, url, NULL, 0), 0);
}

/* Encodes a request of op with no fields but the given ones. */
static void
raw_frame(qpi_wire_buf *b, const qpi_wire_req *r)
{
	memset(b, 0, sizeof(*b));
	CHECK_EQ(qpi_wire_encode_req(r, b), QP_OK);
}

/* hello on sk: the status and, if 0, the nonce. */
static int
raw_hello(nng_socket sk, uint8_t nonce[QPI_AUTH_NONCE_LEN], bool *required)
{
	qpi_wire_req r;
	qpi_wire_rep rep;
	qpi_wire_buf b;
	nng_msg *m;
	int st;

	memset(&r, 0, sizeof(r));
	r.op = QPI_OP_HELLO;
	r.req_id = 1;
	snprintf(r.client_name, sizeof(r.client_name), "replayer");
	raw_frame(&b, &r);
	raw_call(sk, &b, &rep, &m);
	st = rep.status;
	memcpy(nonce, rep.nonce, QPI_AUTH_NONCE_LEN);
	*required = rep.auth_required;
	nng_msg_free(m);
	qpi_wire_buf_free(&b);
	return st;
}

/* Sends the frame b (an auth) on sk: its status, and whether the reply
 * carried the server's proof. */
static int
raw_send(nng_socket sk, const qpi_wire_buf *b, bool *has_mac)
{
	qpi_wire_rep rep;
	nng_msg *m;
	int st;

	raw_call(sk, b, &rep, &m);
	st = rep.status;
	if (has_mac != NULL) {
		*has_mac = rep.has_mac;
	}
	nng_msg_free(m);
	return st;
}

/* A qsize of queue name on sk: its status. */
static int
raw_qsize(nng_socket sk, const char *name)
{
	qpi_wire_req r;
	qpi_wire_buf b;
	int st;

	memset(&r, 0, sizeof(r));
	r.op = QPI_OP_QSIZE;
	r.req_id = 7;
	snprintf(r.name, sizeof(r.name), "%s", name);
	raw_frame(&b, &r);
	st = raw_send(sk, &b, NULL);
	qpi_wire_buf_free(&b);
	return st;
}

static void
replay_body(void)
{
	uint8_t nonce[QPI_AUTH_NONCE_LEN], nonce2[QPI_AUTH_NONCE_LEN];
	char qname[64];
	qpi_wire_req r;
	qpi_wire_buf auth;
	nng_socket s1, s2, s3;
	bool required, has_mac;
	tsrv s;

	unsetenv("QPIPE_TOKEN");
	srv_start(&s, "tcp://127.0.0.1:0", true);
	CHECK_EQ(tsrv_spawn(&s), 0);
	snprintf(qname, sizeof(qname), "replay%d", (int) getpid());
	{
		/* The queue exists: a refused qsize is EAUTH, not ENOENT. */
		qp_conn_opts right = {.token = TOKEN};
		qp_queue_opts o = {.flags = QP_OPEN_CREATE, .conn = &right};
		qp_queue *q;
		CHECK_EQ(qp_queue_open(&q, qaddr(&s, "replay"), &o), QP_OK);
		qp_queue_free(q);
	}

	/* A client that holds the token: hello, auth (recorded). */
	raw_open(&s1, s.url);
	CHECK_EQ(raw_qsize(s1, qname), QP_EAUTH); /* before auth */
	CHECK_EQ(raw_hello(s1, nonce, &required), QP_OK);
	CHECK(required);
	memset(&r, 0, sizeof(r));
	r.op = QPI_OP_AUTH;
	r.req_id = 2;
	CHECK_EQ(
	    qpi_hmac_sha256(TOKEN, strlen(TOKEN), nonce, sizeof(nonce), r.mac),
	    QP_OK);
	r.has_nonce = true;
	CHECK_EQ(qpi_random(r.nonce, sizeof(r.nonce)), QP_OK);
	raw_frame(&auth, &r);
	CHECK_EQ(raw_send(s1, &auth, &has_mac), QP_OK);
	CHECK(has_mac);
	CHECK_EQ(raw_qsize(s1, qname), QP_OK);
	/* The same auth again on its own connection: the nonce is used. */
	CHECK_EQ(raw_send(s1, &auth, NULL), QP_EAUTH);
	CHECK_EQ(raw_qsize(s1, qname), QP_OK); /* still authenticated */

	/* The recorded auth replayed on a new connection, after a hello
	 * (another nonce) and without one. */
	raw_open(&s2, s.url);
	CHECK_EQ(raw_hello(s2, nonce2, &required), QP_OK);
	CHECK(memcmp(nonce, nonce2, sizeof(nonce)) != 0);
	CHECK_EQ(raw_send(s2, &auth, NULL), QP_EAUTH);
	CHECK_EQ(raw_qsize(s2, qname), QP_EAUTH);
	CHECK_EQ(raw_qsize(s2, qname), QP_EAUTH);
	raw_open(&s3, s.url);
	CHECK_EQ(raw_send(s3, &auth, NULL), QP_EAUTH);
	CHECK_EQ(raw_qsize(s3, qname), QP_EAUTH);

	/* Three refused auths, three lines; requests refused before auth:
	 * one line per connection (s1, s2, s3). */
	CHECK_EQ(log_count(&s, "authentication refused"), 3);
	CHECK_EQ(log_count(&s, "without a fresh hello"), 2);
	CHECK_EQ(log_count(&s, "wrong token"), 1);
	CHECK_EQ(log_count(&s, "not authenticated"), 3);

	qpi_wire_buf_free(&auth);
	nng_close(s1);
	nng_close(s2);
	nng_close(s3);
	{
		qp_conn_opts right = {.token = TOKEN};
		CHECK_EQ(
		    qp_queue_unlink_opts(qaddr(&s, "replay"), &right), QP_OK);
	}
	CHECK(tsrv_stop(&s));
}

static void
test_remote_sec_replay_fails(void **state)
{
	(void) state;
	tsrv_scenario0(replay_body);
}

/* ---- authenticating again after the server restarts ---- */

static void
restart_body(void)
{
	qp_conn_opts right = {.token = TOKEN};
	qp_queue_opts o = {.flags = QP_OPEN_CREATE, .conn = &right};
	qp_queue *q;
	void *buf;
	size_t len, n;
	tsrv s;

	unsetenv("QPIPE_TOKEN");
	srv_start(&s, "tcp://127.0.0.1:0", true);
	CHECK_EQ(tsrv_spawn(&s), 0);
	CHECK_EQ(qp_queue_open(&q, qaddr(&s, "rs"), &o), QP_OK);
	CHECK_EQ(qp_queue_put(q, "one", 3, QP_FOREVER), QP_OK);
	tsrv_kill(&s, SIGKILL);
	CHECK_EQ(tsrv_restart(&s), 0);
	/* The client authenticates each new connection before it sends a
	 * request on it: the put is applied once, and never refused. */
	CHECK_EQ(qp_queue_put(q, "two", 3, QP_FOREVER), QP_OK);
	CHECK_EQ(log_count(&s, "put refused: not authenticated"), 0);
	CHECK_EQ(qp_queue_qsize(q, &n), QP_OK);
	CHECK_EQ(n, 2);
	CHECK_EQ(qp_queue_get(q, &buf, &len, 5000), QP_OK);
	CHECK(len == 3 && memcmp(buf, "one", 3) == 0);
	qp_free(buf);
	CHECK_EQ(qp_queue_get(q, &buf, &len, 5000), QP_OK);
	CHECK(len == 3 && memcmp(buf, "two", 3) == 0);
	qp_free(buf);
	CHECK_EQ(log_count(&s, "authentication refused"), 0);

	/* The server comes back without a token: it cannot prove it holds
	 * ours, so the client does not trust its answers. */
	tsrv_kill(&s, SIGKILL);
	s.nextra = 0;
	CHECK_EQ(tsrv_restart(&s), 0);
	CHECK_EQ(qp_queue_put(q, "three", 5, QP_FOREVER), QP_EAUTH);
	CHECK_MSG("does not ask for a token");
	qp_queue_free(q);
	CHECK_EQ(qp_queue_unlink(qaddr(&s, "rs")), QP_OK);
	CHECK(tsrv_stop(&s));
}

static void
test_remote_sec_reauth_after_restart(void **state)
{
	(void) state;
	tsrv_scenario0(restart_body);
}

/* ---- TLS ---- */

static void
tls_srv(tsrv *s, bool tok, bool client_ca)
{
	srv_start(s, "tls+tcp://127.0.0.1:0", tok);
	srv_flag(s, "--tls-cert", path("server.crt"));
	srv_flag(s, "--tls-key", path("server.key"));
	if (client_ca) {
		srv_flag(s, "--tls-ca", path("ca.crt"));
	}
	CHECK_EQ(tsrv_spawn(s), 0);
	CHECK(strncmp(s->url, "tls+tcp://127.0.0.1:", 20) == 0);
}

static void
tls_body(void)
{
	qp_conn_opts ca = {.tls_ca = path("ca.crt"), .no_token = true};
	qp_conn_opts other = {.tls_ca = path("other.crt"), .no_token = true};
	qp_conn_opts both = {.tls_ca = path("ca.crt"), .token = TOKEN};
	qp_conn_opts name
	    = {.tls_ca = path("ca.crt"), .tls_server_name = "localhost"};
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	qp_queue_info *list;
	qp_queue *q;
	tsrv s, st;
	size_t n;

	unsetenv("QPIPE_TOKEN");
	unsetenv("QPIPE_TLS_CA");
	tls_srv(&s, false, false);
	roundtrip(&s, &ca, "tls");
	roundtrip(&s, &name, "tlsn");
	CHECK_EQ(qp_server_list_opts(s.url, &ca, &list, &n), QP_OK);
	qp_free(list);

	/* The server's certificate is not signed by the CA we trust. */
	o.conn = &other;
	CHECK_EQ(qp_queue_open(&q, qaddr(&s, "tls"), &o), QP_EAUTH);
	CHECK_MSG("TLS handshake with");
	CHECK_MSG("certificate");
	/* The right CA, but the certificate is not for that name. */
	qp_conn_opts badname = {.tls_ca = path("ca.crt"),
	    .tls_server_name = "not-this-server.example",
	    .no_token = true};
	o.conn = &badname;
	CHECK_EQ(qp_queue_open(&q, qaddr(&s, "tls"), &o), QP_EAUTH);
	CHECK_MSG("not-this-server.example");
	/* Without options: the system's bundle does not know our CA... */
	if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0) {
		o.conn = NULL;
		CHECK_EQ(qp_queue_open(&q, qaddr(&s, "tls"), &o), QP_EAUTH);
		CHECK_MSG("TLS handshake with");
	}
	/* ...and $QPIPE_TLS_CA names it. */
	setenv("QPIPE_TLS_CA", path("ca.crt"), 1);
	roundtrip(&s, NULL, "tlse");
	unsetenv("QPIPE_TLS_CA");
	CHECK(tsrv_stop(&s));

	/* Token and TLS together; the token is checked inside TLS. */
	tls_srv(&s, true, false);
	roundtrip(&s, &both, "tlst");
	o.conn = &ca;
	CHECK_EQ(qp_queue_open(&q, qaddr(&s, "tlst"), &o), QP_EAUTH);
	CHECK_MSG("requires a token");
	CHECK(tsrv_stop(&s));

	/* --tls-ca: clients must present a certificate signed by it. */
	tls_srv(&st, false, true);
	o.conn = &ca;
	CHECK_EQ(qp_queue_open(&q, qaddr(&st, "tlsc"), &o), QP_EAUTH);
	CHECK_MSG("TLS handshake with");
	qp_conn_opts cert = {.tls_ca = path("ca.crt"),
	    .tls_cert = path("client.crt"),
	    .tls_key = path("client.key"),
	    .no_token = true};
	roundtrip(&st, &cert, "tlsc");
	CHECK(tsrv_stop(&st));
}

static void
test_remote_sec_tls(void **state)
{
	(void) state;
	if (!have_certs) {
		skip();
	}
	tsrv_scenario0(tls_body);
}

static int
teardown(void **state)
{
	char cmd[128];

	(void) state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_remote_sec_right_token),
	    cmocka_unit_test(test_remote_sec_wrong_token),
	    cmocka_unit_test(test_remote_sec_replay_fails),
	    cmocka_unit_test(test_remote_sec_reauth_after_restart),
	    cmocka_unit_test(test_remote_sec_tls),
	};
	const char *src = getenv("QP_SOURCE_DIR");
	char cmd[512];
	FILE *f;

	signal(SIGPIPE, SIG_IGN);
	unsetenv("QPIPE_TOKEN");
	unsetenv("QPIPE_TLS_CA");
	snprintf(dir, sizeof(dir), "/tmp/qpsec.XXXXXX");
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	if ((f = fopen(path("token"), "w")) == NULL) {
		perror("token file");
		return 1;
	}
	fprintf(f, "%s\n", TOKEN);
	fclose(f);
	chmod(path("token"), 0600);
	/* The certificates (openssl); without it the TLS test is skipped. */
	if (src != NULL && system("command -v openssl >/dev/null 2>&1") == 0) {
		snprintf(cmd, sizeof(cmd), "sh '%s/tests/tls_certs.sh' '%s'",
		    src, dir);
		have_certs = system(cmd) == 0;
		if (!have_certs) {
			fprintf(
			    stderr, "tests/tls_certs.sh failed in %s\n", dir);
			return 1;
		}
	} else {
		printf("test_remote_sec: no openssl (or no QP_SOURCE_DIR): "
		       "the TLS test is skipped\n");
	}
	if (getenv("QP_TEST_FILTER") != NULL) {
		cmocka_set_test_filter(getenv("QP_TEST_FILTER"));
	}
	return cmocka_run_group_tests(tests, NULL, teardown);
}
