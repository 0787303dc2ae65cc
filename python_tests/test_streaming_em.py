"""VonMisesFisherMixture.fit on data that stream: a numpy.memmap, a list of chunks, a callable returning
chunks. The fit must be the in-memory one (to float64 summation order when the stream has at most
``init_size`` rows; to 1e-6 relative log-likelihood when the start comes from a sample), with memory bounded
by the chunk size, and the input errors must name the problem.
"""
import tracemalloc

import numpy as np
import pytest
import torch

from dhvc_ext.mixture import VonMisesFisherMixture
from dhvc_ext.ops import vmf_sample

FIT = dict(n_init=2, random_state=0, tol=1e-10, max_iter=500)


def mixture_data(n, d=8, k=5, seed=0, dtype=np.float64):
    g = torch.Generator().manual_seed(seed)
    mu = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    kappa = torch.linspace(15.0, 60.0, k, dtype=torch.float64)
    labels = torch.randint(k, (n,), generator=g)
    # scaled rows: fit normalises them, chunk by chunk
    return (vmf_sample(mu[labels], kappa[labels], generator=g) * 3.0).numpy().astype(dtype)


def memmap(tmp_path, X):
    path = tmp_path / "X.npy"
    np.save(path, X)
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_memmap_and_chunks_give_the_in_memory_fit(tmp_path, dtype):
    X = mixture_data(3000, dtype=dtype)
    one = VonMisesFisherMixture(5, **FIT).fit(X)
    mapped = memmap(tmp_path, X)
    chunks = [X[i:i + 450] for i in range(0, len(X), 450)]  # ragged last chunk
    fits = dict(memmap=VonMisesFisherMixture(5, chunk_size=700, **FIT).fit(mapped),
                list=VonMisesFisherMixture(5, **FIT).fit(chunks),
                callable=VonMisesFisherMixture(5, **FIT).fit(lambda: (torch.as_tensor(c) for c in chunks)))
    for name, fit in fits.items():
        # the same start and the same iterations: only the order of the float64 sums differs
        assert fit.n_iter_ == one.n_iter_ and fit.converged_, name
        assert abs(fit.lower_bound_ - one.lower_bound_) <= 1e-12 * abs(one.lower_bound_), name
        np.testing.assert_allclose(fit.means_, one.means_, rtol=0, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(fit.concentrations_, one.concentrations_, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(fit.weights_, one.weights_, rtol=1e-9, err_msg=name)


@pytest.mark.parametrize("posterior_type", ["soft", "hard"])
def test_a_sampled_start_reaches_the_same_fit_to_1e6(tmp_path, posterior_type):
    # 20000 rows, the start drawn from 1000 of them: another start, the same optimum of separated components
    X = mixture_data(20000, seed=1)
    fit = dict(FIT, posterior_type=posterior_type)
    one = VonMisesFisherMixture(5, **fit).fit(X)
    streamed = VonMisesFisherMixture(5, chunk_size=1536, init_size=1000, **fit).fit(memmap(tmp_path, X))
    assert streamed.converged_
    assert abs(streamed.lower_bound_ - one.lower_bound_) <= 1e-6 * abs(one.lower_bound_)
    assert abs(streamed.score(X) - one.score(X)) <= 1e-6 * abs(one.score(X))
    # the same random_state draws the same sample: a streamed fit is reproducible
    again = VonMisesFisherMixture(5, chunk_size=4096, init_size=1000, **fit).fit(memmap(tmp_path, X))
    assert abs(again.lower_bound_ - streamed.lower_bound_) <= 1e-12 * abs(streamed.lower_bound_)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 3 iterations on purpose
def test_memory_is_bounded_by_the_chunk(tmp_path):
    # 200000 x 16 float32 rows (12.8 MB on disk, 25.6 MB as the float64 the fit computes in). NumPy's
    # allocations (traced by tracemalloc) stay at a few chunks: no copy of the whole array is ever made.
    n, d, chunk = 200_000, 16, 4096
    X = mixture_data(n, d=d, k=4, seed=2, dtype=np.float32)
    mapped = memmap(tmp_path, X)
    del X
    largest = []

    class Recording:
        def __iter__(self):
            for i in range(0, n, chunk):
                block = mapped[i:i + chunk]
                largest.append(block.shape[0])
                yield block

    tracemalloc.start()
    try:
        est = VonMisesFisherMixture(4, n_init=1, max_iter=3, tol=0, random_state=0, init_size=chunk).fit(Recording())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert max(largest) == chunk and est.n_iter_ == 3
    chunk_bytes = chunk * d * 8
    assert peak < 4 * chunk_bytes, (peak, chunk_bytes)  # measured 1.06 chunks; the data are 49 chunks


def test_stream_input_errors(tmp_path):
    X = mixture_data(500)
    with pytest.raises(ValueError, match="one-shot iterator"):
        VonMisesFisherMixture(3).fit(iter([X[:250], X[250:]]))
    with pytest.raises(ValueError, match="one-shot iterator"):
        VonMisesFisherMixture(3).fit(c for c in [X[:250], X[250:]])
    with pytest.raises(ValueError, match="features"):
        VonMisesFisherMixture(3).fit([X[:250], X[250:, :4]])
    with pytest.raises(ValueError, match="n_samples = 4 must be >= n_components = 5"):
        VonMisesFisherMixture(5, init_size=10).fit([X[:2], X[2:4]])
    with pytest.raises(ValueError, match="NaN"):
        bad = X.copy()
        bad[300, 2] = np.nan
        VonMisesFisherMixture(3).fit([bad[:250], bad[250:]])
    with pytest.raises(ValueError, match="init_size must be an int >= 3"):
        VonMisesFisherMixture(3, init_size=2).fit(X)
    with pytest.raises(ValueError, match="chunk_size"):
        VonMisesFisherMixture(3, chunk_size=0).fit(X)
    with pytest.raises(ValueError, match="2-D"):
        VonMisesFisherMixture(3).fit(memmap(tmp_path, X.reshape(500, 2, 4)))
    # a nested list of numbers is still in-memory data, not a list of chunks
    nested = X[:50].tolist()
    np.testing.assert_allclose(VonMisesFisherMixture(2, random_state=0).fit(nested).means_,
                               VonMisesFisherMixture(2, random_state=0).fit(X[:50]).means_)


def test_dhvc_initialisation_streams_large_encodings(monkeypatch):
    # The trainer fits the mixture to the encoded data as a stream above STREAM_MIXTURE_ABOVE rows; lowered
    # here to 100, 400 codes go in chunks of 64, and (being under init_size) give the in-memory fit.
    from dhvc_ext import cluster_start, train
    from dhvc_ext.data import load_dataset

    data = load_dataset("digits").subset(400, seed=0)
    config = train.TrainConfig(n_clusters=5, hidden=(32,), latent_dim=4, pretrain_epochs=2, epochs=0,
                               batch_size=50, mixture_n_init=2, head_init="random", num_threads=1, seed=1,
                               cluster_init="mixture")
    in_memory = train.Trainer(config, data.n_features)
    in_memory.fit(data)
    monkeypatch.setattr(cluster_start, "STREAM_MIXTURE_ABOVE", 100)
    monkeypatch.setattr(cluster_start, "MIXTURE_CHUNK", 64)
    calls = []
    original = VonMisesFisherMixture.fit
    monkeypatch.setattr(VonMisesFisherMixture, "fit",
                        lambda self, X, *a, **k: calls.append(type(X)) or original(self, X, *a, **k))
    streamed = train.Trainer(config, data.n_features)
    streamed.fit(data)
    assert calls == [list]
    a, b = in_memory.history[-1]["mixture_loglik"], streamed.history[-1]["mixture_loglik"]
    assert abs(a - b) <= 1e-10 * abs(a)
    for name, value in in_memory.model.mixture.state_dict().items():
        torch.testing.assert_close(streamed.model.mixture.state_dict()[name], value, rtol=1e-5, atol=1e-6)
