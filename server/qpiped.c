/*
 * qpiped.c - the qpipe server: flags, start-up, signals and shutdown.
 *
 * SIGTERM and SIGINT are blocked in every thread (nng's included, as they
 * start after the mask is set) and taken by the main thread with
 * sigwaitinfo(): on the first one the server refuses new connections,
 * answers its parked requests ("shutting down"), lets the replies in
 * flight finish, returns its leases and exits 0.
 */
#include "durq.h"
#include "qps.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define QPS_DEFAULT_LISTEN "tcp://127.0.0.1:7450"

/* Parses a byte count with an optional K/M/G suffix (Ki, KiB, KB too). */
static bool
parse_bytes(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	static const char units[] = "kKmMgG"; /* 1024 to the 1st, 2nd, 3rd */
	const char *u;
	char *end;
	unsigned long long v;
	uint64_t mul = 1;

	if (*s < '0' || *s > '9') {
		return false;
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end != '\0' && (u = strchr(units, *end)) != NULL) {
		mul = (uint64_t) 1 << (10 * (1 + (u - units) / 2));
		end += 1 + (end[1] == 'i');
		end += *end == 'B';
	}
	if (errno != 0 || *end != '\0' || v > max / mul || v * mul < min) {
		return false;
	}
	*out = v * mul;
	return true;
}

/* A flag: a bool set true (arg NULL), text stored at off, or a number
 * (BYTES suffixes allowed) from min to max stored in the size-byte field
 * at off (expect: what a bad one should have been); set_flag knows the
 * ones with neither (off 0). help: its lines in --help, arg the name of
 * its value. */
typedef struct flag {
	const char *name, *arg, *help;
	size_t off, size;
	uint64_t min, max;
	const char *expect;
} flag;

/* The tail of a flag's entry: its field, as set_flag stores it. */
#define SPECIAL 0, 0, 0, 0, NULL
#define TEXT(f) offsetof(qps_config, f), 0, 0, 0, NULL
#define BOOL(f) TEXT(f)
#define NUM(f, lo, hi, e) \
	offsetof(qps_config, f), sizeof(((qps_config *) 0)->f), lo, hi, e

