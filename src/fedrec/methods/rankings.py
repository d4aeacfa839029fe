"""The reference rankings' method names: registered, but without an engine.

``popularity`` and ``item-knn`` (:mod:`fedrec.references`) are named like
methods in configs and ``[variants.*]`` tables, so they are registered here
with no options; building a federated strategy for one is a ``ConfigError``
(:func:`fedrec.runs.run_experiment` scores them instead).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.errors import ConfigError
from fedrec.fl.strategy import Strategy
from fedrec.registry import register_method

REFERENCES = ("popularity", "item-knn")


@dataclass
class NoOptions:
    """No options."""


class Reference(Strategy):
    """A reference ranking is not a federated method: it has no engine."""

    def __init__(self, config: NoOptions) -> None:
        raise ConfigError(
            "popularity and item-knn are reference rankings without training: "
            "run them with `fedrec run` or `fedrec table` on the embedded engine"
        )


for _name in REFERENCES:
    register_method(_name, NoOptions, Reference)
