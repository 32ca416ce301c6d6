/* flashmem.c — the blocking C client of flashmem.h. See docs/protocol.md. */
#define _GNU_SOURCE
#include "flashmem.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

/* Largest reply body accepted: the protocol caps every body at 1 GiB. */
#define FM_MAX_REPLY (1u << 30)

struct fm_client {
	int fd;
	pthread_mutex_t mu;
	uint64_t next_id;
	uint16_t version;
	int closed;
	fm_hello_info info;
	void *staging;
	size_t staging_size;
};

/* ---- CRC-32C ------------------------------------------------------------------------ */
static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static int crc_hw;

static void crc_init(void) {
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc, const uint8_t *p, size_t n) {
	uint64_t c = crc;
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c = __builtin_ia32_crc32di(c, v);
		p += 8;
		n -= 8;
	}
	uint32_t c32 = (uint32_t)c;
	while (n--)
		c32 = __builtin_ia32_crc32qi(c32, *p++);
	return c32;
}
#endif

static uint32_t crc_soft(uint32_t crc, const uint8_t *p, size_t n) {
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		v ^= crc;
		crc = crc_table[7][v & 0xFF] ^ crc_table[6][(v >> 8) & 0xFF] ^ crc_table[5][(v >> 16) & 0xFF] ^
		      crc_table[4][(v >> 24) & 0xFF] ^ crc_table[3][(v >> 32) & 0xFF] ^
		      crc_table[2][(v >> 40) & 0xFF] ^ crc_table[1][(v >> 48) & 0xFF] ^ crc_table[0][v >> 56];
		p += 8;
		n -= 8;
	}
	while (n--)
		crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
	return crc;
}

uint32_t fm_crc32c_update(uint32_t crc, const void *data, size_t len) {
	pthread_once(&crc_once, crc_init);
	uint32_t c = crc ^ 0xFFFFFFFFu;
#if defined(__x86_64__)
	if (crc_hw)
		return crc_sse42(c, data, len) ^ 0xFFFFFFFFu;
#endif
	return crc_soft(c, data, len) ^ 0xFFFFFFFFu;
}

uint32_t fm_crc32c(const void *data, size_t len) { return fm_crc32c_update(0, data, len); }

/* ---- errors ------------------------------------------------------------------------- */
static const char *const code_names[] = {
    "ok", "bad frame", "unsupported version", "frame too large", "unknown op", "checksum mismatch",
    "bad request", "unknown session", "not owner", "duplicate chunk", "chunk gap",
    "payload size mismatch", "no chunks yet", "bad layout", "limit exceeded", "integrity error",
    "no space", "unknown model", "unknown lease", "session exists", "permission denied",
    "shutting down", "internal error", "handshake required", "unavailable",
};

const char *fm_code_name(int32_t code) {
	switch (code) {
	case FM_E_LOCAL_IO: return "connection failed";
	case FM_E_LOCAL_PROTO: return "malformed reply";
	case FM_E_LOCAL_NOMEM: return "out of memory";
	case FM_E_LOCAL_ARG: return "invalid argument";
	case FM_E_LOCAL_CLOSED: return "client closed";
	}
	if (code >= 0 && (size_t)code < sizeof code_names / sizeof code_names[0])
		return code_names[code];
	return "unknown code";
}

__attribute__((format(printf, 3, 4))) static int seterr(fm_error *err, int32_t code, const char *fmt, ...) {
	if (err) {
		err->code = code;
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
	}
	return code;
}

/* ---- buffers ------------------------------------------------------------------------ */
typedef struct buf {
	uint8_t *p;
	size_t n, cap;
	int oom;
} buf;

static void *buf_grow(buf *b, size_t more) {
	if (b->oom)
		return NULL;
	if (b->n + more > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->n + more)
			cap *= 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p) {
			b->oom = 1;
			return NULL;
		}
		b->p = p;
		b->cap = cap;
	}
	void *at = b->p + b->n;
	b->n += more;
	return at;
}

static void put(buf *b, const void *src, size_t n) {
	void *at = buf_grow(b, n);
	if (at && n)
		memcpy(at, src, n);
}
static void put_u16(buf *b, uint16_t v) { put(b, &v, 2); }
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static int put_str(buf *b, const char *s) {
	size_t n = s ? strlen(s) : 0;
	if (n > FM_MAX_NAME)
		return -1;
	put_u16(b, (uint16_t)n);
	put(b, s, n);
	return 0;
}

/* A bounds-checked reader over a reply body. */
typedef struct rd {
	const uint8_t *p;
	size_t n, off;
	int bad;
} rd;

