/*
 * top.c - `qpipe top ADDR`: qpiped's status page in a terminal. Every
 * second it reads /api/status from the server's --metrics listener (nng's
 * HTTP client) and prints the server's figures and one line per queue:
 * depth, leases, put and get rates since the last refresh. On a terminal
 * each refresh redraws the screen (as top); otherwise the refreshes follow
 * one another (as redis-cli --stat), -n N of them.
 *
 * Locking: none; one thread.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>

#define TOP_MAX_QUEUES 4096

/* One queue's figures, as the JSON has them. */
typedef struct top_q {
	char name[QP_NAME_MAX + 1];
	double ready, leased, puts, gets, getters, dead, redelivered;
} top_q;

typedef struct top_st {
	double time_ms, uptime_s, connections, waiting, leased, requests;
	char version[32];
	top_q *qs;
	size_t n;
} top_st;

/* The number after "key": in [p, end), or -1 when it is not there. */
static double
top_num(const char *p, const char *end, const char *key)
{
	char pat[48];
	const char *k;
	size_t plen;

	plen = (size_t) snprintf(pat, sizeof(pat), "\"%s\":", key);
	for (k = p; k != NULL && k + plen <= end; k++) {
		k = memchr(k, '"', (size_t) (end - k));
		if (k == NULL || k + plen > end) {
			break;
		}
		if (memcmp(k, pat, plen) == 0) {
			return strtod(k + plen, NULL);
		}
	}
	return -1;
}

/* The string after "key": (no escapes: names and versions have none). */
static void
top_str(const char *p, const char *end, const char *key, char *buf, size_t cap)
{
	char pat[48];
	const char *k = p, *e;
	size_t plen = (size_t) snprintf(pat, sizeof(pat), "\"%s\":\"", key);

	buf[0] = '\0';
	while (k != NULL && k + plen <= end) {
		if (memcmp(k, pat, plen) == 0) {
			k += plen;
			e = memchr(k, '"', (size_t) (end - k));
			if (e != NULL && (size_t) (e - k) < cap) {
				memcpy(buf, k, (size_t) (e - k));
				buf[e - k] = '\0';
			}
			return;
		}
		k = memchr(k + 1, '"', (size_t) (end - k - 1));
	}
}

/* Reads the status JSON (the server's own, flat: see server/metrics.c). */
static int
top_parse(const char *js, size_t len, top_st *st)
{
	const char *end = js + len, *qs = strstr(js, "\"queues\":[");
	const char *p;

	if (qs == NULL || top_num(js, qs, "time_ms") < 0) {
		return QP_EPROTO;
	}
	st->time_ms = top_num(js, qs, "time_ms");
	st->uptime_s = top_num(js, qs, "uptime_s");
	st->connections = top_num(js, qs, "connections");
	st->waiting = top_num(js, qs, "waiting");
	st->leased = top_num(js, qs, "leased");
	st->requests = top_num(js, qs, "requests");
	top_str(js, qs, "version", st->version, sizeof(st->version));
	st->n = 0;
	for (p = qs; (p = memchr(p, '{', (size_t) (end - p))) != NULL;) {
		const char *e = memchr(p, '}', (size_t) (end - p));
		top_q *q;
		if (e == NULL || st->n == TOP_MAX_QUEUES) {
			break;
		}
		q = &st->qs[st->n++];
		top_str(p, e, "name", q->name, sizeof(q->name));
		q->ready = top_num(p, e, "ready");
		q->leased = top_num(p, e, "leased");
		q->puts = top_num(p, e, "puts");
		q->gets = top_num(p, e, "gets");
		q->getters = top_num(p, e, "getters");
		q->dead = top_num(p, e, "dead");
		q->redelivered = top_num(p, e, "redelivered");
		p = e;
	}
	return QP_OK;
}

/* GET url (with a bearer token if bearer is not NULL): the body in a
 * malloc'd *bodyp. QP_OK, QP_ECONNREFUSED, QP_EAUTH (401), QP_EPROTO. */
