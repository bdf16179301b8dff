"""How gradients flow through the SCF: implicit (default) or unrolled adjoints."""

from __future__ import annotations

import abc
import functools
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Float

from .._errors import InputError
from ._base import SCFArguments
from ._strategy import PRIMARY, AbstractSCFStrategy, SCFFixedPoint, SCFHistory, SCFMap


class _WrappedSolver(lx.AbstractLinearSolver):
    """A linear solver that changes what `inner` computes and delegates everything else."""

    inner: eqx.AbstractVar[lx.AbstractLinearSolver]

    def init(self, operator, options: dict[str, Any]):
        return self.inner.init(operator, options)

    def transpose(self, state, options: dict[str, Any]):
        return self.inner.transpose(state, options)

    def conj(self, state, options: dict[str, Any]):
        return self.inner.conj(state, options)

    def assume_full_rank(self) -> bool:
        return self.inner.assume_full_rank()


class ZeroSafeSolver(_WrappedSolver):
    """A Krylov linear solver that answers two trivial right-hand sides exactly.

    BiCGStab and GMRES divide by norms that vanish in two cases that are common, not exotic,
    in SCF adjoints, and return NaN there:

    - a zero right-hand side: a molecule whose energy does not enter the loss (a masked filler
      entry of a padded batch, a zero loss weight) has a zero cotangent. The solution is x = 0.
    - a right-hand side b that is an eigenvector, A b = λ b: for the adjoint operator I − Jᵀ
      this is e.g. a cotangent that the SCF map's Jacobian annihilates (λ = 1: H2 in a minimal
      basis, whose density is fixed by symmetry) or one it doubles (λ = −1: a one-electron atom
      in a one-function basis). BiCGStab then converges in its first half-step and computes 0/0.
      The solution is x = b / λ (taken when ‖A b − λ b‖ ≤ 1e-13 ‖b‖ for the Rayleigh quotient
      λ = ⟨b, Ab⟩ / ⟨b, b⟩, |λ| > 1e-8).

    Everything else goes to the wrapped solver (under `jax.vmap`, per batch entry).
    """

    inner: lx.AbstractLinearSolver

    def compute(self, state, vector, options: dict[str, Any]):
        def norm(tree):
            return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in jax.tree.leaves(tree)))

        zero = jnp.logical_not(
            jnp.any(jnp.stack([jnp.any(x != 0) for x in jax.tree.leaves(vector)]))
        )
        # lineax's Krylov solvers keep the (linearised) operator as their state
        if isinstance(state, lx.AbstractLinearOperator):
            image = state.mv(vector)
            # Rayleigh quotient λ = ⟨b, Ab⟩ / ⟨b, b⟩; b is an eigenvector if ‖Ab − λb‖ ≤ 1e-13 ‖b‖
            dot = lambda u, v: sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(v)))  # noqa: E731
            bb = dot(vector, vector)
            eigenvalue = dot(vector, image) / jnp.where(bb > 0, bb, 1.0)
            residual = norm(jax.tree.map(lambda b, ab: ab - eigenvalue * b, vector, image))
            fixed = (residual <= 1e-13 * norm(vector)) & (jnp.abs(eigenvalue) > 1e-8)
        else:
            eigenvalue, fixed = jnp.asarray(1.0), jnp.asarray(False)

        def solved():
            return self.inner.compute(state, vector, options)

        struct = jax.eval_shape(solved)

        def trivial(solution):
            stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), struct[2])
            return solution, lx.RESULTS.successful, stats

        index = jnp.where(zero, 0, jnp.where(fixed, 1, 2))
        safe = jnp.where(fixed, eigenvalue, 1.0)
        return jax.lax.switch(index, [lambda: trivial(jax.tree.map(jnp.zeros_like, vector)),
                                      lambda: trivial(jax.tree.map(lambda b: b / safe, vector)), solved])



def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# What a failed adjoint solve returns under `FailAsValue`: finite, because lineax turns a
# non-finite solution (or input) into an exception that a transposed solve always raises; so
# large that any gradient it reaches overflows, which a caller detects as a non-finite norm.
FAILED_SOLVE = 1e300


