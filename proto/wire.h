/*
 * wire.h - the qpipe wire codec (proto/PROTOCOL.md): msgpack values and
 * the request/reply frames of the protocol, as plain C structs. wire.c is
 * the only file that includes <msgpack.h>; it does no I/O, keeps no
 * globals, and checks every count and length against the bytes that remain
 * before it allocates.
 */
#ifndef QP_WIRE_H
#define QP_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpipe.h"

/* How deep arrays and maps may nest inside one value. */
#define QPI_WIRE_MAX_DEPTH 32

/* ---- single values (used by the library for items) ---- */

/* Checks that buf holds exactly one well-formed msgpack value, nested at
 * most QPI_WIRE_MAX_DEPTH deep, with no trailing bytes. QP_OK, or QP_EINVAL
 * with qp_errmsg() saying what is wrong. Allocates nothing. */
int qpi_wire_check_value(const void *buf, size_t len);

/* Writes the msgpack bin header for a payload of len bytes into hdr (at
 * most 5 bytes) and returns its length. */
size_t qpi_wire_bin_header(size_t len, uint8_t hdr[5]);

/* If buf holds exactly one msgpack bin, sets *offp and *lenp to its payload
 * and returns true; otherwise false. */
bool qpi_wire_bin_unwrap(
    const void *buf, size_t len, size_t *offp, size_t *lenp);

#endif /* QP_WIRE_H */
