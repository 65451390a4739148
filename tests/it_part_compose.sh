#!/usr/bin/env bash
# it_part_compose.sh - docker/compose.parts.yaml, the demo over three
# servers, checked without a Docker engine: `docker-compose config`
# accepts it; three qpiped services and the demo's producer, scalable
# worker and collector; every client names the three servers in one
# partitioned address and waits for all three; the token reaches every
# service. Exits 77 without docker-compose.
. "$(dirname "$0")/lib.sh"
src="${QP_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
f="$src/docker/compose.parts.yaml"

if ! command -v docker-compose >/dev/null 2>&1; then
	echo "SKIP: no docker-compose (scripts/deps.sh test installs it)"
	exit 77
fi

rc=0
QPIPE_TOKEN=t0ken docker-compose -f "$f" config >"$T/config" 2>"$T/err" || rc=$?
expect_eq "docker-compose config accepts compose.parts.yaml" "$rc" 0
[ "$rc" -eq 0 ] || cat "$T/err"
expect_eq "services" \
	"$(QPIPE_TOKEN=t0ken docker-compose -f "$f" config --services | sort | tr '\n' ' ')" \
	"collector producer qpiped1 qpiped2 qpiped3 worker "
expect_eq "the token reaches every service" "$(grep -c 'QPIPE_TOKEN: t0ken' "$T/config")" 6
expect_eq "every service names the three servers" \
	"$(grep -c 'QPIPE_SERVER: tcp://qpiped1:7450,qpiped2:7450,qpiped3:7450$' "$T/config")" 6
expect_eq "the workers' queues are partitioned" \
	"$(grep -c 'tcp://qpiped1:7450,qpiped2:7450,qpiped3:7450/demo\.' "$T/config")" 2
python3 - "$T/config" <<'PY' && ok "clients wait for all three servers" || bad "depends_on" "$(cat "$T/config")"
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
for s in ("producer", "worker", "collector"):
    d = c["services"][s]["depends_on"]
    assert sorted(d) == ["qpiped1", "qpiped2", "qpiped3"], (s, d)
    assert all(v["condition"] == "service_healthy" for v in d.values()), d
    assert "container_name" not in c["services"][s]
PY
# The address the clients use reads as three partitions.
case "$("$QP_BIN/qpipe" pick tcp://qpiped1:7450,qpiped2:7450,qpiped3:7450/demo.tasks some-key)" in
"0 qpiped1:7450" | "1 qpiped2:7450" | "2 qpiped3:7450") ok "qpipe pick reads the address" ;;
*) bad "qpipe pick reads the address" "$("$QP_BIN/qpipe" pick tcp://qpiped1:7450,qpiped2:7450,qpiped3:7450/demo.tasks some-key)" ;;
esac
finish
