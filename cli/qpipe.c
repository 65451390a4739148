/*
 * qpipe.c - the command-line client: parses the command line, dispatches to
 * a command, and holds the pieces the commands share (exit codes, error
 * lines, reading stdin, progress). Single-threaded.
 */
#include "cli.h"
#include "qpi.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Which options a command takes. */
#define OPT_TIMEOUT 0x01u
#define OPT_JSON    0x02u
#define OPT_LINES   0x04u
#define OPT_COUNT   0x08u
#define OPT_CREATE  0x10u
#define OPT_WORKER  0x20u
#define OPT_SIDE    0x40u
#define OPT_KEY     0x80u /* put --key */

typedef struct cli_cmd {
	const char *name;
	const char *summary; /* one line for qpipe --help */
	int (*run)(cli_opts *);
	unsigned opts;
	int min_args, max_args; /* positional arguments; -1 = any */
	const char *synopsis;
	const char *help;
} cli_cmd;

static const cli_cmd commands[] = {
    {"put", "put items: each DATA, all of stdin, or one per line", cmd_put,
        OPT_TIMEOUT | OPT_JSON | OPT_LINES | OPT_KEY, 1, -1,
        "put [--timeout SEC | --nowait] [--json] [--lines] [--key KEY] ADDR "
        "[DATA...]",
        "Puts items. Each DATA is one item; with no DATA, all of stdin is "
        "one\nitem (--lines: one item per line, without its newline). "
        "Blocks while\nthe queue is full, like Python's put(); --timeout "
        "SEC gives up after SEC\nseconds (exit 4), --nowait at once. "
        "--json: each item is JSON text,\nstored as a msgpack value. The "
        "queue is created if missing.\n"
        "\n"
        "--lines travel in batches of up to 1024 lines, sent as soon as "
        "stdin\nhas nothing more ready. A server stores each batch all at "
        "once: when\na put gives up (exit 4), the lines of its batch are "
        "not stored.\n"
        "\n"
        "An ADDR with several servers (tcp://h1:7450,h2:7450/jobs) is one "
        "queue\nwith a partition on each: items go round robin (a batch "
        "of --lines\nwhole to one), or with --key KEY (bytes items) to "
        "the partition that\nrendezvous hashing picks for KEY (qpipe "
        "pick)."},
    {"get", "get items, their bytes to stdout untouched", cmd_get,
        OPT_TIMEOUT | OPT_JSON | OPT_COUNT, 1, -1,
        "get [--timeout SEC | --nowait] [-n N] [--json] ADDR [ADDR...]",
        "Gets one item and writes its bytes to stdout exactly, nothing "
        "added.\nBlocks while the queue is empty, like Python's get(); "
        "--timeout SEC\ngives up after SEC seconds (exit 3), --nowait at "
        "once. -n N: up to N\nitems, one per line: waits for the first as "
        "above, then takes more\nwhile they come (within SEC with "
        "--timeout, else only those ready).\n--json: writes each item as "
        "JSON, one per line.\n"
        "\n"
        "A queue that does not exist is created, and get waits on it "
        "(a\nmisspelt name waits forever): a line on stderr says so "
        "when it does.\n"
        "\n"
        "Several ADDRs: each item comes from whichever queue has one, "
        "the first\nlisted first (as Redis BLPOP); the queues may mix "
        "shm:// and servers.\nAn ADDR with several servers "
        "(tcp://h1:7450,h2:7450/jobs) is one queue\nwith a partition "
        "on each."},
    {"size", "how many items a queue holds", cmd_size, 0, 1, 1, "size ADDR",
        "Prints the exact number of items in the queue (0 if it does not "
        "exist)."},
    {"stat", "a queue's figures, as JSON", cmd_stat, 0, 1, 1, "stat ADDR",
        "Prints the queue's figures as one JSON object:\n"
        "  items          items ready\n"
        "  bytes          bytes of the items ready\n"
        "  maxsize        most items it holds (0: bounded by capacity "
        "only)\n"
        "  capacity       bytes of storage\n"
        "  leased         items handed out and not yet confirmed\n"
        "  unfinished     items put and not yet task_done\n"
        "  getters        gets waiting now\n"
        "  putters        puts waiting now\n"
        "  puts, gets     items put and got since the queue was made\n"
        "  oldest_age_ms  age of the oldest ready item (-1: none)"},
    {"ls", "every queue of a server (or of this host), as JSON", cmd_ls, 0, 1,
        1, "ls SERVER",
        "Lists every queue that SERVER hosts (tcp://HOST[:PORT], "
        "ipc:///PATH)\nas a JSON array, one queue per line, each with its "
        "\"name\" and the\nfigures of qpipe stat. ls shm:// lists this "
        "host's shared-memory queues."},
    {"create", "make a queue (--maxsize N bounds it)", cmd_create, OPT_CREATE,
        1, 1,
        "create [--maxsize N] [--capacity BYTES] [--durable [--fsync "
        "POLICY]] ADDR",
        "Creates a queue: at most N items (0, the default: unbounded), "
        "BYTES of\nstorage (default 64 MiB). Fails (exit 2) if it "
        "exists. --durable keeps it\nin a file under the server's "
        "--data-dir (tcp://, ipc://, tls+tcp:// only);\nPOLICY is "
        "always (a put returns once on disk), interval:MS (synced\n"
        "within MS ms) or never; default: the server's --fsync."},
    {"rm", "delete a queue and its items", cmd_rm, 0, 1, 1, "rm ADDR",
        "Deletes a queue and its items. Fails (exit 2) if there is none."},
    {"send", "send messages over a pipe through a qpiped", cmd_send,
        OPT_JSON | OPT_SIDE, 1, -1,
        "send [--json] [--side 0|1] ADDR [DATA...]",
        "Sends messages over the pipe named by ADDR (tcp://HOST[:PORT]/"
        "NAME or\nipc:///PATH/NAME, through the qpiped there): each DATA "
        "is one message;\nwith no DATA, all of stdin is one. The pipe "
        "holds what was sent until\nthe other end reads it; closing this "
        "end is its end of file. --side:\nwhich end to hold (default: the "
        "free one). Exit 6 if the other end\nhas closed."},
    {"recv", "receive messages from a pipe", cmd_recv,
        OPT_TIMEOUT | OPT_JSON | OPT_COUNT | OPT_SIDE, 1, 1,
        "recv [--timeout SEC | --nowait] [-n N] [--json] [--side 0|1] "
        "ADDR",
        "Receives one message from the pipe named by ADDR and writes its "
        "bytes\nto stdout exactly. Waits for it; --timeout SEC gives up "
        "after SEC\nseconds (exit 3), --nowait at once. -n N: N messages, "
        "one per line,\nfewer if the end of file or (with --timeout) a "
        "pause of SEC comes\nfirst. Exit 6 at end of file: the other end "
        "closed (or died) and\nnothing is left.\n"
        "\n"
        "A pipe joins the first two ends that open its name; once one "
        "has\nclosed, the other reads what is left, then end of file. The "
        "name is free\nagain when both have closed."},
    {"worker", "run a command once per task; outputs to a results queue",
        cmd_worker, OPT_WORKER | OPT_JSON, 1, 16,
        "worker ADDR [ADDR...] --results ADDR [--concurrency N] "
        "[--max-attempts N]\n"
        "        [--timeout SEC] [--lease SEC] [--max-tasks N] "
        "[--idle-exit SEC]\n"
        "        [--keep-newline] [--json] -- CMD [ARG...]",
        "Runs CMD once per task of the queue ADDR, the task on its stdin "
        "(no\nshell: say sh -c '...' for one; CMD comes after --). When "
        "CMD exits 0,\nits stdout, less one final newline, is put to the "
        "--results queue\n(so that qpipe get -n prints one line per "
        "result) and the task is\nconfirmed with it, in one step "
        "where both queues are on one server\nor in this host's shared "
        "memory (one result per task).\nWhen it exits "
        "non-zero, is killed or times out, the task goes back to the\n"
        "queue for another attempt; after --max-attempts deliveries "
        "(default 3)\nit is moved to the dead-letter queue ADDR.dead,\n"
        "with one line on stderr (a task delivered more often, its "
        "workers\nhaving died, goes there without running). A worker "
        "killed at any point\nloses nothing: its tasks go to another "
        "worker (remote: when its\nconnection drops or its lease ends; "
        "local: within a quarter second,\nonce another local worker "
        "gets or waits, or when the lease ends).\n"
        "\n"
        "Several task queues (each later ADDR with its scheme, shm://NAME "
        "for a\nlocal one): each task comes from whichever has one, the "
        "first listed\nfirst; a failed task goes to its own queue's "
        "ADDR.dead.\n"
        "\n"
        "  --results ADDR     where the outputs go (any address form)\n"
        "  --concurrency N    run up to N tasks at once (default 1)\n"
        "  --max-attempts N   deliveries before the dead-letter queue "
        "(default 3)\n"
        "  --timeout SEC      kill a task that runs longer (its process "
        "group)\n"
        "  --lease SEC        how long a task stays held for this worker "
        "before it\n"
        "                     goes to another unless renewed (default: "
        "--timeout\n"
        "                     + 10 s, else the queue's: the server's 30 "
        "s, or\n"
        "                     30 s for shm://). While a task runs its "
        "lease is\n"
        "                     renewed every third of it, so a task may "
        "run\n"
        "                     longer: it runs out once the worker is "
        "gone\n"
        "  --max-tasks N      exit 0 after N tasks\n"
        "  --idle-exit SEC    exit 0 once no task came for SEC seconds\n"
        "  --keep-newline     put CMD's stdout byte for byte, a final "
        "newline too\n"
        "  --json             task to CMD as JSON text, its output parsed "
        "as JSON\n"
        "\n"
        "CMD sees QPIPE_ATTEMPT (1 on a first delivery) in its "
        "environment.\nSIGTERM or SIGINT: take no new task, let the "
        "running ones finish,\nexit 0 (a second signal exits at once; "
        "unfinished tasks go back).\nExit 6 if the queue is removed, 2 "
        "if it cannot be reached."},
    {"pick", "which partition a key goes to (several servers)", cmd_pick, 0, 2,
        -1, "pick ADDR KEY...",
        "For an ADDR with several servers (tcp://h1:7450,h2:7450/jobs), "
        "prints\nfor each KEY the index of the partition a put --key KEY "
        "goes to, and\nits server as written: rendezvous hashing, the "
        "same as the library's\nand the Python package's. Connects to "
        "nothing."},
    {"ping", "is the server there? (exit 0 or 2)", cmd_ping, 0, 1, 1,
        "ping ADDR",
        "Exit 0 if the server of ADDR (a server or a queue address) "
        "answers,\n2 otherwise, with one line on stderr saying why. For a "
        "health check."},
    /* top: qpiped's status page in a terminal (top.c) */
    {"top", "a server's queues and figures, refreshed every second", cmd_top,
        OPT_COUNT, 1, 1, "top [-n N] ADDR",
        "Shows what qpiped's status page shows, refreshed every second: "
        "the\nserver's connections, waiting requests, leases and "
        "requests per second,\nthen one line per queue: items ready and "
        "leased, put and got per\nsecond since the last refresh, puts, "
        "gets and items dead-lettered. ADDR\nis the server's --metrics "
        "address (tcp://HOST:PORT or http://HOST:PORT).\nOn a terminal "
        "the screen is redrawn; otherwise refreshes follow one\nanother, "
        "a blank line between. -n N: stop after N refreshes. A server\n"
        "with a token wants it: --token-file FILE, or $QPIPE_TOKEN."},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void
usage_all(FILE *f)
{
	fprintf(f,
	    "usage: qpipe COMMAND [OPTIONS] ADDR [DATA...]\n"
	    "\n"
	    "Python's multiprocessing Queue and Pipe from the shell, on this "
	    "host or\n"
	    "across hosts through qpiped.\n"
	    "\n"
	    "Commands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++) {
		fprintf(
		    f, "  %-7s %s\n", commands[i].name, commands[i].summary);
	}
	fprintf(f, "\nUsage:\n");
	for (size_t i = 0; i < NCOMMANDS; i++) {
		fprintf(f, "  qpipe %s\n", commands[i].synopsis);
	}
	fprintf(f,
	    "\n"
	    "ADDR names a queue:\n"
	    "  jobs, shm://jobs             this host's shared memory (no "
	    "server)\n"
	    "  tcp://HOST[:PORT]/jobs       the qpiped there (port 7450)\n"
	    "  tls+tcp://HOST[:PORT]/jobs   the same over TLS\n"
	    "  ipc:///PATH/TO/SOCKET/jobs   the same over a Unix socket\n"
	    "Names are 1-128 bytes of A-Z a-z 0-9 . _ -\n"
	    "\n"
	    "SEC is seconds, fractions allowed. Items are bytes, passed "
	    "untouched.\n"
	    "\n"
	    "Remote addresses take, before or after the command:\n"
	    "  --token-file FILE        the server's token (first line of "
	    "FILE;\n"
	    "                           default: $QPIPE_TOKEN)\n"
	    "  --tls-ca FILE            CA certificates (PEM) that tls+tcp:// "
	    "servers\n"
	    "                           must chain to (default: "
	    "$QPIPE_TLS_CA, else\n"
	    "                           the system's)\n"
	    "  --insecure-skip-verify   accept any TLS certificate (tests "
	    "only)\n"
	    "\n"
	    "Local addresses take, before or after the command:\n"
	    "  --any-owner              open a shm:// queue another user "
	    "owns\n"
	    "                           (default: refused, as that user can "
	    "read\n"
	    "                           and change it)\n"
	    "\n"
	    "Exit codes: 0 ok, 1 usage, 2 connection/server/protocol/auth "
	    "error,\n"
	    "3 empty (or timed out), 4 full, 5 over a size limit, 6 closed or "
	    "end of\n"
	    "file.\n"
	    "\n"
	    "Examples:\n"
	    "  seq 1 100 | qpipe put --lines tcp://q1:7450/tasks\n"
	    "  qpipe worker tcp://q1:7450/tasks --results "
	    "tcp://q1:7450/results \\\n"
	    "      -- sh -c 'read n; echo $((n*n))'\n"
	    "  qpipe get -n 100 --timeout 5 tcp://q1:7450/results\n"
	    "\n"
	    "qpipe COMMAND --help tells more; qpipe --version.\n");
}

static void
usage_cmd(FILE *f, const cli_cmd *c)
{
	fprintf(f, "usage: qpipe %s\n\n%s\n", c->synopsis, c->help);
}

int
cli_exit_code(int err)
{
	switch (err) {
	case QP_OK:
		return CLI_OK;
	case QP_EINVAL:
		return CLI_USAGE;
	case QP_EEMPTY:
		return CLI_EMPTY;
	case QP_EFULL:
		return CLI_FULL;
	case QP_ETOOBIG:
		return CLI_TOOBIG;
	case QP_ECLOSED:
		return CLI_CLOSED;
	default:
		return CLI_ERROR;
	}
}

int
cli_fail(const cli_opts *o, const char *addr, int err)
{
	const char *msg = qp_errmsg();
	size_t alen = strlen(addr);

	if (err == QP_EINVAL && cli_lacks_scheme(addr)) {
		fprintf(stderr,
		    "qpipe: %s %s: a server's address needs its scheme: "
		    "did you mean tcp://%s?\n",
		    o->cmd, addr, addr);
		return cli_exit_code(err);
	}

	/* The library's message may start with the address: said once. */
	if (strncmp(msg, addr, alen) == 0 && msg[alen] == ':'
	    && msg[alen + 1] == ' ') {
		msg += alen + 2;
	}

	if (err == QP_EEMPTY && o->timeout > 0) {
		fprintf(stderr, "qpipe: %s %s: empty after %g s\n", o->cmd,
		    addr, o->timeout_sec);
	} else if (err == QP_EFULL && o->timeout > 0) {
		fprintf(stderr, "qpipe: %s %s: full after %g s\n", o->cmd,
		    addr, o->timeout_sec);
	} else if (msg[0] != '\0') {
		fprintf(stderr, "qpipe: %s %s: %s\n", o->cmd, addr, msg);
	} else {
		fprintf(stderr, "qpipe: %s %s: %s\n", o->cmd, addr,
		    qp_strerror(err));
	}
	return cli_exit_code(err);
}

int
cli_usage_error(const cli_opts *o, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "qpipe: %s: ", o->cmd != NULL ? o->cmd : "usage");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(
	    stderr, " (try qpipe %s --help)\n", o->cmd != NULL ? o->cmd : "");
	return CLI_USAGE;
}

