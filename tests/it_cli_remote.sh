#!/usr/bin/env bash
# it_cli_remote.sh - the qpipe CLI against a real qpiped, over tcp:// and
# ipc://: binary round trips (NUL bytes, invalid UTF-8, 0-byte items, a
# 30 MiB item through stdin), every exit code, timeouts, --lines and -n in
# a pipeline, --json, stat, ls and ping.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cli_lib.sh"

qp_start_server --max-message 31M

head -c $((30 * 1024 * 1024)) /dev/urandom >"$T/big"
printf 'a\0b\377\376c\n' >"$T/bin"

for S in "$QP_URL" "$QP_IPC"; do
	L=${S%%:*}
	Q="$S/${QN}a"

	# Binary round trip: NUL bytes, invalid UTF-8, a 0-byte item.
	"$QPIPE" put "$Q" <"$T/bin"
	"$QPIPE" get "$Q" >"$T/bin.out"
	cmp -s "$T/bin" "$T/bin.out" && ok "$L binary round trip" || bad "$L binary round trip" "bytes differ"
	: | "$QPIPE" put "$Q"
	"$QPIPE" get --nowait "$Q" >"$T/empty.out"
	expect_eq "$L 0-byte item" "$(stat -c %s "$T/empty.out")" 0

	# A 30 MiB item through stdin and out again.
	"$QPIPE" put "$Q" <"$T/big"
	"$QPIPE" get "$Q" >"$T/big.out"
	cmp -s "$T/big" "$T/big.out" && ok "$L 30 MiB item" || bad "$L 30 MiB item" "bytes differ"

	# Over the server's 31 MiB limit: exit 5, nothing stored.
	head -c $((32 * 1024 * 1024 - 16)) /dev/zero >"$T/huge"
	expect_rc "$L over the server's size limit exits 5" 5 "$QPIPE" put "$Q" <"$T/huge"
	expect_eq "$L over the limit: one stderr line" "$(wc -l <"$T/err")" 1
	expect_eq "$L nothing stored after a refused put" "$("$QPIPE" size "$Q")" 0

	# DATA arguments in FIFO order.
	"$QPIPE" put "$Q" one two three
	expect_eq "$L size counts items" "$("$QPIPE" size "$Q")" 3
	expect_eq "$L FIFO" "$("$QPIPE" get "$Q"; echo; "$QPIPE" get -n 2 "$Q")" \
		"$(printf 'one\ntwo\nthree')"

	# Empty: exit 3 at once with --nowait, after the timeout otherwise.
	expect_rc "$L get --nowait on empty exits 3" 3 "$QPIPE" get --nowait "$Q"
	t0=$(now_ms)
	expect_rc "$L get --timeout 0.5 on empty exits 3" 3 "$QPIPE" get --timeout 0.5 "$Q"
	dt=$(($(now_ms) - t0))
	if [ "$dt" -ge 480 ] && [ "$dt" -lt 2500 ]; then ok "$L get timeout took ${dt} ms"; else bad "$L get timeout" "took ${dt} ms"; fi
	grep -q "empty after 0.5 s" "$T/err" && ok "$L empty message names the wait" || bad "$L empty message" "$(cat "$T/err")"

	# Full: exit 4 at once, and after a timeout.
	F="$S/${QN}f"
	expect_rc "$L create --maxsize 1" 0 "$QPIPE" create --maxsize 1 "$F"
	expect_rc "$L create again exits 2" 2 "$QPIPE" create "$F"
	"$QPIPE" put "$F" x
	expect_rc "$L put --nowait on full exits 4" 4 "$QPIPE" put --nowait "$F" y
	t0=$(now_ms)
	expect_rc "$L put --timeout 0.3 on full exits 4" 4 "$QPIPE" put --timeout 0.3 "$F" y
	dt=$(($(now_ms) - t0))
	if [ "$dt" -ge 280 ] && [ "$dt" -lt 2500 ]; then ok "$L put timeout took ${dt} ms"; else bad "$L put timeout" "took ${dt} ms"; fi
	grep -q "full after 0.3 s" "$T/err" && ok "$L full message names the wait" || bad "$L full message" "$(cat "$T/err")"

	# Closed: a get waiting on a queue that is removed exits 6.
	"$QPIPE" create "$S/${QN}g"
	"$QPIPE" get --timeout 20 "$S/${QN}g" >/dev/null 2>"$T/gone.err" &
	gp=$!
	QP_PIDS+=("$gp")
	wait_getters "$S/${QN}g" || bad "$L removed queue" "the get never waited"
	"$QPIPE" rm "$S/${QN}g"
	rc=0
	wait "$gp" || rc=$?
	expect_eq "$L get on a removed queue exits 6" "$rc" 6
	expect_eq "$L removed: one stderr line" "$(wc -l <"$T/gone.err")" 1
	expect_rc "$L rm of no queue exits 2" 2 "$QPIPE" rm "$S/${QN}g"
	expect_rc "$L stat of no queue exits 2" 2 "$QPIPE" stat "$S/${QN}g"
	expect_eq "$L size of no queue is 0" "$("$QPIPE" size "$S/${QN}g")" 0

	# The pipeline: seq | put --lines ; get -n | sort | md5sum.
	P="$S/${QN}p"
	seq 1 1000 | "$QPIPE" put --lines "$P"
	expect_eq "$L put --lines stored 1000 items" "$("$QPIPE" size "$P")" 1000
	expect_eq "$L get -n 1000 | sort -n | md5sum" \
		"$("$QPIPE" get -n 1000 "$P" | sort -n | md5sum)" "$(seq 1 1000 | md5sum)"
	expect_eq "$L nothing left after get -n" "$("$QPIPE" size "$P")" 0

	# --json both ways, and JSON in, bytes out.
	J="$S/${QN}j"
	"$QPIPE" put --json "$J" '{"n": 5, "s": "x\u00e9", "a": [1, -2, 3.5, true, null]}' '"text"'
	got=$("$QPIPE" get --json "$J")
	python3 - "$got" <<'PY' && ok "$L --json round trip" || bad "$L --json round trip" "$got"
