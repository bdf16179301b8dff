"""The excitation-energy loss of a padded batch (private): dense TDA / Casida energies inside jit."""

from __future__ import annotations

from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._errors import InputError
from ..batch import Batch
from ..scf import SCFResult
from ..system import System
from ..xc import AbstractFunctional
from ._operator import response_energy

ExcitationKind = Literal["mse", "mae"]
"""Error measure of the excitation-energy loss: squared error (Hartree²) or absolute error (Hartree)."""
EXCITATION_KINDS: tuple[str, ...] = get_args(ExcitationKind)

# Eigenvalue given to the padding of the dense matrices (Hartree; distinct per slot so that the
# padded part of the spectrum is never degenerate), far above any real excitation.
_PADDING_ENERGY = 1.0e3


class ExcitationTargets(eqx.Module):
    """Reference excitation energies of the entries of one [`nlxc.batch.Batch`][].

    - `energies`: the lowest `n` excitation energies of each entry, ascending, `(batch, n)`,
      Hartree (e.g. PySCF's `mf.TDA()` / `mf.TDDFT()` of the reference method; singlets for
      restricted entries, all spin states of the α and β spaces for unrestricted ones).
    - `weight`: per-entry weights, `(batch,)`, or `None` (all 1); the batch mask applies on top.
    - `slots` (static): `((nocc_α, nvir_α), (nocc_β, nvir_β))`, the largest numbers of occupied
      and virtual orbitals over the batch's molecules: the padded occupied–virtual space of the
      dense matrices ([`occupied_virtual_slots`][nlxc.response.occupied_virtual_slots]).
    """

    energies: Float[Array, "batch n"] = eqx.field(converter=lambda x: jnp.asarray(x, dtype=float))
    slots: tuple[tuple[int, int], tuple[int, int]] = eqx.field(static=True)
    weight: Float[Array, " batch"] | None = eqx.field(
        default=None, converter=lambda x: None if x is None else jnp.asarray(x, dtype=float))


def occupied_virtual_slots(systems) -> tuple[tuple[int, int], tuple[int, int]]:
    """`((nocc_α, nvir_α), (nocc_β, nvir_β))`: the largest occupied and virtual orbital counts of
    unpadded [`nlxc.System`][]s (the static shape of the dense excitation matrices of a batch)."""
    out = []
    for s in range(2):
        nocc = [int(np.asarray(x.n_electrons)[s]) for x in systems]
        nvir = [x.nmo - n for x, n in zip(systems, nocc)]
        out.append((max(nocc), max(nvir)))
    return tuple(out)


def _blocks(system: System, result_c, result_e, slots):
    """Per spin block: occupied and virtual coefficients `(nao, O)`, `(nao, V)` (zero columns for
    padding), their energies, and the mask of real (i, a) pairs `(O, V)`."""
    nmo = result_c.shape[-1]
    n_orbitals = jnp.sum(jnp.sum(system.orthogonalizer**2, axis=0) > 0)
    spins = (0,) if system.restricted else (0, 1)
    out = []
    for s in spins:
        n_slots_occ, n_slots_vir = slots[s]
        nocc = system.n_electrons[s]
        i = jnp.arange(n_slots_occ)
        occ_ok = i < nocc
        a = nocc + jnp.arange(n_slots_vir)
        vir_ok = a < n_orbitals
        a = jnp.clip(a, 0, nmo - 1)
        c_occ = jnp.where(occ_ok[None], result_c[s][:, jnp.clip(i, 0, nmo - 1)], 0.0)
        c_vir = jnp.where(vir_ok[None], jnp.take(result_c[s], a, axis=1), 0.0)
        e_occ = jnp.where(occ_ok, result_e[s][jnp.clip(i, 0, nmo - 1)], 0.0)
        e_vir = jnp.where(vir_ok, jnp.take(result_e[s], a), 0.0)
        out.append((c_occ, c_vir, e_occ, e_vir, occ_ok[:, None] & vir_ok[None, :]))
    return out


