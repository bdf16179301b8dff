"""The `nlxc scf` command line: output, JSON, and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest
from conftest import WATER
from pyscf import dft

from nlxc.cli import main


def test_json_output_matches_pyscf(water, capsys):
    code = main(["scf", water, "--xc", "pbe", "--basis", "sto-3g", "--grid-level", "1", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["converged"] and out["n_iterations"] > 0
    assert set(out["components"]) >= {"one_electron", "coulomb", "xc", "nuclear_repulsion"}
    mf = dft.RKS(__import__("pyscf").gto.M(atom=WATER.split("\n", 2)[2], basis="sto-3g", verbose=0), xc="pbe")
    mf.grids.level = 1
    mf = mf.density_fit(auxbasis=__import__("pyscf").df.make_auxbasis(mf.mol))
    mf.conv_tol = 1e-11
    assert abs(out["energy"] - mf.kernel()) < 1e-7
    assert sum(out["components"].values()) == pytest.approx(out["energy"], abs=1e-10)


def test_text_output_open_shell(tmp_path, capsys):
    path = tmp_path / "oh.xyz"
    path.write_text("2\n\nO 0 0 0\nH 0 0 0.97\n")
    code = main(["scf", str(path), "--xc", "hf", "--basis", "sto-3g", "--spin", "1", "--grid-level", "0"])
    text = capsys.readouterr().out
    assert code == 0
    assert "UHF" in text and "total energy" in text and "converged" in text


BAD = [
    ("missing.xyz", [], "no such file"),
    ("garbage", [], "not a valid XYZ"),
    ("unknown_element", [], "unknown element"),
    ("water", ["--basis", "nonsense-basis"], "unknown basis"),
    ("water", ["--xc", "not-a-functional"], "unknown functional"),
    ("water", ["--charge", "1"], "inconsistent"),
    ("water", ["--spin", "2", "--charge", "1"], "inconsistent"),
    ("close", [], "closer than 0.1"),
    ("water", ["--grid-level", "12"], "grid level"),
]


@pytest.mark.parametrize("kind, extra, message", BAD)
def test_bad_input_one_line_error(tmp_path, capsys, kind, extra, message):
    files = {
        "garbage": "this is not\nan xyz file\n",
        "unknown_element": "2\n\nO 0 0 0\nQq 0 0 1\n",
        "water": WATER,
        "close": "2\n\nH 0 0 0\nH 0 0 0.05\n",
    }
    path = tmp_path / f"{kind}.xyz"
    if kind in files:
        path.write_text(files[kind])
    code = main(["scf", str(path), "--basis", "sto-3g", "--grid-level", "0", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_console_script_reports_error_without_traceback(tmp_path):
    path = tmp_path / "bad.xyz"
    path.write_text("2\n\nO 0 0 0\nQq 0 0 1\n")
    proc = subprocess.run([sys.executable, "-m", "nlxc.cli", "scf", str(path)], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2
    assert proc.stderr.startswith("nlxc: error:") and "Traceback" not in proc.stderr


def test_tddft_json_and_text_match_pyscf(water, capsys):
    """`--tddft N --tda` adds the excitation energies (ascending) and oscillator strengths,
    equal to PySCF's TDA on the same density-fitted RKS."""
    args = ["scf", water, "--xc", "pbe", "--basis", "sto-3g", "--grid-level", "1", "--tddft", "3", "--tda"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    mf = dft.RKS(__import__("pyscf").gto.M(atom=WATER.split("\n", 2)[2], basis="sto-3g", verbose=0), xc="pbe")
    mf.grids.level = 1
    mf = mf.density_fit(auxbasis=__import__("pyscf").df.make_auxbasis(mf.mol))
    mf.conv_tol = 1e-11
    mf.kernel()
    td = mf.TDA()
    td.nstates = 3
    td.conv_tol = 1e-9
    td.kernel()
    assert len(out["excitation_energies"]) == len(out["oscillator_strengths"]) == 3
    assert out["excitation_energies"] == sorted(out["excitation_energies"])
    assert out["excitation_energies"] == pytest.approx(list(td.e), abs=1e-6)
    assert out["oscillator_strengths"] == pytest.approx(list(td.oscillator_strength()), abs=1e-5)
    assert out["tddft"]["method"] == "TDA" and out["tddft"]["spin"] == "singlet"
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "TDDFT (TDA, singlet)" in text and "oscillator strength" in text
    assert f"{out['excitation_energies'][0]:12.6f}" in text


TDDFT_BAD = [
    (["--tddft", "0"], "positive number of excited states"),
    (["--tddft", "-2"], "positive number of excited states"),
    (["--tddft", "11"], "only 10 single excitations"),
    (["--tda"], "need --tddft"),
    (["--triplet"], "need --tddft"),
    (["--tddft", "1", "--triplet", "--spin", "2"], "closed-shell"),
]


@pytest.mark.parametrize("extra, message", TDDFT_BAD)
def test_tddft_bad_input_one_line_error(water, capsys, extra, message):
    code = main(["scf", water, "--basis", "sto-3g", "--grid-level", "0", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_command_line_enables_the_persistent_compilation_cache(tmp_path, monkeypatch):
    """`nlxc ...` turns JAX's persistent compilation cache on (so a repeated training or evaluation
    loads its compiled programs), in $XDG_CACHE_HOME/nlxc/jax-compilation-cache/<versions> unless JAX_COMPILATION_CACHE_DIR is
    set or NLXC_NO_COMPILATION_CACHE=1; the setting is restored afterwards."""
    import jax

    from nlxc.cli import _enable_compilation_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        monkeypatch.setenv("NLXC_NO_COMPILATION_CACHE", "1")
        jax.config.update("jax_compilation_cache_dir", None)
        _enable_compilation_cache()
        assert jax.config.jax_compilation_cache_dir is None
        monkeypatch.delenv("NLXC_NO_COMPILATION_CACHE")
        _enable_compilation_cache()
        assert jax.config.jax_compilation_cache_dir.startswith(str(tmp_path / "nlxc" / "jax-compilation-cache" / "py"))
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "elsewhere"))
        _enable_compilation_cache()  # JAX reads that variable itself; nlxc leaves the setting alone
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
