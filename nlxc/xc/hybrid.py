"""Exact (Hartree–Fock) exchange from the density-fitting tensor, and global hybrids."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractFunctional
from ._util import parameter
from .gga import B88Exchange, LYPCorrelation, PBECorrelation, PBEExchange
from .lda import SlaterExchange, VWN5Correlation, VWNRPACorrelation


def exact_exchange_energy(
    cderi: Float[Array, "naux nao nao"], density_matrix: Float[Array, "2 nao nao"], restricted: bool = False
) -> Float[Array, ""]:
    """Density-fitted Hartree–Fock exchange energy, Hartree.

    E_x^HF = −½ Σσ Σ_Q tr(B_Q Pσ B_Q Pσ), with B the Cholesky-orthogonalised 3-index tensor
    `(naux, nao, nao)` and Pσ the α/β density matrices `(2, nao, nao)`. Cost O(naux · nao³) per
    spin; with `restricted=True` (Pα = Pβ) it is evaluated once on the mean of Pα and Pβ.
    """
    if restricted:
        mean = 0.5 * (density_matrix[0] + density_matrix[1])
        t = jnp.einsum("Qmn,nl->Qml", cderi, mean)
        return -jnp.einsum("Qml,Qlm->", t, t)
    t = jnp.einsum("Qmn,snl->sQml", cderi, density_matrix)
    return -0.5 * jnp.einsum("sQml,sQlm->", t, t)


class ExactExchange(AbstractFunctional):
    """A fraction of exact exchange, a·E_x^HF[P] (Hartree), density-fitted.

    `fraction` is a trainable scalar (default 1).
    """

    fraction: Float[Array, ""] = parameter(1.0)

    def __call__(self, density, density_matrix, system):
        return self.fraction * exact_exchange_energy(system.cderi, density_matrix, system.restricted)


def HF() -> ExactExchange:
    """Hartree–Fock: the exchange–correlation energy is the full exact exchange."""
    return ExactExchange(1.0)


class B3LYP(AbstractFunctional):
    """B3LYP as defined by libxc HYB_GGA_XC_B3LYP (ID 402) and PySCF's `"b3lyp"`, Hartree.

    E_xc = a₀ E_x^HF + (1 − a₀ − a_x) E_x^Slater + a_x E_x^B88 + (1 − a_c) E_c^VWN + a_c E_c^LYP,
    with a₀ = 0.20, a_x = 0.72, a_c = 0.81 (trainable) and, following libxc/Gaussian, the VWN
    RPA parametrisation (libxc LDA_C_VWN_RPA, ID 8); `vwn5=True` gives "B3LYP5" (VWN5, ID 7).

    Source: Stephens, Devlin, Chabalowski, Frisch, J. Phys. Chem. 98, 11623 (1994),
    doi:10.1021/j100096a001; Becke, J. Chem. Phys. 98, 5648 (1993), doi:10.1063/1.464913.
    """

    a0: Float[Array, ""] = parameter(0.20)
    ax: Float[Array, ""] = parameter(0.72)
    ac: Float[Array, ""] = parameter(0.81)
    vwn5: bool = eqx.field(static=True, default=False)

    def __call__(self, density, density_matrix, system):
        vwn = VWN5Correlation() if self.vwn5 else VWNRPACorrelation()
        rho, sigma, tau = density.rho, density.sigma, density.tau
        e = (
            (1.0 - self.a0 - self.ax) * SlaterExchange().energy_density(rho, sigma, tau)
            + self.ax * B88Exchange().energy_density(rho, sigma, tau)
            + (1.0 - self.ac) * vwn.energy_density(rho, sigma, tau)
            + self.ac * LYPCorrelation().energy_density(rho, sigma, tau)
        )
        semilocal = jnp.sum(system.grid_weights * e)
        return semilocal + self.a0 * exact_exchange_energy(system.cderi, density_matrix, system.restricted)


class PBE0(AbstractFunctional):
    """PBE0 (libxc HYB_GGA_XC_PBEH, ID 406; PySCF's `"pbe0"`), Hartree.

    E_xc = a E_x^HF + (1 − a) E_x^PBE + E_c^PBE with a = 0.25 (trainable).

    Source: Adamo & Barone, J. Chem. Phys. 110, 6158 (1999), doi:10.1063/1.478522; Ernzerhof &
    Scuseria, J. Chem. Phys. 110, 5029 (1999), doi:10.1063/1.478401.
    """

    a0: Float[Array, ""] = parameter(0.25)

    def __call__(self, density, density_matrix, system):
        rho, sigma, tau = density.rho, density.sigma, density.tau
        e = (1.0 - self.a0) * PBEExchange().energy_density(rho, sigma, tau) + PBECorrelation().energy_density(
            rho, sigma, tau
        )
        semilocal = jnp.sum(system.grid_weights * e)
        return semilocal + self.a0 * exact_exchange_energy(system.cderi, density_matrix, system.restricted)
