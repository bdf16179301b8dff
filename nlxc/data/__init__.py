"""Molecules, reference datasets (HDF5) and benchmark sets.

- [`Molecule`][nlxc.data.Molecule]: a geometry with charge and spin, hashable by content.
"""

from ._molecule import Molecule

__all__ = ["Molecule"]
