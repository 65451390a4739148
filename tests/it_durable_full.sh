#!/usr/bin/env bash
# A full disk under a durable queue: qpiped's --data-dir on a small tmpfs
# (made here, unmounted at the end). Puts fail with ENOSPC and a message
# saying so, nothing is acknowledged that is not stored, gets go on, and
# once space returns puts work again; a restart finds exactly the items
# acknowledged and not got. Exits 77 (skipped) where a tmpfs cannot be
# mounted (not root, no CAP_SYS_ADMIN).
fulldisk_size=512k
. "$(dirname "${BASH_SOURCE[0]}")/fulldisk.sh"

# Room to give back later.
dd if=/dev/zero of="$mnt/filler" bs=1k count=64 status=none
start
"$tool" create "$url/full" always || bad create "rc $?"
n=$("$tool" fill "$url/full" 1000 2>"$tmp/fill.err")
expect "fill ends with ENOSPC" 19 $?
grep -q "no space left" "$tmp/fill.err" && ok "ENOSPC message" ||
	bad "ENOSPC message" "$(cat "$tmp/fill.err")"
[ "$n" -gt 100 ] && ok "filled ($n items)" || bad "filled" "only $n items"
# Then to the last byte, with 1-byte items: not even a confirmation of a
# get fits any more.
m=$("$tool" fill "$url/full" 1 2>/dev/null)
expect "fill to the last byte ends with ENOSPC" 19 $?
n=$((n + m))
expect "only acknowledged puts stored" "$n" "$("$qt" qsize "$url/full")"
"$qt" put "$url/full" "$(head -c 1000 /dev/zero | tr "\\0" f)" 2>/dev/null
expect "put on a full disk: ENOSPC" 19 $?
kill -0 "$pid" && ok "server still up" || bad "server still up" "gone"
# Gets go on.
for i in 1 2 3; do
	[ "$("$qt" get "$url/full" | head -c 4)" == ffff ] || bad "get $i" "no item"
done
expect "gets on a full disk" $((n - 3)) "$("$qt" qsize "$url/full")"
# Space returns.
rm -f "$mnt/filler"
"$qt" put "$url/full" back
expect "put once space returns" 0 $?
expect "count" $((n - 2)) "$("$qt" qsize "$url/full")"
kill -9 "$pid"
wait "$pid" 2>/dev/null
start
expect "after a restart: acknowledged and not got" $((n - 2)) \
	"$("$qt" qsize "$url/full")"
kill -TERM "$pid"
wait "$pid" 2>/dev/null
pid=
[ "$fails" -eq 0 ] && echo "all passed"
exit $((fails > 0))
