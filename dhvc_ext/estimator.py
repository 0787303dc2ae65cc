"""``DHVC``: the scikit-learn-style estimator for notebooks, a thin shell over ``dhvc_ext.train.Trainer``.

    from dhvc_ext import DHVC
    labels = DHVC(n_clusters=10).fit_predict(X)      # X (n_samples, n_features), NumPy array or tensor
    Z = model.transform(X)                           # (n_samples, latent_dim) latent mean directions

X is used as given (scale it first, e.g. with ``dhvc_ext.data.load_dataset(..., scaling="minmax")``); data
in [0, 1] get the Bernoulli decoder, other data the Gaussian one (``likelihood="auto"``). Every input is
checked before any training: NaN or inf, a rank other than 2, an empty array, or n_clusters > n_samples is a
ValueError naming the problem.
"""
import dataclasses

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from dhvc_ext.data import Dataset, check_features
from dhvc_ext.train import TrainConfig, Trainer

__all__ = ["DHVC"]


class DHVC(ClusterMixin, TransformerMixin, BaseEstimator):
    """Deep Hyperspherical Variational Clustering (scikit-learn estimator API).

    The parameters are those of ``dhvc_ext.train.TrainConfig`` (see its docstring; ``random_state`` is its
    ``seed``). ``verbose`` shows tqdm progress bars.

    Fitted attributes: ``labels_`` (n_samples,), ``trainer_`` (the ``Trainer``, with ``model`` and
    ``history``), ``history_`` (one dict of loss terms per epoch), ``n_features_in_``.
    """

    def __init__(self, n_clusters=10, latent_dim=10, *, hidden=(500, 500, 2000), arch="mlp", likelihood="auto",
                 kappa_min=1.0, kappa_max=1e3, head="separate", beta=1.0, alpha=1.0, eta=1.0, lam=4.0, kl_direction="forward",
                 gamma=32.0, neighbors=10, neighbor_space="input",
                 pretrain_epochs=50, pretrain_beta=0.0, epochs=50, batch_size=None, pretrain_lr=1e-3, lr=1e-3,
                 lr_decay=0.9, lr_step=10, grad_clip=10.0, mixture_update="em", em_every=1, em_iters=5, mixture_lr_scale=0.1,
                 mixture_fit_on="samples", mixture_n_init=5, head_init="mixture", predict_with="head",
                 random_state=0, device="auto", bf16=False, num_threads=None, verbose=False):
        self.n_clusters = n_clusters
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.arch = arch
        self.likelihood = likelihood
        self.kappa_min = kappa_min
        self.kappa_max = kappa_max
        self.head = head
        self.beta = beta
        self.alpha = alpha
        self.eta = eta
        self.lam = lam
        self.kl_direction = kl_direction
        self.gamma = gamma
        self.neighbors = neighbors
        self.neighbor_space = neighbor_space
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_beta = pretrain_beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.pretrain_lr = pretrain_lr
        self.lr = lr
        self.lr_decay = lr_decay
        self.lr_step = lr_step
        self.grad_clip = grad_clip
        self.mixture_update = mixture_update
        self.em_every = em_every
        self.em_iters = em_iters
        self.mixture_lr_scale = mixture_lr_scale
        self.mixture_fit_on = mixture_fit_on
        self.mixture_n_init = mixture_n_init
        self.head_init = head_init
        self.predict_with = predict_with
        self.random_state = random_state
        self.device = device
        self.bf16 = bf16
        self.num_threads = num_threads
        self.verbose = verbose

    def _config(self):
        params = self.get_params()
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        kwargs = {k: v for k, v in params.items() if k in names}
        return TrainConfig(**kwargs, seed=0 if self.random_state is None else self.random_state)

    def _dataset(self, X, fitted):
        if fitted:
            check_is_fitted(self, "trainer_")
        X = check_features(X, type(self).__name__)
        if fitted and X.shape[1] != self.n_features_in_:
            raise ValueError(f"{type(self).__name__}: X has {X.shape[1]} features, but the model was fitted "
                             f"with {self.n_features_in_}")
        unit = bool(X.size) and float(X.min()) >= 0.0 and float(X.max()) <= 1.0
        return Dataset(X=X, y=None, name="array", unit_interval=unit)

    def fit(self, X, y=None):
        """Train on X (n_samples, n_features); y is ignored. Returns self."""
        config = self._config()
        data = self._dataset(X, fitted=False)
        if config.n_clusters > len(data):
            raise ValueError(f"{type(self).__name__}: n_clusters = {config.n_clusters} is larger than "
                             f"n_samples = {len(data)}")
        image_shape = None
        if config.arch == "conv":
            side = int(round(np.sqrt(data.n_features)))
            if side * side != data.n_features:
                raise ValueError(f"{type(self).__name__}: arch='conv' needs square single-channel images, got "
                                 f"{data.n_features} features")
            image_shape = (1, side, side)
        self.trainer_ = Trainer(config, data.n_features, image_shape=image_shape, unit_interval=data.unit_interval)
        self.trainer_.fit(data, progress=self.verbose)
        self.history_ = self.trainer_.history
        self.n_features_in_ = data.n_features
        self.labels_ = self.trainer_.predict(data)
        return self

    def fit_predict(self, X, y=None):
        """fit(X), then ``labels_``: (n_samples,) int64."""
        return self.fit(X).labels_

    def predict(self, X):
        """Cluster of each row (argmax of ``predict_proba``): (n_samples,) int64."""
        data = self._dataset(X, fitted=True)  # raises NotFittedError first
        return self.trainer_.predict(data)

    def predict_proba(self, X):
        """Cluster probabilities (q(c|x) for predict_with="head", p(c|mu_x) for "mixture"): (n_samples, K)."""
        data = self._dataset(X, fitted=True)
        return self.trainer_.predict_proba(data)

    def transform(self, X):
        """Latent mean directions mu_x, unit rows: (n_samples, latent_dim) float32."""
        data = self._dataset(X, fitted=True)
        return self.trainer_.encode(data).cpu().numpy()
