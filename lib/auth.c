/*
 * auth.c - the token challenge-response of PROTOCOL.md: tokens (given, read
 * from a file, or from QPIPE_TOKEN), nonces from getrandom(2), HMAC-SHA-256
 * and constant-time comparison from mbedTLS, and the server's and client's
 * steps of the hello/auth exchange. Every function works on the caller's
 * memory only: no globals, no locking; one exchange state per connection,
 * used by one thread at a time.
 */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/constant_time.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

/* ---- tokens ---- */

void
qpi_token_clear(qpi_token *t)
{
	mbedtls_platform_zeroize(t->key, sizeof(t->key));
	t->len = 0;
}

int
qpi_token_set(qpi_token *t, const char *s)
{
	size_t len = s == NULL ? 0 : strlen(s);

	qpi_token_clear(t);
	if (len == 0) {
		return qpi_err(QP_EINVAL, "the token is empty");
	}
	if (len > QPI_TOKEN_MAX) {
		return qpi_err(QP_EINVAL,
		    "the token is %zu bytes, over the maximum of %d", len,
		    QPI_TOKEN_MAX);
	}
	memcpy(t->key, s, len);
	t->len = len;
	return QP_OK;
}

int
qpi_file_read(const char *path, const char *what, size_t cap, bool einval,
    char **bufp, size_t *lenp, unsigned *modep)
{
	struct stat st;
	size_t got = 0;
	char *buf;
	int fd, e;

	if (path == NULL || path[0] == '\0') {
		return qpi_err(QP_EINVAL, "no %s file given", what);
	}
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		e = errno;
		return qpi_err(einval ? QP_EINVAL
		        : e == ENOENT ? QP_ENOENT
		        : e == EACCES ? QP_EPERM
		                      : QP_ESYSTEM,
		    "cannot open the %s file '%s': %s", what, path,
		    strerror(e));
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return qpi_err(QP_EINVAL,
		    "the %s file '%s' is not a regular file", what, path);
	}
	if ((buf = malloc(cap + 1)) == NULL) {
		close(fd);
		return qpi_err(QP_ENOMEM, "out of memory reading '%s'", path);
	}
	while (got < cap) {
		ssize_t n = read(fd, buf + got, cap - got);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			e = errno;
			close(fd);
			mbedtls_platform_zeroize(buf, got);
			free(buf);
			return qpi_err(einval ? QP_EINVAL : QP_ESYSTEM,
			    "cannot read the %s file '%s': %s", what, path,
			    strerror(e));
		}
		if (n == 0) {
			break;
		}
		got += (size_t) n;
	}
	close(fd);
	buf[got] = '\0';
	*bufp = buf;
	*lenp = got;
	*modep = (unsigned) st.st_mode;
	return QP_OK;
}

int
qpi_token_load_file(qpi_token *t, const char *path, bool *exposedp)
{
	/* Enough for the longest token and its \r\n. */
	const size_t cap = QPI_TOKEN_MAX + 2;
	size_t got, len;
	unsigned mode;
	char *buf;
	int rv;

	qpi_token_clear(t);
	if (exposedp != NULL) {
		*exposedp = false;
	}
	if ((rv = qpi_file_read(path, "token", cap, false, &buf, &got, &mode))
	    != QP_OK) {
		return rv;
	}
	char *nl = memchr(buf, '\n', got);
	len = nl != NULL ? (size_t) (nl - buf) : got;
	if (len > 0 && buf[len - 1] == '\r') {
		len--;
	}
	if (len == 0) {
		rv = qpi_err(QP_EINVAL,
		    "the token file '%s' holds no token: its first line is "
		    "empty",
		    path);
	} else if (len > QPI_TOKEN_MAX || (nl == NULL && got == cap)) {
		rv = qpi_err(QP_EINVAL,
		    "the first line of the token file '%s' is over the "
		    "maximum of %d bytes",
		    path, QPI_TOKEN_MAX);
	} else {
		memcpy(t->key, buf, len);
		t->len = len;
	}
	mbedtls_platform_zeroize(buf, cap);
	free(buf);
	if (rv == QP_OK && exposedp != NULL) {
		*exposedp = (mode & (S_IRGRP | S_IROTH)) != 0;
	}
	return rv;
}

