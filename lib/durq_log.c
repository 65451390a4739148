/*
 * durq_log.c - a durable queue's log file (durq.h sets out its layout):
 * the header, appending records with their CRC-32C (stored through a map
 * of the room allocated past the log's end, else written), making them
 * durable per the queue's fsync policy (synced at once, or by the flusher
 * thread of an "interval" queue), the room held back past the log's end for
 * the records it owes (qpi_dq_reserve), and the fsync policies
 * themselves.
 *
 * Locking: the calls on a qpi_durq run with d->mu held (durq_int.h); the
 * flusher takes it to note what to sync and drops it for the fdatasync.
 * The file-level helpers (paths, header, create) touch no shared state.
 */
#define _GNU_SOURCE
#include "durq_int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- fsync policies ---- */

int
qpi_fsync_parse(const char *s, qpi_fsync *f)
{
	unsigned long v = 0;

	f->mode = QPI_FSYNC_DEFAULT;
	f->ms = 0;
	if (s == NULL || *s == '\0') {
		return QP_OK;
	}
	if (strcmp(s, "always") == 0 || strcmp(s, "never") == 0) {
		f->mode = *s == 'a' ? QPI_FSYNC_ALWAYS : QPI_FSYNC_NEVER;
		return QP_OK;
	}
	if (strcmp(s, "interval") == 0) {
		v = QPI_FSYNC_DEF_MS;
	} else if (strncmp(s, "interval:", 9) == 0) {
		const char *p = s + 9;
		while (*p >= '0' && *p <= '9' && v <= QPI_FSYNC_MAX_MS) {
			v = v * 10 + (unsigned long) (*p++ - '0');
		}
		v = *p == '\0' ? v : 0; /* not digits alone, or too large */
	}
	if (v < 1 || v > QPI_FSYNC_MAX_MS) {
		return qpi_err(QP_EINVAL,
		    "fsync policy '%.40s' is not always, never or interval:MS "
		    "(MS from 1 to %u)",
		    s, QPI_FSYNC_MAX_MS);
	}
	f->mode = QPI_FSYNC_INTERVAL;
	f->ms = (uint32_t) v;
	return QP_OK;
}

void
qpi_fsync_format(const qpi_fsync *f, char *buf, size_t cap)
{
	static const char *const names[]
	    = {"default", "always", "interval", "never"};

	if (f->mode == QPI_FSYNC_INTERVAL) {
		snprintf(buf, cap, "interval:%u", (unsigned) f->ms);
	} else {
		snprintf(buf, cap, "%s",
		    names[f->mode <= QPI_FSYNC_NEVER ? f->mode : 0]);
	}
}

/* ---- the file ---- */

char *
qpi_dq_path(const char *path, const char *suffix)
{
	size_t n = strlen(path), k = strlen(suffix) + 1;
	char *t = malloc(n + k);

	if (t != NULL) {
		memcpy(t, path, n);
		memcpy(t + n, suffix, k);
	}
	return t;
}

void
qpi_dq_sync_dir(const char *path)
{
	char *copy = strdup(path);
	int fd = copy != NULL
	    ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
	    : -1;

	free(copy);
	if (fd >= 0) {
		(void) fsync(fd);
		close(fd);
	}
}

int
qpi_dq_errno(int e, const char *what, const char *path)
{
	if (e == ENOSPC || e == EDQUOT) {
		return qpi_err(QP_ENOSPC,
		    "no space left on the disk of %s (%s)", path, what);
	}
	return qpi_err(e == ENOENT ? QP_ENOENT : QP_ESYSTEM, "%s %s: %s", what,
	    path, strerror(e));
}

int
qpi_dq_pwritev_all(int fd, struct iovec *iov, int n, uint64_t off)
{
	while (n > 0) {
		ssize_t w = pwritev(fd, iov, n, (off_t) off);
		if (w < 0) {
			if (errno == EINTR) {
				continue;
			}
			return errno;
		}
		if (w == 0) {
			return ENOSPC;
		}
		off += (uint64_t) w;
		while (n > 0 && (size_t) w >= iov->iov_len) {
			w -= (ssize_t) iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *) iov->iov_base + w;
			iov->iov_len -= (size_t) w;
		}
	}
	return 0;
}

