/*
 * wire.h - the qpipe wire codec (proto/PROTOCOL.md): msgpack values and
 * the request/reply frames of the protocol, as plain C structs. wire.c is
 * the only file that includes <msgpack.h>; it does no I/O, keeps no
 * globals, and checks every count and length against the bytes that remain
 * before it allocates.
 *
 * Errors: every function that fails records a message naming the cause
 * through qpi_err() (errors.h, proto's own), so the caller reads it with
 * qpi_errmsg(), or qp_errmsg() in libqpipe.
 */
#ifndef QP_WIRE_H
#define QP_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "qpipe.h"

/* How deep arrays and maps may nest inside one value. */
#define QPI_WIRE_MAX_DEPTH 32

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

/* ---- writing msgpack ---- */

/* A growable output buffer. Start from all zeros (or set max), or from
 * the caller's memory (qpi_wire_buf_on); data is malloc'd once it grows
 * and belongs to the owner of the struct: release it with
 * qpi_wire_buf_free(), or take it and free() it (not while borrowed).
 * Appends that would pass max (0: no limit) fail with QP_ETOOBIG and
 * leave the buffer as it was. */
typedef struct qpi_wire_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	size_t max;
	bool borrowed; /* data is the caller's (qpi_wire_buf_on) */
} qpi_wire_buf;

/* An empty buffer writing into mem (cap bytes, the caller's: a frame
 * that outgrows it moves to malloc'd memory). */
void qpi_wire_buf_on(qpi_wire_buf *b, void *mem, size_t cap);

/* Empties the buffer, keeping its memory for reuse. */
void qpi_wire_buf_reset(qpi_wire_buf *b);

/* Releases the buffer's memory and zeroes it (max is kept). */
void qpi_wire_buf_free(qpi_wire_buf *b);

/* Append one msgpack token in its shortest encoding. QP_OK, QP_ENOMEM or
 * QP_ETOOBIG (past b->max). Strings, bins and exts take at most UINT32_MAX
 * bytes (else QP_ETOOBIG). Arrays and maps take their n elements (n pairs
 * for a map) as the following appends. */
int qpi_wire_put_nil(qpi_wire_buf *b);
int qpi_wire_put_bool(qpi_wire_buf *b, bool v);
int qpi_wire_put_uint(qpi_wire_buf *b, uint64_t v);
int qpi_wire_put_int(qpi_wire_buf *b, int64_t v);
int qpi_wire_put_double(qpi_wire_buf *b, double v);
int qpi_wire_put_float(qpi_wire_buf *b, float v);
int qpi_wire_put_str(qpi_wire_buf *b, const void *s, size_t len);
int qpi_wire_put_bin(qpi_wire_buf *b, const void *p, size_t len);
int qpi_wire_put_ext(qpi_wire_buf *b, int8_t type, const void *p, size_t len);
int qpi_wire_put_array(qpi_wire_buf *b, uint32_t n);
int qpi_wire_put_map(qpi_wire_buf *b, uint32_t n);

/* Appends len bytes as they are (an already encoded value). */
int qpi_wire_put_raw(qpi_wire_buf *b, const void *p, size_t len);

/* ---- frames (PROTOCOL.md) ---- */

/* The protocol version every frame carries first. */
#define QPI_WIRE_VERSION 1

/* Operation numbers: the second element of every frame. */
typedef enum qpi_wire_op {
	QPI_OP_HELLO = 1,
	QPI_OP_AUTH = 2,
	QPI_OP_PING = 3,
	QPI_OP_PUT = 4,
	QPI_OP_PUT_MANY = 5,
	QPI_OP_GET = 6,
	QPI_OP_ACK = 7,
	QPI_OP_RELEASE = 8,
	QPI_OP_TASK_DONE = 9,
	QPI_OP_JOIN = 10,
	QPI_OP_QSIZE = 11,
	QPI_OP_STAT = 12,
	QPI_OP_LIST = 13,
	QPI_OP_CREATE = 14,
	QPI_OP_DELETE = 15,
	QPI_OP_PIPE_OPEN = 16,
	QPI_OP_PIPE_SEND = 17,
	QPI_OP_PIPE_RECV = 18,
	QPI_OP_PIPE_POLL = 19,
	QPI_OP_PIPE_CLOSE = 20,
	QPI_OP_TOUCH = 21,
	QPI_OP_COMPLETE = 22,
} qpi_wire_op;

/* The highest op number this codec knows. */
#define QPI_OP_MAX 22

