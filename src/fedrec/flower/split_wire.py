"""The FELLRec split's messages as types; the one place they meet Flower's records.

Each message kind has a request dataclass (the ServerApp builds it, the node
reads it) and a reply dataclass (the other way round). Their fields are named
and typed; this module alone maps them to a Flower ``RecordDict``:

- a request's plain fields (``round``, ``step``, ``clients``, ``last``,
  ``splits``, ``first``, ``end``, ``open``) and the run's store key go into
  its ``config`` ``ConfigRecord``; a reply's plain fields (``losses``,
  ``tail_cached``, ``open``, ``missing``) into its ``metrics``
  ``MetricRecord``;
- hidden states ``{entry: Message}`` (``entry``: a client, an encoding batch
  or an evaluated row) into the ``hidden`` ``ArrayRecord``, as
  ``"<entry>/<field>"`` with the fields of
  :class:`~fedrec.models.split.Message` (what the wire audit lets through);
- named tensors into their own ``ArrayRecord`` (``received``: the clients'
  node-side θ_i stacked ``(clients, ...)``; ``uploads``: those of the clients
  in ``last``; ``stats``: ``"<split>/<name>"``, the task's statistics),
  absent when ``None``.

The kinds (message type ``<phase>.<KIND>``; the protocol is in
:mod:`fedrec.flower.split`): ``train.split_head`` / ``split_tail`` /
``split_back``, ``{train,evaluate}.split_enc_head`` / ``split_enc_tail``,
``evaluate.split_gen_head`` / ``split_gen_tail``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, cast

import numpy as np
import torch

from fedrec.flower.mods import HIDDEN, STATS, UPLOADS
from fedrec.flower.records import from_record, to_record
from fedrec.models.split import Message

if TYPE_CHECKING:
    from flwr.app import Message as FlwrMessage
    from flwr.app import RecordDict

CONFIG, METRICS, RECEIVED, STORE = "config", "metrics", "received", "store"

Tensors = dict[str, torch.Tensor]
Hidden = dict[int, Message]  # entry (client, batch or row) -> its hidden state
Stats = dict[str, np.ndarray]  # "<split>/<name>" -> a statistic, fixed shape
# a plain field's value: a ConfigRecord's (requests) or a MetricRecord's (replies)
Plain = int | float | list[int] | list[float] | list[str]
MetricValue = int | float | list[int] | list[float]  # what a MetricRecord holds


# ------------------------------------------------------ where a field goes
def _hidden() -> Hidden:
    """A field packed as the ``hidden`` record (always sent, maybe empty)."""
    return field(default_factory=dict, metadata={"record": HIDDEN})


def _tensors(record: str) -> Tensors | None:
    """A field packed as ArrayRecord ``record`` (not sent when ``None``)."""
    return field(default=None, metadata={"record": record})


def _stats() -> Stats | None:
    """The ``stats`` record's field (numpy arrays; not sent when ``None``)."""
    return field(default=None, metadata={"record": STATS, "numpy": True})


def _pack(obj: Request | Reply) -> tuple[RecordDict, dict[str, Plain]]:
    """``obj``'s tensor fields as array records, and its plain fields."""
    from flwr.app import RecordDict

    content, plain = RecordDict(), dict[str, Plain]()
    for f in dataclasses.fields(obj):
        value, record = getattr(obj, f.name), f.metadata.get("record")
        if record == HIDDEN:
            flat = {
                f"{i}/{k}": t for i, m in value.items() for k, t in m.tensors().items()
            }
            content[HIDDEN] = to_record(flat)
        elif record is not None:
            if value is not None:
                content[record] = to_record(value)
        else:
            plain[f.name] = value
    return content, plain


def _unpack(
    cls: type[_Packed], content: RecordDict, plain: Mapping[str, object]
) -> _Packed:
    """An instance of ``cls`` from ``content``'s records and its plain values.

    A field whose record or value is absent takes its default.
    """
    records, kwargs = content.array_records, dict[str, Any]()
    for f in dataclasses.fields(cls):
        record = f.metadata.get("record")
        if record is None:
            if f.name in plain:
                value = plain[f.name]
                kwargs[f.name] = list(value) if isinstance(value, list) else value
        elif record in records:
            tensors = from_record(records[record])
            if record == HIDDEN:
                kwargs[f.name] = _hidden_of(tensors)
            elif f.metadata.get("numpy"):
                kwargs[f.name] = {n: t.numpy() for n, t in tensors.items()}
            else:
                kwargs[f.name] = tensors
    return cls(**kwargs)


