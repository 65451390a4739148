# qpiped's metrics listener: it_metrics.sh exits 77 (skipped) only when
# promtool (Debian's prometheus, scripts/deps.sh test) is missing.
set_tests_properties(it_metrics PROPERTIES LABELS server SKIP_RETURN_CODE 77)
