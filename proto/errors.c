/*
 * errors.c - the names and texts of the error codes in errors.def, and the
 * per-thread detailed message that the codec (and libqpipe, through the
 * same calls) records with qpi_err(). Nothing here needs lib/: the codec
 * and its fuzz target link this file and msgpack-c only. No locking: the
 * message is thread-local, the tables are constant.
 */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char err_msg[512];

const char *
qpi_errtext(int err)
{
	switch (err) {
#define QP_ERR(name, num, text) \
	case num:               \
		return text;
#include "qpipe_errors.def"
#undef QP_ERR
	default:
		return "unknown error";
	}
}

const char *
qpi_errname(int err)
{
	switch (err) {
#define QP_ERR(name, num, text) \
	case num:               \
		return #name;
#include "qpipe_errors.def"
#undef QP_ERR
	default:
		return NULL;
	}
}

int
qpi_err(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_msg, sizeof(err_msg), fmt, ap);
	va_end(ap);
	return err;
}

const char *
qpi_errmsg(void)
{
	return err_msg;
}

void
qpi_err_clear(void)
{
	err_msg[0] = '\0';
}
