"""Reference labels of the losses: per-batch [`Targets`][nlxc.losses.Targets] and
dataset-level [`Reactions`][nlxc.losses.Reactions], and the checks of losses' inputs against a batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ..batch import Batch
from ..scf import SCFResult, energy_and_fock
from ..xc import AbstractFunctional
from ._derivatives import orbital_hessian_product, random_rotations


def _float_array_or_none(x):
    return None if x is None else jnp.asarray(x, dtype=float)


class Targets(eqx.Module):
    """Reference labels for the entries of one [`Batch`][nlxc.batch.Batch] (atomic units).

    Row `k` of every field belongs to row `k` of the batch (`batch.index[k]` is the molecule's
    position in the list given to [`make_batches`][nlxc.batch.make_batches]); matrices are
    padded with zeros to the batch's `nao` / `nmo`, exactly as [`nlxc.pad_system`][] pads the
    Systems (so a padded reference density matrix is the reference density of the padded System).
    A `Targets` is a pytree of arrays (fields that are `None` are empty subtrees): it goes
    through `jax.jit` and can be sharded with [`nlxc.batch.shard`][] like the batch.

    **Fields** (`batch` entries, `nao` padded basis functions, `nmo` padded orbitals, `ndir`
    rotation directions):

    - `energy`: reference total energies, `(batch,)`, Hartree.
    - `weight`: per-molecule loss weights, `(batch,)`, or `None` (all 1). The batch's mask is
      applied on top, so filler entries never count whatever their weight.
    - `density_matrix`: reference α/β density matrices in the AO basis, `(batch, 2, nao, nao)`,
      or `None`. Read by the density, non-self-consistent and derivative losses.
    - `fock_matrix`: the reference method's α/β Fock matrices at `density_matrix`,
      `(batch, 2, nao, nao)`, Hartree, or `None`. Read by
      [`derivative_loss`][nlxc.losses.derivative_loss] (its occupied–virtual block is the
      reference's orbital gradient, ≈ 0 at the reference's own SCF solution).
    - `rotations`: occupied–virtual rotation directions in the orthonormal orbital basis of the
      System (`X` of [`nlxc.System`][], `Xᵀ S X = 1`), `(batch, ndir, 2, nmo, nmo)`, each of unit
      Frobenius norm, or `None` (see [`random_rotations`][nlxc.losses.random_rotations]).
    - `hessian_products`: the reference functional's orbital-Hessian products along `rotations`,
      same shape, Hartree, or `None` (see
      [`orbital_hessian_product`][nlxc.losses.orbital_hessian_product]).

    Build one with [`Targets.from_entries`][nlxc.losses.Targets.from_entries] or
    [`Targets.from_dataset`][nlxc.losses.Targets.from_dataset], add the second-derivative labels
    with [`with_derivatives`][nlxc.losses.Targets.with_derivatives], or construct it directly
    from arrays. Labels of different methods combine with `dataclasses.replace`, e.g. CCSD(T)
    energies with CCSD density matrices:
    `dataclasses.replace(ccsd_t, density_matrix=ccsd.density_matrix)`.
    """

    energy: Float[Array, " batch"] = eqx.field(converter=lambda x: jnp.asarray(x, dtype=float))
    weight: Float[Array, " batch"] | None = eqx.field(default=None, converter=_float_array_or_none)
    density_matrix: Float[Array, "batch 2 nao nao"] | None = eqx.field(default=None, converter=_float_array_or_none)
    fock_matrix: Float[Array, "batch 2 nao nao"] | None = eqx.field(default=None, converter=_float_array_or_none)
    rotations: Float[Array, "batch ndir 2 nmo nmo"] | None = eqx.field(default=None, converter=_float_array_or_none)
    hessian_products: Float[Array, "batch ndir 2 nmo nmo"] | None = eqx.field(
        default=None, converter=_float_array_or_none)

    @classmethod
    def from_entries(cls, batch: Batch, entries, *, weights=None) -> Targets:
        """Targets for `batch` from reference entries, padded to the batch's shapes.

        **Arguments:**

        - `batch`: a [`Batch`][nlxc.batch.Batch] from [`make_batches`][nlxc.batch.make_batches].
        - `entries`: indexable by the molecule positions of `batch.index` (a sequence aligned
          with the list of Systems given to `make_batches`, or a mapping from those positions);
          each item has `energy` (Hartree), `density_matrix` `(2, nao_i, nao_i)` or `None`, and
          optionally `fock_matrix` `(2, nao_i, nao_i)`: a [`nlxc.data.ReferenceEntry`][] or
          anything with these attributes. Entries of correlated methods (no Fock matrix) are fine.
        - `weights`: optional per-molecule weights indexable the same way (default 1).

        Filler entries (`batch.index == -1`) get the labels of the batch's last real entry,
        which is the molecule they copy in `make_batches`; they are masked in every loss anyway.
        A field is filled only if every real entry of the batch provides it.

        **Returns:** a `Targets` with `energy`, `weight`, `density_matrix` and `fock_matrix`.

        **Raises:** [`nlxc.InputError`][] if an entry is missing, or if its matrices do not have
        the number of basis functions of the (unpadded) System in the batch.
        """
        index = np.asarray(batch.index)
        mask = np.asarray(batch.mask)
        if not mask.any():
            raise InputError("the batch has no real entries (its mask is all False)")
        last = int(index[mask][-1])
        rows = [int(i) if m else last for i, m in zip(index, mask)]
        system = batch.system
        nao_batch = system.overlap.shape[-1]
        # The unpadded basis size of each entry: rows of the orthogonaliser that are not zero.
        x = np.asarray(system.orthogonalizer)
        nao_real = (np.abs(x).sum(axis=-1) > 0).sum(axis=-1)

        def get(container, i):
            try:
                return container[i]
            except (KeyError, IndexError):
                raise InputError(f"no reference entry for molecule {i} of the batch") from None

        items = [get(entries, i) for i in rows]
        energy = np.array([float(e.energy) for e in items])

        def matrices(name):
            values = [getattr(e, name, None) for e in items]
            if any(v is None for v in values):
                return None
            out = np.zeros((len(values), 2, nao_batch, nao_batch))
            for k, (v, i) in enumerate(zip(values, rows)):
                v = np.asarray(v, dtype=float)
                if v.ndim != 3 or v.shape[0] != 2 or v.shape[1] != v.shape[2] or v.shape[1] != nao_real[k]:
                    raise InputError(f"{name} of molecule {i} has shape {v.shape}, but its System has "
                                     f"{int(nao_real[k])} basis functions: expected (2, {int(nao_real[k])}, "
                                     f"{int(nao_real[k])})")
                out[k, :, : v.shape[1], : v.shape[1]] = v
            return out

        weight = None if weights is None else np.array([float(get(weights, i)) for i in rows])
        return cls(energy=energy, weight=weight, density_matrix=matrices("density_matrix"),
                   fock_matrix=matrices("fock_matrix"))

    @classmethod
    def from_dataset(cls, batch: Batch, dataset, names: Sequence[str], method: str, *,
                     weights=None) -> Targets:
        """Targets for `batch` from the `method` entries of a [`nlxc.data.ReferenceDataset`][].

        **Arguments:**

        - `batch`: a [`Batch`][nlxc.batch.Batch].
        - `dataset`: a `ReferenceDataset` computed with the basis and grid level of the batch's
          Systems (e.g. [`nlxc.data.default_dataset`][]).
        - `names`: the molecule names in the order of the Systems given to `make_batches`.
        - `method`: e.g. `"b3lyp"` or `"ccsd(t)"`.
        - `weights`: optional per-molecule weights, aligned with `names`.

        **Returns:** as [`from_entries`][nlxc.losses.Targets.from_entries] (only the entries of
        the batch are read; checksums are verified).

        **Raises:** [`nlxc.data.DatasetError`][] for a missing entry; [`nlxc.InputError`][] as
        `from_entries`.
        """
        index = np.asarray(batch.index)
        needed = {int(i) for i in index if i >= 0}
        for i in needed:
            if i >= len(names):
                raise InputError(f"batch molecule {i} has no name (only {len(names)} names given)")
        entries = {i: dataset.entry(names[i], method) for i in needed}
        return cls.from_entries(batch, entries, weights=weights)

    def with_derivatives(self, reference: AbstractFunctional, batch: Batch, *, key,
                         n_directions: int = 2) -> Targets:
        """These targets plus the first- and second-derivative labels of a reference functional.

        At the reference densities `density_matrix`, computes with nlxc's implementation of
        `reference` (e.g. [`nlxc.xc.B3LYP`][]) its Fock matrices, `n_directions` random
        occupied–virtual rotation directions per molecule
        ([`random_rotations`][nlxc.losses.random_rotations]) and the orbital-Hessian products
        along them ([`orbital_hessian_product`][nlxc.losses.orbital_hessian_product]).
        `fock_matrix` is replaced by the reference functional's. For fresh directions (e.g. each
        epoch) call it again with another `key`. Cost per molecule: one Fock build and
        `n_directions` Hessian products (each about three Fock builds).

        **Arguments:** `reference` (an [`AbstractFunctional`][nlxc.xc.AbstractFunctional]);
        `batch`; `key`, a `jax.random` key; `n_directions` ≥ 1.

        **Returns:** a new `Targets` with `fock_matrix`, `rotations` and `hessian_products`.

        **Raises:** [`nlxc.InputError`][] if `density_matrix` is missing or does not fit the
        batch, or `n_directions < 1`.
        """
        _check_targets(batch, self, "density_matrix")
        if not isinstance(n_directions, (int, np.integer)) or n_directions < 1:
            raise InputError(f"n_directions must be a positive integer, got {n_directions!r}")
        fock, rotations, products = _reference_derivatives(reference, batch.system, self.density_matrix, key,
                                                           int(n_directions))
        return dataclasses.replace(self, fock_matrix=fock, rotations=rotations, hessian_products=products)


@eqx.filter_jit
def _reference_derivatives(reference, system, density_matrix, key, n_directions):
    keys = jax.random.split(key, density_matrix.shape[0])

    def one(s, p, k):
        _, fock = energy_and_fock(reference.prepare(s), s, p)
        v = random_rotations(k, s, p, n_directions)
        hv = jax.vmap(lambda d: orbital_hessian_product(reference, s, p, d))(v)
        return fock, v, hv

    return eqx.filter_vmap(one)(system, density_matrix, keys)


class Reactions(eqx.Module):
    """Reaction (or atomization) energies as linear combinations of molecular energies.

    A dataset-level container: its columns are the molecules of a dataset, numbered as the list
    of Systems given to [`make_batches`][nlxc.batch.make_batches] (the values of `Batch.index`),
    so a reaction may combine molecules from different batches (e.g. closed-shell molecules and
    open-shell atoms, which are bucketed separately).

    **Fields:**

    - `stoichiometry`: C, `(n_reactions, n_molecules)`; the reaction energies are `C @ E` for
      total energies `E` (Hartree) in dataset order. For atomization energies
      (`Σ_a n_a E_atom − E_molecule`) see [`nlxc.data.atomization_reactions`][].
    - `reference`: reference reaction energies, `(n_reactions,)`, Hartree.
    - `weight`: per-reaction weights, `(n_reactions,)`, or `None` (all 1).

    A dense matrix costs `8 · n_reactions · n_molecules` bytes (W4-11: 140 × 152, 170 kB).
    """

    stoichiometry: Float[Array, "nreaction nmolecule"] = eqx.field(converter=lambda x: jnp.asarray(x, dtype=float))
    reference: Float[Array, " nreaction"] = eqx.field(converter=lambda x: jnp.asarray(x, dtype=float))
    weight: Float[Array, " nreaction"] | None = eqx.field(default=None, converter=_float_array_or_none)

    def __check_init__(self):
        c, r = self.stoichiometry, self.reference
        if c.ndim != 2 or r.shape != (c.shape[0],):
            raise InputError(f"stoichiometry {c.shape} and reference {r.shape} do not match: expected "
                             "(n_reactions, n_molecules) and (n_reactions,)")
        if self.weight is not None and self.weight.shape != r.shape:
            raise InputError(f"reaction weights have shape {self.weight.shape}, expected {r.shape}")

    @classmethod
    def from_benchmark_set(cls, benchmark_set, names: Sequence[str] | None = None, *,
                           weights=None) -> Reactions:
        """The reactions of a [`nlxc.data.BenchmarkSet`][] with columns in the order `names`.

        **Arguments:**

        - `benchmark_set`: e.g. `nlxc.data.w4_11()` or `nlxc.data.default_set()`.
        - `names`: molecule names in the order of the Systems given to `make_batches`; default
          `benchmark_set.molecule_names`. Names not in the set get zero columns.
        - `weights`: optional per-reaction weights, `(n_reactions,)`.

        **Returns:** a `Reactions` (references in Hartree, as the set stores them).

        **Raises:** [`nlxc.InputError`][] if a molecule of the set is missing from `names` or
        named twice there.
        """
        set_names = list(benchmark_set.molecule_names)
        names = set_names if names is None else [str(n) for n in names]
        if len(set(names)) != len(names):
            raise InputError("a molecule is named twice in names")
        column = {n: j for j, n in enumerate(names)}
        missing = [n for n in set_names if n not in column]
        if missing:
            raise InputError(f"molecules of set {benchmark_set.name!r} are missing from names: "
                             f"{', '.join(map(repr, missing[:5]))}{' …' if len(missing) > 5 else ''}")
        c_set = benchmark_set.stoichiometry()
        c = np.zeros((c_set.shape[0], len(names)))
        for j, n in enumerate(set_names):
            c[:, column[n]] = c_set[:, j]
        return cls(c, benchmark_set.references(), weights)


def _check_batch(batch):
    if not isinstance(batch, Batch):
        raise InputError(f"expected an nlxc.batch.Batch, got {type(batch).__name__}")


def _check_targets(batch: Batch, targets: Targets, *fields: str) -> None:
    """Shapes of `targets` against `batch` (static shapes: works under jit)."""
    _check_batch(batch)
    if not isinstance(targets, Targets):
        raise InputError(f"expected nlxc.losses.Targets, got {type(targets).__name__}")
    n = batch.mask.shape[0]
    nao = batch.system.overlap.shape[-1]
    nmo = batch.system.orthogonalizer.shape[-1]
    if targets.energy.shape != (n,):
        raise InputError(f"targets.energy has shape {targets.energy.shape}, but the batch has {n} entries")
    if targets.weight is not None and targets.weight.shape != (n,):
        raise InputError(f"targets.weight has shape {targets.weight.shape}, but the batch has {n} entries")
    expected = {"density_matrix": (n, 2, nao, nao), "fock_matrix": (n, 2, nao, nao)}
    for name in fields:
        value = getattr(targets, name)
        if value is None:
            raise InputError(f"this loss needs targets.{name}, which is None")
        if name in expected and value.shape != expected[name]:
            raise InputError(f"targets.{name} has shape {value.shape}, expected {expected[name]} for this batch")
        if name in ("rotations", "hessian_products") and (
                value.ndim != 5 or value.shape[0] != n or value.shape[2:] != (2, nmo, nmo)):
            raise InputError(f"targets.{name} has shape {value.shape}, expected ({n}, ndir, 2, {nmo}, {nmo})")
    if "hessian_products" in fields and targets.hessian_products.shape != targets.rotations.shape:
        raise InputError(f"targets.hessian_products {targets.hessian_products.shape} and targets.rotations "
                         f"{targets.rotations.shape} differ in shape")


def _check_result(batch: Batch, result: SCFResult, name: str = "result") -> None:
    """`result` is the batch's `SCFResult` (static shapes: works under jit)."""
    if not isinstance(result, SCFResult):
        raise InputError(f"{name} must be the batch's nlxc.SCFResult (from nlxc.batch.solve_batch), "
                         f"got {type(result).__name__}")
    n = batch.mask.shape[0]
    nao = batch.system.overlap.shape[-1]
    if result.energy.shape != (n,):
        raise InputError(f"{name} has energies of shape {result.energy.shape}, but the batch has {n} entries")
    if result.density_matrix.shape != (n, 2, nao, nao):
        raise InputError(f"{name} has density matrices of shape {result.density_matrix.shape}, expected "
                         f"{(n, 2, nao, nao)} for this batch")


def _as_batches_and_results(batches, results) -> tuple[list[Batch], list[SCFResult]]:
    """One batch or a sequence, and their results in the same order, as checked lists."""
    batches = [batches] if isinstance(batches, Batch) else list(batches)
    results = [results] if isinstance(results, SCFResult) else list(results)
    if not batches:
        raise InputError("no batches given")
    if len(results) != len(batches):
        raise InputError(f"{len(results)} results for {len(batches)} batches")
    for k, (b, r) in enumerate(zip(batches, results)):
        _check_batch(b)
        _check_result(b, r, f"results[{k}]")
    return batches, results
