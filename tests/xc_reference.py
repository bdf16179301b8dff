"""Reference values from libxc (through `pyscf.dft.libxc.eval_xc`) for the functional tests.

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
