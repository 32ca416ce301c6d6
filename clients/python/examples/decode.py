#!/usr/bin/env python3
"""Reference decoder: a PyTorch decode loop that attends over the pages flashmemd keeps
resident, read straight from the session's reserve (GPU memory on a GPU host, a memfd
otherwise).

What it does, per docs/integration.md:
  1. OPEN a session with the DeepSeek-V4 page layout and map the reserve
     (flashmem.torch.ReserveTensors: a CUDA VMM fd is imported on the daemon's GPU). Per
     layer a page is a 37,440-byte row in the byte format of SGLang's DeepSeek-V4 KV pool
     (DeepSeekV4SingleKVPool, fp8_ds_mla: 584 bytes per token, the page padded to a multiple
     of 576): 64 x 576 bytes of data -- 448 fp8 e4m3 NoPE values then 64 bf16 RoPE values per
     entry -- then 64 x 8 bytes of scales -- 7 UE8M0 exponents, one per 64 NoPE values, and
     one pad byte. One chunk is one compressed KV entry.
  2. Prefill: synthetic KV for the prompt's chunks, kept in the decoder's own copy (a
     [layers, pages, row] tensor) and sent with APPEND through the staging region, with index
     keys for the target layers.
  3. Decode, one CYCLE per tau = 64 steps: the reply's page table plus tail allocation give
     the slots to read; every step gathers K/V of those pages from the reserve (one
     index_select over all layers), dequantises to 512-dim vectors, runs single-latent
     attention (K = V, as in MLA's absorbed form) for all layers in one batched matmul,
     and writes the step's new chunk into its tail cell (reserve and own copy); after tau
     steps it COMMITs the chunks with their keys and RELEASEs the lease.
  4. Checks, every step: the bytes gathered from the reserve equal the same pages gathered
     from its own copy (bit-exact), and so does the attention output. Reports the timed
     decode step (gather + attention + tail write) against attention over the full KV.

Without torch it runs a pure-Python check of the same protocol flow in a small shape
(--pure forces it): gathers through the mmap'd host reserve compared byte for byte with its
own copy, and attention in Python floats at a few steps.

Usage:
  decode.py --socket S [--device N|host|any] [--tokens 131072] [--steps 1000] [--layers 21]
            [--heads 64] [--kmax 64] [--json FILE]
  decode.py --socket S --small          CI's CPU shape (host reserve, 2 layers, 128 steps)
"""
import argparse
import ctypes
import json
import math
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import flashmem  # noqa: E402

ROW, DATA, SCALES, CPP, TAU = 37440, 576, 8, 64, 64
NOPE, ROPE, BLOCK = 448, 64, 64  # fp8 NoPE values, bf16 RoPE values, NoPE values per scale
DIM = NOPE + ROPE  # 512: the attended vector
SEG1 = CPP * DATA  # where the scales start in a row


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", default=None)
    p.add_argument("--device", default="any", help="GPU ordinal, 'host' (memfd reserve) or 'any'")
    p.add_argument("--tokens", type=int, default=131072, help="prompt tokens (session length)")
    p.add_argument("--tokens-per-chunk", type=int, default=4, help="tokens per compressed KV entry")
    p.add_argument("--steps", type=int, default=1000, help="decode steps (one chunk each)")
    p.add_argument("--layers", type=int, default=21)
    p.add_argument("--heads", type=int, default=64)
    p.add_argument("--kmax", type=int, default=64, help="page budget per cycle")
    p.add_argument("--first-keep", type=int, default=128)
    p.add_argument("--last-keep", type=int, default=2048)
    p.add_argument("--slots", type=int, default=0, help="reserve slots (0: from kmax and keeps)")
    p.add_argument("--model", default="")
    p.add_argument("--full-every", type=int, default=16, help="time full attention every N steps")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None, help="write the result here too")
    p.add_argument("--small", action="store_true", help="CI shape: host reserve, 2 layers, 8,192 tokens, 128 steps")
    p.add_argument("--pure", action="store_true", help="the pure-Python check even if torch is present")
    p.add_argument("--require-cuda", action="store_true", help="fail unless the daemon serves a CUDA reserve")
    p.add_argument("--page-major", action="store_true", help="ask for a page-major reserve (a slot holds a page)")
    a = p.parse_args()
    if a.small:
        a.device, a.layers, a.tokens, a.steps, a.heads, a.kmax = "host", 2, 8192, 128, 4, 8
        a.first_keep, a.last_keep, a.full_every = 64, 256, 8
    return a


