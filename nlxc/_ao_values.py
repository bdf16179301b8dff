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
exp(−α_p s). P and its three derivatives are stored as coefficient rows over the common list of
cartesian monomials of degree ≤ lmax, so that a block evaluates the monomials once and each
function's angular part and gradient as sums of products (no per-function branching).

`basis_data(mol)` extracts the data with NumPy once; `ao_values(basis, indices, points)` evaluates
the listed functions at a block of points in JAX (jit/vmap/AD-compatible; no derivative is taken
through it, the values are constants of the density functional).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

# libcint's common factors of s and p functions (CINTcommon_fac_sp): cartesian s and p functions
# are normalised like the spherical ones
_FAC_SP = {0: 0.282094791773878143, 1: 0.488602511902919921}


def _cartesian_powers(l: int) -> list[tuple[int, int, int]]:
    """The cartesian monomials of degree l in PySCF's order (xx, xy, xz, yy, yz, zz for l = 2)."""
    return [(lx, ly, l - lx - ly) for lx in range(l, -1, -1) for ly in range(l - lx, -1, -1)]


def _monomials(lmax: int) -> list[tuple[int, int, int]]:
    """Every cartesian monomial x^a y^b z^c with a + b + c ≤ lmax: by degree, then PySCF's order.
    Those of degree ≤ l are a prefix of those of degree ≤ l' > l."""
    return [p for l in range(lmax + 1) for p in _cartesian_powers(l)]


class AOBasis(eqx.Module):
    """Per-AO data of a PySCF basis, enough to evaluate every function and its gradient.

    - `centres`: `(nao, 3)`, Bohr.
    - `exponents`: `(nao, nprim)`, Bohr⁻², primitive exponents α (padded entries 0).
    - `coefficients`: `(nao, nprim)`, contraction coefficients with PySCF's normalisation
      (padded entries 0, so a padded primitive adds nothing).
    - `angular`: `(nao, 4, nmono)`, the coefficients of the angular polynomial P and of ∂x P,
      ∂y P, ∂z P over the monomials of degree ≤ lmax (by degree, then PySCF's cartesian order:
      1, x, y, z, xx, xy, …).
    - `lmax` (static): the highest angular momentum; `nmono = (lmax+1)(lmax+2)(lmax+3)/6`.

    A function whose coefficients are all zero (e.g. one added by padding `nao`) is zero
    everywhere.
    """

    centres: Float[Array, "nao 3"]
    exponents: Float[Array, "nao nprim"]
    coefficients: Float[Array, "nao nprim"]
    angular: Float[Array, "nao 4 nmono"]
    lmax: int = eqx.field(static=True)

    @property
    def shape(self) -> tuple[int, int]:
        """`(nprim, lmax)`: the padded sizes (equal for Systems that can be stacked)."""
        return self.exponents.shape[-1], self.lmax

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays."""
        return sum(x.nbytes for x in (self.centres, self.exponents, self.coefficients, self.angular))

    def pad(self, nao: int, shape: tuple[int, int] | None = None, xp=np) -> AOBasis:
        """The same functions, followed by zero functions up to `nao`, with the primitives padded
        to `nprim` and the monomials to those of degree ≤ `lmax`, `shape = (nprim, lmax)`
        (`None`: unchanged). `xp` is `numpy` or `jax.numpy`.

        **Raises:** `ValueError` if a target is smaller than the current size.
        """
        nprim, lmax = self.shape if shape is None else shape
        cur_nao = self.centres.shape[-2]
        if nao < cur_nao or nprim < self.shape[0] or lmax < self.lmax:
            raise ValueError(f"cannot pad the AO basis data {(cur_nao, *self.shape)} down to {(nao, nprim, lmax)}")
        dao, dprim = nao - cur_nao, nprim - self.shape[0]
        dmono = len(_monomials(lmax)) - self.angular.shape[-1]

        def pad(x, *widths):
            return xp.pad(xp.asarray(x), ((0, dao), *widths))

        return AOBasis(
            centres=pad(self.centres, (0, 0)),
            exponents=pad(self.exponents, (0, dprim)),
            coefficients=pad(self.coefficients, (0, dprim)),
            angular=pad(self.angular, (0, 0), (0, dmono)),
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
    lmax = int(max(mol.bas_angular(ib) for ib in range(mol.nbas)))
    position = {p: m for m, p in enumerate(_monomials(lmax))}
    exp_arr = np.zeros((nao, nprim))
    coef_arr = np.zeros((nao, nprim))
    angular = np.zeros((nao, 4, len(position)))
    for mu in range(nao):
        exp_arr[mu, : len(exponents[mu])] = exponents[mu]
        coef_arr[mu, : len(coefficients[mu])] = coefficients[mu]
        for p, w in terms[mu]:
            angular[mu, 0, position[p]] += w
            for c in range(3):  # ∂_c x^a y^b z^c' = a x^(a−1) y^b z^c' for c = x, …
                if p[c]:
                    lower = tuple(k - (j == c) for j, k in enumerate(p))
                    angular[mu, 1 + c, position[lower]] += p[c] * w
    return AOBasis(np.asarray(centres), exp_arr, coef_arr, angular, lmax)


def ao_values(
    basis: AOBasis, indices: Int[Array, " n"], points: Float[Array, "g 3"]
) -> Float[Array, "4 g n"]:
    """φ, ∂xφ, ∂yφ, ∂zφ of the functions `indices` `(n,)` at `points` `(g, 3)` (Bohr), `(4, g, n)`
    (Bohr^-3/2 and Bohr^-5/2), as PySCF's `eval_ao(mol, points, deriv=1)[:, :, indices]`.

    Finite at every point (a nucleus included); jit-, vmap- and AD-compatible.
    """
    centres = basis.centres[indices]  # (n, 3)
    alpha = basis.exponents[indices].T  # (P, n)
    coef = basis.coefficients[indices].T  # (P, n)
    angular = jnp.moveaxis(basis.angular[indices], 0, -1)  # (4, M, n)
    # the small dimensions (primitives, monomials, components) lead, so that every operation
    # runs over the (g, n) plane
    d = points.T[:, :, None] - centres.T[:, None, :]  # (3, g, n)
    r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]  # (g, n)
    radial = jnp.zeros_like(r2)
    slope = jnp.zeros_like(r2)  # −dR/ds
    for p in range(alpha.shape[0]):
        e = coef[p] * jnp.exp(-alpha[p] * r2)
        radial = radial + e
        slope = slope + alpha[p] * e
    # materialised once: XLA would otherwise fuse (and so recompute) the exponentials into each
    # of the four outputs
    radial, slope = jax.lax.optimization_barrier((radial, slope))
    # the monomials of degree ≤ lmax, each the product of an earlier one and one coordinate
    powers = _monomials(basis.lmax)
    position = {q: m for m, q in enumerate(powers)}
    mono = [jnp.ones_like(r2)]
    for q in powers[1:]:
        c = next(j for j in range(3) if q[j])
        mono.append(mono[position[tuple(k - (j == c) for j, k in enumerate(q))]] * d[c])
    parts = [sum(mono[m] * angular[k, m] for m in range(len(powers))) for k in range(4)]  # P, ∂xP, ∂yP, ∂zP
    value = radial * parts[0]
    grad = [radial * parts[1 + c] - 2.0 * d[c] * slope * parts[0] for c in range(3)]
    return jnp.stack([value, *grad])
