"""qpipe's own behaviours beyond multiprocessing's: Ctrl-C in a blocked
call, pickling by address for spawn and forkserver (and the error for
anonymous queues), worker mode, batches, the pickle serializer, the seed
examples, interop with the qpipe CLI, and installing with pip."""
import json
import multiprocessing
import os
import queue as pyqueue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import qpipe
import qpt_util
from qpt_util import uniq

PY = sys.executable


def tearDownModule():
    qpt_util.stop_server()


def _put_hello(q):
    q.put(["hello", os.getpid()])


def _send_hello(c):
    c.send("hello")
    c.close()


_CTRL_C = r"""
import sys, qpipe
what, addr = sys.argv[1], sys.argv[2] or None
if what == "get":
    q = qpipe.Queue(address=addr)
    print("ready", flush=True)
    q.get()
elif what == "put":
    q = qpipe.Queue(1, address=addr)
    q.put(1)
    print("ready", flush=True)
    q.put(2)
elif what == "join":
    q = qpipe.JoinableQueue(address=addr)
    q.put(1)
    print("ready", flush=True)
    q.join()
elif what in ("recv", "recv_bytes"):
    if addr:
        a = qpipe.Pipe(address=addr, side=0)
    else:
        a, b = qpipe.Pipe()
    a.poll(0)
    print("ready", flush=True)
    a.recv() if what == "recv" else a.recv_bytes()
"""


class TestCtrlC(unittest.TestCase):
    """SIGINT interrupts a blocked call with KeyboardInterrupt at once."""

    def run_case(self, what, addr):
        p = subprocess.Popen([PY, "-c", _CTRL_C, what, addr or ""],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=qpt_util.python_env())
        try:
            self.assertEqual(p.stdout.readline().strip(), b"ready")
            time.sleep(0.3)   # well into the blocking call
            self.assertIsNone(p.poll())
            t = time.monotonic()
            os.kill(p.pid, signal.SIGINT)
            p.wait(10)
            took = time.monotonic() - t
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        err = p.stderr.read().decode()
        p.stdout.close()
        p.stderr.close()
        self.assertIn("KeyboardInterrupt", err)
        self.assertNotEqual(p.returncode, 0)
        self.assertLess(took, 0.9, "took %.3f s" % took)

    def test_anon(self):
        for what in ("get", "put", "join", "recv", "recv_bytes"):
            with self.subTest(what=what):
                self.run_case(what, None)

    def test_shm(self):
        for what in ("get", "put", "join"):
            a = "shm://" + uniq()
            with self.subTest(what=what):
                try:
                    self.run_case(what, a)
                finally:
                    qpipe.unlink(a)

    def test_qpiped(self):
        for what in ("get", "put", "join", "recv", "recv_bytes"):
            a = qpt_util.server().url + "/" + uniq()
            with self.subTest(what=what):
                try:
                    self.run_case(what, a)
                finally:
                    if not what.startswith("recv"):
                        qpipe.unlink(a)


class TestStartMethods(unittest.TestCase):

    def test_named_queue_spawn_forkserver(self):
        for method in ("spawn", "forkserver"):
            ctx = multiprocessing.get_context(method)
            for addr in ("shm://" + uniq(),
                         qpt_util.server().url + "/" + uniq()):
                with self.subTest(method=method, addr=addr):
                    q = qpipe.Queue(address=addr)
                    p = ctx.Process(target=_put_hello, args=(q,))
                    p.start()
                    got = q.get(timeout=60)
                    p.join(60)
                    self.assertEqual(p.exitcode, 0)
                    self.assertEqual(got, ["hello", p.pid])
                    qpipe.unlink(addr)

    def test_remote_pipe_spawn(self):
        a, b = qpipe.Pipe(address=qpt_util.server().url + "/" + uniq())
        p = multiprocessing.get_context("spawn").Process(
            target=_send_hello, args=(b,))
        p.start()
        self.assertEqual(a.recv(), "hello")
        p.join(60)
        self.assertEqual(p.exitcode, 0)

    def test_anonymous_needs_fork(self):
        for obj in (qpipe.Queue(), qpipe.SimpleQueue(), qpipe.Pipe()[1]):
            for method in ("spawn", "forkserver"):
                with self.subTest(obj=obj, method=method):
                    p = multiprocessing.get_context(method).Process(
                        target=_put_hello, args=(obj,))
                    with self.assertRaisesRegex(RuntimeError, "fork"):
                        p.start()

    def test_fork_child_of_a_network_parent(self):
        # A remote queue used in the parent works in a child forked
        # afterwards, as multiprocessing's Queue does: the child opens a
        # connection of its own, and the parent's goes on.
        addr = qpt_util.server().url + "/" + uniq()
        code = r"""
import os, sys, qpipe
q = qpipe.Queue(address=sys.argv[1])
q.put(1)
pid = os.fork()
if pid == 0:
    q.put(2)
    os._exit(0)
_, st = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(st))
q.put(3)
print("got", sorted([q.get(timeout=10) for _ in range(3)]))
"""
        out = subprocess.run([PY, "-c", code, addr], capture_output=True,
                             env=qpt_util.python_env(), timeout=60)
        text = out.stdout.decode()
        self.assertIn("exit 0", text, out.stderr.decode())
        self.assertIn("got [1, 2, 3]", text, out.stderr.decode())
        qpipe.unlink(addr)


