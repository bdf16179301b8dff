"""From a Fock matrix to orbitals and a density matrix, with exact, degeneracy-safe derivatives.

`jnp.linalg.eigh`'s derivative divides by differences of eigenvalues, which is infinite for the
degenerate orbitals of N2, CH4, benzene or atoms. Two things here avoid that without biasing
anything:

- the density matrix D(F) = Σᵢ nᵢ cᵢcᵢᵀ gets its own JVP from first-order perturbation theory
  of the occupied projector, dP = C (W ∘ Cᵀ dF C) Cᵀ with W_pq = (n_p − n_q)/(ε_p − ε_q). Pairs of
  equal occupation (occupied–occupied, virtual–virtual, degenerate or not) have W = 0 exactly,
  so only occupied–virtual pairs enter, and those are separated by the gap. With Fermi–Dirac
  occupations, W_pq is the divided difference of the occupation function, whose limit for
  ε_p → ε_q is the derivative f'(ε) (finite), plus the change of the chemical potential that
  keeps the electron count fixed.
- orbital energies and coefficients come from an `eigh` whose JVP gives dε_p = (Cᵀ dF C)_pp and
  drops the (arbitrary) rotations within degenerate subspaces.

Reference for the perturbation formulas: e.g. R. M. Martin, *Electronic Structure*, appendix on
response functions; the occupied-projector form is the standard coupled-perturbed KS expression
(Pople, Krishnan, Schlegel, Binkley, Int. J. Quantum Chem. 16 (S13), 225 (1979),
doi:10.1002/qua.560160825).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..system import System

# Orbitals made of padded basis functions (zero columns of the orthogonaliser) get this orbital
# energy (Hartree), far above any occupied orbital, so that the aufbau never occupies them.
PADDED_ORBITAL_ENERGY = 1.0e3
# Eigenvalue differences below this (Hartree) count as degenerate in the eigenvector derivative.
DEGENERACY_THRESHOLD = 1e-10


class FermiDirac(eqx.Module):
    """Fractional occupations nᵢ = 1 / (1 + exp((εᵢ − μ)/width)), with μ fixed by Σᵢ nᵢ = Nσ.

    `width` (Hartree) is the smearing kT. Useful for small-gap systems; the density matrix and
    its derivatives stay finite and exact for any orbital degeneracy.
    """

    width: float = eqx.field(static=True, default=0.01)


def _safe_divided(num, den):
    ok = num != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


@jax.custom_batching.custom_vmap
def _lapack_eigh(matrix: Float[Array, "n n"]) -> tuple[Float[Array, " n"], Float[Array, "n n"]]:
    """`jnp.linalg.eigh` of one matrix; batched (vmapped) calls run one matrix at a time.

    Under `jax.vmap` a plain `eigh` becomes one batched LAPACK call that jaxlib 0.10 spreads over
    its CPU thread pool (`ParallelBatchMap`); two such calls running concurrently in one XLA
    program (e.g. the final orbitals and the adjoint solve of a vmapped SCF) can deadlock that
    pool: the process hangs with every worker idle. Mapping over the batch with `lax.map` keeps
    every LAPACK call to a single matrix. The matrices here are small (nmo ≲ a few hundred), so
    little parallelism is lost.
    """
    e, c = jnp.linalg.eigh(matrix)
    return e, c


@_lapack_eigh.def_vmap
def _lapack_eigh_vmap(axis_size, in_batched, matrix):
    return jax.lax.map(_lapack_eigh, matrix), (True, True)


@jax.custom_jvp
def eigh(matrix: Float[Array, "n n"]) -> tuple[Float[Array, " n"], Float[Array, "n n"]]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix, with a derivative that is
    exact for eigenvalues and finite for eigenvectors at degeneracies (rotations inside a
    degenerate subspace, which are arbitrary, are set to zero)."""
    e, c = _lapack_eigh(matrix)
    return e, c


@eigh.defjvp
def _eigh_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    e, c = _lapack_eigh(a)
    dm = c.T @ (0.5 * (da + da.T)) @ c
    gap = e[None, :] - e[:, None]
    inv = jnp.where(jnp.abs(gap) > DEGENERACY_THRESHOLD, 1.0 / jnp.where(gap == 0, 1.0, gap), 0.0)
    return (e, c), (jnp.diagonal(dm), c @ (inv * dm))


def _fermi(e, mu, width):
    return jax.nn.sigmoid(-(e - mu) / width)


