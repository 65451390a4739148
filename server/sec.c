/*
 * sec.c - what protects qpiped: the token that clients must prove they hold
 * (--auth-token-file, else $QPIPE_TOKEN; the hello/auth exchange itself is
 * answered in session.c with lib/auth.c), the checks of the TLS flags
 * (--tls-cert, --tls-key, --tls-ca: lib's listener loads them, see
 * link_stream.c), and the start-up policy: an address other hosts can reach is
 * served only when its clients must authenticate (a token, or TLS client
 * certificates), or with --insecure, said loudly in the log.
 *
 * Locking: none. Everything here is set up by qps_sec_start before the
 * listeners start and only read afterwards, until qps_sec_fini after the
 * socket is closed.
 */
#include "auth.h"
#include "qps.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>

static struct {
	qpi_token token; /* len 0: no authentication */
} sec;

int
qps_sec_start(const qps_config *cfg)
{
	bool exposed = false, any_tls = false;
	int rv;

	if ((rv = qpi_token_resolve(
	         &sec.token, NULL, cfg->token_file, false, &exposed))
	    != QP_OK) {
		qps_log(QPS_LOG_ERROR, "%s: %s",
		    cfg->token_file != NULL ? "--auth-token-file"
		                            : QPI_TOKEN_ENV,
		    qp_errmsg());
		return rv;
	}
	if (exposed) {
		qps_log(QPS_LOG_WARN,
		    "the token file %s can be read by its group or by "
		    "others: chmod 600 it",
		    cfg->token_file);
	}
	if (sec.token.len > 0) {
		qps_log(QPS_LOG_INFO,
		    "clients must authenticate with the token of %s",
		    cfg->token_file != NULL ? cfg->token_file
		                            : "$" QPI_TOKEN_ENV);
	}

	if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
		qps_log(QPS_LOG_ERROR,
		    "--tls-cert and --tls-key go together: give both");
		return QP_EINVAL;
	}
	if (cfg->tls_ca != NULL && cfg->tls_cert == NULL) {
		qps_log(QPS_LOG_ERROR,
		    "--tls-ca needs --tls-cert and --tls-key (the server's "
		    "own certificate)");
		return QP_EINVAL;
	}
	for (size_t i = 0; i < cfg->nlisten; i++) {
		any_tls = any_tls
		    || strncmp(cfg->listen[i], "tls+tcp://", 10) == 0;
	}
	/* Without a certificate a tls+tcp:// listener is refused later. */
	if (cfg->tls_cert != NULL && !any_tls) {
		qps_log(QPS_LOG_WARN,
		    "--tls-cert is given but no --listen is tls+tcp://: the "
		    "certificate is not used");
	} else if (cfg->tls_ca != NULL) {
		qps_log(QPS_LOG_INFO,
		    "TLS clients must present a certificate signed by %s",
		    cfg->tls_ca);
	}
	return QP_OK;
}

void
qps_sec_fini(void)
{
	qpi_token_clear(&sec.token);
}

bool
qps_sec_auth_required(void)
{
	return sec.token.len > 0;
}

const qpi_token *
qps_sec_token(void)
{
	return &sec.token;
}

/* True when host (a name: every address it resolves to) is loopback. */
static bool
sec_loopback(const char *host)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
	bool ok = strcmp(host, "*") != 0 && host[0] != '\0'
	    && getaddrinfo(host, NULL, &hints, &res) == 0 && res != NULL;

	for (struct addrinfo *ai = ok ? res : NULL; ai != NULL;
	     ai = ai->ai_next) {
		const struct sockaddr_in *s4 = (void *) ai->ai_addr;
		const struct sockaddr_in6 *s6 = (void *) ai->ai_addr;
		ok = ok
		    && (ai->ai_family == AF_INET
		            ? (ntohl(s4->sin_addr.s_addr) >> 24) == 127
		            : ai->ai_family == AF_INET6
		                && IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr));
	}
	if (res != NULL) {
		freeaddrinfo(res);
	}
	return ok;
}

int
qps_sec_check_listener(
    const qps_config *cfg, const qpi_addr *a, const char *url)
{
	bool tls = a->kind == QPI_ADDR_TLS;
	bool client_certs = tls && cfg->tls_ca != NULL;

	if (tls && cfg->tls_cert == NULL) {
		qps_log(QPS_LOG_ERROR,
		    "cannot listen on %s: tls+tcp:// needs the server's "
		    "certificate: give --tls-cert FILE and --tls-key FILE",
		    url);
		return QP_EINVAL;
	}
	if (a->kind == QPI_ADDR_IPC || sec_loopback(a->host)) {
		return QP_OK;
	}
	if (sec.token.len > 0 || client_certs) {
		if (!tls) {
			qps_log(QPS_LOG_INFO,
			    "%s: clients authenticate with the token, but the "
			    "traffic is not encrypted: use tls+tcp:// on an "
			    "untrusted network",
			    url);
		}
		return QP_OK;
	}
	if (!cfg->insecure) {
		qps_log(QPS_LOG_ERROR,
		    "refusing to serve %s: it is not a loopback address and "
		    "nothing requires client authentication; give "
		    "--auth-token-file FILE (or $%s), or serve tls+tcp:// "
		    "with --tls-ca for client certificates, or pass "
		    "--insecure to serve it unprotected",
		    url, QPI_TOKEN_ENV);
		return QP_EPERM;
	}
	qps_log(QPS_LOG_WARN,
	    "INSECURE: serving %s without client authentication%s: anyone "
	    "who can reach it can read and change every queue",
	    url, tls ? "" : " or encryption");
	return QP_OK;
}
