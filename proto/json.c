/*
 * json.c - JSON text <-> msgpack values, for the CLI's --json.
 *
 * JSON to msgpack is a recursive-descent parser (RFC 8259, nesting bounded
 * by QPI_WIRE_MAX_DEPTH) that writes msgpack through wire.h's writers;
 * msgpack to JSON walks a value already checked by qpi_wire_check_value
 * with wire.h's token reader. It never includes <msgpack.h>. The mapping
 * of the types JSON lacks (bin, ext, non-string keys, NaN) is set out in
 * PROTOCOL.md, "JSON". Numbers are read and written in the C locale,
 * whatever the program's locale. No globals, no locking.
 */
#define _GNU_SOURCE
#include "wire.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 and base64 ---- */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t
utf8_seq(const uint8_t *s, size_t n)
{
	uint8_t c = s[0];
	size_t len;
	uint32_t cp;

	if (c < 0x80) {
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < len) {
		return 0;
	}
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			return 0;
		}
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	/* no overlong forms, no surrogates, nothing past U+10FFFF */
	if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)
	    || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
		return 0;
	}
	return len;
}

static bool
utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0, k;

	while (i < n) {
		if ((k = utf8_seq(s + i, n - i)) == 0) {
			return false;
		}
		i += k;
	}
	return true;
}

/* A bin reads as text: valid UTF-8 without control bytes other than tab,
 * newline and carriage return. */
static bool
bin_is_text(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if ((s[i] < 0x20 && s[i] != '\t' && s[i] != '\n'
		        && s[i] != '\r')
		    || s[i] == 0x7f) {
			return false;
		}
	}
	return utf8_valid(s, n);
}

static const char b64_alphabet[]
    = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int
b64_encode(qpi_wire_buf *o, const uint8_t *p, size_t n)
{
	char q[4];
	int rv = QP_OK;

	for (size_t i = 0; rv == QP_OK && i < n; i += 3) {
		uint32_t v = (uint32_t) p[i] << 16;
		if (i + 1 < n) {
			v |= (uint32_t) p[i + 1] << 8;
		}
		if (i + 2 < n) {
			v |= p[i + 2];
		}
		q[0] = b64_alphabet[(v >> 18) & 63];
		q[1] = b64_alphabet[(v >> 12) & 63];
		q[2] = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
		q[3] = i + 2 < n ? b64_alphabet[v & 63] : '=';
		rv = qpi_wire_put_raw(o, q, 4);
	}
	return rv;
}

static int
b64_val(uint8_t c)
{
	const char *p = c != 0 ? strchr(b64_alphabet, c) : NULL;

	return p != NULL ? (int) (p - b64_alphabet) : -1;
}

/* Decodes padded base64 (s, n) into out (at least n / 4 * 3 bytes); returns
 * the decoded length, or -1 if s is not base64. */
static long
b64_decode(const uint8_t *s, size_t n, uint8_t *out)
{
	size_t o = 0;

	if (n % 4 != 0) {
		return -1;
	}
	for (size_t i = 0; i < n; i += 4) {
		int v[4];
		int pad = 0;
		for (int k = 0; k < 4; k++) {
			if (s[i + k] == '=' && i + 4 == n && k >= 2) {
				v[k] = 0;
				pad++;
			} else if (pad > 0 || (v[k] = b64_val(s[i + k])) < 0) {
				return -1;
			}
		}
		uint32_t w = (uint32_t) v[0] << 18 | (uint32_t) v[1] << 12
		    | (uint32_t) v[2] << 6 | (uint32_t) v[3];
		out[o++] = (uint8_t) (w >> 16);
		if (pad < 2) {
			out[o++] = (uint8_t) (w >> 8);
		}
		if (pad < 1) {
			out[o++] = (uint8_t) w;
		}
	}
	return (long) o;
}

/* ---- the C locale for numbers ---- */

typedef struct cloc {
	locale_t c;
} cloc;

static int
cloc_get(cloc *l, locale_t *lp)
{
	if (l->c == (locale_t) 0) {
		l->c = newlocale(LC_NUMERIC_MASK, "C", (locale_t) 0);
		if (l->c == (locale_t) 0) {
			return qpi_err(QP_ENOMEM,
			    "JSON: cannot make the C locale for numbers");
		}
	}
	*lp = l->c;
	return QP_OK;
}

static void
cloc_free(cloc *l)
{
	if (l->c != (locale_t) 0) {
		freelocale(l->c);
	}
}