class _Kinds:
    def addresses(self):
        return ["shm://" + uniq(), qpt_util.server().url + "/" + uniq()]


class TestWorkerMode(_Kinds, unittest.TestCase):

    def test_nack_task_done(self):
        for addr in self.addresses():
            with self.subTest(addr=addr):
                q = qpipe.Queue(address=addr, lease=True, lease_timeout=30)
                q.put("job")
                self.assertEqual(q.get(timeout=10), "job")
                q.nack()
                self.assertEqual(q.get(timeout=10), "job")
                self.assertEqual(q.deliveries(), 2)
                q.touch()
                q.task_done()
                self.assertRaises(LookupError, q.nack)
                self.assertRaises(pyqueue.Empty, q.get, True, 0.2)
                q.close()
                qpipe.unlink(addr)

    def test_lease_runs_out(self):
        for addr in self.addresses():
            with self.subTest(addr=addr):
                a = qpipe.Queue(address=addr, lease=True, lease_timeout=0.5)
                b = qpipe.Queue(address=addr, lease=True, lease_timeout=0.5)
                a.put("job")
                self.assertEqual(a.get(timeout=10), "job")
                # a never confirms: the item comes back for b.
                self.assertEqual(b.get(timeout=10), "job")
                b.task_done()
                a.close()
                b.close()
                qpipe.unlink(addr)

    def test_complete_one_result(self):
        srv = qpt_util.server().url
        for base in ("shm://", srv + "/"):
            with self.subTest(base=base):
                ta, ra = base + uniq(), base + uniq()
                tasks = qpipe.Queue(address=ta, lease=True,
                                    lease_timeout=0.5)
                results = qpipe.Queue(address=ra, maxsize=1)
                tasks.put_many(["a", "b", "c"])
                self.assertEqual(tasks.get(timeout=10), "a")
                tasks.complete({"task": "a", "n": 1}, results)
                self.assertRaises(ValueError, tasks.complete, 0, results)
                self.assertEqual(tasks.get(timeout=10), "b")
                # results holds one item: full, the task still held.
                self.assertRaises(pyqueue.Full, tasks.complete, "B",
                                  results, timeout=0.1)
                self.assertEqual(results.get(timeout=10),
                                 {"task": "a", "n": 1})
                tasks.complete("B", results, timeout=10)
                self.assertEqual(results.get(timeout=10), "B")
                # A lease that ran out: nothing put, the task comes back.
                self.assertEqual(tasks.get(timeout=10), "c")
                time.sleep(0.8)
                other = qpipe.Queue(address=ta, lease=True)
                self.assertEqual(other.get(timeout=10), "c")
                self.assertRaises(LookupError, tasks.complete, "C?",
                                  results)
                other.complete("C", results)
                self.assertEqual(results.get(timeout=10), "C")
                self.assertTrue(results.empty())
                tasks.join()
                # Queues of two kinds: not in one step.
                local = qpipe.Queue(address="shm://" + uniq())
                remote = qpipe.Queue(address=srv + "/" + uniq())
                tasks.put("d")
                self.assertEqual(tasks.get(timeout=10), "d")
                self.assertRaises(NotImplementedError, tasks.complete, "D",
                                  remote if base == "shm://" else local)
                tasks.task_done()
                for q, a in ((tasks, ta), (results, ra), (other, ta),
                             (local, None), (remote, None)):
                    q.close()
                for a in (ta, ra, local._address, remote._address):
                    qpipe.unlink(a)


