/* test_errors.c - proto/errors.c: the names and texts of errors.def and the
 * per-thread message the codec records. Linked against the codec alone
 * (qpproto and msgpack-c, tests/CMakeLists.txt), so it also fails to build
 * if proto/ ever calls into lib/ again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "wire.h"

static void
test_errors_text(void **state)
{
	assert_string_equal(qpi_errtext(QP_OK), "success");
	assert_string_equal(qpi_errtext(QP_EEMPTY), "queue is empty");
	assert_string_equal(
	    qpi_errtext(QP_ENOTSUP), "operation not supported");
	assert_string_equal(qpi_errtext(-1), "unknown error");
	assert_string_equal(qpi_errtext(100000), "unknown error");
}

static void
test_errors_name(void **state)
{
	assert_string_equal(qpi_errname(QP_OK), "OK");
	assert_string_equal(qpi_errname(QP_EEMPTY), "EEMPTY");
	assert_string_equal(qpi_errname(QP_ECONNRESET), "ECONNRESET");
	assert_null(qpi_errname(-1));
	assert_null(qpi_errname(100000));
	/* every code of the list has its own name and its text */
#define QP_ERR(name, num, text)                       \
	assert_string_equal(qpi_errname(num), #name); \
	assert_string_equal(qpi_errtext(num), text);  \
	assert_int_equal(QP_##name, num);
#include "qpipe_errors.def"
#undef QP_ERR
}

static void
test_errors_codec_message(void **state)
{
	static const uint8_t unused[] = {0xc1};
	static const uint8_t trailing[] = {0x01, 0x02};

	qpi_err_clear();
	assert_string_equal(qpi_errmsg(), "");
	assert_int_equal(
	    qpi_wire_check_value(unused, sizeof(unused)), QP_EINVAL);
	assert_non_null(strstr(qpi_errmsg(), "0xc1"));
	assert_int_equal(
	    qpi_wire_check_value(trailing, sizeof(trailing)), QP_EINVAL);
	assert_non_null(strstr(qpi_errmsg(), "1 trailing bytes"));
	assert_int_equal(qpi_wire_check_value(trailing, 1), QP_OK);
	qpi_err_clear();
	assert_string_equal(qpi_errmsg(), "");
}

static void
test_errors_message_cut(void **state)
{
	char big[2000];

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(qpi_err(QP_ETOOBIG, "%s!", big), QP_ETOOBIG);
	assert_int_equal(strlen(qpi_errmsg()), 511);
	assert_int_equal(qpi_errmsg()[0], 'x');
}

/* A new thread starts with no message, and its own does not reach ours. */
static void *
other_thread(void *arg)
{
	int *ok = arg;

	*ok = qpi_errmsg()[0] == '\0'
	    && qpi_err(QP_EPROTO, "theirs") == QP_EPROTO
	    && strcmp(qpi_errmsg(), "theirs") == 0;
	return NULL;
}

static void
test_errors_message_per_thread(void **state)
{
	pthread_t t;
	int ok = 0;

	qpi_err(QP_EINVAL, "mine %d", 1);
	assert_int_equal(pthread_create(&t, NULL, other_thread, &ok), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_true(ok);
	assert_string_equal(qpi_errmsg(), "mine 1");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_errors_text),
	    cmocka_unit_test(test_errors_name),
	    cmocka_unit_test(test_errors_codec_message),
	    cmocka_unit_test(test_errors_message_cut),
	    cmocka_unit_test(test_errors_message_per_thread),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