def _dense_matrices(functional, system, density_matrix, blocks, kinds):
    """The dense matrices `kinds` (of "a", "apb", "amb") in the padded space, `(dim, dim)` each."""
    functional = functional.prepare(system)
    shapes = [b[4].shape for b in blocks]
    dim = sum(o * v for o, v in shapes)
    restricted = len(blocks) == 1

    def gradient(p):
        return jax.grad(response_energy, argnums=2)(functional, system, p)

    def kernel(x, kind):
        parts, start = [], 0
        for (o, v) in shapes:
            parts.append(x[start:start + o * v].reshape(o, v))
            start += o * v
        halves = [b[0] @ xs @ b[1].T for b, xs in zip(blocks, parts)]
        if restricted:
            halves = [halves[0], halves[0]]
        if kind == "a":
            direction = jnp.stack(halves)
        elif kind == "apb":
            direction = jnp.stack([h + h.T for h in halves])
        else:
            direction = jnp.stack([h - h.T for h in halves])
        _, dg = jax.jvp(gradient, (density_matrix,), (direction,))
        return jnp.concatenate([(b[0].T @ dg[s] @ b[1]).ravel() for s, b in enumerate(blocks)])

    diagonal = jnp.concatenate([(b[3][None, :] - b[2][:, None]).ravel() for b in blocks])
    mask = jnp.concatenate([b[4].ravel() for b in blocks])
    padding = jnp.where(mask, 0.0, _PADDING_ENERGY + jnp.arange(dim))
    identity = jnp.eye(dim)
    out = []
    for kind in kinds:
        k = jax.vmap(lambda x, kind=kind: kernel(x, kind))(identity).T
        k = 0.5 * (k + k.T)
        m = jnp.where(mask[:, None] & mask[None, :], k + jnp.diag(diagonal), 0.0)
        out.append(m + jnp.diag(padding))
    return out


def dense_excitation_energies(functional: AbstractFunctional, system: System, result: SCFResult,
                              slots, n_states: int, *, tda: bool = True) -> Float[Array, " n"]:
    """The `n_states` lowest excitation energies of one (possibly padded) molecule, `(n,)`,
    Hartree, from dense A (TDA) or A ± B (Casida) matrices built inside jit.

    The same equations and operator as [`tddft`][nlxc.response.tddft] (singlets for a restricted
    System, the α and β spaces together for an unrestricted one): the kernel part of A, A + B
    and A − B is the forward-mode derivative of the energy gradient along each unit transition
    vector (automatic differentiation of [`response_energy`][nlxc.response.response_energy]),
    in a padded occupied–virtual space of static shape `slots` (see
    [`occupied_virtual_slots`][nlxc.response.occupied_virtual_slots]) in which the orbitals of
    the molecule are selected with masks (padding gets eigenvalues ≥ 1000 Ha). TDA: the lowest
    eigenvalues of A (Hirata & Head-Gordon, Chem. Phys. Lett. 314, 291 (1999),
    doi:10.1016/S0009-2614(99)01149-5); Casida: ω² are the eigenvalues of Lᵀ (A + B) L with
    A − B = L Lᵀ (Cholesky), similar to (A + B)(A − B) (Casida 1995,
    doi:10.1142/9789812830586_0005). Differentiable with respect to the functional's parameters
    and the SCF result (eigenvalue derivatives; exact for non-degenerate states, and finite
    for degenerate ones). Cost: `dim` (TDA) or `2·dim` (Casida) operator products of about three
    Fock builds each, `dim = Σσ nocc_σ·nvir_σ` of `slots`: meant for small molecules.
    """
    density_matrix = result.density_matrix
    blocks = _blocks(system, result.orbital_coefficients, result.orbital_energies, slots)
    if tda:
        (a,) = _dense_matrices(functional, system, density_matrix, blocks, ("a",))
        return jnp.linalg.eigvalsh(a)[:n_states]
    apb, amb = _dense_matrices(functional, system, density_matrix, blocks, ("apb", "amb"))
    lower = jnp.linalg.cholesky(amb)
    omega2 = jnp.linalg.eigvalsh(lower.T @ apb @ lower)[:n_states]
    return jnp.sqrt(jnp.maximum(omega2, 0.0))


