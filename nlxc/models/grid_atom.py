"""Two-level message passing: grid → atoms → equivariant interaction → grid (Skala / EG-XC style)."""

from __future__ import annotations

import math

import e3nn_jax as e3nn
import e3nn_jax.equinox as e3eqx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ..xc import LocalFeatures
from ._common import atom_interaction, atom_mask_and_numbers, element_embedding, scan_slots, slot_basis
from ._mlp import MLP
from .descriptors import N_LOCAL_INPUTS, AbstractAtomNeighbourModel, lda_exchange_energy_density, local_inputs
from .neighbours import AtomNeighbours

__all__ = ["GridAtomMessagePassing"]


class GridAtomMessagePassing(AbstractAtomNeighbourModel):
    """Grid features pooled onto atoms, mixed equivariantly between atoms, broadcast back.

    1. Every grid point r gets channels h_c(r) = MLP(x(r)) of its local inputs
       x = (u, w, ζ², v) ([`local_inputs`][nlxc.models.local_inputs]).
    2. **Grid → atoms**: a_{A,cnlm} = Σ_g w_g n(r_g) h_c(r_g) R_n(|r_g − R_A|) Y_lm(r̂_gA), with
       Gaussian radial functions R_n times a cosine cutoff and real spherical harmonics Y_lm
       (l ≤ 2): equivariant atom features (irreps c·n_radial × (0e + 1o + 2e)), normalised per
       irrep and mixed, with the element embedding added to the scalars, by an e3nn linear
       layer into hidden irreps.
    3. **Atoms ↔ atoms**: one equivariant interaction m_A = Σ_{B≠A} φ(r_AB) W(h_B ⊗ Y(r̂_AB)),
       h'_A = h_A + W'(m_A) (tensor products from e3nn-jax, arXiv:2207.09453).
    4. **Atoms → grid**: invariant features b_{n,k,l}(r) = Σ_A R_n(|r − R_A|) Σ_m h'_{A,klm}
       Y_lm(r̂_A) (an equivariant feature contracted with the same-l harmonic is a scalar).
    5. E = ∫ e_x^LDA(n) · g([x(r), b(r)]) · γ(n) d³r, with an MLP g initialised near zero and the
       gate γ(n) = 1/(1 + (n/n_gate)²) that switches the correction off in dense (core) regions.

    The two-level design follows Skala (Luise et al., arXiv:2506.14665) and EG-XC (Gao, Eberhard,
    Günnemann, arXiv:2410.07972): nonlocal information travels through a few atom-centred nodes, so
    the cost is O(ngrid · k) (grid ↔ the k ≤ `max_atoms` atoms within `cutoff` of each point) +
    O(natom²) (atoms), linear in the grid size. Invariant to rotations, translations and atom
    permutations; size-consistent
    for fragments farther apart than the cutoffs.
    """

    local: MLP
    embedding: Float[Array, "nelement dim"]
    mix: e3eqx.Linear
    message: e3eqx.Linear
    update: e3eqx.Linear
    radial_weights: Float[Array, " nbasis"]
    head: MLP
    widths: tuple[float, ...] = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    hidden_irreps: str = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    n_gate: float = eqx.field(static=True)
    neighbours: AtomNeighbours | None
    max_atoms: int = eqx.field(static=True)
    lmax: int = eqx.field(static=True, default=2)

    def __init__(self, *, channels: int = 4, widths=(0.5, 1.0, 2.0), hidden_irreps: str = "8x0e + 4x1o + 4x2e",
                 cutoff: float = 6.0, n_gate: float = 1.0, embedding_dim: int = 8, n_radial_basis: int = 8,
                 final_scale: float = 1e-2, max_atoms: int = 24, key: PRNGKeyArray):
        keys = jr.split(key, 7)
        self.neighbours, self.max_atoms = None, max_atoms
        self.widths, self.channels, self.hidden_irreps = tuple(widths), channels, hidden_irreps
        self.cutoff, self.n_gate, self.lmax = cutoff, n_gate, 2
        nrad = len(self.widths)
        pooled = e3nn.Irreps([(channels * nrad, (l, (-1) ** l)) for l in range(self.lmax + 1)])
        hidden = e3nn.Irreps(hidden_irreps)
        product = e3nn.tensor_product(hidden, e3nn.Irreps.spherical_harmonics(self.lmax))
        self.local = MLP(N_LOCAL_INPUTS, out_features=channels, width=16, final_scale=1.0, key=keys[0])
        self.embedding = element_embedding(keys[1], embedding_dim)
        self.mix = e3eqx.Linear(irreps_in=pooled + e3nn.Irreps(f"{embedding_dim}x0e"), irreps_out=hidden,
                                input_dtype=jnp.float64, key=keys[2])
        self.message = e3eqx.Linear(irreps_in=product, irreps_out=hidden, input_dtype=jnp.float64, key=keys[3])
        self.update = e3eqx.Linear(irreps_in=hidden, irreps_out=hidden, input_dtype=jnp.float64, key=keys[4])
        self.radial_weights = jr.normal(keys[5], (n_radial_basis,), dtype=jnp.float64) / math.sqrt(n_radial_basis)
        n_broadcast = nrad * sum(mul for mul, _ in hidden)
        self.head = MLP(N_LOCAL_INPUTS + n_broadcast, width=32, final_scale=final_scale, key=keys[6])

    @property
    def neighbour_cutoff(self) -> float:
        return self.cutoff

    def __call__(self, density, density_matrix, system):
        features = LocalFeatures.from_density(density)
        x = local_inputs(features)  # (4, ngrid)
        h = self.local(x)  # (c, ngrid)
        mask, z = atom_mask_and_numbers(system)
        natom = mask.shape[0]

        nb = self.atom_neighbours(system)
        coords, atom_coords, nrad = system.grid_coords, system.atom_coords, len(self.widths)

        # grid → atoms, one neighbour slot at a time
        wnh = (system.grid_weights * features.n)[None, :] * h  # (c, ngrid)

        def pool(a, index, slot_mask):
            radial, sh = slot_basis(coords, atom_coords, index, slot_mask, self.widths, self.cutoff, self.lmax)
            return a + jax.ops.segment_sum(jnp.einsum("cg,gn,gm->gcnm", wnh, radial, sh), index,
                                           num_segments=natom)

        a = scan_slots(pool, jnp.zeros((natom, self.channels, nrad, (self.lmax + 1) ** 2)), nb)
        blocks = [a[..., l * l:(l + 1) ** 2].reshape(natom, -1) for l in range(self.lmax + 1)]
        irreps = e3nn.Irreps([(self.channels * nrad, (l, (-1) ** l)) for l in range(self.lmax + 1)])
        pooled = e3nn.IrrepsArray(irreps, jnp.concatenate(blocks, axis=-1))
        pooled = pooled / (1.0 + e3nn.norm(pooled, per_irrep=True).array.mean(-1, keepdims=True))
        pooled = e3nn.concatenate([pooled, e3nn.IrrepsArray(f"{self.embedding.shape[1]}x0e", self.embedding[z])], axis=-1)
        ha = jax.vmap(self.mix)(pooled)

        # atoms ↔ atoms
        ha = atom_interaction(ha, atom_coords, mask, self.radial_weights, self.cutoff, self.lmax,
                              self.message, self.update)
        ha = e3nn.IrrepsArray(ha.irreps, jnp.where(mask[:, None], ha.array, 0.0))
        chunks = [jnp.zeros((natom, mul, 2 * ir.l + 1)) if chunk is None else chunk
                  for (mul, ir), chunk in zip(ha.irreps, ha.chunks)]
        n_broadcast = sum(chunk.shape[1] for chunk in chunks)

        # atoms → grid: contract each (A, k, l) feature with Y_l(r̂_A), weight by R_n, sum over atoms
        def broadcast(b, index, slot_mask):
            radial, sh = slot_basis(coords, atom_coords, index, slot_mask, self.widths, self.cutoff, self.lmax)
            s = jnp.concatenate([jnp.einsum("gkm,gm->gk", chunk[index], sh[:, l * l:(l + 1) ** 2])
                                 for (_, ir), chunk in zip(ha.irreps, chunks) for l in (ir.l,)], axis=1)
            return b + jnp.einsum("gn,gk->nkg", radial, s)

        b = scan_slots(broadcast, jnp.zeros((nrad, n_broadcast, coords.shape[0])), nb)
        splits = np.cumsum([chunk.shape[1] for chunk in chunks])[:-1]
        b = jnp.concatenate([x.reshape(-1, coords.shape[0]) for x in jnp.split(b, splits, axis=1)])  # (nrad · Σk, ngrid)
        g = self.head(jnp.concatenate([x, jnp.arcsinh(b)], axis=0))
        gate = 1.0 / (1.0 + (features.n / self.n_gate) ** 2)
        e = lda_exchange_energy_density(features.n, features.mask) * g * gate
        return jnp.sum(system.grid_weights * e)
