from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from _equivalence import side_by_side_float64, two_modality_trainer
from _method_helpers import assert_resume_is_exact, first_batch, grads_after, trainer

from mmbalance.methods.amss import AMSS, AMSSParams, amss_coefficients, filter_mask
from mmbalance.models.resnet_av import ResNetAVParams, build_resnet_av
from mmbalance.training.method import MethodNotApplicable


def official_coefficients(a_out, v_out, a, v, label_single, T=0.2):
    """njustkmg/TPAMI-AMSS AMSS/train_test.py:38-97 (modal_caculate_MI), labels already single."""

    def limit_number(num):
        if torch.isnan(num):
            return torch.tensor(0.5)
        return torch.clamp(num, 0.1, 0.9)

    label_counts = torch.bincount(label_single)
    label_probs = label_counts.float() / len(label_single)
    criterion = nn.CrossEntropyLoss()
    softmax = nn.Softmax(dim=1)
    HY = criterion(label_probs, label_probs)
    score_v = -criterion(v_out, label_single)
    score_a = -criterion(a_out, label_single)
    pa = softmax(a)
    pv = softmax(v)
    Ha = criterion(a, pa)
    Hv = criterion(v, pv)
    if (score_a + HY + 0.5) <= 0 or (score_v + HY + 0.5) <= 0:
        return torch.tensor(0.5), torch.tensor(0.5)
    ratio_v = (score_v + HY + 0.5) / Hv
    ratio_a = (score_a + HY + 0.5) / Ha
    t_v = ratio_v / T
    t_a = ratio_a / T
    coeff_a = torch.exp(t_v) / (torch.exp(t_v) + torch.exp(t_a))
    coeff_v = torch.exp(t_a) / (torch.exp(t_v) + torch.exp(t_a))
    return limit_number(coeff_a), limit_number(coeff_v)


def official_amss_step(model, _extra, batch, _ctx, isbias=0):
    """train_test.py:186-308 with sample_mode 'Adaptive', gn_mode 'gn', mask_ffn inert (as released);
    the kernels are the MLP encoders' weight matrices, so sum over dim 1 replaces dim (1, 2, 3)."""
    y = batch.target
    m0, m1 = model.modalities
    a, v = model.encoders[m0](batch.inputs[m0]), model.encoders[m1](batch.inputs[m1])
    out = model.head(torch.cat((a, v), dim=1))
    d, w, b = a.shape[1], model.head.weight, model.head.bias
    v_out = torch.mm(v, torch.transpose(w[:, d:], 0, 1)) + b / 2
    a_out = torch.mm(a, torch.transpose(w[:, :d], 0, 1)) + b / 2
    coeff_a, coeff_v = (c.item() for c in official_coefficients(a_out, v_out, a, v, y))
    nn.CrossEntropyLoss()(out, y).backward()
    for m, coeff in ((m0, coeff_a), (m1, coeff_v)):
        for parms in model.encoders[m].parameters():
            if parms.dim() < 2:
                continue
            gn = torch.sum(parms.grad.data**2, dim=1)
            mask_miu = gn
            p_a = math.ceil(len(mask_miu) * coeff)
            important_gn = mask_miu / mask_miu.sum()
            max_p_indices = torch.multinomial(important_gn, num_samples=p_a, replacement=False)
            mask_a = torch.zeros_like(mask_miu)
            if isbias == 1:
                mask_a[max_p_indices] = 1 / (important_gn[max_p_indices] + 1 / len(important_gn))
            else:
                mask_a[max_p_indices] = 1
            parms.grad *= mask_a.unsqueeze(dim=1).expand_as(parms.grad)
    return [coeff_a, coeff_v]


def test_coefficients_hand_computed():
    # labels (0, 1): pi = (1/2, 1/2), HY = log 2; zero shares: s = -log 2, so s + HY + 0.5 = 0.5.
    # H_a = log 4 = 1.3862944 (uniform over 4 features); H_v = 1.2424533 (softmax (1/2, 1/6, 1/6, 1/6)).
    # t = 0.5 / H / 0.2 = (1.8033688, 2.0121480); c_a = e^{t_v} / (e^{t_a} + e^{t_v}) = 0.5520060
    target = torch.tensor([0, 1])
    shares = [torch.zeros(2, 2), torch.zeros(2, 2)]
    fa = torch.zeros(2, 4)
    fv = torch.tensor([[math.log(3.0), 0.0, 0.0, 0.0]] * 2)
    coeff = amss_coefficients(shares, [fa, fv], target, 0.2)
    assert coeff == pytest.approx([0.5520060, 0.4479940], abs=1e-6)
    ref = official_coefficients(shares[0], shares[1], fa, fv, target)
    assert coeff == pytest.approx([c.item() for c in ref], abs=1e-6)
    # a modality far below chance: both keep half (train_test.py:86-87)
    assert amss_coefficients([torch.tensor([[-9.0, 9.0], [9.0, -9.0]])] * 2, [fa, fv], target, 0.2) == [
        0.5,
        0.5,
    ]
    # three modalities: 1 - softmax(t); equal inputs keep 2/3 each
    assert amss_coefficients([torch.zeros(2, 2)] * 3, [fa] * 3, target, 0.2) == pytest.approx([2 / 3] * 3)


