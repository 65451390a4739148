/*
 * cmd_pipe.c - the pipe and server commands of the qpipe client: send and
 * recv over a pipe named on a qpiped (qp_pipe_open), ls (every queue's
 * figures, from a server or from this host's shared memory) and ping (is
 * the server there). Single-threaded.
 */
#include "cli.h"
#include "futex.h"
#include "qpi.h"
#include "wire.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- send, recv ---- */

/* Sends one message: bytes, or (with --json) JSON text as a value. */
static int
send_one(const cli_opts *o, qp_conn *c, const char *buf, size_t len)
{
	if (!o->json) {
		return qp_conn_send_bytes(c, buf, 0, len);
	}
	void *mp;
	size_t mplen;
	int rv = qpi_json_to_msgpack(buf, len, &mp, &mplen);
	if (rv == QP_OK) {
		rv = qp_conn_send(c, mp, mplen);
		free(mp);
	}
	return rv;
}

int
cmd_send(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_conn *c;
	char *buf = NULL;
	size_t len = 0;
	int rv;

	/* Read stdin first: the pipe end is held only while sending. */
	if (o->nargs == 1
	    && (rv = cli_read_all(stdin, QP_DEFAULT_MAX_MESSAGE, &buf, &len))
	        != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	if ((rv = qp_pipe_open_opts(&c, addr, o->side, true, cli_conn(o)))
	    != QP_OK) {
		free(buf);
		return cli_fail(o, addr, rv);
	}
	if (o->nargs == 1) {
		rv = send_one(o, c, buf, len);
	}
	for (int i = 1; i < o->nargs && rv == QP_OK; i++) {
		rv = send_one(o, c, o->args[i], strlen(o->args[i]));
	}
	free(buf);
	if (rv != QP_OK) {
		rv = cli_fail(o, addr, rv);
	}
	qp_conn_free(c);
	return rv;
}

/* Receives one message and writes it (bytes, or JSON and a newline). */
static int
recv_one(const cli_opts *o, qp_conn *c, qp_duration wait, bool newline)
{
	bool ready = false;
	void *buf;
	size_t len;
	int rv;

	if ((rv = qp_conn_poll(c, wait, &ready)) != QP_OK) {
		return rv;
	}
	if (!ready) {
		return qpi_err(QP_EEMPTY, "no message");
	}
	if (!o->json) {
		if ((rv = qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX))
		    != QP_OK) {
			return rv;
		}
		bool ok
		    = cli_write(buf, len) && (!newline || cli_write("\n", 1));
		qp_free(buf);
		return ok ? QP_OK : qpi_err(QP_ESYSTEM, "cannot write output");
	}
	if ((rv = qp_conn_recv(c, &buf, &len)) != QP_OK) {
		return rv;
	}
	char *json;
	size_t jlen;
	rv = qpi_msgpack_to_json(buf, len, &json, &jlen);
	qp_free(buf);
	if (rv != QP_OK) {
		return rv;
	}
	bool ok = cli_write(json, jlen) && cli_write("\n", 1);
	free(json);
	return ok ? QP_OK : qpi_err(QP_ESYSTEM, "cannot write output");
}

/* The error line of recv: its own words for a timeout and end of file. */
static int
recv_fail(const cli_opts *o, const char *addr, int rv)
{
	if (rv == QP_EEMPTY) {
		if (o->timeout > 0) {
			fprintf(stderr,
			    "qpipe: recv %s: no message after %g s\n", addr,
			    o->timeout_sec);
		} else {
			fprintf(stderr, "qpipe: recv %s: no message waiting\n",
			    addr);
		}
		return CLI_EMPTY;
	}
	if (rv == QP_ECLOSED) {
		fprintf(stderr,
		    "qpipe: recv %s: end of file (the other end closed)\n",
		    addr);
		return CLI_CLOSED;
	}
	return cli_fail(o, addr, rv);
}

