"""Clusterings of a data set's UMAP manifold: the UMAP + GMM peer, and a label-free consensus of several runs.

Shapes: X (N, D) rows (scaled inputs or latent codes); proba (N, K) cluster probabilities, rows summing to 1.
``manifold_posteriors`` and ``extend_to_rows`` also take X as an array-like read where indexed (``X[lo:hi]``,
``X[int array]``, ``X.shape``: a memory map, ``dhvc_ext.data.Dataset.rows()``), so that above
``MANIFOLD_MAX_ROWS`` rows only the landmarks and one block are ever held.

``umap_gmm`` is the clustering a user tries first (McConville et al., "N2D: (Not Too) Deep Clustering via
Clustering the Local Manifold of an Autoencoded Embedding", ICPR 2020, on raw rows or on an autoencoder's
codes): umap-learn's ``UMAP(n_components=K, n_neighbors=n, min_dist=0)``, then scikit-learn's
``GaussianMixture(K, covariance_type="full")`` on the embedding.

``consensus`` combines R such clusterings without labels: the run that agrees most with the others (sum of
adjusted Rand indices, the "medoid" partition) is the reference, every run's clusters are matched to the
reference's by the Hungarian method on their soft contingency table (sum_i P_ik R_il), and the matched
probabilities are averaged; matching to the average and averaging again is repeated a few times. One UMAP
run falls into one of a few basins (on digits with 20 neighbours: ACC 88.2 or 81.9, the second merging two
digits); the vote of several runs varies far less than one run. ``manifold_posteriors`` is that vote over runs
whose neighbour counts cycle through ``neighbors`` (15, 30, 50: the local-to-global range of UMAP's
documentation), so that no single neighbourhood size, tuned to one data set, is the default.

Large data: UMAP's cost grows faster than N (about 25 s a run for 10000 Fashion-MNIST rows on one thread,
hours for 1e6), so above ``MANIFOLD_MAX_ROWS`` rows ``manifold_posteriors`` clusters that many landmark rows
(drawn with the seed) and gives every other row the mean consensus probabilities of its
``LANDMARK_NEIGHBORS`` nearest landmarks (cosine, exact, in blocks: O(N L D) work, no N x L matrix).

umap-learn is a dependency of dhvc-ext (the default start of DHVC's joint phase uses it); these functions
raise an ImportError that says how to install it when it is missing.
"""
import warnings

import numpy as np

__all__ = ["umap_gmm", "consensus", "manifold_posteriors", "extend_to_rows", "MANIFOLD_NEIGHBORS",
           "MANIFOLD_MAX_ROWS"]

#: Neighbour counts the runs of ``manifold_posteriors`` cycle through.
MANIFOLD_NEIGHBORS = (15, 30, 50)
#: Above this many rows ``manifold_posteriors`` clusters landmark rows and extends to the rest (docstring).
MANIFOLD_MAX_ROWS = 20_000
#: Landmarks whose probabilities a non-landmark row averages.
LANDMARK_NEIGHBORS = 10
#: Rows of X per block of the landmark search.
_LANDMARK_BLOCK = 4096


_MISSING = ("dhvc_ext.manifold needs umap-learn, a dependency of dhvc-ext that is not installed here: pip install "
            "umap-learn (or `make venv`, which installs it); or train with cluster_init='mixture' "
            "(--cluster-init mixture), which does not use it")


def require_umap():
    """Raise ImportError (saying how to install it) unless umap-learn can be imported; cheap, imports nothing.
    ``Trainer.fit`` calls it before pretraining when a start needs UMAP, not after."""
    import importlib.util
    import sys

    if (sys.modules["umap"] is None) if "umap" in sys.modules else importlib.util.find_spec("umap") is None:
        raise ImportError(_MISSING)


def _umap():
    try:
        import umap
    except ImportError as exc:  # pragma: no cover - exercised by a test that hides the module
        raise ImportError(_MISSING) from exc
    return umap


def _check(X, n_clusters, who, read=True):
    """X as float32 (N, D), checked; ``read=False``: only X's shape is checked (an array-like too large to read
    whole, whose blocks ``_finite`` checks as they are read)."""
    if read or not hasattr(X, "shape"):
        X = np.asarray(X)
    shape = tuple(X.shape)
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"{who}: X must be (N, D) with N > 0, got shape {shape}")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or not 2 <= n_clusters < shape[0]:
        raise ValueError(f"{who}: n_clusters must be an int with 2 <= n_clusters < N = {shape[0]}, got {n_clusters!r}")
    if read:
        return _finite(X, who).astype(np.float32, copy=False)
    if isinstance(X, np.ndarray):  # an array or memory map: checked now, in blocks, before any UMAP run
        for lo in range(0, shape[0], _LANDMARK_BLOCK):
            _finite(X[lo:lo + _LANDMARK_BLOCK], who)
    return X


def _finite(rows, who):
    rows = np.asarray(rows)
    if not np.isfinite(rows).all():
        raise ValueError(f"{who}: X has NaN or inf entries")
    return rows


