"""The linear-response matrices A and B as operators, by automatic differentiation (private).

A transition vector X (occupied × virtual, per spin) is turned into a transition density
matrix in the AO basis; the forward-mode derivative (JVP) of the energy gradient ∂E/∂Pσ in that
direction, projected onto the occupied–virtual block, is the kernel part of A, A + B or A − B
(Coulomb, exchange–correlation kernel and exact exchange, whatever the functional contains).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..grid import Density
from ..system import System, pack_symmetric
from ..xc import AbstractFunctional

Spin = Literal["singlet", "triplet", "unrestricted"]
"""Which excitations: `"singlet"` and `"triplet"` of a restricted reference (one spatial
occupied × virtual block), `"unrestricted"` (the α and β blocks of an unrestricted reference)."""


def response_energy(functional: AbstractFunctional, system: System,
                    density_matrix: Float[Array, "2 nao nao"]) -> Float[Array, ""]:
    """The electronic energy of α/β density matrices that need not be symmetric, Hartree.

    The same energy as `nlxc.scf.energy_components(...).total` (less the nuclear repulsion)
    for symmetric P. For a non-symmetric P (the transition densities of the response) the
    density on the grid, the Coulomb and the one-electron energy see only the symmetric part
    (Pσ + Pσᵀ)/2, as they do physically, while the functional also receives P itself, so that
    orbital-dependent terms respond to its antisymmetric part (the response to an imaginary,
    Hermitian perturbation of P). The convention, that of [`nlxc.xc.exact_exchange_energy`][]'s
    derivatives and of PySCF's `get_jk(..., hermi=0)`, is that the gradient continues linearly to
    non-symmetric P as the Fock matrix: for exact exchange ∂E/∂Pσ = −Σ_Q B_Q Pσ B_Q.
    """
    sym = 0.5 * (density_matrix + jnp.swapaxes(density_matrix, -1, -2))
    p_total = sym[0] + sym[1]
    one_electron = jnp.sum(p_total * system.core_hamiltonian)
    fitted = system.cderi_packed @ pack_symmetric(p_total)
    coulomb = 0.5 * jnp.dot(fitted, fitted)
    density = Density.from_density_matrix(sym, system)
    return one_electron + coulomb + functional(density, density_matrix, system)


class ResponseOperator(eqx.Module):
    """Products of the Casida matrices A, A + B and A − B with transition vectors (Hartree).

    In canonical Kohn–Sham orbitals of the reference (real orbitals; i, j occupied, a, b
    virtual, σ, τ spins),

        A_{iaσ,jbτ} = δ_ij δ_ab δ_στ (ε_a − ε_i) + (ia|jb) + (ia|f_xc^{στ}|jb) − c_x δ_στ (ij|ab),
        B_{iaσ,jbτ} = (ia|bj) + (ia|f_xc^{στ}|bj) − c_x δ_στ (ib|aj)

    (Casida, in *Recent Advances in Density Functional Methods*, World Scientific (1995),
    doi:10.1142/9789812830586_0005). Nothing of this is written by hand: the kernel part of
    A X, (A + B) X and (A − B) X is Cᵀ_occ [d/dt ∂E/∂Pσ (P₀ + t δP)] C_vir at t = 0 (a JVP of the
    energy gradient, forward over reverse automatic differentiation of
    [`response_energy`][nlxc.response.response_energy]), with the transition density
    δPσ = C_occ Xσ C_virᵀ (A), δP + δPᵀ (A + B) or δP − δPᵀ (A − B). For a functional of the
    density alone, A − B is the diagonal ε_a − ε_i.

    Vectors are flat: `(dim,)` with `dim = nocc·nvir` for `"singlet"`/`"triplet"` (the spatial
    amplitudes x; the spin-orbital vector is (x, ±x)/√2) and `nocc_α·nvir_α + nocc_β·nvir_β`
    for `"unrestricted"` (α block first, each block occupied-major).

    Build one with [`ResponseOperator.from_scf`][nlxc.response.ResponseOperator.from_scf].
    """

    functional: AbstractFunctional
    system: System
    density_matrix: Float[Array, "2 nao nao"]
    occupied: tuple[Float[Array, "nao nocc_a"], Float[Array, "nao nocc_b"]]
    virtual: tuple[Float[Array, "nao nvir_a"], Float[Array, "nao nvir_b"]]
    occupied_energies: tuple[Float[Array, " nocc_a"], Float[Array, " nocc_b"]]
    virtual_energies: tuple[Float[Array, " nvir_a"], Float[Array, " nvir_b"]]
    spin: Spin = eqx.field(static=True)

    @classmethod
    def from_scf(cls, functional: AbstractFunctional, system: System, result, spin: Spin,
                 n_occupied: tuple[int, int], n_orbitals: int) -> ResponseOperator:
        """The operator at the SCF solution `result` (an [`nlxc.SCFResult`][]) of `functional`.

        `n_occupied` (α, β) and `n_orbitals` (the orbitals that are not padding) are static
        integers; [`tddft`][nlxc.response.tddft] reads them from the result. For `"triplet"`
        the functional is evaluated spin-unrestricted (at the restricted density), so that the
        α and β transition densities of opposite sign give the α–α minus α–β kernel.
        Differentiable with respect to the functional's parameters and the result.
        """
        if spin == "triplet":
            system = dataclasses.replace(system, restricted=False)
        functional = functional.prepare(system)
        c, e = result.orbital_coefficients, result.orbital_energies
        spins = (0, 0) if spin != "unrestricted" else (0, 1)
        occupied = tuple(c[s][:, :n] for s, n in zip(spins, _pair(n_occupied, spin)))
        virtual = tuple(c[s][:, n:n_orbitals] for s, n in zip(spins, _pair(n_occupied, spin)))
        occupied_energies = tuple(e[s][:n] for s, n in zip(spins, _pair(n_occupied, spin)))
        virtual_energies = tuple(e[s][n:n_orbitals] for s, n in zip(spins, _pair(n_occupied, spin)))
        return cls(functional, system, result.density_matrix, occupied, virtual, occupied_energies,
                   virtual_energies, spin)

    @property
    def block_shapes(self) -> tuple[tuple[int, int], ...]:
        """(nocc, nvir) of each block: one for singlet/triplet, α and β for unrestricted."""
        n = 1 if self.spin != "unrestricted" else 2
        return tuple((self.occupied[s].shape[1], self.virtual[s].shape[1]) for s in range(n))

    @property
    def dimension(self) -> int:
        """The number of single excitations, `dim`."""
        return sum(o * v for o, v in self.block_shapes)

    def diagonal(self) -> Float[Array, " dim"]:
        """The orbital-energy differences ε_a − ε_i, `(dim,)`, Hartree (the preconditioner)."""
        blocks = [(self.virtual_energies[s][None, :] - self.occupied_energies[s][:, None]).ravel()
                  for s in range(len(self.block_shapes))]
        return jnp.concatenate(blocks)

    def _blocks(self, x):
        out, start = [], 0
        for o, v in self.block_shapes:
            out.append(x[start:start + o * v].reshape(o, v))
            start += o * v
        return out

    def _kernel(self, x: Float[Array, " dim"], kind: Literal["half", "sym", "anti"]) -> Float[Array, " dim"]:
        blocks = self._blocks(x)
        if self.spin == "singlet":
            blocks = [blocks[0], blocks[0]]
        elif self.spin == "triplet":
            blocks = [blocks[0], -blocks[0]]
        spins = (0, 0) if self.spin != "unrestricted" else (0, 1)
        directions = []
        for sigma, xs in enumerate(blocks):
            s = spins[sigma]
            half = self.occupied[s] @ xs @ self.virtual[s].T
            if kind == "half":
                directions.append(half)
            elif kind == "sym":
                directions.append(half + half.T)
            else:
                directions.append(half - half.T)
        direction = jnp.stack(directions)

        def gradient(p):
            return jax.grad(response_energy, argnums=2)(self.functional, self.system, p)

        _, dg = jax.jvp(gradient, (self.density_matrix,), (direction,))
        n_read = 1 if self.spin != "unrestricted" else 2
        out = [self.occupied[s].T @ dg[s] @ self.virtual[s] for s in range(n_read)]
        return jnp.concatenate([o.ravel() for o in out])

    def a(self, x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """A X, `(dim,)`, Hartree (one JVP, about three Fock builds)."""
        return self.diagonal() * x + self._kernel(x, "half")

    def apb(self, x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """(A + B) X, `(dim,)`, Hartree."""
        return self.diagonal() * x + self._kernel(x, "sym")

    def amb(self, x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """(A − B) X, `(dim,)`, Hartree."""
        return self.diagonal() * x + self._kernel(x, "anti")

    def transition_dipoles(self, xpy: Float[Array, "n dim"]) -> Float[Array, "n 3"]:
        """⟨0|r|n⟩ = Σσ Σ_ia ⟨i|r|a⟩ (X + Y)_iaσ for vectors normalised to (X+Y)·(X−Y) = 1,
        `(n, 3)`, Bohr (spin-orbital form; √2 for restricted singlets, 0 for triplets)."""
        r = self.system.dipole_integrals
        blocks = []
        for s in range(len(self.block_shapes)):
            blocks.append(jnp.einsum("mi,xmn,na->xia", self.occupied[s], r, self.virtual[s]).reshape(3, -1))
        mu = jnp.concatenate(blocks, axis=1)
        factor = {"singlet": jnp.sqrt(2.0), "triplet": 0.0, "unrestricted": 1.0}[self.spin]
        return factor * xpy @ mu.T


def _pair(n_occupied, spin):
    return n_occupied if spin == "unrestricted" else (n_occupied[0], n_occupied[0])


@eqx.filter_jit
def apply_block(operator: ResponseOperator, vectors: Float[Array, "k dim"],
                kind: Literal["a", "pm"]) -> Float[Array, "k dim"] | tuple[Float[Array, "k dim"], Float[Array, "k dim"]]:
    """A V (`kind="a"`) or ((A + B) V, (A − B) V) (`kind="pm"`) for a block of vectors `(k, dim)`."""
    if kind == "a":
        return jax.vmap(operator.a)(vectors)
    both = jax.vmap(lambda x: (operator.apb(x), operator.amb(x)))(vectors)
    return both