import json, sys
v = json.loads(sys.argv[1])
assert v == {"n": 5, "s": "x\u00e9", "a": [1, -2, 3.5, True, None]}, v
PY
	expect_eq "$L a JSON string got as bytes is its msgpack" \
		"$("$QPIPE" get "$J" | od -An -tx1 | tr -d ' \n')" "a474657874"
	"$QPIPE" put "$J" raw
	expect_eq "$L bytes got as JSON" "$("$QPIPE" get --json "$J" | tr -d '\n')" '"raw"'
	expect_rc "$L bad JSON exits 1" 1 "$QPIPE" put --json "$J" '{"n": '

	# stat: the figures, as JSON.
	"$QPIPE" put "$J" x yy
	"$QPIPE" stat "$J" >"$T/stat"
	python3 - "$T/stat" <<'PY' && ok "$L stat JSON" || bad "$L stat JSON" "$(cat "$T/stat")"
import json, sys
s = json.load(open(sys.argv[1]))
for k in ("items", "bytes", "maxsize", "capacity", "leased", "unfinished",
          "getters", "putters", "puts", "gets", "oldest_age_ms"):
    assert k in s, k
assert s["items"] == 2 and s["bytes"] >= 3 and s["oldest_age_ms"] >= 0, s
assert s["puts"] >= 5 and s["gets"] >= 3 and s["leased"] == 0, s
PY

	# ls: every queue of the server, with the same figures.
	"$QPIPE" ls "$S" >"$T/ls"
	python3 - "$T/ls" "${QN}j" "${QN}f" <<'PY' && ok "$L ls JSON" || bad "$L ls JSON" "$(head -c 300 "$T/ls")"
import json, sys
v = json.load(open(sys.argv[1]))
by = {q["name"]: q for q in v}
assert by[sys.argv[2]]["items"] == 2, by.get(sys.argv[2])
assert by[sys.argv[3]]["maxsize"] == 1 and by[sys.argv[3]]["items"] == 1
assert all("oldest_age_ms" in q and "getters" in q for q in v)
PY

	# ping: the server answers.
	expect_rc "$L ping the server" 0 "$QPIPE" ping "$S"
	expect_rc "$L ping through a queue address" 0 "$QPIPE" ping "$J"

	for x in a f j p; do "$QPIPE" rm "$S/${QN}$x" 2>/dev/null || true; done
done

# --lines goes in batches: a slow producer's lines go out as they come,
# a last line without its newline counts, and a bounded queue takes
# them all while a consumer makes room.
(echo first; wait_file "$T/go"; printf 'second\nlast') |
	"$QPIPE" put --lines "$QP_URL/${QN}sl" &
sp=$!
QP_PIDS+=("$sp")
for _ in $(seq 1 100); do
	[ "$("$QPIPE" size "$QP_URL/${QN}sl")" = 1 ] && break
	sleep 0.05
done
expect_eq "a slow producer's first line is in at once" "$("$QPIPE" size "$QP_URL/${QN}sl")" 1
touch "$T/go"
wait "$sp"
expect_eq "and the rest, the unterminated last line too" \
	"$("$QPIPE" get -n 5 "$QP_URL/${QN}sl" | tr '\n' ,)" "first,second,last,"
"$QPIPE" create --maxsize 8 "$QP_URL/${QN}bd"
"$QPIPE" get -n 100 --timeout 5 "$QP_URL/${QN}bd" >"$T/bd.out" &
gp=$!
QP_PIDS+=("$gp")
expect_rc "put --lines of 100 into a queue of 8" 0 \
	sh -c "seq 1 100 | '$QPIPE' put --lines --timeout 5 '$QP_URL/${QN}bd'"
wait "$gp" || true
expect_eq "all 100 through the bounded queue, in order" \
	"$(md5sum <"$T/bd.out")" "$(seq 1 100 | md5sum)"
for x in sl bd; do "$QPIPE" rm "$QP_URL/${QN}$x" 2>/dev/null || true; done

# Usage errors exit 1; remote connection errors exit 2, one line each.
expect_rc "bad port exits 1" 1 "$QPIPE" get --nowait "tcp://127.0.0.1:99999/q"
expect_rc "bad queue name exits 1" 1 "$QPIPE" get --nowait "$QP_URL/a%20b"
expect_rc "refused tcp exits 2" 2 "$QPIPE" get --nowait "tcp://127.0.0.1:1/q"
grep -q "connection refused" "$T/err" && ok "refused names the cause" || bad "refused message" "$(cat "$T/err")"
expect_eq "refused: one stderr line" "$(wc -l <"$T/err")" 1
expect_rc "refused put exits 2" 2 "$QPIPE" put "tcp://127.0.0.1:1/q" x
expect_rc "no ipc socket exits 2" 2 "$QPIPE" get --nowait "ipc://$T/none.sock/q"
expect_rc "ping ls: bad address exits 1" 1 "$QPIPE" ping "tcp://"
expect_rc "ping a shm address exits 1" 1 "$QPIPE" ping "shm://${QN}x"

# A stopped server: ping and every command exit 2.
qp_stop_server
expect_rc "ping a stopped server exits 2" 2 "$QPIPE" ping "$QP_URL"
expect_rc "ping a stopped ipc server exits 2" 2 "$QPIPE" ping "$QP_IPC"
expect_rc "ls a stopped server exits 2" 2 "$QPIPE" ls "$QP_URL"
finish
