/*
 * le.h - little-endian fields in byte buffers, whatever the host's order
 * (the durable queue file's layout, durq.h). Internal to libqpipe.
 */
#ifndef QPI_LE_H
#define QPI_LE_H

#include <stdint.h>

/* Stores v in p[0..3], least significant byte first. */
static inline void
qpi_le32_put(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++) {
		p[i] = (uint8_t) (v >> (8 * i));
	}
}

/* Stores v in p[0..7], least significant byte first. */
static inline void
qpi_le64_put(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		p[i] = (uint8_t) (v >> (8 * i));
	}
}

/* Reads the value qpi_le32_put stored at p. */
static inline uint32_t
qpi_le32_get(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--) {
		v = (v << 8) | p[i];
	}
	return v;
}

/* Reads the value qpi_le64_put stored at p. */
static inline uint64_t
qpi_le64_get(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--) {
		v = (v << 8) | p[i];
	}
	return v;
}

#endif /* QPI_LE_H */
