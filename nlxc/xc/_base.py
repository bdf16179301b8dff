"""The functional interface: what every exchange-correlation functional and model provides.

This one file declares everything a new functional or model may implement:

- [`AbstractFunctional`][nlxc.xc.AbstractFunctional] — any functional, local or not.
  **Must** implement `__call__(density, density_matrix, system) -> E_xc` (Hartree). **May**
  override `prepare(system)` (geometry-only work done once per SCF, e.g. neighbour lists),
  the `required_grid_operators` property (the auxiliary-basis grid operators, a
  [`nlxc.GridOperatorSpec`][], that a [`nlxc.System`][] must carry for it) and
  `enhanced_by(network)` (what `self * network` means, for uniform-gas baselines).
- [`AbstractSemilocalFunctional`][nlxc.xc.AbstractSemilocalFunctional] — a pointwise
  e_xc(ρσ, σσσ', τσ). **Must** implement `energy_density(rho, sigma, tau)` and `family`
  (`"lda"`, `"gga"` or `"mgga"`, usually a class attribute `family: ClassVar[str] = "gga"`);
  **may** override `energy_density_unpolarised(rho, sigma, tau)`, its ζ = 0 form on the total
  density (the default evaluates `energy_density` at ρα = ρβ = ρ/2, i.e. does both spins'
  work). `__call__` integrates e_xc on the grid, with the unpolarised form for a restricted
  (closed-shell) [`nlxc.System`][].
- [`PointwiseNetwork`][nlxc.xc.PointwiseNetwork] — a learnable map from per-point features
  `(in_features, npoint)` to raw outputs; **must** provide `in_features` (a field) and
  `__call__`. `baseline * network` turns it into a constrained enhancement factor.

Composites: `f + g` is a [`Sum`][nlxc.xc.Sum] and `c * f` a [`Scaled`][nlxc.xc.Scaled]; both
forward `prepare` to their parts and take the union of their parts' `required_grid_operators`,
so `nlxc.xc.required_grid_operators(functional)` (defined in `nlxc.grid_operators`, which sits
below this package) is simply that property of the whole.
"""

import abc
from typing import TYPE_CHECKING, Literal

import equinox as eqx
import jax.numpy as jnp
from equinox import AbstractVar
from jaxtyping import Array, Float

from ..grid_operators import GridOperatorSpec

if TYPE_CHECKING:
    from ..grid import Density
    from ..system import System

__all__ = [
    "AbstractFunctional",
    "AbstractSemilocalFunctional",
    "Family",
    "PointwiseNetwork",
    "Scaled",
    "SemilocalSum",
    "Sum",
]

Family = Literal["lda", "gga", "mgga"]
"""Which density features a semilocal functional reads: ρσ (LDA), also σσσ' (GGA), also τσ
(meta-GGA)."""

_FAMILY_ORDER: tuple[Family, ...] = ("lda", "gga", "mgga")


class PointwiseNetwork(eqx.Module):
    """A learnable map from per-point features `(in_features, npoint)` to raw outputs `(npoint,)`.

    Unconstrained on its own; the exact-constraint layers ([`nlxc.xc.EnhancedExchange`][],
    [`nlxc.xc.EnhancedCorrelation`][]) give it physical meaning, and `baseline * network`
    chooses the layer from `in_features` (see [`AbstractFunctional.enhanced_by`][nlxc.xc.AbstractFunctional.enhanced_by]).
    [`nlxc.models.MLP`][] is the stock implementation.

    **Subclasses provide:** `in_features` (the number of input features, a static field) and
    `__call__`.
    """

    in_features: AbstractVar[int]

    @abc.abstractmethod
    def __call__(self, features: Float[Array, "nfeat ngrid"]) -> Float[Array, " ngrid"]:
        """Raw output per grid point (dimensionless)."""


