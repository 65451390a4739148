/*
 * cmd_queue.c - the queue commands of the qpipe client: put, get, size,
 * stat, create, rm. Each opens the queue by its address (local or remote,
 * the library picks), does its work and maps the outcome to an exit code.
 */
#include "cli.h"
#include "qpi.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* Puts one item, bytes or (with --json) JSON text converted to msgpack. */
static int
put_one(cli_opts *o, qp_queue *q, const char *buf, size_t len)
{
	if (!o->json) {
		return qp_queue_put(q, buf, len, o->timeout);
	}
	void *mp;
	size_t mplen;
	int rv = qpi_json_to_msgpack(buf, len, &mp, &mplen);
	if (rv != QP_OK) {
		return rv;
	}
	rv = qp_queue_put_obj(q, mp, mplen, o->timeout);
	free(mp);
	return rv;
}

int
cmd_put(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue *q;
	cli_progress prog;
	int rv;

	if ((rv = cli_open_queue(o, addr, true, &q)) != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	cli_progress_start(&prog, "put");
	if (o->nargs > 1) {
		for (int i = 1; i < o->nargs && rv == QP_OK; i++) {
			rv = put_one(o, q, o->args[i], strlen(o->args[i]));
			cli_progress_tick(&prog);
		}
	} else if (o->lines) {
		char *line = NULL;
		size_t cap = 0;
		ssize_t n;
		while (rv == QP_OK && (n = getline(&line, &cap, stdin)) >= 0) {
			if (n > 0 && line[n - 1] == '\n') {
				n--;
			}
			rv = put_one(o, q, line, (size_t) n);
			cli_progress_tick(&prog);
		}
		free(line);
	} else {
		char *buf;
		size_t len;
		rv = cli_read_all(stdin, QP_DEFAULT_MAX_MESSAGE, &buf, &len);
		if (rv == QP_OK) {
			rv = put_one(o, q, buf, len);
			free(buf);
		}
	}
	cli_progress_end(&prog);
	if (rv != QP_OK) {
		rv = cli_fail(o, addr, rv);
	}
	qp_queue_free(q);
	return rv;
}

/* Gets one item and writes it: bytes exactly, or JSON and a newline. */
static int
get_one(cli_opts *o, qp_queue *q, qp_duration timeout, bool newline)
{
	void *buf;
	size_t len;
	int rv;

	if (!o->json) {
		if ((rv = qp_queue_get(q, &buf, &len, timeout)) != QP_OK) {
			return rv;
		}
		bool ok
		    = cli_write(buf, len) && (!newline || cli_write("\n", 1));
		qp_free(buf);
		return ok ? QP_OK : qpi_err(QP_ESYSTEM, "cannot write output");
	}
	if ((rv = qp_queue_get_obj(q, &buf, &len, timeout)) != QP_OK) {
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

int
cmd_get(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue *q;
	cli_progress prog;
	int rv;

	if ((rv = cli_open_queue(o, addr, true, &q)) != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	if (o->count == 0) {
		rv = get_one(o, q, o->timeout, o->json);
	} else {
		/* The first item waits as asked; the rest while they come. */
		qp_duration more = o->timeout_set ? o->timeout : QP_NOWAIT;
		cli_progress_start(&prog, "get");
		rv = get_one(o, q, o->timeout, true);
		for (uint64_t i = 1; rv == QP_OK && i < o->count; i++) {
			cli_progress_tick(&prog);
			rv = get_one(o, q, more, true);
			if (rv == QP_EEMPTY) {
				rv = QP_OK;
				break;
			}
		}
		cli_progress_end(&prog);
	}
	if (rv != QP_OK) {
		rv = cli_fail(o, addr, rv);
	}
	qp_queue_free(q);
	return rv;
}

int
cmd_size(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue *q;
	size_t n = 0;
	int rv;

	rv = cli_open_queue(o, addr, false, &q);
	if (rv == QP_ENOENT) {
		printf("0\n");
		return CLI_OK;
	}
	if (rv != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	rv = qp_queue_qsize(q, &n);
	qp_queue_free(q);
	if (rv != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	printf("%zu\n", n);
	return CLI_OK;
}

int
cmd_stat(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue *q;
	qp_queue_stats st;
	int rv;

	if ((rv = cli_open_queue(o, addr, false, &q)) != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	rv = qp_queue_stat(q, &st);
	qp_queue_free(q);
	if (rv != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	cli_print_stats(stdout, NULL, &st);
	putchar('\n');
	return CLI_OK;
}

int
cmd_create(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue_opts opts = {0};
	qp_queue *q;
	int rv;

	opts.flags = QP_OPEN_CREATE | QP_OPEN_EXCL;
	opts.maxsize = o->maxsize;
	opts.capacity = o->capacity;
	opts.conn = cli_conn(o);
	if ((rv = qp_queue_open(&q, addr, &opts)) != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	qp_queue_free(q);
	return CLI_OK;
}

int
cmd_rm(cli_opts *o)
{
	const char *addr = o->args[0];
	int rv;

	if ((rv = qp_queue_unlink(addr)) != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	return CLI_OK;
}
