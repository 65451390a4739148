/*
 * worker.c - `qpipe worker`: takes tasks from a queue and runs a command
 * once per task, the task on its stdin. When the command exits 0 its
 * stdout (less one final newline, unless --keep-newline) is put to the
 * results queue and the task is confirmed in one step (qp_queue_complete:
 * one result per task, however often it runs; a put, then task_done,
 * where the two queues cannot do that); when it fails, is killed or times out
 * the task goes back to the queue for another attempt, and after
 * --max-attempts deliveries it is moved to the dead-letter queue NAME.dead
 * (same server, or same host for shm://) with one line on stderr; a task
 * delivered more often than that (its workers died) goes there without
 * running. Nothing is confirmed before its result is stored, so a worker
 * killed at any point loses no task (a task may run twice; its result is
 * stored once).
 *
 * Leases. The task queue is opened with QP_OPEN_LEASE (worker mode), local
 * or remote alike: each task stays leased to this handle until task_done
 * or nack, and goes back to the head of the queue when the lease runs out
 * (--lease SEC, else --timeout + 10 s, else the queue's 30 s) or the
 * worker dies: a remote worker's connection drops, a local worker's
 * leases are returned by the next local worker that gets or waits (the
 * library checks for dead holders), or by a qpiped hosting the queue.
 * While a task runs, its slot renews the lease (qp_queue_touch) every
 * third of it, from the same poll loop that feeds the command, so a task
 * may run longer than its lease as long as its worker lives.
 *
 * Threads. One thread per --concurrency slot; each has its own handles
 * (task, results, dead-letter), so that task_done and nack of one slot's
 * handle always name that slot's task. A slot waits for a task in gets of
 * at most WK_SLICE_MS, then looks at the stop flag, the idle time and the
 * task budget. The command runs under posix_spawn() in its own process
 * group (a terminal's ^C reaches the worker, not the tasks); the slot
 * feeds its stdin and reads its stdout with poll(), with the task's
 * deadline, and learns of its exit through a pidfd. The main thread waits
 * on a signalfd (SIGTERM, SIGINT: stop taking tasks, let those running
 * finish; a second signal exits at once) and an eventfd the last slot
 * writes when it ends.
 *
 * Locking: w->mu guards the fields shared by the slots (stop flag, task
 * budget, running count, last activity, exit code, slots alive).
 */
#define _GNU_SOURCE /* pipe2 */
#include "cli.h"
#include "futex.h"
#include "qpi.h"
#include "queue.h" /* qpi_part_check */
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* the most task queues one worker takes from. */
#define WK_MAX_QUEUES 16

/* Longest single wait for a task before the slot looks around again. */
#define WK_SLICE_MS 250
/* The environment variable that tells the command its attempt number. */
#define WK_ATTEMPT_ENV "QPIPE_ATTEMPT="

typedef struct wk wk;

typedef struct wk_slot {
	wk *w;
	int idx;
	pthread_t th;
	bool started;
	qp_queue *q; /* tasks: the queue of the task at hand */
	qp_queue *res; /* results */
	qp_queue *dead; /* NAME.dead, opened on first use */
	/* the task queues, first listed first (q is one) */
	qp_queue *qs[WK_MAX_QUEUES];
	size_t cur; /* q == qs[cur] */
	size_t dead_idx; /* dead is the dead-letter queue of qs[dead_idx] */
	uint32_t deliveries; /* of the task at hand */
	int64_t touch_ms; /* renew the task's lease this often */
	char **envp; /* environ + QPIPE_ATTEMPT */
	char attempt[32];
} wk_slot;

struct wk {
	cli_opts *o;
	const char *addr;
	const char *raddr;
	char dead_addr[QPI_URL_MAX + QP_NAME_MAX + 16];
	/* every task queue's address and NAME.dead */
	char *const *addrs;
	size_t naddrs;
	char dead_addrs[WK_MAX_QUEUES][QPI_URL_MAX + QP_NAME_MAX + 16];
	char shm_path[PATH_MAX]; /* local: the segment's file ("" remote) */
	ino_t shm_ino;
	uint32_t max_attempts;
	size_t nslots;
	wk_slot *slots;
	int efd; /* written when the last slot ends */
	bool two_step; /* atomic: a two-step completion was said */

	pthread_mutex_t mu;
	bool stop;
	uint64_t tasks_left; /* UINT64_MAX: no limit */
	size_t running; /* tasks being run */
	int64_t last_ms; /* last task got or finished */
	size_t alive; /* slot threads not yet ended */
	int rc; /* exit code */
	uint64_t n_ok, n_retry, n_dead;
	cli_progress prog; /* on a terminal: tasks settled, and the rate */
};

