/*
 * clients.h - the loops of a queue benchmark whose clients are blocking
 * connections to a server, one per process: bench_remote (qpiped) and
 * bench_redis (Redis) share them, so that both sides are measured with the
 * same loops, clock, checks, percentiles and JSON lines, and differ only
 * in the calls behind cl_ops. Compiled into both drivers (clients.c).
 */
#ifndef QP_BENCH_CLIENTS_H
#define QP_BENCH_CLIENTS_H

#include "bench.h"

#define CL_WARMUP    200 /* untimed round trips before rtt's */
#define CL_MAX_PROCS 128 /* mp: producers + consumers */
#define CL_MAX_BATCH 4096 /* items per request */

/* The options every such driver takes (its own, e.g. where the server
 * is, stay in the driver). */
typedef struct cl_opts {
	const char *mode; /* one, batch, rtt or mp */
	uint64_t size; /* bytes per item */
	uint64_t count; /* items (per producer in mp) or round trips */
	uint64_t batch; /* items per request */
	uint64_t producers;
	uint64_t consumers;
	double seconds; /* rtt: at most this long */
	double timeout; /* each process's time limit */
} cl_opts;

/* One client: a connection to the server and its queue (or list). Each
 * call fills msg with what went wrong when it fails. */
typedef struct cl_ops {
	const char *prog; /* prefix of messages on stderr */
	const char *impl; /* JSON impl: impl, impl-batch, impl-mp */
	const char *noun; /* "queue" or "list": the mp check's message */
	const char *puts; /* "puts" or "pushes": the same */
	uint64_t prefill_batch; /* items per request of an mp prefill */
	/* Connects; NULL when it cannot. */
	void *(*open)(const cl_opts *o, char *msg, size_t len);
	/* Makes the queue empty before a run (optional). */
	void (*reset)(void *c);
	/* Closes, deleting the queue (drop) or not (close). */
	void (*drop)(void *c);
	void (*close)(void *c);
	/* Puts the n items of size bytes at buf, one request; many: a
	 * batch request even for n == 1. 0, or -1. */
	int (*put)(void *c, const uint8_t *buf, size_t size, uint64_t n,
	    bool many, char *msg, size_t len);
	/* Gets up to max items (many: a batch request; wait_ms < 0:
	 * forever) into *items and *lens, which hold them until release.
	 * Returns how many (0: the queue is empty), or -1. An item that is
	 * not a string is NULL. */
	long (*get)(void *c, uint64_t max, bool many, int wait_ms,
	    const uint8_t *const **items, const size_t **lens, char *msg,
	    size_t len);
	void (*release)(void *c);
	/* Items in the queue, -1 if unknown. */
	long long (*left)(void *c);
} cl_ops;

/*
 * Parses the command line: the driver's own options (table own, ended by
 * a NULL name) and the shared ones (--mode, --size, --count, --batch,
 * --producers, --consumers, --seconds, --timeout) into *o, and checks
 * that --mode names a mode. 0, or 1 after saying what was wrong (usage).
 */
int cl_parse(int argc, char **argv, const char *prog, cl_opts *o,
    const bench_opt *own, void (*usage)(FILE *));

/* Runs o->mode against ops; prints one JSON line; returns the exit
 * status (0, or 1 after a {"error"} line). */
int cl_run(const cl_opts *o, const cl_ops *ops);

#endif /* QP_BENCH_CLIENTS_H */
