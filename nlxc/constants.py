"""Physical constants, unit factors and uniform-electron-gas constants, each defined once.

This is the bottom layer of nlxc: it imports only `math` and PySCF's table of physical constants
(`pyscf.data.nist`), so that nlxc's numbers agree with PySCF's to the last digit. nlxc works in
atomic units throughout (energies in Hartree, lengths in Bohr); the factors here convert at the
edges (input geometries in Ångström, reported errors in kcal/mol).

The uniform-electron-gas constants carry libxc's names (libxc 7, `maple/util.mpl`), so the
formulas that use them read like libxc's Maple sources.
"""

import math

from pyscf.data import nist

__all__ = [
    "ANGSTROM_TO_BOHR",
    "KCAL_PER_MOL",
    "KF_FACTOR",
    "LIEB_OXFORD_BOUND",
    "RS_FACTOR",
    "TAU_UEG_FACTOR",
    "X2S",
    "X_FACTOR_C",
]

# --------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------

ANGSTROM_TO_BOHR: float = 1.0 / nist.BOHR
"""Bohr per Ångström, 1/0.52917721092 ≈ 1.8897261 (PySCF's `nist.BOHR`, the CODATA 2010 Bohr
radius in Ångström, the same value PySCF uses to read geometries)."""

KCAL_PER_MOL: float = 4184.0 / (nist.HARTREE2J * nist.AVOGADRO)
"""One kcal/mol in Hartree (≈ 1/627.5095), from PySCF's constants (`pyscf.data.nist`:
`HARTREE2J`, derived there from CODATA 2014 ħ, mₑ and the CODATA 2010 Bohr radius, and
`AVOGADRO`, CODATA 2014) with the thermochemical calorie, 1 cal = 4.184 J (one Hartree per
particle is HARTREE2J·N_A J/mol). It agrees with the CODATA 2018 value
(1 Eₕ = 627.509 474 kcal/mol) to 2e-9 relative. Divide an energy in Hartree by it to get kcal/mol."""

# --------------------------------------------------------------------------------------------
# Uniform electron gas (libxc `maple/util.mpl`)
# --------------------------------------------------------------------------------------------

RS_FACTOR: float = (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
"""(3/(4π))^{1/3}: the Wigner–Seitz radius is r_s = RS_FACTOR · n^{−1/3} (Bohr, n in Bohr⁻³)."""

X_FACTOR_C: float = 3.0 / 8.0 * (3.0 / math.pi) ** (1.0 / 3.0) * 4.0 ** (2.0 / 3.0)
"""3/8 (3/π)^{1/3} 4^{2/3} = (3/4)(6/π)^{1/3} ≈ 0.9305: Slater (Dirac) exchange of one spin
channel is e_x,σ^LDA = −X_FACTOR_C ρσ^{4/3} (Hartree / Bohr³), i.e. the exchange of the uniform
gas (P. A. M. Dirac, Proc. Camb. Phil. Soc. 26, 376 (1930), doi:10.1017/S0305004100016108)
through the spin-scaling relation E_x[ρα, ρβ] = ½(E_x[2ρα] + E_x[2ρβ]). The spin-unpolarised
form is −(3/4)(3/π)^{1/3} n^{4/3} = −2^{−1/3} X_FACTOR_C n^{4/3}."""

X2S: float = 1.0 / (2.0 * (6.0 * math.pi**2) ** (1.0 / 3.0))
"""1/(2(6π²)^{1/3}): the reduced gradient of the spin-scaled density 2ρσ is
s = X2S · |∇ρσ| / ρσ^{4/3} (Perdew, Burke, Ernzerhof, doi:10.1103/PhysRevLett.77.3865)."""

KF_FACTOR: float = (3.0 * math.pi**2) ** (1.0 / 3.0)
"""(3π²)^{1/3}: the Fermi wave vector of a uniform gas of density n is k_F = KF_FACTOR · n^{1/3}
(Bohr⁻¹)."""

TAU_UEG_FACTOR: float = 0.3 * (3.0 * math.pi**2) ** (2.0 / 3.0)
"""(3/10)(3π²)^{2/3} (the Thomas–Fermi constant C_F): the kinetic-energy density of a uniform gas
of density n is τ_UEG = TAU_UEG_FACTOR · n^{5/3} (Hartree / Bohr³)."""

GLOBAL_LIEB_OXFORD_CONSTANT: float = 1.679
"""Lieb–Oxford constant C of the global bound E_xc ≥ −C ∫ n^{4/3} d³r (Lieb & Oxford,
Int. J. Quantum Chem. 19, 427 (1981), doi:10.1002/qua.560190306)."""

LIEB_OXFORD_BOUND: float = 1.804
"""Local Lieb–Oxford bound on the exchange enhancement factor, F_x ≤ 1 + κ with κ = 0.804, as
imposed by PBE (Perdew, Burke, Ernzerhof, doi:10.1103/PhysRevLett.77.3865) from the Lieb–Oxford
bound E_xc ≥ −1.679 ∫ n^{4/3} (Lieb & Oxford, Int. J. Quantum Chem. 19, 427 (1981),
doi:10.1002/qua.560190306): with the spin-scaling relation it gives e_x ≥ −1.679 n^{4/3} at every
spin polarisation."""
