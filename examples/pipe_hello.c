/*
 * pipe_hello.c - multiprocessing.Pipe's example in C: a child sends a
 * string through a duplex pipe, the parent receives and prints it, answers,
 * and the child prints the answer. Then the child exits and the parent's
 * next recv sees end of file, not a hang.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qpipe.h"

int
main(void)
{
	qp_conn *a, *b;
	void *buf;
	size_t len;
	int rv;

	if (qp_pipe(&a, &b, true) != QP_OK) {
		fprintf(stderr, "pipe_hello: %s\n", qp_errmsg());
		return 1;
	}
	pid_t child = fork();
	if (child == 0) {
		qp_conn_free(a);
		const char *msg = "hello through a pipe";
		if (qp_conn_send_bytes(b, msg, 0, strlen(msg)) != QP_OK
		    || qp_conn_recv_bytes(b, &buf, &len, SIZE_MAX) != QP_OK) {
			_exit(1);
		}
		printf("child got: %.*s\n", (int) len, (char *) buf);
		fflush(stdout);
		qp_free(buf);
		_exit(0);
	}
	qp_conn_free(b);
	if ((rv = qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX)) != QP_OK) {
		fprintf(stderr, "pipe_hello: recv: %s\n", qp_strerror(rv));
		return 1;
	}
	printf("parent got: %.*s\n", (int) len, (char *) buf);
	fflush(stdout);
	qp_free(buf);
	qp_conn_send_bytes(a, "and hello back", 0, 14);
	rv = qp_conn_recv_bytes(a, &buf, &len, SIZE_MAX);
	int st;
	waitpid(child, &st, 0);
	printf("parent's next recv: %s\n",
	    rv == QP_ECLOSED ? "end of file" : qp_strerror(rv));
	qp_conn_free(a);
	return rv == QP_ECLOSED && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0
	                                                                 : 1;
}
