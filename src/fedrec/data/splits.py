"""Train / validation / test splits and the FedPA open / private user division.

All splits order rows by timestamp with ties broken by file order (a stable
sort), so the same data always gives the same split. Splits return positional
row indices into ``data.interactions``, each array sorted ascending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedrec.data.dataset import InteractionData
from fedrec.errors import DataError


@dataclass
class Split:
    """Row indices of one split.

    Attributes
    ----------
    train, val, test
        ``int64`` positional row indices into ``data.interactions``, ascending.
    dropped_users
        Users with interactions that were left out (too few rows).
    name
        The rule and its parameters, for result headers.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    dropped_users: int
    name: str

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):
            setattr(self, part, np.asarray(getattr(self, part), dtype=np.int64))


def _check_fractions(val: float, test: float) -> None:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"need 0 <= val, test and val + test < 1, got {val}, {test}")


def _per_user(
    data: InteractionData,
    n_test: np.ndarray | int,
    n_val: np.ndarray | int,
    counts: np.ndarray,
    min_interactions: int,
    name: str,
) -> Split:
    """Hold out each user's newest ``n_test`` rows, then the ``n_val`` before them.

    ``n_test`` / ``n_val`` are per-user arrays (indexed by user code) or ints.
    """
    df = data.interactions
    user = df["user"].to_numpy()
    order = np.lexsort((np.arange(len(df)), df["timestamp"].to_numpy(), user))
    u = user[order]  # rows grouped by user, oldest first within a user
    start = np.cumsum(counts) - counts
    back = counts[u] - 1 - (np.arange(len(u)) - start[u])  # 0 = the newest row
    t = np.broadcast_to(n_test, counts.shape)[u]
    v = np.broadcast_to(n_val, counts.shape)[u]
    keep = counts[u] >= min_interactions
    test = order[keep & (back < t)]
    val = order[keep & (back >= t) & (back < t + v)]
    train = order[keep & (back >= t + v)]
    dropped = int(((counts > 0) & (counts < min_interactions)).sum())
    return Split(np.sort(train), np.sort(val), np.sort(test), dropped, name)


def temporal_ratio_split(
    data: InteractionData,
    val: float = 0.2,
    test: float = 0.2,
    min_interactions: int = 5,
) -> Split:
    """Per-user temporal split (FedPA, fedpa.md §4).

    For a user with ``n`` rows ordered by time, the newest ``int(test * n)``
    rows are test, the next ``int(val * n)`` validation and the rest train.
    Users with ``n < min_interactions`` are dropped and counted.
    """
    _check_fractions(val, test)
    counts = np.bincount(data.interactions["user"].to_numpy(), minlength=data.n_users)
    n_test = np.floor(test * counts).astype(np.int64)
    n_val = np.floor(val * counts).astype(np.int64)
    name = (
        f"temporal_ratio(val={val}, test={test}, min_interactions={min_interactions})"
    )
    return _per_user(data, n_test, n_val, counts, min_interactions, name)


def leave_one_out_split(data: InteractionData, min_interactions: int = 3) -> Split:
    """Per user: newest row is test, the one before is validation, rest train.

    Users with fewer than ``min_interactions`` rows are dropped and counted.
    """
    counts = np.bincount(data.interactions["user"].to_numpy(), minlength=data.n_users)
    name = f"leave_one_out(min_interactions={min_interactions})"
    return _per_user(data, 1, 1, counts, min_interactions, name)


def global_temporal_split(
    data: InteractionData, val: float = 0.1, test: float = 0.1
) -> Split:
    """Global temporal split (FELLRec, fellrec.md §2.1).

    All ``N`` rows ordered by (timestamp, file order): the last ``int(test * N)``
    are test, the ``int(val * N)`` before them validation, the rest train. No
    user is dropped, so a user may appear in test only.
    """
    _check_fractions(val, test)
    n = len(data.interactions)
    order = np.argsort(data.interactions["timestamp"].to_numpy(), kind="stable")
    n_test, n_val = int(test * n), int(val * n)
    train, rest = order[: n - n_test - n_val], order[n - n_test - n_val :]
    name = f"global_temporal(val={val}, test={test})"
    return Split(np.sort(train), np.sort(rest[:n_val]), np.sort(rest[n_val:]), 0, name)


def divide_open_private(
    data: InteractionData,
    *,
    style: Literal["random", "attribute"],
    open_ratio: float = 0.25,
    attribute: str | None = None,
    values: list[int] | None = None,
    in_set_ratio: float = 0.8,
    out_set_ratio: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Divide users into open (server pre-training) and private (clients).

    ``"random"``: exactly ``round(open_ratio * U)`` users drawn without
    replacement. ``"attribute"`` (fedpa.md §1.2): a random ``round(in_set_ratio
    * n_in)`` of the users whose ``attribute`` code is in ``values`` plus a
    random ``round(out_set_ratio * n_out)`` of the others. Draws use
    ``np.random.default_rng(seed)``.

    Returns
    -------
    tuple of numpy.ndarray
        Sorted ``int64`` open user codes and sorted private user codes.

    Raises
    ------
    DataError
        On an unknown style, a missing ``values``, or an attribute that is not a
        user field (the message lists the available fields).
    """
    rng = np.random.default_rng(seed)
    users = np.arange(data.n_users, dtype=np.int64)
    if style == "random":
        if not 0 <= open_ratio <= 1:
            raise ValueError(f"open_ratio must be in [0, 1], got {open_ratio}")
        chosen = rng.choice(users, size=round(open_ratio * len(users)), replace=False)
    elif style == "attribute":
        feats = data.user_features
        names = data.user_feature_names if feats is not None else []
        if feats is None or attribute not in names:
            raise DataError(
                f"{data.source}: unknown user attribute {attribute!r}; "
                f"available user fields: {names}"
            )
        if values is None:
            raise DataError(f"{data.source}: the attribute rule needs `values`")
        inside = np.isin(feats[:, names.index(attribute)], values)
        a, b = users[inside], users[~inside]
        chosen = np.concatenate(
            [
                rng.choice(a, size=round(in_set_ratio * len(a)), replace=False),
                rng.choice(b, size=round(out_set_ratio * len(b)), replace=False),
            ]
        )
    else:
        raise DataError(
            f"unknown open/private style {style!r}; use 'random' or 'attribute'"
        )
    is_open = np.zeros(len(users), dtype=bool)
    is_open[chosen] = True
    return users[is_open], users[~is_open]
