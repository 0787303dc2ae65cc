"""Training DHVC (shared/METHOD.md "Training"): pretraining, vMF-mixture initialisation, joint training,
prediction.

    trainer = Trainer(TrainConfig(n_clusters=10), n_features=64)
    history = trainer.fit(dataset)            # dhvc_ext.data.Dataset
    labels = trainer.predict(dataset)         # (N,) int64, argmax q(c|x) (or p(c|mu_x), see ``predict_with``)

Schedule (epochs counted globally, so that a run can stop and resume at any epoch boundary):
1. ``pretrain_epochs`` of the S-VAE objective recon + pretrain_beta KL(q(z|x) || U), with Adam at
   ``pretrain_lr``. The default pretrain_beta = 0 is a spherical autoencoder with a noisy code: with beta = 1
   from the start, or even reached by a linear warm-up over half the epochs, the S-VAE on digits ignores z
   (its posterior collapses to the prior: recon stays at the mean image's 27.1 nats, KL 0.05), and the
   clusters are lost before the joint phase begins.
2. The data are encoded to mu_x and a ``VonMisesFisherMixture`` is fitted to them (spherical k-means++
   starts, ``mixture_n_init`` restarts, the best log-likelihood kept); the model's ``VMFMixture`` takes its
   parameters. With ``head_init="mixture"`` the cluster head then starts as p(c|mu_x) exactly: a linear
   softmax on the sphere is a vMF-mixture posterior, W_c = kappa_c mu_c and b_c = log pi_c + log C_d(kappa_c).
   (Fitting it by gradient instead cannot reach weights of size kappa_c ~ 20-80 in a few hundred steps: the
   softer head then starts the joint phase with KL(q(c|x) || p(c|z)) ~ 3.8 nats, and on digits the first joint
   epoch scrambled the clusters, ACC 0.80 -> 0.60, before the run recovered.) No labels anywhere.
3. ``epochs`` of the joint objective with Adam at ``lr``, multiplied by ``lr_decay`` every ``lr_step`` epochs.
   The mixture follows by ``mixture_update``: "em" refreshes it by ``em_iters`` EM steps on the encoded
   data every ``em_every`` epochs (no gradient reaches it), "gradient" trains it by backpropagation in its
   own parameter group at ``mixture_lr_scale`` times the learning rate (VaDE, DSVAE).
   With ``neighbors = k > 0`` the joint objective adds the neighbour term (``dhvc_ext.neighbors``, weight
   ``gamma``; our addition to the reconstructed objective): the k nearest neighbours of every row (cosine,
   among the input rows or the encoded means, ``neighbor_space``) are found once when the joint phase starts,
   and at the start of every joint epoch (after the mixture's refresh) each row's target is computed from its
   neighbours' q(c|x) under the current network.

Reproducibility: ``seed`` seeds torch (network initialisation, the vMF sampler, batch order) and the mixture
initialisation; on the CPU a run with the same seed, data and thread count gives the same result.
Data parallelism: when a torch.distributed process group is up (``dhvc_ext.distributed.init_from_env()``
under torchrun) the trainer is one of W ranks. Training steps go through DistributedDataParallel on the
rank's share of each global batch (``batch_size`` is global; the shares together are the one-process
batches), the mixture's initial fit and its EM refreshes all-reduce their sums over
the ranks' blocks of the data, so that every rank holds the same network and mixture, and the history
records are global means. Ranks > 0 reseed their vMF noise after the network is built; ``state_dict`` holds
every rank's random state as of the last epoch, so rank 0's checkpoint resumes exactly on as many ranks.
Device: "auto" is CUDA when torch sees a GPU and the extension has CUDA kernels. When torch sees a GPU but
the extension was built without CUDA, "auto" warns loudly and uses the CPU (``device="cuda"`` raises).
"""
import copy
import dataclasses
import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from dhvc_ext import distributed as dist
from dhvc_ext import cluster_start, ops
from dhvc_ext.batches import TargetBatches, row_loader
from dhvc_ext.mixture import ConcentrationCapWarning
from dhvc_ext.models import LOSS_TERMS, DHVCNet, dhvc_loss
from dhvc_ext.neighbors import knn_indices, neighbor_targets
from dhvc_ext.train_config import TrainConfig

