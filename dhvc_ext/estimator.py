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
import inspect

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from dhvc_ext.data import Dataset, check_features
from dhvc_ext.train import TrainConfig, Trainer

__all__ = ["DHVC"]


#: TrainConfig fields that the estimator takes by position too (the rest are keyword-only).
_POSITIONAL = ("n_clusters", "latent_dim")
#: TrainConfig fields whose estimator parameter has the scikit-learn name.
_RENAMED = {"seed": "random_state"}


def _signature():
    """The estimator's parameters: one per ``TrainConfig`` field, with its default (``seed`` as
    ``random_state``), then ``verbose``. Derived, so that the two never differ (the configuration is the one
    source of the training knobs)."""
    P = inspect.Parameter
    fields = dataclasses.fields(TrainConfig)
    params = [P("self", P.POSITIONAL_OR_KEYWORD)]
    for f in sorted(fields, key=lambda f: f.name not in _POSITIONAL):  # stable: the fields' order otherwise
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = P.POSITIONAL_OR_KEYWORD if f.name in _POSITIONAL else P.KEYWORD_ONLY
        params.append(P(_RENAMED.get(f.name, f.name), kind, default=default))
    params.append(P("verbose", P.KEYWORD_ONLY, default=False))
    return inspect.Signature(params)


class DHVC(ClusterMixin, TransformerMixin, BaseEstimator):
    """Deep Hyperspherical Variational Clustering (scikit-learn estimator API).

    The parameters are the fields of ``dhvc_ext.train.TrainConfig``, with its defaults (see its docstring;
    ``random_state`` is its ``seed``), and ``verbose`` (tqdm progress bars): ``DHVC(n_clusters, latent_dim,
    *, hidden=..., ...)``. An unknown parameter is a TypeError naming it.

    Fitted attributes: ``labels_`` (n_samples,), ``trainer_`` (the ``Trainer``, with ``model`` and
    ``history``), ``history_`` (one dict of loss terms per epoch), ``n_features_in_``.
    """

    def __init__(self, *args, **kwargs):
        try:
            bound = _SIGNATURE.bind(self, *args, **kwargs)
        except TypeError as err:
            unknown = sorted(set(kwargs) - set(_SIGNATURE.parameters))
            what = f"unknown parameter(s) {', '.join(map(repr, unknown))}" if unknown else str(err)
            raise TypeError(f"DHVC: {what}; the parameters are TrainConfig's fields (random_state for seed) and "
                            "verbose") from None
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    def _config(self):
        """The ``TrainConfig`` of the parameters (``random_state`` None: seed 0)."""
        params = self.get_params(deep=False)
        params.pop("verbose")
        seed = params.pop("random_state")
        return TrainConfig(**params, seed=0 if seed is None else seed)

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
        try:
            config.check_rows(len(data))
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None
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


_SIGNATURE = _signature()
DHVC.__init__.__signature__ = _SIGNATURE  # what scikit-learn's get_params, clone and repr read
