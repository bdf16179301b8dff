"""Evaluating trained functionals beside PySCF baselines: benchmark sets, error statistics, tables, plots.

[`evaluate`][nlxc.evaluation.evaluate] (the `nlxc evaluate CHECKPOINT --set NAME` command)
solves every species of a benchmark set (G2 atomization energies, W4-11, the default set) with
a trained functional and with PySCF's LDA, PBE and B3LYP (or any PySCF functionals) in the same
basis, grid and auxiliary basis, and reports the mean absolute and root-mean-square errors of
the reaction energies in kcal/mol against the set's references. The PySCF calculations are the
density-fitted ones of [`nlxc.data.compute_references`][] (JK-fit auxiliary basis, no density
cut-off on the grid, minao guess) and are cached in an HDF5 file, so a second evaluation of the
same set costs only the nlxc SCFs. A failed calculation (a PySCF baseline whose SCF did not
converge, an nlxc SCF that did not) is a value: its reactions are left out of that method's
statistics and named, with the reason, in the report ([`format_report`][nlxc.evaluation.format_report]).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import equinox as eqx
import numpy as np

from . import data
from ._errors import InputError
from .batch import make_batches, solve_batch
from .data import (
    KCAL_PER_MOL,
    DatasetError,
    ReferenceComputationError,
    ReferenceDataset,
    check_methods,
    compute_references,
)
from .system import MAX_GRID_LEVEL, System, check_basis
from .models import prepare_system
from .xc import required_grid_operators

__all__ = ["BENCHMARK_SETS", "baseline_energies", "baseline_label", "baseline_results", "check_request",
           "common_subset",
           "error_statistics", "evaluate", "format_report", "format_table", "plot_parity"]

BENCHMARK_SETS = ("default", "g2", "g2_1", "g2_2", "w4-11")
"""Names accepted by [`evaluate`][nlxc.evaluation.evaluate] (and `nlxc evaluate --set`)."""

_LABELS = {"lda": "LDA", "svwn": "SVWN", "pbe": "PBE", "b3lyp": "B3LYP", "pbe0": "PBE0", "hf": "HF",
           "blyp": "BLYP", "r2scan": "r2SCAN"}


def baseline_label(method: str) -> str:
    """The label of a PySCF baseline method in reports and tables, e.g. `"PBE (PySCF)"`."""
    return _LABELS.get(method.lower(), method) + " (PySCF)"


def _benchmark_set(name: str):
    key = name.lower().replace("_", "-") if name.lower().startswith("w4") else name.lower()
    if key == "default":
        return data.default_set()
    if key == "g2":
        return data.g2("g2")
    if key in ("g2_1", "g2_2"):
        return data.g2(key)
    if key in ("w4-11", "w4_11"):
        return data.w4_11()
    raise InputError(f"unknown benchmark set {name!r}; use one of {', '.join(BENCHMARK_SETS)}")


def check_request(set_name: str, *, molecules: Sequence[str] | None = None, baselines: Sequence[str] = (),
                  basis: str | None = None, grid_level: int | None = None):
    """Check the arguments of an [`evaluate`][nlxc.evaluation.evaluate] call before any
    calculation, and return the benchmark set it evaluates (restricted to `molecules`).

    `basis` and `grid_level` are checked when given (not `None`).

    **Raises:** [`nlxc.InputError`][] for an unknown set, reaction name or baseline method, a
    basis PySCF does not have for the set's elements, or a grid level outside 0–9.
    """
    bench = _benchmark_set(set_name)
    if molecules:
        bench = bench.subset(list(molecules))
    if baselines:
        try:
            check_methods(list(baselines))
        except InputError as err:
            raise InputError(f"baselines: {err}") from None
    if basis is not None:
        check_basis(basis, [s for m in bench.molecules for s in m.symbols])
    if grid_level is not None and (isinstance(grid_level, bool) or not isinstance(grid_level, (int, np.integer))
                                   or not 0 <= grid_level <= MAX_GRID_LEVEL):
        raise InputError(f"grid level must be an integer between 0 and {MAX_GRID_LEVEL}, got {grid_level!r}")
    return bench


@eqx.filter_jit
def _forward(functional, system, max_steps):
    result = solve_batch(functional, system, max_steps=max_steps)
    return result.energy, result.converged


def solve_molecules(functional, molecules, basis: str, grid_level: int, *, max_steps: int = 64,
                    max_buckets: int = 2, progress: bool = False) -> tuple[dict[str, float], dict[str, bool]]:
    """Self-consistent total energies (Hartree) and convergence flags of `functional` for
    [`nlxc.data.Molecule`][]s, keyed by molecule name (one compiled SCF per padded bucket);
    `progress` shows `tqdm` bars on standard error."""
    from tqdm.auto import tqdm

    molecules = list(molecules)
    spec = required_grid_operators(functional)
    systems = [System.from_pyscf(m.to_mole(basis), grid_level=grid_level, grid_operators=spec if spec else None)
               for m in tqdm(molecules, desc="nlxc systems", unit="molecule", disable=not progress,
                             dynamic_ncols=True)]
    energies, converged = {}, {}
    batches = make_batches(systems, max_buckets=max_buckets)
    for batch in tqdm(batches, desc="nlxc SCF", unit="batch", disable=not progress, dynamic_ncols=True):
        # geometry-only model data (neighbour lists, D3) computed here, outside jit, so the compiled
        # SCF holds no host callback and JAX's persistent compilation cache can keep it
        e, c = _forward(functional, prepare_system(functional, batch.system), max_steps)
        for i, m, ei, ci in zip(np.asarray(batch.index), np.asarray(batch.mask), np.asarray(e), np.asarray(c)):
            if m:
                energies[molecules[int(i)].name] = float(ei)
                converged[molecules[int(i)].name] = bool(ci)
    return energies, converged


def baseline_energies(molecules, methods: Sequence[str], basis: str, grid_level: int, cache: str, processes: int = 1,
                      progress: bool = False) -> dict[str, dict[str, float]]:
    """Total energies (Hartree) of PySCF baseline `methods` for [`nlxc.data.Molecule`][]s, by
    method and molecule name, computed by [`nlxc.data.compute_references`][] into (or read from)
    the HDF5 file `cache`.

    **Raises:** [`nlxc.data.DatasetError`][] if a cached entry fails its SHA-256 check (the
    message says to delete the cache), and what `compute_references` raises.
    """
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    dataset = compute_references(list(molecules), cache, methods=list(methods), basis=basis, grid_level=grid_level,
                                 processes=processes, progress=progress)
    return _cached_energies(dataset, methods, cache)


def _cached_energies(dataset: ReferenceDataset, methods: Sequence[str], cache: str) -> dict[str, dict[str, float]]:
    # Every cached energy is verified against its entry's SHA-256 (ReferenceDataset.energies):
    # a corrupt or edited cache is an error, never a silently different baseline.
    try:
        return {m: dataset.energies(m) for m in methods}
    except DatasetError as err:
        raise DatasetError(f"{' '.join(str(err).split())}; delete the cache file {cache} to recompute it") from None


def baseline_results(molecules, methods: Sequence[str], basis: str, grid_level: int, cache: str, processes: int = 1,
                     progress: bool = False) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """[`baseline_energies`][nlxc.evaluation.baseline_energies] with a failed PySCF calculation
    (an SCF converged neither by 100 DIIS nor by 50 Newton cycles, or any other error of one calculation)
    returned as a value instead of raised, so that a report can mark it and go on.

    **Returns:** `(energies, failures)`: `energies[method][name]`, total energies (Hartree) of
    the molecules whose calculation succeeded (in this call or an earlier one, from `cache`);
    `failures[method][name]`, the one-line error of each calculation that failed (nothing is
    stored for it, so a later call tries it again). Every method of `methods` is a key of both.

    **Raises:** [`nlxc.data.DatasetError`][] for a corrupt cache (as `baseline_energies`), and
    what [`nlxc.data.compute_references`][] raises before any calculation ([`nlxc.InputError`][]
    for invalid arguments, `DatasetError` for a cache of another basis or grid level).
    """
    methods = list(methods)
    failures: dict[str, dict[str, str]] = {m: {} for m in methods}
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    try:
        dataset = compute_references(list(molecules), cache, methods=methods, basis=basis, grid_level=grid_level,
                                     processes=processes, progress=progress)
    except ReferenceComputationError as err:
        # raised after every other entry was stored: the failures are the value
        canonical = {m.strip().lower(): m for m in methods}
        for name, method, message in err.failures:
            failures.setdefault(canonical.get(method.strip().lower(), method), {})[name] = message
        dataset = ReferenceDataset(cache)
    return _cached_energies(dataset, methods, cache), failures


def error_statistics(errors_kcal) -> dict:
    """`{"mae", "rmse", "max", "n"}` of an iterable of errors (kcal/mol); NaN for none."""
    e = np.asarray(list(errors_kcal), float)
    if e.size == 0:
        return {"mae": math.nan, "rmse": math.nan, "max": math.nan, "n": 0}
    return {"mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e**2))),
            "max": float(np.max(np.abs(e))), "n": int(e.size)}


def format_table(rows: Sequence[tuple[str, dict]], title: str, columns=(("mae", "MAE"), ("rmse", "RMSE"),
                                                                           ("max", "max |err|"))) -> str:
    """A plain-text table of error statistics (kcal/mol), one row per method.

    A statistic over no values (NaN) prints as `n/a`. When a row's statistics carry
    `"excluded"` (the number of molecules or reactions left out, e.g. because an SCF did not
    converge) and some row left any out, a last column `excluded` shows it.
    """
    width = max([len(r[0]) for r in rows] + [24])
    excluded = any(s.get("excluded", 0) for _, s in rows)

    def value(x):
        return f"{'n/a':>12}" if math.isnan(x) else f"{x:>12.2f}"

    lines = [title, f"{'method':<{width}}" + "".join(f"{h:>12}" for _, h in columns) + f"{'n':>6}"
             + (f"{'excluded':>10}" if excluded else "")]
    for name, s in rows:
        lines.append(f"{name:<{width}}" + "".join(value(s[k]) for k, _ in columns) + f"{s['n']:>6d}"
                     + (f"{s.get('excluded', 0):>10d}" if excluded else ""))
    return "\n".join(lines)


def evaluate(functional, *, set_name: str, basis: str, grid_level: int, molecules: Sequence[str] | None = None,
             baselines: Sequence[str] = ("lda", "pbe", "b3lyp"), cache: str | None = None,
             label: str = "nlxc (trained)", max_steps: int = 64, processes: int = 1, progress: bool = False) -> dict:
    """Reaction-energy errors of `functional` and of PySCF baselines on a benchmark set.

    **Arguments:**

    - `functional`: an [`nlxc.xc.AbstractFunctional`][] (e.g. from
      [`nlxc.train.load_checkpoint`][]).
    - `set_name`: one of [`BENCHMARK_SETS`][nlxc.evaluation.BENCHMARK_SETS]: `"g2"` (all
      G2 atomization energies, experimental references), `"g2_1"`, `"g2_2"`, `"w4-11"`
      (W4 atomization energies), `"default"` (the default dataset's 30 atomization energies).
    - `basis`, `grid_level`: of every calculation (the trained functional's, normally).
    - `molecules`: only these reactions of the set (by name; they bring their species).
    - `baselines`: PySCF functionals computed on the same molecules, basis and grid.
    - `cache`: HDF5 file for the PySCF results (reused and extended on later calls);
      default `nlxc-evaluation-<set>-<basis>-<grid>.h5` in the working directory.
    - `max_steps`: SCF iterations allowed to nlxc; `processes` for PySCF.
    - `label`: the name of the trained functional's row.
    - `progress`: show `tqdm` progress bars on standard error (Systems, nlxc SCFs, PySCF).

    A PySCF baseline calculation that fails (an SCF converged neither by 100 DIIS nor 50 Newton cycles, or any
    other error of one calculation; see [`baseline_results`][nlxc.evaluation.baseline_results])
    is a value, like an nlxc SCF that does not converge in `max_steps`: the reactions that need
    that species are left out of that method's statistics, and the report says which and why.

    **Returns:** a dict with `set`, `basis`, `grid_level`, `reactions` (names), `species`
    (`{reaction: [species names]}`), `methods`: `{label: {"mae", "rmse", "max", "n",
    "excluded"}}` in kcal/mol over the `n` reactions whose species all succeeded (`excluded`:
    how many were left out), `excluded` (per method, the names of the reactions left out),
    `failures` (per method, `{species: one-line reason}` for every species whose nlxc SCF did
    not converge or whose PySCF calculation failed; `{}` when none), `per_reaction` (reaction
    energies, kcal/mol, per method and the reference; a left-out reaction has no entry), and
    `common`: the statistics over the reactions every method solved
    ([`common_subset`][nlxc.evaluation.common_subset]).

    **Raises:** [`nlxc.InputError`][] before any calculation, as
    `nlxc.evaluation.check_request` raises it: for an unknown set, reaction
    name or baseline method, an unknown basis, or a grid level outside 0–9;
    [`nlxc.data.DatasetError`][] for a corrupt `cache` or one of another basis or grid level.
    """
    bench = check_request(set_name, molecules=molecules, baselines=baselines, basis=basis, grid_level=grid_level)
    cache = cache or f"nlxc-evaluation-{set_name.lower()}-{basis.lower()}-{grid_level}.h5"
    energies, converged = solve_molecules(functional, bench.molecules, basis, grid_level, max_steps=max_steps,
                                          progress=progress)
    species = [m.name for m in bench.molecules]
    methods = {label: (energies, converged)}
    failures = {label: {n: f"nlxc SCF did not converge in {max_steps} iterations"
                        for n in species if not converged.get(n, False)}}
    if baselines:
        # a PySCF calculation that failed (e.g. an SCF not converged in its cycles) is a value:
        # flagged, its message kept, and the reactions it enters left out of that baseline's statistics
        pyscf, failed = baseline_results(bench.molecules, baselines, basis, grid_level, cache, processes, progress)
        for m in baselines:
            name = baseline_label(m)
            ok = {n: n in pyscf[m] and n not in failed[m] for n in species}
            methods[name] = (pyscf[m], ok)
            failures[name] = {n: failed[m].get(n, "no PySCF result") for n in species if not ok[n]}
    reference = {r.name: r.reference / KCAL_PER_MOL for r in bench.reactions}
    out = {"set": bench.name, "basis": basis, "grid_level": grid_level,
           "reactions": [r.name for r in bench.reactions],
           "species": {r.name: list(r.species) for r in bench.reactions},
           "methods": {}, "excluded": {}, "failures": failures,
           "per_reaction": {"reference": reference}}
    for name, (e, c) in methods.items():
        values, errors, excluded = {}, [], []
        for r in bench.reactions:
            if not all(c.get(s, False) for s in r.species):
                excluded.append(r.name)
                continue
            values[r.name] = r.energy(e) / KCAL_PER_MOL
            errors.append(values[r.name] - reference[r.name])
        out["methods"][name] = {**error_statistics(errors), "excluded": len(excluded)}
        out["excluded"][name] = excluded
        out["per_reaction"][name] = values
    out["common"] = common_subset(out)
    return out


def format_report(report: dict, title: str) -> str:
    """The text of an [`evaluate`][nlxc.evaluation.evaluate] report, as `nlxc evaluate` prints it.

    A table of the error statistics (kcal/mol) of every method under `title` (see
    [`format_table`][nlxc.evaluation.format_table]). When some method left reactions out (a
    species whose SCF did not converge, or whose PySCF calculation failed), nothing is dropped
    silently: the table gets an `excluded` column; a line per such method says over how many
    reactions its statistics are (`PBE (PySCF): MAE over 54 of 55 reactions (left out: CH4)`); a
    table of the left-out reactions gives every method's error there, `—[k]` where that method
    left the reaction out, with the note `[k]` naming the method, the species and why; and a
    last table compares the methods over the reactions that every method solved
    ([`common_subset`][nlxc.evaluation.common_subset]).
    """
    lines = [format_table(list(report["methods"].items()), title)]
    excluded = report["excluded"]
    if not any(excluded.values()):
        return lines[0]
    total = len(report["reactions"])
    for name, left_out in excluded.items():
        if left_out:
            lines.append(f"{name}: MAE over {total - len(left_out)} of {total} reactions "
                         f"(left out: {', '.join(left_out)})")
    methods = list(report["methods"])
    notes: dict[tuple[str, str], int] = {}
    failures = report["failures"]
    reference = report["per_reaction"]["reference"]
    width = max([len(r) for r in report["reactions"]] + [8]) + 2
    columns = [max(len(m) + 2, 12) for m in methods]
    rows = []
    for r in report["reactions"]:
        if not any(r in excluded[m] for m in methods):
            continue
        cells = []
        for m, w in zip(methods, columns):
            if r in report["per_reaction"][m]:
                cells.append(f"{report['per_reaction'][m][r] - reference[r]:>{w}.2f}")
                continue
            failed = [s for s in report["species"][r] if s in failures[m]]
            keys = [notes.setdefault((m, s), len(notes) + 1) for s in failed]
            cells.append(f"{'—' + ('[' + ','.join(map(str, keys)) + ']' if keys else ''):>{w}}")
        rows.append(f"{r:<{width}}" + "".join(cells))
    lines += ["", "errors (kcal/mol) of the reactions left out of some method's statistics; —: left out",
              f"{'reaction':<{width}}" + "".join(f"{m:>{w}}" for m, w in zip(methods, columns)), *rows]
    lines += [f"[{k}] {m}, {s}: {failures[m][s]}" for (m, s), k in notes.items()]
    lines += ["", format_table(list(report["common"].items()), "the same, over the reactions every method solved")]
    return "\n".join(lines)


def common_subset(report: dict) -> dict:
    """Error statistics (kcal/mol) of every method over the reactions that *all* methods of an
    [`evaluate`][nlxc.evaluation.evaluate] report solved (no non-converged species), so that
    the methods are compared on the same reactions."""
    methods = [m for m in report["per_reaction"] if m != "reference"]
    shared = [r for r in report["reactions"] if all(r in report["per_reaction"][m] for m in methods)]
    reference = report["per_reaction"]["reference"]
    return {m: error_statistics(report["per_reaction"][m][r] - reference[r] for r in shared) for m in methods}


def plot_parity(per_molecule: dict, path: str, title: str = "") -> None:
    """Predicted vs reference reaction energies (kcal/mol) of every method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = per_molecule["reference"]
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = math.inf, -math.inf
    for name, values in per_molecule.items():
        if name == "reference" or not values:
            continue
        x = [reference[r] for r in values]
        y = list(values.values())
        ax.scatter(x, y, label=name, s=18)
        lo, hi = min(lo, *x, *y), max(hi, *x, *y)
    if math.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel="reference (kcal/mol)", ylabel="predicted (kcal/mol)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
