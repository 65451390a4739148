/*
 * durq.c - durable queues: an append-only log of PUT and DONE records
 * with CRC-32C, replayed on open into a private shared-memory queue that
 * serves the items (the format, the recovery rules and the full-disk
 * behaviour are described in durq.h).
 *
 * Locking: d->mu guards the file descriptor, the end offset, the id
 * counter, the live-item and lease maps and the pending DONE list. It is
 * never held while a call waits on the shared-memory queue. The flusher
 * thread of an "interval" queue takes it to note what to sync, and drops
 * it for the fdatasync itself; compaction waits for such a sync to end
 * before it swaps the file.
 */
#define _GNU_SOURCE
#include "durq.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define DQ_MAGIC       "QPDURQ1"
#define DQ_VERSION     2u /* 1: no PUT_TAG or MARK records (still read) */
#define DQ_HDR         64u
#define DQ_REC_HDR     8u /* len, crc */
#define DQ_PUT_FIX     10u /* type, id, kind */
#define DQ_DONE_LEN    9u /* type, id */
#define DQ_T_PUT       1u
#define DQ_T_DONE      2u
#define DQ_T_PUT_TAG   3u /* a PUT with the request's tag after the item */
#define DQ_T_MARK      4u /* a request's tag alone (kept by compaction) */
#define DQ_TAG_LEN     32u /* client id, seq, index or done, n */
#define DQ_MARK_LEN    (1u + DQ_TAG_LEN)
#define DQ_TAGS        QPI_SHMQ_TAGS_MAX
#define DQ_WRAP        9u /* id and kind before an item in the shm queue */
#define DQ_COMPACT_MIN (4ull * 1024 * 1024)

/* ---- CRC-32C, table-driven (reflected polynomial 0x82F63B78) ---- */

static uint32_t crc_tab[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void
crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++) {
			c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		}
		crc_tab[i] = c;
	}
}

uint32_t
qpi_crc32c(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&crc_once, crc_init);
	crc = ~crc;
	while (len--) {
		crc = crc_tab[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	}
	return ~crc;
}

/* ---- little-endian fields ---- */

static void
le32_put(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++) {
		p[i] = (uint8_t) (v >> (8 * i));
	}
}

static void
le64_put(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		p[i] = (uint8_t) (v >> (8 * i));
	}
}

static uint32_t
le32_get(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--) {
		v = (v << 8) | p[i];
	}
	return v;
}

static uint64_t
le64_get(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--) {
		v = (v << 8) | p[i];
	}
	return v;
}

/* ---- fsync policies ---- */

int
qpi_fsync_parse(const char *s, qpi_fsync *f)
{
	f->mode = QPI_FSYNC_DEFAULT;
	f->ms = 0;
	if (s == NULL || *s == '\0') {
		return QP_OK;
	}
	if (strcmp(s, "always") == 0) {
		f->mode = QPI_FSYNC_ALWAYS;
		return QP_OK;
	}
	if (strcmp(s, "never") == 0) {
		f->mode = QPI_FSYNC_NEVER;
		return QP_OK;
	}
	if (strcmp(s, "interval") == 0) {
		f->mode = QPI_FSYNC_INTERVAL;
		f->ms = QPI_FSYNC_DEF_MS;
		return QP_OK;
	}
	if (strncmp(s, "interval:", 9) == 0) {
		const char *p = s + 9;
		unsigned long v = 0;
		if (*p == '\0') {
			goto bad;
		}
		for (; *p != '\0'; p++) {
			if (*p < '0' || *p > '9' || v > QPI_FSYNC_MAX_MS) {
				goto bad;
			}
			v = v * 10 + (unsigned long) (*p - '0');
		}
		if (v < 1 || v > QPI_FSYNC_MAX_MS) {
			goto bad;
		}
		f->mode = QPI_FSYNC_INTERVAL;
		f->ms = (uint32_t) v;
		return QP_OK;
	}
bad:
	return qpi_err(QP_EINVAL,
	    "fsync policy '%.40s' is not always, never or interval:MS "
	    "(MS from 1 to %u)",
	    s, QPI_FSYNC_MAX_MS);
}

void
qpi_fsync_format(const qpi_fsync *f, char *buf, size_t cap)
{
	switch (f->mode) {
	case QPI_FSYNC_ALWAYS:
		snprintf(buf, cap, "always");
		break;
	case QPI_FSYNC_NEVER:
		snprintf(buf, cap, "never");
		break;
	case QPI_FSYNC_INTERVAL:
		snprintf(buf, cap, "interval:%u", (unsigned) f->ms);
		break;
	default:
		snprintf(buf, cap, "default");
		break;
	}
}

/* ---- a small open-addressing map: u64 key (not 0) -> two u64 ---- */

#define DQ_TOMB UINT64_MAX

typedef struct dq_ent {
	uint64_t key, a, b;
} dq_ent;

typedef struct dq_map {
	dq_ent *v;
	size_t cap; /* power of two, or 0 */
	size_t n; /* live entries */
	size_t used; /* live + tombstones */
} dq_map;

static size_t
dq_hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return (size_t) k;
}

static dq_ent *
map_find(const dq_map *m, uint64_t key)
{
	if (m->cap == 0) {
		return NULL;
	}
	for (size_t i = dq_hash(key) & (m->cap - 1);;
	     i = (i + 1) & (m->cap - 1)) {
		if (m->v[i].key == key) {
			return &m->v[i];
		}
		if (m->v[i].key == 0) {
			return NULL;
		}
	}
}

static int
map_grow(dq_map *m)
{
	size_t cap
	    = m->cap == 0 ? 64 : (m->n * 2 > m->cap ? m->cap * 2 : m->cap);
	dq_ent *v = calloc(cap, sizeof(*v));

	if (v == NULL) {
		return QP_ENOMEM;
	}
	for (size_t i = 0; i < m->cap; i++) {
		uint64_t k = m->v[i].key;
		if (k == 0 || k == DQ_TOMB) {
			continue;
		}
		size_t j = dq_hash(k) & (cap - 1);
		while (v[j].key != 0) {
			j = (j + 1) & (cap - 1);
		}
		v[j] = m->v[i];
	}
	free(m->v);
	m->v = v;
	m->cap = cap;
	m->used = m->n;
	return QP_OK;
}

