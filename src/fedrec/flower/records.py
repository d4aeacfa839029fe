"""Tensors and arrays in Flower records (``ArrayRecord``), both ways."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_record(tensors: dict[str, torch.Tensor] | dict[str, np.ndarray]) -> Any:
    """An ``ArrayRecord`` of named tensors or arrays (copied, contiguous)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(
        {
            n: Array(
                np.ascontiguousarray(t.detach().numpy() if torch.is_tensor(t) else t)
            )
            for n, t in tensors.items()
        }
    )


def from_record(record: Any) -> dict[str, torch.Tensor]:
    """Named tensors of an ``ArrayRecord`` (writable copies)."""
    return {n: torch.from_numpy(a.numpy().copy()) for n, a in record.items()}


def arrays(record: Any) -> dict[str, np.ndarray]:
    """Named numpy arrays of an ``ArrayRecord``."""
    return {n: a.numpy() for n, a in record.items()}
