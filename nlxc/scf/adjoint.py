"""How gradients flow through the SCF: implicit (default) or unrolled adjoints."""

from __future__ import annotations

import equinox as eqx
import lineax as lx
import optimistix as optx


def ImplicitAdjoint(rtol: float = 1e-10, atol: float = 1e-12, max_steps: int = 1000,
                    method: str = "bicgstab", restart: int = 20) -> optx.ImplicitAdjoint:
    """Implicit-function-theorem adjoint of the fixed point P* = D(F(P*; θ)), matrix-free.

    The adjoint linear system (I − ∂D∂F·∂F/∂P)ᵀ λ = g is solved iteratively on
    Jacobian–vector products of the SCF map: no Jacobian is ever materialised, so the cost is a
    handful of second-order energy derivatives, independent of the number of SCF iterations, and
    the memory is that of one iteration. Both reverse mode (`jax.grad`) and forward mode
    (`jax.jvp`) work. If the linear solver does not reach `rtol`/`atol` within `max_steps`, the
    gradient computation raises rather than returning an inexact gradient.

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
    return optx.ImplicitAdjoint(linear_solver=solver)


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
