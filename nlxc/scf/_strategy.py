"""How [`nlxc.scf.solve`][] searches for the fixed point: one solver alone, or a solver that hands
over to a fallback (with a stability analysis between the two)."""

# (no `from __future__ import annotations` here: equinox must see the `AbstractVar` annotation
# of `level_shift` to let `WithFallback` implement it as a property rather than a field)
import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from ._base import AbstractSCFSolver, SCFArguments, SCFAux, stop_gradient
from ._stability import StabilityAnalysis

# which solver finished the SCF (SCFResult.strategy)
PRIMARY, FALLBACK, STABILITY = 0, 1, 2

SCFMap = Callable[[Float[Array, "2 nao nao"], SCFArguments], tuple[Float[Array, "2 nao nao"], SCFAux]]


class SCFHistory(eqx.Module):
    """Per-iteration record of an unrolled SCF (`UnrolledAdjoint`).

    - `energies`: total energy of the input density of each iteration, `(max_steps,)`, Hartree.
    - `density_matrices`: the input density matrices, `(max_steps, 2, nao, nao)`, or `None`.
    """

    energies: Float[Array, " steps"]
    density_matrices: Float[Array, "steps 2 nao nao"] | None


class SCFFixedPoint(eqx.Module):
    """What an [`AbstractSCFAdjoint`][nlxc.scf.AbstractSCFAdjoint] returns to
    [`nlxc.scf.solve`][].

    - `value`: the density matrices found, `(2, nao, nao)`.
    - `result`: optimistix's `RESULTS` code.
    - `n_iterations`: the SCF iterations taken, over all solvers (integer scalar).
    - `strategy`: which solver finished (0 primary, 1 fallback, 2 fallback after the stability
      analysis; see [`SCFResult`][nlxc.scf.SCFResult]), integer scalar.
    - `history`: an [`SCFHistory`][nlxc.scf.SCFHistory] for unrolled solves, else `None`.
    """

    value: Float[Array, "2 nao nao"]
    result: optx.RESULTS
    n_iterations: Int[Array, ""]
    strategy: Int[Array, ""]
    history: SCFHistory | None = None


class AbstractSCFStrategy(eqx.Module):
    """How [`nlxc.scf.solve`][] searches for the fixed point: which solvers, in which order.

    [`nlxc.scf.solve`][] builds one from its `solver`, `fallback`, `stability` and `smearing`
    arguments and hands it to the adjoint, which decides how the search is differentiated: an
    implicit adjoint differentiates the fixed point however it was found and runs the whole
    strategy (`search`); an adjoint that differentiates the iterations runs the primary solver
    alone (`alone().search`, or its own loop over `solver`).

    Subclasses declare `solver` (the primary solver: an optimistix fixed-point solver or root
    finder) and `level_shift` (Hartree: the shift in the [`SCFArguments`][nlxc.scf.SCFArguments]
    the primary solver iterates with).
    """

    solver: eqx.AbstractVar[optx.AbstractFixedPointSolver | optx.AbstractRootFinder]
    level_shift: eqx.AbstractVar[float]

    @abc.abstractmethod
    def search(self, fn: SCFMap, y0: Float[Array, "2 nao nao"], args: SCFArguments, max_steps: int,
               adjoint: optx.AbstractAdjoint) -> SCFFixedPoint:
        """The fixed point of `fn` from `y0`, within `max_steps` iterations over all solvers,
        differentiated by the optimistix `adjoint`."""

    def alone(self) -> "Alone":
        """The primary solver alone, with its level shift."""
        return Alone(self.solver, self.level_shift)


class Alone(AbstractSCFStrategy):
    """One solver, from the start to the end (an optimistix solver: no level shift)."""

    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder
    level_shift: float = 0.0

    def search(self, fn, y0, args, max_steps, adjoint):
        solution = optx.fixed_point(fn, self.solver, y0, args=args, has_aux=True, max_steps=max_steps,
                                    adjoint=adjoint, throw=False)
        return SCFFixedPoint(solution.value, solution.result, solution.stats["num_steps"], jnp.asarray(PRIMARY))


