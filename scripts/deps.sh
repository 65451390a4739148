#!/usr/bin/env bash
# Installs the Debian packages that qpipe needs, and only those missing.
# Usage: scripts/deps.sh build|test|demo|bench
# As root it runs apt-get directly, otherwise through sudo. When everything
# is present it does nothing and takes well under a second.
set -euo pipefail

# The build makes the Python extension too (python/, cffi API mode).
build_pkgs=(cmake make gcc pkg-config libnng-dev libmsgpack-dev libcmocka-dev
	libmbedtls-dev python3 python3-dev python3-cffi python3-msgpack libffi-dev)
# The tests also install the Python package into a venv (pip, setuptools,
# wheel, all from Debian, --no-build-isolation: no package index).
test_pkgs=(clang clang-format libclang-rt-14-dev nng-utils python3
	python3-msgpack iproute2 docker-compose openssl procps python3-setuptools
	python3-wheel python3-venv python3-pip)
bench_pkgs=(python3 redis-server redis-tools nng-utils python3-redis libhiredis-dev
	libzmq3-dev util-linux)
# what the tests call that a minimal Debian 12 lacks: bc
# (tests/it_server_sigterm.sh); tests/it_docker_real.sh installs docker.io
# itself, and is skipped where it cannot
test_pkgs+=(bc)
# tests/it_metrics.sh and it_status_page.sh: promtool checks the metrics
# text, headless chromium drives the status page, curl scrapes
test_pkgs+=(prometheus chromium curl)

want=("${build_pkgs[@]}")
case "${1:-build}" in
build) ;;
test) want+=("${test_pkgs[@]}") ;;
demo) want+=(iproute2 procps) ;;
bench) want+=("${bench_pkgs[@]}") ;;
*)
	echo "usage: $0 build|test|demo|bench" >&2
	exit 1
	;;
esac

missing=()
for p in "${want[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
		grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "qpipe: installing ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
	sudo=()
elif command -v sudo >/dev/null 2>&1; then
	sudo=(sudo)
else
	echo "qpipe: need root or sudo to install: ${missing[*]}" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
