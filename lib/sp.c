/*
 * sp.c - the SP wire format (sp.h), in one place for the server's
 * connections, the client's connection layer and direct connections. No
 * state, no locking.
 */
#include "sp.h"

#include <stdlib.h>
#include <string.h>

void
qpi_sp_hs_make(uint8_t hs[QPI_SP_HS_LEN], uint16_t proto)
{
	hs[0] = 0;
	hs[1] = 'S';
	hs[2] = 'P';
	hs[3] = 0;
	hs[4] = (uint8_t) (proto >> 8);
	hs[5] = (uint8_t) proto;
	hs[6] = 0;
	hs[7] = 0;
}

bool
qpi_sp_hs_check(const uint8_t hs[QPI_SP_HS_LEN], uint16_t proto)
{
	uint8_t want[QPI_SP_HS_LEN];

	qpi_sp_hs_make(want, proto);
	return memcmp(hs, want, sizeof(want)) == 0;
}

size_t
qpi_sp_frame_hdr(uint8_t *hdr, bool ipc, uint64_t len)
{
	if (ipc) {
		hdr[0] = 0x01;
	}
	qpi_sp_put64(hdr + (ipc ? 1 : 0), len);
	return ipc ? 9 : 8;
}

int
qpi_sp_frame_parse(const uint8_t *p, size_t n, bool ipc, uint64_t *lenp)
{
	size_t hl = ipc ? 9 : 8;

	if (n >= 1 && ipc && p[0] != 0x01) {
		return -1;
	}
	if (n < hl) {
		return 0;
	}
	*lenp = qpi_sp_get64(p + hl - 8);
	return (int) hl;
}

void
qpi_sp_put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		p[i] = (uint8_t) (v >> (8 * (7 - i)));
	}
}

size_t
qpi_sp_bt_len(const uint8_t *body, size_t len)
{
	for (size_t bt = 4; bt <= len && bt <= 4 * QPI_SP_MAX_HOPS; bt += 4) {
		if (body[bt - 4] & 0x80u) {
			return bt;
		}
	}
	return 0;
}

uint32_t
qpi_sp_get32(const uint8_t *p)
{
	return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16)
	    | ((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

void
qpi_sp_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) (v >> 24);
	p[1] = (uint8_t) (v >> 16);
	p[2] = (uint8_t) (v >> 8);
	p[3] = (uint8_t) v;
}

uint64_t
qpi_sp_get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++) {
		v = (v << 8) | p[i];
	}
	return v;
}

bool
qpi_sp_env_raw(const char *name)
{
	const char *s = getenv(name);

	return s == NULL || strcmp(s, "nng") != 0;
}
