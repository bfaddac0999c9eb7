"""Joint training: the fused task loss, plain backpropagation. The baseline every method is
compared with; its hooks are the defaults of ``Method``, i.e. it does nothing."""

from __future__ import annotations

from mmbalance.common.registry import METHODS
from mmbalance.training.method import Method


@METHODS.register
class Joint(Method):
    name = "joint"
    min_modalities = 1
    reference = "Joint (late-fusion) training with the task loss only"
