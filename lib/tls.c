/*
 * tls.c - builds the nng_tls_config of a tls+tcp:// server or client from
 * PEM files. Each file is read here and checked with mbedTLS first (a
 * certificate parses, a key parses and matches its certificate), so that a
 * bad file fails with a message that names it and the cause, rather than
 * with nng's generic error at the first handshake; then the same PEM text
 * goes to nng. The handshake itself is nng's (mbedTLS). nng reports a
 * failed handshake with one generic error, so after a client's handshake
 * fails, qpi_tls_diagnose makes a second connection (a plain socket link)
 * with mbedTLS directly, verification optional, to learn the cause (not
 * signed by the CA, wrong name, expired, a client certificate required)
 * for the message. No state
 * and no locking: each call builds a new config that the caller owns.
 */
#include "tls.h"
#include "link.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "auth.h"

#define PEM_MAX ((size_t) 4 << 20) /* the largest PEM file read */

static const qp_conn_opts tls_none; /* for o NULL */

/* Reads a whole PEM file, NUL-terminated: *bufp is malloc'd, *lenp counts
 * the NUL (what mbedTLS's parsers want for PEM). what names the file's
 * role in messages. */
static int
tls_read(const char *path, const char *what, char **bufp, size_t *lenp)
{
	unsigned mode;
	int rv
	    = qpi_file_read(path, what, PEM_MAX + 1, true, bufp, lenp, &mode);

	if (rv == QP_OK && *lenp > PEM_MAX) {
		free(*bufp);
		return qpi_err(QP_EINVAL,
		    "the %s file '%s' is over the %zu bytes a PEM file may "
		    "have",
		    what, path, PEM_MAX);
	}
	*lenp += rv == QP_OK ? 1 : 0; /* the NUL counts */
	return rv;
}

/* Frees a file's text, wiping it first (it may hold a key). */
static void
tls_drop(char *buf, size_t len)
{
	if (buf != NULL) {
		mbedtls_platform_zeroize(buf, len);
		free(buf);
	}
}

/* Checks that the text holds certificates only, all of them parsed. */
static int
tls_check_certs(const char *pem, size_t len, const char *what,
    const char *path, mbedtls_x509_crt *crt)
{
	char why[128];
	int mrv;

	if (strstr(pem, "-----BEGIN CERTIFICATE-----") == NULL) {
		return qpi_err(QP_EINVAL,
		    "the %s file '%s' holds no PEM certificate", what, path);
	}
	mrv = mbedtls_x509_crt_parse(crt, (const unsigned char *) pem, len);
	if (mrv < 0) {
		mbedtls_strerror(mrv, why, sizeof(why));
		return qpi_err(QP_EINVAL,
		    "the %s file '%s' holds a certificate that cannot be "
		    "read: %s",
		    what, path, why);
	}
	if (mrv > 0) {
		return qpi_err(QP_EINVAL,
		    "%d of the certificates in the %s file '%s' cannot be "
		    "read",
		    mrv, what, path);
	}
	return QP_OK;
}

/* Loads a certificate and its key into cfg, checking they match. */
static int
tls_own_cert(nng_tls_config *cfg, const char *cert, const char *key)
{
	char *cpem = NULL, *kpem = NULL;
	size_t clen = 0, klen = 0;
	mbedtls_x509_crt crt;
	mbedtls_pk_context pk;
	char why[128];
	int rv, mrv, nrv;

	mbedtls_x509_crt_init(&crt);
	mbedtls_pk_init(&pk);
	if ((rv = tls_read(cert, "certificate", &cpem, &clen)) != QP_OK
	    || (rv = tls_read(key, "key", &kpem, &klen)) != QP_OK
	    || (rv = tls_check_certs(cpem, clen, "certificate", cert, &crt))
	        != QP_OK) {
		goto out;
	}
	mrv = mbedtls_pk_parse_key(
	    &pk, (const unsigned char *) kpem, klen, NULL, 0);
	if (mrv == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
		rv = qpi_err(QP_EINVAL,
		    "the key file '%s' is encrypted: give an unencrypted key",
		    key);
		goto out;
	}
	if (mrv != 0) {
		mbedtls_strerror(mrv, why, sizeof(why));
		rv = qpi_err(QP_EINVAL,
		    "the key file '%s' holds no private key that can be "
		    "read: %s",
		    key, why);
		goto out;
	}
	if (mbedtls_pk_check_pair(&crt.pk, &pk) != 0) {
		rv = qpi_err(QP_EINVAL,
		    "the key file '%s' is not the key of the certificate in "
		    "'%s'",
		    key, cert);
		goto out;
	}
	if ((nrv = nng_tls_config_own_cert(cfg, cpem, kpem, NULL)) != 0) {
		rv = qpi_err(nrv == NNG_ENOMEM ? QP_ENOMEM : QP_EINVAL,
		    "cannot use the certificate '%s' with the key '%s': %s",
		    cert, key, nng_strerror(nrv));
	}
out:
	mbedtls_pk_free(&pk);
	mbedtls_x509_crt_free(&crt);
	tls_drop(cpem, clen);
	tls_drop(kpem, klen);
	return rv;
}

