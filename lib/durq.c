/*
 * durq.c - durable queues: an append-only log of PUT and DONE records
 * with CRC-32C, replayed on open into a private shared-memory queue that
 * serves the items (the format, the recovery rules and the full-disk
 * behaviour are described in durq.h). This file holds the calls of durq.h
 * and the queue's state in memory (live items, leases, tags, DONE records
 * waiting for disk space); the log file is durq_log.c's, opening
 * durq_replay.c's, compaction durq_compact.c's.
 *
 * Locking: d->mu guards the file descriptor, the end offset, the id
 * counter, the live-item and lease maps and the pending DONE list. It is
 * never held while a call waits on the shared-memory queue. The flusher
 * thread of an "interval" queue takes it to note what to sync, and drops
 * it for the fdatasync itself; compaction waits for such a sync to end
 * before it swaps the file.
 */
#define _GNU_SOURCE
#include "durq_int.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- live items ---- */

/* A new node of size bytes (a struct that opens with its qpi_hnode) under
 * key in t; NULL when out of memory. */
static void *
dq_node_new(qpi_htab *t, size_t size, uint64_t key)
{
	qpi_hnode *n = malloc(size);

	if (n != NULL) {
		n->key = key;
		if (qpi_htab_insert(t, n) != QP_OK) {
			free(n);
			n = NULL;
		}
	}
	return n;
}

int
qpi_dq_live_add(qpi_durq *d, uint64_t id, uint64_t off, uint64_t bytes)
{
	qpi_dq_live *e = dq_node_new(&d->live, sizeof(*e), id);

	if (e == NULL) {
		return QP_ENOMEM;
	}
	e->off = off;
	e->bytes = bytes;
	e->gone = false;
	d->live_bytes += bytes;
	return QP_OK;
}

static qpi_dq_live *
dq_live_find(qpi_durq *d, uint64_t id)
{
	return (qpi_dq_live *) qpi_htab_find(&d->live, id);
}

void
qpi_dq_live_drop(qpi_durq *d, uint64_t id)
{
	qpi_dq_live *e = dq_live_find(d, id);

	if (e != NULL) {
		if (!e->gone) {
			d->live_bytes -= e->bytes;
		}
		qpi_htab_remove(&d->live, &e->node);
		free(e);
	}
}

static void
dq_collect(qpi_hnode *n, void *arg)
{
	qpi_dq_live ***end = arg;

	if (!((qpi_dq_live *) n)->gone) { /* gone: its DONE is pending */
		*(*end)++ = (qpi_dq_live *) n;
	}
}

static int
dq_cmp_id(const void *a, const void *b)
{
	uint64_t x = (*(qpi_dq_live *const *) a)->node.key;
	uint64_t y = (*(qpi_dq_live *const *) b)->node.key;

	return x < y ? -1 : x > y;
}