def test_filter_masks():
    grad = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]])  # row importances 1, 4, 9, 0
    w = torch.ones(4, 2)
    topk = filter_mask(grad, w, 0.5, AMSSParams(sample_mode="topk"))
    assert topk.tolist() == [0.0, 1.0, 1.0, 0.0]  # ceil(4 * 0.5) = 2 largest
    plus = filter_mask(grad, w, 0.5, AMSSParams(plus=True))
    kept = plus.nonzero().squeeze(1)
    assert len(kept) == 2 and 3 not in kept.tolist()  # sampled by importance; the zero row is never drawn
    imp = torch.tensor([1.0, 4.0, 9.0, 0.0]) / 14
    torch.testing.assert_close(plus[kept], 1 / (imp[kept] + 1 / 4))
    gn_wn = filter_mask(grad, torch.tensor([[1.0, 0.0], [0.0, 4.0], [1.0, 0.0], [1.0, 0.0]]), 0.25,
                        AMSSParams(sample_mode="topk", gn_mode="gn_wn"))  # fmt: skip
    assert gn_wn.tolist() == [0.0, 0.0, 1.0, 0.0]  # importances 1, 4/16, 9, 0
    assert filter_mask(torch.zeros(3, 2), torch.ones(3, 2), 0.5, AMSSParams()).tolist() == [1.0] * 3


def test_masks_whole_rows_of_encoder_weights_only(tmp_path):
    tr = trainer(tmp_path, "amss")
    batch = first_batch(tr)
    plain = grads_after(tr, batch, hook=False)
    masked = grads_after(tr, batch)
    names = {id(p): n for n, p in tr.model.named_parameters()}
    touched = set()
    for i, m in enumerate(tr.modalities):
        chosen = tr.method.masked[m]
        assert chosen and all(p.dim() >= 2 for p in chosen)
        for p in chosen:
            n = names[id(p)]
            touched.add(n)
            kept = [r for r in range(p.shape[0]) if masked[n][r].abs().sum() > 0]
            for r in kept:
                torch.testing.assert_close(masked[n][r], plain[n][r])
            assert len(kept) <= math.ceil(p.shape[0] * tr.method.coeff[i])
            assert len(kept) < p.shape[0]
    for n in plain.keys() - touched:
        assert torch.equal(masked[n], plain[n])


@pytest.mark.parametrize("isbias", [0, 1])
def test_equivalent_to_the_official_step(tmp_path, isbias):
    tr = two_modality_trainer(tmp_path, "amss", plus=bool(isbias))

    def step(model, extra, batch, ctx):
        return official_amss_step(model, extra, batch, ctx, isbias=isbias)

    diff = side_by_side_float64(tr, step, steps=4, same_rng=True, coefficients=lambda: tr.method.coeff)
    assert diff.steps == 4
    assert diff.coefficients < 1e-12 and diff.gradients < 1e-12 and diff.parameters < 1e-12


def official_names(model, modality):
    """Our ResNet encoder's parameters under the released backbone's names (``body.4`` is ``layer1``, ...)."""
    trunk = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    names = {}
    for n, p in model.encoders[modality].named_parameters():
        _, index, rest = n.split(".", 2) if n.count(".") > 1 else (*n.split("."), "")
        names[id(p)] = f"{modality}_net.{trunk[int(index)]}.{rest}".rstrip(".")
    return names


def test_residual_selection_is_the_official_name_filter(tmp_path):
    model = build_resnet_av(
        {"audio": 1, "visual": 3}, {"audio": False, "visual": True}, 4, ResNetAVParams(width=8)
    )
    method = AMSS()
    method.build(SimpleNamespace(model=model, modalities=model.modalities))
    for m in model.modalities:
        names = official_names(model, m)
        # train_test.py:243, 276: 'layer' and 'conv' in the name, a 4-D gradient
        official = {i for i, n in names.items() if "layer" in n and "conv" in n}
        official = {id(p) for p in model.encoders[m].parameters() if id(p) in official and p.dim() == 4}
        chosen = {id(p) for p in method.masked[m]}
        assert chosen == official and len(chosen) == 16  # 4 layers x 2 blocks x 2 convolutions
        stem = model.encoders[m].body[0].weight
        shortcuts = [p for n, p in model.encoders[m].named_parameters() if "downsample" in n and p.dim() == 4]
        assert id(stem) not in chosen and len(shortcuts) == 3 and not {id(p) for p in shortcuts} & chosen
    # params: conv takes the stem and the shortcuts too
    conv = AMSS(AMSSParams(params="conv"))
    conv.build(SimpleNamespace(model=model, modalities=model.modalities))
    assert len(conv.masked["audio"]) == 16 + 1 + 3


def test_segmentation_conv_kernels_and_refusals(tmp_path):
    tr = trainer(tmp_path, "amss", task="segmentation", params="conv")
    assert all(p.dim() == 4 for ps in tr.method.masked.values() for p in ps)
    assert math.isfinite(tr.train_batch(first_batch(tr)))
    with pytest.raises(MethodNotApplicable, match="no classes"):
        trainer(tmp_path, "amss", task="regression")
    with pytest.raises(MethodNotApplicable, match="selects no tensor"):
        trainer(tmp_path, "amss", params="conv")
    # no residual block in the synthetic MLP encoders: every weight, as params: weights
    default, weights = trainer(tmp_path, "amss"), trainer(tmp_path, "amss", params="weights")
    assert [len(v) for v in default.method.masked.values()] == [
        len(v) for v in weights.method.masked.values()
    ]
    assert all(default.method.masked.values())


def test_resume_is_exact(tmp_path, monkeypatch):
    assert_resume_is_exact(tmp_path, monkeypatch, "amss", sample_mode="random")
