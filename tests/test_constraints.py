"""Exact-constraint layers: each constraint holds for random weights (not only near the baseline).

The networks get `final_scale=50` so that their raw outputs are O(1) and the enhancement factors
are far from 1; the constraints must hold by construction anyway.
"""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nlxc
from nlxc.models import MLP
from nlxc.xc import (
    LIEB_OXFORD_BOUND,
    EnhancedCorrelation,
    EnhancedExchange,
    LocalFeatures,
    PW92Correlation,
    ScaledSigmoid,
    SlaterExchange,
    SpinChannelFeatures,
)

SEEDS = [0, 1]
TAU_UEG = 0.3 * (3 * math.pi**2) ** (2 / 3)


def random_densities(seed, npoint=400):
    """Random but physical (ρσ, σ, τσ): σ from explicit gradient vectors, τσ ≥ τ_W,σ.

    The last 50 points are uniform-gas points (∇ρ = 0, τσ = τ_UEG(2ρσ)/2).
    """
    rng = np.random.default_rng(seed)
    rho = 10.0 ** rng.uniform(-6, 3, size=(2, npoint))
    rho[1, : npoint // 8] = 0.0  # fully polarised points
    grad = rng.normal(size=(2, 3, npoint)) * rho[:, None, :] ** (4 / 3) * 10.0 ** rng.uniform(-2, 1, size=(2, 1, npoint))
    grad[:, :, -50:] = 0.0
    sigma = np.stack([np.einsum("xg,xg->g", grad[0], grad[0]), np.einsum("xg,xg->g", grad[0], grad[1]),
                      np.einsum("xg,xg->g", grad[1], grad[1])])
    with np.errstate(divide="ignore", invalid="ignore"):
        tau_w = np.where(rho > 0, np.stack([sigma[0], sigma[2]]) / (8 * rho), 0.0)
    tau = tau_w + rng.uniform(0, 2, size=(2, npoint)) * TAU_UEG * (2 * rho) ** (5 / 3) / 2
    tau[:, -50:] = TAU_UEG * (2 * rho[:, -50:]) ** (5 / 3) / 2
    return jnp.asarray(rho), jnp.asarray(sigma), jnp.asarray(tau)


def exchange(seed, use_alpha=True):
    return SlaterExchange() * MLP(2 if use_alpha else 1, final_scale=50.0, key=jr.key(seed))


def correlation(seed):
    return PW92Correlation.modified() * MLP(4, final_scale=50.0, key=jr.key(100 + seed))


def test_composition_builds_constrained_layers():
    assert isinstance(exchange(0), EnhancedExchange) and exchange(0).family == "mgga"
    assert exchange(0, use_alpha=False).family == "gga"
    assert isinstance(correlation(0), EnhancedCorrelation) and correlation(0).self_interaction_free
    with pytest.raises(TypeError, match="inputs"):
        SlaterExchange() * MLP(3, key=jr.key(0))
    with pytest.raises(TypeError, match="enhancement-factor form"):
        nlxc.xc.PBEExchange() * MLP(1, key=jr.key(0))


def test_scaled_sigmoid_bounds_and_value_at_zero():
    b = ScaledSigmoid(0.0, 1.804, 1.0)
    x = jnp.linspace(-50, 50, 1001)
    y = b(x)
    assert float(b(0.0)) == pytest.approx(1.0, abs=1e-15)
    assert jnp.all(y >= 0) and jnp.all(y <= 1.804) and jnp.all(jnp.diff(y) >= 0)
    with pytest.raises(ValueError, match="lower < at_zero < upper"):
        ScaledSigmoid(0.0, 1.0, 2.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_exchange_uniform_gas_limit_and_lieb_oxford(seed):
    rho, sigma, tau = random_densities(seed)
    fx = exchange(seed)
    f = fx.enhancement_factor(SpinChannelFeatures.from_arrays(rho, sigma, tau))
    np.testing.assert_allclose(f[:, -50:], 1.0, atol=1e-13)  # s = 0, α = 1
    assert float(jnp.max(f)) <= LIEB_OXFORD_BOUND and float(jnp.min(f)) > 0
    assert float(jnp.std(f[:, :-50])) > 0.01  # the network really is far from F = 1
    e = fx.energy_density(rho, sigma, tau)
    n = rho[0] + rho[1]
    # local Lieb–Oxford: e_x ≥ −1.679 n^{4/3} for any ζ (1.679 = 1.804 · 2^{1/3} · (3/4)(3/π)^{1/3})
    assert jnp.all(e >= -1.679 * n ** (4 / 3) * (1 + 1e-12))
    assert jnp.all(e <= 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_exchange_spin_scaling_and_spin_flip(seed):
    rho, sigma, tau = random_densities(seed)
    fx = exchange(seed)
    e = fx.energy_density(rho, sigma, tau)

    def closed(s):  # the closed-shell density 2ρσ
        r = jnp.stack([rho[s], rho[s]])
        g = sigma[0] if s == 0 else sigma[2]
        return fx.energy_density(r, jnp.stack([g, g, g]), jnp.stack([tau[s], tau[s]]))

    np.testing.assert_allclose(e, 0.5 * (closed(0) + closed(1)), rtol=1e-12, atol=1e-300)
    flipped = fx.energy_density(rho[::-1], sigma[::-1], tau[::-1])
    np.testing.assert_allclose(flipped, e, rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_exchange_uniform_coordinate_scaling(seed):
    """ρ_λ(r) = λ³ρ(λr): e_x(ρ_λ)(r) = λ⁴ e_x(ρ)(λr), so E_x[ρ_λ] = λ E_x[ρ]."""
    rho, sigma, tau = random_densities(seed)
    fx = exchange(seed)
    e = fx.energy_density(rho, sigma, tau)
    for lam in (0.5, 3.0):
        scaled = fx.energy_density(lam**3 * rho, lam**8 * sigma, lam**5 * tau)
        np.testing.assert_allclose(scaled, lam**4 * e, rtol=1e-11)
    # a plain GGA network without α obeys the same
    gga = exchange(seed, use_alpha=False)
    np.testing.assert_allclose(gga.energy_density(2**3 * rho, 2**8 * sigma, 2**5 * tau),
                               2**4 * gga.energy_density(rho, sigma, tau), rtol=1e-11)


@pytest.mark.parametrize("seed", SEEDS)
def test_correlation_non_positive_uniform_gas_and_spin_flip(seed):
    rho, sigma, tau = random_densities(seed)
    fc = correlation(seed)
    e = fc.energy_density(rho, sigma, tau)
    assert jnp.all(e <= 0)
    pw92 = PW92Correlation.modified().energy_density(rho, sigma, tau)
    np.testing.assert_allclose(e[-50:], pw92[-50:], rtol=1e-12)  # uniform gas: F_c = 1 at any r_s, ζ
    assert float(jnp.std(e[:-50] / jnp.where(pw92[:-50] < 0, pw92[:-50], -1.0))) > 0.05
    np.testing.assert_allclose(fc.energy_density(rho[::-1], sigma[::-1], tau[::-1]), e, rtol=1e-12)


@pytest.fixture(scope="module")
def hydrogen_atom():
    """The UHF density of the H atom (one electron, one orbital) on a grid."""
    from pyscf import gto, scf

    mol = gto.M(atom="H 0 0 0", basis="6-31g", spin=1, verbose=0)
    mf = scf.UHF(mol).run()
    system = nlxc.System.from_pyscf(mol, grid_level=1)
    p = jnp.asarray(np.stack(mf.make_rdm1()))
    return system, p, nlxc.Density.from_density_matrix(p, system)


@pytest.mark.parametrize("seed", SEEDS)
def test_correlation_vanishes_for_one_electron(hydrogen_atom, seed):
    system, p, density = hydrogen_atom
    pw92 = float(PW92Correlation.modified()(density, p, system))
    assert pw92 < -0.01  # PW92 alone has a large self-correlation error for H
    assert abs(float(correlation(seed)(density, p, system))) < 1e-10
    z = LocalFeatures.from_density(density).z
    w = system.grid_weights * (density.rho[0] + density.rho[1])
    assert float(jnp.sum(w * z) / jnp.sum(w)) == pytest.approx(1.0, abs=1e-10)


def test_constrained_layers_have_finite_gradients_at_zero_density(hydrogen_atom):
    """Points with ρ = 0 and ∇ρ = 0 must not poison gradients with NaN."""
    rho = jnp.zeros((2, 5)).at[0, 0].set(1e-3)
    sigma, tau = jnp.zeros((3, 5)), jnp.zeros((2, 5)).at[0, 0].set(1e-4)
    for f in (exchange(0), correlation(0)):
        g = jax.grad(lambda r, s, t: jnp.sum(f.energy_density(r, s, t)), argnums=(0, 1, 2))(rho, sigma, tau)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)
