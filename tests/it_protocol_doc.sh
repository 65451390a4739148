#!/usr/bin/env bash
# PROTOCOL.md as a third party reads it: every hex example decodes, with
# Python's msgpack (not our codec), to the value the doc states; the frames
# that the nngcat section builds with Python decode with our codec; and the
# nngcat commands work as written, against an nngcat --rep stand-in.
set -euo pipefail
doc="$QP_SOURCE_DIR/proto/PROTOCOL.md"
tw="$QP_BIN/test_wire"
py=/usr/bin/python3

if ! "$py" -c 'import msgpack' 2>/dev/null; then
	echo "SKIP: /usr/bin/python3 has no msgpack (apt-get install python3-msgpack)"
	exit 0
fi
tmp=$(mktemp -d)
rep_pid=
cleanup() {
	[ -n "$rep_pid" ] && kill "$rep_pid" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

# 1. hex examples against the Python literal after each one
"$py" - "$doc" <<'PY'
import re, sys, msgpack
doc = open(sys.argv[1], encoding="utf-8").read()
pat = re.compile(r"<!-- example ([\w-]+) -->\s*```text\n(.*?)```\s*```python\n(.*?)```", re.S)
found = 0
for name, hexs, lit in pat.findall(doc):
    got = msgpack.unpackb(bytes.fromhex("".join(hexs.split())), raw=False,
                          strict_map_key=False)
    want = eval(lit, {"__builtins__": {}, "bytes": bytes})
    if got != want:
        sys.exit(f"example {name}: Python reads {got!r}, the doc says {want!r}")
    found += 1
if found < 7:
    sys.exit(f"only {found} examples with a Python literal in PROTOCOL.md")
print(f"ok: {found} examples decode as stated")
PY

# 2. the bodies the nngcat section builds are frames our codec accepts
"$py" - "$doc" "$tmp" <<'PY'
import re, sys, msgpack
doc = open(sys.argv[1], encoding="utf-8").read()
sec = doc[doc.index("## Talking to a server with nngcat"):doc.index("## JSON")]
bodies = re.findall(r"msgpack\.packb\(\s*(\[.*?\])\)\)", sec, re.S)
if len(bodies) < 3:
    sys.exit(f"nngcat section: found {len(bodies)} bodies, want 3 or more")
for i, b in enumerate(bodies):
    v = eval(b, {"__builtins__": {}, "bytes": bytes})
    open(f"{sys.argv[2]}/body{i}.bin", "wb").write(msgpack.packb(v))
print(f"ok: {len(bodies)} nngcat bodies built")
PY
for f in "$tmp"/body*.bin; do
	out=$("$tw" --decode-req "$f") || { echo "FAIL: $f: $out" >&2; exit 1; }
	echo "$out"
done
out=$("$tw" --decode-req "$tmp/body0.bin")
case "$out" in
*"op=put "*"name=jobs"*"timeout=-1 flags=1 item=c40568656c6c6f"*) ;;
*) echo "FAIL: the put body reads as: $out" >&2; exit 1 ;;
esac

# 3. the commands as written: nngcat --req with --file and --raw, reply
# read by Python (the server here is a stand-in that answers [1, 4, 1, 0])
"$py" -c 'import msgpack, sys
sys.stdout.buffer.write(msgpack.packb([1, 4, 1, 0]))' >"$tmp/rep.bin"
url="ipc://$tmp/sock"
timeout 20 nngcat --rep --listen "$url" --file "$tmp/rep.bin" --raw \
	>"$tmp/seen.bin" &
rep_pid=$!
for _ in $(seq 1 100); do
	[ -S "$tmp/sock" ] && break
	sleep 0.05
done
reply=$(timeout 10 nngcat --req --dial "$url" --file "$tmp/body0.bin" --raw |
	"$py" -c 'import msgpack, sys
print(msgpack.unpackb(sys.stdin.buffer.read()))')
[ "$reply" = "[1, 4, 1, 0]" ] || { echo "FAIL: reply read as '$reply'" >&2; exit 1; }
"$tw" --decode-rep "$tmp/rep.bin" | grep -q "^ok op=put req_id=1 status=0" ||
	{ echo "FAIL: stand-in reply does not decode" >&2; exit 1; }
kill "$rep_pid" 2>/dev/null || true
wait "$rep_pid" 2>/dev/null || true
rep_pid=
cmp "$tmp/seen.bin" "$tmp/body0.bin" ||
	{ echo "FAIL: the server did not receive the body unchanged" >&2; exit 1; }
echo "ok: nngcat request and reply as documented"
