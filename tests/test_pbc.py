"""The periodic k-point SCF (`nlxc.pbc`) against PySCF's `KRKS`/`KUKS` with GDF, and its gradients.

References are computed by PySCF inside the tests, with the same cell, k-points, grid and GDF
object as the nlxc system (shared, so each is built once). One small case (Si, gth-szv, 2×2×2,
SVWN on a coarse uniform grid) runs in the default suite; the acceptance cases (PySCF's default
grids; Si, LiF, graphene, Al with Fermi–Dirac smearing, a spin-polarised H₃ lattice) and the
finite-difference gradient checks are `slow`.
"""

import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import nlxc
from nlxc import pbc
from nlxc.scf import FermiDirac

pytestmark = [
    pytest.mark.xdist_group("pbc"),
    # PySCF warns that Al's 3 electrons per cell do not fit spin 0 (a metal: smearing handles it)
    pytest.mark.filterwarnings("ignore:Electron number 3 and spin 0"),
]

ENERGY_TOL = 1e-7  # Hartree per cell
LDA = "lda,vwn"  # Slater + VWN5 (PySCF's "lda" alone is Slater exchange only)
PBE = "pbe"
SMEARING = 0.02  # Hartree


def _fcc(a):
    h = 0.5 * a
    return [[0, h, h], [h, 0, h], [h, h, 0]]


def _graphene():
    a, vacuum = 2.46, 10.0
    lattice = np.array([[a, 0, 0], [-0.5 * a, 0.5 * np.sqrt(3) * a, 0], [0, 0, vacuum]])
    frac = np.array([[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0]])
    xyz = frac @ lattice
    return "; ".join(f"C {x:.10f} {y:.10f} {z:.10f}" for x, y, z in xyz), lattice.tolist()


# Å; (atoms, lattice vectors, basis, extra Cell attributes)
CELLS = {
    "si": ("Si 0 0 0; Si 1.3575 1.3575 1.3575", _fcc(5.43), "gth-szv", {}),
    "lif": ("Li 0 0 0; F 2.015 2.015 2.015", _fcc(4.03), "gth-szv", {}),
    "graphene": (*_graphene(), "gth-szv", {"dimension": 2}),
    "al": ("Al 0 0 0", _fcc(4.05), "gth-szv", {}),
    # three H atoms per simple-cubic cell, one unpaired electron per cell (nα = 2, nβ = 1)
    "h3_spin": ("H 0 0 0; H 1.5 0 0; H 0 1.5 0", [[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]], "gth-dzv", {"spin": 1}),
}


@functools.cache
def cell(name):
    from pyscf.pbc import gto

    atom, lattice, basis, extra = CELLS[name]
    c = gto.Cell()
    c.atom, c.a, c.basis, c.pseudo, c.verbose = atom, lattice, basis, "gth-pade", 0
    for key, value in extra.items():
        setattr(c, key, value)
    c.build()
    return c


@functools.cache
def setup(name, kmesh, unrestricted=False, grid_mesh=None):
    """A PySCF KS object (not run) and the nlxc PeriodicSystem built from it (GDF, grid shared)."""
    from pyscf.pbc import dft
    from pyscf.pbc.dft import gen_grid

    c = cell(name)
    mf = (dft.KUKS if unrestricted else dft.KRKS)(c, c.make_kpts(list(kmesh))).density_fit()
    if grid_mesh is not None:
        mf.grids = gen_grid.UniformGrids(c)
        mf.grids.mesh = list(grid_mesh)
    return mf, pbc.PeriodicSystem.from_pyscf(mf)