/* Loads the CA certificates that the peer's certificate must chain to. */
static int
tls_ca(nng_tls_config *cfg, const char *ca)
{
	char *pem = NULL;
	size_t len = 0;
	mbedtls_x509_crt crt;
	int rv, nrv;

	mbedtls_x509_crt_init(&crt);
	if ((rv = tls_read(ca, "CA", &pem, &len)) == QP_OK
	    && (rv = tls_check_certs(pem, len, "CA", ca, &crt)) == QP_OK
	    && (nrv = nng_tls_config_ca_chain(cfg, pem, NULL)) != 0) {
		rv = qpi_err(nrv == NNG_ENOMEM ? QP_ENOMEM : QP_EINVAL,
		    "cannot use the CA file '%s': %s", ca, nng_strerror(nrv));
	}
	mbedtls_x509_crt_free(&crt);
	tls_drop(pem, len);
	return rv;
}

/* The CA file a client verifies with: ca, else $QPIPE_TLS_CA, else the
 * system's bundle. */
static const char *
tls_client_ca(const char *ca)
{
	const char *env = getenv(QPI_TLS_CA_ENV);

	return ca != NULL && ca[0] != '\0'  ? ca
	    : env != NULL && env[0] != '\0' ? env
	                                    : QPI_TLS_SYSTEM_CA;
}

static int
tls_alloc(nng_tls_config **cfgp, nng_tls_mode mode)
{
	int nrv = nng_tls_config_alloc(cfgp, mode);

	if (nrv != 0) {
		return qpi_err(nrv == NNG_ENOMEM ? QP_ENOMEM : QP_ENOTSUP,
		    "cannot make a TLS configuration: %s%s", nng_strerror(nrv),
		    nrv == NNG_ENOTSUP ? " (this nng has no TLS engine)" : "");
	}
	return QP_OK;
}

int
qpi_tls_available(void)
{
	nng_tls_config *cfg;
	int rv = tls_alloc(&cfg, NNG_TLS_MODE_CLIENT);

	if (rv == QP_OK) {
		nng_tls_config_free(cfg);
	}
	return rv;
}

