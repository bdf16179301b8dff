"""A minimum of the Kohn–Sham energy whose occupations are not aufbau.

NO with SVWN has no aufbau solution near its energy minimum: the fixed point P = D(F(P)) with
the lowest orbitals filled does not exist there, PySCF's DIIS does not converge, and PySCF's
second-order solver (`mf.newton()`) converges to a minimum whose lowest α virtual orbital lies
below the highest occupied one (by 6.5e-5 Ha in def2-SVP at grid level 3, 7.9e-3 Ha in STO-3G at
grid level 1, the case here: 10 basis functions, cheap). nlxc's default solve must converge there
too, say that the state is not aufbau (`SCFResult.aufbau`), and differentiate that state: the
implicit adjoint holds its occupations fixed (the maximum-overlap map). References: PySCF's
second-order solver with the same basis, grid and auxiliary basis, computed in the test, and
central finite differences of converged solves for the derivatives.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
from pyscf import df, dft, gto

import nlxc
from nlxc.scf import (
    CDIIS,
    OrbitalNewton,
    density_from_fock,
    is_aufbau,
    maximum_overlap_density,
    maximum_overlap_occupations,
    orbitals,
    solve,
)

pytestmark = pytest.mark.xdist_group("scf-nonaufbau")  # the tests share the System and programs

NO = "N 0 0 0; O 0 0 1.1508"  # Å
BASIS, GRID_LEVEL = "sto-3g", 1


@functools.lru_cache(maxsize=None)
def no_radical():
    mol = gto.M(atom=NO, basis=BASIS, spin=1, verbose=0)
    return mol, nlxc.System.from_pyscf(mol, grid_level=GRID_LEVEL)


@functools.lru_cache(maxsize=None)
def pyscf_newton():
    """PySCF's second-order UKS solver on the same work (SVWN, grid, JK-fit auxiliary basis)."""
    mol, _ = no_radical()
    mf = dft.UKS(mol, xc="svwn")
    mf.grids.level = GRID_LEVEL
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol)).newton()
    mf.conv_tol, mf.max_cycle, mf.verbose = 1e-10, 200, 0
    mf.kernel()
    assert mf.converged
    return mf


@pytest.mark.slow  # 52 s cold on 2 cores (compiling the solve with its fallback): the slow set, which .ci/run runs too
def test_default_solve_converges_to_the_non_aufbau_minimum_that_pyscf_newton_finds():
    mol, sys = no_radical()
    result = solve(nlxc.get_functional("svwn"), sys)
    mf = pyscf_newton()
    # PySCF's minimum is not aufbau: an α virtual orbital below the highest occupied one
    e_alpha, occ_alpha = mf.mo_energy[0], mf.mo_occ[0]
    assert e_alpha[occ_alpha > 0].max() > e_alpha[occ_alpha == 0].min()
    # nlxc converges there (the Newton fallback, after CDIIS stagnated) and says it is not aufbau
    assert bool(result.converged), (int(result.n_iterations), optx.RESULTS[result.result])
    assert result.result == optx.RESULTS.successful
    assert int(result.strategy) == 1
    assert not bool(result.aufbau)
    assert abs(float(result.energy) - float(mf.e_tot)) <= 1e-6, (float(result.energy), float(mf.e_tot))
    # a stationary point of PySCF's energy: its Fock matrix commutes with nlxc's density matrix
    dm = np.asarray(result.density_matrix)
    assert abs(mf.energy_tot(dm=dm) - float(result.energy)) <= 1e-7
    f, s = mf.get_fock(dm=dm), mf.get_ovlp()
    for k in range(2):
        assert np.abs(f[k] @ dm[k] @ s - s @ dm[k] @ f[k]).max() < 1e-6
    # the occupations are those of P* (one α hole below the highest occupied orbital), and the
    # HOMO lies above the LUMO
    occupations = np.asarray(result.occupations)
    np.testing.assert_array_equal(occupations.sum(axis=1), mol.nelec)
    c = np.asarray(result.orbital_coefficients)
    # (to 1e-5: the state is converged by its orbital gradient, 1e-6 Ha, along a nearly free
    # rotation, so P* and the projector on F(P*)'s orbitals differ at that level: 2.7e-6 measured
    # in a fresh venv with PySCF 2.15, below 1e-6 in another run)
    for k in range(2):
        occupied = c[k][:, occupations[k] > 0.5]
        np.testing.assert_allclose(occupied @ occupied.T, dm[k], atol=1e-5)
    homo, lumo = nlxc.homo_lumo(result.orbital_energies, result.occupations)
    assert float(homo) > float(lumo)
    assert float(homo) - float(lumo) == pytest.approx(
        e_alpha[occ_alpha > 0].max() - e_alpha[occ_alpha == 0].min(), abs=1e-4)


