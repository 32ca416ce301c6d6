"""The wire format of docs/protocol.md: header, CRC-32C, bodies, layouts.

Pure functions over bytes; no sockets here (client.py does the I/O). Every decoder checks
counts against the bytes that remain and that a body is consumed exactly, as section 2
requires, and raises ProtocolError otherwise.
"""

import ctypes
import os
import struct
from dataclasses import dataclass, field

from .errors import ProtocolError

MAGIC = 0x4D454D46  # "FMEM" little-endian
HEADER_SIZE = 32
VERSION = 1
MAX_FDS = 4

FLAG_RESPONSE = 0x0001
FLAG_ERROR = 0x0002
FLAG_FDS = 0x0004

OP_HELLO = 0x0001
OP_PING = 0x0002
OP_OPEN = 0x0010
OP_RESUME = 0x0011
OP_CLOSE = 0x0012
OP_PERSIST = 0x0013
OP_APPEND = 0x0020
OP_COMMIT = 0x0021
OP_CYCLE = 0x0030
OP_RELEASE = 0x0031
OP_STATUS = 0x0040
OP_SESSIONS = 0x0041
OP_INSPECT = 0x0042
OP_EVICT = 0x0043
OP_MODELS = 0x0044
OP_VERIFY = 0x0045
OP_DELETE = 0x0046
OP_SAVE = 0x0047
OP_CLUSTER = 0x0048

DEVICE_ANY = 0xFFFFFFFF
DEVICE_HOST_ONLY = 0xFFFFFFFE
NO_DEVICE = 0xFFFFFFFF
REGION_MEMFD = 0
REGION_CUDA = 1

MAX_NAME = 255
MAX_LAYERS = 1024
MAX_SEGMENTS = 16
MAX_TARGET_LAYERS = 64
MAX_CYCLE_ENTRIES = 4096
OPEN_FLAG_PAGE_MAJOR = 1

_HDR = struct.Struct("<IHHHBBIQII")  # magic version op flags nfds reserved body_len id crc reserved
assert _HDR.size == HEADER_SIZE


# --- CRC-32C (section 3) ----------------------------------------------------------------
def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
        t.append(c)
    return t


_T = _table()