def chemical_potential(
    energies: Float[Array, "*shape"],
    n_electrons,
    width: float,
    weights: Float[Array, "*#shape"] | None = None,
) -> Float[Array, ""]:
    """The Fermi–Dirac chemical potential μ (Hartree) with N(μ) = Σᵢ wᵢ f((εᵢ − μ)/width) = n,
    inside jit, with an exact derivative.

    - `energies`: orbital energies εᵢ (Hartree), any shape; orbitals at or above
      `PADDED_ORBITAL_ENERGY` (padding) do not set the upper bisection bound.
    - `n_electrons`: the target count n (a scalar, may be traced).
    - `width`: the smearing kT (Hartree), f(x) = 1 / (1 + exp(x)).
    - `weights`: wᵢ broadcastable to `energies` (e.g. k-point weights), default 1.

    The value comes from bisection (200 halvings: float64-exact); its derivative from the
    implicit function theorem, dμ = Σᵢ wᵢ f'ᵢ dεᵢ / Σᵢ wᵢ f'ᵢ (one Newton step
    μ − [N(ε, μ) − N(ε̄, μ)] / ∂N/∂μ, ε̄ being ε with its derivative stopped: the correction is
    exactly zero in value and carries dN at fixed μ), so μ and the occupations f((εᵢ − μ)/width) have exact first derivatives with
    respect to the orbital energies and the count (bisection alone would pass a wrong
    derivative through its bounds, which depend on min ε and max ε). Mermin, Phys. Rev. 137,
    A1441 (1965), doi:10.1103/PhysRev.137.A1441. Raises nothing: where ∂N/∂μ underflows to 0
    (every occupation exactly 0 or 1) the step uses ∂N/∂μ = 1, which keeps the derivative finite
    (the occupations' derivatives are 0 there anyway).
    """
    e = jnp.asarray(energies)
    w = jnp.ones((), e.dtype) if weights is None else jnp.asarray(weights, e.dtype)
    n = jnp.asarray(n_electrons, e.dtype)
    e_fixed = jax.lax.stop_gradient(e)
    n_fixed = jax.lax.stop_gradient(n)
    lo = jnp.min(e_fixed) - 50.0 * width - 1.0
    real = e_fixed < PADDED_ORBITAL_ENERGY
    top = jnp.where(jnp.any(real), jnp.max(jnp.where(real, e_fixed, -jnp.inf)), jnp.max(e_fixed))
    hi = top + 50.0 * width + 1.0

    def count(energies, mu):
        return jnp.sum(w * _fermi(energies, mu, width))

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        too_many = count(e_fixed, mid) > n_fixed
        return jnp.where(too_many, lo, mid), jnp.where(too_many, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 200, body, (lo, hi))
    mu = jax.lax.stop_gradient(0.5 * (lo + hi))
    f = _fermi(e_fixed, mu, width)
    slope = jnp.sum(w * f * (1.0 - f)) / width  # ∂N/∂μ ≥ 0
    slope = jax.lax.stop_gradient(jnp.where(slope > 0, slope, 1.0))
    residual = count(e, mu) - n  # N(μ) − n: its derivative at fixed μ is dN − dn
    correction = residual - jax.lax.stop_gradient(residual)  # value exactly 0
    return mu - correction / slope


def _occupations(e, n_electrons, width):
    """Aufbau (width None: the n lowest, eigh sorts ascending) or Fermi–Dirac occupations.

    Padded orbitals sit at PADDED_ORBITAL_ENERGY, so neither scheme ever occupies them."""
    if width is None:
        return (jnp.arange(e.shape[0]) < n_electrons).astype(e.dtype)
    return _fermi(e, chemical_potential(e, n_electrons, width), width)


def _make_projector(width):
    @jax.custom_jvp
    def projector(fock_orth, n_electrons):
        e, c = _lapack_eigh(fock_orth)
        return (c * _occupations(e, n_electrons, width)) @ c.T

    @projector.defjvp
    def projector_jvp(primals, tangents):
        fock_orth, n_electrons = primals
        dfock = tangents[0]
        e, c = _lapack_eigh(fock_orth)
        occ = _occupations(e, n_electrons, width)
        p = (c * occ) @ c.T
        dm = c.T @ (0.5 * (dfock + dfock.T)) @ c
        gap = e[:, None] - e[None, :]
        docc = occ[:, None] - occ[None, :]
        if width is None:
            # W_pq = (n_p − n_q)/(ε_p − ε_q): zero for equal occupations, finite across the gap
            dp_mo = _safe_divided(docc, gap) * dm
        else:
            # divided difference of f; for (near-)degenerate pairs its limit f'(ε) = −f(1−f)/kT
            near = jnp.abs(gap) < 1e-8
            occ_mid = 0.5 * (occ[:, None] + occ[None, :])
            w = jnp.where(near, -occ_mid * (1.0 - occ_mid) / width, docc / jnp.where(near, 1.0, gap))
            fprime = -occ * (1.0 - occ) / width
            # the chemical potential moves to keep Σ nᵢ fixed: dμ = Σ f'ᵢ dεᵢ / Σ f'ᵢ
            sum_fprime = jnp.sum(fprime)  # (the mask must not depend on the tangent)
            nonzero = sum_fprime != 0
            dmu = jnp.sum(fprime * jnp.diagonal(dm)) * jnp.where(nonzero, 1.0 / jnp.where(nonzero, sum_fprime, 1.0), 0.0)
            dp_mo = w * dm - dmu * jnp.diag(fprime)
        return p, c @ dp_mo @ c.T

    return projector


