"""Total energies of nlxc's SCF against PySCF's density-fitted RKS/UKS (and RHF/UHF).

Same functional, basis (def2-SVP), grid (PySCF level `GRID_LEVEL`) and auxiliary basis
(PySCF's JK-fit basis from `pyscf.df.make_auxbasis`, which nlxc's System uses by default; note
that PySCF's own `density_fit()` would pick a J-fit basis for pure functionals, so the test
passes the auxiliary basis explicitly). The references are computed by PySCF in the test.
Acceptance: |ΔE| ≤ 1e-7 Ha.

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
    energy = mf.kernel()
    assert mf.converged
    return energy


@pytest.mark.parametrize("xc", FUNCTIONALS)
@pytest.mark.parametrize("name", CLOSED + OPEN)
def test_total_energy_matches_pyscf(name, xc):
    result = solve(nlxc.get_functional(xc), bucketed_system(name), DIIS(atol=1e-9), max_steps=200)
    assert bool(result.converged), f"{name}/{xc} did not converge"
    reference = pyscf_energy(name, xc)
    assert abs(float(result.energy) - reference) <= 1e-7, (float(result.energy), reference)
    # the components add up, and the density matrix has the right electron counts
    c = result.components
    assert float(c.total) == pytest.approx(float(result.energy), abs=1e-12)
    nao = system(name).nao
    s = np.asarray(system(name).overlap)
    p = np.asarray(result.density_matrix)
    assert np.all(p[:, nao:, :] == 0) and np.all(p[:, :, nao:] == 0)  # padding stays empty
    p = p[:, :nao, :nao]
    n = np.asarray(system(name).n_electrons)
    assert np.trace(p[0] @ s) == pytest.approx(n[0], abs=1e-8)
    assert np.trace(p[1] @ s) == pytest.approx(n[1], abs=1e-8)