int
cli_read_all(FILE *f, size_t max, char **bufp, size_t *lenp)
{
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);

	if (buf == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	for (;;) {
		if (len == cap) {
			if (cap > max) {
				free(buf);
				return qpi_err(QP_ETOOBIG,
				    "input is over the %zu-byte message limit",
				    max);
			}
			char *nb = realloc(buf, cap * 2);
			if (nb == NULL) {
				free(buf);
				return qpi_err(QP_ENOMEM, "out of memory");
			}
			buf = nb;
			cap *= 2;
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0) {
			if (ferror(f)) {
				int e = errno;
				free(buf);
				return qpi_err(QP_ESYSTEM, "reading input: %s",
				    strerror(e));
			}
			break;
		}
	}
	if (len > max) {
		free(buf);
		return qpi_err(QP_ETOOBIG,
		    "input is %zu bytes, over the %zu-byte message limit", len,
		    max);
	}
	*bufp = buf;
	*lenp = len;
	return QP_OK;
}

bool
cli_write(const void *buf, size_t len)
{
	return len == 0 || fwrite(buf, 1, len, stdout) == len;
}

void
cli_progress_start(cli_progress *p, const char *what)
{
	p->tty = isatty(STDERR_FILENO) == 1;
	p->start_ms = p->last_ms = qpi_now_ms();
	p->n = 0;
	p->what = what;
}

