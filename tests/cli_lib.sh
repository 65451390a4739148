# tests/cli_lib.sh - helpers of the it_cli_*.sh scripts (sourced after
# lib.sh): a real qpiped on a free tcp port and a fresh ipc path.

# qp_start_server [QPIPED ARGS...]: starts qpiped listening on
# tcp://127.0.0.1:0 and ipc://$T/qpiped.sock; sets QP_URL (tcp), QP_IPC
# (ipc) and QP_SERVER_PID. Its log is $T/qpiped.log. $QP_SERVER_TRANSPORT
# (sp or nng), if set, is its --transport.
qp_start_server() {
	local i
	rm -f "$T/qpiped.port"
	"$QPIPED" --listen tcp://127.0.0.1:0 --listen "ipc://$T/qpiped.sock" \
		--port-file "$T/qpiped.port" \
		${QP_SERVER_TRANSPORT:+--transport "$QP_SERVER_TRANSPORT"} \
		"$@" 2>"$T/qpiped.log" &
	QP_SERVER_PID=$!
	QP_PIDS+=("$QP_SERVER_PID")
	for i in $(seq 1 100); do
		[ -s "$T/qpiped.port" ] && break
		sleep 0.05
	done
	if [ ! -s "$T/qpiped.port" ]; then
		echo "qpiped did not start: $(cat "$T/qpiped.log")" >&2
		exit 1
	fi
	QP_URL=$(grep '^tcp://' "$T/qpiped.port" | head -1)
	QP_IPC=$(grep '^ipc://' "$T/qpiped.port" | head -1)
}

# qp_stop_server: stops the server started last (SIGTERM, by PID).
qp_stop_server() {
	kill -TERM "$QP_SERVER_PID" 2>/dev/null || true
	wait "$QP_SERVER_PID" 2>/dev/null || true
}

# wait_getters ADDR [N]: waits (at most 10 s) until N gets (default 1)
# wait on the queue ADDR, as its stat says; false if they never do.
wait_getters() {
	local i g
	for i in $(seq 1 200); do
		g=$("$QPIPE" stat "$1" 2>/dev/null | sed -n 's/.*"getters": \([0-9]*\).*/\1/p')
		[ -n "$g" ] && [ "$g" -ge "${2:-1}" ] && return 0
		sleep 0.05
	done
	return 1
}

# wait_file FILE: waits (at most 10 s) until FILE exists.
wait_file() {
	local i
	for i in $(seq 1 200); do
		[ -e "$1" ] && return 0
		sleep 0.05
	done
	return 1
}
