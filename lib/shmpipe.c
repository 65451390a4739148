/*
 * shmpipe.c - qp_pipe(): two connected ends in one anonymous shared
 * segment (qpi_shm_anon), created before fork() and used by the parent and
 * its children.
 *
 * Data. Each direction is a single-producer single-consumer byte ring.
 * A message is a 16-byte header (length, raw/msgpack flag, the size of a
 * bin header, a magic word) and its bytes, streamed through the ring: a
 * message larger than the ring goes through in pieces, the producer
 * publishing what it wrote and waiting for room while the consumer copies
 * out and frees room. Positions are 64-bit byte counts that only grow; the
 * producer alone writes head, the consumer alone writes tail (release
 * stores, acquire loads), so no lock is taken. An end is used by one
 * process at a time (as in Python, an end must not be used by two processes
 * at once), and within that process by one sending and one receiving
 * thread at a time.
 *
 * Blocking. A waiter first spins for up to SPIN_NS, because waking a
 * sleeping process costs tens of microseconds (55-70 us measured on the
 * development machine) while a hand-off to a running peer takes well under
 * one: it pauses for SPIN_PAUSE_NS, then yields the CPU in a loop, so that
 * a peer sharing its core (a small or busy machine) runs and answers
 * meanwhile. Only then does it set its waiting flag and sleep on a futex
 * word of the ring (data_seq for the consumer, space_seq for the
 * producer), with its deadline passed down. The other side bumps the word
 * and calls FUTEX_WAKE only when it takes the flag (an exchange: one
 * wake-up per sleep however many messages follow), so a busy pipe makes no
 * system calls; the flag store and the position store are each followed
 * by a full fence, so one side always sees the other (no lost wake-up).
 *
 * End of file. Each end records in the segment the pid of the process that
 * uses it (its owner), whether it was closed, whether its owner let go of
 * it without closing it (released), and an heir. A process claims an end
 * on its first send, recv, poll or fd after a fork (the creator holds both
 * until then); a claim clears released and heir, and wakes the peer so
 * that it looks again. A child forked while its parent owns an end and
 * holds it open becomes that end's heir (pthread_atfork handlers over the
 * process's open ends: the parent marks the heir pending before the fork,
 * the child puts in its pid). The peer is gone once the end is closed, or once
 * its owner has exited or released it and its heir, if any, has exited.
 * A waiter that finds no data checks this before each sleep and sleeps in
 * slices of SLICE_NS; an exit is seen through a pidfd (pidfd_open, Linux
 * >= 5.3), which tells it even while the dead child is an unreaped zombie
 * (kill(pid, 0) would not); without pidfds, kill() and /proc/PID/stat
 * stand in. So a recv returns QP_ECLOSED within SLICE_NS of the peer's
 * death, once the data already sent is drained, even when the parent still
 * holds the child's end: holding an end is not using it, and a child
 * forked after another process claimed the end is no heir of it.
 * qp_conn_close ends the stream for the peer when called by the owner that
 * has not forked since it last used the end; the owner closing it after a
 * fork only releases it (Python's idiom: the parent closes the child's end
 * after fork, and the child's use or death decides); any other process's
 * close only drops its handle, as closing an inherited descriptor does (an
 * heir closing its copy gives up being heir). The limits: if the parent
 * keeps the child's end open and the child dies before its first use of
 * it, the parent sees end of file only when it closes that end (Python
 * would hang as well); and a pidfd is opened when a new owner or heir is
 * first seen, so one that died and whose pid was reused in between would
 * be taken for alive.
 *
 * Descriptors. Each direction has an eventfd, created with the pipe and
 * inherited across fork. qp_conn_fd arms the receiving direction: from then
 * on the producer writes the eventfd when it publishes and the fd_signaled
 * flag is clear, and the receiver drains it (clear the flag, read, look
 * again) when it finds the ring empty. The fd may poll readable once with
 * nothing ready (a claim's wake-up, or a write that raced a drain); the
 * next qp_conn_poll(c, 0) or recv drains it, so a loop that polls the fd
 * and then asks qp_conn_poll never spins. The fd handed out is an epoll set,
 * per process, holding that eventfd and a pidfd of the peer's owner, so it
 * polls readable on data, on the peer's close and on the peer's death.
 */
#include "shmpipe.h"
#include "futex.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SEG_MAGIC     0x51504950u /* "QPIP" */
#define SEG_VERSION   1u
#define MSG_MAGIC     0x4d50u /* "PM" */
#define HDR           16u
#define SPIN_PAUSE_NS ((int64_t) 3000)
#define SPIN_NS       ((int64_t) 30000)
#define SLICE_NS      ((int64_t) 20000000)

#define CACHELINE 64