void
cli_progress_tick(cli_progress *p)
{
	p->n++;
	if (!p->tty) {
		return;
	}
	int64_t now = qpi_now_ms();
	if (now - p->last_ms >= 250) {
		double secs = (double) (now - p->start_ms) / 1000.0;
		fprintf(stderr, "\r%s %llu items, %.0f items/s   ", p->what,
		    (unsigned long long) p->n, secs > 0 ? p->n / secs : 0.0);
		p->last_ms = now;
	}
}

void
cli_progress_end(cli_progress *p)
{
	if (p->tty && p->last_ms != p->start_ms) {
		fprintf(stderr, "\r%s %llu items\n", p->what,
		    (unsigned long long) p->n);
	}
}

int
cli_open_queue(const cli_opts *o, const char *addr, bool create, qp_queue **qp)
{
	qp_queue_opts opts = {0};

	opts.flags = (create ? QP_OPEN_CREATE : 0) | cli_open_flags(o);
	opts.conn = cli_conn(o);
	return qp_queue_open(qp, addr, &opts);
}

uint32_t
cli_open_flags(const cli_opts *o)
{
	return o->any_owner ? QP_OPEN_ANY_OWNER : 0;
}

static bool
parse_u64(const char *s, uint64_t *v)
{
	char *end;

	if (s == NULL || *s < '0' || *s > '9') {
		return false;
	}
	errno = 0;
	unsigned long long n = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0') {
		return false;
	}
	*v = n;
	return true;
}

