"""Exact exchange from a factor of the density matrix (`nlxc.xc.exact_exchange_energy`).

The energy, the exchange matrix K = ∂E/∂Pσ, its directional derivative (a second derivative,
used by the SCF adjoint) and the derivative with respect to the 3-index tensor B are compared
with the dense quadratic form E = −½ Σσ Σ_Q tr(B_Q Pσ B_Q Pσ), written out here and
differentiated by autodiff (the definition; O(naux · nao³)), for density matrices of every kind
the SCF meets: the minao guess (rank above nocc), idempotent ones (rank nocc), one with an
exactly degenerate nonzero spectrum, an indefinite one, an empty spin channel; restricted and
unrestricted; under `jax.vmap` with different ranks in one batch. H2O, def2-SVP (the shared
System of conftest).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import system
from scipy.linalg import eigh

from nlxc.xc import exact_exchange_energy

RTOL = 1e-10  # relative to the largest entry of the compared array


def dense_exchange(cderi, density_matrix, restricted=False):
    if restricted:
        mean = 0.5 * (density_matrix[0] + density_matrix[1])
        t = jnp.einsum("Qmn,nl->Qml", cderi, mean)
        return -jnp.einsum("Qml,Qlm->", t, t)
    t = jnp.einsum("Qmn,snl->sQml", cderi, density_matrix)
    return -0.5 * jnp.einsum("sQml,sQlm->", t, t)


@functools.lru_cache(maxsize=None)
def density_matrices():
    """(2, nao, nao) α/β density matrices of H2O, by kind, and a symmetric tangent."""
    s = system("h2o")
    overlap = np.asarray(s.overlap)
    nao = overlap.shape[0]
    _, c = eigh(np.asarray(s.core_hamiltonian), overlap)
    idempotent = c[:, :5] @ c[:, :5].T
    # P = V Vᵀ with orthonormal columns V: five exactly equal nonzero eigenvalues (and nao − 5 zeros)
    v, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(nao, 5)))
    degenerate = v @ v.T
    a = np.random.default_rng(1).normal(size=(nao, nao))
    indefinite = 0.05 * (a + a.T)
    t = np.random.default_rng(2).normal(size=(2, nao, nao))
    guess = np.asarray(s.initial_density_matrix)
    out = {
        "minao": guess,
        "idempotent": np.stack([idempotent, idempotent]),
        "open_shell": np.stack([idempotent, c[:, :4] @ c[:, :4].T]),
        "empty_beta": np.stack([c[:, :1] @ c[:, :1].T, np.zeros((nao, nao))]),
        "degenerate": np.stack([degenerate, degenerate]),
        "indefinite": np.stack([indefinite, indefinite]),
    }
    return {k: jnp.asarray(v) for k, v in out.items()}, jnp.asarray(t + t.transpose(0, 2, 1))


def _derivatives(fn, cderi, p, tangent, restricted):
    energy, fock = jax.value_and_grad(fn, argnums=1)(cderi, p, restricted)
    _, fock_dot = jax.jvp(lambda q: jax.grad(fn, argnums=1)(cderi, q, restricted), (p,), (tangent,))
    d_cderi = jax.grad(fn, argnums=0)(cderi, p, restricted)
    return energy, fock, fock_dot, d_cderi


@functools.partial(jax.jit, static_argnums=(3,))
def _both(cderi, p, tangent, restricted):
    return (_derivatives(exact_exchange_energy, cderi, p, tangent, restricted),
            _derivatives(dense_exchange, cderi, p, tangent, restricted))


CASES = [(kind, restricted) for kind in ("minao", "idempotent", "open_shell", "empty_beta", "degenerate", "indefinite")
         for restricted in (True, False) if not (restricted and kind in ("open_shell", "empty_beta"))]


@pytest.mark.parametrize(("kind", "restricted"), CASES,
                         ids=[f"{k}-{'restricted' if r else 'unrestricted'}" for k, r in CASES])
def test_factor_path_equals_dense_quadratic_form(kind, restricted):
    cderi = system("h2o").cderi
    matrices, tangent = density_matrices()
    ours, reference = _both(cderi, matrices[kind], tangent, restricted)
    for label, a, b in zip(("energy", "K = ∂E/∂P", "∂K/∂P · dP", "∂E/∂B"), ours, reference):
        a, b = np.asarray(a), np.asarray(b)
        assert np.all(np.isfinite(a)), f"{kind} {label}: non-finite"
        scale = max(np.max(np.abs(b)), 1e-300)
        assert np.max(np.abs(a - b)) <= RTOL * scale, (kind, label, np.max(np.abs(a - b)) / scale)


def test_batches_of_different_ranks():
    """Under vmap the chunk loop runs to the largest rank of the batch: each member exact."""
    cderi = system("h2o").cderi
    matrices, _ = density_matrices()
    batch = jnp.stack([matrices["minao"], matrices["empty_beta"], matrices["idempotent"]])
    energies, focks = jax.jit(jax.vmap(jax.value_and_grad(lambda p: exact_exchange_energy(cderi, p))))(batch)
    for i in range(batch.shape[0]):
        e, f = jax.value_and_grad(lambda p: dense_exchange(cderi, p))(batch[i])
        assert abs(float(energies[i] - e)) <= RTOL * abs(float(e))
        assert float(jnp.max(jnp.abs(focks[i] - f))) <= RTOL * float(jnp.max(jnp.abs(f)))


def test_non_finite_density_matrix_gives_nan():
    cderi = system("h2o").cderi
    p = density_matrices()[0]["idempotent"].at[0, 0, 0].set(jnp.nan)
    energy, fock = jax.value_and_grad(lambda q: exact_exchange_energy(cderi, q))(p)
    assert np.isnan(float(energy)) and np.all(np.isnan(np.asarray(fock[0])))