class FailAsValue(_WrappedSolver):
    """A linear solver that reports its failures as values, not exceptions.

    Where the wrapped solver did not succeed (a Krylov breakdown, no convergence within its
    steps), or its right-hand side is not finite (the cotangent of a NaN loss), the solution is
    `FAILED_SOLVE` (1e300) and the result "successful": a gradient whose norm overflows, which
    the caller rejects (`nlxc.train` keeps its parameters and logs the step). Inside
    `optimistix.ImplicitAdjoint` this keeps lineax from raising (it raises on any failed
    transposed solve, whatever `throw` says); [`nlxc.scf.SCFImplicitAdjoint`][] already turns
    a failed solve into NaN, and this wrapper additionally keeps a non-finite right-hand side
    out of the Krylov solver.
    """

    inner: lx.AbstractLinearSolver

    def compute(self, state, vector, options: dict[str, Any]):
        finite_input = _all_finite(vector)
        vector = jax.tree.map(lambda x: jnp.where(finite_input, x, 0.0), vector)
        solution, result, stats = self.inner.compute(state, vector, options)
        failed = (result != lx.RESULTS.successful) | ~finite_input | ~_all_finite(solution)
        solution = jax.tree.map(lambda x: jnp.where(failed, FAILED_SOLVE, x), solution)
        return solution, lx.RESULTS.successful, stats


def _solve_or_nan(operator, vector, solver):
    """`operator⁻¹ vector` by `solver`, with no exception: NaN where the solve failed (so the
    gradient it reaches is non-finite, which callers check), never a host callback."""
    solution = lx.linear_solve(operator, vector, solver, throw=False)
    failed = solution.result != lx.RESULTS.successful
    return jax.tree.map(lambda x: jnp.where(failed, jnp.nan, x), solution.value)


def _linear_solve(operator: lx.AbstractLinearOperator, vector, solver: lx.AbstractLinearSolver):
    """x = A⁻¹ b as `jax.lax.custom_linear_solve`, whose derivatives and transpose are themselves
    linear solves with `solver` (the transpose solves Aᵀ). lineax's own `linear_solve` raises
    on failure through a host callback, always so in a transposed (reverse-mode) solve, and
    JAX's persistent compilation cache never stores a program holding a host callback: every
    gradient program would be compiled again in every process."""
    transposed = operator.transpose()
    return jax.lax.custom_linear_solve(
        operator.mv,
        vector,
        solve=lambda _, b: _solve_or_nan(operator, b, solver),
        transpose_solve=lambda _, b: _solve_or_nan(transposed, b, solver),
    )


def _for_jacobian(root, args):
    fn_rewrite, residual, inputs = args
    return fn_rewrite(root, residual, inputs)


@eqx.filter_custom_jvp
def _implicit(fn_primal, fn_rewrite, inputs, tags, linear_solver):
    del fn_rewrite, tags, linear_solver
    return jax.tree.map(jnp.asarray, fn_primal(inputs))


@_implicit.def_jvp
def _implicit_jvp(primals, tangents):
    # the implicit function theorem: with R(y*, θ) = 0 (`fn_rewrite`), dy* = −(∂R/∂y)⁻¹ ∂R/∂θ dθ
    fn_primal, fn_rewrite, inputs, tags, linear_solver = primals
    _, _, t_inputs, _, _ = tangents
    no_tangent = jax.tree.map(lambda t: t is None, t_inputs, is_leaf=lambda t: t is None)
    nondiff, diff = eqx.partition(inputs, no_tangent, is_leaf=lambda t: t is None)
    root, residual = _implicit(fn_primal, fn_rewrite, inputs, tags, linear_solver)

    def rewrite_of(d):
        return fn_rewrite(root, residual, eqx.combine(d, nondiff))

    _, rhs = jax.jvp(rewrite_of, (diff,), (t_inputs,))
    operator = lx.JacobianLinearOperator(_for_jacobian, root, (fn_rewrite, residual, inputs), tags=tags)
    t_root = jax.tree.map(jnp.negative, _linear_solve(operator, rhs, linear_solver))
    t_residual = jax.custom_derivatives.zero_from_primal(residual, symbolic_zeros=True)
    return (root, residual), (t_root, t_residual)


