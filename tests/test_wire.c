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

static void
test_wire_name_rule_matches_lib(void **state)
{
	static const char *const names[]
	    = {"jobs", "a.b-c_D9", "...", ".", "..", "", "a/b", "a b", "-",
	        "_", ".hidden", "x..y", "UPPER", "tab\t", "caf\xc3\xa9"};
	char one[2] = {0, 0}, big[QP_NAME_MAX + 2];

	/* proto cannot include lib's qpi.h: the two copies must agree */
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		size_t n = strlen(names[i]);
		assert_int_equal(qpi_wire_name_valid(names[i], n),
		    qpi_name_valid(names[i], n));
	}
	for (int c = 0; c < 256; c++) {
		one[0] = (char) c;
		assert_int_equal(
		    qpi_wire_name_valid(one, 1), qpi_name_valid(one, 1));
	}
	/* Every byte, against the rule written out: A-Z a-z 0-9 . _ - */
	for (int c = 0; c < 256; c++) {
		char three[3] = {'a', (char) c, 'b'};
		bool want = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		    || (c >= '0' && c <= '9') || c == '.' || c == '_'
		    || c == '-';
		assert_int_equal(qpi_wire_name_valid(three, 3), want);
	}
	memset(big, 'a', sizeof(big));
	assert_true(qpi_wire_name_valid(big, QP_NAME_MAX));
	assert_false(qpi_wire_name_valid(big, QP_NAME_MAX + 1));
	assert_int_equal(qpi_wire_name_valid(big, QP_NAME_MAX + 1),
	    qpi_name_valid(big, QP_NAME_MAX + 1));
	assert_false(qpi_wire_name_valid(NULL, 0));
}

/* ---- frames: round trips ---- */

static const uint8_t client16[QPI_WIRE_ID_LEN] = {0x00, 0x11, 0x22, 0x33, 0x44,
    0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};

/* Three items of different kinds: a bin, a map, a negative int. */
static const uint8_t item_bin[] = {0xc4, 0x05, 'h', 'e', 'l', 'l', 'o'};
static const uint8_t item_map[] = {0x81, 0xa1, 'n', 0x05};
static const uint8_t item_int[] = {0xd0, 0x80};

static void
items3(qpi_wire_item *it)
{
	memset(it, 0, 3 * sizeof(*it));
	it[0] = (qpi_wire_item) {item_bin, sizeof(item_bin), 7, 1};
	it[1] = (qpi_wire_item) {item_map, sizeof(item_map), 8, 2};
	it[2] = (qpi_wire_item) {item_int, sizeof(item_int), UINT64_MAX, 99};
}

/* A request of op with every field set to a distinct valid value. */
static void
fill_req(qpi_wire_req *q, uint32_t op, qpi_wire_item *its, uint64_t *ids)
{
	memset(q, 0, sizeof(*q));
	q->op = op;
	q->req_id = 1000 + op;
	strcpy(q->name, "jobs.A_1-b");
	strcpy(q->results, op == QPI_OP_COMPLETE ? "results.7" : "");
	memcpy(q->client_id, client16, sizeof(client16));
	q->seq = 0x0102030405060708ull;
	q->timeout = 1500;
	q->flags = op == QPI_OP_PUT || op == QPI_OP_PUT_MANY ? QPI_PUT_CREATE
	    : op == QPI_OP_CREATE    ? QPI_CREATE_DURABLE | QPI_CREATE_EXCL
	    : op == QPI_OP_PIPE_OPEN ? QPI_PIPE_ONEWAY
	                             : 0;
	q->max_items = 3;
	q->lease_mode = QPI_LEASE_WORK;
	q->lease_ms = 30000;
	q->lease_id = 0x1122334455667788ull;
	q->delay_ms = 250;
	q->count = 2;
	q->maxsize = 10;
	q->capacity = 1u << 20;
	q->max_message = 4096;
	q->side = op == QPI_OP_PIPE_OPEN ? -1 : 1;
	strcpy(q->client_name, "worker 7 (test)");
	strcpy(q->fsync, op == QPI_OP_CREATE ? "interval:250" : "");
	memset(q->mac, 0xab, sizeof(q->mac));
	memset(q->nonce, 0xcd, sizeof(q->nonce));
	q->has_nonce = true;
	q->item = (qpi_wire_item) {item_bin, sizeof(item_bin), 0, 0};
	items3(its);
	for (int i = 0; i < 3; i++) {
		its[i].lease_id = 0; /* requests carry no lease */
		its[i].deliveries = 0;
	}
	q->items = its;
	q->nitems = 3;
	q->items_cap = 3;
	ids[0] = 5;
	ids[1] = UINT64_MAX;
	q->ids = ids;
	q->nids = 2;
	q->ids_cap = 2;
}

/* Encodes, decodes, re-encodes: the same bytes; returns the decoded. */
static void
req_roundtrip(const qpi_wire_req *q, qpi_wire_req *d, qpi_wire_item *dits,
    uint64_t *dids, qpi_wire_buf *b)
{
	qpi_wire_buf again = {0};
	int rv;

	qpi_wire_buf_reset(b);
	rv = qpi_wire_encode_req(q, b);
	if (rv != QP_OK) {
		fail_msg(
		    "encode %s: %s", qpi_wire_op_name(q->op), qp_errmsg());
	}
	memset(d, 0, sizeof(*d));
	d->items = dits;
	d->items_cap = 8;
	d->ids = dids;
	d->ids_cap = 8;
	rv = qpi_wire_decode_req(b->data, b->len, NULL, d);
	if (rv != QP_OK) {
		fail_msg(
		    "decode %s: %s", qpi_wire_op_name(q->op), qp_errmsg());
	}
	assert_int_equal(qpi_wire_encode_req(d, &again), QP_OK);
	assert_int_equal(again.len, b->len);
	assert_memory_equal(again.data, b->data, b->len);
	qpi_wire_buf_free(&again);
	assert_int_equal(d->op, q->op);
	assert_true(d->req_id == q->req_id);
}

static void
test_wire_request_roundtrip(void **state)
{
	qpi_wire_item its[3], dits[8];
	uint64_t ids[2], dids[8];
	qpi_wire_req q, d;
	qpi_wire_buf b = {0};

	for (uint32_t op = 1; op <= QPI_OP_MAX; op++) {
		const char *nm = qpi_wire_op_name(op);
		assert_non_null(nm);
		fill_req(&q, op, its, ids);
		req_roundtrip(&q, &d, dits, dids, &b);
		bool named = op != QPI_OP_HELLO && op != QPI_OP_AUTH
		    && op != QPI_OP_PING && op != QPI_OP_LIST;
		assert_string_equal(d.name, named ? "jobs.A_1-b" : "");
		if (qpi_wire_op_dedup(op) || op == QPI_OP_GET) {
			assert_memory_equal(d.client_id, client16, 16);
			assert_true(d.seq == 0x0102030405060708ull);
		} else if (op != QPI_OP_HELLO) {
			assert_true(d.seq == 0);
		}
		switch (op) {
		case QPI_OP_HELLO:
			assert_memory_equal(d.client_id, client16, 16);
			assert_string_equal(d.client_name, "worker 7 (test)");
			break;
		case QPI_OP_AUTH:
			assert_memory_equal(d.mac, q.mac, QPI_WIRE_MAC_LEN);
			assert_true(d.has_nonce);
			assert_memory_equal(d.nonce, q.nonce, 32);
			break;
		case QPI_OP_PUT:
		case QPI_OP_PIPE_SEND:
			assert_int_equal(d.timeout, 1500);
			assert_int_equal(d.item.len, sizeof(item_bin));
			assert_memory_equal(d.item.data, item_bin, d.item.len);
			/* zero copy: the item points into the frame */
			assert_true(d.item.data >= b.data
			    && d.item.data < b.data + b.len);
			assert_int_equal(
			    d.flags, op == QPI_OP_PUT ? QPI_PUT_CREATE : 0);
			assert_int_equal(d.side, op == QPI_OP_PUT ? 0 : 1);
			break;
		case QPI_OP_PUT_MANY:
			assert_int_equal(d.nitems, 3);
			assert_memory_equal(
			    d.items[1].data, item_map, sizeof(item_map));
			assert_memory_equal(
			    d.items[2].data, item_int, sizeof(item_int));
			assert_int_equal(d.flags, QPI_PUT_CREATE);
			break;
		case QPI_OP_GET:
			assert_int_equal(d.timeout, 1500);
			assert_int_equal(d.max_items, 3);
			assert_int_equal(d.lease_mode, QPI_LEASE_WORK);
			assert_int_equal(d.lease_ms, 30000);
			assert_int_equal(d.nids, 2);
			assert_true(d.ids[1] == UINT64_MAX);
			break;
		case QPI_OP_ACK:
			assert_int_equal(d.nids, 2);
			assert_true(d.ids[0] == 5);
			break;
		case QPI_OP_TOUCH:
			assert_int_equal(d.lease_ms, 30000);
			assert_int_equal(d.nids, 2);
			assert_true(d.ids[0] == 5);
			assert_true(d.ids[1] == UINT64_MAX);
			break;
		case QPI_OP_RELEASE:
			assert_true(d.lease_id == 0x1122334455667788ull);
			assert_int_equal(d.delay_ms, 250);
			break;
		case QPI_OP_COMPLETE:
			assert_true(d.lease_id == 0x1122334455667788ull);
			assert_string_equal(d.results, "results.7");
			assert_int_equal(d.timeout, 1500);
			assert_int_equal(d.item.len, sizeof(item_bin));
			assert_memory_equal(d.item.data, item_bin, d.item.len);
			assert_true(qpi_wire_op_dedup(op));
			break;
		case QPI_OP_TASK_DONE:
			assert_int_equal(d.count, 2);
			break;
		case QPI_OP_JOIN:
		case QPI_OP_PIPE_POLL:
			assert_int_equal(d.timeout, 1500);
			break;
		case QPI_OP_CREATE:
			assert_int_equal(d.maxsize, 10);
			assert_int_equal(d.capacity, 1u << 20);
			assert_int_equal(d.max_message, 4096);
			assert_int_equal(d.lease_ms, 30000);
			assert_int_equal(
			    d.flags, QPI_CREATE_DURABLE | QPI_CREATE_EXCL);
			assert_string_equal(d.fsync, "interval:250");
			break;
		case QPI_OP_PIPE_OPEN:
			assert_int_equal(d.side, -1);
			assert_int_equal(d.flags, QPI_PIPE_ONEWAY);
			break;
		case QPI_OP_PIPE_RECV:
		case QPI_OP_PIPE_CLOSE:
			assert_int_equal(d.side, 1);
			break;
		default:
			break;
		}
	}
	assert_false(qpi_wire_op_dedup(QPI_OP_GET));
	assert_true(qpi_wire_op_dedup(QPI_OP_PUT));
	assert_false(qpi_wire_op_dedup(QPI_OP_STAT));
	assert_null(qpi_wire_op_name(0));
	assert_null(qpi_wire_op_name(QPI_OP_MAX + 1));
	qpi_wire_buf_free(&b);
}