/* One line on stderr, prefixed with the worker's address. */
static void wk_log(const wk *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
wk_log(const wk *w, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "qpipe: worker %s: %s\n", w->addr, line);
}

/* Stops every slot with exit code rc (the first one set wins). */
static void
wk_fail(wk *w, int rc)
{
	pthread_mutex_lock(&w->mu);
	if (w->rc == CLI_OK) {
		w->rc = rc;
	}
	w->stop = true;
	pthread_mutex_unlock(&w->mu);
}

/* ---- the task queue ---- */

/* Local: true while the queue's segment is still the one opened (a
 * removed segment wakes nobody; its workers exit). */
static bool
wk_shm_present(const wk *w)
{
	struct stat st;

	return stat(w->shm_path, &st) == 0 && st.st_ino == w->shm_ino;
}

/* Gets a task as the msgpack encoding of its value, waiting up to wait. */
static int
slot_get(wk_slot *s, qp_duration wait, void **bufp, size_t *lenp)
{
	int rv;

	s->deliveries = 1;
	if (s->w->shm_path[0] != '\0' && !wk_shm_present(s->w)) {
		return qpi_err(QP_ECLOSED, "the queue was removed");
	}
	if (s->w->naddrs > 1) {
		/* from whichever queue has a task, first listed
		 * first; the task's queue confirms it. */
		size_t which = 0;
		rv = qp_queue_get_any_obj(
		    s->qs, s->w->naddrs, &which, bufp, lenp, wait);
		if (rv != QP_OK) {
			return rv;
		}
		s->cur = which;
		s->q = s->qs[which];
	} else if ((rv = qp_queue_get_obj(s->q, bufp, lenp, wait)) != QP_OK) {
		return rv;
	}
	if (qp_queue_deliveries(s->q, &s->deliveries) != QP_OK) {
		s->deliveries = 1;
	}
	return QP_OK;
}

/* Confirms the task at hand. */
static int
slot_done(wk_slot *s)
{
	return qp_queue_task_done(s->q);
}

/* Gives the task at hand back for another attempt. */
static int
slot_nack(wk_slot *s)
{
	return qp_queue_nack(s->q, 0);
}

/* Renews the lease of the slot's task; says once per task why not. */
static void
slot_touch(wk_slot *s, bool *warned)
{
	int rv = qp_queue_touch(s->q, 0);

	if (rv != QP_OK && !*warned) {
		*warned = true;
		wk_log(s->w,
		    "cannot renew the lease of the running task: %s (it may "
		    "be run again elsewhere)",
		    qp_errmsg()[0] ? qp_errmsg() : qp_strerror(rv));
	}
}

/* ---- running the command ---- */

typedef struct wk_run {
	int status; /* waitpid's, when exited */
	bool exited;
	bool timed_out;
	bool toobig; /* stdout over the message limit */
	int spawn_err; /* errno of posix_spawnp, 0 if it ran */
	char *out;
	size_t len, cap;
} wk_run;

static int
wk_pidfd_open(pid_t pid)
{
#ifdef SYS_pidfd_open
	return (int) syscall(SYS_pidfd_open, pid, 0);
#else
	(void) pid;
	errno = ENOSYS;
	return -1;
#endif
}

/* Reads what the command wrote; false at end of file or on an error. */
static bool
wk_read_out(wk_run *r, int fd)
{
	for (;;) {
		if (r->cap - r->len < 65536 && !r->toobig) {
			size_t ncap = r->cap == 0 ? 65536 : r->cap * 2;
			char *nb = realloc(r->out, ncap);
			if (nb == NULL) {
				r->toobig = true;
			} else {
				r->out = nb;
				r->cap = ncap;
			}
		}
		char sink[4096];
		char *dst = r->toobig ? sink : r->out + r->len;
		size_t room = r->toobig ? sizeof(sink) : r->cap - r->len;
		ssize_t n = read(fd, dst, room);
		if (n > 0) {
			if (!r->toobig) {
				r->len += (size_t) n;
				if (r->len > QP_DEFAULT_MAX_MESSAGE) {
					r->toobig = true;
				}
			}
			continue;
		}
		if (n < 0 && errno == EINTR) {
			continue;
		}
		return n < 0 && errno == EAGAIN;
	}
}

