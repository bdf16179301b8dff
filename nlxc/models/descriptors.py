"""Nonlocal density descriptors for the model zoo.

- [`AtomDensityProjection`][nlxc.models.AtomDensityProjection]: projections of the density onto
  atom-centred radial × real-spherical-harmonic functions (the descriptors of DeePKS, Chen et al.,
  J. Chem. Theory Comput. 17, 170 (2021), doi:10.1021/acs.jctc.0c00872, and NeuralXC, Dick &
  Fernandez-Serra, Nat. Commun. 11, 3509 (2020), doi:10.1038/s41467-020-17265-7), and their
  rotation-invariant power spectrum.
- [`local_inputs`][nlxc.models.local_inputs]: the bounded semilocal inputs the zoo's networks
  read at every grid point.
"""

import abc
import math

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from equinox import AbstractVar
from jaxtyping import Array, Float

from ..xc import LocalFeatures, squash_alpha, squash_s
from ._common import scan_image_slots, slot_basis
from ._geometry import AbstractGeometryModel, precomputed_entry
from .neighbours import (
    AtomNeighbours,
    atom_neighbours,
    atom_neighbours_key,
    atom_neighbours_on_host,
    periodic_atom_neighbours,
)

__all__ = [
    "N_LOCAL_INPUTS",
    "AbstractPeriodicAtomNeighbourModel",
    "AtomDensityProjection",
    "lda_exchange_energy_density",
    "local_inputs",
]

N_LOCAL_INPUTS = 4
_CX = 0.75 * (3.0 / math.pi) ** (1.0 / 3.0)


def local_inputs(features: LocalFeatures) -> Float[Array, "4 ngrid"]:
    """(u, w, ζ², v) per grid point: u = s²/(1+s²), w = (1−α)/(1+α), ζ², v = r_s/(1+r_s).

    All four are bounded, dimensionless, and invariant under rotations, translations and spin
    flip; (u, w) = (0, 0) for the uniform gas.
    """
    return jnp.stack([squash_s(features.s), squash_alpha(features.alpha), features.zeta**2,
                      features.rs / (1.0 + features.rs)])


def lda_exchange_energy_density(n: Float[Array, " ngrid"], mask) -> Float[Array, " ngrid"]:
    """Unpolarised Slater exchange per unit volume, −(3/4)(3/π)^{1/3} n^{4/3} (Hartree/Bohr³).

    The energy scale that the zoo's nonlocal corrections multiply (libxc LDA_X, ID 1). Zero
    where `mask` is false.
    """
    return jnp.where(mask, -_CX * jnp.where(mask, n, 1.0) ** (4.0 / 3.0), 0.0)


class AbstractAtomNeighbourModel(AbstractGeometryModel):
    """A model that couples every grid point to the atoms within `neighbour_cutoff` (private base).

    [`prepare`][nlxc.xc.AbstractFunctional.prepare] stores the
    [`AtomNeighbours`][nlxc.models.AtomNeighbours] list once per SCF: the one in
    `System.precomputed` (built on the host by [`nlxc.models.prepare_system`][], which
    [`nlxc.solve`][] calls), else one built by a host callback inside the trace. Every
    evaluation then costs O(ngrid · k) with k = min(`max_atoms`, natom), linear in the grid size
    for a bounded number of atoms within the cutoff.
    """

    neighbours: AbstractVar[AtomNeighbours | None]
    max_atoms: AbstractVar[int]

    @property
    @abc.abstractmethod
    def neighbour_cutoff(self) -> float:
        """Radius (Bohr) within which grid points and atoms interact."""

    @property
    def precomputed_keys(self) -> tuple[str, ...]:
        return (atom_neighbours_key(self.neighbour_cutoff, self.max_atoms),)

    def precompute(self, grid_coords, grid_weights, atom_coords, atom_charges) -> dict:
        nb = atom_neighbours_on_host(grid_coords, grid_weights, atom_coords, atom_charges, self.neighbour_cutoff,
                                     self.max_atoms)
        return {self.precomputed_keys[0]: nb}

    def _system_neighbours(self, system) -> AtomNeighbours:
        nb = precomputed_entry(system, self.precomputed_keys[0])
        if nb is not None:
            return nb
        return atom_neighbours(system.grid_coords, system.grid_weights, system.atom_coords,
                               system.atom_charges, self.neighbour_cutoff, self.max_atoms)

    def atom_neighbours(self, system) -> AtomNeighbours:
        """The stored neighbour list, else the System's precomputed one, else a freshly built one."""
        if self.neighbours is not None:
            return self.neighbours
        return self._system_neighbours(system)

    def prepare(self, system):
        nb = self._system_neighbours(system)
        return eqx.tree_at(lambda m: m.neighbours, self, nb, is_leaf=lambda x: x is None)


