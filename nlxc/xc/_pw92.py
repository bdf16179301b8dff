"""Perdew–Wang 1992 LSDA correlation, private helper of the meta-GGAs (SCAN family).

ε_c^PW92(r_s, ζ) in Hartree per electron, J. P. Perdew and Y. Wang, Phys. Rev. B 45, 13244
(1992), doi:10.1103/PhysRevB.45.13244, eqs. (8)–(10). Two parameter sets are provided, as in
libxc's `maple/lda_exc/lda_c_pw.mpl`:

- `PW92_ORIGINAL` (libxc LDA_C_PW, id 12): A = (0.031091, 0.015545, 0.016887) and
  f''(0) = 1.709921, as printed in the paper;
- `PW92_MODIFIED` (libxc LDA_C_PW_MOD, id 13, and the LSDA inside libxc's SCAN/rSCAN/r2SCAN
  correlation): A = (0.0310907, 0.01554535, 0.0168869) and f''(0) = 8/(9(2^{1/3}-1)) to full
  double precision (1.709920934161365617563962776245).

The α₁, β₁…β₄ coefficients are common to both sets (index 0: paramagnetic ε_c(r_s, 0),
1: ferromagnetic ε_c(r_s, 1), 2: minus the spin stiffness −α_c(r_s); p = 1 in all three).
"""

from __future__ import annotations

import jax.numpy as jnp

# (A, α₁, β₁, β₂, β₃, β₄) for the three fits G_k(r_s); f''(0).
_ALPHA1 = (0.21370, 0.20548, 0.11125)
_BETA1 = (7.5957, 14.1189, 10.357)
_BETA2 = (3.5876, 6.1977, 3.6231)
_BETA3 = (1.6382, 3.3662, 0.88026)
_BETA4 = (0.49294, 0.62517, 0.49671)

PW92_ORIGINAL = {"a": (0.031091, 0.015545, 0.016887), "fz20": 1.709921}
PW92_MODIFIED = {"a": (0.0310907, 0.01554535, 0.0168869), "fz20": 1.709920934161365617563962776245}

# f(ζ) = ((1+ζ)^{4/3} + (1-ζ)^{4/3} - 2) / (2^{4/3} - 2)
FZETA_DENOMINATOR = 2.0 ** (4.0 / 3.0) - 2.0


def pw92_g(rs, k: int, a):
    """G_k(r_s) = -2A(1 + α₁ r_s) ln(1 + 1/(2A(β₁ r_s^{1/2} + β₂ r_s + β₃ r_s^{3/2} + β₄ r_s²)))."""
    ak = a[k]
    srs = jnp.sqrt(rs)
    q = _BETA1[k] * srs + _BETA2[k] * rs + _BETA3[k] * rs * srs + _BETA4[k] * rs * rs
    return -2.0 * ak * (1.0 + _ALPHA1[k] * rs) * jnp.log(1.0 + 1.0 / (2.0 * ak * q))


def pw92_epsilon(rs, zeta, f_zeta, params=PW92_MODIFIED):
    """ε_c(r_s, ζ) = G₀ + ζ⁴ f(ζ) (G₁ − G₀ + G₂/f''(0)) − f(ζ) G₂/f''(0)  (Hartree / electron).

    `f_zeta` is f(ζ), passed in so that callers can apply their own ζ thresholds; `rs` must be
    positive (callers floor the density first).
    """
    a = params["a"]
    fz20 = params["fz20"]
    g0 = pw92_g(rs, 0, a)
    g1 = pw92_g(rs, 1, a)
    g2 = pw92_g(rs, 2, a)
    z4 = zeta**4
    return g0 + z4 * f_zeta * (g1 - g0 + g2 / fz20) - f_zeta * g2 / fz20
