"""Results tables and sweeps: many runs on the same data, one row each.

``fedrec table CONFIG`` runs the config's ``[variants.<label>]`` (or
``--methods``) for seeds ``0..N-1`` and writes ``table.csv`` (one row per run,
with the commit that made it), ``table.md`` (mean ± std over seeds, and each
method's difference to a reference with a paired bootstrap interval over test
users), ``intervals.csv`` (those intervals) and ``test_auc_per_round.png``.
``fedrec sweep CONFIG --key K --values ...`` varies one config value and writes
``sweep.csv``, ``sweep.md`` and ``sweep.png``.

A variant is ``method = {...}`` (replacing ``[method]``) and/or
``set = ["key=value", ...]`` (the same overrides as ``--set``). On top-K data
a variant may name a reference ranking (``popularity``, ``item-knn``,
:mod:`fedrec.references`): it gets a run directory and a row like a method.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import shutil
import time
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.build import load_data
from fedrec.config import ExperimentConfig, apply_overrides, config_from_raw
from fedrec.data.dataset import InteractionData
from fedrec.errors import ConfigError
from fedrec.intervals import Intervals, is_topk, write_intervals
from fedrec.rundir import LOWER_IS_BETTER, commit_label, current_commit
from fedrec.runs import Run, run_experiment

log = logging.getLogger("fedrec")

COLUMNS = [
    "method",
    "seed",
    "best_round",
    "val_auc",
    "test_auc",
    "test_gauc",
    "test_logloss",
    "test_f1",
    "upload_bytes_per_round",
    "upload_bytes_per_client",
    "model_params",
    "device_bytes",
    "ldp_epsilon_total",
    "wall_s",
    "commit",
]
TOPK_COLUMNS = [
    "method",
    "backbone",
    "split_k",
    "seed",
    "best_round",
    "val_recall@10",
    "test_recall@10",
    "test_ndcg@10",
    "test_recall@10_client_std",
    "test_ndcg@10_client_std",
    "test_ndcg@10_client_gap",
    "test_ndcg@10_client_worst",
    "test_ndcg@10_clients",
    "test_users",
    "upload_bytes_per_client",
    "wall_s",
    "peak_rss_mb",
    "commit",
]
TOPK_MD = [
    "test_recall@10",
    "test_ndcg@10",
    "test_ndcg@10_client_std",
    "test_ndcg@10_client_worst",
    "wall_s",
    "peak_rss_mb",
]
MD_METRICS = [
    "val_auc",
    "test_auc",
    "test_gauc",
    "test_logloss",
    "test_f1",
    "upload_bytes_per_client",
    "device_bytes",
    "wall_s",
]
# user slices of CTR runs (eval.new_users, eval.slices), shown when runs have them
SLICE_COLUMNS = [
    f"test_{m}_{s}" for s in ("light", "heavy", "new") for m in ("auc", "gauc")
]


def variants(
    cfg: ExperimentConfig,
    methods: list[str] | None = None,
    only: list[str] | None = None,
    source: str = "",
) -> list[tuple[str, ExperimentConfig]]:
    """``(label, config)`` for each method named, else each declared variant."""
    base = cfg.to_dict()
    base.pop("variants")
    base.pop("presets")
    out = []
    if methods:
        for m in methods:
            raw = copy.deepcopy(base)
            raw["method"] = cfg.method if m == cfg.method["name"] else {"name": m}
            out.append((m, config_from_raw(raw, source)))
        return out
    if not cfg.variants:
        raise ConfigError(f"{source}: no [variants] declared; pass --methods")
    unknown = sorted(set(only or []) - set(cfg.variants))
    if unknown:
        raise ConfigError(
            f"{source}: unknown variants {unknown} (have {sorted(cfg.variants)})"
        )
    for label, spec in cfg.variants.items():
        if only and label not in only:
            continue
        where = f"{source}: variants.{label}"
        if not isinstance(spec, dict) or set(spec) - {"method", "set"}:
            raise ConfigError(f"{where} takes only 'method' and 'set'")
        raw = apply_overrides(base, list(spec.get("set", [])))
        if "method" in spec:
            raw["method"] = spec["method"]
        raw["run"]["name"] = label
        out.append((label, config_from_raw(raw, where)))
    return out


def run_all(
    runs: list[tuple[str, ExperimentConfig]],
    seeds: int,
    out: Path,
    progress: bool = True,
    reuse: bool = False,
) -> list[dict[str, Any]]:
    """Run every ``(label, config)`` for each seed; data loaded once per data config.

    Resumable: a run directory that already finished with the same config and
    the same clean commit is reused, one with a checkpoint is resumed; one made
    by another commit, a dirty tree or no recorded commit is removed and run
    again unless ``reuse``; one made with another config is an error (nothing
    is overwritten). ``progress``: print one line per run as it finishes
    (:func:`run_line`); runs show no progress bars.
    """
    cache: dict[str, InteractionData] = {}
    rows, commit = [], current_commit()
    total, t0 = len(runs) * seeds, time.perf_counter()
    pad = max((len(label) for label, _ in runs), default=0)
    for label, cfg in runs:
        key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
        for seed in range(seeds):
            raw = cfg.to_dict()
            raw["run"]["seed"] = seed
            c = config_from_raw(raw)
            run_dir = out / "runs" / f"{label}-s{seed}"
            if c.backbone.kind != "ctr":  # tables may hold several backbones
                run_dir = out / "runs" / c.backbone.kind / f"{label}-s{seed}"
            s = _finished(run_dir, c)
            why = None if reuse else _other_code(run_dir, s, commit)
            if why:
                log.warning("re-running %s: %s (--reuse keeps it)", run_dir, why)
                shutil.rmtree(run_dir)
                s = None
            kept = s is not None
            if s is None:
                if (run_dir / "checkpoint.pt").exists():
                    s = Run.resume(run_dir).execute(progress=False)
                else:
                    if key not in cache:
                        cache[key] = load_data(cfg)
                    s = run_experiment(c, run_dir, False, cache[key])
            row = {k: s.get(k) for k in dict.fromkeys(COLUMNS + TOPK_COLUMNS)}
            row |= {k: s[k] for k in SLICE_COLUMNS if k in s}
            row.update(
                method=label,
                seed=seed,
                val_auc=s.get("best_val_auc"),
                backbone=f"{c.backbone.kind}:{c.backbone.path or 'default'}",
                split_k=c.backbone.split_k_per_client or c.backbone.split_k,
                test_users=s.get("test_users"),
                run_dir=str(run_dir),
                commit=s.get("commit", ""),
            )
            row["val_recall@10"] = s.get("best_val_recall@10")
            rows.append(row)
            if progress:
                elapsed = time.perf_counter() - t0
                line = run_line(row, len(rows), total, c.train.rounds, kept, pad)
                print(f"{line}  [{elapsed:.0f} s]", flush=True)
    return rows


def run_line(
    row: dict[str, Any],
    done: int,
    total: int,
    rounds: int,
    kept: bool = False,
    pad: int = 0,
) -> str:
    """One finished run as one line: its label, seed, best round and metrics.

    ``[ 3/21] fedpa  seed 0  best round 22/30  val_auc 0.7560  test_auc 0.7477
    4.1 s`` (top-K runs: Recall@10 and NDCG@10; the label padded to ``pad``);
    ``kept`` marks a finished run found on disk and reused.
    """
    if row.get("test_auc") is not None:
        metrics = [("val_auc", row.get("val_auc")), ("test_auc", row["test_auc"])]
    else:
        metrics = [
            ("val_recall@10", row.get("val_recall@10")),
            ("test_ndcg@10", row.get("test_ndcg@10")),
        ]
    width = len(str(total))
    parts = [
        f"[{done:>{width}}/{total}]",
        f"{row['method']:<{pad}}",
        f"seed {row['seed']}",
        f"best round {row.get('best_round')}/{rounds}",
        *(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} –" for k, v in metrics),
        "kept" if kept else f"{row.get('wall_s') or 0:.1f} s",
    ]
    return "  ".join(parts)


def _finished(run_dir: Path, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The summary of a finished run of ``cfg`` in ``run_dir``, else ``None``."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        return None
    try:  # fields added since the run was made take their defaults
        stored = config_from_raw(json.loads(cfg_path.read_text())).to_dict()
    except ConfigError:
        stored = None
    if json.loads(json.dumps(stored)) != json.loads(json.dumps(cfg.to_dict())):
        raise ConfigError(
            f"{run_dir} holds a run of another config; remove it or use another --out"
        )
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else None


def _other_code(run_dir: Path, summary: dict[str, Any] | None, now: str) -> str:
    """Why the run in ``run_dir`` is not this clean commit's (``""`` if it is).

    A finished run's commit is its summary's; an unfinished one's, its
    ``env.json``'s (the commit that started it).
    """
    if summary is not None:
        made = summary.get("commit") or ""
    else:
        try:
            env = json.loads((run_dir / "env.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return ""  # nothing there to keep
        known = "git_dirty" in env
        made = commit_label(env.get("git_commit", ""), env.get("git_dirty", False))
        made = made if known else ""
    if not made:
        return "no recorded commit"
    if made.endswith("+dirty"):
        return f"made by a dirty tree ({made})"
    if made != now:
        return f"made by commit {made}, this is {now or 'not a git checkout'}"
    return ""


def _cell(values: list[Any], metric: str) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    fmt = (
        "{:.0f}" if "bytes" in metric else "{:.1f}" if metric == "wall_s" else "{:.4f}"
    )
    text = fmt.format(np.mean(v))
    return text + (f" ± {fmt.format(np.std(v))}" if len(v) > 1 else "")


def write_table(
    rows: list[dict[str, Any]],
    out: Path,
    header: str,
    by: str = "method",
    name: str = "table",
    intervals: Intervals | None = None,
) -> str:
    """``<name>.csv`` (a row per run) and ``<name>.md`` (mean ± std per ``by``).

    CTR runs get AUC-style columns; top-K runs (FELLRec) get Recall/NDCG@10,
    their spread across clients, the per-client NDCG@10 values and peak memory.
    With ``intervals`` (:func:`fedrec.intervals.paired_intervals`):
    ``intervals.csv`` and a ``Δ<metric> vs <reference> [95% CI]`` column per
    interval metric.
    """
    out.mkdir(parents=True, exist_ok=True)
    topk = is_topk(rows)
    columns, md = (TOPK_COLUMNS, TOPK_MD) if topk else (COLUMNS, MD_METRICS)
    slices = [c for c in SLICE_COLUMNS if any(c in r for r in rows)]
    if slices and not topk:
        at = md.index("test_gauc") + 1
        md = md[:at] + slices + md[at:]
        columns = columns + slices
    cols = ([by] if by not in columns else []) + columns
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    titles = list(md)
    if intervals is not None:
        write_intervals(intervals, out / "intervals.csv")
        ref = intervals.reference
        titles += [f"Δ{m} vs {ref} [95% CI]" for m in intervals.metrics]
    lines = [
        header,
        "",
        f"| {by} | seeds | " + " | ".join(titles) + " |",
        "|---" * (len(titles) + 2) + "|",
    ]
    group = (lambda r: (r["backbone"], r[by])) if topk else (lambda r: (r[by],))
    if topk:
        lines[2] = "| backbone " + lines[2]
        lines[3] += "---|"
    for key in dict.fromkeys(group(r) for r in rows):
        rs = [r for r in rows if group(r) == key]
        cells = [_cell([r[m] for r in rs], m) for m in md]
        if intervals is not None:
            block = key[0] if topk else ""
            cells += [intervals.cell(block, key[-1], m) for m in intervals.metrics]
        lines.append(f"| {' | '.join(key)} | {len(rs)} | " + " | ".join(cells) + " |")
    if intervals is not None:
        lines += ["", intervals.legend()]
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    return text


def sweep(
    cfg: ExperimentConfig,
    key: str,
    values: list[str],
    seeds: int,
    out: Path,
    progress: bool = True,
    source: str = "",
    reuse: bool = False,
    tune: tuple[str, list[str]] | None = None,
    tune_for: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Vary config ``key`` over ``values`` (TOML literals); one row per run.

    ``tune = (key2, grid)``: for each value in ``tune_for`` (default: all), also
    run ``key2`` at each grid value, and add the rows ``"<v>, <key2> tuned"``:
    the runs of the ``key2`` value (the config's own or a grid one) with the
    best mean validation ``select_metric`` over seeds — chosen on validation
    only, reported on test. Every row has ``value`` (its label), ``method`` (the
    same, for :func:`fedrec.intervals.paired_intervals`), ``swept`` (``v``)
    and ``grid`` (whether it is a grid run, kept out of the markdown table).
    ``reuse``: keep finished runs made by another commit (see :func:`run_all`).
    """
    base = cfg.to_dict()
    base.pop("variants")
    base.pop("presets")
    plan: list[tuple[str, str | None]] = [(v, None) for v in values]
    if tune is not None:
        plan += [(v, t) for v in (tune_for or values) for t in tune[1]]
    runs = []
    for v, t in plan:
        sets = [f"{key}={v}"] + ([f"{tune[0]}={t}"] if tune and t is not None else [])
        raw = apply_overrides(base, sets)
        raw["run"]["name"] = label = ",".join(sets)
        runs.append((label, config_from_raw(raw, source)))
    rows = run_all(runs, seeds, out, progress, reuse)
    each = [(v, t) for v, t in plan for _ in range(seeds)]
    for r, (v, t) in zip(rows, each, strict=True):
        short = tune[0].rsplit(".", 1)[-1] if tune else ""
        r["value"] = r["method"] = v if t is None else f"{v}, {short}={t}"
        r["swept"], r["grid"] = v, t is not None
    if tune is not None:
        for v in tune_for or values:
            rows += _tuned(rows, v, tune[0], cfg)
    return rows


def _tuned(
    rows: list[dict[str, Any]], v: str, key: str, cfg: ExperimentConfig
) -> list[dict[str, Any]]:
    """Copies of the runs of swept value ``v`` whose ``key`` value validates best."""
    metric = f"val_{cfg.eval.select_metric}"
    sign = 1 if cfg.eval.select_metric in LOWER_IS_BETTER else -1
    mine = [r for r in rows if r["swept"] == v]
    by_label = {r["value"]: [x for x in mine if x["value"] == r["value"]] for r in mine}
    best = min(
        by_label,
        key=lambda lab: sign * np.mean([float(x[metric]) for x in by_label[lab]]),
    )
    short = key.rsplit(".", 1)[-1]
    own = reduce(lambda d, k: d[k], key.split("."), cfg.to_dict())
    chosen = best.rsplit("=", 1)[1] if "=" in best else f"{own}"
    label = f"{v}, {short} tuned ({chosen})"
    return [
        {**r, "value": label, "method": label, "grid": False} for r in by_label[best]
    ]
