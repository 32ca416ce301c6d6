/* test_flashmem.c — the C client against a real flashmemd, which this program starts itself.
 *
 * Usage: test_flashmem FLASHMEMD_BINARY WORKDIR
 * Covers the happy path (HELLO, OPEN, APPEND inline and staged, CYCLE, reading the reserve
 * by mmap byte for byte, COMMIT into tail cells, PERSIST, RESUME on a second connection,
 * admin ops), fd passing, and every error code a client can cause. */
#define _GNU_SOURCE
#include "flashmem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int failures;
#define CHECK(cond, ...)                                                                     \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			failures++;                                                          \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                        \
			fprintf(stderr, "\n");                                               \
		}                                                                            \
	} while (0)
#define MUST(call)                                                                            \
	do {                                                                                  \
		fm_error e_;                                                                  \
		int rc_ = (call);                                                             \
		if (rc_) {                                                                    \
			fprintf(stderr, "%s:%d: %s: %d %s: %s\n", __FILE__, __LINE__, #call, rc_, \
			        fm_code_name(rc_), e_.msg);                                   \
			exit(1);                                                              \
		}                                                                             \
	} while (0)
/* Expect the daemon's code (with a message) from call, which takes &e as its last argument. */
#define EXPECT(want_, call)                                                                        \
	do {                                                                                       \
		fm_error e = {0};                                                                  \
		int rc_ = (call);                                                                  \
		CHECK(rc_ == (want_) && e.code == (want_) && e.msg[0], "want %d (%s), got %d: %s", (want_), \
		      fm_code_name(want_), rc_, e.msg);                                            \
		covered[(want_) > 0 && (want_) < 32 ? (want_) : 0] |= rc_ == (want_);              \
	} while (0)

static int covered[32];
static const char *daemon_bin, *workdir;
static char sock_path[512], data_dir[512], log_path[512], cfg_path[512];
static pid_t daemon_pid;

static const char config[] = "log_level = \"debug\"\n[gpu]\nmode = \"off\"\n[host]\nbudget_bytes = 268435456\n"
                             "[indexer]\ndefault_model = \"small\"\nfirst_keep = 64\nlast_keep = 256\n"
                             "fallback_ratio = 1.0\n[[indexer.random]]\nname = \"small\"\nseed = 7\nhidden = 64\n"
                             "rank = 32\nheads = 4\nhead_dim = 128\ntarget_layers = 3\n";
#define HIDDEN 64

static void start_daemon(void) {
	long since = 0;
	struct stat st;
	if (stat(log_path, &st) == 0)
		since = st.st_size;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	char *argv[] = {(char *)daemon_bin, "--config", cfg_path, "--socket", sock_path, "--data-dir", data_dir,
	                "--metrics", "off", NULL};
	if (posix_spawn(&daemon_pid, daemon_bin, &fa, NULL, argv, environ) != 0) {
		perror("spawn flashmemd");
		exit(1);
	}
	posix_spawn_file_actions_destroy(&fa);
	for (int i = 0; i < 3000; i++) {
		FILE *f = fopen(log_path, "r");
		if (f) {
			fseek(f, since, SEEK_SET);
			char line[4096];
			int up = 0;
			while (fgets(line, sizeof line, f))
				up |= strstr(line, "msg=serving") != NULL;
			fclose(f);
			if (up)
				return;
		}
		int status;
		if (waitpid(daemon_pid, &status, WNOHANG) == daemon_pid) {
			fprintf(stderr, "flashmemd exited at start; log: %s\n", log_path);
			exit(1);
		}
		usleep(10000);
	}
	fprintf(stderr, "flashmemd did not start; log: %s\n", log_path);
	kill(daemon_pid, SIGKILL);
	exit(1);
}

static void stop_daemon(void) {
	if (daemon_pid <= 0)
		return;
	kill(daemon_pid, SIGTERM);
	int status = 0;
	for (int i = 0; i < 2000; i++) {
		if (waitpid(daemon_pid, &status, WNOHANG) == daemon_pid) {
			daemon_pid = 0;
			return;
		}
		usleep(10000);
	}
	kill(daemon_pid, SIGKILL);
	waitpid(daemon_pid, &status, 0);
	daemon_pid = 0;
}