/* ---- JSON to msgpack ---- */

typedef struct jp {
	const uint8_t *s;
	size_t len;
	size_t pos;
	qpi_wire_buf out;
	cloc loc;
} jp;

static int
jp_err(const jp *p, const char *what)
{
	size_t line = 1, col = 1;

	for (size_t i = 0; i < p->pos && i < p->len; i++) {
		if (p->s[i] == '\n') {
			line++;
			col = 1;
		} else {
			col++;
		}
	}
	if (p->pos >= p->len) {
		return qpi_err(QP_EINVAL,
		    "bad JSON: %s at the end of the text (line %zu, column "
		    "%zu)",
		    what, line, col);
	}
	uint8_t c = p->s[p->pos];
	if (c > 0x20 && c < 0x7f) {
		return qpi_err(QP_EINVAL,
		    "bad JSON: %s at line %zu, column %zu (near '%c')", what,
		    line, col, c);
	}
	return qpi_err(QP_EINVAL,
	    "bad JSON: %s at line %zu, column %zu (byte 0x%02x)", what, line,
	    col, c);
}

static void
jp_ws(jp *p)
{
	while (p->pos < p->len
	    && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t'
	        || p->s[p->pos] == '\n' || p->s[p->pos] == '\r')) {
		p->pos++;
	}
}

/* Containers and strings get a 5-byte placeholder header, fixed up at the
 * end to the shortest form (the body moves left). */
static int
jp_open(jp *p, size_t *at)
{
	static const uint8_t zero[5];

	*at = p->out.len;
	return qpi_wire_put_raw(&p->out, zero, 5);
}

/* kind: 0 str, 1 array, 2 map. */
static int
jp_close(jp *p, size_t at, int kind, uint64_t n)
{
	uint8_t h[5];
	size_t hl, body = p->out.len - at - 5;

	if (n > UINT32_MAX) {
		return jp_err(p, "a string or container over 4 GiB");
	}
	if (kind == 0 && n <= 31) {
		h[0] = (uint8_t) (0xa0 | n);
		hl = 1;
	} else if (kind != 0 && n <= 15) {
		h[0] = (uint8_t) ((kind == 1 ? 0x90 : 0x80) | n);
		hl = 1;
	} else if (kind == 0 && n <= 0xff) {
		h[0] = 0xd9;
		h[1] = (uint8_t) n;
		hl = 2;
	} else if (n <= 0xffff) {
		h[0] = kind == 0 ? 0xda : kind == 1 ? 0xdc : 0xde;
		h[1] = (uint8_t) (n >> 8);
		h[2] = (uint8_t) n;
		hl = 3;
	} else {
		h[0] = kind == 0 ? 0xdb : kind == 1 ? 0xdd : 0xdf;
		for (int i = 0; i < 4; i++) {
			h[1 + i] = (uint8_t) (n >> (24 - 8 * i));
		}
		hl = 5;
	}
	memmove(p->out.data + at + hl, p->out.data + at + 5, body);
	memcpy(p->out.data + at, h, hl);
	p->out.len = at + hl + body;
	return QP_OK;
}

static int
hex4(const uint8_t *s, uint32_t *v)
{
	*v = 0;
	for (int i = 0; i < 4; i++) {
		uint8_t c = s[i];
		*v <<= 4;
		if (c >= '0' && c <= '9') {
			*v |= (uint32_t) (c - '0');
		} else if (c >= 'a' && c <= 'f') {
			*v |= (uint32_t) (c - 'a' + 10);
		} else if (c >= 'A' && c <= 'F') {
			*v |= (uint32_t) (c - 'A' + 10);
		} else {
			return -1;
		}
	}
	return 0;
}

