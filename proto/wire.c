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

#include <endian.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* ---- reading ---- */

/* The big-endian number of n bytes at p: n is 1, 2, 4 or 8, the widths
 * msgpack has, each read as one load (a lease id is 4 bytes: a byte loop
 * was most of the cost of reading a batch's acks). */
static uint64_t
rd_be(const uint8_t *p, int n)
{
	uint16_t v16;
	uint32_t v32;
	uint64_t v;

	switch (n) {
	case 1:
		return p[0];
	case 2:
		memcpy(&v16, p, 2);
		return be16toh(v16);
	case 4:
		memcpy(&v32, p, 4);
		return be32toh(v32);
	default:
		memcpy(&v, p, 8);
		return be64toh(v);
	}
}

/* A bin's header at p, rem bytes on: true if p starts a bin (bin 8, 16
 * or 32) whose header and payload are all within rem; *hlp gets the
 * header's size and *np the payload's. */
static bool
bin_hdr(const uint8_t *p, size_t rem, size_t *hlp, size_t *np)
{
	size_t hl;

	if (rem < 2 || p[0] < 0xc4 || p[0] > 0xc6) {
		return false;
	}
	hl = (size_t) 1 + ((size_t) 1 << (p[0] - 0xc4));
	if (rem < hl) {
		return false;
	}
	*hlp = hl;
	*np = (size_t) rd_be(p + 1, (int) (hl - 1));
	return *np <= rem - hl;
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
	size_t n, hl;

	if (buf == NULL || !bin_hdr(buf, len, &hl, &n) || n != len - hl) {
		return false;
	}
	*offp = hl;
	*lenp = n;
	return true;
}

bool
qpi_wire_name_valid(const char *name, size_t len)
{
	if (name == NULL || len == 0 || len > QP_NAME_MAX) {
		return false;
	}
	/* "." and ".." would name directories where names become paths. */
	if ((len == 1 && name[0] == '.')
	    || (len == 2 && name[0] == '.' && name[1] == '.')) {
		return false;
	}
	/* One look-up per byte: every request's name passes here, on
	 * both ends. */
	static const bool ok[256] = {
	    ['a' ... 'z'] = true,
	    ['A' ... 'Z'] = true,
	    ['0' ... '9'] = true,
	    ['.'] = true,
	    ['_'] = true,
	    ['-'] = true,
	};
	for (size_t i = 0; i < len; i++) {
		if (!ok[(unsigned char) name[i]]) {
			return false;
		}
	}
	return true;
}

/* ---- writing ---- */

void
qpi_wire_buf_reset(qpi_wire_buf *b)
{
	b->len = 0;
}

void
qpi_wire_buf_on(qpi_wire_buf *b, void *mem, size_t cap)
{
	*b = (qpi_wire_buf) {.data = mem, .cap = cap, .borrowed = true};
}

void
qpi_wire_buf_free(qpi_wire_buf *b)
{
	if (!b->borrowed) {
		free(b->data);
	}
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->borrowed = false;
}

static int
buf_reserve(qpi_wire_buf *b, size_t n)
{
	size_t cap;
	uint8_t *d;

	if (n > SIZE_MAX - b->len || (b->max != 0 && b->len + n > b->max)) {
		return qpi_err(QP_ETOOBIG,
		    "encoded frame would pass its limit of %zu bytes", b->max);
	}
	if (b->len + n <= b->cap) {
		return QP_OK;
	}
	cap = b->cap < 256 ? 256 : b->cap;
	while (cap < b->len + n) {
		cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
	}
	if ((d = realloc(b->borrowed ? NULL : b->data, cap)) == NULL) {
		return qpi_err(
		    QP_ENOMEM, "out of memory encoding %zu bytes", b->len + n);
	}
	if (b->borrowed && b->len > 0) {
		memcpy(d, b->data, b->len);
	}
	b->data = d;
	b->cap = cap;
	b->borrowed = false;
	return QP_OK;
}

int
qpi_wire_put_raw(qpi_wire_buf *b, const void *p, size_t len)
{
	int rv;

	if (len == 0) {
		return QP_OK;
	}
	if ((rv = buf_reserve(b, len)) != QP_OK) {
		return rv;
	}
	memcpy(b->data + b->len, p, len);
	b->len += len;
	return QP_OK;
}

/* msgpack-c's packer writes through this; the first error sticks. */
typedef struct wpk {
	qpi_wire_buf *b;
	int rv;
} wpk;

static int
wpk_write(void *data, const char *buf, size_t len)
{
	wpk *w = data;

	if (w->rv == QP_OK) {
		w->rv = qpi_wire_put_raw(w->b, buf, len);
	}
	return w->rv == QP_OK ? 0 : -1;
}

#define WPK_BEGIN(b)           \
	wpk w_ = {(b), QP_OK}; \
	msgpack_packer pk_;    \
	msgpack_packer_init(&pk_, &w_, wpk_write)

int
qpi_wire_put_nil(qpi_wire_buf *b)
{
	WPK_BEGIN(b);
	msgpack_pack_nil(&pk_);
	return w_.rv;
}

int
qpi_wire_put_bool(qpi_wire_buf *b, bool v)
{
	WPK_BEGIN(b);
	if (v) {
		msgpack_pack_true(&pk_);
	} else {
		msgpack_pack_false(&pk_);
	}
	return w_.rv;
}

/* The bytes of v in msgpack's smallest form after its type byte. */
static inline int
uint_tail(uint64_t v)
{
	return v <= 0x7f       ? 0
	    : v <= 0xff        ? 1
	    : v <= 0xffff      ? 2
	    : v <= 0xffffffffu ? 4
	                       : 8;
}

/* The bytes wr_uint writes for v. */
static inline size_t
uint_width(uint64_t v)
{
	return 1 + (size_t) uint_tail(v);
}

/* Writes v at o in msgpack's smallest form, as msgpack_pack_uint64 does
 * (1 to 9 bytes); returns the end. */
static inline uint8_t *
wr_uint(uint8_t *o, uint64_t v)
{
	uint16_t v16;
	uint32_t v32;

	switch (uint_tail(v)) {
	case 0:
		*o = (uint8_t) v;
		return o + 1;
	case 1:
		o[0] = 0xcc;
		o[1] = (uint8_t) v;
		return o + 2;
	case 2:
		o[0] = 0xcd;
		v16 = htobe16((uint16_t) v);
		memcpy(o + 1, &v16, 2);
		return o + 3;
	case 4:
		o[0] = 0xce;
		v32 = htobe32((uint32_t) v);
		memcpy(o + 1, &v32, 4);
		return o + 5;
	default:
		o[0] = 0xcf;
		v = htobe64(v);
		memcpy(o + 1, &v, 8);
		return o + 9;
	}
}

/* The bytes wr_array writes for n elements. */
static inline size_t
array_width(uint32_t n)
{
	return n <= 15 ? 1 : n <= 0xffff ? 3 : 5;
}

/* Writes an array header of n elements at o, as msgpack_pack_array does
 * (1, 3 or 5 bytes); returns the end. */
static inline uint8_t *
wr_array(uint8_t *o, uint32_t n)
{
	if (n <= 15) {
		*o++ = (uint8_t) (0x90u | n);
	} else if (n <= 0xffff) {
		*o++ = 0xdc;
		*o++ = (uint8_t) (n >> 8);
		*o++ = (uint8_t) n;
	} else {
		*o++ = 0xdd;
		for (int i = 3; i >= 0; i--) {
			*o++ = (uint8_t) (n >> (8 * i));
		}
	}
	return o;
}

int
qpi_wire_put_uint(qpi_wire_buf *b, uint64_t v)
{
	/* Without the packer's callback per value (a reply's ids, counts). */
	uint8_t t[9];

	return qpi_wire_put_raw(b, t, (size_t) (wr_uint(t, v) - t));
}

