/*
 * error.c - the public faces of the error texts and of the per-thread
 * detailed message (both kept in proto/errors.c, which the codec shares),
 * durations, clocks and waits on them. No state of its own, no locking.
 */
#include "qpi.h"
#include "wire.h"

#include <errno.h>
#include <stdlib.h>

QP_API const char *
qp_strerror(int err)
{
	return qpi_errtext(err);
}

QP_API const char *
qp_errmsg(void)
{
	return qpi_errmsg();
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
	int64_t now;

	if (d < 0) {
		return INT64_MAX;
	}
	now = qpi_now_ns();
	return d > INT64_MAX / 1000000 - now / 1000000 ? INT64_MAX
	                                               : now + d * 1000000;
}

int64_t
qpi_left_ns(int64_t deadline_ns, int64_t now)
{
	return deadline_ns == INT64_MAX ? INT64_MAX
	    : deadline_ns > now         ? deadline_ns - now
	                                : 0;
}

int64_t
qpi_remaining_ns(int64_t deadline_ns)
{
	return deadline_ns == INT64_MAX
	    ? INT64_MAX
	    : qpi_left_ns(deadline_ns, qpi_now_ns());
}

struct timespec
qpi_ts_from_ns(int64_t ns)
{
	struct timespec ts;

	ts.tv_sec = (time_t) (ns / 1000000000);
	ts.tv_nsec = (long) (ns % 1000000000);
	return ts;
}

void
qpi_cond_init(pthread_cond_t *cv)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
}

int
qpi_cond_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns)
{
	struct timespec ts;

	if (deadline_ns == INT64_MAX) {
		pthread_cond_wait(cv, mu);
		return QP_OK;
	}
	if (qpi_remaining_ns(deadline_ns) == 0) {
		return QP_ETIMEDOUT;
	}
	ts = qpi_ts_from_ns(deadline_ns);
	return pthread_cond_timedwait(cv, mu, &ts) == ETIMEDOUT ? QP_ETIMEDOUT
	                                                        : QP_OK;
}

bool
qpi_name_valid(const char *name, size_t len)
{
	return qpi_wire_name_valid(name, len);
}
