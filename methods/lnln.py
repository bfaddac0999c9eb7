"""LNLN: Language-dominated Noise-resistant Learning Network, its training.

Reference: H. Zhang, W. Wang, T. Yu, "Towards Robust Multimodal Sentiment Analysis with Incomplete Data",
NeurIPS 2024. Official code: Haoyu-ha/LNLN @ 80a052c (``train.py``, ``core/losses.py``, ``core/dataset.py``).

How LNLN fits the runner: the network is a model choice of the MSA datasets (``model_params: {arch: lnln}``,
``mmbalance/models/lnln.py``); this method adds what the code's training loop adds, so any other method can
train the same network (``joint``: its sentiment head alone) and LNLN reads its records like every run's.
Per training batch (``train.py`` l.76-91):

1. Incomplete inputs (``core/dataset.py`` ``generate_m``, l.91-111): each sample draws, per modality, a
   missing rate ``r ~ U(0, 1)``, and half of the samples get ``r = 0`` (l.55-64); every valid position is
   dropped where ``u > r`` fails (``u ~ U(0, 1)`` per position). Dropped word ids become [UNK] (100) with
   [CLS] and the last valid token ([SEP]) kept and the attention mask unchanged; dropped frames of a
   feature sequence become zeros.
2. ``out = model(incomplete, complete)`` and the loss of ``core/losses.py`` (l.16-29)::

       L = alpha * MSE(w, 1 - r_l)                           # completeness check, r_l the dominant's rate
         + beta  * CE(D([h_d; h_l^complete]), [1...1, 0...0]) # effectiveness discriminator, k tokens each
         + gamma * MSE(R(h), h^complete)                      # reconstruction of every modality's tokens
         + sigma * MSE(y_hat, y)                              # sentiment

   Defaults: ``configs/train_mosi.yaml`` (alpha 0.9, beta 0.8, gamma 0.1, sigma 1.0; SIMS: beta 0.6).

Evaluation is the model on the inputs as given (complete, as every method is evaluated here; the code's
``missing_rate_eval_test: 0.5`` is a robustness protocol, which ``modality_eval`` owns).

Where this generalises or differs, and why:
- Rates are drawn per batch from the run's RNG (exactly half of each batch at 0), not once per epoch for half
  of the whole split; and the position draws are fresh each step, where ``generate_m`` re-seeds NumPy with
  the fixed seed every epoch and so drops the same positions for a given rate. Same distribution per
  sample; the run resumes exactly (the RNG state is checkpointed) without per-sample state.
- Feature sequences count every position as valid: MMSA's ``audio_lengths`` / ``vision_lengths`` only mark
  zero padding, which stays zero either way. Text given as BERT features (``text: text``) has its frames
  zeroed like audio.
- The sentiment term is the code's MSE; the runner's valid/test loss stays the dataset's L1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmbalance.common.core import MethodNotApplicable
from mmbalance.common.registry import METHODS
from mmbalance.common.search_space import Float
from mmbalance.models.base import MultimodalModel, Output
from mmbalance.models.lnln import LNLNModel
from mmbalance.training import incomplete
from mmbalance.training.data import Batch, StrictModel
from mmbalance.training.method import Method, RunContext

__all__ = ["LNLN", "LNLNParams", "missing_rates", "drop_positions", "lnln_loss"]


class LNLNParams(StrictModel):
    alpha: float = Field(0.9, ge=0)  # completeness check
    beta: float = Field(0.8, ge=0)  # effectiveness discriminator (SIMS: 0.6)
    gamma: float = Field(0.1, ge=0)  # reconstruction
    sigma: float = Field(1.0, ge=0)  # sentiment
    incomplete: bool = True  # train on randomly incomplete inputs (the code always does)


def missing_rates(batch_size: int, device: torch.device) -> Tensor:
    """(B,) rates ``U(0, 1)``, half of them (``floor(B / 2)``, chosen at random) set to 0."""
    rates = torch.rand(batch_size, device=device)
    rates[torch.randperm(batch_size, device=device)[: batch_size // 2]] = 0
    return rates


def drop_positions(x: Tensor, rates: Tensor) -> Tensor:
    """``generate_m``: (B, 3, L) word ids / mask / segments or (B, T, D) features, each sample losing its
    valid positions with probability ``rates[i]``: the incomplete-data protocol's one rule
    (``mmbalance.training.incomplete.drop``), on fresh uniform draws."""
    return incomplete.drop(x, torch.rand(incomplete.positions(x), device=x.device), rates)


def lnln_loss(out: Output, target: Tensor, completeness: Tensor, p: LNLNParams) -> dict[str, Tensor]:
    """``MultimodalLoss``: the four terms and their weighted sum (``loss``)."""
    aux = out.aux
    n = aux["effectiveness"].shape[0] // 2
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).long().to(target.device)  # corrected 1, complete 0
    terms = {
        "l_cc": F.mse_loss(aux["w"], completeness.reshape(aux["w"].shape)),
        "l_adv": F.cross_entropy(aux["effectiveness"], labels),
        "l_rec": F.mse_loss(aux["reconstructed"], aux["complete"]),
        "l_sp": F.mse_loss(out.pred, target.reshape(out.pred.shape)),
    }
    terms["loss"] = (
        p.alpha * terms["l_cc"] + p.beta * terms["l_adv"] + p.gamma * terms["l_rec"] + p.sigma * terms["l_sp"]
    )
    return terms


@METHODS.register
class LNLN(Method):
    name = "lnln"
    Params = LNLNParams
    tasks = frozenset({"regression"})
    unsupported = (
        "method 'lnln' is sentiment regression (its code supports train_mode regression only), not {kind}"
    )
    reference = (
        "Zhang, Wang, Yu, NeurIPS 2024 (Towards Robust MSA with Incomplete Data); Haoyu-ha/LNLN @ 80a052c"
    )
    search_space = {
        "alpha": Float(0.1, 2.0, source="configs/train_*.yaml alpha 0.9 (every dataset); no grid published"),
        "beta": Float(0.1, 2.0, source="configs/train_*.yaml beta 0.8 (MOSI, MOSEI), 0.6 (SIMS)"),
        "gamma": Float(0.01, 1.0, log=True, source="configs/train_*.yaml gamma 0.1 (every dataset)"),
    }

    def build(self, ctx: RunContext) -> None:
        if not isinstance(ctx.model, LNLNModel):
            raise MethodNotApplicable(
                f"method 'lnln' trains the LNLN network; this model is {type(ctx.model).__name__} "
                "(set model_params.arch: lnln on mosi, mosei or sims)"
            )
        self.dominant = ctx.model.fusion.dominant
        self.terms: dict[str, Tensor] = {}

    def forward(self, model: MultimodalModel, batch: Batch, ctx: RunContext) -> Output:
        if not ctx.training:
            return model(batch.inputs)
        b, device = len(batch), batch.target.device
        rates = {m: missing_rates(b, device) if self.p.incomplete else torch.zeros(b, device=device)
                 for m in batch.inputs}  # fmt: skip
        incomplete = {m: drop_positions(x, rates[m]) for m, x in batch.inputs.items()}
        out = model(incomplete, complete=batch.inputs)
        out.aux["completeness"] = 1 - rates[self.dominant]
        return out

    def loss(self, out: Output, batch: Batch, ctx: RunContext) -> Tensor:
        terms = lnln_loss(out, batch.target, out.aux["completeness"], self.p)
        self.terms = {k: v.detach() for k, v in terms.items() if k != "loss"}  # read when the probes log
        return terms["loss"]

    def diagnostics(self, ctx: RunContext) -> dict[str, float]:
        return {k: float(v) for k, v in self.terms.items()}
