"""Losses for training exchange–correlation functionals: pure functions `(functional, batch, targets) -> scalar`.

Every loss here works on a padded, stacked [`nlxc.batch.Batch`][] (it is vmapped over the
molecules of the batch), is differentiable with `eqx.filter_grad` with respect to the float leaves
of the functional, and ignores the batch's filler entries (`batch.mask == False`) exactly: they
contribute zero to the value and zero to the gradient, even if their targets are NaN (the
residuals are masked before they are squared, so no NaN reaches the cotangents).

**Reference data.** A loss reads its labels from a [`Targets`][nlxc.losses.Targets] (one row per
entry of the batch, padded to the batch's shapes) or, for reaction and atomization energies, a
[`Reactions`][nlxc.losses.Reactions] (a stoichiometry matrix over all molecules of a dataset).
Both are `equinox.Module`s of arrays, so they go through `jax.jit`/`jax.vmap`/sharding like the
batch itself. They are built from the labels of [`nlxc.data`][]:
[`Targets.from_dataset`][nlxc.losses.Targets.from_dataset] reads
[`ReferenceEntry`][nlxc.data.ReferenceEntry]s (energy, density matrix, Fock matrix) of a
[`ReferenceDataset`][nlxc.data.ReferenceDataset], and
[`Reactions.from_benchmark_set`][nlxc.losses.Reactions.from_benchmark_set] turns a
[`BenchmarkSet`][nlxc.data.BenchmarkSet] (G2, W4-11, GMTKN55 …) into a stoichiometry matrix.

**The losses** (see `docs/losses.md` for formulas, costs and examples):

| loss | through the SCF | reads |
|---|---|---|
| [`energy_loss`][nlxc.losses.energy_loss] | implicit adjoint | `energy` |
| [`reaction_loss`][nlxc.losses.reaction_loss] | implicit adjoint | `Reactions` |
| [`density_loss`][nlxc.losses.density_loss] | implicit adjoint | `density_matrix` |
| [`trajectory_loss`][nlxc.losses.trajectory_loss] | unrolled (every iteration) | `energy` (+ `density_matrix`) |
| [`non_self_consistent_loss`][nlxc.losses.non_self_consistent_loss] | no (fixed reference density) | `energy`, `density_matrix` |
| [`derivative_loss`][nlxc.losses.derivative_loss] | no (fixed reference density) | `density_matrix`, `fock_matrix`, `rotations`, `hessian_products` |

and penalties for exact constraints ([`uniform_gas_penalty`][nlxc.losses.uniform_gas_penalty],
[`correlation_sign_penalty`][nlxc.losses.correlation_sign_penalty],
[`lieb_oxford_penalty`][nlxc.losses.lieb_oxford_penalty],
[`spin_scaling_penalty`][nlxc.losses.spin_scaling_penalty],
[`size_consistency_penalty`][nlxc.losses.size_consistency_penalty]).

All quantities are in atomic units: energies in Hartree, so squared-error losses are in Hartree².
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import InputError
from .batch import Batch, solve_batch
from .scf import SCFResult, UnrolledAdjoint
from .scf._energy import energy_and_fock, energy_components
from .grid import Density
from .system import System
from .xc._base import AbstractFunctional, AbstractSemilocalFunctional

__all__ = [
    "DEFAULT_HUBER_DELTA",
    "GLOBAL_LIEB_OXFORD_CONSTANT",
    "KINDS",
    "Reactions",
    "Targets",
    "correlation_sign_penalty",
    "density_difference",
    "density_loss",
    "derivative_loss",
    "energy_loss",
    "errors",
    "lieb_oxford_penalty",
    "non_self_consistent_loss",
    "orbital_hessian_product",
    "ov_gradient",
    "penalty_over_batch",
    "random_rotations",
    "reaction_loss",
    "size_consistency_penalty",
    "spin_scaling_penalty",
    "trajectory_loss",
    "trajectory_weights",
    "uniform_gas_penalty",
    "weighted_mean",
]

KINDS = ("mse", "mae", "huber")
"""Error measures of the energy losses: squared error (Hartree²), absolute error (Hartree), Huber."""
_REDUCTIONS = ("mean", "sum")
_METRICS = ("l2", "coulomb")
_NEGATIVE_WEIGHTS = ("clip", "abs", "keep")
DEFAULT_HUBER_DELTA = 1.6e-3
"""Default Huber threshold δ, Hartree (≈ 1 kcal/mol)."""
GLOBAL_LIEB_OXFORD_CONSTANT = 1.679
"""Lieb–Oxford constant C of the global bound E_xc ≥ −C ∫ ρ^{4/3} d³r (Lieb & Oxford 1981)."""


# --------------------------------------------------------------------------------------------
# Reference data
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Checks and reductions
# --------------------------------------------------------------------------------------------


def _check_option(name, value, allowed):
    if value not in allowed:
        raise InputError(f"unknown {name} {value!r}; use one of {', '.join(map(repr, allowed))}")


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


def errors(residual, kind: str = "mse", delta: float = DEFAULT_HUBER_DELTA):
    """Elementwise error measure of residuals (prediction − reference).

    - `"mse"`: r² (Hartree² for energies);
    - `"mae"`: |r| (Hartree);
    - `"huber"`: ½ r² for |r| ≤ δ, δ(|r| − ½δ) otherwise (Hartree²; P. J. Huber, Ann. Math.
      Statist. 35, 73 (1964), doi:10.1214/aoms/1177703732), quadratic near zero and linear
      for outliers.

    **Raises:** [`nlxc.InputError`][] for an unknown `kind` or a non-positive `delta`.
    """
    _check_option("kind", kind, KINDS)
    if kind == "mse":
        return residual**2
    if kind == "mae":
        return jnp.abs(residual)
    if not delta > 0:
        raise InputError(f"the Huber delta must be positive, got {delta!r}")
    a = jnp.abs(residual)
    return jnp.where(a <= delta, 0.5 * residual**2, delta * (a - 0.5 * delta))


def weighted_mean(values, mask, weight=None, reduction: str = "mean"):
    """Σ_k m_k w_k v_k / Σ_k m_k w_k (`"mean"`) or Σ_k m_k w_k v_k (`"sum"`).

    `mask` (bool) and `weight` (or `None` for 1) broadcast against `values` along its leading
    axis. Masked entries are selected out with `jnp.where`, so their values (even NaN) reach
    neither the result nor the gradient. An all-masked input gives 0.

    **Raises:** [`nlxc.InputError`][] for an unknown `reduction`.
    """
    _check_option("reduction", reduction, _REDUCTIONS)
    values = jnp.asarray(values)
    mask = jnp.asarray(mask)

    def leading(x):  # (n,) -> (n, 1, ..., 1) to broadcast along the leading axis of values
        return jnp.reshape(x, x.shape + (1,) * (values.ndim - x.ndim))

    w = jnp.ones(values.shape, values.dtype) if weight is None else jnp.broadcast_to(
        leading(jnp.asarray(weight, values.dtype)), values.shape)
    w = jnp.where(leading(mask), w, 0.0)
    total = jnp.sum(w * jnp.where(leading(mask), values, 0.0))
    if reduction == "sum":
        return total
    norm = jnp.sum(w)
    return total / jnp.where(norm > 0, norm, 1.0)


def _masked(mask, x):
    """x where the batch entry is real, else 0 (broadcast over trailing axes)."""
    m = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(m, x, 0.0)


def _fill(mask, x):
    """x where the batch entry is real; filler rows get the last real entry's row (the one
    make_batches copies), so nonlinear functions of them stay finite whatever the filler holds."""
    last = mask.shape[0] - 1 - jnp.argmax(mask[::-1])
    m = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(m, x, x[last][None])


def _grid_weights(weights, negative_weights):
    _check_option("negative_weights", negative_weights, _NEGATIVE_WEIGHTS)
    if negative_weights == "clip":
        return jnp.maximum(weights, 0.0)
    if negative_weights == "abs":
        return jnp.abs(weights)
    return weights


def _solve(functional, batch, result, solve_kwargs, **forced):
    if result is not None:
        if not isinstance(result, SCFResult):
            raise InputError(f"result must be an nlxc.SCFResult of the batch, got {type(result).__name__}")
        if result.energy.shape != batch.mask.shape:
            raise InputError(f"result has energies of shape {result.energy.shape}, but the batch has "
                             f"{batch.mask.shape[0]} entries")
        return result
    kwargs = dict(solve_kwargs or {})
    kwargs.update(forced)
    return solve_batch(functional, batch.system, **kwargs)


# --------------------------------------------------------------------------------------------
# Energy losses
# --------------------------------------------------------------------------------------------


def energy_loss(functional: AbstractFunctional, batch: Batch, targets: Targets, *, kind: str = "mse",
                delta: float = DEFAULT_HUBER_DELTA, reduction: str = "mean", result: SCFResult | None = None,
                solve_kwargs: Mapping | None = None) -> Float[Array, ""]:
    """Error of the self-consistent total energies: the Kohn–Sham-regularised energy loss.

    L = Σ_k m_k w_k ℓ(E_k[θ] − E_k^ref) / Σ_k m_k w_k, where E_k[θ] is the total energy of the
    SCF solution of the functional (so the density is the functional's own self-consistent one:
    training through the Kohn–Sham equations, which Li et al. showed regularises the learned
    functional, Phys. Rev. Lett. 126, 036401 (2021), doi:10.1103/PhysRevLett.126.036401), ℓ is
    [`errors`][nlxc.losses.errors] of `kind`, m the batch mask and w `targets.weight`.
    Gradients go through the SCF by the implicit adjoint of [`nlxc.solve`][] (its default):
    one adjoint linear solve per molecule, independent of the number of SCF iterations.

    **Arguments:**

    - `functional`, `batch`, `targets` (needs `energy`).
    - `kind`: `"mse"` (default, Hartree²), `"mae"` (Hartree) or `"huber"` (with `delta`, Hartree).
    - `reduction`: `"mean"` (weighted mean over the real molecules) or `"sum"`.
    - `result`: the batch's `SCFResult` (from [`nlxc.batch.solve_batch`][] of the same
      functional), to share one SCF among several losses; default: solved here.
    - `solve_kwargs`: keyword arguments for [`nlxc.solve`][] (solver, max_steps, adjoint, …).

    **Returns:** the scalar loss.

    **Raises:** [`nlxc.InputError`][] for targets that do not fit the batch or an unknown option.
    """
    _check_targets(batch, targets)
    errors(jnp.zeros(()), kind, delta)  # validate the options before solving
    _check_option("reduction", reduction, _REDUCTIONS)
    result = _solve(functional, batch, result, solve_kwargs)
    residual = _masked(batch.mask, result.energy - targets.energy)
    return weighted_mean(errors(residual, kind, delta), batch.mask, targets.weight, reduction)


def reaction_loss(functional: AbstractFunctional, batches: Batch | Sequence[Batch], reactions: Reactions, *,
                  kind: str = "mse", delta: float = DEFAULT_HUBER_DELTA, reduction: str = "mean",
                  results: SCFResult | Sequence[SCFResult] | None = None,
                  solve_kwargs: Mapping | None = None) -> Float[Array, ""]:
    """Error of reaction (or atomization) energies, ΔE = C @ E, through the SCF.

    The self-consistent total energies of the molecules of `batches` are scattered into a
    dataset vector E (by `Batch.index`; filler entries are dropped), and
    L = Σ_r w_r ℓ((C E)_r − ΔE_r^ref) / Σ_r w_r over the *complete* reactions: those whose
    species (non-zero columns of C) all appear in `batches`. Reactions with a missing species
    are skipped, so a subset of the batches gives a mini-batch of reactions. Gradients go
    through every SCF by the implicit adjoint (as [`energy_loss`][nlxc.losses.energy_loss]).
    Reaction energies cancel much of the systematic error of total energies; this is what
    thermochemistry benchmarks (G2, W4-11, GMTKN55) measure.

    **Arguments:**

    - `functional`; `batches`: one [`Batch`][nlxc.batch.Batch] or a sequence of them (one
      compiled SCF per distinct shape); `reactions`: a [`Reactions`][nlxc.losses.Reactions].
    - `kind`, `delta`, `reduction`: as in `energy_loss` (per reaction).
    - `results`: the `SCFResult`s of the batches (same order), to share SCFs; default: solved here.
    - `solve_kwargs`: keyword arguments for [`nlxc.solve`][].

    **Returns:** the scalar loss (Hartree² for `"mse"`); 0 if no reaction is complete.

    **Raises:** [`nlxc.InputError`][] for an unknown option, results that do not match the
    batches, or (when the batch indices are concrete) batches without any complete reaction or
    with molecule indices beyond the columns of `reactions`.
    """
    if isinstance(batches, Batch):
        batches = [batches]
    if isinstance(results, SCFResult):
        results = [results]
    batches = list(batches)
    if not batches:
        raise InputError("no batches given")
    for b in batches:
        _check_batch(b)
    if not isinstance(reactions, Reactions):
        raise InputError(f"expected nlxc.losses.Reactions, got {type(reactions).__name__}")
    if results is not None:
        results = list(results)
        if len(results) != len(batches):
            raise InputError(f"{len(results)} results for {len(batches)} batches")
    errors(jnp.zeros(()), kind, delta)
    _check_option("reduction", reduction, _REDUCTIONS)
    c = reactions.stoichiometry
    n = c.shape[1]
    concrete = not any(isinstance(b.index, jax.core.Tracer) or isinstance(b.mask, jax.core.Tracer) for b in batches)
    if concrete:
        real = np.concatenate([np.asarray(b.index)[np.asarray(b.mask)] for b in batches])
        if real.size and real.max() >= n:
            raise InputError(f"batch molecule {int(real.max())} is beyond the {n} molecules of the reactions")
        needed = np.abs(np.asarray(c)) > 0
        have = np.zeros(n, bool)
        have[real] = True
        if not np.any(np.all(have[None, :] | ~needed, axis=1)):
            raise InputError("no reaction has all its molecules in the given batches")
    energies = jnp.zeros(n)
    present = jnp.zeros(n)
    for k, b in enumerate(batches):
        result = _solve(functional, b, None if results is None else results[k], solve_kwargs)
        idx = jnp.where(b.mask, b.index, n)  # filler entries point past the end: dropped
        energies = energies.at[idx].add(jnp.where(b.mask, result.energy, 0.0), mode="drop")
        present = present.at[idx].add(1.0, mode="drop")
    complete = jnp.all((c == 0) | (present[None, :] > 0), axis=1)
    residual = jnp.where(complete, c @ energies - reactions.reference, 0.0)
    return weighted_mean(errors(residual, kind, delta), complete, reactions.weight, reduction)


def trajectory_weights(n_steps: int, discount: float = 0.9, skip: int = 0) -> Float[Array, " steps"]:
    """Weights w_k = γ^{K−k} of the K SCF iterations (k = 1 … K), zero for k ≤ `skip`.

    The last iteration has weight 1 and earlier ones are discounted geometrically, as in the
    trajectory loss of Li et al., Phys. Rev. Lett. 126, 036401 (2021),
    doi:10.1103/PhysRevLett.126.036401 (jax_dft's `trajectory_mse`). Skipping the first
    iterations ignores the (functional-independent) errors of the initial guess.

    **Raises:** [`nlxc.InputError`][] for `n_steps < 1`, `discount` outside (0, 1] or `skip`
    outside [0, n_steps).
    """
    if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise InputError(f"n_steps must be a positive integer, got {n_steps!r}")
    if not 0 < discount <= 1:
        raise InputError(f"discount must be in (0, 1], got {discount!r}")
    if not isinstance(skip, (int, np.integer)) or not 0 <= skip < n_steps:
        raise InputError(f"skip must be an integer in [0, {n_steps}), got {skip!r}")
    k = np.arange(1, n_steps + 1)
    return jnp.asarray(np.where(k > skip, float(discount) ** (n_steps - k), 0.0))


def trajectory_loss(functional: AbstractFunctional, batch: Batch, targets: Targets, *, max_steps: int = 20,
                    discount: float = 0.9, skip: int = 0, weights=None, density_weight: float = 0.0,
                    reduction: str = "mean", result: SCFResult | None = None,
                    solve_kwargs: Mapping | None = None) -> Float[Array, ""]:
    """The Kohn–Sham regulariser's trajectory loss: the energy error at every SCF iteration.

    L = Σ_mol m w [ Σ_{k=1}^{K} w_k (E^{(k)} − E^ref)² + λ ∫ (ρ^{(K)} − ρ^ref)² d³r ] / Σ_mol m w,

    where E^{(k)} is the total energy of the density produced by the k-th Kohn–Sham iteration
    (k = 1 … K = `max_steps`; E^{(K)} is the returned energy), w_k are
    [`trajectory_weights`][nlxc.losses.trajectory_weights] (or `weights`), and λ =
    `density_weight` adds the final density error ([`density_difference`][nlxc.losses.density_difference],
    `"l2"` metric, clipped weights). The SCF runs exactly K iterations with
    [`nlxc.scf.UnrolledAdjoint`][] and gradients flow through all of them (checkpointed), so the
    functional is trained to make the SCF converge fast *and* to the right energy, not only to
    have the right fixed point (Li et al., Phys. Rev. Lett. 126, 036401 (2021),
    doi:10.1103/PhysRevLett.126.036401). Cost: K Fock builds forward and about 2K backward per
    molecule; memory grows with K only by the solver state. Prefer
    [`energy_loss`][nlxc.losses.energy_loss] (implicit adjoint) when only the fixed point matters.

    **Arguments:**

    - `functional`, `batch`, `targets` (needs `energy`; `density_matrix` if `density_weight > 0`).
    - `max_steps`: K, the number of unrolled iterations.
    - `discount`, `skip`: the default weights `trajectory_weights(K, discount, skip)`.
    - `weights`: explicit weights, `(K,)`, instead.
    - `density_weight`: λ, in Hartree² per (electrons² / Bohr³).
    - `reduction`: `"mean"` or `"sum"` over molecules.
    - `result`: an unrolled `SCFResult` of the batch (with `history`), to share the SCF.
    - `solve_kwargs`: more keyword arguments for [`nlxc.solve`][] (e.g. a damped
      `solver=nlxc.scf.DIIS(...)`, or `adjoint=nlxc.scf.UnrolledAdjoint(checkpoint=False)`;
      the adjoint must be an `UnrolledAdjoint`); `max_steps` is set here.

    **Returns:** the scalar loss, Hartree².

    **Raises:** [`nlxc.InputError`][] for weights of the wrong shape, a `result` without
    history, or as the other losses.
    """
    _check_targets(batch, targets, *(("density_matrix",) if density_weight else ()))
    _check_option("reduction", reduction, _REDUCTIONS)
    if weights is None:
        w = trajectory_weights(max_steps, discount, skip)
    else:
        w = jnp.asarray(weights, dtype=float)
        if w.shape != (max_steps,):
            raise InputError(f"trajectory weights have shape {w.shape}, expected ({max_steps},)")
    if result is not None and result.history is None:
        raise InputError("result has no history: solve with adjoint=nlxc.scf.UnrolledAdjoint()")
    kwargs = dict(solve_kwargs or {})
    if "max_steps" in kwargs:
        raise InputError("trajectory_loss sets max_steps itself; pass max_steps=, not in solve_kwargs")
    adjoint = kwargs.pop("adjoint", UnrolledAdjoint())
    if not isinstance(adjoint, UnrolledAdjoint):
        raise InputError(f"trajectory_loss needs an nlxc.scf.UnrolledAdjoint, got {type(adjoint).__name__}")
    result = _solve(functional, batch, result, kwargs, adjoint=adjoint, max_steps=max_steps)
    if result.history.energies.shape[-1] != max_steps:
        raise InputError(f"result has {result.history.energies.shape[-1]} iterations, expected {max_steps}")
    # history.energies[k] is the energy of the *input* of iteration k; the outputs of
    # iterations 1..K are inputs 2..K plus the final density.
    trajectory = jnp.concatenate([result.history.energies[:, 1:], result.energy[:, None]], axis=1)
    residual = _masked(batch.mask, trajectory - targets.energy[:, None])
    per_molecule = jnp.sum(w * residual**2, axis=1)
    if density_weight:
        per_molecule = per_molecule + density_weight * _density_errors(
            batch, result.density_matrix, targets.density_matrix, "l2", "clip")
    return weighted_mean(per_molecule, batch.mask, targets.weight, reduction)


def non_self_consistent_loss(functional: AbstractFunctional, batch: Batch, targets: Targets, *,
                             kind: str = "mse", delta: float = DEFAULT_HUBER_DELTA,
                             reduction: str = "mean") -> Float[Array, ""]:
    """Energy error at the fixed reference densities: the cheap, non-self-consistent baseline.

    L = Σ_k m_k w_k ℓ(E_θ[P_k^ref] − E_k^ref) / Σ_k m_k w_k, with E_θ[P] the total energy
    ([`nlxc.scf.energy_components`][]) of the reference density matrix evaluated with the
    learned functional. No SCF: the cost is one energy evaluation per molecule (its gradient:
    one more), and no adjoint solve. The functional is never asked to produce the density, so
    nothing stops it from having a poor potential (the reason for the Kohn–Sham regulariser and
    [`derivative_loss`][nlxc.losses.derivative_loss]); see e.g. Kirkpatrick et al., Science 374,
    1385 (2021), doi:10.1126/science.abj6511, who trained DM21 at fixed densities with an extra
    regulariser on the response.

    **Arguments:** `functional`, `batch`, `targets` (needs `energy` and `density_matrix`);
    `kind`, `delta`, `reduction` as in [`energy_loss`][nlxc.losses.energy_loss].

    **Returns:** the scalar loss (Hartree² for `"mse"`).

    **Raises:** [`nlxc.InputError`][] for missing or mismatched targets or an unknown option.
    """
    _check_targets(batch, targets, "density_matrix")
    errors(jnp.zeros(()), kind, delta)
    _check_option("reduction", reduction, _REDUCTIONS)

    def one(system, p):
        return energy_components(functional.prepare(system), system, p).total

    energy = eqx.filter_vmap(one)(batch.system, _fill(batch.mask, targets.density_matrix))
    residual = _masked(batch.mask, energy - targets.energy)
    return weighted_mean(errors(residual, kind, delta), batch.mask, targets.weight, reduction)


# --------------------------------------------------------------------------------------------
# Density losses
# --------------------------------------------------------------------------------------------


def density_difference(system: System, density_matrix: Float[Array, "2 nao nao"],
                       reference: Float[Array, "2 nao nao"], metric: str = "l2", *,
                       negative_weights: str = "clip") -> Float[Array, ""]:
    """Distance between the densities of two α/β density matrices, for one molecule.

    With ΔP = Σσ (Pσ − Pσ^ref) (the total density matrix difference):

    - `"l2"`: ∫ (ρ − ρ^ref)² d³r ≈ Σ_g w_g (Σ_μν φ_μ(r_g) ΔP_μν φ_ν(r_g))², electrons² / Bohr³,
      on the System's grid. PySCF's Becke-partitioned grids have a few negative quadrature
      weights (far from the nuclei); `negative_weights="clip"` (default) uses max(w_g, 0) so the
      loss is a sum of non-negative terms and cannot be lowered by putting density error where
      a weight is negative; `"abs"` uses |w_g|, `"keep"` the signed weights (the most accurate
      quadrature of a smooth integrand, but not guaranteed ≥ 0). Cost O(ngrid · nao²).
    - `"coulomb"`: the Hartree energy of the density error, ½ ∫∫ Δρ(r) Δρ(r') / |r − r'| =
      ½ Σ_Q (Σ_μν B_Qμν ΔP_μν)², Hartree, with the System's Cholesky-orthogonalised
      density-fitting tensor B (the Coulomb metric of density fitting; Vahtras, Almlöf,
      Feyereisen, Chem. Phys. Lett. 213, 514 (1993), doi:10.1016/0009-2614(93)89151-7). It
      weights long-range errors (dipoles, charge transfer) and is what the energy is most
      sensitive to. Cost O(naux · nao²), no grid.

    Padded basis functions, auxiliary functions and grid points contribute nothing.

    **Raises:** [`nlxc.InputError`][] for an unknown `metric` or `negative_weights`.
    """
    _check_option("metric", metric, _METRICS)
    _check_option("negative_weights", negative_weights, _NEGATIVE_WEIGHTS)
    dp = jnp.sum(density_matrix - reference, axis=0)
    if metric == "coulomb":
        fitted = jnp.einsum("Qmn,mn->Q", system.cderi, dp)
        return 0.5 * jnp.dot(fitted, fitted)
    phi = system.ao[0]
    drho = jnp.einsum("gm,mn,gn->g", phi, dp, phi)
    return jnp.sum(_grid_weights(system.grid_weights, negative_weights) * drho**2)


def _density_errors(batch, density_matrix, reference, metric, negative_weights):
    reference = _masked(batch.mask, reference)  # NaN filler targets never reach the arithmetic
    density_matrix = _masked(batch.mask, density_matrix)
    return eqx.filter_vmap(lambda s, p, q: density_difference(s, p, q, metric, negative_weights=negative_weights))(
        batch.system, density_matrix, reference)


def density_loss(functional: AbstractFunctional, batch: Batch, targets: Targets, *, metric: str = "l2",
                 negative_weights: str = "clip", reduction: str = "mean", result: SCFResult | None = None,
                 solve_kwargs: Mapping | None = None) -> Float[Array, ""]:
    """Error of the self-consistent densities against the reference densities.

    L = Σ_k m_k w_k D(P_k[θ], P_k^ref) / Σ_k m_k w_k, D the
    [`density_difference`][nlxc.losses.density_difference] of `metric` (`"l2"`: ∫ Δρ² d³r,
    electrons²/Bohr³; `"coulomb"`: ½ ∫∫ Δρ Δρ' / |r − r'|, Hartree), P[θ] the functional's SCF
    density, differentiated by the implicit adjoint. The density is what the Kohn–Sham
    regulariser of Li et al. adds to the energy (Phys. Rev. Lett. 126, 036401 (2021),
    doi:10.1103/PhysRevLett.126.036401): it constrains the potential, not only the energy.

    **Arguments:** `functional`, `batch`, `targets` (needs `density_matrix`); `metric`,
    `negative_weights` as in `density_difference`; `reduction`, `result`, `solve_kwargs` as in
    [`energy_loss`][nlxc.losses.energy_loss].

    **Returns:** the scalar loss.

    **Raises:** [`nlxc.InputError`][] for missing or mismatched targets or an unknown option.
    """
    _check_targets(batch, targets, "density_matrix")
    _check_option("metric", metric, _METRICS)
    _check_option("negative_weights", negative_weights, _NEGATIVE_WEIGHTS)
    _check_option("reduction", reduction, _REDUCTIONS)
    result = _solve(functional, batch, result, solve_kwargs)
    values = _density_errors(batch, result.density_matrix, targets.density_matrix, metric, negative_weights)
    return weighted_mean(values, batch.mask, targets.weight, reduction)


# --------------------------------------------------------------------------------------------
# Derivative-informed (Sobolev) losses
# --------------------------------------------------------------------------------------------


def _orbital_spaces(system: System, density_matrix):
    """X `(nao, nmo)`, the occupied projector P = Xᵀ S Pσ S X and the virtual projector
    Q = 1_valid − P `(2, nmo, nmo)` in the orthonormal basis; padded orbitals (zero columns of
    X) are in neither."""
    x = system.orthogonalizer
    sx = system.overlap @ x
    p = jnp.einsum("mi,smn,nj->sij", sx, density_matrix, sx)
    valid = (jnp.sum(x * x, axis=0) > 0).astype(p.dtype)
    q = jnp.diag(valid)[None] - p
    return x, p, q


def ov_gradient(functional: AbstractFunctional, system: System,
                density_matrix: Float[Array, "2 nao nao"]) -> Float[Array, "2 nmo nmo"]:
    """The energy gradient with respect to occupied–virtual orbital rotations, for one molecule.

    With X the System's orthonormalising matrix (`Xᵀ S X = 1`), P = Xᵀ S Pσ S X the occupied
    projector of spin σ and Q = 1 − P the virtual one (padded orbitals excluded from both), an
    orbital rotation exp(A), A = Z − Zᵀ with Z = Q Z P, changes the density by δPσ = Z + Zᵀ to
    first order, so dE = 2 tr(F Z) and

        G = ∂E/∂Z = 2 Q F P,  F = Xᵀ Fσ X,  Fσ = ∂E/∂Pσ,

    whose only non-zero block is 2 F_ai = 2 C_aᵀ Fσ C_i in any orbital basis of the occupied
    (i) and virtual (a) spaces: the derivative of the energy on the Grassmannian. It vanishes at
    a self-consistent solution of the functional. The density matrix should be idempotent
    (integer occupations, e.g. an SCF solution). Restricted Systems have Fα = Fβ.

    **Returns:** G, `(2, nmo, nmo)`, Hartree, in the orthonormal basis of `system`.
    """
    x, p, q = _orbital_spaces(system, density_matrix)
    _, fock = energy_and_fock(functional.prepare(system), system, density_matrix)
    return _ov_from_fock(x, p, q, fock)


def _ov_from_fock(x, p, q, fock):
    f = jnp.einsum("mi,smn,nj->sij", x, fock, x)
    return 2.0 * q @ f @ p


def orbital_hessian_product(functional: AbstractFunctional, system: System,
                            density_matrix: Float[Array, "2 nao nao"],
                            direction: Float[Array, "2 nmo nmo"]) -> Float[Array, "2 nmo nmo"]:
    """The orbital (electronic) Hessian times an occupied–virtual rotation direction.

    H V = d/dt G(tV) at t = 0, with G = ∂E/∂Z the rotation gradient of
    [`ov_gradient`][nlxc.losses.ov_gradient] and E(Z) the energy of the rotated density
    exp(A) P exp(−A), A = QZP − (QZP)ᵀ (per spin). It is computed by forward-over-reverse
    automatic differentiation of E(Z) (the rotation is expanded to second order,
    P + [A, P] + ½[A, [A, P]], which gives the exact second derivative). At a stationary point,
    in canonical orbitals,

        (H V)_ai = 2 (ε_a − ε_i) V_ai + 4 Σ_σ' Σ_bj (ai|f_Hxc^{σσ'}|bj) V_bj ( = 2 [(A + B) V]_ai ),

    the real-orbital stability / linear-response matrix A + B of Hartree–Fock and Kohn–Sham
    theory (Seeger & Pople, J. Chem. Phys. 66, 3045 (1977), doi:10.1063/1.434318; Helgaker,
    Jørgensen, Olsen, *Molecular Electronic-Structure Theory*, Wiley (2000), ch. 10), with the
    Coulomb, exact-exchange and xc kernels all from autodiff of the functional. For a
    restricted System use a spin-symmetric direction (Vα = Vβ, as
    [`random_rotations`][nlxc.losses.random_rotations] gives): its energy is a function of
    (Pα + Pβ)/2 only.

    **Arguments:** `functional`, `system`, `density_matrix` `(2, nao, nao)`, `direction`
    `(2, nmo, nmo)` (only its Q·P block is used).

    **Returns:** H V, `(2, nmo, nmo)`, Hartree (non-zero only in the occupied–virtual block).
    Cost: about three Fock builds.
    """
    x, p, q = _orbital_spaces(system, density_matrix)
    functional = functional.prepare(system)

    def energy(z):
        a = q @ z @ p
        a = a - jnp.swapaxes(a, -1, -2)
        first = a @ p - p @ a
        rotated = p + first + 0.5 * (a @ first - first @ a)
        return energy_components(functional, system, jnp.einsum("mi,sij,nj->smn", x, rotated, x)).total

    _, hv = jax.jvp(jax.grad(energy), (jnp.zeros_like(p),), (direction,))
    return q @ hv @ p


def random_rotations(key, system: System, density_matrix: Float[Array, "2 nao nao"],
                     n: int) -> Float[Array, "n 2 nmo nmo"]:
    """`n` random occupied–virtual rotation directions for one molecule, each of unit norm.

    V = Q M P per spin with M a standard normal matrix, normalised so that Σσ ‖Vσ‖_F = 1
    (a uniformly random direction in the occupied–virtual space). Restricted Systems get
    spin-symmetric directions (Vβ = Vα, then normalised). A molecule without virtual orbitals
    gets zero directions. Padded orbitals are excluded (zero rows and columns).

    **Returns:** `(n, 2, nmo, nmo)`, dimensionless (radians).
    """
    _, p, q = _orbital_spaces(system, density_matrix)
    m = jax.random.normal(key, (n,) + p.shape, dtype=p.dtype)
    if system.restricted:
        m = m.at[:, 1].set(m[:, 0])
    v = q[None] @ m @ p[None]
    norm = jnp.sqrt(jnp.sum(v**2, axis=(1, 2, 3), keepdims=True))
    ok = norm > 1e-12
    return jnp.where(ok, v / jnp.where(ok, norm, 1.0), 0.0)


def derivative_loss(functional: AbstractFunctional, batch: Batch, targets: Targets, *,
                    gradient_weight: float = 1.0, hessian_weight: float = 1.0,
                    reduction: str = "mean") -> Float[Array, ""]:
    """Derivative-informed (Sobolev) loss: match the reference functional's orbital gradient and
    orbital Hessian at the reference density.

    At each reference density P^ref (no SCF):

        L_mol = a ‖G_θ − G_ref‖² + b (1/n_dir) Σ_d ‖H_θ V_d − H_ref V_d‖²,

    with G = 2 Q F P the occupied–virtual orbital gradient of [`ov_gradient`][nlxc.losses.ov_gradient]
    (G_ref from `targets.fock_matrix`, ≈ 0 at the reference's own SCF solution, so the first
    term asks the learned functional to make the reference density stationary: its SCF then
    lands on the reference density), H V the [`orbital_hessian_product`][nlxc.losses.orbital_hessian_product]
    along the directions `targets.rotations` (H_ref V = `targets.hessian_products`), ‖·‖ the
    Frobenius norm summed over spins (invariant to rotations among occupied and among virtual
    orbitals), a = `gradient_weight`, b = `hessian_weight`; the loss is the weighted mean (or
    sum) over the real molecules, Hartree². Matching derivatives as well as values is Sobolev
    training (Czarnecki et al., *Sobolev Training for Neural Networks*, NeurIPS 2017,
    arXiv:1706.04859); the second derivative is the response (A + B) matrix, so the learned
    functional also inherits the reference's density response (polarisabilities, excitation
    structure). Use it to distil an expensive functional (e.g. B3LYP) into a cheaper one, with
    labels from [`Targets.with_derivatives`][nlxc.losses.Targets.with_derivatives]. The
    density matrices must be idempotent (SCF solutions, not correlated 1-RDMs); padded orbitals
    are outside the occupied–virtual space by construction.

    Cost per molecule: one Fock build for G and about three per direction for H V (and
    about twice that for the parameter gradient): third derivatives of the xc energy.

    **Arguments:** `functional`, `batch`, `targets` (needs `density_matrix`, `fock_matrix`,
    and `rotations`, `hessian_products` if `hessian_weight` ≠ 0); the weights a, b; `reduction`.

    **Returns:** the scalar loss, Hartree².

    **Raises:** [`nlxc.InputError`][] for missing or mismatched targets or an unknown option.
    """
    fields = ["density_matrix", "fock_matrix"]
    if hessian_weight:
        fields += ["rotations", "hessian_products"]
    _check_targets(batch, targets, *fields)
    _check_option("reduction", reduction, _REDUCTIONS)
    if not (gradient_weight or hessian_weight):
        raise InputError("gradient_weight and hessian_weight are both zero")
    mask = batch.mask
    density = _fill(mask, targets.density_matrix)
    reference_fock = _masked(mask, targets.fock_matrix)

    def one(system, p, fock_ref, rotations, products):
        x, pp, qq = _orbital_spaces(system, p)
        _, fock = energy_and_fock(functional.prepare(system), system, p)
        value = 0.0
        if gradient_weight:
            dg = _ov_from_fock(x, pp, qq, fock) - _ov_from_fock(x, pp, qq, fock_ref)
            value = value + gradient_weight * jnp.sum(dg**2)
        if hessian_weight:
            hv = jax.vmap(lambda d: orbital_hessian_product(functional, system, p, d))(rotations)
            value = value + hessian_weight * jnp.mean(jnp.sum((hv - products) ** 2, axis=(1, 2, 3)))
        return value

    if hessian_weight:
        rotations = _masked(mask, targets.rotations)
        products = _masked(mask, targets.hessian_products)
    else:
        rotations = products = jnp.zeros((mask.shape[0],))
    values = eqx.filter_vmap(one)(batch.system, density, reference_fock, rotations, products)
    return weighted_mean(values, mask, targets.weight, reduction)


# --------------------------------------------------------------------------------------------
# Penalties for exact constraints
# --------------------------------------------------------------------------------------------


def _require_semilocal(functional, what):
    if not isinstance(functional, AbstractSemilocalFunctional):
        raise InputError(f"{what} needs a semilocal functional (an AbstractSemilocalFunctional with "
                         f"energy_density), got {type(functional).__name__}")


def uniform_gas_penalty(functional: AbstractSemilocalFunctional, rs, zeta=0.0,
                        reference: AbstractSemilocalFunctional | None = None) -> Float[Array, ""]:
    """Uniform-electron-gas limit: mean squared error of the energy per electron, Hartree².

    At uniform densities ρ = 3/(4π r_s³) with spin polarisation ζ (ρσ = ρ(1 ± ζ)/2, ∇ρ = 0,
    τσ = (3/10)(6π²)^{2/3} ρσ^{5/3}, the uniform-gas kinetic energy density), the penalty is
    mean over the points of (ε_θ − ε_ref)², ε = e_xc/ρ the energy per electron. The default
    reference is Slater exchange + PW92 correlation (Perdew & Wang, Phys. Rev. B 45, 13244
    (1992), doi:10.1103/PhysRevB.45.13244), the parametrised exact uniform-gas limit; pass
    `reference=nlxc.xc.SlaterExchange()` for an exchange-only model. Zero for any functional
    built as a uniform-gas-exact baseline times an enhancement factor pinned to 1 there
    ([`nlxc.xc.EnhancedExchange`][], [`nlxc.xc.EnhancedCorrelation`][]).

    **Arguments:** `functional` (semilocal); `rs` (Bohr) and `zeta` (in [−1, 1]), broadcast
    against each other; `reference` (semilocal).

    **Raises:** [`nlxc.InputError`][] for a non-semilocal functional or reference.
    """
    from .xc.lda import PW92Correlation, SlaterExchange
    from .xc._base import SemilocalSum

    _require_semilocal(functional, "uniform_gas_penalty")
    if reference is None:
        reference = SemilocalSum(coefficients=[1.0, 1.0], terms=(SlaterExchange(), PW92Correlation()))
    _require_semilocal(reference, "uniform_gas_penalty (reference)")
    rs, zeta = jnp.broadcast_arrays(jnp.asarray(rs, dtype=float).ravel(), jnp.asarray(zeta, dtype=float).ravel())
    n = 3.0 / (4.0 * jnp.pi * rs**3)
    rho = jnp.stack([0.5 * n * (1 + zeta), 0.5 * n * (1 - zeta)])
    sigma = jnp.zeros((3,) + n.shape)
    tau = 0.3 * (6.0 * jnp.pi**2) ** (2.0 / 3.0) * rho ** (5.0 / 3.0)
    eps = functional.energy_density(rho, sigma, tau) / n
    eps_ref = reference.energy_density(rho, sigma, tau) / n
    return jnp.mean((eps - eps_ref) ** 2)


def _squared_violation(values, system):
    return jnp.sum(_grid_weights(system.grid_weights, "clip") * jnp.maximum(values, 0.0) ** 2)


def correlation_sign_penalty(functional: AbstractFunctional, system: System,
                             density_matrix: Float[Array, "2 nao nao"]) -> Float[Array, ""]:
    """Non-positivity of the correlation energy, E_c ≤ 0: the squared violation.

    For a semilocal correlation functional the constraint is imposed pointwise on the grid,
    P = ∫ max(e_c(r), 0)² d³r, Hartree²/Bohr³ (the energy density must be ≤ 0 everywhere, a
    sufficient condition, satisfied by PW92, VWN, PBE and LYP correlation); for any other
    functional P = max(E_c, 0)², Hartree². Pass the *correlation part* of a model. Zero when
    satisfied; squaring makes the penalty continuously differentiable, so its gradient
    vanishes smoothly at the constraint boundary and pushes only the violating points.
    Quadrature weights are clipped at 0.

    **Returns:** P ≥ 0.
    """
    density = Density.from_density_matrix(density_matrix, system)
    if isinstance(functional, AbstractSemilocalFunctional):
        e = functional.energy_density(density.rho, density.sigma, density.tau)
        return _squared_violation(e, system)
    return jnp.maximum(functional.prepare(system)(density, density_matrix, system), 0.0) ** 2


def lieb_oxford_penalty(functional: AbstractFunctional, system: System, density_matrix: Float[Array, "2 nao nao"],
                        *, bound: float = GLOBAL_LIEB_OXFORD_CONSTANT) -> Float[Array, ""]:
    """Lieb–Oxford bound E_xc ≥ −C ∫ ρ^{4/3} d³r: the squared violation.

    C = `bound` (default 1.679, Lieb & Oxford, Int. J. Quantum Chem. 19, 427 (1981),
    doi:10.1002/qua.560190306), ρ = ρα + ρβ. For a semilocal functional the bound is imposed
    pointwise, e_xc(r) ≥ −C ρ(r)^{4/3} (the local, sufficient form used to construct PBE:
    F_xc ≤ C / C_x = 2.273 with C_x = ¾(3/π)^{1/3}; Perdew, Burke, Ernzerhof, Phys. Rev. Lett.
    77, 3865 (1996), doi:10.1103/PhysRevLett.77.3865), so
    P = ∫ max(−C ρ^{4/3} − e_xc, 0)² d³r, Hartree²/Bohr³, with clipped quadrature weights; for
    any other functional globally, P = max(−C ∫ρ^{4/3} − E_xc, 0)², Hartree². For an exchange
    functional the stronger bound F_x ≤ 1.804 (`nlxc.xc.LIEB_OXFORD_BOUND`) of
    spin-unpolarised densities is `bound = 1.804 · C_x ≈ 1.3325`. Zero when satisfied.

    **Returns:** P ≥ 0.
    """
    density = Density.from_density_matrix(density_matrix, system)
    n = jnp.maximum(density.rho.sum(0), 0.0)
    n43 = jnp.where(n > 0, jnp.where(n > 0, n, 1.0) ** (4.0 / 3.0), 0.0)
    if isinstance(functional, AbstractSemilocalFunctional):
        e = functional.energy_density(density.rho, density.sigma, density.tau)
        return _squared_violation(-bound * n43 - e, system)
    exc = functional.prepare(system)(density, density_matrix, system)
    lower = -bound * jnp.sum(_grid_weights(system.grid_weights, "clip") * n43)
    return jnp.maximum(lower - exc, 0.0) ** 2


def spin_scaling_penalty(functional: AbstractFunctional, system: System,
                         density_matrix: Float[Array, "2 nao nao"]) -> Float[Array, ""]:
    """Exchange spin-scaling relation E_x[ρα, ρβ] = ½ E_x[2ρα] + ½ E_x[2ρβ]: squared residual, Hartree².

    E_x[2ρσ] is the spin-unpolarised functional of the total density 2ρσ, i.e. the functional
    of the density matrices (Pσ, Pσ); so the residual is
    r = E[Pα, Pβ] − ½ E[Pα, Pα] − ½ E[Pβ, Pβ] and P = r² (Oliver & Perdew, Phys. Rev. A 20,
    397 (1979), doi:10.1103/PhysRevA.20.397). Exact exchange and
    [`nlxc.xc.EnhancedExchange`][] satisfy it exactly; correlation does not (do not pass it).
    Evaluated spin-unrestricted whatever `system.restricted` is; it is trivially zero for
    Pα = Pβ, so use spin-polarised inputs (open shells).

    **Returns:** P ≥ 0, Hartree².
    """
    system = dataclasses.replace(system, restricted=False)
    f = functional.prepare(system)

    def energy(p):
        return f(Density.from_density_matrix(p, system), p, system)

    pa, pb = density_matrix[0], density_matrix[1]
    r = energy(density_matrix) - 0.5 * energy(jnp.stack([pa, pa])) - 0.5 * energy(jnp.stack([pb, pb]))
    return r**2


def size_consistency_penalty(functional: AbstractFunctional, combined: tuple[System, Array],
                             fragments: Sequence[tuple[System, Array]]) -> Float[Array, ""]:
    """Size consistency of the xc energy: (E_xc[A⋯B] − Σ_F E_xc[F])², Hartree².

    `combined` is `(system, density_matrix)` of fragments far apart (a supermolecule) and
    `fragments` the `(system, density_matrix)` of each fragment alone, with the fragments'
    densities equal to their parts of the combined density (e.g. all from SCF, or the
    combined density matrix as the block-diagonal of the fragments'). Semilocal functionals
    satisfy this up to the quadrature (the grids differ); nonlocal models (attention, message
    passing) need not.

    **Returns:** P ≥ 0, Hartree².

    **Raises:** [`nlxc.InputError`][] if `fragments` is empty.
    """
    fragments = list(fragments)
    if not fragments:
        raise InputError("size_consistency_penalty needs at least one fragment")

    def exc(pair):
        system, p = pair
        return functional.prepare(system)(Density.from_density_matrix(p, system), p, system)

    r = exc(combined) - sum(exc(f) for f in fragments)
    return r**2


def penalty_over_batch(penalty, functional: AbstractFunctional, batch: Batch,
                       density_matrices: Float[Array, "batch 2 nao nao"], *, weight=None,
                       reduction: str = "mean") -> Float[Array, ""]:
    """A per-molecule penalty `penalty(functional, system, density_matrix)` over a batch.

    Vmapped over the batch, then [`weighted_mean`][nlxc.losses.weighted_mean] with the batch
    mask (filler entries count zero; they are evaluated on the last real entry's density, so
    whatever they hold never makes a NaN). `density_matrices` are e.g. `targets.density_matrix` or
    the SCF densities `result.density_matrix`.

    **Raises:** [`nlxc.InputError`][] if `density_matrices` does not fit the batch.
    """
    _check_batch(batch)
    _check_option("reduction", reduction, _REDUCTIONS)
    n, nao = batch.mask.shape[0], batch.system.overlap.shape[-1]
    if density_matrices.shape != (n, 2, nao, nao):
        raise InputError(f"density matrices have shape {density_matrices.shape}, expected {(n, 2, nao, nao)}")
    density_matrices = _fill(batch.mask, density_matrices)
    values = eqx.filter_vmap(lambda s, p: penalty(functional, s, p))(batch.system, density_matrices)
    return weighted_mean(values, batch.mask, weight, reduction)
