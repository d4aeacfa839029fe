"""Nothing outlives its parent (issue 27): a SIGKILLed parent leaves no Flower process.

A helper process (this file run as a script) starts the loopback deployment
of the ``deployment`` fixture (a SuperLink and 2 SuperNodes, each by
:func:`fedrec.procs.start_child`), waits until it is up (and, ``mid-run``,
until a submitted run has its ``flwr-serverapp`` and ``flwr-clientapp``
processes), prints the pids of its process tree and sleeps. The test kills
it with ``SIGKILL`` (no ``atexit``, no ``finally``): within 10 s no process
of that tree may run — the supervisors of the SuperLink and SuperNodes get
their parent-death signal and kill their trees (SuperExecs, apps), adopted
orphans included. Nor may any other process whose environment names the
deployment's ``FLWR_HOME`` (one started after the tree was listed).
Whatever is left is killed, by recorded pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("flwr")
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
GONE_WITHIN = 10.0  # seconds after the SIGKILL


def _stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from its state on (state, ppid, …), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot): tells a reused pid apart."""
    st = _stat(pid)
    return st[19] if st else None


def _running(pid: int, started: str) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in "ZX" and st[19] == started


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    # "python [-P] /…/bin/flower-superlink …": the script's name
    if b"python" in argv[0]:
        argv = [a for a in argv[1:] if not a.startswith(b"-")] or argv
    return argv[0].decode(errors="replace").rsplit("/", 1)[-1]


def _with_env(key: str, value: str) -> list[int]:
    """Pids of the processes whose environment has ``key=value``."""
    want, found = f"{key}={value}".encode(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if want in f.read().split(b"\0"):
                        found.append(int(entry))
    return found


def _helper(tmp: Path, mid_run: bool) -> None:
    """The parent to kill: up a deployment, print its tree, sleep."""
    from conftest import ROOT, Deployment  # sys.path[0] is this directory
    from fedrec.procs import descendants

    d = Deployment(tmp)
    d.up(2)

    def tree() -> dict[int, str]:
        return {q: _name(q) for q in descendants(os.getpid())}

    def wait(cond: Callable[[], bool], what: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not cond():
            dead = [p.args[0] for p in d.procs if p.poll() is not None]
            if dead or time.monotonic() > end:
                sys.exit(f"helper: {dead or 'timed out'} waiting for {what}")
            time.sleep(0.2)

    def superexecs_up() -> bool:  # one per SuperLink / SuperNode, past its imports
        logs = [f.read_text() for f in d.logs.glob("*.log")]
        return (
            list(tree().values()).count("flower-superexec") == len(d.procs)
            and len(logs) == len(d.procs)
            and all("Starting Flower SuperExec" in text for text in logs)
        )

    wait(superexecs_up, "the SuperExecs", 60)
    if mid_run:
        text = (ROOT / "configs" / "flower-demo.toml").read_text()
        text = text.replace("rounds = 5", "rounds = 100")
        cfg = tmp / "long.toml"
        cfg.write_text(text.replace("n_users = 300", "n_users = 120"))
        d.submit(f'config="{cfg}" out="{tmp / "run"}" min-nodes=2')
        wait(lambda: "flwr-clientapp" in tree().values(), "a ClientApp", 120)
    started = [p.pid for p in d.procs]
    print(json.dumps({"started": started, "tree": tree()}), flush=True)
    time.sleep(600)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "mid_run",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["idle", "mid-run"],
)
def test_a_sigkilled_parent_leaves_no_flower_process(tmp_path: Path, mid_run: bool):
    if shutil.which("flower-superlink", path=str(BIN)) is None:
        pytest.skip("no flwr CLI")
    from fedrec.procs import descendants, start_child

    err = tmp_path / "helper.err"
    with err.open("w") as stderr:  # the helper too dies with this process
        helper = start_child(
            [sys.executable, __file__, str(tmp_path)]
            + (["--mid-run"] if mid_run else []),
            supervise=False,  # helper.pid: the helper's own, to SIGKILL
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: lines.put(helper.stdout.readline()), daemon=True
    ).start()
    watched: dict[int, tuple[str, str]] = {}  # pid -> (start time, name)

    def watch(pids: dict[int, str]) -> None:
        for pid, name in pids.items():
            started = _start_time(pid)
            if started is not None:
                watched.setdefault(pid, (started, name))

    home = str(tmp_path / "flwr")
    try:
        try:
            line = lines.get(timeout=180)
        except queue.Empty:
            line = ""
        assert line, f"the helper printed no pids:\n{err.read_text()}"
        report = json.loads(line)
        tree = {int(q): name for q, name in report["tree"].items()}
        assert set(report["started"]) <= set(tree)
        names = sorted(tree.values())
        assert names.count("flower-superlink") == 1, names
        assert names.count("flower-supernode") == 2, names
        assert names.count("flower-superexec") == 3, names
        if mid_run:
            assert "flwr-clientapp" in names and "flwr-serverapp" in names, names
        # also what the tree holds now, by parent chain and by environment
        watch(tree)
        watch({q: _name(q) for q in descendants(helper.pid)})
        watch({q: _name(q) for q in _with_env("FLWR_HOME", home)})

        os.kill(helper.pid, signal.SIGKILL)
        helper.wait()
        t0 = time.monotonic()
        left, gone = dict(watched), {}
        while left and time.monotonic() - t0 < GONE_WITHIN:
            time.sleep(0.1)
            watch({q: _name(q) for q in _with_env("FLWR_HOME", home)})
            left = {q: w for q, w in watched.items() if _running(q, w[0])}
            for q in watched.keys() - left.keys() - gone.keys():
                gone[q] = time.monotonic() - t0
        print(  # with -s: how soon each went
            "gone after the SIGKILL: "
            + ", ".join(f"{watched[q][1]} {s:.1f}s" for q, s in gone.items())
        )
        assert not left, (
            f"still running {GONE_WITHIN:.0f}s after the parent's SIGKILL: "
            + ", ".join(f"{q} {name}" for q, (_, name) in left.items())
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper.pid, signal.SIGKILL)
        helper.wait()
        helper.stdout.close()
        watch({q: _name(q) for q in _with_env("FLWR_HOME", home)})
        for pid, (started, _) in watched.items():
            if _running(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    _helper(Path(sys.argv[1]), "--mid-run" in sys.argv[2:])
