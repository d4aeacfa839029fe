"""The sections of an experiment config: one dataclass per TOML table.

Plain data with their own checks (``__post_init__``): a wrong value is a
:class:`~fedrec.errors.ConfigError` naming the key. Reading a TOML file into
them, with overrides and the method's own section, is :mod:`fedrec.config`'s
work; the engine and the methods import these classes from here, below the
method registry.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from fedrec.errors import ConfigError


@dataclass
class RunConfig:
    """Where a run writes and what seeds it."""

    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        _check(self.checkpoint_every >= 1, "run.checkpoint_every must be >= 1")


@dataclass
class UsersConfig:
    """Which users become clients: all, or one side of the open/private division.

    The division (fedpa.md §1.2) is always explicit: ``style = "random"`` draws
    ``round(open_ratio·U)`` open users; ``style = "attribute"`` takes a random
    ``in_set_ratio`` of the users whose ``attribute`` is in ``values`` plus a
    random ``out_set_ratio`` of the others. Seeded by ``seed``.
    """

    clients: Literal["all", "open", "private"] = "all"
    style: Literal["random", "attribute"] = "random"
    open_ratio: float = 0.25
    attribute: str = ""
    values: list[int] = field(default_factory=list)
    in_set_ratio: float = 0.8
    out_set_ratio: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.open_ratio <= 1, "data.users.open_ratio must be in [0, 1]")
        _check(
            self.style == "random" or bool(self.attribute and self.values),
            "data.users: style 'attribute' needs attribute and values",
        )


@dataclass
class DataConfig:
    """Which loader reads the data, how it is split and who the clients are.

    ``options`` are passed to the loader as keyword arguments (validated against
    its signature): e.g. ``user_col`` for ``kind = "csv"``. ``clients``: one
    per user, one for all (``"single"``), or ``n_clients`` groups of users
    (``"kmeans"`` over BPR-MF user embeddings, or ``"random"``), partitioned with
    ``partition_seed`` so that every run seed sees the same clients.

    ``name`` names a dataset that ``fedrec data fetch NAME`` installs
    (``"kuaisar-r"``, ``"ml-100k"``, ``"ml-1m"``; :mod:`fedrec.data.fetch`):
    with ``path`` empty it is read from the cache (``$FEDREC_DATA/NAME``), and
    ``kind`` may be left out (it follows from the name). ``path`` reads any
    directory, as before, and wins when both are given.
    """

    kind: Literal["synthetic", "kuaishou", "recbole", "csv"] = "synthetic"
    path: str = ""
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    split: Literal["temporal_ratio", "leave_one_out", "global_temporal"] = (
        "temporal_ratio"
    )
    val_ratio: float = 0.2
    test_ratio: float = 0.2
    min_interactions: int = 5
    clients: Literal["user", "single", "kmeans", "random"] = "user"
    n_clients: int = 5
    partition_seed: int = 0
    users: UsersConfig = field(default_factory=UsersConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.val_ratio < 1, "data.val_ratio must be in [0, 1)")
        _check(0 <= self.test_ratio < 1, "data.test_ratio must be in [0, 1)")
        _check(self.val_ratio + self.test_ratio < 1, "data: val + test must be < 1")
        if self.name:
            from fedrec.data.fetch import DATASETS

            _check(
                self.name in DATASETS,
                f"data.name = {self.name!r}: choose one of {', '.join(DATASETS)}",
            )
            want = DATASETS[self.name].kind
            if self.kind == "synthetic":  # the default: the name decides
                self.kind = want
            _check(
                self.kind == want,
                f"data.name = {self.name!r} is read by data.kind = {want!r}, "
                f"not {self.kind!r}",
            )
        _check(
            self.kind == "synthetic" or bool(self.path or self.name),
            "data.path (or data.name) is required",
        )


@dataclass
class BackboneConfig:
    """The recommender a client trains.

    ``kind = "ctr"``: the CTR model of ``[model]`` (FedPA and its baselines).
    ``kind = "text-encoder"``: a RecFormer-style sequential recommender over a
    HF text encoder (``path``: ``"minilm"`` (default), ``"tiny"`` or a local
    model dir), LoRA on query/value (``finetune = "lora"``) or every weight
    (``"full"``). ``kind = "causal-lm"``: BIGRec-style generation over a HF
    causal LM (``path``: ``"smollm2"`` (default), ``"tiny"`` or a local dir),
    LoRA on q_proj/v_proj. ``split_k > 0`` trains through FELLRec's flexible
    storage split: blocks ``[0, k)`` and the last block on the client, the rest on
    the server, hidden states and gradients counted on the wire;
    ``split_k_per_client`` gives each client its own k (its memory budget).
    ``temperature`` is the text encoder's initial τ of its cosine logits;
    ``learn_temperature`` makes ``log(τ₀/τ)`` a trained (and shared) scalar.
    ``kind = "text-features"``: frozen item text features from the encoder at
    ``path`` (default all-MiniLM-L6-v2) feeding a learnt projection and a small
    transformer over the last ``window`` items (``tower_dim``,
    ``tower_layers``, ``tower_heads``), UniSRec-style; everything but the
    features trains, with no LoRA and no split.
    """

    kind: Literal["ctr", "text-encoder", "text-features", "causal-lm"] = "ctr"
    path: str = ""
    finetune: Literal["lora", "full"] = "lora"
    lora_rank: int = 8
    lora_alpha: int = 16
    max_len: int = 512
    item_max_tokens: int = 32
    temperature: float = 0.05
    learn_temperature: bool = True
    window: int = 10
    max_new_tokens: int = 32
    num_beams: int = 1
    split_k: int = 0
    split_k_per_client: list[int] = field(default_factory=list)
    tower_dim: int = 64
    tower_layers: int = 1
    tower_heads: int = 2

    def __post_init__(self) -> None:
        _check(self.lora_rank >= 1, "backbone.lora_rank must be >= 1")
        _check(
            self.tower_dim >= 1 and self.tower_layers >= 1 and self.tower_heads >= 1,
            "backbone.tower_dim, tower_layers and tower_heads must be >= 1",
        )
        _check(
            self.tower_dim % self.tower_heads == 0,
            "backbone.tower_dim must be a multiple of backbone.tower_heads",
        )
        _check(
            self.kind != "text-features"
            or (not self.split_k and not self.split_k_per_client),
            "backbone.split_k: the flexible-storage split needs a text-encoder "
            "or causal-lm backbone, not text-features",
        )
        _check(self.temperature > 0, "backbone.temperature must be > 0")
        _check(self.window >= 1, "backbone.window must be >= 1")


@dataclass
class ModelConfig:
    """The CTR model: field embeddings -> MLP -> logit (fedpa.md §2)."""

    dim: int = 8
    layers: list[int] = field(default_factory=lambda: [32, 8])
    init_from: str = ""

    def __post_init__(self) -> None:
        _check(self.dim >= 1, "model.dim must be >= 1")
        _check(all(w >= 1 for w in self.layers), "model.layers must be positive")


@dataclass
class TrainConfig:
    """Rounds, client sampling and each client's local optimisation.

    ``device``: where the FELLRec backbones compute (``"cpu"``, ``"cuda"``,
    ``"cuda:1"``); the federated state (adapters, optimiser moments) stays on
    the CPU and moves in per step. The CTR models always run on the CPU.
    ``warmup_rounds`` and ``lr_decay`` schedule the learning rate over rounds
    (:meth:`lr_at`); the defaults keep it constant.
    """

    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 1024
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 0.01
    client_fraction: float = 1.0
    clients_per_round: int = 0
    engine: Literal["stacked", "loop"] = "stacked"
    dtype: Literal["float32", "float64"] = "float32"
    max_rows_per_bucket: int = 65536
    min_rows_per_bucket: int = 4096
    max_rows_per_client: int = 0
    device: str = "cpu"
    warmup_rounds: int = 0
    lr_decay: float = 1.0

    def lr_at(self, rnd: int) -> float:
        """Round ``rnd``'s (0-based) learning rate.

        ``lr_t = lr · min(1, (t + 1) / (w + 1)) · γ^t``, ``w = warmup_rounds``,
        ``γ = lr_decay``: a linear warm-up over the first ``w`` rounds and a
        geometric decay after every round.
        """
        warm = min(1.0, (rnd + 1) / (self.warmup_rounds + 1))
        return self.lr * warm * self.lr_decay**rnd

    def __post_init__(self) -> None:
        _check(self.warmup_rounds >= 0, "train.warmup_rounds must be >= 0")
        _check(0 < self.lr_decay <= 1, "train.lr_decay must be in (0, 1]")
        _check(
            self.device == "cpu" or self.device.split(":")[0] == "cuda",
            f"train.device must be 'cpu' or 'cuda[:i]', not {self.device!r}",
        )
        _check(self.rounds >= 1, "train.rounds must be >= 1")
        _check(self.local_epochs >= 1, "train.local_epochs must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(0 < self.client_fraction <= 1, "train.client_fraction must be in (0, 1]")
        _check(self.clients_per_round >= 0, "train.clients_per_round must be >= 0")
        _check(
            0 <= self.min_rows_per_bucket <= self.max_rows_per_bucket,
            "train.min_rows_per_bucket must be in [0, train.max_rows_per_bucket]",
        )


@dataclass
class GuardConfig:
    """Reject a client's update that is non-finite or too large (0 = no bound)."""

    max_update_norm: float = 0.0

    def __post_init__(self) -> None:
        _check(self.max_update_norm >= 0, "guard.max_update_norm must be >= 0")


