"""dhvc_ext.manifold: the UMAP + GMM peer and the label-free consensus of several clusterings."""
import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from dhvc_ext import manifold

umap = pytest.importorskip("umap", reason="umap-learn is not installed (make venv installs it)")


def _blobs(n_per=100, k=4, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 6.0
    X = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(k), n_per)


def _one_hot(labels, k):
    return np.eye(k)[labels]


def test_umap_gmm_recovers_separated_blobs():
    X, y = _blobs()
    proba = manifold.umap_gmm(X, 4, n_neighbors=15, seed=0)
    assert proba.shape == (len(X), 4)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    assert adjusted_rand_score(y, proba.argmax(1)) > 0.99


def test_umap_gmm_same_seed_same_result():
    X, _ = _blobs(n_per=60, k=3, seed=1)
    np.testing.assert_array_equal(manifold.umap_gmm(X, 3, seed=5).argmax(1),
                                  manifold.umap_gmm(X, 3, seed=5).argmax(1))


def test_consensus_undoes_relabelling_and_outvotes_a_wrong_run():
    rng = np.random.default_rng(0)
    k, n = 5, 400
    truth = rng.integers(0, k, n)
    runs = [_one_hot(rng.permutation(k)[truth], k) for _ in range(4)]  # the same clustering, renumbered
    wrong = truth.copy()
    wrong[truth == 1] = 0  # a run that merges two clusters and splits another at random
    wrong[truth == 2] = rng.choice([1, 2], size=int((truth == 2).sum()))
    runs.insert(1, _one_hot(wrong, k))
    vote = manifold.consensus(runs)
    assert vote.shape == (n, k)
    np.testing.assert_allclose(vote.sum(1), 1.0, atol=1e-12)
    assert adjusted_rand_score(truth, vote.argmax(1)) == 1.0
    # the numbering follows the medoid run (one of the four agreeing runs, not the wrong one)
    medoid_labels = [r.argmax(1) for r in runs if adjusted_rand_score(truth, r.argmax(1)) == 1.0]
    assert any(np.array_equal(vote.argmax(1), m) for m in medoid_labels)


def test_consensus_of_one_run_is_that_run():
    p = np.random.default_rng(1).dirichlet(np.ones(3), size=10)
    np.testing.assert_array_equal(manifold.consensus([p]), p)


def test_consensus_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        manifold.consensus([np.ones((4, 2)) / 2, np.ones((5, 2)) / 2])
    with pytest.raises(ValueError, match="one or more"):
        manifold.consensus([])


def test_manifold_posteriors_cycles_neighbours_and_seeds(monkeypatch):
    calls = []

    def fake(X, k, *, n_neighbors, seed):
        calls.append((n_neighbors, seed))
        return _one_hot(np.arange(len(X)) % k, k)

    monkeypatch.setattr(manifold, "umap_gmm", fake)
    X = np.zeros((12, 3), dtype=np.float32)
    vote = manifold.manifold_posteriors(X, 3, runs=4, neighbors=(15, 30, 50), seed=2)
    assert calls == [(15, 2000), (30, 2001), (50, 2002), (15, 2003)]
    np.testing.assert_array_equal(vote.argmax(1), np.arange(12) % 3)


@pytest.mark.parametrize("bad, match", [
    (np.full((10, 3), np.nan, dtype=np.float32), "NaN or inf"),
    (np.zeros((0, 3), dtype=np.float32), "N > 0"),
    (np.zeros(5, dtype=np.float32), r"\(N, D\)"),
])
def test_umap_gmm_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        manifold.umap_gmm(bad, 2)


def test_bad_cluster_count_and_runs():
    X, _ = _blobs(n_per=5, k=2)
    with pytest.raises(ValueError, match="n_clusters"):
        manifold.umap_gmm(X, 10)
    with pytest.raises(ValueError, match="runs"):
        manifold.manifold_posteriors(X, 2, runs=0)


def test_missing_umap_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap now raises ImportError
    X, _ = _blobs(n_per=10, k=2)
    with pytest.raises(ImportError, match="pip install umap-learn"):
        manifold.umap_gmm(X, 2)
    with pytest.raises(ImportError, match="cluster-init mixture"):
        manifold.require_umap()


def test_training_that_needs_umap_stops_before_pretraining_when_it_is_missing(monkeypatch):
    from dhvc_ext.data import load_dataset
    from dhvc_ext.train import TrainConfig, Trainer

    monkeypatch.setitem(sys.modules, "umap", None)
    data = load_dataset("digits").subset(100, seed=0)
    for start in ("best", "manifold"):
        trainer = Trainer(TrainConfig(n_clusters=3, hidden=(8,), latent_dim=3, pretrain_epochs=1, epochs=1,
                                      cluster_init=start, num_threads=1), data.n_features)
        with pytest.raises(ImportError, match="pip install umap-learn"):
            trainer.fit(data)
        assert trainer.epoch == 0 and trainer.history == []
    trainer = Trainer(TrainConfig(n_clusters=3, hidden=(8,), latent_dim=3, pretrain_epochs=1, epochs=1,
                                  cluster_init="mixture", num_threads=1), data.n_features)
    assert len(trainer.fit(data)) == 2


def test_extend_to_rows_keeps_the_landmarks_and_votes_their_nearest():
    # Four blobs on distinct directions: every row's 10 nearest landmarks (cosine) lie in its own blob, so
    # a non-landmark row gets its blob's probabilities; a landmark keeps its own row of proba, even a wrong one.
    X, y = _blobs(n_per=50, k=4, dim=20, seed=3)
    landmarks = np.sort(np.random.default_rng(0).choice(len(X), 80, replace=False))
    proba = _one_hot(y[landmarks], 4) * 0.9 + 0.025
    proba[0] = np.roll(proba[0], 1)  # one landmark labelled wrongly: it stays so, and its neighbours outvote it
    out = manifold.extend_to_rows(X, landmarks, proba, k=10)
    assert out.shape == (len(X), 4)
    np.testing.assert_array_equal(out[landmarks], proba)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-12)
    others = np.setdiff1d(np.arange(len(X)), landmarks)
    assert (out[others].argmax(1) == y[others]).all()
    with pytest.raises(ValueError, match="distinct"):
        manifold.extend_to_rows(X, np.array([0, 0]), proba[:2])


def test_manifold_posteriors_above_max_rows_clusters_landmarks_and_extends(monkeypatch):
    calls = []
    real = manifold.umap_gmm

    def counted(X, k, **kw):
        calls.append(len(X))
        return real(X, k, **kw)

    monkeypatch.setattr(manifold, "umap_gmm", counted)
    X, y = _blobs(n_per=150, k=3, dim=10, seed=4)
    proba = manifold.manifold_posteriors(X, 3, runs=2, seed=1, max_rows=120)
    assert calls == [120, 120]  # UMAP saw the landmarks only
    assert proba.shape == (450, 3)
    assert adjusted_rand_score(y, proba.argmax(1)) == 1.0
    with pytest.raises(ValueError, match="max_rows"):
        manifold.manifold_posteriors(X, 3, max_rows=3)