def _hidden_of(flat: Tensors) -> Hidden:
    """``{entry: Message}`` of a ``hidden`` record's ``"<entry>/<field>"``."""
    per: dict[int, Tensors] = {}
    for name, t in flat.items():
        entry, _, key = name.partition("/")
        per.setdefault(int(entry), {})[key] = t
    return {i: Message.of(ts) for i, ts in per.items()}


def hidden_bytes(obj: Request | Reply) -> int:
    """Bytes of the hidden states (or gradients) ``obj`` carries."""
    return sum(
        m.nbytes
        for f in dataclasses.fields(obj)
        if f.metadata.get("record") == HIDDEN
        for m in getattr(obj, f.name).values()
    )


# ------------------------------------------------------------------ replies
@dataclass(frozen=True, kw_only=True)
class Reply:
    """A node's answer; plain fields travel as the ``metrics`` record."""

    def to_content(self) -> RecordDict:
        """The reply's ``RecordDict``."""
        from flwr.app import MetricRecord

        content, plain = _pack(self)
        if plain:  # replies carry numbers and lists of numbers only
            content[METRICS] = MetricRecord(cast(dict[str, MetricValue], plain))
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> Self:
        """The reply ``to_content`` packed."""
        plain = dict(content[METRICS]) if METRICS in content else {}
        return _unpack(cls, content, plain)


@dataclass(frozen=True, kw_only=True)
class HiddenReply(Reply):
    """``h_k`` (with mask and positions) of each entry of the request."""

    hidden: Hidden = _hidden()


@dataclass(frozen=True, kw_only=True)
class TailReply(Reply):
    """The training tail's answer, per client of the request.

    ``grads``: ``∂loss/∂h_{L−1}`` ``(b, n, d)`` (field ``tensor`` only);
    ``losses``: each client's batch loss, in the request's client order.
    """

    grads: Hidden = _hidden()
    losses: list[float] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class BackReply(Reply):
    """``uploads``: node-side θ_i of the request's ``last`` clients, stacked."""

    uploads: Tensors | None = _tensors(UPLOADS)


@dataclass(frozen=True, kw_only=True)
class EncTailReply(Reply):
    """``stats`` of the evaluated rows among the batches (none: item chunks only)."""

    stats: Stats | None = _stats()


@dataclass(frozen=True, kw_only=True)
class GenHeadReply(Reply):
    """Each open row's ``h_k``; the rows whose block ``L−1`` cache is held.

    ``hidden``: ``(1, new, d)``, the whole prefix at step 0, else its newest
    position (the mask spans the prefix); ``tail_cached``: the rows whose
    block ``L−1`` cache the node holds (they need only the newest ``h_{L−1}``).
    """

    hidden: Hidden = _hidden()
    tail_cached: list[int] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class GenTailReply(Reply):
    """The rows still decoding (``open``); ``stats`` once none is.

    ``missing``: rows whose block ``L−1`` cache the node reported but no longer
    holds — it changed nothing, and wants their whole prefixes.
    """

    open: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    stats: Stats | None = _stats()


R = TypeVar("R", bound=Reply)
_Packed = TypeVar("_Packed", bound="Request | Reply")


# ----------------------------------------------------------------- requests
@dataclass(frozen=True, kw_only=True)
class Request(Generic[R]):
    """What every split message carries: the round, the step, the node's clients.

    Plain fields travel as the ``config`` record, with the run's store key.
    """

    KIND: ClassVar[str]  # the message type's action: ``<phase>.<KIND>``
    REPLY: ClassVar[type[Reply]]

    round: int
    step: int
    clients: list[int]

    def to_message(self, phase: str, node_id: int, store: str) -> FlwrMessage:
        """The Flower message to node ``node_id``, of type ``<phase>.<KIND>``."""
        from flwr.app import ConfigRecord
        from flwr.app import Message as FlwrMessage

        content, plain = _pack(self)
        content[CONFIG] = ConfigRecord({**plain, STORE: store})
        return FlwrMessage(content, node_id, f"{phase}.{self.KIND}")

    @classmethod
    def from_content(cls, content: RecordDict) -> Self:
        """The request ``to_message`` packed."""
        return _unpack(cls, content, dict(content[CONFIG]))

    def reply_of(self, content: RecordDict) -> R:
        """The reply to this request, from its content."""
        return cast(R, self.REPLY.from_content(content))


