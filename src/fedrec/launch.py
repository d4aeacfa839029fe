"""Continue a run on the engine it started on: embedded, reference or Flower.

The one module that knows every engine: :mod:`fedrec.runs` (the embedded
engine and the reference rankings) never imports :mod:`fedrec.flower`, whose
ServerApp writes its run directory with :mod:`fedrec.rundir`. Flower is an
optional extra, imported only when a Flower run is continued.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedrec.config import config_from_raw
from fedrec.references import run_reference
from fedrec.runs import Run


def resume_run(run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Continue the run in ``run_dir`` on the engine its ``env.json`` names."""
    try:
        env = json.loads((run_dir / "env.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        env = {}
    if env.get("engine") not in ("flower", "reference"):
        return Run.resume(run_dir).execute(progress)
    cfg_path = run_dir / "config.json"
    cfg = config_from_raw(json.loads(cfg_path.read_text()), str(cfg_path))
    if env["engine"] == "reference":  # seconds: scored again
        return run_reference(cfg, run_dir)
    from fedrec.flower.simulation import run_flower

    return run_flower(cfg, run_dir, int(env["min-nodes"]), resume=True)
