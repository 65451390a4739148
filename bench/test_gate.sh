#!/usr/bin/env bash
# bench_remote's many-client runs (clients.c) time only the traffic: each
# client process connects, and all start together once the last one has.
# Here each client connects 150 ms after the one before
# (QPIPE_BENCH_STAGGER_MS), over a second of stagger in all. With 4
# producers and 4 consumers the timed part stays well under it; with the
# clock started at the first client's first request, it took the stagger
# in (0.6 s). 8 consumers of a filled queue take every item once. A client
# that cannot connect ends the run with its error, without waiting for
# the others.
. "$(dirname "${BASH_SOURCE[0]}")/../tests/failfast.sh"
export QPIPE_SHM_DIR="$tmp/shm"
mkdir -p "$QPIPE_SHM_DIR"

"$bin/qpiped" --listen tcp://127.0.0.1:0 --port-file "$tmp/port" \
	--log-level warn >"$tmp/server.out" 2>"$tmp/server.log" &
srv=$!
pids+=("$srv")
await_port "$srv" "$tmp/port"

# field JSON KEY: a number from bench_remote's JSON line.
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# run ARGS...: one mp run with the stagger; its JSON line.
run() {
	QPIPE_BENCH_STAGGER_MS=150 timeout 120 "$bin/bench_remote" \
		--url "$url" --mode mp --size 64 --timeout 60 "$@" 2>"$tmp/bench.err"
}

out=$(run --producers 0 --consumers 8 --count 800) ||
	fail "8 consumers: $out $(cat "$tmp/bench.err")"
[ "$(field "$out" items)" = 800 ] && [ "$(field "$out" left)" = 0 ] ||
	fail "8 consumers: $out"
ok "8 consumers connecting 150 ms apart took every item once"

out=$(run --producers 4 --consumers 4 --count 200) ||
	fail "4x4: $out $(cat "$tmp/bench.err")"
python3 -c 'import sys; sys.exit(not float(sys.argv[1]) < 0.5)' \
	"$(field "$out" seconds)" ||
	fail "4 producers, 4 consumers, 1.05 s of stagger: timed $(field "$out" seconds) s"
ok "4 producers and 4 consumers: $(field "$out" seconds) s timed"

# A port nothing listens on: every client fails to connect.
closed=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
t0=$(date +%s)
if out=$(timeout 60 "$bin/bench_remote" --url "tcp://127.0.0.1:$closed" \
	--mode mp --producers 2 --consumers 2 --count 10 --size 64 \
	--timeout 30 2>/dev/null); then
	fail "a run against a closed port succeeded: $out"
fi
case $out in
*connect*) ;;
*) fail "no connect error: $out" ;;
esac
[ $(($(date +%s) - t0)) -lt 20 ] || fail "the failed run took $(($(date +%s) - t0)) s"
ok "a closed port: the run fails at once ($out)"
