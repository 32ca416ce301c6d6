"""Deterministic synthetic chunks, keys and queries for the tests (random.Random, stdlib)."""

import random
import struct

import flashmem


def small_layout(slots=16):
    """The daemon tests' layout: 64 chunks/page, 132-byte keys, 3 target layers, tau 64, two
    layers with 2 and 1 segments (rows padded past 64 x chunk bytes)."""
    return flashmem.Layout(64, 132, 3, 64, slots, [flashmem.LayerLayout(64 * 40, [32, 8]),
                                                    flashmem.LayerLayout(64 * 24 + 512, [24])])


def chunk_bytes(seed, chunk, layer, seg, n):
    return random.Random((seed << 40) ^ (chunk << 12) ^ (layer << 4) ^ seg).randbytes(n)


def payload(layout, seed, first, n):
    """The APPEND payload of chunks [first, first+n): layer-major, segment-major, chunk."""
    out = bytearray(layout.payload_bytes(n))
    for ly, layer in enumerate(layout.layers):
        for s, sz in enumerate(layer.segments):
            for i in range(n):
                off = layout.payload_offset(n, ly, s, i)
                out[off:off + sz] = chunk_bytes(seed, first + i, ly, s, sz)
    return out


def write_cell(layout, seed, chunk, ly, row):
    """What a decoder kernel does: chunk's segments of layer ly into its page row."""
    c = chunk % layout.chunks_per_page
    for s, sz in enumerate(layout.layers[ly].segments):
        off = layout.row_offset(ly, s, c)
        row[off:off + sz] = chunk_bytes(seed, chunk, ly, s, sz)


def check_row(layout, seed, page, ly, chunks, row):
    """First chunk of page whose bytes in row differ from what was stored, or -1."""
    cpp = layout.chunks_per_page
    for c in range(cpp):
        ch = page * cpp + c
        if ch >= chunks:
            break
        for s, sz in enumerate(layout.layers[ly].segments):
            off = layout.row_offset(ly, s, c)
            if bytes(row[off:off + sz]) != chunk_bytes(seed, ch, ly, s, sz):
                return ch
    return -1


def keys(layout, n, rng):
    """Valid LSA index keys: finite fp8 e4m3 codes, then a float32 scale in [0.5, 1.5)."""
    hd = layout.key_bytes - 4
    out = bytearray()
    for _ in range(n * layout.target_layers):
        codes = bytes(b if b & 0x7F != 0x7F else 0 for b in rng.randbytes(hd))
        out += codes + struct.pack("<f", 0.5 + rng.random())
    return bytes(out)


def bf16(x):
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


def queries(t, hidden, rng):
    return [struct.pack("<%dH" % hidden, *(bf16(rng.gauss(0, 1)) for _ in range(hidden))) for _ in range(t)]
