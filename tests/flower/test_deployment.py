"""A real deployment on loopback: SuperLink + 3 SuperNodes as processes (issue 6).

``flwr run`` submits the fedrec app (``pyproject.toml`` ``[tool.flwr.app]``);
one SuperNode is killed after the first round and the run must finish with the
other two (``min-nodes = 2``), recording the failure. Every process is started
in its own session and killed by process group in ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(cond, timeout: float, what: str, procs) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        dead = [p.args[0] for p in procs if p.poll() is not None]
        assert not dead, f"{dead} exited while waiting for {what}"
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("flower-superlink", path=str(BIN)) is None, reason="no flwr CLI"
)
def test_superlink_and_three_supernodes_survive_a_killed_node(tmp_path):
    home, out, logs = tmp_path / "flwr", tmp_path / "run", tmp_path / "logs"
    home.mkdir()
    logs.mkdir()
    link = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    cfg = tmp_path / "fedpa.toml"
    cfg.write_text(
        (ROOT / "configs" / "flower-demo.toml")
        .read_text()
        .replace("rounds = 5", "rounds = 4")
        .replace("n_users = 300", "n_users = 120")
    )
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "FLWR_HOME": str(home),
        "FEDREC_NODE_STORE": str(tmp_path / "stores"),  # the killed node's stays here
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(
            [str(BIN / name), *args],
            env=env,
            cwd=ROOT,
            stdout=open(logs / f"{name}-{len(procs)}.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its children (SuperExec, apps) share the group
        )
        procs.append(p)
        return p

    try:
        start(
            "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link)
        )
        nodes = [
            start(
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link}",
                "--node-config",
                f"partition-id={i} num-partitions=3",
                "--host",
                "127.0.0.1",
                "--port",
                str(_free_port()),
            )
            for i in range(3)
        ]
        opts = "min-nodes=2 round-timeout=90.0 node-timeout=120.0"
        run_config = f'config="{cfg}" out="{out}" {opts}'
        submit = subprocess.run(
            [str(BIN / "flwr"), "run", str(ROOT), "test", "--run-config", run_config],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        metrics = out / "metrics.jsonl"
        _wait_for(
            lambda: metrics.exists() and metrics.read_text().strip(),
            300,
            "round 0",
            procs,
        )
        os.killpg(nodes[2].pid, signal.SIGKILL)  # partition 2's SuperNode dies
        nodes[2].wait()
        procs.remove(nodes[2])
        _wait_for(
            lambda: (out / "summary.json").exists(), 600, "the end of the run", procs
        )
        rounds = [json.loads(x) for x in metrics.read_text().splitlines()]
        assert [r["round"] for r in rounds] == [0, 1, 2, 3]
        assert rounds[0]["failed_partitions"] == []
        after = rounds[1:]
        assert all(2 in r["failed_partitions"] for r in after[-1:])  # logged, left out
        assert all(
            r["clients"] < r["sampled"] for r in after if 2 in r["failed_partitions"]
        )
        assert all(0 <= r["val_auc"] <= 1 for r in rounds)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["engine"] == "flower" and summary["rounds"] == 4
        run_id = submit.stdout.split("Successfully started run")[1].split()[0]
        server_log = subprocess.run(
            [str(BIN / "flwr"), "log", run_id, "test", "--show"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert "partition 2" in server_log, server_log[-2000:]
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