int
qpi_wire_put_int(qpi_wire_buf *b, int64_t v)
{
	WPK_BEGIN(b);
	msgpack_pack_int64(&pk_, v);
	return w_.rv;
}

int
qpi_wire_put_double(qpi_wire_buf *b, double v)
{
	WPK_BEGIN(b);
	msgpack_pack_double(&pk_, v);
	return w_.rv;
}

int
qpi_wire_put_float(qpi_wire_buf *b, float v)
{
	WPK_BEGIN(b);
	msgpack_pack_float(&pk_, v);
	return w_.rv;
}

static int
put_too_long(const char *what, size_t len)
{
	return qpi_err(QP_ETOOBIG,
	    "a msgpack %s holds at most 4 GiB, not %zu bytes", what, len);
}

int
qpi_wire_put_str(qpi_wire_buf *b, const void *s, size_t len)
{
	if ((uint64_t) len > UINT32_MAX) {
		return put_too_long("str", len);
	}
	WPK_BEGIN(b);
	msgpack_pack_str(&pk_, len);
	if (w_.rv == QP_OK) {
		w_.rv = qpi_wire_put_raw(b, s, len);
	}
	return w_.rv;
}

int
qpi_wire_put_bin(qpi_wire_buf *b, const void *p, size_t len)
{
	uint8_t hdr[5];
	size_t hl;
	int rv;

	if ((hl = qpi_wire_bin_header(len, hdr)) == 0) {
		return put_too_long("bin", len);
	}
	if ((rv = buf_reserve(b, hl + len)) != QP_OK) {
		return rv;
	}
	memcpy(b->data + b->len, hdr, hl);
	if (len > 0) {
		memcpy(b->data + b->len + hl, p, len);
	}
	b->len += hl + len;
	return QP_OK;
}

int
qpi_wire_put_ext(qpi_wire_buf *b, int8_t type, const void *p, size_t len)
{
	if ((uint64_t) len > UINT32_MAX) {
		return put_too_long("ext", len);
	}
	WPK_BEGIN(b);
	msgpack_pack_ext(&pk_, len, type);
	if (w_.rv == QP_OK) {
		w_.rv = qpi_wire_put_raw(b, p, len);
	}
	return w_.rv;
}

int
qpi_wire_put_array(qpi_wire_buf *b, uint32_t n)
{
	uint8_t t[5];

	return qpi_wire_put_raw(b, t, (size_t) (wr_array(t, n) - t));
}

int
qpi_wire_put_map(qpi_wire_buf *b, uint32_t n)
{
	WPK_BEGIN(b);
	msgpack_pack_map(&pk_, n);
	return w_.rv;
}

/* ---- frames ---- */

/* The fields of the frames, in wire order after [version, op, req_id] (and
 * status, for replies). Names appear in error messages. */
enum {
	F_END = 0,
	F_NAME, /* str: queue or pipe name */
	F_CLIENT, /* bin 16 */
	F_SEQ, /* uint */
	F_TIMEOUT, /* int >= -1 */
	F_FLAGS, /* uint within the op's mask */
	F_ITEM, /* any value */
	F_ITEMS, /* array (1..max_batch) of values */
	F_MAXITEMS, /* uint 1..max_batch */
	F_LMODE, /* uint 0..1 */
	F_LMS, /* uint 0..QPI_WIRE_MS_MAX */
	F_ACKS, /* array (0..max_batch) of uint */
	F_IDS, /* array (1..max_batch) of uint */
	F_LEASE, /* uint */
	F_DELAY, /* uint 0..QPI_WIRE_MS_MAX */
	F_COUNT, /* uint >= 1 */
	F_MAXSIZE, /* uint */
	F_CAPACITY, /* uint */
	F_MAXMSG, /* uint */
	F_SIDE, /* uint 0..1 */
	F_SIDE_ANY, /* int -1..1 */
	F_CNAME, /* str 0..64 printable ASCII */
	F_MAC, /* bin 32 */
	F_CNONCE, /* bin 0 or 32 */
	F_FSYNC, /* str 0..32 printable ASCII */
	R_SVERSION, /* str 1..32 printable ASCII */
	R_LIMITS, /* map str -> uint */
	R_NONCE, /* bin 32 */
	R_AUTHREQ, /* bool */
	R_SMAC, /* bin 0 or 32 */
	R_GITEMS, /* array (0..max_batch) of [uint lease, uint deliveries, v]
	           */
	R_MISSING, /* array (0..max_batch) of uint */
	R_COUNT, /* uint */
	R_STAT, /* map str -> int */
	R_LIST, /* array of [name, stat map] */
	R_SIDE, /* uint 0..1 */
	R_PEER, /* bool */
	R_READY, /* bool */
	R_ITEM, /* any value */
	H_STATUS, /* reply head: uint error number */
	H_ERRMSG, /* error reply: str */
	F_RESULTS, /* str: the results queue's name */
	F_KINDS
};

static const char *const field_names[F_KINDS] = {
    [F_NAME] = "name",
    [F_CLIENT] = "client_id",
    [F_SEQ] = "seq",
    [F_TIMEOUT] = "timeout_ms",
    [F_FLAGS] = "flags",
    [F_ITEM] = "item",
    [F_ITEMS] = "items",
    [F_MAXITEMS] = "max_items",
    [F_LMODE] = "lease_mode",
    [F_LMS] = "lease_ms",
    [F_ACKS] = "acks",
    [F_IDS] = "lease_ids",
    [F_LEASE] = "lease_id",
    [F_DELAY] = "delay_ms",
    [F_COUNT] = "count",
    [F_MAXSIZE] = "maxsize",
    [F_CAPACITY] = "capacity",
    [F_MAXMSG] = "max_message",
    [F_SIDE] = "side",
    [F_SIDE_ANY] = "side",
    [F_CNAME] = "client_name",
    [F_MAC] = "mac",
    [F_CNONCE] = "client_nonce",
    [F_FSYNC] = "fsync",
    [R_SVERSION] = "server_version",
    [R_LIMITS] = "limits",
    [R_NONCE] = "nonce",
    [R_AUTHREQ] = "auth_required",
    [R_SMAC] = "server_mac",
    [R_GITEMS] = "items",
    [R_MISSING] = "missing",
    [R_COUNT] = "count",
    [R_STAT] = "stat",
    [R_LIST] = "queues",
    [R_SIDE] = "side",
    [R_PEER] = "peer_open",
    [R_READY] = "ready",
    [R_ITEM] = "item",
    [H_STATUS] = "status",
    [H_ERRMSG] = "message",
    [F_RESULTS] = "results",
};

#define OP_FIELDS 9

typedef struct opdef {
	const char *name;
	bool dedup; /* carries client id and seq */
	uint32_t flags; /* the flags the op accepts */
	uint8_t req[OP_FIELDS];
	uint8_t rep[OP_FIELDS];
} opdef;

