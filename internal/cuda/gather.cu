// gather.cu — one launch copies many scattered rows (page recall host mirror -> reserve,
// and the reverse for committed decode chunks). Each block takes one descriptor at a time;
// the host splits long rows into pieces so that a recall of a few large pages still fills
// every SM. Rows whose src, dst and len are all 16-byte aligned move as 16-byte vectors with
// four loads in flight per thread before the first store (reads of mapped pinned host
// memory cross PCIe, so many outstanding requests are what reaches the link's rate); any
// other row falls back to a byte loop in the same launch.
//
// PTX committed beside this file was built on the GPU machine by scripts/build-ptx.sh:
//   nvcc -ptx -arch=compute_80 -O3 -o gather_sm80.ptx gather.cu
//   nvcc -ptx -arch=compute_90 -O3 -o gather_sm90.ptx gather.cu

struct CopyDesc {
	const unsigned char *src;
	unsigned char *dst;
	unsigned long long len;
};

extern "C" __global__ void __launch_bounds__(256)
fm_gather(const CopyDesc *__restrict__ descs, unsigned int n)
{
	for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
		const CopyDesc c = descs[i];
		if ((((unsigned long long)c.src | (unsigned long long)c.dst | c.len) & 15ull) == 0) {
			const uint4 *__restrict__ s = (const uint4 *)c.src;
			uint4 *__restrict__ d = (uint4 *)c.dst;
			const unsigned long long nv = c.len >> 4;
			const unsigned long long step = blockDim.x;
			unsigned long long j = threadIdx.x;
			for (; j + 3 * step < nv; j += 4 * step) {
				uint4 a = s[j];
				uint4 b = s[j + step];
				uint4 e = s[j + 2 * step];
				uint4 f = s[j + 3 * step];
				d[j] = a;
				d[j + step] = b;
				d[j + 2 * step] = e;
				d[j + 3 * step] = f;
			}
			for (; j < nv; j += step)
				d[j] = s[j];
		} else {
			for (unsigned long long j = threadIdx.x; j < c.len; j += blockDim.x)
				c.dst[j] = c.src[j];
		}
	}
}
