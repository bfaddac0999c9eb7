"""ReconBoost: our ``Trainer`` (two stages of boosting and correction) against the released loop.

Official source: huacong/ReconBoost @ 441eb51 (the training files are unchanged at 14ab57a), ``train.py::
main`` lines 235-402 (stage 0's constant ``c0`` line 100-101 broadcast to (B, 1), lines 326-328; the
boosting loss lines 339-340; phase 2 lines 369-399, a fresh SGD over ``net_ensemble.parameters()``),
``models/dynamic_net.py::DynamicNet`` lines 26-171 (``forward`` with ``mask_model`` under no_grad and
the boost rate outside it, ``forward_grad``, ``parameters`` with the common head); argparse defaults
weight1 5, weight2 1, boost_rate 1 (lines 57-77). Two stages (audio, then visual: modality 0, then 1),
one boosting and one correction epoch each.

The released phases have their own SGD (momentum 0.9, weight decay 5e-4), created afresh per phase
(lines 296, 371); ours steps one optimiser throughout (``reconboost.py``'s stated deviation). With
momentum 0 (here) SGD keeps no state, so the two are the same algorithm and the test compares
everything else. ``torch.as_tensor(out_join, dtype=torch.float32)`` (lines 326-328) is read in the
harness's float64. The GA term is left out: it detaches both arguments (lines 346-350), no gradient.
The coefficient compared is the boost rate after each step.
"""

from __future__ import annotations

import torch
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, snapshot, twin
from torch import nn

W1, W2, BOOST_RATE = 5.0, 1.0, 1.0
SPEC = {
    **TWO_MODALITIES,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 5e-4},
    "method": "reconboost",
    "method_params": {"weight1": W1, "weight2": W2, "boost_rate": BOOST_RATE, "epochs_per_stage": 1,
                      "correct_epochs": 1},
}  # fmt: skip


class Released:
    def __init__(self, model, head, boost_rate, modalities, n_class):
        self.model, self.head, self.mods, self.n_class = model, head, modalities, n_class
        self.boost_rate = boost_rate  # DynamicNet.boost_rate, :33
        self.extra = [head, nn.ParameterList([boost_rate])]
        self.models, self.models_name = [], []  # the ensemble, DynamicNet.add :45-57
        self.c0 = 0.37  # init_model(): random.random(), :100-101; any constant: softmax over one column is 1
        self.coeff = self.grads = None

    def learner(self, name):  # model = encoder with model.fc = net_ensemble.head (:283-284)
        return lambda x: self.head(self.model.encoders[name](x))

    def forward(self, batch, mask_model):  # DynamicNet.forward, :96-135
        if len(self.models) == 0:
            return self.c0
        prediction = None
        with torch.no_grad():
            for name in self.models_name:
                if name == mask_model:
                    continue
                pred = self.learner(name)(batch.inputs[name])
                prediction = pred if prediction is None else prediction + pred
        return self.boost_rate * prediction

    def forward_grad(self, batch):  # :137-171
        prediction = None
        for name in self.models_name:
            pred = self.learner(name)(batch.inputs[name])
            prediction = pred if prediction is None else prediction + pred
        return self.boost_rate * prediction

    def parameters(self, phase, model_name):
        if phase == "boost":  # model.parameters(), :296
            return [*self.model.encoders[model_name].parameters(), *self.head.parameters()]
        # net_ensemble.parameters(), :59-73 (common_space: the models without their fc, the head, the rate)
        return [p for n in self.models_name for p in self.model.encoders[n].parameters()] + [
            *self.head.parameters(),
            self.boost_rate,
        ]

    def step(self, batch, epoch, i) -> None:
        stage, phase = epoch // 2, ("boost", "correct")[epoch % 2]
        model_name = self.mods[stage % 2]  # schedule_model
        if i == 0:
            if phase == "correct":
                self.models_name = [n for n in self.models_name if n != model_name] + [model_name]  # add
                self.models = self.models_name
            lr = 0.05  # modality_lr = ensemble_lr here
            self.optimizer = torch.optim.SGD(
                self.parameters(phase, model_name), lr=lr, momentum=0, weight_decay=5e-4
            )
        lbl = batch.target
        if phase == "boost":  # :304-356
            out_join = self.forward(batch, mask_model=model_name)
            if stage == 0:
                out_join = torch.as_tensor(out_join, dtype=torch.float64).view(-1, 1).expand(len(lbl), 1)
            else:
                out_join = torch.as_tensor(out_join, dtype=torch.float64)
            out_obj = self.learner(model_name)(batch.inputs[model_name])
            target = torch.zeros(len(lbl), self.n_class, dtype=torch.float64).scatter_(1, lbl.view(-1, 1), 1)
            boosting_loss = -W1 * (target * out_obj.log_softmax(1)).mean(-1) + W2 * (
                target * out_join.detach().softmax(1) * out_obj.log_softmax(1)
            ).mean(-1)
            self.zero_grad()
            boosting_loss.mean().backward()
        else:  # :372-399
            out = self.forward_grad(batch)
            loss = nn.CrossEntropyLoss()(out, lbl)
            self.zero_grad()
            loss.backward()
        self.grads = snapshot([*self.model.parameters(), *self.head.parameters(), self.boost_rate])
        self.optimizer.step()
        self.coeff = [self.boost_rate.item()]  # after the step, as ours is read

    def zero_grad(self):
        for p in [*self.model.parameters(), *self.head.parameters(), self.boost_rate]:
            p.grad = None


def test_reconboost_matches_the_released_stages(tmp_path):
    tr = make_trainer(tmp_path, epochs=4, **SPEC)
    method = tr.method
    method.beta.data = method.beta.data.double()  # a bare Parameter: make_trainer doubles modules only
    ref = Released(
        twin(tr.model), twin(method.head), twin(method.beta), tr.ctx.modalities, tr.task.num_classes
    )
    rates = []

    def coefficients():
        rates.append(method.beta.item())
        return [rates[-1]]

    diff = lockstep(tr, ref, 4, coefficients, extra=[method.head, nn.ParameterList([method.beta])])
    assert diff.steps == 16 and rates[-1] != BOOST_RATE  # the correction phases trained the rate
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
