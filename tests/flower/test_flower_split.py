"""FELLRec's split over Flower: a config with ``backbone.split_k``, generative
or discriminative (issue 6, item 5)."""

from __future__ import annotations

import pytest

from fedrec.build import build_engine
from fedrec.config import config_from_raw

pytest.importorskip("flwr")
pytest.importorskip("transformers")

GEN = {"kind": "causal-lm", "max_len": 256, "max_new_tokens": 8, "split_k": 2}
ENC = {"kind": "text-encoder", "split_k": 2}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["generative", "discriminative"])
def test_split_config_on_flower_equals_the_embedded_engine(fellrec_raw, kind):
    """3 clients on 2 nodes (node 0 serves two per message), 2 rounds in Ray:
    training steps and the ranking evaluation (decoding; encoding item tables
    and rows) as messages."""
    from fedrec.flower.simulation import run_flower_simulation

    raw = fellrec_raw(GEN if kind == "generative" else ENC)
    flower = run_flower_simulation(config_from_raw(raw), num_nodes=2)
    eng = build_engine(config_from_raw(raw))
    embedded = [eng.run_round(r) for r in range(2)]
    for f, e in zip(flower, embedded, strict=True):
        for key in ("train_loss", "val_ndcg@10", "test_ndcg@10", "test_recall@10"):
            assert f[key] == pytest.approx(e[key], abs=1e-5), (f["round"], key)
        assert f["clients"] == 3 and f["failed_partitions"] == []
        assert f["split_hidden_bytes"] > 0  # training through the split
        assert f["split_eval_hidden_bytes"] > 0  # and decoding


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"split_k_per_client": [1, 2, 1]}, "split_k_per_client"),
        ({"ldp_epsilon": 5.0, "ldp_clip": 1.0}, "LDP"),
    ],
)
def test_what_the_flower_split_cannot_run_is_refused_by_name(
    fellrec_raw, change, named
):
    from fedrec.errors import ConfigError
    from fedrec.flower.split import sides, uses_split

    privacy = "ldp_epsilon" in change
    raw = fellrec_raw(GEN if privacy else {**GEN, **change})
    eng = build_engine(config_from_raw({**raw, "privacy": change} if privacy else raw))
    assert uses_split(eng)
    with pytest.raises(ConfigError, match=named):
        sides(eng)


def test_the_split_sides_hold_every_trainable_parameter_once(fellrec_raw):
    from fedrec.flower.split import sides

    eng = build_engine(config_from_raw(fellrec_raw(GEN)))
    s = sides(eng)
    assert set(s.node) | set(s.server) == set(eng.partition.uploaded)
    assert not set(s.node) & set(s.server)
    # 4 blocks, k = 2: the server holds blocks [2, 3), the node 0, 1 and 3
    assert s.server and all(".layers.2." in n for n in s.server)
    for block in (0, 1, 3):
        assert any(f".layers.{block}." in n for n in s.node)


def test_node_scratch_keeps_clients_and_kinds_apart_and_names_a_gap():
    import torch

    from fedrec.errors import FedrecError
    from fedrec.flower.split import params_of, put, scratch_of

    saved: dict = {}
    put(saved, 1, {"w": torch.ones(2)})
    put(saved, 1, {"w": torch.zeros(2)}, "grad:")
    put(saved, 12, {"w": torch.full((2,), 3.0)})
    assert params_of(saved, 1)["w"].tolist() == [1.0, 1.0]
    assert scratch_of(saved, 1, "grad:")["w"].tolist() == [0.0, 0.0]
    assert params_of(saved, 12)["w"].tolist() == [3.0, 3.0]  # not client 1's
    put(saved, 1, {}, "grad:")  # the head's backward used them
    assert set(saved) == {"1|p:w", "12|p:w"}
    with pytest.raises(FedrecError, match="no state of client 2"):
        params_of(saved, 2)