static int
map_put(dq_map *m, uint64_t key, uint64_t a, uint64_t b)
{
	dq_ent *e = map_find(m, key);
	size_t i;

	if (e != NULL) {
		e->a = a;
		e->b = b;
		return QP_OK;
	}
	if ((m->used + 1) * 10 > m->cap * 7 && map_grow(m) != QP_OK) {
		return QP_ENOMEM;
	}
	for (i = dq_hash(key) & (m->cap - 1);
	     m->v[i].key != 0 && m->v[i].key != DQ_TOMB;
	     i = (i + 1) & (m->cap - 1)) {
	}
	if (m->v[i].key == 0) {
		m->used++;
	}
	m->v[i].key = key;
	m->v[i].a = a;
	m->v[i].b = b;
	m->n++;
	return QP_OK;
}

static void
map_del(dq_map *m, dq_ent *e)
{
	e->key = DQ_TOMB;
	m->n--;
}

static void
map_clear(dq_map *m)
{
	if (m->cap > 0) {
		memset(m->v, 0, m->cap * sizeof(*m->v));
	}
	m->n = 0;
	m->used = 0;
}

static void
map_fini(dq_map *m)
{
	free(m->v);
	memset(m, 0, sizeof(*m));
}

/* ---- the queue ---- */

struct qpi_durq {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* the flusher's wake-ups, sync ends */
	char *path;
	int fd;
	qpi_shmq *shm;
	qpi_durq_cfg cfg; /* as stored */
	qpi_fsync fsync; /* in force */
	uint64_t end; /* the log's size: where the next record goes */
	uint64_t next_id;
	uint64_t live_bytes;
	dq_map live; /* item id -> a: offset, b: record bytes */
	dq_map leases; /* lease id -> a: item id */
	uint64_t *pending; /* DONE ids waiting for the disk */
	size_t npending, cappending;
	uint64_t compact_at; /* no compaction before the log is this big */
	bool dirty; /* written since the last sync */
	bool syncing; /* the flusher is in fdatasync */
	bool stop;
	bool flusher_on;
	pthread_t flusher;
	int64_t dirty_since_ms;
	uint64_t compactions, syncs;
	uint64_t wseq; /* bytes ever appended (survives compaction) */
	uint64_t synced; /* wseq known to be on disk */
	qpi_shmq_tag *tags; /* the last DQ_TAGS put requests (ring) */
	uint64_t tags_next; /* tags noted, ever */
	int refs; /* qpi_durq_hold */
	pid_t pid; /* the process that opened it */
};

static char *
dq_tmp_path(const char *path)
{
	size_t n = strlen(path);
	char *t = malloc(n + 5);

	if (t != NULL) {
		memcpy(t, path, n);
		memcpy(t + n, ".tmp", 5);
	}
	return t;
}

/* fsyncs the directory holding path (a rename or create is durable). */
static void
dq_sync_dir(const char *path)
{
	char dir[PATH_MAX];
	const char *slash = strrchr(path, '/');
	int fd;

	if (slash == NULL) {
		snprintf(dir, sizeof(dir), ".");
	} else if (slash == path) {
		snprintf(dir, sizeof(dir), "/");
	} else {
		snprintf(dir, sizeof(dir), "%.*s", (int) (slash - path), path);
	}
	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		(void) fsync(fd);
		close(fd);
	}
}

static int
dq_errno(int e, const char *what, const char *path)
{
	if (e == ENOSPC || e == EDQUOT) {
		return qpi_err(QP_ENOSPC,
		    "no space left on the disk of %s (%s)", path, what);
	}
	return qpi_err(QP_ESYSTEM, "%s %s: %s", what, path, strerror(e));
}

/* Writes all of iov at off; 0 or an errno. */
static int
dq_pwritev_all(int fd, struct iovec *iov, int n, uint64_t off)
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

static void
dq_hdr_encode(uint8_t *h, const qpi_durq_cfg *c)
{
	memset(h, 0, DQ_HDR);
	memcpy(h, DQ_MAGIC, 8);
	le32_put(h + 8, DQ_VERSION);
	le32_put(h + 12, DQ_HDR);
	le64_put(h + 16, c->maxsize);
	le64_put(h + 24, c->capacity);
	le64_put(h + 32, c->max_message);
	le64_put(h + 40, c->lease_ms);
	le32_put(h + 48, c->fsync.mode);
	le32_put(h + 52, c->fsync.ms);
	le32_put(h + 60, qpi_crc32c(0, h, 60));
}

