"""docs/protocol.md, byte for byte, against a real flashmemd — with a client written from the
document alone (it does not import flashmem, so a mistake shared by the package and the daemon
cannot hide here). It checks what the package's tests do not reach: the exact error code,
request id and stream state of each malformed frame (section 4, 8), the limits table (section
9), every reply body consumed exactly with the documented offsets (section 10), and the admin
JSON fields (10.11)."""

import json
import mmap
import os
import socket
import struct
import time

import pytest

MAGIC = b"FMEM"
F_RESP, F_ERR, F_FDS = 1, 2, 4
HELLO, PING, OPEN, RESUME, CLOSE, PERSIST = 0x01, 0x02, 0x10, 0x11, 0x12, 0x13
APPEND, COMMIT, CYCLE, RELEASE = 0x20, 0x21, 0x30, 0x31
STATUS, SESSIONS, INSPECT, EVICT, MODELS, VERIFY, DELETE, SAVE = 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47
(BAD_FRAME, UNSUPPORTED_VERSION, FRAME_TOO_LARGE, UNKNOWN_OP, CHECKSUM, BAD_REQUEST, UNKNOWN_SESSION,
 NOT_OWNER, DUPLICATE_CHUNK, CHUNK_GAP, PAYLOAD_SIZE, NO_CHUNKS, BAD_LAYOUT, LIMIT_EXCEEDED, INTEGRITY,
 NO_SPACE, UNKNOWN_MODEL, UNKNOWN_LEASE, SESSION_EXISTS, PERMISSION_DENIED, SHUTTING_DOWN, INTERNAL,
 HANDSHAKE_REQUIRED) = range(1, 24)


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
        t.append(c)
    return t


_T = _table()


