"""Shared pieces of the binding: errors, durations, serializers, options.

Blocking calls wait in slices of at most SLICE_MS with the GIL released
(cffi releases it around every C call) and come back to Python between
slices, so Ctrl-C raises KeyboardInterrupt within one slice.
"""
import errno
import os
import pickle
import queue as _pyqueue
import threading
import time
from multiprocessing import AuthenticationError

import msgpack

from ._lib import ffi, lib

SLICE_MS = 100
FOREVER = -1

# This process's ID, kept current across fork() without a system call per
# use: handles compare it with the ID of the process that opened them.
PID = [os.getpid()]


def _after_fork():
    PID[0] = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


class QpipeError(OSError):
    """A libqpipe failure that no builtin exception names; .code is the
    qp_err code and the message is qp_errmsg()'s."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def errmsg(rc):
    msg = ffi.string(lib.qp_errmsg()).decode("utf-8", "replace")
    return msg or ffi.string(lib.qp_strerror(rc)).decode()


def error(rc, what=""):
    """The exception for a failed call (rc != QP_OK), as Python would
    raise it."""
    msg = errmsg(rc)
    if what:
        msg = "%s: %s" % (what, msg)
    if rc == lib.QP_ECONNREFUSED:
        return ConnectionRefusedError(errno.ECONNREFUSED, msg)
    if rc == lib.QP_ECONNRESET:
        return ConnectionResetError(errno.ECONNRESET, msg)
    if rc == lib.QP_EAUTH:
        return AuthenticationError(msg)
    if rc == lib.QP_ENOENT:
        return FileNotFoundError(errno.ENOENT, msg)
    if rc == lib.QP_EEXIST:
        return FileExistsError(errno.EEXIST, msg)
    if rc == lib.QP_ENOSPC:
        return OSError(errno.ENOSPC, msg)
    if rc == lib.QP_ENOMEM:
        return MemoryError(msg)
    if rc == lib.QP_ETIMEDOUT:
        return TimeoutError(errno.ETIMEDOUT, msg)
    if rc == lib.QP_EINVAL:
        return ValueError(msg)
    if rc == lib.QP_EVALUE:
        return ValueError("task_done() called too many times")
    if rc == lib.QP_EEMPTY:
        return _pyqueue.Empty()
    if rc == lib.QP_EFULL:
        return _pyqueue.Full()
    return QpipeError(rc, msg)


def check(rc, what=""):
    if rc != lib.QP_OK:
        raise error(rc, what)


def to_ms(timeout):
    """Python seconds (None: forever, <= 0: no wait) to a qp_duration."""
    if timeout is None:
        return FOREVER
    if timeout <= 0:
        return 0
    return max(1, int(timeout * 1000 + 0.999))


def waiting(call, ms, again):
    """Calls call(slice_ms) until it returns a code not in `again` or ms
    (a qp_duration) has passed; returns the last code. Between slices the
    interpreter runs signal handlers (Ctrl-C)."""
    if ms == 0:
        return call(0)
    if ms < 0:
        while True:
            rc = call(SLICE_MS)
            if rc not in again:
                return rc
    deadline = time.monotonic() + ms / 1000.0
    while True:
        left = int((deadline - time.monotonic()) * 1000 + 0.999)
        if left <= SLICE_MS:
            return call(max(left, 0))
        rc = call(SLICE_MS)
        if rc not in again:
            return rc


def is_remote(address):
    """True for an address served by qpiped (tcp://, ipc://, tls+tcp://)."""
    return "://" in address and not address.startswith("shm://")


def conn_opts(token=None, tls_ca=None, tls_cert=None, tls_key=None,
              max_message=0):
    """A qp_conn_opts and the cdata it points to (keep both alive), or
    (NULL, []) when nothing is set. A token of b"" means no token."""
    if token is None and tls_ca is None and tls_cert is None \
            and tls_key is None and not max_message:
        return ffi.NULL, []
    keep = []
    o = ffi.new("qp_conn_opts *")
    keep.append(o)

    def cstr(v):
        if isinstance(v, str):
            v = v.encode()
        c = ffi.new("char[]", bytes(v))
        keep.append(c)
        return c

    if token is not None:
        if len(token) == 0:
            o.no_token = True
        else:
            if b"\0" in bytes(token if isinstance(token, bytes)
                              else token.encode()):
                raise ValueError("a token (authkey) cannot hold a NUL byte")
            o.token = cstr(token)
    if tls_ca is not None:
        o.tls_ca = cstr(os.fsencode(tls_ca))
    if tls_cert is not None:
        o.tls_cert = cstr(os.fsencode(tls_cert))
    if tls_key is not None:
        o.tls_key = cstr(os.fsencode(tls_key))
    o.max_message = max_message
    return o, keep


# ---- serializers ----

# A Packer's pack() runs in C holding the GIL, so one serves every thread.
mp_dumps = msgpack.Packer(use_bin_type=True).pack


def mp_loads(buf):
    return msgpack.unpackb(buf, raw=False, strict_map_key=False)


# The bytes of a value a get copies into the thread's own buffer (GETBUF)
# instead of a fresh allocation; larger ones come in the library's buffer.
GETBUF = 64 * 1024


class _Out(threading.local):
    """Per-thread out-parameters of the get calls (allocated once), and
    g: (buf, the bytes view of buf, aux) for qpy_queue_get and
    qpy_conn_recv_into."""

    def __init__(self):
        self.bufp = ffi.new("void **")
        self.lenp = ffi.new("size_t *")
        self.readyp = ffi.new("bool *")
        buf = ffi.new("char[]", GETBUF)
        self.g = (buf, ffi.buffer(buf), ffi.new("qpy_aux *"))


out = _Out()


def pk_dumps(obj):
    return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


SERIALIZERS = ("msgpack", "pickle")


def take(bufp, n):
    """The bytes of a library-allocated buffer, which it then frees."""
    try:
        return ffi.unpack(ffi.cast("char *", bufp[0]), n)
    finally:
        lib.qp_free(bufp[0])


def version():
    """libqpipe's version string."""
    return ffi.string(lib.qp_version()).decode()


def unlink(address, *, token=None):
    """Deletes the named queue at address (its items are lost); returns
    False if there was none."""
    o, _keep = conn_opts(token)
    rc = lib.qp_queue_unlink_opts(address.encode(), o)
    if rc == lib.QP_ENOENT:
        return False
    check(rc, address)
    return True
