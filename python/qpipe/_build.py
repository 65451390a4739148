"""The cffi (API mode) build of qpipe._lib, the binding of libqpipe.

Only the public C API, lib/include/qpipe.h, is declared here. Where the
header and library are found:

  QPIPE_INCLUDE_DIRS  directories holding qpipe.h and qpipe_errors.def,
                      separated by ':' (default: this tree's lib/include
                      and build/include)
  QPIPE_LIBRARY_DIR   the directory holding libqpipe.so (default: this
                      tree's build/lib); it is also the extension's rpath,
                      so no LD_LIBRARY_PATH is needed at run time
  QPIPE_BUILD_DIR     the CMake build directory that the two defaults
                      above are taken from (default: build)

`setup.py` uses `ffibuilder` (through cffi_modules). The tests build the
extension straight into a build tree:

  python3 python/qpipe/_build.py OUTDIR   ->  OUTDIR/qpipe/_lib.*.so
"""
import os
import sys

from cffi import FFI

CDEF = r"""
#define QP_OPEN_CREATE ...
#define QP_OPEN_EXCL ...
#define QP_OPEN_LEASE ...
#define QP_OPEN_DURABLE ...
#define QP_NAME_MAX ...

#define QP_OK ...
#define QP_EFULL ...
#define QP_EEMPTY ...
#define QP_ECLOSED ...
#define QP_ETOOBIG ...
#define QP_EINVAL ...
#define QP_ECONNREFUSED ...
#define QP_EAUTH ...
#define QP_EPROTO ...
#define QP_ENOMEM ...
#define QP_ENOENT ...
#define QP_EEXIST ...
#define QP_ETIMEDOUT ...
#define QP_EVERSION ...
#define QP_ECORRUPT ...
#define QP_EVALUE ...
#define QP_EPERM ...
#define QP_ESYSTEM ...
#define QP_EBUSY ...
#define QP_ENOSPC ...
#define QP_ELIMIT ...
#define QP_ECONNRESET ...
#define QP_EINTR ...
#define QP_ENOTSUP ...

typedef int64_t qp_duration;
const char *qp_strerror(int err);
const char *qp_errmsg(void);
void qp_free(void *buf);
const char *qp_version(void);
int qp_addr_check(const char *addr);

typedef struct qp_queue qp_queue;
typedef struct qp_conn qp_conn;
typedef struct qp_listener qp_listener;

typedef struct qp_conn_opts {
    const char *token;
    const char *token_file;
    bool no_token;
    const char *tls_cert;
    const char *tls_key;
    const char *tls_ca;
    const char *tls_server_name;
    bool tls_insecure_skip_verify;
    size_t max_message;
    qp_duration connect_timeout;
    ...;
} qp_conn_opts;

typedef struct qp_queue_opts {
    uint32_t flags;
    uint64_t maxsize;
    uint64_t capacity;
    uint64_t max_message;
    uint64_t lease_ms;
    const struct qp_conn_opts *conn;
    const char *path;
    const char *fsync;
    ...;
} qp_queue_opts;

int qp_queue_open(qp_queue **qp, const char *addr, const qp_queue_opts *opts);
int qp_queue_anon(qp_queue **qp, const qp_queue_opts *opts);
int qp_queue_close(qp_queue *q);
void qp_queue_free(qp_queue *q);
int qp_queue_unlink_opts(const char *addr, const struct qp_conn_opts *conn);
int qp_queue_put(qp_queue *q, const void *buf, size_t len, qp_duration timeout);
int qp_queue_put_obj(qp_queue *q, const void *msgpack, size_t len,
    qp_duration timeout);
int qp_queue_put_many(qp_queue *q, const void *const *bufs,
    const size_t *lens, size_t n, qp_duration timeout);
int qp_queue_get_many(qp_queue *q, void **bufs, size_t *lens, size_t max,
    size_t *np, qp_duration timeout);
int qp_queue_put_many_obj(qp_queue *q, const void *const *msgpacks,
    const size_t *lens, size_t n, qp_duration timeout);
int qp_queue_get_many_obj(qp_queue *q, void **msgpacks, size_t *lens,
    size_t max, size_t *np, qp_duration timeout);
int qp_queue_get(qp_queue *q, void **bufp, size_t *lenp, qp_duration timeout);
int qp_queue_get_obj(qp_queue *q, void **msgpackp, size_t *lenp,
    qp_duration timeout);
int qp_queue_qsize(qp_queue *q, size_t *np);
int qp_queue_empty(qp_queue *q, bool *emptyp);
int qp_queue_full(qp_queue *q, bool *fullp);
int qp_queue_task_done(qp_queue *q);
int qp_queue_complete(qp_queue *tasks, qp_queue *results, const void *buf,
    size_t len, qp_duration timeout);
int qp_queue_complete_obj(qp_queue *tasks, qp_queue *results,
    const void *msgpack, size_t len, qp_duration timeout);
int qp_queue_join(qp_queue *q, qp_duration timeout);
int qp_queue_nack(qp_queue *q, qp_duration delay);
int qp_queue_touch(qp_queue *q, qp_duration lease);
int qp_queue_deliveries(qp_queue *q, uint32_t *np);
int qp_queue_fd(qp_queue *q, int *fdp);
int qp_queue_poll(qp_queue *q, qp_duration timeout, bool *readyp);
int qp_queue_get_any(qp_queue *const *qs, size_t n, size_t *whichp,
    void **bufp, size_t *lenp, qp_duration timeout);
int qp_queue_get_any_obj(qp_queue *const *qs, size_t n, size_t *whichp,
    void **msgpackp, size_t *lenp, qp_duration timeout);
int qp_queue_put_key(qp_queue *q, const void *key, size_t klen,
    const void *buf, size_t len, qp_duration timeout);
int qp_queue_put_key_obj(qp_queue *q, const void *key, size_t klen,
    const void *msgpack, size_t len, qp_duration timeout);
size_t qp_partition_pick(const char *const *servers, size_t n,
    const void *key, size_t klen);
int qp_queue_partitions(qp_queue *q, size_t *np);

int qp_pipe(qp_conn **ap, qp_conn **bp, bool duplex);
int qp_conn_send(qp_conn *c, const void *msgpack, size_t len);
int qp_conn_recv(qp_conn *c, void **msgpackp, size_t *lenp);
int qp_conn_send_bytes(qp_conn *c, const void *buf, size_t offset,
    size_t size);
int qp_conn_recv_bytes(qp_conn *c, void **bufp, size_t *lenp,
    size_t maxlength);
int qp_conn_recv_bytes_into(qp_conn *c, void *buf, size_t bufsize,
    size_t offset, size_t *lenp);
int qp_conn_poll(qp_conn *c, qp_duration timeout, bool *readyp);
int qp_conn_fd(qp_conn *c, int *fdp);
int qp_conn_set_max_message(qp_conn *c, size_t max);
int qp_conn_close(qp_conn *c);
void qp_conn_free(qp_conn *c);
int qp_wait(qp_conn *const *conns, size_t n, qp_duration timeout,
    bool *ready, size_t *nreadyp);
const char *qp_listener_url(qp_listener *l);
int qp_listener_accept(qp_listener *l, qp_conn **cp, qp_duration timeout);
void qp_listener_free(qp_listener *l);
int qp_listen_opts(qp_listener **lp, const char *addr,
    const qp_conn_opts *opts);
int qp_dial_opts(qp_conn **cp, const char *addr, qp_duration timeout,
    const qp_conn_opts *opts);
int qp_pipe_open_opts(qp_conn **cp, const char *addr, int side, bool duplex,
    const qp_conn_opts *conn);

typedef struct qpy_aux { size_t len; size_t off; void *big; } qpy_aux;
int64_t qpy_queue_get(qp_queue *q, int raw, char *buf, size_t cap,
    qpy_aux *aux, qp_duration timeout);
int64_t qpy_conn_recv_into(qp_conn *c, char *buf, size_t cap,
    qp_duration timeout);
#define QPY_VALUE ...
#define QPY_BIG_BIN ...
#define QPY_BIG_VALUE ...
#define QPY_NOT_READY ...
"""

