# qpiped's metrics listener: it_metrics.sh exits 77 (skipped) only when
# promtool (Debian's prometheus, scripts/deps.sh test) is missing.
set_tests_properties(it_metrics PROPERTIES LABELS server SKIP_RETURN_CODE 77)
# The status page in headless chromium: exits 77 (skipped) when chromium
# is missing; its screenshot lands in build/test-artifacts/.
set_tests_properties(it_status_page PROPERTIES LABELS server
  SKIP_RETURN_CODE 77 TIMEOUT 600)
set_tests_properties(it_cli_top PROPERTIES LABELS cli)