@dataclass
class EvalConfig:
    """Per-round evaluation and model selection.

    ``select = "global"``: the round with the best ``val_<select_metric>``.
    ``"per_client"`` (FELLRec's generative reference): additionally each client
    keeps its own best round, reported as ``test_<m>_per_client_selection``.
    ``max_samples``: at most this many validation samples per user group
    (sequential tasks; 0 = all). ``splits`` without ``"test"``: the test split
    is evaluated once, with the best validation round's state (kept in
    ``best.pt``), instead of every round — the same summary, cheaper.
    ``initial``: also evaluate the untrained model, before round 0, as the
    history's round ``-1``; it is then a selection candidate like any round
    (selected when no trained round validates better). Off by default, so that
    CTR runs keep their histories; the FELLRec configs turn it on.

    CTR tasks (one client per user): ``new_users`` is the fraction of client
    users that never train (drawn with ``data.users.seed``, the same users for
    every method and run seed); each is evaluated with what a new device gets
    (the shared and group state, its initial private state) and reported as
    ``<split>_auc_new`` / ``_gauc_new``, apart from the seen users, whom the
    headline metrics cover. ``slices = true`` adds ``<split>_auc_light`` /
    ``_heavy`` (and gauc): seen users with at most ``light_rows`` / more than
    ``heavy_rows`` train rows (each slice adds its statistics, ≈ 1 MB, to a
    Flower node's evaluation reply).
    """

    select_metric: Literal[
        "auc", "gauc", "logloss", "recall@5", "recall@10", "ndcg@5", "ndcg@10"
    ] = "auc"
    max_samples: int = 0
    select: Literal["global", "per_client"] = "global"
    splits: list[Literal["train", "val", "test"]] = field(
        default_factory=lambda: ["val", "test"]
    )
    initial: bool = False
    new_users: float = 0.0
    slices: bool = False
    light_rows: int = 20
    heavy_rows: int = 80

    def __post_init__(self) -> None:
        _check("val" in self.splits, "eval.splits must include 'val' (model selection)")
        _check(0 <= self.new_users < 1, "eval.new_users must be in [0, 1)")
        _check(
            0 <= self.light_rows <= self.heavy_rows,
            "eval.light_rows must be in [0, eval.heavy_rows]",
        )


