"""The behaviours of CPython's Lib/test/_test_multiprocessing.py for Queue,
JoinableQueue, SimpleQueue, Connection, Poll, Listener/Client and wait,
run against multiprocessing itself (TestX_mp: the test is right) and
against qpipe: an anonymous queue (_anon), a named shm:// queue (_shm) and
a queue through a real qpiped (_qpiped).

Differences from the originals, all on purpose: values are msgpack, so a
tuple sent arrives as a list (the tests send lists); sleeps are shorter.
"""
import array
import os
import queue as pyqueue
import random
import sys
import threading
import time
import unittest

import multiprocessing
import multiprocessing.queues

import msgpack

import qpt_util
from qpt_util import install

DELTA = 0.1
TIMEOUT1, TIMEOUT2, TIMEOUT3 = 0.1, 0.1, 0.1
SENTINEL = b""


def tearDownModule():
    qpt_util.stop_server()


class TimingWrapper:
    def __init__(self, func):
        self.func = func
        self.elapsed = None

    def __call__(self, *args, **kwds):
        t = time.monotonic()
        try:
            return self.func(*args, **kwds)
        finally:
            self.elapsed = time.monotonic() - t


def close_queue(q):
    if isinstance(q, multiprocessing.queues.Queue):
        q.close()
        q.join_thread()


# ---- children (module level, so spawn can find them) ----

def _test_put(queue, child_can_start, parent_can_continue):
    child_can_start.wait()
    for i in range(6):
        queue.get()
    parent_can_continue.set()


def _test_get(queue, child_can_start, parent_can_continue):
    child_can_start.wait()
    queue.put(2)
    queue.put(3)
    queue.put(4)
    queue.put(5)
    parent_can_continue.set()


def _test_fork(queue):
    for i in range(10, 20):
        queue.put(i)


def _test_task_done(q):
    for obj in iter(q.get, None):
        time.sleep(DELTA)
        q.task_done()


def _test_empty(queue, child_can_start, parent_can_continue):
    child_can_start.wait()
    try:
        queue.put(queue.empty())
        queue.put(queue.empty())
    finally:
        parent_can_continue.set()


def _echo(conn):
    for msg in iter(conn.recv_bytes, SENTINEL):
        conn.send_bytes(msg)
    conn.close()


def _child_strings(conn, strings):
    for s in strings:
        time.sleep(0.1)
        conn.send_bytes(s)
    conn.close()


def _child_boundaries(r):
    r.poll(5)


def _child_dont_merge(b):
    b.send_bytes(b"a")
    b.send_bytes(b"b")
    b.send_bytes(b"cd")


def _client_hello(connection, address):
    conn = connection.Client(address)
    conn.send("hello")
    conn.close()


def _child_test_wait(w, slow):
    for i in range(10):
        if slow:
            time.sleep(random.random() * 0.100)
        w.send([i, os.getpid()])
    w.close()


def _sleeper(period):
    time.sleep(period)


def _connection_module(qp):
    if qp:
        import qpipe.connection
        return qpipe.connection
    import multiprocessing.connection
    return multiprocessing.connection


def _client_hello_by(qp, address):
    _client_hello(_connection_module(qp), address)


# ---- Queue and JoinableQueue ----

