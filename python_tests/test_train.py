"""DHVC training end to end on a digits subset, reproducibility, input checks, and the estimator API.

Small networks and few epochs keep this file to seconds; the figures of the README come from
benchmarks/dhvc_results.py, not from here.
"""
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from dhvc_ext import DHVC
from dhvc_ext.data import load_dataset
from dhvc_ext.metrics import clustering_scores
from dhvc_ext.train import TrainConfig, Trainer

SMALL = dict(cluster_init="mixture",
             hidden=(128, 128), latent_dim=8, pretrain_epochs=20, epochs=8, batch_size=64, mixture_n_init=3,
             num_threads=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").subset(600, seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    trainer = Trainer(TrainConfig(n_clusters=10, **SMALL), digits.n_features, unit_interval=digits.unit_interval)
    trainer.fit(digits)
    return trainer


def test_end_to_end_loss_decreases_and_clusters_beat_chance(trained, digits):
    pre = [r for r in trained.history if r["phase"] == "pretrain"]
    joint = [r for r in trained.history if r["phase"] == "joint"]
    assert len(pre) == 20 and len(joint) == 8 and trained.epoch == 28
    assert pre[-1]["recon"] < 0.8 * pre[0]["recon"]
    assert joint[-1]["loss"] < joint[0]["loss"]
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in trained.history)
    for which in ("head", "mixture"):
        proba = trained.predict_proba(digits, which)
        assert proba.shape == (600, 10) and np.allclose(proba.sum(1), 1, atol=1e-5)
        labels = trained.predict(digits, which)
        assert labels.shape == (600,) and labels.dtype == np.int64
        scores = clustering_scores(digits.y, labels)
        # chance on 10 balanced classes: ACC about 0.1-0.2, NMI and ARI about 0.02 and 0 (a collapse to few
        # clusters, the failure this guards against, gives ACC <= 0.3); a 28-epoch run on 600 digits with a
        # small network reaches 0.6-0.9 depending on the random stream
        assert scores["acc"] > 0.5 and scores["nmi"] > 0.45 and scores["ari"] > 0.3, (which, scores)


def test_same_seed_same_parameters_on_cpu(digits):
    config = TrainConfig(cluster_init="mixture",
                         n_clusters=5, hidden=(32,), latent_dim=4, pretrain_epochs=2, epochs=2, batch_size=100,
                         mixture_n_init=2, num_threads=1, seed=3)
    runs = []
    for _ in range(2):
        trainer = Trainer(config, digits.n_features)
        trainer.fit(digits)
        runs.append(trainer.model.state_dict())
    for name, value in runs[0].items():
        assert torch.equal(value, runs[1][name]), name
    other = Trainer(TrainConfig(**{**config.__dict__, "seed": 4}), digits.n_features)
    assert not torch.equal(other.model.to_mu.weight, Trainer(config, digits.n_features).model.to_mu.weight)


def test_gradient_mixture_update_trains_the_mixture(digits):
    config = TrainConfig(cluster_init="mixture",
                         n_clusters=5, hidden=(32,), latent_dim=4, pretrain_epochs=2, epochs=3, batch_size=100,
                         mixture_update="gradient", mixture_n_init=2, num_threads=1)
    trainer = Trainer(config, digits.n_features)
    trainer.fit(digits, callback=lambda t, r: t.epoch == config.pretrain_epochs + 1)
    before = {n: p.detach().clone() for n, p in trainer.model.mixture.named_parameters()}
    trainer.fit(digits)
    for name, p in trainer.model.mixture.named_parameters():
        assert p.requires_grad and torch.isfinite(p).all()
        assert not torch.equal(p, before[name]), name
    em = Trainer(TrainConfig(**{**config.__dict__, "mixture_update": "em"}), digits.n_features)
    em.fit(digits)
    assert not any(p.requires_grad for p in em.model.mixture.parameters())


