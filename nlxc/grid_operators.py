"""Operators from the auxiliary (density-fitting) basis to functions on the grid.

Nonlocal features such as local exact-exchange energy densities (DM21) or Gaussian-convolved
densities (CIDER) need, at every grid point r, integrals of the auxiliary functions against a
kernel centred at r. PySCF computes them once, when the [`nlxc.System`][] is built, and they
are stored in the same Cholesky-orthogonalised auxiliary basis as `System.cderi`:

with (P|Q) = L Lᵀ the Coulomb metric of the auxiliary functions χ_P and B = L⁻¹ (Q|μν) the DF
tensor (`System.cderi`), the orthogonalised functions are χ̃_R = Σ_P χ_P (L⁻¹)_RP, and any
pair density μν or density n is fitted as Σ_R d_R χ̃_R with d = B_·μν, resp. d = Σ_μν B_·μν P_μν.
A linear functional K of the fitted function is then Σ_R K[χ̃_R] d_R. The operators stored are

- `coulomb[i]`, `(ngrid, naux)`: θ_R(r) = ∫ χ̃_R(r') v_ω(|r − r'|) d³r', so that
  Σ_R θ_R(r) B_Rμν ≈ ∫ φ_μ(r') φ_ν(r') v_ω(|r − r'|) d³r' (Hartree, the density-fitted potential of
  the pair density μν), for v_0(r) = 1/r and, for ω > 0, the long-range v_ω(r) = erf(ωr)/r
  (PySCF's `with_range_coulomb(ω)`, ω in Bohr⁻¹);
- `gaussian[j]`, `(ngrid, naux)`: (b_j/π)^{3/2} ∫ χ̃_R(r') exp(−b_j |r − r'|²) d³r' for a
  ladder of exponents b_j (Bohr⁻²), the Gaussian smoothing of χ̃_R normalised to unit weight (it
  tends to χ̃_R(r) as b → ∞);
- `projection[0]`, `(ngrid, naux)`: Π = X S⁻¹ L with X_gP = χ_P(r_g) and S the overlap matrix
  of the auxiliary functions, so that d = Πᵀ (w ∘ f) are the orthogonalised coefficients (d = Lᵀ c)
  of the L²-projection c = S⁻¹ ∫ χ f of a grid function f (e.g. the density) on the auxiliary
  basis, with the grid weights w as quadrature. Unlike the Coulomb-metric fit (d = Σ_μν B_·μν
  P_μν), this projection is local: fragments far apart do not mix, which keeps descriptors
  built on it size-consistent.

If the Coulomb metric is too ill-conditioned for a Cholesky factorisation PySCF switches to an
eigendecomposition (dropping eigenvalues below `pyscf.df.incore.LINEAR_DEP_THR`), and so does this
module: L is then V Λ^{½} over the kept eigenpairs, and the operators have the reduced `naux` of
`System.cderi`. Construction checks that L reproduces `System.cderi` (to 1e-10 on the first AO
shell).

**Memory:** 8 · (n_ω + n_b + [projection]) · ngrid · naux bytes; H2O def2-SVP, grid level 2
(ngrid = 21 936, naux = 113): 19.8 MB per operator; C6H6 (98 934, 558): 442 MB per operator.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import InputError

__all__ = ["AuxiliaryGridOperators", "GridOperatorSpec", "build_grid_operators", "required_grid_operators"]


@functools.partial(jax.jit, donate_argnums=0)
def _write_rows(buffer, block, operator, start):
    """buffer[operator, start:start+len(block), :] = block, in place when donated (private helper)."""
    return jax.lax.dynamic_update_slice(buffer, block[None].astype(buffer.dtype), (operator, start, 0))

# Exponent of the s-type Gaussian standing in for a point at a grid position (PySCF's
# convention for point charges in `gto.fakemol_for_charges`).
_POINT_EXPONENT = 1e16
_CDERI_CHECK_TOLERANCE = 1e-10


def _as_float_tuple(values, name):
    try:
        out = tuple(float(v) for v in np.atleast_1d(np.asarray(values, dtype=float)))
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be a sequence of numbers, got {values!r}") from err
    return out


@dataclasses.dataclass(frozen=True)
class GridOperatorSpec:
    """Which auxiliary-basis grid operators a [`nlxc.System`][] should carry.

    - `omegas`: range-separation parameters ω ≥ 0 (Bohr⁻¹) of the Coulomb operators; ω = 0 is
      the full Coulomb 1/r, ω > 0 the long-range erf(ωr)/r.
    - `exponents`: Gaussian exponents b > 0 (Bohr⁻²) of the smoothing operators.
    - `projection`: also store the L²-projection operator (needed by density descriptors that
      project the grid density on the auxiliary basis).

    Values are sorted and deduplicated. Specs combine with `|` (union), so a System can serve
    several models: `System.from_pyscf(mol, grid_operators=a.required_grid_operators |
    b.required_grid_operators)`.

    **Raises:** [`nlxc.InputError`][] for a negative or non-finite ω, a non-positive or
    non-finite exponent.
    """

    omegas: tuple[float, ...] = ()
    exponents: tuple[float, ...] = ()
    projection: bool = False

    def __bool__(self) -> bool:
        """`False` for the empty spec (no operator is needed)."""
        return bool(self.omegas or self.exponents or self.projection)

    def __post_init__(self):
        omegas = _as_float_tuple(self.omegas, "omegas") if len(np.atleast_1d(self.omegas)) else ()
        exponents = _as_float_tuple(self.exponents, "exponents") if len(np.atleast_1d(self.exponents)) else ()
        for w in omegas:
            if not (math.isfinite(w) and w >= 0.0):
                raise InputError(f"range-separation parameter ω must be finite and ≥ 0, got {w}")
        for b in exponents:
            if not (math.isfinite(b) and b > 0.0):
                raise InputError(f"Gaussian exponent must be finite and > 0, got {b}")
        object.__setattr__(self, "omegas", tuple(sorted(set(omegas))))
        object.__setattr__(self, "exponents", tuple(sorted(set(exponents))))
        object.__setattr__(self, "projection", bool(self.projection))

    def __or__(self, other: GridOperatorSpec) -> GridOperatorSpec:
        if not isinstance(other, GridOperatorSpec):
            return NotImplemented
        return GridOperatorSpec(self.omegas + other.omegas, self.exponents + other.exponents,
                                self.projection or other.projection)

    def covered_by(self, operators: AuxiliaryGridOperators | None) -> bool:
        """Whether `operators` holds everything this spec asks for."""
        if operators is None:
            return not (self.omegas or self.exponents or self.projection)
        return (all(_find(operators.omegas, w) is not None for w in self.omegas)
                and all(_find(operators.exponents, b) is not None for b in self.exponents)
                and (not self.projection or operators.has_projection))


def _find(values, x):
    for i, v in enumerate(values):
        if abs(v - x) <= 1e-12 * max(1.0, abs(x)):
            return i
    return None


class AuxiliaryGridOperators(eqx.Module):
    """Auxiliary-basis → grid operators of a System (see the module docstring for the math).

    **Fields:**

    - `coulomb`: `(n_omega, ngrid, naux)`, θ_R(r; ω) = ∫ χ̃_R(r') v_ω(|r−r'|) d³r', one slice per
      `omegas[i]` (v_0 = 1/r, v_ω = erf(ωr)/r).
    - `gaussian`: `(n_exponent, ngrid, naux)`, (b/π)^{3/2} ∫ χ̃_R(r') e^{−b|r−r'|²} d³r', one slice
      per `exponents[j]` (Bohr⁻²).
    - `projection`: `(1, ngrid, naux)` or `(0, ngrid, naux)`, Π = X S⁻¹ L (L²-projection of grid
      functions on the auxiliary basis, in the orthogonalised basis).
    - `omegas`, `exponents` (static): the ω (Bohr⁻¹) and b (Bohr⁻²) values, sorted.

    Padding ([`nlxc.pad_system`][]) fills new grid points and auxiliary functions with zeros.
    Build with `System.from_pyscf(mol, grid_operators=GridOperatorSpec(...))`.
    """

    coulomb: Float[Array, "nomega ngrid naux"]
    gaussian: Float[Array, "nexponent ngrid naux"]
    projection: Float[Array, "nprojection ngrid naux"]
    omegas: tuple[float, ...] = eqx.field(static=True)
    exponents: tuple[float, ...] = eqx.field(static=True)

    @property
    def has_projection(self) -> bool:
        """Whether the L²-projection operator is stored."""
        return self.projection.shape[-3] > 0

    @property
    def spec(self) -> GridOperatorSpec:
        """The [`GridOperatorSpec`][nlxc.GridOperatorSpec] these operators satisfy."""
        return GridOperatorSpec(self.omegas, self.exponents, self.has_projection)

    def coulomb_operator(self, omega: float) -> Float[Array, "ngrid naux"]:
        """θ(r; ω), `(ngrid, naux)`. **Raises:** [`nlxc.InputError`][] if ω was not built."""
        i = _find(self.omegas, float(omega))
        if i is None:
            raise InputError(f"no Coulomb grid operator for ω = {omega}; this System has ω = {self.omegas}")
        return self.coulomb[..., i, :, :]

    def gaussian_operators(self, exponents) -> Float[Array, "nexponent ngrid naux"]:
        """The Gaussian operators for `exponents` (in that order). **Raises:** [`nlxc.InputError`][]
        if one was not built."""
        idx = []
        for b in exponents:
            j = _find(self.exponents, float(b))
            if j is None:
                raise InputError(f"no Gaussian grid operator for exponent {b}; this System has {self.exponents}")
            idx.append(j)
        if idx == list(range(idx[0], idx[0] + len(idx))):  # contiguous: a slice, no gather
            return self.gaussian[..., idx[0] : idx[0] + len(idx), :, :]
        return self.gaussian[..., np.asarray(idx, dtype=int), :, :]

    def pad(self, *, ngrid: int, naux: int, xp=np) -> AuxiliaryGridOperators:
        """Zero-padded to `ngrid` grid points and `naux` auxiliary functions (`xp`: numpy or jax.numpy)."""
        dgrid, daux = ngrid - self.coulomb.shape[-2], naux - self.coulomb.shape[-1]

        def pad(x):
            return xp.pad(xp.asarray(x), ((0, 0), (0, dgrid), (0, daux)))

        return AuxiliaryGridOperators(pad(self.coulomb), pad(self.gaussian), pad(self.projection),
                                      self.omegas, self.exponents)


def require_grid_operators(system, spec: GridOperatorSpec, who: str) -> AuxiliaryGridOperators:
    """`system.grid_operators`, checked to cover `spec` (private helper for the models).

    **Raises:** [`nlxc.InputError`][] naming what is missing and how to build it.
    """
    ops = system.grid_operators
    if not spec.covered_by(ops):
        have = "none" if ops is None else f"ω = {ops.omegas}, exponents = {ops.exponents}, projection = {ops.has_projection}"
        raise InputError(
            f"{who} needs System grid operators ω = {spec.omegas}, exponents = {spec.exponents}, "
            f"projection = {spec.projection} (this System has {have}); build it with "
            "System.from_pyscf(mol, grid_operators=model.required_grid_operators)"
        )
    return ops


def _metric_factor(auxmol):
    """(kind, factor) reproducing `pyscf.df.incore.cholesky_eri`'s decomposition of (P|Q).

    kind "cd": factor is the lower Cholesky factor L, (P|Q) = L Lᵀ, B = L⁻¹ (Q|μν).
    kind "eig": factor is V Λ^{½} over eigenpairs above PySCF's LINEAR_DEP_THR, B = Λ^{−½} Vᵀ (Q|μν).
    """
    import scipy.linalg
    from pyscf.df import incore

    j2c = auxmol.intor("int2c2e", hermi=1)
    try:
        return "cd", scipy.linalg.cholesky(j2c, lower=True)
    except scipy.linalg.LinAlgError:
        w, v = scipy.linalg.eigh(j2c)
        keep = w > incore.LINEAR_DEP_THR
        return "eig", v[:, keep] * np.sqrt(w[keep])


def _to_orthogonal(kind, factor, raw):
    """raw integrals (naoaux, npoint) → orthogonalised (npoint, naux): rows of M raw, M = L⁻¹."""
    import scipy.linalg

    if kind == "cd":
        return scipy.linalg.solve_triangular(factor, raw, lower=True, check_finite=False).T
    return (raw.T @ factor) / np.sum(factor**2, axis=0)  # Λ^{−½} Vᵀ raw = Λ⁻¹ (VΛ^{½})ᵀ raw


def build_grid_operators(
    mol,
    coords,
    spec: GridOperatorSpec,
    *,
    auxbasis=None,
    cderi=None,
    block_size: int = 20000,
) -> AuxiliaryGridOperators:
    """Compute the grid operators of `spec` with PySCF (numpy, once).

    **Arguments:**

    - `mol`: the built `pyscf.gto.Mole`.
    - `coords`: grid points, `(ngrid, 3)` Bohr (the System's `grid_coords`).
    - `spec`: a [`GridOperatorSpec`][nlxc.GridOperatorSpec].
    - `auxbasis`: the auxiliary basis, exactly as given to `pyscf.df.incore.cholesky_eri`
      (`None`: `pyscf.df.make_auxbasis(mol)`).
    - `cderi`: the System's DF tensor `(naux, nao, nao)`; if given, the decomposition of the
      metric is checked against it.
    - `block_size`: grid points per block (bounds PySCF's temporary memory).

    **Returns:** [`AuxiliaryGridOperators`][nlxc.AuxiliaryGridOperators].

    **Raises:** [`nlxc.InputError`][] if `spec` is not a `GridOperatorSpec`, or if `cderi` does not
    come from this molecule and auxiliary basis.
    """
    from pyscf import df, dft, gto

    if not isinstance(spec, GridOperatorSpec):
        raise InputError(f"grid_operators must be a nlxc.GridOperatorSpec, got {type(spec).__name__}")
    if auxbasis is None:
        auxbasis = df.make_auxbasis(mol)
    auxmol = df.addons.make_auxmol(mol, auxbasis)
    kind, factor = _metric_factor(auxmol)
    naux = factor.shape[1]
    if cderi is not None:
        _check_against_cderi(mol, auxmol, kind, factor, cderi)

    coords = np.ascontiguousarray(np.asarray(coords, dtype=float))
    ngrid = coords.shape[0]
    n_proj = 1 if spec.projection else 0
    coulomb = jnp.zeros((len(spec.omegas), ngrid, naux))
    gaussian = jnp.zeros((len(spec.exponents), ngrid, naux))
    projection = jnp.zeros((n_proj, ngrid, naux))
    if n_proj:
        import scipy.linalg

        s_aux = auxmol.intor_symmetric("int1e_ovlp")
        # d = Lᵀ c = Lᵀ S⁻¹ Xᵀ W f, i.e. Π = X (S⁻¹ L)
        s_inv_l = scipy.linalg.cho_solve(scipy.linalg.cho_factor(s_aux), factor)
    for start in range(0, ngrid, block_size):
        block = coords[start : start + block_size]
        points = gto.fakemol_for_charges(block, expnt=_POINT_EXPONENT)
        for i, omega in enumerate(spec.omegas):
            with auxmol.with_range_coulomb(omega):
                raw = gto.intor_cross("int2c2e", auxmol, points)
            coulomb = _write_rows(coulomb, _to_orthogonal(kind, factor, raw), i, start)
        for j, b in enumerate(spec.exponents):
            # fakemol s functions are normalised to unit charge: (b/π)^{3/2} e^{−b r²}
            raw = gto.intor_cross("int1e_ovlp", auxmol, gto.fakemol_for_charges(block, expnt=b))
            gaussian = _write_rows(gaussian, _to_orthogonal(kind, factor, raw), j, start)
        if n_proj:
            values = dft.numint.eval_ao(auxmol, block)  # (npoint, naoaux)
            projection = _write_rows(projection, values @ s_inv_l, 0, start)
    return AuxiliaryGridOperators(coulomb, gaussian, projection, spec.omegas, spec.exponents)


def _check_against_cderi(mol, auxmol, kind, factor, cderi):
    """Check L⁻¹ (Q|μν) == cderi on the first AO shell (cheap: naux · nao · nao_shell)."""
    from pyscf.df import incore

    ni = int(mol.ao_loc[1])
    if cderi.shape[0] != factor.shape[1] or cderi.shape[1:] != (mol.nao, mol.nao):
        raise InputError(f"the DF tensor has shape {tuple(cderi.shape)} but the molecule and auxiliary "
                         f"basis give ({factor.shape[1]}, {mol.nao}, {mol.nao})")
    cderi = np.asarray(cderi[:, :ni, :])
    ints = incore.aux_e2(mol, auxmol, intor="int3c2e", aosym="s1",
                         shls_slice=(0, 1, 0, mol.nbas, 0, auxmol.nbas))  # (ni, nao, naoaux)
    mine = _to_orthogonal(kind, factor, ints.reshape(ni * mol.nao, -1).T).T.reshape(-1, ni, mol.nao)
    err = float(np.max(np.abs(mine - cderi))) if cderi.size else 0.0
    if err > _CDERI_CHECK_TOLERANCE * max(1.0, float(np.max(np.abs(cderi)))):
        raise InputError(f"the grid operators' auxiliary metric does not reproduce the DF tensor "
                         f"(max deviation {err:.2e}); use the same auxbasis as the System")


def required_grid_operators(functional) -> GridOperatorSpec:
    """The auxiliary-basis grid operators a System needs for `functional` (all its parts).

    This is the functional's declared
    [`required_grid_operators`][nlxc.xc.AbstractFunctional.required_grid_operators] property
    (empty for functionals that need none; sums and scaled terms combine those of their parts
    with `|`), so e.g. `required_grid_operators(pbe + 0.5 * LocalHybrid(...))` is what the
    `LocalHybrid` needs. `functional` is an [`nlxc.xc.AbstractFunctional`][]; this module sits
    below `nlxc.xc` and only reads the property. Also importable as
    `nlxc.xc.required_grid_operators` and `nlxc.interop.required_grid_operators`.
    """
    return functional.required_grid_operators
