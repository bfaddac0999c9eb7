"""CGGM: our ``Trainer.train_batch`` against a transcription of the released training step.

Official source: zrguo/CGGM @ 21e428c, ``src/msatrain.py`` lines 56-127 (the MOSI / IEMOCAP loop),
``src/eval_metrics.py`` (``train_eval_senti`` lines 46-53, ``cal_cos`` lines 165-173),
``models/msamodel.py`` (``MSAModel.forward`` returns the detached encoder outputs, line 66;
``ClassifierGuided.cal_coeff`` lines 110-126). The MOSI preset's settings (``benchmarks/presets/mosi.yaml``:
Adam, clip 0.8 in the spec, CGGM rho 1.3, lambda 0.2, cls_lr 5e-4) on the MOSI fixture, a tiny
transformer (the architecture itself is checked against the released ``MSAModel`` by
``scripts/check_msa_against_cggm.py``), batches of 6 (accuracies k/6 are not exact binary fractions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin
from sklearn.metrics import accuracy_score
from torch import nn

from mmbalance.fixtures import mosi as mosi_fixture

TINY_MSA = {
    "proj_dim": 4, "num_heads": 2, "layers": 2, "cls_layers": 1,
    "attn_dropout": 0.0, "relu_dropout": 0.0, "embed_dropout": 0.0, "res_dropout": 0.0, "out_dropout": 0.0,
}  # fmt: skip
PRESET = {  # benchmarks/presets/mosi.yaml, with the tiny model
    "dataset": "mosi",
    "model_params": TINY_MSA,
    "batch_size": 6,
    "optim": {"name": "adam", "lr": 1.0e-3, "weight_decay": 0.0, "clip_grad_norm": 0.8},
    "method": "cggm",
    "method_params": {
        "rho": 1.3,
        "lam": 0.2,
        "cls_lr": 5.0e-4,
        "cls_weight_decay": 0.0,
        "clip_grad_norm": 0.8,
    },
}
HP = {"lamda": 0.2, "rou": 1.3, "clip": 0.8, "lr": 1e-3, "cls_lr": 5e-4}  # run/mosi_run.py names


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return mosi_fixture.write(tmp_path_factory.mktemp("data")).parent


# --- the released step, transcribed ------------------------------------------------------------------
def train_eval_senti(results, truths) -> float:
    """eval_metrics.py:46-53 (exclude_zero=False): scikit-learn accuracy of the signs, float64."""
    test_preds = results.view(-1).cpu().detach().numpy()
    test_truth = truths.view(-1).cpu().detach().numpy()
    return accuracy_score(test_truth > 0, test_preds > 0)


def cal_cos(cls_grad, fusion_grad):
    """eval_metrics.py:165-173: cosines of the flattened out_layer *parameters* (clones, not detached)."""
    fgn = fusion_grad.clone().view(-1)
    return [F.cosine_similarity(c.clone().view(-1), fgn, dim=0) for c in cls_grad]


class Released:
    """State and step of msatrain.py's ``train`` (``acc1`` and ``l_gm`` are its nonlocals, lines 46-47)."""

    def __init__(self, model, classifiers, modalities):
        self.net, self.classifier, self.mods = model, classifiers, modalities
        self.optimizer = torch.optim.Adam(model.parameters(), lr=HP["lr"])  # msatrain.py:30
        self.cls_optimizer = torch.optim.Adam(classifiers.parameters(), lr=HP["cls_lr"])  # msatrain.py:21
        self.criterion = nn.L1Loss()  # run/mosi_run.py:105
        self.acc1, self.l_gm = [0] * len(modalities), None
        self.coeff, self.grads = None, None

    def step(self, batch) -> None:
        net, y, mods = self.net, batch.target, self.mods
        net.zero_grad()  # :59
        out = net(batch.inputs)  # :69; hs = the detached encoder sequences (msamodel.py:66)
        preds, hs = out.pred, [out.aux[m].detach() for m in mods]
        raw_loss = self.criterion(preds, y)  # :75
        if self.l_gm is not None:  # :76-77
            raw_loss += HP["lamda"] * self.l_gm
        raw_loss.backward()  # :78
        self.cls_optimizer.zero_grad()  # :81
        cls_res = [self.classifier[m](h) for m, h in zip(mods, hs, strict=True)]  # :83
        fusion_grad = net.out_layer.weight  # :85-87, the parameter itself
        cls_loss = self.criterion(cls_res[0], y)  # :93
        for i in range(1, len(mods)):  # :94-95
            cls_loss += self.criterion(cls_res[i], y)
        cls_loss.backward()  # :97
        cls_grad = [self.classifier[m].out_layer.weight for m in mods]  # :99-102
        llist = cal_cos(cls_grad, fusion_grad)  # :104
        acc2 = [train_eval_senti(r, y) for r in cls_res]  # :106 (cal_coeff, msamodel.py:113-116)
        diff = [acc2[i] - self.acc1[i] for i in range(len(mods))]  # :107
        diff_sum = sum(diff) + 1e-8  # :109
        coeff = [(diff_sum - d) / diff_sum for d in diff]  # :110-113
        self.acc1 = acc2  # :115
        self.l_gm = np.sum(np.abs(coeff)) - (coeff[0] * llist[0] + coeff[1] * llist[1] + coeff[2] * llist[2])
        self.l_gm /= len(mods)  # :116-117
        for i, m in enumerate(mods):  # :119-122: parameters named 'encoders.{i}' = the transformers;
            for params in net.encoders[m].transformer.parameters():  # proj.{i} sits outside them
                params.grad *= coeff[i] * HP["rou"]
        self.cls_optimizer.step()  # :124
        nn.utils.clip_grad_norm_(net.parameters(), HP["clip"])  # :126
        self.coeff, self.grads = coeff, snapshot(net.parameters())
        self.optimizer.step()  # :127


