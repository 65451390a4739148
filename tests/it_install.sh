#!/usr/bin/env bash
# it_install.sh - packaging as a new user meets it: `make install
# PREFIX=DIR` (the Makefile's recipe, on this build tree) and `cmake
# --install --prefix DIR` put the programs, man pages, header, shared and
# static library, qpipe.pc and the CMake package under DIR; a small
# program builds against that with `pkg-config --cflags --libs qpipe`
# (shared), with `pkg-config --static` against libqpipe.a, and with
# find_package(qpipe) in CMake, and runs; the tree still works once moved
# elsewhere (qpipe.pc finds its prefix from its own place); the man pages
# say what --help says.
. "$(dirname "$0")/lib.sh"
src="${QP_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}"
B="${QP_BUILD_DIR:-$src/build}"

for t in cc pkg-config cmake make; do
	command -v "$t" >/dev/null 2>&1 || {
		echo "SKIP: no $t (scripts/deps.sh build installs it)"
		exit 77
	}
done
# A sanitizer build's library needs its runtime in the program too.
san=$(sed -n 's/^QP_SANITIZER:STRING=//p' "$B/CMakeCache.txt")
CFLAGS_SAN=${san:+-fsanitize=$san}

# 1. make install PREFIX=DIR: the Makefile's install step on this tree.
P="$T/prefix"
expect_rc "make install-only PREFIX=DIR" 0 \
	make -s -C "$src" install-only BUILD_DIR="$B" PREFIX="$P"
libdir=$(sed -n 's/^CMAKE_INSTALL_LIBDIR:PATH=//p' "$B/CMakeCache.txt")
for f in bin/qpipe bin/qpiped include/qpipe.h include/qpipe_errors.def \
	"$libdir/libqpipe.so" "$libdir/libqpipe.a" "$libdir/pkgconfig/qpipe.pc" \
	"$libdir/cmake/qpipe/qpipeConfig.cmake" share/man/man1/qpipe.1 \
	share/man/man1/qpiped.1; do
	[ -e "$P/$f" ] && ok "installed $f" || bad "install" "no $f under the prefix"
done
expect_eq "the installed qpipe runs" "$("$P/bin/qpipe" --version)" \
	"$("$B/bin/qpipe" --version)"
# the install goes where PREFIX says, not to the configured prefix
grep -q "$P" "$P/$libdir/cmake/qpipe/qpipeTargets.cmake" 2>/dev/null &&
	bad "relocatable CMake package" "it names $P" ||
	ok "the CMake package names no absolute prefix"
if grep -q '^prefix=/' "$P/$libdir/pkgconfig/qpipe.pc"; then
	bad "qpipe.pc" "fixed prefix: $(grep '^prefix=' "$P/$libdir/pkgconfig/qpipe.pc")"
else
	ok "qpipe.pc's prefix is relative to the file"
fi

# 2. A program, built with pkg-config alone, against the shared library.
cat >"$T/hello.c" <<'EOF'
#include <qpipe.h>
#include <stdio.h>
#include <string.h>

int
main(void)
{
	qp_queue *q;
	void *buf;
	size_t len;

	if (qp_queue_anon(&q, NULL) != QP_OK
	    || qp_queue_put(q, "hello", 5, QP_FOREVER) != QP_OK
	    || qp_queue_get(q, &buf, &len, 1000) != QP_OK) {
		fprintf(stderr, "hello: %s\n", qp_errmsg());
		return 1;
	}
	printf("qpipe %s: %.*s\n", qp_version(), (int) len, (char *) buf);
	qp_free(buf);
	qp_queue_free(q);
	return 0;
}
EOF
build_and_run() { # LABEL PREFIX
	local L=$1 pre=$2 flags rc=0
	export PKG_CONFIG_PATH="$pre/$libdir/pkgconfig"
	flags=$(pkg-config --cflags --libs qpipe 2>"$T/pc.err") || rc=$?
	expect_eq "$L pkg-config --cflags --libs qpipe succeeds" "$rc" 0
	case "$flags" in
	*-lqpipe*) ok "$L pkg-config prints the flags ($flags)" ;;
	*) bad "$L pkg-config" "printed '$flags' $(cat "$T/pc.err")" ;;
	esac
	# shellcheck disable=SC2086
	if cc $CFLAGS_SAN -o "$T/hello" "$T/hello.c" $flags 2>"$T/cc.err"; then
		ok "$L cc hello.c \$(pkg-config --cflags --libs qpipe)"
	else
		bad "$L cc with pkg-config" "$(head -c 600 "$T/cc.err")"
	fi
	expect_eq "$L the program runs on the installed libqpipe.so" \
		"$(LD_LIBRARY_PATH="$pre/$libdir" "$T/hello" 2>&1)" \
		"qpipe $("$B/bin/qpipe" --version | cut -d' ' -f2): hello"
	# (ldd's output in a file: grep -q would close the pipe early)
	LD_LIBRARY_PATH="$pre/$libdir" ldd "$T/hello" >"$T/ldd" 2>&1
	grep -q "$pre/$libdir/libqpipe.so" "$T/ldd" &&
		ok "$L it loads the installed library" || bad "$L ldd" "$(grep qpipe "$T/ldd")"

	# Static: libqpipe.a and what pkg-config --static lists beside it.
	flags=$(pkg-config --static --libs qpipe | sed 's/ -lqpipe / /; s/^-lqpipe //')
	# shellcheck disable=SC2086
	if cc $CFLAGS_SAN -o "$T/hello_static" "$T/hello.c" $(pkg-config --cflags qpipe) \
		"$pre/$libdir/libqpipe.a" $flags 2>"$T/cc.err"; then
		ok "$L cc hello.c libqpipe.a \$(pkg-config --static --libs qpipe)"
	else
		bad "$L static link" "$(head -c 600 "$T/cc.err")"
	fi
	expect_eq "$L the static program runs" "$("$T/hello_static" 2>&1 | cut -d: -f2)" " hello"
	ldd "$T/hello_static" >"$T/ldd" 2>&1
	if grep -q libqpipe "$T/ldd"; then
		bad "$L static" "it loads libqpipe.so"
	else
		ok "$L the static program needs no libqpipe.so"
	fi
	unset PKG_CONFIG_PATH
}
build_and_run "prefix:" "$P"