/* One direction. Fields are grouped by the side that writes them, one
 * cache line per group, so that the producer and consumer do not share a
 * line they both write. */
struct ring {
	/* producer */
	_Alignas(CACHELINE) _Atomic uint64_t head;
	_Atomic uint32_t data_seq; /* consumer's futex word */
	/* consumer */
	_Alignas(CACHELINE) _Atomic uint64_t tail;
	_Atomic uint32_t space_seq; /* producer's futex word */
	/* consumer, rarely: sleeping or watching the fd */
	_Alignas(CACHELINE) _Atomic uint32_t rx_waiting;
	_Atomic uint32_t fd_armed;
	/* producer, rarely: sleeping for room */
	_Alignas(CACHELINE) _Atomic uint32_t tx_waiting;
	/* both: the eventfd holds a count */
	_Alignas(CACHELINE) _Atomic uint32_t fd_signaled;
	uint64_t data_off; /* offset of the ring's bytes in the segment */
};

/* One end's state, seen by both ends. */
struct end_state {
	_Atomic int32_t owner; /* pid of the process using the end */
	_Atomic uint32_t closed; /* closed by that process */
	_Atomic uint32_t released; /* the owner let go of it without closing */
	_Atomic int32_t heir; /* a child forked while the owner held it */
};

/* The start of the segment. ring[i] carries data into end i (end 0 is the
 * first end, *ap). A simplex pipe has ring 0 only. */
struct seg {
	uint32_t magic;
	uint32_t version;
	uint64_t ring_size;
	uint32_t duplex;
	_Alignas(CACHELINE) struct end_state end[2];
	struct ring ring[2];
};

/* A message header in the ring. */
struct msghdr {
	uint64_t len;
	uint8_t raw;
	uint8_t binoff;
	uint16_t magic;
	uint32_t reserved;
};

/* What the two handles of one pipe share within a process. */
struct share {
	qpi_shm shm;
	struct seg *seg;
	int efd[2]; /* eventfd of ring i; -1 if there is no ring i */
	int refs; /* handles not yet destroyed */
};

/* One end, in one process. */
struct shmconn {
	qp_conn base;
	struct share *sh;
	struct seg *seg;
	int end; /* 0 or 1 */
	struct ring *in; /* NULL: this end does not receive */
	struct ring *out; /* NULL: this end does not send */
	uint8_t *in_data;
	uint8_t *out_data;
	int in_efd;
	int out_efd;
	uint64_t size; /* ring bytes, a power of two */
	uint64_t mask;
	uint64_t in_head; /* consumer's cached copy of in->head */
	uint64_t out_tail; /* producer's cached copy of out->tail */
	/* claim: the process generation and fork count at the last use */
	_Atomic unsigned proc_gen;
	_Atomic unsigned long fork_count;
	/* per-process descriptors and the peer's liveness, under mu */
	pthread_mutex_t mu;
	unsigned fd_gen; /* process generation these belong to */
	pid_t mypid;
	pid_t watch_pid; /* pid that pidfd refers to; 0 if none */
	int pidfd;
	int epfd; /* the fd handed out; -1 until asked for */
	bool ep_has_pidfd;
	bool watch_dead; /* watch_pid is known to have exited */
	bool broken; /* end of file came in the middle of a message */
	bool eof_seen; /* the peer was found gone (under mu) */
	/* the process's list of open ends, for the fork handler */
	struct shmconn *reg_next;
};

/* Process-wide: how many forks happened, seen from the child (proc_gen)
 * and from the parent (fork_count). */
static _Atomic unsigned shm_proc_gen;
static _Atomic unsigned long shm_fork_count;
static pthread_once_t shm_once = PTHREAD_ONCE_INIT;
static bool shm_spin_ok;
/* The ends open in this process (not closed here), for the fork handler;
 * shm_reg_mu is held across fork() so the child finds the list whole. */
static pthread_mutex_t shm_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct shmconn *shm_reg;
static pid_t shm_forker;

/* Before fork, in the parent: every end it owns and holds open gets a
 * pending heir, -pid of the parent, which the child replaces with its own
 * pid; so the parent may let go of the end as soon as fork() returns. */
static void
shm_atfork_prepare(void)
{
	pthread_mutex_lock(&shm_reg_mu);
	shm_forker = getpid();
	for (struct shmconn *h = shm_reg; h != NULL; h = h->reg_next) {
		struct end_state *e = &h->seg->end[h->end];
		if (atomic_load(&e->owner) == (int32_t) shm_forker
		    && !atomic_load(&e->released)) {
			atomic_store(&e->heir, -(int32_t) shm_forker);
		}
	}
}

static void
shm_atfork_parent(void)
{
	atomic_fetch_add(&shm_fork_count, 1);
	pthread_mutex_unlock(&shm_reg_mu);
}

