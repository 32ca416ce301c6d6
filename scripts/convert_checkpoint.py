#!/usr/bin/env python3
"""Convert the published FM-DS-V4 Memory-Indexer checkpoint to FlashMemory's safetensors.

The published checkpoint is a PyTorch state dict with keys

    retrievers.l{N}.wq_a.weight          [R, hidden]
    retrievers.l{N}.wq_b.weight          [H * head_dim, R]
    retrievers.l{N}.q_norm_weight        [R]
    retrievers.l{N}.weights_proj.weight  [H, hidden]

for the target layers N (10, 12, 20). The output holds, per target layer, the tensors

    l{N}.wq_a  l{N}.wq_b  l{N}.q_norm_weight  l{N}.weights_proj

(the names of ../shared/testdata/indexer_golden.safetensors) in their original dtype (F32, BF16
or F16; --dtype casts), and "__metadata__" with the dimensions and the scorer constants that
indexer.LoadModel reads and cross-checks:

    format=flashmemory-indexer  format_version=1  layers=10,12,20  hidden  q_lora_rank
    n_heads  head_dim  rope_dim  rope_base  rope_factor  rope_original_seq_len  rope_beta_fast
    rope_beta_slow  rms_norm_eps  ensemble  variant  source  source_sha256

Usage (wherever torch is installed):

    python3 convert_checkpoint.py indexer.pt indexer.safetensors [--dtype bf16] [--ensemble max]

Without torch:

    python3 convert_checkpoint.py --selftest           # converter core + writer + reader checks
    python3 convert_checkpoint.py --synthetic OUT      # a small converted file from known weights

The converter core works on (dtype, shape, bytes) triples and has no torch or numpy dependency,
so --selftest runs anywhere; the torch part only turns tensors into such triples.
"""

import argparse
import hashlib
import json
import os
import re
import struct
import sys
import tempfile

FORMAT = "flashmemory-indexer"
FORMAT_VERSION = "1"

# Scorer constants of the published method (LSA.md); the checkpoint does not carry them.
PUBLISHED = {
    "head_dim": 128,
    "rope_dim": 64,
    "rope_base": "160000",
    "rope_factor": "16",
    "rope_original_seq_len": 65536,
    "rope_beta_fast": "32",
    "rope_beta_slow": "1",
    "rms_norm_eps": "1e-6",
}

DTYPE_SIZE = {"F32": 4, "BF16": 2, "F16": 2}
KEY_RE = re.compile(r"^retrievers\.l(\d+)\.(wq_a\.weight|wq_b\.weight|q_norm_weight|weights_proj\.weight)$")
OUT_NAME = {
    "wq_a.weight": "wq_a",
    "wq_b.weight": "wq_b",
    "q_norm_weight": "q_norm_weight",
    "weights_proj.weight": "weights_proj",
}


class ConvertError(Exception):
    """A checkpoint that cannot be converted; the message names the tensor."""


class Raw:
    """A tensor as the core sees it: safetensors dtype, shape, little-endian bytes."""

    def __init__(self, dtype, shape, data):
        self.dtype, self.shape, self.data = dtype, list(shape), bytes(data)
        n = 1
        for d in self.shape:
            n *= d
        if dtype not in DTYPE_SIZE:
            raise ConvertError("dtype %s not one of F32, BF16, F16" % dtype)
        if n * DTYPE_SIZE[dtype] != len(self.data):
            raise ConvertError("shape %s of %s needs %d bytes, got %d" % (self.shape, dtype, n * DTYPE_SIZE[dtype], len(self.data)))


# ---- element conversions (pure Python, for --dtype casts without torch) ----