static void
test_wire_request_variants(void **state)
{
	qpi_wire_item its[3], dits[8];
	uint64_t ids[2], dids[8];
	qpi_wire_req q, d;
	qpi_wire_buf b = {0};

	/* forever, no wait, no client nonce, get without acks, huge values */
	fill_req(&q, QPI_OP_GET, its, ids);
	q.timeout = QP_FOREVER;
	q.nids = 0;
	q.lease_mode = QPI_LEASE_CONFIRM;
	q.lease_ms = 0;
	req_roundtrip(&q, &d, dits, dids, &b);
	assert_int_equal(d.timeout, -1);
	assert_int_equal(d.nids, 0);
	q.timeout = INT64_MAX;
	req_roundtrip(&q, &d, dits, dids, &b);
	assert_true(d.timeout == INT64_MAX);
	fill_req(&q, QPI_OP_AUTH, its, ids);
	q.has_nonce = false;
	req_roundtrip(&q, &d, dits, dids, &b);
	assert_false(d.has_nonce);
	fill_req(&q, QPI_OP_PUT, its, ids);
	q.timeout = QP_NOWAIT;
	q.seq = 0;
	q.flags = 0;
	req_roundtrip(&q, &d, dits, dids, &b);
	assert_int_equal(d.timeout, 0);
	/* a name of exactly QP_NAME_MAX bytes */
	memset(q.name, 'n', QP_NAME_MAX);
	q.name[QP_NAME_MAX] = '\0';
	req_roundtrip(&q, &d, dits, dids, &b);
	assert_int_equal(strlen(d.name), QP_NAME_MAX);
	qpi_wire_buf_free(&b);
}

/* A get's lease ids in every width msgpack has for them come back as
 * they went, each written in msgpack's smallest form; the same request
 * cut short anywhere is refused. */
static void
test_wire_request_ids_every_width(void **state)
{
	static const uint64_t widths[] = {0, 127, 128, 255, 256, 65535, 65536,
	    0xffffffffull, 0x100000000ull, UINT64_MAX};
	static const uint8_t forms[]
	    = {0x00, 0x7f, 0xcc, 0x80, 0xcc, 0xff, 0xcd, 0x01, 0x00, 0xcd,
	        0xff, 0xff, 0xce, 0x00, 0x01, 0x00, 0x00, 0xce, 0xff, 0xff,
	        0xff, 0xff, 0xcf, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	        0x00, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	qpi_wire_item its[3], dits[8];
	uint64_t ids[10], dids[10];
	qpi_wire_req q, d;
	qpi_wire_buf b = {0}, u = {0};

	(void) state;
	fill_req(&q, QPI_OP_GET, its, ids);
	memcpy(ids, widths, sizeof(widths));
	q.nids = q.ids_cap = 10;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_OK);
	for (size_t cut = 0; cut <= b.len; cut++) {
		memset(&d, 0, sizeof(d));
		d.items = dits;
		d.items_cap = 8;
		d.ids = dids;
		d.ids_cap = 10;
		int rv = qpi_wire_decode_req(b.data, cut, NULL, &d);
		if (cut < b.len) {
			assert_int_not_equal(rv, QP_OK);
		} else {
			assert_int_equal(rv, QP_OK);
			assert_int_equal(d.nids, 10);
			assert_memory_equal(d.ids, widths, sizeof(widths));
		}
	}
	for (size_t i = 0; i < 10; i++) {
		assert_int_equal(qpi_wire_put_uint(&u, widths[i]), QP_OK);
	}
	assert_int_equal(u.len, sizeof(forms));
	assert_memory_equal(u.data, forms, sizeof(forms));
	qpi_wire_buf_free(&u);
	qpi_wire_buf_free(&b);
}

/* A put_many's items, one that is not a bin and then bins of every
 * header width (bin 8, 16 and 32: 0, 255, 256 and 65536 bytes), come back
 * as they went; the request cut short anywhere is refused without a read
 * past its end, and so is one whose last bin claims a byte more than
 * there is; an item of exactly max_message bytes is taken, one more is
 * QP_ETOOBIG. */
static void
test_wire_items_every_bin_width(void **state)
{
	static const size_t sizes[] = {0, 255, 256, 65536};
	static uint8_t bins[4][65536 + 5];
	static const uint8_t notbin[] = {0x92, 0x01, 0xa1, 'x'}; /* [1,"x"] */
	qpi_wire_item its[5], dits[8];
	uint64_t ids[2], dids[8];
	qpi_wire_req q, d;
	qpi_wire_buf b = {0};

	(void) state;
	fill_req(&q, QPI_OP_PUT_MANY, its, ids);
	its[0] = (qpi_wire_item) {notbin, sizeof(notbin), 0, 0};
	for (int i = 0; i < 4; i++) {
		size_t hl = qpi_wire_bin_header(sizes[i], bins[i]);
		memset(bins[i] + hl, 'a' + i, sizes[i]);
		its[i + 1] = (qpi_wire_item) {bins[i], hl + sizes[i], 0, 0};
	}
	q.items = its;
	q.nitems = q.items_cap = 5;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_OK);
	for (size_t cut = 0; cut <= b.len;
	     cut += cut < 200 || b.len - cut < 200 ? 1 : 997) {
		memset(&d, 0, sizeof(d));
		d.items = dits;
		d.items_cap = 8;
		d.ids = dids;
		d.ids_cap = 8;
		/* A copy of exactly cut bytes: a read past it is caught by
		 * the sanitizer build. */
		uint8_t *cp = malloc(cut > 0 ? cut : 1);
		assert_non_null(cp);
		memcpy(cp, b.data, cut);
		int rv = qpi_wire_decode_req(cp, cut, NULL, &d);
		free(cp);
		if (cut < b.len) {
			assert_int_not_equal(rv, QP_OK);
			continue;
		}
		rv = qpi_wire_decode_req(b.data, b.len, NULL, &d);
		assert_int_equal(rv, QP_OK);
		assert_int_equal(d.nitems, 5);
		for (int i = 0; i < 5; i++) {
			assert_int_equal(d.items[i].len, its[i].len);
			assert_memory_equal(
			    d.items[i].data, its[i].data, its[i].len);
		}
	}
	/* The last bin (65536 bytes, bin 32) claims one byte more. */
	size_t at = (size_t) (d.items[4].data - b.data);
	assert_int_equal(b.data[at], 0xc6);
	b.data[at + 4]++;
	memset(&d, 0, sizeof(d));
	d.items = dits;
	d.items_cap = 8;
	assert_int_equal(
	    qpi_wire_decode_req(b.data, b.len, NULL, &d), QP_EPROTO);
	b.data[at + 4]--;
	/* max_message: 65536 takes the largest, 65535 refuses it. */
	qpi_wire_limits lim = {.max_message = 65536};
	memset(&d, 0, sizeof(d));
	d.items = dits;
	d.items_cap = 8;
	assert_int_equal(qpi_wire_decode_req(b.data, b.len, &lim, &d), QP_OK);
	lim.max_message = 65535;
	memset(&d, 0, sizeof(d));
	d.items = dits;
	d.items_cap = 8;
	assert_int_equal(
	    qpi_wire_decode_req(b.data, b.len, &lim, &d), QP_ETOOBIG);
	qpi_wire_buf_free(&b);
}

static void
fill_rep(qpi_wire_rep *p, uint32_t op, qpi_wire_item *its, uint64_t *ids,
    qpi_wire_qentry *qs)
{
	memset(p, 0, sizeof(*p));
	p->op = op;
	p->req_id = 2000 + op;
	strcpy(p->server_version, "0.1.0");
	p->limits = (qpi_wire_limits) {32u << 20, 4096, 30000};
	memset(p->nonce, 0x5a, sizeof(p->nonce));
	p->auth_required = true;
	p->has_mac = true;
	memset(p->mac, 0x3c, sizeof(p->mac));
	p->count = 12345678901ull;
	p->stat = (qp_queue_stats) {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
	p->side = 1;
	p->peer_open = true;
	p->ready = true;
	p->item = (qpi_wire_item) {item_map, sizeof(item_map), 0, 0};
	items3(its);
	p->items = its;
	p->nitems = 3;
	ids[0] = 77;
	p->ids = ids;
	p->nids = 1;
	memset(qs, 0, 2 * sizeof(*qs));
	strcpy(qs[0].name, "jobs");
	qs[0].stat = p->stat;
	strcpy(qs[1].name, "results");
	qs[1].stat = (qp_queue_stats) {0};
	qs[1].stat.oldest_age_ms = -1;
	p->queues = qs;
	p->nqueues = 2;
}

/* A get's items are measured and written in one pass: the same bytes as
 * msgpack's packer writes value by value (the public put functions), for
 * every width of id, count and array header; a frame limit of exactly
 * their size takes them, one byte less is QP_ETOOBIG. */
static void
test_wire_items_fast_same_bytes(void **state)
{
	static const uint64_t ids[] = {0, 0x7f, 0x80, 0xff, 0x100, 0xffff,
	    0x10000, 0xffffffffull, 0x100000000ull, UINT64_MAX};
	static const uint8_t val[] = {0xa3, 'a', 'b', 'c'}; /* "abc" */
	static const uint32_t counts[] = {0, 1, 15, 16, 300, 70000};
	static qpi_wire_item its[70000];

	(void) state;
	for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
		uint32_t n = counts[c];
		for (uint32_t i = 0; i < n; i++) {
			its[i] = (qpi_wire_item) {val, sizeof(val),
			    ids[i % 10], ids[(i + 3) % 10] | 1};
		}
		qpi_wire_rep p = {
		    .op = QPI_OP_GET, .req_id = 9, .items = its, .nitems = n};
		qpi_wire_rep p0 = {.op = QPI_OP_GET, .req_id = 9};
		qpi_wire_buf got = {0}, want = {0};
		assert_int_equal(qpi_wire_encode_rep(&p, &got), QP_OK);
		/* The reply with no items ends in its empty array (0x90):
		 * what comes before it, then the items value by value. */
		assert_int_equal(qpi_wire_encode_rep(&p0, &want), QP_OK);
		assert_int_equal(want.data[want.len - 1], 0x90);
		want.len--;
		assert_int_equal(qpi_wire_put_array(&want, n), QP_OK);
		for (uint32_t i = 0; i < n; i++) {
			assert_int_equal(qpi_wire_put_array(&want, 3), QP_OK);
			assert_int_equal(
			    qpi_wire_put_uint(&want, its[i].lease_id), QP_OK);
			assert_int_equal(
			    qpi_wire_put_uint(&want, its[i].deliveries),
			    QP_OK);
			assert_int_equal(
			    qpi_wire_put_raw(&want, val, sizeof(val)), QP_OK);
		}
		assert_int_equal(got.len, want.len);
		assert_memory_equal(got.data, want.data, want.len);
		qpi_wire_buf lim = {.max = want.len};
		assert_int_equal(qpi_wire_encode_rep(&p, &lim), QP_OK);
		assert_int_equal(lim.len, want.len);
		qpi_wire_buf_free(&lim);
		lim = (qpi_wire_buf) {.max = want.len - 1};
		assert_int_equal(qpi_wire_encode_rep(&p, &lim), QP_ETOOBIG);
		qpi_wire_buf_free(&lim);
		qpi_wire_buf_free(&got);
		qpi_wire_buf_free(&want);
	}
}

