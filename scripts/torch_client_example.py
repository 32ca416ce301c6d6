#!/usr/bin/env python3
"""FlashMemory GPU reserve from PyTorch: map a reserve region exported by flashmemd (a CUDA
VMM allocation whose POSIX file descriptor arrives with SCM_RIGHTS) and read its pages on the
GPU, without copies.

What a decoder does (docs/protocol.md, OPEN / RESUME):
  1. OPEN a session naming `device` (the GPU the decoder runs on); the reply carries one fd
     and a RegionDesc: size, slots, kind, device, and per layer (offset, row_bytes).
  2. kind 1 (CUDA VMM POSIX fd, on GPU `device`): import the fd with
     cuMemImportFromShareableHandle, reserve `size` bytes of address space, cuMemMap the
     handle there and cuMemSetAccess read-write for the device.
     kind 0 (memfd, device 0xFFFFFFFF): the daemon serves host memory (no GPU, [gpu]
     mode = "off", or a daemon built without CUDA); mmap it instead.
  3. View each layer's buffer as a [slots, row_bytes] uint8 tensor at its offset; a resident
     page of the lease's page table occupies the same slot in every layer.
The mapping stays valid after the fd is closed; unmap with cuMemUnmap/cuMemAddressFree and
release the handle (unmap_reserve) before the session is closed.

Two ways to run it:
  --socket PATH --device N      speak the protocol to a running flashmemd: HELLO, OPEN a small
     [--model NAME]             ephemeral session (the daemon's default model unless named;
                                132-byte keys, 3 target layers), map its reserve as the reply's
                                kind says, print the layer views (a host-memory reply needs
                                neither torch nor cuda-python)
  --selftest-fd FD --size S     used by the cuda-tagged Go test (internal/cuda,
     --device N --seed K         TestTorchImportsRegion): the fd is inherited; check on the
                                GPU that every byte equals (i*7 + K) % 251, then write
                                (i*3 + K) % 253 into the second half and exit 0
GPU replies and the self-test need torch and cuda-python (cuda.bindings), both on the GPU
machine's image.
"""
import argparse
import mmap
import os
import socket
import struct
import sys

torch = cu = None


def load_gpu_modules():
    """torch and cuda-python, imported only when GPU memory is to be mapped."""
    global torch, cu
    import torch as _torch
    try:
        from cuda.bindings import driver as _cu
    except ImportError:  # cuda-python before 12.6
        from cuda import cuda as _cu
    torch, cu = _torch, _cu


def check(res):
    """cuda-python returns (CUresult, values...); raise on error, return the values."""
    err, *vals = res if isinstance(res, tuple) else (res,)
    if err != cu.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"CUDA driver error {err}")
    return vals[0] if len(vals) == 1 else vals


class _CudaArray:
    """Minimal __cuda_array_interface__ so torch can wrap the mapped range without a copy."""

    def __init__(self, ptr, nbytes):
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (int(ptr), False), "version": 3}


