"""Exact exchange from a factor of the density matrix against the dense O(naux · nao³) contraction.

One energy + Fock evaluation, jitted, for the exchange alone (E_x^HF and K = ∂E/∂P) and for a whole
B3LYP Kohn–Sham energy + Fock build (`nlxc.scf.energy_and_fock`), each with

- `factor`: nlxc's `exact_exchange_energy` (eigenpairs of P, O(naux · nao² · rank P));
- `dense`: the contraction nlxc used before, E = −Σ_Q tr(B_Q P B_Q P) with K by autodiff,
  O(naux · nao³) (written out here, as it was in `nlxc/xc/hybrid.py`);
- PySCF on the same work: its density-fitted K (`with_df.get_jk(..., with_j=False)`, with the
  occupied orbitals attached to the density matrix, as its SCF does) and its B3LYP `get_veff`
  (J + K + XC on the same grid), for the closed-shell idempotent density matrix.

Two density matrices: `idempotent` (the occupied orbitals of the core Hamiltonian, rank = nocc,
as every SCF iterate) and `minao` (PySCF's guess, of higher rank: the first Fock build). Times
are the median of `--repeat` calls after compilation; compile time (first call minus a compiled
call) and XLA's temporary buffer size of each program are shown separately.

    python benchmarks/exact_exchange.py [--molecules c6h6] [--basis def2-svp] [--grid-level 3]
                                        [--repeat 5] [--out benchmarks/results/exact_exchange.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time


def _geometry(name):
    from ase.build import molecule

    return molecule({"h2o": "H2O", "c6h6": "C6H6"}[name])


def _mole(name, basis):
    from pyscf import gto

    atoms = _geometry(name)
    return gto.M(atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.get_positions())],
                 basis=basis, verbose=0)


def _time(fn, *args, repeat):
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return median, max(first - median, 0.0)


def _temp_bytes(fn, *args):
    try:
        return int(fn.lower(*args).compile().memory_analysis().temp_size_in_bytes)
    except Exception:  # memory analysis is not offered by every backend
        return None


def _pyscf_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _dense_exchange(cderi, density_matrix):
    """−Σ_Q tr(B_Q P̄ B_Q P̄), P̄ = (Pα + Pβ)/2: nlxc's restricted exact exchange before the factor
    path, O(naux · nao³) (its gradient by autodiff, another O(naux · nao³))."""
    import jax.numpy as jnp

    mean = 0.5 * (density_matrix[0] + density_matrix[1])
    t = jnp.einsum("Qmn,nl->Qml", cderi, mean)
    return -jnp.einsum("Qml,Qlm->", t, t)


def _dense_b3lyp():
    """`nlxc.xc.B3LYP` with `_dense_exchange` in place of the factor path (same semilocal part)."""
    import jax.numpy as jnp

    from nlxc.xc import (
        B3LYP,
        AbstractFunctional,
        B88Exchange,
        LYPCorrelation,
        SlaterExchange,
        VWNRPACorrelation,
    )

    class DenseB3LYP(AbstractFunctional):
        inner: B3LYP

        def __call__(self, density, density_matrix, system):
            f, r = self.inner, system.restricted
            e = ((1.0 - f.a0 - f.ax) * SlaterExchange().energy_density_of(density, r)
                 + f.ax * B88Exchange().energy_density_of(density, r)
                 + (1.0 - f.ac) * VWNRPACorrelation().energy_density_of(density, r)
                 + f.ac * LYPCorrelation().energy_density_of(density, r))
            return jnp.sum(system.grid_weights * e) + f.a0 * _dense_exchange(system.cderi, density_matrix)

    return DenseB3LYP(B3LYP())


def run(name, basis, grid_level, repeat):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from pyscf import df, dft, lib
    from scipy.linalg import eigh

    import nlxc
    from nlxc.scf import energy_and_fock
    from nlxc.xc import B3LYP, exact_exchange_energy

    mol = _mole(name, basis)
    grids = dft.gen_grid.Grids(mol)
    grids.level = grid_level
    grids.build(with_non0tab=True)
    system = nlxc.System.from_pyscf(mol, grids=grids)
    cderi = system.cderi
    naux, nao, _ = cderi.shape
    nocc = mol.nelectron // 2

    # idempotent closed-shell P (occupied orbitals of H_core, orthonormal in S) and the minao guess
    _, orbitals = eigh(mol.intor("int1e_kin") + mol.intor("int1e_nuc"), mol.intor("int1e_ovlp"))
    occupied = orbitals[:, :nocc]
    p_idem = occupied @ occupied.T  # per spin
    dm_minao = dft.RKS(mol).get_init_guess(key="minao")
    densities = {"idempotent": jnp.asarray(np.stack([p_idem, p_idem])),
                 "minao": jnp.asarray(np.stack([dm_minao / 2, dm_minao / 2]))}
    ranks = {}
    for key, value in densities.items():
        eig = np.abs(np.linalg.eigvalsh(np.asarray(value[0])))
        ranks[key] = int(np.sum(eig > 1e-13 * nao * eig.max()))

    exchange = {
        "factor": jax.jit(jax.value_and_grad(lambda p: exact_exchange_energy(cderi, p, True))),
        "dense": jax.jit(jax.value_and_grad(lambda p: _dense_exchange(cderi, p))),
    }
    b3lyp, dense_b3lyp = B3LYP(), _dense_b3lyp()
    full = {
        "factor": jax.jit(lambda p: energy_and_fock(b3lyp, system, p)),
        "dense": jax.jit(lambda p: energy_and_fock(dense_b3lyp, system, p)),
    }
    rows = []
    for dm_name, p in densities.items():
        results, mine = {}, []
        for what, fns in (("exchange", exchange), ("b3lyp_energy_fock", full)):
            for variant, fn in fns.items():
                seconds, compile_s = _time(fn, p, repeat=repeat)
                results[(what, variant)] = fn(p)
                mine.append({"molecule": name, "density": dm_name, "rank": ranks[dm_name], "nocc": nocc,
                             "nao": nao, "naux": naux, "what": what, "variant": variant,
                             "seconds": seconds, "compile_s": compile_s, "xla_temp_bytes": _temp_bytes(fn, p)})
        (e_f, k_f), (e_d, k_d) = results[("exchange", "factor")], results[("exchange", "dense")]
        (c_f, f_f), (c_d, f_d) = results[("b3lyp_energy_fock", "factor")], results[("b3lyp_energy_fock", "dense")]
        for row in mine:
            row["max_diff_exchange"] = {"energy": abs(float(e_f - e_d)), "fock": float(jnp.max(jnp.abs(k_f - k_d)))}
            row["max_diff_b3lyp"] = {"energy": abs(float(c_f.total - c_d.total)),
                                     "fock": float(jnp.max(jnp.abs(f_f - f_d)))}
        rows += mine

    # PySCF on the same work (the idempotent closed-shell density, orbitals attached as in its SCF)
    mf = dft.RKS(mol, xc="b3lyp").density_fit(auxbasis=df.make_auxbasis(mol))
    mf.grids = grids
    mf.with_df.build()
    mo_occ = np.zeros(nao)
    mo_occ[:nocc] = 2.0
    tagged = lib.tag_array(2.0 * p_idem, mo_coeff=orbitals, mo_occ=mo_occ)
    k_time = _pyscf_time(lambda: mf.with_df.get_jk(tagged, hermi=1, with_j=False), repeat)
    veff_time = _pyscf_time(lambda: mf.get_veff(mol, tagged), repeat)
    for what, seconds in (("exchange", k_time), ("b3lyp_energy_fock", veff_time)):
        rows.append({"molecule": name, "density": "idempotent", "rank": nocc, "nocc": nocc, "nao": nao,
                     "naux": naux, "what": what, "variant": "pyscf", "seconds": seconds})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", nargs="+", default=["c6h6"])
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--grid-level", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "exact_exchange.json"))
    args = parser.parse_args()

    import nlxc  # noqa: F401  (float64)

    rows = []
    for name in args.molecules:
        rows += run(name, args.basis, args.grid_level, args.repeat)
    header = (f"{'molecule':9s} {'density':10s} {'rank':>4s} {'what':18s} {'variant':8s} {'time/s':>9s} "
              f"{'compile/s':>9s} {'XLA temp/MB':>11s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        temp = r.get("xla_temp_bytes")
        print(f"{r['molecule']:9s} {r['density']:10s} {r['rank']:4d} {r['what']:18s} {r['variant']:8s} "
              f"{r['seconds']:9.4f} {r.get('compile_s', float('nan')):9.2f} "
              f"{'' if temp is None else f'{temp / 2**20:11.1f}'}")
    for r in rows:
        if r["variant"] == "factor":
            print(f"{r['molecule']} {r['density']} {r['what']}: factor − dense: exchange "
                  f"|ΔE| = {r['max_diff_exchange']['energy']:.1e}, max|ΔK| = {r['max_diff_exchange']['fock']:.1e}; "
                  f"B3LYP |ΔE| = {r['max_diff_b3lyp']['energy']:.1e}, max|ΔF| = {r['max_diff_b3lyp']['fock']:.1e}")
    meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "basis": args.basis, "grid_level": args.grid_level,
            "repeat": args.repeat, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
