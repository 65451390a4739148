/*
 * bench.h - small helpers shared by the benchmark programs: the monotonic
 * clock, process-shared futexes, shared anonymous memory, the start gate
 * that releases fork()ed workers together, the command line (one option
 * table per driver), number parsing, percentiles and the one-line JSON
 * results that bench/run reads. Header-only (static inline), no state, no
 * locking.
 */
#ifndef QP_BENCH_H
#define QP_BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* cpu_set_t, sched_setaffinity */
#endif

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/*
 * CPU placement, set by bench/run: QPIPE_BENCH_CPUS="A,B" puts the serving
 * side of a benchmark that forks its own peer (an echo child, a receiver, a
 * listener) on CPU A, and the driving side on CPU B; "A" alone puts both
 * on A. bench_pin(0) pins the calling process to the serving side's CPU,
 * bench_pin(1) to the driving side's. Unset or unreadable: no pinning.
 * Returns 0, or -1 if the kernel refused.
 */
static inline int
bench_pin(int role)
{
	const char *env = getenv("QPIPE_BENCH_CPUS");
	char *end;
	long a, b;
	cpu_set_t set;

	if (env == NULL || *env == '\0') {
		return 0;
	}
	a = strtol(env, &end, 10);
	b = *end == ',' ? strtol(end + 1, NULL, 10) : a;
	if (a < 0 || b < 0 || a >= CPU_SETSIZE || b >= CPU_SETSIZE) {
		return 0;
	}
	CPU_ZERO(&set);
	CPU_SET((int) (role == 0 ? a : b), &set);
	return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -1;
}

/* Exit status of a benchmark whose qpipe side is not in this build. */
#define BENCH_UNAVAILABLE 3

static inline uint64_t
bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static inline void
bench_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Sleeps while *word == expected (process-shared: no FUTEX_PRIVATE). */
static inline void
bench_futex_wait(_Atomic uint32_t *word, uint32_t expected)
{
	syscall(
	    SYS_futex, (uint32_t *) word, FUTEX_WAIT, expected, NULL, NULL, 0);
}

static inline void
bench_futex_wake(_Atomic uint32_t *word, int n)
{
	syscall(SYS_futex, (uint32_t *) word, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* Zeroed memory shared with the children fork()ed after this call. */
static inline void *
bench_shared_alloc(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static inline void
bench_atomic_min(_Atomic uint64_t *v, uint64_t x)
{
	uint64_t cur = atomic_load(v);

	while (x < cur && !atomic_compare_exchange_weak(v, &cur, x)) {
	}
}

static inline void
bench_atomic_max(_Atomic uint64_t *v, uint64_t x)
{
	uint64_t cur = atomic_load(v);

	while (x > cur && !atomic_compare_exchange_weak(v, &cur, x)) {
	}
}

/*
 * The start gate: workers block in bench_gate_wait() until the parent calls
 * bench_gate_open(), so that all of them start at once. A pipe: every
 * worker's read() returns 0 when the last write end closes.
 */
typedef struct bench_gate {
	int fd[2];
} bench_gate;

static inline int
bench_gate_init(bench_gate *g)
{
	return pipe(g->fd);
}

/* In a worker: drops the write end and waits for the parent to open. */
static inline void
bench_gate_wait(bench_gate *g)
{
	char c;

	close(g->fd[1]);
	while (read(g->fd[0], &c, 1) < 0 && errno == EINTR) {
	}
	close(g->fd[0]);
}

static inline void
bench_gate_open(bench_gate *g)
{
	close(g->fd[0]);
	close(g->fd[1]);
}

/*
 * Marks a message of len (>= 8) bytes with stamp at its start, and copies
 * of it at its middle and end, so that a receiver notices a copy that is
 * truncated, torn or stale (left over from the previous message).
 */
static inline void
bench_stamp(uint8_t *buf, size_t len, uint64_t stamp)
{
	uint64_t mid = stamp ^ UINT64_C(0x5a5a5a5a5a5a5a5a), tail = ~stamp;

	memcpy(buf, &stamp, 8);
	if (len >= 24) {
		memcpy(buf + (len / 2 & ~(size_t) 7), &mid, 8);
	}
	if (len >= 16) {
		memcpy(buf + len - 8, &tail, 8);
	}
}

/* Reads a message's stamp into *stamp; returns 0 if its three copies
 * agree, -1 if not. */
static inline int
bench_stamp_check(const uint8_t *buf, size_t len, uint64_t *stamp)
{
	uint64_t head, mid, tail;

	memcpy(&head, buf, 8);
	*stamp = head;
	if (len >= 24) {
		memcpy(&mid, buf + (len / 2 & ~(size_t) 7), 8);
		if (mid != (head ^ UINT64_C(0x5a5a5a5a5a5a5a5a))) {
			return -1;
		}
	}
	if (len >= 16) {
		memcpy(&tail, buf + len - 8, 8);
		if (tail != ~head) {
			return -1;
		}
	}
	return 0;
}

/* Parses a non-negative integer with an optional K/M/G (binary) suffix. */
static inline int
bench_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || s[0] == '-') {
		return -1;
	}
	switch (*end) {
	case 'K':
	case 'k':
		v <<= 10;
		end++;
		break;
	case 'M':
	case 'm':
		v <<= 20;
		end++;
		break;
	case 'G':
	case 'g':
		v <<= 30;
		end++;
		break;
	default:
		break;
	}
	if (*end != '\0') {
		return -1;
	}
	*out = v;
	return 0;
}

static inline int
bench_parse_seconds(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !(v > 0) || v > 3600) {
		return -1;
	}
	*out = v;
	return 0;
}

