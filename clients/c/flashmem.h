/* flashmem.h — a small blocking C client for flashmemd (docs/protocol.md, version 1).
 *
 * Two layers:
 *   1. The wire structs: packed, little-endian, with _Static_asserts on every size and
 *      offset, so code that builds frames by hand (or a C++ engine that memcpys them) cannot
 *      drift from the protocol page.
 *   2. A blocking API: fm_connect (HELLO, staging region mapped), one call per op, errors as
 *      the wire code plus the daemon's message in an fm_error.
 *
 * Return values: 0 on success; a positive wire code (FM_E_*) when the daemon answered with an
 * error; a negative FM_E_LOCAL_* code for failures on this side (socket, malformed reply,
 * memory). After FM_E_LOCAL_IO or FM_E_LOCAL_PROTO the connection is closed and every later
 * call returns FM_E_LOCAL_CLOSED.
 *
 * Thread safety: an fm_client has one mutex; each call holds it from sending the request to
 * receiving its reply, so threads may share a client and their calls run one after another.
 * For parallel calls open one client per thread; batch sessions into one fm_cycle call.
 * fm_close frees the client: call it once every other call on it has returned.
 *
 * Memory: fm_open / fm_resume return the reserve region's descriptor in fm_session.fd; for a
 * host region (kind FM_REGION_MEMFD) fm_session_map maps it and closes the fd. A CUDA region
 * (kind FM_REGION_CUDA) is imported with the driver API (cuMemImportFromShareableHandle,
 * section 11). Results from fm_cycle are owned by the caller: fm_cycle_results_free.
 */
#ifndef FLASHMEM_H
#define FLASHMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "flashmem.h: the wire format is little-endian and the structs are read in place"
#endif

/* ---- constants (section 3, 10) ------------------------------------------------------ */
#define FM_MAGIC 0x4D454D46u /* "FMEM" */
#define FM_VERSION 1
#define FM_HEADER_SIZE 32
#define FM_MAX_FDS 4
#define FM_MAX_NAME 255
#define FM_MAX_ERROR_MSG 1024
#define FM_MAX_CYCLE_ENTRIES 4096
#define FM_MAX_TARGET_LAYERS 64
#define FM_MAX_LAYERS 1024
#define FM_MAX_SEGMENTS 16

#define FM_FLAG_RESPONSE 0x0001u
#define FM_FLAG_ERROR 0x0002u
#define FM_FLAG_FDS 0x0004u

enum fm_op {
	FM_OP_HELLO = 0x0001,
	FM_OP_PING = 0x0002,
	FM_OP_OPEN = 0x0010,
	FM_OP_RESUME = 0x0011,
	FM_OP_CLOSE = 0x0012,
	FM_OP_PERSIST = 0x0013,
	FM_OP_APPEND = 0x0020,
	FM_OP_COMMIT = 0x0021,
	FM_OP_CYCLE = 0x0030,
	FM_OP_RELEASE = 0x0031,
	FM_OP_STATUS = 0x0040,
	FM_OP_SESSIONS = 0x0041,
	FM_OP_INSPECT = 0x0042,
	FM_OP_EVICT = 0x0043,
	FM_OP_MODELS = 0x0044,
	FM_OP_VERIFY = 0x0045,
	FM_OP_DELETE = 0x0046,
	FM_OP_SAVE = 0x0047,
	FM_OP_CLUSTER = 0x0048,
};

/* Wire error codes (section 8; numbers are permanent). Unknown codes: treat as INTERNAL. */
enum fm_code {
	FM_OK = 0,
	FM_E_BAD_FRAME = 1,
	FM_E_UNSUPPORTED_VERSION = 2,
	FM_E_FRAME_TOO_LARGE = 3,
	FM_E_UNKNOWN_OP = 4,
	FM_E_CHECKSUM = 5,
	FM_E_BAD_REQUEST = 6,
	FM_E_UNKNOWN_SESSION = 7,
	FM_E_NOT_OWNER = 8,
	FM_E_DUPLICATE_CHUNK = 9,
	FM_E_CHUNK_GAP = 10,
	FM_E_PAYLOAD_SIZE = 11,
	FM_E_NO_CHUNKS = 12,
	FM_E_BAD_LAYOUT = 13,
	FM_E_LIMIT_EXCEEDED = 14,
	FM_E_INTEGRITY = 15,
	FM_E_NO_SPACE = 16,
	FM_E_UNKNOWN_MODEL = 17,
	FM_E_UNKNOWN_LEASE = 18,
	FM_E_SESSION_EXISTS = 19,
	FM_E_PERMISSION_DENIED = 20,
	FM_E_SHUTTING_DOWN = 21,
	FM_E_INTERNAL = 22,
	FM_E_HANDSHAKE_REQUIRED = 23,
	FM_E_UNAVAILABLE = 24,
	/* local failures (never on the wire) */
	FM_E_LOCAL_IO = -1,      /* socket error or EOF; the connection is closed */
	FM_E_LOCAL_PROTO = -2,   /* the daemon sent bytes this client cannot parse; closed */
	FM_E_LOCAL_NOMEM = -3,   /* allocation failed */
	FM_E_LOCAL_ARG = -4,     /* invalid argument (too long a name, payload too big...) */
	FM_E_LOCAL_CLOSED = -5,  /* the client was closed or failed earlier */
};