def crc32c_py(data, value=0):
    """Table-driven CRC-32C in pure Python (used when no library is found). value is the
    CRC of the bytes before data, so crc32c(b, crc32c(a)) == crc32c(a + b)."""
    crc = value ^ 0xFFFFFFFF
    t = _T
    for b in bytes(data):
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _load_native():
    """The C client's fm_crc32c (SSE4.2 when the CPU has it), if libflashmem.so is found:
    $FLASHMEM_LIB, else clients/c/build/libflashmem.so (make -C clients/c) beside this package in a source tree.
    Only ctypes (standard library) is used; without the library the pure-Python CRC runs."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.environ.get("FLASHMEM_LIB"), os.path.join(here, "..", "..", "c", "build", "libflashmem.so")):
        if not path or not os.path.exists(path):
            continue
        try:
            lib = ctypes.CDLL(path)
            fn = lib.fm_crc32c_update
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
        return fn, path
    return None, None


_native, NATIVE_CRC_LIB = (None, None) if os.environ.get("FLASHMEM_PURE") else _load_native()


def crc32c(data, value=0):
    """CRC-32C (Castagnoli) of a bytes-like object, continuing from value (see crc32c_py)."""
    if _native is not None and len(data) > 32:
        if not isinstance(data, bytes):
            data = bytes(data)
        return _native(value, data, len(data))
    return crc32c_py(data, value)


# --- header -----------------------------------------------------------------------------
@dataclass
class Header:
    version: int
    op: int
    flags: int
    nfds: int
    body_len: int
    request_id: int
    crc: int


def pack_header(op, request_id, parts, version=VERSION, flags=0, nfds=0, crc=None):
    """The header of a frame whose body is the concatenation of parts (bytes-likes)."""
    n = 0
    c = 0
    for p in parts:
        n += len(p)
        if crc is None:
            c = crc32c(p, c)
    return _HDR.pack(MAGIC, version, op, flags, nfds, 0, n, request_id, c if crc is None else crc, 0)


def unpack_header(b):
    magic, ver, op, flags, nfds, r1, blen, rid, crc, r2 = _HDR.unpack_from(b)
    if magic != MAGIC:
        raise ProtocolError("bad magic %#010x" % magic)
    if r1 or r2 or flags & ~(FLAG_RESPONSE | FLAG_ERROR | FLAG_FDS) or (nfds > 0) != bool(flags & FLAG_FDS) \
            or nfds > MAX_FDS:
        raise ProtocolError("bad header: flags %#x nfds %d" % (flags, nfds))
    return Header(ver, op, flags, nfds, blen, rid, crc)


# --- body reader ------------------------------------------------------------------------
class Reader:
    """Reads a packed little-endian body; every take is bounds-checked."""

    __slots__ = ("b", "off", "what")

    def __init__(self, body, what):
        self.b = memoryview(body)
        self.off = 0
        self.what = what

    def fail(self, msg):
        raise ProtocolError("%s: %s" % (self.what, msg))

    def take(self, n):
        if n < 0 or self.off + n > len(self.b):
            self.fail("truncated at byte %d (want %d more, %d left)" % (self.off, n, len(self.b) - self.off))
        v = self.b[self.off:self.off + n]
        self.off += n
        return v

    def unpack(self, st):
        if self.off + st.size > len(self.b):
            self.fail("truncated at byte %d" % self.off)
        v = st.unpack_from(self.b, self.off)
        self.off += st.size
        return v

    def u32(self):
        return self.unpack(_U32)[0]

    def u64(self):
        return self.unpack(_U64)[0]

    def str16(self):
        (n,) = self.unpack(_U16)
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError:
            self.fail("invalid UTF-8")

    def bool32(self):
        v = self.u32()
        if v > 1:
            self.fail("bool32 is %d" % v)
        return v == 1

    def count(self, what, min_size, limit):
        n = self.u32()
        if n > limit or n * min_size > len(self.b) - self.off:
            self.fail("%s count %d exceeds the body or limit %d" % (what, n, limit))
        return n

    def end(self):
        if self.off != len(self.b):
            self.fail("%d trailing bytes" % (len(self.b) - self.off))


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def str16(s):
    b = s.encode("utf-8")
    if len(b) > MAX_NAME:
        raise ValueError("name of %d bytes, at most %d" % (len(b), MAX_NAME))
    return _U16.pack(len(b)) + b


def blob32(b):
    return _U32.pack(len(b)) + bytes(b)


# --- layout, policy, region -------------------------------------------------------------
@dataclass
class LayerLayout:
    row_bytes: int
    segments: list

    def chunk_bytes(self):
        return sum(self.segments)


@dataclass
class Layout:
    """A session's memory layout (OPEN, section 10.2; geometry in section 11)."""

    chunks_per_page: int
    key_bytes: int
    target_layers: int
    cycle_steps: int
    reserve_slots: int
    layers: list = field(default_factory=list)

    @classmethod
    def deepseek_v4(cls, reserve_slots):
        """DeepSeek-V4's 21 CSA layers: per layer 64 x 576 B data then 64 x 8 B scales in a
        37,440-byte row; 132-byte index keys, 3 target layers, tau = 64 (proto.DeepSeekV4Layout)."""
        return cls(64, 132, 3, 64, reserve_slots, [LayerLayout(37440, [576, 8]) for _ in range(21)])

    def chunk_bytes(self):
        return sum(ly.chunk_bytes() for ly in self.layers)

    def page_bytes(self):
        return sum(ly.row_bytes for ly in self.layers)

    def payload_bytes(self, n):
        return n * self.chunk_bytes()

    def keys_bytes(self, n):
        return n * self.target_layers * self.key_bytes

    def payload_offset(self, n, ly, s, i):
        """Where segment s of chunk i (0-based in the message) of layer ly starts in the
        payload of an n-chunk APPEND: layer-major, then segment-major, then chunk."""
        off = n * sum(l.chunk_bytes() for l in self.layers[:ly])
        segs = self.layers[ly].segments
        return off + n * sum(segs[:s]) + i * segs[s]

    def key_offset(self, n, t, i):
        return (t * n + i) * self.key_bytes

    def row_offset(self, ly, s, c):
        """Where segment s of chunk c (0-based in its page) of layer ly starts in the row."""
        segs = self.layers[ly].segments
        return self.chunks_per_page * sum(segs[:s]) + c * segs[s]

    def encode(self):
        if len(self.layers) > MAX_LAYERS:
            raise ValueError("%d layers, at most %d" % (len(self.layers), MAX_LAYERS))
        out = [struct.pack("<6I", self.chunks_per_page, self.key_bytes, self.target_layers,
                           self.cycle_steps, self.reserve_slots, len(self.layers))]
        for ly in self.layers:
            if len(ly.segments) > MAX_SEGMENTS:
                raise ValueError("%d segments, at most %d" % (len(ly.segments), MAX_SEGMENTS))
            out.append(struct.pack("<II%dI" % len(ly.segments), ly.row_bytes, len(ly.segments), *ly.segments))
        return b"".join(out)

    @classmethod
    def decode(cls, r):
        cpp, kb, tl, cs, slots = (r.u32() for _ in range(5))
        n = r.count("layers", 8, MAX_LAYERS)
        layers = []
        for _ in range(n):
            row = r.u32()
            ns = r.count("segments", 4, MAX_SEGMENTS)
            layers.append(LayerLayout(row, [r.u32() for _ in range(ns)]))
        return cls(cpp, kb, tl, cs, slots, layers)


