"""The self-consistent field as a pure, jit-able and vmappable function."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from ..system import System
from ..xc._base import AbstractFunctional

from ._aufbau import FermiDirac, density_from_fock, level_shifted, occupations_of, orbitals
from ._energy import EnergyComponents, energy_and_fock
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
    - `n_iterations`: number of Fock builds in the fixed-point solve (integer scalar).
    - `converged`: whether the solve met its tolerance with finite numbers (boolean scalar).
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
    history: SCFHistory | None = None


def _scf_map(density, args):
    """One Kohn–Sham step P ↦ D(F(P)), with the energy of P as auxiliary output."""
    functional, system, shift, smearing = args
    components, fock = energy_and_fock(functional, system, density)
    fock = level_shifted(fock, density, system, shift)
    return density_from_fock(fock, system, smearing), components.total


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


@eqx.filter_jit
def solve(
    functional: AbstractFunctional,
    system: System,
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder = CDIIS(),
    *,
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
    - `solver`: an optimistix fixed-point solver or root finder. If it has a `level_shift`
      attribute (as `CDIIS` and `DIIS` do), the virtual orbitals are shifted by that much (Hartree)
      while iterating.
    - `initial_density_matrix`: `(2, nao, nao)`; default `system.initial_density_matrix`.
    - `max_steps`: the most Fock builds allowed (exactly this many with `UnrolledAdjoint`).
    - `adjoint`: how to differentiate through the solve: [`nlxc.scf.ImplicitAdjoint`][]
      (default; implicit function theorem with a matrix-free BiCGStab adjoint solve), [`nlxc.scf.UnrolledAdjoint`][]
      (backpropagation through the iterations, checkpointed, with the iterate history), or any
      optimistix adjoint (e.g. `optimistix.RecursiveCheckpointAdjoint()`).
    - `smearing`: `None` for aufbau occupations, or [`nlxc.scf.FermiDirac`][] for fractional
      occupations.
    - `throw`: if `True`, a non-converged or non-finite SCF raises an error (at run time, via
      `equinox.error_if`); if `False` (default) it is reported in `SCFResult.converged`.

    **Returns:** an [`SCFResult`][nlxc.scf.SCFResult].
    """
    p0 = system.initial_density_matrix if initial_density_matrix is None else initial_density_matrix
    functional = functional.prepare(system)  # geometry-only precomputation, once per solve
    shift = jnp.asarray(getattr(solver, "level_shift", 0.0), dtype=p0.dtype)
    args = (functional, system, shift, smearing)
    if isinstance(adjoint, UnrolledAdjoint):
        p, result, n_iterations, history = _unrolled(solver, p0, args, max_steps, adjoint)
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
        history=history,
    )
