#!/usr/bin/python3
"""Prints bench/results/latest.json (or the file named) as the README's
Markdown table: one line per case and peer that qpipe has a figure for,
with the run's date, machine and commit above it, and one line naming the
cases left out. Usage: scripts/bench-table.py [RESULTS.json]"""
import json
import os
import sys


def si(v, unit):
    """A figure as bench/run prints it: SI prefixes for rates."""
    if v is None:
        return "n/a"
    if unit == "us":
        return f"{v:.1f}"
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{p}"
    return f"{v:.3g}"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        here, "..", "bench", "results", "latest.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        print(f"bench-table: {path}: {e}", file=sys.stderr)
        return 1
    env = data.get("environment", {})
    load = env.get("loadavg_at_start") or []
    print(
        f"`bench/run{' --quick' if env.get('quick') else ''} "
        f"{' '.join(env.get('suites', []))}`, {env.get('date', '?')}, "
        f"commit {env.get('commit', '?')}: {env.get('cpus', '?')} vCPUs "
        f"({env.get('host', '?')}, Linux {env.get('kernel', '?')}), load "
        f"average {load[0]:.1f} at the start"
        if load else "", end="")
    busy = load and load[0] > (env.get("cpus") or 1)
    print(" (a busy machine)" if busy else "", end="")
    print(". Ratio above 1: qpipe better.\n")
    print("| case | qpipe | peer | peer's | unit | ratio | target |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    skipped = []
    for r in data.get("records", []):
        if r.get("qpipe") is None:
            if r.get("name") not in skipped:
                skipped.append(r.get("name"))
            continue
        unit = r.get("unit", "")
        q = si(r.get("qpipe"), unit)
        if r.get("qpipe") is None and r.get("qpipe_note"):
            q = "n/a: " + r["qpipe_note"]
        ratio = r.get("ratio")
        ratio = f"{ratio:.2f}x" if ratio is not None else "n/a"
        target = r.get("target")
        met = r.get("target_met")
        tgt = "" if target is None else (
            f">= {target:.2f} ({'met' if met else 'not met'})")
        print(f"| {r.get('name', '?')} | {q} | {r.get('peer', '')} | "
              f"{si(r.get('peer_value'), unit)} | {unit} | {ratio} | {tgt} |")
    if skipped:
        notes = sorted({r.get("qpipe_note") or "no figure" for r in
                        data.get("records", []) if r.get("qpipe") is None})
        print(f"\nNo qpipe figure ({'; '.join(notes)}): "
              f"{', '.join(skipped)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
