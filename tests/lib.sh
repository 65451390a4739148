# tests/lib.sh - helpers for the black-box script tests (sourced).
# Each test runs the real binaries from $QP_BIN and compares what a user
# would see. Every process a test starts is recorded and stopped by PID.
set -euo pipefail

QP_BIN=${QP_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/bin}
QPIPE="$QP_BIN/qpipe"
QPIPED="$QP_BIN/qpiped"
T=$(mktemp -d /tmp/qpipe-test.XXXXXX)
QP_PIDS=()
QP_FAILS=0
QP_PASSES=0
# A prefix that makes this run's queue names unique.
QN="t$$x${RANDOM}"

qp_cleanup() {
	local p
	for p in "${QP_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in "${QP_PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -f /dev/shm/qpipe."$QN"* 2>/dev/null || true
	rm -rf "$T"
}
trap qp_cleanup EXIT

# ok NAME: record a pass. bad NAME MSG: record a failure.
ok() {
	QP_PASSES=$((QP_PASSES + 1))
	printf 'ok   %s\n' "$1"
}
bad() {
	QP_FAILS=$((QP_FAILS + 1))
	printf 'FAIL %s: %s\n' "$1" "$2"
}

# expect_rc NAME WANT CMD...: runs CMD, checks its exit code.
expect_rc() {
	local name=$1 want=$2 rc=0
	shift 2
	"$@" >"$T/out" 2>"$T/err" || rc=$?
	if [ "$rc" -eq "$want" ]; then
		ok "$name"
	else
		bad "$name" "exit $rc, wanted $want; stderr: $(head -c 300 "$T/err")"
	fi
}

# expect_eq NAME GOT WANT
expect_eq() {
	if [ "$2" == "$3" ]; then
		ok "$1"
	else
		bad "$1" "got '$(printf '%s' "$2" | head -c 200)', wanted '$(printf '%s' "$3" | head -c 200)'"
	fi
}

# Milliseconds since the epoch.
now_ms() { date +%s%3N; }

# finish: prints the summary line and exits non-zero on any failure.
finish() {
	echo "$QP_PASSES passed, $QP_FAILS failed"
	[ "$QP_FAILS" -eq 0 ]
}