class AbstractFunctional(eqx.Module):
    """An exchange-correlation functional E_xc[P] (Hartree).

    A functional receives the density features on the grid (see [`nlxc.Density`][]), the
    spin-resolved density matrix and the [`nlxc.System`][] (grid weights and coordinates,
    nuclei, density-fitting tensor), and returns a scalar energy in Hartree. The Fock-matrix
    contribution is never written by hand: the SCF differentiates this energy with respect to
    the density matrix by automatic differentiation.

    Floating-point fields are ordinary pytree leaves, so every functional can be trained with
    `eqx.filter_grad`. Functionals compose: `f + g` is a [`nlxc.xc.Sum`][] and `c * f` a
    [`nlxc.xc.Scaled`][].

    **Subclasses must implement** `__call__`; they **may override** `prepare`,
    `required_grid_operators` and `enhanced_by` (the defaults: no preparation, no grid
    operators, no enhancement-factor form). See the module `nlxc.xc._base` for the whole
    interface and `docs/models.md` ("Writing your own model") for a worked example.
    """

    @abc.abstractmethod
    def __call__(
        self,
        density: "Density",
        density_matrix: Float[Array, "2 nao nao"],
        system: "System",
    ) -> Float[Array, ""]:
        """Exchange-correlation energy in Hartree.

        **Arguments:**

        - `density`: density features on the grid, built from `density_matrix`.
        - `density_matrix`: α and β density matrices in the AO basis, shape `(2, nao, nao)`.
        - `system`: the molecule, its grid and its integrals.

        **Returns:** a scalar, E_xc in Hartree.
        """

    def prepare(self, system: "System") -> "AbstractFunctional":
        """This functional specialised to `system`: geometry-only work done once per SCF.

        [`nlxc.scf.solve`][] calls `functional.prepare(system)` once before iterating and uses
        the result in every Fock build (and in the adjoint solve). Models that need data
        depending only on the geometry (e.g. neighbour lists between grid points and atoms)
        return a copy holding it; the default returns `self`. Calling an unprepared functional
        gives the same energy (such models then build their data on the fly), only slower.
        The trainable parameters of the result are those of `self`, so gradients flow back.
        A prepared functional is only valid for Systems with the same geometry and grid.
        """
        return self

    @property
    def required_grid_operators(self) -> GridOperatorSpec:
        """The auxiliary-basis grid operators a [`nlxc.System`][] must carry for this functional.

        Models that read [`nlxc.AuxiliaryGridOperators`][] (e.g. [`nlxc.models.LocalHybrid`][])
        return what they need; build the System with
        `System.from_pyscf(mol, grid_operators=functional.required_grid_operators)`. The default
        is the empty spec (no operator); [`Sum`][nlxc.xc.Sum] and [`Scaled`][nlxc.xc.Scaled]
        return the union (`|`) over their parts.
        """
        return GridOperatorSpec()

    def enhanced_by(self, network: PointwiseNetwork) -> "AbstractFunctional":
        """`self * network`: this baseline times a learnable, constrained enhancement factor.

        Implemented by [`nlxc.xc.SlaterExchange`][] (giving [`nlxc.xc.EnhancedExchange`][]) and
        the PW92 correlation (giving [`nlxc.xc.EnhancedCorrelation`][]), which choose the layer
        from `network.in_features`.

        **Raises:** `TypeError` for functionals without an enhancement-factor form.
        """
        raise TypeError(f"{type(self).__name__} has no enhancement-factor form; multiply "
                        "SlaterExchange() or PW92Correlation.modified() by a network instead")

    def __add__(self, other: "AbstractFunctional") -> "Sum":
        if not isinstance(other, AbstractFunctional):
            return NotImplemented
        return Sum((self, other))

    def __mul__(self, coefficient) -> "AbstractFunctional":
        if isinstance(coefficient, PointwiseNetwork):
            return self.enhanced_by(coefficient)
        if isinstance(coefficient, eqx.Module):
            return NotImplemented
        return Scaled(jnp.asarray(coefficient, dtype=float), self)

    __rmul__ = __mul__