static const opdef ops[QPI_OP_MAX + 1] = {
    [QPI_OP_HELLO] = {"hello", false, 0, {F_CLIENT, F_CNAME},
        {R_SVERSION, R_LIMITS, R_NONCE, R_AUTHREQ}},
    [QPI_OP_AUTH] = {"auth", false, 0, {F_MAC, F_CNONCE}, {R_SMAC}},
    [QPI_OP_PING] = {"ping", false, 0, {F_END}, {F_END}},
    [QPI_OP_PUT] = {"put", true, QPI_PUT_CREATE,
        {F_NAME, F_CLIENT, F_SEQ, F_TIMEOUT, F_FLAGS, F_ITEM}, {F_END}},
    [QPI_OP_PUT_MANY] = {"put_many", true, QPI_PUT_CREATE,
        {F_NAME, F_CLIENT, F_SEQ, F_TIMEOUT, F_FLAGS, F_ITEMS}, {F_END}},
    [QPI_OP_GET] = {"get", true, 0,
        {F_NAME, F_CLIENT, F_SEQ, F_TIMEOUT, F_MAXITEMS, F_LMODE, F_LMS,
            F_ACKS},
        {R_GITEMS}},
    [QPI_OP_ACK]
    = {"ack", true, 0, {F_NAME, F_CLIENT, F_SEQ, F_IDS}, {R_MISSING}},
    [QPI_OP_RELEASE] = {"release", true, 0,
        {F_NAME, F_CLIENT, F_SEQ, F_LEASE, F_DELAY}, {F_END}},
    [QPI_OP_TASK_DONE]
    = {"task_done", true, 0, {F_NAME, F_CLIENT, F_SEQ, F_COUNT}, {F_END}},
    [QPI_OP_JOIN] = {"join", false, 0, {F_NAME, F_TIMEOUT}, {F_END}},
    [QPI_OP_QSIZE] = {"qsize", false, 0, {F_NAME}, {R_COUNT}},
    [QPI_OP_STAT] = {"stat", false, 0, {F_NAME}, {R_STAT}},
    [QPI_OP_LIST] = {"list", false, 0, {F_END}, {R_LIST}},
    [QPI_OP_CREATE] = {"create", true, QPI_CREATE_DURABLE | QPI_CREATE_EXCL,
        {F_NAME, F_CLIENT, F_SEQ, F_MAXSIZE, F_CAPACITY, F_MAXMSG, F_LMS,
            F_FLAGS, F_FSYNC},
        {F_END}},
    [QPI_OP_DELETE] = {"delete", true, 0, {F_NAME, F_CLIENT, F_SEQ}, {F_END}},
    [QPI_OP_PIPE_OPEN] = {"pipe_open", true, QPI_PIPE_ONEWAY,
        {F_NAME, F_CLIENT, F_SEQ, F_SIDE_ANY, F_FLAGS}, {R_SIDE, R_PEER}},
    [QPI_OP_PIPE_SEND] = {"pipe_send", true, 0,
        {F_NAME, F_CLIENT, F_SEQ, F_SIDE, F_TIMEOUT, F_ITEM}, {F_END}},
    [QPI_OP_PIPE_RECV] = {"pipe_recv", true, 0,
        {F_NAME, F_CLIENT, F_SEQ, F_SIDE, F_TIMEOUT}, {R_ITEM}},
    [QPI_OP_PIPE_POLL]
    = {"pipe_poll", false, 0, {F_NAME, F_SIDE, F_TIMEOUT}, {R_READY}},
    [QPI_OP_PIPE_CLOSE]
    = {"pipe_close", true, 0, {F_NAME, F_CLIENT, F_SEQ, F_SIDE}, {F_END}},
    [QPI_OP_TOUCH]
    = {"touch", true, 0, {F_NAME, F_CLIENT, F_SEQ, F_LMS, F_IDS}, {R_MISSING}},
    [QPI_OP_COMPLETE] = {"complete", true, 0,
        {F_NAME, F_CLIENT, F_SEQ, F_LEASE, F_RESULTS, F_TIMEOUT, F_ITEM},
        {F_END}},
};

static const opdef *
op_def(uint32_t op)
{
	return op >= 1 && op <= QPI_OP_MAX ? &ops[op] : NULL;
}

static unsigned
op_nfields(const uint8_t *f)
{
	unsigned n = 0;

	while (n < OP_FIELDS && f[n] != F_END) {
		n++;
	}
	return n;
}

const char *
qpi_wire_op_name(uint32_t op)
{
	const opdef *d = op_def(op);

	return d != NULL ? d->name : NULL;
}

bool
qpi_wire_op_dedup(uint32_t op)
{
	const opdef *d = op_def(op);

	/* get carries a client id and seq too, but is served afresh: its
	 * leases belong to the connection (PROTOCOL.md) */
	return d != NULL && d->dedup && op != QPI_OP_GET;
}

/* The stat map's keys, in the order they are written. */
static const char *const stat_keys[]
    = {"items", "bytes", "maxsize", "capacity", "leased", "unfinished",
        "getters", "putters", "puts", "gets", "oldest_age_ms"};
#define NSTAT (sizeof(stat_keys) / sizeof(stat_keys[0]))

static uint64_t *
stat_field(qp_queue_stats *st, size_t i)
{
	uint64_t *f[] = {&st->items, &st->bytes, &st->maxsize, &st->capacity,
	    &st->leased, &st->unfinished, &st->getters, &st->putters,
	    &st->puts, &st->gets};

	return i < NSTAT - 1 ? f[i] : NULL;
}

static const char *const limit_keys[]
    = {"max_message", "max_batch", "lease_ms"};
#define NLIMIT (sizeof(limit_keys) / sizeof(limit_keys[0]))

/* ---- decoding ---- */

typedef struct rd {
	const uint8_t *p;
	size_t len;
	size_t pos;
	uint64_t max_message;
	uint32_t max_batch;
	const char *op; /* for messages */
} rd;

static void
rd_limits(rd *r, const qpi_wire_limits *lim)
{
	r->max_message = QP_DEFAULT_MAX_MESSAGE;
	r->max_batch = QPI_WIRE_DEFAULT_BATCH;
	if (lim != NULL && lim->max_message != 0) {
		r->max_message = lim->max_message;
	}
	if (lim != NULL && lim->max_batch != 0) {
		r->max_batch = lim->max_batch;
	}
}

static const char *
kind_name(qpi_wire_type t)
{
	static const char *const names[] = {
	    [QPI_WIRE_NIL] = "nil",
	    [QPI_WIRE_BOOL] = "bool",
	    [QPI_WIRE_UINT] = "uint",
	    [QPI_WIRE_INT] = "negative int",
	    [QPI_WIRE_FLOAT] = "float",
	    [QPI_WIRE_STR] = "str",
	    [QPI_WIRE_BIN] = "bin",
	    [QPI_WIRE_ARRAY] = "array",
	    [QPI_WIRE_MAP] = "map",
	    [QPI_WIRE_EXT] = "ext",
	};

	return (unsigned) t < sizeof(names) / sizeof(names[0]) ? names[t]
	                                                       : "?";
}

static int
bad_type(const rd *r, int f, const qpi_wire_tok *t, const char *want)
{
	return qpi_err(QP_EPROTO, "%s: field %s must be %s, not %s", r->op,
	    field_names[f], want, kind_name(t->type));
}

static int
bad_range(const rd *r, int f, const char *want)
{
	return qpi_err(
	    QP_EPROTO, "%s: field %s must be %s", r->op, field_names[f], want);
}

static int
rd_tok(rd *r, qpi_wire_tok *t)
{
	int rv = qpi_wire_next(r->p, r->len, &r->pos, t);

	if (rv != QP_OK) {
		return QP_EPROTO; /* the walker's message stands */
	}
	return QP_OK;
}

static int
rd_uint(rd *r, int f, uint64_t lo, uint64_t hi, uint64_t *vp)
{
	qpi_wire_tok t;
	int rv;

	/* The usual forms (a fixint, uint 8-64: a get's lease ids) read
	 * straight; any other through the walker, which also names what is
	 * wrong. */
	uint8_t c = r->pos < r->len ? r->p[r->pos] : 0xc1;
	size_t n = c <= 0x7f         ? 0
	    : c >= 0xcc && c <= 0xcf ? 1u << (c - 0xcc)
	                             : 9;
	if (n < 9 && r->len - r->pos > n) {
		t.u = n == 0 ? c : rd_be(r->p + r->pos + 1, (int) n);
		r->pos += n + 1;
	} else if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	} else if (t.type != QPI_WIRE_UINT) {
		return bad_type(r, f, &t, "an unsigned integer");
	}
	if (t.u < lo || t.u > hi) {
		return qpi_err(QP_EPROTO,
		    "%s: field %s is %llu, outside %llu..%llu", r->op,
		    field_names[f], (unsigned long long) t.u,
		    (unsigned long long) lo, (unsigned long long) hi);
	}
	*vp = t.u;
	return QP_OK;
}

