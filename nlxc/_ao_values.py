"""Atomic-orbital values and gradients evaluated in JAX from basis data taken from PySCF (private).

A contracted Gaussian basis function of PySCF, spherical or cartesian, is written as

    φ_μ(r) = R_μ(|r − A_μ|²) · P_μ(r − A_μ),
    R_μ(s) = Σ_p c_μp exp(−α_μp s),        P_μ(x, y, z) = Σ_t w_μt x^a_t y^b_t z^c_t,

with A_μ its centre (Bohr), α_μp and c_μp the exponents and contraction coefficients of its
shell (PySCF's `mol._libcint_ctr_coeff`: the input coefficients times the radial normalisation
of each primitive, `gto.gto_norm`, with the contracted function normalised; Q. Sun, J. Comput.
Chem. 36, 1664 (2015), doi:10.1002/jcc.23981), and the monomials x^a y^b z^c of degree l its
cartesian components with weights w: for a cartesian basis (`mol.cart`) one monomial of weight 1
(times the s and p factors 1/(2√π) and √(3/(4π)) libcint applies), for a spherical basis the
column of `gto.cart2sph(l, normalized="sp")` (the matrix `mol.cart2sph_coeff()` is made of). The
gradient follows analytically: ∂_x φ = −2 x S(s) P + R(s) ∂_x P, with S(s) = Σ_p α_p c_p
exp(−α_p s).

`basis_data(mol)` extracts the data with NumPy once; `ao_values(basis, indices, points)` evaluates
the listed functions at a block of points in JAX (jit/vmap/AD-compatible; no derivative is taken
through it, the values are constants of the density functional).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

# libcint's common factors of s and p functions (CINTcommon_fac_sp): cartesian s and p functions
# are normalised like the spherical ones
_FAC_SP = {0: 0.282094791773878143, 1: 0.488602511902919921}


def _cartesian_powers(l: int) -> list[tuple[int, int, int]]:
    """The cartesian monomials of degree l in PySCF's order (xx, xy, xz, yy, yz, zz for l = 2)."""
    return [(lx, ly, l - lx - ly) for lx in range(l, -1, -1) for ly in range(l - lx, -1, -1)]