static bool
parse_seconds(const char *s, double *sec, qp_duration *ms)
{
	char *end;

	if (s == NULL || *s == '\0') {
		return false;
	}
	errno = 0;
	double d = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !isfinite(d) || d < 0 || d > 1e9) {
		return false;
	}
	*sec = d;
	*ms = (qp_duration) ceil(d * 1000.0);
	return true;
}

/* The value of an option: "--opt=V" or the next argument. */
static const char *
opt_value(int argc, char **argv, int *i, const char *arg, size_t namelen)
{
	if (arg[namelen] == '=') {
		return arg + namelen + 1;
	}
	if (*i + 1 < argc) {
		return argv[++*i];
	}
	return NULL;
}

static bool
opt_is(const char *arg, const char *name)
{
	size_t n = strlen(name);
	return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

/* Fills o->conn from the token and TLS options; the token file must
 * hold a token on its first line. */
static int
conn_setup(cli_opts *o)
{
	memset(&o->conn, 0, sizeof(o->conn));
	o->conn.token_file = o->token_file;
	o->conn.tls_ca = o->tls_ca;
	o->conn.tls_insecure_skip_verify = o->insecure;
	o->conn_set = true;
	if (o->token_file != NULL) {
		FILE *f = fopen(o->token_file, "r");
		char line[1100];
		if (f == NULL) {
			fprintf(stderr, "qpipe: %s: --token-file %s: %s\n",
			    o->cmd, o->token_file, strerror(errno));
			return CLI_USAGE;
		}
		if (fgets(line, sizeof(line), f) == NULL) {
			line[0] = '\0';
		}
		fclose(f);
		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0') {
			fprintf(stderr,
			    "qpipe: %s: --token-file %s: no token on its "
			    "first "
			    "line\n",
			    o->cmd, o->token_file);
			return CLI_USAGE;
		}
	}
	return CLI_OK;
}

