/*
 * log.c - qpiped's log: one line per event on stderr, "TIME LEVEL message",
 * written with a single write() so that lines from different threads never
 * interleave. Control characters in a message (which may quote a name or a
 * URL) are escaped. Warnings a flood repeats (accept failures, refused
 * connections) go through qps_log_limited: one line a second per place,
 * saying how many were left out.
 *
 * Locking: the level is set once at start-up; log_mu guards the
 * limiters' counts.
 */
#include "qps.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int qps_log_level = QPS_LOG_INFO;

static const char *const log_names[] = {"error", "warn", "info", "debug"};

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

int
qps_log_level_parse(const char *s)
{
	for (int i = 0; i < 4; i++) {
		if (strcmp(s, log_names[i]) == 0) {
			return i;
		}
	}
	return -1;
}

void
qps_log(int level, const char *fmt, ...)
{
	char msg[900], line[1024];
	struct timeval tv;
	struct tm tm;
	va_list ap;
	size_t n;

	if (level > qps_log_level || level < 0) {
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t) snprintf(line + n, sizeof(line) - n, ".%03ldZ %s ",
	    (long) (tv.tv_usec / 1000), log_names[level]);
	for (const char *p = msg; *p != '\0' && n + 5 < sizeof(line); p++) {
		unsigned char c = (unsigned char) *p;
		if (c < 0x20 || c == 0x7f) {
			n += (size_t) snprintf(
			    line + n, sizeof(line) - n, "\\x%02x", c);
		} else {
			line[n++] = (char) c;
		}
	}
	line[n++] = '\n';
	/* One write per line; a failed log write has nowhere to go. */
	ssize_t w = write(STDERR_FILENO, line, n);
	(void) w;
}

void
qps_log_limited(qps_loglimit *ll, int level, const char *fmt, ...)
{
	int64_t now = qpi_now_ns();
	uint64_t dropped = 0;
	bool say;
	char msg[800];
	va_list ap;

	if (level > qps_log_level || level < 0) {
		return;
	}
	pthread_mutex_lock(&log_mu);
	say = now >= ll->next_ns;
	if (say) {
		dropped = ll->dropped;
		ll->dropped = 0;
		ll->next_ns = now + QPS_LOG_LIMIT_NS;
	} else {
		ll->dropped++;
	}
	pthread_mutex_unlock(&log_mu);
	if (!say) {
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (dropped > 0) {
		qps_log(level, "%s (and %llu more like it in the last second)",
		    msg, (unsigned long long) dropped);
	} else {
		qps_log(level, "%s", msg);
	}
}
