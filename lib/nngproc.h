/*
 * nngproc.h - which process may use nng. nng does not survive fork(): in a
 * child forked after nng started in the parent, nng's first call that sets
 * up anything (a socket, dialer, listener, aio or TLS configuration)
 * panics ("nng is not fork-reentrant safe") and aborts, and the parent's
 * nng objects are served by threads that stayed in the parent. So a
 * forked child refuses both with a clear error: new network handles
 * (qpi_nng_claim) and the handles it inherited (each records its owner).
 */
#ifndef QPI_NNGPROC_H
#define QPI_NNGPROC_H

#include "qpi.h"

#include <stdbool.h>
#include <sys/types.h>

/* Called before the first nng call of anything that may start nng (the
 * connection layer's nng dials and listeners, link_nng.c): QP_OK, and this
 * process is nng's from then on; or QP_EINVAL naming the cause when this
 * process was forked from one that had claimed nng. what names the
 * address. */
int qpi_nng_claim(const char *what);

/* Whether a handle made by process owner is a forked child's copy here:
 * nothing of nng may be called on it, only the child's memory released. */
bool qpi_nng_forked(pid_t owner);

/* The error for a handle used in a forked child: QP_EINVAL. what names
 * the handle ("this connection", "listener tcp://127.0.0.1:7450"). */
int qpi_nng_forked_err(const char *what, pid_t owner);

#endif /* QPI_NNGPROC_H */
