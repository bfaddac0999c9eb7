"""AUG: our ``Trainer.train_batch`` (one optimiser step per modality turn) against a transcription of
the official training loop.

Official source: njustkmg/NeurIPS25-AUG @ 841d079, ``train_CREMAD.py::train_audio_video`` lines 42-89
(both encoders forwarded first; per modality the shared classifier, the boosting loss with one-hot
targets, backward, step, ``zero_grad``; the gradients deleted; the true-class scores), the
assignment after each epoch's evaluation, lines 205-228 (``check = 1`` for runs of 10 epochs or
fewer), ``model/AudioVideo.py::AVGBShareClassifier`` lines 67-104 (``add_layer``, ``classfier``).
The optimiser is built once (line 201), so added layers are never in it. A new layer's random
initial weights are copied from ours (the two sides draw them at different points of the random
stream); everything else is computed independently. Float64, SGD with momentum and weight decay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _equivalence import MaxDiff, Ours, make_trainer, snapshot, training_batches, twin
from torch import nn

SPEC = {
    "dataset_params": {"modalities": 2, "n_train": 128, "n_valid": 32, "n_test": 32},
    "model_params": {"hidden": 16, "feature_dim": 8},
    "batch_size": 32,
    "epochs": 4,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
    "method": "aug",
    "method_params": {"hidden": 12},
}
LAM, MERGE_ALPHA = 1.0, 0.4  # --lam, --merge_alpha defaults


class Official:
    """``AVGBShareClassifier`` (encoders + ``embedding_a/v``, ``fc_out``, ``additional_layers_a/v``)
    and the loop of ``train_CREMAD.py``."""

    def __init__(self, model, classifiers, modalities):
        self.model, self.mods = model, modalities
        self.embedding = {m: classifiers.embedding[m] for m in modalities}
        self.fc_out = classifiers.fc_out
        self.additional_layers = {m: nn.ModuleList() for m in modalities}
        params = list(model.parameters()) + list(classifiers.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)  # :201, once
        self.relu = nn.ReLU()
        self.grads = None

    def classfier(self, x, m):  # AudioVideo.py:75-104
        feature = self.fc_out(self.embedding[m](x).relu())  # embedding_a = Linear + ReLU
        o_fea = feature
        add_fea = None
        i = 0
        layerlen = len(self.additional_layers[m])
        for layer in self.additional_layers[m]:
            addf = self.relu(layer(x))
            add_fea = self.fc_out(addf)
            feature = feature + add_fea
            i = i + 1
            if i < layerlen:
                o_fea = feature
        return feature, o_fea, add_fea

    def add_layer(self, m, hidden_dim, width):  # AudioVideo.py:67-74 (the weights are overwritten)
        new_layer = nn.Linear(hidden_dim, width).double()
        nn.init.xavier_normal_(new_layer.weight)
        nn.init.constant_(new_layer.bias, 0)
        self.additional_layers[m].append(new_layer)

    def start_epoch(self):
        self.score = {m: 0.0 for m in self.mods}

    def step(self, batch) -> None:
        criterion = nn.CrossEntropyLoss(reduction="none")
        y = F.one_hot(batch.target, self.fc_out.out_features).double()  # the dataset's one-hot labels
        self.optimizer.zero_grad()  # :47
        o = {m: self.model.encoders[m](batch.inputs[m]) for m in self.mods}  # :49-50
        outs = {}
        for m in self.mods:  # :51-75
            out, o_fea, add_fea = self.classfier(o[m], m)
            if add_fea is None:
                loss = criterion(out, y).mean()
            else:
                kl = y * o_fea.detach().softmax(1)
                loss = (criterion(out, y).mean() + criterion(o_fea, y).mean() + criterion(add_fea, y).mean()
                        - 0.5 * criterion(add_fea, kl).mean())  # fmt: skip
            loss.backward()
            self.grads = snapshot(self.model.parameters())
            self.optimizer.step()
            self.optimizer.zero_grad()
            outs[m] = out
        for m in self.mods:  # :82-86
            self.score[m] += sum(
                [F.softmax(outs[m], 1)[i][torch.argmax(y[i])] for i in range(y.size(0))]
            ).item()
        for p in list(self.model.parameters()) + list(self.fc_out.parameters()):  # :87-89
            if p.grad is not None:
                del p.grad

    def end_epoch(self):
        """:220-228: the layer to add (None: none)."""
        a, v = self.mods
        ratio_a = self.score[a] / self.score[v]
        if ratio_a > LAM + 0.01:
            return v
        if ratio_a < LAM - 0.01:
            return a
        return None


def test_aug_turns_match_the_official_loop(tmp_path):
    tr = make_trainer(tmp_path, **SPEC)
    ours, mods = Ours(tr), tr.ctx.modalities
    clf = tr.method.classifiers
    ref = Official(twin(tr.model), twin(clf), mods)
    diff, added, epoch_now = MaxDiff(), [], -1
    for epoch, i, batch in training_batches(tr, SPEC["epochs"]):
        if epoch != epoch_now:
            if epoch_now >= 0:
                ours.end_epoch()
                pending = ref.end_epoch()
                assert tr.method.pending == pending
                if pending is not None:
                    ref.add_layer(
                        pending, clf.embedding[pending].in_features, SPEC["method_params"]["hidden"]
                    )
                    added.append(pending)
            ref.start_epoch()
            epoch_now = epoch
        ours.step(epoch, i, batch)  # at i == 0: our pending learner is added by on_epoch_start
        for m in mods:
            assert len(clf.learners[m]) == len(ref.additional_layers[m])
            for g, h in zip(clf.learners[m], ref.additional_layers[m], strict=True):
                if not torch.equal(g.weight, h.weight):  # the new layer: its random draw copied over
                    h.load_state_dict(g.state_dict())
        ref.step(batch)
        ours_scores = [tr.method.scores[m] for m in mods]
        diff.add(ours_scores, [ref.score[m] for m in mods], ours.grads, ref.grads, tr.model, ref.model)
        trained = [(clf.embedding[m], ref.embedding[m]) for m in mods] + [(clf.fc_out, ref.fc_out)]
        pairs = [(a, b) for x, y in trained for a, b in zip(x.parameters(), y.parameters(), strict=True)]
        diff.parameters = max(diff.parameters, max((a - b).abs().max().item() for a, b in pairs))
    print("aug:", diff, "learners added:", added)
    assert diff.steps == 16 and added  # the boosting branch ran
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
