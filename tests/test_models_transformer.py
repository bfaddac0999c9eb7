"""The CGGM MSA model: positional embedding, transformer, head and classifier against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from mmbalance.models.base import ConcatFusion
from mmbalance.models.transformer import (
    MSAModelParams,
    ResidualHead,
    SequenceFusion,
    SequenceTransformer,
    build_msa_model,
    sinusoidal_positions,
)

TINY = MSAModelParams(proj_dim=8, num_heads=2, layers=3, cls_layers=1)
DIMS = {"text": 6, "audio": 3, "vision": 4}


def batch(b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = {"text": 5, "audio": 7, "vision": 4}
    return {m: torch.randn(b, lengths[m], d, generator=g) for m, d in DIMS.items()}


def test_sinusoidal_positions_by_hand():
    # dim 4: half 2, frequencies exp(-k ln(10000) / (half - 1)) = [1, 1e-4]; positions start at 1
    emb = sinusoidal_positions(2, 4)
    expected = torch.tensor(
        [[math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)],
         [math.sin(2), math.sin(2e-4), math.cos(2), math.cos(2e-4)]]
    )  # fmt: skip
    torch.testing.assert_close(emb, expected)
    assert sinusoidal_positions(3, 5)[:, 4].eq(0).all()  # odd size: a zero column


def test_zero_layer_transformer_is_scaled_input_plus_positions_then_layernorm():
    t = SequenceTransformer(8, 0, TINY).eval()
    x = torch.randn(2, 3, 8)
    expected = F.layer_norm(math.sqrt(8) * x + sinusoidal_positions(3, 8), (8,))
    torch.testing.assert_close(t(x), expected)


def test_residual_head_formula():
    head = ResidualHead(4, 2, dropout=0.5).eval()
    z = torch.randn(3, 4)
    expected = head.out_layer(z + head.proj2(torch.relu(head.proj1(z))))
    torch.testing.assert_close(head(z), expected)


def test_transformer_fusion_model():
    torch.manual_seed(0)
    model = build_msa_model(DIMS, 1, TINY).eval()
    assert (
        isinstance(model.fusion, SequenceFusion) and len(model.fusion.transformer.layers) == TINY.layers - 2
    )
    assert all(len(enc.transformer.layers) == TINY.layers for enc in model.encoders.values())
    x = batch()
    out = model(x)
    assert out.pred.shape == (2, 1) and out.fused.shape == (2, 8)
    assert {m: tuple(h.shape) for m, h in out.aux.items()} == {"text": (2, 5, 8), "audio": (2, 7, 8),
                                                               "vision": (2, 4, 8)}  # fmt: skip
    # fusion: concatenation along time in modality order, step 0 of the fusion transformer's output
    seq = torch.cat([out.aux[m] for m in DIMS], dim=1)
    torch.testing.assert_close(out.fused, model.fusion.transformer(seq)[:, 0])
    torch.testing.assert_close(out.features["vision"], out.aux["vision"][:, 0])
    # the 1x1 projection belongs to the encoder, so methods that scale an encoder scale it too
    assert any(p is model.encoders["audio"].proj.weight for p in model.encoder_parameters("audio"))
    with pytest.raises(TypeError, match="late concat fusion"):
        model.unimodal_logits(out.features)


@pytest.mark.parametrize("shared", [True, False])
def test_cggm_classifier_reads_the_sequence(shared):
    torch.manual_seed(0)
    p = TINY.model_copy(update={"cls_shared_proj": shared})
    model = build_msa_model(DIMS, 4, p).eval()
    out = model(batch())
    clf = model.unimodal_classifier("audio", 4).eval()
    h = model.classifier_input(out, "audio")
    assert h is out.aux["audio"]
    assert (clf.proj2 is clf.proj1) == shared  # the released code applies proj1 twice
    z = clf.bone(h.detach())[:, 0]
    expected = clf.out_layer(torch.relu(clf.proj2(clf.proj1(z))))
    torch.testing.assert_close(clf(h.detach()), expected)
    assert len(clf.bone.layers) == p.cls_layers


def test_concat_fusion_gives_additive_unimodal_logits():
    torch.manual_seed(0)
    model = build_msa_model(DIMS, 4, TINY.model_copy(update={"fusion": "concat", "pool": "mean"})).eval()
    assert isinstance(model.fusion, ConcatFusion) and isinstance(model.head, torch.nn.Linear)
    out = model(batch(3))
    torch.testing.assert_close(out.features["text"], out.aux["text"].mean(dim=1))
    shares = model.unimodal_logits(out.features)
    torch.testing.assert_close(sum(shares.values()), out.pred)


def test_one_modality_model_and_param_validation():
    model = build_msa_model({"audio": 3}, 2, TINY)
    assert model(batch()).pred.shape == (2, 2)  # the unimodal baseline: the same model on one modality
    with pytest.raises(ValidationError, match="divisible by num_heads"):
        MSAModelParams(proj_dim=10, num_heads=3)
    with pytest.raises(ValidationError, match="layers"):
        MSAModelParams(layers=1)


def test_classifier_reads_a_pooled_feature_as_a_one_step_sequence():
    model = build_msa_model(DIMS, 3, TINY).eval()
    clf = model.unimodal_classifier("text", 3).eval()
    f = torch.randn(4, 8)
    torch.testing.assert_close(clf(f), clf(f.unsqueeze(1)))
    assert clf(f).shape == (4, 3)
