"""Benchmarks of the neighbour term's search (``dhvc_ext.neighbors.knn_indices``, k = 10, cosine).

The exact blocked search (``method="exact"``) against the approximate one (``method="faiss"``: PCA to 128
dimensions, HNSW, 3k candidates re-ranked exactly; see the module docstring), one thread (torch's and
faiss's OpenMP), on Fashion-MNIST rows scaled to [0, 1] (the first N of the 70000; synthetic rows from
benchmarks/cost_curve.py where the data set is not installed) at N = 20000 and 70000, D = 784. extra_info:
n_elements = N (rows per second), impl, threads, data, and recall_at_10 of the timed result against the
exact search of the same rows (1.0 for the exact row itself).

With ``--benchmark-disable`` (CI) every case runs once on 2000 rows, so that the file stays a quick check that
both paths run and agree.
"""
import numpy as np
import pytest
import torch
from conftest import torch_threads

from dhvc_ext.neighbors import knn_indices

SIZES = [20_000, 70_000]
K = 10
SMALL = 2_000
_cache = {}


def _rows(n):
    """(data name, (n, 784) float32 rows)."""
    if n not in _cache:
        from dhvc_ext.data import DatasetNotFoundError, load_dataset
        try:
            ds = load_dataset("fashion-mnist")
            name, x = "fashion-mnist", ds.features(slice(0, n))
        except DatasetNotFoundError:
            from cost_curve import synthetic_rows
            name = "synthetic (cost_curve.py)"
            x = np.concatenate([rows for rows, _ in synthetic_rows(n)]).astype(np.float32) / 255
        _cache[n] = name, torch.from_numpy(np.ascontiguousarray(x))
    return _cache[n]


def _exact(n):
    key = ("exact", n)
    if key not in _cache:
        with torch_threads(1):
            _cache[key] = knn_indices(_rows(n)[1], K, method="exact")
    return _cache[key]


def _recall(found, exact):
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found.tolist(), exact.tolist())]))


@pytest.mark.parametrize("impl", ["exact", "faiss"])
@pytest.mark.parametrize("n", SIZES, ids=[f"N={n}" for n in SIZES])
def test_knn(benchmark, request, n, impl):
    if impl == "faiss":
        pytest.importorskip("faiss", reason="faiss-cpu is not installed (make venv installs it)")
    if request.config.getoption("benchmark_disable"):
        n = SMALL
    data, x = _rows(n)
    benchmark.group = f"neighbors k={K} N={n} D={x.shape[1]} cpu"
    benchmark.extra_info.update(impl=impl, threads=1, n_elements=n, data=data)
    with torch_threads(1):
        # the exact search is the reference: one round of it is as good as five, and costs minutes at 70000
        rounds = 1 if impl == "exact" else 3
        found = benchmark.pedantic(knn_indices, args=(x, K), kwargs=dict(method=impl), rounds=rounds,
                                   iterations=1)
    if impl == "exact":
        _cache[("exact", n)] = found
    recall = _recall(found, _exact(n))
    benchmark.extra_info["recall_at_10"] = recall
    assert recall >= 0.95
