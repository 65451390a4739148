/*
 * durq_compact.c - compaction of a durable queue's log: when dead records
 * outweigh the live ones, the live PUTs (after MARK records for the
 * remembered put requests' tags) are copied to NAME.tmp, synced, and
 * renamed over the log. On a full disk (a put found no room) it runs as
 * soon as half the log is dead, and only when the copy fits in what the
 * disk has left plus the room the log holds back past its end, which it
 * gives back to the file system first.
 *
 * Locking: runs with d->mu held (durq_int.h); it waits for a sync of the
 * flusher's to end before it swaps the file.
 */
#define _GNU_SOURCE
#include "durq_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/statvfs.h>
#include <unistd.h>

static int
dq_copy(int from, uint64_t off, int to, uint64_t toff, uint64_t len)
{
	uint8_t buf[65536];

	while (len > 0) {
		size_t n = len < sizeof(buf) ? (size_t) len : sizeof(buf);
		ssize_t r = pread(from, buf, n, (off_t) off);
		if (r <= 0) {
			return r < 0 ? errno : EIO;
		}
		struct iovec iov = {buf, (size_t) r};
		int e = qpi_dq_pwritev_all(to, &iov, 1, toff);
		if (e != 0) {
			return e;
		}
		off += (uint64_t) r;
		toff += (uint64_t) r;
		len -= (uint64_t) r;
	}
	return 0;
}

/* Writes the tags of the last put requests as MARK records at *toffp
 * (compaction drops the PUTs of items gone, not what they say about
 * their requests). 0 or an errno. */
static int
dq_write_marks(qpi_durq *d, int fd, uint64_t *toffp)
{
	size_t n = (size_t) (d->tags_next - d->tags_first);
	uint8_t *buf;
	int e;

	if (n == 0) {
		return 0;
	}
	if ((buf = malloc(n * DQ_MARK_REC)) == NULL) {
		return ENOMEM;
	}
	for (uint64_t i = d->tags_first; i < d->tags_next; i++) {
		const qpi_shmq_tag *t = &d->tags[i % d->tags_cap];
		uint8_t *p = buf + (i - d->tags_first) * DQ_MARK_REC;
		p[DQ_REC_HDR] = DQ_T_MARK;
		qpi_dq_tag_encode(
		    p + DQ_REC_HDR + 1, t->client, t->seq, t->done, t->n);
		qpi_le32_put(p, DQ_MARK_LEN);
		qpi_le32_put(p + 4,
		    qpi_crc32c(
		        qpi_crc32c(0, p, 4), p + DQ_REC_HDR, DQ_MARK_LEN));
	}
	struct iovec iov = {buf, n * DQ_MARK_REC};
	e = qpi_dq_pwritev_all(fd, &iov, 1, *toffp);
	free(buf);
	if (e == 0) {
		*toffp += n * DQ_MARK_REC;
	}
	return e;
}

/* Rewrites the log with the live items only; punch: first give the
 * room held back past the log's end to the file system (a full disk:
 * the copy needs it). d->mu held. */
