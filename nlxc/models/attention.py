"""Attention from grid points to atom-centred tokens (Perceiver-style, linear in grid size)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ..xc import AbstractFunctional, LocalFeatures
from ._common import atom_mask_and_numbers, cosine_cutoff, element_embedding
from ._mlp import MLP
from .descriptors import (
    N_LOCAL_INPUTS,
    AbstractAtomNeighbourModel,
    AtomDensityProjection,
    lda_exchange_energy_density,
    local_inputs,
)
from .neighbours import AtomNeighbours

__all__ = ["AtomAttention", "GridAttention"]


class AtomAttention(AbstractAtomNeighbourModel):
    """Grid points attend to atom tokens: a nonlocal correction linear in the number of grid points.

    Each atom A is a token t_A = MLP([p_A, e_{Z_A}]) built from its density power spectrum p_A
    ([`AtomDensityProjection`][nlxc.models.AtomDensityProjection]) and element embedding. Each grid
    point r carries a query q(r) = MLP(x(r)) of its local inputs x = (u, w, ζ², v)
    ([`local_inputs`][nlxc.models.local_inputs]). With keys k_A = W_k t_A and values v_A = W_v t_A,
    logits l_A(r) = q(r)·k_A / √d − |r − R_A|² / ℓ² and the cosine cutoff f_c,

        a_A(r) = f_c(|r − R_A|) e^{l_A(r)} / (1 + Σ_B f_c(|r − R_B|) e^{l_B(r)}),   h(r) = Σ_A a_A(r) v_A,

    i.e. scaled dot-product attention (Vaswani et al., arXiv:1706.03762) over the atoms within
    `cutoff` plus a fixed null token (logit 0, value 0), with a distance bias; latent tokens as in
    Perceiver (Jaegle et al., arXiv:2103.03206). The null token and f_c make h(r) continuous as
    atoms cross the cutoff. Then

        E = ∫ e_x^LDA(n(r)) · g([q(r), h(r)]) d³r   (Hartree),

    with e_x^LDA the unpolarised Slater exchange energy density and g an MLP initialised near 0,
    so the model starts as a small correction to whatever baseline it is added to.

    Invariant to rotations, translations and atom permutations; size-consistent for fragments
    farther apart than the cutoffs. Padded atoms and grid points take no part.
    Cost O(ngrid · k · d), k ≤ `max_atoms` the atoms within the cutoff of a grid point.
    """

    projection: AtomDensityProjection
    embedding: Float[Array, "nelement dim"]
    token: MLP
    query: MLP
    key_proj: Float[Array, "d d"]
    value_proj: Float[Array, "d d"]
    head: MLP
    neighbours: AtomNeighbours | None
    length: float = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    max_atoms: int = eqx.field(static=True)

    def __init__(self, *, dim: int = 16, length: float = 2.0, cutoff: float = 6.0, embedding_dim: int = 8,
                 final_scale: float = 1e-2, projection: AtomDensityProjection | None = None,
                 max_atoms: int = 24, key: PRNGKeyArray):
        keys = jr.split(key, 6)
        self.projection = AtomDensityProjection() if projection is None else projection
        self.length, self.cutoff, self.neighbours, self.max_atoms = length, cutoff, None, max_atoms
        self.embedding = element_embedding(keys[0], embedding_dim)
        self.token = MLP(self.projection.n_invariants + embedding_dim, out_features=dim, width=32,
                         final_scale=1.0, key=keys[1])
        self.query = MLP(N_LOCAL_INPUTS, out_features=dim, width=32, final_scale=1.0, key=keys[2])
        scale = 1.0 / math.sqrt(dim)
        self.key_proj = scale * jr.normal(keys[3], (dim, dim), dtype=jnp.float64)
        self.value_proj = scale * jr.normal(keys[4], (dim, dim), dtype=jnp.float64)
        self.head = MLP(2 * dim, width=32, final_scale=final_scale, key=keys[5])

    @property
    def neighbour_cutoff(self) -> float:
        return max(self.cutoff, self.projection.cutoff)

    def __call__(self, density, density_matrix, system):
        features = LocalFeatures.from_density(density)
        mask, z = atom_mask_and_numbers(system)
        nb = self.atom_neighbours(system)
        c = self.projection.coefficients(features.n, system.grid_weights, system.grid_coords,
                                         system.atom_coords, nb)
        tokens = self.token(jnp.concatenate([self.projection.power_spectrum(c), self.embedding[z]], axis=1).T)
        keys = (self.key_proj @ tokens).T[nb.index]  # (ngrid, k, d)
        values = (self.value_proj @ tokens).T[nb.index]  # (ngrid, k, d)
        q = self.query(local_inputs(features))  # (d, ngrid)
        d2 = jnp.sum((system.grid_coords[:, None, :] - system.atom_coords[nb.index]) ** 2, axis=-1)
        logits = jnp.einsum("dg,gkd->gk", q, keys) / math.sqrt(q.shape[0]) - d2 / self.length**2
        envelope = jnp.where(nb.mask, cosine_cutoff(jnp.sqrt(d2 + 1e-24), self.cutoff), 0.0)
        top = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.where(nb.mask, logits, -jnp.inf), axis=1), 0.0))
        scores = envelope * jnp.exp(jnp.where(nb.mask, logits - top[:, None], 0.0))
        attention = scores / (jnp.exp(-top) + jnp.sum(scores, axis=1))[:, None]
        h = jnp.einsum("gk,gkd->dg", attention, values)  # (d, ngrid)
        g = self.head(jnp.concatenate([q, h], axis=0))
        e = lda_exchange_energy_density(features.n, features.mask) * g
        return jnp.sum(system.grid_weights * e)


class GridAttention(AbstractFunctional):
    """Full attention between all grid points, in chunks: for small systems (cost O(ngrid²)).

    Every grid point r attends to every grid point r' with a density- and quadrature-weighted
    softmax, i.e. a learned, normalised integral operator:

        l(r, r') = q(r)·k(r') / √d − |r − r'|² / ℓ²,
        h(r) = Σ_g' w⁺_g' n(r_g') e^{l(r, r_g')} v(r_g') / (1 + Σ_g' w⁺_g' n(r_g') e^{l(r, r_g')}),

    with q, k, v = MLPs of the local inputs x = (u, w, ζ², v) ([`local_inputs`][nlxc.models.local_inputs])
    (scaled dot-product attention, Vaswani et al., arXiv:1706.03762; the "1 +" is a null token that
    keeps h bounded and continuous where the density vanishes; w⁺ = max(w, 0), because PySCF's
    Becke grids contain some negative quadrature weights, which could make the denominator
    vanish). Then
    E = ∫ e_x^LDA(n) g([x, h]) d³r with g initialised near zero.

    Queries are processed `chunk` at a time (`jax.lax.map`, rematerialised in the backward
    pass), so memory is O(chunk · ngrid) while time is O(ngrid² · d): use it on small molecules,
    where it is the reference the linear-cost models approximate. Invariant to rotations,
    translations and atom permutations; size-consistent up to e^{−R²/ℓ²} for fragments R apart
    (machine precision at R = 40 Bohr). Padded grid points (weight 0) take no part.
    """

    query: MLP
    key_mlp: MLP
    value: MLP
    head: MLP
    length: float = eqx.field(static=True)
    chunk: int = eqx.field(static=True)

    def __init__(self, *, dim: int = 8, length: float = 2.0, chunk: int = 512, final_scale: float = 1e-2,
                 key: PRNGKeyArray):
        keys = jr.split(key, 4)
        self.length, self.chunk = length, chunk
        self.query = MLP(N_LOCAL_INPUTS, out_features=dim, width=16, final_scale=1.0, key=keys[0])
        self.key_mlp = MLP(N_LOCAL_INPUTS, out_features=dim, width=16, final_scale=1.0, key=keys[1])
        self.value = MLP(N_LOCAL_INPUTS, out_features=dim, width=16, final_scale=1.0, key=keys[2])
        self.head = MLP(N_LOCAL_INPUTS + dim, width=16, final_scale=final_scale, key=keys[3])

    def __call__(self, density, density_matrix, system):
        features = LocalFeatures.from_density(density)
        x = local_inputs(features)
        coords = system.grid_coords
        ngrid = coords.shape[0]
        q, k, v = self.query(x), self.key_mlp(x), self.value(x)  # (d, ngrid)
        # electrons per grid point, 0 for padding; PySCF's Becke grids have some negative weights
        # (120 of 2322 points for H2O/6-31G at grid level 0), which would let the softmax
        # denominator cross zero, so they take no part in the attention
        mass = jnp.maximum(system.grid_weights, 0.0) * features.n
        scale = 1.0 / math.sqrt(q.shape[0])

        @jax.checkpoint
        def block(inputs):
            qi, ri = inputs  # (d,), (3,)
            logits = scale * (qi @ k) - jnp.sum((coords - ri) ** 2, axis=-1) / self.length**2
            top = jax.lax.stop_gradient(jnp.maximum(jnp.max(jnp.where(mass > 0, logits, -jnp.inf)), 0.0))
            scores = mass * jnp.exp(jnp.where(mass > 0, logits - top, 0.0))
            return (v @ scores) / (jnp.exp(-top) + jnp.sum(scores))

        h = jax.lax.map(block, (q.T, coords), batch_size=min(self.chunk, ngrid)).T  # (d, ngrid)
        g = self.head(jnp.concatenate([x, h], axis=0))
        e = lda_exchange_energy_density(features.n, features.mask) * g
        return jnp.sum(system.grid_weights * e)
