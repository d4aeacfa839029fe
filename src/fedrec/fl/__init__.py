"""Federated-learning core: partition, strategy protocol, engines."""