class _TestQueue:

    def test_put(self):
        MAXSIZE = 6
        queue = self.Queue(maxsize=MAXSIZE)
        child_can_start = self.ctx.Event()
        parent_can_continue = self.ctx.Event()
        proc = self.ctx.Process(
            target=_test_put,
            args=(queue, child_can_start, parent_can_continue))
        proc.daemon = True
        proc.start()

        self.assertEqual(queue.empty(), True)
        self.assertEqual(queue.full(), False)

        queue.put(1)
        queue.put(2, True)
        queue.put(3, True, None)
        queue.put(4, False)
        queue.put(5, False, None)
        queue.put_nowait(6)

        # the values may be in buffer but not yet in pipe so sleep a bit
        time.sleep(DELTA)

        self.assertEqual(queue.empty(), False)
        self.assertEqual(queue.full(), True)

        put = TimingWrapper(queue.put)
        put_nowait = TimingWrapper(queue.put_nowait)

        self.assertRaises(pyqueue.Full, put, 7, False)
        self.assertLess(put.elapsed, 0.5)
        self.assertRaises(pyqueue.Full, put, 7, False, None)
        self.assertRaises(pyqueue.Full, put_nowait, 7)
        self.assertRaises(pyqueue.Full, put, 7, True, TIMEOUT1)
        self.assertGreaterEqual(put.elapsed, TIMEOUT1 - 0.01)
        self.assertRaises(pyqueue.Full, put, 7, False, TIMEOUT2)
        self.assertRaises(pyqueue.Full, put, 7, True, timeout=TIMEOUT3)
        self.assertGreaterEqual(put.elapsed, TIMEOUT3 - 0.01)

        child_can_start.set()
        parent_can_continue.wait()

        self.assertEqual(queue.empty(), True)
        self.assertEqual(queue.full(), False)

        proc.join()
        self.assertEqual(proc.exitcode, 0)
        close_queue(queue)

    def test_get(self):
        queue = self.Queue()
        child_can_start = self.ctx.Event()
        parent_can_continue = self.ctx.Event()
        proc = self.ctx.Process(
            target=_test_get,
            args=(queue, child_can_start, parent_can_continue))
        proc.daemon = True
        proc.start()

        self.assertEqual(queue.empty(), True)

        child_can_start.set()
        parent_can_continue.wait()

        time.sleep(DELTA)
        self.assertEqual(queue.empty(), False)

        self.assertEqual(queue.get(True, None), 2)
        self.assertEqual(queue.get(True), 3)
        self.assertEqual(queue.get(timeout=1), 4)
        self.assertEqual(queue.get_nowait(), 5)

        self.assertEqual(queue.empty(), True)

        get = TimingWrapper(queue.get)
        get_nowait = TimingWrapper(queue.get_nowait)

        self.assertRaises(pyqueue.Empty, get, False)
        self.assertLess(get.elapsed, 0.5)
        self.assertRaises(pyqueue.Empty, get, False, None)
        self.assertRaises(pyqueue.Empty, get_nowait)
        self.assertRaises(pyqueue.Empty, get, True, TIMEOUT1)
        self.assertGreaterEqual(get.elapsed, TIMEOUT1 - 0.01)
        self.assertRaises(pyqueue.Empty, get, False, TIMEOUT2)
        self.assertLess(get.elapsed, 0.5)
        self.assertRaises(pyqueue.Empty, get, timeout=TIMEOUT3)
        self.assertGreaterEqual(get.elapsed, TIMEOUT3 - 0.01)

        proc.join()
        self.assertEqual(proc.exitcode, 0)
        close_queue(queue)

    def test_fork(self):
        queue = self.Queue()
        for i in range(10):
            queue.put(i)
        time.sleep(DELTA)
        p = self.ctx.Process(target=_test_fork, args=(queue,))
        p.daemon = True
        p.start()
        for i in range(20):
            self.assertEqual(queue.get(timeout=30), i)
        self.assertRaises(pyqueue.Empty, queue.get, False)
        p.join()
        self.assertEqual(p.exitcode, 0)
        close_queue(queue)

    def test_qsize(self):
        q = self.Queue()
        self.assertEqual(q.qsize(), 0)
        q.put(1)
        self.assertEqual(q.qsize(), 1)
        q.put(5)
        self.assertEqual(q.qsize(), 2)
        q.get()
        self.assertEqual(q.qsize(), 1)
        q.get()
        self.assertEqual(q.qsize(), 0)
        close_queue(q)

    def test_task_done(self):
        queue = self.JoinableQueue()
        workers = [self.ctx.Process(target=_test_task_done, args=(queue,))
                   for i in range(4)]
        for p in workers:
            p.daemon = True
            p.start()
        for i in range(10):
            queue.put(i)
        queue.join()
        for p in workers:
            queue.put(None)
        for p in workers:
            p.join()
            self.assertEqual(p.exitcode, 0)
        close_queue(queue)

    def test_task_done_too_many(self):
        q = self.JoinableQueue()
        q.put(1)
        q.get()
        q.task_done()
        self.assertRaises(ValueError, q.task_done)
        close_queue(q)

    def test_timeout(self):
        q = self.Queue()
        start = time.monotonic()
        self.assertRaises(pyqueue.Empty, q.get, True, 0.200)
        delta = time.monotonic() - start
        self.assertGreaterEqual(delta, 0.100)
        close_queue(q)

    def test_closed_queue_put_get_exceptions(self):
        for q in self.Queue(), self.JoinableQueue():
            q.close()
            with self.assertRaisesRegex(ValueError, "is closed"):
                q.put("foo")
            with self.assertRaisesRegex(ValueError, "is closed"):
                q.get()

    def test_values(self):
        # Values a child puts come out equal in the parent.
        values = [None, True, False, 0, -1, 2 ** 63 - 1, 1.5, "", "é",
                  b"", b"\0\xff", [1, [2, "x"]], {"a": 1, "b": [None]},
                  b"x" * (1 << 20)]
        q = self.Queue()
        for v in values:
            q.put(v)
        for v in values:
            self.assertEqual(q.get(timeout=30), v)
        close_queue(q)


