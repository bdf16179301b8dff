"""Self-consistent field: the Kohn–Sham fixed point as a pure, differentiable JAX function."""

from ._aufbau import FermiDirac, density_from_fock, eigh, orbitals
from ._base import AbstractSCFSolver, SCFArguments, SCFProgress
from ._newton import OrbitalNewton
from ._stability import StabilityAnalysis
from ._energy import EnergyComponents, energy_and_fock, energy_components
from .adjoint import FAILED_SOLVE, FailAsValue, ImplicitAdjoint, SCFImplicitAdjoint, UnrolledAdjoint, ZeroSafeSolver
from .cdiis import CDIIS
from .diis import DIIS
from .solve import SCFHistory, SCFResult, solve

__all__ = [
    "AbstractSCFSolver",
    "OrbitalNewton",
    "SCFArguments",
    "SCFProgress",
    "CDIIS",
    "DIIS",
    "EnergyComponents",
    "FermiDirac",
    "ImplicitAdjoint",
    "SCFImplicitAdjoint",
    "SCFHistory",
    "SCFResult",
    "StabilityAnalysis",
    "UnrolledAdjoint",
    "ZeroSafeSolver",
    "FailAsValue",
    "FAILED_SOLVE",
    "density_from_fock",
    "eigh",
    "energy_and_fock",
    "energy_components",
    "orbitals",
    "solve",
]
