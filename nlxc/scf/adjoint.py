"""How gradients flow through the SCF: implicit (default) or unrolled adjoints."""

from __future__ import annotations

import equinox as eqx
import lineax as lx
import optimistix as optx


def ImplicitAdjoint(rtol: float = 1e-10, atol: float = 1e-12, restart: int = 40,
                    max_steps: int = 400) -> optx.ImplicitAdjoint:
    """Implicit-function-theorem adjoint of the fixed point P* = D(F(P*; θ)), matrix-free.

    The adjoint linear system (I − ∂D∂F·∂F/∂P)ᵀ λ = g is solved with lineax's GMRES on
    Jacobian–vector products of the SCF map: no Jacobian is ever materialised, so the cost is a
    few dozen second-order energy derivatives, independent of the number of SCF iterations, and
    the memory is that of one iteration. Both reverse mode (`jax.grad`) and forward mode
    (`jax.jvp`) work. If GMRES does not reach `rtol`/`atol` within `max_steps`, the gradient
    computation raises rather than returning an inexact gradient.

    Returns an `optimistix.ImplicitAdjoint` configured with `lineax.GMRES`.
    """
    return optx.ImplicitAdjoint(
        linear_solver=lx.GMRES(rtol=rtol, atol=atol, restart=restart, max_steps=max_steps)
    )


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