install(_TestQueue, globals())


# ---- SimpleQueue ----

class _TestSimpleQueue:

    def test_empty(self):
        queue = self.SimpleQueue()
        child_can_start = self.ctx.Event()
        parent_can_continue = self.ctx.Event()
        proc = self.ctx.Process(
            target=_test_empty,
            args=(queue, child_can_start, parent_can_continue))
        proc.daemon = True
        proc.start()

        self.assertTrue(queue.empty())

        child_can_start.set()
        parent_can_continue.wait()

        self.assertFalse(queue.empty())
        self.assertEqual(queue.get(), True)
        self.assertEqual(queue.get(), False)
        self.assertTrue(queue.empty())

        proc.join()

    def test_close(self):
        queue = self.SimpleQueue()
        queue.close()
        # closing a queue twice should not fail
        queue.close()
        self.assertRaises(OSError, queue.get)


install(_TestSimpleQueue, globals())


# ---- Connection ----

class _TestConnection:

    def test_connection(self):
        conn, child_conn = self.Pipe()

        p = self.ctx.Process(target=_echo, args=(child_conn,))
        p.daemon = True
        p.start()

        seq = [1, 2.25, None]
        msg = b"hello world"
        longmsg = msg * 10
        arr = array.array("i", list(range(4)))

        self.assertEqual(type(conn.fileno()), int)

        self.assertEqual(conn.send(seq), None)
        if self.is_qpipe:
            # The echo sends back the bytes of the value, as a bytes
            # message: multiprocessing's recv unpickles them, qpipe's
            # returns them (a msgpack bin is a bytes value to C too).
            self.assertEqual(msgpack.unpackb(conn.recv()), seq)
        else:
            self.assertEqual(conn.recv(), seq)

        self.assertEqual(conn.send_bytes(msg), None)
        self.assertEqual(conn.recv_bytes(), msg)

        buffer = array.array("i", [0] * 10)
        expected = list(arr) + [0] * (10 - len(arr))
        self.assertEqual(conn.send_bytes(arr), None)
        self.assertEqual(conn.recv_bytes_into(buffer),
                         len(arr) * buffer.itemsize)
        self.assertEqual(list(buffer), expected)

        buffer = array.array("i", [0] * 10)
        expected = [0] * 3 + list(arr) + [0] * (10 - 3 - len(arr))
        self.assertEqual(conn.send_bytes(arr), None)
        self.assertEqual(conn.recv_bytes_into(buffer, 3 * buffer.itemsize),
                         len(arr) * buffer.itemsize)
        self.assertEqual(list(buffer), expected)

        buffer = bytearray(b" " * 40)
        self.assertEqual(conn.send_bytes(longmsg), None)
        try:
            res = conn.recv_bytes_into(buffer)
        except multiprocessing.BufferTooShort as e:
            self.assertEqual(e.args, (longmsg,))
        else:
            self.fail("expected BufferTooShort, got %s" % res)

        poll = TimingWrapper(conn.poll)

        self.assertEqual(poll(), False)
        self.assertLess(poll.elapsed, 0.5)

        self.assertEqual(poll(-1), False)
        self.assertLess(poll.elapsed, 0.5)

        self.assertEqual(poll(TIMEOUT1), False)
        self.assertGreaterEqual(poll.elapsed, TIMEOUT1 - 0.01)

        conn.send(None)
        time.sleep(.1)

        self.assertEqual(poll(TIMEOUT1), True)
        self.assertLess(poll.elapsed, 0.5)

        if self.is_qpipe:
            self.assertEqual(msgpack.unpackb(conn.recv()), None)
        else:
            self.assertEqual(conn.recv(), None)

        really_big_msg = b"X" * (1024 * 1024 * 16)   # 16Mb
        conn.send_bytes(really_big_msg)
        self.assertEqual(conn.recv_bytes(), really_big_msg)

        conn.send_bytes(SENTINEL)                    # tell child to quit
        child_conn.close()

        self.assertEqual(conn.readable, True)
        self.assertEqual(conn.writable, True)
        self.assertRaises(EOFError, conn.recv)
        self.assertRaises(EOFError, conn.recv_bytes)

        p.join()
        self.assertEqual(p.exitcode, 0)

    def test_duplex_false(self):
        reader, writer = self.Pipe(duplex=False)
        self.assertEqual(writer.send(1), None)
        self.assertEqual(reader.recv(), 1)
        self.assertEqual(reader.readable, True)
        self.assertEqual(reader.writable, False)
        self.assertEqual(writer.readable, False)
        self.assertEqual(writer.writable, True)
        self.assertRaises(OSError, reader.send, 2)
        self.assertRaises(OSError, writer.recv)
        self.assertRaises(OSError, writer.poll)

    def test_spawn_close(self):
        conn, child_conn = self.Pipe()
        p = self.ctx.Process(target=_echo, args=(child_conn,))
        p.daemon = True
        p.start()
        child_conn.close()    # this might complete before child initializes
        msg = b"hello"
        conn.send_bytes(msg)
        self.assertEqual(conn.recv_bytes(), msg)
        conn.send_bytes(SENTINEL)
        conn.close()
        p.join()
        self.assertEqual(p.exitcode, 0)

    def test_sendbytes(self):
        msg = b"abcdefghijklmnopqrstuvwxyz"
        a, b = self.Pipe()

        a.send_bytes(msg)
        self.assertEqual(b.recv_bytes(), msg)
        a.send_bytes(msg, 5)
        self.assertEqual(b.recv_bytes(), msg[5:])
        a.send_bytes(msg, 7, 8)
        self.assertEqual(b.recv_bytes(), msg[7:7 + 8])
        a.send_bytes(msg, 26)
        self.assertEqual(b.recv_bytes(), b"")
        a.send_bytes(msg, 26, 0)
        self.assertEqual(b.recv_bytes(), b"")

        self.assertRaises(ValueError, a.send_bytes, msg, 27)
        self.assertRaises(ValueError, a.send_bytes, msg, 22, 5)
        self.assertRaises(ValueError, a.send_bytes, msg, 26, 1)
        self.assertRaises(ValueError, a.send_bytes, msg, -1)
        self.assertRaises(ValueError, a.send_bytes, msg, 4, -1)

    def test_recv_bytes_maxlength(self):
        a, b = self.Pipe()
        a.send_bytes(b"x" * 100)
        self.assertRaises(ValueError, b.recv_bytes, -1)
        with self.assertRaisesRegex(OSError, "bad message length"):
            b.recv_bytes(10)

    def test_context(self):
        a, b = self.Pipe()
        with a, b:
            a.send(1729)
            self.assertEqual(b.recv(), 1729)
            self.assertFalse(a.closed)
            self.assertFalse(b.closed)
        self.assertTrue(a.closed)
        self.assertTrue(b.closed)
        self.assertRaises(OSError, a.recv)
        self.assertRaises(OSError, b.recv)


