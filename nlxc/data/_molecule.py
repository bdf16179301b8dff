"""A molecule as data: symbols, positions (Ångström), charge and spin, with a stable hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import numpy as np

from .._errors import InputError
from ..system import build_mole


@dataclasses.dataclass(frozen=True, eq=False)
class Molecule:
    """A molecule or atom, described only by what defines it (no basis, no grid).

    **Fields:**

    - `name`: a label, unique within a dataset (e.g. `"h2o"`, `"CH3"`).
    - `symbols`: element symbols, `(natom,)`.
    - `positions`: Cartesian coordinates, `(natom, 3)`, **Ångström** (an input boundary).
    - `charge`: total charge.
    - `spin`: 2S = N_α − N_β.

    Two Molecules with the same symbols, positions (to 1e-8 Å), charge and spin have the same
    [`fingerprint`][nlxc.data.Molecule.fingerprint], whatever their names.
    """

    name: str
    symbols: tuple[str, ...]
    positions: np.ndarray
    charge: int = 0
    spin: int = 0

    def __post_init__(self):
        symbols = tuple(str(s) for s in self.symbols)
        positions = np.asarray(self.positions, dtype=float).reshape(-1, 3)
        if len(symbols) != positions.shape[0]:
            raise InputError(
                f"molecule {self.name!r}: {len(symbols)} symbols but {positions.shape[0]} positions"
            )
        positions.setflags(write=False)
        object.__setattr__(self, "symbols", symbols)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "charge", int(self.charge))
        object.__setattr__(self, "spin", int(self.spin))

    @property
    def geometry(self) -> list[tuple[str, tuple[float, float, float]]]:
        """`[(symbol, (x, y, z)), ...]` in Ångström, as [`nlxc.build_mole`][] takes it."""
        return [(s, tuple(map(float, p))) for s, p in zip(self.symbols, self.positions)]

    @property
    def formula(self) -> str:
        """Hill-ordered formula, e.g. `"CH4"`."""
        counts: dict[str, int] = {}
        for s in self.symbols:
            counts[s] = counts.get(s, 0) + 1
        first = [k for k in ("C", "H") if k in counts] if "C" in counts else []
        order = first + sorted(k for k in counts if k not in first)
        return "".join(f"{k}{counts[k] if counts[k] > 1 else ''}" for k in order)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of symbols, positions rounded to 1e-8 Å, charge and spin."""
        payload = json.dumps(
            {
                "symbols": list(self.symbols),
                "positions": np.round(self.positions, 8).tolist(),
                "charge": self.charge,
                "spin": self.spin,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_mole(self, basis: str):
        """A validated PySCF `Mole` (see [`nlxc.build_mole`][] for the errors raised)."""
        try:
            return build_mole(self.geometry, basis, charge=self.charge, spin=self.spin)
        except InputError as err:
            raise InputError(f"molecule {self.name!r}: {err}") from None

    @classmethod
    def from_ase(cls, atoms, name: str | None = None, *, charge: int = 0, spin: int | None = None) -> Molecule:
        """From an `ase.Atoms`; `spin` defaults to the rounded sum of its initial magnetic moments."""
        if spin is None:
            spin = int(round(abs(float(np.sum(atoms.get_initial_magnetic_moments())))))
        return cls(
            name=name or atoms.get_chemical_formula(),
            symbols=tuple(atoms.get_chemical_symbols()),
            positions=np.asarray(atoms.get_positions()),
            charge=charge,
            spin=spin,
        )

    @classmethod
    def from_geometry(cls, name: str, geometry: Sequence[tuple[str, Sequence[float]]], *,
                      charge: int = 0, spin: int = 0) -> Molecule:
        """From `[(symbol, (x, y, z)), ...]` in Ångström."""
        return cls(name, tuple(s for s, _ in geometry), np.array([p for _, p in geometry], float),
                   charge, spin)

    def __eq__(self, other):
        if not isinstance(other, Molecule):
            return NotImplemented
        return self.name == other.name and self.fingerprint() == other.fingerprint()

    def __hash__(self):
        return hash((self.name, self.fingerprint()))

    def __repr__(self):
        return f"Molecule({self.name!r}, {self.formula}, charge={self.charge}, spin={self.spin})"
