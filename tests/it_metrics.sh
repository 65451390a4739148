#!/usr/bin/env bash
# it_metrics.sh - qpiped --metrics: the Prometheus text at /metrics checked
# against operations this script made (remote and local shm:// puts, gets,
# a worker's nack and dead-letter, a lease given back when its worker's
# connection dropped, one that ran out), counters kept across a restart,
# server figures (requests by op and result, connections, auth failures),
# `promtool check metrics` on the output, an HTTP client that stalls
# without holding up the queues, and the start-up rule for addresses that
# are not loopback. Exits 77 (skipped) only when promtool is missing, after
# the other checks passed.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"

Q="$QN-m" # puts and gets
D="$QN-d" # a task that fails: nacked, then dead-lettered
K="$QN-k" # a lease given back when its holder's connection drops
E="$QN-e" # a lease that runs out

# metric NAME{LABELS}: the value of one sample of the last scrape ("" if
# none).
metric() {
	awk -v k="$1" '$1 == k { print $2 }' "$T/scrape"
}
scrape() {
	curl -sf "$QP_METRICS/metrics" >"$T/scrape"
}
# wait_metric SAMPLE WANT: scrapes until SAMPLE is WANT (at most 10 s).
wait_metric() {
	local i
	for i in $(seq 1 100); do
		scrape && [ "$(metric "$1")" == "$2" ] && return 0
		sleep 0.1
	done
	return 1
}
# kill_tree PID: SIGKILL to a worker we started and the children it ran.
# The worker goes first: a worker that saw its child die first would give
# the task back itself (a nack, not a disconnect).
kill_tree() {
	local c kids
	kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	for c in $kids; do
		kill -KILL "$c" 2>/dev/null || true
	done
}

command -v curl >/dev/null || {
	echo "curl is missing" >&2
	exit 1
}

mkdir -p "$T/data"
qp_start_server --metrics tcp://127.0.0.1:0 --data-dir "$T/data"
QP_METRICS=$(grep '^http://' "$T/qpiped.port" | head -1)
expect_eq "port file names the metrics URL" \
	"$(printf '%s' "$QP_METRICS" | sed 's/:[0-9]*$//')" "http://127.0.0.1"

# ---- per-queue figures, remote and local traffic alike ----
"$QPIPE" put "$QP_URL/$Q" a b c
"$QPIPE" put "shm://$Q" local1 local2
"$QPIPE" get "$QP_URL/$Q" >/dev/null
"$QPIPE" get "shm://$Q" >/dev/null # a local get: delivered, no lease
scrape
expect_eq "published counts remote and shm:// puts" \
	"$(metric "qpipe_queue_messages_published_total{queue=\"$Q\"}")" 5
expect_eq "ready" "$(metric "qpipe_queue_messages_ready{queue=\"$Q\"}")" 3
expect_eq "delivered counts both gets" \
	"$(metric "qpipe_queue_messages_delivered_total{queue=\"$Q\"}")" 2
expect_eq "confirmed: the remote get's lease" \
	"$(metric "qpipe_queue_messages_confirmed_total{queue=\"$Q\"}")" 1
expect_eq "leased" "$(metric "qpipe_queue_messages_leased{queue=\"$Q\"}")" 0
expect_eq "bytes held" \
	"$(metric "qpipe_queue_messages_bytes{queue=\"$Q\"}")" \
	$((1 + 6 + 6)) # a and b were got: c, local1, local2 are left
expect_eq "capacity bytes" \
	"$(metric "qpipe_queue_capacity_bytes{queue=\"$Q\"}")" 67108864

# ---- a durable queue counts in its state file, beside its log ----
"$QPIPE" create --durable "$QP_URL/$QN-dur"
"$QPIPE" put "$QP_URL/$QN-dur" a b c
"$QPIPE" get "$QP_URL/$QN-dur" >/dev/null
scrape
expect_eq "durable: published, delivered, confirmed" \
	"$(metric "qpipe_queue_messages_published_total{queue=\"$QN-dur\"}") $(metric "qpipe_queue_messages_delivered_total{queue=\"$QN-dur\"}") $(metric "qpipe_queue_messages_confirmed_total{queue=\"$QN-dur\"}")" \
	"3 1 1"
expect_eq "durable: flagged" \
	"$(metric "qpipe_queue_durable{queue=\"$QN-dur\"}")" 1

# ---- a failing task: nacked once, then dead-lettered ----
"$QPIPE" put "$QP_URL/$D" task
"$QPIPE" worker "$QP_URL/$D" --results "$QP_URL/$D-out" --max-attempts 2 \
	--idle-exit 1 -- false 2>"$T/worker.err" || true
scrape
expect_eq "a failed task is nacked" \
	"$(metric "qpipe_queue_messages_nacked_total{queue=\"$D\"}")" 1
