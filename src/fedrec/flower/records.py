"""Named tensors in Flower records (``ArrayRecord``), both ways.

fedrec packs all tensors of a record into **one** ``Array`` (key and stype
``fedrec.packed``): a ``u32`` length, a JSON list of ``[name, dtype, shape]``,
then each tensor's raw bytes, every part padded to 64 bytes. Flower spends
≈ 25–45 µs of Python per ``Array`` (construction, validation, record insert),
which for FedPA's 14 tensors was a third of a node's per-message work; one
``Array`` costs one ``memcpy``. Records in Flower's own layout (one
``numpy.ndarray`` Array per name) are read too. The same packing is the
on-disk format of :mod:`fedrec.flower.store`.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import torch

PACKED = "fedrec.packed"
_META_LEN = struct.Struct("<I")
_ALIGN = 64


def pack(tensors: dict[str, torch.Tensor]) -> list[bytes | memoryview]:
    """The packed bytes of ``tensors`` as parts (views of the tensors, no copies)."""
    meta, data = [], []
    for name, t in tensors.items():
        t = t.detach().cpu()
        meta.append([name, str(t.dtype).removeprefix("torch."), list(t.shape)])
        flat = t.reshape(-1)
        if flat.numel() and flat.stride(0) != 1:  # e.g. a broadcast (stride 0) row
            flat = torch.empty_like(flat, memory_format=torch.contiguous_format)
            flat.copy_(t.reshape(-1))
        raw = memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else b""
        data += [raw, bytes(-len(raw) % _ALIGN)]
    head = json.dumps(meta).encode()
    head += b" " * (-(_META_LEN.size + len(head)) % _ALIGN)
    return [_META_LEN.pack(len(head)), head, *data]


def unpack(body: bytearray) -> dict[str, torch.Tensor]:
    """Tensors viewing packed ``body`` (writable, no copies)."""
    out = {}
    offset = _META_LEN.size + _META_LEN.unpack_from(body)[0]
    for name, dtype, shape in _meta(body):
        dt = getattr(torch, dtype)
        count = math.prod(shape)
        nbytes = count * dt.itemsize
        if offset + nbytes > len(body):
            raise ValueError(f"tensor {name!r} runs past the end of the data")
        if count:
            flat = torch.frombuffer(body, dtype=dt, count=count, offset=offset)
            out[name] = flat.reshape(shape)
        else:
            out[name] = torch.empty(shape, dtype=dt)
        offset += nbytes + (-nbytes % _ALIGN)
    return out


def to_record(tensors: dict[str, torch.Tensor] | dict[str, np.ndarray]) -> Any:
    """An ``ArrayRecord`` holding ``tensors`` (tensors or arrays) packed."""
    from flwr.app import Array, ArrayRecord

    body = b"".join(pack({n: torch.as_tensor(t) for n, t in tensors.items()}))
    packed = Array(dtype="uint8", shape=(len(body),), stype=PACKED, data=body)
    return ArrayRecord({PACKED: packed})


def from_record(record: Any) -> dict[str, torch.Tensor]:
    """Named tensors of an ``ArrayRecord`` (writable copies)."""
    if _is_packed(record):
        return unpack(bytearray(record[PACKED].data))
    return {n: torch.from_numpy(a.numpy().copy()) for n, a in record.items()}


def arrays(record: Any) -> dict[str, np.ndarray]:
    """Named numpy arrays of an ``ArrayRecord`` (writable copies)."""
    return {n: t.numpy() for n, t in from_record(record).items()}


def names(record: Any) -> list[str]:
    """The tensor names an ``ArrayRecord`` carries (without decoding the data)."""
    if _is_packed(record):
        return [name for name, _, _ in _meta(record[PACKED].data)]
    return list(record)


def _is_packed(record: Any) -> bool:
    return list(record) == [PACKED] and record[PACKED].stype == PACKED


def _meta(body: bytes | bytearray) -> list[list[Any]]:
    (n,) = _META_LEN.unpack_from(body)
    return json.loads(bytes(body[_META_LEN.size : _META_LEN.size + n]))
