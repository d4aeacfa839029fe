"""The recipes (``recipes/*.py``): their step-by-step rounds are `fedrec table`'s."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from fedrec.cli import main as fedrec

ROOT = Path(__file__).resolve().parents[1]

FELLREC_TOML = """
[data]
kind = "synthetic"
split = "global_temporal"
val_ratio = 0.1
test_ratio = 0.1
clients = "random"
n_clients = 3
[data.options]
n_users = 40
n_items = 30
seed = 4
[backbone]
kind = "text-features"
path = "tiny"
tower_dim = 8
[train]
rounds = 2
engine = "loop"
batch_size = 8
lr = 0.05
max_rows_per_client = 16
[eval]
select_metric = "ndcg@10"
max_samples = 8
initial = true
[method]
name = "fellrec"
[variants.fedavg]
method = { name = "fedavg" }
[variants.fellrec]
"""


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def table_rows(argv: list[str], out: Path) -> dict[str, dict[str, str]]:
    """`fedrec table` over the same config: its rows by variant (one seed)."""
    assert fedrec(["table", *argv, "--seeds", "1", "--out", str(out), "--quiet"]) == 0
    with open(out / "table.csv", newline="") as f:
        return {r["method"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_fedpa_recipe_equals_fedrec_table(tmp_path):
    config = str(ROOT / "configs" / "demo.toml")
    sets = ["data.options.n_users=150", "train.rounds=2", "pretrain.epochs=1"]
    flags = [x for s in sets for x in ("--set", s)]
    pick = ["fedavg", "fedpa"]
    rows = recipe("fedpa_kuaisar").main(
        ["--config", config, *flags, "--variants", *pick, "--seeds", "1",
         "--out", str(tmp_path / "recipe")]
    )  # fmt: skip
    want = table_rows([config, *flags, "--variants", *pick], tmp_path / "table")
    assert [r["variant"] for r in rows] == pick
    for r in rows:
        w = want[r["variant"]]
        assert r["best_round"] == int(w["best_round"])
        for m in ("val_auc", "test_auc", "test_gauc"):
            got = r[f"best_{m}"] if m.startswith("val") else r[m]
            assert got == pytest.approx(float(w[m]), abs=1e-9), m
    md = (tmp_path / "recipe" / "table.md").read_text()
    assert "| fedpa | 1 |" in md and f"{rows[1]['test_auc']:.4f} ± 0.0000" in md


@pytest.mark.slow
def test_fellrec_recipe_equals_fedrec_table_and_logs_the_balance(tmp_path, capsys):
    pytest.importorskip("transformers")
    config = tmp_path / "tiny.toml"
    config.write_text(FELLREC_TOML)
    rows = recipe("fellrec_ml100k").main(
        ["--config", str(config), "--variants", "fedavg", "fellrec", "--seeds", "1",
         "--out", str(tmp_path / "recipe")]
    )  # fmt: skip
    printed = capsys.readouterr().out
    want = table_rows([str(config)], tmp_path / "table")
    for r in rows:
        w = want[r["variant"]]
        assert r["best_round"] == int(w["best_round"])
        for m in ("test_recall@10", "test_ndcg@10"):
            assert r[m] == pytest.approx(float(w[m]), abs=1e-9), m
    # FELLRec's rounds print their balance (2 rounds), FedAvg's do not
    assert printed.count("s_ij in [") == 2