static void
rep_roundtrip(const qpi_wire_rep *p, qpi_wire_rep *d, qpi_wire_buf *b,
    qpi_wire_item *dits, uint64_t *dids, qpi_wire_qentry *dqs)
{
	qpi_wire_buf again = {0};
	int rv;

	qpi_wire_buf_reset(b);
	if ((rv = qpi_wire_encode_rep(p, b)) != QP_OK) {
		fail_msg("encode %s reply: %s", qpi_wire_op_name(p->op),
		    qp_errmsg());
	}
	memset(d, 0, sizeof(*d));
	d->items = dits;
	d->items_cap = 8;
	d->ids = dids;
	d->ids_cap = 8;
	d->queues = dqs;
	d->queues_cap = 4;
	if ((rv = qpi_wire_decode_rep(b->data, b->len, NULL, d)) != QP_OK) {
		fail_msg("decode %s reply: %s", qpi_wire_op_name(p->op),
		    qp_errmsg());
	}
	assert_int_equal(qpi_wire_encode_rep(d, &again), QP_OK);
	assert_int_equal(again.len, b->len);
	assert_memory_equal(again.data, b->data, b->len);
	qpi_wire_buf_free(&again);
	assert_int_equal(d->op, p->op);
	assert_true(d->req_id == p->req_id);
	assert_int_equal(d->status, p->status);
}

static void
test_wire_reply_roundtrip(void **state)
{
	qpi_wire_item its[3], dits[8];
	uint64_t ids[1], dids[8];
	qpi_wire_qentry qs[2], dqs[4];
	qpi_wire_rep p, d;
	qpi_wire_buf b = {0};

	for (uint32_t op = 1; op <= QPI_OP_MAX; op++) {
		fill_rep(&p, op, its, ids, qs);
		rep_roundtrip(&p, &d, &b, dits, dids, dqs);
		switch (op) {
		case QPI_OP_HELLO:
			assert_string_equal(d.server_version, "0.1.0");
			assert_true(d.limits.max_message == 32u << 20);
			assert_int_equal(d.limits.max_batch, 4096);
			assert_int_equal(d.limits.lease_ms, 30000);
			assert_memory_equal(d.nonce, p.nonce, 32);
			assert_true(d.auth_required);
			break;
		case QPI_OP_AUTH:
			assert_true(d.has_mac);
			assert_memory_equal(d.mac, p.mac, 32);
			break;
		case QPI_OP_GET:
			assert_int_equal(d.nitems, 3);
			assert_int_equal(d.items[0].lease_id, 7);
			assert_int_equal(d.items[0].deliveries, 1);
			assert_true(d.items[2].lease_id == UINT64_MAX);
			assert_int_equal(d.items[2].deliveries, 99);
			assert_memory_equal(
			    d.items[1].data, item_map, sizeof(item_map));
			break;
		case QPI_OP_ACK:
		case QPI_OP_TOUCH:
			assert_int_equal(d.nids, 1);
			assert_int_equal(d.ids[0], 77);
			break;
		case QPI_OP_QSIZE:
			assert_true(d.count == 12345678901ull);
			break;
		case QPI_OP_STAT:
			assert_memory_equal(&d.stat, &p.stat, sizeof(p.stat));
			break;
		case QPI_OP_LIST:
			assert_int_equal(d.nqueues, 2);
			assert_string_equal(d.queues[1].name, "results");
			assert_memory_equal(
			    &d.queues[0].stat, &p.stat, sizeof(p.stat));
			assert_int_equal(d.queues[1].stat.oldest_age_ms, -1);
			break;
		case QPI_OP_PIPE_OPEN:
			assert_int_equal(d.side, 1);
			assert_true(d.peer_open);
			break;
		case QPI_OP_PIPE_POLL:
			assert_true(d.ready);
			break;
		case QPI_OP_PIPE_RECV:
			assert_memory_equal(
			    d.item.data, item_map, sizeof(item_map));
			break;
		default:
			break;
		}
		/* every op's error reply: status and message only */
		p.status = QP_EEMPTY;
		snprintf(p.errmsg, sizeof(p.errmsg), "%s failed: empty",
		    qpi_wire_op_name(op));
		rep_roundtrip(&p, &d, &b, dits, dids, dqs);
		assert_int_equal(d.status, QP_EEMPTY);
		assert_string_equal(d.errmsg, p.errmsg);
		assert_int_equal(d.nitems, 0);
	}
	/* an empty get (never sent: EEMPTY instead, but legal) and a list
	 * of no queues */
	fill_rep(&p, QPI_OP_GET, its, ids, qs);
	p.nitems = 0;
	rep_roundtrip(&p, &d, &b, dits, dids, dqs);
	assert_int_equal(d.nitems, 0);
	/* the error reply to a frame whose op could not be read */
	memset(&p, 0, sizeof(p));
	p.status = QP_EPROTO;
	strcpy(p.errmsg, "a request frame must be a msgpack array, not nil");
	rep_roundtrip(&p, &d, &b, dits, dids, dqs);
	assert_int_equal(d.op, 0);
	assert_int_equal(d.status, QP_EPROTO);
	qpi_wire_buf_free(&b);
}

static void
test_wire_reply_errmsg_sanitized(void **state)
{
	/* [1, 6, 9, 2, "a\x1b[31mb"]: the escape byte comes out as '?' */
	static const uint8_t f[] = {0x95, 0x01, 0x06, 0x09, 0x02, 0xa7, 'a',
	    0x1b, '[', '3', '1', 'm', 'b'};
	qpi_wire_rep d = {0};

	assert_int_equal(qpi_wire_decode_rep(f, sizeof(f), NULL, &d), QP_OK);
	assert_int_equal(d.status, QP_EEMPTY);
	assert_string_equal(d.errmsg, "a?[31mb");
}

static void
test_wire_encode_rejects(void **state)
{
	qpi_wire_item its[3];
	uint64_t ids[2];
	qpi_wire_req q;
	qpi_wire_rep p;
	qpi_wire_buf b = {0};

	fill_req(&q, QPI_OP_PUT, its, ids);
	strcpy(q.name, "no/slash");
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "no/slash"));
	assert_int_equal(b.len, 0); /* nothing half-written */
	strcpy(q.name, "..");
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	strcpy(q.name, "ok");
	q.timeout = -2;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	q.timeout = 0;
	q.flags = 0x80;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	q.flags = 0;
	q.item.len = 0;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	q.op = 0;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	q.op = 77;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	fill_req(&q, QPI_OP_GET, its, ids);
	q.max_items = 0;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	fill_req(&q, QPI_OP_ACK, its, ids);
	q.nids = 0;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	fill_req(&q, QPI_OP_PIPE_SEND, its, ids);
	q.side = -1;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	fill_req(&q, QPI_OP_HELLO, its, ids);
	strcpy(q.client_name, "tab\there");
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_EINVAL);
	memset(&p, 0, sizeof(p));
	p.op = QPI_OP_PIPE_OPEN;
	p.side = 2;
	assert_int_equal(qpi_wire_encode_rep(&p, &b), QP_EINVAL);
	p.op = QPI_OP_GET;
	p.nitems = 1;
	assert_int_equal(qpi_wire_encode_rep(&p, &b), QP_EINVAL);
	assert_int_equal(b.len, 0);
	/* an output limit: QP_ETOOBIG, the buffer as it was */
	fill_req(&q, QPI_OP_PUT, its, ids);
	b.max = 10;
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_ETOOBIG);
	assert_int_equal(b.len, 0);
	qpi_wire_buf_free(&b);
}

/* ---- frames: malformed input ---- */

#define CID16                                                              \
	"\xc4\x10\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd" \
	"\xee\xff"
#define B(s) s, sizeof(s) - 1

