#!/usr/bin/env bash
# qpiped started on two CPUs runs two event loops ("qpiped-loop" threads);
# pinned to one CPU afterwards (taskset -p, as a cgroup's cpuset can
# change under a running container), it gives every new connection to
# the first loop only: two loops on one CPU would only take turns. Four
# clients putting for a second each over fresh connections: one loop
# thread does the work and the other stays idle, and every put is
# answered. Needs two CPUs (exits 77, reported skipped, with fewer).
. "$(dirname "${BASH_SOURCE[0]}")/failfast.sh"
export QPIPE_SHM_DIR="$tmp/shm"
mkdir -p "$QPIPE_SHM_DIR"

cpus=$(python3 -c 'import os; print(",".join(map(str, sorted(os.sched_getaffinity(0))[:2])))')
first=${cpus%%,*}
if [ "$cpus" = "$first" ]; then
	echo "skip: one CPU only"
	exit 77
fi

taskset -c "$cpus" "$bin/qpiped" --listen tcp://127.0.0.1:0 \
	--port-file "$tmp/port" --log-level warn >"$tmp/server.out" \
	2>"$tmp/server.log" &
srv=$!
pids+=("$srv")
await_port "$srv" "$tmp/port"

loops=()
for t in /proc/"$srv"/task/*; do
	[ "$(cat "$t/comm" 2>/dev/null)" = qpiped-loop ] && loops+=("${t##*/}")
done
[ "${#loops[@]}" -eq 2 ] || fail "${#loops[@]} loop threads on two CPUs, not 2"
ok "two loop threads on two CPUs"

taskset -a -p -c "$first" "$srv" >/dev/null || fail "taskset -p"
"$bin/qpipe" create "$url/aff" >/dev/null || fail "create"

# ticks LOOP: the loop thread's CPU time so far, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$srv/task/$1/stat"; }
before=()
for t in "${loops[@]}"; do before+=("$(ticks "$t")"); done

cl=()
for i in 1 2 3 4; do
	"$bin/qp_durable_tool" rate "$url/aff" 1 64 >"$tmp/rate$i.out" \
		2>"$tmp/rate$i.log" &
	cl+=($!)
	pids+=($!)
done
for p in "${cl[@]}"; do
	wait "$p" || fail "a client failed"
done
for i in 1 2 3 4; do
	[ "$(cut -d. -f1 <"$tmp/rate$i.out")" -gt 100 ] 2>/dev/null ||
		fail "client $i: $(cat "$tmp/rate$i.out")"
done
ok "four clients put for a second each"

busy=0 idle=0
for k in 0 1; do
	d=$(($(ticks "${loops[$k]}") - ${before[$k]}))
	echo "loop $k: $d ticks"
	if [ "$d" -ge 20 ]; then
		busy=$((busy + 1))
	elif [ "$d" -le 2 ]; then
		idle=$((idle + 1))
	fi
done
[ "$busy" -eq 1 ] && [ "$idle" -eq 1 ] ||
	fail "after the pin to one CPU: $busy loops busy, $idle idle (want 1 and 1)"
ok "one loop serves the connections made after the pin"
