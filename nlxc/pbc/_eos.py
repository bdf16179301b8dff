"""Lattice constants and bulk moduli: an E(V) scan over scaled lattices and ASE's EOS fit.

The fit is ASE's `ase.eos.EquationOfState` (Birch–Murnaghan by default: F. Birch, Phys. Rev. 71,
809 (1947), doi:10.1103/PhysRev.71.809, in the form of Hebbache & Zemzemi, Phys. Rev. B 70,
224107 (2004), doi:10.1103/PhysRevB.70.224107), not a fit of our own. The energy of each scaled
structure comes from any function of an `ase.Atoms` that returns Hartree per cell: nlxc's
periodic SCF ([`nlxc.pbc.PeriodicEnergy`][]), PySCF's `KRKS`, or anything else.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._errors import InputError
from ..scf import FermiDirac
from ._solve import KCDIIS, PeriodicSCFResult, solve
from ._structure import build_cell, check_kmesh, read_structure
from ._system import PeriodicSystem

__all__ = ["DEFAULT_SCALES", "EOS_NAMES", "EOSFit", "PeriodicEnergy", "SCFNotConvergedError", "eos_scan", "fit_eos",
           "reference_lattice_constant", "scaled_structures"]

EOS_NAMES = ("birchmurnaghan", "murnaghan", "birch", "vinet", "pouriertarantola", "sj", "taylor",
             "antonschmidt", "p3")
"""The equations of state of ASE's `EquationOfState` (its names, `anton-schmidt` as `antonschmidt`)."""

DEFAULT_SCALES = tuple(float(s) for s in np.linspace(0.97, 1.03, 7))
"""Linear scale factors of the lattice vectors in a default scan: ±3 % in 1 % steps (±9 % in volume)."""


def _hartree_per_cubic_angstrom_in_gpa() -> float:
    from pyscf.data import nist

    return nist.HARTREE2J / 1e-30 / 1e9  # 1 Hartree/Å³ in GPa (J/m³ = Pa)


