// cycle.cu — one Memory-Indexer cycle of a whole CYCLE batch on the GPU (see
// ../../../shared/LSA.md and docs/indexer.md): query projections, RMSNorm, bf16 rounding,
// YaRN RoPE, Hadamard, head weights, fp8-q quantisation, scoring of every target layer,
// the ensemble over layers, the threshold, page scores, the counters, and the Level-1
// top-KMAX cut with its forced pages. Five launches on one stream; the host copies the
// inputs (hidden states, positions, descriptors) in with one copy and the results (page
// scores, selection bitmaps, counters) out with one copy. Logits never leave the GPU
// (except into a test's optional buffer).
//
//   fm_cyc_proj    Y = W·X for a list of jobs (a matrix, up to 8 vectors), float64 sums
//   fm_cyc_norm    RMSNorm of every (layer, request) q_lora; also zeroes the page counters
//   fm_cyc_qpost   bf16 → RoPE → bf16 → Hadamard → (fp8) → packed MMA fragments + weights
//   fm_cyc_score   every request's chunks against its L queries, ensemble, threshold,
//                  above-threshold count per page and outside sink/tail (atomics)
//   fm_cyc_select  per request: histogram cut of the page scores, ties newest first,
//                  forced pages, bitmap out (SelectPages in select.go is its CPU twin)
//
// Every float step that the CPU reference (package attn) rounds is rounded here in the same
// order with __f*_rn intrinsics (no FMA contraction), so queries match the CPU's bit for
// bit except where a float64 sum is taken in another order.
//
// PTX committed beside this file was built on the GPU machine by scripts/build-ptx.sh:
//   nvcc -ptx -arch=compute_80 -O3 -o cycle_sm80.ptx cycle.cu
//   nvcc -ptx -arch=compute_90 -O3 -o cycle_sm90.ptx cycle.cu

#include <cuda_fp16.h>

#define PROJ_NB 8
#define MAXL 8
#define WARPS 8
#define CHUNKS_PER_WARP 32
#define TILE (WARPS * CHUNKS_PER_WARP)
#define MAX_TILE_PAGES (TILE + 1)

// ---------------------------------------------------------------------------------------
// Projections.

struct ProjJob {
	const void *W; // [rows][cols] float32 or bf16 bits
	const float *X; // [nb][cols]
	float *Y;       // [nb][rows]
	int rows, cols, nb, bf16;
};

__device__ __forceinline__ float bf16_to_f32(unsigned short h)
{
	return __uint_as_float(((unsigned int)h) << 16);
}

