"""Build an experiment from its config: data, split, clients, model, task, strategy.

``build_engine(cfg)`` is the one entry point both engines share: it loads the
data with the configured loader, splits it, assigns clients (one per user, one
for all, or KMeans groups for FELLRec), builds the method's model (loading a
pre-trained foundation model when ``model.init_from`` asks), and returns the
embedded engine ready to run rounds.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import fedrec.methods  # noqa: F401  (registers the built-in methods build_strategy names)
from fedrec.data import load_dataset
from fedrec.data.dataset import InteractionData
from fedrec.data.fetch import resolve_path
from fedrec.data.splits import (
    Split,
    global_temporal_split,
    leave_one_out_split,
    temporal_ratio_split,
)
from fedrec.errors import CheckpointError, ConfigError
from fedrec.fl.clients import FedData
from fedrec.fl.simulate import EmbeddedEngine
from fedrec.fl.strategy import Strategy
from fedrec.fl.task import CTRTask
from fedrec.pretrain import MODES, divide_users, foundation
from fedrec.registry import build_strategy
from fedrec.sections import ExperimentConfig

if TYPE_CHECKING:
    from fedrec.fl.seq import SeqFedData, SeqRecTask

log = logging.getLogger("fedrec")


def load_data(cfg: ExperimentConfig) -> InteractionData:
    """Call the configured loader, checking ``data.options`` against its signature.

    The data are read from ``data.path``, else from the installed dataset
    ``data.name`` (an error naming ``fedrec data fetch NAME`` if it is not).
    """
    from fedrec import data as data_mod

    loader = data_mod.LOADERS[cfg.data.kind]
    params = inspect.signature(loader).parameters
    for key in cfg.data.options:
        if key not in params or key == "path":
            valid = ", ".join(p for p in params if p != "path")
            raise ConfigError(
                f"unknown key 'data.options.{key}' for {cfg.data.kind} (valid: {valid})"
            )
    kwargs = dict(cfg.data.options)
    if cfg.data.kind != "synthetic":
        kwargs["path"] = resolve_path(cfg.data.path, cfg.data.name)
    return load_dataset(cfg.data.kind, **kwargs)


def make_split(data: InteractionData, cfg: ExperimentConfig) -> Split:
    """The configured row split."""
    d = cfg.data
    if d.split == "temporal_ratio":
        return temporal_ratio_split(data, d.val_ratio, d.test_ratio, d.min_interactions)
    if d.split == "leave_one_out":
        return leave_one_out_split(data, d.min_interactions)
    return global_temporal_split(data, d.val_ratio, d.test_ratio)


def client_users(data: InteractionData, cfg: ExperimentConfig) -> np.ndarray | None:
    """User codes that may be clients (``None``: all), per ``data.users``."""
    u = cfg.data.users
    if u.clients == "all":
        return None
    open_, private = divide_users(data, u)
    return open_ if u.clients == "open" else private


def build_engine(
    cfg: ExperimentConfig,
    data: InteractionData | None = None,
    strategy: Strategy | None = None,
) -> EmbeddedEngine:
    """Data, split, clients, model, task and strategy (``cfg.method`` unless given)."""
    data = data if data is not None else load_data(cfg)
    split = make_split(data, cfg)
    strategy = strategy or build_strategy(cfg.method)
    if cfg.backbone.kind != "ctr":
        return build_seq_engine(cfg, data, split, strategy)
    fed = FedData.build(
        data, split, strategy.clients or cfg.data.clients, client_users(data, cfg)
    )
    slices = user_slices(fed, cfg)
    if "new" in slices:
        fed = fed.without_training(slices["new"])
    torch.manual_seed(cfg.run.seed)
    model = strategy.build_model(data, cfg.model)
    if cfg.model.init_from in MODES:
        load_pretrained(model, foundation(cfg, data))
    elif cfg.model.init_from:
        load_pretrained(model, Path(cfg.model.init_from))
    strategy.fit(model, fed)
    model = model.to(getattr(torch, cfg.train.dtype))
    log.info(
        "%s: %d rows, %d clients, %d users dropped by the split",
        data.source,
        len(data.interactions),
        fed.n_clients,
        split.dropped_users,
    )
    if cfg.train.device != "cpu":
        raise ConfigError(
            f"train.device = {cfg.train.device!r}: the CTR models run on the CPU "
            "(devices apply to backbone.kind = 'text-encoder' / 'causal-lm')"
        )
    return EmbeddedEngine(cfg, fed, model, CTRTask(model, fed, slices), strategy)


def user_slices(fed: FedData, cfg: ExperimentConfig) -> dict[str, np.ndarray]:
    """The user slices a CTR table reports apart, ``bool[U]`` each (eval docs).

    ``new``: a random ``eval.new_users`` share of the client users, drawn with
    ``data.users.seed`` (the same users for every method, run seed and client
    layout); with ``eval.slices``, ``light`` / ``heavy``: the other client
    users with at most ``eval.light_rows`` / more than ``eval.heavy_rows``
    train rows.
    """
    e, data = cfg.eval, fed.data
    members = fed.client_of_user >= 0
    new = np.zeros(data.n_users, dtype=bool)
    if e.new_users > 0:
        pool = np.flatnonzero(members)
        rng = np.random.default_rng([cfg.data.users.seed, 24])
        new[rng.choice(pool, round(e.new_users * len(pool)), replace=False)] = True
    users = data.interactions["user"].to_numpy()[fed.split.train]
    n_train = np.bincount(users, minlength=data.n_users)
    seen = members & ~new
    out = {"new": new} if e.new_users > 0 else {}
    if e.slices:
        out |= {
            "light": seen & (n_train <= e.light_rows),
            "heavy": seen & (n_train > e.heavy_rows),
        }
    return out


def build_seq_engine(
    cfg: ExperimentConfig, data: InteractionData, split: Split, strategy: Strategy
) -> EmbeddedEngine:
    """FELLRec's setting: user-group clients, an LLM-based recommender."""
    if cfg.eval.new_users:
        raise ConfigError(
            "eval.new_users applies to CTR tasks (one client per user); "
            f"backbone.kind = '{cfg.backbone.kind}' clients are user groups"
        )
    if cfg.train.engine != "loop":
        raise ConfigError(
            f"backbone.kind = '{cfg.backbone.kind}' runs with train.engine = 'loop'"
        )
    if data.item_text is None:
        raise ConfigError(f"{data.source}: the text encoder needs item titles")
    b = cfg.backbone
    clients = strategy.clients or cfg.data.clients
    fed = seq_fed_data(cfg, data, split, clients)
    log.info(
        "%s: %s samples, %d clients (%s), client train sizes %s",
        data.source,
        {k: len(v) for k, v in fed.samples.items()},
        fed.n_clients,
        clients,
        fed.sizes("train").tolist(),
    )
    model, task = seq_model_and_task(cfg, data, fed)
    if b.split_k_per_client:
        if len(b.split_k_per_client) != fed.n_clients:
            raise ConfigError(
                f"backbone.split_k_per_client has {len(b.split_k_per_client)} values "
                f"for {fed.n_clients} clients"
            )
        task.split_ks = list(b.split_k_per_client)
    eng = EmbeddedEngine(cfg, fed, model, task, strategy)  # state read on the CPU
    task.device = torch.device(cfg.train.device)
    model.to(task.device)  # the base model computes there; the state stays
    return eng


