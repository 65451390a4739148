/*
 * test_durq.c - durable queues (lib/durq.c): the log survives a close
 * and a reopen with every item, leased items come back, a file cut at
 * any byte of its last three records opens with every complete record
 * kept, a bad record before the end is refused (QP_ECORRUPT) and the file
 * left as it was, compaction keeps the live items, the put requests
 * remembered cover a time window (more than 1,024, bounded) across a
 * compaction and a reopen, and the public QP_OPEN_DURABLE shm:// queue
 * behaves as a queue.
 */
#include "durq.h"
#include "durq_int.h" /* qpi_dq_tag_note, to drive the window's clock */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

static char dir[64];

static int
setup(void **state)
{
	(void) state;
	snprintf(dir, sizeof(dir), "/tmp/qp-durq-XXXXXX");
	return mkdtemp(dir) == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	char cmd[128];
	(void) state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void
path_of(char *buf, size_t cap, const char *name)
{
	snprintf(buf, cap, "%s/%s", dir, name);
}

static qpi_durq_cfg
small_cfg(uint32_t mode)
{
	qpi_durq_cfg c;
	memset(&c, 0, sizeof(c));
	c.capacity = 256 * 1024;
	c.max_message = 16 * 1024;
	c.fsync.mode = mode;
	return c;
}

static uint8_t *
slurp(const char *path, size_t *lenp)
{
	FILE *f = fopen(path, "rb");
	uint8_t *b;
	long n;

	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	b = malloc((size_t) n + 1);
	assert_non_null(b);
	assert_int_equal(fread(b, 1, (size_t) n, f), (size_t) n);
	fclose(f);
	*lenp = (size_t) n;
	return b;
}

static void
spit(const char *path, const uint8_t *b, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(b, 1, len, f), len);
	fclose(f);
}

/* Drains d into items (item i's text, NUL-terminated); returns count. */
static size_t
drain(qpi_durq *d, char items[][64], size_t max)
{
	size_t n = 0;
	for (;;) {
		void *buf;
		size_t len;
		int rv = qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0);
		if (rv == QP_EEMPTY) {
			return n;
		}
		assert_int_equal(rv, QP_OK);
		assert_true(n < max && len < 64);
		memcpy(items[n], buf, len);
		items[n][len] = '\0';
		free(buf);
		n++;
	}
}

static void
put_text(qpi_durq *d, const char *s)
{
	assert_int_equal(
	    qpi_durq_put(d, s, strlen(s), QPI_ITEM_BIN, 0), QP_OK);
}

