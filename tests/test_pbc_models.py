"""Atom-centred nonlocal models in crystals: neighbour lists over lattice translations, and the
models inside the periodic SCF (`nlxc.pbc.solve`).

- the periodic neighbour list equals a brute-force search over the atom images;
- supercell consistency: a 2×1×1 supercell (the primitive cell's grid, density and atoms
  repeated) has twice the primitive cell's model energy (fails if images are missing);
- a molecule in a large box has the molecular model energy, also when the molecule straddles
  the box's faces (its grid points and atoms wrapped into the cell: needs the images);
- shifting all atoms by a lattice vector, wrapping one atom or the grid into the cell changes nothing;
- PBE + AtomCentredCorrection through `nlxc.pbc.solve` converges, and its parameter gradient
  equals central finite differences (slow);
- the other nonlocal models keep raising the one-line InputError.

Cells are tiny (H2 in a 3 Å triclinic box, gth-szv, a coarse uniform grid): the models' cutoff
(6 Bohr) is longer than the cell, so every grid point couples to many atom images.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import nlxc
from nlxc import pbc
from nlxc.models import (
    AtomAttention,
    AtomCentredCorrection,
    EquivariantCorrection,
    periodic_atom_neighbours,
)

pytestmark = pytest.mark.xdist_group("pbc")

# Å; a skewed (triclinic) box, so that the translation search is tested off the axes
LATTICE = [[3.0, 0.0, 0.0], [0.4, 2.9, 0.0], [0.3, -0.2, 3.1]]
ATOMS = "H 0.3 0.2 0.4; H 0.3 0.2 1.14"
MESH = (9, 9, 9)


def _models():
    return {
        "atom-centred": AtomCentredCorrection(key=jr.key(1), final_scale=1.0),
        "equivariant": EquivariantCorrection(key=jr.key(2), final_scale=1.0),
    }


@functools.cache
def cell_system(kmesh=(1, 1, 1), mesh=MESH, basis="gth-szv"):
    """H2 in the triclinic box, `basis`/gth-pade, PySCF's uniform grid of `mesh` points."""
    from pyscf.pbc import dft, gto
    from pyscf.pbc.dft import gen_grid

    cell = gto.Cell()
    cell.atom, cell.a, cell.basis, cell.pseudo, cell.verbose = ATOMS, LATTICE, basis, "gth-pade", 0
    cell.build()
    mf = dft.KRKS(cell, cell.make_kpts(list(kmesh))).density_fit()
    mf.grids = gen_grid.UniformGrids(cell)
    mf.grids.mesh = list(mesh)
    return pbc.PeriodicSystem.from_pyscf(mf)


@eqx.filter_jit
def _evaluate(model, density, system):
    return model(density, None, system)


def periodic_energy(model, system, density) -> float:
    """The model's energy per cell, with the neighbour list over the cell's atom images."""
    return float(_evaluate(pbc.prepare_functional(model, system), density, system))


def _replace(system, grid_coords=None, grid_weights=None, atom_coords=None, atom_charges=None, lattice=None):
    """The system with some geometry arrays replaced (the models read only these)."""
    new = {"grid_coords": grid_coords, "grid_weights": grid_weights, "atom_coords": atom_coords,
           "atom_charges": atom_charges, "lattice_vectors": lattice}
    new = {k: v for k, v in new.items() if v is not None}
    return eqx.tree_at(lambda s: tuple(getattr(s, k) for k in new), system, tuple(new.values()))


def _density(system):
    return pbc.density_features(system.initial_density_matrix, system)


