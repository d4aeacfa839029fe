"""A node's engine: built once per process and config, out of the collector's sight."""

from __future__ import annotations

import gc

from fedrec.flower.runconfig import engine_for


def test_a_node_builds_its_engine_once_and_freezes_it(small_raw):
    raw = small_raw()
    eng = engine_for(raw)
    assert engine_for({**raw}) is eng  # same config, same engine
    # frozen: in no generation a collection walks
    assert all(obj is not eng for obj in gc.get_objects())
    fresh = object.__new__(type(eng))  # a new object of the class is tracked
    assert any(obj is fresh for obj in gc.get_objects())