/* Sizes fixed by the protocol. */
#define QPI_WIRE_ID_LEN          16 /* client id: 16 bytes */
#define QPI_WIRE_NONCE_LEN       32 /* server and client nonces */
#define QPI_WIRE_MAC_LEN         32 /* HMAC-SHA-256 */
#define QPI_WIRE_CLIENT_NAME_MAX 64 /* hello: printable ASCII */
#define QPI_WIRE_FSYNC_MAX       32 /* create: printable ASCII */
#define QPI_WIRE_VERSION_STR_MAX 32 /* hello reply: server version */
#define QPI_WIRE_ERRMSG_MAX      255 /* error replies: message text */
#define QPI_WIRE_MS_MAX          INT32_MAX /* lease and delay, in ms */
/* A frame may exceed the largest item by this much (headers, names). */
#define QPI_WIRE_SLACK 65536
/* The default number of items or lease ids one frame may carry. */
#define QPI_WIRE_DEFAULT_BATCH 4096

/* Flags: put and put_many. */
#define QPI_PUT_CREATE 0x1u /* create the queue (defaults) if missing */
/* Flags: create. */
#define QPI_CREATE_DURABLE 0x1u /* kept in a file under the data dir */
#define QPI_CREATE_EXCL    0x2u /* QP_EEXIST if it exists already */
/* Flags: pipe_open. */
#define QPI_PIPE_ONEWAY 0x1u /* new pipe: side 0 receives, side 1 sends */

/* Lease modes of get. */
#define QPI_LEASE_CONFIRM 0 /* the client acks on receipt */
#define QPI_LEASE_WORK    1 /* leased until ack (task done) or release */

/* Limits the decoder enforces; zero fields take the defaults. */
typedef struct qpi_wire_limits {
	uint64_t
	    max_message; /* largest item in bytes (QP_DEFAULT_MAX_MESSAGE);
	                    a frame may be QPI_WIRE_SLACK bytes more */
	uint32_t
	    max_batch; /* most items/lease ids per frame (DEFAULT_BATCH) */
	uint64_t lease_ms; /* hello reply only: the server's default lease */
} qpi_wire_limits;

/* One item: the msgpack encoding of one value, pointing into the decoded
 * frame (or, to encode, into the caller's memory). A bin item's bytes are
 * found with qpi_wire_bin_unwrap(). */
typedef struct qpi_wire_item {
	const uint8_t *data;
	size_t len;
	uint64_t lease_id; /* get replies */
	uint32_t deliveries; /* get replies: 1 on the first delivery */
} qpi_wire_item;

/* One queue of a list reply. */
typedef struct qpi_wire_qentry {
	char name[QP_NAME_MAX + 1];
	qp_queue_stats stat;
} qpi_wire_qentry;

/* A request. Which fields an op uses: PROTOCOL.md and the comments. To
 * decode, the caller provides storage for the arrays (items/items_cap,
 * ids/ids_cap); the decoder fills every other field. */
typedef struct qpi_wire_req {
	uint32_t op; /* QPI_OP_* */
	uint64_t req_id; /* echoed in the reply */
	char name[QP_NAME_MAX + 1]; /* queue or pipe name, NUL-terminated */
	char results[QP_NAME_MAX + 1]; /* complete: the results queue */
	uint8_t client_id[QPI_WIRE_ID_LEN]; /* hello and mutating ops */
	uint64_t seq; /* mutating ops: 0 = not deduplicated */
	qp_duration
	    timeout; /* put, put_many, get, join, pipe_send/recv/poll */
	uint32_t flags; /* put, put_many, create, pipe_open: QPI_*_ flags */
	uint32_t max_items; /* get: 1..max_batch */
	uint32_t lease_mode; /* get: QPI_LEASE_* */
	uint64_t lease_ms; /* get, create, touch: 0 = the queue's default */
	uint64_t lease_id; /* release, complete */
	uint64_t delay_ms; /* release */
	uint64_t count; /* task_done: >= 1 */
	uint64_t maxsize; /* create: items, 0 = unbounded */
	uint64_t capacity; /* create: bytes, 0 = default */
	uint64_t max_message; /* create: largest item, 0 = default */
	int32_t side; /* pipe ops: 0 or 1; pipe_open also -1 (any free) */
	char client_name[QPI_WIRE_CLIENT_NAME_MAX + 1]; /* hello */
	char fsync[QPI_WIRE_FSYNC_MAX + 1]; /* create: "" = the default */
	uint8_t mac[QPI_WIRE_MAC_LEN]; /* auth: HMAC(token, server nonce) */
	bool has_nonce; /* auth: the client sent a nonce of its own */
	uint8_t nonce[QPI_WIRE_NONCE_LEN]; /* auth: the client's nonce */
	qpi_wire_item item; /* put, pipe_send, complete */
	qpi_wire_item *items; /* put_many: storage (caller), items_cap long */
	uint32_t nitems; /* put_many: items decoded (or needed) */
	uint32_t items_cap;
	uint64_t *ids; /* ack, touch: lease ids; get: leases acked before
	                  getting */
	uint32_t nids; /* ids decoded (or needed) */
	uint32_t ids_cap;
} qpi_wire_req;

/* A reply: [version, op, req_id, status, ...]. With status != 0 the only
 * field is errmsg. To decode, the caller provides storage for the arrays
 * (items, ids, queues with their caps); the decoder fills the rest. */
