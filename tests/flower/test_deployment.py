"""A real deployment on loopback: SuperLink + 3 SuperNodes as processes (issue 6).

``flwr run`` submits the fedrec app (``pyproject.toml`` ``[tool.flwr.app]``).
One test kills a SuperNode after the first round: the run must finish with
the other two (``min-nodes = 2``), recording the failure. One stops the run
(``flwr stop``) after its first round and resumes it with ``resume=true``: the
rounds equal the embedded engine's. One runs FELLRec's split on 2 SuperNodes:
its round equals the embedded engine's. Every process is started in its own
session, killed with its tree at the end (the ``deployment`` fixture), and
dies with the test's process however that ends (``test_no_orphans.py``).
"""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("flwr")
OPTS = "min-nodes=2 round-timeout=90.0 node-timeout=120.0"


@pytest.mark.slow
def test_superlink_and_three_supernodes_survive_a_killed_node(
    tmp_path, deployment, demo_config
):
    out = tmp_path / "run"
    nodes = deployment.up(3)
    cfg = demo_config(rounds=3)
    run_id = deployment.submit(f'config="{cfg}" out="{out}" {OPTS}')
    metrics = out / "metrics.jsonl"
    deployment.wait_for(
        lambda: metrics.exists() and metrics.read_text().strip(), 300, "round 0"
    )
    deployment.kill(nodes[2])  # partition 2's SuperNode dies
    deployment.wait_for(
        lambda: (out / "summary.json").exists(), 600, "the end of the run"
    )
    rounds = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[0]["failed_partitions"] == []
    after = rounds[1:]
    assert all(2 in r["failed_partitions"] for r in after[-1:])  # logged, left out
    assert all(
        r["clients"] < r["sampled"] for r in after if 2 in r["failed_partitions"]
    )
    assert all(0 <= r["val_auc"] <= 1 for r in rounds)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["rounds"] == 3
    server_log = deployment.flwr("log", str(run_id), "test", "--show", timeout=60)
    assert "partition 2" in server_log.stdout, server_log.stdout[-2000:]


@pytest.mark.slow
def test_a_stopped_deployment_run_resumes_to_the_embedded_engine_rounds(
    tmp_path, deployment, demo_config
):
    from fedrec.build import build_engine
    from fedrec.config import load_config

    out = tmp_path / "run"
    deployment.up(3)
    cfg = demo_config(rounds=2, extra='\ndtype = "float64"', ldp=False)
    first = deployment.submit(f'config="{cfg}" out="{out}" {OPTS}')
    metrics = out / "metrics.jsonl"
    deployment.wait_for(
        lambda: metrics.exists() and metrics.read_text().strip(), 300, "round 0"
    )
    stop = deployment.flwr("stop", str(first), "test", timeout=60)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    time.sleep(5)  # the ServerApp sees the stop at its next call to the grid
    done = len(metrics.read_text().splitlines())
    assert done < 2 and not (out / "summary.json").exists()
    assert (out / "checkpoint.pt").exists()

    deployment.submit(f'config="{cfg}" out="{out}" resume=true {OPTS}')
    deployment.wait_for(
        lambda: (out / "summary.json").exists(), 600, "the resumed run's end"
    )
    got = [json.loads(x) for x in metrics.read_text().splitlines()]
    eng = build_engine(load_config(cfg))
    want = [eng.run_round(r) for r in range(2)]
    assert [m["round"] for m in got] == [0, 1]
    for g, w in zip(got, want, strict=True):
        for key in ("clients", "train_loss", "val_auc", "test_auc"):
            assert g[key] == pytest.approx(w[key], abs=1e-9), (g["round"], key)


@pytest.mark.slow
def test_the_split_on_real_supernodes_equals_the_embedded_engine(
    tmp_path, deployment, fellrec_raw
):
    """FELLRec's split (a tiny causal LM, ``split_k = 2``) on 2 SuperNodes,
    which serve every message in a fresh ``flwr-clientapp`` process: each
    training step and decoded token restores the node's side from its stores
    (scratch, KV caches), and round 0 equals the embedded engine's (train
    loss, validation and test ranking metrics)."""
    import tomli_w

    from fedrec.build import build_engine
    from fedrec.config import load_config

    raw = fellrec_raw(
        {"kind": "causal-lm", "max_len": 256, "max_new_tokens": 2, "split_k": 2}
    )
    raw["train"] |= {"rounds": 1, "max_rows_per_client": 8}  # one step a client
    cfg, out = tmp_path / "split.toml", tmp_path / "run"
    cfg.write_text(tomli_w.dumps(raw))
    deployment.up(2)
    deployment.submit(f'config="{cfg}" out="{out}" {OPTS}')
    deployment.wait_for(lambda: (out / "summary.json").exists(), 600, "the run's end")
    (got,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    eng = build_engine(load_config(cfg))
    want = eng.run_round(0) | {f"test_{k}": v for k, v in eng.evaluate("test").items()}
    assert got["clients"] == 3 and got["failed_partitions"] == []
    assert got["split_hidden_bytes"] > 0 and got["split_eval_hidden_bytes"] > 0
    # the second token's tail found the caches the first message's process
    # left on the node's disk (a fresh process each): only h_{L−1} of the
    # newest position went down for those rows
    assert got["split_eval_cached_rows"] > 0
    for key in ("train_loss", "val_ndcg@10", "test_ndcg@10", "test_recall@10"):
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
    assert got["test_users"] == want["test_users"] > 0
