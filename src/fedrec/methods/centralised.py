"""Centralised training: one "client" holds every user's rows (upper reference).

It is FedAvg with a single client, so one round = ``local_epochs`` epochs of
ordinary mini-batch training over all training rows. Not private at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.fl.strategy import Strategy
from fedrec.registry import register_method


@dataclass
class CentralisedConfig:
    """No options."""


class Centralised(Strategy):
    """All data on one client; the model is shared (with nobody)."""

    clients = "single"


register_method("centralised", CentralisedConfig, Centralised)
