"""A Flower run killed mid-round resumes to the uninterrupted run's metrics."""

from __future__ import annotations

import json

import pytest

from fedrec.config import config_from_raw
from fedrec.errors import CheckpointError, FedrecError

pytest.importorskip("flwr")
pytest.importorskip("ray")


def _rounds(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


@pytest.mark.slow
def test_killed_flower_run_resumes_to_the_uninterrupted_metrics(
    tmp_path, monkeypatch, small_raw
):
    from fedrec.flower import server as S
    from fedrec.flower.simulation import run_flower
    from fedrec.launch import resume_run

    monkeypatch.setenv("FEDREC_NODE_STORE", str(tmp_path / "nodes"))
    cfg = config_from_raw(small_raw())  # FedPA
    whole = tmp_path / "whole"
    run_flower(cfg, whole, nodes=2)

    # the server dies in round 1 after the nodes trained (and saved) that
    # round, before its checkpoint: the nodes are one round ahead of it
    real = S._evaluate_round

    def killed(fleet, eng, live, rnd):
        if rnd == 1:
            raise RuntimeError("server killed")
        return real(fleet, eng, live, rnd)

    monkeypatch.setattr(S, "_evaluate_round", killed)
    run = tmp_path / "killed"
    with pytest.raises(FedrecError, match="--resume"):
        run_flower(cfg, run, nodes=2)
    assert [m["round"] for m in _rounds(run)] == [0]
    monkeypatch.setattr(S, "_evaluate_round", real)
    with pytest.raises(CheckpointError, match="already holds a run"):
        run_flower(cfg, run, nodes=2)  # not without --resume

    summary = resume_run(run, progress=False)
    got, want = _rounds(run), _rounds(whole)
    assert [m["round"] for m in got] == [0, 1, 2]
    for g, w in zip(got, want, strict=True):
        for key in ("clients", "train_loss", "val_auc", "test_auc", "test_gauc"):
            assert g[key] == pytest.approx(w[key], abs=1e-9), (g["round"], key)
    assert summary["test_auc"] == pytest.approx(
        json.loads((whole / "summary.json").read_text())["test_auc"], abs=1e-9
    )
    assert not list((tmp_path / "nodes").rglob("*.bin"))  # finished: stores gone
