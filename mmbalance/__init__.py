"""mmbalance: one runner, one loop, many multimodal balancing methods and datasets."""

__version__ = "0.1.0"
