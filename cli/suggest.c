/*
 * suggest.c - what the CLI says when a command line is almost right: a
 * misspelt command, a server address without its scheme, a worker command
 * without "--" before it. Each prints one correction that works.
 * Single-threaded, no state.
 */
#include "cli.h"

#include <string.h>

/* True when addr reads as HOST:PORT or HOST:PORT/NAME, a server's
 * address without its scheme. */
bool
cli_lacks_scheme(const char *addr)
{
	const char *colon = strchr(addr, ':');
	size_t host = strcspn(addr, ":/");

	if (colon == NULL || strstr(addr, "://") != NULL || host == 0
	    || addr + host != colon) {
		return false;
	}
	size_t port = strspn(colon + 1, "0123456789");
	return port > 0 && port <= 5
	    && (colon[1 + port] == '\0' || colon[1 + port] == '/');
}

/* Edit distance between a and b (insertions, deletions, substitutions
 * and swaps of two neighbours each count 1); names are short. */
static size_t
edit_distance(const char *a, const char *b)
{
	enum { M = 32 };
	size_t la = strlen(a), lb = strlen(b);
	size_t d[M + 1][M + 1];

	if (la > M || lb > M) {
		return M;
	}
	for (size_t i = 0; i <= la; i++) {
		for (size_t j = 0; j <= lb; j++) {
			if (i == 0 || j == 0) {
				d[i][j] = i + j;
				continue;
			}
			size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
			if (d[i - 1][j] + 1 < best) {
				best = d[i - 1][j] + 1;
			}
			if (d[i][j - 1] + 1 < best) {
				best = d[i][j - 1] + 1;
			}
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2]
			    && a[i - 2] == b[j - 1]
			    && d[i - 2][j - 2] + 1 < best) {
				best = d[i - 2][j - 2] + 1;
			}
			d[i][j] = best;
		}
	}
	return d[la][lb];
}

/* The one of names closest to name, if one is close enough to be a slip of
 * the fingers (one edit; two for names of five letters or more). */
static const char *
closest(const char *name, const char *const *names, size_t n)
{
	size_t limit = strlen(name) >= 5 ? 2 : 1, best = limit + 1;
	const char *found = NULL;

	for (size_t i = 0; i < n; i++) {
		size_t d = edit_distance(name, names[i]);
		if (d < best) {
			best = d;
			found = names[i];
		}
	}
	return found;
}

/* Writes arg for a shell: as is when it is plain, else in single
 * quotes. */
static void
put_shell_word(FILE *f, const char *arg)
{
	if (arg[0] != '\0'
	    && arg[strspn(arg,
	           "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	           "0123456789_-./:=+,@%")]
	        == '\0') {
		fputs(arg, f);
		return;
	}
	fputc('\'', f);
	for (const char *p = arg; *p != '\0'; p++) {
		if (*p == '\'') {
			fputs("'\\''", f);
		} else {
			fputc(*p, f);
		}
	}
	fputc('\'', f);
}

/* qpipe worker ADDR --results R sh -c ...: the command came without "--"
 * before it. Says so, with the line that works, and returns CLI_USAGE. */
int
cli_worker_without_dashes(const cli_opts *o, int argc, char **argv, int at)
{
	fprintf(stderr,
	    "qpipe: worker: unexpected argument '%s': put '--' before the "
	    "command\nto run, as in:\n  qpipe worker",
	    argv[at]);
	for (int i = 0; i < argc; i++) {
		if (i == at) {
			fputs(" --", stderr);
		}
		fputc(' ', stderr);
		put_shell_word(stderr, argv[i]);
	}
	fprintf(stderr, "\n(try qpipe %s --help)\n", o->cmd);
	return CLI_USAGE;
}

int
cli_unknown_command(const char *name, const char *const *names, size_t n)
{
	const char *near;

	if (name[0] == '-') {
		fprintf(stderr,
		    "qpipe: '%s' goes after the command: only --token-file, "
		    "--tls-ca\nand --insecure-skip-verify may come before it "
		    "(try qpipe --help)\n",
		    name);
	} else if ((near = closest(name, names, n)) != NULL) {
		fprintf(stderr,
		    "qpipe: unknown command '%s'; did you mean '%s'? (try "
		    "qpipe --help)\n",
		    name, near);
	} else {
		fprintf(stderr,
		    "qpipe: unknown command '%s' (try qpipe --help)\n", name);
	}
	return CLI_USAGE;
}
