/*
 * pool_producer.c - the worker pool's producer, written against the
 * library: it puts one task per file named on the command line, "ID\n"
 * followed by the file's bytes, ID being the file's base name, in batches
 * with qp_queue_put_many (over a server: few requests, each all or
 * nothing). pool_worker takes these tasks.
 *
 * usage: pool_producer [--batch N] TASKS FILE...
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qpipe.h"

/* Reads a whole file into a malloc'd buffer after "ID\n". */
static int
pp_task(const char *path, void **bufp, size_t *lenp)
{
	const char *id = strrchr(path, '/');
	id = id != NULL ? id + 1 : path;
	size_t idlen = strlen(id);
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		return -1;
	}
	size_t cap = idlen + 1 + 65536, len = idlen + 1;
	char *buf = malloc(cap);
	if (buf == NULL) {
		fclose(f);
		return -1;
	}
	memcpy(buf, id, idlen);
	buf[idlen] = '\n';
	for (;;) {
		if (len == cap) {
			char *nb = realloc(buf, cap * 2);
			if (nb == NULL) {
				free(buf);
				fclose(f);
				return -1;
			}
			buf = nb;
			cap *= 2;
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0) {
			break;
		}
	}
	int err = ferror(f);
	fclose(f);
	if (err) {
		free(buf);
		return -1;
	}
	*bufp = buf;
	*lenp = len;
	return 0;
}

int
main(int argc, char **argv)
{
	long batch = 64;
	int i = 1;

	if (argc > 1 && strcmp(argv[1], "--help") == 0) {
		printf("usage: pool_producer [--batch N] TASKS FILE...\n\n"
		       "Puts one task per FILE on TASKS: its base name, a "
		       "newline, its bytes;\n"
		       "N tasks per qp_queue_put_many call (default 64).\n");
		return 0;
	}
	if (argc > 2 && strcmp(argv[1], "--batch") == 0) {
		batch = strtol(argv[2], NULL, 10);
		i = 3;
	}
	if (batch < 1 || batch > 4096 || argc - i < 2) {
		fprintf(stderr,
		    "usage: pool_producer [--batch N] TASKS FILE...\n");
		return 1;
	}
	const char *addr = argv[i++];
	qp_queue *q;
	qp_queue_opts o = {.flags = QP_OPEN_CREATE};
	if (qp_queue_open(&q, addr, &o) != QP_OK) {
		fprintf(stderr, "pool_producer: %s\n", qp_errmsg());
		return 2;
	}
	void **bufs = calloc((size_t) batch, sizeof(void *));
	size_t *lens = calloc((size_t) batch, sizeof(size_t));
	int status = bufs != NULL && lens != NULL ? 0 : 2;
	size_t put = 0;
	while (status == 0 && i < argc) {
		size_t n = 0;
		while (n < (size_t) batch && i < argc) {
			if (pp_task(argv[i], &bufs[n], &lens[n]) != 0) {
				fprintf(stderr,
				    "pool_producer: cannot read %s\n",
				    argv[i]);
				status = 2;
				break;
			}
			n++;
			i++;
		}
		if (status == 0 && n > 0
		    && qp_queue_put_many(
		           q, (const void *const *) bufs, lens, n, QP_FOREVER)
		        != QP_OK) {
			fprintf(stderr, "pool_producer: put %s: %s\n", addr,
			    qp_errmsg());
			status = 2;
		}
		if (status == 0) {
			put += n;
		}
		for (size_t k = 0; k < n; k++) {
			free(bufs[k]);
		}
	}
	fprintf(stderr, "pool_producer: %zu tasks put on %s\n", put, addr);
	free(bufs);
	free(lens);
	qp_queue_free(q);
	return status;
}
