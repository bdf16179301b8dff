"""The held-out report of `nlxc train` when a PySCF baseline fails (e.g. its SCF does not converge).

A failed baseline calculation is a value, not a crash: that entry is flagged not converged,
left out of that baseline's statistics (the count shown in the table and in `results.json`),
and the report is still written. The PySCF energies are computed here (sto-3g, grid level 0).
"""

import json
import math

import numpy as np
import pytest

from nlxc.data import KCAL_PER_MOL, Molecule, _pyscf_worker, compute_references
from nlxc.evaluation import format_table
from nlxc.train import TrainConfig
from nlxc.train._data import _Prepared
from nlxc.train._report import _held_out_report

H2 = Molecule("H2", ("H", "H"), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.7414]]))
H = Molecule("H", ("H",), np.zeros((1, 3)), spin=1)
SETTINGS = {"basis": "sto-3g", "grid_level": 0, "progress": False}


def _atomization(e):
    return 2 * e["H"] - e["H2"]


def test_non_converged_pyscf_baseline_is_flagged_and_left_out(tmp_path, monkeypatch, capsys):
    target = compute_references([H2, H], tmp_path / "data.h5", methods=("pbe",), **SETTINGS)
    pbe = target.energies("pbe")
    out = tmp_path / "run"
    out.mkdir()
    cache = out / "baselines.h5"
    lda = compute_references([H2, H], cache, methods=("lda",), **SETTINGS).energies("lda")
    compute_references([H], cache, methods=("pbe",), **SETTINGS)
    # what the report still has to compute, PBE of H2, cannot converge in one SCF cycle
    monkeypatch.setattr(_pyscf_worker, "SCF_MAX_CYCLE", 1)
    monkeypatch.setattr(_pyscf_worker, "NEWTON_MAX_CYCLE", 0)

    prepared = _Prepared(names=["H2", "H"], split_of={"H2": "test", "H": "shared"}, dataset=target, systems=[],
                         data=None, reaction_names=["H2"], reaction_species=[{"H": 2.0, "H2": -1.0}],
                         reaction_reference=np.array([_atomization(pbe)]), target_energy=dict(pbe))
    config = TrainConfig.from_dict({"data": {"target": "pbe"}, "evaluation": {"baselines": ["lda", "pbe"]},
                                    "training": {"plots": False}})
    trained = {"H2": pbe["H2"] - 1e-3, "H": pbe["H"]}
    report = _held_out_report(config, prepared, trained, {"H2": True, "H": True}, None, str(out))

    # the failed baseline: flagged, its message kept, no statistics, one excluded
    assert report["not_converged"]["PBE (PySCF)"] == ["H2"]
    assert "did not converge" in report["failures"]["PBE (PySCF)"]["H2"]
    for kind in ("atomization", "total_energy"):
        stats = report[kind]["PBE (PySCF)"]
        assert stats["n"] == 0 and stats["excluded"] == 1 and math.isnan(stats["mae"])
    # the converged baseline and the trained functional are unaffected
    assert report["not_converged"]["LDA (PySCF)"] == [] and "LDA (PySCF)" not in report["failures"]
    lda_row = report["atomization"]["LDA (PySCF)"]
    assert lda_row["n"] == 1 and lda_row["excluded"] == 0
    assert lda_row["mae"] == pytest.approx(abs(_atomization(lda) - _atomization(pbe)) / KCAL_PER_MOL, abs=1e-9)
    assert report["total_energy"]["LDA (PySCF)"]["mae"] == pytest.approx(
        abs(lda["H2"] - pbe["H2"]) / KCAL_PER_MOL, abs=1e-9)
    assert report["total_energy"]["nlxc (trained)"]["mae"] == pytest.approx(1e-3 / KCAL_PER_MOL, abs=1e-9)

    # the printed table and the files: no NaN printed as a number, the excluded count shown
    text = capsys.readouterr().out
    assert "nan" not in text.lower()
    rows = {line.split("  ")[0]: line.split() for line in text.splitlines() if line.startswith("PBE (PySCF)  ")}
    assert rows and all(r[-5:] == ["n/a", "n/a", "n/a", "0", "1"] for r in rows.values()), text
    assert "excluded" in text and "PBE (PySCF): H2: " in text and "did not converge" in text
    saved = json.loads((out / "results.json").read_text())
    assert saved["atomization"]["PBE (PySCF)"]["excluded"] == 1 and saved["not_converged"]["PBE (PySCF)"] == ["H2"]
    assert (out / "results.md").read_text().count("n/a") == 6


def test_format_table_shows_excluded_only_when_something_was_left_out():
    ok = {"mae": 1.0, "rmse": 1.0, "max": 1.0, "n": 3, "excluded": 0}
    none = {"mae": math.nan, "rmse": math.nan, "max": math.nan, "n": 0, "excluded": 2}
    assert "excluded" not in format_table([("a", ok)], "t")
    assert format_table([("a", ok)], "t").splitlines()[-1].split() == ["a", "1.00", "1.00", "1.00", "3"]
    lines = format_table([("a", ok), ("b", none)], "t").splitlines()
    assert lines[1].split()[-1] == "excluded"
    assert lines[2].split() == ["a", "1.00", "1.00", "1.00", "3", "0"]
    assert lines[3].split() == ["b", "n/a", "n/a", "n/a", "0", "2"]


