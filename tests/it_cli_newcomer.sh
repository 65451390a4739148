#!/usr/bin/env bash
# it_cli_newcomer.sh - the CLI as a newcomer tries it (issue 17, item 4):
# remote options before the command as the help says; a get that creates
# the queue it waits on says so on stderr and in its help; the README's
# worker-pool example prints one line per task; and the usual slips
# (a misspelt command, an address without its scheme, a worker command
# without "--") get a suggestion that fixes them.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cli_lib.sh"

TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$TOKEN" >"$T/token"
chmod 600 "$T/token"
qp_start_server --auth-token-file "$T/token"
S=$QP_URL

# 1. Remote options before the command, or after it: the same.
expect_rc "--token-file before the command: ping" 0 \
	env -u QPIPE_TOKEN "$QPIPE" --token-file "$T/token" ping "$S"
expect_rc "--token-file after the command: ping" 0 \
	env -u QPIPE_TOKEN "$QPIPE" ping --token-file "$T/token" "$S"
expect_rc "--token-file=F before the command: put" 0 \
	env -u QPIPE_TOKEN "$QPIPE" --token-file="$T/token" put "$S/${QN}o" x
expect_eq "the item is there" \
	"$(env -u QPIPE_TOKEN "$QPIPE" --token-file "$T/token" get --nowait "$S/${QN}o")" x
expect_rc "no token: refused (exit 2)" 2 env -u QPIPE_TOKEN "$QPIPE" ping "$S"
expect_rc "--token-file with no file name before the command: usage" 1 \
	"$QPIPE" --token-file
grep -q "token-file wants a file" "$T/err" && ok "it says what --token-file wants" ||
	bad "--token-file alone" "$(cat "$T/err")"
expect_rc "an option that is not global before the command: usage" 1 \
	"$QPIPE" --timeout 1 get jobs
grep -q "goes after the command" "$T/err" && ok "it says where --timeout goes" ||
	bad "--timeout first" "$(cat "$T/err")"

# 2. get on a queue that did not exist: it is created, and stderr says so.
expect_rc "get --nowait on a new local queue exits 3" 3 \
	"$QPIPE" get --nowait "${QN}new"
grep -q "created the queue ${QN}new" "$T/err" &&
	ok "get says it created the local queue" || bad "get on a new queue" "$(cat "$T/err")"
expect_rc "get --nowait again: exit 3" 3 "$QPIPE" get --nowait "${QN}new"
if grep -q "created" "$T/err"; then
	bad "get on an existing queue" "still says created: $(cat "$T/err")"
else
	ok "get on an existing queue says nothing of creating it"
fi
export QPIPE_TOKEN=$TOKEN
expect_rc "get --timeout 0.2 on a new remote queue exits 3" 3 \
	"$QPIPE" get --timeout 0.2 "$S/${QN}rnew"
grep -q "created the queue $S/${QN}rnew" "$T/err" &&
	ok "get says it created the remote queue" || bad "remote get on a new queue" "$(cat "$T/err")"
"$QPIPE" get --help >"$T/help"
grep -q "created" "$T/help" && ok "get --help says a missing queue is created" ||
	bad "get --help" "says nothing of creating the queue"

# 3. The README's worker pool prints what it says: N tasks, N lines.
seq 1 50 | "$QPIPE" put --lines "shm://${QN}tasks"
expect_rc "worker squares 50 tasks" 0 "$QPIPE" worker "shm://${QN}tasks" \
	--results "shm://${QN}results" --idle-exit 0.5 \
	-- sh -c 'read n; echo "$n $((n * n))"'
"$QPIPE" get -n 50 --timeout 5 "shm://${QN}results" >"$T/results"
expect_eq "get -n 50 of the results: 50 lines" "$(wc -l <"$T/results")" 50
expect_eq "no empty line" "$(grep -c '^$' "$T/results" || true)" 0
expect_eq "each line is 'n n*n'" "$(sort -n "$T/results" | sed -n '7p')" "7 49"
# one result alone: get writes the command's line, its newline dropped
"$QPIPE" put "shm://${QN}one" 3
"$QPIPE" worker "shm://${QN}one" --results "shm://${QN}oner" --max-tasks 1 \
	-- sh -c 'read n; echo "$((n * n))"'
expect_eq "one result: the line without its newline" \
	"$("$QPIPE" get "shm://${QN}oner" | od -An -c | tr -s ' ')" " 9"
# --keep-newline: the command's output byte for byte
"$QPIPE" put "shm://${QN}kn" 4
"$QPIPE" worker "shm://${QN}kn" --results "shm://${QN}knr" --max-tasks 1 \
	--keep-newline -- sh -c 'read n; printf "%s\n\n" "$((n * n))"'