/* In the new child: it becomes the heir of every end that its parent owns
 * and held open at the fork, so that if the parent lets go of such an end
 * (the Python idiom of closing the child's end after fork) the end lives
 * as long as this child, even if it dies before its first use of it. */
static void
shm_atfork_child(void)
{
	int32_t me = (int32_t) getpid();

	atomic_fetch_add(&shm_proc_gen, 1);
	for (struct shmconn *h = shm_reg; h != NULL; h = h->reg_next) {
		struct end_state *e = &h->seg->end[h->end];
		int32_t pending = -(int32_t) shm_forker;
		atomic_compare_exchange_strong(&e->heir, &pending, me);
	}
	pthread_mutex_unlock(&shm_reg_mu);
}

static void
shm_register(struct shmconn *c)
{
	pthread_mutex_lock(&shm_reg_mu);
	c->reg_next = shm_reg;
	shm_reg = c;
	pthread_mutex_unlock(&shm_reg_mu);
}

static void
shm_unregister(struct shmconn *c)
{
	pthread_mutex_lock(&shm_reg_mu);
	for (struct shmconn **p = &shm_reg; *p != NULL; p = &(*p)->reg_next) {
		if (*p == c) {
			*p = c->reg_next;
			break;
		}
	}
	pthread_mutex_unlock(&shm_reg_mu);
}

static void
shm_init_once(void)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	/* Spinning only helps when the peer can run at the same time. */
	shm_spin_ok = ncpu > 1;
	pthread_atfork(
	    shm_atfork_prepare, shm_atfork_parent, shm_atfork_child);
}

/* One step of the wait before sleeping: a pause at first; later a yield,
 * so that a peer sharing this CPU gets to run and answer. */
static inline void
shm_spin_once(bool yielding)
{
	if (yielding) {
		sched_yield();
	} else {
		qpi_cpu_relax();
	}
}

static inline struct shmconn *
shm_conn(qp_conn *c)
{
	return (struct shmconn *) c;
}

/* ---- ring bytes ---- */

/* Copies n bytes between buf and the ring at pos, wrapping around its
 * end: into the sending ring (put), else out of the receiving one. */
static inline void
shm_ring_copy(struct shmconn *c, bool put, uint64_t pos, void *buf, size_t n)
{
	uint8_t *ring = put ? c->out_data : c->in_data, *b = buf;
	size_t off = (size_t) (pos & c->mask);
	size_t first = (size_t) c->size - off < n ? (size_t) c->size - off : n;

	memcpy(put ? ring + off : b, put ? b : ring + off, first);
	if (first < n) {
		memcpy(
		    put ? ring : b + first, put ? b + first : ring, n - first);
	}
}

/* ---- wake-ups ---- */

static void
shm_signal_fd(struct ring *r, int efd)
{
	if (efd >= 0 && !atomic_exchange(&r->fd_signaled, 1)) {
		uint64_t one = 1;
		ssize_t rv = write(efd, &one, sizeof(one));
		(void) rv; /* a full counter is still readable */
	}
}

/* Producer: makes bytes up to pos visible and wakes the consumer if it
 * sleeps or watches its fd. */
static void
shm_publish(struct shmconn *c, uint64_t pos)
{
	struct ring *r = c->out;

	atomic_store_explicit(&r->head, pos, memory_order_release);
	atomic_thread_fence(memory_order_seq_cst);
	/* One wake per sleep: the flag is taken by whoever wakes. */
	if (atomic_load_explicit(&r->rx_waiting, memory_order_relaxed)
	    && atomic_exchange(&r->rx_waiting, 0)) {
		atomic_fetch_add(&r->data_seq, 1);
		qpi_futex_wake((uint32_t *) &r->data_seq, 1);
	}
	if (atomic_load_explicit(&r->fd_armed, memory_order_relaxed)) {
		shm_signal_fd(r, c->out_efd);
	}
}

/* Consumer: frees the ring up to pos and wakes a producer waiting for
 * room. */
static void
shm_release(struct shmconn *c, uint64_t pos)
{
	struct ring *r = c->in;

	atomic_store_explicit(&r->tail, pos, memory_order_release);
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&r->tx_waiting, memory_order_relaxed)
	    && atomic_exchange(&r->tx_waiting, 0)) {
		atomic_fetch_add(&r->space_seq, 1);
		qpi_futex_wake((uint32_t *) &r->space_seq, 1);
	}
}

/* Wakes everyone waiting on either ring of this end, and the peer's fd:
 * something changed that is not data (a close, a claim). */