class AbstractSCFAdjoint(eqx.Module):
    """How [`nlxc.scf.solve`][] solves for the fixed point and differentiates through it.

    `solve` calls [`fixed_point`][nlxc.scf.AbstractSCFAdjoint.fixed_point] once, inside its
    compiled program. Subclasses: [`SCFImplicitAdjoint`][nlxc.scf.SCFImplicitAdjoint] (the
    implicit function theorem at the fixed point, however it was found: the whole strategy,
    fallback included) and [`UnrolledAdjoint`][nlxc.scf.UnrolledAdjoint] (backpropagation through
    a fixed number of iterations of the primary solver). An optimistix adjoint passed to `solve`
    is wrapped in one (see [`as_scf_adjoint`][nlxc.scf.as_scf_adjoint]).
    """

    @abc.abstractmethod
    def fixed_point(self, fn: SCFMap, strategy: AbstractSCFStrategy, y0: Float[Array, "2 nao nao"],
                    args: SCFArguments, max_steps: int) -> SCFFixedPoint:
        """The fixed point of the SCF map `fn` ([`scf_map`][nlxc.scf.scf_map]) from the density
        matrices `y0` `(2, nao, nao)`, searched by `strategy` (an
        [`AbstractSCFStrategy`][nlxc.scf.AbstractSCFStrategy]) with `args` within `max_steps`
        iterations; gradients of its `value` with respect to `args` (and `y0`) are this adjoint's."""


class SCFImplicitAdjoint(AbstractSCFAdjoint, optx.ImplicitAdjoint):
    """`optimistix.ImplicitAdjoint` (the implicit function theorem at the fixed point) whose
    linear solves fail as values: where the adjoint solve does not converge, the derivative is
    NaN rather than an exception raised from inside the compiled program. Built by
    [`nlxc.scf.ImplicitAdjoint`][]; see there.

    As an [`AbstractSCFAdjoint`][nlxc.scf.AbstractSCFAdjoint] it runs the whole strategy of
    [`nlxc.scf.solve`][] (the fallback and the stability analysis included): the derivative is
    that of the fixed point, however it was found.

    **Arguments:** `linear_solver`, a `lineax.AbstractLinearSolver` for the adjoint system.
    """

    def fixed_point(self, fn, strategy, y0, args, max_steps):
        return strategy.search(fn, y0, args, max_steps, self)

    def apply(self, primal_fn, rewrite_fn, inputs, tags):
        inputs = inputs + (functools.partial(eqxi.while_loop, kind="lax"),)
        root, residual = _implicit(primal_fn, rewrite_fn, inputs, tags, self.linear_solver)
        return root, jax.tree.map(eqxi.nondifferentiable_backward, residual)


def ImplicitAdjoint(rtol: float = 1e-10, atol: float = 1e-12, max_steps: int = 1000,
                    method: str = "bicgstab", restart: int = 20) -> SCFImplicitAdjoint:
    """Implicit-function-theorem adjoint of the fixed point P* = D(F(P*; θ)), matrix-free.

    The adjoint linear system (I − ∂D∂F·∂F/∂P)ᵀ λ = g is solved iteratively on
    Jacobian–vector products of the SCF map: no Jacobian is ever materialised, so the cost is a
    handful of second-order energy derivatives, independent of the number of SCF iterations, and
    the memory is that of one iteration. Both reverse mode (`jax.grad`) and forward mode
    (`jax.jvp`) work. If the linear solver does not reach `rtol`/`atol` within `max_steps`, the
    derivative is NaN (a failure as a value: check `jnp.isfinite` of the gradient; `nlxc.train`
    does, and keeps its parameters) rather than an inexact gradient or an exception from inside
    the compiled program. (An exception would need a host callback, and JAX's persistent
    compilation cache does not store programs that hold one.) A zero adjoint right-hand side (a
    molecule that does not enter the loss) gives a zero adjoint, not NaN
    ([`ZeroSafeSolver`][nlxc.scf.ZeroSafeSolver]).

    **Arguments:**

    - `rtol`, `atol`, `max_steps`: the linear solver's tolerances and iteration limit.
    - `method`: `"bicgstab"` (default; `lineax.BiCGStab`) or `"gmres"` (`lineax.GMRES` with
      `restart`). lineax's GMRES builds a full Krylov cycle of `restart` vectors before each
      convergence check, which made it 6× slower than BiCGStab on our systems
      (`benchmarks/grad.py`).

    **Returns:** an [`SCFImplicitAdjoint`][nlxc.scf.SCFImplicitAdjoint] (an
    `optimistix.ImplicitAdjoint`) configured with that linear solver.

    **Raises:** `ValueError` for an unknown `method`.
    """
    if method == "bicgstab":
        solver = lx.BiCGStab(rtol=rtol, atol=atol, max_steps=max_steps)
    elif method == "gmres":
        solver = lx.GMRES(rtol=rtol, atol=atol, restart=restart, max_steps=max_steps)
    else:
        raise ValueError(f"unknown linear solver {method!r}; use 'bicgstab' or 'gmres'")
    return SCFImplicitAdjoint(linear_solver=ZeroSafeSolver(solver))


