/*
 * tls.c - builds the nng_tls_config of a tls+tcp:// server or client from
 * PEM files. Each file is read here and checked with mbedTLS first (a
 * certificate parses, a key parses and matches its certificate), so that a
 * bad file fails with a message that names it and the cause, rather than
 * with nng's generic error at the first handshake; then the same PEM text
 * goes to nng. The handshake itself is nng's (mbedTLS). No state and no
 * locking: each call builds a new config that the caller owns.
 */
#include "tls.h"

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
#include <mbedtls/x509_crt.h>

#define PEM_MAX ((size_t) 4 << 20) /* the largest PEM file read */

int
qpi_tls_available(void)
{
	nng_tls_config *cfg;
	int nrv = nng_tls_config_alloc(&cfg, NNG_TLS_MODE_CLIENT);

	if (nrv != 0) {
		return qpi_err(nrv == NNG_ENOMEM ? QP_ENOMEM : QP_ENOTSUP,
		    "tls+tcp:// is not available: this nng has no TLS engine "
		    "(%s)",
		    nng_strerror(nrv));
	}
	nng_tls_config_free(cfg);
	return QP_OK;
}

/* Reads a whole PEM file, NUL-terminated: *bufp is malloc'd, *lenp counts
 * the NUL (what mbedTLS's parsers want for PEM). what names the file's
 * role in messages. */
static int
tls_read(const char *path, const char *what, char **bufp, size_t *lenp)
{
	struct stat st;
	char *buf;
	size_t got = 0;
	int fd, e;

	if (path == NULL || path[0] == '\0') {
		return qpi_err(QP_EINVAL, "no %s file given", what);
	}
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		e = errno;
		return qpi_err(QP_EINVAL, "cannot open the %s file '%s': %s",
		    what, path, strerror(e));
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return qpi_err(QP_EINVAL, "the %s file '%s' is not a file",
		    what, path);
	}
	if ((size_t) st.st_size > PEM_MAX) {
		close(fd);
		return qpi_err(QP_EINVAL,
		    "the %s file '%s' is %lld bytes, over the %zu a PEM file "
		    "may have",
		    what, path, (long long) st.st_size, PEM_MAX);
	}
	if ((buf = malloc((size_t) st.st_size + 1)) == NULL) {
		close(fd);
		return qpi_err(QP_ENOMEM, "out of memory reading '%s'", path);
	}
	while (got < (size_t) st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t) st.st_size - got);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			e = n < 0 ? errno : EIO;
			close(fd);
			free(buf);
			return qpi_err(QP_EINVAL,
			    "cannot read the %s file '%s': %s", what, path,
			    strerror(e));
		}
		got += (size_t) n;
	}
	close(fd);
	buf[got] = '\0';
	*bufp = buf;
	*lenp = got + 1;
	return QP_OK;
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

	if (cert == NULL || key == NULL) {
		return qpi_err(QP_EINVAL,
		    "a TLS certificate needs both its certificate file and "
		    "its key file");
	}
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

static int
tls_alloc(nng_tls_config **cfgp, nng_tls_mode mode)
{
	int nrv = nng_tls_config_alloc(cfgp, mode);

	if (nrv != 0) {
		return qpi_err(nrv == NNG_ENOMEM ? QP_ENOMEM : QP_ENOTSUP,
		    "cannot make a TLS configuration: %s%s",
		    nng_strerror(nrv),
		    nrv == NNG_ENOTSUP ? " (this nng has no TLS engine)" : "");
	}
	return QP_OK;
}

int
qpi_tls_server_config(nng_tls_config **cfgp, const char *cert,
    const char *key, const char *ca)
{
	nng_tls_config *cfg;
	int rv;

	if (cert == NULL || key == NULL) {
		return qpi_err(QP_EINVAL,
		    "a tls+tcp:// listener needs a certificate and its key "
		    "(tls_cert and tls_key)");
	}
	if ((rv = tls_alloc(&cfg, NNG_TLS_MODE_SERVER)) != QP_OK) {
		return rv;
	}
	if ((rv = tls_own_cert(cfg, cert, key)) == QP_OK && ca != NULL
	    && (rv = tls_ca(cfg, ca)) == QP_OK
	    && nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED)
	        != 0) {
		rv = qpi_err(QP_ESYSTEM, "cannot require client certificates");
	}
	if (rv == QP_OK && ca == NULL
	    && nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_NONE) != 0) {
		rv = qpi_err(QP_ESYSTEM, "cannot set the TLS verification");
	}
	if (rv != QP_OK) {
		nng_tls_config_free(cfg);
		return rv;
	}
	*cfgp = cfg;
	return QP_OK;
}

int
qpi_tls_client_config(nng_tls_config **cfgp, const char *ca,
    const char *server_name, const char *cert, const char *key,
    bool insecure)
{
	nng_tls_config *cfg;
	int rv = QP_OK, nrv;

	if (!insecure && (server_name == NULL || server_name[0] == '\0')) {
		return qpi_err(QP_EINVAL,
		    "a TLS client needs the server's name to verify its "
		    "certificate");
	}
	if ((cert == NULL) != (key == NULL)) {
		return qpi_err(QP_EINVAL,
		    "a client certificate needs both its certificate file and "
		    "its key file");
	}
	if ((rv = tls_alloc(&cfg, NNG_TLS_MODE_CLIENT)) != QP_OK) {
		return rv;
	}
	if (insecure) {
		nrv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_NONE);
	} else {
		if (ca == NULL) {
			ca = getenv(QPI_TLS_CA_ENV);
		}
		if (ca == NULL || ca[0] == '\0') {
			ca = QPI_TLS_SYSTEM_CA;
		}
		rv = tls_ca(cfg, ca);
		nrv = nng_tls_config_auth_mode(
		    cfg, NNG_TLS_AUTH_MODE_REQUIRED);
	}
	if (rv == QP_OK && nrv != 0) {
		rv = qpi_err(QP_ESYSTEM, "cannot set the TLS verification: %s",
		    nng_strerror(nrv));
	}
	if (rv == QP_OK && server_name != NULL && server_name[0] != '\0'
	    && (nrv = nng_tls_config_server_name(cfg, server_name)) != 0) {
		rv = qpi_err(nrv == NNG_ENOMEM ? QP_ENOMEM : QP_EINVAL,
		    "cannot set the TLS server name '%s': %s", server_name,
		    nng_strerror(nrv));
	}
	if (rv == QP_OK && cert != NULL) {
		rv = tls_own_cert(cfg, cert, key);
	}
	if (rv != QP_OK) {
		nng_tls_config_free(cfg);
		return rv;
	}
	*cfgp = cfg;
	return QP_OK;
}

int
qpi_tls_config_opts(nng_tls_config **cfgp, bool server,
    const qp_conn_opts *o, const char *host)
{
	static const qp_conn_opts none;

	if (o == NULL) {
		o = &none;
	}
	if (server) {
		return qpi_tls_server_config(
		    cfgp, o->tls_cert, o->tls_key, o->tls_ca);
	}
	return qpi_tls_client_config(cfgp, o->tls_ca,
	    o->tls_server_name != NULL ? o->tls_server_name : host,
	    o->tls_cert, o->tls_key, o->tls_insecure_skip_verify);
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