static int
dq_hdr_decode(
    const uint8_t *h, qpi_durq_cfg *c, const char *path, uint32_t *versionp)
{
	if (memcmp(h, DQ_MAGIC, 8) != 0) {
		return qpi_err(QP_ECORRUPT,
		    "%s is not a qpipe durable queue file (bad magic)", path);
	}
	if (le32_get(h + 60) != qpi_crc32c(0, h, 60)) {
		return qpi_err(
		    QP_ECORRUPT, "%s: the file header fails its CRC", path);
	}
	*versionp = le32_get(h + 8);
	if (*versionp < 1 || *versionp > DQ_VERSION
	    || le32_get(h + 12) != DQ_HDR) {
		return qpi_err(QP_EVERSION,
		    "%s: durable queue file of layout %u, this is %u", path,
		    (unsigned) le32_get(h + 8), DQ_VERSION);
	}
	c->maxsize = le64_get(h + 16);
	c->capacity = le64_get(h + 24);
	c->max_message = le64_get(h + 32);
	c->lease_ms = le64_get(h + 40);
	c->fsync.mode = le32_get(h + 48);
	c->fsync.ms = le32_get(h + 52);
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
static int
dq_create_file(const char *path, const qpi_durq_cfg *c, bool excl)
{
	uint8_t h[DQ_HDR];
	char *tmp = dq_tmp_path(path);
	struct iovec iov = {h, DQ_HDR};
	int fd, e, rv = QP_OK;

	if (tmp == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	dq_hdr_encode(h, c);
	fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		rv = dq_errno(errno, "cannot create", tmp);
		free(tmp);
		return rv;
	}
	if ((e = dq_pwritev_all(fd, &iov, 1, 0)) != 0
	    || (fdatasync(fd) != 0 && (e = errno) != 0)) {
		rv = dq_errno(e, "cannot write", tmp);
	}
	close(fd);
	/* link() fails if path exists: racing creators are decided here. */
	if (rv == QP_OK && link(tmp, path) != 0) {
		if (errno != EEXIST) {
			rv = dq_errno(errno, "cannot create", path);
		} else if (excl) {
			rv = qpi_err(QP_EEXIST, "%s exists already", path);
		}
	}
	unlink(tmp);
	free(tmp);
	if (rv == QP_OK) {
		dq_sync_dir(path);
	}
	return rv;
}

/* ---- appending ---- */

/* Appends one record (body in up to two pieces) at d->end. On failure
 * the file is cut back to d->end. d->mu held. */
static int
dq_append(qpi_durq *d, const uint8_t *b1, size_t n1, const void *b2, size_t n2,
    const uint8_t *b3, size_t n3, uint64_t *offp)
{
	uint8_t hdr[DQ_REC_HDR];
	uint32_t len = (uint32_t) (n1 + n2 + n3);
	uint32_t crc;
	struct iovec iov[4];
	int e, n = 2;

	le32_put(hdr, len);
	crc = qpi_crc32c(0, hdr, 4);
	crc = qpi_crc32c(crc, b1, n1);
	iov[0] = (struct iovec) {hdr, DQ_REC_HDR};
	iov[1] = (struct iovec) {(void *) b1, n1};
	if (n2 > 0) {
		crc = qpi_crc32c(crc, b2, n2);
		iov[n++] = (struct iovec) {(void *) b2, n2};
	}
	if (n3 > 0) {
		crc = qpi_crc32c(crc, b3, n3);
		iov[n++] = (struct iovec) {(void *) b3, n3};
	}
	le32_put(hdr + 4, crc);
	if ((e = dq_pwritev_all(d->fd, iov, n, d->end)) != 0) {
		if (ftruncate(d->fd, (off_t) d->end) != 0) {
			/* The cut-off part fails its CRC at the next open
			 * and is cut then (a torn tail). */
		}
		return dq_errno(e, "cannot append to", d->path);
	}
	if (offp != NULL) {
		*offp = d->end;
	}
	d->end += DQ_REC_HDR + len;
	d->wseq += DQ_REC_HDR + len;
	return QP_OK;
}

/* Makes what was appended since the last sync durable per the policy
 * (always, unless defer: the caller syncs with qpi_durq_sync_to). */
static int
dq_commit(qpi_durq *d, uint64_t undo_end, bool defer)
{
	if (d->fsync.mode == QPI_FSYNC_ALWAYS && !defer) {
		uint64_t w = d->wseq;
		if (fdatasync(d->fd) != 0) {
			int e = errno;
			/* Never acknowledge what may not be on disk. */
			if (ftruncate(d->fd, (off_t) undo_end) == 0) {
				d->end = undo_end;
			}
			return dq_errno(e, "cannot sync", d->path);
		}
		d->syncs++;
		d->synced = w;
		return QP_OK;
	}
	if (!d->dirty) {
		d->dirty = true;
		d->dirty_since_ms = qpi_now_ms();
		if (d->flusher_on) {
			pthread_cond_broadcast(&d->cv);
		}
	}
	return QP_OK;
}

static int
dq_write_done(qpi_durq *d, uint64_t id)
{
	uint8_t b[DQ_DONE_LEN];

	b[0] = DQ_T_DONE;
	le64_put(b + 1, id);
	return dq_append(d, b, sizeof(b), NULL, 0, NULL, 0, NULL);
}

/* ---- put requests' tags ---- */

static void
dq_tag_encode(
    uint8_t *p, const uint8_t *client, uint64_t seq, uint32_t v, uint32_t n)
{
	memcpy(p, client, 16);
	le64_put(p + 16, seq);
	le32_put(p + 24, v);
	le32_put(p + 28, n);
}

/* Notes that request (client, seq) of n items has done of them in the
 * log: raised to done (set: set to done, a cancelled put) when it is the
 * newest request noted (the items of one request are logged one after the
 * other), else noted anew. d->mu held (or opening). */
static void
dq_tag_note(qpi_durq *d, const uint8_t *client, uint64_t seq, uint32_t done,
    uint32_t n, bool set)
{
	qpi_shmq_tag *t;

	if (d->tags_next > 0) {
		t = &d->tags[(d->tags_next - 1) % DQ_TAGS];
		if (t->seq == seq && memcmp(t->client, client, 16) == 0) {
			t->done = set || done > t->done ? done : t->done;
			t->n = n;
			return;
		}
	}
	t = &d->tags[d->tags_next++ % DQ_TAGS];
	memcpy(t->client, client, 16);
	t->seq = seq;
	t->base = 0;
	t->n = n;
	t->done = done;
}

static void
dq_tag_note_rec(qpi_durq *d, const uint8_t *p, bool put)
{
	uint32_t v = le32_get(p + 24), n = le32_get(p + 28);

	dq_tag_note(d, p, le64_get(p + 16), put ? v + 1 : v, n, !put);
}

int
qpi_durq_tags(qpi_durq *d, qpi_shmq_tag *v, size_t cap, size_t *np)
{
	size_t n = 0;

	pthread_mutex_lock(&d->mu);
	uint64_t i = d->tags_next > DQ_TAGS ? d->tags_next - DQ_TAGS : 0;
	for (; i < d->tags_next && n < cap; i++) {
		const qpi_shmq_tag *t = &d->tags[i % DQ_TAGS];
		if (t->done > 0 && t->done <= t->n) {
			v[n++] = *t;
		}
	}
	pthread_mutex_unlock(&d->mu);
	*np = n;
	return QP_OK;
}

/* Writes the DONE records that waited for space. d->mu held. */
static int
dq_flush_pending(qpi_durq *d)
{
	while (d->npending > 0) {
		uint64_t id = d->pending[d->npending - 1];
		int rv = dq_write_done(d, id);
		if (rv != QP_OK) {
			return rv;
		}
		d->npending--;
		dq_ent *e = map_find(&d->live, id);
		if (e != NULL) {
			d->live_bytes -= e->b;
			map_del(&d->live, e);
		}
	}
	return QP_OK;
}

static void dq_maybe_compact(qpi_durq *d);

/* Item id is gone for good: log DONE (or keep it for later). */
static void
dq_done(qpi_durq *d, uint64_t id)
{
	if (dq_flush_pending(d) == QP_OK && dq_write_done(d, id) == QP_OK) {
		dq_ent *e = map_find(&d->live, id);
		if (e != NULL) {
			d->live_bytes -= e->b;
			map_del(&d->live, e);
		}
		/* Not synced even with "always": a DONE lost to a power cut
		 * only delivers its item again (at least once). */
		(void) dq_commit(d, d->end, true);
		dq_maybe_compact(d);
		return;
	}
	if (d->npending == d->cappending) {
		size_t cap = d->cappending == 0 ? 64 : d->cappending * 2;
		uint64_t *p = realloc(d->pending, cap * sizeof(*p));
		if (p == NULL) {
			return; /* redelivered after a restart: at least once
			         */
		}
		d->pending = p;
		d->cappending = cap;
	}
	d->pending[d->npending++] = id;
}

/* ---- compaction ---- */

static int
dq_cmp_id(const void *a, const void *b)
{
	const dq_ent *x = a, *y = b;
	return x->key < y->key ? -1 : x->key > y->key;
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
		int e = dq_pwritev_all(to, &iov, 1, toff);
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
		dq_tag_encode(
		    p + DQ_REC_HDR + 1, t->client, t->seq, t->done, t->n);
		le32_put(p, DQ_MARK_LEN);
		le32_put(p + 4,
		    qpi_crc32c(
		        qpi_crc32c(0, p, 4), p + DQ_REC_HDR, DQ_MARK_LEN));
		n++;
	}
	struct iovec iov = {buf, n * rec};
	e = dq_pwritev_all(fd, &iov, 1, *toffp);
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
	char *tmp = dq_tmp_path(d->path);
	dq_ent *v = NULL;
	uint8_t h[DQ_HDR];
	uint64_t toff = DQ_HDR;
	size_t n = 0;
	int fd = -1, e = 0, rv = QP_OK;

	while (d->syncing) {
		pthread_cond_wait(&d->cv, &d->mu);
	}
	if (tmp == NULL
	    || (d->live.n > 0
	        && (v = malloc(d->live.n * sizeof(*v))) == NULL)) {
		free(tmp);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < d->live.cap; i++) {
		if (d->live.v[i].key != 0 && d->live.v[i].key != DQ_TOMB) {
			v[n++] = d->live.v[i];
		}
	}
	if (n > 0) {
		qsort(v, n, sizeof(*v), dq_cmp_id);
	}
	dq_hdr_encode(h, &d->cfg);
	fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		rv = dq_errno(errno, "cannot create", tmp);
		goto out;
	}
	struct iovec iov = {h, DQ_HDR};
	if ((e = dq_pwritev_all(fd, &iov, 1, 0)) != 0) {
		goto fail;
	}
	if ((e = dq_write_marks(d, fd, &toff)) != 0) {
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		if ((e = dq_copy(d->fd, v[i].a, fd, toff, v[i].b)) != 0) {
			goto fail;
		}
		v[i].a = toff;
		toff += v[i].b;
	}
	if (fdatasync(fd) != 0) {
		e = errno;
		goto fail;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0 || rename(tmp, d->path) != 0) {
		e = errno;
		goto fail;
	}
	dq_sync_dir(d->path);
	close(d->fd);
	d->fd = fd;
	fd = -1;
	for (size_t i = 0; i < n; i++) {
		dq_ent *le = map_find(&d->live, v[i].key);
		if (le != NULL) {
			le->a = v[i].a;
		}
	}
	d->end = toff;
	d->dirty = false;
	d->synced = d->wseq; /* every live record is in the synced copy */
	d->compactions++;
	goto out;