class UnrolledAdjoint(AbstractSCFAdjoint):
    """Backpropagate through exactly `max_steps` SCF iterations (`lax.scan`, no early exit).

    Each iteration is rematerialised in the backward pass when `checkpoint=True` (default), so
    the memory grows only by the solver state per iteration (the DIIS history, a few density
    matrices), not by the grid intermediates of every Fock build. This is what trajectory losses
    need (the Kohn–Sham regulariser weights the energy of every iteration): `SCFResult.history`
    holds the energy at every iteration, and the density matrices too with `densities=True`.
    Forward mode (`jax.jvp`) works as well. Only the primary solver runs (no fallback).

    When the unrolled SCF has converged, its gradients agree with the implicit adjoint's.
    """

    checkpoint: bool = True
    densities: bool = False

    def fixed_point(self, fn, strategy, y0, args, max_steps):
        solver = strategy.solver
        f_struct, aux_struct = eqx.filter_eval_shape(fn, y0, args)
        state = solver.init(fn, y0, args, {}, f_struct, aux_struct, frozenset())

        def body(carry, _):
            y, state = carry
            new_y, new_state, aux = solver.step(fn, y, args, {}, state, frozenset())
            return (new_y, new_state), (aux.energy, y if self.densities else None)

        if self.checkpoint:
            body = jax.checkpoint(body)
        (p, state), (energies, densities) = jax.lax.scan(body, (y0, state), None, length=max_steps)
        done, result = solver.terminate(fn, p, args, {}, state, frozenset())
        result = optx.RESULTS.where(done, result, optx.RESULTS.nonlinear_max_steps_reached)
        return SCFFixedPoint(p, result, jnp.asarray(max_steps), jnp.asarray(PRIMARY), SCFHistory(energies, densities))


class OptimistixAdjoint(AbstractSCFAdjoint):
    """An optimistix adjoint that differentiates the iterations (e.g.
    `optimistix.RecursiveCheckpointAdjoint()`): the primary solver runs alone, inside
    `optimistix.fixed_point` with this `adjoint`."""

    adjoint: optx.AbstractAdjoint

    def fixed_point(self, fn, strategy, y0, args, max_steps):
        return strategy.alone().search(fn, y0, args, max_steps, self.adjoint)


class OptimistixImplicitAdjoint(AbstractSCFAdjoint):
    """An `optimistix.ImplicitAdjoint`: it differentiates the fixed point however it was found,
    so the whole strategy runs (fallback and stability analysis included), with this `adjoint`."""

    adjoint: optx.ImplicitAdjoint

    def fixed_point(self, fn, strategy, y0, args, max_steps):
        return strategy.search(fn, y0, args, max_steps, self.adjoint)


def as_scf_adjoint(adjoint: AbstractSCFAdjoint | optx.AbstractAdjoint) -> AbstractSCFAdjoint:
    """The `adjoint` argument of [`nlxc.scf.solve`][] as an
    [`AbstractSCFAdjoint`][nlxc.scf.AbstractSCFAdjoint]: itself, or an optimistix adjoint wrapped
    ([`OptimistixImplicitAdjoint`][nlxc.scf.OptimistixImplicitAdjoint] for an
    `optimistix.ImplicitAdjoint`, else [`OptimistixAdjoint`][nlxc.scf.OptimistixAdjoint]).

    **Raises:** [`nlxc.InputError`][] for anything else.
    """
    if isinstance(adjoint, AbstractSCFAdjoint):
        return adjoint
    if isinstance(adjoint, optx.ImplicitAdjoint):
        return OptimistixImplicitAdjoint(adjoint)
    if isinstance(adjoint, optx.AbstractAdjoint):
        return OptimistixAdjoint(adjoint)
    raise InputError(f"adjoint must be an nlxc.scf.AbstractSCFAdjoint or an optimistix adjoint, "
                     f"got {type(adjoint).__name__}")
