"""The synthetic generator: deterministic, well-formed, and learnable."""

from __future__ import annotations

import re

import numpy as np
import pytest
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


SHIFTED = dict(n_users=400, n_user_groups=4, open_groups=[0, 1], group_scale=0.3)


def _genre_click_rates(d, rows: np.ndarray) -> np.ndarray:
    """Click rate of the given rows per code of item field 1 (the genre)."""
    df = d.interactions
    genre = d.item_features[df["item"].to_numpy(), 1]
    y = df["label"].to_numpy()
    return np.array([y[rows & (genre == c)].mean() for c in range(6)])


def test_shift_options_are_seeded_and_change_only_labels() -> None:
    a = make_synthetic(**SHIFTED, shift=2.0, user_taste=0.5, seed=4)
    b = make_synthetic(**SHIFTED, shift=2.0, user_taste=0.5, seed=4)
    assert a.interactions.equals(b.interactions)
    other = make_synthetic(**SHIFTED, shift=2.0, user_taste=0.5, seed=5)
    assert not a.interactions.equals(other.interactions)
    plain = make_synthetic(**SHIFTED, seed=4)  # the same draws, but the taste term
    cols = ["user", "item", "timestamp"]
    assert a.interactions[cols].equals(plain.interactions[cols])
    assert np.array_equal(a.user_features, plain.user_features)
    assert np.array_equal(a.item_features, plain.item_features)
    assert not a.interactions["label"].equals(plain.interactions["label"])


def test_neutral_options_give_the_default_data() -> None:
    d = make_synthetic(seed=7)
    same = make_synthetic(
        seed=7, shift=0.0, user_taste=0.0, group_scale=1.0, open_groups=[0, 1]
    )
    assert d.interactions.equals(same.interactions)


def test_shift_reverses_the_genre_taste_of_the_other_groups() -> None:
    # per genre, the click rate of users in open_groups against the others'
    # (from the rows alone): opposite profiles with the shift, not without it
    def corr(shift: float) -> float:
        d = make_synthetic(**SHIFTED, shift=shift, seed=0)
        grp = d.user_features[d.interactions["user"].to_numpy(), 0]
        inside = np.isin(grp, [0, 1])
        a, b = _genre_click_rates(d, inside), _genre_click_rates(d, ~inside)
        return float(np.corrcoef(a, b)[0, 1])

    assert corr(2.0) < -0.9
    assert corr(0.0) > 0.0


def test_user_taste_spreads_users_around_their_group() -> None:
    # each user's click-rate gap between the genres liked more and less overall
    def spread(taste: float) -> float:
        d = make_synthetic(
            n_users=300, interactions_per_user=(60, 60), user_taste=taste, seed=5
        )
        df = d.interactions
        y, user = df["label"].to_numpy(), df["user"].to_numpy()
        rates = _genre_click_rates(d, np.ones(len(df), dtype=bool))
        genre = d.item_features[df["item"].to_numpy(), 1]
        top = np.isin(genre, np.argsort(rates)[3:])
        gap = [
            y[(user == u) & top].mean() - y[(user == u) & ~top].mean()
            for u in range(300)
        ]
        return float(np.std(gap))

    assert spread(2.0) > 1.5 * spread(0.0)


def test_open_groups_must_be_groups() -> None:
    with pytest.raises(ValueError, match="open_groups"):
        make_synthetic(n_user_groups=4, open_groups=[4], shift=1.0)


def test_demo_config_plants_a_shift_between_open_users_and_clients() -> None:
    from pathlib import Path

    from fedrec.build import load_data
    from fedrec.config import load_config
    from fedrec.data.splits import divide_open_private

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.toml")
    d, u = load_data(cfg), cfg.data.users
    open_, private = divide_open_private(
        d,
        style=u.style,
        attribute=u.attribute,
        values=u.values,
        in_set_ratio=u.in_set_ratio,
        out_set_ratio=u.out_set_ratio,
        seed=u.seed,
    )
    group = d.user_features[:, 0]
    assert np.isin(group[open_], u.values).mean() > 0.9  # open: mostly groups 0-9
    assert (~np.isin(group[private], u.values)).mean() > 0.9  # clients: the others
    user = d.interactions["user"].to_numpy()
    a = _genre_click_rates(d, np.isin(user, open_))
    b = _genre_click_rates(d, np.isin(user, private))
    assert np.corrcoef(a, b)[0, 1] < -0.9  # the genres the clients like, reversed
