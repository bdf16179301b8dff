"""Reference values for the functional tests: libxc (through `pyscf.dft.libxc.eval_xc`), and the
pieces of the 40-digit mpmath references that tests/test_xc_semilocal.py and
tests/test_xc_mgga.py share (PW92 correlation with its r_s derivative, f(ζ), φ(ζ), PBE's β and γ).

Densities are supplied in the spin-polarised form used by nlxc: rho (2, N), the gradient vectors
(2, 3, N) from which sigma (3, N) is formed, and tau (2, N).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from pyscf import dft, gto
from pyscf.dft import libxc


def sigma_from_gradients(grad):
    """(2, 3, N) spin-density gradients -> (σαα, σαβ, σββ), shape (3, N)."""
    g = np.asarray(grad)
    return np.stack([np.einsum("xn,xn->n", g[0], g[0]), np.einsum("xn,xn->n", g[0], g[1]),
                     np.einsum("xn,xn->n", g[1], g[1])])


def _nvar(xc_code):
    """Rows of the density array PySCF's `eval_xc` expects for this functional's family."""
    return {"LDA": 1, "HF": 1, "GGA": 4}.get(libxc.xc_type(xc_code), 5)


def libxc_polarized(xc_code, rho, grad, tau):
    """libxc's e_xc (per volume) and first derivatives for spin-polarised input.

    Returns a dict with `e` (N,), `vrho` (2, N), `vsigma` (3, N), `vtau` (2, N) (zeros where the
    functional does not depend on a variable).
    """
    n = rho.shape[1]
    spins = []
    for s in range(2):
        r = np.zeros((5, n))
        r[0] = rho[s]
        r[1:4] = grad[s]
        r[4] = tau[s]
        spins.append(r[:_nvar(xc_code)])
    exc, vxc = libxc.eval_xc(xc_code, (spins[0], spins[1]), spin=1, deriv=1)[:2]
    vrho, vsigma, _, vtau = (list(vxc) + [None] * 4)[:4]
    out = {"e": exc * (rho[0] + rho[1]), "vrho": np.asarray(vrho).T}
    out["vsigma"] = np.zeros((3, n)) if vsigma is None else np.asarray(vsigma).T
    out["vtau"] = np.zeros((2, n)) if vtau is None else np.asarray(vtau).T
    return out


def libxc_unpolarized(xc_code, rho, grad, tau):
    """libxc's e_xc and first derivatives for spin-unpolarised input (total ρ, ∇ρ, τ)."""
    n = rho.shape[0]
    r = np.zeros((5, n))
    r[0] = rho
    r[1:4] = grad
    r[4] = tau
    exc, vxc = libxc.eval_xc(xc_code, r[:_nvar(xc_code)], spin=0, deriv=1)[:2]
    vrho, vsigma, _, vtau = (list(vxc) + [None] * 4)[:4]
    return {"e": exc * rho, "vrho": np.asarray(vrho),
            "vsigma": np.zeros(n) if vsigma is None else np.asarray(vsigma),
            "vtau": np.zeros(n) if vtau is None else np.asarray(vtau)}


@eqx.filter_jit
def _nlxc_values(functional, rho, sigma, tau):
    def total(r, s, t):
        return jnp.sum(functional.energy_density(r, s, t))

    e = functional.energy_density(rho, sigma, tau)
    vrho, vsigma, vtau = jax.grad(total, argnums=(0, 1, 2))(rho, sigma, tau)
    return {"e": e, "vrho": vrho, "vsigma": vsigma, "vtau": vtau}


def nlxc_polarized(functional, rho, sigma, tau):
    """nlxc's e_xc and its autodiff derivatives, spin-polarised."""
    out = _nlxc_values(functional, jnp.asarray(rho), jnp.asarray(sigma), jnp.asarray(tau))
    return {k: np.asarray(v) for k, v in out.items()}


