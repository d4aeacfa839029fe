"""Seeded Kuaishou-like synthetic data with planted group and user effects.

For unit tests, smoke runs and the demo (fedpa.md §5.3, fellrec.md §2.2);
nothing is downloaded. The click model is

``logit(u, i) = sum_f W[g_u, f, x_if] + (β s(g_u) + τ_u) P[x_ik]
+ b_u + c_i + eps - m``, ``label ~ Bernoulli(sigmoid(logit))``

with ``g_u`` the user's planted group (user field 0), ``x_if`` item ``i``'s code
in item field ``f``, group preferences ``W ~ N(0, s_W^2)``, user and item effects
``b_u, c_i ~ N(0, 0.5^2)``, noise ``eps ~ N(0, 0.5^2)`` and ``m`` the mean
logit, so the click rate is about 0.5. A model that crosses the group with the
item fields can therefore beat chance clearly (AUC around 0.75).

The middle term is a *shifted taste* along one axis ``P ~ N(0, 1)`` over the
codes of the category field ``k`` (item field 1, the genre; field 0 if there
is only one): its sign ``s(g) = +1`` for the groups in ``open_groups`` and
``-1`` for the others, its strength ``β`` (``shift``), and each user deviates
from its group by ``τ_u ~ N(0, σ_τ^2)`` (``user_taste``). With the open
(pre-training) users drawn mostly from ``open_groups`` (``[data.users] style =
"attribute"``), a foundation model learns ``+β`` and rarely sees the other
groups' preferences ``W``, while the clients come mostly from the other
groups: there is a group-level shift to adapt to, shared by a group's users,
and a user-level one on top. The defaults (``β = σ_τ = 0``, ``s_W = 1``) leave
the term out and give the data of earlier versions, seed for seed (``P`` and
``τ`` come from a second stream, ``default_rng([seed, 1])``).
"""

from __future__ import annotations

import numpy as np

from fedrec.data.dataset import InteractionData
from fedrec.data.generic_csv import encode_ids, interactions_frame

COLOURS = ("red", "blue", "green", "gold", "black", "white", "pink", "grey")
CATEGORY = 1  # item field of the shifted taste (the genre); field 0 if only one
GENRES = ("comedy", "drama", "action", "horror", "romance", "sci-fi", "crime", "war")


def _word(words: tuple[str, ...], code: int) -> str:
    return words[code] if code < len(words) else f"{words[code % len(words)]}{code}"


def make_synthetic(
    *,
    n_users: int = 200,
    n_items: int = 300,
    n_user_groups: int = 4,
    interactions_per_user: tuple[int, int] = (10, 60),
    n_user_fields: int = 3,
    n_item_fields: int = 3,
    field_cardinality: int = 6,
    seed: int = 0,
    group_scale: float = 1.0,
    shift: float = 0.0,
    open_groups: list[int] | tuple[int, ...] = (),
    user_taste: float = 0.0,
) -> InteractionData:
    """Generate a deterministic Kuaishou-like dataset.

    Parameters
    ----------
    n_users, n_items
        Raw ids are ``0..n_users-1`` and ``0..n_items-1``.
    n_user_groups
        Planted groups; user field 0 (``"group"``) is the group id.
    interactions_per_user
        Inclusive range of each user's row count, drawn uniformly.
    n_user_fields, n_item_fields
        Categorical fields; user fields after the first and all item fields are
        uniform over ``field_cardinality`` codes.
    field_cardinality
        Codes per random field.
    seed
        Seed of ``np.random.default_rng``; equal seeds give equal data.
    group_scale
        Standard deviation ``s_W`` of the group preferences ``W``.
    shift
        Strength ``β`` of the shifted taste, the group × category interaction
        ``β s(g) P[x_ik]``: ``s(g) = +1`` in ``open_groups``, ``-1`` elsewhere.
    open_groups
        The groups the open (pre-training) users mostly come from; pair it
        with ``[data.users] style = "attribute"``, ``attribute = "group"``,
        ``values = open_groups``.
    user_taste
        Standard deviation ``σ_τ`` of each user's own deviation ``τ_u`` from
        its group's strength along ``P``.

    Returns
    -------
    InteractionData
        Rows grouped by user, non-decreasing timestamps per user (about a
        quarter of consecutive rows tie), items drawn with replacement; titles
        like ``"item 17 blue comedy"`` (item fields 0 and 1 as words). Item
        codes follow first appearance; never-drawn items come last.
    """
    if n_user_fields < 1 or n_item_fields < 1 or n_users < 1 or n_items < 1:
        raise ValueError("need at least one user, item, user field and item field")
    lo, hi = interactions_per_user
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= low <= high rows per user, got {lo}, {hi}")
    bad = [g for g in open_groups if not 0 <= g < n_user_groups]
    if bad:
        raise ValueError(f"open_groups {bad} not in 0..{n_user_groups - 1}")
    rng = np.random.default_rng(seed)
    group = rng.integers(n_user_groups, size=n_users)
    ufeat = np.column_stack(
        [group, rng.integers(field_cardinality, size=(n_users, n_user_fields - 1))]
    )
    ifeat = rng.integers(field_cardinality, size=(n_items, n_item_fields))
    pref = rng.normal(0.0, 1.0, size=(n_user_groups, n_item_fields, field_cardinality))
    pref *= group_scale
    user_eff = rng.normal(0.0, 0.5, size=n_users)
    item_eff = rng.normal(0.0, 0.5, size=n_items)

    counts = rng.integers(lo, hi + 1, size=n_users)
    user = np.repeat(np.arange(n_users), counts)  # (N,) grouped by user
    item = rng.integers(n_items, size=len(user))  # (N,)
    fields = np.arange(n_item_fields)
    logit = pref[group[user][:, None], fields[None, :], ifeat[item]].sum(axis=1)
    logit += user_eff[user] + item_eff[item] + rng.normal(0.0, 0.5, size=len(user))
    if shift or user_taste:  # its own stream: the default data stay as they were
        extra = np.random.default_rng([seed, 1])
        axis = extra.normal(0.0, 1.0, size=field_cardinality)  # P over the codes
        sign = np.where(np.isin(np.arange(n_user_groups), open_groups), 1.0, -1.0)
        taste = shift * sign[group] + extra.normal(0.0, user_taste, size=n_users)
        logit += taste[user] * axis[ifeat[item, CATEGORY % n_item_fields]]
    logit -= logit.mean()
    label = (rng.random(len(user)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)

    gaps = rng.integers(0, 4, size=len(user)) * 60  # gap 0 -> timestamp tie
    start = np.cumsum(counts) - counts
    gaps[start] = rng.integers(1_600_000_000, 1_600_100_000, size=n_users)
    ts = np.cumsum(gaps)
    ts -= np.repeat(ts[start] - gaps[start], counts)  # restart the sum per user

    item_codes, item_ids = encode_ids(item, np.arange(n_items))
    titles = [
        " ".join(
            [f"item {i}", _word(COLOURS, int(ifeat[i, 0]))]
            + ([_word(GENRES, int(ifeat[i, 1]))] if n_item_fields > 1 else [])
        )
        for i in item_ids
    ]
    return InteractionData(
        interactions=interactions_frame(user, item_codes, ts, label),
        user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=item_ids.astype(np.int64),
        user_features=ufeat.astype(np.int64),
        item_features=ifeat[item_ids].astype(np.int64),
        user_feature_names=["group"] + [f"user_f{k}" for k in range(1, n_user_fields)],
        item_feature_names=[f"item_f{k}" for k in range(n_item_fields)],
        item_text=titles,
        source=f"synthetic:seed={seed},users={n_users},items={n_items}",
    )
