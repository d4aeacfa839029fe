"""A SuperNode's private tensors, kept on the node's own disk.

Why not ``Context.state``: Flower's simulation ships a node's context to the
worker and back with every message, so a FedPA node hosting 100 users moved its
whole private bank (≈ 2.4 KB a user) twice a round without need. The store
never enters a message.

Layout: two files, ``private-0.bin`` and ``private-1.bin``, written in turn.
Each is a 16-byte header (generation, body length: little-endian ``u64``) and
a body: the tensors packed as in :func:`fedrec.flower.records.pack`. A save
overwrites the file with the *older* generation in place — body first, header
last — so a kill at any point leaves the newer file, the last complete save, as
the one a load picks. No file is created, renamed or reallocated after the
first two saves: on this machine's disk a rename costs ≈ 0.4 ms, an in-place
write of 30 KB ≈ 0.02 ms. A process keeps one store object per node and run
(:meth:`NodeStore.of`), with both files open: a message reads the two headers
with ``pread`` and opens nothing. It also keeps what it saved or loaded last
and reuses it while the newest generation on disk is still its own, so a node
served by one long-lived worker reads only the headers per message.

Generations are the fedrec ServerApp's rounds: round ``t``'s train saves
generation ``t + 1`` and reads the newest ``<= t``. A server that died after
the nodes saved round ``t`` but before it checkpointed that round resumes at
round ``t``: the nodes read the older file (generation ``t``) and overwrite the
newer one, so a resumed run continues exactly where its checkpoint stands.

Where: the node config's ``store`` directory (a deployment chooses where its
users' personalised models live; kept after the run), else a temporary
directory (``$FEDREC_NODE_STORE`` or the system's), removed when the run ends
(a killed run's stays, for its resume).
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

from fedrec.errors import FedrecError
from fedrec.flower.records import pack_parts, unpack, write_parts

_HEADER = struct.Struct("<QQ")  # generation (0: never completed), body length
# store root -> (generation, tensors) this process last saved or loaded
_CACHE: dict[Path, tuple[int, dict[str, torch.Tensor]]] = {}
# (store option, $FEDREC_NODE_STORE, run id, partition) -> this process's store
_STORES: dict[tuple[Any, ...], NodeStore] = {}


class NodeStore:
    """The private tensors (one row per hosted client) of one node in one run."""

    def __init__(self, root: Path, keep: bool) -> None:
        self.root, self.keep = root, keep
        self.files = [root / f"private-{i}.bin" for i in (0, 1)]
        self._fds: list[int | None] = [None, None]  # opened once the files exist

    @classmethod
    def of(
        cls, context: Any, partition_id: int, key: str = "", suffix: str = ""
    ) -> NodeStore:
        """The store of this node (``context``, ``partition_id``) in this run.

        ``key`` names the run's stores (the ServerApp sends it, stable across a
        resume); empty: ``run-<run id>``, which a resumed run would not find.
        ``suffix`` names another store of the same run (``"-split"``).
        """
        base, env = (
            context.node_config.get("store"),
            os.environ.get("FEDREC_NODE_STORE"),
        )
        key = (key or f"run-{context.run_id}") + suffix
        cache_key = (base, env, key, partition_id)
        if cache_key not in _STORES:
            keep = bool(base)
            if not base:
                base = Path(env or tempfile.gettempdir()) / "fedrec-nodes"
            root = Path(str(base)) / f"{key}-p{partition_id}"
            _STORES[cache_key] = cls(root, keep)
        return _STORES[cache_key]

    def load(self, at_most: int | None = None) -> dict[str, torch.Tensor] | None:
        """The newest saved tensors (of generation ``<= at_most``), or ``None``.

        The tensors may be this process's cached ones (when no other process
        saved since): callers must not change them in place.
        """
        gens = self._generations()
        limit = math.inf if at_most is None else at_most
        fits = [i for i in range(2) if 0 < gens[i][0] <= limit]
        if not fits:
            return None
        newest = max(fits, key=lambda i: gens[i][0])
        gen, length = gens[newest]
        hit = _CACHE.get(self.root)
        if hit is not None and hit[0] == gen:  # nobody saved since this process did
            return dict(hit[1])
        path = self.files[newest]
        try:
            body = bytearray(length)
            fd = self._fds[newest]
            assert fd is not None  # _generations opened every file it read
            if os.preadv(fd, [body], _HEADER.size) != length:
                raise ValueError(f"body shorter than {length} bytes")
            tensors = unpack(body)
        except Exception as e:  # a truncated or foreign file
            raise FedrecError(
                f"node store {path} is unreadable ({e}); delete {self.root} to "
                "restart this node's clients from the model"
            ) from e
        _CACHE[self.root] = (gen, tensors)
        return dict(tensors)

    def save(
        self, tensors: dict[str, torch.Tensor], generation: int | None = None
    ) -> None:
        """Save ``tensors`` as ``generation`` (default: one past the newest).

        The file overwritten is one holding ``generation`` or later (left by a
        run that died before its server recorded that round), else the older
        one; a kill at any point leaves the other file intact.
        """
        gens = self._generations()
        generation = generation or max(g for g, _ in gens) + 1
        ahead = [i for i in range(2) if gens[i][0] >= generation] or [0, 1]
        older = min(ahead, key=lambda i: gens[i][0])
        body = pack_parts(tensors)
        length = sum(len(part) for part in body)
        fd = self._fds[older]
        if fd is None:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = self._fds[older] = os.open(
                self.files[older], os.O_RDWR | os.O_CREAT, 0o600
            )
        write_parts(fd, body, _HEADER.size)  # the parts as they are, not a copy
        if os.fstat(fd).st_size > _HEADER.size + length:
            os.ftruncate(fd, _HEADER.size + length)
        os.pwrite(fd, _HEADER.pack(generation, length), 0)  # commits the save
        _CACHE[self.root] = (generation, dict(tensors))

    def newest(self) -> int:
        """The newest generation saved (0: none)."""
        return max(g for g, _ in self._generations())

    def finish(self) -> None:
        """End of run: a temporary store is removed, a chosen one kept."""
        _CACHE.pop(self.root, None)
        self.close()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        """Close the files (a later load or save opens them again)."""
        for i, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[i] = None

    __del__ = close

    def _generations(self) -> list[tuple[int, int]]:
        out = []
        for i, path in enumerate(self.files):
            fd = self._fds[i]
            if fd is None:
                try:
                    fd = self._fds[i] = os.open(path, os.O_RDWR)
                except FileNotFoundError:
                    out.append((0, 0))
                    continue
            head = os.pread(fd, _HEADER.size, 0)
            out.append(_HEADER.unpack(head) if len(head) == _HEADER.size else (0, 0))
        return out
