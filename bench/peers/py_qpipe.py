"""qpipe's Python package against the Python peers, for bench/run python.

Each mode runs the same program with one implementation or the other, so
the two sides differ only in the objects used:

  queue   --impl qpipe|mp   P producer processes put N bytes items of SIZE
          bytes, C consumer processes get them (fork start method; qpipe:
          an anonymous qpipe.Queue, mp: multiprocessing.Queue). Timed from
          the first put to the last get, as bench/peers/py_queue.py.
  pipe    --impl qpipe|mp   a child send_bytes N messages of SIZE bytes
          one way, the parent recv_bytes them; timed from the first send to
          the last receive.
  remote  --impl qpipe|redis   one client puts N items of SIZE bytes one
          by one, then gets them back one by one: qpipe.Queue at --url
          (through qpiped), or redis-py LPUSH then BRPOP on --port (as
          bench/peers/py_manager.py does for BaseManager).

Prints one JSON line (items_per_s, bytes_per_s, msgs_per_s, puts_per_s,
gets_per_s, seconds, as the mode has them). Needs PYTHONPATH to hold the
qpipe package (bench/run sets it to python/ and build/python).
"""

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time

import peerlib


def _queue_impl(impl, ctx):
    if impl == "qpipe":
        import qpipe
        return qpipe.Queue()
    return ctx.Queue()


def run_queue(a):
    ctx = mp.get_context("fork")
    return peerlib.run_queue(ctx, _queue_impl(a.impl, ctx), a, a.impl,
                             False)


def sender(w, first, size, count):
    item = b"\xa5" * size
    first.value = time.monotonic()
    send = w.send_bytes
    for _ in range(count):
        send(item)
    w.close()


def run_pipe(a):
    ctx = mp.get_context("fork")
    if a.impl == "qpipe":
        import qpipe
        r, w = qpipe.Pipe(duplex=False)
    else:
        r, w = ctx.Pipe(duplex=False)
    first = ctx.Value("d", 0.0)
    p = ctx.Process(target=sender, args=(w, first, a.size, a.count))
    p.start()
    recv = r.recv_bytes
    for _ in range(a.count):
        if len(recv()) != a.size:
            p.kill()
            print(json.dumps({"impl": a.impl, "error": "wrong size"}))
            return 1
    t1 = time.monotonic()
    p.join(a.timeout)
    secs = t1 - first.value
    print(json.dumps({
        "impl": a.impl, "size": a.size, "msgs": a.count, "seconds": secs,
        "msgs_per_s": a.count / secs, "bytes_per_s": a.count * a.size / secs,
        "children_maxrss_kb":
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
    return 0


def run_remote(a):
    item = b"\xa5" * a.size
    if a.impl == "qpipe":
        import qpipe
        q = qpipe.Queue(address=a.url)
        put, get = q.put, q.get
    else:
        import redis
        r = redis.Redis(host="127.0.0.1", port=a.port)
        key = "qpipe-bench-py"
        r.delete(key)

        def put(x):
            r.lpush(key, x)

        def get():
            return r.brpop(key, 0)[1]
    t0 = time.monotonic()
    for _ in range(a.count):
        put(item)
    t1 = time.monotonic()
    for _ in range(a.count):
        if len(get()) != a.size:
            print(json.dumps({"impl": a.impl, "error": "wrong size"}))
            return 1
    t2 = time.monotonic()
    print(json.dumps({
        "impl": a.impl, "size": a.size, "items": a.count,
        "put_seconds": t1 - t0, "get_seconds": t2 - t1,
        "puts_per_s": a.count / (t1 - t0), "gets_per_s": a.count / (t2 - t1),
        "items_per_s": 2 * a.count / (t2 - t0)}))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("queue", "pipe", "remote"))
    ap.add_argument("--impl", required=True,
                    choices=("qpipe", "mp", "redis"))
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--url", help="remote qpipe: the queue's address")
    ap.add_argument("--port", type=int, help="remote redis: its port")
    a = ap.parse_args()
    try:
        return {"queue": run_queue, "pipe": run_pipe,
                "remote": run_remote}[a.mode](a)
    except ImportError as e:
        print(json.dumps({"impl": a.impl, "error": "cannot import: %s" % e}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
