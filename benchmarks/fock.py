"""Achieved GFLOP/s of one Fock build beside this CPU's dense float64 matmul rate, and PySCF's time.

One Fock build is `nlxc.scf.energy_and_fock(functional, system, P)` (the energy components and
Fσ = ∂E/∂Pσ by reverse-mode autodiff: ρ and ∇ρ on the grid block by block, the XC energy density,
the transposed grid pass, the DF Coulomb term and, for hybrids, the DF exchange from a factor of
P), jitted, at the System's initial density (PySCF's minao guess, half to each spin). PySCF does
the same work on the same molecule, basis (def2-SVP), grid (`grids.level`, `small_rho_cutoff = 0`:
nlxc keeps every point), auxiliary basis (`df.make_auxbasis(mol)`, the one nlxc's System uses) and
density (the spin-traced 2P): `mf.get_veff(mol, dm)` plus H_core, with the grid and the DF tensor
built before the clock (best of `repeat` after one warm-up call). For hybrids the dm is tagged with
its factor (`mo_coeff`, `mo_occ`: the eigenpairs of P above nlxc's rank rule), so PySCF's DF
exchange takes its O(naux·nao²·rank) path, as in every SCF cycle after the guess and as nlxc
does; the untagged O(naux·nao³) path is timed too (`untagged_s` in the JSON). The two Fock
matrices are compared (|dF| = max|F_nlxc − F_PySCF|, Hartree): the same work gives the same matrix.

    python benchmarks/fock.py [--molecules h2o c6h6 pyrazine_dimer] [--xc pbe b3lyp]
                              [--basis def2-svp] [--grid-level 3] [--repeat 3] [--matmul-size 2048]
                              [--verify-count] [--out benchmarks/results/fock.json]

    python benchmarks/fock.py --molecules h2o --verify-count     # quick check of the FLOP count

nlxc's time is the best of `repeat` calls of the AOT-compiled function; its compile time
(lower + compile) is separate, and `first_s` in the JSON is compile plus the first call. Each case
and each code runs in a fresh subprocess, so ru_maxrss is its own; the roofline and the FLOP
count run in their own subprocesses too. The whole default set takes about 10 minutes on 2 cores.

Roofline: the best-of-`repeat` rate of a dense float64 n×n @ n×n product (2n³ flops), both
`numpy` (the BLAS PySCF uses) and jitted `jax.numpy` (XLA:CPU), on all the cores this process may
use (no thread variables are set; the JSON records them). nlxc's GFLOP/s is shown as a fraction
of the JAX rate (%DGEMM).

FLOP count. The count is XLA's own cost model (`.cost_analysis()["flops"]`, a dict or a list of
dicts depending on the JAX version, both handled): 2·M·N·K per dot, one flop per element for
every other arithmetic elementwise op (add, multiply, compare, select, ...); transcendental ops
(exp, log, pow, sqrt, ...) are counted apart (`transcendentals`, not in `flops`) and LAPACK custom
calls (the eigendecomposition behind the exchange factor, O(nao³)) count zero. XLA counts the body
of a while loop ONCE, whatever its trip count (checked with JAX 0.10.2: a `lax.map` of 10 64×64
matmuls, or a `fori_loop` of 10, reports the flops of one). nlxc's grid passes are `lax.map`s over
grid blocks (~180 for water, ~1300 for the pyrazine dimer) and its exchange is a `fori_loop` over
blocks of auxiliary functions around a data-dependent one over chunks of P's factor, so the count
of the compiled program is far too small (`flops_xla_looped`, shown as "looped": 0.023 against
0.105 GFLOP for water/PBE, 0.35 against 7.55 for benzene/B3LYP). The count used ("GFLOP") is XLA's
cost model of the same program with the loops removed: a separate subprocess replaces
`jax.lax.map` by `jax.vmap` (every block at once: the same contractions, batched) and
`jax.lax.fori_loop` by a Python loop (its data-dependent trip count, ⌈rank P / EXCHANGE_CHUNK⌉,
from P by nlxc's rank rule) while lowering, and takes the cost analysis of the lowered,
loop-free HLO (nothing is compiled or run). It is what the code computes, padding included
(zero-padded AO lists and grid blocks, the factor's zero columns up to a multiple of
EXCHANGE_CHUNK, the auxiliary rows of the last, overlapping, block), not a count of useful flops.
Checks:

1. `--verify-count` compiles and runs the loop-free program: its Fock matrix equals the looped
   one (max|ΔF| ≤ 4e-15 for water and benzene, B3LYP), and with one exchange chunk fewer it does
   not (0.03 for benzene), so the trip count is the loop's.
2. An independent hand count of the dot flops from the System's block layout ("hand"): per grid
   block of B points and m listed functions, forward 2Bm² (Σ_ν Pμν φν) + 2Bm (ρ) + 6Bm (∇ρ) and the
   transposed pass the same (2Bm² + 2Bm + 6Bm), times the spin channels evaluated (1 restricted,
   2 unrestricted; meta-GGAs: + 12Bm² + 12Bm for τ, not checked here); σ = ∇ρ·∇ρ: 54·ngrid; DF Coulomb 2·naux·npair forward and the
   same transposed; exchange 4·q·nblock·nao²·EXCHANGE_CHUNK·nchunk (q·nblock auxiliary rows, two
   contractions per chunk). It equals the dot flops of the loop-free jaxpr after JAX's dead-code
   elimination (`dot_flops`, "dot%" of the XLA count) to within the three scalar Coulomb dots:
   92 786 352 against 92 787 030 (water/PBE), 7 438 462 008 against 7 438 465 356 (benzene/B3LYP),
   41 329 408 124 against 41 329 414 436 (pyrazine dimer/B3LYP). The rest of the XLA count is
   elementwise work.

Timings on a loaded machine are not final numbers: rerun idle.

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
import tempfile
import time

# the molecules and geometries of benchmarks/scf.py (this script's directory is on sys.path)
from scf import MOLECULES, _mole  # noqa: E402


def _cost(compiled_or_lowered):
    """(flops, transcendentals) of XLA's cost analysis, a dict or a list of dicts by JAX version."""
    c = compiled_or_lowered.cost_analysis()
    if isinstance(c, (list, tuple)):
        c = c[0] if c else {}
    return float(c.get("flops", 0.0) or 0.0), float(c.get("transcendentals", 0.0) or 0.0)