extern "C" __global__ void __launch_bounds__(256) fm_cyc_proj(const ProjJob *__restrict__ jobs)
{
	const ProjJob j = jobs[blockIdx.y];
	const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
	const int lane = threadIdx.x & 31;
	const int nwarps = (gridDim.x * blockDim.x) >> 5;
	const int cols = j.cols;
	for (int r = warp; r < j.rows; r += nwarps) {
		double acc[PROJ_NB];
#pragma unroll
		for (int b = 0; b < PROJ_NB; b++)
			acc[b] = 0;
		for (int c = lane * 8; c < cols; c += 32 * 8) {
			float w[8];
			if (j.bf16) {
				const uint4 u = *(const uint4 *)((const unsigned short *)j.W + (size_t)r * cols + c);
				const unsigned int p[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
				for (int i = 0; i < 4; i++) {
					w[2 * i] = bf16_to_f32((unsigned short)(p[i] & 0xffff));
					w[2 * i + 1] = bf16_to_f32((unsigned short)(p[i] >> 16));
				}
			} else {
				const float4 a = *(const float4 *)((const float *)j.W + (size_t)r * cols + c);
				const float4 b4 = *(const float4 *)((const float *)j.W + (size_t)r * cols + c + 4);
				w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w;
				w[4] = b4.x, w[5] = b4.y, w[6] = b4.z, w[7] = b4.w;
			}
#pragma unroll
			for (int b = 0; b < PROJ_NB; b++) {
				if (b < j.nb) {
					const float4 x0 = *(const float4 *)(j.X + (size_t)b * cols + c);
					const float4 x1 = *(const float4 *)(j.X + (size_t)b * cols + c + 4);
					acc[b] += (double)w[0] * x0.x + (double)w[1] * x0.y + (double)w[2] * x0.z + (double)w[3] * x0.w +
						  (double)w[4] * x1.x + (double)w[5] * x1.y + (double)w[6] * x1.z + (double)w[7] * x1.w;
				}
			}
		}
#pragma unroll
		for (int b = 0; b < PROJ_NB; b++) {
			double v = acc[b];
#pragma unroll
			for (int o = 16; o > 0; o >>= 1)
				v += __shfl_xor_sync(0xffffffffu, v, o);
			if (lane == 0 && b < j.nb)
				j.Y[(size_t)b * j.rows + r] = (float)v;
		}
	}
}

// ---------------------------------------------------------------------------------------
// RMSNorm (attn.RMSNorm): block (l, b) of qa [L][B][R]; normw [L][R]. Blocks also zero
// `nzero` words at `zero` (the page counters fm_cyc_score adds into).

extern "C" __global__ void __launch_bounds__(256) fm_cyc_norm(float *__restrict__ qa, const float *__restrict__ normw,
							      int R, int B, float eps, unsigned int *__restrict__ zero, unsigned int nzero)
{
	for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < nzero; i += gridDim.x * blockDim.x)
		zero[i] = 0;
	const int l = blockIdx.x / B;
	float *x = qa + (size_t)blockIdx.x * R;
	const float *w = normw + (size_t)l * R;
	double ss = 0;
	for (int i = threadIdx.x; i < R; i += blockDim.x) {
		const double v = x[i];
		ss += v * v;
	}
	__shared__ double red[32];
	for (int o = 16; o > 0; o >>= 1)
		ss += __shfl_xor_sync(0xffffffffu, ss, o);
	if ((threadIdx.x & 31) == 0)
		red[threadIdx.x >> 5] = ss;
	__syncthreads();
	if (threadIdx.x < 32) {
		double v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0;
		for (int o = 16; o > 0; o >>= 1)
			v += __shfl_xor_sync(0xffffffffu, v, o);
		if (threadIdx.x == 0)
			red[0] = v;
	}
	__syncthreads();
	const float ms = (float)(red[0] / (double)R);
	const float rs = (float)(1.0 / sqrt((double)__fadd_rn(ms, eps)));
	for (int i = threadIdx.x; i < R; i += blockDim.x)
		x[i] = __fmul_rn(__fmul_rn(x[i], rs), w[i]);
}

// ---------------------------------------------------------------------------------------
// Query post-processing: block (l, b) of qb [L][B][H·128] and wraw [L][B][H]; one warp
// per head, lane holding dims 4·lane … 4·lane+3. Output query index q = b·L + l.

__device__ __forceinline__ float round_bf16(float f)
{
	if (f != f)
		return __uint_as_float(0x7fc00000u);
	unsigned int u = __float_as_uint(f);
	u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
	return __uint_as_float(u);
}

// attn.FP8FromF32 (torch's cast: round to nearest even, no saturation: NaN beyond 464).
__device__ __forceinline__ unsigned int fp8_from_f32(float f)
{
	const unsigned int fp8Max = 1087u << 20, denormMask = 141u << 23, minNormal = 121u << 23;
	unsigned int bits = __float_as_uint(f);
	const unsigned int sign = bits & 0x80000000u;
	bits ^= sign;
	unsigned int r;
	if (bits >= fp8Max) {
		r = 0x7f;
	} else if (bits < minNormal) {
		const unsigned int b = __float_as_uint(__fadd_rn(__uint_as_float(bits), __uint_as_float(denormMask)));
		r = (b - denormMask) & 0xff;
	} else {
		const unsigned int odd = (bits >> 20) & 1;
		bits += 0xc4000000u + 0x7ffffu;
		bits += odd;
		r = (bits >> 20) & 0xff;
	}
	return r | (sign >> 24);
}

__device__ __forceinline__ float fp8_to_f32(unsigned int c)
{
	const unsigned int s = (c & 0x80) << 24, e = (c >> 3) & 0xf, m = c & 7;
	if (e == 0xf && m == 7)
		return __uint_as_float(0x7fc00000u | s);
	if (e == 0)
		return __uint_as_float(s) + (s ? -1.f : 1.f) * (float)m * 0.001953125f; // m·2^-9
	return __uint_as_float(s | ((e + 120) << 23) | (m << 20));
}

