/*
 * listener.c - where qpiped listens: each --listen URL is checked against
 * the start-up policy (sec.c: loopback, authentication, TLS) and served by
 * the driver that carries its scheme and --transport (link.h). Each
 * listens with lib's listener of that kind (lib/link.h: set-up, TLS, the
 * bound address), on a thread that accepts and hands each connection to
 * its driver; when accept fails for want of descriptors or memory, it
 * backs off (50 ms doubling to 1 s) and says so at most once a second.
 * Also the connection layer's start and close.
 *
 * Locking: none of its own. qps_net_start runs before any connection,
 * qps_net_close after the request layer has shut down; each listener is
 * its thread's until qps_net_close joins it.
 */
#include "../lib/link.h" /* lib's: its listeners */
#include "link.h"

#include <time.h>

/* A listener, its driver and the thread that accepts on it. */
typedef struct lsn_listener {
	qpi_link_listener *L;
	const qps_link_driver *drv;
	pthread_t thr;
	bool running;
} lsn_listener;

static lsn_listener lsn[QPS_MAX_LISTEN];
static size_t nlsn;

/* A listener's accept loop, until qps_net_close closes it. */
static void *
lsn_accept_main(void *arg)
{
	static qps_loglimit ll;
	lsn_listener *ls = arg;
	int64_t backoff_ms = 0;
	qpi_link *ql;
	int rv;

	while ((rv = ls->L->accept(ls->L, &ql)) != QP_ECLOSED) {
		if (rv == QP_OK) {
			backoff_ms = 0;
			ls->drv->adopt(ql);
			continue;
		}
		/* Out of descriptors or memory, say: not again at once. */
		backoff_ms = backoff_ms == 0 ? 50
		    : backoff_ms * 2 > 1000  ? 1000
		                             : backoff_ms * 2;
		qps_log_limited(&ll, QPS_LOG_WARN,
		    "accept failed: %s: accepting again in %lld ms (raise the "
		    "open-file limit, or lower --max-connections)",
		    qp_errmsg(), (long long) backoff_ms);
		struct timespec ts = {
		    backoff_ms / 1000, (long) (backoff_ms % 1000) * 1000000L};
		nanosleep(&ts, NULL);
	}
	return NULL;
}

static int
lsn_listen(const qps_config *cfg, const char *url, char *bound)
{
	lsn_listener *ls = &lsn[nlsn];
	qp_conn_opts o = {.tls_cert = cfg->tls_cert,
	    .tls_key = cfg->tls_key,
	    .tls_ca = cfg->tls_ca};
	qpi_addr a;
	int rv;

	if (qpi_addr_parse(url, QPI_ADDR_SERVER | QPI_ADDR_PORT0, &a)
	    != QP_OK) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: %s", url,
		    qp_errmsg());
		return QP_EINVAL;
	}
	if ((rv = qps_sec_check_listener(cfg, &a, url)) != QP_OK) {
		return rv;
	}
	ls->drv = cfg->raw_sp && a.kind != QPI_ADDR_TLS ? &qps_link_socket
	                                                : &qps_link_stream;
	if (ls->drv->start != NULL && (rv = ls->drv->start()) != QP_OK) {
		return rv;
	}
	rv = ls->drv == &qps_link_socket
	    ? qpi_link_sock_listen(&ls->L, &a, bound, QPI_URL_MAX + 1)
	    : qpi_link_nng_listen(&ls->L, &a, &o, bound, QPI_URL_MAX + 1);
	if (rv != QP_OK) {
		qps_log(QPS_LOG_ERROR, "%s", qp_errmsg());
		return rv;
	}
	nlsn++; /* closed by qps_net_close, even if not running */
	ls->running = pthread_create(&ls->thr, NULL, lsn_accept_main, ls) == 0;
	if (!ls->running) {
		qps_log(QPS_LOG_ERROR, "cannot listen on %s: no thread", url);
		return QP_ESYSTEM;
	}
	qps_log(QPS_LOG_INFO, "listening on %s", bound);
	return QP_OK;
}

int
qps_net_start(const qps_config *cfg, char urls[][QPI_URL_MAX + 1])
{
	int rv;

	if ((rv = qps_link_setup(cfg)) != QP_OK) {
		return rv;
	}
	for (size_t i = 0; i < cfg->nlisten; i++) {
		if ((rv = lsn_listen(cfg, cfg->listen[i], urls[i])) != QP_OK) {
			return rv;
		}
	}
	return QP_OK;
}

void
qps_net_close(void)
{
	for (size_t i = 0; i < nlsn; i++) {
		lsn[i].L->close(lsn[i].L);
		if (lsn[i].running) {
			pthread_join(lsn[i].thr, NULL);
		}
		lsn[i].L->free(lsn[i].L);
	}
	nlsn = 0;
	qps_link_socket.stop();
	qps_link_close_all();
}
