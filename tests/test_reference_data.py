"""Reference labels (`nlxc.data._reference`): PySCF → HDF5 → `ReferenceDataset`.

Tiny molecules (H2, LiH, the H and Li atoms) in STO-3G on grid level 0 keep this fast; every
reference energy is recomputed here by PySCF directly, with the settings nlxc uses (JK-fit
auxiliary basis passed explicitly, grid level, "minao" guess, conv_tol 1e-10).
"""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from pyscf import cc, df, dft, gto, lib, mp, scf

from nlxc import InputError
from nlxc.data import Molecule, _pyscf_worker
from nlxc.data._reference import (
    DatasetError,
    ReferenceComputationError,
    ReferenceDataset,
    ReferenceEntry,
    compute_references,
)

BASIS = "sto-3g"
GRID_LEVEL = 0
H2 = Molecule("h2", ("H", "H"), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]]))
LIH = Molecule("lih", ("Li", "H"), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.6]]))
H = Molecule("h", ("H",), np.zeros((1, 3)), spin=1)
LI = Molecule("li", ("Li",), np.zeros((1, 3)), spin=1)
SCF_METHODS = ("hf", "pbe")


@pytest.fixture(autouse=True, scope="module")
def _one_pyscf_thread():
    # PySCF's OpenMP threads only slow these tiny calculations down on a shared 2-core machine
    with lib.with_omp_threads(1):
        yield


def run(molecules, path, **kwargs):
    kwargs = {"methods": SCF_METHODS, "basis": BASIS, "grid_level": GRID_LEVEL,
              "progress": False, **kwargs}
    return compute_references(molecules, path, **kwargs)


def pyscf_mole(molecule):
    return gto.M(atom=molecule.geometry, basis=BASIS, charge=molecule.charge, spin=molecule.spin,
                 verbose=0)


def pyscf_scf(molecule, method, *, density_fit=True):
    mol = pyscf_mole(molecule)
    if method == "hf":
        mf = scf.RHF(mol) if mol.spin == 0 else scf.UHF(mol)
    else:
        mf = dft.RKS(mol, xc=method) if mol.spin == 0 else dft.UKS(mol, xc=method)
        mf.grids.level = GRID_LEVEL
    if density_fit:
        mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf.init_guess = "minao"
    mf.conv_tol = 1e-10
    mf.chkfile = None
    mf.kernel()
    assert mf.converged
    return mf


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "refs.h5"
    return run([H2, LIH, H], path)


def test_write_and_read_back(dataset):
    assert isinstance(dataset, ReferenceDataset)
    assert dataset.names == ("h2", "lih", "h")
    assert len(dataset) == 6 and set(dataset) == {(n, m) for n in ("h2", "lih", "h")
                                                  for m in SCF_METHODS}
    assert dataset.basis == BASIS and dataset.grid_level == GRID_LEVEL
    meta = dataset.metadata
    assert meta["format"] == "nlxc-reference" and meta["format_version"] == 1
    assert meta["auxbasis"] == "make_auxbasis (JK-fit)"
    assert {"pyscf_version", "nlxc_version", "created"} <= set(meta)
    assert "3 molecules" in repr(dataset)

    for molecule in (H2, LIH, H):
        assert dataset.molecule(molecule.name) == molecule
        assert dataset.methods(molecule.name) == SCF_METHODS
        mol = pyscf_mole(molecule)
        s = mol.intor("int1e_ovlp")
        nao = mol.nao
        for method in SCF_METHODS:
            e = dataset.entry(molecule.name, method)
            assert isinstance(e, ReferenceEntry) and e.converged and e.scf_iterations >= 0
            assert e.restricted == (molecule.spin == 0) and e.scf_energy is None
            assert e.energy == pytest.approx(pyscf_scf(molecule, method).e_tot, abs=1e-8)
            assert dataset.energies(method)[molecule.name] == e.energy
            p = e.density_matrix
            assert p.shape == (2, nao, nao)
            np.testing.assert_allclose(np.einsum("sij,ji->s", p, s), mol.nelec, atol=1e-8)
            if e.restricted:
                np.testing.assert_array_equal(p[0], p[1])
            assert e.fock_matrix.shape == (2, nao, nao)
            assert e.orbital_energies.shape == e.occupations.shape == (2, nao)
            assert e.orbital_coefficients.shape == (2, nao, nao)
            np.testing.assert_allclose(e.occupations.sum(axis=1), mol.nelec)
            for spin in range(2):
                f, c, eps = e.fock_matrix[spin], e.orbital_coefficients[spin], e.orbital_energies[spin]
                # eigenpairs of the stored Fock matrix, and self-consistent with the stored density
                np.testing.assert_allclose(f @ c, s @ c * eps, atol=1e-10)
                fps = f @ p[spin] @ s
                assert np.abs(fps - fps.T).max() < 1e-4
                occ = c * e.occupations[spin]
                np.testing.assert_allclose(occ @ c.T, p[spin], atol=1e-4)
            assert not e.density_matrix.flags.writeable

    assert ("h2", "PBE") in dataset and ("h2", "b3lyp") not in dataset and "h2" not in dataset
    with pytest.raises(DatasetError, match="no entry"):
        dataset.entry("h2", "b3lyp")
    with pytest.raises(DatasetError, match="no molecule"):
        dataset.entry("water", "pbe")


