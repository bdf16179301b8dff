"""Uniform-electron-gas formulas shared by the LDAs, the constraint layers and the meta-GGAs (private).

The Perdew–Wang 1992 correlation energy per particle and the spin-interpolation function f(ζ)
live here, below `lda.py`, `constraints.py` and `mgga.py`, which all build on them; `lda.py`
re-exports the public names (`nlxc.xc.lda.pw92_correlation_per_particle`, ...). Units: Hartree
and Bohr.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._util import ZETA_THRESHOLD

__all__ = [
    "FZETA_DENOMINATOR",
    "PW92Params",
    "PW92_MOD_PARAMS",
    "PW92_PARAMS",
    "f_zeta",
    "opz_omz",
    "pw92_correlation_per_particle",
    "pw92_epsilon",
    "pw92_epsilon_unpolarised",
]

FZETA_DENOMINATOR = 2.0 ** (4.0 / 3.0) - 2.0
"""2^{4/3} − 2, the denominator of the spin-interpolation function f(ζ)."""


def f_zeta(opz: Float[Array, "*shape"], omz: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """Spin-interpolation f(ζ) = [(1+ζ)^{4/3} + (1−ζ)^{4/3} − 2] / (2^{4/3} − 2), from 1 ± ζ.

    U. von Barth and L. Hedin, J. Phys. C 5, 1629 (1972), doi:10.1088/0022-3719/5/13/012.
    """
    return (opz ** (4.0 / 3.0) + omz ** (4.0 / 3.0) - 2.0) / FZETA_DENOMINATOR


def opz_omz(zeta: Float[Array, "*shape"]) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    """1 ± ζ from ζ alone, clamped below by libxc's ζ threshold (ε_machine)."""
    return jnp.maximum(1.0 + zeta, ZETA_THRESHOLD), jnp.maximum(1.0 - zeta, ZETA_THRESHOLD)


class PW92Params(NamedTuple):
    """Parameters of the PW92 fit G(r_s; A, α₁, β₁…β₄, p=1) for (ε_c(ζ=0), ε_c(ζ=1), −α_c).

    Each entry but `fz20` is a length-3 sequence ordered (paramagnetic, ferromagnetic,
    minus spin stiffness); `fz20` = f''(0) = 8/(9(2^{4/3} − 2)) ≈ 1.7099209.
    """

    a: tuple | Float[Array, "3"]
    alpha1: tuple | Float[Array, "3"]
    beta1: tuple | Float[Array, "3"]
    beta2: tuple | Float[Array, "3"]
    beta3: tuple | Float[Array, "3"]
    beta4: tuple | Float[Array, "3"]
    fz20: float | Float[Array, ""]


#: libxc LDA_C_PW (id 12): the parameters as printed in Perdew & Wang (1992).
PW92_PARAMS = PW92Params(
    a=(0.031091, 0.015545, 0.016887),
    alpha1=(0.21370, 0.20548, 0.11125),
    beta1=(7.5957, 14.1189, 10.357),
    beta2=(3.5876, 6.1977, 3.6231),
    beta3=(1.6382, 3.3662, 0.88026),
    beta4=(0.49294, 0.62517, 0.49671),
    fz20=1.709921,
)

#: libxc LDA_C_PW_MOD (id 13): more digits in A and fz20, as in the PBE reference code; used by
#: libxc's PBE (and SCAN / r²SCAN) correlation.
PW92_MOD_PARAMS = PW92_PARAMS._replace(
    a=(0.0310907, 0.01554535, 0.0168869),
    fz20=1.709920934161365617563962776245,
)


def _pw92_g(rs, a, alpha1, beta1, beta2, beta3, beta4):
    """PW92 eq. (10): G(r_s) = −2A(1 + α₁r_s) ln[1 + 1/(2A(β₁r_s^½ + β₂r_s + β₃r_s^{3/2} + β₄r_s²))]."""
    srs = jnp.sqrt(rs)
    den = 2.0 * a * (beta1 * srs + beta2 * rs + beta3 * rs * srs + beta4 * rs * rs)
    return -2.0 * a * (1.0 + alpha1 * rs) * jnp.log1p(1.0 / den)


def pw92_epsilon(
    rs: Float[Array, "*shape"],
    zeta: Float[Array, "*shape"],
    fz: Float[Array, "*shape"],
    params: PW92Params,
) -> Float[Array, "*shape"]:
    """ε_c^PW92(r_s, ζ) in Hartree given r_s (Bohr), ζ and a precomputed f(ζ) (PW92 eqs. (8)–(10))."""
    rs = jnp.asarray(rs)
    # the three fits at once: parameters (3, 1, …) against r_s (1, …)
    fits = (jnp.reshape(jnp.asarray(p, dtype=float), (3,) + (1,) * rs.ndim) for p in params[:6])
    g0, g1, g2 = _pw92_g(rs[None], *fits)
    z4 = zeta**4
    return g0 + z4 * fz * (g1 - g0 + g2 / params.fz20) - fz * g2 / params.fz20


def pw92_epsilon_unpolarised(rs: Float[Array, "*shape"], params: PW92Params) -> Float[Array, "*shape"]:
    """ε_c^PW92(r_s, ζ = 0) in Hartree given r_s (Bohr): the paramagnetic fit G(r_s) alone.

    PW92 eq. (10) with the first (paramagnetic) entry of each of `params`' fits; equal to
    [`pw92_epsilon`][nlxc.xc.lda.pw92_epsilon]`(rs, 0, 0, params)` (where f(0) = 0 removes the
    other two fits) at a third of the cost.
    """
    rs = jnp.asarray(rs)
    return _pw92_g(rs, *(jnp.asarray(p, dtype=float)[0] for p in params[:6]))


def pw92_correlation_per_particle(
    rs: Float[Array, "*shape"],
    zeta: Float[Array, "*shape"],
    params: PW92Params = PW92_MOD_PARAMS,
) -> Float[Array, "*shape"]:
    """Perdew–Wang 1992 correlation energy per particle ε_c(r_s, ζ), Hartree.

    J. P. Perdew and Y. Wang, Phys. Rev. B 45, 13244 (1992), doi:10.1103/PhysRevB.45.13244, eqs.
    (8)–(10):

    ε_c = ε_c(r_s, 0) + α_c(r_s) f(ζ)/f''(0) (1 − ζ⁴) + [ε_c(r_s, 1) − ε_c(r_s, 0)] f(ζ) ζ⁴.

    **Arguments:**

    - `rs`: Wigner–Seitz radius (Bohr), must be > 0 (use safe values on masked points).
    - `zeta`: spin polarisation in [−1, 1]; powers of 1 ± ζ are clamped at ε_machine as in libxc.
    - `params`: `PW92_MOD_PARAMS` (default; libxc LDA_C_PW_MOD, used by PBE/SCAN/r²SCAN),
      `PW92_PARAMS` (libxc LDA_C_PW), or any `PW92Params` (e.g. trainable arrays).

    Differentiable with finite derivatives for r_s > 0 and all ζ. When 1 ± ζ are known more
    accurately than from ζ (e.g. 2ρσ/n), see [`PW92Correlation`][nlxc.xc.lda.PW92Correlation].
    """
    opz, omz = opz_omz(zeta)
    return pw92_epsilon(rs, zeta, f_zeta(opz, omz), params)
