"""Memory of a `nlxc.System`: the formula, the arrays' actual size, and peak RSS while building.

    python benchmarks/system_memory.py [--molecules h2o c6h6 adenine_thymine] [--basis def2-svp]
                                       [--grid-level 3] [--grid-block-size 128] [--ao-threshold 1e-12]
                                       [--ao-storage recomputed] [--fock-time]
                                       [--out benchmarks/results/system_memory.json]

The System holds 8·(4·block·Σ_k nblock_k·size_k + naux·nao(nao+1)/2 + 6·nao² + nao·nmo + 4·ngrid
+ 4·natom) bytes (screened AO values and gradients by blocks of grid points, DF tensor packed as
lower triangles, S, H_core, guess (2), dipole integrals (3), orthogonaliser, grid coordinates and
weights, nuclei) plus the int32 AO lists of the blocks. The table shows the AO blocks beside what
the dense AO array would take (4·ngrid·nao floats, the layout before issue 14), the packed DF
tensor, the fraction of AO slots stored, and the total with dense AOs and an unpacked DF tensor
(the layout before issue 14). Each molecule is built in a fresh subprocess so that the peak resident memory is its own.
`--ao-storage recomputed` builds Systems that keep the blocks' points and the basis data instead
of the AO values (`System.from_pyscf(ao_storage=...)`); `--fock-time` also times one compiled
PBE Fock build (the XC energy and potential at the initial density, `jax.value_and_grad` of
`nlxc.scf.energy_components(...).xc`: the forward and reverse passes over the grid blocks).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _atoms(name):
    from ase.build import molecule
    from ase.collections import s22

    return {"h2o": lambda: molecule("H2O"), "c6h6": lambda: molecule("C6H6"),
            "pyrazine_dimer": lambda: s22["Pyrazine_dimer"],
            "adenine_thymine": lambda: s22["Adenine-thymine_Watson-Crick_complex"]}[name]()


def formula_bytes(nao, nmo, naux, ngrid, natom, ao_floats, df_floats=None):
    """Bytes of a System's arrays by the formula in `nlxc.System`'s docstring (`ao_floats`: the
    number of stored AO values, 4·block·Σ_k nblock_k·size_k; 4·ngrid·nao for dense storage;
    `df_floats`: the DF tensor's, naux·nao(nao+1)/2 packed by default, naux·nao² unpacked)."""
    df_floats = naux * nao * (nao + 1) // 2 if df_floats is None else df_floats
    return 8 * (ao_floats + df_floats + 6 * nao**2 + nao * nmo + 4 * ngrid + 4 * natom)


def _fock_seconds(system, repeat=3):
    """Compile, then time (best of `repeat`) the PBE XC energy and its gradient w.r.t. the density
    matrix at the initial guess: the grid work of one Fock build."""
    import jax

    import nlxc

    functional = nlxc.get_functional("pbe")
    fock = jax.jit(jax.value_and_grad(lambda s, p: nlxc.scf.energy_components(functional, s, p).xc, argnums=1))
    t = time.perf_counter()
    jax.block_until_ready(fock(system, system.initial_density_matrix))
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fock(system, system.initial_density_matrix))
        best = min(best, time.perf_counter() - t)
    return first, best, time.process_time()