# the solves of the derivative test: converged tightly, so that the finite differences resolve
SOLVER, FALLBACK = CDIIS(atol=1e-10), OrbitalNewton(atol=1e-11, gradient_atol=1e-11)
STEP = 1e-3  # a.u. of field


def _quantities(field, functional, sys):
    """(E, μx, μy, μz) of the converged SCF in a uniform field F_z added to the core
    Hamiltonian, its converged flag and whether it is aufbau."""
    sys = eqx.tree_at(lambda s: s.core_hamiltonian, sys, sys.core_hamiltonian + field * sys.dipole_integrals[2])
    r = solve(functional, sys, SOLVER, fallback=FALLBACK, max_steps=200)
    mu = nlxc.dipole_moment(r.density_matrix, sys)
    return jnp.concatenate([r.energy[None], mu]), (r.converged, r.aufbau)


@pytest.mark.slow  # compiles the reverse-mode solve with the fallback: the slow set, which .ci/run runs too
def test_field_derivatives_at_the_non_aufbau_minimum_match_finite_differences():
    """d(E, μ)/dF_z by the implicit adjoint (reverse mode) at the non-aufbau minimum against
    fourth-order central differences of converged solves (steps ±1e-3, ±2e-3 a.u.): −dE/dF_z is
    the electronic dipole, dμ_z/dF_z the polarisability, which depends on the response of the
    density matrix, i.e. on the map the adjoint differentiates."""
    _, sys = no_radical()
    functional = nlxc.get_functional("svwn")
    f = eqx.filter_jit(functools.partial(_quantities, functional=functional, sys=sys))
    jac, (converged, aufbau) = eqx.filter_jit(jax.jacrev(f, has_aux=True))(jnp.asarray(0.0))
    assert bool(converged) and not bool(aufbau)
    values = []
    for k in (-2, -1, 1, 2):
        out, (converged, _) = f(jnp.asarray(k * STEP))
        assert bool(converged)
        values.append(np.asarray(out))
    numeric = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * STEP)
    analytic = np.asarray(jac)
    assert abs(analytic[3]) > 1.0  # the polarisability along the bond is not trivially zero
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_maximum_overlap_density_keeps_the_occupations_of_its_reference():
    """The map the fallback iterates and the adjoint differentiates: with an aufbau reference it
    is the aufbau density matrix; with a hole below the highest occupied orbital it returns that
    state (its fixed point), and its derivative (occupations held fixed) matches central
    differences of the map with the reference held fixed."""
    _, sys = no_radical()
    # a Fock-like matrix without degeneracies: the core Hamiltonian plus a random symmetric part
    r = jax.random.normal(jax.random.key(1), (2, sys.nao, sys.nao), sys.overlap.dtype)
    fock = sys.core_hamiltonian + 0.05 * (r + jnp.swapaxes(r, -1, -2))
    energies, c = orbitals(fock, sys)
    n_alpha, n_beta = (int(n) for n in np.asarray(sys.n_electrons))
    aufbau = density_from_fock(fock, sys)
    np.testing.assert_allclose(maximum_overlap_density(fock, aufbau, sys), aufbau, atol=1e-12)
    # α: the highest occupied orbital emptied, the lowest virtual one filled
    occ = np.zeros((2, c.shape[-1]))
    occ[0, : n_alpha - 1] = occ[0, n_alpha] = 1
    occ[1, :n_beta] = 1
    swapped = jnp.einsum("smi,si,sni->smn", c, jnp.asarray(occ), c)
    np.testing.assert_allclose(maximum_overlap_density(fock, swapped, sys), swapped, atol=1e-10)
    held = maximum_overlap_occupations(c, swapped, sys)
    np.testing.assert_array_equal(np.asarray(held), occ)
    assert not bool(is_aufbau(energies, held))
    assert bool(is_aufbau(energies, maximum_overlap_occupations(c, aufbau, sys)))
    # the derivative with the occupations held fixed, against central differences
    d = jax.random.normal(jax.random.key(0), fock.shape, fock.dtype)
    d = 0.5 * (d + jnp.swapaxes(d, -1, -2))
    mom = jax.jit(lambda f: maximum_overlap_density(f, swapped, sys))
    _, tangent = jax.jvp(mom, (fock,), (d,))
    step = 1e-5
    numeric = (mom(fock + step * d) - mom(fock - step * d)) / (2 * step)
    np.testing.assert_allclose(tangent, numeric, atol=1e-7)
