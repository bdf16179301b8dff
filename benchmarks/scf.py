"""SCF wall time: nlxc's jitted `solve` beside PySCF's density-fitted RKS on the same work.

Same molecule, basis (def2-SVP), grid (PySCF level, default 3), auxiliary basis (PySCF's default
JK-fit basis) and initial guess (minao). For PySCF the grid and the DF tensor are built before the
clock starts; for nlxc the System is built before the clock starts. nlxc's compile time is shown
separately (first call minus a second, already compiled, call). Each case runs in a fresh
subprocess, so the peak resident memory (ru_maxrss) belongs to that case alone.

nlxc runs its default solver (`nlxc.solve(functional, system)`: CDIIS, converged when
max|D(F(P)) − P| < 1e-8 per spin, D the aufbau density matrix of F). PySCF runs its default CDIIS
(start cycle 1, 8 vectors, no damping, no level shift) with the same convergence test
(`mf.check_convergence`: the same max|D(F(P)) − P| of its current density, one extra
diagonalisation per cycle), so both stop at the same accuracy; `--pyscf-criterion own` gives
PySCF its default instead (conv_tol 1e-9 on the energy change and √conv_tol on the orbital
gradient, which on these molecules stops at max|D(F(P)) − P| ≈ 1e-6). Fock builds are counted
on both sides: PySCF's calls of `get_veff` (the guess's, one per cycle and the final check's),
nlxc's iterations plus the final Fock matrix of the result.

    python benchmarks/scf.py [--molecules h2o c6h6 pyrazine_dimer] [--xc pbe b3lyp]
                             [--grid-level 3] [--pyscf-criterion matched|own]
                             [--out benchmarks/results/scf.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

MOLECULES = ("h2o", "c6h6", "pyrazine_dimer")


def _geometry(name):
    """(ASE Atoms) for a benchmark molecule: water and benzene from ASE's G2, the pyrazine dimer
    (C8H8N4, 20 atoms) from ASE's S22 set."""
    from ase.build import molecule
    from ase.collections import s22

    if name == "h2o":
        return molecule("H2O")
    if name == "c6h6":
        return molecule("C6H6")
    if name == "pyrazine_dimer":
        return s22["Pyrazine_dimer"]
    raise SystemExit(f"unknown molecule {name}")


def _mole(name, basis):
    import nlxc

    atoms = _geometry(name)
    geometry = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.get_positions())]
    return nlxc.build_mole(geometry, basis)


TOLERANCE = 1e-8  # max|D(F(P)) − P| per spin: nlxc's default CDIIS atol


def run_pyscf(name, xc, basis, grid_level, criterion="matched"):
    import numpy as np
    import scipy.linalg
    from pyscf import df, dft, scf

    mol = _mole(name, basis)
    # the same auxiliary basis as nlxc's System (PySCF's own density_fit() would choose a J-fit
    # basis for pure functionals)
    mf = dft.RKS(mol, xc=xc).density_fit(auxbasis=df.make_auxbasis(mol))
    mf.grids.level = grid_level
    mf.conv_tol = 1e-9
    mf.max_cycle = 100
    mf.grids.build()
    mf.with_df.build()
    dm0 = scf.hf.init_guess_by_minao(mol)
    s1e = mf.get_ovlp()
    nocc = mol.nelectron // 2

    def residual(env):
        """max|D(F(P)) − P| per spin of the cycle's density P (nlxc's convergence measure)."""
        _, c = scipy.linalg.eigh(env["fock"], s1e)
        return float(np.abs(c[:, :nocc] @ c[:, :nocc].T - env["dm"] / 2).max())

    if criterion == "matched":
        mf.check_convergence = lambda env: residual(env) < TOLERANCE
    builds = []
    get_veff = mf.get_veff
    mf.get_veff = lambda *a, **k: (builds.append(1), get_veff(*a, **k))[1]
    cycles = []
    mf.callback = lambda env: cycles.append(env["cycle"])
    t0 = time.perf_counter()
    energy = mf.kernel(dm0=dm0)
    t1 = time.perf_counter()
    return {"energy": float(energy), "converged": bool(mf.converged), "iterations": len(cycles),
            "fock_builds": len(builds), "criterion": criterion, "solve_s": t1 - t0, "nao": mol.nao,
            "ngrid": int((mf.grids.weights != 0).sum()), "naux": int(mf.with_df.get_naoaux())}


