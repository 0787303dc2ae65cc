"""Searches over all rows without a copy of them: ``Dataset.rows()`` (``dhvc_ext.data.ScaledRows``) read where
indexed by ``knn_indices`` and ``manifold_posteriors``, the way training reads a memory map of 1e6 rows.

The view must give exactly ``Dataset.features`` (so results equal those from the rows in memory), and the
approximate neighbour search and the landmark manifold start must never read all rows at once.
"""
import numpy as np
import pytest
import torch

from dhvc_ext import manifold, neighbors
from dhvc_ext.data import load_dataset
from dhvc_ext.neighbors import knn_indices


def _needs_faiss():
    return pytest.importorskip("faiss", reason="faiss-cpu is not installed (make venv installs it)")


def _image_file(tmp_path, n=2500, d=200, seed=0):
    """A memory-mapped .npy of uint8 rows with cluster structure (20 prototypes plus pixel noise)."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, size=(20, d))
    rows = np.clip(protos[rng.integers(20, size=n)] + rng.normal(0, 40, size=(n, d)), 0, 255).astype(np.uint8)
    path = tmp_path / "rows.npy"
    np.save(path, rows)
    return path


class Counting:
    """A row view that records the size of every read and refuses to be read whole."""

    def __init__(self, view):
        self.view, self.shape, self.reads = view, view.shape, []

    def __getitem__(self, index):
        rows = self.view[index]
        self.reads.append(len(rows))
        return rows

    def take(self, index, out=None):
        self.reads.append(len(index))
        return self.view.take(index, out=out)

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the view was read whole")


@pytest.mark.parametrize("scaling", ["minmax", "standard"])
def test_the_view_is_the_scaled_features(tmp_path, scaling):
    data = load_dataset(str(_image_file(tmp_path)), scaling=scaling)
    view = data.rows()
    assert view.shape == (len(data), data.n_features) and len(view) == len(data)
    idx = np.array([7, 0, 2499, 7, 311])
    np.testing.assert_array_equal(view[idx], data.features(idx))
    np.testing.assert_array_equal(view[10:20], data.features(slice(10, 20)))
    out = np.full((8, data.n_features), np.nan, dtype=np.float32)
    got = view.take(idx, out=out)
    np.testing.assert_array_equal(got, data.features(idx))  # bit for bit: the same float32 arithmetic
    assert got.base is out or got is out[:5] or np.shares_memory(got, out)
    np.testing.assert_array_equal(np.asarray(view), data.features())


def test_the_view_of_float64_data_rounds_as_features_does():
    data = load_dataset("digits", scaling="standard")  # float64 rows: features() rounds once, from float64
    idx = np.arange(0, len(data), 7)
    out = np.empty((len(idx), data.n_features), dtype=np.float32)
    np.testing.assert_array_equal(data.rows().take(idx, out=out), data.features(idx))


@pytest.mark.parametrize("method", ["exact", "faiss"])
def test_knn_of_the_view_equals_knn_of_the_rows(tmp_path, method):
    if method == "faiss":
        _needs_faiss()
    data = load_dataset(str(_image_file(tmp_path)))
    whole = knn_indices(torch.from_numpy(data.features()), 8, method=method)
    torch.testing.assert_close(knn_indices(data.rows(), 8, method=method), whole)
    torch.testing.assert_close(knn_indices(data.rows(), 8, start=100, stop=400, method=method), whole[100:400])


def test_the_approximate_search_reads_blocks_not_the_whole(tmp_path, monkeypatch):
    _needs_faiss()
    data = load_dataset(str(_image_file(tmp_path)))
    monkeypatch.setattr(neighbors, "KNN_BLOCK_ENTRIES", 200 * 500)  # blocks of 500 rows of 200 features
    view = Counting(data.rows())
    found = knn_indices(view, 5, method="faiss")
    assert found.shape == (len(data), 5)
    assert view.reads and max(view.reads) <= 500 < len(data)


def test_a_nan_in_the_view_is_refused_by_the_approximate_search(tmp_path):
    _needs_faiss()
    rows = np.random.default_rng(0).normal(size=(300, 20)).astype(np.float32)
    rows[123, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        knn_indices(rows, 5, method="faiss")
    with pytest.raises(ValueError, match="NaN or inf"):
        knn_indices(rows, 5, method="exact")


def _fake_umap_gmm(X, n_clusters, *, n_neighbors=20, seed=0):
    """A deterministic stand-in for UMAP + GMM: a soft assignment to the first rows as centres."""
    X = np.asarray(X, dtype=np.float64)
    d = ((X[:, None, :] - X[None, :n_clusters, :]) ** 2).sum(-1)
    p = np.exp(-(d - d.min(1, keepdims=True)) / d.mean())
    return p / p.sum(1, keepdims=True)


def test_the_landmark_start_of_a_view_equals_that_of_the_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(manifold, "umap_gmm", _fake_umap_gmm)
    monkeypatch.setattr(manifold, "_LANDMARK_BLOCK", 300)
    data = load_dataset(str(_image_file(tmp_path)))
    expected = manifold.manifold_posteriors(data.features(), 5, runs=2, seed=3, max_rows=400)
    view = Counting(data.rows())
    got = manifold.manifold_posteriors(view, 5, runs=2, seed=3, max_rows=400)
    np.testing.assert_array_equal(got, expected)
    assert max(view.reads) <= 400 < len(data)  # the landmarks, then blocks of 300 rows


def test_the_landmark_start_refuses_a_nan_before_any_umap_run(monkeypatch):
    runs = []
    monkeypatch.setattr(manifold, "umap_gmm", lambda *a, **k: runs.append(1))
    rows = np.random.default_rng(0).normal(size=(500, 6))
    rows[499, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        manifold.manifold_posteriors(rows, 3, runs=2, max_rows=100)
    assert runs == []