class AbstractPeriodicAtomNeighbourModel(AbstractAtomNeighbourModel):
    """An atom-neighbour model that also works in a crystal, with the periodic images of the atoms.

    Its subclasses read every atom position through the neighbour list (`r_g − (R_A + T)` with
    the list's lattice translations T, and T = 0 for a molecule), so the same code evaluates a
    molecule (prepared with [`prepare`][nlxc.xc.AbstractFunctional.prepare]) and a periodic cell
    (prepared with [`prepare_periodic`][nlxc.models.AbstractPeriodicAtomNeighbourModel.prepare_periodic]);
    [`nlxc.pbc.solve`][] accepts exactly these models (and sums with semilocal functionals).
    Subclasses: [`AtomCentredCorrection`][nlxc.models.AtomCentredCorrection],
    [`EquivariantCorrection`][nlxc.models.EquivariantCorrection].
    """

    @property
    def pair_cutoff(self) -> float:
        """Radius (Bohr) of the atom–atom interactions (0 for none): in a crystal the neighbour
        list also holds every lattice translation that brings an atom image this close to an atom."""
        return 0.0

    def prepare_periodic(
        self,
        grid_coords: Float[Array, "ngrid 3"],
        grid_weights: Float[Array, " ngrid"],
        atom_coords: Float[Array, "natom 3"],
        atom_charges: Float[Array, " natom"],
        lattice_vectors: Float[Array, "3 3"],
    ) -> "AbstractPeriodicAtomNeighbourModel":
        """This model specialised to a periodic cell: its neighbour list runs over the atom images
        R_A + T ([`periodic_atom_neighbours`][nlxc.models.periodic_atom_neighbours]).

        Grid (`(ngrid, 3)` Bohr, weights Bohr³) and atoms (`(natom, 3)` Bohr, charges) of one
        cell, and its `lattice_vectors` (rows a₁, a₂, a₃, Bohr). Outside `jit` (numpy); the
        trainable parameters are those of `self`. A model prepared so evaluates, with the cell's
        density on the cell's grid, the energy per cell Σ_{A in the cell} ε_A.

        **Raises:** [`nlxc.InputError`][] as [`periodic_atom_neighbours`][nlxc.models.periodic_atom_neighbours].
        """
        nb = periodic_atom_neighbours(grid_coords, grid_weights, atom_coords, atom_charges, lattice_vectors,
                                      self.neighbour_cutoff, self.max_atoms, pair_cutoff=self.pair_cutoff)
        return eqx.tree_at(lambda m: m.neighbours, self, nb, is_leaf=lambda x: x is None)