def model_info(c, name):
    m = c.models()
    want = name or m.get("default_model")
    for x in m["models"]:
        if x["name"] == want:
            return x
    raise SystemExit("model %r not in the daemon's MODELS: %s" % (want, [x["name"] for x in m["models"]]))


def device_arg(d):
    return {"any": flashmem.DEVICE_ANY, "host": flashmem.DEVICE_HOST_ONLY}.get(d) if d in ("any", "host") else int(d)


def slots_for(a):
    if a.slots:
        return a.slots
    forced = (a.first_keep + CPP - 1) // CPP + (a.last_keep + CPP - 1) // CPP + 2
    # The lease of the page table being read and the next selection's recall overlap.
    return 2 * (a.kmax + forced) + 2 * (TAU // CPP + 2)


# ---------------------------------------------------------------------------------------
# PyTorch decoder
# ---------------------------------------------------------------------------------------
def torch_main(a, torch):
    from flashmem.torch import ReserveTensors

    def tbytes(t):
        t = t.contiguous().cpu()
        return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())

    c = flashmem.connect(a.socket, client_name="decode.py")
    mi = model_info(c, a.model)
    qbytes = mi["query_bytes"] or 8192
    lay = flashmem.Layout(CPP, mi["key_bytes"], mi["target_layers"], TAU, slots_for(a),
                          [flashmem.LayerLayout(ROW, [DATA, SCALES]) for _ in range(a.layers)])
    pol = flashmem.Policy(first_keep=a.first_keep, last_keep=a.last_keep, kmax=a.kmax, fallback_ratio=1.0)
    sess = c.open(lay, model=a.model, device=device_arg(a.device), policy=pol, page_major=a.page_major)
    if a.require_cuda and sess.region.kind != flashmem.REGION_CUDA:
        raise SystemExit("the daemon served a host-memory reserve (kind %d), not GPU memory: is it the "
                         "cuda build, with [gpu] on, on a host whose driver exports VMM handles?" % sess.region.kind)
    rt = ReserveTensors(sess)
    dev = rt.device
    R = rt.stacked()  # [layers, slots, row]: a strided view of the whole reserve
    assert R is not None, "reserve layers are not evenly spaced"
    L = a.layers
    gen = torch.Generator(device=dev).manual_seed(a.seed)
    cgen = torch.Generator().manual_seed(a.seed + 1)
    prefill = a.tokens // a.tokens_per_chunk
    total = prefill + a.steps
    npages = (total + CPP - 1) // CPP
    own = torch.zeros(L, npages, ROW, dtype=torch.uint8, device=dev)

    def entries(*lead):
        """Synthetic KV entries in the pool's byte format: data uint8 [*lead, 576] and
        scales uint8 [*lead, 8]."""
        x = torch.randint(0, 256, (*lead, NOPE), dtype=torch.uint8, device=dev, generator=gen)
        x = torch.where((x & 0x7F) == 0x7F, torch.zeros_like(x), x)  # 0x7F/0xFF are NaN in e4m3
        rope = torch.randn((*lead, ROPE), device=dev, generator=gen).to(torch.bfloat16).view(torch.uint8)
        e = torch.randint(124, 131, (*lead, NOPE // BLOCK), dtype=torch.uint8, device=dev, generator=gen)
        pad = torch.zeros((*lead, SCALES - NOPE // BLOCK), dtype=torch.uint8, device=dev)
        return torch.cat([x, rope], dim=-1), torch.cat([e, pad], dim=-1)

    def keys(n):
        hd = lay.key_bytes - 4
        x = torch.randint(0, 256, (lay.target_layers * n, hd), dtype=torch.uint8, generator=cgen)
        x = torch.where((x & 0x7F) == 0x7F, torch.zeros_like(x), x)
        s = (0.5 + torch.rand(lay.target_layers * n, 1, generator=cgen)).to(torch.float32).view(torch.uint8)
        return tbytes(torch.cat([x, s], dim=1))

    def queries():
        return [tbytes(torch.randn(qbytes // 2, generator=cgen).to(torch.bfloat16).view(torch.uint8))
                for _ in range(lay.target_layers)]

    # --- prefill: own copy, then APPEND through the staging region ----------------------
    t0 = time.perf_counter()
    staging = torch.frombuffer(c.staging, dtype=torch.uint8)
    page_payload = L * CPP * (DATA + SCALES)
    batch = max(1, min(64, len(c.staging) // page_payload))
    for p0 in range(0, (prefill + CPP - 1) // CPP, batch):
        p1 = min(p0 + batch, (prefill + CPP - 1) // CPP)
        n = min(p1 * CPP, prefill) - p0 * CPP
        d, sc = entries(L, p1 - p0, CPP)
        own[:, p0:p1, :SEG1] = d.view(L, p1 - p0, SEG1)
        own[:, p0:p1, SEG1:SEG1 + CPP * SCALES] = sc.view(L, p1 - p0, CPP * SCALES)
        k = n - (p1 - 1 - p0) * CPP  # chunks in the batch's last page
        if k < CPP:  # a partial last page: cells past the prompt stay zero until decode fills them
            own[:, p1 - 1, k * DATA:SEG1] = 0
            own[:, p1 - 1, SEG1 + k * SCALES:] = 0
        # APPEND layout: layer-major, then segment-major, then chunk (docs/protocol.md 11).
        rows = own[:, p0:p1]
        seg0 = rows[:, :, :SEG1].reshape(L, -1)[:, :n * DATA]
        seg1 = rows[:, :, SEG1:SEG1 + CPP * SCALES].reshape(L, -1)[:, :n * SCALES]
        payload = torch.cat([seg0, seg1], dim=1).reshape(-1)
        staging[:payload.numel()].copy_(payload)
        sess.chunks = c.append(sess.id, p0 * CPP, n, keys(n), staging=(0, payload.numel()))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    prefill_s = time.perf_counter() - t0
    if os.environ.get("DECODE_CORRUPT_OWN"):  # the tests' proof that the check can fail
        own[0, 0, 5] ^= 1

    # --- decode ---------------------------------------------------------------------------
    scale_d = 1.0 / math.sqrt(DIM)
    cuda = dev.type == "cuda"
    if hasattr(torch, "float8_e4m3fn"):
        def dequant(cd):
            return cd.view(torch.float8_e4m3fn).to(torch.float32)
    else:  # torch < 2.1: the same values through a 256-entry table
        lut = torch.tensor(E4M3, dtype=torch.float32, device=dev)

        def dequant(cd):
            return lut[cd.long()]

    def attend(rows, valid, q):
        """rows: uint8 [L, P, ROW] gathered page rows; valid: bool [P*64]; q: bf16 [L, H, 512].
        Dequantise every entry to 512 dims (NoPE fp8 x 2^(e-127) per 64 values, RoPE bf16)
        and attend: K = V, invalid cells (past the session's chunks) masked out."""
        P = rows.shape[1]
        cd = rows[:, :, :SEG1].reshape(L, P * CPP, DATA)
        ex = rows[:, :, SEG1:SEG1 + CPP * SCALES].reshape(L, P * CPP, SCALES)[..., :NOPE // BLOCK]
        nope = dequant(cd[..., :NOPE].contiguous()).view(L, P * CPP, NOPE // BLOCK, BLOCK)
        nope = (nope * torch.exp2(ex.float() - 127).unsqueeze(-1)).view(L, P * CPP, NOPE)
        rope = cd[..., NOPE:].contiguous().view(torch.bfloat16).float()
        k = torch.cat([nope, rope], dim=-1)
        k = torch.where(valid.view(1, -1, 1), k, torch.zeros((), device=k.device)).to(torch.bfloat16)
        s = torch.bmm(q, k.transpose(1, 2)).float() * scale_d  # [L, H, N]
        s = s.masked_fill(~valid.view(1, 1, -1), float("-inf"))
        w = torch.softmax(s, dim=-1).to(torch.bfloat16)
        return torch.bmm(w, k)  # [L, H, 512]

    def timer():
        if cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def elapsed_ms(t_a, t_b):
        if cuda:
            t_b.synchronize()
            return t_a.elapsed_time(t_b)
        return (t_b - t_a) * 1e3

    step_ms, full_ms, attended, cycle_rtt, waits, scores, recalled = [], [], [], [], [], [], []
    checks = 0
    chunks = prefill
    step = 0
    arange = torch.arange(CPP, device=dev)
    while step < a.steps:
        tq = time.perf_counter()
        res = sess.cycle(queries(), step=step, position=chunks * a.tokens_per_chunk)
        cycle_rtt.append((time.perf_counter() - tq) * 1e6)
        if res.damaged:  # an engine re-prefills these pages; the reference decoder stops
            raise SystemExit("cycle at step %d: damaged pages %s" % (step, res.damaged))
        waits.append(res.wait_us)
        scores.append(res.score_us)
        recalled.append(res.recalled_pages)
        table = dict(res.pages)
        tail = dict(res.tail)
        for p, s in tail.items():  # one slot per page: a page in both has the same slot
            assert table.get(p, s) == s, "page %d in two slots" % p
        table.update(tail)
        pg = sorted(table)
        pages_t = torch.tensor(pg, dtype=torch.int64, device=dev)
        slots_t = torch.tensor([table[p] for p in pg], dtype=torch.int64, device=dev)
        gid = (pages_t.view(-1, 1) * CPP + arange.view(1, -1)).view(-1)  # chunk id of every cell
        n_cycle = min(TAU, a.steps - step)
        for i in range(n_cycle):
            q = torch.randn(L, a.heads, DIM, generator=gen, device=dev).to(torch.bfloat16)
            new_codes, new_scales = entries(L)
            valid = gid < chunks
            tp = chunks // CPP
            tc = chunks % CPP
            t_a = timer()
            rows = torch.index_select(R, 1, slots_t)  # the gather, straight from the reserve
            out = attend(rows, valid, q)
            slot = tail[tp]
            R[:, slot, tc * DATA:(tc + 1) * DATA] = new_codes  # the step's KV into its tail cell
            R[:, slot, SEG1 + tc * SCALES:SEG1 + (tc + 1) * SCALES] = new_scales
            t_b = timer()
            step_ms.append(elapsed_ms(t_a, t_b))
            attended.append(int(valid.sum()))
            # Check: the same pages from the decoder's own copy, bit for bit.
            rows_own = torch.index_select(own, 1, pages_t)
            vm = valid.view(len(pg), CPP)
            for name, lo, hi, w in (("data", 0, SEG1, DATA), ("scales", SEG1, SEG1 + CPP * SCALES, SCALES)):
                ra = rows[:, :, lo:hi].reshape(L, len(pg), CPP, w)[:, vm]
                rb = rows_own[:, :, lo:hi].reshape(L, len(pg), CPP, w)[:, vm]
                if not torch.equal(ra, rb):
                    raise SystemExit("step %d: %s gathered from the reserve differs from the own copy" % (step, name))
            if not torch.equal(out, attend(rows_own, valid, q)):
                raise SystemExit("step %d: attention over the reserve differs from the own copy's" % step)
            checks += 1
            own[:, tp, tc * DATA:(tc + 1) * DATA] = new_codes
            own[:, tp, SEG1 + tc * SCALES:SEG1 + (tc + 1) * SCALES] = new_scales
            if step % a.full_every == 0:  # attention over the full KV, for comparison
                allp = (chunks + CPP - 1) // CPP
                t_a = timer()
                full_rows = own[:, :allp]
                fvalid = torch.arange(allp * CPP, device=dev) < chunks
                attend(full_rows, fvalid, q)
                t_b = timer()
                full_ms.append(elapsed_ms(t_a, t_b))
            chunks += 1
            step += 1
        if cuda:  # the tail writes must have landed before the daemon copies the cells
            torch.cuda.synchronize(dev)
        sess.chunks = sess.commit(n_cycle, keys(n_cycle))
        assert sess.chunks == chunks, (sess.chunks, chunks)
        res.release()

    # Final check: after COMMIT the daemon holds the decode chunks too (a last cycle reads
    # every recent page back through the reserve).
    with sess.cycle(queries(), step=step, position=chunks * a.tokens_per_chunk) as res:
        pl = dict(res.pages)
        recent = [p for p in range(prefill // CPP, (chunks + CPP - 1) // CPP) if p in pl]
        for p in recent:
            n = min(CPP, chunks - p * CPP) * DATA
            if not torch.equal(R[:, pl[p], :n], own[:, p, :n]):
                raise SystemExit("committed page %d differs in the reserve" % p)
    rt.close()
    sess.close(delete=True)
    c.close()

    def med(x):
        return sorted(x)[len(x) // 2] if x else 0.0

    name = "cuda:%d (%s)" % (dev.index, torch.cuda.get_device_name(dev)) if cuda else "cpu"
    out = {
        "device": name, "torch": torch.__version__, "reserve_kind": sess.region.kind,
        "page_major": sess.region.strides is not None,
        "layers": L, "heads": a.heads, "prompt_tokens": a.tokens, "prompt_chunks": prefill,
        "decode_steps": step, "cycles": len(cycle_rtt), "checks_bit_exact": checks,
        "kmax_pages": a.kmax, "reserve_slots": lay.reserve_slots,
        "entries_attended_mean": sum(attended) / len(attended), "entries_full_final": chunks,
        "decode_step_ms_p50": med(step_ms), "decode_step_ms_mean": sum(step_ms) / len(step_ms),
        "full_attention_ms_p50": med(full_ms), "full_attention_ms_mean": sum(full_ms) / max(1, len(full_ms)),
        "speedup_p50": med(full_ms) / med(step_ms) if step_ms and full_ms else None,
        "cycle_rtt_us_p50": med(cycle_rtt), "cycle_wait_us_p50": med(waits), "cycle_score_us_p50": med(scores),
        "recalled_pages_mean": sum(recalled) / len(recalled), "prefill_s": prefill_s,
    }
    return out


# ---------------------------------------------------------------------------------------
# Pure-Python check (no torch)
# ---------------------------------------------------------------------------------------
def _e4m3(b):
    s, e, m = b >> 7, (b >> 3) & 0xF, b & 7
    if e == 15 and m == 7:
        return float("nan")
    v = (m / 8.0) * 2.0 ** -6 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7)
    return -v if s else v


E4M3 = [_e4m3(b) for b in range(256)]


def bf16_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


def pure_main(a):
    rng = random.Random(a.seed)
    L, prefill, steps = 2, 640, 128
    a.kmax, a.first_keep, a.last_keep = 4, 64, 128
    c = flashmem.connect(a.socket, client_name="decode.py-pure")
    mi = model_info(c, a.model)
    qbytes = mi["query_bytes"] or 8192
    lay = flashmem.Layout(CPP, mi["key_bytes"], mi["target_layers"], TAU, slots_for(a),
                          [flashmem.LayerLayout(ROW, [DATA, SCALES]) for _ in range(L)])
    pol = flashmem.Policy(first_keep=a.first_keep, last_keep=a.last_keep, kmax=a.kmax, fallback_ratio=1.0)
    sess = c.open(lay, model=a.model, device=flashmem.DEVICE_HOST_ONLY, policy=pol)
    npages = (prefill + steps + CPP - 1) // CPP
    own = [[bytearray(ROW) for _ in range(npages)] for _ in range(L)]

    def chunk_kv():
        codes = bytes(b if b & 0x7F != 0x7F else 0 for b in rng.randbytes(NOPE))
        rope = struct.pack("<%dH" % ROPE, *(bf16_bits(rng.gauss(0, 1)) for _ in range(ROPE)))
        return codes + rope, bytes(rng.randrange(124, 131) for _ in range(NOPE // BLOCK)) + b"\0"

    def put(rowbuf, ch, codes, sc):
        cc = ch % CPP
        rowbuf[cc * DATA:(cc + 1) * DATA] = codes
        rowbuf[SEG1 + cc * SCALES:SEG1 + (cc + 1) * SCALES] = sc

    def keys(n):
        out = bytearray()
        for _ in range(n * lay.target_layers):
            out += bytes(b if b & 0x7F != 0x7F else 0 for b in rng.randbytes(lay.key_bytes - 4))
            out += struct.pack("<f", 0.5 + rng.random())
        return bytes(out)

    def queries():
        return [struct.pack("<%dH" % (qbytes // 2), *(struct.unpack("<I", struct.pack("<f", rng.gauss(0, 1)))[0] >> 16
                                                      for _ in range(qbytes // 2))) for _ in range(lay.target_layers)]

    for ch in range(prefill):
        for ly in range(L):
            put(own[ly][ch // CPP], ch, *chunk_kv())
    for c0 in range(0, prefill, 256):
        n = min(256, prefill - c0)
        parts = []
        for ly in range(L):
            parts += [bytes(own[ly][(c0 + i) // CPP][((c0 + i) % CPP) * DATA:((c0 + i) % CPP + 1) * DATA]) for i in range(n)]
            parts += [bytes(own[ly][(c0 + i) // CPP][SEG1 + ((c0 + i) % CPP) * SCALES:SEG1 + ((c0 + i) % CPP + 1) * SCALES])
                      for i in range(n)]
        sess.append(b"".join(parts), keys(n))
    if os.environ.get("DECODE_CORRUPT_OWN"):  # the tests' proof that the check can fail
        own[0][0][5] ^= 1

    def attention(rows_of, valid_pages, chunks, q):
        """rows_of(ly, page) -> row bytes; one head: softmax(q.k) weighted sum of v (K = V)."""
        out = []
        for ly in range(L):
            ks = []
            for p in valid_pages:
                row = rows_of(ly, p)
                for cc in range(CPP):
                    if p * CPP + cc >= chunks:
                        break
                    ex = row[SEG1 + cc * SCALES:SEG1 + cc * SCALES + NOPE // BLOCK]
                    d = row[cc * DATA:(cc + 1) * DATA]
                    k = [E4M3[b] * 2.0 ** (ex[j // BLOCK] - 127) for j, b in enumerate(d[:NOPE])]
                    k += [struct.unpack("<f", struct.pack("<I", h << 16))[0]
                          for h in struct.unpack_from("<%dH" % ROPE, d, NOPE)]
                    ks.append(k)
            sc = [sum(x * y for x, y in zip(q, k)) / math.sqrt(DIM) for k in ks]
            m = max(sc)
            w = [math.exp(x - m) for x in sc]
            z = sum(w)
            out.append([sum(w[i] * ks[i][j] for i in range(len(ks))) / z for j in range(0, DIM, 37)])
        return out

    chunks, step, checks, attn_checks = prefill, 0, 0, 0
    while step < steps:
        res = sess.cycle(queries(), step=step, position=chunks * a.tokens_per_chunk)
        table = dict(res.pages)
        tail = dict(res.tail)
        table.update(tail)
        pg = sorted(table)
        for i in range(TAU):
            # Gather check: every valid cell of every page in the table, reserve vs own copy.
            for ly in range(L):
                for p in pg:
                    row = sess.row(ly, table[p])
                    n = max(0, min(CPP, chunks - p * CPP))
                    if row[:n * DATA] != own[ly][p][:n * DATA] or \
                            row[SEG1:SEG1 + n * SCALES] != own[ly][p][SEG1:SEG1 + n * SCALES]:
                        raise SystemExit("step %d: layer %d page %d differs in the reserve" % (step, ly, p))
            checks += 1
            if step % 32 == 0:
                q = [rng.gauss(0, 1) for _ in range(DIM)]
                o1 = attention(lambda ly, p: sess.row(ly, table[p]), pg, chunks, q)
                o2 = attention(lambda ly, p: own[ly][p], pg, chunks, q)
                if o1 != o2:
                    raise SystemExit("step %d: attention over the reserve differs" % step)
                attn_checks += 1
            tp = chunks // CPP
            for ly in range(L):
                kv = chunk_kv()
                put(sess.row(ly, tail[tp]), chunks, *kv)
                put(own[ly][tp], chunks, *kv)
            chunks += 1
            step += 1
        sess.commit(TAU, keys(TAU))
        res.release()
    sess.close(delete=True)
    c.close()
    return {"device": "cpu (pure Python)", "layers": L, "prompt_chunks": prefill, "decode_steps": step,
            "checks_bit_exact": checks, "attention_checks": attn_checks}


def main():
    a = parse()
    torch = None
    if not a.pure:
        try:
            import torch  # noqa: F811
        except ImportError:
            print("decode.py: torch is not installed: running the pure-Python check instead", file=sys.stderr)
    out = torch_main(a, torch) if torch is not None else pure_main(a)
    line = json.dumps(out)
    print(line)
    if a.json:
        with open(a.json, "w") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