/* ---- synthetic data ---------------------------------------------------------------- */
static uint64_t mix(uint64_t x) {
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static void fill(uint8_t *dst, size_t n, uint64_t seed, uint64_t chunk, uint32_t layer, uint32_t seg) {
	uint64_t s = mix(seed ^ mix(chunk << 16 | (uint64_t)layer << 4 | seg));
	for (size_t i = 0; i < n; i++) {
		if (i % 8 == 0)
			s = mix(s);
		dst[i] = (uint8_t)(s >> (8 * (i % 8)));
	}
}

static fm_layer_layout small_layers[2] = {{64 * 40, 2, {32, 8}}, {64 * 24 + 512, 1, {24}}};

static fm_layout small_layout(uint32_t slots) {
	return (fm_layout){64, 132, 3, 64, slots, 2, small_layers};
}

static uint8_t *make_payload(const fm_layout *l, uint64_t seed, uint64_t first, uint64_t n, size_t *len) {
	*len = fm_layout_chunk_bytes(l) * n;
	uint8_t *p = malloc(*len);
	for (uint32_t ly = 0; ly < l->n_layers; ly++)
		for (uint32_t s = 0; s < l->layers[ly].n_segments; s++)
			for (uint64_t i = 0; i < n; i++)
				fill(p + fm_layout_payload_offset(l, n, ly, s, i), l->layers[ly].segments[s], seed, first + i, ly, s);
	return p;
}

static uint64_t rng_state = 42;
static uint8_t *make_keys(const fm_layout *l, uint64_t n, size_t *len) {
	*len = (size_t)n * l->target_layers * l->key_bytes;
	uint8_t *k = malloc(*len);
	for (size_t off = 0; off < *len; off += l->key_bytes) {
		for (uint32_t i = 0; i < l->key_bytes - 4; i++) {
			uint8_t b = (uint8_t)mix(rng_state++);
			k[off + i] = (b & 0x7F) == 0x7F ? 0 : b; /* 0x7F/0xFF are NaN in e4m3 */
		}
		float scale = 0.5f + (float)(mix(rng_state++) % 1000) / 1000.0f;
		memcpy(k + off + l->key_bytes - 4, &scale, 4);
	}
	return k;
}

static uint8_t queries_buf[3][2 * HIDDEN];
static const void *query_ptrs[3] = {queries_buf[0], queries_buf[1], queries_buf[2]};
static const uint32_t query_lens[3] = {2 * HIDDEN, 2 * HIDDEN, 2 * HIDDEN};

static void make_queries(void) {
	for (int t = 0; t < 3; t++)
		for (int i = 0; i < HIDDEN; i++) {
			float v = ((float)(mix(rng_state++) % 4001) - 2000.0f) / 1000.0f;
			uint32_t bits;
			memcpy(&bits, &v, 4);
			uint16_t bf = (uint16_t)(bits >> 16);
			memcpy(&queries_buf[t][2 * i], &bf, 2);
		}
}

static fm_cycle_entry entry(uint64_t session, uint64_t step, uint64_t position) {
	return (fm_cycle_entry){session, step, position, 3, query_ptrs, query_lens};
}

/* Append chunks [from, to) of seed in batches, staged or inline. */
static void append_range(fm_client *c, fm_session *s, const fm_layout *l, uint64_t seed, uint64_t from, uint64_t to,
                         int staged) {
	for (uint64_t at = from; at < to;) {
		uint64_t n = to - at < 256 ? to - at : 256;
		size_t plen, klen;
		uint8_t *p = make_payload(l, seed, at, n, &plen), *k = make_keys(l, n, &klen);
		uint64_t chunks = 0;
		if (staged) {
			size_t ssz;
			uint8_t *st = fm_staging(c, &ssz);
			CHECK(st && plen <= ssz, "staging of %zu bytes for %zu", ssz, plen);
			memcpy(st, p, plen);
			MUST(fm_append_staged(c, s->id, at, (uint32_t)n, k, klen, 0, plen, &chunks, &e_));
		} else
			MUST(fm_append_inline(c, s->id, at, (uint32_t)n, k, klen, p, plen, &chunks, &e_));
		CHECK(chunks == at + n, "chunks %llu after appending to %llu", (unsigned long long)chunks,
		      (unsigned long long)(at + n));
		free(p);
		free(k);
		at += n;
	}
}

/* Every page of the table, every layer, byte for byte through the mapped reserve. */
static void check_pages(const fm_session *s, const fm_layout *l, uint64_t seed, uint64_t chunks,
                        const fm_cycle_result *r) {
	CHECK(r->n_pages > 0, "empty page table");
	uint8_t want[64];
	for (uint32_t i = 0; i < r->n_pages; i++) {
		for (uint32_t ly = 0; ly < l->n_layers; ly++) {
			uint8_t *row = fm_session_row(s, ly, r->pages[i].slot);
			CHECK(row != NULL, "slot %u", r->pages[i].slot);
			if (!row)
				return;
			for (uint32_t c = 0; c < l->chunks_per_page; c++) {
				uint64_t ch = (uint64_t)r->pages[i].page * l->chunks_per_page + c;
				if (ch >= chunks)
					break;
				for (uint32_t sg = 0; sg < l->layers[ly].n_segments; sg++) {
					uint32_t sz = l->layers[ly].segments[sg];
					fill(want, sz, seed, ch, ly, sg);
					if (memcmp(row + fm_layout_row_offset(l, ly, sg, c), want, sz)) {
						CHECK(0, "page %u layer %u chunk %llu differs", r->pages[i].page, ly,
						      (unsigned long long)ch);
						return;
					}
				}
			}
		}
	}
}

static int memfd_count(void) {
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	struct dirent *de;
	char p[300], target[256];
	while (d && (de = readdir(d))) {
		snprintf(p, sizeof p, "/proc/self/fd/%s", de->d_name);
		ssize_t k = readlink(p, target, sizeof target - 1);
		if (k > 0) {
			target[k] = 0;
			n += strncmp(target, "/memfd:", 7) == 0;
		}
	}
	if (d)
		closedir(d);
	return n;
}

/* ---- tests ------------------------------------------------------------------------- */
static void test_happy_path(void) {
	fm_client *c;
	MUST(fm_connect(sock_path, "c-test", &c, &e_));
	const fm_hello_info *h = fm_info(c);
	CHECK(h->version == 1 && h->max_body >= (1u << 20) && h->max_sessions > 0 && h->server[0], "hello");
	size_t ssz;
	CHECK(fm_staging(c, &ssz) != NULL && ssz == h->staging_size, "staging");
	MUST(fm_ping(c, "ping", 4, &e_));
	fm_layout l = small_layout(24);
	fm_open_req req = {.device = FM_DEVICE_ANY, .layout = &l};
	fm_session s;
	MUST(fm_open(c, &req, &s, &e_));
	CHECK(s.kind == FM_REGION_MEMFD && s.device == FM_NO_DEVICE && s.slots == 24 && s.n_layers == 2, "region");
	MUST(fm_session_map(&s, &e_));
	append_range(c, &s, &l, 11, 0, 700, 1);
	append_range(c, &s, &l, 11, 700, 1000, 0);
	make_queries();
	fm_cycle_entry en = entry(s.id, 0, 4000);
	fm_cycle_result *r;
	MUST(fm_cycle(c, &en, 1, &r, &e_));
	CHECK(r[0].status == 0 && r[0].chunks == 1000 && r[0].total_pages == 16 && r[0].n_tail >= 1, "cycle %d",
	      r[0].status);
	for (uint32_t i = 1; i < r[0].n_pages; i++)
		CHECK(r[0].pages[i - 1].page < r[0].pages[i].page, "page table sorted");
	check_pages(&s, &l, 11, 1000, &r[0]);
	MUST(fm_release(c, &r[0].lease, 1, &e_));
	fm_cycle_results_free(r, 1);
	char *json;
	size_t jl;
	MUST(fm_admin(c, FM_OP_STATUS, NULL, &json, &jl, &e_));
	CHECK(strstr(json, "\"sessions\"") && strstr(json, "\"tiers\""), "status: %s", json);
	free(json);
	char target[64];
	snprintf(target, sizeof target, "{\"session\": %llu}", (unsigned long long)s.id);
	MUST(fm_admin(c, FM_OP_INSPECT, target, &json, &jl, &e_));
	CHECK(strstr(json, "\"chunks\":1000") != NULL, "inspect: %.300s", json);
	free(json);
	MUST(fm_admin(c, FM_OP_SESSIONS, NULL, &json, &jl, &e_));
	free(json);
	MUST(fm_admin(c, FM_OP_MODELS, NULL, &json, &jl, &e_));
	CHECK(strstr(json, "\"small\"") != NULL, "models: %.300s", json);
	free(json);
	MUST(fm_admin(c, FM_OP_VERIFY, target, &json, &jl, &e_));
	CHECK(strstr(json, "\"bad\":0") != NULL, "verify: %.300s", json);
	free(json);
	MUST(fm_close_session(c, s.id, 0, &e_));
	fm_session_free(&s);
	/* A page-major reserve: a slot holds the page's rows back to back, layer 0 first. */
	req.flags = FM_OPEN_PAGE_MAJOR;
	MUST(fm_open(c, &req, &s, &e_));
	CHECK(s.page_major && s.layers[0].stride == s.layers[1].stride && s.layers[0].stride >= 64 * 40 + 64 * 24 + 512 &&
	          s.layers[1].offset - s.layers[0].offset == 64 * 40,
	      "page-major region: strides %llu/%llu", (unsigned long long)s.layers[0].stride,
	      (unsigned long long)s.layers[1].stride);
	MUST(fm_session_map(&s, &e_));
	append_range(c, &s, &l, 13, 0, 300, 1);
	en = entry(s.id, 0, 1200);
	MUST(fm_cycle(c, &en, 1, &r, &e_));
	check_pages(&s, &l, 13, 300, &r[0]);
	MUST(fm_release(c, &r[0].lease, 1, &e_));
	fm_cycle_results_free(r, 1);
	MUST(fm_close_session(c, s.id, 0, &e_));
	fm_session_free(&s);
	fm_close(c);
}

static void test_commit_persist_resume(void) {
	fm_client *c;
	MUST(fm_connect(sock_path, "c-commit", &c, &e_));
	fm_layout l = small_layout(16);
	fm_open_req req = {.name = "c-commit", .persist = 1, .device = FM_DEVICE_ANY, .layout = &l};
	fm_session s;
	MUST(fm_open(c, &req, &s, &e_));
	MUST(fm_session_map(&s, &e_));
	append_range(c, &s, &l, 5, 0, 130, 1);
	fm_cycle_entry en = entry(s.id, 0, 600);
	fm_cycle_result *r;
	MUST(fm_cycle(c, &en, 1, &r, &e_));
	/* Decode: write 64 chunks into their tail cells, as a decoder's kernel would. */
	for (uint64_t ch = 130; ch < 194; ch++) {
		uint32_t page = (uint32_t)(ch / 64), slot = UINT32_MAX;
		for (uint32_t i = 0; i < r[0].n_tail; i++)
			if (r[0].tail[i].page == page)
				slot = r[0].tail[i].slot;
		CHECK(slot != UINT32_MAX, "no tail slot for page %u", page);
		if (slot == UINT32_MAX)
			break;
		for (uint32_t ly = 0; ly < 2; ly++)
			for (uint32_t sg = 0; sg < l.layers[ly].n_segments; sg++)
				fill(fm_session_row(&s, ly, slot) + fm_layout_row_offset(&l, ly, sg, (uint32_t)(ch % 64)),
				     l.layers[ly].segments[sg], 5, ch, ly, sg);
	}
	size_t klen;
	uint8_t *k = make_keys(&l, 64, &klen);
	uint64_t chunks;
	MUST(fm_commit(c, s.id, 130, 64, k, klen, &chunks, &e_));
	free(k);
	CHECK(chunks == 194, "chunks after commit %llu", (unsigned long long)chunks);
	MUST(fm_release(c, &r[0].lease, 1, &e_));
	fm_cycle_results_free(r, 1);
	en = entry(s.id, 64, 800);
	MUST(fm_cycle(c, &en, 1, &r, &e_));
	check_pages(&s, &l, 5, 194, &r[0]);
	fm_cycle_results_free(r, 1);
	MUST(fm_persist(c, s.id, &e_));
	fm_session_free(&s);
	fm_close(c);
	/* A second connection resumes it (once the daemon has seen the first one end). */
	MUST(fm_connect(sock_path, "c-resume", &c, &e_));
	fm_session s2;
	fm_error e;
	int rc;
	for (int i = 0; i < 500 && (rc = fm_resume(c, "c-commit", &s2, &e)) == FM_E_NOT_OWNER; i++)
		usleep(10000);
	CHECK(rc == 0, "resume: %d %s", rc, e.msg);
	if (rc == 0) {
		CHECK(s2.chunks == 194 && s2.persist && s2.layout.n_layers == 2 && s2.layout.layers[0].row_bytes == 64 * 40 &&
		          s2.layout.layers[0].n_segments == 2 && s2.layout.layers[1].segments[0] == 24,
		      "resumed session");
		MUST(fm_session_map(&s2, &e_));
		en = entry(s2.id, 128, 900);
		MUST(fm_cycle(c, &en, 1, &r, &e_));
		check_pages(&s2, &l, 5, 194, &r[0]);
		fm_cycle_results_free(r, 1);
		MUST(fm_close_session(c, s2.id, 1, &e_));
		fm_session_free(&s2);
	}
	fm_close(c);
}

static void test_fd_passing(void) {
	fm_client *c;
	MUST(fm_connect_raw(sock_path, &c, &e_));
	uint8_t hello[] = {1, 0, 1, 0, 3, 0, 'f', 'd', 's'};
	uint8_t *reply;
	size_t rlen;
	int fds[FM_MAX_FDS], nfds;
	MUST(fm_call(c, FM_OP_HELLO, NULL, hello, sizeof hello, &reply, &rlen, fds, &nfds, &e_));
	CHECK(nfds == 1, "HELLO reply fds %d", nfds);
	if (nfds == 1) {
		char p[300], target[256];
		snprintf(p, sizeof p, "/proc/self/fd/%d", fds[0]);
		ssize_t k = readlink(p, target, sizeof target - 1);
		target[k > 0 ? k : 0] = 0;
		CHECK(strncmp(target, "/memfd:", 7) == 0, "staging fd is %s", target);
		CHECK((fcntl(fds[0], F_GETFD) & FD_CLOEXEC) != 0, "MSG_CMSG_CLOEXEC");
		struct stat st;
		uint64_t staging;
		memcpy(&staging, reply + 16, 8);
		CHECK(fstat(fds[0], &st) == 0 && (uint64_t)st.st_size == staging, "staging size");
		close(fds[0]);
	}
	free(reply);
	fm_close(c);
	/* Sessions opened, mapped and freed leak no descriptor or mapping. */
	MUST(fm_connect(sock_path, "c-fds", &c, &e_));
	int before = memfd_count();
	fm_layout l = small_layout(4);
	fm_open_req req = {.device = FM_DEVICE_ANY, .layout = &l};
	for (int i = 0; i < 20; i++) {
		fm_session s;
		MUST(fm_open(c, &req, &s, &e_));
		CHECK(s.fd >= 0, "OPEN fd");
		MUST(fm_session_map(&s, &e_));
		MUST(fm_close_session(c, s.id, 0, &e_));
		fm_session_free(&s);
	}
	CHECK(memfd_count() == before, "memfds %d, before %d", memfd_count(), before);
	fm_close(c);
}

static fm_wire_header hdr(fm_client *c, uint16_t op, uint16_t version, uint16_t flags, const void *body, uint32_t len) {
	return (fm_wire_header){.magic = FM_MAGIC, .version = version, .op = op, .flags = flags, .body_len = len,
	                        .request_id = fm_next_request_id(c), .crc32c = fm_crc32c(body, len)};
}

static void test_frame_errors(void) {
	fm_client *c;
	MUST(fm_connect_raw(sock_path, &c, &e_));
	EXPECT(FM_E_HANDSHAKE_REQUIRED, fm_admin(c, FM_OP_STATUS, NULL, &(char *){0}, NULL, &e));
	EXPECT(FM_E_UNSUPPORTED_VERSION, fm_hello(c, "v", 7, 9, &e));
	MUST(fm_hello(c, "c-errors", 1, 1, &e_));
	EXPECT(FM_E_HANDSHAKE_REQUIRED, fm_hello(c, "again", 1, 1, &e));
	fm_wire_header h = hdr(c, FM_OP_PING, 2, 0, "v", 1);
	EXPECT(FM_E_UNSUPPORTED_VERSION, fm_call(c, FM_OP_PING, &h, "v", 1, NULL, NULL, NULL, NULL, &e));
	h = hdr(c, FM_OP_PING, 1, 0x0100, "f", 1);
	EXPECT(FM_E_BAD_FRAME, fm_call(c, FM_OP_PING, &h, "f", 1, NULL, NULL, NULL, NULL, &e));
	h = hdr(c, FM_OP_PING, 1, FM_FLAG_RESPONSE, "f", 1);
	EXPECT(FM_E_BAD_FRAME, fm_call(c, FM_OP_PING, &h, "f", 1, NULL, NULL, NULL, NULL, &e));
	h = hdr(c, 0x7777, 1, 0, "", 0);
	EXPECT(FM_E_UNKNOWN_OP, fm_call(c, 0x7777, &h, "", 0, NULL, NULL, NULL, NULL, &e));
	h = hdr(c, FM_OP_PING, 1, 0, "abc", 3);
	h.crc32c ^= 1;
	EXPECT(FM_E_CHECKSUM, fm_call(c, FM_OP_PING, &h, "abc", 3, NULL, NULL, NULL, NULL, &e));
	uint8_t trailing[13] = {1};
	EXPECT(FM_E_BAD_REQUEST, fm_call(c, FM_OP_CLOSE, NULL, trailing, sizeof trailing, NULL, NULL, NULL, NULL, &e));
	uint8_t badbool[12] = {1, 0, 0, 0, 0, 0, 0, 0, 2};
	EXPECT(FM_E_BAD_REQUEST, fm_call(c, FM_OP_CLOSE, NULL, badbool, sizeof badbool, NULL, NULL, NULL, NULL, &e));
	MUST(fm_ping(c, "sync", 4, &e_));
	/* FRAME_TOO_LARGE: announced before the body; the daemon closes the connection. */
	h = hdr(c, FM_OP_PING, 1, 0, "", 0);
	h.body_len = fm_info(c)->max_body + 1;
	EXPECT(FM_E_FRAME_TOO_LARGE, fm_call(c, FM_OP_PING, &h, NULL, 0, NULL, NULL, NULL, NULL, &e));
	fm_error e;
	int rc = fm_ping(c, "x", 1, &e);
	CHECK(rc == FM_E_LOCAL_IO || rc == FM_E_LOCAL_CLOSED, "after FRAME_TOO_LARGE: %d %s", rc, e.msg);
	fm_close(c);
}

static void test_session_errors(void) {
	fm_client *c, *other;
	MUST(fm_connect(sock_path, "c-errors", &c, &e_));
	fm_layout l = small_layout(16);
	fm_session s;
	fm_layout bad = small_layout(16);
	bad.chunks_per_page = 0;
	fm_open_req req = {.device = FM_DEVICE_ANY, .layout = &bad};
	EXPECT(FM_E_BAD_LAYOUT, fm_open(c, &req, &s, &e));
	req.layout = &l;
	req.model = "no-such-model";
	EXPECT(FM_E_UNKNOWN_MODEL, fm_open(c, &req, &s, &e));
	req.model = NULL;
	fm_layout huge = small_layout(0xFFFFFFFFu);
	req.layout = &huge;
	EXPECT(FM_E_LIMIT_EXCEEDED, fm_open(c, &req, &s, &e));
	req.layout = &l;
	req.persist = 1;
	EXPECT(FM_E_BAD_REQUEST, fm_open(c, &req, &s, &e));
	req.persist = 0;
	req.name = "c-errors";
	MUST(fm_open(c, &req, &s, &e_));
	MUST(fm_session_map(&s, &e_));
	fm_session s2;
	EXPECT(FM_E_SESSION_EXISTS, fm_open(c, &req, &s2, &e));
	make_queries();
	fm_cycle_entry en = entry(s.id, 0, 0);
	fm_cycle_result *r;
	MUST(fm_cycle(c, &en, 1, &r, &e_));
	CHECK(r[0].status == FM_E_NO_CHUNKS && r[0].message && r[0].message[0], "NO_CHUNKS entry: %d", r[0].status);
	covered[FM_E_NO_CHUNKS] = r[0].status == FM_E_NO_CHUNKS;
	fm_cycle_results_free(r, 1);
	size_t plen, klen;
	uint8_t *p = make_payload(&l, 1, 0, 4, &plen), *k = make_keys(&l, 4, &klen);
	uint64_t chunks;
	EXPECT(FM_E_PAYLOAD_SIZE, fm_append_inline(c, s.id, 0, 4, k, klen, p, plen - 1, &chunks, &e));
	EXPECT(FM_E_PAYLOAD_SIZE, fm_append_inline(c, s.id, 0, 4, k, klen - 1, p, plen, &chunks, &e));
	EXPECT(FM_E_BAD_REQUEST, fm_append_staged(c, s.id, 0, 4, k, klen, fm_info(c)->staging_size, plen, &chunks, &e));
	MUST(fm_append_inline(c, s.id, 0, 4, k, klen, p, plen, &chunks, &e_));
	EXPECT(FM_E_DUPLICATE_CHUNK, fm_append_inline(c, s.id, 0, 4, k, klen, p, plen, &chunks, &e));
	EXPECT(FM_E_CHUNK_GAP, fm_append_inline(c, s.id, 5, 4, k, klen, p, plen, &chunks, &e));
	EXPECT(FM_E_DUPLICATE_CHUNK, fm_commit(c, s.id, 3, 1, k, klen / 4, &chunks, &e));
	EXPECT(FM_E_CHUNK_GAP, fm_commit(c, s.id, 9, 1, k, klen / 4, &chunks, &e));
	uint64_t lease = 123456789;
	EXPECT(FM_E_UNKNOWN_LEASE, fm_release(c, &lease, 1, &e));
	EXPECT(FM_E_UNKNOWN_SESSION, fm_close_session(c, 99999999, 0, &e));
	EXPECT(FM_E_UNKNOWN_SESSION, fm_resume(c, "c-no-such-session", &s2, &e));
	MUST(fm_connect(sock_path, "c-other", &other, &e_));
	EXPECT(FM_E_NOT_OWNER, fm_append_inline(other, s.id, 4, 4, k, klen, p, plen, &chunks, &e));
	EXPECT(FM_E_NOT_OWNER, fm_close_session(other, s.id, 0, &e));
	fm_close(other);
	free(p);
	free(k);
	MUST(fm_close_session(c, s.id, 0, &e_));
	fm_session_free(&s);
	/* NO_SPACE: a reserve of one slot cannot hold a cycle's tail pages. */
	fm_layout one = small_layout(1);
	req = (fm_open_req){.device = FM_DEVICE_ANY, .layout = &one};
	MUST(fm_open(c, &req, &s, &e_));
	append_range(c, &s, &one, 1, 0, 100, 0);
	en = entry(s.id, 0, 400);
	MUST(fm_cycle(c, &en, 1, &r, &e_));
	CHECK(r[0].status == FM_E_NO_SPACE, "NO_SPACE entry: %d %s", r[0].status, r[0].message ? r[0].message : "");
	covered[FM_E_NO_SPACE] = r[0].status == FM_E_NO_SPACE;
	fm_cycle_results_free(r, 1);
	MUST(fm_close_session(c, s.id, 0, &e_));
	fm_session_free(&s);
	fm_close(c);
}

/* Threads share one client: every call holds the client's lock for its round trip. */
typedef struct thread_arg {
	fm_client *c;
	uint64_t session;
	int id, errors;
} thread_arg;

static void *thread_main(void *p) {
	thread_arg *a = p;
	char msg[32];
	for (int j = 0; j < 40; j++) {
		fm_error e;
		if (j % 2) {
			int n = snprintf(msg, sizeof msg, "t%d-%d", a->id, j);
			a->errors += fm_ping(a->c, msg, (size_t)n, &e) != 0;
			continue;
		}
		fm_cycle_entry en = entry(a->session, 0, 2000);
		fm_cycle_result *r;
		if (fm_cycle(a->c, &en, 1, &r, &e) || r[0].status || r[0].chunks != 256) {
			a->errors++;
			continue;
		}
		a->errors += fm_release(a->c, &r[0].lease, 1, &e) != 0;
		fm_cycle_results_free(r, 1);
	}
	return NULL;
}

static void test_threads(void) {
	fm_client *c;
	MUST(fm_connect(sock_path, "c-threads", &c, &e_));
	fm_layout l = small_layout(16);
	fm_open_req req = {.device = FM_DEVICE_ANY, .layout = &l};
	fm_session s;
	MUST(fm_open(c, &req, &s, &e_));
	append_range(c, &s, &l, 1, 0, 256, 0);
	make_queries();
	pthread_t t[4];
	thread_arg args[4];
	for (int i = 0; i < 4; i++) {
		args[i] = (thread_arg){c, s.id, i, 0};
		pthread_create(&t[i], NULL, thread_main, &args[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		CHECK(args[i].errors == 0, "thread %d: %d failed calls", i, args[i].errors);
	}
	MUST(fm_close_session(c, s.id, 0, &e_));
	fm_session_free(&s);
	fm_close(c);
}

/* PERMISSION_DENIED: a peer with another uid (root only: the child drops to nobody). */
static void test_permission_denied(void) {
	if (geteuid() != 0) {
		fprintf(stderr, "skip PERMISSION_DENIED: not root\n");
		return;
	}
	chmod(workdir, 0755);
	chmod(sock_path, 0777);
	pid_t pid = fork();
	if (pid == 0) {
		if (setgid(65534) || setuid(65534))
			_exit(2);
		fm_client *c;
		fm_error e;
		int rc = fm_connect(sock_path, "nobody", &c, &e);
		_exit(rc == FM_E_PERMISSION_DENIED && e.msg[0] ? 0 : 1);
	}
	int status = 0;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
	covered[FM_E_PERMISSION_DENIED] = WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* INTEGRITY: a stored page whose bytes changed on disk is never served. */
static void test_integrity(void) {
	fm_client *c;
	MUST(fm_connect(sock_path, "c-integrity", &c, &e_));
	fm_layout l = small_layout(16);
	fm_open_req req = {.name = "c-integrity", .persist = 1, .device = FM_DEVICE_ANY, .layout = &l};
	fm_session s;
	MUST(fm_open(c, &req, &s, &e_));
	append_range(c, &s, &l, 3, 0, 250, 0); /* the last page is partial: APPEND into it fails below */
	EXPECT(FM_E_BAD_REQUEST, fm_persist_durability(c, s.id, FM_DURABILITY_CLUSTER, &e)); /* no cluster */
	MUST(fm_persist(c, s.id, &e_));
	fm_session_free(&s);
	fm_close(c);
	stop_daemon();
	char dir[600];
	snprintf(dir, sizeof dir, "%s/ssd/pages", data_dir);
	DIR *d = opendir(dir);
	int flipped = 0;
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (!strstr(de->d_name, ".seg"))
			continue;
		char p[1200];
		snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
		int fd = open(p, O_RDWR);
		struct stat st;
		if (fd < 0 || fstat(fd, &st))
			continue;
		for (off_t off = 0; off + 256 <= st.st_size; off += 4096) {
			char m[4];
			uint8_t b;
			if (pread(fd, m, 4, off) == 4 && memcmp(m, "FMPG", 4) == 0 && pread(fd, &b, 1, off + 200) == 1) {
				b ^= 0xFF;
				flipped += pwrite(fd, &b, 1, off + 200) == 1;
			}
		}
		close(fd);
	}
	if (d)
		closedir(d);
	CHECK(flipped > 0, "no page records found to corrupt");
	start_daemon();
	MUST(fm_connect(sock_path, "c-integrity", &c, &e_));
	int rc;
	fm_error e;
	for (int i = 0; i < 500 && (rc = fm_resume(c, "c-integrity", &s, &e)) == FM_E_NOT_OWNER; i++)
		usleep(10000);
	CHECK(rc == 0, "resume: %d %s", rc, e.msg);
	if (rc == 0) {
		fm_cycle_entry en = entry(s.id, 0, 1000);
		fm_cycle_result *r;
		MUST(fm_cycle(c, &en, 1, &r, &e_));
		/* Damaged pages are left out of the table and listed, never served. */
		CHECK(r[0].status == 0 && r[0].n_damaged > 0, "cycle over corrupted pages: %d, %u damaged", r[0].status,
		      r[0].n_damaged);
		int last_damaged = 0;
		for (uint32_t d = 0; d < r[0].n_damaged; d++) {
			CHECK(r[0].damaged[d].code == FM_E_INTEGRITY && r[0].damaged[d].message[0], "damaged code");
			last_damaged |= r[0].damaged[d].page == 3;
			for (uint32_t i = 0; i < r[0].n_pages; i++)
				CHECK(r[0].pages[i].page != r[0].damaged[d].page, "damaged page %u served", r[0].pages[i].page);
		}
		CHECK(last_damaged, "the partial last page was not reported damaged");
		MUST(fm_release(c, &r[0].lease, 1, &e_));
		fm_cycle_results_free(r, 1);
		/* APPEND into a damaged page fails with INTEGRITY (its other chunks are lost). */
		size_t plen, klen;
		uint8_t *p = make_payload(&l, 3, 250, 1, &plen), *k = make_keys(&l, 1, &klen);
		uint64_t chunks;
		EXPECT(FM_E_INTEGRITY, fm_append_inline(c, s.id, 250, 1, k, klen, p, plen, &chunks, &e));
		free(p);
		free(k);
		fm_session_free(&s);
	}
	fm_close(c);
}

static void test_wire(void) {
	CHECK(fm_crc32c("123456789", 9) == 0xE3069283u, "crc check value");
	CHECK(fm_crc32c_update(fm_crc32c("1234", 4), "56789", 5) == 0xE3069283u, "crc update");
	CHECK(fm_crc32c("", 0) == 0, "crc empty");
	uint8_t big[1000];
	for (int i = 0; i < 1000; i++)
		big[i] = (uint8_t)(i * 7);
	uint32_t a = fm_crc32c(big, 1000), b = fm_crc32c_update(fm_crc32c(big, 333), big + 333, 667);
	CHECK(a == b, "crc split");
}

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: %s FLASHMEMD_BINARY WORKDIR\n", argv[0]);
		return 2;
	}
	daemon_bin = argv[1];
	workdir = argv[2];
	snprintf(sock_path, sizeof sock_path, "%s/fm.sock", workdir);
	snprintf(data_dir, sizeof data_dir, "%s/data", workdir);
	snprintf(log_path, sizeof log_path, "%s/flashmemd.log", workdir);
	snprintf(cfg_path, sizeof cfg_path, "%s/flashmemd.toml", workdir);
	FILE *f = fopen(cfg_path, "w");
	if (!f || fputs(config, f) < 0 || fclose(f)) {
		perror(cfg_path);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	atexit(stop_daemon); /* a failing MUST exits: never leave the daemon running */
	test_wire();
	start_daemon();
	test_happy_path();
	test_commit_persist_resume();
	test_fd_passing();
	test_frame_errors();
	test_session_errors();
	test_threads();
	test_permission_denied();
	test_integrity();
	/* SHUTTING_DOWN: on SIGTERM the daemon tells every client why it closes. */
	fm_client *c;
	MUST(fm_connect(sock_path, "c-shutdown", &c, &e_));
	stop_daemon();
	EXPECT(FM_E_SHUTTING_DOWN, fm_admin(c, FM_OP_STATUS, NULL, &(char *){0}, NULL, &e));
	fm_close(c);
	int want[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		if (!covered[want[i]] && !(want[i] == 20 && geteuid() != 0))
			CHECK(0, "error code %d (%s) not covered", want[i], fm_code_name(want[i]));
	if (failures) {
		fprintf(stderr, "FAIL: %d checks failed (daemon log: %s)\n", failures, log_path);
		return 1;
	}
	printf("ok: C client against flashmemd (error codes 1-21 and 23 covered; 22 INTERNAL is never the client's doing, 24 UNAVAILABLE needs a cluster)\n");
	return 0;
}