def test_batch_callback_sees_every_step_and_the_epoch_means(digits):
    seen = []
    trainer = Trainer(TrainConfig(n_clusters=10, **{**SMALL, "pretrain_epochs": 2, "epochs": 1}), digits.n_features)
    trainer.fit(digits, batch_callback=lambda t, phase, b, terms: seen.append((t.epoch, phase, b, terms)))
    steps_per_epoch = len(digits) // 64  # drop_last
    assert len(seen) == 3 * steps_per_epoch
    for record in trainer.history:  # each epoch's record is the row-weighted mean of its batches' terms
        batches = [(b, terms) for epoch, phase, b, terms in seen if epoch + 1 == record["epoch"]]
        assert len(batches) == steps_per_epoch and all(record["phase"] == p for e, p, _, _ in seen
                                                      if e + 1 == record["epoch"])
        for term in ("loss", "recon", "kl_post"):
            mean = sum(b * t[term] for b, t in batches) / sum(b for b, _ in batches)
            assert mean == pytest.approx(record[term], rel=1e-12, abs=1e-12)


def test_epochs_zero_is_autoencoder_plus_mixture(digits):
    config = TrainConfig(n_clusters=10, **{**SMALL, "epochs": 0})
    trainer = Trainer(config, digits.n_features)
    trainer.fit(digits)
    assert trainer.mixture_initialized and "mixture_loglik" in trainer.history[-1]
    scores = clustering_scores(digits.y, trainer.predict(digits, "mixture"))
    assert scores["acc"] > 0.5, scores
    # head_init="mixture": the head starts as the mixture's posterior at mu_x, exactly (a linear softmax on
    # the sphere is a vMF-mixture posterior), so both prediction rules agree row by row
    mu = trainer.encode(digits)
    head = torch.log_softmax(trainer.model.head(mu), dim=-1)
    mixture = trainer.model.mixture.log_posterior(mu)
    assert trainer.model.mixture.kappa.max() > 10  # sharp enough that a head fitted by a few steps would not match
    torch.testing.assert_close(head, mixture, atol=2e-4, rtol=0)
    assert (trainer.predict(digits, "head") == trainer.predict(digits, "mixture")).all()
    random = Trainer(TrainConfig(n_clusters=10, head_init="random", **{**SMALL, "epochs": 0}), digits.n_features)
    random.fit(digits)
    assert not torch.allclose(torch.log_softmax(random.model.head(mu), dim=-1), mixture, atol=0.1)


@pytest.mark.parametrize("kwargs", [dict(n_clusters=1), dict(batch_size=0), dict(lr=-1.0), dict(epochs=1.5),
                                    dict(mixture_update="sgd"), dict(beta=-0.1), dict(num_threads=0),
                                    dict(grad_clip=-1.0), dict(mixture_fit_on="both"), dict(head_init="fit"),
                                    dict(neighbors=-1), dict(neighbors=2.0), dict(gamma=-1.0),
                                    dict(neighbor_space="output"), dict(seed=-1), dict(seed=2 ** 32)])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_cuda_device_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for machines without it")
    with pytest.raises(RuntimeError, match="torch sees no GPU"):
        Trainer(TrainConfig(device="cuda"), 8)


# ---------------------------------------------------------------------------------------------------------
# the estimator

FAST = dict(cluster_init="mixture", hidden=(32,), latent_dim=4, pretrain_epochs=2, epochs=1, batch_size=64,
            mixture_n_init=1, num_threads=1)


@pytest.mark.parametrize("bad,match", [
    (np.full((20, 4), np.nan), "NaN"),
    (np.where(np.eye(20, 4) > 0, np.inf, 0.5), "inf"),
    (np.zeros(20), "2-D|dimension|shape"),
    (np.zeros((5, 4, 2, 1, 1)), "2-D|dimension|shape"),
    (np.zeros((0, 4)), "empty|n >= 1|at least"),
])
def test_estimator_rejects_bad_input_before_training(bad, match):
    est = DHVC(n_clusters=3, **FAST)
    with pytest.raises(ValueError, match=match):
        est.fit(bad)
    assert not hasattr(est, "trainer_")


def test_estimator_rejects_more_clusters_than_samples():
    est = DHVC(n_clusters=12, **FAST)
    with pytest.raises(ValueError, match="n_clusters = 12 is larger than n_samples = 10"):
        est.fit(np.random.default_rng(0).random((10, 4)))
    assert not hasattr(est, "trainer_")


