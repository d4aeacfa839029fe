"""fedrec: federated adaptation of foundation-model-based recommenders."""

__version__ = "0.1.0"
