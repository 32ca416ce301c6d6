"""flashmem against a real flashmemd: happy path, every error code a client can cause, fd
passing, and the reserve read by mmap byte for byte."""

import array
import gc
import glob
import json
import os
import random
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

import pytest

import flashmem
from flashmem import wire

from util import check_row, keys, payload, queries, small_layout, write_cell

HIDDEN = 64  # the test daemon's random model


def fill(sess, seed, n, rng, batch=256, staged=None):
    lay = sess.layout
    first = sess.chunks
    while sess.chunks < first + n:
        k = min(batch, first + n - sess.chunks)
        sess.append(payload(lay, seed, sess.chunks, k), keys(lay, k, rng), staged=staged)


def check_pages(sess, seed, res):
    assert res.pages, "empty page table"
    for page, slot in res.pages:
        for ly in range(len(sess.layout.layers)):
            bad = check_row(sess.layout, seed, page, ly, sess.chunks, sess.row(ly, slot))
            assert bad == -1, "page %d layer %d slot %d: chunk %d differs" % (page, ly, slot, bad)


def memfd_count():
    n = 0
    for p in glob.glob("/proc/self/fd/*"):
        try:
            n += os.readlink(p).startswith("/memfd:")
        except OSError:
            pass
    return n


def test_hello_and_ping(client):
    h = client.hello
    assert h.version == 1 and h.max_body >= 1 << 20 and h.max_sessions > 0 and h.max_cycle_entries > 0
    assert len(h.instance_id) == 16 and h.server
    assert h.staging_size > 0 and len(client.staging) == h.staging_size
    assert client.ping(b"hello \x00 world") == b"hello \x00 world"
    assert client.ping() == b""


def test_prefill_cycle_reads_reserve_byte_for_byte(client):
    rng = random.Random(1)
    lay = small_layout(24)
    with client.open(lay) as s:
        assert s.region.kind == flashmem.REGION_MEMFD and s.region.device == flashmem.NO_DEVICE
        assert s.region.slots == 24 and len(s.region.layers) == 2 and len(s.reserve) == s.region.size
        fill(s, 11, 700, rng, staged=True)             # through the staging region
        fill(s, 11, 300, rng, staged=False)            # inline
        assert s.chunks == 1000
        with s.cycle(queries(3, HIDDEN, rng), step=0, position=4000) as r:
            assert r.chunks == 1000 and r.total_pages == 16 and r.resident_pages >= 1
            assert [p for p, _ in r.pages] == sorted(p for p, _ in r.pages)
            assert len(r.tail) >= 1 and all(0 <= sl < 24 for _, sl in r.pages + r.tail)
            check_pages(s, 11, r)
            lease = r.lease
        assert r.released
        with pytest.raises(flashmem.UnknownLease):  # the context manager released it
            client.release(lease)
        info = client.inspect(session=s.id)
        assert info["session"]["chunks"] == 1000 and info["layout"]["chunks_per_page"] == 64
        assert any(x["id"] == s.id for x in client.sessions())
        st = client.status()
        assert st["sessions"] >= 1 and st["protocol"] == 1 and st["tiers"]
    with pytest.raises(flashmem.UnknownSession):  # the session context manager closed it
        client.close_session(s.id)


def test_commit_into_tail_cells_persist_resume(daemon, client):
    rng = random.Random(2)
    lay = small_layout(16)
    name = "py-commit-%d" % os.getpid()
    s = client.open(lay, name=name, persist=True)
    fill(s, 5, 130, rng)
    r = s.cycle(queries(3, HIDDEN, rng), position=600)
    tail = dict(r.tail)
    # Decode: write 64 chunks' KV into their tail cells, as a decoder's kernel would.
    for ch in range(130, 194):
        page = ch // 64
        assert page in tail, "no tail slot for page %d: %s" % (page, r.tail)
        for ly in range(2):
            write_cell(lay, 5, ch, ly, s.row(ly, tail[page]))
    assert s.commit(64, keys(lay, 64, rng)) == 194
    r.release()
    with s.cycle(queries(3, HIDDEN, rng), step=64, position=800) as r2:
        check_pages(s, 5, r2)
        assert {2, 3} & {p for p, _ in r2.pages}
    s.persist()
    s.unmap()
    client.close()
    # A new connection resumes it: same layout, same bytes.
    with flashmem.connect(daemon.socket) as c2:
        with resume_when_detached(c2, name) as s2:
            assert s2.chunks == 194 and s2.persist_flag and s2.layout == lay
            with s2.cycle(queries(3, HIDDEN, rng), step=128, position=900) as r3:
                check_pages(s2, 5, r3)
            c2.close_session(s2.id, delete=True)
            s2.closed = True
        with pytest.raises(flashmem.UnknownSession):
            c2.resume(name)