# Helpers compiled into the extension (over the public API only): each
# saves the hot paths a call through cffi and a Python-level step.
HELPERS = r"""
#include <string.h>

/* The outcomes of the helpers below other than a length (>= 0) and a
 * failure (-code, the qp_err code negated). */
#define QPY_VALUE (-1000)
#define QPY_BIG_BIN (-1001)
#define QPY_BIG_VALUE (-1002)
#define QPY_NOT_READY (-1003)

/* Where a value that is not a bin in buf is: its length, and for one too
 * large for buf the library's buffer (free it with qp_free) and the
 * offset of a bin's bytes in it. */
typedef struct qpy_aux {
	size_t len;
	size_t off;
	void *big;
} qpy_aux;

/* One get (raw: qp_queue_get, the item's bytes; else qp_queue_get_obj)
 * that hands a bin back as its bytes: returns their length with the bytes
 * in buf; QPY_VALUE with the value's msgpack encoding in buf (aux->len
 * long); QPY_BIG_BIN or QPY_BIG_VALUE with the item in aux->big (too large
 * for buf); else -code. */
static int64_t
qpy_queue_get(qp_queue *q, int raw, char *buf, size_t cap, qpy_aux *aux,
    qp_duration timeout)
{
	void *p;
	size_t n, off = 0, blen;
	int rc = raw ? qp_queue_get(q, &p, &n, timeout)
	             : qp_queue_get_obj(q, &p, &n, timeout);

	if (rc != QP_OK) {
		return -(int64_t) rc;
	}
	const unsigned char *m = p;
	int bin = 1;
	blen = n;
	if (!raw) {
		bin = 0;
		if (n >= 2 && m[0] == 0xc4) {
			off = 2, blen = m[1], bin = 1;
		} else if (n >= 3 && m[0] == 0xc5) {
			off = 3, blen = (size_t) m[1] << 8 | m[2], bin = 1;
		} else if (n >= 5 && m[0] == 0xc6) {
			off = 5;
			blen = (size_t) m[1] << 24 | (size_t) m[2] << 16
			    | (size_t) m[3] << 8 | m[4];
			bin = 1;
		}
		if (!bin || off + blen != n) {
			bin = 0, off = 0, blen = n; /* unpack it whole */
		}
	}
	if (blen <= cap) {
		if (blen > 0) {
			memcpy(buf, m + off, blen);
		}
		qp_free(p);
		if (bin) {
			return (int64_t) blen;
		}
		aux->len = blen;
		return QPY_VALUE;
	}
	aux->big = p;
	aux->off = off;
	aux->len = blen;
	return bin ? QPY_BIG_BIN : QPY_BIG_VALUE;
}

/* Waits up to timeout for a message, then receives it into buf: returns
 * its length, QPY_NOT_READY if none came in time, else -code (of
 * qp_conn_poll or qp_conn_recv_bytes_into). It looks without waiting
 * first (a wait reads the clock for its deadline). */
static int64_t
qpy_conn_recv_into(qp_conn *c, char *buf, size_t cap, qp_duration timeout)
{
	bool ready = false;
	size_t len = 0;
	int rc = qp_conn_poll(c, QP_NOWAIT, &ready);

	if (rc == QP_OK && !ready && timeout != QP_NOWAIT) {
		rc = qp_conn_poll(c, timeout, &ready);
	}
	if (rc == QP_OK && !ready) {
		return QPY_NOT_READY;
	}
	if (rc == QP_OK) {
		rc = qp_conn_recv_bytes_into(c, buf, cap, 0, &len);
	}
	return rc == QP_OK ? (int64_t) len : -(int64_t) rc;
}
"""

_HERE = os.path.dirname(os.path.abspath(__file__))
_TREE = os.path.dirname(os.path.dirname(_HERE))


def _dirs():
    build = os.environ.get("QPIPE_BUILD_DIR") or os.path.join(_TREE, "build")
    build = os.path.abspath(build)
    inc = os.environ.get("QPIPE_INCLUDE_DIRS")
    incs = inc.split(":") if inc else [
        os.path.join(_TREE, "lib", "include"), os.path.join(build, "include")]
    libdir = os.path.abspath(
        os.environ.get("QPIPE_LIBRARY_DIR") or os.path.join(build, "lib"))
    return incs, libdir


def make_ffibuilder():
    incs, libdir = _dirs()
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "qpipe._lib", '#include "qpipe.h"\n' + HELPERS, libraries=["qpipe"],
        include_dirs=incs, library_dirs=[libdir],
        runtime_library_dirs=[libdir],
        extra_compile_args=["-O2"])
    return ffi


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    os.makedirs(out, exist_ok=True)
    ffibuilder.compile(tmpdir=out, verbose=False)