def _child(name, basis, grid_level, block, threshold, storage="stored", fock_time=False):
    import jax

    import nlxc

    atoms = _atoms(name)
    t = time.perf_counter()
    system = nlxc.System.from_ase(atoms, basis, grid_level=grid_level, grid_block_size=block,
                                  ao_threshold=threshold, ao_storage=storage)
    jax.block_until_ready(system)
    elapsed = time.perf_counter() - t
    actual = sum(x.nbytes for x in jax.tree.leaves(system))
    natom = len(atoms)
    layout = system.ao_blocks.layout
    ao_floats = 4 * layout.block_size * sum(size * n for size, n in layout.groups)
    dense = 4 * system.ngrid * system.nao
    out = {"molecule": name, "natom": natom, "nao": system.nao, "nmo": system.nmo, "naux": system.naux,
           "ngrid": system.ngrid, "grid_block_size": block, "ao_threshold": threshold,
           "ao_storage": storage, "ao_groups": [list(g) for g in layout.groups],
           "formula_mb": formula_bytes(system.nao, system.nmo, system.naux, system.ngrid, natom, ao_floats) / 2**20,
           "dense_formula_mb": formula_bytes(system.nao, system.nmo, system.naux, system.ngrid, natom, dense,
                                             system.naux * system.nao**2) / 2**20,
           "ao_blocks_mb": system.ao_blocks.nbytes / 2**20, "dense_ao_mb": 8 * dense / 2**20,
           "cderi_mb": system.cderi_packed.nbytes / 2**20,
           "cderi_unpacked_mb": 8 * system.naux * system.nao**2 / 2**20, "ao_fraction": ao_floats / dense,
           "arrays_mb": actual / 2**20, "build_s": elapsed,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if fock_time:
        out["fock_first_s"], out["fock_s"], _ = _fock_seconds(system)
    print("RESULT " + json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--molecules", nargs="+", default=["h2o", "c6h6", "adenine_thymine"])
    p.add_argument("--basis", default="def2-svp")
    p.add_argument("--grid-level", type=int, default=3)
    p.add_argument("--grid-block-size", type=int, default=None, help="default: nlxc.system.GRID_BLOCK_SIZE")
    p.add_argument("--ao-threshold", type=float, default=None, help="default: nlxc.system.AO_SCREENING_THRESHOLD")
    p.add_argument("--ao-storage", choices=["stored", "recomputed"], default="stored")
    p.add_argument("--fock-time", action="store_true", help="also time one compiled PBE Fock build")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "system_memory.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.grid_block_size is None or a.ao_threshold is None:
        from nlxc.system import AO_SCREENING_THRESHOLD, GRID_BLOCK_SIZE

        a.grid_block_size = GRID_BLOCK_SIZE if a.grid_block_size is None else a.grid_block_size
        a.ao_threshold = AO_SCREENING_THRESHOLD if a.ao_threshold is None else a.ao_threshold
    if a.child:
        return _child(a.child, a.basis, a.grid_level, a.grid_block_size, a.ao_threshold, a.ao_storage, a.fock_time)
    rows = []
    print(f"{'molecule':<17}{'atoms':>6}{'nao':>6}{'naux':>6}{'ngrid':>9}{'AO MB':>9}{'dense AO MB':>13}"
          f"{'AO kept':>9}{'DF MB':>8}{'arrays MB':>11}{'dense MB':>10}{'peak RSS MB':>13}{'build s':>9}")
    for name in a.molecules:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--basis", a.basis,
                               "--grid-level", str(a.grid_level), "--grid-block-size", str(a.grid_block_size),
                               "--ao-threshold", repr(a.ao_threshold), "--ao-storage", a.ao_storage]
                              + (["--fock-time"] if a.fock_time else []), capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            raise SystemExit(proc.stderr[-2000:])
        r = json.loads(line[0][7:])
        rows.append(r)
        print(f"{r['molecule']:<17}{r['natom']:>6}{r['nao']:>6}{r['naux']:>6}{r['ngrid']:>9}{r['ao_blocks_mb']:>9.1f}"
              f"{r['dense_ao_mb']:>13.1f}{r['ao_fraction']:>9.1%}{r['cderi_mb']:>8.1f}{r['arrays_mb']:>11.1f}"
              f"{r['dense_formula_mb']:>10.1f}{r['peak_rss_mb']:>13.0f}{r['build_s']:>9.1f}"
              + (f"  Fock build {r['fock_s']:.3f} s (first call {r['fock_first_s']:.1f} s)" if a.fock_time else ""),
              flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump({"basis": a.basis, "grid_level": a.grid_level, "ao_storage": a.ao_storage, "grid_block_size": a.grid_block_size,
                   "ao_threshold": a.ao_threshold, "load_average": os.getloadavg(), "rows": rows}, fh, indent=2)
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