const qp_conn_opts *
cli_conn(const cli_opts *o)
{
	return o->conn_set ? &o->conn : NULL;
}

void
cli_print_stats(FILE *f, const char *name, const qp_queue_stats *st)
{
	fputc('{', f);
	if (name != NULL) {
		/* Names are [A-Za-z0-9._-]: nothing to escape. */
		fprintf(f, "\"name\": \"%s\", ", name);
	}
	fprintf(f,
	    "\"items\": %llu, \"bytes\": %llu, \"maxsize\": %llu, "
	    "\"capacity\": %llu, \"leased\": %llu, \"unfinished\": %llu, "
	    "\"getters\": %llu, \"putters\": %llu, \"puts\": %llu, "
	    "\"gets\": %llu, \"oldest_age_ms\": %lld}",
	    (unsigned long long) st->items, (unsigned long long) st->bytes,
	    (unsigned long long) st->maxsize,
	    (unsigned long long) st->capacity, (unsigned long long) st->leased,
	    (unsigned long long) st->unfinished,
	    (unsigned long long) st->getters, (unsigned long long) st->putters,
	    (unsigned long long) st->puts, (unsigned long long) st->gets,
	    (long long) st->oldest_age_ms);
}

static int
parse_args(const cli_cmd *c, int argc, char **argv, cli_opts *o)
{
	static char *empty[] = {NULL};
	bool nowait = false;

	o->args = calloc((size_t) argc + 1, sizeof(char *));
	if (o->args == NULL) {
		fprintf(stderr, "qpipe: out of memory\n");
		return CLI_ERROR;
	}
	o->cmdv = empty;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		const char *v;

		if (strcmp(a, "--") == 0) {
			if (c->opts & OPT_WORKER) {
				o->cmdv = argv + i + 1;
			} else {
				for (i++; i < argc; i++) {
					o->args[o->nargs++] = argv[i];
				}
			}
			break;
		}
		if (a[0] != '-' || a[1] == '\0') {
			/* a worker's later task queues name their
			 * scheme; a bare word there is the command. */
			if ((c->opts & OPT_WORKER) && o->nargs >= 1
			    && strstr(a, "://") == NULL) {
				return cli_worker_without_dashes(
				    o, argc, argv, i);
			}
			o->args[o->nargs++] = argv[i];
			continue;
		}
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage_cmd(stdout, c);
			exit(0);
		}
		if ((c->opts & OPT_TIMEOUT) && opt_is(a, "--timeout")) {
			v = opt_value(argc, argv, &i, a, 9);
			if (!parse_seconds(v, &o->timeout_sec, &o->timeout)) {
				return cli_usage_error(o,
				    "--timeout wants seconds >= 0, not '%s'",
				    v != NULL ? v : "");
			}
			o->timeout_set = true;
		} else if ((c->opts & OPT_TIMEOUT)
		    && strcmp(a, "--nowait") == 0) {
			nowait = true;
		} else if ((c->opts & OPT_JSON) && strcmp(a, "--json") == 0) {
			o->json = true;
		} else if ((c->opts & OPT_LINES)
		    && strcmp(a, "--lines") == 0) {
			o->lines = true;
		} else if ((c->opts & OPT_KEY) && opt_is(a, "--key")) {
			/* place by key */
			o->key = opt_value(argc, argv, &i, a, 5);
			if (o->key == NULL) {
				return cli_usage_error(o, "--key wants a key");
			}

		} else if ((c->opts & OPT_COUNT)
		    && (strcmp(a, "-n") == 0 || opt_is(a, "--count"))) {
			v = a[1] == 'n' ? (i + 1 < argc ? argv[++i] : NULL)
			                : opt_value(argc, argv, &i, a, 7);
			if (!parse_u64(v, &o->count) || o->count == 0) {
				return cli_usage_error(o,
				    "-n wants a count >= 1, not '%s'",
				    v != NULL ? v : "");
			}
		} else if ((c->opts & OPT_CREATE) && opt_is(a, "--maxsize")) {
			v = opt_value(argc, argv, &i, a, 9);
			if (!parse_u64(v, &o->maxsize)) {
				return cli_usage_error(o,
				    "--maxsize wants a count, not '%s'",
				    v != NULL ? v : "");
			}
		} else if ((c->opts & OPT_CREATE)
		    && strcmp(a, "--durable") == 0) {
			o->durable = true;
		} else if ((c->opts & OPT_CREATE) && opt_is(a, "--fsync")) {
			if ((o->fsync = opt_value(argc, argv, &i, a, 7))
			    == NULL) {
				return cli_usage_error(o,
				    "--fsync wants always, never or "
				    "interval:MS");
			}
		} else if ((c->opts & OPT_CREATE) && opt_is(a, "--capacity")) {
			v = opt_value(argc, argv, &i, a, 10);
			if (!parse_u64(v, &o->capacity)) {
				return cli_usage_error(o,
				    "--capacity wants bytes, not '%s'",
				    v != NULL ? v : "");
			}
		} else if ((c->opts & OPT_WORKER) && opt_is(a, "--results")) {
			if ((o->results = opt_value(argc, argv, &i, a, 9))
			    == NULL) {
				return cli_usage_error(
				    o, "--results wants an address");
			}
		} else if ((c->opts & OPT_WORKER)
		    && (opt_is(a, "--concurrency") || opt_is(a, "-j"))) {
			v = a[1] == 'j' ? (i + 1 < argc ? argv[++i] : NULL)
			                : opt_value(argc, argv, &i, a, 13);
			if (!parse_u64(v, &o->concurrency)
			    || o->concurrency == 0 || o->concurrency > 1024) {
				return cli_usage_error(o,
				    "--concurrency wants 1 to 1024, not '%s'",
				    v != NULL ? v : "");
			}
		} else if ((c->opts & OPT_WORKER)
		    && opt_is(a, "--max-attempts")) {
			v = opt_value(argc, argv, &i, a, 14);
			if (!parse_u64(v, &o->max_attempts)
			    || o->max_attempts == 0) {
				return cli_usage_error(o,
				    "--max-attempts wants a count >= 1, not "
				    "'%s'",
				    v != NULL ? v : "");
			}
		} else if ((c->opts & OPT_WORKER)
		    && opt_is(a, "--max-tasks")) {
			v = opt_value(argc, argv, &i, a, 11);
			if (!parse_u64(v, &o->max_tasks)
			    || o->max_tasks == 0) {
				return cli_usage_error(o,
				    "--max-tasks wants a count >= 1, not '%s'",
				    v != NULL ? v : "");
			}
		} else if ((c->opts & OPT_WORKER)
		    && opt_is(a, "--idle-exit")) {
			v = opt_value(argc, argv, &i, a, 11);
			if (!parse_seconds(
			        v, &o->idle_exit_sec, &o->idle_exit)) {
				return cli_usage_error(o,
				    "--idle-exit wants seconds >= 0, not '%s'",
				    v != NULL ? v : "");
			}
		} else if ((c->opts & OPT_WORKER) && opt_is(a, "--timeout")) {
			v = opt_value(argc, argv, &i, a, 9);
			if (!parse_seconds(v, &o->timeout_sec, &o->timeout)
			    || o->timeout == 0) {
				return cli_usage_error(o,
				    "--timeout wants seconds > 0, not '%s'",
				    v != NULL ? v : "");
			}
			o->timeout_set = true;
		} else if ((c->opts & OPT_WORKER) && opt_is(a, "--lease")) {
			double sec;
			qp_duration ms;
			v = opt_value(argc, argv, &i, a, 7);
			if (!parse_seconds(v, &sec, &ms) || ms == 0) {
				return cli_usage_error(o,
				    "--lease wants seconds > 0, not '%s'",
				    v != NULL ? v : "");
			}
			o->lease_ms = (uint64_t) ms;
		} else if ((c->opts & OPT_WORKER)
		    && strcmp(a, "--keep-newline") == 0) {
			o->keep_newline = true;
		} else if ((c->opts & OPT_SIDE) && opt_is(a, "--side")) {
			v = opt_value(argc, argv, &i, a, 6);
			if (v == NULL
			    || (strcmp(v, "0") != 0 && strcmp(v, "1") != 0)) {
				return cli_usage_error(o,
				    "--side wants 0 or 1, not '%s'",
				    v != NULL ? v : "");
			}
			o->side = v[0] - '0';
		} else if (opt_is(a, "--token-file")) {
			if ((o->token_file = opt_value(argc, argv, &i, a, 12))
			    == NULL) {
				return cli_usage_error(
				    o, "--token-file wants a file");
			}
		} else if (opt_is(a, "--tls-ca")) {
			if ((o->tls_ca = opt_value(argc, argv, &i, a, 8))
			    == NULL) {
				return cli_usage_error(
				    o, "--tls-ca wants a file");
			}
		} else if (strcmp(a, "--insecure-skip-verify") == 0) {
			o->insecure = true;
		} else if (strcmp(a, "--any-owner") == 0) {
			o->any_owner = true;
		} else {
			return cli_usage_error(o, "unknown option '%s'", a);
		}
	}
	if (o->token_file != NULL || o->tls_ca != NULL || o->insecure) {
		int rv = conn_setup(o);
		if (rv != CLI_OK) {
			return rv;
		}
	}
	if (nowait && o->timeout_set) {
		return cli_usage_error(o,
		    "--timeout and --nowait exclude each "
		    "other");
	}
	if (nowait) {
		o->timeout = QP_NOWAIT;
		o->timeout_set = true;
		o->timeout_sec = 0;
	}
	if (o->timeout > 0) {
		/* The first connection counts against --timeout too: a peer
		 * that never answers the handshake must not hold it up. */
		if (!o->conn_set) {
			memset(&o->conn, 0, sizeof(o->conn));
			o->conn_set = true;
		}
		o->conn.connect_timeout = o->timeout;
	}
	if (o->nargs < c->min_args) {
		return cli_usage_error(o, "missing ADDR");
	}
	if (c->max_args >= 0 && o->nargs > c->max_args) {
		return cli_usage_error(
		    o, "unexpected argument '%s'", o->args[c->max_args]);
	}
	return CLI_OK;
}

