"""What `fedrec run --engine flower` prints of Flower's log."""

from __future__ import annotations

import io
import logging

import pytest

pytest.importorskip("flwr")


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_flowers_log_is_printed_once_at_info_without_the_run_simulation_notice():
    from flwr.common.logger import console_handler, log, warn_deprecated_feature

    from fedrec.flower.simulation import quiet_flower

    root = logging.getLogger()
    kept, printed = _Kept(), io.StringIO()
    root.addHandler(kept)
    stream = console_handler.setStream(printed)  # Flower's own console output
    try:
        with quiet_flower():
            log(logging.DEBUG, "a debug line")
            log(logging.INFO, "an info line")
            warn_deprecated_feature("The `run_simulation` function is deprecated ...")
            warn_deprecated_feature("another feature")
        log(logging.INFO, "after the simulation")
    finally:
        root.removeHandler(kept)
        console_handler.setStream(stream)
    # inside, nothing of Flower's reached the root logger (printed twice before)
    assert [x for x in kept.lines if "line" in x or "feature" in x] == []
    assert "after the simulation" in kept.lines  # propagates again afterwards
    err = printed.getvalue()
    assert "an info line" in err and "another feature" in err
    assert "a debug line" not in err and "run_simulation" not in err
