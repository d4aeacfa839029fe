"""Flower simulation runs the same algorithm as the embedded engine (issue 6)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.fl.partition import PRIVATE

pytest.importorskip("flwr")
pytest.importorskip("ray")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "stock"),
    # None: FedPA; stock: Flower without fedrec.flower.internals' patches
    [({"name": "fedavg"}, False), (None, False), (None, True)],
)
def test_flower_simulation_equals_embedded_engine(
    method, stock, small_raw, monkeypatch
):
    from fedrec.flower.internals import STOCK_ENV
    from fedrec.flower.simulation import run_flower_simulation

    if stock:
        monkeypatch.setenv(STOCK_ENV, "1")
    raw = small_raw(method)
    replies = _record_replies(monkeypatch)
    flower = run_flower_simulation(config_from_raw(raw), num_nodes=3)
    eng = build_engine(config_from_raw(raw))
    embedded = [eng.run_round(r) for r in range(3)]
    assert len(flower) == 3
    for f, e in zip(flower, embedded, strict=True):
        for key in ("train_loss", "val_auc", "test_auc", "val_logloss", "test_gauc"):
            assert f[key] == pytest.approx(e[key], abs=1e-9), key
        for key in ("test_precision", "test_recall", "test_f1", "test_logloss"):
            assert f[key] == pytest.approx(e[key], abs=1e-9), key
    private = set(eng.partition.names(PRIVATE))
    assert all(not (set(f["received_on_server"]) & private) for f in flower)
    if method is None:  # FedPA
        assert private  # the check above was not vacuous
        _assert_no_rows_crossed(replies, eng, rounds=3, nodes=3)


@pytest.mark.slow
def test_flower_evaluates_the_untrained_model_first(small_raw, tmp_path):
    """eval.initial: the ServerApp's round -1 is the embedded engine's."""
    from fedrec.flower.simulation import run_flower_simulation
    from fedrec.runs import run_experiment

    raw = small_raw({"name": "fedavg"})
    raw |= {"eval": {"initial": True}, "train": {**raw["train"], "rounds": 1}}
    flower = run_flower_simulation(config_from_raw(raw), num_nodes=2)
    run_experiment(config_from_raw(raw), tmp_path / "e", progress=False)
    lines = (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()
    embedded = [json.loads(x) for x in lines]
    assert [m["round"] for m in flower] == [m["round"] for m in embedded] == [-1, 0]
    assert flower[0]["initial"] and "train_loss" not in flower[0]
    for f, e in zip(flower, embedded, strict=True):
        for key in ("val_auc", "test_auc", "val_logloss", "test_gauc"):
            assert f[key] == pytest.approx(e[key], abs=1e-9), (f["round"], key)


def _record_replies(monkeypatch) -> list[tuple[str, Any]]:
    """``(kind, content)`` of every reply that reaches the ServerApp.

    The wire audit is a node's outermost mod: what arrives is what it passed.
    """
    from fedrec.flower.server import Fleet

    seen: list[tuple[str, Any]] = []
    collect = Fleet.collect

    def recording(self, msgs, rnd, kind):
        got = collect(self, msgs, rnd, kind)
        seen.extend((kind, content) for content in got.values())
        return got

    monkeypatch.setattr(Fleet, "collect", recording)
    return seen


def _assert_no_rows_crossed(replies, eng, rounds: int, nodes: int) -> None:
    """Replies hold shared parameters and fixed-shape stats only: no row array."""
    from flwr.app import ArrayRecord

    from fedrec.flower.records import shapes
    from fedrec.flower.runconfig import eval_splits

    schema, uploaded = eng.task.stat_shapes(), set(eng.partition.uploaded)
    want = {f"{s}/{n}": schema[n] for s in eval_splits(eng) for n in schema}
    per_row = ("label", "user", "item", "prob", "row", "client", "score")
    kinds = [kind for kind, _ in replies]
    assert kinds.count("evaluate") == rounds * nodes  # none refused
    for kind, content in replies:
        records = {k: r for k, r in content.items() if isinstance(r, ArrayRecord)}
        assert set(records) <= {"uploads", "stats"}, (kind, set(records))
        if "uploads" in records:
            assert set(shapes(records["uploads"])) <= uploaded
        if kind == "evaluate":
            assert shapes(records["stats"]) == want  # every entry's shape fixed
        for name in shapes(records.get("stats", {})):
            assert not any(w in name for w in per_row), name


@pytest.mark.slow
def test_fellrec_on_flower_equals_embedded_engine(fellrec_raw):
    """FELLRec (tiny text encoder): 3 user-group clients, one per SuperNode."""
    pytest.importorskip("transformers")
    from fedrec.flower.simulation import run_flower_simulation

    raw = fellrec_raw({"kind": "text-encoder", "max_len": 48})
    flower = run_flower_simulation(config_from_raw(raw), num_nodes=3)
    eng = build_engine(config_from_raw(raw))
    embedded = [eng.run_round(r) for r in range(2)]
    for f, e in zip(flower, embedded, strict=True):
        for key in ("train_loss", "val_ndcg@10", "test_ndcg@10", "test_recall@10"):
            assert f[key] == pytest.approx(e[key], abs=1e-5), key
        assert f["test_ndcg@10_clients"] == pytest.approx(
            e["test_ndcg@10_clients"], abs=1e-5
        )
        for key in ("fellrec_s_mean", "fellrec_heat", "fellrec_self_weight"):
            assert f[key] == pytest.approx(e[key], abs=1e-5), key  # the balance log
        assert f["clients"] == 3 and f["failed_partitions"] == []


@pytest.mark.slow
def test_cli_runs_on_flower_and_writes_a_run_directory(tmp_path):
    import json

    from fedrec.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[data.options]\nn_users = 20\nn_items = 30\n"
        "[model]\ndim = 4\nlayers = [8, 4]\n[train]\nrounds = 2\n"
    )
    out = tmp_path / "run"
    assert (
        main(["run", str(cfg), "--engine", "flower", "--nodes", "2", "--out", str(out)])
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["engine"] == "flower" and s["rounds"] == 2 and 0 <= s["test_auc"] <= 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "env.json").read_text())["min-nodes"] == 2
    assert (out / "checkpoint.pt").exists()
