"""What the engines ask of a task, as ``typing.Protocol`` classes.

A task is what one client computes on its rows (:mod:`fedrec.fl.task`,
:mod:`fedrec.fl.seq`). The engines (:mod:`fedrec.fl.loop`,
:mod:`fedrec.fl.stacked`, :mod:`fedrec.fl.simulate`, the Flower apps) receive
one and never import a task module; tasks never import an engine. This module
sits below both:

- :class:`LocalTrainer`: the loss one client trains, with the hooks of its
  local phase (who the client is, what is prepared once per phase);
- :class:`RowScorer`: scores of one client's rows (what batched prediction
  calls; CTR tasks);
- :class:`Evaluator`: per-row scores, their additive statistics and the
  metrics of those statistics summed over nodes;
- :class:`Task`: everything the embedded engine holds a task for;
- :class:`ClientData`: the clients it runs (CTR rows or top-K samples).

Evaluation is handed a :class:`PredictRows`, the engine's way of scoring many
clients' rows at once (stacked or one by one); a task that scores otherwise
(the top-K tasks) ignores it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import torch

from fedrec.data.splits import Split

Params = dict[str, torch.Tensor]
Penalty = Callable[[Params, Params], torch.Tensor]
Chunks = Iterable[tuple[torch.Tensor, Params]]
"""``(client ids (C,), their params (C, ...))`` pairs, a chunk of clients each."""


class LocalTrainer(Protocol):
    """The loss one client trains, and the hooks of its local phase."""

    def set_client(self, cid: int) -> None:
        """Run as client ``cid`` until told otherwise (e.g. its own split depth)."""
        ...

    def begin_local(self, params: Params) -> torch.Tensor | None:
        """What a local phase prepares once from its starting ``params`` (or None).

        Passed back to :meth:`loss` as ``state`` at every step of the phase.
        """
        ...

    def loss(
        self,
        params: Params,
        rows: torch.Tensor,
        mask: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked mean loss of rows ``(b,)`` (``mask`` ``(b,)`` in {0, 1}).

        Without ``state`` the task prepares what it needs itself; the stacked
        engine ``vmap``s this over clients and passes none.
        """
        ...


class RowScorer(Protocol):
    """Scores of one client's rows under its own ``params``."""

    def predict(self, params: Params, rows: torch.Tensor) -> torch.Tensor:
        """Scores ``(b,)`` of rows ``(b,)``."""
        ...


class PredictRows(Protocol):
    """An engine's batched prediction: each client's rows under its own params.

    ``params`` hold ``(C, ...)`` tensors, ``segments[c]`` client c's row ids;
    returns one ``(len(segments[c]),)`` score tensor per client.
    """

    def __call__(
        self, scorer: RowScorer, params: Params, segments: list[np.ndarray]
    ) -> list[torch.Tensor]:
        """Scores of each client's rows."""
        ...


class Evaluator(Protocol):
    """Evaluation in three steps both engines and Flower share.

    Per-row :meth:`client_scores` (local to a node), their additive
    :meth:`stats` (fixed shapes :meth:`stat_shapes`: what a node sends) and
    :meth:`metrics_from_stats` of the stats summed over nodes.
    """

    def client_scores(
        self, split: str, chunks: Chunks, predict: PredictRows
    ) -> dict[str, np.ndarray]:
        """Per-row outputs of the clients in ``chunks`` on ``split``."""
        ...

    def stat_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of :meth:`stats`."""
        ...

    def stats(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Additive statistics of :meth:`client_scores`' rows."""
        ...

    def metrics_from_stats(self, stats: dict[str, np.ndarray]) -> dict[str, Any]:
        """Metrics of statistics summed over nodes (``{}``: nothing evaluated)."""
        ...


class Task(LocalTrainer, Evaluator, Protocol):
    """Everything the embedded engine holds a task for: training and evaluation."""


class ClientData(Protocol):
    """The clients an engine runs: their row ids per split and their attributes.

    :class:`~fedrec.fl.clients.FedData` (CTR rows) and
    :class:`~fedrec.fl.seq.SeqFedData` (top-K samples) are both.
    """

    n_clients: int
    split: Split

    def sizes(self, split: str) -> np.ndarray:
        """``int64[N]``: rows (or samples) of each client in ``split``."""
        ...

    def client_rows(self, split: str, cid: int) -> np.ndarray:
        """Row (or sample) ids of client ``cid`` in ``split``."""
        ...

    def attribute_column(self, attr: str) -> np.ndarray:
        """``int64[U]`` value of user attribute ``attr`` for every user code."""
        ...

    def client_attribute(self, attr: str) -> np.ndarray:
        """``int64[N]`` value of user attribute ``attr`` for each client."""
        ...