static const uint8_t *take(rd *r, size_t n) {
	if (r->bad || n > r->n - r->off) {
		r->bad = 1;
		return NULL;
	}
	const uint8_t *at = r->p + r->off;
	r->off += n;
	return at;
}
static uint16_t get_u16(rd *r) {
	uint16_t v = 0;
	const uint8_t *at = take(r, 2);
	if (at)
		memcpy(&v, at, 2);
	return v;
}
static uint32_t get_u32(rd *r) {
	uint32_t v = 0;
	const uint8_t *at = take(r, 4);
	if (at)
		memcpy(&v, at, 4);
	return v;
}
static uint64_t get_u64(rd *r) {
	uint64_t v = 0;
	const uint8_t *at = take(r, 8);
	if (at)
		memcpy(&v, at, 8);
	return v;
}
static void get_str(rd *r, char *dst, size_t cap) {
	uint16_t n = get_u16(r);
	const uint8_t *at = take(r, n);
	if (!at) {
		dst[0] = 0;
		return;
	}
	size_t m = n < cap - 1 ? n : cap - 1;
	memcpy(dst, at, m);
	dst[m] = 0;
}
/* A count whose elements of min_size each must fit in the bytes left. */
static uint32_t get_count(rd *r, size_t min_size, uint32_t limit) {
	uint32_t n = get_u32(r);
	if (n > limit || (uint64_t)n * min_size > r->n - r->off)
		r->bad = 1;
	return r->bad ? 0 : n;
}

/* ---- frames ------------------------------------------------------------------------- */
static void close_fds(int *fds, int n) {
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

static void fail_conn(fm_client *c) {
	if (!c->closed) {
		c->closed = 1;
		close(c->fd);
		c->fd = -1;
	}
}

static int send_all(fm_client *c, struct iovec *iov, int iovcnt, fm_error *err) {
	while (iovcnt > 0) {
		struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
		ssize_t k = sendmsg(c->fd, &m, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return seterr(err, FM_E_LOCAL_IO, "send: %s", strerror(errno));
		}
		size_t left = (size_t)k;
		while (iovcnt > 0 && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return 0;
}

/* Read exactly n bytes; descriptors that arrive are appended to fds (at most FM_MAX_FDS;
 * any beyond are closed and make the frame bad). */
static int recv_exact(fm_client *c, void *dst, size_t n, int *fds, int *nfds, int *bad, fm_error *err) {
	size_t got = 0;
	while (got < n) {
		union {
			char b[CMSG_SPACE(FM_MAX_FDS * sizeof(int))];
			struct cmsghdr align;
		} ctl;
		struct iovec iov = {.iov_base = (uint8_t *)dst + got, .iov_len = n - got};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
		ssize_t k = recvmsg(c->fd, &m, MSG_CMSG_CLOEXEC);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return seterr(err, FM_E_LOCAL_IO, "recv: %s", strerror(errno));
		}
		for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
			if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
				continue;
			size_t cnt = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < cnt; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
				if (*nfds < FM_MAX_FDS)
					fds[(*nfds)++] = fd;
				else {
					close(fd);
					*bad = 1;
				}
			}
		}
		if (m.msg_flags & MSG_CTRUNC)
			*bad = 1;
		if (k == 0)
			return seterr(err, FM_E_LOCAL_IO, "flashmemd closed the connection");
		got += (size_t)k;
	}
	return 0;
}

typedef struct frame {
	fm_wire_header h;
	uint8_t *body;
	int fds[FM_MAX_FDS];
	int nfds;
} frame;

static int recv_frame(fm_client *c, frame *f, fm_error *err) {
	int bad = 0, rc;
	f->nfds = 0;
	f->body = NULL;
	if ((rc = recv_exact(c, &f->h, sizeof f->h, f->fds, &f->nfds, &bad, err)))
		goto fail;
	if (f->h.magic != FM_MAGIC || f->h.body_len > FM_MAX_REPLY) {
		rc = seterr(err, FM_E_LOCAL_PROTO, "reply header: magic %#x, body of %u bytes", f->h.magic, f->h.body_len);
		goto fail;
	}
	f->body = malloc(f->h.body_len ? f->h.body_len : 1);
	if (!f->body) {
		rc = seterr(err, FM_E_LOCAL_NOMEM, "reply body of %u bytes", f->h.body_len);
		goto fail;
	}
	if (f->h.body_len && (rc = recv_exact(c, f->body, f->h.body_len, f->fds, &f->nfds, &bad, err)))
		goto fail;
	if (bad || f->nfds != f->h.nfds || !(f->h.flags & FM_FLAG_RESPONSE) || f->h.reserved0 || f->h.reserved1 ||
	    (f->h.flags & ~(FM_FLAG_RESPONSE | FM_FLAG_ERROR | FM_FLAG_FDS)) ||
	    fm_crc32c(f->body, f->h.body_len) != f->h.crc32c) {
		rc = seterr(err, FM_E_LOCAL_PROTO, "reply %llu: %d fds for nfds %u, flags %#x, or checksum wrong",
		            (unsigned long long)f->h.request_id, f->nfds, f->h.nfds, f->h.flags);
		goto fail;
	}
	return 0;
fail:
	close_fds(f->fds, f->nfds);
	f->nfds = 0;
	free(f->body);
	f->body = NULL;
	return rc;
}

