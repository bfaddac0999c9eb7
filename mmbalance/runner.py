"""The one training loop, shared by every method and dataset.

``train(spec)`` builds the dataset, model, method, optimiser and probes from a validated
``RunSpec``, then runs epochs of::

    out  = method.forward(model, batch, ctx)
    loss = method.loss(out, batch, ctx)          # non-finite -> the run is recorded as failed
    [probe step: gradient cosines, from the same graph]
    loss.backward()
    method.after_backward(model, out, batch, ctx)
    [probe step: encoder gradient norms]; probes fit on detached features
    clip (optional); optimizer.step(); per-iteration schedule

and after each epoch evaluates valid and test, writes a checkpoint and the records
(see ``records.py``). A finished run is skipped; an interrupted one resumes from its last
epoch checkpoint with the model, optimiser, scheduler, method, probes and RNG states, so it ends
with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import mmbalance
from mmbalance import backbone, incomplete, metrics
from mmbalance.core import DeviceError
from mmbalance.data import Batch, DataError, DatasetAdapter, collate
from mmbalance.locks import RunLock
from mmbalance.memory import MB, method_state
from mmbalance.method import Method, MethodNotApplicable, RunContext
from mmbalance.probes import Probes
from mmbalance.records import (
    RECORD_ONLY,
    DamagedRecordError,
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    rows_to_csv,
)
from mmbalance.registry import DATASETS, METHODS
from mmbalance.spec import RunSpec, SpecError
from mmbalance.status import tidy_finished

PACKAGES = ("torch", "torchvision", "transformers", "numpy", "pandas", "scikit-learn", "monai", "pydantic")


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class Pruned(RuntimeError):
    """An ``on_epoch`` callback stopped the run (a tuning trial's pruner); recorded as ``pruned``."""


@dataclass
class RunResult:
    run_id: str
    path: Path
    status: str  # done / failed / skipped
    final: dict[str, Any] | None = None
    reason: str = ""


# --- building blocks ----------------------------------------------------------------------------
def make_adapter(spec: RunSpec, data_root: Path | None = None) -> DatasetAdapter:
    cls = DATASETS.get(spec.dataset)
    root = Path(data_root) / spec.dataset if data_root is not None else None
    params = cls.Params.model_validate(spec.dataset_params)
    if cls.seed_param is not None and getattr(params, cls.seed_param) is None:
        params = params.model_copy(update={cls.seed_param: spec.seed})  # the run's seed draws the data
    return cls(params, root)


def make_method(spec: RunSpec) -> Method:
    cls = METHODS.get(spec.method)
    return cls(cls.Params.model_validate(spec.method_params))


def data_fingerprint(adapter: DatasetAdapter, splits: tuple[str, ...] = ("train", "valid", "test")) -> str:
    """Ids and labels of each split, plus the bytes of every data file (so re-extracted features give a
    new run id); data without listed files (synthetic, mfeat) keeps the ids-and-labels fingerprint."""
    ids_labels = "|".join(f"{s}:{adapter.fingerprint(s)[:16]}" for s in splits)
    digest = adapter.content_digest()
    return f"{ids_labels}|files:{digest[:16]}" if digest else ids_labels


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine before anything is
    written (``DeviceError``: a name torch does not know, or a GPU that is not here)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceError(f"--device {device}: no CUDA GPU on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"--device {device}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}")
    elif dev.type != "cpu":
        raise DeviceError(f"--device {device}: only cpu and cuda are supported")
    return dev


def configure_backends(device: torch.device, deterministic: bool) -> dict[str, Any]:
    """CUDA kernel choice; what it chose goes into env.json. By default cuDNN times its algorithms per
    input shape and keeps the fastest (benchmark mode: faster, and the choice may differ between runs).
    ``deterministic``: only deterministic kernels, benchmark off (torch raises on an op that has none),
    so a rerun on the same machine gives the same numbers. The CPU's kernels need neither."""
    if device.type == "cuda":
        if deterministic:  # cuBLAS needs a fixed workspace for deterministic matrix products
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.use_deterministic_algorithms(deterministic)
    return {"deterministic": deterministic, "cudnn_benchmark": device.type == "cuda" and not deterministic}


def auto_workers(adapter: DatasetAdapter, device: torch.device) -> int:
    """Loader processes when ``--workers`` is not given: on CUDA, for data read from files as items are
    drawn, one per torch thread less one, at most 8 (the threads are this run's share of the machine:
    cores / jobs, or $SLURM_CPUS_PER_TASK), so that reading and decoding overlap the GPU's step. None on
    the CPU, whose cores compute the step, nor for data held in memory. Workers draw their own random
    augmentations, so the numbers of such datasets depend on the count: env.json records it; give
    ``--workers N`` to compare runs across machines."""
    if device.type != "cuda" or not adapter.reads_items():
        return 0
    return min(8, max(1, torch.get_num_threads() - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def code_version() -> str:
    """``<package version>+<git commit>[-dirty]`` when run from a checkout, else the version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"{mmbalance.__version__}+{commit}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return mmbalance.__version__


def environment(device: torch.device) -> dict[str, Any]:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "code_version": code_version(),
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),
    }


def make_optimizer(spec: RunSpec, params: list[dict[str, Any]]) -> torch.optim.Optimizer:
    o = spec.optim
    # A group may carry ``lr_scale``: its lr is that multiple of optim.lr (MSLR's per-modality rates).
    params = [{**g, "lr": o.lr * g["lr_scale"]} if "lr_scale" in g else g for g in params]
    # foreach: one multi-tensor update instead of torch's per-parameter Python loop, its CPU default (a
    # quarter of a small model's step); the same arithmetic per tensor, so the same numbers.
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, foreach=True
        )
    opt_cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return opt_cls(params, lr=o.lr, weight_decay=o.weight_decay, foreach=True)


def make_scheduler(spec: RunSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Returns ``(scheduler, when)`` with ``when`` in {"epoch", "iteration", "plateau", None}."""
    s = spec.schedule
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, s.step_size, s.gamma), "epoch"
    if s.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=s.gamma, patience=s.patience
        ), "plateau"
    if s.name == "cosine":  # per iteration, linear warm-up then cosine to min_lr (as CGGM's BraTS code)
        warmup, total = s.warmup_epochs * steps_per_epoch, spec.epochs * steps_per_epoch
        floor = s.min_lr / spec.optim.lr

        def factor(it: int) -> float:
            if it < warmup:
                return (it + 1) / warmup
            progress = (it - warmup) / max(1, total - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "iteration"
    return None, None


def _batches(loader: DataLoader, device: torch.device):
    for batch in loader:
        yield batch.to(device, non_blocking=device.type == "cuda")


# --- the loop -------------------------------------------------------------------------------------
class Trainer:
    """One run: everything ``train`` needs, held together so the loop reads top to bottom."""

    def __init__(
        self,
        spec: RunSpec,
        adapter: DatasetAdapter,
        run_dir: RunDir,
        device: torch.device,
        progress: bool,
        amp: bool = False,
        workers: int = 0,
        on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
        deterministic: bool = False,
        encoder: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """``encoder``: the pretrained weights of ``spec.pretrained.modality``'s encoder (``backbone.py``)."""
        self.on_epoch = on_epoch  # called with (epoch, validation metrics) after each epoch's records
        self.spec, self.adapter, self.rd, self.device, self.progress = (
            spec,
            adapter,
            run_dir,
            device,
            progress,
        )
        # Mixed precision: fp16 + loss scaling on CUDA, bf16 (no scaling needed) elsewhere. Off: both are
        # no-ops, so CPU runs keep their exact numbers.
        self.amp, self.workers = amp, workers
        self.backends = configure_backends(device, deterministic)
        self.eval_loaders: dict[str, DataLoader] = {}
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and self.amp_dtype == torch.float16)
        self.task = adapter.task
        seed_everything(spec.seed)
        self.method = make_method(spec)
        self.method.check(self.task)
        self.modalities = self.method.model_modalities(self.task.modalities)
        model_params = type(adapter).ModelParams.model_validate(spec.model_params)
        self.model = adapter.build_model(model_params, self.modalities).to(device)
        if encoder is not None:
            backbone.load_encoder(self.model, spec.pretrained.modality, encoder, spec.pretrained.freeze)
        self.model_parameters = list(self.model.parameters())  # listed once: clipping walks them every step
        self.datasets = {s: adapter.split(s) for s in spec.splits}
        if len(self.datasets["train"]) == 0:
            raise DataError(f"{spec.dataset}: the train split is empty")
        adapter.check_train_batches(len(self.datasets["train"]), spec.batch_size)
        self.steps_per_epoch = math.ceil(len(self.datasets["train"]) / spec.batch_size)
        self.optimizer = make_optimizer(spec, self.method.param_groups(self.model))
        self.scheduler, self.schedule_when = make_scheduler(spec, self.optimizer, self.steps_per_epoch)
        self.task_loss = adapter.loss_fn()
        self.ctx = RunContext(
            task=self.task, modalities=self.modalities, task_loss=self.task_loss, device=device,
            epochs=spec.epochs, steps_per_epoch=self.steps_per_epoch, batch_size=spec.batch_size,
            iterate=self.iterate, optimizer=self.optimizer, clip_grad_norm=spec.optim.clip_grad_norm,
        )  # fmt: skip
        self.method.setup(self.model, self.task, self.ctx)
        self.probes = Probes(self.model, self.task, seed=spec.seed) if spec.probe_every > 0 else None
        self.history: list[dict[str, Any]] = []  # one row per epoch (metrics.jsonl)
        self.curves: list[dict[str, Any]] = []  # one row per logged step (curves.csv)
        self.start_epoch = 0
        self.next_step = 0  # global step of the next batch
        self.missing = incomplete.training_missing(
            spec, self.modalities, self.iterate("train"), adapter.unknown_token
        )

    def loader(self, split: str, shuffle: bool, epoch: int = 0, stream: int = 0) -> DataLoader:
        # The shuffle order depends only on (seed, epoch, stream), so a resumed run sees the same batches;
        # stream 0 is the training order, stream 1 the methods' shuffled passes (``iterate``).
        # Valid and test passes in order draw nothing at random: one loader whose workers persist across
        # epochs. A training pass gets fresh workers: their random streams (augmentation) start from the
        # epoch's seed, so that a resumed run draws what an uninterrupted one does.
        persist = self.workers > 0 and not shuffle and split != "train"
        if persist and split in self.eval_loaders:
            return self.eval_loaders[split]
        g = torch.Generator().manual_seed(self.spec.seed * 100_003 + epoch + stream * 1_000_000_007)
        # The sampler (and so the order) lives in this process, so loader workers do not change the batches.
        loader = DataLoader(
            self.datasets[split],
            batch_size=self.spec.batch_size,
            shuffle=shuffle,
            generator=g,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",  # page-locked: the copy to the GPU runs asynchronously
            num_workers=self.workers,
            persistent_workers=persist,
        )
        if persist:
            self.eval_loaders[split] = loader
        return loader

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def iterate(self, split: str, max_batches: int | None = None, shuffle_round: int | None = None):
        """A pass over a split, for methods (prototypes, held-out estimates): unshuffled, or in the
        ``shuffle_round``-th random order of its own seeded stream (apart from the training order)."""
        shuffle, epoch = shuffle_round is not None, shuffle_round or 0
        loader = self.loader(split, shuffle=shuffle, epoch=epoch, stream=int(shuffle))
        for i, batch in enumerate(_batches(loader, self.device)):
            if max_batches is not None and i >= max_batches:
                return
            yield batch

    # --- checkpoint ---------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        state = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "method": self.method.state_dict(),
            "probes": self.probes.state() if self.probes is not None else None,
            "rng": rng_state(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "curves": self.curves,
            "next_step": self.next_step,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.rd.file("checkpoint.pt"), buf.getvalue())

    def save_selected(self, epoch: int) -> None:
        """``best.pt``: the model and method state of the epoch best-validation selection picks so far,
        what ``modality_eval`` measures at the end and ``mmbalance evaluate`` reloads later."""
        buf = io.BytesIO()
        torch.save(
            {"epoch": epoch, "model": self.model.state_dict(), "method": self.method.state_dict()}, buf
        )
        atomic_write_bytes(self.rd.file("best.pt"), buf.getvalue())

    def load_selected(self, epoch: int) -> None:
        """Load the selected epoch's state: ``best.pt``, or the last checkpoint when that is the same
        epoch (runs recorded before ``best.pt`` existed)."""
        for name in ("best.pt", "checkpoint.pt"):
            f = self.rd.file(name)
            if f.exists():
                try:
                    state = torch.load(f, map_location=self.device, weights_only=False)
                    if state["epoch"] != epoch:
                        continue
                    self.model.load_state_dict(state["model"])
                    self.method.load_state_dict(state["method"])
                except Exception as e:  # truncated, zeros, a foreign file: whatever torch or the dicts raise
                    detail = " ".join(str(e).split())[:160]
                    raise DamagedRecordError(f"{f}: damaged ({type(e).__name__}: {detail}); "
                                             "the run must be trained again to measure it") from None  # fmt: skip
                return
        raise FileNotFoundError(
            f"{self.rd.path}: no best.pt or checkpoint.pt of the selected epoch {epoch}; "
            "the run must be trained again to measure its selected model"
        )

    def modality_eval(self, epoch: int) -> dict[str, Any]:
        """``modality_eval`` of the selected epoch's model on the test split (see ``modality_eval.py``)."""
        from mmbalance import modality_eval

        self.load_selected(epoch)
        self.model.eval()
        self.ctx.training = False

        def forward(batch: Batch) -> torch.Tensor:
            with self.autocast():
                return self.method.forward(self.model, batch, self.ctx).pred

        record = modality_eval.measure(
            self.model, forward, self.task, self.adapter.primary_value, self.adapter.compact_prediction,
            self.iterate("train"), self.iterate("test"), seed=self.spec.seed, unk=self.adapter.unknown_token(),
        )  # fmt: skip
        if hasattr(self.adapter, "modality_labels"):  # a label per modality (CH-SIMS): the report compares
            record["own_labels"] = self.adapter.modality_labels("test")
        return record

    def try_resume(self) -> None:
        """Load the last epoch checkpoint, if any, and rewrite the records from it: a run killed between
        its checkpoint and its records (or after its last epoch) resumes with records that match."""
        f = self.rd.file("checkpoint.pt")
        if not f.exists():
            return
        try:
            state = torch.load(f, map_location=self.device, weights_only=False)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.method.load_state_dict(state["method"])
            if self.probes is not None:
                self.probes.load(state["probes"])
            set_rng_state(state["rng"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.history, self.curves = state["history"], state["curves"]
            self.start_epoch = state["epoch"] + 1
            self.next_step = state.get("next_step", self.start_epoch * self.steps_per_epoch)
        except Exception as e:  # truncated or foreign file: whatever torch or the state dicts raise
            detail = " ".join(str(e).split())[:160]
            raise DamagedRecordError(
                f"{f}: damaged checkpoint, cannot resume ({type(e).__name__}: {detail}); "
                "rerun with --restart to discard this run's checkpoint and records and train it from epoch 0"
            ) from None
        self.write_records()

    # --- one step, one epoch --------------------------------------------------------------------
    def train_step(self, batch: Batch) -> float:
        ctx, model, method = self.ctx, self.model, self.method
        # With several turns per batch (MLA), the curves log the batch's last turn only.
        log_now = self.probes is not None and ctx.step % self.spec.probe_every == 0 and ctx.last_turn
        with self.autocast():
            out = method.forward(model, batch, ctx)
            loss = method.loss(out, batch, ctx)
        loss_value = loss.item()  # the step's one host sync: divergence check, epoch mean, curves
        if not math.isfinite(loss_value):
            raise Diverged(f"loss is {loss_value} at epoch {ctx.epoch}, step {ctx.step_in_epoch}")
        row: dict[str, Any] = {}
        if log_now:
            with self.autocast():
                row = self.probes.gradient_cosines(model, out, batch.target, self.task_loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # Methods read and modulate true gradients, so they are unscaled first (no-op without AMP); aux
        # modules run under the same autocast, so their weights meet the fp16/bf16 features they read.
        self.scaler.unscale_(self.optimizer)
        # An fp16 overflow step is thrown away whole: the scaler skips the update and lowers its scale, and
        # no method reads, scales or keeps state from the inf/NaN gradients (nor do the probes).
        if not self.overflowed():
            with self.autocast():
                method.after_backward(model, out, batch, ctx)
            if self.probes is not None:
                if log_now:
                    row.update(self.probes.grad_norms(model))
                metric = self._batch_metric if log_now else None
                with self.autocast():
                    row.update(self.probes.fit_step(out.features, batch.target, self.task_loss, metric))
            if self.spec.optim.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model_parameters, self.spec.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)  # skips the step if AMP overflowed; plain step() otherwise
        self.scaler.update()
        if self.schedule_when == "iteration" and ctx.last_turn:  # the schedule counts batches, not turns
            self.scheduler.step()
        if log_now:
            diag = {f"diag/{k}": float(v) for k, v in method.diagnostics().items()}
            self.curves.append({"epoch": ctx.epoch, "step": ctx.step, "loss": loss_value, **row, **diag})
        return loss_value

    def train_peak_mb(self) -> float | None:
        """CUDA: peak allocated memory (MB) since the epoch began (model, optimiser and method state,
        activations); the CGGM paper's extra memory is CGGM's peak minus joint training's. None off CUDA,
        where no allocator counts it."""
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / MB

    def method_memory_mb(self) -> dict[str, float]:
        """MB of tensors the method holds beyond the model (``memory.method_state``), after training."""
        return {k: v / MB for k, v in method_state(self.method, self.model, self.optimizer).items()}

    def overflowed(self) -> bool:
        """Whether loss scaling overflowed this step (a non-finite unscaled gradient); always False
        without it (fp32, bf16), at no cost. One host sync per step under fp16."""
        if not self.scaler.is_enabled():
            return False
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        # max |g| (inf norm): finite values never overflow it, NaN and inf propagate
        return bool(grads) and not torch.isfinite(torch.nn.utils.get_total_norm(grads, math.inf)).item()

    def _batch_metric(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        return metrics.primary_value(self.task.kind, pred, target, self.task.regions)

    def train_batch(self, batch: Batch) -> float:
        """All optimiser steps of one batch (``ctx.step`` set by the caller); the mean loss of its turns."""
        turns = self.method.turns(self.ctx)
        batch_loss = 0.0
        for k, turn in enumerate(turns):  # one optimiser step per turn; one turn for most methods
            self.ctx.turn, self.ctx.last_turn = turn, k == len(turns) - 1
            batch_loss += self.train_step(batch)
        self.ctx.turn, self.ctx.last_turn = None, True
        return batch_loss / len(turns)

    def train_epoch(self, epoch: int, bar) -> float:
        self.model.train()
        self.ctx.training, self.ctx.epoch = True, epoch
        self.method.on_epoch_start(self.ctx)
        parts = self.method.epoch_samples(self.ctx)
        self.model.train()  # the method may have evaluated the model to choose the samples
        if parts is None:
            batches = (
                (b, None) for b in _batches(self.loader("train", shuffle=True, epoch=epoch), self.device)
            )
        else:
            batches = self.planned_batches(parts, epoch)
        if self.missing is not None:  # the training steps see incomplete inputs; methods' own passes do not
            self.missing.start_epoch(epoch)
            batches = ((self.missing.apply(b), tags) for b, tags in batches)
        total, n = 0.0, 0
        for i, (batch, tags) in enumerate(batches):
            # Counted on from the previous epoch: a re-sampled epoch may have more batches than steps_per_epoch.
            self.ctx.step_in_epoch, self.ctx.step = i, self.next_step
            self.next_step += 1
            self.ctx.tags = tags
            total += self.train_batch(batch) * len(batch)
            n += len(batch)
            bar.update(1)
        self.ctx.tags = None
        if n == 0:
            raise ValueError(f"method {self.spec.method!r} chose no training samples for epoch {epoch}")
        self.method.on_epoch_end(self.ctx)
        return total / n

    def planned_batches(self, parts, epoch: int):
        """Batches of a method's re-sampled epoch (``Method.epoch_samples``): each part shuffled by
        (seed, epoch, part), or kept in order (``Method.ordered_samples``), and batched on its own
        (``Method.drop_last``: without its last incomplete batch), with the tags of its samples."""
        for k, part in enumerate(parts):
            if not part:
                continue
            g = torch.Generator().manual_seed(self.spec.seed * 100_003 + epoch * 1_009 + k + 1)
            order = (
                list(range(len(part)))
                if self.method.ordered_samples
                else torch.randperm(len(part), generator=g).tolist()
            )
            chunks = [order[j : j + self.spec.batch_size] for j in range(0, len(order), self.spec.batch_size)]
            if self.method.drop_last and len(chunks) > 1 and len(chunks[-1]) < self.spec.batch_size:
                chunks.pop()
            subset = torch.utils.data.Subset(self.datasets["train"], [i for i, _ in part])
            loader = DataLoader(
                subset, batch_sampler=chunks, collate_fn=collate,
                pin_memory=self.device.type == "cuda", num_workers=self.workers,
            )  # fmt: skip
            for batch, chunk in zip(_batches(loader, self.device), chunks, strict=True):
                yield batch, torch.tensor([part[j][1] for j in chunk], device=self.device)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, Any]:
        self.model.eval()
        self.ctx.training = False
        preds, targets, ids, loss_sum = [], [], [], 0.0
        probe_preds: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        for batch in _batches(self.loader(split, shuffle=False), self.device):
            with self.autocast():
                out = self.method.forward(self.model, batch, self.ctx)
            loss_sum += self.task_loss(out.pred, batch.target).item() * len(batch)
            preds.append(self.adapter.compact_prediction(out.pred.float()).cpu())  # AMP: metrics read fp32
            targets.append(batch.target.cpu())
            ids += batch.ids
            if self.probes is not None:
                with self.autocast():
                    for m, f in out.features.items():
                        probe_pred = self.probes.predict(m, f, batch.target.shape).float()
                        probe_preds[m].append(self.adapter.compact_prediction(probe_pred).cpu())
        self.ctx.training = True
        pred, target = torch.cat(preds), torch.cat(targets)
        result: dict[str, Any] = {"loss": loss_sum / len(ids), **self.adapter.evaluate(pred, target, ids)}
        if self.probes is not None:
            result["probe"] = {  # the primary metric alone: the same number as evaluate(...)[key]
                m: self.adapter.primary_value(torch.cat(p), target, ids) for m, p in probe_preds.items()
            }
        return result

    # --- records ------------------------------------------------------------------------------------
    def best_epoch(self) -> dict[str, Any]:
        key, higher = self.task.primary_metric, self.task.higher_is_better
        sign = 1 if higher else -1
        # Earliest epoch wins ties, so the choice is stable. Staged methods exclude their preparation epochs.
        candidates = [r for r in self.history if self.method.selectable(r["epoch"])] or self.history
        return max(candidates, key=lambda r: (sign * r["valid"][key], -r["epoch"]))

    def write_records(self) -> None:
        atomic_write_text(self.rd.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in self.history))
        atomic_write_text(self.rd.file("curves.csv"), rows_to_csv(self.curves))

    def final_record(self) -> dict[str, Any]:
        best = self.best_epoch()
        key, higher = self.task.primary_metric, self.task.higher_is_better
        pick = max if higher else min
        return {
            "protocol": f"test metrics at the best validation epoch (by valid {key})",
            "best_epoch": best["epoch"],
            "selection_metric": key,
            **({"test": best["test"]} if "test" in best else {}),
            "valid": best["valid"],
            # The CGGM code's protocol: best validation score over epochs, no test split.
            "best_valid_over_epochs": {
                k: pick(r["valid"][k] for r in self.history)
                for k in best["valid"]
                if k not in ("probe", "loss")
            },
            "task": self.task.kind,
            "modalities": self.modalities,
            "epochs": len(self.history),
        }

    def run(self) -> dict[str, Any]:
        """Train from ``start_epoch`` (set by ``try_resume``) to the last epoch; the final record."""
        total = (self.spec.epochs - self.start_epoch) * self.steps_per_epoch
        desc = f"{self.spec.dataset}/{self.spec.method} seed {self.spec.seed}"
        with tqdm(total=total, desc=desc, unit="step", disable=not self.progress, leave=False) as bar:
            for epoch in range(self.start_epoch, self.spec.epochs):
                # Wall seconds of each phase (metrics.jsonl only; final.json stays free of timings, so a
                # rerun reproduces it byte for byte). The official CGGM epoch is train + valid, no test.
                if self.device.type == "cuda":  # the training phase's own peak, apart from evaluation's
                    torch.cuda.reset_peak_memory_stats(self.device)
                t0 = time.perf_counter()
                train_loss = self.train_epoch(epoch, bar)
                t1 = time.perf_counter()
                peak = self.train_peak_mb()
                valid = self.evaluate("valid")
                t2 = time.perf_counter()
                test = self.evaluate("test") if self.spec.evaluate_test else None  # tuning: never read
                t3 = time.perf_counter()
                if self.schedule_when == "epoch":
                    self.scheduler.step()
                elif self.schedule_when == "plateau":
                    self.scheduler.step(valid["loss"])
                self.history.append({
                    "epoch": epoch, "train_loss": train_loss, "valid": valid,
                    **({"test": test} if test is not None else {}),
                    "lr": self.optimizer.param_groups[0]["lr"], "seconds": t3 - t0,
                    "train_seconds": t1 - t0, "valid_seconds": t2 - t1,
                    **({"test_seconds": t3 - t2} if test is not None else {}),
                    **({"train_peak_mb": peak} if peak is not None else {}),
                })  # fmt: skip
                if self.best_epoch()["epoch"] == epoch:  # before the checkpoint: a resumed run finds it
                    self.save_selected(epoch)
                self.save_checkpoint(epoch)
                self.write_records()
                if self.on_epoch is not None:
                    self.on_epoch(epoch, valid)
                bar.set_postfix(
                    {f"valid {self.task.primary_metric}": f"{valid[self.task.primary_metric]:.3f}"}
                )
        return self.final_record()


def prepare(spec: RunSpec, results: Path | str = "results", data_root: Path | None = None):
    """Adapter, run id and run directory of a spec (verifies the data is present)."""
    adapter = make_adapter(spec, data_root)
    adapter.verify()
    fingerprint = data_fingerprint(adapter, spec.splits)
    run_id = spec.run_id(fingerprint)
    return adapter, fingerprint, RunDir.of(Path(results), run_id)


def train(
    spec: RunSpec,
    results: Path | str = "results",
    data_root: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    amp: bool = False,
    workers: int | None = None,
    restart: bool = False,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    deterministic: bool = False,
) -> RunResult:
    """Train (or skip, or resume) the run of ``spec``; its record lands in ``results/runs/<run_id>``.

    ``amp``: mixed precision (fp16 + loss scaling on CUDA, bf16 on CPU); ``workers``: data-loader
    processes (None: ``auto_workers``). Both are execution options like ``device``: not part of the run
    id, recorded in env.json.
    ``deterministic``: deterministic CUDA kernels, cuDNN benchmark mode off (``configure_backends``).
    ``restart``: an unfinished run discards its checkpoint and records and trains from epoch 0 (the way
    out of a damaged checkpoint); a finished run is still reused.
    A run that another live worker holds the lock of is returned as ``running elsewhere``.
    ``on_epoch(epoch, valid)``: called after each epoch (tuning: the pruner); raising ``Pruned`` stops the
    run with status ``pruned`` (its checkpoint stays, so calling ``train`` again resumes it).
    """
    # Before anything is read or written: an option never touches a run's records.
    if workers is not None and workers < 0:
        raise SpecError(f"--workers {workers}: must be 0 (load in this process) or more")
    dev = resolve_device(device)
    adapter, fingerprint, rd = prepare(spec, results, data_root)
    for folder in (rd.path.parent, rd.path):
        if folder.exists() and not folder.is_dir():
            raise DamagedRecordError(
                f"{folder}: a file where a folder of run records should be; move it away"
            )
    if (final := rd.finished()) is not None:
        tidy_finished(rd)
        return RunResult(rd.run_id, rd.path, "skipped", final)
    make_method(spec).check(adapter.task)  # refuse before anything is written
    encoder = None
    if spec.pretrained is not None:  # the backbone's own unimodal run first (reused when recorded)
        encoder = backbone.pretrained_encoder(spec, adapter.task, lambda pre: train(
            pre, results, data_root, device, progress, amp, workers, deterministic=deterministic))  # fmt: skip
    try:
        with RunLock(rd.file("lock")) as lock:
            if not lock.acquired:
                holder = lock.holder.describe() if lock.holder else "another worker"
                return RunResult(rd.run_id, rd.path, "running elsewhere", reason=f"locked by {holder}")
            if (final := rd.finished()) is not None:  # finished by the lock's previous owner meanwhile
                return RunResult(rd.run_id, rd.path, "skipped", final)
            rd.remove_temp()  # a killed writer's; only the lock's owner writes here
            if restart:
                _discard_records(rd)
            # Built and resumed before any record is written: a method that refuses this model (setup
            # raises MethodNotApplicable), a model that cannot be built or a damaged checkpoint leaves
            # the folder as it was.
            workers = auto_workers(adapter, dev) if workers is None else workers
            trainer = Trainer(spec, adapter, rd, dev, progress, amp=amp, workers=workers, on_epoch=on_epoch,
                              deterministic=deterministic, encoder=encoder)  # fmt: skip
            trainer.try_resume()
            return _train_locked(trainer, fingerprint, amp, workers)
    except BaseException:
        if rd.path.is_dir() and not any(rd.path.iterdir()):
            rd.path.rmdir()  # the lock's folder, left empty: no trace of a run that never started
        raise


def _discard_records(rd: RunDir) -> None:
    for f in rd.path.iterdir():
        if f.is_file() and not f.name.startswith("lock"):
            f.unlink()


def _worker_message(e: DataError) -> str:
    """The adapter's own message of a ``DataError``; a DataLoader worker's comes back as "Caught
    DataError in DataLoader worker process 0." plus the worker's traceback, whose last line holds it."""
    text = str(e)
    if text.startswith("Caught ") and "Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return text


def _train_locked(trainer: Trainer, fingerprint: str, amp: bool, workers: int) -> RunResult:
    spec, rd = trainer.spec, trainer.rd
    spec_doc = {"run_id": rd.run_id, "data_fingerprint": fingerprint, **spec.canonical()}
    if trainer.adapter.fixture:  # reports label such runs and never rank them
        spec_doc = {**spec_doc, "data_fixture": True}
    atomic_write_text(rd.file("spec.yaml"), yaml.safe_dump(spec_doc, sort_keys=False))
    atomic_write_json(
        rd.file("env.json"),
        {**environment(trainer.device), "amp": amp, "loader_workers": workers, **trainer.backends},
    )
    rd.set_status("running")
    try:
        final = trainer.run()
    except MethodNotApplicable:
        # Refused once it met the model or a batch (e.g. OGM-GE needs late concat fusion): that is not a
        # failed run but no run at all, so nothing of it stays on disk.
        _discard_records(rd)
        raise
    except DataError as e:
        # A data file that cannot be read (read only now, in training): the data failed, not the method,
        # and the fixed file changes the data fingerprint, so the run id too; a record or checkpoint kept
        # here could never be resumed. Nothing stays on disk; the caller gets the one-line error.
        _discard_records(rd)
        raise type(e)(_worker_message(e)) from None
    except Diverged as e:
        rd.set_status("failed", f"diverged: {e}")
        return RunResult(rd.run_id, rd.path, "failed", reason=f"diverged: {e}")
    except Pruned as e:
        rd.set_status("pruned", str(e))
        return RunResult(rd.run_id, rd.path, "pruned", reason=str(e))
    except KeyboardInterrupt:
        raise  # stays "running"; the next call resumes from the checkpoint
    except Exception as e:
        rd.set_status("failed", f"{type(e).__name__}: {e}")
        raise
    final = {"run_id": rd.run_id, "spec": spec.canonical(), **final}
    # The method's own tensors, before modality_eval loads the selected epoch's state.
    atomic_write_json(rd.file("env.json"), {**rd.env(), "method_memory_mb": trainer.method_memory_mb()})
    if spec.evaluate_test:  # modality evaluation scores the test split; tuning trials never read it
        t0 = time.process_time()
        try:
            final["modality_eval"] = trainer.modality_eval(final["best_epoch"])
        except (ValueError, RuntimeError) as e:  # evaluation only: the trained run stays; `evaluate` retries
            final["modality_eval"] = {"error": f"{type(e).__name__}: {e}"}
        atomic_write_json(
            rd.file("env.json"), {**rd.env(), "modality_eval_cpu_seconds": time.process_time() - t0}
        )
    atomic_write_json(rd.file("final.json"), final)
    rd.set_status("done")
    return RunResult(rd.run_id, rd.path, "done", final)


def evaluate_run(run_dir: Path | str, data_root: Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Recompute ``modality_eval`` of a finished run from its records (spec, ``best.pt``), no training.
    Returns the new record; the caller decides whether to compare it or write it into final.json."""
    from mmbalance.spec import validate_spec

    rd = RunDir(Path(run_dir))
    if rd.status() != "done":
        raise ValueError(f"{rd.path}: status is {rd.status()!r}, not 'done'; only finished runs are scored")
    doc = rd.spec()
    spec = validate_spec({k: v for k, v in doc.items() if k not in RECORD_ONLY})
    adapter = make_adapter(spec, data_root)
    adapter.verify()
    if (fp := data_fingerprint(adapter)) != doc.get("data_fingerprint"):
        raise ValueError(f"{rd.file('spec.yaml')}: the data fingerprint {doc.get('data_fingerprint')} "
                         f"differs from the data found now ({fp})")  # fmt: skip
    # Mixed precision changes the numbers: score under the setting the run was trained (and scored) with.
    amp = bool(rd.env().get("amp", False)) if rd.file("env.json").exists() else False
    trainer = Trainer(spec, adapter, rd, resolve_device(device), progress=False, amp=amp)
    return trainer.modality_eval(rd.final()["best_epoch"])
