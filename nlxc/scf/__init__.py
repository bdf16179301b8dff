"""Self-consistent field: the Kohn–Sham fixed point as a pure, differentiable JAX function.

The public names are re-exported here from the private implementation modules:

- `_solve`: [`solve`][nlxc.scf.solve] and its [`SCFResult`][nlxc.scf.SCFResult].
- `_base`: what every SCF solver declares and receives ([`AbstractSCFSolver`][nlxc.scf.AbstractSCFSolver],
  [`SCFArguments`][nlxc.scf.SCFArguments], [`SCFProgress`][nlxc.scf.SCFProgress]) and the SCF map
  ([`scf_map`][nlxc.scf.scf_map], with its auxiliary output [`SCFAux`][nlxc.scf.SCFAux]).
- `_diis`, `_cdiis`, `_newton`: the solvers ([`AbstractDIIS`][nlxc.scf.AbstractDIIS], `DIIS`,
  `CDIIS`, `OrbitalNewton`); `_stability`: the stability analysis.
- `_strategy`: how the solvers are combined ([`AbstractSCFStrategy`][nlxc.scf.AbstractSCFStrategy]).
- `_adjoint`: how the fixed point is solved and differentiated
  ([`AbstractSCFAdjoint`][nlxc.scf.AbstractSCFAdjoint] and its subclasses).
- `_aufbau`, `_energy`: orbitals, density matrices, energies and Fock matrices.
"""

from ._adjoint import (
    FAILED_SOLVE,
    AbstractSCFAdjoint,
    FailAsValue,
    ImplicitAdjoint,
    OptimistixAdjoint,
    OptimistixImplicitAdjoint,
    SCFImplicitAdjoint,
    UnrolledAdjoint,
    ZeroSafeSolver,
    as_scf_adjoint,
)
from ._aufbau import (
    FermiDirac,
    chemical_potential,
    density_from_fock,
    eigh,
    is_aufbau,
    maximum_overlap_density,
    maximum_overlap_occupations,
    orbitals,
)
from ._base import AbstractSCFSolver, SCFArguments, SCFAux, SCFProgress, scf_map
from ._cdiis import CDIIS
from ._diis import DIIS, AbstractDIIS
from ._energy import EnergyComponents, energy_and_fock, energy_components
from ._newton import OrbitalNewton
from ._solve import SCFResult, solve
from ._stability import StabilityAnalysis
from ._strategy import AbstractSCFStrategy, SCFFixedPoint, SCFHistory

__all__ = [
    "CDIIS",
    "DIIS",
    "FAILED_SOLVE",
    "AbstractDIIS",
    "AbstractSCFAdjoint",
    "AbstractSCFSolver",
    "AbstractSCFStrategy",
    "EnergyComponents",
    "FailAsValue",
    "FermiDirac",
    "ImplicitAdjoint",
    "OptimistixAdjoint",
    "OptimistixImplicitAdjoint",
    "OrbitalNewton",
    "SCFArguments",
    "SCFAux",
    "SCFFixedPoint",
    "SCFHistory",
    "SCFImplicitAdjoint",
    "SCFProgress",
    "SCFResult",
    "StabilityAnalysis",
    "UnrolledAdjoint",
    "ZeroSafeSolver",
    "as_scf_adjoint",
    "chemical_potential",
    "density_from_fock",
    "eigh",
    "energy_and_fock",
    "energy_components",
    "is_aufbau",
    "maximum_overlap_density",
    "maximum_overlap_occupations",
    "orbitals",
    "scf_map",
    "solve",
]