/* One request and its reply, under the client's lock. Error replies become their code. */
static int roundtrip(fm_client *c, uint16_t op, const fm_wire_header *raw, struct iovec *parts, int nparts,
                     frame *f, fm_error *err) {
	if (nparts > 6)
		return seterr(err, FM_E_LOCAL_ARG, "too many body parts");
	pthread_mutex_lock(&c->mu);
	int rc;
	if (c->closed) {
		rc = seterr(err, FM_E_LOCAL_CLOSED, "client is closed");
		goto out;
	}
	uint64_t id = c->next_id++;
	fm_wire_header h;
	if (raw) {
		h = *raw;
		id = h.request_id;
	} else {
		uint64_t len = 0;
		uint32_t crc = 0;
		for (int i = 0; i < nparts; i++) {
			len += parts[i].iov_len;
			crc = fm_crc32c_update(crc, parts[i].iov_base, parts[i].iov_len);
		}
		if (len > 0xFFFFFFFFu) {
			rc = seterr(err, FM_E_LOCAL_ARG, "body of %llu bytes", (unsigned long long)len);
			goto out;
		}
		h = (fm_wire_header){.magic = FM_MAGIC, .version = op == FM_OP_HELLO ? FM_VERSION : c->version,
		                     .op = op, .body_len = (uint32_t)len, .request_id = id, .crc32c = crc};
	}
	struct iovec iov[7];
	iov[0] = (struct iovec){.iov_base = &h, .iov_len = sizeof h};
	for (int i = 0; i < nparts; i++)
		iov[i + 1] = parts[i];
	if ((rc = send_all(c, iov, nparts + 1, err))) {
		/* The daemon may have closed the stream after saying why (an error frame with
		 * request id 0, e.g. PERMISSION_DENIED at accept): read it if it is there. */
		fm_error sendErr = err ? *err : (fm_error){0};
		if (recv_frame(c, f, err) == 0 && (f->h.flags & FM_FLAG_ERROR))
			goto reply;
		if (err)
			*err = sendErr;
		fail_conn(c);
		goto out;
	}
	if ((rc = recv_frame(c, f, err))) {
		fail_conn(c);
		goto out;
	}
reply:
	if (f->h.flags & FM_FLAG_ERROR) {
		rd r = {f->body, f->h.body_len, 0, 0};
		uint32_t code = get_u32(&r);
		char msg[FM_MAX_ERROR_MSG + 1];
		get_str(&r, msg, sizeof msg);
		close_fds(f->fds, f->nfds);
		f->nfds = 0;
		free(f->body);
		f->body = NULL;
		if (r.bad || r.off != r.n || code == 0) {
			fail_conn(c);
			rc = seterr(err, FM_E_LOCAL_PROTO, "malformed error body");
			goto out;
		}
		if (f->h.request_id == 0) /* connection-level: the daemon closes the stream */
			fail_conn(c);
		else if (f->h.request_id != id) {
			fail_conn(c);
			rc = seterr(err, FM_E_LOCAL_PROTO, "error reply for request %llu, waiting for %llu",
			            (unsigned long long)f->h.request_id, (unsigned long long)id);
			goto out;
		}
		rc = seterr(err, (int32_t)code, "%s", msg);
		goto out;
	}
	if (f->h.request_id != id) {
		close_fds(f->fds, f->nfds);
		free(f->body);
		f->body = NULL;
		fail_conn(c);
		rc = seterr(err, FM_E_LOCAL_PROTO, "reply for request %llu, waiting for %llu",
		            (unsigned long long)f->h.request_id, (unsigned long long)id);
		goto out;
	}
	rc = 0;
out:
	pthread_mutex_unlock(&c->mu);
	return rc;
}

static int call_buf(fm_client *c, uint16_t op, buf *b, frame *f, fm_error *err) {
	if (b->oom)
		return seterr(err, FM_E_LOCAL_NOMEM, "building the request");
	struct iovec part = {.iov_base = b->p, .iov_len = b->n};
	return roundtrip(c, op, NULL, &part, b->n ? 1 : 0, f, err);
}

static void frame_free(frame *f) {
	close_fds(f->fds, f->nfds);
	f->nfds = 0;
	free(f->body);
	f->body = NULL;
}

static int proto_err(fm_client *c, frame *f, fm_error *err, const char *what) {
	frame_free(f);
	pthread_mutex_lock(&c->mu);
	fail_conn(c);
	pthread_mutex_unlock(&c->mu);
	return seterr(err, FM_E_LOCAL_PROTO, "malformed %s reply", what);
}