# 3. The same tree moved elsewhere: pkg-config follows.
mv "$P" "$T/moved"
build_and_run "moved:" "$T/moved"

# 4. find_package(qpipe) and qpipe::qpipe from a CMake project.
mkdir -p "$T/cm"
cp "$T/hello.c" "$T/cm/"
cat >"$T/cm/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.18)
project(hello C)
find_package(qpipe 0.1 CONFIG REQUIRED)
add_executable(hello hello.c)
target_link_libraries(hello PRIVATE qpipe::qpipe)
target_compile_options(hello PRIVATE $CFLAGS_SAN)
target_link_options(hello PRIVATE $CFLAGS_SAN)
EOF
if cmake -S "$T/cm" -B "$T/cm/b" -DCMAKE_PREFIX_PATH="$T/moved" >"$T/cm.log" 2>&1 &&
	cmake --build "$T/cm/b" >>"$T/cm.log" 2>&1; then
	ok "find_package(qpipe) + qpipe::qpipe builds"
	expect_eq "and runs" "$(LD_LIBRARY_PATH="$T/moved/$libdir" "$T/cm/b/hello" | cut -d: -f2)" " hello"
else
	bad "find_package" "$(tail -n 15 "$T/cm.log")"
fi

# 5. cmake --install --prefix DIR (the command the issue names) works too.
expect_rc "cmake --install --prefix DIR" 0 cmake --install "$B" --prefix "$T/p2"
[ -e "$T/p2/$libdir/libqpipe.a" ] && [ -e "$T/p2/share/man/man1/qpiped.1" ] &&
	ok "cmake --install: the static library and the man pages too" ||
	bad "cmake --install" "$(cd "$T/p2" && find . -type f | head -20)"

# 6. The man pages are the --help texts: every line of each command's
# help is in qpipe.1, every line of qpiped --help in qpiped.1.
unroff() { sed -e '/^\.\\"/d' -e 's/\\-/-/g; s/\\e/\\/g; s/^\\&//' "$1"; }
unroff "$T/p2/share/man/man1/qpipe.1" >"$T/qpipe.man"
unroff "$T/p2/share/man/man1/qpiped.1" >"$T/qpiped.man"
missing=0
{
	"$B/bin/qpipe" --help | tail -n +2
	for c in put get size stat ls create rm send recv worker ping; do
		"$B/bin/qpipe" "$c" --help
	done
} | grep -v '^$' | while IFS= read -r line; do
	grep -qxF -- "$line" "$T/qpipe.man" || echo "$line"
done >"$T/qpipe.missing"
expect_eq "qpipe.1 holds every line of qpipe's help" "$(head -n 3 "$T/qpipe.missing")" ""
"$B/bin/qpiped" --help | tail -n +2 | grep -v '^$' | while IFS= read -r line; do
	grep -qxF -- "$line" "$T/qpiped.man" || echo "$line"
done >"$T/qpiped.missing"
expect_eq "qpiped.1 holds every line of qpiped's help" "$(head -n 3 "$T/qpiped.missing")" ""
if command -v man >/dev/null 2>&1; then
	MANWIDTH=80 man --warnings -l "$T/p2/share/man/man1/qpipe.1" >"$T/man.out" 2>"$T/man.err"
	expect_eq "man renders qpipe.1 without a warning" "$(cat "$T/man.err")" ""
	grep -qF "qpipe worker ADDR [ADDR...] --results ADDR" "$T/man.out" &&
		ok "man qpipe shows the worker's synopsis" || bad "man qpipe" "$(head -5 "$T/man.out")"
	MANWIDTH=80 man --warnings -l "$T/p2/share/man/man1/qpiped.1" >"$T/man.out" 2>"$T/man.err"
	expect_eq "man renders qpiped.1 without a warning" "$(cat "$T/man.err")" ""
	grep -q -- "--auth-token-file FILE" "$T/man.out" &&
		ok "man qpiped shows its options" || bad "man qpiped" "$(head -5 "$T/man.out")"
fi
finish
