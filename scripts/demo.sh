#!/usr/bin/env bash
# demo.sh - qpipe's main job, end to end, on this machine: the seed Queue and
# Pipe programs, then a pool of worker processes pulling tasks from one
# queue and pushing results to another, every result checked. Run it with
# `make demo` (which builds first). Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${QP_BIN:-build/bin}
QPIPE=$BIN/qpipe
N=${QP_DEMO_TASKS:-2000}
WORKERS=${QP_DEMO_WORKERS:-4}
run="demo$$"
TASKS="shm://$run.tasks"
RESULTS="shm://$run.results"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	"$QPIPE" rm "$TASKS" 2>/dev/null || true
	"$QPIPE" rm "$RESULTS" 2>/dev/null || true
}
trap cleanup EXIT

echo "== 1. Queue: one child puts, another gets (Python's classic example)"
"$BIN/queue_hello"
echo
echo "== 2. Pipe: a duplex pipe between parent and child, then end of file"
"$BIN/pipe_hello"
echo
echo "== 3. A worker pool on this host: $N tasks, $WORKERS workers"
"$QPIPE" create "$TASKS"
"$QPIPE" create "$RESULTS"
t0=$(date +%s%N)
seq 1 "$N" | "$QPIPE" put --lines "$TASKS"
for w in $(seq 1 "$WORKERS"); do
	(
		done_n=0
		while n=$("$QPIPE" get --timeout 1 "$TASKS" 2>/dev/null); do
			"$QPIPE" put "$RESULTS" "$n $((n * n)) w$w"
			done_n=$((done_n + 1))
		done
		echo "   worker $w: $done_n tasks"
	) &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
t1=$(date +%s%N)
"$QPIPE" get -n "$N" --nowait "$RESULTS" >"/tmp/$run.out"
got=$(wc -l <"/tmp/$run.out")
bad=$(awk '$2 != $1 * $1' "/tmp/$run.out" | wc -l)
uniq=$(cut -d' ' -f1 "/tmp/$run.out" | sort -u | wc -l)
rm -f "/tmp/$run.out"
ms=$(((t1 - t0) / 1000000))
echo "   results: $got of $N, $uniq distinct, $bad wrong, ${ms} ms"
if [ "$got" -ne "$N" ] || [ "$uniq" -ne "$N" ] || [ "$bad" -ne 0 ]; then
	echo "demo: FAILED: results do not check out" >&2
	exit 1
fi
echo
echo "demo: ok: every result checked"
