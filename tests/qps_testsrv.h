/*
 * qps_testsrv.h - starts and stops the real qpiped (QP_BUILD_DIR/bin) for
 * the tests: on tcp://127.0.0.1:0 or a fresh ipc path in a mkdtemp
 * directory, with the bound URL read back from --port-file. Every server
 * is stopped by its pid. Header-only: static functions for one test file.
 */
#ifndef QPS_TESTSRV_H
#define QPS_TESTSRV_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct tsrv {
	pid_t pid;
	char dir[64]; /* private directory: port file, log, ipc socket */
	char listen[300]; /* what --listen was given */
	char url[300]; /* the bound URL */
	char extra[8][64]; /* more flags */
	int nextra;
} tsrv;

static void
tsrv_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

static long long
tsrv_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The servers this process started and has not stopped, so that a
 * failing test stops them too (their logs stay for a look). */
#define TSRV_MAX 8
static pid_t tsrv_live[TSRV_MAX];

static void
tsrv_track(pid_t pid, bool on)
{
	for (int i = 0; i < TSRV_MAX; i++) {
		if (on ? tsrv_live[i] == 0 : tsrv_live[i] == pid) {
			tsrv_live[i] = on ? pid : 0;
			return;
		}
	}
}

static void
tsrv_kill_all(void)
{
	for (int i = 0; i < TSRV_MAX; i++) {
		if (tsrv_live[i] > 0) {
			kill(tsrv_live[i], SIGKILL);
			waitpid(tsrv_live[i], NULL, 0);
			tsrv_live[i] = 0;
		}
	}
}

/* Runs qpiped with s->listen and s->extra; waits (up to 10 s) for its
 * port file and reads the bound URL into s->url. 0 or -1. */
static int
tsrv_spawn(tsrv *s)
{
	char bin[512], pf[128], log[128];
	const char *bd = getenv("QP_BUILD_DIR");
	char *argv[32];
	int argc = 0;

	snprintf(bin, sizeof(bin), "%s/bin/qpiped", bd != NULL ? bd : ".");
	snprintf(pf, sizeof(pf), "%s/port", s->dir);
	snprintf(log, sizeof(log), "%s/log", s->dir);
	unlink(pf);
	argv[argc++] = bin;
	argv[argc++] = "--listen";
	argv[argc++] = s->listen;
	argv[argc++] = "--port-file";
	argv[argc++] = pf;
	for (int i = 0; i < s->nextra; i++) {
		argv[argc++] = s->extra[i];
	}
	/* QP_SERVER_TRANSPORT=nng|sp: how the server serves tcp:// and
	 * ipc:// (its --transport), so both paths run the same tests. */
	if (getenv("QP_SERVER_TRANSPORT") != NULL) {
		argv[argc++] = "--transport";
		argv[argc++] = getenv("QP_SERVER_TRANSPORT");
	}
	argv[argc] = NULL;
	s->pid = fork();
	if (s->pid < 0) {
		return -1;
	}
	if (s->pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 2);
			dup2(fd, 1);
			close(fd);
		}
		execv(bin, argv);
		_exit(127);
	}
	tsrv_track(s->pid, true);
	for (int i = 0; i < 1000; i++) {
		FILE *f = fopen(pf, "r");
		if (f != NULL) {
			char *ok = fgets(s->url, sizeof(s->url), f);
			fclose(f);
			if (ok != NULL) {
				s->url[strcspn(s->url, "\n")] = '\0';
				return 0;
			}
		}
		if (waitpid(s->pid, NULL, WNOHANG) == s->pid) {
			tsrv_track(s->pid, false);
			s->pid = 0;
			return -1;
		}
		tsrv_sleep_ms(10);
	}
	return -1;
}

/* Starts a server: proto "tcp" (port 0 on 127.0.0.1) or "ipc" (a socket
 * in the private directory). */
static int
tsrv_start(tsrv *s, const char *proto)
{
	memset(s->url, 0, sizeof(s->url));
	snprintf(s->dir, sizeof(s->dir), "/tmp/qpsrv.XXXXXX");
	if (mkdtemp(s->dir) == NULL) {
		return -1;
	}
	if (strcmp(proto, "ipc") == 0) {
		snprintf(
		    s->listen, sizeof(s->listen), "ipc://%s/sock", s->dir);
	} else {
		snprintf(s->listen, sizeof(s->listen), "tcp://127.0.0.1:0");
	}
	return tsrv_spawn(s);
}

/* Starts the server again on the address it had bound (after a kill). */
static int
tsrv_restart(tsrv *s)
{
	snprintf(s->listen, sizeof(s->listen), "%s", s->url);
	return tsrv_spawn(s);
}

/* Sends sig and reaps the server; returns its wait status. */
static int
tsrv_kill(tsrv *s, int sig)
{
	int st = -1;

	if (s->pid > 0) {
		kill(s->pid, sig);
		while (waitpid(s->pid, &st, 0) < 0 && errno == EINTR) {
		}
		tsrv_track(s->pid, false);
		s->pid = 0;
	}
	return st;
}

/* SIGTERM: returns true if it exited 0. Removes the directory. */
static int
tsrv_stop(tsrv *s)
{
	int st = tsrv_kill(s, SIGTERM);
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
	if (system(cmd) != 0) {
		/* leftovers in /tmp only */
	}
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* Peak and current resident memory of the server, in KiB (VmHWM,
 * VmRSS), and its thread count. */
static void
tsrv_mem(const tsrv *s, long *hwm, long *rss, long *threads)
{
	char path[64], line[256];
	FILE *f;

	*hwm = *rss = *threads = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int) s->pid);
	if ((f = fopen(path, "r")) == NULL) {
		return;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		sscanf(line, "VmHWM: %ld", hwm);
		sscanf(line, "VmRSS: %ld", rss);
		sscanf(line, "Threads: %ld", threads);
	}
	fclose(f);
}

/* In a scenario's child process: reports a failed check (with the
 * library's last error), stops every server it started, and exits
 * non-zero; the test asserts exit status 0. */
#define CHECK(c)                                                  \
	do {                                                      \
		if (!(c)) {                                       \
			fprintf(stderr,                           \
			    "%s:%d: check failed: %s (last "      \
			    "error: %s)\n",                       \
			    __FILE__, __LINE__, #c, qp_errmsg()); \
			tsrv_kill_all();                          \
			_exit(90);                                \
		}                                                 \
	} while (0)
#define CHECK_EQ(a, b)                                                    \
	do {                                                              \
		long long a_ = (long long) (a), b_ = (long long) (b);     \
		if (a_ != b_) {                                           \
			fprintf(stderr,                                   \
			    "%s:%d: %s is %lld, not %lld (last "          \
			    "error: %s)\n",                               \
			    __FILE__, __LINE__, #a, a_, b_, qp_errmsg()); \
			tsrv_kill_all();                                  \
			_exit(91);                                        \
		}                                                         \
	} while (0)

/* Runs fn(arg) (or fn0()) in a child process that reports through its
 * exit status (CHECK, CHECK_EQ), and asserts that it exited 0. The test
 * file includes cmocka.h first. */
static void __attribute__((unused))
tsrv_scenario_(void (*fn)(void *), void *arg, void (*fn0)(void))
{
	int st;
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		if (fn0 != NULL) {
			fn0();
		} else {
			fn(arg);
		}
		exit(0); /* not _exit: the leak checker runs at exit */
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}
#define tsrv_scenario(fn, arg) tsrv_scenario_((fn), (arg), NULL)
#define tsrv_scenario0(fn)     tsrv_scenario_(NULL, NULL, (fn))

#endif /* QPS_TESTSRV_H */