static int
put_utf8(qpi_wire_buf *o, uint32_t cp)
{
	uint8_t u[4];
	size_t n;

	if (cp < 0x80) {
		u[0] = (uint8_t) cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (uint8_t) (0xc0 | (cp >> 6));
		u[1] = (uint8_t) (0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (uint8_t) (0xe0 | (cp >> 12));
		u[1] = (uint8_t) (0x80 | ((cp >> 6) & 0x3f));
		u[2] = (uint8_t) (0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (uint8_t) (0xf0 | (cp >> 18));
		u[1] = (uint8_t) (0x80 | ((cp >> 12) & 0x3f));
		u[2] = (uint8_t) (0x80 | ((cp >> 6) & 0x3f));
		u[3] = (uint8_t) (0x80 | (cp & 0x3f));
		n = 4;
	}
	return qpi_wire_put_raw(o, u, n);
}

/* A string, at p->s[p->pos] == '"', written as a msgpack str. */
static int
jp_string(jp *p)
{
	size_t at, k;
	int rv;

	if ((rv = jp_open(p, &at)) != QP_OK) {
		return rv;
	}
	p->pos++;
	for (;;) {
		size_t run = p->pos;
		/* copy plain runs at once */
		while (p->pos < p->len && p->s[p->pos] != '"'
		    && p->s[p->pos] != '\\' && p->s[p->pos] >= 0x20
		    && p->s[p->pos] < 0x80) {
			p->pos++;
		}
		if ((rv = qpi_wire_put_raw(&p->out, p->s + run, p->pos - run))
		    != QP_OK) {
			return rv;
		}
		if (p->pos >= p->len) {
			return jp_err(p, "unterminated string");
		}
		uint8_t c = p->s[p->pos];
		if (c == '"') {
			p->pos++;
			break;
		}
		if (c < 0x20) {
			return jp_err(p,
			    "control character in a string (use an escape)");
		}
		if (c >= 0x80) {
			if ((k = utf8_seq(p->s + p->pos, p->len - p->pos))
			    == 0) {
				return jp_err(p, "invalid UTF-8 in a string");
			}
			if ((rv = qpi_wire_put_raw(&p->out, p->s + p->pos, k))
			    != QP_OK) {
				return rv;
			}
			p->pos += k;
			continue;
		}
		/* an escape */
		if (p->pos + 1 >= p->len) {
			p->pos++;
			return jp_err(p, "unterminated escape");
		}
		uint8_t e = p->s[p->pos + 1];
		const char *map = "\"\"\\\\//b\bf\fn\nr\rt\t";
		const char *m = NULL;
		for (const char *q = map; *q != '\0'; q += 2) {
			if ((uint8_t) q[0] == e) {
				m = q;
				break;
			}
		}
		if (m != NULL) {
			if ((rv = qpi_wire_put_raw(&p->out, m + 1, 1))
			    != QP_OK) {
				return rv;
			}
			p->pos += 2;
			continue;
		}
		if (e != 'u') {
			p->pos++;
			return jp_err(p, "unknown escape");
		}
		uint32_t cp, lo;
		if (p->len - p->pos < 6 || hex4(p->s + p->pos + 2, &cp) != 0) {
			return jp_err(p, "\\u needs four hex digits");
		}
		if (cp >= 0xdc00 && cp <= 0xdfff) {
			return jp_err(p, "lone low surrogate in \\u escape");
		}
		if (cp >= 0xd800 && cp <= 0xdbff) {
			if (p->len - p->pos < 12 || p->s[p->pos + 6] != '\\'
			    || p->s[p->pos + 7] != 'u'
			    || hex4(p->s + p->pos + 8, &lo) != 0 || lo < 0xdc00
			    || lo > 0xdfff) {
				return jp_err(p,
				    "high surrogate in \\u escape without its "
				    "low half");
			}
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			p->pos += 6;
		}
		p->pos += 6;
		if ((rv = put_utf8(&p->out, cp)) != QP_OK) {
			return rv;
		}
	}
	return jp_close(p, at, 0, p->out.len - at - 5);
}

static int
jp_number(jp *p)
{
	size_t start = p->pos;
	bool neg = false, integral = true;
	char small[64], *txt = small;
	locale_t c = (locale_t) 0;
	double d;
	int rv;

	if (p->s[p->pos] == '-') {
		neg = true;
		p->pos++;
	}
	if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') {
		return jp_err(p, "a digit must follow '-'");
	}
	if (p->s[p->pos] == '0') {
		p->pos++;
		if (p->pos < p->len && p->s[p->pos] >= '0'
		    && p->s[p->pos] <= '9') {
			return jp_err(p, "numbers may not have leading zeros");
		}
	} else {
		while (p->pos < p->len && p->s[p->pos] >= '0'
		    && p->s[p->pos] <= '9') {
			p->pos++;
		}
	}
	if (p->pos < p->len && p->s[p->pos] == '.') {
		integral = false;
		p->pos++;
		if (p->pos >= p->len || p->s[p->pos] < '0'
		    || p->s[p->pos] > '9') {
			return jp_err(p, "a digit must follow '.'");
		}
		while (p->pos < p->len && p->s[p->pos] >= '0'
		    && p->s[p->pos] <= '9') {
			p->pos++;
		}
	}
	if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
		integral = false;
		p->pos++;
		if (p->pos < p->len
		    && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) {
			p->pos++;
		}
		if (p->pos >= p->len || p->s[p->pos] < '0'
		    || p->s[p->pos] > '9') {
			return jp_err(p, "a digit must follow the exponent");
		}
		while (p->pos < p->len && p->s[p->pos] >= '0'
		    && p->s[p->pos] <= '9') {
			p->pos++;
		}
	}
	if (integral) {
		/* an integer that fits 64 bits stays an integer */
		uint64_t u = 0;
		bool over = false;
		for (size_t i = start + (neg ? 1 : 0); i < p->pos; i++) {
			unsigned dg = (unsigned) (p->s[i] - '0');
			if (u > (UINT64_MAX - dg) / 10) {
				over = true;
				break;
			}
			u = u * 10 + dg;
		}
		if (!over && !neg) {
			return qpi_wire_put_uint(&p->out, u);
		}
		if (!over && u <= (uint64_t) INT64_MAX + 1) {
			return qpi_wire_put_int(&p->out,
			    u == (uint64_t) INT64_MAX + 1 ? INT64_MIN
			                                  : -(int64_t) u);
		}
	}
	/* else a double, read in the C locale */
	size_t n = p->pos - start;
	if (n >= sizeof(small) && (txt = malloc(n + 1)) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory reading a number");
	}
	memcpy(txt, p->s + start, n);
	txt[n] = '\0';
	if ((rv = cloc_get(&p->loc, &c)) == QP_OK) {
		d = strtod_l(txt, NULL, c);
		rv = qpi_wire_put_double(&p->out, d);
	}
	if (txt != small) {
		free(txt);
	}
	return rv;
}