def test_periodic_neighbours_match_brute_force():
    """Every atom image within the cutoff of every grid point, and nothing else, with its
    translation; padding takes no part; too small a capacity raises."""
    system = cell_system()
    lattice = np.asarray(system.lattice_vectors)
    coords = np.asarray(system.grid_coords)
    atoms = np.asarray(system.atom_coords)
    cutoff = 6.0
    # a padded atom (charge 0) and a padded grid point (weight 0)
    coords = np.concatenate([coords, [[0.1, 0.2, 0.3]]])
    weights = np.concatenate([np.asarray(system.grid_weights), [0.0]])
    atoms = np.concatenate([atoms, [[0.5, 0.5, 0.5]]])
    charges = np.concatenate([np.asarray(system.atom_charges), [0.0]])
    nb = periodic_atom_neighbours(coords, weights, atoms, charges, lattice, cutoff, 64)
    assert nb.periodic and np.all(np.asarray(nb.translations[0]) == 0.0)
    n = np.stack(np.meshgrid(*[np.arange(-5, 6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    images = (n @ lattice)[:, None, :] + atoms[None, :2, :]  # (nT, 2, 3)
    dist = np.linalg.norm(coords[:, None, None, :] - images[None], axis=-1)  # (ngrid, nT, 2)
    expected = (dist < cutoff) & (weights != 0)[:, None, None]
    assert expected.sum(axis=(1, 2)).max() > 8  # many images per grid point: the cell is small
    index, mask = np.asarray(nb.index), np.asarray(nb.mask)
    shift = np.asarray(nb.translations)[np.asarray(nb.image)]
    rows, slots = np.nonzero(mask)
    assert mask.sum() == expected.sum() and not mask[-1].any()
    assert np.all(index[rows, slots] < 2)  # never the padded atom
    found = np.linalg.norm(coords[rows] - atoms[index[rows, slots]] - shift[rows, slots], axis=-1)
    assert np.all(found < cutoff)
    # each listed (point, atom, T) is a distinct image
    keys = {(r, i, *np.round(t, 8)) for r, i, t in zip(rows, index[rows, slots], shift[rows, slots])}
    assert len(keys) == len(rows)
    with pytest.raises(nlxc.InputError, match="max_atoms"):
        periodic_atom_neighbours(coords, weights, atoms, charges, lattice, cutoff, 4)
    with pytest.raises(nlxc.InputError, match="outside jax.jit"):
        jax.jit(lambda g: periodic_atom_neighbours(g, weights, atoms, charges, lattice, cutoff, 64).index)(coords)


@pytest.mark.parametrize("name", ["atom-centred", "equivariant"])
def test_supercell_energy_is_twice_the_primitive_cell(name):
    """A 2×1×1 supercell whose grid, density and atoms are the primitive cell's repeated has
    twice its model energy; without the images (the molecular neighbour list) it does not."""
    model = _models()[name]
    system = cell_system()
    density = _density(system)
    a1 = system.lattice_vectors[0]
    double = lambda x: jnp.concatenate([x, x], axis=-1)
    supercell = _replace(
        system,
        grid_coords=jnp.concatenate([system.grid_coords, system.grid_coords + a1]),
        grid_weights=double(system.grid_weights),
        atom_coords=jnp.concatenate([system.atom_coords, system.atom_coords + a1]),
        atom_charges=double(system.atom_charges),
        lattice=system.lattice_vectors.at[0].multiply(2.0),
    )
    super_density = nlxc.Density(rho=double(density.rho), gradient=double(density.gradient),
                                 sigma=double(density.sigma), tau=double(density.tau))
    e1 = periodic_energy(model, system, density)
    e2 = periodic_energy(model, supercell, super_density)
    assert abs(e1) > 1e-3  # not trivially zero
    assert abs(e2 - 2.0 * e1) < 1e-10, (e2, 2 * e1)
    # the test can fail: the molecular neighbour list (no images) breaks the consistency
    molecular = [float(_evaluate(model.prepare(s), d, s)) for s, d in ((system, density), (supercell, super_density))]
    assert abs(molecular[1] - 2.0 * molecular[0]) > 1e-5  # 10⁵ times the tolerance above


# the equivariant model's images are in the default suite through the supercell test
SLOW_EQUIVARIANT = ["atom-centred", pytest.param("equivariant", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", SLOW_EQUIVARIANT)
def test_lattice_translations_of_atoms_and_grid_change_nothing(name):
    """Shifting all atoms by a lattice vector, moving one atom to another image, or wrapping
    the grid points into the [0, 1)³ parallelepiped gives the same energy per cell."""
    model = _models()[name]
    system = cell_system()
    density = _density(system)
    lattice = system.lattice_vectors
    e = periodic_energy(model, system, density)
    shifted = _replace(system, atom_coords=system.atom_coords + lattice[0] - 2.0 * lattice[2])
    moved = _replace(system, atom_coords=system.atom_coords.at[1].add(lattice[1] + lattice[2]))
    frac = system.grid_coords @ jnp.linalg.inv(lattice)
    wrapped = _replace(system, grid_coords=(frac - jnp.floor(frac)) @ lattice)
    for other in (shifted, moved, wrapped):
        assert abs(periodic_energy(model, other, density) - e) < 1e-10 * max(1.0, abs(e))


@functools.cache
def molecule():
    from pyscf import gto

    mol = gto.M(atom="H 0 0 0; H 0 0 0.74", basis="sto-3g", verbose=0)
    return nlxc.System.from_pyscf(mol, grid_level=1)


@pytest.mark.parametrize("name", SLOW_EQUIVARIANT)
def test_molecule_in_a_large_box_has_the_molecular_energy(name):
    """On the molecule's grid and density, the model with the neighbour list of a 60 Bohr cubic
    box equals the molecular model; so it does with the molecule at the box's corner, its grid
    points and atoms wrapped into the box (only the images bring the pieces back together)."""
    model = _models()[name]
    system = molecule()
    p = system.initial_density_matrix
    density = nlxc.Density.from_density_matrix(p, system)
    e_molecule = float(_evaluate(model.prepare(system), density, system))
    assert abs(e_molecule) > 1e-3
    box = 60.0 * jnp.eye(3)
    args = (system.grid_coords, system.grid_weights, system.atom_coords, system.atom_charges, box)
    periodic = model.prepare_periodic(*args)
    assert periodic.neighbours.periodic
    e_box = float(_evaluate(periodic, density, system))
    assert abs(e_box - e_molecule) < 1e-12 * max(1.0, abs(e_molecule))
    # the bond's midpoint at the corner of the box, everything wrapped into [0, 60)³
    centre = jnp.mean(system.atom_coords, axis=0)
    wrap = lambda x: jnp.mod(x - centre, 60.0)
    corner = eqx.tree_at(lambda s: (s.grid_coords, s.atom_coords), system,
                         (wrap(system.grid_coords), wrap(system.atom_coords)))
    assert float(jnp.min(corner.atom_coords)) < 1.0 < float(jnp.max(corner.atom_coords))  # split by a face
    wrapped = model.prepare_periodic(corner.grid_coords, corner.grid_weights, corner.atom_coords,
                                     corner.atom_charges, box)
    e_wrapped = float(_evaluate(wrapped, density, corner))
    assert abs(e_wrapped - e_molecule) < 1e-10 * max(1.0, abs(e_molecule))


def test_other_nonlocal_models_are_refused_and_unprepared_models_raise():
    system = cell_system()
    with pytest.raises(nlxc.InputError, match="not available for periodic systems.*AtomCentredCorrection"):
        pbc.solve(nlxc.get_functional("pbe") + AtomAttention(key=jr.key(0)), system)
    with pytest.raises(nlxc.InputError, match="prepare_functional"):
        pbc.energy_components(AtomCentredCorrection(key=jr.key(0)), system, system.initial_density_matrix)


@pytest.mark.slow  # the SCF with its implicit adjoint compiles in ~20 s, ~40 s for the test on 2 cores
def test_pbe_plus_atom_centred_correction_scf_and_parameter_gradient():
    """PBE + AtomCentredCorrection through the periodic SCF (gth-dzvp, 1×1×2 k-mesh): converged,
    the model changes the energy and the density (its Coulomb energy), and the derivative of
    E + E_J (not variational: the density's response through the implicit adjoint counts)
    along a random direction of the parameters equals central finite differences."""
    system = cell_system(kmesh=(1, 1, 2), basis="gth-dzvp")
    functional = nlxc.get_functional("pbe") + AtomCentredCorrection(key=jr.key(3), final_scale=0.05)
    params, static = eqx.partition(functional, eqx.is_inexact_array)
    solver = pbc.KCDIIS(atol=1e-11)

    def scalar(params, p0):
        result = pbc.solve(eqx.combine(params, static), system, solver, initial_density_matrix=p0)
        return result.energy + result.components.coulomb, result

    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(scalar, has_aux=True))
    (_, result), grad = value_and_grad(params, system.initial_density_matrix)
    assert bool(result.converged), result.n_iterations
    pbe = pbc.solve(nlxc.get_functional("pbe"), system, solver)
    assert bool(pbe.converged)
    assert abs(float(result.energy) - float(pbe.energy)) > 1e-3
    assert abs(float(result.components.coulomb) - float(pbe.components.coulomb)) > 1e-5
    leaves = jax.tree.leaves(grad)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    keys = jr.split(jr.key(7), len(leaves))
    direction = jax.tree.unflatten(jax.tree.structure(params),
                                   [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, jax.tree.leaves(params))])
    norm = jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(direction)))
    direction = jax.tree.map(lambda d: d / norm, direction)
    eps = 1e-4
    (plus, _), _ = value_and_grad(jax.tree.map(lambda p, d: p + eps * d, params, direction), result.density_matrix)
    (minus, _), _ = value_and_grad(jax.tree.map(lambda p, d: p - eps * d, params, direction), result.density_matrix)
    fd = float((plus - minus) / (2 * eps))
    ad = float(sum(jnp.vdot(g, d) for g, d in zip(leaves, jax.tree.leaves(direction))))
    assert abs(ad) > 1e-6
    assert ad == pytest.approx(fd, rel=1e-6)


def test_atom_charges_are_nuclear_charges_under_a_pseudopotential():
    """The models embed elements by `atom_charges`: a PeriodicSystem holds Z (C: 6, as a molecular
    System), not PySCF's pseudo-ion charge (C with gth-pade: 4, which is Be's Z, and Si's)."""
    from pyscf.data.elements import charge
    from pyscf.pbc import dft, gto
    from pyscf.pbc.dft import gen_grid

    cell = gto.M(atom="C 0 0 0", a=np.eye(3) * 3.0, basis="gth-szv", pseudo="gth-pade", unit="Bohr", verbose=0)
    mf = dft.KRKS(cell, cell.make_kpts([1, 1, 1])).density_fit()
    mf.grids = gen_grid.UniformGrids(cell)
    mf.grids.mesh = [7, 7, 7]
    system = pbc.PeriodicSystem.from_pyscf(mf)
    assert list(cell.atom_charges()) == [4]
    np.testing.assert_array_equal(np.asarray(system.atom_charges), [charge("C")])