int
qpi_dq_live_sorted(qpi_durq *d, qpi_dq_live ***vp, size_t *np)
{
	qpi_dq_live **v = malloc((d->live.n > 0 ? d->live.n : 1) * sizeof(*v));
	qpi_dq_live **end = v;

	if (v == NULL) {
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	qpi_htab_each(&d->live, dq_collect, &end);
	*np = (size_t) (end - v);
	qsort(v, *np, sizeof(*v), dq_cmp_id);
	*vp = v;
	return QP_OK;
}

static void
dq_node_free(qpi_hnode *n, void *arg)
{
	free(n);
}

/* Frees every node of t and its buckets. */
static void
dq_htab_clear(qpi_htab *t)
{
	qpi_htab_each(t, dq_node_free, NULL);
	qpi_htab_fini(t);
}

/* ---- put requests' tags ---- */

/* Doubles the tag ring (up to QPI_DURQ_TAGS_MAX). False if it cannot. */
static bool
dq_tags_grow(qpi_durq *d)
{
	size_t cap = d->tags_cap == 0 ? 64 : d->tags_cap * 2;
	qpi_shmq_tag *t;
	int64_t *ms;

	if (d->tags_cap >= QPI_DURQ_TAGS_MAX) {
		return false;
	}
	if (cap > QPI_DURQ_TAGS_MAX) {
		cap = QPI_DURQ_TAGS_MAX;
	}
	t = malloc(cap * sizeof(*t));
	ms = malloc(cap * sizeof(*ms));
	if (t == NULL || ms == NULL) {
		free(t);
		free(ms);
		return false;
	}
	for (uint64_t i = d->tags_first; i < d->tags_next; i++) {
		t[i % cap] = d->tags[i % d->tags_cap];
		ms[i % cap] = d->tag_ms[i % d->tags_cap];
	}
	free(d->tags);
	free(d->tag_ms);
	d->tags = t;
	d->tag_ms = ms;
	d->tags_cap = cap;
	return true;
}

/* Notes that request (client, seq) of n items has done of them in the
 * log: raised to done (set: set to done, a cancelled put) when it is the
 * newest request noted (the items of one request are logged one after the
 * other), else noted anew. d->mu held (or opening). */
void
qpi_dq_tag_note(qpi_durq *d, const uint8_t *client, uint64_t seq,
    uint32_t done, uint32_t n, bool set, int64_t now_ms)
{
	qpi_shmq_tag *t;

	if (d->tags_next > d->tags_first) {
		uint64_t last = d->tags_next - 1;
		t = &d->tags[last % d->tags_cap];
		if (t->seq == seq && memcmp(t->client, client, 16) == 0) {
			t->done = set || done > t->done ? done : t->done;
			t->n = n;
			d->tag_ms[last % d->tags_cap] = now_ms;
			return;
		}
	}
	/* Forget what is past the window, then make room. */
	while (d->tags_next - d->tags_first > QPI_DURQ_TAGS_MIN
	    && d->tag_ms[d->tags_first % d->tags_cap]
	        < now_ms - QPI_DURQ_TAG_KEEP_MS) {
		d->tags_first++;
	}
	if (d->tags_next - d->tags_first == d->tags_cap && !dq_tags_grow(d)) {
		if (d->tags_cap == 0) {
			return; /* out of memory: a repeat is stored again */
		}
		d->tags_first++; /* the bound: the oldest goes */
	}
	t = &d->tags[d->tags_next % d->tags_cap];
	d->tag_ms[d->tags_next % d->tags_cap] = now_ms;
	d->tags_next++;
	memcpy(t->client, client, 16);
	t->seq = seq;
	t->base = 0;
	t->n = n;
	t->done = done;
}

int
qpi_durq_tags(qpi_durq *d, qpi_shmq_tag *v, size_t cap, size_t *np)
{
	size_t n = 0;

	pthread_mutex_lock(&d->mu);
	/* The newest cap of them, oldest first. */
	uint64_t i = d->tags_next - d->tags_first > cap ? d->tags_next - cap
	                                                : d->tags_first;
	for (; i < d->tags_next && n < cap; i++) {
		const qpi_shmq_tag *t = &d->tags[i % d->tags_cap];
		if (t->done > 0 && t->done <= t->n) {
			v[n++] = *t;
		}
	}
	pthread_mutex_unlock(&d->mu);
	*np = n;
	return QP_OK;
}

/* ---- DONE records ---- */

/* Writes the DONE records that waited for space. d->mu held. */
static int
dq_flush_pending(qpi_durq *d)
{
	while (d->npending > 0) {
		uint64_t id = d->pending[d->npending - 1];
		int rv = qpi_dq_write_done(d, id);
		if (rv != QP_OK) {
			return rv;
		}
		d->npending--;
		qpi_dq_live_drop(d, id);
	}
	return QP_OK;
}

/* Item id is gone for good: log DONE (or keep it for later: the room
 * held back for it is gone, say, where the file system cannot
 * preallocate; a compaction then drops the item instead). */
static void
dq_done(qpi_durq *d, uint64_t id)
{
	qpi_dq_live *e;

	if (dq_flush_pending(d) == QP_OK
	    && qpi_dq_write_done(d, id) == QP_OK) {
		qpi_dq_live_drop(d, id);
		/* Not synced even with "always": a DONE lost to a power cut
		 * only delivers its item again (at least once). */
		(void) qpi_dq_commit(d, d->end, true);
		qpi_dq_maybe_compact(d);
		return;
	}
	if ((e = dq_live_find(d, id)) != NULL && e->gone) {
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
	if (e != NULL) {
		e->gone = true;
		d->live_bytes -= e->bytes;
	}
	/* A full disk: a compaction that leaves the item out frees room. */
	d->nospc = true;
	qpi_dq_maybe_compact(d);
}

/* ---- counters for metrics: PATH.stat ----
 *
 * A durable queue's counters (shmq.h's qpi_shmq_mx) live in a small file
 * beside its log, PATH.stat, mapped shared: the private segment counts
 * into it (qpi_shmq_counters_place), puts and gets are counted here, and
 * the figures outlive a kill -9 (the page cache) and the server. A
 * 64-byte header (magic: a newline then "QDSTAT1"; u32 version) comes
 * first. Advisory: if the file cannot be made, the counters start at
 * each open. */

#define DQ_STAT_MAGIC   0x315441545344510aull /* "\nQDSTAT1" */
#define DQ_STAT_VERSION 1u
#define DQ_STAT_SIZE    4096u

typedef struct dq_stat_file {
	uint64_t magic;
	uint32_t version;
	uint32_t pad[13];
	qpi_shmq_mx mx; /* at offset 64 */
} dq_stat_file;

/* Maps PATH.stat (made if missing or not ours) and counts into it. */
static void
dq_stat_open(qpi_durq *d)
{
	char *sp = qpi_dq_path(d->path, ".stat");
	int fd
	    = sp != NULL ? open(sp, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : -1;
	dq_stat_file *f = MAP_FAILED;
	struct stat st;

	free(sp);
	if (fd >= 0 && fstat(fd, &st) == 0
	    && (st.st_size == DQ_STAT_SIZE
	        || ftruncate(fd, DQ_STAT_SIZE) == 0)) {
		f = mmap(NULL, DQ_STAT_SIZE, PROT_READ | PROT_WRITE,
		    MAP_SHARED, fd, 0);
	}
	if (fd >= 0) {
		close(fd);
	}
	if (f == MAP_FAILED) {
		return;
	}
	if (f->magic != DQ_STAT_MAGIC || f->version != DQ_STAT_VERSION
	    || f->mx.version != QPI_SHMQ_MX_VERSION
	    || st.st_size != DQ_STAT_SIZE) {
		memset(f, 0, sizeof(*f));
		f->version = DQ_STAT_VERSION;
		f->mx.version = QPI_SHMQ_MX_VERSION;
		f->magic = DQ_STAT_MAGIC;
	}
	d->mx_map = f;
	d->mx = &f->mx;
	qpi_shmq_counters_place(d->shm, d->mx);
}

int
qpi_durq_open(qpi_durq **dp, const char *path, unsigned flags,
    const qpi_durq_cfg *cfg, const qpi_fsync *def, qpi_durq_info *infop)
{
	qpi_durq_info info = {0};
	qpi_durq_cfg c = cfg != NULL ? *cfg : (qpi_durq_cfg) {0};
	qpi_durq *d;
	int rv;

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
			return qpi_dq_errno(
			    errno, "no durable queue file", path);
		}
		if ((rv = qpi_dq_create_file(
		         path, &c, (flags & QP_OPEN_EXCL) != 0))
		    != QP_OK) {
			return rv;
		}
	} else if ((flags & QP_OPEN_CREATE) && (flags & QP_OPEN_EXCL)) {
		return qpi_err(QP_EEXIST, "%s exists already", path);
	}
	if ((d = calloc(1, sizeof(*d))) == NULL
	    || (d->path = strdup(path)) == NULL || !dq_tags_grow(d)) {
		if (d != NULL) {
			free(d->path);
		}
		free(d);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	pthread_mutex_init(&d->mu, NULL);
	d->refs = 1;
	d->pid = getpid();
	qpi_cond_init(&d->cv);
	d->fd = open(path, O_RDWR | O_CLOEXEC);
	if (d->fd < 0) {
		rv = qpi_dq_errno(errno, "cannot open", path);
		goto fail;
	}
	if (flock(d->fd, LOCK_EX | LOCK_NB) != 0) {
		rv = errno == EWOULDBLOCK
		    ? qpi_err(QP_EBUSY,
		        "%s is open in another process (one process serves a "
		        "durable queue at a time)",
		        path)
		    : qpi_dq_errno(errno, "cannot lock", path);
		goto fail;
	}
	char *tmp = qpi_dq_path(path, ".tmp");
	if (tmp != NULL) {
		unlink(tmp); /* a compaction cut short */
	}
	free(tmp);
	d->prealloc = true;
	if ((rv = qpi_dq_load(d, &info)) != QP_OK) {
		goto fail;
	}
	/* Room for the DONEs the live items owe: a disk too full for it
	 * compacts as soon as that helps. */
	if (qpi_dq_reserve(d, 0) != QP_OK) {
		d->nospc = true;
	}
	dq_stat_open(d); /* after the load: the replay's puts do not count */
	d->fsync = d->cfg.fsync.mode != QPI_FSYNC_DEFAULT ? d->cfg.fsync
	    : def != NULL && def->mode != QPI_FSYNC_DEFAULT
	    ? *def
	    : (qpi_fsync) {QPI_FSYNC_INTERVAL, QPI_FSYNC_DEF_MS};
	if (d->fsync.mode == QPI_FSYNC_INTERVAL) {
		if (pthread_create(&d->flusher, NULL, qpi_dq_flusher, d)
		    != 0) {
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
		qpi_dq_unmap(d);
		if (d->alloc_end > d->end && d->pid == getpid()) {
			/* The room held back goes back: a closed log is its
			 * records. */
			if (ftruncate(d->fd, (off_t) d->end) != 0) {
				/* a zero tail: room, cut at the next open */
			}
		}
		close(d->fd);
	}
	qpi_shmq_free(d->shm);
	if (d->mx_map != NULL) {
		munmap(d->mx_map, DQ_STAT_SIZE);
	}
	dq_htab_clear(&d->live);
	dq_htab_clear(&d->leases);
	free(d->pending);
	free(d->tags);
	free(d->tag_ms);
	free(d->path);
	pthread_cond_destroy(&d->cv);
	pthread_mutex_destroy(&d->mu);
	free(d);
}

int
qpi_durq_unlink(const char *path)
{
	char *sp = qpi_dq_path(path, ".stat");

	if (sp != NULL) {
		unlink(sp); /* its counters go with it */
		free(sp);
	}
	if (unlink(path) != 0) {
		return qpi_dq_errno(errno, "cannot remove", path);
	}
	qpi_dq_sync_dir(path);
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

	if (ticket != NULL) {
		*ticket = 0; /* until the record is in */
	}
	if (len > d->cfg.max_message
	    || QPI_SHMQ_REC_SIZE(len + DQ_WRAP) > d->cfg.capacity) {
		return qpi_err(QP_ETOOBIG,
		    "an item of %zu bytes is over the queue's %llu-byte limit",
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
	/* Room for the record and for what it will owe: its DONE, and the
	 * MARK a compaction writes for its tag. */
	uint64_t owe = DQ_REC_HDR + sizeof(fix) + len + DQ_DONE_REC
	    + (tag != NULL ? sizeof(trailer) + DQ_MARK_REC : 0);
	pthread_mutex_lock(&d->mu);
	id = d->next_id;
	fix[0] = tag != NULL ? DQ_T_PUT_TAG : DQ_T_PUT;
	qpi_le64_put(fix + 1, id);
	fix[9] = (uint8_t) kind;
	if (tag != NULL) {
		qpi_dq_tag_encode(
		    trailer, tag->client, tag->seq, tag->base, tag->n);
	}
	/* DONEs that found no room: a compaction leaves their items out. A
	 * full disk first tries a compaction that frees enough. */
	if ((rv = dq_flush_pending(d)) == QP_ENOSPC) {
		d->nospc = true;
		if (qpi_dq_compact_for_room(d, 1) == QP_OK) {
			rv = QP_OK;
		}
	}
	if (rv == QP_OK && (rv = qpi_dq_reserve(d, owe)) == QP_ENOSPC) {
		d->nospc = true;
		if (qpi_dq_compact_for_room(d, owe) == QP_OK) {
			rv = qpi_dq_reserve(d, owe);
		}
		if (rv != QP_OK) {
			rv = qpi_err(QP_ENOSPC,
			    "no space left on the disk of %s (cannot append "
			    "to it)",
			    d->path);
		}
	}
	if (rv != QP_OK
	    || (rv = qpi_dq_append(d, fix, sizeof(fix), buf, len, trailer,
	            tag != NULL ? sizeof(trailer) : 0, &off))
	        != QP_OK
	    || (rv = qpi_dq_commit(d, off, ticket != NULL)) != QP_OK) {
		pthread_mutex_unlock(&d->mu);
		return rv;
	}
	d->next_id++;
	d->nospc = false;
	if (qpi_dq_live_add(d, id, off, d->end - off) != QP_OK) {
		/* Not in the map: compaction would drop it. Cancel. */
		dq_done(d, id);
		pthread_mutex_unlock(&d->mu);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
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
			static const uint8_t mark = DQ_T_MARK;
			(void) qpi_dq_append(d, &mark, 1, trailer,
			    sizeof(trailer), NULL, 0, NULL);
			qpi_dq_tag_note(d, tag->client, tag->seq, tag->base,
			    tag->n, true, qpi_now_ms());
		}
		pthread_mutex_unlock(&d->mu);
		return qpi_err(keep, "%s", msg);
	}
	if (tag != NULL) {
		pthread_mutex_lock(&d->mu);
		qpi_dq_tag_note(d, tag->client, tag->seq, tag->base + 1,
		    tag->n, false, qpi_now_ms());
		pthread_mutex_unlock(&d->mu);
	}
	if (d->mx != NULL) {
		qpi_shmq_mx_add(&d->mx->puts, 1);
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
	return dq_put(d, buf, len, kind, 0, ticket, tag);
}

int
qpi_durq_put_async(
    qpi_durq *d, const void *buf, size_t len, unsigned kind, uint64_t *ticket)
{
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
			rv = qpi_dq_errno(e, "cannot sync", d->path);
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
 * asked for; *idp gets its id. On an error the item (*bufp) is freed and
 * its lease lease_id given back. */
static int
dq_unwrap(qpi_durq *d, uint64_t lease_id, void **bufp, size_t *lenp,
    unsigned flags, uint64_t *idp, unsigned *kindp)
{
	uint8_t *p = *bufp, hdr[5];
	size_t len = *lenp - DQ_WRAP, hn = 0;

	/* With QPI_GET_OBJ a raw item goes out as a msgpack bin. */
	if (*lenp < DQ_WRAP
	    || ((flags & QPI_GET_OBJ) && p[8] == QPI_ITEM_BIN
	        && (hn = qpi_wire_bin_header(len, hdr)) == 0)) {
		free(p);
		qpi_shmq_release(d->shm, lease_id);
		return qpi_err(QP_ECORRUPT, "a durable item lost its id");
	}
	*idp = qpi_le64_get(p);
	*kindp = p[8];
	memmove(p + hn, p + DQ_WRAP, len);
	memcpy(p, hdr, hn);
	*lenp = len + hn;
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

	if ((rv = qpi_shmq_get_lease(d->shm, qpi_shmq_owner_self(), -1, 0,
	         &raw, &rawlen, &l, deadline_ns))
	        != QP_OK
	    || (rv = dq_unwrap(d, l.id, &raw, &rawlen, flags, &id, &kind))
	        != QP_OK) {
		return rv;
	}
	*lenp = rawlen;
	if (into != NULL && rawlen > cap) {
		free(raw);
		qpi_shmq_release(d->shm, l.id);
		return qpi_err(QP_ETOOBIG,
		    "the item has %zu bytes, the buffer %zu", rawlen, cap);
	} else if (into != NULL) {
		memcpy(into, raw, rawlen);
		free(raw);
	} else {
		*bufp = raw;
	}
	qpi_shmq_ack(d->shm, l.id);
	pthread_mutex_lock(&d->mu);
	dq_done(d, id);
	pthread_mutex_unlock(&d->mu);
	if (d->mx != NULL) {
		qpi_shmq_mx_add(&d->mx->gets, 1);
	}
	return QP_OK;
}

/* Notes that lease lease_id holds item id (a lease id noted before now
 * holds id). QP_OK or QP_ENOMEM. d->mu held. */
static int
dq_lease_add(qpi_durq *d, uint64_t lease_id, uint64_t id)
{
	qpi_dq_lease *e = (qpi_dq_lease *) qpi_htab_find(&d->leases, lease_id);

	if (e == NULL
	    && (e = dq_node_new(&d->leases, sizeof(*e), lease_id)) == NULL) {
		return QP_ENOMEM;
	}
	e->item = id;
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
	if ((rv = qpi_shmq_get_lease_max(d->shm, owner, lease_ms, 0,
	         max_len != 0 ? max_len + DQ_WRAP : 0, &raw, &rawlen, lease,
	         0))
	        != QP_OK
	    || (rv = dq_unwrap(d, lease->id, &raw, &rawlen, flags, &id, &kind))
	        != QP_OK) {
		return rv;
	}
	pthread_mutex_lock(&d->mu);
	rv = dq_lease_add(d, lease->id, id);
	pthread_mutex_unlock(&d->mu);
	if (rv != QP_OK) {
		free(raw);
		qpi_shmq_release(d->shm, lease->id);
		return qpi_err(QP_ENOMEM, "out of memory");
	}
	lease->kind = kind;
	*bufp = raw;
	*lenp = rawlen;
	if (d->mx != NULL) {
		qpi_shmq_mx_add(&d->mx->gets, 1);
	}
	return QP_OK;
}

int
qpi_durq_ack(qpi_durq *d, uint64_t lease_id)
{
	int rv = qpi_shmq_ack(d->shm, lease_id);
	qpi_dq_lease *e;

	pthread_mutex_lock(&d->mu);
	e = (qpi_dq_lease *) qpi_htab_find(&d->leases, lease_id);
	if (e != NULL) {
		uint64_t id = e->item;
		qpi_htab_remove(&d->leases, &e->node);
		free(e);
		if (rv == QP_OK) {
			dq_done(d, id);
		}
	}
	pthread_mutex_unlock(&d->mu);
	return rv;
}

int
qpi_durq_lease_item(qpi_durq *d, uint64_t lease_id, uint64_t *idp)
{
	qpi_dq_lease *e;
	int rv = qpi_shmq_lease_held(d->shm, lease_id);

	if (rv != QP_OK) {
		return rv;
	}
	pthread_mutex_lock(&d->mu);
	e = (qpi_dq_lease *) qpi_htab_find(&d->leases, lease_id);
	if (e != NULL) {
		*idp = e->item;
	}
	pthread_mutex_unlock(&d->mu);
	return e != NULL ? QP_OK
	                 : qpi_err(QP_ENOENT, "no lease %llu",
	                     (unsigned long long) lease_id);
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
	dq_htab_clear(&d->leases);
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
