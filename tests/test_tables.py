"""Tables over variants and seeds, sweeps, and their files."""

from __future__ import annotations

import csv

import pytest

from fedrec.config import config_from_raw
from fedrec.errors import ConfigError
from fedrec.tables import sweep, variants, write_table

BASE = {
    "data": {"options": {"n_users": 20, "n_items": 30}},
    "model": {"dim": 4, "layers": [8, 4]},
    "train": {"rounds": 1},
}


def test_variants_replace_method_and_apply_overrides():
    cfg = config_from_raw(
        {
            **BASE,
            "variants": {
                "a": {"method": {"name": "local"}},
                "b": {"set": ["train.lr=0.5", "model.dim=6"]},
            },
        }
    )
    got = dict(variants(cfg))
    assert got["a"].method == {"name": "local"} and got["a"].train.lr == 0.01
    assert got["b"].method["name"] == "fedavg"
    assert (got["b"].train.lr, got["b"].model.dim) == (0.5, 6)
    assert got["b"].run.name == "b"


def test_variant_errors_name_the_variant():
    cfg = config_from_raw({**BASE, "variants": {"bad": {"methd": {}}}})
    with pytest.raises(ConfigError, match="variants.bad"):
        variants(cfg, source="x.toml")
    cfg = config_from_raw({**BASE, "variants": {"v": {"set": ["train.lr=-1"]}}})
    with pytest.raises(ConfigError, match="train.lr"):
        variants(cfg)
    with pytest.raises(ConfigError, match="unknown variants"):
        variants(cfg, only=["nope"])
    with pytest.raises(ConfigError, match="no \\[variants\\]"):
        variants(config_from_raw(BASE))


def test_write_table_mean_and_std_by_hand(tmp_path):
    rows = [
        {
            "method": "m",
            "seed": s,
            "val_auc": v,
            "test_auc": t,
            "test_gauc": 0.5,
            "test_logloss": 0.7,
            "test_f1": 0.6,
            "upload_bytes_per_client": 100,
            "device_bytes": 400,
            "wall_s": 1.0,
        }
        for s, v, t in [(0, 0.6, 0.70), (1, 0.8, 0.74)]
    ]
    text = write_table(rows, tmp_path, "header")
    # mean 0.72, population std 0.02 of test AUC; val: 0.7 ± 0.1
    assert "| m | 2 | 0.7000 ± 0.1000 | 0.7200 ± 0.0200 |" in text
    with open(tmp_path / "table.csv") as f:
        assert [r["seed"] for r in csv.DictReader(f)] == ["0", "1"]


def test_sweep_runs_each_value_and_seed(tmp_path):
    cfg = config_from_raw(BASE)
    rows = sweep(cfg, "privacy.ldp_epsilon", ["0", "5"], 2, tmp_path, progress=False)
    assert [(r["value"], r["seed"]) for r in rows] == [
        ("0", 0),
        ("0", 1),
        ("5", 0),
        ("5", 1),
    ]
    assert [r["ldp_epsilon_total"] for r in rows] == [0.0, 0.0, 5.0, 5.0]


def test_table_reuses_finished_runs_and_refuses_another_config(tmp_path, monkeypatch):
    from fedrec import tables

    cfg = config_from_raw({**BASE, "variants": {"a": {}}})
    first = tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    monkeypatch.setattr(tables, "run_experiment", lambda *a, **k: pytest.fail("re-ran"))
    again = tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    assert again == first
    other = config_from_raw({**BASE, "train": {"rounds": 2}, "variants": {"a": {}}})
    with pytest.raises(ConfigError, match="another config"):
        tables.run_all(variants(other), 1, tmp_path, progress=False)