fail:
	rv = dq_errno(e, "cannot compact into", tmp);
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

static void
dq_maybe_compact(qpi_durq *d)
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

/* ---- the flusher (interval) ---- */

static void *
dq_flusher(void *arg)
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

/* ---- open: validate, cut a torn tail, replay ---- */

static bool
dq_all_zero(const uint8_t *p, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		if (p[i] != 0) {
			return false;
		}
	}
	return true;
}

typedef struct dq_scan {
	uint32_t version; /* the file's layout */
	uint64_t good_end; /* after the last complete record */
	uint64_t records;
	bool torn;
	uint64_t *order; /* PUT ids in file order */
	size_t norder, caporder;
} dq_scan;

/* Walks the records of the mapped file (size bytes), filling d->live.
 * QP_OK (maybe torn), or QP_ECORRUPT. */
static int
dq_walk(qpi_durq *d, const uint8_t *base, uint64_t size, dq_scan *s)
{
	uint64_t off = DQ_HDR;
	uint64_t maxlen = DQ_PUT_FIX + d->cfg.max_message;
	uint64_t last_id = 0;

	while (off < size) {
		uint64_t left = size - off;
		if (left < DQ_REC_HDR) {
			s->torn = true;
			break;
		}
		uint32_t len = le32_get(base + off);
		/* A tagged PUT may be longer (a cut one says no type). */
		uint64_t lim = maxlen;
		if (s->version >= 2
		    && (left <= DQ_REC_HDR
		        || base[off + DQ_REC_HDR] == DQ_T_PUT_TAG)) {
			lim += DQ_TAG_LEN;
		}
		if (len < DQ_DONE_LEN || len > lim) {
			if (dq_all_zero(base + off, left)) {
				s->torn = true;
				break;
			}
			return qpi_err(QP_ECORRUPT,
			    "%s: record at offset %llu has an impossible "
			    "length %u (%llu complete records before it)",
			    d->path, (unsigned long long) off, (unsigned) len,
			    (unsigned long long) s->records);
		}
		if (DQ_REC_HDR + (uint64_t) len > left) {
			s->torn = true;
			break;
		}
		const uint8_t *b = base + off + DQ_REC_HDR;
		uint32_t crc = qpi_crc32c(0, base + off, 4);
		crc = qpi_crc32c(crc, b, len);
		if (crc != le32_get(base + off + 4)) {
			uint64_t after = off + DQ_REC_HDR + len;
			if (after == size
			    || dq_all_zero(base + after, size - after)) {
				s->torn = true;
				break;
			}
			return qpi_err(QP_ECORRUPT,
			    "%s: record at offset %llu fails its CRC and more "
			    "records follow (%llu complete records before it)",
			    d->path, (unsigned long long) off,
			    (unsigned long long) s->records);
		}
		uint64_t id = le64_get(b + 1);
		bool tagged = b[0] == DQ_T_PUT_TAG && s->version >= 2;
		if ((b[0] == DQ_T_PUT
		        || (tagged && len >= DQ_PUT_FIX + DQ_TAG_LEN))
		    && len >= DQ_PUT_FIX
		    && (b[9] == QPI_ITEM_BIN || b[9] == QPI_ITEM_OBJ)
		    && id > last_id) {
			last_id = id;
			if (tagged) {
				dq_tag_note_rec(d, b + len - DQ_TAG_LEN, true);
			}
			if (map_put(&d->live, id, off, DQ_REC_HDR + len)
			    != QP_OK) {
				return qpi_err(QP_ENOMEM, "out of memory");
			}
			d->live_bytes += DQ_REC_HDR + len;
			if (s->norder == s->caporder) {
				size_t cap
				    = s->caporder ? s->caporder * 2 : 256;
				uint64_t *o
				    = realloc(s->order, cap * sizeof(*o));
				if (o == NULL) {
					return qpi_err(
					    QP_ENOMEM, "out of memory");
				}
				s->order = o;
				s->caporder = cap;
			}
			s->order[s->norder++] = id;
		} else if (b[0] == DQ_T_MARK && len == DQ_MARK_LEN
		    && s->version >= 2) {
			dq_tag_note_rec(d, b + 1, false);
		} else if (b[0] == DQ_T_DONE && len == DQ_DONE_LEN) {
			dq_ent *e = map_find(&d->live, id);
			if (e != NULL) {
				d->live_bytes -= e->b;
				map_del(&d->live, e);
			}
		} else {
			return qpi_err(QP_ECORRUPT,
			    "%s: record at offset %llu passes its CRC but "
			    "makes no sense (type %u, id %llu)",
			    d->path, (unsigned long long) off, (unsigned) b[0],
			    (unsigned long long) id);
		}
		s->records++;
		off += DQ_REC_HDR + len;
		s->good_end = off;
	}
	d->next_id = last_id + 1;
	return QP_OK;
}