@dataclasses.dataclass(frozen=True)
class EOSFit:
    """An equation-of-state fit of an E(V) scan.

    **Fields:**

    - `eos`: the equation of state (ASE's name).
    - `scales`: `(npoint,)` linear scale factors of the scanned lattice vectors (1 = the input
      structure).
    - `volumes`: `(npoint,)` cell volumes, Å³ per cell.
    - `energies`: `(npoint,)` energies, Hartree per cell.
    - `volume`: the volume at the minimum, Å³ per cell.
    - `energy`: the energy at the minimum, Hartree per cell.
    - `scale`: the linear scale factor of the minimum, (volume / reference volume)^(1/len(axes)).
    - `lattice_constant`: `scale` × the reference lattice constant, Å (for a cubic crystal the
      conventional cubic a, also from a primitive cell; see
      [`nlxc.pbc.reference_lattice_constant`][]).
    - `bulk_modulus`: B₀ = V d²E/dV² at the minimum, GPa; `None` for a scan of fewer than three
      lattice vectors (a sheet: the volume then includes vacuum).
    - `axes`: the lattice vectors that were scaled (0, 1, 2).
    """

    eos: str
    scales: np.ndarray
    volumes: np.ndarray
    energies: np.ndarray
    volume: float
    energy: float
    scale: float
    lattice_constant: float
    bulk_modulus: float | None
    axes: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists of floats), with the units of each entry in `units`."""
        return {"eos": self.eos, "scales": [float(s) for s in self.scales],
                "volumes": [float(v) for v in self.volumes], "energies": [float(e) for e in self.energies],
                "volume": self.volume, "energy": self.energy, "scale": self.scale,
                "lattice_constant": self.lattice_constant, "bulk_modulus": self.bulk_modulus,
                "axes": list(self.axes),
                "units": {"volume": "Angstrom^3 per cell", "energy": "Hartree per cell",
                          "lattice_constant": "Angstrom", "bulk_modulus": "GPa"}}


def _check_axes(axes: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(a) for a in axes}))
    except (TypeError, ValueError):
        raise InputError(f"axes must be lattice-vector indices 0, 1, 2, got {axes!r}") from None
    if not out or any(a not in (0, 1, 2) for a in out) or len(out) != len(list(axes)):
        raise InputError(f"axes must be distinct lattice-vector indices 0, 1, 2, got {axes!r}")
    return out


def _check_scales(scales: Sequence[float]) -> np.ndarray:
    try:
        values = np.asarray(scales, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"scales must be positive numbers, got {scales!r}") from None
    if values.size < 5 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(f"an EOS scan needs at least 5 positive, finite scale factors, got {values.tolist()}")
    if len(np.unique(values)) != values.size:
        raise InputError(f"the scale factors must be distinct, got {values.tolist()}")
    return np.sort(values)


def _eos_name(eos: str) -> str:
    key = str(eos).strip().lower().replace("-", "").replace("_", "")
    if key not in EOS_NAMES:
        raise InputError(f"unknown equation of state {eos!r}; ASE has: {', '.join(EOS_NAMES)}")
    return key


def reference_lattice_constant(atoms) -> float:
    """The lattice constant a of a structure, Å: ASE's Bravais-lattice parameter `a`
    (`atoms.cell.get_bravais_lattice().a`: the conventional cubic a of an fcc, bcc or diamond
    crystal also from its primitive cell, the in-plane a of a hexagonal one), or the length of
    the first lattice vector where ASE cannot classify the cell."""
    try:
        return float(atoms.cell.get_bravais_lattice().a)
    except Exception:  # ASE's classification fails for some cells; the first vector is then "a"
        return float(np.linalg.norm(atoms.cell[0]))


def scaled_structures(structure: Any, scales: Sequence[float] = DEFAULT_SCALES, *,
                      axes: Sequence[int] = (0, 1, 2)) -> list:
    """The structure with its lattice vectors `axes` multiplied by each scale factor (atoms move
    with the cell: fractional coordinates are kept).

    **Arguments:** `structure` (a path ASE reads or an `ase.Atoms` with a cell), `scales`
    (≥ 5 distinct positive factors), `axes` (which lattice vectors to scale; `(0, 1)` for a sheet
    in the a–b plane).

    **Returns:** a list of `ase.Atoms`, ordered by scale.

    **Raises:** [`nlxc.InputError`][] for a structure without a cell or bad scales/axes.
    """
    atoms = read_structure(structure)
    if abs(atoms.cell.volume) < 1e-8:
        raise InputError("an EOS scan needs a structure with a cell (three lattice vectors)")
    axes = _check_axes(axes)
    out = []
    for s in _check_scales(scales):
        scaled = atoms.copy()
        cell = np.array(atoms.cell[:], dtype=float)
        cell[list(axes)] *= s
        scaled.set_cell(cell, scale_atoms=True)
        out.append(scaled)
    return out


def fit_eos(volumes: Sequence[float], energies: Sequence[float], *, eos: str = "birchmurnaghan",
            reference_volume: float | None = None, reference_lattice: float | None = None,
            scales: Sequence[float] | None = None, axes: Sequence[int] = (0, 1, 2)) -> EOSFit:
    """Fit an equation of state to an E(V) scan with ASE's `EquationOfState`.

    **Arguments:**

    - `volumes`: `(npoint,)` Å³ per cell; `energies`: `(npoint,)` Hartree per cell (at least 5).
    - `eos`: one of [`nlxc.pbc.EOS_NAMES`][] (default Birch–Murnaghan).
    - `reference_volume`, `reference_lattice`: the volume (Å³) and lattice constant (Å) of the
      unscaled structure, to turn the fitted volume into a lattice constant (default: the
      lattice constant is reported relative, `reference_lattice = 1`, at the volume of the
      first point).
    - `scales`: the linear scale factors of the points, kept in the result (default: from the
      volumes).
    - `axes`: the lattice vectors the scan scaled; with fewer than three, the bulk modulus is
      `None`.

    **Returns:** an [`nlxc.pbc.EOSFit`][].

    **Raises:** [`nlxc.InputError`][] (one line) for fewer than 5 points, non-finite energies
    (an SCF that did not converge), an unknown EOS name, a failed fit, or a minimum outside the
    scanned volumes (scan a wider range around it).
    """
    from ase.eos import EquationOfState
    from pyscf.data import nist

    name = _eos_name(eos)
    axes = _check_axes(axes)
    v = np.asarray(volumes, dtype=float).reshape(-1)
    e = np.asarray(energies, dtype=float).reshape(-1)
    if v.size != e.size:
        raise InputError(f"{v.size} volumes but {e.size} energies")
    if v.size < 5:
        raise InputError(f"an EOS fit needs at least 5 points, got {v.size}")
    if not (np.all(np.isfinite(v)) and np.all(v > 0)):
        raise InputError(f"the volumes must be positive and finite, got {v.tolist()}")
    if not np.all(np.isfinite(e)):
        raise InputError(f"the energies must be finite, got {e.tolist()} (did an SCF fail?)")
    order = np.argsort(v)
    v, e = v[order], e[order]
    v_ref = float(v[0]) if reference_volume is None else float(reference_volume)
    a_ref = 1.0 if reference_lattice is None else float(reference_lattice)
    if scales is None:
        s = (v / v_ref) ** (1.0 / len(axes))
    else:
        s = np.asarray(scales, dtype=float).reshape(-1)[order]
    fitter = EquationOfState(v, e * nist.HARTREE2EV, eos="anton-schmidt" if name == "antonschmidt" else name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v0, e0, b0 = fitter.fit(warn=False)
    except Exception as err:  # scipy's curve_fit and ASE's sjeos raise several kinds
        raise InputError(f"the {name} fit of the E(V) scan failed: {' '.join(str(err).split())}") from None
    v0, e0, b0 = float(v0), float(e0) / nist.HARTREE2EV, float(b0)
    if not (math.isfinite(v0) and v[0] < v0 < v[-1]):
        where = "below" if math.isfinite(v0) and v0 <= v[0] else "above"
        raise InputError(f"the E(V) minimum is {where} the scanned volumes {v[0]:.4g}-{v[-1]:.4g} Å³ "
                         f"(fit: {v0:.4g} Å³); scan a range around it")
    scale = (v0 / v_ref) ** (1.0 / len(axes))
    bulk = b0 / nist.HARTREE2EV * _hartree_per_cubic_angstrom_in_gpa() if len(axes) == 3 else None
    return EOSFit(eos=name, scales=s, volumes=v, energies=e, volume=v0, energy=e0, scale=float(scale),
                  lattice_constant=float(scale * a_ref), bulk_modulus=bulk, axes=axes)


def eos_scan(energy: Callable[[Any], float], structure: Any, scales: Sequence[float] = DEFAULT_SCALES, *,
             axes: Sequence[int] = (0, 1, 2), eos: str = "birchmurnaghan",
             progress: Callable[[float, float], None] | None = None) -> EOSFit:
    """E(V) scan over scaled lattices and an equation-of-state fit (ASE's).

    **Arguments:**

    - `energy`: a function of an `ase.Atoms` (the scaled structure, Å) returning its energy in
      Hartree per cell: [`nlxc.pbc.PeriodicEnergy`][] (nlxc's periodic SCF), a wrapper of
      PySCF's `KRKS`, or any other.
    - `structure`: a path ASE reads or an `ase.Atoms`, with a cell.
    - `scales`: ≥ 5 linear scale factors of the lattice vectors (default 0.97 … 1.03).
    - `axes`: the lattice vectors to scale (default all three; `(0, 1)` for a sheet such as
      graphene, whose vacuum is then not scaled).
    - `eos`: the equation of state, one of [`nlxc.pbc.EOS_NAMES`][].
    - `progress`: called as `progress(scale, energy)` after each point.

    **Returns:** an [`nlxc.pbc.EOSFit`][] with the lattice constant (Å, relative to ASE's
    Bravais-lattice `a` of the input structure), the volume (Å³ per cell), the minimum energy
    (Hartree per cell) and the bulk modulus (GPa).

    **Raises:** [`nlxc.InputError`][] (one line) as [`nlxc.pbc.fit_eos`][], for a structure
    without a cell, bad scales or axes; whatever `energy` raises.

    **Example** (PySCF's energies; replace `energy` by `nlxc.pbc.PeriodicEnergy(...)` for nlxc's):

    ```python
    from ase.build import bulk
    from pyscf.pbc import dft
    import nlxc.pbc as pbc

    def energy(atoms):
        cell = pbc.build_cell(atoms, "gth-szv", "gth-pade")
        return dft.KRKS(cell, cell.make_kpts([1, 1, 1]), xc="lda").density_fit().kernel()

    fit = pbc.eos_scan(energy, bulk("Si", "diamond", a=5.43))
    print(fit.lattice_constant, "Å", fit.bulk_modulus, "GPa")
    ```
    """
    name = _eos_name(eos)
    atoms = read_structure(structure)
    structures = scaled_structures(atoms, scales, axes=axes)
    s = _check_scales(scales)
    energies = []
    for factor, scaled in zip(s, structures):
        value = float(energy(scaled))
        energies.append(value)
        if progress is not None:
            progress(float(factor), value)
    return fit_eos([a.cell.volume for a in structures], energies, eos=name,
                   reference_volume=float(abs(atoms.cell.volume)),
                   reference_lattice=reference_lattice_constant(atoms), scales=s, axes=axes)


class SCFNotConvergedError(RuntimeError):
    """A periodic SCF of an E(V) scan did not converge (the message names the structure)."""


@dataclasses.dataclass(frozen=True)
class PeriodicEnergy:
    """nlxc's periodic Kohn–Sham energy of a structure, Hartree per cell: the energy function of
    [`nlxc.pbc.eos_scan`][].

    `PeriodicEnergy(functional, basis, pseudo, kmesh)(atoms)` builds the cell
    ([`nlxc.pbc.build_cell`][]), its [`nlxc.pbc.PeriodicSystem`][] on the k-mesh and solves it
    with [`nlxc.pbc.solve`][] (each cell of a scan has its own grid, so its own compiled SCF).

    **Fields:**

    - `functional`: a semilocal nlxc functional (`nlxc.get_functional("pbe")`, a trained model).
    - `basis`, `pseudo`: as [`nlxc.pbc.build_cell`][] (`"gth-szv"`, `"gth-pade"`, ...).
    - `kmesh`: the Monkhorst–Pack mesh, three positive integers (default Γ only).
    - `smearing`: `None` or a Fermi–Dirac width in Hartree (or an [`nlxc.scf.FermiDirac`][]).
    - `charge`, `spin`: per cell.
    - `mesh`: PySCF's `Cell.mesh` (default: PySCF's for each cell).
    - `precision`: PySCF's `Cell.precision` (default PySCF's).
    - `max_steps`: the most SCF iterations; `solver` (default [`nlxc.pbc.KCDIIS`][]).
    - `free_energy`: return the Mermin free energy E − width·S instead of E (PySCF's `e_free`
      instead of `e_tot`); with smearing it is the variational quantity whose E(V) curve is
      smooth (default `False`, PySCF's `e_tot`).
    """

    functional: Any
    basis: str
    pseudo: str | None
    kmesh: tuple[int, int, int] = (1, 1, 1)
    smearing: Any = None
    charge: int = 0
    spin: int = 0
    mesh: tuple[int, int, int] | None = None
    precision: float | None = None
    max_steps: int = 128
    solver: Any = None
    free_energy: bool = False

    def _smearing(self) -> FermiDirac | None:
        if self.smearing is None or isinstance(self.smearing, FermiDirac):
            return self.smearing
        return FermiDirac(float(self.smearing))

    def system(self, structure: Any) -> PeriodicSystem:
        """The [`nlxc.pbc.PeriodicSystem`][] of a structure (validated by [`nlxc.pbc.build_cell`][])."""
        kmesh = check_kmesh(self.kmesh)
        cell = build_cell(structure, self.basis, self.pseudo, charge=self.charge, spin=self.spin, kmesh=kmesh,
                          smearing=self.smearing, mesh=self.mesh, precision=self.precision)
        return PeriodicSystem.from_cell(cell, kmesh)

    def result(self, structure: Any) -> PeriodicSCFResult:
        """The [`nlxc.pbc.PeriodicSCFResult`][] of a structure."""
        solver = KCDIIS() if self.solver is None else self.solver
        return solve(self.functional, self.system(structure), solver, smearing=self._smearing(),
                     max_steps=self.max_steps)

    def __call__(self, structure: Any) -> float:
        """The energy per cell, Hartree.

        **Raises:** [`nlxc.InputError`][] for bad input ([`nlxc.pbc.build_cell`][]),
        [`nlxc.pbc.SCFNotConvergedError`][] if the SCF did not converge.
        """
        result = self.result(structure)
        if not bool(result.converged):
            volume = read_structure(structure).cell.volume
            raise SCFNotConvergedError(f"the periodic SCF did not converge in {int(result.n_iterations)} "
                                       f"iterations (cell volume {volume:.4g} Å³)")
        return float(result.free_energy if self.free_energy else result.energy)
