"""Flower engine: fedrec's algorithms as a Flower app (``flwr==1.41``, Message API).

- :mod:`.apps`: the ServerApp/ClientApp pair, for one config or a run config.
- :mod:`.server`: the ServerApp. It samples clients, broadcasts with the
  strategy and aggregates with the engine's ``server_update``.
- :mod:`.client`: the ClientApp. Each SuperNode runs the engine's batched
  ``client_update`` for the clients it hosts. No training or aggregation code
  exists twice.
- :mod:`.store`: a node's private tensors on its own disk, never in a message.
- :mod:`.mods`: client mods at the wire — the privacy audit (refuses to send any
  tensor the method did not declare shared) and the upload mods (LDP).
- :mod:`.records`: tensors ↔ Flower records (raw bytes, no ``.npy`` framing).
- :mod:`.runconfig`: the config and engine of a run, cached per process.
- :mod:`.simulation`: Flower's in-process simulation (Ray) of a config.
"""
