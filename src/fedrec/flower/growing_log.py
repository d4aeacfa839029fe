"""An append-only log of growing tensors on a node's disk (its decoding caches).

Each decoding message adds one position to every open row's KV caches. Saving
the caches whole after each message writes O(T²) bytes over T tokens (SmolLM2
at ``split_k = 10``: ≈ 1.2 MB a row, every message); this log appends only
the positions an entry gained, so T tokens write each position once.

Layout of ``log.bin``: a 24-byte header (a random id of this file, commits,
committed length: little-endian ``u64``), then batches, each a ``u64``
length and a body packed as in :func:`fedrec.flower.records.pack`, of
tensors named ``"<entry>@<start>"``: an entry's positions
``[start, start + n)`` along ``dim``. An append writes its batch past the
committed length, then the header: a kill at any point leaves the last
complete append as the log. :meth:`GrowingLog.reset` commits length 0. The
file is opened per call, so a log removed under a process (the run's end, a
lost disk) reads as empty.

Reading joins each entry's slices in order; a slice starting at 0 replaces
the entry (it was rebuilt), one that does not continue it drops the entry.
The log holds caches, which a node can always rebuild from the prefix: an
unreadable log reads as empty, with a warning, instead of failing the node.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import torch

from fedrec.flower.records import pack_parts, unpack, write_parts

log = logging.getLogger("fedrec.flower")

_HEADER = struct.Struct("<QQQ")  # file id, commits, length of the batches
_LEN = struct.Struct("<Q")  # a batch's body length


class GrowingLog:
    """Entries (named tensors) that grow along ``dim``, saved by their new parts."""

    def __init__(self, root: Path, dim: int = -2) -> None:
        self.path, self.dim = Path(root) / "log.bin", dim

    def version(self) -> tuple[int, int]:
        """(the file's random id, appends and resets committed); (0, 0): none.

        Changes with every commit, and when the file is removed and made anew.
        """
        fd = self._open(os.O_RDONLY)
        if fd is None:
            return (0, 0)
        try:
            return _header(fd)[:2]
        finally:
            os.close(fd)

    def append(self, parts: dict[str, tuple[int, torch.Tensor]]) -> None:
        """Commit ``{entry: (start, positions [start, start + n))}``."""
        if not parts:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            ident, commits, length = _header(fd)
            ident = ident or int.from_bytes(os.urandom(8), "little") | 1
            body = pack_parts({f"{e}@{start}": t for e, (start, t) in parts.items()})
            size = sum(len(b) for b in body)
            at = _HEADER.size + length
            write_parts(fd, [_LEN.pack(size), *body], at)
            end = length + _LEN.size + size
            os.pwrite(fd, _HEADER.pack(ident, commits + 1, end), 0)
        finally:
            os.close(fd)

    def reset(self) -> None:
        """Empty the log (committed first, then the file shrinks)."""
        fd = self._open(os.O_RDWR)
        if fd is None:
            return
        try:
            ident, commits, _ = _header(fd)
            os.pwrite(fd, _HEADER.pack(ident, commits + 1, 0), 0)
            os.ftruncate(fd, _HEADER.size)
        finally:
            os.close(fd)

    def read(self) -> dict[str, torch.Tensor]:
        """Every entry whole: its slices joined along ``dim``."""
        fd = self._open(os.O_RDONLY)
        if fd is None:
            return {}
        try:
            length = _header(fd)[2]
            body = bytearray(length)
            if os.preadv(fd, [body], _HEADER.size) != length:
                raise ValueError(f"shorter than its committed {length} bytes")
            slices = _batches(memoryview(body))
        except Exception as e:  # a foreign or damaged file: rebuild the caches
            log.warning("%s is unreadable (%s): read as empty", self.path, e)
            return {}
        finally:
            os.close(fd)
        joined: dict[str, list[torch.Tensor]] = {}
        sizes: dict[str, int] = {}
        for name, t in slices:
            entry, start = name.rsplit("@", 1)
            if int(start) == 0:  # (re)built from its first position
                joined[entry], sizes[entry] = [t], t.shape[self.dim]
            elif sizes.get(entry) == int(start):
                joined[entry].append(t)
                sizes[entry] += t.shape[self.dim]
            else:  # a gap: this entry cannot be trusted until rebuilt
                joined.pop(entry, None)
                sizes.pop(entry, None)
        return {e: torch.cat(ts, self.dim) for e, ts in joined.items()}

    def _open(self, flags: int) -> int | None:
        try:
            return os.open(self.path, flags)
        except FileNotFoundError:
            return None


def _header(fd: int) -> tuple[int, int, int]:
    head = os.pread(fd, _HEADER.size, 0)
    return _HEADER.unpack(head) if len(head) == _HEADER.size else (0, 0, 0)


def _batches(body: memoryview) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every batch in ``body``, in order."""
    out, pos = [], 0
    while pos < len(body):
        (size,) = _LEN.unpack_from(body, pos)
        pos += _LEN.size
        if pos + size > len(body):
            raise ValueError(f"a batch runs past the end ({pos + size} bytes)")
        out += list(unpack(body[pos : pos + size]).items())
        pos += size
    return out
