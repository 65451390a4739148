/*
 * crc32c.c - CRC-32C (Castagnoli), reflected polynomial 0x82F63B78: the
 * CPU's crc32 instruction where it has one (x86-64 with SSE4.2, eight
 * bytes a step), else a table a byte at a time. Every durable record is
 * summed on its way to the log and again when the log is read.
 *
 * Locking: the table is built once (pthread_once), then only read.
 */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

static uint32_t crc_tab[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void
crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++) {
			c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		}
		crc_tab[i] = c;
	}
}

uint32_t
qpi_crc32c_table(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&crc_once, crc_init);
	crc = ~crc;
	while (len--) {
		crc = crc_tab[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	}
	return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2"))) static uint32_t
crc_sse42(uint32_t crc, const uint8_t *p, size_t len)
{
	uint64_t c = ~crc;

	for (; len >= 8; p += 8, len -= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		c = __builtin_ia32_crc32di(c, w);
	}
	uint32_t c32 = (uint32_t) c;
	while (len--) {
		c32 = __builtin_ia32_crc32qi(c32, *p++);
	}
	return ~c32;
}
#endif

uint32_t
qpi_crc32c(uint32_t crc, const void *buf, size_t len)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	if (__builtin_cpu_supports("sse4.2")) {
		return crc_sse42(crc, buf, len);
	}
#endif
	return qpi_crc32c_table(crc, buf, len);
}
