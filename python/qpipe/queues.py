"""Queue, JoinableQueue and SimpleQueue: multiprocessing's, over libqpipe.

A queue is one libqpipe handle per process. An anonymous queue (no
address) and a shm:// queue are shared memory that fork() shares: a child
keeps using the handle it inherits. A queue served by qpiped (tcp://,
ipc://, tls+tcp://) is a network connection: each process opens its own
handle on first use, so a fork() child works with a queue its parent
used too (over tls+tcp://, whose carrier nng does not survive fork(),
only if the parent had not used the network before forking). With the
spawn and forkserver start methods, named queues are pickled by address
and reopened in the child; anonymous queues cannot be (they need fork).
"""
import os
import threading
import queue as _pyqueue

from ._lib import ffi, lib
from . import _core
from ._core import PID as _PID, SLICE_MS, check, error, to_ms, waiting

_qget = lib.qpy_queue_get
_qput = lib.qp_queue_put
_EEMPTY = -lib.QP_EEMPTY
_GETBUF = _core.GETBUF

__all__ = ["Queue", "JoinableQueue", "SimpleQueue"]

_ANON_PICKLE = (
    "an anonymous qpipe queue (no address) is shared memory that only "
    "fork() shares: start the process with the fork start method "
    "(multiprocessing.get_context('fork')), or give the queue an address "
    "(address='shm://NAME' or a qpiped address) so that spawn and "
    "forkserver children can open it by name")


def _rebuild(cls, kwargs):
    return cls(**kwargs)


