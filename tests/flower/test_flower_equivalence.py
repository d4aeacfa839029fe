"""Flower simulation runs the same algorithm as the embedded engine (issue 6)."""

from __future__ import annotations

import pytest

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.fl.partition import PRIVATE

pytest.importorskip("flwr")
pytest.importorskip("ray")


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [{"name": "fedavg"}, None],  # None: FedPA
)
def test_flower_simulation_equals_embedded_engine(method, small_raw):
    from fedrec.flower.simulation import run_flower_simulation

    raw = small_raw(method)
    flower = run_flower_simulation(config_from_raw(raw), num_nodes=3)
    eng = build_engine(config_from_raw(raw))
    embedded = [eng.run_round(r) for r in range(3)]
    assert len(flower) == 3
    for f, e in zip(flower, embedded, strict=True):
        for key in ("train_loss", "val_auc", "test_auc", "val_logloss", "test_gauc"):
            assert f[key] == pytest.approx(e[key], abs=1e-9), key
    private = set(eng.partition.names(PRIVATE))
    assert all(not (set(f["received_on_server"]) & private) for f in flower)
    if method is None:  # FedPA
        assert private  # the check above was not vacuous


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
