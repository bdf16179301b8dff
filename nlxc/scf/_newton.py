"""A second-order (Newton) SCF step on the orbital rotations, as an optimistix fixed-point solver."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, PyTree, Scalar

from ..system import System
from ..xc import AbstractFunctional
from ._aufbau import (
    _lapack_eigh,
    density_from_fock,
    is_aufbau,
    level_shifted,
    maximum_overlap_occupations,
    orbitals,
)
from ._base import AbstractSCFSolver, SCFArguments, SCFProgress
from ._cdiis import commutator_error
from ._energy import energy_and_fock, energy_components

_FD_STEP = 1e-4  # radians: the finite-difference step of the Hessian–vector products
# the relative rounding noise of a total energy (float64 ε ≈ 2.2e-16 times ~500 for the sums over
# the grid and the basis): energy changes below this are not resolved
_ENERGY_NOISE = 1e-13


class _NewtonState(eqx.Module):
    progress: SCFProgress
    trust_radius: Scalar
    best_gradient: Scalar  # the smallest orbital-gradient norm so far (a progress measure)


class _Frame(eqx.Module):
    """The orbitals of an idempotent density matrix: P̃ = U diag(n) Uᵀ in the orthogonal basis."""

    rotation: Float[Array, "2 nmo nmo"]  # U
    occupied: Float[Array, "2 nmo"]  # n (0 or 1)
    mask: Bool[Array, "2 nmo nmo"]  # rotation parameters: virtual p (row), occupied q (column)


def _frame(density: Float[Array, "2 nao nao"], system: System) -> _Frame:
    x = system.orthogonalizer
    s = system.overlap
    p_orth = jnp.einsum("mi,mk,skl,ln,nj->sij", x, s, density, s, x)
    padded = jnp.sum(x * x, axis=0) == 0
    # padded orbitals at −2, virtual at 0, occupied at 1: three separated groups of eigenvalues
    shifted = 0.5 * (p_orth + jnp.swapaxes(p_orth, -1, -2)) - 2.0 * jnp.diag(padded.astype(x.dtype))
    n, u = jax.vmap(_lapack_eigh)(shifted)
    occupied = n > 0.5
    virtual = (n > -0.5) & ~occupied
    mask = virtual[:, :, None] & occupied[:, None, :]
    return _Frame(u, occupied.astype(x.dtype), mask)


def _canonical_frame(frame: _Frame, fock: Float[Array, "2 nao nao"], system: System) -> _Frame:
    """The same occupied and virtual spaces as `frame`, each spanned by the eigenvectors of the
    Fock matrix within it (canonical orbitals; padded orbitals stay apart).

    The eigenvectors of an idempotent density matrix are an arbitrary basis of each of its two
    degenerate eigenspaces: a frame "occupied" orbital mixes the core with the valence, so the
    diagonal of the Fock matrix in that frame is no orbital energy, and variables scaled by it
    are not the soft rotations. Measured (ClO, r2SCAN, def2-SVP): the β HOMO → LUMO rotation
    (Δε = 0.042 Ha, Hessian eigenvalue −6.4e-4 Ha) has a scaled eigenvalue of −6.9e-5 in the
    density's frame, where 24 and 48 Lanczos steps gave Ritz values of +1.3e-2 and +8.1e-4 and 120
    were needed; −6.2e-3 in the canonical frame, converged in 12 steps. The Newton solver's
    preconditioner (the same diagonal) is taken in this frame too."""
    x = system.orthogonalizer
    u = frame.rotation
    fock_frame = jnp.einsum("sip,mi,smn,nj,sjq->spq", u, x, fock, x, u)
    fock_frame = 0.5 * (fock_frame + jnp.swapaxes(fock_frame, -1, -2))
    # the three groups of frame orbitals: 0 padded, 1 virtual, 2 occupied
    padded = jnp.einsum("sip,i->sp", u * u, (jnp.sum(x * x, axis=0) == 0).astype(x.dtype)) > 0.5
    group = jnp.where(frame.occupied > 0.5, 2.0, jnp.where(padded, 0.0, 1.0))
    same = group[:, :, None] == group[:, None, :]
    # each group's block, its eigenvalues shifted apart by more than twice the spectral radius
    spread = 4.0 * (jnp.sqrt(jnp.sum(fock_frame * fock_frame, axis=(-2, -1))) + 1.0)
    blocks = jnp.where(same, fock_frame, 0.0) + jax.vmap(jnp.diag)(group * spread[:, None])
    _, w = jax.vmap(_lapack_eigh)(blocks)
    # every eigenvector lies in one group; its weight there is 1
    share = lambda member: jnp.einsum("spq,sp->sq", w * w, member.astype(w.dtype)) > 0.5  # noqa: E731
    occupied = share(group == 2.0)
    virtual = share(group == 1.0)
    return _Frame(u @ w, occupied.astype(u.dtype), virtual[:, :, None] & occupied[:, None, :])


def _generator(k: Float[Array, "2 nmo nmo"], frame: _Frame, restricted: bool) -> Float[Array, "2 nmo nmo"]:
    k = jnp.where(frame.mask, k, 0.0)
    if restricted:
        k = jnp.broadcast_to(k[0], k.shape)
    return k - jnp.swapaxes(k, -1, -2)


def _density(kappa, frame: _Frame, system: System, *, exact: bool):
    """X U e^κ diag(n) e^{−κ} Uᵀ Xᵀ (to second order in κ unless `exact`)."""
    d0 = jax.vmap(jnp.diag)(frame.occupied)
    if exact:
        r = jax.vmap(jax.scipy.linalg.expm)(kappa)
        p = r @ d0 @ jnp.swapaxes(r, -1, -2)
    else:
        c1 = kappa @ d0 - d0 @ kappa
        p = d0 + c1 + 0.5 * (kappa @ c1 - c1 @ kappa)
    x = system.orthogonalizer
    return jnp.einsum("mi,sij,sjk,slk,nl->smn", x, frame.rotation, p, frame.rotation, x)


class _RotationModel(eqx.Module):
    """The energy near an idempotent density matrix P as a function of the orbital rotations κ
    (virtual–occupied block, per spin): its gradient, Hessian–vector products and the diagonal
    of the non-interacting Hessian. Shared by [`nlxc.scf.OrbitalNewton`][] and the stability
    analysis of [`nlxc.scf.solve`][]."""

    functional: AbstractFunctional
    system: System
    frame: _Frame

    def density(self, kappa, *, exact: bool = False):
        """P(κ) = X U e^κ diag(n) e^{−κ} Uᵀ Xᵀ (second order in κ unless `exact`)."""
        return _density(_generator(kappa, self.frame, self.system.restricted), self.frame, self.system, exact=exact)

    def gradient(self, fock: Float[Array, "2 nao nao"]) -> Float[Array, "2 nmo nmo"]:
        """∂E/∂κ at κ = 0 from the Fock matrix F(P): one vector–Jacobian product."""
        _, pullback = jax.vjp(self.density, jnp.zeros_like(self.frame.rotation))
        (grad,) = pullback(fock)
        return jnp.where(self.frame.mask, grad, 0.0)

    def orbital_gradient(self, kappa) -> Float[Array, "2 nmo nmo"]:
        """∂E(P(κ))/∂κ = (∂P/∂κ)ᵀ F(P(κ)): one Fock build and a vector–Jacobian product."""
        p, pull = jax.vjp(self.density, kappa)
        _, f = energy_and_fock(self.functional, self.system, p)
        return jnp.where(self.frame.mask, pull(f)[0], 0.0)

    def hessian_product(self, v) -> Float[Array, "2 nmo nmo"]:
        """H v by a central difference of the exact orbital gradient, ±h along v/‖v‖ (h = 1e-4
        rad): error O(h²) relative, and one Fock build program (vmapped over the two points)
        instead of a forward-over-reverse pass, which would compile a second program."""
        size = jnp.sqrt(jnp.sum(v * v))
        safe = jnp.where(size > 0, size, 1.0)
        h = _FD_STEP / safe
        plus, minus = jax.vmap(self.orbital_gradient)(jnp.stack([h * v, -h * v]))
        return jnp.where(size > 0, (plus - minus) / (2.0 * h), 0.0)

    def preconditioner(self, fock: Float[Array, "2 nao nao"]) -> Float[Array, "2 nmo nmo"]:
        """The diagonal Hessian of the non-interacting energy, ∝ ε_virtual − ε_occupied (at
        least 0.05 Ha; 1 outside the rotation parameters)."""
        frame, x = self.frame, self.system.orthogonalizer
        fock_frame = jnp.einsum("sip,mi,smn,nj,sjq->spq", frame.rotation, x, fock, x, frame.rotation)
        eps = jnp.diagonal(fock_frame, axis1=-2, axis2=-1)
        weight = 4.0 if self.system.restricted else 2.0
        diag = weight * (eps[:, :, None] - eps[:, None, :])
        return jnp.where(frame.mask, jnp.maximum(diag, 0.05), 1.0)


def _steihaug(hvp, grad, radius, max_steps: int, rtol):
    """Steihaug's truncated conjugate gradients for min gᵀz + ½ zᵀHz subject to ‖z‖ ≤ radius.

    Stops at the trust-region boundary, on negative curvature (following it to the boundary,
    which is how the step leaves a saddle point), at ‖r‖ ≤ rtol‖g‖, or after `max_steps`
    Hessian–vector products. Returns z and the model's predicted change gᵀz + ½ zᵀHz.
    T. Steihaug, SIAM J. Numer. Anal. 20, 626 (1983), doi:10.1137/0720042; Nocedal & Wright,
    *Numerical Optimization*, algorithm 7.2.
    """
    dot = lambda a, b: jnp.sum(a * b)  # noqa: E731
    g_norm = jnp.sqrt(dot(grad, grad))

    def to_boundary(z, d):
        dd, zd, zz = dot(d, d), dot(z, d), dot(z, z)
        dd = jnp.where(dd > 0, dd, 1.0)
        return (-zd + jnp.sqrt(jnp.maximum(zd * zd + dd * (radius * radius - zz), 0.0))) / dd

    def body(carry):
        i, z, hz, r, d, _ = carry
        hd = hvp(d)
        curvature = dot(d, hd)
        rr = dot(r, r)
        alpha = rr / jnp.where(curvature > 0, curvature, 1.0)
        z_trial = z + alpha * d
        outside = (curvature <= 0) | (jnp.sqrt(dot(z_trial, z_trial)) >= radius)
        tau = jnp.where(outside, to_boundary(z, d), alpha)
        z_new, hz_new = z + tau * d, hz + tau * hd
        r_new = r + alpha * hd
        small = jnp.sqrt(dot(r_new, r_new)) <= rtol * g_norm
        beta = dot(r_new, r_new) / jnp.where(rr > 0, rr, 1.0)
        return i + 1, z_new, hz_new, r_new, -r_new + beta * d, outside | small

    def cond(carry):
        i, *_, done = carry
        return (i < max_steps) & ~done

    zero = jnp.zeros_like(grad)
    start = (jnp.array(0), zero, zero, grad, -grad, g_norm == 0)
    _, z, hz, *_ = jax.lax.while_loop(cond, body, start)
    return z, dot(grad, z) + 0.5 * dot(z, hz)


class OrbitalNewton(AbstractSCFSolver):
    """Newton's method on the orbital rotations, for the Kohn–Sham fixed point P = D(F(P)).

    The energy is minimised over unitary rotations of the occupied orbitals into the virtual
    ones, P(κ) = e^κ P e^{−κ} (κ antisymmetric, occupied–virtual block, per spin; one κ for
    both spins of a restricted system). Each step solves the Newton equations H κ = −g with the
    exact orbital gradient g (automatic differentiation) and Hessian–vector products H v (central
    differences of that gradient, step 1e-4 rad, error ~1e-8 relative; so the
    exchange–correlation kernel and exact exchange are included) by Steihaug's truncated conjugate gradients inside a trust region, in variables
    scaled by the orbital-energy differences (the diagonal of the non-interacting Hessian). A
    step that raises the energy is rejected and shrinks the trust radius; the radius follows
    the ratio of actual to predicted energy change. This converges where Pulay's DIIS
    stagnates: along soft rotational modes (the broken-symmetry π* orbital of NO, degenerate
    open shells) Newton's step is exact to second order, and negative curvature (a saddle
    point of the energy) is followed downhill. Second-order SCF as in Bacskay, Chem. Phys. 61,
    385 (1981), doi:10.1016/0301-0104(81)85156-7; the trust region as in Nocedal & Wright,
    *Numerical Optimization*, ch. 4 and 7.

    Its fixed-point function is [`scf_map`][nlxc.scf.scf_map], whose auxiliary output gives the
    energy and the Fock matrix of each iterate. The convergence test is that of
    [`nlxc.scf.CDIIS`][]: `norm(D(F(P)) − P) < atol + rtol·|D(F(P))|`, and the last step returns
    D(F(P)). It is the default fallback of [`nlxc.scf.solve`][] when its first solver stagnates.

    Each step costs one Fock build, up to `cg_steps` Hessian–vector products (two Fock builds
    each) and one energy evaluation.

    **Arguments:** `rtol`, `atol`, `norm` (default `optimistix.max_norm`), `cg_steps` (default
    150), `cg_rtol` (default 1e-8; the soft modes this solver is for carry a small part of the
    gradient, so a loose CG tolerance leaves them unresolved), `trust_radius` (initial radius in the scaled variables,
    default 0.5), `max_trust_radius` (default 2), `level_shift` (Hartree, default 0),
    `patience` (default 40: within [`nlxc.scf.solve`][], the Newton phase stops, result
    `nonlinear_divergence`, after this many steps that neither reduce the residual by 10 %, nor
    lower the energy by more than `energy_tol`, nor halve the smallest orbital-gradient norm so
    far), `energy_tol` (Hartree, default 1e-8), `gradient_atol` (Hartree, default 1e-6: the
    orbital-gradient test at a stationary point whose occupations are not aufbau, below).

    Energy changes below the rounding noise of the total energy (1e-13·|E|) are not resolved:
    a step whose predicted lowering is smaller than that is taken as the quadratic model gives
    it, without the energy test and without changing the trust radius.

    When no aufbau solution exists near the energy minimum (the lowest virtual orbital of the
    minimum lies below the highest occupied one, e.g. NO with SVWN in def2-SVP, as PySCF's
    second-order solver also finds) the fixed point P = D(F(P)) does not exist there. With the
    maximum-overlap arguments that [`nlxc.scf.solve`][] gives its fallback
    ([`SCFArguments.maximum_overlap`][nlxc.scf.SCFArguments]) such a minimum is a fixed point of
    the map, and the solve converges there: at an iterate whose occupied orbitals are not the
    lowest of its Fock matrix (maximum overlap, [`nlxc.scf.is_aufbau`][]) the convergence test
    is the orbital gradient, `norm(Xᵀ(F P S − S P F)X) < gradient_atol` (X the orthogonaliser),
    and the iterate itself is returned ([`SCFResult.aufbau`][nlxc.scf.SCFResult] `False`).
    Aufbau iterates keep the test above. `gradient_atol` is looser than `atol` by default
    (1e-6 Ha; PySCF's `mf.newton()` stops at a gradient norm of √`conv_tol`, 1e-5 for 1e-10):
    such a state can have a nearly free rotation (NO's singly occupied π* orbital turning about
    the bond, whose energy varies with its orientation on the grid by ~1e-9 Ha), along which the
    finite-difference Hessian is noise; there, measured on NO/SVWN in def2-SVP at grid level 3,
    Newton steps lower the energy by ~1e-10 Ha each while the commutator bounces between 2e-7
    and 1e-5 Ha and never reaches 1e-8. Without those arguments (this solver alone, with
    [`nlxc.scf.scf_map`][]) the solve reports `converged=False` at that minimum, after
    `patience` steps without progress.
    """

    rtol: float = 0.0
    atol: float = 1e-8
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    cg_steps: int = eqx.field(static=True, default=150)
    cg_rtol: float = 1e-8
    trust_radius: float = 0.5
    max_trust_radius: float = 2.0
    level_shift: float = 0.0
    patience: int = eqx.field(static=True, default=40)
    energy_tol: float = 1e-8
    gradient_atol: float = 1e-6

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        return _NewtonState(SCFProgress.start(y.dtype, options), jnp.asarray(self.trust_radius, dtype=y.dtype),
                            jnp.asarray(jnp.inf, dtype=y.dtype))

    def step(self, fn, y, args: SCFArguments, options, state, tags):
        functional, system = args.functional, args.system
        # the SCF map: its fixed-point residual (the convergence test and the last step), and the
        # energy and Fock matrix of y in its auxiliary output
        image, aux = fn(y, args)
        fock, energy0 = aux.fock, aux.energy
        # the aufbau image D(F(y)): with maximum-overlap arguments the map's own image keeps y's
        # occupations (that is the map the implicit adjoint differentiates), but the aufbau test
        # and the last step stay those of `scf_map`
        g_density = (density_from_fock(level_shifted(fock, y, system, args.level_shift), system, args.smearing)
                     if args.maximum_overlap else image)
        r = g_density - y
        error = self.relative_error(r, g_density)

        frame = _canonical_frame(_frame(y, system), fock, system)
        model = _RotationModel(functional, system, frame)
        grad = model.gradient(fock)
        diag = model.preconditioner(fock)

        # the trust-region Newton step in the variables z = √diag · κ (Steihaug's truncated CG)
        root = jnp.sqrt(diag)
        step, predicted = _steihaug(
            lambda v: model.hessian_product(v / root) / root, grad / root, state.trust_radius, self.cg_steps, self.cg_rtol,
        )
        kappa = jnp.where(frame.mask, step / root, 0.0)
        candidate = model.density(kappa, exact=True)
        energy1 = energy_components(functional, system, candidate).total
        actual = energy1 - energy0
        # Near convergence the predicted change falls below the rounding noise of the total
        # energy (a sum over the grid and the basis: ~1e-12 Ha for S in def2-SVP, whose last
        # Newton steps lower it by ~1e-12): there the sign of `actual` and the ratio are noise,
        # which rejected good steps and shrank the radius until the solve stagnated. Such a step
        # is taken as the quadratic model gives it, and the radius is left as it is.
        noise = _ENERGY_NOISE * jnp.abs(energy0)
        resolved = -predicted > noise
        accepted = jnp.isfinite(energy1) & ((actual <= noise) | ~resolved)
        ratio = jnp.where(resolved, actual / jnp.where(predicted < 0, predicted, -1e-300), 0.5)
        length = jnp.sqrt(jnp.sum(step * step))
        at_boundary = length >= 0.99 * state.trust_radius
        trust = jnp.where(~accepted | (ratio < 0.25), 0.25 * jnp.minimum(state.trust_radius, length),
                          jnp.where((ratio > 0.75) & at_boundary, 2.0 * state.trust_radius, state.trust_radius))
        trust = jnp.clip(jnp.where(jnp.isfinite(trust), trust, 1e-6), 1e-6, self.max_trust_radius)
        new_y = jnp.where(accepted, candidate, y)
        new_y = jnp.where(error < 1, g_density, new_y)
        # progress for `patience`: a smaller residual, an accepted step that lowered the energy by
        # more than `energy_tol`, or an orbital gradient half the smallest so far. The last is how
        # a minimum along soft modes is approached (S with PBE: the β 3p hole turns slowly towards
        # the grid's preferred axis, with energy changes of 1e-12 Ha and a residual that falls only
        # every few tens of steps). Where none of the three happens any more (the gradient at its
        # noise floor above `atol`), the solve stops instead of spending its budget.
        gradient_norm = jnp.sqrt(jnp.sum(grad * grad))
        smaller = gradient_norm < 0.5 * state.best_gradient
        improved = (accepted & (actual < -self.energy_tol)) | smaller
        measure = error
        if args.maximum_overlap:
            # a stationary point whose occupations are not aufbau (an occupied orbital of y above a
            # virtual one of F(y), e.g. NO with SVWN in def2-SVP): converged when the orbital
            # gradient, the commutator Xᵀ(F P S − S P F)X, is below `gradient_atol`; y itself is
            # returned (D(F(y)) would be another state). Aufbau iterates keep the aufbau test.
            energies, coefficients = orbitals(fock, system)
            ordered = is_aufbau(energies, maximum_overlap_occupations(coefficients, y, system))
            gradient_error = self.norm(commutator_error(fock, y, system)) / self.gradient_atol
            stationary = ~ordered & (gradient_error < 1) & ~(error < 1)
            new_y = jnp.where(stationary, y, new_y)
            measure = jnp.where(stationary, gradient_error, error)
        progress = state.progress.advance(measure, jnp.all(jnp.isfinite(r)), improved)
        best_gradient = jnp.where(smaller, gradient_norm, state.best_gradient)
        return new_y, _NewtonState(progress, trust, best_gradient), aux