/* Runs the command with in on its stdin; fills *r. */
static void
wk_exec(wk_slot *s, const void *in, size_t inlen, wk_run *r)
{
	const cli_opts *o = s->w->o;
	int pin[2] = {-1, -1}, pout[2] = {-1, -1};
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, dfl;
	pid_t pid;

	memset(r, 0, sizeof(*r));
	if (pipe2(pin, O_CLOEXEC) != 0 || pipe2(pout, O_CLOEXEC) != 0) {
		r->spawn_err = errno;
		for (int i = 0; i < 2; i++) {
			if (pin[i] >= 0) {
				close(pin[i]);
			}
		}
		return;
	}
	snprintf(s->attempt, sizeof(s->attempt), WK_ATTEMPT_ENV "%u",
	    (unsigned) s->deliveries);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pin[0], STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&fa, pout[1], STDOUT_FILENO);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
	/* Nothing of ours leaks into the task: above all no connection,
	 * which would outlive a killed worker and keep its leases. */
	posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);
#endif
	posix_spawnattr_init(&at);
	sigemptyset(&none);
	sigfillset(&dfl);
	sigdelset(&dfl, SIGKILL);
	sigdelset(&dfl, SIGSTOP);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &dfl);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at,
	    POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK
	        | POSIX_SPAWN_SETSIGDEF);
	r->spawn_err
	    = posix_spawnp(&pid, o->cmdv[0], &fa, &at, o->cmdv, s->envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(pin[0]);
	close(pout[1]);
	if (r->spawn_err != 0) {
		close(pin[1]);
		close(pout[0]);
		return;
	}

	int infd = pin[1], outfd = pout[0];
	int pidfd = wk_pidfd_open(pid);
	size_t off = 0;
	int64_t deadline
	    = o->timeout_set ? qpi_deadline_ns(o->timeout) : INT64_MAX;
	int64_t touch_at = qpi_deadline_ns(s->touch_ms);
	bool touch_warned = false;

	fcntl(infd, F_SETFL, O_NONBLOCK);
	fcntl(outfd, F_SETFL, O_NONBLOCK);
	if (inlen == 0) {
		close(infd);
		infd = -1;
	}
	while (!r->exited && (outfd >= 0 || pidfd >= 0)) {
		struct pollfd p[3];
		int n = 0, iin = -1, iout = -1, ipid = -1;
		if (infd >= 0) {
			iin = n;
			p[n++]
			    = (struct pollfd) {.fd = infd, .events = POLLOUT};
		}
		if (outfd >= 0) {
			iout = n;
			p[n++]
			    = (struct pollfd) {.fd = outfd, .events = POLLIN};
		}
		if (pidfd >= 0) {
			ipid = n;
			p[n++]
			    = (struct pollfd) {.fd = pidfd, .events = POLLIN};
		}
		int64_t left = qpi_remaining_ns(deadline);
		int64_t tleft = qpi_remaining_ns(touch_at);
		if (tleft < left) {
			left = tleft;
		}
		int ms = left == INT64_MAX ? -1
		                           : (int) ((left + 999999) / 1000000);
		int k = poll(p, (nfds_t) n, ms);
		if (touch_at != INT64_MAX && qpi_remaining_ns(touch_at) == 0) {
			slot_touch(s, &touch_warned);
			touch_at = qpi_deadline_ns(s->touch_ms);
		}
		if (k < 0 && errno != EINTR) {
			break;
		}
		if (k == 0 && deadline != INT64_MAX
		    && qpi_remaining_ns(deadline) == 0) {
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			r->timed_out = true;
			deadline = INT64_MAX;
			continue;
		}
		if (k <= 0) {
			continue;
		}
		if (iin >= 0 && p[iin].revents != 0) {
			ssize_t w = write(infd, (const char *) in + off,
			    inlen - off > 65536 ? 65536 : inlen - off);
			if (w > 0) {
				off += (size_t) w;
			}
			if (off == inlen
			    || (w < 0 && errno != EAGAIN && errno != EINTR)) {
				close(
				    infd); /* EPIPE: it read what it wanted */
				infd = -1;
			}
		}
		if (iout >= 0 && p[iout].revents != 0
		    && !wk_read_out(r, outfd)) {
			close(outfd);
			outfd = -1;
		}
		if (ipid >= 0 && p[ipid].revents != 0) {
			break; /* it exited: collect below */
		}
	}
	if (infd >= 0) {
		close(infd);
	}
	/* It exited (or we cannot watch it): what it wrote is in the pipe;
	 * a background child keeping stdout open is not waited for. */
	while (waitpid(pid, &r->status, 0) < 0 && errno == EINTR) {
	}
	r->exited = true;
	if (outfd >= 0) {
		wk_read_out(r, outfd);
		close(outfd);
	}
	if (pidfd >= 0) {
		close(pidfd);
	}
}

