"""Flower internals (:mod:`fedrec.flower.internals`): wired in, drained, undone."""

from __future__ import annotations

import queue
import threading

import pytest

pytest.importorskip("flwr")

from flwr.server.superlink.fleet.vce import vce_api  # noqa: E402
from flwr.server.superlink.linkstate import InMemoryLinkState  # noqa: E402

from fedrec.flower.internals import REPLIED, woken  # noqa: E402


class FakeState:
    """A link state holding each node's pending messages, handed out in order."""

    def __init__(self, pending: dict[int, list[str]]) -> None:
        self.pending = pending

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        out = self.pending[node_id][:limit]
        del self.pending[node_id][:limit]
        return out


def test_stored_messages_and_replies_wake_their_waiters_until_the_exit(monkeypatch):
    stored = []

    def store(self, message):
        stored.append(message)

    monkeypatch.setattr(InMemoryLinkState, "store_message_ins", store)
    monkeypatch.setattr(InMemoryLinkState, "store_message_res", store)
    ins, res = InMemoryLinkState.store_message_ins, InMemoryLinkState.store_message_res
    handover = vce_api.add_messages_to_queue
    REPLIED.clear()
    with woken():
        InMemoryLinkState.store_message_ins(None, "in")  # still stored
        assert not REPLIED.is_set()
        InMemoryLinkState.store_message_res(None, "reply")
        assert REPLIED.is_set() and stored == ["in", "reply"]

        # the handover drains every node's queue, one message per node per pass
        state = FakeState({7: ["a", "b", "c"], 9: ["d"]})
        got: queue.Queue[str] = queue.Queue()
        stop = threading.Event()
        loop = threading.Thread(
            target=vce_api.add_messages_to_queue, args=(state, got, {7: 0, 9: 1}, stop)
        )
        loop.start()
        order = [got.get(timeout=10) for _ in range(4)]
        stop.set()
        loop.join(timeout=10)
        assert not loop.is_alive()
        assert order == ["a", "d", "b", "c"]
    assert InMemoryLinkState.store_message_ins is ins
    assert InMemoryLinkState.store_message_res is res
    assert vce_api.add_messages_to_queue is handover
    REPLIED.clear()


@pytest.mark.parametrize("why", ["version", "env"])
def test_stock_flower_is_left_alone_with_one_warning(why, monkeypatch, caplog):
    import flwr

    from fedrec.flower import internals

    if why == "version":
        monkeypatch.setattr(flwr, "__version__", "1.99.0")
    else:
        monkeypatch.setenv(internals.STOCK_ENV, "1")
    monkeypatch.setattr(internals, "_warned", set())
    ins, handover = InMemoryLinkState.store_message_ins, vce_api.add_messages_to_queue
    for _ in range(2):
        with caplog.at_level("WARNING", logger="fedrec.flower"), woken():
            assert InMemoryLinkState.store_message_ins is ins
            assert vce_api.add_messages_to_queue is handover
    warnings = [
        r.getMessage() for r in caplog.records if "runs stock" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert ("1.99.0" in warnings[0]) if why == "version" else ("STOCK" in warnings[0])
