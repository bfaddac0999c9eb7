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

import math
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import mmbalance
from mmbalance.common.core import DeviceError
from mmbalance.common.locks import RunLock
from mmbalance.common.records import (
    RECORD_ONLY,
    DamagedRecordError,
    RunDir,
    atomic_write_json,
    atomic_write_text,
)
from mmbalance.common.registry import DATASETS, METHODS
from mmbalance.common.spec import RunSpec, SpecError
from mmbalance.common.status import tidy_finished
from mmbalance.training import backbone, incomplete, metrics
from mmbalance.training.batching import Batching
from mmbalance.training.checkpoint import Checkpoints
from mmbalance.training.data import Batch, DataError, DatasetAdapter
from mmbalance.training.epoch_records import best_epoch, final_record, write_epoch_records
from mmbalance.training.evaluation import Evaluation
from mmbalance.training.memory import method_memory_mb, train_peak_mb
from mmbalance.training.method import Method, MethodNotApplicable, Resampling, RunContext, Turns
from mmbalance.training.probes import Probes

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


@dataclass(frozen=True)
class RunOptions:
    """How a run executes, as the CLI, a sweep and its workers pass it on: none of it is part of the run
    id (env.json records it). ``amp``: mixed precision (fp16 + loss scaling on CUDA, bf16 on CPU);
    ``workers``: data-loader processes (None: ``auto_workers``); ``deterministic``: deterministic CUDA
    kernels (``configure_backends``); ``restart``: an unfinished run starts again from epoch 0."""

    device: str = "auto"
    progress: bool = True
    amp: bool = False
    workers: int | None = None
    restart: bool = False
    deterministic: bool = False


# --- building blocks: the one factory of a run's dataset adapter and method ----------------------------
def make_adapter(spec: RunSpec, data_root: Path | None = None) -> DatasetAdapter:
    cls = DATASETS.get(spec.dataset)
    root = Path(data_root) / spec.dataset if data_root is not None else None
    params = spec.typed("dataset_params")
    if cls.seed_param is not None and getattr(params, cls.seed_param) is None:
        params = params.model_copy(update={cls.seed_param: spec.seed})  # the run's seed draws the data
    return cls(params, root)


def make_method(spec: RunSpec) -> Method:
    return METHODS.get(spec.method)(spec.typed("method_params"))


