#!/usr/bin/env bash
# it_docker_netns.sh - docker/compose.yaml's topology run as processes, each
# "container" in its own network namespace (docker/demo.sh): qpiped,
# producer, workers and collector over tcp on a private bridge, a worker
# killed with kill -9 mid-task, every result checked by the collector.
# Exits 77 (skipped) where namespaces cannot be made.
src="${QP_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
QP_NETNS_TASKS=${QP_NETNS_TASKS:-120} exec timeout 150 "$src/docker/demo.sh"