int
qpi_tls_config_opts(nng_tls_config **cfgp, bool server, const qp_conn_opts *o,
    const char *host)
{
	nng_tls_config *cfg;
	int rv = QP_OK, nrv = 0;

	o = o != NULL ? o : &tls_none;
	const char *name
	    = o->tls_server_name != NULL ? o->tls_server_name : host;
	bool insecure = !server && o->tls_insecure_skip_verify;
	/* A listener verifies clients only with a CA file given. */
	const char *ca = server ? o->tls_ca
	    : insecure          ? NULL
	                        : tls_client_ca(o->tls_ca);

	if (server && (o->tls_cert == NULL || o->tls_key == NULL)) {
		return qpi_err(QP_EINVAL,
		    "a tls+tcp:// listener needs a certificate and its key "
		    "(tls_cert and tls_key)");
	}
	if (!insecure && !server && (name == NULL || name[0] == '\0')) {
		return qpi_err(QP_EINVAL,
		    "a TLS client needs the server's name to verify its "
		    "certificate");
	}
	if ((o->tls_cert == NULL) != (o->tls_key == NULL)) {
		return qpi_err(QP_EINVAL,
		    "a client certificate needs both its certificate file and "
		    "its key file");
	}
	if ((rv = tls_alloc(
	         &cfg, server ? NNG_TLS_MODE_SERVER : NNG_TLS_MODE_CLIENT))
	    != QP_OK) {
		return rv;
	}
	if (o->tls_cert != NULL) {
		rv = tls_own_cert(cfg, o->tls_cert, o->tls_key);
	}
	if (rv == QP_OK && ca != NULL) {
		rv = tls_ca(cfg, ca);
	}
	if (rv == QP_OK
	    && (nrv = nng_tls_config_auth_mode(cfg,
	            ca != NULL ? NNG_TLS_AUTH_MODE_REQUIRED
	                       : NNG_TLS_AUTH_MODE_NONE))
	        != 0) {
		rv = qpi_err(QP_ESYSTEM, "cannot set the TLS verification: %s",
		    nng_strerror(nrv));
	}
	if (rv == QP_OK && !server && name != NULL && name[0] != '\0'
	    && (nrv = nng_tls_config_server_name(cfg, name)) != 0) {
		rv = qpi_err(nrv == NNG_ENOMEM ? QP_ENOMEM : QP_EINVAL,
		    "cannot set the TLS server name '%s': %s", name,
		    nng_strerror(nrv));
	}
	if (rv != QP_OK) {
		nng_tls_config_free(cfg);
		return rv;
	}
	*cfgp = cfg;
	return QP_OK;
}

const char *
qpi_tls_why(int nrv, bool server)
{
	switch (nrv) {
	case NNG_EPEERAUTH:
		return server ? "the client's certificate did not verify "
		                "against this end's CA, or it sent none"
		              : "the server's certificate did not verify: "
		                "not signed by the CA this end trusts, "
		                "expired, or not issued for the host dialed";
	case NNG_ECRYPTO:
		return server ? "the TLS handshake failed (the client may "
		                "not trust this end's certificate)"
		              : "the TLS handshake failed (the server may "
		                "require a client certificate that this end "
		                "does not have or it does not trust)";
	case NNG_ECLOSED:
	case NNG_ECONNSHUT:
	case NNG_ECONNRESET:
	case NNG_ECONNABORTED:
		return server ? "the client closed the connection in the TLS "
		                "handshake (it may not trust this end's "
		                "certificate)"
		              : "the server closed the connection in the TLS "
		                "handshake (it may require a client "
		                "certificate that this end does not have or "
		                "it does not trust, or not speak TLS)";
	default:
		return nng_strerror(nrv);
	}
}

/* ---- diagnosis of a client's failed handshake ---- */

#define DIAG_MS_MAX 3000 /* the longest the second connection may take */

static int
diag_rng(void *arg, unsigned char *buf, size_t len)
{
	(void) arg;
	return qpi_random(buf, len) == QP_OK ? 0
	                                     : MBEDTLS_ERR_SSL_INTERNAL_ERROR;
}

/* The second connection: a plain socket link (link_sock.c), the connect
 * and each transfer bounded by ns. */
typedef struct diag_io {
	qpi_link *l;
	int64_t ns;
} diag_io;

static int
diag_send(void *arg, const unsigned char *buf, size_t len)
{
	diag_io *d = arg;
	struct iovec v
	    = {.iov_base = (void *) (uintptr_t) buf, .iov_len = len};

	return d->l->ops->send(d->l, &v, 1, qpi_now_ns() + d->ns) == QP_OK
	    ? (int) len
	    : MBEDTLS_ERR_SSL_CONN_EOF;
}

static int
diag_recv(void *arg, unsigned char *buf, size_t len)
{
	diag_io *d = arg;
	size_t n = 0;

	return d->l->ops->recv(d->l, buf, len, &n, qpi_now_ns() + d->ns)
	        == QP_OK
	    ? (int) n
	    : MBEDTLS_ERR_SSL_CONN_EOF;
}