def _factor_rank(p):
    """Rank of symmetric P by nlxc's exchange rule (|λ| > EXCHANGE_RANK_TOLERANCE·nao·max|λ|), and
    the kept eigenpairs."""
    import numpy as np

    from nlxc.xc.hybrid import EXCHANGE_RANK_TOLERANCE

    w, u = np.linalg.eigh(0.5 * (p + p.T))
    keep = np.abs(w) > EXCHANGE_RANK_TOLERANCE * p.shape[-1] * np.abs(w).max()
    return int(keep.sum()), w[keep], u[:, keep]


# -- roofline ---------------------------------------------------------------------------------


def run_roofline(n, repeat):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    a @ b
    best_np = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best_np = min(best_np, time.perf_counter() - t)
    dot = jax.jit(jnp.dot)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    jax.block_until_ready(dot(ja, jb))
    best_jax = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(dot(ja, jb))
        best_jax = min(best_jax, time.perf_counter() - t)
    flops = 2.0 * n**3
    blas = {}
    try:
        info = np.show_config(mode="dicts")
        blas = {k: info["Build Dependencies"]["blas"].get(k) for k in ("name", "version")}
    except Exception:  # pragma: no cover - older numpy
        pass
    return {"n": n, "numpy_s": best_np, "numpy_gflops": flops / best_np / 1e9, "jax_s": best_jax,
            "jax_gflops": flops / best_jax / 1e9, "blas": blas,
            "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS", "XLA_FLAGS")},
            "cores_usable": len(os.sched_getaffinity(0))}


# -- PySCF ------------------------------------------------------------------------------------


