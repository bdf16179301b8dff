"""Closed shells use the spin-unpolarised (ζ = 0) forms of the semilocal functionals.

A restricted System evaluates `energy_density_unpolarised(n, |∇n|², τ)` once on the total
density instead of `energy_density` on two equal spin channels
(`AbstractSemilocalFunctional.energy_density_of`). The ζ = 0 forms must be the polarised
forms at ρα = ρβ:

- pointwise, every override against the base class's default (the polarised form at ρσ = n/2,
  σσσ' = σ/4, τσ = τ/2), values and derivatives, on molecular, random and threshold-sized
  densities, for every semilocal functional and both exact-constraint layers with a network;
- on a molecule (H2O, STO-3G, grid level 1), for every name of `nlxc.xc.available()`: E_xc and
  ∂E_xc/∂Pσ of the restricted System (unpolarised path) against those of the unrestricted
  System of the same molecule and grid (polarised path) at the same α = β density matrix, to
  1e-12 Ha, and the semilocal ones against PySCF's `nr_rks` (libxc, spin-unpolarised) on the
  same grid.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from pyscf import dft, gto
from xc_reference import molecular_polarized_density, random_polarized_density

import nlxc
from nlxc.models import MLP
from nlxc.scf import energy_components
from nlxc.xc import (
    AbstractSemilocalFunctional,
    B88Exchange,
    LYPCorrelation,
    PBECorrelation,
    PBEExchange,
    PW92Correlation,
    R2SCANCorrelation,
    R2SCANExchange,
    SemilocalSum,
    SlaterExchange,
    VWN5Correlation,
    VWNRPACorrelation,
    available,
    get_functional,
)
from nlxc.xc.mgga import SCANCorrelation, SCANExchange

# |unpolarised − polarised| ≤ rtol (|polarised| + 1e-8 max|polarised|), pointwise. Derivatives get
# more room: where τ ≈ τ_W at tiny densities (molecular tails), α = (τ − τ_W)/τ_unif amplifies the
# rounding of |∇n|² (σαα + 2σαβ + σββ against 2σσσ + 2σαβ) by τ/(τ − τ_W) ~ 1e3; measured ≤ 1.5e-11.
POINT_RTOL = {"e": 1e-11, "vrho": 1e-10, "vsigma": 1e-10, "vtau": 1e-10}
ENERGY_ATOL = 1e-12  # Ha, E_xc and ∂E_xc/∂Pσ on the molecule
PYSCF_ATOL = 1e-9  # Ha, against libxc through PySCF (the existing tests' accuracy on e_xc)

FUNCTIONALS = {
    "slater": SlaterExchange,
    "vwn5": VWN5Correlation,
    "vwn_rpa": VWNRPACorrelation,
    "pw92": PW92Correlation,
    "pw92_mod": PW92Correlation.modified,
    "b88": B88Exchange,
    "pbe_x": PBEExchange,
    "pbe_c": PBECorrelation,
    "lyp": LYPCorrelation,
    "r2scan_x": R2SCANExchange,
    "r2scan_c": R2SCANCorrelation,
    "scan_x": SCANExchange,
    "scan_c": SCANCorrelation,
    "b3lyp_semilocal": lambda: SemilocalSum(
        [0.08, 0.72, 0.19, 0.81], (SlaterExchange(), B88Exchange(), VWNRPACorrelation(), LYPCorrelation())
    ),
    # learnable layers with spin-resolved features (exchange: per spin channel; correlation: ζ)
    "enhanced_x_gga": lambda: SlaterExchange() * MLP(1, final_scale=50.0, key=jr.key(1)),
    "enhanced_x_mgga": lambda: SlaterExchange() * MLP(2, final_scale=50.0, key=jr.key(2)),
    "enhanced_c_gga": lambda: PW92Correlation.modified() * MLP(3, final_scale=50.0, key=jr.key(3)),
    "enhanced_c_mgga": lambda: PW92Correlation.modified() * MLP(4, final_scale=50.0, key=jr.key(4)),
}

# totals at and around the density thresholds (1e-15 … 1e-11), where channels are clamped or screened
TINY = [0.0, 1e-300, 1e-20, 1e-16, 1e-15, 1.5e-15, 2e-15, 3e-15, 1e-14, 2e-14, 3e-14, 1e-12, 2e-12, 1e-11,
        2e-11, 3e-11]


@functools.lru_cache(maxsize=None)
def unpolarised_points():
    """(n, |∇n|², τ) of spin-summed molecular and random densities plus threshold-sized totals
    (with zero and nonzero gradients)."""
    parts = [molecular_polarized_density(), random_polarized_density(1000, seed=1)]
    n, s, t = [], [], []
    for rho, grad, tau in parts:
        g = grad.sum(0)
        n.append(rho.sum(0))
        s.append(np.einsum("xn,xn->n", g, g))
        t.append(tau.sum(0))
    tiny = np.array(TINY)
    n += [tiny, tiny]
    s += [np.zeros_like(tiny), (tiny ** (4.0 / 3.0)) ** 2 * 3.0]
    t += [np.zeros_like(tiny), tiny ** (5.0 / 3.0) * 5.0]
    return tuple(jnp.asarray(np.concatenate(x)) for x in (n, s, t))


@eqx.filter_jit
def _both_paths(functional, n, s, t):
    """(e, ∂E/∂n, ∂E/∂σ, ∂E/∂τ) of the override and of the base class's polarised default."""

    def unpolarised(n, s, t):
        return functional.energy_density_unpolarised(n, s, t)

    def polarised(n, s, t):
        return AbstractSemilocalFunctional.energy_density_unpolarised(functional, n, s, t)

    out = []
    for fn in (unpolarised, polarised):
        e, pullback = jax.vjp(fn, n, s, t)
        out.append((e, *pullback(jnp.ones_like(e))))
    return out


