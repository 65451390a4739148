"""Python's multiprocessing.Pipe, the peer of qpipe's pipe benchmark.

The same two modes as bench_pipe, with send_bytes/recv_bytes:
  oneway    the parent sends N messages of SIZE bytes through a
            Pipe(duplex=False) (an os.pipe), or with --duplex through a
            Pipe() (a socketpair, Python's default); a forked child
            receives them; timed from the first send to the last receive
            (time.monotonic is CLOCK_MONOTONIC, as in the C programs).
  pingpong  through a duplex Pipe the child echoes each message; each
            round trip is timed after a warm-up, until N round trips or
            SEC seconds; prints p50, p99 and mean.
Prints one JSON line with the fields bench_pipe prints.

Run by bench/run with /usr/bin/python3:
    py_pipe.py --mode oneway|pingpong [--duplex] --size BYTES --count N
               [--seconds SEC]
"""

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time

from peerlib import pin

WARMUP = 200


def receiver(conn, count, size, done):
    pin(0)
    recv = conn.recv_bytes
    for _ in range(count):
        if len(recv()) != size:
            done.send((0.0, -1))
            return
    done.send((time.monotonic(), count))


def echo(conn):
    pin(0)
    recv, send = conn.recv_bytes, conn.send_bytes
    while True:
        m = recv()
        if not m:
            return
        send(m)


def percentile(sorted_v, p):
    rank = max(1, min(len(sorted_v), int(p / 100.0 * len(sorted_v) + 0.999999)))
    return sorted_v[rank - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("oneway", "pingpong"), required=True)
    ap.add_argument("--duplex", action="store_true")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    ctx = mp.get_context("fork")
    pin(1)
    base = bytearray(a.size)

    if a.mode == "oneway":
        r, w = ctx.Pipe(duplex=a.duplex)
        done_r, done_w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=receiver, args=(r, a.count, a.size, done_w))
        p.start()
        msg = bytes(base)
        send = w.send_bytes
        t0 = time.monotonic()
        for _ in range(a.count):
            send(msg)
        if not done_r.poll(a.timeout):
            p.kill()
            print(json.dumps({"impl": "python", "error": "receiver did not "
                              "finish within %.0f s" % a.timeout}))
            return 1
        t1, got = done_r.recv()
        p.join(a.timeout)
        if got != a.count:
            print(json.dumps({"impl": "python",
                              "error": "a message of the wrong size"}))
            return 1
        secs = t1 - t0
        out = {"impl": "python", "mode": "oneway", "duplex": a.duplex,
               "size": a.size,
               "messages": got, "seconds": secs, "msgs_per_s": got / secs,
               "bytes_per_s": got * a.size / secs}
    else:
        c1, c2 = ctx.Pipe(duplex=True)
        p = ctx.Process(target=echo, args=(c2,))
        p.start()
        msg = bytes(base)
        send, recv = c1.send_bytes, c1.recv_bytes
        clock = time.perf_counter_ns
        rtt = []
        deadline = None
        t0 = 0.0
        for i in range(WARMUP + a.count):
            if i == WARMUP:
                t0 = time.monotonic()
                deadline = t0 + a.seconds
            ts = clock()
            send(msg)
            back = recv()
            te = clock()
            if len(back) != a.size:
                p.kill()
                print(json.dumps({"impl": "python", "error": "echo damaged"}))
                return 1
            if i >= WARMUP:
                rtt.append(te - ts)
                if time.monotonic() >= deadline:
                    break
        secs = time.monotonic() - t0
        c1.send_bytes(b"")
        p.join(a.timeout)
        rtt.sort()
        out = {"impl": "python", "mode": "pingpong", "size": a.size,
               "round_trips": len(rtt), "seconds": secs,
               "round_trips_per_s": len(rtt) / secs,
               "p50_us": percentile(rtt, 50) / 1e3,
               "p99_us": percentile(rtt, 99) / 1e3,
               "mean_us": sum(rtt) / len(rtt) / 1e3,
               "min_us": rtt[0] / 1e3, "max_us": rtt[-1] / 1e3}
    out["children_maxrss_kb"] = resource.getrusage(
        resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
