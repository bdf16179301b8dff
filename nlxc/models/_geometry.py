"""Geometry-only data of the models, computed on the host before the SCF (private to `nlxc.models`).

A model that needs data depending only on the geometry (neighbour lists, a dispersion energy)
is an [`AbstractGeometryModel`][nlxc.models.AbstractGeometryModel]: it computes that data with
numpy from concrete arrays ([`precompute`][nlxc.models.AbstractGeometryModel.precompute]), and
its `prepare` reads it from `System.precomputed`. [`prepare_system`][nlxc.models.prepare_system]
fills `System.precomputed` outside `jit`, per molecule for a stacked batch, so the compiled SCF
receives the data as arrays instead of computing it in a host callback: JAX's persistent
compilation cache does not store programs holding host callbacks.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
import numpy as np
from jaxtyping import Float

from .._errors import InputError
from ..system import System
from ..xc import AbstractFunctional

__all__ = ["AbstractGeometryModel", "precomputed_entry", "prepare_system"]


class AbstractGeometryModel(AbstractFunctional):
    """A model whose [`prepare`][nlxc.xc.AbstractFunctional.prepare] needs geometry-only data
    (neighbour lists, a dispersion energy) that can be computed on the host ahead of the SCF.

    **Subclasses implement** [`precomputed_keys`][nlxc.models.AbstractGeometryModel.precomputed_keys]
    and [`precompute`][nlxc.models.AbstractGeometryModel.precompute], and read their entries in
    `prepare` with `system.precomputed.get(key)`, computing them themselves (with a host
    callback, `jax.pure_callback`) only where the entry is missing: then a model works on any
    System, and [`prepare_system`][nlxc.models.prepare_system] removes the callback from the
    compiled program. Subclasses: the atom-neighbour models
    ([`AtomCentredCorrection`][nlxc.models.AtomCentredCorrection], …,
    [`Skala`][nlxc.models.Skala]) and [`GridGraphNetwork`][nlxc.models.GridGraphNetwork].
    """

    @property
    @abc.abstractmethod
    def precomputed_keys(self) -> tuple[str, ...]:
        """The keys of `System.precomputed` this model reads: strings naming the data and every
        setting it depends on (e.g. `"atom_neighbours(cutoff=6.0, max_atoms=24)"`), so that two
        models needing the same data share one entry."""

    @abc.abstractmethod
    def precompute(
        self,
        grid_coords: Float[np.ndarray, "ngrid 3"],
        grid_weights: Float[np.ndarray, " ngrid"],
        atom_coords: Float[np.ndarray, "natom 3"],
        atom_charges: Float[np.ndarray, " natom"],
    ) -> dict[str, Any]:
        """The entries of `precomputed_keys` for one molecule, as pytrees of NumPy arrays, from its
        grid (Bohr, Bohr³; padded points have weight 0) and nuclei (Bohr; padded atoms have charge
        0), given as NumPy arrays. Runs on the host, outside `jit`.

        **Raises:** [`nlxc.InputError`][] where the data cannot be built (e.g. more atoms within
        a cutoff than the model's capacity)."""


def precomputed_entry(system, key: str) -> Any | None:
    """`system.precomputed[key]` of a molecular [`System`][nlxc.System], or `None` if absent; always
    `None` for a crystal (`nlxc.pbc.PeriodicSystem`), whose models carry their lists themselves
    ([`nlxc.pbc.prepare_functional`][])."""
    return system.precomputed.get(key) if isinstance(system, System) else None


def _geometry_models(functional) -> list[AbstractGeometryModel]:
    leaves = jax.tree.leaves(functional, is_leaf=lambda x: isinstance(x, AbstractGeometryModel))
    return [x for x in leaves if isinstance(x, AbstractGeometryModel)]


def _is_traced(system: System) -> bool:
    return any(isinstance(x, jax.core.Tracer)
               for x in (system.grid_coords, system.grid_weights, system.atom_coords, system.atom_charges))


def prepare_system(functional: AbstractFunctional, system: System) -> System:
    """`system` with the geometry-only data that `functional` reads, in `System.precomputed`.

    Every [`AbstractGeometryModel`][nlxc.models.AbstractGeometryModel] in `functional` (also
    inside `Sum`/`Scaled`) computes its entries on the host with NumPy (scipy's k-d tree for
    neighbour lists, simple-DFT-D3 for Skala's dispersion) from the System's concrete grid and
    nuclei; entries the System already holds are kept. For a stacked System (a leading batch
    axis, [`nlxc.batch.stack`][] / [`nlxc.batch.make_batches`][]) the entries are computed per
    molecule at the padded shapes and stacked, so they travel with the batch under `jax.vmap`
    (the functional stays shared). The integers and energies are those the models compute in
    `prepare` with a host callback, so results are unchanged; the compiled SCF, the training
    step or a loss over the prepared System then hold no host callback, and JAX's persistent
    compilation cache can store them.

    [`nlxc.solve`][] and [`nlxc.batch.solve_batch`][] call this for a concrete System; call it
    yourself before a `jax.jit` (or `jax.vmap`) of your own over a System. A functional without
    such models, or a traced System (inside `jit`: the models then fall back to host callbacks),
    returns `system` unchanged. Cost: one k-d-tree search per molecule and model,
    O(ngrid log natom) (atom lists) or O(ngrid log ngrid) (grid lists) on the host.

    **Raises:** [`nlxc.InputError`][] for a System whose grid has more than one batch axis, or as
    the models' `precompute` does (more atoms within a cutoff than `max_atoms`; Skala's D3 term
    without the `dftd3` package).
    """
    models = _geometry_models(functional)
    if not models or _is_traced(system):
        return system
    entries = dict(system.precomputed)
    wanted = [m for m in models if any(k not in entries for k in m.precomputed_keys)]
    if not wanted:
        return system
    coords, weights, atoms, charges = (np.asarray(x, dtype=np.float64) for x in (
        system.grid_coords, system.grid_weights, system.atom_coords, system.atom_charges))
    if weights.ndim not in (1, 2):
        raise InputError(f"prepare_system takes a System or a stack of Systems (one batch axis), got grid weights "
                         f"of shape {weights.shape}")
    batched = weights.ndim == 2
    rows = range(weights.shape[0]) if batched else [None]
    per_molecule: list[dict[str, Any]] = []
    for i in rows:
        one = (coords, weights, atoms, charges) if i is None else (coords[i], weights[i], atoms[i], charges[i])
        found: dict[str, Any] = {}
        for model in wanted:
            if all(k in entries or k in found for k in model.precomputed_keys):
                continue
            found.update({k: v for k, v in model.precompute(*one).items() if k not in entries})
        per_molecule.append(found)
    new = per_molecule[0] if not batched else {
        k: jax.tree.map(lambda *xs: np.stack(xs), *(m[k] for m in per_molecule)) for k in per_molecule[0]}
    # device_put transfers without compiling a program per array (jnp.asarray would)
    entries.update(jax.device_put(new))
    return dataclasses.replace(system, precomputed=entries)
