/*
 * cli.h - shared pieces of the qpipe command-line client: option parsing,
 * exit codes, error lines, stdin reading and progress on a terminal.
 */
#ifndef QP_CLI_H
#define QP_CLI_H

#include "qpipe.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes: the design's table. */
enum {
	CLI_OK = 0,
	CLI_USAGE = 1,
	CLI_ERROR = 2, /* connection, server, protocol, auth */
	CLI_EMPTY = 3,
	CLI_FULL = 4,
	CLI_TOOBIG = 5,
	CLI_CLOSED = 6,
};

/* Options common to the commands; each command uses what it needs. */
typedef struct cli_opts {
	const char *cmd;
	qp_duration timeout; /* QP_FOREVER unless --timeout / --nowait */
	double timeout_sec;
	bool timeout_set;
	bool json;
	bool lines;
	uint64_t count; /* -n */
	uint64_t maxsize;
	uint64_t capacity;
	bool durable; /* create: a durable queue (through qpiped) */
	const char *fsync; /* create: its fsync policy, NULL = the server's */
	const char *results;
	uint64_t concurrency; /* worker: tasks at once; 0 = 1 */
	uint64_t max_attempts; /* worker: 0 = 3 */
	uint64_t max_tasks; /* worker: 0 = no limit */
	qp_duration idle_exit; /* worker: QP_FOREVER unless --idle-exit */
	double idle_exit_sec;
	uint64_t lease_ms; /* worker: 0 = the server's */
	bool keep_newline; /* worker: results byte for byte */
	int side; /* send, recv: the pipe's side, -1 = the free one */
	/* Token and TLS settings for remote addresses. */
	const char *token_file;
	const char *tls_ca;
	bool insecure;
	bool conn_set; /* one of them was given: conn is filled */
	qp_conn_opts conn;
	char **args; /* positional arguments */
	int nargs;
	char **cmdv; /* worker: the command after "--" */
	const char *key; /* put --key: placed by key */
	bool any_owner; /* --any-owner: open segments other users own */
} cli_opts;

/* The open flags every command adds for o (QP_OPEN_ANY_OWNER). */
uint32_t cli_open_flags(const cli_opts *o);

/* The exit code for a qpipe error code. */
int cli_exit_code(int err);

/* Prints "qpipe: CMD ADDR: cause" to stderr and returns the exit code. */
int cli_fail(const cli_opts *o, const char *addr, int err);

/* Prints a usage error ("qpipe: put: ...") and returns CLI_USAGE. */
int cli_usage_error(const cli_opts *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Reads all of f into a malloc'd buffer, at most max bytes: QP_OK,
 * QP_ETOOBIG (more than max), QP_ENOMEM or QP_ESYSTEM. */
int cli_read_all(FILE *f, size_t max, char **bufp, size_t *lenp);

/* Writes len bytes to stdout exactly; false on a write error. */
bool cli_write(const void *buf, size_t len);

/* Progress on stderr, only when stderr is a terminal. */
typedef struct cli_progress {
	bool tty;
	int64_t start_ms;
	int64_t last_ms;
	uint64_t n;
	const char *what;
} cli_progress;

void cli_progress_start(cli_progress *p, const char *what);
void cli_progress_tick(cli_progress *p);
void cli_progress_end(cli_progress *p);

/* Opens the queue for a command, creating it when create is set. */
int cli_open_queue(
    const cli_opts *o, const char *addr, bool create, qp_queue **qp);

/* suggest.c: true when addr reads as HOST:PORT[/NAME], a server's
 * address without its scheme. */
bool cli_lacks_scheme(const char *addr);

/* suggest.c: the command word name is not one of names (n of them):
 * says which one was meant, if any is near. Returns CLI_USAGE. */
int cli_unknown_command(const char *name, const char *const *names, size_t n);

/* suggest.c: qpipe worker ADDR --results R CMD...: the command came without
 * "--" before it (argv[at]). Prints the line that works; CLI_USAGE. */
int cli_worker_without_dashes(
    const cli_opts *o, int argc, char **argv, int at);

/* The qp_conn_opts to pass for o (NULL: the library's defaults). */
const qp_conn_opts *cli_conn(const cli_opts *o);

/* Prints one queue's figures as a JSON object (with "name" first when
 * name is not NULL), no newline. */
void cli_print_stats(FILE *f, const char *name, const qp_queue_stats *st);

/* The commands. */
int cmd_put(cli_opts *o);
int cmd_get(cli_opts *o);
int cmd_size(cli_opts *o);
int cmd_stat(cli_opts *o);
int cmd_create(cli_opts *o);
int cmd_rm(cli_opts *o);
int cmd_ls(cli_opts *o);
int cmd_ping(cli_opts *o);
int cmd_send(cli_opts *o);
int cmd_recv(cli_opts *o);
int cmd_worker(cli_opts *o);
/* top.c: qpiped's status (its --metrics listener) every second. */
int cmd_top(cli_opts *o);

/* cmd_part.c: addresses of several servers. */
bool cli_parted(const char *addr);
int cmd_stat_parts(cli_opts *o);
int cmd_ls_parts(cli_opts *o);
int cmd_pick(cli_opts *o);

#endif /* QP_CLI_H */
