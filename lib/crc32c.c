/*
 * crc32c.c - CRC-32C (Castagnoli), table-driven with the reflected
 * polynomial 0x82F63B78. Locking: the table is built once (pthread_once),
 * then only read.
 */
#include "crc32c.h"

#include <pthread.h>

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
qpi_crc32c(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&crc_once, crc_init);
	crc = ~crc;
	while (len--) {
		crc = crc_tab[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	}
	return ~crc;
}
