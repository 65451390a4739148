#!/usr/bin/env bash
# Formats the C sources with the checked-in .clang-format, or with --check
# fails listing the files that are not formatted.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files -co --exclude-standard -- '*.c' '*.h' | grep -v '^build')
[ ${#files[@]} -eq 0 ] && exit 0
if [ "${1:-}" = "--check" ]; then
	bad=()
	for f in "${files[@]}"; do
		[ -f "$f" ] || continue
		clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
	done
	if [ ${#bad[@]} -ne 0 ]; then
		echo "qpipe: not clang-formatted (run 'make format'): ${bad[*]}" >&2
		exit 1
	fi
	echo "qpipe: formatting ok (${#files[@]} files)"
else
	clang-format -i "${files[@]}"
fi