static int
top_fetch(const char *url, const char *bearer, char **bodyp, size_t *lenp)
{
	nng_url *u = NULL;
	nng_http_client *c = NULL;
	nng_http_req *req = NULL;
	nng_http_res *res = NULL;
	nng_aio *aio = NULL;
	char auth[1100];
	void *data;
	size_t len;
	int rv, ret = QP_ECONNREFUSED;

	if (nng_url_parse(&u, url) != 0 || nng_http_client_alloc(&c, u) != 0
	    || nng_http_req_alloc(&req, u) != 0
	    || nng_http_res_alloc(&res) != 0
	    || nng_aio_alloc(&aio, NULL, NULL) != 0) {
		ret = QP_ENOMEM;
		goto out;
	}
	if (bearer != NULL) {
		snprintf(auth, sizeof(auth), "Bearer %s", bearer);
		nng_http_req_set_header(req, "Authorization", auth);
	}
	nng_aio_set_timeout(aio, 5000);
	nng_http_client_transact(c, req, res, aio);
	nng_aio_wait(aio);
	if ((rv = nng_aio_result(aio)) != 0) {
		fprintf(stderr, "qpipe: top %s: %s%s\n", url, nng_strerror(rv),
		    rv == NNG_EPROTO ? " (not an HTTP server: is ADDR "
		                       "qpiped's --metrics address?)"
		                     : "");
		goto out;
	}
	if (nng_http_res_get_status(res) == 401) {
		ret = QP_EAUTH;
		fprintf(stderr,
		    "qpipe: top %s: the server wants its token "
		    "(--token-file FILE or $QPIPE_TOKEN)\n",
		    url);
		goto out;
	}
	if (nng_http_res_get_status(res) != 200) {
		ret = QP_EPROTO;
		fprintf(stderr, "qpipe: top %s: HTTP status %u\n", url,
		    (unsigned) nng_http_res_get_status(res));
		goto out;
	}
	nng_http_res_get_data(res, &data, &len);
	if ((*bodyp = malloc(len + 1)) == NULL) {
		ret = QP_ENOMEM;
		goto out;
	}
	memcpy(*bodyp, data, len);
	(*bodyp)[len] = '\0';
	*lenp = len;
	ret = QP_OK;
out:
	if (aio != NULL) {
		nng_aio_free(aio);
	}
	if (res != NULL) {
		nng_http_res_free(res);
	}
	if (req != NULL) {
		nng_http_req_free(req);
	}
	if (c != NULL) {
		nng_http_client_free(c);
	}
	if (u != NULL) {
		nng_url_free(u);
	}
	return ret;
}

static void
top_fmt(char *buf, size_t cap, double v)
{
	if (v < 0) {
		snprintf(buf, cap, "-");
	} else if (v >= 1e9) {
		snprintf(buf, cap, "%.1fG", v / 1e9);
	} else if (v >= 1e6) {
		snprintf(buf, cap, "%.1fM", v / 1e6);
	} else if (v >= 1e5) {
		snprintf(buf, cap, "%.0fk", v / 1e3);
	} else {
		snprintf(buf, cap, "%.0f", v);
	}
}

/* The figure of name in the previous refresh (-1: none). */
static const top_q *
top_find(const top_st *st, const char *name)
{
	for (size_t i = 0; st != NULL && i < st->n; i++) {
		if (strcmp(st->qs[i].name, name) == 0) {
			return &st->qs[i];
		}
	}
	return NULL;
}

static void
top_print(const top_st *st, const top_st *prev, bool tty)
{
	double dt = prev != NULL ? (st->time_ms - prev->time_ms) / 1000.0 : 0;
	char a[16], b[16], c[16], d[16], e[16], f[16], g[16];
	time_t now = time(NULL);
	struct tm tm;

	localtime_r(&now, &tm);
	if (tty) {
		fputs("\033[H\033[2J", stdout);
	}
	if (dt <= 0) {
		dt = 0;
	}
	snprintf(a, sizeof(a), "%.1f",
	    dt > 0 ? (st->requests - prev->requests) / dt : 0.0);
	printf("qpiped %s  up %.0f s  connections %.0f  waiting %.0f  "
	       "leased %.0f  requests/s %s  %02d:%02d:%02d\n",
	    st->version, st->uptime_s, st->connections, st->waiting,
	    st->leased, dt > 0 ? a : "-", tm.tm_hour, tm.tm_min, tm.tm_sec);
	printf("%-32s %9s %9s %9s %9s %10s %10s %7s\n", "QUEUE", "READY",
	    "LEASED", "PUT/S", "GOT/S", "PUTS", "GETS", "DEAD");
	for (size_t i = 0; i < st->n; i++) {
		const top_q *q = &st->qs[i], *p = top_find(prev, q->name);
		top_fmt(a, sizeof(a), q->ready);
		top_fmt(b, sizeof(b), q->leased);
		if (p != NULL && dt > 0) {
			snprintf(
			    c, sizeof(c), "%.1f", (q->puts - p->puts) / dt);
			snprintf(
			    d, sizeof(d), "%.1f", (q->gets - p->gets) / dt);
		} else {
			snprintf(c, sizeof(c), "-");
			snprintf(d, sizeof(d), "-");
		}
		top_fmt(e, sizeof(e), q->puts);
		top_fmt(f, sizeof(f), q->gets);
		top_fmt(g, sizeof(g), q->dead);
		printf("%-32s %9s %9s %9s %9s %10s %10s %7s\n", q->name, a, b,
		    c, d, e, f, g);
	}
	if (st->n == 0) {
		printf("(no queues)\n");
	}
	if (!tty) {
		printf("\n");
	}
	fflush(stdout);
}

