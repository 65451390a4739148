"""What the Python peers share: CPU placement and the queue workers.

Imported by the peers in this directory (a script's own directory is on
sys.path, so `import peerlib` needs no set-up).
"""

import json
import os
import resource
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


def run_queue(ctx, q, a, impl, check_exits):
    """The queue case on q: a.producers producer and a.consumers consumer
    processes (ctx, a fork context), a.count items of a.size bytes each;
    timed from the first put to the last get. Prints one JSON line (impl
    names the side); check_exits: a worker that exits non-zero at the end
    fails the run. Returns the exit status."""
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
        print(json.dumps({"impl": impl, "error": msg}))
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
        if check_exits and p.exitcode != 0:
            return fail("a worker exited with %s" % p.exitcode)
    items = sum(n for _, n in ends)
    if items != a.count * a.producers:
        return fail("%d items arrived of %d put" %
                    (items, a.count * a.producers))
    secs = max(t for t, _ in ends) - first_put.value
    print(json.dumps({
        "impl": impl, "producers": a.producers, "consumers": a.consumers,
        "size": a.size, "items": items, "seconds": secs,
        "items_per_s": items / secs, "bytes_per_s": items * a.size / secs,
        "children_maxrss_kb":
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
    return 0