static void
shm_kick(struct shmconn *c)
{
	if (c->out != NULL) {
		atomic_fetch_add(&c->out->data_seq, 1);
		qpi_futex_wake((uint32_t *) &c->out->data_seq, INT32_MAX);
		atomic_fetch_add(&c->out->space_seq, 1);
		qpi_futex_wake((uint32_t *) &c->out->space_seq, INT32_MAX);
		if (atomic_load(&c->out->fd_armed)) {
			shm_signal_fd(c->out, c->out_efd);
		}
	}
	if (c->in != NULL) {
		atomic_fetch_add(&c->in->space_seq, 1);
		qpi_futex_wake((uint32_t *) &c->in->space_seq, INT32_MAX);
		atomic_fetch_add(&c->in->data_seq, 1);
		qpi_futex_wake((uint32_t *) &c->in->data_seq, INT32_MAX);
	}
}

/* ---- ownership ---- */

static void
shm_claim_slow(struct shmconn *c, unsigned gen, unsigned long forks)
{
	pid_t me = getpid();
	int32_t old;

	struct end_state *e = &c->seg->end[c->end];
	old = atomic_exchange(&e->owner, (int32_t) me);
	atomic_store(&e->released, 0);
	atomic_store(&e->heir, 0);
	atomic_store(&c->proc_gen, gen);
	atomic_store(&c->fork_count, forks);
	if (old != (int32_t) me) {
		/* The peer may be watching the previous owner. */
		shm_kick(c);
	}
}

/* Records that this process uses the end (see the opening comment). */
static inline void
shm_claim(struct shmconn *c)
{
	unsigned gen
	    = atomic_load_explicit(&shm_proc_gen, memory_order_relaxed);
	unsigned long forks
	    = atomic_load_explicit(&shm_fork_count, memory_order_relaxed);

	if (atomic_load_explicit(&c->proc_gen, memory_order_relaxed) != gen
	    || atomic_load_explicit(&c->fork_count, memory_order_relaxed)
	        != forks) {
		shm_claim_slow(c, gen, forks);
	}
}

/* ---- the peer's liveness (under c->mu) ---- */

static void
shm_drop_pidfd(struct shmconn *c)
{
	if (c->pidfd >= 0) {
		if (c->ep_has_pidfd) {
			epoll_ctl(c->epfd, EPOLL_CTL_DEL, c->pidfd, NULL);
		}
		close(c->pidfd);
	}
	c->pidfd = -1;
	c->ep_has_pidfd = false;
	c->watch_pid = 0;
	c->watch_dead = false;
}

/* Forgets descriptors inherited from the parent: they belong to it (an
 * epoll set is shared across fork, and must not be changed by the child). */
static void
shm_fresh_fds(struct shmconn *c)
{
	unsigned gen = atomic_load(&shm_proc_gen);

	if (c->fd_gen == gen) {
		return;
	}
	if (c->epfd >= 0) {
		close(c->epfd);
	}
	c->epfd = -1;
	c->ep_has_pidfd = false; /* the set is gone: nothing to take out */
	shm_drop_pidfd(c);
	c->mypid = getpid();
	c->fd_gen = gen;
}

/* Has process pid exited? Keeps a pidfd of the one process watched (and
 * keeps it in the epoll set, if there is one). Called with c->mu held. */
static bool
shm_pid_gone_locked(struct shmconn *c, pid_t pid)
{
	struct pollfd pfd;

	if (pid == c->mypid) {
		if (c->pidfd >= 0 || c->watch_pid != 0) {
			shm_drop_pidfd(c);
		}
		return false;
	}
	if (pid != c->watch_pid) {
		shm_drop_pidfd(c);
		c->watch_pid = pid;
#ifdef SYS_pidfd_open
		c->pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
		if (c->pidfd < 0) {
			c->pidfd = -1;
			if (errno == ESRCH) {
				c->watch_dead = true;
			}
		}
#endif
		if (c->pidfd >= 0) {
			fcntl(c->pidfd, F_SETFD, FD_CLOEXEC);
			if (c->epfd >= 0) {
				struct epoll_event ev = {.events = EPOLLIN};
				ev.data.fd = c->pidfd;
				c->ep_has_pidfd
				    = epoll_ctl(c->epfd, EPOLL_CTL_ADD,
				          c->pidfd, &ev)
				    == 0;
			}
		}
	}
	if (c->watch_dead) {
		return true;
	}
	if (c->pidfd >= 0) {
		pfd.fd = c->pidfd;
		pfd.events = POLLIN;
		pfd.revents = 0;
		if (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN)) {
			c->watch_dead = true;
		}
	} else if (qpi_pid_gone(pid)) {
		c->watch_dead = true;
	}
	return c->watch_dead;
}

/* Has the peer closed its end or gone away? It has once its owner has
 * exited or let go of it, unless an heir that may still use it lives.
 * The answer sticks, and keeps the eventfd readable when it is armed. */