def _unpolarised_inputs(
    rho: Float[Array, "2 ngrid"], sigma: Float[Array, "3 ngrid"], tau: Float[Array, "2 ngrid"]
) -> tuple[Float[Array, " ngrid"], Float[Array, " ngrid"], Float[Array, " ngrid"]]:
    """(n, |∇n|², τ) of the total density from spin-resolved (ρσ, σσσ', τσ)."""
    return rho[0] + rho[1], sigma[0] + 2.0 * sigma[1] + sigma[2], tau[0] + tau[1]


class AbstractSemilocalFunctional(AbstractFunctional):
    """A semilocal functional: E_xc = ∫ e_xc(ρσ, σσσ', τσ) d³r on the molecular grid.

    Subclasses implement [`energy_density`][nlxc.xc.AbstractSemilocalFunctional.energy_density],
    the exchange-correlation energy per unit volume (Hartree / Bohr³; libxc's `zk` times the
    total density), in spin-polarised form, and [`family`][nlxc.xc.AbstractSemilocalFunctional.family].
    Spin-unpolarised densities are the special case ρα = ρβ = ρ/2, σαα = σαβ = σββ = σ/4,
    τα = τβ = τ/2; subclasses may override
    [`energy_density_unpolarised`][nlxc.xc.AbstractSemilocalFunctional.energy_density_unpolarised]
    with the ζ = 0 formulas (exchange by spin scaling on one channel, correlation without the
    f(ζ) interpolation), which a restricted [`nlxc.System`][] then uses: half the pointwise work.
    """

    @property
    @abc.abstractmethod
    def family(self) -> Family:
        """`"lda"`, `"gga"` or `"mgga"`: which features `energy_density` reads.

        Usually a class attribute (`family: ClassVar[str] = "gga"`); composites and layers
        whose inputs depend on their fields compute it.
        """

    @abc.abstractmethod
    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        sigma: Float[Array, "3 ngrid"],
        tau: Float[Array, "2 ngrid"],
    ) -> Float[Array, " ngrid"]:
        """Exchange-correlation energy per unit volume, e_xc (Hartree / Bohr³).

        **Arguments:**

        - `rho`: spin densities (ρα, ρβ), electrons / Bohr³, shape `(2, ngrid)`.
        - `sigma`: gradient invariants (∇ρα·∇ρα, ∇ρα·∇ρβ, ∇ρβ·∇ρβ), shape `(3, ngrid)`; ignored
          by LDAs.
        - `tau`: kinetic-energy densities τσ = ½ Σᵢ |∇φᵢσ|² (libxc convention),
          shape `(2, ngrid)`; read only by meta-GGAs.

        **Returns:** e_xc with shape `(ngrid,)`; it is finite everywhere, zero where the density
        is below the functional's density threshold, and has finite derivatives everywhere.
        """

    def energy_density_unpolarised(
        self,
        rho: Float[Array, " ngrid"],
        sigma: Float[Array, " ngrid"],
        tau: Float[Array, " ngrid"],
    ) -> Float[Array, " ngrid"]:
        """e_xc (Hartree / Bohr³) of a spin-unpolarised density, ρα = ρβ = ρ/2.

        **Arguments** (libxc's spin-unpolarised inputs, each of shape `(ngrid,)`):

        - `rho`: the total density n = ρα + ρβ, electrons / Bohr³.
        - `sigma`: |∇n|² = σαα + 2σαβ + σββ.
        - `tau`: the total kinetic-energy density τα + τβ (libxc's ½ convention).

        **Returns:** e_xc, shape `(ngrid,)`: the value of
        [`energy_density`][nlxc.xc.AbstractSemilocalFunctional.energy_density] at ρσ = ρ/2,
        σσσ' = σ/4, τσ = τ/2 (same screening and clamps), up to rounding; derivatives with
        respect to (ρ, σ, τ) are those of the polarised form summed over the spins.

        The default does exactly that (both spins' work); subclasses override it with the ζ = 0
        formulas. tests/test_unpolarised.py checks every override against the polarised form.
        """
        half_rho, quarter_sigma, half_tau = 0.5 * rho, 0.25 * sigma, 0.5 * tau
        return self.energy_density(
            jnp.stack([half_rho, half_rho]),
            jnp.stack([quarter_sigma, quarter_sigma, quarter_sigma]),
            jnp.stack([half_tau, half_tau]),
        )

    def energy_density_of(self, density: "Density", restricted: bool) -> Float[Array, " ngrid"]:
        """e_xc (Hartree / Bohr³) on the grid of a [`nlxc.Density`][], shape `(ngrid,)`.

        With `restricted=True` (a closed shell, ρα = ρβ: `system.restricted`) the
        [unpolarised form][nlxc.xc.AbstractSemilocalFunctional.energy_density_unpolarised] of the
        total density; otherwise [`energy_density`][nlxc.xc.AbstractSemilocalFunctional.energy_density].
        """
        if restricted:
            return self.energy_density_unpolarised(*_unpolarised_inputs(density.rho, density.sigma, density.tau))
        return self.energy_density(density.rho, density.sigma, density.tau)

    def __call__(self, density, density_matrix, system):
        e = self.energy_density_of(density, system.restricted)
        return jnp.sum(system.grid_weights * e)


