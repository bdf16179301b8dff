"""Self-consistent field: the Kohn–Sham fixed point as a pure JAX function."""

from ._energy import EnergyComponents, energy_and_fock, energy_components
from .diis import DIIS
from .solve import SCFResult, solve

__all__ = ["DIIS", "EnergyComponents", "SCFResult", "energy_and_fock", "energy_components", "solve"]
