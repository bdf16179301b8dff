"""Atom-centred nonlocal corrections: an invariant descriptor network (DeePKS/NeuralXC style)
and an equivariant message-passing network over atoms (e3nn-jax)."""

from __future__ import annotations

import math

import e3nn_jax as e3nn
import e3nn_jax.equinox as e3eqx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._common import atom_interaction, atom_mask_and_numbers, element_embedding
from ._mlp import MLP
from .descriptors import AbstractPeriodicAtomNeighbourModel, AtomDensityProjection
from .neighbours import AtomNeighbours

__all__ = ["AtomCentredCorrection", "EquivariantCorrection"]


def _total_density(density):
    return density.rho[0] + density.rho[1]


class AtomCentredCorrection(AbstractPeriodicAtomNeighbourModel):
    """E = Σ_A ε_θ(p_A, e_{Z_A}) (Hartree): an energy correction from atom-centred density descriptors.

    p_A is the rotation-invariant power spectrum of the density projected on atom A
    ([`AtomDensityProjection`][nlxc.models.AtomDensityProjection]), e_Z a learnable embedding of
    the element, and ε_θ an MLP. This is the DeePKS/NeuralXC construction (Chen et al.,
    doi:10.1021/acs.jctc.0c00872; Dick & Fernandez-Serra, doi:10.1038/s41467-020-17265-7),
    applied to the total density on the molecular grid rather than to projected density
    matrices. Its Fock contribution (by autodiff) is a nonlocal potential.

    Invariant to rotations, translations and atom permutations; size-consistent for fragments
    farther apart than the projection cutoff (6 Bohr by default) plus their density's extent.
    Padded atoms (charge 0) contribute nothing. Cost O(ngrid · k) per evaluation, k the number
    of atoms within the cutoff of a grid point (at most `max_atoms`, default 24; more raises).

    In a crystal ([`nlxc.pbc.solve`][], prepared by
    [`prepare_periodic`][nlxc.models.AbstractPeriodicAtomNeighbourModel.prepare_periodic]) p_A
    projects the periodic density on the cell's grid onto every image R_A + T, and E is the
    energy per cell, Σ over the atoms of the cell; k then counts atom images.
    """

    projection: AtomDensityProjection
    embedding: Float[Array, "nelement dim"]
    network: MLP
    neighbours: AtomNeighbours | None
    max_atoms: int = eqx.field(static=True)

    def __init__(self, *, embedding_dim: int = 8, width: int = 32, depth: int = 2,
                 projection: AtomDensityProjection | None = None, final_scale: float = 1e-3,
                 max_atoms: int = 24, key: PRNGKeyArray):
        k1, k2 = jr.split(key)
        self.neighbours, self.max_atoms = None, max_atoms
        self.projection = AtomDensityProjection() if projection is None else projection
        self.embedding = element_embedding(k1, embedding_dim)
        self.network = MLP(self.projection.n_invariants + embedding_dim, width=width, depth=depth,
                           final_scale=final_scale, key=k2)

    def atomic_energies(self, density, density_matrix, system) -> Float[Array, " natom"]:
        """ε_A per atom (Hartree), zero for padded atoms."""
        mask, z = atom_mask_and_numbers(system)
        c = self.projection.coefficients(_total_density(density), system.grid_weights, system.grid_coords,
                                         system.atom_coords, self.atom_neighbours(system))
        x = jnp.concatenate([self.projection.power_spectrum(c), self.embedding[z]], axis=1)
        return jnp.where(mask, self.network(x.T), 0.0)

    @property
    def neighbour_cutoff(self) -> float:
        return self.projection.cutoff

    def __call__(self, density, density_matrix, system):
        return jnp.sum(self.atomic_energies(density, density_matrix, system))