def test_optimise_carries_adam_state_like_torch_adam():
    """Two steps through ``optimise`` (state handed back and forth) = torch's Adam."""
    import torch
    from torch import nn

    from fedrec.flower.split import optimise

    ours = {"w": nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))}
    ref = nn.Parameter(ours["w"].detach().clone())
    adam = torch.optim.Adam([ref], lr=0.1)
    state: dict = {}
    for g in ([0.5, -1.0], [2.0, 0.25]):
        ours["w"].grad = torch.tensor(g, dtype=torch.float64)
        state = optimise(ours, state, 0.1)
        ref.grad = torch.tensor(g, dtype=torch.float64)
        adam.step()
        torch.testing.assert_close(ours["w"].detach(), ref.detach())
    assert ours["w"].grad is None and int(state["t"]) == 2
    assert set(state) == {"m:w", "v:w", "t"}


def test_decoding_a_token_per_message_pair_equals_kv_cached_greedy(fellrec_raw):
    """Decoding with no cache (the prefix recomputed on both sides each token, as
    a node without its caches does) gives ``SplitModel.greedy``'s tokens with
    KV caches."""
    import torch

    from fedrec.flower.split import sides
    from fedrec.models.split import Message

    eng = build_engine(config_from_raw(fellrec_raw(GEN)))
    s = sides(eng)
    history = eng.task.fed.samples["test"].history[0]
    ids, _ = eng.model.encode(eng.model.prompt_texts([history]))
    want, _ = s.split.greedy(ids, torch.ones_like(ids), 6, kv_cache=True)
    out = ids
    for _ in range(6):
        up = Message.of(s.split.head_forward(out, torch.ones_like(out)).tensors())
        with torch.no_grad():
            down = Message.of(s.split.server(up).tensors(detach=True))
            nxt = s.split.client_tail(down)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
    assert torch.equal(out, want) and out.shape[1] == ids.shape[1] + 6


class _InProcessGrid:
    """A Grid whose nodes are one ClientApp called in this process (node ``p``
    has id ``100 + p``). ``forget``: the message types after which the nodes'
    process ends — the next message finds only what is on the node's disk, as
    in a deployed SuperNode (a fresh process per message). ``lose``: the types
    after which the nodes' decoding caches are gone, from the process and the
    disk. ``dies``: ``{partition: n}``, that node answers its first ``n``
    messages, then every one with an error reply (as the SuperLink does for a
    dead node).
    """

    def __init__(self, app, parts: int, forget=(), dies=None, lose=()) -> None:
        from flwr.app import Context, RecordDict

        self.app, self.forget, self.lose = app, forget, lose
        self.replies, self.sent = {}, 0
        self.dies, self.got = dict(dies or {}), dict.fromkeys(range(parts), 0)
        self.contexts = {
            100 + p: Context(
                1,
                100 + p,
                {"partition-id": p, "num-partitions": parts},
                RecordDict(),
                {},
            )
            for p in range(parts)
        }

    def push_messages(self, msgs):
        import time

        from flwr.app import Error, Message, Metadata

        from fedrec.flower import split_node
        from fedrec.flower.store import NodeStore

        ids = []
        for m in msgs:
            self.sent += 1
            md = Metadata(
                1,
                f"m{self.sent}",
                0,
                m.metadata.dst_node_id,
                "",
                "",
                time.time(),
                1e6,
                m.metadata.message_type,
            )
            incoming = Message(metadata=md, content=m.content)
            p = md.dst_node_id - 100
            self.got[p] += 1
            if self.got[p] > self.dies.get(p, self.got[p]):
                reply = Message(Error(0, "node unavailable"), reply_to=incoming)
            else:
                reply = self.app(incoming, self.contexts[md.dst_node_id])
            self.replies[md.message_id] = reply
            kind = m.metadata.message_type
            if kind in self.forget or kind in self.lose:
                split_node._KV.clear()
                split_node._KV_GEN.clear()
            if kind in self.lose:
                key = str(m.content["config"]["store"]) + "-kv"
                NodeStore.of(self.contexts[md.dst_node_id], p, key).finish()
            ids.append(md.message_id)
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in ids if i in self.replies]


