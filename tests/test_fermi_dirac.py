"""Fermi–Dirac occupations: the chemical potential's derivative by the implicit function theorem.

μ is found by bisection; its derivative must be dμ = Σᵢ f'ᵢ dεᵢ / Σᵢ f'ᵢ (Mermin, Phys. Rev. 137,
A1441 (1965), doi:10.1103/PhysRev.137.A1441), not whatever flows through the bisection bounds
(which depend on min ε and max ε). References are central finite differences of the computed
occupations; no SCF is run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nlxc  # noqa: F401  (float64)
from nlxc.scf import chemical_potential

# (orbital energies in Hartree, electron count, width kT in Hartree)
CASES = {
    # μ in the middle of the spectrum
    "mid": ([-0.9, -0.52, -0.31, -0.30, 0.05, 0.4], 3.3, 0.02),
    # degenerate orbitals at the Fermi level
    "degenerate": ([-0.8, -0.4, -0.25, -0.25, -0.25, 0.2, 0.6], 3.5, 0.01),
    # μ near the lower bisection bound: a tiny count, two close lowest orbitals
    "near_lower_bound": ([-0.71, -0.70, -0.2, 0.1, 0.3], 0.05, 0.02),
    # μ near the upper bisection bound: all but a little occupied
    "near_upper_bound": ([-0.7, -0.3, 0.29, 0.3, 0.31], 4.95, 0.02),
    # a padded orbital (never occupied) sets no bound
    "padded": ([-0.6, -0.35, -0.33, 0.1, 1.0e3], 2.0, 0.05),
}


def occupations(e, n, width, weights=None):
    mu = chemical_potential(e, n, width, weights)
    return jax.nn.sigmoid(-(e - mu) / width)


def central_jacobian(f, x, step):
    """Fourth-order central differences, column by column."""
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for i in range(x.size):
        d = np.zeros_like(x)
        d.flat[i] = step
        vals = [np.asarray(f(jnp.asarray(x + k * d))) for k in (-2, -1, 1, 2)]
        cols.append((vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * step))
    return np.stack(cols, axis=-1)


def assert_close(jac, ref, rtol=1e-7):
    jac, ref = np.asarray(jac), np.asarray(ref)
    np.testing.assert_allclose(jac, ref, rtol=rtol, atol=rtol * np.max(np.abs(ref)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_occupation_derivatives_match_finite_differences(case):
    e, n, width = CASES[case]
    e = jnp.asarray(e)
    f = jax.jit(lambda x: occupations(x, n, width))
    occ = f(e)
    assert abs(float(jnp.sum(occ)) - n) < 1e-12
    ref = central_jacobian(f, e, 1e-4 * width)
    fwd = jax.jacfwd(f)(e)
    rev = jax.jacrev(f)(e)
    assert_close(fwd, ref)
    assert_close(rev, ref)
    # the count is fixed, so its derivative is zero
    np.testing.assert_allclose(np.sum(np.asarray(fwd), axis=0), 0.0, atol=1e-12 * np.max(np.abs(ref)))


def test_chemical_potential_derivatives_match_finite_differences():
    e, n, width = CASES["mid"]
    e = jnp.asarray(e)
    mu_of_e = jax.jit(lambda x: chemical_potential(x, n, width))
    assert_close(jax.grad(mu_of_e)(e), central_jacobian(mu_of_e, e, 1e-4 * width))
    mu_of_n = jax.jit(lambda k: chemical_potential(e, k, width))
    h = 1e-4
    fd = (mu_of_n(n - 2 * h) - 8 * mu_of_n(n - h) + 8 * mu_of_n(n + h) - mu_of_n(n + 2 * h)) / (12 * h)
    assert float(jax.grad(mu_of_n)(n)) == pytest.approx(float(fd), rel=1e-7)


def test_weighted_chemical_potential_under_vmap():
    """Weights (e.g. k-points) and vmap over a batch of spectra."""
    rng = np.random.default_rng(0)
    e = jnp.asarray(np.sort(rng.uniform(-1.0, 0.5, size=(2, 3, 4)), axis=-1))
    weights = jnp.asarray([0.25, 0.5, 0.25])[None, :, None]
    n, width = 2.7, 0.03

    def f(x):
        return occupations(x, n, width, weights).ravel()

    occ = f(e).reshape(e.shape)
    assert abs(float(jnp.sum(weights * occ)) - n) < 1e-12
    ref = central_jacobian(jax.jit(f), e, 1e-4 * width).reshape(e.size, e.size)
    assert_close(jax.jacrev(f)(e).reshape(e.size, e.size), ref)

    batch = jnp.stack([e[0, 0], e[1, 2]])
    one = jax.jit(lambda x: occupations(x, 1.5, width))
    g = jax.vmap(jax.jacfwd(one))(batch)
    for b in range(2):
        assert_close(g[b], central_jacobian(one, batch[b], 1e-4 * width))
