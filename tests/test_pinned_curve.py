"""A seeded tiny run's whole curve, pinned (torchtune-style regression test).

The numbers were produced by this code at the commit that added the test and
are checked to rtol 1e-5; an intended change of numerics must update them in
the same commit, saying why. The stacked-vs-loop test is what shows they are
right; this one shows they do not drift.
"""

from __future__ import annotations

import pytest

from fedrec.build import build_engine
from fedrec.config import config_from_raw


def _history():
    cfg = config_from_raw(
        {
            "data": {"options": {"n_users": 24, "n_items": 30, "seed": 7}},
            "model": {"dim": 4, "layers": [8, 4]},
            "train": {"rounds": 4, "batch_size": 16, "lr": 0.05, "dtype": "float64"},
            "method": {"name": "fedavg"},
        }
    )
    eng = build_engine(cfg)
    return [eng.run_round(r) for r in range(cfg.train.rounds)]


def test_pinned_fedavg_curve():
    hist = _history()
    got = [(h["train_loss"], h["val_auc"], h["test_logloss"]) for h in hist]
    for (loss, auc, ll), (pl, pa, pll) in zip(got, CURVE, strict=True):
        assert loss == pytest.approx(pl, rel=1e-5)
        assert auc == pytest.approx(pa, rel=1e-5)
        assert ll == pytest.approx(pll, rel=1e-5)


# val_auc is the AUC of 2**16-bin label histograms (fedrec.metrics.reducers,
# the statistics both engines pool): in round 3 some positive-negative pairs of
# validation rows share a bin and count 1/2, hence 0.5180733 (exact 0.5181586)
CURVE = [  # (train_loss, val_auc, test_logloss) per round
    (0.7127841191662777, 0.4216538789428815, 0.6977536443674379),
    (0.6964259389400408, 0.470076726342711, 0.693056055917031),
    (0.6926742274445433, 0.5012787723785167, 0.6889610391865663),
    (0.6865303319307265, 0.518073316283035, 0.6875912255363171),
]