class TestBatchesAndSerializers(_Kinds, unittest.TestCase):

    def test_put_many_get_many(self):
        for ser in ("msgpack", "pickle"):
            for addr in [None] + self.addresses():
                with self.subTest(ser=ser, addr=addr):
                    q = qpipe.Queue(address=addr, serializer=ser)
                    q.put_many(range(100))
                    got = []
                    while len(got) < 100:
                        got += q.get_many(30, timeout=10)
                    self.assertEqual(got, list(range(100)))
                    self.assertRaises(pyqueue.Empty, q.get_many, 5, False)
                    q.close()
                    if addr:
                        qpipe.unlink(addr)

    def test_put_many_all_or_nothing(self):
        for ser in ("msgpack", "pickle"):
            for addr in [None] + self.addresses():
                with self.subTest(ser=ser, addr=addr):
                    q = qpipe.Queue(3, address=addr, serializer=ser)
                    q.put("a")
                    self.assertRaises(pyqueue.Full, q.put_many,
                                      ["x", "y", "z"], False)
                    self.assertRaises(pyqueue.Full, q.put_many,
                                      ["x", "y", "z"], True, 0.1)
                    self.assertEqual(q.qsize(), 1)
                    if ser == "msgpack":
                        self.assertRaises(TypeError, q.put_many,
                                          ["x", {1, 2}])
                        self.assertEqual(q.qsize(), 1)
                    q.put_many([{"k": [1, None]}, b"raw"])
                    self.assertEqual(q.get_many(5, timeout=10),
                                     ["a", {"k": [1, None]}, b"raw"])
                    q.close()
                    if addr:
                        qpipe.unlink(addr)

    def test_pickle_objects(self):
        q = qpipe.Queue(serializer="pickle")
        obj = {"t": (1, 2), "s": {3}, "c": complex(1, 2)}
        q.put(obj)
        self.assertEqual(q.get(), obj)
        a, b = qpipe.Pipe(serializer="pickle")
        a.send(obj)
        self.assertEqual(b.recv(), obj)

    def test_msgpack_refuses_objects(self):
        q = qpipe.Queue()
        self.assertRaises(TypeError, q.put, {1, 2})
        self.assertRaises(ValueError, qpipe.Queue, serializer="json")


class TestQueueValues(_Kinds, unittest.TestCase):
    """A get hands a bin back as its bytes straight from the thread's
    64 KiB buffer, other values through msgpack, and larger ones from the
    library's buffer; a put of bytes stores the bin a put of its msgpack
    encoding stores. Every kind, at the sizes where the paths change, comes
    back as msgpack itself round-trips it (pickle: as it was)."""

    def test_kinds_and_sizes(self):
        import msgpack
        sizes = [0, 1, 255, 256, 65530, 65535, 65536, 65537, 1 << 20]
        vals = [bytes((i * 7 + n) % 251 for i in range(n)) for n in sizes]
        vals += ["é" * 40000, "s", None, 0, -1, 2 ** 63, 1.5, True,
                 [b"a", "b", None], {1: b"x", "k": [1, 2]}, bytearray(b"ba"),
                 b"\xc4\x01", "x" * 70000]
        for ser in ("msgpack", "pickle"):
            for addr in [None] + self.addresses():
                with self.subTest(ser=ser, addr=addr):
                    q = qpipe.Queue(address=addr, serializer=ser)
                    for v in vals:
                        q.put(v)
                        got = q.get(timeout=10)
                        want = v if ser == "pickle" else msgpack.unpackb(
                            msgpack.packb(v, use_bin_type=True),
                            raw=False, strict_map_key=False)
                        self.assertEqual(type(got), type(want))
                        self.assertEqual(got, want)
                    q.put(b"late")
                    q.close()
                    self.assertRaises(ValueError, q.get, False)
                    self.assertRaises(ValueError, q.put, b"x")
                    if addr:
                        qpipe.unlink(addr)

    def test_pipe_ends(self):
        r, w = qpipe.Pipe(duplex=False)
        self.assertRaises(OSError, r.send_bytes, b"x")
        self.assertRaises(OSError, w.recv_bytes)
        w.send_bytes(b"ab")
        self.assertEqual(r.recv_bytes(), b"ab")
        w.close()
        self.assertRaises(OSError, w.send_bytes, b"x")
        self.assertRaises(EOFError, r.recv_bytes)
        r.close()
        self.assertRaises(OSError, r.recv_bytes)