def method_parameters(method: Method, model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The method's own trainable parameters, for the optimiser; a part that is the model's (a method
    that kept ``model.head``) is refused, since the model's parameters are trained and saved already."""
    model_ids = {id(p) for p in model.parameters()}
    for k, part in method.parts().items():
        params = [part] if isinstance(part, torch.nn.Parameter) else getattr(part, "parameters", list)()
        if any(id(p) in model_ids for p in params):
            raise TypeError(f"method {method.name!r}: self.{k} is part of the model; read it from ctx.model")
    return method.parameters()


def optimizer_groups(method: Method, model: torch.nn.Module) -> list[dict[str, Any]]:
    """The method's parameter groups of the model, its own parameters joining the last one."""
    groups = method.param_groups(model)
    return [
        *groups[:-1],
        {**groups[-1], "params": [*groups[-1]["params"], *method_parameters(method, model)]},
    ]


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


CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when run from a checkout


def code_version(root: Path = CHECKOUT) -> str:
    """``<package version>+<git commit>[-dirty]`` when run from a checkout, else the version. Dirty means
    changed code or specs: the committed outputs under ``results/`` are left out (``make results`` deletes
    and rewrites them while it trains, which is not a change of the code that ran)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
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


# --- the loop -------------------------------------------------------------------------------------
class Trainer(Batching, Checkpoints, Evaluation):
    """One run: everything ``train`` needs, held together so the loop reads top to bottom. Its batches,
    checkpoints and evaluation are its parts in ``batching.py``, ``checkpoint.py`` and ``evaluation.py``;
    its records are written by ``epoch_records.py``."""

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
        method: Method | None = None,  # checked against the task already (None: built and checked here)
        encoder: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """``encoder``: the pretrained weights of ``spec.pretrained.modality``'s encoder (``backbone.py``)."""
        self.on_epoch = on_epoch  # called with (epoch, validation metrics) after each epoch's records
        self.spec, self.adapter, self.rd = spec, adapter, run_dir
        self.device, self.progress = device, progress
        # Mixed precision: fp16 + loss scaling on CUDA, bf16 (no scaling needed) elsewhere. Off: both are
        # no-ops, so CPU runs keep their exact numbers.
        self.amp, self.workers = amp, workers
        self.backends = configure_backends(device, deterministic)
        self.eval_loaders: dict[str, DataLoader] = {}
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and self.amp_dtype == torch.float16)
        self.task = adapter.task
        seed_everything(spec.seed)
        if method is None:
            method = make_method(spec)
            method.check(self.task)
        self.method = method
        self.modalities = self.method.model_modalities(self.task.modalities)
        self.model = adapter.build_model(spec.typed("model_params"), self.modalities).to(device)
        if encoder is not None:
            backbone.load_encoder(self.model, spec.pretrained.modality, encoder, spec.pretrained.freeze)
        self.model_parameters = list(self.model.parameters())  # listed once: clipping walks them every step
        self.datasets = {s: adapter.split(s) for s in spec.splits}
        if len(self.datasets["train"]) == 0:
            raise DataError(f"{spec.dataset}: the train split is empty")
        adapter.check_train_batches(len(self.datasets["train"]), spec.batch_size)
        self.steps_per_epoch = math.ceil(len(self.datasets["train"]) / spec.batch_size)
        self.task_loss = adapter.loss_fn()
        self.ctx = RunContext(
            task=self.task, model=self.model, modalities=self.modalities, task_loss=self.task_loss,
            device=device, epochs=spec.epochs, steps_per_epoch=self.steps_per_epoch, batch_size=spec.batch_size,
            iterate=self.iterate, clip_grad_norm=spec.optim.clip_grad_norm, optim=spec.optim,
        )  # fmt: skip
        self.method.build(self.ctx)
        self.method.to(device)
        self.optimizer = self.ctx.optimizer = make_optimizer(spec, optimizer_groups(self.method, self.model))
        self.scheduler, self.schedule_when = make_scheduler(spec, self.optimizer, self.steps_per_epoch)
        self.probes = Probes(self.model, self.task, seed=spec.seed) if spec.probe_every > 0 else None
        self.history: list[dict[str, Any]] = []  # one row per epoch (metrics.jsonl)
        self.curves: list[dict[str, Any]] = []  # one row per logged step (curves.csv)
        self.start_epoch = 0
        self.next_step = 0  # global step of the next batch
        self.missing = incomplete.training_missing(
            spec, self.modalities, self.iterate("train"), adapter.unknown_token
        )

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

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
            diag = {f"diag/{k}": float(v) for k, v in method.diagnostics(ctx).items()}
            self.curves.append({"epoch": ctx.epoch, "step": ctx.step, "loss": loss_value, **row, **diag})
        return loss_value

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
        turns = self.method.turns(self.ctx) if isinstance(self.method, Turns) else (None,)
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
        parts = self.method.epoch_samples(self.ctx) if isinstance(self.method, Resampling) else None
        self.model.train()  # the method may have evaluated the model to choose the samples
        total, n = 0.0, 0
        for i, (batch, tags) in enumerate(self.epoch_batches(parts, epoch)):
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
                peak = train_peak_mb(self.device)
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
                best = best_epoch(self.history, self.task, self.method.selectable)
                if best["epoch"] == epoch:  # before the checkpoint: a resumed run finds it
                    self.save_selected(epoch)
                self.save_checkpoint(epoch)
                write_epoch_records(self.rd, self.history, self.curves)
                if self.on_epoch is not None:
                    self.on_epoch(epoch, valid)
                key = self.task.primary_metric
                bar.set_postfix({f"valid {key}": f"{valid[key]:.3f}"})
        return final_record(self.history, self.task, self.modalities, self.method.selectable)


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
    method = make_method(spec)
    method.check(adapter.task)  # refuse before anything is written; the Trainer takes this method
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
            # Built and resumed before any record is written: a method that refuses this task or model
            # (check or build raises MethodNotApplicable), a model that cannot be built or a damaged checkpoint leaves
            # the folder as it was.
            workers = auto_workers(adapter, dev) if workers is None else workers
            trainer = Trainer(spec, adapter, rd, dev, progress, amp=amp, workers=workers, on_epoch=on_epoch,
                              deterministic=deterministic, method=method, encoder=encoder)  # fmt: skip
            trainer.try_resume()
            return _train_locked(trainer, fingerprint, amp, workers)
    except BaseException:
        if rd.path.is_dir() and not any(rd.path.iterdir()):
            rd.path.rmdir()  # the lock's folder, left empty: no trace of a run that never started
        raise


def live_train(spec: RunSpec, results: Path, data_root: Path | None, cfg: Any, group: str | None,
               **train_options: Any) -> RunResult:  # fmt: skip
    """``train`` with the run logged live to W&B (when ``cfg``, a ``wandb_log.WandbSettings``, is set); a run
    reused or failed before its first epoch is sent from its record (``wandb_log.log_run``), once."""
    if cfg is None:
        return train(spec, results, data_root, **train_options)
    from mmbalance.training.wandb_log import LiveRun, already_sent, log_run

    _, _, rd = prepare(spec, results, data_root)  # the run's folder, before it trains
    live = None if rd.finished() is not None or already_sent(rd, cfg) else LiveRun(rd, cfg, results, group)
    try:
        result = train(spec, results, data_root, on_epoch=live, **train_options)
    finally:
        where = live.close() if live is not None else None
    if where is None and result.path.is_dir():
        log_run(result.path, cfg, results, group)
    return result


def run_outcome(
    spec: RunSpec, results: Path | str, data_root: Path | None, options: RunOptions,
    wandb: Any = None, group: str | None = None,
) -> RunResult:  # fmt: skip
    """``train``, with a refusal or an error as the run's outcome instead of an exception (a sweep goes on
    with its next run): ``not applicable`` (the method refused the model; nothing was written) or
    ``failed`` (already recorded on disk by ``train``). ``wandb`` (``wandb_log.WandbSettings``): the run is
    logged live, in W&B group ``group``."""
    try:
        return live_train(spec, Path(results), data_root, wandb, group, **asdict(options))
    except MethodNotApplicable as e:
        return RunResult("-", Path(), "not applicable", reason=str(e))
    except Exception as e:
        return RunResult("?", Path(), "failed", reason=f"{type(e).__name__}: {e}")


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
    held = method_memory_mb(trainer.method, trainer.model, trainer.optimizer)
    atomic_write_json(rd.file("env.json"), {**rd.env(), "method_memory_mb": held})
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
    from mmbalance.common.spec import validate_spec

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
