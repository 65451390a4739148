#!/usr/bin/env bash
# qpipe-collector - the worker-pool demo's results collector
# (docker/compose.yaml, docker/demo.sh). Gets the expected results from
# PREFIX.expected, then every result from PREFIX.results ("ID SHA256
# WORKER"), checks each against the expectation and that every task has
# exactly one result (lost, duplicated, unexpected: all 0; a duplicate is
# a failure, never forgiven), prints a summary, puts its verdict ("ok" or
# "failed") on PREFIX.done for the producer, and exits 0 only if all
# checks pass. Environment: as qpipe-producer's.
set -euo pipefail
export LC_ALL=C
S=${QPIPE_SERVER:-tcp://qpiped:7450}
P=${QPIPE_PREFIX:-demo}
WAIT=${QPIPE_WAIT:-300}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() { echo "collector: $*"; }
now_ms() { date +%s%3N; }

for i in $(seq 60); do
	qpipe size "$S/$P.results" >/dev/null 2>"$tmp/err" && break
	[ "$i" -lt 60 ] || {
		say "cannot reach $S: $(cat "$tmp/err")" >&2
		exit 2
	}
	sleep 0.5
done
qpipe get --timeout "$WAIT" "$S/$P.expected" >"$tmp/expected" || {
	say "no expected results on $S/$P.expected after $WAIT s" >&2
	exit 1
}
N=$(wc -l <"$tmp/expected")
say "expecting $N results on $S/$P.results"
t0=$(now_ms)
deadline=$((t0 + WAIT * 1000))
: >"$tmp/results"
got=0
while [ "$got" -lt "$N" ] && [ "$(now_ms)" -lt "$deadline" ]; do
	rc=0
	qpipe get -n $((N - got)) --timeout 2 "$S/$P.results" \
		>>"$tmp/results" 2>"$tmp/err" || rc=$?
	[ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || {
		say "get: $(cat "$tmp/err")" >&2
		sleep 1
	}
	got=$(wc -l <"$tmp/results")
	say "$got/$N results"
done
t1=$(now_ms)
# Anything more within a second would be a task done twice.
qpipe get -n 100000 --timeout 1 "$S/$P.results" >>"$tmp/results" 2>/dev/null || true

sort -k1,1 "$tmp/expected" >"$tmp/exp"
awk '{ print $1, $2 }' "$tmp/results" | sort -k1,1 >"$tmp/got"
total=$(wc -l <"$tmp/got")
distinct=$(cut -d' ' -f1 "$tmp/got" | sort -u | wc -l)
matched=$(join -j1 "$tmp/exp" "$tmp/got" | awk '$2 == $3' | wc -l)
wrong=$(join -j1 "$tmp/exp" "$tmp/got" | awk '$2 != $3' | wc -l)
ms=$((t1 - t0))
[ "$ms" -gt 0 ] || ms=1
say "results: $total for $N tasks; $matched match sha256sum, $wrong differ, $((total - distinct)) duplicates, $((N - distinct)) missing"
# Jepsen's total-queue counts, each required to be 0: tasks without a
# result, tasks with more than one, results that name no task or carry a
# wrong hash. No duplicate is forgiven: the workers store each result and
# confirm its task in one step (qp_queue_complete).
lost=$(cut -d' ' -f1 "$tmp/got" | sort -u | join -v1 -j1 "$tmp/exp" - | wc -l)
dup=$(cut -d' ' -f1 "$tmp/got" | uniq -d | wc -l)
unexpected=$(( $(cut -d' ' -f1 "$tmp/got" | join -v1 -j1 - "$tmp/exp" | wc -l) + wrong ))
say "lost $lost, duplicated $dup, unexpected $unexpected"
say "workers: $(awk '{ print $3 }' "$tmp/results" | sort -u | wc -l)"
awk '{ n[$3]++ } END { for (w in n) printf "collector:   %-24s %5d tasks\n", w, n[w] }' \
	"$tmp/results" | sort
say "throughput: $((total * 1000 / ms)) tasks/s over $((ms / 1000)).$((ms % 1000 / 100)) s"
if [ "$lost" -eq 0 ] && [ "$dup" -eq 0 ] && [ "$unexpected" -eq 0 ] &&
	[ "$total" -eq "$N" ] && [ "$matched" -eq "$N" ]; then
	qpipe put "$S/$P.done" ok
	say "ok: every result checked, none lost, none twice"
	exit 0
fi
qpipe put "$S/$P.done" failed || true
say "FAILED: the results do not check out" >&2
exit 1
