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
