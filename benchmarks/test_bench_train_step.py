"""Benchmarks of one training step (issue 14, item 3, and the samples/s of item 2): what DHVC adds to an
autoencoder step, on the CPU, one thread.

- "plain": a plain PyTorch autoencoder step of the same network (a copy of the trainer's MLP encoder, its
  mean layer and its decoder: D-500-500-2000-10-2000-500-500-D), on the same batch: forward, Bernoulli
  cross-entropy summed over the features and averaged over the batch, backward, gradient clipping at the
  same norm, Adam. Under bf16 the forward runs in ``torch.autocast("cpu", dtype=torch.bfloat16)``.
- "dhvc-pretrain" and "dhvc-joint": ``Trainer.step`` (the training's own step, on a ``Trainer.replica`` of
  each phase, as ``dhvc train --profile`` takes them) of the default TrainConfig with batch_size 256: the vMF
  posterior and its sampler, the KL to the uniform prior, and in the joint phase the head, the mixture
  posterior, the posterior KL, the entropies and the neighbour term (uniform targets: the same cost).
  bf16 is ``TrainConfig(bf16=True)``.

Digits-size (D = 64, scikit-learn's digits) and Fashion-size (D = 784: Fashion-MNIST where installed, else
synthetic rows of benchmarks/cost_curve.py) rows, float32 and bf16, batch 256. Each group is one (D, dtype);
extra_info: n_elements = 256 (samples per second), impl, threads, and for the DHVC rows
``overhead_vs_plain`` = t(DHVC step) / t(plain step) - 1 from the medians of ``OVERHEAD_ROUNDS`` interleaved
pairs of steps in the same test (so that another process's load falls on both alike; the issue's goal for
the joint step: <= 0.15). With ``--benchmark-disable`` (CI) every case takes two steps and the overhead is
not measured.
"""
import copy
import itertools
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import torch_threads

from dhvc_ext.train import Trainer, TrainConfig

BATCH = 256
OVERHEAD_ROUNDS = 15
SIZES = ["digits", "fashion"]
DTYPES = ["float32", "bf16"]
IMPLS = ["plain", "dhvc-pretrain", "dhvc-joint"]
_data = {}


def _dataset(size):
    if size not in _data:
        from dhvc_ext.data import Dataset, DatasetNotFoundError, load_dataset
        if size == "digits":
            ds = load_dataset("digits")
        else:
            try:
                ds = load_dataset("fashion-mnist")
            except DatasetNotFoundError:
                from cost_curve import synthetic_rows
                rows = np.concatenate([r for r, _ in synthetic_rows(4 * BATCH)])
                ds = Dataset(rows, None, "synthetic", offset=np.float32(0), scale=np.float32(255), unit_interval=True)
        _data[size] = ds
    return _data[size]


class PlainAutoencoder:
    """The trainer's MLP encoder, mean layer and decoder, copied, trained as a plain autoencoder."""

    def __init__(self, trainer):
        model = trainer.model
        self.net = torch.nn.Sequential(copy.deepcopy(model.encoder), copy.deepcopy(model.to_mu),
                                       copy.deepcopy(model.decoder))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=trainer.config.pretrain_lr)
        self.clip, self.bf16 = trainer.config.grad_clip, trainer.config.bf16

    def step(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.net(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none").sum(-1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.optimizer.step()
        return float(loss.detach())


def _steppers(size, dtype):
    """(impl -> a function of no argument taking one step, on the next of 4 batches, returning its loss;
    the plain autoencoder's parameters)."""
    ds = _dataset(size)
    config = TrainConfig(batch_size=BATCH, bf16=dtype == "bf16", device="cpu", seed=0)
    trainer = Trainer(config, ds.n_features, unit_interval=ds.unit_interval)
    uniform = torch.full((BATCH, config.n_clusters), 1.0 / config.n_clusters)
    steppers = {}
    for phase in ("pretrain", "joint"):
        replica = trainer.replica(phase, ds)
        batches = itertools.cycle([(x, uniform if phase == "joint" else None)
                                   for x, _ in itertools.islice(replica.training_batches(ds, phase), 4)])

        def step(replica=replica, phase=phase, batches=batches):
            x, targets = next(batches)
            return replica.step(x, phase, targets)[0]["loss"]

        steppers[f"dhvc-{phase}"] = step
    plain = PlainAutoencoder(trainer)
    xs = itertools.cycle([x for x, _ in itertools.islice(trainer.training_batches(ds, "pretrain"), 4)])
    steppers["plain"] = lambda: plain.step(next(xs))
    return steppers, list(plain.net.parameters())


def _median_seconds(fn, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_train_step(benchmark, request, size, dtype, impl):
    disabled = request.config.getoption("benchmark_disable")
    with torch_threads(1):
        steppers, plain_params = _steppers(size, dtype)
        before = [p.detach().clone() for p in plain_params]
        n_features = _dataset(size).n_features
        benchmark.group = f"train-step D={n_features} {dtype} batch={BATCH} cpu"
        benchmark.extra_info.update(impl=impl, threads=1, n_elements=BATCH, dtype=dtype, n_features=n_features)
        fn = steppers[impl]
        fn()  # warm-up: first-call allocations, Adam's state
        loss = benchmark.pedantic(fn, rounds=1 if disabled else 10, iterations=1)
        assert np.isfinite(loss)
        if impl == "plain":  # the baseline is a real training step: its parameters moved
            assert any(not torch.equal(a, b.detach()) for a, b in zip(before, plain_params))
        if impl != "plain" and not disabled:
            ours, plain = [], []
            for _ in range(OVERHEAD_ROUNDS):  # interleaved, so that a load on the machine falls on both
                ours.append(_median_seconds(fn, 1))
                plain.append(_median_seconds(steppers["plain"], 1))
            benchmark.extra_info["overhead_vs_plain"] = float(np.median(ours) / np.median(plain) - 1)
            benchmark.extra_info["plain_median_s"] = float(np.median(plain))
            benchmark.extra_info["dhvc_median_s"] = float(np.median(ours))