static void
test_durq_crc32c(void **state)
{
	(void) state;
	/* The standard check value of CRC-32C. */
	assert_int_equal(qpi_crc32c(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(
	    qpi_crc32c(qpi_crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
	assert_int_equal(qpi_crc32c_table(0, "123456789", 9), 0xE3069283u);
	/* The CPU's instruction (where there is one) and the table agree at
	 * every length, start alignment and split, against the bitwise
	 * definition. */
	uint8_t buf[300];
	uint32_t seed = 12345;
	for (size_t i = 0; i < sizeof(buf); i++) {
		seed = seed * 1103515245u + 12345u;
		buf[i] = (uint8_t) (seed >> 16);
	}
	for (size_t at = 0; at < 8; at++) {
		for (size_t n = 0; at + n <= sizeof(buf); n++) {
			uint32_t want = 0xFFFFFFFFu;
			for (size_t i = 0; i < n; i++) {
				want ^= buf[at + i];
				for (int k = 0; k < 8; k++) {
					want = (want & 1)
					    ? (want >> 1) ^ 0x82F63B78u
					    : want >> 1;
				}
			}
			want = ~want;
			assert_int_equal(qpi_crc32c(0, buf + at, n), want);
			assert_int_equal(
			    qpi_crc32c_table(0, buf + at, n), want);
			size_t h = n / 3;
			assert_int_equal(qpi_crc32c(qpi_crc32c(0, buf + at, h),
			                     buf + at + h, n - h),
			    want);
		}
	}
}

static void
test_durq_fsync_parse(void **state)
{
	qpi_fsync f;
	char b[32];
	(void) state;

	assert_int_equal(qpi_fsync_parse("always", &f), QP_OK);
	assert_int_equal(f.mode, QPI_FSYNC_ALWAYS);
	assert_int_equal(qpi_fsync_parse("never", &f), QP_OK);
	assert_int_equal(f.mode, QPI_FSYNC_NEVER);
	assert_int_equal(qpi_fsync_parse("interval", &f), QP_OK);
	assert_int_equal(f.ms, 100);
	assert_int_equal(qpi_fsync_parse("interval:250", &f), QP_OK);
	assert_int_equal(f.mode, QPI_FSYNC_INTERVAL);
	assert_int_equal(f.ms, 250);
	qpi_fsync_format(&f, b, sizeof(b));
	assert_string_equal(b, "interval:250");
	assert_int_equal(qpi_fsync_parse(NULL, &f), QP_OK);
	assert_int_equal(f.mode, QPI_FSYNC_DEFAULT);
	assert_int_equal(qpi_fsync_parse("", &f), QP_OK);
	assert_int_equal(f.mode, QPI_FSYNC_DEFAULT);
	const char *bad[] = {"sometimes", "interval:", "interval:0",
	    "interval:60001", "interval:1x", "interval:-5", "ALWAYS",
	    "interval:99999999999999999999"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(qpi_fsync_parse(bad[i], &f), QP_EINVAL);
		assert_non_null(strstr(qp_errmsg(), "fsync policy"));
	}
}

/* Items put, got, leased: a reopen finds the unconfirmed ones, in order,
 * leased ones included; confirmed ones are gone. */
static void
test_durq_reopen(void **state)
{
	char path[128], items[16][64];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_ALWAYS);
	qpi_durq_info info;
	qpi_shmq_lease l;
	qpi_durq *d;
	void *buf;
	size_t len;
	(void) state;

	path_of(path, sizeof(path), "reopen.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, 0, &c, NULL, NULL), QP_ENOENT);
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, &info), QP_OK);
	assert_int_equal(info.items, 0);
	put_text(d, "a");
	put_text(d, "b");
	put_text(d, "c");
	put_text(d, "d");
	/* a: got (confirmed); b: leased, never acked; c: leased, acked. */
	assert_int_equal(qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
	assert_memory_equal(buf, "a", 1);
	free(buf);
	assert_int_equal(
	    qpi_durq_get_lease(d, 7, -1, 0, 0, &buf, &len, &l), QP_OK);
	assert_memory_equal(buf, "b", 1);
	free(buf);
	assert_int_equal(
	    qpi_durq_get_lease(d, 7, -1, QPI_GET_OBJ, 0, &buf, &len, &l),
	    QP_OK);
	/* As a msgpack value: bin 8 header, then the byte. */
	assert_int_equal(len, 3);
	assert_memory_equal(buf,
	    "\xc4\x01"
	    "c",
	    3);
	free(buf);
	assert_int_equal(qpi_durq_ack(d, l.id), QP_OK);
	assert_int_equal(qpi_durq_ack(d, l.id), QP_ENOENT);
	qpi_durq_free(d);

	assert_int_equal(qpi_durq_open(&d, path, QP_OPEN_CREATE | QP_OPEN_EXCL,
	                     &c, NULL, NULL),
	    QP_EEXIST);
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, &info), QP_OK);
	assert_int_equal(info.items, 2);
	assert_int_equal(info.cut_bytes, 0);
	assert_int_equal(drain(d, items, 16), 2);
	assert_string_equal(items[0], "b");
	assert_string_equal(items[1], "d");
	qpi_durq_free(d);

	/* Drained: empty after a reopen, and new ids keep growing. */
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, &info), QP_OK);
	assert_int_equal(info.items, 0);
	put_text(d, "e");
	qpi_durq_free(d);
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, &info), QP_OK);
	assert_int_equal(drain(d, items, 16), 1);
	assert_string_equal(items[0], "e");
	qpi_durq_free(d);
	assert_int_equal(qpi_durq_unlink(path), QP_OK);
	assert_int_equal(qpi_durq_unlink(path), QP_ENOENT);
}

/* The record boundaries of a log file. */
static size_t
bounds(const uint8_t *b, size_t len, size_t *at, size_t max)
{
	size_t n = 0, off = 64;
	while (off < len && n < max) {
		at[n++] = off;
		uint32_t rl = (uint32_t) b[off] | (uint32_t) b[off + 1] << 8
		    | (uint32_t) b[off + 2] << 16
		    | (uint32_t) b[off + 3] << 24;
		off += 8 + rl;
	}
	assert_int_equal(off, len);
	at[n] = off;
	return n;
}

/* The file cut at every byte inside its last three records: it opens,
 * cut back to the last complete record, with exactly the items the
 * complete records say (a DONE among the last three included). */
