#!/usr/bin/env bash
# it_examples.sh - the example programs run as a user runs them, and print
# what they promise.
. "$(dirname "$0")/lib.sh"

out=$(timeout 20 "$QP_BIN/queue_hello")
expect_eq "queue_hello, anonymous queue" "$out" "got: hello from a child process"
out=$(timeout 20 "$QP_BIN/queue_hello" "shm://${QN}ex" "across a named queue")
expect_eq "queue_hello, named queue" "$out" "got: across a named queue"
"$QPIPE" rm "shm://${QN}ex"
out=$(timeout 20 "$QP_BIN/pipe_hello")
expect_eq "pipe_hello" "$out" "parent got: hello through a pipe
child got: and hello back
parent's next recv: end of file"
finish
