/*
 * qpiped.c - the qpipe server: start-up, flags and signals.
 */
#include "qpi.h"

#include <stdio.h>
#include <string.h>

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: qpiped [--listen URL]... [--max-message BYTES] "
	    "[--data-dir DIR]\n"
	    "\n"
	    "Hosts named queues and pipes and bridges this host's "
	    "shared-memory\n"
	    "queues onto nng listeners. With no --listen it serves "
	    "tcp://127.0.0.1:%d.\n"
	    "\n"
	    "  --listen URL         tcp://HOST:PORT, tls+tcp://HOST:PORT or "
	    "ipc:///PATH\n"
	    "  --max-message BYTES  largest message accepted (default 32 "
	    "MiB)\n"
	    "  --data-dir DIR       where durable queues live\n"
	    "  --help, --version\n",
	    QP_DEFAULT_PORT);
}

int
main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0
		    || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(argv[i], "--version") == 0) {
			printf("qpiped %s\n", qp_version());
			return 0;
		}
		fprintf(stderr, "qpiped: unknown option '%s' (try --help)\n",
		    argv[i]);
		return 1;
	}
	fprintf(stderr,
	    "qpiped: serving queues over the network is not built "
	    "yet in this version\n");
	return 2;
}
