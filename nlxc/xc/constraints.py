"""Exact-constraint layers: learnable semilocal exchange and correlation that satisfy known exact
conditions for *any* parameters, by construction.

A learnable part is a [`PointwiseNetwork`][nlxc.xc.PointwiseNetwork] (declared with the rest of
the functional interface in `nlxc.xc._base` and re-exported here): any module mapping features
`(in_features, ngrid)` to one raw output per grid point (see `nlxc.models.MLP`). The layers here turn
that raw output into an enhancement factor over a uniform-gas baseline:

- [`EnhancedExchange`][nlxc.xc.EnhancedExchange]: E_x = Σσ ∫ e_x^LDA(ρσ) F_x(sσ, ασ) d³r with
  F_x = B(g(x) − g(x_UEG)), B a sigmoid scaled to (0, 1.804) with B(0) = 1. It satisfies the
  uniform-gas limit (F_x = 1 at s = 0, α = 1), the exchange spin-scaling relation
  E_x[ρα, ρβ] = ½(E_x[2ρα] + E_x[2ρβ]), uniform coordinate scaling E_x[ρ_λ] = λE_x[ρ], negativity,
  spin-flip symmetry, and the local Lieb–Oxford bound F_x ≤ 1.804 which, with the spin-scaling
  relation, implies E_x ≥ −1.679 ∫ n^{4/3} for every spin polarisation (Perdew, Burke,
  Ernzerhof, doi:10.1103/PhysRevLett.77.3865; Lieb & Oxford, Int. J. Quantum Chem. 19, 427 (1981),
  doi:10.1002/qua.560190306).
- [`EnhancedCorrelation`][nlxc.xc.EnhancedCorrelation]: E_c = ∫ n ε_c^PW92(r_s, ζ) F_c d³r with
  F_c = B(g(x) − g(x_UEG)) · (1 − z), B ∈ (0, `bound`), B(0) = 1. It is never positive
  (ε_c^PW92 < 0, F_c ≥ 0), reduces to PW92 for the uniform gas at every r_s and ζ, is symmetric
  under spin flip (ζ enters as ζ²) and, with `self_interaction_free=True`, vanishes for every
  one-electron density (z = τ_W/τ = 1 there; the TPSS device, doi:10.1103/PhysRevLett.91.146401).

Both are semilocal, hence size-consistent. Their raw networks are evaluated twice per point (at
x and at the uniform-gas reference x_UEG), so the pinning is exact in floating point.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..constants import LIEB_OXFORD_BOUND, X_FACTOR_C
from ._base import AbstractSemilocalFunctional, Family, PointwiseNetwork
from ._uniform_gas import PW92_MOD_PARAMS, pw92_correlation_per_particle, pw92_epsilon_unpolarised
from ._util import DENS_THRESHOLD
from .features import LocalFeatures, SpinChannelFeatures

__all__ = [
    "LIEB_OXFORD_BOUND",
    "EnhancedCorrelation",
    "EnhancedExchange",
    "PointwiseNetwork",
    "ScaledSigmoid",
    "squash_alpha",
    "squash_s",
]


class ScaledSigmoid(eqx.Module):
    """B(x) = lower + (upper − lower) σ(x + c), with c chosen so that B(0) = `at_zero`.

    A bounded output layer: B maps ℝ onto (lower, upper), monotonically, and B(0) = at_zero
    exactly up to rounding. Raises `ValueError` unless lower < at_zero < upper.
    """

    lower: float = eqx.field(static=True)
    upper: float = eqx.field(static=True)
    at_zero: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if not self.lower < self.at_zero < self.upper:
            raise ValueError(f"ScaledSigmoid needs lower < at_zero < upper, got {self.lower}, {self.at_zero}, {self.upper}")

    def __call__(self, x):
        t = (self.at_zero - self.lower) / (self.upper - self.lower)
        return self.lower + (self.upper - self.lower) * jax.nn.sigmoid(x + math.log(t / (1.0 - t)))


def squash_s(s: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """u = s²/(1 + s²) ∈ [0, 1): the reduced gradient mapped to a bounded network input (0 at s = 0)."""
    s2 = s * s
    return s2 / (1.0 + s2)


def squash_alpha(alpha: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """w = (1 − α)/(1 + α) ∈ (−1, 1]: α mapped to a bounded input (0 at α = 1, 1 at α = 0)."""
    return (1.0 - alpha) / (1.0 + alpha)


class EnhancedExchange(AbstractSemilocalFunctional):
    """Learnable exchange E_x = Σσ ∫ e_x^LDA(ρσ) F_x(sσ, ασ) d³r (Hartree), constrained.

    e_x^LDA(ρσ) = −X_FACTOR_C ρσ^{4/3}, X_FACTOR_C = (3/4)(6/π)^{1/3} (`nlxc.constants`), is
    Slater exchange of one spin channel (libxc LDA_X, ID 1) and sσ, ασ are the reduced gradient
    and iso-orbital indicator of 2ρσ. The network g reads x = (u, w) with u = s²/(1+s²) and
    w = (1−α)/(1+α) (only u when `use_alpha=False`, a GGA), and F_x = B(g(x) − g(0)) with B = `ScaledSigmoid(0, bound, 1)`. See the module
    docstring for the constraints this satisfies for every parameter value.

    Usually built as `SlaterExchange() * network`.

    **Fields:** `network` (a [`PointwiseNetwork`][nlxc.xc.PointwiseNetwork] taking 1 or 2
    features), `use_alpha` (static), `bound` (static, default 1.804).
    """

    network: PointwiseNetwork
    use_alpha: bool = eqx.field(static=True, default=True)
    bound: float = eqx.field(static=True, default=LIEB_OXFORD_BOUND)

    @property
    def family(self) -> Family:
        """`"mgga"` with `use_alpha` (F_x reads α, hence τ), else `"gga"`."""
        return "mgga" if self.use_alpha else "gga"

    def inputs(self, features: SpinChannelFeatures) -> Float[Array, "nfeat nchannel ngrid"]:
        """Network inputs (u, w) per spin channel, `(nfeat, nchannel, ngrid)` (2 channels, or 1
        for a spin-unpolarised density)."""
        x = [squash_s(features.s)]
        if self.use_alpha:
            x.append(squash_alpha(features.alpha))
        return jnp.stack(x)

    def enhancement_factor(self, features: SpinChannelFeatures) -> Float[Array, "nchannel ngrid"]:
        """F_x per spin channel, `(nchannel, ngrid)`, in (0, bound)."""
        x = self.inputs(features)
        nfeat, nchannel, ngrid = x.shape
        raw = self.network(x.reshape(nfeat, nchannel * ngrid)).reshape(nchannel, ngrid)
        reference = self.network(jnp.zeros((nfeat, 1)))[0]
        return ScaledSigmoid(0.0, self.bound, 1.0)(raw - reference)

    def energy_density(self, rho, sigma, tau):
        features = SpinChannelFeatures.from_arrays(rho, sigma, tau, DENS_THRESHOLD)
        r = jnp.where(features.mask, rho, 1.0)
        lda = jnp.where(features.mask, -X_FACTOR_C * r ** (4.0 / 3.0), 0.0)
        return jnp.sum(lda * self.enhancement_factor(features), axis=0)

    def energy_density_unpolarised(self, rho, sigma, tau):
        # spin scaling at ζ = 0: twice one channel ρσ = ρ/2 (one network evaluation per point)
        features = SpinChannelFeatures.unpolarised(rho, sigma, tau, DENS_THRESHOLD)
        r = jnp.where(features.mask, features.rho, 1.0)
        lda = jnp.where(features.mask, -X_FACTOR_C * r ** (4.0 / 3.0), 0.0)
        return 2.0 * (lda * self.enhancement_factor(features))[0]


class EnhancedCorrelation(AbstractSemilocalFunctional):
    """Learnable correlation E_c = ∫ n ε_c^PW92(r_s, ζ) F_c d³r (Hartree), constrained.

    ε_c^PW92 is Perdew–Wang 1992 correlation per particle with libxc's LDA_C_PW_MOD parameters
    (ID 13; doi:10.1103/PhysRevB.45.13244). The network reads x = (u, w, ζ², v) with
    u = s²/(1+s²), w = (1−α)/(1+α) (if `use_alpha`), v = r_s/(1 + r_s); the pinned reference is
    x_UEG = (0, 0, ζ², v) at the same point, and F_c = B(g(x) − g(x_UEG)) · (1 − z) with
    B = `ScaledSigmoid(0, bound, 1)` and z = τ_W/τ of the total density (the factor is 1 when
    `self_interaction_free=False`; it needs τ, i.e. a meta-GGA).

    Usually built as `PW92Correlation.modified() * network`.
    """

    network: PointwiseNetwork
    use_alpha: bool = eqx.field(static=True, default=True)
    self_interaction_free: bool = eqx.field(static=True, default=True)
    bound: float = eqx.field(static=True, default=2.0)

    @property
    def family(self) -> Family:
        """`"mgga"` when F_c reads α or z = τ_W/τ (both need τ), else `"gga"`."""
        return "mgga" if (self.use_alpha or self.self_interaction_free) else "gga"

    def enhancement_factor(self, features: LocalFeatures) -> Float[Array, " ngrid"]:
        """F_c per grid point, `(ngrid,)`, in [0, bound)."""
        v = features.rs / (1.0 + features.rs)
        zeta2 = features.zeta**2
        x = [squash_s(features.s)]
        if self.use_alpha:
            x.append(squash_alpha(features.alpha))
        x = jnp.stack(x + [zeta2, v])
        reference = jnp.concatenate([jnp.zeros_like(x[:-2]), x[-2:]])
        raw = self.network(jnp.concatenate([x, reference], axis=1))
        ngrid = features.n.shape[0]
        f = ScaledSigmoid(0.0, self.bound, 1.0)(raw[:ngrid] - raw[ngrid:])
        if self.self_interaction_free:
            f = f * (1.0 - features.z)
        return f

    def energy_density(self, rho, sigma, tau):
        features = LocalFeatures.from_arrays(rho, sigma, tau, DENS_THRESHOLD)
        eps = pw92_correlation_per_particle(features.rs, features.zeta, PW92_MOD_PARAMS)
        e = jnp.where(features.mask, features.n * eps, 0.0)
        return e * self.enhancement_factor(features)

    def energy_density_unpolarised(self, rho, sigma, tau):
        # ζ = 0: the paramagnetic PW92 fit; the network still reads ζ² = 0
        features = LocalFeatures.unpolarised(rho, sigma, tau, DENS_THRESHOLD)
        eps = pw92_epsilon_unpolarised(features.rs, PW92_MOD_PARAMS)
        e = jnp.where(features.mask, features.n * eps, 0.0)
        return e * self.enhancement_factor(features)

