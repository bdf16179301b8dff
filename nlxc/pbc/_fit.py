"""Least-squares fits of a functional's parameters to targets of crystals, through the periodic SCF (private).

A target is a group of k-point systems of one crystal (e.g. the same cell at two lattice
scales), stacked along a leading axis and solved together (`jax.vmap` of
[`nlxc.pbc.solve`][]), and a residual function of their SCF results. The residuals of all
targets are pure JAX functions of the parameters; their Jacobian comes from forward-mode
differentiation through the implicit adjoint of each SCF, and the parameters are fitted by an
optimistix least-squares solver (Levenberg–Marquardt with trust-region step acceptance by
default), the whole fit one compiled program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree

from .._errors import InputError
from ..scf import FermiDirac
from ..xc import AbstractFunctional
from ._energy import check_functional
from ._solve import KCDIIS, PeriodicSCFResult, solve
from ._system import PeriodicSystem

__all__ = ["FitTarget", "PeriodicFit", "fit_parameters", "pressure_target", "stack_systems"]

# 1 Hartree/Bohr³ in GPa: E_h / a₀³ with CODATA 2018 (E_h = 4.3597447222071e-18 J, a₀ = 5.29177210903e-11 m)
HARTREE_PER_CUBIC_BOHR_IN_GPA = 4.3597447222071e-18 / (5.29177210903e-11) ** 3 / 1e9


def stack_systems(systems: Sequence[PeriodicSystem]) -> PeriodicSystem:
    """Stack k-point systems of one crystal along a new leading axis, for `jax.vmap` of
    [`nlxc.pbc.solve`][].

    The systems must agree in the number of k-points, basis functions, atoms and in
    `restricted` (e.g. one cell at several lattice scales). Their grids and density-fitting
    vectors may differ in number: the grids are padded with points of zero weight and zero AO
    values (ρ = 0 there, so they add nothing to E_xc), the GDF tensors with zero vectors (they add
    nothing to the Hartree energy ½ Σ_Q sign_Q ρ_Q²). Energies, Fock matrices and their
    derivatives are unchanged by the padding.

    **Arguments:** `systems`, one or more [`nlxc.pbc.PeriodicSystem`][]s.

    **Returns:** a `PeriodicSystem` whose arrays have a leading axis of `len(systems)`
    (`ao_values` `(npoint, nk, 4, ngrid_max, nao)`, `cderi` `(npoint, nk, naux_max, nao, nao)`, …).

    **Raises:** [`nlxc.InputError`][] for an empty sequence, an item that is not a
    `PeriodicSystem`, or systems that differ in nk, nao, the number of atoms or `restricted`.
    """
    systems = list(systems)
    if not systems:
        raise InputError("stack_systems needs at least one PeriodicSystem")
    for s in systems:
        if not isinstance(s, PeriodicSystem):
            raise InputError(f"stack_systems needs nlxc.pbc.PeriodicSystem items, got {type(s).__name__}")
        if s.ao_values.ndim != 4:
            raise InputError("stack_systems needs unstacked systems (ao_values of shape (nk, 4, ngrid, nao))")
    def kind(s: PeriodicSystem) -> tuple:
        return s.nk, s.nao, s.atom_coords.shape[0], s.restricted

    for s in systems[1:]:
        if kind(s) != kind(systems[0]):
            raise InputError("stack_systems needs systems with equal nk, nao, atoms and restricted; got (nk, nao, "
                             f"natom, restricted) = {kind(systems[0])} and {kind(s)}")
    ngrid = max(s.ngrid for s in systems)
    naux = max(s.naux for s in systems)

    def padded(s: PeriodicSystem) -> PeriodicSystem:
        g, q = ngrid - s.ngrid, naux - s.naux
        return eqx.tree_at(
            lambda t: (t.ao_values, t.grid_coords, t.grid_weights, t.cderi, t.cderi_sign),
            s,
            (jnp.pad(s.ao_values, ((0, 0), (0, 0), (0, g), (0, 0))),
             jnp.pad(s.grid_coords, ((0, g), (0, 0))),
             jnp.pad(s.grid_weights, (0, g)),
             jnp.pad(s.cderi, ((0, 0), (0, q), (0, 0), (0, 0))),
             jnp.pad(s.cderi_sign, (0, q), constant_values=1.0)),
        )

    return jax.tree.map(lambda *xs: jnp.stack(xs), *[padded(s) for s in systems])


class FitTarget(eqx.Module):
    """One crystal's contribution to a fit: stacked systems and a residual of their SCF results.

    **Fields:**

    - `name`: a label (static).
    - `systems`: the systems of this target stacked by [`stack_systems`][nlxc.pbc.stack_systems]
      (leading axis `npoint`).
    - `residual`: `residual(results, systems) -> Float[Array, "nres"]`, a pure JAX function of the
      [`nlxc.pbc.PeriodicSCFResult`][] of every point (its arrays with the leading axis
      `npoint`) and the stacked systems (static; e.g. [`pressure_target`][nlxc.pbc.pressure_target]).
    - `smearing`: `None` (aufbau) or [`nlxc.scf.FermiDirac`][] for this crystal.
    """

    name: str = eqx.field(static=True)
    systems: PeriodicSystem
    residual: Callable[[PeriodicSCFResult, PeriodicSystem], Float[Array, " nres"]] = eqx.field(static=True)
    smearing: FermiDirac | None = None


class _PressureResidual(eqx.Module):
    bulk_modulus: float = eqx.field(static=True)  # Hartree/Bohr³
    scale: float = eqx.field(static=True)

    def __call__(self, results: PeriodicSCFResult, systems: PeriodicSystem) -> Float[Array, " 1"]:
        volume = jnp.abs(jnp.linalg.det(systems.lattice_vectors))  # (2,) Bohr³ per cell
        pressure = -(results.free_energy[1] - results.free_energy[0]) / (volume[1] - volume[0])
        return (self.scale * pressure / (3.0 * self.bulk_modulus))[None]


def pressure_target(name: str, systems: Sequence[PeriodicSystem], bulk_modulus: float, *,
                    smearing: FermiDirac | None = None, scale: float = 100.0) -> FitTarget:
    """A target whose residual is the first-order lattice-constant error implied by the pressure
    between two cells of a crystal (e.g. at 0.98 and 1.02 × the experimental lattice constant).

    With p̄ = −(F₁ − F₀)/(V₁ − V₀) the mean pressure between the two cells (F the free energy
    per cell, `PeriodicSCFResult.free_energy`, = E without smearing; V the cell volumes), the
    residual is `scale · p̄ / (3 B)`. Near the minimum E(V) ≈ E₀ + B (V − V₀)²/(2V₀), so
    p(V) = −B (V − V₀)/V₀ and p̄/(3B) ≈ (a₀ − a_ref)/a_ref at the midpoint a_ref of the two
    cells: the residual is the relative error of the functional's lattice constant a₀ (in per
    cent with the default `scale = 100`), zero when the two cells have equal free energies. It
    needs two SCFs per crystal and no equation-of-state fit, and is a smooth function of the
    energies (Murnaghan, Proc. Natl. Acad. Sci. 30, 244 (1944), doi:10.1073/pnas.30.9.244, for
    B = −V dp/dV).

    **Arguments:**

    - `name`: a label.
    - `systems`: the two [`nlxc.pbc.PeriodicSystem`][]s (smaller volume first or not; the
      formula is symmetric).
    - `bulk_modulus`: B in GPa, a fixed scale (e.g. the bulk modulus of a reference E(V) fit or
      experiment); it sets the units of the residual, not its zero.
    - `smearing`: `None` or [`nlxc.scf.FermiDirac`][] (metals).
    - `scale`: multiplies the residual (default 100: per cent).

    **Returns:** a [`FitTarget`][nlxc.pbc.FitTarget] with one residual.

    **Raises:** [`nlxc.InputError`][] unless there are exactly two systems of different volume
    and `bulk_modulus` is positive.
    """
    systems = list(systems)
    if len(systems) != 2:
        raise InputError(f"a pressure target needs exactly two systems (two lattice scales), got {len(systems)}")
    volumes = [float(s.volume) for s in systems]
    if abs(volumes[1] - volumes[0]) < 1e-8 * max(volumes):
        raise InputError(f"the two systems of a pressure target have the same volume ({volumes[0]:.6g} Bohr³)")
    if not (isinstance(bulk_modulus, (int, float)) and bulk_modulus > 0):
        raise InputError(f"bulk_modulus must be a positive number (GPa), got {bulk_modulus!r}")
    residual = _PressureResidual(float(bulk_modulus) / HARTREE_PER_CUBIC_BOHR_IN_GPA, float(scale))
    return FitTarget(name=name, systems=stack_systems(systems), residual=residual, smearing=smearing)


class PeriodicFit(eqx.Module):
    """The outcome of [`fit_parameters`][nlxc.pbc.fit_parameters].

    - `parameters`: the fitted parameters (the pytree of `parameters0`).
    - `residuals`: `(nres,)` at the fitted parameters (all targets in order, then the prior's).
    - `jacobian`: `(nres, nparam)` ∂residuals/∂parameters at the fitted parameters (the
      parameters flattened as `jax.flatten_util.ravel_pytree` orders them), by forward-mode
      differentiation through each SCF's implicit adjoint (the solver's own linearisation).
    - `loss`: ½ Σ residuals².
    - `converged`: per target, `(npoint,)` bool: the SCF of each point converged at the fitted
      parameters; `scf_iterations`: per target, `(npoint,)`.
    - `result`: the least-squares solver's `optimistix.RESULTS` (`successful`, or e.g.
      `nonlinear_max_steps_reached`); `n_steps`: its number of steps (accepted or not).
    - `names`: the targets' names (static).
    """

    parameters: PyTree
    residuals: Float[Array, " nres"]
    jacobian: Float[Array, "nres nparam"]
    loss: Float[Array, ""]
    converged: tuple[Bool[Array, " npoint"], ...]
    scf_iterations: tuple[Int[Array, " npoint"], ...]
    result: optx.RESULTS
    n_steps: Int[Array, ""]
    names: tuple[str, ...] = eqx.field(static=True)

    def as_dict(self) -> dict:
        """A JSON-ready dict (lists and floats): `parameters` (flattened), `residuals`, `jacobian`,
        `jacobian_finite`, `loss`, `converged` and `scf_iterations` per target name, `successful`
        (the solver's result), `n_steps`, `ok`."""
        flat, _ = jax.flatten_util.ravel_pytree(self.parameters)
        return {"parameters": flat.tolist(), "residuals": self.residuals.tolist(), "jacobian": self.jacobian.tolist(),
                "jacobian_finite": bool(jnp.all(jnp.isfinite(self.jacobian))), "loss": float(self.loss),
                "converged": {n: c.tolist() for n, c in zip(self.names, self.converged)},
                "scf_iterations": {n: i.tolist() for n, i in zip(self.names, self.scf_iterations)},
                "successful": bool(self.result == optx.RESULTS.successful), "n_steps": int(self.n_steps), "ok": self.ok}

    @property
    def ok(self) -> bool:
        """The solver succeeded, every SCF converged, and residuals and Jacobian are finite."""
        return bool((self.result == optx.RESULTS.successful)
                    & jnp.all(jnp.asarray([jnp.all(c) for c in self.converged]))
                    & jnp.all(jnp.isfinite(self.residuals)) & jnp.all(jnp.isfinite(self.jacobian)))


class _FitArgs(eqx.Module):
    model: Callable[[PyTree], AbstractFunctional]
    targets: tuple[FitTarget, ...]
    prior: Callable[[PyTree], Float[Array, " nprior"]] | None
    scf_solver: optx.AbstractFixedPointSolver
    max_scf_steps: int = eqx.field(static=True)


def _target_value(parameters, target: FitTarget, model, scf_solver, max_scf_steps: int):
    """One target's residuals and (as floats) its SCF flags and iteration counts; its points are
    solved one after the other (`lax.map`), so that only one SCF is held in memory at a time. A
    target whose SCFs did not all converge gives NaN residuals (the trust region rejects the step)."""
    functional = model(parameters)

    def one(system):
        return solve(functional, system, scf_solver, smearing=target.smearing, max_steps=max_scf_steps)

    results = jax.lax.map(one, target.systems)
    r = jnp.atleast_1d(target.residual(results, target.systems))
    r = jnp.where(jnp.all(results.converged), r, jnp.nan)
    return r, (results.converged.astype(r.dtype), results.n_iterations.astype(r.dtype))


@eqx.filter_custom_jvp
def _target_residual(parameters, target, model, scf_solver, max_scf_steps):
    return _target_value(parameters, target, model, scf_solver, max_scf_steps)


@_target_residual.def_jvp
def _target_residual_jvp(primals, tangents):
    # The target's Jacobian is materialised at once (forward mode through each SCF's implicit
    # adjoint, one point at a time), so that a linearisation of the whole residual vector keeps
    # only these small matrices, not the intermediates of every SCF of every target at once.
    parameters, target, model, scf_solver, max_scf_steps = primals
    flat, unravel = jax.flatten_util.ravel_pytree(parameters)

    def value(x):
        r, aux = _target_value(unravel(x), target, model, scf_solver, max_scf_steps)
        return r, (r, aux)

    jacobian, (r, aux) = jax.jacfwd(value, has_aux=True)(flat)
    t_parameters = jax.tree.map(lambda t, p: jnp.zeros_like(p) if t is None else t, tangents[0], parameters,
                                is_leaf=lambda t: t is None)
    t_flat, _ = jax.flatten_util.ravel_pytree(t_parameters)
    return (r, aux), (jacobian @ t_flat, jax.tree.map(jnp.zeros_like, aux))


def _residuals(parameters, args: _FitArgs):
    """All residuals and, as auxiliary output, the SCF convergence flags and iteration counts."""
    residuals, converged, iterations = [], [], []
    for target in args.targets:
        r, (c, n) = _target_residual(parameters, target, args.model, args.scf_solver, args.max_scf_steps)
        residuals.append(r)
        converged.append(c > 0.5)
        iterations.append(n.astype(jnp.int32))
    if args.prior is not None:
        residuals.append(jnp.atleast_1d(args.prior(parameters)))
    return jnp.concatenate(residuals), (tuple(converged), tuple(iterations))


@eqx.filter_jit
def _as_matrix(operator) -> Float[Array, "nres nparam"]:
    return operator.as_matrix()


def fit_parameters(
    model: Callable[[PyTree], AbstractFunctional],
    parameters0: PyTree,
    targets: Sequence[FitTarget],
    *,
    prior: Callable[[PyTree], Float[Array, " nprior"]] | None = None,
    solver: optx.AbstractGaussNewton | None = None,
    max_steps: int = 16,
    scf_solver: optx.AbstractFixedPointSolver | None = None,
    max_scf_steps: int = 128,
) -> PeriodicFit:
    """Fit a functional's parameters to targets of crystals by nonlinear least squares through
    the periodic SCF.

    The residual vector is the concatenation of every target's residual (each a pure JAX
    function of the SCF results of its systems, solved by [`nlxc.pbc.solve`][] with the
    functional `model(parameters)`) and `prior(parameters)`. It is minimised in ½‖r‖² by
    `optimistix.least_squares` with `solver` (default `optimistix.LevenbergMarquardt(rtol=1e-4,
    atol=1e-4)`: a damped Gauss–Newton step accepted or rejected by a trust region; K.
    Levenberg, Q. Appl. Math. 2, 164 (1944), doi:10.1090/qam/10666; D. W. Marquardt, J. Soc.
    Ind. Appl. Math. 11, 431 (1963), doi:10.1137/0111030). Its Jacobian is forward-mode
    automatic differentiation through each SCF's implicit adjoint. A target whose SCFs do not
    all converge at some parameters gives NaN residuals there, which the trust region rejects.
    The residuals, the Jacobian (materialised from the solver's linearisation) and the SCF
    flags reported are those of the last accepted step, read from the solver's final state.

    **Arguments:**

    - `model`: `model(parameters) -> functional`, a semilocal nlxc functional (e.g. PBE with a
      bounded reparameterisation of μ and β).
    - `parameters0`: the initial parameters (a pytree of float arrays).
    - `targets`: one or more [`FitTarget`][nlxc.pbc.FitTarget]s (e.g. from
      [`pressure_target`][nlxc.pbc.pressure_target]).
    - `prior`: optional extra residuals of the parameters alone (e.g. `w · (θ − θ₀)`, a ridge
      towards the starting functional).
    - `solver`: an `optimistix.AbstractGaussNewton` (`LevenbergMarquardt`, `GaussNewton`,
      `Dogleg`, …).
    - `max_steps`: the most least-squares steps (accepted or rejected).
    - `scf_solver`: the SCF solver (default [`nlxc.pbc.KCDIIS`][]()); `max_scf_steps`: its most
      iterations per SCF.

    **Returns:** a [`PeriodicFit`][nlxc.pbc.PeriodicFit] (the parameters of the last accepted
    step, with the solver's result code; reaching `max_steps` is reported there, not raised).

    **Raises:** [`nlxc.InputError`][] (before anything is computed) for no targets, an item that
    is not a `FitTarget`, `parameters0` without float arrays, a `model` whose output is not a
    functional `nlxc.pbc.solve` accepts, `max_steps`/`max_scf_steps` < 1, or a `solver` that is
    not of the Gauss–Newton family.
    """
    targets = tuple(targets)
    if not targets:
        raise InputError("fit_parameters needs at least one FitTarget")
    for t in targets:
        if not isinstance(t, FitTarget):
            raise InputError(f"fit_parameters needs FitTarget items, got {type(t).__name__}")
    leaves = jax.tree.leaves(parameters0)
    if not leaves or not all(eqx.is_inexact_array(x) for x in leaves):
        raise InputError("parameters0 must be a pytree of float arrays (e.g. jnp.zeros(2))")
    for name, value in (("max_steps", max_steps), ("max_scf_steps", max_scf_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    check_functional(model(parameters0))
    solver = optx.LevenbergMarquardt(rtol=1e-4, atol=1e-4) if solver is None else solver
    if not isinstance(solver, optx.AbstractGaussNewton):
        raise InputError(f"solver must be an optimistix Gauss-Newton-type least-squares solver "
                         f"(LevenbergMarquardt, GaussNewton, Dogleg), got {type(solver).__name__}")
    args = _FitArgs(model, targets, prior, KCDIIS() if scf_solver is None else scf_solver, max_scf_steps)
    solution = optx.least_squares(_residuals, solver, parameters0, args=args, has_aux=True, max_steps=max_steps,
                                  throw=False)
    # A Gauss-Newton state holds the residuals, the (linearised) Jacobian and the auxiliary output
    # at its last accepted point, which is `solution.value`: no further SCF is needed.
    final = solution.state
    residuals, (converged, iterations) = final.f_info.residual, final.aux
    jacobian = _as_matrix(final.f_info.jac)
    return PeriodicFit(
        parameters=solution.value,
        residuals=residuals,
        jacobian=jacobian,
        loss=0.5 * jnp.sum(residuals**2),
        converged=converged,
        scf_iterations=iterations,
        result=solution.result,
        n_steps=solution.stats["num_steps"],
        names=tuple(t.name for t in targets),
    )