/* One option of a driver's command line: --NAME and what it sets. */
typedef struct bench_opt {
	const char *name; /* without the dashes; NULL ends a table */
	char kind; /* 's' a string, 'n' a number (bench_parse_size),
	              'S' seconds (bench_parse_seconds), 'f' a flag */
	void *dst; /* const char **, uint64_t *, double *, bool * */
} bench_opt;

/*
 * Parses argv against opts and --help (which prints usage to stdout and
 * exits 0). Returns 0, or 1 after saying on stderr what was wrong: "PROG:
 * bad number 'V'" or "PROG: bad seconds 'V'", else the usage (an unknown
 * option, a missing value or a stray argument).
 */
static inline int
bench_parse_opts(int argc, char **argv, const char *prog,
    const bench_opt *opts, void (*usage)(FILE *))
{
	struct option lo[32];
	int n = 0, ch, idx = 0;

	for (; opts[n].name != NULL && n < 30; n++) {
		lo[n] = (struct option) {opts[n].name,
		    opts[n].kind == 'f' ? no_argument : required_argument,
		    NULL, 0};
	}
	lo[n] = (struct option) {"help", no_argument, NULL, 'h'};
	lo[n + 1] = (struct option) {NULL, 0, NULL, 0};
	while ((ch = getopt_long(argc, argv, "", lo, &idx)) != -1) {
		const bench_opt *b = &opts[idx];

		if (ch == 'h') {
			usage(stdout);
			exit(0);
		}
		if (ch != 0) {
			usage(stderr);
			return 1;
		}
		if (b->kind == 's') {
			*(const char **) b->dst = optarg;
		} else if (b->kind == 'f') {
			*(bool *) b->dst = true;
		} else if (b->kind == 'n'
		    && bench_parse_size(optarg, b->dst) != 0) {
			fprintf(stderr, "%s: bad number '%s'\n", prog, optarg);
			return 1;
		} else if (b->kind == 'S'
		    && bench_parse_seconds(optarg, b->dst) != 0) {
			fprintf(
			    stderr, "%s: bad seconds '%s'\n", prog, optarg);
			return 1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 1;
	}
	return 0;
}

/* Seconds from a to b (CLOCK_MONOTONIC ns), at least 1 ns. */
static inline double
bench_secs(uint64_t a, uint64_t b)
{
	double s = (double) (b - a) / 1e9;

	return s > 0 ? s : 1e-9;
}

static inline int
bench_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

	return x < y ? -1 : x > y;
}

