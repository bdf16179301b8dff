"""Benchmark sets: molecules plus reactions (linear combinations of molecular energies).

A [`BenchmarkSet`][nlxc.data.BenchmarkSet] holds molecules and
[`Reaction`][nlxc.data.Reaction]s. A reaction energy is `Σ_i c_i E_i` over its species, and
[`BenchmarkSet.stoichiometry`][nlxc.data.BenchmarkSet.stoichiometry] gives all of them at
once as a matrix, `C @ E`, which is what a loss on reaction energies uses. All reference
values are stored in **Hartree**.

Loaders:

- [`g2`][nlxc.data.g2]: G2-1, G2-2 (G2/97) atomization energies from `ase.data.g2_1` and
  `ase.data.g2_2`.
- [`gmtkn55`][nlxc.data.gmtkn55]: any GMTKN55 subset, from the files shipped by the `xcbm`
  package (`pip install "nlxc[sets]"`); [`w4_11`][nlxc.data.w4_11] for W4-11.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .._errors import InputError
from ..constants import KCAL_PER_MOL
from ._molecule import Molecule


G2_SOURCE_G2_1 = (
    "G2-1: L. A. Curtiss, K. Raghavachari, G. W. Trucks, J. A. Pople, J. Chem. Phys. 94, 7221 "
    "(1991), doi:10.1063/1.460205"
)
G2_SOURCE_G2_2 = (
    "G2-2 (G2/97): L. A. Curtiss, K. Raghavachari, P. C. Redfern, J. A. Pople, J. Chem. Phys. 106, "
    "1063 (1997), doi:10.1063/1.473182"
)
G2_SOURCE_DATA = (
    "geometries (MP2(full)/6-31G(d)) and experimental thermochemistry as compiled in ase.data.g2_1 "
    "and ase.data.g2_2; molecular enthalpies of formation, ZPEs and thermal corrections from "
    "V. N. Staroverov, G. E. Scuseria, J. Tao, J. P. Perdew, J. Chem. Phys. 119, 12129 (2003), "
    "doi:10.1063/1.1626543"
)
GMTKN55_SOURCE = (
    "GMTKN55: L. Goerigk, A. Hansen, C. Bauer, S. Ehrlich, A. Najibi, S. Grimme, Phys. Chem. Chem. "
    "Phys. 19, 32184 (2017), doi:10.1039/C7CP04913G (original references of each subset therein); "
    "files from the xcbm package (xcbm/GMTKN55_Dataset)"
)
W4_11_SOURCE = (
    "W4-11: A. Karton, S. Daon, J. M. L. Martin, Chem. Phys. Lett. 510, 165 (2011), "
    "doi:10.1016/j.cplett.2011.05.007"
)

GMTKN55_SUBSETS: tuple[str, ...] = (
    # basic properties and reaction energies for small systems
    "W4-11", "G21EA", "G21IP", "DIPCS10", "PA26", "SIE4x4", "ALKBDE10", "YBDE18", "AL2X6",
    "HEAVYSB11", "NBPRC", "ALK8", "RC21", "G2RC", "BH76RC", "FH51", "TAUT15", "DC13",
    # reaction energies for large systems and isomerisation reactions
    "MB16-43", "DARC", "RSE43", "BSR36", "CDIE20", "ISO34", "ISOL24", "C60ISO", "PArel",
    # reaction barrier heights
    "BH76", "BHPERI", "BHDIV10", "INV24", "BHROT27", "PX13", "WCPT18",
    # intermolecular noncovalent interactions
    "RG18", "ADIM6", "S22", "S66", "HEAVY28", "WATER27", "CARBHB12", "PNICO23", "HAL59", "AHB21",
    "CHB6", "IL16",
    # intramolecular noncovalent interactions
    "IDISP", "ICONF", "ACONF", "Amino20x4", "PCONF21", "MCONF", "SCONF", "UPU23", "BUT14DIOL",
)
"""The 55 GMTKN55 subset names, in the order (and by the categories) of Goerigk et al. (2017)."""


# --------------------------------------------------------------------------------------------
# Reaction and BenchmarkSet
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reaction:
    """A reaction: a linear combination of molecular energies with a reference value.

    **Fields:**

    - `name`: a label, unique within a [`BenchmarkSet`][nlxc.data.BenchmarkSet].
    - `species`: names of the molecules involved.
    - `coefficients`: stoichiometric coefficients, one per species; the reaction energy is
      `Σ_i coefficients[i] · E[species[i]]`.
    - `reference`: the reference reaction energy, **Hartree**.
    """

    name: str
    species: tuple[str, ...]
    coefficients: tuple[float, ...]
    reference: float

    def __post_init__(self):
        species = tuple(str(s) for s in self.species)
        coefficients = tuple(float(c) for c in self.coefficients)
        if len(species) != len(coefficients):
            raise InputError(
                f"reaction {self.name!r}: {len(species)} species but "
                f"{len(coefficients)} coefficients"
            )
        if not species:
            raise InputError(f"reaction {self.name!r} has no species")
        reference = float(self.reference)
        if not math.isfinite(reference) or not all(math.isfinite(c) for c in coefficients):
            raise InputError(f"reaction {self.name!r}: non-finite reference or coefficient")
        object.__setattr__(self, "name", str(self.name))
        object.__setattr__(self, "species", species)
        object.__setattr__(self, "coefficients", coefficients)
        object.__setattr__(self, "reference", reference)

    def energy(self, energies: Mapping[str, float]) -> float:
        """The reaction energy `Σ_i c_i E_i`.

        **Arguments:**

        - `energies`: molecule name → total energy (Hartree). Values may be floats or JAX
          scalars (the sum is then differentiable).

        **Returns:** the reaction energy, in the units of `energies`.

        **Raises:** [`nlxc.InputError`][] if a species has no energy.
        """
        missing = [s for s in self.species if s not in energies]
        if missing:
            raise InputError(
                f"reaction {self.name!r}: no energy for {', '.join(map(repr, missing))}"
            )
        return sum(c * energies[s] for s, c in zip(self.species, self.coefficients))


@dataclasses.dataclass(frozen=True)
class BenchmarkSet:
    """Molecules and the reactions defined on them, with reference energies.

    **Fields:**

    - `name`: the set's name (e.g. `"W4-11"`).
    - `molecules`: the [`Molecule`][nlxc.data.Molecule]s, with unique names; every molecule
      takes part in at least one reaction for the sets built by the loaders here.
    - `reactions`: the [`Reaction`][nlxc.data.Reaction]s, with unique names; every species is
      the name of one of `molecules`.
    - `source`: citation(s) of the data, with DOIs.

    `len(benchmark_set)` is the number of reactions.

    **Raises** (on construction): [`nlxc.InputError`][] for duplicate molecule or reaction
    names, or a reaction that names a molecule not in the set.
    """

    name: str
    molecules: tuple[Molecule, ...]
    reactions: tuple[Reaction, ...]
    source: str = ""

    def __post_init__(self):
        molecules = tuple(self.molecules)
        reactions = tuple(self.reactions)
        index: dict[str, int] = {}
        for i, m in enumerate(molecules):
            if not isinstance(m, Molecule):
                raise InputError(f"set {self.name!r}: {m!r} is not a Molecule")
            if m.name in index:
                raise InputError(f"set {self.name!r}: duplicate molecule name {m.name!r}")
            index[m.name] = i
        seen: set[str] = set()
        for r in reactions:
            if r.name in seen:
                raise InputError(f"set {self.name!r}: duplicate reaction name {r.name!r}")
            seen.add(r.name)
            unknown = [s for s in r.species if s not in index]
            if unknown:
                raise InputError(
                    f"set {self.name!r}: reaction {r.name!r} needs molecule(s) "
                    f"{', '.join(map(repr, unknown))} that are not in the set"
                )
        object.__setattr__(self, "molecules", molecules)
        object.__setattr__(self, "reactions", reactions)
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.reactions)

    def __repr__(self) -> str:
        return (f"BenchmarkSet({self.name!r}, {len(self.molecules)} molecules, "
                f"{len(self.reactions)} reactions)")

    @property
    def molecule_names(self) -> tuple[str, ...]:
        """Names of `molecules`, in order (the columns of `stoichiometry()`)."""
        return tuple(m.name for m in self.molecules)

    def molecule(self, name: str) -> Molecule:
        """The molecule called `name`.

        **Raises:** [`nlxc.InputError`][] if there is none.
        """
        try:
            return self.molecules[self._index[name]]
        except KeyError:
            raise InputError(f"set {self.name!r} has no molecule {name!r}") from None

    def reaction(self, name: str) -> Reaction:
        """The reaction called `name`.

        **Raises:** [`nlxc.InputError`][] if there is none.
        """
        for r in self.reactions:
            if r.name == name:
                return r
        raise InputError(f"set {self.name!r} has no reaction {name!r}")

    def stoichiometry(self) -> np.ndarray:
        """The stoichiometry matrix C, `(n_reactions, n_molecules)`.

        Columns follow the order of `molecules`, rows that of `reactions`, so the reaction
        energies are `C @ E` for total energies `E` in the order of `molecules`. A species
        listed twice in one reaction has its coefficients added.
        """
        c = np.zeros((len(self.reactions), len(self.molecules)))
        for i, r in enumerate(self.reactions):
            for s, coefficient in zip(r.species, r.coefficients):
                c[i, self._index[s]] += coefficient
        return c

    def references(self) -> np.ndarray:
        """Reference reaction energies, `(n_reactions,)`, **Hartree**."""
        return np.array([r.reference for r in self.reactions], dtype=float)

    def subset(self, reactions: Sequence[str] | str) -> BenchmarkSet:
        """A set with only the named reactions (in the order given) and the molecules they need.

        **Arguments:**

        - `reactions`: reaction names (a single name is also accepted).

        **Returns:** a [`BenchmarkSet`][nlxc.data.BenchmarkSet] with the same name and source;
        its molecules keep their order in this set.

        **Raises:** [`nlxc.InputError`][] for an unknown or repeated reaction name.
        """
        if isinstance(reactions, str):
            reactions = [reactions]
        by_name = {r.name: r for r in self.reactions}
        chosen: list[Reaction] = []
        for name in reactions:
            if name not in by_name:
                raise InputError(f"set {self.name!r} has no reaction {name!r}")
            if any(r.name == name for r in chosen):
                raise InputError(f"reaction {name!r} is named twice")
            chosen.append(by_name[name])
        needed = {s for r in chosen for s in r.species}
        molecules = tuple(m for m in self.molecules if m.name in needed)
        return BenchmarkSet(self.name, molecules, tuple(chosen), self.source)


def atomization_reactions(
    molecules: Sequence[Molecule],
    atoms: Sequence[Molecule],
    references: Mapping[str, float],
) -> tuple[Reaction, ...]:
    """Atomization reactions `Σ_a n_a E(atom a) − E(molecule)` (positive for a bound molecule).

    **Arguments:**

    - `molecules`: neutral molecules.
    - `atoms`: free atoms, one single-atom [`Molecule`][nlxc.data.Molecule] per element.
    - `references`: molecule name → reference atomization energy, **Hartree**.

    **Returns:** one [`Reaction`][nlxc.data.Reaction] per molecule, named as the molecule,
    with species the atoms (in order of first appearance in the molecule, coefficient `+n_a`)
    followed by the molecule (coefficient `−1`).

    **Raises:** [`nlxc.InputError`][] for a charged molecule, an element without an atom, an
    `atoms` entry with more than one atom, or a molecule without a reference.
    """
    by_element: dict[str, str] = {}
    for atom in atoms:
        if len(atom.symbols) != 1:
            raise InputError(f"{atom.name!r} is not a single atom ({atom.formula})")
        by_element[atom.symbols[0]] = atom.name
    out = []
    for m in molecules:
        if m.charge != 0:
            raise InputError(
                f"molecule {m.name!r} has charge {m.charge}: atomization needs a neutral molecule"
            )
        if m.name not in references:
            raise InputError(f"no reference atomization energy for {m.name!r}")
        counts: dict[str, int] = {}
        for s in m.symbols:
            counts[s] = counts.get(s, 0) + 1
        missing = [s for s in counts if s not in by_element]
        if missing:
            raise InputError(f"molecule {m.name!r}: no free atom for {', '.join(missing)}")
        species = tuple(by_element[s] for s in counts) + (m.name,)
        coefficients = tuple(float(n) for n in counts.values()) + (-1.0,)
        out.append(Reaction(m.name, species, coefficients, float(references[m.name])))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# G2 (ASE)
# --------------------------------------------------------------------------------------------

_G2_COLLECTIONS = {"g2_1": "G2-1", "g2_2": "G2-2", "g2": "G2"}


def _g2_molecule(data, name: str) -> Molecule:
    from ase.symbols import string2symbols

    d = data[name]
    spin = 0 if d["magmoms"] is None else int(round(abs(float(np.sum(d["magmoms"])))))
    charge = 0 if d["charges"] is None else int(round(float(np.sum(d["charges"]))))
    return Molecule(name, tuple(string2symbols(d["symbols"])), np.asarray(d["positions"], float),
                    charge=charge, spin=spin)


def g2_atomization_energy_kcal(name: str) -> float:
    """ASE's experimental G2 atomization energy of `name`, kcal/mol, for G2-1 **and** G2-2.

    This is the formula of `ase.data.g2_1.get_atomization_energy`,
    `D_e = −ΔH_f(298 K) + ZPE + [H(298 K) − H(0 K)]
    + Σ_atoms (ΔH_f,atom(0 K) − [H(298 K) − H(0 K)]_atom)`,
    evaluated on the merged `ase.data.g2.data`: ASE's own function only looks in the G2-1
    data, so it raises `KeyError` for every G2-2 molecule (and for the B and Al atoms). For
    G2-1 molecules the two agree exactly (see `tests/test_sets.py`).

    **Raises:** [`nlxc.InputError`][] for a name that is not a G2 molecule.
    """
    from ase.data import g2
    from ase.symbols import string2symbols

    if name not in g2.molecule_names:
        raise InputError(f"{name!r} is not a G2 molecule")
    d = g2.data[name]
    energy = -d["enthalpy"] + d["ZPE"] + d["thermal correction"]
    for a in string2symbols(d["symbols"]):
        energy += g2.data[a]["enthalpy"] - g2.data[a]["thermal correction"]
    return float(energy)


@functools.lru_cache(maxsize=None)
def _g2(collection: str) -> BenchmarkSet:
    from ase.data import g2, g2_1, g2_2

    names = {"g2_1": g2_1.molecule_names, "g2_2": g2_2.molecule_names,
             "g2": g2.molecule_names}[collection]
    molecules = [_g2_molecule(g2.data, n) for n in names]
    # free atoms: those the molecules contain, in ASE's order (ase.data.g2_2.atom_names omits P,
    # which PF3 needs; ase.data.g2_2.data has it)
    elements = {s for m in molecules for s in m.symbols}
    atoms = [_g2_molecule(g2.data, a) for a in g2.atom_names if a in elements]
    if elements - {a.name for a in atoms}:  # pragma: no cover - guards against a new ASE
        raise InputError(f"G2: no free-atom data for {sorted(elements - {a.name for a in atoms})}")
    references = {n: g2_atomization_energy_kcal(n) * KCAL_PER_MOL for n in names}
    reactions = atomization_reactions(molecules, atoms, references)
    source = {"g2_1": G2_SOURCE_G2_1, "g2_2": G2_SOURCE_G2_2,
              "g2": f"{G2_SOURCE_G2_1}; {G2_SOURCE_G2_2}"}[collection]
    return BenchmarkSet(_G2_COLLECTIONS[collection], tuple(molecules) + tuple(atoms), reactions,
                        f"{source}; {G2_SOURCE_DATA}")


def g2(collection: str = "g2_1") -> BenchmarkSet:
    """Experimental atomization energies of the G2 sets, from ASE's G2 data.

    Molecules are ASE's (names as in `ase.data.g2_1.molecule_names`, e.g. `"CH4"`,
    `"CH2_s3B1d"`; MP2(full)/6-31G(d) geometries, Å; spin = sum of ASE's magnetic moments;
    all neutral), followed by the free atoms they contain (named by their symbol, e.g. `"C"`).
    There is one reaction per molecule, named as the molecule: its atomization energy
    `Σ_a n_a E(atom a) − E(molecule)`, positive for a bound molecule.

    The reference is ASE's experimental atomization energy
    ([`g2_atomization_energy_kcal`][nlxc.data.g2_atomization_energy_kcal], equal to
    `ase.data.g2_1.get_atomization_energy` for G2-1): experimental 298 K enthalpies of
    formation, back-corrected with B3LYP zero-point and thermal energies to an electronic
    (vibrationless) D_e, converted to **Hartree** with
    [`KCAL_PER_MOL`][nlxc.data.KCAL_PER_MOL]. Being experimental, it contains the spin–orbit
    and scalar-relativistic contributions that a nonrelativistic calculation lacks.

    Sources: G2-1, L. A. Curtiss et al., J. Chem. Phys. 94, 7221 (1991), doi:10.1063/1.460205;
    G2-2 (G2/97), L. A. Curtiss et al., J. Chem. Phys. 106, 1063 (1997), doi:10.1063/1.473182;
    molecular thermochemistry as compiled by V. N. Staroverov et al., J. Chem. Phys. 119, 12129
    (2003), doi:10.1063/1.1626543.

    **Arguments:**

    - `collection`: `"g2_1"` (55 molecules + 12 atoms), `"g2_2"` (93 molecules + 11 atoms:
      H, B, C, N, O, F, Al, Si, P, S, Cl) or `"g2"` (both: 148 molecules + 14 atoms).

    **Returns:** a [`BenchmarkSet`][nlxc.data.BenchmarkSet] named `"G2-1"`, `"G2-2"` or `"G2"`.

    **Raises:** [`nlxc.InputError`][] for an unknown collection.
    """
    key = str(collection).strip().lower().replace("-", "_")
    if key not in _G2_COLLECTIONS:
        raise InputError(
            f"unknown G2 collection {collection!r}; choose one of {', '.join(_G2_COLLECTIONS)}"
        )
    return _g2(key)


# --------------------------------------------------------------------------------------------
# GMTKN55 (files of the xcbm package)
# --------------------------------------------------------------------------------------------


def _gmtkn55_root():
    import importlib.resources

    try:
        root = importlib.resources.files("xcbm").joinpath("GMTKN55_Dataset")
    except ModuleNotFoundError:
        raise InputError('GMTKN55 needs the xcbm package: pip install "nlxc[sets]"') from None
    if not root.is_dir():
        raise InputError("the installed xcbm package has no GMTKN55_Dataset folder")
    return root


def _read_xyz(text: str, where: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Symbols and positions (Å) of an XYZ file: atom count, a comment line, then atoms."""
    from ase.data import chemical_symbols

    lines = text.splitlines()
    try:
        n = int(lines[0].split()[0])
        rows = [line.split() for line in lines[2:] if line.strip()][:n]
        # GMTKN55 files write symbols in any case ("AL", "Cl", "c")
        symbols = tuple(r[0].capitalize() for r in rows)
        positions = np.array([[float(x) for x in r[1:4]] for r in rows], dtype=float)
    except (IndexError, ValueError):
        raise InputError(f"{where}: not an XYZ file") from None
    if len(symbols) != n or positions.shape != (n, 3):
        raise InputError(f"{where}: {n} atoms announced but {len(symbols)} read")
    unknown = [s for s in symbols if s not in chemical_symbols[1:]]
    if unknown:
        raise InputError(f"{where}: unknown element(s) {', '.join(sorted(set(unknown)))}")
    return symbols, positions


