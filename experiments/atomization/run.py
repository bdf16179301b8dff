"""The `atomization` experiment: a nonlocal correction to PBE learned from G2-1 atomization energies.

PBE + `nlxc.models.AtomCentredCorrection` is trained through the SCF (implicit adjoint) on the
experimental atomization energies of a small training split of G2-1 (with a validation split for
early stopping), then every other closed- and open-shell molecule of G2-1 whose free atoms are
first-row or hydrogen-like is solved with the best functional and compared, in kcal/mol, with
PySCF's PBE and B3LYP in the same basis, grid and auxiliary basis.

References: experimental G2-1 atomization energies as shipped by ASE (`nlxc.data.g2`), from
L. A. Curtiss et al., J. Chem. Phys. 94, 7221 (1991), doi:10.1063/1.460205 and J. Chem. Phys.
106, 1063 (1997), doi:10.1063/1.473182.

    python experiments/atomization/run.py [--config experiments/atomization/config.toml] [--quick]

Writes experiments/atomization/results/{results.json, table.md, parity.png} and the training run
(metrics, checkpoints, learning curve) under results/run/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import nlxc
from nlxc.data import compute_references, g2
from nlxc.evaluation import common_subset, evaluate, format_table, plot_parity
from nlxc.train import load_config, train

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(HERE, "config.toml"))
    parser.add_argument("--quick", action="store_true", help="3 steps, 6 test molecules (smoke test)")
    parser.add_argument("--basis", default="6-31g")
    parser.add_argument("--grid-level", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    config = load_config(args.config)
    results_dir = os.path.join(HERE, "results" + ("-quick" if args.quick else ""))
    os.makedirs(results_dir, exist_ok=True)

    g2_1 = g2("g2_1")
    names = list(config.data.train) + list(config.data.validation)
    atoms = sorted({s for n in names for s in g2_1.molecule(n).symbols})
    species = [g2_1.molecule(n) for n in names + atoms]
    dataset_path = os.path.join(results_dir, f"g2_1-{args.basis}.h5")
    compute_references(species, dataset_path, methods=(config.data.target,), basis=args.basis,
                       grid_level=args.grid_level, processes=2, progress=True)
    data = dataclasses.replace(config.data, dataset=dataset_path, molecules=tuple(names + atoms))
    run = dataclasses.replace(config.run, output_dir=os.path.join(results_dir, "run"))
    training = config.training
    if args.quick:
        training = dataclasses.replace(training, steps=3)
    config = dataclasses.replace(config, data=data, run=run, training=training)
    t_train = time.perf_counter()
    result = train(config)
    t_train = time.perf_counter() - t_train

    # Held out: every other G2-1 molecule whose atoms were seen in training (the correction has an
    # embedding per element; unseen elements keep their untrained embedding).
    seen = set(atoms)
    test = [r.name for r in g2_1.reactions if r.name not in names
            and set(g2_1.molecule(r.name).symbols) <= seen]
    if args.quick:
        test = test[:6]
    t_eval = time.perf_counter()
    report = evaluate(result.functional, set_name="g2_1", molecules=test, basis=args.basis,
                      grid_level=args.grid_level, baselines=("pbe", "b3lyp"),
                      cache=os.path.join(results_dir, f"pyscf-g2_1-{args.basis}.h5"),
                      label="PBE + AtomCentredCorrection (trained)", max_steps=config.training.max_scf_steps,
                      processes=2)
    untrained, _ = nlxc.train.build_functional(config.model, config.run.seed)
    base = evaluate(untrained, set_name="g2_1", molecules=test, basis=args.basis, grid_level=args.grid_level,
                    baselines=(), label="PBE + AtomCentredCorrection (initial)", max_steps=config.training.max_scf_steps)
    report["methods"].update(base["methods"])
    report["excluded"].update(base["excluded"])
    report["per_reaction"].update({k: v for k, v in base["per_reaction"].items() if k != "reference"})
    report["common"] = common_subset(report)
    t_eval = time.perf_counter() - t_eval

    title = (f"G2-1 atomization energies, {len(test)} held-out molecules ({args.basis}, grid level "
             f"{args.grid_level}); errors in kcal/mol against experiment")
    table = format_table(list(report["methods"].items()), title)
    print(table)
    excluded = {k: v for k, v in report["excluded"].items() if v}
    if excluded:
        common = format_table(list(report["common"].items()), "the same, over the molecules every method solved")
        table += "\n\nleft out (SCF not converged): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in excluded.items())
        table += "\n\n" + common
        print(table[len(table) - len(common) - 200:])
    wall = time.perf_counter() - t0
    summary = {
        "config": config.to_dict(), "train": list(config.data.train), "validation": list(config.data.validation),
        "test": test, "best_step": result.best_step, "steps": result.steps, "report": report,
        "wall_s": wall, "train_s": t_train, "evaluate_s": t_eval,
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
    }
    with open(os.path.join(results_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(results_dir, "table.md"), "w") as f:
        f.write("```\n" + table + "\n```\n")
    plot_parity(report["per_reaction"], os.path.join(results_dir, "parity.png"),
                title="G2-1 held-out atomization energies")
    print(f"wall time {wall:.0f} s (training {t_train:.0f} s, evaluation {t_eval:.0f} s)")


if __name__ == "__main__":
    main()
