"""Neighbour lists on the molecular grid: grid point → nearby atoms, grid point → nearest grid points.

Both lists depend on the geometry only (grid coordinates, weights and nuclei), never on the
density, so a model builds them once per SCF in [`nlxc.xc.AbstractFunctional.prepare`][] rather
than in every Fock build. The search itself is scipy's k-d tree (`scipy.spatial.cKDTree`,
O(n log n)), run on the host before the SCF by [`nlxc.models.prepare_system`][] (which stores
the lists in `System.precomputed`), or, for a System traced inside `jit`, called from JAX with
`jax.pure_callback` (sequentially under `jax.vmap`): it is
exact, which a fixed-capacity cell list is not on molecular grids (a radial grid puts thousands of
points within 1 Bohr of a nucleus, so any per-cell cap truncates in an orientation-dependent
way and breaks rotation invariance).

Index arrays are integers with a validity mask; padded grid points (weight 0) and padded atoms
(charge 0) are never anyone's neighbours and have no neighbours.

In a crystal a grid point of the cell couples to every periodic image R_A + T of an atom (T a
lattice translation) within the cutoff: [`periodic_atom_neighbours`][nlxc.models.periodic_atom_neighbours]
lists, per neighbour slot, the atom and the translation, so a model computes r_g − (R_A + T)
the same way for molecules (where every T is 0) and crystals.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._errors import InputError

__all__ = ["AtomNeighbours", "GridNeighbours", "atom_neighbours", "grid_neighbours", "periodic_atom_neighbours"]


class AtomNeighbours(eqx.Module):
    """For every grid point, the atoms (or atom images) within a cutoff, all of them, by distance.

    - `index`: `(ngrid, k)` atom indices; invalid slots hold 0.
    - `mask`: `(ngrid, k)`, `True` for an atom within the cutoff.
    - `overflow`: scalar bool, `True` if some grid point had more than `k` atoms within the
      cutoff (then the list is incomplete; [`atom_neighbours`][nlxc.models.atom_neighbours] raises).
    - `image`: `(ngrid, k)` int, the row of `translations` of each slot's atom image: the
      neighbour of grid point g in slot j sits at `atom_coords[index[g, j]] + translations[image[g, j]]`.
      All 0 for a molecule.
    - `translations`: `(nimage, 3)` Bohr, lattice translations T; row 0 is T = 0. A molecule has
      the single row 0; a crystal ([`periodic_atom_neighbours`][nlxc.models.periodic_atom_neighbours])
      every T with an atom image within the cutoff of a grid point, or within the atom–atom
      `pair_cutoff` of an atom of the cell.
    - `periodic` (static): `True` for a list built over lattice translations.
    """

    index: Int[Array, "ngrid k"]
    mask: Bool[Array, "ngrid k"]
    overflow: Bool[Array, ""]
    image: Int[Array, "ngrid k"]
    translations: Float[Array, "nimage 3"]
    periodic: bool = eqx.field(static=True, default=False)


class GridNeighbours(eqx.Module):
    """For every grid point, its `k` nearest other grid points within a cutoff, plus the next one.

    - `index`: `(ngrid, k + 1)` grid-point indices sorted by distance; column `k` is the first
      point *not* kept (it sets the smooth edge envelope, see
      [`GridGraphNetwork`][nlxc.models.GridGraphNetwork]); invalid slots hold the point itself.
    - `mask`: `(ngrid, k + 1)`, `True` where a neighbour exists within the cutoff.
    """

    index: Int[Array, "ngrid k1"]
    mask: Bool[Array, "ngrid k1"]


def _kd_tree(points):
    """scipy's k-d tree, built by the sliding-midpoint rule (private helper).

    The default median build (`balanced_tree=True`) crashed with a segmentation fault when run
    inside a JAX host callback on the C6H6 grid at level 2 (98,934 points), though not on the same
    array outside JAX, nor on random points; the sliding-midpoint build does not, and its queries
    are exact all the same.
    """
    from scipy.spatial import cKDTree

    return cKDTree(points, balanced_tree=False, compact_nodes=False)


def _atom_query(grid_coords, grid_weights, atom_coords, atom_valid, k, cutoff):
    ngrid = grid_coords.shape[0]
    index = np.zeros((ngrid, k), dtype=np.int32)
    mask = np.zeros((ngrid, k), dtype=bool)
    atoms = np.flatnonzero(atom_valid)
    points = np.flatnonzero(grid_weights != 0)
    overflow = False
    if len(atoms) and len(points):
        tree = _kd_tree(atom_coords[atoms])
        kq = min(k + 1, len(atoms))
        dist, idx = tree.query(grid_coords[points], k=kq, distance_upper_bound=cutoff)
        dist, idx = dist.reshape(len(points), kq), idx.reshape(len(points), kq)
        found = np.isfinite(dist)
        if kq > k:
            overflow = bool(found[:, k].any())
            dist, idx, found = dist[:, :k], idx[:, :k], found[:, :k]
        index[points, : found.shape[1]] = np.where(found, atoms[np.minimum(idx, len(atoms) - 1)], 0)
        mask[points, : found.shape[1]] = found
    return index, mask, np.asarray(overflow)


def atom_neighbours_key(cutoff: float, max_atoms: int) -> str:
    """The key of a molecular [`AtomNeighbours`][nlxc.models.AtomNeighbours] list in `System.precomputed`."""
    return f"atom_neighbours(cutoff={float(cutoff)!r}, max_atoms={int(max_atoms)})"


def _overflow_message(k: int, cutoff: float) -> str:
    return f"more than max_atoms={k} atoms within {cutoff} Bohr of a grid point; raise max_atoms"


def atom_neighbours_on_host(grid_coords, grid_weights, atom_coords, atom_charges, cutoff: float,
                            max_atoms: int = 32) -> AtomNeighbours:
    """[`atom_neighbours`][nlxc.models.atom_neighbours] computed with NumPy outside `jit`, from
    concrete arrays of one molecule: the same list (same integers, dtypes and shapes) as a
    NumPy-leaved `AtomNeighbours`, without a host callback.

    **Raises:** [`nlxc.InputError`][] if a grid point has more than `max_atoms` atoms within the
    cutoff.
    """
    g, w, a, q = (np.asarray(x, dtype=np.float64) for x in (grid_coords, grid_weights, atom_coords, atom_charges))
    k = max(1, min(int(max_atoms), a.shape[-2]))
    index, mask, overflow = _atom_query(g, w, a, q > 0.5, k, cutoff)
    if overflow:
        raise InputError(_overflow_message(k, cutoff))
    return AtomNeighbours(index, mask, np.asarray(False), np.zeros_like(index), np.zeros((1, 3), dtype=a.dtype))


def atom_neighbours(
    grid_coords: Float[Array, "ngrid 3"],
    grid_weights: Float[Array, " ngrid"],
    atom_coords: Float[Array, "natom 3"],
    atom_charges: Float[Array, " natom"],
    cutoff: float,
    max_atoms: int = 32,
) -> AtomNeighbours:
    """The atoms within `cutoff` (Bohr) of every grid point, as an [`AtomNeighbours`][nlxc.models.AtomNeighbours].

    `k = min(max_atoms, natom)` slots per grid point; atoms with charge 0 (padding) and grid points
    with weight 0 (padding) are left out. Works under `jit` and `vmap`; not differentiable (the
    inputs are wrapped in `stop_gradient`: the list is piecewise constant in the geometry).

    **Raises:** at run time (`equinox.error_if`), if a grid point has more than `max_atoms` atoms
    within the cutoff — raise `max_atoms` (memory and time grow linearly with it).
    """
    natom = atom_coords.shape[-2]
    k = max(1, min(int(max_atoms), natom))
    shapes = (jax.ShapeDtypeStruct(grid_weights.shape + (k,), jnp.int32),
              jax.ShapeDtypeStruct(grid_weights.shape + (k,), jnp.bool_),
              jax.ShapeDtypeStruct((), jnp.bool_))
    args = jax.lax.stop_gradient((grid_coords, grid_weights, atom_coords, atom_charges > 0.5))
    index, mask, overflow = jax.pure_callback(
        lambda g, w, a, v: _atom_query(np.asarray(g), np.asarray(w), np.asarray(a), np.asarray(v), k, cutoff),
        shapes, *args, vmap_method="sequential")
    index = eqx.error_if(index, overflow, _overflow_message(k, cutoff))
    return AtomNeighbours(index, mask, overflow, jnp.zeros_like(index), jnp.zeros((1, 3), dtype=atom_coords.dtype))


def _translation_range(frac_grid, frac_atoms, reach):
    """Integer lattice coefficients n_i that can bring an atom within `reach` (in units of the
    spacing of lattice planes i) of a grid point: n_i ∈ [⌊min f_g − max f_A − reach⌋, ⌈max f_g − min f_A + reach⌉]."""
    lo = np.floor(frac_grid.min(axis=0) - frac_atoms.max(axis=0) - reach).astype(int)
    hi = np.ceil(frac_grid.max(axis=0) - frac_atoms.min(axis=0) + reach).astype(int)
    return lo, hi


def periodic_atom_neighbours(
    grid_coords: Float[Array, "ngrid 3"],
    grid_weights: Float[Array, " ngrid"],
    atom_coords: Float[Array, "natom 3"],
    atom_charges: Float[Array, " natom"],
    lattice_vectors: Float[Array, "3 3"],
    cutoff: float,
    max_atoms: int = 32,
    *,
    pair_cutoff: float = 0.0,
) -> AtomNeighbours:
    """The atom images R_A + T within `cutoff` (Bohr) of every grid point of a periodic cell.

    T = n₁a₁ + n₂a₂ + n₃a₃ runs over the lattice translations (rows of `lattice_vectors`, Bohr);
    grid points and atoms may lie anywhere (they need not be wrapped into the cell). Every
    image within the cutoff is listed (no minimum-image truncation, so cutoffs longer than half
    the cell are exact). The result is an [`AtomNeighbours`][nlxc.models.AtomNeighbours] with
    `periodic=True`, `k` = the largest number of images within the cutoff of a grid point
    (at least 1), and `translations` the T that occur, plus every T with
    |R_B + T − R_A| < `pair_cutoff` for two atoms A, B of the cell (the atom–atom messages of
    [`EquivariantCorrection`][nlxc.models.EquivariantCorrection]); row 0 is T = 0.

    The search is scipy's k-d tree over the images of the atoms in the box of translations that
    can reach the grid (n_i bounded by the grid's and atoms' fractional coordinates ± cutoff
    over the spacing of lattice planes i). Built with numpy **outside `jit`**: the inputs must
    be concrete arrays, and the shapes `k` and `nimage` depend on them. Cost O(nimage · natom
    · log + ngrid · k log) time, `ngrid · k` integers of memory. Padded grid points (weight 0)
    and atoms (charge 0) take no part.

    **Raises:** [`nlxc.InputError`][] for traced inputs (call it outside `jit`), a singular
    lattice, or a grid point with more than `max_atoms` atom images within the cutoff (raise
    `max_atoms`; the model's cost grows linearly with it).
    """
    try:
        g, w, a, q, lattice = (np.asarray(x, dtype=float) for x in
                               (grid_coords, grid_weights, atom_coords, atom_charges, lattice_vectors))
    except jax.errors.TracerArrayConversionError as error:
        raise InputError("periodic_atom_neighbours needs concrete arrays: build the neighbour list outside "
                         "jax.jit (e.g. nlxc.pbc.prepare_functional before a jitted function)") from error
    if lattice.shape != (3, 3) or abs(np.linalg.det(lattice)) < 1e-12:
        raise InputError(f"lattice_vectors must be a non-singular (3, 3) array (rows a1, a2, a3), got {lattice!r}")
    ngrid = g.shape[0]
    atoms = np.flatnonzero(q > 0.5)
    points = np.flatnonzero(w != 0)
    reciprocal = np.linalg.inv(lattice)  # columns b_i with a_j · b_i = δ_ij (fractional coordinates)
    spacing = 1.0 / np.linalg.norm(reciprocal, axis=0)  # distance between lattice planes i, Bohr
    if len(atoms) == 0 or len(points) == 0:
        empty = np.zeros((ngrid, 1), dtype=np.int32)
        return AtomNeighbours(jnp.asarray(empty), jnp.zeros((ngrid, 1), dtype=bool), jnp.asarray(False),
                              jnp.asarray(empty), jnp.zeros((1, 3)), periodic=True)
    frac_grid, frac_atoms = g[points] @ reciprocal, a[atoms] @ reciprocal
    lo, hi = _translation_range(frac_grid, frac_atoms, cutoff / spacing)
    if pair_cutoff > 0.0:
        pair_lo, pair_hi = _translation_range(frac_atoms, frac_atoms, pair_cutoff / spacing)
        lo, hi = np.minimum(lo, pair_lo), np.maximum(hi, pair_hi)
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    n = np.stack(np.meshgrid(*(np.arange(l, h + 1) for l, h in zip(lo, hi)), indexing="ij"), -1).reshape(-1, 3)
    n = n[np.argsort(np.abs(n).sum(axis=1), kind="stable")]  # n = 0 first
    candidates = n @ lattice  # (ncand, 3) Bohr
    images = (candidates[:, None, :] + a[atoms][None, :, :]).reshape(-1, 3)  # (ncand · natom_real, 3)
    tree = _kd_tree(images)
    kq = min(int(max_atoms) + 1, len(images))
    dist, idx = tree.query(g[points], k=kq, distance_upper_bound=cutoff)
    dist, idx = dist.reshape(len(points), kq), idx.reshape(len(points), kq)
    found = np.isfinite(dist)
    counts = found.sum(axis=1)
    if counts.max() > max_atoms:
        raise InputError(f"more than max_atoms={max_atoms} atom images within {cutoff} Bohr of a grid point "
                         "of the cell; raise max_atoms")
    k = max(1, int(counts.max()))
    found, idx = found[:, :k], np.where(found[:, :k], idx[:, :k], 0)
    candidate, atom = np.divmod(idx, len(atoms))
    used = np.zeros(len(candidates), dtype=bool)
    used[0] = True
    used[candidate[found]] = True
    for position in a[atoms] if pair_cutoff > 0.0 else ():  # T with an image R_B + T near an atom A
        d = np.linalg.norm(images.reshape(len(candidates), len(atoms), 3) - position, axis=-1)
        used |= np.any(d < pair_cutoff, axis=1)
    row = np.cumsum(used) - 1  # candidate → row of the kept translations (row 0: T = 0)
    index = np.zeros((ngrid, k), dtype=np.int32)
    mask = np.zeros((ngrid, k), dtype=bool)
    image = np.zeros((ngrid, k), dtype=np.int32)
    index[points] = np.where(found, atoms[atom], 0)
    mask[points] = found
    image[points] = np.where(found, row[candidate], 0)
    return AtomNeighbours(jnp.asarray(index), jnp.asarray(mask), jnp.asarray(False), jnp.asarray(image),
                          jnp.asarray(candidates[used]), periodic=True)


def _grid_query(coords, weights, k, cutoff):
    ngrid = coords.shape[0]
    index = np.repeat(np.arange(ngrid, dtype=np.int32)[:, None], k + 1, axis=1)
    mask = np.zeros((ngrid, k + 1), dtype=bool)
    points = np.flatnonzero(weights != 0)
    if len(points) > 1:
        tree = _kd_tree(coords[points])
        kq = min(k + 2, len(points))
        dist, idx = tree.query(coords[points], k=kq, distance_upper_bound=cutoff)
        dist, idx = dist.reshape(len(points), kq), idx.reshape(len(points), kq)
        # drop the point itself (it is at distance 0, but an exact duplicate could come first)
        own = idx == np.arange(len(points))[:, None]
        order = np.argsort(own, axis=1, kind="stable")
        dist = np.take_along_axis(dist, order, axis=1)[:, : kq - 1]
        idx = np.take_along_axis(idx, order, axis=1)[:, : kq - 1]
        found = np.isfinite(dist)
        cols = min(k + 1, kq - 1)
        index[points, :cols] = np.where(found[:, :cols], points[np.minimum(idx[:, :cols], len(points) - 1)],
                                        points[:, None])
        mask[points, :cols] = found[:, :cols]
    return index, mask


def grid_neighbours_key(k: int, cutoff: float) -> str:
    """The key of a [`GridNeighbours`][nlxc.models.GridNeighbours] list in `System.precomputed`."""
    return f"grid_neighbours(k={int(k)}, cutoff={float(cutoff)!r})"


def grid_neighbours_on_host(grid_coords, grid_weights, k: int, cutoff: float) -> GridNeighbours:
    """[`grid_neighbours`][nlxc.models.grid_neighbours] computed with NumPy outside `jit`, from
    concrete arrays of one molecule: the same list, NumPy-leaved, without a host callback."""
    index, mask = _grid_query(np.asarray(grid_coords, dtype=np.float64), np.asarray(grid_weights, dtype=np.float64),
                              k, cutoff)
    return GridNeighbours(index, mask)


def grid_neighbours(
    grid_coords: Float[Array, "ngrid 3"], grid_weights: Float[Array, " ngrid"], k: int, cutoff: float
) -> GridNeighbours:
    """The `k` nearest grid points (and the `k+1`-th) within `cutoff` Bohr of every grid point.

    Returns a [`GridNeighbours`][nlxc.models.GridNeighbours]; points of weight 0 (padding) take
    no part. Works under `jit` and `vmap`; not differentiable (piecewise constant in the grid).
    """
    ngrid = grid_weights.shape[-1]
    shapes = (jax.ShapeDtypeStruct((ngrid, k + 1), jnp.int32), jax.ShapeDtypeStruct((ngrid, k + 1), jnp.bool_))
    args = jax.lax.stop_gradient((grid_coords, grid_weights))
    index, mask = jax.pure_callback(lambda g, w: _grid_query(np.asarray(g), np.asarray(w), k, cutoff),
                                    shapes, *args, vmap_method="sequential")
    return GridNeighbours(index, mask)