/* How the command ended, for the log. */
static void
wk_describe(const wk_slot *s, const wk_run *r, char *buf, size_t n)
{
	if (r->spawn_err != 0) {
		snprintf(buf, n, "cannot run %s: %s", s->w->o->cmdv[0],
		    strerror(r->spawn_err));
	} else if (r->timed_out) {
		snprintf(buf, n, "timed out after %g s, killed",
		    s->w->o->timeout_sec);
	} else if (WIFSIGNALED(r->status)) {
		snprintf(buf, n, "killed by signal %d", WTERMSIG(r->status));
	} else if (r->toobig) {
		snprintf(buf, n, "its output is over the %u-byte limit",
		    (unsigned) QP_DEFAULT_MAX_MESSAGE);
	} else {
		snprintf(buf, n, "exit %d", WEXITSTATUS(r->status));
	}
}

/* ---- one task ---- */

/* Opens NAME.dead for this slot if not yet. */
static int
slot_dead_queue(wk_slot *s)
{
	if (s->dead != NULL && s->dead_idx == s->cur) {
		return QP_OK;
	}
	qp_queue_free(s->dead); /* another task queue's */
	s->dead = NULL;
	s->dead_idx = s->cur;
	qp_queue_opts opts
	    = {.flags = QP_OPEN_CREATE | cli_open_flags(s->w->o)};
	opts.conn = cli_conn(s->w->o);
	return qp_queue_open(&s->dead, s->w->dead_addrs[s->cur], &opts);
}

/* ---- the result and the confirmation, in one step ---- */

/* Puts a result and confirms the task in one step (qp_queue_complete):
 * a worker killed at any point then leaves one result or none, and a
 * task that runs again leaves one. Where the two queues cannot do that
 * (QP_ENOTSUP: two servers, or kinds that differ) it is a put, then
 * task_done, said once on stderr: a kill between them leaves two. */
static int
slot_complete(wk_slot *s, const void *buf, size_t len, bool obj, bool *donep)
{
	wk *w = s->w;
	int rv;

	*donep = false;
	/* Tried for every task: with several task queues, some may pair
	 * with the results queue and some not (a refusal costs no
	 * request). */
	rv = obj ? qp_queue_complete_obj(s->q, s->res, buf, len, QP_FOREVER)
	         : qp_queue_complete(s->q, s->res, buf, len, QP_FOREVER);
	if (rv != QP_ENOTSUP) {
		*donep = rv == QP_OK;
		return rv;
	}
	if (!__atomic_exchange_n(&w->two_step, true, __ATOMIC_RELAXED)) {
		wk_log(w,
		    "%s; such results are put, then their tasks confirmed "
		    "(a worker killed in between leaves a second result)",
		    qp_errmsg());
	}
	return obj ? qp_queue_put_obj(s->res, buf, len, QP_FOREVER)
	           : qp_queue_put(s->res, buf, len, QP_FOREVER);
}

/* Puts the command's output to the results queue: less one final
 * newline (the end of its last line, as the shell's $(...) drops it),
 * unless --keep-newline; *donep: the task was confirmed with it. */
static int
slot_put_result(wk_slot *s, const wk_run *r, bool *donep)
{
	*donep = false;
	if (!s->w->o->json) {
		size_t len = r->len;
		if (!s->w->o->keep_newline && len > 0
		    && r->out[len - 1] == '\n') {
			len--;
		}
		return slot_complete(s, r->out, len, false, donep);
	}
	void *mp;
	size_t mplen;
	int rv = qpi_json_to_msgpack(r->out, r->len, &mp, &mplen);
	if (rv == QP_OK) {
		rv = slot_complete(s, mp, mplen, true, donep);
		free(mp);
	}
	return rv;
}

