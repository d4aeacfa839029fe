r"""Reference rows of the CTR tables: what a trivial or an oracle model reaches.

Neither federates nor trains by gradient; both are fitted once on the train
rows of every seen client (``fed.rows["train"]``: new users' rows are not
there) and then evaluated like any method (same slices, metrics and run
directory). With :math:`c_u, n_u` user u's clicks and rows, :math:`\bar p`
the click rate of all those rows and :math:`a` = ``PSEUDO_ROWS`` (10):

- ``user-prior``: :math:`\hat y_{ui} = p_u = (c_u + a\bar p)/(n_u + a)`,
  each user's smoothed click rate (a user without train rows gets
  :math:`\bar p`);
- ``logreg``: a centralised logistic regression (scikit-learn, L2, C = 1) on
  :math:`[\operatorname{logit} p_u, \operatorname{logit} q_{f}(v_{if})]_f`,
  :math:`q_f(v)` the smoothed click rate of value v of item field f (the item
  id when the data has no item fields). It sees every seen user's train rows
  and its user feature is computed on the rows it is fitted on: an oracle, the
  ceiling of what user click rates and item-field rates can explain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logit
from torch import nn

from fedrec.data.dataset import InteractionData
from fedrec.fl.clients import FedData
from fedrec.fl.partition import FROZEN
from fedrec.fl.strategy import Strategy
from fedrec.registry import register_method
from fedrec.sections import ModelConfig

PSEUDO_ROWS = 10.0


def smoothed_rates(
    keys: np.ndarray, labels: np.ndarray, n: int, prior: float
) -> np.ndarray:
    """``(n,)`` ``(clicks_k + a·prior) / (rows_k + a)`` per key ``k`` in ``[0, n)``."""
    clicks = np.bincount(keys, weights=labels, minlength=n)
    rows = np.bincount(keys, minlength=n)
    return (clicks + PSEUDO_ROWS * prior) / (rows + PSEUDO_ROWS)


class RateModel(nn.Module):
    """``logit = w_u · user_logit[u] + item_logit[i] + b`` from fitted buffers.

    ``user_logit`` ``(U,)``; ``item_logit`` ``(I,)`` holds the item side of
    the linear score (Σ_f w_f logit q_f(v_if)); ``w_u`` and ``b`` scalars.
    No parameter: nothing trains, uploads or aggregates.
    """

    user_logit: torch.Tensor  # buffers
    item_logit: torch.Tensor
    coef: torch.Tensor

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.register_buffer("user_logit", torch.zeros(n_users, dtype=torch.float64))
        self.register_buffer("item_logit", torch.zeros(n_items, dtype=torch.float64))
        self.register_buffer("coef", torch.tensor([1.0, 0.0], dtype=torch.float64))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)``."""
        w, b = self.coef
        return w * self.user_logit[users] + self.item_logit[items] + b


@dataclass
class NoOptions:
    """No options."""


class UserPrior(Strategy):
    """Each user's smoothed train click rate: the per-user prior."""

    def build_model(self, data: InteractionData, cfg: ModelConfig) -> nn.Module:
        """A :class:`RateModel` to fit."""
        return RateModel(data.n_users, data.n_items)

    def partition_rules(self) -> list[tuple[str, str]]:
        """Nothing trains."""
        return [("*", FROZEN)]

    def fit(self, model: nn.Module, fed: FedData) -> None:
        """``user_logit = logit p_u``, coefficients (1, 0)."""
        users, _, labels, prior = train_rows(fed)
        p = smoothed_rates(users, labels, fed.data.n_users, prior)
        rate_model(model).user_logit.copy_(torch.as_tensor(logit(p)))


class LogReg(UserPrior):
    """Centralised logistic regression on the user prior and item-field rates."""

    def fit(self, model: nn.Module, fed: FedData) -> None:
        """Fit on every seen user's train rows; fold the item terms into a table."""
        from sklearn.linear_model import LogisticRegression

        data = fed.data
        users, items, labels, prior = train_rows(fed)
        user_x = logit(smoothed_rates(users, labels, data.n_users, prior))
        fields = (
            data.item_features
            if data.item_features is not None and data.item_features.shape[1]
            else np.arange(data.n_items)[:, None]
        )
        item_x = np.stack(
            [
                logit(smoothed_rates(col[items], labels, int(col.max()) + 1, prior))[
                    col
                ]
                for col in fields.T
            ],
            axis=1,
        )  # (I, F)
        x = np.column_stack([user_x[users], item_x[items]])
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(x, labels)
        w = lr.coef_[0]
        rates = rate_model(model)
        rates.user_logit.copy_(torch.as_tensor(user_x))
        rates.item_logit.copy_(torch.as_tensor(item_x @ w[1:]))
        rates.coef.copy_(torch.tensor([w[0], lr.intercept_[0]]))


def rate_model(model: nn.Module) -> RateModel:
    """``model`` as the :class:`RateModel` these strategies build and fit."""
    if not isinstance(model, RateModel):
        raise TypeError(f"expected the RateModel of build_model, got {type(model)}")
    return model


def train_rows(fed: FedData) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(users, items, labels, mean label)`` of every client's train rows."""
    rows = torch.as_tensor(fed.rows["train"])
    labels = fed.labels[rows].double().numpy()
    prior = float(labels.mean()) if len(labels) else 0.5
    return fed.users[rows].numpy(), fed.items[rows].numpy(), labels, prior


register_method("user-prior", NoOptions, UserPrior)
register_method("logreg", NoOptions, LogReg)
