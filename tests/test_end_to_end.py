"""The README's main job through the installed `nlxc` console script, as a user runs it.

1. `nlxc train configs/quickstart.toml --steps 1 --output-dir TMP --no-progress`: the shipped
   config unchanged (the default dataset, 6-31G, grid level 1; PBE plus an atom-centred
   correction; 7 training, 2 validation and 3 held-out molecules) except for the number of steps,
   so that the run costs one compilation of the training step and two steps. It must exit with 0,
   write what `nlxc.train.train` promises (checkpoints with their JSON sidecars, `metrics.jsonl`
   with one line per step, `results.json` / `results.md`, the learning-curve and parity plots,
   the cached PySCF baselines), and print the held-out table. The PySCF rows of that table
   (LDA, PBE, B3LYP atomization energies of N2, HCN and H2CO against CCSD(T)/6-31G) are
   recomputed here with PySCF alone: geometries from `ase.data.g2_1`, the DFT settings that
   `nlxc.data.compute_references` documents (density fitting with `pyscf.df.make_auxbasis`, grid
   level 1, `small_rho_cutoff = 0`, minao guess, `conv_tol = 1e-10`) and CCSD(T) on conventional
   RHF/UHF.
2. `nlxc evaluate TMP/best.eqx --set g2_1 --molecules LiH,CH4,H2O`: exit 0, the printed table,
   and its PBE row (MAE, RMSE, max of the atomization errors against the set's experimental
   references) against PySCF's PBE computed here in the basis and grid of the training dataset
   (6-31G, level 1), which `nlxc evaluate` uses by default.

Tolerances: 1e-3 kcal/mol (1.6e-6 Ha) on atomization energies, because the free C and O atoms
(³P) have degenerate UKS solutions that the grid splits slightly, and which one an SCF lands in
can depend on the number of BLAS threads (see docs/data.md); the printed table has two decimals.

Cost (measured with `--durations` on 2 shared CPU cores at load average ~5): 6 min, the most
expensive test of the suite. The training subprocess takes 4.5 min, nearly all of it the
compilation of the training step; the persistent compilation cache of conftest.py (inherited by
the subprocesses) saved little on a second run. Then about 20 s of PySCF here and 70 s for
`nlxc evaluate` (its own SCF compilation and PySCF baselines).
"""

import functools
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

