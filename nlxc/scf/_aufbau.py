"""From a Fock matrix to orbitals and an aufbau density matrix (private)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..system import System

# Orbitals made of padded basis functions (zero columns of the orthogonaliser) get this orbital
# energy (Hartree), far above any occupied orbital, so that the aufbau never occupies them.
PADDED_ORBITAL_ENERGY = 1.0e3


def orbitals(
    fock: Float[Array, "2 nao nao"], system: System
) -> tuple[Float[Array, "2 nmo"], Float[Array, "2 nao nmo"]]:
    """Solve F C = S C ε by canonical orthogonalisation, for α and β.

    Restricted systems diagonalise the spin-averaged Fock matrix once; both spin channels then
    share orbitals. Returns orbital energies `(2, nmo)` (Hartree, ascending) and coefficients
    `(2, nao, nmo)`.
    """
    x = system.orthogonalizer

    def diagonalise(f):
        e, c = jnp.linalg.eigh(x.T @ f @ x)
        return e, x @ c

    if system.restricted:
        e, c = diagonalise(0.5 * (fock[0] + fock[1]))
        return jnp.stack([e, e]), jnp.stack([c, c])
    return jax.vmap(diagonalise)(fock)


def aufbau_occupations(system: System) -> Float[Array, "2 nmo"]:
    """Occupations (0 or 1) filling the n_α and n_β lowest orbitals, `(2, nmo)`."""
    index = jnp.arange(system.nmo)
    return (index[None, :] < system.n_electrons[:, None]).astype(float)


def density_matrix(
    coefficients: Float[Array, "2 nao nmo"], occupations: Float[Array, "2 nmo"]
) -> Float[Array, "2 nao nao"]:
    """Pσ = Σᵢ nσᵢ Cσ_μi Cσ_νi, `(2, nao, nao)`."""
    return jnp.einsum("smi,si,sni->smn", coefficients, occupations, coefficients)


def level_shifted(
    fock: Float[Array, "2 nao nao"], density: Float[Array, "2 nao nao"], system: System, shift
) -> Float[Array, "2 nao nao"]:
    """F + b (S − S Pσ S): raises the virtual orbitals by `shift` (Hartree), leaving the
    self-consistent occupied space unchanged. See Saunders & Hillier, Int. J. Quantum Chem. 7,
    699 (1973), doi:10.1002/qua.560070407."""
    s = system.overlap
    return fock + shift * (s[None] - s[None] @ density @ s[None])
