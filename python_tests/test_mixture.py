"""dhvc_ext.mixture: VMFMixture, VonMisesFisherMixture and SphericalKMeans.

Recovery of mixtures drawn with vmf_sample (adjusted Rand index and concentrations against the truth, the
components matched by the Hungarian algorithm on mean cosines), EM against the plain NumPy/SciPy EM of
dhvc_ext.testing at every iteration, the scikit-learn estimator contract, and the M-step guards (empty
components, rbar -> 1, large kappa and d). Fixed seeds throughout.
"""
import math
import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score

from dhvc_ext.mixture import ConcentrationCapWarning, SphericalKMeans, VMFMixture, VonMisesFisherMixture
from dhvc_ext.mixture.estimators import _closest_centre_sums
from dhvc_ext.mixture.vmf_mixture import _inverse_softplus
from dhvc_ext.ops import vmf_sample
from dhvc_ext.testing.mixture import vmf_log_normalizer_ive, vmfmm_em_numpy

F64 = torch.float64


def separated_means(k, d, generator):
    """k unit vectors spread by farthest-point selection among 4000 random ones (min angle ~57 deg for
    k = 10 on S^2; nearly orthogonal in high d)."""
    cand = torch.nn.functional.normalize(torch.randn(4000, d, generator=generator, dtype=F64), dim=1)
    idx, best = [0], cand @ cand[0]
    for _ in range(k - 1):
        i = int(best.argmin())
        idx.append(i)
        best = torch.maximum(best, cand @ cand[i])
    return cand[idx]


# Concentration ranges per d: wide enough to be a real test, narrow enough that the components separate
# (at d = 100 random directions are nearly orthogonal, but a vMF sample's cosine to its own mean is only
# A_d(kappa), about 0.2 at kappa = 20).
KAPPA_RANGE = {3: (50.0, 200.0), 10: (20.0, 200.0), 100: (200.0, 2000.0)}


def draw_mixture(k, d, n, seed):
    g = torch.Generator().manual_seed(seed)
    mu = separated_means(k, d, g)
    lo, hi = KAPPA_RANGE[d]
    kappa = torch.empty(k, dtype=F64).uniform_(lo, hi, generator=g)
    labels = torch.randint(k, (n,), generator=g)
    return vmf_sample(mu[labels], kappa[labels], generator=g), labels, mu, kappa


def match(true_means, fitted_means):
    """fitted index for each true component (Hungarian algorithm on the cosines)."""
    rows, cols = scipy.optimize.linear_sum_assignment(-(np.asarray(true_means) @ np.asarray(fitted_means).T))
    return cols[np.argsort(rows)]


@pytest.mark.parametrize("d", [3, 10, 100])
@pytest.mark.parametrize("k", [3, 10])
def test_recovers_mixture(k, d):
    z, labels, mu, kappa = draw_mixture(k, d, 20000, seed=100 * k + d)
    # n_init = 4: a single k-means++ start can put two centres in one cluster when k = 10.
    est = VonMisesFisherMixture(k, n_init=4 if k > 3 else 1, random_state=0).fit(z.numpy())
    assert est.converged_
    assert adjusted_rand_score(labels.numpy(), est.predict(z.numpy())) >= 0.95
    j = match(mu.numpy(), est.means_)
    # 1/sqrt(N_k) is the relative standard error of kappa-hat at d = 3 (2.2% for N_k = 2000).
    np.testing.assert_allclose(est.concentrations_[j], kappa.numpy(), rtol=0.05)
    np.testing.assert_allclose(est.weights_[j], np.bincount(labels.numpy(), minlength=k) / len(labels), atol=0.01)
    assert np.all(np.sum(est.means_[j] * mu.numpy(), axis=1) > 0.99)


def set_parameters(model, mu, kappa, pi):
    with torch.no_grad():
        model.mu_raw.copy_(torch.as_tensor(mu))
        model.kappa_raw.copy_(_inverse_softplus(torch.as_tensor(kappa) - model.kappa_min))
        model.logits.copy_(torch.log(torch.as_tensor(pi)))


