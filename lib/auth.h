/*
 * auth.h - the token challenge-response of PROTOCOL.md ("sessions and
 * authentication"): tokens and where they come from, nonces, HMAC-SHA-256,
 * and the two sides of the hello/auth exchange. Used by direct connections
 * (netconn.c), qpiped and the remote queue client. No nng type here; the
 * cryptography is mbedTLS's (mbedcrypto), the randomness getrandom(2).
 *
 * The exchange, on one connection:
 *   server: qpi_auth_server_hello()  -> nonce into the hello reply
 *   client: qpi_auth_client_answer() -> mac, client_nonce for auth
 *   server: qpi_auth_server_check()  -> QP_OK + server_mac, or QP_EAUTH
 *   client: qpi_auth_client_verify() -> QP_OK, or QP_EAUTH
 */
#ifndef QPI_AUTH_H
#define QPI_AUTH_H

#include "qpi.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QPI_TOKEN_MAX      1024 /* the longest token, in bytes */
#define QPI_AUTH_NONCE_LEN 32 /* server and client nonces */
#define QPI_AUTH_MAC_LEN   32 /* HMAC-SHA-256 */

/* The environment variable that gives a token when none is configured. */
#define QPI_TOKEN_ENV "QPIPE_TOKEN"

/* A token: len bytes of key (any bytes but none at all); len 0 = none.
 * Plain data, no allocation: copy it, clear it with qpi_token_clear. */
typedef struct qpi_token {
	size_t len;
	uint8_t key[QPI_TOKEN_MAX];
} qpi_token;

/* Sets *t to the bytes of the C string s. QP_EINVAL if s is empty or
 * longer than QPI_TOKEN_MAX bytes (*t is then cleared). */
int qpi_token_set(qpi_token *t, const char *s);

/* Sets *t to the first line of the regular file at path: QP_EINVAL (empty,
 * too long, not a file), QP_ENOENT, QP_EPERM. *exposedp (may be NULL): the
 * file is readable by group or others (warn; the token is loaded). */
int qpi_token_load_file(qpi_token *t, const char *path, bool *exposedp);

/* Reads at most cap bytes of the regular file path into a malloc'd *bufp
 * (NUL after them; *lenp without it), *modep its mode. Errors name what:
 * QP_EINVAL (every one with einval), QP_ENOENT, QP_EPERM, QP_ENOMEM. */
int qpi_file_read(const char *path, const char *what, size_t cap, bool einval,
    char **bufp, size_t *lenp, unsigned *modep);

/* Sets *t from the environment variable QPIPE_TOKEN; unset or empty leaves
 * *t empty (len 0) and returns QP_OK. QP_EINVAL if it is too long. */
int qpi_token_from_env(qpi_token *t);

/* The token that a set of options names: token, else token_file, else
 * (unless no_env) QPIPE_TOKEN; none of them leaves *t empty. Giving both
 * token and token_file is QP_EINVAL. *exposedp as qpi_token_load_file. */
int qpi_token_resolve(qpi_token *t, const char *token, const char *token_file,
    bool no_env, bool *exposedp);

/* The token of a listener's or dialer's options o (NULL: none given):
 * qpi_token_resolve of its token, token_file and no_token. */
int qpi_token_of(qpi_token *t, const qp_conn_opts *o);

/* Wipes the key (mbedtls_platform_zeroize) and sets len to 0. */
void qpi_token_clear(qpi_token *t);

/* Fills buf with len bytes from getrandom(2). QP_OK, or QP_ESYSTEM when
 * the kernel gives none: never a weaker fallback. */
int qpi_random(void *buf, size_t len);

/* out = HMAC-SHA-256(key, msg). QP_OK or QP_ESYSTEM (mbedTLS failed). */
int qpi_hmac_sha256(const void *key, size_t keylen, const void *msg,
    size_t msglen, uint8_t out[QPI_AUTH_MAC_LEN]);

/* True when the len bytes at a and b are equal; takes the same time
 * whatever they hold (mbedtls_ct_memcmp). */
bool qpi_auth_equal(const void *a, const void *b, size_t len);

/* ---- the server's side, one per connection ---- */

/* Zero it for a new connection. */
typedef struct qpi_auth_server {
	uint8_t nonce[QPI_AUTH_NONCE_LEN]; /* the latest hello's nonce */
	bool armed; /* the nonce was issued and no auth answered it yet */
	bool ok; /* the connection has authenticated */
} qpi_auth_server;

/* For a hello reply: a fresh nonce into s and into nonce. A nonce issued
 * before and not yet answered is forgotten. QP_OK or QP_ESYSTEM. */
int qpi_auth_server_hello(
    qpi_auth_server *s, uint8_t nonce[QPI_AUTH_NONCE_LEN]);

/* Checks mac == HMAC(token, nonce) in constant time against the latest
 * hello's nonce (used up either way); on QP_OK sets s->ok and, for a cnonce,
 * smac = HMAC(token, cnonce | nonce) with *has_smac. Else QP_EAUTH. */
int qpi_auth_server_check(qpi_auth_server *s, const qpi_token *t,
    const uint8_t mac[QPI_AUTH_MAC_LEN], const uint8_t *cnonce,
    uint8_t smac[QPI_AUTH_MAC_LEN], bool *has_smac);

/* ---- the client's side ---- */

/* Keeps the nonces of one exchange between answer and verify. */
typedef struct qpi_auth_client {
	uint8_t snonce[QPI_AUTH_NONCE_LEN];
	uint8_t cnonce[QPI_AUTH_NONCE_LEN];
} qpi_auth_client;

/* After a hello reply with nonce: the auth request's fields, mac =
 * HMAC(token, nonce) and a fresh client nonce (always sent, so that the
 * server proves the token too). QP_OK, QP_EAUTH (t empty), QP_ESYSTEM. */
int qpi_auth_client_answer(qpi_auth_client *c, const qpi_token *t,
    const uint8_t nonce[QPI_AUTH_NONCE_LEN], uint8_t mac[QPI_AUTH_MAC_LEN],
    uint8_t cnonce[QPI_AUTH_NONCE_LEN]);

/* After the auth reply (status 0): checks that the server proved the
 * token, smac == HMAC(token, cnonce | snonce). QP_OK, or QP_EAUTH (no
 * server_mac, has_smac false, or a wrong one: not the server that holds
 * the token) naming peer. */
int qpi_auth_client_verify(const qpi_auth_client *c, const qpi_token *t,
    const uint8_t *smac, bool has_smac, const char *peer);

/* The client's rule after the hello reply: QP_OK when it holds a token
 * exactly if the peer requires one (*authp: send auth), else QP_EAUTH
 * naming peer (a token the peer cannot prove, or one missing). */
int qpi_auth_client_policy(
    const qpi_token *t, bool auth_required, const char *peer, bool *authp);

#endif /* QPI_AUTH_H */
