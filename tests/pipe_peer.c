/*
 * pipe_peer.c - the pipe tests' helper program (built as qp_pipe_peer,
 * not installed). Each mode is one end of a scenario:
 *
 *   seed MESSAGE           the seed program: a forked child sends MESSAGE
 *                          through a duplex pipe; the parent receives it
 *                          and prints it
 *   listen URL             listens (port 0 allowed), prints the bound URL,
 *                          accepts one connection, prints the message it
 *                          gets, answers "ack: MESSAGE", waits for EOF
 *   dial URL MESSAGE [MS]  dials (retrying for MS, default 5000), sends
 *                          MESSAGE and prints the answer
 *   hold URL               dials, sends "ready", then blocks in recv
 *   stream URL COUNT SEED  dials, sends COUNT messages of random sizes,
 *                          then expects their checksum back
 *
 * Exit status: 0 done, 1 usage, 2 a call failed (named on stderr).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipe_util.h"
#include "qpipe.h"

static int
fail(const char *what, int rv)
{
	fprintf(stderr, "qp_pipe_peer: %s: %s (%s)\n", what, qp_strerror(rv),
	    qp_errmsg());
	return 2;
}

static int
print_msg(qp_conn *c, const char *prefix)
{
	void *buf;
	size_t len;
	int rv = qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX);

	if (rv != QP_OK) {
		return fail("recv", rv);
	}
	printf("%s%.*s\n", prefix, (int) len, (const char *) buf);
	fflush(stdout);
	qp_free(buf);
	return 0;
}

static int
mode_seed(const char *msg)
{
	qp_conn *a, *b;
	int rv;

	if ((rv = qp_pipe(&a, &b, true)) != QP_OK) {
		return fail("pipe", rv);
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 2;
	}
	if (pid == 0) {
		qp_conn_close(a);
		rv = qp_conn_send_bytes(b, msg, 0, strlen(msg));
		_exit(rv == QP_OK ? 0 : fail("send", rv));
	}
	qp_conn_close(b);
	rv = print_msg(a, "");
	qp_conn_free(a);
	qp_conn_free(b);
	int st = pu_wait_child(pid);
	return rv != 0 ? rv : st;
}

static int
mode_listen(const char *url)
{
	qp_listener *l;
	qp_conn *c;
	void *buf;
	size_t len;
	int rv;

	if ((rv = qp_listen(&l, url)) != QP_OK) {
		return fail("listen", rv);
	}
	printf("%s\n", qp_listener_url(l));
	fflush(stdout);
	if ((rv = qp_listener_accept(l, &c, 30000)) != QP_OK) {
		qp_listener_free(l);
		return fail("accept", rv);
	}
	if ((rv = qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX)) != QP_OK) {
		return fail("recv", rv);
	}
	printf("%.*s\n", (int) len, (const char *) buf);
	fflush(stdout);
	char *ack = malloc(len + 6);
	memcpy(ack, "ack: ", 5);
	memcpy(ack + 5, buf, len);
	rv = qp_conn_send_bytes(c, ack, 0, len + 5);
	free(ack);
	qp_free(buf);
	if (rv != QP_OK) {
		return fail("send", rv);
	}
	/* wait for the dialer to hang up */
	rv = qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX);
	if (rv != QP_ECLOSED) {
		return fail("waiting for end of file", rv);
	}
	qp_conn_free(c);
	qp_listener_free(l);
	return 0;
}

static int
mode_dial(const char *url, const char *msg, qp_duration ms)
{
	qp_conn *c;
	int rv;

	if ((rv = qp_dial(&c, url, ms)) != QP_OK) {
		return fail("dial", rv);
	}
	if ((rv = qp_conn_send_bytes(c, msg, 0, strlen(msg))) != QP_OK) {
		return fail("send", rv);
	}
	rv = print_msg(c, "");
	qp_conn_free(c);
	return rv;
}

static int
mode_hold(const char *url)
{
	qp_conn *c;
	void *buf;
	size_t len;
	int rv;

	if ((rv = qp_dial(&c, url, 5000)) != QP_OK) {
		return fail("dial", rv);
	}
	if ((rv = qp_conn_send_bytes(c, "ready", 0, 5)) != QP_OK) {
		return fail("send", rv);
	}
	rv = qp_conn_recv_bytes(c, &buf, &len, SIZE_MAX);
	return fail("recv returned", rv);
}

static int
mode_stream(const char *url, size_t count, uint64_t seed)
{
	uint8_t *block = malloc(PU_BLOCK);
	pu_stream s;
	qp_conn *c;
	uint64_t theirs = 0;
	size_t n = 0;
	int rv;

	if (block == NULL) {
		return 2;
	}
	if ((rv = qp_dial(&c, url, 5000)) != QP_OK) {
		return fail("dial", rv);
	}
	pu_init(&s, block, seed);
	for (size_t i = 0; i < count; i++) {
		size_t len;
		const uint8_t *m = pu_msg(&s, &len);
		pu_sum(&s, m, len);
		if ((rv = qp_conn_send_bytes(c, m, 0, len)) != QP_OK) {
			return fail("send", rv);
		}
	}
	if ((rv = qp_conn_recv_bytes_into(c, &theirs, 8, 0, &n)) != QP_OK) {
		return fail("recv checksum", rv);
	}
	qp_conn_free(c);
	free(block);
	if (n != 8 || theirs != s.sum) {
		fprintf(stderr, "qp_pipe_peer: checksums differ\n");
		return 2;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "seed") == 0) {
		return mode_seed(argv[2]);
	}
	if (argc == 3 && strcmp(argv[1], "listen") == 0) {
		return mode_listen(argv[2]);
	}
	if ((argc == 4 || argc == 5) && strcmp(argv[1], "dial") == 0) {
		return mode_dial(
		    argv[2], argv[3], argc == 5 ? atoll(argv[4]) : 5000);
	}
	if (argc == 3 && strcmp(argv[1], "hold") == 0) {
		return mode_hold(argv[2]);
	}
	if (argc == 5 && strcmp(argv[1], "stream") == 0) {
		return mode_stream(argv[2],
		    (size_t) strtoull(argv[3], NULL, 10),
		    strtoull(argv[4], NULL, 10));
	}
	fprintf(stderr,
	    "usage: qp_pipe_peer seed MESSAGE | listen URL | dial URL MESSAGE "
	    "[MS] | hold URL | stream URL COUNT SEED\n");
	return 1;
}