#define FM_DEVICE_ANY 0xFFFFFFFFu
#define FM_DEVICE_HOST_ONLY 0xFFFFFFFEu
#define FM_NO_DEVICE 0xFFFFFFFFu
#define FM_REGION_MEMFD 0u
#define FM_REGION_CUDA 1u
#define FM_CYCLE_FALLBACK 1u
#define FM_CYCLE_DAMAGED 2u
#define FM_MAX_CYCLE_DAMAGED 4096
#define FM_OPEN_PAGE_MAJOR 1u /* fm_open_req.flags: a slot holds a whole page, layers back to back */
#define FM_DURABILITY_LOCAL 0u
#define FM_DURABILITY_CLUSTER 1u

/* ---- packed wire structs ----------------------------------------------------------- */
#define FM_PACKED __attribute__((packed))

typedef struct FM_PACKED fm_wire_header {
	uint32_t magic;
	uint16_t version;
	uint16_t op;
	uint16_t flags;
	uint8_t nfds;
	uint8_t reserved0;
	uint32_t body_len;
	uint64_t request_id;
	uint32_t crc32c;
	uint32_t reserved1;
} fm_wire_header;

/* HELLO reply up to the server str16 (10.1). */
typedef struct FM_PACKED fm_wire_hello_reply {
	uint16_t version;
	uint16_t reserved;
	uint32_t max_body;
	uint32_t max_sessions;
	uint32_t max_cycle_entries;
	uint64_t staging_size;
	uint8_t instance_id[16];
} fm_wire_hello_reply;

typedef struct FM_PACKED fm_wire_policy {
	uint32_t first_keep;
	uint32_t last_keep;
	uint32_t kmax;
	uint32_t lookahead;
	double kmax_ratio;
	double fallback_ratio;
} fm_wire_policy;

/* Layout up to its layers (10.2). */
typedef struct FM_PACKED fm_wire_layout {
	uint32_t chunks_per_page;
	uint32_t key_bytes;
	uint32_t target_layers;
	uint32_t cycle_steps;
	uint32_t reserve_slots;
	uint32_t n_layers;
} fm_wire_layout;

/* RegionDesc up to its layers (10.3), and one layer entry. */
typedef struct FM_PACKED fm_wire_region {
	uint64_t size;
	uint32_t slots;
	uint32_t kind;
	uint32_t device;
	uint32_t n_layers;
} fm_wire_region;

typedef struct FM_PACKED fm_wire_region_layer {
	uint64_t offset;
	uint32_t row_bytes;
} fm_wire_region_layer;

/* APPEND up to its keys blob (10.7); COMMIT likewise. */
typedef struct FM_PACKED fm_wire_append {
	uint64_t session;
	uint64_t first_chunk;
	uint32_t count;
	uint32_t flags; /* bit 0: INLINE */
	uint64_t staging_offset;
	uint64_t payload_length;
	uint32_t keys_len;
} fm_wire_append;

typedef struct FM_PACKED fm_wire_commit {
	uint64_t session;
	uint64_t first_chunk;
	uint32_t count;
	uint32_t reserved;
	uint32_t keys_len;
} fm_wire_commit;

/* CYCLE request entry up to its query blobs (10.9). */
typedef struct FM_PACKED fm_wire_cycle_entry {
	uint64_t session;
	uint64_t step;
	uint64_t position;
	uint32_t n_queries;
} fm_wire_cycle_entry;