int
qpi_token_from_env(qpi_token *t)
{
	const char *s = getenv(QPI_TOKEN_ENV);

	qpi_token_clear(t);
	if (s == NULL || s[0] == '\0') {
		return QP_OK;
	}
	if (qpi_token_set(t, s) != QP_OK) {
		return qpi_err(QP_EINVAL,
		    "%s is %zu bytes long, over the maximum of %d",
		    QPI_TOKEN_ENV, strlen(s), QPI_TOKEN_MAX);
	}
	return QP_OK;
}

int
qpi_token_resolve(qpi_token *t, const char *token, const char *token_file,
    bool no_env, bool *exposedp)
{
	if (exposedp != NULL) {
		*exposedp = false;
	}
	if (token != NULL && token_file != NULL) {
		qpi_token_clear(t);
		return qpi_err(
		    QP_EINVAL, "give a token or a token file, not both");
	}
	if (token != NULL) {
		return qpi_token_set(t, token);
	}
	if (token_file != NULL) {
		return qpi_token_load_file(t, token_file, exposedp);
	}
	if (no_env) {
		qpi_token_clear(t);
		return QP_OK;
	}
	return qpi_token_from_env(t);
}

int
qpi_token_of(qpi_token *t, const qp_conn_opts *o)
{
	return o == NULL
	    ? qpi_token_resolve(t, NULL, NULL, false, NULL)
	    : qpi_token_resolve(t, o->token, o->token_file, o->no_token, NULL);
}

/* ---- primitives ---- */

int
qpi_random(void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n = getrandom(p + got, len - got, 0);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			return qpi_err(QP_ESYSTEM, "getrandom: %s",
			    n < 0 ? strerror(errno) : "no bytes");
		}
		got += (size_t) n;
	}
	return QP_OK;
}

int
qpi_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
    uint8_t out[QPI_AUTH_MAC_LEN])
{
	const mbedtls_md_info_t *md
	    = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);

	if (md == NULL
	    || mbedtls_md_hmac(md, key, keylen, msg, msglen, out) != 0) {
		return qpi_err(QP_ESYSTEM, "HMAC-SHA-256 failed in mbedTLS");
	}
	return QP_OK;
}

bool
qpi_auth_equal(const void *a, const void *b, size_t len)
{
	return mbedtls_ct_memcmp(a, b, len) == 0;
}

/* HMAC(token, cnonce | snonce): the server's proof. */
static int
auth_server_mac(const qpi_token *t, const uint8_t *cnonce,
    const uint8_t *snonce, uint8_t out[QPI_AUTH_MAC_LEN])
{
	uint8_t msg[2 * QPI_AUTH_NONCE_LEN];

	memcpy(msg, cnonce, QPI_AUTH_NONCE_LEN);
	memcpy(msg + QPI_AUTH_NONCE_LEN, snonce, QPI_AUTH_NONCE_LEN);
	return qpi_hmac_sha256(t->key, t->len, msg, sizeof(msg), out);
}

/* ---- the server ---- */

int
qpi_auth_server_hello(qpi_auth_server *s, uint8_t nonce[QPI_AUTH_NONCE_LEN])
{
	int rv;

	s->armed = false;
	if ((rv = qpi_random(s->nonce, sizeof(s->nonce))) != QP_OK) {
		return rv;
	}
	memcpy(nonce, s->nonce, sizeof(s->nonce));
	s->armed = true;
	return QP_OK;
}