def run_nlxc(name, xc, basis, grid_level, criterion=None):
    import jax

    import nlxc

    mol = _mole(name, basis)
    t0 = time.perf_counter()
    system = nlxc.System.from_pyscf(mol, grid_level=grid_level)
    jax.block_until_ready(system)
    t1 = time.perf_counter()
    functional = nlxc.get_functional(xc)
    # the default solver (CDIIS, max|D(F(P)) − P| < 1e-8), fallback and guess
    first = nlxc.solve(functional, system)
    jax.block_until_ready(first.energy)
    t2 = time.perf_counter()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        result = nlxc.solve(functional, system)
        jax.block_until_ready(result.energy)
        times.append(time.perf_counter() - t)
    solve_s = min(times)
    return {"energy": float(result.energy), "converged": bool(result.converged),
            "iterations": int(result.n_iterations), "fock_builds": int(result.n_iterations) + 1,
            "strategy": int(result.strategy), "solve_s": solve_s,
            "compile_s": max(t2 - t1 - solve_s, 0.0), "system_s": t1 - t0, "nao": system.nao,
            "ngrid": system.ngrid, "naux": system.naux}


def _child(args):
    fn = run_nlxc if args.code == "nlxc" else run_pyscf
    out = fn(args.molecule, args.xc_one, args.basis, args.grid_level, args.pyscf_criterion)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES))
    parser.add_argument("--xc", nargs="+", default=["pbe", "b3lyp"])
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--grid-level", type=int, default=3)
    parser.add_argument("--pyscf-criterion", choices=["matched", "own"], default="matched",
                        help="PySCF stops at nlxc's max|D(F(P)) - P| < 1e-8 (matched) or at its own default")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "scf.json"))
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--molecule", help=argparse.SUPPRESS)
    parser.add_argument("--xc-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.code:
        return _child(args)

    rows = []
    for name in args.molecules:
        for xc in args.xc:
            row = {"molecule": name, "xc": xc}
            for code in ("pyscf", "nlxc"):
                cmd = [sys.executable, __file__, "--code", code, "--molecule", name, "--xc-one", xc,
                       "--basis", args.basis, "--grid-level", str(args.grid_level),
                       "--pyscf-criterion", args.pyscf_criterion]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    raise SystemExit(f"{code} {name} {xc} failed:\n{proc.stderr[-2000:]}")
                row[code] = json.loads(line[0][7:])
            row["delta_e"] = row["nlxc"]["energy"] - row["pyscf"]["energy"]
            row["speedup"] = row["pyscf"]["solve_s"] / row["nlxc"]["solve_s"]
            rows.append(row)
            _print_row(row, header=len(rows) == 1)

    meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "basis": args.basis, "grid_level": args.grid_level,
            "convergence": (f"both: max|D(F(P)) - P| < {TOLERANCE:g} per spin" if args.pyscf_criterion == "matched"
                            else f"nlxc: max|D(F(P)) - P| < {TOLERANCE:g}; PySCF: conv_tol 1e-9 (its default test)"),
            "load_average": os.getloadavg()}
    try:
        import jax
        import pyscf

        meta.update(jax=jax.__version__, pyscf=pyscf.__version__, device=str(jax.devices()[0]))
    except Exception:  # pragma: no cover
        pass
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    print(f"\nwrote {args.out}")


def _print_row(row, header):
    if header:
        print(f"{'molecule':<15}{'xc':<7}{'nao':>5}{'ngrid':>8}{'naux':>6} | {'PySCF s':>8}{'F':>4}{'MB':>7} | "
              f"{'nlxc s':>8}{'compile s':>10}{'F':>4}{'MB':>7} | {'speedup':>7}{'|dE| Ha':>10}   (F: Fock builds)")
    p, n = row["pyscf"], row["nlxc"]
    print(f"{row['molecule']:<15}{row['xc']:<7}{n['nao']:>5}{n['ngrid']:>8}{n['naux']:>6} | {p['solve_s']:>8.2f}"
          f"{p['fock_builds']:>4}{p['peak_rss_mb']:>7.0f} | {n['solve_s']:>8.2f}{n['compile_s']:>10.2f}"
          f"{n['fock_builds']:>4}{n['peak_rss_mb']:>7.0f} | {row['speedup']:>7.2f}{abs(row['delta_e']):>10.1e}",
          flush=True)


if __name__ == "__main__":
    main()
