"""Neighbour lists on the molecular grid: grid point → nearby atoms, grid point → nearest grid points.

Both lists depend on the geometry only (grid coordinates, weights and nuclei), never on the
density, so a model builds them once per SCF in [`nlxc.xc.AbstractFunctional.prepare`][] rather
than in every Fock build. The search itself is scipy's k-d tree (`scipy.spatial.cKDTree`,
O(n log n)), called from JAX with `jax.pure_callback` (sequentially under `jax.vmap`): it is
exact, which a fixed-capacity cell list is not on molecular grids (a radial grid puts thousands of
points within 1 Bohr of a nucleus, so any per-cell cap truncates in an orientation-dependent
way and breaks rotation invariance).

Index arrays are integers with a validity mask; padded grid points (weight 0) and padded atoms
(charge 0) are never anyone's neighbours and have no neighbours.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

__all__ = ["AtomNeighbours", "GridNeighbours", "atom_neighbours", "grid_neighbours"]


class AtomNeighbours(eqx.Module):
    """For every grid point, the atoms within a cutoff (all of them, in order of distance).

    - `index`: `(ngrid, k)` atom indices; invalid slots hold 0.
    - `mask`: `(ngrid, k)`, `True` for an atom within the cutoff.
    - `overflow`: scalar bool, `True` if some grid point had more than `k` atoms within the
      cutoff (then the list is incomplete; [`atom_neighbours`][nlxc.models.atom_neighbours] raises).
    """

    index: Int[Array, "ngrid k"]
    mask: Bool[Array, "ngrid k"]
    overflow: Bool[Array, ""]


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
    index = eqx.error_if(index, overflow, f"more than max_atoms={k} atoms within {cutoff} Bohr of a grid "
                         "point; raise max_atoms")
    return AtomNeighbours(index, mask, overflow)


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