@pytest.mark.parametrize("name", list(FUNCTIONALS))
def test_unpolarised_form_equals_polarised_form(name):
    functional = FUNCTIONALS[name]()
    ours, reference = _both_paths(functional, *unpolarised_points())
    for label, a, b in zip(("e", "vrho", "vsigma", "vtau"), ours, reference):
        a, b = np.asarray(a), np.asarray(b)
        assert np.all(np.isfinite(a)), f"{name} {label}: non-finite"
        bound = POINT_RTOL[label] * (np.abs(b) + 1e-8 * np.max(np.abs(b)))
        bad = np.abs(a - b) > bound
        assert not bad.any(), (f"{name} {label}: {bad.sum()} points differ, e.g. {a[bad][:3]} vs "
                               f"{b[bad][:3]}")
        # screened points stay exactly zero in both forms
        if label == "e":
            assert np.array_equal(a == 0.0, b == 0.0), f"{name}: screening differs"


def test_restricted_system_takes_the_unpolarised_path():
    """A restricted System calls `energy_density_unpolarised`, an unrestricted one does not."""

    class Marked(SlaterExchange):
        def energy_density_unpolarised(self, rho, sigma, tau):
            return 2.0 * super().energy_density_unpolarised(rho, sigma, tau)

    restricted, unrestricted, dm = water()
    for system, factor in ((restricted, 2.0), (unrestricted, 1.0)):
        density = nlxc.Density.from_density_matrix(dm, system)
        marked = Marked()(density, dm, system)
        plain = SlaterExchange()(density, dm, system)
        np.testing.assert_allclose(float(marked), factor * float(plain), rtol=1e-14)


# --------------------------------------------------------------------------------------------
# one molecule, every functional of nlxc.xc.available()
# --------------------------------------------------------------------------------------------

WATER = "O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692"


@functools.lru_cache(maxsize=None)
def _water_mole_and_grid():
    mol = gto.M(atom=WATER, basis="sto-3g", verbose=0)
    grids = dft.gen_grid.Grids(mol)
    grids.level = 1
    grids.build(with_non0tab=False)
    return mol, grids


@functools.lru_cache(maxsize=None)
def water():
    """(restricted System, unrestricted System, α = β density matrix (2, nao, nao)) of H2O in
    STO-3G on one PySCF grid of level 1; the density matrix is PySCF's minao guess."""
    mol, grids = _water_mole_and_grid()
    restricted = nlxc.System.from_pyscf(mol, grids=grids, restricted=True)
    unrestricted = nlxc.System.from_pyscf(mol, grids=grids, restricted=False)
    dm = dft.RKS(mol).get_init_guess(key="minao")
    return restricted, unrestricted, jnp.asarray(np.stack([dm / 2, dm / 2]))


@eqx.filter_jit
def _xc_energies_and_potentials(functionals, system, dm):
    """E_xc and ∂E_xc/∂Pσ (symmetrised) of every functional: one compiled program per System."""

    def xc(functional, p):
        return energy_components(functional, system, p).xc

    out = []
    for functional in functionals:
        e, grad = jax.value_and_grad(functools.partial(xc, functional))(dm)
        out.append((e, 0.5 * (grad + jnp.swapaxes(grad, -1, -2))))
    return out


@functools.lru_cache(maxsize=None)
def _water_results():
    restricted, unrestricted, dm = water()
    functionals = tuple(get_functional(name) for name in available())
    return (_xc_energies_and_potentials(functionals, restricted, dm),
            _xc_energies_and_potentials(functionals, unrestricted, dm))


@pytest.mark.parametrize("index", range(len(available())), ids=available())
def test_restricted_energy_and_fock_equal_polarised(index):
    """E_xc and ∂E_xc/∂Pσ of a closed shell: unpolarised path (restricted System) equals the
    polarised path (unrestricted System, same grid, Pα = Pβ) to 1e-12 Ha."""
    (e_r, f_r), (e_u, f_u) = (results[index] for results in _water_results())
    assert abs(float(e_r) - float(e_u)) <= ENERGY_ATOL
    assert float(jnp.max(jnp.abs(f_r - f_u))) <= ENERGY_ATOL
    # Fα = Fβ for the restricted System
    np.testing.assert_array_equal(np.asarray(f_r[0]), np.asarray(f_r[1]))


@pytest.mark.parametrize("name", ["lda", "svwn", "pbe", "blyp", "b3lyp", "b3lyp5", "pbe0", "r2scan"])
def test_restricted_semilocal_part_matches_pyscf(name):
    """The semilocal part's E_xc and V_xc on the restricted System against PySCF's `nr_rks`
    (libxc spin-unpolarised) on the same grid and density matrix."""
    assert name in available()
    mol, grids = _water_mole_and_grid()
    restricted, _, dm = water()
    index = available().index(name)
    e_r, f_r = _water_results()[0][index]
    ni = dft.numint.NumInt()
    hyb = ni.hybrid_coeff(name)
    p = np.asarray(dm[0] + dm[1])
    _, exc, vxc = ni.nr_rks(mol, grids, name, p)
    if hyb:
        # remove the exact-exchange part with nlxc's own ExactExchange at the same density matrix
        exx = nlxc.xc.ExactExchange(hyb)
        e_x, f_x = _xc_energies_and_potentials((exx,), restricted, dm)[0]
        e_r, f_r = e_r - e_x, f_r - f_x
    assert abs(float(e_r) - exc) <= PYSCF_ATOL
    np.testing.assert_allclose(np.asarray(f_r[0]), vxc, atol=PYSCF_ATOL, rtol=0)
