"""Internal stability analysis of a converged unrestricted SCF state, and the step out of a saddle."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Scalar

from .._errors import InputError
from ._aufbau import _lapack_eigh
from ._base import SCFArguments
from ._energy import energy_and_fock, energy_components
from ._newton import _canonical_frame, _frame, _RotationModel


_INACTIVE = 1e30  # the diagonal of T past a breakdown of the Lanczos recursion


def _lowest_eigenpair(operator, start, steps: int) -> tuple[Scalar, Array]:
    """The lowest Ritz pair of a symmetric `operator` after `steps` Lanczos iterations with full
    reorthogonalisation, from `start`. A Ritz value is never below the lowest eigenvalue
    (Cauchy interlacing), so a negative one proves negative curvature. C. Lanczos, J. Res. Natl.
    Bur. Stand. 45, 255 (1950), doi:10.6028/jres.045.026; B. N. Parlett, *The Symmetric
    Eigenvalue Problem* (SIAM, 1998), ch. 13, doi:10.1137/1.9781611971163."""
    dot = lambda a, b: jnp.sum(a * b)  # noqa: E731
    v0 = start / jnp.sqrt(dot(start, start))
    basis = jnp.zeros((steps, *start.shape), start.dtype)

    def project_out(basis, w):
        # twice is enough (Kahan–Parlett): w ⟂ every Lanczos vector so far (unused rows are zero)
        for _ in range(2):
            w = w - jnp.tensordot(jnp.tensordot(basis, w, axes=w.ndim), basis, axes=1)
        return w

    def body(j, carry):
        basis, alphas, betas, v, active = carry
        basis = basis.at[j].set(v)
        w = operator(v)
        alpha = dot(w, v)
        w = project_out(basis, w)
        beta = jnp.sqrt(dot(w, w))
        # an invariant Krylov space (β ≈ 0, e.g. after as many steps as parameters) ends the
        # recursion: later rows of T get a huge diagonal, so they never give the lowest Ritz value
        alphas = alphas.at[j].set(jnp.where(active, alpha, _INACTIVE))
        betas = betas.at[j].set(jnp.where(active, beta, 0.0))
        still = active & (beta > 1e-10 * jnp.maximum(jnp.abs(alpha), 1.0))
        v_next = jnp.where(still, w / jnp.where(still, beta, 1.0), 0.0)
        return basis, alphas, betas, v_next, still

    zeros = jnp.zeros(steps, start.dtype)
    basis, alphas, betas, _, _ = jax.lax.fori_loop(0, steps, body, (basis, zeros, zeros, v0, jnp.asarray(True)))
    off = betas[:-1]
    tridiagonal = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    theta, s = _lapack_eigh(tridiagonal)
    return theta[0], jnp.tensordot(s[:, 0], basis, axes=1)


class StabilityAnalysis(eqx.Module):
    """Internal stability analysis of an unrestricted Kohn–Sham state, and the step out of a saddle.

    A self-consistent density matrix (F P S = S P F) is a stationary point of the energy over
    the orbital rotations κ (occupied–virtual, per spin), not necessarily a minimum. For
    degenerate or nearly degenerate open shells (the p shells of C, O and F, the π hole of OH,
    NO's π*) Pulay's DIIS can settle at a saddle point, a few µHa above the minimum, e.g. C and
    O with r2SCAN in def2-SVP. This analysis finds the lowest eigenvalue of the orbital Hessian
    (the UKS → UKS stability matrix A + B) by `lanczos_steps` Lanczos iterations on
    Hessian–vector products (central differences of the exact orbital gradient, two Fock
    builds each, so the exchange–correlation kernel and exact exchange are included), in the
    variables scaled by the orbital-energy differences of the canonical orbitals (the Fock
    matrix diagonalised within the occupied and within the virtual space), from a fixed
    pseudo-random start weighted towards the soft rotations. If that eigenvalue is below
    `−threshold` (scaled, dimensionless) the state is a saddle point: the density matrix is
    rotated along the eigenvector to the lowest energy among the trial lengths `±step_lengths`
    (scaled variables), if that lowers the energy by more than `energy_tol` (Hartree), and
    [`nlxc.scf.solve`][]'s fallback (second-order, [`nlxc.scf.OrbitalNewton`][]) converges from
    there. The analysis works on stop-gradient copies: gradients of the result come from the
    implicit adjoint at the final fixed point.

    Stability analysis as in R. Seeger and J. A. Pople, J. Chem. Phys. 66, 3045 (1977),
    doi:10.1063/1.434318 (PySCF's `stability(internal=True)` does the same for UKS); the
    Lanczos method as in Parlett, *The Symmetric Eigenvalue Problem*, doi:10.1137/1.9781611971163.

    Cost: `lanczos_steps` Hessian–vector products (2 Fock builds each) and `2·len(step_lengths)`
    energies per converged unrestricted solve; nothing for restricted (closed-shell) Systems,
    which [`nlxc.scf.solve`][] does not analyse. Pass `stability=None` to `solve` to skip it.

    **Arguments:** `lanczos_steps` (static, default 24), `threshold` (default 1e-4),
    `step_lengths` (static, default `(0.00625, 0.0125, …, 0.4, 0.8)`, factors of 2),
    `energy_tol` (Hartree, default 1e-9).

    **Raises:** [`nlxc.InputError`][] for `lanczos_steps` not an integer ≥ 2 or `step_lengths`
    not positive numbers.
    """

    lanczos_steps: int = eqx.field(static=True, default=24)
    threshold: float = 1e-4
    # a factor-2 grid: along E₀ − a t² + b t⁴ one trial lies within √2 of the minimum t*, where it
    # gains at least 3/4 of the drop; the short ones for soft modes (ClO and Cl with r2SCAN in
    # def2-SVP, canonical scaling: t* ≈ 0.025; for Cl every trial from 0.05 up raises the energy)
    step_lengths: tuple[float, ...] = eqx.field(
        static=True, default=(0.00625, 0.0125, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8))
    energy_tol: float = 1e-9

    def __check_init__(self):
        if isinstance(self.lanczos_steps, bool) or not isinstance(self.lanczos_steps, int) or self.lanczos_steps < 2:
            raise InputError(f"lanczos_steps must be an integer ≥ 2, got {self.lanczos_steps!r}")
        if not self.step_lengths or any(not (float(t) > 0) for t in self.step_lengths):
            raise InputError(f"step_lengths must be positive numbers, got {self.step_lengths!r}")

    def lowest_eigenvalue(self, density: Float[Array, "2 nao nao"], args: SCFArguments):
        """The lowest eigenvalue of the scaled orbital Hessian at `density` (dimensionless; < 0
        at a saddle point), its eigenvector in the scaled variables `(2, nmo, nmo)`, the
        unscaled rotation `κ` along it, and the energy model, whose frame is the canonical
        orbitals of `density` (rotation parameters: virtual row, occupied column). For an
        idempotent `density`."""
        functional, system = args.functional, args.system
        _, fock = energy_and_fock(functional, system, density)
        model = _RotationModel(functional, system, _canonical_frame(_frame(density, system), fock, system))
        diag = model.preconditioner(fock)
        root = jnp.sqrt(diag)
        mask = model.frame.mask

        def scaled_hessian(z):
            return jnp.where(mask, model.hessian_product(jnp.where(mask, z, 0.0) / root) / root, 0.0)

        start = jnp.where(mask, jax.random.normal(jax.random.key(0), diag.shape, diag.dtype) / diag, 0.0)
        value, vector = _lowest_eigenpair(scaled_hessian, start, self.lanczos_steps)
        vector = jnp.where(mask, vector, 0.0)
        return value, vector, vector / root, model

    def follow(self, density: Float[Array, "2 nao nao"], args: SCFArguments) -> tuple[Float[Array, "2 nao nao"], Bool[Array, ""], Scalar]:
        """From a converged `density`: the density matrix rotated out of a saddle point (or
        `density` itself when the state is stable, or when no trial rotation lowers the energy),
        whether it moved, and the lowest scaled Hessian eigenvalue."""
        value, _, kappa, model = self.lowest_eigenvalue(density, args)
        energy0 = energy_components(args.functional, args.system, density).total
        lengths = jnp.asarray(self.step_lengths, density.dtype)
        trials = jnp.concatenate([lengths, -lengths])

        def trial_energy(t):
            return energy_components(args.functional, args.system, model.density(t * kappa, exact=True)).total

        def search(_):
            energies = jax.lax.map(trial_energy, trials)
            energies = jnp.where(jnp.isfinite(energies), energies, jnp.inf)
            best = jnp.argmin(energies)
            return trials[best], energies[best]

        # the trial rotations only at a saddle point (skipped at a minimum, except under vmap)
        length, energy = jax.lax.cond(value < -self.threshold, search, lambda _: (trials[0], energy0), None)
        moved = (value < -self.threshold) & (energy < energy0 - self.energy_tol)
        rotated = model.density(length * kappa, exact=True)
        return jnp.where(moved, rotated, density), moved, value