static int
rd_int(rd *r, int f, int64_t lo, int64_t hi, int64_t *vp)
{
	qpi_wire_tok t;
	int64_t v;
	int rv;

	if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	}
	if (t.type == QPI_WIRE_UINT && t.u <= (uint64_t) INT64_MAX) {
		v = (int64_t) t.u;
	} else if (t.type == QPI_WIRE_INT) {
		v = t.i;
	} else if (t.type == QPI_WIRE_UINT) {
		v = INT64_MAX; /* reported as out of range below */
		if (hi == INT64_MAX) {
			return qpi_err(QP_EPROTO,
			    "%s: field %s is over 2^63-1", r->op,
			    field_names[f]);
		}
	} else {
		return bad_type(r, f, &t, "an integer");
	}
	if (v < lo || v > hi) {
		return qpi_err(QP_EPROTO,
		    "%s: field %s is %lld, outside %lld..%lld", r->op,
		    field_names[f], (long long) v, (long long) lo,
		    (long long) hi);
	}
	*vp = v;
	return QP_OK;
}

static int
rd_bool(rd *r, int f, bool *vp)
{
	qpi_wire_tok t;
	int rv;

	if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	}
	if (t.type != QPI_WIRE_BOOL) {
		return bad_type(r, f, &t, "a bool");
	}
	*vp = t.b;
	return QP_OK;
}

/* A bin of exactly n bytes, or (zero_ok) of 0 bytes: *gotp says which. */
static int
rd_fixbin(rd *r, int f, uint8_t *out, size_t n, bool zero_ok, bool *gotp)
{
	qpi_wire_tok t;
	int rv;

	if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	}
	if (t.type != QPI_WIRE_BIN) {
		return bad_type(r, f, &t, "a bin");
	}
	if (t.len == 0 && zero_ok) {
		*gotp = false;
		return QP_OK;
	}
	if (t.len != n) {
		return qpi_err(QP_EPROTO,
		    "%s: field %s must be %zu bytes%s, not %u", r->op,
		    field_names[f], n, zero_ok ? " or empty" : "", t.len);
	}
	memcpy(out, t.ptr, n);
	if (gotp != NULL) {
		*gotp = true;
	}
	return QP_OK;
}

static bool
printable(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] < 0x20 || s[i] > 0x7e) {
			return false;
		}
	}
	return true;
}

/* A str of lo..hi printable ASCII bytes, copied NUL-terminated to out. */
static int
rd_text(rd *r, int f, size_t lo, size_t hi, char *out)
{
	qpi_wire_tok t;
	int rv;

	if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	}
	if (t.type != QPI_WIRE_STR) {
		return bad_type(r, f, &t, "a str");
	}
	if (t.len < lo || t.len > hi || !printable(t.ptr, t.len)) {
		return qpi_err(QP_EPROTO,
		    "%s: field %s must be %zu to %zu printable ASCII bytes",
		    r->op, field_names[f], lo, hi);
	}
	memcpy(out, t.ptr, t.len);
	out[t.len] = '\0';
	return QP_OK;
}

static int
rd_name(rd *r, int f, char *out)
{
	qpi_wire_tok t;
	int rv;

	if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	}
	if (t.type != QPI_WIRE_STR) {
		return bad_type(r, f, &t, "a str");
	}
	if (!qpi_wire_name_valid((const char *) t.ptr, t.len)) {
		return qpi_err(QP_EPROTO,
		    "%s: name must be 1 to %d bytes of A-Z a-z 0-9 . _ - (not "
		    ". or ..)",
		    r->op, QP_NAME_MAX);
	}
	memcpy(out, t.ptr, t.len);
	out[t.len] = '\0';
	return QP_OK;
}

/* One item: any value nested at most QPI_WIRE_MAX_DEPTH deep below it,
 * no larger than max_message (a bin counts its payload). */
static int
rd_item(rd *r, int f, qpi_wire_item *it)
{
	size_t start = r->pos, size, hl;
	const uint8_t *p = r->p + start;

	if (bin_hdr(p, r->len - start, &hl, &size)) {
		/* A bin, the usual item: its length read straight. */
		r->pos = start + hl + size;
	} else if (qpi_wire_skip(r->p, r->len, &r->pos, QPI_WIRE_MAX_DEPTH)
	    != QP_OK) {
		return QP_EPROTO; /* the walker names what is wrong */
	} else {
		/* Not a bin (a bin the walker can pass, bin_hdr took). */
		size = r->pos - start;
	}
	if (size > r->max_message) {
		return qpi_err(QP_ETOOBIG,
		    "%s: %s of %zu bytes is over the limit of %llu bytes",
		    r->op, field_names[f], size,
		    (unsigned long long) r->max_message);
	}
	it->data = p;
	it->len = r->pos - start;
	return QP_OK;
}

/* An array header of lo..max_batch elements that must fit in cap slots;
 * *np gets the count (also when it does not fit: QP_ETOOBIG). */
static int
rd_batch(rd *r, int f, uint32_t lo, uint32_t cap, uint32_t *np)
{
	qpi_wire_tok t;
	int rv;

	if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	}
	if (t.type != QPI_WIRE_ARRAY) {
		return bad_type(r, f, &t, "an array");
	}
	if (t.len < lo) {
		return bad_range(r, f, "an array of at least one element");
	}
	if (t.len > r->max_batch) {
		return qpi_err(QP_ETOOBIG,
		    "%s: %u %s in one frame, over the limit of %u", r->op,
		    t.len, field_names[f], r->max_batch);
	}
	*np = t.len;
	if (t.len > cap) {
		return qpi_err(QP_ETOOBIG,
		    "%s: %u %s, more than the %u the caller has room for",
		    r->op, t.len, field_names[f], cap);
	}
	return QP_OK;
}

static int
rd_ids(rd *r, int f, uint32_t lo, uint64_t *ids, uint32_t cap, uint32_t *np)
{
	int rv;

	if ((rv = rd_batch(r, f, lo, cap, np)) != QP_OK) {
		return rv;
	}
	for (uint32_t i = 0; i < *np; i++) {
		if ((rv = rd_uint(r, f, 0, UINT64_MAX, &ids[i])) != QP_OK) {
			return rv;
		}
	}
	return QP_OK;
}

/* A map of str keys: known keys (names[0..n)) take uint values through
 * set(), others are skipped; duplicates: the last wins. */
static int
rd_map_hdr(rd *r, int f, uint32_t *np)
{
	qpi_wire_tok t;
	int rv;

	if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	}
	if (t.type != QPI_WIRE_MAP) {
		return bad_type(r, f, &t, "a map");
	}
	*np = t.len;
	return QP_OK;
}

static int
rd_key(rd *r, int f, const char *const *names, size_t n, size_t *idx)
{
	qpi_wire_tok t;
	int rv;

	if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	}
	if (t.type != QPI_WIRE_STR) {
		return qpi_err(QP_EPROTO, "%s: %s keys must be str, not %s",
		    r->op, field_names[f], kind_name(t.type));
	}
	for (*idx = 0; *idx < n; (*idx)++) {
		if (strlen(names[*idx]) == t.len
		    && memcmp(names[*idx], t.ptr, t.len) == 0) {
			break;
		}
	}
	return QP_OK;
}

