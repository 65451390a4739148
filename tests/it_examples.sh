#!/usr/bin/env bash
# it_examples.sh - the example programs run as a user runs them, and print
# what they promise.
. "$(dirname "$0")/lib.sh"

out=$(timeout 20 "$QP_BIN/queue_hello")
expect_eq "queue_hello, anonymous queue" "$out" "got: hello from a child process"
out=$(timeout 20 "$QP_BIN/queue_hello" "shm://${QN}ex" "across a named queue")
expect_eq "queue_hello, named queue" "$out" "got: across a named queue"
"$QPIPE" rm "shm://${QN}ex"

# The same over qpiped (tcp and ipc): each child opens its own handle.
"$QPIPED" --listen tcp://127.0.0.1:0 --listen "ipc://$T/ex.sock" \
	--port-file "$T/ex.port" 2>"$T/ex.log" &
QP_PIDS+=("$!")
for _ in $(seq 200); do
	[ -s "$T/ex.port" ] && break
	sleep 0.025
done
url=$(head -n 1 "$T/ex.port")
out=$(timeout 20 "$QP_BIN/queue_hello" "$url/${QN}ext" "across tcp" 2>&1)
expect_eq "queue_hello, tcp queue" "$out" "got: across tcp"
out=$(timeout 20 "$QP_BIN/queue_hello" "ipc://$T/ex.sock/${QN}exi" "across ipc" 2>&1)
expect_eq "queue_hello, ipc queue" "$out" "got: across ipc"
expect_eq "queue_hello, tcp queue left empty" \
	"$("$QPIPE" size "$url/${QN}ext")" "0"
out=$(timeout 20 "$QP_BIN/pipe_hello")
expect_eq "pipe_hello" "$out" "parent got: hello through a pipe
child got: and hello back
parent's next recv: end of file"
finish