static const flag flags[] = {
    {"--listen", "URL",
        "serve URL: tcp://HOST:PORT, tls+tcp://HOST:PORT\n"
        "or ipc:///PATH;\n"
        "repeat for more; port 0 picks a free port",
        SPECIAL},
    {"--port-file", "FILE",
        "once listening, write the bound URLs to FILE,\n"
        "one a line (written whole, then renamed);\n"
        "the --metrics http:// URL comes last",
        TEXT(port_file)},
    {"--max-message", "BYTES", "largest item accepted (default 32M)",
        NUM(max_message, 1, (uint64_t) 1 << 31,
            "bytes from 1 to 2G (K, M, G suffixes)")},
    {"--max-queue-bytes", "BYTES",
        "item storage of each queue the server creates\n"
        "(default 64M)",
        NUM(max_queue_bytes, 4096, (uint64_t) 1 << 40,
            "bytes from 4K to 1T (K, M, G suffixes)")},
    {"--max-connections", "N",
        "connections served at once (default 4096);\n"
        "past it a new client is told 'server at its\n"
        "connection limit' (ELIMIT) and closed",
        NUM(max_connections, 1, 1000000, "a number from 1 to 1000000")},
    {"--lease-ms", "MS",
        "how long a got item stays leased before it\n"
        "returns to the queue (default 30000)",
        NUM(lease_ms, 1, 7ull * 24 * 3600 * 1000,
            "milliseconds from 1 to 7 days")},
    /* What one connection may hold (README, Security). */
    {"--max-waiting", "N",
        "waiting (parked) requests per connection\n"
        "(default 64: a handle's threads each blocked\n"
        "in a get; past it such a request gets ELIMIT)",
        NUM(conn_waits, 1, 1000000, "a number from 1 to 1000000")},
    {"--max-waiting-bytes", "BYTES",
        "bytes held by one connection's waiting\n"
        "puts (default 64M: two largest items; its\n"
        "first waiting put is taken whatever its size)",
        NUM(conn_wait_bytes, 1, (uint64_t) 1 << 40,
            "bytes from 1 to 1T (K, M, G suffixes)")},
    {"--max-leases", "N",
        "items one connection holds leased at once, as a\n"
        "prefetch limit (default 1024: a queue's 4096\n"
        "lease slots serve four greedy consumers and\n"
        "more; a get takes at most what is left)",
        NUM(conn_leases, 1, 1000000, "a number from 1 to 1000000")},
    {"--handshake-timeout", "MS",
        "a connection that has not sent its SP handshake\n"
        "by then is closed (default 10000: room for a\n"
        "slow link, yet idle ones go soon)",
        NUM(handshake_ms, 1, 3600000, "milliseconds from 1 to 3600000")},
    {"--auth-timeout", "MS",
        "with a token: one that has not authenticated by\n"
        "then is closed (default 10000), as is one over\n"
        "--max-connections, so idle ones never hold them",
        NUM(auth_ms, 1, 3600000, "milliseconds from 1 to 3600000")},
    {"--log-level", "LEVEL", "error, warn, info (default) or debug", SPECIAL},
    {"--transport", "sp|nng",
        "how tcp:// and ipc:// are served: sp (default),\n"
        "the SP wire format on plain sockets, or nng",
        SPECIAL},
    {"--auth-token-file", "FILE",
        "clients must prove they hold the token on the\n"
        "first line of FILE (default: $QPIPE_TOKEN if set)",
        TEXT(token_file)},
    {"--tls-cert", "FILE", "the server's certificate (PEM) for tls+tcp://",
        TEXT(tls_cert)},
    {"--tls-key", "FILE", "its private key (PEM, unencrypted)", TEXT(tls_key)},
    {"--tls-ca", "FILE",
        "TLS clients must present a certificate signed\n"
        "by this CA (PEM)",
        TEXT(tls_ca)},
    {"--insecure", NULL,
        "serve non-loopback addresses without client\n"
        "authentication (loud warning in the log);\n"
        "without it they need a token or --tls-ca",
        BOOL(insecure)},
    {"--data-dir", "DIR",
        "durable queues live here, one file each\n"
        "(DIR/NAME.qlog; made if missing)",
        TEXT(data_dir)},
    {"--fsync", "POLICY",
        "durable queues' default: always, never or\n"
        "interval:MS (default interval:100)",
        TEXT(fsync)},
    {"--shm-any-owner", NULL,
        "host shm:// segments that another user owns\n"
        "(default: refused, as that user can read and\n"
        "change them)",
        BOOL(shm_any_owner)},
    {"--metrics", "URL",
        "serve Prometheus metrics at URL/metrics\n"
        "and a status page at URL/ (tcp://HOST:PORT);\n"
        "a non-loopback HOST needs a token or --insecure;\n"
        "with a token, scrapes send 'Authorization:\n"
        "Bearer TOKEN', the page takes URL/#token=TOKEN",
        TEXT(metrics)},
};
#define NFLAGS (sizeof(flags) / sizeof(flags[0]))

/* Prints --help: each flag's lines from the table, its text at column
 * 27 (or two spaces after a longer flag). */
static void
usage(FILE *f)
{
	fprintf(f, "%s",
	    "usage: qpiped [OPTION]...\n"
	    "\n"
	    "Hosts this machine's shared-memory queues over nng: a process "
	    "here on\n"
	    "shm://jobs and one elsewhere on tcp://HOST:PORT/jobs share one "
	    "queue.\n"
	    "Two clients that open the same pipe name here get a connected "
	    "pair.\n"
	    "With no --listen it serves " QPS_DEFAULT_LISTEN ".\n"
	    "\n");
	for (size_t k = 0; k < NFLAGS; k++) {
		const flag *fl = &flags[k];
		const char *h = fl->help, *nl;
		char left[40];
		int n = snprintf(left, sizeof(left), "%s%s%s", fl->name,
		    fl->arg != NULL ? " " : "",
		    fl->arg != NULL ? fl->arg : "");
		fprintf(f, "  %-*s", n < 24 ? 24 : n + 2, left);
		for (; (nl = strchr(h, '\n')) != NULL; h = nl + 1) {
			fprintf(f, "%.*s\n%26s", (int) (nl - h), h, "");
		}
		fprintf(f, "%s\n", h);
	}
	fprintf(f, "%s",
	    "  --help, --version\n"
	    "\n"
	    "BYTES take a K, M or G suffix (powers of 1024).\n"
	    "\n"
	    "Fixed limits: a connection with more than 1M of replies unread "
	    "is not\n"
	    "read until it reads; the server parks at most 8 waiting "
	    "requests per\n"
	    "--max-connections, plus 64; a quarter of --max-connections (at "
	    "least 64)\n"
	    "past it, new connections are closed at once; accept out of "
	    "descriptors\n"
	    "pauses 50 ms to 1 s.\n"
	    "\n"
	    "SIGTERM or SIGINT: new connections and requests are refused,\n"
	    "waiting gets and puts are answered (their clients retry), the\n"
	    "replies in flight are finished, durable puts synced, and qpiped\n"
	    "exits 0.\n");
}