_POLICY = struct.Struct("<4I2d")


@dataclass
class Policy:
    """Selection overrides (each 0 = daemon default), section 10.2."""

    first_keep: int = 0
    last_keep: int = 0
    kmax: int = 0
    lookahead: int = 0
    kmax_ratio: float = 0.0
    fallback_ratio: float = 0.0

    def encode(self):
        return _POLICY.pack(self.first_keep, self.last_keep, self.kmax, self.lookahead,
                            self.kmax_ratio, self.fallback_ratio)

    @classmethod
    def decode(cls, r):
        return cls(*r.unpack(_POLICY))


@dataclass
class RegionDesc:
    """A reserve region (section 10.3): slot k of layer l is the row_bytes bytes at
    layers[l][0] + k * stride(l); stride(l) is row_bytes unless the region is page-major
    (``strides`` set: every layer's slot stride, the page's slot size)."""

    size: int
    slots: int
    kind: int
    device: int
    layers: list  # [(offset, row_bytes)]
    strides: list = None  # page-major reserves only

    def stride(self, l):
        return self.strides[l] if self.strides is not None else self.layers[l][1]

    def decode_strides(self, r):
        """The optional trailing strides list of an OPEN/RESUME reply (10.3)."""
        if r.off == len(r.b):
            return
        n = r.count("region strides", 8, MAX_LAYERS)
        if n != len(self.layers):
            r.fail("%d strides for %d layers" % (n, len(self.layers)))
        strides = list(struct.unpack_from("<%dQ" % n, r.take(8 * n)))
        for i, ((off, row), st) in enumerate(zip(self.layers, strides)):
            if st < row or (self.slots and off + (self.slots - 1) * st + row > self.size):
                r.fail("region layer %d: stride %d outside the region" % (i, st))
        if all(st == row for (_, row), st in zip(self.layers, strides)):
            r.fail("a strides list that changes nothing")
        self.strides = strides

    @classmethod
    def decode(cls, r):
        size, slots, kind, device = r.unpack(_REGION)
        if kind not in (REGION_MEMFD, REGION_CUDA) or (kind == REGION_MEMFD) != (device == NO_DEVICE):
            r.fail("region kind %d with device %#x" % (kind, device))
        n = r.count("region layers", 12, MAX_LAYERS)
        layers = []
        for i in range(n):
            off, row = r.unpack(_REGION_LAYER)
            if off > size or slots * row > size - off:
                r.fail("region layer %d exceeds size %d" % (i, size))
            layers.append((off, row))
        return cls(size, slots, kind, device, layers)


