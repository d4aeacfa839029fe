"""The ``fedrec`` command: run directories, refusals, resume errors, tables."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest

from fedrec.cli import main

CONFIG = """
[run]
name = "cli"
seed = 0

[data]
kind = "synthetic"

[data.options]
n_users = 20
n_items = 30
seed = 1

[model]
dim = 4
layers = [8, 4]

[train]
rounds = 5
batch_size = 32
lr = 0.05

[method]
name = "fedavg"
"""

ROUND_KEYS = {"round", "train_loss", "val_auc", "test_auc", "upload_bytes_per_client"}


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(CONFIG)
    return path


def _run(cfg: Path, out: Path, *extra: str) -> int:
    return main(
        ["run", str(cfg), "--set", "train.rounds=2", "--out", str(out), "--quiet"]
        + list(extra)
    )


def test_run_writes_run_directory(cfg, tmp_path):
    out = tmp_path / "r"
    assert _run(cfg, out) == 0
    for name in (
        "config.json",
        "env.json",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
        "metrics.png",
    ):
        assert (out / name).is_file(), name

    config = json.loads((out / "config.json").read_text())
    assert config["train"]["rounds"] == 2  # the override is what is recorded
    assert config["method"]["name"] == "fedavg"

    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == 0
    assert "torch" in env["versions"]

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    assert [r["round"] for r in rows] == [0, 1]
    for r in rows:
        assert ROUND_KEYS <= set(r)
        assert r["upload_bytes_per_client"] > 0

    summary = json.loads((out / "summary.json").read_text())
    assert {"best_round", "best_val_auc", "test_auc"} <= set(summary)
    best = rows[summary["best_round"]]
    assert summary["best_val_auc"] == best["val_auc"]
    assert summary["test_auc"] == best["test_auc"]
    assert summary["best_val_auc"] == max(r["val_auc"] for r in rows)

    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp"))


def test_run_refuses_existing_run_dir(cfg, tmp_path, capsys):
    out = tmp_path / "r"
    assert _run(cfg, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert _run(cfg, out) == 2
    err = capsys.readouterr().err
    assert "--resume" in err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after["metrics.jsonl"] == before["metrics.jsonl"]
    assert after == before


def test_bad_key_exits_2_and_names_key(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.replace("lr = 0.05", "lrr = 0.05"))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.lrr" in err
    assert str(path) in err
    assert not (tmp_path / "r").exists()


def test_bad_override_exits_2(cfg, tmp_path, capsys):
    assert _run(cfg, tmp_path / "r", "--set", "train.lr=-1") == 2
    assert "train.lr" in capsys.readouterr().err


def test_resume_of_non_run_dir_exits_2(tmp_path, capsys):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert main(["run", "--resume", str(not_a_run), "--quiet"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_resume_with_config_is_refused(cfg, tmp_path, capsys):
    assert main(["run", str(cfg), "--resume", str(tmp_path), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_run_without_config_exits_2(capsys):
    assert main(["run", "--quiet"]) == 2
    assert "CONFIG" in capsys.readouterr().err


def test_resume_with_corrupt_checkpoint_exits_2(cfg, tmp_path, capsys):
    out = tmp_path / "r"
    assert _run(cfg, out) == 0
    (out / "checkpoint.pt").write_bytes(b"this is not a checkpoint \x00\x01\x02" * 4)
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err


def test_resume_of_finished_run_keeps_metrics(cfg, tmp_path):
    out = tmp_path / "r"
    assert _run(cfg, out) == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    again = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in again] == [0, 1]
    assert [json.loads(x)["val_auc"] for x in again] == [
        json.loads(x)["val_auc"] for x in rows
    ]


def test_table_writes_csv_and_markdown(cfg, tmp_path, capsys):
    out = tmp_path / "table"
    argv = ["table", str(cfg), "--methods", "fedavg", "local", "--seeds", "2"]
    argv += ["--out", str(out), "--quiet", "--set", "train.rounds=1"]
    assert main(argv) == 0
    with open(out / "table.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames
    assert header is not None
    assert header[:2] == ["method", "seed"]
    assert "test_auc" in header and "val_auc" in header
    assert len(rows) == 4
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("fedavg", "0"),
        ("fedavg", "1"),
        ("local", "0"),
        ("local", "1"),
    ]
    for r in rows:
        assert 0.0 <= float(r["test_auc"]) <= 1.0
    local = [r for r in rows if r["method"] == "local"]
    assert all(float(r["upload_bytes_per_round"]) == 0 for r in local)
    assert {r["commit"] for r in rows} == {rows[0]["commit"]}
    md = (out / "table.md").read_text()
    # the file names the command that made it and the commit of its runs
    made_by = f"Made by `fedrec {shlex.join(argv)}` at commit {rows[0]['commit']}."
    assert md.splitlines()[0] == made_by
    assert "±" in md
    assert "| fedavg | 2 |" in md and "| local | 2 |" in md
    assert "seed varies:" in md
    # the config's method is the reference of the intervals
    assert "Δtest_auc vs fedavg [95% CI]" in md
    with open(out / "intervals.csv", newline="") as f:
        got = [(r["method"], r["metric"], r["seeds"]) for r in csv.DictReader(f)]
    assert got == [("local", "test_auc", "0 1"), ("local", "test_gauc", "0 1")]
    # the per-round plot's numbers: every run's test_auc per round, as logged
    with open(out / "test_auc_per_round.csv", newline="") as f:
        curve = [
            (r["method"], r["seed"], r["round"], r["test_auc"])
            for r in csv.DictReader(f)
        ]
    logged = []
    for r in rows:
        run = out / "runs" / f"{r['method']}-s{r['seed']}"
        for line in (run / "metrics.jsonl").read_text().splitlines():
            h = json.loads(line)
            logged.append((r["method"], r["seed"], str(h["round"]), str(h["test_auc"])))
    assert curve == logged and len(curve) == 4


def test_table_versus_must_be_a_method(cfg, tmp_path, capsys):
    argv = ["table", str(cfg), "--methods", "fedavg", "local", "--versus", "fedprox"]
    assert main(argv + ["--out", str(tmp_path / "t"), "--quiet", "--reuse"]) == 2
    assert "--versus fedprox" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # refused before running anything


def test_table_rejects_unknown_method(cfg, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["table", str(cfg), "--methods", "nope", "--out", str(tmp_path)])
    assert info.value.code == 2


def test_methods_lists_builtins(capsys):
    assert main(["methods"]) == 0
    names = capsys.readouterr().out.split()
    for name in ("fedavg", "fedprox", "local", "centralised"):
        assert name in names


def test_table_prints_one_line_per_finished_run(cfg, tmp_path, capsys):
    out = tmp_path / "table"
    argv = ["table", str(cfg), "--methods", "fedavg", "local", "--seeds", "2"]
    argv += ["--out", str(out), "--set", "train.rounds=2"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    lines = [x for x in printed.out.splitlines() if x.startswith("[")]
    assert [x.split()[:5] for x in lines] == [
        ["[1/4]", "fedavg", "seed", "0", "best"],
        ["[2/4]", "fedavg", "seed", "1", "best"],
        ["[3/4]", "local", "seed", "0", "best"],
        ["[4/4]", "local", "seed", "1", "best"],
    ]
    assert all("val_auc" in x and "test_auc" in x for x in lines)
    assert "━" not in printed.out + printed.err  # no progress bars
    assert "| fedavg | 2 |" in printed.out  # then the table
    # again: the finished runs are kept, and say so; --quiet prints no run lines
    assert main(argv + ["--reuse"]) == 0
    again = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[")]
    assert len(again) == 4 and all("  kept  " in x for x in again)
    assert main(argv + ["--reuse", "--quiet"]) == 0
    assert not [x for x in capsys.readouterr().out.splitlines() if x.startswith("[")]
