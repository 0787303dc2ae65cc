"""Data parallelism on ``torch.distributed``: the process group, the per-rank share of the data, and the
collectives that the mixture and the trainer use. A leaf module: it imports torch only.

Launch with torchrun (one process per GPU, or several CPU processes), which sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT:

    torchrun --nproc-per-node 8 -m dhvc_ext train --data fashion-mnist --out runs/fm

``init_from_env()`` joins the group that torchrun describes (NCCL when the process trains on a GPU, gloo on
the CPU); without those variables, or with WORLD_SIZE=1, it does nothing and everything here behaves as one
process: ``world_size() == 1``, ``rank() == 0``, the collectives return their input.

How the data are split (``DistributedBatchSampler``): every rank draws the same permutation of the N rows
per epoch, from a generator seeded by the run's seed and the epoch (exactly the permutation that one process
draws through DataLoader(shuffle=True)), cuts it into global batches of B rows, and takes its own B / W
consecutive rows of each. The W ranks together therefore see, step by step, the very batches of a
one-process run with batch size B: DDP's gradient average over ranks is the gradient of the global batch
mean for every per-sample term. (torch's DistributedSampler instead deals rows out round-robin from the
permutation and pads, so its global batches are not those of one process.) Passes without shuffling (the
encoding for the mixture) give rank r the contiguous block ``shard_range(N, r, W)``, so that the blocks in
rank order are the data in order.
"""
import math
import os

import torch
import torch.distributed as dist

__all__ = ["DistributedBatchSampler", "all_gather_rows", "all_reduce_sum", "broadcast_", "finish", "init_from_env",
           "is_initialized", "is_main", "local_rank", "rank", "shard_range", "world_size"]


def is_initialized():
    """Whether a torch.distributed process group is up (and this process is one of several or one of one)."""
    return dist.is_available() and dist.is_initialized()


def world_size():
    """W, the number of processes; 1 without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def rank():
    """This process's rank in 0..W-1; 0 without a process group."""
    return dist.get_rank() if is_initialized() else 0


def is_main():
    """True on rank 0, the one process that writes logs, checkpoints and plots."""
    return rank() == 0


def local_rank():
    """This process's index on its node (torchrun's LOCAL_RANK), which picks its GPU; 0 when unset."""
    return int(os.environ.get("LOCAL_RANK", 0))


def init_from_env(device=None, backend=None, timeout_s=1800):
    """Join the process group that torchrun's environment describes; returns True if one is up afterwards.

    ``device``: the torch.device (or string) this process will train on; a CUDA device selects NCCL and
    becomes the current device (cuda:LOCAL_RANK when no index is given), anything else gloo. ``backend``
    overrides the choice. Without WORLD_SIZE in the environment, or with WORLD_SIZE=1, nothing is done.
    """
    if is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("dhvc_ext.distributed: WORLD_SIZE > 1 but this torch was built without torch.distributed")
    device = torch.device(device) if device is not None else None
    if backend is None:
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None else local_rank())
    import datetime
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def finish():
    """Leave the process group in step: a barrier (rank 0 may still be writing results), then its teardown.
    A process that exits while its peers still use the group can abort them (gloo)."""
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _comm_device():
    """Where tensors must be for the group's collectives: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors):
    """Sum each tensor of the list over all ranks, in place, in float64 (a no-op with one process).

    The ranks receive the same bytes (gloo's and NCCL's ring all-reduce reduce each slice once and then
    broadcast it; DDP's gradient averaging rests on the same property), so ranks that apply the same
    deterministic update to the sums stay identical: the 2-process tests check it bit for bit."""
    if world_size() == 1:
        return tensors
    device = _comm_device()
    flat = torch.cat([t.reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return tensors


def broadcast_(tensors, src=0):
    """Overwrite each tensor of the list with rank ``src``'s values, in place (a no-op with one process)."""
    if world_size() == 1:
        return tensors
    device = _comm_device()
    for t in tensors:
        buffer = t.detach().to(device).contiguous()
        dist.broadcast(buffer, src)
        with torch.no_grad():
            t.copy_(buffer)
    return tensors


def all_gather_rows(x):
    """The rows (n_r, ...) of every rank concatenated in rank order, on every rank (ranks may hold different
    numbers of rows). With one process, x itself."""
    if world_size() == 1:
        return x
    device, w = _comm_device(), world_size()
    counts = torch.tensor([x.shape[0]], device=device, dtype=torch.int64)
    gathered = [torch.zeros_like(counts) for _ in range(w)]
    dist.all_gather(gathered, counts)
    counts = [int(c) for c in gathered]
    padded = torch.zeros((max(counts),) + tuple(x.shape[1:]), device=device, dtype=x.dtype)
    padded[:x.shape[0]] = x.to(device)
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(x.device)


def all_gather_objects(obj):
    """[obj of rank 0, ..., obj of rank W-1] on every rank (picklable objects; small ones)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_range(n, rank_, world):
    """(start, stop) of rank ``rank_``'s contiguous block of n rows split over ``world`` ranks; block sizes
    differ by at most one and the blocks in rank order cover 0..n-1."""
    return n * rank_ // world, n * (rank_ + 1) // world


class DistributedBatchSampler(torch.utils.data.Sampler):
    """Batches of indices for one rank: its share of each global batch of a seeded permutation.

    Args:
        n: number of rows.
        batch_size: B, the global batch size (all ranks together); rank r takes rows
            ``shard_range(b, r, W)`` of each global batch of b rows.
        shuffle: a fresh permutation per epoch from ``torch.Generator().manual_seed(seed)`` (the caller folds
            the epoch into ``seed``), the one DataLoader(shuffle=True, generator=...) draws; else 0..n-1.
        drop_last: drop the last global batch when it has fewer than B rows.
        rank, world: this rank and W (default: the process group's).

    Every rank yields the same number of batches. A batch can be empty for a rank only when a global batch
    has fewer rows than W; the trainer refuses data that would make that happen.
    """

    def __init__(self, n, batch_size, *, shuffle, seed=0, drop_last=False, rank_=None, world=None):
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = int(n), int(batch_size), shuffle, seed, drop_last
        self.rank = rank() if rank_ is None else int(rank_)
        self.world = world_size() if world is None else int(world)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"DistributedBatchSampler: rank {self.rank} is not in 0..{self.world - 1}")

    def _global_order(self):
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(self.seed)
        # DataLoader draws its workers' base seed from the generator before the sampler's permutation: the
        # same draw first gives the same permutation.
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        return torch.randperm(self.n, generator=generator)

    def __len__(self):
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = self._global_order()
        for b in range(len(self)):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            start, stop = shard_range(batch.numel(), self.rank, self.world)
            yield batch[start:stop].tolist()
