/*
 * crc32c.h - CRC-32C (Castagnoli), the checksum of durable queue files
 * (durq.h). Internal to libqpipe.
 */
#ifndef QPI_CRC32C_H
#define QPI_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C (Castagnoli) of len bytes, continuing from crc (0 to start). */
uint32_t qpi_crc32c(uint32_t crc, const void *buf, size_t len);

/* The same by the table alone (what a CPU without the instruction runs;
 * the tests hold the two to the same answers). */
uint32_t qpi_crc32c_table(uint32_t crc, const void *buf, size_t len);

#endif /* QPI_CRC32C_H */
