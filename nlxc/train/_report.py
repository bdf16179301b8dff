"""Metrics of a run and its epilogue: the held-out report beside PySCF baselines, and the plots."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from .._config import (
    TrainConfig,
)
from ..data import KCAL_PER_MOL
from ..evaluation import (
    baseline_label,
    baseline_results,
    error_statistics,
    format_table,
    plot_parity,
)
from ._common import SPLITS
from ._data import _Prepared

# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _energies_by_name(prepared: _Prepared, energies, converged) -> tuple[dict[str, float], dict[str, bool]]:
    e, c = {}, {}
    for b, eb, cb in zip(prepared.data.batches, energies, converged):
        for i, m, ei, ci in zip(np.asarray(b.index), np.asarray(b.mask), np.asarray(eb), np.asarray(cb)):
            if m:
                e[prepared.names[int(i)]] = float(ei)
                c[prepared.names[int(i)]] = bool(ci)
    return e, c


def _atomization(prepared: _Prepared, energies: dict[str, float]) -> dict[str, float]:
    return {r: sum(coef * energies[m] for m, coef in counts.items())
            for r, counts in zip(prepared.reaction_names, prepared.reaction_species)}


def _stats(errors_hartree) -> dict[str, float]:
    return error_statistics(np.asarray(list(errors_hartree), float) / KCAL_PER_MOL)


def _split_stats(prepared: _Prepared, energies: dict[str, float]) -> dict[str, dict]:
    """Errors (kcal/mol) of total and atomization energies per split, against the target."""
    atomization = _atomization(prepared, energies)
    reference = dict(zip(prepared.reaction_names, prepared.reaction_reference))
    out = {}
    for s in SPLITS:
        mols = [n for n in prepared.names if prepared.split_of[n] == s]
        out[s] = {
            "total_energy": _stats(energies[n] - prepared.target_energy[n] for n in mols if n in energies),
            "atomization": _stats(atomization[r] - reference[r] for r in prepared.reaction_names
                                  if prepared.split_of[r] == s),
        }
    return out




# --------------------------------------------------------------------------------------------
# The epilogue of a run: held-out report and plots
# --------------------------------------------------------------------------------------------


def _held_out_report(config: TrainConfig, prepared: _Prepared, energies, converged, initial_energies, out: str) -> dict:
    """Errors on the test split (kcal/mol) of the trained functional, the initial one and the
    PySCF baselines; written to `results.json` and `results.md`, printed, and plotted."""
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
    failures: dict[str, dict[str, str]] = {}
    if baselines and molecules:
        # a PySCF calculation that failed (e.g. an SCF not converged in its cycles) is a value:
        # its energy is NaN, flagged not converged, and left out of that baseline's statistics
        pyscf, failed = baseline_results(molecules, baselines, prepared.dataset.basis, prepared.dataset.grid_level,
                                         os.path.join(out, "baselines.h5"))
        for m in baselines:
            label = baseline_label(m)
            energies_m = {**pyscf[m], **{n: math.nan for n in failed[m]}}
            methods[label] = (energies_m, {n: n in pyscf[m] and n not in failed[m] for n in energies_m})
            if failed[m]:
                failures[label] = dict(sorted(failed[m].items()))
    reactions = [(r, counts, ref) for r, counts, ref in
                 zip(prepared.reaction_names, prepared.reaction_species, prepared.reaction_reference) if r in test]
    target = config.data.target
    report = {"split": split, "target": target, "atomization_reference": config.data.atomization_reference,
              "basis": prepared.dataset.basis,
              "grid_level": prepared.dataset.grid_level, "molecules": test,
              "splits": {s: [n for n in prepared.names if prepared.split_of[n] == s] for s in SPLITS + ("shared",)},
              "atomization": {}, "total_energy": {}, "not_converged": {}, "failures": failures,
              "per_molecule": {}}
    for name, (e, c) in methods.items():
        bad = sorted(n for n in needed if not c.get(n, False))
        ok = [(r, counts, ref) for r, counts, ref in reactions if all(c.get(m, False) for m in counts)]
        atom = {r: sum(k * e[m] for m, k in counts.items()) for r, counts, _ in ok}
        report["atomization"][name] = {
            **error_statistics((atom[r] - ref) / KCAL_PER_MOL for r, _, ref in ok),
            "excluded": len(reactions) - len(ok)}
        converged_test = [n for n in test if c.get(n, False)]
        report["total_energy"][name] = {
            **error_statistics((e[n] - prepared.target_energy[n]) / KCAL_PER_MOL for n in converged_test),
            "excluded": len(test) - len(converged_test)}
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
    for name, failed in failures.items():
        for n, message in failed.items():
            text.append(f"{name}: {n}: {message}")
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