class AOBasis(eqx.Module):
    """Per-AO data of a PySCF basis, enough to evaluate every function and its gradient.

    - `centres`: `(nao, 3)`, Bohr.
    - `exponents`: `(nao, nprim)`, Bohr⁻², primitive exponents α (padded entries 0).
    - `coefficients`: `(nao, nprim)`, contraction coefficients with PySCF's normalisation
      (padded entries 0, so a padded primitive adds nothing).
    - `powers`: `(nao, nterm, 3)` int32, the exponents (a, b, c) of each cartesian monomial
      (padded entries 0).
    - `weights`: `(nao, nterm)`, the weight of each monomial (padded entries 0).
    - `lmax` (static): the highest angular momentum (the largest a, b or c).

    A function whose coefficients (or weights) are all zero (e.g. one added by padding `nao`)
    is zero everywhere.
    """

    centres: Float[Array, "nao 3"]
    exponents: Float[Array, "nao nprim"]
    coefficients: Float[Array, "nao nprim"]
    powers: Int[Array, "nao nterm 3"]
    weights: Float[Array, "nao nterm"]
    lmax: int = eqx.field(static=True)

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(nprim, nterm, lmax)`: the padded sizes (equal for Systems that can be stacked)."""
        return self.exponents.shape[-1], self.weights.shape[-1], self.lmax

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays."""
        return sum(x.nbytes for x in (self.centres, self.exponents, self.coefficients, self.powers, self.weights))

    def pad(self, nao: int, shape: tuple[int, int, int] | None = None, xp=np) -> AOBasis:
        """The same functions, followed by zero functions up to `nao`, with the primitives and
        monomials padded to `shape = (nprim, nterm, lmax)` (`None`: unchanged). `xp` is `numpy`
        or `jax.numpy`.

        **Raises:** `ValueError` if a target is smaller than the current size.
        """
        nprim, nterm, lmax = self.shape if shape is None else shape
        cur_nao = self.centres.shape[-2]
        if nao < cur_nao or nprim < self.shape[0] or nterm < self.shape[1] or lmax < self.lmax:
            raise ValueError(f"cannot pad the AO basis data {(cur_nao, *self.shape)} down to {(nao, nprim, nterm, lmax)}")
        dao, dprim, dterm = nao - cur_nao, nprim - self.shape[0], nterm - self.shape[1]

        def pad(x, *widths):
            return xp.pad(xp.asarray(x), ((0, dao), *widths))

        return AOBasis(
            centres=pad(self.centres, (0, 0)),
            exponents=pad(self.exponents, (0, dprim)),
            coefficients=pad(self.coefficients, (0, dprim)),
            powers=pad(self.powers, (0, dterm), (0, 0)),
            weights=pad(self.weights, (0, dterm)),
            lmax=lmax,
        )


def basis_data(mol) -> AOBasis:
    """The per-AO basis data of a built PySCF `Mole`, as NumPy arrays (see `AOBasis`).

    Spherical functions unless `mol.cart`; the AO order is PySCF's (shell by shell, contraction
    by contraction, then the components: m = −l … l for spherical p-and-higher functions except
    p, which is x, y, z; xx, xy, xz, yy, yz, zz, … for cartesian ones).

    **Raises:** `ValueError` for a `Mole` whose AO count disagrees with its shells (not built).
    """
    from pyscf import gto

    centres, exponents, coefficients, terms = [], [], [], []
    for ib in range(mol.nbas):
        l = int(mol.bas_angular(ib))
        alpha = np.asarray(mol.bas_exp(ib), dtype=float)
        ctr = np.asarray(mol._libcint_ctr_coeff(ib), dtype=float) * _FAC_SP.get(l, 1.0)  # (nprim, nctr)
        centre = np.asarray(mol.bas_coord(ib), dtype=float)
        powers = _cartesian_powers(l)
        if mol.cart:
            shell_terms = [[(p, 1.0)] for p in powers]
        else:
            c2s = gto.cart2sph(l, normalized="sp")  # (ncart, 2l+1)
            shell_terms = [[(powers[i], float(c2s[i, m])) for i in np.flatnonzero(c2s[:, m])]
                           for m in range(c2s.shape[1])]
        for k in range(ctr.shape[1]):
            for t in shell_terms:
                centres.append(centre)
                exponents.append(alpha)
                coefficients.append(ctr[:, k])
                terms.append(t)
    if len(centres) != mol.nao:
        raise ValueError(f"the basis has {len(centres)} functions but the Mole says nao={mol.nao} (built?)")
    nao = len(centres)
    nprim = max(len(a) for a in exponents)
    nterm = max(len(t) for t in terms)
    exp_arr = np.zeros((nao, nprim))
    coef_arr = np.zeros((nao, nprim))
    pow_arr = np.zeros((nao, nterm, 3), dtype=np.int32)
    w_arr = np.zeros((nao, nterm))
    for mu in range(nao):
        exp_arr[mu, : len(exponents[mu])] = exponents[mu]
        coef_arr[mu, : len(coefficients[mu])] = coefficients[mu]
        for t, (p, w) in enumerate(terms[mu]):
            pow_arr[mu, t] = p
            w_arr[mu, t] = w
    lmax = int(max(mol.bas_angular(ib) for ib in range(mol.nbas)))
    return AOBasis(np.asarray(centres), exp_arr, coef_arr, pow_arr, w_arr, lmax)


def ao_values(
    basis: AOBasis, indices: Int[Array, " n"], points: Float[Array, "g 3"]
) -> Float[Array, "4 g n"]:
    """φ, ∂xφ, ∂yφ, ∂zφ of the functions `indices` `(n,)` at `points` `(g, 3)` (Bohr), `(4, g, n)`
    (Bohr^-3/2 and Bohr^-5/2), as PySCF's `eval_ao(mol, points, deriv=1)[:, :, indices]`.

    Finite at every point (a nucleus included); jit-, vmap- and AD-compatible.
    """
    centres = basis.centres[indices]  # (n, 3)
    alpha = basis.exponents[indices]  # (n, P)
    coef = basis.coefficients[indices]  # (n, P)
    powers = basis.powers[indices]  # (n, T, 3)
    weights = basis.weights[indices]  # (n, T)
    d = points[:, None, :] - centres[None]  # (g, n, 3)
    r2 = jnp.sum(d * d, axis=-1)  # (g, n)
    e = coef * jnp.exp(-alpha * r2[..., None])  # (g, n, P)
    radial = jnp.sum(e, axis=-1)
    slope = jnp.sum(e * alpha, axis=-1)  # −dR/ds
    # x^a, y^b, z^c and a·x^(a−1), … of each monomial, (g, n, T, 3): powers of d up to lmax,
    # each selected where the monomial's exponent equals it (no gather)
    exponent = powers[None]  # (1, n, T, 3)
    dd = d[:, :, None, :]  # (g, n, 1, 3)
    mono = jnp.ones(dd.shape[:2] + exponent.shape[2:], d.dtype)
    dmono = jnp.zeros_like(mono)
    power = jnp.ones_like(dd)
    for k in range(1, basis.lmax + 1):
        below, power = power, power * dd
        mono = jnp.where(exponent == k, power, mono)
        dmono = jnp.where(exponent == k, k * below, dmono)
    xyz = jnp.prod(mono, axis=-1)  # (g, n, T)
    angular = jnp.sum(weights * xyz, axis=-1)  # (g, n)
    # ∂_c of the monomial: dmono[c] times the other two factors
    mx, my, mz = mono[..., 0], mono[..., 1], mono[..., 2]
    dang = jnp.stack([
        jnp.sum(weights * dmono[..., 0] * my * mz, axis=-1),
        jnp.sum(weights * mx * dmono[..., 1] * mz, axis=-1),
        jnp.sum(weights * mx * my * dmono[..., 2], axis=-1),
    ])  # (3, g, n)
    value = radial * angular
    grad = -2.0 * jnp.moveaxis(d, -1, 0) * (slope * angular) + radial * dang
    return jnp.concatenate([value[None], grad])