static int
rd_stat(rd *r, int f, qp_queue_stats *st)
{
	uint32_t n = 0;
	size_t k;
	int rv;

	memset(st, 0, sizeof(*st));
	st->oldest_age_ms = -1;
	if ((rv = rd_map_hdr(r, f, &n)) != QP_OK) {
		return rv;
	}
	for (uint32_t i = 0; i < n; i++) {
		if ((rv = rd_key(r, f, stat_keys, NSTAT, &k)) != QP_OK) {
			return rv;
		}
		if (k == NSTAT) {
			rv = qpi_wire_skip(
			    r->p, r->len, &r->pos, QPI_WIRE_MAX_DEPTH);
		} else if (k == NSTAT - 1) {
			int64_t v;
			rv = rd_int(r, f, -1, INT64_MAX, &v);
			st->oldest_age_ms = v;
		} else {
			rv = rd_uint(r, f, 0, UINT64_MAX, stat_field(st, k));
		}
		if (rv != QP_OK) {
			return QP_EPROTO;
		}
	}
	return QP_OK;
}

static int
rd_limit_map(rd *r, int f, qpi_wire_limits *l)
{
	uint32_t n = 0;
	size_t k;
	uint64_t v = 0;
	int rv;

	memset(l, 0, sizeof(*l));
	if ((rv = rd_map_hdr(r, f, &n)) != QP_OK) {
		return rv;
	}
	for (uint32_t i = 0; i < n; i++) {
		if ((rv = rd_key(r, f, limit_keys, NLIMIT, &k)) != QP_OK) {
			return rv;
		}
		if (k == NLIMIT) {
			rv = qpi_wire_skip(
			    r->p, r->len, &r->pos, QPI_WIRE_MAX_DEPTH);
		} else {
			rv = rd_uint(r, f, 0,
			    k == 1 ? UINT32_MAX : (uint64_t) UINT64_MAX, &v);
		}
		if (rv != QP_OK) {
			return QP_EPROTO;
		}
		if (k == 0) {
			l->max_message = v;
		} else if (k == 1) {
			l->max_batch = (uint32_t) v;
		} else if (k == 2) {
			l->lease_ms = v;
		}
	}
	return QP_OK;
}

static int
rd_fixarray(rd *r, int f, uint32_t n)
{
	qpi_wire_tok t;
	int rv;

	if (n <= 15 && r->pos < r->len && r->p[r->pos] == (0x90 | n)) {
		r->pos++; /* the usual form, read straight */
		return QP_OK;
	}
	if ((rv = rd_tok(r, &t)) != QP_OK) {
		return rv;
	}
	if (t.type != QPI_WIRE_ARRAY || t.len != n) {
		return qpi_err(QP_EPROTO,
		    "%s: each of %s must be an array of %u elements", r->op,
		    field_names[f], n);
	}
	return QP_OK;
}

/* The reply to a frame whose op could not be read: op 0. */
static const opdef err_def = {"error", false, 0, {F_END}, {F_END}};

/* Reads [version, op, req_id] (and status) of a frame of the given kind;
 * *nfp gets the number of fields that follow. */
static int
rd_head(rd *r, bool reply, uint32_t *opp, uint64_t *idp, int *statusp,
    unsigned *nfp)
{
	qpi_wire_tok t, tv, to, ti;
	const opdef *d;
	unsigned head = reply ? 4 : 3, want;

	r->op = reply ? "reply" : "request";
	if (rd_tok(r, &t) != QP_OK) {
		return QP_EPROTO;
	}
	if (t.type != QPI_WIRE_ARRAY) {
		return qpi_err(QP_EPROTO,
		    "a %s frame must be a msgpack array, not %s", r->op,
		    kind_name(t.type));
	}
	if (t.len < 3) {
		return qpi_err(QP_EPROTO,
		    "a %s frame must start [version, op, req_id], got %u "
		    "elements",
		    r->op, t.len);
	}
	if (rd_tok(r, &tv) != QP_OK || rd_tok(r, &to) != QP_OK
	    || rd_tok(r, &ti) != QP_OK) {
		return QP_EPROTO;
	}
	/* op and req_id first, so that even a refused frame can be answered */
	if (to.type == QPI_WIRE_UINT && to.u <= UINT32_MAX) {
		*opp = (uint32_t) to.u;
	}
	if (ti.type == QPI_WIRE_UINT) {
		*idp = ti.u;
	}
	if (tv.type != QPI_WIRE_UINT) {
		return qpi_err(QP_EPROTO,
		    "frame version must be an unsigned integer, not %s",
		    kind_name(tv.type));
	}
	if (tv.u != QPI_WIRE_VERSION) {
		return qpi_err(QP_EVERSION,
		    "protocol version %llu is not supported (this is %d)",
		    (unsigned long long) tv.u, QPI_WIRE_VERSION);
	}
	if (to.type != QPI_WIRE_UINT) {
		return qpi_err(QP_EPROTO,
		    "frame op must be an unsigned integer, not %s",
		    kind_name(to.type));
	}
	if (reply && to.u == 0) {
		d = &err_def; /* the answer to an unreadable request */
	} else if ((d = op_def(*opp)) == NULL || to.u > QPI_OP_MAX) {
		*opp = 0;
		return qpi_err(
		    QP_EPROTO, "unknown op %llu", (unsigned long long) to.u);
	}
	r->op = d->name;
	if (ti.type != QPI_WIRE_UINT) {
		return qpi_err(QP_EPROTO,
		    "%s: req_id must be an unsigned integer, not %s", r->op,
		    kind_name(ti.type));
	}
	want = head + op_nfields(reply ? d->rep : d->req);
	if (reply) {
		uint64_t st;
		if (t.len < 4) {
			return qpi_err(
			    QP_EPROTO, "%s: a reply has no status", r->op);
		}
		if (rd_uint(r, H_STATUS, 0, INT32_MAX, &st) != QP_OK) {
			return QP_EPROTO;
		}
		*statusp = (int) st;
		if (st != QP_OK) {
			want = head + 1; /* the message */
		} else if (d == &err_def) {
			return qpi_err(QP_EPROTO,
			    "a reply to op 0 must carry an error status");
		}
	}
	if (t.len != want) {
		return qpi_err(QP_EPROTO,
		    "%s: a %s frame must have %u elements, not %u", r->op,
		    reply ? "reply" : "request", want, t.len);
	}
	*nfp = want - head;
	return QP_OK;
}

static int
rd_end(rd *r)
{
	if (r->pos != r->len) {
		return qpi_err(QP_EPROTO,
		    "%s: %zu trailing bytes after the frame", r->op,
		    r->len - r->pos);
	}
	return QP_OK;
}

static int
rd_frame_size(rd *r, size_t len)
{
	if (r->max_message > UINT64_MAX - QPI_WIRE_SLACK) {
		return QP_OK; /* no limit */
	}
	if ((uint64_t) len > r->max_message + QPI_WIRE_SLACK) {
		return qpi_err(QP_ETOOBIG,
		    "%s: frame of %zu bytes is over the limit of %llu", r->op,
		    len,
		    (unsigned long long) (r->max_message + QPI_WIRE_SLACK));
	}
	return QP_OK;
}

