"""Bad input gets one line naming the problem and a non-zero exit, before anything is computed.

The CLI cases run `nlxc.cli.main` in-process (cheap); two run `python -m nlxc.cli` to show that
no traceback reaches standard error and that the exit status is right.
"""

import json
import os
import shutil
import subprocess
import sys
import types
import warnings

import equinox as eqx
import numpy as np
import pytest
from conftest import WATER
from pyscf import gto
from pyscf.gto import basis
from pyscf.lib.exceptions import BasisNotFoundError

import nlxc
from nlxc import InputError, System
from nlxc.cli import main
from nlxc.data import DatasetError, ReferenceDataset
from nlxc.system import build_mole, check_basis, quiet_basis_lookup, read_xyz

H2 = "2\nH2\nH 0 0 0\nH 0 0 0.74\n"
BSE_HINT = "basis-set-exchange"


def _one_line_error(capsys, code, *fragments):
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.startswith("nlxc: error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err and BSE_HINT not in captured.err
    for fragment in fragments:
        assert fragment in captured.err, captured.err
    return captured.err


def _water_mole(**kwargs):
    return gto.M(atom=WATER.split("\n", 2)[2], basis="sto-3g", verbose=0, **kwargs)


# ----------------------------------------------------------------------------- 1. electrons vs orbitals, spin


def test_more_electrons_than_orbitals_in_a_spin_channel():
    with pytest.raises(InputError, match=r"^9 alpha electrons but only 7 orbitals in basis sto-3g") as info:
        System.from_pyscf(_water_mole(spin=8), grid_level=0)
    assert "\n" not in str(info.value)


def test_cli_more_electrons_than_orbitals(water, capsys):
    code = main(["scf", water, "--xc", "pbe", "--basis", "sto-3g", "--spin", "8", "--grid-level", "0"])
    _one_line_error(capsys, code, "9 alpha electrons but only 7 orbitals in basis sto-3g")


@pytest.mark.parametrize("charge, spin", [(0, 1), (1, 0), (0, 12), (0, -2)])
def test_cli_spin_charge_parity(water, capsys, charge, spin):
    code = main(["scf", water, "--basis", "sto-3g", "--charge", str(charge), "--spin", str(spin)])
    _one_line_error(capsys, code, "inconsistent with")


def test_from_pyscf_spin_changed_after_build():
    mol = gto.M(atom="H 0 0 0; H 0 0 0.74", basis="sto-3g", verbose=0)
    mol.spin = 1  # PySCF itself would raise a two-line RuntimeError from mol.nelec
    with pytest.raises(InputError, match=r"spin 2S=1 is inconsistent with 2 electrons"):
        System.from_pyscf(mol, grid_level=0)


# ----------------------------------------------------------------------------- 2. basis names


def test_cli_unknown_auxbasis_subprocess(water):
    proc = subprocess.run([sys.executable, "-m", "nlxc.cli", "scf", water, "--basis", "sto-3g",
                           "--auxbasis", "def2-universal-jkfitt"], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2
    assert proc.stderr == ("nlxc: error: unknown auxiliary basis 'def2-universal-jkfitt' "
                           "(did you mean 'def2-universal-jkfit'?)\n")
    assert proc.stdout == ""


def test_unknown_auxbasis_from_pyscf():
    with pytest.raises(InputError, match=r"unknown auxiliary basis 'def2-universal-jkfitt' \(did you mean"):
        System.from_pyscf(_water_mole(), grid_level=0, auxbasis="def2-universal-jkfitt")
    with pytest.raises(InputError, match=r"unknown auxiliary basis 'nope'"):
        System.from_pyscf(_water_mole(), grid_level=0, auxbasis={"O": "nope"})


@pytest.mark.parametrize("basis, symbols, message", [
    ("def2svpp", ["O", "H"], r"^unknown basis 'def2svpp' \(did you mean 'def2-svp'\?\)$"),
    ("6-31gg", ["H"], r"^unknown basis '6-31gg'"),  # PySCF 2.14 raises KeyError, 2.15 BasisNotFoundError
    ("6-31g(x)", ["O"], r"^unknown basis '6-31g\(x\)'$"),  # no polarisation file: PySCF's FileNotFoundError
    ("qwertyuiop", ["H"], r"^unknown basis 'qwertyuiop'$"),
    ("6-31g", ["H", "Xe"], r"^basis '6-31g' has no functions for Xe$"),
    ("6-311++g(2df,2pd)", ["Xe"], r"^basis '6-311\+\+g\(2df,2pd\)' has no functions for Xe$"),
    ("sto-3g", ["Og"], r"^basis 'sto-3g' has no functions for Og$"),
    ("", ["H"], r"^basis must be a basis-set name"),
])
def test_check_basis(basis, symbols, message):
    with pytest.raises(InputError, match=message):
        check_basis(basis, symbols)


def test_known_basis_names_pass():
    for basis in ("sto-3g", "STO3G", "def2-svp", "6-31g*", "cc-pvdz", "def2-universal-jkfit"):
        check_basis(basis, ["H", "O"])


def test_build_mole_unknown_basis_hint():
    with pytest.raises(InputError, match=r"did you mean 'cc-pvdz'"):
        build_mole([("H", (0, 0, 0)), ("H", (0, 0, 0.74))], "ccpvdzz")


# ----------------------------------------------------------------------------- 3. System.from_pyscf arguments


@pytest.mark.parametrize("grid_level", [-1, 10, 2.0, True, "3"])
def test_from_pyscf_grid_level(grid_level):
    with pytest.raises(InputError, match=r"grid_level must be an integer between 0 and 9"):
        System.from_pyscf(_water_mole(), grid_level=grid_level)


def test_from_pyscf_unbuilt_mole():
    mol = gto.Mole()
    mol.atom = "H 0 0 0; H 0 0 0.74"
    mol.basis = "sto-3g"
    with pytest.raises(InputError, match=r"call mol.build\(\) first"):
        System.from_pyscf(mol)


@pytest.mark.parametrize("mol", ["H 0 0 0; H 0 0 0.74", None, 3])
def test_from_pyscf_not_a_mole(mol):
    with pytest.raises(InputError, match=r"^expected a built pyscf.gto.Mole, got \w+$"):
        System.from_pyscf(mol)


@pytest.mark.parametrize("kwargs, message", [
    ({"block_size": 0}, "block_size must be a positive integer"),
    ({"restricted": "yes"}, "restricted must be True, False or None"),
])
def test_from_pyscf_other_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        System.from_pyscf(_water_mole(), grid_level=0, **kwargs)


# ----------------------------------------------------------------------------- 4. geometry files

BAD_XYZ = [
    ("empty", "", r"is not a valid XYZ file: the file is empty"),
    ("blank", "\n\n  \n", r"is not a valid XYZ file: the file is empty"),
    ("count", "three\n\nH 0 0 0\n", r"line 1 should be the number of atoms, got 'three'"),
    ("zero", "0\n\n", r"line 1 should be a positive number of atoms, got 0"),
    ("fewer", "3\nwater\nO 0 0 0\nH 0 0 1\n", r"line 1 says 3 atoms but only 2 atom lines follow"),
    ("nocomment", "1\n", r"line 1 says 1 atoms but only 0 atom lines follow"),
    ("nonnumeric", "2\n\nH 0 0 0\nH 0 0 x\n", r"line 4 has a non-numeric coordinate: 'H 0 0 x'"),
    ("short", "2\n\nH 0 0 0\nH 0 0\n", r"line 4 should be 'symbol x y z', got 'H 0 0'"),
    ("nan", "2\n\nH 0 0 0\nH 0 0 nan\n", r"line 4 has a non-finite coordinate"),
    ("element", "2\n\nO 0 0 0\nQq 0 0 1\n", r"line 4: unknown element 'Qq'"),
    ("extra", "1\n\nH 0 0 0\nH 0 0 0.74\n", r"line 4 follows the 1 atom of line 1"),
]


@pytest.mark.parametrize("kind, text, message", BAD_XYZ, ids=[b[0] for b in BAD_XYZ])
def test_malformed_xyz(tmp_path, capsys, kind, text, message):
    path = tmp_path / f"{kind}.xyz"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        read_xyz(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    assert "StopIteration" not in str(info.value) and "pop from empty" not in str(info.value)
    code = main(["scf", str(path), "--basis", "sto-3g", "--grid-level", "0"])
    _one_line_error(capsys, code, str(path))


def test_xyz_not_text(tmp_path):
    path = tmp_path / "binary.xyz"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(InputError, match=r"is not a valid XYZ file: it is not UTF-8 text"):
        read_xyz(path)


def test_xyz_tolerated_variants(tmp_path):
    path = tmp_path / "ok.xyz"
    path.write_text("  2 \ncomment\nh 0 0 0 extra columns\n1 0 0 0.74\n\n\n")
    assert read_xyz(path) == [("H", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 0.74))]


def test_cli_geometry_is_a_directory(tmp_path, capsys):
    code = main(["scf", str(tmp_path), "--basis", "sto-3g"])
    _one_line_error(capsys, code, f"{tmp_path} is a directory, not an XYZ file")


def test_cli_geometry_missing(tmp_path, capsys):
    code = main(["scf", str(tmp_path / "missing.xyz"), "--basis", "sto-3g"])
    _one_line_error(capsys, code, "no such file")


# ----------------------------------------------------------------------------- 5. the basis-set-exchange hint


def _bse_warnings(records):
    return [r for r in records if BSE_HINT in str(r.message)]


def test_no_basis_set_exchange_hint_when_building_systems():
    lih = build_mole([("Li", (0, 0, 0)), ("H", (0, 0, 1.6))], "6-31g")
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        with pytest.raises(BasisNotFoundError):  # PySCF itself emits the hint here
            basis.load("def2-universal-jkfitt", "H")
        assert _bse_warnings(records), "PySCF no longer warns: this test can be simplified"
        records.clear()
        System.from_pyscf(lih, grid_level=0)  # make_auxbasis probes files that lack Li
    assert not _bse_warnings(records)


def test_quiet_basis_lookup_keeps_other_warnings():
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        with quiet_basis_lookup():
            warnings.warn("Basis may be available in basis-set-exchange. It is recommended ...", UserWarning)
            warnings.warn("something else", UserWarning)
            warnings.warn("a deprecation", DeprecationWarning)
    assert [str(r.message) for r in records] == ["something else", "a deprecation"]


def test_cli_silences_hint_only_while_running(water, capsys, monkeypatch):
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        code = main(["scf", water, "--basis", "sto-3g", "--auxbasis", "def2-universal-jkfitt"])
    _one_line_error(capsys, code, "unknown auxiliary basis")
    assert not _bse_warnings(records)
    assert "PYTHONWARNINGS" not in os.environ  # restored after the command


# ----------------------------------------------------------------------------- 6/7. nlxc evaluate


@pytest.mark.parametrize("extra, fragments", [
    (["--set", "default", "--baselines", "pbee"], ["baselines: unknown method 'pbee'"]),
    (["--set", "default", "--baselines", "pbe,b3lypp"], ["'b3lypp'"]),
    (["--set", "g3"], ["unknown benchmark set 'g3'"]),
    (["--set", "g2_1", "--molecules", "CH4,NotAMolecule"], ["no reaction 'NotAMolecule'"]),
    (["--set", "default", "--basis", "6-31gg"], ["unknown basis '6-31gg'"]),
    (["--set", "default", "--grid-level", "10"], ["grid level must be an integer between 0 and 9"]),
    (["--set", "default", "--processes", "0"], ["--processes must be positive"]),
])
def test_cli_evaluate_checks_before_loading_anything(tmp_path, capsys, extra, fragments):
    # the checkpoint does not exist: the bad option is reported first, before any work
    code = main(["evaluate", str(tmp_path / "missing.eqx"), *extra])
    _one_line_error(capsys, code, *fragments)


def test_evaluate_checks_baselines_before_any_scf(monkeypatch):
    import nlxc.evaluation as evaluation

    def no_scf(*args, **kwargs):
        raise AssertionError("an SCF ran before the arguments were checked")

    monkeypatch.setattr(evaluation, "solve_molecules", no_scf)
    monkeypatch.setattr(evaluation, "baseline_energies", no_scf)
    with pytest.raises(InputError, match=r"baselines: unknown method 'pbee'"):
        evaluation.evaluate(nlxc.get_functional("lda"), set_name="default", basis="6-31g", grid_level=1,
                            molecules=["LiH"], baselines=["pbe", "pbee"])
    with pytest.raises(InputError, match=r"grid level must be an integer"):
        evaluation.evaluate(nlxc.get_functional("lda"), set_name="default", basis="6-31g", grid_level=-1)


@pytest.mark.parametrize("set_name, references", [
    ("default", "experimental G2-1 atomization energies"),
    ("g2_2", "experimental G2-2 atomization energies"),
    ("w4-11", "W4-11 atomization energies (W4 theory"),
])
@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_cli_evaluate_progress_and_title(tmp_path, capsys, monkeypatch, set_name, references, flag):
    import nlxc.evaluation as evaluation
    import nlxc.train as train

    if set_name == "w4-11":
        pytest.importorskip("xcbm")
    config = types.SimpleNamespace(data=types.SimpleNamespace(dataset="default"),
                                   training=types.SimpleNamespace(max_scf_steps=7))
    monkeypatch.setattr(train, "load_checkpoint", lambda path: (None, config))
    seen = {}
    stats = {"mae": 1.0, "rmse": 1.0, "max": 1.0, "n": 1}

    def fake_evaluate(functional, **kwargs):
        seen.update(kwargs)
        return {"set": "S", "reactions": ["r"], "methods": {"nlxc (trained)": stats},
                "excluded": {"nlxc (trained)": []}, "common": {"nlxc (trained)": stats}}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    code = main(["evaluate", str(tmp_path / "best.eqx"), "--set", set_name, "--basis", "sto-3g",
                 "--grid-level", "0", "--baselines", "", *flag])
    out = capsys.readouterr().out
    assert code == 0
    assert seen["progress"] is (not flag) and seen["max_steps"] == 7
    assert f"errors in kcal/mol against {references}" in out.splitlines()[0]


# ----------------------------------------------------------------------------- 8. dataset attributes


@pytest.mark.parametrize("attr, value, message", [
    ("grid_level", "three", r"the root attribute 'grid_level' must be an integer between 0 and 9, got 'three'"),
    ("grid_level", 12, r"'grid_level' must be an integer between 0 and 9, got 12"),
    ("grid_level", 1.5, r"'grid_level' must be an integer"),
    ("basis", 3, r"the root attribute 'basis' must be a basis-set name, got 3"),
])
def test_dataset_root_attributes_checked_at_load(tmp_path, attr, value, message):
    import h5py

    from nlxc.data._default import shipped_default_path

    path = tmp_path / "bad.h5"
    shutil.copy(shipped_default_path(), path)
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(DatasetError, match=message) as info:
        ReferenceDataset(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- 9. SCF iterations, exit 1


def test_cli_prints_the_solvers_iterations_and_exits_1_unconverged(tmp_path, capsys, monkeypatch):
    import nlxc.scf as scf

    path = tmp_path / "h2.xyz"
    path.write_text(H2)
    solve, results = scf.solve, []

    def recording_solve(*args, **kwargs):
        result = eqx.tree_at(lambda r: r.converged, solve(*args, **kwargs), np.False_)
        results.append(result)
        return result

    monkeypatch.setattr(scf, "solve", recording_solve)
    argv = ["scf", str(path), "--xc", "lda", "--basis", "sto-3g", "--grid-level", "0", "--max-steps", "1"]
    assert main([*argv, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["converged"] is False and out["n_iterations"] == int(results[-1].n_iterations)
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert f"SCF NOT CONVERGED in {int(results[-1].n_iterations)} iterations" in text


# ----------------------------------------------------------------------------- exit statuses


def test_cli_interrupted_exits_130(water, capsys, monkeypatch):
    import nlxc.system

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nlxc.system, "mole_from_xyz", interrupt)
    assert main(["scf", water, "--basis", "sto-3g"]) == 130
    assert capsys.readouterr().err == "nlxc: interrupted\n"


def test_cli_spin_subprocess_exit_2(water):
    proc = subprocess.run([sys.executable, "-m", "nlxc.cli", "scf", water, "--xc", "pbe", "--basis", "sto-3g",
                           "--spin", "8"], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "nlxc: error: 9 alpha electrons but only 7 orbitals in basis sto-3g (charge 0, 2S=8)\n"


def test_main_documents_exit_statuses():
    for status in ("`0`", "`1`", "`2`", "`130`"):
        assert status in main.__doc__
