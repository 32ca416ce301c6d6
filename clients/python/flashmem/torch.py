"""A session's reserve as torch tensors, and CYCLE replies as index tensors (optional extra).

    from flashmem.torch import ReserveTensors, page_slots
    rt = ReserveTensors(session)            # host memfd: zero-copy CPU tensors; CUDA VMM fd:
                                            # imported and mapped on the daemon's GPU
    rt.layers[l]                            # uint8 [slots, row_bytes] view of layer l
    rt.stacked()                            # uint8 [layers, slots, row_bytes] when the layers
                                            # lie back to back (one gather for all layers)
    pages, slots = page_slots(result.pages_raw, rt.device)   # int64 tensors on that device
    ...
    rt.close()                              # unmap (CUDA) before CLOSE

Needs torch; a CUDA reserve also needs the CUDA driver API through cuda-bindings
(``cuda.bindings.driver``; older cuda-python: ``cuda.cuda``). Run the decoder with the same
CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER as the daemon: the region's ``device`` is the
daemon's CUDA ordinal (docs/protocol.md section 11).
"""

import os

import torch

from . import wire

_cu = None


def _driver():
    global _cu
    if _cu is None:
        try:
            from cuda.bindings import driver as cu
        except ImportError:  # cuda-python before 12.6
            from cuda import cuda as cu
        _cu = cu
    return _cu


def _check(res):
    cu = _driver()
    err, *vals = res if isinstance(res, tuple) else (res,)
    if err != cu.CUresult.CUDA_SUCCESS:
        raise RuntimeError("CUDA driver error %s" % err)
    return vals[0] if len(vals) == 1 else vals


class _CudaArray:
    """__cuda_array_interface__ so torch wraps the mapped range without a copy."""

    def __init__(self, ptr, nbytes):
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (int(ptr), False),
                                         "version": 3}


class ReserveTensors:
    """The reserve region of a flashmem Session as one flat uint8 tensor (``region``) and one
    [slots, row_bytes] view per layer (``layers``), on the CPU for a host region and on
    ``cuda:<device>`` for a CUDA region (imported from the VMM fd, which is closed)."""

    def __init__(self, session):
        self.session = session
        r = session.region
        self._cuda = None
        if r.kind == wire.REGION_MEMFD:
            self.device = torch.device("cpu")
            self.region = torch.frombuffer(session.reserve, dtype=torch.uint8, count=r.size)
        else:
            cu = _driver()
            dev = r.device
            torch.cuda.set_device(dev)
            torch.zeros(1, device="cuda:%d" % dev)  # make torch's primary context current
            fd = session.take_fd()
            try:
                handle = _check(cu.cuMemImportFromShareableHandle(
                    fd, cu.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
            finally:
                os.close(fd)  # the handle outlives the descriptor
            ptr = _check(cu.cuMemAddressReserve(r.size, 0, 0, 0))
            _check(cu.cuMemMap(ptr, r.size, 0, handle, 0))
            acc = cu.CUmemAccessDesc()
            acc.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
            acc.location.id = dev
            acc.flags = cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
            _check(cu.cuMemSetAccess(ptr, r.size, [acc], 1))
            self._cuda = (handle, ptr, r.size)
            self.device = torch.device("cuda:%d" % dev)
            self.region = torch.as_tensor(_CudaArray(ptr, r.size), device=self.device)
        self.layers = [self.region.as_strided((r.slots, row), (r.stride(i), 1), off)
                       for i, (off, row) in enumerate(r.layers)]

    def stacked(self):
        """uint8 [layers, slots, row_bytes] over the region (a strided view, no copy) when every
        layer has the same row_bytes and slot stride and the layers are evenly spaced (per-layer
        reserves: buffer after buffer; page-major: row after row in each slot), else None. One
        index_select on dim 1 then gathers a page table's rows of every layer at once."""
        r = self.session.region
        off0, row0 = r.layers[0]
        st0 = r.stride(0)
        step = r.layers[1][0] - off0 if len(r.layers) > 1 else 0
        if any(row != row0 or r.stride(i) != st0 or off != off0 + i * step
               for i, (off, row) in enumerate(r.layers)):
            return None
        return self.region.as_strided((len(r.layers), r.slots, row0), (step, st0, 1), off0)

    def close(self):
        """Unmap a CUDA region (call before CLOSE of the session); drop the views."""
        self.layers = []
        self.region = None
        if self._cuda is not None:
            cu = _driver()
            handle, ptr, size = self._cuda
            self._cuda = None
            torch.cuda.synchronize(self.device)
            _check(cu.cuMemUnmap(ptr, size))
            _check(cu.cuMemAddressFree(ptr, size))
            _check(cu.cuMemRelease(handle))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def page_slots(raw, device="cpu"):
    """A CYCLE result's pages_raw or tail_raw (packed u32 (page, slot) pairs) as two int64
    tensors (pages, slots) on device, with one host-to-device copy."""
    if not raw:
        e = torch.empty(0, dtype=torch.int64, device=device)
        return e, e
    t = torch.frombuffer(bytearray(raw), dtype=torch.int32).view(-1, 2).to(device=device, dtype=torch.int64)
    return t[:, 0], t[:, 1]