class Queue:
    """multiprocessing.Queue over libqpipe.

    Queue(maxsize=0, *, address=None, lease=False, lease_timeout=None,
          serializer="msgpack", capacity=0, max_message=0, token=None)

    address: None for an anonymous shared-memory queue shared with fork()ed
    children, else any qpipe address: "shm://jobs" (this host's shared
    memory), "tcp://HOST:7450/jobs", "ipc:///path/jobs" or
    "tls+tcp://HOST:7450/jobs" (a queue hosted by qpiped). A named queue is
    created if it does not exist; maxsize and capacity apply to the queue
    this call creates.

    put() returns once the item is in the queue (there is no feeder thread:
    close(), join_thread() and cancel_join_thread() have nothing to wait
    for). queue.Full and queue.Empty are raised where multiprocessing
    raises them; put and get on a closed queue raise ValueError.

    Items are msgpack values: None, bool, int, float, str, bytes, list,
    dict (tuples arrive as lists), readable by any qpipe client.
    serializer="pickle" stores pickles instead, for arbitrary objects.
    RISK: unpickling runs code chosen by whoever wrote the item. Use it
    only on a queue that nothing untrusted can put into (a shm:// queue is
    writable by every process of the user; a network queue by everyone who
    can reach qpiped with its token). C programs and `qpipe get --json`
    see a pickle as opaque bytes.

    Worker mode (lease=True): a get leases its item; task_done() confirms
    the oldest held item, complete(result, results) confirms it and puts
    its result on another queue in one step (one result per task),
    nack(delay) gives it back for another attempt, touch() renews the
    leases; an item whose worker dies or whose lease
    (lease_timeout seconds) runs out returns to the queue.

    token: the shared secret of a qpiped that wants one (default:
    $QPIPE_TOKEN).
    """

    _simple = False

    def __init__(self, maxsize=0, *, address=None, lease=False,
                 lease_timeout=None, serializer="msgpack", capacity=0,
                 max_message=0, token=None):
        if serializer not in _core.SERIALIZERS:
            raise ValueError("serializer must be one of %s, not %r"
                             % (", ".join(_core.SERIALIZERS), serializer))
        if maxsize is None or maxsize < 0:
            maxsize = 0
        self._kwargs = dict(maxsize=maxsize, address=address, lease=lease,
                            lease_timeout=lease_timeout,
                            serializer=serializer, capacity=capacity,
                            max_message=max_message, token=token)
        self._maxsize = maxsize
        self._address = address
        self._lease = bool(lease)
        self._pickle = serializer == "pickle"
        self._dumps = _core.pk_dumps if self._pickle else _core.mp_dumps
        self._loads = _core.pickle.loads if self._pickle else _core.mp_loads
        self._put = lib.qp_queue_put if self._pickle else lib.qp_queue_put_obj
        self._get = lib.qp_queue_get if self._pickle else lib.qp_queue_get_obj
        self._put_many = (lib.qp_queue_put_many if self._pickle
                          else lib.qp_queue_put_many_obj)
        self._get_many = (lib.qp_queue_get_many if self._pickle
                          else lib.qp_queue_get_many_obj)
        self._closed = False
        self._h = None
        # The handle of the fast paths of a blocking put and get: set
        # while the queue is open and its handle serves every process
        # (shared memory that fork() shares, not one reopened per process).
        self._fh = None
        self._pid = None
        self._mu = threading.Lock()
        self._remote = address is not None and _core.is_remote(address)
        # The timeout of a blocking put's first call: a local queue tries
        # without waiting first (a wait reads the clock for its
        # deadline); a remote one waits at once (a try would cost a round
        # trip of its own). A get always waits (see get).
        self._first = SLICE_MS if self._remote else 0
        o = ffi.new("qp_queue_opts *")
        o.flags = lib.QP_OPEN_CREATE | (lib.QP_OPEN_LEASE if lease else 0)
        o.maxsize = maxsize
        o.capacity = capacity
        o.max_message = max_message
        if lease_timeout is not None:
            o.lease_ms = max(1, int(lease_timeout * 1000))
        self._copts, self._keep = _core.conn_opts(token)
        o.conn = self._copts
        self._opts = o
        if address is None:
            hp = ffi.new("qp_queue **")
            check(lib.qp_queue_anon(hp, o), "anonymous queue")
            self._h, self._pid = hp[0], _PID[0]
            self._fh = self._h
        else:
            if not isinstance(address, str):
                raise TypeError("address must be a str, not %s"
                                % type(address).__name__)
            check(lib.qp_addr_check(address.encode()), address)
            if not self._remote:
                self._open()

    def _open(self):
        hp = ffi.new("qp_queue **")
        rc = lib.qp_queue_open(hp, self._address.encode(), self._opts)
        if rc != lib.QP_OK:
            raise error(rc, self._address)
        self._h, self._pid = hp[0], _PID[0]
        if not self._remote and not self._lease:
            self._fh = self._h
        return self._h

    def _handle(self):
        h = self._h
        if h is not None and self._pid == _PID[0]:
            return h
        if self._closed:
            self._raise_closed()
        with self._mu:
            if self._h is not None and self._pid == _PID[0]:
                return self._h
            if self._h is not None and not self._remote \
                    and not (self._lease and self._address is not None):
                # Shared memory inherited through fork(): keep it.
                self._pid = _PID[0]
                return self._h
            if self._h is not None:
                lib.qp_queue_free(self._h)  # the child's copy only
                self._h = None
            return self._open()

    def _raise_closed(self):
        raise ValueError("Queue %r is closed" % self)

    def __repr__(self):
        return "<%s %s>" % (type(self).__name__,
                            self._address or "anonymous")

    def __reduce__(self):
        if self._address is None:
            raise RuntimeError(_ANON_PICKLE)
        return (_rebuild, (type(self), self._kwargs))

    def __del__(self):
        h, self._h, self._fh = getattr(self, "_h", None), None, None
        if h is not None:
            lib.qp_queue_free(h)

    @property
    def address(self):
        """The queue's address, None for an anonymous queue."""
        return self._address

    # ---- put and get ----

    def put(self, obj, block=True, timeout=None):
        """Puts obj; blocks while the queue is full (block, timeout
        seconds); queue.Full if it stays full."""
        h = self._fh
        if h is not None and block and timeout is None:
            # The common call: a try without waiting, else the path below.
            if type(obj) is bytes and not self._pickle:
                # qp_queue_put stores bytes as the bin put_obj would store.
                if _qput(h, obj, len(obj), 0) == 0:
                    return
            else:
                data = self._dumps(obj)
                if self._put(h, data, len(data), 0) == 0:
                    return
        if self._closed:
            self._raise_closed()
        if type(obj) is bytes and not self._pickle:
            # qp_queue_put stores bytes as the bin put_obj would store.
            data, fn = obj, lib.qp_queue_put
        else:
            data, fn = self._dumps(obj), self._put
        h = self._h
        if h is None or self._pid != _PID[0]:
            h = self._handle()
        n = len(data)
        if block and timeout is None:
            rc = fn(h, data, n, self._first)
            if rc == 0:
                return
            ms = -1
            if rc == lib.QP_EFULL and self._first == 0:
                rc = fn(h, data, n, SLICE_MS)
        else:
            ms = to_ms(timeout) if block else 0
            rc = fn(h, data, n, ms if ms <= SLICE_MS else SLICE_MS)
        if rc == lib.QP_EFULL and (ms < 0 or ms > SLICE_MS):
            rc = waiting(lambda s: fn(h, data, n, s),
                         ms if ms < 0 else ms - SLICE_MS, (lib.QP_EFULL,))
        if rc != lib.QP_OK:
            if rc == lib.QP_ECLOSED and self._closed:
                self._raise_closed()
            raise error(rc, repr(self))

    def put_nowait(self, obj):
        """put(obj, False)."""
        return self.put(obj, False)

    def get(self, block=True, timeout=None):
        """Removes and returns the oldest item; blocks while the queue is
        empty (block, timeout seconds); queue.Empty if it stays empty."""
        h = self._fh
        if h is not None and block and timeout is None:
            # The common call: a try without waiting, else the path below.
            buf, view, aux = _core.out.g
            raw = self._pickle
            # Not a try without waiting first: libqpipe's get that ends
            # empty checks the producers' count against what it saw, and
            # a put landing in between reads as damage (it marks the
            # queue corrupt); a waiting get looks again first.
            n = _qget(h, raw, buf, _GETBUF, aux, SLICE_MS)
            if n >= 0 and not raw:
                return view[:n]
            if n != _EEMPTY:
                return self._got(n, raw, view, aux)
        if self._closed:
            self._raise_closed()
        h = self._h
        if h is None or self._pid != _PID[0]:
            h = self._handle()
        buf, view, aux = _core.out.g
        raw = self._pickle
        if block and timeout is None:
            ms = -1
            n = _qget(h, raw, buf, _GETBUF, aux, SLICE_MS)
        else:
            ms = to_ms(timeout) if block else 0
            n = _qget(h, raw, buf, _GETBUF, aux,
                      ms if ms <= SLICE_MS else SLICE_MS)
        if n == _EEMPTY and (ms < 0 or ms > SLICE_MS):
            n = waiting(lambda s: _qget(h, raw, buf, _GETBUF, aux, s),
                        ms if ms < 0 else ms - SLICE_MS, (_EEMPTY,))
        return self._got(n, raw, view, aux)

    def _got(self, n, raw, view, aux):
        """The item of a qpy_queue_get that returned n (see _build.py),
        or its error raised."""
        if n >= 0:
            # A bin's bytes in buf.
            return self._loads(view[:n]) if raw else view[:n]
        if n == lib.QPY_VALUE:
            return self._loads(view[:aux.len])
        if n <= lib.QPY_BIG_BIN:
            # Too large for buf: in the library's buffer, freed here.
            p = aux.big
            try:
                if n == lib.QPY_BIG_BIN and not raw:
                    return ffi.unpack(ffi.cast("char *", p) + aux.off,
                                      aux.len)
                return self._loads(ffi.buffer(p, aux.len))
            finally:
                lib.qp_free(p)
        if n == -lib.QP_ECLOSED and self._closed:
            self._raise_closed()
        raise error(-n, repr(self))

    def _loads_c(self, p, n):
        try:
            buf = ffi.buffer(p, n)
            if self._pickle:
                return _core.pickle.loads(buf)
            return _core.mp_loads(buf)
        finally:
            lib.qp_free(p)

    def get_nowait(self):
        """get(False)."""
        return self.get(False)

    def put_many(self, objs, block=True, timeout=None):
        """Puts every object of objs, in order, in batches (up to 4096
        items and 32 MiB each; one request per batch to qpiped): each
        batch all or nothing, with no other item between its items.
        queue.Full if a batch does not fit in time: the batches before it
        are in the queue, it and those after it are not."""
        if self._closed:
            self._raise_closed()
        datas = [self._dumps(o) for o in objs]
        if not datas:
            return
        ms = to_ms(timeout) if block else 0
        h = self._handle()
        n = len(datas)
        bufs = ffi.new("void *[]", n)
        keep = [ffi.from_buffer(d) for d in datas]
        for i, k in enumerate(keep):
            bufs[i] = k
        lens = ffi.new("size_t[]", [len(d) for d in datas])
        fn = self._put_many
        rc = waiting(lambda s: fn(h, bufs, lens, n, s), ms, (lib.QP_EFULL,))
        check(rc, repr(self))

    def get_many(self, max_items, block=True, timeout=None):
        """Up to max_items items as a list: waits (block, timeout) for the
        first, then takes those ready without waiting (one request to
        qpiped). queue.Empty if none came."""
        if self._closed:
            self._raise_closed()
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        ms = to_ms(timeout) if block else 0
        h = self._handle()
        bufs = ffi.new("void *[]", max_items)
        lens = ffi.new("size_t[]", max_items)
        np = ffi.new("size_t *")
        fn = self._get_many
        rc = waiting(lambda s: fn(h, bufs, lens, max_items, np, s), ms,
                     (lib.QP_EEMPTY,))
        if rc != lib.QP_OK:
            raise error(rc, repr(self))
        return [self._loads_c(bufs[i], lens[i]) for i in range(np[0])]

    # ---- keys, readiness ----

    def put_key(self, key, obj, block=True, timeout=None):
        """put(obj), placed by key: on a queue over several servers
        (address "tcp://h1:7450,h2:7450/jobs") the item goes to the
        partition that rendezvous hashing picks for key (str or bytes;
        partition_pick tells which), so items of one key stay in order;
        any other queue ignores the key."""
        if self._closed:
            self._raise_closed()
        k = key.encode() if isinstance(key, str) else bytes(key)
        data = self._dumps(obj)
        h = self._handle()
        fn = lib.qp_queue_put_key if self._pickle \
            else lib.qp_queue_put_key_obj
        ms = 0 if not block else to_ms(timeout)
        rc = waiting(lambda s: fn(h, k, len(k), data, len(data), s), ms,
                     (lib.QP_EFULL,))
        if rc != lib.QP_OK:
            raise error(rc, repr(self))

    def fileno(self):
        """A file descriptor that polls readable when a get may find an
        item (select, poll, selectors); owned by the queue. A remote queue
        then keeps one item ahead for this process (see qpipe.h)."""
        fdp = ffi.new("int *")
        self._check_open()
        check(lib.qp_queue_fd(self._handle(), fdp), repr(self))
        return fdp[0]

    # ---- state ----

    def qsize(self):
        """The exact number of items in the queue."""
        np = ffi.new("size_t *")
        self._check_open()
        check(lib.qp_queue_qsize(self._handle(), np), repr(self))
        return np[0]

    def empty(self):
        """True when the queue holds no item."""
        bp = ffi.new("bool *")
        self._check_open()
        check(lib.qp_queue_empty(self._handle(), bp), repr(self))
        return bool(bp[0])

    def full(self):
        """True when a put would block."""
        bp = ffi.new("bool *")
        self._check_open()
        check(lib.qp_queue_full(self._handle(), bp), repr(self))
        return bool(bp[0])

    def _check_open(self):
        if self._closed:
            raise OSError("Queue %r is closed" % self)

    def close(self):
        """No more puts or gets through this object in this process; the
        items stay in the queue for others. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fh = None
        if self._h is not None and self._pid == _PID[0]:
            lib.qp_queue_close(self._h)

    def join_thread(self):
        """Nothing to wait for (put returns once the item is stored); as
        multiprocessing's, only valid after close()."""
        assert self._closed, "Queue {0!r} not closed".format(self)

    def cancel_join_thread(self):
        """Nothing to cancel: there is no feeder thread."""

    # ---- JoinableQueue and worker mode ----

    def task_done(self):
        """Marks one item got earlier as done (worker mode: confirms the
        oldest item this handle holds). ValueError if called more times
        than items were put."""
        if self._closed:
            self._raise_closed()
        rc = lib.qp_queue_task_done(self._handle())
        if rc == lib.QP_EVALUE:
            raise ValueError("task_done() called too many times")
        check(rc, repr(self))

    def complete(self, result, results, block=True, timeout=None):
        """Worker mode: confirms the oldest item this handle holds (as
        task_done) and puts result on the queue results, in one step:
        both happen or neither, so that each task has exactly one result
        however often it runs, across kill -9 of workers and of qpiped.
        That holds when both queues are shm:// queues of this host (results
        a named one) or queues of one qpiped (both in shared memory, or
        both durable); elsewhere (two servers, a local and a remote queue,
        a durable and a shared-memory one) NotImplementedError,
        nothing done: put the result, then task_done() (a worker killed
        between the two leaves a second result).

        Blocks while results is full (block, timeout seconds): queue.Full
        if it stays full, the item still held. LookupError if the item's
        lease ran out first (nothing put: the item runs again, and that
        run's result counts). ValueError if no item is held."""
        if self._closed:
            self._raise_closed()
        if not isinstance(results, Queue):
            raise TypeError("results must be a qpipe Queue, not %s"
                            % type(results).__name__)
        results._check_open()
        data = results._dumps(result)
        h, rh = self._handle(), results._handle()
        fn = lib.qp_queue_complete if results._pickle \
            else lib.qp_queue_complete_obj
        n = len(data)
        if not block:
            ms = 0
        elif timeout is None:
            ms = -1
        else:
            ms = to_ms(timeout)
        rc = fn(h, rh, data, n, ms if 0 <= ms <= SLICE_MS else SLICE_MS)
        if rc == lib.QP_EFULL and (ms < 0 or ms > SLICE_MS):
            rc = waiting(lambda s: fn(h, rh, data, n, s),
                         ms if ms < 0 else ms - SLICE_MS, (lib.QP_EFULL,))
        if rc == lib.QP_EVALUE:
            raise ValueError("complete(): no item is held")
        if rc == lib.QP_ENOENT:
            raise LookupError("complete(): the item's lease ran out first; "
                              "nothing was put, the item runs again")
        if rc == lib.QP_ENOTSUP:
            raise NotImplementedError(_core.errmsg(rc))
        check(rc, repr(self))

    def join(self):
        """Blocks until every item put has been marked done."""
        if self._closed:
            self._raise_closed()
        h = self._handle()
        rc = waiting(lambda s: lib.qp_queue_join(h, s), -1,
                     (lib.QP_ETIMEDOUT,))
        check(rc, repr(self))

    def nack(self, delay=0):
        """Worker mode: gives the oldest held item back to the head of the
        queue after delay seconds. LookupError if none is held."""
        rc = lib.qp_queue_nack(self._handle(), to_ms(delay) if delay else 0)
        if rc == lib.QP_ENOENT:
            raise LookupError("no item is held")
        check(rc, repr(self))

    def touch(self, lease_timeout=None):
        """Worker mode: extends the lease of every held item to
        lease_timeout seconds from now (None: the queue's lease time).
        LookupError if none is held or a lease had run out."""
        ms = 0 if lease_timeout is None else max(1, to_ms(lease_timeout))
        rc = lib.qp_queue_touch(self._handle(), ms)
        if rc == lib.QP_ENOENT:
            raise LookupError("no item is held, or its lease ran out")
        check(rc, repr(self))

    def deliveries(self):
        """How many times the item at hand has been delivered (1 the first
        time)."""
        np = ffi.new("uint32_t *")
        check(lib.qp_queue_deliveries(self._handle(), np), repr(self))
        return np[0]


class JoinableQueue(Queue):
    """multiprocessing.JoinableQueue over libqpipe: Queue with task_done()
    and join() (every libqpipe queue counts unfinished tasks)."""


class SimpleQueue(Queue):
    """multiprocessing.SimpleQueue over libqpipe: get, put, empty, close.
    Takes Queue's keyword arguments (address=..., serializer=...)."""

    def __init__(self, *, ctx=None, **kwargs):
        kwargs.pop("maxsize", None)
        super().__init__(0, **kwargs)

    def _raise_closed(self):
        raise OSError("handle is closed")

    def put(self, obj):
        """Puts obj."""
        return Queue.put(self, obj)

    def get(self):
        """Removes and returns the oldest item, waiting for one."""
        return Queue.get(self)

    def empty(self):
        """True when the queue holds no item."""
        if self._closed:
            self._raise_closed()
        return Queue.empty(self)
