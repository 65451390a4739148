/*
 * durq_int.h - what the modules of a durable queue share (durq.h is the
 * interface): the file's layout constants, the queue's state, and the
 * calls each module offers the others.
 *
 *   durq.c          the calls of durq.h: open and close, puts, gets,
 *                   leases, tags, syncs; the live-item map
 *   durq_log.c      the log file: header, records, appending, making
 *                   writes durable (commit, the flusher), fsync policies
 *   durq_replay.c   opening: validate every record, cut a torn tail,
 *                   rebuild the live items and refill the queue
 *   durq_compact.c  rewriting the log with the live items only
 *
 * Locking (durq.c sets it out): d->mu guards the state in struct
 * qpi_durq. Every call below that takes a qpi_durq wants d->mu held,
 * unless it says otherwise.
 */
#ifndef QPI_DURQ_INT_H
#define QPI_DURQ_INT_H

#include "durq.h"
#include "htab.h"
#include "le.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

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
#define DQ_DONE_REC    (DQ_REC_HDR + DQ_DONE_LEN)
#define DQ_MARK_REC    (DQ_REC_HDR + DQ_MARK_LEN)
#define DQ_WRAP        9u /* id and kind before an item in the shm queue */
#define DQ_COMPACT_MIN (4ull * 1024 * 1024)
/* Room held back past the log's end beyond the DONE and MARK records it
 * owes (a compaction's header and page rounding), and the step in which
 * room is taken from the file system. */
#define DQ_RESERVE_FIX  (64u * 1024)
#define DQ_RESERVE_STEP (64u * 1024)

/* A live item: a PUT record in the log without its DONE. */
typedef struct qpi_dq_live {
	qpi_hnode node; /* key: the item's id */
	uint64_t off; /* the record's offset in the log */
	uint64_t bytes; /* the record's bytes, its header included */
	bool gone; /* got for good, its DONE waiting in d->pending */
} qpi_dq_live;

/* A lease taken with qpi_durq_get_lease, not yet acked. */
typedef struct qpi_dq_lease {
	qpi_hnode node; /* key: the lease id */
	uint64_t item; /* the leased item's id */
} qpi_dq_lease;

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
	qpi_htab live; /* qpi_dq_live by item id */
	qpi_htab leases; /* qpi_dq_lease by lease id */
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
	/* The put requests remembered (a ring of tags_cap, growing up to
	 * QPI_DURQ_TAGS_MAX): tags_first..tags_next-1, each noted at
	 * tag_ms (monotonic; replayed ones at the open). */
	qpi_shmq_tag *tags;
	int64_t *tag_ms;
	size_t tags_cap;
	uint64_t tags_first; /* the oldest remembered */
	uint64_t tags_next; /* tags noted, ever */
	/* Room on the disk: blocks are allocated (fallocate, the file's size
	 * growing with them) up to alloc_end, so that the DONE of every live
	 * item, the MARKs a compaction writes and DQ_RESERVE_FIX always fit
	 * (qpi_dq_reserve). prealloc: the file system can do it. Records
	 * that land in that room are copied through a shared map of the file
	 * (win: win_len bytes from file offset win_off), a store instead of
	 * a system call; others are written with pwritev. */
	uint64_t alloc_end;
	bool prealloc;
	uint8_t *win;
	uint64_t win_off;
	size_t win_len;
	bool nospc; /* a put met a full disk: compact as soon as it helps */
	int refs; /* qpi_durq_hold */
	pid_t pid; /* the process that opened it */
	/* Metrics: the queue's counters in PATH.stat (mapped, so they
	 * outlive the process and its private segment); NULL: counted in
	 * the segment only, since the open. */
	qpi_shmq_mx *mx;
	void *mx_map;
};

/* ---- durq.c: live items and tags ---- */

/* Notes item id live: its record is bytes long at off. QP_OK or
 * QP_ENOMEM (nothing noted). */
int qpi_dq_live_add(qpi_durq *d, uint64_t id, uint64_t off, uint64_t bytes);

/* Forgets item id (its DONE is in the log), if it was live. */
void qpi_dq_live_drop(qpi_durq *d, uint64_t id);

/* The live items not gone, in id order (the log's order): a malloc'd
 * array in *vp of *np. QP_OK or QP_ENOMEM. */
int qpi_dq_live_sorted(qpi_durq *d, qpi_dq_live ***vp, size_t *np);

/* Notes that request (client, seq) of n items has done of them in the
 * log (set: exactly done, a cancelled put; else at least done), at time
 * now_ms; forgets the requests older than QPI_DURQ_TAG_KEEP_MS beyond the
 * newest QPI_DURQ_TAGS_MIN, and the oldest beyond QPI_DURQ_TAGS_MAX. */
