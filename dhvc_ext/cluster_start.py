"""How the joint phase starts (shared/METHOD.md "Training", step 2): the model's vMF mixture set from the
pretrained encoder's codes, optionally from a manifold consensus of the input rows (our addition), and the
cluster head started as the mixture's posterior. No label anywhere.

cluster_init="best" (our addition) trains the joint phase from each start in turn, every one from the same
pretrained network and random state (a copy taken when the joint phase begins), and keeps the network whose
objective (``Trainer.evaluate_loss``: the trained objective on all rows, one posterior sample per row from a
fixed seed) is the lowest at the end: a restart chosen by the objective, never by a label. Why: neither start
wins everywhere. On digits the manifold start ends at ACC 89-90 where the mixture start ends at 80-88; on
10000 Fashion-MNIST rows the mixture start ends higher (65.2 against 60.0, seed 0). In every such pair we ran,
the lower final objective belonged to the better clustering (benchmarks/results/, README "What we tried").

Shapes: z (n, d) encoded rows (this rank's block under torchrun); P0 (N, K) start probabilities.
Each function takes the ``dhvc_ext.train.Trainer`` whose model it sets.
"""
import warnings

import torch

from dhvc_ext import distributed as dist
from dhvc_ext.mixture import VonMisesFisherMixture

__all__ = ["begin_branch", "choose_branch", "fit_mixture", "head_from_mixture", "manifold_start", "start_kept"]

#: Above this many encoded rows the mixture's initial fit streams them in chunks of MIXTURE_CHUNK rows
#: (k-means++ on a 65536-row sample, no N x K matrix; see VonMisesFisherMixture.fit); at or below it, the
#: in-memory fit of every result so far. With several processes the fit always streams its blocks.
STREAM_MIXTURE_ABOVE, MIXTURE_CHUNK = 1 << 20, 65536


@torch.no_grad()
def fit_mixture(trainer, dataset):
    """Fit a ``VonMisesFisherMixture`` (spherical k-means++ starts, ``mixture_n_init`` restarts, the best
    log-likelihood kept) to the encoded data, samples or means by ``mixture_fit_on``, and give its parameters
    to the model's mixture. With several processes each rank encodes its block and the fit all-reduces the EM
    statistics: every rank gets the same mixture, the one fitted to all the blocks. Large data (more than
    ``STREAM_MIXTURE_ABOVE`` rows) are fitted as a stream. Returns (mean log-likelihood, z (n, d))."""
    cfg, sharded = trainer.config, trainer.world > 1
    z = trainer.encode(dataset, sample=cfg.mixture_fit_on == "samples", sharded=sharded)
    vmfmm = VonMisesFisherMixture(cfg.n_clusters, n_init=cfg.mixture_n_init, max_iter=200, tol=1e-6,
                                  kappa_max=cfg.kappa_max, random_state=cfg.seed, device=trainer.device,
                                  dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=Warning)  # ConvergenceWarning after max_iter is fine here
        if sharded or z.shape[0] > STREAM_MIXTURE_ABOVE:
            # float64 chunk by chunk: neither a float64 copy of all the codes nor N x K matrices
            vmfmm.fit(list(z.split(MIXTURE_CHUNK)), distributed=sharded)
        else:
            vmfmm.fit(z.double())
    fitted = vmfmm.mixture_
    trainer.model.mixture.set_parameters(fitted.mu, fitted.kappa, fitted.log_pi)
    return vmfmm.lower_bound_, z


@torch.no_grad()
def manifold_start(trainer, dataset, z):
    """``cluster_init="manifold"`` (our addition): the consensus P0 (N, K) of ``manifold_runs`` UMAP + GMM
    clusterings of the scaled input rows (``dhvc_ext.manifold.manifold_posteriors``; no label), from which
    one M-step on the encoded rows z (this rank's block, (n, d)) sets the mixture: N_k = sum_i P0_ik,
    S_k = sum_i P0_ik z_i. The head then starts from this mixture, and the first joint epoch's neighbour
    targets are built from P0 instead of the network's q(c|x). Returns P0 on the device (float32).
    Every rank computes the same P0 from all the rows (UMAP is deterministic for a seed)."""
    from dhvc_ext.manifold import manifold_posteriors

    cfg, mixture, world = trainer.config, trainer.model.mixture, trainer.world
    # the rows are read where indexed: above MANIFOLD_MAX_ROWS only the landmarks are held, not N x D
    proba = manifold_posteriors(dataset.rows(), cfg.n_clusters, runs=cfg.manifold_runs, seed=cfg.seed)
    proba = torch.as_tensor(proba, dtype=torch.float64, device=trainer.device)
    start, stop = dist.shard_range(len(dataset), trainer.rank, world)
    r, zz = proba[start:stop], z.to(torch.float64)
    n_k, s_k = r.sum(0), r.T @ zz
    if world > 1:
        dist.all_reduce_sum([n_k, s_k])
    if mixture.m_step(zz, n_k, s_k, n=len(dataset)) and world > 1:
        # a near-empty component was re-seeded at one of this rank's rows: take rank 0's choice, as em_step does
        dist.broadcast_([mixture.mu_raw, mixture.kappa_raw, mixture.logits])
    return proba.float()


