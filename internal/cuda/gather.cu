// gather.cu — one launch copies many scattered rows (page recall host mirror -> reserve,
// and the reverse for committed decode chunks). Each block takes one descriptor at a time;
// the host splits long rows into equal pieces so that a recall of a few large pages still
// fills every SM. Rows whose src, dst and len are all 16-byte aligned move as 16-byte
// vectors with U loads in flight per thread before the first store (reads of mapped pinned
// host memory cross PCIe, so many outstanding requests are what reaches the link's rate);
// any other row falls back to a byte loop in the same launch.
//
// PTX committed beside this file was built on the GPU machine by scripts/build-ptx.sh:
//   nvcc -ptx -arch=compute_80 -O3 -o gather_sm80.ptx gather.cu
//   nvcc -ptx -arch=compute_90 -O3 -o gather_sm90.ptx gather.cu

struct CopyDesc {
	const unsigned char *src;
	unsigned char *dst;
	unsigned long long len;
};

template <int U>
__device__ __forceinline__ void gather_body(const CopyDesc *__restrict__ descs, unsigned int n)
{
	for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
		const CopyDesc c = descs[i];
		if ((((unsigned long long)c.src | (unsigned long long)c.dst | c.len) & 15ull) == 0) {
			const uint4 *__restrict__ s = (const uint4 *)c.src;
			uint4 *__restrict__ d = (uint4 *)c.dst;
			// Pieces are far below 64 GiB, so 32-bit vector indices suffice (fewer registers).
			const unsigned int nv = (unsigned int)(c.len >> 4);
			const unsigned int step = blockDim.x;
			unsigned int j = threadIdx.x;
			for (; j + (U - 1) * step < nv; j += U * step) {
				uint4 r[U];
#pragma unroll
				for (int u = 0; u < U; u++)
					r[u] = s[j + u * step];
#pragma unroll
				for (int u = 0; u < U; u++)
					d[j + u * step] = r[u];
			}
			// Tail: fewer than U vectors per thread remain; issue them all before storing.
			uint4 r[U];
#pragma unroll
			for (int u = 0; u < U; u++)
				if (j + u * step < nv)
					r[u] = s[j + u * step];
#pragma unroll
			for (int u = 0; u < U; u++)
				if (j + u * step < nv)
					d[j + u * step] = r[u];
		} else {
			for (unsigned long long j = threadIdx.x; j < c.len; j += blockDim.x)
				c.dst[j] = c.src[j];
		}
	}
}

extern "C" __global__ void __launch_bounds__(512) fm_gather(const CopyDesc *__restrict__ descs, unsigned int n)
{
	gather_body<4>(descs, n);
}

extern "C" __global__ void __launch_bounds__(512) fm_gather8(const CopyDesc *__restrict__ descs, unsigned int n)
{
	gather_body<8>(descs, n);
}
