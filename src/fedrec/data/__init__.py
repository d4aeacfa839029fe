"""Dataset loaders, splits and the canonical :class:`InteractionData`.

Every loader returns an :class:`InteractionData`; :func:`load_dataset` picks one
by name so a config can say ``kind = "kuaishou"`` and pass the rest as keywords.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedrec.data.dataset import InteractionData
from fedrec.data.generic_csv import load_csv
from fedrec.data.kuaishou import load_kuaishou
from fedrec.data.recbole_atomic import load_recbole
from fedrec.data.splits import (
    Split,
    divide_open_private,
    global_temporal_split,
    leave_one_out_split,
    temporal_ratio_split,
)
from fedrec.data.synthetic import make_synthetic
from fedrec.errors import DataError

LOADERS: dict[str, Callable[..., InteractionData]] = {
    "kuaishou": load_kuaishou,
    "recbole": load_recbole,
    "csv": load_csv,
    "synthetic": make_synthetic,
}


def load_dataset(kind: str, **kwargs: Any) -> InteractionData:
    """Load a dataset with the loader named ``kind``.

    Parameters
    ----------
    kind
        One of ``"kuaishou"`` (:func:`load_kuaishou`), ``"recbole"``
        (:func:`load_recbole`), ``"csv"`` (:func:`load_csv`) or ``"synthetic"``
        (:func:`make_synthetic`).
    **kwargs
        Passed to that loader unchanged.

    Raises
    ------
    DataError
        On an unknown ``kind`` (the message lists the valid ones).
    """
    if kind not in LOADERS:
        raise DataError(
            f"unknown dataset kind {kind!r}; valid kinds: {sorted(LOADERS)}"
        )
    return LOADERS[kind](**kwargs)


__all__ = [
    "InteractionData",
    "Split",
    "divide_open_private",
    "global_temporal_split",
    "leave_one_out_split",
    "load_csv",
    "load_dataset",
    "load_kuaishou",
    "load_recbole",
    "make_synthetic",
    "temporal_ratio_split",
]
