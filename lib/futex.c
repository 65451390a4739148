/*
 * futex.c - process-shared futex waits with absolute deadlines, the
 * shared-memory segments that queues and pipes live in (files on the tmpfs
 * /dev/shm, or $QPIPE_SHM_DIR, named "qpipe.<name>", as shm_open() makes
 * them; or anonymous MAP_SHARED memory for queues and pipes shared across
 * fork()), and whether a process that uses one is gone. A named segment is
 * sparse: a page is backed when first written, and writing one when the
 * tmpfs is full raises SIGBUS, so its users reserve pages first
 * (qpi_shm_reserve, fallocate: ENOSPC is an error instead). Anonymous
 * shared memory lives on the kernel's internal tmpfs, which has no size
 * limit: it is bounded by memory and overcommit like any allocation (an
 * exhausted machine or cgroup invokes the OOM killer, not SIGBUS), so it
 * is not reserved.
 *
 * Trust. The directory is shared by every user: a named segment owned by
 * another user is refused unless the caller asks for it (qpi_shm_open's
 * any_owner), and every named segment mapped here is guarded against
 * SIGBUS (its owner truncating the file under us): a fault inside a
 * guarded segment maps private zero pages over the rest of it, marks the
 * attachment bad (the caller's flag) and returns, so the call in progress
 * finishes on zeros and the caller reports the queue broken instead of
 * dying. The guard table is a fixed array of atomics, read by the signal
 * handler without locks; add and remove take no lock either (a slot is
 * claimed by compare-and-swap).
 */
#define _GNU_SOURCE /* fallocate */
#include "futex.h"
#include "qpi.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int
qpi_futex_wait(uint32_t *word, uint32_t expected, int64_t deadline_ns)
{
	struct timespec ts, *tsp = NULL;
	long rv;

	if (deadline_ns != INT64_MAX) {
		if (qpi_remaining_ns(deadline_ns) == 0) {
			return QP_ETIMEDOUT;
		}
		ts = qpi_ts_from_ns(deadline_ns);
		tsp = &ts;
	}
	/* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline. */
	rv = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, tsp, NULL,
	    FUTEX_BITSET_MATCH_ANY);
	if (rv == -1 && errno == ETIMEDOUT) {
		return QP_ETIMEDOUT;
	}
	return 0;
}

int
qpi_futex_wake(uint32_t *word, int n)
{
	long rv = syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
	return rv > 0 ? (int) rv : 0;
}

int
qpi_futex_wake_or(uint32_t *word, uint32_t bits, int n)
{
	/* FUTEX_WAKE_OP on one word: *word |= bits, wake n on it; the
	 * second wake-up it offers (the same word) is for 0 waiters. */
	long rv = syscall(SYS_futex, word, FUTEX_WAKE_OP, n, (void *) 0L, word,
	    FUTEX_OP(FUTEX_OP_OR, bits & 0xfffu, FUTEX_OP_CMP_EQ, 0));
	return rv > 0 ? (int) rv : 0;
}

bool
qpi_pid_gone(int32_t pid)
{
	char path[64], buf[512];
	ssize_t n;
	int fd;

	if (kill(pid, 0) != 0 && errno == ESRCH) {
		return true;
	}
	snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		return false; /* cannot tell: alive */
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		return false;
	}
	buf[n] = '\0';
	/* "pid (comm) S ...": the state follows the last ')'. */
	char *p = strrchr(buf, ')');
	return p != NULL && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static pid_t self_pid; /* 0: not known (yet, or since a fork) */
static pthread_once_t self_once = PTHREAD_ONCE_INIT;

static void
self_forget(void)
{
	__atomic_store_n(&self_pid, 0, __ATOMIC_RELAXED);
}

static void
self_watch_forks(void)
{
	pthread_atfork(NULL, NULL, self_forget);
}

pid_t
qpi_self_pid(void)
{
	pid_t p = __atomic_load_n(&self_pid, __ATOMIC_RELAXED);

	if (p == 0) {
		pthread_once(&self_once, self_watch_forks);
		p = getpid();
		__atomic_store_n(&self_pid, p, __ATOMIC_RELAXED);
	}
	return p;
}

const char *
qpi_shm_dir(void)
{
	const char *d = getenv("QPIPE_SHM_DIR");

	return d != NULL && d[0] != '\0' ? d : "/dev/shm";
}

static void
shm_path(const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/qpipe.%s", qpi_shm_dir(), name);
}

/* Maps size bytes of the segment file fd (closed on failure) into shm. */
static int
shm_map(int fd, size_t size, const char *name, qpi_shm *shm)
{
	void *base
	    = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

	if (base == MAP_FAILED) {
		int e = errno;
		close(fd);
		return qpi_err(
		    QP_ENOMEM, "cannot map shm://%s: %s", name, strerror(e));
	}
	shm->base = base;
	shm->size = size;
	shm->fd = fd;
	return QP_OK;
}