class TestPipeSizes(unittest.TestCase):
    """recv_bytes and recv_bytes_into at the sizes where the receive
    buffer changes hands: empty, around its first 64 KiB, 1 MiB, and past
    the 16 MiB it grows to; maxlength and BufferTooShort as before."""

    def test_sizes(self):
        import threading
        from multiprocessing import BufferTooShort
        sizes = [0, 1, 65535, 65536, 65537, 1 << 20, 17 << 20, 3]
        msgs = [bytes((i * 7 + n) % 251 for i in range(min(n, 4096)))
                * (n // 4096 + 1) for n in sizes]
        msgs = [m[:n] for m, n in zip(msgs, sizes)]
        r, w = qpipe.Pipe(duplex=False)
        def send():
            for m in msgs + [b"x" * 100] * 2:
                w.send_bytes(m)
        t = threading.Thread(target=send)
        t.start()
        for m in msgs:
            self.assertEqual(r.recv_bytes(), m)
        buf = bytearray(120)
        self.assertEqual(r.recv_bytes_into(buf, 20), 100)
        self.assertEqual(bytes(buf[20:]), b"x" * 100)
        with self.assertRaises(BufferTooShort) as cm:
            r.recv_bytes_into(bytearray(99))
        self.assertEqual(cm.exception.args[0], b"x" * 100)
        t.join(30)
        w.send_bytes(b"y" * 10)
        self.assertRaises(OSError, r.recv_bytes, 9)


class TestInterop(unittest.TestCase):
    """Python and the qpipe CLI (C, qp_queue_get_obj) read each other's
    values."""
    values = [None, True, 7, -3, 1.5, "hé", [1, "a", None],
              {"k": [1, 2], "n": None}]

    def cli(self, *args, **kw):
        return subprocess.run([os.path.join(qpt_util.BIN, "qpipe")]
                              + list(args), capture_output=True, check=True,
                              timeout=60, **kw)

    def test_python_to_cli_and_back(self):
        for addr in ("shm://" + uniq(),
                     qpt_util.server().url + "/" + uniq()):
            with self.subTest(addr=addr):
                q = qpipe.Queue(address=addr)
                for v in self.values:
                    q.put(v)
                out = self.cli("get", "--json", "-n", str(len(self.values)),
                               addr)
                lines = out.stdout.decode().splitlines()
                self.assertEqual([json.loads(l) for l in lines], self.values)
                for v in self.values:
                    self.cli("put", "--json", addr,
                             input=json.dumps(v).encode())
                self.assertEqual([q.get(timeout=10) for v in self.values],
                                 self.values)
                self.cli("put", addr, "raw bytes")
                self.assertEqual(q.get(timeout=10), b"raw bytes")
                q.close()
                qpipe.unlink(addr)


class TestExamples(unittest.TestCase):
    """examples/python: the seed programs, with an anonymous queue, a
    shm:// one and one through qpiped."""

    def run_example(self, name, *args):
        path = os.path.join(qpt_util.TREE, "examples", "python", name)
        out = subprocess.run([PY, path] + list(args), capture_output=True,
                             env=qpt_util.python_env(), timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        return out.stdout.decode()

    def test_queue_hello(self):
        shm = "shm://" + uniq()
        for args in ((), (shm,),
                     (qpt_util.server().url + "/" + uniq(),)):
            with self.subTest(args=args):
                self.assertEqual(self.run_example("queue_hello.py", *args),
                                 "[42, None, 'hello']\n")
        qpipe.unlink(shm)

    def test_pipe_hello(self):
        for args in ((), (qpt_util.server().url + "/" + uniq(),)):
            with self.subTest(args=args):
                self.assertEqual(self.run_example("pipe_hello.py", *args),
                                 "[42, None, 'hello']\n")


class TestInstall(unittest.TestCase):
    """pip install --no-build-isolation into a venv with the system's site
    packages: no package index is reached."""

    def test_pip_install(self):
        if subprocess.run([PY, "-c", "import ensurepip, setuptools, wheel"],
                          capture_output=True).returncode != 0:
            self.skipTest("python3-venv, python3-setuptools or "
                          "python3-wheel is missing")
        d = tempfile.mkdtemp(prefix="qpt-venv-")
        self.addCleanup(shutil.rmtree, d, True)
        src = os.path.join(d, "src")
        shutil.copytree(os.path.join(qpt_util.TREE, "python"), src,
                        ignore=shutil.ignore_patterns(
                            "tests", "build", "*.egg-info", "__pycache__"))
        venv = os.path.join(d, "venv")
        subprocess.run([PY, "-m", "venv", "--system-site-packages", venv],
                       check=True, capture_output=True, timeout=300)
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env["QPIPE_BUILD_DIR"] = qpt_util.BUILD
        env["QPIPE_INCLUDE_DIRS"] = os.pathsep.join([
            os.path.join(qpt_util.TREE, "lib", "include"),
            os.path.join(qpt_util.BUILD, "include")])
        env["PIP_NO_INDEX"] = "1"
        env["PIP_FIND_LINKS"] = ""
        out = subprocess.run(
            [os.path.join(venv, "bin", "pip"), "install",
             "--no-build-isolation", src], capture_output=True, env=env,
            timeout=600)
        self.assertEqual(out.returncode, 0, out.stdout.decode()
                         + out.stderr.decode())
        out = subprocess.run(
            [os.path.join(venv, "bin", "python"), "-c",
             "import qpipe; q = qpipe.Queue(); q.put([1, 'x']); "
             "print(qpipe.__file__); print(q.get())"],
            capture_output=True, env=env, cwd=d, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        lines = out.stdout.decode().splitlines()
        self.assertTrue(lines[0].startswith(venv), lines[0])
        self.assertEqual(lines[1], "[1, 'x']")


if __name__ == "__main__":
    unittest.main()
