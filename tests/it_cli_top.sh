#!/usr/bin/env bash
# it_cli_top.sh - `qpipe top`: against a running qpiped's --metrics
# listener, a bounded number of refreshes (-n), one a second, each with
# the server's line and one line per queue; the figures follow puts and
# gets, the rates come from the second refresh on; a wrong address is a
# clear error.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"

Q="$QN-top"
qp_start_server --metrics tcp://127.0.0.1:0
QP_METRICS=$(grep '^http://' "$T/qpiped.port" | head -1)
MADDR="tcp://${QP_METRICS#http://}" # as --metrics was given

# row FILE N: the line of queue $Q in refresh N (1-based) of top's output.
row() {
	awk -v q="$Q" -v n="$2" '/^QUEUE / { k++ } k == n && $1 == q' "$1"
}

"$QPIPE" put "$QP_URL/$Q" a b c
t0=$(now_ms)
expect_rc "top -n 3 exits 0" 0 "$QPIPE" top -n 3 "$MADDR"
t1=$(now_ms)
cp "$T/out" "$T/top1"
expect_eq "three refreshes" "$(grep -c '^QUEUE ' "$T/top1")" 3
expect_eq "each with the server's line" "$(grep -c '^qpiped .* connections ' "$T/top1")" 3
if [ $((t1 - t0)) -ge 1900 ] && [ $((t1 - t0)) -lt 10000 ]; then
	ok "one refresh a second ($((t1 - t0)) ms for 3)"
else
	bad "one refresh a second" "$((t1 - t0)) ms for 3"
fi
# QUEUE READY LEASED PUT/S GOT/S PUTS GETS DEAD
expect_eq "ready, leased, puts, gets" \
	"$(row "$T/top1" 1 | awk '{ print $2, $3, $6, $7 }')" "3 0 3 0"
expect_eq "no rate on the first refresh" \
	"$(row "$T/top1" 1 | awk '{ print $4, $5 }')" "- -"
expect_eq "rates from the second on" \
	"$(row "$T/top1" 2 | awk '{ print $4, $5 }')" "0.0 0.0"

"$QPIPE" get "$QP_URL/$Q" >/dev/null
"$QPIPE" put "shm://$Q" d e f
expect_rc "top -n 1 over http://" 0 "$QPIPE" top -n 1 "$QP_METRICS"
expect_eq "the figures follow puts and gets" \
	"$(row "$T/out" 1 | awk '{ print $2, $6, $7 }')" "5 6 1"

# A worker holding a task: leases and connections in the server's line
# (leases of every queue of the host: other processes may hold more).
"$QPIPE" worker "$QP_URL/$Q" --results "$QP_URL/$Q-out" -- sleep 30 \
	2>/dev/null &
WK=$!
QP_PIDS+=("$WK")
for i in $(seq 1 100); do
	"$QPIPE" stat "$QP_URL/$Q" 2>/dev/null | grep -q '"leased": 1' && break
	sleep 0.1
done
expect_rc "top while a task is leased" 0 "$QPIPE" top -n 1 "$MADDR"
expect_eq "the lease in the queue's line" "$(row "$T/out" 1 | awk '{ print $3 }')" 1
if grep -Eq 'connections [1-9][0-9]* .* leased [1-9][0-9]* ' "$T/out"; then
	ok "connections and leases in the server's line"
else
	bad "connections and leases in the server's line" "$(head -1 "$T/out")"
fi
for c in $(ps -o pid= --ppid "$WK" 2>/dev/null); do
	kill -KILL "$c" 2>/dev/null || true
done
kill -KILL "$WK" 2>/dev/null || true
wait "$WK" 2>/dev/null || true

expect_rc "top on the queue listener: not HTTP" 2 "$QPIPE" top -n 1 "$QP_URL"
if grep -q "metrics address" "$T/err"; then
	ok "says which address it wants"
else
	bad "says which address it wants" "$(cat "$T/err")"
fi
expect_rc "top of a queue address is a usage error" 1 \
	"$QPIPE" top -n 1 "shm://$Q"
finish
