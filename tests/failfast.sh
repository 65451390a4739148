# tests/failfast.sh - the prologue of the black-box scripts that stop at
# their first failure (sourced; tests/lib.sh is the other style, which
# records every check and sums up at the end). Sets $bin (the build's bin
# directory, from QP_BIN), $tmp (a fresh directory, kept with QP_KEEP=1)
# and $pids (append every process the script starts: each is killed and
# reaped by its PID on exit, stopped ones included). A script that has
# more to remove on exit defines cleanup_more before it exits.
set -uo pipefail
bin="${QP_BIN:?QP_BIN names the build bin directory}"
tmp=$(mktemp -d)
pids=()

cleanup() {
	for p in "${pids[@]}"; do
		kill -KILL "$p" 2>/dev/null
		kill -CONT "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	if declare -F cleanup_more >/dev/null; then
		cleanup_more
	fi
	[ -n "${QP_KEEP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

# fail MSG: says MSG and the tail of every $tmp/*.log and *.err, exits 1.
fail() {
	echo "FAIL: $*" >&2
	for f in "$tmp"/*.log "$tmp"/*.err; do
		[ -s "$f" ] && tail -n 20 "$f" | sed "s|^|$(basename "$f"): |" >&2
	done
	exit 1
}

# ok MSG: says a check passed.
ok() { echo "ok   $*"; }

# await_port PID FILE [VAR]: until qpiped PID has written its --port-file
# FILE (5 s; fails if it exits first); sets VAR (default url) to the first
# URL in it.
await_port() {
	for _ in $(seq 200); do
		[ -s "$2" ] && break
		kill -0 "$1" 2>/dev/null || fail "qpiped exited at start"
		sleep 0.025
	done
	[ -s "$2" ] || fail "no port file"
	printf -v "${3:-url}" '%s' "$(head -n 1 "$2")"
}
