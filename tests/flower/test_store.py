"""A node's private store, the packed records, and the by-reference ClientApp."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("flwr")

TENSORS = {
    "w": torch.randn(3, 5),
    "ids": torch.arange(7),
    "flag": torch.tensor(True),
    "empty": torch.zeros(0, 3),
    "t": torch.randn(2, 3, dtype=torch.float64).T,  # not contiguous
    "half": torch.randn(5).to(torch.bfloat16),
    "expanded": torch.tensor(3).expand(1),  # stride 0, size 1: "contiguous"
    "rows": torch.randn(4, 1).expand(4, 3),
    "none": torch.empty(0, dtype=torch.long).as_strided((0,), (0,)),
}


def _same(a, b):
    assert list(a) == list(b)
    for n in a:
        assert a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]), n


def test_packed_record_round_trips_every_dtype_and_names_without_decoding():
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from fedrec.flower.records import PACKED, arrays, from_record, names, to_record

    rec = to_record(TENSORS)
    assert list(rec) == [PACKED]  # one Array on the wire
    _same(from_record(rec), TENSORS)
    assert names(rec) == list(TENSORS)
    got = from_record(rec)["w"]
    got += 1  # writable, and a copy
    assert not torch.equal(got, TENSORS["w"])
    native = ArrayRecord({"x": Array(np.arange(3.0))})  # Flower's own layout
    assert names(native) == ["x"]
    assert np.array_equal(arrays(native)["x"], np.arange(3.0))
    assert np.array_equal(arrays(to_record({"y": np.ones(2)}))["y"], np.ones(2))


def test_store_saves_loads_and_a_kill_mid_save_leaves_the_last_save(tmp_path):
    from fedrec.flower import store as S

    st = S.NodeStore(tmp_path / "node", keep=True)
    assert st.load() is None
    st.save(TENSORS)
    _same(st.load(), TENSORS)
    second = {"w": torch.ones(2, 2)}
    st.save(second)
    _same(st.load(), second)

    real = os.pwrite

    def killed(fd, data, offset):  # the body lands, the header never does
        if offset == 0:
            raise KeyboardInterrupt("killed")
        return real(fd, data, offset)

    S._CACHE.clear()
    os.pwrite = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            st.save({"w": torch.zeros(9)})
    finally:
        os.pwrite = real
    _same(st.load(), second)  # the older file was overwritten, not the newest
    st.save({"w": torch.zeros(9)})
    _same(st.load(), {"w": torch.zeros(9)})


def test_store_sees_another_process_save_and_names_a_corrupt_file(tmp_path):
    from fedrec.errors import FedrecError
    from fedrec.flower.store import _CACHE, NodeStore

    st = NodeStore(tmp_path / "node", keep=True)
    st.save({"w": torch.zeros(3)})
    assert torch.equal(st.load()["w"], torch.zeros(3))  # now cached here
    code = (
        "import torch, pathlib; from fedrec.flower.store import NodeStore; "
        f"NodeStore(pathlib.Path({str(tmp_path / 'node')!r}), True)"
        ".save({'w': torch.full((3,), 7.0)})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert torch.equal(st.load()["w"], torch.full((3,), 7.0))

    newest = max(st.files, key=lambda p: p.read_bytes()[:8])
    with open(newest, "r+b") as f:  # cut the newest file short
        f.truncate(40)
    _CACHE.clear()  # as a fresh process would
    with pytest.raises(FedrecError, match="private-.\\.bin is unreadable"):
        NodeStore(tmp_path / "node", keep=True).load()


def test_temporary_store_is_removed_at_finish_and_a_chosen_one_kept(tmp_path):
    from fedrec.flower.store import NodeStore

    class Ctx:
        run_id = 42
        node_config = {"partition-id": 1, "num-partitions": 2}

    os.environ["FEDREC_NODE_STORE"] = str(tmp_path / "tmp")
    try:
        temp = NodeStore.of(Ctx(), 1)
    finally:
        del os.environ["FEDREC_NODE_STORE"]
    assert temp.root == tmp_path / "tmp" / "fedrec-nodes" / "run-42-p1"
    os.environ["FEDREC_NODE_STORE"] = str(tmp_path / "tmp")
    try:  # a run's other stores (the split's scratch) are their own
        scratch = NodeStore.of(Ctx(), 1, "", "-split")
    finally:
        del os.environ["FEDREC_NODE_STORE"]
    assert scratch.root == temp.root.parent / "run-42-split-p1"
    temp.save({"w": torch.ones(1)})
    temp.finish()
    assert not temp.root.exists()

    Ctx.node_config = {**Ctx.node_config, "store": str(tmp_path / "mine")}
    kept = NodeStore.of(Ctx(), 1)
    kept.save({"w": torch.ones(1)})
    kept.finish()
    assert kept.root.exists() and kept.root.parent == tmp_path / "mine"


def test_client_app_pickles_as_a_reference_to_its_factory():
    import cloudpickle

    from fedrec.flower.client import client_app_for

    raw = {"train": {"rounds": 1}}
    app = client_app_for(raw)
    blob = cloudpickle.dumps(app)
    assert len(blob) < 500  # the factory's name and the config, no closures
    assert cloudpickle.loads(blob) is app  # same process: the cached app


def test_round_tagged_saves_let_a_resumed_round_read_the_older_file(tmp_path):
    """Nodes saved round 2 (generation 3), the server died before recording it:
    round 2 again reads generation 2 and overwrites the stale generation 3."""
    from fedrec.flower import store as S

    st = S.NodeStore(tmp_path / "node", keep=True)
    assert st.load(at_most=0) is None  # round 0: nothing saved, the model
    for rnd in range(3):
        st.save({"w": torch.full((2,), float(rnd))}, generation=rnd + 1)
    assert st.load()["w"].tolist() == [2.0, 2.0]  # newest: round 2's
    assert st.load(at_most=2)["w"].tolist() == [1.0, 1.0]  # round 2 again
    st.save({"w": torch.full((2,), 7.0)}, generation=3)  # the stale one goes
    assert [S._HEADER.unpack(f.read_bytes()[:16])[0] for f in st.files] == [3, 2]
    assert st.load()["w"].tolist() == [7.0, 7.0]
    assert st.load(at_most=2)["w"].tolist() == [1.0, 1.0]
    assert st.load(at_most=1) is None  # round 0's save was overwritten


@pytest.mark.parametrize("hosted", ["all", "some"])
def test_a_train_message_keeps_exactly_the_engines_rows_on_the_node(
    tmp_path, monkeypatch, small_raw, hosted
):
    """A node (partition 1 of 3) trains the clients a message names: its store
    then holds the embedded engine's ``client_update`` private rows for them
    and its older rows for the others, and the reply carries that update's
    uploads. ``all``: every hosted client in row order (the node hands over
    its whole bank); ``some``: rows 0, 2 and 3."""
    from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

    from fedrec.build import build_engine
    from fedrec.config import config_from_raw
    from fedrec.flower.client import client_app_for
    from fedrec.flower.records import from_record, to_record
    from fedrec.flower.store import NodeStore

    monkeypatch.setenv("FEDREC_NODE_STORE", str(tmp_path))
    raw = small_raw()
    eng = build_engine(config_from_raw(raw))
    p, parts = 1, 3
    rows = torch.arange(p, eng.fed.n_clients, parts)  # the node's, in row order
    before = eng.store.get(rows)
    for n in before:  # distinct older rows, so a row left alone is seen
        before[n] += torch.arange(len(rows), dtype=before[n].dtype).view(
            -1, *[1] * (before[n].dim() - 1)
        )
    ctx = Context(
        1, 100 + p, {"partition-id": p, "num-partitions": parts}, RecordDict(), {}
    )
    store = NodeStore.of(ctx, p, "t")
    store.save(before, generation=1)
    pick = torch.arange(len(rows)) if hosted == "all" else torch.tensor([0, 2, 3])
    clients = rows[pick]
    received = eng.strategy.broadcast(
        eng.server,
        eng.partition,
        clients,
        {a: g[clients] for a, g in eng.groups.items()},
    )
    cfg = ConfigRecord({"round": 1, "clients": clients.tolist(), "store": "t"})
    content = RecordDict({"received": to_record(received), "config": cfg})
    md = Metadata(1, "m1", 0, 100 + p, "", "", 0.0, 1e6, "train")
    reply = client_app_for(raw)(Message(metadata=md, content=content), ctx)

    mine = {n: b[pick] for n, b in before.items()}
    uploads, private, _ = eng.client_update(1, clients, received, mine, mods=False)
    got = store.load()
    assert store.newest() == 2
    for n, b in before.items():
        want = b.clone()
        want[pick] = private[n]
        assert torch.allclose(got[n], want, atol=1e-12), n
        assert not torch.allclose(private[n], b[pick]), n  # training moved them
    sent = from_record(reply.content["uploads"])
    assert list(sent) == list(uploads)
    for n in uploads:
        assert torch.allclose(sent[n], uploads[n], atol=1e-12), n


def test_write_parts_resumes_partial_writes_and_splits_long_buffer_lists(
    tmp_path, monkeypatch
):
    """More buffers than one ``pwritev`` takes, each call writing at most 7
    bytes: the file holds the parts back to back all the same; and a store
    saves more tensors than ``IOV_MAX`` buffers (the real limit)."""
    from fedrec.flower import records
    from fedrec.flower.store import _CACHE, NodeStore

    parts = [bytes([i]) * (i % 5) for i in range(40)]  # some empty
    real, calls = os.pwritev, []

    def stingy(fd, buffers, offset):
        calls.append(len(buffers))
        assert len(buffers) <= 3
        return real(fd, [b"".join(bytes(b) for b in buffers)[:7]], offset)

    monkeypatch.setattr(records, "_IOV_MAX", 3)
    monkeypatch.setattr(records.os, "pwritev", stingy)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert records.write_parts(fd, parts, 5) == sum(map(len, parts))
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(5) + b"".join(parts)
    assert len(calls) >= sum(map(len, parts)) / 7
    monkeypatch.undo()

    many = {f"t{i}": torch.full((2,), float(i)) for i in range(1500)}
    st = NodeStore(tmp_path / "node", keep=True)
    st.save(many, generation=1)
    _CACHE.clear()  # read from the disk
    _same(st.load(), many)