static bool
shm_peer_gone(struct shmconn *c)
{
	struct end_state *pe = &c->seg->end[1 - c->end];
	bool closed = atomic_load(&pe->closed) != 0;
	pid_t owner = (pid_t) atomic_load(&pe->owner);
	bool released = atomic_load(&pe->released) != 0;
	pid_t heir = (pid_t) atomic_load(&pe->heir);
	bool gone;

	pthread_mutex_lock(&c->mu);
	shm_fresh_fds(c);
	if (c->eof_seen || closed) {
		gone = true;
	} else if (!released && owner > 0 && !shm_pid_gone_locked(c, owner)) {
		gone = false;
	} else if (heir != 0) {
		/* a pending heir (-pid) is a child being forked by pid */
		gone = shm_pid_gone_locked(c, heir > 0 ? heir : -heir);
	} else {
		gone = true;
	}
	c->eof_seen = gone;
	pthread_mutex_unlock(&c->mu);
	if (gone && c->in != NULL && atomic_load(&c->in->fd_armed)) {
		shm_signal_fd(c->in, c->in_efd);
	}
	return gone;
}

static bool
shm_peer_closed(struct shmconn *c)
{
	return atomic_load_explicit(
	    &c->seg->end[1 - c->end].closed, memory_order_acquire);
}

/* ---- receiving ---- */

/* Bytes published beyond pos, refreshing the cached head if needed. */
static inline uint64_t
shm_avail(struct shmconn *c, uint64_t pos)
{
	if (c->in_head <= pos) {
		c->in_head
		    = atomic_load_explicit(&c->in->head, memory_order_acquire);
		if (c->in_head <= pos) {
			return 0;
		}
	}
	return c->in_head - pos;
}

/* With the fd armed and the ring found empty: takes back a stale signal
 * from the eventfd, and signals again if data or a close came meanwhile.
 * It reads the eventfd even when fd_signaled is clear: a producer's write
 * may land after an earlier drain cleared the flag, and must not leave the
 * fd readable for good (an event loop would spin). */
static void
shm_fd_quiesce(struct shmconn *c, uint64_t tail)
{
	struct ring *r = c->in;
	uint64_t v;

	if (!atomic_load(&r->fd_armed)) {
		return;
	}
	pthread_mutex_lock(&c->mu);
	bool eof = c->eof_seen;
	pthread_mutex_unlock(&c->mu);
	if (eof) {
		return; /* end of file stays readable */
	}
	atomic_store(&r->fd_signaled, 0);
	atomic_thread_fence(memory_order_seq_cst);
	ssize_t n = read(c->in_efd, &v, sizeof(v));
	(void) n; /* EAGAIN: nothing to take back */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load(&r->head) - tail >= HDR || shm_peer_closed(c)) {
		shm_signal_fd(r, c->in_efd);
	}
}

/* Room for need bytes at pos, refreshing the cached tail if needed. */
static inline bool
shm_room(struct shmconn *c, uint64_t pos, uint64_t need)
{
	uint64_t used = pos - c->out_tail;

	/* The cached tail may be stale (older than pos - size) when another
	 * process used this end meanwhile: then it is refreshed too. */
	if (used <= c->size && c->size - used >= need) {
		return true;
	}
	c->out_tail
	    = atomic_load_explicit(&c->out->tail, memory_order_acquire);
	used = pos - c->out_tail;
	return used <= c->size && c->size - used >= need;
}

/* Waits until the bytes up to pos + need are published (rx; need >= 1)
 * or free for the producer (tx, which waits with no deadline): a spin
 * first, then sleeps on the ring's futex word in slices of SLICE_NS.
 * QP_OK, QP_ETIMEDOUT at the deadline, QP_ECLOSED when this end was
 * closed or the peer is gone (for rx: and the bytes never will come).
 * Inlined, so that each call site is specialised on rx. */
