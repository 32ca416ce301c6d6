"""More of docs/protocol.md against a real flashmemd, with the document-only client of
test_protocol_doc.py (no flashmem import, nothing read from proto/): the ops, fields and error
paths that file does not reach — RESUME/CLOSE/PERSIST/COMMIT error paths, use after CLOSE and
DELETE, the admin lifecycle of 10.11 (SAVE, detached, EVICT, on-ssd, DELETE), FALLBACK and
NO_SPACE (15.3, 15.5), a page-major data path (10.2, 11), and the configured limits of section 9
against a daemon of this module's own whose [limits] are set small."""

import json
import mmap
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

import test_protocol_doc as d
from conftest import Daemon
from test_protocol_doc import (Conn, frame, header, s16, policy, layout, open_body, open_ok, key, append_body,
                               queries, entry, cycle_body, parse_cycle, parse_region)

OK = 0
F_RESP, F_ERR, F_FDS = d.F_RESP, d.F_ERR, d.F_FDS
HELLO, PING, OPEN, RESUME, CLOSE, PERSIST = d.HELLO, d.PING, d.OPEN, d.RESUME, d.CLOSE, d.PERSIST
APPEND, COMMIT, CYCLE, RELEASE = d.APPEND, d.COMMIT, d.CYCLE, d.RELEASE
STATUS, SESSIONS, INSPECT, EVICT, MODELS, VERIFY, DELETE, SAVE = (d.STATUS, d.SESSIONS, d.INSPECT, d.EVICT,
                                                                  d.MODELS, d.VERIFY, d.DELETE, d.SAVE)
CLUSTER = 0x0048
(BAD_FRAME, UNSUPPORTED_VERSION, FRAME_TOO_LARGE, UNKNOWN_OP, CHECKSUM, BAD_REQUEST, UNKNOWN_SESSION,
 NOT_OWNER, DUPLICATE_CHUNK, CHUNK_GAP, PAYLOAD_SIZE, NO_CHUNKS, BAD_LAYOUT, LIMIT_EXCEEDED, INTEGRITY,
 NO_SPACE, UNKNOWN_MODEL, UNKNOWN_LEASE, SESSION_EXISTS, PERMISSION_DENIED, SHUTTING_DOWN, INTERNAL,
 HANDSHAKE_REQUIRED, UNAVAILABLE) = range(1, 25)

model = d.model  # the module-scoped fixture: the default model from MODELS


def uniq(tag):
    return "doc2-%s-%d-%d" % (tag, os.getpid(), time.monotonic_ns() % 1000000007)


def closefds(r):
    for fd in r.fds:
        os.close(fd)
    return r


def sessions_by_name(c, name):
    return [x for x in c.json(SESSIONS)["sessions"] if x.get("name") == name]


def wait_state(c, name, state, within=15.0):
    """Connection ends are handled by the daemon in the background: poll SESSIONS."""
    deadline = time.monotonic() + within
    while True:
        got = sessions_by_name(c, name)
        if got and got[0]["state"] == state:
            return got[0]
        assert time.monotonic() < deadline, (name, state, got)
        time.sleep(0.05)


def inline_append(c, m, sess, first, n):
    r = c.request(APPEND, append_body(m, sess, first, n))
    assert r.code is None, r
    assert r.body == struct.pack("<Q", first + n)


def cycle_ok(c, sess, step, pos, m):
    res = parse_cycle(c.call(CYCLE, cycle_body([entry(sess, step, pos, queries(m))])).body)
    assert len(res) == 1 and res[0]["status"] == OK, res
    return res[0]


# ---------------------------------------------------------------------------------------------
# sections 3, 4, 6, 10.1: ops and HELLO bodies


def test_unknown_ops_keep_the_stream(daemon):
    c = Conn(daemon.socket)
    for op in (0x0000, 0x0003, 0x0014, 0x0022, 0x0032, 0x0049, 0x0100, 0xFFFF):
        r = c.request(op, b"abc")
        assert (r.code, r.op) == (UNKNOWN_OP, op), (hex(op), r)
    assert c.request(PING, b"").body == b""  # PING with an empty body echoes nothing
    c.close()


def test_hello_body_errors(daemon):
    c = Conn(daemon.socket, hello=False)
    for body in (struct.pack("<HH", 1, 1) + s16("n" * 256),  # client name above 255 bytes
                 struct.pack("<HH", 1, 1) + s16("x") + b"\0",  # trailing bytes
                 struct.pack("<HH", 1, 1) + b"\x05\x00ab",  # str16 longer than the body
                 struct.pack("<HH", 1, 1) + s16(b"\xc3\x28"),  # invalid UTF-8
                 struct.pack("<H", 1)):  # cut short
        assert c.request(HELLO, body).code == BAD_REQUEST, body
    r = closefds(c.request(HELLO, struct.pack("<HH", 0, 1) + s16("n" * 255)))  # the connection stayed before HELLO
    assert r.code is None and struct.unpack_from("<H", r.body)[0] == 1, r
    c.close()


def test_reply_header_version_after_bad_version(daemon):
    # section 6: the error reply to a request whose version the daemon does not speak carries version 1
    c = Conn(daemon.socket)
    rid = c.next()
    c.send(frame(PING, rid, b"v", version=7))
    r = c.recv()  # Conn.recv asserts the reply header's version is 1
    assert (r.code, r.rid, r.op) == (UNSUPPORTED_VERSION, rid, PING)
    c.close()


