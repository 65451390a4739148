/*
 * bench_crash.c - the long crash run of qpipe's shared-memory queue, from
 * the outside (public API only). Each run: an anonymous queue, small enough
 * that puts block (maxsize and capacity); 2 producers put items of random
 * sizes (16 B-8 KiB, checksummed), 2 consumers get them; at a random moment
 * one of the four is killed with SIGKILL. Then:
 *
 *   - the survivors go on: from the kill until their work is done, no
 *     gap between two completed puts or gets (or the kill and the first
 *     one) is longer than 100 ms;
 *   - every item whose put returned OK is got exactly once, except at most
 *     the one a killed consumer had taken but not yet recorded;
 *   - no item is got twice, none is damaged, and an item whose put never
 *     returned (the killed producer's last) is got at most once;
 *   - the queue ends empty (qsize 0).
 *
 *   bench_crash [--runs N] [--items N] [--seed S] [--timeout SEC] [--stacks]
 *
 * --stacks: at a stall of 1.5 s, the driver's and the survivors' stacks
 * (gdb) go to stderr, to show where they sleep.
 *
 * Prints one JSON line (runs, kills, recovery times, violations) and exits
 * 1 on any violation; each violation is also told on stderr as it happens.
 * Locking: the queue's own; the bookkeeping block is written with atomics
 * only.
 */
#include "bench.h"

#include <inttypes.h>
#include <qpipe.h>
#include <stdbool.h>

#define PRODUCERS    2
#define CONSUMERS    2
#define WORKERS      (PRODUCERS + CONSUMERS)
#define MAX_ITEMS    20000
#define MAX_PAYLOAD  8192
#define HDR          16
#define RECOVERY_MAX 100000000ull /* ns: the survivors go on within this */
/* The workers' calls time out (and then go on) after these: a stall of
 * about 5 s means that a putter slept through its wake-up, 7 s a getter. */
#define PUT_TIMEOUT_MS 5000
#define GET_TIMEOUT_MS 7000

typedef struct cr_shared {
	_Atomic uint8_t put_ok[PRODUCERS][MAX_ITEMS];
	_Atomic uint8_t got[PRODUCERS][MAX_ITEMS];
	_Atomic uint64_t kill_ns; /* when the victim was killed; 0 before */
	_Atomic uint64_t last_op_ns; /* the last completed put or get */
	_Atomic uint64_t max_gap_ns; /* longest wait for progress after it */
	_Atomic uint64_t ops_after_kill;
	_Atomic uint32_t damaged;
	char msg[256];
} cr_shared;

/* After each completed put or get of an item: the gap since the previous
 * one (or since the kill) counts once the victim is dead. */
static void
note_op(cr_shared *sh)
{
	uint64_t now = bench_now_ns();
	uint64_t prev = atomic_exchange(&sh->last_op_ns, now);
	uint64_t k = atomic_load(&sh->kill_ns);

	if (k != 0 && now > k) {
		uint64_t from = prev > k ? prev : k;

		/* Another worker may have stamped a later time first. */
		if (now > from) {
			bench_atomic_max(&sh->max_gap_ns, now - from);
		}
		atomic_fetch_add(&sh->ops_after_kill, 1);
	}
}

static uint64_t
rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

static uint32_t
checksum(const uint8_t *p, size_t n)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < n; i++) {
		h = (h ^ p[i]) * 16777619u;
	}
	return h;
}

/* Item (p, seq): its length and bytes follow from p and seq alone. */
static size_t
make_item(uint8_t *buf, uint32_t p, uint32_t seq)
{
	uint64_t s = ((uint64_t) p << 32 | seq) * 0x9e3779b97f4a7c15ull + 1;
	uint32_t len = (uint32_t) (rng_next(&s) % (MAX_PAYLOAD - HDR)) + HDR;
	uint32_t sum;

	for (uint32_t i = HDR; i < len; i++) {
		buf[i] = (uint8_t) rng_next(&s);
	}
	sum = checksum(buf + HDR, len - HDR);
	memcpy(buf, &p, 4);
	memcpy(buf + 4, &seq, 4);
	memcpy(buf + 8, &len, 4);
	memcpy(buf + 12, &sum, 4);
	return len;
}