static const struct bad_frame {
	const char *what;
	const char *bytes;
	size_t len;
	bool reply; /* decode as a reply */
	int want;
	uint64_t max_message; /* 0: default */
	uint32_t max_batch; /* 0: default */
} bad_frames[] = {
    {"empty input", B(""), false, QP_EPROTO, 0, 0},
    {"not an array", B("\xc0"), false, QP_EPROTO, 0, 0},
    {"a map instead of an array", B("\x81\x01\x02"), false, QP_EPROTO, 0, 0},
    {"array of two", B("\x92\x01\x03"), false, QP_EPROTO, 0, 0},
    {"version 2", B("\x93\x02\x03\x07"), false, QP_EVERSION, 0, 0},
    {"version 0", B("\x93\x00\x03\x07"), false, QP_EVERSION, 0, 0},
    {"version as a string",
        B("\x93\xa1"
          "1\x03\x07"),
        false, QP_EPROTO, 0, 0},
    {"unknown op 99", B("\x93\x01\x63\x07"), false, QP_EPROTO, 0, 0},
    {"op 0", B("\x93\x01\x00\x07"), false, QP_EPROTO, 0, 0},
    {"op as uint64", B("\x93\x01\xcf\x00\x00\x00\x01\x00\x00\x00\x03\x07"),
        false, QP_EPROTO, 0, 0},
    {"negative req_id", B("\x93\x01\x03\xff"), false, QP_EPROTO, 0, 0},
    {"ping with an extra field", B("\x94\x01\x03\x07\xc0"), false, QP_EPROTO,
        0, 0},
    {"trailing byte after ping", B("\x93\x01\x03\x07\xc0"), false, QP_EPROTO,
        0, 0},
    {"qsize name truncated", B("\x94\x01\x0b\x07\xa4jo"), false, QP_EPROTO, 0,
        0},
    {"qsize name is a bin", B("\x94\x01\x0b\x07\xc4\x04jobs"), false,
        QP_EPROTO, 0, 0},
    {"qsize name ..", B("\x94\x01\x0b\x07\xa2.."), false, QP_EPROTO, 0, 0},
    {"qsize name .", B("\x94\x01\x0b\x07\xa1."), false, QP_EPROTO, 0, 0},
    {"qsize name empty", B("\x94\x01\x0b\x07\xa0"), false, QP_EPROTO, 0, 0},
    {"qsize name with a slash",
        B("\x94\x01\x0b\x07\xa3"
          "a/b"),
        false, QP_EPROTO, 0, 0},
    {"qsize name with a NUL",
        B("\x94\x01\x0b\x07\xa3"
          "a\0b"),
        false, QP_EPROTO, 0, 0},
    {"frame array32 claims 4 G elements", B("\xdd\xff\x00\x00\x00"), false,
        QP_EPROTO, 0, 0},
    {"frame array claims more than remain", B("\xdc\x01\x00\x01\x0b\x07\xa1x"),
        false, QP_EPROTO, 0, 0},
    {"put: client id of 15 bytes",
        B("\x99\x01\x04\x07\xa4jobs\xc4\x0f\x00\x11\x22\x33\x44\x55\x66\x77"
          "\x88\x99\xaa\xbb\xcc\xdd\xee\x01\xff\x00\xc0"),
        false, QP_EPROTO, 0, 0},
    {"put: timeout -2", B("\x99\x01\x04\x07\xa4jobs" CID16 "\x01\xfe\x00\xc0"),
        false, QP_EPROTO, 0, 0},
    {"put: timeout over 2^63-1",
        B("\x99\x01\x04\x07\xa4jobs" CID16
          "\x01\xcf\xff\xff\xff\xff\xff\xff\xff\xff\x00\xc0"),
        false, QP_EPROTO, 0, 0},
    {"put: timeout as a float",
        B("\x99\x01\x04\x07\xa4jobs" CID16
          "\x01\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\x00\xc0"),
        false, QP_EPROTO, 0, 0},
    {"put: unknown flag 0x4",
        B("\x99\x01\x04\x07\xa4jobs" CID16 "\x01\xff\x04\xc0"), false,
        QP_EPROTO, 0, 0},
    {"put: seq negative",
        B("\x99\x01\x04\x07\xa4jobs" CID16 "\xff\xff\x00\xc0"), false,
        QP_EPROTO, 0, 0},
    {"put: item missing", B("\x98\x01\x04\x07\xa4jobs" CID16 "\x01\xff\x00"),
        false, QP_EPROTO, 0, 0},
    {"put: item is byte 0xc1",
        B("\x99\x01\x04\x07\xa4jobs" CID16 "\x01\xff\x00\xc1"), false,
        QP_EPROTO, 0, 0},
    {"put: item bin truncated",
        B("\x99\x01\x04\x07\xa4jobs" CID16 "\x01\xff\x00\xc4\x09hi"), false,
        QP_EPROTO, 0, 0},
    {"put: item map32 claims 4 G pairs",
        B("\x99\x01\x04\x07\xa4jobs" CID16 "\x01\xff\x00\xdf\xff\xff\xff\xff"),
        false, QP_EPROTO, 0, 0},
    {"put: item nested 33 deep",
        B("\x99\x01\x04\x07\xa4jobs" CID16 "\x01\xff\x00"
          "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91"
          "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91"
          "\x91\xc0"),
        false, QP_EPROTO, 0, 0},
    {"put: item over max_message",
        B("\x99\x01\x04\x07\xa4jobs" CID16 "\x01\xff\x00\xc4\x05hello"), false,
        QP_ETOOBIG, 4, 0},
    {"put: frame over max_message + slack",
        B("\x99\x01\x04\x07\xa4jobs" CID16 "\x01\xff\x00\xc0"), false,
        QP_ETOOBIG, 1, 0}, /* len is replaced by a huge one below */
    {"put_many: no items",
        B("\x99\x01\x05\x07\xa4jobs" CID16 "\x01\xff\x00\x90"), false,
        QP_EPROTO, 0, 0},
    {"put_many: items not an array",
        B("\x99\x01\x05\x07\xa4jobs" CID16 "\x01\xff\x00\xc0"), false,
        QP_EPROTO, 0, 0},
    {"put_many: over max_batch",
        B("\x99\x01\x05\x07\xa4jobs" CID16 "\x01\xff\x00\x93\x01\x02\x03"),
        false, QP_ETOOBIG, 0, 2},
    {"get: max_items 0",
        B("\x9b\x01\x06\x07\xa4jobs" CID16 "\x01\x00\x00\x00\x00\x90"), false,
        QP_EPROTO, 0, 0},
    {"get: max_items over max_batch",
        B("\x9b\x01\x06\x07\xa4jobs" CID16 "\x01\x00\x05\x00\x00\x90"), false,
        QP_EPROTO, 0, 4},
    {"get: lease_mode 2",
        B("\x9b\x01\x06\x07\xa4jobs" CID16 "\x01\x00\x01\x02\x00\x90"), false,
        QP_EPROTO, 0, 0},
    {"get: lease_ms over 2^31-1",
        B("\x9b\x01\x06\x07\xa4jobs" CID16
          "\x01\x00\x01\x00\xce\x80\x00\x00\x00\x90"),
        false, QP_EPROTO, 0, 0},
    {"ack: no lease ids", B("\x97\x01\x07\x07\xa4jobs" CID16 "\x01\x90"),
        false, QP_EPROTO, 0, 0},
    {"ack: a lease id is a string",
        B("\x97\x01\x07\x07\xa4jobs" CID16 "\x01\x92\x01\xa1x"), false,
        QP_EPROTO, 0, 0},
    {"touch: no lease ids", B("\x98\x01\x15\x07\xa4jobs" CID16 "\x01\x00\x90"),
        false, QP_EPROTO, 0, 0},
    {"touch: lease_ms missing (7 elements)",
        B("\x97\x01\x15\x07\xa4jobs" CID16 "\x01\x91\x01"), false, QP_EPROTO,
        0, 0},
    {"touch: lease_ms over 2^31-1",
        B("\x98\x01\x15\x07\xa4jobs" CID16 "\x01\xce\x80\x00\x00\x00\x91\x01"),
        false, QP_EPROTO, 0, 0},
    {"touch: lease_ms negative",
        B("\x98\x01\x15\x07\xa4jobs" CID16 "\x01\xff\x91\x01"), false,
        QP_EPROTO, 0, 0},
    {"touch: a lease id negative",
        B("\x98\x01\x15\x07\xa4jobs" CID16 "\x01\x00\x91\xff"), false,
        QP_EPROTO, 0, 0},
    {"touch: lease ids not an array",
        B("\x98\x01\x15\x07\xa4jobs" CID16 "\x01\x00\x01"), false, QP_EPROTO,
        0, 0},
    {"touch: over max_batch",
        B("\x98\x01\x15\x07\xa4jobs" CID16 "\x01\x00\x93\x01\x02\x03"), false,
        QP_ETOOBIG, 0, 2},
    {"touch: an extra field",
        B("\x99\x01\x15\x07\xa4jobs" CID16 "\x01\x00\x91\x01\xc0"), false,
        QP_EPROTO, 0, 0},
    {"reply: touch missing is not an array", B("\x95\x01\x15\x07\x00\xc0"),
        true, QP_EPROTO, 0, 0},
    {"task_done: count 0", B("\x97\x01\x09\x07\xa4jobs" CID16 "\x01\x00"),
        false, QP_EPROTO, 0, 0},
    {"pipe_send: side 2", B("\x99\x01\x11\x07\xa1p" CID16 "\x01\x02\x00\xc0"),
        false, QP_EPROTO, 0, 0},
    {"pipe_send: side -1", B("\x99\x01\x11\x07\xa1p" CID16 "\x01\xff\x00\xc0"),
        false, QP_EPROTO, 0, 0},
    {"pipe_open: side -2", B("\x98\x01\x10\x07\xa1p" CID16 "\x01\xfe\x00"),
        false, QP_EPROTO, 0, 0},
    {"hello: client name with a control byte",
        B("\x95\x01\x01\x07" CID16 "\xa2\x1b["), false, QP_EPROTO, 0, 0},
    {"auth: mac of 31 bytes",
        B("\x95\x01\x02\x07\xc4\x1f"
          "0123456789012345678901234567890\xc4\x00"),
        false, QP_EPROTO, 0, 0},
    {"str8 length past the end", B("\x94\x01\x0b\x07\xd9\xff"), false,
        QP_EPROTO, 0, 0},
    {"reply: no status", B("\x93\x01\x03\x07"), true, QP_EPROTO, 0, 0},
    {"reply: negative status", B("\x94\x01\x03\x07\xff"), true, QP_EPROTO, 0,
        0},
    {"reply: error without a message", B("\x94\x01\x03\x07\x02"), true,
        QP_EPROTO, 0, 0},
    {"reply: stat map32 claims 4 G pairs",
        B("\x95\x01\x0c\x07\x00\xdf\xff\xff\xff\xff"), true, QP_EPROTO, 0, 0},
    {"reply: stat key not a str", B("\x95\x01\x0c\x07\x00\x81\x01\x02"), true,
        QP_EPROTO, 0, 0},
    {"reply: get item with 0 deliveries",
        B("\x95\x01\x06\x07\x00\x91\x93\x01\x00\xc0"), true, QP_EPROTO, 0, 0},
    {"reply: get entry of 2 elements",
        B("\x95\x01\x06\x07\x00\x91\x92\x01\x01"), true, QP_EPROTO, 0, 0},
    {"reply: hello nonce of 8 bytes",
        B("\x98\x01\x01\x07\x00\xa5"
          "0.1.0\x80\xc4\x08"
          "01234567\xc2"),
        true, QP_EPROTO, 0, 0},
    {"reply: version 9", B("\x94\x09\x03\x07\x00"), true, QP_EVERSION, 0, 0},
    {"create: no fsync (11 elements)",
        B("\x9b\x01\x0e\x07\xa4jobs" CID16 "\x01\x00\x00\x00\x00\x01"), false,
        QP_EPROTO, 0, 0},
    {"create: fsync of 33 bytes",
        B("\x9c\x01\x0e\x07\xa4jobs" CID16 "\x01\x00\x00\x00\x00\x01\xd9\x21"
          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        false, QP_EPROTO, 0, 0},
    {"create: fsync with a control byte",
        B("\x9c\x01\x0e\x07\xa4jobs" CID16 "\x01\x00\x00\x00\x00\x01\xa2"
          "a\x01"),
        false, QP_EPROTO, 0, 0},
    {"create: fsync is a uint",
        B("\x9c\x01\x0e\x07\xa4jobs" CID16 "\x01\x00\x00\x00\x00\x01\x05"),
        false, QP_EPROTO, 0, 0},
};

static void
test_wire_malformed_frames(void **state)
{
	qpi_wire_item items[8];
	uint64_t ids[8];
	size_t n = sizeof(bad_frames) / sizeof(bad_frames[0]);

	assert_true(n >= 25);
	for (size_t i = 0; i < n; i++) {
		const struct bad_frame *f = &bad_frames[i];
		qpi_wire_limits lim = {f->max_message, f->max_batch, 0};
		size_t len = f->len;
		uint8_t *buf;
		int rv;

		if (strstr(f->what, "frame over") != NULL) {
			len = 1 + QPI_WIRE_SLACK + 1; /* max_message is 1 */
		}
		/* a copy of exactly len bytes, so ASan sees any overread */
		buf = malloc(len == 0 ? 1 : len);
		assert_non_null(buf);
		memset(buf, 0xc0, len);
		memcpy(buf, f->bytes, f->len);
		if (f->reply) {
			qpi_wire_rep p = {.items = (qpi_wire_item *) items,
			    .items_cap = 8,
			    .ids = ids,
			    .ids_cap = 8};
			rv = qpi_wire_decode_rep(buf, len, &lim, &p);
		} else {
			qpi_wire_req q = {.items = (qpi_wire_item *) items,
			    .items_cap = 8,
			    .ids = ids,
			    .ids_cap = 8};
			rv = qpi_wire_decode_req(buf, len, &lim, &q);
		}
		free(buf);
		if (rv != f->want) {
			fail_msg("frame %zu (%s): got %s (%s), want %s", i,
			    f->what, qp_strerror(rv), qp_errmsg(),
			    qp_strerror(f->want));
		}
		if (qp_errmsg()[0] == '\0') {
			fail_msg("frame %zu (%s): no message", i, f->what);
		}
	}
}

static void
test_wire_decode_error_names_request(void **state)
{
	/* version 2 qsize, and a put with a bad timeout: op and req_id are
	 * still known, so the server can answer the right request */
	static const uint8_t v2[] = {0x94, 0x02, 0x0b, 0x2a, 0xa1, 'x'};
	static const uint8_t put[]
	    = "\x99\x01\x04\xcd\x01\x00\xa4jobs" CID16 "\x01\xfe\x00\xc0";
	qpi_wire_req q = {0};

	assert_int_equal(
	    qpi_wire_decode_req(v2, sizeof(v2), NULL, &q), QP_EVERSION);
	assert_int_equal(q.op, QPI_OP_QSIZE);
	assert_int_equal(q.req_id, 42);
	assert_int_equal(
	    qpi_wire_decode_req(put, sizeof(put) - 1, NULL, &q), QP_EPROTO);
	assert_int_equal(q.op, QPI_OP_PUT);
	assert_int_equal(q.req_id, 256);
	assert_non_null(strstr(qp_errmsg(), "timeout_ms"));
	/* an unknown op is reported as op 0 */
	assert_int_equal(
	    qpi_wire_decode_req("\x93\x01\x63\x07", 4, NULL, &q), QP_EPROTO);
	assert_int_equal(q.op, 0);
	assert_int_equal(q.req_id, 7);
}

static void
test_wire_decode_storage(void **state)
{
	qpi_wire_item its[3], few[2];
	uint64_t ids[2], one[1];
	qpi_wire_req q, d;
	qpi_wire_buf b = {0};

	fill_req(&q, QPI_OP_PUT_MANY, its, ids);
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_OK);
	/* two slots for three items: QP_ETOOBIG, nitems says how many */
	d = (qpi_wire_req) {.items = few, .items_cap = 2};
	assert_int_equal(
	    qpi_wire_decode_req(b.data, b.len, NULL, &d), QP_ETOOBIG);
	assert_int_equal(d.nitems, 3);
	/* no storage at all */
	d = (qpi_wire_req) {0};
	assert_int_equal(
	    qpi_wire_decode_req(b.data, b.len, NULL, &d), QP_ETOOBIG);
	assert_int_equal(d.nitems, 3);
	/* a limit of 2 items per frame */
	d = (qpi_wire_req) {.items = its, .items_cap = 3};
	qpi_wire_limits lim = {0, 2, 0};
	assert_int_equal(
	    qpi_wire_decode_req(b.data, b.len, &lim, &d), QP_ETOOBIG);
	/* ids likewise */
	fill_req(&q, QPI_OP_ACK, its, ids);
	qpi_wire_buf_reset(&b);
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_OK);
	d = (qpi_wire_req) {.ids = one, .ids_cap = 1};
	assert_int_equal(
	    qpi_wire_decode_req(b.data, b.len, NULL, &d), QP_ETOOBIG);
	assert_int_equal(d.nids, 2);
	/* a list reply larger than the room given */
	qpi_wire_item rits[3];
	uint64_t rids[1];
	qpi_wire_qentry qs[2], dq[1];
	qpi_wire_rep p, r;
	fill_rep(&p, QPI_OP_LIST, rits, rids, qs);
	qpi_wire_buf_reset(&b);
	assert_int_equal(qpi_wire_encode_rep(&p, &b), QP_OK);
	r = (qpi_wire_rep) {.queues = dq, .queues_cap = 1};
	assert_int_equal(
	    qpi_wire_decode_rep(b.data, b.len, NULL, &r), QP_ETOOBIG);
	assert_int_equal(r.nqueues, 2);
	qpi_wire_buf_free(&b);
}

