/*
 * errors.h - qpipe's error codes (errors.def, the one list shared by the C
 * API and the wire): their names and texts, and the calling thread's
 * detailed message. proto/ owns them so that the codec stands alone: it
 * reports through qpi_err() below, and libqpipe's qp_strerror() and
 * qp_errmsg() read the same table and the same message.
 */
#ifndef QP_ERRORS_H
#define QP_ERRORS_H

/* The text of an error code ("queue is empty"); "unknown error" for a
 * number errors.def does not list. A static string. */
const char *qpi_errtext(int err);

/* The name of an error code without its QP_ prefix ("EEMPTY", "OK"), as
 * PROTOCOL.md lists it; NULL for a number errors.def does not list. */
const char *qpi_errname(int err);

/* Records the calling thread's detailed message (printf-style, cut at 511
 * bytes) and returns err, so that a failing path reads
 * return qpi_err(QP_EINVAL, "...", ...). No allocation. */
int qpi_err(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The calling thread's last message ("" if none): what qp_errmsg() gives.
 * Valid until the thread's next qpi_err. */
const char *qpi_errmsg(void);

/* Clears the calling thread's message. */
void qpi_err_clear(void);

#endif /* QP_ERRORS_H */
