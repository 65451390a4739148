#!/usr/bin/env bash
# demo.sh - qpipe's main job, end to end, on this machine (`make demo`).
#
#  0. installs what is missing (scripts/deps.sh demo) and builds, unless
#     --no-build (then the binaries come from $QP_BIN, default build/bin);
#  1. starts qpiped on a free loopback port;
#  2. runs the seed programs (Python's Queue example on an anonymous
#     queue, the Pipe example) and shows the bridge: a put through qpiped,
#     a get from this host's shared memory;
#  3. a worker pool: a producer (pool_producer) puts generated files, one
#     task each, through qpiped; local workers take them straight from
#     shared memory (shm://NAME), remote workers through qpiped
#     (tcp://127.0.0.1:PORT/NAME): one queue, two paths. The workers are
#     `qpipe worker` running sh -c '... sha256sum ...' per task, and one
#     pool_worker (the same job in C); each puts "ID SHA256 WORKER" on a
#     results queue. local2's command hangs, as a stuck job would, and the
#     demo kills local2 with kill -9 while it holds its task: the task goes
#     back to the queue and another worker does it. Every result is checked
#     against sha256sum run here, and each task must have exactly one.
#
# Exits 0 only when every check passes. Everything it starts it stops by
# PID, and it removes its queues and files, also on failure or Ctrl-C.
# Knobs: QP_DEMO_TASKS (default 2000), QP_DEMO_LOCAL (2 shm workers),
# QP_DEMO_REMOTE (3 tcp workers), QP_DEMO_TIMEOUT (seconds, default 45).
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

build=1
for a in "$@"; do
	case "$a" in
	--no-build) build=0 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "usage: $0 [--no-build]" >&2
		exit 1
		;;
	esac
done
if [ "$build" -eq 1 ]; then
	echo "== 0. Dependencies (scripts/deps.sh demo) and build (make build)"
	scripts/deps.sh demo
	log=$(mktemp /tmp/qpipe-build.XXXXXX)
	if ! make --no-print-directory build >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		rm -f "$log"
		echo "demo: FAILED: the build failed" >&2
		exit 1
	fi
	rm -f "$log"
	echo "   built build/bin/qpiped, qpipe, pool_worker and the examples"
	echo
fi

BIN=$(cd "${QP_BIN:-build/bin}" 2>/dev/null && pwd) || {
	echo "demo: no ${QP_BIN:-build/bin}: build first (make build)" >&2
	exit 1
}
QPIPE=$BIN/qpipe
N=${QP_DEMO_TASKS:-2000}
NL=${QP_DEMO_LOCAL:-2}
NR=${QP_DEMO_REMOTE:-3}
LIMIT=${QP_DEMO_TIMEOUT:-45}
for b in qpiped qpipe queue_hello pipe_hello pool_worker pool_producer; do
	[ -x "$BIN/$b" ] || {
		echo "demo: $BIN/$b is missing: build first (make build)" >&2
		exit 1
	}
done
[ "$NL" -ge 2 ] || NL=2 # local2 is killed on purpose
[ "$NR" -ge 1 ] || NR=1

run="demo$$"
tmp=$(mktemp -d "/tmp/qpipe-demo.XXXXXX")
server_pid=""
producer_pid=""
declare -A wpid=()
# alive PID: the process runs (a zombie, exited and not yet reaped, does not).
alive() {
	local st
	st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
	[ -n "$st" ] && [ "${st#Z}" = "$st" ]
}
# stop PID...: SIGTERM, up to 5 s to exit, then SIGKILL for it and the
# commands it runs; reaps each.
stop() {
	local p kids
	for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "$@"; do
		for _ in $(seq 50); do
			alive "$p" || break
			sleep 0.1
		done
		if alive "$p"; then
			kids=$(ps -o pid= --ppid "$p" 2>/dev/null || true)
			kill -KILL "$p" $kids 2>/dev/null || true
		fi
		wait "$p" 2>/dev/null || true
	done
}
cleanup() {
	trap - EXIT INT TERM
	# the clients first, then the server
	stop "${wpid[@]}" $producer_pid
	for q in tasks tasks.dead results hello; do
		"$QPIPE" rm "shm://$run.$q" 2>/dev/null || true
	done
	[ -z "$server_pid" ] || stop "$server_pid"
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
	echo "demo: FAILED: $*" >&2
	exit 1
}
now_ms() { date +%s%3N; }

echo "== 1. qpiped on loopback"
"$BIN/qpiped" --listen tcp://127.0.0.1:0 --port-file "$tmp/port" \
	2>"$tmp/qpiped.log" &
server_pid=$!
for _ in $(seq 200); do
	[ -s "$tmp/port" ] && break
	kill -0 "$server_pid" 2>/dev/null || break
	sleep 0.025