static int
rd_req_field(rd *r, int f, const opdef *d, qpi_wire_req *q)
{
	uint64_t u;
	int64_t i;
	int rv;

	switch (f) {
	case F_NAME:
		return rd_name(r, f, q->name);
	case F_RESULTS:
		return rd_name(r, f, q->results);
	case F_CLIENT:
		return rd_fixbin(
		    r, f, q->client_id, QPI_WIRE_ID_LEN, false, NULL);
	case F_SEQ:
		return rd_uint(r, f, 0, UINT64_MAX, &q->seq);
	case F_TIMEOUT:
		rv = rd_int(r, f, -1, INT64_MAX, &i);
		q->timeout = i;
		return rv;
	case F_FLAGS:
		rv = rd_uint(r, f, 0, UINT32_MAX, &u);
		if (rv == QP_OK && (u & ~(uint64_t) d->flags) != 0) {
			return qpi_err(QP_EPROTO, "%s: unknown flags 0x%llx",
			    r->op,
			    (unsigned long long) (u & ~(uint64_t) d->flags));
		}
		q->flags = (uint32_t) u;
		return rv;
	case F_ITEM:
		return rd_item(r, f, &q->item);
	case F_ITEMS:
		if ((rv = rd_batch(r, f, 1, q->items_cap, &q->nitems))
		    != QP_OK) {
			return rv;
		}
		for (uint32_t k = 0; k < q->nitems; k++) {
			memset(&q->items[k], 0, sizeof(q->items[k]));
			if ((rv = rd_item(r, f, &q->items[k])) != QP_OK) {
				return rv;
			}
		}
		return QP_OK;
	case F_MAXITEMS:
		rv = rd_uint(r, f, 1, r->max_batch, &u);
		q->max_items = (uint32_t) u;
		return rv;
	case F_LMODE:
		rv = rd_uint(r, f, 0, 1, &u);
		q->lease_mode = (uint32_t) u;
		return rv;
	case F_LMS:
		return rd_uint(r, f, 0, QPI_WIRE_MS_MAX, &q->lease_ms);
	case F_ACKS:
	case F_IDS:
		return rd_ids(
		    r, f, f == F_IDS ? 1 : 0, q->ids, q->ids_cap, &q->nids);
	case F_LEASE:
		return rd_uint(r, f, 0, UINT64_MAX, &q->lease_id);
	case F_DELAY:
		return rd_uint(r, f, 0, QPI_WIRE_MS_MAX, &q->delay_ms);
	case F_COUNT:
		return rd_uint(r, f, 1, UINT64_MAX, &q->count);
	case F_MAXSIZE:
		return rd_uint(r, f, 0, UINT64_MAX, &q->maxsize);
	case F_CAPACITY:
		return rd_uint(r, f, 0, UINT64_MAX, &q->capacity);
	case F_MAXMSG:
		return rd_uint(r, f, 0, UINT64_MAX, &q->max_message);
	case F_SIDE:
	case F_SIDE_ANY:
		rv = rd_int(r, f, f == F_SIDE ? 0 : -1, 1, &i);
		q->side = (int32_t) i;
		return rv;
	case F_CNAME:
		return rd_text(
		    r, f, 0, QPI_WIRE_CLIENT_NAME_MAX, q->client_name);
	case F_FSYNC:
		return rd_text(r, f, 0, QPI_WIRE_FSYNC_MAX, q->fsync);
	case F_MAC:
		return rd_fixbin(r, f, q->mac, QPI_WIRE_MAC_LEN, false, NULL);
	case F_CNONCE:
		return rd_fixbin(
		    r, f, q->nonce, QPI_WIRE_NONCE_LEN, true, &q->has_nonce);
	default:
		return qpi_err(QP_EPROTO, "%s: internal field %d", r->op, f);
	}
}

int
qpi_wire_decode_req(
    const void *buf, size_t len, const qpi_wire_limits *lim, qpi_wire_req *q)
{
	qpi_wire_item *items = q->items;
	uint64_t *ids = q->ids;
	uint32_t items_cap = q->items_cap, ids_cap = q->ids_cap;
	rd r = {.p = buf, .len = len};
	const opdef *d;
	unsigned nf;
	int rv;

	memset(q, 0, sizeof(*q));
	q->items = items;
	q->items_cap = items == NULL ? 0 : items_cap;
	q->ids = ids;
	q->ids_cap = ids == NULL ? 0 : ids_cap;
	rd_limits(&r, lim);
	if (buf == NULL) {
		return qpi_err(QP_EPROTO, "request frame is missing");
	}
	if ((rv = rd_head(&r, false, &q->op, &q->req_id, NULL, &nf))
	    != QP_OK) {
		return rv;
	}
	if ((rv = rd_frame_size(&r, len)) != QP_OK) {
		return rv;
	}
	d = op_def(q->op);
	for (unsigned i = 0; i < nf; i++) {
		if ((rv = rd_req_field(&r, d->req[i], d, q)) != QP_OK) {
			return rv;
		}
	}
	return rd_end(&r);
}

static int
rd_rep_field(rd *r, int f, qpi_wire_rep *p)
{
	uint64_t u;
	int rv;

	switch (f) {
	case R_SVERSION:
		return rd_text(
		    r, f, 1, QPI_WIRE_VERSION_STR_MAX, p->server_version);
	case R_LIMITS:
		return rd_limit_map(r, f, &p->limits);
	case R_NONCE:
		return rd_fixbin(
		    r, f, p->nonce, QPI_WIRE_NONCE_LEN, false, NULL);
	case R_AUTHREQ:
		return rd_bool(r, f, &p->auth_required);
	case R_SMAC:
		return rd_fixbin(
		    r, f, p->mac, QPI_WIRE_MAC_LEN, true, &p->has_mac);
	case R_GITEMS:
		if ((rv = rd_batch(r, f, 0, p->items_cap, &p->nitems))
		    != QP_OK) {
			return rv;
		}
		for (uint32_t k = 0; k < p->nitems; k++) {
			qpi_wire_item *it = &p->items[k];
			memset(it, 0, sizeof(*it));
			if ((rv = rd_fixarray(r, f, 3)) != QP_OK
			    || (rv = rd_uint(
			            r, f, 0, UINT64_MAX, &it->lease_id))
			        != QP_OK
			    || (rv = rd_uint(r, f, 1, UINT32_MAX, &u)) != QP_OK
			    || (rv = rd_item(r, f, it)) != QP_OK) {
				return rv;
			}
			it->deliveries = (uint32_t) u;
		}
		return QP_OK;
	case R_MISSING:
		return rd_ids(r, f, 0, p->ids, p->ids_cap, &p->nids);
	case R_COUNT:
		return rd_uint(r, f, 0, UINT64_MAX, &p->count);
	case R_STAT:
		return rd_stat(r, f, &p->stat);
	case R_LIST: {
		qpi_wire_tok t;
		if ((rv = rd_tok(r, &t)) != QP_OK) {
			return rv;
		}
		if (t.type != QPI_WIRE_ARRAY) {
			return bad_type(r, f, &t, "an array");
		}
		p->nqueues = t.len;
		if (t.len > p->queues_cap) {
			return qpi_err(QP_ETOOBIG,
			    "list: %u queues, more than the %u the caller has "
			    "room for",
			    t.len, p->queues_cap);
		}
		for (uint32_t k = 0; k < t.len; k++) {
			qpi_wire_qentry *e = &p->queues[k];
			if ((rv = rd_fixarray(r, f, 2)) != QP_OK
			    || (rv = rd_name(r, f, e->name)) != QP_OK
			    || (rv = rd_stat(r, f, &e->stat)) != QP_OK) {
				return rv;
			}
		}
		return QP_OK;
	}
	case R_SIDE:
		rv = rd_uint(r, f, 0, 1, &u);
		p->side = (int32_t) u;
		return rv;
	case R_PEER:
		return rd_bool(r, f, &p->peer_open);
	case R_READY:
		return rd_bool(r, f, &p->ready);
	case R_ITEM:
		return rd_item(r, f, &p->item);
	default:
		return qpi_err(QP_EPROTO, "%s: internal field %d", r->op, f);
	}
}