def test_frame_of_exactly_max_body_is_accepted(ldaemon):
    # the limit is inclusive: body_len == max_body passes check 3 (PING echoes it); max_body is
    # 64 KiB on this daemon, so the pure-Python CRC stays cheap
    c = Conn(ldaemon.socket)
    assert c.max_body == 65536
    body = bytes(range(256)) * (c.max_body // 256) + b"\x01" * (c.max_body % 256)
    r = c.request(PING, body)
    assert r.code is None and r.body == body
    c.close()


# ---------------------------------------------------------------------------------------------
# 10.4 RESUME, 10.5 CLOSE, 10.6 PERSIST, 10.7 COMMIT: error paths; use after CLOSE


def test_resume_close_persist_commit_errors(daemon, model):
    c = Conn(daemon.socket)
    name = uniq("rcp")
    assert c.request(RESUME, s16(name)).code == UNKNOWN_SESSION
    assert c.request(RESUME, s16("r" * 256)).code == BAD_REQUEST
    assert c.request(RESUME, s16(name) + b"\0").code == BAD_REQUEST
    assert c.request(RESUME, b"\x01").code == BAD_REQUEST
    sess, rd, fd = open_ok(c, model, name=name, persist=1)
    os.close(fd)
    inline_append(c, model, sess, 0, 70)
    # RESUME of a session this connection holds: same id, a new descriptor of the same region
    r = c.call(RESUME, s16(name))
    assert len(r.fds) == 1 and r.flags == F_RESP | F_FDS
    os.close(r.fds[0])
    s2, chunks, persist = struct.unpack_from("<QQI", r.body)
    assert (s2, chunks, persist) == (sess, 70, 1)
    # PERSIST
    assert c.request(PERSIST, struct.pack("<QI", sess, 1)).code == BAD_REQUEST  # cluster: no [cluster] here
    assert c.request(PERSIST, struct.pack("<Q", sess + 999999)).code == UNKNOWN_SESSION
    assert c.request(PERSIST, struct.pack("<Q", sess) + b"\0").code == BAD_REQUEST  # 9 bytes
    assert c.request(PERSIST, struct.pack("<I", 1)).code == BAD_REQUEST
    # CLOSE bodies
    assert c.request(CLOSE, struct.pack("<Q", sess)).code == BAD_REQUEST  # delete is not optional
    assert c.request(CLOSE, struct.pack("<QI", sess, 2)).code == BAD_REQUEST  # bool32
    assert c.request(CLOSE, struct.pack("<QIB", sess, 0, 0)).code == BAD_REQUEST
    # COMMIT: first_chunk, count and key rules (15.2)
    res = cycle_ok(c, sess, 0, 280, model)
    assert {p for p, _ in res["tail"]} == {1, 2}
    k1 = key(model) * model["target_layers"]

    def commit(first, count, keys):
        return struct.pack("<QQII", sess, first, count, 0) + struct.pack("<I", len(keys)) + keys

    for body, code in [
        (commit(0, 1, k1), DUPLICATE_CHUNK),
        (commit(69, 1, k1), DUPLICATE_CHUNK),
        (commit(71, 1, k1), CHUNK_GAP),
        (commit(70, 2, k1), PAYLOAD_SIZE),
        (commit(70, 1, k1[:-1]), PAYLOAD_SIZE),
        (commit(70, 0, b""), BAD_REQUEST),
        (commit(70, 1, k1) + b"\0", BAD_REQUEST),
        (commit(70, 1, k1)[:-1], BAD_REQUEST),
        (struct.pack("<QQII", sess, 70, 1, 0) + struct.pack("<I", len(k1) + 1) + k1, BAD_REQUEST),  # count past the end
    ]:
        r = c.request(COMMIT, body)
        assert r.code == code, (body[:28].hex(), r)
    # a failed COMMIT changed nothing: the count is still 70
    assert c.call(COMMIT, commit(70, 1, k1)).body == struct.pack("<Q", 71)
    # APPEND and COMMIT may alternate freely
    inline_append(c, model, sess, 71, 2)
    # CLOSE with delete: gone from every tier; its lease ends with it (15.4)
    assert c.call(CLOSE, struct.pack("<QI", sess, 1)).body == b""
    assert c.request(RELEASE, struct.pack("<IQ", 1, res["lease"])).code == UNKNOWN_LEASE
    assert c.request(APPEND, append_body(model, sess, 73, 1)).code == UNKNOWN_SESSION
    assert c.request(COMMIT, commit(73, 1, k1)).code == UNKNOWN_SESSION
    assert c.request(PERSIST, struct.pack("<Q", sess)).code == UNKNOWN_SESSION
    assert c.request(CLOSE, struct.pack("<QI", sess, 1)).code == UNKNOWN_SESSION
    assert c.request(RESUME, s16(name)).code == UNKNOWN_SESSION
    assert c.request(INSPECT, json.dumps({"name": name}).encode()).code == UNKNOWN_SESSION
    assert sessions_by_name(c, name) == []
    c.close()


def test_cycle_frame_edges(daemon, model):
    c = Conn(daemon.socket)
    sess, rd, fd = open_ok(c, model)
    os.close(fd)
    inline_append(c, model, sess, 0, 10)
    # n_entries 0: a reply with no results
    assert c.call(CYCLE, struct.pack("<I", 0)).body == struct.pack("<I", 0)
    # entries for many sessions in one frame, results in entry order
    s2, _, fd = open_ok(c, model)
    os.close(fd)
    res = parse_cycle(c.call(CYCLE, cycle_body([entry(s2, 0, 0, queries(model)),
                                                 entry(sess, 0, 40, queries(model))])).body)
    assert [x["status"] for x in res] == [NO_CHUNKS, OK] and res[1]["chunks"] == 10
    # truncated entries: a count that runs past the end fails the frame
    e = entry(sess, 1, 40, queries(model))
    for body in (struct.pack("<I", 1) + e[:-1], struct.pack("<I", 2) + e, b"\1\0"):
        assert c.request(CYCLE, body).code == BAD_REQUEST, body[:8]
    c.close()


# ---------------------------------------------------------------------------------------------
# 10.11 admin: SAVE, detached, EVICT, on-ssd, VERIFY, DELETE; field presence


def test_admin_lifecycle(daemon, model):
    name = uniq("life")
    a = Conn(daemon.socket)
    sess, rd, fd = open_ok(a, model, name=name)  # named, not persisted
    os.close(fd)
    inline_append(a, model, sess, 0, 70)
    assert a.request(PERSIST, struct.pack("<Q", sess)).code == BAD_REQUEST  # not persisted yet
    c = Conn(daemon.socket)
    ev = c.json(SAVE, {"name": name})
    assert ev["sessions"] == [sess] and ev["bytes"] > 0 and not ev.get("demoted") and not ev.get("on_ssd_only"), ev
    assert a.call(PERSIST, struct.pack("<Q", sess)).body == b""  # made persistent by SAVE
    info = sessions_by_name(c, name)[0]
    assert info["persist"] is True and info["state"] == "attached" and info["attached"] is True
    assert info["chunks"] == 70 and info["pages"] == 2 and info["id"] == sess and info["model"] == model["name"]
    # its connection ends without CLOSE: detached, still in memory, no client
    a.close()
    info = wait_state(c, name, "detached")
    assert info.get("attached", False) is False and "client" not in info, info
    # EVICT of a detached persisted session: it leaves memory, stays resumable
    ev = c.json(EVICT, {"name": name})
    assert ev["sessions"] == [sess] and not ev.get("demoted") and not ev.get("on_ssd_only"), ev
    info = wait_state(c, name, "on-ssd")
    assert info["chunks"] == 70 and "last_used" in info, info
    ev = c.json(EVICT, {"name": name})
    assert ev.get("on_ssd_only") is True, ev
    ev = c.json(SAVE, {"name": name})
    assert ev.get("on_ssd_only") is True, ev
    v = c.json(VERIFY, {"name": name})
    assert v["pages"] == 2 and v["verified"] == 2 and v["bad"] == 0 and not v.get("in_memory"), v
    assert v["session"] == sess and v["name"] == name and v["bytes"] > 0, v
    ins = c.json(INSPECT, {"name": name})
    assert ins["session"]["state"] == "on-ssd" and ins["layout"]["reserve_slots"] == 16, ins
    # by id among the persisted ones
    assert c.json(INSPECT, {"session": sess})["session"]["name"] == name
    # unknown fields are ignored
    assert c.json(INSPECT, {"name": name, "future_field": [1, 2]})["session"]["id"] == sess
    ev = c.json(DELETE, {"name": name})
    assert ev["sessions"] == [sess] and ev.get("on_ssd_only") is True, ev
    assert sessions_by_name(c, name) == []
    for op in (INSPECT, EVICT, VERIFY, DELETE, SAVE):
        assert c.request(op, json.dumps({"name": name}).encode()).code == UNKNOWN_SESSION, hex(op)
        assert c.request(op, json.dumps({"session": 987654321}).encode()).code == UNKNOWN_SESSION, hex(op)
    assert c.request(RESUME, s16(name)).code == UNKNOWN_SESSION
    c.close()


@pytest.mark.parametrize("op", [INSPECT, EVICT, VERIFY, DELETE, SAVE])
def test_admin_request_bodies(daemon, op):
    c = Conn(daemon.socket)
    for body in (b"", b"[]", b"null", b'"x"', b"{}", b'{"name": ""}', b'{"session": "12"}', b'{"name": 5}', b'{"session": -1}', b'{"session": 1.5}',
                 b'{"session": 1, "name": "x"}', b"{nope", b'{"name": "x"} {}', json.dumps({"name": "n" * 256}).encode()):
        r = c.request(op, body)
        assert r.code == BAD_REQUEST, (hex(op), body, r)
    c.close()


def test_empty_body_admin_ops(daemon):
    c = Conn(daemon.socket)
    for op in (STATUS, SESSIONS, MODELS):
        assert c.request(op, b"{}").code == BAD_REQUEST, hex(op)
        assert c.request(op, b" ").code == BAD_REQUEST, hex(op)
    c.close()


def test_status_sessions_inspect_fields(daemon, model):
    c = Conn(daemon.socket)
    name = uniq("fields")
    sess, rd, fd = open_ok(c, model, name=name, pol=policy(first_keep=64, last_keep=64, kmax=3))
    os.close(fd)
    inline_append(c, model, sess, 0, 300)
    res = cycle_ok(c, sess, 0, 1200, model)
    st = c.json(STATUS)
    for k in ("instance", "server", "protocol", "uptime_seconds", "connections", "sessions", "leases", "tiers",
              "counters"):
        assert k in st, k
    assert st["protocol"] == 1 and st["connections"] >= 1 and st["sessions"] >= 1 and st["leases"] >= 1
    assert len(st["instance"]) == 32 and st["instance"] == c.instance
    assert isinstance(st["counters"], dict) and all(isinstance(v, (int, float)) for v in st["counters"].values())
    assert st["tiers"], st
    for t in st["tiers"]:
        assert isinstance(t["name"], str)
        for k in ("used_bytes", "capacity_bytes", "pages", "hits", "misses", "read_bytes", "written_bytes"):
            assert isinstance(t.get(k, 0), int), (t, k)
    info = [x for x in c.json(SESSIONS)["sessions"] if x["id"] == sess][0]
    for k in ("id", "name", "model", "owner_uid", "attached", "client", "chunks", "pages", "state", "last_used"):
        assert k in info, k
    assert info["owner_uid"] == os.getuid() and info["pages"] == 5 and info["chunks"] == 300
    assert info.get("persist", False) is False and info.get("fallback", False) is False
    assert isinstance(info.get("cycles", 0), int) and isinstance(info.get("bytes", 0), int)
    assert set(info.get("tier_pages", {})) <= {"reserve", "host", "ssd"}, info
    ins = c.json(INSPECT, {"session": sess})
    assert ins["session"]["id"] == sess
    assert "page_major" not in ins["layout"], ins["layout"]  # per-layer reserve
    pol = ins["policy"]
    assert pol["first_keep"] == 64 and pol["last_keep"] == 64 and pol["kmax"] == 3, pol
    assert pol.get("kmax_ratio", 0) == 0, pol  # a kmax in force comes with kmax_ratio 0 (10.4)
    assert ins["leases"] == 1 and isinstance(ins.get("above_fraction", 0), (int, float))
    assert sorted(ins.get("resident", [])) == sorted(set(ins.get("resident", [])))
    assert {p for p, _ in res["table"]} <= set(ins.get("resident", [])), (res, ins)
    assert isinstance(ins.get("tier_pages", {}), dict)
    assert c.json(SESSIONS)["sessions"] is not None
    c.close()
    c = Conn(daemon.socket)  # the ephemeral session went with its connection
    deadline = time.monotonic() + 10
    while [x for x in c.json(SESSIONS)["sessions"] if x["id"] == sess]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    c.close()


def test_cluster_op_without_cluster(daemon):
    c = Conn(daemon.socket)
    for body in ({"action": "status"}, {"action": "join", "addr": "127.0.0.1:1"}, {"action": "remove", "id": "x"}):
        r = c.request(CLUSTER, json.dumps(body).encode())
        assert r.code == BAD_REQUEST, (body, r)
    assert c.request(CLUSTER, b"{nope").code == BAD_REQUEST
    c.close()


def test_use_after_delete_and_double_attach(daemon, model):
    name = uniq("del")
    a = Conn(daemon.socket)
    b = Conn(daemon.socket)
    sess, rd, fd = open_ok(a, model, name=name, persist=1)
    os.close(fd)
    inline_append(a, model, sess, 0, 5)
    assert a.request(OPEN, open_body(model, name=name, persist=1)).code == SESSION_EXISTS
    assert b.request(OPEN, open_body(model, name=name)).code == SESSION_EXISTS
    assert b.request(RESUME, s16(name)).code == NOT_OWNER  # held by a
    assert b.request(DELETE, json.dumps({"session": sess}).encode()).code == NOT_OWNER
    lease = cycle_ok(a, sess, 0, 20, model)["lease"]
    ev = a.json(DELETE, {"session": sess})  # the holding connection may delete it
    assert ev["sessions"] == [sess], ev
    for op, body in ((APPEND, append_body(model, sess, 5, 1)), (PERSIST, struct.pack("<Q", sess)),
                     (CLOSE, struct.pack("<QI", sess, 0))):
        assert a.request(op, body).code == UNKNOWN_SESSION, hex(op)
    assert parse_cycle(a.call(CYCLE, cycle_body([entry(sess, 1, 20, queries(model))])).body)[0]["status"] == UNKNOWN_SESSION
    assert a.request(RELEASE, struct.pack("<IQ", 1, lease)).code == UNKNOWN_LEASE  # its leases ended
    assert b.request(RESUME, s16(name)).code == UNKNOWN_SESSION
    # the name is free again
    s3, _, fd = open_ok(b, model, name=name)
    os.close(fd)
    assert s3 != sess
    a.close()
    b.close()


# ---------------------------------------------------------------------------------------------
# 10.9 FALLBACK, 15.5 NO_SPACE; 10.2 page-major data path


def _keys(m, first, n):
    """Varied finite keys, layer-major (11): fp8 codes below 0x70, f32 scale 1."""
    kb, tl = m["key_bytes"], m["target_layers"]
    out = bytearray()
    for t in range(tl):
        for i in range(n):
            c = first + i
            out += bytes(((c * 31 + j * 7 + t * 13) ^ (c >> 3)) % 0x70 for j in range(kb - 4)) + struct.pack("<f", 1.0)
    return bytes(out)


def test_fallback_and_no_space(daemon, model):
    c = Conn(daemon.socket)
    pol = policy(first_keep=64, last_keep=64, kmax=1, fallback_ratio=1e-9)
    big, _, fd = open_ok(c, model, pol=pol, lay=layout(model, slots=40))
    os.close(fd)
    small, _, fd = open_ok(c, model, pol=pol, lay=layout(model, slots=6))
    os.close(fd)
    n = 640  # 10 pages
    for s in (big, small):
        for first in range(0, n, 160):
            r = c.call(APPEND, append_body(model, s, first, 160, keys=_keys(model, first, 160)))
            assert r.body == struct.pack("<Q", first + 160)
    got = None
    for step in range(6):
        raw = c.call(CYCLE, cycle_body([entry(big, step * 64, 4 * n + step, queries(model, 0x3F80 + step)),
                                        entry(small, step * 64, 4 * n + step, queries(model, 0x3F80 + step))])).body
        res = parse_cycle(raw)
        leases = [x["lease"] for x in res if x["status"] == OK]
        flags = struct.unpack_from("<I", raw, 4 + 44)[0] if res[0]["status"] == OK else None
        if leases:
            c.call(RELEASE, struct.pack("<I", len(leases)) + b"".join(struct.pack("<Q", x) for x in leases))
        if flags and flags & 1:
            got = (res, step)
            break
    assert got, "no FALLBACK flag within 6 cycles with fallback_ratio 1e-9"
    res, step = got
    # the switch shows in the flag at once; the page table is the previous cycle's selection
    # (LSA applies it one cycle late), so every page is in the table from the next cycle on
    raw = c.call(CYCLE, cycle_body([entry(big, 999, 4 * n + 99, queries(model)),
                                    entry(small, 999, 4 * n + 99, queries(model))])).body
    res = parse_cycle(raw)
    assert struct.unpack_from("<I", raw, 4 + 44)[0] & 1
    assert [p for p, _ in res[0]["table"]] == list(range(10)), res[0]  # full residency: every page
    assert res[1]["status"] == NO_SPACE, res[1]  # 6 slots < pages + tail (15.5)
    assert [x for x in c.json(SESSIONS)["sessions"] if x["id"] == big][0].get("fallback") is True
    c.close()


def test_page_major_data_path(daemon, model):
    CPP, SEGS = 64, ((6, 2), (4,))
    ROWS = (512, 300)
    c = Conn(daemon.socket)
    lay = layout(model, layers=tuple(zip(ROWS, SEGS)))
    sess, rd, fd = open_ok(c, model, lay=lay, flags=1)
    reserve = mmap.mmap(fd, rd["size"])
    os.close(fd)
    stride = (512 + 300 + 255) // 256 * 256
    assert rd["strides"] == [stride, stride] and rd["size"] >= 16 * stride, rd
    offs = [o for o, _ in rd["layers"]]
    assert offs == [0, 512] and [rb for _, rb in rd["layers"]] == list(ROWS), rd

    def cb(c_, l, s):  # chunk c_'s bytes of layer l, segment s
        return bytes((c_ * 11 + l * 5 + s * 3 + j) % 256 for j in range(SEGS[l][s]))

    n = 100
    payload = b""
    for l, segs in enumerate(SEGS):  # layer-major, then segment-major, then chunk
        for s in range(len(segs)):
            payload += b"".join(cb(i, l, s) for i in range(n))
    assert c.call(APPEND, append_body(model, sess, 0, n, payload=payload)).body == struct.pack("<Q", n)
    res = cycle_ok(c, sess, 0, 4 * n, model)
    assert res["table"], res
    for page, slot in res["table"]:
        for l, segs in enumerate(SEGS):
            base = offs[l] + slot * rd["strides"][l]
            for ci in range(page * CPP, min((page + 1) * CPP, n)):
                i = ci % CPP
                for s, sz in enumerate(segs):
                    o = base + CPP * sum(segs[:s]) + i * sz
                    assert reserve[o:o + sz] == cb(ci, l, s), (page, l, ci, s)
    # INSPECT shows the layout as sent
    lo = c.json(INSPECT, {"session": sess})["layout"]
    assert lo["layers"] == [{"row_bytes": 512, "segments": [6, 2]}, {"row_bytes": 300, "segments": [4]}], lo
    assert lo.get("page_major") is True, lo
    reserve.close()
    # strides that change nothing are omitted (one encoding per reply): one layer whose row is a
    # multiple of 256 bytes is laid out the same either way; one that is not gets a stride
    for row, want in ((512, None), (520, [768])):
        s, rd, fd = open_ok(c, model, lay=layout(model, layers=((row, (6, 2)),)), flags=1)
        os.close(fd)
        assert rd["strides"] == want and rd["size"] >= 16 * (want or [row])[0], (row, rd)
        assert c.json(INSPECT, {"session": s})["layout"].get("page_major") is True
    c.close()


# ---------------------------------------------------------------------------------------------
# section 9: configured limits, against a daemon of this module's own

LIMITS_CONFIG = """
log_level = "debug"
[gpu]
mode = "off"
[host]
budget_bytes = 67108864
[limits]
max_frame_bytes = 65536
staging_bytes = 0
max_conns = 8
max_conns_per_uid = 3
admin_reserved_conns = 2
max_sessions_per_conn = 2
max_sessions = 64
max_sessions_per_uid = 1000
max_session_bytes = 8192
max_host_reserve_bytes = 16384
idle_timeout = "3s"
frame_timeout = "1s"
lease_timeout = "2s"
detached_ttl = "2s"
[indexer]
default_model = "small"
first_keep = 64
last_keep = 64
fallback_ratio = 1.0
[[indexer.random]]
name = "small"
seed = 7
hidden = 64
rank = 32
heads = 4
head_dim = 128
target_layers = 3
"""


@pytest.fixture(scope="module")
def ldaemon(flashmemd_bin):
    root = tempfile.mkdtemp(prefix="flashmem-py-lim-")
    dm = Daemon(flashmemd_bin, root, config=LIMITS_CONFIG).start()
    yield dm
    dm.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def lmodel(ldaemon):
    c = Conn(ldaemon.socket)
    ms = c.json(MODELS)
    c.close()
    return next(x for x in ms["models"] if x["name"] == ms["default_model"])


def lconn(ld):
    c = Conn(ld.socket)
    assert c.staging is None and c.staging_size == 0
    return c


def test_limits_in_hello_and_models(ldaemon):
    c = lconn(ldaemon)
    lim = c.json(MODELS)["limits"]
    assert c.max_body == 65536 and c.max_sessions == 2 and c.staging_size == 0
    assert lim["max_frame_bytes"] == 65536 and lim["staging_bytes"] == 0 and lim["max_conns"] == 8
    assert lim["max_conns_per_uid"] == 3 and lim["admin_reserved_conns"] == 2 and lim["max_sessions_per_conn"] == 2
    assert lim["idle_timeout_seconds"] == 3 and lim["frame_timeout_seconds"] == 1
    assert lim["lease_timeout_seconds"] == 2 and lim["detached_ttl_seconds"] == 2
    assert lim["max_session_bytes"] == 8192
    assert lim["max_host_reserve_bytes"] == 16384
    assert lim["max_sessions"] == 64 and lim["max_sessions_per_uid"] == 48  # >= max_sessions: 64 - 64 // 4
    c.close()


def test_limit_frame_size_and_staging(ldaemon, lmodel):
    c = lconn(ldaemon)
    sess, rd, fd = open_ok(c, lmodel, lay=layout(lmodel, slots=8))
    os.close(fd)
    # no staging region: a staged APPEND is BAD_REQUEST
    r = c.request(APPEND, append_body(lmodel, sess, 0, 1, inline=False, offset=0, payload=b"\0" * 8))
    assert r.code == BAD_REQUEST, r
    # 15.2: 44 + count x target_layers x key_bytes + payload must fit max_body
    per = lmodel["target_layers"] * lmodel["key_bytes"] + 8
    n = (c.max_body - 44) // per
    body = append_body(lmodel, sess, 0, n)
    assert len(body) <= c.max_body < len(body) + per
    assert c.call(APPEND, body).body == struct.pack("<Q", n)
    rid = c.next()
    c.send(frame(APPEND, rid, append_body(lmodel, sess, n, n + 1)))
    r = c.recv()
    assert (r.code, r.rid, r.op) == (FRAME_TOO_LARGE, rid, APPEND), r
    assert c.at_eof()
    c.close()


def test_limit_sessions_per_conn_and_session_bytes(ldaemon, lmodel):
    c = lconn(ldaemon)
    lay = layout(lmodel, slots=8)  # page_bytes 512: max_session_bytes 8192 = 16 pages = 1024 chunks
    s1, _, fd = open_ok(c, lmodel, lay=lay)
    os.close(fd)
    s2, _, fd = open_ok(c, lmodel, lay=lay)
    os.close(fd)
    r = closefds(c.request(OPEN, open_body(lmodel, lay=lay)))
    assert r.code == LIMIT_EXCEEDED, r
    assert c.call(CLOSE, struct.pack("<QI", s2, 0)).body == b""
    s3, _, fd = open_ok(c, lmodel, lay=lay)  # a slot again after CLOSE
    os.close(fd)
    # RESUME counts against max_sessions_per_conn too (10.4)
    name = uniq("perconn")
    o = lconn(ldaemon)
    sp, _, fd = open_ok(o, lmodel, name=name, persist=1, lay=lay)
    os.close(fd)
    o.call(CLOSE, struct.pack("<QI", sp, 0))
    o.close()
    r = closefds(c.request(RESUME, s16(name)))
    assert r.code == LIMIT_EXCEEDED, r
    first = 0
    while first < 1024:
        cnt = min(120, 1024 - first)
        inline_append(c, lmodel, s1, first, cnt)
        first += cnt
    r = c.request(APPEND, append_body(lmodel, s1, 1024, 1))
    assert r.code == LIMIT_EXCEEDED, r
    assert c.call(APPEND, append_body(lmodel, s3, 0, 1)).body == struct.pack("<Q", 1)
    c.close()


def test_limit_lease_timeout(ldaemon, lmodel):
    c = lconn(ldaemon)
    sess, _, fd = open_ok(c, lmodel, lay=layout(lmodel, slots=8))
    os.close(fd)
    inline_append(c, lmodel, sess, 0, 10)
    l1 = cycle_ok(c, sess, 0, 40, lmodel)["lease"]
    l2 = cycle_ok(c, sess, 64, 41, lmodel)["lease"]
    assert c.call(RELEASE, struct.pack("<IQ", 1, l2)).body == b""
    t0 = time.monotonic()
    time.sleep(0.3)
    assert c.json(INSPECT, {"session": sess})["leases"] == 1  # not before lease_timeout (2 s)
    while c.json(INSPECT, {"session": sess})["leases"] > 0:  # reclaimed, though the client stays connected
        assert time.monotonic() - t0 < 20
        time.sleep(0.1)
    assert c.request(RELEASE, struct.pack("<IQ", 1, l1)).code == UNKNOWN_LEASE
    assert c.request(PING, b"alive").body == b"alive"  # holding a session: never closed for silence
    c.close()


def test_limit_idle_and_frame_timeouts(ldaemon, lmodel):
    idle = lconn(ldaemon)
    holder = lconn(ldaemon)
    s, _, fd = open_ok(holder, lmodel, lay=layout(lmodel, slots=8))
    os.close(fd)
    partial = lconn(ldaemon)
    partial.send(frame(PING, 77, b"abcdef")[:20])
    t0 = time.monotonic()
    r = partial.recv()
    assert (r.code, r.rid, r.op) == (BAD_FRAME, 0, 0) and time.monotonic() - t0 < 8, r  # frame_timeout 1 s
    assert partial.at_eof()
    partial.close()
    r = idle.recv()  # idle_timeout 3 s, holding nothing
    assert (r.code, r.rid, r.op) == (LIMIT_EXCEEDED, 0, 0), r
    assert idle.at_eof()
    idle.close()
    assert holder.request(PING, b"still").body == b"still"
    holder.close()


def test_limit_detached_ttl(ldaemon, lmodel):
    name = uniq("ttl")
    a = lconn(ldaemon)
    sess, _, fd = open_ok(a, lmodel, name=name, persist=1, lay=layout(lmodel, slots=8))
    os.close(fd)
    inline_append(a, lmodel, sess, 0, 3)
    a.close()
    c = lconn(ldaemon)
    info = wait_state(c, name, "on-ssd", within=20)  # detached for detached_ttl (2 s), then SSD only
    assert info["chunks"] == 3
    r = c.call(RESUME, s16(name))
    closefds(r)
    assert struct.unpack_from("<QQ", r.body)[1] == 3
    c.call(CLOSE, struct.pack("<QI", struct.unpack_from("<Q", r.body)[0], 1))
    c.close()


def test_limit_conns_per_uid(ldaemon):
    # max_conns_per_uid 3; root (an admin) may exceed it by admin_reserved_conns (2)
    probe = lconn(ldaemon)
    deadline = time.monotonic() + 10
    while probe.json(STATUS)["connections"] > 1:  # earlier tests' connections are gone
        assert time.monotonic() < deadline
        time.sleep(0.05)
    allowed = 3 + (2 if os.geteuid() == 0 else 0)
    conns = [probe]
    try:
        for _ in range(allowed - 1):
            conns.append(lconn(ldaemon))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect(ldaemon.socket)
        x = Conn.__new__(Conn)
        x.s = s
        try:
            x.send(frame(HELLO, 1, struct.pack("<HH", 1, 1) + s16("over")))
        except OSError:
            pass  # a robust client reads after a failed write
        r = x.recv()
        assert (r.code, r.rid, r.op) == (LIMIT_EXCEEDED, 0, 0), r
        assert x.at_eof()
        s.close()
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------------------------------------
# section 8 SHUTTING_DOWN, 10.1 instance_id, 10.2 persist across restarts, 10.4 RESUME reply,
# 10.9 DAMAGED list, INTEGRITY on APPEND, 10.11 VERIFY damage


def test_shutdown_restart_and_damage(fresh_daemon, model):
    name = uniq("restart")
    pol = policy(first_keep=64, last_keep=64, kmax=8)
    a = Conn(fresh_daemon.socket)
    inst1 = a.instance
    sess, rd, fd = open_ok(a, model, name=name, persist=1, pol=pol)
    os.close(fd)
    for first in range(0, 250, 125):  # the last of 4 pages is partial
        inline_append(a, model, sess, first, 125)
    assert a.call(PERSIST, struct.pack("<QI", sess, 0)).body == b""
    b = Conn(fresh_daemon.socket)  # holds nothing
    fresh_daemon.stop()  # SIGTERM: every connection gets SHUTTING_DOWN as a connection-level frame
    for c in (a, b):
        r = c.recv()
        assert (r.code, r.rid, r.op) == (SHUTTING_DOWN, 0, 0), r
        assert c.at_eof()
        c.close()
    # flip a byte in every stored page record (storage internals, not the protocol: the SSD
    # journal's page records start with "FMPG" on 4 KiB boundaries)
    import glob
    flipped = 0
    for seg in glob.glob(os.path.join(fresh_daemon.data, "ssd", "pages", "*.seg")):
        with open(seg, "r+b") as f:
            data = f.read()
            for off in range(0, len(data), 4096):
                if data[off:off + 4] == b"FMPG":
                    f.seek(off + 200)
                    f.write(bytes([data[off + 200] ^ 0xFF]))
                    flipped += 1
    assert flipped > 0, "no FMPG page records under data/ssd/pages: the journal format changed (test_client's test_integrity_error corrupts the same way)"
    fresh_daemon.start()
    c = Conn(fresh_daemon.socket)
    assert c.instance != inst1  # a new daemon start
    info = wait_state(c, name, "on-ssd")
    assert info["chunks"] == 250 and info["persist"] is True
    r = closefds(c.call(RESUME, s16(name)))
    s2, chunks, persist = struct.unpack_from("<QQI", r.body)
    assert (chunks, persist) == (250, 1)
    (ml,) = struct.unpack_from("<H", r.body, 20)
    o = 22 + ml
    fk, lk, kmax, la, kr, fr = struct.unpack_from("<IIIIdd", r.body, o)
    assert (fk, lk, kmax, kr) == (64, 64, 8, 0.0), (fk, lk, kmax, la, kr, fr)  # effective policy
    assert 0 < fr <= 1 and la > 0
    raw = c.call(CYCLE, cycle_body([entry(s2, 0, 1000, queries(model))])).body
    res = parse_cycle(raw)[0]
    assert res["status"] == OK, res
    flags = struct.unpack_from("<I", raw, 4 + 44)[0]
    assert flags & 2, "no DAMAGED flag"
    o = 4 + 80 + 8 * len(res["table"]) + 4 + 8 * len(res["tail"])
    (nd,) = struct.unpack_from("<I", raw, o)
    o += 4
    damaged = {}
    for _ in range(nd):
        page, code, ml = struct.unpack_from("<IIH", raw, o)
        damaged[page] = (code, raw[o + 10:o + 10 + ml].decode())
        o += 10 + ml
    assert o == len(raw) and 1 <= nd <= 4096
    assert all(code == INTEGRITY and msg for code, msg in damaged.values()), damaged
    assert not set(damaged) & {p for p, _ in res["table"]}  # a damaged page is never served
    assert 3 in damaged, damaged  # the partial last page is forced: it must be listed
    r = c.request(APPEND, append_body(model, s2, 250, 1))  # into the damaged page
    assert r.code == INTEGRITY, r
    v = c.json(VERIFY, {"session": s2})
    assert v["bad"] >= 1 and v["damage"] and all("page" in x and "reason" in x for x in v["damage"]), v
    c.close()


# ---------------------------------------------------------------------------------------------
# sections 1, 8 and 15.6 across uids (root only: the other peer runs as nobody)

CHILD = r'''
import json, os, struct, sys
sys.path.insert(0, sys.argv[1])
import test_protocol_doc as d
sock, rootsess, rootlive, mine = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
out = {}
c = d.Conn(sock)
m = next(x for x in c.json(d.MODELS)["models"] if x["name"] == "small")
out["uid_sessions"] = sorted(x.get("name", "") for x in c.json(d.SESSIONS)["sessions"])
for op, nm in ((d.INSPECT, "inspect"), (d.EVICT, "evict"), (d.VERIFY, "verify"), (d.DELETE, "delete"), (d.SAVE, "save")):
    out[nm] = c.request(op, json.dumps({"name": rootsess}).encode()).code
    out[nm + "_live"] = c.request(op, json.dumps({"session": rootlive}).encode()).code
out["resume"] = c.request(d.RESUME, d.s16(rootsess)).code
out["cycle"] = d.parse_cycle(c.call(d.CYCLE, d.cycle_body([d.entry(rootlive, 0, 0, d.queries(m))])).body)[0]["status"]
out["append"] = c.request(d.APPEND, d.append_body(m, rootlive, 0, 1)).code
out["open_taken"] = c.request(d.OPEN, d.open_body(m, name=rootsess)).code
s, rd, fd = d.open_ok(c, m, name=mine, persist=1)
os.close(fd)
out["append_own"] = c.request(d.APPEND, d.append_body(m, s, 0, 3)).code
out["close_own"] = c.request(d.CLOSE, struct.pack("<QI", s, 0)).code
out["join"] = c.request(0x0048, json.dumps({"action": "join", "addr": "127.0.0.1:1"}).encode()).code
print(json.dumps(out))
'''

ADMIN = r'''
import json, os, struct, sys
sys.path.insert(0, sys.argv[1])
import test_protocol_doc as d
sock, rootsess, rootlive = sys.argv[2], sys.argv[3], int(sys.argv[4])
c = d.Conn(sock)
m = next(x for x in c.json(d.MODELS)["models"] if x["name"] == "small")
out = {"names": sorted(x.get("name", "") for x in c.json(d.SESSIONS)["sessions"])}
out["inspect"] = c.json(d.INSPECT, {"name": rootsess})["session"]["chunks"]
out["inspect_live"] = c.json(d.INSPECT, {"session": rootlive})["session"]["chunks"]
out["verify"] = c.json(d.VERIFY, {"name": rootsess})["bad"]
out["resume"] = c.request(d.RESUME, d.s16(rootsess)).code
out["delete_live"] = c.request(d.DELETE, json.dumps({"session": rootlive}).encode()).code
out["cycle_live"] = d.parse_cycle(c.call(d.CYCLE, d.cycle_body([d.entry(rootlive, 0, 0, d.queries(m))])).body)[0]["status"]
out["evict"] = c.json(d.EVICT, {"session": rootlive}).get("demoted", False)
print(json.dumps(out))
'''

DENIED = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import test_protocol_doc as d
c = d.Conn(sys.argv[2], hello=False)
try:
    c.send(d.frame(d.HELLO, 1, d.struct.pack("<HH", 1, 1) + d.s16("x")))
except OSError:
    pass
r = c.recv()
print(json.dumps([r.code, r.rid, r.op, c.at_eof()]))
'''


def test_other_uid(flashmemd_bin, tmp_path):
    import grp
    import sys
    if os.geteuid() != 0:
        pytest.skip("needs root to run a peer as another uid")
    try:
        grp.getgrnam("nogroup")
    except KeyError:
        pytest.skip("no group nogroup")
    root = tempfile.mkdtemp(prefix="flashmem-py-uid-")
    os.chmod(root, 0o755)
    lib = os.path.join(root, "lib")
    os.mkdir(lib)
    shutil.copy(d.__file__, lib)
    os.chmod(os.path.join(lib, os.path.basename(d.__file__)), 0o644)
    os.chmod(lib, 0o755)
    sock = os.path.join(root, "run/fm.sock")
    dm = Daemon(flashmemd_bin, root, socket=sock,
                config='allowed_groups = ["nogroup", "65533"]\nadmin_groups = ["65533"]\n' +
                LIMITS_CONFIG.split("[limits]")[0] + LIMITS_CONFIG[LIMITS_CONFIG.index("[indexer]"):])
    dm.start()
    try:
        # section 1: the socket 0660 and a directory the daemon creates 0750, both of group
        # socket_group (default: the first of allowed_groups)
        st, dst = os.stat(sock), os.stat(os.path.dirname(sock))
        assert (st.st_mode & 0o777, st.st_gid) == (0o660, 65534), (oct(st.st_mode), st.st_gid)
        assert (dst.st_mode & 0o777, dst.st_gid) == (0o750, 65534), (oct(dst.st_mode), dst.st_gid)
        c = Conn(sock)
        m = next(x for x in c.json(MODELS)["models"] if x["name"] == "small")
        rootsess, mine = uniq("root"), uniq("nobody")
        s, _, fd = open_ok(c, m, name=rootsess, persist=1)
        os.close(fd)
        inline_append(c, m, s, 0, 5)
        c.call(CLOSE, struct.pack("<QI", s, 0))  # on SSD only, owner root
        live, _, fd = open_ok(c, m, name=uniq("rootlive"))
        os.close(fd)
        inline_append(c, m, live, 0, 5)
        run = subprocess.run([sys.executable, "-c", CHILD, lib, sock, rootsess, str(live), mine], user=65534,
                             group=65534, extra_groups=[], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        out = json.loads(run.stdout)
        assert out["uid_sessions"] == [], out  # another uid's sessions are not listed
        for k in ("inspect", "evict", "verify", "delete", "save"):  # 15.6: reported as unknown
            assert out[k] == UNKNOWN_SESSION and out[k + "_live"] == UNKNOWN_SESSION, (k, out)
        assert out["resume"] == NOT_OWNER, out  # 10.4: another uid
        assert out["cycle"] == NOT_OWNER and out["append"] == NOT_OWNER, out
        assert out["open_taken"] == SESSION_EXISTS, out
        assert out["append_own"] is None and out["close_own"] is None, out
        assert out["join"] == BAD_REQUEST, out
        # root sees and acts on every uid's sessions
        info = sessions_by_name(c, mine)
        assert info and info[0]["owner_uid"] == 65534 and info[0]["state"] == "on-ssd", info
        assert c.json(INSPECT, {"name": mine})["session"]["chunks"] == 3
        r = closefds(c.call(RESUME, s16(mine)))  # root may resume it
        assert struct.unpack_from("<QQ", r.body)[1] == 3
        # a member of admin_groups (admitted through allowed_groups) sees, inspects and evicts
        # every uid's sessions, but may not resume them (10.4) nor delete one a connection holds
        # (nogroup as a supplementary group: the socket file is 0660 with group nogroup, section 1)
        run = subprocess.run([sys.executable, "-c", ADMIN, lib, sock, rootsess, str(live)], user=65533,
                             group=65533, extra_groups=[65534], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        out = json.loads(run.stdout)
        assert rootsess in out["names"] and mine in out["names"], out
        assert out["inspect"] == 5 and out["inspect_live"] == 5 and out["verify"] == 0, out
        assert out["resume"] == NOT_OWNER and out["delete_live"] == NOT_OWNER and out["cycle_live"] == NOT_OWNER, out
        assert out["evict"] is True, out
        c.close()
        # a peer in no allowed group is refused before any request: PERMISSION_DENIED, id 0
        os.chmod(sock, 0o666)
        os.chmod(os.path.dirname(sock), 0o755)
        run = subprocess.run([sys.executable, "-c", DENIED, lib, sock], user=65532, group=65532, extra_groups=[],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert json.loads(run.stdout) == [PERMISSION_DENIED, 0, 0, True], run.stdout
    finally:
        dm.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# 6 ordering, 7 versions, 10.2 device, 10.7 staging edge, 15.2 COMMIT over two tail pages


def test_pipelined_session_order(daemon, model):
    c = Conn(daemon.socket)
    sess, _, fd = open_ok(c, model)
    os.close(fd)
    q = queries(model)
    reqs = [(APPEND, append_body(model, sess, 0, 100)), (CYCLE, cycle_body([entry(sess, 0, 400, q)])),
            (APPEND, append_body(model, sess, 100, 100)), (CYCLE, cycle_body([entry(sess, 64, 800, q)])),
            (PING, b"p")]
    rids = [c.next() for _ in reqs]
    c.send(b"".join(frame(op, rid, body) for (op, body), rid in zip(reqs, rids)))  # without waiting
    got = {}
    for _ in reqs:
        r = c.recv()
        assert r.code is None, r
        got[r.rid] = r
    assert got[rids[0]].body == struct.pack("<Q", 100) and got[rids[2]].body == struct.pack("<Q", 200)
    r1, r2 = parse_cycle(got[rids[1]].body)[0], parse_cycle(got[rids[3]].body)[0]
    assert (r1["chunks"], r2["chunks"]) == (100, 200)  # each CYCLE saw the APPENDs sent before it
    c.close()


def test_version_ranges(daemon):
    c = Conn(daemon.socket, hello=False)
    assert c.request(HELLO, struct.pack("<HH", 0, 0) + s16("x")).code == UNSUPPORTED_VERSION
    r = closefds(c.request(HELLO, struct.pack("<HH", 0, 0xFFFF) + s16("x")))
    assert r.code is None and struct.unpack_from("<H", r.body)[0] == 1
    (n,) = struct.unpack_from("<H", r.body, 40)
    assert n > 0 and len(r.body) == 42 + n  # server: daemon name and build
    c.close()


def test_open_device_on_a_host_without_cuda(daemon, model):
    # the test daemon runs with [gpu] mode = "off": any device gets host memory (10.3's table)
    c = Conn(daemon.socket)
    for dev in (0xFFFFFFFF, 0xFFFFFFFE, 0, 3):
        s, rd, fd = open_ok(c, model, device=dev)
        os.close(fd)
        assert (rd["kind"], rd["device"]) == (0, 0xFFFFFFFF), (dev, rd)
        c.call(CLOSE, struct.pack("<QI", s, 0))
    c.close()


def test_staging_edges_and_release_edges(daemon, model):
    c = Conn(daemon.socket)
    sess, _, fd = open_ok(c, model)
    os.close(fd)
    pl = bytes(range(80))
    c.staging[c.staging_size - 80:] = pl  # a range ending exactly at the region's end
    r = c.call(APPEND, append_body(model, sess, 0, 10, inline=False, offset=c.staging_size - 80, payload=pl))
    assert r.body == struct.pack("<Q", 10)
    r = c.request(APPEND, append_body(model, sess, 10, 10, inline=False, offset=c.staging_size - 79, payload=pl))
    assert r.code == BAD_REQUEST
    assert c.call(RELEASE, struct.pack("<I", 0)).body == b""  # n 0: nothing to release
    assert c.request(RELEASE, struct.pack("<IQ", 2, 1)).code == BAD_REQUEST  # count past the end
    assert c.request(RELEASE, struct.pack("<IQ", 1, 1) + b"\0").code == BAD_REQUEST  # trailing bytes
    c.close()


def test_commit_across_tail_pages_survives_ssd(daemon, model):
    CPP, n, name = 64, 120, uniq("commit")
    c = Conn(daemon.socket)
    sess, rd, fd = open_ok(c, model, name=name, persist=1)
    reserve = mmap.mmap(fd, rd["size"])
    os.close(fd)
    off, rb = rd["layers"][0]

    def chunk(i):
        return bytes((i * 13 + j * 3 + 1) % 256 for j in range(8))

    pl = b"".join(chunk(i)[:6] for i in range(n)) + b"".join(chunk(i)[6:] for i in range(n))
    c.call(APPEND, append_body(model, sess, 0, n, payload=pl))
    res = cycle_ok(c, sess, 0, 4 * n, model)
    tail = dict(res["tail"])
    assert set(tail) == {1, 2}, res  # chunks [120, 184): pages 1 and 2
    k = 12  # chunks 120..131: 8 into page 1, 4 into page 2
    for i in range(n, n + k):
        base = off + tail[i // CPP] * rb
        j = i % CPP
        reserve[base + j * 6: base + j * 6 + 6] = chunk(i)[:6]
        reserve[base + CPP * 6 + j * 2: base + CPP * 6 + j * 2 + 2] = chunk(i)[6:]
    keys = key(model) * (model["target_layers"] * k)
    r = c.call(COMMIT, struct.pack("<QQII", sess, n, k, 0) + struct.pack("<I", len(keys)) + keys)
    assert r.body == struct.pack("<Q", n + k)
    # a chunk past the tail (page 3) is refused whole
    k3 = 64 * 2
    keys3 = key(model) * (model["target_layers"] * k3)
    assert c.request(COMMIT, struct.pack("<QQII", sess, n + k, k3, 0) + struct.pack("<I", len(keys3)) + keys3).code == BAD_REQUEST
    c.call(RELEASE, struct.pack("<IQ", 1, res["lease"]))
    c.call(PERSIST, struct.pack("<Q", sess))
    # close, resume (a new reserve region from SSD) and read the committed chunks back
    c.call(CLOSE, struct.pack("<QI", sess, 0))
    r = c.call(RESUME, s16(name))
    s2 = struct.unpack_from("<Q", r.body)[0]
    (ml,) = struct.unpack_from("<H", r.body, 20)
    rd2, o = parse_region(r.body, 22 + ml + 32 + 24 + 16)
    reserve2 = mmap.mmap(r.fds[0], rd2["size"])
    os.close(r.fds[0])
    off2, rb2 = rd2["layers"][0]
    res = cycle_ok(c, s2, 0, 4 * (n + k), model)
    table = dict(res["table"])
    assert res["chunks"] == n + k and {1, 2} <= set(table), res  # last_keep holds the recent pages
    for i in range(0, n + k):
        p = i // CPP
        if p not in table:
            continue
        base = off2 + table[p] * rb2
        j = i % CPP
        got = reserve2[base + j * 6: base + j * 6 + 6] + reserve2[base + CPP * 6 + j * 2: base + CPP * 6 + j * 2 + 2]
        assert got == chunk(i), i
    c.call(CLOSE, struct.pack("<QI", s2, 1))
    reserve.close()
    reserve2.close()
    c.close()


def test_name_of_a_session_on_ssd_is_taken(daemon, model):
    name = uniq("taken")
    c = Conn(daemon.socket)
    s, _, fd = open_ok(c, model, name=name, persist=1)
    os.close(fd)
    inline_append(c, model, s, 0, 2)
    c.call(CLOSE, struct.pack("<QI", s, 0))
    assert c.request(OPEN, open_body(model, name=name, persist=1)).code == SESSION_EXISTS
    c.json(DELETE, {"name": name})
    s, _, fd = open_ok(c, model, name=name)
    os.close(fd)
    c.close()


def test_limit_host_reserve_bytes(ldaemon, lmodel):
    # max_host_reserve_bytes 16384: four reserves of 8 slots x 512 bytes, all connections together
    probe = lconn(ldaemon)
    deadline = time.monotonic() + 10
    while probe.json(STATUS)["sessions"] > 0:  # earlier tests' sessions are gone
        assert time.monotonic() < deadline
        time.sleep(0.05)
    a, b = probe, lconn(ldaemon)
    lay = layout(lmodel, slots=8)
    got = []
    for c in (a, a, b, b):
        s, rd, fd = open_ok(c, lmodel, lay=lay)
        os.close(fd)
        assert rd["size"] == 4096, rd
        got.append(s)
    x = lconn(ldaemon)
    r = closefds(x.request(OPEN, open_body(lmodel, lay=lay)))
    assert r.code == LIMIT_EXCEEDED, r
    assert a.call(CLOSE, struct.pack("<QI", got[0], 0)).body == b""
    s, _, fd = open_ok(x, lmodel, lay=lay)  # the freed bytes are available again
    os.close(fd)
    for c in (a, b, x):
        c.close()


def test_request_rule_order(daemon):
    """Section 4: checks 1-9 come before the request rules, which come before the body."""
    c = Conn(daemon.socket, hello=False)

    def bad_crc(op, body=b"", **kw):
        rid = c.next()
        c.send(header(op, rid, len(body), d.crc32c(body) ^ 1, **kw) + body)
        return c.recv()

    assert bad_crc(STATUS).code == CHECKSUM  # check 9 before HANDSHAKE_REQUIRED
    assert bad_crc(PING, b"x", flags=F_RESP).code == CHECKSUM  # check 9 before the RESPONSE rule
    assert c.request(STATUS, version=2).code == UNSUPPORTED_VERSION  # check 5 before HANDSHAKE_REQUIRED
    assert c.request(STATUS, b"{}").code == HANDSHAKE_REQUIRED  # the rules before the body
    assert c.request(HELLO, struct.pack("<HH", 1, 1) + s16("x"), flags=F_RESP).code == BAD_FRAME
    assert c.request(0x0999, b"", flags=F_RESP | F_ERR).code == BAD_FRAME  # op not checked on ERROR frames
    assert c.request(0x0999, b"", flags=F_RESP).code == UNKNOWN_OP
    r = c.request(HELLO, struct.pack("<HH", 1, 1) + s16("x"), version=2)  # HELLO always carries version 1
    assert r.code == UNSUPPORTED_VERSION, r
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        rid = c.next()
        body = b"fd"
        c.send(header(PING, rid, 2, d.crc32c(body) ^ 1, flags=F_FDS, nfds=1) + body, fds=[fd, fd])
        r = c.recv()  # check 8 (2 fds, nfds 1) before check 9
        assert (r.code, r.rid, r.fds) == (BAD_FRAME, rid, []), r
    finally:
        os.close(fd)
    r = closefds(c.request(HELLO, struct.pack("<HH", 1, 1) + s16("x")))
    assert r.code is None
    assert c.request(RESUME, s16(b"\xff")).code == BAD_REQUEST  # invalid UTF-8 in a str16
    c.close()


@pytest.mark.parametrize("pol", [policy(kmax_ratio=-0.5), policy(kmax_ratio=float("inf")),
                                 policy(fallback_ratio=1.0000001), policy(fallback_ratio=-0.0001)])
def test_open_policy_ratios(daemon, model, pol):
    c = Conn(daemon.socket)
    assert closefds(c.request(OPEN, open_body(model, pol=pol))).code == BAD_REQUEST
    s, _, fd = open_ok(c, model, pol=policy(kmax_ratio=1.0, fallback_ratio=1.0))  # 1 is in range
    os.close(fd)
    c.close()


# ---------------------------------------------------------------------------------------------
# 10.12: the text and trace kinds' wire forms, and LSA's one-cycle-late page table (10.9)


def _models(c):
    return {m["name"]: m for m in c.json(MODELS)["models"]}


def test_trace_model_selects_marked_pages(daemon):
    c = Conn(daemon.socket)
    ms = [m for m in _models(c).values() if m["kind"] == "trace"]
    if not ms:
        pytest.skip("no trace model")
    m = ms[0]
    assert (m["key_bytes"], m["query_bytes"], m["target_layers"]) == (32, 4, 1), m
    pol = policy(first_keep=64, last_keep=64, kmax=3, fallback_ratio=1.0)
    sess, _, fd = open_ok(c, m, model=m["name"], pol=pol)
    os.close(fd)
    n = 640  # 10 pages; the chunks of page 5 are above threshold at cycle 3, those of page 7 at cycle 9

    def k(ci):
        b = bytearray(32)
        if ci // 64 == 5:
            b[3 // 8] |= 1 << (3 % 8)
        if ci // 64 == 7:
            b[9 // 8] |= 1 << (9 % 8)
        return bytes(b)

    keys = b"".join(k(i) for i in range(n))
    c.call(APPEND, append_body(m, sess, 0, n, keys=keys))

    def cyc(cycle_k, step):
        res = parse_cycle(c.call(CYCLE, cycle_body([entry(sess, step, 4 * n, [struct.pack("<I", cycle_k)])])).body)[0]
        assert res["status"] == OK, res
        c.call(RELEASE, struct.pack("<IQ", 1, res["lease"]))
        return [p for p, _ in res["table"]]

    first = cyc(3, 0)
    assert 0 in first and 9 in first and 5 not in first, first  # selected now, served one cycle late
    assert 5 in cyc(9, 64)  # cycle 3's selection
    assert 7 in cyc(9, 128) and 5 not in cyc(9, 192)
    bad = parse_cycle(c.call(CYCLE, cycle_body([entry(sess, 256, 4 * n, [struct.pack("<I", 256)])])).body)[0]
    assert bad["status"] == BAD_REQUEST, bad  # a cycle past the 256 a key describes
    assert parse_cycle(c.call(CYCLE, cycle_body([entry(sess, 256, 4 * n, [b"\0" * 5])])).body)[0]["status"] == PAYLOAD_SIZE
    assert c.request(APPEND, append_body(m, sess, n, 1, keys=b"\0" * 31)).code == PAYLOAD_SIZE
    c.close()


def test_text_model_wire_forms(daemon):
    c = Conn(daemon.socket)
    ms = [m for m in _models(c).values() if m["kind"] == "text"]
    if not ms:
        pytest.skip("no text model")
    m = ms[0]
    kb, qb = m["key_bytes"], m["query_bytes"]
    dim = (qb - 8 - 128) // 4  # f32[dim], mode, terms, u16[64]
    maxterms = (kb - dim - 10) // 2
    assert (kb, qb, dim, maxterms) == (132, 392, 64, 29), m
    sess, _, fd = open_ok(c, m, model=m["name"], lay=layout(m))
    os.close(fd)

    def tkey(scale=0.5, core=1, terms=2):
        return (bytes(range(dim)) + struct.pack("<fBB", scale, core, terms) + struct.pack("<29H", *range(1, 30)) +
                struct.pack("<I", 0))

    assert c.call(APPEND, append_body(m, sess, 0, 1, keys=bytes(kb))).body == struct.pack("<Q", 1)  # all zero
    assert c.call(APPEND, append_body(m, sess, 1, 1, keys=tkey())).body == struct.pack("<Q", 2)
    for bad in (tkey(scale=-1.0), tkey(scale=float("inf")), tkey(core=3, terms=2), tkey(core=0, terms=30)):
        assert c.request(APPEND, append_body(m, sess, 2, 1, keys=bad)).code == BAD_REQUEST, bad[dim:dim + 6].hex()

    def q(vec=None, mode=0, terms=3):
        vec = vec or [0.0] * dim
        return struct.pack("<%df" % dim, *vec) + struct.pack("<II", mode, terms) + struct.pack("<64H", *range(64))

    for qq, want in ((bytes(qb), OK), (q([0.1] * dim), OK), (q(mode=2), OK), (q(mode=3), OK), (q(mode=0xFFFF), BAD_REQUEST),
                     (q(terms=65), BAD_REQUEST), (q([0.2] * dim), BAD_REQUEST), (q([float("nan")] + [0.0] * (dim - 1)), BAD_REQUEST)):
        res = parse_cycle(c.call(CYCLE, cycle_body([entry(sess, 0, 8, [qq])])).body)[0]
        assert res["status"] == want, (qq[dim * 4:dim * 4 + 8].hex(), res)
        if res["status"] == OK:
            c.call(RELEASE, struct.pack("<IQ", 1, res["lease"]))
    c.close()


def test_page_budget_and_counters(daemon):
    """15.5: a table holds kmax pages (or ceil(kmax_ratio x pages)), forced pages included; the
    counters of 10.9 say how many pages there are, are resident and are forced."""
    c = Conn(daemon.socket)
    ms = [m for m in _models(c).values() if m["kind"] == "trace"]
    if not ms:
        pytest.skip("no trace model")
    m = ms[0]
    n = 640 + 10  # 11 pages, the last partial
    keys = b"\x01" + b"\0" * 31  # every chunk above threshold at cycle 0
    for pol, want in ((policy(first_keep=64, last_keep=64, kmax=4, fallback_ratio=1.0), 4),
                      (policy(first_keep=64, last_keep=64, kmax_ratio=0.5, fallback_ratio=1.0), 6)):
        sess, _, fd = open_ok(c, m, model=m["name"], pol=pol)
        os.close(fd)
        c.call(APPEND, append_body(m, sess, 0, n, keys=keys * n))
        for want_cycle, step in ((1, 0), (2, 64)):
            bad = c.call(CYCLE, cycle_body([entry(sess, step, 4 * n, [b"\0" * 5])])).body  # fails: no cycle
            assert parse_cycle(bad)[0]["status"] == PAYLOAD_SIZE
            raw = c.call(CYCLE, cycle_body([entry(sess, step, 4 * n, [struct.pack("<I", 0)])])).body
            res = parse_cycle(raw)[0]
            cyc, chunks, total, resident, forced = struct.unpack_from("<QQIII", raw, 4 + 12)
            assert (cyc, chunks, total) == (want_cycle, n, 11), (cyc, chunks, total)  # cycles count from 1
            assert resident == len(res["table"]) and forced in (2, 3), (resident, forced, res)
            c.call(RELEASE, struct.pack("<IQ", 1, res["lease"]))
        assert len(res["table"]) == want, (pol, res["table"])  # the first cycle's selection
        assert {0, 9, 10} <= {p for p, _ in res["table"]}, res["table"]  # sink page and the recent ones
        c.call(CLOSE, struct.pack("<QI", sess, 0))
    c.close()


@pytest.mark.parametrize("op,body", [
    (OPEN, s16("") + s16("") + struct.pack("<II", 0, 0xFFFFFFFF) + bytes(32) + struct.pack("<6I", 64, 132, 3, 64, 16, 0xFFFFFFFF)),
    (OPEN, s16("") + s16("") + struct.pack("<II", 0, 0xFFFFFFFF) + bytes(32) + struct.pack("<6I", 64, 132, 3, 64, 16, 1)
     + struct.pack("<II", 512, 0xFFFFFFFF)),
    (APPEND, struct.pack("<QQIIQQI", 1, 0, 1, 1, 0, 8, 0xFFFFFFFF)),
    (COMMIT, struct.pack("<QQIII", 1, 0, 1, 0, 0xFFFFFFFF)),
    (CYCLE, struct.pack("<I", 1) + struct.pack("<QQQI", 1, 0, 0, 0xFFFFFFFF)),
    (CYCLE, struct.pack("<I", 1) + struct.pack("<QQQII", 1, 0, 0, 1, 0xFFFFFFFF)),
    (RELEASE, struct.pack("<I", 0xFFFFFFFF)),
    (RESUME, struct.pack("<H", 0xFFFF)),
    (OPEN, struct.pack("<H", 0xFFFF)),
])
def test_huge_counts_are_bad_requests(daemon, op, body):
    # section 2: every count is checked against the bytes that remain before anything is allocated
    c = Conn(daemon.socket)
    r = c.request(op, body)
    assert r.code == BAD_REQUEST, r
    assert c.request(PING, b"ok").body == b"ok"
    c.close()


@pytest.mark.parametrize("flags", [None, 1])
def test_reserve_coherent_across_appends_commits_and_resume(daemon, model, flags):
    """Section 11: whatever a table names holds the chunks appended or committed so far, while
    APPENDs land in pages an earlier lease still shows, and after a detached RESUME."""
    CPP, SEGS, ROWS, name = 64, ((6, 2), (3,)), (512, 256), uniq("coh")
    lay = layout(model, layers=tuple(zip(ROWS, SEGS)), slots=12)
    pol = policy(first_keep=64, last_keep=128, kmax=6, fallback_ratio=1.0)
    a = Conn(daemon.socket)
    sess, rd, fd = open_ok(a, model, name=name, persist=1, lay=lay, pol=pol, flags=flags)
    reserve = mmap.mmap(fd, rd["size"])
    os.close(fd)

    def cb(ci, l, s):
        return bytes((ci * 7 + l * 31 + s * 17 + j) % 251 for j in range(SEGS[l][s]))

    def payload(first, n):
        out = b""
        for l, segs in enumerate(SEGS):
            for s in range(len(segs)):
                out += b"".join(cb(first + i, l, s) for i in range(n))
        return out

    def stride(r, l):
        return r["strides"][l] if r["strides"] else r["layers"][l][1]

    def cell(r, l, slot, ci, s):
        o = r["layers"][l][0] + slot * stride(r, l) + CPP * sum(SEGS[l][:s]) + (ci % CPP) * SEGS[l][s]
        return o, SEGS[l][s]

    def check(mm, r, table, n):
        for page, slot in table:
            for ci in range(page * CPP, min((page + 1) * CPP, n)):
                for l in range(len(SEGS)):
                    for s in range(len(SEGS[l])):
                        o, sz = cell(r, l, slot, ci, s)
                        assert mm[o:o + sz] == cb(ci, l, s), (page, ci, l, s)

    def cycle(c, s, step, n):
        res = parse_cycle(c.call(CYCLE, cycle_body([entry(s, step, 4 * n, queries(model))])).body)[0]
        assert res["status"] == OK, res
        return res

    n = 0
    leases = []
    for step, add in enumerate((100, 60, 130, 5)):
        c_ = a.call(APPEND, append_body(model, sess, n, add, keys=_keys(model, n, add), payload=payload(n, add)))
        n += add
        assert c_.body == struct.pack("<Q", n)
        res = cycle(a, sess, step * 64, n)
        check(reserve, rd, res["table"], n)
        leases.append(res["lease"])
        if len(leases) > 1:  # hold the previous lease while asking for the next cycle (15.4)
            a.call(RELEASE, struct.pack("<IQ", 1, leases.pop(0)))
    # decode: write 3 chunks into the tail cells, COMMIT, and see them in the next table
    tail = dict(res["tail"])
    for ci in range(n, n + 3):
        for l in range(len(SEGS)):
            for s in range(len(SEGS[l])):
                o, sz = cell(rd, l, tail[ci // CPP], ci, s)
                reserve[o:o + sz] = cb(ci, l, s)
    keys = _keys(model, n, 3)
    assert a.call(COMMIT, struct.pack("<QQII", sess, n, 3, 0) + struct.pack("<I", len(keys)) + keys).body == \
        struct.pack("<Q", n + 3)
    n += 3
    res = cycle(a, sess, 999, n)
    check(reserve, rd, res["table"], n)
    reserve.close()
    a.close()  # detached (persisted, no CLOSE)
    b = Conn(daemon.socket)
    wait_state(b, name, "detached")
    r = b.call(RESUME, s16(name))
    s2, chunks = struct.unpack_from("<QQ", r.body)
    (ml,) = struct.unpack_from("<H", r.body, 20)
    rd2, o = parse_region(r.body, 22 + ml + 32 + len(lay))
    assert o == len(r.body) and chunks == n
    mm = mmap.mmap(r.fds[0], rd2["size"])
    os.close(r.fds[0])
    res = cycle(b, s2, 1000, n)
    check(mm, rd2, res["table"], n)
    mm.close()
    b.call(CLOSE, struct.pack("<QI", s2, 1))
    b.close()


# ---------------------------------------------------------------------------------------------
# 10.6 PERSIST durability cluster, UNAVAILABLE (24), 10.11 CLUSTER and VERIFY's cluster part,
# against a one-member cluster that asks for two copies (docs/cluster.md's [cluster] table)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_one_member_cluster(flashmemd_bin, model):
    root = tempfile.mkdtemp(prefix="flashmem-py-cl-")
    secret = os.path.join(root, "secret")
    with open(secret, "w") as f:
        f.write("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\n")
    os.chmod(secret, 0o600)
    rp, pp = _free_port(), _free_port()
    dm = Daemon(flashmemd_bin, root,
                config=LIMITS_CONFIG.split("[limits]")[0] + LIMITS_CONFIG[LIMITS_CONFIG.index("[indexer]"):] +
                '[cluster]\nnode_id = "n1"\nraft_addr = "127.0.0.1:%d"\npeer_addr = "127.0.0.1:%d"\n'
                'bootstrap = ["n1=127.0.0.1:%d"]\nreplication_factor = 2\nsecret_file = "%s"\n' % (rp, pp, rp, secret))
    dm.start()
    try:
        c = Conn(dm.socket)
        deadline = time.monotonic() + 30
        while True:
            st = c.json(CLUSTER, {"action": "status"})
            if st.get("leader"):
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
        assert st["node"] == "n1" and st["state"] == "Leader" and st["replication_factor"] == 2, st
        for k in ("leader_addr", "term", "commit_index", "applied_index", "last_snapshot_index", "sessions"):
            assert k in st, k
        (mem,) = st["members"]
        assert mem["id"] == "n1" and mem["state"] == "leader" and mem["suffrage"] == "Voter", mem
        assert c.request(CLUSTER, json.dumps({"action": "dance"}).encode()).code == BAD_REQUEST
        assert c.request(CLUSTER, b"").code == BAD_REQUEST
        m = next(x for x in c.json(MODELS)["models"] if x["name"] == "small")
        name = uniq("cl")
        s, _, fd = open_ok(c, m, name=name, persist=1)
        os.close(fd)
        inline_append(c, m, s, 0, 70)
        assert c.call(PERSIST, struct.pack("<QI", s, 0)).body == b""  # local
        r = c.request(PERSIST, struct.pack("<QI", s, 1))  # cluster: one live copy of the two asked for
        assert r.code == UNAVAILABLE, r
        assert c.request(PERSIST, struct.pack("<QI", s, 2)).code == BAD_REQUEST
        st = c.json(CLUSTER, {"action": "status"})
        assert name in st.get("under_replicated", []) and st["sessions"] == 1, st
        v = c.json(VERIFY, {"name": name})
        assert v["bad"] == 0 and v["pages"] == 2, v
        cl = v["cluster"]
        assert cl["owner"] == "n1" and cl["epoch"] >= 1 and cl["manifest_pages"] == 2, cl
        for k in ("verified", "pulled", "healed", "bad", "moved"):
            assert k in cl, k
        assert c.json(DELETE, {"name": name})["sessions"] == [s]
        assert c.json(CLUSTER, {"action": "status"}).get("sessions", 0) == 0
        c.close()
    finally:
        dm.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_descriptors_sent_by_a_client_are_closed(daemon):
    """Section 5: clients never send descriptors; the daemon answers BAD_FRAME, closes them (also
    more than fit its 4-descriptor control buffer: MSG_CTRUNC) and the stream stays in sync."""
    c = Conn(daemon.socket)
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(8)]
    pid = daemon.proc.pid

    def nfds():
        return len(os.listdir("/proc/%d/fd" % pid))

    try:
        assert c.request(PING, b"warm").body == b"warm"
        before = nfds()
        for i in range(20):
            for kw, send in ((dict(flags=F_FDS, nfds=4), fds), (dict(flags=F_FDS, nfds=4), fds[:4]), ({}, fds[:1])):
                rid = c.next()
                c.send(frame(PING, rid, b"fd%d" % i, **kw), fds=send)
                r = c.recv()
                assert (r.code, r.rid) == (BAD_FRAME, rid), (kw, len(send), r)
        assert c.request(PING, b"sync").body == b"sync"
        deadline = time.monotonic() + 10
        while nfds() > before + 2:  # 60 frames, 260 descriptors: none kept
            assert time.monotonic() < deadline, (before, nfds())
            time.sleep(0.05)
    finally:
        for fd in fds:
            os.close(fd)
    c.close()
