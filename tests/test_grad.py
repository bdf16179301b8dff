"""Gradients through the SCF against finite differences of converged SCFs.

For each case, a vector of quantities of the converged SCF (total energy, the density loss
∫(ρ − ρ_ref)², the dipole moment, the HOMO energy) is differentiated with respect to the
functional's parameters by reverse mode (`jax.jacrev`, implicit adjoint), projected on a random
direction v in parameter space, and compared with a fourth-order central finite difference
along v (v moves each parameter relative to its size; steps ±h, ±2h with h = 1e-3). The
reverse-mode Jacobian is taken at an SCF converged to max|ΔP| < 1e-11; the finite differences of
`test_reverse_mode_matches_finite_differences` use SCFs converged to 1e-13. Tolerance: relative
1e-6, with an absolute floor of 1e-8 for components that vanish by symmetry (the dipole of N2,
CH4 and the N atom): there the finite difference is pure noise of the converged SCFs, about
18 × (error of one solve) / (12 h). At 1e-11 that noise reached 1.8e-8 in the N2/B3LYP dipole
(CI, 2026-12-07; 5e-9 here); at 1e-13 it is 5e-10.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import stretched_h2, system

import nlxc
from nlxc.scf import DIIS, UnrolledAdjoint, solve
from nlxc.xc import AbstractSemilocalFunctional

pytestmark = pytest.mark.xdist_group("grad")  # the tests share one compiled Jacobian

TOL = dict(rtol=1e-6, atol=1e-8)
STEP = 1e-3
SOLVER = DIIS(atol=1e-11)
FD_SOLVER = DIIS(atol=1e-13)  # the finite differences' solves: see the module docstring


class MLPCorrection(AbstractSemilocalFunctional):
    """PBE plus a small MLP enhancement correction on (r_s, s): e = e_PBE + e_x^LDA · g(r_s, s)."""

    family = "gga"
    mlp: eqx.nn.MLP
    base: AbstractSemilocalFunctional

    def energy_density(self, rho, sigma, tau):
        n = rho.sum(0)
        ok = n > 1e-12
        ns = jnp.where(ok, n, 1.0)
        grad2 = jnp.where(ok, sigma[0] + 2 * sigma[1] + sigma[2], 0.0)
        s = jnp.sqrt(grad2 + 1e-30) / (2 * (3 * jnp.pi**2) ** (1 / 3) * ns ** (4 / 3))
        x = jnp.stack([jnp.log1p(ns ** (1 / 3)), s / (1 + s)], axis=-1)
        g = jax.vmap(self.mlp)(x)[:, 0]
        e_lda = -0.75 * (3 / jnp.pi) ** (1 / 3) * ns ** (4 / 3)
        return self.base.energy_density(rho, sigma, tau) + jnp.where(ok, e_lda * g, 0.0)


def mlp_pbe():
    mlp = eqx.nn.MLP(2, 1, 8, 2, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    mlp = jax.tree.map(lambda w: 0.05 * w if eqx.is_inexact_array(w) else w, mlp)
    return MLPCorrection(mlp, nlxc.get_functional("pbe"))


@functools.lru_cache(maxsize=None)
def atom_n():
    from pyscf import gto

    return nlxc.System.from_pyscf(gto.M(atom="N 0 0 0", basis="def2-svp", spin=3, verbose=0), grid_level=1)


def sys_for(name):
    return atom_n() if name == "n_atom" else system(name)


def quantities(params, static, sys, adjoint=None, steps=200, field=0.0, solver=SOLVER, fallback=None,
               density_matrix=False):
    """(E, ∫(ρ−ρ_ref)², μx, μy, μz, ε_HOMO) of the converged SCF, and its converged flag
    (with `density_matrix=True`: the flag and the converged density matrix).

    `field` is a uniform electric field F_z (atomic units) added to the core Hamiltonian."""
    functional = eqx.combine(params, static)
    kwargs = {} if adjoint is None else {"adjoint": adjoint}
    if fallback is not None:
        kwargs["fallback"] = fallback
    sys = eqx.tree_at(lambda s: s.core_hamiltonian, sys, sys.core_hamiltonian + field * sys.dipole_integrals[2])
    r = solve(functional, sys, solver, max_steps=steps, **kwargs)
    rho = nlxc.density_on_grid(r.density_matrix, sys)
    rho_ref = nlxc.density_on_grid(sys.initial_density_matrix, sys)
    density_loss = jnp.sum(sys.grid_weights * (rho - rho_ref) ** 2)
    mu = nlxc.dipole_moment(r.density_matrix, sys)
    homo, _ = nlxc.homo_lumo(r.orbital_energies, r.occupations)
    values = jnp.concatenate([jnp.stack([r.energy, density_loss]), mu, homo[None]])
    return values, ((r.converged, r.density_matrix) if density_matrix else r.converged)


def finite_difference(params, static, sys, direction, **kwargs):
    f = eqx.filter_jit(lambda p: quantities(p, static, sys, **kwargs))
    values = []
    for k in (-2, -1, 1, 2):
        shifted = jax.tree.map(lambda p, v: p + k * STEP * v, params, direction)
        out, converged = f(shifted)
        assert bool(converged)
        values.append(np.asarray(out))
    return (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * STEP)


def random_direction(params, seed=1):
    """A random direction that moves every parameter relative to its own size."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [jax.random.normal(k, jnp.shape(x)) * jnp.maximum(jnp.abs(x), 1e-2) for k, x in zip(keys, leaves)],
    )