__device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

extern "C" __global__ void __launch_bounds__(256) fm_cyc_qpost(const float *__restrict__ qb, const float *__restrict__ wraw,
							       const float *__restrict__ posf, const float *__restrict__ freqs,
							       int rd, int H, int B, int L, float wscale, float hscale, int fp8q,
							       uint4 *__restrict__ qfrag, float *__restrict__ wout)
{
	const int l = blockIdx.x / B, b = blockIdx.x % B;
	const int q = b * L + l;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const float p = posf[b];
	const int rot0 = 128 - rd;
	for (int hh = warp; hh < H; hh += blockDim.x >> 5) {
		const float *src = qb + ((size_t)blockIdx.x * H + hh) * 128 + lane * 4;
		const float4 in = *(const float4 *)src;
		float v[4] = {round_bf16(in.x), round_bf16(in.y), round_bf16(in.z), round_bf16(in.w)};
		const int e0 = lane * 4;
		if (e0 >= rot0) {
#pragma unroll
			for (int k = 0; k < 2; k++) {
				const int i = (e0 + 2 * k - rot0) >> 1;
				const float ang = __fmul_rn(p, freqs[i]);
				const float c = (float)cos((double)ang), s = (float)sin((double)ang);
				const float a = v[2 * k], bb = v[2 * k + 1];
				v[2 * k] = round_bf16(__fsub_rn(__fmul_rn(a, c), __fmul_rn(bb, s)));
				v[2 * k + 1] = round_bf16(__fadd_rn(__fmul_rn(a, s), __fmul_rn(bb, c)));
			}
		}
		// Walsh–Hadamard, Sylvester order, strides 1, 2 in the lane, 4 … 64 across lanes.
		{
			float u0 = __fadd_rn(v[0], v[1]), u1 = __fsub_rn(v[0], v[1]);
			float u2 = __fadd_rn(v[2], v[3]), u3 = __fsub_rn(v[2], v[3]);
			v[0] = __fadd_rn(u0, u2), v[2] = __fsub_rn(u0, u2);
			v[1] = __fadd_rn(u1, u3), v[3] = __fsub_rn(u1, u3);
		}
#pragma unroll
		for (int m = 1; m < 32; m <<= 1) {
			const bool upper = (lane & m) != 0;
#pragma unroll
			for (int k = 0; k < 4; k++) {
				const float o = __shfl_xor_sync(0xffffffffu, v[k], m);
				v[k] = upper ? __fsub_rn(o, v[k]) : __fadd_rn(v[k], o);
			}
		}
#pragma unroll
		for (int k = 0; k < 4; k++)
			v[k] = __fmul_rn(v[k], hscale);
		float mult = __fmul_rn(wraw[(size_t)blockIdx.x * H + hh], wscale);
		if (fp8q) {
			const float amax = warp_max(fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3]))));
			const float qs = __fdiv_rn(amax, 448.f);
#pragma unroll
			for (int k = 0; k < 4; k++)
				v[k] = qs == 0.f ? 0.f : fp8_to_f32(fp8_from_f32(__fdiv_rn(v[k], qs)));
			mult = __fmul_rn(mult, qs);
		}
		const float amax = warp_max(fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3]))));
		float pw = 1.f;
		if (amax > 0.f) {
			int e;
			frexpf(amax, &e);
			pw = ldexpf(1.f, e);
		}
		unsigned short hi[4], lo[4];
#pragma unroll
		for (int k = 0; k < 4; k++) {
			const float x = __fdiv_rn(v[k], pw);
			const __half h = __float2half_rn(x);
			hi[k] = __half_as_ushort(h);
			lo[k] = __half_as_ushort(__float2half_rn(__fsub_rn(x, __half2float(h))));
		}
		const int c = lane >> 3, kk = lane & 7;
		uint4 o;
		o.x = hi[0] | ((unsigned int)hi[1] << 16);
		o.y = hi[2] | ((unsigned int)hi[3] << 16);
		o.z = lo[0] | ((unsigned int)lo[1] << 16);
		o.w = lo[2] | ((unsigned int)lo[3] << 16);
		qfrag[(size_t)q * H * 32 + ((hh >> 3) * 8 + kk) * 32 + (hh & 7) * 4 + c] = o;
		if (lane == 0)
			wout[(size_t)q * H + hh] = __fmul_rn(__fmul_rn(mult, pw), 256.f);
	}
}