install(_TestConnection, globals())


# ---- Poll ----

class _TestPoll:

    def test_empty_string(self):
        a, b = self.Pipe()
        self.assertEqual(a.poll(), False)
        b.send_bytes(b"")
        self.assertEqual(a.poll(1), True)
        self.assertEqual(a.poll(), True)

    def test_strings(self):
        strings = (b"hello", b"", b"a", b"b", b"", b"bye", b"", b"lop")
        a, b = self.Pipe()
        p = self.ctx.Process(target=_child_strings, args=(b, strings))
        p.start()
        for s in strings:
            for i in range(1000):
                if a.poll(0.01):
                    break
            x = a.recv_bytes()
            self.assertEqual(s, x)
        p.join()
        self.assertEqual(p.exitcode, 0)

    def test_boundaries(self):
        if self.name == "qpiped":
            self.skipTest("an end through qpiped is one network connection "
                          "of the process that opened it: it does not move "
                          "back to the parent once a child used it")
        r, w = self.Pipe(False)
        p = self.ctx.Process(target=_child_boundaries, args=(r,))
        p.start()
        time.sleep(0.5)
        L = [b"first", b"second"]
        for obj in L:
            w.send_bytes(obj)
        w.close()
        p.join()
        self.assertIn(r.recv_bytes(), L)

    def test_dont_merge(self):
        a, b = self.Pipe()
        self.assertEqual(a.poll(0.0), False)
        self.assertEqual(a.poll(0.1), False)

        p = self.ctx.Process(target=_child_dont_merge, args=(b,))
        p.start()

        self.assertEqual(a.recv_bytes(), b"a")
        self.assertEqual(a.poll(30.0), True)
        self.assertEqual(a.poll(1.0), True)
        self.assertEqual(a.recv_bytes(), b"b")
        self.assertEqual(a.poll(30.0), True)
        self.assertEqual(a.poll(1.0), True)
        self.assertEqual(a.poll(0.0), True)
        self.assertEqual(a.recv_bytes(), b"cd")

        p.join()