def input_rows(trainer, dataset):
    """Every scaled input row, (N, D) float32 on the CPU, filled batch by batch into one tensor: one copy of
    the data at a time, not the batches and their concatenation (3.1 GB each for 1e6 x 784 rows). For the
    exact neighbour search on CUDA; on the CPU the searches read ``dataset.rows()`` where they need it."""
    out = torch.empty((len(dataset), trainer.n_features), dtype=torch.float32)
    filled = 0
    for rows in trainer._loader(dataset, shuffle=False):
        out[filled:filled + len(rows)] = rows
        filled += len(rows)
    return out


@torch.no_grad()
def head_from_mixture(model):
    """Set the head of ``model`` (a ``DHVCNet``) so that q(c|x) = p(c|mu_x): log p(c|mu) = kappa_c mu_c^T mu +
    log pi_c + log C_d(kappa_c) - log Z(mu), a linear softmax in mu (W_c = kappa_c mu_c, b_c = log pi_c +
    log C_d(kappa_c)). The same on every rank (the mixture is)."""
    weight, bias = model.mixture.score_arguments(torch.float64)
    model.head.weight.copy_(weight.to(model.head.weight.dtype))
    model.head.bias.copy_(bias.to(model.head.bias.dtype))


def start_kept(trainer):
    """{"chosen": the start the trainer's network comes from, "objectives": {start: final objective} under
    cluster_init="best" once chosen, else {}}."""
    branches = trainer.branches or {}
    return dict(chosen=branches.get("chosen", trainer.config.starts[0]), objectives=branches.get("objectives", {}))


def _model_copy(trainer):
    return {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}


@torch.no_grad()
def begin_branch(trainer, dataset, branch):
    """Before the joint phase from ``trainer.config.starts[branch]`` under cluster_init="best": at the first
    start, keep a copy of the pretrained network and of every rank's random state (``trainer.branches``,
    saved with the trainer); at the next ones, score the start just finished (``_end_branch``) and go back to
    that copy. A no-op with one start."""
    if len(trainer.config.starts) == 1:
        return
    if branch == 0:
        snapshot = dict(model=_model_copy(trainer), rng=torch.get_rng_state())
        if trainer.device.type == "cuda":
            snapshot["cuda_rng"] = torch.cuda.get_rng_state(trainer.device)
        if trainer.world > 1 and trainer._rank_rng is not None:  # every rank's, as state_dict saves them
            snapshot["rng_ranks"] = [cpu for cpu, _ in trainer._rank_rng]
            if trainer.device.type == "cuda":
                snapshot["cuda_rng_ranks"] = [cuda for _, cuda in trainer._rank_rng]
        trainer.branches = dict(snapshot=snapshot, results=[])
        return
    _end_branch(trainer, dataset)
    snapshot = trainer.branches["snapshot"]
    trainer.model.load_state_dict(snapshot["model"])
    torch.set_rng_state(snapshot["rng_ranks"][trainer.rank] if "rng_ranks" in snapshot else snapshot["rng"])
    if trainer.device.type == "cuda":
        cuda = snapshot.get("cuda_rng_ranks")
        torch.cuda.set_rng_state(cuda[trainer.rank] if cuda else snapshot["cuda_rng"], trainer.device)


def _end_branch(trainer, dataset):
    """Score the start that has just finished training: its objective on all rows, and its network."""
    results = trainer.branches["results"]
    objective = trainer.evaluate_loss(dataset, neighbor_index=trainer.neighbor_index)["loss"]
    results.append(dict(start=trainer.config.starts[len(results)], objective=float(objective),
                        model=_model_copy(trainer)))


@torch.no_grad()
def choose_branch(trainer, dataset):
    """After the last start's joint phase: score it, keep the network of the lowest objective, and record
    the choice in ``trainer.branches["chosen"]`` and in the last history record (``start_objectives``,
    ``chosen_start``). The copies of the networks are then dropped."""
    _end_branch(trainer, dataset)
    results = trainer.branches["results"]
    best = min(results, key=lambda r: r["objective"])
    if best is not results[-1]:
        trainer.model.load_state_dict(best["model"])
    trainer.branches = dict(chosen=best["start"], objectives={r["start"]: r["objective"] for r in results})
    if trainer.history:
        trainer.history[-1].update(start_objectives=dict(trainer.branches["objectives"]), chosen_start=best["start"])
