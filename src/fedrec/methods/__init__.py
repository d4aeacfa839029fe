"""Built-in methods; importing this package registers them."""

from fedrec.methods import (  # noqa: F401
    baselines,
    centralised,
    ctr_references,
    fedavg,
    fedpa,
    fedprox,
    fellrec,
    local,
    rankings,
)