int
qpi_dq_hdr_write(int fd, const qpi_durq_cfg *c, bool sync)
{
	uint8_t h[DQ_HDR] = {0};
	struct iovec iov = {h, DQ_HDR};
	int e;

	memcpy(h, DQ_MAGIC, 8);
	qpi_le32_put(h + 8, DQ_VERSION);
	qpi_le32_put(h + 12, DQ_HDR);
	qpi_le64_put(h + 16, c->maxsize);
	qpi_le64_put(h + 24, c->capacity);
	qpi_le64_put(h + 32, c->max_message);
	qpi_le64_put(h + 40, c->lease_ms);
	qpi_le32_put(h + 48, c->fsync.mode);
	qpi_le32_put(h + 52, c->fsync.ms);
	qpi_le32_put(h + 60, qpi_crc32c(0, h, 60));
	if ((e = qpi_dq_pwritev_all(fd, &iov, 1, 0)) == 0 && sync
	    && fdatasync(fd) != 0) {
		e = errno;
	}
	return e;
}

int
qpi_dq_hdr_decode(
    const uint8_t *h, qpi_durq_cfg *c, const char *path, uint32_t *versionp)
{
	if (memcmp(h, DQ_MAGIC, 8) != 0) {
		return qpi_err(QP_ECORRUPT,
		    "%s is not a qpipe durable queue file (bad magic)", path);
	}
	if (qpi_le32_get(h + 60) != qpi_crc32c(0, h, 60)) {
		return qpi_err(
		    QP_ECORRUPT, "%s: the file header fails its CRC", path);
	}
	*versionp = qpi_le32_get(h + 8);
	if (*versionp < 1 || *versionp > DQ_VERSION
	    || qpi_le32_get(h + 12) != DQ_HDR) {
		return qpi_err(QP_EVERSION,
		    "%s: durable queue file of layout %u, this is %u", path,
		    (unsigned) qpi_le32_get(h + 8), DQ_VERSION);
	}
	c->maxsize = qpi_le64_get(h + 16);
	c->capacity = qpi_le64_get(h + 24);
	c->max_message = qpi_le64_get(h + 32);
	c->lease_ms = qpi_le64_get(h + 40);
	c->fsync.mode = qpi_le32_get(h + 48);
	c->fsync.ms = qpi_le32_get(h + 52);
	if (c->fsync.mode > QPI_FSYNC_NEVER || c->max_message == 0
	    || c->capacity == 0
	    || (c->fsync.mode == QPI_FSYNC_INTERVAL
	        && (c->fsync.ms < 1 || c->fsync.ms > QPI_FSYNC_MAX_MS))) {
		return qpi_err(QP_ECORRUPT,
		    "%s: the file header holds impossible settings", path);
	}
	return QP_OK;
}

/* Makes the file: header written to path.tmp, synced, renamed. */
int
qpi_dq_create_file(const char *path, const qpi_durq_cfg *c, bool excl)
{
	char *tmp = qpi_dq_path(path, ".tmp");
	int fd, e, rv = QP_OK;

	if (tmp == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		rv = qpi_dq_errno(errno, "cannot create", tmp);
		free(tmp);
		return rv;
	}
	if ((e = qpi_dq_hdr_write(fd, c, true)) != 0) {
		rv = qpi_dq_errno(e, "cannot write", tmp);
	}
	close(fd);
	/* link() fails if path exists: racing creators are decided here. */
	if (rv == QP_OK && link(tmp, path) != 0) {
		if (errno != EEXIST) {
			rv = qpi_dq_errno(errno, "cannot create", path);
		} else if (excl) {
			rv = qpi_err(QP_EEXIST, "%s exists already", path);
		}
	}
	unlink(tmp);
	free(tmp);
	if (rv == QP_OK) {
		qpi_dq_sync_dir(path);
	}
	return rv;
}

