#!/usr/bin/env bash
# it_cli_worker.sh - qpipe worker against the real qpiped (tcp://) and
# against local shared-memory queues (shm://): a command that succeeds, one
# that fails twice then succeeds, one that always fails (dead-lettered),
# a per-task timeout, concurrency, a worker killed with -9 mid-task (its
# task goes to another worker, exactly one result, also to one that was
# waiting already), a stopped worker whose lease runs out, a task longer
# than its lease kept by its worker's renewals, SIGTERM letting
# the running task finish, and a worker that exits when its queue is
# removed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cli_lib.sh"

qp_start_server --lease-ms 30000
S=$QP_URL

# results ADDR: every item of ADDR, one per line, sorted.
results() { "$QPIPE" get -n 100000 --nowait "$1" 2>/dev/null | grep -v '^$' | sort || true; }

# scenarios BASE LABEL: every scenario against queues BASE<name>.
scenarios() {
	local B=$1 L=$2 rc pa pb

	# A command that succeeds: outputs to results, nothing left.
	seq 1 20 | "$QPIPE" put --lines "${B}sq"
	expect_rc "$L worker squares 20 tasks" 0 "$QPIPE" worker "${B}sq" \
		--results "${B}sqr" --idle-exit 0.5 --concurrency 2 \
		-- sh -c 'read n; echo $((n*n))'
	expect_eq "$L results are the squares" \
		"$(results "${B}sqr" | tr '\n' ,)" \
		"$(for i in $(seq 1 20); do echo $((i * i)); done | sort | tr '\n' ,)"
	expect_eq "$L no task left" "$("$QPIPE" size "${B}sq")" 0
	"$QPIPE" stat "${B}sq" >"$T/stat"
	python3 - "$T/stat" <<'PY' && ok "$L nothing leased, all done" || bad "$L stat after work" "$(cat "$T/stat")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["leased"] == 0 and s["unfinished"] == 0 and s["items"] == 0, s
PY

	# Fails twice, then succeeds (a state file per task).
	mkdir -p "$T/st$L"
	"$QPIPE" put "${B}ft" a b
	expect_rc "$L worker with a flaky command" 0 "$QPIPE" worker "${B}ft" \
		--results "${B}ftr" --idle-exit 0.5 --max-attempts 3 \
		-- sh -c 'read id; f='"$T/st$L"'/$id; n=$(cat $f 2>/dev/null || echo 0)
			n=$((n+1)); echo $n >$f; [ $n -ge 3 ] && echo "$id attempt $QPIPE_ATTEMPT"'
	expect_eq "$L flaky tasks done on the third attempt" \
		"$(results "${B}ftr" | tr '\n' ,)" "a attempt 3,b attempt 3,"
	expect_eq "$L flaky: two retries logged per task" \
		"$(grep -c 'back to the queue' "$T/err")" 4
	expect_eq "$L flaky: nothing dead" "$("$QPIPE" size "${B}ft.dead")" 0

	# Always fails: dead-lettered after --max-attempts, one log line.
	printf 'bad\0task' | "$QPIPE" put "${B}af"
	expect_rc "$L worker with a failing command" 0 "$QPIPE" worker \
		"${B}af" --results "${B}afr" --idle-exit 0.5 --max-attempts 2 \
		-- sh -c 'cat >/dev/null; exit 7'
	"$QPIPE" get --nowait "${B}af.dead" >"$T/dead.out"
	printf 'bad\0task' | cmp -s - "$T/dead.out" \
		&& ok "$L NAME.dead holds the task, bytes intact" \
		|| bad "$L NAME.dead" "$(od -c "$T/dead.out" | head -3)"
	expect_eq "$L dead-lettering logged once" \
		"$(grep -c "moved to ${B}af.dead" "$T/err")" 1
	expect_eq "$L failing: no result" "$("$QPIPE" size "${B}afr")" 0
	expect_eq "$L failing: no task left" "$("$QPIPE" size "${B}af")" 0

	# --timeout kills a task that runs too long.
	"$QPIPE" put "${B}to" slow
	t0=$(now_ms)
	expect_rc "$L worker --timeout" 0 "$QPIPE" worker "${B}to" \
		--results "${B}tor" --idle-exit 0.3 --max-attempts 1 \
		--timeout 0.3 -- sleep 20
	dt=$(($(now_ms) - t0))
	if [ "$dt" -lt 5000 ]; then ok "$L timed-out task killed (${dt} ms)"; else bad "$L --timeout" "took ${dt} ms"; fi
	grep -q "timed out after 0.3 s" "$T/err" && ok "$L timeout logged" || bad "$L timeout log" "$(cat "$T/err")"
	expect_eq "$L timed-out task dead-lettered" "$("$QPIPE" size "${B}to.dead")" 1

	# --concurrency: four tasks that each wait for all four to start.
	mkdir -p "$T/cc$L"
	"$QPIPE" put "${B}cc" 1 2 3 4
	expect_rc "$L worker --concurrency 4" 0 "$QPIPE" worker "${B}cc" \
		--results "${B}ccr" --idle-exit 0.5 --concurrency 4 \
		--max-attempts 1 -- sh -c 'read x; touch '"$T/cc$L"'/$x
			for i in $(seq 1 100); do
				[ $(ls '"$T/cc$L"' | wc -l) -ge 4 ] && { echo $x; exit 0; }
				sleep 0.05
			done; exit 1'
	expect_eq "$L four tasks ran at once" "$(results "${B}ccr" | tr '\n' ,)" "1,2,3,4,"

	# --max-tasks: exits after N tasks, the others stay.
	"$QPIPE" put "${B}mt" 1 2 3 4 5
	expect_rc "$L worker --max-tasks 2" 0 "$QPIPE" worker "${B}mt" \
		--results "${B}mtr" --max-tasks 2 -- cat
	expect_eq "$L two results" "$("$QPIPE" size "${B}mtr")" 2
	expect_eq "$L three tasks left" "$("$QPIPE" size "${B}mt")" 3

	# kill -9 mid-task: the task goes to another worker; one result.
	"$QPIPE" put "${B}k9" job
	"$QPIPE" worker "${B}k9" --results "${B}k9r" -- sh -c \
		'read x; touch '"$T/k9$L"'; sleep 3; echo "first $x"' \
		>"$T/wa.out" 2>"$T/wa.err" &
	pa=$!
	QP_PIDS+=("$pa")
	if wait_file "$T/k9$L"; then ok "$L first worker started the task"; else bad "$L kill -9" "task never started"; fi
	kill -9 "$pa"
	wait "$pa" 2>/dev/null || true
	expect_rc "$L second worker takes the task over" 0 "$QPIPE" worker \
		"${B}k9" --results "${B}k9r" --idle-exit 3 --max-tasks 1 \
		-- sh -c 'read x; echo "second $x attempt $QPIPE_ATTEMPT"'
	expect_eq "$L exactly one result after kill -9" \
		"$(results "${B}k9r" | tr '\n' ,)" "second job attempt 2,"
	expect_eq "$L kill -9: no task left" "$("$QPIPE" size "${B}k9")" 0

	# A task whose workers die: after --max-attempts deliveries it is
	# dead-lettered without running again.
	"$QPIPE" put "${B}pz" poison
	"$QPIPE" worker "${B}pz" --results "${B}pzr" -- sh -c \
		'read x; touch '"$T/pz$L"'; sleep 3' >/dev/null 2>&1 &
	pa=$!
	QP_PIDS+=("$pa")
	wait_file "$T/pz$L" || true
	kill -9 "$pa"
	wait "$pa" 2>/dev/null || true
	expect_rc "$L a task redelivered past --max-attempts" 0 "$QPIPE" worker \
		"${B}pz" --results "${B}pzr" --max-attempts 1 --max-tasks 1 \
		--idle-exit 3 -- sh -c 'touch '"$T/pz$L.ran"
	[ -e "$T/pz$L.ran" ] && bad "$L past --max-attempts" "the task ran again" \
		|| ok "$L past --max-attempts: not run again"
	expect_eq "$L past --max-attempts: dead-lettered" "$("$QPIPE" get --nowait "${B}pz.dead")" poison
	grep -q "delivered 2 times" "$T/err" && ok "$L past --max-attempts: logged" \
		|| bad "$L past --max-attempts: log" "$(cat "$T/err")"

	# A stopped worker: its lease (--lease 1) runs out, another takes it.
	"$QPIPE" put "${B}ls" job
	"$QPIPE" worker "${B}ls" --results "${B}lsr" --lease 1 -- sh -c \
		'read x; touch '"$T/ls$L"'; sleep 0.5; echo "first $x"' \
		>"$T/wb.out" 2>"$T/wb.err" &
	pb=$!
	QP_PIDS+=("$pb")
	wait_file "$T/ls$L" || true
	kill -STOP "$pb"
	expect_rc "$L another worker gets the task once the lease ends" 0 \
		"$QPIPE" worker "${B}ls" --results "${B}lsr" --lease 1 \
		--idle-exit 2 --max-tasks 1 -- sh -c 'read x; echo "second $x"'
	kill -9 "$pb"
	kill -CONT "$pb" 2>/dev/null || true
	wait "$pb" 2>/dev/null || true
	expect_eq "$L expired lease: one result" "$(results "${B}lsr" | tr '\n' ,)" "second job,"

	# A task longer than its lease (3 s, --lease 2): its worker renews
	# the lease while it runs, so the worker idle beside it never gets
	# it; done exactly once, at the first attempt.
	"$QPIPE" put "${B}lt" job
	"$QPIPE" worker "${B}lt" --results "${B}ltr" --lease 2 --max-tasks 1 \
		-- sh -c 'read x; touch '"$T/lt$L"'; sleep 3; echo "long $x attempt $QPIPE_ATTEMPT"' \
		>/dev/null 2>"$T/wl.err" &
	pa=$!
	QP_PIDS+=("$pa")
	wait_file "$T/lt$L" || bad "$L long task" "it never started"
	expect_rc "$L idle worker beside a long task" 0 "$QPIPE" worker \
		"${B}lt" --results "${B}ltr" --lease 2 --idle-exit 4.5 \
		-- sh -c 'read x; touch '"$T/lt$L.b"'; echo "second $x"'
	rc=0
	wait "$pa" || rc=$?
	expect_eq "$L long task: its worker exits 0" "$rc" 0
	expect_eq "$L long task: done once, first attempt" \
		"$(results "${B}ltr" | tr '\n' ,)" "long job attempt 1,"
	[ -e "$T/lt$L.b" ] && bad "$L long task" "the idle worker ran it too" \
		|| ok "$L long task: the idle worker never got it"
	expect_eq "$L long task: confirmed" "$("$QPIPE" size "${B}lt")" 0
	"$QPIPE" stat "${B}lt" >"$T/stat"
	python3 - "$T/stat" <<'PY' && ok "$L long task: nothing leased, all done" || bad "$L long task stat" "$(cat "$T/stat")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["leased"] == 0 and s["unfinished"] == 0 and s["items"] == 0, s
PY

	# A worker already waiting takes over the task of a worker killed
	# with -9 (remote: the connection drops; local: the waiting worker
	# sees that the holder is gone), without a get of its own first.
	"$QPIPE" put "${B}kw" job
	"$QPIPE" worker "${B}kw" --results "${B}kwr" -- sh -c \
		'read x; touch '"$T/kw$L"'; sleep 3' >/dev/null 2>&1 &
	pa=$!
	QP_PIDS+=("$pa")
	wait_file "$T/kw$L" || bad "$L waiting worker" "the first never started"
	"$QPIPE" worker "${B}kw" --results "${B}kwr" --max-tasks 1 \
		--idle-exit 10 -- sh -c 'read x; echo "second $x attempt $QPIPE_ATTEMPT"' \
		>/dev/null 2>"$T/wk.err" &
	pb=$!
	QP_PIDS+=("$pb")
	wait_getters "${B}kw" || bad "$L waiting worker" "the second never waited"
	kill -9 "$pa"
	wait "$pa" 2>/dev/null || true
	rc=0
	wait "$pb" || rc=$?
	expect_eq "$L waiting worker takes over, exit 0" "$rc" 0
	expect_eq "$L waiting worker: one result" \
		"$(results "${B}kwr" | tr '\n' ,)" "second job attempt 2,"

	# SIGTERM: the running task finishes, its result is stored, exit 0.
	"$QPIPE" put "${B}st" job
	"$QPIPE" worker "${B}st" --results "${B}str" -- sh -c \
		'read x; touch '"$T/st$L.on"'; sleep 0.5; echo "done $x"' \
		>"$T/wc.out" 2>"$T/wc.err" &
	pb=$!
	QP_PIDS+=("$pb")
	wait_file "$T/st$L.on" || true
	kill -TERM "$pb"
	rc=0
	wait "$pb" || rc=$?
	expect_eq "$L SIGTERM: exit 0 after the task" "$rc" 0
	expect_eq "$L SIGTERM: the running task's result" "$(results "${B}str")" "done job"
	expect_eq "$L SIGTERM: task confirmed" "$("$QPIPE" size "${B}st")" 0

	# A second SIGINT exits at once (130); the task goes to the next worker.
	"$QPIPE" put "${B}si" job
	"$QPIPE" worker "${B}si" --results "${B}sir" -- sh -c \
		'read x; touch '"$T/si$L"'; sleep 3; echo "late $x"' \
		>/dev/null 2>"$T/wf.err" &
	pb=$!
	QP_PIDS+=("$pb")
	wait_file "$T/si$L" || true
	kill -INT "$pb"
	sleep 0.2
	kill -INT "$pb"
	rc=0
	wait "$pb" || rc=$?
	expect_eq "$L a second SIGINT exits 130" "$rc" 130
	expect_rc "$L the interrupted task goes to the next worker" 0 "$QPIPE" \
		worker "${B}si" --results "${B}sir" --max-tasks 1 --idle-exit 3 \
		-- sh -c 'read x; echo "again $x"'
	expect_eq "$L interrupted task: one result" "$(results "${B}sir")" "again job"

	# The queue is removed under an idle worker: it exits 6.
	"$QPIPE" create "${B}rm"
	"$QPIPE" worker "${B}rm" --results "${B}rmr" --idle-exit 20 -- cat \
		>/dev/null 2>"$T/wd.err" &
	pb=$!
	QP_PIDS+=("$pb")
	wait_getters "${B}rm" || bad "$L removed queue" "the worker never waited"
	"$QPIPE" rm "${B}rm"
	rc=0
	wait "$pb" || rc=$?
	expect_eq "$L removed queue: worker exits 6" "$rc" 6

	for q in sq sqr ft ftr ft.dead af afr af.dead to tor to.dead cc ccr mt \
		mtr k9 k9r pz pzr pz.dead ls lsr lt ltr kw kwr st str si sir rmr; do
		"$QPIPE" rm "${B}$q" 2>/dev/null || true
	done
}

