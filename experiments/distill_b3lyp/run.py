"""distill_b3lyp: distil B3LYP/def2-SVP into learned functionals, every model × protocol by nlxc.train.

The base config (config.toml) and the variants (variants.toml: two models, the constrained
meta-GGA MLP and PBE + `AtomCentredCorrection`; two protocols, "E+ρ" = energy + density loss
through the SCF and "E+∂E" = energy at the B3LYP density + `derivative_loss`, DI-Loss
arXiv:2606.04279) are merged and trained with `nlxc.train.train`. Each trained functional is then
solved on the test molecules and compared with B3LYP: total-energy error, the density-driven error
E_B3LYP[ρ_θ] − E_B3LYP[ρ_B3LYP], ∫(ρ_θ − ρ_B3LYP)², the dipole error, and PySCF B3LYP SCF cycles
started from ρ_θ versus from the default (minao) guess.

    python experiments/distill_b3lyp/run.py [--quick] [--steps N]

Writes results/results.json and results/table.md (results-quick/ with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib

import equinox as eqx
import numpy as np
from pyscf import df, dft

import nlxc
from nlxc.batch import make_batches
from nlxc.data import compute_references, g2
from nlxc.losses import density_difference
from nlxc.scf import energy_components
from nlxc.train import TrainConfig, load_config, train

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
AU_TO_DEBYE = 2.541746


@eqx.filter_jit
def evaluate(functional, system, p_ref, max_steps):
    """Per molecule of a batch: E_θ, converged, E_B3LYP[P_θ] − E_B3LYP[P_ref], ∫Δρ², |Δμ| (a.u.), P_θ."""
    b3lyp = nlxc.get_functional("b3lyp")
    result = eqx.filter_vmap(lambda s: nlxc.solve(functional, s, max_steps=max_steps))(system)

    def one(s, p, q):
        f = b3lyp.prepare(s)
        driven = energy_components(f, s, p).total - energy_components(f, s, q).total
        dipole = nlxc.dipole_moment(p, s) - nlxc.dipole_moment(q, s)
        return driven, density_difference(s, p, q, "l2"), (dipole @ dipole) ** 0.5

    driven, l2, dip = eqx.filter_vmap(one)(system, result.density_matrix, p_ref)
    return result.energy, result.converged, driven, l2, dip, result.density_matrix


def pyscf_cycles(mol, dm, grid_level):
    """PySCF B3LYP SCF cycles (the settings of compute_references) from `dm` (None: minao)."""
    mf = dft.RKS(mol, xc="b3lyp").density_fit(auxbasis=df.make_auxbasis(mol))
    mf.grids.level, mf.small_rho_cutoff, mf.verbose, mf.conv_tol, mf.max_cycle = grid_level, 0.0, 0, 1e-10, 100
    mf.kernel(dm0=dm)
    return int(mf.cycles) if mf.converged else None


def test_metrics(functional, config: TrainConfig, dataset, grid_level):
    names = list(config.data.test)
    systems = [nlxc.System.from_pyscf(dataset.molecule(n).to_mole(dataset.basis), grid_level=grid_level)
               for n in names]
    rows = {}
    for batch in make_batches(systems, max_buckets=1):
        idx = [int(i) for i in np.asarray(batch.index)]
        p_ref = np.stack([np.pad(dataset.entry(names[i], "b3lyp").density_matrix,
                                 [(0, 0)] + [(0, batch.system.overlap.shape[-1] - systems[i].nao)] * 2) for i in idx])
        e, conv, driven, l2, dip, p = map(np.asarray, evaluate(functional, batch.system, p_ref,
                                                              config.training.max_scf_steps))
        for k, (i, m) in enumerate(zip(idx, np.asarray(batch.mask))):
            if not m:
                continue
            n, nao = names[i], systems[i].nao
            mol = dataset.molecule(n).to_mole(dataset.basis)
            rows[n] = {"energy_error_mHa": 1e3 * (e[k] - dataset.entry(n, "b3lyp").energy), "converged": bool(conv[k]),
                       "density_driven_error_mHa": 1e3 * driven[k], "density_l2": float(l2[k]),
                       "dipole_error_D": AU_TO_DEBYE * dip[k],
                       "b3lyp_cycles_from_learned": pyscf_cycles(mol, p[k, 0, :nao, :nao] + p[k, 1, :nao, :nao],
                                                                 grid_level),
                       "b3lyp_cycles_default": pyscf_cycles(mol, None, grid_level)}
    mean = {key: float(np.mean([abs(r[key]) if "error" in key else r[key] for r in rows.values()
                                if r[key] is not None])) for key in next(iter(rows.values())) if key != "converged"}
    return {"per_molecule": rows, "mean": mean}


def merge(base: dict, override: dict) -> dict:
    return {**base, **{section: {**base.get(section, {}), **values} for section, values in override.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(HERE, "config.toml"))
    parser.add_argument("--variants", default=os.path.join(HERE, "variants.toml"))
    parser.add_argument("--quick", action="store_true", help="3 training, 2 test molecules, 2 steps")
    parser.add_argument("--steps", type=int, default=None, help="override [training] steps")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    base = load_config(args.config).to_dict()
    with open(args.variants, "rb") as f:
        variants = tomllib.load(f)
    out = os.path.join(HERE, "results-quick" if args.quick else "results")
    os.makedirs(out, exist_ok=True)
    if args.quick:
        base["data"].update(train=["LiH", "HF", "H2O"], test=["LiF", "CO"])
        base["training"]["steps"] = 2
    if args.steps:
        base["training"]["steps"] = args.steps
    grid_level = 1
    molecules = {m.name: m for m in g2().molecules}
    names = base["data"]["train"] + base["data"]["test"]
    dataset_path = os.path.join(out, os.path.basename(base["data"]["dataset"]))
    dataset = compute_references([molecules[n] for n in names], dataset_path, methods=("b3lyp",), basis="def2-svp",
                                 grid_level=grid_level, progress=False)
    base["data"]["dataset"] = dataset_path
    rows = []
    for name in base["evaluation"]["baselines"]:
        config = TrainConfig.from_dict(base, written=True)
        rows.append({"model": name, "protocol": "baseline",
                     "test": test_metrics(nlxc.get_functional(name), config, dataset, grid_level)})
    for model, model_override in variants["models"].items():
        for protocol, protocol_override in variants["protocols"].items():
            t = time.perf_counter()
            mapping = merge(merge(base, model_override), protocol_override)
            mapping["loss"] = {"atomization": 0.0, **protocol_override["loss"]}  # the protocol's terms only
            mapping["run"] = {**mapping["run"], "output_dir": os.path.join(out, "runs", f"{model}-{protocol.replace('+', '_')}")}
            config = TrainConfig.from_dict(mapping, written=True)
            result = train(config, evaluate=False)
            rows.append({"model": model, "protocol": protocol, "steps": result.steps, "best_step": result.best_step,
                         "train_wall_s": time.perf_counter() - t,
                         "test": test_metrics(result.functional, config, dataset, grid_level)})
            print(f"{model} {protocol}: {rows[-1]['test']['mean']} ({rows[-1]['train_wall_s']:.0f} s)", flush=True)
    lines = [("| model | protocol | test E MAE (mHa) | density-driven error (mHa) | ∫Δρ² (e²/Bohr³) | dipole error (D) "
              "| B3LYP cycles from ρ_θ (minao) |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["test"]["mean"]
        lines.append(f"| {r['model']} | {r['protocol']} | {m['energy_error_mHa']:.2f} | {m['density_driven_error_mHa']:.3f} | "
                     f"{m['density_l2']:.2e} | {m['dipole_error_D']:.3f} | {m['b3lyp_cycles_from_learned']:.1f} "
                     f"({m['b3lyp_cycles_default']:.1f}) |")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"base_config": base, "variants": variants, "rows": rows, "wall_s": time.perf_counter() - t_start,
                   "load_average_at_end": list(os.getloadavg())}, f, indent=1, default=float)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
