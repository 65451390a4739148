/*
 * durq.h - durable queues, internal to libqpipe (qpi_durq_ names): a queue
 * whose truth is an append-only log file, served from a private
 * shared-memory queue (shmq.h) rebuilt from the log when it is opened.
 * qpiped keeps its durable queues this way under --data-dir, and
 * qp_queue_open serves "shm://NAME" with QP_OPEN_DURABLE from a file.
 *
 * The file. A 64-byte header (magic "QPDURQ1", layout version, the queue's
 * settings, fsync policy, CRC-32C), then records, each
 *
 *     u32 len | u32 crc | body (len bytes)        little-endian
 *
 * where crc is the CRC-32C of the len field and the body, and the body is
 * PUT (type 1, u64 id, u8 kind, the item's bytes), DONE (type 2, u64 id),
 * PUT_TAG (type 3: a PUT of qpiped's, the request's tag after the item:
 * 16-byte client id, u64 seq, u32 the item's index in its request, u32
 * the request's items) or MARK (type 4, a tag alone: client id, seq, u32
 * items of the request stored, u32 its items). Ids grow by one with every
 * put and are never reused. Layout 2 added types 3 and 4; a layout 1 file
 * is read as it is and its header rewritten to 2 when opened (an older
 * reader then refuses it with QP_EVERSION instead of misreading it).
 *
 * Tags. The queue remembers qpiped's put requests (qpi_durq_tags): which
 * (client id, seq) are in it, and how many items of a batch cut short by
 * a kill; every request of the last QPI_DURQ_TAG_KEEP_MS, at least the
 * last QPI_DURQ_TAGS_MIN, at most QPI_DURQ_TAGS_MAX. Replaying the log
 * rebuilds them (up to QPI_DURQ_TAGS_MAX, each counted as noted at the
 * open: the log keeps no times). Compaction writes them as MARK records
 * ahead of the live PUTs, so they outlive their items; a put cancelled
 * after its record was written appends a MARK that takes it back. The
 * live items are
 * the PUTs without a DONE, in id order: a get that is confirmed (a plain
 * get, or an ack of a lease) appends DONE, never synced on its own (a DONE
 * lost to a power cut only delivers its item again); a leased item has
 * none yet, so after a restart it is ready again. A put is appended (and, with
 * fsync "always", fdatasync'd) before it enters the queue and is acknowledged:
 * a kill -9 never loses an acknowledged put (the bytes are in the page
 * cache), and with "always" neither does a power cut. When dead records
 * outweigh the live ones (4 MiB and twice the live bytes) the log is
 * compacted: the live PUTs are copied to NAME.tmp, synced, renamed over
 * the log.
 *
 * Opening validates every record. A record cut short at the end (or one
 * whose CRC fails and that has only zeros after it) is a torn tail: it is
 * cut off (info->torn), and every complete record before it is kept; a
 * zero-filled end (the room below, left by a process that did not close
 * the queue) is cut too, without a word. A bad record followed by more
 * data is corruption: the open fails with QP_ECORRUPT naming the file and
 * offset, and the file is left untouched (quarantined: nothing is served
 * from it).
 *
 * A full disk. The log holds room back past its end, allocated with
 * fallocate and part of the file's size while it is open (given back at
 * the close): the DONE record of every live item, the MARK of every
 * remembered tag, and 64 KiB. Records that fit in that room are stored
 * through a shared map of the file, length first, then CRC, then body
 * (the page cache has them once the copy is done, as after a write(2):
 * a kill -9 loses nothing acknowledged, and one in the middle of a copy
 * leaves a torn tail); larger ones, and all of them where the file
 * system cannot preallocate, are written with pwritev. A process that
 * cuts the file short under an open queue kills its owner (SIGBUS): the
 * file is its owner's alone (0600, flock). A put
 * first makes sure of room for its record and for what it will owe; if
 * the disk has none, it fails with QP_ENOSPC (nothing is written, stored
 * or acknowledged). So gets always find room for their DONE records, and
 * a consumed item stays consumed across a restart. While puts meet a full
 * disk, the log is compacted as soon as half of it is dead (and before a
 * put fails, if compacting frees enough), when the copy fits in what the
 * disk has left plus the room held back (given back to the file system
 * first): a drained queue always fits, so puts resume. Where the file
 * system cannot preallocate, DONE records that find no room wait in
 * memory and a compaction leaves their items out.
 *
 * Counters for metrics (puts, gets, confirmations, redeliveries: shmq.h's
 * qpi_shmq_mx) live beside the log in PATH.stat, mapped shared, so that
 * they outlive the process; qpi_durq_unlink removes it with the log.
 *
 * Locking: one mutex per queue guards the file, the id counter and the
 * maps; the shared-memory queue has its own locks, and blocking waits on
 * it are made without the mutex. An "interval" queue has a flusher thread
 * that fdatasyncs the file at most every MS after a write, without the
 * mutex held during the sync. One process opens a file at a time (flock).
 */