/* The token to send: the first line of --token-file, else $QPIPE_TOKEN. */
static const char *
top_token(const cli_opts *o, char *buf, size_t cap)
{
	const char *env = getenv("QPIPE_TOKEN");

	if (o->token_file != NULL) {
		FILE *f = fopen(o->token_file, "r");
		buf[0] = '\0';
		if (f != NULL) {
			if (fgets(buf, (int) cap, f) == NULL) {
				buf[0] = '\0';
			}
			fclose(f);
		}
		buf[strcspn(buf, "\r\n")] = '\0';
		return buf[0] != '\0' ? buf : NULL;
	}
	return env != NULL && env[0] != '\0' ? env : NULL;
}

int
cmd_top(cli_opts *o)
{
	const char *addr = o->args[0];
	char url[QP_NAME_MAX + 320], tok[1100];
	const char *bearer = top_token(o, tok, sizeof(tok));
	top_st st[2];
	bool tty = isatty(STDOUT_FILENO) == 1;
	int rv = QP_OK, cur = 0;
	size_t k = strlen(addr);

	/* tcp://HOST:PORT (as --metrics was given) or http://HOST:PORT. */
	if (strncmp(addr, "tcp://", 6) == 0) {
		addr += 6;
	} else if (strncmp(addr, "http://", 7) == 0) {
		addr += 7;
	} else {
		return cli_usage_error(o,
		    "ADDR is qpiped's --metrics address (tcp://HOST:PORT or "
		    "http://HOST:PORT), not '%s'",
		    addr);
	}
	k = strlen(addr);
	while (k > 0 && addr[k - 1] == '/') {
		k--;
	}
	if (k == 0 || k > 300) {
		return cli_usage_error(o, "no HOST:PORT in '%s'", o->args[0]);
	}
	snprintf(url, sizeof(url), "http://%.*s/api/status", (int) k, addr);
	memset(st, 0, sizeof(st));
	st[0].qs = calloc(TOP_MAX_QUEUES, sizeof(top_q));
	st[1].qs = calloc(TOP_MAX_QUEUES, sizeof(top_q));
	if (st[0].qs == NULL || st[1].qs == NULL) {
		free(st[0].qs);
		free(st[1].qs);
		fprintf(stderr, "qpipe: out of memory\n");
		return CLI_ERROR;
	}
	for (uint64_t i = 0; o->count == 0 || i < o->count; i++) {
		char *body = NULL;
		size_t len = 0;
		if (i > 0) {
			struct timespec ts = {1, 0};
			while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
			}
		}
		if ((rv = top_fetch(url, bearer, &body, &len)) != QP_OK) {
			break;
		}
		rv = top_parse(body, len, &st[cur]);
		free(body);
		if (rv != QP_OK) {
			fprintf(stderr,
			    "qpipe: top %s: not qpiped's status (is it the "
			    "--metrics address?)\n",
			    url);
			break;
		}
		top_print(&st[cur], i > 0 ? &st[cur ^ 1] : NULL, tty);
		cur ^= 1;
	}
	free(st[0].qs);
	free(st[1].qs);
	return rv == QP_OK ? CLI_OK : cli_exit_code(rv);
}
