#!/usr/bin/env bash
# it_cli_auth.sh - the CLI's --token-file, $QPIPE_TOKEN, --tls-ca and
# --insecure-skip-verify against a real qpiped that asks for a token and
# serves tls+tcp://: the right token works for every command (put, get,
# ls, ping, send/recv, worker), a wrong or missing one exits 2 naming the
# cause; TLS verifies with the given CA, fails (exit 2) without it, and
# --insecure-skip-verify gets through. Where openssl cannot make
# certificates the TLS part is skipped.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cli_lib.sh"

printf 'cli-token-%s\n' "$QN" >"$T/token"
printf 'not-the-token\n' >"$T/wrong"
chmod 600 "$T/token" "$T/wrong"
good=$(head -n 1 "$T/token")

qp_start_server --auth-token-file "$T/token"
S=$QP_URL
Q="$S/${QN}q"
unset QPIPE_TOKEN

# The right token, from a file or the environment.
expect_rc "put --token-file" 0 "$QPIPE" put --token-file "$T/token" "$Q" hello
expect_rc "get with QPIPE_TOKEN" 0 env QPIPE_TOKEN="$good" "$QPIPE" get --nowait "$Q"
expect_eq "the item" "$(cat "$T/out")" hello
expect_rc "token option before the command's address" 0 \
	"$QPIPE" size "$Q" --token-file "$T/token"
expect_rc "ls --token-file" 0 "$QPIPE" ls --token-file "$T/token" "$S"
expect_rc "ping --token-file" 0 "$QPIPE" ping --token-file "$T/token" "$S"

# A wrong or missing token: exit 2, one line naming the cause.
expect_rc "wrong token exits 2" 2 "$QPIPE" put --token-file "$T/wrong" "$Q" x
grep -qi "token\|auth" "$T/err" && ok "wrong token named" || bad "wrong token named" "$(cat "$T/err")"
expect_eq "wrong token: one stderr line" "$(wc -l <"$T/err")" 1
expect_rc "wrong QPIPE_TOKEN exits 2" 2 env QPIPE_TOKEN=nope "$QPIPE" get --nowait "$Q"
expect_rc "no token exits 2" 2 "$QPIPE" get --nowait "$Q"
expect_rc "ls without a token exits 2" 2 "$QPIPE" ls "$S"
expect_rc "ping with a wrong token exits 2" 2 "$QPIPE" ping --token-file "$T/wrong" "$S"
expect_rc "a missing token file exits 1" 1 "$QPIPE" get --nowait --token-file "$T/none" "$Q"
expect_eq "nothing was stored by the refused puts" \
	"$("$QPIPE" size --token-file "$T/token" "$Q")" 0

# Pipes and the worker with the token.
QPIPE_TOKEN="$good" "$QPIPE" send "$S/${QN}p" ping-msg
expect_eq "recv with the token" "$(QPIPE_TOKEN="$good" "$QPIPE" recv --timeout 5 "$S/${QN}p")" ping-msg
"$QPIPE" put --token-file "$T/token" "$S/${QN}w" 3 4
expect_rc "worker --token-file" 0 "$QPIPE" worker --token-file "$T/token" \
	"$S/${QN}w" --results "$S/${QN}wr" --idle-exit 0.5 -- sh -c 'read n; echo $((n*n))'
expect_eq "worker results" \
	"$("$QPIPE" get -n 2 --nowait --token-file "$T/token" "$S/${QN}wr" | grep -v '^$' | sort | tr '\n' ,)" "16,9,"
expect_rc "worker with a wrong token exits 2" 2 "$QPIPE" worker \
	--token-file "$T/wrong" "$S/${QN}w" --results "$S/${QN}wr" -- cat
expect_rc "create --token-file" 0 "$QPIPE" create --maxsize 3 --token-file "$T/token" "$S/${QN}c"
expect_rc "stat --token-file" 0 "$QPIPE" stat --token-file "$T/token" "$S/${QN}c"
expect_rc "rm without a token exits 2" 2 "$QPIPE" rm "$S/${QN}c"
expect_rc "rm --token-file" 0 "$QPIPE" rm --token-file "$T/token" "$S/${QN}c"
for x in q w wr; do "$QPIPE" rm --token-file "$T/token" "$S/${QN}$x" 2>/dev/null || true; done
qp_stop_server

