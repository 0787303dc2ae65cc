"""The scikit-learn-style estimators on the sphere: ``VonMisesFisherMixture`` (EM on a ``VMFMixture`` from a
spherical k-means++ start, in memory or streamed, optionally over torch.distributed ranks) and
``SphericalKMeans``; see ``dhvc_ext.mixture`` for the formulas, the input rules and streaming.
"""
import math
import numbers
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dhvc_ext import distributed as dist
from dhvc_ext import ops
from dhvc_ext.mixture.vmf_mixture import VMFMixture

__all__ = ["SphericalKMeans", "VonMisesFisherMixture"]


def _as_unit_rows(X, who, dim=None, normalize=True, device=None, dtype=torch.float64, first_row=0):
    """X (NumPy array, torch tensor or nested list) -> (N, d) tensor of unit rows on device in dtype.
    ``first_row``: the index of X's first row in the whole data (a streamed chunk's), for the messages."""
    if isinstance(X, torch.Tensor):
        if X.is_complex():
            raise TypeError(f"{who}: X must be real, got a {X.dtype} tensor")
        z = X.detach().to(device=device, dtype=dtype)
    else:
        array = np.asarray(X)
        if array.dtype.kind == "c":
            raise TypeError(f"{who}: X must be real, got an array of {array.dtype}")
        if array.dtype not in (np.float32, np.float64):
            array = np.asarray(array, dtype=np.float64)
        # float32 rows go to torch as they are (widening is exact): a streamed float32 chunk computed in
        # float32 is never copied to float64 on the way. A read-only array (a memory map's rows) is shared,
        # not copied: nothing here writes to it, so torch's warning about such arrays does not apply.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            z = torch.as_tensor(array, device=device).to(dtype)
    if z.dim() != 2 or z.shape[0] < 1 or z.shape[1] < 2:
        raise ValueError(f"{who}: X must be 2-D (n_samples >= 1, n_features >= 2), got shape {tuple(z.shape)}")
    if dim is not None and z.shape[1] != dim:
        raise ValueError(f"{who}: X has {z.shape[1]} features, but the estimator was fitted with {dim}")
    norm = torch.linalg.vector_norm(z, dim=1)
    # A NaN or infinite entry makes its row's norm NaN or infinite, and with it the largest or smallest norm
    # (torch.aminmax propagates NaN): the full check only runs then. One pass over the norms for both checks.
    smallest, largest = (float(v) for v in torch.aminmax(norm))
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        finite = torch.isfinite(z).all(dim=1)
        if not bool(finite.all()):
            raise ValueError(f"{who}: X contains NaN or infinity (row {first_row + int((~finite).nonzero()[0])})")
    if normalize:
        if not (largest < math.inf and smallest >= math.sqrt(torch.finfo(z.dtype).tiny)):
            # The sum of squares overflowed (a finite row of norm beyond the dtype's range would become a zero
            # vector) or may have underflowed: divide each row by its largest entry first, then normalise.
            peak = z.abs().amax(dim=1)
            if not bool((peak > 0).all()):
                i = first_row + int((peak == 0).nonzero()[0])
                raise ValueError(f"{who}: row {i} of X is zero and has no direction")
            z = z / peak[:, None]
            norm = torch.linalg.vector_norm(z, dim=1)
        return z / norm[:, None]
    tol = max(torch.finfo(dtype).eps ** 0.5, 1e-6)
    bad = (norm - 1).abs() > tol
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"{who}: normalize=False but row {first_row + i} of X has norm {float(norm[i]):g}, not 1")
    return z


def _torch_generator(random_state, device):
    """A torch.Generator on device seeded from a NumPy RandomState (one draw)."""
    seed = int(random_state.randint(0, 2**62, dtype=np.int64))
    return torch.Generator(device=device).manual_seed(seed)


