"""End to end on the real KuaiSAR-R files: the shipped config runs and learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrec.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_kuaisar_fedavg_config_runs(kuaisar_path, tmp_path):
    out = tmp_path / "run"
    rc = main(
        [
            "run",
            str(ROOT / "configs" / "kuaisar-r-fedavg.toml"),
            "--set",
            f'data.path="{kuaisar_path}"',
            "--set",
            "train.rounds=3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["n_clients"] == 1791 and s["dropped_users"] == 0
    assert s["rounds"] == 3
    assert 0.5 < s["best_val_auc"] < 1 and 0.5 < s["test_auc"] < 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert last["train_loss"] < first["train_loss"]
    # the full CTR model: 9,513 float32 parameters each way (fedpa.md §5.1)
    assert first["upload_bytes_per_client"] == 9513 * 4