int
cmd_recv(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_conn *c;
	int rv;

	if ((rv = qp_pipe_open_opts(&c, addr, o->side, true, cli_conn(o)))
	    != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	if (o->count == 0) {
		rv = recv_one(o, c, o->timeout, o->json);
	} else {
		/* The messages after the first wait as long as it did: a
		 * pipe's messages come one by one. */
		qp_duration more = o->timeout;
		rv = recv_one(o, c, o->timeout, true);
		for (uint64_t i = 1; rv == QP_OK && i < o->count; i++) {
			rv = recv_one(o, c, more, true);
			if (rv == QP_EEMPTY || rv == QP_ECLOSED) {
				rv = QP_OK;
				break;
			}
		}
	}
	if (rv != QP_OK) {
		rv = recv_fail(o, addr, rv);
	}
	qp_conn_free(c);
	return rv;
}

/* ---- ls, ping ---- */

/* The server part of addr (a server address, or a queue's): QP_OK and
 * url filled, or QP_EINVAL. */
static int
server_url(const char *addr, char *url, size_t n)
{
	qpi_addr a;

	struct stat st;
	bool server = qpi_addr_parse(addr, QPI_ADDR_SERVER, &a) == QP_OK;

	/* ipc:///PATH/NAME reads as a server at PATH/NAME too: the one
	 * whose path is a socket wins. */
	if (server && a.kind == QPI_ADDR_IPC
	    && (stat(a.path, &st) != 0 || !S_ISSOCK(st.st_mode))) {
		qpi_addr b;
		if (qpi_addr_parse(addr, QPI_ADDR_NAMED, &b) == QP_OK) {
			a = b;
		}
	}
	if (!server && qpi_addr_parse(addr, QPI_ADDR_NAMED, &a) != QP_OK) {
		return QP_EINVAL;
	}
	if (a.kind == QPI_ADDR_SHM) {
		return qpi_err(QP_EINVAL,
		    "%s is a shared-memory queue: no server to ask", addr);
	}
	if (a.kind == QPI_ADDR_IPC) {
		snprintf(url, n, "ipc://%s", a.path);
	} else {
		snprintf(url, n, "%s://%s%s%s:%u",
		    a.kind == QPI_ADDR_TLS ? "tls+tcp" : "tcp",
		    strchr(a.host, ':') != NULL ? "[" : "", a.host,
		    strchr(a.host, ':') != NULL ? "]" : "", (unsigned) a.port);
	}
	qpi_err_clear();
	return QP_OK;
}

static int
info_cmp(const void *x, const void *y)
{
	return strcmp(((const qp_queue_info *) x)->name,
	    ((const qp_queue_info *) y)->name);
}

/* This host's shared-memory queues: every /dev/shm/qpipe.NAME (or in
 * $QPIPE_SHM_DIR) that opens as a queue. */
static int
ls_local(qp_queue_info **listp, size_t *np)
{
	DIR *d = opendir(qpi_shm_dir());
	qp_queue_info *v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;

	*listp = NULL;
	*np = 0;
	if (d == NULL) {
		return qpi_err(QP_ESYSTEM, "cannot read %s", qpi_shm_dir());
	}
	while ((e = readdir(d)) != NULL) {
		const char *name = e->d_name + 6;
		char addr[QP_NAME_MAX + 8];
		qp_queue *q;

		if (strncmp(e->d_name, "qpipe.", 6) != 0
		    || !qpi_name_valid(name, strlen(name))) {
			continue;
		}
		snprintf(addr, sizeof(addr), "shm://%s", name);
		if (qp_queue_open(&q, addr, NULL) != QP_OK) {
			continue; /* not a queue (a pipe, another layout) */
		}
		if (n == cap) {
			cap = cap == 0 ? 16 : cap * 2;
			qp_queue_info *nv = realloc(v, cap * sizeof(*v));
			if (nv == NULL) {
				qp_queue_free(q);
				free(v);
				closedir(d);
				return qpi_err(QP_ENOMEM, "out of memory");
			}
			v = nv;
		}
		if (qp_queue_stat(q, &v[n].stat) == QP_OK) {
			snprintf(v[n].name, sizeof(v[n].name), "%s", name);
			n++;
		}
		qp_queue_free(q);
	}
	closedir(d);
	qpi_err_clear();
	*listp = v;
	*np = n;
	return QP_OK;
}

int
cmd_ls(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue_info *v = NULL;
	char url[QPI_URL_MAX + 16];
	size_t n = 0;
	int rv;

	if (cli_parted(addr)) {
		return cmd_ls_parts(o); /* several servers */
	}
	if (strcmp(addr, "shm://") == 0 || strcmp(addr, "shm:") == 0) {
		rv = ls_local(&v, &n);
	} else if ((rv = server_url(addr, url, sizeof(url))) == QP_OK) {
		rv = qp_server_list_opts(url, cli_conn(o), &v, &n);
	}
	if (rv != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	qsort(v, n, sizeof(*v), info_cmp);
	printf("[");
	for (size_t i = 0; i < n; i++) {
		printf(i == 0 ? "\n" : ",\n");
		cli_print_stats(stdout, v[i].name, &v[i].stat);
	}
	printf(n > 0 ? "\n]\n" : "]\n");
	qp_free(v);
	return CLI_OK;
}

int
cmd_ping(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue_info *v = NULL;
	char url[QPI_URL_MAX + 16];
	size_t n = 0;
	int rv;

	if ((rv = server_url(addr, url, sizeof(url))) != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	int64_t t0 = qpi_now_ns();
	if ((rv = qp_server_list_opts(url, cli_conn(o), &v, &n)) != QP_OK) {
		cli_fail(o, addr, rv);
		return CLI_ERROR; /* any failure: the server is not there */
	}
	qp_free(v);
	printf("%s: ok, %zu queue%s, %.1f ms\n", url, n, n == 1 ? "" : "s",
	    (double) (qpi_now_ns() - t0) / 1e6);
	return CLI_OK;
}
