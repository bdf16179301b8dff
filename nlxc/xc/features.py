"""Semilocal density features: r_s, spin polarisation ζ, reduced gradient s, iso-orbital
indicator α and the Weizsäcker ratio z = τ_W/τ.

All quantities are dimensionless except r_s (Bohr) and are computed from the spin-resolved
[`nlxc.Density`][] on the grid, with libxc's density threshold: where the density is below it the
features take their uniform-gas values (s = 0, α = 1, z = 0, ζ = 0, r_s = r_s(threshold)) and
carry zero derivatives, so models built on them stay finite (a "double where").

Definitions (atomic units; n the density the feature is taken of):

- r_s = (3 / (4π n))^{1/3}, the Wigner–Seitz radius;
- ζ = (n↑ − n↓) / (n↑ + n↓);
- s = |∇n| / (2 (3π²)^{1/3} n^{4/3}), the reduced gradient (Perdew, Burke, Ernzerhof, Phys. Rev.
  Lett. 77, 3865 (1996), doi:10.1103/PhysRevLett.77.3865);
- α = (τ − τ_W) / τ_UEG with τ_W = |∇n|²/(8n) and τ_UEG = (3/10)(3π²)^{2/3} n^{5/3}, the iso-orbital
  indicator (Sun, Ruzsinszky, Perdew, Phys. Rev. Lett. 115, 036402 (2015),
  doi:10.1103/PhysRevLett.115.036402); α = 0 for one orbital, α = 1 for the uniform gas;
- z = τ_W / τ ∈ [0, 1], 1 for one orbital (Tao, Perdew, Staroverov, Scuseria, Phys. Rev. Lett. 91,
  146401 (2003), doi:10.1103/PhysRevLett.91.146401).

`SpinChannelFeatures` gives the same for the spin-scaled densities 2ρσ, which is what exchange
enhancement factors read (exchange spin scaling, Oliver & Perdew, Phys. Rev. A 20, 397 (1979),
doi:10.1103/PhysRevA.20.397).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..constants import KF_FACTOR, TAU_UEG_FACTOR
from ._util import DENS_THRESHOLD

__all__ = [
    "LocalFeatures",
    "SpinChannelFeatures",
    "iso_orbital_indicator",
    "reduced_gradient",
    "spin_polarisation",
    "weizsaecker_ratio",
    "wigner_seitz_radius",
]


def _safe(mask, x, fill=1.0):
    return jnp.where(mask, x, fill)


def wigner_seitz_radius(n: Float[Array, "*shape"], threshold: float = DENS_THRESHOLD) -> Float[Array, "*shape"]:
    """r_s = (3/(4πn))^{1/3} in Bohr; densities below `threshold` are raised to it."""
    return (3.0 / (4.0 * math.pi * jnp.maximum(n, threshold))) ** (1.0 / 3.0)


def spin_polarisation(rho: Float[Array, "2 *shape"], threshold: float = DENS_THRESHOLD) -> Float[Array, "*shape"]:
    """ζ = (ρα − ρβ)/(ρα + ρβ) ∈ [−1, 1]; 0 where ρα + ρβ < `threshold`."""
    n = rho[0] + rho[1]
    mask = n >= threshold
    return jnp.where(mask, jnp.clip((rho[0] - rho[1]) / _safe(mask, n), -1.0, 1.0), 0.0)


def reduced_gradient(
    n: Float[Array, "*shape"], grad_sq: Float[Array, "*shape"], threshold: float = DENS_THRESHOLD
) -> Float[Array, "*shape"]:
    """s = |∇n| / (2(3π²)^{1/3} n^{4/3}) from n and |∇n|²; 0 where n < `threshold`.

    The square root has a zero derivative at |∇n| = 0 here (instead of an infinite one), so
    gradients through s stay finite at critical points of the density.
    """
    mask = n >= threshold
    nn = _safe(mask, n)
    s2 = jnp.maximum(grad_sq, 0.0) / (4.0 * KF_FACTOR**2 * nn ** (8.0 / 3.0))
    positive = mask & (s2 > 0.0)
    return jnp.where(positive, jnp.sqrt(_safe(positive, s2)), 0.0)


def iso_orbital_indicator(
    n: Float[Array, "*shape"],
    grad_sq: Float[Array, "*shape"],
    tau: Float[Array, "*shape"],
    threshold: float = DENS_THRESHOLD,
) -> Float[Array, "*shape"]:
    """α = (τ − τ_W)/τ_UEG ≥ 0 (clipped at 0 against rounding); 1 where n < `threshold`.

    τ is the kinetic-energy density with libxc's ½ (τ = ½ Σᵢ|∇φᵢ|²) of the density n.
    """
    mask = n >= threshold
    nn = _safe(mask, n)
    tau_w = jnp.maximum(grad_sq, 0.0) / (8.0 * nn)
    alpha = (tau - tau_w) / (TAU_UEG_FACTOR * nn ** (5.0 / 3.0))
    return jnp.where(mask, jnp.maximum(alpha, 0.0), 1.0)


def weizsaecker_ratio(
    n: Float[Array, "*shape"],
    grad_sq: Float[Array, "*shape"],
    tau: Float[Array, "*shape"],
    threshold: float = DENS_THRESHOLD,
) -> Float[Array, "*shape"]:
    """z = τ_W/τ = |∇n|²/(8nτ), clipped to [0, 1]; 0 where n < `threshold` or τ = 0."""
    mask = (n >= threshold) & (tau > 0.0)
    z = jnp.maximum(grad_sq, 0.0) / (8.0 * _safe(mask, n) * _safe(mask, tau))
    return jnp.where(mask, jnp.clip(z, 0.0, 1.0), 0.0)


class LocalFeatures(eqx.Module):
    """Features of the total density n = ρα + ρβ at each grid point, shape `(ngrid,)` each.

    - `n`: total density (electrons / Bohr³); `mask`: n ≥ threshold.
    - `rs` (Bohr), `zeta`, `s`, `alpha`, `z`: see the module docstring; `alpha` is taken
      relative to the spin-polarised uniform gas, α = (τ − τ_W)/(τ_UEG(n) d_s(ζ)) with
      d_s = ((1+ζ)^{5/3} + (1−ζ)^{5/3})/2 (as in SCAN), so α = 1 for a uniform gas of any ζ.
    """

    n: Float[Array, " ngrid"]
    mask: Bool[Array, " ngrid"]
    rs: Float[Array, " ngrid"]
    zeta: Float[Array, " ngrid"]
    s: Float[Array, " ngrid"]
    alpha: Float[Array, " ngrid"]
    z: Float[Array, " ngrid"]

    @classmethod
    def from_density(cls, density, threshold: float = DENS_THRESHOLD) -> LocalFeatures:
        """From a [`nlxc.Density`][] (uses ρ, σ and τ of both spins)."""
        return cls.from_arrays(density.rho, density.sigma, density.tau, threshold)

    @classmethod
    def from_arrays(
        cls,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
        threshold: float = DENS_THRESHOLD,
    ) -> LocalFeatures:
        """From ρσ `(2, ngrid)`, σσσ' `(3, ngrid)` and τσ `(2, ngrid)` (libxc's conventions)."""
        n = rho[0] + rho[1]
        grad_sq = sigma[0] + 2.0 * sigma[1] + sigma[2]
        tau = tau[0] + tau[1]
        zeta = spin_polarisation(rho, threshold)
        # spin-polarised uniform gas: τ_unif = τ_UEG(n) d_s(ζ), d_s = ((1+ζ)^{5/3} + (1−ζ)^{5/3})/2
        ds = 0.5 * ((1.0 + zeta) ** (5.0 / 3.0) + jnp.maximum(1.0 - zeta, 0.0) ** (5.0 / 3.0))
        return cls(
            n=n,
            mask=n >= threshold,
            rs=wigner_seitz_radius(n, threshold),
            zeta=zeta,
            s=reduced_gradient(n, grad_sq, threshold),
            alpha=iso_orbital_indicator(n, grad_sq, tau, threshold) / ds,
            z=weizsaecker_ratio(n, grad_sq, tau, threshold),
        )

    @classmethod
    def unpolarised(
        cls,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
        threshold: float = DENS_THRESHOLD,
    ) -> LocalFeatures:
        """From the total n `(ngrid,)`, |∇n|² `(ngrid,)` and τ `(ngrid,)` of a spin-unpolarised
        density: [`from_arrays`][nlxc.xc.LocalFeatures.from_arrays] at ρα = ρβ = n/2, with ζ = 0."""
        return cls(
            n=rho,
            mask=rho >= threshold,
            rs=wigner_seitz_radius(rho, threshold),
            zeta=jnp.zeros_like(rho),
            s=reduced_gradient(rho, sigma, threshold),
            alpha=iso_orbital_indicator(rho, sigma, tau, threshold),
            z=weizsaecker_ratio(rho, sigma, tau, threshold),
        )


class SpinChannelFeatures(eqx.Module):
    """Features of the spin-scaled densities nσ = 2ρσ, shape `(2, ngrid)` each (σ = α, β), or
    `(1, ngrid)` for the one channel of a spin-unpolarised density
    ([`unpolarised`][nlxc.xc.SpinChannelFeatures.unpolarised]).

    - `rho`: ρσ (not doubled); `mask`: ρσ > threshold.
    - `s`, `alpha`, `z`: reduced gradient, iso-orbital indicator and τ_W/τ of 2ρσ (with
      ∇(2ρσ) and 2τσ). These are invariant under uniform coordinate scaling
      ρ(r) → λ³ρ(λr), which is what makes E_x = Σσ ∫ e_x^LDA(ρσ) F(sσ, ασ) scale as λ.
    """

    rho: Float[Array, "2 ngrid"]
    mask: Bool[Array, "2 ngrid"]
    s: Float[Array, "2 ngrid"]
    alpha: Float[Array, "2 ngrid"]
    z: Float[Array, "2 ngrid"]

    @classmethod
    def from_density(cls, density, threshold: float = DENS_THRESHOLD) -> SpinChannelFeatures:
        """From a [`nlxc.Density`][] (uses ρσ, σσσ and τσ)."""
        return cls.from_arrays(density.rho, density.sigma, density.tau, threshold)

    @classmethod
    def from_arrays(
        cls,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
        threshold: float = DENS_THRESHOLD,
    ) -> SpinChannelFeatures:
        """From ρσ `(2, ngrid)`, σσσ' `(3, ngrid)` and τσ `(2, ngrid)` (libxc's conventions)."""
        n = 2.0 * rho
        grad_sq = 4.0 * jnp.stack([sigma[0], sigma[2]])
        tau = 2.0 * tau
        return cls(
            rho=rho,
            mask=rho > threshold,
            s=reduced_gradient(n, grad_sq, threshold),
            alpha=iso_orbital_indicator(n, grad_sq, tau, threshold),
            z=weizsaecker_ratio(n, grad_sq, tau, threshold),
        )

    @classmethod
    def unpolarised(
        cls,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
        threshold: float = DENS_THRESHOLD,
    ) -> SpinChannelFeatures:
        """One spin channel of a spin-unpolarised density, shape `(1, ngrid)` each, from the total
        n, |∇n|² and τ `(ngrid,)`: [`from_arrays`][nlxc.xc.SpinChannelFeatures.from_arrays] at
        ρα = ρβ = n/2 gives this channel twice (2ρσ = n, ∇(2ρσ) = ∇n, 2τσ = τ)."""
        n, grad_sq, tau = rho[None], sigma[None], tau[None]
        half = 0.5 * n
        return cls(
            rho=half,
            mask=half > threshold,
            s=reduced_gradient(n, grad_sq, threshold),
            alpha=iso_orbital_indicator(n, grad_sq, tau, threshold),
            z=weizsaecker_ratio(n, grad_sq, tau, threshold),
        )