def test_estimator_parameters_are_the_train_config_fields(monkeypatch):
    import dataclasses
    import inspect

    from dhvc_ext import estimator

    # field by field, defaults included: seed is random_state, and verbose is the estimator's own
    params = inspect.signature(DHVC).parameters
    fields = {("random_state" if f.name == "seed" else f.name): f.default for f in dataclasses.fields(TrainConfig)}
    assert {name: p.default for name, p in params.items()} == {**fields, "verbose": False}
    assert list(params)[:2] == ["n_clusters", "latent_dim"]
    assert DHVC().get_params() == {**fields, "verbose": False}
    assert DHVC()._config() == TrainConfig()
    # every parameter reaches the configuration under its field's name, none dropped
    monkeypatch.setattr(estimator, "TrainConfig", lambda **kwargs: kwargs)
    values = {name: object() for name in params}
    got = DHVC(**values)._config()
    assert got == {("seed" if name == "random_state" else name): value for name, value in values.items()
                   if name != "verbose"}
    assert DHVC(3, 4)._config()["n_clusters"] == 3 and DHVC(3, 4)._config()["latent_dim"] == 4
    assert DHVC(random_state=None)._config()["seed"] == 0
    # an unknown parameter is an error, at construction and in set_params
    with pytest.raises(TypeError, match="unknown parameter.*'n_cluster'"):
        DHVC(n_cluster=3)
    with pytest.raises(ValueError, match="n_cluster"):
        DHVC().set_params(n_cluster=3)
    with pytest.raises(TypeError, match="too many positional"):
        DHVC(3, 4, 5)


def test_loss_weights_are_train_config_fields():
    import dataclasses

    from dhvc_ext.models import LossWeights

    # each weight of the objective is a TrainConfig field with the same default, passed through by loss_weights
    config_fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    weights = {f.name: f.default for f in dataclasses.fields(LossWeights)}
    assert weights and all(config_fields.get(name, object()) == default for name, default in weights.items())
    changed = dict(beta=0.5, alpha=2.0, eta=3.0, lam=1.5, kl_direction="reverse", gamma=7.0)
    assert set(changed) == set(weights)
    assert TrainConfig(**changed).loss_weights() == LossWeights(**changed)