int
qpi_wire_decode_rep(
    const void *buf, size_t len, const qpi_wire_limits *lim, qpi_wire_rep *p)
{
	qpi_wire_item *items = p->items;
	uint64_t *ids = p->ids;
	qpi_wire_qentry *queues = p->queues;
	uint32_t items_cap = p->items_cap, ids_cap = p->ids_cap;
	uint32_t queues_cap = p->queues_cap;
	rd r = {.p = buf, .len = len};
	const opdef *d;
	unsigned nf;
	int rv;

	memset(p, 0, sizeof(*p));
	p->items = items;
	p->items_cap = items == NULL ? 0 : items_cap;
	p->ids = ids;
	p->ids_cap = ids == NULL ? 0 : ids_cap;
	p->queues = queues;
	p->queues_cap = queues == NULL ? 0 : queues_cap;
	p->stat.oldest_age_ms = -1;
	rd_limits(&r, lim);
	if (buf == NULL) {
		return qpi_err(QP_EPROTO, "reply frame is missing");
	}
	if ((rv = rd_head(&r, true, &p->op, &p->req_id, &p->status, &nf))
	    != QP_OK) {
		return rv;
	}
	if ((rv = rd_frame_size(&r, len)) != QP_OK) {
		return rv;
	}
	if (p->status != QP_OK) {
		qpi_wire_tok t;
		if ((rv = rd_tok(&r, &t)) != QP_OK) {
			return rv;
		}
		if (t.type != QPI_WIRE_STR) {
			return bad_type(&r, H_ERRMSG, &t, "a str");
		}
		/* keep at most QPI_WIRE_ERRMSG_MAX bytes, control bytes
		 * replaced: the text ends up on terminals and in logs */
		size_t n = t.len < QPI_WIRE_ERRMSG_MAX ? t.len
		                                       : QPI_WIRE_ERRMSG_MAX;
		for (size_t i = 0; i < n; i++) {
			uint8_t c = t.ptr[i];
			p->errmsg[i]
			    = (c < 0x20 || c == 0x7f) ? '?' : (char) c;
		}
		p->errmsg[n] = '\0';
		return rd_end(&r);
	}
	d = op_def(p->op);
	for (unsigned i = 0; i < nf; i++) {
		if ((rv = rd_rep_field(&r, d->rep[i], p)) != QP_OK) {
			return rv;
		}
	}
	return rd_end(&r);
}

/* ---- encoding frames ---- */

static int
enc_bad(const char *op, int f, const char *want)
{
	return qpi_err(
	    QP_EINVAL, "%s: %s must be %s", op, field_names[f], want);
}

static int
enc_name(qpi_wire_buf *b, const char *op, const char *name)
{
	size_t n = strnlen(name, QP_NAME_MAX + 1);

	if (!qpi_wire_name_valid(name, n)) {
		return qpi_err(QP_EINVAL,
		    "%s: name '%.*s' must be 1 to %d bytes of A-Z a-z 0-9 . _ "
		    "- (not . or ..)",
		    op, (int) (n > 64 ? 64 : n), name, QP_NAME_MAX);
	}
	return qpi_wire_put_str(b, name, n);
}

static int
enc_text(qpi_wire_buf *b, const char *op, int f, const char *s, size_t lo,
    size_t hi)
{
	size_t n = strnlen(s, hi + 1);

	if (n < lo || n > hi || !printable((const uint8_t *) s, n)) {
		return enc_bad(op, f, "short printable ASCII text");
	}
	return qpi_wire_put_str(b, s, n);
}

/* An item's bytes must be one msgpack value: at least not none. */
static int
item_check(const char *op, int f, const qpi_wire_item *it)
{
	if (it->data == NULL || it->len == 0) {
		return enc_bad(op, f, "one msgpack value (it is empty)");
	}
	return QP_OK;
}

static int
enc_item(qpi_wire_buf *b, const char *op, int f, const qpi_wire_item *it)
{
	int rv = item_check(op, f, it);

	return rv != QP_OK ? rv : qpi_wire_put_raw(b, it->data, it->len);
}

static int
enc_ids(qpi_wire_buf *b, const uint64_t *ids, uint32_t n)
{
	int rv = qpi_wire_put_array(b, n);
	size_t len = 0;

	/* Their room made once, then written straight (a get's 256 acks). */
	for (uint32_t i = 0; i < n; i++) {
		len += uint_width(ids[i]);
	}
	if (rv == QP_OK && (rv = buf_reserve(b, len)) == QP_OK) {
		uint8_t *o = b->data + b->len;
		for (uint32_t i = 0; i < n; i++) {
			o = wr_uint(o, ids[i]);
		}
		b->len += len;
	}
	return rv;
}

static int
enc_stat(qpi_wire_buf *b, const qp_queue_stats *st)
{
	qp_queue_stats s = *st;
	int rv = qpi_wire_put_map(b, (uint32_t) NSTAT);

	for (size_t i = 0; rv == QP_OK && i < NSTAT; i++) {
		rv = qpi_wire_put_str(b, stat_keys[i], strlen(stat_keys[i]));
		if (rv != QP_OK) {
			break;
		}
		if (i == NSTAT - 1) {
			rv = qpi_wire_put_int(
			    b, s.oldest_age_ms < -1 ? -1 : s.oldest_age_ms);
		} else {
			rv = qpi_wire_put_uint(b, *stat_field(&s, i));
		}
	}
	return rv;
}

static int
enc_req_field(qpi_wire_buf *b, int f, const opdef *d, const qpi_wire_req *q)
{
	const char *op = d->name;
	int rv;

	switch (f) {
	case F_NAME:
		return enc_name(b, op, q->name);
	case F_RESULTS:
		return enc_name(b, op, q->results);
	case F_CLIENT:
		return qpi_wire_put_bin(b, q->client_id, QPI_WIRE_ID_LEN);
	case F_SEQ:
		return qpi_wire_put_uint(b, q->seq);
	case F_TIMEOUT:
		if (q->timeout < -1) {
			return enc_bad(op, f, "-1, 0 or positive");
		}
		return qpi_wire_put_int(b, q->timeout);
	case F_FLAGS:
		if ((q->flags & ~d->flags) != 0) {
			return enc_bad(op, f, "known flags only");
		}
		return qpi_wire_put_uint(b, q->flags);
	case F_ITEM:
		return enc_item(b, op, f, &q->item);
	case F_ITEMS:
		if (q->nitems == 0 || q->items == NULL) {
			return enc_bad(op, f, "at least one item");
		}
		if ((rv = qpi_wire_put_array(b, q->nitems)) != QP_OK) {
			return rv;
		}
		for (uint32_t i = 0; i < q->nitems; i++) {
			if ((rv = enc_item(b, op, f, &q->items[i])) != QP_OK) {
				return rv;
			}
		}
		return QP_OK;
	case F_MAXITEMS:
		if (q->max_items == 0) {
			return enc_bad(op, f, "at least 1");
		}
		return qpi_wire_put_uint(b, q->max_items);
	case F_LMODE:
		if (q->lease_mode > 1) {
			return enc_bad(op, f, "0 (confirm) or 1 (work)");
		}
		return qpi_wire_put_uint(b, q->lease_mode);
	case F_LMS:
		if (q->lease_ms > QPI_WIRE_MS_MAX) {
			return enc_bad(op, f, "at most 2^31-1 ms");
		}
		return qpi_wire_put_uint(b, q->lease_ms);
	case F_ACKS:
	case F_IDS:
		if ((f == F_IDS && q->nids == 0)
		    || (q->nids > 0 && q->ids == NULL)) {
			return enc_bad(op, f, "at least one lease id");
		}
		return enc_ids(b, q->ids, q->nids);
	case F_LEASE:
		return qpi_wire_put_uint(b, q->lease_id);
	case F_DELAY:
		if (q->delay_ms > QPI_WIRE_MS_MAX) {
			return enc_bad(op, f, "at most 2^31-1 ms");
		}
		return qpi_wire_put_uint(b, q->delay_ms);
	case F_COUNT:
		if (q->count == 0) {
			return enc_bad(op, f, "at least 1");
		}
		return qpi_wire_put_uint(b, q->count);
	case F_MAXSIZE:
		return qpi_wire_put_uint(b, q->maxsize);
	case F_CAPACITY:
		return qpi_wire_put_uint(b, q->capacity);
	case F_MAXMSG:
		return qpi_wire_put_uint(b, q->max_message);
	case F_SIDE:
	case F_SIDE_ANY:
		if (q->side > 1 || q->side < (f == F_SIDE ? 0 : -1)) {
			return enc_bad(op, f,
			    f == F_SIDE ? "0 or 1" : "-1 (any), 0 or 1");
		}
		return qpi_wire_put_int(b, q->side);
	case F_CNAME:
		return enc_text(
		    b, op, f, q->client_name, 0, QPI_WIRE_CLIENT_NAME_MAX);
	case F_FSYNC:
		return enc_text(b, op, f, q->fsync, 0, QPI_WIRE_FSYNC_MAX);
	case F_MAC:
		return qpi_wire_put_bin(b, q->mac, QPI_WIRE_MAC_LEN);
	case F_CNONCE:
		return qpi_wire_put_bin(
		    b, q->nonce, q->has_nonce ? QPI_WIRE_NONCE_LEN : 0);
	default:
		return qpi_err(QP_EINVAL, "%s: internal field %d", op, f);
	}
}