/* A successful CYCLE result up to n_pages (10.9). */
typedef struct FM_PACKED fm_wire_cycle_result {
	uint32_t status;
	uint64_t lease;
	uint64_t cycle;
	uint64_t chunks;
	uint32_t total_pages;
	uint32_t resident_pages;
	uint32_t forced_pages;
	uint32_t recalled_pages;
	uint32_t flags; /* FM_CYCLE_FALLBACK, FM_CYCLE_DAMAGED */
	uint32_t reserved;
	double above_fraction;
	uint64_t wait_us;
	uint64_t score_us;
	uint32_t n_pages;
} fm_wire_cycle_result;

typedef struct FM_PACKED fm_page_slot {
	uint32_t page;
	uint32_t slot;
} fm_page_slot;

#define FM_ASSERT_FIELD(T, f, off) _Static_assert(offsetof(T, f) == (off), #T "." #f " offset")
_Static_assert(sizeof(fm_wire_header) == 32, "header size");
FM_ASSERT_FIELD(fm_wire_header, version, 4);
FM_ASSERT_FIELD(fm_wire_header, op, 6);
FM_ASSERT_FIELD(fm_wire_header, flags, 8);
FM_ASSERT_FIELD(fm_wire_header, nfds, 10);
FM_ASSERT_FIELD(fm_wire_header, body_len, 12);
FM_ASSERT_FIELD(fm_wire_header, request_id, 16);
FM_ASSERT_FIELD(fm_wire_header, crc32c, 24);
FM_ASSERT_FIELD(fm_wire_header, reserved1, 28);
_Static_assert(sizeof(fm_wire_hello_reply) == 40, "HELLO reply fixed part");
FM_ASSERT_FIELD(fm_wire_hello_reply, max_body, 4);
FM_ASSERT_FIELD(fm_wire_hello_reply, staging_size, 16);
FM_ASSERT_FIELD(fm_wire_hello_reply, instance_id, 24);
_Static_assert(sizeof(fm_wire_policy) == 32, "policy");
FM_ASSERT_FIELD(fm_wire_policy, kmax_ratio, 16);
FM_ASSERT_FIELD(fm_wire_policy, fallback_ratio, 24);
_Static_assert(sizeof(fm_wire_layout) == 24, "layout fixed part");
FM_ASSERT_FIELD(fm_wire_layout, reserve_slots, 16);
FM_ASSERT_FIELD(fm_wire_layout, n_layers, 20);
_Static_assert(sizeof(fm_wire_region) == 24, "RegionDesc fixed part");
FM_ASSERT_FIELD(fm_wire_region, slots, 8);
FM_ASSERT_FIELD(fm_wire_region, kind, 12);
FM_ASSERT_FIELD(fm_wire_region, device, 16);
FM_ASSERT_FIELD(fm_wire_region, n_layers, 20);
_Static_assert(sizeof(fm_wire_region_layer) == 12, "region layer");
_Static_assert(sizeof(fm_wire_append) == 44, "APPEND up to the keys");
FM_ASSERT_FIELD(fm_wire_append, count, 16);
FM_ASSERT_FIELD(fm_wire_append, flags, 20);
FM_ASSERT_FIELD(fm_wire_append, staging_offset, 24);
FM_ASSERT_FIELD(fm_wire_append, payload_length, 32);
FM_ASSERT_FIELD(fm_wire_append, keys_len, 40);
_Static_assert(sizeof(fm_wire_commit) == 28, "COMMIT up to the keys");
FM_ASSERT_FIELD(fm_wire_commit, keys_len, 24);
_Static_assert(sizeof(fm_wire_cycle_entry) == 28, "CYCLE entry fixed part");
FM_ASSERT_FIELD(fm_wire_cycle_entry, n_queries, 24);
_Static_assert(sizeof(fm_wire_cycle_result) == 80, "CYCLE result fixed part");
FM_ASSERT_FIELD(fm_wire_cycle_result, lease, 4);
FM_ASSERT_FIELD(fm_wire_cycle_result, cycle, 12);
FM_ASSERT_FIELD(fm_wire_cycle_result, chunks, 20);
FM_ASSERT_FIELD(fm_wire_cycle_result, total_pages, 28);
FM_ASSERT_FIELD(fm_wire_cycle_result, forced_pages, 36);
FM_ASSERT_FIELD(fm_wire_cycle_result, flags, 44);
FM_ASSERT_FIELD(fm_wire_cycle_result, above_fraction, 52);
FM_ASSERT_FIELD(fm_wire_cycle_result, wait_us, 60);
FM_ASSERT_FIELD(fm_wire_cycle_result, score_us, 68);
FM_ASSERT_FIELD(fm_wire_cycle_result, n_pages, 76);
_Static_assert(sizeof(fm_page_slot) == 8, "page slot");

