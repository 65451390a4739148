/*
 * qpipe.c - the command-line client: argument parsing and dispatch.
 */
#include "qpi.h"

#include <stdio.h>
#include <string.h>

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: qpipe COMMAND [OPTIONS] ADDR [DATA...]\n"
	    "  --help, --version\n");
}

int
main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 1;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("qpipe %s\n", qp_version());
		return 0;
	}
	fprintf(stderr, "qpipe: unknown command '%s' (try qpipe --help)\n",
	    argv[1]);
	return 1;
}
