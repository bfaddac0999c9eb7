"""Write ``grads.npz`` next to a finished run: gradient samples for the t-SNE figure.

The run records hold gradient *norms and cosines* per logged step, not gradient vectors, so the
CGGM paper's t-SNE of classifier gradients against unimodal gradients cannot be drawn from them.
This script rebuilds the run's final model from ``checkpoint.pt`` and, for ``--batches`` small batches
of the training split, takes per modality m the gradient with respect to encoder m's parameters of

- ``fused/m``:      the task loss of the fused prediction (what joint training sends to encoder m);
- ``classifier/m``: the loss of modality m's classifier on m's features. The classifier is the run's
  linear probe (``probes.py``), trained on detached features like CGGM's classifiers; its gradient
  into the encoder is the direction CGGM uses as a stand-in for unimodal training;
- ``unimodal/m``:   (with ``--unimodal RUN_DIR``, a finished ``unimodal`` run of modality m with the
  same encoder architecture) the task loss of that unimodal model on the same batches.

Each gradient is flattened over the encoder's parameters and sketched to ``--dim`` coordinates by a
fixed count sketch (random bucket and sign per coordinate, the same for every kind of one modality),
which preserves inner products in expectation, so directions stay comparable while the file stays
small. ``mmbalance report`` then draws ``<...>-tsne-<method>-seed<k>.png`` for every run holding one.

    python scripts/grad_samples.py results/runs/<run_id> [--unimodal results/runs/<uni_id> ...]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mmbalance.common.records import RECORD_ONLY, RunDir, atomic_write_bytes
from mmbalance.common.spec import validate_spec
from mmbalance.training.data import collate
from mmbalance.training.probes import Probes
from mmbalance.training.runner import make_adapter


def load_model(rd: RunDir, data_root: Path | None):
    """The run's adapter, spec and model with its final weights, and the probes' state."""
    doc = {k: v for k, v in rd.spec().items() if k not in RECORD_ONLY}
    spec = validate_spec(doc)
    adapter = make_adapter(spec, data_root)
    modalities = rd.final()["modalities"]
    model = adapter.build_model(type(adapter).ModelParams.model_validate(spec.model_params), modalities)
    state = torch.load(rd.file("checkpoint.pt"), map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return adapter, spec, model.eval(), state.get("probes")


def sketch(grads: list[Tensor], dim: int, seed: int) -> np.ndarray:
    """Count sketch of the flattened gradient: coordinate i goes to bucket h(i) with sign s(i)."""
    g = torch.cat([x.reshape(-1) for x in grads]).double()
    gen = torch.Generator().manual_seed(seed)
    bucket = torch.randint(0, dim, (g.numel(),), generator=gen)
    sign = torch.randint(0, 2, (g.numel(),), generator=gen).double() * 2 - 1
    return torch.zeros(dim, dtype=torch.float64).index_add_(0, bucket, sign * g).numpy()


def encoder_grad(loss: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument(
        "--unimodal", type=Path, nargs="*", default=[], help="finished unimodal runs (one per modality)"
    )
    ap.add_argument("--batches", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dim", type=int, default=256, help="sketch size")
    ap.add_argument("--data-root", type=Path, default=None)
    args = ap.parse_args(argv)

    rd = RunDir(args.run_dir)
    if rd.status() != "done" or not rd.file("checkpoint.pt").exists():
        raise SystemExit(f"{rd.path}: not a finished run with a checkpoint (status {rd.status()})")
    adapter, spec, model, probe_state = load_model(rd, args.data_root)
    if probe_state is None:
        raise SystemExit(
            f"{rd.path}: the run has no probes (probe_every=0), so no classifier to take gradients of"
        )
    probes = Probes(model, adapter.task, seed=spec.seed)
    probes.load(probe_state)
    task_loss = adapter.loss_fn()
    unimodal = {}
    for path in args.unimodal:
        uni = RunDir(path)
        _, _, uni_model, _ = load_model(uni, args.data_root)
        unimodal[uni.final()["modalities"][0]] = uni_model

    data = adapter.split("train")
    samples: dict[str, list[np.ndarray]] = {}
    for b in range(args.batches):
        idx = range(b * args.batch_size, min(len(data), (b + 1) * args.batch_size))
        if not idx:
            break
        batch = collate([data[i] for i in idx])
        out = model(batch.inputs)
        fused_loss = task_loss(out.pred, batch.target)
        for i, m in enumerate(model.modalities):
            params = model.encoder_parameters(m)
            clf_loss = task_loss(probes.predict(m, out.features[m], batch.target.shape), batch.target)
            kinds = {"fused": encoder_grad(fused_loss, params), "classifier": encoder_grad(clf_loss, params)}
            if m in unimodal:
                uni_out = unimodal[m]({m: batch.inputs[m]})
                kinds["unimodal"] = encoder_grad(
                    task_loss(uni_out.pred, batch.target), unimodal[m].encoder_parameters(m)
                )
            for kind, grads in kinds.items():
                samples.setdefault(f"{kind}/{m}", []).append(sketch(grads, args.dim, seed=1000 + i))
    buf = io.BytesIO()
    np.savez(buf, **{k: np.stack(v).astype(np.float32) for k, v in samples.items()})
    atomic_write_bytes(rd.file("grads.npz"), buf.getvalue())
    print(
        f"wrote {rd.file('grads.npz')}: {', '.join(f'{k} {len(v)}x{args.dim}' for k, v in samples.items())}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
