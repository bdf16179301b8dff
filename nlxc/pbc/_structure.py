"""Crystal structures in, `pyscf.pbc.gto.Cell` out: reading, validation, k-meshes.

This is the input boundary of the periodic code. Lengths are in Ångström here (ASE's and the
structure files' unit); the `Cell` that comes out carries its own unit, and everything after it
works in Bohr and Hartree. Every check raises [`nlxc.InputError`][] with a one-line message
before anything expensive is computed.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._errors import InputError
from ..system import MIN_ATOM_DISTANCE_ANGSTROM, check_basis, quiet_basis_lookup

__all__ = ["build_cell", "check_kmesh", "check_occupations", "read_structure"]

# GTH basis sets PySCF ships that cover elements beyond the first rows (Ca, Ni, Cu, ...):
_WIDE_GTH_BASES = ("gth-szv-molopt-sr", "gth-dzvp-molopt-sr")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def read_structure(source: Any, *, format: str | None = None):
    """Read a crystal (or molecular) structure with ASE.

    **Arguments:**

    - `source`: a path to any file ASE reads (CIF, POSCAR/CONTCAR, extended XYZ, ...; lengths in
      Ångström), or an `ase.Atoms` (returned as a copy).
    - `format`: ASE's format name, when the file name does not tell it (e.g. `"vasp"`).

    **Returns:** an `ase.Atoms` (the last image of a multi-image file). It may have no cell (a
    plain XYZ file); [`nlxc.pbc.build_cell`][] checks that.

    **Raises:** [`nlxc.InputError`][] (one line, naming the file) for a missing file, a
    directory, or a file ASE cannot read.
    """
    from ase import Atoms

    if isinstance(source, Atoms):
        return source.copy()
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"expected a structure file name or an ase.Atoms, got {type(source).__name__}")
    path = os.fspath(source)
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory, not a structure file")
    if not os.path.exists(path):
        raise InputError(f"cannot read {path}: no such file")
    import ase.io

    try:
        atoms = ase.io.read(path, format=format)
    except Exception as err:  # ASE raises many kinds; at this boundary every one is bad input
        raise InputError(f"cannot read {path} as a structure: {_one_line(err)}") from None
    if isinstance(atoms, list):  # pragma: no cover (ase.io.read with the default index gives one)
        atoms = atoms[-1]
    if len(atoms) == 0:
        raise InputError(f"{path} has no atoms")
    return atoms


def check_kmesh(kmesh: Any) -> tuple[int, int, int]:
    """A Monkhorst–Pack mesh as three positive integers.

    **Arguments:** `kmesh`, a sequence of three positive integers (Python or NumPy integers, or
    strings of digits as the command line gives them).

    **Returns:** `(n1, n2, n3)`.

    **Raises:** [`nlxc.InputError`][] (one line) for anything else: not three numbers, a zero or
    negative number, a non-integer (`2.5`, `"two"`, `True`).
    """
    if isinstance(kmesh, (str, bytes)) or not isinstance(kmesh, (Sequence, np.ndarray)):
        raise InputError(f"the k-mesh must be three positive integers, got {kmesh!r}")
    values = list(kmesh)
    if len(values) != 3:
        raise InputError(f"the k-mesh must be three positive integers, got {len(values)} value"
                         f"{'s' if len(values) != 1 else ''}: {' '.join(map(str, values))}")
    out = []
    for v in values:
        if isinstance(v, str) and v.strip().lstrip("+").isdigit():
            v = int(v)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"the k-mesh must be three positive integers, got {' '.join(map(str, values))}")
        out.append(int(v))
    return out[0], out[1], out[2]


def _has_cell(atoms) -> bool:
    cell = np.asarray(atoms.cell[:], dtype=float)
    return bool(np.all(np.isfinite(cell))) and abs(np.linalg.det(cell)) > 1e-8


def _closest_pair(atoms) -> tuple[float, int, int]:
    """The shortest distance (Å) between two atoms or an atom and its own image, and the pair."""
    from ase.geometry import get_distances, minkowski_reduce

    cell = np.asarray(atoms.cell[:], dtype=float)
    reduced, _ = minkowski_reduce(cell)
    # in a Minkowski-reduced basis the shortest lattice vector is among these combinations
    shifts = np.array([n for n in itertools.product((-1, 0, 1), repeat=3) if any(n)], dtype=float)
    best, pair = float(np.min(np.linalg.norm(shifts @ reduced, axis=1))), (0, 0)
    positions = atoms.get_positions()
    if len(atoms) > 1:
        _, d = get_distances(positions, cell=cell, pbc=True)
        d[np.diag_indices(len(atoms))] = np.inf
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] < best:
            best, pair = float(d[i, j]), (int(i), int(j))
    return best, pair[0], pair[1]


def _is_gth_basis(name: str) -> bool:
    return "gth" in name.lower() and not os.path.isfile(name)


def _check_pseudo(pseudo: str, symbols: Sequence[str]) -> None:
    from pyscf.lib.exceptions import BasisNotFoundError
    from pyscf.pbc.gto import pseudo as pyscf_pseudo

    if not isinstance(pseudo, str) or not pseudo.strip():
        raise InputError(f"the pseudopotential must be a name such as 'gth-pbe', got {pseudo!r}")
    if os.path.isfile(pseudo):
        return
    stem = re.sub(r"-q\d+$", "", pseudo.strip().lower())  # gth-pbe-q4: the q4 entry of gth-pbe
    key = stem.replace("-", "").replace("_", "")
    known = {k: v.removesuffix(".dat") for k, v in pyscf_pseudo.ALIAS.items()}
    if key not in known:
        match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {known[match[0]]!r}?)" if match else ""
        names = ", ".join(sorted(set(known.values())))
        raise InputError(f"unknown pseudopotential {pseudo!r}{hint}; PySCF has: {names}")
    missing = []
    for symbol in sorted(set(symbols)):
        try:
            if pyscf_pseudo.load(pseudo, symbol) is None:
                missing.append(symbol)
        except (BasisNotFoundError, KeyError, ValueError, IndexError):
            missing.append(symbol)
    if missing:
        raise InputError(f"pseudopotential {pseudo!r} has no entry for {', '.join(missing)}")


def _check_basis_and_pseudo(basis: str, pseudo: str | None, symbols: Sequence[str]) -> None:
    if not isinstance(basis, str) or not basis.strip():
        raise InputError(f"basis must be a basis-set name, got {basis!r}")
    gth = _is_gth_basis(basis)
    if pseudo is None or (isinstance(pseudo, str) and pseudo.strip().lower() in ("", "none")):
        if gth:
            raise InputError(f"basis {basis!r} is made for GTH pseudopotentials, but no pseudopotential was "
                             "given: use e.g. pseudo 'gth-pbe' or 'gth-pade' (--pseudo)")
    else:
        _check_pseudo(pseudo, symbols)
        if not gth and "\n" not in basis and not os.path.isfile(basis):
            raise InputError(f"basis {basis!r} is an all-electron basis with no matching GTH pseudopotential "
                             f"{pseudo!r}: use a GTH basis (gth-szv, gth-dzvp, {', '.join(_WIDE_GTH_BASES)})")
    try:
        check_basis(basis, symbols)
    except InputError as err:
        if gth and "has no functions for" in str(err):
            raise InputError(f"{err}; GTH basis sets with more elements: {', '.join(_WIDE_GTH_BASES)}") from None
        raise


def check_occupations(cell, *, spin: int | None = None, smearing: Any = None) -> None:
    """Check that a cell's electrons can be placed: an odd count needs spin or smearing.

    **Arguments:**

    - `cell`: a built `pyscf.pbc.gto.Cell` (its `nelectron` counts valence electrons per cell).
    - `spin`: 2S per cell (default: `cell.spin`).
    - `smearing`: `None` or a Fermi–Dirac width / `nlxc.scf.FermiDirac` (anything not `None`
      means fractional occupations are allowed).

    **Raises:** [`nlxc.InputError`][] (one line) for an odd number of electrons per cell with
    `spin = 0` and no smearing, a spin of the wrong parity, or more electrons in a spin channel
    than orbitals per cell.
    """
    spin = int(cell.spin if spin is None else spin)
    n = int(cell.nelectron)
    if spin < 0:
        raise InputError(f"spin 2S must be >= 0, got {spin}")
    if n % 2 and spin == 0 and smearing is None:
        raise InputError(f"the cell has an odd number of electrons ({n} per cell) but neither spin nor smearing "
                         "was given: use a Fermi-Dirac smearing width (--smearing, e.g. 0.01 Ha) or a spin "
                         "2S = 1 (--spin 1)")
    if spin > n or (smearing is None and (n - spin) % 2):
        raise InputError(f"spin 2S={spin} is inconsistent with {n} electrons per cell")
    n_alpha = -(-(n + spin) // 2)
    if n_alpha > cell.nao:
        raise InputError(f"{n_alpha} electrons in one spin channel but only {cell.nao} orbitals per cell in "
                         f"basis {cell.basis!r}: the basis does not match the pseudopotential's valence")


def build_cell(
    structure: Any,
    basis: str,
    pseudo: str | None,
    *,
    charge: int = 0,
    spin: int = 0,
    kmesh: Any = None,
    smearing: Any = None,
    mesh: Sequence[int] | None = None,
    ke_cutoff: float | None = None,
    precision: float | None = None,
    format: str | None = None,
):
    """Validate a crystal structure and build a `pyscf.pbc.gto.Cell` from it.

    **Arguments:**

    - `structure`: a path to a file ASE reads with a cell (CIF, POSCAR, extended XYZ with
      `Lattice=`), or an `ase.Atoms` with a cell. Lengths in Ångström. The cell is treated as
      periodic in all three directions (a slab or a sheet such as graphene is periodic with the
      vacuum of its cell).
    - `basis`: a basis PySCF knows, for GTH pseudopotentials a GTH basis (`"gth-szv"`,
      `"gth-dzvp"`, `"gth-dzvp-molopt-sr"`, ...).
    - `pseudo`: a GTH pseudopotential (`"gth-pade"` for LDA, `"gth-pbe"`, ...), or `None` for an
      all-electron basis.
    - `charge`, `spin`: per cell (spin = 2S = N_α − N_β).
    - `kmesh`: the Monkhorst–Pack mesh that will be used, if any; only checked here (three positive
      integers; a structure without a cell is an error that names the k-points).
    - `smearing`: the Fermi–Dirac width (Hartree) or `nlxc.scf.FermiDirac` that will be used, if
      any; only checked here (with `spin = 0`, an odd electron count needs it).
    - `mesh`, `ke_cutoff` (Hartree), `precision`: PySCF's `Cell` settings of the uniform grid and
      the integral screening (default: PySCF's).
    - `format`: ASE's file format, when the file name does not tell it.

    **Returns:** a built `pyscf.pbc.gto.Cell` (`verbose=0`, `unit="Angstrom"`, `dimension=3`);
    `cell.nelectron` counts the valence electrons per cell.

    **Raises:** [`nlxc.InputError`][] (one line, before any integral is computed) for: an
    unreadable file, no atoms, a structure without a cell (three independent lattice vectors),
    a k-mesh that is not three positive integers, an unknown element, two atoms (or an atom and
    its periodic image) closer than 0.1 Å, an unknown pseudopotential or one without an entry
    for an element, a GTH basis without a pseudopotential or an all-electron basis with one, an
    unknown basis or one without functions for an element, a charge/spin inconsistent with the
    electrons per cell, and an odd electron count per cell with neither spin nor smearing.
    """
    from pyscf.data import elements
    from pyscf.pbc import gto

    atoms = read_structure(structure, format=format)
    name = os.fspath(structure) if isinstance(structure, (str, os.PathLike)) else "the structure"
    if kmesh is not None:
        check_kmesh(kmesh)
    if len(atoms) == 0:
        raise InputError(f"{name} has no atoms")
    if not _has_cell(atoms):
        given = " but k-points were given" if kmesh is not None else ""
        raise InputError(f"{name} has no cell (three lattice vectors){given}: use a file with a cell (CIF, "
                         "POSCAR, extended XYZ with Lattice=) or, for a molecule, no k-points")
    symbols = []
    for s in atoms.get_chemical_symbols():
        if s not in elements.ELEMENTS[1:]:
            raise InputError(f"unknown element {s!r} in {name}")
        symbols.append(s)
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)):
        raise InputError(f"{name} has non-finite atomic positions")
    distance, i, j = _closest_pair(atoms)
    if distance < MIN_ATOM_DISTANCE_ANGSTROM:
        what = (f"atom {i + 1} ({symbols[i]}) and its own periodic image" if i == j else
                f"atoms {i + 1} ({symbols[i]}) and {j + 1} ({symbols[j]})")
        raise InputError(f"{what} are {distance:.3g} Å apart under periodic images "
                         f"(closer than {MIN_ATOM_DISTANCE_ANGSTROM} Å)")
    _check_basis_and_pseudo(basis, pseudo, symbols)
    if pseudo is not None and pseudo.strip().lower() in ("", "none"):
        pseudo = None
    for value, what in ((charge, "charge"), (spin, "spin")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"{what} must be an integer, got {value!r}")
    if smearing is not None and not isinstance(smearing, (int, float, np.floating, np.integer)):
        width = getattr(smearing, "width", None)  # nlxc.scf.FermiDirac
        if width is None:
            raise InputError(f"smearing must be a Fermi-Dirac width in Hartree, got {smearing!r}")
        smearing = width
    if smearing is not None and not (np.isfinite(smearing) and smearing > 0):
        raise InputError(f"the smearing width must be a positive number of Hartree, got {smearing!r}")
    if mesh is not None:
        mesh = check_kmesh(mesh)  # the same rule: three positive integers
    options: dict[str, Any] = {}
    if ke_cutoff is not None:
        options["ke_cutoff"] = float(ke_cutoff)
    if precision is not None:
        options["precision"] = float(precision)
    valence = sum(elements.charge(s) for s in symbols) if pseudo is None else None
    if valence is not None and valence - int(charge) <= 0:
        raise InputError(f"charge {charge} leaves {valence - int(charge)} electrons per cell")
    try:
        with quiet_basis_lookup(), warnings.catch_warnings():
            # an odd electron count with spin 0 is fine with smearing; check_occupations decides
            warnings.filterwarnings("ignore", message="Electron number", category=UserWarning)
            cell = gto.Cell(atom=[(s, tuple(p)) for s, p in zip(symbols, positions)],
                            a=np.asarray(atoms.cell[:], dtype=float), basis=basis, pseudo=pseudo,
                            unit="Angstrom", charge=int(charge), spin=int(spin), dimension=3,
                            verbose=0, **options)
            if mesh is not None:
                cell.mesh = list(mesh)
            cell.build(dump_input=False, parse_arg=False)
    except InputError:
        raise
    except Exception as err:  # PySCF's own complaint about this input, as one line
        raise InputError(f"cannot build the cell from {name}: {_one_line(err)}") from None
    if cell.nelectron <= 0:
        raise InputError(f"charge {charge} leaves {cell.nelectron} electrons per cell")
    check_occupations(cell, spin=spin, smearing=smearing)
    return cell