def run_pyscf(name, xc, basis, grid_level, repeat, fock_path):
    import numpy as np
    from pyscf import df, dft, lib, scf
    from pyscf.dft import libxc

    mol = _mole(name, basis)
    mf = dft.RKS(mol, xc=xc).density_fit(auxbasis=df.make_auxbasis(mol))
    mf.grids.level = grid_level
    mf.small_rho_cutoff = 0.0
    mf.grids.build()
    mf.with_df.build()
    hcore = mf.get_hcore()
    dm = scf.hf.init_guess_by_minao(mol)  # nlxc's initial density is this / 2 per spin
    rank, w, u = _factor_rank(dm / 2)
    tagged = lib.tag_array(dm, mo_coeff=u, mo_occ=2.0 * w)
    hybrid = bool(libxc.is_hybrid_xc(mf.xc))

    def best(d):
        f = hcore + mf.get_veff(mol, d)  # warm-up (first call sets up numint's tables)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            f = hcore + mf.get_veff(mol, d)
            times.append(time.perf_counter() - t)
        return min(times), f

    run_s, fock = best(tagged)
    untagged_s = best(dm)[0] if hybrid else run_s
    np.save(fock_path, np.asarray(fock))
    return {"run_s": run_s, "untagged_s": untagged_s, "rank": rank, "nao": mol.nao,
            "ngrid": int((mf.grids.weights != 0).sum()), "naux": int(mf.with_df.get_naoaux()),
            "hybrid": hybrid, "meta": libxc.xc_type(mf.xc) == "MGGA", "threads": lib.num_threads()}


# -- nlxc -------------------------------------------------------------------------------------


def _system(name, basis, grid_level):
    import nlxc

    return nlxc.System.from_pyscf(_mole(name, basis), grid_level=grid_level)


def run_nlxc(name, xc, basis, grid_level, repeat, fock_path):
    import jax
    import numpy as np

    import nlxc

    t0 = time.perf_counter()
    system = _system(name, basis, grid_level)
    jax.block_until_ready(system)
    t1 = time.perf_counter()
    functional = nlxc.get_functional(xc)
    p = system.initial_density_matrix
    t = time.perf_counter()
    fock = jax.jit(nlxc.scf.energy_and_fock).lower(functional, system, p).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(fock(functional, system, p))
    first = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = jax.block_until_ready(fock(functional, system, p))
        times.append(time.perf_counter() - t)
    np.save(fock_path, np.asarray(out[1][0]))
    return {"run_s": min(times), "first_s": first, "compile_s": compile_s, "system_s": t1 - t0,
            "flops_xla_looped": _cost(fock)[0], "energy": float(out[0].total), "nao": system.nao,
            "ngrid": system.ngrid, "naux": system.naux,
            "layout": [list(g) for g in system.ao_blocks.layout.groups],
            "block_size": system.ao_blocks.layout.block_size}


# -- FLOP count -------------------------------------------------------------------------------


def _unrolled_loops(trips):
    """Context manager: `jax.lax.map` replaced by `jax.vmap` and `jax.lax.fori_loop` by a Python
    loop (a traced upper bound takes `trips` iterations), for the cost analysis only; yields the
    list of the traced-bound loops met."""
    import contextlib

    import jax

    def concrete(x):
        return None if isinstance(x, jax.core.Tracer) else int(x)

    def fori_loop(lower, upper, body, init, **_):
        lo, hi = concrete(lower), concrete(upper)
        if lo is None:
            raise RuntimeError("traced lower bound")
        if hi is None:
            used.append(trips)
            hi = lo + trips
        val = init
        for i in range(lo, hi):
            val = body(i, val)
        return val

    def lax_map(f, xs, **_):
        return jax.vmap(f)(xs)

    used = []

    @contextlib.contextmanager
    def patched():
        saved = jax.lax.map, jax.lax.fori_loop
        jax.lax.map, jax.lax.fori_loop = lax_map, fori_loop
        try:
            yield used
        finally:
            jax.lax.map, jax.lax.fori_loop = saved

    return patched()