def run_both(tmp_path: Path, data_root: Path, epochs: int = 3, **overrides) -> tuple[MaxDiff, list]:
    tr = make_trainer(tmp_path, data_root, **{**PRESET, **overrides})
    ours = Ours(tr)
    ref = Released(twin(tr.model), twin(tr.method.classifiers), tr.ctx.modalities)
    diff, coefficients = MaxDiff(), []
    for epoch, i, batch in training_batches(tr, epochs):
        ours.step(epoch, i, batch)
        ref.step(batch)
        coefficients.append(ref.coeff)
        diff.add(tr.method.coeff, ref.coeff, ours.grads, ref.grads, tr.model, ref.net)
    return diff, coefficients


def test_cggm_step_matches_the_released_msatrain_loop(tmp_path, data_root):
    """Items 1-3 of issue 13: float64 scores, no scaling of the input projections, one clip."""
    diff, coefficients = run_both(tmp_path, data_root)
    print("cggm:", diff)
    # The run passes through the case the issue is about: the score changes cancel, S = 1e-8 + rounding.
    assert max(abs(c) for step in coefficients for c in step) > 1e6
    assert diff.steps == 9
    assert diff.coefficients <= 1e-6 * max(abs(c) for step in coefficients for c in step)
    assert diff.gradients < 1e-12 and diff.parameters < 1e-12


def test_direction_term_gradient_on_the_fusion_output_layer(tmp_path, data_root):
    """Item 8 (zrguo/CGGM issue #6: does l_gm of the previous iteration add a gradient?).

    ``direction: weights``: the share of lam * l_gm in the second step's gradient is non-zero on the
    fusion output layer only, and equals the released autograd result (the graph l_gm keeps from
    the previous step). ``direction: gradients``: non-zero on the encoders (through the double
    backward) and zero on the output layer itself: under MOSI's L1 loss the output layer's gradient
    is piecewise constant in its own weights."""
    shares = {}
    for direction in ("weights", "gradients"):
        params = {**PRESET["method_params"], "direction": direction}
        tr = make_trainer(tmp_path / direction, data_root, **{**PRESET, "method_params": params})
        ref = Released(twin(tr.model), twin(tr.method.classifiers), tr.ctx.modalities)
        batches = [b for _, _, b in training_batches(tr, 1)][:2]
        Ours(tr).step(0, 0, batches[0])
        ref.step(batches[0])
        model, batch = tr.model, batches[1]
        model.zero_grad(set_to_none=True)
        tr.ctx.step = 1
        tr.method.loss(model(batch.inputs), batch, tr.ctx).backward()
        with_term = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        tr.task_loss(model(batch.inputs).pred, batch.target).backward()
        shares[direction] = {
            n: g - p.grad for (n, g), p in zip(with_term.items(), model.parameters(), strict=True)
        }
        if direction == "weights":  # the released loop's share of lam * l_gm, by autograd through its graph
            ref.net.zero_grad(set_to_none=True)
            (HP["lamda"] * ref.l_gm).backward()
            released = ref.net.out_layer.weight.grad
            torch.testing.assert_close(
                shares["weights"]["head.out_layer.weight"], released, rtol=1e-10, atol=1e-14
            )
    weights, gradients = shares["weights"], shares["gradients"]
    assert weights["head.out_layer.weight"].abs().max() > 1e-4
    assert all(g.abs().max() == 0 for n, g in weights.items() if n != "head.out_layer.weight")
    assert gradients["head.out_layer.weight"].abs().max() == 0
    assert max(g.abs().max() for n, g in gradients.items() if n.startswith("encoders.")) > 1e-6
    print(
        "cggm direction term, max |share| on the output layer: weights",
        weights["head.out_layer.weight"].abs().max().item(),
    )
