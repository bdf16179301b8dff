"""Cost and memory of the model zoo against grid size, next to PBE.

For each molecule (H2O, C6H6, n-decane C10H22 with 32 atoms; def2-SVP, PySCF grid level 2 by
default) and each model, two timings after compilation (best of `--repeat`):

- `model`: the model's energy and its gradient with respect to the density features on the grid
  (ρσ, σ, τσ): the architecture's own cost, what the scaling exponent is fitted to;
- `E_xc+Fock`: the energy and the Fock contribution ∂E_xc/∂P (`jax.value_and_grad` of E_xc with
  respect to the density matrix), which adds the density features' cost O(ngrid · nao²), the
  same for every model (evaluated block by block over the screened AO blocks).

Memory decides what runs, not grid size. Each (molecule, model) case runs in a fresh subprocess
(`python benchmarks/models.py --child MOLECULE LABEL ...`, which prints one `RESULT {json}` line)
so that its peak resident memory (`ru_maxrss`) is its own. In the child, both programs are first
compiled (`jax.jit(...).lower(...).compile()`) with the System given abstractly where it carries
auxiliary-basis grid operators (`jax.ShapeDtypeStruct` leaves: nothing is allocated), and XLA's
`compiled.memory_analysis()` is read: `temp_size_in_bytes`, `argument_size_in_bytes`,
`output_size_in_bytes` (all recorded, for both programs). A program is executed only if
temp + arguments + outputs ≤ `--max-gb` (default 16 GiB, leaving the 24 GB machine some room);
only then are the grid operators built. The child records its resident memory before the
E_xc+Fock execution and its peak (`ru_maxrss`, which also covers building the System) at the
end. `fits 8 GB` (JSON `fits_8gb`; `xla_fits_8gb` is the XLA half alone) is true when the E_xc+Fock program's temp + arguments + outputs ≤ 8 GiB and it
was executed with peak RSS ≤ 8 GiB. A skipped timing is `null` in the JSON, `-` in the table.

Also the compile time of `E_xc+Fock`, and the scaling exponent b of time ≈ a · ngrid^b fitted
over the molecules. Models are used alone (not added to PBE), so PBE's row is the baseline.
Models that read auxiliary-basis grid operators (`AuxiliaryNeuralOperator`, `LocalHybrid`,
`NonlocalEnhancedExchange`) get a System carrying the ones they need (8·ngrid·naux bytes each,
counted in the arguments); the O(ngrid²)-time `GridAttention` is compiled and analysed but
not run above `--attention-max-ngrid` grid points.
`prepare` (the neighbour-list search, once per SCF) is timed on its own.

    python benchmarks/models.py [--grid-level 2] [--molecules h2o c6h6 decane] [--repeat 3]
                                [--models LABEL ...] [--max-gb 16] [--attention-max-ngrid 10000]
                                [--out benchmarks/results/models.json]
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

import numpy as np


def alkane(n=10):
    """n-alkane CₙH₂ₙ₊₂, all-anti zig-zag (C–C 1.53 Å, C–H 1.09 Å, tetrahedral angles), as (symbols, Å)."""
    cc, ch, half = 1.53, 1.09, np.deg2rad(109.47 / 2)
    carbons = [np.array([i * cc * np.sin(half), (i % 2) * cc * np.cos(half), 0.0]) for i in range(n)]
    symbols, positions = ["C"] * 10, list(carbons)
    for i, c in enumerate(carbons):
        up = 1.0 if i % 2 else -1.0  # H's point away from the chain's zig-zag
        for sz in (1.0, -1.0):
            d = np.array([0.0, up * np.cos(np.deg2rad(54.75)), sz * np.sin(np.deg2rad(54.75))])
            symbols.append("H")
            positions.append(c + ch * d / np.linalg.norm(d))
        if i in (0, n - 1):  # terminal methyl: third H along the chain axis
            d = np.array([-1.0 if i == 0 else 1.0, -up * 0.35, 0.0])
            symbols.append("H")
            positions.append(c + ch * d / np.linalg.norm(d))
    return symbols, np.array(positions)


def build_system(name, grid_level, grid_operators=None):
    import nlxc

    if name in ("decane", "icosane"):
        symbols, positions = alkane(10 if name == "decane" else 20)
        geometry = list(zip(symbols, map(tuple, positions)))
        return nlxc.System.from_pyscf(nlxc.build_mole(geometry, "def2-svp"), grid_level=grid_level,
                                      grid_operators=grid_operators)
    from ase.build import molecule

    return nlxc.System.from_ase(molecule({"h2o": "H2O", "c6h6": "C6H6"}[name]), "def2-svp", grid_level=grid_level,
                                grid_operators=grid_operators)


def operator_count(spec):
    """Number of (ngrid, naux) arrays a GridOperatorSpec asks for."""
    return len(spec.omegas) + len(spec.exponents) + int(spec.projection)


def models():
    import jax.random as jr

    import nlxc
    from nlxc.models import (
        MLP,
        AtomAttention,
        AtomCentredCorrection,
        CoarseGraphNetwork,
        AuxiliaryNeuralOperator,
        EquivariantCorrection,
        GridAtomMessagePassing,
        GridAttention,
        GridGraphNetwork,
        LocalHybrid,
        NonlocalEnhancedExchange,
    )
    from nlxc.xc import PW92Correlation, SlaterExchange

    return {
        "PBE (baseline)": nlxc.get_functional("pbe"),
        "local meta-GGA MLP (constrained)": SlaterExchange() * MLP(2, key=jr.key(0))
        + PW92Correlation.modified() * MLP(4, key=jr.key(1)),
        "AtomCentredCorrection": AtomCentredCorrection(key=jr.key(2)),
        "EquivariantCorrection": EquivariantCorrection(key=jr.key(3)),
        "AtomAttention": AtomAttention(key=jr.key(4)),
        "GridAtomMessagePassing": GridAtomMessagePassing(key=jr.key(5)),
        "GridGraphNetwork (jraph)": GridGraphNetwork(key=jr.key(6)),
        "CoarseGraphNetwork (jraph)": CoarseGraphNetwork(key=jr.key(8)),
        "GridAttention (full, O(N^2))": GridAttention(key=jr.key(9)),
        "AuxiliaryNeuralOperator": AuxiliaryNeuralOperator(key=jr.key(10)),
        "LocalHybrid (DM21-like)": LocalHybrid(key=jr.key(11)),
        "NonlocalEnhancedExchange (CIDER)": NonlocalEnhancedExchange(key=jr.key(12)),
    }


def _best(fn, *args, repeat):
    import jax

    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)


GIB = 2**30


def _rss_bytes():
    """Current resident memory of this process (Linux `/proc/self/status`), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def _memory(compiled):
    """XLA's memory analysis of a compiled program: temp, argument, output bytes and their sum."""
    m = compiled.memory_analysis()
    out = {k: (None if m is None else int(getattr(m, k + "_size_in_bytes"))) for k in ("temp", "argument", "output")}
    out["total"] = None if m is None else out["temp"] + out["argument"] + out["output"]
    return out