_REGION = struct.Struct("<QIII")
_REGION_LAYER = struct.Struct("<QI")


# --- HELLO ------------------------------------------------------------------------------
@dataclass
class HelloInfo:
    version: int
    max_body: int
    max_sessions: int
    max_cycle_entries: int
    staging_size: int
    instance_id: bytes
    server: str


_HELLO_REPLY = struct.Struct("<HHIIIQ16s")


def encode_hello(client_name, min_version=VERSION, max_version=VERSION):
    return struct.pack("<HH", min_version, max_version) + str16(client_name)


def decode_hello_reply(body):
    r = Reader(body, "HELLO reply")
    ver, res, max_body, max_sessions, max_entries, staging, inst = r.unpack(_HELLO_REPLY)
    if res:
        r.fail("reserved field %d" % res)
    server = r.str16()
    r.end()
    return HelloInfo(ver, max_body, max_sessions, max_entries, staging, bytes(inst), server)


# --- sessions ---------------------------------------------------------------------------
def encode_open(layout, name="", model="", persist=False, device=DEVICE_ANY, policy=None, page_major=False):
    """OPEN's body; page_major adds the optional flags word (bit 0: a page-major reserve)."""
    return b"".join((str16(name), str16(model), struct.pack("<II", 1 if persist else 0, device),
                     (policy or Policy()).encode(), layout.encode(),
                     _U32.pack(OPEN_FLAG_PAGE_MAJOR) if page_major else b""))


def decode_open_reply(body):
    r = Reader(body, "OPEN reply")
    session = r.u64()
    region = RegionDesc.decode(r)
    region.decode_strides(r)
    r.end()
    return session, region


@dataclass
class ResumeInfo:
    session: int
    chunks: int
    persist: bool
    model: str
    policy: Policy
    layout: Layout
    region: RegionDesc


def decode_resume_reply(body):
    r = Reader(body, "RESUME reply")
    session, chunks = r.u64(), r.u64()
    persist = r.bool32()
    model = r.str16()
    policy = Policy.decode(r)
    layout = Layout.decode(r)
    region = RegionDesc.decode(r)
    region.decode_strides(r)
    r.end()
    return ResumeInfo(session, chunks, persist, model, policy, layout, region)


_APPEND = struct.Struct("<QQIIQQ")
_COMMIT = struct.Struct("<QQII")


def encode_append_head(session, first_chunk, count, inline, offset, length, keys):
    """APPEND up to and including the keys; an inline payload follows it in the frame."""
    return _APPEND.pack(session, first_chunk, count, 1 if inline else 0, 0 if inline else offset, length) \
        + blob32(keys)


def encode_commit(session, first_chunk, count, keys):
    return _COMMIT.pack(session, first_chunk, count, 0) + blob32(keys)


def decode_chunks(body):
    r = Reader(body, "chunks reply")
    n = r.u64()
    r.end()
    return n


# --- CYCLE ------------------------------------------------------------------------------
_ENTRY = struct.Struct("<QQQI")
_RESULT = struct.Struct("<QQQIIIIIIdQQ")
CYCLE_FLAG_FALLBACK = 1
CYCLE_FLAG_DAMAGED = 2
MAX_CYCLE_DAMAGED = 4096
DURABILITY_LOCAL = 0
DURABILITY_CLUSTER = 1


def encode_cycle(entries):
    """entries: iterable of (session, step, position, queries)."""
    entries = list(entries)
    if len(entries) > MAX_CYCLE_ENTRIES:
        raise ValueError("%d cycle entries, at most %d" % (len(entries), MAX_CYCLE_ENTRIES))
    out = [_U32.pack(len(entries))]
    for session, step, position, queries in entries:
        if len(queries) > MAX_TARGET_LAYERS:
            raise ValueError("%d queries, at most %d" % (len(queries), MAX_TARGET_LAYERS))
        out.append(_ENTRY.pack(session, step, position, len(queries)))
        for q in queries:
            out.append(_U32.pack(len(q)))
            out.append(bytes(q))
    return b"".join(out)


def encode_release(leases):
    return _U32.pack(len(leases)) + struct.pack("<%dQ" % len(leases), *leases)
