"""Evaluation-only measurements of how a trained model uses its modalities: Shapley contributions,
imbalance degree, equity, and robustness to a missing or noisy modality.

They run once per run, after training, on the model of the selected (best-validation) epoch and the
test split, and land in ``final.json`` under ``modality_eval``; ``mmbalance evaluate RUN_DIR`` recomputes
them from ``best.pt`` without retraining. Nothing here changes training.

**A modality absent** (one definition for every method, model and task kind): every feature that
modality m's encoder passes on, to the fusion and to any head a method adds, is replaced by its
train-split mean, averaged over training samples and kept per position (a (D,) vector, a (T, D)
sequence, a (D, h, w) map). The features are the outputs of ``model.feature_modules(m)``, replaced
by forward hooks, so a method's own forward (MLA's shared head, Greedy's MMTM, UME's heads) sees the
same absent modality as joint training does. The means come from the selected model on the train split,
through the method's forward. BalanceBenchmark instead feeds zeros as the absent modality's input
(``balancemm/models/avclassify_model.py`` L267-269, ``torch.zeros_like``): zeros are an arbitrary point of
the input space (token ids, normalised MRI) whose encoding is itself a signal; a train-mean feature
carries no information about the sample and is the same construction for every architecture.

**Contributions.** ``v(S)`` is the task's primary metric on the test split with only the modalities in
S present, oriented so that larger is better (MAE enters as ``-MAE``). The Shapley value of m is
``phi_m = sum_{S not containing m} |S|! (M-|S|-1)! / M! (v(S + m) - v(S))``, exact over all 2^M coalitions
for M <= 6 (BalanceBenchmark ``balancemm/evaluation/modalitys.py`` L19-54, ``Calculate_Shapley``, whose
``v(empty)`` is also the model with every modality absent), and above that the mean marginal
contribution over ``PERMUTATIONS`` random orders (Castro et al. 2009), which needs at most
``PERMUTATIONS * (M - 1) + 2`` coalitions.

**Sample-level contributions and the imbalance degree.** As BalanceBenchmark's
``Calculate_Shapley_Sample`` (``modalitys.py`` L58-103): per test sample i, ``v_i(S)`` is 1 if the
prediction with modalities S is right and 0 otherwise, and ``v_i(empty) = 0`` (L74-75), with the same
Shapley weights (L96-98). The code has no per-batch reset of its cache (L64, L73), so from the second
batch on it reuses the first batch's predictions; we compute every sample from its own predictions.
Generalised to the other task kinds with a per-sample score in [0, 1] that is 0 for "nothing":
regression: the sign of the prediction is right (MOSI's Acc-2, ``>= 0`` convention); segmentation:
the sample's mean Dice over the regions. The released code prints no aggregate (``balancemm/train.py``
L156, a commented-out ``print(f'The imbalance is :{imbalance}')``), so the **imbalance degree** is ours:
the mean over samples of ``max_m phi_i^m - min_m phi_i^m``. With two modalities it is 1 for a sample
that only one modality gets right and 0 for a sample both get right alone or together.

**Equity** (ours, not MissBench's MEI, whose formula we could not confirm from the paper): Pielou's
evenness (Pielou 1966, J. Theor. Biol. 13:131) of the positive dataset-level contributions,
``J = -sum_m p_m ln p_m / ln M`` with ``p_m = max(phi_m, 0) / sum_k max(phi_k, 0)``: 1 when every
modality contributes the same, 0 when one modality carries all of it.

**Robustness** (MultiBench, ``eval_scripts/robustness.py``). The metric with each modality absent in
turn (``missing``; ``worst_missing`` is the worst of them), and with Gaussian noise of std
``level * sigma_m`` added to modality m's input, ``sigma_m`` the std of m's train-split input and
``level`` in MultiBench's 0, 0.1, ..., 0.9 (the x axis of its ``single_plot``, L106). The noise draws
are fixed by the run's seed and shared by the levels. Relative robustness is the area under the
metric-vs-level curve by the trapezoid rule (``relative_robustness_helper``, L47-56); effective
robustness, ``sum_l (f_l - (r_l + f_0 - r_0))`` against a reference curve r (L59-69: MultiBench's r is
late fusion; ours is joint training on the same data), is computed by the report, which sees both runs.
MultiBench's min-max normalisation across methods (L72-88) is a property of a table, not of a run, so
the record keeps the raw area. Inputs that are not floating point (token ids) get no noise curve.

**Incomplete data** (LNLN, ``incomplete.py``): the metric with a random fraction r in 0, 0.1, ..., 0.9 of
every modality's positions removed at once, averaged over three seeded draws (``incomplete``: the curve,
each seed's curve and LNLN's average over the rates).

Line numbers refer to GeWu-Lab/BalanceBenchmark at commit 4c1482fc and pliang279/MultiBench at 49f9be22.

Cost per run: one forward pass over the train split plus ``2^M + 9 M + 27`` forward passes over the test
split (the coalitions, the noisy copies and the incomplete copies), in which each encoder runs once per distinct input
(``ReusedEncoders``); the runner records its CPU time in ``env.json``
(``modality_eval_cpu_seconds``), outside ``final.json``, whose numbers a rerun reproduces exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from torch import Tensor

from mmbalance.models.base import MultimodalModel
from mmbalance.training import incomplete
from mmbalance.training.data import Batch, TaskInfo
from mmbalance.training.metrics import dice_per_sample
from mmbalance.training.modality_scores import (
    LEVELS,
    coalition_key,
    effective_robustness,
    equity,
    imbalance_degree,
    permutations,
    relative_robustness,
    sampled_shapley,
    shapley_values,
)

__all__ = [
    "DEFINITION",
    "EXACT_MAX",
    "LEVELS",
    "PERMUTATIONS",
    "absent",
    "coalition_key",
    "effective_robustness",
    "equity",
    "imbalance_degree",
    "measure",
    "relative_robustness",
    "same_record",
    "sampled_shapley",
    "shapley_values",
]

DEFINITION = (
    "modality absent: every feature its encoder passes on (model.feature_modules) replaced by the "
    "train-split mean of that feature, per position"
)
EXACT_MAX = 6  # exact Shapley values up to this many modalities (2^6 = 64 coalitions)
PERMUTATIONS = 64  # sampled permutations above it


def coalitions(modalities: Sequence[str], seed: int) -> tuple[list[frozenset[str]], list[list[str]] | None]:
    """The coalitions to evaluate, and the sampled orders (None when exact)."""
    if len(modalities) <= EXACT_MAX:
        subsets = [frozenset(s) for k in range(len(modalities) + 1) for s in combinations(modalities, k)]
        return subsets, None
    orders = permutations(modalities, PERMUTATIONS, seed)
    needed = {frozenset(o[:k]) for o in orders for k in range(len(o) + 1)}
    needed |= {frozenset(modalities) - {m} for m in modalities}  # the missing-modality scores
    return sorted(needed, key=lambda s: (len(s), coalition_key(s, modalities))), orders


# --- a modality absent -----------------------------------------------------------------------------------
@contextmanager
def absent(
    model: MultimodalModel, means: Mapping[str, Sequence[Tensor]], modalities: Iterable[str]
) -> Iterator[None]:
    """While active, the features of ``modalities`` are their train-split ``means`` (see the module doc)."""

    def replace(mean: Tensor):
        def hook(module, args, out: Tensor) -> Tensor:
            if out.shape[1:] != mean.shape:
                raise ValueError(f"{type(module).__name__}: feature of shape {tuple(out.shape[1:])} per sample "
                                 f"does not match its train-split mean {tuple(mean.shape)}")  # fmt: skip
            return mean.to(out.dtype).expand_as(out)

        return hook

    handles = []
    try:
        for m in modalities:
            for module, mean in zip(model.feature_modules(m), means[m], strict=True):
                handles.append(module.register_forward_hook(replace(mean)))
        yield
    finally:
        for h in handles:
            h.remove()


class ReusedEncoders:
    """While active (``with``), an encoder called on one of the current batch's own input tensors computes
    its output once and returns that same output to every later call (eval mode, no grad: the same
    numbers). A test batch's variants share most encoder inputs, so each encoder runs once per distinct
    input instead of once per variant (a mfeat run's 118 variants: 60 encoder passes instead of 708).
    Noisy copies are new tensors, computed as before and never kept. ``batch(inputs)`` starts a batch."""

    def __init__(self, encoders: Iterable[torch.nn.Module]) -> None:
        self.encoders = list(dict.fromkeys(encoders))  # a module shared by modalities is patched once
        self.inputs: dict[int, Tensor] = {}  # id -> tensor, kept alive so that no id is reused meanwhile
        self.outputs: dict[tuple[int, int], Tensor] = {}

    def batch(self, inputs: Mapping[str, Tensor]) -> None:
        self.inputs = {id(x): x for x in inputs.values()}
        self.outputs = {}

    def _memo(self, forward: Callable) -> Callable:
        def call(*args, **kwargs):
            if kwargs or len(args) != 1 or id(args[0]) not in self.inputs:
                return forward(*args, **kwargs)
            key = (id(forward), id(args[0]))
            if key not in self.outputs:
                self.outputs[key] = forward(args[0])
            return self.outputs[key]

        return call

    def __enter__(self) -> ReusedEncoders:
        for module in self.encoders:
            module.forward = self._memo(module.forward)  # an instance attribute over the class's forward
        return self

    def __exit__(self, *exc) -> None:
        for module in self.encoders:
            del module.forward
        self.inputs, self.outputs = {}, {}


@torch.no_grad()
def train_statistics(
    model: MultimodalModel, forward: Callable[[Batch], Tensor], batches: Iterable[Batch]
) -> tuple[dict[str, list[Tensor]], dict[str, float | None]]:
    """Per modality: the train-split mean of each feature module's output, and the std of its input
    (None for inputs that are not floating point)."""
    sums: dict[tuple[str, int], Tensor] = {}
    counts: dict[tuple[str, int], int] = {}
    moments: dict[str, list[float]] = {}

    def record(key: tuple[str, int]):
        def hook(module, args, out: Tensor) -> None:
            s = out.detach().double().sum(dim=0)
            if key in sums and sums[key].shape != s.shape:
                raise ValueError(f"modality {key[0]}: features change shape between batches "
                                 f"({tuple(sums[key].shape)} vs {tuple(s.shape)}); no per-position mean")  # fmt: skip
            sums[key] = sums[key] + s if key in sums else s
            counts[key] = counts.get(key, 0) + out.shape[0]

        return hook

    handles = [
        module.register_forward_hook(record((m, i)))
        for m in model.modalities
        for i, module in enumerate(model.feature_modules(m))
    ]
    try:
        for batch in batches:
            forward(batch)
            for m in model.modalities:
                x = batch.inputs[m]
                if x.is_floating_point():
                    x = x.double()
                    acc = moments.setdefault(m, [0.0, 0.0, 0.0])
                    acc[0] += x.numel()
                    acc[1] += x.sum().item()
                    acc[2] += (x * x).sum().item()
    finally:
        for h in handles:
            h.remove()
    means = {
        m: [(sums[(m, i)] / counts[(m, i)]).float() for i in range(len(model.feature_modules(m)))]
        for m in model.modalities
    }
    stds = {}
    for m in model.modalities:
        if m in moments:
            n, s, ss = moments[m]
            stds[m] = math.sqrt(max(ss / n - (s / n) ** 2, 0.0))
        else:
            stds[m] = None
    return means, stds


# --- the measurement ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One way to present the test split: which modalities are absent, which one is noisy and how much."""

    absent: frozenset[str]
    noisy: str | None = None
    level: float = 0.0


def sample_scores(task: TaskInfo, pred: Tensor, target: Tensor) -> np.ndarray:
    """Per-sample score in [0, 1]: correct (classification), right sign (regression, ``>= 0``),
    mean Dice over the regions (segmentation; ``pred`` holds logits or a label map per pixel)."""
    if task.kind == "classification":
        return (pred.argmax(dim=-1) == target).double().numpy()
    if task.kind == "regression":
        return ((pred.reshape(-1) >= 0) == (target.reshape(-1) >= 0)).double().numpy()
    labels = pred.max(dim=1).indices if pred.dim() == target.dim() + 1 else pred  # argmax, faster
    dice = [dice_per_sample(labels, target, r) for r in task.regions.values()]
    return torch.stack(dice).mean(dim=0).double().numpy()


@torch.no_grad()
def measure(
    model: MultimodalModel,
    forward: Callable[[Batch], Tensor],
    task: TaskInfo,
    score: Callable[[Tensor, Tensor, list[str]], float],
    compact: Callable[[Tensor], Tensor],
    train_batches: Iterable[Batch],
    test_batches: Iterable[Batch],
    seed: int,
    unk: int = incomplete.UNK,
) -> dict:
    """Every measurement of the module doc, as the JSON-ready ``modality_eval`` record.

    ``forward(batch) -> prediction`` runs the method's evaluation forward (eval mode, no AMP scaling);
    ``score``/``compact`` are the dataset adapter's primary metric of a split and prediction compaction;
    ``unk``: its [UNK] word id (``DatasetAdapter.unknown_token``)."""
    model.eval()
    mods = list(model.modalities)
    key, higher = task.primary_metric, task.higher_is_better
    sign = 1.0 if higher else -1.0
    input_means = incomplete.InputMeans()
    means, stds = train_statistics(model, forward, input_means.watch(train_batches))
    in_means, rules = input_means.means, {}
    subsets, orders = coalitions(mods, seed)
    noisy = [m for m in mods if stds[m] is not None]
    variants = [Variant(frozenset(mods) - s) for s in subsets]
    variants += [Variant(frozenset(), m, lv) for m in noisy for lv in LEVELS[1:]]
    preds: dict[Variant, list[Tensor]] = {v: [] for v in variants}
    scores: dict[Variant, list[np.ndarray]] = {v: [] for v in variants[: len(subsets)]}
    targets, ids = [], []
    gen = torch.Generator().manual_seed(seed)
    # LNLN's incomplete-data protocol (``incomplete.py``): its own generators, so the noise draws stay as they were
    missing_gens = {s: incomplete.eval_generators(s, mods) for s in incomplete.SEEDS}
    missing_preds: dict[tuple[int, float], list[Tensor]] = {
        (s, r): [] for s in incomplete.SEEDS for r in incomplete.RATES[1:]
    }
    with ReusedEncoders(model.encoders[m] for m in mods) as reuse:
        for batch in test_batches:
            reuse.batch(batch.inputs)
            eps = {
                m: torch.randn(batch.inputs[m].shape, generator=gen).to(batch.inputs[m].device) for m in noisy
            }
            # One forward per variant on the batch as evaluation sees it: some methods' predictions depend on
            # the batch (MLA's entropy weights are a softmax over the batch axis), so variants are never stacked.
            for v in variants:
                inputs = {
                    m: x + v.level * stds[m] * eps[m] if v.noisy == m else x for m, x in batch.inputs.items()
                }
                with absent(model, means, v.absent):
                    pred = forward(Batch(inputs, batch.target, batch.ids)).float()
                preds[v].append(compact(pred).cpu())
                if v in scores:
                    scores[v].append(sample_scores(task, pred.cpu(), batch.target.cpu()))
            for s, gens in missing_gens.items():
                u = incomplete.draws({m: batch.inputs[m] for m in mods}, gens)
                for r in incomplete.RATES[1:]:
                    inputs = {
                        **batch.inputs,
                        **incomplete.incomplete_inputs(u, batch.inputs, r, in_means, unk),
                    }
                    pred = forward(Batch(inputs, batch.target, batch.ids)).float()
                    missing_preds[(s, r)].append(compact(pred).cpu())
            rules = {m: incomplete.rule(batch.inputs[m]) for m in mods}
            targets.append(batch.target.cpu())
            ids += batch.ids
    target = torch.cat(targets)
    metric = {v: float(score(torch.cat(p), target, ids)) for v, p in preds.items()}
    full_metric = metric[Variant(frozenset())]
    per_seed = {s: [full_metric] + [float(score(torch.cat(missing_preds[(s, r)]), target, ids))
                                    for r in incomplete.RATES[1:]] for s in incomplete.SEEDS}  # fmt: skip

    full = frozenset(mods)
    value = {s: sign * metric[Variant(full - s)] for s in subsets}
    per_sample = {s: np.concatenate(scores[Variant(full - s)]) for s in subsets}
    per_sample[frozenset()] = np.zeros_like(per_sample[frozenset()])  # BalanceBenchmark: v_i(empty) = 0
    if orders is None:
        phi, sample_phi = shapley_values(value, mods), shapley_values(per_sample, mods)
    else:
        phi, sample_phi = sampled_shapley(value, orders), sampled_shapley(per_sample, orders)
    missing = {m: metric[Variant(frozenset({m}))] for m in mods} if len(mods) > 1 else {}
    noise = {m: [metric[Variant(frozenset())]] + [metric[Variant(frozenset(), m, lv)] for lv in LEVELS[1:]]
             for m in noisy}  # fmt: skip
    pick = min if higher else max
    return {
        "definition": DEFINITION,
        "metric": key,
        "higher_is_better": higher,
        "full": metric[Variant(frozenset())],
        "subsets": {coalition_key(s, mods): metric[Variant(full - s)] for s in subsets},
        "shapley": {m: float(v) for m, v in phi.items()},
        "shapley_estimator": "exact" if orders is None else f"sampled, {PERMUTATIONS} permutations",
        "sample_shapley_mean": {m: float(v.mean()) for m, v in sample_phi.items()},
        "imbalance_degree": imbalance_degree(sample_phi),
        "equity": equity(phi),
        "missing": missing,
        "worst_missing": pick(missing.values()) if missing else None,
        "noise_levels": list(LEVELS),
        "noise_std": {m: stds[m] for m in noisy},
        "noise": noise,
        "relative_robustness": {m: relative_robustness(c) for m, c in noise.items()},
        "incomplete": incomplete.summary(per_seed, rules),
        "test_samples": len(ids),
    }


def same_record(a: Mapping, b: Mapping, rel: float = 1e-6) -> bool:
    """Two ``modality_eval`` records agree (floats to ``rel``)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_record(a[k], b[k], rel) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_record(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b
