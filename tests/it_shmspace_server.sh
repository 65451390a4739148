#!/usr/bin/env bash
# qpiped serving a queue from a full tmpfs: its segments live on a 4 MiB
# tmpfs mounted here (QPIPE_SHM_DIR). A remote put that finds no memory
# left for the segment is answered with the error (exit 2, "no space
# left"), qpiped stays up (no SIGBUS), the items put before are intact,
# and once a get frees ring room, puts go on. Mounting needs root: without
# it the test is skipped (exit 77).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"

MNT=$(mktemp -d /tmp/qpshm.XXXXXX)
if ! mount -t tmpfs -o size=4m tmpfs "$MNT" 2>"$T/mount.err"; then
	echo "skipped: cannot mount a tmpfs on $MNT: $(cat "$T/mount.err")"
	rmdir "$MNT"
	exit 77
fi
shm_cleanup() {
	qp_cleanup
	umount "$MNT" 2>/dev/null || umount -l "$MNT"
	rmdir "$MNT"
}
trap shm_cleanup EXIT
export QPIPE_SHM_DIR="$MNT"

qp_start_server
Q="$QP_URL/$QN.full"
head -c 262144 /dev/urandom >"$T/item"

expect_rc "create the queue on the small tmpfs" 0 "$QPIPE" create "$Q"
[ -e "$MNT/qpipe.$QN.full" ] && ok "its segment is in QPIPE_SHM_DIR" ||
	bad "its segment is in QPIPE_SHM_DIR" "no $MNT/qpipe.$QN.full"

n=0 rc=0
for _ in $(seq 1 40); do
	rc=0
	"$QPIPE" put "$Q" <"$T/item" >"$T/out" 2>"$T/err" || rc=$?
	[ "$rc" -ne 0 ] && break
	n=$((n + 1))
done
expect_eq "a put into the full tmpfs fails with exit 2" "$rc" 2
grep -q "no space left in $MNT" "$T/err" &&
	ok "the error says the tmpfs is full" ||
	bad "the error says the tmpfs is full" "$(cat "$T/err")"
[ "$n" -ge 4 ] && ok "items went in before ($n)" ||
	bad "items went in before" "only $n"
kill -0 "$QP_SERVER_PID" 2>/dev/null && ok "qpiped is still running" ||
	bad "qpiped is still running" "$(tail -5 "$T/qpiped.log")"
expect_rc "qpiped answers a ping" 0 "$QPIPE" ping "$QP_URL"
expect_eq "the queue holds every item put" "$("$QPIPE" size "$Q" 2>&1)" "$n"

"$QPIPE" get --nowait "$Q" >"$T/got" 2>"$T/err" || true
cmp -s "$T/got" "$T/item" && ok "the first item is intact" ||
	bad "the first item is intact" "$(cat "$T/err")"
expect_rc "a get frees ring room: the next put goes in" 0 \
	"$QPIPE" put "$Q" <"$T/item"
expect_eq "the queue holds them" "$("$QPIPE" size "$Q" 2>&1)" "$n"
for i in $(seq 1 "$n"); do
	"$QPIPE" get --nowait "$Q" >"$T/got" 2>"$T/err" || true
	cmp -s "$T/got" "$T/item" || bad "item $i intact" "$(cat "$T/err")"
done
expect_eq "all read back" "$("$QPIPE" size "$Q" 2>&1)" 0
expect_rc "rm the queue" 0 "$QPIPE" rm "$Q"
qp_stop_server
finish
