#!/usr/bin/env bash
# Durable queues in the real qpiped (--data-dir): created over the wire
# with an fsync policy, kept across a kill -9 and a restart with their
# leased items ready again, a torn tail cut and logged, a corrupt file
# quarantined (logged, ECORRUPT on every request, the other queues still
# served, deletable), bad policies and a missing --data-dir refused.
# Servers listen on a fresh ipc path and are stopped by PID.
set -uo pipefail
bin="${QP_BIN:?QP_BIN names the build bin directory}"
tool="$bin/qp_durable_tool"
qt="$bin/qps_tool"
tmp=$(mktemp -d)
pids=()
pid=
fails=0

cleanup() {
	for p in "${pids[@]}"; do
		kill -9 "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	rm -rf "$tmp"
}
trap cleanup EXIT

ok() { echo "ok   $1"; }
bad() {
	echo "FAIL $1: $2" >&2
	fails=$((fails + 1))
}

# start NAME ARGS...: qpiped on ipc://$tmp/sock with its log in
# $tmp/NAME.log; waits for the port file.
url="ipc://$tmp/sock"
start() {
	local name=$1
	shift
	rm -f "$tmp/port"
	"$bin/qpiped" --listen "$url" --port-file "$tmp/port" "$@" \
		2>"$tmp/$name.log" &
	pid=$!
	pids+=("$pid")
	for _ in $(seq 200); do
		[ -s "$tmp/port" ] && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.025
	done
	echo "FAIL: qpiped $name did not start" >&2
	cat "$tmp/$name.log" >&2
	exit 1
}

killnow() {
	kill -9 "$pid"
	wait "$pid" 2>/dev/null
}

expect() { # NAME WANT GOT
	if [ "$2" == "$3" ]; then ok "$1"; else bad "$1" "got '$3', wanted '$2'"; fi
}

# Without --data-dir: a durable create is refused, clearly.
start nodir
"$tool" create "$url/d1" 2>"$tmp/err"
expect "no data dir: EINVAL" 5 $?
grep -q -- "--data-dir" "$tmp/err" && ok "no data dir: message" ||
	bad "no data dir: message" "$(cat "$tmp/err")"
killnow

data="$tmp/data"
start one --data-dir "$data"
"$tool" create "$url/d1" always
expect "create always" 0 $?
"$tool" create "$url/d2" interval:50
expect "create interval:50" 0 $?
"$tool" create "$url/d3" sometimes 2>"$tmp/err"
expect "create bad policy: EINVAL" 5 $?
grep -q "fsync policy" "$tmp/err" && ok "bad policy: message" ||
	bad "bad policy: message" "$(cat "$tmp/err")"
grep -q "durable queue 'd2'.*fsync interval:50" "$tmp/one.log" &&
	ok "policy logged" || bad "policy logged" "$(cat "$tmp/one.log")"
[ -f "$data/d1.qlog" ] && ok "file made" || bad "file made" "no $data/d1.qlog"
for i in 1 2 3 4 5; do
	"$qt" put "$url/d1" "item$i" >/dev/null || bad "put $i" "rc $?"
	"$qt" put "$url/d2" "two$i" >/dev/null || bad "put d2 $i" "rc $?"
done
expect "got the head" item1 "$("$qt" get "$url/d1")"
# A worker holds item2 under a lease when the server is killed.
"$tool" hold "$url/d1" >"$tmp/held" 2>&1 &
hp=$!
pids+=("$hp")
for _ in $(seq 100); do [ -s "$tmp/held" ] && break; sleep 0.02; done
expect "leased" item2 "$(cat "$tmp/held")"
expect "qsize while leased" 3 "$("$qt" qsize "$url/d1")"
# A batch (put_many) to another always queue, group-committed.
"$tool" create "$url/d4" always
"$tool" batch "$url/d4" 300
expect "batch put" 0 $?
killnow
{
	kill -9 "$hp"
	wait "$hp"
} 2>/dev/null

start two --data-dir "$data"
expect "after kill -9: leased item ready again" 4 "$("$qt" qsize "$url/d1")"
expect "after kill -9: order" "item2 item3 item4 item5" \
	"$(for i in 1 2 3 4; do "$qt" get "$url/d1"; echo; done | xargs)"