# `slow`: the README's main job takes 4-9 min of one core (compiling the training step), more than
# the default suite's budget allows; `.ci/run` runs the `slow` set after the default suite.
pytestmark = [pytest.mark.xdist_group("end-to-end"), pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quickstart.toml")
STEPS = 1
HELD_OUT = ["N2", "HCN", "H2CO"]
G2_MOLECULES = ["LiH", "CH4", "H2O"]
BASIS, GRID_LEVEL = "6-31g", 1  # the default dataset's (nlxc/data/default.h5)
TOL_KCAL = 1e-3


def _kcal(hartree):
    from pyscf.data import nist

    return hartree * nist.HARTREE2J * nist.AVOGADRO / 4184.0


def _command():
    """The installed console script; `python -m nlxc.cli` only if it is missing (then said in
    every assertion message)."""
    script = shutil.which("nlxc")
    if script is not None:
        return [script], "console script " + script
    return [sys.executable, "-m", "nlxc.cli"], "`nlxc` console script NOT installed: ran python -m nlxc.cli"


def _run(args, cwd):
    command, how = _command()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.setdefault("OMP_NUM_THREADS", "1")  # PySCF on tiny molecules: one thread is fastest on a shared machine
    proc = subprocess.run(command + args, capture_output=True, text=True, cwd=cwd, timeout=900, env=env)
    context = f"{how}; nlxc {' '.join(args)}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc, context


# --------------------------------------------------------------------------------------------
# PySCF alone (no nlxc): geometries from ASE's G2-1 data, settings of compute_references
# --------------------------------------------------------------------------------------------


def _species(name):
    """A G2-1 molecule or atom and its stoichiometry in atoms, from ase.data.g2_1."""
    from ase.data.g2_1 import data
    from ase.symbols import string2symbols

    entry = data[name]
    symbols = string2symbols(entry["symbols"])
    spin = int(round(sum(entry["magmoms"]))) if entry["magmoms"] else 0
    return symbols, entry["positions"], spin


def _mole(name):
    from pyscf import gto

    symbols, positions, spin = _species(name)
    return gto.M(atom=[(s, tuple(p)) for s, p in zip(symbols, positions)], basis=BASIS, spin=spin,
                 unit="Angstrom", verbose=0)


def _converged(mf):
    """100 DIIS cycles, then (as `compute_references` documents) PySCF's second-order solver
    from where DIIS stopped: on one OpenMP thread PySCF's DIIS oscillates on the ³P O atom with
    B3LYP at grid level 1 (PySCF 2.15)."""
    mf.init_guess = "minao"
    mf.conv_tol = 1e-10
    mf.max_cycle = 100
    mf.verbose = 0
    mf.kernel()
    if not mf.converged:
        dm = mf.make_rdm1()
        mf = mf.newton()
        mf.max_cycle = 50
        mf.kernel(dm0=dm)
    assert mf.converged
    return mf


@functools.lru_cache(maxsize=None)
def _pyscf_dft(name, xc):
    from pyscf import df, dft

    mol = _mole(name)
    mf = (dft.RKS if mol.spin == 0 else dft.UKS)(mol, xc=xc)
    mf.grids.level = GRID_LEVEL
    mf.small_rho_cutoff = 0.0
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    return _converged(mf).e_tot


@functools.lru_cache(maxsize=None)
def _pyscf_ccsd_t(name):
    from pyscf import cc, scf

    mol = _mole(name)
    mf = _converged(scf.RHF(mol) if mol.spin == 0 else scf.UHF(mol))
    ccsd = cc.CCSD(mf)
    ccsd.verbose = 0
    ccsd.conv_tol = 1e-9
    ccsd.conv_tol_normt = 1e-7
    ccsd.kernel()
    assert ccsd.converged
    return ccsd.e_tot + ccsd.ccsd_t()


def _atomization_kcal(name, energy):
    """Σ E(atoms) − E(molecule), kcal/mol."""
    symbols = _species(name)[0]
    return _kcal(sum(energy(s) for s in symbols) - energy(name))


def _table(text, title):
    """{row name: (mae, rmse, max, n)} of the first `format_table` block after the line `title`
    (its optional last column `excluded` must be 0 where present: nothing left out)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    header = lines[start + 1]
    assert header.startswith("method"), lines[start : start + 2]
    ncol = 5 if header.split()[-1] == "excluded" else 4
    rows = {}
    for line in lines[start + 2 :]:
        parts = line.split()
        if len(parts) < ncol + 1:
            break
        try:
            values = [float(x) for x in parts[-ncol:]]
        except ValueError:
            break
        rows[" ".join(parts[:-ncol])] = (*values[:3], int(values[3]))
        if ncol == 5:
            assert values[4] == 0, f"{' '.join(parts[:-ncol])} left {int(values[4])} out:\n{text}"
    return rows


def _stats(errors):
    return (sum(abs(e) for e in errors) / len(errors), math.sqrt(sum(e * e for e in errors) / len(errors)),
            max(abs(e) for e in errors))


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("end_to_end")
    out = work / "quickstart"
    proc, context = _run(["train", CONFIG, "--steps", str(STEPS), "--output-dir", str(out), "--no-progress"],
                         cwd=work)
    return work, out, proc, context


def test_train_quickstart_through_the_console_script(trained):
    work, out, proc, context = trained
    assert proc.returncode == 0, context
    assert "Traceback" not in proc.stderr, context

    # what the trainer promises (nlxc/train.py): checkpoints + sidecars, metrics, results, plots
    for name in ("config.json", "last.eqx", "last.json", "best.eqx", "best.json", "final.eqx", "final.json",
                 "metrics.jsonl", "results.json", "results.md", "learning_curve.png", "parity.png",
                 "baselines.h5"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, (name, sorted(os.listdir(out)), context)
    with open(out / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    assert [m["step"] for m in metrics] == list(range(STEPS + 1)), context
    assert all(math.isfinite(m["loss"]["train"]) for m in metrics)
    assert f"checkpoint {out / 'best.eqx'}" in proc.stdout, context

    # the printed held-out table
    text = proc.stdout
    line = next((x for x in text.splitlines() if x.startswith("held-out (test) molecules: ")), "")
    assert sorted(line.split(": ", 1)[-1].split(", ")) == sorted(HELD_OUT), context
    printed = _table(text, "atomization energies")
    for row in ("nlxc (trained)", "nlxc (initial)", "LDA (PySCF)", "PBE (PySCF)", "B3LYP (PySCF)"):
        assert row in printed and printed[row][3] == len(HELD_OUT), (row, printed, context)
    report = json.load(open(out / "results.json"))
    assert report["split"] == "test" and sorted(report["molecules"]) == sorted(HELD_OUT)
    assert report["basis"].lower() == BASIS and report["grid_level"] == GRID_LEVEL

    # the PySCF rows against PySCF computed here, with CCSD(T)/6-31G computed here as reference
    # (PySCF on one thread: these molecules are tiny, and its threads busy-wait on a loaded machine)
    from pyscf import lib

    with lib.with_omp_threads(1):
        reference = {m: _atomization_kcal(m, _pyscf_ccsd_t) for m in HELD_OUT}
    for m in HELD_OUT:
        assert report["per_molecule"]["reference"][m] == pytest.approx(reference[m], abs=TOL_KCAL)
    for xc, row in (("lda", "LDA (PySCF)"), ("pbe", "PBE (PySCF)"), ("b3lyp", "B3LYP (PySCF)")):
        with lib.with_omp_threads(1):
            ours = {m: _atomization_kcal(m, functools.partial(_pyscf_dft, xc=xc)) for m in HELD_OUT}
        for m in HELD_OUT:
            assert report["per_molecule"][row][m] == pytest.approx(ours[m], abs=TOL_KCAL), (row, m)
        expected = _stats([ours[m] - reference[m] for m in HELD_OUT])
        for k, key in enumerate(("mae", "rmse", "max")):
            assert report["atomization"][row][key] == pytest.approx(expected[k], abs=TOL_KCAL), (row, key)
            assert printed[row][k] == pytest.approx(expected[k], abs=0.005 + TOL_KCAL), (row, key, printed[row])


def test_evaluate_g2_1_through_the_console_script(trained):
    from pyscf import lib

    from nlxc.data import KCAL_PER_MOL, g2

    work, out, proc, context = trained
    assert proc.returncode == 0, context
    run, context = _run(["evaluate", str(out / "best.eqx"), "--set", "g2_1", "--molecules", ",".join(G2_MOLECULES)],
                        cwd=work)
    assert run.returncode == 0, context
    assert "Traceback" not in run.stderr, context
    title = next((line for line in run.stdout.splitlines() if " reactions, " in line), "")
    assert f"{len(G2_MOLECULES)} reactions, {BASIS}, grid level {GRID_LEVEL}" in title, context
    printed = _table(run.stdout, title)
    for row in ("nlxc (trained)", "LDA (PySCF)", "PBE (PySCF)", "B3LYP (PySCF)"):
        assert row in printed and printed[row][3] == len(G2_MOLECULES), (row, printed, context)
    assert all(math.isfinite(x) for x in printed["nlxc (trained)"][:3]), context

    # PBE's row against PySCF computed here; the references are the set's experimental G2-1
    # atomization energies (checked against ASE's data in tests/test_sets.py)
    with lib.with_omp_threads(1):
        pbe = {m: _atomization_kcal(m, functools.partial(_pyscf_dft, xc="pbe")) for m in G2_MOLECULES}
    reference = {m: g2("g2_1").reaction(m).reference / KCAL_PER_MOL for m in G2_MOLECULES}
    expected = _stats([pbe[m] - reference[m] for m in G2_MOLECULES])
    for k, key in enumerate(("mae", "rmse", "max")):
        assert printed["PBE (PySCF)"][k] == pytest.approx(expected[k], abs=0.005 + TOL_KCAL), (key, printed, expected)