@functools.cache
def pyscf_energies(name, kmesh, xc, unrestricted=False, grid_mesh=None, smearing=None):
    """PySCF's (e_tot, e_free) on the setup's GDF and grid, tightly converged."""
    from pyscf.pbc.scf.addons import smearing_

    base, _ = setup(name, kmesh, unrestricted, grid_mesh)
    mf = base.__class__(base.cell, base.kpts).density_fit()
    mf.with_df, mf.grids = base.with_df, base.grids
    if unrestricted:  # PySCF's KUKS reads cell.spin per k-point supercell, nlxc per cell
        c, nk = base.cell, len(base.kpts)
        mf.nelec = ((c.nelectron + c.spin) // 2 * nk, (c.nelectron - c.spin) // 2 * nk)
    if smearing is not None:
        mf = smearing_(mf, smearing, method="fermi")
    mf.xc, mf.conv_tol, mf.max_cycle = xc, 1e-11, 200
    e_tot = mf.kernel()
    assert mf.converged
    return e_tot, (mf.e_free if smearing is not None else e_tot)


# --- the default-suite case --------------------------------------------------------------------

SMALL = ("si", (2, 2, 2), False, (11, 11, 11))  # Si, gth-szv, 2×2×2, 11³ uniform grid


@pytest.mark.slow  # moved from the default suite to keep it under 20 min cold (2026-12-07)
def test_small_si_lda_matches_pyscf():
    _, system = setup(*SMALL)
    result = pbc.solve(nlxc.get_functional(LDA), system)
    e_ref, _ = pyscf_energies(*SMALL[:2], LDA, *SMALL[2:])
    assert bool(result.converged)
    assert abs(float(result.energy) - e_ref) < ENERGY_TOL
    assert abs(float(result.components.total) - float(result.energy)) < 1e-12
    # an insulator: 4 occupied bands per spin at every k-point, and no entropy
    assert np.allclose(np.asarray(result.occupations).sum(-1), 4.0)
    assert float(result.entropy) == 0.0 and float(result.free_energy) == float(result.energy)
    density = np.asarray(result.density_matrix)
    assert np.allclose(density, np.conj(np.swapaxes(density, -1, -2)))  # Hermitian per k


def test_input_errors():
    _, system = setup(*SMALL)
    with pytest.raises(nlxc.InputError, match="not available for periodic"):
        pbc.solve(nlxc.get_functional("b3lyp"), system)
    with pytest.raises(nlxc.InputError, match="get_functional"):
        pbc.solve("pbe", system)
    with pytest.raises(nlxc.InputError, match="PeriodicSystem"):
        pbc.solve(nlxc.get_functional(LDA), "si")
    with pytest.raises(nlxc.InputError, match="max_steps"):
        pbc.solve(nlxc.get_functional(LDA), system, max_steps=0)
    with pytest.raises(nlxc.InputError, match="initial_density_matrix"):
        pbc.solve(nlxc.get_functional(LDA), system, initial_density_matrix=jnp.zeros((2, 8, 8)))
    with pytest.raises(nlxc.InputError, match="kmesh"):
        pbc.PeriodicSystem.from_cell(cell("si"), kmesh=(2, 0, 2))


# --- acceptance: PySCF's default grids (slow) ----------------------------------------------------

INSULATORS = [("si", (2, 2, 2)), ("lif", (2, 2, 2)), ("graphene", (2, 2, 1))]


@pytest.mark.slow
@pytest.mark.parametrize("name,kmesh", INSULATORS, ids=[n for n, _ in INSULATORS])
@pytest.mark.parametrize("xc", [LDA, PBE])
def test_insulator_energy_matches_pyscf(name, kmesh, xc):
    _, system = setup(name, kmesh)
    result = pbc.solve(nlxc.get_functional(xc), system)
    e_ref, _ = pyscf_energies(name, kmesh, xc)
    assert bool(result.converged)
    assert abs(float(result.energy) - e_ref) < ENERGY_TOL


@pytest.mark.slow
@pytest.mark.parametrize("xc", [LDA, PBE])
def test_metal_fermi_dirac_matches_pyscf(xc):
    """Al (fcc, 3 electrons per cell) with Fermi–Dirac smearing: PySCF's `e_tot` is the energy of
    the smeared density (not the free energy, which is `e_free` = e_tot − σS)."""
    _, system = setup("al", (2, 2, 2))
    with pytest.raises(nlxc.InputError, match="odd number"):
        pbc.solve(nlxc.get_functional(xc), system)
    result = pbc.solve(nlxc.get_functional(xc), system, smearing=FermiDirac(SMEARING))
    e_tot, e_free = pyscf_energies("al", (2, 2, 2), xc, smearing=SMEARING)
    assert bool(result.converged)
    assert abs(float(result.energy) - e_tot) < ENERGY_TOL
    assert abs(float(result.free_energy) - e_free) < ENERGY_TOL
    assert float(result.entropy) > 0
    assert abs(float(np.sum(np.asarray(result.occupations).sum(-1).mean(-1))) - 3.0) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("xc", [LDA, PBE])
def test_spin_polarised_matches_pyscf_kuks(xc):
    _, system = setup("h3_spin", (2, 2, 2), True)
    assert not system.restricted
    result = pbc.solve(nlxc.get_functional(xc), system)
    e_ref, _ = pyscf_energies("h3_spin", (2, 2, 2), xc, True)
    assert bool(result.converged)
    assert abs(float(result.energy) - e_ref) < ENERGY_TOL
    # one Fermi level per spin over all k-points: per k-point the counts vary (the bands overlap
    # across the Brillouin zone), the mean over k-points is (nα, nβ) = (2, 1)
    occupied = np.asarray(result.occupations).sum(-1).mean(-1)
    assert np.allclose(occupied, [2.0, 1.0])


# --- gradients through the periodic SCF (slow) ---------------------------------------------------


def _loss(functional, system, smearing):
    # tight convergence, so that the finite differences of a non-variational quantity are exact
    result = pbc.solve(functional, system, pbc.KCDIIS(atol=1e-11), smearing=smearing)
    loss = result.free_energy + 0.3 * result.components.coulomb
    if smearing is not None:  # μ (the highest occupied level of an insulator is degenerate in Si)
        loss = loss - 0.1 * result.fermi_level
    return loss


@pytest.mark.slow
@pytest.mark.parametrize("case", ["insulator", "metal"])
def test_parameter_gradient_matches_finite_differences(case):
    if case == "insulator":
        _, system = setup(*SMALL)
        smearing = None
    else:
        _, system = setup("al", (2, 2, 2), False, (11, 11, 11))
        smearing = FermiDirac(SMEARING)
    functional = nlxc.get_functional(PBE)
    grad = eqx.filter_jit(eqx.filter_grad(_loss))(functional, system, smearing)
    g = np.asarray(grad.coefficients)
    assert np.all(np.isfinite(g))
    h = 1e-4
    for i in range(len(g)):
        def shifted(d, i=i):
            return eqx.tree_at(lambda f: f.coefficients, functional, functional.coefficients.at[i].add(d))

        fd = (float(_loss(shifted(h), system, smearing)) - float(_loss(shifted(-h), system, smearing))) / (2 * h)
        assert abs(g[i] - fd) <= 1e-6 * abs(fd), (i, g[i], fd)


# --- models built from the semilocal baselines (slow) --------------------------------------------


@pytest.mark.slow
def test_meta_gga_matches_pyscf():
    _, system = setup(*SMALL)
    result = pbc.solve(nlxc.get_functional("r2scan"), system)
    e_ref, _ = pyscf_energies(*SMALL[:2], "r2scan", *SMALL[2:])
    assert bool(result.converged)
    assert abs(float(result.energy) - e_ref) < ENERGY_TOL


@pytest.mark.slow
def test_learned_enhancement_gradient_matches_finite_differences():
    """A local learned model (Slater exchange × MLP enhancement + PW92 correlation): the
    directional derivative along a random parameter direction equals central differences."""
    import jax

    from nlxc.models import MLP

    _, system = setup(*SMALL)
    model = nlxc.xc.SlaterExchange() * MLP(1, width=8, key=jax.random.PRNGKey(0)) + nlxc.xc.PW92Correlation()
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    raw = [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    norm = float(jnp.sqrt(sum(jnp.sum(r * r) for r in raw)))
    direction = jax.tree.unflatten(treedef, [r / norm for r in raw])  # unit length

    def loss(p):
        return _loss(eqx.combine(p, static), system, None)

    grad = eqx.filter_jit(jax.grad(loss))(params)
    slope = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
    assert np.isfinite(slope) and slope != 0.0
    h = 1e-4

    def moved(t):
        return jax.tree.map(lambda x, d: x + t * d, params, direction)

    def central(step):
        return (float(loss(moved(step))) - float(loss(moved(-step)))) / (2 * step)

    fd = (4.0 * central(h / 2) - central(h)) / 3.0  # Richardson: the O(h²) error removed
    assert abs(slope - fd) <= 1e-6 * abs(fd), (slope, fd)