/* ---- API types --------------------------------------------------------------------- */
typedef struct fm_client fm_client;

typedef struct fm_error {
	int32_t code;                       /* FM_E_* (wire code > 0, local < 0) */
	char msg[FM_MAX_ERROR_MSG + 64];    /* the daemon's message, or what failed here */
} fm_error;

typedef struct fm_hello_info {
	uint16_t version;
	uint32_t max_body;
	uint32_t max_sessions;
	uint32_t max_cycle_entries;
	uint64_t staging_size;
	uint8_t instance_id[16];
	char server[FM_MAX_NAME + 1];
} fm_hello_info;

typedef struct fm_layer_layout {
	uint32_t row_bytes;
	uint32_t n_segments;
	uint32_t segments[FM_MAX_SEGMENTS];
} fm_layer_layout;

typedef struct fm_layout {
	uint32_t chunks_per_page, key_bytes, target_layers, cycle_steps, reserve_slots;
	uint32_t n_layers;
	fm_layer_layout *layers; /* n_layers entries, caller-owned (fm_resume: fm_session_free) */
} fm_layout;

typedef struct fm_policy {
	uint32_t first_keep, last_keep, kmax, lookahead;
	double kmax_ratio, fallback_ratio;
} fm_policy;

typedef struct fm_open_req {
	const char *name;  /* "" or NULL: ephemeral */
	const char *model; /* "" or NULL: the daemon's default */
	int persist;
	uint32_t device;   /* GPU ordinal, FM_DEVICE_ANY or FM_DEVICE_HOST_ONLY */
	fm_policy policy;  /* zeros: daemon defaults */
	const fm_layout *layout;
	uint32_t flags;    /* 0 or FM_OPEN_PAGE_MAJOR (sent only when non-zero) */
} fm_open_req;

typedef struct fm_region_layer {
	uint64_t offset;
	uint32_t row_bytes;
	uint64_t stride; /* slot k of the layer is at offset + k * stride (row_bytes unless page-major) */
} fm_region_layer;

typedef struct fm_session {
	uint64_t id;
	uint64_t chunks;          /* RESUME: chunks stored so far; OPEN: 0 */
	uint64_t size;            /* region bytes */
	uint32_t slots, kind, device, n_layers;
	fm_region_layer *layers;  /* n_layers entries */
	int page_major;           /* the reply carried strides (a page-major reserve) */
	int fd;                   /* the region's descriptor (-1 once mapped or taken) */
	uint8_t *base;            /* fm_session_map: the mapped host region */
	/* RESUME only: */
	int persist;
	char model[FM_MAX_NAME + 1];
	fm_policy policy;
	fm_layout layout;         /* layers allocated; freed by fm_session_free */
} fm_session;

typedef struct fm_cycle_entry {
	uint64_t session, step, position;
	uint32_t n_queries;
	const void *const *queries; /* n_queries pointers */
	const uint32_t *query_lens; /* n_queries lengths */
} fm_cycle_entry;

/* A selected page the daemon left out of the table: its stored bytes failed verification. */
typedef struct fm_damaged_page {
	uint32_t page;
	int32_t code;  /* FM_E_INTEGRITY */
	char *message;
} fm_damaged_page;

typedef struct fm_cycle_result {
	int32_t status;  /* 0, or the entry's wire error code */
	char *message;   /* the error message for a failed entry (else NULL) */
	uint64_t lease, cycle, chunks;
	uint32_t total_pages, resident_pages, forced_pages, recalled_pages;
	int fallback;
	double above_fraction;
	uint64_t wait_us, score_us;
	uint32_t n_pages, n_tail;
	fm_page_slot *pages; /* sorted by page; the table the decoder may read now */
	fm_page_slot *tail;  /* slots for the pages the next tau steps produce */
	uint32_t n_damaged;
	fm_damaged_page *damaged; /* never read these pages (NULL when none) */
} fm_cycle_result;

/* ---- API --------------------------------------------------------------------------- */
/* CRC-32C (Castagnoli) continuing from crc (0 to start): fm_crc32c_update(fm_crc32c_update
 * (0, a), b) is the CRC of a followed by b. SSE4.2 when the CPU has it. */
uint32_t fm_crc32c_update(uint32_t crc, const void *data, size_t len);
uint32_t fm_crc32c(const void *data, size_t len);

