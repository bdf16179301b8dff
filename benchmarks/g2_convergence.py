"""Does nlxc's default SCF converge on G2-1, and to PySCF's energies?

For every molecule of the G2-1 set (55 molecules and their 12 atoms, radicals included) and
every functional asked for: nlxc's `solve(functional, system)` with every default (CDIIS with
the Newton fallback, minao guess, default tolerance, no level shift) beside PySCF's
density-fitted RKS/UKS on the same work (same basis, grid level, auxiliary basis from
`pyscf.df.make_auxbasis`, minao guess; `conv_tol` 1e-10, 200 cycles). Reports per case whether
each converged, nlxc's iterations and strategy (0 CDIIS, 1 Newton fallback), whether nlxc's
state is aufbau (`SCFResult.aufbau`; a converged non-aufbau state is a stationary point where no
aufbau fixed point exists) and the energy difference; the acceptance is |ΔE| ≤ 1e-6 Ha wherever PySCF converges. Where the two end in
different states (|ΔE| > 1e-6 Ha), it also reports whether PySCF's own solution passes PySCF's
internal stability analysis, what PySCF converges to when started from nlxc's density matrix,
and whether that state (nlxc's) passes the stability analysis too. Where PySCF's DIIS does not
converge, it runs PySCF's second-order solver and reports whether its minimum is aufbau, and
nlxc's energy difference to it.

    python benchmarks/g2_convergence.py [--xc lda pbe b3lyp r2scan] [--basis def2-svp]
        [--grid-level 3] [--molecules OH NO ...] [--out benchmarks/results/g2_convergence.json]
        [--no-pyscf] [--no-fallback] [--checkpoint best.eqx --elements H,Li,C,N,O,F]
    python benchmarks/g2_convergence.py --summarize part1.json part2.json ...

Prints a table and writes JSON (rewritten after every case, so a long run can be stopped and
read). With `--checkpoint best.eqx` the functional is a trained nlxc checkpoint instead (its
`--xc` is ignored), and only molecules made of `--elements` are run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xc", nargs="+", default=["lda", "pbe", "b3lyp", "r2scan"])
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--grid-level", type=int, default=3)
    parser.add_argument("--molecules", nargs="*", default=None)
    parser.add_argument("--checkpoint", default=None, help="a trained nlxc checkpoint instead of --xc")
    parser.add_argument("--elements", default="H,Li,C,N,O,F", help="with --checkpoint: molecules of these only")
    parser.add_argument("--no-pyscf", action="store_true", help="nlxc only (e.g. for a trained functional)")
    parser.add_argument("--no-fallback", action="store_true", help="nlxc's CDIIS alone (fallback=None)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "g2_convergence.json"))
    parser.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                        help="merge earlier runs' JSON files (a run split in parts; a later file's row replaces an "
                             "earlier one of the same case) into --out, print their summary and exit")
    args = parser.parse_args()
    if args.summarize:
        # a case run again in a later file replaces the earlier row
        latest = {(row["molecule"], row["xc"]): row for path in args.summarize for row in json.load(open(path))["rows"]}
        rows = list(latest.values())
        first = json.load(open(args.summarize[0]))
        args.basis, args.grid_level = first["basis"], first["grid_level"]
        _write(args, rows)  # the merged rows, to --out
        _summarize(rows)
        return

    import jax
    from pyscf import df, dft

    import nlxc

    g2 = nlxc.data.g2("g2_1")
    names = list(args.molecules or g2.molecule_names)
    if args.checkpoint is not None:
        from nlxc.train import load_checkpoint

        functional, _ = load_checkpoint(args.checkpoint)
        allowed = set(args.elements.split(","))
        names = [n for n in names if set(g2.molecule(n).symbols) <= allowed]
        functionals = {os.path.basename(args.checkpoint): functional}
    else:
        functionals = {xc: nlxc.get_functional(xc) for xc in args.xc}

    rows = []
    header = (f"{'molecule':12s} {'xc':10s} {'nlxc':>5s} {'iter':>4s} {'strat':>5s} {'aufb':>5s} {'PySCF':>5s} "
              f"{'cyc':>4s} {'dE/Ha':>10s} {'t/s':>6s}")
    print(header)
    for name in names:
        # every molecule compiles its own programs; XLA's CPU executables hold ~1300 memory maps
        # each, and a process that keeps them all reaches the kernel's limit (vm.max_map_count,
        # 65530) after ~50 solves and aborts ("LLVM ERROR: Unable to allocate section memory")
        jax.clear_caches()
        molecule = g2.molecule(name)
        mol = molecule.to_mole(args.basis)
        system = nlxc.System.from_pyscf(mol, grid_level=args.grid_level)
        for xc, functional in functionals.items():
            t0 = time.perf_counter()
            result = nlxc.solve(functional, system, **({"fallback": None} if args.no_fallback else {}))
            energy = float(result.energy)
            elapsed = time.perf_counter() - t0
            row = {"molecule": name, "xc": xc, "spin": molecule.spin, "converged": bool(result.converged),
                   "n_iterations": int(result.n_iterations), "strategy": int(result.strategy),
                   "aufbau": bool(result.aufbau), "energy": energy, "time_s": elapsed}
            if not args.no_pyscf and args.checkpoint is None:
                mf = (dft.RKS if mol.spin == 0 else dft.UKS)(mol, xc=xc)
                mf.grids.level = args.grid_level
                mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
                mf.conv_tol, mf.max_cycle, mf.verbose = 1e-10, 200, 0
                cycles = []
                mf.callback = lambda env: cycles.append(env["cycle"])
                reference = float(mf.kernel())
                row.update(pyscf_converged=bool(mf.converged), pyscf_energy=reference,
                           pyscf_cycles=len(cycles), delta=energy - reference)
                if mf.converged and abs(row["delta"]) > 1e-6:
                    row.update(_two_solutions(mf, result))
                if not mf.converged:
                    row.update(_second_order(mf))
                    row["delta_newton"] = energy - row["pyscf_newton_energy"]
            rows.append(row)
            delta = row.get("delta")
            print(f"{name:12s} {xc:10s} {str(row['converged']):>5s} {row['n_iterations']:4d} {row['strategy']:5d} "
                  f"{str(row['aufbau']):>5s} {str(row.get('pyscf_converged', '-')):>5s} {row.get('pyscf_cycles', 0):4d} "
                  f"{(f'{delta:.1e}' if delta is not None else '-'):>10s} {elapsed:6.1f}", flush=True)
            _write(args, rows)

    _summarize(rows)


def _summarize(rows):
    """The totals, the cases where the two SCFs ended in different states, the failures."""
    done = [r for r in rows if r["converged"]]
    compared = [r for r in rows if r.get("pyscf_converged")]
    worst = max((abs(r["delta"]) for r in compared if r["converged"]), default=float("nan"))
    print(f"\nnlxc converged {len(done)}/{len(rows)}; PySCF converged {len(compared)}/{len(rows)}; "
          f"max |dE| where both converged {worst:.2e} Ha; "
          f"fallback used in {sum(r['strategy'] == 1 for r in rows)}")
    both = [r for r in compared if r["converged"]]
    agree = [r for r in both if abs(r["delta"]) <= 1e-6]
    other = [r for r in both if "pyscf_stable" in r]
    explained = [r for r in other if not r["pyscf_stable"] and r["delta"] < 0
                 and abs(r["pyscf_from_nlxc_energy"] - r["energy"]) <= 1e-6]
    print(f"|dE| <= 1e-6 Ha in {len(agree)}/{len(both)} where both converged; different states in {len(other)}, "
          f"of which {len(explained)} where nlxc's is lower, PySCF's own solution is unstable and PySCF "
          "started from nlxc's density stays at nlxc's energy")
    for r in rows:
        if "pyscf_stable" in r:
            print(f"{r['molecule']}/{r['xc']}: dE {r['delta']:.2e} Ha; PySCF's solution "
                  f"{'stable' if r['pyscf_stable'] else 'UNSTABLE (a saddle point)'}; PySCF from nlxc's density "
                  f"{'stays at' if abs(r['pyscf_from_nlxc_energy'] - r['energy']) <= 1e-6 else 'moves from'} "
                  f"nlxc's energy (dE {r['energy'] - r['pyscf_from_nlxc_energy']:.1e})"
                  + ("" if "nlxc_state_stable" not in r else
                     f"; nlxc's state {'stable' if r['nlxc_state_stable'] else 'UNSTABLE (a saddle point)'}"))
    failed = [f"{r['molecule']}/{r['xc']}" for r in rows if not r["converged"]]
    if failed:
        print("not converged:", ", ".join(failed))
    # rows written before SCFResult.aufbau existed have no "aufbau" entry
    stationary = [f"{r['molecule']}/{r['xc']}" for r in rows if r["converged"] and not r.get("aufbau", True)]
    if stationary:
        print("converged to a stationary point whose occupations are not aufbau:", ", ".join(stationary))
    for r in rows:
        if "pyscf_newton_energy" in r:
            print(f"{r['molecule']}/{r['xc']}: PySCF's DIIS did not converge; its second-order solver "
                  f"{'converged' if r['pyscf_newton_converged'] else 'did not converge'} to "
                  f"{r['pyscf_newton_energy']:.10f} Ha, {'an aufbau' if r['pyscf_newton_aufbau'] else 'a NON-aufbau'} "
                  f"minimum (lowest virtual minus highest occupied {r['pyscf_newton_min_gap']:.2e} Ha); "
                  f"nlxc {'converged' if r['converged'] else 'did not converge'}, "
                  f"E - E(PySCF newton) = {r['energy'] - r['pyscf_newton_energy']:.1e} Ha")


def _two_solutions(mf, result):
    """When the two SCFs end in different states: is each a stationary point for PySCF, and is
    PySCF's own solution stable? PySCF restarted from nlxc's density matrix (same functional,
    grid and auxiliary basis); PySCF's internal stability analysis of its own solution and of
    that restarted one, i.e. of nlxc's state (a saddle point of the energy has an unstable
    direction)."""
    import numpy as np

    p = np.asarray(result.density_matrix)
    _, _, stable, _ = mf.stability(return_status=True)
    restarted = mf.copy()
    restarted.callback = None
    e_restart = float(restarted.kernel(dm0=(p[0] + p[1]) if mf.istype("RKS") else p))
    _, _, nlxc_stable, _ = restarted.stability(return_status=True)
    return {"pyscf_stable": bool(stable), "pyscf_from_nlxc_energy": e_restart,
            "pyscf_from_nlxc_converged": bool(restarted.converged), "nlxc_state_stable": bool(nlxc_stable)}


def _second_order(mf):
    """Where PySCF's DIIS does not converge: PySCF's second-order solver (`mf.newton()`), its
    energy, and whether its minimum is aufbau (no virtual orbital below an occupied one of the
    same spin). A non-aufbau minimum means the aufbau fixed point P = D(F(P)) does not exist
    there, for nlxc or PySCF."""
    import numpy as np

    newton = mf.newton()
    newton.callback = None  # the DIIS run's cycle counter
    newton.conv_tol, newton.max_cycle, newton.verbose = 1e-10, 200, 0
    energy = float(newton.kernel())
    energies = np.reshape(newton.mo_energy, (-1, np.shape(newton.mo_energy)[-1]))
    occupations = np.reshape(newton.mo_occ, energies.shape)
    gaps = [float(e[o <= 0].min() - e[o > 0].max()) for e, o in zip(energies, occupations) if np.any(o <= 0)]
    return {"pyscf_newton_converged": bool(newton.converged), "pyscf_newton_energy": energy,
            "pyscf_newton_min_gap": min(gaps), "pyscf_newton_aufbau": min(gaps) > 0}


def _write(args, rows):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"basis": args.basis, "grid_level": args.grid_level, "machine": platform.processor() or platform.machine(),
                   "nproc": os.cpu_count(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