def test_interrupt_and_resume(tmp_path, monkeypatch):
    path = tmp_path / "refs.h5"
    methods = ("hf", "svwn")
    expected = {(n, m) for n in ("h2", "lih") for m in methods}
    jobs = []
    compute_job = _pyscf_worker.compute_job
    monkeypatch.setattr(_pyscf_worker, "compute_job",
                        lambda job: jobs.append(job) or compute_job(job))

    first = []

    def interrupt(name, method):
        first.append((name, method))
        if len(first) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run([H2, LIH], path, methods=methods, on_entry=interrupt)
    assert len(jobs) == 2
    partial = ReferenceDataset(path)
    assert len(first) == 2 and set(partial) == set(first)
    for name, method in first:
        partial.entry(name, method)

    second = []
    jobs.clear()
    done = run([H2, LIH], path, methods=methods, on_entry=lambda n, m: second.append((n, m)))
    assert len(second) == 2 and set(second) == expected - set(first)  # the first two are kept
    assert len(jobs) == 2
    assert set(done) == expected and len(done) == 4

    jobs.clear()
    run([H2, LIH], path, methods=methods, on_entry=lambda n, m: pytest.fail("recomputed"))
    assert jobs == []


def test_incomplete_entry_is_recomputed_and_tampering_detected(tmp_path):
    path = tmp_path / "refs.h5"
    run([H2], path)
    energy = ReferenceDataset(path).entry("h2", "hf").energy
    with h5py.File(path, "r+") as f:
        del f["molecules/h2/hf"].attrs["data_sha256"]
    ds = ReferenceDataset(path)
    assert ("h2", "hf") not in ds and ("h2", "pbe") in ds and ds.methods("h2") == ("pbe",)
    with pytest.raises(DatasetError, match="incomplete"):
        ds.entry("h2", "hf")

    calls = []
    ds = run([H2], path, on_entry=lambda n, m: calls.append((n, m)))
    assert calls == [("h2", "hf")]
    assert ds.entry("h2", "hf").energy == pytest.approx(energy, abs=1e-10)

    with h5py.File(path, "r+") as f:
        f["molecules/h2/pbe/density_matrix"][0, 0, 0] += 1e-6
        f["molecules/h2/hf"].attrs["energy"] = energy + 1e-3
    ds = ReferenceDataset(path)
    for method in SCF_METHODS:
        with pytest.raises(DatasetError, match="checksum"):
            ds.entry("h2", method)
    # complete entries are never rewritten, even when corrupt
    run([H2], path, on_entry=lambda n, m: pytest.fail("recomputed"))


