"""Losses of a functional at fixed reference densities (no SCF): pure functions
`(functional, batch, targets) -> scalar`, and constraint penalties over a batch."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._errors import InputError
from ..batch import Batch
from ..scf import energy_and_fock, energy_components
from ..system import System
from ..xc import AbstractFunctional
from ._derivatives import _orbital_spaces, _ov_from_fock, orbital_hessian_product
from ._reductions import (
    DEFAULT_HUBER_DELTA,
    REDUCTIONS,
    Kind,
    Reduction,
    _check_error,
    _check_option,
    _fill,
    _masked,
    errors,
    weighted_mean,
)
from ._targets import Targets, _check_batch, _check_targets


def non_self_consistent_loss(functional: AbstractFunctional, batch: Batch, targets: Targets, *,
                             kind: Kind = "mse", delta: float = DEFAULT_HUBER_DELTA,
                             reduction: Reduction = "mean") -> Float[Array, ""]:
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
    _check_error(kind, delta)
    _check_option("reduction", reduction, REDUCTIONS)

    def one(system, p):
        return energy_components(functional.prepare(system), system, p).total

    energy = eqx.filter_vmap(one)(batch.system, _fill(batch.mask, targets.density_matrix))
    residual = _masked(batch.mask, energy - targets.energy)
    return weighted_mean(errors(residual, kind, delta), batch.mask, targets.weight, reduction)


def derivative_loss(functional: AbstractFunctional, batch: Batch, targets: Targets, *,
                    gradient_weight: float = 1.0, hessian_weight: float = 1.0,
                    reduction: Reduction = "mean") -> Float[Array, ""]:
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
    _check_option("reduction", reduction, REDUCTIONS)
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


def penalty_over_batch(penalty: Callable[[AbstractFunctional, System, Float[Array, "2 nao nao"]], Float[Array, ""]],
                       functional: AbstractFunctional, batch: Batch,
                       density_matrices: Float[Array, "batch 2 nao nao"], *,
                       weight: Float[Array, " batch"] | None = None,
                       reduction: Reduction = "mean") -> Float[Array, ""]:
    """A per-molecule penalty `penalty(functional, system, density_matrix)` over a batch.

    `penalty` is e.g. one of the constraint penalties of `nlxc.xc`: [`correlation_sign_penalty`][nlxc.xc.correlation_sign_penalty],
    [`lieb_oxford_penalty`][nlxc.xc.lieb_oxford_penalty] (with `functools.partial` for
    another bound) or [`spin_scaling_penalty`][nlxc.xc.spin_scaling_penalty].

    Vmapped over the batch, then [`weighted_mean`][nlxc.losses.weighted_mean] with the batch
    mask (filler entries count zero; they are evaluated on the last real entry's density, so
    whatever they hold never makes a NaN). `density_matrices` are e.g. `targets.density_matrix` or
    the SCF densities `result.density_matrix`.

    **Raises:** [`nlxc.InputError`][] if `density_matrices` does not fit the batch.
    """
    _check_batch(batch)
    _check_option("reduction", reduction, REDUCTIONS)
    n, nao = batch.mask.shape[0], batch.system.overlap.shape[-1]
    if density_matrices.shape != (n, 2, nao, nao):
        raise InputError(f"density matrices have shape {density_matrices.shape}, expected {(n, 2, nao, nao)}")
    density_matrices = _fill(batch.mask, density_matrices)
    values = eqx.filter_vmap(lambda s, p: penalty(functional, s, p))(batch.system, density_matrices)
    return weighted_mean(values, batch.mask, weight, reduction)
