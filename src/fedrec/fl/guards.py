"""Reject client updates that are non-finite or implausibly large.

A client's update is ``Δ_c = upload_c − received_c`` over all uploaded tensors.
It is rejected if any entry is NaN/Inf, if its training loss is (when losses
are given: a loss that strategies read, e.g. FELLRec's curriculum softmax,
would spread one NaN to every client), or if ``||Δ_c||_2 > max_norm`` (when a
bound is set). Rejected clients are left out of aggregation and keep their old
private state; the round goes on with the rest.
"""

from __future__ import annotations

import torch

from fedrec.fl.protocols import Params


def accept_updates(
    uploads: Params,
    received: Params,
    private: Params,
    max_norm: float = 0.0,
    losses: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """``bool (C,)`` mask of accepted clients and one reason per rejected client.

    ``losses`` ``(C,)``: each client's mean training loss (optional).

    One pass per tensor: ``||Δ_c||`` is NaN or Inf whenever an uploaded entry is,
    and a private tensor's per-client sum is non-finite whenever an entry is.
    """
    tensors = [*uploads.values(), *private.values()]
    if not tensors:
        return torch.ones(0, dtype=torch.bool), []
    C = tensors[0].shape[0]
    sq = torch.zeros(C, dtype=torch.float64)
    for n, t in uploads.items():
        d = (t - received[n]).reshape(C, -1)
        n2 = torch.linalg.vector_norm(d, dim=1).double() ** 2
        over = ~torch.isfinite(n2)  # float32 overflow: redo those in float64
        if over.any():
            n2[over] = torch.linalg.vector_norm(d[over].double(), dim=1) ** 2
        sq += n2
    finite = torch.isfinite(sq)
    for t in private.values():
        finite &= torch.isfinite(t.reshape(C, -1).sum(1, dtype=torch.float64))
    norm = sq.sqrt()
    good_loss = (
        torch.ones(C, dtype=torch.bool) if losses is None else torch.isfinite(losses)
    )
    ok = finite & good_loss
    if max_norm > 0:
        ok &= norm <= max_norm
    reasons = [
        "non-finite values"
        if not finite[c]
        else f"non-finite loss {float(losses[c])}"  # type: ignore[index]
        if not good_loss[c]
        else f"update norm {norm[c]:.4g} > {max_norm}"
        for c in range(C)
        if not ok[c]
    ]
    return ok, reasons
