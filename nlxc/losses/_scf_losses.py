"""Losses of self-consistent results: pure functions `(result, batch, targets) -> scalar`.

The caller runs the SCF (e.g. [`nlxc.batch.solve_batch`][] of the functional being trained) and
differentiates through it; these functions only compare its result with the labels. Gradients
reach the functional through the result: by the implicit adjoint of [`nlxc.solve`][] (its
default) or, for [`trajectory_loss`][nlxc.losses.trajectory_loss], through every unrolled
iteration ([`nlxc.scf.UnrolledAdjoint`][]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ..batch import Batch
from ..scf import SCFResult
from ..system import System, pack_symmetric
from ._reductions import (
    DEFAULT_HUBER_DELTA,
    REDUCTIONS,
    Kind,
    Reduction,
    _check_error,
    _check_option,
    _masked,
    errors,
    weighted_mean,
)
from ._targets import (
    Reactions,
    Targets,
    _as_batches_and_results,
    _check_result,
    _check_targets,
)

Metric = Literal["l2", "coulomb"]
"""Distance of two densities: ∫ Δρ² d³r on the grid, or the Hartree energy of Δρ."""
METRICS: tuple[str, ...] = get_args(Metric)
"""Density-error metrics of `density_loss` (`metric=`)."""
NegativeWeights = Literal["clip", "abs", "keep"]
"""Treatment of negative quadrature weights in grid integrals of squared errors."""
NEGATIVE_WEIGHTS: tuple[str, ...] = get_args(NegativeWeights)
"""Treatments of negative grid weights in the density metrics (`negative_weights=`)."""


# --------------------------------------------------------------------------------------------
# Energy losses
# --------------------------------------------------------------------------------------------


def energy_loss(result: SCFResult, batch: Batch, targets: Targets, *, kind: Kind = "mse",
                delta: float = DEFAULT_HUBER_DELTA, reduction: Reduction = "mean") -> Float[Array, ""]:
    """Error of the self-consistent total energies: the Kohn–Sham-regularised energy loss.

    L = Σ_k m_k w_k ℓ(E_k[θ] − E_k^ref) / Σ_k m_k w_k, where E_k[θ] = `result.energy[k]` is the
    total energy of the SCF solution of the functional (so the density is the functional's own
    self-consistent one: training through the Kohn–Sham equations, which Li et al. showed
    regularises the learned functional, Phys. Rev. Lett. 126, 036401 (2021),
    doi:10.1103/PhysRevLett.126.036401), ℓ is [`errors`][nlxc.losses.errors] of `kind`, m the
    batch mask and w `targets.weight`. Differentiate the SCF and the loss together: with
    [`nlxc.solve`][]'s default implicit adjoint the gradient costs one adjoint linear solve per
    molecule, independent of the number of SCF iterations.

    **Arguments:**

    - `result`: the batch's `SCFResult`, `(batch,)` energies (from
      [`nlxc.batch.solve_batch`][] of the functional; one result can feed several losses).
    - `batch`, `targets` (needs `energy`).
    - `kind`: `"mse"` (default, Hartree²), `"mae"` (Hartree) or `"huber"` (with `delta`, Hartree).
    - `reduction`: `"mean"` (weighted mean over the real molecules) or `"sum"`.

    **Returns:** the scalar loss.

    **Raises:** [`nlxc.InputError`][] for a result or targets that do not fit the batch, or an
    unknown option.
    """
    _check_targets(batch, targets)
    _check_result(batch, result)
    _check_error(kind, delta)
    _check_option("reduction", reduction, REDUCTIONS)
    residual = _masked(batch.mask, result.energy - targets.energy)
    return weighted_mean(errors(residual, kind, delta), batch.mask, targets.weight, reduction)


def reaction_loss(results: SCFResult | Sequence[SCFResult], batches: Batch | Sequence[Batch],
                  reactions: Reactions, *, kind: Kind = "mse", delta: float = DEFAULT_HUBER_DELTA,
                  reduction: Reduction = "mean") -> Float[Array, ""]:
    """Error of reaction (or atomization) energies, ΔE = C @ E, of self-consistent energies.

    The total energies `results[b].energy` of the molecules of `batches` are scattered into a
    dataset vector E (by `Batch.index`; filler entries are dropped), and
    L = Σ_r w_r ℓ((C E)_r − ΔE_r^ref) / Σ_r w_r over the *complete* reactions: those whose
    species (non-zero columns of C) all appear in `batches`. Reactions with a missing species
    are skipped, so a subset of the batches gives a mini-batch of reactions. Gradients go
    through every SCF (as [`energy_loss`][nlxc.losses.energy_loss]). Reaction energies cancel
    much of the systematic error of total energies; this is what thermochemistry benchmarks
    (G2, W4-11, GMTKN55) measure.

    **Arguments:**

    - `results`: the `SCFResult`s of the batches, in the same order (one, or a sequence).
    - `batches`: one [`Batch`][nlxc.batch.Batch] or a sequence of them (one compiled SCF per
      distinct shape); `reactions`: a [`Reactions`][nlxc.losses.Reactions].
    - `kind`, `delta`, `reduction`: as in `energy_loss` (per reaction).

    **Returns:** the scalar loss (Hartree² for `"mse"`); 0 if no reaction is complete.

    **Raises:** [`nlxc.InputError`][] for an unknown option, results that do not match the
    batches, or (when the batch indices are concrete) batches without any complete reaction or
    with molecule indices beyond the columns of `reactions`.
    """
    batches, results = _as_batches_and_results(batches, results)
    if not isinstance(reactions, Reactions):
        raise InputError(f"expected nlxc.losses.Reactions, got {type(reactions).__name__}")
    _check_error(kind, delta)
    _check_option("reduction", reduction, REDUCTIONS)
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
    for b, result in zip(batches, results):
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


def trajectory_loss(result: SCFResult, batch: Batch, targets: Targets, *, weights: Float[Array, " steps"] | None = None,
                    discount: float = 0.9, skip: int = 0, density_weight: float = 0.0,
                    reduction: Reduction = "mean") -> Float[Array, ""]:
    """The Kohn–Sham regulariser's trajectory loss: the energy error at every SCF iteration.

    L = Σ_mol m w [ Σ_{k=1}^{K} w_k (E^{(k)} − E^ref)² + λ ∫ (ρ^{(K)} − ρ^ref)² d³r ] / Σ_mol m w,

    where E^{(k)} is the total energy of the density produced by the k-th Kohn–Sham iteration
    (k = 1 … K; E^{(K)} is the returned energy), read from the unrolled SCF's history
    (`result.history`, an [`nlxc.scf.SCFHistory`][]; K = its number of iterations), w_k are
    [`trajectory_weights`][nlxc.losses.trajectory_weights] (or `weights`), and λ =
    `density_weight` adds the final density error ([`density_difference`][nlxc.losses.density_difference],
    `"l2"` metric, clipped weights). Solve with `adjoint=nlxc.scf.UnrolledAdjoint()` and
    `max_steps=K` (e.g. `solve_batch(f, batch.system, adjoint=UnrolledAdjoint(), max_steps=20)`):
    the SCF runs exactly K iterations and gradients flow through all of them (checkpointed), so
    the functional is trained to make the SCF converge fast *and* to the right energy, not only
    to have the right fixed point (Li et al., Phys. Rev. Lett. 126, 036401 (2021),
    doi:10.1103/PhysRevLett.126.036401). Cost: K Fock builds forward and about 2K backward per
    molecule; memory grows with K only by the solver state. Prefer
    [`energy_loss`][nlxc.losses.energy_loss] (implicit adjoint) when only the fixed point matters.

    **Arguments:**

    - `result`: the batch's unrolled `SCFResult` (with `history`).
    - `batch`, `targets` (needs `energy`; `density_matrix` if `density_weight > 0`).
    - `discount`, `skip`: the default weights `trajectory_weights(K, discount, skip)`.
    - `weights`: explicit weights, `(K,)`, instead.
    - `density_weight`: λ, in Hartree² per (electrons² / Bohr³).
    - `reduction`: `"mean"` or `"sum"` over molecules.

    **Returns:** the scalar loss, Hartree².

    **Raises:** [`nlxc.InputError`][] for a result without history (not unrolled), weights of
    the wrong shape, or as the other losses.
    """
    _check_targets(batch, targets, *(("density_matrix",) if density_weight else ()))
    _check_result(batch, result)
    _check_option("reduction", reduction, REDUCTIONS)
    if result.history is None:
        raise InputError("trajectory_loss needs an nlxc.scf.UnrolledAdjoint result: result.history is None "
                         "(solve with adjoint=nlxc.scf.UnrolledAdjoint() and max_steps=K)")
    n_steps = result.history.energies.shape[-1]
    if weights is None:
        w = trajectory_weights(n_steps, discount, skip)
    else:
        w = jnp.asarray(weights, dtype=float)
        if w.shape != (n_steps,):
            raise InputError(f"trajectory weights have shape {w.shape}, expected ({n_steps},): the result "
                             f"has {n_steps} iterations")
    # history.energies[k] is the energy of the *input* of iteration k; the outputs of
    # iterations 1..K are inputs 2..K plus the final density.
    trajectory = jnp.concatenate([result.history.energies[:, 1:], result.energy[:, None]], axis=1)
    residual = _masked(batch.mask, trajectory - targets.energy[:, None])
    per_molecule = jnp.sum(w * residual**2, axis=1)
    if density_weight:
        per_molecule = per_molecule + density_weight * _density_errors(
            batch, result.density_matrix, targets.density_matrix, "l2", "clip")
    return weighted_mean(per_molecule, batch.mask, targets.weight, reduction)


# --------------------------------------------------------------------------------------------
# Density losses
# --------------------------------------------------------------------------------------------


def _grid_weights(weights, negative_weights: NegativeWeights):
    if negative_weights == "clip":
        return jnp.maximum(weights, 0.0)
    if negative_weights == "abs":
        return jnp.abs(weights)
    return weights


def density_difference(system: System, density_matrix: Float[Array, "2 nao nao"],
                       reference: Float[Array, "2 nao nao"], metric: Metric = "l2", *,
                       negative_weights: NegativeWeights = "clip") -> Float[Array, ""]:
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
    _check_option("metric", metric, METRICS)
    _check_option("negative_weights", negative_weights, NEGATIVE_WEIGHTS)
    dp = jnp.sum(density_matrix - reference, axis=0)
    if metric == "coulomb":
        fitted = system.cderi_packed @ pack_symmetric(dp)
        return 0.5 * jnp.dot(fitted, fitted)
    drho = system.density_values(dp)
    return jnp.sum(_grid_weights(system.grid_weights, negative_weights) * drho**2)


def _density_errors(batch, density_matrix, reference, metric, negative_weights):
    reference = _masked(batch.mask, reference)  # NaN filler targets never reach the arithmetic
    density_matrix = _masked(batch.mask, density_matrix)
    return eqx.filter_vmap(lambda s, p, q: density_difference(s, p, q, metric, negative_weights=negative_weights))(
        batch.system, density_matrix, reference)


def density_loss(result: SCFResult, batch: Batch, targets: Targets, *, metric: Metric = "l2",
                 negative_weights: NegativeWeights = "clip", reduction: Reduction = "mean") -> Float[Array, ""]:
    """Error of the self-consistent densities against the reference densities.

    L = Σ_k m_k w_k D(P_k[θ], P_k^ref) / Σ_k m_k w_k, D the
    [`density_difference`][nlxc.losses.density_difference] of `metric` (`"l2"`: ∫ Δρ² d³r,
    electrons²/Bohr³; `"coulomb"`: ½ ∫∫ Δρ Δρ' / |r − r'|, Hartree), P[θ] =
    `result.density_matrix` the functional's SCF density (differentiated by the SCF's adjoint).
    The density is what the Kohn–Sham regulariser of Li et al. adds to the energy (Phys. Rev.
    Lett. 126, 036401 (2021), doi:10.1103/PhysRevLett.126.036401): it constrains the
    potential, not only the energy.

    **Arguments:** `result` (the batch's `SCFResult`), `batch`, `targets` (needs
    `density_matrix`); `metric`, `negative_weights` as in `density_difference`; `reduction` as
    in [`energy_loss`][nlxc.losses.energy_loss].

    **Returns:** the scalar loss.

    **Raises:** [`nlxc.InputError`][] for a result or targets that do not fit the batch, or an
    unknown option.
    """
    _check_targets(batch, targets, "density_matrix")
    _check_result(batch, result)
    _check_option("metric", metric, METRICS)
    _check_option("negative_weights", negative_weights, NEGATIVE_WEIGHTS)
    _check_option("reduction", reduction, REDUCTIONS)
    values = _density_errors(batch, result.density_matrix, targets.density_matrix, metric, negative_weights)
    return weighted_mean(values, batch.mask, targets.weight, reduction)
