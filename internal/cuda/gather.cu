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

// ld16 reads 16 bytes; with P256 it asks L2 to fetch the whole 256-byte sector group, so
// reads of host memory leave the GPU as fewer, larger PCIe requests.
template <bool P256>
__device__ __forceinline__ uint4 ld16(const uint4 *p)
{
	if (!P256)
		return *p;
	uint4 r;
	asm volatile("ld.global.nc.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
		     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
		     : "l"(p));
	return r;
}

template <int U, bool P256>
__device__ __forceinline__ void gather_body(const CopyDesc *__restrict__ descs, unsigned int n)
{
	for (unsigned int i = blockIdx.x; i < n; i += gridDim.x) {
		const CopyDesc c = descs[i];
		if ((((unsigned long long)c.src | (unsigned long long)c.dst | c.len) & 15ull) == 0) {
			const uint4 *__restrict__ s = (const uint4 *)c.src;
			uint4 *__restrict__ d = (uint4 *)c.dst;
			// Threads walk positions q of a grid aligned to the source's 128-byte lines
			// (vector q-o is the row's vector), so each warp's 512 bytes cover exactly four
			// whole lines even when rows start mid-line (DeepSeek-V4's 37,440-byte rows):
			// fewer, fuller PCIe reads. Pieces are far below 64 GiB: 32-bit indices.
			const unsigned int o = (unsigned int)((unsigned long long)c.src >> 4) & 7;
			const unsigned int end = (unsigned int)(c.len >> 4) + o;
			const unsigned int step = blockDim.x;
			for (unsigned int p = threadIdx.x; p < end; p += U * step) {
				uint4 r[U];
#pragma unroll
				for (int u = 0; u < U; u++) {
					const unsigned int q = p + u * step;
					if (q >= o && q < end)
						r[u] = ld16<P256>(s + (q - o));
				}
#pragma unroll
				for (int u = 0; u < U; u++) {
					const unsigned int q = p + u * step;
					if (q >= o && q < end)
						d[q - o] = r[u];
				}
			}
		} else {
			for (unsigned long long j = threadIdx.x; j < c.len; j += blockDim.x)
				c.dst[j] = c.src[j];
		}
	}
}

extern "C" __global__ void __launch_bounds__(512) fm_gather(const CopyDesc *__restrict__ descs, unsigned int n)
{
	gather_body<4, false>(descs, n);
}

extern "C" __global__ void __launch_bounds__(512) fm_gather8(const CopyDesc *__restrict__ descs, unsigned int n)
{
	gather_body<8, false>(descs, n);
}

extern "C" __global__ void __launch_bounds__(512) fm_gather_p256(const CopyDesc *__restrict__ descs, unsigned int n)
{
	gather_body<4, true>(descs, n);
}

// Hopper bulk-copy helpers (mbarrier completion of cp.async.bulk loads) for fm_gather_bulk.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void mbar_init(unsigned int bar, unsigned int count)
{
	asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(unsigned int bar, unsigned int bytes)
{
	asm volatile("{\n\t.reg .b64 st;\n\tmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n\t}" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_wait(unsigned int bar, unsigned int parity)
{
	unsigned int done = 0;
	while (!done)
		asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
			     : "=r"(done)
			     : "r"(bar), "r"(parity)
			     : "memory");
}
#endif

// fm_gather_bulk moves rows with Hopper's bulk-copy engine instead of SM loads: lane 0 of
// each warp (blockDim.x/32 warps, at most 8) runs one pipeline that streams chunks of its
// descriptors global -> shared (completion on an mbarrier) -> global, `stages` chunks of
// `chunk` bytes in flight. Before a stage takes its next load, only the store that last read
// it must have finished reading shared memory (cp.async.bulk.wait_group.read N with N the
// stores committed after it), not every store in flight. Worker g = blockIdx.x * warps +
// warp takes pieces g, g + workers, ...; each warp owns stages chunks of the dynamic shared
// memory. Only for sm_90 and all rows 16-byte aligned in address and length (the host
// checks); elsewhere it does nothing.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void bulk_wait_read(unsigned int pending)
{
	switch (pending) {
	case 0: asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); break;
	case 1: asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory"); break;
	case 2: asm volatile("cp.async.bulk.wait_group.read 2;" ::: "memory"); break;
	case 3: asm volatile("cp.async.bulk.wait_group.read 3;" ::: "memory"); break;
	case 4: asm volatile("cp.async.bulk.wait_group.read 4;" ::: "memory"); break;
	case 5: asm volatile("cp.async.bulk.wait_group.read 5;" ::: "memory"); break;
	case 6: asm volatile("cp.async.bulk.wait_group.read 6;" ::: "memory"); break;
	default: asm volatile("cp.async.bulk.wait_group.read 7;" ::: "memory"); break;
	}
}
#endif

extern "C" __global__ void __launch_bounds__(256) fm_gather_bulk(const CopyDesc *__restrict__ descs, unsigned int n,
								 unsigned int chunk, unsigned int stages)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	extern __shared__ __align__(128) unsigned char sbuf[];
	__shared__ __align__(8) unsigned long long bars[64];
	const unsigned int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
	if ((threadIdx.x & 31) != 0 || stages == 0 || stages > 8 || warps > 8)
		return;
	const unsigned int sbase = (unsigned int)__cvta_generic_to_shared(sbuf) + warp * stages * chunk;
	const unsigned int bbase = (unsigned int)__cvta_generic_to_shared(bars) + 64 * warp;
	for (unsigned int s = 0; s < stages; s++)
		mbar_init(bbase + 8 * s, 1);
	asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
	asm volatile("fence.proxy.async.shared::cta;" ::: "memory");

	const unsigned int workers = gridDim.x * warps;
	unsigned char *pdst[8];
	unsigned int plen[8];
	unsigned int phase = 0;
	unsigned long long issued = 0, stored = 0, loff = 0;
	unsigned int li = blockIdx.x * warps + warp;
	bool have = li < n;
	CopyDesc cur;
	if (have)
		cur = descs[li];
	for (;;) {
		while (have && issued - stored < stages) {
			const unsigned int s = (unsigned int)(issued % stages);
			// A chunk that starts mid-128-byte line in the mirror ends on the next line
			// boundary, so the chunks after it read whole lines (DeepSeek-V4 pieces start
			// mid-line; the first sweep read them at 0.70-0.75x with unaligned chunks).
			const unsigned int mis = (unsigned int)((unsigned long long)(cur.src + loff) & 127);
			const unsigned int len = (unsigned int)min((unsigned long long)(chunk - mis), cur.len - loff);
			if (issued >= stages) // store number issued-stages read this stage last
				bulk_wait_read((unsigned int)(stored - 1 - (issued - stages)));
			mbar_expect_tx(bbase + 8 * s, len);
			asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
				     ::"r"(sbase + s * chunk), "l"(cur.src + loff), "r"(len), "r"(bbase + 8 * s)
				     : "memory");
			pdst[s] = cur.dst + loff;
			plen[s] = len;
			issued++;
			loff += len;
			if (loff >= cur.len) {
				li += workers;
				loff = 0;
				have = li < n;
				if (have)
					cur = descs[li];
			}
		}
		if (stored == issued)
			break;
		const unsigned int s = (unsigned int)(stored % stages);
		mbar_wait(bbase + 8 * s, (phase >> s) & 1);
		phase ^= 1u << s;
		asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;"
			     ::"l"(pdst[s]), "r"(sbase + s * chunk), "r"(plen[s])
			     : "memory");
		asm volatile("cp.async.bulk.commit_group;" ::: "memory");
		stored++;
	}
	asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}
