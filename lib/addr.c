/*
 * addr.c - parses the one string that names a queue or a pipe and picks the
 * path its bytes take: shm://name, tcp://host:port/name,
 * tls+tcp://host:port/name, ipc:///path/to/socket/name. Pure functions, no
 * locking. Every malformed address gets QP_EINVAL and a message naming what
 * is wrong.
 */
#include "qpi.h"
#include "queue.h" /* qpi_part_check */

#include <stdio.h>
#include <string.h>

static int
addr_name(const char *whole, const char *name, size_t len, qpi_addr *a)
{
	if (len == 0) {
		return qpi_err(
		    QP_EINVAL, "address '%s' has no queue name", whole);
	}
	if (len > QP_NAME_MAX) {
		return qpi_err(QP_EINVAL,
		    "queue name in '%s' is %zu bytes; at most %d", whole, len,
		    QP_NAME_MAX);
	}
	if (!qpi_name_valid(name, len)) {
		return qpi_err(QP_EINVAL,
		    "queue name '%.*s' may use only A-Z a-z 0-9 . _ - (and "
		    "is not . or ..)",
		    (int) len, name);
	}
	memcpy(a->name, name, len);
	a->name[len] = '\0';
	return QP_OK;
}

static bool
host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
	    || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

static bool
ip6_char(char c)
{
	return (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
	    || (c >= '0' && c <= '9') || c == ':' || c == '.';
}

/* Parses "host[:port]" (s..end) into a->host and a->port. */
static int
addr_hostport(const char *whole, const char *s, const char *end, unsigned mode,
    qpi_addr *a)
{
	const char *host = s, *hend, *p;
	bool v6 = false;

	if (*s == '[') {
		host = s + 1;
		hend = memchr(host, ']', (size_t) (end - host));
		if (hend == NULL) {
			return qpi_err(QP_EINVAL,
			    "address '%s': '[' of an IPv6 host has no ']'",
			    whole);
		}
		for (p = host; p < hend; p++) {
			if (!ip6_char(*p)) {
				return qpi_err(QP_EINVAL,
				    "address '%s': '%c' is not allowed in an "
				    "IPv6 host",
				    whole, *p);
			}
		}
		p = hend + 1;
		v6 = true;
	} else {
		for (p = s; p < end && *p != ':'; p++) {
			if (!host_char(*p) && !(*p == '*' && p == s)) {
				return qpi_err(QP_EINVAL,
				    "address '%s': '%c' is not allowed in a "
				    "host name",
				    whole, *p);
			}
		}
		hend = p;
	}
	size_t hlen = (size_t) (hend - host);
	if (hlen == 0 && !(mode & QPI_ADDR_PORT0)) {
		return qpi_err(QP_EINVAL, "address '%s' has no host", whole);
	}
	if (hlen > QPI_HOST_MAX) {
		return qpi_err(
		    QP_EINVAL, "address '%s': host is too long", whole);
	}
	memcpy(a->host, host, hlen);
	a->host[hlen] = '\0';

	a->port = QP_DEFAULT_PORT;
	if (p < end) {
		if (*p != ':') {
			return qpi_err(QP_EINVAL,
			    "address '%s': expected ':PORT' after the host",
			    whole);
		}
		p++;
		if (p == end) {
			return qpi_err(QP_EINVAL,
			    "address '%s': ':' is not followed by a port",
			    whole);
		}
		unsigned long port = 0;
		for (; p < end; p++) {
			if (*p < '0' || *p > '9') {
				return qpi_err(QP_EINVAL,
				    "address '%s': port must be a number",
				    whole);
			}
			port = port * 10 + (unsigned long) (*p - '0');
			if (port > 65535) {
				return qpi_err(QP_EINVAL,
				    "address '%s': port must be at most 65535",
				    whole);
			}
		}
		if (port == 0 && !(mode & QPI_ADDR_PORT0)) {
			return qpi_err(QP_EINVAL,
			    "address '%s': port 0 is only for listening",
			    whole);
		}
		a->port = (uint16_t) port;
	}
	snprintf(a->url, sizeof(a->url), "%s://%s%s%s:%u",
	    a->kind == QPI_ADDR_TLS ? "tls+tcp" : "tcp", v6 ? "[" : "",
	    a->host, v6 ? "]" : "", (unsigned) a->port);
	return QP_OK;
}

int
qpi_addr_parse(const char *s, unsigned mode, qpi_addr *a)
{
	const char *rest, *slash, *end;
	bool named = (mode & QPI_ADDR_NAMED) != 0;

	memset(a, 0, sizeof(*a));
	if (s == NULL || *s == '\0') {
		return qpi_err(QP_EINVAL, "empty address");
	}
	size_t n = strnlen(s, 4096);
	if (n >= 4096) {
		return qpi_err(QP_EINVAL, "address is too long");
	}
	end = s + n;

	const char *sep = strstr(s, "://");
	if (sep == NULL) {
		if (!named) {
			return qpi_err(QP_EINVAL,
			    "'%s' is not a server address (tcp://HOST:PORT, "
			    "tls+tcp://HOST:PORT or ipc:///PATH)",
			    s);
		}
		a->kind = QPI_ADDR_SHM;
		return addr_name(s, s, n, a);
	}
	size_t slen = (size_t) (sep - s);
	rest = sep + 3;
	if (slen == 3 && strncmp(s, "shm", 3) == 0) {
		if (!named) {
			return qpi_err(
			    QP_EINVAL, "'%s' names a queue, not a server", s);
		}
		a->kind = QPI_ADDR_SHM;
		return addr_name(s, rest, (size_t) (end - rest), a);
	}
	if (slen == 3 && strncmp(s, "tcp", 3) == 0) {
		a->kind = QPI_ADDR_TCP;
	} else if (slen == 7 && strncmp(s, "tls+tcp", 7) == 0) {
		a->kind = QPI_ADDR_TLS;
	} else if (slen == 3 && strncmp(s, "ipc", 3) == 0) {
		a->kind = QPI_ADDR_IPC;
	} else {
		return qpi_err(QP_EINVAL,
		    "address '%s': unknown scheme '%.*s' (use shm://, tcp://, "
		    "tls+tcp:// or ipc://)",
		    s, (int) (slen > 32 ? 32 : slen), s);
	}

	if (a->kind == QPI_ADDR_IPC) {
		const char *pend = end;
		if (named) {
			slash = strrchr(rest, '/');
			if (slash == NULL || slash == rest) {
				return qpi_err(QP_EINVAL,
				    "address '%s': expected "
				    "ipc:///PATH/TO/SOCKET/NAME",
				    s);
			}
			int rv = addr_name(
			    s, slash + 1, (size_t) (end - slash - 1), a);
			if (rv != QP_OK) {
				return rv;
			}
			pend = slash;
		}
		size_t plen = (size_t) (pend - rest);
		if (plen == 0) {
			return qpi_err(
			    QP_EINVAL, "address '%s' has no socket path", s);
		}
		if (plen > QPI_PATH_MAX) {
			return qpi_err(QP_EINVAL,
			    "address '%s': socket path is %zu bytes; a Unix "
			    "socket path holds at most %d",
			    s, plen, QPI_PATH_MAX);
		}
		memcpy(a->path, rest, plen);
		a->path[plen] = '\0';
		snprintf(a->url, sizeof(a->url), "ipc://%s", a->path);
		return QP_OK;
	}

	/* tcp and tls+tcp: host[:port][/name] */
	slash = memchr(rest, '/', (size_t) (end - rest));
	if (rest[0] == '[') {
		const char *rb = memchr(rest, ']', (size_t) (end - rest));
		if (rb != NULL) {
			slash = memchr(rb, '/', (size_t) (end - rb));
		}
	}
	const char *hpend = slash != NULL ? slash : end;
	int rv = addr_hostport(s, rest, hpend, mode, a);
	if (rv != QP_OK) {
		return rv;
	}
	if (named) {
		if (slash == NULL) {
			return qpi_err(QP_EINVAL,
			    "address '%s' has no queue name (expected "
			    "%s://HOST:PORT/NAME)",
			    s, a->kind == QPI_ADDR_TLS ? "tls+tcp" : "tcp");
		}
		return addr_name(s, slash + 1, (size_t) (end - slash - 1), a);
	}
	if (slash != NULL && slash + 1 != end) {
		return qpi_err(QP_EINVAL,
		    "'%s' names a queue; a server address ends after the port",
		    s);
	}
	return QP_OK;
}

QP_API int
qp_addr_check(const char *addr)
{
	qpi_addr a;

	/* several servers, one queue (part.c) */
	if (addr != NULL && strchr(addr, ',') != NULL) {
		return qpi_part_check(addr);
	}
	return qpi_addr_parse(addr, QPI_ADDR_NAMED, &a);
}
