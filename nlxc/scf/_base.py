"""What every SCF solver declares and shares: its arguments, the SCF map and its auxiliary
output, its progress, its termination."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from ..system import System
from ..xc import AbstractFunctional
from ._aufbau import FermiDirac, density_from_fock, level_shifted, maximum_overlap_density
from ._energy import energy_and_fock


class SCFArguments(eqx.Module):
    """What [`nlxc.scf.solve`][] hands its fixed-point map and solver.

    - `functional`: the (prepared) exchange–correlation functional.
    - `system`: the [`nlxc.System`][].
    - `level_shift`: the virtual-orbital shift used while iterating, Hartree (scalar).
    - `smearing`: `None` (aufbau) or [`nlxc.scf.FermiDirac`][].
    - `maximum_overlap` (static, default `False`): the SCF map keeps the occupations of its input
      (maximum overlap, [`nlxc.scf.maximum_overlap_density`][]) instead of filling the lowest
      orbitals; the Newton fallback of [`nlxc.scf.solve`][] iterates with it, so that a
      stationary point whose occupations are not aufbau is a fixed point too (and its implicit
      derivative holds those occupations fixed). Aufbau occupations only (`smearing` `None`).
    """

    functional: AbstractFunctional
    system: System
    level_shift: Float[Array, ""]
    smearing: FermiDirac | None
    maximum_overlap: bool = eqx.field(static=True, default=False)

    def with_level_shift(self, level_shift: float) -> SCFArguments:
        """The same arguments with another `level_shift` (Hartree), in this one's dtype."""
        return SCFArguments(self.functional, self.system, jnp.asarray(level_shift, self.level_shift.dtype),
                            self.smearing, self.maximum_overlap)

    def with_maximum_overlap(self) -> SCFArguments:
        """The same arguments for the maximum-overlap SCF map (`maximum_overlap=True`)."""
        return SCFArguments(self.functional, self.system, self.level_shift, self.smearing, True)


class SCFAux(eqx.Module):
    """The auxiliary output of the SCF map [`scf_map`][nlxc.scf.scf_map] at a density matrix P:
    what a solver may use without building the Fock matrix again.

    - `energy`: the total energy E[P], Hartree (scalar).
    - `fock`: the Fock matrices F(P) = ∂E/∂P, `(2, nao, nao)`, Hartree, without the level shift.
    """

    energy: Float[Array, ""]
    fock: Float[Array, "2 nao nao"]


def scf_map(density: Float[Array, "2 nao nao"], args: SCFArguments) -> tuple[Float[Array, "2 nao nao"], SCFAux]:
    """One Kohn–Sham step P ↦ D(F(P) + b(S − SPS)): the fixed-point map of [`nlxc.scf.solve`][].

    F(P) = ∂E/∂P is the Fock matrix (automatic differentiation of the total energy), b the
    `args.level_shift` (Hartree; Saunders & Hillier, Int. J. Quantum Chem. 7, 699 (1973),
    doi:10.1002/qua.560070407, which raises the virtual orbitals and leaves the fixed point
    unchanged) and D the aufbau (or `args.smearing`) density matrix of the lowest eigenvectors,
    or, with `args.maximum_overlap`, of the eigenvectors of maximum overlap with `density`
    ([`nlxc.scf.maximum_overlap_density`][]: the same where `density`'s occupied orbitals are
    the lowest).

    **Returns:** the new α/β density matrices `(2, nao, nao)`, and an [`SCFAux`][nlxc.scf.SCFAux]
    with the energy and the (unshifted) Fock matrices of `density`.

    **Raises:** `ValueError` (when traced) for `args.maximum_overlap` with `args.smearing`.
    """
    components, fock = energy_and_fock(args.functional, args.system, density)
    shifted = level_shifted(fock, density, args.system, args.level_shift)
    if args.maximum_overlap:
        if args.smearing is not None:
            raise ValueError("the maximum-overlap SCF map needs aufbau occupations (smearing None)")
        return maximum_overlap_density(shifted, density, args.system), SCFAux(components.total, fock)
    return density_from_fock(shifted, args.system, args.smearing), SCFAux(components.total, fock)


