#!/usr/bin/env bash
# it_part_cli.sh - the CLI on one queue over three servers (three qpiped
# on loopback, each with a shared-memory directory and data directory of
# its own): qpipe pick agrees with the fixed table of keys that the C and
# Python tests check (tests/part_table.inc); create --durable, put
# --lines round robin, size/stat/ls added up and per partition, put
# --key on the picked server, get -n of every item, rm of every
# partition.
. "$(dirname "$0")/lib.sh"

# pick against the fixed table (servers h1:7450, h2:7450, h3:7450).
inc="$(dirname "$0")/part_table.inc"
bad_keys=0
while IFS='|' read -r key want; do
	got=$("$QPIPE" pick "tcp://h1:7450,h2:7450,h3:7450/q" "$key" | cut -d' ' -f1)
	[ "$got" == "$want" ] || { bad_keys=$((bad_keys + 1)); echo "key '$key': $got, not $want"; }
done < <(sed -n 's/^ *{"\(.*\)", \([0-9]\)},$/\1|\2/p' "$inc")
n_keys=$(grep -c '^ *{"' "$inc")
[ "$n_keys" -ge 10 ] && [ "$bad_keys" -eq 0 ] && ok "pick agrees with the table ($n_keys keys)" ||
	bad "pick agrees with the table" "$bad_keys of $n_keys differ"

ports=()
for i in 1 2 3; do
	mkdir -p "$T/shm$i" "$T/data$i"
	QPIPE_SHM_DIR="$T/shm$i" "$QPIPED" --listen tcp://127.0.0.1:0 \
		--port-file "$T/port$i" --data-dir "$T/data$i" 2>"$T/srv$i.log" &
	QP_PIDS+=($!)
done
for i in 1 2 3; do
	for _ in $(seq 1 200); do
		[ -s "$T/port$i" ] && break
		sleep 0.05
	done
	ports+=("$(sed 's|tcp://||' "$T/port$i" | head -1)")
done
A="tcp://${ports[0]},${ports[1]},${ports[2]}"
Q="$A/${QN}jobs"

expect_rc "create --durable over three servers" 0 "$QPIPE" create --durable "$Q"
seq 1 30 | "$QPIPE" put --lines "$Q"
for i in 0 1 2; do
	expect_eq "partition $i holds its share" \
		"$("$QPIPE" size "tcp://${ports[$i]}/${QN}jobs")" 10
done
expect_eq "size adds up" "$("$QPIPE" size "$Q")" 30
"$QPIPE" stat "$Q" >"$T/stat"
python3 - "$T/stat" <<'PY' && ok "stat: sums and each partition" || bad "stat" "$(cat "$T/stat")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["items"] == 30, s
assert [p["stat"]["items"] for p in s["partitions"]] == [10, 10, 10], s
PY
"$QPIPE" ls "$A" >"$T/ls"
python3 - "$T/ls" "${QN}jobs" <<'PY' && ok "ls over three servers" || bad "ls" "$(cat "$T/ls")"
import json, sys
v = [q for q in json.load(open(sys.argv[1])) if q["name"] == sys.argv[2]]
assert len(v) == 1 and v[0]["items"] == 30, v
assert len(v[0]["partitions"]) == 3, v
PY

# --key: on the partition pick names.
for key in user:1 user:2 b jobs; do
	want=$("$QPIPE" pick "$Q" "$key" | cut -d' ' -f1)
	before=$("$QPIPE" size "tcp://${ports[$want]}/${QN}jobs")
	"$QPIPE" put --key "$key" "$Q" "k-$key"
	expect_eq "put --key $key on partition $want" \
		"$("$QPIPE" size "tcp://${ports[$want]}/${QN}jobs")" $((before + 1))
done
expect_rc "--key with --json is refused" 1 "$QPIPE" put --json --key k "$Q" 1

"$QPIPE" get -n 100 --timeout 2 "$Q" >"$T/got"
expect_eq "get -n: every item once" "$(sort "$T/got" | tr '\n' ,)" \
	"$( (seq 1 30; printf 'k-%s\n' user:1 user:2 b jobs) | sort | tr '\n' ,)"
expect_eq "nothing left" "$("$QPIPE" size "$Q")" 0
expect_rc "rm removes every partition" 0 "$QPIPE" rm "$Q"
expect_rc "no partition left" 2 "$QPIPE" stat "tcp://${ports[1]}/${QN}jobs"

finish
