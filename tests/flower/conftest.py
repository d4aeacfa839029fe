"""What the Flower tests share: a small synthetic experiment, a deployment."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedrec.procs import kill_tree, start_child

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

FEDPA = {"name": "fedpa", "group_attrs": ["group"], "adapter_lr": 0.01}


@pytest.fixture
def small_raw() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``method -> config``: 30 users, 40 items, 3 rounds of 60% of the clients,
    float64 (so both engines agree to 1e-9)."""

    def raw(method: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "data": {"options": {"n_users": 30, "n_items": 40, "seed": 2}},
            "model": {"dim": 4, "layers": [8, 4]},
            "train": {
                "rounds": 3,
                "lr": 0.05,
                "batch_size": 8,
                "client_fraction": 0.6,
                "dtype": "float64",
            },
            "method": method or FEDPA,
        }

    return raw


@pytest.fixture
def fellrec_raw() -> Callable[..., dict[str, Any]]:
    """``(backbone, **sections) -> config``: FELLRec on 40 synthetic users, 3
    random user-group clients, 2 rounds of a 12-row sample each."""

    def raw(backbone: dict[str, Any], **sections: Any) -> dict[str, Any]:
        return {
            "data": {
                "kind": "synthetic",
                "options": {"n_users": 40, "n_items": 30, "seed": 4},
                "split": "global_temporal",
                "clients": "random",
                "n_clients": 3,
            },
            "backbone": {"path": "tiny", **backbone},
            "train": {
                "rounds": 2,
                "engine": "loop",
                "batch_size": 8,
                "lr": 0.05,
                "max_rows_per_client": 12,
            },
            "eval": {"select_metric": "ndcg@10", "max_samples": 4},
            "method": {"name": "fellrec"},
            **sections,
        }

    return raw


class Deployment:
    """A SuperLink and SuperNodes on loopback, each its own process group.

    ``start`` launches a Flower binary (logs in ``logs/``) with
    :func:`fedrec.procs.start_child`: it and all it starts (SuperExec, apps)
    die with the process that started it, however that ends (issue 27).
    ``flwr`` runs the CLI against this SuperLink (the same way), ``wait_for``
    polls while every process lives. ``kill`` and ``stop_all`` kill a
    process with its tree, by its pid.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.home, self.logs = tmp_path / "flwr", tmp_path / "logs"
        self.home.mkdir()
        self.logs.mkdir()
        self.link = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
            f'address = "127.0.0.1:{self.link}"\ninsecure = true\n'
        )
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "FLWR_HOME": str(self.home),
            "FEDREC_NODE_STORE": str(tmp_path / "stores"),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        p = start_child(
            [str(BIN / name), *args],
            env=self.env,
            cwd=ROOT,
            stdout=open(self.logs / f"{name}-{len(self.procs)}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        return p

    def up(self, nodes: int) -> list[subprocess.Popen]:
        """The SuperLink and ``nodes`` SuperNodes (partitions 0..nodes-1).

        Returns once the SuperLink accepts connections: a ``flwr`` CLI
        started earlier fails at once (the SuperNodes retry).
        """
        link = ["--insecure", "--host", "127.0.0.1", "--port", str(self.link)]
        self.start("flower-superlink", *link)
        supernodes = [
            self.start(
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.link}",
                "--node-config",
                f"partition-id={i} num-partitions={nodes}",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
            )
            for i in range(nodes)
        ]
        self.wait_for(self.link_listens, 120, "the SuperLink's port")
        return supernodes

    def link_listens(self) -> bool:
        """Whether the SuperLink accepts connections (on loopback)."""
        try:
            socket.create_connection(("127.0.0.1", self.link), timeout=1).close()
        except OSError:
            return False
        return True

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The ``flwr`` CLI's result (it too dies with this process)."""
        cmd = [str(BIN / "flwr"), *args]
        p = start_child(
            cmd,
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = p.communicate(timeout=timeout)
        except BaseException:  # a timeout, Ctrl-C
            kill_tree(p)
            raise
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)

    def submit(self, run_config: str) -> int:
        """``flwr run`` of the fedrec app; the run id."""
        done = self.flwr("run", str(ROOT), "test", "--run-config", run_config)
        assert done.returncode == 0, done.stdout + done.stderr
        return int(done.stdout.split("Successfully started run")[1].split()[0])

    def wait_for(self, cond: Callable[[], Any], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            assert not dead, f"{dead} exited while waiting for {what}"
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def kill(self, p: subprocess.Popen) -> None:
        kill_tree(p)
        self.procs.remove(p)

    def stop_all(self) -> None:
        for p in self.procs:
            kill_tree(p)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A loopback deployment whose processes are all killed afterwards."""
    if shutil.which("flower-superlink", path=str(BIN)) is None:
        pytest.skip("no flwr CLI")
    d = Deployment(tmp_path)
    try:
        yield d
    finally:
        d.stop_all()


@pytest.fixture
def demo_config(tmp_path: Path) -> Callable[..., Path]:
    """``rounds -> path``: ``configs/flower-demo.toml`` with 120 users.

    ``ldp=False`` turns its LDP off: LDP noise is drawn from the OS on each
    node, so only a run without it can equal the embedded engine's.
    """

    def write(rounds: int, extra: str = "", ldp: bool = True) -> Path:
        text = (ROOT / "configs" / "flower-demo.toml").read_text()
        text = text.replace("rounds = 5", f"rounds = {rounds}{extra}")
        if not ldp:
            assert "ldp_epsilon = 100.0" in text
            text = text.replace("ldp_epsilon = 100.0", "ldp_epsilon = 0.0")
        cfg = tmp_path / "fedpa.toml"
        cfg.write_text(text.replace("n_users = 300", "n_users = 120"))
        return cfg

    return write
