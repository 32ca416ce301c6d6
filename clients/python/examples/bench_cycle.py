#!/usr/bin/env python3
"""Round trips of PING and CYCLE through the flashmem package: the Python side of
clients/bench.sh (same session shape and counts as clients/gobench and clients/c/bench_cycle).

    bench_cycle.py SOCKET [n] [chunks] [sessions] [hidden]
"""
import json
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import flashmem  # noqa: E402


def layout():
    return flashmem.Layout(64, 132, 3, 64, 256, [flashmem.LayerLayout(64 * 40, [32, 8]),
                                                 flashmem.LayerLayout(64 * 24 + 512, [24])])


def keys(n, rng):
    out = bytearray()
    for _ in range(n * 3):
        out += bytes(b if b & 0x7F != 0x7F else 0 for b in rng.randbytes(128)) + struct.pack("<f", 0.5 + rng.random())
    return bytes(out)


def hidden_state(h, rng):
    return struct.pack("<%dH" % h, *(struct.unpack("<I", struct.pack("<f", rng.gauss(0, 1)))[0] >> 16 for _ in range(h)))


def stats(xs):
    xs = sorted(xs)
    return {"p50": xs[len(xs) // 2], "p99": xs[len(xs) * 99 // 100], "mean": sum(xs) / len(xs)}


def main():
    sock = sys.argv[1]
    n, chunks, nsess, hidden = (int(a) for a in (sys.argv[2:] + ["2000", "8192", "1", "64"][len(sys.argv) - 2:]))
    rng = random.Random(1)
    lay = layout()
    with flashmem.connect(sock, client_name="pybench") as c:
        entries = []
        for _ in range(nsess):
            s = c.open(lay)
            for at in range(0, chunks, 512):
                k = min(512, chunks - at)
                s.append(rng.randbytes(lay.payload_bytes(k)), keys(k, rng))
            entries.append((s.id, 0, chunks * 4, [hidden_state(hidden, rng) for _ in range(3)]))
        ping, cyc, server, over = [], [], [], []  # server: the daemon's own time, scoring + recall wait
        pages = 0
        clock = time.perf_counter_ns
        for i in range(n + 50):
            t0 = clock()
            c.ping(b"ping")
            t1 = clock()
            res = c.cycle(entries)
            t2 = clock()
            for r in res:
                if r.error is not None:
                    raise r.error
            pages = len(res[0].pages_raw) // 8
            c.release(*(r.lease for r in res))
            if i >= 50:
                ping.append((t1 - t0) / 1e3)
                cyc.append((t2 - t1) / 1e3)
                server.append(max(r.score_us + r.wait_us for r in res))
                over.append(cyc[-1] - server[-1])
    print(json.dumps({"client": "python", "crc": "native" if flashmem.wire.NATIVE_CRC_LIB else "pure-python",
                      "n": n, "sessions": nsess, "chunks": chunks, "pages_per_entry": pages,
                      "ping_us": stats(ping), "cycle_us": stats(cyc),
                      "server_us": stats(server), "overhead_us": stats(over)}))


if __name__ == "__main__":
    main()
