"""LNLN against a transcription of its official modules (``_lnln_official.py``, Haoyu-ha/LNLN @ 80a052c).

One tiny configuration (width 16, 2 heads, the code's 8 tokens, every depth of the released configs, a tiny
random BERT from ``transformers``), float64, both networks holding the same weights (the official state dict
renamed into ours, loaded strictly: every tensor maps). On the same complete and incomplete inputs we compare
every output of the official forward, each term of ``MultimodalLoss`` and the gradient of every parameter;
two mutations of ours (no gradient reversal; the hyper layer's update added to the raw hyper tokens) show the
comparison sees a change of the algorithm. ``generate_m`` and our ``drop_positions`` give the same inputs
from the same uniform draws.
"""

from __future__ import annotations

import copy
import re

import _lnln_official as official
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from mmbalance.methods.lnln import LNLNParams, drop_positions, lnln_loss, missing_rates
from mmbalance.models import lnln as ours_module
from mmbalance.models.lnln import LNLNModelParams, build_lnln_model
from mmbalance.training.incomplete import UNK

B, D, H, K = 4, 16, 2, 8
LENGTHS = {"text": 7, "audio": 9, "vision": 6}
DIMS = {"audio": 5, "vision": 11}
TOL = 1e-12


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertModel(config)


def official_args() -> dict:
    block = {"depth": 2, "heads": H, "input_dim": D, "hidden_dim": D}
    return {
        "HIDDEN": D,
        "base": {"alpha": 0.9, "beta": 0.8, "gamma": 0.1, "sigma": 1.0},
        "model": {
            "feature_extractor": {
                "input_length": [
                    LENGTHS["text"],
                    LENGTHS["vision"],
                    LENGTHS["audio"],
                ],  # language, video, audio
                "token_length": [K, K, K],
                "heads": H,
                "input_dims": [12, DIMS["vision"], DIMS["audio"]],
                "hidden_dims": [D, D, D],
                "depth": 2,
            },
            "dmc": {
                "proxy_dominant_feature_generator": {"input_length": 3 * K, "token_length": K, **block},
                "effectiveness_discriminator": {"input_dim": D, "hidden_dim": 6, "out_dim": 2},
                "completeness_check": {"input_length": K, "token_length": 1, **block},
            },
            "reconstructor": {"input_length": K, **block},
            "dmml": {
                "language_encoder": {"input_length": K, "token_length": K, **block},
                "hyper_modality_learning": {**block, "depth": 3},
                "fuison_transformer": {"source_length": K, "tgt_length": K, **block},
                "regression": {"input_dim": D, "out_dim": 1},
            },
        },
    }


OUR_PARAMS = LNLNModelParams(dim=D, mlp_dim=D, tokens=K, heads=H, dim_head=64, discriminator_hidden=6)

# official parameter name -> ours, applied in order
RENAMES = [
    (r"^h_hyper$", "fusion.hyper_tokens"),
    (r"^h_p$", "fusion.proxy_tokens"),
    (r"^bertmodel\.model\.", "encoders.text.bert."),
    (r"^proj_l\.0\.", "encoders.text.proj."),
    (r"^proj_a\.0\.", "encoders.audio.proj."),
    (r"^proj_v\.0\.", "encoders.vision.proj."),
    (r"^proj_l\.1\.", "encoders.text.transformer."),
    (r"^proj_a\.1\.", "encoders.audio.transformer."),
    (r"^proj_v\.1\.", "encoders.vision.transformer."),
    (r"^proxy_dominate_modality_generator\.", "fusion.proxy."),
    (r"^effective_discriminator\.", "discriminator."),
    (r"^completeness_check\.0\.", "fusion.check."),
    (r"^completeness_check\.1\.", "fusion.check_head."),
    (r"^reconstructor\.0\.", "reconstructors.audio."),
    (r"^reconstructor\.1\.", "reconstructors.vision."),
    (r"^reconstructor\.2\.", "reconstructors.text."),
    (r"^dmml\.0\.", "fusion.language."),
    (r"^dmml\.1\.layers\.(\d+)\.0\.", r"fusion.hyper.\1."),
    (r"^dmml\.2\.", "fusion.cross."),
    (r"^dmml\.3\.", "head."),
    # inside the hyper layers
    (r"\.norm1\.", ".norm_dominant."),
    (r"\.norm2\.", ".norm_others.0."),
    (r"\.norm3\.", ".norm_others.1."),
    (r"\.norm4\.", ".norm_hyper."),
    (r"\.fn\.to_k_ta\.", ".to_k.0."),
    (r"\.fn\.to_k_tv\.", ".to_k.1."),
    (r"\.fn\.to_v_ta\.", ".to_v.0."),
    (r"\.fn\.to_v_tv\.", ".to_v.1."),
    (r"(hyper\.\d+)\.fn\.to_q\.", r"\1.to_q."),
    (r"(hyper\.\d+)\.fn\.to_out\.0\.", r"\1.to_out."),
    # inside the transformers
    (r"pos_embedding_s$", "pos_source"),
    (r"pos_embedding_t$", "pos_target"),
    (r"cross\.extra_token$", "cross.token"),
    (r"pos_embedding$", "pos"),
    (r"extra_token$", "tokens"),
    (r"(?:encoder|CrossTransformerEncoder)\.layers\.(\d+)\.", r"blocks.\1."),
    (r"(blocks\.\d+)\.0\.fn\.to_out\.0\.", r"\1.attn.to_out."),
    (r"(blocks\.\d+)\.0\.fn\.", r"\1.attn."),
    (r"(blocks\.\d+)\.0\.", r"\1.attn."),
    (r"(blocks\.\d+)\.1\.norm\.", r"\1.ff.norm."),
    (r"(blocks\.\d+)\.1\.fn\.net\.0\.", r"\1.ff.fc1."),
    (r"(blocks\.\d+)\.1\.fn\.net\.3\.", r"\1.ff.fc2."),
]