class AtomDensityProjection(eqx.Module):
    """c_{A,nlm} = Σ_g w_g n(r_g) R_n(|r_g − R_A|) Y_lm(r̂_gA): the density projected on atom A.

    R_n(r) = exp(−r²/(2σ_n²)) f_c(r) with widths σ_n (Bohr) and the cosine cutoff
    f_c(r) = ½(cos(πr/r_c) + 1) for r < r_c; Y_lm are e3nn's real spherical harmonics
    (component normalisation) for l ≤ `lmax`. Under a rotation of the molecule (and its grid)
    the coefficients of each (n, l) rotate by the Wigner matrix D^l, so the power spectrum
    p_{A,nn'l} = Σ_m c_{A,nlm} c_{A,n'lm} is invariant; so are translations and atom
    permutations. Cost O(ngrid · k · n_radial · (lmax+1)²) time and memory for k atoms per grid
    point within the cutoff (linear in the grid size).

    **Fields** (static): `widths` (default (0.3, 0.6, 1.2, 2.4) Bohr), `lmax` (default 2),
    `cutoff` r_c (default 6 Bohr).
    """

    widths: tuple[float, ...] = eqx.field(static=True, default=(0.3, 0.6, 1.2, 2.4))
    lmax: int = eqx.field(static=True, default=2)
    cutoff: float = eqx.field(static=True, default=6.0)

    @property
    def irreps(self) -> e3nn.Irreps:
        """The irreps of one atom's coefficients: n_radial × (0e + 1o + 2e + …)."""
        return e3nn.Irreps([(len(self.widths), (l, (-1) ** l)) for l in range(self.lmax + 1)])

    def coefficients(
        self, n: Float[Array, " ngrid"], weights: Float[Array, " ngrid"], coords: Float[Array, "ngrid 3"],
        atom_coords: Float[Array, "natom 3"], neighbours: AtomNeighbours,
    ) -> e3nn.IrrepsArray:
        """c_{A,nlm} as an `IrrepsArray` of shape `(natom, n_radial · (lmax+1)²)`, irreps `self.irreps`.

        `neighbours` lists the atoms within (at least) `self.cutoff` of every grid point
        ([`atom_neighbours`][nlxc.models.atom_neighbours]), or, in a crystal, the atom images
        R_A + T ([`periodic_atom_neighbours`][nlxc.models.periodic_atom_neighbours]); only those
        pairs are evaluated. In a crystal the sum runs over the cell's grid and every image of A,
        c_{A,nlm} = Σ_g Σ_T w_g n(r_g) R_n(|r_g − R_A − T|) Y_lm, which for a periodic density is
        the projection of the whole crystal's density on A.
        """
        natom, wn = atom_coords.shape[0], weights * n

        def pool(c, index, mask, shift):
            radial, sh = slot_basis(coords, atom_coords, index, mask, self.widths, self.cutoff, self.lmax, shift)
            return c + jax.ops.segment_sum(jnp.einsum("g,gn,gm->gnm", wn, radial, sh), index, num_segments=natom)

        c = scan_image_slots(pool, jnp.zeros((natom, len(self.widths), (self.lmax + 1) ** 2)), neighbours)
        blocks = [c[:, :, l * l:(l + 1) ** 2].reshape(c.shape[0], -1) for l in range(self.lmax + 1)]
        return e3nn.IrrepsArray(self.irreps, jnp.concatenate(blocks, axis=-1))

    def power_spectrum(self, coefficients: e3nn.IrrepsArray) -> Float[Array, "natom nfeat"]:
        """p_{A,nn'l} = Σ_m c_{nlm} c_{n'lm} for n ≤ n', l ≤ lmax, then asinh (scale compression).

        Shape `(natom, n_radial (n_radial + 1)/2 · (lmax + 1))`.
        """
        nrad = len(self.widths)
        iu = np.triu_indices(nrad)
        out = []
        for l, chunk in enumerate(coefficients.chunks):
            c = chunk  # (natom, nrad, 2l+1)
            p = jnp.einsum("anm,akm->ank", c, c) / math.sqrt(2 * l + 1)
            out.append(p[:, iu[0], iu[1]])
        return jnp.arcsinh(jnp.concatenate(out, axis=-1))

    @property
    def n_invariants(self) -> int:
        """Length of the power spectrum per atom."""
        nrad = len(self.widths)
        return nrad * (nrad + 1) // 2 * (self.lmax + 1)
