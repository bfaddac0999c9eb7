"""IGM: our ``Trainer.train_batch`` against a transcription of the official stages.

Official source: njustkmg/IJCAI25-IGM @ 19aa8e5, ``train_CREMA.py``: ``train_withoutP`` lines 192-266
(the first stage) and ``train_withP`` lines 63-157 (mixup of the trained modality's input, the SAM
perturbation by ``param.data = param.data + noise``, the flat loss, the gradient modification by
every same-shape layer of the other modality), ``compute_P_matrix`` lines 31-56 and the stage loop
374-408 (a fresh SGD per stage; the matrices from the modality of the previous stage);
``models/AudioVideo.py`` ``compute_cov`` / ``get_P_matrix`` / ``update_cov`` lines 97-137
(``torch.svd``). Two modalities, stages of one epoch (audio, video, audio), float64, SGD with
momentum and weight decay, ``rho = 0.05`` for both SAM radii (the released 1e-10 would hide the
perturbation from the comparison). Not transcribed: the reload of the best-by-test model at each
stage (we continue from the current model, see igm.py).
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin
from torch import nn

SPEC = {
    "dataset_params": {"modalities": 2, "n_train": 96, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "epochs": 3,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "igm",
    "method_params": {"stage_epochs": [1], "rho": 0.05, "rho_cls": 0.05},
}
CFG = {
    "flat_ratio": 0.3,
    "noise_ratio": 0.05,
    "noise_ratio_cls": 0.05,
    "temperature1": 0.4,
    "mixup_alpha": 1.0,
}


def mixup_data(x, y, alpha=1.0):  # utils/utils.py:336-352 (use_cuda: randperm on the CPU stream)
    lam = np.random.beta(alpha, alpha) if alpha > 0 else 1
    index = torch.randperm(x.size()[0])
    return lam * x + (1 - lam) * x[index, :], y, y[index], lam


def mixup_criterion(criterion, pred, y_a, y_b, lam):  # utils/loss.py
    return lam * criterion(pred, y_a) + (1 - lam) * criterion(pred, y_b)


class Official:
    """``AVClassifier`` (``audio_encoder``/``cls_a``, ...) and the stage loop of ``train_CREMA.py``."""

    def __init__(self, model, heads, modalities):
        self.model, self.heads, self.mods = model, heads, modalities
        self.fea_in, self.P_matrix = {}, {}
        self.grads = None

    def modules(self, m):  # train_CREMA.py:35-43, 138-145
        enc = [
            x
            for n, x in self.model.encoders[m].named_modules()
            if hasattr(x, "weight") and not re.match("last", n)
        ]
        cls = [
            x
            for n, x in self.heads.heads[m].named_modules()
            if hasattr(x, "weight") and not re.match("last", n)
        ]
        return enc + cls

    def new_stage(self, state, previous, train_batches):  # :379-398
        if previous is not None:  # compute_P_matrix(model, train_loader, config, state) with the old state
            self.compute_P_matrix(previous, train_batches)
        self.state = state
        params = list(self.model.parameters()) + list(self.heads.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.with_P = previous is not None

    def compute_P_matrix(self, m, batches):  # :31-56
        self.model.eval()
        self.fea_in = {}
        modules = self.modules(m)
        handles = [x.register_forward_hook(hook=self.compute_cov) for x in modules]
        with torch.no_grad():
            for batch in batches:
                self.heads.heads[m](self.model.encoders[m](batch.inputs[m]))
        for x in modules:  # get_P_matrix (AudioVideo.py:116-129)
            if not isinstance(x, nn.Linear | nn.Conv2d):
                continue
            _, eigen_value, eigen_vector = torch.svd(self.fea_in[x.weight], some=False)
            max_eigen, min_eigen = torch.max(eigen_value), torch.min(eigen_value)
            learning_matrix = torch.exp(
                CFG["temperature1"] * (-(eigen_value - min_eigen) / (max_eigen - min_eigen))
            )
            self.P_matrix[x.weight] = eigen_vector @ torch.diag(learning_matrix) @ eigen_vector.t()
        for h in handles:
            h.remove()

    def compute_cov(self, module, fea_in, fea_out):  # AudioVideo.py:97-99, 131-136 (Linear layers)
        if isinstance(module, nn.Linear):
            fea = torch.mean(fea_in[0], 0, True)
            cov = torch.mm(fea.transpose(0, 1), fea)
            self.fea_in[module.weight] = (
                cov if module.weight not in self.fea_in else self.fea_in[module.weight] + cov
            )

    def step(self, batch) -> None:  # train_withP :63-157 (train_withoutP: the same without :137-156)
        self.model.train()
        m, mods = self.state, self.mods
        y = F.one_hot(batch.target, self.heads.heads[m].out_layer.out_features).double()
        criterion = nn.CrossEntropyLoss(reduction="none")
        x, targets_a, targets_b, lam = mixup_data(batch.inputs[m], y, CFG["mixup_alpha"])
        fea = self.model.encoders[m](x)
        o = self.heads.heads[m](fea)
        loss_ori = mixup_criterion(criterion, o, targets_a, targets_b, lam)
        disturb_params = list(self.model.encoders[m].parameters())
        disturb_params_cls = list(self.heads.heads[m].parameters())
        grad_list = list(torch.autograd.grad(loss_ori.mean(), disturb_params, retain_graph=True))
        grad_list_cls = list(torch.autograd.grad(loss_ori.mean(), disturb_params_cls, retain_graph=True))
        for params, grads, rho in ((disturb_params, grad_list, CFG["noise_ratio"]),
                                   (disturb_params_cls, grad_list_cls, CFG["noise_ratio_cls"])):  # fmt: skip
            for param, grad_c in zip(params, grads, strict=True):  # :96-116
                if grad_c is not None:
                    noise = rho * 1.0 * (grad_c / torch.norm(grad_c))
                    param.data = param.data + noise
        o_tmp = self.heads.heads[m](fea)
        loss_list = torch.stack(list(F.cross_entropy(o_tmp, y, reduction="none")))
        loss = (1 - CFG["flat_ratio"]) * loss_ori.mean() + CFG["flat_ratio"] * loss_list.mean()
        self.optimizer.zero_grad()
        loss.backward()
        if self.with_P:  # :137-156
            other = mods[1 - mods.index(m)]
            for x_now in self.modules(m):
                if isinstance(x_now, nn.Linear):
                    for x_pre in self.modules(other):
                        if x_now.weight.shape == x_pre.weight.shape:
                            x_now.weight.grad = x_now.weight.grad @ self.P_matrix[x_pre.weight]
        self.grads = snapshot(self.model.parameters())
        self.optimizer.step()


def test_igm_stages_match_the_official_loop(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    mods = tr.ctx.modalities
    ours, ref = Ours(tr), Official(twin(tr.model), twin(tr.method.heads), mods)
    train_batches = list(tr.ctx.iterate("train"))  # float64, the order ours reads
    diff, modified, epoch_now = MaxDiff(), 0, -1
    for epoch, i, batch in training_batches(tr, SPEC["epochs"]):
        if epoch != epoch_now:
            ref.new_stage(mods[epoch % 2], mods[(epoch - 1) % 2] if epoch > 0 else None, train_batches)
            epoch_now = epoch
        rng = (torch.get_rng_state(), np.random.get_state())
        ours.step(epoch, i, batch)
        after = (torch.get_rng_state(), np.random.get_state())
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        ref.step(batch)
        torch.set_rng_state(after[0])
        np.random.set_state(after[1])
        # coefficients: our matrices against the official ones of the paired previous-modality layers
        previous = (
            [x for x in ref.modules(mods[(epoch - 1) % 2]) if isinstance(x, nn.Linear)] if epoch else []
        )
        pairs = [
            (P, ref.P_matrix[x.weight]) for P, x in zip(tr.method.P, previous, strict=True) if P is not None
        ]
        modified += len(pairs)
        P_ours = torch.cat([a.reshape(-1) for a, _ in pairs]) if pairs else torch.zeros(0)
        P_ref = torch.cat([b.reshape(-1) for _, b in pairs]) if pairs else torch.zeros(0)
        diff.add(P_ours, P_ref, ours.grads, ref.grads, tr.model, ref.model)
        heads = zip(tr.method.heads.parameters(), ref.heads.parameters(), strict=True)
        diff.parameters = max(diff.parameters, max((a - b).abs().max().item() for a, b in heads))
    print("igm:", diff, "modified layer-steps:", modified)
    assert diff.steps == 9 and modified > 0
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
