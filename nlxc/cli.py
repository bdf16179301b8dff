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
    return parser


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

    Exit status: 0 on success, 1 if the SCF did not converge, 2 for bad input (a one-line
    message on standard error, no traceback).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "scf":
            return _run_scf(args)
    except InputError as err:
        print(f"nlxc: error: {err}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
