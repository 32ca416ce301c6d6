#!/usr/bin/env python3
"""PyTorch baselines for the GPU benchmarks (run by scripts/gpu-test.sh on the GPU machine).

Recall: one pinned copy per page into a 64 MiB GPU reserve, pages drawn at random from a
4 GiB pinned mirror (fresh pages every repetition), against one contiguous 64 MiB copy;
and the DeepSeek-V4 layout (a page = 21 rows of 37,440 B into 21 layer buffers).
Scorer: the published reference's math, fp32 einsum("bhd,nd->bnh") + ReLU + weighted sum
over heads, with keys already dequantised ("einsum") and with the fp8 dequantisation
included ("einsum+dequant").
Forward: the whole published Memory-Indexer cycle, written from ../shared/LSA.md (bf16
projections as the BF16 checkpoint runs them, RMSNorm, YaRN RoPE in float32, Hadamard,
head weights, fp32 einsum scoring, max ensemble of sigmoid scores over the 3 target layers,
threshold, page scores, forced sink/tail pages, top-KMAX), called once per request and
target layer as the published offline scorer does, at the published size (hidden 4096,
rank 2048, 128 heads) with 131,072 and 262,144 chunks, 1 / 8 / 16 requests per batch.
Timing: CUDA events, median of 20 (recall) / 50 (scorer) / 10 (forward) after warm-up.
Writes JSON to argv[1]; `forward` alone (argv[2]) runs only the forward benchmark.
"""
import math
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


HIDDEN, RANK, HEADS, HD, ROPE = 4096, 2048, 128, 128, 64


def yarn_freqs(d=ROPE, base=160000.0, factor=16.0, l0=65536, beta_fast=32.0, beta_slow=1.0):
    """g_i of LSA.md in float32, each step rounded, in the prescribed order."""
    def corr(n):
        return d * math.log(l0 / (2 * math.pi * n)) / (2 * math.log(base))
    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), d // 2 - 1)
    i = torch.arange(d // 2, dtype=torch.float32)
    f = 1.0 / torch.pow(torch.tensor(base, dtype=torch.float32), (2 * i) / d)
    ramp = ((i - low) / max(high - low, 1)).clamp(0, 1)
    return (f * (1 - ramp) + (f / factor) * ramp).to(dev)


def hadamard_matrix(n=HD):
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(dev)


class Layer:
    def __init__(self, g):
        def w(*shape, s):
            return (torch.randn(*shape, device=dev, generator=g) * s).to(torch.bfloat16)
        self.wq_a = w(RANK, HIDDEN, s=HIDDEN ** -0.5)
        self.wq_b = w(HEADS * HD, RANK, s=RANK ** -0.5)
        self.q_norm = (1 + 0.1 * torch.randn(RANK, device=dev, generator=g)).to(torch.bfloat16)
        self.wp = w(HEADS, HIDDEN, s=HIDDEN ** -0.5)


def layer_logits(x, pos, layer, k, freqs, had):
    """One request, one target layer: LSA.md's scorer, float path."""
    qr = torch.nn.functional.linear(x, layer.wq_a).float()
    qr = qr * torch.rsqrt(qr.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.q_norm.float()
    q = torch.nn.functional.linear(qr.to(torch.bfloat16), layer.wq_b).view(HEADS, HD)
    rot = q[:, HD - ROPE:].float().view(HEADS, ROPE // 2, 2)
    ang = torch.tensor(float(pos), dtype=torch.float32, device=dev) * freqs
    c, s = torch.cos(ang), torch.sin(ang)
    re = rot[..., 0] * c - rot[..., 1] * s
    im = rot[..., 0] * s + rot[..., 1] * c
    q = torch.cat([q[:, :HD - ROPE], torch.stack([re, im], -1).view(HEADS, ROPE).to(torch.bfloat16)], 1).float()
    q = q @ had
    w = torch.nn.functional.linear(x, layer.wp).float() * (HD ** -0.5) * (HEADS ** -0.5)
    s_ = torch.einsum("hd,nd->nh", q, k).relu_()
    return (s_ * w).sum(-1)


def select(logits_per_layer, n, cpp=64, first_keep=128, last_keep=2048, ratio=3 / 32):
    score = torch.stack(logits_per_layer).sigmoid().amax(0)
    pages = n // cpp
    ps = (score > 0.5).view(pages, cpp).sum(1).float()
    ps[: (first_keep + cpp - 1) // cpp] = float("inf")
    ps[(n - last_keep) // cpp:] = float("inf")
    kmax = math.ceil(ratio * pages)
    return torch.topk(ps, kmax).indices, int((score > 0.5).sum())


def forward():
    g = torch.Generator(device=dev).manual_seed(4)
    layers = [Layer(g) for _ in range(3)]
    freqs, had = yarn_freqs(), hadamard_matrix()
    rows = []
    for n in (131072, 262144):
        keys = []
        for _ in layers:
            k8 = (torch.randn(n, HD, device=dev, generator=g) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
            ks = torch.rand(n, device=dev, generator=g) * 0.05
            keys.append((k8, ks))
        for b in (1, 8, 16):
            xs = [[torch.randn(HIDDEN, device=dev, generator=g).to(torch.bfloat16) for _ in layers] for _ in range(b)]

            def run(_):
                out = []
                for r in range(b):
                    lg = [layer_logits(xs[r][l], 4 * n, layers[l], keys[l][0].float() * keys[l][1][:, None], freqs, had)
                          for l in range(len(layers))]
                    out.append(select(lg, n))
                return out

            rows.append(dict(chunks=n, requests=b, method="published forward per request and layer", median_ms=timed(run, 10, warm=2)))
            print(f"torch forward {n:>7} chunks {b:>2} requests {rows[-1]['median_ms']:9.2f} ms", flush=True)
    return rows


if __name__ == "__main__":
    only_forward = len(sys.argv) > 2 and sys.argv[2] == "forward"
    res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
               allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    if not only_forward:
        res["recall"], res["scorer"] = recall(), scorer()
    res["forward"] = forward()
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=1)
    for r in res.get("recall", []):
        print(f"torch {r['case']:<28} {r['method']:<28} {r['median_ms']:9.3f} ms {r['gbps']:7.1f} GB/s")
    for r in res.get("scorer", []):
        print(f"torch scorer {r['chunks']:>7} B={r['batch']} {r['method']:<15} {r['median_ms']:8.4f} ms")