static int
producer(qp_queue *q, cr_shared *sh, uint32_t p, uint32_t items)
{
	uint8_t *buf = malloc(MAX_PAYLOAD);

	if (buf == NULL) {
		return 1;
	}
	for (uint32_t i = 0; i < items; i++) {
		size_t len = make_item(buf, p, i);
		int rc = qp_queue_put(q, buf, len, PUT_TIMEOUT_MS);

		if (rc != QP_OK) {
			snprintf(sh->msg, sizeof(sh->msg), "put: %s: %s",
			    qp_strerror(rc), qp_errmsg());
			return 1;
		}
		atomic_store(&sh->put_ok[p][i], 1);
		note_op(sh);
	}
	free(buf);
	return 0;
}

static int
consumer(qp_queue *q, cr_shared *sh)
{
	uint8_t *buf = malloc(MAX_PAYLOAD);
	size_t len;

	if (buf == NULL) {
		return 1;
	}
	for (;;) {
		uint32_t p, seq, hlen, sum;
		int rc = qp_queue_get_into(
		    q, buf, MAX_PAYLOAD, &len, GET_TIMEOUT_MS);

		if (rc != QP_OK) {
			snprintf(sh->msg, sizeof(sh->msg), "get: %s: %s",
			    qp_strerror(rc), qp_errmsg());
			return 1;
		}
		if (len == 0) {
			break;
		}
		note_op(sh);
		memcpy(&p, buf, 4);
		memcpy(&seq, buf + 4, 4);
		memcpy(&hlen, buf + 8, 4);
		memcpy(&sum, buf + 12, 4);
		if (len < HDR || p >= PRODUCERS || seq >= MAX_ITEMS
		    || hlen != len || checksum(buf + HDR, len - HDR) != sum) {
			atomic_fetch_add(&sh->damaged, 1);
			continue;
		}
		atomic_fetch_add(&sh->got[p][seq], 1);
	}
	free(buf);
	return 0;
}

/* The workers of the current run, for the watchdog. */
static pid_t cr_pids[WORKERS];

/* The driver's own watchdog: a queue that hangs the driver (a put of a
 * stop item that never returns) ends the whole run with a clear line. */
static char cr_wd_msg[256];
static size_t cr_wd_len;

static void
cr_watchdog(int sig)
{
	(void) sig;
	for (int i = 0; i < WORKERS; i++) {
		if (cr_pids[i] > 0) {
			kill(cr_pids[i], SIGKILL);
		}
	}
	if (write(STDOUT_FILENO, cr_wd_msg, cr_wd_len) < 0) {
		_exit(1);
	}
	_exit(1);
}

typedef struct cr_totals {
	uint64_t runs, killed_producers, killed_consumers, idle_at_kill;
	uint64_t violations, lost_in_window, unacked_delivered;
	uint64_t recovery_max_ns, recovery_sum_ns, recoveries;
	uint64_t *gaps; /* each run's longest gap after the kill, ns */
	char first[400];
} cr_totals;

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

	return x < y ? -1 : x > y;
}

/* The p-th percentile of the runs' longest gaps (sorted), nearest rank. */
static uint64_t
pct(const cr_totals *t, unsigned p)
{
	if (t->recoveries == 0) {
		return 0;
	}
	uint64_t k = (t->recoveries * p + 99) / 100;
	return t->gaps[k > 0 ? k - 1 : 0];
}

static void violation(cr_totals *t, uint64_t run, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
violation(cr_totals *t, uint64_t run, const char *fmt, ...)
{
	char msg[360];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Each one on stderr as it happens; the first also in the result. */
	fprintf(stderr, "bench_crash: run %" PRIu64 ": %s\n", run, msg);
	if (t->violations++ == 0) {
		snprintf(t->first, sizeof(t->first), "run %" PRIu64 ": %s",
		    run, msg);
	}
}

static void
sleep_ns(uint64_t ns)
{
	struct timespec ts
	    = {(time_t) (ns / 1000000000u), (long) (ns % 1000000000u)};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* Waits for pid; returns its wait status, or -1. */
static int
wait_one(pid_t pid)
{
	int st;

	while (waitpid(pid, &st, 0) < 0) {
		if (errno != EINTR) {
			return -1;
		}
	}
	return st;
}

/* --stacks: a process that, once the survivors have made no progress for
 * 1.5 s after the kill, prints the driver's and each survivor's stack
 * (gdb) on stderr, to show where a stall sleeps. Returns its pid. */
static bool cr_stacks;

/* One line from /proc/PID/NAME (state at once, before gdb is up). */
static void
show_proc(pid_t pid, const char *name)
{
	char path[64], line[256] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int) pid, name);
	if ((f = fopen(path, "r")) != NULL) {
		if (fgets(line, sizeof(line), f) == NULL) {
			line[0] = '\0';
		}
		fclose(f);
	}
	fprintf(stderr, "  %s: %s%s", name, line,
	    strchr(line, '\n') != NULL ? "" : "\n");
}