expect_eq "then dead-lettered" \
	"$(metric "qpipe_queue_messages_dead_lettered_total{queue=\"$D\"}")" 1
expect_eq "its dead-letter queue holds it" \
	"$(metric "qpipe_queue_messages_ready{queue=\"$D.dead\"}")" 1

# ---- a lease given back when its holder's connection drops ----
"$QPIPE" put "$QP_URL/$K" slow
"$QPIPE" worker "$QP_URL/$K" --results "$QP_URL/$K-out" -- sleep 30 \
	2>/dev/null &
WK=$!
QP_PIDS+=("$WK")
if wait_metric "qpipe_queue_messages_leased{queue=\"$K\"}" 1; then
	ok "a running task is leased"
else
	bad "a running task is leased" "$(grep "$K" "$T/scrape")"
fi
kill_tree "$WK"
if wait_metric \
	"qpipe_queue_messages_redelivered_total{queue=\"$K\",reason=\"disconnect\"}" 1; then
	ok "redelivered after a disconnect"
else
	bad "redelivered after a disconnect" "$(grep "$K" "$T/scrape")"
fi
expect_eq "back in the queue" \
	"$(metric "qpipe_queue_messages_ready{queue=\"$K\"}")" 1

# ---- a lease that runs out: its worker is stopped, not gone ----
"$QPIPE" put "$QP_URL/$E" stuck
"$QPIPE" worker "$QP_URL/$E" --results "$QP_URL/$E-out" --lease 0.5 \
	-- sleep 30 2>/dev/null &
WE=$!
QP_PIDS+=("$WE")
wait_metric "qpipe_queue_messages_leased{queue=\"$E\"}" 1 || true
kill -STOP "$WE"
if wait_metric "qpipe_queue_lease_expiries_total{queue=\"$E\"}" 1; then
	ok "lease expiry counted"
else
	bad "lease expiry counted" "$(grep "$E" "$T/scrape")"
fi
expect_eq "redelivered by lease expiry" \
	"$(metric "qpipe_queue_messages_redelivered_total{queue=\"$E\",reason=\"lease_expiry\"}")" 1
kill_tree "$WE"

# ---- server figures, as deltas of operations made here ----
scrape
p0=$(metric 'qpipe_requests_total{op="put",result="ok"}')
e0=$(metric 'qpipe_requests_total{op="get",result="empty"}')
c0=$(metric 'qpipe_connections_opened_total')
h0=$(metric 'qpipe_request_duration_seconds_count{op="put"}')
for i in 1 2 3 4; do
	"$QPIPE" put "$QP_URL/$Q" "x$i"
done
scrape
expect_eq "connections opened: one per put" \
	"$(metric 'qpipe_connections_opened_total')" $((c0 + 4))
"$QPIPE" get --nowait "$QP_URL/$QN-none" >/dev/null 2>&1 || true
scrape
expect_eq "requests by op and result: put ok" \
	"$(metric 'qpipe_requests_total{op="put",result="ok"}')" $((p0 + 4))
expect_eq "requests by op and result: get empty" \
	"$(metric 'qpipe_requests_total{op="get",result="empty"}')" \
	$((${e0:-0} + 1))
expect_eq "latency histogram counts every put" \
	"$(metric 'qpipe_request_duration_seconds_count{op="put"}')" $((h0 + 4))
expect_eq "its +Inf bucket is its count" \
	"$(metric 'qpipe_request_duration_seconds_bucket{op="put",le="+Inf"}')" \
	$((h0 + 4))
expect_eq "connections open now" "$(metric 'qpipe_connections')" 0
expect_eq "build info" \
	"$(metric "qpipe_build_info{version=\"$("$QPIPED" --version | cut -d' ' -f2)\"}")" 1
if [ "$(metric qpipe_received_bytes_total)" -gt 0 ] &&
	[ "$(metric qpipe_sent_bytes_total)" -gt 0 ]; then
	ok "bytes in and out"
else
	bad "bytes in and out" "$(grep bytes_total "$T/scrape")"
fi
"$QPIPE" get --timeout 5 "$QP_URL/$QN-wait" >/dev/null 2>&1 &
GW=$!
QP_PIDS+=("$GW")
if wait_metric qpipe_requests_waiting 1; then
	ok "a waiting get is counted"
else
	bad "a waiting get is counted" "$(grep waiting "$T/scrape")"
fi
"$QPIPE" put "$QP_URL/$QN-wait" done
wait "$GW" || true