@dataclass
class KDConfig:
    """Distil the foundation model from a larger teacher (fedpa.md §7.1).

    Student loss ``BCE(σ(s), y) + lam·BCE(σ(s/T), σ(t/T))`` (``loss = "bce"``) or
    ``BCE(σ(s), y) + lam·(s − t)²`` (``loss = "mse"``), t the teacher's logit.
    """

    teacher_dim: int = 16
    teacher_layers: list[int] = field(default_factory=lambda: [64, 16])
    lam: float = 0.5
    temperature: float = 1.0
    loss: Literal["bce", "mse"] = "bce"

    def __post_init__(self) -> None:
        _check(self.lam >= 0, "pretrain.kd.lam must be >= 0")
        _check(self.temperature > 0, "pretrain.kd.temperature must be > 0")


@dataclass
class PretrainConfig:
    """Pre-training the foundation model on open users (``model.init_from``).

    ``model.init_from = "pretrain"`` trains a CTR model of ``[model]``'s size on
    the open users' rows (``data.users`` defines the division; the clients are
    then the private users) and ``"pretrain-kd"`` distils it from a teacher of
    ``[pretrain.kd]``'s size. The checkpoint is the epoch with the best AUC on
    each open user's latest ``holdout`` rows: no private row shapes it. Its
    initialisation and batch order are seeded by ``run.seed``. Results are
    cached under ``cache_dir`` by a hash of everything they depend on.
    """

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 1024
    holdout: float = 0.2
    cache_dir: str = ".cache/pretrain"
    kd: KDConfig = field(default_factory=KDConfig)

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "pretrain.epochs must be >= 1")
        _check(0 < self.holdout < 1, "pretrain.holdout must be in (0, 1)")


