#!/usr/bin/env bash
# it_docker_real.sh - the Docker image and the compose demo on a real
# engine (Debian's docker.io): builds docker/Dockerfile and runs the
# README's command, `docker compose up --build --scale worker=4
# --exit-code-from collector`, from docker/; then docker/README.md's advice
# for killing a worker mid-run (a detached stack, one worker killed with
# SIGKILL, the collector's verdict by `docker wait`), and `compose down`
# without QPIPE_TOKEN. Checks: the collector's verdict, the image's user
# (not root), qpiped healthy within 3 s of its start, /dev/shm sized, the
# build context free of .git and build trees, the port published on
# loopback only.
#
# The engine: one that answers already ($DOCKER_HOST, /run/docker.sock) is
# used as is; otherwise this script installs docker.io (apt-get) if
# missing, starts its own dockerd on its own socket and data root, and at
# the end stops it by its PID, deletes its bridges and puts the host's
# iptables rules and ip_forward back as they were.
# The base images: debian:12 and debian:12-slim from the registry when a
# pull works; otherwise made here once with `debootstrap --variant=minbase
# bookworm` from Debian's mirror and `docker import`ed. They, and the image
# build cache, are kept between runs (in /var/lib/qpipe-test-docker for the
# engine this script starts; the debootstrap tarballs in
# /var/cache/qpipe-test-docker): 45 s when nothing changed, 2-3 minutes
# when the sources did (the image is built again), about 5 the first time.
# QP_DOCKER_PURGE=1 removes both at the end.
# Containers, networks and volumes of the run are removed at the end.
# Exits 77 (skipped), saying why, where the engine cannot start or run
# (not root, no docker.io, no cgroups, no mirror); 1 on a failed check.
set -uo pipefail
export LC_ALL=C
src="${QP_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
T=$(mktemp -d /tmp/qpipe-docker.XXXXXX)
DATA=/var/lib/qpipe-test-docker
CACHE=/var/cache/qpipe-test-docker
EXEC=/run/qpipe-test-docker
SOCK=/run/qpipe-test-docker.sock
PROJECT="qpipetest$$"
own_pid=""
compose=()
fails=0
t_start=$(date +%s)

say() { echo "it_docker_real: $*"; }
skip() {
	echo "SKIP: $*"
	exit 77
}
ok() { echo "ok   $1"; }
bad() {
	echo "FAIL $1: $2"
	fails=$((fails + 1))
}

