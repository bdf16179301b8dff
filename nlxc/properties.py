"""Differentiable properties of a density matrix or an SCF solution (atomic units)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from .grid import Density
from .system import System


def dipole_moment(density_matrix: Float[Array, "2 nao nao"], system: System) -> Float[Array, "3"]:
    """Dipole moment μ = Σ_A Z_A R_A − Σσ tr(Pσ r), `(3,)`, e·Bohr (atomic units; 1 au =
    2.541746 Debye), about the origin of the coordinates."""
    electronic = -jnp.einsum("xmn,smn->x", system.dipole_integrals, density_matrix)
    nuclear = jnp.einsum("a,ax->x", system.atom_charges, system.atom_coords)
    return electronic + nuclear


def density_on_grid(density_matrix: Float[Array, "2 nao nao"], system: System) -> Float[Array, " ngrid"]:
    """Total electron density ρ(r) = ρα + ρβ on the system's grid, `(ngrid,)`, electrons/Bohr³."""
    return Density.from_density_matrix(density_matrix, system).rho.sum(0)


def homo_lumo(orbital_energies: Float[Array, "2 nmo"], occupations: Float[Array, "2 nmo"]):
    """(HOMO, LUMO) energies in Hartree over both spins: the highest orbital with occupation
    > ½ and the lowest with occupation < ½. Differentiable (degenerate-safe) when the orbital
    energies come from [`nlxc.solve`][nlxc.scf.solve]."""
    occupied = occupations > 0.5
    homo = jnp.max(jnp.where(occupied, orbital_energies, -jnp.inf))
    lumo = jnp.min(jnp.where(occupied, jnp.inf, orbital_energies))
    return homo, lumo
