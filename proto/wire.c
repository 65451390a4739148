/*
 * wire.c - the msgpack codec of the qpipe wire protocol (PROTOCOL.md).
 *
 * Reading never hands untrusted bytes to msgpack-c's unpacker (which sizes
 * allocations from headers): a bounded walker reads one token at a time,
 * checks every length and count against the bytes that remain, and bounds
 * nesting. Decoded strings and items point into the caller's buffer; arrays
 * of items and ids go into storage the caller provides. Writing uses
 * msgpack-c's packer into a growable buffer. No I/O, no globals, no locking:
 * every function works on its arguments only.
 */
#include "wire.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* ---- reading ---- */

static uint64_t
rd_be(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = 0; i < n; i++) {
		v = (v << 8) | p[i];
	}
	return v;
}

static int
tok_short(size_t at, size_t need, size_t have)
{
	return qpi_err(QP_EPROTO,
	    "msgpack truncated at byte %zu: needs %zu more bytes, %zu remain",
	    at, need, have);
}

int
qpi_wire_next(const void *buf, size_t len, size_t *pos, qpi_wire_tok *t)
{
	const uint8_t *p = buf;
	size_t at = *pos, rem;
	uint8_t c;
	int n = 0; /* width of a length/count field, or of a scalar */
	uint64_t cnt;

	if (at >= len) {
		return qpi_err(QP_EPROTO,
		    "msgpack truncated at byte %zu: a value is missing", at);
	}
	memset(t, 0, sizeof(*t));
	c = p[at++];
	rem = len - at;
	if (c <= 0x7f) {
		t->type = QPI_WIRE_UINT;
		t->u = c;
		*pos = at;
		return QP_OK;
	}
	if (c >= 0xe0) {
		t->type = QPI_WIRE_INT;
		t->i = (int8_t) c;
		*pos = at;
		return QP_OK;
	}
	if (c <= 0x8f || (c >= 0x90 && c <= 0x9f)) {
		t->type = c <= 0x8f ? QPI_WIRE_MAP : QPI_WIRE_ARRAY;
		cnt = c & 0x0f;
		goto container;
	}
	if (c >= 0xa0 && c <= 0xbf) {
		t->type = QPI_WIRE_STR;
		cnt = c & 0x1f;
		goto payload;
	}
	switch (c) {
	case 0xc0:
		t->type = QPI_WIRE_NIL;
		*pos = at;
		return QP_OK;
	case 0xc2:
	case 0xc3:
		t->type = QPI_WIRE_BOOL;
		t->b = c == 0xc3;
		*pos = at;
		return QP_OK;
	case 0xc4:
	case 0xc5:
	case 0xc6:
		t->type = QPI_WIRE_BIN;
		n = 1 << (c - 0xc4);
		break;
	case 0xd9:
	case 0xda:
	case 0xdb:
		t->type = QPI_WIRE_STR;
		n = 1 << (c - 0xd9);
		break;
	case 0xc7:
	case 0xc8:
	case 0xc9:
		t->type = QPI_WIRE_EXT;
		n = 1 << (c - 0xc7);
		if (rem < (size_t) n + 1) {
			return tok_short(at, (size_t) n + 1, rem);
		}
		cnt = rd_be(p + at, n);
		t->ext = (int8_t) p[at + n];
		at += (size_t) n + 1;
		rem -= (size_t) n + 1;
		goto payload;
	case 0xd4:
	case 0xd5:
	case 0xd6:
	case 0xd7:
	case 0xd8:
		t->type = QPI_WIRE_EXT;
		if (rem < 1) {
			return tok_short(at, 1, rem);
		}
		cnt = (uint64_t) 1 << (c - 0xd4);
		t->ext = (int8_t) p[at];
		at++;
		rem--;
		goto payload;
	case 0xca:
	case 0xcb:
		n = c == 0xca ? 4 : 8;
		if (rem < (size_t) n) {
			return tok_short(at, (size_t) n, rem);
		}
		t->type = QPI_WIRE_FLOAT;
		if (n == 4) {
			uint32_t w = (uint32_t) rd_be(p + at, 4);
			float f;
			memcpy(&f, &w, 4);
			t->f = f;
			t->f32 = true;
		} else {
			uint64_t w = rd_be(p + at, 8);
			memcpy(&t->f, &w, 8);
		}
		*pos = at + (size_t) n;
		return QP_OK;
	case 0xcc:
	case 0xcd:
	case 0xce:
	case 0xcf:
		n = 1 << (c - 0xcc);
		if (rem < (size_t) n) {
			return tok_short(at, (size_t) n, rem);
		}
		t->type = QPI_WIRE_UINT;
		t->u = rd_be(p + at, n);
		*pos = at + (size_t) n;
		return QP_OK;
	case 0xd0:
	case 0xd1:
	case 0xd2:
	case 0xd3: {
		uint64_t w;
		int64_t v;
		n = 1 << (c - 0xd0);
		if (rem < (size_t) n) {
			return tok_short(at, (size_t) n, rem);
		}
		w = rd_be(p + at, n);
		/* sign-extend the n-byte two's complement value */
		if (n < 8 && (w >> (n * 8 - 1)) != 0) {
			w |= ~(uint64_t) 0 << (n * 8);
		}
		memcpy(&v, &w, sizeof(v));
		if (v >= 0) {
			t->type = QPI_WIRE_UINT;
			t->u = (uint64_t) v;
		} else {
			t->type = QPI_WIRE_INT;
			t->i = v;
		}
		*pos = at + (size_t) n;
		return QP_OK;
	}
	case 0xdc:
	case 0xdd:
		t->type = QPI_WIRE_ARRAY;
		n = c == 0xdc ? 2 : 4;
		if (rem < (size_t) n) {
			return tok_short(at, (size_t) n, rem);
		}
		cnt = rd_be(p + at, n);
		at += (size_t) n;
		rem -= (size_t) n;
		goto container;
	case 0xde:
	case 0xdf:
		t->type = QPI_WIRE_MAP;
		n = c == 0xde ? 2 : 4;
		if (rem < (size_t) n) {
			return tok_short(at, (size_t) n, rem);
		}
		cnt = rd_be(p + at, n);
		at += (size_t) n;
		rem -= (size_t) n;
		goto container;
	default: /* 0xc1 */
		return qpi_err(QP_EPROTO,
		    "msgpack byte 0x%02x at byte %zu is not a valid type", c,
		    at - 1);
	}
	/* str/bin with an n-byte length */
	if (rem < (size_t) n) {
		return tok_short(at, (size_t) n, rem);
	}
	cnt = rd_be(p + at, n);
	at += (size_t) n;
	rem -= (size_t) n;
payload:
	if (cnt > rem) {
		return qpi_err(QP_EPROTO,
		    "msgpack truncated at byte %zu: a %s of %llu bytes, %zu "
		    "remain",
		    at,
		    t->type == QPI_WIRE_STR       ? "str"
		        : t->type == QPI_WIRE_BIN ? "bin"
		                                  : "ext",
		    (unsigned long long) cnt, rem);
	}
	t->ptr = p + at;
	t->len = (uint32_t) cnt;
	*pos = at + (size_t) cnt;
	return QP_OK;
container:
	/* Each element takes at least one byte: a count beyond the bytes
	 * left is a lie, refused before anyone sizes anything from it. */
	if (cnt > rem || (t->type == QPI_WIRE_MAP && cnt > rem / 2)) {
		return qpi_err(QP_EPROTO,
		    "msgpack %s at byte %zu claims %llu %s but only %zu bytes "
		    "remain",
		    t->type == QPI_WIRE_MAP ? "map" : "array", *pos,
		    (unsigned long long) cnt,
		    t->type == QPI_WIRE_MAP ? "pairs" : "elements", rem);
	}
	t->len = (uint32_t) cnt;
	*pos = at;
	return QP_OK;
}