/* True for the options every remote command takes, which may also come
 * before the command; *takes_value when a value follows. */
static bool
global_option(const char *a, bool *takes_value)
{
	*takes_value = opt_is(a, "--token-file") || opt_is(a, "--tls-ca");
	return *takes_value || strcmp(a, "--insecure-skip-verify") == 0
	    || strcmp(a, "--any-owner") == 0;
}

/* Moves the remote options given before the command after it, where
 * parse_args takes them: argv becomes "qpipe CMD OPTS... ARGS...".
 * Returns the new argc, or -1 after a usage error (printed). *freep is
 * what to free. */
static int
hoist_global_options(int argc, char **argv, char ***argvp, char ***freep)
{
	int k = 1;
	bool takes_value;

	*argvp = argv;
	*freep = NULL;
	while (k < argc && global_option(argv[k], &takes_value)) {
		if (takes_value && strchr(argv[k], '=') == NULL) {
			if (k + 1 >= argc) {
				fprintf(stderr,
				    "qpipe: %s wants a file (try qpipe "
				    "--help)\n",
				    argv[k]);
				return -1;
			}
			k++;
		}
		k++;
	}
	if (k == 1) {
		return argc;
	}
	if (k >= argc) {
		fprintf(stderr,
		    "qpipe: missing COMMAND after %s (try qpipe --help)\n",
		    argv[k - 1]);
		return -1;
	}
	char **nv = calloc((size_t) argc + 1, sizeof(char *));
	if (nv == NULL) {
		fprintf(stderr, "qpipe: out of memory\n");
		return -1;
	}
	int n = 0;
	nv[n++] = argv[0];
	nv[n++] = argv[k];
	for (int i = 1; i < k; i++) {
		nv[n++] = argv[i];
	}
	for (int i = k + 1; i < argc; i++) {
		nv[n++] = argv[i];
	}
	*argvp = nv;
	*freep = nv;
	return n;
}

