#!/usr/bin/env bash
# The Python package across hosts: qpiped in one network namespace, two
# client hosts in two others, each joined to the server's by a veth pair
# with addresses on that link only (10.213.12.0/30 and 10.213.12.4/30).
#   - examples/python/queue_hello.py and pipe_hello.py, unchanged, run on
#     host a against the server's address;
#   - values put by Python on host a are read by `qpipe get --json` (C,
#     qp_queue_get_obj) on host b, and values put by `qpipe put --json` on
#     host b are got by Python on host a.
# Exits 77 (ctest: skipped) with a SKIP line where namespaces cannot be
# created. Deletes what it creates, and stops what it starts, by PID.
set -uo pipefail
export LC_ALL=C
bin="${QP_BIN:?QP_BIN names the build bin directory}"
src="${QP_SOURCE_DIR:?QP_SOURCE_DIR names the source tree}"
py=/usr/bin/python3
tag="qy$$"
nss="${tag}s" nsa="${tag}a" nsb="${tag}b"
tmp=$(mktemp -d)
spid=""

cleanup() {
	if [ -n "$spid" ]; then
		kill "$spid" 2>/dev/null
		wait "$spid" 2>/dev/null
	fi
	for ns in "$nss" "$nsa" "$nsb"; do ip netns del "$ns" 2>/dev/null; done
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
ip netns add "$nsa" || fail "namespace $nsa"
ip netns add "$nsb" || fail "namespace $nsb"
ip link add "${tag}s1" netns "$nss" type veth peer name "${tag}a1" \
	netns "$nsa" 2>/dev/null || skip "cannot create a veth pair"
ip link add "${tag}s2" netns "$nss" type veth peer name "${tag}b1" \
	netns "$nsb" || fail "second veth pair"
ip -n "$nss" addr add 10.213.12.1/30 dev "${tag}s1" || fail "address s1"
ip -n "$nsa" addr add 10.213.12.2/30 dev "${tag}a1" || fail "address a1"
ip -n "$nss" addr add 10.213.12.5/30 dev "${tag}s2" || fail "address s2"
ip -n "$nsb" addr add 10.213.12.6/30 dev "${tag}b1" || fail "address b1"
for l in "$nss ${tag}s1" "$nss ${tag}s2" "$nsa ${tag}a1" "$nsb ${tag}b1" \
	"$nss lo" "$nsa lo" "$nsb lo"; do
	set -- $l
	ip -n "$1" link set "$2" up || fail "link $2 up in $1"
done

# A token, as a deployment off loopback would have; port 0 on each link.
export QPIPE_TOKEN="py-netns-$$-$RANDOM"
ip netns exec "$nss" "$bin/qpiped" \
	--listen tcp://10.213.12.1:0 --listen tcp://10.213.12.5:0 \
	--port-file "$tmp/port" 2>"$tmp/server.log" &
spid=$!
for _ in $(seq 200); do
	[ -s "$tmp/port" ] && [ "$(wc -l <"$tmp/port")" -ge 2 ] && break
	sleep 0.025
done
urla=$(sed -n 1p "$tmp/port")
urlb=$(sed -n 2p "$tmp/port")
case "$urla $urlb" in
"tcp://10.213.12.1:"[1-9]*" tcp://10.213.12.5:"[1-9]*) ;;
*) fail "bound URLs '$urla' '$urlb'" ;;
esac

# PYTHONPATH (the package and its built extension) comes from ctest.
[ -n "${PYTHONPATH:-}" ] || fail "PYTHONPATH names no qpipe package"
on_a() { ip netns exec "$nsa" timeout 60 "$@"; }
on_b() { ip netns exec "$nsb" timeout 60 "$@"; }

# The seed programs, unchanged but for the import and the address.
want="[42, None, 'hello']"
out=$(on_a "$py" "$src/examples/python/queue_hello.py" "$urla/hello$$" \
	2>"$tmp/queue_hello.err") || fail "queue_hello.py failed on host a"
[ "$out" = "$want" ] || fail "queue_hello.py printed '$out'"
echo "ok   queue_hello.py on host a through $urla"
out=$(on_a "$py" "$src/examples/python/pipe_hello.py" "$urla/chat$$" \
	2>"$tmp/pipe_hello.err") || fail "pipe_hello.py failed on host a"
[ "$out" = "$want" ] || fail "pipe_hello.py printed '$out'"
echo "ok   pipe_hello.py on host a through $urla"

# Python on host a puts values; the C CLI on host b reads them as JSON.
on_a "$py" -c '
import sys, qpipe
q = qpipe.Queue(address=sys.argv[1])
q.put_many([None, True, -3, 1.5, "h\u00e9", [1, "a"], {"k": [1, None]}])
q.put(b"raw")
q.close()' "$urla/interop$$" 2>"$tmp/pyput.err" || fail "the Python put failed"
on_b "$bin/qpipe" get --json -n 7 "$urlb/interop$$" >"$tmp/got.json" \
	2>"$tmp/cliget.err" || fail "qpipe get --json failed on host b"
got=$(tr '\n' '|' <"$tmp/got.json")
exp='null|true|-3|1.5|"hé"|[1,"a"]|{"k":[1,null]}|'
[ "$got" = "$exp" ] || fail "host b read '$got', not '$exp'"
raw=$(on_b "$bin/qpipe" get "$urlb/interop$$" 2>>"$tmp/cliget.err")
[ "$raw" = "raw" ] || fail "host b read the bytes as '$raw'"
echo "ok   Python on host a -> qpipe get --json on host b"

# And back: the CLI on host b puts JSON values, Python on host a gets them.
on_b "$bin/qpipe" put --json "$urlb/back$$" '{"n":[1,2.5,"x"]}' '"two"' \
	2>"$tmp/cliput.err" || fail "qpipe put --json failed on host b"
out=$(on_a "$py" -c '
import sys, qpipe
q = qpipe.Queue(address=sys.argv[1])
print(q.get(timeout=10), q.get(timeout=10))
q.close()
qpipe.unlink(sys.argv[1])' "$urla/back$$" 2>"$tmp/pyget.err") ||
	fail "the Python get failed on host a"
[ "$out" = "{'n': [1, 2.5, 'x']} two" ] || fail "host a got '$out'"
echo "ok   qpipe put --json on host b -> Python on host a"

kill -TERM "$spid"
wait "$spid"
rc=$?
spid=""
[ $rc -eq 0 ] || fail "qpiped exited with $rc after SIGTERM"
echo "ok: the Python package across hosts ($urla, $urlb)"
