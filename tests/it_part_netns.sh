#!/usr/bin/env bash
# One queue over three servers across hosts: three qpiped, each in a
# network namespace of its own with its own shared-memory and data
# directories, and two client namespaces (producers, workers), all joined
# by veth pairs to a bridge in a sixth namespace (10.216.0.0/24, on those
# links only). The tasks and results queues are durable and partitioned
# over the three servers. Two producers put 3,000 tasks round robin while
# three workers take them (2 ms of work each, then qp_queue_complete:
# the result goes to the results partition on the task's server, in one
# step there); mid-run one worker is killed with SIGKILL and another takes
# its place, and one server is killed with SIGKILL and restarted 1.5 s
# later on its address. Every task must get exactly one result: the checker counts
# lost, duplicated and unexpected results and requires 0, 0, 0. Exits 77
# (ctest: skipped) with a SKIP line where namespaces cannot be made.
# Deletes what it creates, stops what it starts by PID.
set -uo pipefail
bin="${QP_BIN:?QP_BIN names the build bin directory}"
tag="qm$$"
nsb="${tag}b" nsp="${tag}p" nsw="${tag}w"
nss=("${tag}1" "${tag}2" "${tag}3")
tmp=$(mktemp -d)
spids=("" "" "")
cpids=()
N=3000

cleanup() {
	local p
	for p in "${cpids[@]}" "${spids[@]}"; do
		[ -n "$p" ] && kill -9 "$p" 2>/dev/null
	done
	for p in "${cpids[@]}" "${spids[@]}"; do
		[ -n "$p" ] && wait "$p" 2>/dev/null
	done
	for n in "$nsb" "$nsp" "$nsw" "${nss[@]}"; do
		ip netns del "$n" 2>/dev/null
	done
	rm -rf "$tmp"
}
trap cleanup EXIT

skip() {
	echo "SKIP: $*"
	exit 77
}

