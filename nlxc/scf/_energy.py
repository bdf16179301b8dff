"""Total energy and its components as functions of the density matrix (private)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..grid import Density
from ..system import System, pack_symmetric
from ..xc import AbstractFunctional


class EnergyComponents(eqx.Module):
    """The parts of the Kohn–Sham total energy, Hartree.

    - `one_electron`: tr(P H_core), kinetic + nuclear attraction.
    - `coulomb`: the Hartree energy ½ ∫∫ ρ(r)ρ(r')/|r−r'| (density-fitted).
    - `xc`: the exchange–correlation energy, including any exact-exchange part.
    - `nuclear_repulsion`: Σ_{A<B} Z_A Z_B / R_AB.
    """

    one_electron: Float[Array, ""]
    coulomb: Float[Array, ""]
    xc: Float[Array, ""]
    nuclear_repulsion: Float[Array, ""]

    @property
    def total(self) -> Float[Array, ""]:
        """The total energy, Hartree."""
        return self.one_electron + self.coulomb + self.xc + self.nuclear_repulsion

    def as_dict(self) -> dict[str, float]:
        """The components (and `total`) as Python floats, Hartree."""
        return {
            "one_electron": float(self.one_electron),
            "coulomb": float(self.coulomb),
            "xc": float(self.xc),
            "nuclear_repulsion": float(self.nuclear_repulsion),
            "total": float(self.total),
        }


def energy_components(
    functional: AbstractFunctional, system: System, density_matrix: Float[Array, "2 nao nao"]
) -> EnergyComponents:
    """The energy components of the α/β density matrices `(2, nao, nao)`, Hartree."""
    p_total = density_matrix[0] + density_matrix[1]
    one_electron = jnp.sum(p_total * system.core_hamiltonian)
    # Σ_μν B_Qμν P_μν from the packed lower triangles of B (the Coulomb matrix, its gradient, is
    # symmetric by construction)
    fitted = system.cderi_packed @ pack_symmetric(p_total)
    coulomb = 0.5 * jnp.dot(fitted, fitted)
    density = Density.from_density_matrix(density_matrix, system)
    xc = functional(density, density_matrix, system)
    return EnergyComponents(one_electron, coulomb, xc, system.nuclear_repulsion)


def energy_and_fock(
    functional: AbstractFunctional, system: System, density_matrix: Float[Array, "2 nao nao"]
) -> tuple[EnergyComponents, Float[Array, "2 nao nao"]]:
    """Energy components of P and the α/β Fock matrices Fσ = ∂E/∂Pσ, `(2, nao, nao)`, Hartree.

    The Fock matrices come from reverse-mode autodiff of the total energy (symmetrised); no
    potential is written by hand.
    """

    def total(p):
        components = energy_components(functional, system, p)
        return components.total, components

    (_, components), grad = jax.value_and_grad(total, has_aux=True)(density_matrix)
    return components, 0.5 * (grad + jnp.swapaxes(grad, -1, -2))