def test_unusable_files_are_left_untouched(tmp_path, dataset):
    user_file = tmp_path / "notes.h5"
    user_file.write_bytes(b"important user data\n")
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        run([H2], user_file)
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        ReferenceDataset(user_file)
    assert user_file.read_bytes() == b"important user data\n"

    other_hdf5 = tmp_path / "other.h5"
    with h5py.File(other_hdf5, "w") as f:
        f["x"] = np.arange(3)
    before = other_hdf5.read_bytes()
    with pytest.raises(DatasetError, match="not an nlxc reference file"):
        run([H2], other_hdf5)
    assert other_hdf5.read_bytes() == before

    truncated = tmp_path / "truncated.h5"
    whole = Path(dataset.path).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetError, match="truncated"):
        ReferenceDataset(truncated)
    with pytest.raises(DatasetError, match="truncated"):
        run([H2], truncated)
    assert truncated.read_bytes() == whole[: len(whole) // 2]

    with pytest.raises(DatasetError, match="'sto-3g', not '6-31g'"):
        run([H2], dataset.path, basis="6-31g")
    with pytest.raises(DatasetError, match="grid level 0, not 2"):
        run([H2], dataset.path, grid_level=2)
    stretched = Molecule("h2", H2.symbols, np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.8]]))
    with pytest.raises(DatasetError, match="different molecule named 'h2'"):
        run([stretched], dataset.path, methods=("b3lyp",))
    cation = Molecule("h2", H2.symbols, H2.positions, charge=1, spin=1)
    with pytest.raises(DatasetError, match="different molecule named 'h2'"):
        run([cation], dataset.path, methods=("b3lyp",))
    assert Path(dataset.path).read_bytes() == whole
    with pytest.raises(DatasetError, match="does not exist"):
        ReferenceDataset(tmp_path / "missing.h5")


def test_invalid_requests_raise_before_writing(tmp_path):
    path = tmp_path / "refs.h5"
    with pytest.raises(InputError, match="unknown method 'nonsense'") as info:
        run([H2], path, methods=("nonsense",))
    assert not isinstance(info.value, DatasetError)
    with pytest.raises(InputError, match="two different molecules"):
        run([H2, Molecule("h2", ("H", "H"), np.array([[0, 0, 0], [0, 0, 0.9]]))], path)
    with pytest.raises(InputError, match="cannot be stored"):
        run([Molecule("a/b", ("H", "H"), H2.positions)], path)
    with pytest.raises(InputError, match="grid level"):
        run([H2], path, grid_level=10)
    with pytest.raises(InputError, match="processes"):
        run([H2], path, processes=0)
    assert not os.path.exists(path)


def test_failed_scf_is_reported_and_not_stored(tmp_path, monkeypatch):
    monkeypatch.setattr(_pyscf_worker, "SCF_MAX_CYCLE", 1)
    monkeypatch.setattr(_pyscf_worker, "NEWTON_MAX_CYCLE", 0)
    path = tmp_path / "refs.h5"
    with pytest.raises(ReferenceComputationError, match="did not converge") as info:
        run([H2], path, methods=("hf",))
    assert [f[:2] for f in info.value.failures] == [("h2", "hf")]
    ds = ReferenceDataset(path)
    assert len(ds) == 0 and ("h2", "hf") not in ds


def test_diis_not_converged_goes_on_with_pyscf_newton(tmp_path, monkeypatch):
    """DIIS stopped after 2 cycles: PySCF's second-order solver converges from there to the state
    PySCF's DIIS reaches when given its cycles, and the entry says so."""
    monkeypatch.setattr(_pyscf_worker, "SCF_MAX_CYCLE", 2)
    ds = run([LIH], tmp_path / "refs.h5", methods=("pbe",))
    entry = ds.entry("lih", "pbe")
    assert entry.newton_fallback is True and entry.scf_iterations == 2
    assert entry.energy == pytest.approx(pyscf_scf(LIH, "pbe").e_tot, abs=1e-9)


