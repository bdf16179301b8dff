"""The `nlxc` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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
# The default basis of a periodic `nlxc scf` (GTH valence basis with the widest coverage in PySCF).
_PERIODIC_BASIS = "gth-dzvp-molopt-sr"
_PERIODIC_OPTIONS = ("pseudo", "kpts", "smearing", "mesh", "scales")
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
    scf.add_argument("geometry", help="XYZ file in Ångström, or a bundled molecule: water, benzene; or a crystal "
                                      "structure with a cell that ASE reads (CIF, POSCAR, extended XYZ), Ångström")
    scf.add_argument("--xc", default="pbe", help="functional, PySCF names: lda/svwn, pbe, blyp, b3lyp, pbe0, r2scan, hf")
    scf.add_argument("--basis", default=None, help="basis set name known to PySCF (default def2-svp; for a crystal "
                                                   f"{_PERIODIC_BASIS})")
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
    periodic = scf.add_argument_group("crystals (nlxc.pbc; any of these, or a structure file with a cell, "
                                      "makes the calculation periodic)")
    periodic.add_argument("--pseudo", default=None, help="GTH pseudopotential: gth-pade (LDA), gth-pbe, ...")
    periodic.add_argument("--kpts", nargs="+", default=None, metavar="N",
                          help="Monkhorst-Pack k-mesh, three positive integers (default 1 1 1, the Γ point)")
    periodic.add_argument("--smearing", default=None, metavar="WIDTH",
                          help="Fermi-Dirac smearing width in Hartree (metals; default none)")
    periodic.add_argument("--mesh", nargs="+", default=None, metavar="N",
                          help="PySCF's Cell.mesh, three positive integers (default PySCF's for the cell)")
    periodic.add_argument("--eos", action="store_true",
                          help="lattice scan: E(V) over scaled cells and ASE's equation-of-state fit "
                               "(lattice constant, bulk modulus)")
    periodic.add_argument("--scales", nargs="+", default=None, metavar="S",
                          help="with --eos: linear scale factors of the cell (at least 5; default 0.97 ... 1.03, 7)")

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
    from .data import ReferenceDataset, default_dataset
    from .evaluation import check_request, evaluate, format_report
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
    # a failed PySCF baseline calculation (or a non-converged nlxc SCF) is in the report, not an error
    report = evaluate(functional, set_name=args.set_name, basis=basis, grid_level=grid_level,
                      molecules=molecules, baselines=baselines, cache=cache,
                      max_steps=config.training.max_scf_steps, processes=args.processes,
                      progress=not args.no_progress)
    report["wall_s"] = time.perf_counter() - t0
    references = _SET_REFERENCES[_set_key(args.set_name)]
    report["references"] = references
    if args.json:
        print(_json_text(report))
        return EXIT_OK
    title = (f"{report['set']}: {len(report['reactions'])} reactions, {basis}, grid level {grid_level}; "
             f"errors in kcal/mol against {references}")
    print(format_report(report, title))
    print(f"wall time {report['wall_s']:.0f} s")
    return EXIT_OK


def _finite_or_null(obj):
    """`obj` with every non-finite float (a statistic over no values, a failed SCF's energy)
    replaced by `None`."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def _json_text(obj) -> str:
    """Strict JSON (RFC 8259) for `--json`: NaN and ±inf become `null`."""
    return json.dumps(_finite_or_null(obj), allow_nan=False)


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
        print(_json_text(out))
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


def _is_periodic(args) -> bool:
    """`nlxc scf` on a crystal: a periodic option was given, or the structure file has a cell
    (a file that is not XYZ, or an extended XYZ file with `Lattice=`)."""
    if args.eos or any(getattr(args, name) is not None for name in _PERIODIC_OPTIONS):
        return True
    path = _geometry_path(args.geometry)
    if not os.path.isfile(path):
        return False
    if not path.lower().endswith(".xyz"):
        return True
    try:
        with open(path, encoding="utf-8") as f:
            f.readline()
            return "lattice=" in f.readline().lower()
    except (OSError, UnicodeDecodeError):
        return False


def _three_positive(values: list[str] | None, option: str) -> tuple[int, int, int] | None:
    """`--mesh N N N` as three positive integers (one-line error otherwise)."""
    if values is None:
        return None
    if len(values) != 3 or not all(v.strip().lstrip("+").isdigit() and int(v) > 0 for v in values):
        raise InputError(f"{option} must be three positive integers, got {' '.join(values)}")
    return int(values[0]), int(values[1]), int(values[2])


def _smearing_width(text: str | None) -> float | None:
    import math

    if text is None:
        return None
    try:
        width = float(text)
    except ValueError:
        raise InputError(f"--smearing must be a Fermi-Dirac width in Hartree, got {text!r}") from None
    if not math.isfinite(width) or width <= 0:
        raise InputError(f"--smearing must be a positive width in Hartree, got {text}")
    return width


def _scale_factors(texts: list[str] | None) -> list[float] | None:
    if texts is None:
        return None
    try:
        return [float(t) for t in texts]
    except ValueError:
        raise InputError(f"--scales must be numbers, got {' '.join(texts)}") from None


def _run_periodic_scf(args) -> int:
    """`nlxc scf STRUCTURE --pseudo NAME --kpts N N N ...`: the k-point SCF of a crystal (nlxc.pbc),
    or with `--eos` a lattice scan and ASE's equation-of-state fit."""
    import numpy as np

    import nlxc  # noqa: F401  (float64)
    from .models import get_functional
    from .pbc import PeriodicSystem, build_cell, check_functional, check_kmesh, solve
    from .scf import FermiDirac

    for name, given in (("--tddft", args.tddft is not None), ("--tda", args.tda), ("--triplet", args.triplet),
                        ("--auxbasis", args.auxbasis is not None)):
        if given:
            raise InputError(f"{name} is for molecules; a crystal (--pseudo/--kpts or a structure with a cell) "
                             "uses PySCF's GDF and no TDDFT")
    if args.max_steps < 1:
        raise InputError(f"--max-steps must be positive, got {args.max_steps}")
    if args.scales is not None and not args.eos:
        raise InputError("--scales needs --eos (the lattice scan)")
    kmesh = check_kmesh(args.kpts) if args.kpts is not None else (1, 1, 1)
    mesh = _three_positive(args.mesh, "--mesh")
    width = _smearing_width(args.smearing)
    scales = _scale_factors(args.scales)
    basis = args.basis or _PERIODIC_BASIS
    functional = get_functional(args.xc)
    check_functional(functional)
    structure = _geometry_path(args.geometry)
    t0 = time.perf_counter()
    cell = build_cell(structure, basis, args.pseudo, charge=args.charge, spin=args.spin,
                      kmesh=kmesh if args.kpts is not None else None, smearing=width, mesh=mesh)
    setup = {"xc": args.xc, "basis": basis, "pseudo": args.pseudo, "kpts": list(kmesh), "smearing": width,
             "charge": args.charge, "spin": args.spin}
    if args.eos:
        return _run_eos(args, functional, structure, basis, kmesh, width, mesh, scales, setup, t0)
    system = PeriodicSystem.from_cell(cell, kmesh)
    t1 = time.perf_counter()
    result = solve(functional, system, smearing=None if width is None else FermiDirac(width),
                   max_steps=args.max_steps)
    result.energy.block_until_ready()
    t2 = time.perf_counter()
    components = result.components.as_dict()
    out = {
        "energy": float(result.energy),
        "converged": bool(result.converged),
        "n_iterations": int(result.n_iterations),
        "components": {k: v for k, v in components.items() if k != "total"},
        "free_energy": float(result.free_energy),
        "entropy": float(result.entropy),
        "fermi_level": float(result.fermi_level),
        **setup,
        "restricted": bool(system.restricted),
        "natom": int(cell.natm),
        "n_electrons": int(cell.nelectron),
        "nk": system.nk,
        "nao": system.nao,
        "naux": system.naux,
        "ngrid": system.ngrid,
        "mesh": [int(n) for n in cell.mesh],
        "volume_angstrom3": float(cell.vol) * float(np.power(nlxc.constants.ANGSTROM_TO_BOHR, -3)),
        "units": "Hartree per cell",
        "time_system_s": t1 - t0,
        "time_scf_s": t2 - t1,
    }
    if args.json:
        print(_json_text(out))
    else:
        kind = "KRKS" if system.restricted else "KUKS"
        smeared = f", Fermi-Dirac smearing {width} Ha" if width is not None else ""
        print(f"nlxc {kind}/{args.xc}/{basis}/{args.pseudo}  ({cell.natm} atoms, {cell.nelectron} electrons per cell, "
              f"k-mesh {'x'.join(map(str, kmesh))}, {system.nao} basis functions, {system.naux} auxiliary, "
              f"{system.ngrid} grid points{smeared})")
        print(f"  one-electron energy   {components['one_electron']:20.10f} Ha")
        print(f"  Coulomb energy        {components['coulomb']:20.10f} Ha")
        print(f"  XC energy             {components['xc']:20.10f} Ha")
        print(f"  nuclear (Ewald)       {components['nuclear_repulsion']:20.10f} Ha")
        print(f"  total energy          {out['energy']:20.10f} Ha per cell")
        if width is not None:
            print(f"  free energy E - TS    {out['free_energy']:20.10f} Ha per cell")
        print(f"  Fermi level           {out['fermi_level']:20.10f} Ha")
        status = "converged" if out["converged"] else "NOT CONVERGED"
        print(f"  SCF {status} in {out['n_iterations']} iterations "
              f"({t2 - t1:.2f} s including compilation; system built in {t1 - t0:.2f} s)")
    return EXIT_OK if out["converged"] else EXIT_FAILED


def _run_eos(args, functional, structure, basis, kmesh, width, mesh, scales, setup, t0) -> int:
    """`nlxc scf STRUCTURE --eos`: E(V) over scaled cells and ASE's Birch-Murnaghan fit."""
    from .pbc import DEFAULT_SCALES, PeriodicEnergy, SCFNotConvergedError, eos_scan

    scales = list(DEFAULT_SCALES) if scales is None else scales
    energy = PeriodicEnergy(functional, basis, args.pseudo, kmesh, smearing=width, charge=args.charge,
                            spin=args.spin, mesh=mesh, max_steps=args.max_steps)
    if not args.json:
        print(f"nlxc lattice scan {args.xc}/{basis}/{args.pseudo}, k-mesh {'x'.join(map(str, kmesh))}")
        print("     scale   energy / Ha per cell")

    def progress(scale: float, value: float) -> None:
        if not args.json:
            print(f"  {scale:8.4f}   {value:20.10f}", flush=True)

    try:
        fit = eos_scan(energy, structure, scales, progress=progress)
    except SCFNotConvergedError as err:
        print(f"nlxc: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    out = {**fit.as_dict(), **setup, "mesh": None if mesh is None else list(mesh),
           "time_s": time.perf_counter() - t0}
    if args.json:
        print(_json_text(out))
        return EXIT_OK
    bulk = "n/a (not all lattice vectors scaled)" if fit.bulk_modulus is None else f"{fit.bulk_modulus:.2f} GPa"
    print(f"  {fit.eos} fit (ASE): lattice constant {fit.lattice_constant:.5f} Å (scale {fit.scale:.5f}), "
          f"volume {fit.volume:.4f} Å³ per cell, bulk modulus {bulk}, E0 {fit.energy:.10f} Ha per cell")
    print(f"  wall time {out['time_s']:.0f} s")
    return EXIT_OK


def _enable_compilation_cache() -> None:
    """JAX's persistent compilation cache for the commands' compiled programs, so that a second
    run (a resumed or repeated training, an evaluation) loads them instead of compiling again:
    the directory in `JAX_COMPILATION_CACHE_DIR` when set (JAX reads it itself), else
    `$XDG_CACHE_HOME/nlxc/jax-compilation-cache/<tag>` (`~/.cache/...`; the tag names the Python,
    JAX and jaxlib versions, as the test suite's cache does); `NLXC_NO_COMPILATION_CACHE=1`
    leaves it off. Only the command line sets this; `import nlxc` changes no JAX setting but float64."""
    if os.environ.get("NLXC_NO_COMPILATION_CACHE") == "1" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    from importlib.metadata import version

    import jax

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-jax{version('jax')}-jaxlib{version('jaxlib')}"
    jax.config.update("jax_compilation_cache_dir", os.path.join(base, "nlxc", "jax-compilation-cache", tag))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `nlxc` command (`nlxc scf`, `nlxc train`, `nlxc evaluate`).

    **Arguments:** `argv`, the command-line arguments without the program name (default
    `sys.argv[1:]`).

    **Returns:** the exit status:

    - `0`: success.
    - `1`: the SCF (or, with `--tddft`, the excitation eigensolver) did not converge (`nlxc scf`,
      which still prints its result, marked `NOT CONVERGED`), or training failed (`nlxc train`);
      a one-line message on standard error. (`nlxc evaluate` exits with 0 when some PySCF
      baseline calculations fail or some SCFs do not converge: the table marks them and leaves
      their reactions out of that method's statistics, saying so.)
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
    _enable_compilation_cache()
    try:
        with _quiet_pyscf_hints():
            if args.command == "scf":
                if _is_periodic(args):
                    return _run_periodic_scf(args)
                if args.basis is None:
                    args.basis = "def2-svp"
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
