/* bench_cycle.c — round trips of PING and CYCLE through the C client: the C side of
 * clients/bench.sh (same session shape and counts as clients/gobench and the Python bench).
 *
 *   bench_cycle SOCKET [n] [chunks] [sessions] [hidden] */
#define _GNU_SOURCE
#include "flashmem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

static uint64_t s_rng = 1;
static uint64_t next(void) {
	uint64_t x = (s_rng += 0x9E3779B97F4A7C15ull);
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static double now_us(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void print_stats(const char *name, double *v, int n) {
	qsort(v, (size_t)n, sizeof *v, cmp);
	double sum = 0;
	for (int i = 0; i < n; i++)
		sum += v[i];
	printf("\"%s\": {\"p50\": %.2f, \"p99\": %.2f, \"mean\": %.2f}", name, v[n / 2], v[n * 99 / 100], sum / n);
}

#define DIE(call)                                                                           \
	do {                                                                                \
		fm_error e_;                                                                \
		int rc_ = (call);                                                           \
		if (rc_) {                                                                  \
			fprintf(stderr, "%s: %d %s: %s\n", #call, rc_, fm_code_name(rc_), e_.msg); \
			return 1;                                                           \
		}                                                                           \
	} while (0)

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: %s SOCKET [n] [chunks] [sessions] [hidden]\n", argv[0]);
		return 2;
	}
	int n = argc > 2 ? atoi(argv[2]) : 2000;
	uint64_t chunks = argc > 3 ? strtoull(argv[3], NULL, 10) : 8192;
	int nsess = argc > 4 ? atoi(argv[4]) : 1;
	int hidden = argc > 5 ? atoi(argv[5]) : 64;
	fm_client *c;
	DIE(fm_connect(argv[1], "cbench", &c, &e_));
	fm_layer_layout layers[2] = {{64 * 40, 2, {32, 8}}, {64 * 24 + 512, 1, {24}}};
	fm_layout l = {64, 132, 3, 64, 256, 2, layers};
	fm_open_req req = {.device = FM_DEVICE_ANY, .layout = &l};
	fm_cycle_entry *entries = calloc((size_t)nsess, sizeof *entries);
	uint16_t *q = malloc((size_t)nsess * 3 * (size_t)hidden * 2);
	const void **qp = malloc((size_t)nsess * 3 * sizeof *qp);
	uint32_t qlen[3] = {(uint32_t)hidden * 2, (uint32_t)hidden * 2, (uint32_t)hidden * 2};
	uint64_t cb = fm_layout_chunk_bytes(&l);
	uint8_t *payload = malloc(512 * cb), *keys = malloc(512 * 3 * 132);
	for (int s = 0; s < nsess; s++) {
		fm_session sess;
		DIE(fm_open(c, &req, &sess, &e_));
		for (uint64_t at = 0; at < chunks; at += 512) {
			uint64_t k = chunks - at < 512 ? chunks - at : 512;
			for (uint64_t i = 0; i < k * cb; i++)
				payload[i] = (uint8_t)next();
			for (uint64_t i = 0; i < k * 3; i++) {
				for (int b = 0; b < 128; b++) {
					uint8_t v = (uint8_t)next();
					keys[i * 132 + b] = (v & 0x7F) == 0x7F ? 0 : v;
				}
				float scale = 0.5f + (float)(next() % 1000) / 1000.0f;
				memcpy(keys + i * 132 + 128, &scale, 4);
			}
			uint64_t got;
			DIE(fm_append_inline(c, sess.id, at, (uint32_t)k, keys, k * 3 * 132, payload, k * cb, &got, &e_));
		}
		for (int t = 0; t < 3; t++) {
			uint16_t *h = q + ((size_t)s * 3 + (size_t)t) * (size_t)hidden;
			for (int i = 0; i < hidden; i++) {
				/* N(0, 1) by Box-Muller, as the Go and Python benches draw their queries: the
				 * daemon's work per cycle depends on the scores, so the data must match. */
				double u1 = ((double)(next() >> 11) + 1.0) / 9007199254740993.0, u2 = (double)(next() >> 11) / 9007199254740992.0;
				float v = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
				uint32_t bits;
				memcpy(&bits, &v, 4);
				h[i] = (uint16_t)(bits >> 16);
			}
			qp[s * 3 + t] = h;
		}
		entries[s] = (fm_cycle_entry){sess.id, 0, chunks * 4, 3, &qp[s * 3], qlen};
		fm_session_free(&sess);
	}
	double *ping = malloc((size_t)n * sizeof(double)), *cyc = malloc((size_t)n * sizeof(double));
	double *server = malloc((size_t)n * sizeof(double)); /* the daemon's own time: scoring + recall wait */
	double *over = malloc((size_t)n * sizeof(double));   /* round trip less the daemon's time */
	uint64_t *leases = malloc((size_t)nsess * sizeof *leases);
	uint32_t pages = 0;
	for (int i = 0; i < n + 50; i++) {
		double t0 = now_us();
		DIE(fm_ping(c, "ping", 4, &e_));
		double t1 = now_us();
		fm_cycle_result *r;
		DIE(fm_cycle(c, entries, (uint32_t)nsess, &r, &e_));
		double t2 = now_us();
		double srv = 0;
		for (int s = 0; s < nsess; s++) {
			if ((double)(r[s].score_us + r[s].wait_us) > srv)
				srv = (double)(r[s].score_us + r[s].wait_us);
			if (r[s].status) {
				fprintf(stderr, "entry %d: %d %s\n", s, r[s].status, r[s].message);
				return 1;
			}
			leases[s] = r[s].lease;
		}
		pages = r[0].n_pages;
		fm_cycle_results_free(r, (uint32_t)nsess);
		DIE(fm_release(c, leases, (uint32_t)nsess, &e_));
		if (i >= 50) {
			ping[i - 50] = t1 - t0;
			cyc[i - 50] = t2 - t1;
			server[i - 50] = srv;
			over[i - 50] = (t2 - t1) - srv;
		}
	}
	printf("{\"client\": \"c\", \"n\": %d, \"sessions\": %d, \"chunks\": %llu, \"pages_per_entry\": %u, ", n, nsess,
	       (unsigned long long)chunks, pages);
	print_stats("ping_us", ping, n);
	printf(", ");
	print_stats("cycle_us", cyc, n);
	printf(", ");
	print_stats("server_us", server, n);
	printf(", ");
	print_stats("overhead_us", over, n);
	printf("}\n");
	fm_close(c);
	free(entries);
	free(q);
	free(qp);
	free(payload);
	free(keys);
	free(ping);
	free(cyc);
	free(server);
	free(over);
	free(leases);
	return 0;
}