#ifndef QPI_DURQ_H
#define QPI_DURQ_H

#include "crc32c.h" /* qpi_crc32c(), the checksum of the file */
#include "shmq.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct qpi_durq qpi_durq;

/* fsync policies. DEFAULT: whatever the opener's default is (qpiped's
 * --fsync, or interval:100). */
enum {
	QPI_FSYNC_DEFAULT = 0,
	QPI_FSYNC_ALWAYS = 1, /* each put is on disk before it is acked */
	QPI_FSYNC_INTERVAL = 2, /* fdatasync at most ms after a write */
	QPI_FSYNC_NEVER = 3, /* the kernel writes back when it likes */
};
#define QPI_FSYNC_DEF_MS  100u
#define QPI_FSYNC_MAX_MS  60000u
#define QPI_FSYNC_STR_MAX 32

typedef struct qpi_fsync {
	uint32_t mode; /* QPI_FSYNC_* */
	uint32_t ms; /* INTERVAL: 1..QPI_FSYNC_MAX_MS */
} qpi_fsync;

/* Parses "always", "never", "interval" (100 ms) or "interval:MS"; NULL or
 * "" is DEFAULT. QP_EINVAL with a message otherwise. */
int qpi_fsync_parse(const char *s, qpi_fsync *f);

/* Writes the policy as qpi_fsync_parse reads it ("default" for DEFAULT). */
void qpi_fsync_format(const qpi_fsync *f, char *buf, size_t cap);

/* Settings of a durable queue, stored in its file at creation. */
typedef struct qpi_durq_cfg {
	uint64_t maxsize; /* items; 0 = unbounded */
	uint64_t capacity; /* bytes of storage; 0 = 64 MiB */
	uint64_t max_message; /* largest item; 0 = 32 MiB */
	uint64_t lease_ms; /* default lease (qpiped); 0 = the server's */
	qpi_fsync fsync; /* DEFAULT: the opener's default */
} qpi_durq_cfg;

/* What opening found in the file. */
typedef struct qpi_durq_info {
	uint64_t records; /* complete records read */
	uint64_t items; /* live items now in the queue */
	uint64_t cut_at; /* a tail cut: the file now ends here ... */
	uint64_t cut_bytes; /* ... after cutting this many bytes (0: none) */
	bool torn; /* ... some of them not zeros: a record cut short */
} qpi_durq_info;

/* Opens (flags as qp_queue_open's) the durable queue in file path; cfg for
 * a new one, def the policy of a DEFAULT one (NULL: interval:100), info
 * what was found. QP_ECORRUPT leaves the file untouched; QP_EBUSY: open
 * in another process; QP_ENOENT, QP_EEXIST, QP_ENOSPC, QP_ENOMEM. */
int qpi_durq_open(qpi_durq **dp, const char *path, unsigned flags,
    const qpi_durq_cfg *cfg, const qpi_fsync *def, qpi_durq_info *info);

/* Drops a reference (one from open, one per qpi_durq_hold); the last
 * syncs the file if needed, stops the flusher, closes and frees. NULL ok. */
void qpi_durq_free(qpi_durq *d);

/* Removes a durable queue's file (not open anywhere): QP_OK or
 * QP_ENOENT. */
int qpi_durq_unlink(const char *path);

/* QP_OK in the process that opened d; QP_EINVAL (with a message) in a
 * child forked after: its copy of the log's state would go astray. */
int qpi_durq_check_owner(qpi_durq *d);

/* The shared-memory queue that serves the items (owned by d): qsize,
 * stat, task_done, join, release, expire and watching go to it directly.
 * Its items are stored wrapped (id and kind first): take them with the
 * get calls below only. */
qpi_shmq *qpi_durq_shm(qpi_durq *d);

/* The settings stored in the file, and the policy in force. */
void qpi_durq_settings(qpi_durq *d, qpi_durq_cfg *cfg);

/* Appends the item to the log (synced per policy), then puts it in the
 * queue, waiting until deadline_ns while it is full (see qpi_shmq_put).
 * Errors: QP_EFULL, QP_ETOOBIG, QP_ENOSPC (disk full: not stored),
 * QP_ESYSTEM (write or sync failed: not stored), QP_ECLOSED. */