static int
dq_load(qpi_durq *d, qpi_durq_info *info)
{
	struct stat st;
	uint8_t *base = NULL;
	dq_scan s = {.good_end = DQ_HDR};
	int rv;

	if (fstat(d->fd, &st) != 0) {
		return dq_errno(errno, "cannot stat", d->path);
	}
	if ((uint64_t) st.st_size < DQ_HDR) {
		return qpi_err(QP_ECORRUPT,
		    "%s: the file header is cut short (%lld bytes)", d->path,
		    (long long) st.st_size);
	}
	base = mmap(
	    NULL, (size_t) st.st_size, PROT_READ, MAP_PRIVATE, d->fd, 0);
	if (base == MAP_FAILED) {
		return dq_errno(errno, "cannot map", d->path);
	}
	if ((rv = dq_hdr_decode(base, &d->cfg, d->path, &s.version)) != QP_OK
	    || (rv = dq_walk(d, base, (uint64_t) st.st_size, &s)) != QP_OK) {
		goto out;
	}
	if (s.torn) {
		info->cut_at = s.good_end;
		info->cut_bytes = (uint64_t) st.st_size - s.good_end;
	}
	info->records = s.records;
	d->end = s.good_end;

	/* The queue the items are served from, filled in id order. */
	qpi_shmq_cfg sc;
	memset(&sc, 0, sizeof(sc));
	sc.maxsize = d->cfg.maxsize;
	sc.capacity = d->cfg.capacity;
	sc.max_message = d->cfg.max_message + DQ_WRAP;
	if ((rv = qpi_shmq_anon(&d->shm, &sc)) != QP_OK) {
		goto out;
	}
	for (size_t i = 0; i < s.norder; i++) {
		dq_ent *e = map_find(&d->live, s.order[i]);
		if (e == NULL) {
			continue;
		}
		const uint8_t *b = base + e->a + DQ_REC_HDR + 1;
		uint64_t ilen = e->b - DQ_REC_HDR - 1;
		if (b[-1] == DQ_T_PUT_TAG) {
			ilen -= DQ_TAG_LEN;
		}
		rv = qpi_shmq_put(d->shm, b, (size_t) ilen, QPI_ITEM_OBJ, 0);
		if (rv != QP_OK) {
			rv = qpi_err(rv,
			    "%s: item %llu does not fit back into the queue "
			    "(%s)",
			    d->path, (unsigned long long) s.order[i],
			    qp_strerror(rv));
			goto out;
		}
		info->items++;
	}
	if (s.torn && ftruncate(d->fd, (off_t) s.good_end) == 0) {
		(void) fdatasync(d->fd);
	}
	if (s.version < DQ_VERSION) {
		/* Layout 1 reads as 2; it takes 2's records from now on, so
		 * it says 2 (an older reader refuses it: QP_EVERSION). */
		uint8_t h[DQ_HDR];
		struct iovec iov = {h, DQ_HDR};
		int e;
		dq_hdr_encode(h, &d->cfg);
		if ((e = dq_pwritev_all(d->fd, &iov, 1, 0)) != 0
		    || (fdatasync(d->fd) != 0 && (e = errno) != 0)) {
			rv = dq_errno(
			    e, "cannot update the header of", d->path);
			goto out;
		}
	}
out:
	free(s.order);
	munmap(base, (size_t) st.st_size);
	return rv;
}