static bool
jp_word(jp *p, const char *w)
{
	size_t n = strlen(w);

	if (p->len - p->pos >= n && memcmp(p->s + p->pos, w, n) == 0) {
		p->pos += n;
		return true;
	}
	return false;
}

static int jp_value(jp *p, int depth);

/* Turns the one-pair map just written at out[at..] into a bin or ext when
 * it is {"$bin": "<base64>"} or {"$ext": [type, "<base64>"]}. */
static int
jp_special(jp *p, size_t at)
{
	const uint8_t *b = p->out.data;
	size_t len = p->out.len, pos = at + 1; /* past the fixmap header */
	qpi_wire_tok k, v, ty;
	bool ext;
	int8_t type = 0;
	long n;

	if (qpi_wire_next(b, len, &pos, &k) != QP_OK || k.type != QPI_WIRE_STR
	    || k.len != 4
	    || (memcmp(k.ptr, "$bin", 4) != 0
	        && memcmp(k.ptr, "$ext", 4) != 0)) {
		return QP_OK;
	}
	ext = memcmp(k.ptr, "$ext", 4) == 0;
	if (qpi_wire_next(b, len, &pos, &v) != QP_OK) {
		return QP_OK;
	}
	if (ext) {
		if (v.type != QPI_WIRE_ARRAY || v.len != 2
		    || qpi_wire_next(b, len, &pos, &ty) != QP_OK
		    || !((ty.type == QPI_WIRE_UINT && ty.u <= 127)
		        || (ty.type == QPI_WIRE_INT && ty.i >= -128))
		    || qpi_wire_next(b, len, &pos, &v) != QP_OK
		    || v.type != QPI_WIRE_STR) {
			return qpi_err(QP_EINVAL,
			    "bad JSON: {\"$ext\": ...} needs [type -128..127, "
			    "\"<base64>\"]");
		}
		type = (int8_t) (ty.type == QPI_WIRE_UINT ? (int64_t) ty.u
		                                          : ty.i);
	} else if (v.type != QPI_WIRE_STR) {
		return QP_OK; /* an ordinary map */
	}
	/* decode in place: the payload shrinks, and it is copied out first
	 * since the writer below reuses the same buffer */
	uint8_t *raw = malloc(v.len / 4 * 3 + 1);
	if (raw == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory decoding base64");
	}
	if ((n = b64_decode(v.ptr, v.len, raw)) < 0) {
		free(raw);
		return qpi_err(QP_EINVAL,
		    "bad JSON: the string of {\"%s\": ...} is not padded "
		    "base64",
		    ext ? "$ext" : "$bin");
	}
	p->out.len = at;
	int rv = ext ? qpi_wire_put_ext(&p->out, type, raw, (size_t) n)
	             : qpi_wire_put_bin(&p->out, raw, (size_t) n);
	free(raw);
	return rv;
}

