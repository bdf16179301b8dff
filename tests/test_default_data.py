"""The shipped default dataset: its species and reactions, and entries recomputed with PySCF."""

import numpy as np
import pytest
from pyscf import lib

import nlxc.data as data


def test_default_set_counts_and_balance():
    s = data.default_set()
    assert len(s.molecules) == 36 and len(s) == 30
    assert {m.name for m in s.molecules} == set(data.DEFAULT_MOLECULES) | {"H", "Li", "C", "N", "O", "F"}
    assert {m.name for m in s.molecules if m.spin} >= {"OH", "CH3", "H", "N", "NH2", "O2", "CH2_s3B1d"}
    # every G2-1 molecule made of H, Li, C, N, O and F, once
    from ase.data.g2_1 import data as g2_1
    from ase.symbols import string2symbols

    light = {n for n, e in g2_1.items()
             if len(string2symbols(e["symbols"])) > 1 and set(string2symbols(e["symbols"])) <= {"H", "Li", "C", "N", "O", "F"}}
    assert set(data.DEFAULT_MOLECULES) == light and len(data.DEFAULT_MOLECULES) == len(light)
    g2 = data.g2("g2_1")
    for r in s.reactions:
        assert r.reference == g2.reaction(r.name).reference


def test_shipped_file_holds_every_entry():
    ds = data.default_dataset()
    assert ds.basis.lower() == data.DEFAULT_BASIS and ds.grid_level == data.DEFAULT_GRID_LEVEL
    assert set(ds.names) == {m.name for m in data.default_set().molecules}
    for name in ds.names:
        assert set(ds.methods(name)) == set(data.DEFAULT_METHODS)
        assert ds.molecule(name).fingerprint() == data.default_set().molecule(name).fingerprint()
    e = ds.energies("ccsd(t)")
    assert all(np.isfinite(v) for v in e.values())


@pytest.mark.parametrize("name", ["CH3", "N"])
def test_shipped_entries_match_a_fresh_pyscf_calculation(tmp_path, name):
    """Recompute two open-shell entries with PySCF now and compare with the shipped file.

    Open shells with a non-degenerate ground state only: for OH (²Π) the integration grid splits
    the two degenerate UKS solutions by ~6e-7 Ha, and which one the SCF lands in depends on
    floating-point noise (e.g. the number of BLAS threads), so it cannot be compared to 1e-8.
    """
    molecule = data.default_set().molecule(name)
    with lib.with_omp_threads(1):
        fresh = data.compute_references(
            [molecule], tmp_path / "fresh.h5", methods=("b3lyp", "ccsd(t)"),
            basis=data.DEFAULT_BASIS, grid_level=data.DEFAULT_GRID_LEVEL, progress=False,
        )
    shipped = data.default_dataset()
    for method in ("b3lyp", "ccsd(t)"):
        a, b = fresh.entry(name, method), shipped.entry(name, method)
        assert abs(a.energy - b.energy) < 1e-8
        np.testing.assert_allclose(a.density_matrix, b.density_matrix, atol=1e-5)
    fock = shipped.entry(name, "b3lyp").fock_matrix
    assert fock.shape == fresh.entry(name, "b3lyp").density_matrix.shape
    np.testing.assert_allclose(fock, fresh.entry(name, "b3lyp").fock_matrix, atol=1e-5)