@pytest.mark.parametrize("hard_start", [False, True])
def test_em_matches_numpy_reference(hard_start):
    # d = 5, where scipy's ive is finite and accurate for every kappa EM visits. Overlapping components (kappa
    # 5-20, random means) so that EM takes many visible steps; hard_start begins far from the optimum.
    k, d, n, n_iter = 3, 5, 3000, 25
    g = torch.Generator().manual_seed(7)
    mu = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=F64), dim=1)
    kappa = torch.tensor([5.0, 10.0, 20.0], dtype=F64)
    labels = torch.randint(k, (n,), generator=g)
    z = vmf_sample(mu[labels], kappa[labels], generator=g)
    mu0 = z[:k].numpy() if hard_start else torch.nn.functional.normalize(mu + 0.3, dim=1).numpy()
    kappa0, pi0 = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.3, 0.2])

    ref_ll, ref_mu, ref_kappa, ref_pi = vmfmm_em_numpy(z.numpy(), mu0, kappa0, pi0, n_iter)
    model = VMFMixture(k, d, dtype=F64)
    set_parameters(model, mu0, kappa0, pi0)
    ours = np.array([model.em_step(z) * n for _ in range(n_iter)])

    assert ref_ll[-1] - ref_ll[0] > 100  # EM moved a long way
    assert np.all(np.diff(ours) > -1e-9 * np.abs(ours[1:]))  # monotone
    np.testing.assert_allclose(ours, ref_ll, rtol=1e-6, atol=0)
    with torch.no_grad():
        np.testing.assert_allclose(model.mu.numpy(), ref_mu, rtol=0, atol=1e-6)
        np.testing.assert_allclose(model.kappa.numpy(), ref_kappa, rtol=1e-6)
        np.testing.assert_allclose(model.pi.numpy(), ref_pi, rtol=1e-6)


def test_module_values_against_formula():
    # log_prob and posterior against the E-step written out with SciPy at d = 5.
    k, d = 3, 5
    g = torch.Generator().manual_seed(3)
    model = VMFMixture(k, d, dtype=F64, generator=g)
    mu, kappa, pi = model.mu.detach().numpy(), np.array([0.5, 7.0, 300.0]), np.array([0.2, 0.3, 0.5])
    set_parameters(model, mu, kappa, pi)
    z = torch.nn.functional.normalize(torch.randn(50, d, generator=g, dtype=F64), dim=1)
    scores = np.log(pi) + vmf_log_normalizer_ive(d, kappa) + kappa * (z.numpy() @ mu.T)
    loglik = scipy.special.logsumexp(scores, axis=1)
    np.testing.assert_allclose(model.log_prob(z).detach().numpy(), loglik, rtol=1e-12)
    expected = np.exp(scores - loglik[:, None])
    np.testing.assert_allclose(model.posterior(z).detach().numpy(), expected, rtol=1e-10, atol=1e-300)
    # the gradient reaches every parameter
    model.log_prob(z).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_set_parameters_and_score_arguments_against_formula():
    # set_parameters inverts the mu/kappa/log_pi properties (kappa below kappa_min becomes kappa_min), and
    # score_arguments are the E-step's weights and bias: a linear softmax with them is the SciPy posterior.
    k, d = 3, 5
    g = torch.Generator().manual_seed(4)
    model = VMFMixture(k, d, kappa_init=2.0, kappa_min=1.0, dtype=torch.float32, generator=g)
    mu = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=F64), dim=1)
    kappa, pi = torch.tensor([0.25, 7.0, 300.0], dtype=F64), torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    model.set_parameters(mu, kappa, torch.log(pi))
    assert model.mu_raw.dtype == torch.float32
    torch.testing.assert_close(model.mu.double(), mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.kappa.double(), torch.tensor([1.0, 7.0, 300.0], dtype=F64), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.pi.double(), pi, rtol=1e-6, atol=0)
    weight, bias = model.score_arguments()
    assert weight.dtype == bias.dtype == F64 and weight.shape == (k, d) and bias.shape == (k,)
    m, kap, log_p = (t.detach().double().numpy() for t in (model.mu, model.kappa, model.log_pi))
    np.testing.assert_allclose(weight.numpy(), kap[:, None] * m, rtol=1e-15)
    np.testing.assert_allclose(bias.numpy(), log_p + vmf_log_normalizer_ive(d, kap), rtol=1e-12)
    z = torch.nn.functional.normalize(torch.randn(40, d, generator=g, dtype=F64), dim=1)
    scores = log_p + vmf_log_normalizer_ive(d, kap) + kap * (z.numpy() @ m.T)
    expected = np.exp(scores - scipy.special.logsumexp(scores, axis=1)[:, None])
    np.testing.assert_allclose(torch.softmax(z @ weight.T + bias, dim=1).numpy(), expected, rtol=1e-10)
    assert model.score_arguments(torch.float32)[0].dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------
