"""The DHVC network (shared/METHOD.md "Model") and its objective ("Objective").

Shapes: x (B, D) flattened inputs; mu (B, d) unit mean directions on S^{d-1}; kappa (B,) concentrations;
z (B, d) posterior samples; K clusters.

    encoder     h = body(x);  mu_x = W_mu h / |W_mu h|;  kappa_x = softplus(w_k^T h + b_k) + kappa_min
    posterior   q(z|x) = vMF(mu_x, kappa_x), sampled by ``dhvc_ext.ops.vmf_sample`` (reparameterised)
    decoder     g(z): Bernoulli logits (data in [0, 1]) or Gaussian means (unit variance)
    prior       p(z) = Uniform(S^{d-1})
    mixture     p(c|z) = pi_c vMF(z; mu_c, kappa_c) / sum_j pi_j vMF(z; mu_j, kappa_j)   (``VMFMixture``)
    head        q(c|x) = softmax(W_c mu_x + b_c), or p(c|mu_x) itself when ``head="mixture"``

The objective is our reconstruction of the paper's (only its abstract is public; METHOD.md explains the
choice), minimised and averaged over the batch:

    L = E_q[-log p(x|z)] + beta KL(q(z|x) || U) + alpha E_q[KL(q(c|x) || p(c|z))] - eta (lam H(C) - H(C|Z))

with H(C|Z) = -(1/B) sum_i sum_c q_ic log q_ic and H(C) = -sum_c qbar_c log qbar_c, qbar the batch mean of q.
``kl_direction="reverse"`` uses KL(p(c|z) || q(c|x)) instead. The expectation over q(z|x) is one sample.

Our addition (not in METHOD.md; off when no targets are given): the neighbour term
+ gamma (1/B) sum_i CE(t_i, q(.|x_i)) = - gamma (1/B) sum_i sum_c t_ic log q_ic, with t the sharpened targets
of the rows' latent neighbours (``dhvc_ext.neighbors``); the trainer passes them when ``neighbors > 0``.
"""
import dataclasses
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from dhvc_ext.distributions import HypersphericalUniform, VonMisesFisher
from dhvc_ext.mixture import VMFMixture
from dhvc_ext.models.networks import MLP, ConvDecoder, ConvEncoder

__all__ = ["DHVCNet", "LossWeights", "dhvc_loss", "LOSS_TERMS"]

#: The keys of the dict ``dhvc_loss`` returns, in reporting order.
LOSS_TERMS = ("loss", "recon", "kl_prior", "kl_post", "h_c", "h_c_given_z", "nbr")


@dataclasses.dataclass
class LossWeights:
    """Weights of the DHVC objective (see the module docstring) and the direction of the posterior KL.

    beta: weight of KL(q(z|x) || U(S^{d-1})) (S-VAE: 1).
    alpha: weight of the KL between the two cluster posteriors q(c|x) and p(c|z).
    eta: weight of the extended mutual information lam H(C) - H(C|Z).
    lam: the "extension": lam = 1 is the mutual information I(C; X); lam > 1 favours balanced clusters more
        (IMSAT uses 4).
    kl_direction: "forward" KL(q(c|x) || p(c|z)) or "reverse" KL(p(c|z) || q(c|x)).
    gamma: weight of the neighbour term (our addition; applies only when ``dhvc_loss`` gets targets).
    """

    beta: float = 1.0
    alpha: float = 1.0
    eta: float = 1.0
    lam: float = 4.0
    kl_direction: str = "forward"
    gamma: float = 32.0

    def __post_init__(self):
        for name in ("beta", "alpha", "eta", "lam", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"LossWeights: {name} must be a number >= 0, got {value!r}")
        if self.kl_direction not in ("forward", "reverse"):
            raise ValueError(f"LossWeights: kl_direction must be 'forward' or 'reverse', got {self.kl_direction!r}")