def _parse_stoichiometry(
    text: str, where: str
) -> list[tuple[str, tuple[str, ...], tuple[float, ...], float]]:
    """(index, species, coefficients, reference kcal/mol) per line of a STOCHIOMETRY file.

    Lines are `index, species…, coefficients…, reference`, meant to be tab-separated with
    empty padding fields. Some files of xcbm 0.1.8 join two species with a space instead of a
    tab, or shift a column (BHPERI, FH51, HAL59, NBPRC, YBDE18), so each line is split on any
    whitespace, empty fields dropped, and the tokens between index and reference halved into
    names and coefficients.
    """
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split()
        middle = tokens[1:-1]
        if len(tokens) < 4 or len(middle) % 2:
            raise InputError(f"{where}, line {number}: cannot split {line.strip()!r}")
        half = len(middle) // 2
        try:
            coefficients = tuple(float(c) for c in middle[half:])
            reference = float(tokens[-1])
        except ValueError:
            raise InputError(f"{where}, line {number}: cannot read {line.strip()!r}") from None
        out.append((tokens[0], tuple(middle[:half]), coefficients, reference))
    return out


def _match_subset(subset: str) -> str:
    lower = {s.lower(): s for s in GMTKN55_SUBSETS}
    key = str(subset).strip().lower()
    if key not in lower:
        raise InputError(
            f"unknown GMTKN55 subset {subset!r}; available: {', '.join(GMTKN55_SUBSETS)}"
        )
    return lower[key]