def nlxc_unpolarized(functional, rho, sigma, tau):
    """nlxc at ρα=ρβ=ρ/2 etc., with derivatives w.r.t. the total ρ, σ, τ (libxc's spin=0)."""
    rho2 = np.stack([rho / 2, rho / 2])
    sigma3 = np.stack([sigma / 4, sigma / 4, sigma / 4])
    tau2 = np.stack([tau / 2, tau / 2])
    out = nlxc_polarized(functional, rho2, sigma3, tau2)
    return {"e": out["e"], "vrho": out["vrho"].sum(0) / 2, "vsigma": out["vsigma"].sum(0) / 4,
            "vtau": out["vtau"].sum(0) / 2}


def random_polarized_density(n=2000, seed=0, rho_min=1e-8, rho_max=1e3):
    """Random spin densities spread log-uniformly over [rho_min, rho_max] (incl. ζ≈±1 points).

    Returns rho (2, N), grad (2, 3, N), tau (2, N) with τσ ≥ τ_W,σ = |∇ρσ|²/(8ρσ) so that
    meta-GGA indicators are physical (α ≥ 0).
    """
    rng = np.random.default_rng(seed)
    logr = rng.uniform(np.log(rho_min), np.log(rho_max), size=(2, n))
    rho = np.exp(logr)
    # a fraction of strongly polarised points
    k = n // 10
    rho[1, :k] = rho[0, :k] * 10.0 ** rng.uniform(-6, -2, size=k)
    # reduced gradients s in [0, 5] per spin
    s = rng.uniform(0.0, 5.0, size=(2, n))
    kf = (3 * np.pi**2 * 2 * rho) ** (1 / 3)
    gnorm = s * 2 * kf * 2 * rho
    direction = rng.normal(size=(2, 3, n))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    grad = direction * gnorm[:, None, :]
    tau_w = gnorm**2 / (8 * rho)
    tau_unif = 0.3 * (6 * np.pi**2) ** (2 / 3) * rho ** (5 / 3)
    alpha = rng.uniform(0.0, 4.0, size=(2, n))
    tau = tau_w + alpha * tau_unif
    return rho, grad, tau


@functools.lru_cache(maxsize=None)
def molecular_polarized_density(name="h2o_cation"):
    """A real open-shell molecular density (UHF/def2-SVP minao guess → one UKS step is not
    needed: the minao superposition with α≠β occupations), on a PySCF grid with its tails.

    Returns rho (2, N), grad (2, 3, N), tau (2, N) as numpy arrays.
    """
    mol = gto.M(atom="O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692", basis="def2-svp",
                charge=1, spin=1, verbose=0)
    mf = dft.UKS(mol, xc="pbe")
    mf.grids.level = 1
    mf.conv_tol = 1e-6
    mf.kernel()
    grids = mf.grids
    ao = dft.numint.eval_ao(mol, grids.coords, deriv=1)
    dma, dmb = mf.make_rdm1()
    ra = dft.numint.eval_rho(mol, ao, dma, xctype="MGGA", with_lapl=False)
    rb = dft.numint.eval_rho(mol, ao, dmb, xctype="MGGA", with_lapl=False)
    rho = np.stack([ra[0], rb[0]])
    grad = np.stack([ra[1:4], rb[1:4]])
    tau = np.stack([ra[4], rb[4]])
    return rho, grad, tau


# ----------------------------------------------------------------------------------------------
# 40-digit mpmath pieces shared by tests/test_xc_semilocal.py and tests/test_xc_mgga.py
# ----------------------------------------------------------------------------------------------
# Written from the papers with libxc's constants (not from nlxc). Constants are kept as decimal
# strings and every function makes its mpmath numbers at the caller's working precision, so a
# caller inside `mpmath.workdps(MPMATH_DIGITS)` gets 40-digit values throughout. The callers
# import mpmath with `pytest.importorskip("mpmath")` first.

MPMATH_DIGITS = 40
"""Working precision (decimal digits) of the mpmath references: naive forms, 40 digits absorb
every cancellation."""

PW92_DIGITS = {
    "a": ("0.031091", "0.015545", "0.016887"),
    "alpha1": ("0.21370", "0.20548", "0.11125"),
    "beta1": ("7.5957", "14.1189", "10.357"),
    "beta2": ("3.5876", "6.1977", "3.6231"),
    "beta3": ("1.6382", "3.3662", "0.88026"),
    "beta4": ("0.49294", "0.62517", "0.49671"),
    "fz20": "1.709921",
}
"""PW92 (Perdew & Wang, PRB 45, 13244 (1992), Table I) as libxc's LDA_C_PW (id 12): per
quantity, the values for G(r_s) of the paramagnetic ε_c(r_s, 0), the ferromagnetic ε_c(r_s, 1)
and the spin stiffness −α_c(r_s); `fz20` is f''(0)."""

