"""Model contract (``base``) and the architectures of each dataset."""

from mmbalance.models.base import ConcatFusion, MultimodalModel, Output

__all__ = ["ConcatFusion", "MultimodalModel", "Output"]
