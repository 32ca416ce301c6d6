"""flashmem: a Python client for flashmemd (docs/protocol.md), standard library only.

    import flashmem
    with flashmem.connect() as c:                                 # HELLO; staging region mapped
        with c.open(flashmem.Layout.deepseek_v4(512)) as s:       # OPEN; reserve mapped (host)
            s.append(payload, keys)                               # prefill: APPEND via staging
            with s.cycle(queries, step, position) as r:           # CYCLE; lease released on exit
                for page, slot in r.pages: ...                    # read s.row(layer, slot)

Errors are raised as one exception class per wire code (flashmem.errors). Thread safety: a
Client may be shared by threads; one lock per connection serialises each request/reply round
trip (see flashmem.client). Optional extras: Session.numpy_layer (NumPy) and flashmem.torch
(CUDA reserves as torch tensors; needs torch and cuda-bindings).
"""

from .client import Client, CycleResult, Frame, Session, connect, default_socket_path
from .errors import *  # noqa: F401,F403  (one class per wire code)
from .errors import __all__ as _errors_all
from .wire import (DEVICE_ANY, DEVICE_HOST_ONLY, NO_DEVICE, REGION_CUDA, REGION_MEMFD, HelloInfo,
                   LayerLayout, Layout, Policy, RegionDesc, ResumeInfo, crc32c)

__all__ = ["Client", "CycleResult", "Frame", "Session", "connect", "default_socket_path",
           "DEVICE_ANY", "DEVICE_HOST_ONLY", "NO_DEVICE", "REGION_CUDA", "REGION_MEMFD", "HelloInfo",
           "LayerLayout", "Layout", "Policy", "RegionDesc", "ResumeInfo", "crc32c"] + list(_errors_all)
