/*
 * futex.h - process-shared waiting on a 32-bit word in shared memory, and
 * named or anonymous shared-memory segments, and the liveness of the
 * processes that use them. Used by the queue and pipe.
 */
#ifndef QPI_FUTEX_H
#define QPI_FUTEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Sleeps while *word == expected, until woken or deadline_ns (absolute
 * CLOCK_MONOTONIC ns; INT64_MAX = forever). Returns 0 when woken or when the
 * word differs, QP_ETIMEDOUT at the deadline. Spurious wake-ups happen:
 * callers re-check their condition. Works across processes. */
int qpi_futex_wait(uint32_t *word, uint32_t expected, int64_t deadline_ns);

/* Wakes up to n waiters on word (INT32_MAX: all); returns how many woke. */
int qpi_futex_wake(uint32_t *word, int n);

/* In one system call, ORs bits (below 4096) into *word, then wakes up to
 * n waiters on it; returns how many woke. A caller killed at any instant
 * did both or neither. */
int qpi_futex_wake_or(uint32_t *word, uint32_t bits, int n);

/* True when process pid surely no longer runs: gone, or a zombie. */
bool qpi_pid_gone(int32_t pid);

/* This process's id without a system call: cached, and forgotten in the
 * child of every fork(2) made through the C library (an atfork handler),
 * which is how a process that calls this library forks (Python's
 * os.fork and multiprocessing included). */
pid_t qpi_self_pid(void);

/* One step of a spin wait: the CPU's pause (yield) hint. */
static inline void
qpi_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield" ::: "memory");
#else
	__asm__ volatile("" ::: "memory");
#endif
}

/* A mapped shared-memory segment. A named segment keeps its file open
 * (fd) so that its pages can be reserved (qpi_shm_reserve); -1 for an
 * anonymous one. */
typedef struct qpi_shm {
	void *base;
	size_t size;
	int fd;
} qpi_shm;

/* The directory of named segments: $QPIPE_SHM_DIR if set and not empty
 * (tests, unusual setups), else /dev/shm. Segment files are
 * <dir>/qpipe.<name>. */
const char *qpi_shm_dir(void);

/* Backs the bytes [off, off + len) of a named segment's file with memory
 * (fallocate), so that writing them through the mapping can never raise
 * SIGBUS for want of space in its tmpfs. Returns 0, or an errno value
 * (ENOSPC: the file system is full; nothing of the range is kept then).
 * An anonymous segment (fd -1) returns 0 at once. */
int qpi_shm_reserve(const qpi_shm *shm, uint64_t off, uint64_t len);

/* Creates the named segment <dir>/qpipe.<name> of size bytes, zero-filled
 * and sparse: nothing is backed until written or reserved. QP_EEXIST if it
 * exists. The new segment is mapped in *shm. */
int qpi_shm_create(const char *name, size_t size, qpi_shm *shm);

/* Opens and maps the existing named segment (its whole size).
 * QP_ENOENT if it does not exist; QP_EPERM if another user owns the file
 * and any_owner is false (another user could read and change it). */
int qpi_shm_open(const char *name, bool any_owner, qpi_shm *shm);

/* Gives the named segment `from` the name `to` as well, atomically, failing
 * with QP_EEXIST if `to` exists (link(2)): a segment built under a
 * temporary name appears under its real name only once complete. */
int qpi_shm_link(const char *from, const char *to);

/* Removes the named segment's name; mappings stay valid. QP_ENOENT if none. */
int qpi_shm_unlink(const char *name);

/* Maps an anonymous shared segment, inherited across fork(). */
int qpi_shm_anon(size_t size, qpi_shm *shm);

/* Guards a mapped named segment against SIGBUS (its file truncated under
 * us): a fault inside it maps zero pages over the rest of the mapping,
 * stores 2 in *flag and the fault's offset in *off, and the access goes
 * on (a segment guarded already gets the new flag and off); a fault elsewhere
 * goes to the SIGBUS disposition the process had when the handler was
 * installed. Installs the handler if another one took its place (checked at
 * each call); up to 4,096 segments at once (more are not guarded). Anonymous
 * segments are skipped. */
void qpi_shm_guard(const qpi_shm *shm, int *flag, uint64_t *off);

/* Unmaps a segment and closes its file. */
void qpi_shm_unmap(qpi_shm *shm);

#endif /* QPI_FUTEX_H */