# scikit-learn API


@pytest.fixture(scope="module")
def small_data():
    z, labels, _, _ = draw_mixture(3, 10, 600, seed=11)
    return z.numpy(), labels.numpy()


def test_sklearn_params_and_clone(small_data):
    est = VonMisesFisherMixture(3, n_init=2, tol=1e-5, random_state=4, dtype=torch.float32)
    params = est.get_params()
    assert params["n_components"] == 3 and params["n_init"] == 2 and params["dtype"] is torch.float32
    assert params["init"] == "k-means++" and params["normalize"] is True
    twin = clone(est)
    assert twin is not est and twin.get_params() == params
    assert est.set_params(max_iter=7, posterior_type="hard") is est
    assert est.max_iter == 7 and est.posterior_type == "hard"
    X, _ = small_data
    assert est.fit(X) is est
    assert not hasattr(clone(est), "means_")


def test_not_fitted_and_bad_input(small_data):
    X, _ = small_data
    est = VonMisesFisherMixture(3, random_state=0)
    for method in (est.predict, est.predict_proba, est.score, est.score_samples, est.bic):
        with pytest.raises(NotFittedError):
            method(X)
    bad = X.copy()
    bad[17] = 0.0
    with pytest.raises(ValueError, match="row 17"):
        est.fit(bad)
    with pytest.raises(ValueError, match="posterior_type"):
        VonMisesFisherMixture(3, posterior_type="fuzzy").fit(X)
    with pytest.raises(ValueError, match="norm"):
        VonMisesFisherMixture(3, normalize=False).fit(2 * X)
    est.fit(X)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :5])


