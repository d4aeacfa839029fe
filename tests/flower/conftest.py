"""What the Flower tests share: a small synthetic experiment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

FEDPA = {"name": "fedpa", "group_attrs": ["group"], "adapter_lr": 0.01}


@pytest.fixture
def small_raw() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``method -> config``: 30 users, 40 items, 3 rounds of 60% of the clients,
    float64 (so both engines agree to 1e-9)."""

    def raw(method: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "data": {"options": {"n_users": 30, "n_items": 40, "seed": 2}},
            "model": {"dim": 4, "layers": [8, 4]},
            "train": {
                "rounds": 3,
                "lr": 0.05,
                "batch_size": 8,
                "client_fraction": 0.6,
                "dtype": "float64",
            },
            "method": method or FEDPA,
        }

    return raw