static void
test_wire_limits(void **state)
{
	qpi_wire_item its[3];
	uint64_t ids[2];
	qpi_wire_req q, d;
	qpi_wire_buf b = {0};
	size_t big = 100000;
	uint8_t *item = malloc(big + 5);
	qpi_wire_limits lim = {big, 0, 0};

	assert_non_null(item);
	memset(item, 'x', big + 5);
	fill_req(&q, QPI_OP_PUT, its, ids);
	/* a bin of exactly max_message bytes passes (its header is not
	 * counted), one byte more does not */
	size_t hl = qpi_wire_bin_header(big, item);
	q.item = (qpi_wire_item) {item, hl + big, 0, 0};
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_OK);
	d = (qpi_wire_req) {0};
	assert_int_equal(qpi_wire_decode_req(b.data, b.len, &lim, &d), QP_OK);
	assert_int_equal(d.item.len, hl + big);
	lim.max_message = big - 1;
	assert_int_equal(
	    qpi_wire_decode_req(b.data, b.len, &lim, &d), QP_ETOOBIG);
	assert_non_null(strstr(qp_errmsg(), "over the limit"));
	/* a str item counts its whole encoding */
	item[0] = 0xdb;
	item[1] = 0;
	item[2] = (uint8_t) ((big - 5) >> 16);
	item[3] = (uint8_t) ((big - 5) >> 8);
	item[4] = (uint8_t) (big - 5);
	qpi_wire_buf_reset(&b);
	q.item = (qpi_wire_item) {item, big, 0, 0};
	assert_int_equal(qpi_wire_encode_req(&q, &b), QP_OK);
	lim.max_message = big;
	assert_int_equal(qpi_wire_decode_req(b.data, b.len, &lim, &d), QP_OK);
	lim.max_message = big - 1;
	assert_int_equal(
	    qpi_wire_decode_req(b.data, b.len, &lim, &d), QP_ETOOBIG);
	/* a limit near 2^64 does not wrap around into a tiny one */
	lim.max_message = UINT64_MAX;
	assert_int_equal(qpi_wire_decode_req(b.data, b.len, &lim, &d), QP_OK);
	free(item);
	qpi_wire_buf_free(&b);
}

