"""Molecules, reference datasets (HDF5) and benchmark sets.

- [`Molecule`][nlxc.data.Molecule]: a geometry with charge and spin, hashable by content.
- Reference labels computed with PySCF and stored in HDF5:
  [`compute_references`][nlxc.data.compute_references],
  [`ReferenceDataset`][nlxc.data.ReferenceDataset].
- Benchmark sets as molecules plus reactions (linear combinations of molecular energies):
  [`g2`][nlxc.data.g2], [`w4_11`][nlxc.data.w4_11], [`gmtkn55`][nlxc.data.gmtkn55].
- The small default dataset: [`default_set`][nlxc.data.default_set],
  [`default_dataset`][nlxc.data.default_dataset].
"""

from ._default import (
    DEFAULT_BASIS,
    DEFAULT_GRID_LEVEL,
    DEFAULT_METHODS,
    DEFAULT_MOLECULES,
    default_dataset,
    default_set,
)
from ._molecule import Molecule
from ._reference import (
    DatasetError,
    ReferenceComputationError,
    ReferenceDataset,
    ReferenceEntry,
    check_methods,
    compute_references,
)
from ._sets import (
    GMTKN55_SUBSETS,
    KCAL_PER_MOL,
    BenchmarkSet,
    Reaction,
    atomization_reactions,
    g2,
    g2_atomization_energy_kcal,
    gmtkn55,
    w4_11,
)

__all__ = [
    "DEFAULT_BASIS",
    "DEFAULT_GRID_LEVEL",
    "DEFAULT_METHODS",
    "DEFAULT_MOLECULES",
    "GMTKN55_SUBSETS",
    "KCAL_PER_MOL",
    "BenchmarkSet",
    "DatasetError",
    "Molecule",
    "Reaction",
    "ReferenceComputationError",
    "ReferenceDataset",
    "ReferenceEntry",
    "atomization_reactions",
    "check_methods",
    "compute_references",
    "default_dataset",
    "default_set",
    "g2",
    "g2_atomization_energy_kcal",
    "gmtkn55",
    "w4_11",
]
