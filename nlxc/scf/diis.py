"""Pulay's DIIS as an optimistix fixed-point solver."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, PyTree, Scalar

from ._base import AbstractSCFSolver, SCFProgress


class _DIISState(eqx.Module):
    outputs: Float[Array, "history n"]
    residuals: Float[Array, "history n"]
    progress: SCFProgress


def diis_coefficients(residuals: Float[Array, "history n"], valid: Bool[Array, " history"]) -> Float[Array, " history"]:
    """Pulay's coefficients c = argmin ‖Σᵢ cᵢ rᵢ‖² subject to Σᵢ cᵢ = 1 over the valid rows.

    The bordered normal equations are scaled by the largest ‖rᵢ‖² and carry a 1e-12 Tikhonov
    term, which keeps them regular (and their derivative finite, which unrolled
    differentiation needs) when the residuals become nearly collinear. Invalid rows get 0.
    """
    m = residuals.shape[0]
    b = residuals @ residuals.T
    scale = jnp.max(jnp.where(valid, jnp.diag(b), 0.0))
    scale = jnp.where(scale > 0, scale, 1.0)
    b = jnp.where(valid[:, None] & valid[None, :], b / scale, jnp.eye(m))
    border = valid.astype(b.dtype)
    a = jnp.zeros((m + 1, m + 1), b.dtype)
    a = a.at[:m, :m].set(b).at[m, :m].set(border).at[:m, m].set(border)
    rhs = jnp.zeros(m + 1, b.dtype).at[m].set(1.0)
    a = a.at[:m, :m].add(1e-12 * jnp.eye(m))
    coeffs = jnp.linalg.solve(a, rhs)[:m]
    return jnp.where(valid, coeffs, 0.0)


class DIIS(AbstractSCFSolver):
    """Pulay's direct inversion in the iterative subspace for a fixed point y = g(y).

    Keeps the last `history_size` pairs (g(yᵢ), rᵢ = g(yᵢ) − yᵢ) and extrapolates

        y_{n+1} = Σᵢ cᵢ [g(yᵢ) − d·rᵢ],   c = argmin ‖Σᵢ cᵢ rᵢ‖²  subject to  Σᵢ cᵢ = 1,

    where d is the `damping` (d = 0: pure DIIS; with a history of one this is damped fixed-point
    iteration). On the Kohn–Sham fixed point P = D(F(P)) this is Pulay's DIIS on the density
    matrix (Pulay, Chem. Phys. Lett. 73, 393 (1980), doi:10.1016/0009-2614(80)80396-4; also known
    as Anderson acceleration, Anderson, J. ACM 12, 547 (1965), doi:10.1145/321296.321305).

    `level_shift` (Hartree) is read by [`nlxc.scf.solve`][]: it shifts the virtual orbitals up
    when the density is built from the Fock matrix, which damps occupied–virtual mixing without
    moving the fixed point. Other fixed-point maps ignore it.

    Convergence: the solve stops when `norm(g(y) − y) < atol + rtol·|g(y)|` (elementwise scale,
    optimistix's convention), and then returns g(y) (for the SCF an idempotent density matrix). A non-finite residual stops the solve with a failure result, so a
    NaN never escapes as a converged answer.

    **Arguments:** `rtol`, `atol`, `norm` (default `optimistix.max_norm`), `history_size`
    (default 8), `damping` in [0, 1) (default 0), `level_shift` ≥ 0 (default 0).
    """

    rtol: float = 0.0
    atol: float = 1e-8
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    history_size: int = eqx.field(static=True, default=8)
    damping: float = 0.0
    level_shift: float = 0.0
    patience: int = eqx.field(static=True, default=12)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        flat, _ = ravel_pytree(y)
        zeros = jnp.zeros((self.history_size, flat.size), flat.dtype)
        return _DIISState(zeros, zeros, SCFProgress.start(flat.dtype, options))

    def step(self, fn, y, args, options, state, tags):
        g, aux = fn(y, args)
        flat_y, unravel = ravel_pytree(y)
        flat_g, _ = ravel_pytree(g)
        r = flat_g - flat_y
        count = state.progress.count
        slot = count % self.history_size
        outputs = state.outputs.at[slot].set(flat_g)
        residuals = state.residuals.at[slot].set(r)
        n_valid = jnp.minimum(count + 1, self.history_size)
        valid = jnp.arange(self.history_size) < n_valid

        coeffs = diis_coefficients(residuals, valid)
        extrapolated = coeffs @ (outputs - self.damping * residuals)
        fallback = flat_g - self.damping * r
        ok = jnp.all(jnp.isfinite(extrapolated))
        new_flat = jnp.where(ok, extrapolated, fallback)

        error = self.relative_error(unravel(r), unravel(flat_g))
        # On the converging step return g(y) itself rather than an extrapolation: for the SCF it
        # is an idempotent aufbau density matrix, whose energy is variational (quadratic error).
        new_flat = jnp.where(error < 1, flat_g, new_flat)
        progress = state.progress.advance(error, jnp.all(jnp.isfinite(r)))
        return unravel(new_flat), _DIISState(outputs, residuals, progress), aux
