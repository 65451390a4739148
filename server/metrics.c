/*
 * metrics.c - what an operator sees of qpiped: Prometheus's text format at
 * /metrics, the status page at / (status.html, embedded at build time) and
 * the JSON it reads every second at /api/status, served by nng's HTTP
 * server on the --metrics listener (loopback unless a token or
 * --insecure allows more, as --listen; with a token, every request
 * carries it: "Authorization: Bearer TOKEN").
 *
 * Server-wide figures are counted here on the request path with relaxed
 * atomics (no lock, no system call beyond one clock read per request).
 * Per-queue figures are not counted here at all: they are read when a
 * scrape asks, from the queues themselves (their segments' counters,
 * lib/shmq.h), so local shm:// traffic counts and a restarted server
 * keeps them.
 *
 * Locking: a scrape runs on an nng HTTP thread. It takes the ops lock
 * (qps_ops_locked) only to copy the figures of the queues and
 * connections into its own memory, trying each queue's lock within the
 * server's budget as any request does; the text is formatted and sent
 * after the lock is let go, and nng writes it asynchronously, so a slow
 * HTTP client holds no lock and no queue.
 */
#include "auth.h"
#include "qps.h"
#include "store.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/supplemental/http/http.h>

/* The status page (status.html), embedded by the build. */
extern const unsigned char qps_status_html[];
extern const size_t qps_status_html_len;

#define MX_OPS      64 /* room for ops added later */
#define MX_RES      64 /* results: QP_ codes, then "none" */
#define MX_RES_NONE (MX_RES - 1)

/* Request duration buckets (upper bounds, ns), Prometheus's le labels
 * (the last one, +Inf, past the bounds). */
static const int64_t mx_le_ns[] = {100000, 250000, 500000, 1000000, 2500000,
    5000000, 10000000, 25000000, 50000000, 100000000, 250000000, 500000000,
    1000000000, 2500000000, 5000000000, 10000000000};
static const char *const mx_le[]
    = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
        "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"};
#define MX_NB (sizeof(mx_le_ns) / sizeof(mx_le_ns[0]))

static const char *const mx_refused[QPS_REFUSED_N]
    = {"limit", "shutdown", "handshake", "too_big"};

static const char *const mx_rel[QPI_SHMQ_REL_N]
    = {"disconnect", "lease_expiry", "dead_holder"};

static struct {
	uint64_t opened, refused[QPS_REFUSED_N], auth_failed;
	uint64_t bytes_in, bytes_out;
	uint64_t req[MX_OPS][MX_RES];
	uint64_t lat[MX_OPS][MX_NB + 1]; /* per bucket, not cumulative */
	uint64_t lat_ns[MX_OPS];
	int64_t start_ns; /* monotonic */
	int64_t start_unix_ms;
	nng_http_server *srv;
} mx;

#define MX_ADD(p, n) __atomic_fetch_add((p), (n), __ATOMIC_RELAXED)
#define MX_LD(p)     __atomic_load_n((p), __ATOMIC_RELAXED)

/* Now, in milliseconds since the epoch. */
static int64_t
mx_unix_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- counting on the request path ---- */

void
qps_metrics_conn_opened(void)
{
	MX_ADD(&mx.opened, 1);
}

void
qps_metrics_conn_refused(int why)
{
	if (why >= 0 && why < QPS_REFUSED_N) {
		MX_ADD(&mx.refused[why], 1);
	}
}

void
qps_metrics_auth_failed(void)
{
	MX_ADD(&mx.auth_failed, 1);
}

void
qps_metrics_bytes(uint64_t in, uint64_t out)
{
	if (in > 0) {
		MX_ADD(&mx.bytes_in, in);
	}
	if (out > 0) {
		MX_ADD(&mx.bytes_out, out);
	}
}

void
qps_metrics_request_end(int64_t t0_ns, nng_msg *rep)
{
	int64_t d = qpi_now_ns() - t0_ns;
	uint32_t op = 0;
	int st = rep != NULL ? qps_rep_read(rep, &op) : MX_RES_NONE;
	size_t b = 0;

	op = op < MX_OPS ? op : 0;
	st = st >= 0 && st < MX_RES ? st : MX_RES_NONE;
	while (b < MX_NB && d > mx_le_ns[b]) {
		b++;
	}
	MX_ADD(&mx.req[op][st], 1);
	MX_ADD(&mx.lat[op][b], 1);
	MX_ADD(&mx.lat_ns[op], (uint64_t) (d > 0 ? d : 0));
}

