"""Tables over variants and seeds, sweeps, and their files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from fedrec import rundir
from fedrec.config import config_from_raw
from fedrec.errors import ConfigError
from fedrec.intervals import paired_intervals
from fedrec.metrics import gauc, log_loss
from fedrec.runs import Run
from fedrec.tables import TOPK_MD, sweep, variants, write_table

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


def test_sweep_tunes_a_second_key_on_validation(tmp_path):
    """Grid runs for the tuned values only; the tuned row is the best-validating."""
    cfg = config_from_raw(BASE)
    rows = sweep(
        cfg,
        "privacy.ldp_epsilon",
        ["0", "inf", "5"],
        2,
        tmp_path,
        progress=False,
        tune=("privacy.ldp_clip", ["0.01", "10"]),
        tune_for=["5"],
    )
    grid = [r["value"] for r in rows if r["grid"]]
    assert grid == ["5, ldp_clip=0.01"] * 2 + ["5, ldp_clip=10"] * 2
    (tuned,) = {r["value"] for r in rows if "tuned" in r["value"]}
    # the candidates: the config's clip (1.0) and the grid; best mean val_auc wins
    means = {
        lab: np.mean([r["val_auc"] for r in rows if r["value"] == lab])
        for lab in ("5", "5, ldp_clip=0.01", "5, ldp_clip=10")
    }
    best = max(means, key=means.get)
    want = {"5": "1.0"}.get(best, best.rsplit("=", 1)[-1])
    assert tuned == f"5, ldp_clip tuned ({want})"
    picked = [r for r in rows if r["value"] == tuned]
    assert [r["test_auc"] for r in picked] == [
        r["test_auc"] for r in rows if r["value"] == best
    ]
    # clip only (ε = inf) spends no ε it could claim, and adds no noise
    inf_rows = [r for r in rows if r["value"] == "inf"]
    assert all(r["ldp_epsilon_total"] in (math.inf, "inf") for r in inf_rows)


@pytest.fixture
def commit(monkeypatch):
    """Set the checkout's ``(commit, dirty)`` that runs record and tables compare."""

    def set_to(hash_: str, dirty: bool = False) -> None:
        monkeypatch.setattr(rundir, "git_state", lambda: (hash_, dirty))
        rundir.current_commit.cache_clear()  # read once per process otherwise

    set_to("a" * 40)
    yield set_to
    rundir.current_commit.cache_clear()


def test_table_reuses_finished_runs_and_refuses_another_config(
    tmp_path, monkeypatch, commit
):
    from fedrec import tables

    cfg = config_from_raw({**BASE, "variants": {"a": {}}})
    first = tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    monkeypatch.setattr(tables, "run_experiment", lambda *a, **k: pytest.fail("re-ran"))
    again = tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    assert again == first
    other = config_from_raw({**BASE, "train": {"rounds": 2}, "variants": {"a": {}}})
    with pytest.raises(ConfigError, match="another config"):
        tables.run_all(variants(other), 1, tmp_path, progress=False)


def _count_runs(monkeypatch):
    from fedrec import tables

    made = []
    real = tables.run_experiment

    def counting(cfg, run_dir, *a, **k):
        made.append(run_dir.name)
        return real(cfg, run_dir, *a, **k)

    monkeypatch.setattr(tables, "run_experiment", counting)
    return made


def test_table_reruns_runs_of_another_commit_unless_reuse(
    tmp_path, monkeypatch, commit
):
    from fedrec import tables

    cfg = config_from_raw({**BASE, "variants": {"a": {}}})
    made = _count_runs(monkeypatch)
    first = tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    assert made == ["a-s0"] and first[0]["commit"] == "a" * 12
    write_table(first, tmp_path, "header")
    with open(tmp_path / "table.csv") as f:
        assert [r["commit"] for r in csv.DictReader(f)] == ["a" * 12]

    tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    assert made == ["a-s0"]  # same clean commit: reused

    commit("b" * 40)
    kept = tables.run_all(variants(cfg), 1, tmp_path, progress=False, reuse=True)
    assert made == ["a-s0"] and kept[0]["commit"] == "a" * 12
    again = tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    assert made == ["a-s0", "a-s0"] and again[0]["commit"] == "b" * 12

    commit("b" * 40, dirty=True)  # made by a dirty tree: never reused by default
    dirty = tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    assert dirty[0]["commit"] == "b" * 12 + "+dirty"
    tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    assert made == ["a-s0"] * 4
    env = json.loads((tmp_path / "runs" / "a-s0" / "env.json").read_text())
    assert (env["git_commit"], env["git_dirty"]) == ("b" * 40, True)