fail() {
	echo "FAIL: $*" >&2
	for f in "$tmp"/*.log; do
		[ -s "$f" ] && tail -5 "$f" | sed "s|^|$(basename "$f"): |" >&2
	done
	exit 1
}

command -v ip >/dev/null 2>&1 || skip "no ip(8) to create network namespaces"
ip netns add "$nsb" 2>/dev/null ||
	skip "cannot create network namespaces here (needs CAP_SYS_ADMIN)"
for n in "$nsp" "$nsw" "${nss[@]}"; do
	ip netns add "$n" 2>/dev/null || skip "cannot create namespace $n"
done
ip -n "$nsb" link add br0 type bridge 2>/dev/null || skip "cannot create a bridge"
ip -n "$nsb" link set br0 up || fail "bridge up"
# host index: servers .11 .12 .13, producers .21, workers .22
join() { # NS NAME ADDR
	ip link add "$2" netns "$1" type veth peer name "b$2" netns "$nsb" \
		2>/dev/null || skip "cannot create a veth pair"
	ip -n "$nsb" link set "b$2" master br0 up || fail "attach b$2"
	ip -n "$1" addr add "$3/24" dev "$2" || fail "address $3"
	ip -n "$1" link set "$2" up || fail "link $2 up"
	ip -n "$1" link set lo up || fail "lo up in $1"
}
for i in 0 1 2; do
	join "${nss[$i]}" "${tag}s$i" "10.216.0.1$((i + 1))"
done
join "$nsp" "${tag}p" 10.216.0.21
join "$nsw" "${tag}w" 10.216.0.22

# start_server I LISTEN: qpiped in namespace I, its own directories; not
# on loopback, so --insecure (the namespaces are private to this test).
start_server() {
	local i=$1
	mkdir -p "$tmp/shm$i" "$tmp/data$i"
	rm -f "$tmp/port$i"
	ip netns exec "${nss[$i]}" env QPIPE_SHM_DIR="$tmp/shm$i" \
		"$bin/qpiped" --insecure --listen "$2" --port-file "$tmp/port$i" \
		--data-dir "$tmp/data$i" 2>>"$tmp/server$i.log" &
	spids[$i]=$!
	for _ in $(seq 200); do
		[ -s "$tmp/port$i" ] && return 0
		sleep 0.025
	done
	fail "qpiped $i wrote no port file"
}
urls=()
for i in 0 1 2; do
	start_server "$i" "tcp://10.216.0.1$((i + 1)):0"
	urls+=("$(head -1 "$tmp/port$i")")
done
hosts=$(printf '%s\n' "${urls[@]}" | sed 's|tcp://||' | paste -sd, -)
T_ADDR="tcp://$hosts/tasks"
R_ADDR="tcp://$hosts/results"

inp() { ip netns exec "$nsp" "$@"; }
inw() { ip netns exec "$nsw" "$@"; }
inp "$bin/qpipe" create --durable "$T_ADDR" || fail "create tasks"
inp "$bin/qpipe" create --durable "$R_ADDR" || fail "create results"

# Workers first (they wait), then two producers of 600 tasks each.
for w in 1 2 3; do
	inw "$bin/qp_part_peer" work "$T_ADDR" "$R_ADDR" 4000 2 \
		>"$tmp/worker$w.out" 2>"$tmp/worker$w.log" &
	cpids+=($!)
done
inp "$bin/qp_part_peer" produce "$T_ADDR" 0 $((N / 2)) 2>"$tmp/prod1.log" &
p1=$!
inp "$bin/qp_part_peer" produce "$T_ADDR" $((N / 2)) $((N / 2)) 2>"$tmp/prod2.log" &
p2=$!
cpids+=("$p1" "$p2")

# Mid-run: kill server 2 once a tenth of the results are in.
for _ in $(seq 400); do
	n=$(inp "$bin/qpipe" size "$R_ADDR" 2>/dev/null || echo 0)
	[ "${n:-0}" -ge $((N / 10)) ] && break
	sleep 0.025
done
[ "${n:-0}" -ge $((N / 10)) ] || fail "no $((N / 10)) results within 10 s (have ${n:-0})"
# results on servers 1 and 3 (their own addresses)
others() {
	echo $(($(inp "$bin/qpipe" size "${urls[0]}/results") + \
		$(inp "$bin/qpipe" size "${urls[2]}/results")))
}
# A worker killed mid-task: the task runs again, its result counts once.
kill -9 "${cpids[0]}"
wait "${cpids[0]}" 2>/dev/null
inw "$bin/qp_part_peer" work "$T_ADDR" "$R_ADDR" 4000 2 \
	>"$tmp/worker4.out" 2>"$tmp/worker4.log" &
cpids[0]=$!
kill -9 "${spids[1]}"
wait "${spids[1]}" 2>/dev/null
spids[1]=""
n=$(others)
echo "killed server 2; servers 1 and 3 hold $n results"
# The others go on: results keep coming on them while it is down.
sleep 1.5
m=$(others)
echo "servers 1 and 3 hold $m results after 1.5 s without server 2"
[ "$m" -gt "$n" ] || fail "no result while server 2 was down ($n, then $m)"
start_server 1 "${urls[1]}"
[ "$(head -1 "$tmp/port1")" == "${urls[1]}" ] || fail "server 2 came back on $(head -1 "$tmp/port1")"

wait "$p1" || fail "producer 1 failed"
wait "$p2" || fail "producer 2 failed"
for w in 1 2 3; do
	wait "${cpids[$((w - 1))]}" || fail "worker $w failed"
done
cpids=()
cat "$tmp"/worker*.out

# The checker: every task t0..t(N-1) has exactly one result rtI.
inp "$bin/qpipe" get -n $((N * 2)) --nowait "$R_ADDR" >"$tmp/results" 2>"$tmp/get.log" || true
seq 0 $((N - 1)) | sed 's/^/rt/' | sort >"$tmp/want"
sort "$tmp/results" >"$tmp/got"
lost=$(comm -23 "$tmp/want" <(sort -u "$tmp/got") | wc -l)
dup=$(uniq -d "$tmp/got" | wc -l)
unexpected=$(comm -13 "$tmp/want" <(sort -u "$tmp/got") | wc -l)
left=$(inp "$bin/qpipe" size "$T_ADDR")
echo "tasks $N, results $(wc -l <"$tmp/got"): lost $lost, duplicated $dup, unexpected $unexpected; tasks left $left"
[ "$lost" -eq 0 ] && [ "$dup" -eq 0 ] && [ "$unexpected" -eq 0 ] ||
	fail "lost $lost, duplicated $dup, unexpected $unexpected"
[ "$left" -eq 0 ] || fail "$left tasks left"
for i in 0 1 2; do
	kill -TERM "${spids[$i]}" 2>/dev/null
	wait "${spids[$i]}" 2>/dev/null
	spids[$i]=""
done
echo "PASS: every task got exactly one result across a server kill"