def hand_count(nao, naux, ngrid, layout, block_size, nchunk, hybrid, meta, restricted=True):
    """Dot flops of one Fock build by hand (see the module docstring): the grid per block of B
    points and m functions, the σ contractions, DF Coulomb and DF exchange."""
    from nlxc.xc.hybrid import EXCHANGE_AUX_BLOCK, EXCHANGE_CHUNK

    nspin = 1 if restricted else 2
    b = block_size
    # forward Σ_ν Pμν φν, ρ, ∇ρ; transposed: the same three (τ: Σ_ν Pμν ∇φν, τ and both transposed)
    per_block = (lambda m: 4 * b * m * m + 16 * b * m + (12 * b * m * m + 12 * b * m if meta else 0))
    grid = nspin * sum(n * per_block(m) for m, n in layout)
    # σ_ab = ∇ρ_a·∇ρ_b (3 contractions of 3·ngrid) and their transposes (2 each)
    sigma = 3 * 6 * ngrid * 3
    npair = nao * (nao + 1) // 2
    coulomb = 2 * (2 * naux * npair)
    exchange = 0
    if hybrid:
        q = min(EXCHANGE_AUX_BLOCK, naux)
        nblock = -(-naux // q)
        exchange = nspin * 4 * q * nblock * nao * nao * EXCHANGE_CHUNK * nchunk
    return {"grid": grid, "sigma": sigma, "coulomb": coulomb, "exchange": exchange,
            "total": grid + sigma + coulomb + exchange}


def run_count(name, xc, basis, grid_level, verify):
    import jax
    import numpy as np

    import nlxc
    from nlxc.xc.hybrid import EXCHANGE_CHUNK

    system = _system(name, basis, grid_level)
    functional = nlxc.get_functional(xc)
    p = system.initial_density_matrix
    pm = np.asarray(p)
    ranks = [_factor_rank(0.5 * (pm[0] + pm[1]))[0]] if system.restricted else [_factor_rank(x)[0] for x in pm]
    nchunk = -(-max(ranks) // EXCHANGE_CHUNK)
    fn = nlxc.scf.energy_and_fock
    t = time.perf_counter()
    looped = jax.jit(fn).lower(functional, system, p).compile() if verify else None
    jax.clear_caches()  # nlxc's inner jits must be retraced under the patch
    with _unrolled_loops(nchunk) as used:
        lowered = jax.jit(fn).lower(functional, system, p)
        flops, transcendentals = _cost(lowered)
        jaxpr = jax.make_jaxpr(fn)(functional, system, p)
        unrolled = lowered.compile() if verify else None
    jax.clear_caches()
    out = {"flops": flops, "transcendentals": transcendentals, "dot_flops": _live_dot_flops(jaxpr), "nchunk": nchunk,
           "rank": max(ranks), "dynamic_loops_unrolled": len(used), "count_s": time.perf_counter() - t}
    if verify:
        out["flops_xla_compiled_unrolled"] = _cost(unrolled)[0]
        looped_out = looped(functional, system, p)
        unrolled_out = unrolled(functional, system, p)
        out["verify_max_abs_dF"] = float(np.max(np.abs(np.asarray(looped_out[1]) - np.asarray(unrolled_out[1]))))
        out["verify_dE"] = float(looped_out[0].total - unrolled_out[0].total)
        if used:  # one chunk fewer must change K: the trip count is the loop's, not more
            jax.clear_caches()
            with _unrolled_loops(nchunk - 1):
                fewer = jax.jit(fn)(functional, system, p)
            jax.clear_caches()
            out["verify_max_abs_dF_one_chunk_fewer"] = float(np.max(np.abs(np.asarray(looped_out[1])
                                                                         - np.asarray(fewer[1]))))
    return out


def _live_dot_flops(closed):
    """Dot flops of the loop-free jaxpr after dead-code elimination (the lowering drops code whose
    result is unused, e.g. τ for a GGA), by JAX's own DCE; None if that (private) API moved."""
    try:
        from jax._src.interpreters import partial_eval as pe

        jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - another JAX version
        return None
    return _dot_flops(jaxpr)


def _dot_flops(jaxpr):
    """2·(output elements)·(contracted size) summed over the dot_generals of a jaxpr (loops are
    already unrolled; nested calls recursed into)."""
    import math

    from jax.extend import core as jcore

    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            k = math.prod(eqn.invars[0].aval.shape[d] for d in lc)
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * k
        if eqn.primitive.name in ("scan", "while"):
            raise RuntimeError(f"{eqn.primitive.name} left in the unrolled program")
        for key, value in eqn.params.items():
            if key in ("jvp_jaxpr_fun", "jvp_jaxpr_thunk", "bwd", "fwd_jaxpr_thunk"):
                continue
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(v, jcore.ClosedJaxpr):
                    total += _dot_flops(v.jaxpr)
                elif isinstance(v, jcore.Jaxpr):
                    total += _dot_flops(v)
    return total


# -- driver -----------------------------------------------------------------------------------


def _child(args):
    import jax

    jax.config.update("jax_enable_x64", True)
    if args.code == "roofline":
        out = run_roofline(args.matmul_size, args.repeat)
    elif args.code == "count":
        out = run_count(args.molecule, args.xc_one, args.basis, args.grid_level, args.verify_count)
    else:
        fn = run_nlxc if args.code == "nlxc" else run_pyscf
        out = fn(args.molecule, args.xc_one, args.basis, args.grid_level, args.repeat, args.fock_path)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def _spawn(args, code, name="", xc="", fock_path=""):
    cmd = [sys.executable, __file__, "--code", code, "--molecule", name, "--xc-one", xc, "--basis", args.basis,
           "--grid-level", str(args.grid_level), "--repeat", str(args.repeat), "--matmul-size",
           str(args.matmul_size), "--fock-path", fock_path] + (["--verify-count"] if args.verify_count else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"{code} {name} {xc} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def _platform():
    model = None
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:  # pragma: no cover
        pass
    meta = {"cpu_model": model, "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "load_average": os.getloadavg()}
    import jax
    import jaxlib
    import numpy
    import pyscf

    meta.update(jax=jax.__version__, jaxlib=jaxlib.__version__, pyscf=pyscf.__version__, numpy=numpy.__version__)
    return meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES))
    parser.add_argument("--xc", nargs="+", default=["pbe", "b3lyp"])
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--grid-level", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timed runs")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the roofline's n×n float64 matmul")
    parser.add_argument("--verify-count", action="store_true",
                        help="also run the unrolled program and compare its Fock matrix with the looped one")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "fock.json"))
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--molecule", help=argparse.SUPPRESS)
    parser.add_argument("--xc-one", help=argparse.SUPPRESS)
    parser.add_argument("--fock-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.code:
        return _child(args)

    import numpy as np

    roof = _spawn(args, "roofline")
    print(f"dense float64 {roof['n']}x{roof['n']} matmul on {roof['cores_usable']} cores: numpy "
          f"{roof['numpy_gflops']:.1f} GFLOP/s, jax {roof['jax_gflops']:.1f} GFLOP/s\n", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.molecules:
            for xc in args.xc:
                row = {"molecule": name, "xc": xc}
                paths = {c: os.path.join(tmp, f"{c}.npy") for c in ("pyscf", "nlxc")}
                for code in ("pyscf", "nlxc"):
                    row[code] = _spawn(args, code, name, xc, paths[code])
                row["count"] = _spawn(args, "count", name, xc)
                n = row["nlxc"]
                row["hand"] = hand_count(n["nao"], n["naux"], n["ngrid"], n["layout"], n["block_size"],
                                         row["count"]["nchunk"], row["pyscf"]["hybrid"], row["pyscf"]["meta"])
                row["max_abs_dF"] = float(np.max(np.abs(np.load(paths["nlxc"]) - np.load(paths["pyscf"]))))
                row["nlxc_gflops"] = row["count"]["flops"] / n["run_s"] / 1e9
                row["fraction_of_jax_dgemm"] = row["nlxc_gflops"] / roof["jax_gflops"]
                row["pyscf_over_nlxc"] = row["pyscf"]["run_s"] / n["run_s"]
                rows.append(row)
                _print_row(row, header=len(rows) == 1)

    meta = _platform()
    meta.update(basis=args.basis, grid_level=args.grid_level, repeat=args.repeat)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "roofline": roof, "rows": rows}, fh, indent=2)
    print(f"\nwrote {args.out}")


