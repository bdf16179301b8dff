"""Cost of the model zoo against grid size, next to PBE.

For each molecule (H2O, C6H6, n-decane C10H22 with 32 atoms; def2-SVP, PySCF grid level 2 by
default) and each model, two timings after compilation (best of `--repeat`):

- `model`: the model's energy and its gradient with respect to the density features on the grid
  (ρσ, σ, τσ): the architecture's own cost, what the scaling exponent is fitted to;
- `E_xc+Fock`: the energy and the Fock contribution ∂E_xc/∂P (the density matrix), which adds
  the density features' cost O(ngrid · nao²), the same for every model.

Also the compile time and XLA's temporary memory for `E_xc+Fock` (from
`compiled.memory_analysis()`, for the largest molecule where it was measured), and the scaling
exponent b of time ≈ a · ngrid^b fitted over the molecules. `E_xc+Fock` is skipped above
`--fock-max-ngrid` grid points (decane at grid level 2: its density-feature backward pass needs
more than the 24 GB of the machine we measured on). Models are used alone (not added to PBE), so
PBE's row is the baseline.

Models that read auxiliary-basis grid operators (`AuxiliaryNeuralOperator`, `LocalHybrid`,
`NonlocalEnhancedExchange`) get a System carrying them when they fit in `--operator-max-gb`
(8·ngrid·naux bytes each); the O(ngrid²) `GridAttention` runs up to `--attention-max-ngrid`
points. Skipped cells are marked. `prepare` (the neighbour-list search, once per SCF) is timed
on its own.

    python benchmarks/models.py [--grid-level 2] [--molecules h2o c6h6 decane] [--repeat 3]
                                [--models LABEL ...] [--fock-max-ngrid 150000]
                                [--operator-max-gb 3] [--attention-max-ngrid 10000]
                                [--out benchmarks/results/models.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def measure(functional, system, repeat, with_fock=True):
    import equinox as eqx
    import jax

    import nlxc

    # the geometry-only preparation (neighbour lists), once per SCF: timed on its own
    prepare = eqx.filter_jit(lambda f, s: f.prepare(s))
    jax.block_until_ready(prepare(functional, system))
    prepare_time = _best(prepare, functional, system, repeat=repeat)
    functional = prepare(functional, system)

    # the System and the model are arguments (not closures), so XLA does not constant-fold them
    p = system.initial_density_matrix
    density = jax.jit(nlxc.Density.from_density_matrix)(p, system)

    def on_features(rho, sigma, tau, functional, system):
        d = nlxc.Density(rho=rho, gradient=density.gradient, sigma=sigma, tau=tau)
        return functional(d, p, system)

    model_fn = eqx.filter_jit(jax.value_and_grad(on_features, argnums=(0, 1, 2)))
    args = (density.rho, density.sigma, density.tau, functional, system)
    jax.block_until_ready(model_fn(*args))
    model_time = _best(model_fn, *args, repeat=repeat)

    if not with_fock:
        return {"model_s": model_time, "prepare_s": prepare_time, "exc_fock_s": None, "compile_s": None,
                "temp_bytes": None}

    dynamic, static = eqx.partition(functional, eqx.is_array)

    def exc(pm, dynamic, system):
        f = eqx.combine(dynamic, static)
        return f(nlxc.Density.from_density_matrix(pm, system), pm, system)

    t = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(exc)).lower(p, dynamic, system).compile()
    compile_time = time.perf_counter() - t
    memory = compiled.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    jax.block_until_ready(compiled(p, dynamic, system))
    fock_time = _best(compiled, p, dynamic, system, repeat=repeat)
    return {"model_s": model_time, "prepare_s": prepare_time, "exc_fock_s": fock_time, "compile_s": compile_time,
            "temp_bytes": temp}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid-level", type=int, default=2)
    parser.add_argument("--molecules", nargs="+", default=["h2o", "c6h6", "decane"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=None, help="subset of the model labels")
    parser.add_argument("--fock-max-ngrid", type=int, default=150_000,
                        help="skip E_xc+Fock above this many grid points (its density-feature "
                             "backward pass needs > 24 GB for decane at grid level 2)")
    parser.add_argument("--operator-max-gb", type=float, default=3.0,
                        help="skip a model whose auxiliary-basis grid operators (8·ngrid·naux bytes "
                             "each) would exceed this many GB for a molecule")
    parser.add_argument("--attention-max-ngrid", type=int, default=10_000,
                        help="skip the O(ngrid²) GridAttention above this many grid points")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "models.json"))
    args = parser.parse_args(argv)

    import jax

    import nlxc

    from nlxc.grid_operators import required_grid_operators

    rows, sizes = {}, {}
    catalogue = {label: f for label, f in models().items() if not args.models or label in args.models}
    for name in args.molecules:
        t = time.perf_counter()
        system = build_system(name, args.grid_level)
        naux = system.naux
        sizes[name] = {"ngrid": system.ngrid, "nao": system.nao, "naux": naux,
                       "natom": int(system.atom_charges.shape[0]), "setup_s": time.perf_counter() - t}
        print(f"{name}: ngrid {system.ngrid}, nao {system.nao}, naux {naux}, natom {sizes[name]['natom']}",
              flush=True)
        # models that need auxiliary-basis grid operators get a System that carries them, if they fit
        spec, skipped = nlxc.GridOperatorSpec(), set()
        for label, functional in catalogue.items():
            need = required_grid_operators(functional)
            if 8 * system.ngrid * naux * operator_count(need) > args.operator_max_gb * 2**30:
                skipped.add(label)
            elif "GridAttention" in label and system.ngrid > args.attention_max_ngrid:
                skipped.add(label)
            else:
                spec = spec | need
        with_operators = system
        if operator_count(spec):
            t = time.perf_counter()
            with_operators = build_system(name, args.grid_level, grid_operators=spec)
            sizes[name]["operators"] = {"count": operator_count(spec), "bytes": 8 * system.ngrid * naux * operator_count(spec),
                                        "setup_s": time.perf_counter() - t}
        for label, functional in catalogue.items():
            if label in skipped:
                rows.setdefault(label, {})[name] = None
                print(f"  {label:34s} skipped (operator memory or O(ngrid²) limit)", flush=True)
                continue
            target = with_operators if operator_count(required_grid_operators(functional)) else system
            r = measure(functional, target, args.repeat, with_fock=system.ngrid <= args.fock_max_ngrid)
            rows.setdefault(label, {})[name] = r
            fock = "n/a" if r["exc_fock_s"] is None else f"{r['exc_fock_s'] * 1e3:9.1f} ms   compile {r['compile_s']:6.1f} s"
            print(f"  {label:34s} model {r['model_s'] * 1e3:9.1f} ms   prepare {r['prepare_s'] * 1e3:8.1f} ms"
                  f"   E_xc+Fock {fock}", flush=True)
        del system, with_operators

    print()
    header = "".join(f"{m + ' model ms':>18s}" for m in args.molecules)
    print(f"{'model':34s}{header}{'exponent':>10s}{'E_xc+Fock exp.':>16s}{'temp MB':>10s}")
    for label, per in rows.items():
        done = [m for m in args.molecules if per.get(m) is not None]
        ngrid = np.array([sizes[m]["ngrid"] for m in done], dtype=float)
        t_model = np.array([per[m]["model_s"] for m in done])
        have = [m for m in done if per[m]["exc_fock_s"] is not None]
        t_fock = np.array([per[m]["exc_fock_s"] for m in have])
        g_fock = np.array([sizes[m]["ngrid"] for m in have], dtype=float)
        b_model = float(np.polyfit(np.log(ngrid), np.log(t_model), 1)[0]) if len(done) > 1 else float("nan")
        b_fock = float(np.polyfit(np.log(g_fock), np.log(t_fock), 1)[0]) if len(have) > 1 else float("nan")
        per["scaling_exponent_model"] = b_model
        per["scaling_exponent_exc_fock"] = b_fock
        temp = per[have[-1]]["temp_bytes"] if have else None
        cells = "".join(f"{per[m]['model_s'] * 1e3:18.1f}" if per.get(m) else f"{'skipped':>18s}"
                        for m in args.molecules)
        print(f"{label:34s}{cells}{b_model:10.2f}{b_fock:16.2f}{(temp or 0) / 2**20:10.0f}")

    out = {"molecules": sizes, "grid_level": args.grid_level, "basis": "def2-svp", "models": rows,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "jax": jax.__version__, "backend": jax.default_backend()}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
