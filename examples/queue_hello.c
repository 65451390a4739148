/*
 * queue_hello.c - Python's classic multiprocessing example, in C: one child
 * puts a string into a Queue, another gets it and prints it, the parent
 * joins both (the putting child first: its put returned only once the item
 * was in the queue, so joining it can never deadlock).
 *
 * A shared-memory queue (anonymous, or shm://NAME) is opened once, before
 * fork(), and the children use the handle they inherit, as in Python. A
 * queue served by qpiped (tcp://, ipc://, tls+tcp://) is a connection,
 * whose network layer does not survive fork(): the parent opens nothing
 * and each child opens (creates) its own handle to the same queue.
 *
 * usage: queue_hello [ADDR [MESSAGE]]   (default: an anonymous queue)
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qpipe.h"

/* True for an address served by qpiped. */
static bool
is_remote(const char *addr)
{
	return addr != NULL && strstr(addr, "://") != NULL
	    && strncmp(addr, "shm://", 6) != 0;
}

/* The handle a child uses: the inherited one, or for a remote address its
 * own (NULL on failure, the cause printed). */
static qp_queue *
child_queue(qp_queue *q, const char *addr)
{
	qp_queue_opts opts = {.flags = QP_OPEN_CREATE};
	qp_queue *mine;

	if (!is_remote(addr)) {
		return q;
	}
	if (qp_queue_open(&mine, addr, &opts) != QP_OK) {
		fprintf(stderr, "queue_hello: child: %s\n", qp_errmsg());
		return NULL;
	}
	return mine;
}

/* Lets go of a child's handle: its own is closed (a remote get is
 * confirmed on close at the latest). */
static void
child_done(qp_queue *q, qp_queue *inherited)
{
	if (q != inherited) {
		qp_queue_free(q);
	}
}

int
main(int argc, char **argv)
{
	const char *addr = argc > 1 ? argv[1] : NULL;
	const char *msg = argc > 2 ? argv[2] : "hello from a child process";
	qp_queue_opts opts = {.flags = QP_OPEN_CREATE};
	qp_queue *q = NULL;
	int rv = QP_OK;

	if (addr == NULL) {
		rv = qp_queue_anon(&q, &opts);
	} else if (!is_remote(addr)) {
		rv = qp_queue_open(&q, addr, &opts);
	}
	if (rv != QP_OK) {
		fprintf(stderr, "queue_hello: %s\n", qp_errmsg());
		return 1;
	}
	pid_t putter = fork();
	if (putter == 0) {
		qp_queue *cq = child_queue(q, addr);
		if (cq == NULL) {
			_exit(1);
		}
		if ((rv = qp_queue_put(cq, msg, strlen(msg), QP_FOREVER))
		    != QP_OK) {
			fprintf(stderr, "queue_hello: put: %s\n", qp_errmsg());
		}
		child_done(cq, q);
		_exit(rv);
	}
	pid_t getter = fork();
	if (getter == 0) {
		qp_queue *cq = child_queue(q, addr);
		void *buf;
		size_t len;
		if (cq == NULL) {
			_exit(1);
		}
		if ((rv = qp_queue_get(cq, &buf, &len, 5000)) != QP_OK) {
			fprintf(stderr, "queue_hello: get: %s\n", qp_errmsg());
			child_done(cq, q);
			_exit(rv);
		}
		printf("got: %.*s\n", (int) len, (char *) buf);
		fflush(stdout);
		qp_free(buf);
		child_done(cq, q);
		_exit(0);
	}
	int st1, st2;
	waitpid(putter, &st1, 0);
	waitpid(getter, &st2, 0);
	qp_queue_free(q);
	if (!WIFEXITED(st1) || WEXITSTATUS(st1) != 0 || !WIFEXITED(st2)
	    || WEXITSTATUS(st2) != 0) {
		fprintf(stderr, "queue_hello: a child failed\n");
		return 1;
	}
	return 0;
}
