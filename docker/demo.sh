#!/usr/bin/env bash
# docker/demo.sh - compose.yaml's topology without Docker: every "container"
# (qpiped, producer, QP_NETNS_WORKERS workers, collector) runs in its own
# network namespace, with its own address on a bridge that this script
# makes, so every byte crosses two network stacks as between hosts. The
# bridge lives in a namespace of its own with no way out: nothing leaves
# the machine, nothing touches the host's interfaces.
#
#   bridge namespace: bridge qb0, one veth per container, no address
#   qpiped            10.213.77.10   qpiped --listen tcp://0.0.0.0:7450
#   producer          10.213.77.20   docker/producer.sh
#   worker1..N        10.213.77.31.. examples/pool_worker (tcp://)
#   collector         10.213.77.40   docker/collector.sh
#
# qpiped runs the image's command and requires a token: QPIPE_TOKEN, random
# per run, in every container's environment as compose gives it; clients
# without it or with another are refused. worker1 is made to hang on its
# first task and is killed with kill -9 while it holds it: the task must
# still be done once.
# Exits 0 when the collector and the producer report every result checked,
# 77 (skipped) where namespaces cannot be made (not root, no ip(8)), 1
# otherwise. Deletes its namespaces and stops its processes by PID on exit.
# Environment: QP_BIN (build/bin), QP_NETNS_TASKS (200),
# QP_NETNS_WORKERS (4).
set -uo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "${QP_BIN:-$here/../build/bin}" && pwd) || {
	echo "docker/demo.sh: no bin directory: build first (make build)" >&2
	exit 1
}
N=${QP_NETNS_TASKS:-200}
NW=${QP_NETNS_WORKERS:-4}
[ "$NW" -ge 2 ] || NW=2
tag="qd$$"
P="nsdemo$$" # queue names: this run's own
NET=10.213.77
tmp=$(mktemp -d /tmp/qpipe-netns.XXXXXX)
nss=()
pids=()

