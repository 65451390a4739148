/*
 * sp_raw.h - a raw SP peer for the tests that speak qpiped's wire by hand
 * (test_conn_limits, test_spnet): a plain socket dialled to a tcp:// or
 * ipc:// URL, the req0 handshake, a wait for the server to close the
 * connection, and the listen / accept-and-dial steps of a TCP proxy put in
 * front of a server. Include after qps_testsrv.h (CHECK, tsrv_now_ms).
 * Header-only (static inline), no state, no locking.
 */
#ifndef SP_RAW_H
#define SP_RAW_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The handshake a req0 peer sends: SP version 0, protocol 0x30. */
static const uint8_t spr_hs_req0[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0};

/* A blocking socket connected to url (tcp://127.0.0.1:P or ipc://PATH);
 * rcvbuf > 0 sets its receive buffer first. */
static inline int
spr_dial(const char *url, int rcvbuf)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct sockaddr_in sin = {.sin_family = AF_INET};
	bool ipc = strncmp(url, "ipc://", 6) == 0;
	int fd;

	if (ipc) {
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", url + 6);
	} else {
		const char *p = strrchr(url, ':');
		CHECK(p != NULL);
		sin.sin_port = htons((uint16_t) atoi(p + 1));
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	}
	fd = socket(ipc ? AF_UNIX : AF_INET, SOCK_STREAM, 0);
	CHECK(fd >= 0);
	CHECK(rcvbuf <= 0
	    || setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf))
	        == 0);
	CHECK(connect(fd,
	          ipc ? (struct sockaddr *) &sun : (struct sockaddr *) &sin,
	          ipc ? sizeof(sun) : sizeof(sin))
	    == 0);
	return fd;
}

/* Sends the req0 handshake on blocking fd and reads the server's (5 s). */
static inline void
spr_handshake(int fd)
{
	uint8_t got[8];
	size_t have = 0;
	long long end = tsrv_now_ms() + 5000;

	CHECK(write(fd, spr_hs_req0, 8) == 8);
	while (have < 8 && tsrv_now_ms() < end) {
		ssize_t n = read(fd, got + have, 8 - have);
		CHECK(n > 0);
		have += (size_t) n;
	}
	CHECK(have == 8);
}

/* Milliseconds from t0 until the server closes fd (reading what it
 * sends), or -1 if it is still open limit_ms after t0. */
static inline long long
spr_ms_to_close(int fd, long long t0, long long limit_ms)
{
	uint8_t buf[256];

	while (tsrv_now_ms() - t0 < limit_ms) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 50) <= 0) {
			continue;
		}
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n == 0 || (n < 0 && errno != EAGAIN)) {
			return tsrv_now_ms() - t0;
		}
	}
	return -1;
}

/* True when the server closes fd within 5 s (whatever it sent first). */
static inline bool
spr_closed_by_server(int fd)
{
	return spr_ms_to_close(fd, tsrv_now_ms(), 5000) >= 0;
}

/* A listening TCP socket on 127.0.0.1, port 0; *port its bound port. */
static inline int
spr_listen(int backlog, uint16_t *port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK(fd >= 0);
	CHECK(bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0);
	CHECK(listen(fd, backlog) == 0);
	CHECK(getsockname(fd, (struct sockaddr *) &sa, &sl) == 0);
	*port = ntohs(sa.sin_port);
	return fd;
}

/* A proxy's next connection: waits up to ms for one on lfd, accepts it
 * (*c) and dials the server on 127.0.0.1:srv_port for it (*s). False
 * when none came or the server could not be reached (nothing open). */
static inline bool
spr_accept_dial(int lfd, uint16_t srv_port, int ms, int *c, int *s)
{
	struct pollfd lp = {.fd = lfd, .events = POLLIN};
	struct sockaddr_in sa = {.sin_family = AF_INET};

	if (poll(&lp, 1, ms) <= 0 || (*c = accept(lfd, NULL, NULL)) < 0) {
		return false;
	}
	sa.sin_port = htons(srv_port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	*s = socket(AF_INET, SOCK_STREAM, 0);
	if (*s < 0 || connect(*s, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
		close(*c);
		if (*s >= 0) {
			close(*s);
		}
		return false;
	}
	return true;
}

#endif /* SP_RAW_H */
