/*
 * pipe_util.h - helpers shared by the pipe and connection tests and their
 * helper program: a seeded stream of messages of random sizes, cut out of
 * one random block so that sending and checking cost a memcpy/memcmp, and
 * small clock and child-process helpers.
 */
#ifndef QP_TEST_PIPE_UTIL_H
#define QP_TEST_PIPE_UTIL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qpipe.h"

/* Sanitizer builds move fewer messages in the bulk tests. */
#if defined(__SANITIZE_ADDRESS__)
#define PU_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PU_SANITIZED 1
#endif
#endif
#ifndef PU_SANITIZED
#define PU_SANITIZED 0
#endif

/* fork() where the parent's I/O threads (nng's, the library's) have just
 * had work. The sanitizer build's allocator (GCC 12's libasan) does not
 * hold its locks across fork() as glibc's malloc does: a child forked
 * while another thread was inside it blocks on that lock at its first
 * allocation that needs it, for good (seen: 1 run in 24, 8 at a time).
 * There, the parent first lets those threads finish their work and go
 * idle. Plain builds fork at once. */
static inline pid_t
pu_fork(void)
{
	if (PU_SANITIZED) {
		struct timespec ts = {0, 200 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return fork();
}

#define PU_BLOCK   (128u * 1024u)
#define PU_MAXSIZE (64u * 1024u)

typedef struct pu_stream {
	uint64_t state;
	uint8_t *block; /* PU_BLOCK random bytes */
	uint64_t sum; /* FNV-1a over every byte produced */
} pu_stream;

static inline uint64_t
pu_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Fills the shared block from seed; block must hold PU_BLOCK bytes. */
static inline void
pu_init(pu_stream *s, uint8_t *block, uint64_t seed)
{
	uint64_t st = seed;

	for (size_t i = 0; i < PU_BLOCK; i += 8) {
		uint64_t v = pu_next(&st);
		memcpy(block + i, &v, 8);
	}
	s->state = seed ^ 0x5555;
	s->block = block;
	s->sum = 0xcbf29ce484222325ull;
}

/* The next message: a slice of the block, 0 to PU_MAXSIZE bytes. The
 * sizes are spread evenly over the powers of two (0-1, 0-2, ... 0-64 KiB
 * are equally likely ranges), so that small messages, which cut and
 * straddle frames and ring ends differently, are as common as large. */
static inline const uint8_t *
pu_msg(pu_stream *s, size_t *lenp)
{
	uint64_t r = pu_next(&s->state);
	size_t range = (size_t) 1 << (r % 17); /* 1 .. PU_MAXSIZE */
	size_t len = (size_t) ((r >> 8) % (range + 1));
	size_t start = (size_t) ((r >> 32) % (PU_BLOCK - PU_MAXSIZE));

	*lenp = len;
	return s->block + start;
}

/* Folds bytes into the running checksum. */
static inline void
pu_sum(pu_stream *s, const uint8_t *p, size_t n)
{
	uint64_t h = s->sum;

	/* FNV-1a on 8-byte words keeps this cheap under sanitizers. */
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, 8);
		h = (h ^ w) * 0x100000001b3ull;
	}
	for (; i < n; i++) {
		h = (h ^ p[i]) * 0x100000001b3ull;
	}
	s->sum = (h ^ n) * 0x100000001b3ull;
}

static inline int64_t
pu_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t
pu_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline void
pu_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) != 0) {
	}
}

/* Waits for a child and returns its exit status (or 128 + its signal). */
static inline int
pu_wait_child(pid_t pid)
{
	int st = 0;

	while (waitpid(pid, &st, 0) < 0) {
	}
	if (WIFEXITED(st)) {
		return WEXITSTATUS(st);
	}
	return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

#endif /* QP_TEST_PIPE_UTIL_H */