int
qpi_durq_open(qpi_durq **dp, const char *path, unsigned flags,
    const qpi_durq_cfg *cfg, const qpi_fsync *def, qpi_durq_info *infop)
{
	qpi_durq_info info;
	qpi_durq_cfg c;
	qpi_durq *d;
	int rv;

	memset(&info, 0, sizeof(info));
	memset(&c, 0, sizeof(c));
	if (cfg != NULL) {
		c = *cfg;
	}
	if (c.capacity == 0) {
		c.capacity = QPI_SHMQ_DEF_CAPACITY;
	}
	if (c.max_message == 0) {
		c.max_message = QP_DEFAULT_MAX_MESSAGE;
	}
	if (c.max_message
	    > QPI_SHMQ_MAX_ITEM - DQ_PUT_FIX - DQ_TAG_LEN - DQ_REC_HDR) {
		return qpi_err(QP_EINVAL, "max_message %llu is too large",
		    (unsigned long long) c.max_message);
	}
	if (access(path, F_OK) != 0) {
		if (errno != ENOENT || !(flags & QP_OPEN_CREATE)) {
			return errno == ENOENT
			    ? qpi_err(
			        QP_ENOENT, "no durable queue file %s", path)
			    : dq_errno(errno, "cannot reach", path);
		}
		if ((rv = dq_create_file(
		         path, &c, (flags & QP_OPEN_EXCL) != 0))
		    != QP_OK) {
			return rv;
		}
	} else if ((flags & QP_OPEN_CREATE) && (flags & QP_OPEN_EXCL)) {
		return qpi_err(QP_EEXIST, "%s exists already", path);
	}
	if ((d = calloc(1, sizeof(*d))) == NULL
	    || (d->path = strdup(path)) == NULL
	    || (d->tags = calloc(DQ_TAGS, sizeof(*d->tags))) == NULL) {
		if (d != NULL) {
			free(d->path);
		}
		free(d);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	pthread_mutex_init(&d->mu, NULL);
	d->refs = 1;
	d->pid = getpid();
	{
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&d->cv, &ca);
		pthread_condattr_destroy(&ca);
	}
	d->fd = open(path, O_RDWR | O_CLOEXEC);
	if (d->fd < 0) {
		rv = errno == ENOENT
		    ? qpi_err(QP_ENOENT, "no durable queue file %s", path)
		    : dq_errno(errno, "cannot open", path);
		goto fail;
	}
	if (flock(d->fd, LOCK_EX | LOCK_NB) != 0) {
		rv = errno == EWOULDBLOCK
		    ? qpi_err(QP_EBUSY,
		        "%s is open in another process (one process serves "
		        "a durable queue at a time)",
		        path)
		    : dq_errno(errno, "cannot lock", path);
		goto fail;
	}
	{
		char *tmp = dq_tmp_path(path);
		if (tmp != NULL) {
			unlink(tmp); /* a compaction cut short */
			free(tmp);
		}
	}
	if ((rv = dq_load(d, &info)) != QP_OK) {
		goto fail;
	}
	d->fsync = d->cfg.fsync;
	if (d->fsync.mode == QPI_FSYNC_DEFAULT) {
		if (def != NULL && def->mode != QPI_FSYNC_DEFAULT) {
			d->fsync = *def;
		} else {
			d->fsync.mode = QPI_FSYNC_INTERVAL;
			d->fsync.ms = QPI_FSYNC_DEF_MS;
		}
	}
	if (d->fsync.mode == QPI_FSYNC_INTERVAL) {
		if (pthread_create(&d->flusher, NULL, dq_flusher, d) != 0) {
			rv = qpi_err(
			    QP_ESYSTEM, "cannot start a flusher thread");
			goto fail;
		}
		d->flusher_on = true;
	}
	if (infop != NULL) {
		*infop = info;
	}
	*dp = d;
	return QP_OK;
fail:
	qpi_durq_free(d);
	return rv;
}

void
qpi_durq_hold(qpi_durq *d)
{
	pthread_mutex_lock(&d->mu);
	d->refs++;
	pthread_mutex_unlock(&d->mu);
}

void
qpi_durq_free(qpi_durq *d)
{
	if (d == NULL) {
		return;
	}
	pthread_mutex_lock(&d->mu);
	if (--d->refs > 0) {
		pthread_mutex_unlock(&d->mu);
		return;
	}
	d->stop = true;
	pthread_cond_broadcast(&d->cv);
	pthread_mutex_unlock(&d->mu);
	if (d->flusher_on) {
		pthread_join(d->flusher, NULL);
	}
	if (d->fd >= 0) {
		if (d->dirty || d->npending > 0) {
			(void) dq_flush_pending(d);
			(void) fdatasync(d->fd);
		}
		close(d->fd);
	}
	qpi_shmq_free(d->shm);
	map_fini(&d->live);
	map_fini(&d->leases);
	free(d->pending);
	free(d->tags);
	free(d->path);
	pthread_cond_destroy(&d->cv);
	pthread_mutex_destroy(&d->mu);
	free(d);
}

int
qpi_durq_unlink(const char *path)
{
	if (unlink(path) != 0) {
		return errno == ENOENT
		    ? qpi_err(QP_ENOENT, "no durable queue file %s", path)
		    : dq_errno(errno, "cannot remove", path);
	}
	dq_sync_dir(path);
	return QP_OK;
}

int
qpi_durq_check_owner(qpi_durq *d)
{
	if (getpid() != d->pid) {
		return qpi_err(QP_EINVAL,
		    "the durable queue %s belongs to process %ld: a forked "
		    "child must open it itself (after the parent closed it)",
		    d->path, (long) d->pid);
	}
	return QP_OK;
}

qpi_shmq *
qpi_durq_shm(qpi_durq *d)
{
	return d->shm;
}

void
qpi_durq_settings(qpi_durq *d, qpi_durq_cfg *cfg)
{
	pthread_mutex_lock(&d->mu);
	*cfg = d->cfg;
	cfg->fsync = d->fsync;
	pthread_mutex_unlock(&d->mu);
}

