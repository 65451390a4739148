/*
 * sp_raw.h - a raw SP peer for the tests that speak qpiped's wire by hand
 * (test_conn_limits, test_spnet): a plain socket dialled to a tcp:// or
 * ipc:// URL, the req0 handshake, a wait for the server to close the
 * connection, and a TCP proxy put in front of a server that passes, cuts
 * or drops what the client sends. Include after qps_testsrv.h (CHECK,
 * tsrv_now_ms, tsrv_sleep_ms). Header-only (static inline), no state; a
 * proxy's fields are shared by its thread and the test's without locks
 * (the test reads its counters once the client is done with it).
 */
#ifndef SP_RAW_H
#define SP_RAW_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
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

/*
 * A TCP proxy in front of a server on 127.0.0.1:srv_port, run by
 * spr_proxy_start on a thread of its own until spr_proxy_stop: one
 * connection at a time, relayed both ways. Each read of the client's
 * bytes goes through cut, if set (and cut(px, first, NULL, 0, ...) starts
 * each connection): it returns how many of them to pass on, and sets
 * *drop to drop both sides after those (after cut_wait_ms, before any
 * more of the server's bytes reach the client, if that is > 0). Setting
 * drop_first drops the first connection at once.
 */
typedef struct spr_proxy {
	int lfd;
	uint16_t port; /* where the proxy listens */
	uint16_t srv_port;
	int poll_ms;
	int cut_wait_ms;
	size_t (*cut)(struct spr_proxy *px, bool first, const uint8_t *buf,
	    size_t n, bool *drop);
	void *arg; /* cut's */
	int conns; /* connections accepted */
	volatile bool drop_first;
	volatile bool stop;
	pthread_t thr;
} spr_proxy;

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

/* The proxy's thread. */
static inline void *
spr_proxy_main(void *arg)
{
	spr_proxy *px = arg;

	while (!px->stop) {
		int c, s;
		if (!spr_accept_dial(
		        px->lfd, px->srv_port, px->poll_ms, &c, &s)) {
			continue;
		}
		bool first = px->conns++ == 0, drop = false;
		if (px->cut != NULL) {
			px->cut(px, first, NULL, 0, &drop);
		}
		while (!px->stop && !drop && !(first && px->drop_first)) {
			struct pollfd p[2] = {{.fd = c, .events = POLLIN},
			    {.fd = s, .events = POLLIN}};
			uint8_t buf[65536];
			if (poll(p, 2, px->poll_ms) <= 0) {
				continue;
			}
			if (p[0].revents) {
				ssize_t n = read(c, buf, sizeof(buf));
				size_t pass;
				if (n <= 0) {
					break;
				}
				pass = px->cut == NULL
				    ? (size_t) n
				    : px->cut(
				        px, first, buf, (size_t) n, &drop);
				if (pass > 0
				    && write(s, buf, pass) != (ssize_t) pass) {
					break;
				}
				if (drop && px->cut_wait_ms > 0) {
					tsrv_sleep_ms(px->cut_wait_ms);
					break;
				}
			}
			if (p[1].revents) {
				ssize_t n = read(s, buf, sizeof(buf));
				if (n <= 0 || write(c, buf, (size_t) n) != n) {
					break;
				}
			}
		}
		close(c);
		close(s);
	}
	return NULL;
}

/* Listens on 127.0.0.1, port 0 (px->port), and starts the proxy's thread
 * for the server at url (tcp://127.0.0.1:P). */
static inline void
spr_proxy_start(spr_proxy *px, const char *url, int backlog)
{
	px->srv_port = (uint16_t) atoi(strrchr(url, ':') + 1);
	px->lfd = spr_listen(backlog, &px->port);
	CHECK(pthread_create(&px->thr, NULL, spr_proxy_main, px) == 0);
}

/* Stops the proxy's thread and closes its socket. */
static inline void
spr_proxy_stop(spr_proxy *px)
{
	px->stop = true;
	pthread_join(px->thr, NULL);
	close(px->lfd);
}

#endif /* SP_RAW_H */
