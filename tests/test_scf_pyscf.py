"""Total energies of nlxc's SCF against PySCF's density-fitted RKS/UKS (and RHF/UHF).

Same functional, basis (def2-SVP), grid (PySCF level `GRID_LEVEL`) and auxiliary basis
(PySCF's JK-fit basis from `pyscf.df.make_auxbasis`, which nlxc's System uses by default; note
that PySCF's own `density_fit()` would pick a J-fit basis for pure functionals, so the test
passes the auxiliary basis explicitly). The references are computed by PySCF in the test.
Acceptance: |ΔE| ≤ 1e-7 Ha.

NO has a half-filled degenerate π* pair (α) and a small α gap, with a nearly free rotation of the
broken-symmetry π* orbital about the bond axis: the density converges slowly along that mode
while the energy is flat. For NO nlxc therefore uses a level shift of 0.1 Ha (the fixed point is
unchanged) and a density tolerance of 1e-5 (the energy error is quadratic in it), and, where
PySCF converges, starts from PySCF's converged density so that both describe the same
orientation (on a finite grid the meta-GGA energy varies by ~1e-6 Ha along it). With SVWN the
α gap is only 0.009 Ha and PySCF's SCF does not converge at all (from its own guess or from
nlxc's solution); for that single pair the reference is PySCF's energy of nlxc's converged
density matrix (`mf.energy_tot(dm)`, same functional, grid and auxiliary basis), and the test
also checks that this density matrix is self-consistent (F P S − S P F ≈ 0).

To keep compile time down, molecules of similar size are padded to one shape per bucket (see
`nlxc.pad_system`), so each functional compiles once per bucket; benzene runs unpadded.
"""

import functools

import numpy as np
import pytest
from conftest import GRID_LEVEL, mole, system
from pyscf import df, dft, scf

import nlxc
from nlxc.scf import DIIS, solve

SLOW_MODE = {"no"}  # see the module docstring
PYSCF_DOES_NOT_CONVERGE = {("no", "svwn")}
FUNCTIONALS = ["svwn", "pbe", "blyp", "b3lyp", "pbe0", "r2scan", "hf"]
CLOSED = ["h2o", "nh3", "ch4", "n2", "c6h6"]
OPEN = ["o2", "ch2", "no"]
BUCKETS = [["h2o", "nh3", "ch4", "n2"], ["c6h6"], ["o2", "ch2", "no"]]


@functools.lru_cache(maxsize=None)
def bucketed_system(name):
    bucket = next(b for b in BUCKETS if name in b)
    if len(bucket) == 1:
        return system(name)
    padded = nlxc.pad_to_common_shape([system(n) for n in bucket])
    return padded[bucket.index(name)]


@functools.lru_cache(maxsize=None)
def pyscf_energy(name, xc):
    mol = mole(name)
    if xc == "hf":
        mf = scf.RHF(mol) if mol.spin == 0 else scf.UHF(mol)
    else:
        mf = dft.RKS(mol, xc=xc) if mol.spin == 0 else dft.UKS(mol, xc=xc)
        mf.grids.level = GRID_LEVEL
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf.conv_tol = 1e-11
    mf.max_cycle = 200
    if (name, xc) in PYSCF_DOES_NOT_CONVERGE:
        return mf
    energy = mf.kernel()
    assert mf.converged, f"PySCF did not converge for {name}/{xc}"
    dm = np.asarray(mf.make_rdm1())
    return energy, (np.stack([dm / 2, dm / 2]) if dm.ndim == 2 else dm)




# Benzene (the largest molecule, ~6 min of the suite with every functional; 68 s for PBE alone)
# is left to `benchmarks/scf.py --xc ...`, which compares it with PySCF for any functional, to
# keep the suite under its 15-minute budget; every functional is checked on the seven others.
LARGE_FUNCTIONALS = {"c6h6": []}


def _cases():
    # one xdist group per bucket: the molecules of a bucket share compiled programs
    for name in CLOSED + OPEN:
        bucket = next(i for i, b in enumerate(BUCKETS) if name in b)
        for xc in LARGE_FUNCTIONALS.get(name, FUNCTIONALS):
            group = f"scf-bucket{bucket}" + ("-hybrid" if xc in ("b3lyp", "pbe0", "hf") else "")
            yield pytest.param(name, xc, id=f"{name}-{xc}", marks=pytest.mark.xdist_group(group))


@pytest.mark.parametrize("name, xc", list(_cases()))
def test_total_energy_matches_pyscf(name, xc):
    sys = bucketed_system(name)
    nao = system(name).nao
    converges = (name, xc) not in PYSCF_DOES_NOT_CONVERGE
    if converges:
        reference, dm = pyscf_energy(name, xc)
    guess = None
    if name in SLOW_MODE and converges:
        k = sys.nao - nao
        guess = np.pad(dm, ((0, 0), (0, k), (0, k)))
    solver = DIIS(atol=1e-5, level_shift=0.1) if name in SLOW_MODE else DIIS(atol=1e-9)
    result = solve(nlxc.get_functional(xc), sys, solver, max_steps=200, initial_density_matrix=guess)
    assert bool(result.converged), f"{name}/{xc} did not converge"
    if not converges:
        mf = pyscf_energy(name, xc)
        dm = np.asarray(result.density_matrix)[:, :nao, :nao]
        reference = mf.energy_tot(dm=dm)
        f = np.asarray(result.fock_matrix)[:, :nao, :nao]
        s_ao = np.asarray(system(name).overlap)
        assert max(np.abs(f[k] @ dm[k] @ s_ao - s_ao @ dm[k] @ f[k]).max() for k in range(2)) < 1e-4
    assert abs(float(result.energy) - reference) <= 1e-7, (float(result.energy), reference)
    # the components add up, and the density matrix has the right electron counts
    c = result.components
    assert float(c.total) == pytest.approx(float(result.energy), abs=1e-12)
    s = np.asarray(system(name).overlap)
    p = np.asarray(result.density_matrix)
    assert np.all(p[:, nao:, :] == 0) and np.all(p[:, :, nao:] == 0)  # padding stays empty
    p = p[:, :nao, :nao]
    n = np.asarray(system(name).n_electrons)
    assert np.trace(p[0] @ s) == pytest.approx(n[0], abs=1e-8)
    assert np.trace(p[1] @ s) == pytest.approx(n[1], abs=1e-8)
