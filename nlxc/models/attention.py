"""Attention from grid points to atom-centred tokens (Perceiver-style, linear in grid size)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ..xc._base import AbstractFunctional
from ..xc.features import LocalFeatures
from ._mlp import MLP
from .atomic import MAX_ATOMIC_NUMBER, _atom_mask_and_numbers
from .descriptors import N_LOCAL_INPUTS, AtomDensityProjection, lda_exchange_energy_density, local_inputs

__all__ = ["AtomAttention"]


class AtomAttention(AbstractFunctional):
    """Grid points attend to atom tokens: a nonlocal correction linear in the number of grid points.

    Each atom A is a token t_A = MLP([p_A, e_{Z_A}]) built from its density power spectrum p_A
    ([`AtomDensityProjection`][nlxc.models.AtomDensityProjection]) and element embedding. Each grid
    point r carries a query q(r) = MLP(x(r)) of its local inputs x = (u, w, ζ², v)
    ([`local_inputs`][nlxc.models.local_inputs]). With keys k_A = W_k t_A and values v_A = W_v t_A,

        a_A(r) = softmax_A( q(r)·k_A / √d − |r − R_A|² / ℓ² ),   h(r) = Σ_A a_A(r) v_A,

    (scaled dot-product attention, Vaswani et al., arXiv:1706.03762, with a distance bias that
    keeps attention local; latent tokens as in Perceiver, Jaegle et al., arXiv:2103.03206) and

        E = ∫ e_x^LDA(n(r)) · g([q(r), h(r)]) d³r   (Hartree),

    with e_x^LDA the unpolarised Slater exchange energy density and g an MLP initialised near 0,
    so the model starts as a small correction to whatever baseline it is added to.

    Invariant to rotations, translations and atom permutations. Size-consistent up to
    exp(−R²/ℓ²) for fragments a distance R apart (and beyond the projection cutoff). Padded
    atoms are excluded from the softmax; padded grid points have weight 0.
    Cost O(ngrid · natom · d).
    """

    projection: AtomDensityProjection
    embedding: Float[Array, "nelement dim"]
    token: MLP
    query: MLP
    key_proj: Float[Array, "d d"]
    value_proj: Float[Array, "d d"]
    head: MLP
    length: float = eqx.field(static=True)

    def __init__(self, *, dim: int = 16, length: float = 2.0, embedding_dim: int = 8,
                 final_scale: float = 1e-2, projection: AtomDensityProjection | None = None,
                 key: PRNGKeyArray):
        keys = jr.split(key, 6)
        self.projection = AtomDensityProjection() if projection is None else projection
        self.length = length
        self.embedding = 0.1 * jr.normal(keys[0], (MAX_ATOMIC_NUMBER + 1, embedding_dim), dtype=jnp.float64)
        self.token = MLP(self.projection.n_invariants + embedding_dim, out_features=dim, width=32,
                         final_scale=1.0, key=keys[1])
        self.query = MLP(N_LOCAL_INPUTS, out_features=dim, width=32, final_scale=1.0, key=keys[2])
        scale = 1.0 / math.sqrt(dim)
        self.key_proj = scale * jr.normal(keys[3], (dim, dim), dtype=jnp.float64)
        self.value_proj = scale * jr.normal(keys[4], (dim, dim), dtype=jnp.float64)
        self.head = MLP(2 * dim, width=32, final_scale=final_scale, key=keys[5])

    def __call__(self, density, density_matrix, system):
        features = LocalFeatures.from_density(density)
        mask, z = _atom_mask_and_numbers(system)
        c = self.projection.coefficients(features.n, system.grid_weights, system.grid_coords, system.atom_coords)
        tokens = self.token(jnp.concatenate([self.projection.power_spectrum(c), self.embedding[z]], axis=1).T)
        keys = self.key_proj @ tokens  # (d, natom)
        values = self.value_proj @ tokens  # (d, natom)
        q = self.query(local_inputs(features))  # (d, ngrid)
        d2 = jnp.sum((system.grid_coords[:, None, :] - system.atom_coords[None, :, :]) ** 2, axis=-1)
        logits = (q.T @ keys) / math.sqrt(q.shape[0]) - d2 / self.length**2  # (ngrid, natom)
        logits = jnp.where(mask[None, :], logits, -jnp.inf)
        attention = jax.nn.softmax(logits, axis=-1)
        h = values @ attention.T  # (d, ngrid)
        g = self.head(jnp.concatenate([q, h], axis=0))
        e = lda_exchange_energy_density(features.n, features.mask) * g
        return jnp.sum(system.grid_weights * e)