__all__ = ["TrainConfig", "Trainer", "resolve_device"]


def resolve_device(device):
    """torch.device for a config's ``device`` string; see the module docstring for "auto"."""
    if device == "auto":
        if torch.cuda.is_available():
            if ops.cuda_available():
                return torch.device("cuda")
            warnings.warn("dhvc_ext: torch sees a GPU but dhvc_ext was built without CUDA kernels; training on the "
                          "CPU. Rebuild with FORCE_CUDA=1 (see the README) to use the GPU.", RuntimeWarning,
                          stacklevel=3)
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not (torch.cuda.is_available() and ops.cuda_available()):
        raise RuntimeError(f"dhvc_ext: device {device} requested, but "
                           + ("torch sees no GPU" if not torch.cuda.is_available()
                              else "dhvc_ext was built without CUDA kernels (rebuild with FORCE_CUDA=1)"))
    return device


class _Objective(torch.nn.Module):
    """The DHVC objective as a module's forward, for DistributedDataParallel, whose gradient hooks are armed by
    a call of the wrapped module (the objective calls the network's encode/decode/head, not its forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, weights, phase, targets=None):
        return dhvc_loss(self.model, x, weights, phase=phase, targets=targets)


class Trainer:
    """Builds the DHVC network for a data shape and trains it by the schedule of the module docstring.

    Args:
        config: a ``TrainConfig``.
        n_features: D, the size of a flattened input row.
        image_shape: (C, H, W) for arch="conv".
        unit_interval: whether the inputs lie in [0, 1] (chooses the Bernoulli decoder when
            likelihood="auto").

    Attributes: ``model`` (``DHVCNet``), ``device``, ``epoch`` (epochs completed), ``history`` (one dict per
    epoch: phase, epoch, each term of ``LOSS_TERMS`` averaged over the epoch, samples_per_s, seconds, and at
    mixture refreshes the mixture's mean log-likelihood ``mixture_loglik``).
    """

    def __init__(self, config, n_features, *, image_shape=None, unit_interval=True):
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.device = resolve_device(config.device)
        self.world, self.rank = dist.world_size(), dist.rank()
        if self.world > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", dist.local_rank())  # one GPU per process, as torchrun numbers them
        torch.manual_seed(config.seed)
        likelihood = config.likelihood
        if likelihood == "auto":
            likelihood = "bernoulli" if unit_interval else "gaussian"
        self.n_features, self.image_shape, self.likelihood = int(n_features), image_shape, likelihood
        self.model = DHVCNet(n_features, config.n_clusters, config.latent_dim, hidden=config.hidden,
                             arch=config.arch, image_shape=image_shape, likelihood=likelihood,
                             kappa_min=config.kappa_min, kappa_max=config.kappa_max, head=config.head).to(self.device)
        self.weights = config.loss_weights()
        self.pretrain_weights = dataclasses.replace(self.weights, beta=config.pretrain_beta)
        self.epoch = 0
        self.history = []
        self.mixture_initialized = False
        # the neighbour term: (N, k) neighbours (found when the joint phase starts; saved) and (N, K) targets
        # (recomputed at the start of every joint epoch from the network, so not saved)
        self.neighbor_index, self._targets = None, None
        self._start_proba = None  # the manifold start's P0 (N, K), used by its first joint epoch
        self.branches = None  # cluster_init="best": the pretrained snapshot and each start's outcome (cluster_start)
        self.optimizer = self._make_optimizer("pretrain")
        self.scheduler = None
        self._ddp, self._ddp_phase, self._saved_world, self._rank_rng = None, None, None, None
        if self.rank > 0:
            # The network starts the same everywhere (seeded above; DDP also broadcasts rank 0's), but each
            # rank needs its own vMF sampler noise: ranks > 0 reseed, rank 0 keeps the one-process stream.
            # No collective here: a trainer that only predicts may be built on one rank alone.
            torch.manual_seed(config.seed * 1000003 + self.rank)

    # ------------------------------------------------------------------------------------------------------
    # optimisation

    def _make_optimizer(self, phase):
        cfg, model = self.config, self.model
        mixture_params = list(model.mixture.parameters())
        network = [p for n, p in model.named_parameters() if not n.startswith("mixture.")]
        self._params = [p for group in (network, mixture_params) for p in group]
        if phase == "pretrain":
            return torch.optim.Adam(network, lr=cfg.pretrain_lr)
        groups = [dict(params=network, lr=cfg.lr)]
        by_gradient = cfg.mixture_update == "gradient"
        for p in mixture_params:
            p.requires_grad_(by_gradient)
        if by_gradient:
            groups.append(dict(params=mixture_params, lr=cfg.lr * cfg.mixture_lr_scale))
        return torch.optim.Adam(groups)

    def batch_size(self, n):
        """The batch size for n samples: ``batch_size``, or when None min(256, max(16, n // 32)). The automatic
        rule keeps at least 32 steps per epoch on small data: with 7 steps of 256 per epoch, digits' autoencoder
        sits on the mean-image plateau for 10 epochs and short runs end with one cluster."""
        size = self.config.batch_size or min(256, max(16, n // 32))
        return max(1, min(size, n))

    def _loader(self, dataset, shuffle, sharded=False, with_index=False):
        """Batches of ``dataset`` (``dhvc_ext.batches.row_loader``): shuffled by seed and epoch for training, in
        order for encoding; ``sharded``: this rank's share of each global batch."""
        return row_loader(dataset, self.batch_size(len(dataset)), shuffle=shuffle,
                          seed=self.config.seed * 100003 + self._schedule_epoch(), world=self.world, rank=self.rank,
                          sharded=sharded, with_index=with_index, pin_memory=self.device.type == "cuda")

    def _schedule_epoch(self):
        """The epoch as the batch order counts it: every start of cluster_init="best" sees the same orders."""
        cfg = self.config
        if self.epoch < cfg.pretrain_epochs or cfg.epochs == 0:
            return self.epoch
        return cfg.pretrain_epochs + (self.epoch - cfg.pretrain_epochs) % cfg.epochs

    def _objective(self, phase):
        """What a training step calls: the loss function, or with several processes the DDP-wrapped objective
        (rebuilt at the phase change, when the set of trained parameters changes)."""
        if self.world == 1:
            return lambda x, weights, phase, targets=None: dhvc_loss(self.model, x, weights, phase=phase,
                                                                     targets=targets)
        if self._ddp_phase != phase:
            from torch.nn.parallel import DistributedDataParallel
            # Pretraining leaves the head and the mixture out of the graph: DDP must be told to look for
            # parameters that receive no gradient. The joint objective uses every trained parameter.
            self._ddp = DistributedDataParallel(
                _Objective(self.model), device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=phase == "pretrain")
            self._ddp_phase = phase
        return self._ddp

    def _autocast(self):
        """bfloat16 autocast of the networks' layers when ``bf16`` (CPU or CUDA). The network's outputs are
        cast back to float32 (``DHVCNet``), so the vMF sampler, the KLs, the mixture posterior and the
        log-sum-exps of the objective run in float32, and the mixture's EM in float64."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def _run_epoch(self, dataset, phase, progress, batch_callback=None):
        cfg = self.config
        self.model.train()
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        n_seen, start, norms = 0, time.perf_counter(), []
        batches = self.training_batches(dataset, phase)
        n, size = len(dataset), self.batch_size(len(dataset))
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc=f"{phase} {self.epoch + 1}/{cfg.total_epochs}", leave=False)
        for i, (x, targets) in enumerate(batches):
            values, norm = self.step(x, phase, targets, global_rows=min(size, n - i * size))
            norms.append(norm)
            b = x.shape[0]
            for k in LOSS_TERMS:
                sums[k] += values[k] * b
            n_seen += b
            if batch_callback is not None:
                batch_callback(self, phase, b, values)
            if progress:
                batches.set_postfix(loss=f"{values['loss']:.3f}")
        seconds = time.perf_counter() - start
        if self.world > 1:  # the epoch's means over all ranks' samples, the same record on every rank
            totals = torch.tensor([sums[k] for k in LOSS_TERMS] + [n_seen, seconds], dtype=torch.float64)
            dist.all_reduce_sum([totals])
            sums, n_seen = dict(zip(LOSS_TERMS, totals[:len(LOSS_TERMS)].tolist())), int(totals[-2])
            seconds = float(totals[-1]) / self.world
        record = dict(phase=phase, epoch=self.epoch + 1, **{k: v / max(n_seen, 1) for k, v in sums.items()},
                      samples_per_s=n_seen / seconds, seconds=seconds, grad_norm=float(np.median(norms)))
        return record

    def training_batches(self, dataset, phase):
        """One epoch's batches of ``phase`` as training takes them: (x (B, D), targets (B, K) or None), this
        rank's share of each global batch, shuffled by seed and epoch. ``targets`` are the rows' neighbour
        targets in the joint phase once ``update_targets`` has computed them."""
        targets = self._targets if phase == "joint" else None
        return TargetBatches(self._loader(dataset, shuffle=True, sharded=True, with_index=targets is not None),
                              targets)

    def step(self, x, phase, targets=None, *, global_rows=None):
        """One training step of ``phase`` on the batch x (B, D) (moved to the trainer's device) with the
        neighbour targets (B, K) of its rows, or None: the objective (under bf16 autocast when configured),
        backward, gradient clipping at ``grad_clip``, the optimiser's step. With several processes x is this
        rank's share of a global batch of ``global_rows`` rows (default B times the number of processes).
        Returns (the batch's loss terms as floats, keys ``LOSS_TERMS``; the gradient norm before clipping).
        Raises FloatingPointError when the loss (with several processes: the loss or the gradient) is not
        finite; the parameters are then as before the step."""
        cfg = self.config
        x = x.to(self.device, non_blocking=True)
        with self._autocast():
            terms = self._objective(phase)(x, self.pretrain_weights if phase == "pretrain" else self.weights,
                                           phase, targets)
        loss = terms["loss"]
        finite = bool(torch.isfinite(loss))
        if not finite and self.world == 1:
            raise FloatingPointError(f"DHVC: the {phase} loss became {float(loss.detach())} at epoch "
                                     f"{self.epoch + 1}; terms: { {k: float(v.detach()) for k, v in terms.items()} }")
        self.optimizer.zero_grad(set_to_none=True)
        if self.world > 1:
            # DDP averages the ranks' gradients; weighting each rank's batch mean by its share of the
            # global batch makes that the gradient of the global batch mean when the shares differ by one.
            b_global = x.shape[0] * self.world if global_rows is None else global_rows
            scale = x.shape[0] * self.world / b_global
            (loss * scale if scale != 1 else loss).backward()
        else:
            loss.backward()
        # Clipping bounds the steps when a sharpening mixture makes p(c|z), and so the gradient that the
        # posterior KL sends to the encoder, large. (It does not by itself prevent the collapse to one
        # cluster that a run-away mixture concentration causes: see mixture_fit_on.)
        norm = torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if self.world > 1 and not (finite and torch.isfinite(norm)):
            # A non-finite loss on one rank reaches every rank through the gradient all-reduce: all of
            # them stop here together instead of leaving the others waiting in a collective.
            raise FloatingPointError(f"DHVC: the {phase} loss or its gradient became non-finite at epoch "
                                     f"{self.epoch + 1} (rank {self.rank}: loss {float(loss.detach())}, "
                                     f"gradient norm {float(norm)})")
        norm = float(norm)
        self.optimizer.step()
        return {k: float(terms[k].detach()) for k in LOSS_TERMS}, norm

    def replica(self, phase, dataset):
        """A trainer for trying steps of ``phase`` on ``dataset`` without touching this one: a copy of the
        network and the mixture, its own optimiser for the phase, on this process alone (no collectives; the
        profiler's). Its joint steps carry the neighbour term when the configuration has one: this trainer's
        targets, or uniform ones before the first joint epoch has computed them (a step costs the same)."""
        cfg = self.config
        other = copy.copy(self)
        other.model = copy.deepcopy(self.model)
        other.world, other.rank, other._ddp, other._ddp_phase = 1, 0, None, None
        other.scheduler, other.history = None, list(self.history)
        other.optimizer = other._make_optimizer(phase)
        if phase == "joint" and self._targets is None and cfg.neighbors > 0 and cfg.gamma > 0 and cfg.epochs > 0:
            other._targets = torch.full((len(dataset), cfg.n_clusters), 1.0 / cfg.n_clusters, device=self.device)
        return other

    # ------------------------------------------------------------------------------------------------------
    # mixture

    @torch.no_grad()
    def encode(self, dataset, sample=False, *, sharded=False):
        """Mean directions mu_x (N, d) of every row on the trainer's device, or with ``sample=True`` one draw
        z ~ q(z|x) per row (what the mixture models: p(c|z) is evaluated at samples during training).
        ``sharded``: with several processes, only this rank's block ``dhvc_ext.distributed.shard_range``."""
        self.model.eval()
        out = []
        for x in self._loader(dataset, shuffle=False, sharded=sharded):
            with self._autocast():
                mu, kappa = self.model.encode(x.to(self.device, non_blocking=True))
            mu = F.normalize(mu.float(), dim=-1)
            out.append(ops.vmf_sample(mu, kappa.float()) if sample else mu)
        if not out:  # an empty shard
            return torch.empty((0, self.model.latent_dim), device=self.device)
        return torch.cat(out)

    @torch.no_grad()
    def init_mixture(self, dataset, start=None):
        """Start the joint phase (``dhvc_ext.cluster_start``) from ``start`` (default: the configuration's
        first): fit the vMF mixture to the encoded data, and for "manifold" set it from the manifold consensus
        P0; start the head as p(c|mu_x); find the neighbours of the neighbour term (once: every start shares
        them). Returns the fitted mixture's mean log-likelihood."""
        cfg = self.config
        start = start or cfg.starts[0]
        loglik, z = cluster_start.fit_mixture(self, dataset)
        self._start_proba = None
        if start == "manifold":
            self._start_proba = cluster_start.manifold_start(self, dataset, z)
        self.mixture_initialized = True
        if self.model.head is not None and cfg.head_init == "mixture":
            cluster_start.head_from_mixture(self.model)
        if cfg.neighbors > 0 and cfg.gamma > 0 and cfg.epochs > 0 and self.neighbor_index is None:
            self.find_neighbors(dataset)
        return loglik

    @torch.no_grad()
    def find_neighbors(self, dataset):
        """The ``neighbors`` nearest rows of every row (cosine; k is lowered to N - 1 on smaller data), kept in
        ``neighbor_index`` (N, k) for the neighbour term: among the scaled input rows (``neighbor_space =
        "input"``; on the CPU read from the data set block by block, ``Dataset.rows()``, so the approximate
        search above KNN_FAISS_ABOVE rows never holds all N x D of them; on CUDA all of them are copied to the
        device for the exact search there) or the encoded means mu_x ("latent").
        With several processes each rank finds the neighbours of its block of rows and the blocks are
        gathered: every rank holds the whole index, the same everywhere."""
        n = len(dataset)
        k = min(self.config.neighbors, n - 1)
        if k < 1:
            self.neighbor_index = None
            return None
        if self.config.neighbor_space == "latent":
            x = dist.all_gather_rows(self.encode(dataset, sharded=self.world > 1))  # x itself with one process
        elif self.device.type == "cpu":
            x = dataset.rows()
        else:
            x = cluster_start.input_rows(self, dataset).to(self.device)
        start, stop = dist.shard_range(n, self.rank, self.world)
        index = knn_indices(x, k, start=start, stop=stop)
        self.neighbor_index = dist.all_gather_rows(index)
        return self.neighbor_index

    @torch.no_grad()
    def update_targets(self, dataset):
        """Recompute the neighbour targets (N, K) from the current network (``dhvc_ext.neighbors``)."""
        if self.neighbor_index is None:
            self._targets = None
            return None
        start, self._start_proba = self._start_proba, None
        if start is not None:  # the first joint epoch from the manifold start: targets from its P0, used once
            self._targets = neighbor_targets(start, self.neighbor_index.to(start.device))
            return self._targets
        mu = self.encode(dataset, sharded=self.world > 1)
        if self.model.head is None:
            mu = mu.to(self.model.mixture.mu_raw.dtype)
        q = self.model.cluster_log_probs(mu).float().exp()
        q = dist.all_gather_rows(q)
        self._targets = neighbor_targets(q, self.neighbor_index.to(q.device))
        return self._targets

    @torch.no_grad()
    def refresh_mixture(self, dataset):
        """``em_iters`` EM steps of the model's mixture on the encoded data; returns the last mean loglik.
        With several processes each rank encodes its block and the steps all-reduce their statistics."""
        sharded = self.world > 1
        mu = self.encode(dataset, sample=self.config.mixture_fit_on == "samples", sharded=sharded)
        mu = mu.to(self.model.mixture.mu_raw.dtype)
        loglik = math.nan
        with warnings.catch_warnings():
            # reaching kappa_max is the cap doing its job (see DHVCNet's kappa_max), not a data problem
            warnings.simplefilter("ignore", category=ConcentrationCapWarning)
            for _ in range(self.config.em_iters):
                loglik = self.model.mixture.em_step(mu, distributed=sharded)
        return loglik

    # ------------------------------------------------------------------------------------------------------
    # the schedule

    def fit(self, dataset, *, callback=None, batch_callback=None, progress=False):
        """Train on ``dataset`` (a ``dhvc_ext.data.Dataset``) from ``self.epoch`` to the end of the schedule.

        ``callback(trainer, record)`` is called after every epoch (the CLI logs and checkpoints there); it may
        return True to stop early. ``batch_callback(trainer, phase, batch_rows, terms)`` is called after every
        optimiser step with the batch's loss terms as floats (keys ``LOSS_TERMS``; this rank's batch). ``progress``
        shows tqdm bars. Returns ``self.history``.
        """
        cfg = self.config
        cfg.check_rows(len(dataset))
        if "manifold" in cfg.starts and cfg.epochs > 0 and self.epoch < cfg.total_epochs:
            from dhvc_ext.manifold import require_umap
            require_umap()  # before hours of pretraining, not after
        if self.world > 1 and self.batch_size(len(dataset)) < self.world:
            raise ValueError(f"DHVC: the batch size {self.batch_size(len(dataset))} (global, over all processes) is "
                             f"smaller than the number of processes {self.world}; every rank needs a row per step")
        if self._saved_world is not None and self._saved_world != self.world and self.epoch < cfg.total_epochs:
            raise ValueError(f"DHVC: this run was saved by {self._saved_world} process(es) and continues exactly only "
                             f"with as many (each holds its own random state); it is now run by {self.world}")
        epochs = range(self.epoch, cfg.total_epochs)
        if progress:
            from tqdm.auto import tqdm
            epochs = tqdm(epochs, desc="DHVC", initial=self.epoch, total=cfg.total_epochs)
        for _ in epochs:
            phase = "pretrain" if self.epoch < cfg.pretrain_epochs else "joint"
            extra = {}
            branch, joint_epoch = divmod(self.epoch - cfg.pretrain_epochs, max(cfg.epochs, 1))
            if phase == "joint" and joint_epoch == 0:  # a start of the joint phase (cfg.starts[branch])
                cluster_start.begin_branch(self, dataset, branch)
                extra.update(start=cfg.starts[branch], mixture_loglik=self.init_mixture(dataset, cfg.starts[branch]))
                self.optimizer = self._make_optimizer("joint")
                self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.lr_step, cfg.lr_decay)
            elif phase == "joint" and cfg.mixture_update == "em" and joint_epoch % cfg.em_every == 0:
                extra["mixture_loglik"] = self.refresh_mixture(dataset)
            if phase == "joint" and self.neighbor_index is not None:
                self.update_targets(dataset)
            record = self._run_epoch(dataset, phase, progress, batch_callback)
            record.update(extra)
            if self.scheduler is not None:
                self.scheduler.step()
            self.epoch += 1
            self.history.append(record)
            if self.world > 1:
                self._gather_rng()
            if progress:
                epochs.set_postfix(phase=phase, loss=f"{record['loss']:.3f}",
                                   samples_per_s=f"{record['samples_per_s']:.0f}")
            if callback is not None and callback(self, record):
                break
        if self.epoch == cfg.total_epochs and self.branches is not None and "chosen" not in self.branches:
            cluster_start.choose_branch(self, dataset)
        if self.epoch == cfg.total_epochs and not self.mixture_initialized:
            # epochs = 0: an autoencoder followed by a vMF mixture (the baseline of the results table)
            loglik = self.init_mixture(dataset)
            if self.history:
                self.history[-1]["mixture_loglik"] = loglik
        return self.history

    # ------------------------------------------------------------------------------------------------------
    # checkpoints

    def release_process_group(self):
        """Drop the DistributedDataParallel wrapper, which holds a reference to the process group, so that
        ``dhvc_ext.distributed.finish()`` frees the group there and then rather than at interpreter exit, when
        the order of teardown is unspecified (one rank aborting with "terminate called without an active
        exception" was seen once in a 2-process test). Training again rebuilds the wrapper."""
        self._ddp, self._ddp_phase = None, None

    def _gather_rng(self):
        """Every rank's random state, collected on every rank after each epoch, so that ``state_dict`` stays a
        local call that rank 0 alone can make. Before the first epoch of a run the ranks > 0 hold the state
        that construction seeds, which a resumed trainer's construction seeds again."""
        cuda = self.device.type == "cuda"
        self._rank_rng = dist.all_gather_objects(
            (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None))

    def state_dict(self):
        """Everything needed to continue this run exactly: configuration, data shape, network and mixture,
        optimiser and schedule, epoch, history, and torch's random state. Only tensors, numbers, strings,
        lists, tuples and dicts, so that ``torch.load(..., weights_only=True)`` reads it back.

        With several processes it also holds ``world_size`` and every rank's random state as of the end of
        the last epoch (``rng_ranks``, ``cuda_rng_ranks``): the network, optimiser and mixture are the same on
        every rank, so one rank's state_dict (rank 0's, written alone) continues the run on as many ranks."""
        state = dict(
            config=dataclasses.asdict(self.config), n_features=self.n_features,
            image_shape=None if self.image_shape is None else tuple(int(s) for s in self.image_shape),
            likelihood=self.likelihood, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=None if self.scheduler is None else self.scheduler.state_dict(), epoch=self.epoch,
            history=[dict(r) for r in self.history], mixture_initialized=self.mixture_initialized,
            rng=torch.get_rng_state(),
            neighbor_index=None if self.neighbor_index is None else self.neighbor_index.cpu(),
            branches=self.branches,
        )
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.world > 1:
            state["world_size"] = self.world
        if self.world > 1 and self._rank_rng is not None:
            state["rng_ranks"] = [cpu for cpu, _ in self._rank_rng]
            state["rng"] = state["rng_ranks"][self.rank]
            if self.device.type == "cuda":
                state["cuda_rng_ranks"] = [cuda for _, cuda in self._rank_rng]
                state["cuda_rng"] = state["cuda_rng_ranks"][self.rank]
        return state

    @classmethod
    def from_state_dict(cls, state, device=None):
        """A Trainer that continues the run saved by ``state_dict`` (optionally on another ``device``)."""
        config = dict(state["config"])
        if "head_warmstart_steps" in config:  # saved before head_init replaced it (dhvc_ext 0.1.0 dev)
            config["head_init"] = "mixture" if config.pop("head_warmstart_steps") > 0 else "random"
        if device is not None:
            config["device"] = device
        config = TrainConfig(**config)
        trainer = cls(dataclasses.replace(config, likelihood=state["likelihood"]), state["n_features"],
                      image_shape=state["image_shape"])
        trainer.config = config
        trainer.load_state_dict(state)
        return trainer

    def load_state_dict(self, state):
        """Restore a ``state_dict`` into this trainer (same configuration and data shape)."""
        self.model.load_state_dict(state["model"])
        self.epoch, self.history = int(state["epoch"]), [dict(r) for r in state["history"]]
        self.mixture_initialized = bool(state["mixture_initialized"])
        index = state.get("neighbor_index")
        self.neighbor_index = None if index is None else index.to(self.device)
        self._targets = None
        self.branches = state.get("branches")
        joint = self.mixture_initialized and self.epoch >= self.config.pretrain_epochs
        self.optimizer = self._make_optimizer("joint" if joint else "pretrain")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler = None
        if state["scheduler"] is not None:
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, self.config.lr_step, self.config.lr_decay)
            self.scheduler.load_state_dict(state["scheduler"])
        self._saved_world = int(state.get("world_size", 1))
        rng, cuda_rng = state["rng"], state.get("cuda_rng")
        if self._saved_world == self.world and self.world > 1:
            if "rng_ranks" in state:
                cuda = state.get("cuda_rng_ranks") or [None] * self.world
                self._rank_rng = list(zip(state["rng_ranks"], cuda))
                rng, cuda_rng = self._rank_rng[self.rank]
            elif self.rank > 0:
                rng = cuda_rng = None  # saved before the first epoch: keep the state construction seeded
        if rng is not None:
            torch.set_rng_state(rng)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)

    # ------------------------------------------------------------------------------------------------------
    # prediction

    @torch.no_grad()
    def predict_proba(self, dataset, which=None):
        """(N, K) cluster probabilities: q(c|x) ("head") or p(c|mu_x) ("mixture"); default ``predict_with``."""
        which = which or self.config.predict_with
        if which not in ("head", "mixture"):
            raise ValueError(f"predict_proba: which must be 'head' or 'mixture', got {which!r}")
        mu = self.encode(dataset)
        if which == "mixture" or self.model.head is None:
            log_p = self.model.mixture.log_posterior(mu.to(self.model.mixture.mu_raw.dtype))
        else:
            log_p = self.model.cluster_log_probs(mu)
        return log_p.exp().float().cpu().numpy()

    def predict(self, dataset, which=None):
        """(N,) int64 cluster labels, the argmax of ``predict_proba``."""
        return self.predict_proba(dataset, which).argmax(axis=1).astype(np.int64)

    @torch.no_grad()
    def evaluate_loss(self, dataset, *, neighbor_index=None, seed=0):
        """The objective this trainer optimises, evaluated on ``dataset``: each term of ``LOSS_TERMS`` averaged
        over the rows (batches of the training size, in order; one posterior sample per row drawn from
        ``seed``, torch's random state left as it was; full precision). The pretraining objective until the
        mixture is initialised, then the joint one with the same weights, the neighbour term included when
        the configuration has one: its targets from the current network and the neighbours of the rows of
        ``dataset``, ``neighbor_index`` (N, k) when given (the run's ``neighbor_index`` on the rows it was
        trained on), else found among them as training finds them (``find_neighbors``). Label-free: a way to
        compare checkpoints, also on held-out data."""
        cfg = self.config
        phase = "joint" if self.mixture_initialized else "pretrain"
        weights = self.weights if phase == "joint" else self.pretrain_weights
        targets = None
        if phase == "joint" and cfg.neighbors > 0 and cfg.gamma > 0 and cfg.epochs > 0:  # as training has it
            saved = self.neighbor_index, self._targets
            try:  # the training's own code for both, on these rows; this trainer's state restored after
                if neighbor_index is None:
                    self.find_neighbors(dataset)
                else:
                    self.neighbor_index = neighbor_index.to(self.device)
                targets = self.update_targets(dataset)
            finally:
                self.neighbor_index, self._targets = saved
        self.model.eval()
        sums, n = dict.fromkeys(LOSS_TERMS, 0.0), 0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for x, t in TargetBatches(self._loader(dataset, shuffle=False, with_index=targets is not None), targets):
                terms = dhvc_loss(self.model, x.to(self.device), weights, phase=phase, targets=t)
                for k in LOSS_TERMS:
                    sums[k] += float(terms[k]) * x.shape[0]
                n += x.shape[0]
        return {k: v / max(n, 1) for k, v in sums.items()}
