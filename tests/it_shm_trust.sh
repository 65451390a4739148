#!/usr/bin/env bash
# Shared-memory segments are not trusted blindly (issue 15, item 6), as an
# operator running as root meets it: a segment another user (nobody)
# created first is refused by root's `qpipe put` and by root's qpiped,
# with a message naming the owner, unless --any-owner /
# --shm-any-owner say to trust it; a segment truncated by its owner, or
# whose lock words are scribbled on, while qpiped and a local producer
# hold it, fails that queue with a clear error (exit 2) and kills neither
# process; qpiped goes on serving its other queues. Segments live in a
# directory of this test's own (QPIPE_SHM_DIR). Exits 77 where it cannot
# run as root and as nobody. Every process is stopped by its PID.
. "$(dirname "${BASH_SOURCE[0]}")/failfast.sh"

if [ "$(id -u)" -ne 0 ] ||
	! setpriv --reuid=65534 --regid=65534 --clear-groups \
		"$bin/qpipe" --version >/dev/null 2>&1; then
	echo "skip: needs root and setpriv to run as nobody (65534)"
	exit 77
fi
shm=$(mktemp -d /dev/shm/qpipe-trust.XXXXXX)
chmod 1777 "$shm"
export QPIPE_SHM_DIR="$shm"

cleanup_more() { rm -rf "$shm"; }

# run WANT_RC GREP WHAT CMD...: CMD (killed after 10 s) must exit WANT_RC,
# its stderr matching GREP (empty: anything).
run() {
	local want=$1 pat=$2 what=$3 rc
	shift 3
	timeout -s KILL 10 "$@" >"$tmp/out" 2>"$tmp/cmd.err"
	rc=$?
	[ "$rc" -eq "$want" ] || fail "$what: exit $rc, not $want"
	if [ -n "$pat" ]; then
		grep -q -- "$pat" "$tmp/cmd.err" ||
			fail "$what: stderr lacks '$pat': $(cat "$tmp/cmd.err")"
	fi
	ok "$what"
}

alive() {
	kill -0 "$1" 2>/dev/null || fail "$2 died"
	ok "$2 still runs"
}

# ---- another user's segment ----
setpriv --reuid=65534 --regid=65534 --clear-groups \
	env QPIPE_SHM_DIR="$shm" "$bin/qpipe" create shm://payroll ||
	fail "nobody cannot create shm://payroll"
[ "$(stat -c %u "$shm/qpipe.payroll")" = 65534 ] || fail "not nobody's"
run 2 "owned by uid 65534" "root's put to nobody's segment is refused" \
	"$bin/qpipe" put shm://payroll secret
grep -q secret "$shm/qpipe.payroll" && fail "the item reached the segment"
ok "nothing written into nobody's segment"
run 2 "owned by uid 65534" "root's get is refused too" \
	"$bin/qpipe" get --nowait shm://payroll
run 0 "" "--any-owner trusts it" \
	"$bin/qpipe" put --any-owner shm://payroll trusted

"$bin/qpiped" --listen tcp://127.0.0.1:0 --port-file "$tmp/port" \
	${QP_SERVER_TRANSPORT:+--transport "$QP_SERVER_TRANSPORT"} \
	>"$tmp/qpiped.out" 2>"$tmp/qpiped.log" &
srv=$!
pids+=("$srv")
await_port "$srv" "$tmp/port"
run 2 "owned by uid 65534" "root's qpiped refuses nobody's segment" \
	"$bin/qpipe" put "$url/payroll" secret
grep -q secret "$shm/qpipe.payroll" && fail "the item reached the segment"
run 0 "" "qpiped serves its own queues" \
	"$bin/qpipe" put "$url/other" one
alive "$srv" "qpiped"

"$bin/qpiped" --listen tcp://127.0.0.1:0 --port-file "$tmp/port2" \
	--shm-any-owner >"$tmp/qpiped2.out" 2>"$tmp/qpiped2.log" &