scenarios "$S/${QN}" tcp
scenarios "shm://${QN}" shm

# A local (shm://) worker killed mid-task while only a remote worker is
# left: the dead process's lease returns (qpiped's sweep, about once a
# second, or the segment's own dead-holder scan, whichever comes first),
# and the remote worker runs the task; exactly one result.
"$QPIPE" create "$S/${QN}mx"
"$QPIPE" put "shm://${QN}mx" job
"$QPIPE" worker "shm://${QN}mx" --results "$S/${QN}mxr" -- sh -c \
	'read x; touch '"$T/mx"'; sleep 30' >/dev/null 2>&1 &
pa=$!
QP_PIDS+=("$pa")
wait_file "$T/mx" && ok "local worker started the task" || bad "local worker" "never started"
kill -9 "$pa"
wait "$pa" 2>/dev/null || true
t0=$(date +%s%N)
expect_rc "a remote worker takes over the killed local worker's task" 0 \
	"$QPIPE" worker "$S/${QN}mx" --results "$S/${QN}mxr" --idle-exit 5 \
	--max-tasks 1 -- sh -c 'read x; echo "remote $x"'
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$ms" -lt 4000 ] && ok "taken over in $ms ms" || bad "take-over time" "$ms ms"
expect_eq "exactly one result after the local kill -9" \
	"$(results "$S/${QN}mxr" | tr '\n' ,)" "remote job,"
