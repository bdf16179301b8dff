"""Graph networks over the molecular grid (jraph): a fine grid-point graph and a coarse-grained one."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jraph
from jaxtyping import Array, Float, PRNGKeyArray

from ..xc import LocalFeatures
from ._common import atom_mask_and_numbers, cosine_cutoff, element_embedding, scan_slots
from ._geometry import AbstractGeometryModel, precomputed_entry
from ._mlp import MLP
from .descriptors import N_LOCAL_INPUTS, AbstractAtomNeighbourModel, lda_exchange_energy_density, local_inputs
from .neighbours import AtomNeighbours, GridNeighbours, grid_neighbours, grid_neighbours_key, grid_neighbours_on_host

__all__ = ["CoarseGraphNetwork", "GridGraphNetwork"]


def _radial_features(r, cutoff, n):
    """n Gaussians of width cutoff/n centred on [0, cutoff], `(..., n)` (dimensionless)."""
    centres = jnp.linspace(0.0, cutoff, n)
    return jnp.exp(-(((r[..., None] - centres) * n / cutoff) ** 2))


def _message_passing(nodes, edge_features, envelope, senders, receivers, edge_mlp, node_mlp, degree):
    """One jraph `GraphNetwork` layer: m_ij = envelope_ij · φ([e_ij, h_j, h_i]),
    h_i ← h_i + ψ([h_i, Σ_j m_ij / degree]) (private helper; `nodes` is `(nnode, c)`)."""

    def update_edge_fn(edges, sent, received, globals_):
        x = jnp.concatenate([edges["features"], sent, received], axis=1)
        return edges["envelope"][:, None] * edge_mlp(x.T).T

    def update_node_fn(nodes, sent, received, globals_):
        return nodes + node_mlp(jnp.concatenate([nodes, received / degree], axis=1).T).T

    graph = jraph.GraphsTuple(
        nodes=nodes, edges={"features": edge_features, "envelope": envelope}, senders=senders,
        receivers=receivers, n_node=jnp.asarray([nodes.shape[0]]), n_edge=jnp.asarray([senders.shape[0]]),
        globals=None)
    return jraph.GraphNetwork(update_edge_fn=update_edge_fn, update_node_fn=update_node_fn)(graph).nodes


class GridGraphNetwork(AbstractGeometryModel):
    """Message passing on a radius graph between grid points, with bounded degree (jraph).

    Nodes are the grid points r_i with features h_i⁰ = MLP(x_i) of their local inputs
    x = (u, w, ζ², v) ([`local_inputs`][nlxc.models.local_inputs]). Each point is joined to its
    `k` nearest grid points within `cutoff` ([`grid_neighbours`][nlxc.models.grid_neighbours]);
    the edge envelope e_ij = f_c(d_ij / ρ_i), with f_c the cosine cutoff and ρ_i = min(cutoff,
    distance to the (k+1)-th neighbour), vanishes smoothly at the first neighbour left out, so
    ties in distance (symmetric grids) cannot change the energy. `layers` rounds of

        m_ij = e_ij φ([rbf(d_ij), h_j, h_i]),   h_i ← h_i + ψ([h_i, Σ_j m_ij / k])

    (Battaglia et al., arXiv:1806.01261, in jraph's `GraphNetwork`), then

        E = ∫ e_x^LDA(n(r)) g([x(r), h(r)]) d³r   (Hartree),

    with g initialised near zero. Invariant to rotations, translations and atom permutations
    (distances only); size-consistent (no edges longer than `cutoff`). Padded grid points take
    no part. Cost O(ngrid · k · width²) per evaluation, plus one k-d-tree search
    (O(ngrid log ngrid), on the host in [`nlxc.models.prepare_system`][], or in
    [`prepare`][nlxc.xc.AbstractFunctional.prepare] with a host callback for a traced System). The receptive
    field is `layers` hops: near nuclei, where grid points are dense, that is a small distance.
    """

    encoder: MLP
    edge_mlps: tuple[MLP, ...]
    node_mlps: tuple[MLP, ...]
    head: MLP
    neighbours: GridNeighbours | None
    k: int = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    n_radial: int = eqx.field(static=True)

    def __init__(self, *, channels: int = 8, layers: int = 2, k: int = 12, cutoff: float = 2.0,
                 n_radial: int = 6, width: int = 16, final_scale: float = 1e-2, key: PRNGKeyArray):
        keys = jr.split(key, 2 * layers + 2)
        self.k, self.cutoff, self.n_radial, self.neighbours = k, cutoff, n_radial, None
        self.encoder = MLP(N_LOCAL_INPUTS, out_features=channels, width=width, final_scale=1.0, key=keys[0])
        self.edge_mlps = tuple(MLP(n_radial + 2 * channels, out_features=channels, width=width, final_scale=1.0,
                                   key=keys[1 + 2 * i]) for i in range(layers))
        self.node_mlps = tuple(MLP(2 * channels, out_features=channels, width=width, final_scale=1.0,
                                   key=keys[2 + 2 * i]) for i in range(layers))
        self.head = MLP(N_LOCAL_INPUTS + channels, width=width, final_scale=final_scale, key=keys[-1])

    @property
    def precomputed_keys(self) -> tuple[str, ...]:
        return (grid_neighbours_key(self.k, self.cutoff),)

    def precompute(self, grid_coords, grid_weights, atom_coords, atom_charges) -> dict:
        return {self.precomputed_keys[0]: grid_neighbours_on_host(grid_coords, grid_weights, self.k, self.cutoff)}

    def _system_neighbours(self, system) -> GridNeighbours:
        nb = precomputed_entry(system, self.precomputed_keys[0])
        if nb is not None:
            return nb
        return grid_neighbours(system.grid_coords, system.grid_weights, self.k, self.cutoff)

    def grid_neighbours(self, system) -> GridNeighbours:
        """The stored neighbour list, else the System's precomputed one, else a freshly built one."""
        if self.neighbours is not None:
            return self.neighbours
        return self._system_neighbours(system)

    def prepare(self, system):
        nb = self._system_neighbours(system)
        return eqx.tree_at(lambda m: m.neighbours, self, nb, is_leaf=lambda x: x is None)

    def __call__(self, density, density_matrix, system):
        features = LocalFeatures.from_density(density)
        x = local_inputs(features)
        nb = self.grid_neighbours(system)
        coords = system.grid_coords
        ngrid = coords.shape[0]
        d = jnp.sqrt(jnp.sum((coords[:, None, :] - coords[nb.index]) ** 2, axis=-1) + 1e-24)  # (ngrid, k+1)
        rho = jnp.where(nb.mask[:, -1], d[:, -1], self.cutoff)
        envelope = jnp.where(nb.mask[:, :-1], cosine_cutoff(d[:, :-1] / rho[:, None], 1.0), 0.0)
        senders = nb.index[:, :-1].reshape(-1)
        receivers = jnp.repeat(jnp.arange(ngrid), self.k)
        edge_features = _radial_features(d[:, :-1], self.cutoff, self.n_radial).reshape(-1, self.n_radial)
        h = self.encoder(x).T  # (ngrid, c)
        for edge_mlp, node_mlp in zip(self.edge_mlps, self.node_mlps):
            h = _message_passing(h, edge_features, envelope.reshape(-1), senders, receivers, edge_mlp,
                                 node_mlp, self.k)
        g = self.head(jnp.concatenate([x, h.T], axis=0))
        e = lda_exchange_energy_density(features.n, features.mask) * g
        return jnp.sum(system.grid_weights * e)


class CoarseGraphNetwork(AbstractAtomNeighbourModel):
    """A coarse-grained grid graph: grid features pooled onto atom-centred radial shells, message
    passing between the shells (jraph), broadcast back to the grid.

    The coarse nodes are the shells (A, s) of every atom A with radii r_s (default 0, 0.6, 1.5,
    3 Bohr) and smooth Gaussian profiles φ_s(r) = exp(−(r − r_s)²/(2σ²)) f_c(r) (σ = `width`,
    f_c the cosine cutoff at `cutoff`). With grid channels h_c = MLP(x) of the local inputs:

    1. **fine → coarse**: H_{A,s,c} = asinh(Σ_g w_g n(r_g) h_c(r_g) φ_s(|r_g − R_A|)), plus the
       element embedding of A;
    2. **coarse graph**: `layers` rounds of jraph message passing between all shells of atoms
       closer than `atom_cutoff` (edge features: radial basis of R_AB and the two shell radii;
       envelope f_c(R_AB / atom_cutoff); shells of the same atom are joined too);
    3. **coarse → fine**: b_c(r) = Σ_A Σ_s φ_s(|r − R_A|) H'_{A,s,c}, and
       E = ∫ e_x^LDA(n) g([x, asinh(b)]) d³r with g initialised near zero.

    Every grid point talks to O(natom within `cutoff`) shells instead of to its grid neighbours,
    so information crosses a molecule in `layers` hops whatever the grid density. Invariant to
    rotations, translations and atom permutations (scalars of distances only); size-consistent
    for fragments farther apart than both cutoffs. Cost O(ngrid · k · n_shell · c) for the
    transfers (k ≤ `max_atoms` atoms within `cutoff` of a grid point) and O((natom · n_shell)²)
    for the coarse graph (negligible next to the grid for molecules).
    """

    local: MLP
    embedding: Float[Array, "nelement dim"]
    encoder: MLP
    edge_mlps: tuple[MLP, ...]
    node_mlps: tuple[MLP, ...]
    head: MLP
    neighbours: AtomNeighbours | None
    shells: tuple[float, ...] = eqx.field(static=True)
    width: float = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    atom_cutoff: float = eqx.field(static=True)
    n_radial: int = eqx.field(static=True)
    max_atoms: int = eqx.field(static=True)

    def __init__(self, *, channels: int = 4, hidden: int = 16, layers: int = 2,
                 shells=(0.0, 0.6, 1.5, 3.0), width: float = 0.6, cutoff: float = 6.0,
                 atom_cutoff: float = 10.0, n_radial: int = 8, embedding_dim: int = 8,
                 final_scale: float = 1e-2, max_atoms: int = 24, key: PRNGKeyArray):
        keys = jr.split(key, 2 * layers + 4)
        self.shells, self.width, self.cutoff, self.atom_cutoff = tuple(shells), width, cutoff, atom_cutoff
        self.n_radial, self.max_atoms, self.neighbours = n_radial, max_atoms, None
        self.local = MLP(N_LOCAL_INPUTS, out_features=channels, width=16, final_scale=1.0, key=keys[0])
        self.embedding = element_embedding(keys[1], embedding_dim)
        self.encoder = MLP(channels + embedding_dim, out_features=hidden, width=hidden, final_scale=1.0,
                           key=keys[2])
        self.edge_mlps = tuple(MLP(n_radial + 2 + 2 * hidden, out_features=hidden, width=hidden, final_scale=1.0,
                                   key=keys[3 + 2 * i]) for i in range(layers))
        self.node_mlps = tuple(MLP(2 * hidden, out_features=hidden, width=hidden, final_scale=1.0,
                                   key=keys[4 + 2 * i]) for i in range(layers))
        self.head = MLP(N_LOCAL_INPUTS + hidden, width=32, final_scale=final_scale, key=keys[-1])

    @property
    def neighbour_cutoff(self) -> float:
        return self.cutoff

    def _profiles(self, coords, atom_coords, index, mask):
        r = jnp.sqrt(jnp.sum((coords - atom_coords[index]) ** 2, axis=-1) + 1e-24)
        envelope = jnp.where(mask, cosine_cutoff(r, self.cutoff), 0.0)
        shells = jnp.asarray(self.shells)
        return jnp.exp(-((r[:, None] - shells) ** 2) / (2 * self.width**2)) * envelope[:, None]  # (ngrid, S)

    def __call__(self, density, density_matrix, system):
        features = LocalFeatures.from_density(density)
        x = local_inputs(features)
        mask, z = atom_mask_and_numbers(system)
        nb = self.atom_neighbours(system)
        coords, atom_coords = system.grid_coords, system.atom_coords
        natom, nshell = atom_coords.shape[0], len(self.shells)
        wnh = (system.grid_weights * features.n)[None, :] * self.local(x)  # (c, ngrid)

        def pool(acc, index, slot_mask):
            phi = self._profiles(coords, atom_coords, index, slot_mask)
            return acc + jax.ops.segment_sum(jnp.einsum("cg,gs->gsc", wnh, phi), index, num_segments=natom)

        pooled = jnp.arcsinh(scan_slots(pool, jnp.zeros((natom, nshell, wnh.shape[0])), nb))
        emb = jnp.broadcast_to(self.embedding[z][:, None, :], (natom, nshell, self.embedding.shape[1]))
        nodes = self.encoder(jnp.concatenate([pooled, emb], axis=-1).reshape(natom * nshell, -1).T).T

        # coarse graph: every shell of A to every shell of B (B ≠ A or a different shell)
        atom_of = jnp.repeat(jnp.arange(natom), nshell)
        shell_of = jnp.tile(jnp.asarray(self.shells), natom)
        nnode = natom * nshell
        senders = jnp.repeat(jnp.arange(nnode), nnode)
        receivers = jnp.tile(jnp.arange(nnode), nnode)
        r_ab = jnp.sqrt(jnp.sum((atom_coords[atom_of[senders]] - atom_coords[atom_of[receivers]]) ** 2, -1) + 1e-24)
        valid = mask[atom_of[senders]] & mask[atom_of[receivers]] & (senders != receivers)
        envelope = jnp.where(valid, cosine_cutoff(r_ab, self.atom_cutoff), 0.0)
        edge_features = jnp.concatenate(
            [_radial_features(r_ab, self.atom_cutoff, self.n_radial),
             shell_of[senders][:, None] / self.cutoff, shell_of[receivers][:, None] / self.cutoff], axis=1)
        for edge_mlp, node_mlp in zip(self.edge_mlps, self.node_mlps):
            nodes = _message_passing(nodes, edge_features, envelope, senders, receivers, edge_mlp, node_mlp,
                                     float(nshell))
        nodes = jnp.where(jnp.repeat(mask, nshell)[:, None], nodes, 0.0).reshape(natom, nshell, -1)

        def broadcast(b, index, slot_mask):
            phi = self._profiles(coords, atom_coords, index, slot_mask)
            return b + jnp.einsum("gs,gsc->cg", phi, nodes[index])

        b = scan_slots(broadcast, jnp.zeros((nodes.shape[-1], coords.shape[0])), nb)
        g = self.head(jnp.concatenate([x, jnp.arcsinh(b)], axis=0))
        e = lda_exchange_energy_density(features.n, features.mask) * g
        return jnp.sum(system.grid_weights * e)
