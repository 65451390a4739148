/*
 * durq_compact.c - compaction of a durable queue's log: when dead records
 * outweigh the live ones, the live PUTs (after MARK records for the last
 * put requests' tags) are copied to NAME.tmp, synced, and renamed over the
 * log.
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
#include <unistd.h>

/* A live item on its way into the new file. */
typedef struct dq_move {
	qpi_dq_live *e;
	uint64_t to; /* its record's offset in the new file */
} dq_move;

typedef struct dq_moves {
	dq_move *v;
	size_t n;
} dq_moves;

static void
dq_collect(qpi_hnode *n, void *arg)
{
	dq_moves *m = arg;

	m->v[m->n++].e = (qpi_dq_live *) n;
}

static int
dq_cmp_id(const void *a, const void *b)
{
	const dq_move *x = a, *y = b;
	uint64_t kx = x->e->node.key, ky = y->e->node.key;
	return kx < ky ? -1 : kx > ky;
}

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
	const size_t rec = DQ_REC_HDR + DQ_MARK_LEN;
	uint64_t i = d->tags_next > DQ_TAGS ? d->tags_next - DQ_TAGS : 0;
	size_t n = 0;
	uint8_t *buf;
	int e;

	if (i == d->tags_next) {
		return 0;
	}
	if ((buf = malloc((size_t) (d->tags_next - i) * rec)) == NULL) {
		return ENOMEM;
	}
	for (; i < d->tags_next; i++) {
		const qpi_shmq_tag *t = &d->tags[i % DQ_TAGS];
		uint8_t *p = buf + n * rec;
		p[DQ_REC_HDR] = DQ_T_MARK;
		qpi_dq_tag_encode(
		    p + DQ_REC_HDR + 1, t->client, t->seq, t->done, t->n);
		qpi_le32_put(p, DQ_MARK_LEN);
		qpi_le32_put(p + 4,
		    qpi_crc32c(
		        qpi_crc32c(0, p, 4), p + DQ_REC_HDR, DQ_MARK_LEN));
		n++;
	}
	struct iovec iov = {buf, n * rec};
	e = qpi_dq_pwritev_all(fd, &iov, 1, *toffp);
	free(buf);
	if (e == 0) {
		*toffp += n * rec;
	}
	return e;
}

/* Rewrites the log with the live items only. d->mu held. */
static int
dq_compact(qpi_durq *d)
{
	char *tmp = qpi_dq_tmp_path(d->path);
	dq_moves m = {NULL, 0};
	dq_move *v;
	uint8_t h[DQ_HDR];
	uint64_t toff = DQ_HDR;
	size_t n;
	int fd = -1, e = 0, rv = QP_OK;

	while (d->syncing) {
		pthread_cond_wait(&d->cv, &d->mu);
	}
	if (tmp == NULL
	    || (d->live.n > 0
	        && (m.v = malloc(d->live.n * sizeof(*m.v))) == NULL)) {
		free(tmp);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	qpi_htab_each(&d->live, dq_collect, &m);
	v = m.v;
	n = m.n;
	if (n > 0) {
		qsort(v, n, sizeof(*v), dq_cmp_id);
	}
	qpi_dq_hdr_encode(h, &d->cfg);
	fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		rv = qpi_dq_errno(errno, "cannot create", tmp);
		goto out;
	}
	struct iovec iov = {h, DQ_HDR};
	if ((e = qpi_dq_pwritev_all(fd, &iov, 1, 0)) != 0) {
		goto fail;
	}
	if ((e = dq_write_marks(d, fd, &toff)) != 0) {
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		if ((e = dq_copy(d->fd, v[i].e->off, fd, toff, v[i].e->bytes))
		    != 0) {
			goto fail;
		}
		v[i].to = toff;
		toff += v[i].e->bytes;
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
	close(d->fd);
	d->fd = fd;
	fd = -1;
	for (size_t i = 0; i < n; i++) {
		v[i].e->off = v[i].to;
	}
	d->end = toff;
	d->dirty = false;
	d->synced = d->wseq; /* every live record is in the synced copy */
	d->compactions++;
	goto out;
fail:
	rv = qpi_dq_errno(e, "cannot compact into", tmp);
	close(fd);
	fd = -1;
	unlink(tmp);
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

	if (d->end < d->compact_at || dead < DQ_COMPACT_MIN
	    || dead < 2 * d->live_bytes || d->npending > 0) {
		return;
	}
	if (dq_compact(d) != QP_OK) {
		/* No room for the copy, say: try again once it grew. */
		d->compact_at = d->end
		    + (d->end > DQ_COMPACT_MIN ? d->end : DQ_COMPACT_MIN);
	} else {
		d->compact_at = 0;
	}
}