// ---------------------------------------------------------------------------------------
// Scoring with ensemble, threshold and page counts.

struct ReqDesc {
	unsigned long long codes[MAXL];  // [n][128] fp8 e4m3 per target layer
	unsigned long long scales[MAXL]; // [n] float32
	unsigned long long logits;       // optional [L][n] float32 (tests), 0: none
	unsigned int n, tile_first, q_first, sink_end, tail_start, page_first, pad0, pad1;
};

__device__ __forceinline__ unsigned int fp8x2_to_f16x2(unsigned int v)
{
	unsigned int t = __byte_perm(v, 0, 0x4140);
	return ((t & 0x007f007fu) << 7) | ((t & 0x00800080u) << 8);
}

__device__ __forceinline__ void mma16816(float *d, const unsigned int *a, unsigned int b0, unsigned int b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
		     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ReLU that keeps NaN, as torch.relu does (fmaxf would drop it).
__device__ __forceinline__ float relu_nan(float x) { return x != x ? x : fmaxf(x, 0.f); }

extern "C" __global__ void __launch_bounds__(256, 2)
fm_cyc_score(const ReqDesc *__restrict__ reqs, unsigned int nreqs, unsigned int L,
	     const uint4 *__restrict__ qfrag, const float *__restrict__ w, unsigned int heads,
	     unsigned int mode, unsigned int use_lo, unsigned int ensemble, float thr, unsigned int cpp,
	     unsigned int *__restrict__ pagecnt, unsigned int *__restrict__ counters)
{
	extern __shared__ uint4 smem[];
	uint4 *sq = smem;
	float *sw = (float *)(smem + heads * 32);
	unsigned int *spage = (unsigned int *)(sw + heads);
	unsigned int *sout = spage + MAX_TILE_PAGES;

	unsigned int ri = 0;
	while (ri + 1 < nreqs && blockIdx.x >= reqs[ri + 1].tile_first)
		ri++;
	const ReqDesc &rq = reqs[ri];
	const unsigned int n = rq.n;
	const unsigned int tile = blockIdx.x - rq.tile_first;
	const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const unsigned int g = lane >> 2, c = lane & 3;
	const unsigned int base = tile * TILE + warp * CHUNKS_PER_WARP;
	const unsigned int p0 = (tile * TILE) / cpp;
	const unsigned int npg = (min(tile * TILE + TILE, n) - 1) / cpp - p0 + 1;
	for (unsigned int i = threadIdx.x; i < npg; i += blockDim.x)
		spage[i] = 0;
	if (threadIdx.x == 0)
		*sout = 0;

	float ens[2][2];
	double msum[2][2];
	const unsigned int ntiles = heads >> 3;
	const unsigned int qwords = heads * 32;
	for (unsigned int l = 0; l < L; l++) {
		const unsigned char *codes = (const unsigned char *)rq.codes[l];
		const float *scales = (const float *)rq.scales[l];
		unsigned int a[2][8][4];
		float sc[2][2];
		bool nanc[2][2];
#pragma unroll
		for (int mt = 0; mt < 2; mt++) {
#pragma unroll
			for (int half = 0; half < 2; half++) {
				const unsigned int row = base + mt * 16 + half * 8 + g;
				uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
				float s = 0.f;
				if (row < n) {
					const uint4 *p = (const uint4 *)(codes + (size_t)row * 128 + c * 32);
					lo = __ldg(p);
					hi = __ldg(p + 1);
					s = __ldg(scales + row);
				}
				sc[mt][half] = s;
				const unsigned int words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
				unsigned int nanbits = 0;
#pragma unroll
				for (int kk = 0; kk < 8; kk++) {
					nanbits |= ((words[kk] & 0x7f7f7f7fu) + 0x01010101u) & 0x80808080u;
					a[mt][kk][half] = fp8x2_to_f16x2(words[kk]);
					a[mt][kk][2 + half] = fp8x2_to_f16x2(words[kk] >> 16);
				}
				nanbits |= __shfl_xor_sync(0xffffffffu, nanbits, 1);
				nanbits |= __shfl_xor_sync(0xffffffffu, nanbits, 2);
				nanc[mt][half] = nanbits != 0;
			}
		}
		const unsigned int q = rq.q_first + l;
		__syncthreads();
		const uint4 *src = qfrag + (size_t)q * qwords;
		for (unsigned int i = threadIdx.x; i < qwords; i += blockDim.x)
			sq[i] = __ldg(src + i);
		for (unsigned int i = threadIdx.x; i < heads; i += blockDim.x)
			sw[i] = __ldg(w + (size_t)q * heads + i);
		__syncthreads();

		float part[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
		for (unsigned int j = 0; j < ntiles; j++) {
			float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
			for (int kk = 0; kk < 8; kk++) {
				const uint4 bf = sq[(j * 8 + kk) * 32 + lane];
				mma16816(acc[0], a[0][kk], bf.x, bf.y);
				mma16816(acc[1], a[1][kk], bf.x, bf.y);
				if (use_lo) {
					mma16816(acc[0], a[0][kk], bf.z, bf.w);
					mma16816(acc[1], a[1][kk], bf.z, bf.w);
				}
			}
			const float w0 = sw[j * 8 + c * 2], w1 = sw[j * 8 + c * 2 + 1];
#pragma unroll
			for (int mt = 0; mt < 2; mt++) {
				if (mode == 0) {
					part[mt][0] += w0 * relu_nan(sc[mt][0] * acc[mt][0]) + w1 * relu_nan(sc[mt][0] * acc[mt][1]);
					part[mt][1] += w0 * relu_nan(sc[mt][1] * acc[mt][2]) + w1 * relu_nan(sc[mt][1] * acc[mt][3]);
				} else {
					part[mt][0] += w0 * fmaxf(acc[mt][0], 0.f) + w1 * fmaxf(acc[mt][1], 0.f);
					part[mt][1] += w0 * fmaxf(acc[mt][2], 0.f) + w1 * fmaxf(acc[mt][3], 0.f);
				}
			}
		}
#pragma unroll
		for (int mt = 0; mt < 2; mt++) {
#pragma unroll
			for (int half = 0; half < 2; half++) {
				float v = part[mt][half];
				v += __shfl_xor_sync(0xffffffffu, v, 1);
				v += __shfl_xor_sync(0xffffffffu, v, 2);
				if (mode != 0)
					v *= sc[mt][half];
				if (nanc[mt][half])
					v = __uint_as_float(0x7fc00000u);
				const unsigned int row = base + mt * 16 + half * 8 + g;
				if (rq.logits && c == 0 && row < n)
					((float *)rq.logits)[(size_t)l * n + row] = v;
				if (l == 0) {
					ens[mt][half] = v;
					msum[mt][half] = 0;
				} else if (ensemble == 0) {
					const float e = ens[mt][half];
					ens[mt][half] = (e != e || v != v) ? __uint_as_float(0x7fc00000u) : fmaxf(e, v);
				}
				if (ensemble == 1)
					msum[mt][half] += 1.0 / (1.0 + exp(-(double)v));
			}
		}
	}

	unsigned int outside = 0;
#pragma unroll
	for (int mt = 0; mt < 2; mt++) {
#pragma unroll
		for (int half = 0; half < 2; half++) {
			const unsigned int row = base + mt * 16 + half * 8 + g;
			float e = ens[mt][half];
			if (ensemble == 1) {
				const double pm = msum[mt][half] * (1.0 / (double)L);
				e = (float)log(pm / (1.0 - pm));
			}
			if (c == 0 && row < n && e > thr) {
				atomicAdd(&spage[row / cpp - p0], 1u);
				if (row >= rq.sink_end && row < rq.tail_start)
					outside++;
			}
		}
	}
	for (int o = 16; o > 0; o >>= 1)
		outside += __shfl_xor_sync(0xffffffffu, outside, o);
	if (lane == 0 && outside)
		atomicAdd(sout, outside);
	__syncthreads();
	for (unsigned int i = threadIdx.x; i < npg; i += blockDim.x)
		if (spage[i])
			atomicAdd(&pagecnt[rq.page_first + p0 + i], spage[i]);
	if (threadIdx.x == 0 && *sout)
		atomicAdd(&counters[ri], *sout);
}

// ---------------------------------------------------------------------------------------
// Level-1 selection, one block per request (indexer selector.topK; CPU twin SelectPages).
// Result record at out + out_off: u32 above, u32 above_outside, u32 selected, u32 pad,
// u8 page scores [pages] padded to 4 bytes, u32 bitmap [ceil(pages/32)].

struct SelDesc {
	unsigned int pages, page_first, sink_pages, tail_page;
	int need;
	unsigned int out_off, pad0, pad1;
};

extern "C" __global__ void __launch_bounds__(256) fm_cyc_select(const SelDesc *__restrict__ descs, const unsigned int *__restrict__ pagecnt,
								const unsigned int *__restrict__ counters, unsigned int cpp,
								unsigned char *__restrict__ out)
{
	__shared__ unsigned int hist[257];
	__shared__ unsigned int ties[256];
	__shared__ unsigned int sabove, ssel;
	__shared__ int scut, sneed;
	const SelDesc d = descs[blockIdx.x];
	const unsigned int *cnt = pagecnt + d.page_first;
	unsigned int *rec = (unsigned int *)(out + d.out_off);
	unsigned char *scores = (unsigned char *)(rec + 4);
	unsigned int *bits = (unsigned int *)(scores + ((d.pages + 3) & ~3u));
	for (unsigned int i = threadIdx.x; i <= cpp; i += blockDim.x)
		hist[i] = 0;
	if (threadIdx.x == 0)
		sabove = 0, ssel = 0;
	__syncthreads();
	unsigned int above = 0;
	for (unsigned int pg = threadIdx.x; pg < d.pages; pg += blockDim.x) {
		const unsigned int s = cnt[pg];
		scores[pg] = (unsigned char)s;
		above += s;
		if (!(pg < d.sink_pages || pg >= d.tail_page))
			atomicAdd(&hist[s], 1u);
	}
	atomicAdd(&sabove, above);
	__syncthreads();
	if (threadIdx.x == 0) {
		unsigned int free = 0;
		for (unsigned int i = 0; i <= cpp; i++)
			free += hist[i];
		int need = d.need, cut;
		if (need <= 0) {
			cut = 0x7fffffff, need = 0; // no other page
		} else if ((unsigned int)need >= free) {
			cut = -1, need = 0; // every page
		} else {
			for (cut = (int)cpp; cut >= 0; cut--) {
				if (hist[cut] >= (unsigned int)need)
					break;
				need -= hist[cut];
			}
		}
		scut = cut, sneed = need;
		rec[0] = sabove;
		rec[1] = counters[blockIdx.x];
	}
	__syncthreads();
	const int cut = scut, needcut = sneed;
	const unsigned int per = (((d.pages + blockDim.x - 1) / blockDim.x) + 31) & ~31u;
	const unsigned int lo = threadIdx.x * per, hi = min(lo + per, d.pages);
	unsigned int nt = 0;
	for (unsigned int pg = lo; pg < hi; pg++)
		if (!(pg < d.sink_pages || pg >= d.tail_page) && (int)cnt[pg] == cut)
			nt++;
	ties[threadIdx.x] = nt;
	__syncthreads();
	if (threadIdx.x == 0) {
		unsigned int run = 0;
		for (int t = blockDim.x - 1; t >= 0; t--) {
			const unsigned int x = ties[t];
			ties[t] = run;
			run += x;
		}
	}
	__syncthreads();
	int taken = (int)ties[threadIdx.x];
	unsigned int nsel = 0;
	if (lo < hi) {
		for (int wi = (int)((hi - 1) >> 5); wi >= (int)(lo >> 5); wi--) {
			unsigned int word = 0;
			for (int bit = 31; bit >= 0; bit--) {
				const unsigned int pg = (unsigned int)wi * 32 + bit;
				if (pg < lo || pg >= hi)
					continue;
				bool sel;
				if (pg < d.sink_pages || pg >= d.tail_page) {
					sel = true;
				} else {
					const int s = (int)cnt[pg];
					sel = s > cut;
					if (s == cut) {
						sel = taken < needcut;
						taken++;
					}
				}
				if (sel)
					word |= 1u << bit;
			}
			bits[wi] = word;
			nsel += __popc(word);
		}
	}
	atomicAdd(&ssel, nsel);
	__syncthreads();
	if (threadIdx.x == 0)
		rec[2] = ssel, rec[3] = 0;
}
