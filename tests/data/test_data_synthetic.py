"""The synthetic generator: deterministic, well-formed, and learnable."""

from __future__ import annotations

import re

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedrec.data import make_synthetic


def test_same_seed_same_data() -> None:
    a, b = make_synthetic(seed=7), make_synthetic(seed=7)
    assert a.interactions.equals(b.interactions)
    assert np.array_equal(a.user_features, b.user_features)
    assert np.array_equal(a.item_features, b.item_features)
    assert a.item_text == b.item_text
    assert not a.interactions.equals(make_synthetic(seed=8).interactions)


def test_shapes_and_properties() -> None:
    d = make_synthetic(
        n_users=50, n_items=80, interactions_per_user=(5, 9), n_user_fields=2
    )
    df = d.interactions
    counts = np.bincount(df["user"], minlength=d.n_users)
    assert d.n_users == 50 and d.n_items == 80
    assert counts.min() >= 5 and counts.max() <= 9
    assert d.user_features.shape == (50, 2) and d.item_features.shape == (80, 3)
    assert d.user_feature_names[0] == "group" and d.user_features[:, 0].max() < 4
    assert d.item_field_cardinalities() == [6, 6, 6]
    assert set(df["label"].unique()) <= {0.0, 1.0}
    assert 0.4 < df["label"].mean() < 0.6
    steps = df.groupby("user")["timestamp"].diff().dropna()
    assert (steps >= 0).all() and (steps == 0).any()  # increasing, with ties
    assert all(re.fullmatch(r"item \d+ \S+ \S+", t) for t in d.item_text)
    raw = int(d.item_ids[0])
    assert d.item_text[0].startswith(f"item {raw} ")


def test_learnable_from_group_by_item_fields() -> None:
    d = make_synthetic(seed=1)
    df = d.interactions
    user, item = df["user"].to_numpy(), df["item"].to_numpy()
    groups, fields, card = 4, d.item_features.shape[1], 6
    x = np.zeros((len(df), groups * fields * card))
    group = d.user_features[user, 0]
    for f in range(fields):
        x[
            np.arange(len(df)), (group * fields + f) * card + d.item_features[item, f]
        ] = 1
    y = df["label"].to_numpy()
    held = np.random.default_rng(0).random(len(df)) < 0.3
    model = LogisticRegression(max_iter=500).fit(x[~held], y[~held])
    auc = roc_auc_score(y[held], model.predict_proba(x[held])[:, 1])
    assert auc > 0.6