static void
test_wire_writers(void **state)
{
	qpi_wire_buf b = {0};
	qpi_wire_tok t;
	size_t pos = 0;

	/* shortest encodings, and the reader reads them back */
	assert_int_equal(qpi_wire_put_array(&b, 9), QP_OK);
	assert_int_equal(qpi_wire_put_uint(&b, 127), QP_OK);
	assert_int_equal(qpi_wire_put_uint(&b, 128), QP_OK);
	assert_int_equal(qpi_wire_put_int(&b, -32), QP_OK);
	assert_int_equal(qpi_wire_put_int(&b, -33), QP_OK);
	assert_int_equal(qpi_wire_put_int(&b, 5), QP_OK);
	assert_int_equal(qpi_wire_put_double(&b, 0.5), QP_OK);
	assert_int_equal(qpi_wire_put_str(&b, "ab", 2), QP_OK);
	assert_int_equal(qpi_wire_put_ext(&b, -1, "\0\0\0\1", 4), QP_OK);
	assert_int_equal(qpi_wire_put_map(&b, 0), QP_OK);
	static const uint8_t want[] = {0x99, 0x7f, 0xcc, 0x80, 0xe0, 0xd0,
	    0xdf, 0x05, 0xcb, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0, 0xa2, 'a', 'b',
	    0xd6, 0xff, 0, 0, 0, 1, 0x80};
	assert_int_equal(b.len, sizeof(want));
	assert_memory_equal(b.data, want, sizeof(want));
	assert_int_equal(qpi_wire_check_value(b.data, b.len), QP_OK);
	assert_int_equal(qpi_wire_next(b.data, b.len, &pos, &t), QP_OK);
	assert_int_equal(t.type, QPI_WIRE_ARRAY);
	assert_int_equal(t.len, 9);
	assert_int_equal(qpi_wire_next(b.data, b.len, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_UINT && t.u == 127);
	assert_int_equal(qpi_wire_next(b.data, b.len, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_UINT && t.u == 128);
	assert_int_equal(qpi_wire_next(b.data, b.len, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_INT && t.i == -32);
	assert_int_equal(qpi_wire_next(b.data, b.len, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_INT && t.i == -33);
	/* int 5 is written as a positive fixint and read as UINT */
	assert_int_equal(qpi_wire_next(b.data, b.len, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_UINT && t.u == 5);
	assert_int_equal(qpi_wire_next(b.data, b.len, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_FLOAT && t.f == 0.5 && !t.f32);
	assert_int_equal(qpi_wire_next(b.data, b.len, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_STR && t.len == 2);
	assert_int_equal(qpi_wire_next(b.data, b.len, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_EXT && t.ext == -1 && t.len == 4);
	/* int8 0x7f encoded non-minimally (d0 7f) still reads as UINT 127 */
	pos = 0;
	assert_int_equal(qpi_wire_next("\xd0\x7f", 2, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_UINT && t.u == 127);
	pos = 0;
	assert_int_equal(
	    qpi_wire_next("\xd3\x80\0\0\0\0\0\0\0", 9, &pos, &t), QP_OK);
	assert_true(t.type == QPI_WIRE_INT && t.i == INT64_MIN);
	qpi_wire_buf_free(&b);
}

/* ---- PROTOCOL.md ---- */

static char *
read_file(const char *rel, size_t *lenp)
{
	const char *dir = getenv("QP_SOURCE_DIR");
	char path[4096];
	FILE *f;
	char *buf;
	long n;

	if (dir == NULL) {
		fail_msg("QP_SOURCE_DIR is not set (run through ctest)");
	}
	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	if ((f = fopen(path, "rb")) == NULL) {
		fail_msg("cannot open %s", path);
	}
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t) n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t) n, f), (size_t) n);
	buf[n] = '\0';
	fclose(f);
	*lenp = (size_t) n;
	return buf;
}

static void
test_wire_protocol_doc_names_everything(void **state)
{
	size_t len;
	char *doc = read_file("proto/PROTOCOL.md", &len);
	char row[128];

	/* the op table: "| 4 | `put` |" */
	for (uint32_t op = 1; op <= QPI_OP_MAX; op++) {
		snprintf(row, sizeof(row), "| %u | `%s` |", op,
		    qpi_wire_op_name(op));
		if (strstr(doc, row) == NULL) {
			fail_msg("PROTOCOL.md lacks the op row '%s'", row);
		}
		/* and a section of its own */
		snprintf(row, sizeof(row), "### `%s`", qpi_wire_op_name(op));
		if (strstr(doc, row) == NULL) {
			fail_msg("PROTOCOL.md lacks the section '%s'", row);
		}
	}
	/* the error table, from the one list: "| 2 | `EEMPTY` |" */
#define QP_ERR(name, num, text)                                        \
	snprintf(row, sizeof(row), "| %d | `%s` |", num, #name);       \
	if (strstr(doc, row) == NULL) {                                \
		fail_msg("PROTOCOL.md lacks the error row '%s'", row); \
	}
#include "qpipe_errors.def"
#undef QP_ERR
	free(doc);
}

/* Reads the hex block that follows "<!-- example NAME -->" in the doc. */
static uint8_t *
doc_example(const char *doc, const char *name, size_t *lenp)
{
	char mark[128];
	const char *p, *end;
	uint8_t *out;
	size_t n = 0;

	snprintf(mark, sizeof(mark), "<!-- example %s -->", name);
	if ((p = strstr(doc, mark)) == NULL) {
		fail_msg("PROTOCOL.md lacks '%s'", mark);
	}
	if ((p = strstr(p, "```text\n")) == NULL) {
		fail_msg("example %s has no ```text block", name);
	}
	p += 8;
	if ((end = strstr(p, "```")) == NULL) {
		fail_msg("example %s: unterminated block", name);
	}
	out = malloc((size_t) (end - p) / 2 + 1);
	assert_non_null(out);
	while (p < end) {
		unsigned v;
		if (*p == ' ' || *p == '\n') {
			p++;
			continue;
		}
		if (sscanf(p, "%2x", &v) != 1) {
			fail_msg("example %s: not hex near '%.10s'", name, p);
		}
		out[n++] = (uint8_t) v;
		p += 2;
	}
	*lenp = n;
	return out;
}

/* The examples of PROTOCOL.md, made by this codec (print them with
 * `test_wire --examples`). */
static void
example_frames(qpi_wire_buf *put_req, qpi_wire_buf *put_rep,
    qpi_wire_buf *get_req, qpi_wire_buf *get_rep, qpi_wire_buf *ack_req,
    qpi_wire_buf *ack_rep, qpi_wire_buf *empty_rep)
{
	static qpi_wire_item got[1];
	static uint64_t lease[1] = {1};
	qpi_wire_req q = {0};
	qpi_wire_rep p = {0};

	q.op = QPI_OP_PUT;
	q.req_id = 1;
	strcpy(q.name, "jobs");
	memcpy(q.client_id, client16, 16);
	q.seq = 1;
	q.timeout = QP_FOREVER;
	q.flags = QPI_PUT_CREATE;
	q.item = (qpi_wire_item) {item_bin, sizeof(item_bin), 0, 0};
	assert_int_equal(qpi_wire_encode_req(&q, put_req), QP_OK);
	p.op = QPI_OP_PUT;
	p.req_id = 1;
	assert_int_equal(qpi_wire_encode_rep(&p, put_rep), QP_OK);

	q.op = QPI_OP_GET;
	q.req_id = 2;
	q.seq = 2;
	q.timeout = 1000;
	q.flags = 0;
	q.max_items = 1;
	q.lease_mode = QPI_LEASE_CONFIRM;
	q.lease_ms = 0;
	assert_int_equal(qpi_wire_encode_req(&q, get_req), QP_OK);
	got[0] = (qpi_wire_item) {item_bin, sizeof(item_bin), 1, 1};
	p.op = QPI_OP_GET;
	p.req_id = 2;
	p.items = got;
	p.nitems = 1;
	assert_int_equal(qpi_wire_encode_rep(&p, get_rep), QP_OK);

	q.op = QPI_OP_ACK;
	q.req_id = 3;
	q.seq = 3;
	q.ids = lease;
	q.nids = 1;
	assert_int_equal(qpi_wire_encode_req(&q, ack_req), QP_OK);
	p.op = QPI_OP_ACK;
	p.req_id = 3;
	p.nitems = 0;
	assert_int_equal(qpi_wire_encode_rep(&p, ack_rep), QP_OK);

	p.op = QPI_OP_GET;
	p.req_id = 4;
	p.status = QP_EEMPTY;
	strcpy(p.errmsg, "queue 'jobs' is empty");
	assert_int_equal(qpi_wire_encode_rep(&p, empty_rep), QP_OK);
}

static void
test_wire_protocol_doc_examples(void **state)
{
	static const char *const names[]
	    = {"put-request", "put-reply", "get-request", "get-reply",
	        "ack-request", "ack-reply", "get-empty-reply"};
	qpi_wire_buf f[7] = {{0}};
	qpi_wire_item its[4];
	uint64_t ids[4];
	size_t len, n;
	char *doc = read_file("proto/PROTOCOL.md", &len);

	example_frames(&f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6]);
	for (int i = 0; i < 7; i++) {
		uint8_t *hex = doc_example(doc, names[i], &n);
		/* the doc shows exactly what the codec writes */
		if (n != f[i].len || memcmp(hex, f[i].data, n) != 0) {
			fail_msg("PROTOCOL.md example %s differs from the "
			         "codec's bytes (run test_wire --examples)",
			    names[i]);
		}
		/* and it decodes as the doc states */
		if (i % 2 == 0 && i < 6) {
			qpi_wire_req q = {.items = its,
			    .items_cap = 4,
			    .ids = ids,
			    .ids_cap = 4};
			assert_int_equal(
			    qpi_wire_decode_req(hex, n, NULL, &q), QP_OK);
			assert_string_equal(q.name, "jobs");
			assert_memory_equal(q.client_id, client16, 16);
			assert_int_equal(q.seq, (uint64_t) i / 2 + 1);
			if (q.op == QPI_OP_PUT) {
				assert_int_equal(q.timeout, -1);
				assert_int_equal(q.flags, QPI_PUT_CREATE);
				assert_memory_equal(
				    q.item.data, item_bin, sizeof(item_bin));
			} else if (q.op == QPI_OP_GET) {
				assert_int_equal(q.timeout, 1000);
				assert_int_equal(q.max_items, 1);
				assert_int_equal(q.lease_mode, 0);
				assert_int_equal(q.nids, 0);
			} else {
				assert_int_equal(q.op, QPI_OP_ACK);
				assert_int_equal(q.nids, 1);
				assert_int_equal(q.ids[0], 1);
			}
		} else {
			qpi_wire_rep p = {.items = its,
			    .items_cap = 4,
			    .ids = ids,
			    .ids_cap = 4};
			assert_int_equal(
			    qpi_wire_decode_rep(hex, n, NULL, &p), QP_OK);
			if (i == 3) {
				assert_int_equal(p.status, QP_OK);
				assert_int_equal(p.nitems, 1);
				assert_int_equal(p.items[0].lease_id, 1);
				assert_int_equal(p.items[0].deliveries, 1);
				size_t off, bl;
				assert_true(
				    qpi_wire_bin_unwrap(p.items[0].data,
				        p.items[0].len, &off, &bl));
				assert_int_equal(bl, 5);
				assert_memory_equal(
				    p.items[0].data + off, "hello", 5);
			} else if (i == 6) {
				assert_int_equal(p.status, QP_EEMPTY);
				assert_string_equal(
				    p.errmsg, "queue 'jobs' is empty");
			} else {
				assert_int_equal(p.status, QP_OK);
			}
		}
		free(hex);
		qpi_wire_buf_free(&f[i]);
	}
	free(doc);
}

/* The touch example of PROTOCOL.md: the codec writes exactly those bytes,
 * and they decode as the doc states. */
static void
test_wire_touch_doc_example(void **state)
{
	uint64_t lease[1] = {1}, ids[4];
	qpi_wire_req q = {0}, d = {.ids = ids, .ids_cap = 4};
	qpi_wire_rep p = {0}, dp = {.ids = ids, .ids_cap = 4};
	qpi_wire_buf req = {0}, rep = {0};
	size_t len, n;
	char *doc = read_file("proto/PROTOCOL.md", &len);
	uint8_t *hex;

	(void) state;
	q.op = QPI_OP_TOUCH;
	q.req_id = 5;
	strcpy(q.name, "jobs");
	memcpy(q.client_id, client16, 16);
	q.seq = 4;
	q.lease_ms = 60000;
	q.ids = lease;
	q.nids = 1;
	assert_int_equal(qpi_wire_encode_req(&q, &req), QP_OK);
	p.op = QPI_OP_TOUCH;
	p.req_id = 5;
	assert_int_equal(qpi_wire_encode_rep(&p, &rep), QP_OK);

	hex = doc_example(doc, "touch-request", &n);
	if (n != req.len || memcmp(hex, req.data, n) != 0) {
		fail_msg("PROTOCOL.md example touch-request differs from the "
		         "codec's bytes");
	}
	assert_int_equal(qpi_wire_decode_req(hex, n, NULL, &d), QP_OK);
	assert_int_equal(d.op, QPI_OP_TOUCH);
	assert_string_equal(d.name, "jobs");
	assert_int_equal(d.seq, 4);
	assert_int_equal(d.lease_ms, 60000);
	assert_int_equal(d.nids, 1);
	assert_int_equal(d.ids[0], 1);
	assert_true(qpi_wire_op_dedup(QPI_OP_TOUCH));
	assert_string_equal(qpi_wire_op_name(QPI_OP_TOUCH), "touch");
	free(hex);

	hex = doc_example(doc, "touch-reply", &n);
	if (n != rep.len || memcmp(hex, rep.data, n) != 0) {
		fail_msg("PROTOCOL.md example touch-reply differs from the "
		         "codec's bytes");
	}
	assert_int_equal(qpi_wire_decode_rep(hex, n, NULL, &dp), QP_OK);
	assert_int_equal(dp.op, QPI_OP_TOUCH);
	assert_int_equal(dp.status, QP_OK);
	assert_int_equal(dp.nids, 0);
	free(hex);

	/* no lease ids: the encoder refuses, as for ack */
	q.nids = 0;
	qpi_wire_buf_reset(&req);
	assert_int_equal(qpi_wire_encode_req(&q, &req), QP_EINVAL);
	/* lease_ms over 2^31-1: refused too */
	q.nids = 1;
	q.lease_ms = (uint64_t) QPI_WIRE_MS_MAX + 1;
	assert_int_equal(qpi_wire_encode_req(&q, &req), QP_EINVAL);
	qpi_wire_buf_free(&req);
	qpi_wire_buf_free(&rep);
	free(doc);
}

static int
print_examples(void)
{
	static const char *const names[]
	    = {"put-request", "put-reply", "get-request", "get-reply",
	        "ack-request", "ack-reply", "get-empty-reply"};
	qpi_wire_buf f[7] = {{0}};

	example_frames(&f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6]);
	for (int i = 0; i < 7; i++) {
		printf("%s:\n", names[i]);
		for (size_t k = 0; k < f[i].len; k++) {
			printf("%02x%s", f[i].data[k],
			    (k + 1) % 16 == 0 || k + 1 == f[i].len ? "\n"
			                                           : " ");
		}
		qpi_wire_buf_free(&f[i]);
	}
	return 0;
}

/* ---- JSON ---- */

static char *
json_rt(const char *in, uint8_t **mpp, size_t *mplenp)
{
	void *mp;
	size_t mplen, jlen;
	char *out;
	int rv;

	rv = qpi_json_to_msgpack(in, strlen(in), &mp, &mplen);
	if (rv != QP_OK) {
		fail_msg("JSON '%s': %s", in, qp_errmsg());
	}
	assert_int_equal(qpi_wire_check_value(mp, mplen), QP_OK);
	rv = qpi_msgpack_to_json(mp, mplen, &out, &jlen);
	if (rv != QP_OK) {
		fail_msg("back to JSON '%s': %s", in, qp_errmsg());
	}
	assert_int_equal(strlen(out), jlen);
	if (mpp != NULL) {
		*mpp = mp;
		*mplenp = mplen;
	} else {
		free(mp);
	}
	return out;
}

static void
test_wire_json_roundtrip(void **state)
{
	static const struct {
		const char *in;
		const char *out;
	} cases[] = {
	    {"{\"n\": 5}", "{\"n\":5}"},
	    {" [1, -2, 3.5, true, false, null] ",
	        "[1,-2,3.5,true,false,null]"},
	    {"\"plain\"", "\"plain\""},
	    {"\"q\\\"b\\\\s\\/n\\nt\\tr\\rb\\bf\\f\"",
	        "\"q\\\"b\\\\s/n\\nt\\tr\\rb\\bf\\f\""},
	    {"\"\\u0001\\u001f\\u007f\"", "\"\\u0001\\u001f\x7f\""},
	    {"\"\\u00e9\\u20ac\\ud83d\\ude00\"",
	        "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\""},
	    {"\"\xc3\xa9t\xc3\xa9\"", "\"\xc3\xa9t\xc3\xa9\""},
	    {"0", "0"},
	    {"-0", "0"},
	    {"18446744073709551615", "18446744073709551615"},
	    {"-9223372036854775808", "-9223372036854775808"},
	    {"18446744073709551616", "1.8446744073709552e+19"},
	    {"0.1", "0.1"},
	    {"1e2", "100.0"},
	    {"1e16", "1e+16"},
	    {"1e15", "1000000000000000.0"},
	    {"0.0001", "0.0001"},
	    {"0.00001", "1e-05"},
	    {"123456.789e3", "123456789.0"},
	    {"2.5e-300", "2.5e-300"},
	    {"1.7976931348623157e308", "1.7976931348623157e+308"},
	    {"-1.5E-3", "-0.0015"},
	    {"1e400", "null"},
	    {"{}", "{}"},
	    {"[]", "[]"},
	    {"[[[]]]", "[[[]]]"},
	    {"{\"a\":{\"b\":[1,{\"c\":null}]}}",
	        "{\"a\":{\"b\":[1,{\"c\":null}]}}"},
	    {"{\"$bin\": \"AAEC/w==\"}", "{\"$bin\":\"AAEC/w==\"}"},
	    {"{\"$bin\": \"\"}", "\"\""},
	    {"{\"$bin\": \"aGk=\"}", "\"hi\""},
	    {"{\"$ext\": [-1, \"AAAAAQ==\"]}", "{\"$ext\":[-1,\"AAAAAQ==\"]}"},
	    {"{\"$bin\": 5}", "{\"$bin\":5}"},
	    {"{\"$bin\": \"aGk=\", \"x\": 1}", "{\"$bin\":\"aGk=\",\"x\":1}"},
	    {"{\"a\":1,\"a\":2}", "{\"a\":1,\"a\":2}"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *out = json_rt(cases[i].in, NULL, NULL);
		if (strcmp(out, cases[i].out) != 0) {
			fail_msg("JSON '%s' came back as '%s', want '%s'",
			    cases[i].in, out, cases[i].out);
		}
		/* the output is JSON that reads back to itself */
		char *again = json_rt(out, NULL, NULL);
		assert_string_equal(again, out);
		free(again);
		free(out);
	}
}

static void
test_wire_json_msgpack_bytes(void **state)
{
	uint8_t *mp;
	size_t n;
	char *out;

	/* what a C program getting the object sees */
	out = json_rt("{\"n\": 5}", &mp, &n);
	assert_int_equal(n, 4);
	assert_memory_equal(mp, "\x81\xa1n\x05", 4);
	free(mp);
	free(out);
	out = json_rt("-1", &mp, &n);
	assert_memory_equal(mp, "\xff", 1);
	free(mp);
	free(out);
	out = json_rt("{\"$bin\":\"AAEC\"}", &mp, &n);
	assert_int_equal(n, 5);
	assert_memory_equal(mp, "\xc4\x03\x00\x01\x02", 5);
	free(mp);
	free(out);
	/* a 40-byte string takes a str8 header; 16 members a map16 */
	out = json_rt("\"0123456789012345678901234567890123456789\"", &mp, &n);
	assert_int_equal(n, 42);
	assert_memory_equal(mp, "\xd9\x28", 2);
	free(mp);
	free(out);
	out = json_rt(
	    "{\"a\":0,\"b\":0,\"c\":0,\"d\":0,\"e\":0,\"f\":0,\"g\":0,"
	    "\"h\":0,\"i\":0,\"j\":0,\"k\":0,\"l\":0,\"m\":0,\"n\":0,"
	    "\"o\":0,\"p\":0}",
	    &mp, &n);
	assert_memory_equal(mp, "\xde\x00\x10", 3);
	free(mp);
	free(out);
}

static void
test_wire_json_from_msgpack_types(void **state)
{
	static const struct {
		const char *mp;
		size_t len;
		const char *json;
	} cases[] = {
	    {"\xc4\x05hello", 7, "\"hello\""},
	    {"\xc4\x03\xff\x00\x01", 5, "{\"$bin\":\"/wAB\"}"},
	    {"\xc4\x02\x00\x01", 4, "{\"$bin\":\"AAE=\"}"},
	    {"\xa2\xff\x41", 3,
	        "\"\xef\xbf\xbd"
	        "A\""},
	    {"\xca\x3f\xc0\x00\x00", 5, "1.5"},
	    {"\xca\x3d\xcc\xcc\xcd", 5, "0.1"},
	    {"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", 9, "null"},
	    {"\xd6\xff\x00\x00\x00\x01", 6, "{\"$ext\":[-1,\"AAAAAQ==\"]}"},
	    {"\x82\x01\x02\xc0\x03", 5, "{\"1\":2,\"null\":3}"},
	    {"\x81\x92\x01\x02\xa1x", 6, "{\"$msgpack:kgEC\":\"x\"}"},
	    {"\x81\xc4\x01\x00\x01", 5, "{\"$msgpack:xAEA\":1}"},
	    {"\x81\xcb\x3f\xf8\0\0\0\0\0\0\x01", 11, "{\"1.5\":1}"},
	    {"\x81\xc4\x01k\x01", 5, "{\"k\":1}"},
	    {"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9,
	        "18446744073709551615"},
	};
	char *out;
	size_t n;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rv
		    = qpi_msgpack_to_json(cases[i].mp, cases[i].len, &out, &n);
		if (rv != QP_OK) {
			fail_msg("case %zu: %s", i, qp_errmsg());
		}
		if (strcmp(out, cases[i].json) != 0) {
			fail_msg("case %zu: got '%s', want '%s'", i, out,
			    cases[i].json);
		}
		free(out);
	}
	/* not one value: refused */
	assert_int_equal(
	    qpi_msgpack_to_json("\xc0\xc0", 2, &out, &n), QP_EINVAL);
	assert_int_equal(
	    qpi_msgpack_to_json("\xdd\xff\0\0\0", 5, &out, &n), QP_EINVAL);
	assert_int_equal(qpi_msgpack_to_json("", 0, &out, &n), QP_EINVAL);
}

static void
test_wire_json_malformed(void **state)
{
	static const struct {
		const char *in;
		const char *msg;
	} bad[] = {
	    {"", "expected a value"},
	    {"   ", "expected a value"},
	    {"[1,", "expected a value"},
	    {"[1,]", "expected a value"},
	    {"[1 2]", "expected ',' or ']'"},
	    {"{\"a\" 1}", "expected ':'"},
	    {"{\"a\":1,}", "expected a string key"},
	    {"{a:1}", "expected a string key"},
	    {"{\"a\":1", "expected ',' or '}'"},
	    {"\"abc", "unterminated string"},
	    {"\"a\nb\"", "control character"},
	    {"\"\\x41\"", "unknown escape"},
	    {"\"\\u12\"", "four hex digits"},
	    {"\"\\ud800\"", "high surrogate"},
	    {"\"\\ud800\\u0041\"", "high surrogate"},
	    {"\"\\udc00\"", "lone low surrogate"},
	    {"\"\xc3\"", "invalid UTF-8"},
	    {"\"\xed\xa0\x80\"", "invalid UTF-8"},
	    {"\"\xc0\xaf\"", "invalid UTF-8"},
	    {"01", "leading zeros"},
	    {"-", "a digit must follow '-'"},
	    {"1.", "a digit must follow '.'"},
	    {"1e", "a digit must follow the exponent"},
	    {"+1", "expected a value"},
	    {".5", "expected a value"},
	    {"NaN", "expected a value"},
	    {"tru", "expected a value"},
	    {"nul", "expected a value"},
	    {"1 2", "text after the value"},
	    {"{} x", "text after the value"},
	    {"// c\n1", "expected a value"},
	    {"{\"$bin\": \"not base64!\"}", "base64"},
	    {"{\"$bin\": \"QQ\"}", "base64"},
	    {"{\"$ext\": [300, \"AA==\"]}", "$ext"},
	    {"{\"$ext\": \"AA==\"}", "$ext"},
	};
	void *mp;
	size_t n;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rv = qpi_json_to_msgpack(
		    bad[i].in, strlen(bad[i].in), &mp, &n);
		if (rv != QP_EINVAL) {
			fail_msg(
			    "'%s': got %d, want QP_EINVAL", bad[i].in, rv);
		}
		if (strstr(qp_errmsg(), bad[i].msg) == NULL) {
			fail_msg("'%s': message '%s' lacks '%s'", bad[i].in,
			    qp_errmsg(), bad[i].msg);
		}
	}
	/* a NUL inside the text is not JSON */
	assert_int_equal(qpi_json_to_msgpack("1\0", 2, &mp, &n), QP_EINVAL);
	/* line and column in the message */
	assert_int_equal(
	    qpi_json_to_msgpack("[1,\n 2,\n x]", 12, &mp, &n), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "line 3, column 2"));
}

static void
test_wire_json_depth(void **state)
{
	char buf[2 * (QPI_WIRE_MAX_DEPTH + 1) + 1];
	void *mp;
	size_t n;

	/* QPI_WIRE_MAX_DEPTH levels pass, one more is refused */
	memset(buf, '[', QPI_WIRE_MAX_DEPTH);
	memset(buf + QPI_WIRE_MAX_DEPTH, ']', QPI_WIRE_MAX_DEPTH);
	assert_int_equal(
	    qpi_json_to_msgpack(buf, 2 * QPI_WIRE_MAX_DEPTH, &mp, &n), QP_OK);
	assert_int_equal(qpi_wire_check_value(mp, n), QP_OK);
	free(mp);
	memset(buf, '[', QPI_WIRE_MAX_DEPTH + 1);
	memset(buf + QPI_WIRE_MAX_DEPTH + 1, ']', QPI_WIRE_MAX_DEPTH + 1);
	assert_int_equal(
	    qpi_json_to_msgpack(buf, 2 * (QPI_WIRE_MAX_DEPTH + 1), &mp, &n),
	    QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "deeper"));
	/* a deep attack is refused fast, without deep recursion */
	size_t big = 1000000;
	char *deep = malloc(big);
	assert_non_null(deep);
	memset(deep, '[', big);
	assert_int_equal(qpi_json_to_msgpack(deep, big, &mp, &n), QP_EINVAL);
	free(deep);
}

static void
test_wire_json_large(void **state)
{
	/* 70000 elements: array32 header; a 70000-byte string: str32 */
	size_t cnt = 70000, cap = cnt * 2 + 16, k = 0;
	char *txt = malloc(cap);
	void *mp;
	size_t n, jl;
	char *back;

	assert_non_null(txt);
	txt[k++] = '[';
	for (size_t i = 0; i < cnt; i++) {
		txt[k++] = '7';
		txt[k++] = i + 1 < cnt ? ',' : ']';
	}
	assert_int_equal(qpi_json_to_msgpack(txt, k, &mp, &n), QP_OK);
	assert_int_equal(n, 5 + cnt);
	assert_memory_equal(mp, "\xdd\x00\x01\x11\x70", 5);
	assert_int_equal(qpi_msgpack_to_json(mp, n, &back, &jl), QP_OK);
	assert_int_equal(jl, k);
	assert_memory_equal(back, txt, k);
	free(back);
	free(mp);
	k = 0;
	txt[k++] = '"';
	memset(txt + k, 'z', cnt);
	k += cnt;
	txt[k++] = '"';
	assert_int_equal(qpi_json_to_msgpack(txt, k, &mp, &n), QP_OK);
	assert_int_equal(n, 5 + cnt);
	assert_memory_equal(mp, "\xdb\x00\x01\x11\x70", 5);
	free(mp);
	free(txt);
}

/* `test_wire --write-corpus DIR`: writes the fuzzer's seed corpus (see
 * tests/fuzz.cmake): a valid request and reply of every op, an error reply,
 * the doc's examples, every malformed frame above, msgpack values and JSON
 * texts. */
static void
corpus_put(const char *dir, const char *name, const void *p, size_t n)
{
	char path[4096], slug[96];
	size_t k = 0;
	FILE *f;

	for (const char *c = name; *c != '\0' && k + 1 < sizeof(slug); c++) {
		char ch = *c;
		if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) {
			slug[k++] = ch;
		} else if (ch >= 'A' && ch <= 'Z') {
			slug[k++] = (char) (ch - 'A' + 'a');
		} else if (k > 0 && slug[k - 1] != '-') {
			slug[k++] = '-';
		}
	}
	while (k > 0 && slug[k - 1] == '-') {
		k--;
	}
	slug[k] = '\0';
	snprintf(path, sizeof(path), "%s/%s", dir, slug);
	if ((f = fopen(path, "wb")) == NULL || fwrite(p, 1, n, f) != n) {
		fprintf(stderr, "cannot write %s\n", path);
		exit(1);
	}
	fclose(f);
}

