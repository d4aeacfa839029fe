"""Pre-training the foundation CTR model on open users, and distilling it.

Recipe (fedpa.md §1.3, §7.1), top to bottom:

1. divide users into open and private (``data.users``);
2. hold out each open user's latest ``pretrain.holdout`` rows;
3. train a :class:`~fedrec.models.ctr_mlp.CTRModel` on the other open rows with
   Adam (state kept across epochs), initialisation and mini-batches seeded by
   ``run.seed`` (each seed of a table adapts its own foundation model, so the
   spread over seeds includes pre-training's);
4. keep the epoch with the best AUC on the hold-out (only open users' data);
5. for ``"pretrain-kd"``: pre-train a teacher of ``[pretrain.kd]``'s size the same
   way, then train the student on the same rows against labels and the teacher.

Results are cached under ``pretrain.cache_dir`` by a hash of everything they
depend on (the seed included), so every method of a table adapts, for a given
seed, the same foundation model.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedrec.atomic import atomic_write
from fedrec.data.dataset import InteractionData
from fedrec.data.fetch import cache_root
from fedrec.data.splits import divide_open_private, temporal_ratio_split
from fedrec.errors import DataError
from fedrec.metrics import auc
from fedrec.models.ctr_mlp import CTRModel
from fedrec.sections import ExperimentConfig, PretrainConfig, UsersConfig

log = logging.getLogger("fedrec")
MODES = ("pretrain", "pretrain-kd")
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def divide_users(
    data: InteractionData, u: UsersConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(open, private) user codes under the configured division."""
    return divide_open_private(
        data,
        style=u.style,
        open_ratio=u.open_ratio,
        attribute=u.attribute or None,
        values=u.values or None,
        in_set_ratio=u.in_set_ratio,
        out_set_ratio=u.out_set_ratio,
        seed=u.seed,
    )


def open_rows(
    cfg: ExperimentConfig, data: InteractionData
) -> tuple[np.ndarray, np.ndarray]:
    """Row ids of open users: (train rows, latest-``holdout`` rows per user)."""
    open_users, _ = divide_users(data, cfg.data.users)
    split = temporal_ratio_split(
        data, cfg.pretrain.holdout, 0.0, cfg.data.min_interactions
    )
    is_open = np.zeros(data.n_users, dtype=bool)
    is_open[open_users] = True
    user = data.interactions["user"].to_numpy()
    return split.train[is_open[user[split.train]]], split.val[is_open[user[split.val]]]


