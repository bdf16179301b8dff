"""The small default dataset: the G2-1 molecules of H, Li, C, N, O and F and their atoms,
CCSD(T), CCSD, MP2, HF and B3LYP labels."""

from __future__ import annotations

import importlib.resources
import os

from .._errors import InputError
from ._reference import ReferenceDataset, compute_references
from ._sets import BenchmarkSet, g2

DEFAULT_MOLECULES = ("LiH", "CH4", "NH3", "H2O", "HF", "N2", "CO", "C2H2", "HCN", "H2CO", "OH", "CH3",
                     "CH", "CH2_s3B1d", "CH2_s1A1d", "NH", "NH2", "Li2", "LiF", "C2H4", "C2H6", "CN", "HCO",
                     "CH3OH", "N2H4", "NO", "O2", "H2O2", "F2", "CO2")
"""Names (as in `ase.data.g2_1`) of the default dataset's molecules: every G2-1 molecule made of
H, Li, C, N, O and F (the first twelve were the dataset of nlxc ≤ 0.1; the other eighteen were
added with the same settings); its atoms follow."""

DEFAULT_BASIS = "6-31g"
DEFAULT_GRID_LEVEL = 1
DEFAULT_METHODS = ("b3lyp", "hf", "mp2", "ccsd", "ccsd(t)")
_FILENAME = "default.h5"


def default_set() -> BenchmarkSet:
    """The default dataset's molecules and atomization reactions (experimental references).

    The thirty G2-1 molecules made of H, Li, C, N, O and F, twenty closed-shell and ten open-shell
    (radicals and triplets: OH, CH3, CH, CH2 ³B1, NH, NH2, CN, HCO, NO, O2)
    ([`DEFAULT_MOLECULES`][nlxc.data.DEFAULT_MOLECULES]), and the six free atoms they contain
    (H, Li, C, N, O, F): 36 species, 30 atomization energies with the experimental G2
    references of [`g2`][nlxc.data.g2] (Hartree). The largest molecule is C2H6 (30 basis
    functions in 6-31G).
    """
    full = g2("g2_1")
    sub = full.subset(list(DEFAULT_MOLECULES))
    return BenchmarkSet("nlxc-default", sub.molecules, sub.reactions, sub.source)


def shipped_default_path() -> str:
    """Path of the default dataset file installed with nlxc (`nlxc/data/default.h5`)."""
    return os.fspath(importlib.resources.files("nlxc.data").joinpath(_FILENAME))


def default_dataset(path: str | os.PathLike | None = None, *, processes: int = 1,
                    progress: bool = True) -> ReferenceDataset:
    """The default reference dataset: [`default_set`][nlxc.data.default_set]'s 36 species with
    B3LYP, HF, MP2, CCSD and CCSD(T) labels in the 6-31G basis (B3LYP on PySCF grid level 1).

    nlxc ships this file (2.3 MB; it takes a few minutes on 2 cores to regenerate with
    `nlxc.data.default_dataset("PATH.h5", processes=2)`; the CCSD(T) of the 8-atom C2H6 is the
    longest). B3LYP entries hold what training needs: the total
    energy, the density matrix, and the Fock matrix and orbital energies at B3LYP's own density;
    the correlated entries hold total energies and the (unrelaxed CCSD / MP2) density matrix.
    Settings are those of [`compute_references`][nlxc.data.compute_references]; a System for
    nlxc's SCF must be built with the same basis and grid level.

    **Arguments:**

    - `path`: `None` (default) reads the shipped file. Otherwise the dataset is computed into
      `path` (resuming there if it exists), e.g. to regenerate it with another PySCF version.
    - `processes`, `progress`: as in `compute_references`.

    **Returns:** a [`ReferenceDataset`][nlxc.data.ReferenceDataset].

    **Raises:** [`nlxc.InputError`][] if the shipped file is missing from the installation
    (`path=None`); [`DatasetError`][nlxc.data.DatasetError] as `compute_references` raises it.
    """
    if path is None:
        shipped = shipped_default_path()
        if not os.path.isfile(shipped):
            raise InputError(
                f"the default dataset {shipped} is missing from this installation; "
                "pass a path to nlxc.data.default_dataset() to compute it"
            )
        return ReferenceDataset(shipped)
    return compute_references(
        default_set().molecules, path, methods=DEFAULT_METHODS, basis=DEFAULT_BASIS,
        grid_level=DEFAULT_GRID_LEVEL, processes=processes, progress=progress,
    )

