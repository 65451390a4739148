/* test_error.c - error texts, durations and names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "qpi.h"

static void
test_error_strerror(void **state)
{
	assert_string_equal(qp_strerror(QP_OK), "success");
	assert_string_equal(qp_strerror(QP_EEMPTY), "queue is empty");
	assert_string_equal(qp_strerror(QP_EFULL), "queue is full");
	assert_string_equal(qp_strerror(-77), "unknown error");
	assert_string_equal(qp_strerror(100000), "unknown error");
}

static void
test_error_errmsg(void **state)
{
	assert_int_equal(qpi_err(QP_EINVAL, "bad %d", 7), QP_EINVAL);
	assert_string_equal(qp_errmsg(), "bad 7");
	qpi_err_clear();
	assert_string_equal(qp_errmsg(), "");
}

static void
test_error_duration(void **state)
{
	assert_int_equal(qpi_duration_check(QP_FOREVER), QP_OK);
	assert_int_equal(qpi_duration_check(QP_NOWAIT), QP_OK);
	assert_int_equal(qpi_duration_check(250), QP_OK);
	assert_int_equal(qpi_duration_check(-2), QP_EINVAL);
	assert_true(qpi_deadline_ns(QP_FOREVER) == INT64_MAX);
	assert_true(qpi_deadline_ns(INT64_MAX) == INT64_MAX);
	int64_t d = qpi_deadline_ns(1000);
	int64_t left = qpi_remaining_ns(d);
	assert_true(left > 900000000 && left <= 1000000000);
	assert_true(qpi_remaining_ns(qpi_now_ns() - 5) == 0);
}

static void
test_error_names(void **state)
{
	assert_true(qpi_name_valid("jobs", 4));
	assert_true(qpi_name_valid("a.b-c_D9", 8));
	assert_true(qpi_name_valid("...", 3));
	assert_false(qpi_name_valid("", 0));
	assert_false(qpi_name_valid(".", 1));
	assert_false(qpi_name_valid("..", 2));
	assert_false(qpi_name_valid("a/b", 3));
	assert_false(qpi_name_valid("a\0b", 3));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_error_strerror),
	    cmocka_unit_test(test_error_errmsg),
	    cmocka_unit_test(test_error_duration),
	    cmocka_unit_test(test_error_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
