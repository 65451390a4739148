/*
 * tls.h - TLS configurations for tls+tcp:// (nng's TLS, mbedTLS inside):
 * a server's (certificate and key, optionally a CA that client
 * certificates must chain to) and a client's (a CA to verify the server,
 * on by default, and the name the server's certificate must carry).
 * Files are PEM. Used by direct connections (nngconn.c), qpiped and the
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

/* A server's config: cert (PEM, the certificate then any intermediates)
 * and key (PEM, unencrypted) are required and must match. With ca, every
 * client must present a certificate that chains to it (the handshake of
 * any other fails); without, clients are not asked for one. *cfgp belongs
 * to the caller (nng_tls_config_free). Errors: QP_EINVAL (a file missing,
 * unreadable or not what it should be, the key not the certificate's:
 * qp_errmsg() names the file and the cause), QP_ENOTSUP, QP_ENOMEM. */
int qpi_tls_server_config(
    nng_tls_config **cfgp, const char *cert, const char *key, const char *ca);

/* A client's config. Unless insecure, the server's certificate must chain
 * to ca (NULL: $QPIPE_TLS_CA, else the system's bundle) and carry
 * server_name (a DNS name or IP address; required unless insecure).
 * insecure skips both checks: for tests only, never in production. cert
 * and key (both or neither) give a client certificate, for servers that
 * ask for one. Errors as qpi_tls_server_config. */
int qpi_tls_client_config(nng_tls_config **cfgp, const char *ca,
    const char *server_name, const char *cert, const char *key, bool insecure);

/* The config that connection options name: for a listener (server true)
 * tls_cert, tls_key and tls_ca; for a dialer tls_ca, tls_server_name (NULL:
 * host, the URL's host), tls_cert/tls_key, tls_insecure_skip_verify. o may
 * be NULL (a listener then fails: it needs a certificate). */
int qpi_tls_config_opts(nng_tls_config **cfgp, bool server,
    const qp_conn_opts *o, const char *host);

/* What a TLS failure of nng (nrv: NNG_EPEERAUTH, NNG_ECRYPTO, a closed
 * stream in the handshake) most likely means, for a message: "the
 * server's certificate did not verify", etc. server: this end serves. */
const char *qpi_tls_why(int nrv, bool server);

/* After a client's TLS handshake failed (nng reports most failures
 * alike), finds out why with a second connection made with mbedTLS
 * directly, verification optional and no client certificate, bounded by
 * deadline_ns (and 3 s): the CA or name check that failed, or that the
 * server requires a client certificate. Writes one line to why (len
 * bytes) and returns true if it learnt the cause; false (why untouched)
 * if not, or if o skips verification. */
bool qpi_tls_diagnose(const qpi_addr *a, const qp_conn_opts *o,
    int64_t deadline_ns, char *why, size_t len);

#endif /* QPI_TLS_H */
