"""The connection: frames over a Unix socket with SCM_RIGHTS, and one method per op.

Thread safety: a Client may be shared by threads. One lock per connection serialises each
request with its reply (and the use of the staging region by ``append``), so calls from
several threads run one after another, never interleaved on the socket. For parallel calls,
open one Client per thread; for many requests in one round trip use ``Client.cycle`` with a
batch of entries. Sessions and CycleResults route their calls through their Client and share
its lock; a Session's reserve mapping is plain memory and has no lock.
"""

import json
import mmap
import os
import socket
import struct
import threading

from . import wire
from .errors import ConnectionLost, FlashMemError, ProtocolError, error_for
from .wire import Layout, Policy

_CMSG_SPACE = socket.CMSG_SPACE(wire.MAX_FDS * 4)
_ERR = struct.Struct("<IH")


def default_socket_path():
    """$FLASHMEMD_SOCKET, else $XDG_RUNTIME_DIR/flashmemd/flashmemd.sock, else
    /run/flashmemd/flashmemd.sock (the daemon's defaults, docs/protocol.md section 1)."""
    p = os.environ.get("FLASHMEMD_SOCKET")
    if p:
        return p
    rt = os.environ.get("XDG_RUNTIME_DIR")
    if rt:
        return os.path.join(rt, "flashmemd", "flashmemd.sock")
    return "/run/flashmemd/flashmemd.sock"


