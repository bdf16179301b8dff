"""k-point SCF wall time: nlxc's jitted `nlxc.pbc.solve` beside PySCF's `KRKS(...).density_fit()`.

The same cell (built by `nlxc.pbc.build_cell` from an ASE structure), basis, GTH pseudopotential,
Monkhorst–Pack k-mesh, grid (PySCF's default `KRKS` grid for the cell) and Gaussian density
fitting (PySCF's GDF with its default auxiliary basis), and the same MINAO initial guess. For
PySCF the grid and the GDF tensors are built before the clock starts; for nlxc the
PeriodicSystem (which runs the same PySCF builders) is built before the clock starts and timed
apart. nlxc's compile time is shown separately (first call minus a second, already compiled,
call). Each case runs in a fresh subprocess, so the peak resident memory (ru_maxrss) belongs to
that case alone.

    python benchmarks/periodic.py [--cases si al] [--xc pbe] [--kpts 2 2 2]
                                  [--out benchmarks/results/periodic.json]

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

# name: (ASE builder arguments, basis, pseudopotential, Fermi-Dirac width in Hartree or None)
CASES = {
    "si": (("Si", "diamond", 5.43), "gth-szv", "gth-pade", None),
    "c": (("C", "diamond", 3.567), "gth-szv", "gth-pade", None),
    "al": (("Al", "fcc", 4.05), "gth-szv", "gth-pade", 0.01),
}


def _cell(name):
    from ase.build import bulk

    import nlxc.pbc

    (symbol, structure, a), basis, pseudo, width = CASES[name]
    return nlxc.pbc.build_cell(bulk(symbol, structure, a=a), basis, pseudo, smearing=width), width


def run_pyscf(name, xc, kmesh):
    from pyscf.pbc import dft
    from pyscf.pbc.scf.addons import smearing_

    cell, width = _cell(name)
    kpts = cell.make_kpts(kmesh)
    mf = dft.KRKS(cell, kpts, xc=xc).density_fit()
    if width is not None:
        mf = smearing_(mf, sigma=width, method="fermi")
    mf.conv_tol = 1e-9
    t0 = time.perf_counter()
    mf.grids.build()
    mf.with_df.build()
    t1 = time.perf_counter()
    cycles = []
    mf.callback = lambda env: cycles.append(env["cycle"])
    energy = mf.kernel()
    t2 = time.perf_counter()
    return {"energy": float(energy), "converged": bool(mf.converged), "iterations": len(cycles),
            "setup_s": t1 - t0, "solve_s": t2 - t1, "nao": cell.nao, "nk": len(kpts),
            "ngrid": int(mf.grids.weights.size), "naux": int(mf.with_df.auxcell.nao)}


def run_nlxc(name, xc, kmesh):
    import jax

    import nlxc
    import nlxc.pbc as pbc
    from nlxc.scf import FermiDirac

    cell, width = _cell(name)
    t0 = time.perf_counter()
    system = pbc.PeriodicSystem.from_cell(cell, kmesh)
    jax.block_until_ready(system)
    t1 = time.perf_counter()
    functional = nlxc.get_functional(xc)
    smearing = None if width is None else FermiDirac(width)
    first = pbc.solve(functional, system, smearing=smearing)
    jax.block_until_ready(first.energy)
    t2 = time.perf_counter()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        result = pbc.solve(functional, system, smearing=smearing)
        jax.block_until_ready(result.energy)
        times.append(time.perf_counter() - t)
    solve_s = min(times)
    return {"energy": float(result.energy), "converged": bool(result.converged),
            "iterations": int(result.n_iterations), "solve_s": solve_s,
            "compile_s": max(t2 - t1 - solve_s, 0.0), "setup_s": t1 - t0, "nao": system.nao, "nk": system.nk,
            "ngrid": system.ngrid, "naux": system.naux}


def _child(args):
    fn = run_nlxc if args.code == "nlxc" else run_pyscf
    out = fn(args.case, args.xc_one, tuple(args.kpts))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def _print_row(row, header):
    if header:
        print(f"{'case':<5} {'xc':<5} {'k-mesh':<7} {'nao':>4} {'nk':>3} {'ngrid':>7} | "
              f"{'PySCF setup/s':>13} {'SCF/s':>7} {'it':>3} {'MB':>6} | "
              f"{'nlxc setup/s':>12} {'compile/s':>9} {'SCF/s':>7} {'it':>3} {'MB':>6} | {'ΔE/Ha':>9} {'speed-up':>8}")
    p, n = row["pyscf"], row["nlxc"]
    print(f"{row['case']:<5} {row['xc']:<5} {'x'.join(map(str, row['kpts'])):<7} {n['nao']:>4} {n['nk']:>3} "
          f"{n['ngrid']:>7} | {p['setup_s']:>13.1f} {p['solve_s']:>7.2f} {p['iterations']:>3} "
          f"{p['peak_rss_mb']:>6.0f} | {n['setup_s']:>12.1f} {n['compile_s']:>9.1f} {n['solve_s']:>7.2f} "
          f"{n['iterations']:>3} {n['peak_rss_mb']:>6.0f} | {row['delta_e']:>9.1e} {row['speedup']:>8.2f}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["si", "al"], choices=sorted(CASES))
    parser.add_argument("--xc", nargs="+", default=["pbe"])
    parser.add_argument("--kpts", nargs=3, type=int, default=[2, 2, 2])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "periodic.json"))
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--xc-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.code:
        return _child(args)

    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    rows = []
    for name in args.cases:
        for xc in args.xc:
            row = {"case": name, "xc": xc, "kpts": list(args.kpts), "basis": CASES[name][1],
                   "pseudo": CASES[name][2], "smearing": CASES[name][3]}
            for code in ("pyscf", "nlxc"):
                cmd = [sys.executable, __file__, "--code", code, "--case", name, "--xc-one", xc,
                       "--kpts", *map(str, args.kpts)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    raise SystemExit(f"{code} {name} {xc} failed:\n{proc.stderr[-2000:]}")
                row[code] = json.loads(line[0][7:])
            row["delta_e"] = row["nlxc"]["energy"] - row["pyscf"]["energy"]
            row["speedup"] = row["pyscf"]["solve_s"] / row["nlxc"]["solve_s"]
            rows.append(row)
            _print_row(row, header=len(rows) == 1)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]

    meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "load_average_before": load_before,
            "load_average_after": load_after,
            "note": "setup: PySCF grid + GDF build (PySCF), PeriodicSystem.from_cell (nlxc, which runs the same "
                    "PySCF builders plus the AO values on the grid); SCF: the solve alone; energies per cell"}
    try:
        import jax
        import pyscf

        meta.update(jax=jax.__version__, pyscf=pyscf.__version__, device=str(jax.devices()[0]))
    except Exception:  # pragma: no cover
        pass
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"load average before/after: {' '.join(load_before)} / {' '.join(load_after)}; wrote {args.out}")


if __name__ == "__main__":
    main()
