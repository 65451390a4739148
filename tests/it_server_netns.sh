#!/usr/bin/env bash
# Across hosts: qpiped in one network namespace, clients in two others,
# each joined to the server's by a veth pair (10.213.8.0/30 and
# 10.213.9.0/30, inside the namespaces only). A client on one "host" puts,
# a client on the other gets; then the seed program's two processes (one
# puts a string, the other gets and prints it) run on the two client
# hosts. Exits 77 (ctest: skipped) with a SKIP line where namespaces
# cannot be created. Deletes what it creates, stops what it starts by PID.
set -uo pipefail
bin="${QP_BIN:?QP_BIN names the build bin directory}"
tag="qs$$"
nss="${tag}s" nsa="${tag}a" nsb="${tag}b"
tmp=$(mktemp -d)
q="netns$$"
spid=""

cleanup() {
	if [ -n "$spid" ]; then
		kill "$spid" 2>/dev/null
		wait "$spid" 2>/dev/null
	fi
	ip netns del "$nss" 2>/dev/null
	ip netns del "$nsa" 2>/dev/null
	ip netns del "$nsb" 2>/dev/null
	rm -f "/dev/shm/qpipe.$q"
	rm -rf "$tmp"
}
trap cleanup EXIT

skip() {
	echo "SKIP: $*"
	exit 77
}

fail() {
	echo "FAIL: $*" >&2
	for f in "$tmp"/*; do
		[ -s "$f" ] && sed "s|^|$(basename "$f"): |" "$f" >&2
	done
	exit 1
}

command -v ip >/dev/null 2>&1 || skip "no ip(8) to create network namespaces"
ip netns add "$nss" 2>/dev/null ||
	skip "cannot create network namespaces here (needs CAP_SYS_ADMIN)"
ip netns add "$nsa" 2>/dev/null || skip "cannot create a second namespace"
ip netns add "$nsb" 2>/dev/null || skip "cannot create a third namespace"
ip link add "${tag}s1" netns "$nss" type veth peer name "${tag}a1" \
	netns "$nsa" 2>/dev/null || skip "cannot create a veth pair"
ip link add "${tag}s2" netns "$nss" type veth peer name "${tag}b1" \
	netns "$nsb" 2>/dev/null || skip "cannot create a second veth pair"
ip -n "$nss" addr add 10.213.8.1/30 dev "${tag}s1" || fail "address s1"
ip -n "$nsa" addr add 10.213.8.2/30 dev "${tag}a1" || fail "address a1"
ip -n "$nss" addr add 10.213.9.1/30 dev "${tag}s2" || fail "address s2"
ip -n "$nsb" addr add 10.213.9.2/30 dev "${tag}b1" || fail "address b1"
for l in "$nss ${tag}s1" "$nss ${tag}s2" "$nsa ${tag}a1" "$nsb ${tag}b1" \
	"$nss lo" "$nsa lo" "$nsb lo"; do
	set -- $l
	ip -n "$1" link set "$2" up || fail "link $2 up in $1"
done

# The server listens on both links, port 0 on each (not loopback:
# --insecure, as no token exists in this version).
ip netns exec "$nss" "$bin/qpiped" --insecure \
	--listen tcp://10.213.8.1:0 --listen tcp://10.213.9.1:0 \
	--port-file "$tmp/port" 2>"$tmp/server.log" &
spid=$!
for _ in $(seq 200); do
	[ -s "$tmp/port" ] && break
	sleep 0.025
done
[ -s "$tmp/port" ] || fail "qpiped wrote no port file"
urla=$(sed -n 1p "$tmp/port")
urlb=$(sed -n 2p "$tmp/port")
case "$urla $urlb" in
"tcp://10.213.8.1:"[1-9]*" tcp://10.213.9.1:"[1-9]*) ;;
*) fail "bound URLs '$urla' '$urlb'" ;;
esac

# host a puts, host b gets
ip netns exec "$nsa" "$bin/qps_tool" put "$urla/$q" "across hosts" 5000 \
	2>"$tmp/put.err" || fail "put from host a"
got=$(ip netns exec "$nsb" "$bin/qps_tool" get "$urlb/$q" 5000 \
	2>"$tmp/get.err") || fail "get on host b"
[ "$got" = "across hosts" ] || fail "host b got '$got'"

# the seed program: one process puts a string, another gets and prints it,
# the getter started first and blocked until the put comes
ip netns exec "$nsb" "$bin/qps_tool" get "$urlb/$q" 10000 \
	>"$tmp/seed.out" 2>"$tmp/seed.err" &
getter=$!
sleep 0.3
ip netns exec "$nsa" "$bin/qps_tool" put "$urla/$q" "hello from host a" \
	2>"$tmp/seed-put.err" || fail "seed put"
wait "$getter" || fail "seed get"
[ "$(cat "$tmp/seed.out")" = "hello from host a" ] ||
	fail "the seed getter printed '$(cat "$tmp/seed.out")'"
grep -q "INSECURE" "$tmp/server.log" || fail "no INSECURE warning"
echo "ok: $urla -> $urlb: '$(cat "$tmp/seed.out")'"
