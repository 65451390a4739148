"""Pipe, Connection, Listener, Client and wait: multiprocessing.connection's,
over libqpipe.

Pipe() gives two ends in shared memory, shared with fork()ed children.
Pipe(address="tcp://HOST:7450/chat") gives both ends of a pipe through
qpiped (side 0 and side 1), and Pipe(address=..., side=0) one of them; each
end opens its network connection in the process that first uses it, and
pickles by address for spawn and forkserver children. Listener and Client
talk directly (tcp://HOST:PORT, ipc:///PATH, tls+tcp://), the authkey being
libqpipe's token.
"""
import os
import selectors
import threading
import time

from multiprocessing import BufferTooShort

from ._lib import ffi, lib
from . import _core
from ._core import PID as _PID, check, error, to_ms, waiting

__all__ = ["Connection", "Pipe", "Listener", "Client", "wait"]

_ANON_PICKLE = (
    "an end of an anonymous qpipe Pipe() is shared memory that only fork() "
    "shares: start the process with the fork start method "
    "(multiprocessing.get_context('fork')), or use a pipe through qpiped "
    "(qpipe.Pipe(address='tcp://HOST:PORT/NAME')), which spawn and "
    "forkserver children open by address")

_NOLIMIT = ffi.cast("size_t", -1)
# recv_bytes receives into a buffer of the connection's own, then copies
# into the bytes it returns: a message's malloc and free in the library
# cost more than its copies (1 MiB messages went at a third of the speed,
# each one's fresh pages faulted in). The buffer starts at _RXBUF bytes and
# grows to the largest message seen, up to _RXBUF_MAX; larger ones are
# received as before.
_RXBUF = 64 * 1024
_recv_into = lib.qpy_conn_recv_into
_GETBUF = _core.GETBUF
_SLICE_MS = _core.SLICE_MS
_NOT_READY = lib.QPY_NOT_READY
_RXBUF_MAX = 16 * 1024 * 1024
default_family = "AF_INET"
families = ["AF_INET", "AF_UNIX"]


def _rebuild_conn(address, side, duplex, token):
    return Connection._remote(address, side, duplex, token)