expect "after kill -9: the batch" 300 "$("$qt" qsize "$url/d4")"
"$tool" drain "$url/d4" >"$tmp/batch.out"
expect "the batch in order" "$(seq -f 'b-%g' 1 300)" "$(cat "$tmp/batch.out")"
expect "other queue kept" 5 "$("$qt" qsize "$url/d2")"
# (the listing read whole first: grep -q leaving early would fail the
# pipe under pipefail)
listing=$("$qt" ls "$url")
grep -q "^d2 5$" <<<"$listing" && ok "listed" || bad "listed" "$listing"
killnow

# A torn tail: the last record cut short (a put of qpiped's: 8 bytes of
# record header, 10 of PUT, the item's 4, the request's 32-byte tag).
# After a kill the file still holds the zeros of the room held back past
# its records: the end is found by walking the records' lengths.
size=$(python3 - "$data/d2.qlog" <<'EOF'
import struct, sys
b = open(sys.argv[1], "rb").read()
off = 64
while off + 8 <= len(b):
    n = struct.unpack_from("<I", b, off)[0]
    if n == 0:
        break
    off += 8 + n
print(off)
EOF
)
truncate -s $((size - 3)) "$data/d2.qlog"
start three --data-dir "$data"
grep -q "durable queue 'd2': torn tail in .*d2.qlog: cut 51 bytes" \
	"$tmp/three.log" && ok "torn tail logged" ||
	bad "torn tail logged" "$(cat "$tmp/three.log")"
expect "torn tail: complete records kept" 4 "$("$qt" qsize "$url/d2")"
killnow

# A corrupt record in the middle: quarantined, not served.
python3 - "$data/d2.qlog" <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[64 + 8 + 12] ^= 0xff  # the first record's item bytes
open(p, "wb").write(b)
EOF
cp "$data/d2.qlog" "$tmp/d2.before"
start four --data-dir "$data"
grep -q "durable queue 'd2' QUARANTINED, not served: .*d2.qlog: record at offset 64 fails its CRC" \
	"$tmp/four.log" && ok "quarantine logged" ||
	bad "quarantine logged" "$(cat "$tmp/four.log")"
"$qt" qsize "$url/d2" 2>"$tmp/err"
expect "quarantined: ECORRUPT" 14 $?
grep -q "quarantined" "$tmp/err" && ok "quarantined: message" ||
	bad "quarantined: message" "$(cat "$tmp/err")"
"$qt" put "$url/d2" x 2>/dev/null
expect "quarantined: put refused" 14 $?
cmp -s "$data/d2.qlog" "$tmp/d2.before" && ok "quarantined file untouched" ||
	bad "quarantined file untouched" "it changed"
expect "other durable queue served" 0 "$("$qt" qsize "$url/d1")"
"$qt" put "$url/d1" after >/dev/null
expect "other durable queue takes puts" 1 "$("$qt" qsize "$url/d1")"
# SIGTERM: a clean stop, the queue kept.
kill -TERM "$pid"
wait "$pid"
expect "SIGTERM exit" 0 $?
start five --data-dir "$data"
expect "after SIGTERM" after "$("$qt" get "$url/d1")"
grep -q "QUARANTINED" "$tmp/five.log" && ok "still quarantined" ||
	bad "still quarantined" "$(cat "$tmp/five.log")"
"$bin/qpipe" rm "$url/d2" >/dev/null 2>&1
[ ! -f "$data/d2.qlog" ] && ok "quarantined queue deleted" ||
	bad "quarantined queue deleted" "file still there"

# The CLI: qpipe create --durable --fsync POLICY, kept across a kill -9.
"$bin/qpipe" create --durable --fsync always "$url/c1"
expect "qpipe create --durable" 0 $?
[ -f "$data/c1.qlog" ] && ok "qpipe create --durable: its file" ||
	bad "qpipe create --durable: its file" "no $data/c1.qlog"
"$bin/qpipe" put "$url/c1" kept
killnow
start six --data-dir "$data"
expect "qpipe create --durable: item kept across kill -9" kept \
	"$("$bin/qpipe" get --nowait "$url/c1")"
"$bin/qpipe" create --durable --fsync sometimes "$url/c2" 2>"$tmp/err"
expect "qpipe create --fsync with a bad policy: usage" 1 $?
grep -q "sometimes" "$tmp/err" && ok "bad policy named" ||
	bad "bad policy named" "$(cat "$tmp/err")"
"$bin/qpipe" create --durable "shm://c3" 2>/dev/null
expect "qpipe create --durable shm://: usage" 1 $?
killnow

[ "$fails" -eq 0 ] && echo "all passed"
exit $((fails > 0))
