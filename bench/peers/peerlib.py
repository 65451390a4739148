"""What the Python peers share: CPU placement and the queue workers.

Imported by the peers in this directory (a script's own directory is on
sys.path, so `import peerlib` needs no set-up).
"""

import os
import time


def pin(role):
    """QPIPE_BENCH_CPUS="A,B" (set by bench/run): role 0, the serving
    side, on CPU A; role 1, the driving side, on CPU B ("A": both on A)."""
    spec = os.environ.get("QPIPE_BENCH_CPUS", "")
    try:
        cpus = [int(x) for x in spec.split(",")] if spec else []
    except ValueError:
        cpus = []
    if cpus:
        os.sched_setaffinity(0, {cpus[min(role, len(cpus) - 1)]})


def producer(q, first_put, size, count):
    """A producer process: count items of size bytes into q, its start
    time folded into first_put (the earliest of all producers)."""
    item = b"\xa5" * size
    t0 = time.monotonic()
    with first_put.get_lock():
        if first_put.value == 0 or t0 < first_put.value:
            first_put.value = t0
    put = q.put
    for _ in range(count):
        put(item)
    # With multiprocessing.Queue, exiting joins the feeder thread: every
    # item is in the pipe by then.


def consumer(q, done, size):
    """A consumer process: gets from q until None, then puts (time of the
    last get, items got) on done; (0.0, -1) on an item of the wrong size."""
    get = q.get
    items = 0
    while True:
        item = get()
        if item is None:
            break
        if len(item) != size:
            done.put((0.0, -1))
            return
        items += 1
    done.put((time.monotonic(), items))