done
[ -s "$tmp/port" ] || fail "qpiped did not start: $(cat "$tmp/qpiped.log")"
URL=$(head -n 1 "$tmp/port")
echo "   qpiped (pid $server_pid) serves $URL"

echo
echo "== 2. The seed examples"
echo "   Queue: one child puts, another gets (Python's classic example)"
out=$(timeout 20 "$BIN/queue_hello")
echo "     anonymous shared-memory queue: $out"
[ "$out" = "got: hello from a child process" ] || fail "queue_hello printed '$out'"
echo "   The bridge: put through qpiped, get from this host's shared memory"
"$QPIPE" put "$URL/$run.hello" "hello through qpiped"
out=$("$QPIPE" get --timeout 5 "shm://$run.hello")
echo "     qpipe put $URL/$run.hello; qpipe get shm://$run.hello: $out"
[ "$out" = "hello through qpiped" ] || fail "qpipe get printed '$out'"
echo "   Pipe: parent and child talk over a duplex pipe, then end of file"
timeout 20 "$BIN/pipe_hello" >"$tmp/pipe.out" || fail "pipe_hello failed"
sed 's/^/     /' "$tmp/pipe.out"
grep -q "end of file" "$tmp/pipe.out" || fail "pipe_hello saw no end of file"

echo
echo "== 3. A worker pool: $N tasks, $NL local (shm://) + $NR remote (tcp://) workers"
TASKS_SHM="shm://$run.tasks"
TASKS_TCP="$URL/$run.tasks"
RESULTS_TCP="$URL/$run.results"
"$QPIPE" create "$TASKS_SHM"
"$QPIPE" create "$RESULTS_TCP"
# The workload: files of random bytes; the expected results
# come from sha256sum, here, before anything is queued.
mkdir "$tmp/files"
# One blob of random bytes cut after every 128th newline byte: files of
# about 32 KiB (22 to 44 KiB), named f000000, f000001, ...; the first N.
head -c $((N * 40 * 1024)) /dev/urandom | split -a 6 -d -l 128 - "$tmp/files/f"
(cd "$tmp/files" && ls | tail -n +$((N + 1)) | xargs -r rm --)
[ "$(ls "$tmp/files" | wc -l)" -eq "$N" ] || { echo "cannot make $N files" >&2; exit 1; }
(cd "$tmp/files" && sha256sum -- *) |
	awk '{ print $2, $1 }' | sort -k1,1 >"$tmp/expected"