srv2=$!
pids+=("$srv2")
await_port "$srv2" "$tmp/port2" url2
run 0 "" "qpiped --shm-any-owner hosts it" \
	"$bin/qpipe" put "$url2/payroll" trusted2
kill -TERM "$srv2"
wait "$srv2"

# ---- a segment truncated, or scribbled on, while in use ----
# feed NAME: a local producer (qpipe put --lines) on shm://NAME, fed from
# a FIFO on fd 3 (trunc) or 4 (scribble); sets $feeder.
feed() {
	mkfifo "$tmp/$1.in"
	"$bin/qpipe" put --lines "shm://$1" <"$tmp/$1.in" \
		>"$tmp/$1.out" 2>"$tmp/$1.err" &
	feeder=$!
	pids+=("$feeder")
}

# producer_rc PID: sets $rc to the producer's exit code once its next
# line met the damage (10 s at most).
producer_rc() {
	local p=$1
	for _ in $(seq 400); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.025
	done
	kill -0 "$p" 2>/dev/null && fail "the local producer still runs"
	wait "$p"
	rc=$?
}

run 0 "" "create shm://trunc" "$bin/qpipe" create shm://trunc
run 0 "" "create shm://scrib" "$bin/qpipe" create shm://scrib
run 0 "" "qpiped hosts shm://trunc" "$bin/qpipe" put "$url/trunc" a
run 0 "" "qpiped hosts shm://scrib" "$bin/qpipe" put "$url/scrib" a
feed trunc
tp=$feeder
exec 3>"$tmp/trunc.in"
feed scrib
sp=$feeder
exec 4>"$tmp/scrib.in"
echo one >&3
echo one >&4
for _ in $(seq 200); do
	"$bin/qpipe" stat shm://trunc 2>/dev/null |
		grep -q '"items": 2,' && break
	sleep 0.025
done

# The owner (root here, as the file's owner) cuts the file short.
truncate -s 0 "$shm/qpipe.trunc"
echo two >&3
exec 3>&-
producer_rc "$tp"
[ "$rc" -eq 2 ] || fail "truncated: the local producer exited $rc, not 2"
grep -q "truncated" "$tmp/trunc.err" ||
	fail "truncated: producer says: $(cat "$tmp/trunc.err")"
ok "truncated: the local producer fails cleanly (exit 2, no SIGBUS)"
run 2 "truncated" "truncated: qpiped answers an error" \
	"$bin/qpipe" put "$url/trunc" b
run 2 "truncated" "truncated: again, at once" \
	"$bin/qpipe" get --nowait "$url/trunc"
alive "$srv" "qpiped"
grep -q "queue 'trunc' QUARANTINED" "$tmp/qpiped.log" ||
	fail "truncated: qpiped does not log the quarantine"
ok "truncated: qpiped logs the queue quarantined"

# Lock words scribbled on: the producer lock "held" by a thread that is
# no more, as a plain mutex (sq_hdr: the producer side at byte 128; glibc's
# lock word, owner and kind at +0, +8, +16).
python3 - "$shm/qpipe.scrib" <<'EOF' || fail "cannot scribble"
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(128)
    f.write(struct.pack("<iiiii", 0x7ffffff0, 0, 0x7ffffff0, 0, 0))
EOF
echo two >&4
exec 4>&-
producer_rc "$sp"
[ "$rc" -eq 2 ] || fail "scribbled: the local producer exited $rc, not 2"
grep -q "quarantined" "$tmp/scrib.err" ||
	fail "scribbled: producer says: $(cat "$tmp/scrib.err")"
ok "scribbled: the local producer fails cleanly (exit 2)"
run 2 "quarantined" "scribbled: qpiped answers an error" \
	"$bin/qpipe" put "$url/scrib" b
alive "$srv" "qpiped"

run 0 "" "qpiped still serves another queue" \
	"$bin/qpipe" get --nowait "$url/other"
[ "$(cat "$tmp/out")" = one ] || fail "other: got '$(cat "$tmp/out")'"
kill -TERM "$srv"
wait "$srv" || fail "qpiped exited $? on SIGTERM"
ok "qpiped exits 0 on SIGTERM"