_AUFBAU_PROJECTOR = _make_projector(None)
_FERMI_PROJECTORS: dict[float, object] = {}


def _projector_for(smearing):
    if smearing is None:
        return _AUFBAU_PROJECTOR
    width = float(smearing.width)
    if width not in _FERMI_PROJECTORS:
        _FERMI_PROJECTORS[width] = _make_projector(width)
    return _FERMI_PROJECTORS[width]


def _top_occupations(overlaps: Float[Array, " nmo"], n_electrons) -> Float[Array, " nmo"]:
    """1 for the `n_electrons` orbitals of largest overlap (ties to the lower index), else 0."""
    rank = jnp.argsort(jnp.argsort(-overlaps, stable=True), stable=True)
    return (rank < n_electrons).astype(overlaps.dtype)


@jax.custom_jvp
def _overlap_projector(fock_orth, reference_orth, n_electrons):
    _, c = _lapack_eigh(fock_orth)
    occ = _top_occupations(jnp.einsum("ip,ij,jp->p", c, reference_orth, c), n_electrons)
    return (c * occ) @ c.T


@_overlap_projector.defjvp
def _overlap_projector_jvp(primals, tangents):
    # the occupations are held fixed (piecewise constant in the reference): only the orbitals move,
    # dP = C (W ∘ Cᵀ dF C) Cᵀ with W_pq = (n_p − n_q)/(ε_p − ε_q), as for the aufbau projector
    fock_orth, reference_orth, n_electrons = primals
    dfock = tangents[0]
    e, c = _lapack_eigh(fock_orth)
    occ = _top_occupations(jnp.einsum("ip,ij,jp->p", c, reference_orth, c), n_electrons)
    dm = c.T @ (0.5 * (dfock + dfock.T)) @ c
    w = _safe_divided(occ[:, None] - occ[None, :], e[:, None] - e[None, :])
    return (c * occ) @ c.T, c @ (w * dm) @ c.T


def _orthogonal_fock(fock, system):
    """Xᵀ F X per spin (spin-averaged for restricted systems), padded orbitals shifted up."""
    x = system.orthogonalizer
    padded = jnp.sum(x * x, axis=0) == 0
    shift = jnp.diag(jnp.where(padded, PADDED_ORBITAL_ENERGY, 0.0))
    if system.restricted:
        fock = jnp.broadcast_to(0.5 * (fock[0] + fock[1]), fock.shape)
    return jnp.einsum("mi,smn,nj->sij", x, fock, x) + shift


def orbitals(
    fock: Float[Array, "2 nao nao"], system: System
) -> tuple[Float[Array, "2 nmo"], Float[Array, "2 nao nmo"]]:
    """Solve F C = S C ε by canonical orthogonalisation, for α and β.

    Restricted systems use the spin-averaged Fock matrix for both channels. Returns orbital
    energies `(2, nmo)` (Hartree, ascending) and coefficients `(2, nao, nmo)`. Orbitals of padded
    basis functions (see `nlxc.pad_system`) get energy `PADDED_ORBITAL_ENERGY` and zero
    coefficients. Derivatives are degeneracy-safe (see the module docstring).
    """
    e, c = jax.vmap(eigh)(_orthogonal_fock(fock, system))
    return e, jnp.einsum("mi,sij->smj", system.orthogonalizer, c)


def density_from_fock(
    fock: Float[Array, "2 nao nao"], system: System, smearing: FermiDirac | None = None
) -> Float[Array, "2 nao nao"]:
    """The α/β density matrices built from the Fock matrices, `(2, nao, nao)`.

    Aufbau occupations (`smearing=None`) fill the n_α and n_β lowest orbitals; `FermiDirac`
    smears them. The derivative with respect to the Fock matrix is exact and finite for any
    degeneracy among occupied or among virtual orbitals (only occupied–virtual pairs couple).
    """
    f_orth = _orthogonal_fock(fock, system)
    n = system.n_electrons.astype(f_orth.dtype)
    p_orth = jax.vmap(_projector_for(smearing))(f_orth, n)
    x = system.orthogonalizer
    return jnp.einsum("mi,sij,nj->smn", x, p_orth, x)