class Connection:
    """One end of a pipe or a Listener/Client connection, as
    multiprocessing.connection.Connection: send/recv move msgpack values
    (serializer="pickle" on Pipe/Listener/Client for arbitrary objects, at
    the risk told in qpipe.Queue's docstring), send_bytes/recv_bytes/
    recv_bytes_into move bytes; recv raises EOFError once the peer closed
    and everything sent was read."""

    def __init__(self, handle=None, readable=True, writable=True,
                 serializer="msgpack"):
        self._h = handle
        self._pid = _PID[0]
        self._readable = readable
        self._writable = writable
        self._closed = False
        # The handle for the fast paths of recv_bytes and send_bytes: set
        # while this end is open and readable (writable) and the handle
        # serves every process (not one reopened per process by address).
        self._rh = handle if readable else None
        self._wh = handle if writable else None
        self._address = None
        self._side = None
        self._duplex = True
        self._token = None
        self._pickle = serializer == "pickle"
        self._mu = threading.Lock()

    @classmethod
    def _remote(cls, address, side, duplex, token=None, serializer="msgpack"):
        c = cls(None, side == 0 or duplex, side == 1 or duplex, serializer)
        c._address, c._side, c._duplex, c._token = address, side, duplex, token
        return c

    def __repr__(self):
        where = self._address if self._address else "shm"
        if self._side is not None:
            where += " side %d" % self._side
        return "<qpipe.Connection %s%s>" % (where,
                                            " closed" if self._closed else "")

    def __reduce__(self):
        if self._address is None:
            raise RuntimeError(_ANON_PICKLE)
        return (_rebuild_conn, (self._address, self._side, self._duplex,
                                self._token))

    def __del__(self):
        h, self._h = getattr(self, "_h", None), None
        if h is not None:
            lib.qp_conn_free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        """True if the connection is closed."""
        return self._closed

    @property
    def readable(self):
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self):
        """True if the connection is writable."""
        return self._writable

    def _handle(self):
        if self._closed:
            raise OSError("handle is closed")
        h = self._h
        if h is not None and (self._pid == _PID[0]
                              or self._address is None):
            return h
        with self._mu:
            if self._h is not None and self._pid == _PID[0]:
                return self._h
            if self._h is not None:
                lib.qp_conn_free(self._h)  # a fork()ed child's copy
                self._h = None
            cp = ffi.new("qp_conn **")
            o, _keep = _core.conn_opts(self._token)
            rc = lib.qp_pipe_open_opts(cp, self._address.encode(),
                                       self._side, self._duplex, o)
            if rc != lib.QP_OK:
                raise error(rc, "%s side %d" % (self._address, self._side))
            self._h, self._pid = cp[0], _PID[0]
            return self._h

    def _check_readable(self):
        if self._closed:
            raise OSError("handle is closed")
        if not self._readable:
            raise OSError("connection is write-only")

    def _check_writable(self):
        if self._closed:
            raise OSError("handle is closed")
        if not self._writable:
            raise OSError("connection is read-only")

    def _send_error(self, rc):
        if rc == lib.QP_ECLOSED:
            return BrokenPipeError(32, "the other end is closed")
        if rc == lib.QP_EPERM:
            return OSError("connection is read-only")
        return error(rc, repr(self))

    def fileno(self):
        """A file descriptor that polls readable when a recv would not
        block (owned by the connection)."""
        fdp = ffi.new("int *")
        check(lib.qp_conn_fd(self._handle(), fdp), repr(self))
        return fdp[0]

    def close(self):
        """Closes this end: the peer's recv sees EOFError once it has read
        what was sent. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._rh = self._wh = None
        h = self._h
        if h is not None and (self._pid == _PID[0]
                              or self._address is None):
            lib.qp_conn_close(h)

    # ---- sending ----

    def send_bytes(self, buf, offset=0, size=None):
        """Sends bytes of a bytes-like object as one message."""
        h = self._wh
        if h is not None and type(buf) is bytes and offset == 0 \
                and size is None:
            # The common call: the whole of a bytes object.
            rc = lib.qp_conn_send_bytes(h, buf, 0, len(buf))
            if rc != lib.QP_OK:
                raise self._send_error(rc)
            return
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        h = self._handle()
        cbuf = ffi.from_buffer(m) if n else ffi.NULL
        rc = lib.qp_conn_send_bytes(h, cbuf, offset if n else 0, size)
        if rc != lib.QP_OK:
            raise self._send_error(rc)

    def send(self, obj):
        """Sends a value (msgpack; a pickle with serializer="pickle")."""
        self._check_writable()
        h = self._handle()
        if self._pickle:
            data = _core.pk_dumps(obj)
            rc = lib.qp_conn_send_bytes(h, data, 0, len(data))
        else:
            data = _core.mp_dumps(obj)
            rc = lib.qp_conn_send(h, data, len(data))
        if rc != lib.QP_OK:
            raise self._send_error(rc)

    # ---- receiving ----

    def _wait_readable(self, h):
        readyp = _core.out.readyp
        rc = lib.qp_conn_poll(h, 0, readyp)
        if rc == lib.QP_OK and readyp[0]:
            return
        while True:
            rc = lib.qp_conn_poll(h, _core.SLICE_MS, readyp)
            if rc != lib.QP_OK:
                self._recv_fail(rc)
            if readyp[0]:
                return

    def _recv_fail(self, rc):
        if rc == lib.QP_ECLOSED:
            if self._closed:
                raise OSError("handle is closed")
            raise EOFError
        if rc == lib.QP_EPERM:
            raise OSError("connection is write-only")
        raise error(rc, repr(self))

    def recv_bytes(self, maxlength=None):
        """Receives one message's bytes; EOFError at end of file. A message
        longer than maxlength raises OSError("bad message length")."""
        h = self._rh
        if h is not None and maxlength is None:
            # The common call: into the thread's buffer, waiting in
            # slices (Ctrl-C); a larger message stays for the path below.
            buf, view, _ = _core.out.g
            n = _recv_into(h, buf, _GETBUF, _SLICE_MS)
            while n == _NOT_READY:
                n = _recv_into(h, buf, _GETBUF, _SLICE_MS)
            if n >= 0:
                return view[:n]
            if n != -lib.QP_ETOOBIG:
                self._recv_fail(-n)
        self._check_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        h = self._h
        if h is None or (self._pid != _PID[0] and self._address is not None):
            h = self._handle()
        lenp = _core.out.lenp
        # Taken from the object for the call (dict.pop is atomic), so two
        # threads receiving at once never share it.
        rx = self.__dict__.pop("_rx", None)
        if rx is None:
            rx = ffi.new("char[]", _RXBUF)
        cap = len(rx) if maxlength is None else min(len(rx), maxlength)
        # Waits in slices (Ctrl-C) and receives in one call.
        n = _recv_into(h, rx, cap, _SLICE_MS)
        while n == _NOT_READY:
            n = _recv_into(h, rx, cap, _SLICE_MS)
        if n >= 0:
            self._rx = rx
            return ffi.unpack(rx, n)
        rc = -n
        if rc == lib.QP_ETOOBIG:
            # How large: the message stays at the head meanwhile.
            rc = lib.qp_conn_recv_bytes_into(h, rx, cap, 0, lenp)
        if (rc == lib.QP_ETOOBIG and cap == len(rx)
                and lenp[0] <= _RXBUF_MAX
                and (maxlength is None or lenp[0] <= maxlength)):
            rx = ffi.new("char[]", lenp[0])
            rc = lib.qp_conn_recv_bytes_into(h, rx, len(rx), 0, lenp)
        self._rx = rx
        if rc == lib.QP_OK:
            return ffi.unpack(rx, lenp[0])
        if rc != lib.QP_ETOOBIG:
            self._recv_fail(rc)
        # Over maxlength, over the connection's maximum, or larger than
        # the buffer may grow.
        bufp = _core.out.bufp
        lim = _NOLIMIT if maxlength is None else maxlength
        rc = lib.qp_conn_recv_bytes(h, bufp, lenp, lim)
        if rc == lib.QP_ETOOBIG:
            if self._writable:
                self._readable = False
                self._rh = None
            else:
                self.close()
            raise OSError("bad message length")
        if rc != lib.QP_OK:
            self._recv_fail(rc)
        return _core.take(bufp, lenp[0])

    def recv_bytes_into(self, buf, offset=0):
        """Receives one message's bytes into a writable buffer at offset
        (bytes) and returns its length; BufferTooShort(message) if it does
        not fit (the message is consumed, as in multiprocessing)."""
        self._check_readable()
        with memoryview(buf) as m:
            bytesize = m.itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            elif offset > bytesize:
                raise ValueError("offset too large")
            if m.readonly or not m.c_contiguous:
                data = self.recv_bytes()
                size = len(data)
                if bytesize < offset + size:
                    raise BufferTooShort(data)
                mb = m.cast("B") if m.format != "B" or m.ndim != 1 else m
                mb[offset:offset + size] = data
                return size
            # Straight into the caller's buffer.
            h = self._handle()
            self._wait_readable(h)
            lenp = _core.out.lenp
            rc = lib.qp_conn_recv_bytes_into(h, ffi.from_buffer(m),
                                             bytesize, offset, lenp)
            if rc == lib.QP_OK:
                return lenp[0]
            if rc != lib.QP_ETOOBIG:
                self._recv_fail(rc)
            raise BufferTooShort(self.recv_bytes())

    def recv(self):
        """Receives one value; EOFError at end of file."""
        self._check_readable()
        h = self._handle()
        self._wait_readable(h)
        bufp, lenp = _core.out.bufp, _core.out.lenp
        if self._pickle:
            rc = lib.qp_conn_recv_bytes(h, bufp, lenp, _NOLIMIT)
        else:
            rc = lib.qp_conn_recv(h, bufp, lenp)
        if rc != lib.QP_OK:
            self._recv_fail(rc)
        try:
            b = ffi.buffer(bufp[0], lenp[0])
            if self._pickle:
                return _core.pickle.loads(b)
            return _core.mp_loads(b)
        finally:
            lib.qp_free(bufp[0])

    def poll(self, timeout=0.0):
        """True when a recv would not block (a message waits, or end of
        file); waits up to timeout seconds (None: for ever)."""
        self._check_readable()
        h = self._handle()
        readyp = ffi.new("bool *")

        def once(ms):
            rc = lib.qp_conn_poll(h, ms, readyp)
            if rc == lib.QP_OK and not readyp[0]:
                return lib.QP_ETIMEDOUT
            return rc

        rc = waiting(once, to_ms(timeout), (lib.QP_ETIMEDOUT,))
        if rc == lib.QP_ETIMEDOUT:
            return False
        if rc == lib.QP_ECLOSED and not self._closed:
            return True
        if rc != lib.QP_OK:
            self._recv_fail(rc)
        return True


def Pipe(duplex=True, *, address=None, side=None, token=None,
         serializer="msgpack"):
    """Returns (conn1, conn2), the two ends of a pipe; duplex=False makes
    conn1 receive only and conn2 send only.

    address=None: shared memory, to be made before fork(). address=
    "tcp://HOST:PORT/NAME" (or ipc://, tls+tcp://): a pipe through qpiped;
    with side=None both ends (side 0 and side 1), with side=0 or 1 only
    that end. Each end connects in the process that first uses it."""
    if serializer not in _core.SERIALIZERS:
        raise ValueError("serializer must be one of %s"
                         % ", ".join(_core.SERIALIZERS))
    if address is not None:
        check(lib.qp_addr_check(address.encode()), address)
        if side is not None:
            if side not in (0, 1):
                raise ValueError("side must be 0 or 1")
            return Connection._remote(address, side, duplex, token,
                                      serializer)
        return (Connection._remote(address, 0, duplex, token, serializer),
                Connection._remote(address, 1, duplex, token, serializer))
    if side is not None:
        raise ValueError("side needs an address")
    ap = ffi.new("qp_conn **")
    bp = ffi.new("qp_conn **")
    check(lib.qp_pipe(ap, bp, bool(duplex)), "Pipe")
    if duplex:
        return (Connection(ap[0], serializer=serializer),
                Connection(bp[0], serializer=serializer))
    return (Connection(ap[0], True, False, serializer),
            Connection(bp[0], False, True, serializer))


def _addr(address, family=None):
    if address is None:
        if family == "AF_UNIX":
            import tempfile
            d = tempfile.mkdtemp(prefix="qpipe-")
            return "ipc://" + os.path.join(d, "listener")
        return "tcp://127.0.0.1:0"
    if isinstance(address, tuple):
        return "tcp://%s:%d" % address
    if "://" not in address:
        return "ipc://" + address
    return address


class Listener:
    """multiprocessing.connection.Listener: Listener(address=None,
    family=None, backlog=1, authkey=None). address is a qpipe address
    (tcp://HOST:PORT, port 0 for a free one; ipc:///PATH; tls+tcp:// with
    tls_cert and tls_key), a (host, port) pair or a Unix socket path.
    authkey is the token that clients must hold."""

    def __init__(self, address=None, family=None, backlog=1, authkey=None,
                 *, tls_cert=None, tls_key=None, tls_ca=None,
                 serializer="msgpack"):
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError("authkey should be a byte string")
        lp = ffi.new("qp_listener **")
        o, _keep = _core.conn_opts(authkey, tls_ca, tls_cert, tls_key)
        url = _addr(address, family)
        rc = lib.qp_listen_opts(lp, url.encode(), o)
        if rc != lib.QP_OK:
            e = error(rc, url)
            if isinstance(e, ValueError) and "address" in str(e).lower() \
                    and "in use" in str(e).lower():
                raise OSError(str(e))
            raise OSError(str(e)) if isinstance(e, ValueError) else e
        self._l = lp[0]
        self._pid = _PID[0]
        self._serializer = serializer
        self._address = ffi.string(lib.qp_listener_url(self._l)).decode()
        self._last_accepted = None

    @property
    def address(self):
        """The address bound, e.g. "tcp://127.0.0.1:40123"."""
        return self._address

    @property
    def last_accepted(self):
        return self._last_accepted

    def accept(self):
        """Waits for the next connection and returns it."""
        if self._l is None:
            raise OSError("listener is closed")
        cp = ffi.new("qp_conn **")
        rc = waiting(lambda ms: lib.qp_listener_accept(self._l, cp, ms), -1,
                     (lib.QP_ETIMEDOUT,))
        check(rc, self._address)
        return Connection(cp[0], serializer=self._serializer)

    def close(self):
        """Stops listening; accepted connections go on."""
        l, self._l = self._l, None
        if l is not None:
            lib.qp_listener_free(l)

    def __del__(self):
        if getattr(self, "_l", None) is not None:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def Client(address, family=None, authkey=None, *, timeout=None, tls_ca=None,
           tls_cert=None, tls_key=None, serializer="msgpack"):
    """multiprocessing.connection.Client: connects to a Listener. authkey
    is the token. ConnectionRefusedError if nothing listens (timeout: how
    long to keep retrying, None: not at all)."""
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")
    cp = ffi.new("qp_conn **")
    o, _keep = _core.conn_opts(authkey, tls_ca, tls_cert, tls_key)
    url = _addr(address, family)
    rc = lib.qp_dial_opts(cp, url.encode(), to_ms(timeout or 0), o)
    check(rc, url)
    return Connection(cp[0], serializer=serializer)


def wait(object_list, timeout=None):
    """multiprocessing.connection.wait: waits until at least one object of
    object_list is ready, for up to timeout seconds, and returns the ready
    ones. qpipe Connections are ready when poll() would say so; other
    objects (multiprocessing connections, sockets, file descriptors) when
    readable."""
    objs = list(object_list)
    ours = [o for o in objs if isinstance(o, Connection)]
    if len(ours) == len(objs):
        return _wait_ours(ours, timeout)
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
    with selectors.DefaultSelector() as sel:
        for o in objs:
            fd = o if isinstance(o, int) else o.fileno()
            sel.register(fd, selectors.EVENT_READ, o)
        while True:
            ready = [o for o in ours if o.poll(0)]
            left = None if deadline is None else \
                max(deadline - time.monotonic(), 0)
            if ready:
                left = 0
            s = _core.SLICE_MS / 1000.0
            keys = sel.select(s if left is None else min(left, s))
            got = {id(o) for o in ready}
            for key, _ev in keys:
                o = key.data
                if isinstance(o, Connection):
                    if o.poll(0):
                        got.add(id(o))
                else:
                    got.add(id(o))
            if got or (left is not None and left <= 0):
                return [o for o in objs if id(o) in got]


def _wait_ours(conns, timeout):
    n = len(conns)
    if n == 0:
        if timeout is not None:
            time.sleep(max(timeout, 0))
        return []
    arr = ffi.new("qp_conn *[]", [c._handle() for c in conns])
    ready = ffi.new("bool[]", n)
    np = ffi.new("size_t *")

    def once(ms):
        rc = lib.qp_wait(arr, n, ms, ready, np)
        if rc == lib.QP_OK and np[0] == 0:
            return lib.QP_ETIMEDOUT
        return rc

    rc = waiting(once, to_ms(timeout), (lib.QP_ETIMEDOUT,))
    if rc == lib.QP_ETIMEDOUT:
        return []
    check(rc, "wait")
    return [c for i, c in enumerate(conns) if ready[i]]
