/*
 * queue_util.h - helpers for the queue tests: items whose bytes say who
 * made them and can be checked (an 8-byte id, then bytes cut from one
 * random block at an offset the id picks), shared counters for children,
 * clocks, child processes, and whether a process or thread sleeps in a
 * futex.
 */
#ifndef QP_TEST_QUEUE_UTIL_H
#define QP_TEST_QUEUE_UTIL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qpipe.h"

/* Sanitizer builds move fewer items in the bulk tests. */
#if defined(__SANITIZE_ADDRESS__)
#define QU_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QU_SANITIZED 1
#endif
#endif
#ifndef QU_SANITIZED
#define QU_SANITIZED 0
#endif

#define QU_BLOCK (192u * 1024u)

static uint8_t qu_block[QU_BLOCK];

static inline uint64_t
qu_mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

/* Fills the random block (the same in every process: a fixed seed). */
static inline void
qu_init(void)
{
	uint64_t s = 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < QU_BLOCK; i += 8) {
		s = qu_mix(s + i);
		memcpy(qu_block + i, &s, 8);
	}
}

/* Writes item id of len bytes into buf: the id (as much of it as fits),
 * then block bytes from an offset that depends on the id. */
static inline void
qu_fill(uint8_t *buf, uint64_t id, size_t len)
{
	size_t n = len < 8 ? len : 8;
	size_t off = (size_t) (qu_mix(id) % (QU_BLOCK - 64 * 1024));

	memcpy(buf, &id, n);
	if (len > 8) {
		memcpy(buf + 8, qu_block + off, len - 8);
	}
}

/* Checks an item of at least 8 bytes: true and *idp when it is whole. */
static inline bool
qu_check(const uint8_t *buf, size_t len, uint64_t *idp)
{
	uint64_t id;

	if (len < 8) {
		return false;
	}
	memcpy(&id, buf, 8);
	size_t off = (size_t) (qu_mix(id) % (QU_BLOCK - 64 * 1024));
	*idp = id;
	return len == 8 || memcmp(buf + 8, qu_block + off, len - 8) == 0;
}

static inline int64_t
qu_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t
qu_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline void
qu_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

/* Zeroed memory shared with children forked after. */
static inline void *
qu_shared(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

/* Waits for pid: its exit status, or 128 + signal. */
static inline int
qu_wait(pid_t pid)
{
	int st = 0;

	if (waitpid(pid, &st, 0) != pid) {
		return -1;
	}
	if (WIFEXITED(st)) {
		return WEXITSTATUS(st);
	}
	return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
}

/* True once pid (a process, or a thread's id) sleeps in a futex call (up
 * to 2 s). */
static inline bool
qu_in_futex(pid_t pid)
{
	char path[64], line[64];

	snprintf(path, sizeof(path), "/proc/%d/syscall", (int) pid);
	for (int i = 0; i < 2000; i++) {
		FILE *f = fopen(path, "r");
		bool yes = false;
		if (f != NULL) {
			yes = fgets(line, sizeof(line), f) != NULL
			    && atoi(line) == SYS_futex;
			fclose(f);
		}
		if (yes) {
			return true;
		}
		qu_sleep_ms(1);
	}
	return false;
}

/* A queue name unique to this process and call: "qt-<tag>-<pid>-<n>". */
static inline const char *
qu_name(const char *tag)
{
	static char name[96];
	static int n;

	snprintf(name, sizeof(name), "qt-%s-%d-%d", tag, (int) getpid(), ++n);
	return name;
}

#endif /* QP_TEST_QUEUE_UTIL_H */
