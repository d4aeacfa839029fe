"""Flower engine: fedrec's algorithms as a Flower app (``flwr==1.41``, Message API).

- :mod:`.apps`: the ServerApp and ClientApp. The server samples clients,
  broadcasts with the strategy and aggregates with the engine's
  ``server_update``; each SuperNode runs the engine's batched ``client_update``
  for the clients it hosts and keeps their private tensors in its
  ``Context.state``. No training or aggregation code exists twice.
- :mod:`.mods`: client mods at the wire — the privacy audit (refuses to send any
  tensor the method did not declare shared) and the upload mods (LDP).
- :mod:`.records`: tensors ↔ Flower records.
- :mod:`.simulation`: Flower's in-process simulation (Ray) of a config.
"""
