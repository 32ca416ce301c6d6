// proj.cu — the Memory Indexer's query projections on the GPU: Y[b][r] = Σ_c W[r][c]·X[b][c]
// for a batch of up to 8 vectors per launch (the host loops over larger batches). The
// products are memory-bound (the published wq_b alone is 128 MB of float32), so each
// warp streams one weight row once for every vector of the batch, 16 bytes per lane per
// load, and accumulates in double as the CPU reference does (attn.matMul), so the result
// differs from it only by summation order.
//
// W is row-major float32 (fm_proj_f32) or bf16 bits (fm_proj_bf16); X is [nb][cols]
// float32, Y [nb][rows]. cols must be a multiple of 8 (the host checks).
//
// PTX committed beside this file was built on the GPU machine by scripts/build-ptx.sh:
//   nvcc -ptx -arch=compute_80 -O3 -o proj_sm80.ptx proj.cu
//   nvcc -ptx -arch=compute_90 -O3 -o proj_sm90.ptx proj.cu

#define PROJ_NB 8

__device__ __forceinline__ float bf16_to_f32(unsigned short h)
{
	return __uint_as_float(((unsigned int)h) << 16);
}

template <bool BF16>
__device__ __forceinline__ void proj_body(const void *__restrict__ Wv, const float *__restrict__ X,
					  float *__restrict__ Y, int rows, int cols, int nb)
{
	const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
	const int lane = threadIdx.x & 31;
	const int nwarps = (gridDim.x * blockDim.x) >> 5;
	for (int r = warp; r < rows; r += nwarps) {
		double acc[PROJ_NB];
#pragma unroll
		for (int b = 0; b < PROJ_NB; b++)
			acc[b] = 0;
		for (int c = lane * 8; c < cols; c += 32 * 8) {
			float w[8];
			if (BF16) {
				const uint4 u = *(const uint4 *)((const unsigned short *)Wv + (size_t)r * cols + c);
				const unsigned int p[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
				for (int i = 0; i < 4; i++) {
					w[2 * i] = bf16_to_f32((unsigned short)(p[i] & 0xffff));
					w[2 * i + 1] = bf16_to_f32((unsigned short)(p[i] >> 16));
				}
			} else {
				const float4 a = *(const float4 *)((const float *)Wv + (size_t)r * cols + c);
				const float4 b4 = *(const float4 *)((const float *)Wv + (size_t)r * cols + c + 4);
				w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w;
				w[4] = b4.x, w[5] = b4.y, w[6] = b4.z, w[7] = b4.w;
			}
#pragma unroll
			for (int b = 0; b < PROJ_NB; b++) {
				if (b < nb) {
					const float4 x0 = *(const float4 *)(X + (size_t)b * cols + c);
					const float4 x1 = *(const float4 *)(X + (size_t)b * cols + c + 4);
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
			if (lane == 0 && b < nb)
				Y[(size_t)b * rows + r] = (float)v;
		}
	}
}

extern "C" __global__ void __launch_bounds__(256) fm_proj_f32(const float *__restrict__ W, const float *__restrict__ X,
							      float *__restrict__ Y, int rows, int cols, int nb)
{
	proj_body<false>(W, X, Y, rows, cols, nb);
}

extern "C" __global__ void __launch_bounds__(256) fm_proj_bf16(const unsigned short *__restrict__ W, const float *__restrict__ X,
							       float *__restrict__ Y, int rows, int cols, int nb)
{
	proj_body<true>(W, X, Y, rows, cols, nb);
}
