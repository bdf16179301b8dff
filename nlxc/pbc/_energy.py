"""The Kohn–Sham energy per cell of the k-point density matrices, and its Fock matrices (private)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .._errors import InputError
from ..grid import Density
from ..models import AbstractPeriodicAtomNeighbourModel
from ..scf import EnergyComponents
from ..xc import AbstractFunctional, AbstractSemilocalFunctional, Scaled, Sum
from ._system import PeriodicSystem


def _features(density_matrix: Complex[Array, "nspin nk nao nao"], system: PeriodicSystem):
    """ρσ, ∇ρσ, τσ on the grid from the k-point density matrices (real in real space).

    ρσ(r) = Σ_k w_k Σ_μν φ^k_μ(r) Pσ_k,μν φ^k_ν(r)*, ∇ρσ = 2 Re Σ_k w_k Σ_μν ∇φ^k_μ Pσ_k,μν φ^k_ν*,
    τσ = ½ Σ_k w_k Σ_μν ∇φ^k_μ·Pσ_k,μν ∇φ^k_ν* (libxc's convention), for Hermitian Pσ_k.
    """
    ao = system.ao_values  # (nk, 4, ngrid, nao)
    w = system.kpt_weights.astype(ao.dtype)
    # u[s,k,g,μ] = Σ_ν P[s,k,μ,ν] φ^k_ν(g)*
    u = jnp.einsum("skmn,kgn->skgm", density_matrix, jnp.conj(ao[:, 0]))
    rho = jnp.real(jnp.einsum("k,kgm,skgm->sg", w, ao[:, 0], u))
    gradient = 2.0 * jnp.real(jnp.einsum("k,kxgm,skgm->sxg", w, ao[:, 1:4], u))
    v = jnp.einsum("skmn,kxgn->skxgm", density_matrix, jnp.conj(ao[:, 1:4]))
    tau = 0.5 * jnp.real(jnp.einsum("k,kxgm,skxgm->sg", w, ao[:, 1:4], v))
    return rho, gradient, tau


def density_features(density_matrix: Complex[Array, "2 nk nao nao"], system: PeriodicSystem) -> Density:
    """The spin-resolved density features ([`nlxc.Density`][]) on the cell's grid from the α/β
    density matrices of all k-points `(2, nk, nao, nao)` (Hermitian per k-point).

    Restricted systems evaluate the mean of the two spins once (keeping ∂E/∂Pα = ∂E/∂Pβ exact).
    Cost: O(nk · ngrid · nao²) for ρ and ∇ρ, three times that for τ (removed by the compiler
    when the functional does not read it).
    """
    if system.restricted:
        mean = 0.5 * (density_matrix[0] + density_matrix[1])
        one = _features(mean[None], system)
        rho, gradient, tau = (jnp.concatenate([x, x]) for x in one)
    else:
        rho, gradient, tau = _features(density_matrix, system)
    sigma = jnp.stack(
        [
            jnp.einsum("xg,xg->g", gradient[0], gradient[0]),
            jnp.einsum("xg,xg->g", gradient[0], gradient[1]),
            jnp.einsum("xg,xg->g", gradient[1], gradient[1]),
        ]
    )
    return Density(rho=rho, gradient=gradient, sigma=sigma, tau=tau)


def check_functional(functional: AbstractFunctional) -> None:
    """Raise [`nlxc.InputError`][] unless `functional` can be evaluated in a crystal: a semilocal
    functional ([`nlxc.xc.AbstractSemilocalFunctional`][]: the baselines, `SemilocalSum`, the
    constraint layers with local networks), an atom-centred model with periodic images
    ([`nlxc.models.AbstractPeriodicAtomNeighbourModel`][]: `AtomCentredCorrection`,
    `EquivariantCorrection`), or a `Sum`/`Scaled` of such."""
    if isinstance(functional, (AbstractSemilocalFunctional, AbstractPeriodicAtomNeighbourModel)):
        return
    if isinstance(functional, Sum):
        for term in functional.terms:
            check_functional(term)
        return
    if isinstance(functional, Scaled):
        check_functional(functional.functional)
        return
    if isinstance(functional, type):
        raise InputError(f"solve needs a functional instance, got the class {functional.__name__}")
    if isinstance(functional, str):
        raise InputError(f"solve needs a functional, got the string {functional!r}; "
                         f"use nlxc.get_functional({functional!r})")
    if not isinstance(functional, AbstractFunctional):
        raise InputError(f"solve needs an nlxc.xc.AbstractFunctional, got {type(functional).__name__}")
    raise InputError(f"{type(functional).__name__} is not available for periodic systems yet: nlxc.pbc "
                     "evaluates semilocal functionals (LDA, GGA, meta-GGA, constraint layers with local "
                     "networks), the atom-centred models AtomCentredCorrection and EquivariantCorrection, "
                     "and their sums; hybrids and the other nonlocal models (graph, attention, operator, "
                     "CIDER, Skala) need a molecular System")


def _is_concrete(system: PeriodicSystem) -> bool:
    try:
        np.asarray(system.grid_coords)
        np.asarray(system.lattice_vectors)
    except jax.errors.TracerArrayConversionError:
        return False
    return True


def prepare_functional(functional: AbstractFunctional, system: PeriodicSystem) -> AbstractFunctional:
    """`functional` specialised to the cell: every atom-centred model in it
    ([`nlxc.models.AbstractPeriodicAtomNeighbourModel`][], also inside `Sum`/`Scaled`) gets the
    neighbour list of the cell's grid points and the periodic images R_A + T of its atoms
    ([`nlxc.models.periodic_atom_neighbours`][], over `system.lattice_vectors`); semilocal
    functionals are returned as they are. [`nlxc.pbc.solve`][] calls it before iterating;
    call it yourself before `nlxc.pbc.energy_components` or `nlxc.pbc.energy_and_fock`.

    The list is built with numpy from the system's concrete arrays (outside `jit`; under a
    trace of the system a model already prepared for a crystal is kept as it is). The trainable
    parameters are those of `functional`.

    **Raises:** [`nlxc.InputError`][] for a functional `nlxc.pbc.check_functional` rejects
    (hybrids, other nonlocal models), a traced system with a model not prepared for a crystal,
    or more than the model's `max_atoms` atom images within its cutoff of a grid point.
    """
    check_functional(functional)
    if isinstance(functional, Sum):
        return Sum(tuple(prepare_functional(t, system) for t in functional.terms))
    if isinstance(functional, Scaled):
        return Scaled(functional.coefficient, prepare_functional(functional.functional, system))
    if isinstance(functional, AbstractPeriodicAtomNeighbourModel):
        if _is_concrete(system):
            return functional.prepare_periodic(system.grid_coords, system.grid_weights, system.atom_coords,
                                               system.atom_charges, system.lattice_vectors)
        if functional.neighbours is None or not functional.neighbours.periodic:
            raise InputError(f"{type(functional).__name__} needs its periodic neighbour list, built from concrete "
                             "arrays: call nlxc.pbc.prepare_functional(functional, system) outside jax.jit")
    return functional


def xc_energy(
    functional: AbstractFunctional,
    density: Density,
    system: PeriodicSystem,
    density_matrix: Complex[Array, "2 nk nao nao"] | None = None,
) -> Float[Array, ""]:
    """E_xc per cell (Hartree) of a functional accepted by [`check_functional`][nlxc.pbc.check_functional]:
    Σ_g w_g e_xc(ρσ, σσσ', τσ)(r_g) over the cell's grid, with the unpolarised form for a
    restricted system, plus the energy per cell of every atom-centred model, evaluated on the
    total density ρ(r) on the cell's grid with the images of the atoms (the model must be
    prepared by [`prepare_functional`][nlxc.pbc.prepare_functional]; `density_matrix` is
    passed on to it).

    **Raises:** [`nlxc.InputError`][] (at trace time) for an atom-centred model without a
    periodic neighbour list."""
    if isinstance(functional, AbstractSemilocalFunctional):
        e = functional.energy_density_of(density, system.restricted)
        return jnp.sum(system.grid_weights * e)
    if isinstance(functional, AbstractPeriodicAtomNeighbourModel):
        if functional.neighbours is None or not functional.neighbours.periodic:
            raise InputError(f"{type(functional).__name__} is not prepared for the crystal: call "
                             "nlxc.pbc.prepare_functional(functional, system) first (nlxc.pbc.solve does)")
        return functional(density, density_matrix, system)
    if isinstance(functional, Sum):
        return sum(xc_energy(t, density, system, density_matrix) for t in functional.terms)
    if isinstance(functional, Scaled):
        return functional.coefficient * xc_energy(functional.functional, density, system, density_matrix)
    raise TypeError(f"{type(functional).__name__} cannot be evaluated in a crystal")  # checked in solve


def energy_components(
    functional: AbstractFunctional, system: PeriodicSystem, density_matrix: Complex[Array, "2 nk nao nao"]
) -> EnergyComponents:
    """The energy components per cell (Hartree) of the α/β k-point density matrices.

    - `one_electron`: Σ_k w_k tr(H_k P_k), kinetic + pseudopotential (P_k = Pα_k + Pβ_k).
    - `coulomb`: ½ Σ_Q sign_Q ρ_Q², ρ_Q = Re Σ_k w_k tr(L^k_Q P_k), the GDF Hartree energy as
      PySCF's `df_jk.get_j_kpts` (Sun et al., J. Chem. Phys. 147, 164119 (2017),
      doi:10.1063/1.4998644).
    - `xc`: E_xc on the cell's grid (`xc_energy`; atom-centred models must be prepared with
      [`prepare_functional`][nlxc.pbc.prepare_functional]).
    - `nuclear_repulsion`: the Ewald energy of the ion cores.
    """
    p_total = density_matrix[0] + density_matrix[1]
    w = system.kpt_weights
    one_electron = jnp.real(jnp.einsum("k,kpq,kqp->", w, system.core_hamiltonian, p_total))
    fitted = jnp.real(jnp.einsum("k,kQpq,kqp->Q", w, system.cderi, p_total))
    coulomb = 0.5 * jnp.sum(system.cderi_sign * fitted * fitted)
    xc = xc_energy(functional, density_features(density_matrix, system), system, density_matrix)
    return EnergyComponents(one_electron, coulomb, xc, system.nuclear_repulsion)


def energy_and_fock(
    functional: AbstractFunctional, system: PeriodicSystem, density_matrix: Complex[Array, "2 nk nao nao"]
) -> tuple[EnergyComponents, Complex[Array, "2 nk nao nao"]]:
    """Energy components of P and the Fock matrices F_σk, `(2, nk, nao, nao)` (Hermitian, Hartree).

    F_σk is defined by dE = Σ_σk w_k Re tr(F_σk dP_σk) for Hermitian dP: automatic
    differentiation of the total energy with respect to the real and imaginary parts of P
    (G_re, G_im), F = (G_re − i G_im)ᵀ / w_k, made Hermitian. No potential is written by hand.
    """

    def total(re, im):
        components = energy_components(functional, system, re + 1j * im)
        return components.total, components

    (_, components), (g_re, g_im) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        jnp.real(density_matrix), jnp.imag(density_matrix))
    fock = jnp.swapaxes(g_re - 1j * g_im, -1, -2) / system.kpt_weights[None, :, None, None]
    return components, 0.5 * (fock + jnp.conj(jnp.swapaxes(fock, -1, -2)))
