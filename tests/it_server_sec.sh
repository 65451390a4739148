#!/usr/bin/env bash
# qpiped's secure defaults and authentication as an operator meets them:
# an address other hosts can reach (0.0.0.0, port 0) is refused at start
# without client authentication, with one clear line and exit 2; a token
# (file or $QPIPE_TOKEN), tls+tcp:// with --tls-ca, or --insecure (said
# loudly) let it start. The servers on 0.0.0.0 are only started and
# stopped: no traffic leaves loopback. Then the CLI against a server with
# a token: the right token works, a wrong or missing one exits 2, and the
# server logs the refused attempt once.
. "$(dirname "$0")/lib.sh"

tok="$T/token"
printf 'the token of it_server_sec\n' >"$tok"
chmod 600 "$tok"

# start NAME ARGS...: qpiped with a port file; sets $pid and $url.
start() {
	local name=$1
	shift
	"$QPIPED" --port-file "$T/$name.port" "$@" >"$T/$name.out" \
		2>"$T/$name.log" &
	pid=$!
	QP_PIDS+=("$pid")
	for _ in $(seq 400); do
		[ -s "$T/$name.port" ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.025
	done
	url=$(head -n 1 "$T/$name.port" 2>/dev/null || true)
}

# stop: SIGTERM, exit 0 expected.
stop() {
	local rc=0
	kill -TERM "$pid"
	wait "$pid" || rc=$?
	expect_eq "$1 stops with 0" "$rc" 0
}

# refused NAME WANT-TEXT ARGS...: qpiped must exit 2 at start with one
# error line that holds WANT-TEXT.
refused() {
	local name=$1 want=$2 rc=0
	shift 2
	timeout 10 "$QPIPED" "$@" >"$T/$name.out" 2>"$T/$name.log" || rc=$?
	expect_eq "$name: exit code" "$rc" 2
	expect_eq "$name: one error line" \
		"$(grep -c ' error ' "$T/$name.log" || true)" 1
	if grep -q -- "$want" "$T/$name.log"; then
		ok "$name: says '$want'"
	else
		bad "$name: says '$want'" "$(cat "$T/$name.log")"
	fi
}

# started NAME ARGS...: qpiped must start (a bound URL), then stop.
started() {
	local name=$1
	shift
	start "$name" "$@"
	if [ -n "$url" ]; then
		ok "$name: starts ($url)"
	else
		bad "$name: starts" "$(cat "$T/$name.log")"
	fi
	stop "$name"
}

# --- secure defaults
refused public "refusing to serve tcp://0.0.0.0:0" --listen tcp://0.0.0.0:0
grep -q -- "--auth-token-file" "$T/public.log" &&
	grep -q -- "--insecure" "$T/public.log" &&
	ok "public: the refusal names the remedies" ||
	bad "public: the refusal names the remedies" "$(cat "$T/public.log")"
started insecure --listen tcp://0.0.0.0:0 --insecure
grep -q "warn INSECURE: serving tcp://0.0.0.0:0" "$T/insecure.log" &&
	ok "insecure: said loudly" || bad "insecure: said loudly" \
	"$(cat "$T/insecure.log")"
started token --listen tcp://0.0.0.0:0 --auth-token-file "$tok"
grep -q INSECURE "$T/token.log" && bad "token: not insecure" "warned" ||
	ok "token: not insecure"
grep -q "must authenticate with the token of $tok" "$T/token.log" &&
	ok "token: logged" || bad "token: logged" "$(cat "$T/token.log")"
QPIPE_TOKEN=secret started envtoken --listen tcp://0.0.0.0:0
grep -q 'token of \$QPIPE_TOKEN' "$T/envtoken.log" && ok "env token: logged" ||
	bad "env token: logged" "$(cat "$T/envtoken.log")"
refused notokenfile "cannot open the token file" \
	--auth-token-file "$T/nonexistent" --listen tcp://127.0.0.1:0
: >"$T/empty"
refused emptytoken "--auth-token-file" \
	--auth-token-file "$T/empty" --listen tcp://127.0.0.1:0
refused halftls "go together" --tls-cert "$T/x.crt" \
	--listen tls+tcp://127.0.0.1:0
refused nocert "--tls-cert" --listen tls+tcp://127.0.0.1:0

if command -v openssl >/dev/null &&
	sh "$QP_SOURCE_DIR/tests/tls_certs.sh" "$T" >/dev/null 2>&1; then
	refused tlspublic "refusing to serve tls+tcp://0.0.0.0:0" \
		--listen tls+tcp://0.0.0.0:0 \
		--tls-cert "$T/server.crt" --tls-key "$T/server.key"
	started tlsca --listen tls+tcp://0.0.0.0:0 --tls-cert "$T/server.crt" \
		--tls-key "$T/server.key" --tls-ca "$T/ca.crt"
	refused badcert "server.key" --listen tls+tcp://127.0.0.1:0 \
		--tls-cert "$T/server.key" --tls-key "$T/server.key"
else
	echo "skip: openssl cannot make certificates: TLS start-up checks"
fi

# --- the CLI against a server with a token
start auth --listen tcp://127.0.0.1:0 --auth-token-file "$tok"
q="$url/${QN}auth"
QPIPE_TOKEN="wrong" expect_rc "cli: wrong token exits 2" 2 \
	"$QPIPE" put "$q" hello
grep -q "token" "$T/err" && ok "cli: wrong token is named" ||
	bad "cli: wrong token is named" "$(cat "$T/err")"
expect_rc "cli: no token exits 2" 2 env -u QPIPE_TOKEN "$QPIPE" put "$q" hello
grep -q "requires a token" "$T/err" && ok "cli: no token is named" ||
	bad "cli: no token is named" "$(cat "$T/err")"
QPIPE_TOKEN="$(head -n 1 "$tok")" expect_rc "cli: right token puts" 0 \
	"$QPIPE" put "$q" hello
QPIPE_TOKEN="$(head -n 1 "$tok")" expect_rc "cli: right token gets" 0 \
	"$QPIPE" get --nowait "$q"
expect_eq "cli: the item" "$(cat "$T/out")" hello
expect_eq "server: the wrong token logged once" \
	"$(grep -c 'authentication refused' "$T/auth.log")" 1
QPIPE_TOKEN="$(head -n 1 "$tok")" "$QPIPE" rm "$q" >/dev/null 2>&1 || true
stop auth

finish