# alive PID: the process runs (a zombie, exited and not yet reaped, does not).
alive() {
	local st
	st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
	[ -n "$st" ] && [ "${st#Z}" = "$st" ]
}
cleanup() {
	local p ns
	trap - EXIT INT TERM
	# the clients first, then the server (pids[0]); bounded: a process
	# that is still there 5 s after SIGTERM gets SIGKILL
	for p in "${pids[@]:1}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${pids[@]:1}" "${pids[@]:0:1}"; do
		kill -TERM "$p" 2>/dev/null
		for _ in $(seq 50); do
			alive "$p" || break
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	for ns in "${nss[@]}"; do ip netns del "$ns" 2>/dev/null; done
	rm -f /dev/shm/qpipe."$P".* 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

skip() {
	echo "SKIP: $*"
	exit 77
}
fail() {
	echo "docker/demo.sh: FAILED: $*" >&2
	local f
	for f in "$tmp"/*.log; do
		[ -s "$f" ] && tail -n 20 "$f" | sed "s|^|  $(basename "$f" .log): |" >&2
	done
	exit 1
}

[ "$(id -u)" -eq 0 ] || skip "network namespaces need root (run as root or in CI)"
command -v ip >/dev/null 2>&1 || skip "no ip(8) (Debian: iproute2)"
br="${tag}br"
ip netns add "$br" 2>/dev/null || skip "cannot create network namespaces here"
nss+=("$br")
ip -n "$br" link add qb0 type bridge 2>/dev/null || skip "cannot create a bridge"
ip -n "$br" link set qb0 up || fail "bridge up"
ip -n "$br" link set lo up || fail "lo up in the bridge namespace"

# container NAME HOST-NUMBER: a namespace with eth0 = NET.HOST on the bridge.
container() {
	local name=$1 host=$2 ns="${tag}-$1" port="${tag}p$2"
	ip netns add "$ns" || fail "namespace $ns"
	nss+=("$ns")
	ip link add eth0 netns "$ns" type veth peer name "$port" netns "$br" ||
		fail "veth for $name"
	ip -n "$br" link set "$port" master qb0 || fail "$port on the bridge"
	ip -n "$br" link set "$port" up || fail "$port up"
	ip -n "$ns" addr add "$NET.$host/24" dev eth0 || fail "address of $name"
	ip -n "$ns" link set eth0 up || fail "eth0 up in $name"
	ip -n "$ns" link set lo up || fail "lo up in $name"
}
container qpiped 10
container producer 20
for i in $(seq 1 "$NW"); do container "worker$i" $((30 + i)); done
container collector 40
echo "namespaces: qpiped $NET.10, producer $NET.20, worker1..$NW $NET.31-$((30 + NW)), collector $NET.40 (bridge qb0 in $br)"

# run_in NAME CMD...: runs CMD in NAME's namespace, in the background, with
# the demo's environment; its output goes to $tmp/NAME.log.
run_in() {
	local name=$1
	shift
	ip netns exec "${tag}-$name" env PATH="$BIN:$here:$PATH" \
		QPIPE_SERVER="$URL" QPIPE_PREFIX="$P" QPIPE_TASKS="$N" \
		QPIPE_WAIT=60 "$@" >"$tmp/$name.log" 2>&1 &
	pids+=($!)
}

# qpiped runs the image's CMD, qpiped --listen tcp://0.0.0.0:7450 (a fixed
# port is fine: the namespace is this run's own), the token from
# QPIPE_TOKEN as compose gives it: serving 0.0.0.0 needs the token.
URL="tcp://$NET.10:7450"
export QPIPE_TOKEN
QPIPE_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "qpiped: token required (QPIPE_TOKEN, random per run, given to every container)"
run_in qpiped "$BIN/qpiped" --listen tcp://0.0.0.0:7450

# The image's HEALTHCHECK, qpipe ping tcp://127.0.0.1:7450, in qpiped's
# namespace with the container's environment (its QPIPE_TOKEN); then, as
# compose's "depends_on: condition: service_healthy", the clients start
# once it passes.
for i in $(seq 100); do
	ip netns exec "${tag}-qpiped" "$BIN/qpipe" ping tcp://127.0.0.1:7450 \
		>/dev/null 2>"$tmp/ping.err" && break
	[ "$i" -lt 100 ] || fail "healthcheck: qpipe ping: $(cat "$tmp/ping.err")"
	sleep 0.05
done
echo "healthcheck (qpipe ping tcp://127.0.0.1:7450 in qpiped's namespace): ok"
ip netns exec "${tag}-collector" "$BIN/qpipe" ping "$URL" >/dev/null 2>"$tmp/ping.err" ||
	fail "qpipe ping $URL from the collector: $(cat "$tmp/ping.err")"
echo "qpipe ping $URL from the collector's namespace: ok"
# a client without the token, or with another, gets nothing
for t in none "not-the-token"; do
	rc=0
	if [ "$t" = none ]; then
		ip netns exec "${tag}-producer" env -u QPIPE_TOKEN \
			"$BIN/qpipe" size "$URL/$P.tasks" >/dev/null 2>"$tmp/noauth.err" || rc=$?
	else
		ip netns exec "${tag}-producer" env QPIPE_TOKEN="$t" \
			"$BIN/qpipe" size "$URL/$P.tasks" >/dev/null 2>"$tmp/noauth.err" || rc=$?
	fi
	[ "$rc" -eq 2 ] || fail "a client with token '$t' got exit $rc, not 2"
	grep -q "token" "$tmp/noauth.err" || fail "a client with token '$t': $(cat "$tmp/noauth.err")"
done
echo "a client without the token or with a wrong one: refused (exit 2: $(head -c 120 "$tmp/noauth.err"))"

run_in collector "$here/collector.sh"
collector_pid=${pids[-1]}
run_in worker1 "$BIN/pool_worker" --name worker1 --stall-at 1 \
	"$URL/$P.tasks" "$URL/$P.results"
victim=${pids[-1]}
for i in $(seq 2 "$NW"); do
	run_in "worker$i" "$BIN/pool_worker" --name "worker$i" \
		"$URL/$P.tasks" "$URL/$P.results"
done
run_in producer "$here/producer.sh"
producer_pid=${pids[-1]}
echo "started: collector, $NW workers, producer ($N tasks)"

# worker1 hangs on its first task: kill it -9 while it holds the task.
held=""
for _ in $(seq 300); do
	held=$(sed -n 's/.*holding task //p' "$tmp/worker1.log" | head -n 1)
	[ -n "$held" ] && break
	kill -0 "$collector_pid" 2>/dev/null || break
	sleep 0.1
done
[ -n "$held" ] || fail "worker1 never held a task"
echo "killing worker1 with kill -9, on purpose, while it holds task $held"
kill -9 "$victim"
wait "$victim" 2>/dev/null

rc=0
for _ in $(seq 900); do
	kill -0 "$collector_pid" 2>/dev/null || break
	sleep 0.1
done
wait "$collector_pid" || rc=$?
sed 's/^/  /' "$tmp/collector.log"
[ "$rc" -eq 0 ] || fail "the collector exited $rc"
rc=0
wait "$producer_pid" || rc=$?
tail -n 1 "$tmp/producer.log" | sed 's/^/  /'
[ "$rc" -eq 0 ] || fail "the producer exited $rc"
grep -q "closed holding 1 leased items" "$tmp/qpiped.log" ||
	fail "qpiped did not log the return of worker1's task"
echo "task $held: back in the queue when worker1 died ($(grep -o 'connection [0-9]* closed holding.*' "$tmp/qpiped.log" | head -n 1))"
echo "docker/demo.sh: ok: $N tasks across $((NW + 3)) namespaces, every result checked"
