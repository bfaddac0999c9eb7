"""ARM: our ``Trainer.train_batch`` against a transcription of the official training step.

Official source: Gao-xiyuan/ARM @ a96d0ad: ``mmpretrain/models/classifiers/image.py::extract_feat``
lines 208-212 (one backbone per modality), ``mmpretrain/models/necks/gap.py::forward`` lines 36-65
(the neck's ``fc_out`` on the concatenation; outputs fused, image, audio),
``mmpretrain/models/heads/linear_head.py::forward`` lines 61-93, ``cls_head.py``
(``_get_loss`` 84-98, ``train_predict`` / ``_get_train_predictions`` 138-167) and
``mmpretrain/models/necks/MI_tool.py`` (the estimators, transcribed with their loops). Our encoders
stand in for the ResNet-18 backbones and the pooling. Two modalities (image = the first, audio =
the second), float64, SGD with momentum and weight decay as ``configs/arm/resnet18_ks.py``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin

SPEC = {
    "dataset_params": {"modalities": 2, "n_train": 128, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "arm",
    "method_params": {"init_std": None},
}


# --- MI_tool.py, as released ---------------------------------------------------------------------------
def compute_joint_prob_cmi(x, y, z, bins):  # :7-12
    xyz = np.vstack([x, y, z]).T
    joint_counts, _ = np.histogramdd(xyz, bins=[bins, bins, bins])
    return joint_counts / joint_counts.sum()


def entropy(prob):  # :19-21
    prob = prob[prob > 0]
    return -np.sum(prob * np.log(prob))


def compute_joint_prob(x, y, bins):  # :24-27
    joint_counts = np.histogram2d(x, y, bins=bins)[0]
    return joint_counts / joint_counts.sum()


def conditional_entropy(joint_prob, z_prob):  # :35-41
    z_prob = np.where(z_prob > 0, z_prob, 1e-10)
    conditional_prob = joint_prob / z_prob[:, None, None]
    conditional_prob = conditional_prob[conditional_prob > 0]
    return -np.sum(conditional_prob * np.log(conditional_prob))


def mutual_information(x, y, bins=30):  # :43-56
    joint_prob = compute_joint_prob(x, y, bins)
    x_prob, y_prob = joint_prob.sum(axis=1), joint_prob.sum(axis=0)
    mi = 0.0
    for i in range(joint_prob.shape[0]):
        for j in range(joint_prob.shape[1]):
            if joint_prob[i, j] > 0:
                mi += joint_prob[i, j] * np.log(joint_prob[i, j] / (x_prob[i] * y_prob[j]))
    return mi


def normalized_mutual_information(x, y, bins=30):  # :59-70
    mi = mutual_information(x, y, bins)
    joint_prob = compute_joint_prob(x, y, bins)
    x_prob, y_prob = joint_prob.sum(axis=1), joint_prob.sum(axis=0)
    return 2 * mi / (entropy(x_prob) + entropy(y_prob))


def normalized_conditional_mutual_information(x, y, z, bins=30):  # :72-107
    joint_prob = compute_joint_prob_cmi(x, y, z, bins)
    xz_prob, yz_prob, z_prob = (
        joint_prob.sum(axis=(1,)),
        joint_prob.sum(axis=(0,)),
        joint_prob.sum(axis=(0, 1)),
    )
    hx_given_z = conditional_entropy(xz_prob, z_prob)
    hy_given_z = conditional_entropy(yz_prob, z_prob)
    cmi = hx_given_z + hy_given_z - conditional_entropy(joint_prob, z_prob)
    denominator = hx_given_z + hy_given_z
    return cmi / denominator if denominator != 0 else 0


class Official:
    def __init__(self, model, neck_fc_out, head_fc_out, fc, modalities):
        self.model, self.neck_fc_out, self.fc_out, self.fc = model, neck_fc_out, head_fc_out, fc
        self.mods = modalities
        params = list(model.parameters()) + [
            *neck_fc_out.parameters(),
            *head_fc_out.parameters(),
            *fc.parameters(),
        ]
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
        self.coeff = self.grads = None

    def train_predict(self, cls_scores, target):  # cls_head.py:138-167
        out = []
        for cls_score in cls_scores:
            pred_scores = F.softmax(cls_score, dim=1)
            out.append(sum(float(pred_scores[i][target[i]]) for i in range(len(target))) / len(target))
        return out

    def step(self, batch) -> None:
        img, au = (self.model.encoders[m](batch.inputs[m]) for m in self.mods)  # image.py:208-212 + GAP
        outs_all = self.neck_fc_out(torch.cat((img, au), dim=1))  # gap.py:60-61
        feats = (outs_all, img, au)
        cls_scores = [self.fc(feats[0]), self.fc(feats[1]), self.fc(feats[2])]  # linear_head.py:63-66
        prediction = self.train_predict(cls_scores, batch.target)
        cat, img_v, audio = feats[0].view(-1), feats[1].view(-1), feats[2].view(-1)  # :69-71
        nmi_a = normalized_mutual_information(audio.detach().numpy(), cat.detach().numpy())
        nmi_v = normalized_mutual_information(img_v.detach().numpy(), cat.detach().numpy())
        cnmi_a = normalized_conditional_mutual_information(
            audio.detach().numpy(), cat.detach().numpy(), img_v.detach().numpy(), bins=2
        )
        cnmi_v = normalized_conditional_mutual_information(
            img_v.detach().numpy(), cat.detach().numpy(), audio.detach().numpy(), bins=2
        )
        ii_a, ii_v = nmi_a - cnmi_a, nmi_v - cnmi_v  # :76-77
        pcmi_a = prediction[0] * nmi_a + prediction[1] * ii_a  # :78-79
        pcmi_v = prediction[0] * nmi_v + prediction[2] * ii_v
        out = torch.cat(((pcmi_a / pcmi_v) * feats[1], (pcmi_v / pcmi_a) * feats[2]), dim=1)  # :82
        cls_score = self.fc(self.fc_out(out))  # :83-91
        loss = F.cross_entropy(cls_score, batch.target)  # CrossEntropyLoss, avg_factor = batch size
        self.optimizer.zero_grad()
        loss.backward()
        self.coeff = [pcmi_a / pcmi_v, pcmi_v / pcmi_a]
        self.grads = snapshot(self.model.parameters())
        self.optimizer.step()


def test_arm_step_matches_the_official_head(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    mods, m = tr.ctx.modalities, tr.method
    ours, ref = Ours(tr), Official(twin(tr.model), twin(m.neck), twin(m.fuse), twin(m.fc), mods)
    diff, scales = MaxDiff(), []
    for epoch, i, batch in training_batches(tr, 2):
        ours.step(epoch, i, batch)
        ref.step(batch)
        scales.append(ref.coeff)
        diff.add([m.scale[k] for k in mods], ref.coeff, ours.grads, ref.grads, tr.model, ref.model)
        heads = [(m.fuse, ref.fc_out), (m.fc, ref.fc), (m.neck, ref.neck_fc_out)]
        pairs = [(a, b) for x, y in heads for a, b in zip(x.parameters(), y.parameters(), strict=True)]
        diff.parameters = max(diff.parameters, max((a - b).abs().max().item() for a, b in pairs))
    print("arm:", diff, "scales:", scales[0], scales[-1])
    assert diff.steps == 8 and all(abs(s[0] - 1) > 1e-3 for s in scales)  # the features are rescaled
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
