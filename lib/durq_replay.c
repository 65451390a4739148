/*
 * durq_replay.c - opening a durable queue's log: every record is checked
 * (length, CRC-32C, sense), a torn tail is cut off, a bad record with more
 * data after it fails the open (the file is left as it was), the live
 * items and the last put requests' tags are rebuilt, and the live items
 * refill a new private shared-memory queue in id order. The rules are set
 * out in durq.h.
 *
 * Locking: none needed: it runs inside qpi_durq_open, before anyone else
 * can reach the queue.
 */
#define _GNU_SOURCE
#include "durq_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Whether the n >= 1 bytes at p are all zero. */
static bool
dq_all_zero(const uint8_t *p, uint64_t n)
{
	return p[0] == 0 && memcmp(p, p + 1, n - 1) == 0;
}

/* Notes the tag a PUT_TAG (put) or MARK record carries at p, as of now
 * (the log keeps no times: a restarted server remembers every request
 * the log holds, up to QPI_DURQ_TAGS_MAX, for the window from its
 * start). */
static void
dq_tag_note_rec(qpi_durq *d, const uint8_t *p, bool put, int64_t now_ms)
{
	uint32_t v = qpi_le32_get(p + 24), n = qpi_le32_get(p + 28);

	qpi_dq_tag_note(
	    d, p, qpi_le64_get(p + 16), put ? v + 1 : v, n, !put, now_ms);
}

typedef struct dq_scan {
	uint32_t version; /* the file's layout */
	uint64_t good_end; /* after the last whole record (then: torn) */
	uint64_t records;
} dq_scan;

/* Walks the records of the mapped file (size bytes), filling d->live.
 * QP_OK (maybe torn: a torn tail ends the walk), or QP_ECORRUPT. */
