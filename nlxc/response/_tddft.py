"""Linear-response TDDFT: excitation energies, vectors and oscillator strengths (private)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._errors import InputError
from ..scf import SCFResult
from ..system import System
from ..xc import AbstractFunctional
from ._davidson import davidson_rpa, davidson_tda, dense_rpa, dense_tda
from ._operator import ResponseOperator, Spin, apply_block


class Excitations(eqx.Module):
    """The lowest excited states from [`tddft`][nlxc.response.tddft] (atomic units).

    - `energies`: excitation energies ω_n, ascending, `(n,)`, Hartree.
    - `oscillator_strengths`: f_n = ⅔ ω_n |⟨0|r|n⟩|², `(n,)`, dimensionless (length gauge;
      zero for triplets).
    - `transition_dipoles`: ⟨0|r|n⟩, `(n, 3)`, Bohr (e·Bohr; the sign of each state is arbitrary).
    - `xpy`, `xmy`: the transition vectors X + Y and X − Y, `(n, dim)`, normalised to
      (X + Y)·(X − Y) = 1 (for TDA, Y = 0 and both are X); layout as in
      [`ResponseOperator`][nlxc.response.ResponseOperator].
    - `residual_norms`: the eigensolver's final residual norms, `(n,)`, Hartree.
    - `converged`: whether every residual is below the tolerance (boolean scalar).
    - `n_iterations`: eigensolver iterations (integer scalar; 0 for `dense=True`).
    - `spin`, `tda`, `n_occupied`, `n_orbitals` (static): what was solved, for
      [`excitation_energies`][nlxc.response.excitation_energies].
    """

    energies: Float[Array, " n"]
    oscillator_strengths: Float[Array, " n"]
    transition_dipoles: Float[Array, "n 3"]
    xpy: Float[Array, "n dim"]
    xmy: Float[Array, "n dim"]
    residual_norms: Float[Array, " n"]
    converged: Bool[Array, ""]
    n_iterations: Int[Array, ""]
    spin: Spin = eqx.field(static=True)
    tda: bool = eqx.field(static=True)
    n_occupied: tuple[int, int] = eqx.field(static=True)
    n_orbitals: int = eqx.field(static=True)


def _spaces(system: System, result: SCFResult) -> tuple[tuple[int, int], int]:
    """(n_occupied α, β), n_orbitals (not padding) from a concrete result; checks occupations."""
    occupations = np.asarray(result.occupations)
    if occupations.ndim != 2:
        raise InputError(f"tddft needs the SCFResult of one molecule (occupations (2, nmo)), got shape "
                         f"{occupations.shape}")
    if not np.all((np.abs(occupations) < 1e-12) | (np.abs(occupations - 1) < 1e-12)):
        raise InputError("tddft needs integer (aufbau) occupations; the SCF was solved with smearing")
    n_occupied = tuple(int(n) for n in occupations.sum(axis=1).round())
    for s in range(2):
        if not np.all(occupations[s, : n_occupied[s]] == 1):
            raise InputError("tddft needs the lowest orbitals occupied (aufbau), but the SCF result has a hole")
    columns = np.sum(np.asarray(system.orthogonalizer) ** 2, axis=0) > 0
    return n_occupied, int(np.count_nonzero(columns))


DENSE_MAX_DIMENSION = 4000
"""The largest number of single excitations `tddft(..., dense=True)` accepts."""


def _check(functional, system, result, n_states, triplet, tda, dense):
    if not isinstance(functional, AbstractFunctional):
        raise InputError(f"tddft needs an nlxc.xc.AbstractFunctional, got {type(functional).__name__}")
    if not isinstance(system, System):
        raise InputError(f"tddft needs an nlxc.System, got {type(system).__name__}")
    if not isinstance(result, SCFResult):
        raise InputError(f"tddft needs the nlxc.SCFResult of nlxc.solve, got {type(result).__name__}")
    if isinstance(n_states, bool) or not isinstance(n_states, (int, np.integer)) or n_states < 1:
        raise InputError(f"the number of excited states must be a positive integer, got {n_states!r}")
    for name, flag in (("tda", tda), ("triplet", triplet), ("dense", dense)):
        if not isinstance(flag, bool):
            raise InputError(f"{name} must be True or False, got {flag!r}")


def tddft(functional: AbstractFunctional, system: System, result: SCFResult, n_states: int, *,
          tda: bool = False, triplet: bool = False, dense: bool = False, tolerance: float = 1e-7,
          max_iterations: int = 100, block_size: int | None = None) -> Excitations:
    """The `n_states` lowest excitations of linear-response TDDFT at an SCF solution.

    Casida's equations (Casida 1995, doi:10.1142/9789812830586_0005)

        [[A, B], [B, A]] [X, Y] = ω [[1, 0], [0, −1]] [X, Y],

    solved in the equivalent symmetric form (A − B)^{1/2} (A + B) (A − B)^{1/2} T = ω² T, or in
    the Tamm–Dancoff approximation A X = ω X (`tda=True`; Hirata & Head-Gordon, Chem. Phys.
    Lett. 314, 291 (1999), doi:10.1016/S0009-2614(99)01149-5), with A and B applied as operators
    by automatic differentiation of the functional's energy (see
    [`ResponseOperator`][nlxc.response.ResponseOperator]), so any nlxc functional (semilocal,
    hybrid, nonlocal model) works. The lowest roots come from a Davidson eigensolver (Davidson
    1975, doi:10.1016/0021-9991(75)90065-0; for RPA the subspace form of Stratmann, Scuseria &
    Frisch 1998, doi:10.1063/1.477483) on blocks of operator products; `dense=True` builds the
    whole matrices instead (for tiny systems and as a test reference).

    Restricted references give singlets (default) or triplets (`triplet=True`: transition
    densities of opposite sign on α and β, with the functional evaluated spin-polarised);
    unrestricted references give the excitations of the α and β spaces together (`triplet`
    must be False). Oscillator strengths are f = ⅔ ω |⟨0|r|n⟩|² (length gauge).

    This runs eagerly (a Python loop around a compiled block product), on concrete inputs; for
    derivatives of the energies with respect to the functional, pass its output to
    [`excitation_energies`][nlxc.response.excitation_energies].

    **Arguments:**

    - `functional`, `system`, `result`: the functional, the [`nlxc.System`][] and its
      [`nlxc.SCFResult`][] from `nlxc.solve(functional, system)` (aufbau occupations, one
      molecule, not a batch).
    - `n_states`: how many excitations, at most the number of single excitations.
    - `tda`, `triplet`, `dense`: as above.
    - `tolerance`: residual norm at which a root is converged, Hartree (the energies are then
      accurate to about its square).
    - `max_iterations`: the most Davidson iterations.
    - `block_size`: vectors per operator application (default `min(dim, 2·n_states + 2)` for
      TDA, `min(dim, n_states + 2)` for RPA, which applies A + B and A − B to each).

    **Returns:** [`Excitations`][nlxc.response.Excitations].

    **Raises:** [`nlxc.InputError`][] for a `n_states` that is not a positive integer or exceeds
    the number of single excitations, `dense=True` beyond 4000 single excitations, `triplet=True` with an unrestricted reference, a result
    with fractional occupations, or arguments of the wrong type;
    `numpy.linalg.LinAlgError` when A − B or (A − B)^{1/2}(A + B)(A − B)^{1/2} is not positive
    (an unstable reference; use `tda=True`).
    """
    _check(functional, system, result, n_states, triplet, tda, dense)
    if triplet and not system.restricted:
        raise InputError("triplet excitations need a restricted (closed-shell) reference; an unrestricted "
                         "reference gives all spin states together")
    spin: Spin = "unrestricted" if not system.restricted else ("triplet" if triplet else "singlet")
    n_occupied, n_orbitals = _spaces(system, result)
    operator = ResponseOperator.from_scf(functional, system, result, spin, n_occupied, n_orbitals)
    dim = operator.dimension
    if n_states > dim:
        raise InputError(f"{n_states} excited states requested, but there are only {dim} single excitations "
                         f"({'x'.join(str(n) for n in operator.block_shapes)} occupied x virtual)")
    if dense and dim > DENSE_MAX_DIMENSION:
        raise InputError(f"dense=True builds {dim}x{dim} matrices; it is meant for tiny systems (at most "
                         f"{DENSE_MAX_DIMENSION} single excitations): use the Davidson solver (dense=False)")
    diagonal = np.asarray(operator.diagonal())
    if block_size is None:
        block_size = min(dim, 2 * n_states + 2) if tda else min(dim, n_states + 2)
    kind = "a" if tda else "pm"

    def apply(vectors):
        out = apply_block(operator, jnp.asarray(vectors), kind)
        return np.asarray(out) if tda else tuple(np.asarray(o) for o in out)

    if dense:
        identity = np.eye(dim)
        columns = [apply(_padded(identity[i:i + block_size], block_size)) for i in range(0, dim, block_size)]
        counts = [min(block_size, dim - i) for i in range(0, dim, block_size)]
        if tda:
            a = np.concatenate([c[:k] for c, k in zip(columns, counts)]).T
            found = dense_tda(a, n_states)
        else:
            apb = np.concatenate([c[0][:k] for c, k in zip(columns, counts)]).T
            amb = np.concatenate([c[1][:k] for c, k in zip(columns, counts)]).T
            found = dense_rpa(apb, amb, n_states)
    else:
        solver = davidson_tda if tda else davidson_rpa
        found = solver(apply, diagonal, n_states, block_size, tolerance=tolerance, max_iterations=max_iterations,
                       max_space=min(dim, max(40 * n_states, 200)))
    energies = jnp.asarray(found.energies)
    xpy = jnp.asarray(found.xpy)
    dipoles = operator.transition_dipoles(xpy)
    strengths = 2.0 / 3.0 * energies * jnp.sum(dipoles**2, axis=1)
    return Excitations(
        energies=energies,
        oscillator_strengths=strengths,
        transition_dipoles=dipoles,
        xpy=xpy,
        xmy=jnp.asarray(found.xmy),
        residual_norms=jnp.asarray(found.residuals),
        converged=jnp.asarray(bool(found.converged)),
        n_iterations=jnp.asarray(found.iterations),
        spin=spin,
        tda=tda,
        n_occupied=n_occupied,
        n_orbitals=n_orbitals,
    )


def _padded(vectors, size):
    out = np.zeros((size, vectors.shape[1]))
    out[: vectors.shape[0]] = vectors
    return out


def excitation_energies(functional: AbstractFunctional, system: System, result: SCFResult,
                        excitations: Excitations) -> Float[Array, " n"]:
    """The excitation energies of `excitations`, as a differentiable function of the functional
    and the SCF result, `(n,)`, Hartree.

    ω_n = ½ [(X+Y)ᵀ (A + B) (X+Y) + (X−Y)ᵀ (A − B) (X−Y)] (TDA: Xᵀ A X), with the vectors of
    `excitations` held fixed (`jax.lax.stop_gradient`). This Lagrangian is stationary in the
    vectors at an eigenpair (with (X+Y)·(X−Y) = 1), so its value is ω_n and its first
    derivative is dω_n = ½ [(X+Y)ᵀ d(A + B) (X+Y) + (X−Y)ᵀ d(A − B) (X−Y)] (Hellmann–Feynman)
    — the derivative through the eigenproblem, exact for non-degenerate states. A and B depend
    on the functional both directly (its kernel) and through the SCF solution (orbitals,
    orbital energies, density), which `nlxc.solve`'s implicit adjoint differentiates.

    Use it inside a loss, with `excitations = tddft(...)` computed at the same functional:

        def omega(f):
            return excitation_energies(f, system, nlxc.solve(f, system), excitations)[0]

        grad = eqx.filter_grad(omega)(functional)

    Jit-able; costs one operator product per state (two for RPA).
    """
    operator = ResponseOperator.from_scf(functional, system, result, excitations.spin, excitations.n_occupied,
                                         excitations.n_orbitals)
    xpy = jax.lax.stop_gradient(excitations.xpy)
    xmy = jax.lax.stop_gradient(excitations.xmy)
    if excitations.tda:
        return jnp.einsum("nd,nd->n", xpy, jax.vmap(operator.a)(xpy))
    plus = jnp.einsum("nd,nd->n", xpy, jax.vmap(operator.apb)(xpy))
    minus = jnp.einsum("nd,nd->n", xmy, jax.vmap(operator.amb)(xmy))
    return 0.5 * (plus + minus)