def test_correlated_methods_match_pyscf(tmp_path):
    methods = ("mp2", "ccsd", "CCSD(T)")
    ds = run([LIH, LI], tmp_path / "refs.h5", methods=methods)
    assert ds.methods("lih") == methods
    with h5py.File(ds.path, "r") as f:
        assert set(f["molecules/lih"]) == {"mp2", "ccsd", "ccsd_t"}
        assert f["molecules/lih/ccsd_t"].attrs["method"] == "CCSD(T)"
    for molecule in (LIH, LI):
        mf = pyscf_scf(molecule, "hf", density_fit=False)
        pt = mp.MP2(mf).run()
        ccsd = cc.CCSD(mf)
        ccsd.conv_tol, ccsd.conv_tol_normt = 1e-9, 1e-7
        ccsd.kernel()
        expected = {"mp2": pt.e_tot, "ccsd": ccsd.e_tot, "ccsd(t)": ccsd.e_tot + ccsd.ccsd_t()}
        s = mf.get_ovlp()
        for method in methods:
            e = ds.entry(molecule.name, method)
            assert e.energy == pytest.approx(expected[method.lower()], abs=1e-8)
            assert e.scf_energy == pytest.approx(mf.e_tot, abs=1e-9)
            assert e.fock_matrix is None and e.orbital_energies is None and e.occupations is None
            assert e.restricted == (molecule.spin == 0)
            assert e.density_matrix.shape == (2, mf.mol.nao, mf.mol.nao)
            np.testing.assert_allclose(np.einsum("sij,ji->s", e.density_matrix, s),
                                       mf.mol.nelec, atol=1e-8)
        dm_ccsd = ds.entry(molecule.name, "ccsd").density_matrix
        np.testing.assert_array_equal(ds.entry(molecule.name, "ccsd(t)").density_matrix, dm_ccsd)
        dm_mp2 = ds.entry(molecule.name, "mp2").density_matrix
        assert not np.allclose(dm_mp2, dm_ccsd, atol=1e-8)  # correlated, not the HF density


def test_parallel_spawn_matches_serial(tmp_path, dataset):
    ds = run([H2, LIH], tmp_path / "parallel.h5", methods=("pbe",), processes=2)
    assert set(ds) == {("h2", "pbe"), ("lih", "pbe")}
    for name in ("h2", "lih"):
        serial, parallel = dataset.entry(name, "pbe"), ds.entry(name, "pbe")
        assert parallel.energy == pytest.approx(serial.energy, abs=1e-9)
        np.testing.assert_allclose(parallel.density_matrix, serial.density_matrix, atol=1e-7)


def test_nlxc_scf_reproduces_the_dft_reference(tmp_path):
    """The point of the settings: nlxc's own SCF (System.from_pyscf defaults: JK-fit auxiliary
    basis, same grid) lands on the stored energy, density and Fock matrix. def2-SVP, where the
    JK-fit basis differs from the J-fit one PySCF's `density_fit()` picks for pure functionals."""
    import nlxc

    ds = run([H2], tmp_path / "refs.h5", methods=("pbe",), basis="def2-svp", grid_level=1)
    ref = ds.entry("h2", "pbe")
    system = nlxc.System.from_pyscf(H2.to_mole("def2-svp"), grid_level=1)
    result = nlxc.solve(nlxc.get_functional("pbe"), system)
    assert bool(result.converged)
    assert float(result.energy) == pytest.approx(ref.energy, abs=1e-9)
    np.testing.assert_allclose(np.asarray(result.density_matrix), ref.density_matrix, atol=1e-6)
    np.testing.assert_allclose(np.asarray(result.fock_matrix), ref.fock_matrix, atol=1e-6)
    np.testing.assert_allclose(np.asarray(result.orbital_energies), ref.orbital_energies, atol=1e-6)