PW92_MOD_DIGITS = {**PW92_DIGITS, "a": ("0.0310907", "0.01554535", "0.0168869"),
                   "fz20": "1.709920934161365617563962776245"}
"""libxc's LDA_C_PW_MOD (id 13): more digits in A and f''(0), as in the PBE reference code; used
by libxc's PBE, SCAN and r²SCAN correlation."""

PBE_BETA = "0.06672455060314922"
"""PBE correlation's β (libxc's value; Perdew, Burke & Ernzerhof, PRL 77, 3865 (1996))."""


def _mp():
    import mpmath

    return mpmath


def mp_pbe_gamma():
    """PBE correlation's γ = (1 − ln 2)/π²."""
    mp = _mp()
    return (1 - mp.log(2)) / mp.pi**2


def mp_spin(ra, rb):
    """`(n, r_s, ζ)` of the spin densities ρα, ρβ (mpf): n = ρα + ρβ, r_s = (3/(4πn))^{1/3},
    ζ = (ρα − ρβ)/n."""
    mp = _mp()
    n = ra + rb
    return n, (3 / (4 * mp.pi * n)) ** (mp.mpf(1) / 3), (ra - rb) / n


def mp_fz(z):
    """The spin interpolation f(ζ) = [(1+ζ)^{4/3} + (1−ζ)^{4/3} − 2] / (2^{4/3} − 2)."""
    third = _mp().mpf(1) / 3
    return ((1 + z) ** (4 * third) + (1 - z) ** (4 * third) - 2) / (2 ** (4 * third) - 2)


def mp_phi(z):
    """The spin scaling φ(ζ) = [(1+ζ)^{2/3} + (1−ζ)^{2/3}] / 2 of PBE correlation."""
    third = _mp().mpf(1) / 3
    return ((1 + z) ** (2 * third) + (1 - z) ** (2 * third)) / 2


def mp_pw92_g(k, rs, params=PW92_MOD_DIGITS):
    """PW92 eq. (10) and its derivative: `(G, dG/dr_s)`, G(r_s) = −2A(1 + α₁r_s)
    ln[1 + 1/(2A Q)], Q = β₁r_s^{1/2} + β₂r_s + β₃r_s^{3/2} + β₄r_s², for the `k`-th column of
    `params` (0: paramagnetic, 1: ferromagnetic, 2: −α_c)."""
    mp = _mp()
    a, a1, b1, b2, b3, b4 = (mp.mpf(params[key][k]) for key in ("a", "alpha1", "beta1", "beta2", "beta3", "beta4"))
    q = b1 * mp.sqrt(rs) + b2 * rs + b3 * rs ** mp.mpf(1.5) + b4 * rs**2
    dq = b1 / (2 * mp.sqrt(rs)) + b2 + mp.mpf(1.5) * b3 * mp.sqrt(rs) + 2 * b4 * rs
    log = mp.log(1 + 1 / (2 * a * q))
    dg = -2 * a * a1 * log + (1 + a1 * rs) * dq / (q**2 * (1 + 1 / (2 * a * q)))
    return -2 * a * (1 + a1 * rs) * log, dg


def mp_pw92_eps(rs, z, params=PW92_MOD_DIGITS):
    """PW92's correlation energy per particle ε_c(r_s, ζ) (eq. 8) and its r_s derivative at fixed
    ζ: `(ε_c, ∂ε_c/∂r_s)`."""
    mp = _mp()
    fz20 = mp.mpf(params["fz20"])
    (g0, d0), (g1, d1), (g2, d2) = (mp_pw92_g(k, rs, params) for k in range(3))
    fz = mp_fz(z)
    eps = g0 + z**4 * fz * (g1 - g0 + g2 / fz20) - fz * g2 / fz20
    deps = d0 + z**4 * fz * (d1 - d0 + d2 / fz20) - fz * d2 / fz20
    return eps, deps