static int
dq_walk(qpi_durq *d, const uint8_t *base, uint64_t size, dq_scan *s)
{
	uint64_t off = DQ_HDR;
	uint64_t maxlen = DQ_PUT_FIX + d->cfg.max_message;
	uint64_t last_id = 0;
	int64_t now_ms = qpi_now_ms();

	while (off < size) {
		uint64_t left = size - off;
		if (left < DQ_REC_HDR) {
			break;
		}
		uint32_t len = qpi_le32_get(base + off);
		/* A tagged PUT may be longer (a cut one says no type). */
		uint64_t lim = maxlen;
		if (s->version >= 2
		    && (left <= DQ_REC_HDR
		        || base[off + DQ_REC_HDR] == DQ_T_PUT_TAG)) {
			lim += DQ_TAG_LEN;
		}
		if (len < DQ_DONE_LEN || len > lim) {
			if (dq_all_zero(base + off, left)) {
				break;
			}
			return qpi_err(QP_ECORRUPT,
			    "%s: record at offset %llu has an impossible "
			    "length %u (%llu complete records before it)",
			    d->path, (unsigned long long) off, (unsigned) len,
			    (unsigned long long) s->records);
		}
		if (DQ_REC_HDR + (uint64_t) len > left) {
			break;
		}
		const uint8_t *b = base + off + DQ_REC_HDR;
		uint32_t crc = qpi_crc32c(0, base + off, 4);
		crc = qpi_crc32c(crc, b, len);
		if (crc != qpi_le32_get(base + off + 4)) {
			uint64_t after = off + DQ_REC_HDR + len;
			if (after == size
			    || dq_all_zero(base + after, size - after)) {
				break;
			}
			return qpi_err(QP_ECORRUPT,
			    "%s: record at offset %llu fails its CRC and more "
			    "records follow (%llu complete records before it)",
			    d->path, (unsigned long long) off,
			    (unsigned long long) s->records);
		}
		uint64_t id = qpi_le64_get(b + 1);
		bool tagged = b[0] == DQ_T_PUT_TAG && s->version >= 2;
		if ((b[0] == DQ_T_PUT
		        || (tagged && len >= DQ_PUT_FIX + DQ_TAG_LEN))
		    && len >= DQ_PUT_FIX
		    && (b[9] == QPI_ITEM_BIN || b[9] == QPI_ITEM_OBJ)
		    && id > last_id) {
			last_id = id;
			if (tagged) {
				dq_tag_note_rec(
				    d, b + len - DQ_TAG_LEN, true, now_ms);
			}
			if (qpi_dq_live_add(d, id, off, DQ_REC_HDR + len)
			    != QP_OK) {
				return qpi_err(QP_ENOMEM, "out of memory");
			}
		} else if (b[0] == DQ_T_MARK && len == DQ_MARK_LEN
		    && s->version >= 2) {
			dq_tag_note_rec(d, b + 1, false, now_ms);
		} else if (b[0] == DQ_T_DONE && len == DQ_DONE_LEN) {
			qpi_dq_live_drop(d, id);
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

int
qpi_dq_load(qpi_durq *d, qpi_durq_info *info)
{
	struct stat st;
	uint8_t *base = NULL;
	dq_scan s = {.good_end = DQ_HDR};
	qpi_dq_live **v = NULL;
	size_t n;
	int rv;

	if (fstat(d->fd, &st) != 0) {
		return qpi_dq_errno(errno, "cannot stat", d->path);
	}
	if ((uint64_t) st.st_size < DQ_HDR) {
		return qpi_err(QP_ECORRUPT,
		    "%s: the file header is cut short (%lld bytes)", d->path,
		    (long long) st.st_size);
	}
	base = mmap(
	    NULL, (size_t) st.st_size, PROT_READ, MAP_PRIVATE, d->fd, 0);
	if (base == MAP_FAILED) {
		return qpi_dq_errno(errno, "cannot map", d->path);
	}
	if ((rv = qpi_dq_hdr_decode(base, &d->cfg, d->path, &s.version))
	        != QP_OK
	    || (rv = dq_walk(d, base, (uint64_t) st.st_size, &s)) != QP_OK) {
		goto out;
	}
	if (s.good_end < (uint64_t) st.st_size) {
		info->cut_at = s.good_end;
		info->cut_bytes = (uint64_t) st.st_size - s.good_end;
		info->torn = !dq_all_zero(base + s.good_end, info->cut_bytes);
	}
	info->records = s.records;
	d->end = s.good_end;

	/* The queue the items are served from, filled in id order. */
	qpi_shmq_cfg sc = {.maxsize = d->cfg.maxsize,
	    .capacity = d->cfg.capacity,
	    .max_message = d->cfg.max_message + DQ_WRAP};
	if ((rv = qpi_shmq_anon(&d->shm, &sc)) != QP_OK) {
		goto out;
	}
	if ((rv = qpi_dq_live_sorted(d, &v, &n)) != QP_OK) {
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const qpi_dq_live *e = v[i];
		const uint8_t *b = base + e->off + DQ_REC_HDR + 1;
		uint64_t ilen = e->bytes - DQ_REC_HDR - 1;
		if (b[-1] == DQ_T_PUT_TAG) {
			ilen -= DQ_TAG_LEN;
		}
		rv = qpi_shmq_put(d->shm, b, (size_t) ilen, QPI_ITEM_OBJ, 0);
		if (rv != QP_OK) {
			rv = qpi_err(rv,
			    "%s: item %llu does not fit back into the queue "
			    "(%s)",
			    d->path, (unsigned long long) e->node.key,
			    qp_strerror(rv));
			goto out;
		}
		info->items++;
	}
	if (info->cut_bytes > 0 && ftruncate(d->fd, (off_t) s.good_end) == 0) {
		(void) fdatasync(d->fd);
	}
	if (s.version < DQ_VERSION) {
		/* Layout 1 reads as 2; it takes 2's records from now on, so
		 * it says 2 (an older reader refuses it: QP_EVERSION). */
		int e = qpi_dq_hdr_write(d->fd, &d->cfg, true);
		if (e != 0) {
			rv = qpi_dq_errno(
			    e, "cannot update the header of", d->path);
			goto out;
		}
	}
out:
	free(v);
	munmap(base, (size_t) st.st_size);
	return rv;
}
