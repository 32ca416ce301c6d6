// score.cu — the Memory Indexer's Level-1 scorer on the GPU (see ../../../shared/LSA.md):
//
//   logits[q, n] = Σ_h w[q,h] · ReLU(s_n · (q_h · k8_n))        (float variant)
//   logits[q, n] = s_n · Σ_h w[q,h] · ReLU(q_h · k8_n)          (fp8-q variant)
//
// with k8_n the chunk's 128 fp8 e4m3 codes and s_n its float32 scale. One launch scores a
// whole batch: several key sets (one per request, or one shared), each with the queries
// that read it. The [chunks × queries × heads] intermediate never leaves the SM: each warp
// holds the decoded keys of 32 chunks in registers as tensor-core A fragments, streams the
// query heads (pre-packed by the host in fragment order, in shared memory) through
// mma.sync m16n8k16 (f16 inputs, f32 accumulation), and folds each 8-head accumulator tile
// into per-chunk partial logits right away (ReLU, head weight, scale).
//
// Precision: fp8 e4m3 codes become f16 exactly by a bit shift (value · 2^-8, subnormals
// included). The host scales each query head by a power of two into [-1, 1] and splits it
// into f16 hi + lo parts, so q·k carries ~22 mantissa bits (two MMAs); fp8-q queries are
// fp8 values, exact in f16, and skip the lo MMA. The power-of-two factors are folded into
// the head weights, which is exact because ReLU(c·x) = c·ReLU(x) for c > 0.
//
// The k index inside an MMA is permuted so that each thread's A fragments come from one
// contiguous 32-byte run of its key rows (two 16-byte loads per row): thread (g, c) of a
// warp owns dims [32c, 32c+32) and k-step kk uses dims 32c+4kk+{0,1} (fragment slot
// 2c+{0,1}) and 32c+4kk+{2,3} (slot 2c+8+{0,1}). The host packs queries with the same map.
//
// PTX committed beside this file was built on the GPU machine by scripts/build-ptx.sh:
//   nvcc -ptx -arch=compute_80 -O3 -o score_sm80.ptx score.cu
//   nvcc -ptx -arch=compute_90 -O3 -o score_sm90.ptx score.cu

#define WARPS 8
#define CHUNKS_PER_WARP 32
#define TILE (WARPS * CHUNKS_PER_WARP) // chunks per block

struct KeySet {
	const unsigned char *codes; // [n][128] fp8 e4m3
	const float *scales;        // [n]
	float *out;                 // [q_count][n]
	unsigned int n;
	unsigned int q_first;    // first query (index into the packed query arrays)
	unsigned int q_count;
	unsigned int tile_first; // first block of this set
};

// Two fp8 e4m3 codes (low 16 bits of v) -> f16x2 holding code·2^-8 each, exactly.
__device__ __forceinline__ unsigned int fp8x2_to_f16x2(unsigned int v)
{
	unsigned int t = __byte_perm(v, 0, 0x4140); // b0 -> bits 0..7, b1 -> bits 16..23
	return ((t & 0x007f007fu) << 7) | ((t & 0x00800080u) << 8);
}

__device__ __forceinline__ void mma16816(float *d, const unsigned int *a, unsigned int b0, unsigned int b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
		     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// qfrag: per query, [heads/8][8 k-steps][32 lanes] uint4 {hi b0b1, hi b2b3, lo b0b1, lo b2b3}.
// w:     per query, [heads] folded head weights.
// mode:  0 float variant (scale inside ReLU), 1 fp8-q variant (scale after the head sum).
extern "C" __global__ void __launch_bounds__(256, 2)
fm_score(const KeySet *__restrict__ sets, unsigned int nsets,
	 const uint4 *__restrict__ qfrag, const float *__restrict__ w,
	 unsigned int heads, unsigned int mode, unsigned int use_lo)
{
	extern __shared__ uint4 smem[];
	uint4 *sq = smem;                             // heads * 32 uint4
	float *sw = (float *)(smem + heads * 32);     // heads floats

	// Find this block's key set (sets are few; a linear scan is cheapest).
	unsigned int si = 0;
	while (si + 1 < nsets && blockIdx.x >= sets[si + 1].tile_first)
		si++;
	const KeySet ks = sets[si];
	const unsigned int tile = blockIdx.x - ks.tile_first;
	const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const unsigned int g = lane >> 2, c = lane & 3;
	const unsigned int base = tile * TILE + warp * CHUNKS_PER_WARP;

	// A fragments for 2 M-tiles x 8 k-steps, decoded once and reused for every query.
	unsigned int a[2][8][4];
	float sc[2][2];
#pragma unroll
	for (int mt = 0; mt < 2; mt++) {
#pragma unroll
		for (int half = 0; half < 2; half++) {
			const unsigned int row = base + mt * 16 + half * 8 + g;
			uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
			float s = 0.f;
			if (row < ks.n) {
				const uint4 *p = (const uint4 *)(ks.codes + (size_t)row * 128 + c * 32);
				lo = __ldg(p);
				hi = __ldg(p + 1);
				s = __ldg(ks.scales + row);
			}
			sc[mt][half] = s;
			const unsigned int words[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
			for (int kk = 0; kk < 8; kk++) {
				a[mt][kk][half] = fp8x2_to_f16x2(words[kk]);           // dims 4kk+{0,1}
				a[mt][kk][2 + half] = fp8x2_to_f16x2(words[kk] >> 16); // dims 4kk+{2,3}
			}
		}
	}

	const unsigned int ntiles = heads >> 3;
	const unsigned int qwords = heads * 32; // uint4 per query
	for (unsigned int qi = 0; qi < ks.q_count; qi++) {
		const unsigned int q = ks.q_first + qi;
		__syncthreads(); // the previous query's fragments are no longer read
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
					part[mt][0] += w0 * fmaxf(sc[mt][0] * acc[mt][0], 0.f) + w1 * fmaxf(sc[mt][0] * acc[mt][1], 0.f);
					part[mt][1] += w0 * fmaxf(sc[mt][1] * acc[mt][2], 0.f) + w1 * fmaxf(sc[mt][1] * acc[mt][3], 0.f);
				} else {
					part[mt][0] += w0 * fmaxf(acc[mt][0], 0.f) + w1 * fmaxf(acc[mt][1], 0.f);
					part[mt][1] += w0 * fmaxf(acc[mt][2], 0.f) + w1 * fmaxf(acc[mt][3], 0.f);
				}
			}
		}
		float *out = ks.out + (size_t)qi * ks.n;
#pragma unroll
		for (int mt = 0; mt < 2; mt++) {
#pragma unroll
			for (int half = 0; half < 2; half++) {
				float v = part[mt][half];
				v += __shfl_xor_sync(0xffffffffu, v, 1);
				v += __shfl_xor_sync(0xffffffffu, v, 2);
				const unsigned int row = base + mt * 16 + half * 8 + g;
				if (c == 0 && row < ks.n)
					out[row] = mode == 0 ? v : v * sc[mt][half];
			}
		}
	}
}
