#!/usr/bin/env bash
# The seed program across two hosts: the listening and the dialing end of a
# Connection run in two network namespaces joined by a veth pair, with
# addresses on that link only (10.213.7.0/30, inside the namespaces).
# Exits 77 (ctest: skipped) with a SKIP line where namespaces cannot be
# created. Deletes what it creates, and stops what it starts, by PID.
set -uo pipefail
peer="${QP_BIN:?QP_BIN names the build bin directory}/qp_pipe_peer"
tag="qp$$"
ns1="${tag}l" ns2="${tag}d"
tmp=$(mktemp -d)
lpid=""

cleanup() {
	if [ -n "$lpid" ]; then
		kill "$lpid" 2>/dev/null
		wait "$lpid" 2>/dev/null
	fi
	ip netns del "$ns1" 2>/dev/null
	ip netns del "$ns2" 2>/dev/null
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
ip netns add "$ns1" 2>/dev/null ||
	skip "cannot create network namespaces here (needs CAP_SYS_ADMIN)"
ip netns add "$ns2" 2>/dev/null || skip "cannot create a second namespace"
ip link add "${tag}x" netns "$ns1" type veth peer name "${tag}y" \
	netns "$ns2" 2>/dev/null || skip "cannot create a veth pair"
ip -n "$ns1" addr add 10.213.7.1/30 dev "${tag}x" || fail "address in $ns1"
ip -n "$ns2" addr add 10.213.7.2/30 dev "${tag}y" || fail "address in $ns2"
ip -n "$ns1" link set "${tag}x" up || fail "link up in $ns1"
ip -n "$ns2" link set "${tag}y" up || fail "link up in $ns2"

# The listener picks a free port; its first output line is the bound URL.
ip netns exec "$ns1" "$peer" listen tcp://10.213.7.1:0 \
	>"$tmp/listen.out" 2>"$tmp/listen.err" &
lpid=$!
url=""
for _ in $(seq 100); do
	url=$(head -n 1 "$tmp/listen.out" 2>/dev/null)
	[ -n "$url" ] && break
	sleep 0.05
done
[ -n "$url" ] || fail "the listener printed no URL"
case "$url" in
tcp://10.213.7.1:[1-9]*) ;;
*) fail "unexpected listener URL '$url'" ;;
esac

msg="hello from the other host"
out=$(ip netns exec "$ns2" "$peer" dial "$url" "$msg" 5000 2>"$tmp/dial.err") ||
	fail "the dialer failed"
[ "$out" = "ack: $msg" ] || fail "the dialer printed '$out'"
wait "$lpid"
rc=$?
lpid=""
[ $rc -eq 0 ] || fail "the listener exited with $rc"
got=$(sed -n 2p "$tmp/listen.out")
[ "$got" = "$msg" ] || fail "the listener printed '$got'"
echo "ok: $url: '$got' -> '$out'"
