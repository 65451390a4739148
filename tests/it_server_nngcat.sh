#!/usr/bin/env bash
# A third-party client, following only proto/PROTOCOL.md: nngcat (Debian
# nng-utils) sends put requests whose msgpack bodies Python's msgpack
# (python3-msgpack) makes, and the C client (qps_tool, libqpipe) gets the
# items; then the other way round, the C client puts and nngcat reads the
# queue's figures. The server runs on port 0 and is stopped by its PID.
set -uo pipefail
bin="${QP_BIN:?QP_BIN names the build bin directory}"
py=/usr/bin/python3
tmp=$(mktemp -d)
q="nngcat$$"
spid=""

cleanup() {
	if [ -n "$spid" ]; then
		kill "$spid" 2>/dev/null
		wait "$spid" 2>/dev/null
	fi
	rm -f "/dev/shm/qpipe.$q"
	rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	[ -s "$tmp/server.log" ] && sed 's/^/server: /' "$tmp/server.log" >&2
	exit 1
}

$py -c 'import msgpack' 2>/dev/null || fail "python3-msgpack is missing"
command -v nngcat >/dev/null || fail "nngcat (nng-utils) is missing"

"$bin/qpiped" --listen tcp://127.0.0.1:0 --port-file "$tmp/port" \
	${QP_SERVER_TRANSPORT:+--transport "$QP_SERVER_TRANSPORT"} \
	2>"$tmp/server.log" &
spid=$!
for _ in $(seq 200); do
	[ -s "$tmp/port" ] && break
	sleep 0.025
done
url=$(head -n 1 "$tmp/port")
[ -n "$url" ] || fail "qpiped wrote no port file"

# call PYTHON-LIST: one request, the decoded reply on stdout
call() {
	$py -c "import msgpack, sys
sys.stdout.buffer.write(msgpack.packb($1))" >"$tmp/req.bin"
	nngcat --req0 --dial "$url" --file "$tmp/req.bin" --raw \
		--recv-timeout 5 2>/dev/null |
		$py -c 'import msgpack, sys
print(msgpack.unpackb(sys.stdin.buffer.read()))'
}

# put, creating the queue, with the all-zero client id and seq 0 of a
# hand-made client: [1, put, req_id, name, client_id, seq, timeout, flags,
# item]
out=$(call "[1, 4, 1, '$q', bytes(16), 0, -1, 1, b'hello from nngcat']")
[ "$out" = "[1, 4, 1, 0]" ] || fail "put answered '$out'"
# a second item: a msgpack map (an object, not raw bytes)
out=$(call "[1, 4, 2, '$q', bytes(16), 0, 0, 0, {'n': 5}]")
[ "$out" = "[1, 4, 2, 0]" ] || fail "put of a map answered '$out'"
out=$(call "[1, 11, 3, '$q']")
[ "$out" = "[1, 11, 3, 0, 2]" ] || fail "qsize answered '$out'"

# the C client gets the bytes exactly
"$bin/qps_tool" get "$url/$q" 2000 >"$tmp/got" || fail "qps_tool get"
printf 'hello from nngcat' | cmp - "$tmp/got" || fail "the C client got '$(cat "$tmp/got")'"
# the map comes as its msgpack encoding (bytes get of an object)
"$bin/qps_tool" get "$url/$q" 2000 >"$tmp/got2" || fail "qps_tool get map"
$py -c 'import msgpack, sys
assert msgpack.unpackb(open(sys.argv[1], "rb").read()) == {"n": 5}' \
	"$tmp/got2" || fail "the map came back as $(od -An -tx1 "$tmp/got2")"

# the other way: the C client puts, nngcat sees it in stat and list
"$bin/qps_tool" put "$url/$q" "from C" || fail "qps_tool put"
out=$(call "[1, 12, 4, '$q']")
case "$out" in
"[1, 12, 4, 0, {'items': 1, "*) ;;
*) fail "stat answered '$out'" ;;
esac
out=$(call "[1, 13, 5]")
case "$out" in
*"['$q', {'items': 1,"*) ;;
*) fail "list answered '$out'" ;;
esac
# a get from nngcat leases the item; its connection closes after the
# reply, so the item goes back to the head and the C client still gets it
out=$(call "[1, 6, 6, '$q', bytes(16), 0, 0, 1, 0, 0, []]")
case "$out" in
"[1, 6, 6, 0, [["*", 1, b'from C']]]") ;;
*) fail "get answered '$out'" ;;
esac
[ "$("$bin/qps_tool" get "$url/$q" 2000)" = "from C" ] ||
	fail "the item leased by nngcat did not come back"
out=$(call "[1, 6, 7, '$q', bytes(16), 0, 0, 1, 0, 0, []]")
case "$out" in
"[1, 6, 7, 2, "*"empty"*) ;;
*) fail "get on the empty queue answered '$out'" ;;
esac
echo "ok: nngcat + python3-msgpack put, the C client got it; and back"