/* A failed attempt: back to the queue, or to NAME.dead after the last. */
static void
slot_failed(wk_slot *s, const void *item, size_t len, const char *why)
{
	wk *w = s->w;
	int rv;

	if (s->deliveries < w->max_attempts) {
		rv = slot_nack(s);
		wk_log(w,
		    "task failed (%s), attempt %u of %u; back to the queue",
		    why, (unsigned) s->deliveries, (unsigned) w->max_attempts);
		if (rv != QP_OK) {
			wk_log(w,
			    "cannot give the task back: %s (it returns "
			    "when its lease ends)",
			    qp_errmsg()[0] ? qp_errmsg() : qp_strerror(rv));
		}
		pthread_mutex_lock(&w->mu);
		w->n_retry++;
		cli_progress_tick(&w->prog);
		pthread_mutex_unlock(&w->mu);
		return;
	}
	if ((rv = slot_dead_queue(s)) == QP_OK) {
		rv = qp_queue_put_obj(s->dead, item, len, QP_FOREVER);
	}
	if (rv != QP_OK) {
		wk_log(w,
		    "task failed (%s) %u times; cannot move it to %s: %s", why,
		    (unsigned) s->deliveries, w->dead_addrs[s->cur],
		    qp_errmsg()[0] ? qp_errmsg() : qp_strerror(rv));
		(void) slot_nack(s);
		return;
	}
	(void) slot_done(s);
	wk_log(w, "task failed (%s), attempt %u of %u; moved to %s", why,
	    (unsigned) s->deliveries, (unsigned) w->max_attempts,
	    w->dead_addrs[s->cur]);
	pthread_mutex_lock(&w->mu);
	w->n_dead++;
	cli_progress_tick(&w->prog);
	pthread_mutex_unlock(&w->mu);
}

/* Runs one task got as item (a msgpack encoding) and settles it. */
static void
slot_task(wk_slot *s, const void *item, size_t len)
{
	wk *w = s->w;
	const void *in = item;
	size_t inlen = len, off, blen;
	char *json = NULL;
	char why[256];
	wk_run r;
	int rv;

	/* Delivered more often than allowed: its earlier workers died or
	 * lost it (a task that kills its worker would come back forever). */
	if (s->deliveries > w->max_attempts) {
		snprintf(why, sizeof(why),
		    "delivered %u times; its workers died or lost it",
		    (unsigned) s->deliveries);
		slot_failed(s, item, len, why);
		return;
	}

	/* The command's stdin: a bin's bytes, JSON text with --json, else
	 * the value's msgpack encoding (as qp_queue_get gives it). */
	if (w->o->json) {
		if (qpi_msgpack_to_json(item, len, &json, &inlen) == QP_OK) {
			in = json;
		}
	} else if (qpi_wire_bin_unwrap(item, len, &off, &blen)) {
		in = (const uint8_t *) item + off;
		inlen = blen;
	}
	wk_exec(s, in, inlen, &r);
	free(json);
	if (r.spawn_err != 0) {
		/* Not the task's fault: give it back and stop. */
		wk_describe(s, &r, why, sizeof(why));
		(void) slot_nack(s);
		wk_log(w, "%s; task given back, stopping", why);
		wk_fail(w, CLI_ERROR);
		return;
	}
	bool ok = !r.timed_out && WIFEXITED(r.status)
	    && WEXITSTATUS(r.status) == 0 && !r.toobig;
	if (!ok) {
		wk_describe(s, &r, why, sizeof(why));
		slot_failed(s, item, len, why);
		free(r.out);
		return;
	}
	bool done = false;
	if ((rv = slot_put_result(s, &r, &done)) == QP_ENOENT) {
		/* Its lease ran out first: another run's result counts. */
		wk_log(w, "result not stored: %s",
		    qp_errmsg()[0] ? qp_errmsg() : qp_strerror(rv));
		free(r.out);
		return;
	}
	if (rv != QP_OK) {
		snprintf(why, sizeof(why), "cannot put its output to %s: %s",
		    w->raddr, qp_errmsg()[0] ? qp_errmsg() : qp_strerror(rv));
		free(r.out);
		if (rv != QP_EINVAL && rv != QP_ETOOBIG) {
			/* The results queue is unreachable: this is no
			 * fault of the task. */
			(void) slot_nack(s);
			wk_log(w, "%s; task given back, stopping", why);
			wk_fail(w, cli_exit_code(rv));
			return;
		}
		slot_failed(s, item, len, why);
		return;
	}
	free(r.out);
	if (!done && (rv = slot_done(s)) != QP_OK) {
		wk_log(w,
		    "result stored, but the task could not be confirmed: %s "
		    "(it may run again)",
		    qp_errmsg()[0] ? qp_errmsg() : qp_strerror(rv));
	}
	pthread_mutex_lock(&w->mu);
	w->n_ok++;
	cli_progress_tick(&w->prog);
	pthread_mutex_unlock(&w->mu);
}

/* ---- the slots ---- */