void qpi_dq_tag_note(qpi_durq *d, const uint8_t *client, uint64_t seq,
    uint32_t done, uint32_t n, bool set, int64_t now_ms);

/* ---- durq_log.c: the file and its records ---- */

/* path + suffix (".tmp", ".stat"), malloc'd; NULL when out of memory. No
 * lock needed. */
char *qpi_dq_path(const char *path, const char *suffix);

/* fsyncs the directory holding path (a rename or create is durable). */
void qpi_dq_sync_dir(const char *path);

/* Records a message for errno e of doing what to path and returns
 * QP_ENOENT (no such file), QP_ENOSPC (disk or quota full) or
 * QP_ESYSTEM. */
int qpi_dq_errno(int e, const char *what, const char *path);

/* Writes all of iov (n pieces, changed on the way) at off; 0 or an
 * errno. */
int qpi_dq_pwritev_all(int fd, struct iovec *iov, int n, uint64_t off);

/* Writes the DQ_HDR-byte file header holding c at the start of file fd,
 * fdatasync'd too with sync: 0 or an errno. */
int qpi_dq_hdr_write(int fd, const qpi_durq_cfg *c, bool sync);

/* Reads a file header into *c and the file's layout into *versionp.
 * QP_OK, QP_ECORRUPT or QP_EVERSION, naming path. */
int qpi_dq_hdr_decode(
    const uint8_t *h, qpi_durq_cfg *c, const char *path, uint32_t *versionp);

/* Creates the file at path holding only its header (excl: QP_EEXIST if
 * it exists), durably. */
int qpi_dq_create_file(const char *path, const qpi_durq_cfg *c, bool excl);

/* Appends one record (body in up to three pieces) at d->end; *offp (may
 * be NULL) gets its offset. On failure the file is cut back. Through the
 * map, the length goes first, then the CRC, then the body, so that a
 * process killed in the middle leaves a record that fails its CRC ahead
 * of zeros: a torn tail. */
int qpi_dq_append(qpi_durq *d, const uint8_t *b1, size_t n1, const void *b2,
    size_t n2, const uint8_t *b3, size_t n3, uint64_t *offp);

/* Makes what was appended durable per the policy: synced now for
 * "always" (unless defer), else left to the flusher. undo_end: where to
 * cut the file back if the sync fails. */
int qpi_dq_commit(qpi_durq *d, uint64_t undo_end, bool defer);

/* Makes sure blocks are allocated up to d->end + extra (a record about
 * to be appended and what it will owe) + what the log owes: the DONE of
 * every live item, a MARK per tag, DQ_RESERVE_FIX. QP_OK (also where the file
 * system cannot preallocate), or QP_ENOSPC with a message: nothing was
 * written. */
int qpi_dq_reserve(qpi_durq *d, uint64_t extra);

/* Unmaps the append window (the file is about to change or close). */
void qpi_dq_unmap(qpi_durq *d);

/* Appends the DONE record of item id. */
int qpi_dq_write_done(qpi_durq *d, uint64_t id);

/* Writes a tag's DQ_TAG_LEN bytes (client id, seq, v, n) at p. */
void qpi_dq_tag_encode(
    uint8_t *p, const uint8_t *client, uint64_t seq, uint32_t v, uint32_t n);

/* The flusher thread of an "interval" queue (arg: the qpi_durq); takes
 * d->mu itself, and returns once d->stop is set. */
void *qpi_dq_flusher(void *arg);

/* ---- durq_replay.c: opening ---- */

/* Reads the file: header, every record (a torn tail is cut), the live
 * items into d->live and, in id order, into a new d->shm; *info says what
 * was found. QP_OK, QP_ECORRUPT, QP_EVERSION, QP_ENOMEM, QP_ESYSTEM.
 * Called while opening, before anyone else can reach d. */
int qpi_dq_load(qpi_durq *d, qpi_durq_info *info);

/* ---- durq_compact.c ---- */

/* Rewrites the log with the live items only when dead records outweigh
 * them (4 MiB, and twice the live bytes); on failure, tries again only
 * once the log has grown. */
void qpi_dq_maybe_compact(qpi_durq *d);

/* On a full disk (d->nospc): rewrites the log now if that frees at least
 * want bytes and the copy fits in the room the disk has left plus the
 * room the log holds back. QP_OK if it did, else an error (QP_ENOSPC:
 * it would not fit or not help). */
int qpi_dq_compact_for_room(qpi_durq *d, uint64_t want);

#endif /* QPI_DURQ_INT_H */
