"""The k-point self-consistent field as a pure, jit-able, differentiable function (private)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Bool, Complex, Float, Int, PyTree, Scalar

from .._errors import InputError
from ..scf import (
    AbstractDIIS,
    AbstractSCFSolver,
    EnergyComponents,
    FermiDirac,
    ImplicitAdjoint,
)
from ..xc import AbstractFunctional
from ._energy import check_functional, energy_and_fock, prepare_functional
from ._occupations import (
    density_from_fock,
    entropy,
    level_shifted,
    occupations_and_level,
    orbitals,
)
from ._system import PeriodicSystem

# The fixed-point iterate is real: the real and imaginary parts of the complex density matrices
# stacked on a leading axis, (2, 2, nk, nao, nao), so that optimistix's solvers and lineax's
# adjoint solves work on real vectors only.


def as_real(matrix: Complex[Array, "2 nk nao nao"]) -> Float[Array, "2 2 nk nao nao"]:
    """(Re M, Im M) stacked on a new leading axis."""
    return jnp.stack([jnp.real(matrix), jnp.imag(matrix)])


def as_complex(pair: Float[Array, "2 2 nk nao nao"]) -> Complex[Array, "2 nk nao nao"]:
    """The inverse of [`as_real`][nlxc.pbc.as_real]."""
    return pair[0] + 1j * pair[1]


class PeriodicSCFArguments(eqx.Module):
    """What [`nlxc.pbc.solve`][] hands its fixed-point map and solver: the `functional`, the
    [`PeriodicSystem`][nlxc.pbc.PeriodicSystem], the `level_shift` (Hartree, scalar) and the
    `smearing` (`None` or [`nlxc.scf.FermiDirac`][])."""

    functional: AbstractFunctional
    system: PeriodicSystem
    level_shift: Float[Array, ""]
    smearing: FermiDirac | None


class PeriodicSCFAux(eqx.Module):
    """The auxiliary output of [`periodic_scf_map`][nlxc.pbc.periodic_scf_map] at P: the energy
    per cell E[P] (Hartree) and the Fock matrices F(P) as [`as_real`][nlxc.pbc.as_real] pairs
    `(2, 2, nk, nao, nao)` (without the level shift)."""

    energy: Float[Array, ""]
    fock: Float[Array, "2 2 nk nao nao"]


def periodic_scf_map(
    density: Float[Array, "2 2 nk nao nao"], args: PeriodicSCFArguments
) -> tuple[Float[Array, "2 2 nk nao nao"], PeriodicSCFAux]:
    """One Kohn–Sham step P ↦ D(F(P) + b(S − SPS)) on all k-points at once (the iterate is the
    real/imaginary pair of the α/β density matrices, see [`as_real`][nlxc.pbc.as_real]).

    F(P) is the Fock matrix of every spin and k-point (automatic differentiation of the energy
    per cell), b the level shift and D the occupations over all k-points (aufbau with one Fermi
    level, or Fermi–Dirac with one chemical potential)."""
    p = as_complex(density)
    components, fock = energy_and_fock(args.functional, args.system, p)
    shifted = level_shifted(fock, p, args.system, args.level_shift)
    return as_real(density_from_fock(shifted, args.system, args.smearing)), PeriodicSCFAux(components.total,
                                                                                         as_real(fock))


def commutator_error(
    fock: Complex[Array, "2 nk nao nao"], density: Complex[Array, "2 nk nao nao"], system: PeriodicSystem
) -> Float[Array, " n"]:
    """X_kᴴ(F P S − S P F)X_k per spin and k-point, real and imaginary parts flattened: zero
    exactly at self-consistency."""
    s = system.overlap[None]
    fps = fock @ density @ s
    x = system.orthogonalizer
    error = jnp.einsum("kmi,skmn,knj->skij", jnp.conj(x), fps - jnp.conj(jnp.swapaxes(fps, -1, -2)), x)
    return as_real(error).reshape(-1)


class KCDIIS(AbstractDIIS):
    """Pulay's commutator DIIS on the Fock matrices of all k-points, for the periodic fixed point.

    The k-point form of [`nlxc.scf.CDIIS`][]: each step stores F(Pₙ) of every spin and k-point
    with its error eₙ = X_kᴴ(F P S − S P F)X_k, extrapolates F* = Σᵢ cᵢ F(Pᵢ) with one set of
    coefficients for all k-points (c = argmin ‖Σᵢ cᵢ eᵢ‖², Σᵢ cᵢ = 1), and builds the next density
    matrices from F* with the shared occupations. P. Pulay, J. Comput. Chem. 3, 556 (1982),
    doi:10.1002/jcc.540030413 (PySCF's default for `KRKS` too).

    The solve stops when `norm(D(F(P)) − P) < atol + rtol·|D(F(P))|` (on the real and imaginary
    parts) and returns D(F(P)). For [`nlxc.pbc.solve`][] only (its map is
    [`periodic_scf_map`][nlxc.pbc.periodic_scf_map]).

    **Arguments:** `rtol`, `atol`, `norm` (default `optimistix.max_norm`), `history_size`
    (default 8), `level_shift` ≥ 0 (Hartree, default 0), `patience` (default 12; declared for
    [`nlxc.scf.AbstractSCFSolver`][], read only when a caller passes it in `options`),
    `start` (default 1: the first step, from the MINAO guess, is a plain diagonalisation whose
    Fock matrix is not kept, PySCF's `diis_start_cycle`).
    """

    rtol: float = 0.0
    atol: float = 1e-8
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    history_size: int = eqx.field(static=True, default=8)
    level_shift: float = 0.0
    patience: int = eqx.field(static=True, default=12)
    start: int = eqx.field(static=True, default=1)

    def extrapoland(self, y, g, aux: PeriodicSCFAux, args: PeriodicSCFArguments):
        return aux.fock, commutator_error(as_complex(aux.fock), as_complex(y), args.system)

    def iterate(self, y, extrapolated, args: PeriodicSCFArguments):
        p = as_complex(y)
        shifted = level_shifted(as_complex(extrapolated), p, args.system, args.level_shift)
        return as_real(density_from_fock(shifted, args.system, args.smearing))


_DEFAULT_SOLVER = KCDIIS()
_DEFAULT_ADJOINT = ImplicitAdjoint()


class PeriodicSCFResult(eqx.Module):
    """The outcome of [`nlxc.pbc.solve`][] (atomic units, per cell).

    - `energy`: the Kohn–Sham energy E[P*] per cell, Hartree (scalar). With smearing this is
      PySCF's `mf.e_tot` (the energy of the smeared density, not the free energy).
    - `free_energy`: the Mermin free energy E − width·S (PySCF's `mf.e_free`); = `energy` without
      smearing. Hartree.
    - `entropy`: S = −Σ_σk w_k Σ_i [f ln f + (1 − f) ln(1 − f)] per cell (dimensionless).
    - `components`: an [`nlxc.scf.EnergyComponents`][] (`one_electron`: kinetic +
      pseudopotential; `coulomb`: GDF Hartree; `xc`; `nuclear_repulsion`: Ewald).
    - `density_matrix`: α/β density matrices P*_σk, `(2, nk, nao, nao)` complex128 (PySCF's
      KRKS `dm_kpts` is P[0] + P[1]).
    - `fock_matrix`: F_σk(P*), `(2, nk, nao, nao)` complex128, Hartree.
    - `orbital_coefficients`: `(2, nk, nao, nmo)` complex128; `orbital_energies`: `(2, nk, nmo)`
      Hartree, ascending per k-point.
    - `occupations`: per spin-orbital, in [0, 1], `(2, nk, nmo)`.
    - `fermi_level`: the chemical potential μ with smearing, else the highest occupied level
      (Hartree).
    - `n_iterations`, `converged` (met the tolerance with finite numbers), `result`
      (`optimistix.RESULTS`).
    """

    energy: Float[Array, ""]
    free_energy: Float[Array, ""]
    entropy: Float[Array, ""]
    components: EnergyComponents
    density_matrix: Complex[Array, "2 nk nao nao"]
    fock_matrix: Complex[Array, "2 nk nao nao"]
    orbital_coefficients: Complex[Array, "2 nk nao nmo"]
    orbital_energies: Float[Array, "2 nk nmo"]
    occupations: Float[Array, "2 nk nmo"]
    fermi_level: Float[Array, ""]
    n_iterations: Int[Array, ""]
    converged: Bool[Array, ""]
    result: optx.RESULTS


def solve(
    functional: AbstractFunctional,
    system: PeriodicSystem,
    solver: optx.AbstractFixedPointSolver = _DEFAULT_SOLVER,
    *,
    smearing: FermiDirac | None = None,
    initial_density_matrix: Complex[Array, "2 nk nao nao"] | None = None,
    max_steps: int = 128,
    adjoint: optx.AbstractAdjoint = _DEFAULT_ADJOINT,
    throw: bool = False,
) -> PeriodicSCFResult:
    """Solve the Kohn–Sham equations of a crystal on its k-point sample.

    The SCF is the fixed point P* = D(F(P*)) of the α/β density matrices of all k-points, F = ∂E/∂P
    the Fock matrices by automatic differentiation of the energy per cell and D the density
    matrices of the lowest Bloch orbitals with occupations shared over the k-points (aufbau with
    one Fermi level, or Fermi–Dirac with one chemical potential). It is solved by an optimistix
    fixed-point solver (default [`KCDIIS`][nlxc.pbc.KCDIIS]) inside one compiled `while_loop`,
    so `solve` is pure and jit-able; gradients of any scalar of the result with respect to the
    functional's parameters (or the system's arrays) come from the implicit function theorem at
    the fixed point (matrix-free lineax solve, [`nlxc.scf.ImplicitAdjoint`][]).

    The total energy equals PySCF's `pyscf.pbc.dft.KRKS(cell, kpts).density_fit()` (`KUKS` for
    spin-polarised systems) with the same functional, grid and GDF (`tests/test_pbc.py`).

    **Arguments:**

    - `functional`: a semilocal nlxc functional (LDA, GGA, meta-GGA, constraint layers with
      local networks), an atom-centred model with periodic images
      ([`nlxc.models.AtomCentredCorrection`][], [`nlxc.models.EquivariantCorrection`][]), and
      `Sum`/`Scaled` of these (e.g. `PBE() + AtomCentredCorrection(...)`); the models' neighbour
      lists over the lattice translations are built here, outside `jit`
      ([`prepare_functional`][nlxc.pbc.prepare_functional]).
    - `system`: a [`PeriodicSystem`][nlxc.pbc.PeriodicSystem].
    - `solver`: an optimistix fixed-point solver on the [`as_real`][nlxc.pbc.as_real] iterate; an
      [`nlxc.scf.AbstractSCFSolver`][] (e.g. `KCDIIS`) iterates with its `level_shift`.
    - `smearing`: `None` (aufbau) or [`nlxc.scf.FermiDirac`][] (width in Hartree): one chemical
      potential for all k-points and both spins, as PySCF's `smearing_(mf, width, "fermi")`.
    - `initial_density_matrix`: `(2, nk, nao, nao)` complex128; default
      `system.initial_density_matrix`.
    - `max_steps`: the most SCF iterations.
    - `adjoint`: an optimistix adjoint; default [`nlxc.scf.ImplicitAdjoint`][]() (a failed
      adjoint solve gives a NaN gradient, never an exception); `optimistix.RecursiveCheckpointAdjoint()`
      differentiates the iterations.
    - `throw`: if `True`, a non-converged or non-finite SCF raises at run time; else it is
      reported in `converged` and `result`.

    **Returns:** a [`PeriodicSCFResult`][nlxc.pbc.PeriodicSCFResult].

    **Raises:** [`nlxc.InputError`][] (before anything is computed) for a functional that is not a
    semilocal nlxc functional or a periodic atom-centred model (or a sum of these), a `system`
    that is not a `PeriodicSystem`, an `initial_density_matrix` of the wrong shape, `max_steps` < 1, a `solver` that is not an
    optimistix fixed-point solver, an `adjoint` that is not an optimistix adjoint, a
    `smearing` that is neither `None` nor `FermiDirac`, or aufbau occupations (`smearing=None`)
    of a cell with a fractional number of electrons per spin (an odd electron count with spin 0).
    """
    check_functional(functional)
    if not isinstance(system, PeriodicSystem):
        raise InputError(f"nlxc.pbc.solve needs an nlxc.pbc.PeriodicSystem, got {type(system).__name__}; "
                         "build one with nlxc.pbc.PeriodicSystem.from_cell(cell, kmesh)")
    if system.overlap.dtype != jnp.complex128:
        raise InputError(f"the PeriodicSystem is in {system.overlap.dtype}, but nlxc computes in complex128: "
                         "import nlxc before building arrays (it enables jax_enable_x64)")
    if initial_density_matrix is not None:
        shape = (2, system.nk, system.nao, system.nao)
        if tuple(jnp.shape(initial_density_matrix)) != shape:
            raise InputError(f"initial_density_matrix must have shape (2, nk, nao, nao) = {shape}, "
                             f"got {tuple(jnp.shape(initial_density_matrix))}")
        initial_density_matrix = jnp.asarray(initial_density_matrix, dtype=jnp.complex128)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise InputError(f"max_steps must be a positive integer, got {max_steps!r}")
    if not isinstance(solver, optx.AbstractFixedPointSolver):
        raise InputError(f"solver must be an optimistix fixed-point solver, got {type(solver).__name__}")
    if not isinstance(adjoint, optx.AbstractAdjoint):
        raise InputError(f"adjoint must be an optimistix adjoint (e.g. nlxc.scf.ImplicitAdjoint()), "
                         f"got {type(adjoint).__name__}")
    if smearing is not None and not isinstance(smearing, FermiDirac):
        raise InputError(f"smearing must be None or nlxc.scf.FermiDirac(width), got {type(smearing).__name__}")
    if smearing is None:
        _check_integral_occupation(system)
    functional = prepare_functional(functional, system)  # periodic neighbour lists of atom-centred models
    return _solve(functional, system, solver, initial_density_matrix, max_steps, adjoint, smearing, throw)


def _check_integral_occupation(system: PeriodicSystem) -> None:
    """Aufbau needs a whole number of electrons per spin per cell (skipped under a trace)."""
    try:
        counts = np.asarray(system.n_electrons)
    except jax.errors.TracerArrayConversionError:
        return
    if np.any(np.abs(counts - np.round(counts)) > 1e-12):
        raise InputError(f"the cell has {counts.sum():g} electrons, an odd number, with spin 0: a metal "
                         "or an open shell; pass smearing=nlxc.scf.FermiDirac(width) or give the cell a "
                         "spin (cell.spin) and restricted=False")


@eqx.filter_jit
def _solve(functional, system: PeriodicSystem, solver, initial_density_matrix, max_steps: int, adjoint,
           smearing: FermiDirac | None, throw: bool) -> PeriodicSCFResult:
    p0 = system.initial_density_matrix if initial_density_matrix is None else initial_density_matrix
    level_shift = solver.level_shift if isinstance(solver, AbstractSCFSolver) else 0.0
    args = PeriodicSCFArguments(functional, system, jnp.asarray(level_shift, dtype=float), smearing)
    found = optx.fixed_point(periodic_scf_map, solver, as_real(p0), args=args, has_aux=True, max_steps=max_steps,
                             adjoint=adjoint, throw=False)
    p, result = as_complex(found.value), found.result
    if throw:
        p = eqx.error_if(
            p,
            (result != optx.RESULTS.successful) | ~jnp.all(jnp.isfinite(p)),
            "periodic SCF did not converge (max_steps reached or non-finite values); raise max_steps, "
            "add a level_shift or smearing, or pass throw=False",
        )
    components, fock = energy_and_fock(functional, system, p)
    energies, coefficients = orbitals(fock, system)
    occupations, level = occupations_and_level(energies, system, smearing)
    energy = components.total
    s = entropy(occupations, system.kpt_weights)
    width = 0.0 if smearing is None else float(smearing.width)
    converged = (result == optx.RESULTS.successful) & jnp.isfinite(energy)
    return PeriodicSCFResult(
        energy=energy,
        free_energy=energy - width * s,
        entropy=s,
        components=components,
        density_matrix=p,
        fock_matrix=fock,
        orbital_coefficients=coefficients,
        orbital_energies=energies,
        occupations=occupations,
        fermi_level=level,
        n_iterations=found.stats["num_steps"],
        converged=converged,
        result=result,
    )
