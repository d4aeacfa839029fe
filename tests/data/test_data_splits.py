"""Splits on hand-built toy data with timestamp ties; expected rows by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data import (
    InteractionData,
    Split,
    divide_open_private,
    global_temporal_split,
    leave_one_out_split,
    load_kuaishou,
    temporal_ratio_split,
)
from fedrec.errors import DataError

KUAISAR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "kuaisar-r"

# (user, timestamp) per row. User 0 has 10 rows with ties (rows 0/3 at t=5, rows
# 6/10 at t=9), user 1 has 4 rows, user 2 has 5 rows all at t=1.
ROWS = [
    (0, 5), (0, 1), (1, 1), (0, 5), (0, 3), (1, 2), (0, 9), (0, 7), (1, 3), (0, 2),
    (0, 9), (0, 8), (1, 4), (0, 4), (2, 1), (2, 1), (2, 1), (2, 1), (2, 1),
]  # fmt: skip


def toy(
    rows: list[tuple[int, int]] = ROWS, user_features: np.ndarray | None = None
) -> InteractionData:
    user, ts = np.array(rows).T
    n_users = int(user.max()) + 1
    df = pd.DataFrame(
        {
            "user": user,
            "item": np.arange(len(rows)) % 3,
            "timestamp": ts,
            "label": np.ones(len(rows), np.float32),
        }
    )
    return InteractionData(
        interactions=df,
        user_ids=np.arange(n_users),
        item_ids=np.arange(3),
        user_features=user_features,
        user_feature_names=[] if user_features is None else ["other", "level"],
        source="toy",
    )


def rows_of(split: Split) -> tuple[list[int], list[int], list[int]]:
    return split.train.tolist(), split.val.tolist(), split.test.tolist()


def test_temporal_ratio_split_by_hand() -> None:
    s = temporal_ratio_split(toy())
    # user 0 by (t, file order): 1 9 4 13 0 3 7 11 6 10 -> test 6 10, val 7 11
    # user 1 has n=4 < 5: dropped; user 2 (ties only): newest in file order is 18
    train, val, test = rows_of(s)
    assert test == [6, 10, 18]
    assert val == [7, 11, 17]
    assert train == [0, 1, 3, 4, 9, 13, 14, 15, 16]
    assert s.dropped_users == 1
    assert s.train.dtype == np.int64 and "temporal_ratio" in s.name


def test_temporal_ratio_split_counts_per_user() -> None:
    rows = [(0, t) for t in range(10)] + [(1, t) for t in range(4)] + [(2, 0)] * 7
    s = temporal_ratio_split(toy(rows))
    user = toy(rows).interactions["user"].to_numpy()
    counts = [
        np.bincount(user[p], minlength=3).tolist() for p in (s.train, s.val, s.test)
    ]
    assert counts == [[6, 0, 5], [2, 0, 1], [2, 0, 1]]  # n=10: 6/2/2, n=7: 5/1/1
    assert temporal_ratio_split(toy(rows), min_interactions=4).dropped_users == 0


def test_leave_one_out_by_hand() -> None:
    train, val, test = rows_of(leave_one_out_split(toy()))
    assert test == [10, 12, 18] and val == [6, 8, 17]
    assert train == [0, 1, 2, 3, 4, 5, 7, 9, 11, 13, 14, 15, 16]
    s = leave_one_out_split(toy(), min_interactions=5)
    assert s.dropped_users == 1 and 12 not in s.test


def test_global_temporal_by_hand() -> None:
    # all rows by (t, file order):
    # 1 2 14 15 16 17 18 | 5 9 | 4 8 | 12 13 | 0 3 | 7 | 11 | 6 10
    train, val, test = rows_of(global_temporal_split(toy(), val=0.2, test=0.2))
    assert test == [6, 10, 11] and val == [0, 3, 7]
    assert len(train) == 13
    # int(0.1 * 19) = 1: the tie at t=9 is broken by file order
    s = global_temporal_split(toy())
    assert s.test.tolist() == [10] and s.val.tolist() == [6] and s.dropped_users == 0


def test_splits_partition_rows() -> None:
    for s in (
        temporal_ratio_split(toy(), min_interactions=1),
        leave_one_out_split(toy(), 1),
        global_temporal_split(toy()),
    ):
        assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(
            range(19)
        )


def test_bad_fractions() -> None:
    with pytest.raises(ValueError, match="val \\+ test"):
        temporal_ratio_split(toy(), val=0.5, test=0.5)


def attribute_data() -> InteractionData:
    # 30 users; users 0..9 have level 1 or 2 (in the set), 10..29 level 0 or 3
    level = np.array([1, 2] * 5 + [0, 3] * 10)
    feats = np.column_stack([np.zeros(30, np.int64), level])
    return toy([(u, 0) for u in range(30)], feats)


def test_divide_attribute_rule_counts() -> None:
    d = attribute_data()
    open_, private = divide_open_private(
        d, style="attribute", attribute="level", values=[1, 2]
    )
    assert len(open_) == 8 + 4  # round(0.8 * 10) in-set + round(0.2 * 20) others
    assert (open_ < 10).sum() == 8
    assert np.all(np.diff(open_) > 0) and np.all(np.diff(private) > 0)
    assert sorted(np.concatenate([open_, private]).tolist()) == list(range(30))
    again = divide_open_private(d, style="attribute", attribute="level", values=[1, 2])
    assert open_.tolist() == again[0].tolist()


def test_divide_random_rule() -> None:
    d = attribute_data()
    open_, private = divide_open_private(d, style="random", open_ratio=0.2, seed=3)
    assert len(open_) == 6 and len(private) == 24
    assert (
        open_.tolist()
        == divide_open_private(d, style="random", open_ratio=0.2, seed=3)[0].tolist()
    )
    assert (
        open_.tolist()
        != divide_open_private(d, style="random", open_ratio=0.2, seed=4)[0].tolist()
    )


def test_divide_errors() -> None:
    with pytest.raises(
        DataError,
        match=r"unknown user attribute 'user_active_degree'.*\['other', 'level'\]",
    ):
        divide_open_private(
            attribute_data(),
            style="attribute",
            attribute="user_active_degree",
            values=[5],
        )
    with pytest.raises(DataError, match="needs `values`"):
        divide_open_private(attribute_data(), style="attribute", attribute="level")
    with pytest.raises(DataError, match="unknown open/private style"):
        divide_open_private(attribute_data(), style="clusters")  # type: ignore[arg-type]


def test_kuaisar_r_split_counts() -> None:
    if not (KUAISAR / "df.csv").is_file():
        pytest.skip(f"KuaiSAR-R not present at {KUAISAR.resolve()}")
    d = load_kuaishou(KUAISAR)
    s = temporal_ratio_split(d)
    assert (len(s.train), len(s.val), len(s.test), s.dropped_users) == (
        71_944,
        22_823,
        22_823,
        0,
    )
    open_, private = divide_open_private(d, style="random", open_ratio=0.25, seed=0)
    assert (len(open_), len(private)) == (448, 1_343)  # round(0.25 * 1791)
