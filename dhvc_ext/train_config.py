"""``TrainConfig``: everything that defines a DHVC run, validated when it is built; the one source of the
training knobs (the command line's options and the ``DHVC`` estimator's parameters are derived from its fields).
What each knob does in the schedule: ``dhvc_ext.train``."""
import dataclasses
import math

import numpy as np

from dhvc_ext.models import LossWeights

__all__ = ["TrainConfig"]

#: seeds are passed to NumPy / scikit-learn random states, which take 0 <= seed < 2**32
SEED_LIMIT = 2 ** 32


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a DHVC run; the defaults are the ones the results in the README use.

    Model: n_clusters, latent_dim (d of S^{d-1}), hidden, arch ("mlp" or "conv"), likelihood ("auto":
    Bernoulli when the data lie in [0, 1], else Gaussian), kappa_min, head ("separate" or "mixture").
    Objective: beta, alpha, eta, lam, kl_direction, gamma (``dhvc_ext.models.LossWeights``); neighbors: k of
    the neighbour term (0: off, the objective of METHOD.md alone) and neighbor_space, where neighbours are
    found: "input" (the scaled data rows) or "latent" (the pretrained encoder's means).
    Start of the joint phase: cluster_init "mixture" (the vMF mixture fitted to the encoded data, METHOD.md),
    "manifold" (our addition: a consensus of manifold_runs UMAP + GMM clusterings of the input rows, see
    ``dhvc_ext.cluster_start.manifold_start``; umap-learn) or "best" (our addition, the default: ``epochs``
    joint epochs from each of the two, the network of the lower final objective kept; ``starts``).
    Schedule: see the module docstring. Predictions: predict_with "head" (argmax q(c|x)) or "mixture"
    (argmax p(c|mu_x)). Runtime: seed, device ("auto", "cpu", "cuda", "cuda:1", ...), bf16 (bfloat16
    autocast of the networks on either device; the vMF terms, the mixture and the log-sum-exps stay float32
    or wider), num_threads (torch CPU threads; None leaves torch's setting).
    """

    n_clusters: int = 10
    latent_dim: int = 10
    hidden: tuple = (500, 500, 2000)
    arch: str = "mlp"
    likelihood: str = "auto"
    kappa_min: float = 1.0
    kappa_max: float = 1e3
    head: str = "separate"
    beta: float = 1.0
    alpha: float = 1.0
    eta: float = 1.0
    lam: float = 4.0
    kl_direction: str = "forward"
    gamma: float = 32.0
    neighbors: int = 10
    neighbor_space: str = "input"
    pretrain_epochs: int = 50
    pretrain_beta: float = 0.0
    epochs: int = 50
    batch_size: int = None
    pretrain_lr: float = 1e-3
    lr: float = 1e-3
    lr_decay: float = 0.9
    lr_step: int = 10
    grad_clip: float = 10.0
    mixture_update: str = "em"
    em_every: int = 1
    em_iters: int = 5
    mixture_lr_scale: float = 0.1
    mixture_fit_on: str = "samples"
    mixture_n_init: int = 5
    head_init: str = "mixture"
    cluster_init: str = "best"
    manifold_runs: int = 6
    predict_with: str = "head"
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    num_threads: int = None

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)
        for name, low in (("n_clusters", 2), ("latent_dim", 2), ("pretrain_epochs", 0), ("epochs", 0),
                          ("lr_step", 1), ("em_every", 1), ("em_iters", 1),
                          ("mixture_n_init", 1), ("seed", 0), ("neighbors", 0),
                          ("manifold_runs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"TrainConfig: {name} must be an int >= {low}, got {value!r}")
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"TrainConfig: seed must be < 2**32 (a NumPy random state), got {self.seed!r}")
        if not (isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0):
            raise ValueError(f"TrainConfig: grad_clip must be a number >= 0 (0: no clipping), got {self.grad_clip!r}")
        for name in ("pretrain_lr", "lr", "lr_decay", "mixture_lr_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"TrainConfig: {name} must be a finite number > 0, got {value!r}")
        choices = dict(likelihood=("auto", "bernoulli", "gaussian"), mixture_update=("em", "gradient"),
                       predict_with=("head", "mixture"), mixture_fit_on=("samples", "means"),
                       head_init=("mixture", "random"), neighbor_space=("input", "latent"),
                       cluster_init=("mixture", "manifold", "best"))
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ValueError(f"TrainConfig: batch_size must be None (automatic) or an int >= 1, got {self.batch_size!r}")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ValueError(f"TrainConfig: num_threads must be None or an int >= 1, got {self.num_threads!r}")
        self.loss_weights()  # validates beta, alpha, eta, lam, kl_direction

    def check_rows(self, n):
        """Raise ValueError unless a data set of n rows can be clustered into n_clusters (K <= n)."""
        if self.n_clusters > n:
            raise ValueError(f"n_clusters = {self.n_clusters} is larger than n_samples = {n}")

    def loss_weights(self):
        return LossWeights(beta=self.beta, alpha=self.alpha, eta=self.eta, lam=self.lam,
                           kl_direction=self.kl_direction, gamma=self.gamma)

    @property
    def starts(self):
        """The starts of the joint phase this configuration trains, in order: cluster_init="best" trains
        both (``dhvc_ext.cluster_start``), the others one."""
        return ("mixture", "manifold") if self.cluster_init == "best" else (self.cluster_init,)

    @property
    def total_epochs(self):
        """Pretraining, then ``epochs`` joint epochs from each start (with epochs = 0: the first start only)."""
        return self.pretrain_epochs + self.epochs * len(self.starts)