int
qpi_wire_skip(const void *buf, size_t len, size_t *pos, int depth)
{
	qpi_wire_tok t;
	uint64_t n;
	int rv;

	if ((rv = qpi_wire_next(buf, len, pos, &t)) != QP_OK) {
		return rv;
	}
	if (t.type != QPI_WIRE_ARRAY && t.type != QPI_WIRE_MAP) {
		return QP_OK;
	}
	if (depth <= 0) {
		return qpi_err(QP_EPROTO,
		    "msgpack nests deeper than %d levels at byte %zu",
		    QPI_WIRE_MAX_DEPTH, *pos);
	}
	n = t.type == QPI_WIRE_MAP ? (uint64_t) t.len * 2 : t.len;
	for (uint64_t i = 0; i < n; i++) {
		if ((rv = qpi_wire_skip(buf, len, pos, depth - 1)) != QP_OK) {
			return rv;
		}
	}
	return QP_OK;
}

int
qpi_wire_check_value(const void *buf, size_t len)
{
	size_t pos = 0;

	if (buf == NULL && len != 0) {
		return qpi_err(QP_EINVAL, "msgpack value is NULL");
	}
	if (len == 0) {
		return qpi_err(QP_EINVAL, "msgpack value is empty (0 bytes)");
	}
	if (qpi_wire_skip(buf, len, &pos, QPI_WIRE_MAX_DEPTH) != QP_OK) {
		/* keep the walker's message, under the caller's code */
		return QP_EINVAL;
	}
	if (pos != len) {
		return qpi_err(QP_EINVAL,
		    "not one msgpack value: %zu trailing bytes after the %zu "
		    "byte value",
		    len - pos, pos);
	}
	return QP_OK;
}

size_t
qpi_wire_bin_header(size_t len, uint8_t hdr[5])
{
	if (len <= 0xff) {
		hdr[0] = 0xc4;
		hdr[1] = (uint8_t) len;
		return 2;
	}
	if (len <= 0xffff) {
		hdr[0] = 0xc5;
		hdr[1] = (uint8_t) (len >> 8);
		hdr[2] = (uint8_t) len;
		return 3;
	}
	if ((uint64_t) len <= 0xffffffffu) {
		hdr[0] = 0xc6;
		hdr[1] = (uint8_t) (len >> 24);
		hdr[2] = (uint8_t) (len >> 16);
		hdr[3] = (uint8_t) (len >> 8);
		hdr[4] = (uint8_t) len;
		return 5;
	}
	return 0;
}

bool
qpi_wire_bin_unwrap(const void *buf, size_t len, size_t *offp, size_t *lenp)
{
	const uint8_t *p = buf;
	size_t n, hl;

	if (buf == NULL || len < 2 || p[0] < 0xc4 || p[0] > 0xc6) {
		return false;
	}
	hl = (size_t) 1 + ((size_t) 1 << (p[0] - 0xc4));
	if (len < hl) {
		return false;
	}
	n = (size_t) rd_be(p + 1, (int) (hl - 1));
	if (n != len - hl) {
		return false;
	}
	*offp = hl;
	*lenp = n;
	return true;
}
