#!/usr/bin/env bash
# A durable queue (fsync always) that filled its disk recovers (issue 15,
# item 8): qpiped's --data-dir on a 3 MiB tmpfs, then on an 8 MiB ext4
# image mounted through a loop device (both made here, unmounted at the
# end). Fill it until puts fail with ENOSPC, drain it to 0: puts work
# again at once; a kill -9 and restart finds only what was put after the
# drain (the consumed items stay consumed); the disk takes about as many
# items again; a second drain, kill -9 and restart finds the queue empty.
# Nothing acknowledged is lost. Exits 77 (skipped) where a tmpfs cannot
# be mounted (not root, no CAP_SYS_ADMIN); the ext4 round is left out
# (and says so) where mkfs.ext4 or a loop device is missing.
fulldisk_size=3m
. "$(dirname "${BASH_SOURCE[0]}")/fulldisk.sh"

restart() { # kill -9, start again
	kill -9 "$pid"
	wait "$pid" 2>/dev/null
	start
}

round() { # FS: the scenario on the file system mounted at $mnt
	echo "== $1"
	start
	"$tool" create "$url/full" always || bad create "rc $?"

	# Round 1: fill to ENOSPC (1000-byte items, then 1-byte ones to the last
	# byte), drain to 0.
	n=$("$tool" fill "$url/full" 1000 2>"$tmp/fill.err")
	expect "fill ends with ENOSPC" 19 $?
	[ "$n" -gt 1000 ] && ok "filled ($n items)" || bad "filled" "only $n items"
	m=$("$tool" fill "$url/full" 1 2>/dev/null)
	expect "fill to the last byte ends with ENOSPC" 19 $?
	total=$((n + m))
	expect "acknowledged puts stored" "$total" "$("$qt" qsize "$url/full")"
	echo "filled: $n items of 1000 bytes and $m of 1 byte"
	"$tool" drain "$url/full" >"$tmp/drain1"
	expect "drain 1 gets every item" "$total" "$(wc -l <"$tmp/drain1")"
	expect "drained" 0 "$("$qt" qsize "$url/full")"

	# Puts work again once the queue is drained, without a restart.
	"$qt" put "$url/full" after-drain-1 2>"$tmp/put.err"
	expect "put after the drain" 0 $?
	[ -s "$tmp/put.err" ] && cat "$tmp/put.err" >&2

	# Consumed items stay consumed across a kill -9.
	restart
	expect "after kill -9: only the put after the drain" 1 \
		"$("$qt" qsize "$url/full")"

	# The disk takes about as many items again.
	n2=$("$tool" fill "$url/full" 1000 2>/dev/null)
	expect "fill 2 ends with ENOSPC" 19 $?
	[ "$n2" -ge $((n * 3 / 4)) ] && ok "fill 2 stores $n2 items (fill 1: $n)" ||
		bad "fill 2" "$n2 items, fill 1 took $n"
	restart
	expect "after kill -9: acknowledged and not got" $((n2 + 1)) \
		"$("$qt" qsize "$url/full")"
	"$tool" drain "$url/full" >"$tmp/drain2"
	expect "drain 2 gets every item" $((n2 + 1)) "$(wc -l <"$tmp/drain2")"
	expect "drain 2: the put after drain 1 first" after-drain-1 \
		"$(head -1 "$tmp/drain2" | head -c 40)"
	restart
	expect "after drain 2 and kill -9: empty" 0 "$("$qt" qsize "$url/full")"
	"$qt" put "$url/full" after-drain-2
	expect "put after drain 2 and a restart" 0 $?
	expect "count" 1 "$("$qt" qsize "$url/full")"
	kill -TERM "$pid"
	wait "$pid" 2>/dev/null
	pid=
}

round tmpfs
umount "$mnt"
if truncate -s 8M "$tmp/ext4.img" && mkfs.ext4 -q -F "$tmp/ext4.img" \
	>/dev/null 2>&1 && mount -o loop "$tmp/ext4.img" "$mnt" 2>"$tmp/err"; then
	round ext4
else
	echo "ext4 round left out: no mkfs.ext4 or loop device here"
fi
[ "$fails" -eq 0 ] && echo "all passed"
exit $((fails > 0))
