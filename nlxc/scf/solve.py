"""The self-consistent field as a pure, jit-able and vmappable function."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from .._errors import InputError
from ..system import System
from ..xc._base import AbstractFunctional

from ._aufbau import FermiDirac, density_from_fock, level_shifted, occupations_of, orbitals
from ._base import AbstractSCFSolver, SCFArguments, stop_gradient
from ._energy import EnergyComponents, energy_and_fock
from ._newton import OrbitalNewton
from ._stability import StabilityAnalysis
from .adjoint import ImplicitAdjoint, UnrolledAdjoint
from .cdiis import CDIIS


class SCFHistory(eqx.Module):
    """Per-iteration record of an unrolled SCF (`UnrolledAdjoint`).

    - `energies`: total energy of the input density of each iteration, `(max_steps,)`, Hartree.
    - `density_matrices`: the input density matrices, `(max_steps, 2, nao, nao)`, or `None`.
    """

    energies: Float[Array, " steps"]
    density_matrices: Float[Array, "steps 2 nao nao"] | None


class SCFResult(eqx.Module):
    """The outcome of [`nlxc.scf.solve`][] (atomic units).

    - `energy`: total energy E[P*], Hartree (scalar).
    - `components`: its [`EnergyComponents`][nlxc.scf.EnergyComponents].
    - `density_matrix`: the self-consistent α/β density matrices P*, `(2, nao, nao)`.
    - `fock_matrix`: F(P*) = ∂E/∂P at P*, `(2, nao, nao)`, Hartree.
    - `orbital_coefficients`: eigenvectors of F(P*), `(2, nao, nmo)`.
    - `orbital_energies`: its eigenvalues, ascending, `(2, nmo)`, Hartree.
    - `occupations`: aufbau occupations, `(2, nmo)`.
    - `n_iterations`: number of SCF iterations, over all strategies (integer scalar; a Newton
      step of the fallback counts as one iteration although it costs several Fock builds).
    - `converged`: whether the solve met its tolerance with finite numbers (boolean scalar).
    - `strategy`: which solver brought the SCF to convergence: 0 the `solver`, 1 the
      `fallback` after `solver` stagnated, 2 the `fallback` after the stability analysis found
      `solver`'s state to be a saddle point and rotated it downhill (integer scalar).
    - `result`: optimistix's `RESULTS` code; `optimistix.RESULTS[result]` reads it.
    - `history`: an [`SCFHistory`][nlxc.scf.SCFHistory] for unrolled solves, else `None`.

    Arrays gain a leading batch axis under `jax.vmap`.
    """

    energy: Float[Array, ""]
    components: EnergyComponents
    density_matrix: Float[Array, "2 nao nao"]
    fock_matrix: Float[Array, "2 nao nao"]
    orbital_coefficients: Float[Array, "2 nao nmo"]
    orbital_energies: Float[Array, "2 nmo"]
    occupations: Float[Array, "2 nmo"]
    n_iterations: Int[Array, ""]
    converged: Bool[Array, ""]
    result: optx.RESULTS
    strategy: Int[Array, ""]
    history: SCFHistory | None = None


def _scf_map(density, args: SCFArguments):
    """One Kohn–Sham step P ↦ D(F(P)), with the energy of P as auxiliary output."""
    components, fock = energy_and_fock(args.functional, args.system, density)
    fock = level_shifted(fock, density, args.system, args.level_shift)
    return density_from_fock(fock, args.system, args.smearing), components.total


def _arguments(functional, system, solver, smearing, dtype) -> SCFArguments:
    shift = solver.level_shift if isinstance(solver, AbstractSCFSolver) else 0.0
    return SCFArguments(functional, system, jnp.asarray(shift, dtype=dtype), smearing)


def _unrolled(solver, p0, args, steps, adjoint):
    struct = eqx.filter_eval_shape(_scf_map, p0, args)
    state = solver.init(_scf_map, p0, args, {}, struct[0], struct[1], frozenset())

    def body(carry, _):
        y, state = carry
        new_y, new_state, energy = solver.step(_scf_map, y, args, {}, state, frozenset())
        return (new_y, new_state), (energy, y if adjoint.densities else None)

    if adjoint.checkpoint:
        body = jax.checkpoint(body)
    (p, state), (energies, densities) = jax.lax.scan(body, (p0, state), None, length=steps)
    done, result = solver.terminate(_scf_map, p, args, {}, state, frozenset())
    result = optx.RESULTS.where(done, result, optx.RESULTS.nonlinear_max_steps_reached)
    return p, result, jnp.asarray(steps), SCFHistory(energies, densities)


# which solver finished the SCF (SCFResult.strategy)
PRIMARY, FALLBACK, STABILITY = 0, 1, 2


def _with_fallback(solver, fallback, stability, p0, args, max_steps, adjoint):
    """The primary solver until it converges or stagnates, then the fallback, which carries the
    adjoint: the implicit adjoint differentiates the fixed point itself, however it was found,
    so the primary phase runs on stop-gradient copies of the inputs (it only finds the point).
    When the primary solver has converged, the fallback starts from a converged point and takes
    no step (the common case costs nothing extra, and under `jax.vmap` the fallback's loop runs
    only while some member of the batch needs it). Between the two, an unrestricted state the
    primary solver converged to is checked for stability: at a saddle point it is rotated
    downhill and the fallback converges from there."""
    first = optx.fixed_point(
        _scf_map, solver, stop_gradient(p0), args=stop_gradient(args), has_aux=True, max_steps=max_steps,
        options={"patience": solver.patience}, throw=False,
    )
    n_first = first.stats["num_steps"]
    done = first.result == optx.RESULTS.successful
    start = first.value
    moved = jnp.asarray(False)
    if stability is not None and not args.system.restricted:
        dynamic, static = eqx.partition(stop_gradient(args), eqx.is_array)
        start, moved = jax.lax.cond(
            done, lambda p, d: stability.follow(p, eqx.combine(d, static))[:2], lambda p, d: (p, jnp.asarray(False)),
            start, dynamic,
        )
        done = done & ~moved
    # the fallback's own level shift (the fixed point does not depend on it, so the adjoint does not)
    args = _arguments(args.functional, args.system, fallback, args.smearing, args.level_shift.dtype)
    second = optx.fixed_point(
        _scf_map, fallback, stop_gradient(start), args=args, has_aux=True, max_steps=max_steps,
        options={"budget": max_steps - n_first, "converged": done, "patience": fallback.patience},
        adjoint=adjoint, throw=False,
    )
    n_second = second.stats["num_steps"]
    strategy = jnp.where(moved, STABILITY, jnp.where(n_second > 0, FALLBACK, PRIMARY))
    return second.value, second.result, n_first + n_second, strategy


def solve(
    functional: AbstractFunctional,
    system: System,
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder = CDIIS(),
    *,
    fallback: AbstractSCFSolver | None = OrbitalNewton(),
    stability: StabilityAnalysis | None = StabilityAnalysis(),
    initial_density_matrix: Float[Array, "2 nao nao"] | None = None,
    max_steps: int = 128,
    adjoint: optx.AbstractAdjoint | UnrolledAdjoint = ImplicitAdjoint(),
    smearing: FermiDirac | None = None,
    throw: bool = False,
) -> SCFResult:
    """Solve the Kohn–Sham equations for `system` with the exchange–correlation `functional`.

    The SCF is the fixed point P* = D(F(P*)) of the α/β density matrix, where F = ∂E/∂P is the
    Fock matrix obtained by automatic differentiation of the total energy and D builds the
    aufbau density matrix from the lowest eigenvectors of F C = S C ε. It is solved by an
    optimistix fixed-point solver (default: [`nlxc.scf.CDIIS`][], Pulay's commutator DIIS) inside one compiled
    `while_loop`, so `solve` is pure, jit-able, and works under `jax.vmap` over Systems of equal
    shapes.

    **Arguments:**

    - `functional`: any [`nlxc.xc.AbstractFunctional`][].
    - `system`: the [`nlxc.System`][].
    - `solver`: an optimistix fixed-point solver or root finder. An
      [`nlxc.scf.AbstractSCFSolver`][] (`CDIIS`, `DIIS`, `OrbitalNewton`) declares a
      `level_shift`: the virtual orbitals are shifted by that much (Hartree) while iterating.
    - `fallback`: the solver that takes over when `solver` stagnates (no 10 % improvement of
      its convergence measure for `solver.patience` steps); default
      [`nlxc.scf.OrbitalNewton`][] (trust-region Newton steps on the orbital rotations).
      `None` runs `solver` alone. Used with an `AbstractSCFSolver` as `solver`, aufbau
      occupations, an implicit adjoint (`optimistix.ImplicitAdjoint`, which differentiates the
      fixed point however it was found; an adjoint that differentiates the iterations runs
      `solver` alone); `SCFResult.strategy` says which solver finished.
      When `solver` converges by itself the fallback takes no step.
    - `stability`: for unrestricted Systems, with the fallback, the
      [`nlxc.scf.StabilityAnalysis`][] of the state `solver` converged to (default): a saddle
      point of the energy (seen with degenerate open shells, e.g. C and O with r2SCAN) is
      rotated downhill and the fallback converges from there (`SCFResult.strategy` 2). Costs
      about 2·`lanczos_steps` Fock builds per converged open-shell solve; `None` skips it.
      Restricted Systems are not analysed.
    - `initial_density_matrix`: `(2, nao, nao)`; default `system.initial_density_matrix`.
    - `max_steps`: the most SCF iterations allowed, over all strategies (exactly this many
      with `UnrolledAdjoint`).
    - `adjoint`: how to differentiate through the solve: [`nlxc.scf.ImplicitAdjoint`][]
      (default; implicit function theorem with a matrix-free BiCGStab adjoint solve), [`nlxc.scf.UnrolledAdjoint`][]
      (backpropagation through the iterations, checkpointed, with the iterate history), or any
      optimistix adjoint (e.g. `optimistix.RecursiveCheckpointAdjoint()`).
    - `smearing`: `None` for aufbau occupations, or [`nlxc.scf.FermiDirac`][] for fractional
      occupations.
    - `throw`: if `True`, a non-converged or non-finite SCF raises an error (at run time, via
      `equinox.error_if`); if `False` (default) it is reported in `SCFResult.converged`.

    **Returns:** an [`SCFResult`][nlxc.scf.SCFResult].

    **Raises:** [`nlxc.InputError`][] (before anything is computed) for a `functional` that is
    not an `AbstractFunctional` instance (a name or a class), a `system` that is not a `System`
    or not in float64, an `initial_density_matrix` of the wrong shape or dtype, a `max_steps`
    below 1, a fallback that is not an `AbstractSCFSolver`, or a `stability` that is not a
    [`nlxc.scf.StabilityAnalysis`][] or `None`.
    """
    _check_arguments(functional, system, solver, fallback, initial_density_matrix, max_steps)
    if stability is not None and not isinstance(stability, StabilityAnalysis):
        raise InputError(f"stability must be an nlxc.scf.StabilityAnalysis or None, got {type(stability).__name__}")
    return _solve(functional, system, solver, fallback, stability, initial_density_matrix, max_steps, adjoint,
                  smearing, throw)


def _check_arguments(functional, system, solver, fallback, initial_density_matrix, max_steps):
    if isinstance(functional, type):
        raise InputError(f"solve needs a functional instance, got the class {functional.__name__}; "
                         f"call it: {functional.__name__}()")
    if isinstance(functional, str):
        raise InputError(f"solve needs a functional, got the string {functional!r}; "
                         f"use nlxc.get_functional({functional!r})")
    if not isinstance(functional, AbstractFunctional):
        raise InputError(f"solve needs an nlxc.xc.AbstractFunctional, got {type(functional).__name__}")
    if not isinstance(system, System):
        raise InputError(f"solve needs an nlxc.System, got {type(system).__name__}; "
                         "build one with nlxc.System.from_pyscf(mol)")
    if system.overlap.dtype != jnp.float64:
        raise InputError(f"the System is in {system.overlap.dtype}, but nlxc computes in float64: "
                         "import nlxc before building arrays (it enables jax_enable_x64)")
    if initial_density_matrix is not None:
        shape = (2, system.nao, system.nao)
        if tuple(jnp.shape(initial_density_matrix)) != shape:
            raise InputError(f"initial_density_matrix must have shape (2, nao, nao) = {shape} (alpha and "
                             f"beta), got {tuple(jnp.shape(initial_density_matrix))}")
        if jnp.result_type(initial_density_matrix) != jnp.float64:
            raise InputError(f"initial_density_matrix must be float64, got {jnp.result_type(initial_density_matrix)}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise InputError(f"max_steps must be a positive integer, got {max_steps!r}")
    if fallback is not None and not isinstance(fallback, AbstractSCFSolver):
        raise InputError(f"fallback must be an nlxc.scf.AbstractSCFSolver or None, got {type(fallback).__name__}")
    if not isinstance(solver, (optx.AbstractFixedPointSolver, optx.AbstractRootFinder)):
        raise InputError(f"solver must be an optimistix fixed-point solver or root finder, got {type(solver).__name__}")


@eqx.filter_jit
def _solve(functional, system, solver, fallback, stability, initial_density_matrix, max_steps, adjoint, smearing,
           throw):
    p0 = system.initial_density_matrix if initial_density_matrix is None else initial_density_matrix
    functional = functional.prepare(system)  # geometry-only precomputation, once per solve
    args = _arguments(functional, system, solver, smearing, p0.dtype)
    strategy = jnp.asarray(PRIMARY)
    if isinstance(adjoint, UnrolledAdjoint):
        p, result, n_iterations, history = _unrolled(solver, p0, args, max_steps, adjoint)
    elif (fallback is not None and isinstance(solver, AbstractSCFSolver) and smearing is None
          and isinstance(adjoint, optx.ImplicitAdjoint)):
        p, result, n_iterations, strategy = _with_fallback(solver, fallback, stability, p0, args, max_steps,
                                                                   adjoint)
        history = None
    else:
        solution = optx.fixed_point(
            _scf_map, solver, p0, args=args, has_aux=True, max_steps=max_steps, adjoint=adjoint,
            throw=False,
        )
        p, result, n_iterations, history = solution.value, solution.result, solution.stats["num_steps"], None
    if throw:
        # The check sits on the density matrix, which every returned quantity and every
        # gradient depends on, so it cannot be removed as dead code under jax.grad.
        p = eqx.error_if(
            p,
            (result != optx.RESULTS.successful) | ~jnp.all(jnp.isfinite(p)),
            "SCF did not converge (max_steps reached or non-finite values); "
            "raise max_steps, add damping/level_shift, or pass throw=False",
        )
    components, fock = energy_and_fock(functional, system, p)
    energies, coefficients = orbitals(fock, system)
    energy = components.total
    converged = (result == optx.RESULTS.successful) & jnp.isfinite(energy)
    return SCFResult(
        energy=energy,
        components=components,
        density_matrix=p,
        fock_matrix=fock,
        orbital_coefficients=coefficients,
        orbital_energies=energies,
        occupations=occupations_of(energies, system, smearing),
        n_iterations=n_iterations,
        converged=converged,
        result=result,
        strategy=strategy,
        history=history,
    )
