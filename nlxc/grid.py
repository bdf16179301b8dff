"""Density features on the integration grid, computed from the density matrix."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .system import System


class Density(eqx.Module):
    """Spin-resolved density features on the grid (atomic units).

    - `rho`: ρσ(r) = Σ_μν φ_μ(r) Pσ_μν φ_ν(r), electrons / Bohr³, `(2, ngrid)`.
    - `gradient`: ∇ρσ(r), `(2, 3, ngrid)`.
    - `sigma`: (∇ρα·∇ρα, ∇ρα·∇ρβ, ∇ρβ·∇ρβ), `(3, ngrid)` (libxc's σ).
    - `tau`: τσ(r) = ½ Σ_μν ∇φ_μ·∇φ_ν Pσ_μν, `(2, ngrid)` (libxc's convention, with the ½).

    Under `jit`, features a functional does not read are removed by the compiler, so building
    all of them costs nothing for an LDA.
    """

    rho: Float[Array, "2 ngrid"]
    gradient: Float[Array, "2 3 ngrid"]
    sigma: Float[Array, "3 ngrid"]
    tau: Float[Array, "2 ngrid"]

    @classmethod
    def from_density_matrix(cls, density_matrix: Float[Array, "2 nao nao"], system: System) -> Density:
        """Evaluate the features of the α and β density matrices `(2, nao, nao)` on `system`'s grid.

        The density matrices are assumed symmetric. The grid is worked through block by block
        ([`System.map_grid_blocks`][nlxc.System.map_grid_blocks]): each block contracts only the
        basis functions that are non-negligible on it (the System's AO screening), with
        Pσ gathered to those functions. Cost: O(block · size²) per block and spin for ρ and
        ∇ρ, four times that for τ; memory, in forward and reverse mode (the Fock matrix, JVPs),
        O(block · nao + nao²) beyond the stored AO values and the O(ngrid) features.
        """
        if system.restricted:
            # Pα = Pβ: evaluate once on their mean (which keeps ∂E/∂Pα = ∂E/∂Pβ exact).
            mean = 0.5 * (density_matrix[0] + density_matrix[1])
            one = _features(mean[None], system.ao_blocks, system.ngrid)
            rho, gradient, tau = (jnp.concatenate([x, x]) for x in one)
        else:
            rho, gradient, tau = _features(density_matrix, system.ao_blocks, system.ngrid)
        sigma = jnp.stack(
            [
                jnp.einsum("xg,xg->g", gradient[0], gradient[0]),
                jnp.einsum("xg,xg->g", gradient[0], gradient[1]),
                jnp.einsum("xg,xg->g", gradient[1], gradient[1]),
            ]
        )
        return cls(rho=rho, gradient=gradient, sigma=sigma, tau=tau)


@functools.partial(jax.jit, static_argnums=2)  # one compilation per shape when called outside jit
def _features(density_matrix, ao_blocks, ngrid):
    return ao_blocks.map(functools.partial(_block_features, density_matrix=density_matrix), ngrid)


def _block_features(ao, indices, density_matrix):
    """ρσ, ∇ρσ, τσ on one block: `ao` `(4, block, size)`, `indices` `(size,)`, Pσ `(nspin, nao, nao)`."""
    p = density_matrix[:, indices[:, None], indices[None, :]]  # (nspin, size, size)
    # (nspin, block, size): Σ_ν Pσ_μν φ_ν(r)
    p_phi = jnp.einsum("gn,smn->sgm", ao[0], p)
    rho = jnp.einsum("sgm,gm->sg", p_phi, ao[0])
    gradient = 2.0 * jnp.einsum("sgm,xgm->sxg", p_phi, ao[1:4])
    p_dphi = jnp.einsum("xgn,smn->sxgm", ao[1:4], p)
    tau = 0.5 * jnp.einsum("sxgm,xgm->sg", p_dphi, ao[1:4])
    return rho, gradient, tau
