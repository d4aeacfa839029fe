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
# the embedded engine's noise, repeatable (never on a Flower app: see below)
REPRODUCIBLE = {"ldp_epsilon": 5.0, "ldp_clip": 1.0, "reproducible_noise": True}


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
    """The client mod is the engine's mechanism (shown with repeatable noise)."""
    from fedrec.flower.mods import upload_mods
    from fedrec.flower.records import from_record

    eng = build_engine(config_from_raw({**RAW, "privacy": REPRODUCIBLE}))
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


def test_ldp_client_mod_draws_new_noise_for_every_message(identity):
    from fedrec.flower.mods import upload_mods
    from fedrec.flower.records import from_record

    eng = build_engine(config_from_raw(RAW))
    clients = torch.tensor([0, 4])
    received, held = eng.client_params(clients)
    raw_up, _, _ = eng.client_update(0, clients, received, held, mods=False)
    msg = _train_message(eng, clients, received)
    mod = upload_mods(lambda ctx: eng)
    a, b = (
        from_record(mod(msg, _Ctx(), lambda m, c: _reply(m, raw_up)).content["uploads"])
        for _ in range(2)
    )
    for n in a:
        assert not torch.equal(a[n], b[n]), n


def test_flower_refuses_reproducible_noise():
    from fedrec.errors import ConfigError
    from fedrec.flower.runconfig import engine_for
    from fedrec.flower.simulation import run_flower_simulation

    raw = config_from_raw({**RAW, "privacy": REPRODUCIBLE}).to_dict()
    with pytest.raises(ConfigError, match="reproducible_noise"):
        engine_for(raw)  # a node
    with pytest.raises(ConfigError, match="reproducible_noise"):
        run_flower_simulation(config_from_raw(raw), num_nodes=1)


def _stats_reply(audit, stats):
    """The audit's verdict on an evaluate reply whose ``stats`` record is ``stats``."""
    from flwr.app import Message, RecordDict

    from fedrec.flower.records import to_record

    msg = _train_message(None, torch.arange(1), {})
    content = RecordDict({"stats": to_record(stats)})
    return audit(msg, _Ctx(), lambda m, c: Message(content, reply_to=m))


def test_wire_audit_passes_the_tasks_stats_and_refuses_rows(identity):
    """Fixed-shape statistics pass; a label array, or a row-shaped entry, does not."""
    from fedrec.flower.mods import AUDIT_ERROR, wire_audit

    eng = build_engine(config_from_raw({**RAW, "privacy": {}}))
    eng.evaluate("test")
    rows = eng.last_rows["test"]  # the node's per-row scores
    stats = {f"test/{k}": v for k, v in eng.task.stats(rows).items()}
    audit = wire_audit(lambda ctx: set(), lambda ctx: eng.task.stat_shapes())
    assert not _stats_reply(audit, stats).has_error()

    labels = torch.as_tensor(rows["labels"])
    bad = {
        "test/labels": labels,  # a row array under a name not in the schema
        "test/users": torch.as_tensor(rows["users"]),
        "test/hist": torch.zeros(2, len(labels)),  # a row-dependent shape
        "test/logloss": torch.as_tensor(rows["probs"]),
        "ghost/gauc": torch.zeros(2),  # not a split
    }
    for name, value in bad.items():
        refused = _stats_reply(audit, {**stats, name: value})
        assert refused.has_error() and refused.error.code == AUDIT_ERROR
        assert name in refused.error.reason
        assert not refused.has_content()
    # an app without a schema sends no statistics at all
    refused = _stats_reply(wire_audit(lambda ctx: set()), stats)
    assert refused.has_error() and "test/hist" in refused.error.reason


def test_wire_audit_refuses_a_scores_record(identity):
    """Per-row scores are not a record a node may send, whatever they hold."""
    from flwr.app import Message, RecordDict

    from fedrec.flower.mods import AUDIT_ERROR, wire_audit
    from fedrec.flower.records import to_record

    audit = wire_audit(lambda ctx: set(), lambda ctx: {"hist": (2, 3)})
    msg = _train_message(None, torch.arange(1), {})
    content = RecordDict({"scores": to_record({"test/labels": torch.ones(5)})})
    refused = audit(msg, _Ctx(), lambda m, c: Message(content, reply_to=m))
    assert refused.has_error() and refused.error.code == AUDIT_ERROR
    assert "'scores'" in refused.error.reason
