"""dhvc_ext.neighbors: exact cosine nearest neighbours and the sharpened neighbour targets, against NumPy."""
import numpy as np
import pytest
import torch

from dhvc_ext.neighbors import knn_indices, neighbor_targets


def _knn_numpy(x, k):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k], sim


@pytest.mark.parametrize("n,d,k,block", [(300, 5, 7, 64), (257, 16, 1, None), (50, 3, 49, 7)])
def test_knn_matches_brute_force(n, d, k, block):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, d))
    got = knn_indices(torch.from_numpy(x), k, block=block).numpy()
    ref, sim = _knn_numpy(x, k)
    assert got.shape == (n, k) and got.dtype == np.int64
    assert not (got == np.arange(n)[:, None]).any()  # never itself
    # the same similarities in the same order (indices may differ only between float32-tied values)
    np.testing.assert_allclose(np.take_along_axis(sim, got, 1), np.take_along_axis(sim, ref, 1), atol=1e-6)
    assert (got == ref).mean() > 0.99


def test_knn_scale_invariant_and_duplicates_are_neighbours():
    x = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
    idx = knn_indices(x, 1)
    assert idx[:4, 0].tolist() == [1, 0, 3, 2]


@pytest.mark.parametrize("x,k,match", [
    (torch.zeros(5), 1, "must be"), (torch.randn(5, 3), 5, "k must be"), (torch.randn(5, 3), 0, "k must be"),
    (torch.randn(5, 3), True, "k must be"), (torch.tensor([[1.0, float("nan")], [1.0, 0.0]]), 1, "NaN"),
])
def test_knn_rejects_bad_input(x, k, match):
    with pytest.raises(ValueError, match=match):
        knn_indices(x, k)


def test_neighbor_targets_formula():
    rng = np.random.default_rng(3)
    q = rng.dirichlet(np.ones(4), size=30)
    index = rng.integers(0, 30, size=(30, 5))
    m = q[index].mean(1)
    t = m ** 2 / m.sum(0)
    t /= t.sum(1, keepdims=True)
    got = neighbor_targets(torch.from_numpy(q), torch.from_numpy(index)).numpy()
    np.testing.assert_allclose(got, t, rtol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-12)
    # sharpening: the target is more confident than the neighbours' mean wherever clusters are balanced
    assert (got.max(1) >= m.max(1) - 1e-12).mean() > 0.9


def test_neighbor_targets_empty_cluster_and_shape_errors():
    q = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    t = neighbor_targets(q, torch.tensor([[1], [0]]))
    assert torch.isfinite(t).all() and (t[:, 2] == 0).all()
    torch.testing.assert_close(t.sum(1), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="same N"):
        neighbor_targets(q, torch.tensor([[1]]))


def test_knn_of_a_range_of_rows_equals_those_rows_of_the_whole():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(5))
    whole = knn_indices(x, 4, block=33)
    torch.testing.assert_close(knn_indices(x, 4, start=70, stop=131, block=16), whole[70:131])
    assert knn_indices(x, 4, start=50, stop=50).shape == (0, 4)
    with pytest.raises(ValueError, match="start"):
        knn_indices(x, 4, start=10, stop=5)
