"""Batches of a data set as training and encoding take them: shuffled per epoch by a seed, one rank's share
of each global batch under torchrun (``dhvc_ext.distributed``), optionally with their row numbers or with the
rows' neighbour targets.

Shapes: rows (B, D) float32; row numbers (B,) int64; targets (B, K).
"""
import numpy as np
import torch

from dhvc_ext import distributed as dist

__all__ = ["IndexedRows", "TargetBatches", "identity_collate", "row_loader"]


def identity_collate(batch):
    """collate_fn for datasets whose ``__getitems__`` already returns the batch as one tensor."""
    return batch


class IndexedRows(torch.utils.data.Dataset):
    """A ``TorchFeatures`` whose batches also carry their row numbers: (rows (B, D), indices (B,) int64)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i], i

    def __getitems__(self, indices):
        return self.rows.__getitems__(indices), torch.as_tensor(np.asarray(indices, dtype=np.int64))


class TargetBatches:
    """A loader's batches as (rows, their neighbour targets): from batches (rows, row numbers) with targets
    (N, K), else from batches of rows with None."""

    def __init__(self, loader, targets):
        self.loader, self.targets = loader, targets

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.targets is None:
                yield batch, None
            else:
                x, rows = batch
                yield x, self.targets[rows.to(self.targets.device)]


def row_loader(dataset, size, *, shuffle, seed, world=1, rank=0, sharded=False, with_index=False,
               pin_memory=False):
    """A DataLoader over ``dataset`` (a ``dhvc_ext.data.Dataset``) in batches of ``size`` rows: shuffled by
    ``seed`` (the last, short batch dropped) for training, in order for encoding. ``sharded`` with world > 1:
    rank's share, see ``dhvc_ext.distributed``; ``size`` is then the global batch. ``with_index``: batches are
    (rows, their row numbers (B,) int64), in the same order."""
    n = len(dataset)
    common = dict(collate_fn=identity_collate, pin_memory=pin_memory)
    rows = dataset.torch_dataset()
    if with_index:
        rows = IndexedRows(rows)
    if sharded and world > 1:
        if shuffle:
            sampler = dist.DistributedBatchSampler(n, size, shuffle=True, seed=seed, drop_last=n > size)
        else:
            start, stop = dist.shard_range(n, rank, world)
            sampler = torch.utils.data.BatchSampler(range(start, stop), size, drop_last=False)
        return torch.utils.data.DataLoader(rows, batch_sampler=sampler, **common)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(rows, batch_size=size, shuffle=shuffle, generator=gen,
                                       drop_last=shuffle and n > size, **common)