class DHVCNet(nn.Module):
    """Encoder, vMF posterior head, decoder, cluster head and vMF mixture of DHVC.

    Args:
        n_features: D, the size of a flattened input.
        n_clusters: K >= 2.
        latent_dim: d >= 2, the ambient dimension of the latent sphere S^{d-1}.
        hidden: sizes of the MLP encoder's layers (the decoder mirrors them); DEC's (500, 500, 2000).
        arch: "mlp", or "conv" for images (needs ``image_shape`` (C, H, W)).
        likelihood: "bernoulli" (inputs in [0, 1], decoder outputs logits) or "gaussian" (unit variance).
        kappa_min: lower bound of the posterior concentration (S-VAE uses 1).
        kappa_max: upper bound of the posterior and of the mixture concentrations. Without it, the joint phase
            can run away: the KL to the uniform prior grows only like (d-1)/2 log kappa, so the encoder may
            collapse a cluster onto one point (kappa_x -> 1e9, z = mu_x exactly), EM then gives that component
            kappa -> inf, p(c|z) turns into a step function whose gradient swamps the reconstruction, and
            the clusters merge (seen on digits for some seeds, with the loss growing 4x).
        head: "separate" (a linear cluster head on mu_x) or "mixture" (q(c|x) = p(c|mu_x), no head).
    """

    def __init__(self, n_features, n_clusters, latent_dim=10, *, hidden=(500, 500, 2000), arch="mlp",
                 image_shape=None, likelihood="bernoulli", kappa_min=1.0, kappa_max=1e3, head="separate"):
        super().__init__()
        for name, value, low in (("n_features", n_features, 1), ("n_clusters", n_clusters, 2),
                                 ("latent_dim", latent_dim, 2)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"DHVCNet: {name} must be an int >= {low}, got {value!r}")
        if arch not in ("mlp", "conv"):
            raise ValueError(f"DHVCNet: arch must be 'mlp' or 'conv', got {arch!r}")
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"DHVCNet: likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        if head not in ("separate", "mixture"):
            raise ValueError(f"DHVCNet: head must be 'separate' or 'mixture', got {head!r}")
        if not kappa_max > kappa_min + 1:
            raise ValueError(f"DHVCNet: kappa_max must be > kappa_min + 1, got {kappa_max!r}")
        if not kappa_min >= 0:
            raise ValueError(f"DHVCNet: kappa_min must be >= 0, got {kappa_min!r}")
        self.n_features, self.n_clusters, self.latent_dim = int(n_features), int(n_clusters), int(latent_dim)
        self.likelihood, self.kappa_min, self.kappa_max, self.head_type = likelihood, float(kappa_min), float(kappa_max), head
        if arch == "conv":
            if image_shape is None or len(image_shape) != 3 or int(torch.tensor(image_shape).prod()) != n_features:
                raise ValueError(f"DHVCNet: arch='conv' needs image_shape (C, H, W) with C*H*W = n_features = "
                                 f"{n_features}, got {image_shape!r}")
            self.encoder = ConvEncoder(image_shape)
            self.decoder = ConvDecoder(latent_dim, image_shape)
        else:
            hidden = tuple(int(h) for h in hidden)
            if not hidden or min(hidden) < 1:
                raise ValueError(f"DHVCNet: hidden must be a non-empty sequence of positive ints, got {hidden!r}")
            self.encoder = MLP(n_features, hidden)
            self.decoder = nn.Sequential(MLP(latent_dim, hidden[::-1]), nn.Linear(hidden[0], n_features))
        self.to_mu = nn.Linear(self.encoder.n_out, latent_dim)
        self.to_kappa = nn.Linear(self.encoder.n_out, 1)
        self.head = nn.Linear(latent_dim, n_clusters) if head == "separate" else None
        self.mixture = VMFMixture(n_clusters, latent_dim, kappa_init=min(10.0, kappa_max / 2), kappa_max=kappa_max)

    def encode(self, x):
        """x (B, D) -> (mu (B, d) unit rows, kappa (B,) in [kappa_min, kappa_max])."""
        h = self.encoder(x)
        mu = F.normalize(_full(self.to_mu(h)), dim=-1)
        kappa = (F.softplus(_full(self.to_kappa(h))).squeeze(-1) + self.kappa_min).clamp(max=self.kappa_max)
        return mu, kappa

    def decode(self, z):
        """z (B, d) -> (B, D) Bernoulli logits or Gaussian means."""
        return _full(self.decoder(z))

    def cluster_log_probs(self, mu):
        """log q(c|x) (B, K) from the mean directions mu (B, d)."""
        if self.head is None:
            return self.mixture.log_posterior(mu)
        return F.log_softmax(_full(self.head(mu)), dim=-1)

    def reconstruction_nll(self, out, x):
        """-log p(x|z) per row (B,): Bernoulli cross-entropy, or 0.5 |x - out|^2 (unit variance, no constant)."""
        if self.likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        return 0.5 * (out - x).pow(2).sum(-1)


