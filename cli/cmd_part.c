/*
 * cmd_part.c - the commands for a queue over several servers:
 * stat and ls of an address with several servers (the partitions added
 * up, and each shown), and pick (which partition a key goes to, without
 * connecting). cmd_queue.c and cmd_pipe.c hand such addresses here.
 */
#include "cli.h"
#include "qpi.h"

#include <stdlib.h>
#include <string.h>

#define PARTS_MAX 64

/* Splits "SCHEME://S1,S2,...[/NAME]" into the servers as written; *np
 * is 0 when addr lists one server only. */
static size_t
parts_split(const char *addr, char srv[][QPI_URL_MAX + 1], size_t max,
    size_t *schemelen, const char **namep)
{
	const char *sch = strstr(addr, "://"), *rest, *end;
	size_t n = 0;

	*namep = NULL;
	if (sch == NULL) {
		return 0;
	}
	rest = sch + 3;
	*schemelen = (size_t) (rest - addr);
	end = rest + strlen(rest);
	const char *slash = strrchr(rest, '/');
	if (slash != NULL && slash > rest && strchr(slash, ',') == NULL) {
		/* ".../NAME": the servers are before the last slash. */
		const char *comma = memchr(rest, ',', (size_t) (slash - rest));
		if (comma != NULL) {
			*namep = slash + 1;
			end = slash;
		}
	}
	if (memchr(rest, ',', (size_t) (end - rest)) == NULL) {
		return 0;
	}
	while (rest < end && n < max) {
		const char *c = memchr(rest, ',', (size_t) (end - rest));
		size_t len = (size_t) ((c != NULL ? c : end) - rest);
		if (len > QPI_URL_MAX) {
			len = QPI_URL_MAX;
		}
		memcpy(srv[n], rest, len);
		srv[n][len] = '\0';
		n++;
		rest = (c != NULL ? c : end) + 1;
	}
	return n;
}

/* Prints cli_print_stats's object with its closing brace left off, so
 * that a "partitions" field can follow. */
static void
parts_open_obj(const char *name, const qp_queue_stats *st)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);

	if (m == NULL) {
		return;
	}
	cli_print_stats(m, name, st);
	fclose(m);
	if (len > 0 && buf[len - 1] == '}') {
		len--;
	}
	fwrite(buf, 1, len, stdout);
	free(buf);
}

bool
cli_parted(const char *addr)
{
	char srv[2][QPI_URL_MAX + 1];
	size_t sl;
	const char *name;

	return parts_split(addr, srv, 2, &sl, &name) > 1;
}

int
cmd_stat_parts(cli_opts *o)
{
	const char *addr = o->args[0];
	qp_queue *q;
	qp_queue_stats st;
	size_t n = 0;
	int rv;

	if ((rv = cli_open_queue(o, addr, false, &q)) != QP_OK) {
		return cli_fail(o, addr, rv);
	}
	if ((rv = qp_queue_stat(q, &st)) != QP_OK
	    || (rv = qp_queue_partitions(q, &n)) != QP_OK) {
		qp_queue_free(q);
		return cli_fail(o, addr, rv);
	}
	/* The sums, and "partitions": each one's figures, or its error. */
	parts_open_obj(NULL, &st);
	printf(", \"partitions\": [");
	for (size_t i = 0; i < n; i++) {
		qp_queue_stats one;
		char url[QPI_URL_MAX + QP_NAME_MAX + 2];
		int r = qp_queue_partition_stat(q, i, &one, url, sizeof(url));
		printf(i == 0 ? "\n" : ",\n");
		if (r == QP_OK) {
			printf("{\"addr\": \"%s\", \"stat\": ", url);
			cli_print_stats(stdout, NULL, &one);
			printf("}");
		} else {
			printf("{\"addr\": \"%s\", \"error\": \"%s\"}", url,
			    qp_strerror(r));
		}
	}
	printf("\n]}\n");
	qp_queue_free(q);
	return CLI_OK;
}

/* ls over several servers: every queue name any of them hosts, its
 * figures added up over the servers that have it, and each server's. */