@dataclass(frozen=True, kw_only=True)
class HeadRequest(Request[HiddenReply]):
    """``train.split_head``: the head forward of mini-batch ``step`` per client.

    ``received``: at step 0 of a generative round, each client's node-side θ_i
    (stacked ``(clients, ...)``); a discriminative round sent it with its item
    tables.
    """

    KIND = "split_head"
    REPLY = HiddenReply

    received: Tensors | None = _tensors(RECEIVED)


@dataclass(frozen=True, kw_only=True)
class TailRequest(Request[TailReply]):
    """``train.split_tail``: ``hidden``, each client's ``h_{L−1}`` ``(b, n, d)``."""

    KIND = "split_tail"
    REPLY = TailReply

    hidden: Hidden = _hidden()


@dataclass(frozen=True, kw_only=True)
class BackRequest(Request[BackReply]):
    """``train.split_back``: ``grads``, each client's ``∂loss/∂h_k`` ``(b, n, d)``.

    ``last``: the clients whose local phase ends with this step (they upload).
    """

    KIND = "split_back"
    REPLY = BackReply

    last: list[int]
    grads: Hidden = _hidden()


@dataclass(frozen=True, kw_only=True)
class EncRequest(Request[R]):
    """An encoding message: batches ``[first, end)`` of the clients' plan.

    The plan is :func:`~fedrec.flower.split.encode_plan` of ``clients`` and
    ``splits`` (empty: the item tables only).
    """

    splits: list[str]
    first: int
    end: int

    @property
    def entries(self) -> range:
        """The plan's batches this message serves."""
        return range(self.first, self.end)


@dataclass(frozen=True, kw_only=True)
class EncHeadRequest(EncRequest[HiddenReply]):
    """``<phase>.split_enc_head``; the first of an exchange carries ``received``."""

    KIND = "split_enc_head"
    REPLY = HiddenReply

    received: Tensors | None = _tensors(RECEIVED)

    def tail(self, hidden: Hidden) -> EncTailRequest:
        """The tail message of these batches: their ``h_{L−1}``."""
        return EncTailRequest(
            round=self.round,
            step=self.step,
            clients=self.clients,
            splits=self.splits,
            first=self.first,
            end=self.end,
            hidden=hidden,
        )


@dataclass(frozen=True, kw_only=True)
class EncTailRequest(EncRequest[EncTailReply]):
    """``<phase>.split_enc_tail``: ``hidden``, each batch's ``h_{L−1}``."""

    KIND = "split_enc_tail"
    REPLY = EncTailReply

    hidden: Hidden = _hidden()


@dataclass(frozen=True, kw_only=True)
class GenHeadRequest(Request[GenHeadReply]):
    """``evaluate.split_gen_head``: token ``step`` of the ``open`` rows.

    Rows are indices of :func:`~fedrec.flower.split.eval_items` of
    ``clients``; step 0 carries ``received`` (each client's node-side θ_i).
    """

    KIND = "split_gen_head"
    REPLY = GenHeadReply

    open: list[int]
    received: Tensors | None = _tensors(RECEIVED)

    def tail(self, hidden: Hidden) -> GenTailRequest:
        """The tail message of this token: the open rows' ``h_{L−1}``."""
        return GenTailRequest(
            round=self.round,
            step=self.step,
            clients=self.clients,
            open=self.open,
            hidden=hidden,
        )


@dataclass(frozen=True, kw_only=True)
class GenTailRequest(Request[GenTailReply]):
    """``evaluate.split_gen_tail``: ``hidden``, each open row's ``h_{L−1}``.

    ``(1, n, d)`` of its whole prefix, or ``(1, 1, d)`` of the newest position
    for a row whose cache the node reported; the mask always spans the prefix.
    """

    KIND = "split_gen_tail"
    REPLY = GenTailReply

    open: list[int]
    hidden: Hidden = _hidden()
