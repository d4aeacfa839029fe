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

import functools
import json
import math
import os
import struct
from typing import Any

import numpy as np
import torch

PACKED = "fedrec.packed"
_META_LEN = struct.Struct("<I")
_ALIGN = 64
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


def pack(tensors: dict[str, torch.Tensor]) -> bytes:
    """The packed bytes of ``tensors``: one ``bytes.join`` of :func:`pack_parts`.

    FedPA's 14 tensors: ≈ 30 µs (a ``torch.cat`` of the parts took 85–90 µs).
    """
    return b"".join(pack_parts(tensors))


def pack_parts(tensors: dict[str, torch.Tensor]) -> list[bytes | memoryview]:
    """The packed layout of ``tensors`` as buffers to join or write out.

    The header, then each tensor's own bytes (a view) and its padding. The
    header and paddings of each signature (names, dtypes, shapes) are made once
    (:func:`_layout`), so a message costs a byte view per tensor.
    """
    head, pads = _layout(tuple((n, t.dtype, t.shape) for n, t in tensors.items()))
    parts: list[bytes | memoryview] = [head]
    for t, pad in zip(tensors.values(), pads, strict=True):
        parts += [_raw(t), pad]
    return parts


def write_parts(fd: int, parts: list[bytes | memoryview], offset: int) -> int:
    """Write ``parts`` back to back at ``offset`` of file ``fd``; the bytes written.

    ``pwritev`` calls of at most ``IOV_MAX`` buffers each, resumed after a
    partial write (a call writes at most ≈ 2 GiB on Linux).
    """
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    done = first = 0
    while first < len(views):
        n = os.pwritev(fd, views[first : first + _IOV_MAX], offset + done)
        if n <= 0:
            raise OSError(f"no bytes written at offset {offset + done}")
        done += n
        while first < len(views) and n >= len(views[first]):
            n -= len(views[first])
            first += 1
        if n:  # the rest of a partly written buffer
            views[first] = views[first][n:]
    return done


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of ``t`` in row-major order (a view when it is contiguous)."""
    try:  # the common case, one call: a contiguous CPU tensor numpy can view
        return memoryview(t.numpy().data).cast("B")
    except (TypeError, RuntimeError):  # grad, bfloat16, a device, strides, neg
        t = t.detach().cpu().resolve_neg().contiguous()
        return t.reshape(-1).view(torch.uint8).numpy().data


@functools.lru_cache(maxsize=256)
def _layout(sig: tuple[Any, ...]) -> tuple[bytes, list[bytes]]:
    """Header (length, JSON, padding) and each tensor's padding."""
    meta = [[n, str(dt).removeprefix("torch."), list(shape)] for n, dt, shape in sig]
    head = json.dumps(meta).encode()
    head += b" " * (-(_META_LEN.size + len(head)) % _ALIGN)
    pads = [bytes(-math.prod(shape) * dt.itemsize % _ALIGN) for _, dt, shape in sig]
    return _META_LEN.pack(len(head)) + head, pads


def unpack(body: bytearray | memoryview) -> dict[str, torch.Tensor]:
    """Tensors viewing packed ``body`` (writable, no copies).

    Through numpy where the dtype has one: ``torch.from_numpy`` of a numpy
    view costs ≈ 2 µs a tensor, ``torch.frombuffer`` + ``reshape`` ≈ 4.
    """
    out, end = {}, len(body)
    flat = np.frombuffer(body, dtype=np.uint8)
    for name, dt, np_dt, shape, count, offset in _meta(body):
        nbytes = count * dt.itemsize
        if offset + nbytes > end:
            raise ValueError(f"tensor {name!r} runs past the end of the data")
        if np_dt is not None:
            view = flat[offset : offset + nbytes].view(np_dt).reshape(shape)
            out[name] = torch.from_numpy(view)
        elif count:
            flat_t = torch.frombuffer(body, dtype=dt, count=count, offset=offset)
            out[name] = flat_t.reshape(shape)
        else:
            out[name] = torch.empty(shape, dtype=dt)
    return out


def to_record(tensors: dict[str, torch.Tensor] | dict[str, np.ndarray]) -> Any:
    """An ``ArrayRecord`` holding ``tensors`` (tensors or arrays) packed."""
    from flwr.app import Array, ArrayRecord

    body = pack(
        {
            n: t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
            for n, t in tensors.items()
        }
    )
    record = ArrayRecord()  # then one item: ArrayRecord({...}) validates twice
    record[PACKED] = Array("uint8", (len(body),), PACKED, body)
    return record


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
        return [name for name, *_ in _meta(record[PACKED].data)]
    return list(record)


def shapes(record: Any) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in an ``ArrayRecord`` (without decoding the data)."""
    if _is_packed(record):
        return {
            name: tuple(shape) for name, _, _, shape, *_ in _meta(record[PACKED].data)
        }
    return {n: tuple(a.shape) for n, a in record.items()}


def _is_packed(record: Any) -> bool:
    return list(record) == [PACKED] and record[PACKED].stype == PACKED


# name, dtype, its numpy dtype (None: numpy has none), shape, numel, byte offset
_Entry = tuple[str, torch.dtype, Any, list[int], int, int]


def _meta(body: bytes | bytearray | memoryview) -> list[_Entry]:
    """``(name, dtype, numpy dtype, shape, numel, offset)`` of each tensor."""
    (n,) = _META_LEN.unpack_from(body)
    return _parse(bytes(body[_META_LEN.size : _META_LEN.size + n]))


@functools.lru_cache(maxsize=256)
def _parse(head: bytes) -> list[_Entry]:
    out, offset = [], _META_LEN.size + len(head)
    for name, dtype, shape in json.loads(head):
        dt, count = getattr(torch, dtype), math.prod(shape)
        out.append((name, dt, _numpy_dtype(dt), shape, count, offset))
        offset += count * dt.itemsize + (-count * dt.itemsize % _ALIGN)
    return out


def _numpy_dtype(dt: torch.dtype) -> Any:
    """The numpy dtype of ``dt``, or ``None`` (bfloat16 and others it lacks)."""
    try:
        return torch.empty(0, dtype=dt).numpy().dtype
    except TypeError:
        return None


def config_int(value: object) -> int:
    """An int of a message's ``ConfigRecord`` (Flower types any record value)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int in the message config, got {value!r}")
    return value


def config_ints(value: object) -> list[int]:
    """A list of ints of a message's ``ConfigRecord``."""
    if not isinstance(value, list):
        raise TypeError(f"expected a list of ints in the message config, got {value!r}")
    return [config_int(v) for v in value]