def resume_when_detached(c, name, timeout=10.0):
    """RESUME once the daemon has seen the previous owner's connection end (it detaches the
    session when that connection's read loop stops, a moment after the client closes)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return c.resume(name)
        except flashmem.NotOwner:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_fd_passing(daemon):
    c = flashmem.Client(daemon.socket, handshake=False)
    f = c.call(wire.OP_HELLO, wire.encode_hello("fds"))
    assert f.header.nfds == 1 and len(f.fds) == 1
    st = os.fstat(f.fds[0])
    assert stat.S_ISREG(st.st_mode) and os.readlink("/proc/self/fd/%d" % f.fds[0]).startswith("/memfd:")
    assert st.st_size == wire.decode_hello_reply(f.body).staging_size
    assert os.get_inheritable(f.fds[0]) is False  # MSG_CMSG_CLOEXEC
    os.close(f.fds[0])
    lay = small_layout(8)
    f = c.call(wire.OP_OPEN, wire.encode_open(lay))
    assert len(f.fds) == 1
    sid, region = wire.decode_open_reply(f.body)
    assert os.fstat(f.fds[0]).st_size >= region.size
    os.close(f.fds[0])
    c.close_session(sid)
    # A client never sends descriptors: the daemon answers BAD_FRAME and closes them.
    body = b"x"
    hdr = wire.pack_header(wire.OP_PING, 99, [body], flags=wire.FLAG_FDS, nfds=1)
    r, w = os.pipe()
    try:
        with c._lock:
            c._sock.sendmsg([hdr + body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
            fr = c._recv_frame()
        assert fr.header.flags & wire.FLAG_ERROR and fr.header.request_id == 99
        assert struct.unpack_from("<I", fr.body)[0] == flashmem.BadFrame.code
    finally:
        os.close(r)
        os.close(w)
    assert c.ping(b"still in sync") == b"still in sync"
    c.close()
    # Sessions opened and closed through the package leak no descriptor or mapping (Python's
    # mmap keeps a dup of its fd until it is closed, so a leaked mapping shows here too).
    gc.collect()
    before = memfd_count()
    with flashmem.connect(daemon.socket) as c2:
        for _ in range(20):
            with c2.open(small_layout(4)):
                pass
    gc.collect()
    assert memfd_count() == before


def test_numpy_views(client):
    np = pytest.importorskip("numpy")
    rng = random.Random(3)
    lay = small_layout(8)
    with client.open(lay) as s:
        fill(s, 9, 64, rng)
        with s.cycle(queries(3, HIDDEN, rng), position=100) as r:
            (page, slot), = r.pages
            for ly in range(2):
                a = s.numpy_layer(ly)
                assert a.shape == (8, lay.layers[ly].row_bytes) and a.dtype == np.uint8
                assert a[slot].tobytes() == bytes(s.row(ly, slot))
                del a


def test_threads_share_a_client(client):
    rng = random.Random(4)
    with client.open(small_layout(16)) as s:
        fill(s, 1, 256, rng)
        qs = queries(3, HIDDEN, rng)
        errors = []

        def worker(i):
            try:
                for j in range(30):
                    if j % 2:
                        assert client.ping(b"%d-%d" % (i, j)) == b"%d-%d" % (i, j)
                    else:
                        with s.cycle(qs, position=2000) as r:
                            assert r.chunks == 256
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not errors, errors


def test_batched_cycle_with_a_failed_entry(client):
    rng = random.Random(5)
    with client.open(small_layout(16)) as a, client.open(small_layout(16)) as b, client.open(small_layout(16)) as e:
        fill(a, 1, 100, rng)
        fill(b, 2, 300, rng)
        q = queries(3, HIDDEN, rng)
        res = client.cycle([(a.id, 0, 400, q), (e.id, 0, 0, q), (b.id, 0, 1200, q), (987654321, 0, 0, q)])
        assert len(res) == 4
        assert res[0].error is None and res[0].chunks == 100
        assert isinstance(res[1].error, flashmem.NoChunks) and res[1].error.code == 12
        assert res[2].error is None and res[2].chunks == 300
        assert isinstance(res[3].error, flashmem.UnknownSession)
        check_pages(a, 1, res[0])
        check_pages(b, 2, res[2])
        client.release(res[0].lease, res[2].lease)
        with pytest.raises(flashmem.NoChunks):
            with res[1]:
                pass


# --- every error code a client can cause -------------------------------------------------
def raw(op, rid, body=b"", **kw):
    return lambda _rid: wire.pack_header(op, rid if rid else _rid, [body], **kw)


def expect(exc, fn):
    with pytest.raises(exc) as ei:
        fn()
    assert isinstance(ei.value, flashmem.FlashMemError) and ei.value.code == exc.code and ei.value.message
    return ei.value


def test_error_codes_of_frames(daemon):
    c = flashmem.Client(daemon.socket, handshake=False)
    # HANDSHAKE_REQUIRED (23): any op but HELLO/PING before HELLO.
    expect(flashmem.HandshakeRequired, lambda: c.status())
    # UNSUPPORTED_VERSION (2): no common version in HELLO; the connection continues.
    expect(flashmem.UnsupportedVersion, lambda: c.handshake("v", 7, 9))
    c.handshake("errors")
    expect(flashmem.HandshakeRequired, lambda: c.handshake("again"))  # HELLO twice
    # UNSUPPORTED_VERSION (2): a frame with another version than the negotiated one.
    expect(flashmem.UnsupportedVersion, lambda: c.call_raw(lambda rid: wire.pack_header(wire.OP_PING, rid, [b"v"], version=2), b"v"))
    # BAD_FRAME (1): a reserved flag bit; the stream stays in sync.
    expect(flashmem.BadFrame, lambda: c.call_raw(lambda rid: wire.pack_header(wire.OP_PING, rid, [b"f"], flags=0x0100), b"f"))
    # BAD_FRAME (1): a request carrying the RESPONSE flag.
    expect(flashmem.BadFrame, lambda: c.call_raw(lambda rid: wire.pack_header(wire.OP_PING, rid, [b"f"], flags=wire.FLAG_RESPONSE), b"f"))
    # UNKNOWN_OP (4).
    expect(flashmem.UnknownOp, lambda: c.call_raw(lambda rid: wire.pack_header(0x7777, rid, [b""]), b""))
    # CHECKSUM (5).
    expect(flashmem.ChecksumMismatch, lambda: c.call_raw(lambda rid: wire.pack_header(wire.OP_PING, rid, [b"abc"], crc=1), b"abc"))
    # BAD_REQUEST (6): trailing bytes, bad bool, reserved field.
    expect(flashmem.BadRequest, lambda: c.call(wire.OP_CLOSE, struct.pack("<QIB", 1, 0, 0)))
    expect(flashmem.BadRequest, lambda: c.call(wire.OP_CLOSE, struct.pack("<QI", 1, 2)))
    expect(flashmem.BadRequest, lambda: c.call(wire.OP_COMMIT, struct.pack("<QQIII", 1, 0, 0, 1, 0)))
    assert c.ping(b"in sync") == b"in sync"
    # FRAME_TOO_LARGE (3): announced before the body; the daemon closes the connection.
    big = c.hello.max_body + 1
    hdr = lambda rid: struct.pack("<IHHHBBIQII", wire.MAGIC, 1, wire.OP_PING, 0, 0, 0, big, rid, 0, 0)  # noqa: E731
    expect(flashmem.FrameTooLarge, lambda: c.call_raw(hdr))
    with pytest.raises(flashmem.ConnectionLost):
        c.ping(b"x")
    c.close()


def test_error_codes_of_sessions(daemon, client):
    rng = random.Random(6)
    lay = small_layout(16)
    # BAD_LAYOUT (13), UNKNOWN_MODEL (17), LIMIT_EXCEEDED (14), BAD_REQUEST (6).
    bad = small_layout(16)
    bad.chunks_per_page = 0
    expect(flashmem.BadLayout, lambda: client.open(bad))
    tight = small_layout(16)
    tight.layers[0].row_bytes = 64 * 40 - 1
    expect(flashmem.BadLayout, lambda: client.open(tight))
    expect(flashmem.UnknownModel, lambda: client.open(lay, model="no-such-model"))
    expect(flashmem.LimitExceeded, lambda: client.open(small_layout(0xFFFFFFFF)))
    expect(flashmem.BadRequest, lambda: client.open(lay, persist=True))  # persisted without a name
    expect(flashmem.BadRequest, lambda: client.open(lay, policy=flashmem.Policy(kmax_ratio=2.0)))
    name = "py-errors-%d" % os.getpid()
    s = client.open(lay, name=name)
    try:
        # SESSION_EXISTS (19).
        expect(flashmem.SessionExists, lambda: client.open(lay, name=name))
        # NO_CHUNKS (12).
        expect(flashmem.NoChunks, lambda: s.cycle(queries(3, HIDDEN, rng)))
        # PAYLOAD_SIZE (11): payload one byte short; keys of the wrong length.
        p = payload(lay, 1, 0, 4)
        k = keys(lay, 4, rng)
        expect(flashmem.PayloadSize, lambda: client.append(s.id, 0, 4, k, payload=p[:-1]))
        expect(flashmem.PayloadSize, lambda: client.append(s.id, 0, 4, k[:-1], payload=p))
        # BAD_REQUEST (6): a staging range outside the region.
        expect(flashmem.BadRequest, lambda: client.append(s.id, 0, 4, k, staging=(client.hello.staging_size, len(p))))
        assert s.append(p, k) == 4
        # DUPLICATE_CHUNK (9), CHUNK_GAP (10).
        expect(flashmem.DuplicateChunk, lambda: client.append(s.id, 0, 4, k, payload=p))
        expect(flashmem.ChunkGap, lambda: client.append(s.id, 5, 4, k, payload=p))
        expect(flashmem.DuplicateChunk, lambda: client.commit(s.id, 3, 1, keys(lay, 1, rng)))
        expect(flashmem.ChunkGap, lambda: client.commit(s.id, 9, 1, keys(lay, 1, rng)))
        # UNKNOWN_LEASE (18).
        expect(flashmem.UnknownLease, lambda: client.release(123456789))
        # UNKNOWN_SESSION (7).
        expect(flashmem.UnknownSession, lambda: client.close_session(99999999))
        expect(flashmem.UnknownSession, lambda: client.resume("py-no-such-session"))
        expect(flashmem.UnknownSession, lambda: client.inspect(session=99999999))
        # NOT_OWNER (8): another connection touches this one's session.
        with flashmem.connect(daemon.socket) as other:
            expect(flashmem.NotOwner, lambda: other.append(s.id, 4, 4, k, payload=p))
            expect(flashmem.NotOwner, lambda: other.close_session(s.id))
            expect(flashmem.NotOwner, lambda: other.resume(name))
        # LIMIT_EXCEEDED (14): a CYCLE batch above max_cycle_entries.
        n = client.hello.max_cycle_entries + 1
        if n <= wire.MAX_CYCLE_ENTRIES:
            expect(flashmem.LimitExceeded, lambda: client.cycle([(s.id, 0, 0, queries(3, HIDDEN, rng))] * n))
    finally:
        s.close()
    # NO_SPACE (16): a reserve of one slot cannot hold a cycle's tail pages.
    with client.open(small_layout(1)) as one:
        one.append(payload(lay, 1, 0, 100), keys(lay, 100, rng))
        expect(flashmem.NoSpace, lambda: one.cycle(queries(3, HIDDEN, rng), position=400))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_permission_denied(daemon, tmp_path):
    # PERMISSION_DENIED (20): a peer with another uid (not in an allowed group).
    os.chmod(daemon.root, 0o755)
    os.chmod(daemon.socket, 0o777)
    code = ("import sys; sys.path.insert(0, %r); import flashmem\n"
            "try:\n    flashmem.connect(%r)\nexcept flashmem.PermissionDenied as e:\n    print('denied', e.code)\n"
            % (os.path.join(os.path.dirname(flashmem.__file__), ".."), daemon.socket))
    out = subprocess.run([sys.executable, "-c", code], user=65534, group=65534, capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.strip() == "denied 20", out.stdout + out.stderr


def test_admin_ops(client):
    rng = random.Random(8)
    name = "py-admin-%d" % os.getpid()
    m = client.models()
    assert any(x.get("name") == "small" for x in m["models"]), m
    with client.open(small_layout(16), name=name) as s:
        fill(s, 4, 128, rng)
        saved = client.save(name=name)
        assert s.id in saved["sessions"]
        v = client.verify(session=s.id)
        assert v["pages"] == 2 and v["bad"] == 0 and not v.get("damage"), v
        ev = client.evict(name=name)
        assert s.id in ev["sessions"]
        client.delete(name=name)
        s.closed = True  # DELETE ended it
        s.unmap()
    expect(flashmem.UnknownSession, lambda: client.inspect(name=name))


def test_shutting_down(fresh_daemon):
    # SHUTTING_DOWN (21): on SIGTERM the daemon tells every client why it closes.
    c = flashmem.connect(fresh_daemon.socket)
    assert c.ping(b"up") == b"up"
    fresh_daemon.stop()
    expect(flashmem.ShuttingDown, lambda: c.status())
    assert c.closed
    with pytest.raises(flashmem.ConnectionLost):
        c.ping(b"x")


def test_integrity_error(fresh_daemon):
    # INTEGRITY (15): a stored page whose bytes changed on disk is never served.
    rng = random.Random(7)
    lay = small_layout(16)
    with flashmem.connect(fresh_daemon.socket) as c:
        s = c.open(lay, name="py-integrity", persist=True)
        fill(s, 3, 250, rng)  # the last page is partial: APPEND into it must fail below
        expect(flashmem.BadRequest, lambda: s.persist(wire.DURABILITY_CLUSTER))  # no [cluster]
        s.persist()
        s.unmap()
    fresh_daemon.stop()
    flipped = 0
    for seg in glob.glob(os.path.join(fresh_daemon.data, "ssd", "pages", "*.seg")):
        with open(seg, "r+b") as f:
            data = f.read()
            for off in range(0, len(data), 4096):
                if data[off:off + 4] == b"FMPG":
                    f.seek(off + 200)
                    b = f.read(1)
                    f.seek(off + 200)
                    f.write(bytes([b[0] ^ 0xFF]))
                    flipped += 1
    assert flipped > 0, "no page records found to corrupt"
    fresh_daemon.start()
    with flashmem.connect(fresh_daemon.socket) as c:
        s = resume_when_detached(c, "py-integrity")
        with s.cycle(queries(3, HIDDEN, rng), position=1000) as r:
            assert r.damaged, "no damaged page reported: %r" % (r,)
            damaged = {p for p, _ in r.damaged}
            for p, err in r.damaged:
                assert isinstance(err, flashmem.IntegrityError) and err.code == 15 and err.message
            assert not damaged & {p for p, _ in r.pages}, "a damaged page was served"
        # APPEND into a damaged page fails (its other chunks are lost).
        if 3 in damaged:
            expect(flashmem.IntegrityError, lambda: s.append(payload(lay, 3, 250, 1), keys(lay, 1, rng)))
        else:
            pytest.fail("the partial last page was not reported damaged: %s" % sorted(damaged))
        s.unmap()


def test_unknown_code_is_a_flashmem_error():
    e = flashmem.error_for(999, "from the future")
    assert type(e) is flashmem.FlashMemError and e.code == 999 and "code 999" in str(e)
    assert set(flashmem.ERROR_CLASSES) == set(range(1, 25))
    for code, cls in flashmem.ERROR_CLASSES.items():
        assert isinstance(flashmem.error_for(code, "m"), cls) and cls.code == code


def test_layout_arithmetic_matches_protocol_md():
    lay = flashmem.Layout.deepseek_v4(512)
    assert len(lay.layers) == 21 and lay.page_bytes() == 21 * 37440 and lay.chunk_bytes() == 21 * 584
    assert lay.row_offset(0, 1, 3) == 64 * 576 + 3 * 8
    assert lay.payload_offset(10, 2, 1, 4) == 10 * 584 * 2 + 10 * 576 + 4 * 8
    assert wire.crc32c(b"123456789") == 0xE3069283 and wire.crc32c_py(b"123456789") == 0xE3069283
    # The hex examples of docs/protocol.md section 12.
    assert wire.pack_header(wire.OP_PING, 1, [b"hi"]) + b"hi" == bytes.fromhex(
        "464d454d010002000000000002000000" "0100000000000000c2d99df500000000" "6869")
    hello = wire.encode_hello("py")
    assert wire.pack_header(wire.OP_HELLO, 1, [hello]) + hello == bytes.fromhex(
        "464d454d010001000000000008000000" "010000000000000073dc302300000000" "0100010002007079")


def test_native_crc_agrees_with_pure_python():
    data = bytes(range(256)) * 37 + b"tail"
    assert wire.crc32c_py(data) == wire.crc32c(data)
    assert wire.crc32c(data[100:], wire.crc32c(data[:100])) == wire.crc32c_py(data)
    if wire.NATIVE_CRC_LIB is None:
        pytest.skip("libflashmem.so not built (make -C clients/c); the pure-Python CRC was checked")


DECODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "decode.py")


def _run_decode(daemon, *args, env=None):
    return subprocess.run([sys.executable, DECODE, "--socket", daemon.socket, "--small", *args], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **(env or {})))


def test_reference_decoder_pure(daemon):
    r = _run_decode(daemon, "--pure")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["decode_steps"] == 128 and out["checks_bit_exact"] == 128 and out["attention_checks"] == 4
    bad = _run_decode(daemon, "--pure", env={"DECODE_CORRUPT_OWN": "1"})
    assert bad.returncode != 0 and "differs" in bad.stderr, bad.stdout + bad.stderr


def test_reference_decoder_torch(daemon):
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("torch is not installed for %s: the pure-Python decoder check ran instead" % sys.executable)
    r = _run_decode(daemon)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["decode_steps"] == 128 and out["checks_bit_exact"] == 128 and out["reserve_kind"] == 0
    assert 0 < out["entries_attended_mean"] < out["entries_full_final"]
    pm = _run_decode(daemon, "--page-major")
    assert pm.returncode == 0, pm.stdout + pm.stderr
    assert json.loads(pm.stdout.strip().splitlines()[-1])["page_major"] is True
    bad = _run_decode(daemon, env={"DECODE_CORRUPT_OWN": "1"})
    assert bad.returncode != 0 and "differs" in bad.stderr, bad.stdout + bad.stderr


def test_torch_reserve_views(client):
    torch = pytest.importorskip("torch")
    from flashmem.torch import ReserveTensors, page_slots
    rng = random.Random(9)
    lay = small_layout(8)
    with client.open(lay) as s:
        fill(s, 2, 130, rng)
        with s.cycle(queries(3, HIDDEN, rng), position=600) as r, ReserveTensors(s) as rt:
            pages, slots = page_slots(r.pages_raw)
            assert pages.tolist() == [p for p, _ in r.pages] and slots.tolist() == [sl for _, sl in r.pages]
            assert rt.stacked() is None  # two layers of different row sizes
            for ly in range(2):
                v = rt.layers[ly]
                assert tuple(v.shape) == (8, lay.layers[ly].row_bytes) and v.dtype == torch.uint8
                for sl in slots.tolist():
                    assert bytes(v[sl].tolist()) == bytes(s.row(ly, sl))


def test_page_major_reserve(client):
    rng = random.Random(10)
    lay = small_layout(16)
    with client.open(lay, page_major=True) as s:
        r0 = s.region
        assert r0.strides is not None and len(r0.strides) == 2
        assert all(st >= row for st, (_, row) in zip(r0.strides, r0.layers))
        # a slot holds the page's rows back to back, layer 0 first
        assert r0.layers[1][0] - r0.layers[0][0] == r0.layers[0][1]
        fill(s, 12, 300, rng)
        with s.cycle(queries(3, HIDDEN, rng), position=1200) as r:
            check_pages(s, 12, r)
            try:
                import numpy  # noqa: F401
            except ImportError:
                return
            for ly in range(2):
                a = s.numpy_layer(ly)
                for _, sl in r.pages:
                    assert a[sl].tobytes() == bytes(s.row(ly, sl))
