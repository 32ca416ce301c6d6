#!/usr/bin/env python3
"""PyTorch baselines for the GPU benchmarks (run by scripts/gpu-test.sh on the GPU machine).

Recall: one pinned copy per page into a 64 MiB GPU reserve, pages drawn at random from a
4 GiB pinned mirror (fresh pages every repetition), against one contiguous 64 MiB copy;
and the DeepSeek-V4 layout (a page = 21 rows of 37,440 B into 21 layer buffers).
Scorer: the published reference's math, fp32 einsum("bhd,nd->bnh") + ReLU + weighted sum
over heads, with keys already dequantised ("einsum") and with the fp8 dequantisation
included ("einsum+dequant").
Timing: CUDA events, median of 20 (recall) / 50 (scorer) after warm-up.
Writes JSON to argv[1].
"""
import json
import statistics
import sys

import torch

dev = torch.device("cuda")


def timed(fn, reps, warm=3):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for i in range(-warm, reps):
        s.record()
        fn(max(i, 0))
        e.record()
        e.synchronize()
        if i >= 0:
            out.append(s.elapsed_time(e))
    return statistics.median(out)


def recall():
    total, mirror_bytes, reps = 64 << 20, 4 << 30, 20
    g = torch.Generator().manual_seed(1)
    mirror = torch.empty(mirror_bytes, dtype=torch.uint8, pin_memory=True)
    mirror[: 64 << 20].copy_(torch.randint(0, 256, (64 << 20,), dtype=torch.uint8, generator=g))
    for off in range(64 << 20, mirror_bytes, 64 << 20):
        mirror[off: off + (64 << 20)].copy_(mirror[: 64 << 20])
    reserve = torch.empty(total, dtype=torch.uint8, device=dev)
    for off in range(0, mirror_bytes, total):  # first DMA touch of every page, as the Go bench
        reserve.copy_(mirror[off:off + total], non_blocking=True)
    torch.cuda.synchronize()
    rows = []

    def add(case, method, nbytes, nrows, ms):
        rows.append(dict(case=case, method=method, bytes=nbytes, rows=nrows, median_ms=ms, gbps=nbytes / ms / 1e6))

    ms = timed(lambda i: reserve.copy_(mirror[(i % 48) << 26: ((i % 48) << 26) + total], non_blocking=True), reps)
    add("contiguous 64 MiB", "torch pinned copy", total, 1, ms)
    for page in (64 << 10, 256 << 10, 1 << 20):
        n = total // page
        sets = [torch.randperm(mirror_bytes // page, generator=g)[:n].tolist() for _ in range(reps)]

        def run(i):
            for j, p in enumerate(sets[i]):
                reserve[j * page:(j + 1) * page].copy_(mirror[p * page:(p + 1) * page], non_blocking=True)

        add(f"{page >> 10} KiB pages", "torch copy per page", total, n, timed(run, reps))
    layers, row = 21, 37440
    page = layers * row
    npages = total // page
    bufs = [torch.empty(npages * row, dtype=torch.uint8, device=dev) for _ in range(layers)]
    sets = [torch.randperm(mirror_bytes // page, generator=g)[:npages].tolist() for _ in range(reps)]

    def run_ds(i):
        for slot, p in enumerate(sets[i]):
            for l in range(layers):
                src = p * page + l * row
                bufs[l][slot * row:(slot + 1) * row].copy_(mirror[src:src + row], non_blocking=True)

    add("DeepSeek-V4 21x37440 B", "torch copy per row", npages * page, npages * layers, timed(run_ds, reps))
    ms = timed(lambda i: reserve[: npages * page].copy_(mirror[: npages * page], non_blocking=True), reps)
    add("DeepSeek-V4 21x37440 B", "torch contiguous same bytes", npages * page, 1, ms)
    return rows


def scorer():
    rows = []
    H, D = 128, 128
    g = torch.Generator(device=dev).manual_seed(2)
    for n in (131072, 262144):
        k8 = (torch.randn(n, D, device=dev, generator=g) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
        kscale = torch.rand(n, device=dev, generator=g) * 0.05
        kf = k8.float() * kscale[:, None]
        for b in (1, 8):
            q = torch.randn(b, H, D, device=dev, generator=g)
            w = torch.randn(b, H, device=dev, generator=g)

            def einsum(_):
                s = torch.einsum("bhd,nd->bnh", q, kf).relu_()
                return (s * w[:, None, :]).sum(-1)

            def einsum_dq(_):
                k = k8.float() * kscale[:, None]
                s = torch.einsum("bhd,nd->bnh", q, k).relu_()
                return (s * w[:, None, :]).sum(-1)

            for name, fn in (("einsum", einsum), ("einsum+dequant", einsum_dq)):
                rows.append(dict(chunks=n, batch=b, method=name, median_ms=timed(fn, 50, warm=5)))
    return rows


if __name__ == "__main__":
    res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
               allow_tf32=torch.backends.cuda.matmul.allow_tf32,
               recall=recall(), scorer=scorer())
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=1)
    for r in res["recall"]:
        print(f"torch {r['case']:<28} {r['method']:<28} {r['median_ms']:9.3f} ms {r['gbps']:7.1f} GB/s")
    for r in res["scorer"]:
        print(f"torch scorer {r['chunks']:>7} B={r['batch']} {r['method']:<15} {r['median_ms']:8.4f} ms")