/* ---- connection --------------------------------------------------------------------- */
int fm_connect_raw(const char *path, fm_client **out, fm_error *err) {
	*out = NULL;
	char def[sizeof(((struct sockaddr_un *)0)->sun_path)];
	if (!path || !*path) {
		const char *e = getenv("FLASHMEMD_SOCKET"), *rt = getenv("XDG_RUNTIME_DIR");
		if (e && *e)
			path = e;
		else if (rt && *rt) {
			snprintf(def, sizeof def, "%s/flashmemd/flashmemd.sock", rt);
			path = def;
		} else
			path = "/run/flashmemd/flashmemd.sock";
	}
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof sa.sun_path)
		return seterr(err, FM_E_LOCAL_ARG, "socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	fm_client *c = calloc(1, sizeof *c);
	if (!c)
		return seterr(err, FM_E_LOCAL_NOMEM, "client");
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;
		if (c->fd >= 0)
			close(c->fd);
		free(c);
		return seterr(err, FM_E_LOCAL_IO, "connect %s: %s (is flashmemd running?)", path, strerror(e));
	}
	pthread_mutex_init(&c->mu, NULL);
	c->next_id = 1;
	c->version = FM_VERSION;
	*out = c;
	return 0;
}

int fm_hello(fm_client *c, const char *client_name, uint16_t min_version, uint16_t max_version, fm_error *err) {
	buf b = {0};
	put_u16(&b, min_version);
	put_u16(&b, max_version);
	if (put_str(&b, client_name)) {
		free(b.p);
		return seterr(err, FM_E_LOCAL_ARG, "client name longer than %d bytes", FM_MAX_NAME);
	}
	frame f;
	int rc = call_buf(c, FM_OP_HELLO, &b, &f, err);
	free(b.p);
	if (rc)
		return rc;
	rd r = {f.body, f.h.body_len, 0, 0};
	fm_wire_hello_reply w = {0};
	const uint8_t *at = take(&r, sizeof w);
	if (at)
		memcpy(&w, at, sizeof w);
	fm_hello_info info = {0};
	get_str(&r, info.server, sizeof info.server);
	if (r.bad || r.off != r.n || w.reserved || (w.staging_size ? f.nfds != 1 : f.nfds != 0))
		return proto_err(c, &f, err, "HELLO");
	info.version = w.version;
	info.max_body = w.max_body;
	info.max_sessions = w.max_sessions;
	info.max_cycle_entries = w.max_cycle_entries;
	info.staging_size = w.staging_size;
	memcpy(info.instance_id, w.instance_id, 16);
	if (w.staging_size) {
		void *m = mmap(NULL, w.staging_size, PROT_READ | PROT_WRITE, MAP_SHARED, f.fds[0], 0);
		if (m == MAP_FAILED) {
			int e = errno;
			frame_free(&f);
			return seterr(err, FM_E_LOCAL_IO, "mapping the staging region: %s", strerror(e));
		}
		c->staging = m;
		c->staging_size = w.staging_size;
	}
	frame_free(&f); /* the mapping outlives the descriptor */
	c->info = info;
	c->version = info.version;
	return 0;
}

int fm_connect(const char *path, const char *client_name, fm_client **out, fm_error *err) {
	fm_client *c;
	int rc = fm_connect_raw(path, &c, err);
	if (rc)
		return rc;
	if ((rc = fm_hello(c, client_name ? client_name : "flashmem-c", FM_VERSION, FM_VERSION, err))) {
		fm_close(c);
		return rc;
	}
	*out = c;
	return 0;
}

