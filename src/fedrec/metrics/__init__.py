"""Evaluation metrics: pointwise CTR, top-K ranking and per-client statistics."""

from fedrec.metrics.ctr import auc, ctr_metrics, gauc, log_loss, weighted_prf
from fedrec.metrics.stats import client_stats, mean_ignore_nan
from fedrec.metrics.topk import sampled_topk_metrics, topk_metrics

__all__ = [
    "auc",
    "client_stats",
    "ctr_metrics",
    "gauc",
    "log_loss",
    "mean_ignore_nan",
    "sampled_topk_metrics",
    "topk_metrics",
    "weighted_prf",
]
