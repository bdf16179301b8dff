"""learn_lda: learn a known LDA from ten synthetic total energies, through the SCF, with nlxc.train.

The "unknown" functional is Slater exchange + PW92 correlation (Perdew & Wang, Phys. Rev. B 45,
13244 (1992), doi:10.1103/PhysRevB.45.13244; PySCF `xc="slater,pw"`); its density-fitted PySCF
total energies (6-31G, grid level 0) of 10 atoms and molecules are the only labels. A neural LDA
(`[model] correction = "NeuralLDA"`) is fitted to them by `nlxc.train` with
`[optimizer] name = "levenberg-marquardt"` (optimistix) on the KS-regularised energy loss, once
per seed; each trained functional is then solved self-consistently for the held-out molecules.

    python experiments/learn_lda/run.py [--config PATH] [--seeds 0 1 2] [--quick]

Writes results/summary.json and results/table.md (held-out MAE in mHa per seed, mean ± sd), and
one nlxc.train run directory per seed (metrics, checkpoints, learning curve). The write-up is
docs/experiments/learn_lda.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time

import numpy as np
from ase.build import molecule

import nlxc  # noqa: F401  (float64)
from nlxc.data import Molecule, ReferenceDataset, compute_references
from nlxc.evaluation import solve_molecules
from nlxc.train import load_config, train

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))  # the config's paths are relative to the repository
MHA = 1e3
# 2S = N_alpha - N_beta of the free atoms; B, C, O and F are left out (their aufbau SCF oscillates)
ATOM_SPINS = {"H": 1, "He": 0, "Li": 1, "Be": 0, "N": 3, "Ne": 0, "Na": 1, "Mg": 0, "P": 3}


def make_molecule(name: str) -> Molecule:
    if name in ATOM_SPINS:
        return Molecule(name, (name,), np.zeros((1, 3)), spin=ATOM_SPINS[name])
    atoms = molecule(name)
    spin = round(float(np.sum(atoms.get_initial_magnetic_moments())))
    return Molecule(name, tuple(atoms.get_chemical_symbols()), atoms.positions, spin=spin)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(HERE, "config.toml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one seed, 20 steps (smoke test)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    config = load_config(args.config)
    seeds = args.seeds[:1] if args.quick else args.seeds
    results = os.path.join(ROOT, os.path.dirname(config.data.dataset)) + ("-quick" if args.quick else "")
    os.makedirs(results, exist_ok=True)

    names = list(config.data.train) + list(config.data.test)
    molecules = [make_molecule(n) for n in names]
    dataset_path = os.path.join(results, os.path.basename(config.data.dataset))
    compute_references(molecules, dataset_path, methods=(config.data.target,), basis="6-31g", grid_level=0,
                       progress=False)
    dataset = ReferenceDataset(dataset_path)
    labels = dataset.energies(config.data.target)
    held_out = [m for m in molecules if m.name in config.data.test]

    runs = []
    for seed in seeds:
        t = time.perf_counter()
        run = dataclasses.replace(config.run, seed=seed, output_dir=os.path.join(results, f"run-seed{seed}"))
        training = dataclasses.replace(config.training, steps=20) if args.quick else config.training
        cfg = dataclasses.replace(config, run=run, training=training,
                                  data=dataclasses.replace(config.data, dataset=dataset_path))
        result = train(cfg, evaluate=False)
        with open(os.path.join(run.output_dir, "metrics.jsonl")) as f:
            metrics = [json.loads(line) for line in f]
        energies, converged = solve_molecules(result.functional, held_out, "6-31g", 0,
                                              max_steps=config.training.max_scf_steps)
        errors = {n: (energies[n] - labels[n]) * MHA for n in energies}
        train_loss = metrics[result.best_step]["loss"]["train"]
        runs.append({
            "seed": seed, "steps": result.steps, "best_step": result.best_step,
            "accepted_steps": sum(bool(m.get("accepted")) for m in metrics),
            "failed_steps": sum(not m["ok"] for m in metrics),
            "train_rms_mHa": float(np.sqrt(train_loss)) * MHA,
            "held_out_mae_mHa": float(np.mean([abs(e) for e in errors.values()])),
            "held_out_max_mHa": float(max(abs(e) for e in errors.values())),
            "held_out_errors_mHa": errors,
            "held_out_not_converged": sorted(n for n, c in converged.items() if not c),
            "wall_s": time.perf_counter() - t,
        })
        r = runs[-1]
        print(f"seed {seed}: held-out MAE {r['held_out_mae_mHa']:.3f} mHa (max {r['held_out_max_mHa']:.3f}), "
              f"training RMS {r['train_rms_mHa']:.4f} mHa, {r['steps']} steps ({r['accepted_steps']} accepted), "
              f"{r['wall_s']:.0f} s", flush=True)

    maes = [r["held_out_mae_mHa"] for r in runs]
    summary = {
        "config": config.to_dict(), "seeds": seeds, "runs": runs,
        "held_out_mae_mHa": {"mean": statistics.mean(maes), "sd": statistics.stdev(maes) if len(maes) > 1 else 0.0,
                             "min": min(maes), "max": max(maes)},
        "hardware": {"platform": platform.platform(), "python": platform.python_version(),
                     "cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg())},
        "wall_s": time.perf_counter() - t_start,
    }
    with open(os.path.join(results, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = ["| seed | held-out MAE (mHa) | max (mHa) | training RMS (mHa) | steps (accepted) | wall (s) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['held_out_mae_mHa']:.3f} | {r['held_out_max_mHa']:.3f} | {r['train_rms_mHa']:.4f} | "
              f"{r['steps']} ({r['accepted_steps']}) | {r['wall_s']:.0f} |" for r in runs]
    m = summary["held_out_mae_mHa"]
    lines.append(f"\nheld-out MAE over seeds: {m['mean']:.3f} ± {m['sd']:.3f} mHa ({m['min']:.3f}–{m['max']:.3f})")
    with open(os.path.join(results, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
