"""Check ``mmbalance.models.transformer`` against the CGGM code's ``MSAModel`` and ``Classifier``.

``python scripts/check_msa_against_cggm.py /path/to/CGGM`` (a clone of github.com/zrguo/CGGM).

Builds the released model (MOSI dims 300 / 5 / 20, the run/mosi_run.py defaults) and ours, copies the
released weights into ours, and prints the largest difference of the prediction, of each encoder's
output sequence and of a CGGM classifier's output, in eval mode (dropout off). Not a test: the suite
does not ship the CGGM code.
"""

from __future__ import annotations

import argparse
import sys
import types

import torch

from mmbalance.models.transformer import MSAModelParams, SequenceTransformer, build_msa_model

DIMS = {"text": 300, "audio": 5, "vision": 20}  # CGGM's order: text, audio, vision


@torch.no_grad()
def copy_transformer(ref: torch.nn.Module, ours: SequenceTransformer) -> None:
    """MulT ``TransformerEncoder`` -> ``SequenceTransformer`` (same layer count)."""
    assert len(ref.layers) == len(ours.layers)
    for a, b in zip(ref.layers, ours.layers, strict=True):
        b.attn.in_proj_weight.copy_(a.self_attn.in_proj_weight)
        b.attn.in_proj_bias.copy_(a.self_attn.in_proj_bias)
        b.attn.out_proj.load_state_dict(a.self_attn.out_proj.state_dict())
        b.fc1.load_state_dict(a.fc1.state_dict())
        b.fc2.load_state_dict(a.fc2.state_dict())
        b.norm1.load_state_dict(a.layer_norms[0].state_dict())
        b.norm2.load_state_dict(a.layer_norms[1].state_dict())
    ours.norm.load_state_dict(ref.layer_norm.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cggm_root", help="a checkout of zrguo/CGGM")
    args = parser.parse_args()
    sys.path.insert(0, args.cggm_root)
    try:
        import src.eval_metrics  # noqa: F401  (msamodel star-imports it; it needs einops)
    except ImportError:  # only the training metrics live there: an empty stand-in will do
        sys.modules["src.eval_metrics"] = types.ModuleType("src.eval_metrics")
    from models.msamodel import Classifier, MSAModel  # the CGGM code

    torch.manual_seed(0)
    p = MSAModelParams()  # proj_dim 40, 5 heads, 5 layers, cls_layers 2
    ref = MSAModel(1, list(DIMS.values()), p.proj_dim, p.num_heads, p.layers).eval()
    ours = build_msa_model(DIMS, 1, p).eval()
    with torch.no_grad():
        for i, m in enumerate(DIMS):
            ours.encoders[m].proj.load_state_dict(ref.proj[i].state_dict())
            copy_transformer(ref.encoders[i], ours.encoders[m].transformer)
        copy_transformer(ref.fusion, ours.fusion.transformer)
        for name in ("proj1", "proj2", "out_layer"):
            getattr(ours.head, name).load_state_dict(getattr(ref, name).state_dict())
    x = {m: torch.randn(4, 50, d) for m, d in DIMS.items()}
    with torch.no_grad():
        pred_ref, hs_ref = ref([x[m].clone() for m in DIMS])
        out = ours(x)
    print(f"prediction: max |diff| {(pred_ref - out.pred).abs().max().item():.2e}")
    for i, m in enumerate(DIMS):
        diff = (hs_ref[i].transpose(0, 1) - out.aux[m]).abs().max().item()
        print(f"encoder {m:6s}: max |diff| {diff:.2e}")

    cls_ref = Classifier(p.proj_dim, 1, p.num_heads, p.cls_layers).eval()
    cls = ours.unimodal_classifier("audio", 1).eval()
    with torch.no_grad():
        copy_transformer(cls_ref.bone, cls.bone)
        cls.proj1.load_state_dict(cls_ref.proj1.state_dict())
        cls.out_layer.load_state_dict(cls_ref.out_layer.state_dict())
        h = out.aux["audio"]
        diff = (cls_ref(h.transpose(0, 1)) - cls(h)).abs().max().item()
    print(f"classifier : max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
