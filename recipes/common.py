"""What the recipes share: evaluation of a round, seeds, the markdown table."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from fedrec.config import ExperimentConfig


def evaluated(eng: Any, entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with validation and test metrics, each client under its own model."""
    for split in ("val", "test"):
        entry |= {f"{split}_{k}": v for k, v in eng.evaluate(split).items()}
    return entry | {"round_s": 0.0, "peak_rss_mb": 0.0}


def with_seed(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """``cfg`` with another seed (it varies every random choice of a run)."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))


def table(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> str:
    """Markdown: mean ± std over seeds of ``metrics`` per variant.

    A ``val_*`` metric is read at the best round (``best_val_*``).
    """
    lines = ["| variant | seeds | " + " | ".join(metrics) + " |"]
    lines.append("|---" * (len(metrics) + 2) + "|")
    for label in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == label]
        cells = []
        for m in metrics:
            xs = [r[f"best_{m}" if m.startswith("val_") else m] for r in rs]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{statistics.mean(xs):.4f} ± {sd:.4f}")
        lines.append(f"| {label} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
