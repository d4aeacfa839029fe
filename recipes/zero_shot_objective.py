"""The discriminative training objective at zero shot (MiniLM, ML-100K; ours).

    .venv/bin/python recipes/zero_shot_objective.py --samples 256

What FELLRec's discriminative loss sees before any training, on a seeded sample
of training samples (global temporal 80/10/10, window 10): for item text
``title`` and ``"title (year) genres"`` and each τ, the cross-entropy of
``cos/τ`` over every item and with the sample's seen items masked (the target
kept), and the softmax mass on the seen items. ``uniform_masked_ce`` is the
mean ``log(I − |seen without the target|)``, the loss of a model that knows nothing.
Writes ``results/fellrec-objective/zero_shot.json`` (docs/fellrec.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedrec.data import global_temporal_split, load_recbole
from fedrec.data.sequences import build_samples
from fedrec.models.text_encoder import TextSeqRecommender, load_encoder

TAUS = (0.05, 0.1, 0.2, 0.5)


def main() -> None:
    """Measure every (text, τ) pair and write the JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=".cache/ml-100k")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--out", default="results/fellrec-objective")
    args = p.parse_args()
    data = load_recbole(args.data)
    s = build_samples(data, global_temporal_split(data, 0.1, 0.1), 10)["train"]
    rows = np.random.default_rng(0).choice(len(s), args.samples, replace=False)
    target = torch.tensor([int(s.targets[r][0]) for r in rows])  # (n,)
    seen = torch.zeros(len(rows), data.n_items, dtype=torch.bool)  # (n, I)
    for k, r in enumerate(rows):
        seen[k, s.seen[r]] = True
    seen[torch.arange(len(rows)), target] = False  # the target is never masked
    uniform = float(np.mean([math.log(data.n_items - int(h.sum())) for h in seen]))
    out: dict = {
        "command": f"python recipes/zero_shot_objective.py --samples {args.samples}",
        "samples": len(rows),
        "items": data.n_items,
        "uniform_masked_ce": uniform,
    }
    texts = {"title": data.titles, "title_year_genres": data.item_text}
    for name, items in texts.items():
        assert items is not None
        enc, tok = load_encoder("minilm", items)
        model = TextSeqRecommender(enc, tok, items)
        with torch.no_grad():
            table = model.encode_items(dict(model.named_parameters()))  # (I, d)
            ids, am = model.sequence_tokens([s.history[r] for r in rows])
            cos = model(ids, am) @ table.T  # (n, I)
        out[name] = {}
        for tau in TAUS:
            z = cos / tau
            out[name][str(tau)] = {
                "ce": F.cross_entropy(z, target).item(),
                "masked_ce": F.cross_entropy(
                    z.masked_fill(seen, -math.inf), target
                ).item(),
                "history_mass": (torch.softmax(z, 1) * seen).sum(1).mean().item(),
            }
    path = Path(args.out) / "zero_shot.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