static inline __attribute__((always_inline)) int
shm_wait(
    struct shmconn *c, bool rx, uint64_t pos, uint64_t need, int64_t deadline)
{
	struct ring *r = rx ? c->in : c->out;
	_Atomic uint32_t *waiting = rx ? &r->rx_waiting : &r->tx_waiting;
	_Atomic uint32_t *word = rx ? &r->data_seq : &r->space_seq;
	int64_t now;

#define SHM_READY (rx ? shm_avail(c, pos) >= need : shm_room(c, pos, need))
	if (SHM_READY) {
		return QP_OK;
	}
	now = qpi_now_ns();
	if (rx && deadline <= now) {
		if (shm_peer_gone(c)) {
			return shm_avail(c, pos) >= need ? QP_OK : QP_ECLOSED;
		}
		if (pos == atomic_load(&r->tail)) {
			shm_fd_quiesce(c, pos);
		}
		return QP_ETIMEDOUT;
	}
	if (shm_spin_ok) {
		int64_t until
		    = deadline - now < SPIN_NS ? deadline : now + SPIN_NS;
		bool yielding = false;
		for (unsigned i = 1;; i++) {
			shm_spin_once(yielding);
			if (SHM_READY) {
				return QP_OK;
			}
			if (yielding || (i & 31) == 0) {
				int64_t t = qpi_now_ns();
				if (shm_peer_closed(c)
				    || atomic_load_explicit(
				        &c->base.closed, memory_order_relaxed)
				    || t >= until) {
					break;
				}
				yielding = t - now >= SPIN_PAUSE_NS;
			}
		}
	}
	for (;;) {
		int rv = QP_OK;
		atomic_store(waiting, 1);
		atomic_thread_fence(memory_order_seq_cst);
		uint32_t seq = atomic_load(word);
		if (SHM_READY) {
			/* rv stays QP_OK */
		} else if (atomic_load(&c->base.closed)) {
			rv = qpi_err(QP_ECLOSED, "connection closed");
		} else if (!rx && shm_peer_gone(c)) {
			rv = qpi_err(QP_ECLOSED,
			    "broken pipe: the peer closed its end or exited");
		} else if (shm_peer_gone(c)) {
			rv = shm_avail(c, pos) >= need ? QP_OK : QP_ECLOSED;
		} else if ((now = qpi_now_ns()) >= deadline) {
			rv = QP_ETIMEDOUT;
		} else {
			qpi_futex_wait((uint32_t *) word, seq,
			    deadline - now > SLICE_NS ? now + SLICE_NS
			                              : deadline);
			atomic_store(waiting, 0);
			continue;
		}
		atomic_store(waiting, 0);
		return rv;
	}
#undef SHM_READY
}

static int
shm_peek(qp_conn *base, int64_t deadline, qpi_msginfo *mi)
{
	struct shmconn *c = shm_conn(base);
	struct msghdr h;
	uint64_t tail;
	int rv;

	shm_claim(c);
	if (c->broken) {
		return qpi_err(QP_ECLOSED,
		    "end of file: the peer exited in the middle of a message");
	}
	tail = atomic_load_explicit(&c->in->tail, memory_order_relaxed);
	if ((rv = shm_wait(c, true, tail, HDR, deadline)) != QP_OK) {
		if (rv == QP_ECLOSED) {
			return qpi_err(QP_ECLOSED,
			    "end of file: the peer closed its end or exited");
		}
		return rv;
	}
	shm_ring_copy(c, false, tail, &h, sizeof(h));
	if (h.magic != MSG_MAGIC || h.len > QPI_CONN_MAX_MESSAGE || h.raw > 1
	    || h.binoff > 5 || h.binoff > h.len) {
		return qpi_err(QP_ECORRUPT,
		    "pipe ring holds a bad message header at byte %llu",
		    (unsigned long long) tail);
	}
	mi->len = (size_t) h.len;
	mi->raw = h.raw != 0;
	mi->binoff = h.binoff;
	return QP_OK;
}

static int
shm_take(qp_conn *base, const qpi_msginfo *mi, size_t skip, void *dst)
{
	struct shmconn *c = shm_conn(base);
	uint64_t tail, pos, end;
	size_t left;
	uint8_t *out = dst;
	int rv;

	shm_claim(c);
	tail = atomic_load_explicit(&c->in->tail, memory_order_relaxed);
	end = tail + HDR + mi->len;
	pos = tail + HDR + skip;
	left = mi->len - skip;
	while (left > 0) {
		rv = shm_wait(c, true, pos, 1, INT64_MAX);
		if (rv != QP_OK) {
			c->broken = true;
			return qpi_err(rv,
			    "end of file in the middle of a %zu-byte message",
			    mi->len);
		}
		uint64_t n = shm_avail(c, pos);
		if (n > left) {
			n = left;
		}
		shm_ring_copy(c, false, pos, out, (size_t) n);
		out += n;
		pos += n;
		left -= (size_t) n;
		if (left > 0) {
			/* A message larger than what is published: hand
			 * the room back now so the producer can go on. */
			shm_release(c, pos);
		}
	}
	shm_release(c, end);
	if (atomic_load_explicit(&c->in->fd_armed, memory_order_relaxed)
	    && shm_avail(c, end) < HDR) {
		shm_fd_quiesce(c, end);
	}
	return QP_OK;
}

/* ---- sending ---- */

