# tests/fulldisk.sh - the prologue of the full-disk scripts (sourced by
# it_durable_full and it_durable_enospc): qpiped's --data-dir on a tmpfs
# of $fulldisk_size (set before sourcing) mounted at $mnt, unmounted on
# exit; exits 77 (skipped) where it cannot be mounted. Sets $bin, $tool
# (qp_durable_tool), $qt (qps_tool), $tmp, $url (an ipc:// address in
# $tmp) and $pid (the running qpiped, killed on exit). Checks are
# recorded: ok NAME, bad NAME MSG, expect NAME WANT GOT; $fails counts
# the failures.
set -uo pipefail
bin="${QP_BIN:?QP_BIN names the build bin directory}"
tool="$bin/qp_durable_tool"
qt="$bin/qps_tool"
tmp=$(mktemp -d)
mnt="$tmp/mnt"
url="ipc://$tmp/sock"
pid=
fails=0

cleanup() {
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	mountpoint -q "$mnt" && umount "$mnt"
	rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$mnt"
if ! mount -t tmpfs -o "size=$fulldisk_size" tmpfs "$mnt" 2>"$tmp/err"; then
	echo "SKIP: cannot mount a small tmpfs here ($(cat "$tmp/err")):" \
		"the full-disk test needs root with CAP_SYS_ADMIN"
	exit 77
fi

ok() { echo "ok   $1"; }
bad() {
	echo "FAIL $1: $2" >&2
	fails=$((fails + 1))
}
expect() { # NAME WANT GOT
	if [ "$2" == "$3" ]; then ok "$1"; else bad "$1" "got '$3', wanted '$2'"; fi
}

# start: qpiped on $url with --data-dir $mnt/data; sets $pid.
start() {
	rm -f "$tmp/port"
	"$bin/qpiped" --listen "$url" --port-file "$tmp/port" \
		--data-dir "$mnt/data" 2>>"$tmp/server.log" &
	pid=$!
	for _ in $(seq 200); do
		[ -s "$tmp/port" ] && return 0
		sleep 0.025
	done
	echo "FAIL: qpiped did not start" >&2
	cat "$tmp/server.log" >&2
	exit 1
}
