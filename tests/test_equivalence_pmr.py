"""PMR: our ``Trainer`` (``train_batch`` and the epoch hooks) against a transcription of the released loop.

Official source: fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48, ``main_Prototype_grad.py``: ``EU_dist``
lines 69-75, ``train_epoch`` lines 120-219 (concat fusion, ``--modulation Proto``),
``calculate_prototype`` lines 383-441, the epoch loop lines 532-557, SGD line 464. Two modalities,
momentum 0.2 (the argparse default, so that its start is tested), alpha 1.

The released prototypes read the first ``len(loader) // 10`` batches of the *shuffled* train
loader (a fresh order per call); the transcription is handed the same draw our runner makes for
that call (``Trainer.loader(..., stream=1)``, what ``ctx.iterate(shuffle_round=k)`` reads), since
no two programs share a shuffle.
"""

from __future__ import annotations

import torch
from _equivalence import MaxDiff, Ours, double, make_trainer, snapshot, training_batches, twin
from torch import nn

MOMENTUM, ALPHA = 0.2, 1.0
SPEC = {
    "dataset_params": {"modalities": 2, "n_train": 128, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "pmr",
    "method_params": {"alpha": ALPHA, "momentum": MOMENTUM},
}


def EU_dist(x1, x2):  # noqa: N802 (the released name), lines 69-75
    d_matrix = torch.zeros(x1.shape[0], x2.shape[0], dtype=x1.dtype)
    for i in range(x1.shape[0]):
        for j in range(x2.shape[0]):
            d = torch.sqrt(torch.dot((x1[i] - x2[j]), (x1[i] - x2[j])))
            d_matrix[i, j] = d
    return d_matrix


def calculate_prototype(model, dataloader, epoch, n_classes, modalities, a_proto=None, v_proto=None):
    """Lines 383-441 (not AVE: stops after len(dataloader) // 10 batches)."""
    audio, visual = modalities
    dim = model.encoders[audio].out_dim
    audio_prototypes = torch.zeros(n_classes, dim, dtype=torch.float64)  # float64: the model is
    visual_prototypes = torch.zeros(n_classes, dim, dtype=torch.float64)
    count_class = [0 for _ in range(n_classes)]
    model.eval()
    with torch.no_grad():
        sample_count = 0
        all_num = len(dataloader)
        for batch in dataloader:
            batch = double(batch)
            o = model(batch.inputs)
            a, v, label = o.features[audio], o.features[visual], batch.target
            for c, lab in enumerate(label):
                lab = lab.long()
                count_class[lab] += 1
                audio_prototypes[lab, :] += a[c, :]
                visual_prototypes[lab, :] += v[c, :]
            sample_count += 1
            if sample_count >= all_num // 10:
                break
    for c in range(audio_prototypes.shape[0]):
        audio_prototypes[c, :] /= count_class[c]
        visual_prototypes[c, :] /= count_class[c]
    if epoch <= 0:
        return audio_prototypes, visual_prototypes
    audio_prototypes = (1 - MOMENTUM) * audio_prototypes + MOMENTUM * a_proto
    visual_prototypes = (1 - MOMENTUM) * visual_prototypes + MOMENTUM * v_proto
    return audio_prototypes, visual_prototypes


class Released:
    def __init__(self, model, modalities):
        self.model, self.modalities = model, modalities
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)  # :464
        self.coeff = self.grads = None

    def step(self, batch, epoch, audio_proto, visual_proto, modulation_starts=0, modulation_ends=100) -> None:
        """train_epoch, one iteration (lines 126-219), concat fusion."""
        model, label = self.model, batch.target
        criterion, softmax = nn.CrossEntropyLoss(), nn.Softmax(dim=1)
        self.optimizer.zero_grad()  # :126
        o = model(batch.inputs)  # :130
        a, v, out = o.features[self.modalities[0]], o.features[self.modalities[1]], o.pred
        audio_sim = -EU_dist(a, audio_proto)  # :152
        visual_sim = -EU_dist(v, visual_proto)  # :153
        if modulation_starts <= epoch <= modulation_ends:  # :156
            score_a_p = sum([softmax(audio_sim)[i][label[i]] for i in range(audio_sim.size(0))])  # :158
            score_v_p = sum([softmax(visual_sim)[i][label[i]] for i in range(visual_sim.size(0))])  # :159
            ratio_a_p = score_a_p / score_v_p  # :160
            loss_proto_a = criterion(audio_sim, label)  # :166
            loss_proto_v = criterion(visual_sim, label)  # :167
            if ratio_a_p > 1:  # :169-177
                beta, lam = 0, 1 * ALPHA
            elif ratio_a_p < 1:
                beta, lam = 1 * ALPHA, 0
            else:
                beta, lam = 0, 0
            loss = criterion(out, label) + beta * loss_proto_a + lam * loss_proto_v  # :178
        else:
            loss = criterion(out, label)  # :182
        loss.backward()  # :219
        self.coeff = [beta, lam]
        self.grads = snapshot(model.parameters())
        self.optimizer.step()


def test_pmr_matches_the_released_loop_prototypes_included(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ours, ref = Ours(tr), Released(twin(tr.model), tr.ctx.modalities)
    n_classes, mods = tr.task.num_classes, tr.ctx.modalities
    diff, proto_diff, rounds, switched = MaxDiff(), 0.0, 0, set()

    def released_prototypes(epoch, old=(None, None)):
        nonlocal rounds
        loader = tr.loader("train", shuffle=True, epoch=rounds, stream=1)  # the k-th shuffled draw
        rounds += 1
        return calculate_prototype(ref.model, loader, epoch, n_classes, mods, *old)

    protos = released_prototypes(0)  # lines 532-539, before training
    ref.model.train()
    for epoch, i, batch in training_batches(tr, 3):  # lines 541-557
        ours.step(epoch, i, batch)
        if i == 0:
            ours_protos = [tr.method.prototypes[m] for m in mods]
            proto_diff = max(
                proto_diff, *((p - q).abs().max().item() for p, q in zip(ours_protos, protos, strict=True))
            )
        ref.step(batch, epoch, *protos)
        switched.add(tuple(ref.coeff))
        diff.add(tr.method.coeff, ref.coeff, ours.grads, ref.grads, tr.model, ref.model)
        if i == tr.steps_per_epoch - 1:
            ours.end_epoch()
            protos = released_prototypes(epoch, protos)
            ref.model.train()
    print(f"pmr: {diff}; prototypes {proto_diff:.3g}")
    assert diff.steps == 12 and len(switched) > 1  # the hard switch went both ways
    assert proto_diff < 1e-12
    assert diff.coefficients == 0 and diff.gradients < 1e-12 and diff.parameters < 1e-12
