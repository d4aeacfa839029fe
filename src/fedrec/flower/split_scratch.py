"""What a node keeps between split messages, typed; its flat layout in one place.

A node's scratch (:class:`Scratch`) holds per client (:class:`ClientScratch`)
its node-side parameters, pending tail gradients, optimiser state, item table
and the item chunks that make it, and per evaluated row its decoded tokens.
The node's ``-split`` :class:`~fedrec.flower.store.NodeStore` saves it as flat
tensors named ``"<i>|<kind>:<name>"`` — ``i`` a client (or, for ``tok``, an
evaluated row), ``kind`` one of ``p`` (parameters), ``grad``, ``opt``
(``m:<name>``, ``v:<name>``, ``t``), ``tab`` (``table``), ``item<j>``
(chunk ``j``'s ``e``), ``tok`` (``ids``). :meth:`Scratch.of` and
:meth:`Scratch.flat` convert; :func:`scratch_of`, :func:`params_of` and
:func:`put` read and write single entries of that layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedrec.errors import FedrecError

Tensors = dict[str, torch.Tensor]

_ITEM = "item"  # kind prefix of an item chunk: item<j>


@dataclass
class ClientScratch:
    """One client's state on its node between messages.

    ``params``: node-side θ_i; ``grads``: gradients of the tail's backward,
    pending until the head's; ``opt``: the optimiser's state
    (:func:`~fedrec.flower.split.optimise`); ``table``: the client's item
    table ``(items, d)`` under θ_i (discriminative); ``item_chunks``: pooled
    item chunks ``{j: (chunk, d)}`` until the table is complete.
    """

    params: Tensors = field(default_factory=dict)
    grads: Tensors = field(default_factory=dict)
    opt: Tensors = field(default_factory=dict)
    table: torch.Tensor | None = None
    item_chunks: dict[int, torch.Tensor] = field(default_factory=dict)

    def item_table(self, client: int) -> torch.Tensor:
        """``table``; refuses its absence (the round's item tables came first)."""
        if self.table is None:
            raise FedrecError(
                f"split: this node holds no item table of client {client}"
            )
        return self.table


@dataclass
class Scratch:
    """A node's scratch: its clients' states, its evaluated rows' tokens.

    ``clients``: ``{client: ClientScratch}``; ``tokens``: ``{row: (1, T)}``,
    the tokens decoded so far per evaluated row (of
    :func:`~fedrec.flower.split.eval_items`).
    """

    clients: dict[int, ClientScratch] = field(default_factory=dict)
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def fresh(cls, clients: list[int], received: Tensors) -> Scratch:
        """Only each client's θ_i as received (stacked ``(clients, ...)``)."""
        return cls(
            {
                c: ClientScratch(params={n: t[i] for n, t in received.items()})
                for i, c in enumerate(clients)
            }
        )

    def client(self, c: int) -> ClientScratch:
        """Client ``c``'s state; refuses a client without parameters here."""
        mine = self.clients.get(c)
        if mine is None or not mine.params:
            raise _gap(c)
        return mine

    @classmethod
    def of(cls, flat: Tensors) -> Scratch:
        """The scratch a store saved (:meth:`flat`)."""
        out = cls()
        for key, t in flat.items():
            entry, _, rest = key.partition("|")
            kind, _, name = rest.partition(":")
            i = int(entry)
            if kind == "tok":
                out.tokens[i] = t
                continue
            mine = out.clients.setdefault(i, ClientScratch())
            if kind == "p":
                mine.params[name] = t
            elif kind == "grad":
                mine.grads[name] = t
            elif kind == "opt":
                mine.opt[name] = t
            elif kind == "tab":
                mine.table = t
            elif kind.startswith(_ITEM):
                mine.item_chunks[int(kind.removeprefix(_ITEM))] = t
            else:
                raise FedrecError(f"split: unknown scratch entry {key!r}")
        return out

    def flat(self) -> Tensors:
        """The flat tensors the node's store saves."""
        out: Tensors = {}
        for c, mine in self.clients.items():
            out |= _entries(c, mine.params)
            out |= _entries(c, mine.grads, "grad:")
            out |= _entries(c, mine.opt, "opt:")
            if mine.table is not None:
                out |= _entries(c, {"table": mine.table}, "tab:")
            for j, e in mine.item_chunks.items():
                out |= _entries(c, {"e": e}, f"{_ITEM}{j}:")
        for i, ids in self.tokens.items():
            out |= _entries(i, {"ids": ids}, "tok:")
        return out


def scratch_of(saved: Tensors, i: int, prefix: str = "p:") -> Tensors:
    """Entry ``i``'s tensors (``"<i>|<prefix><name>"``) in a flat scratch.

    Prefixes: ``p:`` a client's parameters, ``grad:`` its pending gradients,
    ``opt:`` its optimiser state; ``tok:`` an evaluated row's tokens.
    """
    head = f"{i}|{prefix}"
    return {k[len(head) :]: v for k, v in saved.items() if k.startswith(head)}


def params_of(saved: Tensors, client: int) -> Tensors:
    """Client ``client``'s node-side parameters in a flat scratch; refuses a gap."""
    values = scratch_of(saved, client)
    if not values:
        raise _gap(client)
    return values


def put(saved: Tensors, i: int, values: Tensors, prefix: str = "p:") -> None:
    """Replace entry ``i``'s ``prefix`` tensors in a flat scratch by ``values``."""
    for k in [k for k in saved if k.startswith(f"{i}|{prefix}")]:
        del saved[k]
    saved.update(_entries(i, values, prefix))


def _entries(i: int, values: Tensors, prefix: str = "p:") -> Tensors:
    """``values`` named as entry ``i``'s ``prefix`` tensors."""
    return {f"{i}|{prefix}{n}": t for n, t in values.items()}


def _gap(client: int) -> FedrecError:
    return FedrecError(
        f"split: this node holds no state of client {client} mid-round "
        "(restarted, or its store was removed); it sits the round out"
    )
