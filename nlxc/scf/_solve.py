"""The self-consistent field as a pure, jit-able and vmappable function."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from .._errors import InputError
from ..models import prepare_system
from ..system import System
from ..xc import AbstractFunctional
from ._adjoint import AbstractSCFAdjoint, ImplicitAdjoint, as_scf_adjoint
from ._aufbau import FermiDirac, is_aufbau, maximum_overlap_occupations, occupations_of, orbitals
from ._base import AbstractSCFSolver, SCFArguments, scf_map
from ._cdiis import CDIIS
from ._energy import EnergyComponents, energy_and_fock
from ._newton import OrbitalNewton
from ._stability import StabilityAnalysis
from ._strategy import AbstractSCFStrategy, SCFHistory, strategy_of


class SCFResult(eqx.Module):
    """The outcome of [`nlxc.scf.solve`][] (atomic units).

    - `energy`: total energy E[P*], Hartree (scalar).
    - `components`: its [`EnergyComponents`][nlxc.scf.EnergyComponents].
    - `density_matrix`: the self-consistent α/β density matrices P*, `(2, nao, nao)`.
    - `fock_matrix`: F(P*) = ∂E/∂P at P*, `(2, nao, nao)`, Hartree.
    - `orbital_coefficients`: eigenvectors of F(P*), `(2, nao, nmo)`.
    - `orbital_energies`: its eigenvalues, ascending, `(2, nmo)`, Hartree.
    - `occupations`: the occupations of those orbitals in P*, `(2, nmo)`: aufbau (the n_α, n_β
      lowest), Fermi–Dirac with `smearing`, or, where `aufbau` is `False`, 1 for the orbitals of
      maximum overlap with P* ([`nlxc.scf.maximum_overlap_occupations`][]).
    - `n_iterations`: number of SCF iterations, over all strategies (integer scalar; a Newton
      step of the fallback counts as one iteration although it costs several Fock builds).
    - `converged`: whether the solve met its tolerance with finite numbers (boolean scalar).
    - `strategy`: which solver brought the SCF to convergence: 0 the `solver`, 1 the
      `fallback` after `solver` stagnated, 2 the `fallback` after the stability analysis found
      `solver`'s state to be a saddle point and rotated it downhill (integer scalar).
    - `result`: optimistix's `RESULTS` code; `optimistix.RESULTS[result]` reads it.
    - `aufbau`: whether the occupied orbitals of P* are the lowest of F(P*) in each spin
      (boolean scalar; [`nlxc.scf.is_aufbau`][] of `orbital_energies` and the occupations of P*;
      `True` with `smearing`). A converged result with `aufbau` `False` is a stationary point of
      the energy (orbital gradient Xᵀ(F P S − S P F)X below the fallback's `gradient_atol`) at which an
      occupied orbital lies above a virtual one of the same spin: no aufbau fixed point
      P = D(F(P)) exists near it (e.g. NO with SVWN in def2-SVP, where PySCF's `mf.newton()`
      finds the same minimum). Only the Newton fallback converges to such a point.
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
    aufbau: Bool[Array, ""]
    history: SCFHistory | None = None


def solve(
    functional: AbstractFunctional,
    system: System,
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder = CDIIS(),
    *,
    fallback: AbstractSCFSolver | None = OrbitalNewton(),
    stability: StabilityAnalysis | None = StabilityAnalysis(),
    initial_density_matrix: Float[Array, "2 nao nao"] | None = None,
    max_steps: int = 128,
    adjoint: AbstractSCFAdjoint | optx.AbstractAdjoint = ImplicitAdjoint(),
    smearing: FermiDirac | None = None,
    throw: bool = False,
) -> SCFResult:
    """Solve the Kohn–Sham equations for `system` with the exchange–correlation `functional`.

    The SCF is the fixed point P* = D(F(P*)) of the α/β density matrix, where F = ∂E/∂P is the
    Fock matrix obtained by automatic differentiation of the total energy and D builds the
    aufbau density matrix from the lowest eigenvectors of F C = S C ε. Where no such fixed point
    exists near the energy minimum, the Newton fallback converges to the stationary point of the
    energy there (F P S = S P F) and `SCFResult.aufbau` is `False`. It is solved by an
    optimistix fixed-point solver (default: [`nlxc.scf.CDIIS`][], Pulay's commutator DIIS) inside one compiled
    `while_loop`, so `solve` is pure, jit-able, and works under `jax.vmap` over Systems of equal
    shapes.

    **Arguments:**

    - `functional`: any [`nlxc.xc.AbstractFunctional`][].
    - `system`: the [`nlxc.System`][]. For a concrete one, the geometry-only data of the
      functional's models (neighbour lists) is first computed on the host
      ([`nlxc.models.prepare_system`][]), so the compiled SCF holds no host callback.
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
      When `solver` converges by itself the fallback takes no step. Where no aufbau fixed point
      exists near the energy minimum, the fallback converges to the stationary point there with
      its non-aufbau occupations (`SCFResult.aufbau` `False`; see `SCFResult`).
    - `stability`: for unrestricted Systems, with the fallback, the
      [`nlxc.scf.StabilityAnalysis`][] of the state `solver` converged to (default): a saddle
      point of the energy (seen with degenerate open shells, e.g. C and O with r2SCAN) is
      rotated downhill and the fallback converges from there (`SCFResult.strategy` 2). Costs
      about 2·`lanczos_steps` Fock builds per converged open-shell solve; `None` skips it.
      Restricted Systems are not analysed.
    - `initial_density_matrix`: `(2, nao, nao)`; default `system.initial_density_matrix`.
    - `max_steps`: the most SCF iterations allowed, over all strategies (exactly this many
      with `UnrolledAdjoint`).
    - `adjoint`: how to differentiate through the solve, an [`nlxc.scf.AbstractSCFAdjoint`][]:
      [`nlxc.scf.ImplicitAdjoint`][] (default; implicit function theorem with a matrix-free
      BiCGStab adjoint solve), [`nlxc.scf.UnrolledAdjoint`][] (backpropagation through the
      iterations, checkpointed, with the iterate history), or any optimistix adjoint (e.g.
      `optimistix.RecursiveCheckpointAdjoint()`; see [`nlxc.scf.as_scf_adjoint`][]).
    - `smearing`: `None` for aufbau occupations, or [`nlxc.scf.FermiDirac`][] for fractional
      occupations.
    - `throw`: if `True`, a non-converged or non-finite SCF raises an error (at run time, via
      `equinox.error_if`); if `False` (default) it is reported in `SCFResult.converged`.

    **Returns:** an [`SCFResult`][nlxc.scf.SCFResult].

    **Raises:** [`nlxc.InputError`][] (before anything is computed) for a `functional` that is
    not an `AbstractFunctional` instance (a name or a class), a `system` that is not a `System`
    or not in float64, an `initial_density_matrix` of the wrong shape or dtype, a `max_steps`
    below 1, a fallback that is not an `AbstractSCFSolver`, a `stability` that is not a
    [`nlxc.scf.StabilityAnalysis`][] or `None`, or an `adjoint` that is neither an
    `AbstractSCFAdjoint` nor an optimistix adjoint.
    """
    _check_arguments(functional, system, solver, fallback, initial_density_matrix, max_steps)
    if stability is not None and not isinstance(stability, StabilityAnalysis):
        raise InputError(f"stability must be an nlxc.scf.StabilityAnalysis or None, got {type(stability).__name__}")
    strategy = strategy_of(solver, fallback, stability, smearing)
    # geometry-only data of the functional (neighbour lists) computed on the host for a concrete
    # System, so that the compiled SCF holds no host callback (and JAX's persistent compilation
    # cache can store it); a traced System is returned as it is
    system = prepare_system(functional, system)
    return _solve(functional, system, strategy, initial_density_matrix, max_steps, as_scf_adjoint(adjoint),
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
def _solve(functional: AbstractFunctional, system: System, strategy: AbstractSCFStrategy,
           initial_density_matrix: Float[Array, "2 nao nao"] | None, max_steps: int, adjoint: AbstractSCFAdjoint,
           smearing: FermiDirac | None, throw: bool) -> SCFResult:
    p0 = system.initial_density_matrix if initial_density_matrix is None else initial_density_matrix
    functional = functional.prepare(system)  # geometry-only data (System.precomputed), once per solve
    args = SCFArguments(functional, system, jnp.asarray(strategy.level_shift, dtype=p0.dtype), smearing)
    found = adjoint.fixed_point(scf_map, strategy, p0, args, max_steps)
    p, result = found.value, found.result
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
    occupations = occupations_of(energies, system, smearing)
    aufbau = jnp.asarray(True)
    if smearing is None:
        # the occupations of P* itself: aufbau, or those of a non-aufbau stationary point
        held = maximum_overlap_occupations(coefficients, p, system)
        aufbau = is_aufbau(energies, held)
        occupations = jnp.where(aufbau, occupations, held)
    return SCFResult(
        energy=energy,
        components=components,
        density_matrix=p,
        fock_matrix=fock,
        orbital_coefficients=coefficients,
        orbital_energies=energies,
        occupations=occupations,
        n_iterations=found.n_iterations,
        converged=converged,
        result=result,
        strategy=found.strategy,
        aufbau=aufbau,
        history=found.history,
    )