def _full(t):
    """t in float32 when a bfloat16 / float16 autocast made it narrower (``TrainConfig.bf16``): the layers run
    in bfloat16, but what the vMF terms, the mixture posterior and the objective's log-sum-exps take is
    float32 (bfloat16's 8-bit mantissa would put errors of ~0.4% into kappa and log C_d). Else t as it is."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _entropy(log_p):
    return -(log_p.exp() * log_p).sum(-1)


def dhvc_loss(model, x, weights, *, phase="joint", targets=None):
    """The DHVC objective on a batch x (B, D): a dict with the total ``loss`` (0-dim, differentiable) and each
    term (0-dim, batch means) under the keys of ``LOSS_TERMS``.

    phase="pretrain" is the S-VAE objective recon + beta KL(q(z|x) || U) (the cluster terms are 0);
    phase="joint" is the full objective of the module docstring. ``targets`` (B, K), rows summing to 1, adds the
    neighbour term gamma CE(targets, q(c|x)) (joint phase only); without them ``nbr`` is 0.
    """
    # Under a bfloat16 autocast (TrainConfig.bf16) only the encoder and the decoder run narrow: the sampler,
    # the KLs, the head, the mixture posterior and the log-sum-exps run in float32 (autocast off).
    mu, kappa = model.encode(x)
    with _full_precision(x):
        posterior = VonMisesFisher(mu, kappa, validate_args=False)
        z = posterior.rsample()
        kl_prior = torch.distributions.kl_divergence(
            posterior, HypersphericalUniform(model.latent_dim, device=x.device, dtype=mu.dtype)).mean()
    recon = model.reconstruction_nll(model.decode(z), x).mean()
    loss = recon + weights.beta * kl_prior
    zero = torch.zeros((), device=x.device, dtype=loss.dtype)
    terms = dict(recon=recon, kl_prior=kl_prior, kl_post=zero, h_c=zero, h_c_given_z=zero, nbr=zero)
    if phase == "joint":
        with _full_precision(x):
            return _joint_terms(model, mu, z, weights, targets, loss, terms)
    if phase != "pretrain":
        raise ValueError(f"dhvc_loss: phase must be 'pretrain' or 'joint', got {phase!r}")
    terms["loss"] = loss
    return terms


def _full_precision(x):
    """A context with autocast off on x's device type (the objective's vMF and cluster terms, see dhvc_loss)."""
    return torch.autocast(x.device.type, enabled=False)


def _joint_terms(model, mu, z, weights, targets, loss, terms):
    """The joint phase's cluster terms added to ``loss`` and ``terms`` (dhvc_loss, in full precision)."""
    log_q = model.cluster_log_probs(mu)  # (B, K)
    log_p = model.mixture.log_posterior(z)  # (B, K)
    if weights.kl_direction == "forward":
        kl_post = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    else:
        kl_post = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    h_c_given_z = _entropy(log_q).mean()
    h_c = _entropy(torch.logsumexp(log_q, dim=0) - math.log(mu.shape[0]))  # log qbar
    loss = loss + weights.alpha * kl_post - weights.eta * (weights.lam * h_c - h_c_given_z)
    terms.update(kl_post=kl_post, h_c=h_c, h_c_given_z=h_c_given_z)
    if targets is not None:
        if targets.shape != log_q.shape:
            raise ValueError(f"dhvc_loss: targets must have the shape of q(c|x) {tuple(log_q.shape)}, "
                             f"got {tuple(targets.shape)}")
        nbr = -(targets.to(log_q.dtype) * log_q).sum(-1).mean()
        loss = loss + weights.gamma * nbr
        terms["nbr"] = nbr
    terms["loss"] = loss
    return terms