static int
dq_compact(qpi_durq *d, bool punch)
{
	char *tmp = qpi_dq_path(d->path, ".tmp");
	qpi_dq_live **v = NULL;
	uint64_t toff = DQ_HDR, first;
	size_t n;
	int fd = -1, e = 0, rv = QP_OK;

	while (d->syncing) {
		pthread_cond_wait(&d->cv, &d->mu);
	}
	if (tmp == NULL || qpi_dq_live_sorted(d, &v, &n) != QP_OK) {
		free(tmp);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	if (punch) {
		/* tmpfs gives blocks past the end back to a punch, ext4 (and
		 * xfs) to a truncate to the size the file has. */
		if (d->alloc_end > d->end) {
			(void) fallocate(d->fd,
			    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			    (off_t) d->end, (off_t) (d->alloc_end - d->end));
		}
		if (ftruncate(d->fd, (off_t) d->end) != 0) {
			/* nothing more to give back */
		}
		d->alloc_end = d->end;
	}
	fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		rv = qpi_dq_errno(errno, "cannot create", tmp);
		goto out;
	}
	if ((e = qpi_dq_hdr_write(fd, &d->cfg, false)) != 0
	    || (e = dq_write_marks(d, fd, &toff)) != 0) {
		goto fail;
	}
	first = toff;
	for (size_t i = 0; i < n; i++) {
		if ((e = dq_copy(d->fd, v[i]->off, fd, toff, v[i]->bytes))
		    != 0) {
			goto fail;
		}
		toff += v[i]->bytes;
	}
	if (fdatasync(fd) != 0) {
		e = errno;
		goto fail;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0 || rename(tmp, d->path) != 0) {
		e = errno;
		goto fail;
	}
	qpi_dq_sync_dir(d->path);
	qpi_dq_unmap(d); /* the old file's */
	close(d->fd);
	d->fd = fd;
	fd = -1;
	for (size_t i = 0; i < n; first += v[i++]->bytes) {
		v[i]->off = first;
	}
	d->end = toff;
	d->alloc_end = toff;
	d->dirty = false;
	d->synced = d->wseq; /* every live record is in the synced copy */
	d->compactions++;
	/* The items whose DONE waited are not in the new log. */
	for (size_t i = 0; i < d->npending; i++) {
		qpi_dq_live_drop(d, d->pending[i]);
	}
	d->npending = 0;
	(void) qpi_dq_reserve(d, 0);
	goto out;
fail:
	rv = qpi_dq_errno(e, "cannot compact into", tmp);
	close(fd);
	fd = -1;
	unlink(tmp);
	(void) qpi_dq_reserve(d, 0); /* what the punch gave back */
out:
	if (fd >= 0) {
		close(fd);
	}
	free(v);
	free(tmp);
	return rv;
}

void
qpi_dq_maybe_compact(qpi_durq *d)
{
	uint64_t dead = d->end - DQ_HDR - d->live_bytes;

	if (d->nospc) {
		/* A full disk: as soon as half the log is dead. */
		if (dead >= d->live_bytes) {
			(void) qpi_dq_compact_for_room(d, 1);
		}
		return;
	}
	/* The MARKs a compaction writes are not what it frees. */
	uint64_t marks = (d->tags_next - d->tags_first) * DQ_MARK_REC;
	dead = dead > marks ? dead - marks : 0;
	if (d->end < d->compact_at || dead < DQ_COMPACT_MIN
	    || dead < 2 * d->live_bytes) {
		return;
	}
	if (dq_compact(d, false) != QP_OK) {
		/* No room for the copy, say: try again once it grew. */
		d->compact_at = d->end
		    + (d->end > DQ_COMPACT_MIN ? d->end : DQ_COMPACT_MIN);
	} else {
		d->compact_at = 0;
	}
}

int
qpi_dq_compact_for_room(qpi_durq *d, uint64_t want)
{
	uint64_t size = DQ_HDR + (d->tags_next - d->tags_first) * DQ_MARK_REC
	    + d->live_bytes;
	uint64_t held = d->alloc_end > d->end ? d->alloc_end - d->end : 0;
	uint64_t room, slack;
	struct statvfs vs;
	bool punch;
	int rv;

	if (size >= d->end || d->end - size < want) {
		return qpi_err(QP_ENOSPC,
		    "no space left on the disk of %s (compacting it would not "
		    "free enough)",
		    d->path);
	}
	if (fstatvfs(d->fd, &vs) != 0) {
		return qpi_dq_errno(
		    errno, "cannot stat the file system of", d->path);
	}
	room = (uint64_t) vs.f_bavail * vs.f_frsize;
	slack = 2 * (uint64_t) (vs.f_frsize > 0 ? vs.f_frsize : 4096);
	punch = room < size + slack;
	if (punch && room + held < size + slack) {
		return qpi_err(QP_ENOSPC,
		    "no space left on the disk of %s (no room to compact it)",
		    d->path);
	}
	if ((rv = dq_compact(d, punch)) == QP_OK) {
		d->nospc = false;
		d->compact_at = 0;
	}
	return rv;
}