static void
show_stack(const char *who, pid_t pid)
{
	char cmd[160];

	fprintf(stderr, "--- %s (pid %d)\n", who, (int) pid);
	snprintf(cmd, sizeof(cmd), "gdb -p %d -batch -ex bt 1>&2 2>/dev/null",
	    (int) pid);
	if (system(cmd) != 0) {
		fprintf(stderr, "(gdb failed or is not installed)\n");
	}
}

static pid_t
stall_monitor(cr_shared *sh, uint64_t run, int victim)
{
	pid_t mon = fork();

	if (mon != 0) {
		return mon;
	}
	for (int k = 0; k < 200; k++) { /* 10 s at most */
		sleep_ns(50000000u);
		uint64_t last = atomic_load(&sh->last_op_ns);
		uint64_t kn = atomic_load(&sh->kill_ns);
		if (bench_now_ns() - (last > kn ? last : kn) > 1500000000ull) {
			fprintf(stderr,
			    "bench_crash: run %" PRIu64
			    ": no progress for 1.5 s after killing worker "
			    "%d; stacks:\n",
			    run, victim);
			for (int i = 0; i < WORKERS; i++) {
				if (i != victim) {
					fprintf(stderr,
					    "worker %d (pid %d):\n", i,
					    (int) cr_pids[i]);
					show_proc(cr_pids[i], "syscall");
					show_proc(cr_pids[i], "wchan");
					show_proc(cr_pids[i], "stat");
				}
			}
			fprintf(stderr, "driver (pid %d):\n", (int) getppid());
			show_proc(getppid(), "syscall");
			show_stack("driver", getppid());
			for (int i = 0; i < WORKERS; i++) {
				if (i != victim) {
					show_stack(i < PRODUCERS ? "producer"
					                         : "consumer",
					    cr_pids[i]);
				}
			}
			break;
		}
	}
	_exit(0);
}

