#!/usr/bin/env bash
# qpipe-producer - the worker-pool demo's producer (docker/compose.yaml,
# docker/demo.sh). Generates QPIPE_TASKS files of about 32 KiB of random
# bytes, sends the collector the expected results ("ID SHA256" a line, from
# sha256sum, as one item on PREFIX.expected), puts one task per file on
# PREFIX.tasks ("ID", a newline, the file's bytes; pool_producer), then
# waits for the collector's verdict on PREFIX.done and exits 0 if it is
# "ok".
# Environment: QPIPE_SERVER (tcp://qpiped:7450), QPIPE_PREFIX (demo),
# QPIPE_TASKS (200), QPIPE_WAIT (seconds, 300), QPIPE_TOKEN (the server's).
set -euo pipefail
export LC_ALL=C
S=${QPIPE_SERVER:-tcp://qpiped:7450}
P=${QPIPE_PREFIX:-demo}
N=${QPIPE_TASKS:-200}
WAIT=${QPIPE_WAIT:-300}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() { echo "producer: $*"; }

# qpiped may still be starting: try for up to 30 s.
for i in $(seq 60); do
	qpipe size "$S/$P.tasks" >/dev/null 2>"$tmp/err" && break
	[ "$i" -lt 60 ] || {
		say "cannot reach $S: $(cat "$tmp/err")" >&2
		exit 2
	}
	sleep 0.5
done

mkdir "$tmp/files"
# One blob of random bytes cut after every 128th newline byte: files of
# about 32 KiB (22 to 44 KiB), named f000000, f000001, ...; the first N.
head -c $((N * 40 * 1024)) /dev/urandom | split -a 6 -d -l 128 - "$tmp/files/f"
(cd "$tmp/files" && ls | tail -n +$((N + 1)) | xargs -r rm --)
[ "$(ls "$tmp/files" | wc -l)" -eq "$N" ] || { echo "cannot make $N files" >&2; exit 1; }
(cd "$tmp/files" && sha256sum -- *) | awk '{ print $2, $1 }' >"$tmp/expected"
bytes=$(cat "$tmp/files"/* | wc -c)
qpipe put "$S/$P.expected" <"$tmp/expected"
say "$N tasks, $((bytes / 1024)) KiB, expected results sent to $S/$P.expected"
t0=$(date +%s%3N)
# pool_producer (examples/pool_producer.c): one task per file, "ID\n" and
# the file's bytes, 32 tasks per request.
(cd "$tmp/files" && pool_producer --batch 32 "$S/$P.tasks" f*)
t1=$(date +%s%3N)
say "all $N tasks put on $S/$P.tasks in $((t1 - t0)) ms; waiting for the collector"
verdict=$(qpipe get --timeout "$WAIT" "$S/$P.done") || {
	say "no word from the collector in $WAIT s" >&2
	exit 1
}
say "the collector says: $verdict"
[ "$verdict" = ok ]
