#!/usr/bin/env bash
# The seed program: one process sends a string through a duplex pipe, the
# other receives it and prints it (qp_pipe_peer seed, tests/pipe_peer.c).
set -euo pipefail
peer="${QP_BIN:?QP_BIN names the build bin directory}/qp_pipe_peer"
msg="hello from the child process"
out=$("$peer" seed "$msg")
if [ "$out" != "$msg" ]; then
	echo "FAIL: the parent printed '$out', expected '$msg'" >&2
	exit 1
fi
echo "ok: $out"