static int
one_run(cr_shared *sh, uint64_t run, uint64_t seed, uint64_t *rng,
    uint32_t items, double timeout, cr_totals *t)
{
	qp_queue_opts qo;
	qp_queue *q;
	pid_t *pids = cr_pids;
	int victim, rc, st;
	uint64_t gap;
	bench_gate gate;
	uint8_t buf[MAX_PAYLOAD];
	size_t len, left = 0;

	memset(sh, 0, sizeof(*sh));
	memset(cr_pids, 0, sizeof(cr_pids));
	cr_wd_len = (size_t) snprintf(cr_wd_msg, sizeof(cr_wd_msg),
	    "{\"impl\": \"qpipe\", \"seed\": %" PRIu64
	    ", \"error\": \"run %" PRIu64 ": the driver hung in a queue "
	    "call after the kill (watchdog)\"}\n",
	    seed, run);
	alarm((unsigned) (2 * timeout) + 5);
	memset(&qo, 0, sizeof(qo));
	qo.maxsize = 64;
	qo.capacity = 256 * 1024;
	rc = qp_queue_anon(&q, &qo);
	if (rc != QP_OK) {
		return bench_fail("qpipe", "qp_queue_anon: %s: %s",
		    qp_strerror(rc), qp_errmsg());
	}
	if (bench_gate_init(&gate) != 0) {
		return bench_fail("qpipe", "pipe: %s", strerror(errno));
	}
	fflush(stdout);
	for (int i = 0; i < WORKERS; i++) {
		pids[i] = fork();
		if (pids[i] < 0) {
			return bench_fail(
			    "qpipe", "fork: %s", strerror(errno));
		}
		if (pids[i] == 0) {
			signal(SIGALRM, SIG_DFL);
			alarm((unsigned) timeout + 1);
			bench_gate_wait(&gate);
			_exit(i < PRODUCERS
			        ? producer(q, sh, (uint32_t) i, items)
			        : consumer(q, sh));
		}
	}
	bench_gate_open(&gate);

	/* Kill one worker at a random moment in the first 20 ms. */
	victim = (int) (rng_next(rng) % WORKERS);
	sleep_ns(rng_next(rng) % 20000000u);
	atomic_store(&sh->kill_ns, bench_now_ns());
	kill(pids[victim], SIGKILL);
	wait_one(pids[victim]);
	if (victim < PRODUCERS) {
		t->killed_producers++;
	} else {
		t->killed_consumers++;
	}

	pid_t mon = cr_stacks ? stall_monitor(sh, run, victim) : -1;

	/* Surviving producers finish; then one stop item per consumer. */
	for (int i = 0; i < PRODUCERS; i++) {
		if (i != victim && (st = wait_one(pids[i])) != 0) {
			violation(t, run,
			    "producer %d ended with status %d (%s)", i, st,
			    sh->msg);
		}
	}
	for (int i = PRODUCERS; i < WORKERS; i++) {
		if (i != victim) {
			rc = qp_queue_put(q, buf, 0, PUT_TIMEOUT_MS);
			if (rc != QP_OK) {
				violation(
				    t, run, "stop put: %s", qp_strerror(rc));
			}
		}
	}
	for (int i = PRODUCERS; i < WORKERS; i++) {
		if (i != victim && (st = wait_one(pids[i])) != 0) {
			violation(t, run,
			    "consumer %d ended with status %d (%s)", i, st,
			    sh->msg);
		}
	}
	if (mon > 0) {
		kill(mon, SIGKILL);
		wait_one(mon);
	}
	/* Nothing may be left, but drain whatever is, to account for it. */
	for (int i = 0; i < 4 * MAX_ITEMS; i++) {
		uint32_t p, seq;

		if (qp_queue_get_into(q, buf, sizeof(buf), &len, QP_NOWAIT)
		    != QP_OK) {
			break;
		}
		if (len >= HDR) {
			memcpy(&p, buf, 4);
			memcpy(&seq, buf + 4, 4);
			if (p < PRODUCERS && seq < MAX_ITEMS) {
				atomic_fetch_add(&sh->got[p][seq], 1);
			}
		}
	}
	if (qp_queue_qsize(q, &left) != QP_OK || left != 0) {
		violation(t, run, "qsize %zu after draining", left);
	}
	/* The survivors went on. */
	gap = atomic_load(&sh->max_gap_ns);
	if (atomic_load(&sh->ops_after_kill) == 0) {
		t->idle_at_kill++;
	} else {
		t->gaps[t->recoveries++] = gap;
		t->recovery_sum_ns += gap;
		if (gap > t->recovery_max_ns) {
			t->recovery_max_ns = gap;
		}
		if (gap > RECOVERY_MAX) {
			violation(t, run,
			    "no progress for %.1f ms after killing worker %d",
			    (double) gap / 1e6, victim);
		}
	}
	if (atomic_load(&sh->damaged) != 0) {
		violation(
		    t, run, "%u damaged items", atomic_load(&sh->damaged));
	}

	/* Exactly once for every acknowledged put. */
	{
		uint64_t lost = 0;

		for (uint32_t p = 0; p < PRODUCERS; p++) {
			for (uint32_t i = 0; i < items; i++) {
				int ok = atomic_load(&sh->put_ok[p][i]);
				int got = atomic_load(&sh->got[p][i]);

				if (got > 1) {
					violation(t, run,
					    "item %u/%u got %d times", p, i,
					    got);
				} else if (ok && got == 0) {
					lost++;
				} else if (!ok && got == 1) {
					/* Committed, but the producer died
					 * before its put returned. */
					if ((int) p != victim) {
						violation(t, run,
						    "item %u/%u got but never "
						    "put",
						    p, i);
					}
					t->unacked_delivered++;
				}
			}
		}
		if (lost > 1 || (lost == 1 && victim < PRODUCERS)) {
			violation(t, run,
			    "%" PRIu64 " acknowledged items lost (killed "
			    "worker %d)",
			    lost, victim);
		}
		t->lost_in_window += lost;
	}
	alarm(0);
	qp_queue_free(q);
	t->runs++;
	return 0;
}

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: bench_crash [--runs N] [--items N] [--seed S] [--timeout "
	    "SEC] [--stacks]\n"
	    "Kills one of 2 producers and 2 consumers per run; checks that "
	    "nothing\n"
	    "acknowledged is lost or duplicated and that the rest go on in "
	    "100 ms.\n");
}