def _print_row(row, header):
    if header:
        print(f"{'molecule':<15}{'xc':<6}{'nao':>5}{'ngrid':>7}{'naux':>5} | {'GFLOP':>7}{'looped':>7}{'dot%':>5}"
              f"{'hand':>7} | {'nlxc s':>8}{'compile':>8}{'GFLOP/s':>8}{'%DGEMM':>7} | {'PySCF s':>8}"
              f"{'PySCF/nlxc':>11}{'|dF|':>9}")
    n, p, c = row["nlxc"], row["pyscf"], row["count"]
    dots = (c["dot_flops"] or float("nan")) / c["flops"]
    print(f"{row['molecule']:<15}{row['xc']:<6}{n['nao']:>5}{n['ngrid']:>7}{n['naux']:>5} | {c['flops'] / 1e9:>7.3f}"
          f"{n['flops_xla_looped'] / 1e9:>7.3f}{dots:>5.0%}{row['hand']['total'] / 1e9:>7.3f} | {n['run_s']:>8.4f}"
          f"{n['compile_s']:>8.1f}{row['nlxc_gflops']:>8.2f}{row['fraction_of_jax_dgemm']:>7.1%} | {p['run_s']:>8.4f}"
          f"{row['pyscf_over_nlxc']:>11.2f}{row['max_abs_dF']:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
