#!/usr/bin/env bash
# it_docker_compose.sh - docker/compose.yaml and docker/Dockerfile, checked
# without a Docker engine: `docker-compose config` (Debian's docker-compose)
# accepts the file with a token, and without one too (so that `down`
# works), and qpiped, given an empty token, refuses to serve; the topology
# is the demo's (qpiped, producer, a scalable worker, collector, one
# network); and every shared library the binaries load here comes from a
# Debian package that the Dockerfile's runtime stage installs.
. "$(dirname "$0")/lib.sh"
src="${QP_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
dc="$src/docker"

if ! command -v docker-compose >/dev/null 2>&1; then
	echo "SKIP: no docker-compose (scripts/deps.sh test installs it)"
	exit 77
fi

rc=0
QPIPE_TOKEN=t0ken docker-compose -f "$dc/compose.yaml" config >"$T/config" 2>"$T/err" || rc=$?
expect_eq "docker-compose config accepts compose.yaml" "$rc" 0
[ "$rc" -eq 0 ] || cat "$T/err"
services=$(QPIPE_TOKEN=t0ken docker-compose -f "$dc/compose.yaml" config --services | sort | tr '\n' ' ')
expect_eq "services" "$services" "collector producer qpiped worker "
expect_eq "one network" "$(sed -n '/^networks:/,/^[a-z]/p' "$T/config" | grep -c '^  [a-z]')" 1
expect_eq "the token reaches every service" "$(grep -c 'QPIPE_TOKEN: t0ken' "$T/config")" 4
if grep -A30 '^  worker:' "$T/config" | grep -q container_name; then
	bad "worker scales" "the worker service has a container_name"
else
	ok "worker scales (no container_name)"
fi
# qpiped authenticates its clients with that token: nothing serves without.
if grep -q -- '--insecure' "$T/config" "$dc/Dockerfile" "$dc/demo.sh"; then
	bad "token, not --insecure" "--insecure appears in compose, Dockerfile or demo.sh"
else
	ok "no --insecure anywhere: qpiped needs the token"
fi
grep -q 'shm_size: 512m' "$T/config" && ok "qpiped has room in /dev/shm" ||
	bad "shm_size" "qpiped's shm_size is not 512m"

# Without QPIPE_TOKEN the file still reads (down, ps and logs work), and
# qpiped gets an empty token: it refuses to serve 0.0.0.0 then.
rc=0
env -u QPIPE_TOKEN docker-compose -f "$dc/compose.yaml" config >"$T/notoken" 2>"$T/err" || rc=$?
expect_eq "no token: docker-compose config still reads the file (down works)" "$rc" 0
expect_eq "no token: every service gets an empty one" \
	"$(grep -c "QPIPE_TOKEN: ''" "$T/notoken")" 4
rc=0
env QPIPE_TOKEN= timeout 5 "$QP_BIN/qpiped" --listen tcp://0.0.0.0:0 >/dev/null 2>"$T/err" || rc=$?
if [ "$rc" -ne 0 ] && grep -q 'QPIPE_TOKEN' "$T/err"; then
	ok "an empty QPIPE_TOKEN: qpiped refuses 0.0.0.0, naming QPIPE_TOKEN"
else
	bad "empty token" "qpiped exit $rc: $(head -c 300 "$T/err")"
fi

# The Dockerfile: a debian:12 build stage, a debian:12-slim runtime, a
# non-root user, qpiped in exec form, a healthcheck through qpipe.
df="$dc/Dockerfile"
grep -q '^FROM debian:12 AS build' "$df" && ok "build stage debian:12" || bad "build stage" "no FROM debian:12 AS build"
grep -q '^FROM debian:12-slim' "$df" && ok "runtime debian:12-slim" || bad "runtime stage" "no FROM debian:12-slim"
grep -q '^USER qpipe' "$df" && ok "non-root user" || bad "user" "no USER qpipe"
grep -q '^CMD \["qpiped"' "$df" && ok "qpiped in exec form" || bad "cmd" "qpiped not in exec form"
grep -q '^HEALTHCHECK .*' "$df" && grep -q 'CMD \["qpipe", "ping"' "$df" &&
	ok "healthcheck with qpipe ping" || bad "healthcheck" "none with qpipe ping"

# What the services run is in the image: the programs the Dockerfile
# copies, the scripts exist and parse.
for f in producer.sh collector.sh; do
	if [ -x "$dc/$f" ] && bash -n "$dc/$f"; then
		ok "docker/$f is there and parses"
	else
		bad "docker/$f" "missing, not executable or not bash"
	fi
done
for cmd in qpipe-producer qpipe-collector pool_worker; do
	if grep -q "command: \[\"$cmd\"" "$dc/compose.yaml" ||
		grep -q "command: \[\"$cmd\"," "$dc/compose.yaml"; then
		if grep -Eq "(/$cmd( |$)|COPY .* /usr/local/bin/$cmd$|build/bin/$cmd )" "$df"; then
			ok "the image provides $cmd"
		else
			bad "$cmd" "compose runs it, the Dockerfile does not install it"
		fi
	else
		bad "$cmd" "compose.yaml does not run it"
	fi
done

# Runtime packages: each library the binaries need, outside libc, must
# come from a package in the runtime stage's apt-get install.
runtime=$(awk '/^FROM debian:12-slim/ { r = 1 } r' "$df" |
	sed -n '/apt-get install/,/rm -rf/p')
for b in qpiped qpipe pool_worker pool_producer; do
	ldd "$QP_BIN/$b" | awk '/=> \// { print $3 }'
done | sort -u >"$T/libs"
missing=""
while read -r lib; do
	real=$(readlink -f "$lib")
	pkg=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$real" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null || true)
	pkg=${pkg%%:*}
	case "$pkg" in
	libc6 | libgcc-s1 | "") continue ;;
	esac
	# sanitizer runtimes (ASan build) are not shipped in the image
	case "$pkg" in libasan* | libubsan* | libclang-rt* | libstdc++*) continue ;; esac
	grep -qw -- "$pkg" <<<"$runtime" || missing="$missing $pkg($lib)"
done <"$T/libs"
expect_eq "the runtime stage installs every library package" "$missing" ""
finish
