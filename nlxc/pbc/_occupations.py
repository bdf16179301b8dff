"""Bloch orbitals, occupations over all k-points and density matrices, with exact derivatives (private).

The density matrices P_σk = C_σk diag(n_σk) C_σkᴴ are functions of the Fock matrices of all
k-points at once, because the occupations n_σki share one Fermi level (aufbau) or one chemical
potential μ (Fermi–Dirac) over the whole Brillouin-zone sample. Their JVP is the k-point form of
the molecular one (`nlxc.scf.density_from_fock`): first-order perturbation theory of each
k-point's projector, dP_σk = C (W ∘ Cᴴ dF C) Cᴴ with W_pq = (n_p − n_q)/(ε_p − ε_q) within the
k-point (zero for equal occupations, so degeneracies are harmless), and for Fermi–Dirac the
change of μ that keeps the electron count fixed, dμ = Σ w_k f'_σki dε_σki / Σ w_k f'_σki over
all spins and k-points. Reference for the perturbation formulas: Pople, Krishnan, Schlegel,
Binkley, Int. J. Quantum Chem. 16 (S13), 225 (1979), doi:10.1002/qua.560160825; the shared
chemical potential: N. D. Mermin, Phys. Rev. 137, A1441 (1965), doi:10.1103/PhysRev.137.A1441.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from ..scf import FermiDirac, chemical_potential
from ._system import PeriodicSystem

# Orbitals of dropped (linearly dependent) directions get this energy (Hartree): never occupied.
PADDED_ORBITAL_ENERGY = 1.0e3
# Eigenvalue differences below this (Hartree) count as degenerate in the eigenvector derivative.
DEGENERACY_THRESHOLD = 1e-10


def _hermitian(a):
    return 0.5 * (a + jnp.conj(jnp.swapaxes(a, -1, -2)))


def _eigh_one(matrix):
    return jnp.linalg.eigh(matrix)


def _eigh_all(matrices: Complex[Array, "*batch n n"]):
    """`eigh` of every matrix of a batch, one LAPACK call per matrix (`lax.map`, see
    `nlxc.scf.eigh`: batched LAPACK calls can deadlock XLA's CPU thread pool)."""
    shape = matrices.shape
    e, c = jax.lax.map(_eigh_one, matrices.reshape(-1, *shape[-2:]))
    return e.reshape(*shape[:-1]), c.reshape(shape)


@jax.custom_jvp
def eigh(matrices: Complex[Array, "*batch n n"]):
    """Eigenvalues (ascending, real) and eigenvectors of Hermitian matrices, with a derivative
    that is exact for eigenvalues and drops the (arbitrary) rotations within degenerate subspaces."""
    return _eigh_all(matrices)


@eigh.defjvp
def _eigh_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    e, c = _eigh_all(a)
    dm = jnp.conj(jnp.swapaxes(c, -1, -2)) @ _hermitian(da) @ c
    gap = e[..., None, :] - e[..., :, None]
    inv = jnp.where(jnp.abs(gap) > DEGENERACY_THRESHOLD, 1.0 / jnp.where(gap == 0, 1.0, gap), 0.0)
    return (e, c), (jnp.real(jnp.diagonal(dm, axis1=-2, axis2=-1)), c @ (inv * dm))


def orthogonal_fock(fock: Complex[Array, "2 nk nao nao"], system: PeriodicSystem) -> Complex[Array, "2 nk nmo nmo"]:
    """X_kᴴ F_σk X_k (spin-averaged for restricted systems), dropped directions shifted up."""
    x = system.orthogonalizer
    dropped = jnp.sum(jnp.abs(x) ** 2, axis=-2) == 0  # (nk, nmo)
    shift = jax.vmap(jnp.diag)(jnp.where(dropped, PADDED_ORBITAL_ENERGY, 0.0))
    if system.restricted:
        fock = jnp.broadcast_to(0.5 * (fock[0] + fock[1]), fock.shape)
    return _hermitian(jnp.einsum("kmi,skmn,knj->skij", jnp.conj(x), fock, x)) + shift[None]


def orbitals(
    fock: Complex[Array, "2 nk nao nao"], system: PeriodicSystem
) -> tuple[Float[Array, "2 nk nmo"], Complex[Array, "2 nk nao nmo"]]:
    """Solve F_σk C = S_k C ε for every spin and k-point (canonical orthogonalisation).

    **Returns:** orbital energies `(2, nk, nmo)` (Hartree, ascending per k-point) and Bloch
    orbital coefficients `(2, nk, nao, nmo)` complex128. Derivatives are degeneracy-safe.
    """
    e, c = eigh(orthogonal_fock(fock, system))
    return e, jnp.einsum("kmi,skij->skmj", system.orthogonalizer, c)


def _fermi(e, mu, width):
    return jax.nn.sigmoid(-(e - mu) / width)


def _aufbau(e, n_electrons):
    """Occupations 0/1: per spin, the nσ·nk lowest levels over all k-points (one Fermi level)."""
    nspin, nk, nmo = e.shape
    flat = e.reshape(nspin, nk * nmo)
    ranks = jnp.argsort(jnp.argsort(flat, axis=-1), axis=-1)
    occ = ranks < (n_electrons * nk)[:, None]
    return occ.reshape(e.shape).astype(e.dtype)


def occupations_and_level(
    e: Float[Array, "2 nk nmo"], system: PeriodicSystem, smearing: FermiDirac | None
) -> tuple[Float[Array, "2 nk nmo"], Float[Array, ""]]:
    """Occupation numbers in [0, 1] per spin-orbital `(2, nk, nmo)` and the Fermi level (Hartree).

    Aufbau (`smearing=None`): per spin, the n_σ·nk lowest orbital energies over all k-points
    (equal k-point weights), the Fermi level being the highest occupied one, as PySCF's
    `KRKS.get_occ`. Fermi–Dirac: f = 1/(1 + exp((ε − μ)/width)) with one μ over all k-points and
    both spins, Σ_σk w_k Σ_i f = n_α + n_β (PySCF's `smearing_(mf, width, "fermi")` without
    `fix_spin`); the Fermi level is μ.
    """
    n = system.n_electrons
    if smearing is None:
        occ = _aufbau(e, n)
        level = jnp.max(jnp.where(occ > 0, e, -jnp.inf))
        return occ, level
    width = float(smearing.width)
    mu = chemical_potential(e, jnp.sum(n).astype(e.dtype), width, system.kpt_weights[None, :, None])
    return _fermi(e, mu, width), mu


def entropy(occupations: Float[Array, "2 nk nmo"], weights: Float[Array, " nk"]) -> Float[Array, ""]:
    """S = −Σ_σk w_k Σ_i [f ln f + (1 − f) ln(1 − f)] per cell (dimensionless; 0 for 0/1 occupations)."""
    f = jnp.clip(occupations, 0.0, 1.0)
    inner = (f > 0) & (f < 1)
    safe = jnp.where(inner, f, 0.5)
    s = jnp.where(inner, safe * jnp.log(safe) + (1 - safe) * jnp.log(1 - safe), 0.0)
    return -jnp.sum(weights[None, :, None] * s)


def _make_projector(width: float | None):
    def occupations(e, n_electrons, weights):
        if width is None:
            return _aufbau(e, n_electrons)
        return _fermi(e, chemical_potential(e, jnp.sum(n_electrons).astype(e.dtype), width, weights[None, :, None]), width)

    @jax.custom_jvp
    def projector(fock_orth, n_electrons, weights):
        e, c = _eigh_all(fock_orth)
        occ = occupations(e, n_electrons, weights)
        return (c * occ[..., None, :]) @ jnp.conj(jnp.swapaxes(c, -1, -2))

    @projector.defjvp
    def projector_jvp(primals, tangents):
        fock_orth, n_electrons, weights = primals
        dfock = tangents[0]
        e, c = _eigh_all(fock_orth)
        occ = occupations(e, n_electrons, weights)
        ch = jnp.conj(jnp.swapaxes(c, -1, -2))
        p = (c * occ[..., None, :]) @ ch
        dm = ch @ _hermitian(dfock) @ c
        gap = e[..., :, None] - e[..., None, :]
        docc = occ[..., :, None] - occ[..., None, :]
        if width is None:
            ok = docc != 0
            w = jnp.where(ok, docc / jnp.where(ok, gap, 1.0), 0.0)
            dp_mo = w * dm
        else:
            near = jnp.abs(gap) < 1e-8
            occ_mid = 0.5 * (occ[..., :, None] + occ[..., None, :])
            w = jnp.where(near, -occ_mid * (1.0 - occ_mid) / width, docc / jnp.where(near, 1.0, gap))
            fprime = -occ * (1.0 - occ) / width  # (2, nk, nmo)
            kw = weights[None, :, None]
            total = jnp.sum(kw * fprime)  # the mask must not depend on the tangent
            nonzero = total != 0
            de = jnp.real(jnp.diagonal(dm, axis1=-2, axis2=-1))
            dmu = jnp.sum(kw * fprime * de) * jnp.where(nonzero, 1.0 / jnp.where(nonzero, total, 1.0), 0.0)
            dp_mo = w * dm - dmu * (fprime[..., :, None] * jnp.eye(e.shape[-1]))
        return p, c @ dp_mo @ ch

    return projector


_AUFBAU_PROJECTOR = _make_projector(None)
_FERMI_PROJECTORS: dict[float, object] = {}


def _projector_for(smearing: FermiDirac | None):
    if smearing is None:
        return _AUFBAU_PROJECTOR
    width = float(smearing.width)
    if width not in _FERMI_PROJECTORS:
        _FERMI_PROJECTORS[width] = _make_projector(width)
    return _FERMI_PROJECTORS[width]


def density_from_fock(
    fock: Complex[Array, "2 nk nao nao"], system: PeriodicSystem, smearing: FermiDirac | None = None
) -> Complex[Array, "2 nk nao nao"]:
    """The α/β density matrices of all k-points built from their Fock matrices, `(2, nk, nao, nao)`.

    P_σk = X_k C diag(n_σk) Cᴴ X_kᴴ with the occupations of
    [`occupations_and_level`][nlxc.pbc.occupations_and_level]; the derivative with respect to
    the Fock matrices is exact and finite at any degeneracy (see the module docstring).
    """
    f_orth = orthogonal_fock(fock, system)
    p_orth = _projector_for(smearing)(f_orth, system.n_electrons, system.kpt_weights)
    x = system.orthogonalizer
    return jnp.einsum("kmi,skij,knj->skmn", x, p_orth, jnp.conj(x))


def level_shifted(
    fock: Complex[Array, "2 nk nao nao"], density: Complex[Array, "2 nk nao nao"], system: PeriodicSystem, shift
) -> Complex[Array, "2 nk nao nao"]:
    """F_σk + b (S_k − S_k P_σk S_k): the virtual orbitals raised by `shift` (Hartree), the
    fixed point unchanged. Saunders & Hillier, Int. J. Quantum Chem. 7, 699 (1973),
    doi:10.1002/qua.560070407."""
    s = system.overlap[None]
    return fock + shift * (s - s @ density @ s)
