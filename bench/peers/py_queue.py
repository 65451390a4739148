"""Python's multiprocessing.Queue, the peer of qpipe's queue benchmark.

Same process structure as bench_queue: P producer processes each put N
bytes objects of SIZE bytes, C consumer processes get them, timed from the
first put to the last get (time.monotonic is CLOCK_MONOTONIC, the clock the
C programs use). Once every producer has exited (which in Python means its
feeder thread has written all its items), the parent puts one None per
consumer to stop it. Prints one JSON line, the same fields as bench_queue.

Run by bench/run with /usr/bin/python3:
    py_queue.py --producers P --consumers C --size BYTES --count N
"""

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time

from peerlib import consumer, producer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    done = ctx.Queue()
    first_put = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=producer,
                         args=(q, first_put, a.size, a.count))
             for _ in range(a.producers)]
    procs += [ctx.Process(target=consumer, args=(q, done, a.size))
              for _ in range(a.consumers)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + a.timeout

    def fail(msg):
        for p in procs:
            if p.is_alive():
                p.kill()
        print(json.dumps({"impl": "python", "error": msg}))
        return 1

    for p in procs[:a.producers]:
        p.join(max(0.01, deadline - time.monotonic()))
        if p.exitcode != 0:
            return fail("a producer exited with %s" % p.exitcode)
    for _ in range(a.consumers):
        q.put(None)
    ends = []
    try:
        for _ in range(a.consumers):
            ends.append(done.get(timeout=max(0.01,
                                             deadline - time.monotonic())))
    except Exception:
        return fail("consumers did not finish within %.0f s" % a.timeout)
    if any(n < 0 for _, n in ends):
        return fail("a consumer got an item of the wrong size")
    for p in procs:
        p.join(max(0.01, deadline - time.monotonic()))
        if p.exitcode != 0:
            return fail("a worker exited with %s" % p.exitcode)
    items = sum(n for _, n in ends)
    if items != a.count * a.producers:
        return fail("%d items arrived of %d put" %
                    (items, a.count * a.producers))
    secs = max(t for t, _ in ends) - first_put.value
    print(json.dumps({
        "impl": "python", "producers": a.producers,
        "consumers": a.consumers, "size": a.size, "items": items,
        "seconds": secs, "items_per_s": items / secs,
        "bytes_per_s": items * a.size / secs,
        "children_maxrss_kb":
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