class EquivariantCorrection(AbstractPeriodicAtomNeighbourModel):
    """An equivariant atom-centred density-descriptor network (e3nn-jax) giving an energy correction.

    Each atom starts from its density projection c_A (irreps n_radial × (0e + 1o + … + lmax)),
    mixed by an equivariant linear layer into hidden irreps h_A. One interaction layer sends
    messages between atoms within `cutoff`:

        m_A = Σ_{B≠A} φ(r_AB) · W(h_B ⊗ Y(r̂_AB)),   h'_A = h_A + W'(m_A),

    with φ a learnable combination of Gaussian radial functions times a cosine cutoff, Y the
    real spherical harmonics and ⊗ the Clebsch–Gordan tensor product (Thomas et al.,
    arXiv:1802.08219; Geiger & Smidt, arXiv:2207.09453). The scalars (0e) of h'_A together with
    the element embedding go through an MLP to ε_A, and E = Σ_A ε_A (Hartree).

    Equivariant features, invariant energy: rotations, translations and atom permutations
    leave E unchanged; size-consistent for fragments farther apart than `cutoff` and the
    projection's cutoff. Cost O(ngrid · k) for the projection (k atoms within the cutoff of a
    grid point, at most `max_atoms`) plus O(natom²) messages.

    In a crystal (prepared by
    [`prepare_periodic`][nlxc.models.AbstractPeriodicAtomNeighbourModel.prepare_periodic]) the
    projections run over the atom images and the messages over B and its images R_B + T within
    `cutoff` (the neighbour list's translations): O(natom² · nimage) messages; E is per cell.
    """

    projection: AtomDensityProjection
    embedding: Float[Array, "nelement dim"]
    mix: e3eqx.Linear
    message: e3eqx.Linear
    update: e3eqx.Linear
    radial_weights: Float[Array, " nbasis"]
    readout: MLP
    neighbours: AtomNeighbours | None
    hidden_irreps: str = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    max_atoms: int = eqx.field(static=True)

    def __init__(self, *, hidden_irreps: str = "8x0e + 4x1o + 4x2e", cutoff: float = 6.0,
                 embedding_dim: int = 8, n_radial_basis: int = 8, final_scale: float = 1e-3,
                 projection: AtomDensityProjection | None = None, max_atoms: int = 24, key: PRNGKeyArray):
        keys = jr.split(key, 6)
        self.neighbours, self.max_atoms = None, max_atoms
        self.projection = AtomDensityProjection() if projection is None else projection
        self.hidden_irreps = hidden_irreps
        self.cutoff = cutoff
        hidden = e3nn.Irreps(hidden_irreps)
        sh = e3nn.Irreps.spherical_harmonics(self.projection.lmax)
        product = e3nn.tensor_product(hidden, sh)
        self.embedding = element_embedding(keys[0], embedding_dim)
        self.mix = e3eqx.Linear(irreps_in=self.projection.irreps, irreps_out=hidden,
                                input_dtype=jnp.float64, key=keys[1])
        self.message = e3eqx.Linear(irreps_in=product, irreps_out=hidden, input_dtype=jnp.float64, key=keys[2])
        self.update = e3eqx.Linear(irreps_in=hidden, irreps_out=hidden, input_dtype=jnp.float64, key=keys[3])
        self.radial_weights = jr.normal(keys[4], (n_radial_basis,), dtype=jnp.float64) / math.sqrt(n_radial_basis)
        n_scalars = hidden.filter(keep=["0e"]).dim
        self.readout = MLP(n_scalars + embedding_dim, width=32, final_scale=final_scale, key=keys[5])

    def atomic_energies(self, density, density_matrix, system) -> Float[Array, " natom"]:
        """ε_A per atom (Hartree), zero for padded atoms."""
        mask, z = atom_mask_and_numbers(system)
        neighbours = self.atom_neighbours(system)
        c = self.projection.coefficients(_total_density(density), system.grid_weights, system.grid_coords,
                                         system.atom_coords, neighbours)
        # compress the scale of the coefficients (core densities are large) without breaking
        # equivariance: divide each atom's (n, l) block by (1 + its norm)
        c = e3nn.IrrepsArray(c.irreps, c.array) / (1.0 + e3nn.norm(c, per_irrep=True).array.mean(-1, keepdims=True))
        h = jax.vmap(self.mix)(c)  # (natom, hidden)
        h = atom_interaction(h, system.atom_coords, mask, self.radial_weights, self.cutoff,
                             self.projection.lmax, self.message, self.update, neighbours.translations)
        scalars = h.filter(keep=["0e"]).array
        x = jnp.concatenate([scalars, self.embedding[z]], axis=1)
        return jnp.where(mask, self.readout(x.T), 0.0)

    @property
    def neighbour_cutoff(self) -> float:
        return self.projection.cutoff

    @property
    def pair_cutoff(self) -> float:
        return self.cutoff

    def __call__(self, density, density_matrix, system):
        return jnp.sum(self.atomic_energies(density, density_matrix, system))