int
main(int argc, char **argv)
{
	uint64_t runs = 1000, items = 4000, seed = 0, rng;
	double timeout = 10;
	const bench_opt opts[] = {
	    {"runs", 'n', &runs},
	    {"items", 'n', &items},
	    {"seed", 'n', &seed},
	    {"timeout", 'S', &timeout},
	    {"stacks", 'f', &cr_stacks},
	    {NULL, 0, NULL},
	};
	cr_totals t;
	cr_shared *sh;

	if (bench_parse_opts(argc, argv, "bench_crash", opts, usage) != 0) {
		return 2;
	}
	if (runs < 1 || runs > 1000000 || items < 1 || items > MAX_ITEMS) {
		fprintf(stderr, "bench_crash: runs 1-1000000, items 1-%d\n",
		    MAX_ITEMS);
		return 2;
	}
	if (seed == 0) {
		seed = bench_now_ns() | 1;
	}
	rng = seed;
	signal(SIGALRM, cr_watchdog);
	memset(&t, 0, sizeof(t));
	t.gaps = calloc(runs, sizeof(*t.gaps));
	sh = bench_shared_alloc(sizeof(*sh));
	if (t.gaps == NULL) {
		return bench_fail("qpipe", "out of memory");
	}
	if (sh == NULL) {
		return bench_fail("qpipe", "mmap: %s", strerror(errno));
	}
	for (uint64_t r = 0; r < runs; r++) {
		if (one_run(sh, r, seed, &rng, (uint32_t) items, timeout, &t)
		    != 0) {
			return 1;
		}
	}
	qsort(t.gaps, t.recoveries, sizeof(*t.gaps), cmp_u64);
	uint64_t over_100ms = 0, over_1s = 0;
	for (uint64_t i = 0; i < t.recoveries; i++) {
		over_100ms += t.gaps[i] > RECOVERY_MAX;
		over_1s += t.gaps[i] > 1000000000u;
	}
	for (char *p = t.first; *p != '\0'; p++) {
		if (*p == '"' || *p == '\\') {
			*p = '\'';
		}
	}
	printf("{\"impl\": \"qpipe\", \"seed\": %" PRIu64
	       ", \"runs\": %" PRIu64 ", \"killed_producers\": %" PRIu64
	       ", \"killed_consumers\": %" PRIu64
	       ", \"idle_at_kill\": %" PRIu64
	       ", \"max_gap_after_kill_ms\": %.3f, "
	       "\"p50_max_gap_ms\": %.3f, \"p99_max_gap_ms\": %.3f, "
	       "\"mean_max_gap_ms\": %.3f, \"runs_over_100ms\": %" PRIu64
	       ", \"runs_over_1s\": %" PRIu64 ", "
	       "\"lost_in_kill_window\": %" PRIu64
	       ", \"unacknowledged_delivered\": %" PRIu64
	       ", \"violations\": %" PRIu64 ", \"first_violation\": \"%s\"}\n",
	    seed, t.runs, t.killed_producers, t.killed_consumers,
	    t.idle_at_kill, (double) t.recovery_max_ns / 1e6,
	    (double) pct(&t, 50) / 1e6, (double) pct(&t, 99) / 1e6,
	    t.recoveries
	        ? (double) t.recovery_sum_ns / 1e6 / (double) t.recoveries
	        : 0.0,
	    over_100ms, over_1s, t.lost_in_window, t.unacked_delivered,
	    t.violations, t.first);
	return t.violations != 0;
}