"$QPIPE" rm "$S/${QN}mx" 2>/dev/null || true
"$QPIPE" rm "$S/${QN}mxr" 2>/dev/null || true

# --json: the task reaches the command as JSON text, its output is
# parsed as JSON and stored as a value.
"$QPIPE" put --json "$S/${QN}js" '{"n": 3}'
expect_rc "worker --json" 0 "$QPIPE" worker --json "$S/${QN}js" \
	--results "$S/${QN}jsr" --max-tasks 1 -- sed 's/3/9/'
expect_eq "worker --json result" \
	"$("$QPIPE" get --json --nowait "$S/${QN}jsr" | tr -d ' \n')" '{"n":9}'
"$QPIPE" rm "$S/${QN}js" 2>/dev/null || true
"$QPIPE" rm "$S/${QN}jsr" 2>/dev/null || true

# Usage errors.
expect_rc "worker without --results exits 1" 1 "$QPIPE" worker "$S/${QN}u" -- cat
expect_rc "worker without a command exits 1" 1 "$QPIPE" worker "$S/${QN}u" --results "$S/${QN}v"
expect_rc "worker with a missing command exits 1" 1 "$QPIPE" worker "$S/${QN}u" \
	--results "$S/${QN}v" -- /nonexistent/cmd
expect_rc "worker --concurrency 0 exits 1" 1 "$QPIPE" worker "$S/${QN}u" \
	--results "$S/${QN}v" --concurrency 0 -- cat
expect_rc "worker --help exits 0" 0 "$QPIPE" worker --help
expect_rc "worker on a refused server exits 2" 2 "$QPIPE" worker \
	"tcp://127.0.0.1:1/${QN}u" --results "$S/${QN}v" -- cat
finish
