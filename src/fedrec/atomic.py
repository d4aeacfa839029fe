"""Atomic file writes: a kill never leaves half a file behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a sibling temporary file, then rename it to ``path``.

    What ``write`` returns is ignored. The temporary name keeps ``path``'s
    suffix (``np.save`` and ``savefig`` choose a format from it); parent
    directories are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
