"""The one door to Flower's private internals: the simulation woken by messages.

Everything else in fedrec uses Flower's public API (``flwr.app``,
``flwr.serverapp``, ``flwr.clientapp``, ``flwr.simulation``). This module
alone patches private parts of the simulation, and only on the Flower version
it was written and tested against (:data:`TESTED`); on any other version, or
with ``FEDREC_FLOWER_STOCK=1``, :func:`woken` leaves Flower as it is (warning
once why) and the results are the same, only slower.

In flwr 1.41's simulation both ends of a message poll for it:

- a loop hands the ServerApp's new messages to the node workers, polling the
  link state every 100 ms (``vce_api.add_messages_to_queue``), so each
  broadcast waits 0–100 ms before any node sees it;
- the ServerApp sees replies only by polling the grid
  (:meth:`~fedrec.flower.fleet.Fleet.collect`), so a round ends up to a poll
  interval after its last reply was stored.

Inside :func:`woken` the link state's ``store_message_ins`` wakes the loop
(which also drains a node's queued messages without waiting) and its
``store_message_res`` sets :data:`REPLIED`, on which the ServerApp's reply
wait sleeps (:func:`wait_for_replies`). A deployment's ServerApp talks to the
SuperLink over the network, where nothing sets :data:`REPLIED`: there, as on
stock Flower, the wait is the poll interval.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("fedrec.flower")

#: the flwr version whose internals :func:`woken` patches
TESTED = "1.41.0"
#: set to 1 to run stock Flower even on :data:`TESTED`
STOCK_ENV = "FEDREC_FLOWER_STOCK"
#: set when a simulation's link state stores a reply (never in a deployment)
REPLIED = threading.Event()
_warned: set[str] = set()


def patchable() -> tuple[bool, str]:
    """Whether :func:`woken` patches Flower here, and if not, why not."""
    import flwr

    version = getattr(flwr, "__version__", "unknown")
    if os.environ.get(STOCK_ENV, "") not in ("", "0"):
        return False, f"{STOCK_ENV} is set"
    if version != TESTED:
        return False, f"flwr {version} is installed; the patches know flwr {TESTED}"
    return True, ""


def wait_for_replies(seconds: float) -> None:
    """Sleep up to ``seconds``; a patched simulation wakes it when a reply is stored."""
    REPLIED.wait(seconds)


@contextlib.contextmanager
def woken() -> Iterator[None]:
    """Within: Flower's simulation hands over messages and replies at once.

    On stock Flower (:func:`patchable` false) it changes nothing, after one
    warning per reason.
    """
    ok, why = patchable()
    if not ok:
        if why not in _warned:
            _warned.add(why)
            log.warning("Flower simulation runs stock (slower, same results): %s", why)
        yield
        return
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate import InMemoryLinkState

    stored = threading.Event()
    store_ins, store_res = (
        InMemoryLinkState.store_message_ins,
        InMemoryLinkState.store_message_res,
    )
    handover = vce_api.add_messages_to_queue

    def store_message_ins(self: Any, message: Any) -> Any:
        out = store_ins(self, message)
        stored.set()
        return out

    def store_message_res(self: Any, message: Any) -> Any:
        out = store_res(self, message)
        REPLIED.set()
        return out

    def add_messages_to_queue(
        state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            stored.clear()  # before draining: a message stored meanwhile re-wakes
            found = False
            for node_id in nodes_mapping:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
                    found = True
            if not found:
                stored.wait(0.1)  # 0.1 s: how soon a stop is noticed

    # Flower's methods are replaced on purpose, and restored on the way out
    InMemoryLinkState.store_message_ins = store_message_ins  # type: ignore[method-assign]
    InMemoryLinkState.store_message_res = store_message_res  # type: ignore[method-assign]
    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield
    finally:
        InMemoryLinkState.store_message_ins = store_ins  # type: ignore[method-assign]
        InMemoryLinkState.store_message_res = store_res  # type: ignore[method-assign]
        vce_api.add_messages_to_queue = handover
