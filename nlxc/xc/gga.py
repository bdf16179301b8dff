"""Generalised-gradient approximations: B88 and PBE exchange, PBE and LYP correlation.

All functionals are spin-polarised, written in JAX, and validated against libxc 7 (energies and
first derivatives); potentials come from automatic differentiation only.

Inputs follow [`AbstractSemilocalFunctional.energy_density`][nlxc.xc.AbstractSemilocalFunctional]:
ρ = (ρα, ρβ) and σ = (σαα, σαβ, σββ) with σσσ' = ∇ρσ·∇ρσ', so |∇ρ|² = σαα + 2σαβ + σββ.
Screening mimics libxc's `work_gga`: a point with ρα + ρβ < `dens_threshold` gives zero; otherwise
ρσ ← max(ρσ, dens_threshold), σσσ ← max(σσσ, dens_threshold^{8/3}) and σαβ is clipped to
±(σαα + σββ)/2, so that |∇ρ|² ≥ 0. Units: Hartree and Bohr; energy densities are per unit volume.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..constants import TAU_UEG_FACTOR, X2S, X_FACTOR_C
from ._base import AbstractSemilocalFunctional
from ._util import DENS_THRESHOLD, parameter
from .lda import PW92Correlation, spin_variables, unpolarised_variables

__all__ = [
    "PBE_KAPPA",
    "PBE_MU",
    "B88Exchange",
    "LYPCorrelation",
    "PBECorrelation",
    "PBEExchange",
    "clamp_sigma",
    "clamp_sigma_unpolarised",
]

# The exchange functionals use s = X2S · x_σ (nlxc.constants.X2S), with x_σ = |∇ρσ| / ρσ^{4/3}
# and s the reduced gradient of the density 2ρσ.

PBE_KAPPA = 0.8040
"""κ of PBE exchange: F_x ≤ 1 + κ, the local Lieb–Oxford bound (doi:10.1103/PhysRevLett.77.3865)."""

PBE_MU = 0.2195149727645171
"""μ = β π²/3 of PBE exchange, β = 0.06672455060314922 (doi:10.1103/PhysRevLett.77.3865)."""


def clamp_sigma(
    sigma: Float[Array, "3 ngrid"], threshold: float = DENS_THRESHOLD
) -> tuple[Float[Array, " ngrid"], Float[Array, " ngrid"], Float[Array, " ngrid"]]:
    """libxc's sanity clamps on the gradient invariants (see the module docstring).

    **Returns:** (σαα, σαβ, σββ) with σσσ ≥ threshold^{8/3} and |σαβ| ≤ (σαα + σββ)/2.
    """
    floor = (threshold ** (4.0 / 3.0)) ** 2
    saa = jnp.maximum(sigma[0], floor)
    sbb = jnp.maximum(sigma[2], floor)
    s_ave = 0.5 * (saa + sbb)
    # inside the bound (its edge included: a closed shell sits on it) the derivative is that of
    # σαβ itself, as libxc's; `jnp.clip` alone would split it with the bound there, which gave
    # wrong second derivatives along α − β (triplet excitation energies)
    sab = jnp.where(jnp.abs(sigma[1]) <= s_ave, sigma[1], jnp.clip(sigma[1], -s_ave, s_ave))
    return saa, sab, sbb


def clamp_sigma_unpolarised(sigma: Float[Array, " ngrid"], threshold: float = DENS_THRESHOLD) -> tuple[
    Float[Array, " ngrid"], Float[Array, " ngrid"], Float[Array, " ngrid"]
]:
    """[`clamp_sigma`][nlxc.xc.gga.clamp_sigma] at σαα = σαβ = σββ = σ/4, from σ = |∇n|².

    **Returns:** (σσσ, σαβ, |∇n|²) after the clamps: the same-spin invariant (of either spin),
    the mixed one and the total σαα + 2σαβ + σββ.
    """
    floor = (threshold ** (4.0 / 3.0)) ** 2
    quarter = 0.25 * sigma
    same = jnp.maximum(quarter, floor)
    mixed = jnp.clip(quarter, -same, same)
    return same, mixed, 2.0 * same + 2.0 * mixed


def _exchange_channel_unpolarised(rho, sigma, threshold):
    """(active mask, safe ρσ, safe σσσ) of one spin channel at ρα = ρβ = ρ/2, as
    `_exchange_channels` gives for each channel there (where a channel is active, n_in/n = 1)."""
    half = 0.5 * rho
    active = half > threshold
    same, _, _ = clamp_sigma_unpolarised(sigma, threshold)
    return active, jnp.where(active, half, 1.0), jnp.where(active, same, 1.0)


def _exchange_channels(rho, sigma, threshold):
    """Per-channel (active mask, safe ρσ, safe σσσ) for spin-scaled exchange, and the factor
    n_in/n that turns libxc's per-particle energy of the clamped density into PySCF's e = ε·ρ.

    A channel is active when the point passes the total-density screen and ρσ > threshold
    (libxc's `screen_dens`); inactive channels get ρσ = σσσ = 1 (double-where trick).
    """
    v = spin_variables(rho, threshold)
    saa, _, sbb = clamp_sigma(sigma, threshold)
    out = []
    for r, s in ((v.rho_a, saa), (v.rho_b, sbb)):
        active = v.mask & (r > threshold)
        out.append((active, jnp.where(active, r, 1.0), jnp.where(active, s, 1.0)))
    return out, v.ratio


class B88Exchange(AbstractSemilocalFunctional):
    """Becke 1988 exchange; libxc `GGA_X_B88` (id 106).

    A. D. Becke, Phys. Rev. A 38, 3098 (1988), doi:10.1103/PhysRevA.38.3098.

    e_x = Σσ [ −C_x ρσ^{4/3} − β ρσ^{4/3} xσ² / (1 + γ β xσ asinh xσ) ]   (Hartree / Bohr³),

    with xσ = |∇ρσ| / ρσ^{4/3} (dimensionless) and C_x = (3/4)(6/π)^{1/3} the spin-resolved
    Slater constant.

    **Parameters:**

    - `beta`: β = 0.0042 (atomic units; Becke's fit to the Hartree–Fock exchange energies of
      the noble-gas atoms).
    - `gamma`: γ = 6, the coefficient of the asinh term (fixing the −1/r tail of the
      exchange-energy density).

    Channels with ρσ ≤ 1e-15 contribute nothing (libxc's density threshold for B88).
    """

    family: ClassVar[str] = "gga"
    dens_threshold: ClassVar[float] = 1e-15

    beta: Float[Array, ""] = parameter(0.0042)
    gamma: Float[Array, ""] = parameter(6.0)

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        e = 0.0
        channels, ratio = _exchange_channels(rho, sigma, self.dens_threshold)
        for active, r, s in channels:
            r43 = r ** (4.0 / 3.0)
            x = jnp.sqrt(s) / r43  # s ≥ threshold^{8/3} > 0, so sqrt has a finite derivative
            x2 = s / (r43 * r43)
            f = 1.0 + self.beta / X_FACTOR_C * x2 / (1.0 + self.gamma * self.beta * x * jnp.arcsinh(x))
            e = e + jnp.where(active, -X_FACTOR_C * r43 * f, 0.0)
        return e * ratio

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        # spin scaling at ζ = 0: twice one channel ρσ = ρ/2, σσσ = σ/4
        active, r, s = _exchange_channel_unpolarised(rho, sigma, self.dens_threshold)
        r43 = r ** (4.0 / 3.0)
        x = jnp.sqrt(s) / r43
        x2 = s / (r43 * r43)
        f = 1.0 + self.beta / X_FACTOR_C * x2 / (1.0 + self.gamma * self.beta * x * jnp.arcsinh(x))
        return jnp.where(active, 2.0 * (-X_FACTOR_C * r43 * f), 0.0)


class PBEExchange(AbstractSemilocalFunctional):
    """Perdew–Burke–Ernzerhof exchange; libxc `GGA_X_PBE` (id 101).

    J. P. Perdew, K. Burke, M. Ernzerhof, Phys. Rev. Lett. 77, 3865 (1996),
    doi:10.1103/PhysRevLett.77.3865 (erratum 78, 1396 (1997)).

    e_x = Σσ −C_x ρσ^{4/3} F_x(sσ),  F_x(s) = 1 + κ − κ / (1 + μ s²/κ)   (Hartree / Bohr³),

    with sσ = |∇ρσ| / (2 (6π²)^{1/3} ρσ^{4/3}) the reduced gradient of the density 2ρσ (spin
    scaling) and C_x = (3/4)(6/π)^{1/3}.

    **Parameters:**

    - `kappa`: κ = 0.804, the Lieb–Oxford bound on the enhancement, F_x ≤ 1 + κ.
    - `mu`: μ = β π²/3 = 0.2195149727645171 with β = 0.06672455060314922 (cancels the
      gradient term of PBE correlation in the slowly varying limit).

    Channels with ρσ ≤ 1e-15 contribute nothing (libxc's density threshold for PBE exchange).
    """

    family: ClassVar[str] = "gga"
    dens_threshold: ClassVar[float] = 1e-15

    kappa: Float[Array, ""] = parameter(PBE_KAPPA)
    mu: Float[Array, ""] = parameter(PBE_MU)

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        e = 0.0
        channels, ratio = _exchange_channels(rho, sigma, self.dens_threshold)
        for active, r, s in channels:
            r43 = r ** (4.0 / 3.0)
            s2 = X2S**2 * s / (r43 * r43)
            f = 1.0 + self.kappa * (1.0 - self.kappa / (self.kappa + self.mu * s2))
            e = e + jnp.where(active, -X_FACTOR_C * r43 * f, 0.0)
        return e * ratio

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        # spin scaling at ζ = 0: twice one channel ρσ = ρ/2, σσσ = σ/4
        active, r, s = _exchange_channel_unpolarised(rho, sigma, self.dens_threshold)
        r43 = r ** (4.0 / 3.0)
        s2 = X2S**2 * s / (r43 * r43)
        f = 1.0 + self.kappa * (1.0 - self.kappa / (self.kappa + self.mu * s2))
        return jnp.where(active, 2.0 * (-X_FACTOR_C * r43 * f), 0.0)


class PBECorrelation(AbstractSemilocalFunctional):
    """Perdew–Burke–Ernzerhof correlation; libxc `GGA_C_PBE` (id 130).

    J. P. Perdew, K. Burke, M. Ernzerhof, Phys. Rev. Lett. 77, 3865 (1996),
    doi:10.1103/PhysRevLett.77.3865.

    e_c = n [ε_c^PW92(r_s, ζ) + H(r_s, ζ, t)],
    H = γ φ³ ln{1 + (β/γ) t² (1 + A t²) / (1 + A t² + A² t⁴)},
    A = (β/γ) / (exp(−ε_c^PW92 / (γ φ³)) − 1),

    with φ = [(1+ζ)^{2/3} + (1−ζ)^{2/3}]/2, t = |∇n| / (2 φ k_s n), k_s = (4 k_F/π)^{1/2},
    k_F = (3π²n)^{1/3}. ε_c^PW92 is Perdew–Wang 1992 with libxc's LDA_C_PW_MOD parameters
    (fz20 = 1.709920934161365617563962776245), held in the trainable submodule `pw`. Energies in
    Hartree / Bohr³. The sum ε_PW + H is evaluated in the algebraically equivalent form
    γφ³ ln[1 + (e^{−y} − 1)/(1 + A t²(1 + A t²))], y = −ε_PW/(γφ³), which has no cancellation in
    the low-density, large-gradient tails where H → −ε_PW (there libxc's value loses up to ~3
    digits; nlxc's agrees with a 40-digit evaluation to ~1e-14).

    **Parameters:**

    - `beta`: β = 0.06672455060314922, the second-order gradient coefficient.
    - `gamma`: γ = (1 − ln 2)/π² (Hartree), fixed by the high-density scaling.
    - `pw`: the [`PW92Correlation`][nlxc.xc.lda.PW92Correlation] local part.

    Points with ρα + ρβ < 1e-12 give zero (libxc's density threshold for GGA_C_PBE).
    """

    family: ClassVar[str] = "gga"
    dens_threshold: ClassVar[float] = 1e-12

    beta: Float[Array, ""] = parameter(0.06672455060314922)
    gamma: Float[Array, ""] = parameter((1.0 - math.log(2.0)) / math.pi**2)
    pw: PW92Correlation = eqx.field(default_factory=PW92Correlation.modified)

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        v = spin_variables(rho, self.dens_threshold)
        mask, n, rs, zeta, opz, omz = v.mask, v.n, v.rs, v.zeta, v.opz, v.omz
        saa, sab, sbb = clamp_sigma(sigma, self.dens_threshold)
        sigma_t = jnp.where(mask, saa + 2.0 * sab + sbb, 0.0)
        eps_pw = self.pw.per_particle(rs, zeta, opz, omz)
        phi = 0.5 * (opz ** (2.0 / 3.0) + omz ** (2.0 / 3.0))
        return jnp.where(mask, v.n_in * self._per_particle(eps_pw, phi, sigma_t, rs, n), 0.0)

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        # ζ = 0: φ = 1 and the paramagnetic PW92 fit alone
        v = unpolarised_variables(rho, self.dens_threshold)
        _, _, sigma_t = clamp_sigma_unpolarised(sigma, self.dens_threshold)
        sigma_t = jnp.where(v.mask, sigma_t, 0.0)
        eps_pw = self.pw.per_particle_unpolarised(v.rs)
        return jnp.where(v.mask, v.n_in * self._per_particle(eps_pw, 1.0, sigma_t, v.rs, v.n), 0.0)

    def _per_particle(self, eps_pw, phi, sigma_t, rs, n):
        """ε_PW + H (Hartree) from ε_PW, φ, the clamped |∇n|², r_s and the clamped n."""
        phi3 = phi**3
        # t² = |∇n|² / (16 · 2^{2/3} φ² r_s n^{8/3})   (libxc's tt with x_t = |∇n| / n^{4/3})
        t2 = sigma_t / (16.0 * 2.0 ** (2.0 / 3.0) * phi * phi * rs * n ** (8.0 / 3.0))
        # With y = −ε_PW/(γφ³) > 0, A = (β/γ)/(e^y − 1) and f₁ = t²(1 + A t²), PBE's
        # H = γφ³ ln[1 + (β/γ) f₁/(1 + A f₁)] equals −ε_PW + γφ³ ln[1 + (e^{−y} − 1)/(1 + A f₁)].
        # The second form gives ε_PW + H without the catastrophic cancellation of the two terms at
        # large t (low-density tails), where H → −ε_PW.
        y = -eps_pw / (self.gamma * phi3)
        a = self.beta / (self.gamma * jnp.expm1(y))
        f1 = t2 * (1.0 + a * t2)
        return self.gamma * phi3 * jnp.log1p(jnp.expm1(-y) / (1.0 + a * f1))


class LYPCorrelation(AbstractSemilocalFunctional):
    """Lee–Yang–Parr correlation, in the Miehlich–Savin–Stoll–Preuss form; libxc `GGA_C_LYP`
    (id 131).

    C. Lee, W. Yang, R. G. Parr, Phys. Rev. B 37, 785 (1988), doi:10.1103/PhysRevB.37.785;
    B. Miehlich, A. Savin, H. Stoll, H. Preuss, Chem. Phys. Lett. 157, 200 (1989),
    doi:10.1016/0009-2614(89)87234-3 (eq. 2, no Laplacians).

    e_c = −4a ρα ρβ / (n (1 + d n^{-1/3}))
          − a b ω { ρα ρβ [2^{11/3} C_F (ρα^{8/3} + ρβ^{8/3}) + (47/18 − 7δ/18) |∇n|²
                         − (5/2 − δ/18)(σαα + σββ) − (δ − 11)/9 (ρα σαα + ρβ σββ)/n]
                    − (2/3) n² |∇n|² + (2/3 n² − ρα²) σββ + (2/3 n² − ρβ²) σαα },

    ω = exp(−c n^{-1/3}) n^{-11/3} / (1 + d n^{-1/3}), δ = c n^{-1/3} + d n^{-1/3}/(1 + d n^{-1/3}),
    C_F = (3/10)(3π²)^{2/3}; Hartree / Bohr³.

    **Parameters** (the Colle–Salvetti constants):

    - `a` = 0.04918 and `b` = 0.132 (atomic units): the amplitude of the correlation energy and
      the coefficient of its kinetic-energy (gradient) correction;
    - `c` = 0.2533 and `d` = 0.349 (Bohr): the decay lengths of the Colle–Salvetti correlation
      factor, entering through c n^{-1/3} and d n^{-1/3}.

    The gradient terms are regrouped so that nothing cancels as ζ → ±1 (libxc's form, written in
    1 − ζ² with ζ formed by subtraction, loses digits there).

    Points with ρα + ρβ < 1e-14 give zero (libxc's density threshold for GGA_C_LYP).
    """

    family: ClassVar[str] = "gga"
    dens_threshold: ClassVar[float] = 1e-14

    a: Float[Array, ""] = parameter(0.04918)
    b: Float[Array, ""] = parameter(0.132)
    c: Float[Array, ""] = parameter(0.2533)
    d: Float[Array, ""] = parameter(0.349)

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        v = spin_variables(rho, self.dens_threshold)
        mask, ra, rb, n = v.mask, v.rho_a, v.rho_b, v.n
        saa, sab, sbb = clamp_sigma(sigma, self.dens_threshold)
        sigma_t = saa + 2.0 * sab + sbb
        cf = TAU_UEG_FACTOR  # the Thomas–Fermi constant C_F = (3/10)(3π²)^{2/3}
        r = n ** (-1.0 / 3.0)
        den = 1.0 + self.d * r
        omega = jnp.exp(-self.c * r) / den * n ** (-11.0 / 3.0)
        delta = self.c * r + self.d * r / den
        rab = ra * rb
        n2 = n * n
        bracket = (
            rab * (
                2.0 ** (11.0 / 3.0) * cf * (ra ** (8.0 / 3.0) + rb ** (8.0 / 3.0))
                + (47.0 / 18.0 - 7.0 / 18.0 * delta) * sigma_t
                - (2.5 - delta / 18.0) * (saa + sbb)
                - (delta - 11.0) / 9.0 * (ra * saa + rb * sbb) / n
            )
            # = −(2/3)n²|∇n|² + (2/3 n² − ρα²)σββ + (2/3 n² − ρβ²)σαα, with the (2/3)n²(σαα + σββ)
            # terms cancelled analytically (they cancel catastrophically when ζ → ±1)
            - 4.0 / 3.0 * n2 * sab
            - ra * ra * sbb
            - rb * rb * saa
        )
        e = -4.0 * self.a * rab / (n * den) - self.a * self.b * omega * bracket
        return jnp.where(mask, e * v.ratio, 0.0)

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        # the polarised form at ρα = ρβ = h, σαα = σββ = S, σαβ = A (after the clamps)
        v = unpolarised_variables(rho, self.dens_threshold)
        h, n = v.half, v.n
        same, mixed, sigma_t = clamp_sigma_unpolarised(sigma, self.dens_threshold)
        cf = TAU_UEG_FACTOR
        r = n ** (-1.0 / 3.0)
        den = 1.0 + self.d * r
        omega = jnp.exp(-self.c * r) / den * n ** (-11.0 / 3.0)
        delta = self.c * r + self.d * r / den
        h2 = h * h
        bracket = (
            h2 * (
                2.0 ** (14.0 / 3.0) * cf * h ** (8.0 / 3.0)
                + (47.0 / 18.0 - 7.0 / 18.0 * delta) * sigma_t
                - (5.0 - delta / 9.0) * same
                - (delta - 11.0) / 9.0 * same
            )
            - 4.0 / 3.0 * n * n * mixed
            - 2.0 * h2 * same
        )
        e = -4.0 * self.a * h2 / (n * den) - self.a * self.b * omega * bracket
        return jnp.where(v.mask, e * v.ratio, 0.0)