class Sum(AbstractFunctional):
    """The sum of several functionals, E_xc = Σᵢ E_xc,i."""

    terms: tuple[AbstractFunctional, ...]

    def prepare(self, system):
        return Sum(tuple(t.prepare(system) for t in self.terms))

    @property
    def required_grid_operators(self) -> GridOperatorSpec:
        """The union of the terms' grid operators."""
        spec = GridOperatorSpec()
        for t in self.terms:
            spec = spec | t.required_grid_operators
        return spec

    def __call__(self, density, density_matrix, system):
        return sum(t(density, density_matrix, system) for t in self.terms)

    def __add__(self, other):
        if not isinstance(other, AbstractFunctional):
            return NotImplemented
        if isinstance(other, Sum):
            return Sum(self.terms + other.terms)
        return Sum(self.terms + (other,))


class Scaled(AbstractFunctional):
    """A functional times a (trainable) coefficient, E_xc = c · E_xc,inner."""

    coefficient: Float[Array, ""]
    functional: AbstractFunctional

    def prepare(self, system):
        return Scaled(self.coefficient, self.functional.prepare(system))

    @property
    def required_grid_operators(self) -> GridOperatorSpec:
        """The inner functional's grid operators."""
        return self.functional.required_grid_operators

    def __call__(self, density, density_matrix, system):
        return self.coefficient * self.functional(density, density_matrix, system)


class SemilocalSum(AbstractSemilocalFunctional):
    """A linear combination Σᵢ cᵢ e_xc,i of semilocal functionals, itself semilocal.

    Keeping a linear combination semilocal lets it be evaluated pointwise (e.g. against
    libxc's `eval_xc` for a mixed functional such as `"0.08*SLATER + 0.72*B88"`).
    """

    coefficients: Float[Array, " nterm"] = eqx.field(converter=lambda c: jnp.asarray(c, dtype=float))
    terms: tuple[AbstractSemilocalFunctional, ...] = ()

    @property
    def family(self) -> Family:
        """The highest family of the terms."""
        return max((t.family for t in self.terms), key=_FAMILY_ORDER.index)

    def energy_density(self, rho, sigma, tau):
        return sum(c * t.energy_density(rho, sigma, tau) for c, t in zip(self.coefficients, self.terms))

    def energy_density_unpolarised(self, rho, sigma, tau):
        return sum(c * t.energy_density_unpolarised(rho, sigma, tau) for c, t in zip(self.coefficients, self.terms))