def seq_model_and_task(
    cfg: ExperimentConfig, data: InteractionData, fed: SeqFedData
) -> tuple[torch.nn.Module, SeqRecTask]:
    """The backbone ``cfg.backbone.kind`` names, and the task that trains it."""
    from fedrec.fl.seq import FeatureSeqRecTask, GenRecTask
    from fedrec.fl.seq import SeqRecTask as TextTask
    from fedrec.models.causal_lm import GenerativeRecommender, load_causal_lm
    from fedrec.models.peft_lora import add_lora
    from fedrec.models.text_encoder import TextSeqRecommender, load_encoder
    from fedrec.models.text_features import FeatureSeqRecommender, item_text_features

    b, seed, budget = cfg.backbone, cfg.run.seed, cfg.eval.max_samples
    texts = [t or "unknown" for t in data.item_text or []]
    if b.kind == "causal-lm":
        # BIGRec writes and grounds bare titles (fellrec.md §2.2)
        titles = [t or "unknown" for t in data.titles or data.item_text or []]
        lm, tok = load_causal_lm(b.path or "smollm2", titles, seed)
        cache = ".cache/item-embeddings" if b.path != "tiny" else None
        gen = GenerativeRecommender(
            lm, tok, titles, b.max_len, b.max_new_tokens, b.num_beams, emb_cache=cache
        )
        torch.manual_seed(seed)  # one LoRA init, shared by every client
        gen = add_lora(gen, b.lora_rank, b.lora_alpha)
        gen.split_k = b.split_k
        return gen, GenRecTask(gen, fed, budget, seed)
    if b.kind == "text-features":
        features = item_text_features(b.path or "minilm", texts, b.item_max_tokens)
        torch.manual_seed(seed)  # one tower init, shared by every client
        tower = FeatureSeqRecommender(
            features, b.tower_dim, b.tower_layers, b.tower_heads, b.window
        )
        # FeatureSeqRecTask narrows SeqRecTask.model (a text encoder) to the tower
        return tower, FeatureSeqRecTask(tower, fed, budget, seed)  # type: ignore[arg-type]
    # the encoder reads "title (year) genres" where the data has them
    encoder, tok = load_encoder(b.path or "minilm", texts, seed)
    enc = TextSeqRecommender(
        encoder,
        tok,
        texts,
        b.max_len,
        b.item_max_tokens,
        b.temperature,
        learn_temperature=b.learn_temperature,
    )
    if b.finetune == "lora":
        torch.manual_seed(seed)  # one LoRA init, shared by every client
        enc = add_lora(enc, b.lora_rank, b.lora_alpha)
    enc.split_k = b.split_k
    return enc, TextTask(enc, fed, budget, seed)


