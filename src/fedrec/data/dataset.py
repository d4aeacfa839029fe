"""The one canonical dataset object every loader returns.

Raw user and item ids are re-coded to contiguous integers ``0..U-1`` / ``0..I-1``
(in order of first appearance in the interaction file); the raw ids are kept in
``user_ids`` / ``item_ids`` so results can be mapped back. Row order of the
interaction file is preserved, so timestamp ties are broken by file order (a
stable sort) wherever a split orders rows by time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedrec.errors import DataError

INTERACTION_COLUMNS = ("user", "item", "timestamp", "label")


@dataclass
class InteractionData:
    """Interactions plus optional side information.

    Attributes
    ----------
    interactions
        One row per interaction, columns ``user`` (int64 code), ``item`` (int64
        code), ``timestamp`` (int64; file order where the source has none),
        ``label`` (float32 in {0, 1}) and optionally ``rating`` (float32).
    user_ids, item_ids
        Raw id of each code: ``user_ids[code]`` is the id in the source file.
    user_features
        ``int64[U, F_u]`` categorical codes, or ``None``.
    item_features
        ``int64[I, F_i]`` categorical codes, or ``None``.
    user_feature_names, item_feature_names
        Field names, one per column of the feature arrays.
    item_text
        One descriptive text per item code (what a text encoder reads: e.g.
        ``"Toy Story (1995) Animation Children's Comedy"``), or ``None``.
    item_title
        One bare title per item code where the source has more than a title
        (what a generative recommender writes and grounds), or ``None``: the
        text is the title (:attr:`titles`).
    source
        Loader name and path, for result headers.
    """

    interactions: pd.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_features: np.ndarray | None = None
    item_features: np.ndarray | None = None
    user_feature_names: list[str] = field(default_factory=list)
    item_feature_names: list[str] = field(default_factory=list)
    item_text: list[str] | None = None
    source: str = ""
    item_title: list[str] | None = None

    def __post_init__(self) -> None:
        missing = [c for c in INTERACTION_COLUMNS if c not in self.interactions]
        if missing:
            raise DataError(f"{self.source}: interactions lack columns {missing}")
        df = self.interactions
        if len(df) and (df["user"].min() < 0 or df["user"].max() >= self.n_users):
            raise DataError(f"{self.source}: user codes out of range")
        if len(df) and (df["item"].min() < 0 or df["item"].max() >= self.n_items):
            raise DataError(f"{self.source}: item codes out of range")
        for name, arr, n, names in (
            (
                "user_features",
                self.user_features,
                self.n_users,
                self.user_feature_names,
            ),
            (
                "item_features",
                self.item_features,
                self.n_items,
                self.item_feature_names,
            ),
        ):
            if arr is None:
                continue
            if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] != len(names):
                raise DataError(
                    f"{self.source}: {name} has shape {arr.shape}, "
                    f"expected ({n}, {len(names)})"
                )
            if (arr < 0).any():
                raise DataError(f"{self.source}: {name} has negative codes")
        for name, texts in (("texts", self.item_text), ("titles", self.item_title)):
            if texts is not None and len(texts) != self.n_items:
                raise DataError(
                    f"{self.source}: {len(texts)} {name} for {self.n_items} items"
                )
        if self.item_title is not None and self.item_text is None:
            raise DataError(f"{self.source}: item titles without item texts")

    @property
    def n_users(self) -> int:
        """Number of user codes."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of item codes."""
        return len(self.item_ids)

    @property
    def titles(self) -> list[str] | None:
        """Bare item titles: ``item_title``, else ``item_text`` (title-only data)."""
        return self.item_title if self.item_title is not None else self.item_text

    def user_field_cardinalities(self) -> list[int]:
        """Embedding rows per user field (max code + 1; codes may have gaps)."""
        return _cardinalities(self.user_features)

    def item_field_cardinalities(self) -> list[int]:
        """Embedding-table size per item field (max code + 1)."""
        return _cardinalities(self.item_features)


def _cardinalities(arr: np.ndarray | None) -> list[int]:
    if arr is None or arr.size == 0:
        return []
    return [int(v) + 1 for v in arr.max(axis=0)]