def _spherical_kmeans_pp(z, k, generator):
    """Greedy k-means++ on the sphere: the first centre uniformly among the rows of z (N, d); for each next one,
    2 + floor(log k) candidates drawn with probability proportional to 1 - (max cosine to the chosen centres),
    of which the one that leaves the smallest potential sum_n (1 - max cosine) is kept (scikit-learn's greedy
    k-means++: plain k-means++ puts two centres in one cluster of three well separated ones about one time
    in eight, and EM does not undo that). Returns (k, d) rows of z."""
    n, trials = z.shape[0], 2 + int(math.log(k))
    idx = [int(torch.randint(n, (1,), generator=generator, device=generator.device))]
    best = z @ z[idx[0]]
    for _ in range(1, k):
        weight = (1 - best).clamp_min_(0)
        if not bool(weight.sum() > 0):  # every row sits on a centre: any choice is as good
            weight = torch.ones_like(weight)
        cand = torch.multinomial(weight.to(generator.device), trials, replacement=True, generator=generator).to(z.device)
        closest = z[cand] @ z.T  # (trials, N)
        torch.maximum(closest, best, out=closest)
        # The smallest potential sum_n (1 - closest) is the largest sum_n closest.
        pick = int(closest.sum(dim=1).argmax())
        idx.append(int(cand[pick]))
        best = closest[pick]
    return z[idx]


def _closest_centre_sums(z, centres):
    """The hard-label sums of the rows of z (N, d) labelled by their closest centre (largest cosine, ties to
    the lowest index) among centres (K, d): (N_k (K,), S_k (K, d)), float64. The hard E-step of the fused
    statistics op with weighted means = the centres and a zero bias (kappa = 1, log pi = -log C_d(1)): its
    scores are the cosines themselves."""
    centres = centres.to(z.dtype).contiguous()
    bias = torch.zeros(centres.shape[0], dtype=z.dtype, device=z.device)
    n_k, s_k, _ = ops.vmfmm_em_statistics_from_scores(z, centres, bias, hard=True)
    return n_k.to(torch.float64), s_k.to(torch.float64)


def _chunk_reader(X, chunk_size, who):
    """For an X that streams (see ``VonMisesFisherMixture.fit``), a function returning a fresh iterable of its
    2-D chunks; None for in-memory data."""
    if isinstance(X, np.memmap):
        if X.ndim != 2:
            raise ValueError(f"{who}: a memory-mapped X must be 2-D (n_samples, n_features), got shape {X.shape}")
        return lambda: (X[i:i + chunk_size] for i in range(0, X.shape[0], chunk_size))
    if isinstance(X, (np.ndarray, torch.Tensor)):
        return None
    if callable(X):
        return X
    if isinstance(X, (list, tuple)):
        if len(X) and all(isinstance(c, (np.ndarray, torch.Tensor)) and c.ndim == 2 for c in X):
            return lambda: iter(X)
        return None
    if hasattr(X, "__next__"):
        raise ValueError(f"{who}: X is a one-shot iterator ({type(X).__name__}), but EM reads the data once per "
                         "iteration; pass a list of chunks or a callable that returns a new iterable of chunks")
    if hasattr(X, "__iter__"):
        return lambda: iter(X)
    return None