def _f32_to_bf16(bits):
    if (bits & 0x7F800000) == 0x7F800000 and bits & 0x7FFFFF:
        return (bits >> 16) | 0x40  # quiet NaN
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def _cast(raw, dtype):
    if raw.dtype == dtype:
        return raw
    n = len(raw.data) // DTYPE_SIZE[raw.dtype]
    if raw.dtype == "F32":
        vals = struct.unpack("<%df" % n, raw.data)
    elif raw.dtype == "F16":
        vals = struct.unpack("<%de" % n, raw.data)
    else:
        vals = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in struct.unpack("<%dH" % n, raw.data)]
    if dtype == "F32":
        out = struct.pack("<%df" % n, *vals)
    elif dtype == "F16":
        try:
            out = struct.pack("<%de" % n, *vals)
        except OverflowError as e:
            raise ConvertError("value out of F16 range: %s" % e)
    else:
        out = struct.pack("<%dH" % n, *[_f32_to_bf16(b) for b in struct.unpack("<%dI" % n, struct.pack("<%df" % n, *vals))])
    return Raw(dtype, raw.shape, out)


# ---- the converter core ----

def convert(state, head_dim=PUBLISHED["head_dim"], dtype=None, ensemble="max", variant="trained",
            ignore_extra=False):
    """Map a state dict of Raw tensors to (ordered [(name, Raw)], metadata dict)."""
    layers = {}
    extra = []
    for key in sorted(state):
        m = KEY_RE.match(key)
        if not m:
            extra.append(key)
            continue
        layers.setdefault(int(m.group(1)), {})[OUT_NAME[m.group(2)]] = state[key]
    if extra and not ignore_extra:
        raise ConvertError("unexpected keys (pass --ignore-extra to drop them): %s" % ", ".join(extra[:10]))
    if not layers:
        raise ConvertError("no retrievers.l{N}.* tensors in the checkpoint")
    if ensemble not in ("max", "mean"):
        raise ConvertError("ensemble %r is not max or mean" % ensemble)
    if variant not in ("trained", "fp8q"):
        raise ConvertError("variant %r is not trained or fp8q" % variant)

    dims = None
    out = []
    for n in sorted(layers):
        t = layers[n]
        for name in ("wq_a", "wq_b", "q_norm_weight", "weights_proj"):
            if name not in t:
                raise ConvertError("retrievers.l%d: missing %s" % (n, [k for k, v in OUT_NAME.items() if v == name][0]))
        wq_a, wq_b, qn, wp = t["wq_a"], t["wq_b"], t["q_norm_weight"], t["weights_proj"]
        if len(wq_a.shape) != 2:
            raise ConvertError("retrievers.l%d.wq_a.weight: shape %s, want [R, hidden]" % (n, wq_a.shape))
        r, hidden = wq_a.shape
        if len(wp.shape) != 2 or wp.shape[1] != hidden:
            raise ConvertError("retrievers.l%d.weights_proj.weight: shape %s, want [H, %d]" % (n, wp.shape, hidden))
        heads = wp.shape[0]
        want = {"wq_b": [heads * head_dim, r], "q_norm_weight": [r]}
        for name, shape in want.items():
            if t[name].shape != shape:
                src = [k for k, v in OUT_NAME.items() if v == name][0]
                raise ConvertError("retrievers.l%d.%s: shape %s, want %s (H=%d, head_dim=%d, R=%d)" % (n, src, t[name].shape, shape, heads, head_dim, r))
        d = (hidden, r, heads)
        if dims is None:
            dims = d
        elif d != dims:
            raise ConvertError("retrievers.l%d: hidden/R/H %s differ from layer %d's %s" % (n, d, sorted(layers)[0], dims))
        for name in ("wq_a", "wq_b", "q_norm_weight", "weights_proj"):
            raw = t[name]
            if dtype is not None:
                raw = _cast(raw, dtype)
            out.append(("l%d.%s" % (n, name), raw))
    hidden, r, heads = dims
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layers": ",".join(str(n) for n in sorted(layers)),
        "hidden": str(hidden),
        "q_lora_rank": str(r),
        "n_heads": str(heads),
        "head_dim": str(head_dim),
        "ensemble": ensemble,
        "variant": variant,
    }
    for k, v in PUBLISHED.items():
        meta.setdefault(k, str(v))
    return out, meta