class SCFProgress(eqx.Module):
    """The part of every SCF solver's state that termination reads.

    - `count`: steps taken.
    - `relative_error`: the last convergence measure (< 1 means converged).
    - `best_error`, `best_count`: the smallest `relative_error` so far and the step it was seen at.
    - `finite`: whether the last residual was finite.
    """

    count: Int[Array, ""]
    relative_error: Scalar
    best_error: Scalar
    best_count: Int[Array, ""]
    finite: Bool[Array, ""]

    @classmethod
    def start(cls, dtype, options: dict[str, Any] | None = None) -> SCFProgress:
        """The progress before the first step. With `options["converged"]` true (a scalar
        boolean: [`nlxc.scf.solve`][] passes it when an earlier strategy has converged to the
        starting point) the solve terminates before its first step and returns the start."""
        inf = jnp.array(jnp.inf, dtype=dtype)
        error = inf
        if options is not None and "converged" in options:
            error = jnp.where(options["converged"], jnp.zeros((), dtype), inf)
        return cls(jnp.array(0), error, inf, jnp.array(0), jnp.array(True))

    def advance(self, error: Scalar, finite: Bool[Array, ""], improved: Bool[Array, ""] | None = None) -> SCFProgress:
        """The progress after a step whose convergence measure is `error`. A step counts as
        progress (for `patience`) when `error` falls a factor 0.9 below the best so far, or
        when the solver says so with `improved` (e.g. a Newton step that lowered the energy)."""
        # "better" means a factor 0.9 below the best so far, so that noise does not count
        lower = error < 0.9 * self.best_error
        better = lower if improved is None else lower | improved
        return SCFProgress(
            self.count + 1,
            error,
            jnp.where(lower, error, self.best_error),
            jnp.where(better, self.count + 1, self.best_count),
            finite,
        )


class AbstractSCFSolver(optx.AbstractFixedPointSolver):
    """An optimistix fixed-point solver for the Kohn–Sham fixed point P = D(F(P)).

    Subclasses declare `rtol`, `atol`, `norm` (the convergence test `norm(D(F(P)) − P) <
    atol + rtol·|D(F(P))|`) and `level_shift` (Hartree; the virtual orbitals are raised by
    this much while iterating, which leaves the fixed point unchanged), keep an
    [`SCFProgress`][nlxc.scf.SCFProgress] in their state's `progress` field, receive
    [`SCFArguments`][nlxc.scf.SCFArguments] as `args` and the SCF map
    [`scf_map`][nlxc.scf.scf_map] as `fn` (whose auxiliary output, an
    [`SCFAux`][nlxc.scf.SCFAux], carries the energy and the Fock matrix of the input density, and
    which a step returns as its own auxiliary output), and declare `patience` (static: the steps
    without a 10 % improvement after which [`nlxc.scf.solve`][] hands over to its fallback).

    Termination is shared: converged, a non-finite residual (result `nonfinite`), or, when
    [`nlxc.scf.solve`][] passes them in `options`, an iteration `budget` spent (result
    `nonlinear_max_steps_reached`) or no progress for `patience` steps (result
    `nonlinear_divergence`: stagnation, which hands over to the fallback solver).
    """

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    norm: eqx.AbstractVar[Callable[[PyTree], Scalar]]
    level_shift: eqx.AbstractVar[float]
    patience: eqx.AbstractVar[int]

    def relative_error(self, residual, value) -> Scalar:
        """`norm(residual / (atol + rtol·|value|))` (leafwise for pytrees): below 1 means converged."""
        with jax.numpy_dtype_promotion("standard"):
            return self.norm(jax.tree.map(lambda r, v: r / (self.atol + self.rtol * jnp.abs(v)), residual, value))

    def terminate(self, fn, y, args, options, state, tags):
        progress: SCFProgress = state.progress
        options = {} if options is None else options
        failed = ~progress.finite
        converged = progress.relative_error < 1
        result = optx.RESULTS.where(failed, optx.RESULTS.nonfinite, optx.RESULTS.successful)
        done = converged | failed
        if "budget" in options:
            spent = (progress.count >= options["budget"]) & ~done
            result = optx.RESULTS.where(spent, optx.RESULTS.nonlinear_max_steps_reached, result)
            done = done | spent
        if "patience" in options:
            stagnated = (progress.count - progress.best_count >= options["patience"]) & ~done
            result = optx.RESULTS.where(stagnated, optx.RESULTS.nonlinear_divergence, result)
            done = done | stagnated
        return done, result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {"relative_error": state.progress.relative_error}


def stop_gradient(tree: Any) -> Any:
    """`jax.lax.stop_gradient` on every inexact array of a pytree (other leaves untouched)."""
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree)
