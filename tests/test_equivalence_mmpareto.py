"""MMPareto: our ``Trainer.train_batch`` against a transcription of the official training step.

Official source: GeWu-Lab/MMPareto_ICML2024 @ a339db3, ``code/MMPareto.py::train_epoch`` lines 76-209
(encoder parameters: names with 'audio' / 'visual' and without 'head', lines 76-84 and 184-207; three
backward passes with cloned gradients, lines 117-147; cosines, lines 149-150; Pareto weights, lines
162-174; the summed loss and the per-tensor rescaling with gamma 1.5, lines 178-207) and
``code/min_norm_solvers.py`` (``_min_norm_element_from2`` lines 9-30, ``_min_norm_2d`` lines 32-58,
``find_min_norm_element`` lines 92-129 for two vectors). Two modalities; SGD as the official script.
The unimodal heads are our model's (two layers; the official ones are one Linear each).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin
from torch import nn

SPEC = {
    "dataset_params": {"modalities": 2, "n_train": 128, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "mmpareto",
}


def _min_norm_element_from2(v1v1, v1v2, v2v2):  # min_norm_solvers.py:9-30
    if v1v2 >= v1v1:
        return 0.999, v1v1
    if v1v2 >= v2v2:
        return 0.001, v2v2
    gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def find_min_norm_element(vecs):  # min_norm_solvers.py:32-58 and 92-129, n = 2
    dps = {}
    for i, j in [(0, 1)]:
        dps[(i, j)] = sum(torch.mul(vecs[i][k], vecs[j][k]).sum().data.cpu() for k in range(len(vecs[i])))
        dps[(i, i)] = sum(torch.mul(vecs[i][k], vecs[i][k]).sum().data.cpu() for k in range(len(vecs[i])))
        dps[(j, j)] = sum(torch.mul(vecs[j][k], vecs[j][k]).sum().data.cpu() for k in range(len(vecs[i])))
    c, d = _min_norm_element_from2(dps[(0, 0)], dps[(0, 1)], dps[(1, 1)])
    c = c.numpy() if torch.is_tensor(c) else c
    return np.array([c, 1 - c]), d


class Official:
    def __init__(self, model, heads, modalities):
        self.model, self.heads, (self.audio, self.visual) = model, heads, modalities
        params = list(model.parameters()) + list(heads.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
        # lines 76-84: the encoders' tensors (our encoders[m]; the official names contain audio / visual)
        self.record = {m: list(model.encoders[m].named_parameters()) for m in modalities}
        self.coeff = self.grads = None

    def step(self, batch) -> None:
        criterion, model, label = nn.CrossEntropyLoss(), self.model, batch.target
        self.optimizer.zero_grad()  # :93
        o = model(batch.inputs)  # :97
        h = self.heads(model, o)
        out, out_a, out_v = o.pred, h[self.audio], h[self.visual]
        loss_mm, loss_a, loss_v = criterion(out, label), criterion(out_a, label), criterion(out_v, label)
        losses, all_loss = [loss_mm, loss_a, loss_v], ["both", "audio", "visual"]  # :110-111
        grads = {self.audio: {}, self.visual: {}}
        for idx, loss_type in enumerate(all_loss):  # :117-147
            losses[idx].backward(retain_graph=True)
            mods = {"both": [self.audio, self.visual], "audio": [self.audio], "visual": [self.visual]}[
                loss_type
            ]
            for m in mods:
                grads[m][loss_type] = {n: p.grad.data.clone() for n, p in self.record[m]}
                grads[m][loss_type]["concat"] = torch.cat(
                    [grads[m][loss_type][n].flatten() for n, _ in self.record[m]]
                )
            self.optimizer.zero_grad()
        ks = {}
        for m, task in ((self.audio, "audio"), (self.visual, "visual")):  # :149-174
            cos = F.cosine_similarity(grads[m]["both"]["concat"], grads[m][task]["concat"], dim=0)
            if cos > 0:
                ks[m] = [0.5, 0.5]
            else:  # the "concat" entry rides along in the lists, as released (it doubles every dot product)
                ks[m], _ = find_min_norm_element([list(grads[m][t].values()) for t in ("both", task)])
        gamma = 1.5  # :178
        loss = loss_mm + loss_a + loss_v  # :180
        loss.backward()  # :181
        for m, task in ((self.audio, "audio"), (self.visual, "visual")):  # :184-207
            for name, param in self.record[m]:  # (names split on '_' / '.', 'head' skipped: encoders only)
                three_norm = torch.norm(param.grad.data.clone())
                new_grad = 2 * ks[m][0] * grads[m]["both"][name] + 2 * ks[m][1] * grads[m][task][name]
                new_norm = torch.norm(new_grad)
                diff = three_norm / new_norm
                param.grad = diff * new_grad * gamma if diff > 1 else new_grad * gamma
        self.coeff = [float(ks[self.audio][0]), float(ks[self.visual][0])]
        self.grads = snapshot(model.parameters())
        self.optimizer.step()  # :209


def test_mmpareto_step_matches_the_official_train_epoch(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    mods = tr.ctx.modalities
    ours, ref = Ours(tr), Official(twin(tr.model), twin(tr.method.heads), mods)
    diff, solved = MaxDiff(), False
    for epoch, i, batch in training_batches(tr, 2):
        ours.step(epoch, i, batch)
        ref.step(batch)
        solved |= any(k != 0.5 for k in ref.coeff)
        diff.add([tr.method.k[m][0] for m in mods], ref.coeff, ours.grads, ref.grads, tr.model, ref.model)
    print("mmpareto:", diff, "(min-norm solved:", solved, ")")
    assert diff.steps == 8
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