static void
test_durq_torn_tail_every_byte(void **state)
{
	char path[128], cut[128], items[32][64];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_NEVER);
	qpi_durq *d;
	size_t at[64], n, len, flen;
	uint8_t *orig;
	void *buf;
	(void) state;

	path_of(path, sizeof(path), "torn.qlog");
	path_of(cut, sizeof(cut), "torn-cut.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	/* Records: PUT i0..i5, DONE i0, PUT i6 (long), DONE i1, PUT i7. */
	for (int i = 0; i < 6; i++) {
		char s[16];
		snprintf(s, sizeof(s), "i%d", i);
		put_text(d, s);
	}
	assert_int_equal(qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
	free(buf);
	put_text(d, "i6-a-longer-item-to-cut-through");
	assert_int_equal(qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
	free(buf);
	put_text(d, "i7");
	qpi_durq_free(d);

	orig = slurp(path, &flen);
	n = bounds(orig, flen, at, 63);
	assert_int_equal(n, 10);
	/* What a reader must find once records [0, k) are kept. */
	const char *want[11][9] = {
	    [7] = {"i1", "i2", "i3", "i4", "i5", NULL},
	    [8] = {"i1", "i2", "i3", "i4", "i5",
	        "i6-a-longer-item-to-cut-through", NULL},
	    [9] = {"i2", "i3", "i4", "i5", "i6-a-longer-item-to-cut-through",
	        NULL},
	    [10] = {"i2", "i3", "i4", "i5", "i6-a-longer-item-to-cut-through",
	        "i7", NULL},
	};
	for (size_t cutat = at[n - 3]; cutat <= flen; cutat++) {
		qpi_durq_info info;
		size_t k = 0, got;
		struct stat st;

		while (k < n && at[k + 1] <= cutat) {
			k++;
		}
		spit(cut, orig, cutat);
		assert_int_equal(
		    qpi_durq_open(&d, cut, 0, NULL, NULL, &info), QP_OK);
		assert_int_equal(info.records, k);
		assert_int_equal(info.cut_bytes, cutat - at[k]);
		assert_int_equal(info.torn, cutat != at[k]);
		if (cutat != at[k]) {
			assert_int_equal(info.cut_at, at[k]);
		}
		/* The torn part is gone from the file (and, once closed,
		 * the room held back while it was open). */
		qpi_durq_free(d);
		assert_int_equal(stat(cut, &st), 0);
		assert_int_equal((size_t) st.st_size, at[k]);
		assert_int_equal(
		    qpi_durq_open(&d, cut, 0, NULL, NULL, &info), QP_OK);
		assert_int_equal(info.cut_bytes, 0);
		got = drain(d, items, 32);
		qpi_durq_free(d);
		size_t w = 0;
		while (want[k][w] != NULL) {
			assert_true(w < got);
			assert_string_equal(items[w], want[k][w]);
			w++;
		}
		assert_int_equal(got, w);
	}
	/* A zero-filled end (a crash after the size grew) is a torn tail
	 * too. */
	{
		uint8_t *z = calloc(1, flen + 300);
		qpi_durq_info info;
		memcpy(z, orig, flen);
		spit(cut, z, flen + 300);
		assert_int_equal(
		    qpi_durq_open(&d, cut, 0, NULL, NULL, &info), QP_OK);
		assert_int_equal(info.records, n);
		assert_int_equal(info.cut_bytes, 300);
		assert_false(info.torn); /* room held back: no record cut */
		qpi_durq_free(d);
		free(z);
	}
	free(orig);
}

/* What a process killed while it stores a record through its map of
 * the log leaves: the length alone, then the CRC, then the body byte by
 * byte, with the zeros of the room held back after it. Each opens with
 * the records before it kept and the rest cut as a torn tail (never
 * QP_ECORRUPT); the whole record opens with it. */
static void
test_durq_torn_in_room(void **state)
{
	char path[128], cut[128], items[32][64];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_NEVER);
	qpi_durq *d;
	size_t at[16], n, flen;
	uint8_t *orig, *img;
	const size_t room = 64 * 1024;
	(void) state;

	path_of(path, sizeof(path), "room.qlog");
	path_of(cut, sizeof(cut), "room-cut.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	put_text(d, "first");
	put_text(d, "second-one");
	qpi_durq_free(d);
	orig = slurp(path, &flen);
	n = bounds(orig, flen, at, 15);
	assert_int_equal(n, 2);
	img = calloc(1, flen + room);
	assert_non_null(img);
	/* stop: bytes of the last record stored, in the map's order */
	for (size_t stop = 0; stop <= flen - at[1]; stop++) {
		qpi_durq_info info;
		memset(img, 0, flen + room);
		memcpy(img, orig, at[1] + stop);
		spit(cut, img, flen + room);
		assert_int_equal(
		    qpi_durq_open(&d, cut, 0, NULL, NULL, &info), QP_OK);
		bool whole = stop == flen - at[1];
		assert_int_equal(info.records, whole ? 2 : 1);
		assert_int_equal(info.torn, stop > 0 && !whole);
		assert_int_equal(info.cut_at, whole ? flen : at[1]);
		size_t got = drain(d, items, 32);
		qpi_durq_free(d);
		assert_int_equal(got, whole ? 2 : 1);
		assert_string_equal(items[0], "first");
	}
	free(img);
	free(orig);
	unlink(cut);
	assert_int_equal(qpi_durq_unlink(path), QP_OK);
}

/* A process killed with its queue open (no close: the room held back is
 * still in the file): every put it made is there at the next open, the
 * room is cut without a word of a torn record, and so is a half-read
 * queue's state. */
static void
test_durq_killed_owner(void **state)
{
	char path[128], items[64][64];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_NEVER);
	qpi_durq *d;
	qpi_durq_info info;
	int ws;
	pid_t pid;
	(void) state;

	path_of(path, sizeof(path), "killed.qlog");
	unlink(path);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL)
		    != QP_OK) {
			_exit(1);
		}
		for (int i = 0; i < 40; i++) {
			char s[32];
			snprintf(s, sizeof(s), "item-%d", i);
			if (qpi_durq_put(d, s, strlen(s), QPI_ITEM_BIN, 0)
			    != QP_OK) {
				_exit(2);
			}
		}
		for (int i = 0; i < 15; i++) {
			void *b;
			size_t len;
			if (qpi_durq_get(d, 0, NULL, 0, &b, &len, 0)
			    != QP_OK) {
				_exit(3);
			}
			free(b);
		}
		struct stat st;
		qpi_durq_stats ds;
		qpi_durq_stats_get(d, &ds);
		if (stat(path, &st) != 0
		    || (uint64_t) st.st_size <= ds.file_bytes) {
			_exit(4); /* no room held in the file */
		}
		raise(SIGKILL);
		_exit(5);
	}
	assert_int_equal(waitpid(pid, &ws, 0), pid);
	assert_true(WIFSIGNALED(ws));
	assert_int_equal(WTERMSIG(ws), SIGKILL);
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, &info), QP_OK);
	assert_int_equal(info.records, 55);
	assert_true(info.cut_bytes > 0);
	assert_false(info.torn);
	assert_int_equal(drain(d, items, 64), 25);
	for (int i = 0; i < 25; i++) {
		char s[32];
		snprintf(s, sizeof(s), "item-%d", i + 15);
		assert_string_equal(items[i], s);
	}
	qpi_durq_free(d);
	assert_int_equal(qpi_durq_unlink(path), QP_OK);
}

