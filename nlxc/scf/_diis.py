"""Pulay's DIIS: the extrapolation shared by the DIIS solvers, and DIIS on the fixed-point iterate."""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, PyTree, Scalar, Shaped

from ._base import AbstractSCFSolver, SCFProgress


def diis_coefficients(residuals: Float[Array, "history n"], valid: Bool[Array, " history"]) -> Float[Array, " history"]:
    """Pulay's coefficients c = argmin ‖Σᵢ cᵢ rᵢ‖² subject to Σᵢ cᵢ = 1 over the valid rows.

    The normal equations Bᵢⱼ = rᵢ·rⱼ are solved in Jacobi-scaled form, cᵢ = dᵢ xᵢ with
    dᵢ = 1/‖rᵢ‖ (relative to the largest dᵢ), [D B D + εI, d; dᵀ, 0] [x; μ] = [0; 1], with a
    Tikhonov term ε = 1e-12 on the unit diagonal: it keeps them regular (and their derivative
    finite, which unrolled differentiation needs) when the residuals become nearly collinear,
    and, being relative to each residual's own norm, it does not bias the extrapolation once
    the latest residuals are many orders of magnitude below the first ones (a term relative to
    the largest ‖rᵢ‖² would dominate the newest rows there and stall the tail of the
    convergence). Invalid rows get 0.
    """
    m = residuals.shape[0]
    b = residuals @ residuals.T
    norms2 = jnp.where(valid, jnp.diag(b), 1.0)
    inv = jnp.where(norms2 > 0, jax.lax.rsqrt(jnp.where(norms2 > 0, norms2, 1.0)), 1.0)
    inv = jnp.where(valid, inv, 0.0)
    d = inv / jnp.max(inv)  # in (0, 1] on the valid rows
    scaled = jnp.where(valid[:, None] & valid[None, :], b * inv[:, None] * inv[None, :], jnp.eye(m))
    a = jnp.zeros((m + 1, m + 1), b.dtype)
    a = a.at[:m, :m].set(scaled + 1e-12 * jnp.eye(m)).at[m, :m].set(d).at[:m, m].set(d)
    rhs = jnp.zeros(m + 1, b.dtype).at[m].set(1.0)
    coeffs = d * jnp.linalg.solve(a, rhs)[:m]
    return jnp.where(valid, coeffs, 0.0)


class _DIISState(eqx.Module):
    """The last `history_size` vectors and their errors (a ring buffer) and the progress."""

    values: Float[Array, " history *value"]
    errors: Float[Array, "history error"]
    progress: SCFProgress