static int
shm_send(qp_conn *base, bool raw, const void *buf, size_t len, uint8_t binoff)
{
	struct shmconn *c = shm_conn(base);
	struct msghdr h;
	const uint8_t *src = buf;
	uint64_t head, pos;
	size_t left = len;
	int rv;

	shm_claim(c);
	if (shm_peer_closed(c)) {
		return qpi_err(
		    QP_ECLOSED, "broken pipe: the peer closed its end");
	}
	memset(&h, 0, sizeof(h));
	h.len = len;
	h.raw = raw ? 1 : 0;
	h.binoff = binoff;
	h.magic = MSG_MAGIC;

	head = atomic_load_explicit(&c->out->head, memory_order_relaxed);
	/* A message up to half the ring goes in whole; a larger one streams
	 * through, starting as soon as its header fits. */
	uint64_t span = HDR + (uint64_t) len;
	if ((rv = shm_wait(
	         c, false, head, span <= c->size / 2 ? span : HDR, INT64_MAX))
	    != QP_OK) {
		return rv;
	}
	shm_ring_copy(c, true, head, &h, sizeof(h));
	pos = head + HDR;
	for (;;) {
		/* shm_wait left a fresh tail: room is exact */
		uint64_t room = c->size - (pos - c->out_tail);
		size_t n = room < left ? (size_t) room : left;
		shm_ring_copy(c, true, pos, (void *) src, n);
		src += n;
		pos += n;
		left -= n;
		if (left == 0) {
			break;
		}
		/* Publish the part written, so the consumer drains it. */
		shm_publish(c, pos);
		if ((rv = shm_wait(c, false, pos, 1, INT64_MAX)) != QP_OK) {
			return rv;
		}
	}
	shm_publish(c, pos);
	return QP_OK;
}

/* ---- the descriptor ---- */

static int
shm_fd(qp_conn *base, int *fdp)
{
	struct shmconn *c = shm_conn(base);
	struct epoll_event ev = {.events = EPOLLIN};
	int rv = QP_OK;

	shm_claim(c);
	pthread_mutex_lock(&c->mu);
	shm_fresh_fds(c);
	if (c->epfd < 0) {
		c->epfd = epoll_create1(EPOLL_CLOEXEC);
		if (c->epfd < 0) {
			rv = qpi_err(
			    QP_ESYSTEM, "epoll_create1: %s", strerror(errno));
			goto out;
		}
		ev.data.fd = c->in_efd;
		if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->in_efd, &ev) != 0) {
			rv = qpi_err(
			    QP_ESYSTEM, "epoll_ctl: %s", strerror(errno));
			close(c->epfd);
			c->epfd = -1;
			goto out;
		}
		/* Watch the peer's owner too (re-added on the next check). */
		if (c->pidfd >= 0) {
			ev.data.fd = c->pidfd;
			c->ep_has_pidfd
			    = epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->pidfd, &ev)
			    == 0;
		}
	}
	*fdp = c->epfd;
out:
	pthread_mutex_unlock(&c->mu);
	if (rv != QP_OK) {
		return rv;
	}
	/* Arm, then look: data or a close that came before the arming would
	 * not have signalled the eventfd. */
	atomic_store(&c->in->fd_armed, 1);
	atomic_thread_fence(memory_order_seq_cst);
	uint64_t tail = atomic_load(&c->in->tail);
	if (atomic_load(&c->in->head) - tail >= HDR || shm_peer_closed(c)) {
		shm_signal_fd(c->in, c->in_efd);
	} else {
		/* Registers the peer's pidfd in the set. */
		(void) shm_peer_gone(c);
	}
	return QP_OK;
}

/* ---- closing ---- */

static void
shm_close(qp_conn *base)
{
	struct shmconn *c = shm_conn(base);
	struct end_state *e = &c->seg->end[c->end];
	pid_t me = getpid();

	/* Close for the peer only from the process that uses this end and
	 * has not forked since it last did; otherwise this process merely
	 * lets go of its handle. */
	shm_unregister(c);
	if (atomic_load(&e->owner) == (int32_t) me) {
		if (atomic_load(&c->proc_gen) == atomic_load(&shm_proc_gen)
		    && atomic_load(&c->fork_count)
		        == atomic_load(&shm_fork_count)) {
			atomic_store(&e->closed, 1);
		} else {
			/* a child may use it: it lives on in the heir */
			atomic_store(&e->released, 1);
		}
	} else {
		/* an heir that lets go of the end will not use it */
		int32_t mine = (int32_t) me;
		atomic_compare_exchange_strong(&e->heir, &mine, 0);
	}
	shm_kick(c);
}

static void
shm_share_release(struct share *sh)
{
	if (--sh->refs > 0) {
		return;
	}
	for (int i = 0; i < 2; i++) {
		if (sh->efd[i] >= 0) {
			close(sh->efd[i]);
		}
	}
	qpi_shm_unmap(&sh->shm);
	free(sh);
}