def _abstract_operators(system, spec):
    """`system` carrying the grid operators of `spec` as `jax.ShapeDtypeStruct`s (nothing allocated)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from nlxc.grid_operators import AuxiliaryGridOperators

    def shape(n):
        return jax.ShapeDtypeStruct((n, system.ngrid, system.naux), jnp.float64)

    ops = AuxiliaryGridOperators(shape(len(spec.omegas)), shape(len(spec.exponents)), shape(int(spec.projection)),
                                 spec.omegas, spec.exponents)
    return eqx.tree_at(lambda s: s.grid_operators, system, ops, is_leaf=lambda x: x is None)


def measure(functional, name, grid_level, repeat, max_bytes, attention_max_ngrid=None):
    """One (molecule, model) case in this process; returns the result dict (see the module docstring)."""
    import equinox as eqx
    import jax

    import nlxc
    from nlxc.grid_operators import required_grid_operators
    from nlxc.models import GridAttention

    t = time.perf_counter()
    system = build_system(name, grid_level)
    jax.block_until_ready(system)
    r = {"ngrid": system.ngrid, "nao": system.nao, "naux": system.naux, "natom": int(system.atom_charges.shape[0]),
         "setup_s": time.perf_counter() - t, "operators": 0, "operator_bytes": 0, "operator_setup_s": None}
    spec = required_grid_operators(functional)
    count = operator_count(spec)
    target = system
    if count:
        r["operators"], r["operator_bytes"] = count, 8 * system.ngrid * system.naux * count
        target = _abstract_operators(system, spec)

    # the geometry-only preparation (neighbour lists), once per SCF: timed on its own
    prepare = eqx.filter_jit(lambda f, s: f.prepare(s))
    jax.block_until_ready(prepare(functional, system))
    r["prepare_s"] = _best(prepare, functional, system, repeat=repeat)
    functional = prepare(functional, system)
    dynamic, static = eqx.partition(functional, eqx.is_array)

    # the System, the model and the density are arguments (not closures), so XLA does not
    # constant-fold them and counts them in argument_size
    p = system.initial_density_matrix
    density = jax.jit(nlxc.Density.from_density_matrix)(p, system)

    def on_features(rho, sigma, tau, gradient, pm, dynamic, system):
        d = nlxc.Density(rho=rho, gradient=gradient, sigma=sigma, tau=tau)
        return eqx.combine(dynamic, static)(d, pm, system)

    def exc(pm, dynamic, system):
        f = eqx.combine(dynamic, static)
        return f(nlxc.Density.from_density_matrix(pm, system), pm, system)

    model_args = (density.rho, density.sigma, density.tau, density.gradient, p, dynamic)
    model_c = jax.jit(jax.value_and_grad(on_features, argnums=(0, 1, 2))).lower(*model_args, target).compile()
    r["model_memory"] = _memory(model_c)
    t = time.perf_counter()
    fock_c = jax.jit(jax.value_and_grad(exc)).lower(p, dynamic, target).compile()
    r["compile_s"] = time.perf_counter() - t
    r["exc_fock_memory"] = _memory(fock_c)
    r["temp_bytes"] = r["exc_fock_memory"]["temp"]

    run_model = r["model_memory"]["total"] is not None and r["model_memory"]["total"] <= max_bytes
    run_fock = r["exc_fock_memory"]["total"] is not None and r["exc_fock_memory"]["total"] <= max_bytes
    r["skipped"] = None if run_model and run_fock else f"XLA temp + arguments + outputs > {max_bytes / GIB:g} GiB"
    if (attention_max_ngrid is not None and isinstance(functional, GridAttention)
            and system.ngrid > attention_max_ngrid):  # O(ngrid²) time: compiled and analysed, not run
        run_model = run_fock = False
        r["skipped"] = f"GridAttention above {attention_max_ngrid} grid points (O(ngrid²) time)"
    if count and (run_model or run_fock):
        t = time.perf_counter()
        target = build_system(name, grid_level, grid_operators=spec)
        jax.block_until_ready(target)
        r["operator_setup_s"] = time.perf_counter() - t
    r["model_s"] = None
    if run_model:
        jax.block_until_ready(model_c(*model_args, target))
        r["model_s"] = _best(model_c, *model_args, target, repeat=repeat)
    r["rss_before_exc_fock_bytes"] = _rss_bytes()
    r["exc_fock_s"] = None
    if run_fock:
        jax.block_until_ready(fock_c(p, dynamic, target))
        r["exc_fock_s"] = _best(fock_c, p, dynamic, target, repeat=repeat)
    r["peak_rss_bytes"] = _peak_rss_bytes()
    r["xla_fits_8gb"] = r["exc_fock_memory"]["total"] is not None and r["exc_fock_memory"]["total"] <= 8 * GIB
    r["fits_8gb"] = bool(run_fock and r["exc_fock_memory"]["total"] <= 8 * GIB and r["peak_rss_bytes"] <= 8 * GIB)
    return r


def _child(name, label, grid_level, repeat, max_gb, attention_max_ngrid):
    functional = models()[label]
    try:
        r = measure(functional, name, grid_level, repeat, max_gb * GIB, attention_max_ngrid)
    except Exception as err:  # reported as a value to the parent, which goes on with the next case
        r = {"error": f"{type(err).__name__}: {str(err)[:2000]}", "peak_rss_bytes": _peak_rss_bytes()}
    print("RESULT " + json.dumps(r), flush=True)


def _gb(x):
    return "-" if x is None else f"{x / GIB:.2f}"


def _fits(r):
    """'yes', 'no', or 'XLA only' (XLA's estimate fits but the program was not run)."""
    return "yes" if r["fits_8gb"] else "XLA only" if r.get("xla_fits_8gb") and r.get("skipped") else "no"


def _ms(x):
    return "-" if x is None else f"{x * 1e3:.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid-level", type=int, default=2)
    parser.add_argument("--molecules", nargs="+", default=["h2o", "c6h6", "decane"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=None, help="subset of the model labels")
    parser.add_argument("--max-gb", type=float, default=16.0,
                        help="execute a compiled program only if XLA's temp + argument + output bytes "
                             "are at most this many GiB")
    parser.add_argument("--attention-max-ngrid", type=int, default=10_000,
                        help="compile and analyse, but do not run, the O(ngrid²)-time GridAttention above "
                             "this many grid points")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "models.json"))
    parser.add_argument("--child", nargs=2, metavar=("MOLECULE", "LABEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(*args.child, args.grid_level, args.repeat, args.max_gb, args.attention_max_ngrid)

    import jax

    labels = [label for label in models() if not args.models or label in args.models]
    rows, sizes = {}, {}
    for name in args.molecules:
        print(name, flush=True)
        for label in labels:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, label,
                                   "--grid-level", str(args.grid_level), "--repeat", str(args.repeat),
                                   "--max-gb", repr(args.max_gb),
                                   "--attention-max-ngrid", str(args.attention_max_ngrid)], capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                r = {"error": f"child exited with {proc.returncode}: {proc.stderr[-2000:]}"}
            else:
                r = json.loads(line[-1][7:])
            if "ngrid" in r and name not in sizes:
                sizes[name] = {k: r[k] for k in ("ngrid", "nao", "naux", "natom", "setup_s")}
                print(f"  ngrid {r['ngrid']}, nao {r['nao']}, naux {r['naux']}, natom {r['natom']}", flush=True)
            rows.setdefault(label, {})[name] = r
            if "error" in r:
                print(f"  {label:34s} FAILED: {r['error'][-500:]}", flush=True)
                continue
            m = r["exc_fock_memory"]
            print(f"  {label:34s} model {_ms(r['model_s']):>9s} ms   prepare {_ms(r['prepare_s']):>7s} ms"
                  f"   E_xc+Fock {_ms(r['exc_fock_s']):>9s} ms   compile {r['compile_s']:6.1f} s"
                  f"   XLA temp/args/out {_gb(m['temp'])}/{_gb(m['argument'])}/{_gb(m['output'])} GiB"
                  f"   peak RSS {_gb(r['peak_rss_bytes'])} GiB   fits 8 GB {_fits(r)}",
                  flush=True)

    print()
    header = "".join(f"{m + ' model ms':>18s}" for m in args.molecules)
    last = args.molecules[-1]
    print(f"{'model':34s}{header}{'exponent':>10s}{'E_xc+Fock exp.':>16s}"
          f"{last + ' E_xc+Fock ms':>22s}{'XLA GiB':>9s}{'RSS GiB':>9s}{'fits 8 GB':>10s}")
    for label, per in rows.items():
        ok = {m: per[m] for m in args.molecules if m in per and "error" not in per[m]}
        done = [m for m in ok if ok[m]["model_s"] is not None]
        have = [m for m in ok if ok[m]["exc_fock_s"] is not None]
        b_model = b_fock = float("nan")
        if len(done) > 1:
            b_model = float(np.polyfit(np.log([ok[m]["ngrid"] for m in done]), np.log([ok[m]["model_s"] for m in done]), 1)[0])
        if len(have) > 1:
            b_fock = float(np.polyfit(np.log([ok[m]["ngrid"] for m in have]), np.log([ok[m]["exc_fock_s"] for m in have]), 1)[0])
        per["scaling_exponent_model"] = b_model
        per["scaling_exponent_exc_fock"] = b_fock
        cells = "".join(f"{_ms(ok[m]['model_s']) if m in ok else 'failed':>18s}" for m in args.molecules)
        r = ok.get(last)
        tail = (f"{_ms(r['exc_fock_s']):>22s}{_gb(r['exc_fock_memory']['total']):>9s}{_gb(r['peak_rss_bytes']):>9s}"
                f"{_fits(r):>10s}") if r else f"{'failed':>22s}"
        print(f"{label:34s}{cells}{b_model:10.2f}{b_fock:16.2f}{tail}")

    out = {"molecules": sizes, "grid_level": args.grid_level, "basis": "def2-svp", "max_gb": args.max_gb,
           "models": rows,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                       "backend": jax.default_backend(), "load_average": os.getloadavg()}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