def _check_int(value, name, who, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{who}: {name} must be an int >= {low}, got {value!r}")


class VonMisesFisherMixture(BaseEstimator):
    """Mixture of von Mises-Fisher distributions fitted by EM (scikit-learn estimator API).

    Args:
        n_components: K >= 1.
        init: "k-means++" (spherical greedy k-means++ centres: the first uniform, the next ones among
            candidates drawn with probability proportional to 1 - max cosine to the chosen ones) or "random"
            (K distinct random rows). The centres give hard labels from which one M-step makes the initial
            (mu, kappa, pi).
        n_init: number of initialisations; the one with the best final lower bound is kept.
        max_iter: EM iterations per initialisation.
        tol: stop when the mean log-likelihood changes by less than tol between iterations.
        posterior_type: "soft" (EM) or "hard" (classification EM: one-hot argmax responsibilities).
        kappa_max: cap of the concentrations (reached when a component's points coincide; warns).
        normalize: L2-normalise the rows of every X (a zero row raises ValueError); if False, rows must
            already be unit vectors.
        random_state: None, an int or a numpy.random.RandomState.
        device, dtype: where and in what precision torch computes (float32 or float64).
        chunk_size: rows read at a time from a ``numpy.memmap`` X (see ``fit``).
        init_size: rows of the sample that a streamed X's initialisation draws its centres from (>= K);
            a stream of at most this many rows is fitted exactly as in memory.

    Fitted attributes (NumPy): ``weights_`` (K,), ``means_`` (K, d), ``concentrations_`` (K,), ``n_iter_``,
    ``converged_``, ``lower_bound_`` (mean log-likelihood at the parameters before the last M-step, as in
    scikit-learn's GaussianMixture), and ``mixture_``, the fitted ``VMFMixture``.
    """

    def __init__(self, n_components=1, *, init="k-means++", n_init=1, max_iter=100, tol=1e-6, posterior_type="soft",
                 kappa_max=1e6, normalize=True, random_state=None, device=None, dtype=torch.float64,
                 chunk_size=65536, init_size=65536):
        self.n_components = n_components
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.posterior_type = posterior_type
        self.kappa_max = kappa_max
        self.normalize = normalize
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.init_size = init_size

    def _validate_params(self):
        who = type(self).__name__
        _check_int(self.n_components, "n_components", who, 1)
        _check_int(self.chunk_size, "chunk_size", who, 1)
        _check_int(self.init_size, "init_size", who, self.n_components)
        _check_int(self.n_init, "n_init", who, 1)
        _check_int(self.max_iter, "max_iter", who, 1)
        if self.init not in ("k-means++", "random"):
            raise ValueError(f"{who}: init must be 'k-means++' or 'random', got {self.init!r}")
        if self.posterior_type not in ("soft", "hard"):
            raise ValueError(f"{who}: posterior_type must be 'soft' or 'hard', got {self.posterior_type!r}")
        if not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"{who}: tol must be a number >= 0, got {self.tol!r}")
        if not (isinstance(self.kappa_max, numbers.Real) and self.kappa_max > 1):
            raise ValueError(f"{who}: kappa_max must be a number > 1, got {self.kappa_max!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{who}: dtype must be torch.float32 or torch.float64, got {self.dtype!r}")

    def _input(self, X, fitted=True):
        if fitted:
            check_is_fitted(self)
        dim = self.means_.shape[1] if fitted else None
        return _as_unit_rows(X, type(self).__name__, dim, self.normalize, self.device, self.dtype)

    def fit(self, X, y=None, *, distributed=False):
        """Fit the mixture to X. Returns self.

        X holds (n_samples, d) rows, either in memory (a NumPy array, a torch tensor, a nested list) or as a
        stream of chunks of rows, which EM reads once per iteration with memory bounded by one chunk plus the
        ``init_size`` sample: a ``numpy.memmap`` (``np.load(path, mmap_mode="r")``; read ``chunk_size`` rows
        at a time), a list or tuple of 2-D arrays or tensors, or a callable that returns a fresh iterable of
        2-D chunks at every call (a one-shot iterator or generator object is refused: EM needs many passes).
        A stream of at most ``init_size`` rows gives the in-memory fit, up to the order of float64 sums.

        ``distributed=True``: X is this process's shard of the data, and the E-step sums, the row count and
        the initialisation sample are combined over the torch.distributed process group, so that every rank
        ends with the same mixture, the one a single process fits to the shards concatenated in rank order
        (same order of float64 sums aside). Every rank must call it, with the same parameters and an int
        ``random_state`` (None is drawn on rank 0 and shared). Without a process group it is a plain fit.
        """
        self._validate_params()
        who = type(self).__name__
        read = _chunk_reader(X, self.chunk_size, who)
        distributed = bool(distributed) and dist.world_size() > 1
        if read is None and not distributed:
            z = self._input(X, fitted=False)
            if z.shape[0] < self.n_components:
                raise ValueError(f"{who}: n_samples = {z.shape[0]} must be >= n_components = {self.n_components}")
            rng = check_random_state(self.random_state)
            best = None
            for _ in range(self.n_init):
                generator = _torch_generator(rng, z.device)
                chunks = lambda: [z]  # noqa: E731
                model, values = self._init_mixture(z, chunks, z.shape[0], generator)
                result = self._em(model, values, z, chunks, z.shape[0], generator)
                if best is None or result[0] > best[0]:
                    best = result
        else:
            if read is None:
                z = self._input(X, fitted=False) if len(X) else None
                read = lambda: [] if z is None else [z]  # noqa: E731
            best = self._fit_stream(read, distributed)
        self.lower_bound_, self.mixture_, self.n_iter_, self.converged_ = best
        if not self.converged_:
            warnings.warn(f"{who}: EM did not converge in max_iter = {self.max_iter} iterations "
                          f"(tol = {self.tol:g}); increase max_iter or tol", ConvergenceWarning, stacklevel=2)
        with torch.no_grad():
            self.weights_ = self.mixture_.pi.cpu().numpy()
            self.means_ = self.mixture_.mu.cpu().numpy()
            self.concentrations_ = self.mixture_.kappa.cpu().numpy()
        return self

    def _fit_stream(self, read, distributed):
        """EM over the chunks that ``read()`` yields (this rank's shard when ``distributed``); returns
        (lower_bound, mixture, n_iter, converged) of the best initialisation.

        Pass 1 counts and checks the rows. The k-means++ centres (and the rows that re-seed empty components)
        come from a sample of at most ``init_size`` rows: all rows, in order, when there are no more (so that
        the fit is the in-memory one), else a uniform sample without replacement (the rows with the
        ``init_size`` smallest of independent uniform keys, kept by a running merge, chunk by chunk). Each EM
        iteration is then one pass of the fused ``vmfmm_em_statistics`` op per chunk, summed in float64.
        """
        who, k = type(self).__name__, self.n_components
        reduce = dist.all_reduce_sum if distributed else (lambda tensors: tensors)
        dim = None

        def chunks():
            first_row = 0
            for chunk in read():
                if not isinstance(chunk, (np.ndarray, torch.Tensor)):
                    chunk = np.asarray(chunk, dtype=np.float64)
                if chunk.ndim >= 1 and chunk.shape[0] == 0:
                    continue
                z = _as_unit_rows(chunk, who, dim, self.normalize, self.device, self.dtype, first_row)
                first_row += z.shape[0]
                yield z

        n_local, kept = 0, []
        for z in chunks():
            if dim is None:
                dim = z.shape[1]
            n_local += z.shape[0]
            if kept is not None:
                kept = kept + [z] if n_local <= self.init_size else None
        infos = dist.all_gather_objects((n_local, dim)) if distributed else [(n_local, dim)]
        dims = {d for _, d in infos if d is not None}
        if len(dims) > 1:
            raise ValueError(f"{who}: the ranks' shards have different numbers of features {sorted(dims)}")
        n = sum(c for c, _ in infos)
        if n < max(k, 1):
            raise ValueError(f"{who}: n_samples = {n} must be >= n_components = {k}")
        dim = dims.pop()
        rng = check_random_state(self.random_state)
        if distributed and not isinstance(self.random_state, numbers.Integral):
            rng = np.random.RandomState(dist.all_gather_objects(int(rng.randint(0, 2**31 - 1)))[0])
        factory = dict(device=self.device, dtype=self.dtype)
        if n <= self.init_size:
            local = torch.cat(kept) if kept else torch.empty((0, dim), **factory)
        else:
            local, keys = self._bottom_k_sample(chunks(), dim, int(rng.randint(0, 2**62, dtype=np.int64)) + dist.rank())
        sample = dist.all_gather_rows(local) if distributed else local
        if sample.shape[0] > self.init_size:  # merge the ranks' samples: the smallest keys overall
            keys = dist.all_gather_rows(keys)
            sample = sample[torch.argsort(keys)[:self.init_size].sort().values]
        best = None
        for _ in range(self.n_init):
            generator = _torch_generator(rng, sample.device)
            model, values = self._init_mixture(sample, chunks, n, generator, reduce)
            result = self._em(model, values, sample, chunks, n, generator, reduce)
            if best is None or result[0] > best[0]:
                best = result
        if distributed:  # the same already on every rank; made certain, whatever the device's arithmetic
            dist.broadcast_([best[1].mu_raw, best[1].kappa_raw, best[1].logits])
        return best

    def _bottom_k_sample(self, chunks, dim, seed):
        """The rows with the ``init_size`` smallest of independent uniform keys (a uniform sample without
        replacement), in stream order, and their keys (for merging the samples of several ranks)."""
        generator = torch.Generator().manual_seed(seed)
        keys = torch.empty(0, dtype=torch.float64)
        rows = torch.empty((0, dim), device=self.device, dtype=self.dtype)
        order = torch.empty(0, dtype=torch.int64)
        seen = 0
        for z in chunks:
            chunk_keys = torch.rand(z.shape[0], generator=generator, dtype=torch.float64)
            keys = torch.cat([keys, chunk_keys])
            rows = torch.cat([rows, z])
            order = torch.cat([order, torch.arange(seen, seen + z.shape[0])])
            seen += z.shape[0]
            if keys.numel() > self.init_size:
                keep = torch.argsort(keys)[:self.init_size]
                keys, rows, order = keys[keep], rows[keep.to(rows.device)], order[keep]
        position = torch.argsort(order)
        return rows[position.to(rows.device)], keys[position].to(rows.device)

    @torch.no_grad()
    def _em(self, model, values, sample, chunks, n, generator, reduce=None):
        """EM iterations from the M-step values (mu, kappa, pi) that initialise ``model``, over the chunks that
        ``chunks()`` yields (one pass of the fused statistics op per chunk and iteration; the sums of several
        chunks, or ranks with ``reduce``, combined in float64), n rows in all, ``sample`` the rows that
        re-seed empty components. Writes the last M-step to ``model``; returns (lower_bound, model, n_iter,
        converged). The parameters stay float64 M-step values between iterations: the same EM as
        ``VMFMixture.em_step`` (which reads them back from the module's unconstrained parameters), without
        that round trip."""
        hard = self.posterior_type == "hard"
        k, dim = model.n_components, model.dim
        lower_bound, converged, n_iter = -math.inf, False, 0
        for n_iter in range(1, self.max_iter + 1):
            previous = lower_bound
            # From the float64 M-step values, without the round trip through the module's parameters (and the
            # op wrapper's checks) at every iteration.
            mu, kappa, pi = values
            weighted, bias = ops.vmfmm_score_arguments(mu, kappa, torch.log(pi), sample.dtype)
            n_k = s_k = total = None
            for z in chunks():
                stats = ops.vmfmm_em_statistics_from_scores(z, weighted, bias, hard)
                if n_k is None:
                    n_k, s_k, total = stats
                    if reduce is not None:  # summed in float64, in place
                        n_k, s_k = n_k.to(torch.float64), s_k.to(torch.float64)
                else:
                    n_k = n_k.to(torch.float64) + stats[0]
                    s_k = s_k.to(torch.float64) + stats[1]
                    total = total + stats[2]
            if n_k is None:  # this rank's shard is empty
                n_k = torch.zeros(k, dtype=torch.float64, device=sample.device)
                s_k = torch.zeros(k, dim, dtype=torch.float64, device=sample.device)
                total = torch.zeros((), dtype=torch.float64, device=sample.device)
            if reduce is not None:
                reduce([n_k, s_k, total])
            values = model._m_step_values(sample, n_k, s_k, generator, n=n)[:3]
            lower_bound = float(total) / n
            if abs(lower_bound - previous) < self.tol:
                converged = True
                break
        model._set_values(*values)
        return lower_bound, model, n_iter, converged

    def _init_mixture(self, sample, chunks, n, generator, reduce=None):
        """The initial mixture: K centres drawn from ``sample`` (M, d) (k-means++, or K distinct random rows),
        the rows of every chunk that ``chunks()`` yields labelled by their closest centre, and one M-step from
        these hard labels (the sums over the chunks combined by ``reduce``, if given); n rows in all. In memory,
        ``sample`` is all the data and ``chunks()`` yields it as one chunk. Returns (model, its M-step values
        (mu, kappa, pi) in float64)."""
        k, d = self.n_components, sample.shape[1]
        model = VMFMixture(k, d, kappa_max=self.kappa_max, generator=generator, device=sample.device,
                           dtype=sample.dtype)
        if self.init == "k-means++":
            centres = _spherical_kmeans_pp(sample, k, generator)
        else:
            m = sample.shape[0]
            centres = sample[torch.randperm(m, generator=generator, device=generator.device)[:k].to(sample.device)]
        n_k = s_k = None
        for z in chunks():
            counts, sums = _closest_centre_sums(z, centres)
            n_k, s_k = (counts, sums) if n_k is None else (n_k + counts, s_k + sums)
        if n_k is None:  # this rank's shard is empty
            n_k = torch.zeros(k, dtype=torch.float64, device=sample.device)
            s_k = torch.zeros(k, d, dtype=torch.float64, device=sample.device)
        if reduce is not None:
            reduce([n_k, s_k])
        values = model._m_step_values(sample, n_k, s_k, generator, n=n)[:3]
        model._set_values(*values)
        return model, values

    def fit_predict(self, X, y=None):
        """fit(X), then the labels of X (n_samples,)."""
        return self.fit(X).predict(X)

    @torch.no_grad()
    def _log_resp(self, X):
        z = self._input(X)  # checks that the estimator is fitted
        return self.mixture_._e_step(z)

    def predict(self, X):
        """Most probable component of each row: (n_samples,) int64."""
        return self._log_resp(X)[0].argmax(dim=1).cpu().numpy()

    def predict_proba(self, X):
        """Responsibilities p(k | x): (n_samples, K)."""
        return self._log_resp(X)[0].exp().cpu().numpy()

    def score_samples(self, X):
        """log p(x) per row (density with respect to the surface measure of S^{d-1}): (n_samples,)."""
        return self._log_resp(X)[1].cpu().numpy()

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of X, a float."""
        return float(self._log_resp(X)[1].to(torch.float64).mean())

    def sample(self, n_samples=1):
        """(X (n_samples, d), y (n_samples,)) drawn from the fitted mixture, seeded by random_state."""
        check_is_fitted(self)
        _check_int(n_samples, "n_samples", type(self).__name__, 1)
        generator = _torch_generator(check_random_state(self.random_state), self.mixture_.mu_raw.device)
        with torch.no_grad():
            z, labels = self.mixture_.sample(n_samples, generator=generator)
        return z.cpu().numpy(), labels.cpu().numpy()

    def _n_parameters(self):
        k, d = self.means_.shape
        return k * (d - 1) + k + (k - 1)

    def bic(self, X):
        """Bayesian information criterion -2 log L + p log N (lower is better), p = K(d-1) + K + (K-1)."""
        n = self._input(X).shape[0]
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X):
        """Akaike information criterion -2 log L + 2 p (lower is better), p = K(d-1) + K + (K-1)."""
        n = self._input(X).shape[0]
        return -2 * self.score(X) * n + 2 * self._n_parameters()


class SphericalKMeans(BaseEstimator):
    """k-means with cosine similarity: assign each unit row to the centre of largest mu^T z, move each centre
    to the normalised mean of its rows. Rows are L2-normalised (a zero row raises ValueError).

    Args:
        n_clusters: K >= 1. n_init: k-means++ restarts; the lowest inertia is kept. max_iter, tol: stop when
        the inertia decreases by less than tol. random_state, device, dtype: as in VonMisesFisherMixture.

    Fitted attributes (NumPy): ``cluster_centers_`` (K, d) unit rows, ``labels_`` (n_samples,), ``inertia_``
    (sum of 1 - cosine to the assigned centre), ``n_iter_``. An empty cluster is moved to the row farthest
    from its centre.
    """

    def __init__(self, n_clusters=8, *, n_init=1, max_iter=100, tol=1e-6, random_state=None, device=None,
                 dtype=torch.float64):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.dtype = dtype

    def _input(self, X, fitted=True):
        if fitted:
            check_is_fitted(self)
        dim = self.cluster_centers_.shape[1] if fitted else None
        return _as_unit_rows(X, type(self).__name__, dim, True, self.device, self.dtype)

    @staticmethod
    def _lloyd(z, centres, max_iter, tol):
        k = centres.shape[0]
        inertia, n_iter = math.inf, 0
        for n_iter in range(1, max_iter + 1):
            cos, labels = (z @ centres.T).max(dim=1)
            previous, inertia = inertia, float((1 - cos).sum())
            sums = torch.zeros_like(centres).index_add_(0, labels, z)
            counts = torch.bincount(labels, minlength=k)
            for j in (counts == 0).nonzero().flatten().tolist():
                far = int(cos.argmin())
                sums[j], cos[far] = z[far], 1.0
            centres = F.normalize(sums, dim=1)
            if previous - inertia < tol:
                break
        cos, labels = (z @ centres.T).max(dim=1)
        return centres, labels, float((1 - cos).sum()), n_iter

    def fit(self, X, y=None):
        """Cluster X (n_samples, d). Returns self."""
        who = type(self).__name__
        _check_int(self.n_clusters, "n_clusters", who, 1)
        _check_int(self.n_init, "n_init", who, 1)
        _check_int(self.max_iter, "max_iter", who, 1)
        z = self._input(X, fitted=False)
        if z.shape[0] < self.n_clusters:
            raise ValueError(f"{who}: n_samples = {z.shape[0]} must be >= n_clusters = {self.n_clusters}")
        rng = check_random_state(self.random_state)
        best = None
        for _ in range(self.n_init):
            generator = _torch_generator(rng, z.device)
            result = self._lloyd(z, _spherical_kmeans_pp(z, self.n_clusters, generator), self.max_iter, self.tol)
            if best is None or result[2] < best[2]:
                best = result
        centres, labels, self.inertia_, self.n_iter_ = best
        self.cluster_centers_ = centres.cpu().numpy()
        self.labels_ = labels.cpu().numpy()
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def predict(self, X):
        """Index of the closest centre (largest cosine) of each row: (n_samples,) int64."""
        z = self._input(X)
        return (z @ torch.as_tensor(self.cluster_centers_, device=z.device, dtype=z.dtype).T).argmax(dim=1).cpu().numpy()
