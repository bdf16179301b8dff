"""The self-consistent field as a pure, jit-able and vmappable function."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from ..system import System
from ..xc._base import AbstractFunctional
from ._aufbau import aufbau_occupations, density_matrix, level_shifted, orbitals
from ._energy import EnergyComponents, energy_and_fock
from .diis import DIIS


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


class SCFNotConvergedError(RuntimeError):
    """Raised (through `equinox.error_if`) when `solve(..., throw=True)` does not converge."""


def _scf_map(density, args):
    """One Kohn–Sham step P ↦ D(F(P)), with the energy of P as auxiliary output."""
    functional, system, shift = args
    components, fock = energy_and_fock(functional, system, density)
    fock = level_shifted(fock, density, system, shift)
    _, coefficients = orbitals(fock, system)
    new_density = density_matrix(coefficients, aufbau_occupations(system))
    return new_density, components.total


@eqx.filter_jit
def solve(
    functional: AbstractFunctional,
    system: System,
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder = DIIS(),
    *,
    initial_density_matrix: Float[Array, "2 nao nao"] | None = None,
    max_steps: int = 128,
    adjoint: optx.AbstractAdjoint = optx.ImplicitAdjoint(),
    throw: bool = False,
) -> SCFResult:
    """Solve the Kohn–Sham equations for `system` with the exchange–correlation `functional`.

    The SCF is the fixed point P* = D(F(P*)) of the α/β density matrix, where F = ∂E/∂P is the
    Fock matrix obtained by automatic differentiation of the total energy and D builds the
    aufbau density matrix from the lowest eigenvectors of F C = S C ε. It is solved by an
    optimistix fixed-point solver (default: [`nlxc.scf.DIIS`][]) inside one compiled
    `while_loop`, so `solve` is pure, jit-able, and works under `jax.vmap` over Systems of equal
    shapes.

    **Arguments:**

    - `functional`: any [`nlxc.xc.AbstractFunctional`][].
    - `system`: the [`nlxc.System`][].
    - `solver`: an optimistix fixed-point solver or root finder. If it has a `level_shift`
      attribute (as `DIIS` does), the virtual orbitals are shifted by that much (Hartree)
      while iterating.
    - `initial_density_matrix`: `(2, nao, nao)`; default `system.initial_density_matrix`.
    - `max_steps`: the most Fock builds allowed.
    - `adjoint`: how to differentiate through the solve (optimistix adjoint module).
    - `throw`: if `True`, a non-converged or non-finite SCF raises an error (at run time, via
      `equinox.error_if`); if `False` (default) it is reported in `SCFResult.converged`.

    **Returns:** an [`SCFResult`][nlxc.scf.SCFResult].
    """
    p0 = system.initial_density_matrix if initial_density_matrix is None else initial_density_matrix
    shift = jnp.asarray(getattr(solver, "level_shift", 0.0), dtype=p0.dtype)
    solution = optx.fixed_point(
        _scf_map,
        solver,
        p0,
        args=(functional, system, shift),
        has_aux=True,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=False,
    )
    p = solution.value
    components, fock = energy_and_fock(functional, system, p)
    energies, coefficients = orbitals(fock, system)
    energy = components.total
    converged = (solution.result == optx.RESULTS.successful) & jnp.isfinite(energy)
    if throw:
        energy = eqx.error_if(
            energy,
            ~converged,
            "SCF did not converge (max_steps reached or non-finite energy); "
            "raise max_steps, add damping/level_shift, or pass throw=False",
        )
    return SCFResult(
        energy=energy,
        components=components,
        density_matrix=p,
        fock_matrix=fock,
        orbital_coefficients=coefficients,
        orbital_energies=energies,
        occupations=aufbau_occupations(system),
        n_iterations=solution.stats["num_steps"],
        converged=converged,
        result=solution.result,
    )