def maximum_overlap_density(
    fock: Float[Array, "2 nao nao"], reference: Float[Array, "2 nao nao"], system: System
) -> Float[Array, "2 nao nao"]:
    """The α/β density matrices `(2, nao, nao)` of the n_α and n_β eigenvectors of F C = S C ε
    whose overlap with the occupied space of `reference` (idempotent α/β density matrices) is
    largest: the maximum overlap method (MOM), A. T. B. Gilbert, N. A. Besley and P. M. W. Gill,
    J. Phys. Chem. A 112, 13164 (2008), doi:10.1021/jp801738f.

    Where the occupied orbitals of `reference` are the lowest of F this is
    [`density_from_fock`][nlxc.scf.density_from_fock] (aufbau); where one lies above a virtual
    one, the occupations of `reference` are kept, so a stationary point of the energy with
    non-aufbau occupations is a fixed point of P ↦ D_MOM(F(P); P). The derivative holds the
    occupations fixed (they are piecewise constant in `reference`, which gets no derivative):
    the first-order perturbation theory of the occupied projector of the module docstring, with
    W_pq = (n_p − n_q)/(ε_p − ε_q) for the selected occupations n, finite wherever no occupied
    orbital is degenerate with a virtual one.
    """
    f_orth = _orthogonal_fock(fock, system)
    n = system.n_electrons.astype(f_orth.dtype)
    p_orth = jax.vmap(_overlap_projector)(f_orth, _orthogonal_density(reference, system), n)
    x = system.orthogonalizer
    return jnp.einsum("mi,sij,nj->smn", x, p_orth, x)


def _orthogonal_density(density, system):
    """Xᵀ S Pσ S X per spin: the density matrices in the orthonormal basis of the orthogonaliser."""
    x, s = system.orthogonalizer, system.overlap
    return jnp.einsum("mi,mk,skl,ln,nj->sij", x, s, density, s, x)


def maximum_overlap_occupations(
    coefficients: Float[Array, "2 nao nmo"], density: Float[Array, "2 nao nao"], system: System
) -> Float[Array, "2 nmo"]:
    """Occupations `(2, nmo)`, 0 or 1: 1 for the n_α (n_β) orbitals `coefficients` (AO
    coefficients, S-orthonormal, e.g. from [`orbitals`][nlxc.scf.orbitals]) that overlap most
    with the occupied space of the idempotent `density` `(2, nao, nao)`, overlap cᵢᵀ S Pσ S cᵢ.
    The occupations of `density` in that orbital basis (maximum overlap method: Gilbert, Besley
    and Gill, doi:10.1021/jp801738f). Not differentiable (piecewise constant)."""
    s = system.overlap
    c = jax.lax.stop_gradient(coefficients)
    overlaps = jnp.einsum("smi,mk,skl,ln,sni->si", c, s, jax.lax.stop_gradient(density), s, c)
    n = system.n_electrons.astype(overlaps.dtype)
    return jax.vmap(_top_occupations)(overlaps, n)


def is_aufbau(orbital_energies: Float[Array, "2 nmo"], occupations: Float[Array, "2 nmo"]) -> Bool[Array, ""]:
    """Whether no occupied orbital (occupation > ½) lies above a virtual one (occupation < ½)
    of the same spin: the occupations are aufbau (ties count as aufbau). `orbital_energies`
    `(2, nmo)` in Hartree, `occupations` `(2, nmo)`; a boolean scalar."""
    occupied = occupations > 0.5
    highest = jnp.max(jnp.where(occupied, orbital_energies, -jnp.inf), axis=-1)
    lowest = jnp.min(jnp.where(occupied, jnp.inf, orbital_energies), axis=-1)
    return jnp.all(highest <= lowest)


def occupations_of(
    orbital_energies: Float[Array, "2 nmo"], system: System, smearing: FermiDirac | None = None
) -> Float[Array, "2 nmo"]:
    """Occupation numbers `(2, nmo)` for the given orbital energies (aufbau or Fermi–Dirac).

    Fermi–Dirac occupations have exact first derivatives with respect to the orbital energies
    (the chemical potential moves with them, see [`chemical_potential`][nlxc.scf.chemical_potential]).
    """
    width = None if smearing is None else float(smearing.width)
    n = system.n_electrons.astype(orbital_energies.dtype)
    return jax.vmap(lambda e, k: _occupations(e, k, width))(orbital_energies, n)


def level_shifted(
    fock: Float[Array, "2 nao nao"], density: Float[Array, "2 nao nao"], system: System, shift
) -> Float[Array, "2 nao nao"]:
    """F + b (S − S Pσ S): raises the virtual orbitals by `shift` (Hartree), leaving the
    self-consistent occupied space unchanged. See Saunders & Hillier, Int. J. Quantum Chem. 7,
    699 (1973), doi:10.1002/qua.560070407."""
    s = system.overlap
    return fock + shift * (s[None] - s[None] @ density @ s[None])