def crc32c(data):  # section 3
    crc = 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _T[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def header(op, rid, blen, crc, version=1, flags=0, nfds=0, res1=0, res2=0, magic=MAGIC):
    return magic + struct.pack("<HHHBBIQII", version, op, flags, nfds, res1, blen, rid, crc, res2)


def frame(op, rid, body, **kw):
    return header(op, rid, len(body), crc32c(body), **kw) + body


def s16(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack("<H", len(s)) + s


class Reply:
    def __init__(self, op, flags, nfds, rid, body, fds):
        self.op, self.flags, self.nfds, self.rid, self.body, self.fds = op, flags, nfds, rid, body, fds
        self.code = self.msg = None
        if flags & F_ERR:
            self.code, n = struct.unpack_from("<IH", body)
            self.msg = body[6:6 + n].decode()
            assert 6 + n == len(body) and self.code != 0 and n <= 1024, body

    def __repr__(self):
        return "<reply op %#x id %d code %s %r>" % (self.op, self.rid, self.code, self.msg)


class Conn:
    def __init__(self, path, hello=True):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(20)
        self.s.connect(path)
        self.rid = 100
        self.staging = None
        if hello:
            r = self.request(HELLO, struct.pack("<HH", 1, 1) + s16("doc"))
            assert r.code is None, r
            b = r.body
            self.version, res, self.max_body, self.max_sessions, self.max_entries, self.staging_size = \
                struct.unpack_from("<HHIIIQ", b)
            self.instance = b[24:40].hex()
            (n,) = struct.unpack_from("<H", b, 40)
            assert len(b) == 42 + n and res == 0 and self.version == 1
            assert len(r.fds) == (1 if self.staging_size else 0)
            if self.staging_size:
                self.staging = mmap.mmap(r.fds[0], self.staging_size)
                os.close(r.fds[0])

    def close(self):
        self.s.close()

    def next(self):
        self.rid += 1
        return self.rid

    def _read(self, n, fds):
        buf = b""
        while len(buf) < n:
            data, anc, flags, _ = self.s.recvmsg(n - len(buf), socket.CMSG_SPACE(16), socket.MSG_CMSG_CLOEXEC)
            if not data:
                raise EOFError
            for level, kind, p in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += struct.unpack("<%di" % (len(p) // 4), p[:len(p) // 4 * 4])
            buf += data
        return buf

    def recv(self):
        fds = []
        h = self._read(32, fds)
        assert h[:4] == MAGIC
        ver, op, flags, nfds, res1, blen, rid, crc, res2 = struct.unpack("<HHHBBIQII", h[4:])
        body = self._read(blen, fds) if blen else b""
        assert crc32c(body) == crc and len(fds) == nfds and flags & F_RESP and not flags & ~7
        assert res1 == 0 and res2 == 0 and bool(flags & F_FDS) == (nfds > 0) and ver == 1
        return Reply(op, flags, nfds, rid, body, fds)

    def send(self, data, fds=None):
        if fds:
            self.s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("<%di" % len(fds), *fds))])
        else:
            self.s.sendall(data)

    def request(self, op, body=b"", **kw):
        rid = self.next()
        self.send(frame(op, rid, body, **kw))
        r = self.recv()
        assert r.rid == rid and r.op == op, (r, rid, op)
        return r

    def call(self, op, body=b""):
        r = self.request(op, body)
        assert r.code is None, r
        return r

    def json(self, op, obj=None):
        return json.loads(self.call(op, b"" if obj is None else json.dumps(obj).encode()).body)

    def at_eof(self):
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True


def policy(first_keep=0, last_keep=0, kmax=0, lookahead=0, kmax_ratio=0.0, fallback_ratio=0.0):
    return struct.pack("<IIIIdd", first_keep, last_keep, kmax, lookahead, kmax_ratio, fallback_ratio)


def layout(m, cpp=64, kb=None, tl=None, tau=64, slots=16, layers=((512, (6, 2)),)):
    b = struct.pack("<6I", cpp, m["key_bytes"] if kb is None else kb, m["target_layers"] if tl is None else tl,
                    tau, slots, len(layers))
    for row, segs in layers:
        b += struct.pack("<II", row, len(segs)) + struct.pack("<%dI" % len(segs), *segs)
    return b


def open_body(m, name="", persist=0, device=0xFFFFFFFF, pol=None, lay=None, flags=None, model=""):
    b = s16(name) + s16(model) + struct.pack("<II", persist, device) + (pol or policy()) + (lay or layout(m))
    return b + (struct.pack("<I", flags) if flags is not None else b"")


def parse_region(b, off):
    size, slots, kind, device, n = struct.unpack_from("<QIIII", b, off)
    off += 24
    layers = [struct.unpack_from("<QI", b, off + 12 * i) for i in range(n)]
    off += 12 * n
    strides = None
    if off < len(b):
        (ns,) = struct.unpack_from("<I", b, off)
        strides = list(struct.unpack_from("<%dQ" % ns, b, off + 4))
        off += 4 + 8 * ns
    return dict(size=size, slots=slots, kind=kind, device=device, layers=layers, strides=strides), off


def open_ok(c, m, **kw):
    r = c.call(OPEN, open_body(m, **kw))
    assert r.flags == F_RESP | F_FDS and len(r.fds) == 1
    (sess,) = struct.unpack_from("<Q", r.body)
    rd, off = parse_region(r.body, 8)
    assert off == len(r.body) and sess != 0
    return sess, rd, r.fds[0]


def key(m):  # lsa: fp8 e4m3 codes (never 0x7F/0xFF), then an f32 scale
    return bytes((j * 5) % 0x70 for j in range(m["key_bytes"] - 4)) + struct.pack("<f", 1.0)


def append_body(m, sess, first, count, segsum=8, inline=True, offset=0, payload=None, keys=None, flags=None):
    if payload is None:
        payload = bytes((first + i) % 251 for i in range(count * segsum))
    if keys is None:
        keys = key(m) * (m["target_layers"] * count)
    f = (1 if inline else 0) if flags is None else flags
    b = struct.pack("<QQIIQQ", sess, first, count, f, offset, len(payload)) + struct.pack("<I", len(keys)) + keys
    return b + (payload if inline else b"")


def queries(m, val=0x3F80):
    return [struct.pack("<H", val) * (m["query_bytes"] // 2)] * m["target_layers"]


def entry(sess, step, pos, qs):
    return struct.pack("<QQQI", sess, step, pos, len(qs)) + b"".join(struct.pack("<I", len(q)) + q for q in qs)


def cycle_body(entries):
    return struct.pack("<I", len(entries)) + b"".join(entries)


def parse_cycle(b):  # 10.9, consumed exactly
    (n,) = struct.unpack_from("<I", b)
    off, out = 4, []
    for _ in range(n):
        (st,) = struct.unpack_from("<I", b, off)
        if st:
            (ml,) = struct.unpack_from("<H", b, off + 4)
            out.append(dict(status=st))
            off += 6 + ml
            continue
        (lease, cyc, chunks, total, resident, forced, recalled, flags, reserved, above, wait_us, score_us,
         npages) = struct.unpack_from("<QQQIIIIIIdQQI", b, off + 4)
        assert reserved == 0 and flags & ~3 == 0
        o = off + 80
        table = [struct.unpack_from("<II", b, o + 8 * i) for i in range(npages)]
        o += 8 * npages
        (nt,) = struct.unpack_from("<I", b, o)
        tail = [struct.unpack_from("<II", b, o + 4 + 8 * i) for i in range(nt)]
        o += 4 + 8 * nt
        if flags & 2:
            (nd,) = struct.unpack_from("<I", b, o)
            o += 4
            for _ in range(nd):
                o += 10 + struct.unpack_from("<H", b, o + 8)[0]
        out.append(dict(status=0, lease=lease, chunks=chunks, total=total, table=table, tail=tail))
        off = o
    assert off == len(b)
    return out


@pytest.fixture(scope="module")
def model(daemon):
    c = Conn(daemon.socket)
    ms = c.json(MODELS)
    c.close()
    m = next(x for x in ms["models"] if x["name"] == ms["default_model"])
    assert m["kind"] == "lsa"
    return m


def test_handshake_rules(daemon):
    c = Conn(daemon.socket, hello=False)
    assert c.request(PING, b"p").body == b"p"  # PING before HELLO
    assert c.request(STATUS).code == HANDSHAKE_REQUIRED
    assert c.request(0x0999).code == UNKNOWN_OP  # header check 6 comes before the request rules
    assert c.request(HELLO, struct.pack("<HH", 2, 1) + s16("x")).code == BAD_REQUEST  # min > max
    r = c.request(HELLO, struct.pack("<HH", 2, 9) + s16("x"))
    assert r.code == UNSUPPORTED_VERSION, r  # no overlap; the connection goes on
    r = c.request(HELLO, struct.pack("<HH", 1, 9) + s16("x"))
    assert r.code is None and struct.unpack_from("<H", r.body)[0] == 1
    for fd in r.fds:
        os.close(fd)
    assert c.request(HELLO, struct.pack("<HH", 1, 1) + s16("x")).code == HANDSHAKE_REQUIRED
    assert c.request(STATUS, b"{}").code == BAD_REQUEST  # "empty" bodies are empty
    st = c.json(STATUS)
    assert st["protocol"] == 1
    c.close()


def test_connection_level_frames(daemon):
    def goodbye(data, code, rid=0, op=0):
        c = Conn(daemon.socket)
        c.send(data)
        r = c.recv()
        assert (r.code, r.rid, r.op) == (code, rid, op), r
        assert c.at_eof()
        c.close()

    goodbye(frame(PING, 5, b"x", magic=b"FMEX"), BAD_FRAME)  # check 2
    goodbye(header(PING, 6, (16 << 20) + 1, 0), FRAME_TOO_LARGE, 6, PING)  # check 3: the request's id
    goodbye(frame(PING, 0, b"z"), BAD_FRAME)  # request id 0
    for cut in (10, 35):  # checks 1 and 7: end of file inside a header, inside a body
        c = Conn(daemon.socket)
        c.send(frame(PING, 9, b"abcdef")[:cut])
        c.s.shutdown(socket.SHUT_WR)
        r = c.recv()
        assert (r.code, r.rid, r.op) == (BAD_FRAME, 0, 0), (cut, r)
        assert c.at_eof()
        c.close()


@pytest.mark.parametrize("name,kw,code", [
    ("reserved byte 11", dict(res1=1), BAD_FRAME),
    ("reserved u32 at 28", dict(res2=1), BAD_FRAME),
    ("flag bit 3", dict(flags=8), BAD_FRAME),
    ("ERROR without RESPONSE", dict(flags=F_ERR), BAD_FRAME),
    ("RESPONSE on a request", dict(flags=F_RESP), BAD_FRAME),
    ("FDS without nfds", dict(flags=F_FDS), BAD_FRAME),
    ("nfds without FDS", dict(nfds=1), BAD_FRAME),
    ("nfds 5", dict(flags=F_FDS, nfds=5), BAD_FRAME),
    ("FDS nfds 1, no fd sent", dict(flags=F_FDS, nfds=1), BAD_FRAME),
    ("version 2", dict(version=2), UNSUPPORTED_VERSION),
    ("version 0", dict(version=0), UNSUPPORTED_VERSION),
])
def test_header_errors_keep_the_stream(daemon, name, kw, code):
    c = Conn(daemon.socket)
    r = c.request(PING, b"zz", **kw)
    assert r.code == code, (name, r)
    assert c.request(PING, b"sync").body == b"sync"
    c.close()


def test_check_order_and_sync(daemon):
    c = Conn(daemon.socket)
    rid = c.next()
    c.send(header(0x0999, rid, 3, 1234) + b"abc")  # unknown op (6) before checksum (9)
    assert c.recv().code == UNKNOWN_OP
    rid = c.next()
    c.send(header(PING, rid, 3, 1234) + b"abc")
    r = c.recv()
    assert (r.code, r.op, r.rid) == (CHECKSUM, PING, rid)
    assert c.request(0x0999, b"", res1=1).code == BAD_FRAME  # 4 before 6
    assert c.request(0x0999, b"", version=2).code == UNSUPPORTED_VERSION  # 5 before 6
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        for kw in (dict(flags=F_FDS, nfds=1), {}):  # clients never send descriptors
            rid = c.next()
            c.send(frame(PING, rid, b"fd", **kw), fds=[fd])
            r = c.recv()
            assert (r.code, r.rid, r.fds) == (BAD_FRAME, rid, []), r
    finally:
        os.close(fd)
    rids = [c.next() for _ in range(16)]  # pipelining: replies matched by id
    c.send(b"".join(frame(PING, x, b"%d" % x) for x in rids))
    got = {}
    for _ in rids:
        r = c.recv()
        got[r.rid] = r.body
    assert got == {x: b"%d" % x for x in rids}
    c.close()


def test_hello_and_models_match_the_limits_table(daemon, model):
    c = Conn(daemon.socket)
    lim = c.json(MODELS)["limits"]
    assert (c.max_body, c.max_sessions, c.max_entries, c.staging_size) == (
        lim["max_frame_bytes"], lim["max_sessions_per_conn"], lim["max_cycle_entries"], lim["staging_bytes"])
    assert lim["max_reserve_slots"] == 1 << 20 and lim["max_chunks_per_session"] == 4194304
    for k in ("max_conns", "max_conns_per_uid", "admin_reserved_conns", "max_sessions", "max_sessions_per_uid",
              "max_session_bytes", "max_reserve_bytes", "max_host_reserve_bytes", "max_layers", "max_row_bytes",
              "lease_timeout_seconds", "detached_ttl_seconds", "handshake_timeout_seconds", "idle_timeout_seconds",
              "frame_timeout_seconds"):
        assert k in lim, k
    for k in ("name", "kind", "query_bytes", "key_bytes", "target_layers", "layers"):
        assert k in model, k
    assert c.json(STATUS)["instance"] == c.instance
    c.close()


@pytest.mark.parametrize("name,args,code", [
    ("key_bytes not the model's", dict(kb=-1), BAD_LAYOUT),
    ("target_layers not the model's", dict(tl=-1), BAD_LAYOUT),
    ("chunks_per_page 0", dict(cpp=0), BAD_LAYOUT),
    ("chunks_per_page 4097", dict(cpp=4097, layers=((4097 * 8, (6, 2)),)), BAD_LAYOUT),
    ("key_bytes 0", dict(kb=0), BAD_LAYOUT),
    ("key_bytes 65537", dict(kb=65537), BAD_LAYOUT),
    ("target_layers 65", dict(tl=65), BAD_LAYOUT),
    ("cycle_steps 0", dict(tau=0), BAD_LAYOUT),
    ("reserve_slots 0", dict(slots=0), BAD_LAYOUT),
    ("no layers", dict(layers=()), BAD_LAYOUT),
    ("no segments", dict(layers=((512, ()),)), BAD_LAYOUT),
    ("a 0-byte segment", dict(layers=((512, (6, 0)),)), BAD_LAYOUT),
    ("row below chunks_per_page x segments", dict(layers=((511, (6, 2)),)), BAD_LAYOUT),
    ("row above 2^30", dict(layers=(((1 << 30) + 1, (6, 2)),)), BAD_LAYOUT),
    ("17 segments", dict(layers=((4096, (1,) * 17),)), BAD_REQUEST),
    ("1025 layers", dict(layers=((512, (6, 2)),) * 1025), BAD_REQUEST),
    ("row above max_row_bytes", dict(layers=(((16 << 20) + 1, (6, 2)),)), LIMIT_EXCEEDED),
    ("257 layers, above max_layers", dict(layers=((512, (6, 2)),) * 257), LIMIT_EXCEEDED),
    ("reserve_slots above 2^20", dict(slots=(1 << 20) + 1), LIMIT_EXCEEDED),
    ("reserve above max_reserve_bytes", dict(slots=1 << 20, layers=((16 << 20, (6, 2)),)), LIMIT_EXCEEDED),
])
def test_open_layout_limits(daemon, model, name, args, code):
    if args.get("kb") == -1:
        args["kb"] = model["key_bytes"] + 1
    if args.get("tl") == -1:
        args["tl"] = model["target_layers"] + 1
    c = Conn(daemon.socket)
    r = c.request(OPEN, open_body(model, lay=layout(model, **args)))
    for fd in r.fds:
        os.close(fd)
    assert r.code == code, (name, r)
    c.close()


def test_open_body_rules(daemon, model):
    c = Conn(daemon.socket)
    name = "doc-open-%d" % os.getpid()
    s, rd, fd = open_ok(c, model, name="a" * 255)  # names: 255 bytes
    os.close(fd)
    assert rd["kind"] == 0 and rd["device"] == 0xFFFFFFFF and rd["strides"] is None
    assert all(o + rd["slots"] * rb <= rd["size"] for o, rb in rd["layers"])
    for body, code in [
        (open_body(model, name="b" * 256), BAD_REQUEST),
        (open_body(model, model="m" * 256), BAD_REQUEST),
        (open_body(model, name="a" * 255), SESSION_EXISTS),
        (s16(b"\xff\xfe") + open_body(model)[2:], BAD_REQUEST),  # invalid UTF-8
        (open_body(model, model="no-such-model"), UNKNOWN_MODEL),
        (open_body(model, name=name, persist=2), BAD_REQUEST),  # bool32
        (open_body(model, persist=1), BAD_REQUEST),  # persist needs a name
        (open_body(model, flags=0), BAD_REQUEST),  # a flags word present and 0
        (open_body(model, flags=2), BAD_REQUEST),
        (open_body(model) + b"\0\0", BAD_REQUEST),
        (open_body(model)[:-1], BAD_REQUEST),
        (open_body(model, pol=policy(kmax_ratio=1.5)), BAD_REQUEST),
        (open_body(model, pol=policy(fallback_ratio=float("nan"))), BAD_REQUEST),
    ]:
        r = c.request(OPEN, body)
        for fd in r.fds:
            os.close(fd)
        assert r.code == code, (body[:40], r)
    # page-major: strides follow the descriptor, one per layer, the page rounded up to 256 bytes
    s, rd, fd = open_ok(c, model, lay=layout(model, layers=((512, (6, 2)), (300, (4,)))), flags=1)
    os.close(fd)
    assert rd["strides"] == [1024, 1024], rd
    c.close()


def test_data_path(daemon, model):
    CPP, SS, TL, name = 64, 8, model["target_layers"], "doc-dp-%d" % os.getpid()
    c = Conn(daemon.socket)
    sess, rd, fd = open_ok(c, model, name=name, persist=1)
    reserve = mmap.mmap(fd, rd["size"])
    os.close(fd)
    q = queries(model)
    assert parse_cycle(c.call(CYCLE, cycle_body([entry(sess, 0, 0, q)])).body)[0]["status"] == NO_CHUNKS

    def chunk(i):
        return bytes((i * 7 + j) % 256 for j in range(SS))

    def payload(first, n):  # segment-major, then chunk (section 11)
        return b"".join(chunk(first + i)[:6] for i in range(n)) + b"".join(chunk(first + i)[6:] for i in range(n))

    assert c.call(APPEND, append_body(model, sess, 0, 100, payload=payload(0, 100))).body == struct.pack("<Q", 100)
    pl = payload(100, 30)
    c.staging[4096:4096 + len(pl)] = pl
    r = c.call(APPEND, append_body(model, sess, 100, 30, inline=False, offset=4096, payload=pl))
    assert r.body == struct.pack("<Q", 130)
    n = 130
    k1 = key(model) * TL
    bad_key = bytearray(k1)
    bad_key[3] = 0x7F  # fp8 NaN
    for body, code in [
        (append_body(model, sess, 0, 1), DUPLICATE_CHUNK),
        (append_body(model, sess, n + 1, 1), CHUNK_GAP),
        (append_body(model, sess, n, 2, payload=b"\0" * 15), PAYLOAD_SIZE),
        (append_body(model, sess, n, 2, keys=k1), PAYLOAD_SIZE),
        (append_body(model, sess, n, 0, payload=b"", keys=b""), BAD_REQUEST),
        (append_body(model, sess, n, 1, keys=bytes(bad_key)), BAD_REQUEST),
        (append_body(model, sess, n, 1, inline=False, offset=c.staging_size - 4, payload=b"\0" * SS), BAD_REQUEST),
        (append_body(model, sess, n, 1, inline=False, offset=(1 << 64) - 4, payload=b"\0" * SS), BAD_REQUEST),
        (append_body(model, sess, n, 1, flags=3), BAD_REQUEST),
        (append_body(model, sess, n, 1, offset=8), BAD_REQUEST),  # INLINE with a staging offset
        (append_body(model, sess, n, 1) + b"x", BAD_REQUEST),  # payload_length != bytes that follow
        (append_body(model, sess + 1000000, 0, 1), UNKNOWN_SESSION),
    ]:
        assert c.request(APPEND, body).code == code, body[:48]
    other = Conn(daemon.socket)
    assert other.request(APPEND, append_body(model, sess, n, 1)).code == NOT_OWNER
    assert other.request(CLOSE, struct.pack("<QI", sess, 0)).code == NOT_OWNER
    assert other.request(PERSIST, struct.pack("<Q", sess)).code == NOT_OWNER
    assert other.request(RESUME, s16(name)).code == NOT_OWNER
    assert other.request(DELETE, json.dumps({"name": name}).encode()).code == NOT_OWNER
    assert parse_cycle(other.call(CYCLE, cycle_body([entry(sess, 0, 0, q)])).body)[0]["status"] == NOT_OWNER

    res = parse_cycle(c.call(CYCLE, cycle_body([entry(sess, 0, 4 * n, q)])).body)[0]
    assert res["status"] == 0 and res["chunks"] == n and res["total"] == 3
    assert [p for p, _ in res["table"]] == sorted(p for p, _ in res["table"])
    assert {p for p, _ in res["tail"]} == {n // CPP, (n + 63) // CPP}  # pages of [chunks, chunks + tau)
    off, rb = rd["layers"][0]
    for page, slot in res["table"]:  # the reserve holds what was appended (section 11)
        row = reserve[off + slot * rb: off + (slot + 1) * rb]
        for ci in range(page * CPP, min((page + 1) * CPP, n)):
            i = ci % CPP
            assert row[i * 6:i * 6 + 6] + row[CPP * 6 + i * 2:CPP * 6 + i * 2 + 2] == chunk(ci), ci
    # COMMIT: the decoder writes chunk n into its tail cell, then sends the keys
    slot = dict(res["tail"])[n // CPP]
    i, base = n % CPP, off + slot * rb
    reserve[base + i * 6: base + i * 6 + 6] = chunk(n)[:6]
    reserve[base + CPP * 6 + i * 2: base + CPP * 6 + i * 2 + 2] = chunk(n)[6:]
    commit = struct.pack("<QQII", sess, n, 1, 0) + struct.pack("<I", len(k1)) + k1
    assert c.request(COMMIT, commit[:20] + b"\1\0\0\0" + commit[24:]).code == BAD_REQUEST  # reserved
    assert c.call(COMMIT, commit).body == struct.pack("<Q", n + 1)
    n += 1
    k200 = k1 * 200
    assert c.request(COMMIT, struct.pack("<QQIII", sess, n, 200, 0, len(k200)) + k200).code == BAD_REQUEST
    # CYCLE: per-entry errors (15.3) next to a good entry, frame-level ones
    empty, _, fd = open_ok(c, model)
    os.close(fd)
    res2 = parse_cycle(c.call(CYCLE, cycle_body([
        entry(sess, 1, 4 * n, q), entry(sess, 1, 4 * n, q), entry(999999999, 0, 0, q), entry(empty, 0, 0, q),
    ])).body)
    assert [x["status"] for x in res2] == [0, BAD_REQUEST, UNKNOWN_SESSION, NO_CHUNKS]
    for e, code in [
        (entry(sess, 2, 0, q[:-1]), BAD_REQUEST),
        (entry(sess, 2, 0, [x[:-2] for x in q]), PAYLOAD_SIZE),
        (entry(sess, 2, 0, queries(model, 0x7FC0)), BAD_REQUEST),  # bf16 NaN
        (entry(sess, 2, 1 << 63, q), BAD_REQUEST),
    ]:
        assert parse_cycle(c.call(CYCLE, cycle_body([e])).body)[0]["status"] == code
    for body in (cycle_body([entry(sess, 2, 0, q)]) + b"\0", struct.pack("<I", 4097) + entry(sess, 2, 0, [b""]) * 4097,
                 cycle_body([entry(sess, 2, 0, [b""] * 65)]), struct.pack("<I", 0xFFFFFFFF)):
        assert c.request(CYCLE, body).code == BAD_REQUEST
    # RELEASE
    lease = res["lease"]
    assert other.request(RELEASE, struct.pack("<IQ", 1, lease)).code == UNKNOWN_LEASE  # not its lease
    assert c.call(RELEASE, struct.pack("<IQ", 1, lease)).body == b""
    assert c.request(RELEASE, struct.pack("<IQ", 1, lease)).code == UNKNOWN_LEASE
    assert c.request(RELEASE, struct.pack("<I", 65537) + b"\0" * 8 * 65537).code == BAD_REQUEST
    assert c.request(RELEASE, struct.pack("<IQQ", 2, 12345, res2[0]["lease"])).code == UNKNOWN_LEASE
    assert c.request(RELEASE, struct.pack("<IQ", 1, res2[0]["lease"])).code == UNKNOWN_LEASE  # was released
    # PERSIST: 8-byte and 12-byte bodies
    assert c.call(PERSIST, struct.pack("<Q", sess)).body == b""
    assert c.call(PERSIST, struct.pack("<QI", sess, 0)).body == b""
    assert c.request(PERSIST, struct.pack("<QI", sess, 2)).code == BAD_REQUEST
    assert c.request(PERSIST, struct.pack("<Q", empty)).code == BAD_REQUEST  # opened without persist
    # admin JSON (10.11)
    info = [x for x in c.json(SESSIONS)["sessions"] if x["id"] == sess][0]
    assert info["state"] == "attached" and info["client"] == "doc" and info["chunks"] == n
    ins = c.json(INSPECT, {"name": name})
    assert ins["session"]["id"] == sess and ins["layout"] == {
        "chunks_per_page": 64, "key_bytes": model["key_bytes"], "target_layers": TL, "cycle_steps": 64,
        "reserve_slots": 16, "layers": [{"row_bytes": 512, "segments": [6, 2]}]}
    for body in (json.dumps({"session": sess, "name": name}), "{}", "{nope", json.dumps({"name": "x" * 256})):
        assert c.request(INSPECT, body.encode()).code == BAD_REQUEST, body
    assert c.request(INSPECT, json.dumps({"name": name + "-none"}).encode()).code == UNKNOWN_SESSION
    v = c.json(VERIFY, {"session": sess})
    assert v["pages"] == 3 and v["bad"] == 0 and not v.get("damage"), v
    # CLOSE of a persisted session: on SSD only, resumable by name
    assert c.call(CLOSE, struct.pack("<QI", sess, 0)).body == b""
    assert c.request(CLOSE, struct.pack("<QI", sess, 0)).code == UNKNOWN_SESSION
    info = [x for x in c.json(SESSIONS)["sessions"] if x.get("name") == name][0]
    assert info["state"] == "on-ssd" and info["attached"] is False
    r = other.call(RESUME, s16(name))
    assert len(r.fds) == 1
    os.close(r.fds[0])
    b = r.body
    s2, chunks, persist = struct.unpack_from("<QQI", b)
    (ml,) = struct.unpack_from("<H", b, 20)
    o = 22 + ml + 32  # model, policy
    assert (chunks, persist, b[22:22 + ml]) == (n, 1, model["name"].encode())
    assert b[o:o + 24 + 16] == layout(model)  # the layout as sent at OPEN
    rd2, o = parse_region(b, o + 24 + 16)
    assert o == len(b) and rd2["slots"] == 16
    assert other.request(RESUME, s16("")).code == BAD_REQUEST
    assert c.json(EVICT, {"name": name}).get("demoted") is True  # attached: demoted, stays open
    assert parse_cycle(other.call(CYCLE, cycle_body([entry(s2, 5, 4 * n, q)])).body)[0]["status"] == 0
    assert s2 in other.json(DELETE, {"session": s2})["sessions"]
    assert parse_cycle(other.call(CYCLE, cycle_body([entry(s2, 6, 4 * n, q)])).body)[0]["status"] == UNKNOWN_SESSION
    assert c.request(SAVE, json.dumps({"session": empty}).encode()).code == BAD_REQUEST  # unnamed
    other.close()
    c.close()


def test_handshake_timeout(daemon):
    c = Conn(daemon.socket, hello=False)
    c.send(frame(PING, 3, b"abcdef")[:36])  # also when stopped in the middle of a frame
    t0 = time.monotonic()
    r = c.recv()
    assert (r.code, r.rid, r.op) == (HANDSHAKE_REQUIRED, 0, 0) and time.monotonic() - t0 < 15  # 5 s by default
    assert c.at_eof()
    c.close()
