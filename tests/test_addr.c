/* test_addr.c - the address parser: every form, and malformed ones. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "qpi.h"

static void
test_addr_shm_forms(void **state)
{
	qpi_addr a;

	assert_int_equal(qpi_addr_parse("jobs", QPI_ADDR_NAMED, &a), QP_OK);
	assert_int_equal(a.kind, QPI_ADDR_SHM);
	assert_string_equal(a.name, "jobs");
	assert_int_equal(
	    qpi_addr_parse("shm://a.b_c-9", QPI_ADDR_NAMED, &a), QP_OK);
	assert_int_equal(a.kind, QPI_ADDR_SHM);
	assert_string_equal(a.name, "a.b_c-9");
}

static void
test_addr_tcp_forms(void **state)
{
	qpi_addr a;

	assert_int_equal(
	    qpi_addr_parse("tcp://q1:7451/jobs", QPI_ADDR_NAMED, &a), QP_OK);
	assert_int_equal(a.kind, QPI_ADDR_TCP);
	assert_string_equal(a.host, "q1");
	assert_int_equal(a.port, 7451);
	assert_string_equal(a.name, "jobs");
	assert_string_equal(a.url, "tcp://q1:7451");

	assert_int_equal(
	    qpi_addr_parse("tcp://10.0.0.1/jobs", QPI_ADDR_NAMED, &a), QP_OK);
	assert_int_equal(a.port, QP_DEFAULT_PORT);
	assert_string_equal(a.url, "tcp://10.0.0.1:7450");

	assert_int_equal(
	    qpi_addr_parse("tcp://[::1]:7450/jobs", QPI_ADDR_NAMED, &a),
	    QP_OK);
	assert_string_equal(a.host, "::1");
	assert_string_equal(a.url, "tcp://[::1]:7450");
	assert_string_equal(a.name, "jobs");

	assert_int_equal(
	    qpi_addr_parse("tcp://[::1]/x", QPI_ADDR_NAMED, &a), QP_OK);
	assert_int_equal(a.port, 7450);

	assert_int_equal(
	    qpi_addr_parse("tls+tcp://h.example:9/jobs", QPI_ADDR_NAMED, &a),
	    QP_OK);
	assert_int_equal(a.kind, QPI_ADDR_TLS);
	assert_string_equal(a.url, "tls+tcp://h.example:9");
}

static void
test_addr_ipc_forms(void **state)
{
	qpi_addr a;

	assert_int_equal(qpi_addr_parse("ipc:///run/qp/qpiped.sock/jobs",
	                     QPI_ADDR_NAMED, &a),
	    QP_OK);
	assert_int_equal(a.kind, QPI_ADDR_IPC);
	assert_string_equal(a.path, "/run/qp/qpiped.sock");
	assert_string_equal(a.name, "jobs");
	assert_string_equal(a.url, "ipc:///run/qp/qpiped.sock");

	assert_int_equal(
	    qpi_addr_parse("ipc:///tmp/s.sock", QPI_ADDR_SERVER, &a), QP_OK);
	assert_string_equal(a.path, "/tmp/s.sock");
	assert_string_equal(a.name, "");
}

static void
test_addr_server_forms(void **state)
{
	qpi_addr a;

	assert_int_equal(
	    qpi_addr_parse("tcp://127.0.0.1:7450", QPI_ADDR_SERVER, &a),
	    QP_OK);
	assert_string_equal(a.url, "tcp://127.0.0.1:7450");
	assert_int_equal(
	    qpi_addr_parse("tcp://127.0.0.1:7450/", QPI_ADDR_SERVER, &a),
	    QP_OK);
	assert_int_equal(qpi_addr_parse("tcp://127.0.0.1:0",
	                     QPI_ADDR_SERVER | QPI_ADDR_PORT0, &a),
	    QP_OK);
	assert_int_equal(a.port, 0);
	assert_int_equal(
	    qpi_addr_parse("tcp://127.0.0.1:0", QPI_ADDR_SERVER, &a),
	    QP_EINVAL);
	assert_int_equal(
	    qpi_addr_parse("tcp://h:1/jobs", QPI_ADDR_SERVER, &a), QP_EINVAL);
	assert_int_equal(
	    qpi_addr_parse("jobs", QPI_ADDR_SERVER, &a), QP_EINVAL);
}

static void
test_addr_name_limits(void **state)
{
	qpi_addr a;
	char name[200];

	memset(name, 'x', sizeof(name));
	name[128] = '\0';
	assert_int_equal(qpi_addr_parse(name, QPI_ADDR_NAMED, &a), QP_OK);
	name[128] = 'x';
	name[129] = '\0';
	assert_int_equal(qpi_addr_parse(name, QPI_ADDR_NAMED, &a), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "at most 128"));
}

static void
test_addr_malformed(void **state)
{
	static const char *bad[] = {
	    "",
	    "shm://",
	    "a b",
	    "jobs/x",
	    "..",
	    ".",
	    "shm://..",
	    "tcp://",
	    "tcp:///jobs",
	    "tcp://h:/jobs",
	    "tcp://h:x/jobs",
	    "tcp://h:70000/jobs",
	    "tcp://h:0/jobs",
	    "tcp://h:7450",
	    "tcp://h:7450/",
	    "tcp://[::1/jobs",
	    "tcp://[zz]:1/jobs",
	    "tcp://h h/jobs",
	    "tcp://h:1/jo bs",
	    "http://h/jobs",
	    "ipc://",
	    "ipc:///jobs",
	    "ipc://sock/",
	    "tls+tcp://h:1/",
	    "udp://h:1/x",
	    "jöbs",
	    "tcp://h:99999999999999999999/x",
	};
	qpi_addr a;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		qpi_err_clear();
		int rv = qpi_addr_parse(bad[i], QPI_ADDR_NAMED, &a);
		if (rv != QP_EINVAL) {
			fail_msg("'%s' was accepted", bad[i]);
		}
		assert_true(strlen(qp_errmsg()) > 0);
	}
	assert_int_equal(qpi_addr_parse(NULL, QPI_ADDR_NAMED, &a), QP_EINVAL);
	assert_int_equal(qp_addr_check("tcp://h/jobs"), QP_OK);
	assert_int_equal(qp_addr_check("tcp://h/"), QP_EINVAL);
}

static void
test_addr_long_path(void **state)
{
	qpi_addr a;
	char s[400];

	strcpy(s, "ipc://");
	memset(s + 6, 'p', 200);
	strcpy(s + 206, "/jobs");
	assert_int_equal(qpi_addr_parse(s, QPI_ADDR_NAMED, &a), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "Unix socket"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_addr_shm_forms),
	    cmocka_unit_test(test_addr_tcp_forms),
	    cmocka_unit_test(test_addr_ipc_forms),
	    cmocka_unit_test(test_addr_server_forms),
	    cmocka_unit_test(test_addr_name_limits),
	    cmocka_unit_test(test_addr_malformed),
	    cmocka_unit_test(test_addr_long_path),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