class WithFallback(AbstractSCFStrategy):
    """The primary `solver` until it converges or stagnates, then the `fallback`, with the
    `stability` analysis of an unrestricted state the primary solver converged to in between.

    The fallback carries the adjoint: an implicit adjoint differentiates the fixed point itself,
    however it was found, so the primary phase runs on stop-gradient copies of the inputs (it only
    finds the point). When the primary solver has converged, the fallback starts from a converged
    point and takes no step (the common case costs nothing extra, and under `jax.vmap` the
    fallback's loop runs only while some member of the batch needs it). At a saddle point the
    stability analysis rotates the state downhill and the fallback converges from there.

    The fallback iterates the SCF map with maximum-overlap occupations
    (`SCFArguments.with_maximum_overlap`): where
    its occupied orbitals are the lowest this is the aufbau map, so aufbau fixed points are found
    and differentiated as before; where no aufbau fixed point exists near the minimum
    ([`nlxc.scf.OrbitalNewton`][]) the fallback may converge to a stationary point whose
    occupations are not aufbau, which is a fixed point of that map, and the implicit adjoint
    differentiates it with those occupations held fixed."""

    solver: AbstractSCFSolver
    fallback: AbstractSCFSolver
    stability: StabilityAnalysis | None

    @property
    def level_shift(self) -> float:
        return self.solver.level_shift

    def search(self, fn, y0, args, max_steps, adjoint):
        first = optx.fixed_point(
            fn, self.solver, stop_gradient(y0), args=stop_gradient(args), has_aux=True, max_steps=max_steps,
            options={"patience": self.solver.patience}, throw=False,
        )
        n_first = first.stats["num_steps"]
        done = first.result == optx.RESULTS.successful
        start, moved = self._follow(first.value, args, done)
        done = done & ~moved
        # the fallback's own level shift (the fixed point does not depend on it, so the adjoint does
        # not), and the maximum-overlap map: its fixed points are the aufbau ones and the stationary
        # points whose occupations are not aufbau, where the fallback may also converge; the
        # implicit adjoint differentiates it with the occupations of the state found held fixed
        second = optx.fixed_point(
            fn, self.fallback, stop_gradient(start),
            args=args.with_level_shift(self.fallback.level_shift).with_maximum_overlap(),
            has_aux=True, max_steps=max_steps,
            options={"budget": max_steps - n_first, "converged": done, "patience": self.fallback.patience},
            adjoint=adjoint, throw=False,
        )
        n_second = second.stats["num_steps"]
        strategy = jnp.where(moved, STABILITY, jnp.where(n_second > 0, FALLBACK, PRIMARY))
        return SCFFixedPoint(second.value, second.result, n_first + n_second, strategy)

    def _follow(self, density, args: SCFArguments, converged: Bool[Array, ""]):
        """The stability analysis of a converged unrestricted `density` (on stop-gradient copies):
        the density to start the fallback from, and whether it was rotated out of a saddle."""
        if self.stability is None or args.system.restricted:
            return density, jnp.asarray(False)
        dynamic, static = eqx.partition(stop_gradient(args), eqx.is_array)
        return jax.lax.cond(
            converged, lambda p, d: self.stability.follow(p, eqx.combine(d, static))[:2],
            lambda p, d: (p, jnp.asarray(False)), density, dynamic,
        )


def strategy_of(solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder, fallback: AbstractSCFSolver | None,
                stability: StabilityAnalysis | None, smearing) -> AbstractSCFStrategy:
    """The strategy of [`nlxc.scf.solve`][]'s arguments. A plain optimistix solver declares no
    level shift and no stagnation test, so it runs alone, unshifted; an
    [`AbstractSCFSolver`][nlxc.scf.AbstractSCFSolver] runs with its `level_shift` and hands over
    to `fallback` when there is one and the occupations are aufbau (`smearing` None)."""
    if not isinstance(solver, AbstractSCFSolver):
        return Alone(solver)
    if fallback is None or smearing is not None:
        return Alone(solver, solver.level_shift)
    return WithFallback(solver, fallback, stability)
