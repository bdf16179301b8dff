"""Multilayer perceptrons applied at every grid point (or every atom)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ..xc import PointwiseNetwork


def _scale_last_layer(mlp: eqx.nn.MLP, scale: float) -> eqx.nn.MLP:
    last = mlp.layers[-1]
    return eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                       (last.weight * scale, last.bias * scale))


class MLP(PointwiseNetwork):
    """A multilayer perceptron applied independently to every column of its input.

    `MLP(in_features, key=key)(x)` maps `x` of shape `(in_features, npoint)` to `(npoint,)`
    (or `(out_features, npoint)` when `out_features > 1`). The last layer's weights and bias are
    multiplied by `final_scale` at initialisation, so a freshly initialised network outputs
    values of order `final_scale`: a model built on it starts near its baseline.

    **Arguments:** `in_features`, `width` (hidden units, default 16), `depth` (hidden layers,
    default 2), `out_features` (default 1), `activation` (default `jax.nn.silu`, smooth, so
    the SCF's second derivatives exist), `final_scale` (default 1e-2), `key` (a PRNG key).
    Cost: O(npoint · width²) per call.
    """

    mlp: eqx.nn.MLP
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        *,
        width: int = 16,
        depth: int = 2,
        out_features: int = 1,
        activation: Callable = jax.nn.silu,
        final_scale: float = 1e-2,
        key: PRNGKeyArray,
    ):
        mlp = eqx.nn.MLP(in_features, out_features, width, depth, activation=activation,
                         key=key, dtype=jnp.float64)
        self.mlp = _scale_last_layer(mlp, final_scale)
        self.in_features = in_features
        self.out_features = out_features

    def __call__(self, features: Float[Array, "nfeat npoint"]) -> Float[Array, "*nout npoint"]:
        out = jax.vmap(self.mlp, in_axes=1, out_axes=1)(features)
        return out[0] if self.out_features == 1 else out


def split(key: PRNGKeyArray, n: int):
    """`jax.random.split` as a tuple."""
    return tuple(jr.split(key, n))