def our_name(name: str) -> str:
    for pattern, repl in RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def inputs() -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(103, 120, (B, LENGTHS["text"]), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = mask[3, -3:] = 0
    ids[:, 0] = 101
    ids[torch.arange(B), mask.sum(1) - 1] = 102
    ids[mask == 0] = 0
    complete = {
        "text": torch.stack([ids, mask, torch.zeros_like(ids)], dim=1),
        "audio": torch.randn(B, LENGTHS["audio"], DIMS["audio"], generator=g, dtype=torch.float64),
        "vision": torch.randn(B, LENGTHS["vision"], DIMS["vision"], generator=g, dtype=torch.float64),
    }
    torch.manual_seed(2)
    rates = {m: missing_rates(B, torch.device("cpu")) for m in complete}
    incomplete = {m: drop_positions(x, rates[m]) for m, x in complete.items()}
    target = torch.randn(B, 1, generator=g, dtype=torch.float64)
    return complete, incomplete, 1 - rates["text"], target


def pair():
    torch.manual_seed(3)
    off = official.LNLN(official_args(), tiny_bert()).double()
    ours = build_lnln_model({"text": 12, **DIMS}, LENGTHS, 1, OUR_PARAMS, copy.deepcopy(off.bertmodel.model))
    ours = ours.double()
    mapped = {our_name(k): v for k, v in off.state_dict().items()}
    ours.load_state_dict(mapped, strict=True)  # every tensor of each side has its counterpart
    return off, ours


def compare(off, ours) -> dict[str, float]:
    complete, incomplete, completeness, y = inputs()
    order = ("vision", "audio", "text")
    o = off(tuple(complete[m] for m in order), tuple(incomplete[m] for m in order))
    labels = {
        "sentiment_labels": y,
        "completeness_labels": completeness[:, None].double(),
        "effectiveness_labels": torch.cat([torch.ones(B * 8), torch.zeros(B * 8)]).long(),
    }
    lo = official.MultimodalLoss(official_args())(o, labels)
    out = ours(incomplete, complete=complete)
    lu = lnln_loss(out, y, completeness.double(), LNLNParams())

    def aov(x):  # ours' modality order (text, audio, vision) -> the code's (audio, vision, text)
        return torch.cat([x[:, K : 2 * K], x[:, 2 * K :], x[:, :K]], dim=1)

    diff = {
        "pred": (o["sentiment_preds"] - out.pred).abs().max().item(),
        "w": (o["w"] - out.aux["w"]).abs().max().item(),
        "effectiveness": (o["effectiveness_discriminator_out"] - out.aux["effectiveness"]).abs().max().item(),
        "reconstructed": (o["rec_feats"] - aov(out.aux["reconstructed"])).abs().max().item(),
        "complete": (o["complete_feats"] - aov(out.aux["complete"])).abs().max().item(),
    }
    diff |= {k: abs(lo[k].item() - lu[k].item()) for k in ("loss", "l_sp", "l_cc", "l_adv", "l_rec")}
    lo["loss"].backward()
    lu["loss"].backward()
    mine = dict(ours.named_parameters())

    def grad(p: torch.Tensor) -> torch.Tensor:  # none on both sides: BERT's pooler, which nothing reads
        return torch.zeros_like(p) if p.grad is None else p.grad

    diff["grad"] = max(
        (grad(p) - grad(mine[our_name(k)])).abs().max().item() for k, p in off.named_parameters()
    )
    diff["grad_scale"] = max(grad(p).abs().max().item() for p in off.parameters())
    return diff


def test_forward_loss_and_gradients_equal_the_official_code():
    diff = compare(*pair())
    print({k: f"{v:.2e}" for k, v in diff.items()})
    assert diff["grad_scale"] > 1e-3 and diff["loss"] == diff["loss"]  # gradients are not all zero
    assert max(v for k, v in diff.items() if k != "grad_scale") < TOL, diff


def test_mutations_are_detected(monkeypatch):
    original = ours_module.HyperLayer.forward

    def raw_hyper(
        self, dominant, others, hyper
    ):  # the update added to the raw hyper tokens, not normalised ones
        return hyper + original(self, dominant, others, hyper) - self.norm_hyper(hyper)

    off, ours = pair()
    monkeypatch.setattr(ours_module.HyperLayer, "forward", raw_hyper)
    diff = compare(off, ours)
    print("raw hyper:", {k: f"{v:.2e}" for k, v in diff.items()})
    assert diff["pred"] > 1e-3 and diff["loss"] > 1e-6, diff

    monkeypatch.setattr(ours_module.HyperLayer, "forward", original)
    off, ours = pair()
    monkeypatch.setattr(ours_module.GradientReversal, "apply", lambda x, alpha: x)  # no gradient reversal
    diff = compare(off, ours)
    print("no GRL:", {k: f"{v:.2e}" for k, v in diff.items()})
    assert diff["pred"] < TOL and diff["grad"] > 1e-3, diff  # the same forward, other gradients


def test_drop_positions_is_generate_m(monkeypatch):
    """The same uniform draws give generate_m's inputs: [UNK] for dropped tokens, [CLS]/[SEP] kept, the mask
    unchanged; dropped frames zero."""
    rng = np.random.default_rng(0)
    complete, _, _, _ = inputs()
    rates = np.array([0.0, 0.3, 0.6, 0.9])
    seed = 1111
    np.random.seed(seed)
    u_text = np.random.uniform(size=(B, LENGTHS["text"]))
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.from_numpy(u_text))
    ours = drop_positions(complete["text"], torch.tensor(rates))
    text = complete["text"].numpy().astype(np.float32)
    ids_m, _, mask, _ = official.generate_m(
        text[:, 0, :], text[:, 1, :], None, rates[:, None], seed, mode="text"
    )
    expected = np.concatenate([ids_m[:, None], mask[:, None], text[:, 2:3]], axis=1)
    assert np.array_equal(ours.numpy(), expected)
    assert (ours[:, 0] == UNK).any() and (ours[:, 0, 0] == 101).all()  # something dropped; [CLS] kept

    audio = rng.normal(size=(B, LENGTHS["audio"], DIMS["audio"]))
    np.random.seed(seed)
    u_audio = np.random.uniform(size=(B, LENGTHS["audio"]))
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.from_numpy(u_audio))
    ours = drop_positions(torch.from_numpy(audio), torch.tensor(rates))
    expected, *_ = official.generate_m(
        audio, None, [LENGTHS["audio"]] * B, rates[:, None], seed, mode="audio"
    )
    assert np.array_equal(ours.numpy(), expected) and (ours == 0).any()


def test_missing_rates_half_zero():
    torch.manual_seed(0)
    r = missing_rates(9, torch.device("cpu"))
    assert (r == 0).sum() >= 4 and ((r >= 0) & (r < 1)).all() and (r > 0).sum() >= 1


@pytest.mark.parametrize("dominant", ["audio"])
def test_any_dominant_modality(dominant):
    """The dominant modality is a parameter: audio dominant builds and runs (text given as features)."""
    p = OUR_PARAMS.model_copy(update={"dominant": dominant})
    model = build_lnln_model({"text": 12, "audio": 5, "vision": 11}, LENGTHS, 1, p)
    x = {m: torch.randn(2, LENGTHS[m], d) for m, d in {"text": 12, "audio": 5, "vision": 11}.items()}
    out = model(x, complete=x)
    assert out.pred.shape == (2, 1) and out.aux["effectiveness"].shape == (2 * 2 * K, 2)
    assert model.fusion.others == ["text", "vision"]
