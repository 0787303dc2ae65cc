"""dhvc_ext.neighbors at scale: the approximate (faiss HNSW) search of ``knn_indices`` against the exact one.

The exact blocked search is the reference (test_neighbors.py holds it to NumPy). Here: recall@10 of the faiss
path on clustered synthetic rows (D = 300, so through the PCA) and on scikit-learn's digits (D = 64, no PCA),
the automatic choice at ``KNN_FAISS_ABOVE``, a rank's block equal to the slice of the whole, determinism, and
the errors (faiss missing, bad arguments).
"""
import sys

import numpy as np
import pytest
import torch

from dhvc_ext import neighbors
from dhvc_ext.neighbors import knn_indices


def _needs_faiss():
    return pytest.importorskip("faiss", reason="faiss-cpu is not installed (make venv installs it)")


def _recall(approx, exact):
    """Mean over rows of |approx_i & exact_i| / k."""
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx.tolist(), exact.tolist())]))


def _clustered(n=3000, d=300, clusters=20, seed=0):
    """Rows of a mixture on S^9 (cluster directions plus noise of varied spread) pushed through a fixed random
    two-layer network to R^d, plus a little noise: clusters on a low-dimensional manifold, as images are, with
    neighbours found among many similar rows rather than in well-separated points."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, 10, generator=g), dim=1)
    labels = torch.randint(clusters, (n,), generator=g)
    spread = 0.1 + 0.3 * torch.rand(clusters, generator=g)
    z = torch.nn.functional.normalize(centres[labels] + spread[labels, None] * torch.randn(n, 10, generator=g), dim=1)
    hidden = torch.tanh(z @ torch.randn(10, 64, generator=g))
    return hidden @ torch.randn(64, d, generator=g) + torch.randn(n, d, generator=g)


def _digits():
    from sklearn.datasets import load_digits
    return torch.from_numpy(load_digits().data.astype(np.float32))


@pytest.mark.parametrize("data", ["clustered", "digits"])
def test_faiss_recall_against_exact(data):
    _needs_faiss()
    x = _clustered() if data == "clustered" else _digits()
    exact = knn_indices(x, 10, method="exact")
    approx = knn_indices(x, 10, method="faiss")
    assert approx.shape == exact.shape and approx.dtype == torch.int64
    n = x.shape[0]
    assert not (approx == torch.arange(n)[:, None]).any()  # never itself
    assert all(len(set(row)) == 10 for row in approx.tolist())  # k distinct rows
    assert _recall(approx, exact) >= 0.95
    # most similar first, by the cosine similarity in the original space (the re-ranking)
    u = torch.nn.functional.normalize(x, dim=1)
    sim = (u[:, None, :] * u[approx]).sum(-1)
    assert (sim[:, :-1] >= sim[:, 1:] - 1e-6).all()


def test_faiss_blocks_are_slices_of_the_whole_and_deterministic():
    _needs_faiss()
    x = _clustered(n=1500, d=200, seed=1)
    whole = knn_indices(x, 7, method="faiss")
    torch.testing.assert_close(knn_indices(x, 7, method="faiss"), whole)  # same input, same neighbours
    for start, stop in [(0, 400), (400, 1111), (1111, 1500)]:
        torch.testing.assert_close(knn_indices(x, 7, start=start, stop=stop, method="faiss"), whole[start:stop])
    assert knn_indices(x, 7, start=20, stop=20, method="faiss").shape == (0, 7)


def test_faiss_threads_do_not_change_the_result_and_are_restored():
    faiss = _needs_faiss()
    x = _clustered(n=1200, d=150, seed=2)
    before = faiss.omp_get_max_threads()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = knn_indices(x, 5, method="faiss")
        torch.set_num_threads(2)
        two = knn_indices(x, 5, method="faiss")
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, two)
    assert faiss.omp_get_max_threads() == before


def test_faiss_small_n_and_duplicates():
    _needs_faiss()
    # k close to N: the candidates are all rows; duplicates are each other's nearest neighbour
    x = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
    idx = knn_indices(x, 1, method="faiss")
    assert idx[:4, 0].tolist() == [1, 0, 3, 2]
    full = knn_indices(x, 4, method="faiss")
    assert all(sorted(row) == sorted(set(range(5)) - {i}) for i, row in enumerate(full.tolist()))


def test_auto_uses_faiss_above_the_threshold_only(monkeypatch):
    _needs_faiss()
    x = _clustered(n=600, d=40, seed=3)
    calls = []
    real = neighbors._knn_faiss
    monkeypatch.setattr(neighbors, "_knn_faiss", lambda *a: calls.append(a[1:]) or real(*a))
    monkeypatch.setattr(neighbors, "KNN_FAISS_ABOVE", 600)
    torch.testing.assert_close(knn_indices(x, 5, start=100, stop=300), knn_indices(x, 5, method="exact")[100:300])
    assert calls == []  # N = 600 is not above the threshold
    monkeypatch.setattr(neighbors, "KNN_FAISS_ABOVE", 599)
    got = knn_indices(x, 5, start=100, stop=300)  # what training calls
    assert calls == [(5, 100, 300)]
    torch.testing.assert_close(got, knn_indices(x, 5, method="faiss")[100:300])


def test_missing_faiss_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    x = _clustered(n=300, d=20, seed=4)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        knn_indices(x, 5, method="faiss")
    monkeypatch.setattr(neighbors, "KNN_FAISS_ABOVE", 100)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        knn_indices(x, 5)
    # below the threshold, and with method="exact", faiss is not needed
    monkeypatch.setattr(neighbors, "KNN_FAISS_ABOVE", 300)
    torch.testing.assert_close(knn_indices(x, 5), knn_indices(x, 5, method="exact"))


@pytest.mark.parametrize("x,k,kwargs,match", [
    (torch.randn(20, 3), 3, dict(method="hnsw"), "method must be"),
    (torch.randn(20, 3), 3, dict(method=None), "method must be"),
    (torch.randn(20, 3), 20, dict(method="faiss"), "k must be"),
    (torch.randn(20, 3), 3, dict(method="faiss", start=5, stop=2), "start"),
    (torch.tensor([[1.0, float("inf")], [1.0, 0.0], [0.0, 1.0]]), 1, dict(method="faiss"), "NaN or inf"),
    (torch.randn(20), 3, dict(method="faiss"), "must be"),
])
def test_bad_input(x, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn_indices(x, k, **kwargs)