CASES = {
    # restricted, no degeneracy; PBE exchange κ and μ, correlation β, the PW92 fit constants
    "h2o-pbe": ("h2o", lambda: nlxc.get_functional("pbe")),
    # restricted, degenerate π orbitals; B3LYP's a0, ax, ac
    "n2-b3lyp": ("n2", lambda: nlxc.xc.B3LYP()),
    # restricted, triply degenerate HOMO; weights of an MLP correction
    "ch4-mlp": ("ch4", mlp_pbe),
    # unrestricted open-shell atom (quartet N): degenerate occupied 2p(α), degenerate virtual 2p(β)
    "n_atom-pbe": ("n_atom", lambda: nlxc.get_functional("pbe")),
}


@functools.lru_cache(maxsize=None)
def reverse_jacobian(case):
    """jax.jacrev of the quantities w.r.t. (functional parameters, field) at field 0, and the
    converged density matrix: one compilation serves the finite-difference, Hellmann–Feynman,
    dipole and unrolled tests."""
    name, make = CASES[case]
    sys = sys_for(name)
    params, static = eqx.partition(make(), eqx.is_inexact_array)
    jac, (converged, p_star) = eqx.filter_jit(
        jax.jacrev(lambda p, f: quantities(p, static, sys, field=f, density_matrix=True), argnums=(0, 1),
                   has_aux=True)
    )(params, jnp.asarray(0.0))
    assert bool(converged)
    return sys, params, static, jac, p_star


# h2o/PBE's Jacobian is shared with the Hellmann-Feynman, dipole and unrolled tests and stays in
# the default suite; the other cases (140-210 s each on 2 cores, mostly compilation) run in the
# slow set (`python -m pytest -q -m slow`, which .ci/run runs too)
@pytest.mark.parametrize("case", [c if c == "h2o-pbe" else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_reverse_mode_matches_finite_differences(case):
    sys, params, static, (jac, _), _ = reverse_jacobian(case)
    direction = random_direction(params)
    analytic = sum(np.tensordot(np.asarray(j), np.asarray(v), axes=np.ndim(v))
                   for j, v in zip(jax.tree.leaves(jac), jax.tree.leaves(direction)))
    assert np.all(np.isfinite(analytic))
    numeric = finite_difference(params, static, sys, direction, solver=FD_SOLVER)
    np.testing.assert_allclose(analytic, numeric, **TOL)


def assert_reverse_mode_matches_finite_differences(params, static, sys, **kwargs):
    """jax.jacrev of `quantities` (solved with `kwargs`), projected on a random direction, against
    the finite differences of the same solves."""
    jac, converged = eqx.filter_jit(jax.jacrev(lambda p: quantities(p, static, sys, **kwargs), has_aux=True))(params)
    assert bool(converged)
    direction = random_direction(params)
    analytic = sum(np.tensordot(np.asarray(j), np.asarray(v), axes=np.ndim(v))
                   for j, v in zip(jax.tree.leaves(jac), jax.tree.leaves(direction)))
    numeric = finite_difference(params, static, sys, direction, **kwargs)
    np.testing.assert_allclose(analytic, numeric, **TOL)


@pytest.mark.slow  # 170 s on 2 cores: the slow set, which .ci/run runs too
def test_gradient_through_the_newton_fallback_matches_finite_differences():
    """The fallback phase carries the implicit adjoint: a solve that CDIIS hands over to
    OrbitalNewton (a heavily damped DIIS with patience 1 stagnates at once) differentiates like
    any other, reverse mode against the finite differences of the same solves."""
    from nlxc.scf import OrbitalNewton

    sys = system("h2o")
    params, static = eqx.partition(nlxc.get_functional("pbe"), eqx.is_inexact_array)
    kwargs = dict(solver=DIIS(atol=1e-11, damping=0.95, patience=1), fallback=OrbitalNewton(atol=1e-11))
    r = solve(eqx.combine(params, static), sys, kwargs["solver"], fallback=kwargs["fallback"], max_steps=200)
    assert bool(r.converged) and int(r.strategy) == 1
    assert_reverse_mode_matches_finite_differences(params, static, sys, **kwargs)


@pytest.mark.slow  # the slow set, which .ci/run runs too
def test_gradient_through_the_stability_analysis_matches_finite_differences():
    """A solve whose first solver converges to a saddle point (spin-unrestricted stretched H2 from
    its α = β guess), which the stability analysis rotates downhill for the fallback
    (`strategy` 2), differentiates like any other: the implicit adjoint at the broken-symmetry
    minimum, reverse mode against the finite differences of the same solves."""
    from nlxc.scf import OrbitalNewton

    _, sys = stretched_h2()
    params, static = eqx.partition(nlxc.get_functional("pbe"), eqx.is_inexact_array)
    kwargs = dict(fallback=OrbitalNewton(atol=1e-11))
    r = solve(eqx.combine(params, static), sys, SOLVER, fallback=kwargs["fallback"], max_steps=200)
    assert bool(r.converged) and int(r.strategy) == 2
    assert_reverse_mode_matches_finite_differences(params, static, sys, **kwargs)


def test_forward_mode_matches_finite_differences():
    sys = system("h2o")
    params, static = eqx.partition(nlxc.get_functional("pbe"), eqx.is_inexact_array)
    direction = random_direction(params)
    _, tangent = eqx.filter_jit(lambda p, v: jax.jvp(lambda q: quantities(q, static, sys)[0], (p,), (v,)))(
        params, direction)
    numeric = finite_difference(params, static, sys, direction)
    np.testing.assert_allclose(np.asarray(tangent), numeric, **TOL)


def test_hellmann_feynman():
    """dE/dθ through the SCF equals ∂E/∂θ at the fixed density (the density is variational)."""
    sys, params, static, (jac, _), p_star = reverse_jacobian("h2o-pbe")

    def frozen(p):
        return nlxc.scf.energy_components(eqx.combine(p, static), sys, jax.lax.stop_gradient(p_star)).total

    partial = jax.grad(frozen)(params)
    for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(partial)):
        np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b), rtol=0, atol=1e-8)


