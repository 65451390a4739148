#!/usr/bin/env bash
# kill -9 of qpiped under load loses no acknowledged put of a durable
# queue (fsync=always, its puts group-committed). Two producers
# (qp_durable_tool produce) put items one by one and log each outcome:
# acknowledged (A), or unknown (U: the connection dropped first; it never
# resends). The server is killed QP_KILLS times (3; 20 in the stress
# variant) at random moments and restarted on the same --data-dir and ipc
# path. At the end the queue is
# drained: every acknowledged put must be delivered at least once, nothing
# that was never put may appear, and an item delivered twice is counted,
# allowed only for a put whose outcome the producer never learned.
set -uo pipefail
bin="${QP_BIN:?QP_BIN names the build bin directory}"
tool="$bin/qp_durable_tool"
kills=${QP_KILLS:-3}
tmp=$(mktemp -d)
url="ipc://$tmp/sock"
data="$tmp/data"
pid=
prods=()

cleanup() {
	for p in "${prods[@]}"; do
		kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	tail -n 20 "$tmp"/server*.log >&2
	exit 1
}

start() {
	rm -f "$tmp/port"
	"$bin/qpiped" --listen "$url" --port-file "$tmp/port" \
		--data-dir "$data" 2>>"$tmp/server$1.log" &
	pid=$!
	for _ in $(seq 400); do
		[ -s "$tmp/port" ] && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.025
	done
	fail "qpiped did not start (round $1)"
}

start 0
"$tool" create "$url/kq" always || fail "create"
for p in p1 p2; do
	"$tool" produce "$url/kq" "$tmp/$p.log" 100000000 $((kills * 4 + 30)) \
		"$p" 2>"$tmp/$p.err" &
	prods+=($!)
done

for round in $(seq "$kills"); do
	# A random moment: 150 to 900 ms of load.
	sleep "0.$((150 + RANDOM % 750))"
	for p in "${prods[@]}"; do
		kill -0 "$p" 2>/dev/null ||
			fail "a producer stopped: $(cat "$tmp"/p?.err)"
	done
	kill -9 "$pid"
	wait "$pid" 2>/dev/null
	start "$round"
done
sleep 0.5
for p in "${prods[@]}"; do
	kill -TERM "$p" 2>/dev/null
	wait "$p" 2>/dev/null
done
prods=()

# A loaded machine's disk may stall a restart's first replies a while.
if ! QPIPE_RECONNECT_MS=30000 "$tool" drain "$url/kq" >"$tmp/drained" \
	2>"$tmp/drain.err"; then
	if kill -0 "$pid" 2>/dev/null && command -v gdb >/dev/null; then
		echo "qpiped $pid is alive but did not answer; now:" \
			"$(QPIPE_RECONNECT_MS=3000 "$bin/qps_tool" qsize \
			"$url/kq" 2>&1)" >&2
		echo "its threads:" >&2
		timeout 30 gdb -p "$pid" -batch -ex "thread apply all bt" \
			2>/dev/null | grep -E "^#|^Thread" >&2
	fi
	fail "drain: $(cat "$tmp/drain.err")"
fi
kill -TERM "$pid"
wait "$pid" 2>/dev/null
pid=

python3 - "$tmp/drained" "$tmp/p1.log" "$tmp/p2.log" <<'EOF' || fail "accounting"
import collections, sys
tried, acked, unknown = set(), set(), set()
for path in sys.argv[2:]:
    prefix = path.rsplit("/", 1)[1].split(".")[0]
    for line in open(path):
        tag, n = line.split()
        item = "%s-%08d" % (prefix, int(n))
        {"T": tried, "A": acked, "U": unknown}[tag].add(item)
# A put tried without an answer logged (the producer was stopped in it)
# is unknown too.
unknown |= tried - acked
got = collections.Counter()
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        got[line] += 1
lost = sorted(acked - set(got))
ghosts = sorted(set(got) - tried)
dups = {n: c for n, c in got.items() if c > 1}
bad_dups = sorted(n for n in dups if n not in unknown)
print("acknowledged %d, unknown outcome %d (%d of them stored), "
      "delivered %d, duplicates %d (all of unknown outcome: %s)" %
      (len(acked), len(unknown), len(unknown & set(got)),
       sum(got.values()), len(dups), "yes" if not bad_dups else "NO"))
ok = True
if len(acked) < 50:
    print("too few puts acknowledged to judge"); ok = False
if lost:
    print("LOST acknowledged puts:", lost[:20]); ok = False
if ghosts:
    print("items never put:", ghosts[:20]); ok = False
if bad_dups:
    print("duplicates of acknowledged puts:", bad_dups[:20]); ok = False
sys.exit(0 if ok else 1)
EOF
echo "$kills kills: no acknowledged put lost"
