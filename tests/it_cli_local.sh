#!/usr/bin/env bash
# it_cli_local.sh - the qpipe CLI against local shared-memory queues, as a
# shell user runs it: binary data, exit codes, timeouts, --lines, -n, --json.
. "$(dirname "$0")/lib.sh"

Q="shm://${QN}a"

# Binary round trip: NUL bytes, invalid UTF-8, then a 0-byte item.
printf 'a\0b\377\376c\n' >"$T/bin"
"$QPIPE" put "$Q" <"$T/bin"
"$QPIPE" get "$Q" >"$T/bin.out"
cmp -s "$T/bin" "$T/bin.out" && ok "binary round trip" || bad "binary round trip" "bytes differ"
: | "$QPIPE" put "$Q"
"$QPIPE" get --nowait "$Q" >"$T/empty.out"
expect_eq "0-byte item" "$(stat -c %s "$T/empty.out")" 0

# A 30 MiB item through stdin and out again.
head -c $((30 * 1024 * 1024)) /dev/urandom >"$T/big"
"$QPIPE" put "$Q" <"$T/big"
"$QPIPE" get "$Q" >"$T/big.out"
cmp -s "$T/big" "$T/big.out" && ok "30 MiB item" || bad "30 MiB item" "bytes differ"

# Over the 32 MiB message limit: exit 5, nothing stored.
head -c $((33 * 1024 * 1024)) /dev/zero >"$T/huge"
expect_rc "over the size limit exits 5" 5 "$QPIPE" put "$Q" <"$T/huge"
expect_eq "nothing stored after a refused put" "$("$QPIPE" size "$Q")" 0

# DATA arguments, FIFO order, size.
"$QPIPE" put "$Q" one two three
expect_eq "size counts items" "$("$QPIPE" size "$Q")" 3
expect_eq "FIFO 1" "$("$QPIPE" get "$Q")" one
expect_eq "FIFO 2" "$("$QPIPE" get "$Q")" two
expect_eq "FIFO 3" "$("$QPIPE" get "$Q")" three

# Empty: --nowait exits 3 at once; --timeout 0.5 after about half a second.
expect_rc "get --nowait on empty exits 3" 3 "$QPIPE" get --nowait "$Q"
t0=$(now_ms)
expect_rc "get --timeout 0.5 on empty exits 3" 3 "$QPIPE" get --timeout 0.5 "$Q"
dt=$(($(now_ms) - t0))
if [ "$dt" -ge 450 ] && [ "$dt" -lt 3000 ]; then ok "timeout took ${dt} ms"; else bad "timeout" "took ${dt} ms"; fi
grep -q "empty after 0.5 s" "$T/err" && ok "empty message names the wait" || bad "empty message" "$(cat "$T/err")"

# Full: a queue of 2 items.
F="shm://${QN}f"
"$QPIPE" create --maxsize 2 "$F"
expect_rc "create again exits 2" 2 "$QPIPE" create "$F"
"$QPIPE" put "$F" a b
expect_rc "put --nowait on full exits 4" 4 "$QPIPE" put --nowait "$F" c
expect_rc "put --timeout 0.2 on full exits 4" 4 "$QPIPE" put --timeout 0.2 "$F" c
expect_eq "full queue kept its items" "$("$QPIPE" size "$F")" 2
# A blocked put finishes when a get makes room.
"$QPIPE" put "$F" c &
putpid=$!
QP_PIDS+=("$putpid")
sleep 0.2
expect_eq "get frees a slot" "$("$QPIPE" get "$F")" a
rc=0
wait "$putpid" || rc=$?
expect_eq "blocked put completed" "$rc" 0
expect_eq "order after blocked put" "$("$QPIPE" get -n 5 --nowait "$F" | tr '\n' ,)" "b,c,"
expect_rc "rm" 0 "$QPIPE" rm "$F"
expect_rc "rm again exits 2" 2 "$QPIPE" rm "$F"

# --lines and -n: a pipeline.
L="shm://${QN}l"
seq 1 1000 | "$QPIPE" put --lines "$L"
expect_eq "--lines put 1000 items" "$("$QPIPE" size "$L")" 1000
want=$(seq 1 1000 | md5sum)
got=$("$QPIPE" get -n 1000 "$L" | sort -n | md5sum)
expect_eq "get -n 1000 | sort | md5sum" "$got" "$want"

# --json round trip.
J="shm://${QN}j"
"$QPIPE" put --json "$J" '{"n": 5, "s": "x\u00e9", "a": [1, -2, 3.5, true, null]}'
got=$("$QPIPE" get --json "$J")
python3 - "$got" <<'PY' && ok "--json round trip" || bad "--json round trip" "$got"
import json, sys
v = json.loads(sys.argv[1])
assert v == {"n": 5, "s": "x\u00e9", "a": [1, -2, 3.5, True, None]}, v
PY
expect_rc "bad JSON exits 1" 1 "$QPIPE" put --json "$J" '{"n": '
expect_eq "bad JSON stored nothing" "$("$QPIPE" size "$J")" 0

# stat is JSON with the figures.
"$QPIPE" put "$J" x y
"$QPIPE" stat "$J" >"$T/stat"
python3 - "$T/stat" <<'PY' && ok "stat JSON" || bad "stat JSON" "$(cat "$T/stat")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["items"] == 2 and s["puts"] >= 2 and s["oldest_age_ms"] >= 0, s
PY

# Usage errors exit 1 with one line on stderr.
expect_rc "no address exits 1" 1 "$QPIPE" get
expect_rc "bad address exits 1" 1 "$QPIPE" get --nowait "shm://a b"
expect_eq "bad address: one stderr line" "$(wc -l <"$T/err")" 1
expect_rc "bad timeout exits 1" 1 "$QPIPE" get --timeout -1 "$Q"
expect_rc "unknown option exits 1" 1 "$QPIPE" get --bogus "$Q"
expect_rc "unknown command exits 1" 1 "$QPIPE" frobnicate
expect_rc "--help exits 0" 0 "$QPIPE" --help
expect_rc "put --help exits 0" 0 "$QPIPE" put --help
expect_rc "--version exits 0" 0 "$QPIPE" --version

# ls shm:// lists this host's queues with their figures.
"$QPIPE" ls shm:// >"$T/ls"
python3 - "$T/ls" "${QN}j" <<'PY' && ok "ls shm:// JSON" || bad "ls shm:// JSON" "$(head -c 300 "$T/ls")"
import json, sys
by = {q["name"]: q for q in json.load(open(sys.argv[1]))}
assert by[sys.argv[2]]["items"] == 2, by.get(sys.argv[2])
PY

# The manual: every command in qpipe --help, and its own --help.
"$QPIPE" --help >"$T/help"
for c in put get size stat ls create rm send recv worker ping; do
	grep -q "^  qpipe $c " "$T/help" || grep -q "^  qpipe $c\$" "$T/help" \
		&& ok "--help shows $c" || bad "--help shows $c" "missing"
	expect_rc "$c --help exits 0" 0 "$QPIPE" "$c" --help
	grep -q "^usage: qpipe $c" "$T/out" && ok "$c --help is its usage" || bad "$c --help" "$(head -2 "$T/out")"
done
"$QPIPE" --version | grep -Eq '^qpipe [0-9]+\.[0-9]+\.[0-9]+$' && ok "--version" || bad "--version" "$("$QPIPE" --version)"

for x in a j l; do "$QPIPE" rm "shm://${QN}$x" 2>/dev/null || true; done
finish
