"""Meta-GGA functionals: r2SCAN and SCAN exchange and correlation.

All energies are in Hartree, lengths in Bohr; `energy_density` returns the energy per unit volume
(libxc's `zk` times the total density). The formulas and constants follow libxc 7.0's Maple
sources (`maple/mgga_exc/mgga_x_r2scan.mpl`, `mgga_c_r2scan.mpl`, `mgga_x_scan.mpl`,
`mgga_c_scan.mpl` and the rSCAN/PBE/PW92 files they include), and agree with
`pyscf.dft.libxc.eval_xc` to ~1e-11 relative in e_xc and its first derivatives (see
`tests/test_xc_mgga.py` for the exact criterion), including libxc's input sanitation:

- points whose total density is below the functional's density threshold give exactly zero, and
  (exchange) so does a spin channel with ρσ below it;
- ρσ is floored at the density threshold, τσ at 1e-20 and σσσ at (threshold^{4/3})²;
- σσσ is capped at 8 ρσ τσ (Fermi-hole-curvature enforcement: τσ ≥ τ_W,σ);
- σαβ is clipped to ±(σαα + σββ)/2.

libxc returns the derivatives *at the sanitised point* and does not differentiate the clamps;
we do the same with a straight-through clamp (the value is clamped, the derivative passes through
as identity), so that potentials agree with libxc even where a clamp is active. All arithmetic
runs on floored, strictly positive inputs and results are selected with `jnp.where`, so values
and reverse-mode derivatives are finite everywhere (ρ = 0, σ = 0, τ = τ_W, ζ = ±1, α = 0 or at
the switching points).

One deliberate difference: 1 ± ζ are formed as 2ρσ/n. libxc subtracts (1 − ζ with
ζ = (ρα − ρβ)/n), which costs it a relative error ~ε n/ρ_min in minority-spin terms (e.g. in
∂e/∂τβ), i.e. ~1e-6 when ρβ/ρα ~ 1e-10; nlxc stays accurate there.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..constants import RS_FACTOR, X2S, X_FACTOR_C
from ._base import AbstractSemilocalFunctional
from ._uniform_gas import FZETA_DENOMINATOR, PW92_MOD_PARAMS, pw92_epsilon, pw92_epsilon_unpolarised
from ._util import ZETA_THRESHOLD, parameter

__all__ = ["R2SCANCorrelation", "R2SCANExchange", "SCANCorrelation", "SCANExchange"]

# ----------------------------------------------------------------------------------------------
# Constants (libxc `maple/util.mpl`)
# ----------------------------------------------------------------------------------------------

# RS_FACTOR (r_s = RS_FACTOR n^{−1/3}), X2S (s = X2S |∇ρσ|/ρσ^{4/3}) and X_FACTOR_C
# (e_x,σ^LDA = −X_FACTOR_C ρσ^{4/3}) come from nlxc.constants.
K_FACTOR_C = 3.0 / 10.0 * (6.0 * math.pi**2) ** (2.0 / 3.0)  # τ_unif,σ / ρσ^{5/3}
MU_GE = 10.0 / 81.0  # second-order gradient-expansion coefficient of exchange

TAU_THRESHOLD = 1e-20  # libxc 7 default `tau_threshold`
R2SCAN_X_DENS_THRESHOLD = 1e-11  # libxc's `dens_threshold` of MGGA_X_R2SCAN
R2SCAN_C_DENS_THRESHOLD = 1e-15  # libxc's `dens_threshold` of MGGA_C_R2SCAN
SCAN_DENS_THRESHOLD = 1e-15  # libxc's `dens_threshold` of MGGA_X_SCAN and MGGA_C_SCAN

# rSCAN/r2SCAN switching-function polynomials f(α) = Σᵢ cᵢ αⁱ for 0 ≤ α ≤ 2.5 (Furness et al.
# 2020, SI; Bartók & Yates 2019), coefficients c₀ … c₇.
RSCAN_FX = (1.0, -0.667, -0.4445555, -0.663086601049, 1.451297044490, -0.887998041597,
            0.234528941479, -0.023185843322)
RSCAN_FC = (1.0, -0.64, -0.4352, -1.535685604549, 3.061560252175, -1.915710236206,
            0.516884468372, -0.051848879792)
ALPHA_SWITCH = 2.5


# ----------------------------------------------------------------------------------------------
# Numerical helpers
# ----------------------------------------------------------------------------------------------


@jax.custom_jvp
def _straight_through(x, clamped):
    """Value `clamped`, derivative d/dx = 1 (libxc reports derivatives at the clamped point)."""
    del x
    return clamped


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    x, clamped = primals
    x_dot, _ = tangents
    return clamped, x_dot


def _libxc_inputs(rho, sigma, tau, dens_threshold):
    """Sanitise (ρσ, σσσ', τσ) as libxc 7's `work_mgga` does; see the module docstring."""
    sigma_floor = (dens_threshold ** (4.0 / 3.0)) ** 2
    rho_c = jnp.maximum(rho, dens_threshold)
    tau_c = jnp.maximum(tau, TAU_THRESHOLD)
    saa = jnp.minimum(jnp.maximum(sigma[0], sigma_floor), 8.0 * rho_c[0] * tau_c[0])
    sbb = jnp.minimum(jnp.maximum(sigma[2], sigma_floor), 8.0 * rho_c[1] * tau_c[1])
    s_ave = 0.5 * (saa + sbb)
    sab = jnp.clip(sigma[1], -s_ave, s_ave)
    rho_c = _straight_through(rho, jax.lax.stop_gradient(rho_c))
    tau_c = _straight_through(tau, jax.lax.stop_gradient(tau_c))
    sigma_c = _straight_through(sigma, jax.lax.stop_gradient(jnp.stack([saa, sab, sbb])))
    return rho_c, sigma_c, tau_c


def _libxc_inputs_unpolarised(rho, sigma, tau, dens_threshold):
    """`_libxc_inputs` at ρα = ρβ = ρ/2, σσσ' = σ/4, τσ = τ/2, from the totals (ρ, σ, τ).

    **Returns:** (ρ̃σ, σ̃σσ, σ̃αβ, τ̃σ) of one spin channel, each clamped straight-through
    (derivatives pass as identity to ρ/2, σ/4, τ/2).
    """
    half, quarter, half_tau = 0.5 * rho, 0.25 * sigma, 0.5 * tau
    sigma_floor = (dens_threshold ** (4.0 / 3.0)) ** 2
    rho_c = jnp.maximum(half, dens_threshold)
    tau_c = jnp.maximum(half_tau, TAU_THRESHOLD)
    same = jnp.minimum(jnp.maximum(quarter, sigma_floor), 8.0 * rho_c * tau_c)
    mixed = jnp.clip(quarter, -same, same)
    rho_c = _straight_through(half, jax.lax.stop_gradient(rho_c))
    tau_c = _straight_through(half_tau, jax.lax.stop_gradient(tau_c))
    same_c = _straight_through(quarter, jax.lax.stop_gradient(same))
    mixed_c = _straight_through(quarter, jax.lax.stop_gradient(mixed))
    return rho_c, same_c, mixed_c, tau_c


def _opz_pow(opz, n):
    """libxc's `opz_pow_n`: (1+ζ)^n, replaced by ζ_thr^n where 1+ζ ≤ ζ_thr (safe for grads)."""
    small = opz <= ZETA_THRESHOLD
    return jnp.where(small, ZETA_THRESHOLD**n, jnp.where(small, 1.0, opz) ** n)


def _piecewise_max(x, bound):
    """max(x, bound) with libxc's `m_max` derivative convention (derivative 1 at x == bound)."""
    return jnp.where(x < bound, bound, x)


def _piecewise_min(x, bound):
    """min(x, bound) with libxc's `m_min` derivative convention (derivative 1 at x == bound)."""
    return jnp.where(x > bound, bound, x)


def _switching_function(alpha, coefficients, c1, c2, d):
    """r2SCAN interpolation f(α): exp(−c₁α/(1−α)) for α ≤ 0, polynomial for 0 < α ≤ 2.5,
    −d exp(c₂/(1−α)) for α > 2.5 (Furness et al. 2020, eqs. S7/S26). Every branch is evaluated
    on an argument clipped into its own domain, so none overflows and gradients stay finite."""
    a_neg = _piecewise_min(alpha, 0.0)
    f_neg = jnp.exp(-c1 * a_neg / (1.0 - a_neg))
    a_mid = _piecewise_min(alpha, ALPHA_SWITCH)
    f_mid = coefficients[-1]
    for c in coefficients[-2::-1]:
        f_mid = f_mid * a_mid + c
    a_big = _piecewise_max(alpha, ALPHA_SWITCH)
    f_big = -d * jnp.exp(c2 / (1.0 - a_big))
    return jnp.where(alpha <= 0.0, f_neg, jnp.where(alpha <= ALPHA_SWITCH, f_mid, f_big))


def _scan_switching_function(alpha, c1, c2, d):
    """SCAN interpolation f(α) = exp(−c₁α/(1−α)) (α ≤ 1), −d exp(c₂/(1−α)) (α > 1), set to 0 where
    the exponential is below machine epsilon, as libxc 7 does (`mgga_x_scan.mpl`): for
    α > α_L = |ln ε|/(|ln ε| + c₁) on the left and 1 < α < α_R = (|ln ε/d| + c₂)/|ln ε/d| on the
    right (ε = DBL_EPSILON)."""
    log_eps = -math.log(np.finfo(float).eps)
    a_left = log_eps / (log_eps + c1)
    log_eps_d = log_eps + jnp.log(jnp.abs(d))
    a_right = (log_eps_d + c2) / log_eps_d
    a_l = _piecewise_min(alpha, a_left)
    f_left = jnp.where(alpha > a_left, 0.0, jnp.exp(-c1 * a_l / (1.0 - a_l)))
    a_r = _piecewise_max(alpha, a_right)
    f_right = jnp.where(alpha < a_right, 0.0, -d * jnp.exp(c2 / (1.0 - a_r)))
    return jnp.where(alpha <= 1.0, f_left, f_right)


def _spin_scaled_exchange(enhancement, rho, sigma, tau, dens_threshold):
    """Σσ −(3/4)(6/π)^{1/3} ρσ^{4/3} F_x(ρσ, σσσ, τσ): the exchange spin-scaling relation, with
    libxc's input sanitation and per-channel density screening."""
    rho_c, sigma_c, tau_c = _libxc_inputs(rho, sigma, tau, dens_threshold)
    fx = enhancement(rho_c, sigma_c[::2], tau_c)  # both spin channels at once, shape (2, ngrid)
    e_s = -X_FACTOR_C * rho_c * jnp.cbrt(rho_c) * fx
    e = jnp.sum(jnp.where(rho > dens_threshold, e_s, 0.0), axis=0)
    return jnp.where(rho[0] + rho[1] >= dens_threshold, e, 0.0)


def _spin_scaled_exchange_unpolarised(enhancement, rho, sigma, tau, dens_threshold):
    """`_spin_scaled_exchange` at ρα = ρβ = ρ/2 from the totals: twice one channel."""
    rho_c, sigma_c, _, tau_c = _libxc_inputs_unpolarised(rho, sigma, tau, dens_threshold)
    fx = enhancement(rho_c, sigma_c, tau_c)
    e_s = -X_FACTOR_C * rho_c * jnp.cbrt(rho_c) * fx
    return jnp.where(0.5 * rho > dens_threshold, 2.0 * e_s, 0.0)


def _correlation_variables_unpolarised(rho, sigma, tau, dens_threshold):
    """`_correlation_variables` at ρα = ρβ = ρ/2 from the totals (ζ = 0: φ = d_s = 1, f(ζ) = 0,
    1 − ζ¹² = 1)."""
    rho_c, same_c, mixed_c, tau_c = _libxc_inputs_unpolarised(rho, sigma, tau, dens_threshold)
    n = 2.0 * rho_c
    n13 = jnp.cbrt(n)
    rs = RS_FACTOR / n13
    sigma_t = 2.0 * same_c + 2.0 * mixed_c
    xt2 = sigma_t / (n * n * n13 * n13)
    return {
        "n": n,
        "zeta": 0.0,
        "rs": rs,
        "phi": 1.0,
        "d_s": 1.0,
        "f_zeta": 0.0,
        "one_minus_z12": 1.0,
        "s2": X2S**2 * 2.0 ** (2.0 / 3.0) * xt2,
        "t2": xt2 / (16.0 * 2.0 ** (2.0 / 3.0) * rs),
        "tau_w": sigma_t / (8.0 * n),
        "tau": 2.0 * tau_c,
        "tau_unif": K_FACTOR_C * (2.0 * (rho_c * jnp.cbrt(rho_c) ** 2)),
    }


def _correlation_variables(rho, sigma, tau, dens_threshold):
    """Sanitised total-density variables of the SCAN-family correlation functionals.

    1 ± ζ are formed as 2ρσ/n, not by subtraction (cancellation-free at |ζ| → 1; libxc subtracts,
    which costs it a relative error ~ε n/ρ_min in minority-spin factors such as (1 − ζ)^{5/3}).
    """
    rho_c, sigma_c, tau_c = _libxc_inputs(rho, sigma, tau, dens_threshold)
    n = rho_c[0] + rho_c[1]
    inv_n = 1.0 / n
    zeta = (rho_c[0] - rho_c[1]) * inv_n
    opz = 2.0 * rho_c[0] * inv_n
    omz = 2.0 * rho_c[1] * inv_n
    n13 = jnp.cbrt(n)
    rs = RS_FACTOR / n13
    sigma_t = sigma_c[0] + 2.0 * sigma_c[1] + sigma_c[2]
    xt2 = sigma_t / (n * n * n13 * n13)  # |∇n|²/n^{8/3}
    phi = (_opz_pow(opz, 2.0 / 3.0) + _opz_pow(omz, 2.0 / 3.0)) / 2.0
    z2 = zeta * zeta
    return {
        "n": n,
        "zeta": zeta,
        "rs": rs,
        "phi": phi,
        "d_s": (_opz_pow(opz, 5.0 / 3.0) + _opz_pow(omz, 5.0 / 3.0)) / 2.0,
        "f_zeta": (_opz_pow(opz, 4.0 / 3.0) + _opz_pow(omz, 4.0 / 3.0) - 2.0) / FZETA_DENOMINATOR,
        # 1 − ζ¹² = (1 − ζ)(1 + ζ)(1 + ζ² + … + ζ¹⁰), cancellation-free at |ζ| → 1
        "one_minus_z12": opz * omz * (1.0 + z2 * (1.0 + z2 * (1.0 + z2 * (1.0 + z2 * (1.0 + z2))))),
        "s2": X2S**2 * 2.0 ** (2.0 / 3.0) * xt2,  # s² = |∇n|²/(4(3π²)^{2/3} n^{8/3})
        "t2": xt2 / (16.0 * 2.0 ** (2.0 / 3.0) * phi**2 * rs),  # libxc's tt²
        # τ_W, τ and τ_unif,α + τ_unif,β = τ_unif(n) d_s(ζ), τ_unif,σ = (3/10)(6π²)^{2/3} ρσ^{5/3}
        # (libxc's t_total form multiplied through by n^{5/3})
        "tau_w": sigma_t / (8.0 * n),
        "tau": tau_c[0] + tau_c[1],
        "tau_unif": K_FACTOR_C * (rho_c[0] * jnp.cbrt(rho_c[0]) ** 2 + rho_c[1] * jnp.cbrt(rho_c[1]) ** 2),
    }


def _scan_ec0(eclda0, g_zeta, s2, b1c, chi_infinity):
    """SCAN's α = 0 correlation ε_c⁰ = (ε_c^{LDA0} + H₀) G_c(ζ) (Sun et al. 2015, Suppl. Mat.)."""
    g_inf = (1.0 + 4.0 * chi_infinity * s2) ** (-0.25)
    h0 = b1c * jnp.log(1.0 + (jnp.exp(-eclda0 / b1c) - 1.0) * (1.0 - g_inf))
    return (eclda0 + h0) * g_zeta


# ----------------------------------------------------------------------------------------------
# Exchange
# ----------------------------------------------------------------------------------------------


class R2SCANExchange(AbstractSemilocalFunctional):
    """r2SCAN exchange (libxc MGGA_X_R2SCAN, id 497).

    J. W. Furness, A. D. Kaplan, J. Ning, J. P. Perdew, J. Sun, J. Phys. Chem. Lett. 11, 8208
    (2020), doi:10.1021/acs.jpclett.0c02405, with the erratum J. Phys. Chem. Lett. 11, 9248 (2020),
    doi:10.1021/acs.jpclett.0c03077 (SI eqs. S6–S12); built on SCAN, J. Sun, A. Ruzsinszky,
    J. P. Perdew, Phys. Rev. Lett. 115, 036402 (2015), doi:10.1103/PhysRevLett.115.036402.

    Spin scaling: E_x[ρα, ρβ] = ½ (E_x[2ρα] + E_x[2ρβ]); per spin channel

        e_x,σ = −(3/4)(6/π)^{1/3} ρσ^{4/3} F_x(p, ᾱ),   p = s², s = |∇ρσ| / (2 (6π²)^{1/3} ρσ^{4/3}),
        ᾱ = (τσ − |∇ρσ|²/8ρσ) / (τ_unif,σ + η |∇ρσ|²/8ρσ),
        F_x = [h₁ˣ(x) + f(ᾱ)(h₀ˣ − h₁ˣ(x))] g_x(p),  h₁ˣ(x) = 1 + k₁ − k₁/(1 + x/k₁),
        x = (C_η C₂ exp(−p²/d_{p2}⁴) + μ_GE) p,  C_η = 20/27 + 5η/3,  C₂ = −Σ (i+1) cᵢ (1 − h₀ˣ),
        g_x = 1 − exp(−a₁ p^{−1/4}),  τ_unif,σ = (3/10)(6π²)^{2/3} ρσ^{5/3},

    with f(ᾱ) the r2SCAN switching function (rSCAN polynomial coefficients cᵢ for 0 ≤ ᾱ ≤ 2.5,
    SCAN's exponentials outside). C₂ is evaluated as libxc does, −Σᵢ₌₀⁷ (i+1) cᵢ (1 − h₀ˣ)
    (= −f'(1)(1 − h₀ˣ) up to f(1) ≈ 1e-12 from the rounded coefficients).

    Units: Hartree, Bohr. Energy per unit volume from `energy_density`.

    **Parameters** (trainable): `c1` = 0.667, `c2` = 0.8, `d` = 1.24 (switching function; the
    polynomial coefficients for 0 ≤ ᾱ ≤ 2.5 are fixed constants, `RSCAN_FX`), `k1` = 0.065,
    `h0x` = 1.174, `a1` = 4.9479, `eta` = 0.001 (τ regularisation η), `dp2` = 0.361 (d_{p2}).

    Thresholds as libxc: density 1e-11 per spin channel (and for the total), see module docstring.
    """

    family: ClassVar[str] = "mgga"

    c1: Float[Array, ""] = parameter(0.667)
    c2: Float[Array, ""] = parameter(0.8)
    d: Float[Array, ""] = parameter(1.24)
    k1: Float[Array, ""] = parameter(0.065)
    h0x: Float[Array, ""] = parameter(1.174)
    a1: Float[Array, ""] = parameter(4.9479)
    eta: Float[Array, ""] = parameter(0.001)
    dp2: Float[Array, ""] = parameter(0.361)

    def _enhancement(self, rho, sigma, tau):
        """F_x for one spin channel (ρσ, σσσ, τσ already sanitised, ρσ > 0)."""
        rho13 = jnp.cbrt(rho)
        rho53 = rho * rho13 * rho13
        xs2 = sigma / (rho53 * rho)  # |∇ρσ|²/ρσ^{8/3}
        ts = tau / rho53
        p = X2S**2 * xs2
        alpha = (ts - xs2 / 8.0) / (K_FACTOR_C + self.eta * xs2 / 8.0)
        f_alpha = _switching_function(alpha, RSCAN_FX, self.c1, self.c2, self.d)
        c2_gradient = -sum((i + 1) * c for i, c in enumerate(RSCAN_FX)) * (1.0 - self.h0x)
        c_eta = 20.0 / 27.0 + self.eta * 5.0 / 3.0
        x = (c_eta * c2_gradient * jnp.exp(-(p**2) / self.dp2**4) + MU_GE) * p
        h1x = 1.0 + self.k1 * (1.0 - self.k1 / (self.k1 + x))
        # g_x = 1 − exp(−a₁/p^{1/4}) is exactly 1 in double precision for p < 1e-10.
        p_big = p > 1e-10
        p_safe = jnp.where(p_big, p, 1.0)
        gx = jnp.where(p_big, 1.0 - jnp.exp(-self.a1 / jnp.sqrt(jnp.sqrt(p_safe))), 1.0)
        return (h1x + f_alpha * (self.h0x - h1x)) * gx

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        return _spin_scaled_exchange(self._enhancement, rho, sigma, tau, R2SCAN_X_DENS_THRESHOLD)

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        return _spin_scaled_exchange_unpolarised(self._enhancement, rho, sigma, tau, R2SCAN_X_DENS_THRESHOLD)


# ----------------------------------------------------------------------------------------------
# Correlation
# ----------------------------------------------------------------------------------------------


class R2SCANCorrelation(AbstractSemilocalFunctional):
    """r2SCAN correlation (libxc MGGA_C_R2SCAN, id 498).

    J. W. Furness, A. D. Kaplan, J. Ning, J. P. Perdew, J. Sun, J. Phys. Chem. Lett. 11, 8208
    (2020), doi:10.1021/acs.jpclett.0c02405, erratum J. Phys. Chem. Lett. 11, 9248 (2020),
    doi:10.1021/acs.jpclett.0c03077 (SI eqs. S24–S41); the α = 0 limit ε_c⁰ is SCAN's,
    J. Sun, A. Ruzsinszky, J. P. Perdew, Phys. Rev. Lett. 115, 036402 (2015),
    doi:10.1103/PhysRevLett.115.036402.

    With n = ρα + ρβ, ζ = (ρα − ρβ)/n, r_s = (3/4πn)^{1/3}, φ = ((1+ζ)^{2/3} + (1−ζ)^{2/3})/2,
    d_s = ((1+ζ)^{5/3} + (1−ζ)^{5/3})/2, s = |∇n|/(2(3π²)^{1/3} n^{4/3}),
    t = |∇n|/(4 · 2^{1/3} φ r_s^{1/2} n^{4/3}) (libxc's `tt`, = |∇n|/(2 φ k_s n)):

        ε_c = ε_c¹ + f(ᾱ)(ε_c⁰ − ε_c¹),   ᾱ = (τ − |∇n|²/8n) / (τ_unif d_s + η |∇n|²/8n),
        ε_c¹ = ε_c^{PW92}(r_s, ζ) + γ φ³ ln(1 + w₁(1 − g(y, Δy))),   g = (1 + 4(y − Δy))^{−1/4},
        w₁ = exp(−ε_c^{PW92}/(γφ³)) − 1,   y = β(r_s) t²/(γ w₁),   β(r_s) = β_a(1 + β_b r_s)/(1 + β_c r_s),
        Δy = Δf_c2/(27 γ d_s φ³ w₁) [20 r_s (∂ε_c^{LSDA0}/∂r_s − ∂ε_c^{LSDA1}/∂r_s)
              − 45 η (ε_c^{LSDA0} − ε_c^{LSDA1})] s² exp(−s⁴/d_{p2}⁴),
        ε_c⁰ = (ε_c^{LDA0} + b₁c ln(1 + (exp(−ε_c^{LDA0}/b₁c) − 1)(1 − (1 + 4χ∞s²)^{−1/4}))) G_c(ζ),
        ε_c^{LDA0} = −b₁c/(1 + b₂c r_s^{1/2} + b₃c r_s),
        G_c = (1 − G (2^{1/3} − 1) f(ζ))(1 − ζ¹²),   ε_c^{LSDA0} = ε_c^{LDA0} G_c,   ε_c^{LSDA1} = ε_c^{PW92},

    τ_unif = (3/10)(3π²)^{2/3} n^{5/3}, Δf_c2 = Σᵢ i cᵢ (the derivative of the switching polynomial
    at α = 1), and ε_c^{PW92} the Perdew–Wang 1992 LSDA with libxc's "modified" parameters
    (PW_MOD: A = 0.0310907, 0.01554535, 0.0168869; f''(0) = 1.709920934161365617563962776245).
    ∂ε/∂r_s are obtained by forward-mode automatic differentiation.

    Units: Hartree, Bohr. Energy per unit volume from `energy_density`.

    **Parameters** (trainable): `c1` = 0.64, `c2` = 1.5, `d` = 0.7 (switching function; the
    polynomial coefficients are fixed, `RSCAN_FC`), `eta` = 0.001, `dp2` = 0.361,
    `b1c` = 0.0285764, `b2c` = 0.0889, `b3c` = 0.125541, `chi_infinity` = 0.12802585262625815,
    `g_c` = 2.363 (G in G_c; 2.3631 in the SCAN paper), `gamma` = (1 − ln 2)/π²,
    `beta_a` = 0.066724550603149220, `beta_b` = 0.1, `beta_c` = 0.1778.

    Thresholds as libxc: total density 1e-15, see module docstring.
    """

    family: ClassVar[str] = "mgga"

    c1: Float[Array, ""] = parameter(0.64)
    c2: Float[Array, ""] = parameter(1.5)
    d: Float[Array, ""] = parameter(0.7)
    eta: Float[Array, ""] = parameter(0.001)
    dp2: Float[Array, ""] = parameter(0.361)
    b1c: Float[Array, ""] = parameter(0.0285764)
    b2c: Float[Array, ""] = parameter(0.0889)
    b3c: Float[Array, ""] = parameter(0.125541)
    chi_infinity: Float[Array, ""] = parameter(0.12802585262625815)
    g_c: Float[Array, ""] = parameter(2.363)
    gamma: Float[Array, ""] = parameter((1.0 - math.log(2.0)) / math.pi**2)
    beta_a: Float[Array, ""] = parameter(0.066724550603149220)
    beta_b: Float[Array, ""] = parameter(0.1)
    beta_c: Float[Array, ""] = parameter(0.1778)

    def _eclda0(self, rs):
        return -self.b1c / (1.0 + self.b2c * jnp.sqrt(rs) + self.b3c * rs)

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        thr = R2SCAN_C_DENS_THRESHOLD
        v = _correlation_variables(rho, sigma, tau, thr)
        pw92 = lambda r: pw92_epsilon(r, v["zeta"], v["f_zeta"], PW92_MOD_PARAMS)  # noqa: E731
        return jnp.where(rho[0] + rho[1] >= thr, v["n"] * self._per_particle(v, pw92), 0.0)

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        thr = R2SCAN_C_DENS_THRESHOLD
        v = _correlation_variables_unpolarised(rho, sigma, tau, thr)
        pw92 = lambda r: pw92_epsilon_unpolarised(r, PW92_MOD_PARAMS)  # noqa: E731
        return jnp.where(rho >= thr, v["n"] * self._per_particle(v, pw92), 0.0)

    def _per_particle(self, v, pw92):
        """ε_c (Hartree) from the variables of `_correlation_variables` and ε_c^PW92(r_s)."""
        rs, s2, t2 = v["rs"], v["s2"], v["t2"]
        phi3, d_s, f_zeta = v["phi"] ** 3, v["d_s"], v["f_zeta"]
        alpha = (v["tau"] - v["tau_w"]) / (v["tau_unif"] + self.eta * v["tau_w"])

        ones = jnp.ones_like(rs)
        eps_pw, deps_pw = jax.jvp(pw92, (rs,), (ones,))
        eclda0, declda0 = jax.jvp(self._eclda0, (rs,), (ones,))
        g_zeta = (1.0 - self.g_c * (2.0 ** (1.0 / 3.0) - 1.0) * f_zeta) * v["one_minus_z12"]
        elsda0 = eclda0 * g_zeta
        delsda0 = declda0 * g_zeta

        gamma_phi3 = self.gamma * phi3
        w1 = jnp.exp(-eps_pw / gamma_phi3) - 1.0
        dfc2 = sum(i * c for i, c in enumerate(RSCAN_FC))
        dy = (dfc2 / (27.0 * self.gamma * d_s * phi3 * w1)
              * (20.0 * rs * (delsda0 - deps_pw) - 45.0 * self.eta * (elsda0 - eps_pw))
              * s2 * jnp.exp(-(s2 * s2) / self.dp2**4))
        beta = self.beta_a * (1.0 + self.beta_b * rs) / (1.0 + self.beta_c * rs)
        y = beta * t2 / (self.gamma * w1)
        g = (1.0 + 4.0 * (y - dy)) ** (-0.25)
        ec1 = eps_pw + gamma_phi3 * jnp.log(1.0 + w1 * (1.0 - g))

        ec0 = _scan_ec0(eclda0, g_zeta, s2, self.b1c, self.chi_infinity)

        f_alpha = _switching_function(alpha, RSCAN_FC, self.c1, self.c2, self.d)
        return ec1 + f_alpha * (ec0 - ec1)


# ----------------------------------------------------------------------------------------------
# SCAN
# ----------------------------------------------------------------------------------------------


class SCANExchange(AbstractSemilocalFunctional):
    """SCAN exchange (libxc MGGA_X_SCAN, id 263).

    J. Sun, A. Ruzsinszky, J. P. Perdew, Phys. Rev. Lett. 115, 036402 (2015),
    doi:10.1103/PhysRevLett.115.036402 (and its Supplemental Material).

    Spin scaling E_x[ρα, ρβ] = ½ (E_x[2ρα] + E_x[2ρβ]); per spin channel
    e_x,σ = −(3/4)(6/π)^{1/3} ρσ^{4/3} F_x(p, α) with

        α = (τσ − |∇ρσ|²/8ρσ) / τ_unif,σ,   p = s² = |∇ρσ|²/(4(6π²)^{2/3} ρσ^{8/3}),
        F_x = [h₁ˣ(x)(1 − f(α)) + h₀ˣ f(α)] g_x(p),   h₁ˣ = 1 + k₁ − k₁/(1 + x/k₁),
        x = μ_GE p + b₄p² exp(−b₄p/μ_GE) + (b₁p + b₂(1 − α) exp(−b₃(1 − α)²))²,
        b₂ = (5913/405000)^{1/2}, b₁ = (511/13500)/(2b₂), b₃ = 1/2, b₄ = μ_GE²/k₁ − 1606/18225 − b₁²,
        f(α) = exp(−c₁α/(1 − α)) (α ≤ 1), −d exp(c₂/(1 − α)) (α > 1),   g_x = 1 − exp(−a₁ p^{−1/4}).

    As in libxc 7, f(α) is set to zero where its exponential is below machine epsilon (near α = 1).
    Units: Hartree, Bohr; `energy_density` is per unit volume. Density threshold 1e-15 (libxc).

    **Parameters** (trainable): `c1` = 0.667, `c2` = 0.8, `d` = 1.24, `k1` = 0.065, `h0x` = 1.174,
    `a1` = 4.9479.
    """

    family: ClassVar[str] = "mgga"

    c1: Float[Array, ""] = parameter(0.667)
    c2: Float[Array, ""] = parameter(0.8)
    d: Float[Array, ""] = parameter(1.24)
    k1: Float[Array, ""] = parameter(0.065)
    h0x: Float[Array, ""] = parameter(1.174)
    a1: Float[Array, ""] = parameter(4.9479)

    def _enhancement(self, rho, sigma, tau):
        rho13 = jnp.cbrt(rho)
        rho53 = rho * rho13 * rho13
        xs2 = sigma / (rho53 * rho)
        p = X2S**2 * xs2
        alpha = (tau / rho53 - xs2 / 8.0) / K_FACTOR_C
        f_alpha = _scan_switching_function(alpha, self.c1, self.c2, self.d)
        b2 = math.sqrt(5913.0 / 405000.0)
        b1 = (511.0 / 13500.0) / (2.0 * b2)
        b3 = 0.5
        b4 = MU_GE**2 / self.k1 - 1606.0 / 18225.0 - b1**2
        oma = 1.0 - alpha
        x = (MU_GE * p + b4 * p**2 * jnp.exp(-b4 * p / MU_GE)
             + (b1 * p + b2 * oma * jnp.exp(-b3 * oma**2)) ** 2)
        h1x = 1.0 + self.k1 * (1.0 - self.k1 / (self.k1 + x))
        p_big = p > 1e-10
        p_safe = jnp.where(p_big, p, 1.0)
        gx = jnp.where(p_big, 1.0 - jnp.exp(-self.a1 / jnp.sqrt(jnp.sqrt(p_safe))), 1.0)
        return (h1x * (1.0 - f_alpha) + self.h0x * f_alpha) * gx

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        return _spin_scaled_exchange(self._enhancement, rho, sigma, tau, SCAN_DENS_THRESHOLD)

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        return _spin_scaled_exchange_unpolarised(self._enhancement, rho, sigma, tau, SCAN_DENS_THRESHOLD)


class SCANCorrelation(AbstractSemilocalFunctional):
    """SCAN correlation (libxc MGGA_C_SCAN, id 267).

    J. Sun, A. Ruzsinszky, J. P. Perdew, Phys. Rev. Lett. 115, 036402 (2015),
    doi:10.1103/PhysRevLett.115.036402 (and its Supplemental Material).

    With the variables of [`R2SCANCorrelation`][nlxc.xc.mgga.R2SCANCorrelation]:

        ε_c = ε_c¹ + f(α)(ε_c⁰ − ε_c¹),   α = (τ − |∇n|²/8n)/(τ_unif d_s(ζ)),
        ε_c¹ = ε_c^{PW92}(r_s, ζ) + γφ³ ln(1 + w₁(1 − (1 + 4At²)^{−1/4})),   A = β(r_s)/(γ w₁),
        w₁ = exp(−ε_c^{PW92}/(γφ³)) − 1,   β(r_s) = β_a(1 + β_b r_s)/(1 + β_c r_s),
        ε_c⁰ = (ε_c^{LDA0} + b₁c ln(1 + (exp(−ε_c^{LDA0}/b₁c) − 1)(1 − (1 + 4χ∞s²)^{−1/4}))) G_c(ζ),

    f(α) the SCAN switching function with (c₁, c₂, d) = (0.64, 1.5, 0.7) (zero where its
    exponential is below machine epsilon, as in libxc 7), PW92 with libxc's PW_MOD parameters.
    Units: Hartree, Bohr; `energy_density` is per unit volume. Density threshold 1e-15 (libxc).

    **Parameters** (trainable): `c1`, `c2`, `d`, `b1c` = 0.0285764, `b2c` = 0.0889,
    `b3c` = 0.125541, `chi_infinity` = 0.12802585262625815, `g_c` = 2.363, `gamma` = (1 − ln 2)/π²,
    `beta_a` = 0.066724550603149220, `beta_b` = 0.1, `beta_c` = 0.1778.
    """

    family: ClassVar[str] = "mgga"

    c1: Float[Array, ""] = parameter(0.64)
    c2: Float[Array, ""] = parameter(1.5)
    d: Float[Array, ""] = parameter(0.7)
    b1c: Float[Array, ""] = parameter(0.0285764)
    b2c: Float[Array, ""] = parameter(0.0889)
    b3c: Float[Array, ""] = parameter(0.125541)
    chi_infinity: Float[Array, ""] = parameter(0.12802585262625815)
    g_c: Float[Array, ""] = parameter(2.363)
    gamma: Float[Array, ""] = parameter((1.0 - math.log(2.0)) / math.pi**2)
    beta_a: Float[Array, ""] = parameter(0.066724550603149220)
    beta_b: Float[Array, ""] = parameter(0.1)
    beta_c: Float[Array, ""] = parameter(0.1778)

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        thr = SCAN_DENS_THRESHOLD
        v = _correlation_variables(rho, sigma, tau, thr)
        eps_pw = pw92_epsilon(v["rs"], v["zeta"], v["f_zeta"], PW92_MOD_PARAMS)
        return jnp.where(rho[0] + rho[1] >= thr, v["n"] * self._per_particle(v, eps_pw), 0.0)

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        thr = SCAN_DENS_THRESHOLD
        v = _correlation_variables_unpolarised(rho, sigma, tau, thr)
        eps_pw = pw92_epsilon_unpolarised(v["rs"], PW92_MOD_PARAMS)
        return jnp.where(rho >= thr, v["n"] * self._per_particle(v, eps_pw), 0.0)

    def _per_particle(self, v, eps_pw):
        """ε_c (Hartree) from the variables of `_correlation_variables` and ε_c^PW92."""
        rs, phi3 = v["rs"], v["phi"] ** 3
        alpha = (v["tau"] - v["tau_w"]) / v["tau_unif"]
        gamma_phi3 = self.gamma * phi3
        w1 = jnp.exp(-eps_pw / gamma_phi3) - 1.0
        beta = self.beta_a * (1.0 + self.beta_b * rs) / (1.0 + self.beta_c * rs)
        a = beta / (self.gamma * w1)
        g = (1.0 + 4.0 * a * v["t2"]) ** (-0.25)
        ec1 = eps_pw + gamma_phi3 * jnp.log(1.0 + w1 * (1.0 - g))
        eclda0 = -self.b1c / (1.0 + self.b2c * jnp.sqrt(rs) + self.b3c * rs)
        g_zeta = (1.0 - self.g_c * (2.0 ** (1.0 / 3.0) - 1.0) * v["f_zeta"]) * v["one_minus_z12"]
        ec0 = _scan_ec0(eclda0, g_zeta, v["s2"], self.b1c, self.chi_infinity)
        f_alpha = _scan_switching_function(alpha, self.c1, self.c2, self.d)
        return ec1 + f_alpha * (ec0 - ec1)
