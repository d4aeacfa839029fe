"""Built-in methods; importing this package registers them."""

from fedrec.methods import centralised, fedavg, fedprox, local  # noqa: F401