bool
qpi_tls_diagnose(const qpi_addr *a, const qp_conn_opts *o, int64_t deadline_ns,
    char *why, size_t len)
{
	mbedtls_ssl_config conf;
	mbedtls_ssl_context ssl;
	mbedtls_x509_crt ca;
	const char *cafile, *name;
	char *pem = NULL;
	size_t pemlen = 0;
	int64_t left = qpi_remaining_ns(deadline_ns);
	diag_io io = {.ns = (int64_t) DIAG_MS_MAX * 1000000};
	bool found = false;
	int mrv;

	o = o != NULL ? o : &tls_none;
	if (o->tls_insecure_skip_verify) {
		return false;
	}
	if (left < io.ns) {
		io.ns = left < 100000000 ? 100000000
		                         : left; /* 100 ms at least */
	}
	cafile = tls_client_ca(o->tls_ca);
	name = o->tls_server_name != NULL ? o->tls_server_name : a->host;
	mbedtls_x509_crt_init(&ca);
	mbedtls_ssl_config_init(&conf);
	mbedtls_ssl_init(&ssl);
	if (tls_read(cafile, "CA", &pem, &pemlen) != QP_OK
	    || mbedtls_x509_crt_parse(&ca, (const unsigned char *) pem, pemlen)
	        < 0
	    || mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT,
	           MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT)
	        != 0) {
		goto out;
	}
	mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
	mbedtls_ssl_conf_ca_chain(&conf, &ca, NULL);
	mbedtls_ssl_conf_rng(&conf, diag_rng, NULL);
	mbedtls_ssl_conf_min_version(
	    &conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
	if (mbedtls_ssl_setup(&ssl, &conf) != 0
	    || mbedtls_ssl_set_hostname(&ssl, name) != 0
	    || qpi_link_sock_dial(&io.l, a, qpi_now_ns() + io.ns) != QP_OK) {
		goto out;
	}
	mbedtls_ssl_set_bio(&ssl, &io, diag_send, diag_recv, NULL);
	do {
		mrv = mbedtls_ssl_handshake(&ssl);
	} while (mrv == MBEDTLS_ERR_SSL_WANT_READ
	    || mrv == MBEDTLS_ERR_SSL_WANT_WRITE);
	uint32_t flags = mbedtls_ssl_get_verify_result(&ssl);
	if (flags != 0 && flags != (uint32_t) -1) {
		char info[512];
		int n = mbedtls_x509_crt_verify_info(
		    info, sizeof(info), "", flags);
		/* one line: the reasons, joined */
		for (int i = 0; i < n; i++) {
			if (info[i] == '\n') {
				info[i] = i + 1 < n ? ';' : '\0';
			}
		}
		uint8_t ip[16];
		bool literal = inet_pton(AF_INET, name, ip) == 1
		    || inet_pton(AF_INET6, name, ip) == 1;
		snprintf(why, len,
		    "the server's certificate did not verify as '%s' against "
		    "the CA file '%s': %s%s",
		    name, cafile, info,
		    literal && (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) != 0
		        ? " (this mbedTLS matches names against the "
		          "certificate's DNS names only: list the address as "
		          "a "
		          "DNS name too, or set tls_server_name)"
		        : "");
		found = true;
	} else if (mrv == 0) {
		snprintf(why, len,
		    "the server's certificate verified; the server ended the "
		    "handshake (%s)",
		    o->tls_cert != NULL
		        ? "it may not trust this end's client certificate"
		        : "it may require a client certificate: none is set");
		found = true;
	} else if (ssl.client_auth) {
		snprintf(why, len,
		    "the server requires a client certificate%s",
		    o->tls_cert != NULL ? " and refused this end's"
		                        : ", and this end has none");
		found = true;
	}
	mbedtls_ssl_close_notify(&ssl);
	io.l->ops->free(io.l);
out:
	mbedtls_ssl_free(&ssl);
	mbedtls_ssl_config_free(&conf);
	mbedtls_x509_crt_free(&ca);
	free(pem);
	return found;
}