static int
write_corpus(const char *dir)
{
	static const char *const json[]
	    = {"{\"n\": 5}", "[1, -2, 3.5, true, false, null, \"x\"]",
	        "\"q\\\"\\u00e9\\ud83d\\ude00\\n\"", "-9223372036854775808",
	        "18446744073709551616", "1e400", "-1.5E-3",
	        "{\"$bin\": \"AAEC/w==\"}", "{\"$ext\": [-1, \"AAAAAQ==\"]}",
	        "{\"a\":{\"b\":[1,{\"c\":null}]}}", "[1,", "\"\\ud800\"", "01",
	        "{\"$bin\": \"QQ\"}",
	        ("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]"
	         "]]]]]]]]]]]]]]]]]]]]]]"),
	        "\"\xc3\"", "{\"a\" 1}"};
	static const struct {
		const char *name;
		const char *mp;
		size_t len;
	} values[] = {
	    {"value-bin-text", "\xc4\x05hello", 7},
	    {"value-bin-binary", "\xc4\x03\xff\x00\x01", 5},
	    {"value-str-bad-utf8", "\xa2\xff\x41", 3},
	    {"value-float32", "\xca\x3d\xcc\xcc\xcd", 5},
	    {"value-nan", "\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", 9},
	    {"value-timestamp", "\xd6\xff\x00\x00\x00\x01", 6},
	    {"value-map-int-keys", "\x82\x01\x02\xc0\x03", 5},
	    {"value-map-array-key", "\x81\x92\x01\x02\xa1x", 6},
	    {"value-map-bin-dollar", "\x81\xa4$bin\xa4QQ==", 11},
	    {"value-array32-lie", "\xdd\xff\x00\x00\x00", 5},
	};
	qpi_wire_item its[3];
	uint64_t ids[2];
	qpi_wire_qentry qs[2];
	qpi_wire_req q;
	qpi_wire_rep p;
	qpi_wire_buf b = {0};
	qpi_wire_buf f[7] = {{0}};
	char name[128];

	for (uint32_t op = 1; op <= QPI_OP_MAX; op++) {
		fill_req(&q, op, its, ids);
		qpi_wire_buf_reset(&b);
		if (qpi_wire_encode_req(&q, &b) != QP_OK) {
			return 1;
		}
		snprintf(name, sizeof(name), "req-%s", qpi_wire_op_name(op));
		corpus_put(dir, name, b.data, b.len);
		fill_rep(&p, op, its, ids, qs);
		qpi_wire_buf_reset(&b);
		if (qpi_wire_encode_rep(&p, &b) != QP_OK) {
			return 1;
		}
		snprintf(name, sizeof(name), "rep-%s", qpi_wire_op_name(op));
		corpus_put(dir, name, b.data, b.len);
		p.status = QP_ENOENT;
		strcpy(p.errmsg, "no such queue 'jobs'");
		qpi_wire_buf_reset(&b);
		if (qpi_wire_encode_rep(&p, &b) != QP_OK) {
			return 1;
		}
		snprintf(
		    name, sizeof(name), "rep-%s-error", qpi_wire_op_name(op));
		corpus_put(dir, name, b.data, b.len);
	}
	example_frames(&f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6]);
	for (int i = 0; i < 7; i++) {
		snprintf(name, sizeof(name), "doc-example-%d", i);
		corpus_put(dir, name, f[i].data, f[i].len);
		qpi_wire_buf_free(&f[i]);
	}
	for (size_t i = 0; i < sizeof(bad_frames) / sizeof(bad_frames[0]);
	     i++) {
		snprintf(
		    name, sizeof(name), "bad-%02zu-%s", i, bad_frames[i].what);
		corpus_put(dir, name, bad_frames[i].bytes, bad_frames[i].len);
	}
	for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
		corpus_put(dir, values[i].name, values[i].mp, values[i].len);
	}
	for (size_t i = 0; i < sizeof(json) / sizeof(json[0]); i++) {
		snprintf(name, sizeof(name), "json-%02zu", i);
		corpus_put(dir, name, json[i], strlen(json[i]));
	}
	qpi_wire_buf_free(&b);
	return 0;
}