int qpi_durq_put(qpi_durq *d, const void *buf, size_t len, unsigned kind,
    int64_t deadline_ns);

/* As qpi_durq_put without waiting, the record tagged with qpiped's
 * request: tag->base is the item's index in the request, tag->n the
 * request's items. ticket NULL: synced per policy before it returns;
 * else as qpi_durq_put_async. */
int qpi_durq_put_tagged(qpi_durq *d, const void *buf, size_t len,
    unsigned kind, const qpi_shmq_tag *tag, uint64_t *ticket);

/* The put requests a durable queue remembers (qpi_durq_tags): every one
 * noted in the last QPI_DURQ_TAG_KEEP_MS, and at least the last
 * QPI_DURQ_TAGS_MIN, but never more than QPI_DURQ_TAGS_MAX (the oldest
 * go first). Opening counts every request the log holds as noted then.
 * The client's retry horizon (QPI_RQ_RECONNECT_MS after the connection
 * was lost, plus the call's wait) is well inside KEEP_MS. */
#define QPI_DURQ_TAGS_MIN    1024u
#define QPI_DURQ_TAGS_MAX    65536u
#define QPI_DURQ_TAG_KEEP_MS 60000

/* Copies the newest cap of the remembered put requests' tags, oldest
 * first, into v; each with done > 0 (items of it in the log). A request may
 * appear twice: the larger done counts. */
int qpi_durq_tags(qpi_durq *d, qpi_shmq_tag *v, size_t cap, size_t *np);

/* As qpi_durq_put without waiting, and, for an "always" queue, without
 * the sync: *ticket (0 for other policies) must be passed to
 * qpi_durq_sync_to before the put is acknowledged. Lets a server sync
 * many puts with one fdatasync (group commit) without holding its lock. */
int qpi_durq_put_async(
    qpi_durq *d, const void *buf, size_t len, unsigned kind, uint64_t *ticket);

/* Waits until everything up to ticket is on disk, leading an fdatasync
 * if none is under way (callers arriving meanwhile share it). Errors:
 * QP_ENOSPC, QP_ESYSTEM: the sync failed (the item may or may not be
 * durable: do not acknowledge it). */
int qpi_durq_sync_to(qpi_durq *d, uint64_t ticket);

/* Keeps d alive for one more qpi_durq_free (a caller that waits in
 * qpi_durq_sync_to without the lock that guards d's owner). */
void qpi_durq_hold(qpi_durq *d);

/* As qpi_shmq_get; the item is confirmed (DONE logged) once it is out. */
int qpi_durq_get(qpi_durq *d, unsigned flags, void *into, size_t cap,
    void **bufp, size_t *lenp, int64_t deadline_ns);

/* As qpi_shmq_get_lease_max without waiting; the item stays live in the
 * log until qpi_durq_ack confirms the lease. */
int qpi_durq_get_lease(qpi_durq *d, uint64_t owner, int64_t lease_ms,
    unsigned flags, size_t max_len, void **bufp, size_t *lenp,
    qpi_shmq_lease *lease);

/* Confirms a lease (qpi_shmq_ack) and logs its item DONE. */
int qpi_durq_ack(qpi_durq *d, uint64_t lease_id);

/* The log's id of the item under lease_id (*idp), which stays its id
 * across restarts: QP_OK, or QP_ENOENT when the lease is not held. */
int qpi_durq_lease_item(qpi_durq *d, uint64_t lease_id, uint64_t *idp);

/* Forgets lease ids that can no longer be acked (call after releases and
 * expiries; cheap when nothing is leased). */
void qpi_durq_leases_gc(qpi_durq *d);

/* qpi_shmq_stat of the queue, its bytes those of the items themselves. */
int qpi_durq_stat(qpi_durq *d, qp_queue_stats *st);

/* Bytes of the queue's storage that an item of len bytes takes. */
uint64_t qpi_durq_rec_size(size_t len);

/* Figures for tests and logs. */
typedef struct qpi_durq_stats {
	uint64_t
	    file_bytes; /* the log's records (room past them not counted) */
	uint64_t live_bytes; /* bytes of live PUT records */
	uint64_t pending_done; /* DONE records waiting for disk space */
	uint64_t compactions;
	uint64_t syncs;
} qpi_durq_stats;
void qpi_durq_stats_get(qpi_durq *d, qpi_durq_stats *st);

#endif /* QPI_DURQ_H */