expect_eq "--keep-newline keeps every byte" \
	"$("$QPIPE" get "shm://${QN}knr" | od -An -c | tr -s ' ')" " 1 6 \n \n"
# only one newline goes: output that ends in two keeps one
"$QPIPE" put "shm://${QN}two" 5
"$QPIPE" worker "shm://${QN}two" --results "shm://${QN}twor" --max-tasks 1 \
	-- sh -c 'read n; printf "%s\n\n" "$((n * n))"'
expect_eq "a second trailing newline stays" \
	"$("$QPIPE" get "shm://${QN}twor" | od -An -c | tr -s ' ')" " 2 5 \n"

# 4. Suggestions for the usual slips.
expect_rc "qpipe pt: usage" 1 "$QPIPE" pt jobs x
grep -q "did you mean 'put'" "$T/err" && ok "qpipe pt suggests put" || bad "pt" "$(cat "$T/err")"
expect_rc "qpipe stats: usage" 1 "$QPIPE" stats jobs
grep -q "did you mean 'stat'" "$T/err" && ok "qpipe stats suggests stat" || bad "stats" "$(cat "$T/err")"
expect_rc "qpipe frobnicate: usage" 1 "$QPIPE" frobnicate
if grep -q "did you mean" "$T/err"; then
	bad "frobnicate" "suggests something: $(cat "$T/err")"
else
	ok "nothing close to frobnicate: no suggestion"
fi

expect_rc "an address without a scheme: usage" 1 "$QPIPE" put 127.0.0.1:7450/jobs x
grep -q "did you mean tcp://127.0.0.1:7450/jobs" "$T/err" &&
	ok "HOST:PORT/NAME suggests tcp://" || bad "no scheme" "$(cat "$T/err")"
expect_rc "localhost:7450/jobs: usage" 1 "$QPIPE" get --nowait localhost:7450/jobs
grep -q "did you mean tcp://localhost:7450/jobs" "$T/err" &&
	ok "localhost:PORT/NAME suggests tcp://" || bad "no scheme (localhost)" "$(cat "$T/err")"
expect_rc "ping 127.0.0.1:7450: usage" 1 "$QPIPE" ping 127.0.0.1:7450
grep -q "did you mean tcp://127.0.0.1:7450" "$T/err" &&
	ok "ping HOST:PORT suggests tcp://" || bad "ping no scheme" "$(cat "$T/err")"

expect_rc "worker without --: usage" 1 "$QPIPE" worker "${QN}w" \
	--results "${QN}wr" sh -c 'cat'
grep -q -- "put '--' before the command" "$T/err" &&
	grep -q -- "-- sh -c" "$T/err" &&
	ok "worker Q --results R sh -c ... suggests --" || bad "worker without --" "$(cat "$T/err")"
expect_rc "worker without -- (a plain command): usage" 1 "$QPIPE" worker "${QN}w" \
	--results "${QN}wr" cat
grep -q -- "-- cat" "$T/err" && ok "worker Q --results R cat suggests -- cat" ||
	bad "worker cat" "$(cat "$T/err")"
# 5. A server that is not qpiped: a peer that accepts and never answers the
# SP header is given up at --timeout (not after 10 s), one that answers
# with something else is named at once; both say what was found.
/usr/bin/python3 - "$T/fake.port" <<'PY' &
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.settimeout(30)
held = []
try:
    for i in range(2):
        c, _ = s.accept()
        if i == 0:
            held.append(c)  # silent: never answers
        else:
            c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            time.sleep(0.5)
            c.close()
except OSError:
    pass
time.sleep(3)
PY
fake=$!
for _ in $(seq 200); do
	[ -s "$T/fake.port" ] && break
	sleep 0.025
done
fp=$(cat "$T/fake.port")
t0=$(now_ms)
expect_rc "get --timeout 1 from a silent peer: exit 2" 2 \
	"$QPIPE" get --timeout 1 "tcp://127.0.0.1:$fp/jobs"
dt=$(($(now_ms) - t0))
[ "$dt" -lt 4000 ] && ok "a silent peer is given up at --timeout ($dt ms)" ||
	bad "silent peer" "took $dt ms with --timeout 1"
grep -q "is it a qpipe server" "$T/err" && ok "it asks whether it is a qpipe server" ||
	bad "silent peer message" "$(cat "$T/err")"
expect_rc "get --timeout 1 from an HTTP peer: exit 2" 2 \
	"$QPIPE" get --timeout 1 "tcp://127.0.0.1:$fp/jobs"
grep -q "is not a qpipe server: it answered the SP handshake with \"HTTP/1.0\"" "$T/err" &&
	ok "it names what the HTTP peer answered" || bad "HTTP peer message" "$(cat "$T/err")"
kill "$fake" 2>/dev/null || true
wait "$fake" 2>/dev/null || true
finish