/* Connect to path (NULL: $FLASHMEMD_SOCKET, $XDG_RUNTIME_DIR/flashmemd/flashmemd.sock,
 * /run/flashmemd/flashmemd.sock) and HELLO. On failure *out is NULL. */
int fm_connect(const char *path, const char *client_name, fm_client **out, fm_error *err);
/* Connect without HELLO (tests, tools); then fm_hello or raw calls. */
int fm_connect_raw(const char *path, fm_client **out, fm_error *err);
int fm_hello(fm_client *c, const char *client_name, uint16_t min_version, uint16_t max_version, fm_error *err);
void fm_close(fm_client *c);
const fm_hello_info *fm_info(const fm_client *c);
/* The staging region (mapped read-write), or NULL with *size 0. */
void *fm_staging(fm_client *c, size_t *size);

int fm_ping(fm_client *c, const void *data, size_t len, fm_error *err);
int fm_open(fm_client *c, const fm_open_req *req, fm_session *out, fm_error *err);
int fm_resume(fm_client *c, const char *name, fm_session *out, fm_error *err);
/* Map a host region (kind FM_REGION_MEMFD) read-write and close its fd. */
int fm_session_map(fm_session *s, fm_error *err);
/* Slot `slot` of layer `layer` in a mapped region, or NULL if out of range. */
uint8_t *fm_session_row(const fm_session *s, uint32_t layer, uint32_t slot);
/* Unmap, close the fd if still open, free the arrays. Does not CLOSE the session. */
void fm_session_free(fm_session *s);
int fm_close_session(fm_client *c, uint64_t session, int del, fm_error *err);
int fm_persist(fm_client *c, uint64_t session, fm_error *err);
/* PERSIST with a durability level (FM_DURABILITY_CLUSTER: daemons with a cluster). */
int fm_persist_durability(fm_client *c, uint64_t session, uint32_t durability, fm_error *err);

/* APPEND with the payload inline in the frame. */
int fm_append_inline(fm_client *c, uint64_t session, uint64_t first_chunk, uint32_t count,
                     const void *keys, size_t keys_len, const void *payload, size_t payload_len,
                     uint64_t *chunks, fm_error *err);
/* APPEND of payload_len bytes the caller wrote into the staging region at offset. */
int fm_append_staged(fm_client *c, uint64_t session, uint64_t first_chunk, uint32_t count,
                     const void *keys, size_t keys_len, uint64_t offset, uint64_t payload_len,
                     uint64_t *chunks, fm_error *err);
int fm_commit(fm_client *c, uint64_t session, uint64_t first_chunk, uint32_t count,
              const void *keys, size_t keys_len, uint64_t *chunks, fm_error *err);

/* CYCLE a batch. On success *results holds n results (entry errors in their status). */
int fm_cycle(fm_client *c, const fm_cycle_entry *entries, uint32_t n, fm_cycle_result **results,
             fm_error *err);
void fm_cycle_results_free(fm_cycle_result *results, uint32_t n);
int fm_release(fm_client *c, const uint64_t *leases, uint32_t n, fm_error *err);

/* Admin ops (JSON bodies, section 10.11): op FM_OP_STATUS/SESSIONS/MODELS (request NULL)
 * or INSPECT/EVICT/VERIFY/DELETE/SAVE (request {"session": 3} or {"name": "s"}), CLUSTER. *reply is malloc'd, NUL-terminated. */
int fm_admin(fm_client *c, uint16_t op, const char *request, char **reply, size_t *reply_len, fm_error *err);

/* Raw access: send `header` (32 bytes, as is, or NULL to build one for op with the
 * negotiated version) and body; receive the reply body (malloc'd) and up to FM_MAX_FDS fds.
 * Error replies return their code with err filled. */
int fm_call(fm_client *c, uint16_t op, const fm_wire_header *header, const void *body, size_t body_len,
            uint8_t **reply, size_t *reply_len, int *fds, int *nfds, fm_error *err);
/* The next request id fm_call will use (to build a raw header). */
uint64_t fm_next_request_id(const fm_client *c);

/* Layout arithmetic (section 11). */
uint64_t fm_layout_chunk_bytes(const fm_layout *l);
uint64_t fm_layout_payload_offset(const fm_layout *l, uint64_t n, uint32_t layer, uint32_t seg, uint64_t i);
uint64_t fm_layout_row_offset(const fm_layout *l, uint32_t layer, uint32_t seg, uint32_t c);
const char *fm_code_name(int32_t code);

#ifdef __cplusplus
}
#endif
#endif