class AbstractDIIS(AbstractSCFSolver):
    """Pulay's direct inversion in the iterative subspace, for the fixed point y = g(y).

    Each step evaluates g(yₙ) (the fixed-point function `fn`, with its auxiliary output), asks
    the subclass for the vector vₙ to extrapolate and its error vector eₙ
    ([`extrapoland`][nlxc.scf.AbstractDIIS.extrapoland]), keeps the last `history_size` pairs,
    extrapolates

        v* = Σᵢ cᵢ vᵢ,   c = argmin ‖Σᵢ cᵢ eᵢ‖²  subject to  Σᵢ cᵢ = 1

    (P. Pulay, Chem. Phys. Lett. 73, 393 (1980), doi:10.1016/0009-2614(80)80396-4), and lets
    the subclass turn v* into the next iterate ([`iterate`][nlxc.scf.AbstractDIIS.iterate]). The
    first `start` steps are plain steps (v* = vₙ) whose pairs are not kept: the history begins
    with step `start` (PySCF's `diis_start_cycle`). A non-finite extrapolation falls back to vₙ.
    On the converging step (`norm(g(y) − y) < atol + rtol·|g(y)|`) the next iterate is g(yₙ)
    itself: for the SCF an idempotent aufbau density matrix, whose energy is variational
    (quadratic error). A non-finite residual stops the solve with a failure result, so a NaN
    never escapes as a converged answer.

    Subclasses declare `history_size` and `start` (static) besides the fields of
    [`AbstractSCFSolver`][nlxc.scf.AbstractSCFSolver].
    """

    history_size: eqx.AbstractVar[int]
    start: eqx.AbstractVar[int]

    @abc.abstractmethod
    def extrapoland(
        self, y: PyTree, g: PyTree, aux: PyTree, args: PyTree
    ) -> tuple[Shaped[Array, " *value"], Float[Array, " error"]]:
        """The vector vₙ to extrapolate (any shape) and its error vector eₙ (flat), from the
        iterate `y`, `g = fn(y, args)[0]` and `fn`'s auxiliary output `aux`."""

    @abc.abstractmethod
    def iterate(self, y: PyTree, extrapolated: Shaped[Array, " *value"], args: PyTree) -> PyTree:
        """The next iterate from the extrapolated vector v* (same structure as `y`)."""

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        value, error = eqx.filter_eval_shape(self.extrapoland, y, f_struct, aux_struct, args)
        return _DIISState(
            jnp.zeros((self.history_size, *value.shape), value.dtype),
            jnp.zeros((self.history_size, *error.shape), error.dtype),
            SCFProgress.start(error.dtype, options),
        )

    def step(self, fn, y, args, options, state: _DIISState, tags):
        g, aux = fn(y, args)
        value, error_vector = self.extrapoland(y, g, aux, args)
        # this step's place in the history: steps before `start` are plain steps, whose pair sits
        # alone in slot 0 (coefficient 1, so v* = vₙ) until the first kept pair overwrites it
        index = jnp.maximum(state.progress.count - self.start, 0)
        slot = index % self.history_size
        values = state.values.at[slot].set(value)
        errors = state.errors.at[slot].set(error_vector)
        valid = jnp.arange(self.history_size) < jnp.minimum(index + 1, self.history_size)
        coeffs = diis_coefficients(errors, valid)
        extrapolated = jnp.tensordot(coeffs, values, axes=1)
        extrapolated = jnp.where(jnp.all(jnp.isfinite(extrapolated)), extrapolated, value)
        residual = jax.tree.map(jnp.subtract, g, y)
        error = self.relative_error(residual, g)
        converged = error < 1
        new_y = jax.tree.map(lambda a, b: jnp.where(converged, a, b), g, self.iterate(y, extrapolated, args))
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(r)) for r in jax.tree.leaves(residual)]))
        progress = state.progress.advance(error, finite)
        return new_y, _DIISState(values, errors, progress), aux


class DIIS(AbstractDIIS):
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
    optimistix's convention), and then returns g(y) (for the SCF an idempotent density matrix).
    A non-finite residual stops the solve with a failure result, so a NaN never escapes as a
    converged answer.

    This solver is generic: with any fixed-point function (not only the SCF map of
    [`nlxc.scf.solve`][]) it ignores `fn`'s auxiliary output and `args`.

    **Arguments:** `rtol`, `atol`, `norm` (default `optimistix.max_norm`), `history_size`
    (default 8), `damping` in [0, 1) (default 0), `level_shift` ≥ 0 (default 0), `start` (the
    plain steps before the history begins, default 0).
    """

    rtol: float = 0.0
    atol: float = 1e-8
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    history_size: int = eqx.field(static=True, default=8)
    damping: float = 0.0
    level_shift: float = 0.0
    patience: int = eqx.field(static=True, default=12)
    start: int = eqx.field(static=True, default=0)

    def extrapoland(self, y, g, aux, args):
        flat_y, _ = ravel_pytree(y)
        flat_g, _ = ravel_pytree(g)
        r = flat_g - flat_y
        return flat_g - self.damping * r, r

    def iterate(self, y, extrapolated, args):
        _, unravel = ravel_pytree(y)
        return unravel(extrapolated)
