"""Flower's simulation woken by its messages instead of by polls.

In flwr 1.41's simulation both ends of a message poll for it:

- a loop hands the ServerApp's new messages to the node workers, polling the
  link state every 100 ms (``vce_api.add_messages_to_queue``), so each
  broadcast waits 0–100 ms before any node sees it;
- the ServerApp sees replies only by polling the grid (``Fleet.collect``, paced
  by :class:`~fedrec.flower.pacing.ReplyPacer`), so a round ends up to a few
  milliseconds after its last reply was stored.

Inside :func:`woken` the link state's ``store_message_ins`` wakes the loop
(which also drains a node's queued messages without waiting) and its
``store_message_res`` sets :data:`REPLIED`, on which the ServerApp's reply
wait sleeps. A deployment's ServerApp talks to the SuperLink over the network,
where nothing sets :data:`REPLIED`: there the wait is the pacer's sleep.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

#: set when a simulation's link state stores a reply (never in a deployment)
REPLIED = threading.Event()


@contextlib.contextmanager
def woken() -> Iterator[None]:
    """Within: Flower's simulation hands over messages and replies at once."""
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