int
qpi_shm_reserve(const qpi_shm *shm, uint64_t off, uint64_t len)
{
	if (shm->fd < 0 || len == 0) {
		return 0;
	}
	/* tmpfs allocates every page of the range, or none (it undoes a
	 * partial allocation on failure). KEEP_SIZE: a file its owner cut
	 * short stays short, so that its users see the cut (the SIGBUS
	 * guard) instead of zeros. */
	for (int i = 0; i < 100; i++) {
		if (fallocate(
		        shm->fd, FALLOC_FL_KEEP_SIZE, (off_t) off, (off_t) len)
		    == 0) {
			return 0;
		}
		if (errno != EINTR) {
			return errno;
		}
	}
	return EINTR;
}

int
qpi_shm_create(const char *name, size_t size, qpi_shm *shm)
{
	char path[PATH_MAX];
	int fd;

	/* What shm_open() does, in a directory of our choice. */
	shm_path(name, path, sizeof(path));
	fd = open(
	    path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		if (errno == EEXIST) {
			return qpi_err(QP_EEXIST, "shm://%s exists", name);
		}
		return qpi_err(errno == ENOSPC ? QP_ENOSPC : QP_ESYSTEM,
		    "cannot create %s: %s", path, strerror(errno));
	}
	if (ftruncate(fd, (off_t) size) != 0) {
		int e = errno;
		close(fd);
		unlink(path);
		return qpi_err(
		    e == ENOSPC || e == EFBIG ? QP_ENOSPC : QP_ESYSTEM,
		    "cannot size shm://%s to %zu bytes: %s", name, size,
		    strerror(e));
	}
	int rc = shm_map(fd, size, name, shm);
	if (rc != QP_OK) {
		unlink(path);
	}
	return rc;
}

int
qpi_shm_open(const char *name, bool any_owner, qpi_shm *shm)
{
	char path[PATH_MAX];
	struct stat st;
	int fd;

	shm_path(name, path, sizeof(path));
	fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT) {
			return qpi_err(QP_ENOENT, "no queue shm://%s", name);
		}
		return qpi_err(
		    QP_ESYSTEM, "cannot open %s: %s", path, strerror(errno));
	}
	if (fstat(fd, &st) != 0) {
		close(fd);
		return qpi_err(
		    QP_ESYSTEM, "cannot stat %s: %s", path, strerror(errno));
	}
	if (!any_owner && st.st_uid != geteuid()) {
		close(fd);
		return qpi_err(QP_EPERM,
		    "shm://%s (%s) is owned by uid %u, not by this process's "
		    "uid %u: refused, as another user can read and change "
		    "it (open it with QP_OPEN_ANY_OWNER, qpipe --any-owner or "
		    "qpiped --shm-any-owner if you trust that user)",
		    name, path, (unsigned) st.st_uid, (unsigned) geteuid());
	}
	if (!S_ISREG(st.st_mode) || st.st_size <= 0) {
		close(fd);
		return qpi_err(
		    QP_ECORRUPT, "shm://%s is empty or unreadable", name);
	}
	return shm_map(fd, (size_t) st.st_size, name, shm);
}

int
qpi_shm_link(const char *from, const char *to)
{
	char a[PATH_MAX], b[PATH_MAX];

	shm_path(from, a, sizeof(a));
	shm_path(to, b, sizeof(b));
	if (link(a, b) != 0) {
		if (errno == EEXIST) {
			return qpi_err(QP_EEXIST, "shm://%s exists", to);
		}
		return qpi_err(QP_ESYSTEM, "cannot link %s to %s: %s", a, b,
		    strerror(errno));
	}
	return QP_OK;
}

int
qpi_shm_unlink(const char *name)
{
	char path[PATH_MAX];

	shm_path(name, path, sizeof(path));
	if (unlink(path) != 0) {
		if (errno == ENOENT) {
			return qpi_err(QP_ENOENT, "no queue shm://%s", name);
		}
		return qpi_err(
		    QP_ESYSTEM, "cannot unlink %s: %s", path, strerror(errno));
	}
	return QP_OK;
}

int
qpi_shm_anon(size_t size, qpi_shm *shm)
{
	void *base = mmap(NULL, size, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED) {
		return qpi_err(QP_ENOMEM, "cannot map %zu shared bytes: %s",
		    size, strerror(errno));
	}
	shm->base = base;
	shm->size = size;
	shm->fd = -1;
	return QP_OK;
}

/* ---- SIGBUS guard ---- */

#define SHM_GUARDS 4096

/* A guarded segment: [base, base + size); flag gets 2 on a fault there,
 * off the fault's offset. base 0: a free slot; ~0: being filled. */
static struct shm_guard {
	_Atomic uintptr_t base;
	_Atomic size_t size;
	int *_Atomic flag;
	uint64_t *_Atomic off;
} shm_guards[SHM_GUARDS];

static struct sigaction shm_old_bus;
static _Atomic uintptr_t shm_page; /* the page size, read at install */