def write_safetensors(path, tensors, metadata):
    """Write [(name, Raw)] and a string metadata dict as a safetensors file (atomically)."""
    header = {"__metadata__": metadata}
    off = 0
    for name, raw in tensors:
        header[name] = {"dtype": raw.dtype, "shape": raw.shape, "data_offsets": [off, off + len(raw.data)]}
        off += len(raw.data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, raw in tensors:
            f.write(raw.data)
    os.replace(tmp, path)


def read_safetensors(path):
    """Read a safetensors file back: ({name: Raw}, metadata). Used by --selftest."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    data = buf[8 + n:]
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        a, b = e["data_offsets"]
        out[name] = Raw(e["dtype"], e["shape"], data[a:b])
    return out, meta


# ---- torch adapter ----

def load_torch(path):
    import torch  # only here: the core and --selftest do not need it

    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    names = {torch.float32: ("F32", torch.int32), torch.bfloat16: ("BF16", torch.int16), torch.float16: ("F16", torch.int16)}
    state = {}
    for k, t in obj.items():
        if not torch.is_tensor(t):
            continue
        if t.dtype not in names:
            if KEY_RE.match(k):
                raise ConvertError("%s: dtype %s is not float32, bfloat16 or float16" % (k, t.dtype))
            state[k] = None
            continue
        dt, same_size_int = names[t.dtype]
        # A same-size integer view gives the raw bits through numpy on every torch version
        # (numpy has no bfloat16); x86 and ARM hosts are little-endian, as safetensors is.
        data = t.detach().contiguous().view(same_size_int).numpy().tobytes()
        state[k] = Raw(dt, list(t.shape), data)
    return {k: v for k, v in state.items() if v is not None or not KEY_RE.match(k)}


# ---- self test and synthetic weights (no torch) ----

def _pattern(n, salt):
    return [((i * 7919 + salt * 104729) % 2001 - 1000) / 4000.0 for i in range(n)]


def synthetic_state(layers=(10, 12, 20), hidden=64, r=32, heads=4, head_dim=128, dtype="BF16"):
    """A small state dict with deterministic weights: element i of the tensor with salt s is
    ((i·7919 + s·104729) mod 2001 − 1000) / 4000, salts 1,2,3,4 per layer in the order
    wq_a, wq_b, q_norm_weight, weights_proj, plus 10·(layer position)."""
    state = {}
    for li, n in enumerate(layers):
        for si, (src, shape) in enumerate([
            ("wq_a.weight", [r, hidden]),
            ("wq_b.weight", [heads * head_dim, r]),
            ("q_norm_weight", [r]),
            ("weights_proj.weight", [heads, hidden]),
        ]):
            cnt = 1
            for d in shape:
                cnt *= d
            raw = Raw("F32", shape, struct.pack("<%df" % cnt, *_pattern(cnt, si + 1 + 10 * li)))
            state["retrievers.l%d.%s" % (n, src)] = _cast(raw, dtype)
    return state


def selftest():
    state = synthetic_state()
    tensors, meta = convert(state)
    assert [n for n, _ in tensors][:4] == ["l10.wq_a", "l10.wq_b", "l10.q_norm_weight", "l10.weights_proj"], tensors
    assert meta["layers"] == "10,12,20" and meta["hidden"] == "64" and meta["q_lora_rank"] == "32"
    assert meta["n_heads"] == "4" and meta["head_dim"] == "128" and meta["rope_base"] == "160000"
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.safetensors")
        write_safetensors(p, tensors, meta)
        back, bmeta = read_safetensors(p)
        assert bmeta == meta
        with open(p, "rb") as f:
            (hl,) = struct.unpack("<Q", f.read(8))
        assert (8 + hl) % 8 == 0
        for name, raw in tensors:
            assert back[name].dtype == raw.dtype and back[name].shape == raw.shape and back[name].data == raw.data, name
        src = state["retrievers.l12.wq_b.weight"]
        assert back["l12.wq_b"].data == src.data

    # casts: bf16 → f32 is exact; f32 → bf16 rounds to nearest even
    f32 = _cast(state["retrievers.l10.q_norm_weight"], "F32")
    assert _cast(f32, "BF16").data == state["retrievers.l10.q_norm_weight"].data
    assert _f32_to_bf16(0x3F808000) == 0x3F80  # tie, even stays
    assert _f32_to_bf16(0x3F818000) == 0x3F82  # tie, odd rounds up
    assert _f32_to_bf16(0x3F808001) == 0x3F81

    def expect_error(st, needle, **kw):
        try:
            convert(st, **kw)
        except ConvertError as e:
            assert needle in str(e), (needle, str(e))
            return
        raise AssertionError("no error, wanted %r" % needle)

    bad = dict(state)
    del bad["retrievers.l12.q_norm_weight"]
    expect_error(bad, "retrievers.l12: missing q_norm_weight")
    bad = dict(state)
    bad["retrievers.l20.wq_b.weight"] = Raw("BF16", [4 * 128, 31], b"\0" * (4 * 128 * 31 * 2))
    expect_error(bad, "retrievers.l20.wq_b.weight: shape [512, 31], want [512, 32]")
    bad = dict(state)
    bad["retrievers.l20.weights_proj.weight"] = Raw("BF16", [4, 63], b"\0" * (4 * 63 * 2))
    expect_error(bad, "retrievers.l20.weights_proj.weight: shape [4, 63], want [H, 64]")
    bad = dict(state)
    bad["other.bias"] = Raw("F32", [1], b"\0" * 4)
    expect_error(bad, "unexpected keys")
    convert(bad, ignore_extra=True)
    expect_error(state, "ensemble", ensemble="sum")
    expect_error({}, "no retrievers")
    try:
        Raw("BF16", [3], b"\0" * 4)
        raise AssertionError("short Raw accepted")
    except ConvertError:
        pass
    print("selftest ok")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", nargs="?", help="PyTorch checkpoint (.pt/.pth/.bin)")
    ap.add_argument("output", nargs="?", help="output .safetensors")
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], help="cast weights (default: keep)")
    ap.add_argument("--head-dim", type=int, default=PUBLISHED["head_dim"])
    ap.add_argument("--ensemble", default="max", choices=["max", "mean"])
    ap.add_argument("--variant", default="trained", choices=["trained", "fp8q"])
    ap.add_argument("--ignore-extra", action="store_true", help="drop keys that are not retrievers.l{N}.*")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--synthetic", metavar="OUT", help="write a small converted file from synthetic weights")
    a = ap.parse_args(argv)
    dtype = {"f32": "F32", "bf16": "BF16", "f16": "F16", None: None}[a.dtype]
    try:
        if a.selftest:
            selftest()
            return 0
        if a.synthetic:
            tensors, meta = convert(synthetic_state(), dtype=dtype, ensemble=a.ensemble, variant=a.variant)
            meta["source"] = "synthetic"
            write_safetensors(a.synthetic, tensors, meta)
            return 0
        if not a.input or not a.output:
            ap.error("input and output are required")
        state = load_torch(a.input)
        tensors, meta = convert(state, head_dim=a.head_dim, dtype=dtype, ensemble=a.ensemble,
                                variant=a.variant, ignore_extra=a.ignore_extra)
        h = hashlib.sha256()
        with open(a.input, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        meta["source"] = os.path.basename(a.input)
        meta["source_sha256"] = h.hexdigest()
        write_safetensors(a.output, tensors, meta)
        print("wrote %s: layers %s, hidden %s, R %s, H %s" % (a.output, meta["layers"], meta["hidden"], meta["q_lora_rank"], meta["n_heads"]))
        return 0
    except ConvertError as e:
        print("convert_checkpoint: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
