"""The append-only log of a node's decoding caches."""

from __future__ import annotations

import logging
import os

import torch

from fedrec.flower.growing_log import GrowingLog
from fedrec.flower.records import pack


def _kv(n: int, seed: int = 0) -> torch.Tensor:
    """A cache layer's keys: (1, heads, positions, head_dim)."""
    return torch.randn(1, 2, n, 3, generator=torch.Generator().manual_seed(seed))


def test_appending_one_position_a_message_writes_each_position_once(tmp_path):
    log, whole = GrowingLog(tmp_path), _kv(12)
    log.append({"a": (0, whole[..., :5, :])})  # the prefix
    want_size = 24 + 8 + len(pack({"a@0": whole[..., :5, :]}))
    for t in range(5, 12):  # then one position per message
        log.append({"a": (t, whole[..., t : t + 1, :])})
        want_size += 8 + len(pack({f"a@{t}": whole[..., t : t + 1, :]}))
        assert torch.equal(log.read()["a"], whole[..., : t + 1, :])
    # linear in the positions: a snapshot a message would have written
    # 5 + 6 + ... + 12 positions, here each of the 12 once
    assert os.path.getsize(log.path) == want_size


def test_a_rebuilt_entry_replaces_and_a_gap_drops_it(tmp_path):
    log, a, b = GrowingLog(tmp_path), _kv(4, 1), _kv(6, 2)
    log.append({"a": (0, a[..., :3, :]), "b": (0, b[..., :2, :])})
    log.append({"a": (0, a), "b": (3, b[..., 3:, :])})  # a rebuilt; b skips 2
    got = log.read()
    assert torch.equal(got["a"], a) and "b" not in got
    log.append({"b": (0, b)})  # rebuilt from the prefix: back
    assert torch.equal(log.read()["b"], b)


def test_a_kill_mid_append_leaves_the_last_append_and_reset_empties(tmp_path):
    log, a = GrowingLog(tmp_path), _kv(3)
    assert log.version() == (0, 0) and log.read() == {}
    log.append({"a": (0, a[..., :2, :])})
    v1 = log.version()
    with open(log.path, "ab") as f:  # a batch written, its header never
        f.write(b"\x40" + b"\xff" * 300)
    assert log.version() == v1
    assert torch.equal(log.read()["a"], a[..., :2, :])
    log.append({"a": (2, a[..., 2:, :])})  # written over the dead bytes
    assert torch.equal(log.read()["a"], a)
    log.reset()
    assert log.read() == {} and log.version() not in ((0, 0), v1)
    assert os.path.getsize(log.path) == 24


def test_a_removed_log_reads_empty_and_a_damaged_one_warns(tmp_path, caplog):
    log = GrowingLog(tmp_path / "kv")
    log.append({"a": (0, _kv(2))})
    old = log.version()
    os.remove(log.path)
    assert log.version() == (0, 0) and log.read() == {}
    log.append({"a": (0, _kv(2))})  # as many commits, but another file
    assert log.version()[1] == old[1] == 1 and log.version() != old
    with open(log.path, "r+b") as f:  # a body that is not a packed batch
        f.seek(32)
        f.write(b"\xff" * 8)
    with caplog.at_level(logging.WARNING, logger="fedrec.flower"):
        assert log.read() == {}
    assert "log.bin is unreadable" in caplog.text


def test_an_append_of_more_entries_than_one_write_takes(tmp_path):
    """A node's caches: rows × layers × (k, v) entries, two buffers each."""
    log = GrowingLog(tmp_path)
    parts = {f"r{i}": (0, _kv(1, i)) for i in range(1200)}
    log.append(parts)
    got = log.read()
    assert len(got) == 1200 and torch.equal(got["r777"], _kv(1, 777))
