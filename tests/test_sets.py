"""Benchmark sets (G2 from ASE, GMTKN55 from xcbm): counts, references, stoichiometry, subsets.

No quantum chemistry: everything here reads data files and checks bookkeeping.
"""

import importlib.resources
import sys

import numpy as np
import pytest
from ase import units
from pyscf.data import elements

from nlxc import InputError
from nlxc.data import Molecule
from nlxc.data import _sets
from nlxc.data._sets import (
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

# kcal/mol → Hartree with ASE's (CODATA 2014) units: an independent check of KCAL_PER_MOL.
ASE_KCAL_PER_MOL = units.kcal / units.mol / units.Hartree


def _n_electrons(m):
    return sum(elements.charge(s) for s in m.symbols) - m.charge


def _element_balance(benchmark):
    """(n_reactions, n_elements) Σ_i c_i n_e(i) and the element list."""
    els = sorted({s for m in benchmark.molecules for s in m.symbols})
    counts = np.array([[m.symbols.count(e) for e in els] for m in benchmark.molecules])
    return benchmark.stoichiometry() @ counts, els


def test_kcal_per_mol():
    assert KCAL_PER_MOL == pytest.approx(ASE_KCAL_PER_MOL, rel=1e-8)
    assert 1.0 / KCAL_PER_MOL == pytest.approx(627.5095, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# G2
# ---------------------------------------------------------------------------------------------

# G2-1: 55 molecules, Curtiss et al., J. Chem. Phys. 94, 7221 (1991), doi:10.1063/1.460205.
# G2-2: 93 more, Curtiss et al., J. Chem. Phys. 106, 1063 (1997), doi:10.1063/1.473182.
# Free atoms: those the molecules contain (G2-2 needs P for PF3, which ase.data.g2_2.atom_names
# leaves out).
G2_COUNTS = {"g2_1": ("G2-1", 55, 12), "g2_2": ("G2-2", 93, 11), "g2": ("G2", 148, 14)}


@pytest.mark.parametrize("collection", list(G2_COUNTS))
def test_g2_counts_and_names(collection):
    import ase.data.g2 as ase_g2
    import ase.data.g2_1 as ase_g2_1
    import ase.data.g2_2 as ase_g2_2

    name, n_molecules, n_atoms = G2_COUNTS[collection]
    s = g2(collection)
    assert s.name == name and "doi:" in s.source
    assert len(s) == n_molecules
    atoms = [m for m in s.molecules if len(m.symbols) == 1]
    assert len(atoms) == n_atoms
    assert len(s.molecules) == n_molecules + n_atoms
    ase_names = {"g2_1": ase_g2_1, "g2_2": ase_g2_2, "g2": ase_g2}[collection].molecule_names
    assert [r.name for r in s.reactions] == list(ase_names)
    assert [m.name for m in s.molecules[:n_molecules]] == list(ase_names)
    assert all(m.charge == 0 for m in s.molecules)
    assert g2(collection.upper().replace("_", "-")) is s  # "G2-1" works too; cached


def test_g2_unknown_collection():
    with pytest.raises(InputError, match="g2_1"):
        g2("g3")


def test_g2_references_are_ase_atomization_energies():
    import ase.data.g2 as ase_g2

    s = g2("g2")
    compared = 0
    for r in s.reactions:
        assert r.reference > 0  # bound
        mine = g2_atomization_energy_kcal(r.name)
        assert r.reference == pytest.approx(mine * KCAL_PER_MOL, rel=1e-14)
        assert r.reference == pytest.approx(mine * ASE_KCAL_PER_MOL, rel=1e-8)
        try:  # ASE's own function only knows G2-1 (it looks in ase.data.g2_1.data)
            ase_value = ase_g2.get_atomization_energy(r.name)
        except KeyError:
            continue
        assert mine == ase_value
        compared += 1
    assert compared >= 55
    # sanity: CH4 and benzene, experimental D_e (kcal/mol)
    assert g2_atomization_energy_kcal("CH4") == pytest.approx(420.2, abs=0.1)
    assert g2_atomization_energy_kcal("C6H6") == pytest.approx(1367.7, abs=0.1)
    with pytest.raises(InputError):
        g2_atomization_energy_kcal("H")


@pytest.mark.parametrize("collection", list(G2_COUNTS))
def test_g2_atomization_stoichiometry(collection):
    s = g2(collection)
    balance, _ = _element_balance(s)
    np.testing.assert_array_equal(balance, 0)
    for r in s.reactions:
        assert r.species[-1] == r.name and r.coefficients[-1] == -1.0
        assert all(c > 0 for c in r.coefficients[:-1])
        assert all(len(s.molecule(a).symbols) == 1 for a in r.species[:-1])


def test_g2_spins():
    s = g2("g2")
    for m in s.molecules:
        assert m.spin >= 0 and (_n_electrons(m) - m.spin) % 2 == 0, m
    spins = {m.name: m.spin for m in s.molecules}
    assert spins["CH4"] == 0 and spins["O2"] == 2 and spins["CH3"] == 1 and spins["NO2"] == 1
    assert spins["H"] == 1 and spins["Be"] == 0 and spins["C"] == 2 and spins["N"] == 3


def test_g2_molecules_build_moles():
    s = g2("g2")
    for m in s.molecules[:5] + (s.molecule("C6H6"), s.molecule("Al"), s.molecule("P")):
        mol = m.to_mole("sto-3g")
        assert mol.spin == m.spin and mol.nelectron == _n_electrons(m)


# ---------------------------------------------------------------------------------------------
# GMTKN55 (xcbm)
# ---------------------------------------------------------------------------------------------


def _dataset():
    return importlib.resources.files("xcbm").joinpath("GMTKN55_Dataset")


def _charge_multiplicity(subset):
    path = _dataset().joinpath("CHARGE_MULTIPLICITY", f"CHARGE_MULTIPLICITY_{subset}.txt")
    text = path.read_text()
    return {f[0]: (int(f[1]), int(f[2])) for f in (line.split() for line in text.splitlines()) if f}


def test_w4_11_counts_and_references():
    # W4-11: Karton, Daon, Martin, Chem. Phys. Lett. 510, 165 (2011),
    # doi:10.1016/j.cplett.2011.05.007: 140 atomization energies, 152 species with the atoms.
    s = w4_11()
    assert s is gmtkn55("w4-11")
    assert s.name == "W4-11" and len(s) == 140 and len(s.molecules) == 152
    assert "10.1016/j.cplett.2011.05.007" in s.source and "10.1039/C7CP04913G" in s.source
    # the STOCHIOMETRY file, read here by its tab layout: index, k names, k coefficients, ref
    text = _dataset().joinpath("STOCHIOMETRY", "STOCHIOMETRY_W4-11.txt").read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows = [line.split("\t") for line in lines]
    assert len(rows) == 140
    for r, fields in zip(s.reactions, rows):
        k = (len(fields) - 2) // 2
        names = [f for f in fields[1:1 + k] if f.strip()]
        coefficients = [float(f) for f in fields[1 + k:1 + 2 * k] if f.strip()]
        assert r.name == f"W4-11:{fields[0]}"
        assert list(r.species) == names and list(r.coefficients) == coefficients
        assert r.reference == float(fields[-1]) * KCAL_PER_MOL
        assert r.reference == pytest.approx(float(fields[-1]) * ASE_KCAL_PER_MOL, rel=1e-8)
    np.testing.assert_array_equal(s.references(), [r.reference for r in s.reactions])
    # sign convention: Σ c_i E_i = Σ E(atoms) − E(molecule) > 0; #1 is H2 → 2 H
    first = s.reactions[0]
    assert dict(zip(first.species, first.coefficients)) == {"h2": -1.0, "h": 2.0}
    assert first.reference / KCAL_PER_MOL == pytest.approx(109.493)
    assert all(r.reference > 0 for r in s.reactions)
    assert all(sorted(c < 0 for c in r.coefficients) == [False] * (len(r.species) - 1) + [True]
               for r in s.reactions)


def test_w4_11_molecules():
    s = w4_11()
    balance, _ = _element_balance(s)
    np.testing.assert_array_equal(balance, 0)
    cm = _charge_multiplicity("W4-11")
    assert set(cm) == {m.name for m in s.molecules}
    for m in s.molecules:
        assert (m.charge, m.spin) == (cm[m.name][0], cm[m.name][1] - 1)
        assert (_n_electrons(m) - m.spin) % 2 == 0
    ch4 = s.molecule("ch4")
    assert ch4.formula == "CH4" and ch4.positions.shape == (5, 3)
    bond = np.linalg.norm(ch4.positions[0] - ch4.positions[1])  # C–H, Å
    assert bond == pytest.approx(1.0879, abs=1e-3)
    for name in ("h2", "o2", "ch4", "c2h4", "n"):
        mol = s.molecule(name).to_mole("sto-3g")
        assert mol.spin == s.molecule(name).spin


def test_stoichiometry_matches_reaction_energies():
    s = w4_11()
    rng = np.random.default_rng(0)
    energies = rng.normal(size=len(s.molecules)) * 100
    by_name = dict(zip(s.molecule_names, energies))
    c = s.stoichiometry()
    assert c.shape == (140, 152)
    np.testing.assert_allclose(c @ energies, [r.energy(by_name) for r in s.reactions], rtol=1e-12)
    with pytest.raises(InputError, match="no energy"):
        s.reactions[0].energy({})


def test_subset():
    s = w4_11()
    names = ["W4-11:3", "W4-11:1", "W4-11:10"]
    sub = s.subset(names)
    assert [r.name for r in sub.reactions] == names and len(sub) == 3
    needed = {x for n in names for x in s.reaction(n).species}
    assert set(sub.molecule_names) == needed and len(sub.molecules) == len(needed)
    assert list(sub.molecule_names) == [n for n in s.molecule_names if n in needed]  # order kept
    columns = [s.molecule_names.index(n) for n in sub.molecule_names]
    rows = [[r.name for r in s.reactions].index(n) for n in names]
    np.testing.assert_array_equal(sub.stoichiometry(), s.stoichiometry()[np.ix_(rows, columns)])
    np.testing.assert_array_equal(sub.references(), s.references()[rows])
    assert set(s.subset("W4-11:1").molecule_names) == {"h2", "h"}
    with pytest.raises(InputError, match="no reaction"):
        s.subset(["W4-11:0"])
    with pytest.raises(InputError, match="twice"):
        s.subset(["W4-11:1", "W4-11:1"])
    with pytest.raises(InputError, match="no molecule"):
        s.molecule("unobtainium")


def test_g21ip_charged_species():
    s = gmtkn55("G21IP")
    assert len(s) == 36 and len(s.molecules) == 71
    cm = _charge_multiplicity("G21IP")
    for m in s.molecules:
        assert (m.charge, m.spin) == (cm[m.name][0], cm[m.name][1] - 1)
    assert sum(m.charge == 1 for m in s.molecules) > 30
    ionization = s.reaction("G21IP:2")  # li+ − li
    assert dict(zip(ionization.species, ionization.coefficients)) == {"li+": 1.0, "li": -1.0}
    assert s.molecule("li+").charge == 1 and s.molecule("li+").spin == 0
    assert s.molecule("li+").to_mole("sto-3g").nelectron == 2


def test_all_gmtkn55_subsets_load():
    # bare protons (H⁺, zero electronic energy) are left out of PA26 (proton affinities),
    # G21IP #1 (H → H⁺) and SIE4x4 (H₂⁺ → H + H⁺): there the H count drops by one.
    proton_omitted = {"PA26", "G21IP", "SIE4x4"}
    n_reactions = 0
    for subset in GMTKN55_SUBSETS:
        s = gmtkn55(subset)
        n_reactions += len(s)
        assert s.name == subset and len(s) > 0
        used = {x for r in s.reactions for x in r.species}
        assert used == set(s.molecule_names)
        for m in s.molecules:
            assert m.spin >= 0 and (_n_electrons(m) - m.spin) % 2 == 0, (subset, m)
        balance, els = _element_balance(s)
        others = [i for i, e in enumerate(els) if e != "H"]
        np.testing.assert_array_equal(balance[:, others], 0, err_msg=subset)
        if "H" in els:
            h = balance[:, els.index("H")]
            assert set(h) <= ({0.0, -1.0} if subset in proton_omitted else {0.0}), subset
    # Goerigk et al., PCCP 19, 32184 (2017), doi:10.1039/C7CP04913G: 1505 relative energies
    assert len(GMTKN55_SUBSETS) == 55 and n_reactions == 1505


def test_malformed_stoichiometry_lines():
    # xcbm 0.1.8 joins two species with a space instead of a tab in some lines
    r = gmtkn55("NBPRC").reaction("NBPRC:5")  # borazine + 3 H2 → 3 NH2BH2
    assert dict(zip(r.species, r.coefficients)) == {"nh2-bh2": -3.0, "bz": 1.0, "h2": 3.0}
    r = gmtkn55("HAL59").reaction("HAL59:45")
    assert dict(zip(r.species, r.coefficients)) == {"FI_pyr": -1.0, "FI": 1.0, "pyr": 1.0}
    r = gmtkn55("YBDE18").reaction("YBDE18:1")
    assert dict(zip(r.species, r.coefficients)) == {"f2s-cbh22": -1.0, "f2s": 1.0, "cbh22": 1.0}


def test_unknown_subset():
    with pytest.raises(InputError, match="W4-11") as err:
        gmtkn55("W4-17")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError):
        gmtkn55("SLIM05")  # shipped by xcbm, but not a GMTKN55 subset


def test_missing_xcbm(monkeypatch):
    monkeypatch.setitem(sys.modules, "xcbm", None)  # import xcbm → ModuleNotFoundError
    with pytest.raises(InputError, match=r"pip install \"nlxc\[sets\]\""):
        _sets._gmtkn55_root()


# ---------------------------------------------------------------------------------------------
# Reaction / BenchmarkSet construction
# ---------------------------------------------------------------------------------------------


def test_benchmark_set_validation():
    h = Molecule("H", ("H",), np.zeros((1, 3)), spin=1)
    h2 = Molecule("H2", ("H", "H"), [[0, 0, 0], [0, 0, 0.74]])
    r = Reaction("d", ["H", "H2"], [2, -1], 0.17)
    assert r.species == ("H", "H2") and r.coefficients == (2.0, -1.0)
    s = BenchmarkSet("t", [h2, h], [r], "none")
    assert len(s) == 1 and s.molecules == (h2, h) and "1 reactions" in repr(s)
    np.testing.assert_array_equal(s.stoichiometry(), [[-1.0, 2.0]])
    assert r.energy({"H": -0.5, "H2": -1.17}) == pytest.approx(0.17)
    with pytest.raises(InputError, match="duplicate molecule"):
        BenchmarkSet("t", [h, h], [])
    with pytest.raises(InputError, match="duplicate reaction"):
        BenchmarkSet("t", [h, h2], [r, r])
    with pytest.raises(InputError, match="not in the set"):
        BenchmarkSet("t", [h], [r])
    with pytest.raises(InputError, match="coefficients"):
        Reaction("x", ["H"], [1, 2], 0.0)


def test_atomization_reactions_helper():
    h = Molecule("H", ("H",), np.zeros((1, 3)), spin=1)
    o = Molecule("O", ("O",), np.zeros((1, 3)), spin=2)
    water = Molecule("water", ("O", "H", "H"),
                     [[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]])
    (r,) = atomization_reactions([water], [h, o], {"water": 0.37})
    assert r.name == "water" and r.species == ("O", "H", "water")
    assert r.coefficients == (1.0, 2.0, -1.0)
    with pytest.raises(InputError, match="no free atom"):
        atomization_reactions([water], [h], {"water": 0.37})
    with pytest.raises(InputError, match="no reference"):
        atomization_reactions([water], [h, o], {})
    with pytest.raises(InputError, match="single atom"):
        atomization_reactions([water], [h, o, water], {"water": 0.37})
