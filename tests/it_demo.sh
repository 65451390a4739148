#!/usr/bin/env bash
# it_demo.sh - the README's main command as an integration test: runs
# scripts/demo.sh on the binaries already built ($QP_BIN), with fewer tasks,
# and checks that it exits 0 having killed a worker and checked every result.
set -uo pipefail
src="${QP_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
n=${QP_DEMO_TASKS:-300}
QP_DEMO_TASKS=$n timeout 120 "$src/scripts/demo.sh" --no-build >"$out" 2>&1
rc=$?
cat "$out"
fail() {
	echo "FAIL: $*"
	exit 1
}
[ "$rc" -eq 0 ] || fail "scripts/demo.sh exited $rc"
grep -q "with kill -9, on purpose, while it holds task" "$out" || fail "no worker was killed"
grep -q "0 differ, 0 duplicates, 0 missing" "$out" || fail "the results line is missing"
grep -q "^demo: ok: $n tasks, $n results" "$out" || fail "no ok line"
echo "ok: demo"
