"""Local (spin-)density approximations: Slater exchange, VWN and PW92 correlation.

All functionals here are spin-polarised, implemented in JAX and validated against libxc 7
(tests/test_xc_semilocal.py: energies and first derivatives to 1e-10 relative wherever every
ρσ ≥ 1e-10). Derivatives are never written by hand: the potentials come from automatic
differentiation.

Reusable pieces (imported by the GGAs; the PW92 pieces and f(ζ) are defined in the private
`_uniform_gas` module, shared with the constraint layers and the meta-GGAs, and re-exported here):

- [`pw92_correlation_per_particle`][nlxc.xc.lda.pw92_correlation_per_particle]`(rs, zeta,
  params=PW92_MOD_PARAMS)`: the Perdew–Wang 1992 correlation energy per particle ε_c(r_s, ζ)
  in Hartree. Pass `PW92_PARAMS` for libxc's LDA_C_PW (id 12, fz20 = 1.709921) or
  `PW92_MOD_PARAMS` (the default) for libxc's LDA_C_PW_MOD (id 13: more digits in A and
  fz20 = 1.709920934161365617563962776245), which is what libxc's PBE, SCAN and r²SCAN
  correlations use. Any [`PW92Params`][nlxc.xc.lda.PW92Params] (e.g. the trainable fields of a
  [`PW92Correlation`][nlxc.xc.lda.PW92Correlation], see its `params` property) is accepted.
  [`PW92Correlation.per_particle`][nlxc.xc.lda.PW92Correlation.per_particle] takes 1 ± ζ as well,
  for callers that know them more accurately than 1 ± ζ formed from ζ.
- [`spin_variables`][nlxc.xc.lda.spin_variables]`(rho, threshold)`: libxc's density screening
  and clamping, returning a [`SpinVariables`][nlxc.xc.lda.SpinVariables] (mask, clamped ρα, ρβ,
  n, unclamped n, r_s, ζ, 1+ζ, 1−ζ) with safe values on screened points.
- [`unpolarised_variables`][nlxc.xc.lda.unpolarised_variables]`(rho, threshold)`: the same
  screening for a spin-unpolarised density (ρα = ρβ = ρ/2), for the ζ = 0 forms
  (`energy_density_unpolarised`) that restricted Systems use.
- [`f_zeta`][nlxc.xc.lda.f_zeta]`(opz, omz)`: the spin-interpolation function
  f(ζ) = [(1+ζ)^{4/3} + (1−ζ)^{4/3} − 2] / (2^{4/3} − 2).

Thresholds follow libxc 7's `work_lda`/`work_gga`: a point is skipped (e_xc = 0) when
ρα + ρβ < `dens_threshold` (each functional's libxc value: 1e-15 here); otherwise each ρσ is
raised to at least `dens_threshold`, and powers of 1 ± ζ are taken of max(1 ± ζ, ε_machine).
Exchange channels with ρσ ≤ `dens_threshold` are dropped. As in PySCF, the energy density is the
per-particle energy of the clamped density times the *unclamped* ρα + ρβ. Units: Hartree and Bohr
throughout; energy densities are per unit volume (Hartree / Bohr³), i.e. libxc's `zk` × (ρα + ρβ).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from ..constants import RS_FACTOR, X_FACTOR_C
from ._base import AbstractFunctional, AbstractSemilocalFunctional, PointwiseNetwork
from ._uniform_gas import (
    PW92_MOD_PARAMS,
    PW92_PARAMS,
    PW92Params,
    f_zeta,
    pw92_correlation_per_particle,
    pw92_epsilon,
    pw92_epsilon_unpolarised,
)
from ._util import DENS_THRESHOLD, ZETA_THRESHOLD, parameter
from .constraints import EnhancedCorrelation, EnhancedExchange

__all__ = [
    "PW92Correlation",
    "PW92Params",
    "PW92_MOD_PARAMS",
    "PW92_PARAMS",
    "SlaterExchange",
    "SpinVariables",
    "UnpolarisedVariables",
    "VWN5Correlation",
    "VWNRPACorrelation",
    "f_zeta",
    "pw92_correlation_per_particle",
    "pw92_epsilon_unpolarised",
    "spin_variables",
    "unpolarised_variables",
]

# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


class SpinVariables(NamedTuple):
    """Screened spin densities and derived variables (see [`spin_variables`][nlxc.xc.lda.spin_variables])."""

    mask: Array  # point is evaluated (ρα + ρβ ≥ threshold)
    rho_a: Array  # max(ρα, threshold), or 1 on screened points
    rho_b: Array  # max(ρβ, threshold), or 1 on screened points
    n: Array  # rho_a + rho_b (clamped total density)
    n_in: Array  # ρα + ρβ as given (unclamped), 1 on screened points
    rs: Array  # (3/(4πn))^{1/3}
    zeta: Array  # (rho_a − rho_b)/n
    opz: Array  # max(2 rho_a/n, ε_machine) = 1 + ζ
    omz: Array  # max(2 rho_b/n, ε_machine) = 1 − ζ
    ratio: Array  # n_in / n where a channel was clamped, exactly 1 (no gradient) elsewhere


def spin_variables(rho: Float[Array, "2 ngrid"], threshold: float = DENS_THRESHOLD) -> SpinVariables:
    """libxc-style screening of spin densities and the derived variables.

    A point is active when ρα + ρβ ≥ `threshold` (libxc skips `dens < dens_threshold`). On active
    points each ρσ is clamped to at least `threshold` (as libxc does); screened points get the
    harmless values ρα = ρβ = 1 so that every power, log and division downstream stays finite
    (the outputs must be masked with `mask`: the "double where" trick).

    libxc returns the energy per particle of the *clamped* density, ε(ρ̃), and PySCF integrates
    ε(ρ̃)·(ρα + ρβ) with the unclamped density; the functionals here return the same product,
    `n_in * eps`, so that energies agree with PySCF/libxc even where a channel is clamped.

    **Returns:** a [`SpinVariables`][nlxc.xc.lda.SpinVariables] `(mask, rho_a, rho_b, n, n_in,
    rs, zeta, opz, omz, ratio)` (ratio = n_in/n, for functionals that build e rather than ε),
    with n = ρ̃α + ρ̃β, r_s = (3/(4πn))^{1/3}, ζ = (ρ̃α − ρ̃β)/n, and
    opz = 1 + ζ, omz = 1 − ζ computed as 2ρ̃σ/n (exact even when ζ ≈ ±1, unlike 1 ± ζ formed
    by subtraction) and clamped below by libxc's ζ threshold ε_machine.
    """
    rho_a, rho_b = rho[0], rho[1]
    n_in = rho_a + rho_b
    mask = n_in >= threshold
    clamped = (rho_a < threshold) | (rho_b < threshold)
    n_in = jnp.where(mask, n_in, 1.0)
    rho_a = jnp.where(mask, jnp.maximum(rho_a, threshold), 1.0)
    rho_b = jnp.where(mask, jnp.maximum(rho_b, threshold), 1.0)
    n = rho_a + rho_b
    rs = RS_FACTOR * n ** (-1.0 / 3.0)
    zeta = (rho_a - rho_b) / n
    opz = jnp.maximum(2.0 * rho_a / n, ZETA_THRESHOLD)
    omz = jnp.maximum(2.0 * rho_b / n, ZETA_THRESHOLD)
    # n_in/n is 1 unless a channel was clamped; the where keeps the rounding noise of the
    # derivative of n/n (~ε/n, which would swamp a minority-spin potential) out of unclamped points
    ratio = jnp.where(clamped, n_in / n, 1.0)
    return SpinVariables(mask, rho_a, rho_b, n, n_in, rs, zeta, opz, omz, ratio)


class UnpolarisedVariables(NamedTuple):
    """Screened variables of a spin-unpolarised density (see [`unpolarised_variables`][nlxc.xc.lda.unpolarised_variables])."""

    mask: Array  # point is evaluated (ρ ≥ threshold)
    half: Array  # max(ρ/2, threshold) = ρ̃α = ρ̃β, or 1 on screened points
    n: Array  # 2 · half (clamped total density)
    n_in: Array  # ρ as given (unclamped), 1 on screened points
    rs: Array  # (3/(4πn))^{1/3}
    ratio: Array  # n_in / n where ρ/2 was clamped, exactly 1 (no gradient) elsewhere


def unpolarised_variables(rho: Float[Array, " ngrid"], threshold: float = DENS_THRESHOLD) -> UnpolarisedVariables:
    """[`spin_variables`][nlxc.xc.lda.spin_variables] at ρα = ρβ = ρ/2, from the total density ρ.

    The same screening and clamping (a point is active when ρ ≥ `threshold`; each ρσ = ρ/2 is
    raised to at least `threshold`; screened points get ρσ = 1), so that the ζ = 0 forms of the
    functionals equal their spin-polarised forms at ρα = ρβ, including where a channel is
    clamped. ζ = 0 and 1 ± ζ = 1 there, so they are not returned.

    **Returns:** an [`UnpolarisedVariables`][nlxc.xc.lda.UnpolarisedVariables] `(mask, half, n,
    n_in, rs, ratio)`.
    """
    mask = rho >= threshold
    clamped = 0.5 * rho < threshold
    n_in = jnp.where(mask, rho, 1.0)
    half = jnp.where(mask, jnp.maximum(0.5 * rho, threshold), 1.0)
    n = 2.0 * half
    rs = RS_FACTOR * n ** (-1.0 / 3.0)
    ratio = jnp.where(clamped, n_in / n, 1.0)
    return UnpolarisedVariables(mask, half, n, n_in, rs, ratio)


# --------------------------------------------------------------------------------------------
# Slater exchange
# --------------------------------------------------------------------------------------------


class SlaterExchange(AbstractSemilocalFunctional):
    """Slater (Dirac) local spin-density exchange; libxc `LDA_X` (id 1).

    e_x = −α · (3/4)(6/π)^{1/3} Σσ ρσ^{4/3}   (Hartree / Bohr³),

    the exchange of the uniform electron gas (P. A. M. Dirac, Proc. Camb. Phil. Soc. 26, 376
    (1930), doi:10.1017/S0305004100016108; F. Bloch, Z. Phys. 57, 545 (1929),
    doi:10.1007/BF01340281), written for spin-polarised densities through the spin-scaling
    relation E_x[ρα, ρβ] = ½(E_x[2ρα] + E_x[2ρβ]).

    **Parameters:**

    - `alpha`: overall scale of the exchange (dimensionless; 1 for Dirac exchange, libxc's
      `alpha` parameter of LDA_X).

    Channels with ρσ ≤ `dens_threshold` = 1e-15 contribute nothing (as in libxc).
    """

    family: ClassVar[str] = "lda"
    dens_threshold: ClassVar[float] = 1e-15

    alpha: Float[Array, ""] = parameter(1.0)

    def enhanced_by(self, network: PointwiseNetwork) -> AbstractFunctional:
        """Slater exchange times a learnable enhancement factor: [`nlxc.xc.EnhancedExchange`][].

        A network with 1 input gives a GGA (F_x(s)), with 2 inputs a meta-GGA (F_x(s, α)).
        The enhancement replaces `alpha` (which must be 1).

        **Raises:** `TypeError` for a network with another number of inputs.
        """
        n = network.in_features
        if n not in (1, 2):
            raise TypeError(f"an exchange enhancement network needs 1 or 2 inputs (s[, α]), got {n}")
        return EnhancedExchange(network, use_alpha=n == 2)

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        v = spin_variables(rho, self.dens_threshold)
        e = 0.0
        for r in (v.rho_a, v.rho_b):
            active = v.mask & (r > self.dens_threshold)
            r = jnp.where(active, r, 1.0)
            e = e + jnp.where(active, -X_FACTOR_C * r ** (4.0 / 3.0), 0.0)
        return self.alpha * e * v.ratio

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        # spin scaling at ζ = 0: twice the exchange of one channel ρσ = ρ/2
        half = 0.5 * rho
        active = half > self.dens_threshold
        r = jnp.where(active, half, 1.0)
        return self.alpha * jnp.where(active, 2.0 * (-X_FACTOR_C * r ** (4.0 / 3.0)), 0.0)


# --------------------------------------------------------------------------------------------
# Vosko–Wilk–Nusair
# --------------------------------------------------------------------------------------------


def _vwn_aux(A, b, c, x0, rs):
    """The VWN interpolation formula (eq. 4.4 of VWN), ε(r_s) in Hartree for one (A, b, c, x0)."""
    x = jnp.sqrt(rs)
    fx = rs + b * x + c
    q = jnp.sqrt(4.0 * c - b * b)
    f1 = 2.0 * b / q
    f2 = b * x0 / (x0 * x0 + b * x0 + c)
    f3 = 2.0 * (2.0 * x0 + b) / q
    return A * (
        jnp.log(rs / fx)
        + (f1 - f2 * f3) * jnp.arctan(q / (2.0 * x + b))
        - f2 * jnp.log((x - x0) ** 2 / fx)
    )


_VWN_FPP = 4.0 / (9.0 * (2.0 ** (1.0 / 3.0) - 1.0))  # f''(0)


class VWN5Correlation(AbstractSemilocalFunctional):
    """Vosko–Wilk–Nusair correlation, the "VWN5" fit to Ceperley–Alder; libxc `LDA_C_VWN` (id 7).

    S. H. Vosko, L. Wilk, M. Nusair, Can. J. Phys. 58, 1200 (1980), doi:10.1139/p80-159.

    ε_c(r_s, ζ) = ε_P(r_s) + α_c(r_s) f(ζ)/f''(0) (1 − ζ⁴) + [ε_F(r_s) − ε_P(r_s)] f(ζ) ζ⁴,

    each of ε_P (paramagnetic), ε_F (ferromagnetic) and α_c (spin stiffness) being the VWN Padé
    form A{ln(x²/X) + 2b/Q atan(Q/(2x+b)) − b x₀/X(x₀)[ln((x−x₀)²/X) + 2(b+2x₀)/Q atan(Q/(2x+b))]}
    with x = √r_s, X(x) = x² + bx + c, Q = √(4c − b²). e_c = n ε_c in Hartree / Bohr³.

    **Parameters** (length-3 arrays ordered (paramagnetic, ferromagnetic, spin stiffness);
    libxc's values, the paper's Rydberg values halved to Hartree):

    - `A`: amplitudes (0.0310907, 0.01554535, −1/(6π²)) Hartree.
    - `b`, `c`, `x0`: the Padé coefficients of each fit (dimensionless, in units of √r_s).

    Points with ρα + ρβ < 1e-15 give zero, like libxc.
    """

    family: ClassVar[str] = "lda"
    dens_threshold: ClassVar[float] = 1e-15

    A: Float[Array, "3"] = parameter((0.0310907, 0.01554535, -1.0 / (6.0 * math.pi**2)))
    b: Float[Array, "3"] = parameter((3.72744, 7.06042, 1.13107))
    c: Float[Array, "3"] = parameter((12.9352, 18.0578, 13.0045))
    x0: Float[Array, "3"] = parameter((-0.10498, -0.32500, -0.0047584))

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        v = spin_variables(rho, self.dens_threshold)
        # the three fits at once: parameters (3, 1) against r_s (1, ngrid)
        e_p, e_f, a_c = _vwn_aux(*(p[:, None] for p in (self.A, self.b, self.c, self.x0)), v.rs[None])
        fz = f_zeta(v.opz, v.omz)
        z4 = v.zeta**4
        eps = e_p + a_c * fz * (1.0 - z4) / _VWN_FPP + (e_f - e_p) * fz * z4
        return jnp.where(v.mask, v.n_in * eps, 0.0)

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        # ζ = 0: f(ζ) = 0, only the paramagnetic fit
        v = unpolarised_variables(rho, self.dens_threshold)
        e_p = _vwn_aux(self.A[0], self.b[0], self.c[0], self.x0[0], v.rs)
        return jnp.where(v.mask, v.n_in * e_p, 0.0)


class VWNRPACorrelation(AbstractSemilocalFunctional):
    """Vosko–Wilk–Nusair fit to the RPA correlation ("VWN3"/"VWN_RPA"); libxc `LDA_C_VWN_RPA`
    (id 8), the LDA correlation in libxc's (and PySCF's) B3LYP.

    S. H. Vosko, L. Wilk, M. Nusair, Can. J. Phys. 58, 1200 (1980), doi:10.1139/p80-159.

    ε_c(r_s, ζ) = ε_P(r_s) [1 − f(ζ)] + ε_F(r_s) f(ζ)   (Hartree),

    with the VWN Padé form (see [`VWN5Correlation`][nlxc.xc.lda.VWN5Correlation]) fitted to the
    RPA paramagnetic and ferromagnetic gases, and f(ζ) the von Barth–Hedin interpolation.

    **Parameters** (length-2 arrays, (paramagnetic, ferromagnetic)):

    - `A`: amplitudes (0.0310907, 0.01554535) Hartree.
    - `b`, `c`, `x0`: the Padé coefficients (13.0720, 20.1231), (42.7198, 101.578),
      (−0.409286, −0.743294).
    """

    family: ClassVar[str] = "lda"
    dens_threshold: ClassVar[float] = 1e-15

    A: Float[Array, "2"] = parameter((0.0310907, 0.01554535))
    b: Float[Array, "2"] = parameter((13.0720, 20.1231))
    c: Float[Array, "2"] = parameter((42.7198, 101.578))
    x0: Float[Array, "2"] = parameter((-0.409286, -0.743294))

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        v = spin_variables(rho, self.dens_threshold)
        e_p, e_f = _vwn_aux(*(p[:, None] for p in (self.A, self.b, self.c, self.x0)), v.rs[None])
        fz = f_zeta(v.opz, v.omz)
        return jnp.where(v.mask, v.n_in * (e_p * (1.0 - fz) + e_f * fz), 0.0)

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        # ζ = 0: f(ζ) = 0, only the paramagnetic fit
        v = unpolarised_variables(rho, self.dens_threshold)
        e_p = _vwn_aux(self.A[0], self.b[0], self.c[0], self.x0[0], v.rs)
        return jnp.where(v.mask, v.n_in * e_p, 0.0)


# --------------------------------------------------------------------------------------------
# Perdew–Wang 1992
# --------------------------------------------------------------------------------------------


class PW92Correlation(AbstractSemilocalFunctional):
    """Perdew–Wang 1992 local spin-density correlation; libxc `LDA_C_PW` (id 12).

    J. P. Perdew and Y. Wang, Phys. Rev. B 45, 13244 (1992), doi:10.1103/PhysRevB.45.13244.

    e_c = n ε_c(r_s, ζ) (Hartree / Bohr³), with ε_c from
    [`pw92_correlation_per_particle`][nlxc.xc.lda.pw92_correlation_per_particle].

    **Parameters** (length-3 arrays ordered (ε_c(ζ=0), ε_c(ζ=1), −α_c); the defaults are libxc's
    LDA_C_PW values; `PW92Correlation.modified()` gives LDA_C_PW_MOD, id 13):

    - `a` (Hartree), `alpha1`, `beta1` … `beta4`: the fit G(r_s) of PW92 eq. (10) (p = 1).
    - `fz20`: f''(0) used in the spin interpolation (1.709921 in LDA_C_PW).

    Points with ρα + ρβ < 1e-15 give zero, like libxc.
    """

    family: ClassVar[str] = "lda"
    dens_threshold: ClassVar[float] = 1e-15

    a: Float[Array, "3"] = parameter(PW92_PARAMS.a)
    alpha1: Float[Array, "3"] = parameter(PW92_PARAMS.alpha1)
    beta1: Float[Array, "3"] = parameter(PW92_PARAMS.beta1)
    beta2: Float[Array, "3"] = parameter(PW92_PARAMS.beta2)
    beta3: Float[Array, "3"] = parameter(PW92_PARAMS.beta3)
    beta4: Float[Array, "3"] = parameter(PW92_PARAMS.beta4)
    fz20: Float[Array, ""] = parameter(PW92_PARAMS.fz20)

    @classmethod
    def modified(cls) -> PW92Correlation:
        """libxc's LDA_C_PW_MOD (id 13) parameters (those of PBE correlation)."""
        return cls(**PW92_MOD_PARAMS._asdict())

    @property
    def params(self) -> PW92Params:
        """The current (possibly trained) parameters as a `PW92Params`."""
        return PW92Params(self.a, self.alpha1, self.beta1, self.beta2, self.beta3, self.beta4,
                          self.fz20)

    def per_particle(self, rs, zeta, opz, omz):
        """ε_c(r_s, ζ) in Hartree, given 1 ± ζ (already clamped) as well as ζ."""
        return pw92_epsilon(rs, zeta, f_zeta(opz, omz), self.params)

    def per_particle_unpolarised(self, rs):
        """ε_c(r_s, ζ = 0) in Hartree: the paramagnetic fit alone."""
        return pw92_epsilon_unpolarised(rs, self.params)

    def enhanced_by(self, network: PointwiseNetwork) -> AbstractFunctional:
        """PW92 correlation times a learnable factor: [`nlxc.xc.EnhancedCorrelation`][].

        A network with 3 inputs (s, ζ², r_s) gives a GGA; with 4 inputs (s, α, ζ², r_s) a
        self-interaction-free meta-GGA. Uses the LDA_C_PW_MOD parameters whatever `self` holds.

        **Raises:** `TypeError` for a network with another number of inputs.
        """
        n = network.in_features
        if n not in (3, 4):
            raise TypeError(f"a correlation network needs 3 or 4 inputs (s[, α], ζ², r_s), got {n}")
        return EnhancedCorrelation(network, use_alpha=n == 4, self_interaction_free=n == 4)

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        v = spin_variables(rho, self.dens_threshold)
        return jnp.where(v.mask, v.n_in * self.per_particle(v.rs, v.zeta, v.opz, v.omz), 0.0)

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        v = unpolarised_variables(rho, self.dens_threshold)
        return jnp.where(v.mask, v.n_in * self.per_particle_unpolarised(v.rs), 0.0)