/* Runs the command line (the remote options already after the
 * command). */
static int
run(int argc, char **argv)
{
	cli_opts o = {0};

	if (argc < 2) {
		usage_all(stderr);
		return CLI_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0
	    || strcmp(argv[1], "help") == 0) {
		if (argc > 2) {
			for (size_t i = 0; i < NCOMMANDS; i++) {
				if (strcmp(argv[2], commands[i].name) == 0) {
					usage_cmd(stdout, &commands[i]);
					return CLI_OK;
				}
			}
		}
		usage_all(stdout);
		return CLI_OK;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("qpipe %s\n", qp_version());
		return CLI_OK;
	}
	for (size_t i = 0; i < NCOMMANDS; i++) {
		const cli_cmd *c = &commands[i];
		if (strcmp(argv[1], c->name) != 0) {
			continue;
		}
		o.cmd = c->name;
		o.timeout = QP_FOREVER;
		o.idle_exit = QP_FOREVER;
		o.side = -1;
		int rv = parse_args(c, argc - 2, argv + 2, &o);
		if (rv == CLI_OK) {
			rv = c->run(&o);
		}
		free(o.args);
		if (fflush(stdout) != 0 && rv == CLI_OK) {
			fprintf(stderr, "qpipe: %s: writing output: %s\n",
			    o.cmd, strerror(errno));
			rv = CLI_ERROR;
		}
		return rv;
	}
	const char *names[NCOMMANDS];
	for (size_t i = 0; i < NCOMMANDS; i++) {
		names[i] = commands[i].name;
	}
	return cli_unknown_command(argv[1], names, NCOMMANDS);
}

int
main(int argc, char **argv)
{
	char **nargv, **hoisted = NULL;
	int nargc = argc, rv;

	nargv = argv;
	if (argc >= 2 && argv[1][0] == '-'
	    && (nargc = hoist_global_options(argc, argv, &nargv, &hoisted))
	        < 0) {
		return CLI_USAGE;
	}
	rv = run(nargc, nargv);
	free(hoisted);
	return rv;
}