bytes=$(cat "$tmp/files"/* | wc -c)
echo "   generated $N files, $((bytes / 1024)) KiB in all; expected hashes from sha256sum"

# The workers. Most are `qpipe worker`, running a shell command per task
# (the task on its stdin: "ID", a newline, the bytes; its output, the
# result: "ID SHA256 WORKER"); one is examples/pool_worker.c, the same job
# written against the library. local2's command hangs, as a stuck job
# would, so that local2 can be killed while it holds a task.
hash_cmd='read -r id; printf "%s %s %s" "$id" "$(sha256sum | cut -c1-64)" "$WORKER"'
stall_cmd='read -r id; echo "holding task $id" >&2; exec sleep 60'
VICTIM=local2
declare -A wdesc=()
# A worker's results queue is of its tasks' kind (shm:// for a local
# worker: the same queue qpiped serves), so that it stores each result
# and confirms its task in one step (qp_queue_complete).
results_for() { case $1 in shm://*) echo "shm://$run.results" ;; *) echo "$RESULTS_TCP" ;; esac; }
start_cli_worker() { # NAME TASKS COMMAND
	WORKER=$1 "$QPIPE" worker "$2" --results "$(results_for "$2")" \
		-- sh -c "$3" 2>"$tmp/$1.log" &
	wpid[$1]=$!
	wdesc[$1]="qpipe worker $2"
}
start_c_worker() { # NAME TASKS
	"$BIN/pool_worker" --name "$1" "$2" "$(results_for "$2")" 2>"$tmp/$1.log" &
	wpid[$1]=$!
	wdesc[$1]="pool_worker $2"
}
for i in $(seq 1 "$NL"); do
	if [ "local$i" = "$VICTIM" ]; then
		start_cli_worker "local$i" "$TASKS_SHM" "$stall_cmd"
	else
		start_cli_worker "local$i" "$TASKS_SHM" "$hash_cmd"
	fi
done
for i in $(seq 1 "$((NR - 1))"); do
	start_cli_worker "remote$i" "$TASKS_TCP" "$hash_cmd"
done
start_c_worker "remote$NR" "$TASKS_TCP"
for n in $(printf '%s\n' "${!wpid[@]}" | sort); do
	echo "   worker $n (pid ${wpid[$n]}): ${wdesc[$n]}"
done
echo "   (qpipe worker's command: sh -c '$hash_cmd')"
echo

t0=$(now_ms)
(cd "$tmp/files" && exec "$BIN/pool_producer" --batch 32 "$TASKS_TCP" \
	f*) 2>"$tmp/producer.log" &
producer_pid=$!
echo "   producer (pid $producer_pid): $N tasks into $TASKS_TCP, 32 per request"

: >"$tmp/results"
killed="" held=""
deadline=$((t0 + LIMIT * 1000))
last=0
while :; do
	"$QPIPE" get -n 250 --nowait "$RESULTS_TCP" >>"$tmp/results" \
		2>"$tmp/get.err" || [ $? -eq 3 ] || fail "get results: $(cat "$tmp/get.err")"
	got=$(wc -l <"$tmp/results")
	if [ -z "$killed" ] && grep -q "holding task" "$tmp/$VICTIM.log"; then
		held=$(sed -n 's/.*holding task //p' "$tmp/$VICTIM.log" | head -n 1)
		# its command, in a process group of its own, is killed too
		kids=$(ps -o pid= --ppid "${wpid[$VICTIM]}" || true)
		echo "   killing worker $VICTIM (pid ${wpid[$VICTIM]}) with kill -9, on purpose, while it holds task $held"
		kill -9 "${wpid[$VICTIM]}"
		wait "${wpid[$VICTIM]}" 2>/dev/null || true
		for k in $kids; do kill -9 "$k" 2>/dev/null || true; done
		unset "wpid[$VICTIM]"
		killed=1
	fi
	t=$(now_ms)
	if [ $((t - last)) -ge 500 ] || [ "$got" -ge "$N" ]; then
		echo "   progress: $got/$N results after $(((t - t0) / 1000)).$(((t - t0) % 1000 / 100)) s"
		last=$t
	fi
	[ "$got" -ge "$N" ] && break
	[ "$t" -lt "$deadline" ] || fail "only $got of $N results after ${LIMIT} s"
	sleep 0.2
done
t1=$(now_ms)
wait "$producer_pid" || fail "the producer failed: $(cat "$tmp/producer.log")"
producer_pid=""
[ -n "$killed" ] || fail "worker $VICTIM never held a task to be killed with"

# Stop the workers (SIGTERM: each finishes its task at hand), then take
# whatever they still put: a task done twice would show up here.
for n in "${!wpid[@]}"; do kill -TERM "${wpid[$n]}"; done
for n in "${!wpid[@]}"; do
	wait "${wpid[$n]}" || fail "worker $n exited with an error: $(cat "$tmp/$n.log")"
done
wpid=()
"$QPIPE" get -n 100000 --nowait "$RESULTS_TCP" >>"$tmp/results" 2>/dev/null || true

echo
echo "== 4. Checks"
left=$("$QPIPE" size "$TASKS_SHM")
echo "   tasks left in the queue: $left"
[ "$left" -eq 0 ] || fail "$left tasks were never taken"
awk '{ print $1, $2 }' "$tmp/results" | sort -k1,1 >"$tmp/got"
total=$(wc -l <"$tmp/got")
distinct=$(cut -d' ' -f1 "$tmp/got" | sort -u | wc -l)
dups=$((total - distinct))
wrong=$(join -j1 "$tmp/expected" "$tmp/got" | awk '$2 != $3' | wc -l)
matched=$(join -j1 "$tmp/expected" "$tmp/got" | awk '$2 == $3' | wc -l)
missing=$((N - distinct))
echo "   results: $total for $N tasks; $matched match sha256sum, $wrong differ, $dups duplicates, $missing missing"
[ "$total" -eq "$N" ] && [ "$distinct" -eq "$N" ] && [ "$matched" -eq "$N" ] &&
	[ "$wrong" -eq 0 ] || fail "the results do not check out"
redo=$(awk -v id="$held" '$1 == id { print $3 }' "$tmp/results")
echo "   task $held, held by $VICTIM when it was killed: done once, by $redo"
[ -n "$redo" ] && [ "$redo" != "$VICTIM" ] || fail "task $held was not redone by another worker"

ms=$((t1 - t0))
[ "$ms" -gt 0 ] || ms=1
echo
echo "== Summary"
echo "   items:      $N tasks, $((bytes / 1024)) KiB hashed, every result checked against sha256sum"
echo "   workers:    $((NL + NR)) ($NL local on shm://, $NR remote on tcp://; $VICTIM killed with kill -9)"
echo "   per worker:"
awk '{ n[$3]++ } END { for (w in n) printf "     %-8s %5d\n", w, n[w] }' \
	"$tmp/results" | sort
echo "   time:       $((ms / 1000)).$((ms % 1000 / 100)) s from the first put to the last result"
echo "   throughput: $((N * 1000 / ms)) tasks/s, $((bytes * 1000 / ms / 1024)) KiB/s"
echo
echo "demo: ok: $N tasks, $N results, each checked, none lost, none twice"
