#!/usr/bin/env bash
# A local process stopped (SIGSTOP, as Ctrl-Z does) while it holds both
# locks of a queue the server hosts must delay only that queue's requests,
# each by at most its own timeout: `qpipe ping`, put and get on another
# queue answer within 1 s; a get --timeout 1 on the stopped queue exits 3
# and a put --timeout 1 on it exits 4, each within 1 s of its deadline;
# after SIGCONT the queue works again, and the lease of a worker whose
# connection dropped meanwhile is back in it; and SIGTERM stops the server within
# 1 s while the process is stopped again with requests parked on its
# queue. Every process is started here and stopped by its PID.
. "$(dirname "${BASH_SOURCE[0]}")/failfast.sh"
hot="hot$$x${RANDOM}"
other="other$$x${RANDOM}"
# Queues of its own: a ping lists every queue, and other runs' leftovers
# in /dev/shm would only make it slower.
export QPIPE_SHM_DIR="$tmp/shm"
mkdir -p "$QPIPE_SHM_DIR"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# timed LIMIT_MS EXPECT_RC WHAT CMD...: runs CMD (killed after 10 s);
# fails unless it exits EXPECT_RC within LIMIT_MS.
timed() {
	local limit=$1 want=$2 what=$3 t0 rc dt
	shift 3
	t0=$(now_ms)
	timeout -s KILL 10 "$@" >"$tmp/out" 2>>"$tmp/client.log"
	rc=$?
	dt=$(($(now_ms) - t0))
	[ "$rc" -eq "$want" ] || fail "$what: exit $rc after $dt ms, not $want"
	[ "$dt" -le "$limit" ] || fail "$what: took $dt ms (over $limit)"
	ok "$what: exit $rc in $dt ms"
}

# stopped PID: until the process is stopped (5 s).
stopped() {
	for _ in $(seq 200); do
		[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = T ] &&
			return 0
		sleep 0.025
	done
	fail "process $1 did not stop"
}

# hold: a local process takes both of hot's locks and stops; sets $holder.
hold() {
	"$bin/qps_tool" hold "$hot" >"$tmp/hold.out" 2>>"$tmp/hold.log" &
	holder=$!
	pids+=("$holder")
	stopped "$holder"
	grep -q held "$tmp/hold.out" || fail "the holder took no lock"
}

"$bin/qpiped" --listen tcp://127.0.0.1:0 --port-file "$tmp/port" --log-level debug \
	>"$tmp/server.out" 2>"$tmp/server.log" &
srv=$!
pids+=("$srv")
await_port "$srv" "$tmp/port"

# Both queues exist and are hosted; hot holds one item.
timed 3000 0 "put to hot" "$bin/qpipe" put --timeout 1 "$url/$hot" first
timed 3000 0 "put to other" "$bin/qpipe" put --timeout 1 "$url/$other" o1

hold
# Requests to hot, in the background, while the rest is checked.
t0=$(now_ms)
timeout -s KILL 10 "$bin/qpipe" get --timeout 1 "$url/$hot" \
	>"$tmp/hget.out" 2>"$tmp/hget.log" &
hget=$!
timeout -s KILL 10 "$bin/qpipe" put --timeout 1 "$url/$hot" x \
	>"$tmp/hput.out" 2>"$tmp/hput.log" &
hput=$!
sleep 0.2
timed 1000 0 "ping while hot is held" "$bin/qpipe" ping "$url"
timed 1000 0 "put to other while hot is held" \
	"$bin/qpipe" put --timeout 1 "$url/$other" o2
timed 1000 0 "get from other while hot is held" \
	"$bin/qpipe" get --timeout 1 "$url/$other"
[ "$(cat "$tmp/out")" = o1 ] || fail "get from other: '$(cat "$tmp/out")'"
wait "$hget"
rc=$?
dt=$(($(now_ms) - t0))
[ "$rc" -eq 3 ] || fail "get --timeout 1 on held hot: exit $rc, not 3"
wait "$hput"
rc=$?
dt2=$(($(now_ms) - t0))
[ "$rc" -eq 4 ] || fail "put --timeout 1 on held hot: exit $rc, not 4"
# (the deadline is 1 s; the slack is for a 2-core machine busy with
# sanitizer builds, where a CLI alone can take a second to start and stop)
[ "$dt" -le 3000 ] && [ "$dt2" -le 3000 ] ||
	fail "hot's requests ended after $dt and $dt2 ms (deadline 1000)"
ok "get and put --timeout 1 on held hot: exit 3 and 4 by $dt2 ms"
timed 1000 0 "qpipe size of other while hot is held" \
	"$bin/qpipe" size "$url/$other"

# Continued, the holder unlocks and exits: hot works again.
kill -CONT "$holder"
wait "$holder" || fail "the holder failed"
timed 2000 0 "get from hot after SIGCONT" \
	"$bin/qpipe" get --timeout 2 "$url/$hot"
[ "$(cat "$tmp/out")" = first ] || fail "hot gave '$(cat "$tmp/out")'"
timed 2000 0 "put to hot after SIGCONT" \
	"$bin/qpipe" put --timeout 1 "$url/$hot" again
timed 2000 0 "get from hot after SIGCONT" \
	"$bin/qpipe" get --timeout 1 "$url/$hot"
[ "$(cat "$tmp/out")" = again ] || fail "hot gave '$(cat "$tmp/out")'"

# A worker holding a lease on hot disconnects while hot is held: its
# lease is not lost, it goes back once the lock is free.
timed 2000 0 "put to hot" "$bin/qpipe" put --timeout 1 "$url/$hot" leased
"$bin/qps_tool" lease "$url/$hot" >"$tmp/lease.out" 2>>"$tmp/lease.log" &
worker=$!
pids+=("$worker")
stopped "$worker"
[ "$(cat "$tmp/lease.out")" = leased ] || fail "the worker got '$(cat "$tmp/lease.out")'"
hold
kill -KILL "$worker"
wait "$worker" 2>/dev/null
timed 1000 0 "ping after the worker's connection dropped" \
	"$bin/qpipe" ping "$url"
timed 3000 3 "get --timeout 1 on held hot" \
	"$bin/qpipe" get --timeout 1 "$url/$hot"
kill -CONT "$holder"
wait "$holder" || fail "the holder failed"
timed 2000 0 "get of the dropped lease after SIGCONT" \
	"$bin/qpipe" get --timeout 2 "$url/$hot"
[ "$(cat "$tmp/out")" = leased ] || fail "hot gave '$(cat "$tmp/out")'"

# Held again, with a get parked on hot: SIGTERM still stops the server.
hold
timeout -s KILL 20 "$bin/qpipe" get --timeout 10 "$url/$hot" \
	>/dev/null 2>"$tmp/hget2.log" &
hget=$!
sleep 0.3
t0=$(now_ms)
kill -TERM "$srv"
for _ in $(seq 400); do
	kill -0 "$srv" 2>/dev/null || break
	sleep 0.01
done
dt=$(($(now_ms) - t0))
kill -0 "$srv" 2>/dev/null && fail "qpiped still running $dt ms after SIGTERM"
wait "$srv"
rc=$?
[ "$rc" -eq 0 ] || fail "qpiped exited $rc after SIGTERM"
[ "$dt" -le 1000 ] || fail "qpiped took $dt ms to stop after SIGTERM"
ok "SIGTERM with hot held: stopped in $dt ms"
kill -KILL "$hget" 2>/dev/null # it would redial the stopped server
wait "$hget" 2>/dev/null
kill -CONT "$holder"
wait "$holder" || fail "the holder failed"
echo "all ok"