static int
jp_container(jp *p, int depth, bool obj)
{
	size_t at;
	uint64_t n = 0;
	uint8_t close = obj ? '}' : ']';
	int rv;

	if (depth >= QPI_WIRE_MAX_DEPTH) {
		return jp_err(p, "nesting deeper than 32 levels");
	}
	if ((rv = jp_open(p, &at)) != QP_OK) {
		return rv;
	}
	p->pos++;
	jp_ws(p);
	if (p->pos < p->len && p->s[p->pos] == close) {
		p->pos++;
		return jp_close(p, at, obj ? 2 : 1, 0);
	}
	for (;;) {
		jp_ws(p);
		if (obj) {
			if (p->pos >= p->len || p->s[p->pos] != '"') {
				return jp_err(p, "expected a string key");
			}
			if ((rv = jp_string(p)) != QP_OK) {
				return rv;
			}
			jp_ws(p);
			if (p->pos >= p->len || p->s[p->pos] != ':') {
				return jp_err(p, "expected ':'");
			}
			p->pos++;
		}
		if ((rv = jp_value(p, depth + 1)) != QP_OK) {
			return rv;
		}
		n++;
		jp_ws(p);
		if (p->pos < p->len && p->s[p->pos] == ',') {
			p->pos++;
			continue;
		}
		if (p->pos < p->len && p->s[p->pos] == close) {
			p->pos++;
			break;
		}
		return jp_err(
		    p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
	}
	if ((rv = jp_close(p, at, obj ? 2 : 1, n)) != QP_OK) {
		return rv;
	}
	return obj && n == 1 ? jp_special(p, at) : QP_OK;
}

static int
jp_value(jp *p, int depth)
{
	jp_ws(p);
	if (p->pos >= p->len) {
		return jp_err(p, "expected a value");
	}
	switch (p->s[p->pos]) {
	case '{':
		return jp_container(p, depth, true);
	case '[':
		return jp_container(p, depth, false);
	case '"':
		return jp_string(p);
	case 't':
		if (jp_word(p, "true")) {
			return qpi_wire_put_bool(&p->out, true);
		}
		break;
	case 'f':
		if (jp_word(p, "false")) {
			return qpi_wire_put_bool(&p->out, false);
		}
		break;
	case 'n':
		if (jp_word(p, "null")) {
			return qpi_wire_put_nil(&p->out);
		}
		break;
	default:
		if (p->s[p->pos] == '-'
		    || (p->s[p->pos] >= '0' && p->s[p->pos] <= '9')) {
			return jp_number(p);
		}
		break;
	}
	return jp_err(p, "expected a value");
}

int
qpi_json_to_msgpack(const char *text, size_t len, void **outp, size_t *outlenp)
{
	jp p = {.s = (const uint8_t *) text, .len = len};
	int rv;

	if (text == NULL || outp == NULL || outlenp == NULL) {
		return qpi_err(QP_EINVAL, "JSON: missing argument");
	}
	rv = jp_value(&p, 0);
	if (rv == QP_OK) {
		jp_ws(&p);
		if (p.pos != p.len) {
			rv = jp_err(&p, "text after the value");
		}
	}
	cloc_free(&p.loc);
	if (rv != QP_OK) {
		qpi_wire_buf_free(&p.out);
		return rv == QP_ETOOBIG ? QP_EINVAL : rv;
	}
	*outp = p.out.data;
	*outlenp = p.out.len;
	return QP_OK;
}

/* ---- msgpack to JSON ---- */

typedef struct jw {
	const uint8_t *s;
	size_t len;
	size_t pos;
	qpi_wire_buf out;
	cloc loc;
} jw;

static int
jw_str(qpi_wire_buf *o, const uint8_t *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i = 0, k;
	int rv = qpi_wire_put_raw(o, "\"", 1);

	while (rv == QP_OK && i < n) {
		size_t run = i;
		while (i < n && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"'
		    && s[i] != '\\') {
			i++;
		}
		if ((rv = qpi_wire_put_raw(o, s + run, i - run)) != QP_OK
		    || i >= n) {
			break;
		}
		uint8_t c = s[i];
		if (c >= 0x80) {
			if ((k = utf8_seq(s + i, n - i)) == 0) {
				/* invalid UTF-8 in a str: U+FFFD */
				rv = qpi_wire_put_raw(o, "\xef\xbf\xbd", 3);
				i++;
			} else {
				rv = qpi_wire_put_raw(o, s + i, k);
				i += k;
			}
			continue;
		}
		char e[6] = {'\\', 0, 0, 0, 0, 0};
		size_t el = 2;
		switch (c) {
		case '"':
			e[1] = '"';
			break;
		case '\\':
			e[1] = '\\';
			break;
		case '\n':
			e[1] = 'n';
			break;
		case '\r':
			e[1] = 'r';
			break;
		case '\t':
			e[1] = 't';
			break;
		case '\b':
			e[1] = 'b';
			break;
		case '\f':
			e[1] = 'f';
			break;
		default:
			e[1] = 'u';
			e[2] = '0';
			e[3] = '0';
			e[4] = hex[c >> 4];
			e[5] = hex[c & 15];
			el = 6;
			break;
		}
		rv = qpi_wire_put_raw(o, e, el);
		i++;
	}
	return rv == QP_OK ? qpi_wire_put_raw(o, "\"", 1) : rv;
}

static int
jw_b64obj(qpi_wire_buf *o, const qpi_wire_tok *t)
{
	char hdr[32];
	int rv;

	if (t->type == QPI_WIRE_EXT) {
		snprintf(hdr, sizeof(hdr), "{\"$ext\":[%d,\"", (int) t->ext);
	} else {
		snprintf(hdr, sizeof(hdr), "{\"$bin\":\"");
	}
	if ((rv = qpi_wire_put_raw(o, hdr, strlen(hdr))) != QP_OK
	    || (rv = b64_encode(o, t->ptr, t->len)) != QP_OK) {
		return rv;
	}
	return t->type == QPI_WIRE_EXT ? qpi_wire_put_raw(o, "\"]}", 3)
	                               : qpi_wire_put_raw(o, "\"}", 2);
}

/* The shortest text that reads back as the same double (or float), laid
 * out as Python's repr: plain from 1e-4 up to 1e16, else with an exponent,
 * and always with a '.' or an 'e' so that it reads back as a float. */
static int
jw_float(jw *w, const qpi_wire_tok *t)
{
	char txt[48];
	locale_t c = (locale_t) 0, old;
	int prec, exp;
	const char *e;
	int rv;

	if (isnan(t->f) || isinf(t->f)) {
		return qpi_wire_put_raw(&w->out, "null", 4);
	}
	if ((rv = cloc_get(&w->loc, &c)) != QP_OK) {
		return rv;
	}
	old = uselocale(c);
	for (prec = 1; prec <= 17; prec++) {
		snprintf(txt, sizeof(txt), "%.*e", prec - 1, t->f);
		if (t->f32 ? strtof(txt, NULL) == (float) t->f
		           : strtod(txt, NULL) == t->f) {
			break;
		}
	}
	if (prec > 17) {
		prec = 17;
	}
	e = strchr(txt, 'e');
	exp = e != NULL ? atoi(e + 1) : 0;
	if (exp >= -4 && exp < 16) {
		int dec = prec - 1 - exp;
		snprintf(txt, sizeof(txt), "%.*f", dec > 0 ? dec : 0, t->f);
		if (strchr(txt, '.') == NULL) {
			strcat(txt, ".0");
		}
	}
	uselocale(old);
	return qpi_wire_put_raw(&w->out, txt, strlen(txt));
}

static int jw_value(jw *w);

/* A map key: a str (or a bin that reads as text) as it is; nil, bool and
 * numbers as the string of their JSON text ("1", "null"); anything else
 * (array, map, ext, other bins) as "$msgpack:" and the base64 of its
 * encoding. Keys are never rendered recursively, so nested keys cannot
 * multiply the output. */
static int
jw_key(jw *w)
{
	size_t at = w->pos, start = w->pos, mark = w->out.len;
	qpi_wire_tok t;
	int rv;

	if ((rv = qpi_wire_next(w->s, w->len, &at, &t)) != QP_OK) {
		return QP_EINVAL;
	}
	switch (t.type) {
	case QPI_WIRE_STR:
		w->pos = at;
		return jw_str(&w->out, t.ptr, t.len);
	case QPI_WIRE_BIN:
		if (bin_is_text(t.ptr, t.len)) {
			w->pos = at;
			return jw_str(&w->out, t.ptr, t.len);
		}
		break;
	case QPI_WIRE_NIL:
	case QPI_WIRE_BOOL:
	case QPI_WIRE_UINT:
	case QPI_WIRE_INT:
	case QPI_WIRE_FLOAT:
		/* the text has no quote or backslash to escape */
		if ((rv = qpi_wire_put_raw(&w->out, "\"", 1)) != QP_OK
		    || (rv = jw_value(w)) != QP_OK) {
			return rv;
		}
		return qpi_wire_put_raw(&w->out, "\"", 1);
	default:
		break;
	}
	if (qpi_wire_skip(w->s, w->len, &w->pos, QPI_WIRE_MAX_DEPTH)
	    != QP_OK) {
		w->out.len = mark;
		return QP_EINVAL;
	}
	if ((rv = qpi_wire_put_raw(&w->out, "\"$msgpack:", 10)) != QP_OK
	    || (rv = b64_encode(&w->out, w->s + start, w->pos - start))
	        != QP_OK) {
		return rv;
	}
	return qpi_wire_put_raw(&w->out, "\"", 1);
}

static int
jw_value(jw *w)
{
	qpi_wire_tok t;
	char num[32];
	int rv;

	if ((rv = qpi_wire_next(w->s, w->len, &w->pos, &t)) != QP_OK) {
		return QP_EINVAL;
	}
	switch (t.type) {
	case QPI_WIRE_NIL:
		return qpi_wire_put_raw(&w->out, "null", 4);
	case QPI_WIRE_BOOL:
		return t.b ? qpi_wire_put_raw(&w->out, "true", 4)
		           : qpi_wire_put_raw(&w->out, "false", 5);
	case QPI_WIRE_UINT:
		snprintf(num, sizeof(num), "%llu", (unsigned long long) t.u);
		return qpi_wire_put_raw(&w->out, num, strlen(num));
	case QPI_WIRE_INT:
		snprintf(num, sizeof(num), "%lld", (long long) t.i);
		return qpi_wire_put_raw(&w->out, num, strlen(num));
	case QPI_WIRE_FLOAT:
		return jw_float(w, &t);
	case QPI_WIRE_STR:
		return jw_str(&w->out, t.ptr, t.len);
	case QPI_WIRE_BIN:
		if (bin_is_text(t.ptr, t.len)) {
			return jw_str(&w->out, t.ptr, t.len);
		}
		return jw_b64obj(&w->out, &t);
	case QPI_WIRE_EXT:
		return jw_b64obj(&w->out, &t);
	case QPI_WIRE_ARRAY:
	case QPI_WIRE_MAP: {
		bool map = t.type == QPI_WIRE_MAP;
		rv = qpi_wire_put_raw(&w->out, map ? "{" : "[", 1);
		for (uint32_t i = 0; rv == QP_OK && i < t.len; i++) {
			if (i > 0) {
				rv = qpi_wire_put_raw(&w->out, ",", 1);
			}
			if (rv == QP_OK && map) {
				rv = jw_key(w);
				if (rv == QP_OK) {
					rv = qpi_wire_put_raw(&w->out, ":", 1);
				}
			}
			if (rv == QP_OK) {
				rv = jw_value(w);
			}
		}
		return rv == QP_OK
		    ? qpi_wire_put_raw(&w->out, map ? "}" : "]", 1)
		    : rv;
	}
	}
	return qpi_err(QP_EINVAL, "msgpack: unknown token");
}

int
qpi_msgpack_to_json(const void *buf, size_t len, char **outp, size_t *outlenp)
{
	jw w = {.s = buf, .len = len};
	int rv;

	if (outp == NULL || outlenp == NULL) {
		return qpi_err(QP_EINVAL, "JSON: missing argument");
	}
	/* the walk below trusts what this checks: one value, bounded */
	if ((rv = qpi_wire_check_value(buf, len)) != QP_OK) {
		return rv;
	}
	rv = jw_value(&w);
	if (rv == QP_OK) {
		rv = qpi_wire_put_raw(&w.out, "", 1); /* the NUL */
	}
	cloc_free(&w.loc);
	if (rv != QP_OK) {
		qpi_wire_buf_free(&w.out);
		return rv;
	}
	*outp = (char *) w.out.data;
	*outlenp = w.out.len - 1;
	return QP_OK;
}