install(_TestPoll, globals())


# ---- Listener and Client ----

class _TestListener:

    def test_multiple_bind(self):
        l = self.connection.Listener(**self.listen_args())
        self.addCleanup(l.close)
        self.assertRaises(OSError, self.connection.Listener, l.address)

    def test_context(self):
        with self.connection.Listener(**self.listen_args()) as l:
            with self.connection.Client(l.address) as c:
                with l.accept() as d:
                    c.send(1729)
                    self.assertEqual(d.recv(), 1729)
        self.assertRaises(OSError, l.accept)

    def test_empty_authkey(self):
        if not self.is_qpipe and sys.version_info < (3, 12):
            self.skipTest("multiprocessing before 3.12 hangs on an empty "
                          "authkey (bpo-43952)")
        def run(addr, authkey):
            client = self.connection.Client(addr, authkey=authkey)
            client.send(1729)
            time.sleep(0.2)

        key = b""
        with self.connection.Listener(authkey=key,
                                      **self.listen_args()) as listener:
            thread = threading.Thread(target=run,
                                      args=(listener.address, key))
            thread.start()
            try:
                with listener.accept() as d:
                    self.assertEqual(d.recv(), 1729)
            finally:
                thread.join()
        with self.assertRaises(OSError):
            listener.accept()

    def test_authkey(self):
        key = b"supadupasecretkey"
        with self.connection.Listener(authkey=key,
                                      **self.listen_args()) as listener:
            got, errs = [], []

            def acc():
                try:
                    got.append(listener.accept())
                except Exception as e:  # multiprocessing's side raises
                    errs.append(e)

            if not self.is_qpipe:
                # multiprocessing's handshake needs accept() running; a
                # qpipe listener never returns a dialer that failed it.
                t = threading.Thread(target=acc, daemon=True)
                t.start()
            with self.assertRaises(multiprocessing.AuthenticationError):
                self.connection.Client(listener.address, authkey=b"wrong")
            if not self.is_qpipe:
                t.join(10)
                self.assertEqual(len(errs), 1)
            t = threading.Thread(target=acc, daemon=True)
            t.start()
            c = self.connection.Client(listener.address, authkey=key)
            t.join(10)
            self.assertEqual(len(got), 1)
            d = got[0]
            c.send("ok")
            self.assertEqual(d.recv(), "ok")
            c.close()
            d.close()

    def test_refused(self):
        l = self.connection.Listener(**self.listen_args())
        addr = l.address
        l.close()
        self.assertRaises(OSError, self.connection.Client, addr)


install(_TestListener, globals())