void fm_close(fm_client *c) {
	if (!c)
		return;
	if (!c->closed)
		close(c->fd);
	if (c->staging)
		munmap(c->staging, c->staging_size);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

const fm_hello_info *fm_info(const fm_client *c) { return &c->info; }

void *fm_staging(fm_client *c, size_t *size) {
	*size = c->staging_size;
	return c->staging;
}

uint64_t fm_next_request_id(const fm_client *c) { return c->next_id; }

/* ---- ops ---------------------------------------------------------------------------- */
int fm_ping(fm_client *c, const void *data, size_t len, fm_error *err) {
	struct iovec part = {.iov_base = (void *)data, .iov_len = len};
	frame f;
	int rc = roundtrip(c, FM_OP_PING, NULL, &part, len ? 1 : 0, &f, err);
	if (rc)
		return rc;
	int same = f.h.body_len == len && (len == 0 || memcmp(f.body, data, len) == 0);
	if (!same || f.nfds)
		return proto_err(c, &f, err, "PING");
	frame_free(&f);
	return 0;
}

static void put_policy(buf *b, const fm_policy *p) {
	fm_wire_policy w = {p->first_keep, p->last_keep, p->kmax, p->lookahead, p->kmax_ratio, p->fallback_ratio};
	put(b, &w, sizeof w);
}

static int put_layout(buf *b, const fm_layout *l) {
	if (l->n_layers > FM_MAX_LAYERS)
		return -1;
	fm_wire_layout w = {l->chunks_per_page, l->key_bytes, l->target_layers, l->cycle_steps, l->reserve_slots,
	                    l->n_layers};
	put(b, &w, sizeof w);
	for (uint32_t i = 0; i < l->n_layers; i++) {
		const fm_layer_layout *ly = &l->layers[i];
		if (ly->n_segments > FM_MAX_SEGMENTS)
			return -1;
		put_u32(b, ly->row_bytes);
		put_u32(b, ly->n_segments);
		put(b, ly->segments, 4u * ly->n_segments);
	}
	return 0;
}

static void get_region(rd *r, fm_session *s) {
	fm_wire_region w = {0};
	const uint8_t *at = take(r, sizeof w);
	if (at)
		memcpy(&w, at, sizeof w);
	if (r->bad)
		return;
	if (w.kind > FM_REGION_CUDA || (w.kind == FM_REGION_MEMFD) != (w.device == FM_NO_DEVICE)) {
		r->bad = 1;
		return;
	}
	s->size = w.size;
	s->slots = w.slots;
	s->kind = w.kind;
	s->device = w.device;
	uint32_t n = 0;
	/* n_layers was read with the fixed part: check it against the bytes left. */
	r->off -= 4;
	n = get_count(r, sizeof(fm_wire_region_layer), FM_MAX_LAYERS);
	if (r->bad)
		return;
	s->layers = calloc(n ? n : 1, sizeof *s->layers);
	if (!s->layers) {
		r->bad = 1;
		return;
	}
	s->n_layers = n;
	for (uint32_t i = 0; i < n; i++) {
		s->layers[i].offset = get_u64(r);
		s->layers[i].row_bytes = get_u32(r);
		s->layers[i].stride = s->layers[i].row_bytes;
		uint64_t span = (uint64_t)s->slots * s->layers[i].row_bytes;
		if (s->layers[i].offset > s->size || span > s->size - s->layers[i].offset)
			r->bad = 1;
	}
}

/* The optional strides list that ends an OPEN/RESUME reply of a page-major reserve (10.3). */
static void get_strides(rd *r, fm_session *s) {
	if (r->bad || r->off == r->n)
		return;
	uint32_t n = get_count(r, 8, FM_MAX_LAYERS);
	if (r->bad || n != s->n_layers) {
		r->bad = 1;
		return;
	}
	int changes = 0;
	for (uint32_t i = 0; i < n; i++) {
		fm_region_layer *l = &s->layers[i];
		uint64_t st = get_u64(r);
		if (st < l->row_bytes || (s->slots && (l->offset > s->size || (uint64_t)(s->slots - 1) > (s->size - l->offset) / st ||
		                                        l->offset + (uint64_t)(s->slots - 1) * st + l->row_bytes > s->size)))
			r->bad = 1;
		changes |= st != l->row_bytes;
		l->stride = st;
	}
	if (!changes)
		r->bad = 1; /* a list that changes nothing is never sent */
	s->page_major = 1;
}

static int session_reply(fm_client *c, frame *f, fm_session *s, fm_error *err, const char *what, int resume) {
	rd r = {f->body, f->h.body_len, 0, 0};
	s->id = get_u64(&r);
	if (resume) {
		s->chunks = get_u64(&r);
		uint32_t p = get_u32(&r);
		if (p > 1)
			r.bad = 1;
		s->persist = (int)p;
		get_str(&r, s->model, sizeof s->model);
		fm_wire_policy wp = {0};
		const uint8_t *at = take(&r, sizeof wp);
		if (at)
			memcpy(&wp, at, sizeof wp);
		s->policy = (fm_policy){wp.first_keep, wp.last_keep, wp.kmax, wp.lookahead, wp.kmax_ratio, wp.fallback_ratio};
		fm_wire_layout wl = {0};
		at = take(&r, sizeof wl);
		if (at)
			memcpy(&wl, at, sizeof wl);
		r.off -= at ? 4 : 0;
		uint32_t n = get_count(&r, 8, FM_MAX_LAYERS);
		s->layout = (fm_layout){wl.chunks_per_page, wl.key_bytes, wl.target_layers, wl.cycle_steps,
		                        wl.reserve_slots, 0, NULL};
		if (!r.bad && !(s->layout.layers = calloc(n ? n : 1, sizeof(fm_layer_layout))))
			r.bad = 1;
		for (uint32_t i = 0; i < n && !r.bad; i++) {
			fm_layer_layout *ly = &s->layout.layers[i];
			ly->row_bytes = get_u32(&r);
			ly->n_segments = get_count(&r, 4, FM_MAX_SEGMENTS);
			for (uint32_t k = 0; k < ly->n_segments; k++)
				ly->segments[k] = get_u32(&r);
			s->layout.n_layers = i + 1;
		}
	}
	get_region(&r, s);
	get_strides(&r, s);
	if (r.bad || r.off != r.n || f->nfds != 1) {
		fm_session_free(s);
		return proto_err(c, f, err, what);
	}
	s->fd = f->fds[0];
	f->nfds = 0;
	frame_free(f);
	return 0;
}

int fm_open(fm_client *c, const fm_open_req *req, fm_session *out, fm_error *err) {
	memset(out, 0, sizeof *out);
	out->fd = -1;
	buf b = {0};
	if (put_str(&b, req->name) || put_str(&b, req->model)) {
		free(b.p);
		return seterr(err, FM_E_LOCAL_ARG, "name longer than %d bytes", FM_MAX_NAME);
	}
	put_u32(&b, req->persist ? 1 : 0);
	put_u32(&b, req->device);
	put_policy(&b, &req->policy);
	if (put_layout(&b, req->layout)) {
		free(b.p);
		return seterr(err, FM_E_LOCAL_ARG, "layout over the protocol's limits");
	}
	if (req->flags)
		put_u32(&b, req->flags);
	frame f;
	int rc = call_buf(c, FM_OP_OPEN, &b, &f, err);
	free(b.p);
	if (rc)
		return rc;
	return session_reply(c, &f, out, err, "OPEN", 0);
}

int fm_resume(fm_client *c, const char *name, fm_session *out, fm_error *err) {
	memset(out, 0, sizeof *out);
	out->fd = -1;
	buf b = {0};
	if (put_str(&b, name)) {
		free(b.p);
		return seterr(err, FM_E_LOCAL_ARG, "name longer than %d bytes", FM_MAX_NAME);
	}
	frame f;
	int rc = call_buf(c, FM_OP_RESUME, &b, &f, err);
	free(b.p);
	if (rc)
		return rc;
	return session_reply(c, &f, out, err, "RESUME", 1);
}

int fm_session_map(fm_session *s, fm_error *err) {
	if (s->kind != FM_REGION_MEMFD)
		return seterr(err, FM_E_LOCAL_ARG, "a CUDA region is imported with the driver API, not mapped");
	if (s->fd < 0)
		return seterr(err, FM_E_LOCAL_ARG, "the region's descriptor is gone");
	void *m = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
	if (m == MAP_FAILED)
		return seterr(err, FM_E_LOCAL_IO, "mapping the reserve: %s", strerror(errno));
	s->base = m;
	close(s->fd);
	s->fd = -1;
	return 0;
}

uint8_t *fm_session_row(const fm_session *s, uint32_t layer, uint32_t slot) {
	if (!s->base || layer >= s->n_layers || slot >= s->slots)
		return NULL;
	return s->base + s->layers[layer].offset + (uint64_t)slot * s->layers[layer].stride;
}

void fm_session_free(fm_session *s) {
	if (s->base)
		munmap(s->base, s->size);
	if (s->fd >= 0)
		close(s->fd);
	free(s->layers);
	free(s->layout.layers);
	s->base = NULL;
	s->fd = -1;
	s->layers = NULL;
	s->layout.layers = NULL;
}

static int empty_reply(fm_client *c, frame *f, fm_error *err, const char *what) {
	if (f->h.body_len || f->nfds)
		return proto_err(c, f, err, what);
	frame_free(f);
	return 0;
}

int fm_close_session(fm_client *c, uint64_t session, int del, fm_error *err) {
	buf b = {0};
	put_u64(&b, session);
	put_u32(&b, del ? 1 : 0);
	frame f;
	int rc = call_buf(c, FM_OP_CLOSE, &b, &f, err);
	free(b.p);
	return rc ? rc : empty_reply(c, &f, err, "CLOSE");
}

int fm_persist(fm_client *c, uint64_t session, fm_error *err) {
	buf b = {0};
	put_u64(&b, session); /* the 8-byte body: durability local, accepted by every daemon */
	frame f;
	int rc = call_buf(c, FM_OP_PERSIST, &b, &f, err);
	free(b.p);
	return rc ? rc : empty_reply(c, &f, err, "PERSIST");
}

int fm_persist_durability(fm_client *c, uint64_t session, uint32_t durability, fm_error *err) {
	buf b = {0};
	put_u64(&b, session);
	put_u32(&b, durability);
	frame f;
	int rc = call_buf(c, FM_OP_PERSIST, &b, &f, err);
	free(b.p);
	return rc ? rc : empty_reply(c, &f, err, "PERSIST");
}

static int chunks_reply(fm_client *c, frame *f, uint64_t *chunks, fm_error *err) {
	if (f->h.body_len != 8 || f->nfds)
		return proto_err(c, f, err, "APPEND/COMMIT");
	uint64_t n;
	memcpy(&n, f->body, 8);
	if (chunks)
		*chunks = n;
	frame_free(f);
	return 0;
}

static int append(fm_client *c, uint64_t session, uint64_t first, uint32_t count, const void *keys, size_t keys_len,
                  int inline_, uint64_t offset, const void *payload, uint64_t payload_len, uint64_t *chunks,
                  fm_error *err) {
	if (keys_len > 0xFFFFFFFFu)
		return seterr(err, FM_E_LOCAL_ARG, "keys of %zu bytes", keys_len);
	fm_wire_append w = {session, first, count, inline_ ? 1u : 0u, inline_ ? 0 : offset, payload_len,
	                    (uint32_t)keys_len};
	struct iovec parts[3] = {{&w, sizeof w}, {(void *)keys, keys_len}, {(void *)payload, inline_ ? payload_len : 0}};
	frame f;
	int rc = roundtrip(c, FM_OP_APPEND, NULL, parts, 3, &f, err);
	return rc ? rc : chunks_reply(c, &f, chunks, err);
}

int fm_append_inline(fm_client *c, uint64_t session, uint64_t first_chunk, uint32_t count, const void *keys,
                     size_t keys_len, const void *payload, size_t payload_len, uint64_t *chunks, fm_error *err) {
	return append(c, session, first_chunk, count, keys, keys_len, 1, 0, payload, payload_len, chunks, err);
}

int fm_append_staged(fm_client *c, uint64_t session, uint64_t first_chunk, uint32_t count, const void *keys,
                     size_t keys_len, uint64_t offset, uint64_t payload_len, uint64_t *chunks, fm_error *err) {
	return append(c, session, first_chunk, count, keys, keys_len, 0, offset, NULL, payload_len, chunks, err);
}

int fm_commit(fm_client *c, uint64_t session, uint64_t first_chunk, uint32_t count, const void *keys,
              size_t keys_len, uint64_t *chunks, fm_error *err) {
	if (keys_len > 0xFFFFFFFFu)
		return seterr(err, FM_E_LOCAL_ARG, "keys of %zu bytes", keys_len);
	fm_wire_commit w = {session, first_chunk, count, 0, (uint32_t)keys_len};
	struct iovec parts[2] = {{&w, sizeof w}, {(void *)keys, keys_len}};
	frame f;
	int rc = roundtrip(c, FM_OP_COMMIT, NULL, parts, 2, &f, err);
	return rc ? rc : chunks_reply(c, &f, chunks, err);
}

void fm_cycle_results_free(fm_cycle_result *res, uint32_t n) {
	if (!res)
		return;
	for (uint32_t i = 0; i < n; i++) {
		free(res[i].message);
		free(res[i].pages);
		free(res[i].tail);
		for (uint32_t d = 0; d < res[i].n_damaged; d++)
			free(res[i].damaged[d].message);
		free(res[i].damaged);
	}
	free(res);
}

static fm_page_slot *get_slots(rd *r, uint32_t *n) {
	*n = get_count(r, 8, 1u << 27);
	const uint8_t *at = take(r, (size_t)*n * 8);
	fm_page_slot *p = malloc(*n ? (size_t)*n * 8 : 1);
	if (!p) {
		r->bad = 1;
		return NULL;
	}
	if (at)
		memcpy(p, at, (size_t)*n * 8);
	return p;
}

int fm_cycle(fm_client *c, const fm_cycle_entry *entries, uint32_t n, fm_cycle_result **results, fm_error *err) {
	*results = NULL;
	if (n > FM_MAX_CYCLE_ENTRIES)
		return seterr(err, FM_E_LOCAL_ARG, "%u entries, at most %d", n, FM_MAX_CYCLE_ENTRIES);
	buf b = {0};
	put_u32(&b, n);
	for (uint32_t i = 0; i < n; i++) {
		const fm_cycle_entry *e = &entries[i];
		if (e->n_queries > FM_MAX_TARGET_LAYERS) {
			free(b.p);
			return seterr(err, FM_E_LOCAL_ARG, "entry %u: %u queries", i, e->n_queries);
		}
		fm_wire_cycle_entry w = {e->session, e->step, e->position, e->n_queries};
		put(&b, &w, sizeof w);
		for (uint32_t q = 0; q < e->n_queries; q++) {
			put_u32(&b, e->query_lens[q]);
			put(&b, e->queries[q], e->query_lens[q]);
		}
	}
	frame f;
	int rc = call_buf(c, FM_OP_CYCLE, &b, &f, err);
	free(b.p);
	if (rc)
		return rc;
	rd r = {f.body, f.h.body_len, 0, 0};
	uint32_t got = get_count(&r, 6, FM_MAX_CYCLE_ENTRIES);
	fm_cycle_result *res = calloc(got ? got : 1, sizeof *res);
	if (!res)
		r.bad = 1;
	for (uint32_t i = 0; i < got && !r.bad; i++) {
		fm_cycle_result *x = &res[i];
		uint32_t status = get_u32(&r);
		if (status) {
			char msg[FM_MAX_ERROR_MSG + 1];
			get_str(&r, msg, sizeof msg);
			x->status = (int32_t)status;
			x->message = strdup(msg);
			if (!x->message)
				r.bad = 1;
			continue;
		}
		r.off -= 4;
		fm_wire_cycle_result w = {0};
		const uint8_t *at = take(&r, sizeof w - 4); /* up to n_pages */
		if (!at)
			break;
		memcpy(&w, at, sizeof w - 4);
		if (w.flags & ~(FM_CYCLE_FALLBACK | FM_CYCLE_DAMAGED) || w.reserved)
			r.bad = 1;
		x->lease = w.lease;
		x->cycle = w.cycle;
		x->chunks = w.chunks;
		x->total_pages = w.total_pages;
		x->resident_pages = w.resident_pages;
		x->forced_pages = w.forced_pages;
		x->recalled_pages = w.recalled_pages;
		x->fallback = (int)(w.flags & FM_CYCLE_FALLBACK);
		x->above_fraction = w.above_fraction;
		x->wait_us = w.wait_us;
		x->score_us = w.score_us;
		x->pages = get_slots(&r, &x->n_pages);
		x->tail = get_slots(&r, &x->n_tail);
		if (w.flags & FM_CYCLE_DAMAGED) {
			uint32_t nd = get_count(&r, 10, FM_MAX_CYCLE_DAMAGED);
			if (nd == 0 || !(x->damaged = calloc(nd, sizeof *x->damaged))) {
				r.bad = 1;
				break;
			}
			for (uint32_t d = 0; d < nd && !r.bad; d++) {
				char msg[FM_MAX_ERROR_MSG + 1];
				x->damaged[d].page = get_u32(&r);
				x->damaged[d].code = (int32_t)get_u32(&r);
				get_str(&r, msg, sizeof msg);
				x->n_damaged = d + 1;
				if (x->damaged[d].code == 0 || !(x->damaged[d].message = strdup(msg)))
					r.bad = 1;
			}
		}
	}
	if (r.bad || r.off != r.n || got != n || f.nfds) {
		fm_cycle_results_free(res, got);
		return proto_err(c, &f, err, "CYCLE");
	}
	frame_free(&f);
	*results = res;
	return 0;
}

int fm_release(fm_client *c, const uint64_t *leases, uint32_t n, fm_error *err) {
	struct iovec parts[2] = {{&n, 4}, {(void *)leases, (size_t)n * 8}};
	frame f;
	int rc = roundtrip(c, FM_OP_RELEASE, NULL, parts, 2, &f, err);
	return rc ? rc : empty_reply(c, &f, err, "RELEASE");
}

int fm_admin(fm_client *c, uint16_t op, const char *request, char **reply, size_t *reply_len, fm_error *err) {
	*reply = NULL;
	struct iovec part = {.iov_base = (void *)request, .iov_len = request ? strlen(request) : 0};
	frame f;
	int rc = roundtrip(c, op, NULL, &part, part.iov_len ? 1 : 0, &f, err);
	if (rc)
		return rc;
	char *s = malloc((size_t)f.h.body_len + 1);
	if (!s) {
		frame_free(&f);
		return seterr(err, FM_E_LOCAL_NOMEM, "admin reply");
	}
	memcpy(s, f.body, f.h.body_len);
	s[f.h.body_len] = 0;
	if (reply_len)
		*reply_len = f.h.body_len;
	frame_free(&f);
	*reply = s;
	return 0;
}

int fm_call(fm_client *c, uint16_t op, const fm_wire_header *header, const void *body, size_t body_len,
            uint8_t **reply, size_t *reply_len, int *fds, int *nfds, fm_error *err) {
	struct iovec part = {.iov_base = (void *)body, .iov_len = body_len};
	frame f;
	if (reply)
		*reply = NULL;
	if (nfds)
		*nfds = 0;
	int rc = roundtrip(c, op, header, &part, body_len ? 1 : 0, &f, err);
	if (rc)
		return rc;
	if (reply) {
		*reply = f.body;
		f.body = NULL;
	}
	if (reply_len)
		*reply_len = f.h.body_len;
	if (fds && nfds) {
		memcpy(fds, f.fds, sizeof(int) * (size_t)f.nfds);
		*nfds = f.nfds;
		f.nfds = 0;
	}
	frame_free(&f);
	return 0;
}

/* ---- layout arithmetic -------------------------------------------------------------- */
static uint64_t layer_chunk_bytes(const fm_layer_layout *ly) {
	uint64_t s = 0;
	for (uint32_t i = 0; i < ly->n_segments; i++)
		s += ly->segments[i];
	return s;
}

uint64_t fm_layout_chunk_bytes(const fm_layout *l) {
	uint64_t s = 0;
	for (uint32_t i = 0; i < l->n_layers; i++)
		s += layer_chunk_bytes(&l->layers[i]);
	return s;
}

uint64_t fm_layout_payload_offset(const fm_layout *l, uint64_t n, uint32_t layer, uint32_t seg, uint64_t i) {
	uint64_t off = 0;
	for (uint32_t k = 0; k < layer; k++)
		off += n * layer_chunk_bytes(&l->layers[k]);
	const fm_layer_layout *ly = &l->layers[layer];
	for (uint32_t s = 0; s < seg; s++)
		off += n * ly->segments[s];
	return off + i * ly->segments[seg];
}

uint64_t fm_layout_row_offset(const fm_layout *l, uint32_t layer, uint32_t seg, uint32_t c) {
	const fm_layer_layout *ly = &l->layers[layer];
	uint64_t off = 0;
	for (uint32_t s = 0; s < seg; s++)
		off += (uint64_t)l->chunks_per_page * ly->segments[s];
	return off + (uint64_t)c * ly->segments[seg];
}
