/*
 * queue_hello.c - Python's classic multiprocessing example, in C: one child
 * puts a string into a Queue, another gets it and prints it, the parent
 * joins both (the putting child first: its put returned only once the item
 * was in shared memory, so joining it can never deadlock).
 *
 * usage: queue_hello [ADDR [MESSAGE]]   (default: an anonymous queue)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qpipe.h"

int
main(int argc, char **argv)
{
	const char *msg = argc > 2 ? argv[2] : "hello from a child process";
	qp_queue_opts opts = {.flags = QP_OPEN_CREATE};
	qp_queue *q;
	int rv;

	rv = argc > 1 ? qp_queue_open(&q, argv[1], &opts)
	              : qp_queue_anon(&q, &opts);
	if (rv != QP_OK) {
		fprintf(stderr, "queue_hello: %s\n", qp_errmsg());
		return 1;
	}
	pid_t putter = fork();
	if (putter == 0) {
		_exit(qp_queue_put(q, msg, strlen(msg), QP_FOREVER));
	}
	pid_t getter = fork();
	if (getter == 0) {
		void *buf;
		size_t len;
		if ((rv = qp_queue_get(q, &buf, &len, 5000)) != QP_OK) {
			_exit(rv);
		}
		printf("got: %.*s\n", (int) len, (char *) buf);
		fflush(stdout);
		qp_free(buf);
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