/* ---- appending ---- */

/* The log is mapped DQ_WIN bytes at a time for appends; a record larger
 * than half of that is written with pwritev. */
#define DQ_WIN (1u << 20)

void
qpi_dq_unmap(qpi_durq *d)
{
	if (d->win != NULL) {
		munmap(d->win, d->win_len);
		d->win = NULL;
	}
}

/* Where n bytes at file offset off can be stored through the map, or
 * NULL: not in the room allocated (the map must never touch a page past
 * the file's end: SIGBUS), too large, or no map to be had. */
static uint8_t *
dq_win_at(qpi_durq *d, uint64_t off, size_t n)
{
	if (!d->prealloc || n > DQ_WIN / 2 || off + n > d->alloc_end) {
		return NULL;
	}
	if (d->win == NULL || off < d->win_off
	    || off + n > d->win_off + d->win_len) {
		uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE);
		uint64_t at = off / page * page;
		void *m;
		qpi_dq_unmap(d);
		m = mmap(NULL, DQ_WIN, PROT_READ | PROT_WRITE, MAP_SHARED,
		    d->fd, (off_t) at);
		if (m == MAP_FAILED) {
			return NULL;
		}
		d->win = m;
		d->win_off = at;
		d->win_len = DQ_WIN;
	}
	return d->win + (off - d->win_off);
}

int
qpi_dq_append(qpi_durq *d, const uint8_t *b1, size_t n1, const void *b2,
    size_t n2, const uint8_t *b3, size_t n3, uint64_t *offp)
{
	const void *b[3] = {b1, b2, b3};
	size_t nb[3] = {n1, n2, n3};
	uint8_t hdr[DQ_REC_HDR], *w;
	uint32_t len = (uint32_t) (n1 + n2 + n3), crc;
	struct iovec iov[4] = {{hdr, DQ_REC_HDR}};
	int e, n = 1;

	qpi_le32_put(hdr, len);
	crc = qpi_crc32c(0, hdr, 4);
	for (int i = 0; i < 3; i++) {
		if (nb[i] > 0) {
			crc = qpi_crc32c(crc, b[i], nb[i]);
			iov[n++] = (struct iovec) {(void *) b[i], nb[i]};
		}
	}
	qpi_le32_put(hdr + 4, crc);
	if ((w = dq_win_at(d, d->end, DQ_REC_HDR + len)) != NULL) {
		/* Length, CRC, body, in that order (durq_int.h): the
		 * fences keep the compiler from merging or reordering the
		 * stores, and a kill stops between two instructions. */
		__builtin_memcpy(w, hdr, 4);
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		__builtin_memcpy(w + 4, hdr + 4, 4);
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		w += DQ_REC_HDR;
		for (int i = 1; i < n; i++) {
			memcpy(w, iov[i].iov_base, iov[i].iov_len);
			w += iov[i].iov_len;
		}
	} else if ((e = qpi_dq_pwritev_all(d->fd, iov, n, d->end)) != 0) {
		d->alloc_end = d->end; /* as far as we know */
		if (ftruncate(d->fd, (off_t) d->end) != 0) {
			/* The cut-off part fails its CRC at the next open
			 * and is cut then (a torn tail). */
		}
		return qpi_dq_errno(e, "cannot append to", d->path);
	}
	if (offp != NULL) {
		*offp = d->end;
	}
	d->end += DQ_REC_HDR + len;
	d->wseq += DQ_REC_HDR + len;
	return QP_OK;
}