@functools.lru_cache(maxsize=None)
def _gmtkn55(subset: str) -> BenchmarkSet:
    root = _gmtkn55_root()
    stoich_file = root.joinpath("STOCHIOMETRY", f"STOCHIOMETRY_{subset}.txt")
    cm_file = root.joinpath("CHARGE_MULTIPLICITY", f"CHARGE_MULTIPLICITY_{subset}.txt")
    if not (stoich_file.is_file() and cm_file.is_file()):
        raise InputError(f"the installed xcbm package has no files for GMTKN55 subset {subset!r}")

    charge_multiplicity: dict[str, tuple[int, int]] = {}
    for number, line in enumerate(cm_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            name, charge, multiplicity = fields[0], int(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            raise InputError(
                f"{cm_file.name}, line {number}: cannot read {line.strip()!r}"
            ) from None
        charge_multiplicity[name] = (charge, multiplicity)

    rows = _parse_stoichiometry(stoich_file.read_text(), stoich_file.name)
    needed = {s for _, species, _, _ in rows for s in species}
    missing = sorted(needed - set(charge_multiplicity))
    if missing:
        raise InputError(
            f"{stoich_file.name}: species without charge/multiplicity: {', '.join(missing)}"
        )

    molecules = []
    for name, (charge, multiplicity) in charge_multiplicity.items():
        if name not in needed:  # listed but used by no reaction (shared folders, e.g. BH76)
            continue
        xyz = root.joinpath("STRUCTURES", subset, name, "struc.xyz")
        where = f"GMTKN55 {subset}/{name}/struc.xyz"
        if not xyz.is_file():
            raise InputError(f"{where} is missing from the xcbm package")
        symbols, positions = _read_xyz(xyz.read_text(), where)
        molecules.append(Molecule(name, symbols, positions, charge=charge, spin=multiplicity - 1))

    reactions = tuple(
        Reaction(f"{subset}:{index}", species, coefficients, reference * KCAL_PER_MOL)
        for index, species, coefficients, reference in rows
    )
    source = f"{W4_11_SOURCE}; {GMTKN55_SOURCE}" if subset == "W4-11" else GMTKN55_SOURCE
    return BenchmarkSet(subset, tuple(molecules), reactions, source)


def gmtkn55(subset: str) -> BenchmarkSet:
    """One GMTKN55 subset, from the files shipped by the `xcbm` package.

    Molecules are named by the subset's species folders (e.g. `"ch4"` in W4-11), with the
    geometry of `STRUCTURES/<subset>/<species>/struc.xyz` (Å) and the charge and spin
    (multiplicity − 1) of `CHARGE_MULTIPLICITY_<subset>.txt`; only species used by a reaction
    are kept. Reactions are the lines of `STOCHIOMETRY_<subset>.txt`, named
    `"<subset>:<index>"` (e.g. `"W4-11:1"`), with GMTKN55's sign convention: the reaction
    energy is `Σ_i c_i E_i` with the listed coefficients (W4-11 #1 is `2 E(h) − E(h2)`, the
    positive atomization energy of H₂). References are GMTKN55's (kcal/mol in the file),
    converted to **Hartree** with [`KCAL_PER_MOL`][nlxc.data.KCAL_PER_MOL].

    Source: L. Goerigk, A. Hansen, C. Bauer, S. Ehrlich, A. Najibi, S. Grimme, Phys. Chem. Chem.
    Phys. 19, 32184 (2017), doi:10.1039/C7CP04913G, which gives the original reference of each
    subset.

    **Arguments:**

    - `subset`: one of [`GMTKN55_SUBSETS`][nlxc.data.GMTKN55_SUBSETS] (case-insensitive),
      e.g. `"W4-11"`, `"G21IP"`, `"S22"`.

    **Returns:** a [`BenchmarkSet`][nlxc.data.BenchmarkSet] named as the subset.

    **Raises:** [`nlxc.InputError`][] for an unknown subset (the message lists them), when
    xcbm is not installed (`pip install "nlxc[sets]"`), or when its files cannot be read.
    """
    return _gmtkn55(_match_subset(subset))


def w4_11() -> BenchmarkSet:
    """W4-11: 140 total atomization energies of 152 species (molecules and atoms) in GMTKN55.

    The same as `gmtkn55("W4-11")`. References are W4-level, nonrelativistic, clamped-nuclei
    (zero-point exclusive) total atomization energies, **Hartree**: A. Karton, S. Daon,
    J. M. L. Martin, Chem. Phys. Lett. 510, 165 (2011), doi:10.1016/j.cplett.2011.05.007;
    as part of GMTKN55, L. Goerigk et al., Phys. Chem. Chem. Phys. 19, 32184 (2017),
    doi:10.1039/C7CP04913G.

    **Raises:** [`nlxc.InputError`][] when xcbm is not installed.
    """
    return gmtkn55("W4-11")
