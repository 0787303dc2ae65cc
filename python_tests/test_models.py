"""The DHVC objective, term by term, against direct NumPy/SciPy formulas on small tensors.

The reference recomputes every term from the network's raw outputs with SciPy (log C_d and A_d from
``scipy.special.ive``, the vMF entropy from ``scipy.stats.vonmises_fisher``), independently of the ops, and
draws the same posterior sample z by reseeding torch's generator before ``dhvc_loss`` and before the reference.
"""
import numpy as np
import pytest
import torch
from scipy import special, stats

from dhvc_ext import ops
from dhvc_ext.models import LOSS_TERMS, DHVCNet, LossWeights, dhvc_loss


def _log_c(d, kappa):
    """log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log(2 pi) - log I_{d/2-1}(kappa), by SciPy's ive."""
    nu = d / 2 - 1
    return nu * np.log(kappa) - (d / 2) * np.log(2 * np.pi) - (np.log(special.ive(nu, kappa)) + kappa)


def _log_softmax(s):
    s = s - s.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def _reference(model, x, weights, seed, targets=None):
    torch.manual_seed(seed)
    with torch.no_grad():
        mu, kappa = model.encode(x)
        z = ops.vmf_sample(mu, kappa)
        out = model.decode(z).double().numpy()
        head = model.head(mu).double().numpy() if model.head is not None else None
        mix_mu, mix_kappa, mix_log_pi = (t.double().numpy() for t in (model.mixture.mu, model.mixture.kappa,
                                                                      model.mixture.log_pi))
    x, mu, kappa, z = (t.double().numpy() for t in (x, mu, kappa, z))
    d = mu.shape[1]
    if model.likelihood == "bernoulli":
        p = 1 / (1 + np.exp(-out))
        recon = -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(1).mean()
    else:
        recon = 0.5 * ((out - x) ** 2).sum(1).mean()
    log_area = np.log(2) + (d / 2) * np.log(np.pi) - special.gammaln(d / 2)
    entropy = np.array([stats.vonmises_fisher(m, k).entropy() for m, k in zip(mu, kappa)])
    kl_prior = (log_area - entropy).mean()
    log_p = _log_softmax(mix_log_pi + _log_c(d, mix_kappa) + z @ (mix_mu * mix_kappa[:, None]).T)
    if head is not None:
        log_q = _log_softmax(head)
    else:
        log_q = _log_softmax(mix_log_pi + _log_c(d, mix_kappa) + mu @ (mix_mu * mix_kappa[:, None]).T)
    q, p = np.exp(log_q), np.exp(log_p)
    kl_post = ((q * (log_q - log_p)) if weights.kl_direction == "forward" else (p * (log_p - log_q))).sum(1).mean()
    h_c_given_z = -(q * log_q).sum(1).mean()
    qbar = q.mean(0)
    h_c = -(qbar * np.log(qbar)).sum()
    nbr = 0.0 if targets is None else -(targets.double().numpy() * log_q).sum(1).mean()
    loss = (recon + weights.beta * kl_prior + weights.alpha * kl_post
            - weights.eta * (weights.lam * h_c - h_c_given_z) + weights.gamma * nbr)
    return dict(loss=loss, recon=recon, kl_prior=kl_prior, kl_post=kl_post, h_c=h_c, h_c_given_z=h_c_given_z,
                nbr=nbr)


