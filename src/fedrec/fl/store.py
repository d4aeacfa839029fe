"""The per-client store of private state, owned by the client side of an engine.

Private tensors live here as ``(N, ...)`` banks (row c = client c). The server
side never receives this object: strategies only see broadcast and uploads.
"""

from __future__ import annotations

import torch

from fedrec.fl.protocols import Params


class ClientStore:
    """Private parameters of N clients, all starting from the same values."""

    def __init__(self, init: Params, n_clients: int) -> None:
        self.banks: Params = {
            n: t.detach().expand(n_clients, *t.shape).clone() for n, t in init.items()
        }

    def get(self, clients: torch.Tensor) -> Params:
        """Copies ``(C, ...)`` of the given clients' private tensors."""
        return {n: b[clients].clone() for n, b in self.banks.items()}

    def put(self, clients: torch.Tensor, values: Params) -> None:
        """Write back the given clients' private tensors."""
        for n, b in self.banks.items():
            b[clients] = values[n].detach()

    def state_dict(self) -> Params:
        """Banks, for checkpoints (they stay on the client side's disk)."""
        return self.banks

    def load_state_dict(self, banks: Params) -> None:
        """Restore banks from a checkpoint."""
        self.banks = {n: banks[n].clone() for n in self.banks}