def test_estimator_api(digits):
    X = digits.features()[:200]
    est = DHVC(n_clusters=4, random_state=1, **FAST)
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert est.fit(X) is est
    assert est.labels_.shape == (200,) and set(est.labels_) <= set(range(4))
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    proba = est.predict_proba(torch.as_tensor(X))
    assert proba.shape == (200, 4) and np.allclose(proba.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(proba.argmax(1), est.labels_)
    Z = est.transform(X)
    assert Z.shape == (200, 4) and np.allclose(np.linalg.norm(Z, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :10])
    copy = clone(est)
    assert copy.get_params() == est.get_params() and not hasattr(copy, "labels_")
    copy.set_params(lam=2.0, epochs=0)
    assert copy.get_params()["lam"] == 2.0
    np.testing.assert_array_equal(DHVC(n_clusters=4, random_state=1, **FAST).fit_predict(X), est.labels_)


def test_resume_from_a_saved_state_equals_an_uninterrupted_run(digits, tmp_path):
    config = TrainConfig(cluster_init="mixture",
                         n_clusters=5, hidden=(32,), latent_dim=4, pretrain_epochs=2, epochs=3, batch_size=100,
                         mixture_n_init=2, num_threads=1, seed=5)
    full = Trainer(config, digits.n_features)
    full.fit(digits)
    for stop in (1, 2, 3):  # inside pretraining, at the phase boundary, inside joint training
        part = Trainer(config, digits.n_features)
        part.fit(digits, callback=lambda t, r: t.epoch == stop)
        torch.save(part.state_dict(), tmp_path / "run.pt")
        torch.manual_seed(999)  # whatever happens to the global generator in between must not matter
        resumed = Trainer.from_state_dict(torch.load(tmp_path / "run.pt", weights_only=True))
        resumed.fit(digits)
        assert resumed.epoch == full.epoch
        for name, value in full.model.state_dict().items():
            assert torch.equal(value, resumed.model.state_dict()[name]), (stop, name)
        assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def _cosine_knn(x, k):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return sim, np.argsort(-sim, axis=1, kind="stable")[:, :k]


def _same_neighbours(index, x):
    """index (N, k) holds, row by row, neighbours as similar as the brute-force ones (ties may differ)."""
    index = index.cpu().numpy()
    sim, ref = _cosine_knn(np.asarray(x, dtype=np.float64), index.shape[1])
    np.testing.assert_allclose(np.take_along_axis(sim, index, 1), np.take_along_axis(sim, ref, 1), atol=1e-5)


@pytest.mark.parametrize("space", ["input", "latent"])
def test_neighbour_term_uses_the_neighbours_and_targets_it_documents(digits, space):
    config = TrainConfig(cluster_init="mixture",
                         n_clusters=5, hidden=(32,), latent_dim=4, pretrain_epochs=2, epochs=2, batch_size=100,
                         mixture_n_init=2, num_threads=1, seed=1, neighbors=6, neighbor_space=space)
    trainer = Trainer(config, digits.n_features)
    trainer.fit(digits, callback=lambda t, r: t.epoch == 2)  # stop after pretraining
    assert trainer.neighbor_index is None
    encoded = trainer.encode(digits).double().numpy()
    trainer.fit(digits)
    assert trainer.neighbor_index.shape == (600, 6)
    _same_neighbours(trainer.neighbor_index, digits.features(np.arange(600)) if space == "input" else encoded)
    # the targets: the neighbours' mean q(c|x), squared over the cluster totals, rows renormalised
    q = trainer.predict_proba(digits, "head").astype(np.float64)
    m = q[trainer.neighbor_index.numpy()].mean(1)
    t = m ** 2 / m.sum(0)
    np.testing.assert_allclose(trainer.update_targets(digits).numpy(), t / t.sum(1, keepdims=True), atol=1e-5)
    joint = [r for r in trainer.history if r["phase"] == "joint"]
    assert all(r["nbr"] > 0 for r in joint)
    off = Trainer(TrainConfig(**{**config.__dict__, "neighbors": 0}), digits.n_features)
    off.fit(digits)
    assert off.neighbor_index is None and all(r["nbr"] == 0 for r in off.history)
    # the term changes training: different final weights from the same start
    assert not torch.equal(off.model.head.weight, trainer.model.head.weight)


def test_evaluate_loss_is_the_trained_objective_with_the_neighbour_term(digits):
    from dhvc_ext.models import dhvc_loss
    from dhvc_ext.neighbors import neighbor_targets

    config = TrainConfig(cluster_init="mixture",
                         n_clusters=5, hidden=(32,), latent_dim=4, pretrain_epochs=2, epochs=2, batch_size=100,
                         mixture_n_init=2, num_threads=1, seed=1, neighbors=6, pretrain_beta=0.5)
    trainer = Trainer(config, digits.n_features)
    trainer.fit(digits, callback=lambda t, r: t.epoch == 2)  # stop after pretraining
    before = trainer.evaluate_loss(digits)
    # pretraining: the pretraining objective recon + pretrain_beta KL, no cluster terms
    assert before["loss"] == pytest.approx(before["recon"] + 0.5 * before["kl_prior"], rel=1e-6)
    assert before["kl_post"] == before["nbr"] == 0
    trainer.fit(digits)
    index, state = trainer.neighbor_index.clone(), torch.get_rng_state()
    got = trainer.evaluate_loss(digits, neighbor_index=index)
    # torch's random state and the trainer's neighbours are as they were; the same seed, the same figures
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(trainer.neighbor_index, index)
    assert trainer.evaluate_loss(digits, neighbor_index=index) == got
    # written out: targets from the current network's q(c|x) and the run's neighbours, batches of 100 in order
    q = torch.as_tensor(trainer.predict_proba(digits, "head"))
    targets = neighbor_targets(q, index)
    x = torch.as_tensor(digits.features(np.arange(600)))
    weights = config.loss_weights()
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        terms = [dhvc_loss(trainer.model, x[i:i + 100], weights, targets=targets[i:i + 100]) for i in range(0, 600, 100)]
    for name in got:
        assert got[name] == pytest.approx(float(np.mean([float(t[name]) for t in terms])), rel=1e-5, abs=1e-6), name
    assert got["nbr"] > 0
    assert got["loss"] == pytest.approx(got["recon"] + got["kl_prior"] + got["kl_post"] - 4 * got["h_c"]
                                        + got["h_c_given_z"] + 32 * got["nbr"], rel=1e-5)
    # without the index: the neighbours found among the rows given, here the training rows (input space)
    assert trainer.evaluate_loss(digits) == pytest.approx(got, rel=1e-6)


def test_neighbours_on_tiny_data_and_gamma_zero(digits):
    tiny = digits.subset(4, seed=0)
    config = TrainConfig(cluster_init="mixture",
                         n_clusters=2, hidden=(8,), latent_dim=3, pretrain_epochs=1, epochs=1, mixture_n_init=1,
                         num_threads=1, neighbors=10)
    trainer = Trainer(config, tiny.n_features)
    trainer.fit(tiny)
    assert trainer.neighbor_index.shape == (4, 3)  # k lowered to N - 1
    no_weight = Trainer(TrainConfig(**{**config.__dict__, "gamma": 0.0}), tiny.n_features)
    no_weight.fit(tiny)
    assert no_weight.neighbor_index is None


def test_bf16_on_the_cpu_runs_the_networks_narrow_and_the_vmf_and_mixture_terms_in_float32(digits, monkeypatch):
    # TrainConfig.bf16 on the CPU: the encoder's and decoder's layers under a bfloat16 autocast (their raw
    # outputs are bfloat16), while what the vMF sampler, the KLs, the head and the mixture posterior take and
    # give is float32; the loss stays finite and training moves the parameters.
    from dhvc_ext.models import dhvc as dhvc_module

    config = TrainConfig(n_clusters=10, bf16=True, device="cpu", neighbors=5,
                         **{**SMALL, "pretrain_epochs": 1, "epochs": 1})
    trainer = Trainer(config, digits.n_features, unit_interval=digits.unit_interval)
    seen = dict(encoder=set(), decoder=set(), vmf=set(), posterior=set(), head=set())
    trainer.model.encoder.register_forward_hook(lambda m, i, out: seen["encoder"].add(out.dtype))
    trainer.model.decoder.register_forward_hook(lambda m, i, out: seen["decoder"].add(out.dtype))
    trainer.model.head.register_forward_hook(lambda m, i, out: seen["head"].add(out.dtype))
    real_vmf, real_posterior = dhvc_module.VonMisesFisher, trainer.model.mixture.log_posterior

    def vmf(mu, kappa, **kw):
        seen["vmf"].add((mu.dtype, kappa.dtype))
        return real_vmf(mu, kappa, **kw)

    def posterior(z):
        out = real_posterior(z)
        seen["posterior"].add((z.dtype, out.dtype))
        return out

    monkeypatch.setattr(dhvc_module, "VonMisesFisher", vmf)
    monkeypatch.setattr(trainer.model.mixture, "log_posterior", posterior)
    before = [p.detach().clone() for p in trainer.model.encoder.parameters()]
    history = trainer.fit(digits)
    assert [r["phase"] for r in history] == ["pretrain", "joint"]
    assert all(np.isfinite(r[k]) for r in history for k in ("loss", "recon", "kl_post", "nbr"))
    assert history[-1]["nbr"] > 0
    assert seen["encoder"] == {torch.bfloat16} and seen["decoder"] == {torch.bfloat16}
    assert seen["vmf"] == {(torch.float32, torch.float32)}
    assert {z for z, _ in seen["posterior"]} <= {torch.float32, torch.float64}
    assert {out for _, out in seen["posterior"]} <= {torch.float32, torch.float64}
    assert torch.float32 in seen["head"] and torch.bfloat16 not in seen["head"]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.encoder.parameters()))