class _TestListenerClient:

    def test_listener_client(self):
        l = self.connection.Listener(**self.listen_args())
        p = self.net_ctx.Process(target=_client_hello_by,
                                 args=(self.is_qpipe, l.address))
        p.daemon = True
        p.start()
        conn = l.accept()
        self.assertEqual(conn.recv(), "hello")
        p.join()
        self.assertEqual(p.exitcode, 0)
        l.close()

    def test_issue14725(self):
        l = self.connection.Listener(**self.listen_args())
        p = self.net_ctx.Process(target=_client_hello_by,
                                 args=(self.is_qpipe, l.address))
        p.daemon = True
        p.start()
        time.sleep(1)
        conn = l.accept()
        self.assertEqual(conn.recv(), "hello")
        conn.close()
        p.join()
        l.close()

    def test_issue16955(self):
        l = self.connection.Listener(**self.listen_args())
        c = self.connection.Client(l.address)
        a = l.accept()
        a.send_bytes(b"hello")
        self.assertTrue(c.poll(1))
        a.close()
        c.close()
        l.close()


install(_TestListenerClient, globals())


# ---- wait ----

class _TestWait:

    def in_flight(self, conn):
        """Through qpiped a message sent is on its way when send returns
        (as between hosts), not yet in the other end: wait() with an
        object already ready (a sentinel) would not wait for it. Let it
        land first; elsewhere it has already."""
        if self.name == "qpiped":
            self.assertTrue(conn.poll(10))

    def test_wait(self, slow=False):
        wait = self.connection.wait
        readers = []
        procs = []
        messages = []

        for i in range(4):
            r, w = self.Pipe(duplex=False)
            p = self.ctx.Process(target=_child_test_wait, args=(w, slow))
            p.daemon = True
            p.start()
            w.close()
            readers.append(r)
            procs.append(p)
            self.addCleanup(p.join)

        deadline = time.monotonic() + 60
        while readers:
            self.assertLess(time.monotonic(), deadline)
            for r in wait(readers, 10):
                try:
                    msg = r.recv()
                except EOFError:
                    readers.remove(r)
                    r.close()
                else:
                    messages.append(list(msg))

        messages.sort()
        expected = sorted([i, p.pid] for i in range(10) for p in procs)
        self.assertEqual(messages, expected)

    def test_wait_slow(self):
        self.test_wait(True)

    def test_wait_timeout(self):
        wait = self.connection.wait
        timeout = 1.0
        a, b = self.Pipe()
        start = time.monotonic()
        res = wait([a, b], timeout)
        delta = time.monotonic() - start
        self.assertEqual(res, [])
        self.assertGreater(delta, timeout - 0.1)
        b.send(None)
        res = wait([a, b], 20)
        self.assertEqual(res, [a])

    def test_wait_integer(self):
        # A process sentinel (an int) among connections.
        wait = self.connection.wait
        expected = 1
        sorted_ = lambda l: sorted(l, key=lambda x: id(x))  # noqa: E731
        a, b = self.Pipe()
        p = self.ctx.Process(target=_sleeper, args=(expected,))
        p.start()
        start = time.monotonic()
        res = wait([a, p.sentinel, b], expected + 20)
        delta = time.monotonic() - start
        self.assertEqual(res, [p.sentinel])
        self.assertLess(delta, expected + 10)
        self.assertGreater(delta, expected - 0.9)

        a.send(None)
        self.in_flight(b)
        start = time.monotonic()
        res = wait([a, p.sentinel, b], 20)
        delta = time.monotonic() - start
        self.assertEqual(sorted_(res), sorted_([p.sentinel, b]))
        self.assertLess(delta, 2)

        b.send(None)
        self.in_flight(a)
        res = wait([a, p.sentinel, b], 20)
        self.assertEqual(sorted_(res), sorted_([a, p.sentinel, b]))
        p.join()

    def test_neg_timeout(self):
        wait = self.connection.wait
        a, b = self.Pipe()
        t = time.monotonic()
        res = wait([a], timeout=-1)
        t = time.monotonic() - t
        self.assertEqual(res, [])
        self.assertLess(t, 1)
        a.close()
        b.close()


install(_TestWait, globals())


if __name__ == "__main__":
    unittest.main()
