"""Penalties for exact constraints of exchange–correlation functionals.

Differentiable functions `(functional, system, density_matrix) -> scalar ≥ 0`, zero when the
constraint holds, for models that do not satisfy it by construction (the constraint layers of
`nlxc.xc.constraints` do). Add them to a training loss; over a batch use
[`penalty_over_batch`][nlxc.losses.penalty_over_batch]. Also importable from `nlxc.losses`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._errors import InputError
from ..grid import Density
from ..system import System
from ..constants import GLOBAL_LIEB_OXFORD_CONSTANT
from ._base import AbstractFunctional, AbstractSemilocalFunctional, SemilocalSum
from .lda import PW92Correlation, SlaterExchange


def _require_semilocal(functional, what):
    if not isinstance(functional, AbstractSemilocalFunctional):
        raise InputError(f"{what} needs a semilocal functional (an AbstractSemilocalFunctional with "
                         f"energy_density), got {type(functional).__name__}")


def uniform_gas_penalty(functional: AbstractSemilocalFunctional, rs: Float[ArrayLike, "*points"],
                        zeta: Float[ArrayLike, "*points"] = 0.0, reference: AbstractSemilocalFunctional | None = None) -> Float[Array, ""]:
    """Uniform-electron-gas limit: mean squared error of the energy per electron, Hartree².

    At uniform densities ρ = 3/(4π r_s³) with spin polarisation ζ (ρσ = ρ(1 ± ζ)/2, ∇ρ = 0,
    τσ = (3/10)(6π²)^{2/3} ρσ^{5/3}, the uniform-gas kinetic energy density), the penalty is
    mean over the points of (ε_θ − ε_ref)², ε = e_xc/ρ the energy per electron. The default
    reference is Slater exchange + PW92 correlation (Perdew & Wang, Phys. Rev. B 45, 13244
    (1992), doi:10.1103/PhysRevB.45.13244), the parametrised exact uniform-gas limit; pass
    `reference=nlxc.xc.SlaterExchange()` for an exchange-only model. Zero for any functional
    built as a uniform-gas-exact baseline times an enhancement factor pinned to 1 there
    ([`nlxc.xc.EnhancedExchange`][], [`nlxc.xc.EnhancedCorrelation`][]).

    **Arguments:** `functional` (semilocal); `rs` (Bohr) and `zeta` (in [−1, 1]), broadcast
    against each other; `reference` (semilocal).

    **Raises:** [`nlxc.InputError`][] for a non-semilocal functional or reference.
    """
    _require_semilocal(functional, "uniform_gas_penalty")
    if reference is None:
        reference = SemilocalSum(coefficients=[1.0, 1.0], terms=(SlaterExchange(), PW92Correlation()))
    _require_semilocal(reference, "uniform_gas_penalty (reference)")
    rs, zeta = jnp.broadcast_arrays(jnp.asarray(rs, dtype=float).ravel(), jnp.asarray(zeta, dtype=float).ravel())
    n = 3.0 / (4.0 * jnp.pi * rs**3)
    rho = jnp.stack([0.5 * n * (1 + zeta), 0.5 * n * (1 - zeta)])
    sigma = jnp.zeros((3,) + n.shape)
    tau = 0.3 * (6.0 * jnp.pi**2) ** (2.0 / 3.0) * rho ** (5.0 / 3.0)
    eps = functional.energy_density(rho, sigma, tau) / n
    eps_ref = reference.energy_density(rho, sigma, tau) / n
    return jnp.mean((eps - eps_ref) ** 2)


def _squared_violation(values, system):
    """∫ max(v, 0)² d³r with clipped quadrature weights (a sum of non-negative terms)."""
    return jnp.sum(jnp.maximum(system.grid_weights, 0.0) * jnp.maximum(values, 0.0) ** 2)


def correlation_sign_penalty(functional: AbstractFunctional, system: System,
                             density_matrix: Float[Array, "2 nao nao"]) -> Float[Array, ""]:
    """Non-positivity of the correlation energy, E_c ≤ 0: the squared violation.

    For a semilocal correlation functional the constraint is imposed pointwise on the grid,
    P = ∫ max(e_c(r), 0)² d³r, Hartree²/Bohr³ (the energy density must be ≤ 0 everywhere, a
    sufficient condition, satisfied by PW92, VWN, PBE and LYP correlation); for any other
    functional P = max(E_c, 0)², Hartree². Pass the *correlation part* of a model. Zero when
    satisfied; squaring makes the penalty continuously differentiable, so its gradient
    vanishes smoothly at the constraint boundary and pushes only the violating points.
    Quadrature weights are clipped at 0.

    **Returns:** P ≥ 0.
    """
    density = Density.from_density_matrix(density_matrix, system)
    if isinstance(functional, AbstractSemilocalFunctional):
        e = functional.energy_density(density.rho, density.sigma, density.tau)
        return _squared_violation(e, system)
    return jnp.maximum(functional.prepare(system)(density, density_matrix, system), 0.0) ** 2


def lieb_oxford_penalty(functional: AbstractFunctional, system: System, density_matrix: Float[Array, "2 nao nao"],
                        *, bound: float = GLOBAL_LIEB_OXFORD_CONSTANT) -> Float[Array, ""]:
    """Lieb–Oxford bound E_xc ≥ −C ∫ ρ^{4/3} d³r: the squared violation.

    C = `bound` (default 1.679, Lieb & Oxford, Int. J. Quantum Chem. 19, 427 (1981),
    doi:10.1002/qua.560190306), ρ = ρα + ρβ. For a semilocal functional the bound is imposed
    pointwise, e_xc(r) ≥ −C ρ(r)^{4/3} (the local, sufficient form used to construct PBE:
    F_xc ≤ C / C_x = 2.273 with C_x = ¾(3/π)^{1/3}; Perdew, Burke, Ernzerhof, Phys. Rev. Lett.
    77, 3865 (1996), doi:10.1103/PhysRevLett.77.3865), so
    P = ∫ max(−C ρ^{4/3} − e_xc, 0)² d³r, Hartree²/Bohr³, with clipped quadrature weights; for
    any other functional globally, P = max(−C ∫ρ^{4/3} − E_xc, 0)², Hartree². For an exchange
    functional the stronger bound F_x ≤ 1.804 (`nlxc.xc.LIEB_OXFORD_BOUND`) of
    spin-unpolarised densities is `bound = 1.804 · C_x ≈ 1.3325`. Zero when satisfied.

    **Returns:** P ≥ 0.
    """
    density = Density.from_density_matrix(density_matrix, system)
    n = jnp.maximum(density.rho.sum(0), 0.0)
    n43 = jnp.where(n > 0, jnp.where(n > 0, n, 1.0) ** (4.0 / 3.0), 0.0)
    if isinstance(functional, AbstractSemilocalFunctional):
        e = functional.energy_density(density.rho, density.sigma, density.tau)
        return _squared_violation(-bound * n43 - e, system)
    exc = functional.prepare(system)(density, density_matrix, system)
    lower = -bound * jnp.sum(jnp.maximum(system.grid_weights, 0.0) * n43)
    return jnp.maximum(lower - exc, 0.0) ** 2


def spin_scaling_penalty(functional: AbstractFunctional, system: System,
                         density_matrix: Float[Array, "2 nao nao"]) -> Float[Array, ""]:
    """Exchange spin-scaling relation E_x[ρα, ρβ] = ½ E_x[2ρα] + ½ E_x[2ρβ]: squared residual, Hartree².

    E_x[2ρσ] is the spin-unpolarised functional of the total density 2ρσ, i.e. the functional
    of the density matrices (Pσ, Pσ); so the residual is
    r = E[Pα, Pβ] − ½ E[Pα, Pα] − ½ E[Pβ, Pβ] and P = r² (Oliver & Perdew, Phys. Rev. A 20,
    397 (1979), doi:10.1103/PhysRevA.20.397). Exact exchange and
    [`nlxc.xc.EnhancedExchange`][] satisfy it exactly; correlation does not (do not pass it).
    Evaluated spin-unrestricted whatever `system.restricted` is; it is trivially zero for
    Pα = Pβ, so use spin-polarised inputs (open shells).

    **Returns:** P ≥ 0, Hartree².
    """
    system = dataclasses.replace(system, restricted=False)
    f = functional.prepare(system)

    def energy(p):
        return f(Density.from_density_matrix(p, system), p, system)

    pa, pb = density_matrix[0], density_matrix[1]
    r = energy(density_matrix) - 0.5 * energy(jnp.stack([pa, pa])) - 0.5 * energy(jnp.stack([pb, pb]))
    return r**2


def size_consistency_penalty(functional: AbstractFunctional, combined: tuple[System, Array],
                             fragments: Sequence[tuple[System, Array]]) -> Float[Array, ""]:
    """Size consistency of the xc energy: (E_xc[A⋯B] − Σ_F E_xc[F])², Hartree².

    `combined` is `(system, density_matrix)` of fragments far apart (a supermolecule) and
    `fragments` the `(system, density_matrix)` of each fragment alone, with the fragments'
    densities equal to their parts of the combined density (e.g. all from SCF, or the
    combined density matrix as the block-diagonal of the fragments'). Semilocal functionals
    satisfy this up to the quadrature (the grids differ); nonlocal models (attention, message
    passing) need not.

    **Returns:** P ≥ 0, Hartree².

    **Raises:** [`nlxc.InputError`][] if `fragments` is empty.
    """
    fragments = list(fragments)
    if not fragments:
        raise InputError("size_consistency_penalty needs at least one fragment")

    def exc(pair):
        system, p = pair
        return functional.prepare(system)(Density.from_density_matrix(p, system), p, system)

    r = exc(combined) - sum(exc(f) for f in fragments)
    return r**2
