"""Sequential-recommendation samples (fellrec.md §2.1, the reference protocol).

From a row split, with a history window W (10), per user, items in time order
(ties by file order):

- train: for positions i ∈ [min(W, n−1), n) of the user's n train items,
  history = the W items before i, target = item i (users with one train item
  give no sample);
- valid: every validation item is a target; history = the last W items of
  train + the user's earlier validation items;
- test: one sample per test user; history = the last W items of train + valid;
  targets = all of the user's test items (multi-item).

``history`` is oldest → newest; a recommender that reads most-recent-first
reverses it. ``seen`` (train + valid items of the user, for history masking at
test time; train items plus earlier valid items at validation) is kept apart.

Under the global temporal split (FELLRec's reference) a user may have several
validation items, or test items only (no test sample: no history). Under
leave-one-out (the FELLRec default on ML-100K) every kept user has exactly one
validation sample, target = its second-to-last item, history = the last W
train items, seen = its train items; and one test sample, target = its last
item, history = the last W of train + that validation item, seen = all of
them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.data.dataset import InteractionData
from fedrec.data.splits import Split


@dataclass
class Samples:
    """Samples of a split: ``user[k]``, ``history[k]``, ``targets[k]``, ``seen[k]``."""

    user: np.ndarray
    history: list[np.ndarray]
    targets: list[np.ndarray]
    seen: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.user)


def _sequences(data: InteractionData, rows: np.ndarray) -> dict[int, np.ndarray]:
    df = data.interactions.iloc[np.sort(rows)]
    df = df.sort_values(["user", "timestamp"], kind="stable")
    users = df["user"].to_numpy()
    items = df["item"].to_numpy()
    cuts = np.flatnonzero(np.diff(users)) + 1
    return {
        int(u[0]): i
        for u, i in zip(np.split(users, cuts), np.split(items, cuts), strict=True)
        if len(u)
    }


def build_samples(
    data: InteractionData, split: Split, window: int = 10
) -> dict[str, Samples]:
    """Train, valid and test samples for every user."""
    tr, va, te = (_sequences(data, s) for s in (split.train, split.val, split.test))
    empty = np.zeros(0, dtype=np.int64)
    out = {
        s: Samples(np.zeros(0, np.int64), [], [], []) for s in ("train", "val", "test")
    }
    cols: dict[str, tuple[list, list, list, list]] = {s: ([], [], [], []) for s in out}
    for u, seq in tr.items():
        for i in range(min(window, len(seq) - 1), len(seq)):
            if i == 0:
                continue
            _add(cols["train"], u, seq[max(0, i - window) : i], seq[i : i + 1], seq[:i])
    for u, seq in va.items():
        past = tr.get(u, empty)
        for i in range(len(seq)):
            hist = np.concatenate([past, seq[:i]])
            if len(hist):
                _add(cols["val"], u, hist[-window:], seq[i : i + 1], hist)
    for u, seq in te.items():
        hist = np.concatenate([tr.get(u, empty), va.get(u, empty)])
        if len(hist):
            _add(cols["test"], u, hist[-window:], np.unique(seq), hist)
    for s, (us, hs, ts, ss) in cols.items():
        out[s] = Samples(np.array(us, dtype=np.int64), hs, ts, ss)
    return out


def _add(
    col: tuple[list, list, list, list],
    u: int,
    hist: np.ndarray,
    targets: np.ndarray,
    seen: np.ndarray,
) -> None:
    col[0].append(u)
    col[1].append(hist.astype(np.int64))
    col[2].append(targets.astype(np.int64))
    col[3].append(np.unique(seen).astype(np.int64))