def test_reproducible_and_input_types(small_data):
    X, labels = small_data
    scaled = X * np.linspace(0.5, 3.0, len(X))[:, None]  # normalize=True removes the row norms
    a = VonMisesFisherMixture(3, n_init=2, random_state=5).fit(X)
    b = VonMisesFisherMixture(3, n_init=2, random_state=5).fit(torch.from_numpy(X))
    c = VonMisesFisherMixture(3, n_init=2, random_state=5).fit(scaled)
    for other in (b, c):
        exact = other is b  # rescaled rows differ from X by rounding after normalisation
        check = np.testing.assert_array_equal if exact else (lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-10))
        check(other.means_, a.means_)
        check(other.concentrations_, a.concentrations_)
        check(other.weights_, a.weights_)
    assert VonMisesFisherMixture(3, n_init=2, random_state=6).fit(X).means_.tolist() != a.means_.tolist()
    np.testing.assert_array_equal(a.predict(torch.from_numpy(scaled)), a.predict(X))
    assert adjusted_rand_score(labels, a.predict(X)) >= 0.95
    assert isinstance(a.means_, np.ndarray) and a.means_.shape == (3, 10) and a.weights_.shape == (3,)
    np.testing.assert_allclose(a.predict_proba(X).sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(a.predict_proba(X).argmax(axis=1), a.predict(X))
    assert a.score(X) == pytest.approx(a.score_samples(X).mean(), rel=1e-12)
    n, p = len(X), 3 * 9 + 3 + 2
    assert a.bic(X) == pytest.approx(-2 * n * a.score(X) + p * math.log(n), rel=1e-12)
    assert a.aic(X) == pytest.approx(-2 * n * a.score(X) + 2 * p, rel=1e-12)
    s1, y1 = a.sample(5000)
    s2, _ = a.sample(5000)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_allclose(np.linalg.norm(s1, axis=1), 1.0, rtol=1e-12)
    assert abs(np.mean(a.predict(s1) == y1) - 1) < 0.02  # samples come from the component they are labelled with


def test_hard_posterior_and_float32(small_data):
    X, labels = small_data
    hard = VonMisesFisherMixture(3, posterior_type="hard", random_state=0).fit(X)
    single = VonMisesFisherMixture(3, random_state=0, dtype=torch.float32).fit(X)
    double = VonMisesFisherMixture(3, random_state=0).fit(X)
    for est in (hard, single):
        assert adjusted_rand_score(labels, est.predict(X)) >= 0.95
    j = match(double.means_, single.means_)
    np.testing.assert_allclose(single.concentrations_[j], double.concentrations_, rtol=1e-3)


@pytest.mark.parametrize("k, d", [(3, 3), (10, 10)])
def test_float32_fit_matches_float64_fit(k, d):
    # A float32 fit of float32 data against the float64 fit of the same points, same random_state: the same
    # labels and concentrations to 1e-3 (the sums are float64 in both; what differs is the rounding of z and
    # of the scores). 20000 points of well separated components, as in test_recovers_mixture.
    z, labels, _, _ = draw_mixture(k, d, 20000, seed=300 + 10 * k + d)
    x64, x32 = z.numpy(), z.float().numpy()
    n_init = 4 if k > 3 else 1
    double = VonMisesFisherMixture(k, n_init=n_init, random_state=1).fit(x64)
    single = VonMisesFisherMixture(k, n_init=n_init, random_state=1, dtype=torch.float32).fit(x32)
    assert double.converged_ and single.converged_
    assert single.means_.dtype == np.float32 and single.concentrations_.dtype == np.float32
    # A real test: the float64 fit itself recovers the mixture, so agreeing with it is agreeing with the truth.
    assert adjusted_rand_score(labels.numpy(), double.predict(x64)) >= 0.95
    assert adjusted_rand_score(double.predict(x64), single.predict(x32)) >= 0.99
    j = match(double.means_, single.means_)
    np.testing.assert_allclose(single.concentrations_[j], double.concentrations_, rtol=1e-3)
    np.testing.assert_allclose(single.weights_[j], double.weights_, rtol=1e-3)
    assert np.all(np.sum(single.means_[j].astype(np.float64) * double.means_, axis=1) > 1 - 1e-5)
    assert abs(single.lower_bound_ - double.lower_bound_) <= 1e-4 * abs(double.lower_bound_)


# ---------------------------------------------------------------------------------------------------------
# Guards


def test_empty_component_is_reseeded():
    g = torch.Generator().manual_seed(2)
    e1 = torch.zeros(3, dtype=F64)
    e1[0] = 1
    z = vmf_sample(e1.expand(500, 3), 100.0, generator=g)
    model = VMFMixture(3, 3, dtype=F64)
    # component 2 points away from every sample with a huge kappa: its responsibilities underflow to 0
    means = torch.stack([e1, torch.tensor([0.0, 1, 0], dtype=F64), -e1])
    set_parameters(model, means, [100.0, 1.0, 1e4], [0.5, 0.3, 0.2])
    assert float(model.posterior(z)[:, 2].sum().detach()) < 1e-8 * len(z)
    model.em_step(z, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in (model.mu, model.kappa, model.pi):
            assert torch.isfinite(p).all()
        assert torch.isclose(model.mu[2] @ z.T, torch.ones((), dtype=F64)).any()  # moved onto a data point
        assert model.pi[2] > 0 and float(model.pi.sum()) == pytest.approx(1.0)
    assert np.isfinite(model.em_step(z))


def test_coincident_points_cap_kappa():
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64), dim=1).expand(40, 4)
    model = VMFMixture(1, 4, dtype=F64, kappa_max=1e5)
    with pytest.warns(ConcentrationCapWarning, match="kappa_max"):
        model.em_step(z)
    assert float(model.kappa.detach()) == pytest.approx(1e5, rel=1e-12)
    far = vmf_sample(-z[0].expand(300, 4), 50.0, generator=torch.Generator().manual_seed(1))
    X = np.concatenate([np.repeat(z[:1].numpy(), 50, axis=0), far.numpy()])
    with pytest.warns(ConcentrationCapWarning):
        est = VonMisesFisherMixture(2, random_state=0, kappa_max=1e6).fit(X)
    assert np.all(np.isfinite(est.concentrations_)) and est.concentrations_.max() == pytest.approx(1e6)
    assert np.all(np.isfinite(est.score_samples(X)))


