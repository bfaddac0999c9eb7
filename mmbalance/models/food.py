"""UPMC-Food101 paper model: the CGGM code's ``FoodModel`` on BERT and ViT token sequences.

Reference: zrguo/CGGM @ 21e428c, ``models/foodmodel.py`` and ``src/foodtrain.py``. The model is
the MOSI/IEMOCAP model of ``mmbalance.models.transformer`` (per modality Conv1d(k=1) to 40 channels
+ transformer, fusion transformer over the concatenated sequences, residual head) with the food
defaults of ``run/food_run.py`` (4 layers, dropouts attn 0.2, relu 0.15, embed 0.2, res 0.15, out 0.1).
Its inputs are either

- cached ``last_hidden_state`` features, (B, 197, 768) ViT patches and (B, 50, 768) BERT tokens
  (``features`` mode: ``build_food_model({"image": 768, "text": 768}, ...)``), or
- pixels and token ids through a Hugging Face ViT / BERT held inside each encoder
  (``end_to_end`` mode: ``build_food_model({"image": "<vit path>", "text": "<bert path>"}, ...)``).
  The backbone is frozen and kept in eval mode, as the CGGM code runs it under ``no_grad``;
  ``finetune=True`` trains it too (and it then counts as the modality's encoder for the methods).

``fusion="concat"`` gives the late-fusion variant (pooled features -> one Linear) that OGM-GE and
PMR need. The released ``FoodModel`` projects the text with the *vision* projection ``projv`` (its
``projt`` is never used); here each modality has its own projection.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field
from torch import Tensor, nn

from mmbalance.common.core import DataMissingError
from mmbalance.models.transformer import MSAModel, MSAModelParams, SequenceEncoder, build_msa_model

__all__ = ["FoodModelParams", "PretrainedSequenceEncoder", "build_food_model", "load_pretrained"]


class FoodModelParams(MSAModelParams):
    """CGGM's food defaults (run/food_run.py)."""

    layers: int = Field(4, ge=2)
    attn_dropout: float = Field(0.2, ge=0, lt=1)
    relu_dropout: float = Field(0.15, ge=0, lt=1)
    embed_dropout: float = Field(0.2, ge=0, lt=1)
    res_dropout: float = Field(0.15, ge=0, lt=1)
    out_dropout: float = Field(0.1, ge=0, lt=1)
    finetune: bool = False  # end_to_end: train BERT/ViT too (the CGGM code freezes them)


def load_pretrained(name: str) -> nn.Module:
    """A Hugging Face BERT/ViT (``AutoModel``) from a local folder or the local hub cache; no download."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(name, local_files_only=True)
    except OSError as e:
        raise DataMissingError(f"weights of {name!r} not found locally (pass a local folder, or download "
                               f"once with `hf download {name}`): {e}") from None  # fmt: skip


class PretrainedSequenceEncoder(nn.Module):
    """BERT or ViT ``last_hidden_state`` followed by the CGGM encoder of that modality.

    Text input: (B, 3, L) long, rows input_ids / attention_mask / token_type_ids. Image input:
    (B, 3, H, W) normalised pixels. ``sequence`` gives (B, T, d) and ``forward`` the pooled (B, d).
    """

    def __init__(self, backbone: nn.Module, head: SequenceEncoder, finetune: bool = False) -> None:
        super().__init__()
        self.backbone, self.head, self.finetune = backbone, head, finetune
        self.out_dim = head.out_dim
        backbone.requires_grad_(finetune)
        self.is_text = backbone.config.model_type != "vit"

    def train(self, mode: bool = True) -> PretrainedSequenceEncoder:
        super().train(mode)
        if not self.finetune:  # a frozen feature extractor keeps dropout off, as under CGGM's no_grad
            self.backbone.eval()
        return self

    def tokens(self, x: Tensor) -> Tensor:
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            if self.is_text:
                out = self.backbone(input_ids=x[:, 0], attention_mask=x[:, 1], token_type_ids=x[:, 2])
            else:
                out = self.backbone(pixel_values=x)
        return out.last_hidden_state  # (B, T, hidden)

    @property
    def input_projection(self) -> nn.Module:
        """The 1x1 projection after the backbone (``projv`` in the CGGM code, outside its encoders)."""
        return self.head.proj

    def sequence(self, x: Tensor) -> Tensor:
        return self.head.sequence(self.tokens(x))  # (B, T, d)

    def pool(self, h: Tensor) -> Tensor:
        return self.head.pool(h)

    def feature_modules(self) -> list[nn.Module]:
        return self.head.feature_modules()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.sequence(x))  # (B, d)


def build_food_model(inputs: Mapping[str, int | str], num_classes: int, p: FoodModelParams) -> MSAModel:
    """``inputs``: per modality, the feature size (features mode) or a BERT/ViT path (end_to_end)."""
    backbones = {m: load_pretrained(v) for m, v in inputs.items() if isinstance(v, str)}
    dims = {m: backbones[m].config.hidden_size if m in backbones else int(v) for m, v in inputs.items()}
    model = build_msa_model(dims, num_classes, p)
    for m, backbone in backbones.items():
        model.encoders[m] = PretrainedSequenceEncoder(backbone, model.encoders[m], p.finetune)
    return model
