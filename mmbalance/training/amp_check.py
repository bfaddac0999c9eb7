"""Does mixed precision change a balancing method's decisions? The same runner steps in fp32 and in AMP.

Methods that read gradients, gradient norms or per-modality scores turn them into one coefficient per
modality, and the smallest coefficient names the modality the method holds back at that step. Two
``Trainer``s built from the same spec (so the same initial weights) take the same batches, with the
same random draws at each step (dropout masks, OGM-GE's gradient noise), one in fp32 and one under
``--amp`` (bf16 autocast on the CPU; fp16 with loss scaling on CUDA, gradients unscaled before a method
reads them: ``Trainer.train_step``). ``compare`` says whether every coefficient stayed finite, how far
the AMP coefficients drift from the fp32 ones, and whether the suppressed modality is the same at every
step where fp32 makes a clear choice.

Used by ``tests/test_amp.py`` (CPU, bf16) and ``scripts/gpu_check.py`` (CUDA, fp16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmbalance.training.data import Batch

# Each method's per-modality coefficient in its diagnostics (``<key>/<modality>``) and its sign: the
# smallest signed value is the modality the method holds back at that step. OGM-GE, PMR, CGGM, AGM, MLB:
# the gradient scale; AMSS: the share of parameters kept; MSAM: the modality's weight; MMPareto: the
# weight of the multimodal gradient; InfoReg: its regularisation strength, largest = held back (sign -1).
COEFFICIENT_KEY: dict[str, tuple[str, int]] = {
    "agm": ("coeff", 1),
    "amss": ("keep", 1),
    "cggm": ("coeff", 1),
    "inforeg": ("beta", -1),
    "mlb": ("coeff", 1),
    "mmpareto": ("k_mm", 1),
    "msam": ("weight", 1),
    "ogm_ge": ("coeff", 1),
    "pmr": ("coeff", 1),
}


@dataclass
class AmpComparison:
    method: str
    steps: int
    finite: bool  # every AMP coefficient finite
    max_abs_diff: float  # largest |AMP - fp32| over steps and modalities
    decided: int  # steps where fp32 holds one modality back by more than the margin
    agree: int  # of those, steps where AMP holds back the same modality
    overflow: int = 0  # AMP steps thrown away by fp16 loss scaling (not compared)

    def passes(self, atol: float) -> bool:
        return self.finite and self.max_abs_diff <= atol and self.agree == self.decided


def trajectory(trainer, batches: Sequence[Batch]) -> list[list[float] | None]:
    """The method's signed per-modality coefficients after each of ``batches`` (one runner step each);
    ``None`` for a step that fp16 loss scaling threw away (overflow: the method did not run)."""
    key, sign = COEFFICIENT_KEY[trainer.spec.method]
    out = []
    for i, batch in enumerate(batches):
        torch.manual_seed(i)  # the same dropout masks and method noise in both precisions
        trainer.ctx.step = trainer.ctx.step_in_epoch = i
        trainer.train_batch(batch)
        if trainer.overflowed():  # the step's gradients are still there: this step overflowed
            out.append(None)
            continue
        diag = trainer.method.diagnostics(trainer.ctx)
        out.append([sign * float(diag[f"{key}/{m}"]) for m in trainer.modalities])
    return out


def held_back(coeffs: Sequence[float], margin: float) -> int | None:
    """Index of the smallest coefficient; ``None`` when the next one is within ``margin`` (no clear choice)."""
    order = sorted(range(len(coeffs)), key=lambda i: coeffs[i])
    return order[0] if coeffs[order[1]] - coeffs[order[0]] > margin else None


def compare(
    method: str, fp32: list[list[float]], amp: list[list[float] | None], margin: float
) -> AmpComparison:
    """AMP's coefficients against fp32's, step by step; AMP's overflow steps are counted, not compared."""
    pairs = [(ra, rb) for ra, rb in zip(amp, fp32, strict=True) if ra is not None]
    finite = all(math.isfinite(c) for ra, _ in pairs for c in ra)
    diff = max((abs(a - b) for ra, rb in pairs for a, b in zip(ra, rb, strict=True)), default=0.0)
    decided = agree = 0
    for ra, rb in pairs:
        if (choice := held_back(rb, margin)) is not None:
            decided += 1
            agree += int(min(range(len(ra)), key=lambda i: ra[i]) == choice)
    overflow = len(amp) - len(pairs)
    return AmpComparison(method, len(fp32), finite, diff if finite else math.inf, decided, agree, overflow)