@dataclass
class PrivacyConfig:
    """Local differential privacy on every upload (fedpa.md §7.2).

    ``ldp_epsilon > 0``: clip each uploaded tensor to L1 norm ``ldp_clip`` and
    add Laplace(0, 2·clip/ε) noise per entry (ε-LDP per round). ``ldp_scale > 0``
    without ε: Laplace(0, ldp_scale) noise, no clipping, no ε claimed (the
    δ-only mode of the reference line of work). ``ldp_epsilon = inf``: clipping
    to ``ldp_clip`` only, no noise (a reference row; no privacy).

    The noise is seeded by the operating system on each client.
    ``reproducible_noise = true`` seeds it by ``(run.seed, round, client)``
    instead: the server can regenerate and subtract it, so it is for tests and
    simulation studies only (a warning is logged, the summary records
    ``ldp_protects = false``, and the Flower app refuses it).
    """

    ldp_epsilon: float = 0.0
    ldp_clip: float = 1.0
    ldp_scale: float = 0.0
    reproducible_noise: bool = False

    def __post_init__(self) -> None:
        _check(self.ldp_epsilon >= 0, "privacy.ldp_epsilon must be >= 0")
        _check(self.ldp_clip > 0, "privacy.ldp_clip must be > 0")
        _check(self.ldp_scale >= 0, "privacy.ldp_scale must be >= 0")
        _check(
            not (self.ldp_epsilon and self.ldp_scale),
            "privacy: set ldp_epsilon or ldp_scale, not both",
        )

    @property
    def ldp(self) -> bool:
        """Whether uploads are clipped or noised at all."""
        return self.ldp_epsilon > 0 or self.ldp_scale > 0

    @property
    def protects(self) -> bool:
        """Whether the uploads are ε-LDP against the server (noise it cannot redo)."""
        noised = self.ldp_scale > 0 or 0 < self.ldp_epsilon < math.inf
        return noised and not self.reproducible_noise


@dataclass
class ExperimentConfig:
    """A whole experiment: one TOML file.

    ``variants`` are the labelled runs of ``fedrec table``; ``presets`` are named
    lists of overrides (``--preset full``), applied before ``--set``.
    """

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    guard: GuardConfig = field(default_factory=GuardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    variants: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/TOML serialisable)."""
        return dataclasses.asdict(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
