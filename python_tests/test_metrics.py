"""Clustering scores against hand-computed answers, a brute force over all matchings, and scikit-learn."""
import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from dhvc_ext.metrics import ari, cluster_acc, clustering_scores, matched_contingency, nmi


def brute_force_acc(y_true, y_pred):
    """Best accuracy over every one-to-one map of clusters to classes, padding the smaller side with dummies."""
    classes, clusters = sorted(set(y_true)), sorted(set(y_pred))
    k = max(len(classes), len(clusters))
    best = 0
    for perm in itertools.permutations(range(k)):
        # cluster j -> class perm[j]; a dummy class (index >= len(classes)) matches nothing
        hits = sum(perm[clusters.index(p)] == classes.index(t) for t, p in zip(y_true, y_pred))
        best = max(best, hits)
    return best / len(y_true)


def test_permuted_labels_score_one():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    perm = np.array([3, 0, 2, 1])
    assert cluster_acc(y, perm[y]) == 1.0
    assert nmi(y, perm[y]) == pytest.approx(1.0)
    assert ari(y, perm[y]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(12))
def test_acc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    k_true, k_pred = rng.integers(1, 6, size=2)
    n = int(rng.integers(5, 30))
    y_true = rng.integers(0, k_true, n).tolist()
    y_pred = rng.integers(0, k_pred, n).tolist()
    assert cluster_acc(y_true, y_pred) == pytest.approx(brute_force_acc(y_true, y_pred))


@pytest.mark.parametrize("seed", range(6))
def test_matched_contingency_is_the_table_and_its_best_matching(seed):
    rng = np.random.default_rng(100 + seed)
    k_true, k_pred = rng.integers(1, 6, size=2)
    n = int(rng.integers(5, 30))
    y_true, y_pred = rng.integers(0, k_true, n) + 3, rng.integers(0, k_pred, n) * 2
    classes, clusters, counts, rows, cols = matched_contingency(y_true, y_pred)
    np.testing.assert_array_equal(classes, np.unique(y_true))
    np.testing.assert_array_equal(clusters, np.unique(y_pred))
    for i, c in enumerate(classes):
        for j, k in enumerate(clusters):
            assert counts[i, j] == np.sum((y_true == c) & (y_pred == k))
    assert list(rows) == sorted(rows) and len(set(cols)) == len(cols) == min(counts.shape)
    assert counts[rows, cols].sum() / n == pytest.approx(brute_force_acc(y_true.tolist(), y_pred.tolist()))


def test_more_clusters_than_classes_by_hand():
    # contingency (clusters x classes): c0 -> [2, 0], c1 -> [1, 0], c2 -> [0, 2], c3 -> [0, 1];
    # best matching c0 -> 0, c2 -> 1 gets 4 of 6, the points of c1 and c3 are errors.
    assert cluster_acc([0, 0, 0, 1, 1, 1], [0, 0, 1, 2, 2, 3]) == pytest.approx(4 / 6)


def test_fewer_clusters_than_classes_by_hand():
    assert cluster_acc([0, 1, 2, 2], [7, 7, 7, 7]) == 0.5


def test_arbitrary_label_values():
    # strings vs non-contiguous ints: 5 -> cat (1 hit), 7 -> dog (2 hits)
    assert cluster_acc(["cat", "cat", "dog", "dog"], [5, 7, 7, 7]) == 0.75
    assert cluster_acc([10, 10, -3, 42], ["b", "b", "a", "z"]) == 1.0


def test_nmi_ari_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 6, 200)
    assert nmi(y_true, y_pred) == pytest.approx(normalized_mutual_info_score(y_true, y_pred))
    assert ari(y_true, y_pred) == pytest.approx(adjusted_rand_score(y_true, y_pred))
    assert 0.0 <= nmi(y_true, y_pred) < 0.1  # independent labels carry almost no information


def test_clustering_scores_returns_python_floats():
    y_true = torch.tensor([0, 0, 1, 1, 1])
    y_pred = torch.tensor([1, 1, 0, 0, 1])
    scores = clustering_scores(y_true, y_pred)
    assert set(scores) == {"acc", "nmi", "ari"}
    assert all(type(v) is float for v in scores.values())
    assert scores["acc"] == pytest.approx(0.8)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(y_true.numpy(), y_pred.numpy()))


@pytest.mark.parametrize("func", [cluster_acc, nmi, ari, clustering_scores])
@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([0, 1, 2], [0, 1], "same length"),
        ([], [], "empty"),
        ([[0, 1], [1, 0]], [[0, 1], [1, 0]], "1-D"),
    ],
)
def test_bad_input_raises(func, y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        func(y_true, y_pred)
