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
import multiprocessing as mp
import sys

from peerlib import run_queue


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()

    ctx = mp.get_context("fork")
    return run_queue(ctx, ctx.Queue(), a, "python", True)


if __name__ == "__main__":
    sys.exit(main())