/* `test_wire --decode-req|--decode-rep FILE`: prints what the codec reads
 * in a frame, for tests/it_protocol_doc.sh. Exit 0 if it decodes. */
static int
decode_file(const char *mode, const char *path)
{
	static qpi_wire_item its[QPI_WIRE_DEFAULT_BATCH];
	static uint64_t ids[QPI_WIRE_DEFAULT_BATCH];
	static qpi_wire_qentry qs[256];
	uint8_t *buf = malloc(QP_DEFAULT_MAX_MESSAGE + QPI_WIRE_SLACK + 1);
	FILE *f = fopen(path, "rb");
	size_t n;
	int rv;

	if (f == NULL || buf == NULL) {
		fprintf(stderr, "cannot read %s\n", path);
		return 2;
	}
	n = fread(buf, 1, QP_DEFAULT_MAX_MESSAGE + QPI_WIRE_SLACK + 1, f);
	fclose(f);
	if (strcmp(mode, "--decode-req") == 0) {
		qpi_wire_req q = {.items = its,
		    .items_cap = QPI_WIRE_DEFAULT_BATCH,
		    .ids = ids,
		    .ids_cap = QPI_WIRE_DEFAULT_BATCH};
		rv = qpi_wire_decode_req(buf, n, NULL, &q);
		printf("%s op=%s req_id=%llu", rv == QP_OK ? "ok" : "error",
		    q.op != 0 ? qpi_wire_op_name(q.op) : "?",
		    (unsigned long long) q.req_id);
		if (rv == QP_OK) {
			printf(" name=%s seq=%llu timeout=%lld flags=%u",
			    q.name, (unsigned long long) q.seq,
			    (long long) q.timeout, q.flags);
			if (q.item.len > 0) {
				printf(" item=");
				for (size_t i = 0; i < q.item.len; i++) {
					printf("%02x", q.item.data[i]);
				}
			}
		}
	} else {
		qpi_wire_rep p = {.items = its,
		    .items_cap = QPI_WIRE_DEFAULT_BATCH,
		    .ids = ids,
		    .ids_cap = QPI_WIRE_DEFAULT_BATCH,
		    .queues = qs,
		    .queues_cap = 256};
		rv = qpi_wire_decode_rep(buf, n, NULL, &p);
		printf("%s op=%s req_id=%llu status=%d",
		    rv == QP_OK ? "ok" : "error",
		    p.op != 0 ? qpi_wire_op_name(p.op) : "?",
		    (unsigned long long) p.req_id, p.status);
	}
	if (rv != QP_OK) {
		printf(" (%s: %s)", qp_strerror(rv), qp_errmsg());
	}
	printf("\n");
	free(buf);
	return rv == QP_OK ? 0 : 1;
}

/* A buffer on the caller's memory: what fits stays there (the same bytes
 * as a malloc'd buffer's), what outgrows it moves to the heap with the
 * bytes so far, and freeing it leaves the caller's memory alone. */
static void
test_wire_buf_on(void **state)
{
	uint8_t mem[16], big[300];
	qpi_wire_buf b, h = {0};
	(void) state;

	memset(big, 'z', sizeof(big));
	memset(mem, 0xAA, sizeof(mem));
	qpi_wire_buf_on(&b, mem, sizeof(mem));
	assert_int_equal(qpi_wire_put_str(&b, "hello", 5), QP_OK);
	assert_int_equal(qpi_wire_put_str(&h, "hello", 5), QP_OK);
	assert_ptr_equal(b.data, mem);
	assert_int_equal(b.len, h.len);
	assert_memory_equal(b.data, h.data, h.len);
	assert_int_equal(qpi_wire_put_bin(&b, big, sizeof(big)), QP_OK);
	assert_int_equal(qpi_wire_put_bin(&h, big, sizeof(big)), QP_OK);
	assert_ptr_not_equal(b.data, mem);
	assert_false(b.borrowed);
	assert_int_equal(b.len, h.len);
	assert_memory_equal(b.data, h.data, h.len);
	qpi_wire_buf_free(&b); /* the heap copy (ASan: no leak, no bad free) */
	qpi_wire_buf_free(&h);
	qpi_wire_buf_on(&b, mem, sizeof(mem));
	assert_int_equal(qpi_wire_put_str(&b, "x", 1), QP_OK);
	qpi_wire_buf_free(&b); /* borrowed: not freed */
	assert_null(b.data);
	assert_int_equal(mem[0], 0xa1); /* fixstr of 1, still the caller's */
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_wire_check_value_accepts),
	    cmocka_unit_test(test_wire_check_value_rejects),
	    cmocka_unit_test(test_wire_check_value_depth),
	    cmocka_unit_test(test_wire_bin_header),
	    cmocka_unit_test(test_wire_bin_unwrap),
	    cmocka_unit_test(test_wire_buf_on),
	    cmocka_unit_test(test_wire_writers),
	    cmocka_unit_test(test_wire_name_rule_matches_lib),
	    cmocka_unit_test(test_wire_request_roundtrip),
	    cmocka_unit_test(test_wire_request_variants),
	    cmocka_unit_test(test_wire_request_ids_every_width),
	    cmocka_unit_test(test_wire_items_every_bin_width),
	    cmocka_unit_test(test_wire_reply_roundtrip),
	    cmocka_unit_test(test_wire_reply_errmsg_sanitized),
	    cmocka_unit_test(test_wire_encode_rejects),
	    cmocka_unit_test(test_wire_malformed_frames),
	    cmocka_unit_test(test_wire_decode_error_names_request),
	    cmocka_unit_test(test_wire_decode_storage),
	    cmocka_unit_test(test_wire_limits),
	    cmocka_unit_test(test_wire_items_fast_same_bytes),
	    cmocka_unit_test(test_wire_protocol_doc_names_everything),
	    cmocka_unit_test(test_wire_protocol_doc_examples),
	    cmocka_unit_test(test_wire_touch_doc_example),
	    cmocka_unit_test(test_wire_json_roundtrip),
	    cmocka_unit_test(test_wire_json_msgpack_bytes),
	    cmocka_unit_test(test_wire_json_from_msgpack_types),
	    cmocka_unit_test(test_wire_json_malformed),
	    cmocka_unit_test(test_wire_json_depth),
	    cmocka_unit_test(test_wire_json_large),
	};

	if (argc > 1 && strcmp(argv[1], "--examples") == 0) {
		return print_examples();
	}
	if (argc > 2 && strcmp(argv[1], "--write-corpus") == 0) {
		return write_corpus(argv[2]);
	}
	if (argc > 2
	    && (strcmp(argv[1], "--decode-req") == 0
	        || strcmp(argv[1], "--decode-rep") == 0)) {
		return decode_file(argv[1], argv[2]);
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