/* A flipped byte before the end: QP_ECORRUPT naming the file and the
 * offset; the file is left exactly as it was. */
static void
test_durq_corrupt_middle(void **state)
{
	char path[128], bad[128];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_NEVER);
	qpi_durq *d;
	size_t at[16], n, flen, blen;
	uint8_t *orig;
	(void) state;

	path_of(path, sizeof(path), "corrupt.qlog");
	path_of(bad, sizeof(bad), "corrupt-bad.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	for (int i = 0; i < 5; i++) {
		put_text(d, "payload-payload");
	}
	qpi_durq_free(d);
	orig = slurp(path, &flen);
	n = bounds(orig, flen, at, 15);
	assert_int_equal(n, 5);

	/* Each byte of record 2 (length, CRC, body) flipped in turn. */
	for (size_t i = at[1]; i < at[2]; i++) {
		char off[32];
		orig[i] ^= 0x40;
		spit(bad, orig, flen);
		orig[i] ^= 0x40;
		assert_int_equal(
		    qpi_durq_open(&d, bad, 0, NULL, NULL, NULL), QP_ECORRUPT);
		assert_non_null(strstr(qp_errmsg(), bad));
		snprintf(off, sizeof(off), "offset %zu", at[1]);
		assert_non_null(strstr(qp_errmsg(), off));
		uint8_t *after = slurp(bad, &blen);
		assert_int_equal(blen, flen);
		assert_int_equal(after[i], orig[i] ^ 0x40);
		free(after);
	}
	/* A damaged header. */
	orig[20] ^= 1;
	spit(bad, orig, flen);
	orig[20] ^= 1;
	assert_int_equal(
	    qpi_durq_open(&d, bad, 0, NULL, NULL, NULL), QP_ECORRUPT);
	assert_non_null(strstr(qp_errmsg(), "header"));
	/* A header cut short. */
	spit(bad, orig, 40);
	assert_int_equal(
	    qpi_durq_open(&d, bad, 0, NULL, NULL, NULL), QP_ECORRUPT);
	/* Not a queue file at all. */
	{
		const char *txt = "hello, this is not a durable queue at all, "
		                  "no magic here, just text, text, text, text";
		spit(bad, (const uint8_t *) txt, strlen(txt));
	}
	assert_int_equal(
	    qpi_durq_open(&d, bad, 0, NULL, NULL, NULL), QP_ECORRUPT);
	assert_non_null(strstr(qp_errmsg(), "magic"));
	free(orig);
}

/* Many items through: the log is compacted and keeps the live ones (a
 * leased item among them, never confirmed). */
/* qpiped's put requests: their tags come back on open (a batch cut
 * short says how much of it is in), and outlive their items through a
 * compaction. */