def map_reserve(fd, size, device):
    """Import and map a reserve region; returns (uint8 tensor of `size` bytes, handle, ptr)."""
    torch.cuda.set_device(device)
    torch.zeros(1, device=f"cuda:{device}")  # make torch's (primary) context current
    handle = check(cu.cuMemImportFromShareableHandle(
        fd, cu.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
    ptr = check(cu.cuMemAddressReserve(size, 0, 0, 0))
    check(cu.cuMemMap(ptr, size, 0, handle, 0))
    acc = cu.CUmemAccessDesc()
    acc.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
    acc.location.id = device
    acc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    check(cu.cuMemSetAccess(ptr, size, [acc], 1))
    t = torch.as_tensor(_CudaArray(ptr, size), device=f"cuda:{device}")
    return t, handle, ptr


def unmap_reserve(handle, ptr, size):
    torch.cuda.synchronize()
    check(cu.cuMemUnmap(ptr, size))
    check(cu.cuMemAddressFree(ptr, size))
    check(cu.cuMemRelease(handle))


def layer_views(region, slots, layers):
    """layers: [(offset, row_bytes)] from the RegionDesc -> one [slots, row_bytes] view each."""
    return [region[off:off + slots * row].view(slots, row) for off, row in layers]


def selftest(fd, size, device, seed):
    load_gpu_modules()
    region, handle, ptr = map_reserve(fd, size, device)
    os.close(fd)  # the mapping outlives the descriptor
    i = torch.arange(size, device=region.device, dtype=torch.int64)
    want = ((i * 7 + seed) % 251).to(torch.uint8)
    bad = (region != want).nonzero()
    if bad.numel():
        print(f"byte {bad[0].item()} differs: {region[bad[0]].item()} != {want[bad[0]].item()}", file=sys.stderr)
        return 1
    half = size // 2
    region[half:] = ((i[half:] * 3 + seed) % 253).to(torch.uint8)
    unmap_reserve(handle, ptr, size)
    print(f"torch {torch.__version__}: {size} bytes checked on {torch.cuda.get_device_name(device)}, second half written")
    return 0


# --- protocol (docs/protocol.md sections 3, 10, 13) -------------------------------------
MAGIC = b"FMEM"


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def send(sock, op, rid, body):
    sock.sendall(MAGIC + struct.pack("<HHHBBIQII", 1, op, 0, 0, 0, len(body), rid, crc32c(body), 0) + body)


def recv_exact(sock, n, fds):
    buf = b""
    while len(buf) < n:
        data, anc, _, _ = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(16), socket.MSG_CMSG_CLOEXEC)
        if not data:
            raise EOFError("connection closed")
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += struct.unpack("<%di" % (len(payload) // 4), payload[: len(payload) // 4 * 4])
        buf += data
    return buf


def recv(sock):
    fds = []
    hdr = recv_exact(sock, 32, fds)
    ver, op, flags, nfds, _, blen, rid, crc, _ = struct.unpack("<HHHBBIQII", hdr[4:])
    body = recv_exact(sock, blen, fds) if blen else b""
    if hdr[:4] != MAGIC or crc32c(body) != crc or len(fds) != nfds:
        raise RuntimeError("bad frame")
    if flags & 2:
        code, mlen = struct.unpack_from("<IH", body)
        raise RuntimeError("error %d: %s" % (code, body[6:6 + mlen].decode()))
    return body, fds


def str16(s):
    return struct.pack("<H", len(s)) + s


KIND_MEMFD, KIND_CUDA = 0, 1
NO_DEVICE = 0xFFFFFFFF


def parse_region_desc(body, off):
    """RegionDesc (docs/protocol.md 10.3) at body[off:] -> (size, slots, kind, device, [(offset, row_bytes)])."""
    size, slots, kind, device, nl = struct.unpack_from("<QIIII", body, off)
    if kind not in (KIND_MEMFD, KIND_CUDA) or (kind == KIND_MEMFD) != (device == NO_DEVICE):
        raise RuntimeError(f"bad RegionDesc: kind {kind}, device {device:#x}")
    layers = [struct.unpack_from("<QI", body, off + 24 + 12 * i) for i in range(nl)]
    return size, slots, kind, device, layers


def daemon(path, device, model):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    send(sock, 0x0001, 1, struct.pack("<HHH", 1, 1, 5) + b"torch")  # HELLO
    body, fds = recv(sock)
    for fd in fds:  # the staging memfd is not needed here
        os.close(fd)
    # OPEN: ephemeral, default policy; DeepSeek-V4-like layout with 2 layers, 8 reserve slots.
    layers = [(37440, [576, 8]), (37440, [576, 8])]
    layout = struct.pack("<IIIIII", 64, 132, 3, 64, 8, len(layers))
    for row, segs in layers:
        layout += struct.pack("<II", row, len(segs)) + struct.pack("<%dI" % len(segs), *segs)
    req = str16(b"") + str16(model.encode()) + struct.pack("<II", 0, device) + bytes(32) + layout
    send(sock, 0x0010, 2, req)
    body, fds = recv(sock)
    (session,) = struct.unpack_from("<Q", body)
    size, slots, kind, dev, offs = parse_region_desc(body, 8)
    if kind == KIND_MEMFD:
        # Host memory: the daemon has no CUDA device for us. mmap needs no GPU modules.
        region = mmap.mmap(fds[0], size)
        os.close(fds[0])
        print(f"session {session}: host-memory reserve (memfd) of {size} bytes; asked for device {device}, "
              "got none (no GPU, [gpu] mode = \"off\", or a daemon built without CUDA)")
        for l, (off, row) in enumerate(offs):
            first = region[off:off + row]
            print(f"session {session} layer {l}: ({slots}, {row}) at offset {off}, first row sum {sum(first)}")
        region.close()
        sock.close()
        return 0
    load_gpu_modules()
    region, handle, ptr = map_reserve(fds[0], size, dev)  # the device the daemon placed it on
    os.close(fds[0])
    print(f"session {session}: CUDA reserve of {size} bytes on device {dev} ({torch.cuda.get_device_name(dev)})")
    for l, v in enumerate(layer_views(region, slots, offs)):
        print(f"session {session} layer {l}: {tuple(v.shape)} at offset {offs[l][0]}, first row sum {int(v[0].sum())}")
    unmap_reserve(handle, ptr, size)
    sock.close()
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--socket")
    ap.add_argument("--device", type=lambda v: int(v, 0), default=0,
                    help="GPU ordinal, 0xFFFFFFFF for the daemon's choice, 0xFFFFFFFE for host memory")
    ap.add_argument("--model", default="", help="indexer model (default: the daemon's default)")
    ap.add_argument("--selftest-fd", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.selftest_fd is not None:
        sys.exit(selftest(a.selftest_fd, a.size, a.device, a.seed))
    if a.socket:
        sys.exit(daemon(a.socket, a.device, a.model))
    ap.print_help()
    sys.exit(2)
