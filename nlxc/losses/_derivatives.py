"""The orbital-rotation derivatives of a functional at a density, per molecule: the
occupied–virtual gradient, Hessian products and random rotation directions (the machinery of
[`derivative_loss`][nlxc.losses.derivative_loss] and
[`Targets.with_derivatives`][nlxc.losses.Targets.with_derivatives])."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..scf import energy_and_fock, energy_components
from ..system import System
from ..xc import AbstractFunctional


def _orbital_spaces(system: System, density_matrix):
    """X `(nao, nmo)`, the occupied projector P = Xᵀ S Pσ S X and the virtual projector
    Q = 1_valid − P `(2, nmo, nmo)` in the orthonormal basis; padded orbitals (zero columns of
    X) are in neither."""
    x = system.orthogonalizer
    sx = system.overlap @ x
    p = jnp.einsum("mi,smn,nj->sij", sx, density_matrix, sx)
    valid = (jnp.sum(x * x, axis=0) > 0).astype(p.dtype)
    q = jnp.diag(valid)[None] - p
    return x, p, q


def ov_gradient(functional: AbstractFunctional, system: System,
                density_matrix: Float[Array, "2 nao nao"]) -> Float[Array, "2 nmo nmo"]:
    """The energy gradient with respect to occupied–virtual orbital rotations, for one molecule.

    With X the System's orthonormalising matrix (`Xᵀ S X = 1`), P = Xᵀ S Pσ S X the occupied
    projector of spin σ and Q = 1 − P the virtual one (padded orbitals excluded from both), an
    orbital rotation exp(A), A = Z − Zᵀ with Z = Q Z P, changes the density by δPσ = Z + Zᵀ to
    first order, so dE = 2 tr(F Z) and

        G = ∂E/∂Z = 2 Q F P,  F = Xᵀ Fσ X,  Fσ = ∂E/∂Pσ,

    whose only non-zero block is 2 F_ai = 2 C_aᵀ Fσ C_i in any orbital basis of the occupied
    (i) and virtual (a) spaces: the derivative of the energy on the Grassmannian. It vanishes at
    a self-consistent solution of the functional. The density matrix should be idempotent
    (integer occupations, e.g. an SCF solution). Restricted Systems have Fα = Fβ.

    **Returns:** G, `(2, nmo, nmo)`, Hartree, in the orthonormal basis of `system`.
    """
    x, p, q = _orbital_spaces(system, density_matrix)
    _, fock = energy_and_fock(functional.prepare(system), system, density_matrix)
    return _ov_from_fock(x, p, q, fock)


def _ov_from_fock(x, p, q, fock):
    f = jnp.einsum("mi,smn,nj->sij", x, fock, x)
    return 2.0 * q @ f @ p


def orbital_hessian_product(functional: AbstractFunctional, system: System,
                            density_matrix: Float[Array, "2 nao nao"],
                            direction: Float[Array, "2 nmo nmo"]) -> Float[Array, "2 nmo nmo"]:
    """The orbital (electronic) Hessian times an occupied–virtual rotation direction.

    H V = d/dt G(tV) at t = 0, with G = ∂E/∂Z the rotation gradient of
    [`ov_gradient`][nlxc.losses.ov_gradient] and E(Z) the energy of the rotated density
    exp(A) P exp(−A), A = QZP − (QZP)ᵀ (per spin). It is computed by forward-over-reverse
    automatic differentiation of E(Z) (the rotation is expanded to second order,
    P + [A, P] + ½[A, [A, P]], which gives the exact second derivative). At a stationary point,
    in canonical orbitals,

        (H V)_ai = 2 (ε_a − ε_i) V_ai + 4 Σ_σ' Σ_bj (ai|f_Hxc^{σσ'}|bj) V_bj ( = 2 [(A + B) V]_ai ),

    the real-orbital stability / linear-response matrix A + B of Hartree–Fock and Kohn–Sham
    theory (Seeger & Pople, J. Chem. Phys. 66, 3045 (1977), doi:10.1063/1.434318; Helgaker,
    Jørgensen, Olsen, *Molecular Electronic-Structure Theory*, Wiley (2000), ch. 10), with the
    Coulomb, exact-exchange and xc kernels all from autodiff of the functional. For a
    restricted System use a spin-symmetric direction (Vα = Vβ, as
    [`random_rotations`][nlxc.losses.random_rotations] gives): its energy is a function of
    (Pα + Pβ)/2 only.

    **Arguments:** `functional`, `system`, `density_matrix` `(2, nao, nao)`, `direction`
    `(2, nmo, nmo)` (only its Q·P block is used).

    **Returns:** H V, `(2, nmo, nmo)`, Hartree (non-zero only in the occupied–virtual block).
    Cost: about three Fock builds.
    """
    x, p, q = _orbital_spaces(system, density_matrix)
    functional = functional.prepare(system)

    def energy(z):
        a = q @ z @ p
        a = a - jnp.swapaxes(a, -1, -2)
        first = a @ p - p @ a
        rotated = p + first + 0.5 * (a @ first - first @ a)
        return energy_components(functional, system, jnp.einsum("mi,sij,nj->smn", x, rotated, x)).total

    _, hv = jax.jvp(jax.grad(energy), (jnp.zeros_like(p),), (direction,))
    return q @ hv @ p


def random_rotations(key, system: System, density_matrix: Float[Array, "2 nao nao"],
                     n: int) -> Float[Array, "n 2 nmo nmo"]:
    """`n` random occupied–virtual rotation directions for one molecule, each of unit norm.

    V = Q M P per spin with M a standard normal matrix, normalised so that Σσ ‖Vσ‖_F = 1
    (a uniformly random direction in the occupied–virtual space). Restricted Systems get
    spin-symmetric directions (Vβ = Vα, then normalised). A molecule without virtual orbitals
    gets zero directions. Padded orbitals are excluded (zero rows and columns).

    **Returns:** `(n, 2, nmo, nmo)`, dimensionless (radians).
    """
    _, p, q = _orbital_spaces(system, density_matrix)
    m = jax.random.normal(key, (n,) + p.shape, dtype=p.dtype)
    if system.restricted:
        m = m.at[:, 1].set(m[:, 0])
    v = q[None] @ m @ p[None]
    norm = jnp.sqrt(jnp.sum(v**2, axis=(1, 2, 3), keepdims=True))
    ok = norm > 1e-12
    return jnp.where(ok, v / jnp.where(ok, norm, 1.0), 0.0)