static void
shm_destroy(qp_conn *base)
{
	struct shmconn *c = shm_conn(base);

	pthread_mutex_lock(&c->mu);
	/* Descriptors inherited from a parent are this process's copies:
	 * closing them is right either way. */
	if (c->epfd >= 0) {
		close(c->epfd);
	}
	if (c->pidfd >= 0) {
		close(c->pidfd);
	}
	pthread_mutex_unlock(&c->mu);
	pthread_mutex_destroy(&c->mu);
	shm_share_release(c->sh);
	free(c);
}

static const qpi_conn_ops shm_ops = {
    .send = shm_send,
    .peek = shm_peek,
    .take = shm_take,
    .fd = shm_fd,
    .set_max = NULL,
    .close = shm_close,
    .destroy = shm_destroy,
};

/* ---- creation ---- */

static struct shmconn *
shm_conn_new(struct share *sh, int end)
{
	struct seg *s = sh->seg;
	struct shmconn *c = calloc(1, sizeof(*c));
	int in = end, out = 1 - end;
	bool duplex = s->duplex != 0;

	if (c == NULL) {
		return NULL;
	}
	c->sh = sh;
	c->seg = s;
	c->end = end;
	c->size = s->ring_size;
	c->mask = s->ring_size - 1;
	c->in_efd = -1;
	c->out_efd = -1;
	/* ring i carries data into end i; a simplex pipe has ring 0 only,
	 * from end 1 (sends) to end 0 (receives). */
	if (duplex || end == 0) {
		c->in = &s->ring[in];
		c->in_data = (uint8_t *) s + s->ring[in].data_off;
		c->in_efd = sh->efd[in];
	}
	if (duplex || end == 1) {
		c->out = &s->ring[out];
		c->out_data = (uint8_t *) s + s->ring[out].data_off;
		c->out_efd = sh->efd[out];
	}
	c->proc_gen = atomic_load(&shm_proc_gen);
	c->fork_count = atomic_load(&shm_fork_count);
	c->fd_gen = atomic_load(&shm_proc_gen);
	c->mypid = getpid();
	c->pidfd = -1;
	c->epfd = -1;
	pthread_mutex_init(&c->mu, NULL);
	qpi_conn_init(&c->base, &shm_ops, c->in != NULL, c->out != NULL);
	return c;
}

int
qpi_shmpipe_create(qp_conn **ap, qp_conn **bp, bool duplex, size_t ring_size)
{
	struct share *sh;
	struct shmconn *a, *b;
	size_t hdr, nrings = duplex ? 2 : 1;
	int rv;

	pthread_once(&shm_once, shm_init_once);
	if (ring_size == 0) {
		ring_size = QPI_SHMPIPE_RING_DEFAULT;
	}
	if (ring_size < QPI_SHMPIPE_RING_MIN
	    || ring_size > QPI_SHMPIPE_RING_MAX
	    || (ring_size & (ring_size - 1)) != 0) {
		return qpi_err(QP_EINVAL,
		    "pipe ring size %zu is not a power of two in [%zu, %zu]",
		    ring_size, QPI_SHMPIPE_RING_MIN, QPI_SHMPIPE_RING_MAX);
	}
	if ((sh = calloc(1, sizeof(*sh))) == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory creating a pipe");
	}
	sh->efd[0] = sh->efd[1] = -1;
	hdr = (sizeof(struct seg) + 4095) & ~(size_t) 4095;
	if ((rv = qpi_shm_anon(hdr + nrings * ring_size, &sh->shm)) != QP_OK) {
		free(sh);
		return rv;
	}
	struct seg *s = sh->shm.base;
	sh->seg = s;
	s->magic = SEG_MAGIC;
	s->version = SEG_VERSION;
	s->ring_size = ring_size;
	s->duplex = duplex ? 1 : 0;
	for (size_t i = 0; i < nrings; i++) {
		s->ring[i].data_off = hdr + i * ring_size;
		sh->efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (sh->efd[i] < 0) {
			rv = qpi_err(
			    QP_ESYSTEM, "eventfd: %s", strerror(errno));
			sh->refs = 1;
			shm_share_release(sh);
			return rv;
		}
	}
	atomic_store(&s->end[0].owner, (int32_t) getpid());
	atomic_store(&s->end[1].owner, (int32_t) getpid());

	a = shm_conn_new(sh, 0);
	b = shm_conn_new(sh, 1);
	if (a == NULL || b == NULL) {
		free(a);
		free(b);
		sh->refs = 1;
		shm_share_release(sh);
		return qpi_err(QP_ENOMEM, "out of memory creating a pipe");
	}
	sh->refs = 2;
	shm_register(a);
	shm_register(b);
	*ap = &a->base;
	*bp = &b->base;
	return QP_OK;
}