# ---- an HTTP client that stalls holds up nothing ----
port=${QP_METRICS##*:}
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n' >&3 # never finished
exec 4<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n' >&4 # never read
t0=$(now_ms)
"$QPIPE" put --timeout 1 "$QP_URL/$Q" during-stall
"$QPIPE" get --timeout 1 "$QP_URL/$Q" >/dev/null
scrape
t1=$(now_ms)
if [ $((t1 - t0)) -lt 2000 ] && [ -s "$T/scrape" ]; then
	ok "stalled HTTP clients stall no queue ($((t1 - t0)) ms)"
else
	bad "stalled HTTP clients stall no queue" "$((t1 - t0)) ms"
fi
exec 3>&- 4>&-

# ---- a restart keeps the queue's counters (they live in its segment, a
# durable queue's in its state file), a kill -9 too ----
cp "$T/scrape" "$T/before"
pub=$(metric "qpipe_queue_messages_published_total{queue=\"$Q\"}")
kill -KILL "$QP_SERVER_PID"
wait "$QP_SERVER_PID" 2>/dev/null || true
qp_start_server --metrics tcp://127.0.0.1:0 --data-dir "$T/data"
QP_METRICS=$(grep '^http://' "$T/qpiped.port" | head -1)
scrape
expect_eq "a restart keeps the counters" \
	"$(metric "qpipe_queue_messages_published_total{queue=\"$Q\"}")" "$pub"
expect_eq "and the redeliveries" \
	"$(metric "qpipe_queue_messages_redelivered_total{queue=\"$K\",reason=\"disconnect\"}")" 1
expect_eq "and a durable queue's" \
	"$(metric "qpipe_queue_messages_published_total{queue=\"$QN-dur\"}") $(metric "qpipe_queue_messages_delivered_total{queue=\"$QN-dur\"}") $(metric "qpipe_queue_messages_confirmed_total{queue=\"$QN-dur\"}")" \
	"3 1 1"
"$QPIPE" rm "$QP_URL/$QN-dur"
if [ -e "$T/data/$QN-dur.qlog.stat" ] || [ -e "$T/data/$QN-dur.qlog" ]; then
	bad "rm takes the state file with the log" "$(ls "$T/data")"
else
	ok "rm takes the state file with the log"
fi

# ---- authentication failures ----
echo "metrics-token-$$" >"$T/token"
chmod 600 "$T/token"
echo wrong >"$T/wrong"
chmod 600 "$T/wrong"
qp_stop_server
qp_start_server --metrics tcp://127.0.0.1:0 --auth-token-file "$T/token"
QP_METRICS=$(grep '^http://' "$T/qpiped.port" | head -1)
"$QPIPE" --token-file "$T/wrong" ping "$QP_URL" >/dev/null 2>&1 || true
expect_eq "with a token, a scrape without it: 401" \
	"$(curl -s -o /dev/null -w '%{http_code}' "$QP_METRICS/metrics")" 401
expect_eq "and with a wrong one: 401" \
	"$(curl -s -o /dev/null -w '%{http_code}' \
		-H "Authorization: Bearer wrong" "$QP_METRICS/api/status")" 401
curl -sf -H "Authorization: Bearer metrics-token-$$" "$QP_METRICS/metrics" \
	>"$T/scrape" || true
expect_eq "auth failures: the client's and the two scrapes'" \
	"$(metric qpipe_auth_failures_total)" 3
expect_rc "qpipe top with the token" 0 \
	"$QPIPE" top -n 1 --token-file "$T/token" "$QP_METRICS"
expect_rc "qpipe top without it" 2 "$QPIPE" top -n 1 "$QP_METRICS"
if grep -q "wants its token" "$T/err"; then
	ok "qpipe top says the token is wanted"
else
	bad "qpipe top says the token is wanted" "$(cat "$T/err")"
fi

# ---- the start-up rule: not loopback needs a token or --insecure ----
rc=0
"$QPIPED" --listen tcp://127.0.0.1:0 --metrics tcp://0.0.0.0:0 \
	2>"$T/refused.log" &
RP=$!
QP_PIDS+=("$RP")
wait "$RP" || rc=$?
if [ "$rc" -eq 2 ] && grep -q "refusing to serve tcp://0.0.0.0:0" "$T/refused.log"; then
	ok "non-loopback metrics refused without a token"
else
	bad "non-loopback metrics refused without a token" \
		"exit $rc: $(cat "$T/refused.log")"
fi
expect_rc "--metrics takes tcp:// only" 2 \
	"$QPIPED" --metrics "ipc://$T/m.sock" --listen tcp://127.0.0.1:0
if grep -q "expected tcp://HOST:PORT" "$T/err"; then
	ok "--metrics names what it expects"
else
	bad "--metrics names what it expects" "$(cat "$T/err")"
fi

# ---- promtool accepts the text ----
if command -v promtool >/dev/null; then
	for f in before scrape; do
		if promtool check metrics <"$T/$f" >"$T/promtool.out" 2>&1; then
			ok "promtool check metrics ($f)"
		else
			bad "promtool check metrics ($f)" "$(head -c 600 "$T/promtool.out")"
		fi
	done
else
	echo "skip: promtool missing (scripts/deps.sh test installs prometheus)"
	finish || exit 1
	exit 77
fi
finish