def umap_gmm(X, n_clusters, *, n_neighbors=20, seed=0):
    """(N, K) float64 posteriors of a full-covariance GaussianMixture fitted to a K-dimensional UMAP
    embedding of X (min_dist 0, ``n_neighbors`` neighbours; n_neighbors is lowered to N - 1 on tiny data).
    Deterministic for a seed (UMAP then runs on one thread)."""
    from sklearn.mixture import GaussianMixture

    X = _check(X, n_clusters, "umap_gmm")
    umap = _umap()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap's "n_jobs overridden by random_state" and numba's notices
        emb = umap.UMAP(n_components=int(n_clusters), n_neighbors=min(int(n_neighbors), len(X) - 1),
                        min_dist=0.0, random_state=int(seed)).fit_transform(X)
        gmm = GaussianMixture(int(n_clusters), covariance_type="full", random_state=int(seed)).fit(emb)
    return gmm.predict_proba(emb)


def _match(reference, proba):
    """proba with its columns permuted to agree best with reference's (Hungarian, soft contingency table)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-(reference.T @ proba))
    out = np.empty_like(proba)
    out[:, rows] = proba[:, cols]
    return out


def consensus(probas, *, iters=5):
    """(N, K) consensus of R clusterings of the same rows, each (N, K) probabilities (module docstring).
    The cluster numbering follows the medoid run's. One run is returned as it is."""
    from sklearn.metrics import adjusted_rand_score

    probas = [np.asarray(p, dtype=np.float64) for p in probas]
    if not probas or any(p.ndim != 2 or p.shape != probas[0].shape for p in probas):
        raise ValueError(f"consensus: needs one or more (N, K) arrays of one shape, got "
                         f"{[np.shape(p) for p in probas]}")
    if len(probas) == 1:
        return probas[0]
    labels = [p.argmax(1) for p in probas]
    agreement = np.array([[adjusted_rand_score(a, b) for b in labels] for a in labels])
    vote = probas[int(agreement.sum(1).argmax())]
    for _ in range(iters):
        vote = np.mean([_match(vote, p) for p in probas], axis=0)
    return vote


def extend_to_rows(X, landmarks, proba, *, k=LANDMARK_NEIGHBORS):
    """(N, K): for every row of X (N, D) the mean of ``proba`` (L, K) over its k nearest rows among X[landmarks]
    (cosine; landmarks (L,) int row numbers, distinct), and for a landmark row its own row of ``proba``."""
    import torch

    who = "extend_to_rows"
    X = X if hasattr(X, "shape") and hasattr(X, "__getitem__") else np.asarray(X)
    landmarks = np.asarray(landmarks, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if landmarks.ndim != 1 or proba.shape[0] != len(landmarks) or len(np.unique(landmarks)) != len(landmarks):
        raise ValueError(f"extend_to_rows: landmarks (L,) distinct row numbers and proba (L, K) needed, got "
                         f"shapes {landmarks.shape} and {proba.shape}")
    n = X.shape[0]
    k = max(1, min(int(k), len(landmarks)))
    anchors = torch.nn.functional.normalize(torch.as_tensor(_finite(X[landmarks], who), dtype=torch.float32), dim=1)
    p = torch.as_tensor(proba)
    out = np.empty((n, proba.shape[1]))
    for lo in range(0, n, _LANDMARK_BLOCK):
        block = _finite(X[lo:lo + _LANDMARK_BLOCK], who)
        rows = torch.nn.functional.normalize(torch.as_tensor(block, dtype=torch.float32), dim=1)
        nearest = (rows @ anchors.T).topk(k, dim=1).indices  # (b, k)
        out[lo:lo + len(rows)] = p[nearest].mean(dim=1).numpy()
    out[landmarks] = proba
    return out


def manifold_posteriors(X, n_clusters, *, runs=6, neighbors=MANIFOLD_NEIGHBORS, seed=0, progress=False,
                        max_rows=MANIFOLD_MAX_ROWS):
    """(N, K) consensus of ``runs`` UMAP + GMM clusterings of X, run r with neighbors[r % len(neighbors)]
    neighbours and seed ``seed * 1000 + r``; above ``max_rows`` rows, of max_rows landmark rows drawn with the
    seed, extended to the others by ``extend_to_rows``. No label is used."""
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise ValueError(f"manifold_posteriors: runs must be an int >= 1, got {runs!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows <= n_clusters:
        raise ValueError(f"manifold_posteriors: max_rows must be an int > n_clusters, got {max_rows!r}")
    n = X.shape[0] if hasattr(X, "shape") else len(X)
    X = _check(X, n_clusters, "manifold_posteriors", read=n <= max_rows)
    if n > max_rows:
        landmarks = np.sort(np.random.default_rng(int(seed)).choice(n, int(max_rows), replace=False))
        proba = manifold_posteriors(np.asarray(X[landmarks]), n_clusters, runs=runs, neighbors=neighbors,
                                    seed=seed, progress=progress, max_rows=max_rows)
        return extend_to_rows(X, landmarks, proba)
    steps = range(int(runs))
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="UMAP + GMM runs", leave=False)
    probas = [umap_gmm(X, n_clusters, n_neighbors=neighbors[r % len(neighbors)], seed=int(seed) * 1000 + r)
              for r in steps]
    return consensus(probas)
