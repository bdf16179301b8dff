"""Options, error measures and masked reductions of the losses."""

from __future__ import annotations

from typing import Literal, get_args

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._errors import InputError

Kind = Literal["mse", "mae", "huber"]
"""Error measure of the energy losses: squared error (Hartree²), absolute error (Hartree), Huber."""
KINDS: tuple[str, ...] = get_args(Kind)
"""Error measures of the energy losses: squared error (Hartree²), absolute error (Hartree), Huber."""
Reduction = Literal["mean", "sum"]
"""Reduction over molecules (or reactions): the weighted mean, or the weighted sum."""
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
"""How a loss reduces its per-molecule values over a batch (`reduction=`)."""
DEFAULT_HUBER_DELTA = 1.6e-3
"""Default Huber threshold δ, Hartree (≈ 1 kcal/mol)."""


def _check_option(name: str, value, allowed: tuple[str, ...]) -> None:
    """Membership of a string option in its declared values (a Python check: call it outside jit
    or with static options); a one-line [`nlxc.InputError`][] names the option and the values."""
    if value not in allowed:
        raise InputError(f"unknown {name} {value!r}; use one of {', '.join(map(repr, allowed))}")


def _check_error(kind: str, delta: float) -> None:
    """The options of [`errors`][nlxc.losses.errors]: `kind` in `KINDS`, a positive Huber `delta`."""
    _check_option("kind", kind, KINDS)
    if kind == "huber" and not delta > 0:
        raise InputError(f"the Huber delta must be positive, got {delta!r}")


def errors(residual: Float[Array, "*shape"], kind: Kind = "mse",
           delta: float = DEFAULT_HUBER_DELTA) -> Float[Array, "*shape"]:
    """Elementwise error measure of residuals (prediction − reference).

    - `"mse"`: r² (Hartree² for energies);
    - `"mae"`: |r| (Hartree);
    - `"huber"`: ½ r² for |r| ≤ δ, δ(|r| − ½δ) otherwise (Hartree²; P. J. Huber, Ann. Math.
      Statist. 35, 73 (1964), doi:10.1214/aoms/1177703732), quadratic near zero and linear
      for outliers.

    **Raises:** [`nlxc.InputError`][] for an unknown `kind` or a non-positive `delta` (with `"huber"`).
    """
    _check_error(kind, delta)
    if kind == "mse":
        return residual**2
    if kind == "mae":
        return jnp.abs(residual)
    a = jnp.abs(residual)
    return jnp.where(a <= delta, 0.5 * residual**2, delta * (a - 0.5 * delta))


def weighted_mean(values: Float[Array, "n *rest"], mask: Bool[Array, " n"], weight: Float[Array, " n"] | None = None,
                  reduction: Reduction = "mean") -> Float[Array, ""]:
    """Σ_k m_k w_k v_k / Σ_k m_k w_k (`"mean"`) or Σ_k m_k w_k v_k (`"sum"`).

    `mask` (bool) and `weight` (or `None` for 1) broadcast against `values` along its leading
    axis. Masked entries are selected out with `jnp.where`, so their values (even NaN) reach
    neither the result nor the gradient. An all-masked input gives 0.

    **Raises:** [`nlxc.InputError`][] for an unknown `reduction`.
    """
    _check_option("reduction", reduction, REDUCTIONS)
    values = jnp.asarray(values)
    mask = jnp.asarray(mask)

    def leading(x):  # (n,) -> (n, 1, ..., 1) to broadcast along the leading axis of values
        return jnp.reshape(x, x.shape + (1,) * (values.ndim - x.ndim))

    w = jnp.ones(values.shape, values.dtype) if weight is None else jnp.broadcast_to(
        leading(jnp.asarray(weight, values.dtype)), values.shape)
    w = jnp.where(leading(mask), w, 0.0)
    total = jnp.sum(w * jnp.where(leading(mask), values, 0.0))
    if reduction == "sum":
        return total
    norm = jnp.sum(w)
    return total / jnp.where(norm > 0, norm, 1.0)


def _masked(mask, x):
    """x where the batch entry is real, else 0 (broadcast over trailing axes)."""
    m = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(m, x, 0.0)


def _fill(mask, x):
    """x where the batch entry is real; filler rows get the last real entry's row (the one
    make_batches copies), so nonlinear functions of them stay finite whatever the filler holds."""
    last = mask.shape[0] - 1 - jnp.argmax(mask[::-1])
    m = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(m, x, x[last][None])
