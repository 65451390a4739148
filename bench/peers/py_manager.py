"""Python's multiprocessing.managers.BaseManager serving a queue over
loopback TCP: the peer of qpipe's remote queue (one client, one item per
request, as a user of a manager-served queue would put and get).

The manager's server runs in its own process (manager.start(), listening on
127.0.0.1 port 0); one client process connects, puts N items of SIZE bytes
one by one, then gets them back one by one. Prints one JSON line: puts/s,
gets/s, and the round-trip p50/p99 of a put.

Run by bench/run with /usr/bin/python3:
    py_manager.py --size BYTES --count N
"""

import argparse
import json
import queue
import resource
import sys
import time

from peerlib import pin
from multiprocessing.managers import BaseManager

SERVED = queue.Queue()


def served_queue():
    return SERVED


class QueueManager(BaseManager):
    pass


QueueManager.register("get_queue", callable=served_queue)


def percentile(sorted_v, p):
    rank = max(1, min(len(sorted_v), int(p / 100.0 * len(sorted_v) + 0.999999)))
    return sorted_v[rank - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--count", type=int, default=10000)
    a = ap.parse_args()

    server = QueueManager(address=("127.0.0.1", 0), authkey=b"qpipe-bench")
    server.start(initializer=pin, initargs=(0,))
    pin(1)
    try:
        client = QueueManager(address=server.address, authkey=b"qpipe-bench")
        client.connect()
        q = client.get_queue()
        item = b"\xa5" * a.size
        clock = time.perf_counter_ns
        rtt = []
        t0 = time.monotonic()
        for _ in range(a.count):
            ts = clock()
            q.put(item)
            rtt.append(clock() - ts)
        t1 = time.monotonic()
        for _ in range(a.count):
            if len(q.get()) != a.size:
                print(json.dumps({"impl": "python-manager",
                                  "error": "an item of the wrong size"}))
                return 1
        t2 = time.monotonic()
        if not q.empty():
            print(json.dumps({"impl": "python-manager",
                              "error": "items left over"}))
            return 1
    finally:
        server.shutdown()
    rtt.sort()
    print(json.dumps({
        "impl": "python-manager", "size": a.size, "items": a.count,
        "put_seconds": t1 - t0, "puts_per_s": a.count / (t1 - t0),
        "get_seconds": t2 - t1, "gets_per_s": a.count / (t2 - t1),
        "put_p50_us": percentile(rtt, 50) / 1e3,
        "put_p99_us": percentile(rtt, 99) / 1e3,
        "children_maxrss_kb":
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