# TLS.
if ! command -v openssl >/dev/null \
	|| ! sh "$(dirname "$0")/tls_certs.sh" "$T" >/dev/null 2>&1; then
	echo "skip: openssl cannot make certificates: TLS part"
	finish
	exit $?
fi
rm -f "$T/tls.port"
"$QPIPED" --listen tls+tcp://127.0.0.1:0 --tls-cert "$T/server.crt" \
	--tls-key "$T/server.key" --auth-token-file "$T/token" \
	--port-file "$T/tls.port" 2>"$T/tls.log" &
tp=$!
QP_PIDS+=("$tp")
for _ in $(seq 1 100); do
	[ -s "$T/tls.port" ] && break
	sleep 0.05
done
U=$(head -n 1 "$T/tls.port" 2>/dev/null || true)
case "$U" in
tls+tcp://*) ok "TLS server started ($U)" ;;
*) bad "TLS server started" "$(cat "$T/tls.log")" ;;
esac
TQ="$U/${QN}t"
printf 'a\0b\377' >"$T/tbin"
expect_rc "TLS put with --tls-ca" 0 "$QPIPE" put --tls-ca "$T/ca.crt" \
	--token-file "$T/token" "$TQ" <"$T/tbin"
expect_rc "TLS get with QPIPE_TLS_CA" 0 env QPIPE_TLS_CA="$T/ca.crt" \
	QPIPE_TOKEN="$good" "$QPIPE" get --nowait "$TQ"
cmp -s "$T/tbin" "$T/out" && ok "TLS binary round trip" || bad "TLS binary round trip" "bytes differ"
expect_rc "TLS with an untrusted CA exits 2" 2 "$QPIPE" put \
	--tls-ca "$T/other.crt" --token-file "$T/token" "$TQ" x
expect_eq "untrusted CA: one stderr line" "$(wc -l <"$T/err")" 1
expect_rc "TLS --insecure-skip-verify" 0 "$QPIPE" put --insecure-skip-verify \
	--token-file "$T/token" "$TQ" y
expect_rc "TLS ping" 0 "$QPIPE" ping --tls-ca "$T/ca.crt" --token-file "$T/token" "$U"
expect_rc "TLS ping --insecure-skip-verify" 0 "$QPIPE" ping \
	--insecure-skip-verify --token-file "$T/token" "$U"
expect_rc "TLS ping with an untrusted CA exits 2" 2 "$QPIPE" ping \
	--tls-ca "$T/other.crt" --token-file "$T/token" "$U"
"$QPIPE" send --tls-ca "$T/ca.crt" --token-file "$T/token" "$U/${QN}tp" over-tls
expect_eq "TLS pipe" "$("$QPIPE" recv --insecure-skip-verify --token-file \
	"$T/token" --timeout 5 "$U/${QN}tp")" over-tls
expect_rc "TLS ls" 0 "$QPIPE" ls --tls-ca "$T/ca.crt" --token-file "$T/token" "$U"
"$QPIPE" put --tls-ca "$T/ca.crt" --token-file "$T/token" "$U/${QN}tw" 5
expect_rc "TLS worker" 0 "$QPIPE" worker --tls-ca "$T/ca.crt" \
	--token-file "$T/token" "$U/${QN}tw" --results "$U/${QN}twr" \
	--idle-exit 0.5 -- sh -c 'read n; echo $((n*n))'
expect_eq "TLS worker result" "$("$QPIPE" get --nowait --tls-ca "$T/ca.crt" \
	--token-file "$T/token" "$U/${QN}twr")" 25
for x in t tw twr; do
	"$QPIPE" rm --tls-ca "$T/ca.crt" --token-file "$T/token" "$U/${QN}$x" 2>/dev/null || true
done
finish
