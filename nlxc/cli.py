"""The `nlxc` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ._errors import InputError

_BUNDLED = os.path.join(os.path.dirname(__file__), "data")


def _geometry_path(name: str) -> str:
    """A path as given, or the name of a bundled molecule (`water`, `benzene`)."""
    if os.path.exists(name):
        return name
    bundled = os.path.join(_BUNDLED, name if name.endswith(".xyz") else name + ".xyz")
    return bundled if os.path.exists(bundled) else name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlxc", description="Differentiable Kohn–Sham DFT in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    scf = sub.add_parser("scf", help="run a self-consistent field calculation",
                         description="Kohn–Sham (or Hartree–Fock) SCF with density fitting.")
    scf.add_argument("geometry", help="XYZ file in Ångström, or a bundled molecule: water, benzene")
    scf.add_argument("--xc", default="pbe", help="functional, PySCF names: lda/svwn, pbe, blyp, b3lyp, pbe0, r2scan, hf")
    scf.add_argument("--basis", default="def2-svp", help="basis set name known to PySCF (default def2-svp)")
    scf.add_argument("--charge", type=int, default=0, help="total charge Q (default 0)")
    scf.add_argument("--spin", type=int, default=0, help="2S = N_alpha - N_beta (default 0)")
    scf.add_argument("--grid-level", type=int, default=3, help="PySCF grid level 0-9 (default 3)")
    scf.add_argument("--auxbasis", default=None, help="auxiliary basis (default: PySCF's JK-fit choice)")
    scf.add_argument("--max-steps", type=int, default=128, help="maximum SCF iterations (default 128)")
    scf.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    train = sub.add_parser("train", help="train a functional through the SCF from a config file",
                           description="Train the functional of a TOML/YAML config (see nlxc.train); "
                                       "running it again resumes an interrupted run.")
    train.add_argument("config", help="training config, .toml or .yaml")
    train.add_argument("--output-dir", default=None, help="override [run] output_dir")
    train.add_argument("--steps", type=int, default=None, help="override [training] steps")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", help="errors of a trained functional on a benchmark set, beside PySCF",
                              description="MAE/RMSE (kcal/mol) of reaction energies of a benchmark set for a "
                                          "trained functional and for PySCF baselines, same basis and grid.")
    evaluate.add_argument("checkpoint", help="a checkpoint (best.eqx) or run directory written by nlxc train")
    evaluate.add_argument("--set", required=True, dest="set_name",
                          help="benchmark set: default, g2, g2_1, g2_2, w4-11")
    evaluate.add_argument("--molecules", default=None,
                          help="comma-separated reaction names: evaluate only these (default: the whole set)")
    evaluate.add_argument("--baselines", default="lda,pbe,b3lyp",
                          help="comma-separated PySCF functionals to compare with (default lda,pbe,b3lyp; '' for none)")
    evaluate.add_argument("--basis", default=None, help="basis (default: the training dataset's)")
    evaluate.add_argument("--grid-level", type=int, default=None, help="grid level (default: the training dataset's)")
    evaluate.add_argument("--cache", default=None,
                          help="HDF5 file for the PySCF results (default: beside the checkpoint)")
    evaluate.add_argument("--processes", type=int, default=1, help="processes for the PySCF calculations")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def _run_train(args) -> int:
    import dataclasses

    import nlxc  # noqa: F401  (float64)
    from .train import TrainingError, load_config, train

    config = load_config(args.config)
    if args.output_dir is not None:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, output_dir=args.output_dir))
    if args.steps is not None or args.no_progress:
        training = config.training
        if args.steps is not None:
            if args.steps < 1:
                raise InputError(f"--steps must be positive, got {args.steps}")
            training = dataclasses.replace(training, steps=args.steps)
        if args.no_progress:
            training = dataclasses.replace(training, progress=False)
        config = dataclasses.replace(config, training=training)
    t0 = time.perf_counter()
    try:
        result = train(config)
    except KeyboardInterrupt:
        return 130
    except TrainingError as err:
        print(f"nlxc: error: {err}", file=sys.stderr)
        return 1
    print(f"best step {result.best_step} of {result.steps}; checkpoint {os.path.join(result.output_dir, 'best.eqx')}; "
          f"wall time {time.perf_counter() - t0:.0f} s")
    return 0


def _run_evaluate(args) -> int:
    import nlxc  # noqa: F401  (float64)
    from .data import ReferenceDataset, default_dataset
    from .evaluation import evaluate, format_table
    from .train import load_checkpoint

    functional, config = load_checkpoint(args.checkpoint)
    basis, grid_level = args.basis, args.grid_level
    if basis is None or grid_level is None:
        dataset = default_dataset() if config.data.dataset == "default" else ReferenceDataset(config.data.dataset)
        basis = dataset.basis if basis is None else basis
        grid_level = dataset.grid_level if grid_level is None else grid_level
    if not 0 <= grid_level <= 9:
        raise InputError(f"grid level must be between 0 and 9, got {grid_level}")
    checkpoint_dir = args.checkpoint if os.path.isdir(args.checkpoint) else os.path.dirname(args.checkpoint)
    cache = args.cache or os.path.join(checkpoint_dir or ".", f"evaluation-{args.set_name.lower()}-{basis.lower()}-"
                                                              f"{grid_level}.h5")
    molecules = [m.strip() for m in args.molecules.split(",") if m.strip()] if args.molecules else None
    baselines = [m.strip() for m in args.baselines.split(",") if m.strip()]
    t0 = time.perf_counter()
    report = evaluate(functional, set_name=args.set_name, basis=basis, grid_level=grid_level, molecules=molecules,
                      baselines=baselines, cache=cache, max_steps=config.training.max_scf_steps,
                      processes=args.processes)
    report["wall_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(report))
        return 0
    title = (f"{report['set']}: {len(report['reactions'])} reactions, {basis}, grid level {grid_level}; "
             "errors in kcal/mol against the set's references")
    print(format_table(list(report["methods"].items()), title))
    if any(report["excluded"].values()):
        for name, excluded in report["excluded"].items():
            if excluded:
                print(f"{name}: left out {len(excluded)} reactions with a non-converged SCF: {', '.join(excluded)}")
        print()
        print(format_table(list(report["common"].items()), "the same, over the reactions every method solved"))
    print(f"wall time {report['wall_s']:.0f} s")
    return 0


def _run_scf(args) -> int:
    import numpy as np

    import nlxc  # noqa: F401  (float64)
    from .scf import solve
    from .scf.cdiis import CDIIS
    from .system import System, mole_from_xyz
    from .xc import get_functional

    if not 0 <= args.grid_level <= 9:
        raise InputError(f"grid level must be between 0 and 9, got {args.grid_level}")
    if args.max_steps < 1:
        raise InputError(f"--max-steps must be positive, got {args.max_steps}")
    functional = get_functional(args.xc)
    mol = mole_from_xyz(_geometry_path(args.geometry), args.basis, charge=args.charge, spin=args.spin)
    t0 = time.perf_counter()
    system = System.from_pyscf(mol, grid_level=args.grid_level, auxbasis=args.auxbasis)
    t1 = time.perf_counter()
    result = solve(functional, system, CDIIS(), max_steps=args.max_steps)
    result.energy.block_until_ready()
    t2 = time.perf_counter()
    components = result.components.as_dict()
    energy = float(result.energy)
    occupied = np.asarray(result.occupations) > 0
    eps = np.asarray(result.orbital_energies)
    homo = float(max(eps[s][occupied[s]].max() for s in range(2) if occupied[s].any()))
    lumo_candidates = [eps[s][~occupied[s]].min() for s in range(2) if (~occupied[s]).any()]
    out = {
        "energy": energy,
        "converged": bool(result.converged),
        "n_iterations": int(result.n_iterations),
        "components": {k: v for k, v in components.items() if k != "total"},
        "homo": homo,
        "lumo": float(min(lumo_candidates)) if lumo_candidates else None,
        "xc": args.xc,
        "basis": args.basis,
        "charge": args.charge,
        "spin": args.spin,
        "restricted": system.restricted,
        "nao": system.nao,
        "naux": system.naux,
        "ngrid": system.ngrid,
        "grid_level": args.grid_level,
        "units": "Hartree",
        "time_system_s": t1 - t0,
        "time_scf_s": t2 - t1,
    }
    if args.json:
        print(json.dumps(out))
    else:
        kind = "RKS" if system.restricted else "UKS"
        if args.xc.strip().lower() == "hf":
            kind = "RHF" if system.restricted else "UHF"
        print(f"nlxc {kind}/{args.xc}/{args.basis}  ({system.nao} basis functions, {system.naux} auxiliary, "
              f"{system.ngrid} grid points)")
        print(f"  one-electron energy   {components['one_electron']:20.10f} Ha")
        print(f"  Coulomb energy        {components['coulomb']:20.10f} Ha")
        print(f"  XC energy             {components['xc']:20.10f} Ha")
        print(f"  nuclear repulsion     {components['nuclear_repulsion']:20.10f} Ha")
        print(f"  total energy          {energy:20.10f} Ha")
        print(f"  HOMO / LUMO           {homo:12.6f} / {out['lumo'] if out['lumo'] is None else round(out['lumo'], 6)} Ha")
        status = "converged" if out["converged"] else "NOT CONVERGED"
        print(f"  SCF {status} in {out['n_iterations']} iterations "
              f"({t2 - t1:.2f} s including compilation; System built in {t1 - t0:.2f} s)")
    return 0 if out["converged"] else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `nlxc` command; returns the exit status.

    Exit status: 0 on success; 1 if the SCF did not converge (or training failed); 2 for bad
    input, including a bad training config (a one-line message on standard error, no
    traceback); 130 after an interrupted training (a checkpoint was written; run it again to
    resume).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "scf":
            return _run_scf(args)
        if args.command == "train":
            return _run_train(args)
        if args.command == "evaluate":
            return _run_evaluate(args)
    except InputError as err:
        print(f"nlxc: error: {err}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
