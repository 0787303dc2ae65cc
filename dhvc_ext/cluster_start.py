"""How the joint phase starts (shared/METHOD.md "Training", step 2): the model's vMF mixture set from the
pretrained encoder's codes, optionally from a manifold consensus of the input rows (our addition), and the
cluster head started as the mixture's posterior. No label anywhere.

Shapes: z (n, d) encoded rows (this rank's block under torchrun); P0 (N, K) start probabilities.
Each function takes the ``dhvc_ext.train.Trainer`` whose model it sets.
"""
import warnings

import torch

from dhvc_ext import distributed as dist
from dhvc_ext.mixture import VonMisesFisherMixture

__all__ = ["fit_mixture", "head_from_mixture", "manifold_start"]

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
    x = torch.cat([rows for rows in trainer._loader(dataset, shuffle=False)]).numpy()
    proba = manifold_posteriors(x, cfg.n_clusters, runs=cfg.manifold_runs, seed=cfg.seed)
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


@torch.no_grad()
def head_from_mixture(model):
    """Set the head of ``model`` (a ``DHVCNet``) so that q(c|x) = p(c|mu_x): log p(c|mu) = kappa_c mu_c^T mu +
    log pi_c + log C_d(kappa_c) - log Z(mu), a linear softmax in mu (W_c = kappa_c mu_c, b_c = log pi_c +
    log C_d(kappa_c)). The same on every rank (the mixture is)."""
    weight, bias = model.mixture.score_arguments(torch.float64)
    model.head.weight.copy_(weight.to(model.head.weight.dtype))
    model.head.bias.copy_(bias.to(model.head.bias.dtype))