typedef struct qpi_wire_rep {
	uint32_t op; /* the request's op */
	uint64_t req_id; /* the request's req_id */
	int status; /* QP_OK or an error number (proto/errors.def) */
	char errmsg[QPI_WIRE_ERRMSG_MAX + 1]; /* status != 0: the cause */
	char server_version[QPI_WIRE_VERSION_STR_MAX + 1]; /* hello */
	qpi_wire_limits limits; /* hello */
	uint8_t nonce[QPI_WIRE_NONCE_LEN]; /* hello: the server's nonce */
	bool auth_required; /* hello: auth must follow */
	bool has_mac; /* auth: the server proved the token too */
	uint8_t mac[QPI_WIRE_MAC_LEN]; /* auth: HMAC(token, cnonce|snonce) */
	uint64_t count; /* qsize */
	qp_queue_stats stat; /* stat */
	int32_t side; /* pipe_open: the side given, 0 or 1 */
	bool peer_open; /* pipe_open: the other side is open */
	bool ready; /* pipe_poll */
	qpi_wire_item item; /* pipe_recv */
	qpi_wire_item *items; /* get: storage (caller), items_cap long */
	uint32_t nitems;
	uint32_t items_cap;
	uint64_t *ids; /* ack, touch: the lease ids that were not held */
	uint32_t nids;
	uint32_t ids_cap;
	qpi_wire_qentry *queues; /* list: storage (caller) */
	uint32_t nqueues;
	uint32_t queues_cap;
} qpi_wire_rep;

/* The op's name ("put"), or NULL for an unknown number. */
const char *qpi_wire_op_name(uint32_t op);

/* True for the ops that a server applies once per (client id, seq != 0),
 * replaying the stored reply to a repeat: every op that carries a client
 * id and seq except get (served afresh; see PROTOCOL.md). */
bool qpi_wire_op_dedup(uint32_t op);

/* Decodes a request frame into *r (storage fields kept, the rest set).
 * lim may be NULL (defaults). Names and items point into buf, which must
 * outlive *r. QP_OK; QP_EVERSION (another version); QP_ETOOBIG (frame,
 * item or batch over the limits, or more items/ids than the storage holds:
 * then nitems/nids is the number needed); QP_EPROTO (anything else wrong).
 * On error r->op and r->req_id hold what could be read (else 0), for the
 * error reply; qp_errmsg() names the cause. Allocates nothing. */
int qpi_wire_decode_req(
    const void *buf, size_t len, const qpi_wire_limits *lim, qpi_wire_req *r);

/* Decodes a reply frame into *r, as qpi_wire_decode_req. A reply with
 * status != 0 decodes fine (QP_OK): look at r->status. */
int qpi_wire_decode_rep(
    const void *buf, size_t len, const qpi_wire_limits *lim, qpi_wire_rep *r);

/* Appends the frame for *r to out. QP_OK, QP_EINVAL (a field out of range,
 * a bad name: qp_errmsg() says which), QP_ENOMEM, QP_ETOOBIG (past
 * out->max). Items are copied as they are: they must be well-formed. */
int qpi_wire_encode_req(const qpi_wire_req *r, qpi_wire_buf *out);

/* Appends the frame for *r to out; with r->status != 0 only errmsg
 * follows the status. Errors as qpi_wire_encode_req. */
int qpi_wire_encode_rep(const qpi_wire_rep *r, qpi_wire_buf *out);

/* Names: 1..QP_NAME_MAX bytes of [A-Za-z0-9._-], not "." or "..". The
 * same rule as lib's qpi_name_valid (proto cannot include lib headers). */
bool qpi_wire_name_valid(const char *name, size_t len);

/* ---- JSON (json.c): the CLI's --json ---- */

/* Converts one JSON text (RFC 8259; surrounding white space allowed) to
 * the msgpack encoding of its value: *outp is malloc'd (free with free()
 * or qp_free()). An object {"$bin": "<base64>"} becomes a bin, and
 * {"$ext": [type, "<base64>"]} an ext (see PROTOCOL.md). QP_OK, QP_EINVAL
 * (bad JSON, nesting deeper than QPI_WIRE_MAX_DEPTH: qp_errmsg() says
 * where), QP_ENOMEM. */
int qpi_json_to_msgpack(
    const char *text, size_t len, void **outp, size_t *outlenp);

/* Converts one msgpack value to compact JSON text: *outp is malloc'd and
 * NUL-terminated (*outlenp excludes the NUL). A bin that reads as text
 * (valid UTF-8, no control bytes but tab, CR, LF) becomes a string, any
 * other bin {"$bin": "<base64>"}; see PROTOCOL.md for the rest. QP_OK,
 * QP_EINVAL (not one well-formed value), QP_ENOMEM. */
int qpi_msgpack_to_json(
    const void *buf, size_t len, char **outp, size_t *outlenp);

#endif /* QP_WIRE_H */
