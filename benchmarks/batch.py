"""Batch throughput: nlxc's vmapped SCF over padded size buckets beside PySCF looping.

The same G2-1 molecules (mixed sizes, closed and open shell), functional, basis, grid level,
auxiliary basis (PySCF's JK-fit `make_auxbasis`, passed to PySCF explicitly) and initial guess
(minao) on both sides.

- PySCF: a Python loop over the molecules, `RKS`/`UKS(...).density_fit(...)`, `conv_tol=1e-9`.
  Timed twice: the SCF alone (grids and DF tensor built before the clock), and end to end
  (building the `Mole`, the grid and the DF tensor included).
- nlxc: `System.from_pyscf` for every molecule (PySCF builds the grid and the integrals; timed
  as "setup"), `nlxc.batch.make_batches` (padding to a few size buckets), then
  `jax.vmap(solve)` per bucket. Compile time is measured separately (ahead-of-time
  `lower().compile()`), and the SCF timings are the best of two runs of the compiled programs.
  Convergence: `CDIIS(atol=1e-5)` (max |D(F(P)) − P|), which gives energies within ~1e-7 Ha
  of PySCF's at `conv_tol=1e-9`.

    python benchmarks/batch.py [--n 32] [--xc pbe] [--basis def2-svp] [--grid-level 2]
                               [--max-buckets 3] [--out benchmarks/results/batch.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

ELEMENTS = {"H", "Li", "Be", "C", "N", "O", "F"}


def _molecules(n):
    """The first `n` G2-1 species: those of first-row elements (molecules, then atoms), then
    the ones with second-row atoms (Na–Cl)."""
    import nlxc.data

    g2 = nlxc.data.g2("g2_1")
    first = [m for m in g2.molecules if set(m.symbols) <= ELEMENTS]
    chosen = first + [m for m in g2.molecules if not set(m.symbols) <= ELEMENTS]
    if n > len(chosen):
        raise SystemExit(f"G2-1 has {len(chosen)} species; ask for --n <= {len(chosen)}")
    return chosen[:n]


def run_pyscf(molecules, xc, basis, grid_level):
    from pyscf import df, dft, scf

    total_scf, energies, cycles_all = 0.0, [], []
    t_all = time.perf_counter()
    for m in molecules:
        mol = m.to_mole(basis)
        mf = (dft.RKS if mol.spin == 0 else dft.UKS)(mol, xc=xc)
        mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
        mf.grids.level = grid_level
        mf.conv_tol = 1e-9
        mf.verbose = 0
        mf.grids.build()
        mf.with_df.build()
        dm0 = scf.uhf.init_guess_by_minao(mol) if mol.spin else scf.hf.init_guess_by_minao(mol)
        cycles = []
        mf.callback = lambda env, c=cycles: c.append(env["cycle"])
        t0 = time.perf_counter()
        energy = mf.kernel(dm0=dm0)
        total_scf += time.perf_counter() - t0
        if not mf.converged:
            raise SystemExit(f"PySCF did not converge for {m.name}")
        energies.append(float(energy))
        cycles_all.append(len(cycles))
    return {"scf_s": total_scf, "end_to_end_s": time.perf_counter() - t_all, "energies": energies,
            "iterations": cycles_all}


def run_nlxc(molecules, xc, basis, grid_level, max_buckets):
    import equinox as eqx
    import jax
    import numpy as np

    import nlxc
    from nlxc.batch import make_batches
    from nlxc.scf import CDIIS

    t0 = time.perf_counter()
    systems = [nlxc.System.from_pyscf(m.to_mole(basis), grid_level=grid_level) for m in molecules]
    jax.block_until_ready(systems)
    t1 = time.perf_counter()
    batches = make_batches(systems, max_buckets=max_buckets)
    jax.block_until_ready(batches)
    t2 = time.perf_counter()
    functional = nlxc.get_functional(xc)
    solver = CDIIS(atol=1e-5)

    @eqx.filter_jit
    def solve_batch(f, system):
        r = jax.vmap(lambda s: nlxc.solve(f, s, solver))(system)
        return r.energy, r.converged, r.n_iterations

    compiled, compile_s, buckets = [], 0.0, []
    for b in batches:
        t = time.perf_counter()
        compiled.append(solve_batch.lower(functional, b.system).compile())
        compile_s += time.perf_counter() - t
        s = b.system
        buckets.append({"size": len(b), "nao": int(s.overlap.shape[-1]), "naux": int(s.cderi.shape[1]),
                        "ngrid": int(s.grid_weights.shape[-1]), "natom": int(s.atom_charges.shape[-1])})
    runs = []
    for _ in range(2):
        t = time.perf_counter()
        outs = [c(functional, b.system) for c, b in zip(compiled, batches)]
        jax.block_until_ready(outs)
        runs.append(time.perf_counter() - t)
    energies = np.zeros(len(systems))
    iterations = np.zeros(len(systems), dtype=int)
    for b, (e, conv, it) in zip(batches, outs):
        if not bool(np.all(np.asarray(conv)[np.asarray(b.mask)])):
            raise SystemExit("nlxc SCF did not converge in a batch")
        for k, i in enumerate(np.asarray(b.index)):
            if i >= 0:
                energies[i], iterations[i] = float(e[k]), int(it[k])
    # padding overhead: padded (ngrid·nao) work over the unpadded sum
    padded = sum(bk["size"] * bk["ngrid"] * bk["nao"] for bk in buckets)
    real = sum(s.ngrid * s.nao for s in systems)
    return {"setup_s": t1 - t0, "batch_s": t2 - t1, "compile_s": compile_s, "scf_s": min(runs),
            "energies": energies.tolist(), "iterations": iterations.tolist(), "buckets": buckets,
            "kernels": len(batches), "padding_overhead": padded / real,
            "sizes": [{"nao": s.nao, "naux": s.naux, "ngrid": s.ngrid} for s in systems]}


def run_nlxc_loop(molecules, xc, basis, grid_level):
    """nlxc without batching: one jitted solve per molecule (one compilation per shape)."""
    import equinox as eqx
    import jax

    import nlxc
    from nlxc.scf import CDIIS

    systems = [nlxc.System.from_pyscf(m.to_mole(basis), grid_level=grid_level) for m in molecules]
    functional = nlxc.get_functional(xc)
    solver = CDIIS(atol=1e-5)

    @eqx.filter_jit
    def solve_one(f, system):
        r = nlxc.solve(f, system, solver)
        return r.energy, r.n_iterations

    compile_s, compiled = 0.0, {}
    for s in systems:
        key = (s.nao, s.naux, s.ngrid, s.atom_charges.shape[0], s.restricted)
        if key not in compiled:
            t = time.perf_counter()
            compiled[key] = solve_one.lower(functional, s).compile()
            compile_s += time.perf_counter() - t
    runs = []
    for _ in range(2):
        t = time.perf_counter()
        outs = [compiled[(s.nao, s.naux, s.ngrid, s.atom_charges.shape[0], s.restricted)](functional, s)
                for s in systems]
        jax.block_until_ready(outs)
        runs.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "kernels": len(compiled), "scf_s": min(runs),
            "energies": [float(e) for e, _ in outs], "iterations": [int(i) for _, i in outs]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="number of molecules (16-64 in the issue)")
    parser.add_argument("--xc", default="pbe")
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--grid-level", type=int, default=2)
    parser.add_argument("--max-buckets", type=int, default=3)
    parser.add_argument("--no-loop", action="store_true",
                        help="skip nlxc's unbatched per-molecule loop (one compilation per shape)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "batch.json"))
    args = parser.parse_args()

    molecules = _molecules(args.n)
    pyscf_out = run_pyscf(molecules, args.xc, args.basis, args.grid_level)
    nlxc_out = run_nlxc(molecules, args.xc, args.basis, args.grid_level, args.max_buckets)
    loop_out = None if args.no_loop else run_nlxc_loop(molecules, args.xc, args.basis, args.grid_level)
    n = len(molecules)
    de = max(abs(a - b) for a, b in zip(pyscf_out["energies"], nlxc_out["energies"]))
    row = {
        "n_molecules": n,
        "open_shell": sum(m.spin > 0 for m in molecules),
        "pyscf_scf_mol_per_s": n / pyscf_out["scf_s"],
        "pyscf_end_to_end_mol_per_s": n / pyscf_out["end_to_end_s"],
        "nlxc_scf_mol_per_s": n / nlxc_out["scf_s"],
        "nlxc_end_to_end_mol_per_s": n / (nlxc_out["setup_s"] + nlxc_out["batch_s"] + nlxc_out["scf_s"]),
        "max_abs_delta_e": de,
    }
    row["speedup_scf"] = row["nlxc_scf_mol_per_s"] / row["pyscf_scf_mol_per_s"]
    row["speedup_end_to_end"] = row["nlxc_end_to_end_mol_per_s"] / row["pyscf_end_to_end_mol_per_s"]

    print(f"{n} G2-1 species ({row['open_shell']} open shell), {args.xc}/{args.basis}, grid level "
          f"{args.grid_level}, JK-fit auxbasis, minao guess")
    print(f"{'':<26}{'PySCF loop':>12}{'nlxc vmap':>12}{'ratio':>8}")
    print(f"{'SCF only, molecules/s':<26}{row['pyscf_scf_mol_per_s']:>12.2f}{row['nlxc_scf_mol_per_s']:>12.2f}"
          f"{row['speedup_scf']:>8.2f}")
    print(f"{'end to end, molecules/s':<26}{row['pyscf_end_to_end_mol_per_s']:>12.2f}"
          f"{row['nlxc_end_to_end_mol_per_s']:>12.2f}{row['speedup_end_to_end']:>8.2f}")
    if loop_out is not None:
        row["nlxc_loop_scf_mol_per_s"] = n / loop_out["scf_s"]
        print(f"{'SCF only, unbatched nlxc':<26}{'':>12}{row['nlxc_loop_scf_mol_per_s']:>12.2f}"
              f"{row['nlxc_loop_scf_mol_per_s'] / row['pyscf_scf_mol_per_s']:>8.2f}   "
              f"({loop_out['kernels']} compilations, {loop_out['compile_s']:.1f} s)")
    print(f"nlxc: setup (System.from_pyscf) {nlxc_out['setup_s']:.1f} s, padding/stacking "
          f"{nlxc_out['batch_s']:.1f} s, compile {nlxc_out['compile_s']:.1f} s for "
          f"{nlxc_out['kernels']} kernels (one per bucket; one per molecule would be {n}), "
          f"SCF {nlxc_out['scf_s']:.2f} s; PySCF SCF {pyscf_out['scf_s']:.2f} s, end to end "
          f"{pyscf_out['end_to_end_s']:.2f} s")
    print(f"buckets: {nlxc_out['buckets']}; padded grid work / unpadded = {nlxc_out['padding_overhead']:.2f}")
    print(f"max |E_nlxc - E_PySCF| = {de:.1e} Ha; mean iterations PySCF "
          f"{sum(pyscf_out['iterations']) / n:.1f}, nlxc {sum(nlxc_out['iterations']) / n:.1f}")

    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "xc": args.xc, "basis": args.basis, "grid_level": args.grid_level,
            "molecules": [m.name for m in molecules],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    import jax
    import pyscf

    meta.update(jax=jax.__version__, pyscf=pyscf.__version__, device=str(jax.devices()[0]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "summary": row, "pyscf": pyscf_out, "nlxc": nlxc_out,
                   "nlxc_loop": loop_out}, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