cleanup() {
	trap - EXIT INT TERM
	if [ ${#compose[@]} -gt 0 ]; then
		(cd "$src/docker" && env -u QPIPE_TOKEN timeout 120 "${compose[@]}" \
			-p "$PROJECT" down -v --remove-orphans >/dev/null 2>&1)
	fi
	if [ -n "$own_pid" ]; then
		# earlier builds' untagged stages, a day old: younger ones are
		# the build cache of the next run
		docker image prune -f --filter until=24h >/dev/null 2>&1
		if [ "${QP_DOCKER_PURGE:-0}" = 1 ]; then
			docker system prune -a -f >/dev/null 2>&1
		fi
		kill -TERM "$own_pid" 2>/dev/null
		for _ in $(seq 150); do
			kill -0 "$own_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$own_pid" 2>/dev/null
		# what the engine left in the host's network set-up
		for l in $(ip -o link show type bridge 2>/dev/null |
			awk -F': ' '{ print $2 }' | grep -E '^(docker0|br-[0-9a-f]{12})$'); do
			grep -qx "$l" "$T/links.before" || ip link del "$l" 2>/dev/null
		done
		if grep -q '^\*filter' "$T/iptables.before" 2>/dev/null; then
			iptables-restore <"$T/iptables.before" 2>/dev/null
		elif [ -e "$T/iptables.before" ]; then
			# no rules before: none after
			iptables -P FORWARD ACCEPT 2>/dev/null
			iptables -F 2>/dev/null
			iptables -X 2>/dev/null
			iptables -t nat -F 2>/dev/null
			iptables -t nat -X 2>/dev/null
		fi
		[ -e "$T/run-docker.before" ] || rm -rf /run/docker
		[ -s "$T/ip_forward" ] && sysctl -q -w "net.ipv4.ip_forward=$(cat "$T/ip_forward")" >/dev/null 2>&1
		if [ "${QP_DOCKER_PURGE:-0}" = 1 ]; then
			rm -rf "$DATA" "$CACHE"
		fi
		rm -rf "$EXEC" "$SOCK" "$EXEC.pid"
	fi
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. The engine -------------------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "a Docker engine needs root (run as root or in CI)"
case "${QP_BUILD_DIR:-}" in
*asan* | *tsan*)
	skip "the image builds its own binaries: run in the plain build's ctest, not again under sanitizers"
	;;
esac
if ! command -v dockerd >/dev/null 2>&1 || ! [ -x /usr/bin/docker ] ||
	! command -v docker-compose >/dev/null 2>&1 ||
	! command -v debootstrap >/dev/null 2>&1; then
	say "installing docker.io, docker-compose, debootstrap (apt-get)"
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get -o DPkg::Lock::Timeout=300 \
		install -y -qq --no-install-recommends docker.io docker-compose \
		debootstrap >"$T/apt.log" 2>&1 ||
		skip "cannot install docker.io: $(tail -n 2 "$T/apt.log" | tr '\n' ' ')"
fi
# Debian's client, matched to its engine (a newer one may sit earlier in
# PATH).
docker() { /usr/bin/docker "$@"; }
export -f docker 2>/dev/null || true
if [ -n "${DOCKER_HOST:-}" ] && timeout 20 /usr/bin/docker info >/dev/null 2>&1; then
	say "using the engine at $DOCKER_HOST"
elif [ -z "${DOCKER_HOST:-}" ] && [ -S /run/docker.sock ] &&
	timeout 20 /usr/bin/docker info >/dev/null 2>&1; then
	say "using the engine that runs already (/run/docker.sock)"
else
	export DOCKER_HOST="unix://$SOCK"
	ip -o link show type bridge 2>/dev/null | awk -F': ' '{ print $2 }' >"$T/links.before"
	iptables-save >"$T/iptables.before" 2>/dev/null || true
	sysctl -n net.ipv4.ip_forward >"$T/ip_forward" 2>/dev/null || true
	[ -e /run/docker ] && touch "$T/run-docker.before"
	mkdir -p "$DATA" "$EXEC"
	dockerd --data-root "$DATA" --exec-root "$EXEC" --pidfile "$EXEC.pid" \
		-H "$DOCKER_HOST" >"$T/dockerd.log" 2>&1 &
	own_pid=$!
	for i in $(seq 300); do
		timeout 5 /usr/bin/docker info >/dev/null 2>&1 && break
		kill -0 "$own_pid" 2>/dev/null || break
		sleep 0.1
	done
	if ! timeout 5 /usr/bin/docker info >/dev/null 2>&1; then
		skip "dockerd does not start here: $(grep -E 'level=(error|fatal)' "$T/dockerd.log" | tail -n 2 | tr '\n' ' ')"
	fi
	say "started dockerd (pid $own_pid, $DOCKER_HOST, data in $DATA)"
fi
if docker compose version >/dev/null 2>&1; then
	compose=(/usr/bin/docker compose)
else
	compose=(docker-compose)
fi
say "compose: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || echo '?'))"

# ---- 2. The base images --------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# make_bases: debian:12 and debian:12-slim from debootstrap, once.
make_bases() {
	local root="$CACHE/rootfs"
	mkdir -p "$CACHE"
	if [ ! -s "$CACHE/debian-12.tar" ] || [ ! -s "$CACHE/debian-12-slim.tar" ]; then
		say "debootstrap --variant=minbase bookworm (once; kept in $CACHE)"
		rm -rf "$root"
		timeout 900 debootstrap --variant=minbase bookworm "$root" \
			http://deb.debian.org/debian >"$T/debootstrap.log" 2>&1 || {
			rm -rf "$root"
			return 1
		}
		# as the official images: updates and security, no caches
		rm -f "$root/etc/apt/sources.list"
		cat >"$root/etc/apt/sources.list.d/debian.sources" <<-'EOF'
			Types: deb
			URIs: http://deb.debian.org/debian
			Suites: bookworm bookworm-updates
			Components: main
			Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

			Types: deb
			URIs: http://deb.debian.org/debian-security
			Suites: bookworm-security
			Components: main
			Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
		EOF
		rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
			"$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/debootstrap
		tar -C "$root" -c . >"$CACHE/debian-12.tar.tmp" &&
			mv "$CACHE/debian-12.tar.tmp" "$CACHE/debian-12.tar" || return 1
		# slim, as debian:12-slim: no documentation, man pages or
		# translations, and dpkg told to install none
		cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<-'EOF'
			path-exclude /usr/share/doc/*
			path-include /usr/share/doc/*/copyright
			path-exclude /usr/share/man/*
			path-exclude /usr/share/groff/*
			path-exclude /usr/share/info/*
			path-exclude /usr/share/lintian/*
			path-exclude /usr/share/linda/*
			path-exclude /usr/share/locale/*
		EOF
		find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
		rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* \
			"$root"/usr/share/locale/* "$root"/usr/share/groff/* \
			"$root"/usr/share/lintian/*
		tar -C "$root" -c . >"$CACHE/debian-12-slim.tar.tmp" &&
			mv "$CACHE/debian-12-slim.tar.tmp" "$CACHE/debian-12-slim.tar" || return 1
		rm -rf "$root"
	fi
	docker import "$CACHE/debian-12.tar" debian:12 >/dev/null &&
		docker import "$CACHE/debian-12-slim.tar" debian:12-slim >/dev/null
}
t0=$(date +%s)
if have_image debian:12 && have_image debian:12-slim; then
	say "debian:12 and debian:12-slim: present"
elif timeout 60 /usr/bin/docker pull -q debian:12 >/dev/null 2>"$T/pull.err" &&
	timeout 60 /usr/bin/docker pull -q debian:12-slim >/dev/null 2>>"$T/pull.err"; then
	say "debian:12 and debian:12-slim: pulled"
else
	say "no registry ($(head -c 150 "$T/pull.err" | tr '\n' ' ')): making the base images"
	make_bases || skip "cannot make the base images (no Debian mirror?): $(tail -n 2 "$T/debootstrap.log" 2>/dev/null | tr '\n' ' ')"
	say "debian:12 and debian:12-slim: made with debootstrap and docker import"
fi
say "base images ready in $(($(date +%s) - t0)) s"

# ---- 3. The README's command ---------------------------------------------
# A free loopback port for qpiped's published port (QPIPE_PORT), a token.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export QPIPE_TOKEN QPIPE_PORT=$port QPIPE_TASKS=200
QPIPE_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
cd "$src/docker" || exit 1
readme_cmd=$(sed -n 's/^docker compose \(up .*\)$/\1/p' "$src/README.md" | head -n 1)
[ -n "$readme_cmd" ] || {
	bad "README" "no 'docker compose up ...' line in README.md"
	exit 1
}
say "running the README's command: ${compose[*]} -p $PROJECT $readme_cmd"
t0=$(date +%s)
rc=0
# shellcheck disable=SC2086 # the README's words
timeout 600 "${compose[@]}" -p "$PROJECT" $readme_cmd >"$T/up.log" 2>&1 || rc=$?
t_up=$(($(date +%s) - t0))
grep -E 'collector.*collector: |producer.*producer: ' "$T/up.log" | sed 's/^/  /' | tail -n 12
if [ "$rc" -eq 0 ] && grep -q 'collector: ok: every result checked' "$T/up.log" &&
	grep -q 'the collector says: ok' "$T/up.log"; then
	ok "the README's compose command: the collector checks every result (exit 0, ${t_up} s with the build)"
else
	bad "the README's compose command" "exit $rc; last lines: $(tail -n 25 "$T/up.log")"
fi
img=$(docker image inspect -f '{{.Size}}' qpipe:demo 2>/dev/null || echo 0)
say "image qpipe:demo: $((img / 1000000)) MB"

# The build context: the sources, not .git or build trees.
ctx=$(grep -o 'Sending build context to Docker daemon *[0-9.]* *[kMG]*B' "$T/up.log" | head -n 1)
printf 'FROM debian:12-slim\nCOPY . /ctx\n' >"$T/Dockerfile.ctx"
if docker build -q -f "$T/Dockerfile.ctx" -t "$PROJECT-ctx" "$src" >/dev/null 2>"$T/ctx.err"; then
	listing=$(docker run --rm "$PROJECT-ctx" sh -c 'cd /ctx && ls -a' | tr '\n' ' ')
	docker image rm -f "$PROJECT-ctx" >/dev/null 2>&1
	case " $listing " in
	*" .git "* | *" build "* | *" build-asan "*) bad "build context" "holds: $listing" ;;
	*) ok "the build context holds no .git and no build tree (${ctx#Sending build context to Docker daemon })" ;;
	esac
else
	bad "build context" "$(cat "$T/ctx.err")"
fi

uid=$(docker run --rm qpipe:demo id -u 2>/dev/null)
[ -n "$uid" ] && [ "$uid" != 0 ] && ok "the image runs as a user, not root (uid $uid)" ||
	bad "non-root" "id -u in the image: '$uid'"

# ---- 4. docker/README.md: kill a worker mid-run ---------------------------
# Its advice, as written there: a detached stack, a worker killed, the
# collector's verdict.
export QPIPE_TASKS=1000 QPIPE_WORK_MS=20
"${compose[@]}" -p "$PROJECT" down -v >/dev/null 2>&1
t0=$(date +%s%3N)
timeout 300 "${compose[@]}" -p "$PROJECT" up -d --build --scale worker=4 >"$T/upd.log" 2>&1 ||
	bad "compose up -d" "$(tail -n 10 "$T/upd.log")"
qid=$("${compose[@]}" -p "$PROJECT" ps -q qpiped)
started=$(docker inspect -f '{{.State.StartedAt}}' "$qid")
healthy=$(docker inspect -f '{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.End.UnixNano}}{{"\n"}}{{end}}{{end}}' "$qid" | head -n 1)
if [ -n "$healthy" ]; then
	# StartedAt: RFC 3339 with nanoseconds, UTC
	dt=$(python3 -c 'import sys, datetime
s = sys.argv[1].rstrip("Z")
d, f = (s.split(".") + ["0"])[:2]
t = datetime.datetime.strptime(d, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
print("%.1f" % (int(sys.argv[2]) / 1e9 - t.timestamp() - float("0." + f)))' "$started" "$healthy")
	if python3 -c "import sys; sys.exit(0 if float('$dt') < 3.0 else 1)"; then
		ok "qpiped healthy ${dt} s after its start: the clients wait no longer"
	else
		bad "first health check" "qpiped healthy only ${dt} s after its start"
	fi
else
	bad "health" "qpiped never healthy: $(docker inspect -f '{{json .State.Health}}' "$qid" | head -c 300)"
fi
shm=$(docker exec "$qid" df -k /dev/shm | awk 'NR == 2 { print $2 }')
[ "${shm:-0}" -ge 500000 ] && ok "qpiped's /dev/shm: $((shm / 1024)) MiB" || bad "/dev/shm" "${shm:-?} KiB"
# From the host, through the published loopback port, with the token.
if [ -x "${QP_BIN:-$src/build/bin}/qpipe" ]; then
	if "${QP_BIN:-$src/build/bin}/qpipe" ping "tcp://127.0.0.1:$port" >"$T/ping" 2>&1; then
		ok "qpipe ping from the host through 127.0.0.1:$port: $(cat "$T/ping")"
	else
		bad "published port" "$(cat "$T/ping")"
	fi
fi
published=$(docker port "$qid" 7450 | head -n 1)
case "$published" in
127.0.0.1:*) ok "published on loopback only ($published)" ;;
*) bad "published port" "'$published'" ;;
esac
cid=$("${compose[@]}" -p "$PROJECT" ps -q collector)
# As docker/README.md says: once the workers hold tasks (qpipe stat in
# qpiped's container: "leased"), docker kill -s KILL a worker. Which one
# holds a task at that instant is timing; the workers hold one 20 ms out
# of about 21: up to three are killed, one by one, until qpiped reports a
# lease given back.
grep -q 'docker kill -s KILL $(docker compose ps -q worker | head -n 1)' \
	"$src/docker/README.md" || bad "docker/README.md" "its kill line is not the one tested here"
mapfile -t workers < <("${compose[@]}" -p "$PROJECT" ps -q worker)
leased=0
for _ in $(seq 300); do
	leased=$(docker exec "$qid" qpipe stat tcp://127.0.0.1:7450/demo.tasks 2>/dev/null |
		sed -n 's/.*"leased": \([0-9]*\).*/\1/p')
	[ "${leased:-0}" -gt 0 ] && break
	[ "$(docker inspect -f '{{.State.Running}}' "$cid")" = true ] || break
	sleep 0.1
done
killed=0
held=""
if [ "${leased:-0}" -gt 0 ]; then
	for w in "${workers[@]:0:3}"; do
		docker kill -s KILL "$w" >/dev/null || break
		killed=$((killed + 1))
		for _ in $(seq 20); do
			held=$(docker logs "$qid" 2>&1 | grep -o 'connection [0-9]* closed holding [1-9].*' | head -n 1)
			[ -n "$held" ] && break
			sleep 0.1
		done
		[ -n "$held" ] && break
	done
	if [ -n "$held" ]; then
		ok "killed $killed worker(s) mid-run with docker kill -s KILL; qpiped: $held"
	else
		bad "kill a worker" "$killed killed, qpiped never gave a lease back"
	fi
else
	bad "kill a worker" "no worker ever held a task (qpipe stat: leased ${leased:-?})"
fi
crc=$(timeout 300 docker wait "$cid")
docker logs "$cid" >"$T/collector.log" 2>&1
tail -n 3 "$T/collector.log" | sed 's/^/  /'
if [ "$crc" = 0 ] && grep -q 'collector: ok' "$T/collector.log"; then
	ok "after the kill: every task done once (collector exit 0), the stack still up"
else
	bad "after the kill" "collector exit '$crc'"
fi

# ---- 5. compose down without QPIPE_TOKEN ---------------------------------
rc=0
env -u QPIPE_TOKEN "${compose[@]}" -p "$PROJECT" down -v >"$T/down.log" 2>&1 || rc=$?
[ "$rc" -eq 0 ] && ok "compose down without QPIPE_TOKEN" ||
	bad "compose down without QPIPE_TOKEN" "exit $rc: $(tail -n 3 "$T/down.log")"
left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
expect_none=$([ "$left" -eq 0 ] && echo yes || echo no)
[ "$expect_none" = yes ] && ok "no container left" || bad "down" "$left containers left"

say "took $(($(date +%s) - t_start)) s; image $((img / 1000000)) MB"
[ "$fails" -eq 0 ] || exit 1
echo "it_docker_real: ok"