/* ---- a snapshot of the queues, taken under the ops lock ---- */

typedef struct mx_q {
	char name[QP_NAME_MAX + 1];
	qp_queue_stats st;
	qpi_shmq_counters c;
	bool have_c; /* counters read */
	bool durable;
	uint64_t dead; /* puts to NAME.dead: items dead-lettered */
} mx_q;

typedef struct mx_snap {
	mx_q *qs;
	size_t n, cap;
	uint32_t conns;
	bool oom;
} mx_snap;

static bool
mx_snap_q(const char *name, const qp_queue_stats *st, void *arg)
{
	mx_snap *s = arg;
	qps_q *q;
	mx_q *e;

	if (s->n == s->cap) {
		size_t cap = s->cap == 0 ? 16 : s->cap * 2;
		mx_q *v = realloc(s->qs, cap * sizeof(*v));
		if (v == NULL) {
			s->oom = true;
			return false;
		}
		s->qs = v;
		s->cap = cap;
	}
	e = &s->qs[s->n++];
	memset(e, 0, sizeof(*e));
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->st = *st;
	if ((q = qps_q_find(name)) != NULL) {
		e->durable = qpi_store_durable(q->st);
		e->have_c = qpi_store_counters(q->st, &e->c) == QP_OK;
	}
	return true;
}

static void
mx_snap_locked(void *arg)
{
	mx_snap *s = arg;

	s->conns = qps_conns_count();
	(void) qps_q_list(mx_snap_q, s);
}

static int
mx_q_cmp(const void *a, const void *b)
{
	return strcmp(((const mx_q *) a)->name, ((const mx_q *) b)->name);
}

/* Takes the snapshot: queues sorted by name, each with the puts of its
 * dead-letter queue (NAME.dead, where qpipe worker moves what failed too
 * often). */
static void
mx_snap_take(mx_snap *s)
{
	memset(s, 0, sizeof(*s));
	qps_ops_locked(mx_snap_locked, s);
	if (s->n > 1) {
		qsort(s->qs, s->n, sizeof(*s->qs), mx_q_cmp);
	}
	for (size_t i = 0; i < s->n; i++) {
		mx_q key, *d;
		if (snprintf(
		        key.name, sizeof(key.name), "%s.dead", s->qs[i].name)
		    >= (int) sizeof(key.name)) {
			continue;
		}
		d = bsearch(&key, s->qs, s->n, sizeof(*s->qs), mx_q_cmp);
		if (d != NULL) {
			s->qs[i].dead = d->have_c ? d->c.puts : d->st.puts;
		}
	}
}

/* ---- text ---- */

