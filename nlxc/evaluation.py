"""Evaluating trained functionals beside PySCF baselines: benchmark sets, held-out errors, plots.

[`evaluate`][nlxc.evaluation.evaluate] (the `nlxc evaluate CHECKPOINT --set NAME` command)
solves every species of a benchmark set (G2 atomization energies, W4-11, the default set) with
a trained functional and with PySCF's LDA, PBE and B3LYP (or any PySCF functionals) in the same
basis, grid and auxiliary basis, and reports the mean absolute and root-mean-square errors of
the reaction energies in kcal/mol against the set's references. The PySCF calculations are the
density-fitted ones of [`nlxc.data.compute_references`][] (JK-fit auxiliary basis, no density
cut-off on the grid, minao guess) and are cached in an HDF5 file, so a second evaluation of the
same set costs only the nlxc SCFs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import equinox as eqx
import numpy as np

from ._errors import InputError
from .batch import make_batches, solve_batch

__all__ = ["BENCHMARK_SETS", "check_request", "common_subset", "error_statistics", "evaluate", "format_table",
           "plot_learning_curve", "plot_parity"]

BENCHMARK_SETS = ("default", "g2", "g2_1", "g2_2", "w4-11")
"""Names accepted by [`evaluate`][nlxc.evaluation.evaluate] (and `nlxc evaluate --set`)."""

_LABELS = {"lda": "LDA", "svwn": "SVWN", "pbe": "PBE", "b3lyp": "B3LYP", "pbe0": "PBE0", "hf": "HF",
           "blyp": "BLYP", "r2scan": "r2SCAN"}


def _label(method: str) -> str:
    return _LABELS.get(method.lower(), method) + " (PySCF)"


def _benchmark_set(name: str):
    from . import data

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
    from .data._reference import _validate_methods
    from .system import MAX_GRID_LEVEL, check_basis

    bench = _benchmark_set(set_name)
    if molecules:
        bench = bench.subset(list(molecules))
    if baselines:
        try:
            _validate_methods(list(baselines))
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

    from .grid_operators import required_grid_operators
    from .system import System

    molecules = list(molecules)
    spec = required_grid_operators(functional)
    systems = [System.from_pyscf(m.to_mole(basis), grid_level=grid_level, grid_operators=spec if spec else None)
               for m in tqdm(molecules, desc="nlxc systems", unit="molecule", disable=not progress,
                             dynamic_ncols=True)]
    energies, converged = {}, {}
    batches = make_batches(systems, max_buckets=max_buckets)
    for batch in tqdm(batches, desc="nlxc SCF", unit="batch", disable=not progress, dynamic_ncols=True):
        e, c = _forward(functional, batch.system, max_steps)
        for i, m, ei, ci in zip(np.asarray(batch.index), np.asarray(batch.mask), np.asarray(e), np.asarray(c)):
            if m:
                energies[molecules[int(i)].name] = float(ei)
                converged[molecules[int(i)].name] = bool(ci)
    return energies, converged


def _pyscf_energies(molecules, methods, basis, grid_level, cache: str, processes: int = 1, progress: bool = False):
    from .data import DatasetError, compute_references

    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    dataset = compute_references(list(molecules), cache, methods=list(methods), basis=basis, grid_level=grid_level,
                                 processes=processes, progress=progress)
    # Every cached energy is verified against its entry's SHA-256 (ReferenceDataset.energies):
    # a corrupt or edited cache is an error, never a silently different baseline.
    try:
        return {m: dataset.energies(m) for m in methods}
    except DatasetError as err:
        raise DatasetError(f"{' '.join(str(err).split())}; delete the cache file {cache} to recompute it") from None


def error_statistics(errors_kcal) -> dict:
    """`{"mae", "rmse", "max", "n"}` of an iterable of errors (kcal/mol); NaN for none."""
    e = np.asarray(list(errors_kcal), float)
    if e.size == 0:
        return {"mae": math.nan, "rmse": math.nan, "max": math.nan, "n": 0}
    return {"mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e**2))),
            "max": float(np.max(np.abs(e))), "n": int(e.size)}


def format_table(rows: Sequence[tuple[str, dict]], title: str, columns=(("mae", "MAE"), ("rmse", "RMSE"),
                                                                           ("max", "max |err|"))) -> str:
    """A plain-text table of error statistics (kcal/mol), one row per method."""
    width = max([len(r[0]) for r in rows] + [24])
    lines = [title, f"{'method':<{width}}" + "".join(f"{h:>12}" for _, h in columns) + f"{'n':>6}"]
    for name, s in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{s[k]:>12.2f}" for k, _ in columns) + f"{s['n']:>6d}")
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
      (W4 atomization energies), `"default"` (the default dataset's 12 atomization energies).
    - `basis`, `grid_level`: of every calculation (the trained functional's, normally).
    - `molecules`: only these reactions of the set (by name; they bring their species).
    - `baselines`: PySCF functionals computed on the same molecules, basis and grid.
    - `cache`: HDF5 file for the PySCF results (reused and extended on later calls);
      default `nlxc-evaluation-<set>-<basis>-<grid>.h5` in the working directory.
    - `max_steps`: SCF iterations allowed to nlxc; `processes` for PySCF.
    - `label`: the name of the trained functional's row.
    - `progress`: show `tqdm` progress bars on standard error (Systems, nlxc SCFs, PySCF).

    **Returns:** a dict with `set`, `basis`, `grid_level`, `reactions` (names), `methods`:
    `{label: {"mae", "rmse", "max", "n"}}` in kcal/mol over the reactions whose species all
    converged, `excluded` (per method, the reactions left out because a species' SCF did not
    converge), `per_reaction` (reaction energies, kcal/mol, per method and the reference), and
    `common`: the statistics over the reactions every method solved
    ([`common_subset`][nlxc.evaluation.common_subset]).

    **Raises:** [`nlxc.InputError`][] before any calculation, as
    `nlxc.evaluation.check_request` raises it: for an unknown set, reaction
    name or baseline method, an unknown basis, or a grid level outside 0–9.
    """
    from .data import KCAL_PER_MOL

    bench = check_request(set_name, molecules=molecules, baselines=baselines, basis=basis, grid_level=grid_level)
    cache = cache or f"nlxc-evaluation-{set_name.lower()}-{basis.lower()}-{grid_level}.h5"
    energies, converged = solve_molecules(functional, bench.molecules, basis, grid_level, max_steps=max_steps,
                                          progress=progress)
    methods = {label: (energies, converged)}
    if baselines:
        pyscf = _pyscf_energies(bench.molecules, baselines, basis, grid_level, cache, processes, progress)
        for m in baselines:
            methods[_label(m)] = (pyscf[m], {n: True for n in pyscf[m]})
    reference = {r.name: r.reference / KCAL_PER_MOL for r in bench.reactions}
    out = {"set": bench.name, "basis": basis, "grid_level": grid_level,
           "reactions": [r.name for r in bench.reactions], "methods": {}, "excluded": {},
           "per_reaction": {"reference": reference}}
    for name, (e, c) in methods.items():
        values, errors, excluded = {}, [], []
        for r in bench.reactions:
            if not all(c.get(s, False) for s in r.species):
                excluded.append(r.name)
                continue
            values[r.name] = r.energy(e) / KCAL_PER_MOL
            errors.append(values[r.name] - reference[r.name])
        out["methods"][name] = error_statistics(errors)
        out["excluded"][name] = excluded
        out["per_reaction"][name] = values
    out["common"] = common_subset(out)
    return out


