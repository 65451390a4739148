"""Test support: where the build is, a real qpiped, unique names, and the
four backends every ported test runs against (multiprocessing itself, an
anonymous qpipe queue, a named shm:// queue, a queue through qpiped)."""
import itertools
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import qpipe

TREE = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BUILD = os.environ.get("QP_BUILD_DIR") or os.path.join(TREE, "build")
BIN = os.path.join(BUILD, "bin")

_names = itertools.count()


def uniq(prefix="pyt"):
    """A queue or pipe name no other test (or test run) uses."""
    return "%s%d.%d.%d" % (prefix, os.getpid(), int(time.time()) % 100000,
                           next(_names))


class Qpiped:
    """build/bin/qpiped on a free loopback port, stopped by its PID."""

    def __init__(self, *extra):
        self.dir = tempfile.mkdtemp(prefix="qpt-")
        pf = os.path.join(self.dir, "port")
        self.log = open(os.path.join(self.dir, "log"), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "qpiped"), "--listen", "tcp://127.0.0.1:0",
             "--port-file", pf, "--log-level", "warn"] + list(extra),
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(pf):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("qpiped did not start: %s" % self.logtext())
            time.sleep(0.02)
        with open(pf) as f:
            self.url = f.readline().strip()

    def logtext(self):
        try:
            with open(os.path.join(self.dir, "log"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_server = None


def server():
    """The qpiped shared by this test process, started on first use."""
    global _server
    if _server is None:
        _server = Qpiped()
    return _server


def stop_server():
    global _server
    if _server is not None:
        _server.stop()
        _server = None


class MP:
    """multiprocessing itself, to show that the tests are right."""
    name = "mp"
    is_qpipe = False
    ctx = multiprocessing.get_context("fork")
    net_ctx = ctx
    connection = multiprocessing.connection

    def setUp(self):
        pass

    def tearDown(self):
        pass

    def Queue(self, maxsize=0):
        return self.ctx.Queue(maxsize)

    def JoinableQueue(self, maxsize=0):
        return self.ctx.JoinableQueue(maxsize)

    def SimpleQueue(self):
        return self.ctx.SimpleQueue()

    def Pipe(self, duplex=True):
        return self.ctx.Pipe(duplex)

    def listen_args(self):
        return {}


class _Qp(MP):
    is_qpipe = True
    connection = qpipe.connection
    net_ctx = multiprocessing.get_context("spawn")

    def address(self):
        return None

    def Queue(self, maxsize=0):
        return qpipe.Queue(maxsize, address=self.address())

    def JoinableQueue(self, maxsize=0):
        return qpipe.JoinableQueue(maxsize, address=self.address())

    def SimpleQueue(self):
        return qpipe.SimpleQueue(address=self.address())

    def Pipe(self, duplex=True):
        return qpipe.Pipe(duplex)

    def listen_args(self):
        return {"address": "tcp://127.0.0.1:0"}


class Anon(_Qp):
    """Anonymous qpipe queues and pipes, shared through fork()."""
    name = "anon"


class Shm(_Qp):
    """Named shm:// queues, shared through fork()."""
    name = "shm"

    def setUp(self):
        self._made = []

    def tearDown(self):
        for a in self._made:
            qpipe.unlink(a)

    def address(self):
        a = "shm://" + uniq()
        self._made.append(a)
        return a

    def listen_args(self):
        d = tempfile.mkdtemp(prefix="qpt-ipc-")
        return {"address": "ipc://" + os.path.join(d, "l")}


class Remote(_Qp):
    """Queues and pipes through a real qpiped; children are spawned (a
    network handle does not survive fork())."""
    name = "qpiped"
    ctx = multiprocessing.get_context("spawn")

    def setUp(self):
        self._made = []

    def tearDown(self):
        for a in self._made:
            qpipe.unlink(a)

    def address(self):
        a = server().url + "/" + uniq()
        self._made.append(a)
        return a

    def Pipe(self, duplex=True):
        return qpipe.Pipe(duplex, address=server().url + "/" + uniq())


BACKENDS = (MP, Anon, Shm, Remote)


def install(mixin, namespace):
    """Adds one unittest class per backend for the tests in mixin:
    Test<Mixin>_<backend>."""
    import unittest
    for b in BACKENDS:
        name = "%s_%s" % (mixin.__name__.lstrip("_"), b.name)

        def setUp(self, b=b):
            b.setUp(self)

        def tearDown(self, b=b):
            b.tearDown(self)

        namespace[name] = type(name, (mixin, b, unittest.TestCase),
                               {"setUp": setUp, "tearDown": tearDown,
                                "__module__": namespace["__name__"]})


def python_env():
    """The environment for a child python3 that imports qpipe."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in sys.path if p and os.path.isdir(p))
    return env
