/*
 * fuzz_wire.c - the libFuzzer target of the wire codec: every input goes
 * through the request and reply decoders, the value checker and both JSON
 * conversions, and whatever they accept must survive the trip back
 * (encode -> decode -> encode gives the same bytes; JSON output reads back).
 * A broken property aborts, which libFuzzer reports as a crash. Built with
 * -DQP_FUZZ=ON (fuzz/CMakeLists.txt); tests/fuzz.cmake links the same entry
 * point to a plain main() that replays tests/corpus/wire/ on every run.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

#define MAX_BATCH 16

#define CHECK(cond, what)                                             \
	do {                                                          \
		if (!(cond)) {                                        \
			fprintf(stderr, "fuzz_wire: %s (%s)\n", what, \
			    qpi_errmsg());                            \
			abort();                                      \
		}                                                     \
	} while (0)

static const qpi_wire_limits lim = {1024, MAX_BATCH, 0};

static void
same_bytes(const qpi_wire_buf *a, const qpi_wire_buf *b, const char *what)
{
	CHECK(a->len == b->len && memcmp(a->data, b->data, a->len) == 0, what);
}

static void
fuzz_request(const uint8_t *data, size_t size)
{
	qpi_wire_item items[MAX_BATCH], items2[MAX_BATCH];
	uint64_t ids[MAX_BATCH], ids2[MAX_BATCH];
	qpi_wire_req q = {.items = items,
	    .items_cap = MAX_BATCH,
	    .ids = ids,
	    .ids_cap = MAX_BATCH};
	qpi_wire_req q2 = {.items = items2,
	    .items_cap = MAX_BATCH,
	    .ids = ids2,
	    .ids_cap = MAX_BATCH};
	qpi_wire_buf b1 = {0}, b2 = {0};

	if (qpi_wire_decode_req(data, size, &lim, &q) != QP_OK) {
		return;
	}
	CHECK(qpi_wire_encode_req(&q, &b1) == QP_OK,
	    "a decoded request does not encode");
	CHECK(qpi_wire_decode_req(b1.data, b1.len, &lim, &q2) == QP_OK,
	    "a re-encoded request does not decode");
	CHECK(qpi_wire_encode_req(&q2, &b2) == QP_OK,
	    "a request decoded twice does not encode");
	same_bytes(&b1, &b2, "request encodings differ");
	CHECK(
	    b1.len <= size, "the canonical request is longer than the input");
	qpi_wire_buf_free(&b1);
	qpi_wire_buf_free(&b2);
}

static void
fuzz_reply(const uint8_t *data, size_t size)
{
	qpi_wire_item items[MAX_BATCH], items2[MAX_BATCH];
	uint64_t ids[MAX_BATCH], ids2[MAX_BATCH];
	qpi_wire_qentry qs[8], qs2[8];
	qpi_wire_rep p = {.items = items,
	    .items_cap = MAX_BATCH,
	    .ids = ids,
	    .ids_cap = MAX_BATCH,
	    .queues = qs,
	    .queues_cap = 8};
	qpi_wire_rep p2 = {.items = items2,
	    .items_cap = MAX_BATCH,
	    .ids = ids2,
	    .ids_cap = MAX_BATCH,
	    .queues = qs2,
	    .queues_cap = 8};
	qpi_wire_buf b1 = {0}, b2 = {0};

	if (qpi_wire_decode_rep(data, size, &lim, &p) != QP_OK) {
		return;
	}
	CHECK(qpi_wire_encode_rep(&p, &b1) == QP_OK,
	    "a decoded reply does not encode");
	CHECK(qpi_wire_decode_rep(b1.data, b1.len, &lim, &p2) == QP_OK,
	    "a re-encoded reply does not decode");
	CHECK(qpi_wire_encode_rep(&p2, &b2) == QP_OK,
	    "a reply decoded twice does not encode");
	same_bytes(&b1, &b2, "reply encodings differ");
	qpi_wire_buf_free(&b1);
	qpi_wire_buf_free(&b2);
}

/* msgpack -> JSON -> msgpack -> JSON: every JSON written reads back, and
 * after one trip the text is stable. A map of the one key "$bin" or
 * "$ext" reads back as a bin/ext (PROTOCOL.md): then it may not. */
static void
fuzz_value(const uint8_t *data, size_t size)
{
	char *j1 = NULL, *j2 = NULL, *j3 = NULL;
	void *m2 = NULL, *m3 = NULL;
	size_t l1, l2, l3, ml2, ml3;
	size_t off, blen;

	if (qpi_wire_check_value(data, size) != QP_OK) {
		CHECK(!qpi_wire_bin_unwrap(data, size, &off, &blen),
		    "bin_unwrap accepts what check_value refuses");
		return;
	}
	if (qpi_wire_bin_unwrap(data, size, &off, &blen)) {
		CHECK(off + blen == size && off >= 2 && off <= 5,
		    "bin_unwrap's payload is not the rest of the value");
	}
	CHECK(qpi_msgpack_to_json(data, size, &j1, &l1) == QP_OK,
	    "a checked value does not convert to JSON");
	CHECK(strlen(j1) == l1, "JSON length is wrong");
	if (strstr(j1, "\"$bin\"") != NULL || strstr(j1, "\"$ext\"") != NULL) {
		free(j1);
		return;
	}
	CHECK(qpi_json_to_msgpack(j1, l1, &m2, &ml2) == QP_OK,
	    "JSON written by msgpack_to_json does not read back");
	CHECK(qpi_wire_check_value(m2, ml2) == QP_OK,
	    "JSON read gives an invalid value");
	CHECK(qpi_msgpack_to_json(m2, ml2, &j2, &l2) == QP_OK,
	    "a value read from JSON does not convert back");
	CHECK(qpi_json_to_msgpack(j2, l2, &m3, &ml3) == QP_OK,
	    "second JSON does not read back");
	CHECK(qpi_msgpack_to_json(m3, ml3, &j3, &l3) == QP_OK,
	    "third conversion failed");
	CHECK(l2 == l3 && memcmp(j2, j3, l2) == 0, "JSON is not stable");
	free(j1);
	free(j2);
	free(j3);
	free(m2);
	free(m3);
}

/* JSON text -> msgpack -> JSON -> msgpack: the same msgpack twice. */
static void
fuzz_json(const uint8_t *data, size_t size)
{
	void *m1 = NULL, *m2 = NULL;
	char *j = NULL;
	size_t ml1, ml2, jl;

	if (qpi_json_to_msgpack((const char *) data, size, &m1, &ml1)
	    != QP_OK) {
		return;
	}
	CHECK(qpi_wire_check_value(m1, ml1) == QP_OK,
	    "JSON gives an invalid msgpack value");
	CHECK(qpi_msgpack_to_json(m1, ml1, &j, &jl) == QP_OK,
	    "msgpack from JSON does not convert back");
	if (strstr(j, "\"$bin\"") == NULL && strstr(j, "\"$ext\"") == NULL) {
		CHECK(qpi_json_to_msgpack(j, jl, &m2, &ml2) == QP_OK,
		    "JSON output does not read back");
		free(m2);
	}
	free(m1);
	free(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* the decoders must not read past size: give them an exact copy */
	uint8_t *copy = malloc(size > 0 ? size : 1);

	if (copy == NULL) {
		return 0;
	}
	memcpy(copy, data, size);
	fuzz_request(copy, size);
	fuzz_reply(copy, size);
	fuzz_value(copy, size);
	fuzz_json(copy, size);
	free(copy);
	return 0;
}
