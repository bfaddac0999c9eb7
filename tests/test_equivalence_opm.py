"""OPM: our ``Trainer.train_batch`` against a transcription of the released training step.

Official source: GeWu-Lab/BML_TPAMI2024 @ 8db168f, ``code/models/Classifier.py``: ``custom_autograd``
lines 9-21, ``Modality_drop.execute_drop`` lines 31-56, ``calcu_q`` lines 58-72, ``Classifier.forward``
lines 99-153 (the scores from the detached concat head, ``b / 2`` each, lines 114-143);
``code/main.py::train`` lines 77-171 (warm-up ``epoch <= 5`` line 91, the samples that kept a modality
lines 95-101, the fused loss only, line 104; ``use_modulation`` False in ``config.py`` line 32); AdamW
with weight decay 0.01 (``main.py:267``); ``scripts/train_opm.sh``: q_base 0.5, lam 0.5, p_exe 0.7;
``config.py:41``: ``d = [512, 512]``, here the synthetic feature sizes. The warm-up is one epoch
here (``warmup_epochs: 1``) so that three of the four epochs modulate.

Random draws: the released code decides whether to drop with ``np.random.rand(1) >= 1 - p_exe``
(line 34); the transcription takes the decision our run drew (``torch.rand(()) < p_exe``) and draws
one torch number in its place, so that both sides' Bernoulli masks (line 45, the same
``bernoulli`` over a (B, 1, M) expansion) come from the same generator state. The coefficients
compared are the drop probabilities q. The released rescaling's backward returns theta as theta's own
gradient (lines 9-21) and q keeps the scores' gradient, so a modulated step also sends
``theta * dtheta/dfeatures`` into both encoders; ``opm.py`` does the same (without it: max |Δ| of
gradients 2.3e-3 here).
"""

from __future__ import annotations

import torch
from _equivalence import TWO_MODALITIES, lockstep, make_trainer, snapshot, twin
from torch import nn

Q_BASE, LAM, P_EXE, WARMUP = 0.5, 0.5, 0.7, 1
SPEC = {
    **TWO_MODALITIES,
    "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    "method": "opm",
    "method_params": {"q_base": Q_BASE, "lam": LAM, "p_exe": P_EXE, "warmup_epochs": WARMUP},
}


class custom_autograd(torch.autograd.Function):  # noqa: N801 (the released name), lines 9-21
    @staticmethod
    def forward(ctx, input, theta):
        ctx.save_for_backward(input, theta)
        return input / (1 - theta.item())

    @staticmethod
    def backward(ctx, grad_output):
        input, theta = ctx.saved_tensors
        input_grad = 1 / (1 - theta.item()) * grad_output.clone()
        return input_grad, theta


def calcu_q(performance_1, performance_2, q_base, fix_lambda):  # lines 58-72
    q = torch.tensor([0.0, 0.0], dtype=torch.float64)
    relu = nn.ReLU(inplace=True)
    ratio_1 = torch.tanh(relu(performance_1 / performance_2 - 1))
    ratio_2 = torch.tanh(relu(performance_2 / performance_1 - 1))
    lamda = fix_lambda
    q[0] = q_base * (1 + lamda * ratio_1) if ratio_1 > 0 else 0
    q[1] = q_base * (1 + lamda * ratio_2) if ratio_2 > 0 else 0
    q = torch.clip(q, 0.0, 1.0)
    return q


def execute_drop(fead_list, q, dim_list, exe_drop):  # lines 31-56 (exe_drop: see the docstring)
    B, D = fead_list[0].shape[0], fead_list[0].shape[1]
    torch.rand(())  # in place of np.random.rand(1)
    if not exe_drop:
        return fead_list, torch.ones([B], dtype=torch.int32)
    num_mod = len(fead_list)
    d_sum = sum(dim_list)
    q_sum = sum(dim_list * q)
    theta = q_sum / d_sum
    mask = (
        torch.distributions.Bernoulli(1 - q)
        .sample([B, 1])
        .permute(2, 1, 0)
        .contiguous()
        .reshape(num_mod, B, -1)
    )
    concat_list = torch.stack(fead_list, dim=0)
    concat_list = torch.mul(concat_list, mask)
    concat_list = custom_autograd.apply(concat_list, theta)
    mask = torch.transpose(mask, 0, 1).squeeze(-1)
    update_flag = torch.sum(mask, dim=1) > 0
    cleaned_fea = torch.masked_select(concat_list, update_flag.unsqueeze(-1)).reshape(num_mod, -1, D)
    cleaned_fea = torch.chunk(cleaned_fea, num_mod, dim=0)
    cleaned_fea = [_.squeeze(0) for _ in cleaned_fea]
    return cleaned_fea, update_flag


class Released:
    def __init__(self, model, modalities, executed):
        self.model, self.mods, self.executed = model, modalities, executed
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)  # main.py:267
        self.coeff = self.grads = None

    def forward(self, batch, warm_up):  # Classifier.forward, lines 99-153
        model, label = self.model, batch.target
        out_1, out_2 = (model.encoders[m](batch.inputs[m]) for m in self.mods)
        w = model.head.weight.clone().detach()
        b = model.head.bias.clone().detach()
        d = out_1.shape[1]  # 512 in the released model
        t1 = torch.mm(out_1, torch.transpose(w[:, :d], 0, 1)) + b / 2
        t2 = torch.mm(out_2, torch.transpose(w[:, d:], 0, 1)) + b / 2
        softmax = nn.Softmax(dim=1)
        performance_1 = sum([softmax(t1)[i][int(label[i].item())] for i in range(t1.shape[0])])
        performance_2 = sum([softmax(t2)[i][int(label[i].item())] for i in range(t2.shape[0])])
        B = out_1.shape[0]
        if warm_up == 0:
            self.q = calcu_q(performance_1, performance_2, Q_BASE, fix_lambda=LAM)
            dims = torch.tensor([out_1.shape[1], out_2.shape[1]])
            cleaned_fea, update_flag = execute_drop([out_1, out_2], self.q, dims, self.executed())
            out = model.head(torch.cat(cleaned_fea, dim=1))
            return out, update_flag
        self.q = torch.zeros(2)
        return model.head(torch.cat([out_1, out_2], dim=1)), torch.ones([B], dtype=torch.int32)

    def step(self, batch, epoch, i) -> None:  # main.py::train, lines 86-171
        label = batch.target
        self.optimizer.zero_grad()
        warm_up = 1 if epoch < WARMUP else 0  # :91 (epoch <= 5)
        out, update_flag = self.forward(batch, warm_up)
        if warm_up == 0:
            select_mask = update_flag != 0
            label = label[select_mask]
        loss = nn.CrossEntropyLoss()(out, label)  # :104
        loss.backward()  # :114
        self.coeff = self.q.detach().tolist()
        self.grads = snapshot(self.model.parameters())
        self.optimizer.step()  # :171


def test_opm_step_matches_the_released_classifier(tmp_path):
    tr = make_trainer(tmp_path, epochs=4, **SPEC)
    ref = Released(twin(tr.model), tr.ctx.modalities, lambda: tr.method.executed)
    dropped = []

    def coefficients():
        dropped.append(tr.method.executed and bool(tr.method.q.max() > 0))
        return tr.method.q.tolist()

    diff = lockstep(tr, ref, 4, coefficients, same_rng=True)
    assert diff.steps == 16 and sum(dropped) >= 3  # samples dropped on several steps
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12