@pytest.mark.parametrize("d", [64, 4096])
def test_large_kappa_and_dimension_stay_finite(d):
    g = torch.Generator().manual_seed(d)
    mu = torch.nn.functional.normalize(torch.randn(3, d, generator=g, dtype=F64), dim=1)
    kappa = torch.tensor([1e6, 1e3, 10.0], dtype=F64)
    labels = torch.arange(60) % 3
    z = vmf_sample(mu[labels], kappa[labels], generator=g)
    model = VMFMixture(3, d, dtype=F64, kappa_max=1e7)  # the truth (1e6) must lie below the cap
    set_parameters(model, mu, kappa, [1 / 3] * 3)
    log_prob, post = model.log_prob(z), model.posterior(z)
    assert torch.isfinite(log_prob).all() and torch.isfinite(post).all()
    np.testing.assert_allclose(post.sum(1).detach().numpy(), 1.0, rtol=1e-12)
    # the two concentrated components claim their own points
    assert (post[labels < 2].argmax(1) == labels[labels < 2]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConcentrationCapWarning)
        for _ in range(3):
            assert np.isfinite(model.em_step(z))
    with torch.no_grad():
        assert all(torch.isfinite(p).all() for p in (model.mu, model.kappa, model.pi))
    est = VonMisesFisherMixture(2, random_state=0, kappa_max=1e7, max_iter=20).fit(z[labels < 2])
    assert np.all(np.isfinite(est.concentrations_)) and np.all(np.isfinite(est.means_))
    assert adjusted_rand_score(labels[labels < 2].numpy(), est.predict(z[labels < 2])) == 1.0


# ---------------------------------------------------------------------------------------------------------
# SphericalKMeans


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_closest_centre_sums_are_the_argmax_labels(dtype):
    """The initialisation's hard-label sums (the fused hard statistics op with the cosines as scores) equal the
    sums over the labels argmax_k mu_k^T z, on data where two centres are 1e-3 apart (many close calls)."""
    g = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(5000, 6, generator=g, dtype=torch.float64), dim=1)
    centres = torch.nn.functional.normalize(torch.randn(7, 6, generator=g, dtype=torch.float64), dim=1)
    centres[5] = torch.nn.functional.normalize(centres[2] + 1e-3 * torch.randn(6, generator=g, dtype=torch.float64),
                                               dim=0)
    z, centres = z.to(dtype), centres.to(dtype)
    n_k, s_k = _closest_centre_sums(z, centres)
    cos = z.double() @ centres.double().T
    labels = cos.argmax(dim=1)
    # Rows whose two best cosines are closer than the dtype's rounding may go either way.
    top = cos.topk(2, dim=1).values
    unclear = int(((top[:, 0] - top[:, 1]) <= 8 * torch.finfo(dtype).eps).sum())
    if dtype == torch.float64:
        assert unclear == 0
    assert n_k.dtype == s_k.dtype == torch.float64 and n_k.sum().item() == 5000
    assert (n_k - torch.bincount(labels, minlength=7).double()).abs().sum().item() <= 2 * unclear
    expected_s = torch.zeros(7, 6, dtype=torch.float64).index_add_(0, labels, z.double())
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(s_k, expected_s, rtol=0, atol=2 * unclear + tol)