static void
test_durq_tags(void **state)
{
	char path[128], item[4096];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_NEVER);
	qpi_shmq_tag t, v[16];
	qpi_durq_stats st;
	qpi_durq *d;
	void *buf;
	size_t len, n;
	(void) state;

	c.capacity = 1024 * 1024;
	path_of(path, sizeof(path), "tags.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	memset(&t, 0, sizeof(t));
	memset(t.client, 6, sizeof(t.client));
	t.seq = 60;
	t.n = 1;
	assert_int_equal(
	    qpi_durq_put_tagged(d, "one", 3, QPI_ITEM_BIN, &t, NULL), QP_OK);
	/* Items 0 and 1 of a batch of 3: a kill took the third. */
	t.seq = 61;
	t.n = 3;
	for (uint32_t i = 0; i < 2; i++) {
		t.base = i;
		assert_int_equal(
		    qpi_durq_put_tagged(d, "two", 3, QPI_ITEM_BIN, &t, NULL),
		    QP_OK);
	}
	qpi_durq_free(d);
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, NULL), QP_OK);
	assert_int_equal(qpi_durq_tags(d, v, 16, &n), QP_OK);
	assert_int_equal(n, 2);
	assert_int_equal(v[0].seq, 60);
	assert_int_equal(v[0].done, 1);
	assert_int_equal(v[1].seq, 61);
	assert_int_equal(v[1].done, 2);
	assert_int_equal(v[1].n, 3);
	assert_int_equal(v[1].client[0], 6);
	/* Every item taken, then enough dead records for a compaction. */
	for (int i = 0; i < 3; i++) {
		assert_int_equal(
		    qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
		free(buf);
	}
	memset(item, 'z', sizeof(item));
	for (int i = 0; i < 3000; i++) {
		assert_int_equal(
		    qpi_durq_put(d, item, sizeof(item), QPI_ITEM_BIN, 0),
		    QP_OK);
		assert_int_equal(
		    qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
		free(buf);
	}
	qpi_durq_stats_get(d, &st);
	assert_true(st.compactions >= 1);
	qpi_durq_free(d);
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, NULL), QP_OK);
	assert_int_equal(qpi_durq_tags(d, v, 16, &n), QP_OK);
	assert_int_equal(n, 2);
	assert_int_equal(v[0].seq, 60);
	assert_int_equal(v[0].done, 1);
	assert_int_equal(v[1].seq, 61);
	assert_int_equal(v[1].done, 2);
	qpi_durq_free(d);

	/* A layout 1 file (no tags) is read, and says 2 from then on. */
	qpi_durq_info info;
	uint8_t *f;
	size_t flen;
	uint32_t ver = 1, crc;
	path_of(path, sizeof(path), "v1.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	put_text(d, "old");
	qpi_durq_free(d);
	f = slurp(path, &flen);
	memcpy(f + 8, &ver, 4); /* little-endian hosts */
	crc = qpi_crc32c(0, f, 60);
	memcpy(f + 60, &crc, 4);
	spit(path, f, flen);
	free(f);
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, &info), QP_OK);
	assert_int_equal(info.items, 1);
	qpi_durq_free(d);
	f = slurp(path, &flen);
	memcpy(&ver, f + 8, 4);
	assert_int_equal(ver, 2);
	free(f);
}

static void churn_until(qpi_durq *d, uint64_t n);

/* The put requests a durable queue remembers: more than 1,024 (all of
 * the last QPI_DURQ_TAG_KEEP_MS), through a compaction and a reopen, at
 * most QPI_DURQ_TAGS_MAX; older than the window beyond the newest 1,024
 * are forgotten. */
static void
test_durq_tag_window(void **state)
{
	const uint32_t many = 3000;
	char path[128];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_NEVER);
	qpi_shmq_tag t, *v;
	qpi_durq_stats st;
	qpi_durq *d;
	void *buf;
	size_t len, n;
	(void) state;

	v = calloc(QPI_DURQ_TAGS_MAX + 1, sizeof(*v));
	assert_non_null(v);
	c.capacity = 1024 * 1024;
	path_of(path, sizeof(path), "window.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	memset(&t, 0, sizeof(t));
	t.n = 1;
	for (uint32_t i = 0; i < many; i++) {
		memset(t.client, (int) (i % 7) + 1, sizeof(t.client));
		t.seq = 100 + i;
		assert_int_equal(
		    qpi_durq_put_tagged(d, "w", 1, QPI_ITEM_BIN, &t, NULL),
		    QP_OK);
		assert_int_equal(
		    qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
		free(buf);
	}
	assert_int_equal(qpi_durq_tags(d, v, QPI_DURQ_TAGS_MAX, &n), QP_OK);
	assert_int_equal(n, many);
	churn_until(d, 1); /* the PUT_TAGs become MARKs */
	qpi_durq_stats_get(d, &st);
	assert_true(st.compactions >= 1);
	qpi_durq_free(d);
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, NULL), QP_OK);
	assert_int_equal(qpi_durq_tags(d, v, QPI_DURQ_TAGS_MAX, &n), QP_OK);
	assert_int_equal(n, many);
	assert_int_equal(v[0].seq, 100);
	assert_int_equal(v[0].client[0], 1);
	assert_int_equal(v[many - 1].seq, 100 + many - 1);
	assert_int_equal(v[many - 1].done, 1);

	/* The window's clock: a request noted a window later forgets the
	 * older ones but the newest QPI_DURQ_TAGS_MIN. */
	pthread_mutex_lock(&d->mu);
	int64_t later = qpi_now_ms() + QPI_DURQ_TAG_KEEP_MS + 1000;
	memset(t.client, 9, sizeof(t.client));
	qpi_dq_tag_note(d, t.client, 1, 1, 1, false, later);
	pthread_mutex_unlock(&d->mu);
	assert_int_equal(qpi_durq_tags(d, v, QPI_DURQ_TAGS_MAX, &n), QP_OK);
	assert_int_equal(n, QPI_DURQ_TAGS_MIN + 1);
	assert_int_equal(v[0].seq, 100 + many - QPI_DURQ_TAGS_MIN);

	/* The bound: never more than QPI_DURQ_TAGS_MAX, the oldest go. */
	pthread_mutex_lock(&d->mu);
	for (uint32_t i = 0; i < QPI_DURQ_TAGS_MAX; i++) {
		qpi_dq_tag_note(d, t.client, 2 + i, 1, 1, false, later);
	}
	pthread_mutex_unlock(&d->mu);
	assert_int_equal(
	    qpi_durq_tags(d, v, QPI_DURQ_TAGS_MAX + 1, &n), QP_OK);
	assert_int_equal(n, QPI_DURQ_TAGS_MAX);
	assert_int_equal(v[0].seq, 2);
	qpi_durq_free(d);
	free(v);
}