int
qpi_auth_server_check(qpi_auth_server *s, const qpi_token *t,
    const uint8_t mac[QPI_AUTH_MAC_LEN], const uint8_t *cnonce,
    uint8_t smac[QPI_AUTH_MAC_LEN], bool *has_smac)
{
	uint8_t want[QPI_AUTH_MAC_LEN];
	bool armed = s->armed;
	int rv;

	*has_smac = false;
	s->armed = false; /* one attempt per nonce, right or wrong */
	if (t == NULL || t->len == 0) {
		return qpi_err(QP_EAUTH, "this end has no token to check");
	}
	if (!armed) {
		return qpi_err(QP_EAUTH,
		    "auth without a fresh hello: every nonce serves one "
		    "attempt; send hello first");
	}
	if ((rv = qpi_hmac_sha256(
	         t->key, t->len, s->nonce, sizeof(s->nonce), want))
	    != QP_OK) {
		return rv;
	}
	bool same = qpi_auth_equal(want, mac, sizeof(want));
	mbedtls_platform_zeroize(want, sizeof(want));
	if (!same) {
		return qpi_err(
		    QP_EAUTH, "wrong token: the mac does not match");
	}
	if (cnonce != NULL) {
		if ((rv = auth_server_mac(t, cnonce, s->nonce, smac))
		    != QP_OK) {
			return rv;
		}
		*has_smac = true;
	}
	s->ok = true;
	return QP_OK;
}

/* ---- the client ---- */

int
qpi_auth_client_answer(qpi_auth_client *c, const qpi_token *t,
    const uint8_t nonce[QPI_AUTH_NONCE_LEN], uint8_t mac[QPI_AUTH_MAC_LEN],
    uint8_t cnonce[QPI_AUTH_NONCE_LEN])
{
	int rv;

	if (t == NULL || t->len == 0) {
		return qpi_err(QP_EAUTH, "no token to authenticate with");
	}
	memcpy(c->snonce, nonce, QPI_AUTH_NONCE_LEN);
	if ((rv = qpi_random(c->cnonce, sizeof(c->cnonce))) != QP_OK
	    || (rv = qpi_hmac_sha256(
	            t->key, t->len, nonce, QPI_AUTH_NONCE_LEN, mac))
	        != QP_OK) {
		return rv;
	}
	memcpy(cnonce, c->cnonce, QPI_AUTH_NONCE_LEN);
	return QP_OK;
}

int
qpi_auth_client_verify(const qpi_auth_client *c, const qpi_token *t,
    const uint8_t *smac, bool has_smac, const char *peer)
{
	uint8_t want[QPI_AUTH_MAC_LEN];
	int rv;

	if (t == NULL || t->len == 0) {
		return qpi_err(QP_EAUTH, "no token to verify %s with", peer);
	}
	if (!has_smac || smac == NULL) {
		return qpi_err(QP_EAUTH,
		    "%s accepted the token without proving it holds it too "
		    "(no server_mac); connection closed",
		    peer);
	}
	if ((rv = auth_server_mac(t, c->cnonce, c->snonce, want)) != QP_OK) {
		return rv;
	}
	bool same = qpi_auth_equal(want, smac, sizeof(want));
	mbedtls_platform_zeroize(want, sizeof(want));
	if (!same) {
		return qpi_err(QP_EAUTH,
		    "%s does not hold the token (its server_mac is wrong); "
		    "connection closed",
		    peer);
	}
	return QP_OK;
}

int
qpi_auth_client_policy(
    const qpi_token *t, bool auth_required, const char *peer, bool *authp)
{
	bool have = t != NULL && t->len > 0;

	*authp = false;
	if (auth_required && !have) {
		return qpi_err(QP_EAUTH,
		    "%s requires a token and none is set (QPIPE_TOKEN, or a "
		    "token or token file in the options)",
		    peer);
	}
	if (!auth_required && have) {
		return qpi_err(QP_EAUTH,
		    "%s does not ask for a token, so it cannot prove it holds "
		    "ours: not the peer this token is for; connection closed",
		    peer);
	}
	*authp = have;
	return QP_OK;
}