@pytest.fixture
def as_server(tmp_path, monkeypatch):
    """This process as a ServerApp whose nodes are :class:`_InProcessGrid`'s."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setenv("FEDREC_NODE_STORE", str(tmp_path))
    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)  # as a ServerApp has


@pytest.mark.usefixtures("as_server")
def test_decoding_as_messages_equals_one_process_with_or_without_node_caches(
    fellrec_raw, monkeypatch
):
    """The ranking evaluation through the split (2 nodes, in this process) gives
    the embedded engine's metrics when a node keeps its KV caches between
    messages (the server then sends only the newest position down), when every
    message is a fresh process (a deployment: it restores them from the
    node's disk, and still gets only the newest position), when every message
    loses them (it rebuilds them: the whole prefix goes down), and when the
    caches a node reported are gone by its tail message (it asks, and the
    server resends the whole prefixes)."""
    import torch

    from fedrec.flower.client import client_app_for
    from fedrec.flower.growing_log import GrowingLog
    from fedrec.flower.server import Fleet
    from fedrec.flower.split import eval_items, scratch_of, sides
    from fedrec.flower.split_server import evaluate_round
    from fedrec.flower.store import NodeStore
    from fedrec.models.causal_lm import swapped_in

    raw = fellrec_raw(GEN)
    eng = build_engine(config_from_raw(raw))
    eng.run_round(0)  # each client's own trained adapters
    want = {
        f"{sp}_{k}": v for sp in ("val", "test") for k, v in eng.evaluate(sp).items()
    }
    app, opts = client_app_for(raw), {"round-timeout": 60.0}
    eos = eng.model.tok.eos_token_id
    head, tail = "evaluate.split_gen_head", "evaluate.split_gen_tail"
    sent, wire, cached = {}, {}, {}
    modes = {"kept": {}, "fresh": {"forget": (head, tail)}}
    modes |= {"lost": {"lose": (head, tail)}, "lost-between": {"lose": (head,)}}
    appended = []  # (node's log, entry, start, positions) of every append
    append = GrowingLog.append

    def record(log, parts):
        node = str(log.path)
        appended.extend((node, e, at, t.shape[-2]) for e, (at, t) in parts.items())
        append(log, parts)

    monkeypatch.setattr(GrowingLog, "append", record)
    for mode, how in modes.items():
        appended.clear()
        grid = _InProcessGrid(app, 2, **how)
        run = f"k-{mode}"
        fleet = Fleet(grid, {0: 100, 1: 101}, opts, run)
        got = evaluate_round(fleet, eng, {0, 1}, 0)
        for key in ("val_ndcg@10", "val_recall@10", "test_ndcg@10", "test_users"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), (mode, key)
        assert got["test_users"] > 0 and got["split_eval_hidden_bytes"] > 0
        # every row's tokens (kept on its node) are the in-process decoding's
        decoded = set()
        for p in (0, 1):
            store = NodeStore.of(grid.contexts[100 + p], p, f"{run}-split")
            saved, clients = store.load(), list(range(p, eng.fed.n_clients, 2))
            for i, (sp, c, row) in enumerate(eval_items(eng, clients)):
                history = eng.task.fed.samples[sp].history[row]
                ids, mask = eng.model.encode(eng.model.prompt_texts([history]))
                theta = {
                    n: t[0] for n, t in eng.client_params(torch.tensor([c]))[0].items()
                }
                with swapped_in(eng.model, theta):
                    out, _ = sides(eng).split.greedy(
                        ids, mask, eng.model.max_new_tokens
                    )
                want_ids = out[0, ids.shape[1] :].tolist()
                if eos in want_ids:  # the node stops at the end of sequence
                    want_ids = want_ids[: want_ids.index(eos) + 1]
                assert scratch_of(saved, i, "tok:")["ids"][0].tolist() == want_ids
                decoded.add(tuple(want_ids))
        # rows decode different tokens (a constant decoding would not tell a
        # cache rebuilt from the wrong prefix from the right one)
        assert len(decoded) > 2
        if mode in ("kept", "fresh"):  # caches kept or restored, none rebuilt:
            # each entry's positions appended once, in order, from 0
            ends: dict[tuple[str, str], int] = {}
            for path, entry, start, n in appended:
                assert start == ends.get((path, entry), 0), (mode, entry)
                ends[path, entry] = start + n
            assert ends and max(ends.values()) > 2
        sent[mode], wire[mode] = grid.sent, got["split_eval_hidden_bytes"]
        cached[mode] = got["split_eval_cached_rows"]
        assert not grid.replies
    # a message pair per token and node (the last pair ends each node) ...
    assert sent["kept"] == sent["fresh"] == sent["lost"]
    assert sent["kept"] <= 2 * 2 * eng.model.max_new_tokens
    # ... and resent tails where the reported caches were lost
    assert sent["lost-between"] > sent["kept"]
    # kept or restored caches: the newest position goes down; lost: the whole
    # prefix, and a lost reported cache costs both (newest, then the prefix)
    assert wire["fresh"] == wire["kept"] < wire["lost"] / 2
    assert wire["lost-between"] > wire["lost"]
    assert cached["fresh"] == cached["kept"] > 0 == cached["lost"]
    assert torch.is_grad_enabled()


@pytest.mark.usefixtures("as_server")
@pytest.mark.parametrize("dies_after", [1, 2, 4])
@pytest.mark.parametrize("backbone", [{**GEN, "max_new_tokens": 3}, ENC])
def test_a_node_dying_mid_round_is_left_out_as_if_never_there(
    fellrec_raw, monkeypatch, dies_after, backbone
):
    """Node 1 dies after its first 1, 2 or 4 messages of the round's training
    and again of its evaluation (its clients' item tables, head, tail, back,
    decoding or encoding steps; one batch a message, so that a text encoder's
    evaluation takes more than 4): the round completes with node 0's clients,
    the failure recorded, and the server's state and the pooled evaluation
    equal a round in which node 1 was never live — nothing the dead node
    half-did is aggregated or scored."""
    import torch

    from fedrec.flower.client import client_app_for
    from fedrec.flower.server import Fleet
    from fedrec.flower.split_server import evaluate_round, train_round

    monkeypatch.setattr("fedrec.flower.split_server.ENTRIES_PER_MESSAGE", 1)
    raw = fellrec_raw(backbone)
    app, opts, host = client_app_for(raw), {"round-timeout": 60.0}, {0: 100, 1: 101}
    runs = {}
    for live, dies in (({0}, None), ({0, 1}, {1: dies_after})):
        eng = build_engine(config_from_raw(raw))
        key = f"d{dies_after}-{len(live)}-{backbone['kind']}"
        grid = _InProcessGrid(app, 2, dies=dies)
        fleet = Fleet(grid, host, opts, key)
        m = train_round(fleet, eng, live, 0)
        grid.got = dict.fromkeys(grid.got, 0)  # and dies again in the evaluation
        m |= evaluate_round(fleet, eng, live, 0)
        runs[len(live)] = (m, {n: t.clone() for n, t in eng.server.items()})
    (alone, s_alone), (died, s_died) = runs[1], runs[2]
    assert died["failed_partitions"] == [1] == alone["failed_partitions"]
    assert died["clients"] == alone["clients"] == 2  # clients 0 and 2
    assert died["train_loss"] == pytest.approx(alone["train_loss"], abs=1e-9)
    for n in s_alone:
        assert torch.allclose(s_died[n], s_alone[n], atol=1e-7), n
    for key in ("val_ndcg@10", "test_ndcg@10", "test_recall@10", "test_users"):
        assert died[key] == pytest.approx(alone[key], abs=1e-9), key
    assert alone["test_users"] > 0


@pytest.mark.usefixtures("as_server")
@pytest.mark.parametrize("per_message", [1, 8])
def test_the_discriminative_split_as_messages_equals_the_embedded_engine(
    fellrec_raw, monkeypatch, per_message
):
    """A text-encoder config with ``split_k`` on 2 nodes (in this process), 2
    rounds: the item tables, training steps and the evaluation's encodings as
    messages give the embedded engine's train loss, server state and val/test
    metrics — whether a node's batches go one a message pair or 8."""
    import torch

    from fedrec.flower import split
    from fedrec.flower.client import client_app_for
    from fedrec.flower.server import Fleet
    from fedrec.flower.split_server import evaluate_round, train_round

    monkeypatch.setattr("fedrec.flower.split_server.ENTRIES_PER_MESSAGE", per_message)
    raw = fellrec_raw(ENC)
    eng, ref = build_engine(config_from_raw(raw)), build_engine(config_from_raw(raw))
    assert split.uses_split(eng) and not split.generative(eng)
    app, opts, host = client_app_for(raw), {"round-timeout": 60.0}, {0: 100, 1: 101}
    fleet = Fleet(_InProcessGrid(app, 2), host, opts, f"e{per_message}")
    for rnd in range(2):
        got = train_round(fleet, eng, {0, 1}, rnd)
        want = ref.train_round(rnd)
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-6)
        assert got["clients"] == 3 and got["failed_partitions"] == []
        for n, t in ref.server.items():
            assert torch.allclose(eng.server[n], t, atol=1e-6), (rnd, n)
        before = fleet.grid.sent
        got |= evaluate_round(fleet, eng, {0, 1}, rnd)
        sent = fleet.grid.sent - before
        for sp in ("val", "test"):
            for k, v in ref.evaluate(sp).items():
                if isinstance(v, float):
                    assert got[f"{sp}_{k}"] == pytest.approx(v, abs=1e-6), (rnd, sp, k)
        assert got["test_ndcg@10"] > 0 and got["val_ndcg@20"] > 0  # not all misses
        assert got["split_hidden_bytes"] > 0 and got["split_eval_hidden_bytes"] > 0
        assert not fleet.grid.replies

    # the nodes' model holds no server block (a node that ran one would have
    # failed), and still its own layers
    from fedrec.flower.runconfig import engine_for

    node = split.sides(engine_for(raw))
    body = node.split.layers
    assert all(p.numel() == 0 for b in body[2:3] for p in b.parameters())
    assert all(p.numel() > 0 for i in (0, 1, 3) for p in body[i].parameters())
    assert all(p.numel() > 0 for p in split.sides(eng).split.layers[2].parameters())

    # a message pair per node and ``per_message`` batches: its clients' item
    # chunks (30 items: one each) and their val and test rows, 32 a batch
    def batches(c: int) -> int:
        rows = [len(eng.task.eval_rows(sp, c)) for sp in ("val", "test")]
        return 1 + sum(-(-n // eng.task.batch) for n in rows)

    nodes = [sum(batches(c) for c in range(p, 3, 2)) for p in (0, 1)]
    assert sent == sum(2 * -(-n // per_message) for n in nodes)


@pytest.mark.usefixtures("as_server")
@pytest.mark.parametrize("backbone", [GEN, ENC])
def test_the_split_evaluates_the_untrained_model_as_round_minus_one(
    fellrec_raw, backbone
):
    """eval.initial through the split: round -1's messages score the initial
    state exactly as the embedded engine's ``evaluate_initial``."""
    from fedrec.flower.client import client_app_for
    from fedrec.flower.server import Fleet
    from fedrec.flower.split_server import evaluate_round

    ev = {"select_metric": "ndcg@10", "max_samples": 4, "initial": True}
    raw = fellrec_raw(backbone, eval=ev)
    eng, ref = build_engine(config_from_raw(raw)), build_engine(config_from_raw(raw))
    fleet = Fleet(
        _InProcessGrid(client_app_for(raw), 2),
        {0: 100, 1: 101},
        {"round-timeout": 60.0},
        "initial",
    )
    got = evaluate_round(fleet, eng, {0, 1}, -1)
    want = ref.evaluate_initial()
    assert want["round"] == -1 and ref.round == 0
    checked = [
        k
        for k, v in want.items()
        if k.startswith(("val_", "test_")) and isinstance(v, float)
    ]
    assert {"val_ndcg@10", "test_ndcg@10", "test_recall@10"} <= set(checked)
    for k in checked:
        assert got[k] == pytest.approx(want[k], abs=1e-6, nan_ok=True), k
