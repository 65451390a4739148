/*
 * listener.c - where qpiped listens: each --listen URL is checked against
 * the start-up policy (sec.c: loopback, authentication, TLS) and served by
 * the driver that carries its scheme (link.h): plain sockets for tcp://
 * and ipc://, nng streams for tls+tcp:// and for tcp:// and ipc:// with
 * --transport nng. Also the connection layer's start and its close.
 *
 * Locking: none of its own. qps_net_start runs before any connection,
 * qps_net_close after the request layer has shut down.
 */
#include "link.h"

#include <stdio.h>
#include <string.h>

void
qps_listener_bound(const qpi_addr *a, unsigned port, char *bound)
{
	bool v6 = strchr(a->host, ':') != NULL;

	if (a->kind == QPI_ADDR_IPC) {
		snprintf(bound, QPI_URL_MAX + 1, "%s", a->url);
		return;
	}
	snprintf(bound, QPI_URL_MAX + 1, "%s://%s%s%s:%u",
	    a->kind == QPI_ADDR_TLS ? "tls+tcp" : "tcp", v6 ? "[" : "",
	    a->host, v6 ? "]" : "", port);
}

static int
lsn_listen(const qps_config *cfg, const char *url, char *bound)
{
	const qps_link_driver *drv;
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
	drv = cfg->raw_sp && a.kind != QPI_ADDR_TLS ? &qps_link_socket
	                                            : &qps_link_stream;
	if ((rv = drv->listen(cfg, &a, bound)) != QP_OK) {
		return rv;
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
	qps_link_socket.stop();
	qps_link_stream.stop();
	qps_link_close_all();
}
