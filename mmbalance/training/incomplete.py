"""LNLN's incomplete-data protocol: every test sample loses a random fraction r of its positions in every
modality at once, r in 0.0, 0.1, ..., 0.9, and the metric is averaged over three draws of the positions.

Zhang, Wang, Yu, "Towards Robust Multimodal Sentiment Analysis with Incomplete Data" (NeurIPS 2024); code
Haoyu-ha/LNLN at 80a052c6, ``core/dataset.py`` (``generate_m``, L91-111) and ``robust_evaluation.py``.

**The rule** (``generate_m``): one uniform draw u per position of a sample; a valid position is removed when
u <= r (L98, kept when ``u > r``; we remove when u < r, the same rule but for the probability-zero u == r,
so that r = 0 is exactly the complete input). The draws are seeded once and shared by the rates (L97 seeds
before every call), so a position removed at r is removed at every larger r. What "removed" means depends
on the input's structure, read from the tensor (never from a modality name):

- ``tokens``: BERT's (3, L) integer triple (word ids, attention mask, segment ids; MOSI's ``text_bert``,
  Food-101's titles). A removed word id becomes [UNK]: 100 in the bert-base vocabularies, as LNLN hard-codes
  it, or the adapter's own tokenizer's (``DatasetAdapter.unknown_token``); [CLS] (position 0) and [SEP] (the last
  valid position) are kept; only positions with mask 1 are valid; mask and segment ids are unchanged
  (L103-107). LNLN finds the last position as ``argmin(mask) - 1``; we take ``sum(mask) - 1``, the same
  position for BERT's prefix masks.
- ``frames``: a float (T, D) sequence (audio, vision, GloVe text, patch features): a removed step becomes the
  zero vector (L108-109), the value the pickles pad with, so padding steps need no validity mask.
- ``values``: a fixed-size float input (D,) or (C, ...): a removed feature, or a removed location (all C
  channels of a pixel or voxel together), takes its train-split mean. Such an input has no value of its own
  for "absent"; the train mean per position is ``modality_eval``'s construction for a whole absent
  modality, applied to the inputs instead of the features.

**Seeds.** ``SEEDS`` = LNLN's 1111-1113. Modality i's draws under seed s come from torch's CPU generator
seeded with ``s * 1_000_003 + i``, consumed in test-split order, so the removed positions depend on the
seed and the sample's place in the split, not on the batch size. In ``robust_evaluation.py`` the three
seeds are three trained checkpoints, all masked with the config's one seed (1111); here each run is
masked with all three and the report's mean over runs averages the trained seeds.

**Training with random missing** (``core/dataset.py`` L55-64, redrawn each epoch at L114-122), the spec
option ``train_missing``: per modality and sample a rate r ~ U(0, 1), r set to 0 for half of the samples,
then the rule above. LNLN zeroes exactly floor(n / 2) samples of the split; a batch does not know its
samples' places in the split, so here each sample's rate is 0 with probability 1/2. LNLN reseeds the
position draws with one seed in every call, so only the rates change between epochs; here the positions
are drawn again too, from a generator seeded by the run's seed and the epoch (a resumed run draws the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mmbalance.training.data import Batch

if TYPE_CHECKING:
    from mmbalance.common.spec import RunSpec

__all__ = [
    "RATES", "SEEDS", "UNK", "InputMeans", "TrainingMissing", "draws", "drop", "eval_generators",
    "incomplete_inputs", "positions", "rule", "summary", "training_missing",
]  # fmt: skip

RATES = tuple(i / 10 for i in range(10))  # robust_evaluation.py's missing_rate_list
SEEDS = (1111, 1112, 1113)
UNK = 100  # BERT's [UNK] id (bert-base vocabularies), LNLN's replacement word
PROTOCOL = (
    "LNLN position-level random missing in every modality at once (tokens -> [UNK], frames -> 0, "
    "fixed-size values -> train-split mean), mean over seeds 1111-1113"
)


def rule(x: Tensor) -> str:
    """How a batch ``x`` (B, ...) loses positions: ``tokens``, ``frames`` or ``values`` (module doc)."""
    if not x.is_floating_point():
        if x.dim() == 3 and x.shape[1] == 3:
            return "tokens"
        raise ValueError(f"no missing-position rule for an integer input of shape {tuple(x.shape[1:])} "
                         "per sample (only BERT's (3, L) word ids, mask, segment ids)")  # fmt: skip
    return "frames" if x.dim() == 3 else "values"


def positions(x: Tensor) -> tuple[int, ...]:
    """The shape of one draw per position of batch ``x``."""
    kind = rule(x)
    if kind == "tokens":
        return (x.shape[0], x.shape[2])
    if kind == "frames" or x.dim() == 2:
        return tuple(x.shape[:2])
    return (x.shape[0], *x.shape[2:])  # a location across channels


def draws(inputs: Mapping[str, Tensor], gens: Sequence[torch.Generator]) -> dict[str, Tensor]:
    """One uniform draw per position of each modality (``gens[i]``: modality i's generator)."""
    return {m: torch.rand(positions(x), generator=g).to(x.device) for (m, x), g in zip(inputs.items(), gens, strict=True)}  # fmt: skip


def drop(x: Tensor, u: Tensor, rate: Tensor | float, mean: Tensor | None = None, unk: int = UNK) -> Tensor:
    """``x`` with the positions whose draw ``u`` is below ``rate`` removed (a float, or one rate per sample);
    ``mean``: the train-split mean of one sample (``values`` inputs only); ``unk``: the [UNK] word id."""
    rate = torch.as_tensor(rate, dtype=u.dtype, device=u.device).reshape(-1, *[1] * (u.dim() - 1))
    gone = u < rate
    kind = rule(x)
    if kind == "tokens":
        ids, valid = x[:, 0], x[:, 1] > 0
        gone = gone & valid
        rows = torch.arange(len(x), device=x.device)
        gone[:, 0] = False  # [CLS]
        gone[rows, (valid.sum(dim=1) - 1).clamp(min=0)] = False  # [SEP]
        return torch.cat([torch.where(gone, unk, ids).unsqueeze(1), x[:, 1:]], dim=1)
    if kind == "frames":
        return x * ~gone.unsqueeze(-1)
    if mean is None:
        raise ValueError(f"a fixed-size input of shape {tuple(x.shape[1:])} needs its train-split mean")
    if x.dim() > 2:
        gone = gone.unsqueeze(1)  # every channel of a removed location
    return torch.where(gone, mean.to(x.dtype), x)


class InputMeans:
    """The train-split mean of each fixed-size float input, per position, gathered from a pass over the
    train batches that something else makes anyway (``watch``)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, inputs: Mapping[str, Tensor]) -> None:
        for m, x in inputs.items():
            if x.is_floating_point() and rule(x) == "values":
                s = x.detach().double().sum(dim=0)
                self.sums[m] = self.sums[m] + s if m in self.sums else s
                self.counts[m] = self.counts.get(m, 0) + len(x)

    def watch(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        for batch in batches:
            self.add(batch.inputs)
            yield batch

    @property
    def means(self) -> dict[str, Tensor]:
        return {m: (s / self.counts[m]).float() for m, s in self.sums.items()}


def incomplete_inputs(
    u: Mapping[str, Tensor],
    inputs: Mapping[str, Tensor],
    rate: Tensor | float,
    means: Mapping[str, Tensor],
    unk: int = UNK,
) -> dict[str, Tensor]:
    """The modalities drawn in ``u`` at ``rate`` (one per sample, or one for all)."""
    return {m: drop(inputs[m], v, rate, means.get(m), unk) for m, v in u.items()}


def eval_generators(seed: int, modalities: Sequence[str]) -> list[torch.Generator]:
    """Modality i's generator under protocol seed ``seed`` (module doc)."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(len(modalities))]


def summary(per_seed: Mapping[int, Sequence[float]], rules: Mapping[str, str]) -> dict:
    """The JSON-ready record: the curve (mean over seeds, one value per rate) and LNLN's average over the
    rates (its Table 2), beside each seed's curve."""
    curve = np.mean([list(c) for c in per_seed.values()], axis=0)
    return {
        "protocol": PROTOCOL,
        "rules": dict(rules),
        "rates": list(RATES),
        "seeds": [int(s) for s in per_seed],
        "curve": [float(v) for v in curve],
        "mean": float(curve.mean()),
        "per_seed": {str(s): [float(v) for v in c] for s, c in per_seed.items()},
    }


def training_missing(
    spec: RunSpec, modalities: Sequence[str], train_batches: Iterable[Batch], unknown_token: Callable[[], int]
) -> TrainingMissing | None:
    """The run's ``TrainingMissing`` when its spec asks for it (``train_missing``), after a pass over the
    train split for the inputs' means; None otherwise (nothing is read, ``unknown_token`` not asked)."""
    if not spec.train_missing:
        return None
    means = InputMeans()
    for _ in means.watch(train_batches):
        pass
    return TrainingMissing(spec.seed, modalities, means.means, unknown_token())


class TrainingMissing:
    """LNLN's random missing rates in training (module doc): ``apply(batch)`` is the batch as the
    step sees it; ``start_epoch(epoch)`` reseeds the draws."""

    def __init__(
        self, seed: int, modalities: Sequence[str], means: Mapping[str, Tensor], unk: int = UNK
    ) -> None:
        self.seed, self.modalities, self.means, self.unk = seed, list(modalities), dict(means), unk
        self.gen = torch.Generator()

    def start_epoch(self, epoch: int) -> None:
        self.gen.manual_seed(self.seed * 1_000_003 + 7919 * (epoch + 1))

    def apply(self, batch: Batch) -> Batch:
        inputs = dict(batch.inputs)
        for m in self.modalities:
            x = inputs[m]
            rate = torch.rand(len(x), generator=self.gen)
            rate = torch.where(torch.rand(len(x), generator=self.gen) < 0.5, 0.0, rate)
            u = torch.rand(positions(x), generator=self.gen)
            inputs[m] = drop(x, u.to(x.device), rate.to(x.device), self.means.get(m), self.unk)
        return Batch(inputs, batch.target, batch.ids)
