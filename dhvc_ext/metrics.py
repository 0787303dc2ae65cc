"""External clustering scores: accuracy under the best cluster-to-class matching, NMI and ARI.

All functions take two 1-D label sequences of the same length n >= 1 (NumPy arrays, lists or torch tensors,
moved to the CPU): ``y_true`` the classes, ``y_pred`` the cluster ids. Labels may be any hashable, sortable
values (non-contiguous ints, strings), and the number of clusters need not equal the number of classes.

- ``cluster_acc``: the unsupervised clustering accuracy of DEC / VaDE / IDEC,
  ACC = max over one-to-one maps m of (1/n) sum_i [y_true_i = m(y_pred_i)], solved exactly on the
  (clusters x classes) contingency matrix with the Hungarian algorithm. With more clusters than classes the
  unmatched clusters count as errors (so splitting a class is penalised, unlike purity).
- ``nmi``: scikit-learn's normalized mutual information, arithmetic mean normalisation (its default, and
  what the deep-clustering papers report).
- ``ari``: scikit-learn's adjusted Rand index.
"""
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _check_labels(y_true, y_pred):
    arrays = []
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if hasattr(y, "detach"):  # a torch tensor, without importing torch into this leaf module
            y = y.detach().cpu().numpy()
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"{name} has shape {y.shape}; expected a 1-D sequence of labels")
        arrays.append(y)
    y_true, y_pred = arrays
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}; expected the same length")
    if len(y_true) == 0:
        raise ValueError("y_true and y_pred are empty; expected at least one label")
    return y_true, y_pred


def matched_contingency(y_true, y_pred):
    """The (classes x clusters) contingency table of two labelings and its best one-to-one matching:
    (classes, clusters, counts (C, K) int64 with counts[i, j] the points of class classes[i] in cluster
    clusters[j], rows, cols) where the pairs (rows[m], cols[m]) maximise the matched count (Hungarian
    algorithm; rows sorted). A rectangular table is fine: min(C, K) pairs are matched, the rest left out.
    What ``cluster_acc`` scores and ``dhvc_ext.plots.confusion`` draws."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    classes, t = np.unique(y_true, return_inverse=True)
    clusters, p = np.unique(y_pred, return_inverse=True)
    counts = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(counts, (t.reshape(-1), p.reshape(-1)), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return classes, clusters, counts, rows, cols


def cluster_acc(y_true, y_pred) -> float:
    """Fraction of points whose cluster is matched to their class by the best one-to-one matching."""
    _, _, counts, rows, cols = matched_contingency(y_true, y_pred)
    return float(counts[rows, cols].sum() / counts.sum())


def nmi(y_true, y_pred) -> float:
    """Normalized mutual information (arithmetic normalisation), in [0, 1]."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    return float(normalized_mutual_info_score(y_true, y_pred, average_method="arithmetic"))


def ari(y_true, y_pred) -> float:
    """Adjusted Rand index: 1 for identical partitions, about 0 for independent ones."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    return float(adjusted_rand_score(y_true, y_pred))


def clustering_scores(y_true, y_pred) -> dict:
    """``{"acc": cluster_acc, "nmi": nmi, "ari": ari}`` as Python floats."""
    return {"acc": cluster_acc(y_true, y_pred), "nmi": nmi(y_true, y_pred), "ari": ari(y_true, y_pred)}