def fit(
    model: CTRModel,
    data: InteractionData,
    train: np.ndarray,
    val: np.ndarray,
    pc: PretrainConfig,
    seed: int,
    loss_fn: LossFn | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Adam on ``train`` rows for ``pc.epochs``; the state with the best val AUC.

    Batches are drawn by a generator seeded by ``seed``; ``loss_fn(logits,
    labels, rows)`` defaults to mean BCE.
    """
    df = data.interactions
    users = torch.as_tensor(df["user"].to_numpy().copy())
    items = torch.as_tensor(df["item"].to_numpy().copy())
    labels = torch.as_tensor(df["label"].to_numpy().copy(), dtype=torch.float32)
    loss_fn = loss_fn or (lambda s, y, rows: F.binary_cross_entropy_with_logits(s, y))
    opt = torch.optim.Adam(model.parameters(), lr=pc.lr)
    gen = torch.Generator().manual_seed(seed)
    rows_t, val_t = torch.as_tensor(train), torch.as_tensor(val)
    best, best_auc, curve = None, -1.0, []
    for epoch in range(pc.epochs):
        model.train()
        for batch in rows_t[torch.randperm(len(rows_t), generator=gen)].split(
            pc.batch_size
        ):
            opt.zero_grad()
            loss_fn(model(users[batch], items[batch]), labels[batch], batch).backward()
            opt.step()
        with torch.no_grad():
            score = torch.sigmoid(model(users[val_t], items[val_t]))
        a = auc(labels[val_t].numpy(), score.numpy())
        if not np.isfinite(a):
            raise DataError(
                f"{data.source}: the open users' hold-out has {len(val)} rows and "
                "not both labels, so no checkpoint can be selected (more open users?)"
            )
        curve.append(a)
        log.info("pre-train epoch %d: open hold-out AUC %.4f", epoch, a)
        if a > best_auc:
            best, best_auc = copy.deepcopy(model.state_dict()), a
    assert best is not None  # pc.epochs >= 1 and every AUC is finite
    return best, curve


def kd_loss(teacher_logits: torch.Tensor, pc: PretrainConfig) -> LossFn:
    """Hard-label BCE plus λ times the soft-label term against the teacher."""
    kd, T = pc.kd, pc.kd.temperature

    def loss(s: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        t = teacher_logits[rows]
        if kd.loss == "mse":
            soft = ((s - t) ** 2).mean()
        else:
            soft = F.binary_cross_entropy_with_logits(s / T, torch.sigmoid(t / T))
        return F.binary_cross_entropy_with_logits(s, y) + kd.lam * soft

    return loss


def _key(cfg: ExperimentConfig, mode: str) -> str:
    d = cfg.data
    where = d.path or (str(cache_root() / d.name) if d.name else "")
    files = sorted(Path(where).glob("*")) if where and Path(where).is_dir() else []
    deps: dict[str, Any] = {
        "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        "mode": mode,
        "kind": d.kind,
        "path": str(Path(where).resolve()) if where else "",
        "options": d.options,
        "users": dataclasses.asdict(d.users),
        "min": d.min_interactions,
        "dim": cfg.model.dim,
        "layers": cfg.model.layers,
        "seed": cfg.run.seed,
        "pretrain": {
            k: v
            for k, v in dataclasses.asdict(cfg.pretrain).items()
            if k != "cache_dir"
        },
    }
    if mode != "pretrain-kd":
        deps["pretrain"].pop("kd")
    return hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16]


def foundation(cfg: ExperimentConfig, data: InteractionData) -> Path:
    """Path of the foundation checkpoint for ``model.init_from`` (trained if needed)."""
    mode = cfg.model.init_from
    path = Path(cfg.pretrain.cache_dir) / f"{mode}-{_key(cfg, mode)}.pt"
    if path.exists():
        return path
    train, val = open_rows(cfg, data)
    log.info(
        "pre-training (%s) on %d open rows, %d held out", mode, len(train), len(val)
    )
    seed = cfg.run.seed
    torch.manual_seed(seed)
    model = CTRModel.for_data(data, cfg.model.dim, cfg.model.layers)
    report: dict[str, Any] = {
        "mode": mode,
        "open_train_rows": len(train),
        "open_holdout_rows": len(val),
    }
    loss_fn = None
    if mode == "pretrain-kd":
        kd = cfg.pretrain.kd
        teacher = CTRModel.for_data(data, kd.teacher_dim, kd.teacher_layers)
        t_state, t_curve = fit(teacher, data, train, val, cfg.pretrain, seed)
        teacher.load_state_dict(t_state)
        df = data.interactions
        with torch.no_grad():
            t_logits = teacher(
                torch.as_tensor(df["user"].to_numpy().copy()),
                torch.as_tensor(df["item"].to_numpy().copy()),
            )
        loss_fn = kd_loss(t_logits, cfg.pretrain)
        report["teacher"] = _describe(teacher, t_curve)
    state, curve = fit(model, data, train, val, cfg.pretrain, seed, loss_fn)
    model.load_state_dict(state)
    report["model"] = _describe(model, curve)
    atomic_write(path, lambda p: torch.save({"model": state, "report": report}, p))
    return path


def _describe(model: CTRModel, curve: list[float]) -> dict[str, Any]:
    n = sum(p.numel() for p in model.parameters())
    return {
        "params": n,
        "bytes_fp32": 4 * n,
        "best_epoch": int(np.argmax(curve)),
        "best_open_holdout_auc": max(curve),
        "curve": curve,
    }