def test_evaluate_command_marks_a_failed_pyscf_baseline(tmp_path, monkeypatch, capsys):
    """`nlxc evaluate`: a PySCF baseline whose SCF does not converge is shown as `—` with a note
    naming the molecule, the functional and why, left out of that baseline's statistics with the
    count said, recorded in the JSON, and the command still exits with 0.

    The checkpoint is a stored one; its own SCFs are replaced (at `nlxc.evaluation.solve_molecules`)
    by given energies, so that no JAX compilation is needed."""
    import os

    import nlxc.evaluation
    from nlxc.cli import main
    from nlxc.data import default_set

    checkpoint = os.path.join(os.path.dirname(__file__), "data", "checkpoints_e355430",
                              "AtomCentredCorrection-pbe.eqx")
    bench = default_set().subset(["LiH", "HF"])
    molecules = {m.name: m for m in bench.molecules}
    assert sorted(molecules) == ["F", "H", "HF", "Li", "LiH"]
    cache = tmp_path / "evaluation.h5"
    pbe = compute_references([molecules[n] for n in ("F", "H", "Li", "LiH")], cache, methods=("pbe",),
                             **SETTINGS).energies("pbe")
    # the "trained" energies: PBE's, and HF 1 mHa below its reference atomization energy
    trained = {**pbe, "HF": pbe["H"] + pbe["F"] - bench.reaction("HF").reference - 1e-3}
    # what evaluate still has to compute, PBE of HF, cannot converge in one SCF cycle
    monkeypatch.setattr(_pyscf_worker, "SCF_MAX_CYCLE", 1)
    monkeypatch.setattr(_pyscf_worker, "NEWTON_MAX_CYCLE", 0)

    def solve_molecules(functional, mols, basis, grid_level, **options):
        return {m.name: trained[m.name] for m in mols}, {m.name: True for m in mols}

    monkeypatch.setattr(nlxc.evaluation, "solve_molecules", solve_molecules)
    args = ["evaluate", checkpoint, "--set", "default", "--molecules", "LiH,HF", "--baselines", "pbe",
            "--basis", "sto-3g", "--grid-level", "0", "--cache", str(cache), "--no-progress"]

    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    reference = {r.name: r.reference / KCAL_PER_MOL for r in bench.reactions}

    def error(energies, name):
        return bench.reaction(name).energy(energies) / KCAL_PER_MOL - reference[name]

    assert report["failures"]["nlxc (trained)"] == {} and list(report["failures"]["PBE (PySCF)"]) == ["HF"]
    assert "SCF did not converge in 1 DIIS cycles" in report["failures"]["PBE (PySCF)"]["HF"]
    assert report["excluded"] == {"nlxc (trained)": [], "PBE (PySCF)": ["HF"]}
    stats = report["methods"]["PBE (PySCF)"]
    assert (stats["n"], stats["excluded"]) == (1, 1)
    assert stats["mae"] == pytest.approx(abs(error(pbe, "LiH")), abs=1e-9)
    assert "HF" not in report["per_reaction"]["PBE (PySCF)"]
    stats = report["methods"]["nlxc (trained)"]
    assert (stats["n"], stats["excluded"]) == (2, 0) and error(trained, "HF") == pytest.approx(1e-3 / KCAL_PER_MOL)
    assert stats["mae"] == pytest.approx(np.mean([abs(error(trained, r)) for r in ("LiH", "HF")]), abs=1e-9)
    assert report["common"]["nlxc (trained)"]["n"] == 1
    assert report["common"]["nlxc (trained)"]["mae"] == pytest.approx(abs(error(pbe, "LiH")), abs=1e-9)

    # a method with no reaction left (PBE over HF alone): its statistics are null (strict JSON), not NaN
    only_hf = [a if a != "LiH,HF" else "HF" for a in args]
    assert main([*only_hf, "--json"]) == 0
    text = capsys.readouterr().out

    def no_constants(name):
        raise AssertionError(f"{name} in the JSON output: {text}")

    stats = json.loads(text, parse_constant=no_constants)["methods"]["PBE (PySCF)"]
    assert (stats["n"], stats["excluded"], stats["mae"], stats["rmse"], stats["max"]) == (0, 1, None, None, None)

    assert main(args) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "Traceback" not in captured.err and "nan" not in text.lower()
    assert "PBE (PySCF): MAE over 1 of 2 reactions (left out: HF)" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("PBE (PySCF)  ")]
    assert len(rows) == 2, text  # the main table, then the one over the reactions every method solved
    assert rows[0] == ["PBE", "(PySCF)", *(f"{abs(error(pbe, 'LiH')):.2f}",) * 3, "1", "1"], text
    assert rows[1][-1] == "1" and "excluded" not in text.split("every method solved")[1]
    left_out = [line.split() for line in text.splitlines() if line.startswith("HF ")]
    assert left_out == [["HF", f"{error(trained, 'HF'):.2f}", "—[1]"]], text
    assert "[1] PBE (PySCF), HF: RuntimeError: KS SCF did not converge in 1 DIIS cycles" in text
