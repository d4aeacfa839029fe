"""A run killed after round r and resumed ends exactly as an uninterrupted run."""

from __future__ import annotations

import json

import pytest

from fedrec.config import config_from_raw
from fedrec.rundir import TIMING_KEYS
from fedrec.runs import Run


def _cfg(rounds: int = 4, initial: bool = False):
    return config_from_raw(
        {
            "data": {"options": {"n_users": 30, "n_items": 40, "seed": 1}},
            "model": {"dim": 4, "layers": [8, 4]},
            "train": {
                "rounds": rounds,
                "batch_size": 8,
                "lr": 0.05,
                "client_fraction": 0.5,
            },
            "method": {"name": "fedprox", "mu": 0.1},
            "eval": {"initial": initial},
        }
    )


def _metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines
    ]


class Killed(Exception):
    pass


@pytest.mark.parametrize(
    ("initial", "killed_after"), [(False, 0), (False, 2), (True, -1), (True, 1)]
)
def test_resume_reproduces_uninterrupted_run(tmp_path, initial, killed_after):
    """With eval.initial, round -1 (the untrained model) comes first, once."""
    full = tmp_path / "full"
    Run.create(_cfg(initial=initial), full).execute(progress=False)

    def kill(m):
        if m["round"] == killed_after:
            raise Killed

    part = tmp_path / "part"
    with pytest.raises(Killed):
        Run.create(_cfg(initial=initial), part).execute(progress=False, on_round=kill)
    first = -1 if initial else 0
    assert len(_metrics(part)) == killed_after + 1 - first
    assert not (part / "summary.json").exists()

    resumed = Run.resume(part)
    assert resumed.engine.round == killed_after + 1
    summary = resumed.execute(progress=False)
    assert [m["round"] for m in _metrics(part)] == list(range(first, 4))
    assert _metrics(part) == _metrics(full)
    full_summary = json.loads((full / "summary.json").read_text())
    assert summary["test_auc"] == full_summary["test_auc"]
    assert summary["best_round"] == full_summary["best_round"]


def test_metrics_line_lost_after_checkpoint_is_rewritten(tmp_path):
    """Killed between the checkpoint and the metrics line: history comes back."""
    d = tmp_path / "r"
    run = Run.create(_cfg(2), d)
    with pytest.raises(Killed):
        run.execute(progress=False, on_round=lambda m: (_ for _ in ()).throw(Killed))
    (d / "metrics.jsonl").write_text("")  # as if the append never happened
    Run.resume(d).execute(progress=False)
    assert [m["round"] for m in _metrics(d)] == [0, 1]
