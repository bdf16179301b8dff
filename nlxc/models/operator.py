"""A neural operator whose learnable kernel integral is evaluated through the auxiliary basis."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ..grid_operators import GridOperatorSpec, require_grid_operators
from ..xc import AbstractFunctional, LocalFeatures
from ._mlp import MLP
from .descriptors import N_LOCAL_INPUTS, lda_exchange_energy_density, local_inputs

__all__ = ["AuxiliaryNeuralOperator"]


class AuxiliaryNeuralOperator(AbstractFunctional):
    """A neural operator on the grid with a learnable radial kernel, applied through the auxiliary basis.

    Channels start as h⁰(r) = MLP(x(r)) of the local inputs x = (u, w, ζ², v)
    ([`local_inputs`][nlxc.models.local_inputs]); each of `layers` integral-operator layers does

        h^{t+1}(r) = h^t(r) + silu(W_t h^t(r) + b_t + asinh(Σ_j K_{t,j} ∫ κ_j(|r − r'|) n(r') h^t(r') d³r')),

    a Fourier/graph neural operator layer (Li et al., arXiv:2010.08895; Kovachki et al., JMLR 24,
    89 (2023)) whose kernel κθ(r) = Σ_j K_{t,j} κ_j(r) is a learnable combination (channel
    mixing matrices K_{t,j}) of normalised Gaussians κ_j(r) = (b_j/π)^{3/2} e^{−b_j r²}, acting on
    the density-weighted channels n·h. The integral is evaluated through the auxiliary basis: n·h
    is L²-projected on the auxiliary functions (the `projection` operator of
    [`nlxc.AuxiliaryGridOperators`][]: d = Πᵀ(w ∘ n h)), and the Gaussian convolution of each
    auxiliary function is precomputed on the grid by PySCF (the `gaussian` operators). Then

        E = ∫ e_x^LDA(n(r)) g([x(r), h^L(r)]) d³r   (Hartree),

    with g initialised near zero.

    Invariant to rotations, translations and atom permutations (the auxiliary basis moves with the
    atoms); size-consistent, since the L² projection and the Gaussian kernels are local.
    Cost O(ngrid · naux · c · (1 + n_b)) per layer: linear in the grid for a given molecule,
    and like density-fitted Coulomb (naux grows with the molecule) O(N²) across molecules.
    The System must carry the operators: build it with
    `System.from_pyscf(mol, grid_operators=model.required_grid_operators)`.

    **Raises:** [`nlxc.InputError`][] when called on a System without those operators.
    """

    encoder: MLP
    mixes: tuple[Float[Array, "c c"], ...]
    biases: tuple[Float[Array, " c"], ...]
    kernels: tuple[Float[Array, "nb c c"], ...]
    head: MLP
    exponents: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, *, channels: int = 8, layers: int = 2, exponents=(0.2, 0.8, 3.2), width: int = 16,
                 final_scale: float = 1e-2, key: PRNGKeyArray):
        keys = jr.split(key, 2 * layers + 2)
        self.exponents = tuple(float(b) for b in exponents)
        GridOperatorSpec(exponents=self.exponents)  # validates (InputError for bad exponents)
        nb = len(self.exponents)
        self.encoder = MLP(N_LOCAL_INPUTS, out_features=channels, width=width, final_scale=1.0, key=keys[0])
        self.mixes = tuple(jr.normal(keys[1 + 2 * i], (channels, channels), dtype=jnp.float64) / math.sqrt(channels)
                           for i in range(layers))
        self.biases = tuple(jnp.zeros(channels) for _ in range(layers))
        self.kernels = tuple(jr.normal(keys[2 + 2 * i], (nb, channels, channels), dtype=jnp.float64)
                             / math.sqrt(nb * channels) for i in range(layers))
        self.head = MLP(N_LOCAL_INPUTS + channels, width=width, final_scale=final_scale, key=keys[-1])

    @property
    def required_grid_operators(self) -> GridOperatorSpec:
        """The grid operators a System needs: the Gaussian kernels and the L² projection."""
        return GridOperatorSpec(exponents=self.exponents, projection=True)

    def __call__(self, density, density_matrix, system):
        ops = require_grid_operators(system, self.required_grid_operators, type(self).__name__)
        gaussians = ops.gaussian_operators(self.exponents)  # (nb, ngrid, naux)
        projection = ops.projection[0]  # (ngrid, naux)
        features = LocalFeatures.from_density(density)
        x = local_inputs(features)
        h = self.encoder(x)  # (c, ngrid)
        wn = system.grid_weights * features.n
        for mix, bias, kernel in zip(self.mixes, self.biases, self.kernels):
            coefficients = (h * wn) @ projection  # (c, naux): L² projection of n·h
            convolved = jnp.einsum("jgR,cR->jcg", gaussians, coefficients)  # (nb, c, ngrid)
            integral = jnp.einsum("jdc,jcg->dg", kernel, convolved)
            h = h + jax.nn.silu(mix @ h + bias[:, None] + jnp.arcsinh(integral))
        g = self.head(jnp.concatenate([x, h], axis=0))
        e = lda_exchange_energy_density(features.n, features.mask) * g
        return jnp.sum(system.grid_weights * e)
