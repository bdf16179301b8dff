"""How gradients flow through the SCF: implicit (default) or unrolled adjoints."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx


class ZeroSafeSolver(lx.AbstractLinearSolver):
    """A Krylov linear solver that returns x = 0 for a zero right-hand side.

    BiCGStab and GMRES divide by the norm of the initial residual, so a zero right-hand side
    gives 0/0 = NaN. That case is common, not exotic: a molecule whose energy does not enter
    the loss (a masked filler entry of a padded batch, a zero loss weight) has a zero
    cotangent, hence a zero adjoint right-hand side. This wrapper answers it with the exact
    solution 0 (under `jax.vmap`, per batch entry).
    """

    inner: lx.AbstractLinearSolver

    def init(self, operator, options: dict[str, Any]):
        return self.inner.init(operator, options)

    def compute(self, state, vector, options: dict[str, Any]):
        zero = jnp.logical_not(
            jnp.any(jnp.stack([jnp.any(x != 0) for x in jax.tree.leaves(vector)]))
        )

        def solved():
            return self.inner.compute(state, vector, options)

        def trivial():
            struct = jax.eval_shape(solved)
            solution = jax.tree.map(jnp.zeros_like, vector)
            stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), struct[2])
            return solution, lx.RESULTS.successful, stats

        return jax.lax.cond(zero, trivial, solved)

    def transpose(self, state, options: dict[str, Any]):
        return self.inner.transpose(state, options)

    def conj(self, state, options: dict[str, Any]):
        return self.inner.conj(state, options)

    def assume_full_rank(self) -> bool:
        return self.inner.assume_full_rank()


def ImplicitAdjoint(rtol: float = 1e-10, atol: float = 1e-12, max_steps: int = 1000,
                    method: str = "bicgstab", restart: int = 20) -> optx.ImplicitAdjoint:
    """Implicit-function-theorem adjoint of the fixed point P* = D(F(P*; θ)), matrix-free.

    The adjoint linear system (I − ∂D∂F·∂F/∂P)ᵀ λ = g is solved iteratively on
    Jacobian–vector products of the SCF map: no Jacobian is ever materialised, so the cost is a
    handful of second-order energy derivatives, independent of the number of SCF iterations, and
    the memory is that of one iteration. Both reverse mode (`jax.grad`) and forward mode
    (`jax.jvp`) work. If the linear solver does not reach `rtol`/`atol` within `max_steps`, the
    gradient computation raises rather than returning an inexact gradient. A zero adjoint
    right-hand side (a molecule that does not enter the loss) gives a zero adjoint, not NaN
    ([`ZeroSafeSolver`][nlxc.scf.ZeroSafeSolver]).

    **Arguments:**

    - `rtol`, `atol`, `max_steps`: the linear solver's tolerances and iteration limit.
    - `method`: `"bicgstab"` (default; `lineax.BiCGStab`) or `"gmres"` (`lineax.GMRES` with
      `restart`). lineax's GMRES builds a full Krylov cycle of `restart` vectors before each
      convergence check, which made it 6× slower than BiCGStab on our systems
      (`benchmarks/grad.py`).

    **Returns:** an `optimistix.ImplicitAdjoint` configured with that linear solver.

    **Raises:** `ValueError` for an unknown `method`.
    """
    if method == "bicgstab":
        solver = lx.BiCGStab(rtol=rtol, atol=atol, max_steps=max_steps)
    elif method == "gmres":
        solver = lx.GMRES(rtol=rtol, atol=atol, restart=restart, max_steps=max_steps)
    else:
        raise ValueError(f"unknown linear solver {method!r}; use 'bicgstab' or 'gmres'")
    return optx.ImplicitAdjoint(linear_solver=ZeroSafeSolver(solver))


class UnrolledAdjoint(eqx.Module):
    """Backpropagate through exactly `max_steps` SCF iterations (`lax.scan`, no early exit).

    Each iteration is rematerialised in the backward pass when `checkpoint=True` (default), so
    the memory grows only by the solver state per iteration (the DIIS history, a few density
    matrices), not by the grid intermediates of every Fock build. This is what trajectory losses
    need (the Kohn–Sham regulariser weights the energy of every iteration): `SCFResult.history`
    holds the energy at every iteration, and the density matrices too with `densities=True`.
    Forward mode (`jax.jvp`) works as well.

    When the unrolled SCF has converged, its gradients agree with the implicit adjoint's.
    """

    checkpoint: bool = True
    densities: bool = False
