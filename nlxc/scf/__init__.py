"""Self-consistent field: the Kohn–Sham fixed point as a pure, differentiable JAX function."""

from ._aufbau import FermiDirac, density_from_fock, eigh, orbitals
from ._energy import EnergyComponents, energy_and_fock, energy_components
from .adjoint import ImplicitAdjoint, UnrolledAdjoint, ZeroSafeSolver
from .cdiis import CDIIS
from .diis import DIIS
from .solve import SCFHistory, SCFResult, solve

__all__ = [
    "CDIIS",
    "DIIS",
    "EnergyComponents",
    "FermiDirac",
    "ImplicitAdjoint",
    "SCFHistory",
    "SCFResult",
    "UnrolledAdjoint",
    "ZeroSafeSolver",
    "density_from_fock",
    "eigh",
    "energy_and_fock",
    "energy_components",
    "orbitals",
    "solve",
]