def excitation_energy_loss(functional: AbstractFunctional, batch: Batch, result: SCFResult,
                           targets: ExcitationTargets, *, tda: bool = True, kind: ExcitationKind = "mse",
                           reduction: Literal["mean", "sum"] = "mean") -> Float[Array, ""]:
    """Error of the lowest excitation energies of the functional's self-consistent solutions.

    L = Σ_k m_k w_k (1/n) Σ_n ℓ(ω_kn[θ] − ω_kn^ref) / Σ_k m_k w_k, with ω_kn[θ] the `n` lowest
    linear-response excitation energies of molecule k at its SCF solution `result`
    ([`dense_excitation_energies`][nlxc.response.dense_excitation_energies], TDA or Casida), ℓ
    the squared (`"mse"`, Hartree²) or absolute (`"mae"`, Hartree) error, m the batch mask and w
    `targets.weight`. The gradient goes through the eigenproblem and, by the SCF's implicit
    adjoint, through the orbitals and orbital energies. Excitation energies are a downstream
    property of the response (second derivatives of the energy), which the derivative-informed
    loss matches only along random directions (DI-Loss, arXiv:2606.04279).

    **Arguments:** `functional`; `batch` (a [`nlxc.batch.Batch`][]); `result`, the batch's
    [`nlxc.SCFResult`][] (e.g. from [`nlxc.batch.solve_batch`][]); `targets`
    ([`ExcitationTargets`][nlxc.response.ExcitationTargets], `(batch, n)` energies); `tda`;
    `kind`; `reduction` (`"mean"` or `"sum"` over molecules).

    **Returns:** the scalar loss.

    **Raises:** [`nlxc.InputError`][] for targets or a result that do not fit the batch, or an
    unknown `kind` or `reduction`.
    """
    n = batch.mask.shape[0]
    if kind not in EXCITATION_KINDS:
        raise InputError(f"unknown kind {kind!r}; use one of {', '.join(map(repr, EXCITATION_KINDS))}")
    if reduction not in ("mean", "sum"):
        raise InputError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")
    if not isinstance(targets, ExcitationTargets) or targets.energies.ndim != 2 or targets.energies.shape[0] != n:
        raise InputError(f"expected nlxc.response.ExcitationTargets with energies of shape ({n}, n_states)")
    if not isinstance(result, SCFResult) or result.energy.shape != (n,):
        raise InputError(f"result must be the batch's nlxc.SCFResult ({n} entries)")
    values = per_molecule_excitation_errors(functional, batch, result, targets, tda=tda, kind=kind)
    return _weighted_mean(values, batch.mask, targets.weight, reduction)


def per_molecule_excitation_errors(functional, batch: Batch, result: SCFResult, targets: ExcitationTargets, *,
                                   tda: bool = True, kind: ExcitationKind = "mse") -> Float[Array, " batch"]:
    """(1/n) Σ_n ℓ(ω_kn − ω_kn^ref) per entry of the batch, `(batch,)` (zero for filler entries)."""
    n_states = targets.energies.shape[1]
    mask = batch.mask
    last = mask.shape[0] - 1 - jnp.argmax(mask[::-1])
    # filler entries are evaluated on the last real entry (finite whatever they hold)
    fill = jax.tree.map(lambda x: jnp.where(jnp.reshape(mask, mask.shape + (1,) * (x.ndim - 1)), x, x[last][None]),
                        result)
    omega = eqx.filter_vmap(lambda s, r: dense_excitation_energies(functional, s, r, targets.slots, n_states,
                                                                   tda=tda))(batch.system, fill)
    residual = jnp.where(mask[:, None], omega - targets.energies, 0.0)
    errors = residual**2 if kind == "mse" else jnp.abs(residual)
    return jnp.mean(errors, axis=1)


def _weighted_mean(values: Float[Array, " n"], mask: Bool[Array, " n"], weight, reduction) -> Float[Array, ""]:
    w = jnp.where(mask, 1.0 if weight is None else weight, 0.0)
    total = jnp.sum(w * jnp.where(mask, values, 0.0))
    if reduction == "sum":
        return total
    norm = jnp.sum(w)
    return total / jnp.where(norm > 0, norm, 1.0)
