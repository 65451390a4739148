/*
 * error.c - error texts, the per-thread detailed message behind qp_errmsg(),
 * durations and clocks. No locking: the message is thread-local.
 */
#include "qpi.h"
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char err_msg[512];

QP_API const char *
qp_strerror(int err)
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

QP_API const char *
qp_errmsg(void)
{
	return err_msg;
}

QP_API void
qp_free(void *buf)
{
	free(buf);
}

QP_API const char *
qp_version(void)
{
	return QP_VERSION_STRING;
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

void
qpi_err_clear(void)
{
	err_msg[0] = '\0';
}

int
qpi_duration_check(qp_duration d)
{
	if (d < QP_FOREVER) {
		return qpi_err(QP_EINVAL,
		    "timeout must be -1 (forever), 0 or positive, not %lld",
		    (long long) d);
	}
	return QP_OK;
}

int64_t
qpi_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t
qpi_now_ms(void)
{
	return qpi_now_ns() / 1000000;
}

int64_t
qpi_deadline_ns(qp_duration d)
{
	if (d < 0 || d > INT64_MAX / 1000000 - qpi_now_ns() / 1000000) {
		return INT64_MAX;
	}
	return qpi_now_ns() + d * 1000000;
}

int64_t
qpi_remaining_ns(int64_t deadline_ns)
{
	int64_t now;

	if (deadline_ns == INT64_MAX) {
		return INT64_MAX;
	}
	now = qpi_now_ns();
	return deadline_ns > now ? deadline_ns - now : 0;
}

struct timespec
qpi_ts_from_ns(int64_t ns)
{
	struct timespec ts;

	ts.tv_sec = (time_t) (ns / 1000000000);
	ts.tv_nsec = (long) (ns % 1000000000);
	return ts;
}

bool
qpi_name_valid(const char *name, size_t len)
{
	return qpi_wire_name_valid(name, len);
}
