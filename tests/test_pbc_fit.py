"""Least-squares fits through the periodic SCF (`nlxc.pbc.fit_parameters` and its targets).

The cells are tiny: an H₂ molecule in a cubic box (gth-szv, gth-pade, Γ point, coarse uniform
grids of different sizes, so that stacking pads the grids). The default tests build the systems
and check stacking, the pressure target and the input errors without any SCF; the `slow` test
solves the SCFs, checks that padding leaves the energy unchanged, that the fitted residual's
Jacobian equals central finite differences of residuals computed here directly with
`nlxc.pbc.solve`, and that Levenberg–Marquardt recovers a parameter from targets made with it.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

import nlxc
from nlxc import pbc

pytestmark = pytest.mark.xdist_group("pbc")

A = 3.0  # Å, the cubic box; the two cells are 0.98 A and 1.02 A (the H₂ bond is kept)
MESHES = {0.98: 11, 1.02: 12}  # uniform grids of different sizes: stacking pads the smaller
PBE = nlxc.get_functional("pbe")


def _gpa_per_hartree_per_cubic_bohr():
    from pyscf.data import nist

    return nist.HARTREE2J / nist.BOHR_SI**3 / 1e9  # PySCF's constants (nlxc's CODATA 2018 agree to ~4e-7)


GPA_PER_HARTREE_PER_CUBIC_BOHR = _gpa_per_hartree_per_cubic_bohr()


@functools.cache
def system(scale):
    from pyscf.pbc import dft, gto
    from pyscf.pbc.dft import gen_grid

    cell = gto.Cell()
    cell.atom, cell.a = "H 0 0 0; H 0.74 0 0", np.eye(3) * A * scale
    cell.basis, cell.pseudo, cell.verbose = "gth-szv", "gth-pade", 0
    cell.build()
    mf = dft.KRKS(cell, cell.make_kpts([1, 1, 1])).density_fit()
    mf.grids = gen_grid.UniformGrids(cell)
    mf.grids.mesh = [MESHES[scale]] * 3
    return pbc.PeriodicSystem.from_pyscf(mf)


def point(stacked, i):
    return jax.tree.map(lambda x: x[i], stacked)


def test_stack_systems_pads_grids_and_fitting_vectors():
    small, large = system(0.98), system(1.02)
    assert small.ngrid < large.ngrid
    stacked = pbc.stack_systems([small, large])
    assert stacked.ao_values.shape == (2, *large.ao_values.shape[:2], large.ngrid, large.nao)
    assert stacked.cderi.shape[:3] == (2, large.nk, max(small.naux, large.naux))
    first = point(stacked, 0)
    # the padding: zero weights and zero AO values, the original entries unchanged
    np.testing.assert_array_equal(np.asarray(first.grid_weights[small.ngrid:]), 0.0)
    np.testing.assert_array_equal(np.asarray(first.ao_values[:, :, small.ngrid:]), 0.0)
    np.testing.assert_array_equal(np.asarray(first.ao_values[:, :, :small.ngrid]), np.asarray(small.ao_values))
    np.testing.assert_array_equal(np.asarray(first.nuclear_repulsion), np.asarray(small.nuclear_repulsion))
    assert first.restricted == small.restricted


def test_pressure_target_and_input_errors():
    small, large = system(0.98), system(1.02)
    target = pbc.pressure_target("H2", [small, large], 1.0)
    assert target.name == "H2" and target.systems.grid_weights.shape == (2, large.ngrid)
    # the residual of given energies: 100 p / (3B), p = -(F1 - F0)/(V1 - V0), B = 1 GPa in Hartree/Bohr³
    fake = type("R", (), {"free_energy": jnp.asarray([-1.0, -1.001])})()
    v0, v1 = float(small.volume), float(large.volume)
    b = 1.0 / GPA_PER_HARTREE_PER_CUBIC_BOHR
    np.testing.assert_allclose(np.asarray(target.residual(fake, target.systems)), [100 * 0.001 / (v1 - v0) / (3 * b)],
                               rtol=1e-6)
    with pytest.raises(nlxc.InputError, match="at least one"):
        pbc.stack_systems([])
    with pytest.raises(nlxc.InputError, match="PeriodicSystem"):
        pbc.stack_systems([small, "H2"])
    with pytest.raises(nlxc.InputError, match="exactly two"):
        pbc.pressure_target("H2", [small], 1.0)
    with pytest.raises(nlxc.InputError, match="same volume"):
        pbc.pressure_target("H2", [small, small], 1.0)
    with pytest.raises(nlxc.InputError, match="bulk_modulus"):
        pbc.pressure_target("H2", [small, large], -1.0)
    with pytest.raises(nlxc.InputError, match="FitTarget"):
        pbc.fit_parameters(lambda p: PBE, jnp.zeros(1), [small])
    with pytest.raises(nlxc.InputError, match="at least one"):
        pbc.fit_parameters(lambda p: PBE, jnp.zeros(1), [])
    with pytest.raises(nlxc.InputError, match="float arrays"):
        pbc.fit_parameters(lambda p: PBE, [1, 2], [target])
    with pytest.raises(nlxc.InputError, match="max_steps"):
        pbc.fit_parameters(lambda p: PBE, jnp.zeros(1), [target], max_steps=0)
    with pytest.raises(nlxc.InputError, match="Gauss-Newton"):
        pbc.fit_parameters(lambda p: PBE, jnp.zeros(1), [target], solver=optx.BFGS(rtol=1e-6, atol=1e-6))
    with pytest.raises(nlxc.InputError, match="not available for periodic"):
        pbc.fit_parameters(lambda p: nlxc.get_functional("b3lyp"), jnp.zeros(1), [target])


def scaled_mu(phi):
    """PBE with μ scaled by 1 + 0.5 tanh(φ) (bounded)."""
    return eqx.tree_at(lambda f: f.terms[0].mu, PBE, PBE.terms[0].mu * (1.0 + 0.5 * jnp.tanh(phi[0])))


@pytest.mark.slow
def test_fit_recovers_a_parameter_through_the_periodic_scf():
    small, large = system(0.98), system(1.02)
    tight = pbc.KCDIIS(atol=1e-11)
    base = pbc.pressure_target("H2", [small, large], 1.0)
    stacked = base.systems

    # padding leaves the energy unchanged (the smaller cell, padded vs. as built)
    padded = pbc.solve(PBE, point(stacked, 0), tight)
    plain = pbc.solve(PBE, small, tight)
    assert bool(padded.converged) and bool(plain.converged)
    assert abs(float(padded.energy) - float(plain.energy)) < 1e-10

    def direct(phi):  # the residual computed here with nlxc.pbc.solve, one cell at a time
        energies = [float(pbc.solve(scaled_mu(jnp.asarray([phi])), s, tight).free_energy) for s in (small, large)]
        pressure = -(energies[1] - energies[0]) / (float(large.volume) - float(small.volume))
        return 100 * pressure / (3 / GPA_PER_HARTREE_PER_CUBIC_BOHR)

    phi_star = 0.4
    r_star = direct(phi_star)
    target = pbc.FitTarget("H2", stacked, lambda results, systems: base.residual(results, systems) - r_star)
    fit = pbc.fit_parameters(scaled_mu, jnp.zeros(1), [target], scf_solver=tight, max_steps=20)
    assert fit.ok, fit.as_dict()
    assert all(bool(jnp.all(c)) for c in fit.converged)
    phi = float(fit.parameters[0])
    assert abs(phi - phi_star) < 1e-3, (phi, fit.as_dict())
    assert abs(float(fit.residuals[0])) < 1e-4 * max(1.0, abs(r_star))
    # the Jacobian through the implicit adjoint equals central differences of the direct residual
    h = 1e-3
    fd = (direct(phi + h) - direct(phi - h)) / (2 * h)
    jac = float(fit.jacobian[0, 0])
    assert np.isfinite(jac) and jac != 0.0
    assert abs(jac - fd) <= 1e-5 * abs(fd), (jac, fd)
