"""Client mods: what every ClientApp reply passes through before the wire.

``ClientApp(mods=[wire_audit(...), upload_mods(...)])``: Flower applies the
first mod outermost, so the audit sees the reply exactly as it will be sent —
after LDP noise — and lets through only declared parameters, fixed-shape
evaluation statistics and the split's hidden states.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Set
from typing import Any

import torch

from fedrec.fl.clients import SPLITS
from fedrec.flower.records import from_record, names, shapes, to_record

log = logging.getLogger("fedrec.flower")

AUDIT_ERROR = 451  # code of the error reply sent instead of a refused message
# the records a fedrec ClientApp may send: uploads (parameters), stats (the
# evaluation's additive statistics, "<split>/<name>"), hidden (the split's
# hidden states and their gradients, "<client>/<field>")
UPLOADS, STATS, HIDDEN = "uploads", "stats", "hidden"
HIDDEN_FIELDS = {"tensor", "attention_mask", "position_ids"}

Mod = Callable[[Any, Any, Callable[[Any, Any], Any]], Any]
Schema = Mapping[str, tuple[int, ...]]


def wire_audit(
    shared: Callable[[Any], Set[str]],
    stat_shapes: Callable[[Any], Schema] | None = None,
) -> Mod:
    """Refuse any reply that carries a tensor the method did not declare shared.

    ``shared(context)`` gives the parameter names the method uploads;
    ``stat_shapes(context)`` the task's evaluation statistics and their fixed
    shapes (``task.stat_shapes()``; ``None``: no statistics may be sent). A
    reply may hold the array records ``uploads`` (names ⊆ shared), ``stats``
    (``"<split>/<name>"`` with ``<name>`` in the schema and exactly its shape:
    no per-row array — labels, ids, scores — passes) and ``hidden`` (a split
    model's hidden states or their gradients: ``"<client>/<field>"``, the
    fields of :class:`~fedrec.models.split.Message`); anything else — a private
    tensor, a row array, an unknown record — is not sent: the server gets an
    error reply naming it.
    """

    def mod(msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        from flwr.app import ArrayRecord, Error, Message

        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        # (not ``.array_records``: a synced copy, ≈ 8 µs)
        records = {k: r for k, r in reply.content.items() if isinstance(r, ArrayRecord)}
        known = (UPLOADS, STATS, HIDDEN)
        refused = sorted(f"record {k!r}" for k in records if k not in known)
        if UPLOADS in records:
            refused += sorted(set(names(records[UPLOADS])) - shared(context))
        if STATS in records:
            schema = stat_shapes(context) if stat_shapes is not None else {}
            refused += _off_schema(shapes(records[STATS]), schema)
        if HIDDEN in records:
            refused += sorted(
                n for n in names(records[HIDDEN]) if not _is_hidden_field(n)
            )
        if refused:
            reason = f"wire audit refused to send {', '.join(refused)} (not shared)"
            log.error("node %s: %s", context.node_id, reason)
            return Message(Error(AUDIT_ERROR, reason), reply_to=msg)
        return reply

    return mod


def _off_schema(got: Mapping[str, tuple[int, ...]], schema: Schema) -> list[str]:
    """The ``stats`` entries that are not ``"<split>/<name>"`` of ``schema``'s shape.

    Each named with why: an unknown name (e.g. ``test/labels``) or a shape
    other than the schema's (a row-dependent one).
    """
    bad = []
    for entry, shape in sorted(got.items()):
        split, _, name = entry.partition("/")
        want = schema.get(name)
        if split not in SPLITS or want is None:
            bad.append(f"stats {entry!r}")
        elif tuple(shape) != tuple(want):
            bad.append(f"stats {entry!r} of shape {tuple(shape)} != {tuple(want)}")
    return bad


def _is_hidden_field(name: str) -> bool:
    client, _, field = name.partition("/")
    return client.isdigit() and field in HIDDEN_FIELDS


def upload_mods(engine_of: Callable[[Any], Any]) -> Mod:
    """The engine's upload mods (LDP) on each train reply's ``uploads``.

    The same seeded mechanism as the embedded engine (noise per seed, round and
    client), so both engines release identical uploads.
    """

    def mod(msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or reply.has_error():
            return reply
        eng = engine_of(context)
        if not eng.mods:
            return reply
        cfg = msg.content["config"]
        clients = torch.as_tensor(list(cfg["clients"]), dtype=torch.long)
        received = from_record(msg.content["received"])
        uploads = from_record(reply.content[UPLOADS])
        noisy = eng.apply_mods(int(cfg["round"]), clients, uploads, received)
        reply.content[UPLOADS] = to_record(noisy)
        return reply

    return mod