static void *
slot_main(void *arg)
{
	wk_slot *s = arg;
	wk *w = s->w;
	const cli_opts *o = w->o;

	for (;;) {
		qp_duration wait = WK_SLICE_MS;
		bool last_try = false;

		pthread_mutex_lock(&w->mu);
		if (w->stop || w->tasks_left == 0) {
			pthread_mutex_unlock(&w->mu);
			break;
		}
		if (o->idle_exit != QP_FOREVER) {
			int64_t left
			    = w->last_ms + o->idle_exit - qpi_now_ms();
			if (left <= 0 && w->running == 0) {
				/* Idle: one last look, then every slot ends.
				 */
				last_try = true;
				wait = QP_NOWAIT;
			} else if (left > 0 && left < wait) {
				wait = left;
			}
		}
		if (w->tasks_left != UINT64_MAX) {
			w->tasks_left--;
		}
		pthread_mutex_unlock(&w->mu);

		void *item = NULL;
		size_t len = 0;
		int rv = slot_get(s, wait, &item, &len);

		pthread_mutex_lock(&w->mu);
		if (rv != QP_OK && w->tasks_left != UINT64_MAX) {
			w->tasks_left++;
		}
		if (rv == QP_OK) {
			w->running++;
			w->last_ms = qpi_now_ms();
		}
		pthread_mutex_unlock(&w->mu);
		if (rv == QP_EEMPTY && last_try) {
			pthread_mutex_lock(&w->mu);
			w->stop = true;
			pthread_mutex_unlock(&w->mu);
			break;
		}
		if (rv == QP_EEMPTY) {
			continue;
		}
		if (rv != QP_OK) {
			if (rv == QP_ECLOSED || rv == QP_ENOENT) {
				wk_log(w, "the queue is gone (%s); exiting",
				    qp_errmsg()[0] ? qp_errmsg()
				                   : qp_strerror(rv));
				wk_fail(w, CLI_CLOSED);
			} else {
				wk_log(w, "%s",
				    qp_errmsg()[0] ? qp_errmsg()
				                   : qp_strerror(rv));
				wk_fail(w,
				    cli_exit_code(rv) == CLI_USAGE
				        ? CLI_ERROR
				        : cli_exit_code(rv));
			}
			break;
		}
		slot_task(s, item, len);
		qp_free(item);
		pthread_mutex_lock(&w->mu);
		w->running--;
		w->last_ms = qpi_now_ms();
		pthread_mutex_unlock(&w->mu);
	}
	pthread_mutex_lock(&w->mu);
	if (--w->alive == 0) {
		uint64_t one = 1;
		if (write(w->efd, &one, sizeof(one)) < 0) {
			w->rc = CLI_ERROR;
		}
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* The environment of the command: ours, QPIPE_ATTEMPT replaced. */
static char **
wk_env(wk_slot *s)
{
	size_t n = 0, k = 0;

	while (environ[n] != NULL) {
		n++;
	}
	char **e = calloc(n + 2, sizeof(char *));
	if (e == NULL) {
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		if (strncmp(environ[i], WK_ATTEMPT_ENV, strlen(WK_ATTEMPT_ENV))
		    != 0) {
			e[k++] = environ[i];
		}
	}
	e[k++] = s->attempt;
	e[k] = NULL;
	snprintf(s->attempt, sizeof(s->attempt), WK_ATTEMPT_ENV "1");
	return e;
}

/* True when cmd names a program that can be run (PATH searched). */
static bool
wk_runnable(const char *cmd)
{
	if (strchr(cmd, '/') != NULL) {
		return access(cmd, X_OK) == 0;
	}
	const char *path = getenv("PATH");
	if (path == NULL) {
		path = "/usr/local/bin:/usr/bin:/bin";
	}
	while (*path != '\0') {
		const char *end = strchr(path, ':');
		size_t dl = end != NULL ? (size_t) (end - path) : strlen(path);
		char full[4096];
		int m = snprintf(full, sizeof(full), "%.*s%s%s", (int) dl,
		    path, dl > 0 ? "/" : "", cmd);
		if (m > 0 && (size_t) m < sizeof(full)
		    && access(full, X_OK) == 0) {
			return true;
		}
		if (end == NULL) {
			break;
		}
		path = end + 1;
	}
	return false;
}

/* Opens a slot's task and results queues. */
static int
slot_open(wk *w, wk_slot *s)
{
	qp_queue_opts opts = {.flags = QP_OPEN_CREATE | cli_open_flags(w->o)};
	qpi_addr a;
	int rv;

	opts.conn = cli_conn(w->o);
	/* an address of several servers is remote. */
	if (qpi_addr_parse(w->addr, QPI_ADDR_NAMED, &a) != QP_OK) {
		memset(&a, 0, sizeof(a));
		a.kind = QPI_ADDR_TCP;
	}
	opts.flags |= QP_OPEN_LEASE;
	opts.lease_ms = w->o->lease_ms;
	if (opts.lease_ms == 0 && w->o->timeout_set) {
		/* A task may run that long: hold it a while longer. */
		opts.lease_ms = (uint64_t) w->o->timeout + 10000;
	}
	for (size_t i = 0; i < w->naddrs; i++) {
		/* every task queue, first listed first */
		if ((rv = qp_queue_open(&s->qs[i], w->addrs[i], &opts))
		    != QP_OK) {
			return cli_fail(w->o, w->addrs[i], rv);
		}
	}
	s->q = s->qs[0];
	/* A third of the lease; a server's default lease is not known
	 * here: then once a second. */
	s->touch_ms = opts.lease_ms != 0 ? (int64_t) opts.lease_ms / 3
	    : a.kind == QPI_ADDR_SHM     ? 30000 / 3
	                                 : 1000;
	if (s->touch_ms < 1) {
		s->touch_ms = 1;
	}
	if (a.kind == QPI_ADDR_SHM && w->naddrs == 1) {
		if (w->shm_path[0] == '\0') {
			struct stat st;
			snprintf(w->shm_path, sizeof(w->shm_path),
			    "%s/qpipe.%s", qpi_shm_dir(), a.name);
			if (stat(w->shm_path, &st) != 0) {
				fprintf(stderr,
				    "qpipe: worker %s: cannot find %s: %s\n",
				    w->addr, w->shm_path, strerror(errno));
				return CLI_ERROR;
			}
			w->shm_ino = st.st_ino;
		}
	}
	opts
	    = (qp_queue_opts) {.flags = QP_OPEN_CREATE | cli_open_flags(w->o)};
	opts.conn = cli_conn(w->o);
	if ((rv = qp_queue_open(&s->res, w->raddr, &opts)) != QP_OK) {
		return cli_fail(w->o, w->raddr, rv);
	}
	if ((s->envp = wk_env(s)) == NULL) {
		fprintf(stderr, "qpipe: worker: out of memory\n");
		return CLI_ERROR;
	}
	return CLI_OK;
}

static void
wk_free(wk *w)
{
	for (size_t i = 0; i < w->nslots; i++) {
		wk_slot *s = &w->slots[i];
		for (size_t k = 0; k < WK_MAX_QUEUES; k++) {
			qp_queue_free(s->qs[k]); /* gives back a task held */
		}
		qp_queue_free(s->res);
		qp_queue_free(s->dead);
		free(s->envp);
	}
	free(w->slots);
	if (w->efd >= 0) {
		close(w->efd);
	}
	pthread_mutex_destroy(&w->mu);
}

/* Makes sure fds 0-2 are open, so that no pipe of ours lands there. */
static void
wk_std_fds(void)
{
	for (int fd = 0; fd <= 2; fd++) {
		if (fcntl(fd, F_GETFD) < 0) {
			int nfd = open("/dev/null", O_RDWR);
			if (nfd >= 0 && nfd != fd) {
				close(nfd);
			}
		}
	}
}

/* Waits for a signal or the end of every slot; returns the exit code. */
static int
wk_wait(wk *w, int sfd)
{
	for (;;) {
		struct pollfd p[2] = {{.fd = sfd, .events = POLLIN},
		    {.fd = w->efd, .events = POLLIN}};
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR) {
				continue;
			}
			return CLI_ERROR;
		}
		if (p[1].revents != 0) {
			return CLI_OK;
		}
		struct signalfd_siginfo si;
		if (read(sfd, &si, sizeof(si)) != (ssize_t) sizeof(si)) {
			continue;
		}
		pthread_mutex_lock(&w->mu);
		bool again = w->stop;
		size_t running = w->running;
		w->stop = true;
		pthread_mutex_unlock(&w->mu);
		if (again) {
			wk_log(w,
			    "%s again: exiting now, %zu task(s) "
			    "unfinished go back to the queue",
			    strsignal((int) si.ssi_signo), running);
			fflush(stdout);
			_exit(128 + (int) si.ssi_signo);
		}
		wk_log(w, "%s: taking no new task; waiting for %zu running",
		    strsignal((int) si.ssi_signo), running);
	}
}