def test_table_reruns_a_run_without_recorded_commit(tmp_path, monkeypatch, commit):
    from fedrec import tables

    cfg = config_from_raw({**BASE, "variants": {"a": {}}})
    made = _count_runs(monkeypatch)
    tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    path = tmp_path / "runs" / "a-s0" / "summary.json"
    summary = json.loads(path.read_text())
    del summary["commit"]  # as a run made before commits were recorded
    path.write_text(json.dumps(summary))
    tables.run_all(variants(cfg), 1, tmp_path, progress=False)
    assert made == ["a-s0", "a-s0"]


@pytest.mark.parametrize("splits", [["val", "test"], ["val"]])
def test_test_rows_are_those_of_the_best_round(tmp_path, splits):
    raw = {**BASE, "train": {"rounds": 3, "lr": 0.05}, "eval": {"splits": splits}}
    summary = Run.create(config_from_raw(raw), tmp_path / "r").execute(False)
    with np.load(tmp_path / "r" / "test_rows.npz") as f:
        rows = {k: f[k] for k in f.files}
    assert int(rows["round"]) == summary["best_round"]
    assert len(rows["users"]) == len(rows["labels"]) == len(rows["probs"])
    got = gauc(rows["labels"], rows["probs"], rows["users"])
    assert got == pytest.approx(summary["test_gauc"], abs=1e-12)
    got = log_loss(rows["labels"], rows["probs"])
    assert got == pytest.approx(summary["test_logloss"], abs=1e-12)


def test_test_rows_follow_the_best_round_across_a_resume(tmp_path):
    class Killed(Exception):
        pass

    def kill(m):
        raise Killed

    raw = {**BASE, "train": {"rounds": 3, "lr": 0.05}}
    with pytest.raises(Killed):
        Run.create(config_from_raw(raw), tmp_path / "r").execute(False, on_round=kill)
    summary = Run.resume(tmp_path / "r").execute(progress=False)
    assert rundir.rows_round(tmp_path / "r") == summary["best_round"]


def _fake_run(path, best_round, rows, **summary):
    path.mkdir(parents=True)
    np.savez(path / "test_rows.npz", round=best_round, **rows)
    return dict.fromkeys(TOPK_MD) | {
        "run_dir": str(path),
        "best_round": best_round,
        **summary,
    }


def test_topk_intervals_by_hand(tmp_path):
    # Prepare: per-user NDCG of "m" = reference + 0.05 for every user and seed;
    # "n" kept no test rows (seed 0) or those of another round (seed 1); "m"
    # has two extra users, left out; one backbone
    rng = np.random.default_rng(0)
    rows = []
    for s in (0, 1):
        base = rng.random(30) * 0.5
        for method, shift in (("ref", 0.0), ("m", 0.05)):
            extra = 2 if method == "m" else 0
            arrays = {
                "user": np.arange(30 + extra),
                "client": np.arange(30 + extra) % 3,
                "ndcg@10": np.r_[base + shift, [1.0] * extra],
                "recall@10": np.r_[base, [1.0] * extra],
            }
            rows.append(
                _fake_run(
                    tmp_path / f"{method}-s{s}",
                    2,
                    arrays,
                    method=method,
                    seed=s,
                    backbone="encoder:x",
                    **{"test_ndcg@10": float(np.mean(base + shift))},
                )
            )
        stale = _fake_run(tmp_path / f"n-s{s}", 1, arrays, method="n", seed=s)
        stale.update(best_round=2, backbone="encoder:x")  # s = 0: no file
        (tmp_path / "n-s0" / "test_rows.npz").unlink(missing_ok=True)
        rows.append(stale)
    # Execute
    got = paired_intervals(rows, "ref", b=100)
    text = write_table(rows, tmp_path, "header", intervals=got)
    # Assert
    by = {(r["method"], r["metric"]): r for r in got.rows}
    m = by[("m", "test_ndcg@10")]
    assert (m["diff"], m["lo"], m["hi"]) == pytest.approx((0.05, 0.05, 0.05))
    assert (m["n_users"], m["seeds"]) == (30, "0 1")
    assert by[("m", "test_recall@10")]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(by[("n", "test_ndcg@10")]["diff"])
    assert "Δtest_ndcg@10 vs ref [95% CI]" in text
    assert "| encoder:x | m | 2 |" in text and "+0.0500 [+0.0500, +0.0500]*" in text
    assert "| encoder:x | ref | 2 |" in text and "| ref | ref |" in text
    assert "| encoder:x | n | 2 |" in text and "| – | – |" in text
    assert "test_rows.npz" in text  # why "n" has "–"
    assert "users differ" in text and "30 users" in text
    with open(tmp_path / "intervals.csv") as f:
        first = next(csv.DictReader(f))
    assert list(first)[:4] == ["backbone", "method", "metric", "reference"]


