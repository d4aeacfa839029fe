"""The client mods at the wire: privacy audit and LDP (issue 6)."""

from __future__ import annotations

import pytest
import torch

from fedrec.build import build_engine
from fedrec.config import config_from_raw
from fedrec.fl.partition import PRIVATE

pytest.importorskip("flwr")

RAW = {
    "data": {"options": {"n_users": 30, "n_items": 40, "seed": 2}},
    "model": {"dim": 4, "layers": [8, 4]},
    "train": {"rounds": 2, "lr": 0.05, "batch_size": 8, "dtype": "float64"},
    "method": {"name": "fedpa", "group_attrs": ["group"], "adapter_lr": 0.01},
    "privacy": {"ldp_epsilon": 5.0, "ldp_clip": 1.0},
}


@pytest.fixture
def identity():
    """Flower messages need a task identity (set by Flower inside a run)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _train_message(eng, clients, received):
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedrec.flower.records import to_record

    cfg = ConfigRecord({"round": 0, "clients": clients.tolist()})
    content = RecordDict({"received": to_record(received), "config": cfg})
    return Message(content, 7, "train")


def _reply(msg, uploads):
    from flwr.app import Message, RecordDict

    from fedrec.flower.records import to_record

    return Message(RecordDict({"uploads": to_record(uploads)}), reply_to=msg)


class _Ctx:
    node_id = 7


def test_wire_audit_refuses_a_private_tensor_and_passes_shared_ones(identity):
    from fedrec.flower.mods import AUDIT_ERROR, wire_audit
    from fedrec.flower.records import names

    eng = build_engine(config_from_raw({**RAW, "privacy": {}}))
    private = eng.partition.names(PRIVATE)
    assert private
    clients = torch.arange(3)
    received, held = eng.client_params(clients)
    msg = _train_message(eng, clients, received)
    uploads, kept, _ = eng.client_update(0, clients, received, held)
    audit = wire_audit(lambda ctx: set(eng.partition.uploaded))

    ok = audit(msg, _Ctx(), lambda m, c: _reply(m, uploads))
    assert not ok.has_error() and set(names(ok.content["uploads"])) == set(uploads)

    leaky = {**uploads, private[0]: kept[private[0]]}
    refused = audit(msg, _Ctx(), lambda m, c: _reply(m, leaky))
    assert refused.has_error() and refused.error.code == AUDIT_ERROR
    assert private[0] in refused.error.reason
    assert not refused.has_content()  # nothing of the reply is sent


def test_wire_audit_passes_hidden_states_and_refuses_logits(identity):
    """A split node may send ``<client>/<field>`` hidden states, nothing else."""
    from flwr.app import Message, RecordDict

    from fedrec.flower.mods import AUDIT_ERROR, wire_audit
    from fedrec.flower.records import to_record

    audit = wire_audit(lambda ctx: set())
    msg = _train_message(None, torch.arange(1), {})
    h = torch.ones(1, 3, 4)

    def send(hidden):
        content = RecordDict({"hidden": to_record(hidden)})
        return audit(msg, _Ctx(), lambda m, c: Message(content, reply_to=m))

    fine = {"0/tensor": h, "0/attention_mask": h[..., 0], "12/tensor": h}
    assert not send(fine).has_error()
    for bad in ("0/logits", "tensor", "x/tensor"):
        refused = send({**fine, bad: h})
        assert refused.has_error() and refused.error.code == AUDIT_ERROR
        assert bad in refused.error.reason


def test_ldp_client_mod_releases_exactly_the_embedded_engines_upload(identity):
    from fedrec.flower.mods import upload_mods
    from fedrec.flower.records import from_record

    eng = build_engine(config_from_raw(RAW))
    clients = torch.tensor([0, 4, 9])
    received, held = eng.client_params(clients)
    embedded, _, _ = eng.client_update(0, clients, received, held)
    raw_up, _, _ = eng.client_update(0, clients, received, held, mods=False)
    msg = _train_message(eng, clients, received)
    reply = upload_mods(lambda ctx: eng)(msg, _Ctx(), lambda m, c: _reply(m, raw_up))
    released = from_record(reply.content["uploads"])
    assert set(released) == set(embedded)
    for n, t in embedded.items():
        torch.testing.assert_close(released[n], t, rtol=0, atol=0)
        assert not torch.equal(released[n], raw_up[n])  # the noise is there
