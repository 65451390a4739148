#!/usr/bin/env bash
# it_cli_pipe.sh - qpipe send and recv over pipes named on a real qpiped,
# over tcp:// and ipc://: binary messages both ways round (sender first,
# receiver first), several messages, --json, end of file (exit 6), a recv
# timeout (exit 3) and the errors for addresses with no server.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cli_lib.sh"

qp_start_server

printf 'a\0b\377\376c\n' >"$T/bin"
head -c $((5 * 1024 * 1024)) /dev/urandom >"$T/big"

for S in "$QP_URL" "$QP_IPC"; do
	L=${S%%:*}

	# Sender first: the pipe holds the message until it is read.
	"$QPIPE" send "$S/${QN}${L}p1" <"$T/bin"
	"$QPIPE" recv "$S/${QN}${L}p1" >"$T/p1.out"
	cmp -s "$T/bin" "$T/p1.out" && ok "$L send then recv, binary" || bad "$L send then recv" "bytes differ"

	# Receiver first: it waits for the message.
	"$QPIPE" recv "$S/${QN}${L}p2" >"$T/p2.out" 2>"$T/p2.err" &
	rp=$!
	QP_PIDS+=("$rp")
	sleep 0.2
	"$QPIPE" send "$S/${QN}${L}p2" <"$T/big"
	rc=0
	wait "$rp" || rc=$?
	expect_eq "$L recv waited, exit 0" "$rc" 0
	cmp -s "$T/big" "$T/p2.out" && ok "$L recv then send, 5 MiB" || bad "$L recv then send" "bytes differ"

	# Several messages, in order; a 0-byte one.
	"$QPIPE" send "$S/${QN}${L}p3" one two '' three
	expect_eq "$L four messages in order" "$("$QPIPE" recv -n 4 "$S/${QN}${L}p3" | tr '\n' ,)" "one,two,,three,"

	# --json both ways.
	"$QPIPE" send --json "$S/${QN}${L}p4" '{"k": [1, "x"]}'
	expect_eq "$L --json message" "$("$QPIPE" recv --json "$S/${QN}${L}p4" | tr -d ' \n')" '{"k":[1,"x"]}'

	# A timeout: exit 3, within tolerance.
	t0=$(now_ms)
	expect_rc "$L recv --timeout 0.4 exits 3" 3 "$QPIPE" recv --timeout 0.4 "$S/${QN}${L}p5"
	dt=$(($(now_ms) - t0))
	if [ "$dt" -ge 380 ] && [ "$dt" -lt 2500 ]; then ok "$L recv timeout took ${dt} ms"; else bad "$L recv timeout" "took ${dt} ms"; fi
	grep -q "no message after 0.4 s" "$T/err" && ok "$L timeout message" || bad "$L timeout message" "$(cat "$T/err")"
	expect_rc "$L recv --nowait exits 3" 3 "$QPIPE" recv --nowait "$S/${QN}${L}p8"

	# End of file: the other end opens and closes with nothing sent.
	"$QPIPE" recv "$S/${QN}${L}p6" >/dev/null 2>"$T/p6.err" &
	rp=$!
	QP_PIDS+=("$rp")
	sleep 0.2
	"$QPIPE" recv --nowait "$S/${QN}${L}p6" 2>/dev/null || true
	rc=0
	wait "$rp" || rc=$?
	expect_eq "$L recv at end of file exits 6" "$rc" 6
	grep -q "end of file" "$T/p6.err" && ok "$L end of file named" || bad "$L end of file message" "$(cat "$T/p6.err")"

	# Both sides taken: a third end is refused (exit 2). The holders
	# must have opened first: on a loaded machine give them longer and
	# a fresh pipe each time.
	rc=0
	for wait in 0.3 0.8 2 4; do
		n="$S/${QN}${L}p7w${wait}"
		"$QPIPE" recv "$n" >/dev/null 2>&1 &
		ra=$!
		QP_PIDS+=("$ra")
		"$QPIPE" recv "$n" >/dev/null 2>&1 &
		rb=$!
		QP_PIDS+=("$rb")
		sleep "$wait"
		rc=0
		"$QPIPE" send "$n" x >/dev/null 2>"$T/third.err" || rc=$?
		kill "$ra" "$rb" 2>/dev/null || true
		wait "$ra" "$rb" 2>/dev/null || true
		[ "$rc" -eq 0 ] || break
	done
	expect_eq "$L a third end exits 2" "$rc" 2
	grep -q "busy\|taken\|held" "$T/third.err" && ok "$L a third end: the cause named" \
		|| bad "$L a third end: the cause" "$(cat "$T/third.err")"
done

expect_rc "send over a refused server exits 2" 2 "$QPIPE" send "tcp://127.0.0.1:1/${QN}p" x
expect_rc "recv over a refused server exits 2" 2 "$QPIPE" recv "tcp://127.0.0.1:1/${QN}p"
expect_rc "a local named pipe is a usage error" 1 "$QPIPE" send "shm://${QN}p" x
expect_rc "recv --side 2 exits 1" 1 "$QPIPE" recv --side 2 "$QP_URL/${QN}p"
expect_rc "send --help exits 0" 0 "$QPIPE" send --help
expect_rc "recv --help exits 0" 0 "$QPIPE" recv --help
finish
