"""Cost of gradients through the SCF: implicit vs unrolled adjoint, beside one forward solve.

For each molecule (def2-SVP) and functional, the loss is E + ∫(ρ − ρ_ref)² (ρ_ref: the minao
guess density) and its gradient with respect to every float leaf of the functional is taken by
reverse mode. Reported: the forward solve time, the gradient time with the implicit adjoint
(GMRES on Jacobian–vector products), and with the unrolled adjoint (checkpointed scan over a
fixed number of iterations), each after compilation (compile times separate), and the peak
resident memory of the gradients as the iteration count grows: for the unrolled adjoint by
unrolling 16, 32, 64 iterations; for the implicit adjoint by damping DIIS (0, 0.6, 0.85), which
makes the converged SCF take more iterations. Every
measurement runs in its own subprocess so that peak memory (ru_maxrss) is its own.

    python benchmarks/grad.py [--molecules h2o c6h6] [--xc pbe b3lyp] [--grid-level 2]
                              [--steps 16 32 64] [--out benchmarks/results/grad.json]
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


def _system(name, grid_level):
    from ase.build import molecule

    import nlxc

    return nlxc.System.from_ase(molecule({"h2o": "H2O", "c6h6": "C6H6"}[name]), "def2-svp", grid_level=grid_level)


def _child(kind, name, xc, grid_level, steps, damping):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import nlxc
    from nlxc.scf import DIIS, UnrolledAdjoint

    system = _system(name, grid_level)
    params, static = eqx.partition(nlxc.get_functional(xc), eqx.is_inexact_array)
    rho_ref = nlxc.density_on_grid(system.initial_density_matrix, system)
    solver = DIIS(atol=1e-8, damping=damping)

    def loss(p, adjoint):
        kwargs = {} if adjoint is None else {"adjoint": adjoint}
        r = nlxc.solve(eqx.combine(p, static), system, solver, max_steps=steps, **kwargs)
        rho = nlxc.density_on_grid(r.density_matrix, system)
        return r.energy + jnp.sum(system.grid_weights * (rho - rho_ref) ** 2), r

    if kind == "forward":
        fn = eqx.filter_jit(lambda p: loss(p, None))
    elif kind == "implicit":
        fn = eqx.filter_jit(jax.grad(lambda p: loss(p, None), has_aux=True))
    else:
        fn = eqx.filter_jit(jax.grad(lambda p: loss(p, UnrolledAdjoint()), has_aux=True))
    t0 = time.perf_counter()
    out = fn(params)
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    times = []
    for _ in range(2):
        t = time.perf_counter()
        out = fn(params)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    run = min(times)
    r = out[1]
    result = {"kind": kind, "molecule": name, "xc": xc, "steps": steps, "damping": damping, "run_s": run,
              "compile_s": max(first - run, 0.0), "iterations": int(r.n_iterations),
              "converged": bool(r.converged), "nao": system.nao, "ngrid": system.ngrid,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("RESULT " + json.dumps(result))


def _run(kind, name, xc, grid_level, steps, damping=0.0):
    cmd = [sys.executable, __file__, "--child", kind, "--molecules", name, "--xc", xc,
           "--grid-level", str(grid_level), "--steps", str(steps), "--damping", str(damping)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{kind} {name} {xc} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--molecules", nargs="+", default=["h2o", "c6h6"])
    p.add_argument("--xc", nargs="+", default=["pbe", "b3lyp"])
    p.add_argument("--grid-level", type=int, default=2)
    p.add_argument("--steps", nargs="+", type=int, default=[16, 32, 64],
                   help="iteration counts for the memory scan (the first is used for the unrolled timing)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "grad.json"))
    p.add_argument("--dampings", nargs="+", type=float, default=[0.0, 0.6, 0.85],
                   help="DIIS damping values for the implicit-adjoint memory scan")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory scans (timings only)")
    p.add_argument("--damping", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return _child(a.child, a.molecules[0], a.xc[0], a.grid_level, a.steps[0], a.damping)

    rows = []
    print(f"{'molecule':<9}{'xc':<7}{'forward s':>10}{'implicit s':>11}{'ratio':>7}{'unrolled s':>11}"
          f"{'ratio':>7}{'compile fwd/imp/unr s':>24}")
    for name in a.molecules:
        for xc in a.xc:
            fwd = _run("forward", name, xc, a.grid_level, 128)
            imp = _run("implicit", name, xc, a.grid_level, 128)
            unr = _run("unrolled", name, xc, a.grid_level, max(a.steps[0], fwd["iterations"]))
            implicit_memory = []
            for d in ([] if a.no_memory else a.dampings):
                m = _run("implicit", name, xc, a.grid_level, 400, d)
                implicit_memory.append({"damping": d, "iterations": m["iterations"], "peak_rss_mb": m["peak_rss_mb"]})
            unrolled_memory = [{"steps": n, "peak_rss_mb": _run("unrolled", name, xc, a.grid_level, n)["peak_rss_mb"]}
                               for n in ([] if a.no_memory else a.steps)]
            row = {"molecule": name, "xc": xc, "forward": fwd, "implicit": imp, "unrolled": unr,
                   "implicit_memory": implicit_memory, "unrolled_memory": unrolled_memory}
            rows.append(row)
            print(f"{name:<9}{xc:<7}{fwd['run_s']:>10.2f}{imp['run_s']:>11.2f}{imp['run_s'] / fwd['run_s']:>7.2f}"
                  f"{unr['run_s']:>11.2f}{unr['run_s'] / fwd['run_s']:>7.2f}"
                  f"{fwd['compile_s']:>9.1f}/{imp['compile_s']:.1f}/{unr['compile_s']:.1f}", flush=True)
            if a.no_memory:
                continue
            print("    implicit peak RSS: " + ", ".join(
                f"{m['iterations']} it {m['peak_rss_mb']:.0f} MB" for m in implicit_memory))
            print("    unrolled peak RSS: " + ", ".join(
                f"{m['steps']} it {m['peak_rss_mb']:.0f} MB" for m in unrolled_memory), flush=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "grid_level": a.grid_level, "basis": "def2-svp"}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
