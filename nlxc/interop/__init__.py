"""Interoperability: use nlxc functionals in other codes.

- [`nlxc.interop.pyscf`][]: a PySCF RKS/UKS mean-field object whose exchange–correlation is an
  nlxc functional ([`KS`][nlxc.interop.pyscf.KS]).

Importing this package does not import PySCF; PySCF is imported when `KS` is called.
"""

from . import pyscf
from .pyscf import KS, NlxcKS, required_grid_operators

__all__ = ["KS", "NlxcKS", "pyscf", "required_grid_operators"]