static void
test_durq_compaction(void **state)
{
	char path[128];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_NEVER);
	qpi_durq_stats st;
	qpi_durq_info info;
	qpi_shmq_lease l;
	qpi_durq *d;
	char item[4096];
	void *buf;
	size_t len;
	(void) state;

	c.capacity = 1024 * 1024;
	path_of(path, sizeof(path), "compact.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	memset(item, 'z', sizeof(item));
	memcpy(item, "keep", 4);
	assert_int_equal(
	    qpi_durq_put(d, item, sizeof(item), QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(
	    qpi_durq_get_lease(d, 9, -1, 0, 0, &buf, &len, &l), QP_OK);
	assert_memory_equal(buf, "keep", 4);
	free(buf);
	for (int i = 0; i < 3000; i++) {
		snprintf(item, 16, "tmp-%d", i);
		assert_int_equal(
		    qpi_durq_put(d, item, sizeof(item), QPI_ITEM_BIN, 0),
		    QP_OK);
		assert_int_equal(
		    qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
		assert_string_equal(buf, item);
		free(buf);
	}
	qpi_durq_stats_get(d, &st);
	assert_true(st.compactions >= 1);
	assert_true(st.file_bytes < 6 * 1024 * 1024);
	qpi_durq_free(d);
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, &info), QP_OK);
	assert_int_equal(info.items, 1);
	assert_int_equal(qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
	assert_int_equal(len, sizeof(item));
	assert_memory_equal(buf, "keep", 4);
	free(buf);
	qpi_durq_free(d);
}

/* Puts and gets 4 KiB items until the log has been compacted n times in
 * all. */
static void
churn_until(qpi_durq *d, uint64_t n)
{
	qpi_durq_stats st;
	char item[4096];
	void *buf;
	size_t len;

	memset(item, 'z', sizeof(item));
	for (int i = 0; i < 20000; i++) {
		qpi_durq_stats_get(d, &st);
		if (st.compactions >= n) {
			return;
		}
		snprintf(item, 16, "tmp-%d", i);
		assert_int_equal(
		    qpi_durq_put(d, item, sizeof(item), QPI_ITEM_BIN, 0),
		    QP_OK);
		assert_int_equal(
		    qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
		free(buf);
	}
	fail_msg("no compaction %llu", (unsigned long long) n);
}

/* Compaction moves live records: a later compaction copies each from
 * where the one before put it. Items a (leased) and b (leased) with a
 * dead item between them; b moves at the first compaction; a is acked;
 * the second compaction must find b where it went. */
static void
test_durq_compaction_moves(void **state)
{
	char path[128];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_NEVER);
	qpi_durq_info info;
	qpi_shmq_lease la, lb;
	qpi_durq *d;
	char item[4096];
	void *buf;
	size_t len;
	(void) state;

	c.capacity = 1024 * 1024;
	path_of(path, sizeof(path), "moves.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	memset(item, 'a', sizeof(item));
	assert_int_equal(
	    qpi_durq_put(d, item, sizeof(item), QPI_ITEM_BIN, 0), QP_OK);
	memset(item, 'x', sizeof(item));
	assert_int_equal(
	    qpi_durq_put(d, item, sizeof(item), QPI_ITEM_BIN, 0), QP_OK);
	memset(item, 'b', sizeof(item));
	assert_int_equal(
	    qpi_durq_put(d, item, sizeof(item), QPI_ITEM_BIN, 0), QP_OK);
	assert_int_equal(
	    qpi_durq_get_lease(d, 9, -1, 0, 0, &buf, &len, &la), QP_OK);
	assert_int_equal(((char *) buf)[0], 'a');
	free(buf);
	assert_int_equal(qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
	assert_int_equal(((char *) buf)[0], 'x');
	free(buf);
	assert_int_equal(
	    qpi_durq_get_lease(d, 9, -1, 0, 0, &buf, &len, &lb), QP_OK);
	assert_int_equal(((char *) buf)[0], 'b');
	free(buf);
	churn_until(d, 1);
	assert_int_equal(qpi_durq_ack(d, la.id), QP_OK);
	churn_until(d, 2);
	qpi_durq_free(d);
	/* b, unacked, is ready again after the reopen, its bytes intact */
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, &info), QP_OK);
	assert_int_equal(info.items, 1);
	assert_int_equal(qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
	assert_int_equal(len, sizeof(item));
	assert_memory_equal(buf, item, sizeof(item));
	free(buf);
	qpi_durq_free(d);
}

typedef struct gc_arg {
	qpi_durq *d;
	int id;
	int fails;
} gc_arg;

static void *
gc_putter(void *p)
{
	gc_arg *a = p;
	for (int i = 0; i < 50; i++) {
		char item[32];
		uint64_t t;
		int len = snprintf(item, sizeof(item), "t%d-%d", a->id, i);
		if (qpi_durq_put_async(
		        a->d, item, (size_t) len, QPI_ITEM_BIN, &t)
		        != QP_OK
		    || t == 0 || qpi_durq_sync_to(a->d, t) != QP_OK) {
			a->fails++;
		}
	}
	return NULL;
}

/* Group commit: puts of "always" queues from 8 threads, each waiting for
 * its own ticket, all on disk with fewer syncs than puts; an "interval"
 * queue is synced by its flusher within the interval. */
static void
test_durq_group_commit(void **state)
{
	char path[128], items[512][64];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_ALWAYS);
	qpi_durq_stats st;
	qpi_durq_info info;
	pthread_t th[8];
	gc_arg a[8];
	qpi_durq *d;
	uint64_t t;
	(void) state;

	path_of(path, sizeof(path), "group.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	for (int i = 0; i < 8; i++) {
		a[i] = (gc_arg) {d, i, 0};
		assert_int_equal(
		    pthread_create(&th[i], NULL, gc_putter, &a[i]), 0);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(a[i].fails, 0);
	}
	qpi_durq_stats_get(d, &st);
	assert_true(st.syncs >= 1 && st.syncs <= 400);
	qpi_durq_free(d);
	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, &info), QP_OK);
	assert_int_equal(info.items, 400);
	assert_int_equal(drain(d, items, 512), 400);
	qpi_durq_free(d);

	/* interval:20: no ticket; the flusher syncs soon after a put. */
	c = small_cfg(QPI_FSYNC_INTERVAL);
	c.fsync.ms = 20;
	path_of(path, sizeof(path), "interval.qlog");
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	assert_int_equal(
	    qpi_durq_put_async(d, "x", 1, QPI_ITEM_BIN, &t), QP_OK);
	assert_int_equal(t, 0);
	for (int i = 0; i < 200; i++) {
		qpi_durq_stats_get(d, &st);
		if (st.syncs > 0) {
			break;
		}
		usleep(5000);
	}
	assert_true(st.syncs > 0);
	qpi_durq_free(d);
}

