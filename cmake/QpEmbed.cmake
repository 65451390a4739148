# Turns a file into a C source that holds its bytes (run at build time:
# cmake -DIN=file -DOUT=file.c -DNAME=symbol -P QpEmbed.cmake). Defines
# `const unsigned char NAME[]` (NUL after the bytes) and
# `const size_t NAME_len` (without the NUL).
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}.tmp"
	"/* Generated from ${IN} by cmake/QpEmbed.cmake: do not edit. */\n"
	"#include <stddef.h>\n"
	"const unsigned char ${NAME}[] = {\n${bytes}0x00};\n"
	"const size_t ${NAME}_len = ${len};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