def _close_fds(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Frame:
    """One frame read from the socket; ``fds`` are owned by the receiver."""

    __slots__ = ("header", "body", "fds")

    def __init__(self, header, body, fds):
        self.header, self.body, self.fds = header, body, fds


class Client:
    """A connection to flashmemd, handshaken (HELLO) on construction.

    ``hello`` holds the daemon's limits; ``staging`` is the connection's staging region
    mapped read-write (None when the daemon gives none). Use as a context manager or call
    ``close``.
    """

    def __init__(self, path=None, client_name="flashmem-python", timeout=None, handshake=True):
        self.path = path or default_socket_path()
        self._lock = threading.RLock()
        self._next_id = 1
        self._closed = False
        self.version = wire.VERSION
        self.staging = None
        self.hello = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if timeout is not None:
                self._sock.settimeout(timeout)
            self._sock.connect(self.path)
        except OSError as e:
            self._sock.close()
            raise ConnectionLost("connect %s: %s (is flashmemd running? `systemctl status flashmemd`)"
                                 % (self.path, e)) from e
        if handshake:
            try:
                self.handshake(client_name)
            except BaseException:
                self.close()
                raise

    # --- lifecycle ---------------------------------------------------------------------
    def handshake(self, client_name="flashmem-python", min_version=wire.VERSION, max_version=wire.VERSION):
        """HELLO (done by the constructor unless handshake=False): negotiate the version, map
        the staging region. Raises UnsupportedVersion when the ranges do not overlap."""
        f = self._call(wire.OP_HELLO, wire.encode_hello(client_name, min_version, max_version))
        try:
            self.hello = wire.decode_hello_reply(f.body)
            if self.hello.staging_size:
                if len(f.fds) != 1:
                    raise ProtocolError("HELLO reply with %d fds, want 1" % len(f.fds))
                self.staging = mmap.mmap(f.fds[0], self.hello.staging_size)
            elif f.fds:
                raise ProtocolError("HELLO reply without staging carries %d fds" % len(f.fds))
        finally:
            _close_fds(f.fds)
        self.version = self.hello.version

    def close(self):
        """Close the connection: the daemon releases its leases and detaches its sessions."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sock.close()
            finally:
                if self.staging is not None:
                    try:
                        self.staging.close()
                    except BufferError:  # a caller still holds a view; GC unmaps it
                        pass
                    self.staging = None

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- frames ------------------------------------------------------------------------
    def _send(self, header, parts):
        parts = [header] + [p for p in parts if len(p)]
        total = sum(len(p) for p in parts)
        sent = self._sock.sendmsg(parts)
        if sent < total:  # a large frame: the rest with plain writes
            self._sock.sendall(b"".join(bytes(p) for p in parts)[sent:])

    def _recv_exact(self, n, fds):
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        trunc = False
        while got < n:
            nbytes, anc, flags, _ = self._sock.recvmsg_into([mv[got:]], _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(struct.unpack("<%di" % (len(data) // 4), data[: len(data) // 4 * 4]))
            trunc |= bool(flags & socket.MSG_CTRUNC)
            if nbytes == 0:
                raise ConnectionLost("flashmemd closed the connection")
            got += nbytes
        if trunc:
            _close_fds(fds)
            del fds[:]
            raise ProtocolError("descriptors truncated (MSG_CTRUNC)")
        return buf

    def _recv_frame(self):
        fds = []
        try:
            h = wire.unpack_header(self._recv_exact(wire.HEADER_SIZE, fds))
            body = self._recv_exact(h.body_len, fds) if h.body_len else bytearray()
        except BaseException:
            _close_fds(fds)
            raise
        if len(fds) != h.nfds or wire.crc32c(body) != h.crc or not h.flags & wire.FLAG_RESPONSE:
            _close_fds(fds)
            raise ProtocolError("reply %d: %d fds for nfds %d, or checksum/flags wrong"
                                % (h.request_id, len(fds), h.nfds))
        return Frame(h, body, fds)

    def _fail(self, exc):
        """A broken stream: close, then raise exc (as ConnectionLost for socket errors)."""
        self.close()
        if isinstance(exc, (socket.timeout, OSError)) and not isinstance(exc, ConnectionLost):
            raise ConnectionLost("connection to flashmemd failed: %s" % exc) from exc
        raise exc

    def _take_id(self):
        rid = self._next_id
        self._next_id += 1
        return rid

    def _call(self, op, body, raw_header=None):
        """Send one request (body: bytes-like, or a list of bytes-like parts sent back to
        back) and return its reply frame; error replies are raised."""
        parts = body if isinstance(body, list) else [body]
        with self._lock:
            if self._closed:
                raise ConnectionLost("client is closed")
            rid = self._take_id()
            try:
                hdr = raw_header(rid) if raw_header else wire.pack_header(op, rid, parts, version=self.version)
                try:
                    self._send(hdr, parts)
                except OSError:
                    # The daemon may have closed the stream after saying why (an error
                    # frame with request id 0, e.g. PERMISSION_DENIED at accept): read it.
                    self._sock.settimeout(1.0)
                    f = self._recv_frame()
                    if f.header.flags & wire.FLAG_ERROR:
                        return self._check(f, rid)
                    raise
                f = self._recv_frame()
            except (OSError, ProtocolError, ConnectionLost) as e:
                self._fail(e)
            return self._check(f, rid)

    def _check(self, f, rid):
        h = f.header
        if h.flags & wire.FLAG_ERROR:
            _close_fds(f.fds)
            err = _decode_error(f.body)
            if h.request_id == 0:  # connection-level: the daemon closes the stream
                self.close()
                raise err
            if h.request_id != rid:
                self._fail(ProtocolError("error reply for request %d, waiting for %d" % (h.request_id, rid)))
            raise err
        if h.request_id != rid:
            _close_fds(f.fds)
            self._fail(ProtocolError("reply for request %d, waiting for %d" % (h.request_id, rid)))
        return f

    def call(self, op, body=b""):
        """Raw access: send op with body, return the reply Frame (the caller closes its fds)."""
        return self._call(op, body)

    def call_raw(self, make_header, body=b""):
        """Tests and tools: send body after the 32 bytes make_header(request_id) returns,
        verbatim, and return the reply Frame. Error replies are raised."""
        return self._call(0, body, raw_header=make_header)

    # --- ops ---------------------------------------------------------------------------
    def ping(self, data=b""):
        return bytes(self._call(wire.OP_PING, bytes(data)).body)

    def open(self, layout, name="", model="", persist=False, device=wire.DEVICE_ANY, policy=None,
             page_major=False):
        """OPEN a session; returns a Session whose host reserve is mapped (kind 0) or whose
        CUDA VMM fd is kept for import (kind 1, see flashmem.torch). page_major asks for a
        reserve whose slot holds a whole page, layers back to back (region.strides)."""
        f = self._call(wire.OP_OPEN, wire.encode_open(layout, name, model, persist, device, policy, page_major))
        try:
            if len(f.fds) != 1:
                raise ProtocolError("OPEN reply with %d fds, want 1" % len(f.fds))
            sid, region = wire.decode_open_reply(f.body)
        except ProtocolError:
            _close_fds(f.fds)
            raise
        return Session(self, sid, layout, region, f.fds[0], name=name, model=model, persist=persist,
                       policy=policy or Policy(), chunks=0)

    def resume(self, name):
        """RESUME a persisted (or detached) session by name."""
        f = self._call(wire.OP_RESUME, wire.str16(name))
        try:
            if len(f.fds) != 1:
                raise ProtocolError("RESUME reply with %d fds, want 1" % len(f.fds))
            info = wire.decode_resume_reply(f.body)
        except ProtocolError:
            _close_fds(f.fds)
            raise
        return Session(self, info.session, info.layout, info.region, f.fds[0], name=name, model=info.model,
                       persist=info.persist, policy=info.policy, chunks=info.chunks)

    def close_session(self, session, delete=False):
        self._empty(self._call(wire.OP_CLOSE, struct.pack("<QI", session, 1 if delete else 0)))

    def persist(self, session, durability=None):
        """PERSIST: flush to SSD; durability wire.DURABILITY_CLUSTER also replicates
        (daemons with a cluster). None sends the 8-byte body every daemon accepts."""
        body = struct.pack("<Q", session) if durability is None else struct.pack("<QI", session, durability)
        self._empty(self._call(wire.OP_PERSIST, body))

    def append(self, session, first_chunk, count, keys, payload=None, staging=None):
        """APPEND count chunks. Either payload (bytes-like, sent inline) or staging=(offset,
        length) of bytes the caller already wrote into ``self.staging``. Returns the chunk count."""
        if (payload is None) == (staging is None):
            raise ValueError("give exactly one of payload (inline) or staging=(offset, length)")
        if payload is not None:
            pv = memoryview(payload).cast("B")
            head = wire.encode_append_head(session, first_chunk, count, True, 0, len(pv), keys)
            return wire.decode_chunks(self._call(wire.OP_APPEND, [head, pv]).body)
        off, length = staging
        head = wire.encode_append_head(session, first_chunk, count, False, off, length, keys)
        return wire.decode_chunks(self._call(wire.OP_APPEND, head).body)

    def append_staged(self, session, first_chunk, count, keys, payload, offset=0):
        """Copy payload into the staging region at offset and APPEND it from there, under the
        connection lock so no other thread reuses the range before the reply."""
        pv = memoryview(payload).cast("B")
        with self._lock:
            if self.staging is None or offset + len(pv) > len(self.staging):
                raise ValueError("payload of %d B does not fit the %d-byte staging region at %d"
                                 % (len(pv), len(self.staging or b""), offset))
            self.staging[offset:offset + len(pv)] = pv
            return self.append(session, first_chunk, count, keys, staging=(offset, len(pv)))

    def commit(self, session, first_chunk, count, keys):
        return wire.decode_chunks(self._call(wire.OP_COMMIT, wire.encode_commit(session, first_chunk, count, keys)).body)

    def cycle(self, entries):
        """CYCLE for a batch: entries of (session, step, position, queries). Returns one
        CycleResult per entry, in order; a failed entry has ``error`` set (not raised)."""
        f = self._call(wire.OP_CYCLE, wire.encode_cycle(entries))
        return _decode_cycle_reply(f.body, self)

    def release(self, *leases):
        self._empty(self._call(wire.OP_RELEASE, wire.encode_release(leases)))

    def status(self):
        return self._json(wire.OP_STATUS, b"")

    def sessions(self):
        return self._json(wire.OP_SESSIONS, b"")["sessions"]

    def inspect(self, session=None, name=None):
        return self._json(wire.OP_INSPECT, _target(session, name))

    def evict(self, session=None, name=None):
        """Move a session's pages out of memory (only demotes pages of an attached one)."""
        return self._json(wire.OP_EVICT, _target(session, name))

    def cluster(self, request):
        """CLUSTER admin op (daemons with a [cluster] table): request is a dict, e.g.
        {"action": "status"} (docs/cluster.md)."""
        return self._json(wire.OP_CLUSTER, json.dumps(request).encode())

    def models(self):
        """The daemon's indexer models with the query/key sizes they take, and the limits."""
        return self._json(wire.OP_MODELS, b"")

    def verify(self, session=None, name=None):
        """Read every page of a session back and check its checksum (slow: reads SSD)."""
        return self._json(wire.OP_VERIFY, _target(session, name))

    def delete(self, session=None, name=None):
        """Remove a session, live or persisted, with its pages and metadata."""
        return self._json(wire.OP_DELETE, _target(session, name))

    def save(self, session=None, name=None):
        """Persist a named live session, as its connection's PERSIST would."""
        return self._json(wire.OP_SAVE, _target(session, name))

    def _json(self, op, body):
        f = self._call(op, body)
        try:
            return json.loads(bytes(f.body).decode("utf-8"))
        except ValueError as e:
            raise ProtocolError("%#x reply is not JSON: %s" % (op, e)) from e

    @staticmethod
    def _empty(f):
        if f.body:
            raise ProtocolError("empty reply has %d bytes" % len(f.body))


def connect(path=None, client_name="flashmem-python", timeout=None):
    """Connect and handshake; see Client."""
    return Client(path, client_name, timeout)


def _target(session, name):
    if (session is None) == (name is None):
        raise ValueError("name exactly one of session or name")
    return json.dumps({"session": session} if session is not None else {"name": name}).encode()


def _decode_error(body):
    r = wire.Reader(body, "error body")
    (code,) = r.unpack(struct.Struct("<I"))
    msg = r.str16()
    r.end()
    if code == 0:
        raise ProtocolError("error frame with code 0")
    return error_for(code, msg)


class CycleResult:
    """One entry's CYCLE result (section 10.9). ``pages`` is the page table the decoder may
    read now and ``tail`` the slots for the next tau steps' pages, both lists of (page, slot);
    ``pages_raw``/``tail_raw`` hold the same as packed little-endian u32 pairs (for
    torch.frombuffer). ``damaged`` lists (page, error) for selected pages the daemon left out
    of the table because their stored bytes failed verification (error: an IntegrityError);
    never read those pages. Use as a context manager to RELEASE the lease on exit."""

    __slots__ = ("client", "error", "lease", "cycle", "chunks", "total_pages", "resident_pages",
                 "forced_pages", "recalled_pages", "fallback", "above_fraction", "wait_us", "score_us",
                 "pages_raw", "tail_raw", "damaged", "released")

    def __init__(self, client):
        self.client = client
        self.error = None
        self.damaged = []
        self.released = False

    @property
    def pages(self):
        return list(struct.iter_unpack("<II", self.pages_raw))

    @property
    def tail(self):
        return list(struct.iter_unpack("<II", self.tail_raw))

    def release(self):
        if not self.released and self.error is None:
            self.released = True
            self.client.release(self.lease)

    def __enter__(self):
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc):
        if not self.client.closed:
            self.release()

    def __repr__(self):
        if self.error is not None:
            return "CycleResult(error=%r)" % self.error
        return "CycleResult(lease=%d, cycle=%d, chunks=%d, pages=%d, tail=%d)" % (
            self.lease, self.cycle, self.chunks, len(self.pages_raw) // 8, len(self.tail_raw) // 8)


_PAGE_CODE = struct.Struct("<II")


def _decode_cycle_reply(body, client):
    r = wire.Reader(body, "CYCLE reply")
    n = r.count("cycle results", 6, wire.MAX_CYCLE_ENTRIES)
    out = []
    for _ in range(n):
        res = CycleResult(client)
        code = r.u32()
        if code != 0:
            res.error = error_for(code, r.str16())
            out.append(res)
            continue
        (res.lease, res.cycle, res.chunks, res.total_pages, res.resident_pages, res.forced_pages,
         res.recalled_pages, flags, reserved, res.above_fraction, res.wait_us, res.score_us) = r.unpack(wire._RESULT)
        if flags & ~(wire.CYCLE_FLAG_FALLBACK | wire.CYCLE_FLAG_DAMAGED) or reserved:
            r.fail("unknown cycle flags %#x / reserved %d" % (flags, reserved))
        res.fallback = bool(flags & wire.CYCLE_FLAG_FALLBACK)
        res.pages_raw = bytes(r.take(8 * r.count("pages", 8, 1 << 27)))
        res.tail_raw = bytes(r.take(8 * r.count("tail", 8, 1 << 27)))
        if flags & wire.CYCLE_FLAG_DAMAGED:
            nd = r.count("damaged pages", 10, wire.MAX_CYCLE_DAMAGED)
            if nd == 0:
                r.fail("damaged flag with an empty list")
            for _ in range(nd):
                page, code = r.unpack(_PAGE_CODE)
                msg = r.str16()
                if code == 0:
                    r.fail("damaged page %d with status OK" % page)
                res.damaged.append((page, error_for(code, msg)))
        out.append(res)
    r.end()
    return out


class Session:
    """An open session: its id, layout and reserve region.

    For a host reserve (``region.kind == 0``) ``reserve`` is the region mapped read-write and
    the fd is closed; ``row(layer, slot)`` and ``layer(l)`` are memoryviews into it, and
    ``numpy_layer(l)`` a [slots, row_bytes] uint8 NumPy view (NumPy optional). For a CUDA
    reserve (kind 1) ``fd`` stays open until flashmem.torch imports it (or ``close``).
    ``chunks`` tracks the session's chunk count from the daemon's replies. Use as a context
    manager to CLOSE the session on exit.
    """

    def __init__(self, client, sid, layout, region, fd, name="", model="", persist=False, policy=None, chunks=0):
        self.client = client
        self.id = sid
        self.layout = layout
        self.region = region
        self.name, self.model, self.persist_flag, self.policy = name, model, persist, policy
        self.chunks = chunks
        self.reserve = None
        self.fd = None
        self.closed = False
        if region.kind == wire.REGION_MEMFD:
            try:
                self.reserve = mmap.mmap(fd, region.size) if region.size else None
            finally:
                os.close(fd)  # the mapping outlives the descriptor
        else:
            self.fd = fd

    def take_fd(self):
        """Hand the CUDA reserve's fd to the caller (who closes it)."""
        fd, self.fd = self.fd, None
        return fd

    def layer(self, l):
        """Layer l's buffer, slots * stride bytes (stride = row_bytes unless page-major)."""
        off, row = self.region.layers[l]
        st = self.region.stride(l)
        return memoryview(self.reserve)[off:off + (self.region.slots - 1) * st + row]

    def row(self, l, slot):
        if not 0 <= slot < self.region.slots:
            raise IndexError("slot %d of %d" % (slot, self.region.slots))
        off, row = self.region.layers[l]
        start = off + slot * self.region.stride(l)
        return memoryview(self.reserve)[start:start + row]

    def numpy_layer(self, l):
        """A [slots, row_bytes] uint8 NumPy view of layer l (strided for page-major)."""
        import numpy as np
        off, row = self.region.layers[l]
        st = self.region.stride(l)
        base = np.frombuffer(self.reserve, dtype=np.uint8, count=(self.region.slots - 1) * st + row, offset=off)
        return np.lib.stride_tricks.as_strided(base, shape=(self.region.slots, row), strides=(st, 1))

    def append(self, payload, keys, count=None, first_chunk=None, staged=None):
        """APPEND prefill chunks (payload in the APPEND layout, section 11). By default the
        payload goes through the staging region when it fits, inline otherwise."""
        count = count if count is not None else _count(self.layout, payload)
        first = self.chunks if first_chunk is None else first_chunk
        st = self.client.staging
        if staged is None:
            staged = st is not None and len(memoryview(payload).cast("B")) <= len(st)
        if staged:
            self.chunks = self.client.append_staged(self.id, first, count, keys, payload)
        else:
            self.chunks = self.client.append(self.id, first, count, keys, payload=payload)
        return self.chunks

    def commit(self, count, keys, first_chunk=None):
        """COMMIT decode chunks already written into this session's tail cells."""
        first = self.chunks if first_chunk is None else first_chunk
        self.chunks = self.client.commit(self.id, first, count, keys)
        return self.chunks

    def cycle(self, queries, step=0, position=0):
        """CYCLE this session alone; raises the entry's error. Use the result as a context
        manager to release its lease."""
        (res,) = self.client.cycle([(self.id, step, position, queries)])
        if res.error is not None:
            raise res.error
        return res

    def persist(self, durability=None):
        self.client.persist(self.id, durability)

    def unmap(self):
        if self.reserve is not None:
            try:
                self.reserve.close()
            except BufferError:
                pass
            self.reserve = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self, delete=False):
        """CLOSE (detach; with delete remove from every tier) and unmap the reserve."""
        if self.closed:
            return
        self.closed = True
        try:
            if not self.client.closed:
                self.client.close_session(self.id, delete)
        finally:
            self.unmap()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _count(layout, payload):
    n = len(memoryview(payload).cast("B"))
    cb = layout.chunk_bytes()
    if n % cb:
        raise ValueError("payload of %d B is not a whole number of %d-byte chunks" % (n, cb))
    return n // cb


__all__ = ["Client", "connect", "Session", "CycleResult", "Frame", "Layout", "Policy",
           "default_socket_path", "FlashMemError"]
