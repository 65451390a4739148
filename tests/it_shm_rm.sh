#!/usr/bin/env bash
# A shm:// queue removed while in use, and waiters killed, as a user of
# one host meets them (issue 15, items 7 and 10): after `qpipe rm
# shm://q`, a local producer's next put fails (exit 2, "was deleted")
# instead of storing into the removed segment; a local getter blocked on
# the queue wakes with the error a remote getter gets (exit 6, "was
# deleted"), and so does a remote getter parked in qpiped, even though a
# new queue of that name gets an item; `qpipe stat` stops counting five
# waiting getters once they are killed with kill -9. Every process is
# started here and stopped by its PID.
. "$(dirname "${BASH_SOURCE[0]}")/failfast.sh"
q="rm$$x${RANDOM}"
h="heal$$x${RANDOM}"

cleanup_more() {
	rm -f /dev/shm/qpipe."$q" /dev/shm/qpipe."$h" 2>/dev/null
}

# ended PID WANT WHAT ERRFILE PATTERN: PID exits WANT within 10 s, and
# ERRFILE matches PATTERN.
ended() {
	local p=$1 want=$2 what=$3 errf=$4 pat=$5 rc
	for _ in $(seq 400); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.025
	done
	kill -0 "$p" 2>/dev/null && fail "$what: still runs 10 s on"
	wait "$p"
	rc=$?
	[ "$rc" -eq "$want" ] || fail "$what: exit $rc, not $want"
	grep -q -- "$pat" "$errf" || fail "$what: says: $(cat "$errf")"
	ok "$what: exit $rc, $(head -n 1 "$errf")"
}

# getters NAME: the getters `qpipe stat` counts.
getters() {
	"$bin/qpipe" stat "shm://$1" | sed -n 's/.*"getters": \([0-9]*\).*/\1/p'
}

# await_getters NAME N: until stat counts N getters (10 s).
await_getters() {
	for _ in $(seq 400); do
		[ "$(getters "$1")" = "$2" ] && return 0
		sleep 0.025
	done
	fail "stat of $1 counts $(getters "$1") getters, not $2"
}

"$bin/qpiped" --listen tcp://127.0.0.1:0 --port-file "$tmp/port" \
	${QP_SERVER_TRANSPORT:+--transport "$QP_SERVER_TRANSPORT"} \
	>"$tmp/qpiped.out" 2>"$tmp/qpiped.log" &
srv=$!
pids+=("$srv")
await_port "$srv" "$tmp/port"

# ---- rm while in use ----
"$bin/qpipe" create "shm://$q" || fail "create"
mkfifo "$tmp/in"
"$bin/qpipe" put --lines "shm://$q" <"$tmp/in" >/dev/null 2>"$tmp/producer.err" &
producer=$!
pids+=("$producer")
exec 3>"$tmp/in"
echo first >&3
"$bin/qpipe" get "shm://$q" >"$tmp/got" 2>/dev/null ||
	fail "the first item did not arrive"
[ "$(cat "$tmp/got")" = first ] || fail "got '$(cat "$tmp/got")'"
ok "a local producer puts into shm://$q"

"$bin/qpipe" get "shm://$q" >/dev/null 2>"$tmp/lget.err" &
lget=$!
pids+=("$lget")
"$bin/qpipe" get "$url/$q" >/dev/null 2>"$tmp/rget.err" &
rget=$!
pids+=("$rget")
await_getters "$q" 1
for _ in $(seq 400); do
	"$bin/qpipe" stat "$url/$q" 2>/dev/null | grep -q '"getters": 2,' &&
		break
	sleep 0.025
done
"$bin/qpipe" stat "$url/$q" | grep -q '"getters": 2,' ||
	fail "the remote getter is not parked"
ok "a local and a remote getter wait on shm://$q"

"$bin/qpipe" rm "shm://$q" || fail "rm"
"$bin/qpipe" create "shm://$q" || fail "create anew"
"$bin/qpipe" put "shm://$q" new || fail "put into the new queue"
ended "$lget" 6 "the local getter wakes" "$tmp/lget.err" "was deleted"
ended "$rget" 6 "the remote getter wakes" "$tmp/rget.err" "was deleted"
echo second >&3
exec 3>&-
ended "$producer" 2 "the local producer's put fails" "$tmp/producer.err" \
	"was deleted"
[ "$("$bin/qpipe" get --nowait "shm://$q")" = new ] ||
	fail "the new queue lost its item"
"$bin/qpipe" get --nowait "shm://$q" >/dev/null 2>&1 &&
	fail "the new queue holds what went to the old one"
ok "the new queue holds its own item only"

# ---- waiter counts heal ----
"$bin/qpipe" create "shm://$h" || fail "create $h"
kids=()
for _ in 1 2 3 4 5; do
	"$bin/qpipe" get "shm://$h" >/dev/null 2>&1 &
	kids+=("$!")
	pids+=("$!")
done
await_getters "$h" 5
ok "stat counts 5 getters"
for p in "${kids[@]}"; do
	kill -KILL "$p"
	wait "$p" 2>/dev/null
done
[ "$(getters "$h")" = 0 ] || fail "stat counts $(getters "$h") getters after kill -9"
ok "stat counts 0 getters once they are killed"
"$bin/qpipe" put "shm://$h" x || fail "put after the kills"
[ "$("$bin/qpipe" get --nowait "shm://$h")" = x ] || fail "get after the kills"
ok "the queue works after the kills"
"$bin/qpipe" rm "shm://$h"
"$bin/qpipe" rm "shm://$q"
kill -TERM "$srv"
wait "$srv" || fail "qpiped exited $? on SIGTERM"
ok "qpiped exits 0 on SIGTERM"
