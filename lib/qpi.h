/*
 * qpi.h - libqpipe's internal declarations (qpi_ names), shared by the
 * modules of lib/ and visible to the tests, the server and the CLI through
 * the static library. Nothing here is installed.
 */
#ifndef QPI_H
#define QPI_H

#include "errors.h" /* qpi_err(), qpi_err_clear(): proto's, shared */
#include "qpipe.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <time.h>

/* Checks a duration: QP_OK for -1, 0 and > 0, else QP_EINVAL. */
int qpi_duration_check(qp_duration d);

/* Monotonic clock in milliseconds and nanoseconds. */
int64_t qpi_now_ms(void);
int64_t qpi_now_ns(void);

/* The absolute CLOCK_MONOTONIC deadline for a duration: for QP_FOREVER
 * returns INT64_MAX; the deadline is in nanoseconds. */
int64_t qpi_deadline_ns(qp_duration d);

/* Nanoseconds left until deadline (0 if past; INT64_MAX stays forever);
 * qpi_left_ns: the same at now, for a caller that has read the clock. */
int64_t qpi_remaining_ns(int64_t deadline_ns);
int64_t qpi_left_ns(int64_t deadline_ns, int64_t now);

/* Converts an absolute monotonic deadline in ns to a timespec. */
struct timespec qpi_ts_from_ns(int64_t ns);

/* Initialises cv on CLOCK_MONOTONIC, the clock of every deadline here. */
void qpi_cond_init(pthread_cond_t *cv);

/* Waits on cv (mu held) until woken or deadline_ns (INT64_MAX: no limit):
 * QP_OK, or QP_ETIMEDOUT once the deadline has passed. */
int qpi_cond_wait(
    pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns);

/* Names: 1..QP_NAME_MAX bytes of [A-Za-z0-9._-]. */
bool qpi_name_valid(const char *name, size_t len);

/* ---- addresses (addr.c) ---- */

typedef enum qpi_addr_kind {
	QPI_ADDR_SHM = 0, /* "jobs", "shm://jobs" */
	QPI_ADDR_TCP, /* "tcp://host:port/jobs" */
	QPI_ADDR_TLS, /* "tls+tcp://host:port/jobs" */
	QPI_ADDR_IPC, /* "ipc:///path/to/sock/jobs" */
} qpi_addr_kind;

#define QPI_HOST_MAX 255
#define QPI_PATH_MAX 107 /* sun_path holds 108 bytes with the NUL */
#define QPI_URL_MAX  300

typedef struct qpi_addr {
	qpi_addr_kind kind;
	char name[QP_NAME_MAX + 1]; /* queue or pipe name; "" for a server */
	char host[QPI_HOST_MAX + 1]; /* tcp/tls: host, IPv6 without brackets */
	uint16_t port; /* tcp/tls: port (default 7450) */
	char path[QPI_PATH_MAX + 1]; /* ipc: socket path */
	char url[QPI_URL_MAX + 1]; /* tcp/tls/ipc: the nng URL of the server */
} qpi_addr;

/* Parse modes for qpi_addr_parse. */
#define QPI_ADDR_NAMED  0x1u /* a queue or pipe address: a name is required */
#define QPI_ADDR_SERVER 0x2u /* a server address: no name (tcp/tls/ipc) */
#define QPI_ADDR_PORT0  0x4u /* port 0 allowed (listeners) */

/* Parses s into *a. Returns QP_OK or QP_EINVAL with qp_errmsg() naming
 * what is wrong. Never reads past the string's NUL. */
int qpi_addr_parse(const char *s, unsigned mode, qpi_addr *a);

#endif /* QPI_H */