static int
enc_head(
    qpi_wire_buf *b, const opdef *d, uint32_t op, uint64_t req_id, unsigned n)
{
	int rv;

	if ((rv = qpi_wire_put_array(b, n)) != QP_OK
	    || (rv = qpi_wire_put_uint(b, QPI_WIRE_VERSION)) != QP_OK
	    || (rv = qpi_wire_put_uint(b, op)) != QP_OK
	    || (rv = qpi_wire_put_uint(b, req_id)) != QP_OK) {
		return rv;
	}
	return QP_OK;
}

int
qpi_wire_encode_req(const qpi_wire_req *q, qpi_wire_buf *out)
{
	const opdef *d = op_def(q->op);
	size_t start = out->len;
	unsigned nf;
	int rv;

	if (d == NULL) {
		return qpi_err(QP_EINVAL, "unknown op %u", q->op);
	}
	nf = op_nfields(d->req);
	rv = enc_head(out, d, q->op, q->req_id, 3 + nf);
	for (unsigned i = 0; rv == QP_OK && i < nf; i++) {
		rv = enc_req_field(out, d->req[i], d, q);
	}
	if (rv != QP_OK) {
		out->len = start;
	}
	return rv;
}

/* A get's items, [[lease_id, deliveries, item], ...]: measured, room
 * reserved once (a batch is most of what a server encodes), then written
 * in one pass. */
static int
enc_gitems(qpi_wire_buf *b, const char *op, int f, const qpi_wire_rep *p)
{
	size_t need = array_width(p->nitems);
	int rv;

	if (p->nitems > 0 && p->items == NULL) {
		return enc_bad(op, f, "given when nitems > 0");
	}
	for (uint32_t i = 0; i < p->nitems; i++) {
		const qpi_wire_item *it = &p->items[i];
		if (it->deliveries == 0) {
			return enc_bad(op, f,
			    "items with a delivery count of at least 1");
		}
		if ((rv = item_check(op, f, it)) != QP_OK) {
			return rv;
		}
		size_t one = 1 + uint_width(it->lease_id)
		    + uint_width(it->deliveries);
		if (it->len > SIZE_MAX - need - one) {
			return put_too_long("array", it->len);
		}
		need += one + it->len;
	}
	if ((rv = buf_reserve(b, need)) != QP_OK) {
		return rv;
	}
	uint8_t *o = wr_array(b->data + b->len, p->nitems);
	for (uint32_t i = 0; i < p->nitems; i++) {
		const qpi_wire_item *it = &p->items[i];
		*o++ = 0x93; /* fixarray of 3 */
		o = wr_uint(o, it->lease_id);
		o = wr_uint(o, it->deliveries);
		memcpy(o, it->data, it->len);
		o += it->len;
	}
	b->len = (size_t) (o - b->data);
	return QP_OK;
}

static int
enc_rep_field(qpi_wire_buf *b, int f, const opdef *d, const qpi_wire_rep *p)
{
	const char *op = d->name;
	int rv;

	switch (f) {
	case R_SVERSION:
		return enc_text(
		    b, op, f, p->server_version, 1, QPI_WIRE_VERSION_STR_MAX);
	case R_LIMITS: {
		uint64_t v[NLIMIT] = {p->limits.max_message,
		    p->limits.max_batch, p->limits.lease_ms};
		rv = qpi_wire_put_map(b, (uint32_t) NLIMIT);
		for (size_t i = 0; rv == QP_OK && i < NLIMIT; i++) {
			rv = qpi_wire_put_str(
			    b, limit_keys[i], strlen(limit_keys[i]));
			if (rv == QP_OK) {
				rv = qpi_wire_put_uint(b, v[i]);
			}
		}
		return rv;
	}
	case R_NONCE:
		return qpi_wire_put_bin(b, p->nonce, QPI_WIRE_NONCE_LEN);
	case R_AUTHREQ:
		return qpi_wire_put_bool(b, p->auth_required);
	case R_SMAC:
		return qpi_wire_put_bin(
		    b, p->mac, p->has_mac ? QPI_WIRE_MAC_LEN : 0);
	case R_GITEMS:
		return enc_gitems(b, op, f, p);
	case R_MISSING:
		if (p->nids > 0 && p->ids == NULL) {
			return enc_bad(op, f, "given when nids > 0");
		}
		return enc_ids(b, p->ids, p->nids);
	case R_COUNT:
		return qpi_wire_put_uint(b, p->count);
	case R_STAT:
		return enc_stat(b, &p->stat);
	case R_LIST:
		if (p->nqueues > 0 && p->queues == NULL) {
			return enc_bad(op, f, "given when nqueues > 0");
		}
		rv = qpi_wire_put_array(b, p->nqueues);
		for (uint32_t i = 0; rv == QP_OK && i < p->nqueues; i++) {
			if ((rv = qpi_wire_put_array(b, 2)) == QP_OK
			    && (rv = enc_name(b, op, p->queues[i].name))
			        == QP_OK) {
				rv = enc_stat(b, &p->queues[i].stat);
			}
		}
		return rv;
	case R_SIDE:
		if (p->side < 0 || p->side > 1) {
			return enc_bad(op, f, "0 or 1");
		}
		return qpi_wire_put_uint(b, (uint64_t) p->side);
	case R_PEER:
		return qpi_wire_put_bool(b, p->peer_open);
	case R_READY:
		return qpi_wire_put_bool(b, p->ready);
	case R_ITEM:
		return enc_item(b, op, f, &p->item);
	default:
		return qpi_err(QP_EINVAL, "%s: internal field %d", op, f);
	}
}

int
qpi_wire_encode_rep(const qpi_wire_rep *p, qpi_wire_buf *out)
{
	const opdef *d = op_def(p->op);
	size_t start = out->len;
	unsigned nf;
	int rv;

	if (d == NULL) {
		/* an error reply to a frame whose op was unreadable */
		if (p->op != 0 || p->status == QP_OK) {
			return qpi_err(QP_EINVAL, "unknown op %u", p->op);
		}
		d = &err_def;
	}
	if (p->status < 0) {
		return qpi_err(QP_EINVAL, "%s: status %d is negative", d->name,
		    p->status);
	}
	nf = p->status == QP_OK ? op_nfields(d->rep) : 1;
	rv = enc_head(out, d, p->op, p->req_id, 4 + nf);
	if (rv == QP_OK) {
		rv = qpi_wire_put_uint(out, (uint64_t) p->status);
	}
	if (rv == QP_OK && p->status != QP_OK) {
		size_t n = strnlen(p->errmsg, QPI_WIRE_ERRMSG_MAX);
		rv = qpi_wire_put_str(out, p->errmsg, n);
	}
	for (unsigned i = 0; rv == QP_OK && p->status == QP_OK && i < nf;
	     i++) {
		rv = enc_rep_field(out, d->rep[i], d, p);
	}
	if (rv != QP_OK) {
		out->len = start;
	}
	return rv;
}
