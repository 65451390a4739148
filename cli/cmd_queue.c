/*
 * cmd_queue.c - the queue commands of the qpipe client: put, get, size,
 * stat, create, rm. Each opens the queue by its address (local or remote,
 * the library picks), does its work and maps the outcome to an exit code.
 */
#include "cli.h"
#include "qpi.h"
#include "wire.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Puts one item, bytes or (with --json) JSON text converted to msgpack. */
static int
put_one(cli_opts *o, qp_queue *q, const char *buf, size_t len)
{
	if (o->key != NULL) {
		/* the key's partition (bytes only: checked). */
		return qp_queue_put_key(
		    q, o->key, strlen(o->key), buf, len, o->timeout);
	}
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

/* --lines over put_many: the lines read so far, copied, sent in batches
 * of at most PB_ITEMS items and PB_BYTES bytes, and whenever stdin has
 * nothing more ready (a slow producer's lines go out at once). */
#define PB_ITEMS 1024
#define PB_BYTES ((size_t) 4 << 20)

typedef struct put_batch {
	char *data; /* the lines, one after the other */
	size_t len, cap;
	size_t *offs, *lens;
	const void **ptrs;
	size_t n, max;
} put_batch;

static int
pb_flush(cli_opts *o, qp_queue *q, put_batch *b, cli_progress *prog)
{
	int rv;

	if (b->n == 0) {
		return QP_OK;
	}
	for (size_t i = 0; i < b->n; i++) {
		b->ptrs[i] = b->data + b->offs[i];
	}
	rv = qp_queue_put_many(q, b->ptrs, b->lens, b->n, o->timeout);
	if (rv == QP_OK) {
		for (size_t i = 0; i < b->n; i++) {
			cli_progress_tick(prog);
		}
	}
	b->n = 0;
	b->len = 0;
	return rv;
}

static int
pb_add(put_batch *b, const char *line, size_t len)
{
	if (b->len + len > b->cap) {
		size_t ncap = b->cap == 0 ? 65536 : b->cap;
		while (ncap < b->len + len) {
			ncap *= 2;
		}
		char *nd = realloc(b->data, ncap);
		if (nd == NULL) {
			return qpi_err(QP_ENOMEM, "out of memory");
		}
		b->data = nd;
		b->cap = ncap;
	}
	memcpy(b->data + b->len, line, len);
	b->offs[b->n] = b->len;
	b->lens[b->n] = len;
	b->len += len;
	b->n++;
	return QP_OK;
}

/* True when a read of fd would not block. */
static bool
fd_ready(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	return poll(&p, 1, 0) > 0;
}

/* put --lines of bytes: stdin read with read(2), so that it is known when
 * nothing more is ready; batch size bounded by the queue's maxsize. */
static int
put_lines_batched(cli_opts *o, qp_queue *q, size_t max, cli_progress *prog)
{
	put_batch b = {.max = max};
	size_t cap = 1 << 20, start = 0, end = 0;
	char *buf = malloc(cap);
	bool eof = false;
	int rv = QP_OK;

	b.offs = calloc(max, sizeof(size_t));
	b.lens = calloc(max, sizeof(size_t));
	b.ptrs = calloc(max, sizeof(void *));
	if (buf == NULL || b.offs == NULL || b.lens == NULL
	    || b.ptrs == NULL) {
		rv = qpi_err(QP_ENOMEM, "out of memory");
	}
	while (rv == QP_OK) {
		char *nl = memchr(buf + start, '\n', end - start);
		if (nl != NULL || (eof && start < end)) {
			size_t len = nl != NULL ? (size_t) (nl - (buf + start))
			                        : end - start;
			if (len > QP_DEFAULT_MAX_MESSAGE) {
				rv = qpi_err(QP_ETOOBIG,
				    "a line of %zu bytes is over the %u-byte "
				    "message limit",
				    len, (unsigned) QP_DEFAULT_MAX_MESSAGE);
				break;
			}
			if (b.n == b.max || b.len + len > PB_BYTES) {
				rv = pb_flush(o, q, &b, prog);
			}
			if (rv == QP_OK) {
				rv = pb_add(&b, buf + start, len);
			}
			start += len + (nl != NULL ? 1 : 0);
			continue;
		}
		if (eof) {
			break;
		}
		/* No whole line left: make room, send what waits if stdin
		 * has nothing ready, then read. */
		if (start > 0) {
			memmove(buf, buf + start, end - start);
			end -= start;
			start = 0;
		}
		if (end == cap) {
			if (cap > QP_DEFAULT_MAX_MESSAGE) {
				rv = qpi_err(QP_ETOOBIG,
				    "a line is over the %u-byte message limit",
				    (unsigned) QP_DEFAULT_MAX_MESSAGE);
				break;
			}
			char *nb = realloc(buf, cap * 2);
			if (nb == NULL) {
				rv = qpi_err(QP_ENOMEM, "out of memory");
				break;
			}
			buf = nb;
			cap *= 2;
		}
		if (b.n > 0 && !fd_ready(STDIN_FILENO)) {
			if ((rv = pb_flush(o, q, &b, prog)) != QP_OK) {
				break;
			}
		}
		ssize_t n = read(STDIN_FILENO, buf + end, cap - end);
		if (n > 0) {
			end += (size_t) n;
		} else if (n == 0) {
			eof = true;
		} else if (errno != EINTR) {
			rv = qpi_err(
			    QP_ESYSTEM, "reading input: %s", strerror(errno));
		}
	}
	if (rv == QP_OK) {
		rv = pb_flush(o, q, &b, prog);
	}
	free(buf);
	free(b.data);
	free(b.offs);
	free(b.lens);
	free(b.ptrs);
	return rv;
}

int
cmd_put(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue *q;
	cli_progress prog;
	int rv;

	if (o->key != NULL && o->json) {
		return cli_usage_error(
		    o, "--key puts bytes items, not --json");
	}
	if ((rv = cli_open_queue(o, addr, true, &q)) != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	cli_progress_start(&prog, "put");
	if (o->nargs > 1) {
		for (int i = 1; i < o->nargs && rv == QP_OK; i++) {
			rv = put_one(o, q, o->args[i], strlen(o->args[i]));
			cli_progress_tick(&prog);
		}
	} else if (o->lines && !o->json && o->key == NULL) {
		/* Batches, unless the queue holds too few items for them
		 * (a batch goes in all at once). */
		qp_queue_stats st;
		size_t max = PB_ITEMS;
		if (qp_queue_stat(q, &st) == QP_OK && st.maxsize != 0) {
			max = st.maxsize / 4 < PB_ITEMS
			    ? (size_t) st.maxsize / 4
			    : PB_ITEMS;
		}
		rv = put_lines_batched(o, q, max > 0 ? max : 1, &prog);
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

/* get -n N of bytes over get_many: the first batch waits as asked, the
 * others take what comes within SEC (--timeout) or what is ready. */
static int
get_batched(cli_opts *o, qp_queue *q, cli_progress *prog)
{
	qp_duration wait = o->timeout;
	qp_duration more = o->timeout_set ? o->timeout : QP_NOWAIT;
	void *bufs[PB_ITEMS];
	size_t lens[PB_ITEMS];
	uint64_t left = o->count;
	bool first = true;
	int rv = QP_OK;

	while (left > 0) {
		size_t n = 0, max = left < PB_ITEMS ? (size_t) left : PB_ITEMS;
		rv = qp_queue_get_many(q, bufs, lens, max, &n, wait);
		if (rv == QP_EEMPTY && !first) {
			rv = QP_OK;
			break;
		}
		if (rv != QP_OK) {
			break;
		}
		for (size_t i = 0; i < n; i++) {
			if (rv == QP_OK
			    && !(cli_write(bufs[i], lens[i])
			        && cli_write("\n", 1))) {
				rv = qpi_err(
				    QP_ESYSTEM, "cannot write output");
			}
			qp_free(bufs[i]);
			cli_progress_tick(prog);
		}
		if (rv != QP_OK) {
			break;
		}
		left -= n;
		first = false;
		wait = more;
	}
	return rv;
}

/* ---- get over several queues ---- */

/* One item from whichever of qs has one (first listed first), written
 * as get_one writes it. */
static int
get_any_one(cli_opts *o, qp_queue **qs, size_t n, qp_duration timeout,
    bool newline, size_t *whichp)
{
	void *buf;
	size_t len;
	int rv;

	if (!o->json) {
		rv = qp_queue_get_any(qs, n, whichp, &buf, &len, timeout);
		if (rv != QP_OK) {
			return rv;
		}
		bool ok
		    = cli_write(buf, len) && (!newline || cli_write("\n", 1));
		qp_free(buf);
		return ok ? QP_OK : qpi_err(QP_ESYSTEM, "cannot write output");
	}
	rv = qp_queue_get_any_obj(qs, n, whichp, &buf, &len, timeout);
	if (rv != QP_OK) {
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

/* qpipe get ADDR1 ADDR2 ...: every queue opened (created if missing),
 * then -n N items (1 without -n), each from the first listed that has
 * one; the first waits as asked, the rest while they come. */
static int
cmd_get_any(cli_opts *o)
{
	size_t n = (size_t) o->nargs, which = 0, opened = 0;
	qp_queue **qs = calloc(n, sizeof(*qs));
	qp_duration more = o->timeout_set ? o->timeout : QP_NOWAIT;
	cli_progress prog;
	int rv = QP_OK;

	if (qs == NULL) {
		return cli_fail(o, o->args[0], QP_ENOMEM);
	}
	for (; opened < n; opened++) {
		const char *addr = o->args[opened];
		rv = cli_open_queue(o, addr, false, &qs[opened]);
		if (rv == QP_ENOENT
		    && (rv = cli_open_queue(o, addr, true, &qs[opened]))
		        == QP_OK) {
			fprintf(stderr,
			    "qpipe: get %s: created the queue %s, which did "
			    "not exist\n",
			    addr, addr);
		}
		if (rv != QP_OK) {
			rv = cli_fail(o, addr, rv);
			goto out;
		}
	}
	cli_progress_start(&prog, "get");
	rv = get_any_one(
	    o, qs, n, o->timeout, o->count > 0 || o->json, &which);
	for (uint64_t i = 1; rv == QP_OK && i < o->count; i++) {
		cli_progress_tick(&prog);
		rv = get_any_one(o, qs, n, more, true, &which);
		if (rv == QP_EEMPTY) {
			rv = QP_OK;
			break;
		}
	}
	cli_progress_end(&prog);
	if (rv != QP_OK) {
		rv = cli_fail(o, o->args[rv == QP_EEMPTY ? 0 : which], rv);
	}
out:
	for (size_t i = 0; i < opened; i++) {
		qp_queue_free(qs[i]);
	}
	free(qs);
	return rv;
}

int
cmd_get(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue *q;
	cli_progress prog;
	int rv;

	if (o->nargs > 1) {
		return cmd_get_any(o);
	}

	/* A get waits on the queue it names, created if missing: a
	 * misspelt name would wait forever in silence, so say so. */
	rv = cli_open_queue(o, addr, false, &q);
	if (rv == QP_ENOENT) {
		rv = cli_open_queue(o, addr, true, &q);
		if (rv == QP_OK) {
			fprintf(stderr,
			    "qpipe: get %s: created the queue %s, which did "
			    "not exist\n",
			    addr, addr);
		}
	}
	if (rv != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	if (o->count == 0) {
		rv = get_one(o, q, o->timeout, o->json);
	} else if (!o->json) {
		cli_progress_start(&prog, "get");
		rv = get_batched(o, q, &prog);
		cli_progress_end(&prog);
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

	if (cli_parted(addr)) {
		return cmd_stat_parts(o); /* several servers */
	}
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

	opts.flags = QP_OPEN_CREATE | QP_OPEN_EXCL | cli_open_flags(o);
	opts.maxsize = o->maxsize;
	opts.capacity = o->capacity;
	opts.conn = cli_conn(o);
	if (o->fsync != NULL && !o->durable) {
		return cli_usage_error(o, "--fsync goes with --durable");
	}
	if (o->durable) {
		if (strstr(addr, "://") == NULL
		    || strncmp(addr, "shm://", 6) == 0) {
			return cli_usage_error(o,
			    "--durable: a local durable queue belongs to one "
			    "process; create it through qpiped (tcp://, "
			    "ipc://)");
		}
		opts.flags |= QP_OPEN_DURABLE;
		opts.fsync = o->fsync;
	}
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

	if ((rv = qp_queue_unlink_opts(addr, cli_conn(o))) != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	return CLI_OK;
}