/* Stores val for f in cfg; false on a bad value (message printed). */
static bool
set_flag(qps_config *cfg, const flag *f, const char *val)
{
	const char *bad = NULL;
	qpi_fsync fs;
	uint64_t v;
	int lvl;

	if (strcmp(f->name, "--listen") == 0) {
		if (cfg->nlisten == QPS_MAX_LISTEN) {
			fprintf(stderr,
			    "qpiped: at most %d --listen addresses\n",
			    QPS_MAX_LISTEN);
			return false;
		}
		cfg->listen[cfg->nlisten++] = val;
	} else if (strcmp(f->name, "--transport") == 0) {
		bad = strcmp(val, "sp") != 0 && strcmp(val, "nng") != 0
		    ? "sp or nng"
		    : NULL;
		cfg->raw_sp = strcmp(val, "sp") == 0;
	} else if (strcmp(f->name, "--log-level") == 0) {
		lvl = qps_log_level_parse(val);
		bad = lvl < 0 ? "error, warn, info or debug" : NULL;
		qps_log_level = lvl < 0 ? qps_log_level : lvl;
	} else if (strcmp(f->name, "--fsync") == 0
	    && (qpi_fsync_parse(val, &fs) != QP_OK || val[0] == '\0')) {
		bad = "always, never or interval:MS (1 to 60000)";
	} else if (f->size == 0) {
		*(const char **) ((char *) cfg + f->off) = val;
	} else if (!parse_bytes(val, f->min, f->max, &v)) {
		bad = f->expect;
	} else if (f->size == sizeof(uint32_t)) {
		*(uint32_t *) ((char *) cfg + f->off) = (uint32_t) v;
	} else {
		*(uint64_t *) ((char *) cfg + f->off) = v;
	}
	if (bad != NULL) {
		fprintf(stderr, "qpiped: %s '%s': expected %s\n", f->name, val,
		    bad);
	}
	return bad == NULL;
}

/* Returns 0 to run, 1 on a usage error (message printed), 2 when --help or
 * --version answered. */
static int
parse_args(qps_config *cfg, int argc, char **argv)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->max_message = QP_DEFAULT_MAX_MESSAGE;
	cfg->max_queue_bytes = 64u * 1024 * 1024;
	cfg->max_connections = 4096;
	cfg->lease_ms = 30000;
	cfg->raw_sp = true;
	cfg->conn_waits = QPS_DEFAULT_CONN_WAITS;
	cfg->conn_wait_bytes = QPS_DEFAULT_CONN_WAIT_BYTES;
	cfg->conn_leases = QPS_DEFAULT_CONN_LEASES;
	cfg->handshake_ms = QPS_DEFAULT_HANDSHAKE_MS;
	cfg->auth_ms = QPS_DEFAULT_AUTH_MS;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = NULL;
		const flag *f = NULL;
		const char *eq = strchr(a, '=');
		size_t len = eq != NULL && strncmp(a, "--", 2) == 0
		    ? (size_t) (eq - a)
		    : strlen(a);

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 2;
		}
		if (strcmp(a, "--version") == 0) {
			printf("qpiped %s\n", qp_version());
			return 2;
		}
		/* --flag, --flag VALUE or --flag=VALUE */
		for (size_t k = 0; k < NFLAGS; k++) {
			if (strlen(flags[k].name) == len
			    && strncmp(a, flags[k].name, len) == 0
			    && (flags[k].arg != NULL || len == strlen(a))) {
				f = &flags[k];
			}
		}
		if (f == NULL) {
			fprintf(stderr,
			    "qpiped: unknown option '%s' (try --help)\n", a);
			return 1;
		}
		if (f->arg == NULL) {
			*(bool *) ((char *) cfg + f->off) = true;
			continue;
		}
		if (len < strlen(a)) {
			val = a + len + 1;
		} else if (i + 1 < argc) {
			val = argv[++i];
		} else {
			fprintf(stderr,
			    "qpiped: %s needs a value (try --help)\n", a);
			return 1;
		}
		if (!set_flag(cfg, f, val)) {
			return 1;
		}
	}
	if (cfg->nlisten == 0) {
		cfg->listen[cfg->nlisten++] = QPS_DEFAULT_LISTEN;
	}
	return 0;
}