/* The p-th percentile (0..100) of n sorted samples, nearest rank. */
static inline uint64_t
bench_percentile(const uint64_t *sorted, size_t n, double p)
{
	size_t rank;

	if (n == 0) {
		return 0;
	}
	rank = (size_t) (p / 100.0 * (double) n + 0.999999);
	if (rank < 1) {
		rank = 1;
	}
	if (rank > n) {
		rank = n;
	}
	return sorted[rank - 1];
}

static inline void
bench_sort_u64(uint64_t *v, size_t n)
{
	qsort(v, n, sizeof(*v), bench_cmp_u64);
}

/* Prints the result line of n (> 0) timed round trips (ns, sorted here)
 * taken in secs: p50, p99, mean, min and max. */
static inline void
bench_print_pingpong(
    const char *impl, uint64_t size, uint64_t *rtt, uint64_t n, double secs)
{
	double sum = 0;

	bench_sort_u64(rtt, (size_t) n);
	for (uint64_t i = 0; i < n; i++) {
		sum += (double) rtt[i];
	}
	printf("{\"impl\": \"%s\", \"mode\": \"pingpong\", \"size\": %" PRIu64
	       ", \"round_trips\": %" PRIu64
	       ", \"seconds\": %.6f, \"round_trips_per_s\": %.1f, "
	       "\"p50_us\": %.3f, \"p99_us\": %.3f, \"mean_us\": %.3f, "
	       "\"min_us\": %.3f, \"max_us\": %.3f}\n",
	    impl, size, n, secs, (double) n / secs,
	    (double) bench_percentile(rtt, (size_t) n, 50) / 1e3,
	    (double) bench_percentile(rtt, (size_t) n, 99) / 1e3,
	    sum / (double) n / 1e3, (double) rtt[0] / 1e3,
	    (double) rtt[n - 1] / 1e3);
}

/* Prints {"impl": impl, "error": msg} as the result line; returns 1. */
static inline int bench_fail(const char *impl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static inline int
bench_fail(const char *impl, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (char *p = msg; *p != '\0'; p++) {
		if (*p == '"' || *p == '\\' || (unsigned char) *p < 0x20) {
			*p = '\'';
		}
	}
	printf("{\"impl\": \"%s\", \"error\": \"%s\"}\n", impl, msg);
	fflush(stdout);
	return 1;
}

/* Prints {"impl": impl, "unavailable": msg}; returns BENCH_UNAVAILABLE. */
static inline int
bench_unavailable(const char *impl, const char *msg)
{
	printf("{\"impl\": \"%s\", \"unavailable\": \"%s\"}\n", impl, msg);
	fflush(stdout);
	return BENCH_UNAVAILABLE;
}

/*
 * Waits for the n children in pids, in any order. Returns 0 when all
 * exited 0. On the first failure it describes it in msg and kills the
 * children still running (by PID), so that a failed run ends at once
 * instead of at the workers' time limit. A child killed by SIGALRM ran past
 * its limit (each worker arms alarm() before it starts).
 */
static inline int
bench_reap(const pid_t *pids, int n, char *msg, size_t len)
{
	int bad = 0, left = n;
	int done[256] = {0};

	if (n > 256) {
		return -1;
	}
	while (left > 0) {
		int st, i;
		pid_t pid = waitpid(-1, &st, 0);

		if (pid < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (!bad) {
				snprintf(
				    msg, len, "waitpid: %s", strerror(errno));
			}
			return 1;
		}
		for (i = 0; i < n && pids[i] != pid; i++) {
		}
		if (i == n) {
			continue;
		}
		done[i] = 1;
		left--;
		if (st == 0 || bad) {
			continue;
		}
		bad = 1;
		if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) {
			snprintf(
			    msg, len, "worker %d ran past its time limit", i);
		} else if (WIFSIGNALED(st)) {
			snprintf(msg, len, "worker %d killed by signal %d", i,
			    WTERMSIG(st));
		} else {
			snprintf(msg, len, "worker %d exited with status %d",
			    i, WEXITSTATUS(st));
		}
		for (int j = 0; j < n; j++) {
			if (!done[j]) {
				kill(pids[j], SIGKILL);
			}
		}
	}
	return bad;
}

#endif /* QP_BENCH_H */