static void
mx_family(FILE *b, const char *name, const char *type, const char *help)
{
	fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family of one sample, its value printed with fmt. */
#define MX_ONE(b, nm, type, help, fmt, v) \
	(mx_family(b, nm, type, help), fprintf(b, nm " " fmt "\n", v))

/* The result label of a QP_ code: "ok", "empty", "full"... */
static void
mx_result(int st, char *buf, size_t len)
{
	const char *n = st == MX_RES_NONE ? "NONE" : qpi_errname(st);
	size_t k = 0;

	if (n == NULL) {
		snprintf(buf, len, "code_%d", st);
		return;
	}
	if (n[0] == 'E' && n[1] != '\0' && strcmp(n, "EINTR") != 0) {
		n++;
	}
	for (; n[k] != '\0' && k + 1 < len; k++) {
		buf[k]
		    = (char) (n[k] >= 'A' && n[k] <= 'Z' ? n[k] + 32 : n[k]);
	}
	buf[k] = '\0';
}

static const char *
mx_op(uint32_t op)
{
	return op == 0 ? "unknown" : qpi_wire_op_name(op);
}

/* A per-queue gauge or counter: one sample per queue. */
#define MX_PER_Q(b, s, nm, type, help, expr)                            \
	do {                                                            \
		mx_family(b, nm, type, help);                           \
		for (size_t i_ = 0; i_ < (s)->n; i_++) {                \
			const mx_q *e = &(s)->qs[i_];                   \
			fprintf(b, nm "{queue=\"%s\"} %llu\n", e->name, \
			    (unsigned long long) (expr));               \
		}                                                       \
	} while (0)

static void
mx_text_queues(FILE *b, const mx_snap *s)
{
	MX_ONE(
	    b, "qpipe_queues", "gauge", "Queues on this host.", "%zu", s->n);
	MX_PER_Q(b, s, "qpipe_queue_messages_ready", "gauge",
	    "Items ready to be got.", e->st.items);
	MX_PER_Q(b, s, "qpipe_queue_messages_leased", "gauge",
	    "Items handed out and not yet confirmed.", e->st.leased);
	MX_PER_Q(b, s, "qpipe_queue_messages_unfinished", "gauge",
	    "Items put and not yet task_done.", e->st.unfinished);
	MX_PER_Q(b, s, "qpipe_queue_messages_bytes", "gauge",
	    "Bytes of the items ready.", e->st.bytes);
	MX_PER_Q(b, s, "qpipe_queue_capacity_messages", "gauge",
	    "Most items the queue holds (maxsize); 0: bounded by bytes only.",
	    e->st.maxsize);
	MX_PER_Q(b, s, "qpipe_queue_capacity_bytes", "gauge",
	    "Bytes of storage of the queue.", e->st.capacity);
	MX_PER_Q(b, s, "qpipe_queue_getters_waiting", "gauge",
	    "Gets waiting for an item.", e->st.getters);
	MX_PER_Q(b, s, "qpipe_queue_putters_waiting", "gauge",
	    "Puts waiting for room.", e->st.putters);
	mx_family(b, "qpipe_queue_oldest_message_age_seconds", "gauge",
	    "Age of the oldest ready item.");
	for (size_t i = 0; i < s->n; i++) {
		const mx_q *e = &s->qs[i];
		if (e->st.oldest_age_ms >= 0) {
			fprintf(b,
			    "qpipe_queue_oldest_message_age_seconds"
			    "{queue=\"%s\"} %.3f\n",
			    e->name, (double) e->st.oldest_age_ms / 1000.0);
		}
	}
	MX_PER_Q(b, s, "qpipe_queue_durable", "gauge",
	    "1 for a durable queue (kept in the data directory).",
	    e->durable ? 1 : 0);
	MX_PER_Q(b, s, "qpipe_queue_messages_published_total", "counter",
	    "Items put, since the queue was made (durable: opened).",
	    e->have_c ? e->c.puts : e->st.puts);
	MX_PER_Q(b, s, "qpipe_queue_messages_delivered_total", "counter",
	    "Items got, redeliveries included.",
	    e->have_c ? e->c.gets : e->st.gets);
	MX_PER_Q(b, s, "qpipe_queue_messages_confirmed_total", "counter",
	    "Leases confirmed (the item is gone for good).", e->c.acks);
	MX_PER_Q(b, s, "qpipe_queue_messages_nacked_total", "counter",
	    "Leases given back by their holder (nack, release).", e->c.nacks);
	mx_family(b, "qpipe_queue_messages_redelivered_total", "counter",
	    "Leased items given back to the queue, by reason.");
	for (size_t i = 0; i < s->n; i++) {
		for (int r = 0; r < QPI_SHMQ_REL_N; r++) {
			fprintf(b,
			    "qpipe_queue_messages_redelivered_total"
			    "{queue=\"%s\",reason=\"%s\"} %llu\n",
			    s->qs[i].name, mx_rel[r],
			    (unsigned long long) s->qs[i].c.rel[r]);
		}
	}
	MX_PER_Q(b, s, "qpipe_queue_lease_expiries_total", "counter",
	    "Leases that ran out before they were confirmed.",
	    e->c.rel[QPI_SHMQ_REL_EXPIRED]);
	MX_PER_Q(b, s, "qpipe_queue_messages_dead_lettered_total", "counter",
	    "Items moved to the dead-letter queue NAME.dead.", e->dead);
}

static void
mx_text_server(FILE *b, const mx_snap *s)
{
	char res[32];
	int64_t now = qpi_now_ns();

	mx_family(b, "qpipe_build_info", "gauge",
	    "The version of qpiped (always 1).");
	fprintf(b, "qpipe_build_info{version=\"%s\"} 1\n", qp_version());
	MX_ONE(b, "qpipe_start_time_seconds", "gauge",
	    "When qpiped started, in seconds since the epoch.", "%.3f",
	    (double) mx.start_unix_ms / 1000.0);
	MX_ONE(b, "qpipe_uptime_seconds", "gauge",
	    "Seconds since qpiped started.", "%.3f",
	    (double) (now - mx.start_ns) / 1e9);
	MX_ONE(b, "qpipe_connections", "gauge", "Client connections open.",
	    "%u", s->conns);
	MX_ONE(b, "qpipe_connections_opened_total", "counter",
	    "Client connections admitted.", "%llu",
	    (unsigned long long) MX_LD(&mx.opened));
	mx_family(b, "qpipe_connections_refused_total", "counter",
	    "Connections refused or closed unserved, by reason.");
	for (int r = 0; r < QPS_REFUSED_N; r++) {
		fprintf(b,
		    "qpipe_connections_refused_total{reason=\"%s\"} %llu\n",
		    mx_refused[r], (unsigned long long) MX_LD(&mx.refused[r]));
	}
	MX_ONE(b, "qpipe_auth_failures_total", "counter",
	    "Authentications refused.", "%llu",
	    (unsigned long long) MX_LD(&mx.auth_failed));
	MX_ONE(b, "qpipe_requests_waiting", "gauge",
	    "Requests parked (gets and puts waiting).", "%llu",
	    (unsigned long long) qps_net_parked());
	MX_ONE(b, "qpipe_received_bytes_total", "counter",
	    "Bytes received on client connections.", "%llu",
	    (unsigned long long) MX_LD(&mx.bytes_in));
	MX_ONE(b, "qpipe_sent_bytes_total", "counter",
	    "Bytes of replies sent on client connections.", "%llu",
	    (unsigned long long) MX_LD(&mx.bytes_out));
	mx_family(b, "qpipe_requests_total", "counter",
	    "Requests answered, by op and result.");
	for (uint32_t op = 0; op < MX_OPS; op++) {
		for (int st = 0; st < MX_RES; st++) {
			uint64_t n = MX_LD(&mx.req[op][st]);
			if (n == 0) {
				continue;
			}
			mx_result(st, res, sizeof(res));
			fprintf(b,
			    "qpipe_requests_total{op=\"%s\",result=\"%s\"} "
			    "%llu\n",
			    mx_op(op), res, (unsigned long long) n);
		}
	}
	mx_family(b, "qpipe_request_duration_seconds", "histogram",
	    "Time from a request's arrival to its reply, waits included.");
	for (uint32_t op = 0; op < MX_OPS; op++) {
		uint64_t cum = 0, v[MX_NB + 1];
		for (size_t k = 0; k <= MX_NB; k++) {
			v[k] = MX_LD(&mx.lat[op][k]);
			cum += v[k];
		}
		if (cum == 0) {
			continue;
		}
		cum = 0;
		for (size_t k = 0; k <= MX_NB; k++) {
			cum += v[k];
			fprintf(b,
			    "qpipe_request_duration_seconds_bucket{op=\"%s\","
			    "le=\"%s\"} %llu\n",
			    mx_op(op), mx_le[k], (unsigned long long) cum);
		}
		fprintf(b,
		    "qpipe_request_duration_seconds_sum{op=\"%s\"} %.6f\n",
		    mx_op(op), (double) MX_LD(&mx.lat_ns[op]) / 1e9);
		fprintf(b,
		    "qpipe_request_duration_seconds_count{op=\"%s\"} %llu\n",
		    mx_op(op), (unsigned long long) cum);
	}
}

/* ---- JSON for the status page and qpipe top ---- */

static void
mx_json(FILE *b, const mx_snap *s)
{
	uint64_t leased = 0, reqs = 0;

	for (size_t i = 0; i < s->n; i++) {
		leased += s->qs[i].st.leased;
	}
	for (uint32_t op = 0; op < MX_OPS; op++) {
		for (int st = 0; st < MX_RES; st++) {
			reqs += MX_LD(&mx.req[op][st]);
		}
	}
	fprintf(b,
	    "{\"version\":\"%s\",\"time_ms\":%lld,\"uptime_s\":%.3f,"
	    "\"connections\":%u,\"connections_total\":%llu,"
	    "\"waiting\":%llu,\"leased\":%llu,\"requests\":%llu,"
	    "\"bytes_in\":%llu,\"bytes_out\":%llu,\"auth_failures\":%llu,"
	    "\"queues\":[",
	    qp_version(), (long long) mx_unix_ms(),
	    (double) (qpi_now_ns() - mx.start_ns) / 1e9, s->conns,
	    (unsigned long long) MX_LD(&mx.opened),
	    (unsigned long long) qps_net_parked(), (unsigned long long) leased,
	    (unsigned long long) reqs,
	    (unsigned long long) MX_LD(&mx.bytes_in),
	    (unsigned long long) MX_LD(&mx.bytes_out),
	    (unsigned long long) MX_LD(&mx.auth_failed));
	for (size_t i = 0; i < s->n; i++) {
		const mx_q *e = &s->qs[i];
		fprintf(b,
		    "%s{\"name\":\"%s\",\"ready\":%llu,\"leased\":%llu,"
		    "\"bytes\":%llu,\"maxsize\":%llu,\"capacity\":%llu,"
		    "\"getters\":%llu,\"putters\":%llu,\"puts\":%llu,"
		    "\"gets\":%llu,\"acks\":%llu,\"nacks\":%llu,"
		    "\"redelivered\":%llu,\"dead\":%llu,\"oldest_ms\":%lld,"
		    "\"durable\":%s}",
		    i > 0 ? "," : "", e->name,
		    (unsigned long long) e->st.items,
		    (unsigned long long) e->st.leased,
		    (unsigned long long) e->st.bytes,
		    (unsigned long long) e->st.maxsize,
		    (unsigned long long) e->st.capacity,
		    (unsigned long long) e->st.getters,
		    (unsigned long long) e->st.putters,
		    (unsigned long long) (e->have_c ? e->c.puts : e->st.puts),
		    (unsigned long long) (e->have_c ? e->c.gets : e->st.gets),
		    (unsigned long long) e->c.acks,
		    (unsigned long long) e->c.nacks,
		    (unsigned long long) (e->c.rel[0] + e->c.rel[1]
		        + e->c.rel[2]),
		    (unsigned long long) e->dead,
		    (long long) e->st.oldest_age_ms,
		    e->durable ? "true" : "false");
	}
	fprintf(b, "]}\n");
}

/* ---- HTTP ---- */

static void
mx_reply(nng_aio *aio, uint16_t status, const char *type, const void *data,
    size_t len)
{
	nng_http_res *res;
	int rv;

	if ((rv = nng_http_res_alloc(&res)) != 0) {
		nng_aio_finish(aio, rv);
		return;
	}
	if (nng_http_res_set_status(res, status) != 0
	    || nng_http_res_set_header(res, "Content-Type", type) != 0
	    || nng_http_res_set_header(res, "Cache-Control", "no-store") != 0
	    || (status == 401
	        && nng_http_res_set_header(
	               res, "WWW-Authenticate", "Bearer realm=\"qpiped\"")
	            != 0)
	    || nng_http_res_copy_data(res, data, len) != 0) {
		nng_http_res_free(res);
		nng_aio_finish(aio, NNG_ENOMEM);
		return;
	}
	nng_aio_set_output(aio, 0, res);
	nng_aio_finish(aio, 0);
}

/* With a token loaded: the request carries "Authorization: Bearer
 * TOKEN" (compared in constant time). The page itself (/) is static and
 * open; the figures (/metrics, /api/status) are not. */
static bool
mx_authorized(nng_aio *aio)
{
	nng_http_req *req = nng_aio_get_input(aio, 0);
	const struct qpi_token *t = qps_sec_token();
	const char *h = req != NULL
	    ? nng_http_req_get_header(req, "Authorization")
	    : NULL;

	return !qps_sec_auth_required()
	    || (h != NULL && strncmp(h, "Bearer ", 7) == 0
	        && strlen(h + 7) == t->len
	        && qpi_auth_equal(h + 7, t->key, t->len));
}

static void
mx_serve(nng_aio *aio, bool json)
{
	static const char denied[] = "a bearer token is required\n";
	mx_snap s;
	char *text = NULL;
	size_t len = 0;
	FILE *b;
	bool bad;

	if (!mx_authorized(aio)) {
		qps_metrics_auth_failed();
		mx_reply(aio, 401, "text/plain; charset=utf-8", denied,
		    sizeof(denied) - 1);
		return;
	}
	if ((b = open_memstream(&text, &len)) == NULL) {
		nng_aio_finish(aio, NNG_ENOMEM);
		return;
	}
	qps_thread_init();
	mx_snap_take(&s);
	if (json) {
		mx_json(b, &s);
	} else {
		mx_text_queues(b, &s);
		mx_text_server(b, &s);
	}
	free(s.qs);
	bad = ferror(b) != 0;
	if (fclose(b) != 0 || bad || s.oom) {
		free(text);
		nng_aio_finish(aio, NNG_ENOMEM);
		return;
	}
	mx_reply(aio, 200,
	    json ? "application/json"
	         : "text/plain; version=0.0.4; "
	           "charset=utf-8",
	    text, len);
	free(text);
}

static void
mx_metrics_cb(nng_aio *aio)
{
	mx_serve(aio, false);
}

static void
mx_status_cb(nng_aio *aio)
{
	mx_serve(aio, true);
}

/* Adds handler *h, just allocated with result rv, to the server (freed
 * if it cannot be added). */
static int
mx_add(nng_http_handler **h, int rv)
{
	if (rv == 0 && (rv = nng_http_server_add_handler(mx.srv, *h)) != 0) {
		nng_http_handler_free(*h);
	}
	return rv;
}

/* The http:// URL of address a. */
static void
mx_url(char *buf, size_t len, const qpi_addr *a)
{
	bool v6 = strchr(a->host, ':') != NULL;

	snprintf(buf, len, "http://%s%s%s:%u", v6 ? "[" : "", a->host,
	    v6 ? "]" : "", (unsigned) a->port);
}

int
qps_metrics_start(const qps_config *cfg, char *url, size_t len)
{
	char http[QPI_URL_MAX + 16];
	nng_http_handler *h;
	nng_sockaddr sa;
	nng_url *u = NULL;
	qpi_addr a;
	int rv;

	mx.start_ns = qpi_now_ns();
	mx.start_unix_ms = mx_unix_ms();
	url[0] = '\0';
	if (cfg->metrics == NULL) {
		return QP_OK;
	}
	if (qpi_addr_parse(cfg->metrics, QPI_ADDR_SERVER | QPI_ADDR_PORT0, &a)
	        != QP_OK
	    || a.kind != QPI_ADDR_TCP) {
		qps_log(QPS_LOG_ERROR,
		    "--metrics %s: expected tcp://HOST:PORT (port 0 picks a "
		    "free one)",
		    cfg->metrics);
		return QP_EINVAL;
	}
	if ((rv = qps_sec_check_listener(cfg, &a, cfg->metrics)) != QP_OK) {
		return rv;
	}
	mx_url(http, sizeof(http), &a);
	if ((rv = nng_url_parse(&u, http)) != 0
	    || (rv = nng_http_server_hold(&mx.srv, u)) != 0
	    || (rv = mx_add(
	            &h, nng_http_handler_alloc(&h, "/metrics", mx_metrics_cb)))
	        != 0
	    || (rv = mx_add(&h,
	            nng_http_handler_alloc(&h, "/api/status", mx_status_cb)))
	        != 0
	    || (rv = mx_add(&h,
	            nng_http_handler_alloc_static(&h, "/", qps_status_html,
	                qps_status_html_len, "text/html; charset=utf-8")))
	        != 0
	    || (rv = nng_http_server_start(mx.srv)) != 0) {
		qps_log(QPS_LOG_ERROR, "cannot serve --metrics %s: %s",
		    cfg->metrics, nng_strerror(rv));
		if (mx.srv != NULL) { /* not started: released only */
			nng_http_server_release(mx.srv);
			mx.srv = NULL;
		}
	}
	if (u != NULL) {
		nng_url_free(u);
	}
	if (rv != 0) {
		return QP_ESYSTEM;
	}
	if (nng_http_server_get_addr(mx.srv, &sa) == 0
	    && (sa.s_family == NNG_AF_INET || sa.s_family == NNG_AF_INET6)) {
		uint16_t port = sa.s_family == NNG_AF_INET ? sa.s_in.sa_port
		                                           : sa.s_in6.sa_port;
		a.port = ntohs(port);
	}
	mx_url(url, len, &a);
	qps_log(QPS_LOG_INFO, "metrics at %s/metrics, status page at %s/%s",
	    url, url,
	    qps_sec_auth_required() ? " (bearer token required)" : "");
	return QP_OK;
}

void
qps_metrics_stop(void)
{
	if (mx.srv != NULL) {
		nng_http_server_stop(mx.srv);
		nng_http_server_release(mx.srv);
		mx.srv = NULL;
	}
}
