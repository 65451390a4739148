/* wire.c - placeholder until the codec lands (see wire.h). */
#include "wire.h"

#include <string.h>

int
qpi_wire_check_value(const void *buf, size_t len)
{
	(void) buf;
	(void) len;
	return QP_EINVAL;
}

size_t
qpi_wire_bin_header(size_t len, uint8_t hdr[5])
{
	(void) len;
	(void) hdr;
	return 0;
}

bool
qpi_wire_bin_unwrap(const void *buf, size_t len, size_t *offp, size_t *lenp)
{
	(void) buf;
	(void) len;
	(void) offp;
	(void) lenp;
	return false;
}
