/*
 * tls.h - TLS configurations for tls+tcp:// (nng's TLS, mbedTLS inside):
 * a server's (certificate and key, optionally a CA that client
 * certificates must chain to) and a client's (a CA to verify the server,
 * on by default, and the name the server's certificate must carry).
 * Files are PEM. Used by direct connections (netconn.c), qpiped and the
 * remote queue client: hand the config to an nng listener or dialer with
 * NNG_OPT_TLS_CONFIG (it takes its own hold), then nng_tls_config_free()
 * your reference. This header is internal: it names an nng type.
 */
#ifndef QPI_TLS_H
#define QPI_TLS_H

#include "qpi.h"

#include <stdbool.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

/* The environment variable naming a client's CA file when none is given;
 * without either, clients use the system's bundle (QPI_TLS_SYSTEM_CA). */
#define QPI_TLS_CA_ENV    "QPIPE_TLS_CA"
#define QPI_TLS_SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

/* QP_OK when nng was built with a TLS engine, else QP_ENOTSUP with a
 * message saying so. */
int qpi_tls_available(void);

/* The config (the caller's) that connection options name. A listener
 * (server true): tls_cert and tls_key (PEM, matching) required; with
 * tls_ca, clients must present a certificate chaining to it. A dialer:
 * unless tls_insecure_skip_verify (tests only), the server's certificate
 * must chain to tls_ca (NULL: $QPIPE_TLS_CA, else the system's bundle)
 * and carry tls_server_name (NULL: host, the URL's host); tls_cert and
 * tls_key (both or neither) give a client certificate. o may be NULL.
 * QP_EINVAL (a bad file, named with the cause), QP_ENOTSUP, QP_ENOMEM. */
int qpi_tls_config_opts(nng_tls_config **cfgp, bool server,
    const qp_conn_opts *o, const char *host);

/* What a TLS failure of nng (nrv: NNG_EPEERAUTH, NNG_ECRYPTO, a closed
 * stream in the handshake) most likely means, for a message: "the
 * server's certificate did not verify", etc. server: this end serves. */
const char *qpi_tls_why(int nrv, bool server);

/* After a client's failed TLS handshake, learns why with a second
 * connection (mbedTLS, verification optional, until deadline_ns and 3 s):
 * true with one line in why, or false (why untouched). */
bool qpi_tls_diagnose(const qpi_addr *a, const qp_conn_opts *o,
    int64_t deadline_ns, char *why, size_t len);

#endif /* QPI_TLS_H */