static void
shm_on_bus(int sig, siginfo_t *si, void *uc)
{
	uintptr_t a = (uintptr_t) si->si_addr;
	int saved = errno;

	for (int i = 0; i < SHM_GUARDS; i++) {
		uintptr_t b = atomic_load(&shm_guards[i].base);
		size_t n = atomic_load(&shm_guards[i].size);
		if (b == 0 || b == UINTPTR_MAX || a < b || a - b >= n) {
			continue;
		}
		uintptr_t from = a & ~(atomic_load(&shm_page) - 1);
		/* Zero pages in place of what the file lost: the faulting
		 * access and every later one complete. */
		void *m
		    = mmap((void *) from, b + n - from, PROT_READ | PROT_WRITE,
		        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		uint64_t *offp = atomic_load(&shm_guards[i].off);
		int *flag = atomic_load(&shm_guards[i].flag);
		if (offp != NULL) {
			__atomic_store_n(
			    offp, (uint64_t) (a - b), __ATOMIC_RELAXED);
		}
		if (flag != NULL) {
			__atomic_store_n(flag, 2, __ATOMIC_SEQ_CST);
		}
		errno = saved;
		if (m != MAP_FAILED) {
			return;
		}
		break;
	}
	errno = saved;
	/* Not ours: what the process had before. */
	if (shm_old_bus.sa_flags & SA_SIGINFO) {
		if (shm_old_bus.sa_sigaction != NULL) {
			shm_old_bus.sa_sigaction(sig, si, uc);
			return;
		}
	} else if (shm_old_bus.sa_handler != SIG_DFL
	    && shm_old_bus.sa_handler != SIG_IGN) {
		shm_old_bus.sa_handler(sig);
		return;
	}
	/* Default: die of SIGBUS as if nothing were installed (the access
	 * faults again on return). */
	signal(SIGBUS, SIG_DFL);
}

static pthread_mutex_t shm_guard_mu = PTHREAD_MUTEX_INITIALIZER;

/* Installs the handler unless it is there: at every attach, so that a
 * handler the program set since (a test framework's, say) is chained to
 * rather than left in front of ours. */
static void
shm_guard_install(void)
{
	struct sigaction cur, sa;

	pthread_mutex_lock(&shm_guard_mu);
	if (atomic_load(&shm_page) == 0) {
		long pg = sysconf(_SC_PAGESIZE);
		atomic_store(&shm_page, (uintptr_t) (pg > 0 ? pg : 4096));
	}
	if (sigaction(SIGBUS, NULL, &cur) == 0
	    && (!(cur.sa_flags & SA_SIGINFO)
	        || cur.sa_sigaction != shm_on_bus)) {
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = shm_on_bus;
		sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
		sigemptyset(&sa.sa_mask);
		shm_old_bus = cur;
		sigaction(SIGBUS, &sa, NULL);
	}
	pthread_mutex_unlock(&shm_guard_mu);
}

void
qpi_shm_guard(const qpi_shm *shm, int *flag, uint64_t *off)
{
	if (shm->fd < 0 || shm->base == NULL) {
		return; /* anonymous memory cannot be truncated */
	}
	shm_guard_install();
	for (int i = 0; i < SHM_GUARDS; i++) {
		if (atomic_load(&shm_guards[i].base)
		    == (uintptr_t) shm->base) {
			/* Guarded already: the flag moves (an attach). */
			atomic_store(&shm_guards[i].off, off);
			atomic_store(&shm_guards[i].flag, flag);
			return;
		}
	}
	for (int i = 0; i < SHM_GUARDS; i++) {
		uintptr_t zero = 0;
		if (atomic_load(&shm_guards[i].base) == 0
		    && atomic_compare_exchange_strong(
		        &shm_guards[i].base, &zero, UINTPTR_MAX)) {
			atomic_store(&shm_guards[i].size, shm->size);
			atomic_store(&shm_guards[i].flag, flag);
			atomic_store(&shm_guards[i].off, off);
			atomic_store(
			    &shm_guards[i].base, (uintptr_t) shm->base);
			return;
		}
	}
}

/* Stops guarding the segment (before it is unmapped). */
static void
shm_unguard(const qpi_shm *shm)
{
	for (int i = 0; shm->base != NULL && i < SHM_GUARDS; i++) {
		if (atomic_load(&shm_guards[i].base)
		    == (uintptr_t) shm->base) {
			atomic_store(&shm_guards[i].base, UINTPTR_MAX);
			atomic_store(&shm_guards[i].flag, NULL);
			atomic_store(&shm_guards[i].off, NULL);
			atomic_store(&shm_guards[i].size, 0);
			atomic_store(&shm_guards[i].base, 0);
			return;
		}
	}
}

void
qpi_shm_unmap(qpi_shm *shm)
{
	if (shm->base != NULL) {
		shm_unguard(shm);
		munmap(shm->base, shm->size);
		if (shm->fd >= 0) {
			close(shm->fd);
		}
		shm->base = NULL;
		shm->size = 0;
		shm->fd = -1;
	}
}
