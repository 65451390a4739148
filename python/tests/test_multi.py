"""issue 16 in Python: get_any over shared-memory and remote queues (the
first listed first; a blocked get wakes on a put to any), Queue.fileno()
under select, partition_pick against the fixed table of keys that the C
library and the CLI check (tests/part_table.inc), and a queue over three
qpiped with put_key landing where partition_pick says."""
import os
import queue
import re
import select
import shutil
import tempfile
import threading
import time
import unittest

import qpipe
import qpt_util
from qpt_util import uniq


def tearDownModule():
    qpt_util.stop_server()


class TestPick(unittest.TestCase):
    def test_table(self):
        inc = os.path.join(qpt_util.TREE, "tests", "part_table.inc")
        rows = re.findall(r'^\s*\{"(.*)", (\d)\},$', open(inc).read(), re.M)
        self.assertGreaterEqual(len(rows), 10)
        servers = ["h1:7450", "h2:7450", "h3:7450"]
        for key, want in rows:
            self.assertEqual(qpipe.partition_pick(servers, key), int(want),
                             key)

    def test_servers_of_address(self):
        self.assertEqual(
            qpipe.partition_servers("tcp://h1:7450,h2:7450,h3:7450/jobs"),
            ["h1:7450", "h2:7450", "h3:7450"])


class TestGetAny(unittest.TestCase):
    def queues(self):
        return [qpipe.Queue(address="shm://" + uniq()),
                qpipe.Queue(address=qpt_util.server().url + "/" + uniq()),
                qpipe.Queue(address="shm://" + uniq())]

    def test_order(self):
        qs = self.queues()
        qs[2].put("c")
        qs[1].put("b")
        qs[0].put("a")
        got = [qpipe.get_any(qs, timeout=2) for _ in range(3)]
        self.assertEqual(got, [(0, "a"), (1, "b"), (2, "c")])
        with self.assertRaises(queue.Empty):
            qpipe.get_any(qs, timeout=0.2)
        for q in qs:
            q.close()

    def test_wakes_on_any(self):
        qs = self.queues()
        for j in range(3):
            t = threading.Timer(0.2, qs[j].put, ({"n": j},))
            t.start()
            t0 = time.monotonic()
            self.assertEqual(qpipe.get_any(qs, timeout=10), (j, {"n": j}))
            self.assertLess(time.monotonic() - t0, 3)
            t.join()
        for q in qs:
            q.close()

    def test_fileno_select(self):
        for addr in ("shm://" + uniq(),
                     qpt_util.server().url + "/" + uniq()):
            q = qpipe.Queue(address=addr)
            fd = q.fileno()
            self.assertEqual(select.select([fd], [], [], 0.1)[0], [])
            q.put(1)
            self.assertEqual(select.select([fd], [], [], 5)[0], [fd])
            self.assertEqual(q.get(timeout=1), 1)
            q.close()


class TestThreeServers(unittest.TestCase):
    def setUp(self):
        self.dirs, self.srv = [], []
        for _ in range(3):
            d = tempfile.mkdtemp(prefix="qpt-shm-", dir="/dev/shm")
            self.dirs.append(d)
            old = os.environ.get("QPIPE_SHM_DIR")
            os.environ["QPIPE_SHM_DIR"] = d
            try:
                self.srv.append(qpt_util.Qpiped())
            finally:
                if old is None:
                    del os.environ["QPIPE_SHM_DIR"]
                else:
                    os.environ["QPIPE_SHM_DIR"] = old

    def tearDown(self):
        for s in self.srv:
            s.stop()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def test_put_key_where_pick_says(self):
        name = uniq()
        hosts = [s.url[len("tcp://"):] for s in self.srv]
        q = qpipe.Queue(address="tcp://" + ",".join(hosts) + "/" + name)
        one = [qpipe.Queue(address=s.url + "/" + name) for s in self.srv]
        for k in range(9):
            key = "user:%d" % k
            want = qpipe.partition_pick(hosts, key)
            q.put_key(key, {"k": key})
            self.assertEqual(one[want].get(timeout=2), {"k": key})
        for i in range(6):
            q.put(i)
        self.assertEqual(q.qsize(), 6)
        self.assertEqual([p.qsize() for p in one], [2, 2, 2])
        self.assertEqual(sorted(q.get(timeout=2) for _ in range(6)),
                         list(range(6)))
        for x in [q] + one:
            x.close()


if __name__ == "__main__":
    unittest.main()
