#!/usr/bin/env bash
# it_cli_many.sh - qpipe get and qpipe worker over several queues: items
# come first listed first when several queues have some; a get blocked
# on several queues (shared memory, a server, both) wakes on a put to
# any of them; a worker takes tasks from two queues, the first listed
# first, and dead-letters a failing task to its own queue's NAME.dead.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cli_lib.sh"

qp_start_server
S=$QP_URL
L="shm://${QN}"
R="$S/${QN}"

# Order: put to the last queue first; get -n takes first listed first.
"$QPIPE" put "${L}c" c1 c2
"$QPIPE" put "${R}b" b1
"$QPIPE" put "${L}a" a1
expect_rc "get -n 4 over three queues" 0 "$QPIPE" get -n 4 --nowait \
	"${L}a" "${R}b" "${L}c"
expect_eq "first listed first" "$(tr '\n' , <"$T/out")" "a1,b1,c1,c2,"
expect_rc "all empty: exit 3" 3 "$QPIPE" get --nowait "${L}a" "${R}b"

# A get blocked on several queues wakes on a put to any one of them.
blocked() { # NAME ITEM PUTADDR ADDRS...
	local name=$1 item=$2 put=$3 t0 pid
	shift 3
	"$QPIPE" get --timeout 10 "$@" >"$T/blk" 2>"$T/blk.err" &
	pid=$!
	QP_PIDS+=("$pid")
	sleep 0.3
	if ! kill -0 "$pid" 2>/dev/null; then
		bad "$name" "the get ended before the put: $(cat "$T/blk.err")"
		return
	fi
	t0=$(now_ms)
	"$QPIPE" put "$put" "$item"
	wait "$pid" || true
	if [ "$(cat "$T/blk")" == "$item" ] && [ $(($(now_ms) - t0)) -lt 3000 ]; then
		ok "$name"
	else
		bad "$name" "got '$(cat "$T/blk")' after $(($(now_ms) - t0)) ms: $(cat "$T/blk.err")"
	fi
}
blocked "blocked on 2 local, put to the second" x2 "${L}w2" "${L}w1" "${L}w2"
blocked "blocked on 2 remote, put to the first" y1 "${R}v1" "${R}v1" "${R}v2"
blocked "blocked on mixed, put to the remote" z3 "${R}m3" "${L}m1" "${L}m2" "${R}m3"
blocked "blocked on mixed, put to the local" z1 "${L}m1" "${L}m1" "${L}m2" "${R}m3"

# A worker over two queues: the first listed first, each task confirmed
# on its own queue; a failing task goes to its own NAME.dead.
"$QPIPE" put "${R}lo" l1 l2
"$QPIPE" put "${L}hi" h1 h2 bad
expect_rc "worker over two queues" 0 "$QPIPE" worker "${L}hi" "${R}lo" \
	--results "${L}res" --idle-exit 0.5 --max-attempts 1 \
	-- sh -c 'read t; [ "$t" != bad ] && echo "done $t"'
expect_eq "worker: high queue first, in order" \
	"$("$QPIPE" get -n 10 --nowait "${L}res" | tr '\n' ,)" \
	"done h1,done h2,done l1,done l2,"
expect_eq "worker: the failing task in its queue's .dead" \
	"$("$QPIPE" get --nowait "${L}hi.dead")" "bad"
expect_eq "worker: nothing left" \
	"$("$QPIPE" size "${L}hi") $("$QPIPE" size "${R}lo")" "0 0"
expect_rc "worker: a bare word after the queue is the command" 1 \
	"$QPIPE" worker "${L}hi" --results "${L}res" cat

finish