/* The public API: shm:// with QP_OPEN_DURABLE and a path. */
static void
test_durq_local_queue(void **state)
{
	char path[128], buf[64];
	qp_queue_opts o = {.flags = QP_OPEN_CREATE | QP_OPEN_DURABLE,
	    .capacity = 64 * 1024,
	    .fsync = "always"};
	qp_queue *q, *q2;
	size_t len, n;
	pid_t pid;
	int status;
	(void) state;

	path_of(path, sizeof(path), "local.qlog");
	/* No path: a clear error. */
	assert_int_equal(qp_queue_open(&q, "shm://dlocal", &o), QP_EINVAL);
	assert_non_null(strstr(qp_errmsg(), "path"));
	o.fsync = "sometimes";
	o.path = path;
	assert_int_equal(qp_queue_open(&q, "shm://dlocal", &o), QP_EINVAL);
	o.fsync = "always";
	assert_int_equal(qp_queue_open(&q, "shm://dlocal", &o), QP_OK);
	assert_int_equal(qp_queue_put(q, "one", 3, QP_NOWAIT), QP_OK);
	assert_int_equal(
	    qp_queue_put_obj(q, "\x93\x01\x02\x03", 4, QP_NOWAIT), QP_OK);
	assert_int_equal(qp_queue_put(q, "three", 5, QP_NOWAIT), QP_OK);
	assert_int_equal(qp_queue_qsize(q, &n), QP_OK);
	assert_int_equal(n, 3);
	qp_queue_stats st;
	assert_int_equal(qp_queue_stat(q, &st), QP_OK);
	assert_int_equal(st.items, 3);
	assert_int_equal(st.bytes, 3 + 4 + 5);
	/* Another process cannot open the same file meanwhile. */
	pid = fork();
	if (pid == 0) {
		qp_queue *c;
		_exit(
		    qp_queue_open(&c, "shm://dlocal", &o) == QP_EBUSY ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(WEXITSTATUS(status), 0);
	/* A forked child cannot use the parent's handle. */
	pid = fork();
	if (pid == 0) {
		_exit(qp_queue_put(q, "c", 1, QP_NOWAIT) == QP_EINVAL
		            && strstr(qp_errmsg(), "forked child") != NULL
		        ? 0
		        : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(WEXITSTATUS(status), 0);
	/* Too small a buffer: the item stays. */
	assert_int_equal(
	    qp_queue_get_into(q, buf, 2, &len, QP_NOWAIT), QP_ETOOBIG);
	assert_int_equal(len, 3);
	assert_int_equal(
	    qp_queue_get_into(q, buf, sizeof(buf), &len, QP_NOWAIT), QP_OK);
	assert_memory_equal(buf, "one", 3);
	qp_queue_free(q);

	/* Reopened: the two others, the object as an object. */
	o.flags = QP_OPEN_DURABLE;
	assert_int_equal(qp_queue_open(&q2, "shm://dlocal", &o), QP_OK);
	void *p;
	assert_int_equal(qp_queue_get_obj(q2, &p, &len, QP_NOWAIT), QP_OK);
	assert_int_equal(len, 4);
	assert_memory_equal(p, "\x93\x01\x02\x03", 4);
	qp_free(p);
	assert_int_equal(qp_queue_get(q2, &p, &len, QP_NOWAIT), QP_OK);
	assert_int_equal(len, 5);
	assert_memory_equal(p, "three", 5);
	qp_free(p);
	assert_int_equal(qp_queue_get(q2, &p, &len, 50), QP_EEMPTY);
	qp_queue_free(q2);
	/* Without QP_OPEN_DURABLE a path is refused. */
	o.flags = QP_OPEN_CREATE;
	assert_int_equal(qp_queue_open(&q, "shm://dlocal", &o), QP_EINVAL);
	/* Not on anonymous queues. */
	o.flags = QP_OPEN_DURABLE;
	assert_int_equal(qp_queue_anon(&q, &o), QP_EINVAL);
}

/* ---- counters for metrics: PATH.stat ---- */

/* A durable queue's counters outlive its process (they live in PATH.stat,
 * not in the private segment rebuilt at each open) and go with its file;
 * the replay of the log at an open is not counted as puts. */
static void
test_durq_counters(void **state)
{
	char path[128], stat_path[160];
	qpi_durq_cfg c = small_cfg(QPI_FSYNC_NEVER);
	qpi_shmq_counters k;
	qpi_shmq_lease l;
	qpi_durq *d;
	void *buf;
	size_t len, n;
	(void) state;

	path_of(path, sizeof(path), "counted.qlog");
	snprintf(stat_path, sizeof(stat_path), "%s.stat", path);
	assert_int_equal(
	    qpi_durq_open(&d, path, QP_OPEN_CREATE, &c, NULL, NULL), QP_OK);
	put_text(d, "a");
	put_text(d, "b");
	put_text(d, "c");
	assert_int_equal(qpi_durq_get(d, 0, NULL, 0, &buf, &len, 0), QP_OK);
	free(buf);
	assert_int_equal(
	    qpi_durq_get_lease(d, 7, -1, 0, 0, &buf, &len, &l), QP_OK);
	free(buf);
	assert_int_equal(
	    qpi_shmq_release_owner(qpi_durq_shm(d), 7, &n), QP_OK);
	assert_int_equal(n, 1);
	qpi_durq_free(d);
	assert_int_equal(access(stat_path, F_OK), 0);

	assert_int_equal(qpi_durq_open(&d, path, 0, NULL, NULL, NULL), QP_OK);
	assert_int_equal(qpi_shmq_counters_get(qpi_durq_shm(d), &k), QP_OK);
	assert_int_equal(k.puts, 3); /* not 3 + the 2 replayed */
	assert_int_equal(k.gets, 2);
	assert_int_equal(k.acks, 1);
	assert_int_equal(k.rel[QPI_SHMQ_REL_DISCONNECT], 1);
	put_text(d, "d");
	assert_int_equal(qpi_shmq_counters_get(qpi_durq_shm(d), &k), QP_OK);
	assert_int_equal(k.puts, 4);
	qpi_durq_free(d);
	assert_int_equal(qpi_durq_unlink(path), QP_OK);
	assert_int_equal(access(stat_path, F_OK), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_durq_crc32c),
	    cmocka_unit_test(test_durq_fsync_parse),
	    cmocka_unit_test(test_durq_reopen),
	    cmocka_unit_test(test_durq_counters),
	    cmocka_unit_test(test_durq_torn_tail_every_byte),
	    cmocka_unit_test(test_durq_torn_in_room),
	    cmocka_unit_test(test_durq_killed_owner),
	    cmocka_unit_test(test_durq_corrupt_middle),
	    cmocka_unit_test(test_durq_compaction),
	    cmocka_unit_test(test_durq_compaction_moves),
	    cmocka_unit_test(test_durq_tags),
	    cmocka_unit_test(test_durq_tag_window),
	    cmocka_unit_test(test_durq_group_commit),
	    cmocka_unit_test(test_durq_local_queue),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
