#!/usr/bin/env bash
# Exactly one result per task (qp_queue_complete) across kill -9 of
# workers and of qpiped. N tasks "tID" go into a tasks queue; W workers
# (cpl_worker) store "rID" for each on a results queue. Meanwhile a random
# worker is killed with SIGKILL every 20-80 ms and started again, KILLS
# times, the workers widening the moment between a result and its
# confirmation (GAP_MS) so that kills land there too; on tcp:// qpiped is
# also killed with SIGKILL SERVER_KILLS times in the middle of completions
# and restarted on the same port. Then the workers finish the tasks and
# the checker counts, per task: lost (no result), duplicated (more than
# one), unexpected (a result that names no task); all three must be 0,
# and the tasks queue must be empty with nothing leased.
#
# Cases: shm:// (this host's shared memory, no server), tcp:// (queues
# of one qpiped, in its shared memory) and tcp-durable (durable queues of
# one qpiped: the result is tagged with the task's id in its log, and a
# task delivered again after a restart whose result is in is acked
# without a second one).
#
# QP_CPL_MODE=two runs the old worker (put, then task_done): the same run
# then finds duplicated results, which is what this test is there to
# catch. QP_CPL_TASKS, QP_CPL_KILLS, QP_CPL_SERVER_KILLS scale it.
set -uo pipefail
bin="${QP_BIN:?QP_BIN names the build bin directory}"
mode=${QP_CPL_MODE:-one}
N=${QP_CPL_TASKS:-400}
KILLS=${QP_CPL_KILLS:-40}
SERVER_KILLS=${QP_CPL_SERVER_KILLS:-3}
W=4
GAP_MS=4
tmp=$(mktemp -d)
export QPIPE_SHM_DIR="$tmp/shm"
mkdir -p "$QPIPE_SHM_DIR"
spid=
wpids=()
fails=0

cleanup() {
	for p in "${wpids[@]}"; do
		[ -n "$p" ] && kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	[ -n "$spid" ] && kill -9 "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

die() {
	echo "FAIL: $*" >&2
	tail -n 20 "$tmp"/*.log "$tmp"/w*.err 2>/dev/null >&2
	exit 1
}

# Starts qpiped on $1 (tcp://127.0.0.1:PORT); its URL lands in $url.
server_start() {
	rm -f "$tmp/port"
	"$bin/qpiped" --listen "$1" --port-file "$tmp/port" \
		--data-dir "$tmp/data" 2>>"$tmp/server.log" &
	spid=$!
	for _ in $(seq 400); do
		[ -s "$tmp/port" ] && { url=$(cat "$tmp/port"); return 0; }
		kill -0 "$spid" 2>/dev/null || break
		sleep 0.025
	done
	die "qpiped did not start on $1"
}

worker_start() { # slot
	"$bin/cpl_worker" "$mode" "$GAP_MS" 1500 "$taddr" "$raddr" \
		2>>"$tmp/w$1.err" &
	wpids[$1]=$!
}

# Waits (bounded) until every task is completed: none ready, none leased.
drained() {
	local st
	for _ in $(seq 300); do
		st=$("$bin/qpipe" stat "$taddr" 2>/dev/null) || { sleep 0.1; continue; }
		case "$st" in
		*'"items": 0,'*'"leased": 0,'*) return 0 ;;
		esac
		sleep 0.1
	done
	return 1
}

run_case() { # name tasks-address results-address [create flags]
	local name=$1 kills=0 skills=0 t0
	taddr=$2
	raddr=$3
	shift 3
	t0=$(date +%s%3N)
	if [ $# -gt 0 ]; then
		"$bin/qpipe" create "$@" "$taddr" || die "$name: create"
		"$bin/qpipe" create "$@" "$raddr" || die "$name: create"
	fi
	seq 1 "$N" | sed 's/^/t/' | "$bin/qpipe" put --lines "$taddr" ||
		die "$name: cannot put the tasks"
	"$bin/qpipe" create "$raddr" >/dev/null 2>&1 || true
	for i in $(seq 0 $((W - 1))); do
		worker_start "$i"
	done
	local every=$((KILLS / (SERVER_KILLS + 1) + 1))
	while [ "$kills" -lt "$KILLS" ]; do
		sleep "0.0$((20 + RANDOM % 60))"
		local i=$((RANDOM % W))
		kill -9 "${wpids[$i]}" 2>/dev/null
		wait "${wpids[$i]}" 2>/dev/null
		worker_start "$i"
		kills=$((kills + 1))
		if [ -n "$spid" ] && [ "$skills" -lt "$SERVER_KILLS" ] &&
			[ $((kills % every)) -eq 0 ]; then
			kill -9 "$spid"
			wait "$spid" 2>/dev/null
			skills=$((skills + 1))
			server_start "$url"
		fi
	done
	drained || die "$name: tasks left: $("$bin/qpipe" stat "$taddr")"
	for i in $(seq 0 $((W - 1))); do
		kill -9 "${wpids[$i]}" 2>/dev/null
		wait "${wpids[$i]}" 2>/dev/null
		wpids[$i]=
	done
	"$bin/qpipe" get -n $((N * 2)) --timeout 0.5 "$raddr" >"$tmp/results" ||
		die "$name: no results"
	seq 1 "$N" | sed 's/^/r/' | sort >"$tmp/want"
	sort "$tmp/results" >"$tmp/got"
	local lost dup unexp
	lost=$(sort -u "$tmp/got" | comm -23 "$tmp/want" - | wc -l)
	dup=$(uniq -d "$tmp/got" | wc -l)
	unexp=$(sort -u "$tmp/got" | comm -13 "$tmp/want" - | wc -l)
	local dt=$(($(date +%s%3N) - t0))
	echo "$name ($mode): $N tasks, $kills worker kills, $skills server" \
		"kills, ${dt} ms: lost $lost, duplicated $dup, unexpected $unexp"
	if [ "$lost" -ne 0 ] || [ "$dup" -ne 0 ] || [ "$unexp" -ne 0 ]; then
		echo "FAIL $name: lost $lost, duplicated $dup, unexpected $unexp"
		fails=$((fails + 1))
	else
		echo "ok   $name"
	fi
}

q="cplk$$"
run_case "shm" "shm://${q}t" "shm://${q}r"

server_start "tcp://127.0.0.1:0"
run_case "tcp" "$url/${q}tt" "$url/${q}tr"
run_case "tcp-durable" "$url/${q}dt" "$url/${q}dr" --durable --fsync never

[ "$fails" -eq 0 ]