@pytest.mark.parametrize("likelihood,head,direction,with_targets", [
    ("bernoulli", "separate", "forward", True), ("gaussian", "separate", "reverse", False),
    ("bernoulli", "mixture", "forward", True),
])
def test_loss_terms_match_direct_formulas(likelihood, head, direction, with_targets):
    torch.manual_seed(0)
    model = DHVCNet(12, 4, latent_dim=5, hidden=(16, 8), likelihood=likelihood, head=head).double()
    with torch.no_grad():  # a mixture with distinct weights and concentrations, not the initial one
        model.mixture.kappa_raw.copy_(torch.tensor([0.5, 2.0, 8.0, 30.0]))
        model.mixture.logits.copy_(torch.tensor([0.3, -0.2, 0.0, 0.1]))
    x = torch.rand(9, 12, dtype=torch.float64)
    if likelihood == "gaussian":
        x = 3 * x - 1
    weights = LossWeights(beta=0.7, alpha=1.3, eta=0.9, lam=3.0, kl_direction=direction, gamma=2.5)
    targets = torch.softmax(3 * torch.randn(9, 4, dtype=torch.float64), 1) if with_targets else None
    torch.manual_seed(123)
    terms = dhvc_loss(model, x, weights, targets=targets)
    ref = _reference(model, x, weights, 123, targets)
    if with_targets:
        assert ref["nbr"] > 0.1
    assert set(terms) == set(LOSS_TERMS)
    for name in LOSS_TERMS:
        assert float(terms[name].detach()) == pytest.approx(ref[name], rel=1e-9, abs=1e-10), name


def test_pretrain_phase_is_the_s_vae_objective():
    torch.manual_seed(1)
    model = DHVCNet(10, 3, latent_dim=4, hidden=(8,)).double()
    x = torch.rand(6, 10, dtype=torch.float64)
    weights = LossWeights(beta=0.5)
    torch.manual_seed(7)
    terms = dhvc_loss(model, x, weights, phase="pretrain")
    ref = _reference(model, x, weights, 7)
    assert float(terms["loss"].detach()) == pytest.approx(ref["recon"] + 0.5 * ref["kl_prior"], rel=1e-10)
    assert float(terms["kl_post"]) == float(terms["h_c"]) == float(terms["nbr"]) == 0.0


def test_neighbor_term_rejects_targets_of_the_wrong_shape():
    model = DHVCNet(10, 3, latent_dim=4, hidden=(8,))
    with pytest.raises(ValueError, match="targets must have the shape"):
        dhvc_loss(model, torch.rand(6, 10), LossWeights(), targets=torch.full((6, 4), 0.25))


def test_loss_gradients_reach_every_trained_part():
    torch.manual_seed(2)
    model = DHVCNet(10, 3, latent_dim=4, hidden=(8,))
    dhvc_loss(model, torch.rand(16, 10), LossWeights())["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_conv_network_shapes_and_odd_image_sizes():
    model = DHVCNet(2 * 9 * 7, 3, latent_dim=4, arch="conv", image_shape=(2, 9, 7))
    mu, kappa = model.encode(torch.rand(5, 2 * 9 * 7))
    assert mu.shape == (5, 4) and kappa.shape == (5,)
    assert torch.allclose(mu.norm(dim=1), torch.ones(5), atol=1e-6) and (kappa >= 1).all()
    assert model.decode(mu).shape == (5, 2 * 9 * 7)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_clusters=1), "n_clusters"), (dict(latent_dim=1), "latent_dim"), (dict(arch="rnn"), "arch"),
    (dict(likelihood="poisson"), "likelihood"), (dict(head="both"), "head"),
    (dict(arch="conv", image_shape=(1, 3, 3)), "image_shape"),
])
def test_network_rejects_bad_configuration(kwargs, match):
    args = dict(n_features=16, n_clusters=3) | kwargs
    with pytest.raises(ValueError, match=match):
        DHVCNet(**args)


@pytest.mark.parametrize("kwargs", [dict(beta=-1.0), dict(lam=float("nan")), dict(kl_direction="sideways")])
def test_loss_weights_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        LossWeights(**kwargs)


def test_posterior_concentration_is_capped_at_kappa_max():
    torch.manual_seed(3)
    model = DHVCNet(6, 3, latent_dim=4, hidden=(8,), kappa_max=50.0)
    with torch.no_grad():
        model.to_kappa.bias.fill_(1e4)  # an encoder that asks for kappa = 1e4
    mu, kappa = model.encode(torch.rand(5, 6))
    assert torch.all(kappa == 50.0)
    assert model.mixture.kappa_max == 50.0
