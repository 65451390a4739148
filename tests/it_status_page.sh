#!/usr/bin/env bash
# it_status_page.sh - qpiped's status page in a real browser: Debian's
# chromium, headless, loads / of the --metrics listener against a running
# qpiped; the DOM it leaves (--dump-dom) shows the figures the page read
# from /api/status, and they change as items are put and got, leased and
# confirmed. A screenshot is kept as a test artifact
# ($QP_BUILD_DIR/test-artifacts/status_page.png). Exits 77 (skipped) when
# chromium is missing (scripts/deps.sh test installs it).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cli_lib.sh"

CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
	echo "skip: chromium missing (scripts/deps.sh test installs it)"
	exit 77
fi
ART="${QP_BUILD_DIR:-$(dirname "$QP_BIN")}/test-artifacts"
mkdir -p "$ART"
Q="$QN-page"
# The page lists every queue of the host: this test's own shared-memory
# directory keeps other tests' queues off it.
export QPIPE_SHM_DIR="$T/shm"
mkdir -p "$QPIPE_SHM_DIR"

# browse ARGS...: headless chromium on the status page, bounded in time;
# the page's timers run on virtual time (3 s: 3 or 4 refreshes).
browse() {
	timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu \
		--disable-dev-shm-usage --no-first-run \
		--user-data-dir="$T/chromium" --virtual-time-budget=3000 \
		"$@" "$QP_METRICS/${PAGE_SUFFIX:-}" 2>>"$T/chromium.log"
}
# dom FILE: the page's DOM after its refreshes.
dom() {
	browse --dump-dom >"$1"
}
# val FILE QUEUE FIELD: the figure the page shows in QUEUE's row (its
# data-value), or "" if the row or the cell is missing.
val() {
	python3 - "$1" "$2" "$3" <<'EOF'
import re, sys
html, q, f = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
row = re.search(r'<tr data-queue="%s">(.*?)</tr>' % re.escape(q), html)
cell = row and re.search(r'<td class="%s" data-value="(\d+)"' % f, row.group(1))
print(cell.group(1) if cell else "")
EOF
}
# tile FILE ID: the text of a tile (connections, leased...).
tile() {
	sed -n "s/.*<b id=\"$2\">\([^<]*\)<.*/\1/p" "$1" | head -1
}

qp_start_server --metrics tcp://127.0.0.1:0
QP_METRICS=$(grep '^http://' "$T/qpiped.port" | head -1)

# The page served is the file in the source tree, whole, and it loads
# nothing from elsewhere.
if [ -n "${QP_SOURCE_DIR:-}" ]; then
	if curl -sf "$QP_METRICS/" | cmp -s - "$QP_SOURCE_DIR/server/status.html"; then
		ok "/ serves server/status.html"
	else
		bad "/ serves server/status.html" "differs"
	fi
fi
if curl -sf "$QP_METRICS/" | grep -Eiq '(src|href)="?(https?:)?//'; then
	bad "self-contained page" "it loads something from elsewhere"
else
	ok "self-contained page"
fi

# ---- first look: three items put ----
"$QPIPE" put "$QP_URL/$Q" a b c
dom "$T/dom1"
samples=$(sed -n 's/.*<body data-samples="\([0-9]*\)".*/\1/p' "$T/dom1")
if [ "${samples:-0}" -ge 2 ]; then
	ok "the page refreshes every second ($samples refreshes in 3 s)"
else
	bad "the page refreshes every second" "data-samples '$samples'"
fi
expect_eq "ready after 3 puts" "$(val "$T/dom1" "$Q" ready)" 3
expect_eq "puts after 3 puts" "$(val "$T/dom1" "$Q" puts)" 3
expect_eq "gets before any get" "$(val "$T/dom1" "$Q" gets)" 0

# ---- items got and put: the figures change ----
"$QPIPE" get -n 2 "$QP_URL/$Q" >/dev/null
"$QPIPE" put "shm://$Q" d e f g # local traffic shows too
dom "$T/dom2"
expect_eq "ready changes as items are got and put" \
	"$(val "$T/dom2" "$Q" ready)" 5
expect_eq "puts change" "$(val "$T/dom2" "$Q" puts)" 7
expect_eq "gets change" "$(val "$T/dom2" "$Q" gets)" 2

# ---- a task leased by a running worker: leases and connections ----
"$QPIPE" worker "$QP_URL/$Q" --results "$QP_URL/$Q-out" -- sleep 30 \
	2>/dev/null &
WK=$!
QP_PIDS+=("$WK")
for i in $(seq 1 100); do
	"$QPIPE" stat "$QP_URL/$Q" 2>/dev/null | grep -q '"leased": 1' && break
	sleep 0.1
done
dom "$T/dom3"
expect_eq "the row shows the lease" "$(val "$T/dom3" "$Q" leased)" 1
expect_eq "and one item fewer ready" "$(val "$T/dom3" "$Q" ready)" 4
c=$(tile "$T/dom3" conns)
if [ "${c:-0}" -ge 1 ]; then
	ok "connections shown ($c)"
else
	bad "connections shown" "'$c'"
fi
l=$(tile "$T/dom3" leased)
if [ "${l:-0}" -ge 1 ]; then
	ok "leases shown ($l)"
else
	bad "leases shown" "'$l'"
fi
rm -f "$ART/status_page.png"
browse --window-size=1200,800 --screenshot="$ART/status_page.png" >/dev/null
if [ "$(head -c 8 "$ART/status_page.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')" \
	== "89504e470d0a1a0a" ]; then
	ok "screenshot kept: $ART/status_page.png"
else
	bad "screenshot kept" "$(tail -3 "$T/chromium.log")"
fi
for c in $(ps -o pid= --ppid "$WK" 2>/dev/null); do
	kill -KILL "$c" 2>/dev/null || true
done
kill -KILL "$WK" 2>/dev/null || true
wait "$WK" 2>/dev/null || true

# ---- a server with a token: the page takes it after its address ----
echo "page-token-$$" >"$T/token"
chmod 600 "$T/token"
qp_stop_server
qp_start_server --metrics tcp://127.0.0.1:0 --auth-token-file "$T/token"
QP_METRICS=$(grep '^http://' "$T/qpiped.port" | head -1)
dom "$T/dom4"
if grep -q 'id="state" class="down">unreachable: token required' "$T/dom4"; then
	ok "without the token the page says it is wanted"
else
	bad "without the token the page says it is wanted" \
		"$(grep -o '<span id="state"[^<]*' "$T/dom4")"
fi
PAGE_SUFFIX="#token=page-token-$$" dom "$T/dom5"
expect_eq "with #token=TOKEN the figures show" "$(val "$T/dom5" "$Q" puts)" 7
finish
