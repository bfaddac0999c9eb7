"""The batches of a run: training order, evaluation passes and a method's re-sampled epochs.

A shuffled order depends only on (seed, epoch, stream), so a resumed run sees the batches an
uninterrupted one does; loader workers do not change the batches (the sampler lives in this process).
``Batching`` is the ``Trainer``'s part that builds them (it holds ``spec``, ``datasets``, ``device``,
``workers``, ``method`` and ``eval_loaders``).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from mmbalance.common.spec import RunSpec
from mmbalance.training.data import collate
from mmbalance.training.method import Resampling

__all__ = ["Batching", "to_device"]


def to_device(loader: DataLoader, device: torch.device):
    for batch in loader:
        yield batch.to(device, non_blocking=device.type == "cuda")


class Batching:
    spec: RunSpec
    datasets: dict[str, torch.utils.data.Dataset]
    device: torch.device
    workers: int
    eval_loaders: dict[str, DataLoader]
    method: Resampling

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

    def iterate(self, split: str, max_batches: int | None = None, shuffle_round: int | None = None):
        """A pass over a split, for methods (prototypes, held-out estimates): unshuffled, or in the
        ``shuffle_round``-th random order of its own seeded stream (apart from the training order)."""
        shuffle, epoch = shuffle_round is not None, shuffle_round or 0
        loader = self.loader(split, shuffle=shuffle, epoch=epoch, stream=int(shuffle))
        for i, batch in enumerate(to_device(loader, self.device)):
            if max_batches is not None and i >= max_batches:
                return
            yield batch

    def epoch_batches(self, parts, epoch: int):
        """``(batch, tags)`` of a training epoch: the shuffled train split (``parts`` None, no tags), or a
        method's re-sampled epoch (``planned_batches``); with ``train_missing``, LNLN's incomplete inputs
        (the training steps see them; the methods' own passes, ``iterate``, do not)."""
        if parts is not None:
            batches = self.planned_batches(parts, epoch)
        else:
            batches = (
                (b, None) for b in to_device(self.loader("train", shuffle=True, epoch=epoch), self.device)
            )
        if self.missing is None:
            return batches
        self.missing.start_epoch(epoch)
        return ((self.missing.apply(b), tags) for b, tags in batches)

    def planned_batches(self, parts, epoch: int):
        """Batches of a method's re-sampled epoch (``Resampling.epoch_samples``): each part shuffled by
        (seed, epoch, part), or kept in order (``Resampling.ordered_samples``), and batched on its own
        (``Resampling.drop_last``: without its last incomplete batch), with the tags of its samples."""
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
            for batch, chunk in zip(to_device(loader, self.device), chunks, strict=True):
                yield batch, torch.tensor([part[j][1] for j in chunk], device=self.device)
