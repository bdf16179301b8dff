"""The `finetune_skala` experiment: Skala-1.0 fine-tuned through the SCF on G2-1 atomization energies.

Every weight of [`nlxc.models.Skala`][] (Skala-1.0, Luise et al., arXiv:2506.14665, with its
D3(BJ) term) is trained through the SCF (implicit adjoint) on the experimental atomization
energies of a small training split of G2-1 (`config.toml`), with `nlxc.train.train`. The held-out
G2-1 molecules (closed shells of H, C, N, O, F not in training) are then solved with Skala-1.0 as
shipped and with the fine-tuned Skala (`nlxc.evaluation.evaluate`), beside PySCF's PBE and
B3LYP on the same molecules, basis, grid and auxiliary basis. Errors in kcal/mol against
experiment.

References: experimental G2-1 atomization energies as shipped by ASE (`nlxc.data.g2`), from
L. A. Curtiss, K. Raghavachari, G. W. Trucks, J. A. Pople, J. Chem. Phys. 94, 7221 (1991),
doi:10.1063/1.460205, with the ZPE and thermal corrections of Staroverov et al., J. Chem. Phys.
119, 12129 (2003), doi:10.1063/1.1626543.

Small on purpose (2 shared CPU cores): basis 6-31G, PySCF grid level 0, 4 training molecules,
8 steps, 8 held-out molecules. Run it under `nice -n 10` on a shared machine.

    python experiments/finetune_skala/run.py [--config experiments/finetune_skala/config.toml] [--quick]
                                             [--results-dir DIR]

Writes experiments/finetune_skala/results/{results.json, table.md} (or DIR/…) and the training run
(metrics, checkpoints) under results/run/. results.json records the wall times, the load average
and the process's peak resident memory (`peak_rss_gb`, after training and for the whole run).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import resource
import time

import equinox as eqx

from nlxc.data import compute_references, g2
from nlxc.evaluation import common_subset, evaluate, format_table
from nlxc.models import Skala
from nlxc.train import build_functional, load_config, train

HERE = os.path.dirname(os.path.abspath(__file__))
TEST = ("C2H2", "HCN", "CO", "N2", "H2CO", "F2", "H2O2", "CO2")


def _load():
    return list(os.getloadavg())


def _peak_rss_gb():
    """This process's peak resident memory so far (GB; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6 * 1.024