def test_dipole_is_minus_field_derivative_of_energy():
    """μ_z from the density equals −dE/dF_z (+ nuclear part), F_z a uniform field in H_core."""
    sys, params, static, (_, d_field), p_star = reverse_jacobian("h2o-pbe")
    mu = nlxc.dipole_moment(p_star, sys)
    nuclear = float(jnp.dot(sys.atom_charges, sys.atom_coords[:, 2]))
    assert abs(float(mu[2])) > 0.1
    assert float(mu[2]) == pytest.approx(nuclear - float(d_field[0]), abs=1e-8)


def test_unrolled_adjoint_agrees_with_implicit():
    sys, params, static, (jac, _), _ = reverse_jacobian("h2o-pbe")

    def loss(p):
        q, _ = quantities(p, static, sys, UnrolledAdjoint(), 40)
        return q[0] + q[1]

    unrolled = eqx.filter_jit(jax.grad(loss))(params)
    for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(unrolled)):
        np.testing.assert_allclose(np.asarray(a)[0] + np.asarray(a)[1], np.asarray(b), rtol=1e-7, atol=1e-12)
    history = solve(eqx.combine(params, static), sys, SOLVER, max_steps=40,
                    adjoint=UnrolledAdjoint(densities=True)).history
    assert history.energies.shape == (40,) and history.density_matrices.shape == (40, 2, sys.nao, sys.nao)
    assert abs(float(history.energies[-1] - history.energies[-2])) < 1e-10


def test_non_converged_is_reported_to_the_gradient_caller():
    sys = system("h2o")
    params, static = eqx.partition(nlxc.xc.HF(), eqx.is_inexact_array)

    def loss(p, throw):
        r = solve(eqx.combine(p, static), sys, SOLVER, max_steps=3, throw=throw)
        return r.energy, r.converged

    (value, converged), grad = eqx.filter_jit(eqx.filter_value_and_grad(lambda p: loss(p, False), has_aux=True))(
        params)
    assert not bool(converged)
    with pytest.raises(Exception, match="SCF did not converge"):
        jax.block_until_ready(eqx.filter_jit(eqx.filter_grad(lambda p: loss(p, True)[0]))(params))


def test_fermi_dirac_smearing_gradient():
    """Fractional occupations: the density and its parameter derivative stay exact."""
    sys = system("n2")
    params, static = eqx.partition(nlxc.get_functional("pbe"), eqx.is_inexact_array)
    smearing = nlxc.scf.FermiDirac(0.05)

    def dens(p):
        r = solve(eqx.combine(p, static), sys, SOLVER, smearing=smearing)
        rho = nlxc.density_on_grid(r.density_matrix, sys)
        return jnp.sum(sys.grid_weights * rho**2), r.converged

    direction = random_direction(params)
    g, converged = eqx.filter_jit(jax.grad(dens, has_aux=True))(params)
    assert bool(converged)
    analytic = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
    f = eqx.filter_jit(lambda p: dens(p)[0])
    vals = [float(f(jax.tree.map(lambda p, v: p + k * STEP * v, params, direction))) for k in (-2, -1, 1, 2)]
    numeric = (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * STEP)
    assert analytic == pytest.approx(numeric, rel=1e-6)
