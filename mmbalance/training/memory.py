"""Memory of a training step: the bytes a method holds beyond the model, and peak-memory growth over a block.

Used by the runner (``env.json`` ``memory``: what each run held, so that the CGGM paper's "additional
memory of the classifiers" is a column of the records) and by ``scripts/bench_speed.py`` /
``scripts/gpu_check.py``.

- ``method_state``: tensors a method holds beyond the model (its modules' parameters, buffers and
  gradients, its optimisers' state, prototypes, ...), plus main-optimiser state of non-model parameters.
  Exact byte counts, the same on every device.
- ``PeakMemory``: peak growth over a ``with`` block. CUDA: ``torch.cuda.max_memory_allocated`` minus what
  was allocated at the start (the caching allocator's reserve is not counted). CPU: the growth of the
  process's peak RSS (VmHWM, reset through ``/proc/self/clear_refs`` after ``malloc_trim``; Linux only).
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn

MB = 2**20


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct tensors among ``tensors`` (a tensor seen twice counts once)."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def method_state(method: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes the method holds beyond the model: its modules (parameters + buffers), their gradients, its
    optimisers' state, other tensors; plus main-optimiser state of parameters that are not the model's."""
    owned = {t.data_ptr() for t in chain(model.parameters(), model.buffers())}
    modules, grads, optims, tensors = [], [], [], []

    def visit(obj: Any, depth: int = 0) -> None:
        if depth > 4 or obj is model or obj is optimizer:
            return
        if isinstance(obj, nn.Module):
            mine = [p for p in obj.parameters() if p.data_ptr() not in owned]
            modules.extend(mine + [b for b in obj.buffers() if b.data_ptr() not in owned])
            grads.extend(p.grad for p in mine if p.grad is not None)
        elif isinstance(obj, torch.optim.Optimizer):
            optims.extend(v for s in obj.state.values() for v in s.values())
        elif isinstance(obj, torch.Tensor):
            if obj.data_ptr() not in owned:
                tensors.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v, depth + 1)

    visit(vars(method))
    for group in optimizer.param_groups:  # aux parameters trained by the runner's optimiser
        for p in group["params"]:
            if p.data_ptr() not in owned:
                modules.append(p)
                grads.extend([p.grad] if p.grad is not None else [])
                optims.extend(optimizer.state.get(p, {}).values())
    return {"modules": tensor_bytes(modules), "gradients": tensor_bytes(grads),
            "optimiser_state": tensor_bytes(optims), "other": tensor_bytes(tensors)}  # fmt: skip


class PeakMemory:
    """Peak memory growth over a ``with`` block (CUDA: allocator; CPU: process peak RSS), in ``bytes``."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, 0

    @staticmethod
    def _rss(field_name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(f"/proc/self/status has no {field_name}")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, or the next run reuses it unseen
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = self._rss("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.bytes = self._rss("VmHWM") - self.base


def train_peak_mb(device: torch.device) -> float | None:
    """CUDA: peak allocated memory (MB) since the epoch began (model, optimiser and method state,
    activations); the CGGM paper's extra memory is CGGM's peak minus joint training's. None off CUDA,
    where no allocator counts it."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / MB


def method_memory_mb(method: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """MB of tensors the method holds beyond the model (``method_state``), after training."""
    return {k: v / MB for k, v in method_state(method, model, optimizer).items()}