def test_ctr_intervals_of_real_runs(tmp_path, commit):
    from fedrec import tables

    cfg = config_from_raw(
        {**BASE, "variants": {"a": {}, "b": {"method": {"name": "local"}}}}
    )
    rows = tables.run_all(variants(cfg), 2, tmp_path, progress=False)
    got = paired_intervals(rows, "a", b=200)
    by = {r["metric"]: r for r in got.rows}
    assert set(by) == {"test_auc", "test_gauc"}
    value = {(r["method"], r["seed"]): r for r in rows}
    for metric, r in by.items():
        # every run has the same test users: Δ = mean_s (b_s − a_s) of the summaries
        point = np.mean([value["b", s][metric] - value["a", s][metric] for s in (0, 1)])
        assert r["diff"] == pytest.approx(point, abs=1e-12)
        assert r["lo"] <= r["diff"] <= r["hi"]
        assert r["seeds"] == "0 1" and r["n_users"] == 20


def test_finish_run_records_the_commit(tmp_path, commit):
    # finish_run writes the summary of Flower runs
    cfg = config_from_raw(BASE)
    Run.create(cfg, tmp_path / "r").execute(progress=False)
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    commit("c" * 40, dirty=True)
    summary = rundir.finish_run(tmp_path / "f", cfg, [json.loads(x) for x in lines])
    assert summary["commit"] == "c" * 12 + "+dirty"
    saved = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert saved["commit"] == summary["commit"]


def test_ctr_slices_are_columns_and_new_users_get_an_interval(tmp_path, commit):
    from fedrec import tables

    raw = {
        **BASE,
        "data": {"options": {"n_users": 30, "n_items": 30}},
        "eval": {"new_users": 0.3, "slices": True},
        "variants": {"a": {}, "b": {"method": {"name": "local"}}},
    }
    rows = tables.run_all(variants(config_from_raw(raw)), 2, tmp_path, progress=False)
    got = paired_intervals(rows, "a", b=200)
    by = {r["metric"]: r for r in got.rows}
    assert set(by) == {"test_auc", "test_gauc", "test_auc_new"}
    value = {(r["method"], r["seed"]): r for r in rows}
    for metric, r in by.items():  # Δ = mean_s (b_s − a_s) of the summaries' slices
        point = np.mean([value["b", s][metric] - value["a", s][metric] for s in (0, 1)])
        assert r["diff"] == pytest.approx(point, abs=1e-12)
    text = tables.write_table(rows, tmp_path, "header", intervals=got)
    assert "| test_auc_light | test_gauc_light |" in text and "test_gauc_new" in text
    assert "Δtest_auc_new vs a [95% CI]" in text


def test_a_backbone_without_the_reference_is_paired_with_the_first_ones(tmp_path):
    # "zero" (backbone b) has per-user NDCG = ref's (backbone a) − 0.03
    rng = np.random.default_rng(1)
    rows = []
    for s in (0, 1):
        base = rng.random(20) * 0.5 + 0.1
        for method, backbone, shift in (("ref", "a", 0.0), ("zero", "b", -0.03)):
            arrays = {
                "user": np.arange(20),
                "client": np.arange(20) % 2,
                "ndcg@10": base + shift,
                "recall@10": base,
            }
            rows.append(
                _fake_run(
                    tmp_path / f"{method}-s{s}",
                    0,
                    arrays,
                    method=method,
                    seed=s,
                    backbone=backbone,
                    **{"test_ndcg@10": float(np.mean(base + shift))},
                )
            )
    got = paired_intervals(rows, "ref", b=50)
    (z,) = [
        r for r in got.rows if (r["method"], r["metric"]) == ("zero", "test_ndcg@10")
    ]
    assert z["backbone"] == "b" and z["reference"] == "ref"
    assert (z["diff"], z["lo"], z["hi"]) == pytest.approx((-0.03, -0.03, -0.03))
    text = write_table(rows, tmp_path, "header", intervals=got)
    assert "| b | zero | 2 |" in text and "-0.0300 [-0.0300, -0.0300]*" in text
