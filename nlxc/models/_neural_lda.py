"""A neural local spin-density approximation, learned from scratch (private; `nlxc.models.NeuralLDA`)."""

from __future__ import annotations

import math
from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..xc import AbstractSemilocalFunctional
from ..xc.lda import spin_variables
from ._mlp import MLP

# −ε_x(r_s, ζ = 0) · r_s of the uniform gas: c_x = (3/4)(9/(4π²))^{1/3} ≈ 0.4582 Hartree·Bohr
_C_X = 0.75 * (9.0 / (4.0 * math.pi**2)) ** (1.0 / 3.0)


class NeuralLDA(AbstractSemilocalFunctional):
    """A neural local spin-density approximation (`[model] correction = "NeuralLDA"`).

    ε_xc(r_s, ζ) = −c_x / r_s · (1 + g(ln r_s / 2, ζ²))   (Hartree per electron, r_s in Bohr),

    with g a pointwise [`nlxc.models.MLP`][] and c_x = (3/4)(9/(4π²))^{1/3} ≈ 0.458 Hartree·Bohr
    (g = 0 is spin-unpolarised Slater exchange at every ζ, P. A. M. Dirac, Proc. Cambridge
    Philos. Soc. 26, 376 (1930), doi:10.1017/S0305004100016108). Nothing of a target LDA is built
    in: the spin scaling of exchange and all of the correlation must be learned (the
    `experiments/learn_lda` model). e_xc = n ε_xc, Hartree/Bohr³; densities below 1e-15 are
    screened as in libxc (`nlxc.xc.lda.spin_variables`), so e_xc stays finite as ρ → 0.

    **Arguments:** `width`, `depth` (hidden units and layers of the MLP g), `final_scale` (the
    scale of g's last layer at initialisation, so g starts of that order), `key` (a JAX PRNG key).
    """

    family: ClassVar[str] = "lda"
    dens_threshold: ClassVar[float] = 1e-15

    net: MLP

    def __init__(self, *, width: int = 16, depth: int = 2, final_scale: float = 0.1, key: PRNGKeyArray):
        self.net = MLP(2, width=width, depth=depth, final_scale=final_scale, key=key)

    def epsilon(self, rs: Float[Array, " ngrid"], zeta: Float[Array, " ngrid"]) -> Float[Array, " ngrid"]:
        """ε_xc(r_s, ζ), Hartree, for r_s (Bohr, > 0) and ζ on the grid."""
        g = self.net(jnp.stack([jnp.log(rs) / 2.0, zeta**2]))
        return -_C_X / rs * (1.0 + g)

    def energy_density(self, rho, sigma, tau):
        """e_xc = n ε_xc(r_s, ζ) (Hartree/Bohr³) from ρσ `(2, ngrid)`; `sigma`, `tau` are unused."""
        v = spin_variables(rho, self.dens_threshold)
        return jnp.where(v.mask, v.n_in * self.epsilon(v.rs, v.zeta), 0.0)