/* ---- items ---- */

static int
dq_put(qpi_durq *d, const void *buf, size_t len, unsigned kind,
    int64_t deadline_ns, uint64_t *ticket, const qpi_shmq_tag *tag)
{
	uint8_t fix[DQ_PUT_FIX], trailer[DQ_TAG_LEN];
	uint64_t id, off;
	bool full = false;
	int rv;

	if (len > d->cfg.max_message
	    || QPI_SHMQ_REC_SIZE(len + DQ_WRAP) > d->cfg.capacity) {
		return qpi_err(QP_ETOOBIG,
		    "an item of %zu bytes is over the queue's limit (%llu "
		    "bytes)",
		    len, (unsigned long long) d->cfg.max_message);
	}
	/* Full now: say so without a record (a server retries often). */
	if (deadline_ns == 0) {
		if ((rv = qpi_shmq_full(d->shm, &full)) != QP_OK) {
			return rv;
		}
		if (full) {
			return qpi_err(QP_EFULL, "queue is full");
		}
	}
	pthread_mutex_lock(&d->mu);
	if ((rv = dq_flush_pending(d)) != QP_OK) {
		pthread_mutex_unlock(&d->mu);
		return rv;
	}
	id = d->next_id;
	fix[0] = tag != NULL ? DQ_T_PUT_TAG : DQ_T_PUT;
	le64_put(fix + 1, id);
	fix[9] = (uint8_t) kind;
	if (tag != NULL) {
		dq_tag_encode(
		    trailer, tag->client, tag->seq, tag->base, tag->n);
	}
	if ((rv = dq_append(d, fix, sizeof(fix), buf, len, trailer,
	         tag != NULL ? sizeof(trailer) : 0, &off))
	        != QP_OK
	    || (rv = dq_commit(d, off, ticket != NULL)) != QP_OK) {
		pthread_mutex_unlock(&d->mu);
		return rv;
	}
	d->next_id++;
	if (map_put(&d->live, id, off, d->end - off) != QP_OK) {
		/* Not in the map: compaction would drop it. Cancel. */
		dq_done(d, id);
		pthread_mutex_unlock(&d->mu);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	d->live_bytes += d->end - off;
	if (ticket != NULL) {
		*ticket = d->fsync.mode == QPI_FSYNC_ALWAYS ? d->wseq : 0;
	}
	pthread_mutex_unlock(&d->mu);

	/* The shm copy: id and kind, then the bytes. */
	uint8_t stack[512];
	uint8_t *w
	    = len + DQ_WRAP <= sizeof(stack) ? stack : malloc(len + DQ_WRAP);
	if (w == NULL) {
		rv = qpi_err(QP_ENOMEM, "out of memory");
	} else {
		memcpy(w, fix + 1, DQ_WRAP);
		memcpy(w + DQ_WRAP, buf, len);
		rv = qpi_shmq_put(
		    d->shm, w, len + DQ_WRAP, QPI_ITEM_OBJ, deadline_ns);
		if (w != stack) {
			free(w);
		}
	}
	if (rv != QP_OK) {
		int keep = rv;
		char msg[256];
		snprintf(msg, sizeof(msg), "%s", qp_errmsg());
		pthread_mutex_lock(&d->mu);
		dq_done(d, id); /* cancel the record */
		if (tag != NULL) {
			/* ... and its tag: the request has base items in. */
			uint8_t m[DQ_MARK_LEN];
			m[0] = DQ_T_MARK;
			dq_tag_encode(
			    m + 1, tag->client, tag->seq, tag->base, tag->n);
			(void) dq_append(
			    d, m, sizeof(m), NULL, 0, NULL, 0, NULL);
			dq_tag_note(
			    d, tag->client, tag->seq, tag->base, tag->n, true);
		}
		pthread_mutex_unlock(&d->mu);
		return qpi_err(keep, "%s", msg);
	}
	if (tag != NULL) {
		pthread_mutex_lock(&d->mu);
		dq_tag_note(
		    d, tag->client, tag->seq, tag->base + 1, tag->n, false);
		pthread_mutex_unlock(&d->mu);
	}
	return QP_OK;
}

int
qpi_durq_put(qpi_durq *d, const void *buf, size_t len, unsigned kind,
    int64_t deadline_ns)
{
	return dq_put(d, buf, len, kind, deadline_ns, NULL, NULL);
}

int
qpi_durq_put_tagged(qpi_durq *d, const void *buf, size_t len, unsigned kind,
    const qpi_shmq_tag *tag, uint64_t *ticket)
{
	if (ticket != NULL) {
		*ticket = 0;
	}
	return dq_put(d, buf, len, kind, 0, ticket, tag);
}

int
qpi_durq_put_async(
    qpi_durq *d, const void *buf, size_t len, unsigned kind, uint64_t *ticket)
{
	*ticket = 0;
	return dq_put(d, buf, len, kind, 0, ticket, NULL);
}

int
qpi_durq_sync_to(qpi_durq *d, uint64_t ticket)
{
	int rv = QP_OK;

	pthread_mutex_lock(&d->mu);
	while (d->synced < ticket) {
		if (d->syncing) {
			/* Another caller's fdatasync may cover this one. */
			pthread_cond_wait(&d->cv, &d->mu);
			continue;
		}
		/* Lead a group: one fdatasync for every record so far. */
		uint64_t w = d->wseq;
		int fd = d->fd;
		d->syncing = true;
		pthread_mutex_unlock(&d->mu);
		int rc = fdatasync(fd);
		int e = errno;
		pthread_mutex_lock(&d->mu);
		d->syncing = false;
		d->syncs++;
		pthread_cond_broadcast(&d->cv);
		if (rc != 0) {
			rv = dq_errno(e, "cannot sync", d->path);
			break;
		}
		if (w > d->synced) {
			d->synced = w;
		}
	}
	pthread_mutex_unlock(&d->mu);
	return rv;
}

/* Unwraps a stored item (id, kind, bytes) in place into what the caller
 * asked for; *idp gets its id. */
static int
dq_unwrap(
    void **bufp, size_t *lenp, unsigned flags, uint64_t *idp, unsigned *kindp)
{
	uint8_t *p = *bufp;
	size_t len = *lenp;

	if (len < DQ_WRAP) {
		return qpi_err(QP_ECORRUPT, "a durable item lost its id");
	}
	*idp = le64_get(p);
	*kindp = p[8];
	len -= DQ_WRAP;
	if ((flags & QPI_GET_OBJ) && *kindp == QPI_ITEM_BIN) {
		uint8_t hdr[5];
		size_t hn = qpi_wire_bin_header(len, hdr);
		if (hn > DQ_WRAP) {
			return qpi_err(QP_ECORRUPT, "bad bin header");
		}
		memmove(p + hn, p + DQ_WRAP, len);
		memcpy(p, hdr, hn);
		*lenp = len + hn;
	} else {
		memmove(p, p + DQ_WRAP, len);
		*lenp = len;
	}
	return QP_OK;
}

int
qpi_durq_get(qpi_durq *d, unsigned flags, void *into, size_t cap, void **bufp,
    size_t *lenp, int64_t deadline_ns)
{
	qpi_shmq_lease l;
	void *raw = NULL;
	size_t rawlen = 0;
	uint64_t id;
	unsigned kind;
	int rv;

	rv = qpi_shmq_get_lease(d->shm, qpi_shmq_owner_self(), -1, 0, &raw,
	    &rawlen, &l, deadline_ns);
	if (rv != QP_OK) {
		return rv;
	}
	if ((rv = dq_unwrap(&raw, &rawlen, flags, &id, &kind)) != QP_OK) {
		free(raw);
		qpi_shmq_release(d->shm, l.id);
		return rv;
	}
	if (into != NULL) {
		if (rawlen > cap) {
			free(raw);
			qpi_shmq_release(d->shm, l.id);
			*lenp = rawlen;
			return qpi_err(QP_ETOOBIG,
			    "the item has %zu bytes, the buffer %zu", rawlen,
			    cap);
		}
		memcpy(into, raw, rawlen);
		free(raw);
		*lenp = rawlen;
	} else {
		*bufp = raw;
		*lenp = rawlen;
	}
	qpi_shmq_ack(d->shm, l.id);
	pthread_mutex_lock(&d->mu);
	dq_done(d, id);
	pthread_mutex_unlock(&d->mu);
	return QP_OK;
}

int
qpi_durq_get_lease(qpi_durq *d, uint64_t owner, int64_t lease_ms,
    unsigned flags, size_t max_len, void **bufp, size_t *lenp,
    qpi_shmq_lease *lease)
{
	void *raw = NULL;
	size_t rawlen = 0;
	uint64_t id;
	unsigned kind;
	int rv;

	/* The stored item is its bytes behind a DQ_WRAP header; unwrapped
	 * it is at most as long (a bin header is shorter than DQ_WRAP). */
	rv = qpi_shmq_get_lease_max(d->shm, owner, lease_ms, 0,
	    max_len != 0 ? max_len + DQ_WRAP : 0, &raw, &rawlen, lease, 0);
	if (rv != QP_OK) {
		return rv;
	}
	if ((rv = dq_unwrap(&raw, &rawlen, flags, &id, &kind)) != QP_OK) {
		free(raw);
		qpi_shmq_release(d->shm, lease->id);
		return rv;
	}
	pthread_mutex_lock(&d->mu);
	rv = map_put(&d->leases, lease->id, id, 0);
	pthread_mutex_unlock(&d->mu);
	if (rv != QP_OK) {
		free(raw);
		qpi_shmq_release(d->shm, lease->id);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	lease->kind = kind;
	*bufp = raw;
	*lenp = rawlen;
	return QP_OK;
}

int
qpi_durq_ack(qpi_durq *d, uint64_t lease_id)
{
	int rv = qpi_shmq_ack(d->shm, lease_id);
	dq_ent *e;

	pthread_mutex_lock(&d->mu);
	if ((e = map_find(&d->leases, lease_id)) != NULL) {
		uint64_t id = e->a;
		map_del(&d->leases, e);
		if (rv == QP_OK) {
			dq_done(d, id);
		}
	}
	pthread_mutex_unlock(&d->mu);
	return rv;
}

void
qpi_durq_leases_gc(qpi_durq *d)
{
	qp_queue_stats st;

	if (d->leases.n == 0 || qpi_shmq_stat(d->shm, &st) != QP_OK
	    || st.leased != 0) {
		return;
	}
	pthread_mutex_lock(&d->mu);
	map_clear(&d->leases);
	pthread_mutex_unlock(&d->mu);
}

int
qpi_durq_stat(qpi_durq *d, qp_queue_stats *st)
{
	int rv = qpi_shmq_stat(d->shm, st);

	if (rv == QP_OK) {
		/* The id and kind stored before each item are not its. */
		st->bytes -= st->items * DQ_WRAP <= st->bytes
		    ? st->items * DQ_WRAP
		    : st->bytes;
	}
	return rv;
}

uint64_t
qpi_durq_rec_size(size_t len)
{
	return QPI_SHMQ_REC_SIZE((uint64_t) len + DQ_WRAP);
}

int
qpi_durq_sync(qpi_durq *d)
{
	int rv = QP_OK;

	pthread_mutex_lock(&d->mu);
	if ((rv = dq_flush_pending(d)) == QP_OK) {
		if (fdatasync(d->fd) != 0) {
			rv = dq_errno(errno, "cannot sync", d->path);
		} else {
			d->dirty = false;
			d->syncs++;
			d->synced = d->wseq;
		}
	}
	pthread_mutex_unlock(&d->mu);
	return rv;
}

void
qpi_durq_stats_get(qpi_durq *d, qpi_durq_stats *st)
{
	pthread_mutex_lock(&d->mu);
	st->file_bytes = d->end;
	st->live_bytes = d->live_bytes;
	st->pending_done = d->npending;
	st->compactions = d->compactions;
	st->syncs = d->syncs;
	pthread_mutex_unlock(&d->mu);
}
