"""Tasks' evaluation statistics: fixed shapes, additive, equal to row pooling."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.fl.seq import SeqRecTask
from fedrec.metrics import client_stats, gauc, log_loss, weighted_prf

N_GROUPS = 5


def _seq_task() -> SeqRecTask:
    return SeqRecTask(None, SimpleNamespace(n_groups=N_GROUPS))  # type: ignore[arg-type]


def _seq_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random per-user rows: group 3 has no user, group 4's are all NaN."""
    rng = np.random.default_rng(seed)
    groups = rng.choice([0, 1, 2, 4], size=n)
    out = {"user": np.arange(n), "client": groups}
    for m in SeqRecTask.metric_names():
        v = rng.random(n)
        v[rng.random(n) < 0.2] = np.nan  # users without a ground truth
        v[groups == 4] = np.nan
        out[m] = v
    return out


def _pooled_rows(scores: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """Reference: pooling the concatenated rows themselves."""
    cl = scores["client"]
    out: dict[str, Any] = {
        "users": int(len(cl)),
        "users_clients": [int((cl == c).sum()) for c in range(n)],
    }
    for k, v in scores.items():
        if k in ("client", "user"):
            continue
        out[k] = float(np.nanmean(v)) if not np.isnan(v).all() else float("nan")
        if k in ("recall@10", "ndcg@10"):
            means = {
                int(c): float(np.nanmean(v[cl == c]))
                if not np.isnan(v[cl == c]).all()
                else float("nan")
                for c in np.unique(cl)
            }
            st = client_stats(means)
            out.update(
                {
                    f"{k}_client_std": st["std"],
                    f"{k}_client_gap": st["gap"],
                    f"{k}_client_worst": st["worst"],
                    f"{k}_clients": [means.get(c) for c in range(n)],
                }
            )
    return out


def _same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    for k, w in want.items():
        g = got[k]
        if isinstance(w, list):
            assert len(g) == len(w), k
            for a, b in zip(g, w, strict=True):
                assert (a is None) == (b is None), k
                if b is not None:
                    assert a == pytest.approx(b, rel=1e-12, nan_ok=True), k
        else:
            assert g == pytest.approx(w, rel=1e-12, nan_ok=True), k


def test_seq_stats_have_the_fixed_schema_whatever_the_rows():
    task = _seq_task()
    for n in (0, 1, 50):
        stats = task.stats(_seq_rows(n))
        assert {k: v.shape for k, v in stats.items()} == task.stat_shapes()
        assert all(s == (N_GROUPS,) for s in task.stat_shapes().values())


def test_seq_metrics_from_stats_equal_pooling_the_rows():
    task, rows = _seq_task(), _seq_rows(200)
    got = task.metrics_from_stats(task.stats(rows))
    _same(got, _pooled_rows(rows, N_GROUPS))
    assert got["users_clients"][3] == 0 and got["recall@10_clients"][3] is None
    assert np.isnan(got["ndcg@10_clients"][4])  # users, none with a value


def test_seq_stats_of_two_nodes_sum_to_those_of_all_rows():
    task, rows = _seq_task(), _seq_rows(120, seed=3)
    node = rows["user"] % 2
    parts = [task.stats({k: v[node == i] for k, v in rows.items()}) for i in (0, 1)]
    summed = {k: parts[0][k] + parts[1][k] for k in parts[0]}
    _same(task.metrics_from_stats(summed), _pooled_rows(rows, N_GROUPS))


def test_seq_metrics_of_no_user_are_empty():
    task = _seq_task()
    empty = {"user": np.zeros(0, np.int64), "client": np.zeros(0, np.int64)}
    assert task.metrics_from_stats(task.stats(empty)) == {}


def test_embedded_evaluation_keeps_the_rows_and_matches_the_exact_metrics():
    raw = {
        "data": {"options": {"n_users": 30, "n_items": 40, "seed": 2}},
        "model": {"dim": 4, "layers": [8, 4]},
        "train": {"rounds": 1, "dtype": "float64"},
        "method": {"name": "fedavg"},
    }
    eng = build_engine(config_from_raw(raw))
    eng.run_round(0)
    m = eng.evaluate("test")
    rows = eng.last_rows["test"]
    assert set(rows) == {"probs", "labels", "users"}
    assert len(rows["labels"]) == len(eng.fed.rows["test"])
    y, p, u = rows["labels"], rows["probs"], rows["users"]
    assert m["gauc"] == pytest.approx(gauc(y, p, u), rel=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, p), rel=1e-12)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx(
        weighted_prf(y, p), rel=1e-12
    )
    shapes = eng.task.stat_shapes()
    assert {k: v.shape for k, v in eng.task.stats(rows).items()} == shapes