def _last_parameters(config):
    """The Skala of the run's resumable state `last.eqx` (after `step` updates), for a run that
    could not finish (e.g. killed for memory on a shared machine): its SHA-256 is checked against
    `last.json`, and its first leaves, the trainable parameters (`TrainState.params`), are read."""
    out = config.run.output_dir
    with open(os.path.join(out, "last.json")) as f:
        meta = json.load(f)
    with open(os.path.join(out, "last.eqx"), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() not in (meta["sha256"], meta.get("previous_sha256")):
        raise SystemExit(f"{out}/last.eqx does not match the SHA-256 in last.json")
    functional, trainable = build_functional(config.model, config.run.seed)
    params, static = eqx.partition(functional, trainable)
    params = eqx.tree_deserialise_leaves(io.BytesIO(data), params)  # TrainState's first field
    return eqx.combine(params, static), int(meta["best_step"]), int(meta["step"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(HERE, "config.toml"))
    parser.add_argument("--quick", action="store_true", help="2 steps, 2 test molecules (smoke test)")
    parser.add_argument("--basis", default="6-31g")
    parser.add_argument("--grid-level", type=int, default=0)
    parser.add_argument("--from-last", action="store_true",
                        help="evaluate the parameters of results/run/last.eqx instead of training on")
    parser.add_argument("--results-dir", default=None,
                        help="write everything here instead of experiments/finetune_skala/results (e.g. a scratch "
                             "directory, copied over once the run has finished)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    loads = {"start": _load()}
    config = load_config(args.config)
    results_dir = args.results_dir or os.path.join(HERE, "results" + ("-quick" if args.quick else ""))
    os.makedirs(results_dir, exist_ok=True)

    g2_1 = g2("g2_1")
    names = list(config.data.train) + list(config.data.validation)
    atoms = sorted({s for n in names for s in g2_1.molecule(n).symbols})
    dataset_path = os.path.join(results_dir, f"g2_1-{args.basis}-grid{args.grid_level}.h5")
    compute_references([g2_1.molecule(n) for n in names + atoms], dataset_path, methods=(config.data.target,),
                       basis=args.basis, grid_level=args.grid_level, progress=False)
    data = dataclasses.replace(config.data, dataset=dataset_path, molecules=tuple(names + atoms))
    run = dataclasses.replace(config.run, output_dir=os.path.join(results_dir, "run"))
    training = dataclasses.replace(config.training, steps=2) if args.quick else config.training
    config = dataclasses.replace(config, data=data, run=run, training=training)
    t_train = time.perf_counter()
    if args.from_last:
        tuned, best_step, steps_done = _last_parameters(config)
    else:
        result = train(config, evaluate=False)
        tuned, best_step, steps_done = result.functional, result.best_step, result.steps
    t_train = time.perf_counter() - t_train
    loads["after_training"] = _load()
    peak_training = _peak_rss_gb()

    test = list(TEST[:2] if args.quick else TEST)
    assert not set(test) & set(names)
    common = {"set_name": "g2_1", "molecules": test, "basis": args.basis, "grid_level": args.grid_level,
              "max_steps": config.training.max_scf_steps}
    t_eval = time.perf_counter()
    report = evaluate(tuned, baselines=("pbe", "b3lyp"), label="Skala fine-tuned (nlxc)",
                      cache=os.path.join(results_dir, f"pyscf-g2_1-{args.basis}-grid{args.grid_level}.h5"), **common)
    shipped = evaluate(Skala(), baselines=(), label="Skala-1.0 as shipped (nlxc)", **common)
    for key in ("methods", "excluded"):
        report[key].update(shipped[key])
    report["per_reaction"].update({k: v for k, v in shipped["per_reaction"].items() if k != "reference"})
    report["common"] = common_subset(report)
    t_eval = time.perf_counter() - t_eval
    loads["end"] = _load()

    order = ["Skala-1.0 as shipped (nlxc)", "Skala fine-tuned (nlxc)", "PBE (PySCF)", "B3LYP (PySCF)"]
    title = (f"G2-1 atomization energies, {len(test)} held-out molecules ({args.basis}, grid level "
             f"{args.grid_level}); errors in kcal/mol against experiment")
    table = format_table([(m, report["methods"][m]) for m in order], title)
    excluded = {k: v for k, v in report["excluded"].items() if v}
    if excluded:
        table += "\n\nleft out (SCF not converged): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in excluded.items())
        table += "\n\n" + format_table([(m, report["common"][m]) for m in order if m in report["common"]],
                                       "the same, over the molecules every method solved")
    print(table)
    with open(os.path.join(config.run.output_dir, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    wall = time.perf_counter() - t0
    summary = {
        "config": config.to_dict(), "train": list(config.data.train), "test": test, "best_step": best_step,
        "steps": steps_done, "from_last": args.from_last, "report": report,
        "train_atomization_mae_kcal": [m["mae_kcal"]["train"]["atomization"] for m in metrics],
        "step_wall_s": [m["wall_s"] for m in metrics],
        "wall_s": wall, "train_s": t_train, "evaluate_s": t_eval, "load_average": loads,
        "peak_rss_gb": {"training": peak_training, "whole_run": _peak_rss_gb()},
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
    }
    with open(os.path.join(results_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(results_dir, "table.md"), "w") as f:
        f.write("```\n" + table + "\n```\n")
    print(f"wall time {wall:.0f} s (training {t_train:.0f} s, evaluation {t_eval:.0f} s); load average {loads}; "
          f"peak RSS {summary['peak_rss_gb']['training']:.2f} GB after training, "
          f"{summary['peak_rss_gb']['whole_run']:.2f} GB in all")


if __name__ == "__main__":
    main()
