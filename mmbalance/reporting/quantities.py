"""One catalogue of the quantities the figures plot: the name a panel is titled with, its unit, its scale.

A figure never titles a panel with a raw record key (``coeff``, ``score``) or labels an axis "value":
``quantity(key, method)`` gives the name and unit, a method's own entry first (CGGM's ``coeff`` is its
balancing term B_m, OGM-GE's its gradient coefficient k_m), then a generic one, then the key itself
marked as method-specific. ``scale: symlog`` is for terms that span decades or change sign: CGGM's B_m
reaches ±1e6 on some seeds when the score changes cancel (S near 1e-8, see ``methods/cggm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Quantity", "CURVES", "quantity"]


@dataclass(frozen=True)
class Quantity:
    name: str  # the panel title
    unit: str = ""  # the axis label; "" for a pure number
    scale: str = "linear"  # or "log", "symlog"

    @property
    def axis_label(self) -> str:
        return self.unit or "dimensionless"


# The probes every run records (probes.py), per modality.
CURVES = {
    "probe_acc": Quantity("validation accuracy of a linear probe per modality", "accuracy (%)"),
    "grad_norm": Quantity("encoder gradient norm ‖∇θ_m L‖₂", "L2 norm", "log"),
    "grad_cos": Quantity("cosine of the unimodal and the fused gradient", "cosine"),
}

# Balancing terms (``diag/<term>[/<modality>]`` curves), by (method, term): the methods' docstrings define them.
TERMS = {
    ("cggm", "coeff"): Quantity("CGGM balancing term B_m = (S − d_m) / S", "gradient scale factor", "symlog"),
    ("cggm", "score"): Quantity("CGGM classifier score on the batch", "accuracy (fraction)"),
    ("cggm", "cos"): Quantity("CGGM cos(classifier W_m, fusion W_m)", "cosine"),
    ("cggm", "l_gm"): Quantity("CGGM direction loss l_gm", "loss", "symlog"),
    ("ogm_ge", "ratio"): Quantity("OGM-GE discrepancy ratio ρ_m", "score ratio"),
    ("ogm_ge", "coeff"): Quantity("OGM-GE gradient coefficient k_m", "gradient scale factor"),
    ("pmr", "ratio"): Quantity("PMR imbalance ratio ρ_m", "score ratio"),
    ("pmr", "coeff"): Quantity("PMR prototype-loss weight β_m", "loss weight"),
    ("pmr", "proto_loss"): Quantity("PMR prototype cross-entropy", "loss (nats)"),
}
GENERIC = {
    "coeff": Quantity("gradient coefficient", "scale factor"),
    "ratio": Quantity("modality score ratio", "ratio"),
    "weight": Quantity("modality loss weight", "weight"),
    "fusion_weight": Quantity("fusion weight", "weight"),
    "loss": Quantity("unimodal loss", "loss"),
    "lr": Quantity("learning-rate scale", "× base lr"),
    "cos": Quantity("gradient cosine", "cosine"),
    "scale": Quantity("gradient scale", "scale factor"),
}


def quantity(key: str, method: str | None = None) -> Quantity:
    """The catalogue entry of a curve kind or a balancing term (of ``method``)."""
    if key in CURVES:
        return CURVES[key]
    if (method, key) in TERMS:
        return TERMS[method, key]
    if key in GENERIC:
        return GENERIC[key]
    where = f"methods/{method}.py" if method else "the method's file"
    return Quantity(key.replace("_", " "), f"method-specific, see {where}")
