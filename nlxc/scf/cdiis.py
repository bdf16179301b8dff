"""Pulay's commutator DIIS on the Fock matrix, as an optimistix fixed-point solver."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, PyTree, Scalar

from ._aufbau import density_from_fock, level_shifted
from ._base import AbstractSCFSolver, SCFArguments, SCFProgress
from ._energy import energy_and_fock
from .diis import diis_coefficients


class _CDIISState(eqx.Module):
    focks: Float[Array, "history 2 nao nao"]
    errors: Float[Array, "history n"]
    progress: SCFProgress


def commutator_error(fock, density, system):
    """Xᵀ(Fσ Pσ S − S Pσ Fσ)X per spin, flattened: zero exactly at self-consistency."""
    s = system.overlap
    fps = fock @ density @ s[None]
    x = system.orthogonalizer
    return jnp.einsum("mi,smn,nj->sij", x, fps - jnp.swapaxes(fps, -1, -2), x).reshape(-1)


class CDIIS(AbstractSCFSolver):
    """Pulay's commutator DIIS (CDIIS) for the Kohn–Sham fixed point P = D(F(P)).

    Each step builds F(Pₙ), stores it with its error eₙ = Xᵀ(F Pₙ S − S Pₙ F)X (S the overlap,
    X the orthogonaliser; e = 0 exactly at self-consistency), extrapolates the Fock matrix

        F* = Σᵢ cᵢ F(Pᵢ),   c = argmin ‖Σᵢ cᵢ eᵢ‖²  subject to  Σᵢ cᵢ = 1,

    and diagonalises F* (with the `level_shift`, Hartree, on the virtual orbitals) for the next
    density Pₙ₊₁ = D(F*). This is the DIIS of most quantum-chemistry codes (PySCF's default):
    P. Pulay, J. Comput. Chem. 3, 556 (1982), doi:10.1002/jcc.540030413. Extrapolating the Fock
    matrix rather than the density lets degenerate, partially filled shells (the C, O and F
    atoms, OH) settle on one occupied orbital, where density-matrix DIIS
    ([`nlxc.scf.DIIS`][]) can oscillate between the degenerate orbitals.

    The fixed point, its convergence test and its gradients are those of [`nlxc.scf.solve`][]:
    the solve stops when `norm(D(F(P)) − P) < atol + rtol·|D(F(P))|` and returns D(F(P)).

    This solver is specific to `nlxc.scf.solve`: it reads the functional, the System, the level
    shift and the smearing from the [`SCFArguments`][nlxc.scf.SCFArguments] `solve` gives the
    fixed-point map.

    **Arguments:** `rtol`, `atol`, `norm` (default `optimistix.max_norm`), `history_size`
    (default 8), `level_shift` ≥ 0 (Hartree, default 0).
    """

    rtol: float = 0.0
    atol: float = 1e-8
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    history_size: int = eqx.field(static=True, default=8)
    level_shift: float = 0.0
    patience: int = eqx.field(static=True, default=12)

    def init(self, fn, y, args: SCFArguments, options, f_struct, aux_struct, tags):
        nao = y.shape[-1]
        n = 2 * args.system.nmo ** 2
        return _CDIISState(
            jnp.zeros((self.history_size, 2, nao, nao), y.dtype),
            jnp.zeros((self.history_size, n), y.dtype),
            SCFProgress.start(y.dtype, options),
        )

    def step(self, fn, y, args: SCFArguments, options, state, tags):
        system, shift, smearing = args.system, args.level_shift, args.smearing
        components, fock = energy_and_fock(args.functional, system, y)
        error_vector = commutator_error(fock, y, system)
        count = state.progress.count
        slot = count % self.history_size
        focks = state.focks.at[slot].set(fock)
        errors = state.errors.at[slot].set(error_vector)
        n_valid = jnp.minimum(count + 1, self.history_size)
        valid = jnp.arange(self.history_size) < n_valid
        coeffs = diis_coefficients(errors, valid)
        extrapolated = jnp.einsum("h,hsmn->smn", coeffs, focks)
        ok = jnp.all(jnp.isfinite(extrapolated))
        extrapolated = jnp.where(ok, extrapolated, fock)

        # the fixed-point residual of solve's map (for the convergence test and the last step)
        g = density_from_fock(level_shifted(fock, y, system, shift), system, smearing)
        r = g - y
        error = self.relative_error(r, g)
        new_y = density_from_fock(level_shifted(extrapolated, y, system, shift), system, smearing)
        new_y = jnp.where(error < 1, g, new_y)
        progress = state.progress.advance(error, jnp.all(jnp.isfinite(r)))
        return new_y, _CDIISState(focks, errors, progress), components.total