/* Writes the bound URLs to path: whole to a temporary file, then renamed,
 * so a reader never sees half of it. */
static int
write_port_file(const char *path, char urls[][QPI_URL_MAX + 1], size_t n)
{
	char tmp[PATH_MAX];
	FILE *f;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long) getpid())
	    >= (int) sizeof(tmp)) {
		qps_log(QPS_LOG_ERROR, "--port-file path is too long");
		return -1;
	}
	if ((f = fopen(tmp, "w")) == NULL) {
		qps_log(QPS_LOG_ERROR, "cannot write --port-file %s: %s", tmp,
		    strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		fprintf(f, "%s\n", urls[i]);
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		qps_log(QPS_LOG_ERROR, "cannot write --port-file %s: %s", path,
		    strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

/* Room for the connections asked for: raise the soft descriptor limit. */
static void
raise_nofile(uint32_t conns)
{
	struct rlimit rl;
	rlim_t want = (rlim_t) conns * 2 + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) {
		return;
	}
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want
	    ? want
	    : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want) {
		qps_log(QPS_LOG_WARN,
		    "open-file limit is %llu: fewer than the %u connections "
		    "of --max-connections can be served",
		    (unsigned long long) rl.rlim_cur, conns);
	}
}

int
main(int argc, char **argv)
{
	char urls[QPS_MAX_LISTEN + 1][QPI_URL_MAX + 1];
	qps_config cfg;
	sigset_t sigs;
	siginfo_t si;
	int rv, sig;

	if ((rv = parse_args(&cfg, argc, argv)) != 0) {
		return rv == 2 ? 0 : 1;
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile(cfg.max_connections);

	qps_log(QPS_LOG_INFO, "qpiped %s starting (pid %ld)", qp_version(),
	    (long) getpid());
	if (qps_sec_start(&cfg) != QP_OK || qps_ops_start(&cfg) != QP_OK) {
		goto fail_sec;
	}
	/* The metrics URL, if any, is the port file's last line. */
	if (qps_net_start(&cfg, urls) != QP_OK
	    || qps_metrics_start(&cfg, urls[cfg.nlisten], sizeof(urls[0]))
	        != QP_OK
	    || (cfg.port_file != NULL
	        && write_port_file(cfg.port_file, urls,
	               cfg.nlisten + (urls[cfg.nlisten][0] != '\0'))
	            != 0)) {
		goto fail;
	}
	qps_log(QPS_LOG_INFO,
	    "ready: max message %zu bytes, queue bytes %llu, max "
	    "connections %u, lease %lld ms",
	    cfg.max_message, (unsigned long long) cfg.max_queue_bytes,
	    cfg.max_connections, (long long) cfg.lease_ms);

	do {
		sig = sigwaitinfo(&sigs, &si);
	} while (sig < 0 && errno == EINTR);
	qps_log(QPS_LOG_INFO, "%s: no longer accepting connections, draining",
	    sig == SIGINT ? "SIGINT" : "SIGTERM");

	qps_ops_drain();
	if (!qps_net_drain(5000)) {
		qps_log(QPS_LOG_WARN,
		    "replies still in flight after 5 s; closing anyway");
	}
	qps_ops_linger(250);
	qps_metrics_stop();
	qps_ops_shutdown();
	qps_net_close();
	qps_ops_fini();
	qps_sec_fini();
	qps_log(QPS_LOG_INFO, "stopped");
	return 0;
fail:
	qps_metrics_stop(); /* safe if it did not start */
	qps_net_close();
	qps_ops_fini();
fail_sec:
	qps_sec_fini();
	return 2;
}