def test_spherical_kmeans_recovers_clusters():
    z, labels, mu, _ = draw_mixture(10, 10, 5000, seed=21)
    km = SphericalKMeans(10, n_init=4, random_state=0).fit(z.numpy())
    assert adjusted_rand_score(labels.numpy(), km.labels_) >= 0.95
    j = match(mu.numpy(), km.cluster_centers_)
    assert np.all(np.sum(km.cluster_centers_[j] * mu.numpy(), axis=1) > 0.99)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(km.predict(z), km.labels_)
    cos = np.sum(z.numpy() * km.cluster_centers_[km.labels_], axis=1)
    assert km.inertia_ == pytest.approx(np.sum(1 - cos), rel=1e-10)
    # Lloyd's fixed point: every centre is the normalised mean of its points
    for c in range(10):
        mean = z.numpy()[km.labels_ == c].sum(axis=0)
        np.testing.assert_allclose(km.cluster_centers_[c], mean / np.linalg.norm(mean), atol=1e-12)
    with pytest.raises(NotFittedError):
        SphericalKMeans(3).predict(z)
    again = SphericalKMeans(10, n_init=4, random_state=0).fit(z)
    np.testing.assert_array_equal(again.cluster_centers_, km.cluster_centers_)


# ---------------------------------------------------------------------------------------------------------
# Inputs a hostile user tried (issue 17)


@pytest.mark.parametrize("dtype, factor", [(torch.float32, 1e20), (torch.float32, 1e-30), (torch.float64, 1e155),
                                           (torch.float64, 1e-170)])
def test_rows_of_huge_or_tiny_norm_keep_their_direction(small_data, dtype, factor):
    # Their squared norms overflow (or underflow) the dtype although every entry is finite.
    X, _ = small_data
    est = VonMisesFisherMixture(3, random_state=0, dtype=dtype).fit(X)
    scaled = X.astype(np.float32 if dtype == torch.float32 else np.float64)
    scaled[[5, 9]] = scaled[[5, 9]] * factor
    np.testing.assert_array_equal(est.predict(scaled), est.predict(X))
    np.testing.assert_allclose(est.score_samples(scaled), est.score_samples(X), rtol=1e-4)
    refit = VonMisesFisherMixture(3, random_state=0, dtype=dtype).fit(scaled)
    np.testing.assert_allclose(refit.means_, est.means_, atol=1e-4)


def test_complex_input_is_a_type_error(small_data):
    X, _ = small_data
    for bad in (X + 1j * X, torch.from_numpy(X).to(torch.complex128), [[1 + 2j, 3.0], [1.0, 0.5]]):
        with pytest.raises(TypeError, match="real"):
            VonMisesFisherMixture(2, random_state=0).fit(bad)


@pytest.mark.parametrize("kind", ["list", "memmap"])
def test_streamed_errors_name_the_global_row(tmp_path, small_data, kind):
    X, _ = small_data
    for value, text in ((np.nan, "NaN or infinity (row 150)"), (0.0, "row 150 of X is zero")):
        bad = X.copy()
        bad[150] = value
        if kind == "list":
            data = [bad[i:i + 100] for i in range(0, len(bad), 100)]
        else:
            np.save(tmp_path / "X.npy", bad)
            data = np.load(tmp_path / "X.npy", mmap_mode="r")
        with pytest.raises(ValueError, match=text.replace("(", r"\(").replace(")", r"\)")):
            VonMisesFisherMixture(3, random_state=0, chunk_size=100).fit(data)
