/* test_wire.c - the wire codec: msgpack values, frames, JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qpi.h"
#include "wire.h"

/* ---- single values ---- */

static void
test_wire_check_value_accepts(void **state)
{
	static const struct {
		const char *what;
		const char *bytes;
		size_t len;
	} ok[] = {
	    {"nil", "\xc0", 1},
	    {"true", "\xc3", 1},
	    {"fixint", "\x05", 1},
	    {"negative fixint", "\xff", 1},
	    {"int64", "\xd3\x80\x00\x00\x00\x00\x00\x00\x00", 9},
	    {"float64", "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", 9},
	    {"fixstr",
	        "\xa3"
	        "abc",
	        4},
	    {"empty bin", "\xc4\x00", 2},
	    {"bin8",
	        "\xc4\x02"
	        "hi",
	        4},
	    {"fixarray",
	        "\x92\x01\xa1"
	        "x",
	        4},
	    {"fixmap",
	        "\x81\xa1"
	        "k\xc0",
	        4},
	    {"fixext1", "\xd4\x01\x02", 3},
	    {"timestamp32", "\xd6\xff\x00\x00\x00\x01", 6},
	    {"ext8",
	        "\xc7\x02\x05"
	        "ab",
	        5},
	    {"array16 of 1", "\xdc\x00\x01\xc0", 4},
	};

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		int rv = qpi_wire_check_value(ok[i].bytes, ok[i].len);
		if (rv != QP_OK) {
			fail_msg("%s: %s", ok[i].what, qp_errmsg());
		}
	}
}

static void
test_wire_check_value_rejects(void **state)
{
	static const struct {
		const char *what;
		const char *bytes;
		size_t len;
		const char *msg; /* a piece of qp_errmsg() */
	} bad[] = {
	    {"empty", "", 0, "empty"},
	    {"never-used byte", "\xc1", 1, "0xc1"},
	    {"trailing byte", "\xc0\xc0", 2, "trailing"},
	    {"truncated str",
	        "\xa5"
	        "ab",
	        3, "truncated"},
	    {"truncated uint32", "\xce\x00\x01", 3, "truncated"},
	    {"truncated bin32 length", "\xc6\x00\x00", 3, "truncated"},
	    {"array32 claims 4 G elements", "\xdd\xff\x00\x00\x00", 5,
	        "claims"},
	    {"map32 claims 4 G pairs", "\xdf\xff\xff\xff\xff", 5, "claims"},
	    {"map claims 2 pairs in 3 bytes", "\x82\x01\x02\x03", 4, "claims"},
	    {"array claims 2 elements in 1 byte", "\x92\x01", 2, "claims"},
	    {"array missing its element", "\x92\x92\x01\x02", 4, "missing"},
	    {"ext8 without type", "\xc7\x01", 2, "truncated"},
	    {"fixext4 truncated", "\xd6\x01\x00", 3, "truncated"},
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rv = qpi_wire_check_value(bad[i].bytes, bad[i].len);
		if (rv != QP_EINVAL) {
			fail_msg("%s: got %d", bad[i].what, rv);
		}
		if (strstr(qp_errmsg(), bad[i].msg) == NULL) {
			fail_msg("%s: message '%s' lacks '%s'", bad[i].what,
			    qp_errmsg(), bad[i].msg);
		}
	}
	assert_int_equal(qpi_wire_check_value(NULL, 3), QP_EINVAL);
}

static void
test_wire_check_value_depth(void **state)
{
	uint8_t buf[QPI_WIRE_MAX_DEPTH + 2];

	/* QPI_WIRE_MAX_DEPTH nested arrays around a nil: allowed */
	memset(buf, 0x91, QPI_WIRE_MAX_DEPTH);
	buf[QPI_WIRE_MAX_DEPTH] = 0xc0;
	assert_int_equal(
	    qpi_wire_check_value(buf, QPI_WIRE_MAX_DEPTH + 1), QP_OK);
	/* one more level: refused */
	memset(buf, 0x91, QPI_WIRE_MAX_DEPTH + 1);
	buf[QPI_WIRE_MAX_DEPTH + 1] = 0xc0;
	assert_int_equal(
	    qpi_wire_check_value(buf, QPI_WIRE_MAX_DEPTH + 2), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "deeper"));
}

static void
test_wire_bin_header(void **state)
{
	static const size_t lens[]
	    = {0, 1, 255, 256, 65535, 65536, (size_t) 32 << 20, 0xffffffffu};
	static const size_t hlen[] = {2, 2, 2, 3, 3, 5, 5, 5};
	uint8_t hdr[5];
	size_t off, len;

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		size_t n = qpi_wire_bin_header(lens[i], hdr);
		assert_int_equal(n, hlen[i]);
		/* the header alone claims lens[i] bytes that are missing */
		if (lens[i] > 0) {
			assert_false(qpi_wire_bin_unwrap(hdr, n, &off, &len));
		}
	}
	assert_int_equal(qpi_wire_bin_header(300, hdr), 3);
	assert_memory_equal(hdr, "\xc5\x01\x2c", 3);
	assert_int_equal(qpi_wire_bin_header(70000, hdr), 5);
	assert_memory_equal(hdr, "\xc6\x00\x01\x11\x70", 5);
#if SIZE_MAX > 0xffffffffu
	assert_int_equal(qpi_wire_bin_header((size_t) 1 << 32, hdr), 0);
#endif
}

static void
test_wire_bin_unwrap(void **state)
{
	uint8_t buf[70000 + 5];
	size_t off = 99, len = 99, n;

	for (size_t i = 0; i < sizeof(buf); i++) {
		buf[i] = (uint8_t) i;
	}
	/* every header width round-trips through check and unwrap */
	static const size_t sizes[] = {0, 7, 255, 256, 70000};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		uint8_t item[70000 + 5];
		n = qpi_wire_bin_header(sizes[i], item);
		memcpy(item + n, buf, sizes[i]);
		assert_int_equal(
		    qpi_wire_check_value(item, n + sizes[i]), QP_OK);
		assert_true(
		    qpi_wire_bin_unwrap(item, n + sizes[i], &off, &len));
		assert_int_equal(off, n);
		assert_int_equal(len, sizes[i]);
		assert_memory_equal(item + off, buf, sizes[i]);
		/* one byte short or long: not exactly one bin */
		assert_false(
		    qpi_wire_bin_unwrap(item, n + sizes[i] + 1, &off, &len));
		if (sizes[i] > 0) {
			assert_false(qpi_wire_bin_unwrap(
			    item, n + sizes[i] - 1, &off, &len));
		}
	}
	/* not a bin */
	assert_false(qpi_wire_bin_unwrap("\xa2hi", 3, &off, &len));
	assert_false(qpi_wire_bin_unwrap("\xc0", 1, &off, &len));
	assert_false(qpi_wire_bin_unwrap(NULL, 0, &off, &len));
	assert_false(qpi_wire_bin_unwrap("\xc4", 1, &off, &len));
	assert_false(qpi_wire_bin_unwrap("\xc6\x00\x00", 3, &off, &len));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_wire_check_value_accepts),
	    cmocka_unit_test(test_wire_check_value_rejects),
	    cmocka_unit_test(test_wire_check_value_depth),
	    cmocka_unit_test(test_wire_bin_header),
	    cmocka_unit_test(test_wire_bin_unwrap),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
