"""Shared fixtures: tiny synthetic data, paths to the real data beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
KUAISAR = SHARED_DATA / "kuaisar-r"
ML100K = Path(os.environ.get("FEDREC_ML100K_DIR", ROOT / ".cache" / "ml-100k"))

torch.set_num_threads(1)


@pytest.fixture
def kuaisar_path() -> Path:
    if not (KUAISAR / "df.csv").exists():
        pytest.skip(f"KuaiSAR-R not found at {KUAISAR}")
    return KUAISAR