def seq_fed_data(
    cfg: ExperimentConfig, data: InteractionData, split: Split, clients: str
) -> SeqFedData:
    """Sequential samples (``backbone.window``) grouped by the ``clients`` layout.

    Metrics are reported over the data config's user groups (``data.clients``)
    whatever ``clients`` is. No model is built: the reference rankers
    (:mod:`fedrec.references`) use this alone.
    """
    from fedrec.data.partition import partition_users
    from fedrec.data.sequences import build_samples
    from fedrec.fl.seq import SeqFedData

    d = cfg.data
    samples = build_samples(data, split, cfg.backbone.window)

    def users_by(layout: str) -> np.ndarray:
        if layout == "single":
            return np.zeros(data.n_users, dtype=np.int64)
        if layout == "user":
            return np.arange(data.n_users, dtype=np.int64)
        return partition_users(data, split.train, d.n_clients, layout, d.partition_seed)

    groups = users_by(d.clients)
    return SeqFedData.build(data, split, samples, users_by(clients), groups)


def load_pretrained(model: torch.nn.Module, path: Path) -> None:
    """Load a pre-trained CTR state into ``model``.

    Adapters and gates keep their initial values. A missing base tensor or a
    shape mismatch is an error naming the file and the tensor.
    """
    state = load_checkpoint(path)
    state = state.get("model", state) if isinstance(state, dict) else state
    own = model.state_dict()
    for name, t in state.items():
        if name not in own:
            raise CheckpointError(f"{path}: tensor {name!r} is not in the model")
        if own[name].shape != t.shape:
            raise CheckpointError(
                f"{path}: {name!r} has shape {tuple(t.shape)}, "
                f"the model expects {tuple(own[name].shape)} (same data and sizes?)"
            )
    base = {n for n in own if not n.startswith(("lora.", "gates."))}
    missing = sorted(base - set(state))
    if missing:
        raise CheckpointError(f"{path}: no tensor for {missing[:3]}")
    model.load_state_dict(state, strict=False)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint; a missing or corrupt file names the path."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means corrupt
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(e).__name__}: {e})"
        ) from None