int
cmd_worker(cli_opts *o)
{
	wk w = {0};
	sigset_t sigs;
	int sfd = -1, rc = CLI_OK;

	w.o = o;
	w.addr = o->args[0];
	w.raddr = o->results;
	w.efd = -1;
	if (w.raddr == NULL) {
		return cli_usage_error(o, "--results ADDR is required");
	}
	if (o->cmdv[0] == NULL) {
		return cli_usage_error(o,
		    "no command: -- CMD [ARG...] ends "
		    "the line");
	}
	if (!wk_runnable(o->cmdv[0])) {
		return cli_usage_error(o,
		    "cannot run '%s': not found or not executable",
		    o->cmdv[0]);
	}
	/* every ADDR is a task queue, first listed first. */
	w.addrs = o->args;
	w.naddrs = (size_t) o->nargs;
	if (w.naddrs > WK_MAX_QUEUES) {
		return cli_usage_error(
		    o, "at most %d task queues", WK_MAX_QUEUES);
	}
	int rv = qpi_part_check(w.raddr);
	if (rv != QP_OK) {
		return cli_fail(o, w.raddr, rv);
	}
	for (size_t i = 0; i < w.naddrs; i++) {
		const char *t = w.addrs[i], *name = strrchr(t, '/');
		if ((rv = qpi_part_check(t)) != QP_OK) {
			return cli_fail(o, t, rv);
		}
		name = name != NULL ? name + 1 : t;
		if (strlen(name) + 5 > QP_NAME_MAX) {
			return cli_usage_error(o,
			    "the queue's name is too long for its "
			    "dead-letter queue NAME.dead (%d bytes at most)",
			    QP_NAME_MAX - 5);
		}
		snprintf(
		    w.dead_addrs[i], sizeof(w.dead_addrs[i]), "%s.dead", t);
	}
	snprintf(w.dead_addr, sizeof(w.dead_addr), "%s", w.dead_addrs[0]);
	w.max_attempts = o->max_attempts == 0 ? 3
	    : o->max_attempts > UINT32_MAX    ? UINT32_MAX
	                                      : (uint32_t) o->max_attempts;
	w.nslots = o->concurrency == 0 ? 1 : (size_t) o->concurrency;
	w.tasks_left = o->max_tasks == 0 ? UINT64_MAX : o->max_tasks;
	w.last_ms = qpi_now_ms();
	pthread_mutex_init(&w.mu, NULL);

	/* Blocked before any thread starts (nng's included): the signals
	 * reach the signalfd only. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	wk_std_fds();
	signal(SIGPIPE, SIG_IGN);
	if ((w.slots = calloc(w.nslots, sizeof(wk_slot))) == NULL) {
		fprintf(stderr, "qpipe: worker: out of memory\n");
		wk_free(&w);
		return CLI_ERROR;
	}
	for (size_t i = 0; i < w.nslots && rc == CLI_OK; i++) {
		w.slots[i].w = &w;
		w.slots[i].idx = (int) i;
		rc = slot_open(&w, &w.slots[i]);
	}
	if (rc != CLI_OK) {
		wk_free(&w);
		return rc;
	}
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	w.efd = eventfd(0, EFD_CLOEXEC);
	if (sfd < 0 || w.efd < 0) {
		fprintf(stderr, "qpipe: worker: %s\n", strerror(errno));
		if (sfd >= 0) {
			close(sfd);
		}
		wk_free(&w);
		return CLI_ERROR;
	}
	cli_progress_start(&w.prog, "worker: tasks");
	w.alive = w.nslots;
	for (size_t i = 0; i < w.nslots; i++) {
		if (pthread_create(
		        &w.slots[i].th, NULL, slot_main, &w.slots[i])
		    != 0) {
			fprintf(
			    stderr, "qpipe: worker: cannot start a thread\n");
			wk_fail(&w, CLI_ERROR);
			pthread_mutex_lock(&w.mu);
			w.alive -= w.nslots - i;
			bool none = w.alive == 0;
			pthread_mutex_unlock(&w.mu);
			if (none) {
				uint64_t one = 1;
				(void) !write(w.efd, &one, sizeof(one));
			}
			break;
		}
		w.slots[i].started = true;
	}
	rc = wk_wait(&w, sfd);
	for (size_t i = 0; i < w.nslots; i++) {
		if (w.slots[i].started) {
			pthread_join(w.slots[i].th, NULL);
		}
	}
	cli_progress_end(&w.prog);
	if (w.prog.tty) {
		wk_log(&w, "%llu done, %llu retried, %llu dead-lettered",
		    (unsigned long long) w.n_ok,
		    (unsigned long long) w.n_retry,
		    (unsigned long long) w.n_dead);
	}
	close(sfd);
	if (rc == CLI_OK) {
		rc = w.rc;
	}
	wk_free(&w);
	return rc;
}
