"""The `nlxc` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator

from ._errors import InputError

_BUNDLED = os.path.join(os.path.dirname(__file__), "data")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

# What the errors of `nlxc evaluate --set NAME` are measured against (see nlxc.data.g2,
# nlxc.data.default_set and nlxc.data.w4_11).
_SET_REFERENCES = {
    "default": "experimental G2-1 atomization energies (ASE's G2 data; Curtiss et al. 1991)",
    "g2": "experimental G2 atomization energies (ASE's G2 data; Curtiss et al. 1991, 1997)",
    "g2_1": "experimental G2-1 atomization energies (ASE's G2 data; Curtiss et al. 1991)",
    "g2_2": "experimental G2-2 atomization energies (ASE's G2 data; Curtiss et al. 1997)",
    "w4-11": "W4-11 atomization energies (W4 theory, nonrelativistic, vibrationless; Karton et al. 2011)",
}
# PySCF's "Basis may be available in basis-set-exchange ..." hint, as a -W/PYTHONWARNINGS filter
# (a literal message prefix) for the worker processes that `--processes N` spawns.
_BSE_FILTERS = ("ignore:Basis may be available in basis-set-exchange:UserWarning",
                "ignore:ECP may be available in basis-set-exchange:UserWarning")


@contextlib.contextmanager
def _quiet_pyscf_hints() -> Iterator[None]:
    """Silence PySCF's "install basis-set-exchange" warning (only that one), here and in the
    worker processes started inside the block."""
    from .system import quiet_basis_lookup

    previous = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(([previous] if previous else []) + list(_BSE_FILTERS))
    try:
        with quiet_basis_lookup():
            yield
    finally:
        if previous is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = previous


def _set_key(name: str) -> str:
    key = name.strip().lower()
    return key.replace("_", "-") if key.startswith("w4") else key


def _names(text: str | None) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()] if text else []


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
    scf.add_argument("--tddft", type=int, default=None, metavar="N",
                     help="also compute the N lowest excitation energies by linear-response TDDFT (nlxc.response)")
    scf.add_argument("--tda", action="store_true", help="with --tddft: the Tamm-Dancoff approximation")
    scf.add_argument("--triplet", action="store_true",
                     help="with --tddft: triplet instead of singlet excitations (closed shells)")
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
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars (on standard error)")
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
    except KeyboardInterrupt as err:
        print("nlxc: interrupted", file=sys.stderr)
        if getattr(err, "pending", False):
            # XLA is still compiling or running the interrupted step in its own threads, and Python's
            # normal shutdown would wait for them and can crash there; the checkpoint is written.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except TrainingError as err:
        print(f"nlxc: error: {err}", file=sys.stderr)
        return 1
    print(f"best step {result.best_step} of {result.steps}; checkpoint {os.path.join(result.output_dir, 'best.eqx')}; "
          f"wall time {time.perf_counter() - t0:.0f} s")
    return 0


def _run_evaluate(args) -> int:
    import nlxc  # noqa: F401  (float64)
    from .data import ReferenceComputationError, ReferenceDataset, default_dataset
    from .evaluation import check_request, evaluate, format_table
    from .train import load_checkpoint

    # Everything that can be checked without the checkpoint, before anything is computed.
    molecules = _names(args.molecules) or None
    baselines = _names(args.baselines)
    if args.processes < 1:
        raise InputError(f"--processes must be positive, got {args.processes}")
    check_request(args.set_name, molecules=molecules, baselines=baselines, basis=args.basis,
                  grid_level=args.grid_level)

    functional, config = load_checkpoint(args.checkpoint)
    basis, grid_level = args.basis, args.grid_level
    if basis is None or grid_level is None:
        dataset = default_dataset() if config.data.dataset == "default" else ReferenceDataset(config.data.dataset)
        basis = dataset.basis if basis is None else basis
        grid_level = dataset.grid_level if grid_level is None else grid_level
    checkpoint_dir = args.checkpoint if os.path.isdir(args.checkpoint) else os.path.dirname(args.checkpoint)
    cache = args.cache or os.path.join(checkpoint_dir or ".", f"evaluation-{args.set_name.lower()}-{basis.lower()}-"
                                                              f"{grid_level}.h5")
    t0 = time.perf_counter()
    try:
        report = evaluate(functional, set_name=args.set_name, basis=basis, grid_level=grid_level,
                          molecules=molecules, baselines=baselines, cache=cache,
                          max_steps=config.training.max_scf_steps, processes=args.processes,
                          progress=not args.no_progress)
    except ReferenceComputationError as err:
        print(f"nlxc: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_FAILED
    report["wall_s"] = time.perf_counter() - t0
    references = _SET_REFERENCES[_set_key(args.set_name)]
    report["references"] = references
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    title = (f"{report['set']}: {len(report['reactions'])} reactions, {basis}, grid level {grid_level}; "
             f"errors in kcal/mol against {references}")
    print(format_table(list(report["methods"].items()), title))
    if any(report["excluded"].values()):
        for name, excluded in report["excluded"].items():
            if excluded:
                print(f"{name}: left out {len(excluded)} reactions with a non-converged SCF: {', '.join(excluded)}")
        print()
        print(format_table(list(report["common"].items()), "the same, over the reactions every method solved"))
    print(f"wall time {report['wall_s']:.0f} s")
    return EXIT_OK


def _run_scf(args) -> int:
    import numpy as np

    import nlxc  # noqa: F401  (float64)
    from .scf import solve
    from .scf import CDIIS
    from .system import System, mole_from_xyz
    from .models import get_functional

    if not 0 <= args.grid_level <= 9:
        raise InputError(f"grid level must be between 0 and 9, got {args.grid_level}")
    if args.max_steps < 1:
        raise InputError(f"--max-steps must be positive, got {args.max_steps}")
    _check_tddft_options(args)
    functional = get_functional(args.xc)
    mol = mole_from_xyz(_geometry_path(args.geometry), args.basis, charge=args.charge, spin=args.spin)
    t0 = time.perf_counter()
    system = System.from_pyscf(mol, grid_level=args.grid_level, auxbasis=args.auxbasis)
    if args.tddft is not None:
        _check_tddft_space(args.tddft, mol.nelec, system)
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
    excitations = None
    if args.tddft is not None and out["converged"]:
        from .response import tddft

        try:
            excitations = tddft(functional, system, result, args.tddft, tda=args.tda, triplet=args.triplet)
        except np.linalg.LinAlgError as err:  # an unstable reference: imaginary RPA roots
            print(f"nlxc: error: TDDFT failed: {err}; try --tda", file=sys.stderr)
            return EXIT_FAILED
        out["excitation_energies"] = [float(w) for w in np.asarray(excitations.energies)]
        out["oscillator_strengths"] = [float(f) for f in np.asarray(excitations.oscillator_strengths)]
        out["tddft"] = {"method": "TDA" if args.tda else "RPA", "spin": excitations.spin,
                        "converged": bool(excitations.converged), "time_s": time.perf_counter() - t2}
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
        if excitations is not None:
            _print_excitations(out)
    ok = out["converged"] and (excitations is None or out["tddft"]["converged"])
    return EXIT_OK if ok else EXIT_FAILED


def _check_tddft_options(args) -> None:
    """One-line errors for the TDDFT options, before anything is computed."""
    if args.tddft is None:
        if args.tda or args.triplet:
            raise InputError("--tda and --triplet need --tddft N (the number of excited states)")
        return
    if args.tddft < 1:
        raise InputError(f"--tddft needs a positive number of excited states, got {args.tddft}")
    if args.triplet and args.spin != 0:
        raise InputError(f"--triplet needs a closed-shell (restricted) reference, but --spin is {args.spin}; "
                         "an open-shell --tddft gives all spin states together")


def _check_tddft_space(n_states: int, nelec: tuple[int, int], system) -> None:
    """At most as many states as single excitations (occupied x virtual, per spin)."""
    n_alpha, n_beta = nelec
    if system.restricted:
        dim = n_alpha * (system.nmo - n_alpha)
    else:
        dim = n_alpha * (system.nmo - n_alpha) + n_beta * (system.nmo - n_beta)
    if n_states > dim:
        raise InputError(f"--tddft {n_states}: there are only {dim} single excitations in this basis")


def _print_excitations(out) -> None:
    from pyscf.data.nist import HARTREE2EV

    tddft = out["tddft"]
    status = "" if tddft["converged"] else "  (NOT CONVERGED)"
    print(f"  TDDFT ({tddft['method']}, {tddft['spin']}){status}, {tddft['time_s']:.2f} s")
    print("    state   energy / Ha      energy / eV   oscillator strength")
    for n, (w, f) in enumerate(zip(out["excitation_energies"], out["oscillator_strengths"]), start=1):
        print(f"    {n:5d}  {w:12.6f}  {w * HARTREE2EV:14.4f}  {f:20.6f}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `nlxc` command (`nlxc scf`, `nlxc train`, `nlxc evaluate`).

    **Arguments:** `argv`, the command-line arguments without the program name (default
    `sys.argv[1:]`).

    **Returns:** the exit status:

    - `0`: success.
    - `1`: the SCF (or, with `--tddft`, the excitation eigensolver) did not converge (`nlxc scf`,
      which still prints its result, marked `NOT CONVERGED`), training failed (`nlxc train`), or some PySCF reference calculations
      of `nlxc evaluate` failed; a one-line message on standard error.
    - `2`: bad input: an unreadable or ill-formed geometry, an unknown element, basis,
      auxiliary basis, functional, benchmark set, reaction or baseline, a charge/spin
      inconsistent with the electron count or with more electrons in a spin channel than
      orbitals, a bad option value, a bad training config or dataset file. One line
      `nlxc: error: <message>` on standard error, no traceback, and nothing computed after
      the check. (argparse's own usage errors, such as a missing argument, also exit with 2.)
    - `130`: interrupted (Ctrl-C); an interrupted training has written a checkpoint, and
      running it again resumes.

    PySCF's hint to install basis-set-exchange is not shown; other warnings are.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with _quiet_pyscf_hints():
            if args.command == "scf":
                return _run_scf(args)
            if args.command == "train":
                return _run_train(args)
            if args.command == "evaluate":
                return _run_evaluate(args)
    except InputError as err:
        print(f"nlxc: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("nlxc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