def common_subset(report: dict) -> dict:
    """Error statistics (kcal/mol) of every method over the reactions that *all* methods of an
    [`evaluate`][nlxc.evaluation.evaluate] report solved (no non-converged species), so that
    the methods are compared on the same reactions."""
    methods = [m for m in report["per_reaction"] if m != "reference"]
    shared = [r for r in report["reactions"] if all(r in report["per_reaction"][m] for m in methods)]
    reference = report["per_reaction"]["reference"]
    return {m: error_statistics(report["per_reaction"][m][r] - reference[r] for r in shared) for m in methods}


# --------------------------------------------------------------------------------------------
# Held-out report of a training run
# --------------------------------------------------------------------------------------------


def held_out_report(config, prepared, energies, converged, initial_energies, out: str) -> dict:
    """Errors on the test split (kcal/mol) of the trained functional, the initial one and the
    PySCF baselines; written to `results.json` and `results.md`, printed, and plotted."""
    from .data import KCAL_PER_MOL
    from .train import SPLITS

    test = [n for n in prepared.names if prepared.split_of[n] == "test"]
    split = "test"
    if not test:
        test = [n for n in prepared.names if prepared.split_of[n] == "validation"]
        split = "validation"
    needed = set(test) | {m for r, counts in zip(prepared.reaction_names, prepared.reaction_species)
                          if r in test for m in counts}
    molecules = [prepared.dataset.molecule(n) for n in prepared.names if n in needed]
    methods = {"nlxc (trained)": (energies, converged)}
    if initial_energies is not None:
        methods["nlxc (initial)"] = (initial_energies, {n: True for n in initial_energies})
    baselines = list(config.evaluation.baselines)
    if baselines and molecules:
        pyscf = _pyscf_energies(molecules, baselines, prepared.dataset.basis, prepared.dataset.grid_level,
                                os.path.join(out, "baselines.h5"))
        for m in baselines:
            methods[_label(m)] = (pyscf[m], {n: True for n in pyscf[m]})
    reactions = [(r, counts, ref) for r, counts, ref in
                 zip(prepared.reaction_names, prepared.reaction_species, prepared.reaction_reference) if r in test]
    target = config.data.target
    report = {"split": split, "target": target, "atomization_reference": config.data.atomization_reference,
              "basis": prepared.dataset.basis,
              "grid_level": prepared.dataset.grid_level, "molecules": test,
              "splits": {s: [n for n in prepared.names if prepared.split_of[n] == s] for s in SPLITS + ("shared",)},
              "atomization": {}, "total_energy": {}, "not_converged": {}, "per_molecule": {}}
    for name, (e, c) in methods.items():
        bad = sorted(n for n in needed if not c.get(n, False))
        ok = [(r, counts, ref) for r, counts, ref in reactions if all(c.get(m, False) for m in counts)]
        atom = {r: sum(k * e[m] for m, k in counts.items()) for r, counts, _ in ok}
        report["atomization"][name] = error_statistics((atom[r] - ref) / KCAL_PER_MOL for r, _, ref in ok)
        report["total_energy"][name] = error_statistics((e[n] - prepared.target_energy[n]) / KCAL_PER_MOL
                                              for n in test if c.get(n, False))
        report["not_converged"][name] = bad
        report["per_molecule"][name] = {r: atom[r] / KCAL_PER_MOL for r in atom}
    report["per_molecule"]["reference"] = {r: ref / KCAL_PER_MOL for r, _, ref in reactions}

    atomization_source = ("experimental G2 atomization energies"
                          if config.data.atomization_reference == "experiment" else
                          f"{target.upper()}/{prepared.dataset.basis}")
    title = (f"held-out ({split}) molecules: {', '.join(test)}\n"
             f"errors in kcal/mol against {atomization_source} (atomization), {target.upper()}/"
             f"{prepared.dataset.basis} (total energies); grid level {prepared.dataset.grid_level}")
    text = [title, ""]
    if reactions:
        text.append(format_table(list(report["atomization"].items()), "atomization energies"))
        text.append("")
    text.append(format_table(list(report["total_energy"].items()), "total energies"))
    for name, bad in report["not_converged"].items():
        if bad:
            text.append(f"{name}: SCF not converged for {', '.join(bad)} (left out)")
    table = "\n".join(text)
    print(table)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("```\n" + table + "\n```\n")
    if config.training.plots and reactions:
        plot_parity(report["per_molecule"], os.path.join(out, "parity.png"),
                    title=f"{split} atomization energies vs {atomization_source}")
    return report


def plot_learning_curve(metrics_path: str, path: str) -> None:
    """Loss of each split and the atomization / total-energy MAE against the step (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        return
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "validation", "test"):
        values = [r["loss"][split] for r in records]
        if any(v > 0 for v in values):
            axes[0].semilogy(steps, values, label=split)
        key = "atomization" if not math.isnan(records[-1]["mae_kcal"][split]["atomization"]) else "total_energy"
        mae = [r["mae_kcal"][split][key] for r in records]
        if not all(math.isnan(v) for v in mae):
            axes[1].plot(steps, mae, label=f"{split} ({key.replace('_', ' ')})")
    axes[0].set(xlabel="step", ylabel="loss (Hartree²)", title="loss")
    axes[1].set(xlabel="step", ylabel="MAE (kcal/mol)", title="mean absolute error")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