int
cmd_ls_parts(cli_opts *o)
{
	const char *addr = o->args[0], *name;
	static char srv[PARTS_MAX][QPI_URL_MAX + 1];
	qp_queue_info *lists[PARTS_MAX] = {0};
	size_t counts[PARTS_MAX] = {0}, sl = 0, answered = 0;
	size_t n = parts_split(addr, srv, PARTS_MAX, &sl, &name);
	int rv = QP_OK, last = QP_OK;

	for (size_t i = 0; i < n; i++) {
		char url[2 * QPI_URL_MAX + 16] = "";
		if (sl < QPI_URL_MAX) {
			memcpy(url, addr, sl);
			url[sl] = '\0';
		}
		size_t sn = strnlen(srv[i], QPI_URL_MAX), ul = strlen(url);
		memcpy(url + ul, srv[i], sn);
		url[ul + sn] = '\0';
		rv = qp_server_list_opts(
		    url, cli_conn(o), &lists[i], &counts[i]);
		if (rv == QP_OK) {
			answered++;
		} else {
			fprintf(stderr, "qpipe: ls %s: %s\n", url,
			    qp_errmsg()[0] ? qp_errmsg() : qp_strerror(rv));
			last = rv;
		}
	}
	if (answered == 0) {
		return cli_exit_code(last);
	}
	/* Names in order: each name the first time any server shows it,
	 * sorted by a simple pass over all of them. */
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		total += counts[i];
	}
	const char **names = calloc(total > 0 ? total : 1, sizeof(*names));
	size_t nn = 0;
	if (names == NULL) {
		fprintf(stderr, "qpipe: out of memory\n");
		return CLI_ERROR;
	}
	for (size_t i = 0; i < n; i++) {
		for (size_t k = 0; k < counts[i]; k++) {
			bool dup = false;
			for (size_t m = 0; m < nn && !dup; m++) {
				dup = strcmp(names[m], lists[i][k].name) == 0;
			}
			if (!dup) {
				names[nn++] = lists[i][k].name;
			}
		}
	}
	for (size_t a = 1; a < nn; a++) {
		for (size_t b = a; b > 0 && strcmp(names[b - 1], names[b]) > 0;
		     b--) {
			const char *t = names[b];
			names[b] = names[b - 1];
			names[b - 1] = t;
		}
	}
	printf("[");
	for (size_t m = 0; m < nn; m++) {
		qp_queue_stats sum = {0};
		sum.oldest_age_ms = -1;
		for (size_t i = 0; i < n; i++) {
			for (size_t k = 0; k < counts[i]; k++) {
				const qp_queue_stats *s = &lists[i][k].stat;
				if (strcmp(lists[i][k].name, names[m]) != 0) {
					continue;
				}
				sum.items += s->items;
				sum.bytes += s->bytes;
				sum.maxsize += s->maxsize;
				sum.capacity += s->capacity;
				sum.leased += s->leased;
				sum.unfinished += s->unfinished;
				sum.getters += s->getters;
				sum.putters += s->putters;
				sum.puts += s->puts;
				sum.gets += s->gets;
				if (s->oldest_age_ms > sum.oldest_age_ms) {
					sum.oldest_age_ms = s->oldest_age_ms;
				}
			}
		}
		printf(m == 0 ? "\n" : ",\n");
		parts_open_obj(names[m], &sum);
		/* Each server that has it. */
		printf(", \"partitions\": [");
		bool first = true;
		for (size_t i = 0; i < n; i++) {
			for (size_t k = 0; k < counts[i]; k++) {
				if (strcmp(lists[i][k].name, names[m]) != 0) {
					continue;
				}
				printf("%s{\"server\": \"%.*s%s\", \"stat\": ",
				    first ? "" : ", ", (int) sl, addr, srv[i]);
				cli_print_stats(
				    stdout, NULL, &lists[i][k].stat);
				printf("}");
				first = false;
			}
		}
		printf("]}");
	}
	printf(nn > 0 ? "\n]\n" : "]\n");
	for (size_t i = 0; i < n; i++) {
		qp_free(lists[i]);
	}
	free(names);
	return answered == n ? CLI_OK : cli_exit_code(last);
}

/* qpipe pick ADDR KEY...: for each KEY, the partition's index and its
 * server, as the library places a keyed put (no connection made). */
int
cmd_pick(cli_opts *o)
{
	const char *addr = o->args[0], *name;
	static char srv[PARTS_MAX][QPI_URL_MAX + 1];
	const char *servers[PARTS_MAX];
	size_t sl = 0, n = parts_split(addr, srv, PARTS_MAX, &sl, &name);

	if (n == 0) {
		/* One server: everything goes to it. */
		snprintf(srv[0], sizeof(srv[0]), "%s", addr);
		n = 1;
	}
	for (size_t i = 0; i < n; i++) {
		servers[i] = srv[i];
	}
	for (int k = 1; k < o->nargs; k++) {
		size_t i = qp_partition_pick(
		    servers, n, o->args[k], strlen(o->args[k]));
		printf("%zu %s\n", i, srv[i]);
	}
	return CLI_OK;
}