int
qpi_dq_commit(qpi_durq *d, uint64_t undo_end, bool defer)
{
	if (d->fsync.mode == QPI_FSYNC_ALWAYS && !defer) {
		if (fdatasync(d->fd) != 0) {
			int e = errno;
			/* Never acknowledge what may not be on disk. */
			if (ftruncate(d->fd, (off_t) undo_end) == 0) {
				d->end = undo_end;
			}
			d->alloc_end = d->end;
			return qpi_dq_errno(e, "cannot sync", d->path);
		}
		d->syncs++;
		d->synced = d->wseq; /* d->mu held: nothing came meanwhile */
		return QP_OK;
	}
	if (!d->dirty) {
		d->dirty = true;
		d->dirty_since_ms = qpi_now_ms();
		pthread_cond_broadcast(&d->cv); /* the flusher, if any */
	}
	return QP_OK;
}

/* ---- room held back ---- */

/* Bytes the log must hold allocated past its end: the DONE record of
 * every live item, a MARK per remembered tag, DQ_RESERVE_FIX. */
static uint64_t
dq_reserve_need(qpi_durq *d)
{
	return DQ_RESERVE_FIX + (uint64_t) d->live.n * DQ_DONE_REC
	    + (d->tags_next - d->tags_first) * DQ_MARK_REC;
}

int
qpi_dq_reserve(qpi_durq *d, uint64_t extra)
{
	uint64_t want = d->end + extra + dq_reserve_need(d);
	uint64_t step;

	if (!d->prealloc || d->alloc_end >= want) {
		return QP_OK;
	}
	/* Whole steps at a time (fewer calls), else just what is due. */
	step
	    = (want + DQ_RESERVE_STEP - 1) / DQ_RESERVE_STEP * DQ_RESERVE_STEP;
	for (int i = 0; i < 2; i++) {
		uint64_t to = i == 0 ? step : want;
		if (fallocate(d->fd, 0, (off_t) d->end, (off_t) (to - d->end))
		    == 0) {
			d->alloc_end = to;
			return QP_OK;
		}
		if (errno == EOPNOTSUPP || errno == ENOSYS) {
			d->prealloc = false; /* writes find room as they go */
			return QP_OK;
		}
		if (errno != ENOSPC && errno != EDQUOT) {
			return qpi_dq_errno(
			    errno, "cannot allocate room in", d->path);
		}
	}
	return qpi_dq_errno(ENOSPC, "cannot allocate room in", d->path);
}

int
qpi_dq_write_done(qpi_durq *d, uint64_t id)
{
	uint8_t b[DQ_DONE_LEN];

	b[0] = DQ_T_DONE;
	qpi_le64_put(b + 1, id);
	return qpi_dq_append(d, b, sizeof(b), NULL, 0, NULL, 0, NULL);
}

/* Writes a tag's fields (client id, seq, v, n): the trailer of a
 * PUT_TAG record, the body of a MARK. */
void
qpi_dq_tag_encode(
    uint8_t *p, const uint8_t *client, uint64_t seq, uint32_t v, uint32_t n)
{
	memcpy(p, client, 16);
	qpi_le64_put(p + 16, seq);
	qpi_le32_put(p + 24, v);
	qpi_le32_put(p + 28, n);
}

/* ---- the flusher (interval) ---- */

void *
qpi_dq_flusher(void *arg)
{
	qpi_durq *d = arg;

	pthread_mutex_lock(&d->mu);
	while (!d->stop) {
		if (!d->dirty) {
			pthread_cond_wait(&d->cv, &d->mu);
			continue;
		}
		int64_t due = d->dirty_since_ms + (int64_t) d->fsync.ms;
		if (qpi_now_ms() < due) {
			struct timespec ts = qpi_ts_from_ns(due * 1000000);
			pthread_cond_timedwait(&d->cv, &d->mu, &ts);
			continue;
		}
		int fd = d->fd;
		uint64_t w = d->wseq;
		d->dirty = false;
		d->syncing = true;
		pthread_mutex_unlock(&d->mu);
		int rc = fdatasync(fd);
		pthread_mutex_lock(&d->mu);
		d->syncing = false;
		d->syncs++;
		if (rc == 0 && w > d->synced) {
			d->synced = w;
		}
		pthread_cond_broadcast(&d->cv);
	}
	pthread_mutex_unlock(&d->mu);
	return NULL;
}
