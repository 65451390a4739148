/*
 * wire.h - the qpipe wire codec (proto/PROTOCOL.md): msgpack values and
 * the request/reply frames of the protocol, as plain C structs. wire.c is
 * the only file that includes <msgpack.h>; it does no I/O, keeps no
 * globals, and checks every count and length against the bytes that remain
 * before it allocates.
 *
 * Errors: every function that fails records a message naming the cause
 * through qpi_err() (lib/error.c, linked into the same library), so the
 * caller reads it with qp_errmsg().
 */
#ifndef QP_WIRE_H
#define QP_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpipe.h"

/* How deep arrays and maps may nest inside one value. */
#define QPI_WIRE_MAX_DEPTH 32

/* Defined in lib/error.c: records the thread's message for qp_errmsg() and
 * returns err. The codec's objects are linked into the same library. */
int qpi_err(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- single values (used by the library for items) ---- */

/* Checks that buf holds exactly one well-formed msgpack value, nested at
 * most QPI_WIRE_MAX_DEPTH deep, with no trailing bytes. QP_OK, or QP_EINVAL
 * with qp_errmsg() saying what is wrong. Allocates nothing. */
int qpi_wire_check_value(const void *buf, size_t len);

/* Writes the msgpack bin header for a payload of len bytes into hdr (at
 * most 5 bytes) and returns its length; 0 if len is over UINT32_MAX. */
size_t qpi_wire_bin_header(size_t len, uint8_t hdr[5]);

/* If buf holds exactly one msgpack bin, sets *offp and *lenp to its payload
 * and returns true; otherwise false. */
bool qpi_wire_bin_unwrap(
    const void *buf, size_t len, size_t *offp, size_t *lenp);

/* ---- reading msgpack one token at a time ---- */

/* The kinds of msgpack token. Integers are normalised: QPI_WIRE_UINT holds
 * every value >= 0 (whatever its encoding), QPI_WIRE_INT every value < 0. */
typedef enum qpi_wire_type {
	QPI_WIRE_NIL = 0,
	QPI_WIRE_BOOL,
	QPI_WIRE_UINT,
	QPI_WIRE_INT,
	QPI_WIRE_FLOAT,
	QPI_WIRE_STR,
	QPI_WIRE_BIN,
	QPI_WIRE_ARRAY,
	QPI_WIRE_MAP,
	QPI_WIRE_EXT,
} qpi_wire_type;

/* One token: a scalar, the header and payload of a str/bin/ext, or the
 * header of an array/map (whose elements follow as further tokens). */
typedef struct qpi_wire_tok {
	qpi_wire_type type;
	bool b; /* BOOL */
	bool f32; /* FLOAT: encoded as float 32 */
	int8_t ext; /* EXT: the type byte */
	uint64_t u; /* UINT */
	int64_t i; /* INT (always < 0) */
	double f; /* FLOAT */
	const uint8_t *ptr; /* STR, BIN, EXT: the payload (into the input) */
	uint32_t len; /* STR, BIN, EXT: payload bytes; ARRAY: elements; MAP:
	                 key/value pairs */
} qpi_wire_tok;

/* Reads the token at buf[*pos] (len bytes in all) into *t and advances *pos
 * past its header, and past its payload for str/bin/ext. An array or map
 * header claiming more elements than bytes remain is refused. QP_OK, or
 * QP_EPROTO (truncated, the unused byte 0xc1, impossible count). */
int qpi_wire_next(const void *buf, size_t len, size_t *pos, qpi_wire_tok *t);

/* Advances *pos past one whole value (its elements too), allowing at most
 * depth levels of nesting below it. QP_OK or QP_EPROTO. Allocates nothing. */
int qpi_wire_skip(const void *buf, size_t len, size_t *pos, int depth);

#endif /* QP_WIRE_H */
